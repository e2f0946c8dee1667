//! PNG charts. Drawn with plotters into an RGB buffer and encoded with `png`; text uses the
//! embedded DejaVu Sans, so charts look the same on a machine without any system font.

mod columns;
mod dist;
mod heatmap;
mod lines;
mod more_lines;

use plotters::coord::Shift;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

pub use columns::{Columns, DeviceColumns};
pub use dist::{latency_dist, op_series, request_size};
pub use heatmap::latency_heatmap;
pub use lines::{queue_depth, requests};
pub use more_lines::{percentiles_over_time, qd_iops, throughput};

use super::stats::Anomaly;
use crate::error::{Error, Result};

/// DejaVu Sans (Bitstream Vera license, see assets/DejaVuSans.LICENSE).
static FONT: &[u8] = include_bytes!("../../../assets/DejaVuSans.ttf");
/// Registered under plotters' default family name so every label uses it.
pub const FAMILY: &str = "sans-serif";

pub const WIDTH: u32 = 1280;
pub const HEIGHT: u32 = 640;
/// Columns drawn per chart at most (about one per pixel of the plot area).
pub const MAX_COLUMNS: usize = 1000;

pub const TITLE_PX: u32 = 26;
pub const AXIS_DESC_PX: u32 = 18;
pub const LABEL_PX: u32 = 15;

pub const EVENT_COLOR: RGBColor = RGBColor(0x1b, 0x9e, 0x3e);
/// Red means "anomaly" and nothing else on every chart.
pub const ANOMALY_COLOR: RGBColor = RGBColor(0xd6, 0x27, 0x28);

/// Width right of every time chart's plot area: the heatmap's colour bar and the queue-depth
/// axis of the depth-vs-IOPS chart live there, and the other charts keep it empty, so every
/// time chart has the same plot area (same x pixel range) and they line up in the report.
pub const RIGHT_AREA: u32 = 120;
/// Width of the y labels left of every plot area.
pub const LEFT_AREA: u32 = 96;

/// Fixed colour per percentile, whatever `--percentiles` lists (never red: that is anomalies).
pub fn percentile_color(p: f64) -> RGBColor {
    const FIXED: [(f64, RGBColor); 6] = [
        (50.0, RGBColor(0xff, 0x8c, 0x00)),
        (90.0, RGBColor(0xc5, 0x1b, 0x8a)),
        (95.0, RGBColor(0x8c, 0x51, 0x0a)),
        (99.0, RGBColor(0x00, 0x00, 0x00)),
        (99.9, RGBColor(0x6a, 0x3d, 0x9a)),
        (99.99, RGBColor(0x80, 0x80, 0x80)),
    ];
    const OTHER: [RGBColor; 4] = [
        RGBColor(0x01, 0x66, 0x5e),
        RGBColor(0x80, 0x80, 0x00),
        RGBColor(0x35, 0x97, 0x8f),
        RGBColor(0xbf, 0x81, 0x2d),
    ];
    match FIXED.iter().find(|(v, _)| (v - p).abs() < 1e-9) {
        Some((_, c)) => *c,
        // Other values: a colour from the value itself, so it too is stable across runs.
        None => OTHER[((p * 1000.0).round() as u64 % OTHER.len() as u64) as usize],
    }
}

pub type Chart<'a, 'b> = ChartContext<'a, BitMapBackend<'b>, Cartesian2d<Axis, Axis>>;

/// A linear f64 axis whose ticks are chosen here (clock units for time, bucket edges for
/// latency) rather than by plotters' decimal key-point search.
#[derive(Debug, Clone)]
pub struct Axis {
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
}

impl Ranged for Axis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let f = (v - self.lo) / (self.hi - self.lo);
        limit.0 + ((limit.1 - limit.0) as f64 * f + 1e-3).floor() as i32
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        // Bold points only: the light grid would crowd the heatmap.
        if hint.weight().allow_light_points() { Vec::new() } else { self.ticks.clone() }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

/// An application event from `--events`.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub ts: f64,
    pub label: String,
}

/// What every chart of a run shares: the time range, the events and the anomaly rule.
pub struct Frame<'a> {
    pub t0: f64,
    pub t1: f64,
    pub events: &'a [Event],
    pub anomaly_factor: f64,
}

pub(crate) fn draw_err(e: impl std::fmt::Display) -> Error {
    Error::Other(format!("drawing a chart failed: {e}"))
}

fn ensure_font() -> Result<()> {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok { Ok(()) } else { Err(Error::Other("the embedded chart font is unreadable (a corrupt build?)".into())) }
}

/// Draws with `draw` on a white RGB canvas and returns the PNG bytes.
pub fn render(draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> Result<()>) -> Result<Vec<u8>> {
    ensure_font()?;
    let (w, h) = (WIDTH, HEIGHT);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        draw(&root)?;
        root.present().map_err(draw_err)?;
    }
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_compression(png::Compression::Fast);
    let mut writer = enc.write_header().map_err(|e| Error::Other(format!("encoding a PNG failed: {e}")))?;
    writer.write_image_data(&buf).map_err(|e| Error::Other(format!("encoding a PNG failed: {e}")))?;
    writer.finish().map_err(|e| Error::Other(format!("encoding a PNG failed: {e}")))?;
    Ok(out)
}

/// Y axis: range, tick positions, tick text and description.
pub struct YAxis<'f> {
    pub lo: f64,
    pub hi: f64,
    pub ticks: Vec<f64>,
    pub label: &'f dyn Fn(&f64) -> String,
    pub desc: String,
}

pub type Area<'b> = DrawingArea<BitMapBackend<'b>, Shift>;

/// Space around the plot, and below it for the time labels and axis description.
pub const MARGIN: u32 = 14;
pub const X_LABEL_AREA: u32 = 62;
const LEGEND_ROW: u32 = 30;

/// Puts the title at the top of `area` and returns (legend strip, area for the chart): the
/// legend sits in its own row under the title, so it never hides data or event labels.
pub fn titled<'b>(area: &Area<'b>, title: &str) -> Result<(Area<'b>, Area<'b>)> {
    let below = area.margin(8, 0, 0, 0).titled(title, (FAMILY, TITLE_PX).into_font()).map_err(draw_err)?;
    Ok(below.split_vertically(LEGEND_ROW))
}

/// The plot frame shared by all charts: time axis in UTC and the given y axis.
pub fn chart<'a, 'b>(area: &'a Area<'b>, frame: &Frame, y: YAxis) -> Result<Chart<'a, 'b>> {
    let (t0, t1) = (frame.t0, frame.t1.max(frame.t0 + 1.0));
    let (xticks, step) = time_ticks(t0, t1);
    let span = t1 - t0;
    let mut chart = ChartBuilder::on(area)
        .margin(MARGIN)
        .margin_top(4)
        // Empty margin, not a label area: plotters would draw a second y axis there.
        .margin_right(MARGIN + RIGHT_AREA)
        .x_label_area_size(X_LABEL_AREA)
        .y_label_area_size(LEFT_AREA)
        .build_cartesian_2d(Axis { lo: t0, hi: t1, ticks: xticks }, Axis { lo: y.lo, hi: y.hi, ticks: y.ticks })
        .map_err(draw_err)?;
    let xfmt = |t: &f64| time_label(*t, step, span);
    chart
        .configure_mesh()
        .x_desc(time_desc(t0, t1))
        .y_desc(y.desc)
        .x_label_formatter(&xfmt)
        .y_label_formatter(y.label)
        .label_style((FAMILY, LABEL_PX))
        .axis_desc_style((FAMILY, AXIS_DESC_PX))
        .bold_line_style(BLACK.mix(0.12))
        .draw()
        .map_err(draw_err)?;
    Ok(chart)
}

/// Tick positions on whole clock units (1 s ... 1 day), about 6-10 per chart.
pub fn time_ticks(t0: f64, t1: f64) -> (Vec<f64>, f64) {
    const STEPS: [f64; 22] = [
        1.0,
        2.0,
        5.0,
        10.0,
        15.0,
        30.0,
        60.0,
        120.0,
        300.0,
        600.0,
        900.0,
        1800.0,
        3600.0,
        7200.0,
        10_800.0,
        21_600.0,
        43_200.0,
        86_400.0,
        172_800.0,
        604_800.0,
        2_592_000.0,
        31_536_000.0,
    ];
    let span = t1 - t0;
    let step = STEPS.iter().copied().find(|s| span / s <= 9.0).unwrap_or(31_536_000.0);
    let mut t = (t0 / step).ceil() * step;
    let mut ticks = Vec::new();
    while t <= t1 && ticks.len() < 64 {
        ticks.push(t);
        t += step;
    }
    (ticks, step)
}

fn time_label(t: f64, step: f64, span: f64) -> String {
    let full = super::units::utc(t); // 2025-10-02 14:20:00
    if span > 86_400.0 {
        full[5..16].to_string()
    } else if step < 60.0 {
        full[11..19].to_string()
    } else {
        full[11..16].to_string()
    }
}

fn time_desc(t0: f64, t1: f64) -> String {
    let (a, b) = (super::units::utc(t0), super::units::utc(t1));
    if a[..10] == b[..10] {
        format!("time (UTC) on {}", &a[..10])
    } else {
        format!("time (UTC), {} to {}", &a[..10], &b[..10])
    }
}

/// 0-based linear ticks on a 1-2-5 step, and the axis top a little above the data maximum.
pub fn linear_ticks(max: f64) -> (f64, Vec<f64>) {
    let max = if max.is_finite() && max > 0.0 { max } else { 1.0 };
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    let top = max * 1.1;
    let ticks = (0..).map(|i| i as f64 * step).take_while(|v| *v <= top).collect();
    (top, ticks)
}

/// How a legend entry is drawn.
#[derive(Debug, Clone, Copy)]
pub enum Mark {
    Line(RGBColor),
    Band(RGBAColor),
    Marker(RGBColor),
}

pub type Legend = Vec<(String, Mark)>;

/// Shades anomalies (or marks them with a band at the top, for the heatmap) and draws the
/// events as labelled vertical lines. Returns their legend entries (listed after the data's).
pub fn draw_overlay(chart: &mut Chart, frame: &Frame, anomalies: &[Anomaly], band_only: bool) -> Result<Legend> {
    let mut legend = Legend::new();
    let (y_lo, y_hi) = (chart.y_range().start, chart.y_range().end);
    let fill = ANOMALY_COLOR.mix(if band_only { 0.85 } else { 0.16 });
    let band_lo = if band_only { y_hi - (y_hi - y_lo) * 0.025 } else { y_lo };
    if !anomalies.is_empty() {
        // At least 4 px wide, so a short stall in a long recording is still visible.
        let min_w = (frame.t1 - frame.t0) * 4.0 / chart.plotting_area().dim_in_pixel().0.max(1) as f64;
        let rects = anomalies.iter().map(|a| {
            let mid = (a.start + a.end) / 2.0;
            let (s, e) =
                if a.end - a.start < min_w { (mid - min_w / 2.0, mid + min_w / 2.0) } else { (a.start, a.end) };
            Rectangle::new([(s, band_lo), (e, y_hi)], fill.filled())
        });
        chart.draw_series(rects).map_err(draw_err)?;
        legend.push((format!("latency anomaly (p99 ≥ {}× baseline)", frame.anomaly_factor), Mark::Band(fill)));
    }
    let events: Vec<&Event> = frame.events.iter().filter(|e| e.ts >= frame.t0 && e.ts <= frame.t1).collect();
    for e in &events {
        chart
            .draw_series(LineSeries::new([(e.ts, y_lo), (e.ts, y_hi)], EVENT_COLOR.stroke_width(2)))
            .map_err(draw_err)?;
    }
    let before = frame.events.iter().filter(|e| e.ts < frame.t0).count();
    let after = frame.events.iter().filter(|e| e.ts > frame.t1).count();
    if !events.is_empty() || before + after > 0 {
        legend.push((format!("app events ({})", frame.events.len()), Mark::Marker(EVENT_COLOR)));
    }
    let area = chart.plotting_area();
    let (bx, _) = area.get_base_pixel();
    let flat = area.strip_coord_spec();
    let (plot_w, plot_h) = flat.dim_in_pixel();
    let font = (FAMILY, 13).into_font().color(&EVENT_COLOR);
    // Events outside the data are not dropped: a labelled arrow at the edge says how many.
    for (n, left) in [(before, true), (after, false)] {
        if n == 0 {
            continue;
        }
        let text = if left { format!("← {n} event(s) before") } else { format!("{n} event(s) after →") };
        let w = flat.estimate_text_size(&text, &font).map_err(draw_err)?.0 as i32;
        let x = if left { 4 } else { plot_w as i32 - w - 4 };
        flat.draw(&Text::new(text, (x, plot_h as i32 - 20), font.clone())).map_err(draw_err)?;
    }
    // Labels go in the first of three rows where they do not overlap the previous label, right
    // of their line, or left of it near the right edge so they are never cut off; a label that
    // fits nowhere is left out (the HTML report lists every event).
    let mut row_end = [i32::MIN; 3];
    for e in &events {
        let line_x = area.map_coordinate(&(e.ts, y_hi)).0 - bx;
        let label: String = e.label.chars().take(28).collect();
        let w = flat.estimate_text_size(&label, &font).map_err(draw_err)?.0 as i32;
        let x = if line_x + 4 + w <= plot_w as i32 { line_x + 4 } else { (line_x - 4 - w).max(0) };
        if let Some(row) = row_end.iter().position(|end| *end + 8 <= x) {
            row_end[row] = x + w;
            flat.draw(&Text::new(label, (x, 6 + row as i32 * 16), font.clone())).map_err(draw_err)?;
        }
    }
    Ok(legend)
}

/// Draws `value(column)` as a line per run of columns with values, broken at data gaps and
/// at columns without a value. A run of one column is drawn as a short level line across the
/// column (a single point would be invisible). Lines get a white halo so they stay readable
/// over dark heatmap cells. Returns whether anything was drawn (legend entries only then).
pub fn draw_steps(
    ch: &mut Chart,
    cols: &Columns,
    value: impl Fn(usize) -> Option<f64>,
    color: RGBColor,
) -> Result<bool> {
    let mut drawn = false;
    let mut flush = |seg: &mut Vec<(usize, f64)>, ch: &mut Chart| -> Result<()> {
        let pts: Vec<(f64, f64)> = match seg.as_slice() {
            [] => return Ok(()),
            [(c, v)] => vec![(cols.start[*c], *v), (cols.end[*c], *v)],
            many => many.iter().map(|(c, v)| (cols.center(*c), *v)).collect(),
        };
        ch.draw_series(LineSeries::new(pts.clone(), WHITE.mix(0.7).stroke_width(4))).map_err(draw_err)?;
        ch.draw_series(LineSeries::new(pts, color.stroke_width(2))).map_err(draw_err)?;
        seg.clear();
        drawn = true;
        Ok(())
    };
    for run in cols.runs() {
        let mut seg: Vec<(usize, f64)> = Vec::new();
        for c in run {
            match value(c).filter(|v| v.is_finite()) {
                Some(v) => seg.push((c, v)),
                None => flush(&mut seg, ch)?,
            }
        }
        flush(&mut seg, ch)?;
    }
    Ok(drawn)
}

/// Draws the legend entries in one row in `strip`, starting at the plot's left edge.
pub fn draw_legend(strip: &Area, chart: &Chart, legend: &Legend) -> Result<()> {
    use plotters::style::text_anchor::{HPos, Pos, VPos};
    let font = TextStyle::from((FAMILY, LABEL_PX).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    let mut x = chart.plotting_area().get_base_pixel().0 - strip.get_base_pixel().0;
    let y = (strip.dim_in_pixel().1 / 2) as i32;
    for (label, mark) in legend {
        match *mark {
            Mark::Line(c) => strip.draw(&PathElement::new([(x, y), (x + 24, y)], c.stroke_width(3))),
            Mark::Band(c) => strip.draw(&Rectangle::new([(x, y - 6), (x + 24, y + 6)], c.filled())),
            Mark::Marker(c) => strip.draw(&PathElement::new([(x + 12, y - 9), (x + 12, y + 9)], c.stroke_width(2))),
        }
        .map_err(draw_err)?;
        strip.draw(&Text::new(label.clone(), (x + 30, y), font.clone())).map_err(draw_err)?;
        let (w, _) = strip.estimate_text_size(label, &font).map_err(draw_err)?;
        x += 30 + w as i32 + 24;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_ticks_land_on_clock_units() {
        let t0 = 1_759_414_800.0 + 7.0; // 14:20:07
        let (ticks, step) = time_ticks(t0, t0 + 3600.0);
        assert_eq!(step, 600.0);
        assert_eq!(time_label(ticks[0], step, 3600.0), "14:30");
        assert!(ticks.len() >= 5 && ticks.len() <= 9, "{ticks:?}");
        let (_, step) = time_ticks(t0, t0 + 40.0);
        assert_eq!(step, 5.0);
        assert_eq!(time_label(t0 + 3.0, 5.0, 40.0), "14:20:10");
        assert_eq!(time_desc(t0, t0 + 60.0), "time (UTC) on 2025-10-02");
    }

    #[test]
    fn linear_ticks_use_round_steps() {
        let (top, ticks) = linear_ticks(870.0);
        assert!(top > 870.0);
        assert_eq!(&ticks[..3], &[0.0, 200.0, 400.0]);
        let (_, ticks) = linear_ticks(0.0);
        assert_eq!(ticks[0], 0.0);
    }
}
