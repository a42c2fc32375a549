//! What the watchdog publishes about each slot (tokio `watch`, once per sample): the
//! latest memory figures and the fitted trend of the watched one. The admin API reads
//! it for `/api/v1/workers` and for the figures stored with a manual profile (and, for a
//! pre-fork worker, which of its children that profile is taken in).

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::profiles::ProfileFigures;
use crate::sampler::ProfiledChildren;

/// The latest figures per slot, published by the watchdog (and, flattened into
/// `api_types::WorkerRow`, what `/api/v1/workers` shows).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SlotFigures {
    pub rss_bytes: Option<u64>,
    pub pss_bytes: Option<u64>,
    pub heap_allocated_bytes: Option<u64>,
    pub heap_active_bytes: Option<u64>,
    pub growth_bytes_per_second: Option<f64>,
    pub seconds_to_limit: Option<f64>,
    /// The figure the leak rules watch (`heap_allocated`, `pss`, …).
    pub watched: Option<Cow<'static, str>>,
    /// A pre-fork worker's children a manual profile is taken in (not shown: pids).
    #[serde(skip)]
    pub heap_children: ProfiledChildren,
}

pub type FiguresView = BTreeMap<usize, SlotFigures>;

impl SlotFigures {
    /// The figures a profile taken now is stored with.
    pub fn for_profile(&self) -> ProfileFigures {
        ProfileFigures {
            rss: self.rss_bytes,
            pss: self.pss_bytes,
            heap_allocated: self.heap_allocated_bytes,
            heap_active: self.heap_active_bytes,
            growth_bytes_per_second: self.growth_bytes_per_second,
        }
    }
}
