//! Who the workers run as: `pool.user` / `pool.group` resolved once per config (uid,
//! primary gid, supplementary groups) before any fork, so the forked child only makes
//! the `setgroups`/`setgid`/`setuid` system calls (spawn). A worker under its own user
//! cannot read the agent's config, token, state directory or profile index, cannot
//! rewrite the Node probe every worker loads, and cannot signal the agent; with one user
//! for both, workers are as trusted as the agent (docs: operate/identity.md).

use std::ffi::CString;

use nix::unistd::{Gid, Group, Uid, User};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("pool.user: no user named {0:?} on this system")]
    NoUser(String),
    #[error("pool.group: no group named {0:?} on this system")]
    NoGroup(String),
    #[error("pool.group needs pool.user: the workers' group is changed along with their user")]
    GroupWithoutUser,
    #[error("pool.user: looking up {name:?} failed")]
    Lookup { name: String, source: nix::Error },
    #[error(
        "pool.user {name:?} is root: workers must not run as root (leave pool.user unset to run them as the agent's user)"
    )]
    Root { name: String },
}

/// The workers' credentials, resolved before the fork.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerIdentity {
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups of the user (its primary group included), as `initgroups`
    /// would set them.
    pub groups: Vec<libc::gid_t>,
}

impl WorkerIdentity {
    /// `None` when the pool runs as the agent's own user (neither key set).
    pub fn resolve(
        user: Option<&str>,
        group: Option<&str>,
    ) -> Result<Option<WorkerIdentity>, IdentityError> {
        let Some(name) = user else {
            return match group {
                Some(_) => Err(IdentityError::GroupWithoutUser),
                None => Ok(None),
            };
        };
        let lookup = |source| IdentityError::Lookup {
            name: name.to_string(),
            source,
        };
        // A number is taken as a uid (as systemd's User= does).
        let found = match name.parse::<u32>() {
            Ok(uid) => User::from_uid(Uid::from_raw(uid)).map_err(lookup)?,
            Err(_) => User::from_name(name).map_err(lookup)?,
        };
        let found = found.ok_or_else(|| IdentityError::NoUser(name.to_string()))?;
        if found.uid.is_root() {
            return Err(IdentityError::Root {
                name: name.to_string(),
            });
        }
        let gid = match group {
            None => found.gid,
            Some(group) => {
                let by_number = group.parse::<u32>().ok().map(Gid::from_raw);
                let named = match by_number {
                    Some(gid) => Group::from_gid(gid),
                    None => Group::from_name(group),
                }
                .map_err(lookup)?;
                named
                    .ok_or_else(|| IdentityError::NoGroup(group.to_string()))?
                    .gid
            }
        };
        let groups = CString::new(found.name.clone())
            .ok()
            .and_then(|c| nix::unistd::getgrouplist(&c, gid).ok())
            .map(|list| list.into_iter().map(Gid::as_raw).collect())
            .unwrap_or_else(|| vec![gid.as_raw()]);
        Ok(Some(WorkerIdentity {
            user: found.name,
            uid: found.uid.as_raw(),
            gid: gid.as_raw(),
            groups,
        }))
    }
}

impl WorkerIdentity {
    /// Whether a file of `mode`, owned by `owner_uid`:`owner_gid`, can be read by this
    /// user through its permission bits (owner, group membership, others).
    pub fn can_read(&self, mode: u32, owner_uid: u32, owner_gid: u32) -> bool {
        if owner_uid == self.uid {
            return mode & 0o400 != 0;
        }
        if owner_gid == self.gid || self.groups.contains(&owner_gid) {
            return mode & 0o040 != 0;
        }
        mode & 0o004 != 0
    }

    /// The agent-side files a worker under this identity must not read, among `paths`:
    /// those whose bits let it.
    pub fn readable_among<'a>(
        &self,
        paths: impl IntoIterator<Item = &'a std::path::Path>,
    ) -> Vec<&'a std::path::Path> {
        use std::os::unix::fs::MetadataExt;
        paths
            .into_iter()
            .filter(|path| {
                std::fs::metadata(path)
                    .is_ok_and(|meta| self.can_read(meta.mode(), meta.uid(), meta.gid()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_is_the_agents_own_user_and_bad_names_are_clear_errors() {
        assert_eq!(WorkerIdentity::resolve(None, None).unwrap(), None);
        assert!(matches!(
            WorkerIdentity::resolve(None, Some("nogroup")),
            Err(IdentityError::GroupWithoutUser)
        ));
        assert!(matches!(
            WorkerIdentity::resolve(Some("no-such-user-heapwarden"), None),
            Err(IdentityError::NoUser(_))
        ));
        assert!(matches!(
            WorkerIdentity::resolve(Some("root"), None),
            Err(IdentityError::Root { .. })
        ));
        assert!(matches!(
            WorkerIdentity::resolve(Some("0"), None),
            Err(IdentityError::Root { .. })
        ));
    }

    #[test]
    fn readability_follows_owner_group_and_other_bits() {
        let worker = WorkerIdentity {
            user: "w".into(),
            uid: 2000,
            gid: 2000,
            groups: vec![2000, 3000],
        };
        assert!(!worker.can_read(0o600, 1000, 1000));
        assert!(worker.can_read(0o644, 1000, 1000));
        assert!(!worker.can_read(0o640, 1000, 1000));
        assert!(
            worker.can_read(0o640, 1000, 3000),
            "through a supplementary group"
        );
        assert!(worker.can_read(0o400, 2000, 1000), "its own file");
    }

    #[test]
    fn a_real_user_resolves_with_its_groups() {
        // `nobody` exists on every Debian system.
        let nobody = WorkerIdentity::resolve(Some("nobody"), None)
            .unwrap()
            .unwrap();
        assert_eq!(nobody.uid, 65534);
        assert!(nobody.groups.contains(&nobody.gid));
        let grouped = WorkerIdentity::resolve(Some("nobody"), Some("nogroup"))
            .unwrap()
            .unwrap();
        assert_eq!(grouped.gid, 65534);
    }
}
