//! The agent role (`heapwarden run`): checks what can be checked before anything starts
//! (state directory, admin token, both listening sockets, the profile store), then wires
//! the parts together on one small runtime — supervisor, sampler, watchdog, exporter — with the
//! admin server on its own thread, and runs until the supervisor has stopped every worker.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use slog::{Logger, info, o, warn};
use tokio::sync::{mpsc, watch};

use crate::admin::api::{ApiState, api_router};
use crate::admin::{
    AdminServer, AdminState, AdminToken, Limits, WorkerPageCache, connection_budget,
    exposition_channel, install_recorder, load_or_create_token, raise_fd_limit, router_with_api,
    run_worker_metrics, spawn_upkeep,
};
use crate::config::{Config, ConfigSource};
use crate::export::pyroscope::{Exporter, run_periodic};
use crate::log::LevelHandle;
use crate::metric_names;
use crate::profiles::{ProfileStore, ProfileStoreHandle};
use crate::sampler::{Roots, run_sampler};
use crate::supervisor::{Containment, Supervisor, SupervisorParts, listen};
use crate::ticks::Grid;
use crate::watchdog::Watchdog;

/// `/healthz` fails when the control loop has not ticked for this long.
const HEARTBEAT_MAX_AGE: Duration = Duration::from_secs(10);
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// `source`: where `config` came from (a reload reads it again).
pub fn run(config: Config, source: ConfigSource) -> anyhow::Result<()> {
    let (log, log_guard) = crate::log::init(&config.log);
    let parts = Parts {
        source,
        log_level: log_guard.level(),
    };
    let result = run_logged(config, parts, log.clone());
    if let Err(e) = &result {
        slog::error!(log, "The agent could not run."; "error" => format!("{e:#}"));
    }
    drop(log);
    drop(log_guard);
    result
}

/// What `run` hands down besides the config.
struct Parts {
    source: ConfigSource,
    log_level: LevelHandle,
}

/// `root` has no context; each part gets its own `module`.
fn run_logged(config: Config, parts: Parts, root: Logger) -> anyhow::Result<()> {
    let log = root.new(o!("module" => "agent"));
    let fd_limit = raise_fd_limit();
    prepare_state_dir(&config.state_dir, config.pool.user.is_some())?;
    let token = load_or_create_token(&config.admin.token_file, &config.state_dir)
        .context("the admin token cannot be used")?;
    let metrics = install_recorder().context("cannot install the metrics recorder")?;
    let mut store = ProfileStore::open(&config.state_dir, config.profiles.clone())
        .context("cannot open the profile store")?;
    if config.pool.user.is_some() {
        // Workers under their own user cannot write the store: they dump into a drop box.
        store = store
            .with_dropbox(&config.state_dir)
            .context("cannot prepare the workers' dump directory")?;
    }
    // One thread: the agent is I/O-bound and small; a single thread also keeps the
    // parent-death signal of workers tied to a thread that lives as long as we do.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Before binding: what a SIGKILLed predecessor left (holding the service socket) dies.
    let containment = Containment::establish(&config.state_dir, &log)
        .context("cannot contain the workers' processes")?;
    let result = runtime.block_on(async move {
        let socket = listen::Listeners::open(config.pool.listen, config.pool.balance, &log)?;
        let admin_listener = std::net::TcpListener::bind(config.admin.listen)
            .with_context(|| format!("cannot listen on admin.listen {}", config.admin.listen))?;
        info!(log, "The agent is starting.";
            "workers" => config.pool.worker_count(),
            "listen" => socket.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            "admin" => config.admin.listen.to_string(),
            "socket_activated" => socket.socket_activated(),
            "balance" => socket.balance(),
            "fd_limit" => fd_limit,
            "state_dir" => config.state_dir.display().to_string());
        for w in crate::config::warnings(&config) {
            warn!(log, "A setting is valid but probably not what was meant.";
                "key" => w.key, "warning" => w.message);
        }
        metrics::gauge!(metric_names::PROFILES_LIMIT_BYTES.name)
            .set(config.profiles.max_bytes.bytes() as f64);
        metrics::gauge!(metric_names::PROFILES_STORED_BYTES.name).set(store.stored_bytes() as f64);
        metric_names::register_zero_series();
        let (store, _store_thread) = ProfileStoreHandle::spawn(store);
        let grid = Grid::start();
        let (supervisor, handles) = Supervisor::new(
            config.clone(),
            SupervisorParts {
                socket,
                containment,
                source: parts.source,
                log: root.new(o!("module" => "supervisor")),
                log_level: parts.log_level,
                worker_log: root.new(o!("module" => "worker")),
                slot_series: register_slot_series,
                grid,
            },
        )?;
        let (exposition_writer, exposition_reader) = exposition_channel(config.sampling.interval);
        let (samples_tx, samples_rx) = mpsc::channel(1024);
        let (figures_tx, figures_rx) = watch::channel(Default::default());

        let upkeep = spawn_upkeep(metrics.clone(), grid);
        let resident = tokio::spawn(crate::resident::keep_resident_set_lean(
            handles.view.clone(),
            config.sampling.interval,
            config.watchdog.warmup,
            root.new(o!("module" => "agent")),
        ));
        let worker_metrics = tokio::spawn(run_worker_metrics(
            handles.config.clone(),
            handles.view.clone(),
            exposition_writer,
        ));
        let watchdog = Watchdog::new(
            handles.config.clone(),
            handles.view.clone(),
            handles.requests.clone(),
            store.clone(),
            figures_tx,
            root.new(o!("module" => "watchdog")),
        )
        .with_snapshot_headroom(config.profiles.snapshot_headroom);
        let suspects = watchdog.suspects();
        let sampler = tokio::spawn(run_sampler(
            handles.config.clone(),
            Roots::system(Path::new(CGROUP_ROOT)),
            handles.view.clone(),
            watchdog.fast_lane(),
            samples_tx,
            grid,
            root.new(o!("module" => "sampler")),
        ));
        let watchdog = tokio::spawn(watchdog.run(samples_rx));
        // Its own tasks, reading the store: no dump or sample ever waits on the sink.
        let exporter = Exporter::new(
            handles.config.clone(),
            store.clone(),
            &config.state_dir,
            root.new(o!("module" => "export")),
        )
        .context("the profile export cannot start")?;
        let exporter = tokio::spawn(exporter.run());
        let periodic = tokio::spawn(run_periodic(
            handles.config.clone(),
            handles.view.clone(),
            store.clone(),
            root.new(o!("module" => "export")),
        ));
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
            suspects,
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
        for task in [
            sampler,
            worker_metrics,
            watchdog,
            upkeep,
            exporter,
            periodic,
            resident,
        ] {
            task.abort();
        }
        admin.stop();
        outcome
    });
    drop(runtime);
    result
}

/// Zero-initialises the per-slot series of `slots` (at start, and for the slots a
/// reload adds).
fn register_slot_series(slots: std::ops::Range<usize>) {
    for slot in slots {
        metric_names::register_slot(slot);
    }
}

/// The state directory holds profiles and the admin token: the agent's user's own, 0700.
/// Workers under their own user (`pool.user`) need to reach `probes/` (the Node probe)
/// and the default run directory through it: 0711, traversable but not listable; what
/// is inside stays private (profiles/ 0700, the token 0600, probes/ read-only).
fn prepare_state_dir(dir: &Path, workers_have_own_user: bool) -> anyhow::Result<()> {
    let mode = if workers_have_own_user { 0o711 } else { 0o700 };
    crate::owned::prepare_dir(dir, mode).context("state-dir cannot be used")
}
