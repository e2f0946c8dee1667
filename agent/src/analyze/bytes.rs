//! The analyzer on bytes in memory: the entry point of the fuzz targets (agent/fuzz) and of the
//! test that replays their corpus.

use super::charts::{self, Event};
use super::dataset::{Dataset, Filter};
use super::{anomaly, events, phases, stats};

/// What [`analyze_bytes`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct BytesSummary {
    pub snapshots: u64,
    pub skipped: u64,
    pub events: usize,
    pub devices: usize,
    pub requests: u64,
}

/// Parses JSONL snapshots and an events file given as bytes, exactly as `analyze` parses files,
/// and computes every statistic of every device (percentiles, anomalies, the per-op and
/// per-phase tables) without drawing or writing anything. The fuzz targets (agent/fuzz) and
/// the test that replays their corpus call this: bad input must be reported, never panic.
pub fn analyze_bytes(jsonl: &[u8], events: &[u8]) -> BytesSummary {
    let filter = Filter::default();
    let mut ds = Dataset::default();
    for (n, line) in jsonl.split(|b| *b == b'\n').enumerate() {
        ds.ingest_line(&filter, 0, n as u64 + 1, line);
    }
    ds.finalize();
    let mut evs: Vec<Event> = Vec::new();
    for line in events.split(|b| *b == b'\n') {
        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        match events::parse_event(text) {
            Ok(e) => evs.push(e),
            Err(_) => ds.skipped_count += 1,
        }
    }
    evs.sort_by(|a, b| a.ts.total_cmp(&b.ts));
    let phase_list = phases::phases(&evs);
    let cfg = anomaly::Config { factor: 4.0, min_requests: 20, min_duration_s: 1.0 };
    let (mut devices, mut requests) = (0, 0);
    for node in &ds.nodes {
        let cols = charts::Columns::new(&node.timeline, charts::MAX_COLUMNS);
        for dev in &node.devices {
            let st = stats::device_stats(node, dev, &[50.0, 99.9], cfg, Some(&phase_list));
            // The per-column data the charts draw from, without drawing.
            let _ = charts::DeviceColumns::new(&cols, dev);
            devices += 1;
            requests += st.total_requests;
        }
    }
    BytesSummary { snapshots: ds.snapshots, skipped: ds.skipped_count, events: evs.len(), devices, requests }
}
