//! Turns the kernel's cumulative maps into the interval model ([`Interval`]).
//!
//! The programs never reset anything: each read is a cumulative total and the interval holds
//! `current - previous`. So an event that lands while the maps are being read is simply counted
//! in the next interval — nothing falls between two reads (unlike iterate-and-delete). The same
//! property makes a failed read harmless: the interval is not built, the failure is counted
//! (`losses.map_read_failures`), and the next one covers both.
//!
//! - [`maps`]: the seam (read and control traits; the aya implementation).
//! - [`read`]: the read path — deltas, dense/fallback merges, naming and filtering.
//! - [`depth`]: a device's depth from its lines per hardware queue, and its peak's bounds.
//! - [`control`]: the control path — dense slots, depth resync, attribution eviction.
//! - [`reconcile`]: completions the kernel counted and the programs did not see (diskstats).

pub mod control;
pub mod depth;
pub mod maps;
pub mod read;
pub mod reconcile;
pub mod settle;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use blkio_agent_common::{CgroupKey, CgroupStats};

pub use self::{
    control::CGROUP_IDLE_EVICT,
    maps::{AyaMaps, MapControl, MapRead},
    read::{CgroupDelta, HistDelta},
};
use self::{
    control::{DenseSlots, Eviction, Resync},
    depth::{Gauge, LineHistory},
    read::{Baselines, op_name, read_all},
    reconcile::{Reconcile, agent_counts},
};
use crate::{
    devices::{DeviceFilter, DeviceNames},
    error::Result,
    interval::{Depth, DeviceInterval, Interval, PathStatus},
    loader::{FastPath, Probes},
    losses::{INFLIGHT_RESYNC, Losses, MAP_READ_FAILURES, UNSEEN_COMPLETIONS, WRITE_FAILURES},
};

/// One interval's result.
pub struct Collected {
    pub interval: Interval,
    /// Per-cgroup deltas for pod attribution (empty when attribution is off).
    pub cgroups: Vec<CgroupDelta>,
    /// Wall time spent reading maps and building the interval.
    pub build_time: Duration,
    /// The `/proc/diskstats` reading the interval was reconciled with (read just before the
    /// maps), for the run loop's busy-time counters: one reading per interval serves both.
    pub diskstats: Option<Vec<crate::devices::DiskStats>>,
}

pub struct Collector<M = AyaMaps> {
    maps: M,
    attach: &'static str,
    epoch: u64,
    base: Baselines,
    slots: DenseSlots,
    resync: Resync,
    reconcile: Reconcile,
    eviction: Eviction,
    /// Depth at the end of the previous interval: the floor of this interval's peak.
    prev_depth: HashMap<u32, u64>,
    /// Each device's queue lines at the previous read: the upper bound of the next peak.
    lines: LineHistory,
    names: DeviceNames,
    filter: DeviceFilter,
    node: String,
    seq: u64,
    /// Start of the interval being counted (end of the last one built).
    last: Instant,
    /// Agent-side counts for the next interval (write failures, failed reads).
    pending: Losses,
    totals: Losses,
    /// The fast path's state; the collector feeds it the flag self-test counts.
    fast: FastPath,
    /// Cumulative fast-path completions and flag disagreements at the last read.
    prev_path: (u64, u64),
}

impl Collector<AyaMaps> {
    /// The collector of loaded programs; `attribute`: read the attribution map too.
    pub fn new(
        probes: Probes,
        names: DeviceNames,
        filter: DeviceFilter,
        node: String,
        attribute: bool,
    ) -> Result<Self> {
        let attach = probes.mode.as_str();
        let fast = probes.fast.clone();
        let mut c = Collector::with_maps(AyaMaps::take(probes, attribute)?, attach, names, filter, node);
        c.fast = fast;
        Ok(c)
    }
}

impl<M: MapRead + MapControl> Collector<M> {
    pub fn with_maps(maps: M, attach: &'static str, names: DeviceNames, filter: DeviceFilter, node: String) -> Self {
        // The reconciliation's baseline: the maps now, then diskstats (in that order, see
        // `reconcile`). If either read fails, the first interval takes it instead.
        let mut reconcile = Reconcile::default();
        if let Ok(raw) = read_all(&maps, &[])
            && let Ok(after) = names.diskstats()
        {
            reconcile.baseline(&after, &agent_counts(&raw.hists));
        }
        Collector {
            maps,
            reconcile,
            attach,
            epoch: 0,
            base: Baselines::default(),
            slots: DenseSlots::default(),
            resync: Resync::default(),
            eviction: Eviction::default(),
            prev_depth: HashMap::new(),
            lines: LineHistory::default(),
            names,
            filter,
            node,
            seq: 0,
            last: Instant::now(),
            pending: Losses::default(),
            totals: Losses::default(),
            fast: FastPath::unavailable(),
            prev_path: (0, 0),
        }
    }

    pub fn attach_mode(&self) -> &'static str {
        self.attach
    }

    /// How long an attribution entry may stay idle before it is evicted (default
    /// [`CGROUP_IDLE_EVICT`]).
    pub fn set_cgroup_idle_evict(&mut self, d: Duration) {
        self.eviction.after = d;
    }

    /// Keys of the kernel's attribution map (empty when attribution is off or unreadable).
    pub fn cgroup_keys(&self) -> Vec<CgroupKey> {
        self.maps.cgroups().map(|v| v.into_iter().map(|(k, _)| k).collect()).unwrap_or_default()
    }

    /// Devices with entries in the kernel's fallback maps (`HISTS`, `INFLIGHT`) now: those
    /// without a dense slot yet, and excluded ones until their entries are reclaimed.
    pub fn fallback_devices(&self) -> Result<BTreeSet<u32>> {
        let hists = self.maps.fallback_hists()?.into_iter().map(|(k, _)| k.dev);
        Ok(hists.chain(self.maps.fallback_inflight()?.into_iter().map(|(d, _)| d)).collect())
    }

    /// Adds failures seen outside the kernel (the writer's) to the next interval's losses.
    pub fn add_write_failures(&mut self, n: u64) {
        self.pending.add(WRITE_FAILURES, n);
    }

    /// Reads every map and builds the interval that just ended. On a failed read nothing is
    /// built and nothing is lost: the failure is counted and the next call covers this interval.
    pub fn collect(&mut self) -> Result<Collected> {
        let work_started = Instant::now();
        // New epoch first: issues from now on raise the other peak slot, so the slot of the
        // interval that just ended is stable while we read it.
        // diskstats before the maps: every completion it counts had its programs run (if at all)
        // before the maps are read, so the reconciliation never claims a seen one.
        let before = self.names.diskstats();
        // The interval's boundary: the maps are read right after (the diskstats read is not
        // part of the interval's measured length, so a slow one does not skew `interval_s`
        // against the snapshot's end time).
        let started = Instant::now();
        let ended_epoch = self.epoch;
        self.epoch += 1;
        let read = self.maps.set_epoch(self.epoch).and_then(|()| read_all(&self.maps, self.slots.devices()));
        let raw = match read {
            Ok(raw) => raw,
            Err(e) => {
                self.pending.add(MAP_READ_FAILURES, 1);
                return Err(e);
            }
        };
        let end_s = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        let interval_s = started.duration_since(self.last).as_secs_f64();
        self.last = started;

        let ops = self.base.hist_deltas(&raw.hists);
        let mut completed: HashMap<u32, u64> = HashMap::new();
        for (&(dev, _), d) in &ops {
            *completed.entry(dev).or_default() += d.count;
        }
        let mut devices = read::devices(&ops, &mut self.names, &self.filter);
        let mut losses = self.base.loss_deltas(&raw.counters, raw.recursion);
        let unseen = self.reconcile_counts(&before, &raw, &mut devices);
        losses.add(UNSEEN_COMPLETIONS, unseen);
        let resynced = self.depths(ended_epoch, &raw.inflight, &completed, &mut devices);
        let cgroups = self.cgroup_deltas(raw.cgroups);
        let path = self.path(&raw.counters);
        losses.add_all(&std::mem::take(&mut self.pending));
        losses.add(INFLIGHT_RESYNC, resynced);
        self.totals.add_all(&losses);

        // Devices seen in the fallback maps get a dense slot: cheaper for the programs from now on.
        // A failure here only keeps devices on the fallback maps: the interval is not lost.
        // Devices the filter excludes are marked so that the programs skip them.
        let (names, filter) = (&mut self.names, &self.filter);
        let wanted = |dev| {
            // A device not named yet is reported by its numbers if the filter allows that name,
            // and is not ignored for good before its real name is known.
            let allowed = filter.allows(&names.name(dev));
            (allowed || names.known(dev).is_some()).then_some(allowed)
        };
        match self.slots.assign(&mut self.maps, &raw.in_fallback, wanted) {
            Ok(done) => {
                for dev in done.dense {
                    tracing::debug!(device = %self.names.name(dev), id = dev, "device given a dense slot");
                }
                for dev in done.ignored {
                    tracing::debug!(device = %self.names.name(dev), id = dev, "device excluded by --devices; the programs skip it");
                }
            }
            Err(e) => tracing::warn!(error = %crate::error::chain(&e), "cannot give devices a dense slot"),
        }

        let interval = Interval {
            end_s,
            interval_s,
            node: self.node.clone(),
            seq: self.seq,
            attach: self.attach,
            devices: devices.into_values().collect(),
            pods: Vec::new(),
            losses,
            losses_total: self.totals.clone(),
            path: Some(path),
            // The run loop adds the node's PSI (crate::pressure), which is not the kernel maps'.
            io_pressure: None,
            // Also the run loop's: /proc/diskstats time counters and the run identity.
            disk_time: Vec::new(),
            run: None,
        };
        self.seq += 1;
        Ok(Collected { interval, cgroups, build_time: work_started.elapsed(), diskstats: before.ok() })
    }

    /// Reconciles the maps' counts with diskstats (`before`: read before the maps); sets each
    /// reconciled device's `unseen` and returns the interval's unseen completions of the
    /// devices the filter keeps.
    fn reconcile_counts(
        &mut self,
        before: &Result<Vec<crate::devices::DiskStats>>,
        raw: &read::Raw,
        devices: &mut BTreeMap<u32, DeviceInterval>,
    ) -> u64 {
        let before = match before {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %crate::error::chain(&e), "cannot read diskstats; completions not reconciled this interval");
                return 0;
            }
        };
        let agent = agent_counts(&raw.hists);
        let seen: std::collections::BTreeSet<u32> =
            raw.hists.keys().map(|k| k.dev).chain(raw.inflight.keys().copied()).collect();
        let evicted: HashMap<u32, u64> = raw.inflight.iter().map(|(&dev, g)| (dev, g.merged.evicted)).collect();
        let new = self.reconcile.update(before, &agent, &seen, &evicted);
        if self.reconcile.needs_baseline(before)
            && let Ok(after) = self.names.diskstats()
        {
            self.reconcile.baseline(&after, &agent);
        }
        let mut total = 0;
        for (&dev, &n) in &new {
            let name = self.names.name(dev);
            if !self.filter.allows(&name) {
                continue;
            }
            total += n;
            tracing::debug!(device = %name, unseen = n, "completions the kernel counted and the programs did not see");
            devices.entry(dev).or_insert_with(|| DeviceInterval {
                id: dev,
                name,
                ops: Vec::new(),
                depth: None,
                unseen: None,
            });
        }
        for (&dev, d) in devices.iter_mut() {
            if self.reconcile.unseen_total(dev).is_some() {
                d.unseen = Some(new.get(&dev).copied().unwrap_or(0));
            }
        }
        total
    }

    /// Feeds the flag self-test (`loader::fastpath`), which may turn the fast path on, and
    /// returns the path in effect with this interval's path counters.
    fn path(&mut self, counters: &maps::Counters) -> PathStatus {
        use blkio_agent_common::{EVENT_FAST_COMPLETION, SELFTEST_AGREE, SELFTEST_DISAGREE};
        let (fast, disagree) = (counters[EVENT_FAST_COMPLETION as usize], counters[SELFTEST_DISAGREE as usize]);
        let (prev_fast, prev_disagree) = std::mem::replace(&mut self.prev_path, (fast, disagree));
        let now = crate::loader::monotonic_ns();
        if let Some(since) = self.fast.update(counters[SELFTEST_AGREE as usize], disagree, now)
            && let Err(e) = self.maps.set_fast_since(since)
        {
            tracing::warn!(error = %crate::error::chain(&e), "cannot turn the fast path on; staying on the start map");
        }
        PathStatus {
            fast: self.fast.state.as_str(),
            flags: self.fast.flags_from.map(|f| f.as_str()),
            fast_completions: fast.wrapping_sub(prev_fast),
            flag_disagreements: disagree.wrapping_sub(prev_disagree),
        }
    }

    /// Depth and peak of every device with a gauge; returns the requests dropped by resyncs.
    fn depths(
        &mut self,
        ended_epoch: u64,
        inflight: &BTreeMap<u32, Gauge>,
        completed: &HashMap<u32, u64>,
        devices: &mut BTreeMap<u32, DeviceInterval>,
    ) -> u64 {
        let slot = (ended_epoch & 1) as usize;
        let mut resynced = 0;
        for (&dev, g) in inflight {
            let name = self.names.name(dev);
            if !self.filter.allows(&name) {
                continue;
            }
            let v = &g.merged;
            // The raw kernel value is below 0 if arming was late (see CONTROL_ARMED_NS), reported
            // as 0, and above the truth by the completions the kernel did not show the programs
            // (README, "Completions the kernel does not show"): those the reconciliation found
            // are subtracted at once, from the depth and from the peak (the peak was raised with
            // at most that many of them still counted, plus those the programs counted down
            // during the interval, so the corrected peak is never above a depth the device had;
            // it can be below by those that happened after it within the interval).
            let correction = self.reconcile.correction(dev);
            let offset = self.reconcile.offset(dev);
            let mut depth = (v.inflight - correction).max(0) as u64;
            let peak_correction = self.reconcile.peak_correction(dev);
            let interval_peak =
                if v.peak_epoch[slot] == ended_epoch { (v.peak[slot] - peak_correction).max(0) as u64 } else { 0 };
            let floor = self.prev_depth.get(&dev).copied().unwrap_or(0);
            let peak = interval_peak.max(floor).max(depth);
            // Requests still counted although completed sit on some line (each line's share is
            // at least 0), so the bound stays above the real peak without them.
            let upper = self.lines.upper(dev, g, ended_epoch).map(|u| (u - correction).max(0) as u64);
            let peak_upper = upper.map_or(peak, |u| u.max(peak));
            let done = completed.get(&dev).copied().unwrap_or(0);
            // The kernel's own count is only needed to judge a gauge that looks stuck (non-zero
            // with nothing completing); reading sysfs for every device every interval would be
            // most of the snapshot's cost on a node with many disks.
            let sysfs = if v.inflight != offset && done == 0 { self.names.sysfs_inflight(&name) } else { None };
            // Only on an idle device. The kernel gauge is not written (that would race with the
            // programs' atomic adds if I/O started right then): its value is set aside instead.
            // Judged on the raw gauge past earlier resyncs, as when the kernel gauge itself was
            // reset: every missed completion whose request stayed counted is counted once in
            // `inflight_resync` (or `stale_evicted`), the kernel matrix checks that sum;
            // `unseen_completions` reconciles the same completions with diskstats.
            if self.resync.stale(dev, v.inflight - offset, sysfs, done) {
                self.reconcile.gauge_reset(dev, v.inflight);
                self.resync.was_reset(dev);
                resynced += (v.inflight - offset).unsigned_abs();
                depth = 0;
                self.lines.forget(dev);
                tracing::warn!(
                    device = dev,
                    gauge = v.inflight,
                    "in-flight depth disagreed with sysfs on an idle device; reset"
                );
            }
            self.prev_depth.insert(dev, depth);
            let entry = devices.entry(dev).or_insert_with(|| DeviceInterval {
                id: dev,
                name,
                ops: Vec::new(),
                depth: None,
                unseen: self.reconcile.unseen_total(dev).map(|_| 0),
            });
            entry.depth = Some(Depth { count: depth, peak, peak_upper, sysfs });
        }
        resynced
    }

    /// One delta per (cgroup, device, op): the shards of a series (`CGROUP_SHARDS`) are taken
    /// apart (each has its own baseline and idle eviction) and summed.
    fn cgroup_deltas(&mut self, entries: Vec<(CgroupKey, CgroupStats)>) -> Vec<CgroupDelta> {
        let now = Instant::now();
        let mut out: BTreeMap<(u64, u32, u16), CgroupDelta> = BTreeMap::new();
        for (key, cur) in entries {
            let Some((count, device_ns, bytes, device_slots)) = self.base.cgroup_delta(key, cur) else {
                if self.eviction.idle(key, now) {
                    let _ = self.maps.remove_cgroup(&key);
                    self.base.cgroups.remove(&key);
                }
                continue;
            };
            self.eviction.active(&key);
            let name = self.names.name(key.dev);
            if !self.filter.allows(&name) {
                continue;
            }
            let d = out.entry((key.cgroup_id, key.dev, key.op)).or_insert_with(|| CgroupDelta {
                cgroup_id: key.cgroup_id,
                device_id: key.dev,
                device_name: name,
                op: op_name(u32::from(key.op)),
                count: 0,
                device_ns: 0,
                bytes: 0,
                device_slots: [0; blkio_agent_common::HIST_SLOTS],
            });
            d.count += count;
            d.device_ns += device_ns;
            d.bytes += bytes;
            for (sum, n) in d.device_slots.iter_mut().zip(device_slots) {
                *sum += n;
            }
        }
        out.into_values().collect()
    }
}
