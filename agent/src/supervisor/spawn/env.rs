//! A worker's environment, built before fork as C strings, with room left in the variables
//! that must hold the worker's own pid (`LISTEN_PID`, `HEAPWARDEN_WORKER_PID`). The agent
//! cannot know that pid before the fork and must not allocate after it, so the child only
//! writes digits into bytes reserved here (`set_pid`). No `unsafe` in this file.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

/// Variables the child sets to its own pid.
pub const PID_VARIABLES: [&str; 2] = ["LISTEN_PID", "HEAPWARDEN_WORKER_PID"];
/// u32::MAX has 10 digits.
const PID_DIGITS: usize = 10;

pub struct ChildEnv {
    /// `KEY=VALUE\0`, never resized after `build`, so their buffers stay put.
    entries: Vec<Vec<u8>>,
    /// (entry, offset of the first digit) of each pid variable.
    pid_slots: Vec<(usize, usize)>,
    /// Addresses of `entries`' buffers, then 0: the `envp` array for execve(2).
    pointers: Vec<usize>,
}

impl ChildEnv {
    /// `inherited` minus `remove`, then `set` (later wins), then the pid variables.
    /// Keys or values holding a NUL byte (or keys holding `=`) cannot be passed and are
    /// left out.
    pub fn build<'a>(
        inherited: impl IntoIterator<Item = (OsString, OsString)>,
        remove: &[&str],
        set: impl IntoIterator<Item = (&'a OsStr, &'a OsStr)>,
    ) -> ChildEnv {
        let mut vars: BTreeMap<OsString, OsString> = inherited.into_iter().collect();
        for key in remove.iter().chain(PID_VARIABLES.iter()) {
            vars.remove(OsStr::new(key));
        }
        for (k, v) in set {
            vars.insert(k.to_owned(), v.to_owned());
        }
        let mut entries: Vec<Vec<u8>> = vars
            .iter()
            .filter(|(k, v)| {
                let (k, v) = (k.as_bytes(), v.as_bytes());
                !k.is_empty() && !k.contains(&b'=') && !k.contains(&0) && !v.contains(&0)
            })
            .map(|(k, v)| [k.as_bytes(), b"=", v.as_bytes(), b"\0"].concat())
            .collect();
        let mut pid_slots = Vec::new();
        for key in PID_VARIABLES {
            let mut entry = format!("{key}=").into_bytes();
            pid_slots.push((entries.len(), entry.len()));
            entry.resize(entry.len() + PID_DIGITS + 1, 0);
            entries.push(entry);
        }
        let mut pointers: Vec<usize> = entries.iter().map(|e| e.as_ptr() as usize).collect();
        pointers.push(0);
        ChildEnv {
            entries,
            pid_slots,
            pointers,
        }
    }

    /// Writes `pid` into every pid variable. Async-signal-safe: no allocation, no lock.
    pub fn set_pid(&mut self, pid: u32) {
        let mut digits = [0u8; PID_DIGITS];
        let mut n = pid;
        let mut len = 0;
        loop {
            digits[PID_DIGITS - 1 - len] = b'0' + (n % 10) as u8;
            len += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for &(entry, at) in &self.pid_slots {
            let target = &mut self.entries[entry][at..];
            target[..len].copy_from_slice(&digits[PID_DIGITS - len..]);
            target[len] = 0;
        }
    }

    /// The `envp` array: valid as long as `self` is neither dropped nor rebuilt.
    pub fn envp(&self) -> *const *const libc::c_char {
        self.pointers.as_ptr().cast()
    }

    /// The variables as text, for tests.
    #[cfg(test)]
    pub fn to_strings(&self) -> Vec<String> {
        self.entries
            .iter()
            .map(|e| {
                let end = e.iter().position(|&b| b == 0).unwrap_or(e.len());
                String::from_utf8_lossy(&e[..end]).into_owned()
            })
            .collect()
    }
}

/// `library` first, then whatever the worker's environment already preloads.
pub fn with_preload(library: OsString, existing: Option<OsString>) -> OsString {
    match existing {
        Some(existing) if !existing.is_empty() => {
            let mut joined = library;
            joined.push(":");
            joined.push(existing);
            joined
        }
        _ => library,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_library_goes_first_and_keeps_the_user_preloads() {
        assert_eq!(with_preload("/l/p.so".into(), None), "/l/p.so");
        assert_eq!(with_preload("/l/p.so".into(), Some("".into())), "/l/p.so");
        assert_eq!(
            with_preload("/l/p.so".into(), Some("/x/a.so /x/b.so".into())),
            "/l/p.so:/x/a.so /x/b.so"
        );
    }

    fn os(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs.iter().map(|(k, v)| (k.into(), v.into())).collect()
    }

    #[test]
    fn removed_set_and_pid_variables() {
        let set = os(&[("A", "override"), ("NEW", "1")]);
        let mut env = ChildEnv::build(
            os(&[
                ("A", "1"),
                ("NOTIFY_SOCKET", "/x"),
                ("LISTEN_PID", "9"),
                ("B=C", "bad"),
            ]),
            &["NOTIFY_SOCKET"],
            set.iter().map(|(k, v)| (k.as_os_str(), v.as_os_str())),
        );
        env.set_pid(4_294_967_295);
        env.set_pid(42);
        let vars = env.to_strings();
        assert_eq!(
            vars,
            [
                "A=override",
                "NEW=1",
                "LISTEN_PID=42",
                "HEAPWARDEN_WORKER_PID=42"
            ]
        );
        assert_eq!(env.pointers.len(), 5);
        assert_eq!(env.pointers[4], 0);
        env.set_pid(0);
        assert!(env.to_strings().contains(&"LISTEN_PID=0".to_string()));
    }
}
