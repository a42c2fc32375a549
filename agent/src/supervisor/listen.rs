//! The service socket: bound once by the agent (or received from systemd, taken through
//! the probe crate's one socket-activation parse) and handed to every worker, so a
//! draining worker just stops accepting and nothing queued in the kernel is lost.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use socket2::{Domain, SockRef, Socket, Type};

use heapwarden_protocol::{InheritedFdError, take_inherited_socket};

use super::spawn::move_high;

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

pub fn open(addr: SocketAddr) -> Result<ServiceSocket, ListenError> {
    if let Some(inherited) = take_inherited_socket()? {
        let fd = move_high(inherited.fd).map_err(ListenError::Move)?;
        let name = inherited.name;
        let local_addr = SockRef::from(&fd)
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket());
        return Ok(ServiceSocket {
            fd,
            name,
            local_addr,
            socket_activated: true,
        });
    }
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
        name: "http".into(),
        local_addr,
        socket_activated: false,
    })
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
        let error = match open(addr) {
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
