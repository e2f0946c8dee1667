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
    "Highest number of requests in flight since the previous scrape (Prometheus) or export (OTLP), so that no interval's peak is missed."
);
metric!(
    INFLIGHT_PEAK_UPPER,
    "blkio.inflight.peak.upper",
    "{request}",
    Gauge,
    Unit,
    "Upper bound of the highest number of requests in flight over the same window as blkio.inflight.peak: equal to it when the device's I/O used one hardware queue, else the sum of each queue's highest depth (the device's own peak lies between the two)."
);
metric!(
    UNSEEN_COMPLETIONS,
    "blkio.completions.unseen",
    "{request}",
    Counter,
    Unit,
    "Completions the kernel counted for the device (/proc/diskstats) that the agent's programs did not see, so are in no histogram; node-wide also blkio.agent.events.lost{blkio.event.kind=unseen_completions}."
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
metric!(
    DISK_IO_TIME,
    "system.disk.io_time",
    "s",
    Counter,
    NanosToSeconds,
    "Time the device had at least one request in flight (/proc/diskstats field 10, io_ticks): rate() is the utilization (iostat %util / 100)."
);
metric!(
    DISK_WEIGHTED_IO_TIME,
    "system.disk.weighted_io_time",
    "s",
    Counter,
    NanosToSeconds,
    "Request time summed over requests in flight (/proc/diskstats field 11, time_in_queue): rate() is the average queue size (iostat aqu-sz)."
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
    &INFLIGHT_PEAK_UPPER,
    &UNSEEN_COMPLETIONS,
    &DISK_OPERATIONS,
    &DISK_OPERATION_TIME,
    &DISK_IO,
    &DISK_IO_TIME,
    &DISK_WEIGHTED_IO_TIME,
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

/// Number of kernel slots of every histogram (the totals keep all of them; the exported
/// buckets are a [`BucketRange`] of them).
pub const BUCKETS: usize = HIST_SLOTS;

/// Which kernel slots get an explicit bound of their own when exported. Slots below `first` are
/// merged into the first bucket (`le` = the edge of `first`), slots above `last` into the
/// overflow bucket (`+Inf`): `last - first + 2` buckets, counts and sums unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketRange {
    pub first: u32,
    pub last: u32,
}

impl BucketRange {
    /// Every slot: 31 bounds (slot 31, where the kernel clamps everything larger, is `+Inf`).
    pub const FULL: BucketRange = BucketRange { first: 0, last: BUCKETS as u32 - 2 };
    /// Request sizes: the first bound is 511 B (block requests are whole 512 B sectors; flushes
    /// carry 0 bytes and land there), the last 128 MiB - 1; larger (big discards) is `+Inf`.
    pub const SIZE: BucketRange = BucketRange { first: 8, last: 26 };

    /// Times up to `max_s` seconds: the last bound is the first slot edge `2^(k+1)` µs that is
    /// `>= max_s` (16 s -> slot 23, edge 16.777216 s); at most the full range.
    pub fn time_up_to(max_s: f64) -> BucketRange {
        let us = (max_s * 1e6).ceil().max(1.0);
        let last = (0..=Self::FULL.last).find(|&k| (1u64 << (k + 1)) as f64 >= us).unwrap_or(Self::FULL.last);
        BucketRange { first: 0, last }
    }

    /// Number of exported buckets, `+Inf` included.
    pub fn buckets(self) -> usize {
        (self.last - self.first) as usize + 2
    }

    /// Per-bucket counts of the exported buckets (not cumulative), from the kernel's slots.
    pub fn counts(self, slots: &[u64; BUCKETS]) -> Vec<u64> {
        let (first, last) = (self.first as usize, self.last as usize);
        let mut out = Vec::with_capacity(self.buckets());
        out.push(slots[..=first].iter().sum());
        out.extend_from_slice(&slots[first + 1..=last]);
        out.push(slots[last + 1..].iter().sum());
        out
    }
}

/// The export ranges of the two kinds of histograms (`--histogram-max` sets the time range).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ranges {
    pub time: BucketRange,
    pub size: BucketRange,
}

/// The default `--histogram-max`, seconds.
pub const DEFAULT_HISTOGRAM_MAX_S: f64 = 16.0;

impl Default for Ranges {
    fn default() -> Self {
        Ranges { time: BucketRange::time_up_to(DEFAULT_HISTOGRAM_MAX_S), size: BucketRange::SIZE }
    }
}

impl Ranges {
    pub fn for_scale(&self, scale: Scale) -> BucketRange {
        match scale {
            Scale::NanosToSeconds => self.time,
            Scale::Unit => self.size,
        }
    }
}

/// The explicit bounds of a histogram over `range`: the upper edge of slots `first..=last`.
///
/// Time bounds are the exact edges `2^(k+1) / 1e6` seconds ([`upper_bound_seconds`]): the kernel
/// floors ns to µs, so a request counted in slot `k` really took `[2^k, 2^(k+1))` µs. Size bounds
/// are the inclusive integer edges `2^(k+1) - 1` bytes (sizes are exact integers). Either way the
/// exported bucket of every request is its kernel slot.
pub fn explicit_bounds(scale: Scale, range: BucketRange) -> Vec<f64> {
    (range.first..=range.last)
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
        let b = explicit_bounds(Scale::NanosToSeconds, BucketRange::FULL);
        assert_eq!(b.len(), 31);
        assert_eq!(b[0], 2e-6);
        assert_eq!(b[3], 16e-6);
        assert_eq!(b[9], 1024e-6);
        assert_eq!(b[30], 2147.483648);
        for (k, v) in b.iter().enumerate() {
            assert_eq!(*v, 2f64.powi(k as i32 + 1) / 1e6, "slot {k}");
        }
        assert!(b.windows(2).all(|w| w[0] < w[1]));
        let bytes = explicit_bounds(Scale::Unit, BucketRange::FULL);
        assert_eq!(bytes[11], 4095.0);
        assert_eq!(bytes[30], (u32::MAX >> 1) as f64);
        let sizes = explicit_bounds(Scale::Unit, BucketRange::SIZE);
        assert_eq!((sizes[0], *sizes.last().unwrap(), sizes.len()), (511.0, 134_217_727.0, 19));
    }

    #[test]
    fn every_real_duration_lands_in_its_kernel_slot() {
        let b = explicit_bounds(Scale::NanosToSeconds, BucketRange::FULL);
        // Durations in ns, floored to µs as the kernel does; the real value must lie in its
        // bucket (bound[k-1], bound[k]) (strictly below the edge: 31.999 µs is below 32 µs).
        for ns in (0u64..5_000_000).step_by(997).chain([31_900, 31_999, 32_000, 65_535_999, (1 << 31) * 1000 - 1]) {
            let secs = ns as f64 / 1e9;
            let slot = (crate::histogram::log2_slot(ns / 1000) as usize).min(BUCKETS - 1);
            let upper = b.get(slot).copied().unwrap_or(f64::INFINITY);
            let lower = if slot == 0 { 0.0 } else { b[slot - 1] };
            assert!(lower <= secs && secs < upper, "{ns} ns: slot {slot} is [{lower}, {upper})");
        }
    }

    #[test]
    fn histogram_max_picks_the_first_edge_at_or_above_it() {
        let r = BucketRange::time_up_to(16.0);
        assert_eq!(r, BucketRange { first: 0, last: 23 });
        assert_eq!(upper_bound_seconds(r.last), 16.777216);
        assert_eq!(r.buckets(), 25);
        assert_eq!(Ranges::default().time, r);
        assert_eq!(BucketRange::time_up_to(16.777216).last, 23);
        assert_eq!(BucketRange::time_up_to(16.78).last, 24);
        assert_eq!(BucketRange::time_up_to(0.000001).last, 0);
        assert_eq!(BucketRange::time_up_to(1e9), BucketRange::FULL);
    }

    #[test]
    fn merged_buckets_keep_every_count() {
        let mut slots = [0u64; BUCKETS];
        for (i, s) in slots.iter_mut().enumerate() {
            *s = i as u64 + 1;
        }
        let c = BucketRange::SIZE.counts(&slots);
        assert_eq!(c.len(), BucketRange::SIZE.buckets());
        assert_eq!(c[0], (1..=9).sum::<u64>(), "slots 0..=8 in the first bucket");
        assert_eq!(c[1], 10);
        assert_eq!(*c.last().unwrap(), (28..=32).sum::<u64>(), "slots 27..=31 overflow");
        assert_eq!(c.iter().sum::<u64>(), slots.iter().sum::<u64>());
        assert_eq!(BucketRange::FULL.counts(&slots), slots.to_vec());
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
