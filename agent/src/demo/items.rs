//! The cache-aside logic: reads go L1 → L2 → database and fill the layers they missed;
//! writes go to the database, then invalidate this worker's L1, Redis, and (through the
//! agent) every other worker's L1 before the write is acknowledged.

use std::sync::Arc;

use slog::warn;

use super::App;
use super::cache::item_key;
use super::db::Item;
use super::error::ApiError;
use super::metrics::count_lookup;
use super::redis_l2::L2Lookup;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    L1,
    L2,
    Db,
}

impl Layer {
    pub fn as_str(self) -> &'static str {
        match self {
            Layer::L1 => "l1",
            Layer::L2 => "l2",
            Layer::Db => "db",
        }
    }
}

pub async fn read(app: &App, id: i64) -> Result<Option<(Arc<Item>, Layer)>, ApiError> {
    if let Some(item) = app.l1.get(id) {
        count_lookup("l1");
        return Ok(Some((item, Layer::L1)));
    }
    if let Some(l2) = &app.l2
        && let L2Lookup::Hit(item) = l2.get(id).await
        // An L2 value older than a write this worker already saw is not served.
        && app.l1.floor(id).is_none_or(|floor| item.version >= floor)
    {
        let item = Arc::new(item);
        app.l1.fill(item.clone());
        count_lookup("l2");
        return Ok(Some((item, Layer::L2)));
    }
    match app.db.get_item(id).await? {
        Some(row) if !row.deleted => {
            let item = Arc::new(Item {
                id: row.id,
                name: row.name,
                value: row.value,
                version: row.version,
            });
            if let Some(l2) = &app.l2 {
                l2.fill(&item).await;
            }
            app.l1.fill(item.clone());
            count_lookup("db");
            Ok(Some((item, Layer::Db)))
        }
        _ => {
            count_lookup("miss");
            Ok(None)
        }
    }
}

/// Drops `id` from this worker's L1 (refusing older fills from now on).
pub fn invalidate_local(app: &App, id: i64, version: i64) {
    app.l1.invalidate(id, version);
    metrics::counter!("demo_cache_invalidations_total").increment(1);
}

/// After a committed write at `version`: local L1, Redis, then every other worker. The
/// caller answers only once this returned Ok, so an acknowledged write is never followed
/// by a stale read anywhere.
pub async fn invalidate_everywhere(app: &App, id: i64, version: i64) -> Result<(), ApiError> {
    invalidate_local(app, id, version);
    if let Some(l2) = &app.l2 {
        l2.invalidate(id, version).await;
    }
    if let Some(probe) = &app.probe
        && let Err(error) = probe.invalidate_everywhere(&item_key(id), version).await
    {
        warn!(app.log, "Not every worker confirmed a cache invalidation.";
            "item" => id, "version" => version, "error" => error.to_string());
        return Err(ApiError::unavailable(
            "the write is stored, but not every worker confirmed dropping its cached copy; retry",
            1,
        ));
    }
    Ok(())
}
