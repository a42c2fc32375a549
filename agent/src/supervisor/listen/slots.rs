//! One listening socket per worker slot, all bound to the service address with
//! `SO_REUSEPORT` and spread over round-robin by the kernel (`round_robin`): each slot's
//! workers get the slot's socket as fd 3. A replacement shares its slot's socket with the
//! worker it replaces, so make-before-break holds as with one shared socket: the old
//! worker stops accepting, the socket stays open, nothing queued is lost.
//!
//! A slot's socket is closed when no worker will take its connections soon — the slot is
//! paused after repeated failures, or retired by a scale-down — and opened again when the
//! slot starts a worker. With `net.ipv4.tcp_migrate_req = 1` the connections queued on a
//! closed socket move to the others; without it they are reset.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use socket2::{Domain, Socket, Type};

use super::round_robin::RoundRobin;
use crate::supervisor::spawn::move_high;

#[derive(Debug)]
pub struct SlotListeners {
    /// The resolved address (port 0 in the config becomes the first socket's port).
    addr: SocketAddr,
    slots: Vec<Option<OwnedFd>>,
    balancer: RoundRobin,
}

impl SlotListeners {
    /// Binds slot 0's socket at once, so a taken address fails the start as before.
    pub fn open(addr: SocketAddr, balancer: RoundRobin) -> io::Result<SlotListeners> {
        let mut listeners = SlotListeners {
            addr,
            slots: Vec::new(),
            balancer,
        };
        listeners.for_slot(0)?;
        Ok(listeners)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The slot's socket, bound now if it has none.
    pub fn for_slot(&mut self, slot: usize) -> io::Result<RawFd> {
        if self.slots.len() <= slot {
            self.slots.resize_with(slot + 1, || None);
        }
        if let Some(fd) = &self.slots[slot] {
            return Ok(fd.as_raw_fd());
        }
        let fd = bind_reuseport(self.addr)?;
        if self.addr.port() == 0 {
            self.addr = Socket::from(fd.try_clone()?)
                .local_addr()?
                .as_socket()
                .unwrap_or(self.addr);
        }
        self.balancer.attach(&fd)?;
        let raw = fd.as_raw_fd();
        self.slots[slot] = Some(fd);
        self.update_group_size();
        Ok(raw)
    }

    /// Closes the agent's copy of the slot's socket; it leaves the group once the slot's
    /// last worker has closed its own (a draining worker stops accepting first).
    pub fn close_slot(&mut self, slot: usize) {
        if let Some(fd) = self.slots.get_mut(slot).and_then(Option::take) {
            drop(fd);
            self.update_group_size();
        }
    }

    pub fn close_slots_from(&mut self, from: usize) {
        let closed = self
            .slots
            .iter_mut()
            .skip(from)
            .filter_map(Option::take)
            .count();
        if closed > 0 {
            self.update_group_size();
        }
    }

    pub fn open_slots(&self) -> usize {
        self.slots.iter().flatten().count()
    }

    fn update_group_size(&self) {
        // On failure the program falls back to the kernel's hash: uneven, never lost.
        let _ = self.balancer.set_group_size(self.open_slots());
    }
}

fn bind_reuseport(addr: SocketAddr) -> io::Result<OwnedFd> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    // A deep backlog: while a slot's worker is being replaced, connections wait here.
    socket.listen(4096)?;
    move_high(OwnedFd::from(socket))
}
