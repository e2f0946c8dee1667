//! The live per-device view: a compact table redrawn each interval on a terminal, otherwise one
//! structured log line per interval (what a DaemonSet's `kubectl logs` should show).

use std::{
    collections::BTreeMap,
    io::{IsTerminal as _, Write as _},
};

use crate::{cli::LiveMode, histogram::percentile, interval::Interval, snapshot::iso_timestamp};

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

/// One line per device of the interval, by name.
pub fn device_lines(iv: &Interval) -> Vec<DeviceLine> {
    let secs = if iv.interval_s > 0.0 { iv.interval_s } else { 1.0 };
    let mut lines: BTreeMap<&str, DeviceLine> = BTreeMap::new();
    for d in &iv.devices {
        let time = d.device_time();
        let depth = d.depth.map_or((0, 0), |x| (x.count, x.peak));
        lines.insert(
            &d.name,
            DeviceLine {
                device: d.name.clone(),
                iops: d.count() as f64 / secs,
                mb_per_s: d.bytes() as f64 / secs / 1e6,
                p50_us: percentile(&time.slots, 50.0),
                p99_us: percentile(&time.slots, 99.0),
                inflight: depth.0,
                peak: depth.1,
            },
        );
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
pub fn table(s: &Interval) -> String {
    let mut out = format!(
        "blkio-agent  node {}  {}  interval {:.1}s\n{:<16} {:>10} {:>9} {:>9} {:>9} {:>12}\n",
        s.node,
        iso_timestamp(s.end_s),
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
    // Every kind of the table that is a loss and happened, by its key.
    let lost: Vec<String> =
        s.losses_total.iter().filter(|(k, n)| k.lost && *n > 0).map(|(k, n)| format!("{n} {}", k.key)).collect();
    if !lost.is_empty() {
        out.push_str(&format!("lost since start: {}\n", lost.join(", ")));
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

    pub fn render(&self, s: &Interval) {
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
            seq = s.seq,
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
    use crate::interval::{Depth, DeviceInterval, Hist, OpInterval};

    fn interval() -> Interval {
        let mut slots = [0; crate::histogram::HIST_SLOTS];
        slots[4] = 100;
        let mut iv = Interval::empty(0.0, 2.0, "n", 3, "btf");
        iv.devices.push(DeviceInterval {
            id: 1,
            name: "loop0".into(),
            ops: vec![OpInterval {
                op: "read",
                count: 100,
                bytes: 400_000,
                device_time: Hist::new(slots, 2_000_000),
                queue_time: Hist::default(),
                size: Hist::default(),
            }],
            depth: Some(Depth { count: 2, peak: 9, peak_upper: 9, sysfs: None }),
            unseen: None,
        });
        iv
    }

    #[test]
    fn lines_compute_rates_and_percentiles() {
        let l = &device_lines(&interval())[0];
        assert_eq!(l.iops, 50.0);
        assert_eq!(l.mb_per_s, 0.2);
        let p50 = l.p50_us.unwrap();
        assert!((16.0..=32.0).contains(&p50), "{p50}");
        assert_eq!((l.inflight, l.peak), (2, 9));
        let t = table(&interval());
        assert!(t.contains("loop0") && t.contains("2/9") && t.contains("50"), "{t}");
    }

    #[test]
    fn the_table_lists_losses_from_the_table_of_kinds() {
        let mut iv = interval();
        assert!(!table(&iv).contains("lost since start"));
        iv.losses_total = iv.losses_total.clone().with("map_read_failures", 1).with("requeued", 4);
        let t = table(&iv);
        assert!(t.contains("lost since start: 1 map_read_failures\n"), "{t}");
    }
}
