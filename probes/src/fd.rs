//! Adopting descriptors the agent passed down by number: the control socket
//! (`HEAPWARDEN_CONTROL_FD`) and the shared listening socket (systemd's socket-activation
//! convention). This is the one place socket activation is parsed — for workers and for
//! the agent itself when systemd starts it with `heapwarden.socket` — and it leaves the
//! parsing of `LISTEN_PID`/`LISTEN_FDS`/`LISTEN_FDNAMES` to the `sd-notify` crate
//! (`sd_listen_fds_with_names(3)`). One of the two modules allowed `unsafe`: std can only
//! take ownership of a raw descriptor through `OwnedFd::from_raw_fd`, whose soundness
//! rests on the checks made here.

use std::net::TcpListener;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::ProbeError;

static CONTROL_ADOPTED: AtomicBool = AtomicBool::new(false);
static LISTENER_ADOPTED: AtomicBool = AtomicBool::new(false);

/// A listening socket passed with the socket-activation convention.
#[derive(Debug)]
pub struct InheritedSocket {
    /// The socket, close-on-exec; the inherited descriptor number is closed.
    pub fd: OwnedFd,
    /// Its `LISTEN_FDNAMES` entry; `"unknown"` when none was given, as
    /// `sd_listen_fds_with_names(3)` does.
    pub name: String,
}

/// Takes ownership of the inherited socket `raw` and returns a duplicate with `CLOEXEC`
/// set, so programs the worker spawns don't inherit it. The inherited number is closed.
fn adopt_socket(raw: RawFd, adopted: &AtomicBool) -> Result<OwnedFd, String> {
    if adopted.load(Ordering::SeqCst) {
        return Err(format!(
            "descriptor {raw} was already adopted by this process"
        ));
    }
    if raw < 3 {
        return Err("refusing to adopt stdin, stdout or stderr".into());
    }
    let target = std::fs::read_link(format!("/proc/self/fd/{raw}"))
        .map_err(|e| format!("descriptor {raw} is not open: {e}"))?;
    if !target.to_string_lossy().starts_with("socket:") {
        return Err(format!(
            "descriptor {raw} is not a socket but {}",
            target.display()
        ));
    }
    if adopted.swap(true, Ordering::SeqCst) {
        return Err(format!(
            "descriptor {raw} was already adopted by this process"
        ));
    }
    // SAFETY: the descriptor is open (checked through /proc just above) and the
    // environment contract hands it to this library alone; the `adopted` flag makes sure
    // this process adopts it at most once, so no other OwnedFd owns or closes it.
    let inherited = unsafe { OwnedFd::from_raw_fd(raw) };
    // try_clone duplicates with F_DUPFD_CLOEXEC; dropping `inherited` then closes the
    // number that lacked the flag.
    inherited
        .try_clone()
        .map_err(|e| format!("could not duplicate descriptor {raw}: {e}"))
}

/// Adopts the control socket named by `value`, the decimal content of the env variable.
pub(crate) fn adopt_inherited_socket(value: &str) -> Result<OwnedFd, String> {
    let raw: RawFd = value
        .trim()
        .parse()
        .map_err(|_| "not a file descriptor number".to_string())?;
    adopt_socket(raw, &CONTROL_ADOPTED)
}

/// The listening socket passed with the socket-activation convention (`LISTEN_PID` equal
/// to this process, `LISTEN_FDS=1`, the socket on fd 3), or `None` when none was passed
/// to this process. More than one socket is an error: heapwarden shares exactly one.
/// Takes it at most once.
pub fn take_inherited_socket() -> Result<Option<InheritedSocket>, ProbeError> {
    let fail = |reason: String| ProbeError::InheritedFd {
        var: "LISTEN_FDS",
        value: std::env::var("LISTEN_FDS").unwrap_or_default(),
        reason,
    };
    if LISTENER_ADOPTED.load(Ordering::SeqCst) {
        // Checked before parsing: sd-notify marks fd 3 close-on-exec, and by now that
        // number may belong to something else.
        return Err(fail("the listening socket was already taken".into()));
    }
    // Counted first: for a process the sockets are not meant for (LISTEN_PID is another
    // pid, e.g. inherited through a wrapper script) sd-notify returns no descriptors,
    // and pairing those with the names left in LISTEN_FDNAMES would be an error.
    let count = sd_notify::listen_fds()
        .map_err(|e| fail(e.to_string()))?
        .len();
    match count {
        0 => return Ok(None),
        1 => {}
        n => {
            return Err(fail(format!(
                "{n} sockets were passed; exactly one is expected"
            )));
        }
    }
    let Some((raw, name)) = sd_notify::listen_fds_with_names()
        .map_err(|e| fail(e.to_string()))?
        .next()
    else {
        return Ok(None);
    };
    let fd = adopt_socket(raw, &LISTENER_ADOPTED).map_err(fail)?;
    Ok(Some(InheritedSocket { fd, name }))
}

/// [`take_inherited_socket`] as a TCP listener (blocking, close-on-exec): what a worker
/// accepts on.
pub fn take_listen_socket() -> Result<Option<TcpListener>, ProbeError> {
    Ok(take_inherited_socket()?.map(|socket| TcpListener::from(socket.fd)))
}

/// Another descriptor of `stream` numbered at or above its own (close-on-exec): a probe
/// whose socket sits high keeps its second descriptor high too, out of the numbers the
/// program picks for itself (std's `try_clone` takes the lowest free one).
pub(crate) fn duplicate_above(
    stream: &std::os::unix::net::UnixStream,
) -> std::io::Result<std::os::unix::net::UnixStream> {
    use std::os::fd::AsRawFd;
    let raw = stream.as_raw_fd();
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) on a descriptor `stream` owns returns a new
    // descriptor or -1; the new one is owned by nobody else.
    let duplicate = unsafe { libc::fcntl(raw, libc::F_DUPFD_CLOEXEC, raw) };
    if duplicate < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: just created above, owned by nothing else.
    Ok(unsafe { std::os::unix::net::UnixStream::from_raw_fd(duplicate) })
}

#[cfg(test)]
mod tests {
    use super::adopt_inherited_socket;

    #[test]
    fn rejects_garbage_and_standard_streams_without_taking_anything() {
        assert!(adopt_inherited_socket("seven").is_err());
        assert!(adopt_inherited_socket("1").is_err());
        assert!(adopt_inherited_socket("-4").is_err());
        // An fd number far above any open descriptor is not open.
        assert!(adopt_inherited_socket("1000000").is_err());
    }
}
