//! L1: the in-process item cache (moka, bounded by capacity and TTL) and the per-key
//! version floors that keep it from going stale.
//!
//! A write bumps the row's version to V and every worker records "nothing older than V
//! for this key" (the floor) while dropping the cached entry. A reader that fetched the
//! old row before the write and tries to fill the cache afterwards carries a version
//! below the floor and is refused. Fill and invalidate take the same striped lock, so a
//! fill cannot slip between another thread's floor check and its insert.
//!
//! Entries hold the item's JSON body already serialised: an L1 hit is one lookup and one
//! `Bytes` clone (a reference-count increment), with no serialisation per request.

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use moka::sync::Cache;

use super::db::Item;

/// One cached item: its version (for the floor check) and its response body.
#[derive(Clone, Debug)]
pub struct Cached {
    pub id: i64,
    pub version: i64,
    /// `application/json` body of `GET /items/{id}`.
    pub body: Bytes,
}

impl Cached {
    pub fn new(item: &Item) -> Cached {
        // Serialising a plain struct of strings and integers into a Vec cannot fail.
        let body = serde_json::to_vec(item).unwrap_or_default();
        Cached {
            id: item.id,
            version: item.version,
            body: Bytes::from(body),
        }
    }
}

/// Floors must outlive every read that can still be in flight when the write lands.
const FLOOR_TTL: Duration = Duration::from_secs(120);
const FLOOR_CAPACITY: u64 = 100_000;
const STRIPES: usize = 64;

pub struct L1 {
    items: Cache<i64, Cached>,
    floors: Cache<i64, i64>,
    stripes: Vec<Mutex<()>>,
}

impl L1 {
    pub fn new(capacity: u64, ttl: Duration) -> L1 {
        L1 {
            items: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
            floors: Cache::builder()
                .max_capacity(FLOOR_CAPACITY.max(capacity))
                .time_to_live(FLOOR_TTL)
                .build(),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }

    fn stripe(&self, id: i64) -> std::sync::MutexGuard<'_, ()> {
        let index = (id.unsigned_abs() % STRIPES as u64) as usize;
        // The guarded data is `()`: a poisoned stripe carries no broken state.
        self.stripes[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn get(&self, id: i64) -> Option<Cached> {
        self.items.get(&id)
    }

    /// The oldest version still acceptable for `id`, when a write was seen recently.
    pub fn floor(&self, id: i64) -> Option<i64> {
        self.floors.get(&id)
    }

    /// Caches `item` unless a write newer than it was already seen. Returns whether it
    /// was cached.
    pub fn fill(&self, item: Cached) -> bool {
        let _guard = self.stripe(item.id);
        if self
            .floors
            .get(&item.id)
            .is_some_and(|floor| item.version < floor)
        {
            return false;
        }
        self.items.insert(item.id, item);
        true
    }

    /// Drops `id` and refuses later fills older than `version`.
    pub fn invalidate(&self, id: i64, version: i64) {
        let _guard = self.stripe(id);
        let floor = self.floors.get(&id).map_or(version, |f| f.max(version));
        self.floors.insert(id, floor);
        self.items.invalidate(&id);
    }
}

/// The key invalidations travel under between workers.
pub fn item_key(id: i64) -> String {
    format!("item:{id}")
}

pub fn parse_item_key(key: &str) -> Option<i64> {
    key.strip_prefix("item:")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: i64, version: i64) -> Cached {
        Cached::new(&Item {
            id,
            name: format!("v{version}"),
            value: version,
            version,
        })
    }

    #[test]
    fn the_cached_body_is_the_items_json() {
        let cached = item(9, 4);
        let parsed: Item = serde_json::from_slice(&cached.body).expect("json");
        assert_eq!(parsed.id, 9);
        assert_eq!(parsed.version, 4);
        assert_eq!(parsed.name, "v4");
    }

    #[test]
    fn a_fill_older_than_a_seen_write_is_refused() {
        let l1 = L1::new(100, Duration::from_secs(60));
        assert!(l1.fill(item(7, 1)));
        l1.invalidate(7, 2);
        assert!(l1.get(7).is_none(), "invalidation drops the entry");
        assert!(!l1.fill(item(7, 1)), "the stale reader's fill is refused");
        assert!(l1.get(7).is_none());
        assert!(l1.fill(item(7, 2)), "the written version is accepted");
        assert_eq!(l1.get(7).map(|i| i.version), Some(2));
    }

    #[test]
    fn floors_only_move_forward() {
        let l1 = L1::new(100, Duration::from_secs(60));
        l1.invalidate(3, 5);
        l1.invalidate(3, 4); // a late relay of an older write
        assert_eq!(l1.floor(3), Some(5));
        assert!(!l1.fill(item(3, 4)));
    }

    #[test]
    fn keys_round_trip() {
        assert_eq!(parse_item_key(&item_key(-12)), Some(-12));
        assert_eq!(parse_item_key("job:1"), None);
        assert_eq!(parse_item_key("item:x"), None);
    }
}
