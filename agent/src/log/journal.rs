//! journald priorities for the JSON lines: when stdout *is* the journal stream (systemd
//! names it in `$JOURNAL_STREAM` as `DEVICE:INODE`), each line starts with the syslog
//! `<N>` prefix journald strips and turns into the record's `PRIORITY=`
//! (`SyslogLevelPrefix=yes`, the default), so `journalctl -p err` finds the agent's errors.
//! Anywhere else (a terminal, a pipe, a file, the tests) the lines stay plain JSON.
//!
//! Why the prefix and not the native journal protocol: the record stays the same JSON
//! line on the same stream (ordered with everything else the agent writes, identical in
//! `journalctl -o cat`), it needs no extra socket or address family under the hardened
//! unit, and no code path that a missing journal could break.

use std::io::{self, Write};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use slog::{Drain, Level};

/// The syslog priority journald records for a log level (sd-daemon(3)'s `SD_*`).
pub fn priority(level: Level) -> u8 {
    match level {
        Level::Critical => 2,
        Level::Error => 3,
        Level::Warning => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// Whether `$JOURNAL_STREAM` (`DEVICE:INODE`) names the file `fd` is open on: systemd
/// sets it for a unit whose stdout or stderr goes to the journal, and a child that
/// inherited the variable but writes elsewhere must not prefix its lines.
pub fn is_journal_stream(journal_stream: Option<&str>, fd: impl AsFd) -> bool {
    let Some((dev, ino)) = journal_stream.and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    match nix::sys::stat::fstat(fd) {
        Ok(stat) => stat.st_dev == dev && stat.st_ino == ino,
        Err(_) => false,
    }
}

/// The priority of the record being written, set by [`PriorityDrain`] and read by
/// [`PrefixWriter`]; both run on the one log thread, one record at a time.
#[derive(Debug, Clone, Default)]
pub struct CurrentPriority(Arc<AtomicU8>);

/// Records each record's priority before the JSON drain it wraps writes the line.
pub struct PriorityDrain<D> {
    pub drain: D,
    pub current: CurrentPriority,
}

impl<D: Drain> Drain for PriorityDrain<D> {
    type Ok = D::Ok;
    type Err = D::Err;

    fn log(
        &self,
        record: &slog::Record<'_>,
        values: &slog::OwnedKVList,
    ) -> Result<Self::Ok, Self::Err> {
        self.current
            .0
            .store(priority(record.level()), Ordering::Relaxed);
        self.drain.log(record, values)
    }
}

/// Writes `<N>` (the current record's priority) at the start of every line when
/// `enabled`; passes the bytes through unchanged otherwise.
pub struct PrefixWriter<W> {
    out: W,
    current: CurrentPriority,
    enabled: bool,
    at_line_start: bool,
}

impl<W: Write> PrefixWriter<W> {
    pub fn new(out: W, current: CurrentPriority, enabled: bool) -> PrefixWriter<W> {
        PrefixWriter {
            out,
            current,
            enabled,
            at_line_start: true,
        }
    }
}

impl<W: Write> Write for PrefixWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.enabled || buf.is_empty() {
            return self.out.write(buf);
        }
        if self.at_line_start {
            let prefix = format!("<{}>", self.current.0.load(Ordering::Relaxed));
            self.out.write_all(prefix.as_bytes())?;
            self.at_line_start = false;
        }
        // At most one line per call, so the next line gets its own prefix.
        let line = match buf.iter().position(|&b| b == b'\n') {
            Some(end) => &buf[..=end],
            None => buf,
        };
        let written = self.out.write(line)?;
        if written > 0 && line[written - 1] == b'\n' {
            self.at_line_start = true;
        }
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_to_syslog_priorities() {
        let table = [
            (Level::Critical, 2),
            (Level::Error, 3),
            (Level::Warning, 4),
            (Level::Info, 6),
            (Level::Debug, 7),
            (Level::Trace, 7),
        ];
        for (level, expected) in table {
            assert_eq!(priority(level), expected, "{level:?}");
        }
    }

    #[test]
    fn the_stream_must_be_the_named_file() {
        let file = tempfile::tempfile().expect("temp file");
        let stat = nix::sys::stat::fstat(&file).expect("fstat");
        let named = format!("{}:{}", stat.st_dev, stat.st_ino);
        assert!(is_journal_stream(Some(&named), &file));
        let other = format!("{}:{}", stat.st_dev, stat.st_ino + 1);
        assert!(!is_journal_stream(Some(&other), &file));
        for bad in ["", "12", "a:b", "1:2:3", ":"] {
            assert!(!is_journal_stream(Some(bad), &file), "{bad:?}");
        }
        assert!(!is_journal_stream(None, &file));
    }

    #[test]
    fn every_line_gets_the_priority_of_its_record() {
        let current = CurrentPriority::default();
        let mut writer = PrefixWriter::new(Vec::new(), current.clone(), true);
        current.0.store(3, Ordering::Relaxed);
        writer.write_all(b"{\"a\":").unwrap();
        writer.write_all(b"1}\n").unwrap();
        current.0.store(6, Ordering::Relaxed);
        writer.write_all(b"{\"b\":2}\n{\"c\":3}\n").unwrap();
        assert_eq!(
            String::from_utf8(writer.out).unwrap(),
            "<3>{\"a\":1}\n<6>{\"b\":2}\n<6>{\"c\":3}\n"
        );
    }

    #[test]
    fn disabled_passes_bytes_through() {
        let mut writer = PrefixWriter::new(Vec::new(), CurrentPriority::default(), false);
        writer.write_all(b"{\"a\":1}\n").unwrap();
        assert_eq!(writer.out, b"{\"a\":1}\n");
    }
}
