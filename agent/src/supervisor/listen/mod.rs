//! The service's listening sockets, handed to workers as fd 3: either one socket shared
//! by every worker (bound once by the agent, or received from systemd through the
//! protocol crate's one socket-activation parse), or one `SO_REUSEPORT` socket per slot
//! with the kernel spreading connections round-robin among them (`slots`,
//! `round_robin`), chosen by `pool.balance`. Either way a draining worker just stops
//! accepting, and nothing queued in its (slot's) socket is lost.

mod round_robin;
mod slots;

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use slog::{Logger, info, warn};

use socket2::{Domain, SockRef, Socket, Type};

use heapwarden_protocol::{InheritedFdError, take_inherited_socket};

use super::spawn::move_high;
use crate::config::types::Balance;
use round_robin::RoundRobin;
use slots::SlotListeners;

#[derive(Debug)]
pub struct ServiceSocket {
    pub fd: OwnedFd,
    /// `LISTEN_FDNAMES` value passed on to workers.
    pub name: String,
    pub local_addr: Option<SocketAddr>,
    pub socket_activated: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen on {addr}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot use the socket passed by systemd")]
    Inherited(#[from] InheritedFdError),
    #[error("cannot use the socket passed by systemd: {0}")]
    Move(io::Error),
}

/// The socket systemd passed, if the agent was socket-activated.
fn inherited() -> Result<Option<ServiceSocket>, ListenError> {
    let Some(inherited) = take_inherited_socket()? else {
        return Ok(None);
    };
    let fd = move_high(inherited.fd).map_err(ListenError::Move)?;
    let local_addr = SockRef::from(&fd)
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket());
    Ok(Some(ServiceSocket {
        fd,
        name: inherited.name,
        local_addr,
        socket_activated: true,
    }))
}

fn bind_shared(addr: SocketAddr) -> Result<ServiceSocket, ListenError> {
    let bind = |source| ListenError::Bind { addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(bind)?;
    socket.set_reuse_address(true).map_err(bind)?;
    socket.bind(&addr.into()).map_err(bind)?;
    // A deep backlog: while workers are being replaced, connections wait here.
    socket.listen(4096).map_err(bind)?;
    let local_addr = socket.local_addr().ok().and_then(|a| a.as_socket());
    let fd = move_high(OwnedFd::from(socket)).map_err(bind)?;
    Ok(ServiceSocket {
        fd,
        name: OWN_SOCKET_NAME.into(),
        local_addr,
        socket_activated: false,
    })
}

/// What workers listen on, by `pool.balance` and how the agent was started.
#[derive(Debug)]
pub enum Listeners {
    /// One socket for every worker: the one systemd passed, `balance = "shared"`, or
    /// round-robin refused by the kernel (no `CAP_BPF`).
    Shared(ServiceSocket),
    PerSlot(SlotListeners),
}

/// `LISTEN_FDNAMES` of a socket the agent bound itself.
const OWN_SOCKET_NAME: &str = "http";

impl Listeners {
    pub fn open(
        addr: SocketAddr,
        balance: Balance,
        log: &Logger,
    ) -> Result<Listeners, ListenError> {
        // systemd holds the socket across agent restarts: the workers share it.
        if let Some(socket) = inherited()? {
            return Ok(Listeners::Shared(socket));
        }
        if balance == Balance::Shared {
            return bind_shared(addr).map(Listeners::Shared);
        }
        let balancer = match RoundRobin::load() {
            Ok(b) => b,
            Err(e) => {
                warn!(log, "Round-robin among workers cannot be set up here (it needs CAP_BPF); every worker shares one socket, as with pool.balance = \"shared\".";
                    "error" => %e);
                return bind_shared(addr).map(Listeners::Shared);
            }
        };
        let listeners = SlotListeners::open(addr, balancer)
            .map_err(|source| ListenError::Bind { addr, source })?;
        if !migrates_queued_connections() {
            info!(log, "Connections queued on a closed slot's socket are reset, not moved to the other workers: set net.ipv4.tcp_migrate_req = 1 to move them.";
                "balance" => "round-robin");
        }
        Ok(Listeners::PerSlot(listeners))
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Listeners::Shared(s) => s.local_addr,
            Listeners::PerSlot(s) => Some(s.local_addr()),
        }
    }

    pub fn socket_activated(&self) -> bool {
        matches!(self, Listeners::Shared(s) if s.socket_activated)
    }

    pub fn balance(&self) -> &'static str {
        match self {
            Listeners::Shared(_) => "shared",
            Listeners::PerSlot(_) => "round-robin",
        }
    }

    /// The socket a worker of this slot gets as fd 3, and its `LISTEN_FDNAMES`.
    pub fn for_slot(&mut self, slot: usize) -> io::Result<(RawFd, String)> {
        match self {
            Listeners::Shared(s) => Ok((s.fd.as_raw_fd(), s.name.clone())),
            Listeners::PerSlot(s) => Ok((s.for_slot(slot)?, OWN_SOCKET_NAME.into())),
        }
    }

    /// Closes the sockets of slots `from..`: a scale-down retired them.
    pub fn close_slots_from(&mut self, from: usize) {
        if let Listeners::PerSlot(s) = self {
            s.close_slots_from(from);
        }
    }

    /// The slot will not start a worker soon (paused, or retired): its connections go
    /// to the other slots from now on.
    pub fn close_slot(&mut self, slot: usize) {
        if let Listeners::PerSlot(s) = self {
            s.close_slot(slot);
        }
    }
}

/// `net.ipv4.tcp_migrate_req`: whether a closed listener's queue moves to its group.
fn migrates_queued_connections() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req").is_ok_and(|v| v.trim() == "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Under anyhow's `{e:#}` (the binary's edge) and in logs (`Causes`), the OS error
    /// appears once: the message says what failed, its source says why.
    #[test]
    fn a_bind_failure_names_its_cause_once() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr");
        let error = match bind_shared(addr) {
            Err(e) => e,
            Ok(_) => panic!("bound {addr} twice"),
        };
        let logged = crate::log::causes(&error);
        let edge = format!("{:#}", anyhow::Error::new(error));
        assert_eq!(logged, edge);
        assert!(
            logged.starts_with(&format!("cannot listen on {addr}: ")),
            "{logged}"
        );
        assert_eq!(logged.matches("in use").count(), 1, "{logged}");
    }
}
