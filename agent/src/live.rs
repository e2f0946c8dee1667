//! The live per-device view: a compact table redrawn each interval on a terminal, otherwise one
//! structured log line per interval (what a DaemonSet's `kubectl logs` should show).

use std::{
    collections::BTreeMap,
    io::{IsTerminal as _, Write as _},
};

use crate::{
    cli::LiveMode,
    histogram::{HIST_SLOTS, percentile},
    snapshot::{Snapshot, slots_from_buckets},
};

/// One device's line of the view.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceLine {
    pub device: String,
    pub iops: f64,
    pub mb_per_s: f64,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub inflight: u64,
    pub peak: u64,
}

pub fn device_lines(s: &Snapshot) -> Vec<DeviceLine> {
    let secs = if s.interval_s > 0.0 { s.interval_s } else { 1.0 };
    let mut lines: BTreeMap<String, DeviceLine> = BTreeMap::new();
    for h in &s.latency_histogram {
        let slots = slots_from_buckets(&h.buckets, HIST_SLOTS);
        lines.insert(
            h.device_name.clone(),
            DeviceLine {
                device: h.device_name.clone(),
                iops: h.total as f64 / secs,
                mb_per_s: 0.0,
                p50_us: percentile(&slots, 50.0),
                p99_us: percentile(&slots, 99.0),
                inflight: 0,
                peak: 0,
            },
        );
    }
    for op in &s.ops {
        if let Some(l) = lines.get_mut(&op.device_name) {
            l.mb_per_s += op.bytes as f64 / secs / 1e6;
        }
    }
    for i in &s.inflight {
        let l = lines.entry(i.device_name.clone()).or_insert_with(|| DeviceLine {
            device: i.device_name.clone(),
            iops: 0.0,
            mb_per_s: 0.0,
            p50_us: None,
            p99_us: None,
            inflight: 0,
            peak: 0,
        });
        l.inflight = i.count;
        l.peak = i.peak.unwrap_or(i.count);
    }
    lines.into_values().collect()
}

fn us(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v >= 10_000.0 => format!("{:.1}ms", v / 1000.0),
        Some(v) => format!("{v:.0}us"),
    }
}

/// The table as text (without screen control codes).
pub fn table(s: &Snapshot) -> String {
    let mut out = format!(
        "blkio-agent  node {}  {}  interval {:.1}s\n{:<16} {:>10} {:>9} {:>9} {:>9} {:>12}\n",
        s.node.as_deref().unwrap_or("-"),
        s.iso_timestamp,
        s.interval_s,
        "DEVICE",
        "IOPS",
        "MB/s",
        "p50",
        "p99",
        "INFLIGHT/PK"
    );
    for l in device_lines(s) {
        out.push_str(&format!(
            "{:<16} {:>10.0} {:>9.1} {:>9} {:>9} {:>12}\n",
            l.device,
            l.iops,
            l.mb_per_s,
            us(l.p50_us),
            us(l.p99_us),
            format!("{}/{}", l.inflight, l.peak)
        ));
    }
    if let Some(t) = &s.losses_total {
        let lost = t.start_insert_failed
            + t.complete_without_start
            + t.hist_update_failed
            + t.recursion_misses
            + t.write_failures;
        if lost > 0 {
            out.push_str(&format!(
                "lost since start: {} no-start completions, {} map-full, {} recursion misses, {} write failures\n",
                t.complete_without_start,
                t.start_insert_failed + t.hist_update_failed,
                t.recursion_misses,
                t.write_failures
            ));
        }
    }
    out
}

pub struct LiveView {
    table: bool,
    enabled: bool,
}

impl LiveView {
    pub fn new(mode: LiveMode) -> LiveView {
        let tty = std::io::stdout().is_terminal();
        match mode {
            LiveMode::Auto => LiveView { table: tty, enabled: true },
            LiveMode::Table => LiveView { table: true, enabled: true },
            LiveMode::Log => LiveView { table: false, enabled: true },
            LiveMode::Off => LiveView { table: false, enabled: false },
        }
    }

    pub fn render(&self, s: &Snapshot) {
        if !self.enabled {
            return;
        }
        if self.table {
            let mut stdout = std::io::stdout().lock();
            // Clear and home, then the table: a steady screen rather than a scrolling log.
            let _ = write!(stdout, "\x1b[2J\x1b[H{}", table(s));
            let _ = stdout.flush();
            return;
        }
        let lines = device_lines(s);
        let summary: Vec<String> = lines
            .iter()
            .filter(|l| l.iops > 0.0 || l.inflight > 0)
            .map(|l| {
                format!(
                    "{}:iops={:.0},mbps={:.1},p50={},p99={},inflight={}/{}",
                    l.device,
                    l.iops,
                    l.mb_per_s,
                    us(l.p50_us),
                    us(l.p99_us),
                    l.inflight,
                    l.peak
                )
            })
            .collect();
        tracing::info!(
            seq = s.seq.unwrap_or(0),
            interval_s = format!("{:.2}", s.interval_s),
            active_devices = summary.len(),
            devices = summary.join(" "),
            "snapshot"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{Bucket, DeviceHistogram, DeviceInflight};

    fn snap() -> Snapshot {
        Snapshot {
            schema_version: Some(1),
            timestamp: 0.0,
            iso_timestamp: "1970-01-01T00:00:00.000000+00:00".into(),
            interval_s: 2.0,
            node: Some("n".into()),
            seq: Some(3),
            latency_histogram: vec![DeviceHistogram {
                device_id: 1,
                device_name: "loop0".into(),
                total: 100,
                sum_us: None,
                sum_ns: None,
                buckets: vec![Bucket { slot: 4, count: 100, bucket_low: 16, bucket_high: 31 }],
            }],
            inflight: vec![DeviceInflight {
                device_id: 1,
                device_name: "loop0".into(),
                count: 2,
                peak: Some(9),
                sysfs_count: None,
            }],
            ops: vec![],
            pods: vec![],
            losses: None,
            losses_total: None,
            agent: None,
            io_pressure: None,
        }
    }

    #[test]
    fn lines_compute_rates_and_percentiles() {
        let l = &device_lines(&snap())[0];
        assert_eq!(l.iops, 50.0);
        let p50 = l.p50_us.unwrap();
        assert!((16.0..=32.0).contains(&p50), "{p50}");
        assert_eq!((l.inflight, l.peak), (2, 9));
        let t = table(&snap());
        assert!(t.contains("loop0") && t.contains("2/9") && t.contains("50"), "{t}");
    }
}
