//! One demo worker's life: the async runtime, the parts of the service (`App`) built
//! from its settings and `[demo]` config, the probe hooks (metrics hand-off,
//! invalidation relay, runtime lag), readiness, and the drain.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;
use heapwarden_probes::{Causes, Probe, RuntimeLag};
use metrics_exporter_prometheus::PrometheusHandle;
use slog::{Logger, error, info, o};
use tokio_util::sync::CancellationToken;

use crate::cli::Settings;
use crate::config::DemoConfig;
use crate::log::Redactor;
use crate::{cache, compute, db, items, jobs, leak, log, metrics, observe, redis_l2, routes};
use crate::{serve, server};

/// Everything a request handler can reach. Built once per worker process.
pub struct App {
    pub config: DemoConfig,
    pub log: Logger,
    pub db: db::Db,
    pub l1: cache::L1,
    pub l2: Option<Arc<redis_l2::L2>>,
    pub probe: Option<Probe>,
    pub compute: compute::ComputePool,
    pub jobs: Arc<jobs::Jobs>,
    pub metrics: PrometheusHandle,
    /// Pre-built metric handles of the request path.
    pub handles: metrics::Handles,
    pub request_ids: observe::RequestIds,
    pub lag: RuntimeLag,
    pub draining: AtomicBool,
    /// The worker slot this process serves (from the probe's `WorkerContext`).
    pub slot: usize,
    /// `x-worker` on every response: which slot served it (tests and debugging).
    pub worker_header: axum::http::HeaderValue,
    /// Whether request log records are written at all (level info or finer).
    pub log_requests: bool,
    /// What request logs must not show (header values, payload fields).
    pub redactor: Redactor,
}

/// Overrides the runtime's thread count (benchmarks; 1 means a current-thread runtime).
const THREADS_ENV: &str = "HEAPWARDEN_DEMO_THREADS";

/// Threads of the async runtime. A worker is one event loop on one thread, like a Node
/// worker: the agent scales out with one worker per core (the default), and on a
/// current-thread runtime there are no work-stealing wake-ups between threads, which cost
/// more than they bring when the other cores belong to other workers (measured: the same
/// req/s on 2 cores at a quarter of the p99). Only when the agent runs fewer workers than
/// cores does each get its share of them. Run alone, the worker is single-threaded too.
fn runtime_threads(pool_size: Option<usize>) -> usize {
    if let Some(n) = std::env::var(THREADS_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
    {
        return n;
    }
    let Some(workers) = pool_size else {
        return 1;
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / workers.max(1)).max(1)
}

const LAG_PERIOD: Duration = Duration::from_millis(100);
const FALLBACK_DRAIN: Duration = Duration::from_secs(30);

/// Runs the worker until it drained.
pub fn main(config: DemoConfig, settings: Settings) -> anyhow::Result<()> {
    let (root, _log_flush) = log::stdout_logger(settings.log_level);
    let log =
        root.new(o!("module" => "demo", "worker" => settings.slot, "pid" => std::process::id()));
    // Sampling costs little and lets the agent pull profiles; without it we still serve.
    if let Err(e) = heapwarden_probes::activate_profiling() {
        info!(log, "Heap profiling is unavailable in this worker."; "error" => Causes(&e).to_string());
    }
    let probe = Probe::from_env();
    // Only a pool shares the cores; a worker run alone is single-threaded.
    let threads = runtime_threads(settings.pool_size.filter(|_| probe.is_some()));
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .thread_name("demo-runtime")
            .build()
    }
    .context("cannot start the async runtime")?;
    info!(log, "The demo worker starts its async runtime."; "threads" => threads);
    let result = runtime.block_on(run(config, settings, probe, log.clone()));
    match &result {
        Ok(()) => info!(log, "The demo worker stopped."),
        Err(e) => error!(log, "The demo worker failed."; "error" => format!("{e:#}")),
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn run(
    demo: DemoConfig,
    settings: Settings,
    probe: Option<Probe>,
    log: Logger,
) -> anyhow::Result<()> {
    let state_dir = &settings.state_dir;
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("cannot create the state directory {}", state_dir.display()))?;
    let metrics = metrics::install(settings.slot)?;
    let db = db::Db::open(&demo, state_dir).await?;
    db.prepare(settings.seed.unwrap_or(demo.seed_rows)).await?;
    let l2 = if demo.redis_url.trim().is_empty() {
        None
    } else {
        let l2 = redis_l2::L2::new(
            &demo.redis_url,
            &demo.redis_key_prefix,
            demo.l2_ttl,
            demo.redis_timeout,
            log.clone(),
        )
        .context("demo.redis-url is not a usable Redis URL")?;
        tokio::spawn(l2.clone().maintain());
        Some(l2)
    };
    let compute = compute::ComputePool::start(demo.compute_threads, demo.compute_queue)?;
    let jobs = jobs::Jobs::new(db.clone(), &demo, log.clone());
    let (listener, inherited) = server::service_listener(settings.listen)?;
    let app = Arc::new(App {
        log_requests: matches!(
            settings.log_level,
            slog::Level::Info | slog::Level::Debug | slog::Level::Trace
        ),
        redactor: settings.redactor,
        slot: settings.slot,
        worker_header: axum::http::HeaderValue::from(settings.slot),
        l1: cache::L1::new(demo.l1_capacity, demo.l1_ttl),
        lag: heapwarden_probes::spawn_lag_monitor(LAG_PERIOD),
        draining: AtomicBool::new(false),
        config: demo,
        log: log.clone(),
        db,
        l2,
        probe,
        compute,
        jobs,
        metrics,
        handles: metrics::Handles::new(),
        request_ids: observe::RequestIds::new(),
    });
    connect_probe(&app);
    let stop = CancellationToken::new();
    spawn_background(&app, &stop);
    tokio::spawn(server::watch_for_shutdown(app.clone(), stop.clone()));

    info!(log, "The demo worker is serving.";
        "listen" => listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        "inherited_socket" => inherited,
        "database" => match app.db { db::Db::Sqlite(_) => "sqlite", db::Db::Postgres(_) => "postgres" },
        "redis" => app.l2.is_some(), "compute_threads" => app.compute.threads());
    if let Some(probe) = &app.probe {
        probe.ready();
    }
    let router = routes::router(app.clone());
    let service = serve::serve(listener, app.clone(), router, stop.clone(), log.clone());
    tokio::select! {
        () = service => {}
        () = server::drain_deadline(&app, &stop, FALLBACK_DRAIN, &log) => {}
    }
    Ok(())
}

/// Hands the probe our metrics, our invalidation hook and the runtime lag.
fn connect_probe(app: &Arc<App>) {
    let Some(probe) = &app.probe else { return };
    let for_metrics = app.clone();
    probe.set_metrics_source(move || metrics::render(&for_metrics));
    let for_invalidate = app.clone();
    probe.on_invalidate(move |key, version| {
        if let Some(id) = cache::parse_item_key(key) {
            items::invalidate_local(&for_invalidate, id, version);
        }
    });
    probe.set_runtime_lag(app.lag.clone());
}

fn spawn_background(app: &Arc<App>, stop: &CancellationToken) {
    tokio::spawn(app.jobs.clone().run(stop.clone(), FALLBACK_DRAIN));
    let leak_rate = app.config.leak_rate.bytes();
    let leaks_here = app.config.leak_slots.is_empty() || app.config.leak_slots.contains(&app.slot);
    if leak_rate > 0 && leaks_here {
        tokio::spawn(leak::leak_steadily(leak_rate, app.log.clone()));
    }
    let handle = app.metrics.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            handle.run_upkeep();
        }
    });
}
