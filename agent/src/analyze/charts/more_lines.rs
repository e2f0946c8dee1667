//! `{device}_throughput.png`, `{device}_percentiles.png` and `{device}_qd_iops.png`: more time
//! charts on the shared time axis.

use plotters::prelude::*;

use super::super::dataset::NONE;
use super::super::stats::Anomaly;
use super::super::units::{human_us, si};
use super::lines::{RateChart, bin_note, draw_line, rate_chart};
use super::{
    Columns, DeviceColumns, FAMILY, Frame, LABEL_PX, Legend, YAxis, chart, draw_err, draw_legend, draw_overlay,
    draw_steps, linear_ticks, percentile_color, render, titled,
};
use crate::error::Result;
use crate::histogram::percentile;

/// MB/s (10^6 bytes per second) per op and in total. Only for inputs with `ops` (sizes).
pub fn throughput(
    device: &str,
    frame: &Frame,
    cols: &Columns,
    data: &DeviceColumns,
    anomalies: &[Anomaly],
) -> Result<Option<Vec<u8>>> {
    let Some(bytes) = &data.bytes else { return Ok(None) };
    let chart = RateChart {
        title: "throughput",
        desc: "MB/s (10⁶ bytes per second)",
        scale: 1e6,
        total: bytes.iter().map(|b| b.iter().sum()).collect(),
        per_op: Some(bytes),
    };
    rate_chart(device, frame, cols, anomalies, &chart).map(Some)
}

/// The requested percentiles of each column over time, on a log2 latency axis.
pub fn percentiles_over_time(
    device: &str,
    frame: &Frame,
    cols: &Columns,
    data: &DeviceColumns,
    percentiles: &[f64],
    anomalies: &[Anomaly],
) -> Result<Vec<u8>> {
    let values: Vec<Vec<Option<f64>>> =
        percentiles.iter().map(|&p| data.heat.iter().map(|h| percentile(h, p)).collect()).collect();
    let all = values.iter().flatten().flatten().copied().filter(|v| *v > 0.0);
    let (lo, hi) = all.fold((f64::INFINITY, 0f64), |(l, h), v| (l.min(v), h.max(v)));
    let (lo, hi) = if lo.is_finite() { (lo.max(1.0).log2().floor(), hi.max(2.0).log2().ceil()) } else { (4.0, 10.0) };
    let y_hi = hi + ((hi - lo) * 0.25).max(1.0);
    let stride = ((y_hi - lo) / 10.0).ceil().max(1.0);
    let ticks: Vec<f64> = (0..).map(|i| lo + i as f64 * stride).take_while(|v| *v <= y_hi).collect();
    let label = |y: &f64| human_us(y.exp2());
    render(|root| {
        root.fill(&WHITE).map_err(draw_err)?;
        let (strip, body) = titled(root, &format!("{device}: latency percentiles over time{}", bin_note(cols)))?;
        let y = YAxis { lo, hi: y_hi, ticks, label: &label, desc: "device time (log scale)".into() };
        let mut ch = chart(&body, frame, y)?;
        let mut legend = Legend::new();
        let overlay = draw_overlay(&mut ch, frame, anomalies, false)?;
        for (p, v) in percentiles.iter().zip(&values) {
            let col = percentile_color(*p);
            draw_line(&mut ch, cols, |c| v[c].filter(|x| *x > 0.0).map(f64::log2), col, &format!("p{p}"), &mut legend)?;
        }
        legend.extend(overlay);
        draw_legend(&strip, &ch, &legend)
    })
}

/// IOPS (left axis) and requests in flight (right axis) on one chart: queueing shows as depth
/// rising while IOPS stays flat.
pub fn qd_iops(
    device: &str,
    frame: &Frame,
    cols: &Columns,
    data: &DeviceColumns,
    anomalies: &[Anomaly],
) -> Result<Vec<u8>> {
    let rate = |n: u64, c: usize| if cols.seconds[c] > 0.0 { n as f64 / cols.seconds[c] } else { 0.0 };
    let iops_max = (0..cols.len()).map(|c| rate(data.requests[c], c)).fold(0.0, f64::max);
    let depth_of = |c: usize| {
        let v = if data.peak[c] != NONE { data.peak[c] } else { data.inflight[c] };
        (v != NONE).then_some(v as f64)
    };
    let depth_max = (0..cols.len()).filter_map(depth_of).fold(0.0, f64::max);
    let (top, ticks) = linear_ticks(iops_max * 1.35);
    let (dtop, dticks) = linear_ticks(depth_max * 1.35);
    // Depth is drawn in IOPS coordinates scaled so that its axis top meets the IOPS axis top.
    let scale = top / dtop;
    let label = |v: &f64| si(*v);
    let depth_label = if data.peak.iter().any(|v| *v != NONE) { "peak in flight" } else { "in flight at interval end" };
    render(|root| {
        root.fill(&WHITE).map_err(draw_err)?;
        let (strip, body) = titled(root, &format!("{device}: queue depth vs IOPS{}", bin_note(cols)))?;
        let y = YAxis { lo: 0.0, hi: top, ticks, label: &label, desc: "completed requests per second (IOPS)".into() };
        let mut ch = chart(&body, frame, y)?;
        let mut legend = Legend::new();
        let overlay = draw_overlay(&mut ch, frame, anomalies, false)?;
        draw_line(&mut ch, cols, |c| Some(rate(data.requests[c], c)), BLACK, "IOPS (left axis)", &mut legend)?;
        let depth_color = RGBColor(0x1f, 0x77, 0xb4);
        if draw_steps(&mut ch, cols, |c| depth_of(c).map(|d| d * scale), depth_color)? {
            legend.push((format!("{depth_label} (right axis)"), super::Mark::Line(depth_color)));
        }
        // The right axis: tick labels in the reserved area right of the plot.
        let (px, _) = ch.plotting_area().get_base_pixel();
        let (pw, _) = ch.plotting_area().dim_in_pixel();
        let font = (FAMILY, LABEL_PX).into_font().color(&depth_color);
        for t in &dticks {
            let (_, y) = ch.backend_coord(&(frame.t0, t * scale));
            root.draw(&Text::new(si(*t), (px + pw as i32 + 8, y - 7), font.clone())).map_err(draw_err)?;
        }
        let desc = (FAMILY, LABEL_PX).into_font().color(&depth_color).transform(FontTransform::Rotate90);
        let (_, mid) = ch.backend_coord(&(frame.t0, top / 2.0));
        root.draw(&Text::new("requests in flight", (px + pw as i32 + 70, mid - 60), desc)).map_err(draw_err)?;
        legend.extend(overlay);
        draw_legend(&strip, &ch, &legend)
    })
}
