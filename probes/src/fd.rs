//! Adopting descriptors the agent passed down by number: the control socket
//! (`HEAPWARDEN_CONTROL_FD`) and the shared listening socket (systemd's `LISTEN_FDS`
//! convention, fd 3). One of the two modules allowed `unsafe`: std can only take
//! ownership of a raw descriptor through `OwnedFd::from_raw_fd`, whose soundness rests on
//! the checks made here.

use std::net::TcpListener;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::ProbeError;

static CONTROL_ADOPTED: AtomicBool = AtomicBool::new(false);
static LISTENER_ADOPTED: AtomicBool = AtomicBool::new(false);
/// First socket-activation descriptor (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

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

/// The listening socket passed with systemd's socket-activation convention (`LISTEN_FDS`
/// ≥ 1, fd 3, `LISTEN_PID` equal to this process when set), or `None` when none was
/// passed. The returned listener is blocking and close-on-exec. Takes it at most once.
pub fn take_listen_socket() -> Result<Option<TcpListener>, ProbeError> {
    let Ok(count) = std::env::var("LISTEN_FDS") else {
        return Ok(None);
    };
    let fail = |reason: String| ProbeError::InheritedFd {
        var: "LISTEN_FDS",
        value: count.clone(),
        reason,
    };
    if count
        .trim()
        .parse::<u32>()
        .map_err(|e| fail(e.to_string()))?
        == 0
    {
        return Ok(None);
    }
    if let Ok(pid) = std::env::var("LISTEN_PID")
        && pid.trim() != std::process::id().to_string()
    {
        // Meant for another process (we inherited the environment from it).
        return Ok(None);
    }
    let fd = adopt_socket(LISTEN_FDS_START, &LISTENER_ADOPTED).map_err(fail)?;
    Ok(Some(TcpListener::from(fd)))
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
