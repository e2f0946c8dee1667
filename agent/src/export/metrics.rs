//! The one list of exported metrics: names, units and descriptions shared by the OTLP encoder and
//! the Prometheus renderer, so the two can never disagree. `docs/export.md` documents each entry
//! (a test checks that every name appears there).

use crate::histogram::{HIST_SLOTS, bucket_high, upper_bound_seconds};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Explicit-bucket histogram over the 32 log2 slots.
    Histogram,
    /// Monotonic sum (a counter).
    Counter,
    Gauge,
}

/// How the integer values of a metric become floating point: histogram bounds, sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// Values are nanoseconds, exported in seconds; bounds are the µs slot edges in seconds.
    NanosToSeconds,
    /// Values are plain integers (bytes, counts); bounds are the slot edges as integers.
    Unit,
}

#[derive(Debug)]
pub struct MetricDef {
    pub name: &'static str,
    pub unit: &'static str,
    pub description: &'static str,
    pub kind: Kind,
    pub scale: Scale,
}

/// Metrics are identified by name.
impl PartialEq for MetricDef {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

macro_rules! metric {
    ($id:ident, $name:literal, $unit:literal, $kind:ident, $scale:ident, $desc:literal) => {
        pub static $id: MetricDef =
            MetricDef { name: $name, unit: $unit, description: $desc, kind: Kind::$kind, scale: Scale::$scale };
    };
}

metric!(
    REQUEST_DURATION,
    "blkio.request.duration",
    "s",
    Histogram,
    NanosToSeconds,
    "Block request device time (issue to completion), from the kernel's log2 histograms; exact count and sum."
);
metric!(
    QUEUE_DURATION,
    "blkio.queue.duration",
    "s",
    Histogram,
    NanosToSeconds,
    "Block request queue time (insert to issue); requests never queued count as 0."
);
metric!(
    REQUEST_SIZE,
    "blkio.request.size",
    "By",
    Histogram,
    Unit,
    "Block request size; the sum is the exact number of bytes transferred."
);
metric!(
    POD_REQUEST_DURATION,
    "blkio.pod.request.duration",
    "s",
    Histogram,
    NanosToSeconds,
    "Device time of the requests submitted by one pod (or cgroup), when pod attribution is on."
);
metric!(POD_IO, "blkio.pod.io", "By", Counter, Unit, "Bytes transferred by the requests of one pod (or cgroup).");
metric!(
    INFLIGHT,
    "blkio.inflight",
    "{request}",
    Gauge,
    Unit,
    "Requests in flight on the device at the end of the interval."
);
metric!(
    INFLIGHT_PEAK,
    "blkio.inflight.peak",
    "{request}",
    Gauge,
    Unit,
    "Highest number of requests in flight during the interval (during the export window for OTLP)."
);
metric!(DISK_OPERATIONS, "system.disk.operations", "{operation}", Counter, Unit, "Completed block requests (exact).");
metric!(
    DISK_OPERATION_TIME,
    "system.disk.operation_time",
    "s",
    Counter,
    NanosToSeconds,
    "Sum of the time each request took from insert to completion (queue + device time), as /proc/diskstats defines it."
);
metric!(DISK_IO, "system.disk.io", "By", Counter, Unit, "Bytes transferred by completed block requests (exact).");
metric!(
    EVENTS_LOST,
    "blkio.agent.events.lost",
    "{event}",
    Counter,
    Unit,
    "Kernel events the agent could not measure, by kind (blkio.event.kind)."
);
metric!(
    EVENTS_NOTED,
    "blkio.agent.events.noted",
    "{event}",
    Counter,
    Unit,
    "Unusual but measured events (requeued requests, partial completions), by kind."
);
metric!(
    SNAPSHOTS,
    "blkio.agent.snapshots",
    "{snapshot}",
    Counter,
    Unit,
    "Snapshots taken (the same count as JSONL lines)."
);
metric!(
    SNAPSHOT_BUILD_TIME,
    "blkio.agent.snapshot.build_time",
    "s",
    Gauge,
    NanosToSeconds,
    "Time the last snapshot took to build from the kernel maps."
);
metric!(JSONL_WRITTEN, "blkio.agent.jsonl.written", "By", Counter, Unit, "Bytes of JSONL written.");
metric!(
    EXPORT_FAILURES,
    "blkio.agent.export.failures",
    "{failure}",
    Counter,
    Unit,
    "Failed OTLP export attempts, by error.type (HTTP status, gRPC code, timeout, transport)."
);
metric!(
    EXPORT_DROPPED,
    "blkio.agent.export.dropped",
    "{batch}",
    Counter,
    Unit,
    "OTLP batches dropped: the oldest ones when the queue is full during an outage, and those the collector rejected for good."
);
metric!(
    NODE_IO_STALL,
    "blkio.node.io.pressure.stall",
    "s",
    Counter,
    NanosToSeconds,
    "Time the node's tasks were stalled on I/O (PSI /proc/pressure/io; blkio.pressure.kind some or full), summed over the agent's intervals."
);
metric!(
    POD_IO_STALL,
    "blkio.pod.io.pressure.stall",
    "s",
    Counter,
    NanosToSeconds,
    "Time one pod's tasks were stalled on I/O (its cgroup's io.pressure; blkio.pressure.kind some or full), summed over the intervals it was attributed in."
);
metric!(EXPORT_QUEUED, "blkio.agent.export.queued", "{batch}", Gauge, Unit, "OTLP batches waiting to be sent.");

/// Every metric, in the order they are encoded.
pub const ALL: &[&MetricDef] = &[
    &REQUEST_DURATION,
    &QUEUE_DURATION,
    &REQUEST_SIZE,
    &POD_REQUEST_DURATION,
    &POD_IO,
    &INFLIGHT,
    &INFLIGHT_PEAK,
    &DISK_OPERATIONS,
    &DISK_OPERATION_TIME,
    &DISK_IO,
    &NODE_IO_STALL,
    &POD_IO_STALL,
    &EVENTS_LOST,
    &EVENTS_NOTED,
    &SNAPSHOTS,
    &SNAPSHOT_BUILD_TIME,
    &JSONL_WRITTEN,
    &EXPORT_FAILURES,
    &EXPORT_DROPPED,
    &EXPORT_QUEUED,
];

/// Attribute keys (OTel semantic conventions where one exists).
pub mod attr {
    pub const DEVICE: &str = "system.device";
    pub const DIRECTION: &str = "disk.io.direction";
    pub const OPERATION: &str = "blkio.operation";
    pub const NAMESPACE: &str = "k8s.namespace.name";
    pub const POD: &str = "k8s.pod.name";
    pub const POD_UID: &str = "k8s.pod.uid";
    pub const CONTAINER: &str = "k8s.container.name";
    pub const CGROUP: &str = "blkio.cgroup";
    pub const EVENT_KIND: &str = "blkio.event.kind";
    pub const ERROR_TYPE: &str = "error.type";
    /// PSI line: `some` (at least one task stalled) or `full` (all non-idle tasks).
    pub const PRESSURE_KIND: &str = "blkio.pressure.kind";
}

/// Number of buckets of every histogram point: one per kernel slot. The last slot also holds
/// everything the kernel clamped into it, so it is the overflow bucket `(bound[30], +Inf)`.
pub const BUCKETS: usize = HIST_SLOTS;

/// The 31 explicit bounds of a histogram: the inclusive upper edge of slots 0..=30.
///
/// Time bounds are `(2^(k+1) - 1) / 1e6` seconds computed as integer / 1e6 (one rounding, so 15 µs
/// is exactly `1.5e-5`); an integer µs value `v` in slot `k` is `<=` bound `k` and `>` bound
/// `k - 1` after the same division, so the OTLP bucket of every request equals its kernel slot.
pub fn explicit_bounds(scale: Scale) -> Vec<f64> {
    (0..BUCKETS as u32 - 1)
        .map(|slot| match scale {
            Scale::NanosToSeconds => upper_bound_seconds(slot),
            Scale::Unit => bucket_high(slot) as f64,
        })
        .collect()
}

/// Converts an exact integer total to the exported floating-point value.
pub fn scaled(value: u128, scale: Scale) -> f64 {
    match scale {
        // Split so that sums beyond 2^53 ns (104 days of device time) keep nanosecond precision
        // in the integer part instead of losing it in one big float division.
        Scale::NanosToSeconds => (value / 1_000_000_000) as f64 + (value % 1_000_000_000) as f64 / 1e9,
        Scale::Unit => value as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_the_exact_slot_edges() {
        let b = explicit_bounds(Scale::NanosToSeconds);
        assert_eq!(b.len(), 31);
        assert_eq!(b[0], 1e-6);
        assert_eq!(b[3], 15e-6);
        assert_eq!(b[9], 1023e-6);
        assert_eq!(b[30], 2147.483647);
        assert!(b.windows(2).all(|w| w[0] < w[1]));
        let bytes = explicit_bounds(Scale::Unit);
        assert_eq!(bytes[11], 4095.0);
        assert_eq!(bytes[30], (u32::MAX >> 1) as f64);
    }

    #[test]
    fn every_integer_microsecond_lands_in_its_kernel_slot() {
        let b = explicit_bounds(Scale::NanosToSeconds);
        for v in (0u64..5000).chain([65_535, 65_536, 1 << 20, (1 << 31) - 1, 1 << 31, 1 << 40]) {
            let secs = v as f64 / 1e6;
            // OTLP bucket i holds values in (bounds[i-1], bounds[i]]; the last is unbounded.
            let otlp_bucket = b.iter().position(|&ub| secs <= ub).unwrap_or(b.len());
            let kernel_slot = (crate::histogram::log2_slot(v) as usize).min(BUCKETS - 1);
            assert_eq!(otlp_bucket, kernel_slot, "{v} µs");
        }
    }

    #[test]
    fn scaling_keeps_nanoseconds() {
        assert_eq!(scaled(1_500_000_000, Scale::NanosToSeconds), 1.5);
        assert_eq!(scaled(12_345, Scale::NanosToSeconds), 12_345e-9);
        assert_eq!(scaled(7, Scale::Unit), 7.0);
    }

    #[test]
    fn docs_list_every_metric() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/export.md");
        let doc = std::fs::read_to_string(&path).expect("docs/export.md");
        for m in ALL {
            assert!(doc.contains(&format!("`{}`", m.name)), "{} is not documented in {}", m.name, path.display());
        }
    }
}
