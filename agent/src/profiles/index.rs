//! The profile index: what each stored profile is (`ProfileMeta`), the id grammar that
//! keeps every path inside the profile directory (`ProfileId`), and the JSON file that
//! survives restarts (rewritten atomically: temp file, fsync, rename).

use std::path::Path;

use serde::{Deserialize, Serialize};

/// What became of a profile on its way to Pyroscope (`export::pyroscope`).
pub use crate::metric_names::labels::ExportOutcome;
/// Why a profile was taken; also the `trigger` label of `heapwarden_heap_profiles_total`.
pub use crate::metric_names::labels::Trigger;
/// Which probe wrote a profile (rust, node, native).
pub use heapwarden_protocol::Runtime;

/// What a stored file is: a pprof heap profile, or a V8 heap snapshot (Node workers,
/// opens in Chrome DevTools → Memory → Load).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProfileKind {
    #[default]
    Profile,
    Snapshot,
}

impl ProfileKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProfileKind::Profile => "profile",
            ProfileKind::Snapshot => "snapshot",
        }
    }

    /// The only file name an entry of this kind is ever stored under.
    pub fn file_name(self, id: u64) -> String {
        match self {
            ProfileKind::Profile => ProfileId::file_name(id),
            ProfileKind::Snapshot => format!("{id}.heapsnapshot"),
        }
    }
}

/// The worker's figures when the profile was taken (absent ones were not sampled).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProfileFigures {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pss: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heap_allocated: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heap_active: Option<u64>,
    /// The watched figure's fitted growth at the time, bytes per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub growth_bytes_per_second: Option<f64>,
}

/// One stored profile, as listed by `GET /api/v1/profiles`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileMeta {
    pub id: u64,
    /// Its place in the order profiles were stored (1, 2, …). Ids are reserved when a
    /// dump starts, so a slow dump's id can be lower than that of a quicker one stored
    /// before it; the exporter follows this order. Indexes written before it existed
    /// get their ids ([`IndexFile::load`]).
    #[serde(default)]
    pub stored_seq: u64,
    pub slot: usize,
    /// The worker the profile was taken from (`worker_id` of `heapwarden ps`); older
    /// indexes lack it, and their profiles are matched by pid alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<u64>,
    pub pid: u32,
    pub trigger: Trigger,
    /// `profile` (pprof) or `snapshot` (V8 heap snapshot); older indexes lack it.
    #[serde(default)]
    pub kind: ProfileKind,
    pub created_unix_ms: u64,
    /// Size of the stored `.pb.gz`.
    pub bytes: u64,
    pub figures: ProfileFigures,
    /// The leak rule that tripped (`max_memory`, `growth`, `trend`), for leak profiles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// File name inside the profile directory (`<id>.pb.gz`), never a path.
    pub file: String,
    /// The probe that wrote it, when known (the `runtime` label in Pyroscope).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<Runtime>,
    /// The worker's own pid when the profile was taken in one of its forked children
    /// (`pid`: a pre-fork server's child, see `CaptureRequest::in_forked_child`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child_of: Option<u32>,
    /// Whether and when it reached Pyroscope (or why it never will); absent while it
    /// waits, or when export is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export: Option<ExportMark>,
}

/// The end of a profile's way to the sink: `sent` at a time, or `rejected`, `expired`,
/// `invalid` (with the reason).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportMark {
    pub outcome: ExportOutcome,
    pub at_unix_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Trigger {
    /// Manual and periodic profiles: evicted first, and may only evict their own kind,
    /// so they never push out the evidence of a leak.
    pub fn is_disposable(self) -> bool {
        matches!(self, Trigger::Manual | Trigger::Periodic)
    }
}

/// The grammar of a profile id in URLs and CLI arguments.
pub struct ProfileId;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileIdError {
    #[error("profile id {0:?} is not a positive decimal number")]
    NotDecimal(String),
    #[error("profile id {0:?} is out of range")]
    OutOfRange(String),
}

impl ProfileId {
    /// Accepts only canonical positive decimals ("1", "42"): no sign, no spaces, no
    /// leading zeros, no dots or slashes, nothing percent-encoded. Every file name the
    /// store builds comes from the parsed number, so no input can name another path.
    pub fn parse(s: &str) -> Result<u64, ProfileIdError> {
        let shown = || s.chars().take(40).collect::<String>();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || s.starts_with('0') {
            return Err(ProfileIdError::NotDecimal(shown()));
        }
        s.parse::<u64>()
            .map_err(|_| ProfileIdError::OutOfRange(shown()))
    }

    /// The only file name a profile is ever stored under.
    pub fn file_name(id: u64) -> String {
        format!("{id}.pb.gz")
    }
}

/// The on-disk index.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IndexFile {
    /// The id the next profile gets; never reused, even after retention deletes.
    pub next_id: u64,
    /// The `stored_seq` the next stored profile gets; never reused either.
    #[serde(default)]
    pub next_seq: u64,
    /// Oldest first.
    pub profiles: Vec<ProfileMeta>,
}

impl IndexFile {
    /// Reads the index; a missing file is an empty index.
    pub fn load(path: &Path) -> std::io::Result<IndexFile> {
        let mut index: IndexFile = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => IndexFile::default(),
            Err(e) => return Err(e),
        };
        index.number();
        Ok(index)
    }

    /// Makes the counters safe to hand out: `next_id` and `next_seq` above every entry,
    /// and an index from before `stored_seq` numbered by id — its entries were stored
    /// in id order as far as the export cursor (an id then) knows, and every new one
    /// comes after every old id.
    fn number(&mut self) {
        if self.next_seq == 0 {
            for p in &mut self.profiles {
                p.stored_seq = p.id;
            }
            self.next_seq = self.next_id;
        }
        let max_id = self.profiles.iter().map(|p| p.id).max().unwrap_or(0);
        let max_seq = self
            .profiles
            .iter()
            .map(|p| p.stored_seq)
            .max()
            .unwrap_or(0);
        self.next_id = self.next_id.max(max_id + 1).max(1);
        self.next_seq = self.next_seq.max(max_seq + 1).max(1);
    }

    /// Rewrites the index atomically with mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), super::ProfileError> {
        let json = serde_json::to_vec_pretty(self).map_err(|e| super::ProfileError::Write {
            path: path.to_path_buf(),
            source: std::io::Error::other(e),
        })?;
        super::convert::write_private(path, &json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_decimals_parse() {
        assert_eq!(ProfileId::parse("1"), Ok(1));
        assert_eq!(ProfileId::parse("18446744073709551615"), Ok(u64::MAX));
        assert_eq!(ProfileId::file_name(42), "42.pb.gz");
    }

    #[test]
    fn anything_else_is_rejected() {
        for bad in [
            "",
            "0",
            "007",
            "-1",
            "+1",
            " 1",
            "1 ",
            "1.0",
            "../x",
            "1/../../etc",
            "%2e%2e",
            "..",
            "/etc/passwd",
            "1e3",
            "0x10",
            "١",
            "1\0",
            "12a",
        ] {
            assert!(
                matches!(ProfileId::parse(bad), Err(ProfileIdError::NotDecimal(_))),
                "{bad:?} was accepted"
            );
        }
        assert!(matches!(
            ProfileId::parse("18446744073709551616"),
            Err(ProfileIdError::OutOfRange(_))
        ));
        assert!(ProfileId::parse(&"9".repeat(10_000)).is_err());
    }

    #[test]
    fn missing_index_is_empty_and_save_round_trips_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("index.json");
        let mut index = IndexFile::load(&path).expect("missing is empty");
        assert_eq!(index.next_id, 1);
        index.profiles.push(ProfileMeta {
            id: 1,
            stored_seq: 1,
            slot: 0,
            worker_id: Some(3),
            pid: 7,
            trigger: Trigger::Baseline,
            kind: ProfileKind::Profile,
            created_unix_ms: 5,
            bytes: 10,
            figures: ProfileFigures {
                rss: Some(3),
                ..Default::default()
            },
            rule: None,
            file: ProfileId::file_name(1),
            runtime: None,
            child_of: None,
            export: None,
        });
        index.next_id = 2;
        index.next_seq = 2;
        index.save(&path).expect("saves");
        assert_eq!(IndexFile::load(&path).expect("loads"), index);
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.contains("\"trigger\": \"baseline\""), "{text}");
    }
}
