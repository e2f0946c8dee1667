//! The per-op and per-phase tables in `summary.json`, on stdout and in the HTML report.

use std::fmt::Write as _;

use serde::Serialize;

use super::args::percentile_key;
use super::phases::{OpRow, PHASE_PERCENTILES, PhaseStats};
use super::summary::OrderedMap;
use super::units::{grouped, html_escape as esc, human_us, utc};

/// Why the latency columns differ from fio's, printed under every phase table.
pub const DEVICE_TIME_NOTE: &str = "Latency here is device time, not fio's clat: from the request's issue to the driver to its completion in the block layer. \
fio's clat (and lat) also include the time a request waits in the block layer's queue before issue (the QUEUE column), the completion's \
way back to fio and fio's wake-up: expect fio's clat percentiles above these, by more at higher queue depth. Counts, IOPS and MB/s are comparable.";

#[derive(Serialize)]
pub struct OpRowJson {
    pub op: &'static str,
    pub requests: u64,
    pub bytes: Option<u64>,
    pub iops: Option<f64>,
    pub mb_per_s: Option<f64>,
    /// Device time.
    pub percentiles_us: OrderedMap,
    pub mean_device_us: Option<f64>,
    pub mean_queue_us: Option<f64>,
    pub mean_size_bytes: Option<f64>,
}

#[derive(Serialize)]
pub struct PhaseJson {
    pub label: String,
    pub start: f64,
    pub end: f64,
    pub active_seconds: f64,
    pub peak_depth: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_depth_upper: Option<u64>,
    pub avg_depth: Option<f64>,
    pub ops: Vec<OpRowJson>,
}

fn row_json(r: &OpRow) -> OpRowJson {
    OpRowJson {
        op: r.op,
        requests: r.requests,
        bytes: r.bytes,
        iops: r.iops,
        mb_per_s: r.mb_per_s,
        percentiles_us: OrderedMap(
            PHASE_PERCENTILES
                .iter()
                .zip(r.percentiles)
                .map(|(p, v)| (percentile_key(*p), v.map_or(serde_json::Value::Null, Into::into)))
                .collect(),
        ),
        mean_device_us: r.mean_device_us,
        mean_queue_us: r.mean_queue_us,
        mean_size_bytes: r.mean_size_bytes,
    }
}

pub fn phase_json(p: &PhaseStats) -> PhaseJson {
    PhaseJson {
        label: p.label.clone(),
        start: p.start,
        end: p.end,
        active_seconds: p.active_s,
        peak_depth: p.peak_depth.peak,
        peak_depth_upper: p.peak_depth.upper(),
        avg_depth: p.avg_depth,
        ops: p.rows.iter().map(row_json).collect(),
    }
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.filter(|x| x.is_finite()).map_or("-".into(), f)
}

/// Cells of one table row (phase label only on its first row).
fn cells(p: &PhaseStats, r: &OpRow, first: bool, with_phase: bool) -> Vec<String> {
    let mut c = Vec::new();
    if with_phase {
        c.push(if first { p.label.chars().take(32).collect() } else { String::new() });
    }
    c.push(r.op.to_string());
    c.push(grouped(r.requests));
    c.push(opt(r.iops, |v| format!("{v:.0}")));
    c.push(opt(r.mb_per_s, |v| format!("{v:.1}")));
    c.extend(r.percentiles.iter().map(|v| opt(*v, human_us)));
    c.push(opt(r.mean_queue_us, human_us));
    c.push(opt(r.mean_size_bytes, |v| format!("{:.0} KiB", v / 1024.0)));
    if first {
        c.push(format!("{}/{}", p.peak_depth.cell(), opt(p.avg_depth, |v| format!("{v:.1}"))));
        c.push(format!("{:.2}", p.active_s));
    } else {
        c.extend([String::new(), String::new()]);
    }
    c
}

fn header(with_phase: bool) -> Vec<String> {
    let mut h: Vec<String> = Vec::new();
    if with_phase {
        h.push("PHASE".into());
    }
    h.extend(["OP", "REQUESTS", "IOPS", "MB/s"].map(String::from));
    h.extend(PHASE_PERCENTILES.iter().map(|p| percentile_key(*p)));
    h.extend(["QUEUE", "SIZE", "DEPTH pk/avg", "ACTIVE s"].map(String::from));
    h
}

/// Rows of a table over `groups` (one group per phase, or the whole recording).
pub fn rows(groups: &[PhaseStats], with_phase: bool) -> Vec<Vec<String>> {
    let mut rows = vec![header(with_phase)];
    for p in groups {
        for (i, r) in p.rows.iter().enumerate() {
            rows.push(cells(p, r, i == 0, with_phase));
        }
    }
    rows
}

pub fn write_table(out: &mut String, rows: &[Vec<String>]) {
    let widths: Vec<usize> =
        (0..rows[0].len()).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    for r in rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        let _ = writeln!(out, "  {}", line.join("  ").trim_end());
    }
}

/// The text block for one device: per-op over the recording, then per phase.
pub fn text(out: &mut String, name: &str, by_op: &PhaseStats, phases: &[PhaseStats]) {
    let _ = writeln!(out, "\n{name}: per op (IOPS and MB/s over the {:.1} s with I/O)", by_op.active_s);
    write_table(out, &rows(std::slice::from_ref(by_op), false));
    if !phases.is_empty() {
        let _ = writeln!(
            out,
            "\n{name}: per phase (--events are phase boundaries; a snapshot belongs to the phase holding the middle of its interval)"
        );
        for p in phases {
            let _ = writeln!(out, "  {:<32}  {} to {}", p.label, utc(p.start), &utc(p.end)[11..]);
        }
        write_table(out, &rows(phases, true));
    }
}

/// The same tables for report.html.
pub fn html(h: &mut String, name: &str, by_op: &PhaseStats, phases: &[PhaseStats]) {
    let table = |h: &mut String, rows: &[Vec<String>]| {
        h.push_str("<table>");
        for (i, r) in rows.iter().enumerate() {
            h.push_str("<tr>");
            for (j, c) in r.iter().enumerate() {
                let (tag, class) = (if i == 0 { "th" } else { "td" }, if j < 2 { " class=\"l\"" } else { "" });
                let _ = write!(h, "<{tag}{class}>{}</{tag}>", esc(c));
            }
            h.push_str("</tr>\n");
        }
        h.push_str("</table>\n");
    };
    let _ = writeln!(h, "<h3>{}: per op (over the {:.1} s with I/O)</h3>", esc(name), by_op.active_s);
    table(h, &rows(std::slice::from_ref(by_op), false));
    if !phases.is_empty() {
        let _ = writeln!(
            h,
            "<h3>{}: per phase</h3>\n<p class=\"muted\">Events are phase boundaries; a snapshot belongs to the phase holding the middle of its interval.</p>",
            esc(name)
        );
        table(h, &rows(phases, true));
    }
}
