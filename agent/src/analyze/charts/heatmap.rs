//! `{device}_latency_hist.png`: requests per (time column, log2 latency bucket) as colour, with
//! the requested percentiles drawn over it and a colour bar on the right.

use plotters::coord::combinators::IntoLogRange;
use plotters::prelude::*;

use super::super::dataset::SLOTS;
use super::super::stats::Anomaly;
use super::super::units::{human_us, si};
use super::{
    Area, Columns, DeviceColumns, FAMILY, Frame, LABEL_PX, Legend, Mark, YAxis, chart, draw_err, draw_legend,
    draw_overlay, draw_steps, percentile_color, render, titled,
};
use crate::error::Result;
use crate::histogram::{bucket_low, percentile};

/// Sequential blues: light for few requests, dark for many (stays distinct from white = none).
const STOPS: [(f64, (u8, u8, u8)); 5] = [
    (0.0, (0xd6, 0xe8, 0xf6)),
    (0.25, (0x9e, 0xca, 0xe1)),
    (0.5, (0x42, 0x92, 0xc6)),
    (0.75, (0x08, 0x51, 0x9c)),
    (1.0, (0x08, 0x1d, 0x58)),
];

pub fn color(t: f64) -> RGBColor {
    let t = t.clamp(0.0, 1.0);
    let i = STOPS.iter().position(|(s, _)| *s >= t).unwrap_or(STOPS.len() - 1).max(1);
    let ((s0, a), (s1, b)) = (STOPS[i - 1], STOPS[i]);
    let f = if s1 > s0 { (t - s0) / (s1 - s0) } else { 0.0 };
    let mix = |x: u8, y: u8| (x as f64 + (y as f64 - x as f64) * f).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// Latency (µs) to the heatmap's y coordinate: slot k spans [k, k+1), so log2 for values >= 2
/// and linear inside slot 0 ([0, 2) µs).
pub fn y_of(us: f64) -> f64 {
    if us >= 2.0 { us.log2() } else { us.max(0.0) / 2.0 }
}

pub fn latency_heatmap(
    device: &str,
    frame: &Frame,
    cols: &Columns,
    data: &DeviceColumns,
    percentiles: &[f64],
    anomalies: &[Anomaly],
) -> Result<Vec<u8>> {
    let used = |k: usize| data.heat.iter().any(|h| h[k] > 0);
    let lo = (0..SLOTS).find(|&k| used(k));
    let hi = (0..SLOTS).rev().find(|&k| used(k));
    let (lo, hi) = match (lo, hi) {
        (Some(l), Some(h)) => (l, h),
        _ => (4, 10), // no completions: an empty but labelled frame
    };
    let rows = (hi + 1 - lo) as f64;
    // Headroom above the data keeps the anomaly band and event labels off the cells.
    let y_lo = lo as f64;
    let y_hi = (hi + 1) as f64 + (rows * 0.22).max(1.5);
    let stride = (hi + 2 - lo).div_ceil(14).max(1);
    let ticks: Vec<f64> = (lo..=hi + 1).step_by(stride).map(|k| k as f64).collect();
    let label = |y: &f64| if *y == 0.0 { "0".to_string() } else { human_us(bucket_low(*y as u32) as f64) };
    let max_cell = data.heat.iter().flat_map(|h| h.iter()).copied().max().unwrap_or(0);
    let scale = |c: u64| if max_cell <= 1 { 1.0 } else { (c as f64).ln() / (max_cell as f64).ln() };

    render(|root| {
        root.fill(&WHITE).map_err(draw_err)?;
        let (strip, body) = titled(root, &format!("{device}: latency distribution over time"))?;
        let y = YAxis { lo: y_lo, hi: y_hi, ticks, label: &label, desc: "latency (log2 buckets, lower edge)".into() };
        let mut ch = chart(&body, frame, y)?;
        let mut legend = Legend::new();

        let mut cells = Vec::new();
        for (c, h) in data.heat.iter().enumerate() {
            for (k, &n) in h.iter().enumerate().filter(|(_, n)| **n > 0) {
                let style = color(scale(n)).filled();
                cells.push(Rectangle::new([(cols.start[c], k as f64), (cols.end[c], k as f64 + 1.0)], style));
            }
        }
        ch.draw_series(cells).map_err(draw_err)?;

        for &p in percentiles {
            let col = percentile_color(p);
            let values = |c: usize| percentile(&data.heat[c], p).map(y_of);
            if draw_steps(&mut ch, cols, values, col)? {
                legend.push((format!("p{p}"), Mark::Line(col)));
            }
        }
        let overlay = draw_overlay(&mut ch, frame, anomalies, true)?;
        if max_cell == 0 {
            let area = ch.plotting_area().strip_coord_spec();
            let (w, h) = area.dim_in_pixel();
            let text = Text::new(
                "no completions in this time range",
                (w as i32 / 2 - 150, h as i32 / 2),
                (FAMILY, 20).into_font(),
            );
            area.draw(&text).map_err(draw_err)?;
        }
        legend.extend(overlay);
        draw_legend(&strip, &ch, &legend)?;
        if max_cell == 0 {
            return Ok(());
        }
        // The bar sits in the space every time chart reserves right of its plot area, so the
        // heatmap's plot is as wide as the others'.
        let (px, py) = ch.plotting_area().get_base_pixel();
        let (pw, ph) = ch.plotting_area().dim_in_pixel();
        let x0 = px + pw as i32 + 16;
        let side = root.clone().shrink((x0, py), (super::WIDTH as i32 - x0 - 4, ph as i32 + 1));
        color_bar(&side, max_cell)
    })
}

/// Vertical colour scale with log ticks, labelled in requests per cell.
fn color_bar(area: &Area, max_cell: u64) -> Result<()> {
    let top = (max_cell.max(2)) as f64;
    let mut bar = ChartBuilder::on(area)
        .margin(0)
        .y_label_area_size(0)
        .right_y_label_area_size(66)
        .build_cartesian_2d(0f64..1f64, (1f64..top).log_scale())
        .map_err(draw_err)?;
    bar.configure_mesh()
        .disable_x_axis()
        .disable_mesh()
        .y_desc("requests per cell")
        .y_label_formatter(&|v| si(*v))
        .label_style((FAMILY, LABEL_PX - 1))
        .axis_desc_style((FAMILY, LABEL_PX))
        .draw()
        .map_err(draw_err)?;
    let steps = 120;
    let ln_top = top.ln();
    let rects = (0..steps).map(|i| {
        let (a, b) = ((ln_top * i as f64 / steps as f64).exp(), (ln_top * (i + 1) as f64 / steps as f64).exp());
        let t = if max_cell <= 1 { 1.0 } else { i as f64 / (steps - 1) as f64 };
        Rectangle::new([(0.0, a), (1.0, b)], color(t).filled())
    });
    bar.draw_series(rects).map_err(draw_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_maps_into_its_slot_row() {
        assert_eq!(y_of(0.0), 0.0);
        assert_eq!(y_of(1.0), 0.5);
        assert_eq!(y_of(2.0), 1.0);
        assert_eq!(y_of(16.0), 4.0);
        let y = y_of(40.0); // slot 5 = [32, 63]
        assert!((5.0..6.0).contains(&y), "{y}");
    }

    #[test]
    fn colour_scale_runs_light_to_dark() {
        let lum = |c: RGBColor| c.0 as u32 + c.1 as u32 + c.2 as u32;
        assert_eq!(color(0.0), RGBColor(0xd6, 0xe8, 0xf6));
        assert_eq!(color(1.0), RGBColor(0x08, 0x1d, 0x58));
        let mut prev = u32::MAX;
        for i in 0..=20 {
            let l = lum(color(i as f64 / 20.0));
            assert!(l <= prev, "not monotonic at {i}");
            prev = l;
        }
    }
}
