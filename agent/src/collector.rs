//! Turns the kernel's cumulative maps into interval snapshots.
//!
//! The programs never reset anything: each read here is a cumulative total and the snapshot
//! holds `current - previous`. So an event that lands while the maps are being read is simply
//! counted in the next interval — nothing falls between two reads (unlike iterate-and-delete).

use std::{
    collections::{BTreeMap, HashMap},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray};
use blkio_agent_common::{
    CONTROL_EPOCH, COUNTER_SLOTS, CgroupKey, CgroupStats, DeviceInflight as KernelInflight, HIST_SLOTS, HistKey,
    OP_NAMES, OpHist,
};

use crate::{
    device_maps::{DeviceMaps, map_err, take},
    devices::{DeviceFilter, DeviceNames},
    error::Result,
    loader::{Probes, program_stats},
    snapshot::{
        AgentInfo, DeviceHistogram, DeviceInflight, Losses, OpStats, SCHEMA_VERSION, SizeHistogram, Snapshot,
        TimeHistogram, buckets_from_slots, iso_timestamp,
    },
};

/// Attribution entries without I/O for this long are evicted from the kernel map.
pub const CGROUP_IDLE_EVICT: std::time::Duration = std::time::Duration::from_secs(600);

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

fn delta(cur: &OpHist, prev: &OpHist) -> HistDelta {
    let slots = |c: &[u32; HIST_SLOTS], p: &[u32; HIST_SLOTS]| {
        let mut out = [0u64; HIST_SLOTS];
        for i in 0..HIST_SLOTS {
            out[i] = u64::from(c[i].wrapping_sub(p[i]));
        }
        out
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

/// One interval's result.
pub struct Collected {
    pub snapshot: Snapshot,
    pub cgroups: Vec<CgroupDelta>,
    /// Wall time spent reading maps and building the snapshot.
    pub build_time: std::time::Duration,
}

pub struct Collector {
    probes: Probes,
    devices: DeviceMaps,
    cgroups: Option<BpfHashMap<MapData, CgroupKey, CgroupStats>>,
    counters: PerCpuArray<MapData, [u64; COUNTER_SLOTS as usize]>,
    control: Array<MapData, u64>,
    epoch: u64,
    prev_hists: HashMap<HistKey, OpHist>,
    prev_cgroups: HashMap<CgroupKey, CgroupStats>,
    /// When each (cgroup, device, op) entry last stopped changing.
    cgroup_idle_since: HashMap<CgroupKey, Instant>,
    cgroup_idle_evict: std::time::Duration,
    prev_counters: [u64; COUNTER_SLOTS as usize],
    prev_recursion: u64,
    totals: Losses,
    /// Depth at the end of the previous interval: the floor of this interval's peak.
    prev_depth: HashMap<u32, u64>,
    /// Consecutive idle intervals in which our depth disagreed with sysfs.
    drift: HashMap<u32, u32>,
    /// Raw kernel gauge at the previous read.
    prev_raw: HashMap<u32, i64>,
    names: DeviceNames,
    filter: DeviceFilter,
    node: String,
    seq: u64,
    last: Instant,
    pending_resync: u64,
    pending_write_failures: u64,
}

impl Collector {
    pub fn new(
        mut probes: Probes,
        names: DeviceNames,
        filter: DeviceFilter,
        node: String,
        attribute: bool,
    ) -> Result<Self> {
        let devices = DeviceMaps::take(&mut probes)?;
        let cgroups = if attribute { Some(take(&mut probes, "CGROUPS")?) } else { None };
        let counters = take(&mut probes, "COUNTERS")?;
        let control = take(&mut probes, "CONTROL")?;
        Ok(Collector {
            probes,
            devices,
            cgroups,
            counters,
            control,
            epoch: 0,
            prev_hists: HashMap::new(),
            prev_cgroups: HashMap::new(),
            cgroup_idle_since: HashMap::new(),
            cgroup_idle_evict: CGROUP_IDLE_EVICT,
            prev_counters: [0; COUNTER_SLOTS as usize],
            prev_recursion: 0,
            totals: Losses::default(),
            prev_depth: HashMap::new(),
            drift: HashMap::new(),
            prev_raw: HashMap::new(),
            names,
            filter,
            node,
            seq: 0,
            last: Instant::now(),
            pending_resync: 0,
            pending_write_failures: 0,
        })
    }

    pub fn attach_mode(&self) -> &'static str {
        self.probes.mode.as_str()
    }

    /// How long an attribution entry may stay idle before it is evicted (default
    /// [`CGROUP_IDLE_EVICT`]).
    pub fn set_cgroup_idle_evict(&mut self, d: std::time::Duration) {
        self.cgroup_idle_evict = d;
    }

    /// Keys of the kernel's attribution map (empty when attribution is off).
    pub fn cgroup_keys(&self) -> Vec<CgroupKey> {
        self.cgroups.as_ref().map_or_else(Vec::new, |m| m.keys().filter_map(|k| k.ok()).collect())
    }

    /// Adds failures seen outside the kernel (the writer's) to the next snapshot's losses.
    pub fn add_write_failures(&mut self, n: u64) {
        self.pending_write_failures += n;
    }

    /// Reads every map and builds the snapshot for the interval that just ended.
    pub fn collect(&mut self) -> Result<Collected> {
        let started = Instant::now();
        let now_wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        let interval_s = started.duration_since(self.last).as_secs_f64();
        self.last = started;

        // New epoch first: issues from now on raise the other peak slot, so the slot of the
        // interval that just ended is stable while we read it.
        let ended_epoch = self.epoch;
        self.epoch += 1;
        self.control.set(CONTROL_EPOCH, self.epoch, 0).map_err(map_err("CONTROL"))?;

        let ops = self.read_hists()?;
        let (latency_histogram, op_stats) = self.build_histograms(&ops);
        let active: HashMap<u32, u64> = ops.iter().fold(HashMap::new(), |mut m, ((dev, _), d)| {
            *m.entry(*dev).or_default() += d.count;
            m
        });
        let inflight = self.read_inflight(ended_epoch, &active)?;
        let cgroups = self.read_cgroups()?;
        let losses = self.read_losses()?;
        // Devices seen in the fallback maps get a dense slot: cheaper for the programs from now on.
        // A failure here only keeps devices on the fallback maps: the snapshot is not lost.
        let (names, filter) = (&mut self.names, &self.filter);
        match self.devices.assign_slots(|dev| filter.allows(&names.name(dev))) {
            Ok(placed) => {
                for dev in placed {
                    tracing::debug!(device = %self.names.name(dev), id = dev, "device given a dense slot");
                }
            }
            Err(e) => tracing::warn!(error = %crate::error::chain(&e), "cannot give devices a dense slot"),
        }

        let snapshot = Snapshot {
            schema_version: Some(SCHEMA_VERSION),
            timestamp: now_wall,
            iso_timestamp: iso_timestamp(now_wall),
            interval_s,
            node: Some(self.node.clone()),
            seq: Some(self.seq),
            latency_histogram,
            inflight,
            ops: op_stats,
            pods: Vec::new(),
            losses: Some(losses),
            losses_total: Some(self.totals),
            agent: Some(AgentInfo { version: env!("CARGO_PKG_VERSION").into(), attach: self.attach_mode().into() }),
            io_pressure: None,
        };
        self.seq += 1;
        Ok(Collected { snapshot, cgroups, build_time: started.elapsed() })
    }

    /// Per (device, op) deltas, keyed in a stable order.
    fn read_hists(&mut self) -> Result<BTreeMap<(u32, u32), HistDelta>> {
        let mut out = BTreeMap::new();
        for (key, cur) in self.devices.hists()? {
            let prev = self.prev_hists.insert(key, cur).unwrap_or(OpHist::ZERO);
            let d = delta(&cur, &prev);
            if d.count > 0 {
                out.insert((key.dev, key.op), d);
            }
        }
        Ok(out)
    }

    fn build_histograms(&mut self, ops: &BTreeMap<(u32, u32), HistDelta>) -> (Vec<DeviceHistogram>, Vec<OpStats>) {
        let mut per_device: BTreeMap<u32, (u64, u64, [u64; HIST_SLOTS])> = BTreeMap::new();
        let mut op_stats = Vec::new();
        for (&(dev, op), d) in ops {
            let name = self.names.name(dev);
            if !self.filter.allows(&name) {
                continue;
            }
            let e = per_device.entry(dev).or_insert((0, 0, [0; HIST_SLOTS]));
            e.0 += d.count;
            e.1 += d.device_ns;
            for i in 0..HIST_SLOTS {
                e.2[i] += d.device_slots[i];
            }
            op_stats.push(OpStats {
                device_id: u64::from(dev),
                device_name: name,
                op: OP_NAMES.get(op as usize).copied().unwrap_or("other").to_string(),
                count: d.count,
                bytes: d.bytes,
                device_time: time_hist(d.device_ns, &d.device_slots),
                queue_time: time_hist(d.queue_ns, &d.queue_slots),
                size: SizeHistogram { buckets: buckets_from_slots(&d.size_slots) },
            });
        }
        let latency = per_device
            .into_iter()
            .map(|(dev, (total, sum_ns, slots))| DeviceHistogram {
                device_id: u64::from(dev),
                device_name: self.names.name(dev),
                total,
                sum_us: Some(sum_ns as f64 / 1000.0),
                sum_ns: Some(sum_ns),
                buckets: buckets_from_slots(&slots),
            })
            .collect();
        (latency, op_stats)
    }

    fn read_inflight(&mut self, ended_epoch: u64, active: &HashMap<u32, u64>) -> Result<Vec<DeviceInflight>> {
        let slot = (ended_epoch & 1) as usize;
        let mut out = Vec::new();
        for (dev, v) in self.devices.inflight()? {
            let name = self.names.name(dev);
            if !self.filter.allows(&name) {
                continue;
            }
            let depth = v.inflight.max(0) as u64;
            let interval_peak = if v.peak_epoch[slot] == ended_epoch { v.peak[slot].max(0) as u64 } else { 0 };
            let floor = self.prev_depth.get(&dev).copied().unwrap_or(0);
            let peak = interval_peak.max(floor).max(depth);
            let completed = active.get(&dev).copied().unwrap_or(0);
            // The kernel's own count is only needed to judge a gauge that looks stuck (non-zero
            // with nothing completing); reading sysfs for every device every interval would be
            // most of the snapshot's cost on a node with many disks.
            let sysfs = if v.inflight != 0 && completed == 0 { self.names.sysfs_inflight(&name) } else { None };
            let depth = self.reconcile(dev, depth, sysfs, completed, v)?;
            self.prev_depth.insert(dev, depth);
            out.push(DeviceInflight {
                device_id: u64::from(dev),
                device_name: name,
                count: depth,
                peak: Some(peak),
                sysfs_count: sysfs,
            });
        }
        Ok(out)
    }

    /// Our depth counts requests whose issue we saw and whose completion we have not. If the
    /// kernel says the device is idle, nothing completed in two intervals, and we still see
    /// requests in flight, their completions were lost: reset the gauge and count the loss.
    /// Only done on an idle device, where the reset cannot race with the programs' adds.
    fn reconcile(
        &mut self,
        dev: u32,
        depth: u64,
        sysfs: Option<u64>,
        completed: u64,
        v: KernelInflight,
    ) -> Result<u64> {
        // Raw kernel value: it can be below 0 if arming was late (see CONTROL_ARMED_NS); reported
        // as 0, repaired here. Above 0 when the kernel did not run the completion program for
        // some completions (docs/performance.md, "Completions the kernel does not show").
        let raw = v.inflight;
        let prev_raw = self.prev_raw.insert(dev, raw);
        let stale = raw != 0 && sysfs == Some(0) && completed == 0 && prev_raw == Some(raw);
        if !stale {
            self.drift.remove(&dev);
            return Ok(depth);
        }
        let n = self.drift.entry(dev).or_insert(0);
        *n += 1;
        if *n < 2 {
            return Ok(depth);
        }
        self.drift.remove(&dev);
        self.devices.reset_inflight(dev)?;
        self.prev_raw.insert(dev, 0);
        let lost = raw.unsigned_abs();
        self.totals.inflight_resync += lost;
        self.pending_resync += lost;
        tracing::warn!(device = dev, gauge = raw, "in-flight depth disagreed with sysfs on an idle device; reset");
        Ok(0)
    }

    fn read_cgroups(&mut self) -> Result<Vec<CgroupDelta>> {
        let Some(map) = &mut self.cgroups else { return Ok(Vec::new()) };
        let mut entries = Vec::new();
        for item in map.iter() {
            entries.push(item.map_err(map_err("CGROUPS"))?);
        }
        let now = Instant::now();
        let mut out = Vec::new();
        for (key, cur) in entries {
            let prev = self.prev_cgroups.insert(key, cur).unwrap_or(CgroupStats::ZERO);
            let count = cur.count.wrapping_sub(prev.count);
            if count == 0 {
                // Pods come and go; their entries would fill the kernel map for good. An entry
                // idle this long is removed (with its baseline, so a cgroup that becomes active
                // again restarts from zero, still exact). Only an I/O completing in the instant
                // between this read and the removal could be lost.
                let idle_since = *self.cgroup_idle_since.entry(key).or_insert(now);
                if now.duration_since(idle_since) >= self.cgroup_idle_evict {
                    let _ = map.remove(&key);
                    self.prev_cgroups.remove(&key);
                    self.cgroup_idle_since.remove(&key);
                }
                continue;
            }
            self.cgroup_idle_since.remove(&key);
            let name = self.names.name(key.dev);
            if !self.filter.allows(&name) {
                continue;
            }
            let mut slots = [0u64; HIST_SLOTS];
            for (i, s) in slots.iter_mut().enumerate() {
                *s = cur.device_slots[i].wrapping_sub(prev.device_slots[i]);
            }
            out.push(CgroupDelta {
                cgroup_id: key.cgroup_id,
                device_id: key.dev,
                device_name: name,
                op: OP_NAMES.get(key.op as usize).copied().unwrap_or("other"),
                count,
                device_ns: cur.device_ns.wrapping_sub(prev.device_ns),
                bytes: cur.bytes.wrapping_sub(prev.bytes),
                device_slots: slots,
            });
        }
        Ok(out)
    }

    fn read_losses(&mut self) -> Result<Losses> {
        let mut cur = [0u64; COUNTER_SLOTS as usize];
        for cpu in self.counters.get(&0, 0).map_err(map_err("COUNTERS"))?.iter() {
            for (c, v) in cur.iter_mut().zip(cpu) {
                *c = c.wrapping_add(*v);
            }
        }
        let recursion: u64 = self
            .probes
            .programs
            .iter()
            .filter_map(|name| program_stats(&self.probes.ebpf, name))
            .map(|s| s.recursion_misses)
            .sum();
        let d = |i: u32| cur[i as usize].wrapping_sub(self.prev_counters[i as usize]);
        use blkio_agent_common as c;
        let losses = Losses {
            start_insert_failed: d(c::LOSS_START_INSERT_FAILED),
            complete_without_start: d(c::LOSS_COMPLETE_WITHOUT_START),
            stale_evicted: d(c::LOSS_STALE_EVICTED),
            hist_update_failed: d(c::LOSS_HIST_UPDATE_FAILED),
            device_map_full: d(c::LOSS_DEVICE_MAP_FULL),
            cgroup_map_full: d(c::LOSS_CGROUP_MAP_FULL),
            recursion_misses: recursion.wrapping_sub(self.prev_recursion),
            inflight_resync: std::mem::take(&mut self.pending_resync),
            write_failures: std::mem::take(&mut self.pending_write_failures),
            requeued: d(c::EVENT_REQUEUED),
            partial_completion: d(c::EVENT_PARTIAL_COMPLETION),
        };
        self.prev_counters = cur;
        self.prev_recursion = recursion;
        let t = &mut self.totals;
        t.start_insert_failed += losses.start_insert_failed;
        t.complete_without_start += losses.complete_without_start;
        t.stale_evicted += losses.stale_evicted;
        t.hist_update_failed += losses.hist_update_failed;
        t.device_map_full += losses.device_map_full;
        t.cgroup_map_full += losses.cgroup_map_full;
        t.recursion_misses += losses.recursion_misses;
        t.write_failures += losses.write_failures;
        t.requeued += losses.requeued;
        t.partial_completion += losses.partial_completion;
        Ok(losses)
    }
}

fn time_hist(sum_ns: u64, slots: &[u64; HIST_SLOTS]) -> TimeHistogram {
    TimeHistogram { sum_ns, sum_us: sum_ns as f64 / 1000.0, buckets: buckets_from_slots(slots) }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
