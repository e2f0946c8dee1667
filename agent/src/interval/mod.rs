//! The agent's one model of an interval: what the kernel counted per device and op (exact slot
//! arrays, counts, byte and nanosecond sums), the in-flight depth and its peak, pod series and
//! losses. The collector builds it once per interval; every output renders it — JSONL
//! ([`Interval::snapshot`]), OTLP and Prometheus (`export::model::Totals::add`) and the live
//! view — and none of them reads another one's output back.

mod jsonl;

use crate::{histogram::HIST_SLOTS, losses::Losses, pressure::Pressure};

/// Exact log2 histogram of one interval: per-slot counts and the exact sum of the values
/// (nanoseconds for times, bytes for sizes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hist {
    pub slots: [u64; HIST_SLOTS],
    pub sum: u64,
}

impl Default for Hist {
    fn default() -> Self {
        Hist { slots: [0; HIST_SLOTS], sum: 0 }
    }
}

impl Hist {
    pub fn new(slots: [u64; HIST_SLOTS], sum: u64) -> Hist {
        Hist { slots, sum }
    }

    pub fn count(&self) -> u64 {
        self.slots.iter().sum()
    }

    /// Adds `other`. Saturating: interval deltas cannot realistically overflow, and a panic here
    /// would take the agent down over a statistic.
    pub fn add(&mut self, other: &Hist) {
        for (a, b) in self.slots.iter_mut().zip(&other.slots) {
            *a = a.saturating_add(*b);
        }
        self.sum = self.sum.saturating_add(other.sum);
    }
}

/// Completed requests of one (device, op) in the interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpInterval {
    /// `read`, `write`, `discard`, `flush` or `other` (`blkio_agent_common::OP_NAMES`).
    pub op: &'static str,
    pub count: u64,
    pub bytes: u64,
    /// Issue -> complete, µs slots, sum in ns.
    pub device_time: Hist,
    /// Insert -> issue, µs slots (never-queued requests in slot 0), sum in ns.
    pub queue_time: Hist,
    /// Request size, log2 byte slots, sum in bytes.
    pub size: Hist,
}

/// In-flight depth of one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Depth {
    /// Requests in flight at the end of the interval (tracked since the agent started).
    pub count: u64,
    /// Highest depth during the interval: exact when one hardware queue's line moved, else the
    /// highest line's, a depth the device had (`collector::depth`).
    pub peak: u64,
    /// Upper bound of the interval's highest depth: `peak` when that is exact, else the sum of
    /// each queue line's highest value.
    pub peak_upper: u64,
    /// `/sys/block/<dev>/inflight` when it was read (only to judge a gauge that looks stuck).
    pub sysfs: Option<u64>,
}

/// One device: its ops with completions (in op order), and its depth when the kernel has a
/// gauge for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInterval {
    /// `(major << 20) | minor`.
    pub id: u32,
    pub name: String,
    pub ops: Vec<OpInterval>,
    pub depth: Option<Depth>,
    /// Completions in the interval that the kernel counted (`/proc/diskstats`) and the agent did
    /// not record (`collector::reconcile`); `None` for a device that is not reconciled.
    pub unseen: Option<u64>,
}

impl DeviceInterval {
    /// Device time of all ops together.
    pub fn device_time(&self) -> Hist {
        let mut h = Hist::default();
        for o in &self.ops {
            h.add(&o.device_time);
        }
        h
    }

    pub fn count(&self) -> u64 {
        self.ops.iter().map(|o| o.count).sum()
    }

    pub fn bytes(&self) -> u64 {
        self.ops.iter().map(|o| o.bytes).sum()
    }
}

/// Who submitted a pod series' I/O: a pod (names when the API is reachable, else its UID) or a
/// non-pod cgroup (`cgroup` path, `"other"` past the cardinality limit).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodLabels {
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub pod_uid: Option<String>,
    pub container: Option<String>,
    pub cgroup: Option<String>,
}

/// I/O of one pod (or cgroup) on one (device, op) in the interval.
#[derive(Debug, Clone, PartialEq)]
pub struct PodSeries {
    pub labels: PodLabels,
    pub device_id: u32,
    pub device_name: String,
    pub op: &'static str,
    pub count: u64,
    pub bytes: u64,
    pub device_time: Hist,
    /// The pod's cgroup v2 `io.pressure` (PSI; the pod's, on each of its series); `None` for
    /// non-pod series and where PSI is unavailable.
    pub io_pressure: Option<Pressure>,
}

/// Everything one interval produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Interval {
    /// End of the interval, Unix epoch seconds.
    pub end_s: f64,
    /// Seconds covered (measured).
    pub interval_s: f64,
    pub node: String,
    /// Interval number since the agent started (0-based).
    pub seq: u64,
    /// `btf` or `tracepoint`.
    pub attach: &'static str,
    /// Devices the filter keeps, by id.
    pub devices: Vec<DeviceInterval>,
    pub pods: Vec<PodSeries>,
    /// This interval's counts, and the totals since start.
    pub losses: Losses,
    pub losses_total: Losses,
    /// Whether the fast path (no start map) is in effect; `None` where the agent has no programs.
    pub path: Option<PathStatus>,
    /// The node's `/proc/pressure/io` (PSI); `None` where the kernel has none.
    pub io_pressure: Option<Pressure>,
    /// Busy and weighted I/O time of the interval's devices from `/proc/diskstats` (the run loop
    /// adds them: they are the kernel's own counters, not the programs').
    pub disk_time: Vec<DiskTime>,
    /// Which run of the agent produced this interval; `None` only in fixtures.
    pub run: Option<RunIdentity>,
}

/// One device's `/proc/diskstats` time counters over the interval (fields 10 and 11 of
/// <https://www.kernel.org/doc/html/latest/admin-guide/iostats.html>), as iostat uses them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskTime {
    pub id: u32,
    pub name: String,
    /// Field 10 delta: ms during which the device had at least one request in flight
    /// (`io_ticks`; `%util` = this / interval).
    pub io_time_ms: u64,
    /// Field 11 delta: ms of request time summed over requests, i.e. in-flight count integrated
    /// over time (`time_in_queue`; iostat's `aqu-sz` = this / interval).
    pub weighted_io_time_ms: u64,
}

/// A run of the agent: random 128-bit id (hex) and start time, so that `(node, run_id, seq)` is
/// unique across restarts and a restart shows as a new run id.
#[derive(Debug, Clone, PartialEq)]
pub struct RunIdentity {
    pub id: String,
    /// Unix epoch seconds when the agent started.
    pub started_s: f64,
}

impl RunIdentity {
    /// A new run starting now: 16 bytes from the kernel's CSPRNG (`getrandom(2)`).
    pub fn new() -> RunIdentity {
        let mut b = [0u8; 16];
        // getrandom(2) only fails for bad arguments or before the pool is seeded at early boot
        // (it then blocks, flags 0); the fallback keeps the agent running with a weaker id.
        let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
        if n != b.len() as isize {
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            b[..8].copy_from_slice(&(t.as_nanos() as u64).to_le_bytes());
            b[8..12].copy_from_slice(&std::process::id().to_le_bytes());
        }
        let started_s =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        RunIdentity { id: b.iter().map(|x| format!("{x:02x}")).collect(), started_s }
    }
}

impl Default for RunIdentity {
    fn default() -> Self {
        Self::new()
    }
}

/// The fast path's state (`loader::fastpath`) and this interval's path counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathStatus {
    /// `on`, `verifying`, `failed` or `unavailable`.
    pub fast: &'static str,
    /// Where the stats flag values came from: `btf` or `kernel-table` (`None` when unavailable).
    pub flags: Option<&'static str>,
    /// Completions counted from the request's own timestamps, all devices.
    pub fast_completions: u64,
    /// Completions whose stats flags disagreed with `io_start_time_ns` (self-test).
    pub flag_disagreements: u64,
}

impl Interval {
    /// An interval with no devices, pods or losses (fixtures, and the start of a builder).
    pub fn empty(end_s: f64, interval_s: f64, node: &str, seq: u64, attach: &'static str) -> Interval {
        Interval {
            end_s,
            interval_s,
            node: node.to_string(),
            seq,
            attach,
            devices: Vec::new(),
            pods: Vec::new(),
            losses: Losses::default(),
            losses_total: Losses::default(),
            path: None,
            io_pressure: None,
            disk_time: Vec::new(),
            run: None,
        }
    }
}
