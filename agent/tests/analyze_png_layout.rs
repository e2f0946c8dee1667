//! Chart layout: every time chart has the same plot area (the heatmap's colour bar does not
//! narrow it), legends list only what was drawn (also for a single seed-format snapshot), and
//! events outside the data are marked instead of dropped.

mod analyze_support;

use std::collections::HashMap;
use std::path::Path;

use analyze_support::*;

const TIME_CHARTS: [&str; 6] = ["latency_hist", "percentiles", "requests", "throughput", "queue_depth", "qd_iops"];

struct Image {
    w: u32,
    h: u32,
    rgb: Vec<u8>,
}

impl Image {
    fn decode(path: &Path) -> Image {
        let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
        let mut reader = decoder.read_info().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut buf = vec![0; reader.output_buffer_size().expect("size")];
        let info = reader.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        Image { w: info.width, h: info.height, rgb: buf }
    }

    fn px(&self, x: u32, y: u32) -> (u8, u8, u8) {
        let i = ((y * self.w + x) * 3) as usize;
        (self.rgb[i], self.rgb[i + 1], self.rgb[i + 2])
    }

    /// The x pixel range of the plot area: the longest horizontal run of near-black pixels in
    /// the lower half (the x axis line that plotters draws along the plot's bottom edge).
    fn plot_x_range(&self) -> (u32, u32) {
        let mut best = (0, 0, 0);
        for y in self.h / 2..self.h {
            let mut start = None;
            for x in 0..=self.w {
                let dark = x < self.w && {
                    let (r, g, b) = self.px(x, y);
                    (r as u32 + g as u32 + b as u32) < 120
                };
                match (dark, start) {
                    (true, None) => start = Some(x),
                    (false, Some(s)) => {
                        if x - s > best.1 - best.0 {
                            best = (s, x, y);
                        }
                        start = None;
                    }
                    _ => {}
                }
            }
        }
        assert!(best.1 - best.0 > self.w / 2, "no x axis found: {best:?}");
        (best.0, best.1)
    }

    /// Saturated colours (not white, grey or black) and their pixel counts in rows `ys`.
    fn colours(&self, ys: std::ops::Range<u32>) -> HashMap<(u8, u8, u8), usize> {
        let mut m = HashMap::new();
        for y in ys {
            for x in 0..self.w {
                let (r, g, b) = self.px(x, y);
                let (hi, lo) = (r.max(g).max(b), r.min(g).min(b));
                if hi - lo > 60 {
                    *m.entry((r, g, b)).or_insert(0) += 1;
                }
            }
        }
        m
    }
}

fn run_input(dir: &Path, lines: &[String], extra: &[&str]) -> (serde_json::Value, std::path::PathBuf) {
    let input = dir.join("in.jsonl");
    write(&input, lines);
    let out = dir.join("out");
    let (s, _) = analyze_ok(&[&input], &out, extra);
    (s, out)
}

fn busy(i: usize, slow: bool) -> Vec<DevSample> {
    let lat = if slow { 9000 } else { 120 };
    vec![
        DevSample::new("nvme0n1", 259 << 20, vec![io("read", lat, 400 + i as u64 % 50), io("write", 300, 100)], 3, 9),
        DevSample::new("sda", 8 << 20, vec![io("write", 2000, 20 + i as u64 % 7)], 1, 2),
    ]
}

#[test]
fn every_time_chart_has_the_same_plot_area() {
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..300)
        .map(|i| {
            line(&snapshot(
                Schema::Current,
                Some("n"),
                T0 + i as f64 + 1.0,
                1.0,
                i as u64,
                &busy(i, (100..130).contains(&i)),
            ))
        })
        .collect();
    let (_, out) = run_input(dir.path(), &lines, &[]);
    let mut ranges = Vec::new();
    for dev in ["nvme0n1", "sda"] {
        for kind in TIME_CHARTS {
            ranges
                .push((format!("{dev}_{kind}"), Image::decode(&out.join(format!("{dev}_{kind}.png"))).plot_x_range()));
        }
    }
    let first = ranges[0].1;
    for (name, r) in &ranges {
        assert_eq!(*r, first, "{name} plot area differs from {}", ranges[0].0);
    }
}

#[test]
fn a_single_seed_snapshot_shows_legend_entries_only_for_what_is_drawn() {
    let dir = tempfile::tempdir().unwrap();
    let lines = vec![line(&snapshot(Schema::Seed, None, T0 + 5.0, 5.0, 0, &busy(0, false)))];
    let (s, out) = run_input(dir.path(), &lines, &["--percentiles", "50,90,99,99.9"]);
    let charts = device(&s, None, "nvme0n1")["charts"].as_array().unwrap().clone();
    assert_eq!(charts.len(), 6, "seed input: no throughput or size charts: {charts:?}");
    let mut entries = 0;
    for c in charts {
        let img = Image::decode(&out.join(c.as_str().unwrap()));
        // The legend row sits under the title; the plot below it.
        let legend = img.colours(36..66);
        let plot = img.colours(80..img.h - 80);
        for (colour, n) in legend.iter().filter(|(_, n)| **n >= 30) {
            entries += 1;
            assert!(
                plot.get(colour).copied().unwrap_or(0) >= 10,
                "{c}: legend colour {colour:?} ({n} px) is not drawn"
            );
        }
    }
    // The heatmap's and percentile chart's p50/p90/p99.9 lines at least (p99 is black, so
    // not counted here); a single snapshot still draws them, as level lines.
    assert!(entries >= 6, "only {entries} coloured legend entries checked");
}

#[test]
fn events_outside_the_data_are_marked_not_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..60)
        .map(|i| line(&snapshot(Schema::Current, Some("n"), T0 + i as f64 + 1.0, 1.0, i as u64, &busy(i, false))))
        .collect();
    let events = dir.path().join("ev.jsonl");
    // 10 s before the first sample (the axis widens to show it) and a day before (marked at
    // the edge); a label near the right edge must not be cut off (it is drawn left of its line).
    std::fs::write(
        &events,
        format!(
            "{{\"timestamp\": {}, \"label\": \"warm-up started\"}}\n{{\"timestamp\": {}, \"label\": \"yesterday\"}}\n{{\"timestamp\": {}, \"label\": \"a long label at the end\"}}\n",
            T0 - 10.0,
            T0 - 86_400.0,
            T0 + 59.5
        ),
    )
    .unwrap();
    let (s, out) = run_input(dir.path(), &lines, &["--events", events.to_str().unwrap()]);
    assert_eq!(s["events"], 3);
    assert_eq!(s["events_outside_data"], 1);
    let img = Image::decode(&out.join("nvme0n1_requests.png"));
    let (x0, x1) = img.plot_x_range();
    let green = |x: u32, y: u32| img.px(x, y) == (0x1b, 0x9e, 0x3e);
    // The warm-up line is inside the plot, left of where the data starts (10 of 70 s).
    let line_x = (x0..x1).find(|&x| (100..500).filter(|&y| green(x, y)).count() > 300).expect("event line drawn");
    assert!(line_x < x0 + (x1 - x0) / 5, "warm-up line at {line_x} ({x0}..{x1})");
    // Label text (green glyph pixels) never touches the image's right edge.
    let edge = (x1..img.w).flat_map(|x| (70..120).map(move |y| (x, y))).filter(|&(x, y)| green(x, y)).count();
    assert_eq!(edge, 0, "a label runs past the plot's right edge");
    // The far event is marked near the bottom-left of the plot (the arrow text).
    let marker = (x0..x0 + 200).flat_map(|x| (400..560).map(move |y| (x, y))).filter(|&(x, y)| green(x, y)).count();
    assert!(marker > 30, "no marker for the event outside the data ({marker} px)");
    let text = std::process::Command::new(env!("CARGO_BIN_EXE_blkio-agent"))
        .args(["analyze", "--input", dir.path().join("in.jsonl").to_str().unwrap(), "--output-dir"])
        .arg(dir.path().join("out2"))
        .args(["--events", events.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("1 event(s) lie outside"));
}
