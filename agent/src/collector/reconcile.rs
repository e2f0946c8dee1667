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
}

/// Per-device reconciliation of the agent's counts with diskstats.
#[derive(Debug, Default)]
pub struct Reconcile {
    devices: HashMap<u32, Device>,
    /// Raw gauge values set aside by the idle resync (`gauge_reset`): the kernel gauge is never
    /// written by userspace (a write would race with the programs' atomic adds), so a stuck
    /// gauge is repaired by remembering its value here.
    offsets: HashMap<u32, i64>,
    /// Gauge decrements the programs made for requests they saw issued again without a
    /// completion (`stale_evicted`: the slow path moves the old entry's depth down), not yet
    /// matched with an unseen completion. The counter is global, so it is matched with whichever
    /// device has a correction; cleared when every reconciled device is idle.
    evicted_pool: u64,
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
    /// `seen` the devices the programs have entries for, `evicted` this interval's
    /// `stale_evicted`. Returns each device's new unseen completions (devices with none left out).
    pub fn update(
        &mut self,
        before: &[DiskStats],
        agent: &HashMap<u32, [u64; OP_COUNT]>,
        seen: &BTreeSet<u32>,
        evicted: u64,
    ) -> BTreeMap<u32, u64> {
        self.evicted_pool = self.evicted_pool.saturating_add(evicted);
        let mut all_idle = true;
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
            all_idle &= in_flight == 0;
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
        let mut ids: Vec<u32> = self.devices.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let d = self.devices.get_mut(&id).expect("listed");
            let m = d.correction.min(self.evicted_pool);
            d.correction -= m;
            self.evicted_pool -= m;
        }
        if all_idle {
            self.evicted_pool = 0;
        }
        out
    }

    /// What to subtract from the device's raw kernel gauge (and its peak): requests it still
    /// counts although the kernel completed them, plus what the idle resync set aside.
    pub fn correction(&self, dev: u32) -> i64 {
        let unseen = self.devices.get(&dev).map_or(0, |d| d.correction as i64);
        unseen + self.offsets.get(&dev).copied().unwrap_or(0)
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
        let new = r.update(&stats(100, 3050, 0), &agent(0, 2999, 0), &seen(), 0);
        assert_eq!(new, BTreeMap::from([(LOOP0, 1)]));
        assert_eq!((r.correction(LOOP0), r.unseen_total(LOOP0)), (1, Some(1)));
        // Nothing new: nothing reported again; the dm device (never seen by the programs) is not
        // reconciled although its diskstats moved without the agent.
        assert!(r.update(&stats(100, 3050, 0), &agent(0, 2999, 0), &seen(), 0).is_empty());
        assert_eq!(r.unseen_total(DM0), Some(0));
    }

    #[test]
    fn completions_after_the_diskstats_read_only_lower_the_estimate() {
        let mut r = Reconcile::default();
        r.baseline(&stats(0, 0, 0), &agent(0, 0, 0));
        // diskstats read first (10 writes), maps later (12: two completed in between), one lost:
        // the estimate is 0 now, never negative ...
        assert!(r.update(&stats(0, 10, 2), &agent(0, 12, 0), &seen(), 0).is_empty());
        // ... and exact once the device is idle: 20 done, 19 recorded.
        assert_eq!(r.update(&stats(0, 20, 0), &agent(0, 19, 0), &seen(), 0)[&LOOP0], 1);
        // The running maximum never goes down when the agent catches up with a busy read.
        assert!(r.update(&stats(0, 25, 3), &agent(0, 28, 0), &seen(), 0).is_empty());
        assert_eq!(r.unseen_total(LOOP0), Some(1));
    }

    #[test]
    fn a_busy_baseline_counts_requests_in_flight_as_done() {
        let mut r = Reconcile::default();
        // 4 requests in flight at the baseline, issued before the agent: their completions are
        // in diskstats but not in the agent's counts, and must not be reported as unseen.
        r.baseline(&stats(0, 10, 4), &agent(0, 0, 0));
        assert!(r.update(&stats(0, 14, 0), &agent(0, 0, 0), &seen(), 0).is_empty());
        assert_eq!(r.update(&stats(0, 20, 0), &agent(0, 5, 0), &seen(), 0)[&LOOP0], 1);
    }

    #[test]
    fn other_ops_and_per_op_bounds_never_over_report() {
        let mut r = Reconcile::default();
        r.baseline(&stats(0, 0, 0), &agent(0, 0, 0));
        // 5 write-zeroes: diskstats writes, the agent's `other`: the device total shows no loss.
        assert!(r.update(&stats(0, 5, 0), &agent(0, 0, 5), &seen(), 0).is_empty());
        // Passthrough requests are only the agent's: they do not hide a read that was missed
        // per op, but the total bound keeps the estimate at what both agree on.
        assert_eq!(r.update(&stats(10, 5, 0), &agent(9, 0, 5), &seen(), 0)[&LOOP0], 1);
    }

    #[test]
    fn evictions_the_programs_counted_down_are_not_corrected_twice() {
        let mut r = Reconcile::default();
        r.baseline(&stats(0, 0, 0), &agent(0, 0, 0));
        // Two unseen completions; the slow path saw one of those requests issued again and
        // already moved its depth down (stale_evicted). The eviction may come first or later.
        r.update(&stats(0, 2, 1), &agent(0, 0, 0), &seen(), 1);
        assert_eq!((r.unseen_total(LOOP0), r.correction(LOOP0)), (Some(2), 1));
        let mut r2 = Reconcile::default();
        r2.baseline(&stats(0, 0, 0), &agent(0, 0, 0));
        r2.update(&stats(0, 2, 1), &agent(0, 0, 0), &seen(), 0);
        r2.update(&stats(0, 2, 1), &agent(0, 0, 0), &seen(), 1);
        assert_eq!(r2.correction(LOOP0), 1);
        r2.gauge_reset(LOOP0, 1);
        assert_eq!((r2.correction(LOOP0), r2.unseen_total(LOOP0)), (1, Some(2)), "the raw gauge set aside");
    }

    #[test]
    fn a_replaced_device_gets_a_new_baseline() {
        let mut r = Reconcile::default();
        r.baseline(&stats(50, 50, 0), &agent(0, 0, 0));
        r.update(&stats(50, 60, 0), &agent(0, 10, 0), &seen(), 0);
        // Set up again: counters restart below the last values.
        assert!(r.needs_baseline(&stats(0, 3, 0)));
        assert!(r.update(&stats(0, 3, 0), &agent(0, 13, 0), &seen(), 0).is_empty());
        r.baseline(&stats(0, 3, 0), &agent(0, 13, 0));
        assert_eq!(r.update(&stats(0, 8, 0), &agent(0, 17, 0), &seen(), 0)[&LOOP0], 1);
    }
}
