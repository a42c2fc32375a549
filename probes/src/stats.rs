//! Reading `HeapStats` (the protocol's type) from jemalloc's process-wide figures, through
//! MIBs looked up once.
//!
//! jemalloc caches its statistics; they only refresh when `epoch` advances, so every read
//! advances it first. Name lookup costs a string walk per key, which is why the MIBs are
//! resolved once and kept.

pub use heapwarden_protocol::HeapStats;

use crate::error::ProbeError;

/// Reading [`HeapStats`] in this process (`HeapStats::read()`): the type is the
/// protocol's, the reading is the probe's.
pub trait ReadHeapStats {
    /// Advances jemalloc's `epoch` and reads the current figures.
    fn read() -> Result<HeapStats, ProbeError>;
}

impl ReadHeapStats for HeapStats {
    #[cfg(feature = "jemalloc")]
    fn read() -> Result<HeapStats, ProbeError> {
        jemalloc::read()
    }

    /// Without the `jemalloc` feature there are no heap figures.
    #[cfg(not(feature = "jemalloc"))]
    fn read() -> Result<HeapStats, ProbeError> {
        Err(ProbeError::NoJemalloc)
    }
}

#[cfg(feature = "jemalloc")]
mod jemalloc {
    use std::sync::OnceLock;

    use tikv_jemalloc_ctl::{epoch, epoch_mib, stats};

    use super::HeapStats;
    use crate::error::ProbeError;

    struct Mibs {
        epoch: epoch_mib,
        allocated: stats::allocated_mib,
        active: stats::active_mib,
        resident: stats::resident_mib,
        mapped: stats::mapped_mib,
        retained: stats::retained_mib,
        metadata: stats::metadata_mib,
    }

    fn ctl<T>(key: &'static str, result: tikv_jemalloc_ctl::Result<T>) -> Result<T, ProbeError> {
        result.map_err(|cause| ProbeError::Jemalloc { key, cause })
    }

    impl Mibs {
        fn lookup() -> Result<Mibs, ProbeError> {
            Ok(Mibs {
                epoch: ctl("epoch", epoch::mib())?,
                allocated: ctl("stats.allocated", stats::allocated::mib())?,
                active: ctl("stats.active", stats::active::mib())?,
                resident: ctl("stats.resident", stats::resident::mib())?,
                mapped: ctl("stats.mapped", stats::mapped::mib())?,
                retained: ctl("stats.retained", stats::retained::mib())?,
                metadata: ctl("stats.metadata", stats::metadata::mib())?,
            })
        }

        fn cached() -> Result<&'static Mibs, ProbeError> {
            static MIBS: OnceLock<Mibs> = OnceLock::new();
            if let Some(mibs) = MIBS.get() {
                return Ok(mibs);
            }
            // Two racing first reads both look up; one wins, which is harmless.
            let mibs = Mibs::lookup()?;
            Ok(MIBS.get_or_init(|| mibs))
        }
    }

    pub(super) fn read() -> Result<HeapStats, ProbeError> {
        let mibs = Mibs::cached()?;
        ctl("epoch", mibs.epoch.advance())?;
        // usize -> u64 never truncates on the 64-bit Linux targets this crate supports.
        Ok(HeapStats {
            allocated: ctl("stats.allocated", mibs.allocated.read())? as u64,
            active: ctl("stats.active", mibs.active.read())? as u64,
            resident: Some(ctl("stats.resident", mibs.resident.read())? as u64),
            mapped: Some(ctl("stats.mapped", mibs.mapped.read())? as u64),
            retained: Some(ctl("stats.retained", mibs.retained.read())? as u64),
            metadata: Some(ctl("stats.metadata", mibs.metadata.read())? as u64),
        })
    }
}

#[cfg(all(test, feature = "jemalloc"))]
mod tests {
    use super::{HeapStats, ReadHeapStats};

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn holding_64_mib_grows_allocated_by_at_least_60_mib() {
        let before = HeapStats::read().expect("read heap stats");
        let held = std::hint::black_box(vec![1u8; 64 * MIB as usize]);
        let during = HeapStats::read().expect("read heap stats");
        // Other tests run in parallel threads and allocate too, so only a lower bound holds.
        assert!(
            during.allocated >= before.allocated + 60 * MIB,
            "allocated went from {} to {}",
            before.allocated,
            during.allocated
        );
        assert!(during.active >= during.allocated);
        assert!(during.mapped >= Some(during.active));
        drop(held);
    }
}
