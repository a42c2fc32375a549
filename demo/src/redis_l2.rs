//! L2: the shared Redis cache, optional and allowed to fail.
//!
//! Values are `"<version>:<kind>:<json>"` (`kind` is `i` for an item, `t` for a write's
//! tombstone). Fills and tombstones go through Lua scripts that compare versions inside
//! Redis, so a reader holding an old row cannot overwrite a newer tombstone or item.
//!
//! One task owns reconnection: the first failed command marks Redis down (logged once),
//! requests then skip L2 at no cost, and the task reconnects with exponential backoff,
//! replays the tombstones that could not be written meanwhile, and logs the recovery.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Script};
use slog::{Logger, info, warn};
use tokio::sync::Notify;

use super::db::Item;

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Sets the key unless Redis already holds a newer version, or this same item.
const FILL: &str = r"
local cur = redis.call('GET', KEYS[1])
local new = tonumber(ARGV[1])
if cur then
  local v, kind = string.match(cur, '^(%d+):(%a)')
  v = tonumber(v)
  if v and (v > new or (v == new and kind == 'i')) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1";

/// Replaces the key with a tombstone unless a newer write already did.
const TOMBSTONE: &str = r"
local cur = redis.call('GET', KEYS[1])
local new = tonumber(ARGV[1])
if cur then
  local v = tonumber(string.match(cur, '^(%d+):'))
  if v and v > new then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1";

pub enum L2Lookup {
    Hit(Item),
    /// Written recently: the value must come from the database.
    Tombstone,
    Miss,
    /// Redis is down (or has tombstones to catch up on): skip it.
    Unavailable,
}

pub struct L2 {
    client: Client,
    prefix: String,
    ttl_secs: u64,
    timeout: Duration,
    conn: RwLock<Option<MultiplexedConnection>>,
    up: AtomicBool,
    /// Tombstones that failed while Redis was down, replayed before L2 is used again.
    pending: Mutex<HashMap<i64, i64>>,
    broken: Notify,
    fill: Script,
    tombstone: Script,
    log: Logger,
}

impl L2 {
    pub fn new(
        url: &str,
        prefix: &str,
        ttl: Duration,
        timeout: Duration,
        log: Logger,
    ) -> redis::RedisResult<Arc<L2>> {
        Ok(Arc::new(L2 {
            client: Client::open(url)?,
            prefix: prefix.to_string(),
            ttl_secs: ttl.as_secs().max(1),
            timeout,
            conn: RwLock::new(None),
            up: AtomicBool::new(false),
            pending: Mutex::new(HashMap::new()),
            broken: Notify::new(),
            fill: Script::new(FILL),
            tombstone: Script::new(TOMBSTONE),
            log,
        }))
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn key(&self, id: i64) -> String {
        format!("{}item:{id}", self.prefix)
    }

    fn connection(&self) -> Option<MultiplexedConnection> {
        if !self.is_up() {
            return None;
        }
        self.conn.read().ok().and_then(|c| c.clone())
    }

    /// Marks Redis down after a failed command; only the first failure is logged.
    fn mark_down(&self, error: &str) {
        if self.up.swap(false, Ordering::SeqCst) {
            warn!(self.log, "Redis stopped answering; serving from L1 and the database.";
                "error" => error);
        }
        if let Ok(mut conn) = self.conn.write() {
            *conn = None;
        }
        self.broken.notify_one();
    }

    async fn run<T>(&self, call: impl Future<Output = redis::RedisResult<T>>) -> Option<T> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(error)) => {
                self.mark_down(&error.to_string());
                None
            }
            Err(_) => {
                self.mark_down("command timed out");
                None
            }
        }
    }

    pub async fn get(&self, id: i64) -> L2Lookup {
        let Some(mut conn) = self.connection() else {
            return L2Lookup::Unavailable;
        };
        let cmd = redis::cmd("GET").arg(self.key(id)).to_owned();
        let Some(value) = self.run(cmd.query_async::<Option<String>>(&mut conn)).await else {
            return L2Lookup::Unavailable;
        };
        match value.as_deref().map(decode) {
            None => L2Lookup::Miss,
            Some(Some(Decoded::Item(item))) if item.id == id => L2Lookup::Hit(item),
            Some(Some(Decoded::Tombstone)) => L2Lookup::Tombstone,
            // Unreadable values are treated as absent; the next fill replaces them.
            Some(_) => L2Lookup::Miss,
        }
    }

    pub async fn fill(&self, item: &Item) {
        let Some(mut conn) = self.connection() else {
            return;
        };
        let Ok(json) = serde_json::to_string(item) else {
            return;
        };
        let value = format!("{}:i:{json}", item.version);
        let mut invocation = self.fill.prepare_invoke();
        invocation
            .key(self.key(item.id))
            .arg(item.version)
            .arg(value)
            .arg(self.ttl_secs);
        let _ = self.run(invocation.invoke_async::<i64>(&mut conn)).await;
    }

    /// Replaces the cached value with a tombstone at `version`. When Redis is down the
    /// tombstone is kept and replayed on reconnection, before L2 serves reads again.
    pub async fn invalidate(&self, id: i64, version: i64) {
        let written = match self.connection() {
            Some(mut conn) => self.write_tombstone(&mut conn, id, version).await,
            None => false,
        };
        if !written && let Ok(mut pending) = self.pending.lock() {
            let entry = pending.entry(id).or_insert(version);
            *entry = (*entry).max(version);
        }
    }

    async fn write_tombstone(
        &self,
        conn: &mut MultiplexedConnection,
        id: i64,
        version: i64,
    ) -> bool {
        let mut invocation = self.tombstone.prepare_invoke();
        invocation
            .key(self.key(id))
            .arg(version)
            .arg(format!("{version}:t:"))
            .arg(self.ttl_secs);
        self.run(invocation.invoke_async::<i64>(conn))
            .await
            .is_some()
    }

    /// Owns the connection: connects, reconnects with backoff after a failure, replays
    /// pending tombstones. Runs until the process exits.
    pub async fn maintain(self: Arc<Self>) {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout.max(Duration::from_millis(500))))
            .set_response_timeout(Some(self.timeout));
        let mut backoff = BACKOFF_START;
        let mut ever_connected = false;
        let mut unreachable_logged = false;
        loop {
            let attempt = self
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await;
            match attempt {
                Ok(mut conn) => {
                    if self.replay_pending(&mut conn).await {
                        if let Ok(mut slot) = self.conn.write() {
                            *slot = Some(conn);
                        }
                        self.up.store(true, Ordering::SeqCst);
                        if ever_connected || unreachable_logged {
                            info!(self.log, "Redis is reachable again; L2 is back in use.");
                        }
                        ever_connected = true;
                        backoff = BACKOFF_START;
                        self.broken.notified().await;
                    }
                }
                Err(error) => {
                    // After a drop, `mark_down` already logged the transition.
                    if !ever_connected && !unreachable_logged {
                        warn!(self.log, "Redis is unreachable; serving from L1 and the database.";
                            "error" => error.to_string());
                        unreachable_logged = true;
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    async fn replay_pending(&self, conn: &mut MultiplexedConnection) -> bool {
        let pending: Vec<(i64, i64)> = match self.pending.lock() {
            Ok(p) => p.iter().map(|(k, v)| (*k, *v)).collect(),
            Err(_) => return true,
        };
        for (id, version) in pending {
            if !self.write_tombstone(conn, id, version).await {
                return false;
            }
            if let Ok(mut p) = self.pending.lock()
                && p.get(&id) == Some(&version)
            {
                p.remove(&id);
            }
        }
        true
    }
}

enum Decoded {
    Item(Item),
    Tombstone,
}

fn decode(value: &str) -> Option<Decoded> {
    let (_version, rest) = value.split_once(':')?;
    let (kind, json) = rest.split_once(':')?;
    match kind {
        "t" => Some(Decoded::Tombstone),
        "i" => serde_json::from_str(json).ok().map(Decoded::Item),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: i64, version: i64) -> Item {
        Item {
            id,
            name: format!("v{version}"),
            value: version,
            version,
        }
    }

    async fn version_in_redis(l2: &L2, id: i64) -> Option<i64> {
        match l2.get(id).await {
            L2Lookup::Hit(item) => Some(item.version),
            L2Lookup::Tombstone => Some(-1),
            L2Lookup::Miss => None,
            L2Lookup::Unavailable => panic!("Redis went away mid-test"),
        }
    }

    /// The Lua guards, against the real Redis of HEAPWARDEN_TEST_REDIS_URL.
    #[test]
    fn stale_fills_cannot_overwrite_a_newer_tombstone_or_item() {
        let Some(url) = std::env::var("HEAPWARDEN_TEST_REDIS_URL")
            .ok()
            .filter(|u| !u.is_empty())
        else {
            eprintln!("skipped: HEAPWARDEN_TEST_REDIS_URL is not set");
            return;
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let log = Logger::root(slog::Discard, slog::o!());
            let prefix = format!(
                "hwtest:{}:{}:",
                std::process::id(),
                super::super::db::now_ms()
            );
            let l2 = L2::new(
                &url,
                &prefix,
                Duration::from_secs(60),
                Duration::from_secs(1),
                log,
            )
            .expect("client");
            tokio::spawn(l2.clone().maintain());
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while !l2.is_up() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "Redis at {url} is unreachable"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            l2.fill(&item(7, 1)).await;
            assert_eq!(version_in_redis(&l2, 7).await, Some(1));
            l2.invalidate(7, 2).await;
            assert_eq!(
                version_in_redis(&l2, 7).await,
                Some(-1),
                "the write left a tombstone"
            );
            l2.fill(&item(7, 1)).await;
            assert_eq!(
                version_in_redis(&l2, 7).await,
                Some(-1),
                "a stale fill was refused"
            );
            l2.fill(&item(7, 2)).await;
            assert_eq!(
                version_in_redis(&l2, 7).await,
                Some(2),
                "the written version fills"
            );
            l2.fill(&item(7, 1)).await;
            l2.invalidate(7, 1).await;
            assert_eq!(
                version_in_redis(&l2, 7).await,
                Some(2),
                "older fills and tombstones lose"
            );
        });
    }

    #[test]
    fn values_decode() {
        let item = Item {
            id: 1,
            name: "a:b".into(),
            value: 2,
            version: 3,
        };
        let text = format!("3:i:{}", serde_json::to_string(&item).unwrap());
        assert!(matches!(decode(&text), Some(Decoded::Item(i)) if i == item));
        assert!(matches!(decode("4:t:"), Some(Decoded::Tombstone)));
        assert!(decode("garbage").is_none());
    }
}
