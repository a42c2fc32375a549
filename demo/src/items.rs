//! The cache-aside logic: reads go L1 → L2 → database and fill the layers they missed;
//! writes go to the database, then invalidate this worker's L1, Redis, and (through the
//! agent) every other worker's L1 before the write is acknowledged.

use bytes::Bytes;
use heapwarden_probes::Causes;
use slog::warn;

use super::App;
use super::cache::{Cached, item_key};
use super::db::Item;
use super::error::ApiError;
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

/// The item's JSON body and the layer that answered, or None when it does not exist.
pub async fn read(app: &App, id: i64) -> Result<Option<(Bytes, Layer)>, ApiError> {
    if let Some(cached) = app.l1.get(id) {
        app.handles.count_lookup(Some(Layer::L1));
        return Ok(Some((cached.body, Layer::L1)));
    }
    if let Some(l2) = &app.l2
        && let L2Lookup::Hit(item) = l2.get(id).await
        // An L2 value older than a write this worker already saw is not served.
        && app.l1.floor(id).is_none_or(|floor| item.version >= floor)
    {
        let cached = Cached::new(&item);
        let body = cached.body.clone();
        app.l1.fill(cached);
        app.handles.count_lookup(Some(Layer::L2));
        return Ok(Some((body, Layer::L2)));
    }
    match app.db.get_item(id).await? {
        Some(row) if !row.deleted => {
            let item = Item {
                id: row.id,
                name: row.name,
                value: row.value,
                version: row.version,
            };
            if let Some(l2) = &app.l2 {
                l2.fill(&item).await;
            }
            let cached = Cached::new(&item);
            let body = cached.body.clone();
            app.l1.fill(cached);
            app.handles.count_lookup(Some(Layer::Db));
            Ok(Some((body, Layer::Db)))
        }
        _ => {
            app.handles.count_lookup(None);
            Ok(None)
        }
    }
}

/// Drops `id` from this worker's L1 (refusing older fills from now on).
pub fn invalidate_local(app: &App, id: i64, version: i64) {
    app.l1.invalidate(id, version);
    app.handles.count_invalidation();
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
            "item" => id, "version" => version, "error" => Causes(&error).to_string());
        return Err(ApiError::unavailable(
            "the write is stored, but not every worker confirmed dropping its cached copy; retry",
            1,
        ));
    }
    Ok(())
}
