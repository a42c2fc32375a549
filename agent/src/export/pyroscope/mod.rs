//! Every heap profile the agent stores, pushed to Grafana Pyroscope. The exporter is one
//! task that reads the store — never the dump path — behind a cursor in the state
//! directory: it pushes the profile stored next after the cursor (store order, not id
//! order: a slow dump keeps the lower id it started with), records what became of it
//! in the profile index (`export` of each entry: sent, rejected, expired, invalid, with
//! the time), then moves the cursor. A sink that is down or slow only makes the backlog
//! wait on disk: the agent holds one profile in memory at a time and one socket per
//! attempt, so its RSS and fd count stay flat. It follows `[export.pyroscope]` in the
//! live config (reload switches it on, off, or to another sink).
//!
//! `proto`: the push messages; `labels`: labels, Pyroscope's validation rules, links;
//! `client`: one HTTP push; `tls`: what an https sink must prove; `delivery`: retry and
//! expiry decisions; `cursor`: the cursor file; `periodic`: the `every` profiles.

mod client;
mod cursor;
mod delivery;
pub mod labels;
mod periodic;
pub mod proto;
mod tls;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use slog::{Logger, debug, info, warn};
use tokio::sync::watch;

pub use client::{PUSH_PATH, PushResult, Target, push};
pub use cursor::{Cursor, CursorError};
pub use delivery::{MAX_AGE, Step};
pub use labels::{LabelContext, explore_link, profile_labels, profile_link, validate_labels};
pub use periodic::run_periodic;

use crate::config::{Config, PyroscopeConfig};
use crate::log::Causes;
use crate::metric_names::labels::ExportOutcome;
use crate::metric_names::{
    PROFILE_EXPORT_LAG, PROFILE_EXPORT_PENDING, PROFILE_EXPORTS, PROFILE_PUSH_DURATION,
};
use crate::profiles::{ExportMark, ProfileMeta, ProfileStoreHandle};

/// How often the lag gauge is refreshed while nothing else happens.
const IDLE_REFRESH: Duration = Duration::from_secs(5);

pub struct Exporter {
    config: watch::Receiver<Config>,
    store: ProfileStoreHandle,
    cursor: Cursor,
    log: Logger,
    jitter: delivery::Jitter,
    /// Failed attempts in a row (for the backoff, and to log a streak once).
    failures: u32,
    tls: tls::TlsSettings,
}

impl Exporter {
    pub fn new(
        config: watch::Receiver<Config>,
        store: ProfileStoreHandle,
        state_dir: &Path,
        log: Logger,
    ) -> Result<Exporter, CursorError> {
        Ok(Exporter {
            config,
            store,
            cursor: Cursor::open(state_dir)?,
            log,
            jitter: delivery::Jitter::seeded(),
            failures: 0,
            tls: tls::TlsSettings::default(),
        })
    }

    /// Runs until the store stops.
    pub async fn run(mut self) {
        let mut commits = self.store.commits();
        let mut was_on = None;
        loop {
            let (settings, pool_env) = {
                let c = self.config.borrow_and_update();
                (c.export.pyroscope.clone(), c.pool.env.clone())
            };
            if was_on != Some(settings.enabled()) {
                if settings.enabled() {
                    info!(self.log, "Profiles are pushed to Pyroscope.";
                        "url" => &settings.url, "service_name" => &settings.service_name,
                        "cursor" => self.cursor.last());
                } else {
                    info!(self.log, "Profiles are not pushed to Pyroscope (export.pyroscope.url is empty).";
                        "cursor" => self.cursor.last());
                }
                was_on = Some(settings.enabled());
                self.failures = 0;
            }
            if !settings.enabled() {
                set_backlog(0, None);
                if self.config.changed().await.is_err() {
                    return;
                }
                continue;
            }
            let Ok(queue) = self.store.export_queue(self.cursor.last()).await else {
                return;
            };
            set_backlog(queue.pending, queue.oldest_unix_ms);
            let Some((meta, path)) = queue.next else {
                commits.borrow_and_update();
                tokio::select! {
                    changed = commits.changed() => if changed.is_err() { return },
                    changed = self.config.changed() => if changed.is_err() { return },
                    () = tokio::time::sleep(IDLE_REFRESH) => {}
                }
                continue;
            };
            let context = LabelContext::new(&settings, &pool_env);
            let last_waiting = queue.pending <= 1;
            match self.attempt(&settings, &context, &meta, &path).await {
                Step::Done { outcome, reason } => {
                    let end = (outcome, reason);
                    self.finish(&settings, &context, &meta, end, last_waiting)
                        .await
                }
                Step::Again { delay, reason } => {
                    metrics::counter!(PROFILE_EXPORTS.name, "outcome" => ExportOutcome::Retried.as_str())
                        .increment(1);
                    if self.failures == 0 {
                        warn!(self.log, "A profile could not be pushed to Pyroscope; retrying with backoff until it is older than an hour.";
                            "profile_id" => meta.id, "worker" => meta.slot, "reason" => &reason,
                            "retry_in_ms" => delay.as_millis() as u64);
                    } else {
                        debug!(self.log, "A profile push is retried.";
                            "profile_id" => meta.id, "reason" => &reason, "failures" => self.failures,
                            "retry_in_ms" => delay.as_millis() as u64);
                    }
                    self.failures = self.failures.saturating_add(1);
                    if !self.wait_to_retry(delay, &mut commits).await {
                        return;
                    }
                }
            }
        }
    }

    /// Waits `delay` before the next attempt, keeping the backlog gauges current as
    /// profiles are written meanwhile; a reload (another URL, export off) cuts the wait
    /// short. False when the agent is stopping.
    async fn wait_to_retry(&mut self, delay: Duration, commits: &mut watch::Receiver<u64>) -> bool {
        let deadline = tokio::time::Instant::now() + delay;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return true,
                changed = self.config.changed() => {
                    self.failures = 0;
                    return changed.is_ok();
                }
                changed = commits.changed() => {
                    if changed.is_err() {
                        return false;
                    }
                    match self.store.export_queue(self.cursor.last()).await {
                        Ok(queue) => set_backlog(queue.pending, queue.oldest_unix_ms),
                        Err(_) => return false,
                    }
                }
            }
        }
    }

    /// Checks, builds and pushes one profile.
    async fn attempt(
        &mut self,
        settings: &PyroscopeConfig,
        context: &LabelContext,
        meta: &ProfileMeta,
        path: &Path,
    ) -> Step {
        if delivery::expired(meta.created_unix_ms, now_unix_ms()) {
            return Step::Done {
                outcome: ExportOutcome::Expired,
                reason: Some("older than Pyroscope accepts (1 h) before it could be sent".into()),
            };
        }
        let labels = profile_labels(meta, context);
        if let Err(e) = validate_labels(&labels) {
            return Step::Done {
                outcome: ExportOutcome::Invalid,
                reason: Some(e.to_string()),
            };
        }
        let raw = match read_profile(path.to_path_buf()).await {
            Ok(raw) => raw,
            Err(ReadError::Gone) => {
                return Step::Done {
                    outcome: ExportOutcome::Expired,
                    reason: Some("removed by retention before it could be sent".into()),
                };
            }
            Err(ReadError::Invalid(reason)) => {
                return Step::Done {
                    outcome: ExportOutcome::Invalid,
                    reason: Some(reason),
                };
            }
        };
        let target = match target(settings, &mut self.tls) {
            Ok(t) => t,
            Err(reason) => {
                return Step::Again {
                    delay: delivery::backoff(self.failures, self.jitter.next()),
                    reason,
                };
            }
        };
        let body = proto::push_request(labels, raw, sample_id(&context.instance, meta));
        let started = Instant::now();
        let result = push(&target, body).await;
        metrics::histogram!(PROFILE_PUSH_DURATION.name).record(started.elapsed().as_secs_f64());
        delivery::after_push(result, self.failures, self.jitter.next())
    }

    /// Records a profile's outcome (metric, index, log) and moves the cursor past it.
    async fn finish(
        &mut self,
        settings: &PyroscopeConfig,
        context: &LabelContext,
        meta: &ProfileMeta,
        (outcome, reason): (ExportOutcome, Option<String>),
        last_waiting: bool,
    ) {
        let now = now_unix_ms();
        metrics::counter!(PROFILE_EXPORTS.name, "outcome" => outcome.as_str()).increment(1);
        let failures = std::mem::take(&mut self.failures);
        match outcome {
            ExportOutcome::Sent => {
                let link = profile_link(
                    &settings.link_base,
                    &profile_labels(meta, context),
                    meta.created_unix_ms,
                );
                info!(self.log, "A heap profile reached Pyroscope.";
                    "profile_id" => meta.id, "worker" => meta.slot, "trigger" => meta.trigger.as_str(),
                    "rule" => meta.rule.as_deref(), "bytes" => meta.bytes,
                    "seconds_after_written" => now.saturating_sub(meta.created_unix_ms) as f64 / 1000.0,
                    "failed_attempts" => failures, "link" => link);
            }
            _ => warn!(self.log, "A heap profile will not reach Pyroscope.";
                "profile_id" => meta.id, "worker" => meta.slot, "trigger" => meta.trigger.as_str(),
                "outcome" => outcome.as_str(), "reason" => reason.as_deref()),
        }
        let mark = ExportMark {
            outcome,
            at_unix_ms: now,
            reason,
        };
        if let Err(e) = self.store.mark_exported(meta.id, mark, last_waiting).await {
            warn!(self.log, "The profile index could not record an export."; "profile_id" => meta.id, "error" => %Causes(&e));
        }
        if let Err(e) = self.cursor.advance(meta.stored_seq) {
            // In memory the cursor still moves; after a restart this profile may be sent again.
            warn!(self.log, "The export cursor could not be saved."; "error" => %Causes(&e));
        }
    }
}

fn set_backlog(pending: usize, oldest_unix_ms: Option<u64>) {
    metrics::gauge!(PROFILE_EXPORT_PENDING.name).set(pending as f64);
    let lag = oldest_unix_ms.map_or(0.0, |t| now_unix_ms().saturating_sub(t) as f64 / 1000.0);
    metrics::gauge!(PROFILE_EXPORT_LAG.name).set(lag);
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The push target, with the token read now (a rotated token is picked up) and, for an
/// https:// URL, the TLS settings.
fn target(settings: &PyroscopeConfig, tls: &mut tls::TlsSettings) -> Result<Target, String> {
    let authorization = if settings.token_file.as_os_str().is_empty() {
        None
    } else {
        let token = read_token(&settings.token_file)?;
        Some(authorization(&settings.username, &token))
    };
    let https = settings.url.trim().starts_with("https://");
    let tls = match https {
        true => Some((
            tls.client_config(&settings.ca_file)?,
            settings.ca_file.clone(),
        )),
        false => None,
    };
    Ok(Target {
        url: settings.url.clone(),
        tenant: settings.tenant.clone(),
        authorization,
        timeout: settings.timeout,
        tls,
    })
}

/// The `Authorization` value: Bearer `token`, or with a `username` HTTP Basic with the
/// token as the password.
fn authorization(username: &str, token: &str) -> String {
    use base64::Engine;
    if username.is_empty() {
        return format!("Bearer {token}");
    }
    let pair = format!("{username}:{token}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// Like the admin token: the agent's user's own file, no access for group or others.
fn read_token(path: &Path) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let (mut file, meta) = crate::owned::open_file(path)
        .map_err(|e| format!("export.pyroscope.token-file: {}", crate::log::causes(&e)))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "export.pyroscope.token-file {shown} is readable by others; chmod 600 it"
        ));
    }
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|e| format!("export.pyroscope.token-file {shown}: {e}"))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("export.pyroscope.token-file {shown} is empty"));
    }
    Ok(token.to_string())
}

/// A stable id per profile and host, shaped like a UUID (Pyroscope's profile id): a
/// retried push after a lost answer carries the same one.
fn sample_id(instance: &str, meta: &ProfileMeta) -> String {
    // FNV-1a of the instance; the profile id and time make it unique on the host.
    let host = instance.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let time = meta.created_unix_ms;
    format!(
        "{:08x}-{:04x}-8{:03x}-8{:03x}-{:012x}",
        (host >> 32) as u32,
        (host >> 16) as u16,
        (host & 0xfff) as u16,
        (time >> 48) as u16 & 0xfff,
        (meta.id << 24 ^ (time & 0xff_ffff)) & 0xffff_ffff_ffff
    )
}

enum ReadError {
    Gone,
    Invalid(String),
}

/// The stored `.pb.gz`, checked to be gzip and at most 4 MiB once uncompressed.
async fn read_profile(path: PathBuf) -> Result<Vec<u8>, ReadError> {
    let read = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, ReadError> {
        let raw = std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ReadError::Gone,
            _ => ReadError::Invalid(format!("cannot read {}: {e}", path.display())),
        })?;
        if !raw.starts_with(&[0x1f, 0x8b]) {
            return Err(ReadError::Invalid("the stored profile is not gzip".into()));
        }
        let limit = labels::MAX_PROFILE_BYTES;
        let mut decoder = flate2::read::GzDecoder::new(&raw[..]).take(limit + 1);
        let size = std::io::copy(&mut decoder, &mut std::io::sink()).map_err(|e| {
            ReadError::Invalid(format!("the stored profile is not valid gzip: {e}"))
        })?;
        if size > limit {
            return Err(ReadError::Invalid(format!(
                "the profile is larger than Pyroscope's {limit}-byte limit uncompressed"
            )));
        }
        Ok(raw)
    });
    read.await
        .unwrap_or_else(|e| Err(ReadError::Invalid(format!("the read task failed: {e}"))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profiles::{ProfileFigures, ProfileKind, Trigger};

    #[test]
    fn a_username_makes_the_token_a_basic_auth_password() {
        assert_eq!(authorization("", "t0k"), "Bearer t0k");
        assert_eq!(
            authorization("1234", "glc_secret"),
            "Basic MTIzNDpnbGNfc2VjcmV0"
        );
    }

    #[test]
    fn sample_ids_are_uuid_shaped_stable_and_distinct() {
        let meta = |id| ProfileMeta {
            id,
            stored_seq: id,
            slot: 0,
            worker_id: None,
            pid: 1,
            trigger: Trigger::Manual,
            kind: ProfileKind::Profile,
            created_unix_ms: 1_765_000_000_123,
            bytes: 1,
            figures: ProfileFigures::default(),
            rule: None,
            file: String::new(),
            runtime: None,
            child_of: None,
            export: None,
        };
        let a = sample_id("host", &meta(1));
        assert_eq!(a, sample_id("host", &meta(1)));
        assert_ne!(a, sample_id("host", &meta(2)));
        assert_ne!(a, sample_id("other", &meta(1)));
        let parts: Vec<usize> = a.split('-').map(str::len).collect();
        assert_eq!(parts, vec![8, 4, 4, 4, 12], "{a}");
    }

    #[tokio::test]
    async fn oversized_or_non_gzip_profiles_are_invalid() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("1.pb.gz");
        std::fs::write(&plain, b"not gzip").unwrap();
        assert!(matches!(
            read_profile(plain).await,
            Err(ReadError::Invalid(_))
        ));
        let big = dir.path().join("2.pb.gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&vec![0u8; 5 * 1024 * 1024]).unwrap();
        std::fs::write(&big, gz.finish().unwrap()).unwrap();
        assert!(matches!(
            read_profile(big).await,
            Err(ReadError::Invalid(_))
        ));
        assert!(matches!(
            read_profile(dir.path().join("3.pb.gz")).await,
            Err(ReadError::Gone)
        ));
    }
}
