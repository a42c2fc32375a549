//! The label values of the agent's metrics, each set a small fixed enum (STYLE: never a
//! pid, a path or a user id). `ALL` lists every value, so zero-initialisation and tests
//! cannot forget one; `as_str` is the label text, which is also the value's JSON form
//! (the API and the profile index serialise these types with the same strings).

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Declares a label enum with its label text per variant, `ALL`, `as_str`, and serde as
/// that text.
macro_rules! label_values {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            pub const ALL: [$name; [$($text),+].len()] = [$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// The value whose label text is `text`.
            pub fn from_label(text: &str) -> Option<$name> {
                $name::ALL.into_iter().find(|v| v.as_str() == text)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<$name, D::Error> {
                let text = String::deserialize(d)?;
                $name::from_label(&text).ok_or_else(|| {
                    let expected: Vec<&str> = $name::ALL.iter().map(|v| v.as_str()).collect();
                    serde::de::Error::custom(format!(
                        "unknown {} {text:?}, expected one of {}",
                        stringify!($name),
                        expected.join(", ")
                    ))
                })
            }
        }
    };
}

label_values! {
    /// Why a worker is being replaced; `reason` of `heapwarden_worker_restarts_total`.
    pub enum RestartReason {
        Exit = "exit",
        Crash = "crash",
        Leak = "leak",
        Unhealthy = "unhealthy",
        Manual = "manual",
        Reload = "reload",
        /// Killed for not being ready within `pool.ready-timeout`.
        ReadyTimeout = "ready_timeout",
    }
}

label_values! {
    /// What a slot is doing; `state` of `heapwarden_worker_state` (a ready slot whose
    /// leak-restart budget is spent shows as [`BUDGET_EXHAUSTED`] instead).
    pub enum SlotState {
        Starting = "starting",
        Ready = "ready",
        Replacing = "replacing",
        Backoff = "backoff",
        Failed = "failed",
        Stopping = "stopping",
    }
}

/// The extra `state` of `heapwarden_worker_state`: not a state of its own (the slot keeps
/// serving), but what alerts page on.
pub const BUDGET_EXHAUSTED: &str = "budget_exhausted";

/// The `worker` label's value for a slot. Each holder of a slot's series makes it once
/// and clones it into every series it registers: the registry keeps each key's labels,
/// and a shared value is one allocation where an owned `String` per series was one each.
pub fn worker(slot: usize) -> std::sync::Arc<str> {
    std::sync::Arc::from(slot.to_string())
}

/// Every `state` value of `heapwarden_worker_state`.
pub fn worker_states() -> impl Iterator<Item = &'static str> {
    SlotState::ALL
        .into_iter()
        .map(SlotState::as_str)
        .chain([BUDGET_EXHAUSTED])
}

label_values! {
    /// A leak rule; `rule` of `heapwarden_leak_detections_total`.
    pub enum Rule {
        MaxMemory = "max_memory",
        Growth = "growth",
        Trend = "trend",
        Predicted = "predicted",
    }
}

label_values! {
    /// Why a profile was taken; `trigger` of `heapwarden_heap_profiles_total`.
    pub enum Trigger {
        Baseline = "baseline",
        Leak = "leak",
        Manual = "manual",
        /// `[export.pyroscope] every`: taken to be pushed, evicted like manual ones.
        Periodic = "periodic",
    }
}

label_values! {
    /// What became of a profile on its way to Pyroscope; `outcome` of
    /// `heapwarden_profile_exports_total`. `retried` counts attempts, the others
    /// profiles (each profile ends in exactly one of them).
    pub enum ExportOutcome {
        Sent = "sent",
        /// A push that failed for now (connection error, timeout, 5xx, 429) and is tried again.
        Retried = "retried",
        /// The sink refused it (4xx other than 429): never retried.
        Rejected = "rejected",
        /// Older than Pyroscope takes (1 h) before it could be sent.
        Expired = "expired",
        /// Failed the agent's own check of Pyroscope's rules (labels, size): never sent.
        Invalid = "invalid",
    }
}

label_values! {
    /// How taking a profile ended; `outcome` of `heapwarden_heap_profiles_total`.
    pub enum ProfileOutcome {
        Written = "written",
        SkippedDiskFull = "skipped_disk_full",
        /// Every stored profile is one retention may not evict (leak profiles and the
        /// newest baselines are kept over manual ones).
        SkippedRetention = "skipped_retention",
        StoreError = "store_error",
        DumpFailed = "dump_failed",
        ConvertFailed = "convert_failed",
        NoProbe = "no_probe",
    }
}

label_values! {
    /// How taking a heap snapshot ended; `outcome` of `heapwarden_heap_snapshots_total`.
    pub enum SnapshotOutcome {
        Written = "written",
        Busy = "busy",
        NoProbe = "no_probe",
        MemoryShort = "memory_short",
        NoFigures = "no_figures",
        SkippedDiskFull = "skipped_disk_full",
        DumpFailed = "dump_failed",
        StoreError = "store_error",
    }
}

label_values! {
    /// `state` of `heapwarden_system_memory_bytes`.
    pub enum MemoryState {
        Total = "total",
        Available = "available",
        Used = "used",
    }
}

label_values! {
    /// `period` of `heapwarden_system_load`.
    pub enum LoadPeriod {
        OneMinute = "1m",
        FiveMinutes = "5m",
        FifteenMinutes = "15m",
    }
}

label_values! {
    /// `window` of `heapwarden_cgroup_memory_pressure`.
    pub enum PressureWindow {
        Avg10 = "avg10",
        Avg60 = "avg60",
    }
}

label_values! {
    /// Why a line of a worker's metrics text was dropped (or, for `WorkerLabel`,
    /// corrected); `reason` of `heapwarden_worker_metrics_rejected_total`.
    pub enum MetricsReject {
        Syntax = "syntax",
        Reserved = "reserved",
        Duplicate = "duplicate",
        Conflict = "conflict",
        TooLarge = "too_large",
        WorkerLabel = "worker_label",
    }
}

label_values! {
    /// Why the admin server closed a connection; `reason` of
    /// `heapwarden_admin_connections_closed_total`.
    pub enum ConnectionClose {
        HeaderTimeout = "header_timeout",
        Idle = "idle",
        /// For a new connection at the cap.
        Evicted = "evicted",
        /// Cap reached and every connection busy.
        Refused = "refused",
    }
}

label_values! {
    /// What grew in a leak detection; `kind` of `heapwarden_leak_suspect_info`.
    pub enum SuspectKind {
        /// The allocator's (or V8's) heap grew: the profile names a function.
        Heap = "heap",
        /// Node: memory outside the JS heap (`external`, array buffers) grew.
        External = "external",
        /// Resident memory grew while the heap stayed flat: fragmentation or memory
        /// outside the allocator (or no heap figures at all).
        NativeRss = "native_rss",
    }
}
