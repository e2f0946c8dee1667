//! Reconciliation with the kernel's own completion counts (`/proc/diskstats`).
//!
//! Some kernels sometimes complete a request without running the BPF programs attached to
//! `block_rq_complete` (this VM's 6.18: about 1 in 50k under load, sometimes in batches; ftrace
//! sees those completions, biolatency loses the same ones, `recursion_misses` stays 0). Such a
//! completion is missing from the histograms and its request stays counted in the depth gauge.
//! The kernel's `diskstats` count it all the same, so per device
//!
//! `unseen = kernel completed - agent recorded` (since a common baseline)
//!
//! is what the agent missed, whatever the reason. It is reported as `unseen_completions` (per
//! interval, in `losses_total`, and per device), so that `agent total + unseen == diskstats
//! delta` over any span that starts and ends idle, and the part the programs did not count
//! down themselves is subtracted from the depth gauge at once ([`Reconcile::correction`]).
//!
//! Why the estimate never claims a completion that was seen:
//! - diskstats is read *before* the maps. The completion tracepoint fires in
//!   `blk_update_request()`, before `__blk_mq_end_request()` accounts the request
//!   (`blk_account_io_done`), so every completion diskstats shows at the read had its programs
//!   run (if at all) before the maps were read: `kernel - agent` is at most the real number
//!   unseen at that instant. Later completions make the agent's side larger, never smaller.
//!   <https://elixir.bootlin.com/linux/v6.18/source/block/blk-mq.c> (`blk_mq_end_request`)
//! - The true count only grows, so the running maximum of these lower bounds is one too; it is
//!   exact whenever the device is idle at the read.
//! - The baseline is taken right *after* a read of the maps: `kernel0 = diskstats + in_flight`.
//!   Requests in flight then may or may not be counted by the agent (issued before the programs
//!   were armed, or after); counting all of them as already done can only lower the estimate.
//!   On an idle device (the usual start) `in_flight` is 0 and the baseline is exact.
//! - Per op the agent's and the kernel's classes can differ (write-zeroes and some zone ops are
//!   `other` for the agent and writes or reads for diskstats; passthrough requests are only the
//!   agent's). The estimate is the smaller of the per-op sum (read, write, discard, flush, each
//!   floored at 0) and the device total (all the agent's ops against all of diskstats'): a
//!   misclassification lowers one of the two, and it takes both to be wrong to over-report.
//! - Only devices the programs have seen are reconciled: bio-based devices (device-mapper, md,
//!   zram, NVMe multipath heads) are in diskstats but never reach the request tracepoints.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use blkio_agent_common::{HistKey, OP_COUNT, OP_DISCARD, OP_FLUSH, OP_READ, OP_WRITE, OpHist};

use crate::devices::{DiskStats, device_id};

/// diskstats' op groups, in the order [`kernel_counts`] returns them, and the agent op of each.
const GROUP_OPS: [u32; 4] = [OP_READ, OP_WRITE, OP_DISCARD, OP_FLUSH];

/// A device's completed counts per diskstats group (read, write, discard, flush; 0 where the
/// kernel has no such field) and its in-flight count.
fn kernel_counts(s: &DiskStats) -> ([u64; 4], u64) {
    let groups =
        [s.reads_completed, s.writes_completed, s.discards_completed.unwrap_or(0), s.flushes_completed.unwrap_or(0)];
    (groups, s.in_flight)
}

/// The agent's cumulative completion count per device and op, from one read of the maps.
pub fn agent_counts(hists: &BTreeMap<HistKey, OpHist>) -> HashMap<u32, [u64; OP_COUNT]> {
    let mut out: HashMap<u32, [u64; OP_COUNT]> = HashMap::new();
    for (k, h) in hists {
        if let Some(c) = out.entry(k.dev).or_default().get_mut(k.op as usize) {
            *c = c.wrapping_add(h.count);
        }
    }
    out
}

/// One device's reconciliation state.
#[derive(Debug, Clone, Default)]
struct Device {
    /// diskstats at the baseline, in-flight requests counted as done (see the module doc).
    kernel0: [u64; 4],
    /// The agent's counts at the baseline.
    agent0: [u64; OP_COUNT],
    /// The last diskstats counts (to notice a device whose counters went backwards: replaced).
    last_kernel: [u64; 4],
    /// Running maximum of the lower bound: completions the agent missed since the baseline.
    unseen: u64,
    /// Of those, the ones still counted in the depth gauge.
    correction: u64,
    /// Requests the programs counted down themselves during the last interval (their
    /// completion unseen): they left the raw gauge then, maybe after its peak was raised.
    left: u64,
}

/// Per-device reconciliation of the agent's counts with diskstats.
#[derive(Debug, Default)]
pub struct Reconcile {
    devices: HashMap<u32, Device>,
    /// Raw gauge values set aside by the idle resync (`gauge_reset`): the kernel gauge is never
    /// written by userspace (a write would race with the programs' atomic adds), so a stuck
    /// gauge is repaired by remembering its value here.
    offsets: HashMap<u32, i64>,
    /// Per device, gauge decrements the programs made for requests they saw issued again while
    /// still counted in flight (the slow path's stale entries, the fast path's outstanding
    /// marks: `DeviceInflight::evicted`), not yet matched with an unseen completion; cleared
    /// when the device is idle.
    evicted_pool: HashMap<u32, u64>,
    /// The programs' cumulative `evicted` of each device at the last update.
    evicted_seen: HashMap<u32, u64>,
}

impl Reconcile {
    /// Whether some device in `stats` has no baseline (new, or its counters went backwards):
    /// the caller then reads diskstats again after the maps and calls [`Reconcile::baseline`].
    pub fn needs_baseline(&self, stats: &[DiskStats]) -> bool {
        stats.iter().any(|s| match self.devices.get(&device_id(s.major, s.minor)) {
            None => true,
            Some(d) => backwards(&d.last_kernel, &kernel_counts(s).0),
        })
    }

    /// Takes the baseline of every device of `after` (diskstats read after the maps) that has
    /// none, or whose counters went backwards; `agent` is the maps' read just before.
    pub fn baseline(&mut self, after: &[DiskStats], agent: &HashMap<u32, [u64; OP_COUNT]>) {
        for s in after {
            let id = device_id(s.major, s.minor);
            let (groups, in_flight) = kernel_counts(s);
            if self.devices.get(&id).is_some_and(|d| !backwards(&d.last_kernel, &groups)) {
                continue;
            }
            let kernel0 = groups.map(|g| g.saturating_add(in_flight));
            let agent0 = agent.get(&id).copied().unwrap_or_default();
            self.devices.insert(id, Device { kernel0, agent0, last_kernel: groups, ..Device::default() });
        }
    }

    /// One interval: `before` is diskstats read before the maps, `agent` the maps' counts,
    /// `seen` the devices the programs have entries for, `evicted` the programs' cumulative
    /// `DeviceInflight::evicted` per device. Returns each device's new unseen completions
    /// (devices with none left out).
    pub fn update(
        &mut self,
        before: &[DiskStats],
        agent: &HashMap<u32, [u64; OP_COUNT]>,
        seen: &BTreeSet<u32>,
        evicted: &HashMap<u32, u64>,
    ) -> BTreeMap<u32, u64> {
        for d in self.devices.values_mut() {
            d.left = 0;
        }
        for (&dev, &n) in evicted {
            let prev = self.evicted_seen.insert(dev, n).unwrap_or(0);
            let new = n.wrapping_sub(prev);
            if let Some(d) = self.devices.get_mut(&dev) {
                d.left = new;
            }
            if new > 0 {
                tracing::debug!(
                    device = dev,
                    counted_down = new,
                    "requests the programs saw issued again while still counted in flight"
                );
            }
            *self.evicted_pool.entry(dev).or_default() += new;
        }
        let mut idle = BTreeSet::new();
        let mut out = BTreeMap::new();
        for s in before {
            let id = device_id(s.major, s.minor);
            let Some(d) = self.devices.get_mut(&id) else { continue };
            let (groups, in_flight) = kernel_counts(s);
            if backwards(&d.last_kernel, &groups) {
                continue; // re-baselined by the caller
            }
            d.last_kernel = groups;
            if !seen.contains(&id) {
                continue;
            }
            if in_flight == 0 {
                idle.insert(id);
            }
            let a = agent.get(&id).copied().unwrap_or_default();
            let agent_op = |op: u32| a[op as usize].wrapping_sub(d.agent0[op as usize]);
            let mut per_op = 0u64;
            let mut kernel_total = 0u64;
            for (i, &op) in GROUP_OPS.iter().enumerate() {
                let k = groups[i].saturating_sub(d.kernel0[i]);
                kernel_total += k;
                per_op += k.saturating_sub(agent_op(op));
            }
            let agent_total: u64 = (0..OP_COUNT as u32).map(agent_op).sum();
            let estimate = per_op.min(kernel_total.saturating_sub(agent_total));
            if estimate > d.unseen {
                let new = estimate - d.unseen;
                d.unseen = estimate;
                d.correction += new;
                out.insert(id, new);
            }
        }
        // Decrements the programs already made are not corrected twice.
        for (id, pool) in &mut self.evicted_pool {
            if let Some(d) = self.devices.get_mut(id) {
                let m = d.correction.min(*pool);
                d.correction -= m;
                *pool -= m;
            }
            if idle.contains(id) {
                *pool = 0;
            }
        }
        out
    }

    /// What to subtract from the device's raw kernel gauge (and its peak): requests it still
    /// counts although the kernel completed them, plus what the idle resync set aside.
    pub fn correction(&self, dev: u32) -> i64 {
        let unseen = self.devices.get(&dev).map_or(0, |d| d.correction as i64);
        unseen + self.offsets.get(&dev).copied().unwrap_or(0)
    }

    /// What to subtract from the device's raw peak of the last interval: the [`correction`]
    /// (unseen completions still counted) plus the requests the programs counted down themselves
    /// during it (still counted until then, maybe when the peak was raised). So the peak is never
    /// raised by a completion known to be unseen; it can be below the real one by those that
    /// left the gauge before the peak (the caller floors it at the depths at both ends).
    ///
    /// [`correction`]: Reconcile::correction
    pub fn peak_correction(&self, dev: u32) -> i64 {
        self.correction(dev) + self.devices.get(&dev).map_or(0, |d| d.left as i64)
    }

    /// What the idle resyncs set aside from the device's raw gauge so far.
    pub fn offset(&self, dev: u32) -> i64 {
        self.offsets.get(&dev).copied().unwrap_or(0)
    }

    /// The idle resync: the device is idle, so its whole raw gauge (`raw`) is set aside; nothing
    /// the reconciliation found is left to correct on top.
    pub fn gauge_reset(&mut self, dev: u32, raw: i64) {
        if let Some(d) = self.devices.get_mut(&dev) {
            d.correction = 0;
        }
        self.offsets.insert(dev, raw);
    }

    /// Completions the agent missed on `dev` since its baseline (`None`: not reconciled).
    pub fn unseen_total(&self, dev: u32) -> Option<u64> {
        self.devices.get(&dev).map(|d| d.unseen)
    }
}

/// Some group's count went down: the device was replaced (a loop device set up again, a
/// hot-plugged disk with the same number).
fn backwards(last: &[u64; 4], now: &[u64; 4]) -> bool {
    last.iter().zip(now).any(|(l, n)| n < l)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::parse_diskstats;

    const LOOP0: u32 = 7 << 20;
    const DM0: u32 = 253 << 20;

    /// diskstats with loop0 at `r` reads, `w` writes, `inflight` in flight, and a dm device.
    fn stats(r: u64, w: u64, inflight: u64) -> Vec<DiskStats> {
        parse_diskstats(&format!(
            "   7       0 loop0 {r} 0 0 0 {w} 0 0 0 {inflight} 0 0 0 0 0 0 0 0\n \
             253       0 dm-0 {r} 0 0 0 {w} 0 0 0 0 0 0 0 0 0 0 0 0\n"
        ))
    }

    fn agent(r: u64, w: u64, other: u64) -> HashMap<u32, [u64; OP_COUNT]> {
        let mut c = [0; OP_COUNT];
        c[OP_READ as usize] = r;
        c[OP_WRITE as usize] = w;
        c[blkio_agent_common::OP_OTHER as usize] = other;
        HashMap::from([(LOOP0, c)])
    }

    fn seen() -> BTreeSet<u32> {
        BTreeSet::from([LOOP0])
    }

    #[test]
    fn unseen_is_kernel_minus_agent_from_the_baseline() {
        let mut r = Reconcile::default();
        // Before the agent: 100 reads, 50 writes; the agent's maps hold nothing yet.
        assert!(r.needs_baseline(&stats(100, 50, 0)));
        r.baseline(&stats(100, 50, 0), &agent(0, 0, 0));
        assert!(!r.needs_baseline(&stats(100, 50, 0)));
        // 3000 writes done, the agent recorded 2999: one unseen, and the gauge still counts it.
        let new = r.update(&stats(100, 3050, 0), &agent(0, 2999, 0), &seen(), &evicted(0));
        assert_eq!(new, BTreeMap::from([(LOOP0, 1)]));
        assert_eq!((r.correction(LOOP0), r.unseen_total(LOOP0)), (1, Some(1)));
        // Nothing new: nothing reported again; the dm device (never seen by the programs) is not
        // reconciled although its diskstats moved without the agent.
        assert!(r.update(&stats(100, 3050, 0), &agent(0, 2999, 0), &seen(), &evicted(0)).is_empty());
        assert_eq!(r.unseen_total(DM0), Some(0));
    }

    #[test]
    fn completions_after_the_diskstats_read_only_lower_the_estimate() {
        let mut r = Reconcile::default();
        r.baseline(&stats(0, 0, 0), &agent(0, 0, 0));
        // diskstats read first (10 writes), maps later (12: two completed in between), one lost:
        // the estimate is 0 now, never negative ...
        assert!(r.update(&stats(0, 10, 2), &agent(0, 12, 0), &seen(), &evicted(0)).is_empty());
        // ... and exact once the device is idle: 20 done, 19 recorded.
        assert_eq!(r.update(&stats(0, 20, 0), &agent(0, 19, 0), &seen(), &evicted(0))[&LOOP0], 1);
        // The running maximum never goes down when the agent catches up with a busy read.
        assert!(r.update(&stats(0, 25, 3), &agent(0, 28, 0), &seen(), &evicted(0)).is_empty());
        assert_eq!(r.unseen_total(LOOP0), Some(1));
    }

    #[test]
    fn a_busy_baseline_counts_requests_in_flight_as_done() {
        let mut r = Reconcile::default();
        // 4 requests in flight at the baseline, issued before the agent: their completions are
        // in diskstats but not in the agent's counts, and must not be reported as unseen.
        r.baseline(&stats(0, 10, 4), &agent(0, 0, 0));
        assert!(r.update(&stats(0, 14, 0), &agent(0, 0, 0), &seen(), &evicted(0)).is_empty());
        assert_eq!(r.update(&stats(0, 20, 0), &agent(0, 5, 0), &seen(), &evicted(0))[&LOOP0], 1);
    }

    #[test]
    fn other_ops_and_per_op_bounds_never_over_report() {
        let mut r = Reconcile::default();
        r.baseline(&stats(0, 0, 0), &agent(0, 0, 0));
        // 5 write-zeroes: diskstats writes, the agent's `other`: the device total shows no loss.
        assert!(r.update(&stats(0, 5, 0), &agent(0, 0, 5), &seen(), &evicted(0)).is_empty());
        // Passthrough requests are only the agent's: they do not hide a read that was missed
        // per op, but the total bound keeps the estimate at what both agree on.
        assert_eq!(r.update(&stats(10, 5, 0), &agent(9, 0, 5), &seen(), &evicted(0))[&LOOP0], 1);
    }

    #[test]
    fn one_device_s_evictions_do_not_cancel_another_s_correction() {
        const LOOP1: u32 = (7 << 20) | 1;
        let two = |w0: u64, w1: u64, inflight: u64| {
            parse_diskstats(&format!(
                "   7       0 loop0 0 0 0 0 {w0} 0 0 0 {inflight} 0 0 0 0 0 0 0 0\n   7       1 loop1 0 0 0 0 {w1} 0 0 0 \
                 {inflight} 0 0 0 0 0 0 0 0\n"
            ))
        };
        let none = HashMap::from([(LOOP0, [0; OP_COUNT]), (LOOP1, [0; OP_COUNT])]);
        let mut r = Reconcile::default();
        r.baseline(&two(0, 0, 0), &none);
        let both = BTreeSet::from([LOOP0, LOOP1]);
        // loop0 lost a completion nobody counted down; loop1's programs counted one down that
        // the reconciliation has not found yet (it comes in the next update).
        let new = r.update(&two(1, 0, 1), &none, &both, &HashMap::from([(LOOP1, 1)]));
        assert_eq!(new.get(&LOOP0), Some(&1));
        assert_eq!((r.correction(LOOP0), r.correction(LOOP1)), (1, 0));
        r.update(&two(1, 1, 1), &none, &both, &HashMap::from([(LOOP1, 1)]));
        assert_eq!((r.correction(LOOP0), r.correction(LOOP1)), (1, 0), "loop1's unseen was counted down already");
        assert_eq!((r.unseen_total(LOOP0), r.unseen_total(LOOP1)), (Some(1), Some(1)));
    }

    /// The programs' cumulative `evicted` count of loop0.
    fn evicted(n: u64) -> HashMap<u32, u64> {
        HashMap::from([(LOOP0, n)])
    }

    #[test]
    fn evictions_the_programs_counted_down_are_not_corrected_twice() {
        let mut r = Reconcile::default();
        r.baseline(&stats(0, 0, 0), &agent(0, 0, 0));
        // Two unseen completions; the programs saw one of those requests issued again and
        // already moved its depth down. The eviction may come first or later.
        r.update(&stats(0, 2, 1), &agent(0, 0, 0), &seen(), &evicted(1));
        assert_eq!((r.unseen_total(LOOP0), r.correction(LOOP0)), (Some(2), 1));
        let mut r2 = Reconcile::default();
        r2.baseline(&stats(0, 0, 0), &agent(0, 0, 0));
        r2.update(&stats(0, 2, 1), &agent(0, 0, 0), &seen(), &evicted(0));
        r2.update(&stats(0, 2, 1), &agent(0, 0, 0), &seen(), &evicted(1));
        assert_eq!(r2.correction(LOOP0), 1);
        assert_eq!(r2.peak_correction(LOOP0), 2, "the decrement came during the interval, maybe after its peak");
        r2.update(&stats(0, 2, 1), &agent(0, 0, 0), &seen(), &evicted(1));
        assert_eq!((r2.correction(LOOP0), r2.peak_correction(LOOP0)), (1, 1), "for that interval only");
        // A decrement before the reconciliation finds its completion: the peak of its interval
        // is corrected for it all the same.
        let mut r3 = Reconcile::default();
        r3.baseline(&stats(0, 0, 0), &agent(0, 0, 0));
        r3.update(&stats(0, 0, 1), &agent(0, 0, 0), &seen(), &evicted(1));
        assert_eq!((r3.correction(LOOP0), r3.peak_correction(LOOP0)), (0, 1));
        r3.update(&stats(0, 1, 1), &agent(0, 0, 0), &seen(), &evicted(1));
        assert_eq!((r3.correction(LOOP0), r3.peak_correction(LOOP0), r3.unseen_total(LOOP0)), (0, 0, Some(1)));
        r2.gauge_reset(LOOP0, 1);
        assert_eq!((r2.correction(LOOP0), r2.unseen_total(LOOP0)), (1, Some(2)), "the raw gauge set aside");
    }

    #[test]
    fn a_replaced_device_gets_a_new_baseline() {
        let mut r = Reconcile::default();
        r.baseline(&stats(50, 50, 0), &agent(0, 0, 0));
        r.update(&stats(50, 60, 0), &agent(0, 10, 0), &seen(), &evicted(0));
        // Set up again: counters restart below the last values.
        assert!(r.needs_baseline(&stats(0, 3, 0)));
        assert!(r.update(&stats(0, 3, 0), &agent(0, 13, 0), &seen(), &evicted(0)).is_empty());
        r.baseline(&stats(0, 3, 0), &agent(0, 13, 0));
        assert_eq!(r.update(&stats(0, 8, 0), &agent(0, 17, 0), &seen(), &evicted(0))[&LOOP0], 1);
    }
}
