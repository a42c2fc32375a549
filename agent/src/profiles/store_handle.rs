//! `ProfileStoreHandle`: the one owner of the [`ProfileStore`] runs on its own thread
//! (its work is small blocking file I/O: fsync'ed index rewrites, deletes), and the rest
//! of the agent talks to it with typed async calls over a bounded channel. The handle
//! also carries the [`DumpLimiter`] every profile capture goes through. Diffs read two
//! profile files, so they run on the blocking pool, not on the owner thread.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

use super::diff::{DiffReport, diff_files};
use super::dump_limit::{DumpBusy, DumpLimiter, DumpPermit};
use super::index::{ExportMark, ProfileFigures, ProfileMeta, Trigger};
use super::store::{ExportQueue, PendingProfile, ProfileStore, StoreError};

/// Figures for `heapwarden_profiles_stored_bytes` and friends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct StoreStats {
    pub count: usize,
    pub stored_bytes: u64,
    pub skipped_for_disk: u64,
}

type Reply<T> = oneshot::Sender<T>;

enum Command {
    Begin(
        usize,
        Option<u64>,
        u32,
        Trigger,
        Reply<Result<PendingProfile, StoreError>>,
    ),
    Commit(
        PendingProfile,
        ProfileFigures,
        Option<String>,
        Reply<Result<(ProfileMeta, Vec<ProfileMeta>), StoreError>>,
    ),
    BeginSnapshot(
        usize,
        Option<u64>,
        u32,
        Trigger,
        u64,
        Reply<Result<(PendingProfile, u64), StoreError>>,
    ),
    Abort(PendingProfile),
    Adopt(PendingProfile, Reply<Result<(), StoreError>>),
    Recheck(PendingProfile, Reply<Result<(), StoreError>>),
    List(Reply<Vec<ProfileMeta>>),
    Get(u64, Reply<Option<(ProfileMeta, PathBuf)>>),
    BaselineOf(ProfileMeta, Reply<Option<ProfileMeta>>),
    Stats(Reply<StoreStats>),
    ExportQueue(u64, Reply<ExportQueue>),
    MarkExported(u64, ExportMark, bool, Reply<Result<(), StoreError>>),
}

#[derive(Debug, Clone)]
pub struct ProfileStoreHandle {
    tx: mpsc::Sender<Command>,
    dumps: Arc<DumpLimiter>,
    /// The id of the newest committed profile: the exporter waits on it.
    committed: watch::Receiver<u64>,
}

impl ProfileStoreHandle {
    /// Moves the store onto its own thread. The thread ends when every handle is dropped.
    pub fn spawn(store: ProfileStore) -> (ProfileStoreHandle, std::thread::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(64);
        let newest = store.list().last().map_or(0, |p| p.id);
        let (committed_tx, committed) = watch::channel(newest);
        let thread = std::thread::Builder::new()
            .name("profile-store".into())
            .spawn(move || run(store, rx, committed_tx))
            .expect("the OS can start one thread at agent start");
        let dumps = Arc::new(DumpLimiter::default());
        (
            ProfileStoreHandle {
                tx,
                dumps,
                committed,
            },
            thread,
        )
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| StoreError::Stopped)?;
        answer.await.map_err(|_| StoreError::Stopped)
    }

    /// Reserves an id and paths; `Err(DiskShort)` means skip this dump (already counted).
    pub async fn begin(
        &self,
        slot: usize,
        worker_id: Option<u64>,
        pid: u32,
        trigger: Trigger,
    ) -> Result<PendingProfile, StoreError> {
        self.ask(|r| Command::Begin(slot, worker_id, pid, trigger, r))
            .await?
    }

    /// Reserves a heap snapshot expected to take `expected` bytes, or refuses it before
    /// it is taken; returns the reservation and the byte cap for the worker.
    pub async fn begin_snapshot(
        &self,
        slot: usize,
        worker_id: Option<u64>,
        pid: u32,
        trigger: Trigger,
        expected: u64,
    ) -> Result<(PendingProfile, u64), StoreError> {
        self.ask(|r| Command::BeginSnapshot(slot, worker_id, pid, trigger, expected, r))
            .await?
    }

    /// Records a converted profile; returns it and what retention removed.
    pub async fn commit(
        &self,
        pending: PendingProfile,
        figures: ProfileFigures,
        rule: Option<String>,
    ) -> Result<(ProfileMeta, Vec<ProfileMeta>), StoreError> {
        self.ask(|r| Command::Commit(pending, figures, rule, r))
            .await?
    }

    /// A manual dump's permit now, or why not.
    pub fn try_dump_permit(&self, slot: usize) -> Result<DumpPermit, DumpBusy> {
        self.dumps.try_acquire(slot)
    }

    /// A baseline or leak dump's permit, waiting for its turn.
    pub async fn dump_permit(&self, slot: usize) -> DumpPermit {
        self.dumps.acquire(slot).await
    }

    /// Free disk checked again once the raw dump is written (`Err(DiskShort)`: skip).
    pub async fn recheck_disk(&self, pending: &PendingProfile) -> Result<(), StoreError> {
        let pending = pending.clone();
        self.ask(|r| Command::Recheck(pending, r)).await?
    }

    /// Brings a dump written into the drop box into the store (workers under their own
    /// user); nothing to do otherwise.
    pub async fn adopt(&self, pending: &PendingProfile) -> Result<(), StoreError> {
        if pending.worker_path.is_none() {
            return Ok(());
        }
        let pending = pending.clone();
        self.ask(|r| Command::Adopt(pending, r)).await?
    }

    /// Removes the files of a profile that failed.
    pub async fn abort(&self, pending: PendingProfile) {
        let _ = self.tx.send(Command::Abort(pending)).await;
    }

    pub async fn list(&self) -> Result<Vec<ProfileMeta>, StoreError> {
        self.ask(Command::List).await
    }

    /// A profile's entry and file path (the API streams the file for download).
    pub async fn get(&self, id: u64) -> Result<(ProfileMeta, PathBuf), StoreError> {
        self.ask(|r| Command::Get(id, r))
            .await?
            .ok_or(StoreError::UnknownId(id))
    }

    /// The baseline the worker that wrote `profile` wrote before it.
    pub async fn baseline_of(
        &self,
        profile: &ProfileMeta,
    ) -> Result<Option<ProfileMeta>, StoreError> {
        let profile = profile.clone();
        self.ask(|r| Command::BaselineOf(profile, r)).await
    }

    pub async fn stats(&self) -> Result<StoreStats, StoreError> {
        self.ask(Command::Stats).await
    }

    /// Changes whenever a profile is committed (its value: the newest id).
    pub fn commits(&self) -> watch::Receiver<u64> {
        self.committed.clone()
    }

    /// What waits to be pushed after the exporter's cursor.
    pub async fn export_queue(&self, after: u64) -> Result<ExportQueue, StoreError> {
        self.ask(|r| Command::ExportQueue(after, r)).await
    }

    /// Records what became of profile `id` on its way to the sink; `flush`: write the
    /// index now (else within a second, or when the store closes).
    pub async fn mark_exported(
        &self,
        id: u64,
        mark: ExportMark,
        flush: bool,
    ) -> Result<(), StoreError> {
        self.ask(|r| Command::MarkExported(id, mark, flush, r))
            .await?
    }

    /// `id` minus `base`; without a base, the baseline of the worker that wrote `id`
    /// (never a later worker's in the same slot).
    pub async fn diff(&self, id: u64, base: Option<u64>) -> Result<DiffReport, StoreError> {
        let ((base_id, base_path), (id, path)) = self.diff_pair(id, base).await?;
        let report =
            tokio::task::spawn_blocking(move || diff_files(base_id, &base_path, id, &path))
                .await
                .map_err(|_| StoreError::Stopped)??;
        Ok(report)
    }

    /// The same difference as [`Self::diff`], as an SVG differential flame graph.
    pub async fn diff_svg(&self, id: u64, base: Option<u64>) -> Result<String, StoreError> {
        let ((base_id, base_path), (id, path)) = self.diff_pair(id, base).await?;
        let svg = tokio::task::spawn_blocking(move || {
            super::flame::diff_svg_files(base_id, &base_path, id, &path)
        })
        .await
        .map_err(|_| StoreError::Stopped)??;
        Ok(svg)
    }

    /// The (base, profile) ids and files a diff of `id` compares.
    async fn diff_pair(
        &self,
        id: u64,
        base: Option<u64>,
    ) -> Result<((u64, PathBuf), (u64, PathBuf)), StoreError> {
        let (meta, path) = self.get(id).await?;
        if meta.kind != super::index::ProfileKind::Profile {
            return Err(StoreError::NotAProfile { id });
        }
        let base_meta = match base {
            Some(base) => self.get(base).await?.0,
            None => self
                .baseline_of(&meta)
                .await?
                .ok_or(StoreError::NoBaseline {
                    id: meta.id,
                    slot: meta.slot,
                    pid: meta.pid,
                })?,
        };
        if base_meta.kind != super::index::ProfileKind::Profile {
            return Err(StoreError::NotAProfile { id: base_meta.id });
        }
        let (_, base_path) = self.get(base_meta.id).await?;
        Ok(((base_meta.id, base_path), (meta.id, path)))
    }
}

fn run(mut store: ProfileStore, mut rx: mpsc::Receiver<Command>, committed: watch::Sender<u64>) {
    while let Some(command) = rx.blocking_recv() {
        // A dropped reply means the asker went away; nothing to do about it.
        match command {
            Command::Begin(slot, worker_id, pid, trigger, r) => {
                let _ = r.send(store.begin(slot, worker_id, pid, trigger));
            }
            Command::Commit(pending, figures, rule, r) => {
                let result = store.commit(pending, figures, rule);
                if let Ok((meta, _)) = &result {
                    committed.send_replace(meta.id);
                }
                let _ = r.send(result);
            }
            Command::ExportQueue(after, r) => {
                let _ = r.send(store.export_queue(after));
            }
            Command::MarkExported(id, mark, flush, r) => {
                let _ = r.send(store.mark_exported(id, mark, flush));
            }
            Command::BeginSnapshot(slot, worker_id, pid, trigger, expected, r) => {
                let _ = r.send(store.begin_snapshot(slot, worker_id, pid, trigger, expected));
            }
            Command::Abort(pending) => store.abort(&pending),
            Command::Adopt(pending, r) => {
                let _ = r.send(store.adopt(&pending));
            }
            Command::Recheck(pending, r) => {
                let _ = r.send(store.recheck_disk(&pending));
            }
            Command::List(r) => {
                let _ = r.send(store.list().to_vec());
            }
            Command::Get(id, r) => {
                let found = store.get(id).cloned();
                let _ = r.send(found.and_then(|m| store.path_of(m.id).map(|p| (m, p))));
            }
            Command::BaselineOf(profile, r) => {
                let _ = r.send(store.baseline_of(&profile).cloned());
            }
            Command::Stats(r) => {
                let _ = r.send(StoreStats {
                    count: store.list().len(),
                    stored_bytes: store.stored_bytes(),
                    skipped_for_disk: store.skipped_for_disk(),
                });
            }
        }
    }
    // Export marks written within the last second are kept across a clean stop.
    let _ = store.flush_marks();
}
