//! The profile store: the directory `<state-dir>/profiles` (0700, files 0600), the index,
//! retention by count and bytes, and the free-disk check. `ProfileStore` is a plain
//! struct with one owner; `ProfileStoreHandle` (in `store_handle.rs`) runs it on its own
//! thread and is what the rest of the agent holds.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::index::{IndexFile, ProfileFigures, ProfileId, ProfileKind, ProfileMeta, Trigger};
use crate::config::ProfilesConfig;

pub use super::store_handle::{ProfileStoreHandle, StoreStats};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("profile store {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("only {free} bytes free under {path}, below the {min_free}-byte minimum; dump skipped")]
    DiskShort {
        path: PathBuf,
        free: u64,
        min_free: u64,
    },
    #[error("profile directory: {0}")]
    NotOurs(#[source] crate::owned::OwnedError),
    #[error(
        "manual profile {id} of slot {slot} was not kept: the retention limits are full of leak and baseline profiles, which manual ones never evict"
    )]
    RetentionFull { id: u64, slot: usize },
    #[error("no profile with id {0}")]
    UnknownId(u64),
    #[error(
        "profile {id} is a heap snapshot: open it in Chrome DevTools (Memory → Load) rather than diffing it"
    )]
    NotAProfile { id: u64 },
    #[error(
        "no baseline profile of the worker that wrote profile {id} (slot {slot}, pid {pid}) to diff against; name one with --base"
    )]
    NoBaseline { id: u64, slot: usize, pid: u32 },
    #[error("profile {id} for slot {slot} was not written: {reason}")]
    NotWritten {
        id: u64,
        slot: usize,
        reason: String,
    },
    #[error(transparent)]
    Profile(#[from] super::ProfileError),
    #[error("the profile store task has stopped")]
    Stopped,
}

/// A profile being taken: the worker dumps to `raw_path`, the helper converts to
/// `out_path`, then [`ProfileStore::commit`] (or `abort`) finishes it.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingProfile {
    pub id: u64,
    pub slot: usize,
    pub worker_id: Option<u64>,
    pub pid: u32,
    pub trigger: Trigger,
    pub kind: ProfileKind,
    pub raw_path: PathBuf,
    pub out_path: PathBuf,
}

impl PendingProfile {
    /// The same reservation, stored as a heap snapshot (`<id>.heapsnapshot`).
    pub fn into_snapshot(mut self) -> PendingProfile {
        self.kind = ProfileKind::Snapshot;
        self.out_path
            .set_file_name(ProfileKind::Snapshot.file_name(self.id));
        self
    }
}

#[derive(Debug)]
pub struct ProfileStore {
    dir: PathBuf,
    config: ProfilesConfig,
    index: IndexFile,
    skipped_for_disk: u64,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl ProfileStore {
    /// Opens (creating) `<state_dir>/profiles`, refuses it unless the agent's user owns it,
    /// tightens its mode to 0700, loads the
    /// index, and removes what a crash left behind: raw dumps, partial files, profiles
    /// the index does not know, index entries whose file is gone.
    pub fn open(state_dir: &Path, config: ProfilesConfig) -> Result<ProfileStore, StoreError> {
        let dir = state_dir.join("profiles");
        crate::owned::prepare_dir(&dir, 0o700).map_err(StoreError::NotOurs)?;
        let index_path = dir.join("index.json");
        let mut index = IndexFile::load(&index_path).map_err(io_err(&index_path))?;
        index.profiles.retain(|p| dir.join(&p.file).is_file());
        let known: Vec<String> = index.profiles.iter().map(|p| p.file.clone()).collect();
        for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != "index.json" && !known.contains(&name) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let max_id = index.profiles.iter().map(|p| p.id).max().unwrap_or(0);
        index.next_id = index.next_id.max(max_id + 1).max(1);
        let store = ProfileStore {
            dir,
            config,
            index,
            skipped_for_disk: 0,
        };
        store.save()?;
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stored profiles, oldest first.
    pub fn list(&self) -> &[ProfileMeta] {
        &self.index.profiles
    }

    pub fn get(&self, id: u64) -> Option<&ProfileMeta> {
        self.index.profiles.iter().find(|p| p.id == id)
    }

    /// The file of a stored profile (for download and diffs).
    pub fn path_of(&self, id: u64) -> Option<PathBuf> {
        self.get(id).map(|p| self.dir.join(p.kind.file_name(p.id)))
    }

    /// The newest baseline of a slot.
    pub fn latest_baseline(&self, slot: usize) -> Option<&ProfileMeta> {
        self.index.profiles.iter().rev().find(|p| {
            p.slot == slot && p.trigger == Trigger::Baseline && p.kind == ProfileKind::Profile
        })
    }

    /// The default `base` of a diff of `profile`: the newest baseline the *same worker*
    /// wrote before it (same slot, same worker id when both are known, same pid). Never a
    /// later worker's: with `action = "restart"` every leak profile is followed by the
    /// replacement's own baseline, which measures another process.
    pub fn baseline_of(&self, profile: &ProfileMeta) -> Option<&ProfileMeta> {
        self.index
            .profiles
            .iter()
            .rev()
            .find(|p| is_baseline_of(p, profile))
    }

    /// Bytes of all stored profiles (`heapwarden_profiles_stored_bytes`).
    pub fn stored_bytes(&self) -> u64 {
        self.index.profiles.iter().map(|p| p.bytes).sum()
    }

    /// Dumps skipped because the disk was short (since the store was opened).
    pub fn skipped_for_disk(&self) -> u64 {
        self.skipped_for_disk
    }

    /// Bytes available to us on the profile directory's filesystem.
    pub fn free_disk(&self) -> Result<u64, StoreError> {
        let stat = nix::sys::statvfs::statvfs(&self.dir).map_err(|e| StoreError::Io {
            path: self.dir.clone(),
            source: e.into(),
        })?;
        Ok((stat.blocks_available() as u64).saturating_mul(stat.fragment_size() as u64))
    }

    /// Whether at least `min_free` bytes are free where profiles are written.
    pub fn free_disk_ok(&self, min_free: u64) -> Result<bool, StoreError> {
        Ok(self.free_disk()? >= min_free)
    }

    /// Starts a profile: checks free disk (a short disk skips the dump and counts it),
    /// then reserves the next id and the two paths.
    pub fn begin(
        &mut self,
        slot: usize,
        worker_id: Option<u64>,
        pid: u32,
        trigger: Trigger,
    ) -> Result<PendingProfile, StoreError> {
        let min_free = self.config.min_free_disk.bytes();
        let free = self.free_disk()?;
        if free < min_free {
            self.skipped_for_disk += 1;
            return Err(StoreError::DiskShort {
                path: self.dir.clone(),
                free,
                min_free,
            });
        }
        let id = self.index.next_id;
        self.index.next_id += 1;
        // Persist the bump so an id is never handed out twice across a crash.
        self.save()?;
        Ok(PendingProfile {
            id,
            slot,
            worker_id,
            pid,
            trigger,
            kind: ProfileKind::Profile,
            raw_path: self.dir.join(format!("{id}.raw")),
            out_path: self.dir.join(ProfileId::file_name(id)),
        })
    }

    /// Records a converted profile, deletes its raw dump, applies retention. Returns the
    /// new entry and the entries retention removed.
    pub fn commit(
        &mut self,
        pending: PendingProfile,
        figures: ProfileFigures,
        rule: Option<String>,
    ) -> Result<(ProfileMeta, Vec<ProfileMeta>), StoreError> {
        if pending.raw_path != pending.out_path {
            let _ = std::fs::remove_file(&pending.raw_path);
        }
        let meta = std::fs::metadata(&pending.out_path).map_err(|e| StoreError::NotWritten {
            id: pending.id,
            slot: pending.slot,
            reason: e.to_string(),
        })?;
        std::fs::set_permissions(&pending.out_path, std::fs::Permissions::from_mode(0o600))
            .map_err(io_err(&pending.out_path))?;
        let entry = ProfileMeta {
            id: pending.id,
            slot: pending.slot,
            worker_id: pending.worker_id,
            pid: pending.pid,
            trigger: pending.trigger,
            kind: pending.kind,
            created_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            bytes: meta.len(),
            figures,
            rule,
            file: pending.kind.file_name(pending.id),
        };
        self.index.profiles.push(entry.clone());
        let removed = self.enforce_retention(&entry);
        if entry.trigger == Trigger::Manual && self.over_limits() {
            self.index.profiles.retain(|p| p.id != entry.id);
            let _ = std::fs::remove_file(&pending.out_path);
            self.save()?;
            return Err(StoreError::RetentionFull {
                id: entry.id,
                slot: entry.slot,
            });
        }
        self.save()?;
        Ok((entry, removed))
    }

    /// Checks again, once the worker wrote its raw dump, that converting it still leaves
    /// `min-free-disk` free (the dump itself took space; the profile takes about as much).
    /// A short disk counts as a skipped dump.
    pub fn recheck_disk(&mut self, pending: &PendingProfile) -> Result<(), StoreError> {
        let raw = std::fs::metadata(&pending.raw_path)
            .map(|m| m.len())
            .unwrap_or(0);
        let min_free = self.config.min_free_disk.bytes();
        let free = self.free_disk()?;
        if free < min_free.saturating_add(raw) {
            self.skipped_for_disk += 1;
            return Err(StoreError::DiskShort {
                path: self.dir.clone(),
                free,
                min_free: min_free.saturating_add(raw),
            });
        }
        Ok(())
    }

    fn over_limits(&self) -> bool {
        self.index.profiles.len() > self.config.max_count.max(1)
            || self.stored_bytes() > self.config.max_bytes.bytes()
    }

    /// Drops a profile that failed: removes whatever files it left.
    pub fn abort(&mut self, pending: &PendingProfile) {
        let _ = std::fs::remove_file(&pending.raw_path);
        let _ = std::fs::remove_file(&pending.out_path);
    }

    /// Deletes profiles until both limits hold: manual ones first (oldest first), then
    /// the oldest others, each slot's newest baseline last; the profile just written
    /// never. A new manual profile may only evict manual ones, so on-call dumps can never
    /// push out the evidence of a leak.
    fn enforce_retention(&mut self, new: &ProfileMeta) -> Vec<ProfileMeta> {
        let mut removed = Vec::new();
        while self.over_limits() {
            let mut newest_baseline: HashMap<usize, u64> = HashMap::new();
            for p in self
                .index
                .profiles
                .iter()
                .filter(|p| p.trigger == Trigger::Baseline)
            {
                newest_baseline.insert(p.slot, p.id);
            }
            let profiles = &self.index.profiles;
            let other = |p: &ProfileMeta| p.id != new.id;
            let manual = profiles
                .iter()
                .position(|p| other(p) && p.trigger == Trigger::Manual);
            let victim = if new.trigger == Trigger::Manual {
                manual
            } else {
                let unprotected =
                    |p: &ProfileMeta| other(p) && newest_baseline.get(&p.slot) != Some(&p.id);
                manual
                    .or_else(|| profiles.iter().position(unprotected))
                    .or_else(|| profiles.iter().position(other))
            };
            let Some(victim) = victim else { break };
            let gone = self.index.profiles.remove(victim);
            let _ = std::fs::remove_file(self.dir.join(&gone.file));
            removed.push(gone);
        }
        removed
    }

    fn save(&self) -> Result<(), StoreError> {
        Ok(self.index.save(&self.dir.join("index.json"))?)
    }
}

/// Whether `candidate` is a baseline `profile`'s own worker wrote before it.
fn is_baseline_of(candidate: &ProfileMeta, profile: &ProfileMeta) -> bool {
    let same_worker = match (candidate.worker_id, profile.worker_id) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    } && candidate.pid == profile.pid;
    candidate.trigger == Trigger::Baseline
        && candidate.kind == ProfileKind::Profile
        && candidate.slot == profile.slot
        && candidate.id < profile.id
        && same_worker
}
