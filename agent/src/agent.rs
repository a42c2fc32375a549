//! The agent role (`heapwarden run`): checks what can be checked before anything starts
//! (state directory, admin token, both listening sockets, the profile store), then wires
//! the parts together on one small runtime — supervisor, sampler, watchdog — with the
//! admin server on its own thread, and runs until the supervisor has stopped every worker.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use slog::{Logger, info, o};
use tokio::sync::{mpsc, watch};

use crate::admin::api::{ApiState, api_router};
use crate::admin::{
    AdminServer, AdminState, AdminToken, Limits, WorkerPageCache, connection_budget,
    install_recorder, load_or_create_token, raise_fd_limit, router_with_api, spawn_upkeep,
};
use crate::config::Config;
use crate::profiles::{ProfileStore, ProfileStoreHandle, Trigger};
use crate::sampler::{Roots, exposition_channel, run_sampler};
use crate::supervisor::{RestartReason, Supervisor, listen};
use crate::watchdog::Watchdog;
use crate::watchdog::rules::Rule;

/// `/healthz` fails when the control loop has not ticked for this long.
const HEARTBEAT_MAX_AGE: Duration = Duration::from_secs(10);
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// `worker_env`: variables every worker gets so it sees the agent's config.
pub fn run(config: Config, worker_env: Vec<(String, String)>) -> anyhow::Result<()> {
    let (log, log_guard) = crate::log::init(&config.log);
    let result = run_logged(config, worker_env, log.clone());
    if let Err(e) = &result {
        slog::error!(log, "The agent could not run."; "error" => format!("{e:#}"));
    }
    drop(log);
    drop(log_guard);
    result
}

/// `root` has no context; each part gets its own `module`.
fn run_logged(
    config: Config,
    worker_env: Vec<(String, String)>,
    root: Logger,
) -> anyhow::Result<()> {
    let log = root.new(o!("module" => "agent"));
    let fd_limit = raise_fd_limit();
    prepare_state_dir(&config.state_dir)?;
    let token = load_or_create_token(&config.admin.token_file, &config.state_dir)
        .context("the admin token cannot be used")?;
    let metrics = install_recorder().context("cannot install the metrics recorder")?;
    let store = ProfileStore::open(&config.state_dir, config.profiles.clone())
        .context("cannot open the profile store")?;
    // One thread: the agent is I/O-bound and small; a single thread also keeps the
    // parent-death signal of workers tied to a thread that lives as long as we do.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async move {
        let socket = listen::open(config.pool.listen)?;
        let admin_listener = std::net::TcpListener::bind(config.admin.listen)
            .with_context(|| format!("cannot listen on admin.listen {}", config.admin.listen))?;
        info!(log, "The agent is starting.";
            "workers" => config.pool.worker_count(),
            "listen" => socket.local_addr.map(|a| a.to_string()).unwrap_or_default(),
            "admin" => config.admin.listen.to_string(),
            "socket_activated" => socket.socket_activated,
            "fd_limit" => fd_limit,
            "state_dir" => config.state_dir.display().to_string());
        metrics::gauge!("heapwarden_profiles_limit_bytes")
            .set(config.profiles.max_bytes.bytes() as f64);
        metrics::gauge!("heapwarden_profiles_stored_bytes").set(store.stored_bytes() as f64);
        register_zero_series(config.pool.worker_count());
        let (store, _store_thread) = ProfileStoreHandle::spawn(store);
        let sup_log = root.new(o!("module" => "supervisor"));
        let (supervisor, handles) = Supervisor::new(config.clone(), worker_env, socket, sup_log)?;
        let (exposition_writer, exposition_reader) = exposition_channel(config.sampling.interval);
        let (samples_tx, samples_rx) = mpsc::channel(1024);
        let (figures_tx, figures_rx) = watch::channel(Default::default());

        let upkeep = spawn_upkeep(metrics.clone());
        let sampler = tokio::spawn(run_sampler(
            config.sampling.clone(),
            Roots::system(Path::new(CGROUP_ROOT)),
            handles.view.clone(),
            samples_tx,
            handles.requests.clone(),
            exposition_writer,
            root.new(o!("module" => "sampler")),
        ));
        let watchdog = Watchdog::new(
            config.watchdog.clone(),
            handles.view.clone(),
            handles.requests.clone(),
            store.clone(),
            figures_tx,
            root.new(o!("module" => "watchdog")),
        )
        .with_snapshot_headroom(config.profiles.snapshot_headroom);
        let watchdog = tokio::spawn(watchdog.run(samples_rx));
        let api = api_router(ApiState {
            pool: handles.view.clone(),
            figures: figures_rx,
            requests: handles.requests.clone(),
            store: store.clone(),
            snapshot_headroom: config.profiles.snapshot_headroom,
            log: root.new(o!("module" => "api")),
        });
        let admin_state = AdminState {
            metrics,
            exposition: exposition_reader,
            pool: handles.view.clone(),
            heartbeat: handles.heartbeat.clone(),
            heartbeat_max_age: HEARTBEAT_MAX_AGE,
            token: AdminToken::new(token),
            open_metrics: config.admin.open_metrics,
            worker_page: WorkerPageCache::default(),
        };
        let limits = Limits {
            header_timeout: config.admin.header_timeout,
            idle_timeout: config.admin.idle_timeout,
            max_connections: connection_budget(
                config.admin.max_connections,
                fd_limit,
                config.pool.worker_count(),
            ),
        };
        let admin = AdminServer::spawn(
            admin_listener,
            router_with_api(admin_state, api),
            limits,
            root.new(o!("module" => "admin")),
        )
        .context("cannot start the admin server")?;

        let outcome = supervisor.run().await;
        for task in [sampler, watchdog, upkeep] {
            task.abort();
        }
        admin.stop();
        outcome
    });
    drop(runtime);
    result
}

/// Counters exist from the start at 0, so dashboards and `rate()`/`increase()` see the
/// first event instead of a series appearing out of nowhere.
fn register_zero_series(workers: usize) {
    for slot in 0..workers {
        let worker = slot.to_string();
        for reason in RestartReason::ALL {
            metrics::counter!("heapwarden_worker_restarts_total", "worker" => worker.clone(), "reason" => reason.as_str()).increment(0);
        }
        for rule in [Rule::MaxMemory, Rule::Growth, Rule::Trend] {
            metrics::counter!("heapwarden_leak_detections_total", "worker" => worker.clone(), "rule" => rule.as_str()).increment(0);
        }
        metrics::counter!("heapwarden_worker_failed_total", "worker" => worker.clone())
            .increment(0);
    }
    for trigger in [Trigger::Baseline, Trigger::Leak, Trigger::Manual] {
        for outcome in ["written", "skipped_disk_full", "skipped_retention"] {
            metrics::counter!("heapwarden_heap_profiles_total", "trigger" => trigger.as_str(), "outcome" => outcome).increment(0);
        }
    }
}

/// The state directory holds profiles and the admin token: the agent's user's own, 0700.
fn prepare_state_dir(dir: &Path) -> anyhow::Result<()> {
    crate::owned::prepare_dir(dir, 0o700).context("state-dir cannot be used")
}
