//! Files and directories that must belong to the agent's own user: the state directory
//! (profiles, the generated admin token, the demo's database) and the admin token file.
//! A directory or token pre-created by another local user would let that user read the
//! profiles or choose the token the API honours, so both are opened without following
//! symbolic links (`O_NOFOLLOW`) and their owner is checked on the open descriptor (no
//! window between the check and the use).

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum OwnedError {
    #[error("{path} is owned by uid {owner}, not by the agent's user (uid {agent}); refusing it", path = path.display())]
    NotOwned {
        path: PathBuf,
        owner: u32,
        agent: u32,
    },
    #[error("{path} is a symbolic link; refusing it", path = path.display())]
    Symlink { path: PathBuf },
    #[error("{path} is not a {expected}", path = path.display())]
    WrongKind {
        path: PathBuf,
        expected: &'static str,
    },
    #[error("{path}", path = path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl OwnedError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, OwnedError::Io { source, .. } if source.kind() == ErrorKind::NotFound)
    }
}

fn open_nofollow(path: &Path, flags: libc::c_int) -> Result<File, OwnedError> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | flags)
        .open(path)
        .map_err(|source| {
            // O_NOFOLLOW fails with ELOOP on a link, or ENOTDIR with O_DIRECTORY.
            let is_link =
                || std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
            if matches!(source.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) && is_link() {
                OwnedError::Symlink {
                    path: path.to_path_buf(),
                }
            } else {
                OwnedError::Io {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })
}

/// Fails unless the open `file` belongs to the effective user.
fn check_owner(file: &File, path: &Path) -> Result<std::fs::Metadata, OwnedError> {
    let meta = file.metadata().map_err(|source| OwnedError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let agent = nix::unistd::geteuid().as_raw();
    if meta.uid() != agent {
        return Err(OwnedError::NotOwned {
            path: path.to_path_buf(),
            owner: meta.uid(),
            agent,
        });
    }
    Ok(meta)
}

/// Opens a regular file the agent's user owns, for reading.
pub fn open_file(path: &Path) -> Result<(File, std::fs::Metadata), OwnedError> {
    let file = open_nofollow(path, 0)?;
    let meta = check_owner(&file, path)?;
    if !meta.is_file() {
        return Err(OwnedError::WrongKind {
            path: path.to_path_buf(),
            expected: "regular file",
        });
    }
    Ok((file, meta))
}

/// Creates `dir` when missing, checks that the agent's user owns it (not a symlink), and
/// restricts it to `mode`.
pub fn prepare_dir(dir: &Path, mode: u32) -> Result<(), OwnedError> {
    let io = |source| OwnedError::Io {
        path: dir.to_path_buf(),
        source,
    };
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) if e.kind() == ErrorKind::NotFound => std::fs::create_dir_all(dir).map_err(io)?,
        Err(e) => return Err(io(e)),
    }
    let file = open_nofollow(dir, libc::O_DIRECTORY)?;
    check_owner(&file, dir)?;
    // fchmod on the descriptor we checked, not on the path.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owned_directory_is_created_and_restricted() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("a/b");
        prepare_dir(&dir, 0o700).expect("created");
        let mode = std::fs::metadata(&dir).expect("dir").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        prepare_dir(&dir, 0o700).expect("again");
    }

    #[test]
    fn a_symlinked_directory_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let real = tmp.path().join("real");
        std::fs::create_dir(&real).expect("mkdir");
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        let err = prepare_dir(&link, 0o700).expect_err("symlink");
        assert!(matches!(err, OwnedError::Symlink { .. }), "{err}");
    }

    #[test]
    fn a_directory_of_another_user_is_refused() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "ownership tests need root (CI runs as root)"
        );
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("state");
        std::fs::create_dir(&dir).expect("mkdir");
        let nobody = nix::unistd::User::from_name("nobody")
            .expect("passwd")
            .expect("user nobody");
        nix::unistd::chown(&dir, Some(nobody.uid), Some(nobody.gid)).expect("chown");
        let err = prepare_dir(&dir, 0o700).expect_err("foreign");
        assert!(matches!(err, OwnedError::NotOwned { .. }), "{err}");
        assert!(err.to_string().contains("not by the agent's user"), "{err}");
        let mode = std::fs::metadata(&dir).expect("dir").permissions().mode() & 0o777;
        assert_ne!(mode, 0o700, "a refused directory is left as it was");
    }
}
