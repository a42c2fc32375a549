//! sd_notify in both directions: each worker gets its own notification socket (so a
//! plain program can say `READY=1`), and the agent reports to systemd (`READY=1` once
//! all workers are ready, `STATUS=`, `WATCHDOG=1`, `STOPPING=1`).

use slog::{Logger, debug};
use tokio::net::UnixDatagram;
use tokio::sync::mpsc;

/// Reads a worker's notifications until the socket is dropped; `READY=1` becomes a
/// readiness report for `worker_id`.
pub fn watch_worker(socket: UnixDatagram, worker_id: u64, ready: mpsc::Sender<u64>, log: Logger) {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = socket.recv(&mut buf).await {
            let text = String::from_utf8_lossy(&buf[..n]);
            if text.lines().any(|l| l.trim() == "READY=1") {
                if ready.send(worker_id).await.is_err() {
                    break;
                }
            } else {
                debug!(log, "A worker sent an sd_notify message."; "message" => %text.trim());
            }
        }
    });
}

/// The agent's own notifications to systemd; silent when not run by systemd.
pub struct SystemdNotifier {
    enabled: bool,
    ready_sent: bool,
}

impl SystemdNotifier {
    pub fn from_env() -> SystemdNotifier {
        SystemdNotifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
            ready_sent: false,
        }
    }

    pub fn ready(&mut self, status: &str) {
        if self.enabled && !self.ready_sent {
            self.ready_sent = true;
            let _ = sd_notify::notify(&[
                sd_notify::NotifyState::Ready,
                sd_notify::NotifyState::Status(status),
            ]);
        }
    }

    pub fn status(&self, status: &str) {
        if self.enabled {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(status)]);
        }
    }

    pub fn watchdog(&self) {
        if self.enabled {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
        }
    }

    pub fn stopping(&self) {
        if self.enabled {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        }
    }
}
