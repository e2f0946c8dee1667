//! `{device}_latency_dist.png` (the aggregate latency histogram) and `{device}_request_size.png`
//! (request sizes): bar charts over log2 buckets, one bar per op when the input has `ops`.

use plotters::prelude::*;

use super::super::dataset::{OPS, SLOTS};
use super::super::units::{human_us, si};
use super::lines::OP_COLORS;
use super::{
    AXIS_DESC_PX, Axis, FAMILY, LABEL_PX, LEFT_AREA, Legend, MARGIN, Mark, X_LABEL_AREA, draw_err, draw_legend,
};
use super::{linear_ticks, render, titled};
use crate::error::Result;
use crate::histogram::bucket_low;

/// Bars per bucket: `(label, colour, per-slot counts)`.
pub type Series = Vec<(String, RGBColor, [u64; SLOTS])>;

pub fn latency_dist(device: &str, series: &Series) -> Result<Vec<u8>> {
    let label = |k: u32| if k == 0 { "0".to_string() } else { human_us(bucket_low(k) as f64) };
    bars(
        &format!("{device}: latency distribution (all intervals)"),
        "device time (log2 bucket, lower edge)",
        series,
        &label,
    )
}

pub fn request_size(device: &str, series: &Series) -> Result<Vec<u8>> {
    bars(&format!("{device}: request sizes (all intervals)"), "request size (log2 bucket, lower edge)", series, &bytes)
}

fn bytes(k: u32) -> String {
    let v = bucket_low(k);
    match v {
        v if v >= 1 << 30 => format!("{} GiB", v >> 30),
        v if v >= 1 << 20 => format!("{} MiB", v >> 20),
        v if v >= 1 << 10 => format!("{} KiB", v >> 10),
        v => format!("{v} B"),
    }
}

/// Op series of a device: one per op with completions, or the single `all ops` series.
pub fn op_series(per_op: &[[u64; SLOTS]; 5], all: &[u64; SLOTS]) -> Series {
    let mut s: Series = OPS
        .iter()
        .enumerate()
        .filter(|(i, _)| per_op[*i].iter().any(|c| *c > 0))
        .map(|(i, name)| (name.to_string(), OP_COLORS[i], per_op[i]))
        .collect();
    if s.is_empty() && all.iter().any(|c| *c > 0) {
        s.push(("all ops".into(), RGBColor(0x2c, 0x7f, 0xb8), *all));
    }
    s
}

fn bars(title: &str, x_desc: &str, series: &Series, label: &dyn Fn(u32) -> String) -> Result<Vec<u8>> {
    let used = |k: usize| series.iter().any(|(_, _, s)| s[k] > 0);
    let lo = (0..SLOTS).find(|&k| used(k)).unwrap_or(4);
    let hi = (0..SLOTS).rev().find(|&k| used(k)).unwrap_or(10).max(lo);
    let max = series.iter().flat_map(|(_, _, s)| s.iter()).copied().max().unwrap_or(0);
    let (top, yticks) = linear_ticks(max as f64 * 1.15);
    let xticks: Vec<f64> = (lo..=hi).map(|k| k as f64).collect();
    let n = series.len().max(1) as f64;
    render(|root| {
        root.fill(&WHITE).map_err(draw_err)?;
        let (strip, body) = titled(root, title)?;
        let x = Axis { lo: lo as f64 - 0.5, hi: hi as f64 + 0.5, ticks: xticks };
        let y = Axis { lo: 0.0, hi: top, ticks: yticks };
        let mut ch = ChartBuilder::on(&body)
            .margin(MARGIN)
            .margin_top(4)
            .x_label_area_size(X_LABEL_AREA)
            .y_label_area_size(LEFT_AREA)
            .build_cartesian_2d(x, y)
            .map_err(draw_err)?;
        let xfmt = |v: &f64| label(v.round() as u32);
        let yfmt = |v: &f64| si(*v);
        ch.configure_mesh()
            .x_desc(x_desc)
            .y_desc("requests")
            .x_label_formatter(&xfmt)
            .y_label_formatter(&yfmt)
            .label_style((FAMILY, LABEL_PX))
            .axis_desc_style((FAMILY, AXIS_DESC_PX))
            .bold_line_style(BLACK.mix(0.12))
            .draw()
            .map_err(draw_err)?;
        let mut legend = Legend::new();
        for (i, (name, color, slots)) in series.iter().enumerate() {
            let w = 0.8 / n;
            let rects = (lo..=hi).filter(|k| slots[*k] > 0).map(|k| {
                let x0 = k as f64 - 0.4 + i as f64 * w;
                Rectangle::new([(x0, 0.0), (x0 + w * 0.92, slots[k] as f64)], color.filled())
            });
            ch.draw_series(rects).map_err(draw_err)?;
            legend.push((name.clone(), Mark::Band(color.to_rgba())));
        }
        if series.is_empty() {
            let area = ch.plotting_area().strip_coord_spec();
            let (w, h) = area.dim_in_pixel();
            let text = Text::new("no data", (w as i32 / 2 - 30, h as i32 / 2), (FAMILY, 20).into_font());
            area.draw(&text).map_err(draw_err)?;
        }
        draw_legend(&strip, &ch, &legend)
    })
}
