//! The SQL side of the demo: one sqlx pool (SQLite file in the state directory by
//! default, PostgreSQL when `database-url` says so), the schema, the seed and the item
//! queries. Both backends run the same SQL text (`$N` placeholders work in SQLite too);
//! only the DDL and the job-claim locking differ.

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::TryStreamExt;
use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use tokio::sync::mpsc;

use crate::config::DemoConfig;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot open the database {url}")]
    Open {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("{doing} failed")]
    Query {
        doing: &'static str,
        #[source]
        source: sqlx::Error,
    },
}

impl DbError {
    pub fn query(doing: &'static str) -> impl FnOnce(sqlx::Error) -> DbError {
        move |source| DbError::Query { doing, source }
    }

    /// A full pool is back-pressure (503), anything else is the database failing.
    pub fn is_pool_timeout(&self) -> bool {
        matches!(
            self,
            DbError::Query {
                source: sqlx::Error::PoolTimedOut,
                ..
            }
        )
    }
}

/// The pool, by backend. Cloning shares the pool.
#[derive(Clone, Debug)]
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs the same expression against whichever pool this is.
macro_rules! on_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            Db::Sqlite($pool) => $body,
            Db::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_pool;

/// One row as stored, including the soft-delete flag (deletes bump the version too, so
/// versions never go backwards for a key, which the cache invalidation relies on).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ItemRow {
    pub id: i64,
    pub name: String,
    pub value: i64,
    pub version: i64,
    pub deleted: bool,
}

/// An item as served and cached.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, sqlx::FromRow)]
pub struct Item {
    pub id: i64,
    pub name: String,
    pub value: i64,
    pub version: i64,
}

const ITEMS_DDL: &str = "CREATE TABLE IF NOT EXISTS demo_items (
    id BIGINT PRIMARY KEY,
    name TEXT NOT NULL,
    value BIGINT NOT NULL,
    version BIGINT NOT NULL,
    deleted BOOLEAN NOT NULL DEFAULT FALSE,
    updated_ms BIGINT NOT NULL
)";

const SEED: &str = "INSERT INTO demo_items (id, name, value, version, deleted, updated_ms)
    WITH RECURSIVE seq(i) AS (SELECT CAST(1 AS BIGINT) UNION ALL SELECT i + 1 FROM seq WHERE i < $1)
    SELECT i, 'item-' || i, (i * 7919) % 100000, 1, FALSE, $2 FROM seq WHERE TRUE
    ON CONFLICT (id) DO NOTHING";

/// Serialises schema creation and seeding across workers starting at once: concurrent
/// `CREATE TABLE IF NOT EXISTS` can fail on PostgreSQL's catalog.
const PG_SCHEMA_LOCK: i64 = 0x6865_6170_7761;

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// How long a SQLite statement waits for another connection's lock, and how long the
/// open retries turning a new file to WAL.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects the SQLite pool, retrying while the file is busy. The first connection turns
/// the file to WAL (`journal_mode`), which needs it alone: a sibling worker opening the
/// same new file at the same moment gets `SQLITE_BUSY` at once, without SQLite's busy
/// handler, and would fail its start. Once the file is WAL the pragma takes no lock.
async fn connect_sqlite(
    pool: SqlitePoolOptions,
    options: SqliteConnectOptions,
) -> Result<SqlitePool, sqlx::Error> {
    let deadline = tokio::time::Instant::now() + SQLITE_BUSY_TIMEOUT;
    let mut pause = Duration::from_millis(5);
    loop {
        match pool.clone().connect_with(options.clone()).await {
            Err(error) if is_busy(&error) && tokio::time::Instant::now() + pause < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            result => return result,
        }
    }
}

/// `SQLITE_BUSY` or one of its extended codes.
fn is_busy(error: &sqlx::Error) -> bool {
    const SQLITE_BUSY: i32 = 5;
    let sqlx::Error::Database(error) = error else {
        return false;
    };
    error
        .code()
        .and_then(|code| code.parse::<i32>().ok())
        .is_some_and(|code| code & 0xff == SQLITE_BUSY)
}

impl Db {
    /// Opens the pool the config names; the SQLite file lives in `state_dir`.
    pub async fn open(config: &DemoConfig, state_dir: &Path) -> Result<Db, DbError> {
        let url = config.database_url.trim();
        let open_error = |source| DbError::Open {
            url: if url.is_empty() {
                state_dir.join("demo.sqlite").display().to_string()
            } else {
                url.to_string()
            },
            source,
        };
        if url.starts_with("postgres") {
            let options = PgConnectOptions::from_str(url).map_err(open_error)?;
            let pool = PgPoolOptions::new()
                .max_connections(config.db_max_connections)
                .acquire_timeout(config.db_acquire_timeout)
                .idle_timeout(config.db_idle_timeout)
                .connect_with(options)
                .await
                .map_err(open_error)?;
            return Ok(Db::Postgres(pool));
        }
        let options = if url.is_empty() {
            SqliteConnectOptions::new().filename(state_dir.join("demo.sqlite"))
        } else {
            SqliteConnectOptions::from_str(url).map_err(open_error)?
        };
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(SQLITE_BUSY_TIMEOUT);
        // An embedded database has no connection to lose: a ping before each acquire
        // would only be one more round trip to the connection's thread per query.
        let pool = SqlitePoolOptions::new()
            .max_connections(config.db_max_connections)
            .acquire_timeout(config.db_acquire_timeout)
            .idle_timeout(config.db_idle_timeout)
            .test_before_acquire(false);
        let pool = connect_sqlite(pool, options).await.map_err(open_error)?;
        Ok(Db::Sqlite(pool))
    }

    /// Creates the tables if missing and fills ids 1..=`rows` that do not exist yet.
    pub async fn prepare(&self, rows: u64) -> Result<(), DbError> {
        let rows = i64::try_from(rows).unwrap_or(i64::MAX);
        match self {
            Db::Sqlite(pool) => {
                sqlx::raw_sql(ITEMS_DDL)
                    .execute(pool)
                    .await
                    .map_err(DbError::query("creating the items table"))?;
                sqlx::raw_sql(super::jobs::SQLITE_JOBS_DDL)
                    .execute(pool)
                    .await
                    .map_err(DbError::query("creating the jobs table"))?;
                if rows > 0 {
                    sqlx::query(SEED)
                        .bind(rows)
                        .bind(now_ms())
                        .execute(pool)
                        .await
                        .map_err(DbError::query("seeding the items table"))?;
                }
            }
            Db::Postgres(pool) => {
                let mut conn = pool
                    .acquire()
                    .await
                    .map_err(DbError::query("taking a connection for the schema"))?;
                sqlx::query("SELECT pg_advisory_lock($1)")
                    .bind(PG_SCHEMA_LOCK)
                    .execute(&mut *conn)
                    .await
                    .map_err(DbError::query("locking the schema"))?;
                let result = async {
                    sqlx::raw_sql(ITEMS_DDL)
                        .execute(&mut *conn)
                        .await
                        .map_err(DbError::query("creating the items table"))?;
                    sqlx::raw_sql(super::jobs::PG_JOBS_DDL)
                        .execute(&mut *conn)
                        .await
                        .map_err(DbError::query("creating the jobs table"))?;
                    if rows > 0 {
                        sqlx::query(SEED)
                            .bind(rows)
                            .bind(now_ms())
                            .execute(&mut *conn)
                            .await
                            .map_err(DbError::query("seeding the items table"))?;
                    }
                    Ok(())
                }
                .await;
                let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                    .bind(PG_SCHEMA_LOCK)
                    .execute(&mut *conn)
                    .await;
                result?;
            }
        }
        Ok(())
    }

    pub async fn ping(&self) -> Result<(), DbError> {
        on_pool!(self, pool => sqlx::query("SELECT 1").execute(pool).await.map(|_| ()))
            .map_err(DbError::query("pinging the database"))
    }

    /// (idle, in use) connections of the pool right now.
    pub fn pool_connections(&self) -> (u64, u64) {
        let (size, idle) = on_pool!(self, pool => (pool.size(), pool.num_idle()));
        let idle = idle as u64;
        (idle, u64::from(size).saturating_sub(idle))
    }

    pub async fn get_item(&self, id: i64) -> Result<Option<ItemRow>, DbError> {
        const SQL: &str = "SELECT id, name, value, version, deleted FROM demo_items WHERE id = $1";
        on_pool!(self, pool => sqlx::query_as::<_, ItemRow>(SQL).bind(id).fetch_optional(pool).await)
            .map_err(DbError::query("reading an item"))
    }

    /// Inserts or replaces the item; returns the new version.
    pub async fn put_item(&self, id: i64, name: &str, value: i64) -> Result<i64, DbError> {
        const SQL: &str = "INSERT INTO demo_items (id, name, value, version, deleted, updated_ms)
            VALUES ($1, $2, $3, 1, FALSE, $4)
            ON CONFLICT (id) DO UPDATE SET name = excluded.name, value = excluded.value,
                version = demo_items.version + 1, deleted = FALSE, updated_ms = excluded.updated_ms
            RETURNING version";
        on_pool!(self, pool => sqlx::query_scalar::<_, i64>(SQL)
            .bind(id).bind(name).bind(value).bind(now_ms())
            .fetch_one(pool).await)
        .map_err(DbError::query("writing an item"))
    }

    /// Soft-deletes the item; returns the new version, or None when it did not exist.
    pub async fn delete_item(&self, id: i64) -> Result<Option<i64>, DbError> {
        const SQL: &str = "UPDATE demo_items SET deleted = TRUE, version = version + 1,
            updated_ms = $2 WHERE id = $1 AND deleted = FALSE RETURNING version";
        on_pool!(self, pool => sqlx::query_scalar::<_, i64>(SQL)
            .bind(id).bind(now_ms()).fetch_optional(pool).await)
        .map_err(DbError::query("deleting an item"))
    }

    /// Streams every live row as NDJSON chunks into `out`. The channel is bounded, so a
    /// slow client stops the cursor instead of buffering rows in memory.
    pub async fn export_items(&self, out: mpsc::Sender<Result<Bytes, std::io::Error>>) {
        const SQL: &str = "SELECT id, name, value, version FROM demo_items
            WHERE deleted = FALSE ORDER BY id";
        const CHUNK: usize = 32 * 1024;
        let result: Result<(), sqlx::Error> = on_pool!(self, pool => async {
            let mut rows = sqlx::query_as::<_, Item>(SQL).fetch(pool);
            let mut buf = Vec::with_capacity(CHUNK + 256);
            while let Some(item) = rows.try_next().await? {
                // Serialising a plain struct into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut buf, &item);
                buf.push(b'\n');
                if buf.len() >= CHUNK {
                    let chunk = Bytes::from(std::mem::replace(&mut buf, Vec::with_capacity(CHUNK + 256)));
                    if out.send(Ok(chunk)).await.is_err() {
                        return Ok(()); // the client went away
                    }
                }
            }
            if !buf.is_empty() {
                let _ = out.send(Ok(Bytes::from(buf))).await;
            }
            Ok(())
        }.await);
        if let Err(error) = result {
            // Ends the chunked body without its terminator, so the client sees a failure.
            let _ = out
                .send(Err(std::io::Error::other(error.to_string())))
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use sqlx::{ConnectOptions, Connection};

    use super::*;

    /// A sibling worker mid-write on the new file (as while it turns it to WAL) makes
    /// SQLite refuse the change to WAL at once, whatever the busy timeout: the open waits
    /// the lock out instead of failing the worker's start.
    #[tokio::test]
    async fn the_open_waits_out_a_sibling_holding_the_new_file_s_write_lock() {
        const HELD: Duration = Duration::from_millis(300);
        let dir = tempfile::tempdir().expect("temp dir");
        let mut sibling = SqliteConnectOptions::new()
            .filename(dir.path().join("demo.sqlite"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Delete)
            .connect()
            .await
            .expect("sibling connects");
        sqlx::raw_sql("CREATE TABLE held (x); BEGIN IMMEDIATE")
            .execute(&mut sibling)
            .await
            .expect("sibling takes the write lock");
        let started = std::time::Instant::now();
        let sibling = tokio::spawn(async move {
            tokio::time::sleep(HELD).await;
            sqlx::raw_sql("COMMIT")
                .execute(&mut sibling)
                .await
                .expect("commit");
            sibling
        });
        let db = Db::open(&DemoConfig::default(), dir.path())
            .await
            .expect("the open waits for the sibling's commit");
        assert!(started.elapsed() >= HELD, "opened while the lock was held");
        let Db::Sqlite(pool) = &db else {
            panic!("the default database is SQLite")
        };
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(pool)
            .await
            .expect("journal mode");
        assert_eq!(mode, "wal");
        sibling
            .await
            .expect("sibling")
            .close()
            .await
            .expect("close");
    }
}
