//! `{device}_queue_depth.png` and `{device}_requests.png`: line charts over time.

use plotters::prelude::*;

use super::super::dataset::{NONE, OPS};
use super::super::stats::Anomaly;
use super::super::units::si;
use super::{
    Chart, Columns, DeviceColumns, Frame, Legend, Mark, YAxis, chart, draw_err, draw_legend, draw_overlay, draw_steps,
    linear_ticks, render, titled,
};
use crate::error::Result;

pub(super) const OP_COLORS: [RGBColor; 5] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0x7f, 0x7f, 0x7f),
];

/// Draws a line and adds its legend entry when something was drawn.
pub(super) fn draw_line(
    ch: &mut Chart,
    cols: &Columns,
    value: impl Fn(usize) -> Option<f64>,
    color: RGBColor,
    label: &str,
    legend: &mut Legend,
) -> Result<()> {
    if draw_steps(ch, cols, value, color)? {
        legend.push((label.to_string(), Mark::Line(color)));
    }
    Ok(())
}

pub(super) fn bin_note(cols: &Columns) -> String {
    if cols.per_column > 1 { format!(", max per {} snapshots", cols.per_column) } else { String::new() }
}

pub fn queue_depth(
    device: &str,
    frame: &Frame,
    cols: &Columns,
    data: &DeviceColumns,
    anomalies: &[Anomaly],
    peak: Option<u64>,
) -> Result<Vec<u8>> {
    let has_peak = data.peak.iter().any(|v| *v != NONE);
    let max = data.inflight.iter().chain(&data.peak).filter(|v| **v != NONE).copied().max().unwrap_or(0);
    let (top, ticks) = linear_ticks(max as f64 * 1.35);
    let label = |v: &f64| si(*v);
    let title = match peak {
        Some(p) => format!("{device}: requests in flight (peak {p})"),
        None => format!("{device}: requests in flight (no data)"),
    };
    render(|root| {
        root.fill(&WHITE).map_err(draw_err)?;
        let (strip, body) = titled(root, &title)?;
        let y = YAxis { lo: 0.0, hi: top, ticks, label: &label, desc: "requests in flight".into() };
        let mut ch = chart(&body, frame, y)?;
        let mut legend = Legend::new();
        let overlay = draw_overlay(&mut ch, frame, anomalies, false)?;
        let get = |col: &Vec<u64>, c: usize| (col[c] != NONE).then(|| col[c] as f64);
        if has_peak {
            let label = format!("peak during interval{}", bin_note(cols));
            draw_line(&mut ch, cols, |c| get(&data.peak, c), RGBColor(0xff, 0x7f, 0x0e), &label, &mut legend)?;
        }
        let label = format!("in flight at interval end{}", bin_note(cols));
        draw_line(&mut ch, cols, |c| get(&data.inflight, c), RGBColor(0x1f, 0x77, 0xb4), &label, &mut legend)?;
        legend.extend(overlay);
        draw_legend(&strip, &ch, &legend)
    })
}

pub fn requests(
    device: &str,
    frame: &Frame,
    cols: &Columns,
    data: &DeviceColumns,
    anomalies: &[Anomaly],
) -> Result<Vec<u8>> {
    let chart = RateChart {
        title: "requests per second",
        desc: "completed requests per second (IOPS)",
        scale: 1.0,
        total: data.requests.clone(),
        per_op: data.ops.as_deref(),
    };
    rate_chart(device, frame, cols, anomalies, &chart)
}

/// A per-second rate over time, in total and per op: IOPS and MB/s share this one chart.
pub(super) struct RateChart<'a> {
    pub title: &'static str,
    pub desc: &'static str,
    /// Divisor of the counts (1 for requests, 10^6 for MB).
    pub scale: f64,
    /// Count of each column, all ops.
    pub total: Vec<u64>,
    /// Count of each column per op (dataset::OPS order), when the input has `ops`.
    pub per_op: Option<&'a [[u64; 5]]>,
}

pub(super) fn rate_chart(
    device: &str,
    frame: &Frame,
    cols: &Columns,
    anomalies: &[Anomaly],
    spec: &RateChart,
) -> Result<Vec<u8>> {
    let rate = |n: u64, c: usize| if cols.seconds[c] > 0.0 { n as f64 / spec.scale / cols.seconds[c] } else { 0.0 };
    let max = (0..cols.len()).map(|c| rate(spec.total[c], c)).fold(0.0, f64::max);
    let (top, ticks) = linear_ticks(max * 1.35);
    let label = |v: &f64| si(*v);
    let avg = if cols.per_column > 1 { format!(" (mean per {} snapshots)", cols.per_column) } else { String::new() };
    render(|root| {
        root.fill(&WHITE).map_err(draw_err)?;
        let (strip, body) = titled(root, &format!("{device}: {}{avg}", spec.title))?;
        let y = YAxis { lo: 0.0, hi: top, ticks, label: &label, desc: spec.desc.into() };
        let mut ch = chart(&body, frame, y)?;
        let mut legend = Legend::new();
        let overlay = draw_overlay(&mut ch, frame, anomalies, false)?;
        draw_line(&mut ch, cols, |c| Some(rate(spec.total[c], c)), BLACK, "all ops", &mut legend)?;
        if let Some(ops) = spec.per_op {
            for (i, name) in OPS.iter().enumerate() {
                if ops.iter().all(|o| o[i] == 0) {
                    continue;
                }
                draw_line(&mut ch, cols, |c| Some(rate(ops[c][i], c)), OP_COLORS[i], name, &mut legend)?;
            }
        }
        legend.extend(overlay);
        draw_legend(&strip, &ch, &legend)
    })
}
