//! `summary.json` (also printed by `--format json`) and the text summary on stdout.

use std::fmt::Write as _;

use serde::Serialize;
use serde::ser::SerializeMap;

use super::Analysis;
use super::anomaly::{FLOOR_US, LOAD_RATIO, WINDOW};
use super::args::percentile_key;
use super::dataset::OPS;
use super::phase_report::{self, DEVICE_TIME_NOTE, OpRowJson, PhaseJson};
use super::units::{grouped, human_us, utc};

#[derive(Serialize)]
pub struct Summary<'a> {
    pub devices: Vec<DeviceJson<'a>>,
    pub skipped_lines: u64,
    /// The first bad lines with their place and reason (all are counted in `skipped_lines`).
    pub skipped: Vec<SkipJson>,
    pub snapshots: u64,
    pub duplicate_records: u64,
    pub inputs: Vec<String>,
    pub events: usize,
    /// Events before or after every device's data (drawn at the chart edge, listed here).
    pub events_outside_data: usize,
    /// Snapshots whose `timestamp` and `iso_timestamp` disagree (the `timestamp` is used).
    pub timestamp_mismatches: u64,
    pub anomaly_rule: String,
    /// What the latency numbers measure, compared with fio's.
    pub latency_note: &'static str,
}

#[derive(Serialize)]
pub struct DeviceJson<'a> {
    pub node: Option<&'a str>,
    pub device_name: &'a str,
    pub device_id: u64,
    pub total_requests: u64,
    pub mean_latency_us: Option<f64>,
    /// `exact` (from `sum_us`) or `estimated` (bucket midpoints; input without sums).
    pub mean_latency: &'static str,
    pub percentiles_us: OrderedMap,
    pub peak_queue_depth: Option<u64>,
    /// The peak's upper bound, present when above it (`peak_upper` in the input).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_queue_depth_upper: Option<u64>,
    pub first_timestamp: f64,
    pub last_timestamp: f64,
    pub anomalies: Vec<AnomalyJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_by_op: Option<OrderedMap>,
    pub intervals: usize,
    /// Mean MB/s over the seconds with I/O, the highest of one interval, and the same for IOPS.
    pub mean_mb_per_s: Option<f64>,
    pub peak_mb_per_s: Option<f64>,
    pub mean_iops: Option<f64>,
    pub peak_iops: Option<f64>,
    /// Seconds with I/O (what the means divide by).
    pub active_seconds: f64,
    /// Per op over the whole recording (`all` first); device-time percentiles.
    pub by_op: Vec<OpRowJson>,
    /// Per phase and op, with `--events`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<PhaseJson>,
    /// Chart file names in the output directory (absent for devices without any I/O).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub charts: Option<Vec<&'a str>>,
}

#[derive(Serialize)]
pub struct AnomalyJson {
    pub start: f64,
    pub end: f64,
    pub p99_us: f64,
    pub baseline_p99_us: f64,
}

#[derive(Serialize)]
pub struct SkipJson {
    pub file: String,
    pub line: u64,
    pub reason: String,
}

/// An ordered `{key: value}` object (serde_json's map would sort `p100` before `p50`).
pub struct OrderedMap(pub Vec<(String, serde_json::Value)>);

impl Serialize for OrderedMap {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

pub fn anomaly_rule(factor: f64, min_requests: u64, min_duration_s: f64) -> String {
    format!(
        "enters when an interval's p99 >= {factor}x the median p99 of the previous {WINDOW} normal intervals (each with >= {min_requests} requests) and >= {FLOOR_US} us above it; stays while p99 >= {:.2}x; reported when it lasts >= {min_duration_s} s; a load change ({LOAD_RATIO}x IOPS, {LOAD_RATIO}x request size, or {LOAD_RATIO}x depth at held IOPS) restarts the baseline instead of counting as a fault",
        factor.sqrt()
    )
}

pub fn build(a: &Analysis) -> Summary<'_> {
    let devices = a
        .devices
        .iter()
        .map(|d| {
            let s = &d.stats;
            DeviceJson {
                node: s.node.as_deref(),
                device_name: &s.device_name,
                device_id: s.device_id,
                total_requests: s.total_requests,
                mean_latency_us: s.mean_latency_us,
                mean_latency: if s.mean_exact { "exact" } else { "estimated" },
                percentiles_us: OrderedMap(
                    s.percentiles
                        .iter()
                        .map(|(p, v)| (percentile_key(*p), v.map_or(serde_json::Value::Null, Into::into)))
                        .collect(),
                ),
                peak_queue_depth: s.peak_queue_depth.peak,
                peak_queue_depth_upper: s.peak_queue_depth.upper(),
                first_timestamp: s.first_timestamp,
                last_timestamp: s.last_timestamp,
                anomalies: s
                    .anomalies
                    .iter()
                    .map(|x| AnomalyJson {
                        start: x.start,
                        end: x.end,
                        p99_us: x.p99_us,
                        baseline_p99_us: x.baseline_p99_us,
                    })
                    .collect(),
                requests_by_op: s
                    .requests_by_op
                    .map(|ops| OrderedMap(OPS.iter().zip(ops).map(|(k, v)| (k.to_string(), v.into())).collect())),
                intervals: s.intervals,
                mean_mb_per_s: s.by_op.rows[0].mb_per_s,
                peak_mb_per_s: s.peak_mb_per_s,
                mean_iops: s.by_op.rows[0].iops,
                peak_iops: s.peak_iops,
                active_seconds: s.by_op.active_s,
                by_op: phase_report::phase_json(&s.by_op).ops,
                phases: s.phases.iter().map(phase_report::phase_json).collect(),
                charts: d.charts.as_ref().map(|c| c.iter().map(|(n, _)| n.as_str()).collect()),
            }
        })
        .collect();
    Summary {
        devices,
        skipped_lines: a.skipped_count,
        skipped: a
            .skipped
            .iter()
            .map(|s| SkipJson { file: a.file_name(s.file), line: s.line, reason: s.reason.clone() })
            .collect(),
        snapshots: a.snapshots,
        duplicate_records: a.duplicates,
        inputs: a.inputs.iter().map(|p| p.display().to_string()).collect(),
        events: a.events.len(),
        events_outside_data: a.events_outside,
        timestamp_mismatches: a.timestamp_mismatches,
        latency_note: DEVICE_TIME_NOTE,
        anomaly_rule: anomaly_rule(a.anomaly_factor, a.anomaly_min_requests, a.anomaly_min_duration),
    }
}

/// The stdout report: a device table, anomalies, skipped lines and what was written.
pub fn text(a: &Analysis) -> String {
    let mut out = String::new();
    let nodes = a.devices.iter().filter_map(|d| d.stats.node.as_deref()).collect::<std::collections::BTreeSet<_>>();
    let _ = writeln!(
        out,
        "blkio-agent analyze: {} input file(s), {} snapshots, {} device(s){}",
        a.inputs.len(),
        grouped(a.snapshots),
        a.devices.len(),
        if nodes.is_empty() { String::new() } else { format!(" on {} node(s)", nodes.len()) }
    );
    let mut header = vec!["DEVICE".to_string(), "REQUESTS".into(), "MEAN".into()];
    if !nodes.is_empty() {
        header.insert(0, "NODE".into());
    }
    header.extend(a.percentiles.iter().map(|p| percentile_key(*p)));
    header.extend(["MB/s".into(), "PEAK QD".into(), "FROM (UTC)".into(), "TO (UTC)".into(), "ANOMALIES".into()]);
    let mut rows = vec![header];
    for d in &a.devices {
        let s = &d.stats;
        let mut row = vec![s.device_name.clone(), grouped(s.total_requests)];
        if !nodes.is_empty() {
            row.insert(0, s.node.clone().unwrap_or_else(|| "-".into()));
        }
        row.push(match s.mean_latency_us {
            Some(m) => format!("{}{}", human_us(m), if s.mean_exact { "" } else { " (est.)" }),
            None => "-".into(),
        });
        row.extend(s.percentiles.iter().map(|(_, v)| v.map_or("-".into(), human_us)));
        row.push(s.by_op.rows[0].mb_per_s.map_or("-".into(), |v| format!("{v:.1}")));
        row.push(s.peak_queue_depth.cell());
        row.push(utc(s.first_timestamp));
        row.push(utc(s.last_timestamp));
        row.push(s.anomalies.len().to_string());
        rows.push(row);
    }
    let widths: Vec<usize> =
        (0..rows[0].len()).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    out.push('\n');
    for r in &rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        let _ = writeln!(out, "  {}", line.join("  ").trim_end());
    }
    if a.devices.iter().any(|d| d.stats.total_requests > 0 && !d.stats.mean_exact) {
        out.push_str("\n  (est.) = mean estimated from bucket midpoints: the input has no sum_us (seed schema).\n");
    }
    out.push_str("  Percentiles are interpolated inside the log2 bucket that holds the rank; MB/s is over the seconds with I/O.\n");
    for d in a.devices.iter().filter(|d| d.stats.total_requests > 0) {
        phase_report::text(&mut out, &d.display_name(), &d.stats.by_op, &d.stats.phases);
    }
    if a.devices.iter().any(|d| d.stats.total_requests > 0) {
        let _ = writeln!(out, "\n  {DEVICE_TIME_NOTE}");
    }
    if a.events_outside > 0 {
        let _ = writeln!(
            out,
            "\n{} event(s) lie outside the recorded time range; the charts mark them at their edge.",
            a.events_outside
        );
    }
    if a.timestamp_mismatches > 0 {
        let _ = writeln!(
            out,
            "\n{} snapshot(s) have a timestamp and iso_timestamp that disagree; timestamp was used:",
            grouped(a.timestamp_mismatches)
        );
        for m in a.mismatches.iter().take(5) {
            let _ = writeln!(out, "  {}:{}: {}", a.file_name(m.file), m.line, m.reason);
        }
    }

    let anomalies: Vec<_> = a.devices.iter().flat_map(|d| d.stats.anomalies.iter().map(move |x| (d, x))).collect();
    if !anomalies.is_empty() {
        let _ = writeln!(
            out,
            "\nLatency anomalies ({}):",
            anomaly_rule(a.anomaly_factor, a.anomaly_min_requests, a.anomaly_min_duration)
        );
        for (d, x) in anomalies {
            let _ = writeln!(
                out,
                "  {}  {} to {} ({:.0} s): p99 {} vs baseline {}",
                d.display_name(),
                utc(x.start),
                &utc(x.end)[11..],
                x.end - x.start,
                human_us(x.p99_us),
                human_us(x.baseline_p99_us)
            );
        }
    }
    if a.skipped_count > 0 {
        let _ = writeln!(out, "\nSkipped {} bad line(s):", grouped(a.skipped_count));
        for s in a.skipped.iter().take(20) {
            let _ = writeln!(out, "  {}:{}: {}", a.file_name(s.file), s.line, s.reason);
        }
        if a.skipped_count > 20 {
            let _ =
                writeln!(out, "  ... and {} more (summary.json lists up to {})", a.skipped_count - 20, a.skipped.len());
        }
    }
    if a.duplicates > 0 {
        let _ = writeln!(
            out,
            "\n{} duplicate record(s) (same node, device and timestamp) were read twice and counted once.",
            grouped(a.duplicates)
        );
    }
    let charts: usize = a.devices.iter().filter_map(|d| d.charts.as_ref()).map(Vec::len).sum();
    let _ = writeln!(out, "\nWrote {} chart(s), summary.json and report.html to {}", charts, a.output_dir.display());
    out
}
