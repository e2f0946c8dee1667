//! Per-device totals, mean, percentiles, peak depth and anomalies from a finalized series.

use crate::histogram::{estimated_mean, percentile};

use super::anomaly;
use super::dataset::{DeviceSeries, NONE, NodeData, PeakDepth, SLOTS};
use super::phases::{self, Phase, PhaseStats};

#[derive(Debug, Clone, PartialEq)]
pub struct Anomaly {
    /// Start of the first anomalous interval and end of the last one (epoch s).
    pub start: f64,
    pub end: f64,
    /// p99 of all completions inside the range.
    pub p99_us: f64,
    pub baseline_p99_us: f64,
}

#[derive(Debug, Clone)]
pub struct DeviceStats {
    pub node: Option<String>,
    pub device_name: String,
    pub device_id: u64,
    pub total_requests: u64,
    pub mean_latency_us: Option<f64>,
    /// True when every interval with completions carried `sum_us`/`sum_ns`.
    pub mean_exact: bool,
    /// (requested percentile, value in µs; None without completions).
    pub percentiles: Vec<(f64, Option<f64>)>,
    /// Highest `peak` (or end-of-interval `count` where the input has no `peak`), and its upper
    /// bound where intervals had `peak_upper`.
    pub peak_queue_depth: PeakDepth,
    pub first_timestamp: f64,
    pub last_timestamp: f64,
    pub intervals: usize,
    /// Completions per op (`dataset::OPS` order) when the input has `ops`.
    pub requests_by_op: Option<[u64; 5]>,
    pub anomalies: Vec<Anomaly>,
    pub slots: [u64; SLOTS],
    /// The whole recording per op (and all ops), over the seconds with I/O.
    pub by_op: PhaseStats,
    /// Per phase, when `--events` was given.
    pub phases: Vec<PhaseStats>,
    /// Highest MB/s and IOPS of one interval (MB/s only when the input has `ops`).
    pub peak_mb_per_s: Option<f64>,
    pub peak_iops: Option<f64>,
}

pub fn device_stats(
    node: &NodeData,
    dev: &DeviceSeries,
    percentiles: &[f64],
    cfg: anomaly::Config,
    phase_list: Option<&[Phase]>,
) -> DeviceStats {
    let mut slots = [0u64; SLOTS];
    let (mut total, mut sum_us, mut exact) = (0u64, 0f64, true);
    let mut peak = PeakDepth::default();
    let mut by_op: Option<[u64; 5]> = None;
    let mut points = Vec::with_capacity(dev.recs.len());
    let (mut peak_mb, mut peak_iops): (Option<f64>, Option<f64>) = (None, None);
    let mut one = [0u64; SLOTS];
    for r in &dev.recs {
        dev.add_into(r, &mut slots);
        total += r.total;
        if r.total > 0 {
            if r.sum_us.is_finite() { sum_us += r.sum_us } else { exact = false }
        }
        peak.add(r);
        if let Some(ops) = dev.rec_ops(r) {
            let acc = by_op.get_or_insert([0; 5]);
            for (a, o) in acc.iter_mut().zip(ops) {
                *a += o;
            }
        }
        one.fill(0);
        dev.add_into(r, &mut one);
        let p99 = if r.total > 0 { percentile(&one, 99.0).unwrap_or(f64::NAN) } else { f64::NAN };
        let ops = dev.rec_op_detail(r);
        peak_iops = Some(peak_iops.unwrap_or(0.0).max(r.total as f64 / r.dur));
        if !ops.is_empty() {
            let mb = ops.iter().map(|o| o.bytes).sum::<u64>() as f64 / 1e6 / r.dur;
            peak_mb = Some(peak_mb.unwrap_or(0.0).max(mb));
        }
        let size = if ops.is_empty() || r.total == 0 {
            f64::NAN
        } else {
            ops.iter().map(|o| o.bytes).sum::<u64>() as f64 / r.total as f64
        };
        // Little's law: the exact device-time sum over the interval is the mean number of
        // requests in the device; without sums, the interval's peak is the best proxy.
        let depth = if r.sum_us.is_finite() {
            r.sum_us / 1e6 / r.dur
        } else if r.peak != NONE {
            r.peak as f64
        } else {
            f64::NAN
        };
        points.push(anomaly::Point { ts: r.ts, dur: r.dur, requests: r.total, p99, size, depth });
    }
    let mean_latency_us = match total {
        0 => None,
        _ if exact => Some(sum_us / total as f64),
        _ => estimated_mean(&slots),
    };
    let anomalies = anomaly::detect(&points, cfg)
        .into_iter()
        .map(|range| {
            let mut merged = [0u64; SLOTS];
            for r in &dev.recs[range.first..=range.last] {
                dev.add_into(r, &mut merged);
            }
            let first = &dev.recs[range.first];
            Anomaly {
                start: first.ts - first.dur,
                end: dev.recs[range.last].ts,
                p99_us: percentile(&merged, 99.0).unwrap_or(f64::NAN),
                baseline_p99_us: range.baseline_p99_us,
            }
        })
        .collect();
    DeviceStats {
        node: node.name.clone(),
        device_name: dev.name.clone(),
        device_id: dev.id,
        total_requests: total,
        mean_latency_us,
        mean_exact: exact && total > 0,
        percentiles: percentiles.iter().map(|&p| (p, percentile(&slots, p))).collect(),
        peak_queue_depth: peak,
        first_timestamp: dev.recs.first().map_or(f64::NAN, |r| r.ts),
        last_timestamp: dev.recs.last().map_or(f64::NAN, |r| r.ts),
        intervals: dev.recs.len(),
        requests_by_op: by_op,
        anomalies,
        slots,
        by_op: phases::stats_of(dev, "all", &dev.recs.iter().collect::<Vec<_>>()),
        phases: phase_list.map(|p| phases::device_phases(dev, p)).unwrap_or_default(),
        peak_mb_per_s: peak_mb,
        peak_iops,
    }
}
