//! What the supervisor reads about other processes from `/proc`: a process's parent,
//! group, state and start time (`stat`), whether its environment carries a variable
//! (`environ`), and this agent's children. Used to check who sent a notification and to
//! contain what workers leave behind; absent processes read as `None`.

use std::path::Path;

/// The `stat` fields the supervisor needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: u32,
    /// `R`, `S`, `Z`, …
    pub state: char,
    pub ppid: u32,
    pub pgid: u32,
    /// Clock ticks after boot: with the pid, identifies a process for the boot's lifetime.
    pub start_ticks: u64,
}

/// `pid (comm) state ppid pgrp session … starttime …`; `comm` may hold spaces and
/// parentheses, so fields are counted from the last `)`.
pub fn parse_stat(pid: u32, text: &str) -> Option<ProcStat> {
    let after_comm = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after_comm.split_ascii_whitespace().take(20).collect();
    // 0-based after comm: 0 state, 1 ppid, 2 pgrp, … 19 starttime.
    Some(ProcStat {
        pid,
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgid: fields.get(2)?.parse().ok()?,
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

pub fn stat(proc_root: &Path, pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    parse_stat(pid, &text)
}

/// True when `/proc/PID/environ` holds exactly `entry` (`KEY=value`); false when it does
/// not or cannot be read (another user's process, or gone).
pub fn environ_has(proc_root: &Path, pid: u32, entry: &[u8]) -> bool {
    std::fs::read(proc_root.join(pid.to_string()).join("environ"))
        .is_ok_and(|env| env.split(|&b| b == 0).any(|e| e == entry))
}

/// Every process id under `proc_root`.
pub fn all_pids(proc_root: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Children of process `pid`, from every thread's `task/TID/children` (the kernel lists
/// a child under the thread that forked it, or that adopted it as a subreaper); falls
/// back to a scan of every process's parent when the kernel has no such lists.
pub fn children(proc_root: &Path, pid: u32) -> Vec<u32> {
    let tasks = proc_root.join(pid.to_string()).join("task");
    let mut found = Vec::new();
    let mut listed = false;
    for task in std::fs::read_dir(&tasks).into_iter().flatten().flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            listed = true;
            found.extend(
                text.split_ascii_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    if listed {
        return found;
    }
    all_pids(proc_root)
        .into_iter()
        .filter(|&p| stat(proc_root, p).is_some_and(|s| s.ppid == pid))
        .collect()
}

/// Whether `pid` is `root` or descends from it, following parents up to 64 levels.
pub fn descends_from(proc_root: &Path, pid: u32, root: u32) -> bool {
    let mut current = pid;
    for _ in 0..64 {
        if current == root {
            return true;
        }
        match stat(proc_root, current) {
            Some(s) if s.ppid > 1 => current = s.ppid,
            _ => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let text =
            "42 (a (weird) name) S 7 40 40 0 -1 4194560 100 0 0 0 3 4 0 0 20 0 1 0 987654 1000 10";
        let s = parse_stat(42, text).expect("parses");
        assert_eq!(
            (s.state, s.ppid, s.pgid, s.start_ticks),
            ('S', 7, 40, 987654)
        );
        assert_eq!(parse_stat(1, "1 (init) S"), None);
    }

    #[test]
    fn this_process_is_found_as_a_child_of_its_parent_and_in_its_own_tree() {
        let root = Path::new("/proc");
        let me = std::process::id();
        let parent = stat(root, me).expect("own stat").ppid;
        assert!(children(root, parent).contains(&me));
        assert!(descends_from(root, me, parent));
        assert!(descends_from(root, me, me));
        assert!(!descends_from(root, parent, me));
    }
}
