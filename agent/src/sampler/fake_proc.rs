//! A fake `/proc` (and cgroup) tree in a temp dir for the readers' tests.

use std::path::{Path, PathBuf};

use super::procfs::ProcFs;

pub const PAGE: u64 = 4096;
pub const TICKS: u64 = 100;

pub struct FakeProc {
    pub dir: tempfile::TempDir,
}

impl FakeProc {
    pub fn new() -> Self {
        let fake = FakeProc {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        fake.write(
            "meminfo",
            "MemTotal:       1000 kB\nMemFree:  10 kB\nMemAvailable:    600 kB\n",
        );
        fake.write("loadavg", "0.50 1.25 2.00 1/144 999\n");
        fake
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("proc")
    }

    pub fn procfs(&self) -> ProcFs {
        ProcFs::new(self.root(), PAGE, TICKS)
    }

    pub fn write(&self, rel: &str, text: &str) {
        let path = self.root().join(rel);
        write_file(&path, text);
    }

    /// A process with `rss_pages` resident, CPU (utime, stime, cutime, cstime) ticks, and
    /// a rollup of `pss_kib` / private `uss_kib` / `swap_kib`.
    pub fn process(&self, pid: u32, ppid: u32, rss_pages: u64, ticks: [u64; 4], kib: [u64; 3]) {
        self.write(
            &format!("{pid}/statm"),
            &format!("9000 {rss_pages} 50 10 0 300 0\n"),
        );
        let [ut, st, cut, cst] = ticks;
        self.write(
            &format!("{pid}/stat"),
            &format!(
                "{pid} (we ird) (name)) S {ppid} {pid} {pid} 0 -1 4194304 98 0 0 0 {ut} {st} {cut} {cst} 20 0 1 0 58544 3133440 {rss_pages} 18446744073709551615\n"
            ),
        );
        let [pss, uss, swap] = kib;
        self.write(
            &format!("{pid}/smaps_rollup"),
            &format!(
                "55d0-7ffe ---p 00000000 00:00 0 [rollup]\nRss: {} kB\nPss:  {pss} kB\n\
Pss_Anon: 1 kB\nShared_Clean: 8 kB\nPrivate_Clean: {} kB\nPrivate_Dirty: {} kB\nSwap: {swap} kB\nSwapPss: 1 kB\n",
                rss_pages * 4,
                uss / 2,
                uss - uss / 2
            ),
        );
        std::fs::create_dir_all(self.root().join(format!("{pid}/task/{pid}"))).expect("task dir");
    }

    /// The process exits: its directory goes. A `stat` the sampler keeps open still reads
    /// the unlinked file, so it is emptied first (procfs would answer ESRCH).
    pub fn remove(&self, pid: u32) {
        let _ = std::fs::write(self.root().join(format!("{pid}/stat")), "");
        std::fs::remove_dir_all(self.root().join(pid.to_string())).expect("remove");
    }

    /// Lists `children` of `pid` in its main thread's children file.
    pub fn children(&self, pid: u32, children: &[u32]) {
        let list: Vec<String> = children.iter().map(u32::to_string).collect();
        self.write(
            &format!("{pid}/task/{pid}/children"),
            &format!("{} ", list.join(" ")),
        );
    }
}

pub fn write_file(path: &Path, text: &str) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(path, text).expect("write");
}
