//! Background jobs: a durable queue in the SQL database with leases.
//!
//! A worker takes a due job with one `UPDATE … WHERE id = (SELECT … LIMIT 1)` (plus
//! `FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite serialises writers), which bumps
//! `attempts` and sets a lease. While the job runs the lease is renewed; a worker that
//! dies stops renewing, the lease expires and any worker takes the job again. `attempts`
//! doubles as a fencing token: only the holder of the current attempt can finish it.
//! Failures are retried after `job-backoff × 2^(attempt-1)`; after `job-max-attempts`
//! the job is `dead` (the dead-letter state).

use std::sync::Arc;
use std::time::Duration;

use heapwarden_probes::Causes;
use serde::Deserialize;
use slog::{Logger, info, warn};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use super::compute::stretch_password;
use super::db::{Db, DbError, now_ms, on_pool};
use super::metrics::names::{JOBS_TOTAL, JobOutcome};
use crate::config::DemoConfig;

pub const SQLITE_JOBS_DDL: &str = "CREATE TABLE IF NOT EXISTS demo_jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    payload TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    max_attempts BIGINT NOT NULL,
    run_at_ms BIGINT NOT NULL,
    lease_until_ms BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    result TEXT,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS demo_jobs_due ON demo_jobs (state, run_at_ms);";

pub const PG_JOBS_DDL: &str = "CREATE TABLE IF NOT EXISTS demo_jobs (
    id BIGSERIAL PRIMARY KEY,
    payload TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    max_attempts BIGINT NOT NULL,
    run_at_ms BIGINT NOT NULL,
    lease_until_ms BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    result TEXT,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS demo_jobs_due ON demo_jobs (state, run_at_ms);";

const CLAIM_SQLITE: &str = "UPDATE demo_jobs SET state = 'running', attempts = attempts + 1,
        lease_until_ms = $2, updated_ms = $1
    WHERE id = (SELECT id FROM demo_jobs
        WHERE (state = 'queued' AND run_at_ms <= $1) OR (state = 'running' AND lease_until_ms < $1)
        ORDER BY run_at_ms LIMIT 1)
    RETURNING id, payload, attempts, max_attempts";
const CLAIM_PG: &str = "UPDATE demo_jobs SET state = 'running', attempts = attempts + 1,
        lease_until_ms = $2, updated_ms = $1
    WHERE id = (SELECT id FROM demo_jobs
        WHERE (state = 'queued' AND run_at_ms <= $1) OR (state = 'running' AND lease_until_ms < $1)
        ORDER BY run_at_ms LIMIT 1 FOR UPDATE SKIP LOCKED)
    RETURNING id, payload, attempts, max_attempts";

/// What a job does. Extra fields (`metadata`) are stored and logged (redacted) as given.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    #[serde(default)]
    pub password: String,
    #[serde(default = "default_rounds")]
    pub rounds: u64,
    /// Fail this many first attempts on purpose (to watch retries and dead letters).
    #[serde(default)]
    pub fail_attempts: u32,
    /// Sleep this long before working (to watch leases and restarts), at most 60 s.
    #[serde(default)]
    pub sleep_ms: u64,
    #[serde(default)]
    pub metadata: serde_json::Value,
}

fn default_rounds() -> u64 {
    10_000
}

#[derive(Debug, sqlx::FromRow)]
struct Claimed {
    id: i64,
    payload: String,
    attempts: i64,
    max_attempts: i64,
}

#[derive(Debug, sqlx::FromRow, serde::Serialize)]
pub struct JobStatus {
    pub id: i64,
    pub state: String,
    pub attempts: i64,
    pub max_attempts: i64,
    pub last_error: Option<String>,
    pub result: Option<String>,
    pub created_ms: i64,
    pub updated_ms: i64,
}

impl Db {
    pub async fn enqueue_job(&self, payload: &str, max_attempts: u32) -> Result<i64, DbError> {
        const SQL: &str = "INSERT INTO demo_jobs (payload, state, attempts, max_attempts,
            run_at_ms, created_ms, updated_ms) VALUES ($1, 'queued', 0, $2, $3, $3, $3) RETURNING id";
        on_pool!(self, pool => sqlx::query_scalar::<_, i64>(SQL)
            .bind(payload).bind(i64::from(max_attempts)).bind(now_ms()).fetch_one(pool).await)
        .map_err(DbError::query("queueing a job"))
    }

    pub async fn job_status(&self, id: i64) -> Result<Option<JobStatus>, DbError> {
        const SQL: &str = "SELECT id, state, attempts, max_attempts, last_error, result,
            created_ms, updated_ms FROM demo_jobs WHERE id = $1";
        on_pool!(self, pool => sqlx::query_as::<_, JobStatus>(SQL).bind(id).fetch_optional(pool).await)
            .map_err(DbError::query("reading a job"))
    }

    async fn claim_job(&self, lease: Duration) -> Result<Option<Claimed>, DbError> {
        let now = now_ms();
        let until = now.saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX));
        let result = match self {
            Db::Sqlite(pool) => {
                sqlx::query_as::<_, Claimed>(CLAIM_SQLITE)
                    .bind(now)
                    .bind(until)
                    .fetch_optional(pool)
                    .await
            }
            Db::Postgres(pool) => {
                sqlx::query_as::<_, Claimed>(CLAIM_PG)
                    .bind(now)
                    .bind(until)
                    .fetch_optional(pool)
                    .await
            }
        };
        result.map_err(DbError::query("taking a job"))
    }

    /// Extends the lease; false when this attempt no longer holds the job.
    async fn renew_lease(&self, job: &Claimed, lease: Duration) -> Result<bool, DbError> {
        const SQL: &str = "UPDATE demo_jobs SET lease_until_ms = $3
            WHERE id = $1 AND attempts = $2 AND state = 'running'";
        let until = now_ms().saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX));
        on_pool!(self, pool => sqlx::query(SQL).bind(job.id).bind(job.attempts).bind(until)
            .execute(pool).await.map(|done| done.rows_affected() == 1))
        .map_err(DbError::query("renewing a job lease"))
    }

    /// Records the attempt's outcome, fenced by the attempt number.
    async fn finish_job(
        &self,
        job: &Claimed,
        state: &str,
        run_at_ms: i64,
        error: Option<&str>,
        result: Option<&str>,
    ) -> Result<(), DbError> {
        const SQL: &str = "UPDATE demo_jobs SET state = $3, run_at_ms = $4, last_error = $5,
            result = $6, lease_until_ms = 0, updated_ms = $7
            WHERE id = $1 AND attempts = $2 AND state = 'running'";
        on_pool!(self, pool => sqlx::query(SQL).bind(job.id).bind(job.attempts).bind(state)
            .bind(run_at_ms).bind(error).bind(result).bind(now_ms()).execute(pool).await.map(|_| ()))
        .map_err(DbError::query("recording a job outcome"))
    }
}

/// The per-worker job runner.
pub struct Jobs {
    db: Db,
    lease: Duration,
    poll: Duration,
    backoff: Duration,
    max_rounds: u64,
    slots: Arc<Semaphore>,
    concurrency: usize,
    pub wake: Notify,
    log: Logger,
}

impl Jobs {
    pub fn new(db: Db, config: &DemoConfig, log: Logger) -> Arc<Jobs> {
        Arc::new(Jobs {
            db,
            lease: config.job_lease,
            poll: config.jobs_poll,
            backoff: config.job_backoff,
            max_rounds: config.compute_max_rounds,
            slots: Arc::new(Semaphore::new(config.jobs_concurrency)),
            concurrency: config.jobs_concurrency,
            wake: Notify::new(),
            log,
        })
    }

    /// Takes and runs due jobs until `stop`; then waits up to `grace` for running ones.
    pub async fn run(self: Arc<Self>, stop: CancellationToken, grace: Duration) {
        let mut failing = false;
        loop {
            let permit = tokio::select! {
                permit = self.slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                () = stop.cancelled() => break,
            };
            match self.db.claim_job(self.lease).await {
                Ok(Some(job)) => {
                    failing = false;
                    let me = self.clone();
                    tokio::spawn(async move {
                        me.run_one(job).await;
                        drop(permit);
                    });
                    continue;
                }
                Ok(None) => failing = false,
                Err(error) => {
                    if !failing {
                        warn!(self.log, "Cannot take jobs from the database."; "error" => Causes(&error).to_string());
                    }
                    failing = true;
                }
            }
            drop(permit);
            tokio::select! {
                () = tokio::time::sleep(self.poll) => {}
                () = self.wake.notified() => {}
                () = stop.cancelled() => break,
            }
        }
        let all = u32::try_from(self.concurrency).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(grace, self.slots.acquire_many(all)).await;
    }

    async fn run_one(&self, job: Claimed) {
        if job.attempts > job.max_attempts {
            // Taken again after its last attempt's worker died: that was the last try.
            self.finish(&job, Err("the worker running the last attempt died".into()))
                .await;
            return;
        }
        let outcome = {
            let work = self.work(&job);
            tokio::pin!(work);
            let mut renew = tokio::time::interval(self.lease / 3);
            renew.tick().await;
            loop {
                tokio::select! {
                    outcome = &mut work => break outcome,
                    _ = renew.tick() => {
                        if let Ok(false) = self.db.renew_lease(&job, self.lease).await {
                            warn!(self.log, "Lost the lease of a running job."; "job" => job.id);
                        }
                    }
                }
            }
        };
        self.finish(&job, outcome).await;
    }

    async fn work(&self, job: &Claimed) -> Result<String, String> {
        let spec: JobSpec =
            serde_json::from_str(&job.payload).map_err(|e| format!("unreadable payload: {e}"))?;
        if spec.sleep_ms > 0 {
            tokio::time::sleep(Duration::from_millis(spec.sleep_ms.min(60_000))).await;
        }
        if job.attempts <= i64::from(spec.fail_attempts) {
            return Err(format!("failing on purpose (attempt {})", job.attempts));
        }
        let rounds = spec.rounds.min(self.max_rounds);
        tokio::task::spawn_blocking(move || stretch_password(&spec.password, rounds))
            .await
            .map_err(|e| format!("the job's computation failed: {e}"))
    }

    async fn finish(&self, job: &Claimed, outcome: Result<String, String>) {
        let (state, run_at, error, result, counted) = match outcome {
            Ok(digest) => ("completed", 0, None, Some(digest), JobOutcome::Completed),
            Err(error) if job.attempts < job.max_attempts => {
                let exponent = u32::try_from(job.attempts.saturating_sub(1))
                    .unwrap_or(u32::MAX)
                    .min(16);
                let delay = self.backoff.saturating_mul(1 << exponent);
                let run_at =
                    now_ms().saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
                ("queued", run_at, Some(error), None, JobOutcome::Retried)
            }
            Err(error) => ("dead", 0, Some(error), None, JobOutcome::Failed),
        };
        match self
            .db
            .finish_job(job, state, run_at, error.as_deref(), result.as_deref())
            .await
        {
            Ok(()) => {
                metrics::counter!(JOBS_TOTAL, "outcome" => counted.as_str()).increment(1);
                info!(self.log, "A job attempt ended."; "job" => job.id, "attempt" => job.attempts,
                    "state" => state, "error" => error);
            }
            Err(e) => {
                warn!(self.log, "Could not record a job outcome; its lease will expire and it runs again.";
                "job" => job.id, "error" => Causes(&e).to_string())
            }
        }
    }
}
