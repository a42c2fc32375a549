//! Falling back from the probed heap to the tree's PSS. A worker watched on its heap can
//! still grow where the probe does not look: forked children without a channel of their
//! own, memory that is not `malloc`'s (pymalloc arenas, `mmap`, a library's own
//! allocator). When the tree's PSS has grown by more than a threshold since the heap
//! baseline while the heap grew by less than a quarter of that, the worker's rules
//! switch to PSS for the rest of its life (said once: a log record and
//! `heapwarden_worker_watch_fallbacks_total`), rather than watching nothing.

use super::rules::RulesConfig;

/// PSS growth that makes the switch when `growth` is off.
const DEFAULT_THRESHOLD: u64 = 64 << 20;
/// Never below this: PSS moves by a few MiB as pages are touched and shared.
const MIN_THRESHOLD: u64 = 16 << 20;

/// The PSS growth since the heap baseline that counts: half the `growth` rule (the
/// growth rule would trip at twice that on PSS), else 64 MiB; at least 16 MiB.
pub fn threshold(rules: &RulesConfig) -> u64 {
    rules
        .growth
        .map_or(DEFAULT_THRESHOLD, |g| g / 2)
        .max(MIN_THRESHOLD)
}

/// One worker's comparison of heap and PSS growth.
#[derive(Debug, Clone, Default)]
pub struct PssFallback {
    /// Heap and PSS when the heap baseline was taken (PSS at the first reading after).
    heap_at_baseline: Option<u64>,
    pss_at_baseline: Option<u64>,
    armed: bool,
}

/// Why the rules switch to PSS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switch {
    /// The tree's PSS at the heap baseline: the PSS rules' baseline.
    pub pss_baseline: u64,
    pub pss_growth: u64,
    pub heap_growth: u64,
}

impl PssFallback {
    /// The heap baseline was just taken at `heap`; `pss` when this round read it.
    pub fn arm(&mut self, heap: u64, pss: Option<u64>) {
        self.armed = true;
        self.heap_at_baseline = Some(heap);
        self.pss_at_baseline = pss;
    }

    /// A sample's heap and PSS; `Some` once the PSS grew past `threshold` while the
    /// heap stayed flat.
    pub fn observe(
        &mut self,
        heap: Option<u64>,
        pss: Option<u64>,
        threshold: u64,
    ) -> Option<Switch> {
        if !self.armed {
            return None;
        }
        let (heap, pss) = (heap?, pss?);
        let Some(pss_baseline) = self.pss_at_baseline else {
            // The baseline round read no PSS: this is the first reading after it.
            self.pss_at_baseline = Some(pss);
            self.heap_at_baseline = Some(heap);
            return None;
        };
        let pss_growth = pss.saturating_sub(pss_baseline);
        let heap_growth = heap.saturating_sub(self.heap_at_baseline?);
        (pss_growth >= threshold && heap_growth < pss_growth / 4).then_some(Switch {
            pss_baseline,
            pss_growth,
            heap_growth,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_flat_heap_under_a_growing_pss_switches_and_a_growing_heap_does_not() {
        let mut flat = PssFallback::default();
        assert_eq!(
            flat.observe(Some(10 * MIB), Some(500 * MIB), 32 * MIB),
            None,
            "not armed"
        );
        flat.arm(10 * MIB, None);
        assert_eq!(
            flat.observe(Some(10 * MIB), Some(100 * MIB), 32 * MIB),
            None,
            "PSS baseline"
        );
        assert_eq!(
            flat.observe(Some(11 * MIB), Some(120 * MIB), 32 * MIB),
            None,
            "below threshold"
        );
        assert_eq!(
            flat.observe(Some(12 * MIB), Some(140 * MIB), 32 * MIB),
            Some(Switch {
                pss_baseline: 100 * MIB,
                pss_growth: 40 * MIB,
                heap_growth: 2 * MIB
            })
        );

        let mut heap_leak = PssFallback::default();
        heap_leak.arm(10 * MIB, Some(100 * MIB));
        assert_eq!(
            heap_leak.observe(Some(60 * MIB), Some(160 * MIB), 32 * MIB),
            None
        );
        assert_eq!(
            heap_leak.observe(Some(60 * MIB), None, 32 * MIB),
            None,
            "no PSS this round"
        );
    }

    #[test]
    fn the_threshold_is_half_the_growth_rule_within_bounds() {
        let mut rules = RulesConfig {
            max_memory: None,
            growth: Some(256 * MIB),
            strikes: 3,
            trend_window: std::time::Duration::from_secs(60),
            trend_min_rate: None,
            warmup: std::time::Duration::from_secs(1),
            predict: None,
        };
        assert_eq!(threshold(&rules), 128 * MIB);
        rules.growth = Some(8 * MIB);
        assert_eq!(threshold(&rules), 16 * MIB);
        rules.growth = None;
        assert_eq!(threshold(&rules), 64 * MIB);
    }
}
