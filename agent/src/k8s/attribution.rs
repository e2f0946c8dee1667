//! Per-pod series with a cardinality bound: the busiest `max` series are kept, everything else is
//! summed into one `cgroup: "other"` series per (device, op), so per-device totals stay exact.

use std::collections::{BTreeMap, HashMap};

use crate::{
    collector::CgroupDelta,
    histogram::HIST_SLOTS,
    interval::{Hist, PodLabels, PodSeries},
    snapshot::PodStats,
};

/// The labels one series is exported with. Deltas that end up with identical labels are one
/// series (for example the containers of a pod when the API is unreachable and only the pod UID
/// is known): two series with the same labels would collide in OTLP and Prometheus.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Labels {
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub pod_uid: Option<String>,
    pub container: Option<String>,
    pub cgroup: Option<String>,
}

/// `cgroup` of the aggregate past the limit.
pub const OTHER: &str = "other";
/// `cgroup` of ids that are in no scanned cgroup (removed before we saw them, or outside the root).
pub const UNKNOWN: &str = "unknown";

#[derive(Clone)]
struct Acc {
    device_name: String,
    count: u64,
    bytes: u64,
    sum_ns: u64,
    slots: [u64; HIST_SLOTS],
}

impl Acc {
    fn new(device_name: &str) -> Self {
        Acc { device_name: device_name.to_string(), count: 0, bytes: 0, sum_ns: 0, slots: [0; HIST_SLOTS] }
    }

    fn add(&mut self, count: u64, bytes: u64, sum_ns: u64, slots: &[u64; HIST_SLOTS]) {
        // Saturating: interval deltas cannot realistically overflow u64, but a panic here would
        // take the agent down over a statistic.
        self.count = self.count.saturating_add(count);
        self.bytes = self.bytes.saturating_add(bytes);
        self.sum_ns = self.sum_ns.saturating_add(sum_ns);
        for (a, b) in self.slots.iter_mut().zip(slots) {
            *a = a.saturating_add(*b);
        }
    }

    fn into_series(self, labels: Labels, device_id: u64, op: &'static str) -> PodSeries {
        let Labels { namespace, pod, pod_uid, container, cgroup } = labels;
        PodSeries {
            labels: PodLabels { namespace, pod, pod_uid, container, cgroup },
            device_id: device_id as u32,
            device_name: self.device_name,
            op,
            count: self.count,
            bytes: self.bytes,
            device_time: Hist::new(self.slots, self.sum_ns),
            // Filled per pod by the caller, which knows the pod's cgroup.
            io_pressure: None,
        }
    }
}

/// Collects one interval's deltas by series, then cuts to the busiest `max`.
#[derive(Default)]
pub struct Aggregator {
    series: HashMap<(Labels, u64, &'static str), Acc>,
}

impl Aggregator {
    pub fn add(&mut self, labels: Labels, d: &CgroupDelta) {
        self.series.entry((labels, u64::from(d.device_id), d.op)).or_insert_with(|| Acc::new(&d.device_name)).add(
            d.count,
            d.bytes,
            d.device_ns,
            &d.device_slots,
        );
    }

    /// The `max` busiest series (by requests, then bytes; ties by labels so output is stable),
    /// busiest first, then one `other` series per (device, op) for the rest.
    pub fn finish(self, max: usize) -> Vec<PodStats> {
        self.finish_series(max).iter().map(PodSeries::stats).collect()
    }

    /// [`Aggregator::finish`] as the interval model's series.
    pub fn finish_series(self, max: usize) -> Vec<PodSeries> {
        let mut ranked: Vec<_> = self.series.into_iter().collect();
        ranked.sort_by(|(ka, a), (kb, b)| b.count.cmp(&a.count).then(b.bytes.cmp(&a.bytes)).then_with(|| ka.cmp(kb)));
        let rest = if ranked.len() > max { ranked.split_off(max) } else { Vec::new() };
        let mut other: BTreeMap<(u64, &'static str), Acc> = BTreeMap::new();
        for ((_, dev, op), acc) in rest {
            other
                .entry((dev, op))
                .or_insert_with(|| Acc::new(&acc.device_name))
                .add(acc.count, acc.bytes, acc.sum_ns, &acc.slots);
        }
        let other_labels = Labels { cgroup: Some(OTHER.to_string()), ..Labels::default() };
        ranked
            .into_iter()
            .map(|((labels, dev, op), acc)| acc.into_series(labels, dev, op))
            .chain(other.into_iter().map(|((dev, op), acc)| acc.into_series(other_labels.clone(), dev, op)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(dev: u32, op: &'static str, count: u64, slot: usize) -> CgroupDelta {
        let mut device_slots = [0; HIST_SLOTS];
        device_slots[slot] = count;
        CgroupDelta {
            cgroup_id: 0,
            device_id: dev,
            device_name: format!("dev{dev}"),
            op,
            count,
            device_ns: count * 1000,
            bytes: count * 4096,
            device_slots,
        }
    }

    fn uid(u: &str) -> Labels {
        Labels { pod_uid: Some(u.into()), ..Labels::default() }
    }

    #[test]
    fn keeps_the_busiest_and_sums_the_rest_exactly() {
        let mut a = Aggregator::default();
        a.add(uid("a"), &delta(1, "read", 50, 3));
        a.add(uid("b"), &delta(1, "read", 30, 4));
        a.add(uid("c"), &delta(1, "read", 20, 5));
        a.add(uid("c"), &delta(1, "write", 7, 6));
        a.add(uid("d"), &delta(2, "read", 5, 7));
        let out = a.finish(2);
        let keys: Vec<_> = out
            .iter()
            .map(|p| (p.pod_uid.as_deref(), p.cgroup.as_deref(), p.device_id, p.op.as_str(), p.count))
            .collect();
        assert_eq!(
            keys,
            vec![
                (Some("a"), None, 1, "read", 50),
                (Some("b"), None, 1, "read", 30),
                (None, Some(OTHER), 1, "read", 20),
                (None, Some(OTHER), 1, "write", 7),
                (None, Some(OTHER), 2, "read", 5),
            ]
        );
        let total: u64 = out.iter().map(|p| p.count).sum();
        assert_eq!(total, 112);
        let other = &out[2];
        assert_eq!((other.bytes, other.device_time.sum_ns, other.device_time.sum_us), (20 * 4096, 20_000, 20.0));
        assert_eq!(other.device_time.buckets.len(), 1);
        assert_eq!((other.device_time.buckets[0].slot, other.device_time.buckets[0].count), (5, 20));
        assert_eq!(other.device_name, "dev1");
    }

    #[test]
    fn identical_labels_merge_into_one_series() {
        let mut a = Aggregator::default();
        a.add(uid("a"), &delta(1, "read", 3, 2));
        a.add(uid("a"), &delta(1, "read", 4, 9));
        let out = a.finish(10);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].count, 7);
        let slots: Vec<_> = out[0].device_time.buckets.iter().map(|b| (b.slot, b.count)).collect();
        assert_eq!(slots, vec![(2, 3), (9, 4)]);
    }

    #[test]
    fn zero_limit_aggregates_everything_and_ties_are_stable() {
        let mut a = Aggregator::default();
        a.add(uid("b"), &delta(1, "read", 5, 1));
        a.add(uid("a"), &delta(1, "read", 5, 1));
        let out = a.finish(0);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].cgroup.as_deref(), out[0].count), (Some(OTHER), 10));
        let mut a = Aggregator::default();
        a.add(uid("b"), &delta(1, "read", 5, 1));
        a.add(uid("a"), &delta(1, "read", 5, 1));
        let out = a.finish(1);
        assert_eq!(out[0].pod_uid.as_deref(), Some("a"), "equal counts and bytes: ordered by labels");
        assert!(Aggregator::default().finish(5).is_empty());
    }
}
