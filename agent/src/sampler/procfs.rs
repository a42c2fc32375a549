//! The sampler's view of `crate::procfs` (the agent's one `/proc` reader): a process's
//! `stat` (RSS, CPU ticks and parent in one read, kept open between rounds) on the fast
//! path, `smaps_rollup` on the slow one.

pub use crate::procfs::{
    ChildLists, ProcError, ProcFs, SmapsRollup, Stat, StatFile, parse_smaps_rollup, parse_stat,
};
