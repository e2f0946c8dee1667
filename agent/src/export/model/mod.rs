//! Exact running totals of the published intervals, and the flat list of metric points built from
//! them that both encoders (OTLP, Prometheus) consume.
//!
//! Intervals ([`Interval`], the collector's model) hold deltas. Cumulative values are the integer sums of every delta since
//! the agent started, so they equal the JSONL totals exactly; delta temporality is the difference
//! of two cumulative collections (again integers), so both temporalities carry the same numbers.

use std::collections::BTreeMap;

use super::metrics::{self, BUCKETS, MetricDef, Ranges, attr};
use crate::{interval::Interval, losses::Losses, pressure::Pressure};

/// Per-pod series with no I/O for this long are forgotten, so pod churn cannot grow memory
/// without bound. A pod that resumes I/O later starts a new series (new start time).
pub const POD_SERIES_TTL_NS: u64 = 600 * 1_000_000_000;

/// Exact log2 histogram: per-slot counts plus an exact integer sum (ns or bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hist {
    pub slots: [u64; BUCKETS],
    pub sum: u128,
}

impl Default for Hist {
    fn default() -> Self {
        Hist { slots: [0; BUCKETS], sum: 0 }
    }
}

impl Hist {
    fn add(&mut self, h: &crate::interval::Hist) {
        for (a, b) in self.slots.iter_mut().zip(&h.slots) {
            *a += b;
        }
        self.sum += u128::from(h.sum);
    }

    pub fn count(&self) -> u64 {
        self.slots.iter().sum()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct OpKey {
    device: String,
    op: String,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct PodKey {
    device: String,
    op: String,
    namespace: Option<String>,
    pod: Option<String>,
    pod_uid: Option<String>,
    container: Option<String>,
    cgroup: Option<String>,
}

#[derive(Debug, Clone)]
struct OpSeries {
    start_ns: u64,
    count: u64,
    bytes: u128,
    device_time: Hist,
    queue_time: Hist,
    size: Hist,
}

#[derive(Debug, Clone)]
struct PodSeries {
    start_ns: u64,
    last_seen_ns: u64,
    bytes: u128,
    device_time: Hist,
}

/// Everything needed to build the points, summed over all snapshots since the agent started.
/// One pod's I/O stall (PSI) summed over the intervals that carried it, ns.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct StallKey {
    namespace: Option<String>,
    pod: Option<String>,
    pod_uid: Option<String>,
}

#[derive(Debug, Clone, Default)]
struct Stall {
    start_ns: u64,
    last_seen_ns: u64,
    some_ns: u128,
    full_ns: u128,
}

impl Stall {
    fn add(&mut self, p: &Pressure) {
        self.some_ns += u128::from(p.some.delta_us.unwrap_or(0)) * 1000;
        self.full_ns += u128::from(p.full.delta_us.unwrap_or(0)) * 1000;
    }
}

#[derive(Debug, Default)]
pub struct Totals {
    ops: BTreeMap<OpKey, OpSeries>,
    pods: BTreeMap<PodKey, PodSeries>,
    /// PSI: the node's (present once an interval carried it) and each pod's.
    node_stall: Option<Stall>,
    pod_stall: BTreeMap<StallKey, Stall>,
    /// `None` until the first interval, whose table of kinds the totals then follow.
    losses: Option<Losses>,
    /// Device -> (in flight at the end of the last snapshot, that snapshot's peak).
    inflight: BTreeMap<String, (u64, Peak)>,
    /// Device -> highest depth since the window began, one window per reader: the OTLP export
    /// and the `/metrics` scrape each see every peak once (the scrape window is restarted by
    /// each scrape, the OTLP one by each export).
    windows: [BTreeMap<String, Peak>; 2],
    /// Device -> (series start, unseen completions since then), for reconciled devices.
    unseen: BTreeMap<String, (u64, u64)>,
    /// Device -> /proc/diskstats (io_time, weighted_io_time) since start, ms.
    disk_time: BTreeMap<String, (u64, u128, u128)>,
    /// Start of the first snapshot's interval: when counting began.
    pub start_ns: Option<u64>,
    /// End of the last snapshot's interval.
    pub last_ns: u64,
    pub snapshots: u64,
    /// Snapshots added since the last OTLP collection.
    pub since_collect: u64,
}

fn epoch_ns(secs: f64) -> u64 {
    if secs.is_finite() && secs > 0.0 { (secs * 1e9).round() as u64 } else { 0 }
}

impl Totals {
    pub fn add(&mut self, iv: &Interval) {
        let end_ns = epoch_ns(iv.end_s);
        let begin_ns = end_ns.saturating_sub(epoch_ns(iv.interval_s));
        let start_ns = *self.start_ns.get_or_insert(begin_ns);
        // Series first seen now started counting at the beginning of this interval (they were zero
        // before); series present from the first interval share the agent's start.
        let series_start = begin_ns.max(start_ns);
        for d in &iv.devices {
            for o in &d.ops {
                let key = OpKey { device: d.name.clone(), op: o.op.to_string() };
                let s = self.ops.entry(key).or_insert_with(|| OpSeries {
                    start_ns: series_start,
                    count: 0,
                    bytes: 0,
                    device_time: Hist::default(),
                    queue_time: Hist::default(),
                    size: Hist::default(),
                });
                s.count += o.count;
                s.bytes += u128::from(o.bytes);
                s.device_time.add(&o.device_time);
                s.queue_time.add(&o.queue_time);
                s.size.add(&o.size);
            }
        }
        for p in &iv.pods {
            let l = &p.labels;
            let key = PodKey {
                device: p.device_name.clone(),
                op: p.op.to_string(),
                namespace: l.namespace.clone(),
                pod: l.pod.clone(),
                pod_uid: l.pod_uid.clone(),
                container: l.container.clone(),
                cgroup: l.cgroup.clone(),
            };
            let s = self.pods.entry(key).or_insert_with(|| PodSeries {
                start_ns: series_start,
                last_seen_ns: end_ns,
                bytes: 0,
                device_time: Hist::default(),
            });
            s.last_seen_ns = end_ns;
            s.bytes += u128::from(p.bytes);
            s.device_time.add(&p.device_time);
        }
        self.add_pressure(iv, series_start, end_ns);
        match &mut self.losses {
            Some(l) => l.add_all(&iv.losses),
            None => self.losses = Some(iv.losses.clone()),
        }
        for d in &iv.devices {
            if let Some(n) = d.unseen {
                self.unseen.entry(d.name.clone()).or_insert((series_start, 0)).1 += n;
            }
        }
        let depths = || iv.devices.iter().filter_map(|d| d.depth.map(|depth| (&d.name, depth)));
        self.inflight = depths().map(|(name, d)| (name.clone(), (d.count, Peak::of(&d)))).collect();
        for window in &mut self.windows {
            for (name, d) in depths() {
                window.entry(name.clone()).or_default().raise(Peak::of(&d));
            }
        }
        for d in &iv.disk_time {
            let t = self.disk_time.entry(d.name.clone()).or_insert((series_start, 0, 0));
            t.1 += u128::from(d.io_time_ms);
            t.2 += u128::from(d.weighted_io_time_ms);
        }
        self.pods.retain(|_, s| end_ns.saturating_sub(s.last_seen_ns) < POD_SERIES_TTL_NS);
        self.pod_stall.retain(|_, s| end_ns.saturating_sub(s.last_seen_ns) < POD_SERIES_TTL_NS);
        self.last_ns = self.last_ns.max(end_ns);
        self.snapshots += 1;
        self.since_collect += 1;
    }

    /// PSI deltas; a pod's pressure is on each of its series, counted once per interval.
    fn add_pressure(&mut self, iv: &Interval, series_start: u64, end_ns: u64) {
        if let Some(p) = &iv.io_pressure {
            self.node_stall.get_or_insert_with(|| Stall { start_ns: series_start, ..Stall::default() }).add(p);
        }
        let mut seen = std::collections::BTreeSet::new();
        for row in &iv.pods {
            let Some(p) = &row.io_pressure else { continue };
            let l = &row.labels;
            let key = StallKey { namespace: l.namespace.clone(), pod: l.pod.clone(), pod_uid: l.pod_uid.clone() };
            if !seen.insert(key.clone()) {
                continue;
            }
            let s = self.pod_stall.entry(key).or_insert_with(|| Stall { start_ns: series_start, ..Stall::default() });
            s.last_seen_ns = end_ns;
            s.add(p);
        }
    }

    /// Starts a new window for `reader`: its peak restarts from the current depth (the depth at
    /// the end of the last interval is still in flight, so it is the floor of the next window,
    /// as the collector floors each interval's peak). For OTLP this also restarts the count of
    /// intervals since the last export.
    pub fn reset_window(&mut self, reader: PeakWindow) {
        self.windows[reader as usize] =
            self.inflight.iter().map(|(dev, (count, _))| (dev.clone(), Peak { low: *count, high: *count })).collect();
        if reader == PeakWindow::Otlp {
            self.since_collect = 0;
        }
    }

    pub fn losses(&self) -> Losses {
        self.losses.clone().unwrap_or_default()
    }
}

/// A window's highest depth: the intervals' peaks (`low`) and their upper bounds (`high`), see
/// [`crate::interval::Depth`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Peak {
    low: u64,
    high: u64,
}

impl Peak {
    fn of(d: &crate::interval::Depth) -> Peak {
        Peak { low: d.peak, high: d.peak_upper.max(d.peak) }
    }

    fn raise(&mut self, p: Peak) {
        self.low = self.low.max(p.low);
        self.high = self.high.max(p.high);
    }
}

/// Which reader's window the peak gauge covers (see [`Totals::collect`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeakWindow {
    /// Since the previous `/metrics` scrape.
    Scrape = 0,
    /// Since the previous OTLP export.
    Otlp = 1,
}

pub type Attrs = Vec<(&'static str, String)>;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Histogram slots and exact sum (integer, in the metric's base unit before scaling).
    Hist(Box<Hist>),
    /// Counter value (integer, before scaling).
    Counter(u128),
    Gauge(u128),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub metric: &'static MetricDef,
    pub attrs: Attrs,
    pub start_ns: u64,
    pub value: Value,
}

/// One collection: every point at one instant.
#[derive(Debug, Clone, Default)]
pub struct Collected {
    pub time_ns: u64,
    pub points: Vec<Point>,
    /// Which kernel slots the encoders export as buckets (`--histogram-max`).
    pub ranges: Ranges,
}

/// The agent's own counters, read at collection time.
#[derive(Debug, Clone, Default)]
pub struct AgentCounters {
    /// When the agent started (start of its own counters).
    pub start_ns: u64,
    pub jsonl_bytes: u64,
    pub last_build_ns: Option<u64>,
    /// `None` when OTLP is off (no export metrics then).
    pub export: Option<ExportCounters>,
}

#[derive(Debug, Clone, Default)]
pub struct ExportCounters {
    pub failures: BTreeMap<String, u64>,
    pub dropped: u64,
    pub queued: u64,
}

/// `disk.io.direction` of an op. The semantic conventions only define `read` and `write`, and
/// every series carries one so that `sum by (disk_io_direction)` never yields an unlabeled
/// group: reads are `read`; writes, discards, flushes and `other` (write-zeroes, zone management,
/// driver-private ops) are `write`: none of them returns data to the host, all change or persist
/// what the device stores. `blkio.operation` keeps the op itself (node_exporter's
/// `writes_completed` is `blkio_operation="write"`, not `disk_io_direction="write"`).
pub fn direction(op: &str) -> &'static str {
    if op == "read" { "read" } else { "write" }
}

fn op_attrs(device: &str, op: &str) -> Attrs {
    vec![
        (attr::DEVICE, device.to_string()),
        (attr::DIRECTION, direction(op).to_string()),
        (attr::OPERATION, op.to_string()),
    ]
}

impl Totals {
    /// All points, cumulative since each series' start. The peak gauge is the highest depth
    /// since `reader`'s last [`Totals::reset_window`] (since the agent started before the first).
    pub fn collect(&self, agent: &AgentCounters, reader: PeakWindow) -> Collected {
        let mut points = Vec::new();
        let mut push = |metric, attrs, start_ns, value| points.push(Point { metric, attrs, start_ns, value });
        for (k, s) in &self.ops {
            let a = op_attrs(&k.device, &k.op);
            push(&metrics::REQUEST_DURATION, a.clone(), s.start_ns, Value::Hist(Box::new(s.device_time.clone())));
            push(&metrics::QUEUE_DURATION, a.clone(), s.start_ns, Value::Hist(Box::new(s.queue_time.clone())));
            push(&metrics::REQUEST_SIZE, a.clone(), s.start_ns, Value::Hist(Box::new(s.size.clone())));
            push(&metrics::DISK_OPERATIONS, a.clone(), s.start_ns, Value::Counter(s.count as u128));
            let op_time = s.device_time.sum + s.queue_time.sum;
            push(&metrics::DISK_OPERATION_TIME, a.clone(), s.start_ns, Value::Counter(op_time));
            push(&metrics::DISK_IO, a, s.start_ns, Value::Counter(s.bytes));
        }
        for (k, s) in &self.pods {
            let mut a = op_attrs(&k.device, &k.op);
            for (key, v) in [
                (attr::NAMESPACE, &k.namespace),
                (attr::POD, &k.pod),
                (attr::POD_UID, &k.pod_uid),
                (attr::CONTAINER, &k.container),
                (attr::CGROUP, &k.cgroup),
            ] {
                if let Some(v) = v {
                    a.push((key, v.clone()));
                }
            }
            push(&metrics::POD_REQUEST_DURATION, a.clone(), s.start_ns, Value::Hist(Box::new(s.device_time.clone())));
            push(&metrics::POD_IO, a, s.start_ns, Value::Counter(s.bytes));
        }
        let kinds = |s: &Stall| [("some", s.some_ns), ("full", s.full_ns)];
        if let Some(s) = &self.node_stall {
            for (kind, ns) in kinds(s) {
                push(&metrics::NODE_IO_STALL, vec![(attr::PRESSURE_KIND, kind.into())], s.start_ns, Value::Counter(ns));
            }
        }
        for (k, s) in &self.pod_stall {
            let mut a: Attrs = [(attr::NAMESPACE, &k.namespace), (attr::POD, &k.pod), (attr::POD_UID, &k.pod_uid)]
                .into_iter()
                .filter_map(|(key, v)| v.clone().map(|v| (key, v)))
                .collect();
            a.push((attr::PRESSURE_KIND, String::new()));
            for (kind, ns) in kinds(s) {
                a.last_mut().unwrap().1 = kind.into();
                push(&metrics::POD_IO_STALL, a.clone(), s.start_ns, Value::Counter(ns));
            }
        }
        for (dev, (count, peak)) in &self.inflight {
            let a = vec![(attr::DEVICE, dev.clone())];
            push(&metrics::INFLIGHT, a.clone(), self.last_ns, Value::Gauge(*count as u128));
            let peak = self.windows[reader as usize].get(dev).copied().unwrap_or(*peak);
            push(&metrics::INFLIGHT_PEAK, a.clone(), self.last_ns, Value::Gauge(u128::from(peak.low)));
            push(&metrics::INFLIGHT_PEAK_UPPER, a, self.last_ns, Value::Gauge(u128::from(peak.high)));
        }
        for (dev, (start, n)) in &self.unseen {
            push(
                &metrics::UNSEEN_COMPLETIONS,
                vec![(attr::DEVICE, dev.clone())],
                *start,
                Value::Counter(u128::from(*n)),
            );
        }
        for (dev, (start, io_ms, weighted_ms)) in &self.disk_time {
            let a = vec![(attr::DEVICE, dev.clone())];
            push(&metrics::DISK_IO_TIME, a.clone(), *start, Value::Counter(io_ms * 1_000_000));
            push(&metrics::DISK_WEIGHTED_IO_TIME, a, *start, Value::Counter(weighted_ms * 1_000_000));
        }
        let start = self.start_ns.unwrap_or(agent.start_ns);
        // The agent's own counters began when it started, which is normally before the first
        // interval; `min` keeps start <= time even for snapshots replayed with older timestamps.
        let agent_start = agent.start_ns.min(start);
        let time_ns = if self.last_ns > 0 { self.last_ns } else { agent.start_ns };
        for (kind, v) in self.losses().iter() {
            let m = if kind.lost { &metrics::EVENTS_LOST } else { &metrics::EVENTS_NOTED };
            push(m, vec![(attr::EVENT_KIND, kind.label.to_string())], start, Value::Counter(v as u128));
        }
        push(&metrics::SNAPSHOTS, vec![], start, Value::Counter(self.snapshots as u128));
        push(&metrics::JSONL_WRITTEN, vec![], agent_start, Value::Counter(agent.jsonl_bytes as u128));
        if let Some(ns) = agent.last_build_ns {
            push(&metrics::SNAPSHOT_BUILD_TIME, vec![], self.last_ns, Value::Gauge(ns as u128));
        }
        if let Some(e) = &agent.export {
            for (reason, n) in &e.failures {
                push(
                    &metrics::EXPORT_FAILURES,
                    vec![(attr::ERROR_TYPE, reason.clone())],
                    agent_start,
                    Value::Counter(*n as u128),
                );
            }
            push(&metrics::EXPORT_DROPPED, vec![], agent_start, Value::Counter(e.dropped as u128));
            push(&metrics::EXPORT_QUEUED, vec![], self.last_ns, Value::Gauge(e.queued as u128));
        }
        Collected { time_ns, points, ranges: Ranges::default() }
    }
}

impl Collected {
    /// Delta temporality: this cumulative collection minus the previous one (`prev`), series by
    /// series. Sums and histograms with nothing new are left out; gauges are kept as they are.
    /// A series whose start changed (forgotten, then seen again) counts from its new start.
    pub fn delta_since(&self, prev: &Collected) -> Collected {
        let before: BTreeMap<(&str, &Attrs), &Point> =
            prev.points.iter().map(|p| ((p.metric.name, &p.attrs), p)).collect();
        let window_start = prev.time_ns;
        let mut points = Vec::new();
        for p in &self.points {
            let old = before.get(&(p.metric.name, &p.attrs)).filter(|o| o.start_ns == p.start_ns);
            let start_ns = if old.is_some() { window_start.max(p.start_ns) } else { p.start_ns };
            let value = match (&p.value, old.map(|o| &o.value)) {
                (Value::Gauge(_), _) => p.value.clone(),
                (Value::Counter(now), Some(Value::Counter(was))) if now > was => Value::Counter(now - was),
                (Value::Counter(now), None) if *now > 0 => Value::Counter(*now),
                (Value::Hist(now), Some(Value::Hist(was))) if now.count() > was.count() => {
                    let mut d = Hist::default();
                    for i in 0..BUCKETS {
                        d.slots[i] = now.slots[i] - was.slots[i];
                    }
                    d.sum = now.sum - was.sum;
                    Value::Hist(Box::new(d))
                }
                (Value::Hist(now), None) if now.count() > 0 => p.value.clone(),
                _ => continue,
            };
            points.push(Point { metric: p.metric, attrs: p.attrs.clone(), start_ns, value });
        }
        Collected { time_ns: self.time_ns, points, ranges: self.ranges }
    }
}

#[cfg(test)]
pub(crate) mod tests;
