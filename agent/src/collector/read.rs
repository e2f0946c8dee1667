//! The read path: cumulative kernel values in, exact interval deltas out.
//!
//! Everything of one interval is read first ([`read_all`]) and only then compared with the
//! previous read, so a read that fails half-way changes nothing: the next interval's deltas
//! cover both (the kernel never resets anything).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use blkio_agent_common::{
    CgroupKey, CgroupStats, DeviceInflight as KernelInflight, HIST_SLOTS, HistKey, OP_COUNT, OP_NAMES, OpHist,
};

use super::{
    depth::{Gauge, collapse},
    maps::{Counters, MapRead},
    settle::settle,
};
use crate::{
    devices::{DeviceFilter, DeviceNames},
    error::Result,
    interval::{DeviceInterval, Hist, OpInterval},
    losses::{KINDS, Losses, Source},
};

/// Exact change of one (device, op) over an interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistDelta {
    pub count: u64,
    pub device_ns: u64,
    pub queue_ns: u64,
    pub bytes: u64,
    pub device_slots: [u64; HIST_SLOTS],
    pub queue_slots: [u64; HIST_SLOTS],
    pub size_slots: [u64; HIST_SLOTS],
}

/// I/O of one (cgroup, device, op) over an interval, for pod attribution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupDelta {
    pub cgroup_id: u64,
    pub device_id: u32,
    pub device_name: String,
    pub op: &'static str,
    pub count: u64,
    pub device_ns: u64,
    pub bytes: u64,
    pub device_slots: [u64; HIST_SLOTS],
}

/// `cur - prev` of one (device, op); exact across the wrap of the `u32` slot counters.
pub fn delta(cur: &OpHist, prev: &OpHist) -> HistDelta {
    let slots = |c: &[u32; HIST_SLOTS], p: &[u32; HIST_SLOTS]| -> [u64; HIST_SLOTS] {
        std::array::from_fn(|i| u64::from(c[i].wrapping_sub(p[i])))
    };
    HistDelta {
        count: cur.count.wrapping_sub(prev.count),
        device_ns: cur.device_ns.wrapping_sub(prev.device_ns),
        queue_ns: cur.queue_ns.wrapping_sub(prev.queue_ns),
        bytes: cur.bytes.wrapping_sub(prev.bytes),
        device_slots: slots(&cur.device_slots, &prev.device_slots),
        queue_slots: slots(&cur.queue_slots, &prev.queue_slots),
        size_slots: slots(&cur.size_slots, &prev.size_slots),
    }
}

/// Adds `h` to a running sum. Slots stay wrapped `u32` sums, the way the kernel stores them, so
/// `wrapping_sub` of two sums gives exact deltas.
pub fn add_hist(sum: &mut OpHist, h: &OpHist) {
    sum.count = sum.count.wrapping_add(h.count);
    sum.device_ns = sum.device_ns.wrapping_add(h.device_ns);
    sum.queue_ns = sum.queue_ns.wrapping_add(h.queue_ns);
    sum.bytes = sum.bytes.wrapping_add(h.bytes);
    for i in 0..HIST_SLOTS {
        sum.device_slots[i] = sum.device_slots[i].wrapping_add(h.device_slots[i]);
        sum.queue_slots[i] = sum.queue_slots[i].wrapping_add(h.queue_slots[i]);
        sum.size_slots[i] = sum.size_slots[i].wrapping_add(h.size_slots[i]);
    }
}

/// One device's gauge from its two halves. The depth is their sum: requests issued before the
/// device got its slot were counted up in the fallback entry and are counted down in the dense
/// one. After that moment only the dense entry moves, so its peaks (signed: the dense count
/// starts below zero) were reached while the fallback entry held its current value, which is
/// added back. For each epoch parity the newer epoch wins, and the larger peak on a tie.
pub fn merge_inflight(dense: Option<KernelInflight>, fallback: Option<KernelInflight>) -> KernelInflight {
    let (d, f) = (dense.unwrap_or_default(), fallback.unwrap_or_default());
    let mut out = KernelInflight {
        inflight: d.inflight + f.inflight,
        evicted: d.evicted + f.evicted,
        ..KernelInflight::default()
    };
    for p in 0..2 {
        let dense_peak = d.peak[p] + f.inflight;
        let (epoch, peak) = match d.peak_epoch[p].cmp(&f.peak_epoch[p]) {
            std::cmp::Ordering::Greater => (d.peak_epoch[p], dense_peak),
            std::cmp::Ordering::Less => (f.peak_epoch[p], f.peak[p]),
            std::cmp::Ordering::Equal => (d.peak_epoch[p], dense_peak.max(f.peak[p])),
        };
        out.peak[p] = peak;
        out.peak_epoch[p] = epoch;
    }
    out
}

/// One interval's cumulative kernel values, dense and fallback halves merged.
pub(super) struct Raw {
    pub hists: BTreeMap<HistKey, OpHist>,
    pub inflight: BTreeMap<u32, Gauge>,
    pub cgroups: Vec<(CgroupKey, CgroupStats)>,
    pub counters: Counters,
    pub recursion: u64,
    /// Devices found in the fallback maps: candidates for a dense slot.
    pub in_fallback: BTreeSet<u32>,
}

/// Reads every map. `slots[i]` is the device of dense slot `i`.
pub(super) fn read_all(maps: &impl MapRead, slots: &[u32]) -> Result<Raw> {
    let mut in_fallback = BTreeSet::new();
    let mut hists: BTreeMap<HistKey, OpHist> = BTreeMap::new();
    for (key, h) in settle("HISTS", || maps.fallback_hists())? {
        in_fallback.insert(key.dev);
        add_hist(hists.entry(key).or_insert(OpHist::ZERO), &h.value);
    }
    for (slot, &dev) in slots.iter().enumerate() {
        let mut sums = [OpHist::ZERO; OP_COUNT];
        let per_cpu = || Ok(maps.dense_hists(slot as u32)?.into_iter().enumerate().collect());
        for (_cpu, h) in settle("DENSE_HISTS", per_cpu)? {
            for (sum, h) in sums.iter_mut().zip(&h.value.ops) {
                add_hist(sum, h);
            }
        }
        for (op, sum) in sums.iter().enumerate().filter(|(_, s)| s.count != 0) {
            add_hist(hists.entry(HistKey { dev, op: op as u32 }).or_insert(OpHist::ZERO), sum);
        }
    }
    let mut fallback: BTreeMap<u32, KernelInflight> = BTreeMap::new();
    for (dev, v) in maps.fallback_inflight()? {
        in_fallback.insert(dev);
        fallback.insert(dev, v);
    }
    let mut inflight = BTreeMap::new();
    for (slot, &dev) in slots.iter().enumerate() {
        let dense = maps.dense_inflight(slot as u32)?;
        let f = fallback.remove(&dev);
        let mut lines: Vec<KernelInflight> = dense.lines.iter().map(|l| l.gauge).collect();
        lines.extend(f);
        inflight.insert(dev, Gauge { merged: merge_inflight(Some(collapse(&dense)), f), lines });
    }
    inflight.extend(fallback.into_iter().map(|(dev, f)| (dev, Gauge { merged: f, lines: vec![f] })));
    let mut counters = [0u64; blkio_agent_common::COUNTER_SLOTS as usize];
    for cpu in maps.counters()? {
        for (c, v) in counters.iter_mut().zip(cpu) {
            *c = c.wrapping_add(v);
        }
    }
    let cgroups = settle("CGROUPS", || maps.cgroups())?.into_iter().map(|(k, v)| (k, v.value)).collect();
    Ok(Raw { hists, inflight, cgroups, counters, recursion: maps.recursion_misses(), in_fallback })
}

/// The previous read of every cumulative value.
#[derive(Default)]
pub(super) struct Baselines {
    hists: HashMap<HistKey, OpHist>,
    pub cgroups: HashMap<CgroupKey, CgroupStats>,
    counters: Counters,
    recursion: u64,
}

impl Baselines {
    /// Per (device, op) deltas with completions, in (device, op) order.
    pub fn hist_deltas(&mut self, hists: &BTreeMap<HistKey, OpHist>) -> BTreeMap<(u32, u32), HistDelta> {
        let mut out = BTreeMap::new();
        for (key, cur) in hists {
            let prev = self.hists.get(key).copied().unwrap_or(OpHist::ZERO);
            let d = delta(cur, &prev);
            // Bytes can arrive without a completion (carried when a partly completed request is
            // requeued, `record_carried_bytes` in agent-ebpf/src/state.rs): they stay out of the
            // baseline until the request completes, so every reported op has a count.
            if d.count > 0 {
                self.hists.insert(*key, *cur);
                out.insert((key.dev, key.op), d);
            }
        }
        out
    }

    /// The kernel-side kinds of the table (kernel counters, program info); agent-side kinds are 0.
    pub fn loss_deltas(&mut self, counters: &Counters, recursion: u64) -> Losses {
        let mut l = Losses::zero(KINDS);
        for k in KINDS {
            let n = match k.source {
                Source::Kernel(i) => counters[i as usize].wrapping_sub(self.counters[i as usize]),
                Source::ProgramInfo => recursion.wrapping_sub(self.recursion),
                Source::Agent => 0,
            };
            l.add(k.key, n);
        }
        self.counters = *counters;
        self.recursion = recursion;
        l
    }

    /// `cur - prev` of one attribution entry (`None` without completions), baseline updated.
    pub fn cgroup_delta(&mut self, key: CgroupKey, cur: CgroupStats) -> Option<(u64, u64, u64, [u64; HIST_SLOTS])> {
        let prev = self.cgroups.insert(key, cur).unwrap_or(CgroupStats::ZERO);
        let count = cur.count.wrapping_sub(prev.count);
        (count > 0).then(|| {
            let slots = std::array::from_fn(|i| u64::from(cur.device_slots[i].wrapping_sub(prev.device_slots[i])));
            (count, cur.device_ns.wrapping_sub(prev.device_ns), cur.bytes.wrapping_sub(prev.bytes), slots)
        })
    }
}

/// The op's name (`other` for an index the table does not know).
pub fn op_name(op: u32) -> &'static str {
    OP_NAMES.get(op as usize).copied().unwrap_or("other")
}

/// Named devices with their ops, the filter applied; depth is added by the caller.
pub(super) fn devices(
    ops: &BTreeMap<(u32, u32), HistDelta>,
    names: &mut DeviceNames,
    filter: &DeviceFilter,
) -> BTreeMap<u32, DeviceInterval> {
    let mut out: BTreeMap<u32, DeviceInterval> = BTreeMap::new();
    for (&(dev, op), d) in ops {
        let name = names.name(dev);
        if !filter.allows(&name) {
            continue;
        }
        let entry = out.entry(dev).or_insert_with(|| DeviceInterval {
            id: dev,
            name,
            ops: Vec::new(),
            depth: None,
            unseen: None,
        });
        entry.ops.push(OpInterval {
            op: op_name(op),
            count: d.count,
            bytes: d.bytes,
            device_time: Hist::new(d.device_slots, d.device_ns),
            queue_time: Hist::new(d.queue_slots, d.queue_ns),
            size: Hist::new(d.size_slots, d.bytes),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauge(inflight: i64, peak: [i64; 2], peak_epoch: [u64; 2]) -> KernelInflight {
        KernelInflight { inflight, peak, peak_epoch, evicted: 0 }
    }

    #[test]
    fn deltas_survive_u32_slot_wraparound() {
        let mut prev = OpHist::ZERO;
        prev.count = 10;
        prev.device_slots[3] = u32::MAX - 1;
        let mut cur = prev;
        cur.count = 15;
        cur.device_slots[3] = 3; // wrapped: +5
        let d = delta(&cur, &prev);
        assert_eq!(d.count, 5);
        assert_eq!(d.device_slots[3], 5);
        assert_eq!(d.device_slots.iter().sum::<u64>(), d.count);
    }

    #[test]
    fn carried_bytes_wait_for_their_completion() {
        let key = HistKey { dev: 7, op: 0 };
        let mut base = Baselines::default();
        let mut h = OpHist::ZERO;
        h.count = 2;
        h.bytes = 8192;
        h.size_slots[12] = 2;
        assert_eq!(base.hist_deltas(&BTreeMap::from([(key, h)]))[&(7, 0)].bytes, 8192);
        // A requeue carried 2048 bytes of a request that has not completed yet: no op reported...
        h.bytes += 2048;
        assert!(base.hist_deltas(&BTreeMap::from([(key, h)])).is_empty());
        // ...and its completion (the other 2048 bytes) reports all 4096 with it.
        h.count += 1;
        h.bytes += 2048;
        h.size_slots[11] += 1;
        let deltas = base.hist_deltas(&BTreeMap::from([(key, h)]));
        assert_eq!((deltas[&(7, 0)].count, deltas[&(7, 0)].bytes), (1, 4096));
        assert!(base.hist_deltas(&BTreeMap::from([(key, h)])).is_empty());
    }

    #[test]
    fn depth_is_the_sum_and_dense_peaks_get_the_fallback_offset() {
        // 3 requests issued through the fallback before the slot existed; 2 of them completed
        // through the dense entry, and later the dense entry peaked at 4 in epoch 5.
        let m = merge_inflight(Some(gauge(-2 + 4, [4, 0], [5, 0])), Some(gauge(3, [3, 0], [4, 0])));
        assert_eq!(m.inflight, 5);
        assert_eq!((m.peak[0], m.peak_epoch[0]), (7, 5), "dense peak 4 while the fallback still held 3");
    }

    #[test]
    fn dense_peaks_below_zero_still_count() {
        // 16 requests in flight through the fallback when the slot was given; in epoch 8 the
        // true depth rose to 20 while the dense entry went from -16 up to +4, and in epoch 9 it
        // only reached 14 (dense -2): both are real peaks.
        let m = merge_inflight(Some(gauge(-16, [4, -2], [8, 9])), Some(gauge(16, [16, 0], [3, 0])));
        assert_eq!(m.inflight, 0);
        assert_eq!((m.peak[0], m.peak_epoch[0]), (20, 8));
        assert_eq!((m.peak[1], m.peak_epoch[1]), (14, 9));
    }

    #[test]
    fn the_newer_epoch_wins_and_ties_take_the_larger_peak() {
        let m = merge_inflight(Some(gauge(0, [2, 9], [6, 3])), Some(gauge(0, [5, 1], [4, 3])));
        assert_eq!((m.peak[0], m.peak_epoch[0]), (2, 6));
        assert_eq!((m.peak[1], m.peak_epoch[1]), (9, 3));
        let only_fallback = merge_inflight(None, Some(gauge(4, [6, 0], [2, 0])));
        assert_eq!((only_fallback.inflight, only_fallback.peak[0], only_fallback.peak_epoch[0]), (4, 6, 2));
        let only_dense = merge_inflight(Some(gauge(1, [0, 3], [0, 7])), None);
        assert_eq!((only_dense.inflight, only_dense.peak[1], only_dense.peak_epoch[1]), (1, 3, 7));
    }

    #[test]
    fn sums_wrap_like_the_kernel() {
        let mut a = OpHist::ZERO;
        a.count = 1;
        a.device_slots[3] = u32::MAX;
        let mut b = OpHist::ZERO;
        b.count = 2;
        b.device_slots[3] = 2;
        let mut sum = OpHist::ZERO;
        add_hist(&mut sum, &a);
        add_hist(&mut sum, &b);
        assert_eq!(sum.count, 3);
        assert_eq!(sum.device_slots[3], 1);
    }
}
