//! The fleet a page travels through, all real and on loopback: heapwarden agents (each
//! its own `instance`), one Prometheus (Debian's `prometheus`, 1 s scrape and
//! evaluation, loading the project's `dashboards/alerts.yml`), one Alertmanager
//! (`prometheus-alertmanager`) and the webhook receiver the test runs, which keeps every
//! notification body with the wall-clock time it arrived.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use heapwarden_tests::tools::repo_root;
use heapwarden_tests::*;
use serde_json::Value;

pub const SECS: fn(u64) -> Duration = Duration::from_secs;

/// A Node app for the fleet: `MODE=leak-once` leaks `LEAK_BYTES` every 100 ms in the first
/// worker of each slot only (a marker file per slot), so the replacement is healthy and
/// the suspect can expire — small objects in `leakInNamedFunction`, or with
/// `LEAK_KINDS=named,buffer` Buffers (memory outside the JS heap) in odd slots; `MODE=sawtooth`
/// (run with `--expose-gc`) fills about 1.5 MiB of objects per 100 ms tick and drops
/// them with a full collection every 1.5 s (a trend window holds four cycles; a 1 s
/// scrape does not alias it): a sawtooth that returns to its floor.
pub const FLEET_JS: &str = r#"'use strict';
const fs = require('fs');
const http = require('http');
const held = [];
function leakInNamedFunction(bytes) {
  for (let i = 0; i < bytes / 128; i += 1) held.push({ id: i, text: `item-${i}-${Date.now()}`, more: [i, i + 1, i + 2] });
}
function leakBuffers(bytes) {
  held.push(Buffer.alloc(bytes, 7));
}
let cycle = [];
function sawtooth(tick) {
  // A full collection at each cycle's end, as a GC'd cache drops what it held.
  if (tick % 15 === 0) { cycle = []; if (globalThis.gc) globalThis.gc(); }
  for (let i = 0; i < 12000; i += 1) cycle.push({ i, s: `saw-${i}-${tick}` });
}
const slot = Number(process.env.HEAPWARDEN_WORKER_SLOT || 0);
const marker = `leaked-${slot}`;
const kinds = (process.env.LEAK_KINDS || 'named').split(',');
const leak = kinds[slot % kinds.length] === 'buffer' ? leakBuffers : leakInNamedFunction;
if (process.env.MODE === 'leak-once' && !fs.existsSync(marker)) {
  fs.writeFileSync(marker, String(process.pid));
  setInterval(() => leak(Number(process.env.LEAK_BYTES)), 100);
}
if (process.env.MODE === 'sawtooth') {
  let tick = 0;
  setInterval(() => sawtooth(tick++), 100);
}
const probe = globalThis[Symbol.for('heapwarden.probe')];
const server = http.createServer((req, res) => res.end(`ok ${process.pid}\n`));
const plain = process.env.LISTEN_FDS === '1' && !(probe && probe.claimed);
server.listen(plain ? { fd: 3 } : Number(process.env.PORT));
"#;

/// The leak rules every fleet agent runs: fast enough for a test, the same rules for the
/// leaking pools and the healthy one.
pub const RULES: &str = r#"
[sampling]
interval = "250ms"
pss-every = 4
[watchdog]
warmup = "3s"
max-memory = "2GiB"
growth = "off"
trend-window = "6s"
trend-min-rate = "1MiB/s"
action = "restart"
# Short, so the test sees the page resolve: the leaking worker is replaced within
# seconds, and the suspect goes this long after the detection.
suspect-ttl = "15s"
"#;

/// One agent of the fleet.
pub struct FleetAgent {
    pub name: &'static str,
    pub sandbox: Sandbox,
    pub proc: Proc,
    pub admin: SocketAddr,
    pub service: SocketAddr,
    pub config: PathBuf,
}

impl FleetAgent {
    /// Starts `heapwarden run` with `pool` (the `[pool]` keys past listen/workers) and
    /// `extra` sections, and waits until it is ready.
    pub fn start(name: &'static str, workers: usize, pool: &str, extra: &str) -> FleetAgent {
        let sandbox = Sandbox::new();
        sandbox.write("fleet.js", FLEET_JS);
        let (admin, service) = (free_port(), free_port());
        let cwd = sandbox.path().display().to_string();
        let proc = sandbox.agent(&format!(
            "[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
             [pool]\nworkers = {workers}\nlisten = \"127.0.0.1:{service}\"\ncwd = {cwd:?}\n\
             min-uptime = \"1s\"\ndrain-timeout = \"3s\"\nkill-timeout = \"2s\"\n{pool}\n{extra}\n\
             [log]\nlevel = \"warn\"\n"
        ));
        let admin: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
        wait_until_ok(admin, "/readyz", SECS(60), &proc.logs);
        FleetAgent {
            name,
            config: sandbox.path().join("heapwarden.toml"),
            service: format!("127.0.0.1:{service}").parse().unwrap(),
            sandbox,
            proc,
            admin,
        }
    }

    /// `heapwarden ARGS --json -c CONFIG` on this agent: its JSON, or its stderr.
    pub fn cli(&self, args: &[&str]) -> Result<Value, String> {
        cli_json(&self.config, args)
    }

    /// The wall-clock times of this agent's trips ("A leak rule tripped."), by slot.
    pub fn trips(&self) -> Vec<(u64, SystemTime)> {
        self.proc
            .logs
            .matching(msg("A leak rule tripped."))
            .iter()
            .filter_map(|r| Some((r["worker"].as_u64()?, parse_ts(r["ts"].as_str()?)?)))
            .collect()
    }
}

/// One notification Alertmanager delivered, and when it arrived.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub at: SystemTime,
    pub body: Value,
}

impl Delivery {
    /// Every alert of the notification with the notification's own status.
    pub fn alerts(&self) -> Vec<&Value> {
        self.body["alerts"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default()
    }
}

/// The webhook Alertmanager notifies: an HTTP/1.1 listener on its own thread that keeps
/// every POSTed JSON body.
#[derive(Clone)]
pub struct Webhook {
    pub addr: SocketAddr,
    received: Arc<(Mutex<Vec<Delivery>>, Condvar)>,
}

impl Webhook {
    pub fn start() -> Webhook {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the webhook");
        let addr = listener.local_addr().unwrap();
        let received: Arc<(Mutex<Vec<Delivery>>, Condvar)> = Arc::default();
        let sink = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let sink = sink.clone();
                std::thread::spawn(move || serve(stream, &sink));
            }
        });
        Webhook { addr, received }
    }

    pub fn all(&self) -> Vec<Delivery> {
        self.received
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits for a delivery holding an alert that matches `pred` (alert, delivery).
    pub fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> (Delivery, Value) {
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.received;
        let mut seen = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            for d in seen.iter() {
                if let Some(alert) = d.alerts().into_iter().find(|a| pred(a)) {
                    return (d.clone(), alert.clone());
                }
            }
            let now = Instant::now();
            if now >= deadline {
                let bodies: Vec<&Value> = seen.iter().map(|d| &d.body).collect();
                panic!("no notification with {what} within {timeout:?}; got {bodies:#?}");
            }
            seen = cvar
                .wait_timeout(seen, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

fn serve(stream: TcpStream, sink: &(Mutex<Vec<Delivery>>, Condvar)) {
    let _ = stream.set_read_timeout(Some(SECS(10)));
    let mut reader = BufReader::new(&stream);
    let mut length = 0usize;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length.min(16 << 20)];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let at = SystemTime::now();
    let _ =
        (&stream).write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    if let Ok(body) = serde_json::from_slice::<Value>(&body) {
        let (lock, cvar) = sink;
        lock.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Delivery { at, body });
        cvar.notify_all();
    }
}

/// Alertmanager with one webhook receiver: every (alertname, instance, worker, rule) its
/// own group, a 1 s group wait, resolved notifications on.
pub struct Alertmanager {
    pub proc: Proc,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Alertmanager {
    pub fn start(webhook: &Webhook) -> Alertmanager {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(
            &config,
            format!(
                "route:\n  receiver: test\n  group_by: [alertname, instance, worker, rule]\n  \
                 group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n\
                 receivers:\n  - name: test\n    webhook_configs:\n      - url: http://{}/\n        \
                 send_resolved: true\n",
                webhook.addr
            ),
        )
        .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut command = Command::new(tool("prometheus-alertmanager"));
        command
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            // No cluster: a lone test instance must not bind the gossip port.
            .arg("--cluster.listen-address=");
        let proc = Proc::spawn(command);
        wait_http_ok(addr, "/-/ready", &proc);
        Alertmanager {
            proc,
            addr,
            _dir: dir,
        }
    }
}

/// Prometheus scraping `targets` (address, instance label, release label) every second,
/// evaluating the project's alert rules every second, sending to `alertmanager`.
pub struct Prometheus {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    pub fn start(targets: &[(SocketAddr, &str, &str)], alertmanager: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().expect("temp dir");
        let rules = repo_root().join("dashboards/alerts.yml");
        let mut scrape = String::new();
        for (addr, instance, release) in targets {
            scrape.push_str(&format!(
                "      - targets: [\"{addr}\"]\n        labels: {{instance: \"{instance}\", release: \"{release}\"}}\n"
            ));
        }
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: [\"{alertmanager}\"]\n\
                 scrape_configs:\n  - job_name: heapwarden\n    static_configs:\n{scrape}",
                rules.display()
            ),
        )
        .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut command = Command::new(tool("prometheus"));
        command
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--web.enable-lifecycle");
        let proc = Proc::spawn(command);
        wait_http_ok(addr, "/-/ready", &proc);
        Prometheus {
            proc,
            addr,
            config,
            _dir: dir,
        }
    }

    /// An instant query: the API's whole answer (`status`, `data` or `error`).
    pub fn query(&self, expr: &str) -> Value {
        let url = format!("http://{}/api/v1/query", self.addr);
        let agent = heapwarden_tests::http::client(SECS(10));
        let form = format!("query={}", form_encode(expr));
        let reply = heapwarden_tests::http::fetch(
            &agent,
            "POST",
            &url,
            &[("content-type", "application/x-www-form-urlencoded")],
            Some(form.as_bytes()),
        )
        .expect("query Prometheus");
        reply.json()
    }

    /// Re-reads the config and rules (`POST /-/reload`).
    pub fn reload(&self) {
        let (status, body) = http_request(self.addr, "POST", "/-/reload", None, b"", SECS(10))
            .expect("reload Prometheus");
        assert_eq!(status, 200, "{body}");
    }
}

fn wait_http_ok(addr: SocketAddr, path: &str, proc: &Proc) {
    let ok = try_poll(SECS(30), || {
        http_get(addr, path, SECS(2))
            .ok()
            .filter(|(status, _)| *status == 200)
    });
    assert!(
        ok.is_some(),
        "{addr}{path} never answered 200:\n{}",
        proc.logs.raw()
    );
}

/// The tool's path; a missing one names the Debian package (scripts/test installs it).
fn tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.exists())
    });
    found.unwrap_or_else(|| {
        panic!("`{name}` is not installed: run ./scripts/test, which installs it from Debian")
    })
}

fn form_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An RFC 3339 timestamp (`2026-12-06T08:15:00.123456789+00:00`, the agent's `ts`).
pub fn parse_ts(ts: &str) -> Option<SystemTime> {
    let (date, rest) = ts.split_once('T')?;
    let mut ymd = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, d) = (ymd.next()?.ok()?, ymd.next()?.ok()?, ymd.next()?.ok()?);
    let zone_at = rest.rfind(['+', '-', 'Z'])?;
    let (clock, zone) = rest.split_at(zone_at);
    let offset = match zone {
        "Z" => 0,
        _ => {
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            let (h, mi) = zone[1..].split_once(':')?;
            sign * (h.parse::<i64>().ok()? * 3600 + mi.parse::<i64>().ok()? * 60)
        }
    };
    let mut hms = clock.split(':');
    let (h, mi) = (
        hms.next()?.parse::<i64>().ok()?,
        hms.next()?.parse::<i64>().ok()?,
    );
    let seconds: f64 = hms.next()?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let whole = days * 86_400 + h * 3600 + mi * 60 - offset;
    let at = Duration::from_secs(u64::try_from(whole).ok()?) + Duration::from_secs_f64(seconds);
    Some(UNIX_EPOCH + at)
}

/// Percentile (nearest rank) of `values`, which must not be empty.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Every Grafana dashboard expression, with its variables replaced, for a live
/// Prometheus.
pub fn dashboard_queries() -> Vec<String> {
    use heapwarden_tests::promql::{GRAFANA_VARIABLES, dashboard_expressions};
    let json =
        std::fs::read_to_string(repo_root().join("dashboards/heapwarden.json")).expect("dashboard");
    let dash: Value = serde_json::from_str(&json).expect("dashboard JSON");
    dashboard_expressions(&dash)
        .into_iter()
        .filter(|e| !e.starts_with("label_values("))
        .map(|e| {
            GRAFANA_VARIABLES
                .iter()
                .fold(e, |e, (var, value)| e.replace(var, value))
        })
        .collect()
}
