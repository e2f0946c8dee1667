//! Golden checks on the charts: every PNG decodes, has the documented size, is not blank,
//! has rendered text (the embedded font), shows the heatmap colours, the percentile lines,
//! the anomaly and the `--events` markers; report.html embeds exactly those PNGs and loads
//! nothing from the network.

mod analyze_support;

use std::collections::HashSet;
use std::path::Path;

use analyze_support::*;
use base64::Engine as _;

/// Charts over time (shared time axis) and the bar charts, as documented.
const TIME_CHARTS: [&str; 6] = ["latency_hist", "percentiles", "requests", "throughput", "queue_depth", "qd_iops"];
const BAR_CHARTS: [&str; 2] = ["latency_dist", "request_size"];

const W: u32 = 1280;
const H: u32 = 640;

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
        assert_eq!(info.color_type, png::ColorType::Rgb, "{}", path.display());
        assert_eq!(info.bit_depth, png::BitDepth::Eight);
        buf.truncate(info.buffer_size());
        Image { w: info.width, h: info.height, rgb: buf }
    }

    fn px(&self, x: u32, y: u32) -> (u8, u8, u8) {
        let i = ((y * self.w + x) * 3) as usize;
        (self.rgb[i], self.rgb[i + 1], self.rgb[i + 2])
    }

    fn count(&self, rows: std::ops::Range<u32>, pred: impl Fn((u8, u8, u8)) -> bool) -> usize {
        rows.flat_map(|y| (0..self.w).map(move |x| (x, y))).filter(|&(x, y)| pred(self.px(x, y))).count()
    }

    fn count_color(&self, c: (u8, u8, u8)) -> usize {
        self.count(0..self.h, |p| p == c)
    }
}

fn dark(p: (u8, u8, u8)) -> bool {
    (p.0 as u32 + p.1 as u32 + p.2 as u32) < 200
}

/// 900 snapshots, two devices, a latency spike on nvme0n1 in intervals 400..430.
fn input(dir: &Path) -> std::path::PathBuf {
    let mut rng = Rng(7);
    let text: String = (0..900)
        .map(|i| {
            let slow = (400..430).contains(&i);
            let devs = [
                DevSample::new(
                    "nvme0n1",
                    259 << 20,
                    vec![
                        io("read", 30 + rng.below(30), 300 + rng.below(500)),
                        io("write", 120, 100 + rng.below(100)),
                        io("write", if slow { 30_000 } else { 200 }, 20),
                    ],
                    rng.below(20),
                    20 + rng.below(10),
                ),
                DevSample::new(
                    "sda",
                    8 << 20,
                    vec![io("write", 800 + rng.below(400), 50 + rng.below(50))],
                    rng.below(4),
                    5,
                ),
            ];
            line(&snapshot(Schema::Current, Some("n1"), T0 + (i + 1) as f64, 1.0, i as u64, &devs))
        })
        .collect();
    let p = dir.join("in.jsonl");
    std::fs::write(&p, text).unwrap();
    p
}

const EVENT: (u8, u8, u8) = (0x1b, 0x9e, 0x3e);
const P50: (u8, u8, u8) = (0xff, 0x8c, 0x00);
/// p99 is black: counted inside the plot only (the text is black too).
const P99: (u8, u8, u8) = (0, 0, 0);

#[test]
fn charts_decode_and_show_their_content() {
    let dir = tempfile::tempdir().unwrap();
    let input = input(dir.path());
    let events = dir.path().join("events.jsonl");
    std::fs::write(
        &events,
        format!(
            "{{\"timestamp\": {}, \"label\": \"buffer flush 1\"}}\n{{\"timestamp\": \"2025-10-02T14:27:00Z\", \"label\": \"buffer flush 2\"}}\n{{\"timestamp\": {}, \"label\": \"done\"}}\n",
            T0 + 100.0,
            T0 + 800.0
        ),
    )
    .unwrap();
    let out = dir.path().join("out");
    let (s, _) = analyze_ok(&[&input], &out, &["--events", events.to_str().unwrap()]);
    assert_eq!(s["events"], 3);
    assert_eq!(device(&s, Some("n1"), "nvme0n1")["anomalies"].as_array().unwrap().len(), 1);

    let mut pngs = Vec::new();
    for dev in ["nvme0n1", "sda"] {
        let charts: Vec<String> = device(&s, Some("n1"), dev)["charts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
        assert_eq!(charts.len(), 8, "{charts:?}");
        for kind in TIME_CHARTS.iter().chain(&BAR_CHARTS) {
            let path = out.join(format!("{dev}_{kind}.png"));
            assert!(charts.contains(&format!("{dev}_{kind}.png")), "{kind} not listed in summary.json");
            let img = Image::decode(&path);
            let name = path.display().to_string();
            assert_eq!((img.w, img.h), (W, H), "{name}");

            // Not blank: many colours (anti-aliased text, data), a real share of non-white.
            let colors: HashSet<(u8, u8, u8)> =
                (0..img.h).flat_map(|y| (0..img.w).map(move |x| (x, y))).map(|(x, y)| img.px(x, y)).collect();
            assert!(colors.len() >= 40, "{name}: only {} colours", colors.len());
            let ink = img.count(0..H, |p| p != (255, 255, 255));
            assert!(ink > (W * H / 30) as usize, "{name}: nearly blank ({ink} px)");

            // Text was rendered: the title band and the time-axis band both hold glyph pixels.
            assert!(img.count(0..40, dark) > 300, "{name}: no title text");
            assert!(img.count(H - 60..H, dark) > 300, "{name}: no axis text");

            // Event markers are on every time chart.
            if TIME_CHARTS.contains(kind) {
                assert!(img.count_color(EVENT) > 500, "{name}: no event markers");
            }
            pngs.push((format!("{dev}_{kind}.png"), img));
        }
    }

    let by_name = |n: &str| &pngs.iter().find(|(name, _)| name == n).unwrap().1;
    let heat = by_name("nvme0n1_latency_hist.png");
    // Heatmap cells (the blues) fill a good part of the plot.
    let blues = heat.count(60..H - 70, |(r, g, b)| b > 80 && b as i32 > r as i32 + 40 && g < 240);
    assert!(blues > 40_000, "heatmap shows too few cells: {blues}");
    assert!(heat.count_color(P50) > 300, "p50 line missing");
    assert!(heat.count(90..H - 80, |p| p == P99) > 300, "p99 line missing");
    // The percentile chart uses the same fixed colours.
    let pct = by_name("nvme0n1_percentiles.png");
    assert!(pct.count_color(P50) > 300, "p50 missing from the percentile chart");
    // The anomaly band (85% red over white) at the top of the plot; sda has no anomaly.
    let band = |(r, g, b): (u8, u8, u8)| r > 205 && (55..90).contains(&g) && (55..90).contains(&b);
    assert!(heat.count(0..H, band) > 200, "anomaly band missing");
    assert!(by_name("sda_latency_hist.png").count(0..H, band) < 30, "sda has no anomaly but shows a band");
    // Light red shading on the line charts.
    let qd = by_name("nvme0n1_queue_depth.png");
    assert!(
        qd.count(0..H, |(r, g, b)| r > 240 && (210..235).contains(&g) && (210..235).contains(&b)) > 2000,
        "anomaly shading missing"
    );

    // report.html embeds exactly these PNGs and needs no network.
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    for bad in ["http://", "https://", "<script", "<link", "@import"] {
        assert!(!html.contains(bad), "report.html contains {bad}");
    }
    let imgs: Vec<&str> =
        html.split("src=\"data:image/png;base64,").skip(1).map(|r| &r[..r.find('"').unwrap()]).collect();
    assert_eq!(imgs.len(), 16);
    let embedded: HashSet<Vec<u8>> =
        imgs.iter().map(|b64| base64::engine::general_purpose::STANDARD.decode(b64).unwrap()).collect();
    for (name, _) in &pngs {
        assert!(embedded.contains(&std::fs::read(out.join(name)).unwrap()), "{name} differs in report.html");
    }
    for text in ["buffer flush 2", "nvme0n1", "Latency anomalies", "2025-10-02 14:27:00"] {
        assert!(html.contains(text), "report.html lacks {text}");
    }
}

#[test]
fn without_events_there_are_no_markers() {
    let dir = tempfile::tempdir().unwrap();
    let input = input(dir.path());
    let out = dir.path().join("out");
    analyze_ok(&[&input], &out, &[]);
    for kind in TIME_CHARTS {
        let img = Image::decode(&out.join(format!("nvme0n1_{kind}.png")));
        assert_eq!(img.count_color(EVENT), 0, "{kind}");
    }
}
