//! Where workers under their own user (`pool.user`) write their dumps: they cannot write
//! the profile store (0700, the agent's), so the agent names a path in
//! `<state-dir>/dumps/` (mode 1733: they may create files there, but not list it, nor
//! remove or rename another's), with a random part nobody can guess, and adopts what the
//! worker wrote into the store before reading it further: opened without following links
//! and without blocking (a FIFO or a symlink to the token is refused), a regular file
//! with one link only, copied under a byte cap, then removed. Reading another user's
//! 0600 file is what the unit's `CAP_DAC_READ_SEARCH` is for.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct DropBox {
    dir: PathBuf,
}

impl DropBox {
    /// Creates (or takes back) `<state_dir>/dumps`, the agent's, mode 1733, emptied.
    pub fn prepare(state_dir: &Path) -> std::io::Result<DropBox> {
        let dir = state_dir.join("dumps");
        crate::owned::prepare_dir(&dir, 0o1733).map_err(std::io::Error::other)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1733))?;
        for entry in std::fs::read_dir(&dir)?.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
        Ok(DropBox { dir })
    }

    /// A fresh path for dump `id`: unguessable, so no other worker can plant a file there
    /// first.
    pub fn path_for(&self, id: u64) -> PathBuf {
        let mut random = [0u8; 12];
        let _ = File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut random));
        let suffix: String = random.iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join(format!("{id}-{suffix}.raw"))
    }

    /// Moves what the worker wrote at `dropped` into `into` (created 0600, must not
    /// exist), at most `max_bytes`; `dropped` is removed either way. Returns the size.
    pub fn adopt(&self, dropped: &Path, into: &Path, max_bytes: u64) -> Result<u64, String> {
        let result = adopt_file(dropped, into, max_bytes);
        let _ = std::fs::remove_file(dropped);
        if result.is_err() {
            let _ = std::fs::remove_file(into);
        }
        result
    }
}

fn adopt_file(dropped: &Path, into: &Path, max_bytes: u64) -> Result<u64, String> {
    let mut source = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(dropped)
        .map_err(|e| format!("the dump the worker wrote cannot be opened: {e}"))?;
    let meta = source.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() || meta.nlink() != 1 {
        return Err("the worker's dump is not a plain file of its own".into());
    }
    if meta.len() > max_bytes {
        return Err(format!(
            "the worker's dump has {} bytes, over the {max_bytes}-byte cap",
            meta.len()
        ));
    }
    let mut target = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(into)
        .map_err(|e| format!("{}: {e}", into.display()))?;
    let copied = std::io::copy(&mut (&mut source).take(max_bytes + 1), &mut target)
        .map_err(|e| format!("copying the worker's dump: {e}"))?;
    if copied > max_bytes {
        return Err(format!(
            "the worker's dump grew past the {max_bytes}-byte cap"
        ));
    }
    target.flush().map_err(|e| e.to_string())?;
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_dump_is_adopted_and_links_fifos_and_oversize_files_are_refused() {
        let state = tempfile::tempdir().unwrap();
        let dropbox = DropBox::prepare(state.path()).unwrap();
        let mode = std::fs::metadata(state.path().join("dumps"))
            .unwrap()
            .mode()
            & 0o7777;
        assert_eq!(mode, 0o1733);
        let a = dropbox.path_for(1);
        assert_ne!(a, dropbox.path_for(1), "unguessable");
        std::fs::write(&a, b"heap_v2/524288").unwrap();
        let into = state.path().join("1.raw");
        assert_eq!(dropbox.adopt(&a, &into, 1 << 20), Ok(14));
        assert!(!a.exists());
        assert_eq!(std::fs::read(&into).unwrap(), b"heap_v2/524288");

        let secret = state.path().join("admin-token");
        std::fs::write(&secret, "token").unwrap();
        let link = dropbox.path_for(2);
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        assert!(
            dropbox
                .adopt(&link, &state.path().join("2.raw"), 1 << 20)
                .is_err()
        );
        let hard = dropbox.path_for(3);
        std::fs::hard_link(&secret, &hard).unwrap();
        assert!(
            dropbox
                .adopt(&hard, &state.path().join("3.raw"), 1 << 20)
                .is_err()
        );
        let fifo = dropbox.path_for(4);
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(
            dropbox
                .adopt(&fifo, &state.path().join("4.raw"), 1 << 20)
                .is_err()
        );
        let big = dropbox.path_for(5);
        std::fs::write(&big, vec![0u8; 100]).unwrap();
        assert!(
            dropbox
                .adopt(&big, &state.path().join("5.raw"), 10)
                .is_err()
        );
        assert!(!state.path().join("5.raw").exists());
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), "token");
    }
}
