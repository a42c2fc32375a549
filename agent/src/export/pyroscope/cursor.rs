//! The exporter's cursor: the `stored_seq` of the last profile it is done with (sent,
//! refused, expired or invalid), in `<state-dir>/export/pyroscope.cursor`, rewritten
//! atomically (temp file, fsync, rename) after each profile, so an agent restart resumes
//! where it stopped and never pushes a profile twice. The store numbers profiles in the
//! order they are stored, so "after the cursor" is the backlog, in order. Ids would not
//! do: a dump reserves its id when it starts, so a quicker dump started after a slow one
//! is stored first with the higher id, and a cursor at that id would skip the slow one.

use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CursorError {
    #[error("export cursor {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("export cursor {path} holds {text:?}, not a position in the profile store")]
    Garbled { path: PathBuf, text: String },
}

#[derive(Debug)]
pub struct Cursor {
    path: PathBuf,
    last: u64,
}

impl Cursor {
    /// Reads the cursor; a missing file starts before the first profile.
    pub fn open(state_dir: &Path) -> Result<Cursor, CursorError> {
        let dir = state_dir.join("export");
        let path = dir.join("pyroscope.cursor");
        let io = |source| CursorError::Io {
            path: path.clone(),
            source,
        };
        let last = match std::fs::read_to_string(&path) {
            Ok(text) => text
                .trim()
                .parse::<u64>()
                .map_err(|_| CursorError::Garbled {
                    path: path.clone(),
                    text: text.chars().take(40).collect(),
                })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io(e)),
        };
        crate::owned::prepare_dir(&dir, 0o700).map_err(|e| io(std::io::Error::other(e)))?;
        Ok(Cursor { path, last })
    }

    pub fn last(&self) -> u64 {
        self.last
    }

    /// Moves the cursor past `stored_seq` and persists it.
    pub fn advance(&mut self, stored_seq: u64) -> Result<(), CursorError> {
        let io = |source| CursorError::Io {
            path: self.path.clone(),
            source,
        };
        let tmp = self.path.with_extension("cursor.tmp");
        let mut file = std::fs::File::create(&tmp).map_err(io)?;
        file.write_all(format!("{stored_seq}\n").as_bytes())
            .map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        self.last = self.last.max(stored_seq);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_survives_a_reopen_and_garbage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut cursor = Cursor::open(dir.path()).unwrap();
        assert_eq!(cursor.last(), 0);
        cursor.advance(7).unwrap();
        assert_eq!(Cursor::open(dir.path()).unwrap().last(), 7);
        std::fs::write(dir.path().join("export/pyroscope.cursor"), "x").unwrap();
        assert!(matches!(
            Cursor::open(dir.path()),
            Err(CursorError::Garbled { .. })
        ));
    }
}
