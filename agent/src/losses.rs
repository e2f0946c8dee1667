//! The one table of event kinds the agent counts (losses, and unusual but measured events).
//!
//! Every output reads [`KINDS`]: the JSONL `losses`/`losses_total` objects (key order = table
//! order), the OTLP and Prometheus `blkio.agent.events.{lost,noted}` points, the live view, and
//! the schema test (which checks `docs/snapshot.schema.json` against it). Adding a kind is one row
//! here, plus, for a kernel counter, its `LOSS_*` index in `blkio-agent-common` and the program's
//! increment.

use std::fmt;

use blkio_agent_common as kernel;
use serde::{Deserialize, Deserializer, Serialize, Serializer, de, ser::SerializeMap};

/// Where a kind's count comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// An index into the per-CPU `COUNTERS` element the programs increment.
    Kernel(u32),
    /// The programs' `recursion_misses` (`BPF_OBJ_GET_INFO_BY_FD`).
    ProgramInfo,
    /// Counted by the agent itself (userspace).
    Agent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LossKind {
    /// Key in the JSONL `losses` and `losses_total` objects.
    pub key: &'static str,
    /// Value of the `blkio.event.kind` metric attribute.
    pub label: &'static str,
    /// `true`: an event the agent could not measure (`blkio.agent.events.lost`); `false`: an
    /// unusual but measured one (`blkio.agent.events.noted`).
    pub lost: bool,
    pub source: Source,
    /// Also the description in `docs/snapshot.schema.json`.
    pub description: &'static str,
}

const fn kind(key: &'static str, lost: bool, source: Source, description: &'static str) -> LossKind {
    LossKind { key, label: key, lost, source, description }
}

pub type Kinds = &'static [LossKind];

/// Every kind, in JSONL key order. New kinds go at the end (consumers may rely on the order of
/// the keys they know).
pub const KINDS: &[LossKind] = &[
    kind(
        "start_insert_failed",
        true,
        Source::Kernel(kernel::LOSS_START_INSERT_FAILED),
        "Requests not measured: the in-flight request map was full.",
    ),
    kind(
        "complete_without_start",
        true,
        Source::Kernel(kernel::LOSS_COMPLETE_WITHOUT_START),
        "Completions whose issue was not seen (issued before the agent started, or not stored).",
    ),
    kind(
        "stale_evicted",
        true,
        Source::Kernel(kernel::LOSS_STALE_EVICTED),
        "Tracked requests issued again without completing; the old entry was replaced.",
    ),
    kind(
        "hist_update_failed",
        true,
        Source::Kernel(kernel::LOSS_HIST_UPDATE_FAILED),
        "Completions that could not be added to their histogram (the fallback histogram map was full).",
    ),
    kind(
        "device_map_full",
        true,
        Source::Kernel(kernel::LOSS_DEVICE_MAP_FULL),
        "Depth updates lost because the fallback per-device gauge map was full.",
    ),
    kind(
        "cgroup_map_full",
        true,
        Source::Kernel(kernel::LOSS_CGROUP_MAP_FULL),
        "Completions not attributed to a cgroup because the attribution map was full.",
    ),
    kind(
        "recursion_misses",
        true,
        Source::ProgramInfo,
        "Program runs skipped by the kernel because another BPF program was running on that CPU.",
    ),
    kind(
        "inflight_resync",
        true,
        Source::Agent,
        "In-flight requests dropped from the gauge because sysfs showed the device idle.",
    ),
    kind("write_failures", true, Source::Agent, "JSONL writes that failed (retried; never half-written)."),
    kind("requeued", false, Source::Kernel(kernel::EVENT_REQUEUED), "Not a loss: requests requeued by the driver."),
    kind(
        "partial_completion",
        false,
        Source::Kernel(kernel::EVENT_PARTIAL_COMPLETION),
        "Not a loss: partial completions of a request.",
    ),
    kind(
        "map_read_failures",
        true,
        Source::Agent,
        "Intervals whose kernel maps could not be read; the next snapshot covers them (the kernel's counts are cumulative).",
    ),
    kind(
        "unseen_completions",
        true,
        Source::Agent,
        "Completions the kernel counted (/proc/diskstats) that the agent did not record, reconciled per device; agent total + unseen_completions == diskstats over any span that starts and ends idle.",
    ),
];

/// Agent-side kinds the collector and the run loop count (keys of [`KINDS`]).
pub const INFLIGHT_RESYNC: &str = "inflight_resync";
pub const WRITE_FAILURES: &str = "write_failures";
pub const MAP_READ_FAILURES: &str = "map_read_failures";
pub const UNSEEN_COMPLETIONS: &str = "unseen_completions";

/// One count per kind of a table (normally [`KINDS`]): an interval's deltas or the totals since
/// start. Serialized as a JSON object in table order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Losses {
    kinds: Kinds,
    counts: Vec<u64>,
}

impl Default for Losses {
    fn default() -> Self {
        Losses::zero(KINDS)
    }
}

impl Losses {
    pub fn zero(kinds: Kinds) -> Losses {
        Losses { kinds, counts: vec![0; kinds.len()] }
    }

    pub fn kinds(&self) -> Kinds {
        self.kinds
    }

    fn index(&self, key: &str) -> Option<usize> {
        self.kinds.iter().position(|k| k.key == key)
    }

    /// The count of `key` (0 for a key the table does not have).
    pub fn get(&self, key: &str) -> u64 {
        self.index(key).map_or(0, |i| self.counts[i])
    }

    /// Adds `n` to `key`. Panics on a key that is not in the table: that is a programming error
    /// (every caller names a kind of [`KINDS`]).
    pub fn add(&mut self, key: &str, n: u64) {
        let i = self.index(key).unwrap_or_else(|| panic!("loss kind {key} is not in the table"));
        self.counts[i] = self.counts[i].saturating_add(n);
    }

    /// `self` with `key` set to `n` (fixtures).
    pub fn with(mut self, key: &str, n: u64) -> Losses {
        let i = self.index(key).unwrap_or_else(|| panic!("loss kind {key} is not in the table"));
        self.counts[i] = n;
        self
    }

    /// Adds every count of `other`, kind by kind (by key, so tables may differ in order).
    pub fn add_all(&mut self, other: &Losses) {
        for (k, n) in other.iter() {
            if self.index(k.key).is_some() {
                self.add(k.key, n);
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'static LossKind, u64)> + '_ {
        self.kinds.iter().zip(self.counts.iter().copied())
    }

    /// Sum over the kinds that are losses (not the noted ones).
    pub fn lost(&self) -> u64 {
        self.iter().filter(|(k, _)| k.lost).map(|(_, n)| n).sum()
    }
}

impl Serialize for Losses {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.kinds.len()))?;
        for (k, n) in self.iter() {
            map.serialize_entry(k.key, &n)?;
        }
        map.end()
    }
}

/// Lenient, like the rest of the snapshot on input: keys of [`KINDS`] are read, others (a newer
/// agent's kinds) ignored, missing ones (an older agent's files) are 0.
impl<'de> Deserialize<'de> for Losses {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> de::Visitor<'de> for Visit {
            type Value = Losses;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of loss counters")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Losses, A::Error> {
                let mut out = Losses::default();
                while let Some(key) = map.next_key::<String>()? {
                    match out.index(&key) {
                        Some(i) => out.counts[i] = map.next_value()?,
                        None => {
                            map.next_value::<de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(Visit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique_and_kernel_indices_fit_the_counters() {
        for (i, k) in KINDS.iter().enumerate() {
            assert!(KINDS[i + 1..].iter().all(|o| o.key != k.key && o.label != k.label), "{} twice", k.key);
            if let Source::Kernel(idx) = k.source {
                assert!(idx < kernel::COUNTER_SLOTS, "{} index {idx}", k.key);
                assert!(KINDS.iter().filter(|o| o.source == k.source).count() == 1, "{} index shared", k.key);
            }
        }
        let kernel_kinds = KINDS.iter().filter(|k| matches!(k.source, Source::Kernel(_))).count();
        // The fast-path counters are reported in `agent.path`, not as losses.
        let path_counters = [kernel::EVENT_FAST_COMPLETION, kernel::SELFTEST_AGREE, kernel::SELFTEST_DISAGREE];
        assert!(KINDS.iter().all(|k| path_counters.iter().all(|&p| k.source != Source::Kernel(p))));
        assert_eq!(
            kernel_kinds + path_counters.len(),
            kernel::COUNTER_SLOTS as usize,
            "every kernel counter has a kind or is a path counter"
        );
    }

    #[test]
    fn serializes_in_table_order_and_reads_leniently() {
        let l = Losses::default().with("stale_evicted", 3).with("map_read_failures", 1);
        let text = serde_json::to_string(&l).unwrap();
        assert!(
            text.starts_with(r#"{"start_insert_failed":0,"complete_without_start":0,"stale_evicted":3,"#),
            "{text}"
        );
        assert!(text.ends_with(r#""map_read_failures":1,"unseen_completions":0}"#), "{text}");
        assert_eq!(serde_json::from_str::<Losses>(&text).unwrap(), l);
        let old: Losses = serde_json::from_str(r#"{"stale_evicted":2,"a_future_kind":9}"#).unwrap();
        assert_eq!((old.get("stale_evicted"), old.get("requeued"), old.lost()), (2, 0, 2));
    }
}
