//! `blkio-agent analyze`: offline analysis of JSONL snapshots (the successor of the seed's
//! `analyze_tracepoints.py`). Needs no privileges and no eBPF toolchain; see docs/analyzer.md.
//!
//! Pipeline: [`input`] finds files and reads them in line-aligned chunks -> parser threads fill
//! a [`dataset::Dataset`] each (bad lines are counted, never fatal) -> merged and put in time
//! order -> [`stats`] (totals, mean, percentiles, peak depth, [`anomaly`]) -> [`charts`],
//! `summary.json`, [`html`] report, and the [`summary`] on stdout.

mod anomaly;
mod args;
mod bytes;
mod charts;
mod dataset;
mod events;
mod html;
mod input;
mod phase_report;
mod phases;
mod stats;
mod summary;
mod units;
mod validate;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

pub use args::{AnalyzeArgs, Format};
pub use bytes::{BytesSummary, analyze_bytes};
pub use charts::Event;
pub use dataset::Skip;
pub use stats::{Anomaly, DeviceStats};

use crate::error::{Error, Result};
use dataset::{Dataset, Filter};

/// Everything one run found and wrote.
pub struct Analysis {
    pub inputs: Vec<PathBuf>,
    /// Inputs, then the events file: `Skip::file` indexes this.
    files: Vec<PathBuf>,
    /// Busiest first.
    pub devices: Vec<DeviceReport>,
    pub skipped: Vec<Skip>,
    pub skipped_count: u64,
    pub snapshots: u64,
    pub duplicates: u64,
    pub events: Vec<Event>,
    /// Events outside the charts' time range (marked at the edges, counted in the summary).
    pub events_outside: usize,
    /// Snapshots whose `timestamp` and `iso_timestamp` disagree, and the first of them.
    pub timestamp_mismatches: u64,
    pub mismatches: Vec<Skip>,
    pub percentiles: Vec<f64>,
    pub anomaly_factor: f64,
    pub anomaly_min_requests: u64,
    pub anomaly_min_duration: f64,
    pub output_dir: PathBuf,
}

impl Analysis {
    pub fn file_name(&self, file: u32) -> String {
        self.files.get(file as usize).map_or_else(|| "?".into(), |p| p.display().to_string())
    }
}

pub struct DeviceReport {
    pub stats: DeviceStats,
    /// `{device}` or `{node}_{device}`: the charts are `{prefix}_latency_hist.png` etc.
    pub file_prefix: String,
    /// (file name, PNG bytes) of every chart (see [`CHARTS`]); None for a device that completed
    /// nothing and never had anything in flight.
    pub charts: Option<Vec<(String, Vec<u8>)>>,
}

impl DeviceReport {
    pub fn display_name(&self) -> String {
        match &self.stats.node {
            Some(n) => format!("{n}/{}", self.stats.device_name),
            None => self.stats.device_name.clone(),
        }
    }
}

/// Chart file suffixes, in report order (`{prefix}_{suffix}.png`; docs/analyzer.md lists
/// them). Throughput and request sizes need the agent's `ops`, so seed files get the others.
pub const CHARTS: [&str; 8] =
    ["latency_hist", "percentiles", "latency_dist", "requests", "throughput", "request_size", "queue_depth", "qd_iops"];

pub fn main(args: AnalyzeArgs) -> anyhow::Result<ExitCode> {
    let a = analyze(&args)?;
    match args.format {
        Format::Text => print!("{}", summary::text(&a)),
        Format::Json => {
            println!("{}", serde_json::to_string_pretty(&summary::build(&a))?);
            // stdout is for a program; a person running it still hears about bad input.
            if let Some(first) = a.skipped.first() {
                eprintln!(
                    "blkio-agent analyze: skipped {} bad line(s) (first: {}:{}: {}); see \"skipped\" in the JSON",
                    a.skipped_count,
                    a.file_name(first.file),
                    first.line,
                    first.reason
                );
            }
            if let Some(first) = a.mismatches.first() {
                eprintln!(
                    "blkio-agent analyze: {} snapshot(s) with disagreeing timestamp and iso_timestamp (first: {}:{}: {})",
                    a.timestamp_mismatches,
                    a.file_name(first.file),
                    first.line,
                    first.reason
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads the inputs, computes everything and writes the charts, `summary.json` and
/// `report.html` into `--output-dir`.
pub fn analyze(args: &AnalyzeArgs) -> Result<Analysis> {
    if let (Some(f), Some(t)) = (args.from, args.to)
        && f >= t
    {
        return Err(Error::Other(format!("--from ({f}) must be earlier than --to ({t})")));
    }
    let mut percentiles = args.percentiles.clone();
    percentiles.sort_by(f64::total_cmp);
    percentiles.dedup();
    let filter = build_filter(args);
    let inputs = input::resolve_inputs(&args.input)?;
    std::fs::create_dir_all(&args.output_dir).map_err(|e| Error::write(&args.output_dir, e))?;

    let total_bytes = inputs.iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum();
    let progress = input::Progress::new(total_bytes);
    let ds = read_all(&inputs, &filter, &progress);
    progress.finish();
    let mut ds = ds?;

    ds.finalize();
    check_usable(&ds, &inputs, &filter, args)?;
    // Bad event lines are appended after the inputs' (the events file has the last index), so
    // the skipped list stays in file:line order.
    let mut files = inputs.clone();
    let events = match &args.events {
        Some(path) => {
            files.push(path.clone());
            events::read_events(path, (files.len() - 1) as u32, &mut ds)?
        }
        None => Vec::new(),
    };

    let cfg = anomaly::Config {
        factor: args.anomaly_factor,
        min_requests: args.anomaly_min_requests,
        min_duration_s: args.anomaly_min_duration,
    };
    let phase_list = args.events.is_some().then(|| phases::phases(&events));
    let mut picked: Vec<(usize, usize, DeviceStats)> = Vec::new();
    for (n, node) in ds.nodes.iter().enumerate() {
        for (d, dev) in node.devices.iter().enumerate() {
            picked.push((n, d, stats::device_stats(node, dev, &percentiles, cfg, phase_list.as_deref())));
        }
    }
    picked.sort_by(|a, b| {
        (b.2.total_requests.cmp(&a.2.total_requests))
            .then_with(|| (&a.2.node, &a.2.device_name).cmp(&(&b.2.node, &b.2.device_name)))
    });
    if let Some(top) = args.top {
        picked.truncate(top);
    }

    let t0 = picked
        .iter()
        .map(|(n, d, _)| ds.nodes[*n].devices[*d].recs.first().map_or(f64::INFINITY, |r| r.ts - r.dur))
        .fold(f64::INFINITY, f64::min);
    let t1 = picked.iter().map(|(_, _, s)| s.last_timestamp).fold(f64::NEG_INFINITY, f64::max);
    // Events a little outside the data (a phase boundary written just before the agent's first
    // snapshot) widen the time axis; far ones are marked at its edges instead of stretching it.
    let slack = (t1 - t0).max(1.0) * 0.25;
    let near = events.iter().filter(|e| e.ts >= t0 - slack && e.ts <= t1 + slack);
    let (t0, t1) = near.fold((t0, t1), |(a, b), e| (a.min(e.ts), b.max(e.ts)));
    let events_outside = events.iter().filter(|e| e.ts < t0 || e.ts > t1).count();
    let frame = charts::Frame { t0, t1, events: &events, anomaly_factor: args.anomaly_factor };
    let several_nodes = picked.iter().map(|(n, _, _)| *n).collect::<std::collections::HashSet<_>>().len() > 1;
    let prefixes = file_prefixes(&picked, several_nodes);

    let rendered = render_all(&ds, &picked, &frame, &percentiles)?;
    let mut devices = Vec::with_capacity(picked.len());
    for ((_, _, stats), (prefix, pngs)) in picked.into_iter().zip(prefixes.into_iter().zip(rendered)) {
        let charts = match pngs {
            Some(list) => {
                let mut named = Vec::new();
                for (suffix, png) in list {
                    let name = format!("{prefix}_{suffix}.png");
                    write_file(&args.output_dir.join(&name), &png)?;
                    named.push((name, png));
                }
                Some(named)
            }
            None => None,
        };
        devices.push(DeviceReport { stats, file_prefix: prefix, charts });
    }

    let analysis = Analysis {
        inputs,
        files,
        devices,
        skipped: std::mem::take(&mut ds.skipped),
        skipped_count: ds.skipped_count,
        snapshots: ds.snapshots,
        duplicates: ds.duplicates,
        events,
        events_outside,
        timestamp_mismatches: ds.mismatch_count,
        mismatches: std::mem::take(&mut ds.mismatches),
        percentiles,
        anomaly_factor: args.anomaly_factor,
        anomaly_min_requests: args.anomaly_min_requests,
        anomaly_min_duration: args.anomaly_min_duration,
        output_dir: args.output_dir.clone(),
    };
    let json = serde_json::to_vec_pretty(&summary::build(&analysis))
        .map_err(|e| Error::Other(format!("encoding summary.json failed: {e}")))?;
    write_file(&args.output_dir.join("summary.json"), &json)?;
    write_file(&args.output_dir.join("report.html"), html::render(&analysis).as_bytes())?;
    Ok(analysis)
}

fn build_filter(args: &AnalyzeArgs) -> Filter {
    let mut f = Filter { from: args.from, to: args.to, ..Default::default() };
    for p in &args.device {
        // Patterns were validated by the argument parser.
        match p.strip_prefix('!') {
            Some(x) => f.exclude.extend(glob::Pattern::new(x).ok()),
            None => f.include.extend(glob::Pattern::new(p).ok()),
        }
    }
    f
}

/// Parses all files on every core: this thread reads and cuts chunks, the others parse.
fn read_all(files: &[PathBuf], filter: &Filter, progress: &input::Progress) -> Result<Dataset> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8);
    let (tx, rx) = std::sync::mpsc::sync_channel::<input::Chunk>(workers * 2);
    let rx = Mutex::new(rx);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut ds = Dataset::default();
                    loop {
                        let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        let Ok(chunk) = next else { break };
                        for (n, line) in input::lines(&chunk) {
                            ds.ingest_line(filter, chunk.file, n, line);
                        }
                    }
                    ds
                })
            })
            .collect();
        let mut damaged = Vec::new();
        let mut result = Ok(());
        for (i, path) in files.iter().enumerate() {
            match input::read_chunks(path, i as u32, progress, |c| {
                // Send fails only if every parser died, which the join below reports.
                let _ = tx.send(c);
            }) {
                Ok(problems) => damaged.extend(problems.into_iter().map(|(line, reason)| (i as u32, line, reason))),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        drop(tx);
        // Merge into the first thread's dataset rather than a new one: the records are copied
        // once less, which is most of the peak memory on a day of snapshots.
        let mut ds: Option<Dataset> = None;
        for h in handles {
            let part = h.join().map_err(|_| Error::Other("a parser thread panicked".into()))?;
            match ds.as_mut() {
                Some(ds) => ds.merge(part),
                None => ds = Some(part),
            }
        }
        let mut ds = ds.unwrap_or_default();
        for (file, line, reason) in damaged {
            ds.skip(file, line, reason);
        }
        result.map(|_| ds)
    })
}

/// Fails with a one-line reason when nothing usable is left.
fn check_usable(ds: &Dataset, inputs: &[PathBuf], filter: &Filter, args: &AnalyzeArgs) -> Result<()> {
    if ds.snapshots == 0 {
        let msg = if ds.out_of_range > 0 {
            format!("all {} snapshots are outside --from/--to; widen the range or drop those flags", ds.out_of_range)
        } else if let Some(first) = ds.skipped.first()
            && (first.reason.starts_with("looks like pretty") || first.reason.starts_with("a JSON array"))
        {
            let file = inputs.get(first.file as usize).map_or_else(String::new, |p| p.display().to_string());
            let what = first.reason.split(':').next().unwrap_or(&first.reason);
            format!(
                "no usable snapshot: {file} {}; JSONL is one object per line (convert with `jq -c {}`)",
                if what.starts_with("looks") { "looks like pretty-printed JSON" } else { "is a JSON array" },
                if what.starts_with("looks") { "." } else { "'.[]'" }
            )
        } else if let Some(first) = ds.skipped.first() {
            let file = inputs.get(first.file as usize).map_or_else(String::new, |p| p.display().to_string());
            format!(
                "no usable snapshot: all {} non-blank line(s) are bad (first: {file}:{}: {}); check that --input points at blkio-agent JSONL",
                ds.skipped_count, first.line, first.reason
            )
        } else {
            "the input contains no snapshots (empty files?); check --input".to_string()
        };
        return Err(Error::Other(msg));
    }
    if ds.nodes.iter().all(|n| n.devices.is_empty()) {
        let seen = ds.seen_devices();
        let msg = if !filter.include.is_empty() || !filter.exclude.is_empty() {
            format!(
                "no device matches --device {}; devices in the input: {}",
                args.device.join(","),
                if seen.is_empty() { "none".into() } else { seen.join(", ") }
            )
        } else {
            "the snapshots list no devices (no I/O was recorded)".to_string()
        };
        return Err(Error::Other(msg));
    }
    Ok(())
}

/// Seed file names (`{device}_latency_hist.png`), node-prefixed when several nodes are present;
/// a name that would collide gets the device's major-minor appended.
fn file_prefixes(picked: &[(usize, usize, DeviceStats)], several_nodes: bool) -> Vec<String> {
    let clean = |s: &str| {
        s.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect::<String>()
    };
    let mut used = std::collections::HashSet::new();
    picked
        .iter()
        .map(|(_, _, s)| {
            let base = match (several_nodes, &s.node) {
                (true, Some(n)) => format!("{}_{}", clean(n), clean(&s.device_name)),
                (true, None) => format!("unknown-node_{}", clean(&s.device_name)),
                (false, _) => clean(&s.device_name),
            };
            let mut name = base.clone();
            if !used.insert(name.clone()) {
                name = format!("{base}_{}-{}", s.device_id >> 20, s.device_id & 0xfffff);
                used.insert(name.clone());
            }
            name
        })
        .collect()
}

type Pngs = Option<Vec<(&'static str, Vec<u8>)>>;

/// Renders every device's charts, one device per core at a time.
fn render_all(
    ds: &Dataset,
    picked: &[(usize, usize, DeviceStats)],
    frame: &charts::Frame,
    percentiles: &[f64],
) -> Result<Vec<Pngs>> {
    let columns: Vec<charts::Columns> =
        ds.nodes.iter().map(|n| charts::Columns::new(&n.timeline, charts::MAX_COLUMNS)).collect();
    let next = AtomicUsize::new(0);
    let out: Mutex<Vec<Option<Result<Pngs>>>> = Mutex::new((0..picked.len()).map(|_| None).collect());
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8).min(picked.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((n, d, st)) = picked.get(i) else { break };
                    let r = render_device(&columns[*n], &ds.nodes[*n].devices[*d], st, frame, percentiles);
                    out.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
                }
            });
        }
    });
    out.into_inner().unwrap_or_else(|e| e.into_inner()).into_iter().map(|r| r.unwrap_or(Ok(None))).collect()
}

fn render_device(
    cols: &charts::Columns,
    dev: &dataset::DeviceSeries,
    st: &DeviceStats,
    frame: &charts::Frame,
    percentiles: &[f64],
) -> Result<Pngs> {
    if st.total_requests == 0 && st.peak_queue_depth.peak.unwrap_or(0) == 0 {
        return Ok(None);
    }
    let data = charts::DeviceColumns::new(cols, dev);
    let name = match &st.node {
        Some(n) => format!("{n}/{}", st.device_name),
        None => st.device_name.clone(),
    };
    let an = &st.anomalies;
    // Aggregate histograms per op for the bar charts.
    let (mut lat, mut size) = ([[0u64; dataset::SLOTS]; 5], [[0u64; dataset::SLOTS]; 5]);
    for r in &dev.recs {
        for o in dev.rec_op_detail(r) {
            dev.op_slots(o, &mut lat[o.op as usize]);
            dev.size_slots(o, &mut size[o.op as usize]);
        }
    }
    let mut out = vec![
        ("latency_hist", charts::latency_heatmap(&name, frame, cols, &data, percentiles, an)?),
        ("percentiles", charts::percentiles_over_time(&name, frame, cols, &data, percentiles, an)?),
        ("latency_dist", charts::latency_dist(&name, &charts::op_series(&lat, &st.slots))?),
        ("requests", charts::requests(&name, frame, cols, &data, an)?),
    ];
    if let Some(png) = charts::throughput(&name, frame, cols, &data, an)? {
        out.push(("throughput", png));
        out.push(("request_size", charts::request_size(&name, &charts::op_series(&size, &[0; dataset::SLOTS]))?));
    }
    out.push(("queue_depth", charts::queue_depth(&name, frame, cols, &data, an, st.peak_queue_depth.peak)?));
    out.push(("qd_iops", charts::qd_iops(&name, frame, cols, &data, an)?));
    Ok(Some(out))
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| Error::write(path, e))
}
