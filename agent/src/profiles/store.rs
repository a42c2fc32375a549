//! The profile store: the directory `<state-dir>/profiles` (0700, files 0600), the index,
//! retention by count and bytes, and the free-disk check. `ProfileStore` is a plain
//! struct with one owner; `ProfileStoreHandle` (in `store_handle.rs`) runs it on its own
//! thread and is what the rest of the agent holds.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::index::{
    ExportMark, IndexFile, ProfileFigures, ProfileId, ProfileKind, ProfileMeta, Runtime, Trigger,
};
use crate::config::ProfilesConfig;

pub use super::store_handle::{ProfileStoreHandle, StoreStats};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("profile store {path}")]
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
    #[error("profile directory")]
    NotOurs(#[source] crate::owned::OwnedError),
    #[error(
        "profile {id} of slot {slot} was not kept: the retention limits are full of profiles it may not evict (a manual profile evicts only manual ones, a heap snapshot only snapshots)"
    )]
    RetentionFull { id: u64, slot: usize },
    #[error(
        "a heap snapshot of slot {slot} is expected to take {expected} bytes, but only {room} bytes can be made room for ({why}); not taken"
    )]
    SnapshotTooLarge {
        slot: usize,
        expected: u64,
        room: u64,
        why: &'static str,
    },
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
    /// Where the worker writes, when not `raw_path`: a worker under its own user writes
    /// into the drop box, and the agent adopts the file ([`ProfileStore::adopt`]).
    pub worker_path: Option<PathBuf>,
    /// The probe that writes it, recorded in the index (Pyroscope's `runtime` label).
    pub runtime: Option<Runtime>,
    /// The worker's own pid when `pid` is one of its forked children.
    pub child_of: Option<u32>,
}

impl PendingProfile {
    /// The path to send the worker in its `dump` request.
    pub fn path_for_worker(&self) -> &Path {
        self.worker_path.as_deref().unwrap_or(&self.raw_path)
    }

    /// The same reservation, stored as a heap snapshot (`<id>.heapsnapshot`).
    pub fn into_snapshot(mut self) -> PendingProfile {
        self.kind = ProfileKind::Snapshot;
        self.out_path
            .set_file_name(ProfileKind::Snapshot.file_name(self.id));
        self
    }
}

/// What waits to be pushed (see [`ProfileStore::export_queue`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExportQueue {
    pub next: Option<(ProfileMeta, PathBuf)>,
    pub pending: usize,
    pub oldest_unix_ms: Option<u64>,
}

#[derive(Debug)]
pub struct ProfileStore {
    dir: PathBuf,
    config: ProfilesConfig,
    index: IndexFile,
    skipped_for_disk: u64,
    /// Set when workers run under their own user.
    dropbox: Option<super::dropbox::DropBox>,
    /// Export marks not yet written to the index file, and when it was last written:
    /// a backlog drained after an outage would otherwise rewrite the whole index once
    /// per profile.
    marks_unsaved: bool,
    saved_at: std::time::Instant,
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
        let mut store = ProfileStore {
            dir,
            config,
            index,
            skipped_for_disk: 0,
            dropbox: None,
            marks_unsaved: false,
            saved_at: std::time::Instant::now(),
        };
        store.save()?;
        Ok(store)
    }

    /// Workers run under their own user (`pool.user`): they write their dumps into
    /// `<state_dir>/dumps/` and the agent adopts them.
    pub fn with_dropbox(mut self, state_dir: &Path) -> Result<ProfileStore, StoreError> {
        let dropbox =
            super::dropbox::DropBox::prepare(state_dir).map_err(|source| StoreError::Io {
                path: state_dir.join("dumps"),
                source,
            })?;
        self.dropbox = Some(dropbox);
        Ok(self)
    }

    /// Brings what the worker wrote in the drop box into the store at `raw_path` (a
    /// no-op when the worker wrote there itself).
    pub fn adopt(&mut self, pending: &PendingProfile) -> Result<(), StoreError> {
        let (Some(dropbox), Some(dropped)) = (&self.dropbox, &pending.worker_path) else {
            return Ok(());
        };
        let cap = self.config.max_bytes.bytes().max(1 << 20);
        dropbox
            .adopt(dropped, &pending.raw_path, cap)
            .map(|_| ())
            .map_err(|reason| StoreError::NotWritten {
                id: pending.id,
                slot: pending.slot,
                reason,
            })
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
    /// wrote before it (same slot and worker id when both are known), from the same
    /// process when there is one — a pre-fork worker's leak profile is the child that grew,
    /// whose tree may have been baselined through another process. Never a later worker's:
    /// with `action = "restart"` every leak profile is followed by the replacement's own
    /// baseline, which measures another process.
    pub fn baseline_of(&self, profile: &ProfileMeta) -> Option<&ProfileMeta> {
        let mine = || {
            self.index
                .profiles
                .iter()
                .rev()
                .filter(|p| is_baseline_of(p, profile))
        };
        mine()
            .find(|p| p.pid == profile.pid)
            .or_else(|| mine().next())
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
            worker_path: self.dropbox.as_ref().map(|d| d.path_for(id)),
            runtime: None,
            child_of: None,
        })
    }

    /// Starts a heap snapshot expected to take `expected` bytes (about twice the heap),
    /// refusing it before it is taken when it cannot fit: neither in `max-bytes` once
    /// every other snapshot is evicted (it never evicts a pprof profile), nor on the disk
    /// with `min-free-disk` left. Returns the reservation and the byte cap the worker
    /// must stay under (the room there is).
    pub fn begin_snapshot(
        &mut self,
        slot: usize,
        worker_id: Option<u64>,
        pid: u32,
        trigger: Trigger,
        expected: u64,
    ) -> Result<(PendingProfile, u64), StoreError> {
        let profiles: u64 = self
            .index
            .profiles
            .iter()
            .filter(|p| p.kind != ProfileKind::Snapshot)
            .map(|p| p.bytes)
            .sum();
        let in_store = self.config.max_bytes.bytes().saturating_sub(profiles);
        let on_disk = self
            .free_disk()?
            .saturating_sub(self.config.min_free_disk.bytes());
        let (room, why) = if in_store <= on_disk {
            (in_store, "profiles.max-bytes less the pprof profiles kept")
        } else {
            (on_disk, "free disk less profiles.min-free-disk")
        };
        if expected > room {
            if why.starts_with("free disk") {
                self.skipped_for_disk += 1;
            }
            return Err(StoreError::SnapshotTooLarge {
                slot,
                expected,
                room,
                why,
            });
        }
        let pending = self.begin(slot, worker_id, pid, trigger)?.into_snapshot();
        Ok((pending, room))
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
            stored_seq: self.index.next_seq,
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
            runtime: pending.runtime,
            child_of: pending.child_of,
            export: None,
        };
        self.index.next_seq += 1;
        self.index.profiles.push(entry.clone());
        let removed = self.enforce_retention(&entry);
        let refused = entry.trigger.is_disposable() || entry.kind == ProfileKind::Snapshot;
        if refused && self.over_limits() {
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
        if let Some(dropped) = &pending.worker_path {
            let _ = std::fs::remove_file(dropped);
        }
        let _ = std::fs::remove_file(&pending.raw_path);
        let _ = std::fs::remove_file(&pending.out_path);
    }

    /// Deletes profiles until both limits hold: manual ones first (oldest first), then
    /// the oldest others, each slot's newest baseline last; the profile just written
    /// never. A new manual profile may only evict manual ones, and a new snapshot only
    /// other snapshots, so neither can push out the evidence of a leak.
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
                .position(|p| other(p) && p.trigger.is_disposable());
            let victim = if new.kind == ProfileKind::Snapshot {
                // A snapshot never evicts a pprof profile (the baseline and the leak's
                // evidence): only other snapshots, oldest first.
                profiles
                    .iter()
                    .position(|p| other(p) && p.kind == ProfileKind::Snapshot)
            } else if new.trigger.is_disposable() {
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

    /// Records what became of a profile on its way to Pyroscope (gone already: nothing).
    /// The index file is rewritten when `flush` is set (the last profile waiting) or at
    /// most once a second otherwise; the exporter's cursor, not these marks, is what
    /// keeps a profile from being sent twice.
    pub fn mark_exported(
        &mut self,
        id: u64,
        mark: ExportMark,
        flush: bool,
    ) -> Result<(), StoreError> {
        let Some(entry) = self.index.profiles.iter_mut().find(|p| p.id == id) else {
            return Ok(());
        };
        entry.export = Some(mark);
        self.marks_unsaved = true;
        if flush || self.saved_at.elapsed() >= std::time::Duration::from_secs(1) {
            self.save()?;
        }
        Ok(())
    }

    /// Writes export marks still held only in memory (when the store closes).
    pub fn flush_marks(&mut self) -> Result<(), StoreError> {
        if self.marks_unsaved {
            self.save()?;
        }
        Ok(())
    }

    /// The export queue after the exporter's cursor: the next pprof profile to push (with
    /// its file), how many wait, and when the oldest of them was written.
    pub fn export_queue(&self, after: u64) -> ExportQueue {
        let mut waiting = self
            .index
            .profiles
            .iter()
            .filter(|p| p.stored_seq > after && p.kind == ProfileKind::Profile);
        let next = waiting.next().cloned();
        ExportQueue {
            pending: next.as_ref().map_or(0, |_| 1 + waiting.count()),
            oldest_unix_ms: next.as_ref().map(|p| p.created_unix_ms),
            next: next.map(|p| {
                let path = self.dir.join(&p.file);
                (p, path)
            }),
        }
    }

    fn save(&mut self) -> Result<(), StoreError> {
        self.index.save(&self.dir.join("index.json"))?;
        self.marks_unsaved = false;
        self.saved_at = std::time::Instant::now();
        Ok(())
    }
}

/// Whether `candidate` is a baseline `profile`'s own worker wrote before it.
fn is_baseline_of(candidate: &ProfileMeta, profile: &ProfileMeta) -> bool {
    let same_worker = match (candidate.worker_id, profile.worker_id) {
        (Some(a), Some(b)) => a == b,
        _ => candidate.pid == profile.pid,
    };
    candidate.trigger == Trigger::Baseline
        && candidate.kind == ProfileKind::Profile
        && candidate.slot == profile.slot
        && candidate.id < profile.id
        && same_worker
}
