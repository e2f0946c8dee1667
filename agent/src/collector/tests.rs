//! Collector tests on fake maps and a fixture `/proc`+`/sys` tree: no root, no kernel.

use std::{
    cell::Cell,
    collections::{BTreeMap, HashMap},
    path::Path,
};

use blkio_agent_common::{
    COUNTER_SLOTS, CgroupKey, CgroupStats, DeviceHists, DeviceInflight as KernelInflight, DeviceQueues, Framed,
    HistKey, IGNORED_SLOT, LOSS_STALE_EVICTED, OP_COUNT, OP_READ, OP_WRITE, OpHist, device_index_match,
};

use super::{maps::Counters, *};
use crate::{Error, devices::device_id, interval::Interval};

const LOOP0: u32 = 7 << 20;
const NVME: u32 = 259 << 20;
const NVME_P1: u32 = (259 << 20) | 1;
const SDA: u32 = 8 << 20;
const UNNAMED: u32 = (8 << 20) | 16;

/// Kernel maps in memory. `fail_reads` makes the next that many reads fail, as a map read of the
/// real kernel can (EINTR, ENOMEM, a map replaced under us); `torn_reads` makes the next that many
/// copies of histogram values torn, as copies taken during a program's update are.
#[derive(Default)]
struct FakeMaps {
    fallback_hists: BTreeMap<HistKey, OpHist>,
    dense_hists: HashMap<u32, Vec<DeviceHists>>,
    fallback_inflight: BTreeMap<u32, KernelInflight>,
    dense_inflight: HashMap<u32, DeviceQueues>,
    cgroups: BTreeMap<CgroupKey, CgroupStats>,
    counters: Vec<Counters>,
    recursion: u64,
    epoch: u64,
    index: BTreeMap<u32, u64>,
    fail_reads: Cell<u32>,
    torn_reads: Cell<u32>,
    fast_since: Option<u64>,
}

impl FakeMaps {
    fn check(&self) -> Result<()> {
        if self.fail_reads.get() > 0 {
            self.fail_reads.set(self.fail_reads.get() - 1);
            return Err(Error::Other("injected map read failure".into()));
        }
        Ok(())
    }

    /// `v` as copied: torn (an update begun, not ended) while `torn_reads` lasts.
    fn copy<T: Copy>(&self, v: T) -> Framed<T> {
        let torn = self.torn_reads.get() > 0;
        if torn {
            self.torn_reads.set(self.torn_reads.get() - 1);
        }
        Framed { done: 0, value: v, started: u64::from(torn) }
    }

    /// The dense slot the programs would find for `dev` through `DEVICE_INDEX`.
    fn slot(&self, dev: u32) -> Option<u32> {
        self.index.values().find_map(|&e| device_index_match(e, dev))
    }

    /// One completion of `dev`/`op` in µs-slot `slot` on `cpu`, where the programs would count it.
    fn complete(&mut self, dev: u32, op: u32, slot: usize, cpu: usize) {
        let h = match self.slot(dev) {
            Some(IGNORED_SLOT) => return,
            Some(s) => {
                let cpus =
                    self.dense_hists.entry(s).or_insert_with(|| vec![DeviceHists { ops: [OpHist::ZERO; OP_COUNT] }; 2]);
                &mut cpus[cpu].ops[op as usize]
            }
            None => self.fallback_hists.entry(HistKey { dev, op }).or_insert(OpHist::ZERO),
        };
        h.count += 1;
        h.device_ns += 1000;
        h.bytes += 4096;
        h.device_slots[slot] = h.device_slots[slot].wrapping_add(1);
        h.queue_slots[0] = h.queue_slots[0].wrapping_add(1);
        h.size_slots[12] = h.size_slots[12].wrapping_add(1);
    }

    fn gauge(&mut self, dev: u32, inflight: i64) {
        match self.slot(dev) {
            Some(IGNORED_SLOT) => {}
            Some(s) => self.dense_inflight.entry(s).or_default().lines[0].gauge.inflight = inflight,
            None => self.fallback_inflight.entry(dev).or_default().inflight = inflight,
        }
    }
}

impl MapRead for FakeMaps {
    fn fallback_hists(&self) -> Result<Vec<(HistKey, Framed<OpHist>)>> {
        self.check()?;
        Ok(self.fallback_hists.iter().map(|(k, v)| (*k, self.copy(*v))).collect())
    }
    fn dense_hists(&self, slot: u32) -> Result<Vec<Framed<DeviceHists>>> {
        Ok(self.dense_hists.get(&slot).map(|cpus| cpus.iter().map(|v| self.copy(*v)).collect()).unwrap_or_default())
    }
    fn fallback_inflight(&self) -> Result<Vec<(u32, KernelInflight)>> {
        Ok(self.fallback_inflight.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn dense_inflight(&self, slot: u32) -> Result<DeviceQueues> {
        Ok(self.dense_inflight.get(&slot).copied().unwrap_or_default())
    }
    fn cgroups(&self) -> Result<Vec<(CgroupKey, Framed<CgroupStats>)>> {
        Ok(self.cgroups.iter().map(|(k, v)| (*k, self.copy(*v))).collect())
    }
    fn counters(&self) -> Result<Vec<Counters>> {
        Ok(self.counters.clone())
    }
    fn recursion_misses(&self) -> u64 {
        self.recursion
    }
}

impl MapControl for FakeMaps {
    fn set_epoch(&mut self, epoch: u64) -> Result<()> {
        self.epoch = epoch;
        Ok(())
    }
    fn set_index(&mut self, pos: u32, entry: u64) -> Result<()> {
        self.index.insert(pos, entry);
        Ok(())
    }
    fn remove_cgroup(&mut self, key: &CgroupKey) -> Result<()> {
        self.cgroups.remove(key);
        Ok(())
    }
    fn remove_fallback(&mut self, dev: u32) -> Result<()> {
        self.fallback_hists.retain(|k, _| k.dev != dev);
        self.fallback_inflight.remove(&dev);
        Ok(())
    }
    fn set_fast_since(&mut self, since_ns: u64) -> Result<()> {
        self.fast_since = Some(since_ns);
        Ok(())
    }
}

/// `/proc/diskstats` naming loop0, nvme0n1 (with a partition) and sda; `/sys/block/*/inflight`.
fn fixture() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    std::fs::create_dir_all(r.join("proc")).unwrap();
    std::fs::write(
        r.join("proc/diskstats"),
        "   7       0 loop0 1 0 8 1 2 0 16 2 0 4 5 6 7 8 9 10 11\n \
         259       0 nvme0n1 1 0 8 1 2 0 16 2 0 4 5 6 7 8 9 10 11\n \
         259       1 nvme0n1p1 1 0 8 1 2 0 16 2 0 4 5 6 7 8 9 10 11\n   \
         8       0 sda 1 0 8 1 2 0 16 2 0 4 5 6 7 8 9 10 11\n",
    )
    .unwrap();
    let disk = r.join("sys/devices/virtual/block/nvme0n1");
    std::fs::create_dir_all(disk.join("nvme0n1p1")).unwrap();
    std::fs::write(disk.join("dev"), "259:0\n").unwrap();
    std::fs::write(disk.join("nvme0n1p1/dev"), "259:1\n").unwrap();
    std::fs::write(disk.join("nvme0n1p1/partition"), "1\n").unwrap();
    std::fs::create_dir_all(r.join("sys/dev/block")).unwrap();
    std::os::unix::fs::symlink(disk.join("nvme0n1p1"), r.join("sys/dev/block/259:1")).unwrap();
    std::fs::create_dir_all(r.join("sys/block/loop0")).unwrap();
    std::fs::write(r.join("sys/block/loop0/inflight"), "       0        0\n").unwrap();
    root
}

fn collector(root: &Path, filter: &[&str], maps: FakeMaps) -> Collector<FakeMaps> {
    let names = DeviceNames::new(root, root).unwrap();
    let filter = DeviceFilter::new(&filter.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    Collector::with_maps(maps, "btf", names, filter, "n1".into())
}

fn device<'a>(iv: &'a Interval, name: &str) -> &'a crate::interval::DeviceInterval {
    iv.devices.iter().find(|d| d.name == name).unwrap_or_else(|| panic!("no {name} in {:?}", iv.devices))
}

#[test]
fn deltas_are_exact_across_the_u32_slot_wrap() {
    let root = fixture();
    let mut maps = FakeMaps::default();
    // A long-running agent: slot 3 is just below the u32 wrap on the fallback map.
    let h = maps.fallback_hists.entry(HistKey { dev: SDA, op: OP_READ }).or_insert(OpHist::ZERO);
    // 2^40 requests so far; each histogram's u32 slots hold them modulo 2^32.
    h.count = 1 << 40;
    (h.device_slots[3], h.device_slots[0]) = (u32::MAX - 1, 2);
    (h.queue_slots[0], h.size_slots[12]) = (0, 0);
    let mut c = collector(root.path(), &[], maps);
    c.collect().unwrap();
    // The device has a dense slot now; keep it on the fallback map to check the wrap there.
    c.maps.index.clear();
    for _ in 0..5 {
        c.maps.complete(SDA, OP_READ, 3, 0);
    }
    let iv = c.collect().unwrap().interval;
    let op = &device(&iv, "sda").ops[0];
    assert_eq!((op.count, op.device_time.slots[3], op.device_time.count()), (5, 5, 5));
    assert_eq!(op.device_time.sum, 5000);
}

#[test]
fn dense_and_fallback_halves_are_merged_exactly() {
    let root = fixture();
    let mut c = collector(root.path(), &[], FakeMaps::default());
    // First interval: only the fallback map knows loop0 (3 reads, 2 in flight).
    for _ in 0..3 {
        c.maps.complete(LOOP0, OP_READ, 4, 0);
    }
    c.maps.gauge(LOOP0, 2);
    let first = c.collect().unwrap().interval;
    assert_eq!(device(&first, "loop0").ops[0].count, 3);
    assert_eq!(c.maps.slot(LOOP0), Some(0), "a device seen in the fallback maps gets a dense slot");
    // From now on its I/O lands in the dense per-CPU entries, on two CPUs; the two requests
    // issued before the slot complete through the dense gauge (which goes below zero).
    c.maps.complete(LOOP0, OP_READ, 4, 0);
    c.maps.complete(LOOP0, OP_READ, 6, 1);
    c.maps.complete(LOOP0, OP_WRITE, 5, 1);
    c.maps.gauge(LOOP0, -2 + 1);
    let iv = c.collect().unwrap().interval;
    let d = device(&iv, "loop0");
    let ops: Vec<_> = d.ops.iter().map(|o| (o.op, o.count)).collect();
    assert_eq!(ops, vec![("read", 2), ("write", 1)]);
    assert_eq!((d.ops[0].device_time.slots[4], d.ops[0].device_time.slots[6]), (1, 1));
    assert_eq!(d.depth.unwrap().count, 1, "depth is the sum of both halves");
    // The JSONL rendering of the same interval: per-device total over both ops.
    let snap = iv.snapshot();
    assert_eq!((snap.latency_histogram[0].total, snap.latency_histogram[0].sum_ns), (3, Some(3000)));
}

#[test]
fn devices_are_named_and_filtered() {
    let root = fixture();
    let mut c = collector(root.path(), &["!loop*"], FakeMaps::default());
    for dev in [LOOP0, NVME_P1, UNNAMED] {
        c.maps.complete(dev, OP_READ, 2, 0);
        c.maps.gauge(dev, 1);
    }
    let iv = c.collect().unwrap().interval;
    let names: Vec<&str> = iv.devices.iter().map(|d| d.name.as_str()).collect();
    // The partition counts for its disk; an id not in diskstats is named by its numbers.
    assert_eq!(names, vec!["unknown-8:16", "nvme0n1"]);
    assert_eq!(device(&iv, "nvme0n1").id, NVME_P1);
    assert_eq!(c.maps.slot(LOOP0), Some(IGNORED_SLOT), "a filtered-out device takes no dense slot: it is ignored");
    assert!(c.maps.slot(UNNAMED).is_some());
    assert_eq!(device_id(259, 0), NVME);
    // Its fallback entries stay for one more interval (a program may still be updating them),
    // then go; the programs no longer count it.
    assert!(c.maps.fallback_hists.keys().any(|k| k.dev == LOOP0) && c.maps.fallback_inflight.contains_key(&LOOP0));
    c.maps.complete(LOOP0, OP_READ, 2, 0);
    c.collect().unwrap();
    assert!(c.maps.fallback_hists.keys().all(|k| k.dev != LOOP0) && !c.maps.fallback_inflight.contains_key(&LOOP0));
    let iv = c.collect().unwrap().interval;
    assert!(iv.devices.iter().all(|d| d.name != "loop0"), "{:?}", iv.devices);
    assert!(c.maps.fallback_hists.keys().all(|k| k.dev != LOOP0));
}

#[test]
fn a_device_without_a_name_is_not_ignored_for_good() {
    let root = fixture();
    // Only nvme* is reported: a device not in diskstats yet is neither reported nor ignored.
    let mut c = collector(root.path(), &["nvme*"], FakeMaps::default());
    for dev in [LOOP0, NVME, UNNAMED] {
        c.maps.complete(dev, OP_READ, 2, 0);
    }
    let iv = c.collect().unwrap().interval;
    assert_eq!(iv.devices.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(), vec!["nvme0n1"]);
    assert_eq!(c.maps.slot(NVME), Some(0));
    assert_eq!(c.maps.slot(LOOP0), Some(IGNORED_SLOT), "named and excluded");
    assert_eq!(c.maps.slot(UNNAMED), None, "decided once it has a name");
}

#[test]
fn a_failed_map_read_is_one_counted_loss_and_the_next_interval_covers_it() {
    let root = fixture();
    let mut c = collector(root.path(), &[], FakeMaps::default());
    c.collect().unwrap();
    for _ in 0..4 {
        c.maps.complete(SDA, OP_READ, 5, 0);
    }
    c.maps.counters = vec![{
        let mut k = [0u64; COUNTER_SLOTS as usize];
        k[LOSS_STALE_EVICTED as usize] = 2;
        k
    }];
    c.maps.fail_reads.set(1);
    assert!(c.collect().is_err(), "the injected failure is reported");
    let iv = c.collect().unwrap().interval;
    assert_eq!(iv.seq, 1, "no interval was built for the failed read");
    assert_eq!(iv.losses.get("map_read_failures"), 1);
    assert_eq!(iv.losses_total.get("map_read_failures"), 1);
    assert_eq!(device(&iv, "sda").ops[0].count, 4, "the I/O of the failed interval is in this one");
    assert_eq!(iv.losses.get("stale_evicted"), 2);
    let next = c.collect().unwrap().interval;
    assert_eq!((next.losses.get("map_read_failures"), next.losses_total.get("map_read_failures")), (0, 1));
}

#[test]
fn torn_copies_are_read_again_and_a_map_torn_in_every_read_fails_only_its_interval() {
    let root = fixture();
    let mut c = collector(root.path(), &[], FakeMaps::default());
    c.collect().unwrap();
    for _ in 0..3 {
        c.maps.complete(SDA, OP_READ, 5, 0);
    }
    c.maps.torn_reads.set(2);
    let iv = c.collect().unwrap().interval;
    assert_eq!(c.maps.torn_reads.get(), 0, "the torn copies were read");
    assert_eq!(device(&iv, "sda").ops[0].count, 3);
    assert_eq!(iv.losses.get("map_read_failures"), 0);
    c.maps.complete(SDA, OP_READ, 5, 0);
    c.maps.torn_reads.set(super::settle::READ_TRIES as u32);
    let Err(err) = c.collect().map(|_| ()) else { panic!("a map torn in every read fails the interval") };
    let err = err.to_string();
    assert!(err.contains("map HISTS") && err.contains("next interval covers"), "{err}");
    let iv = c.collect().unwrap().interval;
    assert_eq!(iv.losses.get("map_read_failures"), 1);
    assert_eq!(device(&iv, "sda").ops[0].count, 1, "the request of the failed interval is in this one");
}

#[test]
fn each_interval_advances_the_epoch_and_reports_its_peak() {
    let root = fixture();
    let mut c = collector(root.path(), &[], FakeMaps::default());
    c.maps.fallback_inflight.insert(SDA, KernelInflight { inflight: 1, peak: [6, 0], peak_epoch: [0, 0], evicted: 0 });
    let iv = c.collect().unwrap().interval;
    assert_eq!(c.maps.epoch, 1, "issues after the read raise the other peak slot");
    assert_eq!(device(&iv, "sda").depth.unwrap().peak, 6, "epoch 0's peak slot");
    // Epoch 1 ended with a stale slot: the peak is the floor (last depth) and the current depth.
    let iv = c.collect().unwrap().interval;
    assert_eq!((c.maps.epoch, device(&iv, "sda").depth.unwrap().peak), (2, 1));
}

#[test]
fn a_stuck_gauge_on_an_idle_device_is_reset_and_counted() {
    let root = fixture();
    let mut c = collector(root.path(), &[], FakeMaps::default());
    c.maps.gauge(LOOP0, 3); // sysfs says loop0 is idle; nothing completes
    let depths: Vec<u64> =
        (0..3).map(|_| device(&c.collect().unwrap().interval, "loop0").depth.unwrap().count).collect();
    assert_eq!(depths, vec![3, 3, 0], "reset after two intervals of disagreement");
    assert_eq!(
        c.maps.dense_inflight.get(&0).map_or(0, |v| v.lines[0].gauge.inflight)
            + c.maps.fallback_inflight[&LOOP0].inflight,
        3,
        "the kernel gauge is never written (its value is set aside)"
    );
    let iv = c.collect().unwrap().interval;
    assert_eq!(iv.losses_total.get("inflight_resync"), 3);
    assert_eq!(device(&iv, "loop0").depth.unwrap().count, 0);
}

#[test]
fn idle_attribution_entries_are_evicted_and_restart_from_zero() {
    let root = fixture();
    let mut c = collector(root.path(), &[], FakeMaps::default());
    c.set_cgroup_idle_evict(std::time::Duration::ZERO);
    let key = CgroupKey { cgroup_id: 42, dev: SDA, op: OP_READ as u16, shard: 0 };
    let mut stats = CgroupStats::ZERO;
    stats.count = 2;
    stats.device_slots[3] = 2;
    c.maps.cgroups.insert(key, stats);
    let first = c.collect().unwrap();
    assert_eq!((first.cgroups.len(), first.cgroups[0].count, first.cgroups[0].device_name.as_str()), (1, 2, "sda"));
    assert!(c.collect().unwrap().cgroups.is_empty());
    assert!(c.cgroup_keys().is_empty(), "an idle entry is removed from the kernel map");
    (stats.count, stats.device_slots[3]) = (1, 1);
    c.maps.cgroups.insert(key, stats);
    assert_eq!(c.collect().unwrap().cgroups[0].count, 1, "a new entry counts from zero");
}

#[test]
fn write_failures_reach_the_next_interval() {
    let root = fixture();
    let mut c = collector(root.path(), &[], FakeMaps::default());
    c.add_write_failures(2);
    let iv = c.collect().unwrap().interval;
    assert_eq!((iv.losses.get("write_failures"), iv.losses_total.get("write_failures")), (2, 2));
    assert_eq!(c.collect().unwrap().interval.losses.get("write_failures"), 0);
}

/// diskstats of the fixture with loop0's writes at `writes` and `in_flight` in flight.
fn set_loop0_diskstats(root: &Path, writes: u64, in_flight: u64) {
    let path = root.join("proc/diskstats");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    lines[0] = format!("   7       0 loop0 1 0 8 1 {writes} 0 16 2 {in_flight} 4 5 6 7 8 9 10 11");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
}

#[test]
fn unseen_completions_are_reconciled_with_diskstats_and_taken_off_the_gauge() {
    let root = fixture();
    // The baseline is taken when the collector starts: loop0 has 2 writes then.
    let mut c = collector(root.path(), &[], FakeMaps::default());
    // 10 writes complete; the programs saw 9, so one request stays counted in the gauge, which
    // peaked at 4 (the real depth: 3).
    for _ in 0..9 {
        c.maps.complete(LOOP0, OP_WRITE, 3, 0);
    }
    c.maps
        .fallback_inflight
        .insert(LOOP0, KernelInflight { inflight: 1, peak: [4, 0], peak_epoch: [0, 0], evicted: 0 });
    set_loop0_diskstats(root.path(), 12, 0);
    let iv = c.collect().unwrap().interval;
    let d = device(&iv, "loop0");
    assert_eq!(d.ops[0].count + d.unseen.unwrap(), 10, "agent + unseen == diskstats");
    assert_eq!((iv.losses.get("unseen_completions"), iv.losses_total.get("unseen_completions")), (1, 1));
    let depth = d.depth.unwrap();
    assert_eq!((depth.count, depth.peak), (0, 3), "the unseen completion is taken off the gauge and its peak");
    let snap = iv.snapshot();
    assert_eq!(snap.inflight.iter().find(|i| i.device_name == "loop0").unwrap().unseen_completions, Some(1));
    // Reconciled devices without a loss say 0; the others are not reconciled at all.
    let iv = c.collect().unwrap().interval;
    assert_eq!((device(&iv, "loop0").unseen, iv.losses.get("unseen_completions")), (Some(0), 0));
    assert_eq!(device(&iv, "loop0").depth.unwrap().count, 0);
    // Idle with the raw gauge at 1: the resync sets it aside (and counts the raw entry it drops,
    // as it always did); nothing is corrected twice.
    let iv = c.collect().unwrap().interval;
    assert_eq!(c.maps.fallback_inflight[&LOOP0].inflight, 1, "the kernel gauge is never written");
    assert_eq!((iv.losses_total.get("inflight_resync"), iv.losses_total.get("unseen_completions")), (1, 1));
    assert_eq!(c.reconcile.correction(LOOP0), 1, "the raw gauge, set aside once");
    // A request issued and completed later moves the gauge from there.
    c.maps.fallback_inflight.get_mut(&LOOP0).unwrap().inflight = 2;
    assert_eq!(device(&c.collect().unwrap().interval, "loop0").depth.unwrap().count, 1);
}

#[test]
fn a_busy_device_is_never_over_reported() {
    let root = fixture();
    let mut c = collector(root.path(), &[], FakeMaps::default());
    // diskstats read before the maps: 5 writes done then, 7 by the time the maps are read.
    for _ in 0..7 {
        c.maps.complete(LOOP0, OP_WRITE, 3, 0);
    }
    c.maps.gauge(LOOP0, 3);
    set_loop0_diskstats(root.path(), 2 + 5, 3);
    let iv = c.collect().unwrap().interval;
    assert_eq!((iv.losses.get("unseen_completions"), device(&iv, "loop0").depth.unwrap().count), (0, 3));
}

#[test]
fn a_device_on_several_queues_reports_its_peak_bounds() {
    let root = fixture();
    let mut c = collector(root.path(), &[], FakeMaps::default());
    c.maps.gauge(NVME, 1);
    c.collect().unwrap();
    let slot = c.maps.slot(NVME).expect("a dense slot");
    c.maps.fallback_inflight.clear();
    // Epoch 1: queue 0 reached 5 and still holds 3; queue 9 reached 4 and holds 2.
    let lines = &mut c.maps.dense_inflight.entry(slot).or_default().lines;
    lines[0].gauge = KernelInflight { inflight: 3, peak: [0, 5], peak_epoch: [0, 1], evicted: 0 };
    lines[9].gauge = KernelInflight { inflight: 2, peak: [0, 4], peak_epoch: [0, 1], evicted: 0 };
    let iv = c.collect().unwrap().interval;
    let d = device(&iv, "nvme0n1").depth.unwrap();
    assert_eq!((d.count, d.peak, d.peak_upper), (5, 5, 9), "the highest queue's peak, and the sum of both");
    let snap = iv.snapshot();
    assert_eq!((snap.inflight[0].peak, snap.inflight[0].peak_upper), (Some(5), Some(9)));
    // Epoch 2: only queue 0 moves (to 1, no issue): queue 9's 2 may still have been there with
    // queue 0's 3 at the start, so the floor is 5, and the bound 3 + 2.
    c.maps.dense_inflight.get_mut(&slot).unwrap().lines[0].gauge.inflight = 1;
    let d = device(&c.collect().unwrap().interval, "nvme0n1").depth.unwrap();
    assert_eq!((d.count, d.peak, d.peak_upper), (3, 5, 5));
    // Epoch 3: queue 9 drained, queue 0 reached 4.
    let lines = &mut c.maps.dense_inflight.get_mut(&slot).unwrap().lines;
    lines[9].gauge.inflight = 0;
    lines[0].gauge = KernelInflight { inflight: 2, peak: [0, 4], peak_epoch: [0, 3], evicted: 0 };
    let iv = c.collect().unwrap().interval;
    let d = device(&iv, "nvme0n1").depth.unwrap();
    assert_eq!((d.count, d.peak, d.peak_upper), (2, 4, 6), "queue 9 held 2 at the last read: 4 + 2");
    assert_eq!(iv.snapshot().inflight[0].peak_upper, Some(6));
    // Epoch 4: nothing moves; only queue 0 holds requests: exact, and the JSONL has no bound.
    let iv = c.collect().unwrap().interval;
    let d = device(&iv, "nvme0n1").depth.unwrap();
    assert_eq!((d.count, d.peak, d.peak_upper), (2, 2, 2));
    assert_eq!(iv.snapshot().inflight[0].peak_upper, None);
}

#[test]
fn a_series_spread_over_shards_is_one_delta_and_each_shard_keeps_its_baseline() {
    let root = fixture();
    let mut c = collector(root.path(), &[], FakeMaps::default());
    let key = |cgroup_id, op: u32, shard| CgroupKey { cgroup_id, dev: SDA, op: op as u16, shard };
    let stats = |count: u64, slot: usize| {
        let mut s = CgroupStats::ZERO;
        (s.count, s.device_ns, s.bytes, s.device_slots[slot]) = (count, count * 1000, count * 4096, count as u32);
        s
    };
    c.maps.cgroups.insert(key(42, OP_READ, 0), stats(2, 3));
    c.maps.cgroups.insert(key(42, OP_READ, 5), stats(3, 4));
    c.maps.cgroups.insert(key(42, OP_WRITE, 5), stats(1, 4));
    c.maps.cgroups.insert(key(43, OP_READ, 5), stats(7, 4));
    let got = c.collect().unwrap().cgroups;
    let rows: Vec<_> =
        got.iter().map(|d| (d.cgroup_id, d.op, d.count, d.bytes, d.device_slots[3], d.device_slots[4])).collect();
    assert_eq!(
        rows,
        vec![(42, "read", 5, 5 * 4096, 2, 3), (42, "write", 1, 4096, 0, 1), (43, "read", 7, 7 * 4096, 0, 7)]
    );
    // Next interval: only shard 0 of cgroup 42's reads moved (+1).
    c.maps.cgroups.insert(key(42, OP_READ, 0), stats(3, 3));
    let got = c.collect().unwrap().cgroups;
    assert_eq!(got.iter().map(|d| (d.cgroup_id, d.op, d.count)).collect::<Vec<_>>(), vec![(42, "read", 1)]);
}
