//! Round-robin among a `SO_REUSEPORT` group: a 24-instruction eBPF socket filter,
//! attached with `SO_ATTACH_REUSEPORT_EBPF`, that answers each new connection with
//! `counter++ % n`, where `counter` and `n` (the group's size, kept current by the agent)
//! live in a two-entry array map. Without it the kernel picks a listener by a hash of the
//! 4-tuple, which splits 16 keep-alive connections among 4 workers no better than the
//! shared socket's accept race did (measured: max/min up to 3.97).
//!
//! The only module of the listener that needs `unsafe`: the `bpf(2)` calls and the
//! `setsockopt` that attaches the program. Each call passes a pointer to a local
//! `#[repr(C)]` attribute (or value) that lives across the call, with its exact size, so
//! the kernel reads and writes only memory we own; returned descriptors are owned at once.
//! Loading needs `CAP_BPF` (or root) where `kernel.unprivileged_bpf_disabled` is set; the
//! caller falls back to the shared socket when it is refused.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;
const SO_ATTACH_REUSEPORT_EBPF: libc::c_int = 52;
/// Map keys: the connection counter and the group's size.
const COUNTER: u32 = 0;
const GROUP_SIZE: u32 = 1;

/// The loaded program and its map: attach it to each listener of the group, and say
/// how many listeners the group has whenever that changes.
#[derive(Debug)]
pub struct RoundRobin {
    map: OwnedFd,
    prog: OwnedFd,
}

#[repr(C)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

#[repr(C)]
struct MapUpdate {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

/// `r0 = (*counter)++ % *group_size`, or an out-of-range index (the kernel then falls
/// back to its hash) while the map is not set up.
fn program(map_fd: i32) -> [Insn; 24] {
    const FALLBACK: i16 = 22;
    let to_fallback = |at: i16| FALLBACK - (at + 1);
    [
        insn(0x62, 10, 0, -4, COUNTER as i32), // *(u32 *)(r10 - 4) = COUNTER
        insn(0xbf, 2, 10, 0, 0),               // r2 = r10
        insn(0x07, 2, 0, 0, -4),               // r2 += -4
        insn(0x18, 1, 1, 0, map_fd),           // r1 = map (ld_imm64, pseudo map fd)
        insn(0, 0, 0, 0, 0),
        insn(0x85, 0, 0, 0, 1),                   // call bpf_map_lookup_elem
        insn(0x15, 0, 0, to_fallback(6), 0),      // if r0 == 0 goto fallback
        insn(0xbf, 6, 0, 0, 0),                   // r6 = r0 (the counter)
        insn(0x62, 10, 0, -8, GROUP_SIZE as i32), // *(u32 *)(r10 - 8) = GROUP_SIZE
        insn(0xbf, 2, 10, 0, 0),                  // r2 = r10
        insn(0x07, 2, 0, 0, -8),                  // r2 += -8
        insn(0x18, 1, 1, 0, map_fd),              // r1 = map
        insn(0, 0, 0, 0, 0),
        insn(0x85, 0, 0, 0, 1),               // call bpf_map_lookup_elem
        insn(0x15, 0, 0, to_fallback(14), 0), // if r0 == 0 goto fallback
        insn(0x79, 7, 0, 0, 0),               // r7 = *(u64 *)(r0 + 0) (the size)
        insn(0x15, 7, 0, to_fallback(16), 0), // if r7 == 0 goto fallback
        insn(0xb7, 1, 0, 0, 1),               // r1 = 1
        insn(0xdb, 6, 1, 0, 0x01),            // r1 = atomic_fetch_add(*(u64 *)r6, r1)
        insn(0x9f, 1, 7, 0, 0),               // r1 %= r7
        insn(0xbf, 0, 1, 0, 0),               // r0 = r1
        insn(0x95, 0, 0, 0, 0),               // exit
        insn(0xb7, 0, 0, 0, -1),              // fallback: r0 = u32::MAX
        insn(0x95, 0, 0, 0, 0),               // exit
    ]
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, exclusively borrowed `#[repr(C)]` bpf_attr prefix and the
    // size passed is its own; the kernel zero-extends the rest of the union.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret)
}

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: a descriptor bpf(2) just returned to us; nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

impl RoundRobin {
    /// Creates the map and loads the program; an error (EPERM without CAP_BPF, EINVAL on a
    /// kernel before 5.12 without atomic fetch-add) means "use the shared socket".
    pub fn load() -> io::Result<RoundRobin> {
        let mut create = MapCreate {
            map_type: BPF_MAP_TYPE_ARRAY,
            key_size: 4,
            value_size: 8,
            max_entries: 2,
            map_flags: 0,
        };
        let map = owned(bpf(BPF_MAP_CREATE, &mut create)?);
        let insns = program(map.as_raw_fd());
        let license = c"GPL";
        let mut load = ProgLoad {
            prog_type: BPF_PROG_TYPE_SOCKET_FILTER,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: 0,
            log_size: 0,
            log_buf: 0,
            kern_version: 0,
            prog_flags: 0,
        };
        let prog = owned(bpf(BPF_PROG_LOAD, &mut load)?);
        Ok(RoundRobin { map, prog })
    }

    /// Makes the program the group's selector (attaching on any member sets it for the
    /// whole group; attaching again replaces it with itself).
    pub fn attach(&self, listener: &impl AsRawFd) -> io::Result<()> {
        let prog = self.prog.as_raw_fd();
        // SAFETY: passes a pointer to a live c_int and its size, as SO_ATTACH_* expect.
        let ret = unsafe {
            libc::setsockopt(
                listener.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_ATTACH_REUSEPORT_EBPF,
                &prog as *const RawFd as *const libc::c_void,
                std::mem::size_of::<RawFd>() as libc::socklen_t,
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// How many listeners the group has now; 0 makes the kernel choose by hash.
    pub fn set_group_size(&self, listeners: usize) -> io::Result<()> {
        let key = GROUP_SIZE;
        let value = listeners as u64;
        let mut update = MapUpdate {
            map_fd: self.map.as_raw_fd() as u32,
            _pad: 0,
            key: &key as *const u32 as u64,
            value: &value as *const u64 as u64,
            flags: 0,
        };
        bpf(BPF_MAP_UPDATE_ELEM, &mut update).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};

    use socket2::{Domain, Socket, Type};

    use super::*;

    fn reuseport_listener(addr: SocketAddr) -> TcpListener {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        socket.set_reuse_port(true).unwrap();
        socket.bind(&addr.into()).unwrap();
        socket.listen(64).unwrap();
        socket.into()
    }

    /// Every listener gets exactly its share of connections made in a row, which a hash
    /// of the 4-tuple almost never gives.
    #[test]
    fn connections_go_round_robin_across_the_group() {
        let balancer = match RoundRobin::load() {
            Ok(b) => b,
            Err(e) => {
                // Without CAP_BPF the agent uses the shared socket; nothing to test here.
                eprintln!("skipped: cannot load the program here: {e}");
                return;
            }
        };
        let first = reuseport_listener("127.0.0.1:0".parse().unwrap());
        let addr = first.local_addr().unwrap();
        let mut group = vec![first];
        for _ in 0..3 {
            group.push(reuseport_listener(addr));
        }
        balancer.attach(&group[0]).unwrap();
        balancer.set_group_size(group.len()).unwrap();
        let clients: Vec<TcpStream> = (0..16)
            .map(|i| {
                let mut c = TcpStream::connect(addr).unwrap();
                c.write_all(&[i]).unwrap();
                c
            })
            .collect();
        for listener in &group {
            listener.set_nonblocking(true).unwrap();
            let mut accepted = 0;
            while let Ok((mut conn, _)) = listener.accept() {
                conn.set_nonblocking(false).unwrap();
                conn.read_exact(&mut [0]).unwrap();
                accepted += 1;
            }
            assert_eq!(accepted, 4, "each of 4 listeners accepts 4 of 16");
        }
        drop(clients);
    }
}
