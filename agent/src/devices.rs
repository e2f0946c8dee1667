//! Block device names and kernel-side counters, read from a proc root and a sys root (`/` on a
//! host, `/host` in a pod) so tests can pass fixture trees.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use crate::error::{Error, Result};

/// `(major << 20) | minor`: the kernel's internal `dev_t` (MKDEV), as in the seed.
pub fn device_id(major: u32, minor: u32) -> u32 {
    (major << 20) | (minor & 0xfffff)
}

pub fn major_minor(id: u32) -> (u32, u32) {
    (id >> 20, id & 0xfffff)
}

/// One line of `/proc/diskstats` (the fields the agent and its tests use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskStats {
    pub major: u32,
    pub minor: u32,
    pub name: String,
    pub reads_completed: u64,
    pub writes_completed: u64,
    /// Requests currently in flight (field 9 of the stats).
    pub in_flight: u64,
    /// Field 10: ms with at least one request in flight (`io_ticks`). The kernel prints it as a
    /// 32-bit `%u`, so it wraps every 49.7 days: take deltas with [`wrapping_delta_u32`].
    pub io_ticks_ms: u64,
    /// Field 11: ms of request time summed over requests (`time_in_queue`), also a 32-bit `%u`.
    pub time_in_queue_ms: u64,
    /// Discards completed (kernel >= 4.18), when present.
    pub discards_completed: Option<u64>,
    /// Flush requests completed (kernel >= 5.5), when present.
    pub flushes_completed: Option<u64>,
}

/// Parses `/proc/diskstats` text; malformed lines are skipped (the file is the kernel's, but a
/// fixture or a future format must not take the agent down).
pub fn parse_diskstats(text: &str) -> Vec<DiskStats> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 14 {
                return None;
            }
            let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
            Some(DiskStats {
                major: f[0].parse().ok()?,
                minor: f[1].parse().ok()?,
                name: f[2].to_string(),
                reads_completed: n(3)?,
                writes_completed: n(7)?,
                in_flight: n(11)?,
                io_ticks_ms: n(12)?,
                time_in_queue_ms: n(13)?,
                discards_completed: n(14),
                flushes_completed: n(18),
            })
        })
        .collect()
}

pub fn read_diskstats(proc_root: &Path) -> Result<Vec<DiskStats>> {
    let path = proc_root.join("proc/diskstats");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::read(&path, e))?;
    Ok(parse_diskstats(&text))
}

/// `cur - prev` of a counter the kernel prints as 32-bit unsigned (`io_ticks`, `time_in_queue`:
/// `diskstats_show` in <https://elixir.bootlin.com/linux/v6.18/source/block/genhd.c>): one wrap
/// between two readings is undone. Values above `u32::MAX` (never printed so far) are plain
/// differences, never negative.
pub fn wrapping_delta_u32(prev: u64, cur: u64) -> u64 {
    if prev <= u64::from(u32::MAX) && cur <= u64::from(u32::MAX) {
        u64::from((cur as u32).wrapping_sub(prev as u32))
    } else {
        cur.saturating_sub(prev)
    }
}

/// Busy and weighted I/O time per device between two `/proc/diskstats` readings, for the
/// devices the intervals carry (whole disks: partitions are counted in their disk).
pub struct DiskTimes {
    /// id -> (io_ticks, time_in_queue) at the previous reading.
    prev: HashMap<u32, (u64, u64)>,
    /// Every device an interval has carried: reported from then on, busy or not.
    seen: std::collections::BTreeMap<u32, String>,
}

impl DiskTimes {
    pub fn new(proc_root: &Path) -> DiskTimes {
        let mut d = DiskTimes { prev: HashMap::new(), seen: Default::default() };
        // The first interval then has a baseline from agent start.
        if let Ok(stats) = read_diskstats(proc_root) {
            d.prev = stats.iter().map(|s| (device_id(s.major, s.minor), (s.io_ticks_ms, s.time_in_queue_ms))).collect();
        }
        d
    }

    /// The deltas between the previous reading and `stats` (this interval's reading, the one the
    /// collector reconciled with) for `devices` (and every device seen before). A device with no
    /// previous reading (new since the last call) gets its baseline now and is reported from the
    /// next call. No reading (diskstats unreadable this interval; the collector logged why):
    /// nothing, and the next reading covers both intervals.
    pub fn sample<'a>(
        &mut self,
        stats: Option<&[DiskStats]>,
        devices: impl IntoIterator<Item = (u32, &'a str)>,
    ) -> Vec<crate::interval::DiskTime> {
        for (id, name) in devices {
            self.seen.entry(id).or_insert_with(|| name.to_string());
        }
        let Some(stats) = stats else { return Vec::new() };
        let mut out = Vec::new();
        for s in stats {
            let id = device_id(s.major, s.minor);
            let cur = (s.io_ticks_ms, s.time_in_queue_ms);
            let prev = self.prev.insert(id, cur);
            let (Some(name), Some(prev)) = (self.seen.get(&id), prev) else { continue };
            out.push(crate::interval::DiskTime {
                id,
                name: name.clone(),
                io_time_ms: wrapping_delta_u32(prev.0, cur.0),
                weighted_io_time_ms: wrapping_delta_u32(prev.1, cur.1),
            });
        }
        out
    }
}

/// Maps device ids to names, re-reading diskstats when an unknown id shows up (hotplug, a new
/// loop device or NVMe namespace).
pub struct DeviceNames {
    proc_root: PathBuf,
    sys_root: PathBuf,
    names: HashMap<u32, String>,
    /// Ids known not to be in diskstats after a re-read, so one unknown id does not cause a
    /// re-read every interval.
    unknown: HashMap<u32, String>,
    /// Partition -> disk, cached: sysfs is only consulted once per id.
    disks: HashMap<u32, u32>,
}

impl DeviceNames {
    pub fn new(proc_root: &Path, sys_root: &Path) -> Result<DeviceNames> {
        let mut d = DeviceNames {
            proc_root: proc_root.to_path_buf(),
            sys_root: sys_root.to_path_buf(),
            names: HashMap::new(),
            unknown: HashMap::new(),
            disks: HashMap::new(),
        };
        d.reload()?;
        Ok(d)
    }

    fn reload(&mut self) -> Result<()> {
        let stats = read_diskstats(&self.proc_root)?;
        self.names.clear();
        for s in &stats {
            self.names.insert(device_id(s.major, s.minor), s.name.clone());
        }
        self.unknown.clear();
        Ok(())
    }

    /// The name of `id`: its disk's name when `id` is a partition, `unknown-MAJ:MIN` when it
    /// cannot be named.
    pub fn name(&mut self, id: u32) -> String {
        let sys_root = &self.sys_root;
        let id = *self.disks.entry(id).or_insert_with(|| disk_of(sys_root, id));
        if let Some(n) = self.names.get(&id) {
            return n.clone();
        }
        if let Some(n) = self.unknown.get(&id) {
            return n.clone();
        }
        if let Err(e) = self.reload() {
            tracing::warn!(error = %e, "cannot re-read diskstats");
        }
        if let Some(n) = self.names.get(&id) {
            return n.clone();
        }
        let (major, minor) = major_minor(id);
        let n = format!("unknown-{major}:{minor}");
        self.unknown.insert(id, n.clone());
        n
    }

    /// The name of `id` as [`DeviceNames::name`] gives it, or `None` when it cannot be named
    /// (yet).
    pub fn known(&mut self, id: u32) -> Option<String> {
        let n = self.name(id);
        let disk = self.disks.get(&id).copied().unwrap_or(id);
        if self.unknown.contains_key(&disk) { None } else { Some(n) }
    }

    /// `/proc/diskstats` now (the kernel's completion counts, for the reconciliation).
    pub fn diskstats(&self) -> Result<Vec<DiskStats>> {
        read_diskstats(&self.proc_root)
    }

    /// `/sys/block/<name>/inflight`: reads and writes the kernel has in flight.
    pub fn sysfs_inflight(&self, name: &str) -> Option<u64> {
        let path = self.sys_root.join("sys/block").join(name).join("inflight");
        let text = std::fs::read_to_string(path).ok()?;
        let mut it = text.split_whitespace().map(|v| v.parse::<u64>().ok());
        Some(it.next()?? + it.next()??)
    }
}

/// For a partition, the id of the whole disk (sysfs: `/sys/dev/block/M:m` of a partition has
/// a `partition` file and its parent directory is the disk). Other ids are returned as is.
pub fn disk_of(sys_root: &Path, id: u32) -> u32 {
    let (major, minor) = major_minor(id);
    let dev_dir = sys_root.join(format!("sys/dev/block/{major}:{minor}"));
    if !dev_dir.join("partition").exists() {
        return id;
    }
    let Ok(real) = std::fs::canonicalize(&dev_dir) else { return id };
    let parent_dev = real.parent().map(|p| p.join("dev"));
    match parent_dev.and_then(|p| std::fs::read_to_string(p).ok()) {
        Some(text) => parse_major_minor(text.trim()).map(|(a, b)| device_id(a, b)).unwrap_or(id),
        None => id,
    }
}

fn parse_major_minor(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// `--devices` patterns: globs that include, `!glob` that exclude. No include pattern means
/// "everything not excluded".
#[derive(Debug, Clone, Default)]
pub struct DeviceFilter {
    include: Vec<glob::Pattern>,
    exclude: Vec<glob::Pattern>,
}

impl DeviceFilter {
    pub fn new(patterns: &[String]) -> Result<DeviceFilter> {
        let mut f = DeviceFilter::default();
        for p in patterns.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
            let (list, pat) = match p.strip_prefix('!') {
                Some(rest) => (&mut f.exclude, rest),
                None => (&mut f.include, p),
            };
            let compiled = glob::Pattern::new(pat).map_err(|e| Error::Config {
                what: "--devices pattern",
                value: p.to_string(),
                reason: format!("{e}; use shell globs such as `nvme*` or `!loop*`"),
            })?;
            list.push(compiled);
        }
        Ok(f)
    }

    pub fn allows(&self, name: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|p| p.matches(name)))
            && !self.exclude.iter().any(|p| p.matches(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DISKSTATS: &str = "   7       0 loop0 2000 0 16000 120 3000 0 24000 300 0 400 420 0 0 0 0 0 0
 259       0 nvme0n1 10 0 80 1 20 0 160 2 3 4 5 6 7 8 9 10 11
 259       1 nvme0n1p1 1 0 8 1 2 0 16 2 0 4 5 6 7 8 9 10 11
   8       0 sda 1 2 3 4 5 6 7 8 9 10 11
garbage line
";

    fn fixture() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("proc")).unwrap();
        std::fs::write(r.join("proc/diskstats"), DISKSTATS).unwrap();
        // sysfs: /sys/block/nvme0n1/{dev,inflight,nvme0n1p1/{dev,partition}} with
        // /sys/dev/block/M:m symlinks, as the kernel lays it out.
        let disk = r.join("sys/devices/virtual/block/nvme0n1");
        std::fs::create_dir_all(disk.join("nvme0n1p1")).unwrap();
        std::fs::write(disk.join("dev"), "259:0\n").unwrap();
        std::fs::write(disk.join("inflight"), "       3        4\n").unwrap();
        std::fs::write(disk.join("nvme0n1p1/dev"), "259:1\n").unwrap();
        std::fs::write(disk.join("nvme0n1p1/partition"), "1\n").unwrap();
        std::fs::create_dir_all(r.join("sys/dev/block")).unwrap();
        std::fs::create_dir_all(r.join("sys/block")).unwrap();
        std::os::unix::fs::symlink(&disk, r.join("sys/dev/block/259:0")).unwrap();
        std::os::unix::fs::symlink(disk.join("nvme0n1p1"), r.join("sys/dev/block/259:1")).unwrap();
        std::os::unix::fs::symlink(&disk, r.join("sys/block/nvme0n1")).unwrap();
        root
    }

    #[test]
    fn parses_diskstats_fields() {
        let s = parse_diskstats(DISKSTATS);
        assert_eq!(s.len(), 4);
        assert_eq!((s[0].name.as_str(), s[0].reads_completed, s[0].writes_completed), ("loop0", 2000, 3000));
        assert_eq!(s[0].discards_completed, Some(0));
        assert_eq!(s[1].in_flight, 3);
        assert_eq!(s[1].flushes_completed, Some(10));
        assert_eq!(s[3].discards_completed, None);
    }

    #[test]
    fn parses_the_time_counters() {
        let s = parse_diskstats(DISKSTATS);
        assert_eq!((s[0].io_ticks_ms, s[0].time_in_queue_ms), (400, 420));
        assert_eq!((s[3].io_ticks_ms, s[3].time_in_queue_ms), (10, 11));
    }

    #[test]
    fn time_counter_deltas_undo_the_32_bit_wrap() {
        assert_eq!(wrapping_delta_u32(100, 350), 250);
        assert_eq!(wrapping_delta_u32(u64::from(u32::MAX) - 9, 5), 15);
        assert_eq!(wrapping_delta_u32(1 << 33, (1 << 33) + 7), 7);
        assert_eq!(wrapping_delta_u32(1 << 33, 3), 0, "never negative");
    }

    /// Known answers: two readings 2 s apart of a device busy 1500 ms with 6000 ms of summed
    /// request time -> 75 % utilization and an average queue of 3 (iostat's `%util`, `aqu-sz`).
    #[test]
    fn disk_times_are_the_deltas_of_fields_10_and_11() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("proc")).unwrap();
        let line = |ticks: u64, queue: u64| {
            format!(
                " 259       0 nvme0n1 10 0 80 1 20 0 160 2 3 {ticks} {queue} 0 0 0 0 0 0\n   7 0 loop0 1 0 8 1 2 0 16 2 0 {ticks} {queue}\n"
            )
        };
        std::fs::write(r.join("proc/diskstats"), line(4_294_966_000, 100)).unwrap();
        let mut t = DiskTimes::new(r);
        let got = t.sample(Some(&parse_diskstats(&line(500, 6100))), [(device_id(259, 0), "nvme0n1")]);
        assert_eq!(got.len(), 1, "only devices the intervals carry: {got:?}");
        assert_eq!((got[0].name.as_str(), got[0].io_time_ms, got[0].weighted_io_time_ms), ("nvme0n1", 1796, 6000));
        let mut iv = crate::interval::Interval::empty(100.0, 2.0, "n", 0, "btf");
        iv.disk_time = got;
        let snap = iv.snapshot();
        assert_eq!(snap.disk_time[0].utilization, 0.898);
        assert_eq!(snap.disk_time[0].avg_queue_size, 3.0);
        // A device seen once keeps being reported, idle or not.
        let got = t.sample(Some(&parse_diskstats(&line(500, 6100))), []);
        assert_eq!((got.len(), got[0].io_time_ms, got[0].weighted_io_time_ms), (1, 0, 0));
        // No reading this interval: nothing; the next reading covers both intervals.
        assert!(t.sample(None, []).is_empty());
        let got = t.sample(Some(&parse_diskstats(&line(700, 6400))), []);
        assert_eq!((got[0].io_time_ms, got[0].weighted_io_time_ms), (200, 300));
    }

    #[test]
    fn names_partitions_as_their_disk_and_unknown_ids() {
        let root = fixture();
        let mut names = DeviceNames::new(root.path(), root.path()).unwrap();
        assert_eq!(names.name(device_id(7, 0)), "loop0");
        assert_eq!(names.name(device_id(259, 1)), "nvme0n1");
        assert_eq!(names.name(device_id(253, 3)), "unknown-253:3");
        assert_eq!(device_id(259, 0), 271_581_184, "the seed's example id");
        assert_eq!(names.sysfs_inflight("nvme0n1"), Some(7));
        assert_eq!(names.sysfs_inflight("sdz"), None);
    }

    #[test]
    fn rereads_diskstats_for_new_devices() {
        let root = fixture();
        let mut names = DeviceNames::new(root.path(), root.path()).unwrap();
        let text = format!("{DISKSTATS}   7       5 loop5 1 0 8 1 2 0 16 2 0 4 5\n");
        std::fs::write(root.path().join("proc/diskstats"), text).unwrap();
        assert_eq!(names.name(device_id(7, 5)), "loop5");
    }

    #[test]
    fn missing_diskstats_is_a_clear_error() {
        let root = tempfile::tempdir().unwrap();
        let err = DeviceNames::new(root.path(), root.path()).err().unwrap().to_string();
        assert!(err.contains("proc/diskstats"), "{err}");
    }

    #[test]
    fn device_filter_includes_and_excludes() {
        let f = DeviceFilter::new(&["!loop*".into(), "!ram*".into()]).unwrap();
        assert!(f.allows("nvme0n1") && !f.allows("loop3") && !f.allows("ram0"));
        let f = DeviceFilter::new(&["nvme*".into(), "!nvme1n1".into()]).unwrap();
        assert!(f.allows("nvme0n1") && !f.allows("nvme1n1") && !f.allows("sda"));
        assert!(DeviceFilter::new(&[]).unwrap().allows("anything"));
        let err = DeviceFilter::new(&["[".into()]).unwrap_err().to_string();
        assert!(err.contains("--devices"), "{err}");
    }
}
