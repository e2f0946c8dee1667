//! Exact running totals of the published snapshots, and the flat list of metric points built from
//! them that both encoders (OTLP, Prometheus) consume.
//!
//! Snapshots hold interval deltas. Cumulative values are the integer sums of every delta since
//! the agent started, so they equal the JSONL totals exactly; delta temporality is the difference
//! of two cumulative collections (again integers), so both temporalities carry the same numbers.

use std::collections::BTreeMap;

use super::metrics::{self, BUCKETS, MetricDef, attr};
use crate::{
    pressure::Pressure,
    snapshot::{Bucket, Losses, Snapshot},
};

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
    fn add(&mut self, buckets: &[Bucket], sum: u128) {
        for b in buckets {
            // Slots past the last are clamped into it, as `slots_from_buckets` does.
            self.slots[(b.slot as usize).min(BUCKETS - 1)] += b.count;
        }
        self.sum += sum;
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

/// One pod's I/O stall (PSI) summed over the snapshots that carried it, ns.
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
        self.some_ns += p.some.delta_us.unwrap_or(0) as u128 * 1000;
        self.full_ns += p.full.delta_us.unwrap_or(0) as u128 * 1000;
    }
}

/// Everything needed to build the points, summed over all snapshots since the agent started.
#[derive(Debug, Default)]
pub struct Totals {
    ops: BTreeMap<OpKey, OpSeries>,
    pods: BTreeMap<PodKey, PodSeries>,
    /// PSI: the node's (present once a snapshot carried it) and each pod's.
    node_stall: Option<Stall>,
    pod_stall: BTreeMap<StallKey, Stall>,
    losses: Losses,
    /// Device -> (in flight at the end of the last snapshot, that snapshot's peak).
    inflight: BTreeMap<String, (u64, u64)>,
    /// Device -> highest peak since the last OTLP collection.
    window_peak: BTreeMap<String, u64>,
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
    pub fn add(&mut self, snap: &Snapshot) {
        let end_ns = epoch_ns(snap.timestamp);
        let begin_ns = end_ns.saturating_sub(epoch_ns(snap.interval_s));
        let start_ns = *self.start_ns.get_or_insert(begin_ns);
        // Series first seen now started counting at the beginning of this interval (they were zero
        // before); series present from the first snapshot share the agent's start.
        let series_start = begin_ns.max(start_ns);
        for o in &snap.ops {
            let key = OpKey { device: o.device_name.clone(), op: o.op.clone() };
            let s = self.ops.entry(key).or_insert_with(|| OpSeries {
                start_ns: series_start,
                count: 0,
                bytes: 0,
                device_time: Hist::default(),
                queue_time: Hist::default(),
                size: Hist::default(),
            });
            s.count += o.count;
            s.bytes += o.bytes as u128;
            s.device_time.add(&o.device_time.buckets, o.device_time.sum_ns as u128);
            s.queue_time.add(&o.queue_time.buckets, o.queue_time.sum_ns as u128);
            s.size.add(&o.size.buckets, o.bytes as u128);
        }
        for p in &snap.pods {
            let key = PodKey {
                device: p.device_name.clone(),
                op: p.op.clone(),
                namespace: p.namespace.clone(),
                pod: p.pod.clone(),
                pod_uid: p.pod_uid.clone(),
                container: p.container.clone(),
                cgroup: p.cgroup.clone(),
            };
            let s = self.pods.entry(key).or_insert_with(|| PodSeries {
                start_ns: series_start,
                last_seen_ns: end_ns,
                bytes: 0,
                device_time: Hist::default(),
            });
            s.last_seen_ns = end_ns;
            s.bytes += p.bytes as u128;
            s.device_time.add(&p.device_time.buckets, p.device_time.sum_ns as u128);
        }
        self.add_pressure(snap, series_start, end_ns);
        if let Some(l) = &snap.losses {
            let (a, b) = (loss_values(&self.losses), loss_values(l));
            self.losses = losses_from(std::array::from_fn(|i| a[i].1 + b[i].1));
        }
        self.inflight =
            snap.inflight.iter().map(|d| (d.device_name.clone(), (d.count, d.peak.unwrap_or(d.count)))).collect();
        for d in &snap.inflight {
            let p = self.window_peak.entry(d.device_name.clone()).or_default();
            *p = (*p).max(d.peak.unwrap_or(d.count));
        }
        self.pods.retain(|_, s| end_ns.saturating_sub(s.last_seen_ns) < POD_SERIES_TTL_NS);
        self.pod_stall.retain(|_, s| end_ns.saturating_sub(s.last_seen_ns) < POD_SERIES_TTL_NS);
        self.last_ns = self.last_ns.max(end_ns);
        self.snapshots += 1;
        self.since_collect += 1;
    }

    /// PSI deltas; a pod's pressure is on each of its rows, counted once per snapshot.
    fn add_pressure(&mut self, snap: &Snapshot, series_start: u64, end_ns: u64) {
        if let Some(p) = &snap.io_pressure {
            self.node_stall.get_or_insert_with(|| Stall { start_ns: series_start, ..Stall::default() }).add(p);
        }
        let mut seen = std::collections::BTreeSet::new();
        for row in &snap.pods {
            let Some(p) = &row.io_pressure else { continue };
            let key = StallKey { namespace: row.namespace.clone(), pod: row.pod.clone(), pod_uid: row.pod_uid.clone() };
            if !seen.insert(key.clone()) {
                continue;
            }
            let s = self.pod_stall.entry(key).or_insert_with(|| Stall { start_ns: series_start, ..Stall::default() });
            s.last_seen_ns = end_ns;
            s.add(p);
        }
    }

    /// Starts a new OTLP window: the peak gauge restarts from the current depth.
    pub fn reset_window(&mut self) {
        self.window_peak.clear();
        self.since_collect = 0;
    }

    pub fn losses(&self) -> Losses {
        self.losses
    }
}

const LOSS_KINDS: usize = 11;
/// Kinds that are not losses (the request was measured).
const NOTED_KINDS: [&str; 2] = ["requeued", "partial_completion"];

fn loss_values(l: &Losses) -> [(&'static str, u64); LOSS_KINDS] {
    [
        ("start_insert_failed", l.start_insert_failed),
        ("complete_without_start", l.complete_without_start),
        ("stale_evicted", l.stale_evicted),
        ("hist_update_failed", l.hist_update_failed),
        ("device_map_full", l.device_map_full),
        ("cgroup_map_full", l.cgroup_map_full),
        ("recursion_misses", l.recursion_misses),
        ("inflight_resync", l.inflight_resync),
        ("write_failures", l.write_failures),
        ("requeued", l.requeued),
        ("partial_completion", l.partial_completion),
    ]
}

fn losses_from(v: [u64; LOSS_KINDS]) -> Losses {
    Losses {
        start_insert_failed: v[0],
        complete_without_start: v[1],
        stale_evicted: v[2],
        hist_update_failed: v[3],
        device_map_full: v[4],
        cgroup_map_full: v[5],
        recursion_misses: v[6],
        inflight_resync: v[7],
        write_failures: v[8],
        requeued: v[9],
        partial_completion: v[10],
    }
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

fn op_attrs(device: &str, op: &str) -> Attrs {
    let mut a = vec![(attr::DEVICE, device.to_string())];
    // disk.io.direction only has `read` and `write`; discard, flush and other carry only
    // blkio.operation so that summing over direction matches /proc/diskstats' read/write fields.
    if op == "read" || op == "write" {
        a.push((attr::DIRECTION, op.to_string()));
    }
    a.push((attr::OPERATION, op.to_string()));
    a
}

impl Totals {
    /// All points, cumulative since each series' start. `window_peak`: the peak gauge is the
    /// highest since the last [`Totals::reset_window`] (OTLP windows) instead of the last
    /// snapshot's (Prometheus).
    pub fn collect(&self, agent: &AgentCounters, window_peak: bool) -> Collected {
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
            let peak = if window_peak { self.window_peak.get(dev).copied().unwrap_or(*peak) } else { *peak };
            push(&metrics::INFLIGHT_PEAK, a, self.last_ns, Value::Gauge(peak as u128));
        }
        let start = self.start_ns.unwrap_or(agent.start_ns);
        // The agent's own counters began when it started, which is normally before the first
        // interval; `min` keeps start <= time even for snapshots replayed with older timestamps.
        let agent_start = agent.start_ns.min(start);
        let time_ns = if self.last_ns > 0 { self.last_ns } else { agent.start_ns };
        for (kind, v) in loss_values(&self.losses) {
            let m = if NOTED_KINDS.contains(&kind) { &metrics::EVENTS_NOTED } else { &metrics::EVENTS_LOST };
            push(m, vec![(attr::EVENT_KIND, kind.to_string())], start, Value::Counter(v as u128));
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
        Collected { time_ns, points }
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
        Collected { time_ns: self.time_ns, points }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::snapshot::*;

    /// A realistic snapshot: `loop0` reads and writes, one pod, some losses.
    pub fn snapshot(end_s: f64, interval_s: f64, reads: &[(u32, u64)], read_sum_ns: u64) -> Snapshot {
        // Buckets as the collector writes them; a slot past 31 checks the clamping.
        let buckets: Vec<Bucket> = reads
            .iter()
            .map(|&(slot, count)| Bucket {
                slot,
                count,
                bucket_low: crate::histogram::bucket_low(slot),
                bucket_high: crate::histogram::bucket_high(slot),
            })
            .collect();
        let count: u64 = reads.iter().map(|r| r.1).sum();
        let hist = TimeHistogram { sum_ns: read_sum_ns, sum_us: read_sum_ns as f64 / 1e3, buckets };
        let mut size = vec![0u64; 32];
        size[12] = count;
        Snapshot {
            schema_version: Some(SCHEMA_VERSION),
            timestamp: end_s,
            iso_timestamp: iso_timestamp(end_s),
            interval_s,
            node: Some("n1".into()),
            seq: None,
            latency_histogram: vec![],
            inflight: vec![DeviceInflight {
                device_id: 7,
                device_name: "loop0".into(),
                count: 2,
                peak: Some(9),
                sysfs_count: None,
            }],
            ops: vec![OpStats {
                device_id: 7,
                device_name: "loop0".into(),
                op: "read".into(),
                count,
                bytes: count * 4096,
                device_time: hist.clone(),
                queue_time: TimeHistogram { sum_ns: 0, sum_us: 0.0, buckets: buckets_from_slots(&[count]) },
                size: SizeHistogram { buckets: buckets_from_slots(&size) },
            }],
            pods: vec![PodStats {
                namespace: Some("default".into()),
                pod: Some("db-0".into()),
                pod_uid: Some("uid-1".into()),
                container: None,
                cgroup: None,
                device_id: 7,
                device_name: "loop0".into(),
                op: "read".into(),
                count,
                bytes: count * 4096,
                device_time: hist,
                io_pressure: None,
            }],
            losses: Some(Losses { stale_evicted: 1, requeued: 2, ..Losses::default() }),
            losses_total: None,
            agent: None,
            io_pressure: None,
        }
    }

    fn find<'a>(c: &'a Collected, name: &str) -> Vec<&'a Point> {
        c.points.iter().filter(|p| p.metric.name == name).collect()
    }

    #[test]
    fn cumulative_is_the_exact_sum_of_deltas() {
        let mut t = Totals::default();
        t.add(&snapshot(100.0, 5.0, &[(4, 10), (6, 3)], 1_000_123));
        t.add(&snapshot(105.0, 5.0, &[(4, 1), (31, 1), (40, 1)], 7));
        let c = t.collect(&AgentCounters::default(), false);
        let h = find(&c, "blkio.request.duration");
        assert_eq!(h.len(), 1);
        let Value::Hist(hist) = &h[0].value else { panic!() };
        assert_eq!(hist.slots[4], 11);
        assert_eq!(hist.slots[6], 3);
        assert_eq!(hist.slots[31], 2, "slot 40 is clamped into the overflow bucket");
        assert_eq!(hist.sum, 1_000_130);
        assert_eq!(h[0].start_ns, 95_000_000_000);
        assert_eq!(c.time_ns, 105_000_000_000);
        assert_eq!(
            h[0].attrs,
            vec![
                ("system.device", "loop0".into()),
                ("disk.io.direction", "read".into()),
                ("blkio.operation", "read".into())
            ]
        );
        let ops = find(&c, "system.disk.operations");
        assert_eq!(ops[0].value, Value::Counter(16));
        let lost = find(&c, "blkio.agent.events.lost");
        let stale = lost.iter().find(|p| p.attrs[0].1 == "stale_evicted").unwrap();
        assert_eq!(stale.value, Value::Counter(2));
        let noted = find(&c, "blkio.agent.events.noted");
        assert_eq!(noted.len(), 2);
        let pod = find(&c, "blkio.pod.request.duration");
        assert!(pod[0].attrs.contains(&("k8s.pod.name", "db-0".into())));
        assert!(!pod[0].attrs.iter().any(|(k, _)| *k == "k8s.container.name"));
    }

    #[test]
    fn delta_is_each_window_and_skips_idle_series() {
        let mut t = Totals::default();
        t.add(&snapshot(100.0, 5.0, &[(4, 10)], 500));
        let c1 = t.collect(&AgentCounters::default(), false);
        t.add(&snapshot(105.0, 5.0, &[(5, 2)], 90));
        let c2 = t.collect(&AgentCounters::default(), false);
        let d = c2.delta_since(&c1);
        let h = find(&d, "blkio.request.duration");
        let Value::Hist(hist) = &h[0].value else { panic!() };
        assert_eq!((hist.slots[4], hist.slots[5], hist.sum), (0, 2, 90));
        assert_eq!(h[0].start_ns, 100_000_000_000);
        // write_failures never happened: no delta point.
        assert!(!find(&d, "blkio.agent.events.lost").iter().any(|p| p.attrs[0].1 == "write_failures"));
        let c3 = t.collect(&AgentCounters::default(), false);
        assert!(find(&c3.delta_since(&c2), "blkio.request.duration").is_empty());
        assert_eq!(find(&c3.delta_since(&c2), "blkio.inflight").len(), 1, "gauges are always sent");
    }

    #[test]
    fn idle_pod_series_are_forgotten() {
        let mut t = Totals::default();
        t.add(&snapshot(100.0, 5.0, &[(4, 1)], 1));
        let mut later = snapshot(100.0 + 601.0, 5.0, &[(4, 1)], 1);
        later.pods.clear();
        t.add(&later);
        assert!(find(&t.collect(&AgentCounters::default(), false), "blkio.pod.request.duration").is_empty());
    }
}
