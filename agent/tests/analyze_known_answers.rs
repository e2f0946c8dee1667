//! `blkio-agent analyze` on generated inputs whose answers follow from their construction, in
//! the agent's schema and in the seed's original schema (no sum_us, node, peak or ops).
//!
//! Workload (600 snapshots of 1 s):
//! - nvme0n1: 90 reads of 40 µs (slot 5, [32, 63]) and 10 writes of 300 µs (slot 8, [256, 511])
//!   per interval; in intervals 300..320 the writes take 20 000 µs (slot 14) instead.
//! - sda: 10 writes of 1000 µs (slot 9) per interval; depth 1, peak 2, and in interval 200 a peak
//!   bounded by `peak_upper` 9 (I/O on several hardware queues).
//! - loop0: never completes anything (only in `inflight`).

mod analyze_support;

use analyze_support::*;

const N: usize = 600;
const SLOW: std::ops::Range<usize> = 300..320;
const PEAK_AT: usize = 123;
const BOUNDED_AT: usize = 200;

fn workload(schema: Schema) -> String {
    (0..N)
        .map(|i| {
            let write_us = if SLOW.contains(&i) { 20_000 } else { 300 };
            let depth = if i == PEAK_AT { 50 } else { (i % 7) as u64 };
            let peak = if i == PEAK_AT { 77 } else { depth + 3 };
            let devs = [
                DevSample::new("nvme0n1", 259 << 20, vec![io("read", 40, 90), io("write", write_us, 10)], depth, peak),
                match DevSample::new("sda", 8 << 20, vec![io("write", 1000, 10)], 1, 2) {
                    d if i == BOUNDED_AT => d.with_peak_upper(9),
                    d => d,
                },
                DevSample::new("loop0", 7 << 20, vec![], 0, 0),
            ];
            line(&snapshot(schema, Some("node-a"), T0 + (i + 1) as f64, 1.0, i as u64, &devs))
        })
        .collect()
}

fn approx(a: &serde_json::Value, b: f64, what: &str) {
    let a = a.as_f64().unwrap_or_else(|| panic!("{what} is not a number: {a}"));
    assert!((a - b).abs() < 1e-6 * b.abs().max(1.0), "{what}: {a} != {b}");
}

/// What both schemas must agree on: totals, percentile buckets, anomaly range, order, charts.
fn check_common(s: &serde_json::Value, node: Option<&str>) {
    assert_eq!(s["skipped_lines"], 0);
    assert_eq!(s["snapshots"], N as u64);
    let names: Vec<&str> =
        s["devices"].as_array().unwrap().iter().map(|d| d["device_name"].as_str().unwrap()).collect();
    assert_eq!(names, ["nvme0n1", "sda", "loop0"], "busiest first");

    let nvme = device(s, node, "nvme0n1");
    assert_eq!(nvme["device_id"], 259u64 << 20);
    assert_eq!(nvme["total_requests"], 60_000);
    assert_eq!(nvme["intervals"], N as u64);
    approx(&nvme["first_timestamp"], T0 + 1.0, "first_timestamp");
    approx(&nvme["last_timestamp"], T0 + N as f64, "last_timestamp");
    // 54 000 requests in slot 5, 5 800 in slot 8, 200 in slot 14.
    let p = &nvme["percentiles_us"];
    assert_eq!(p.as_object().unwrap().keys().collect::<Vec<_>>(), ["p50", "p90", "p99", "p99.9"]);
    assert_in_slot(p["p50"].as_f64().unwrap(), 5, "p50"); // rank 30 000
    assert_in_slot(p["p90"].as_f64().unwrap(), 5, "p90"); // rank 54 000, the last in slot 5
    assert_in_slot(p["p99"].as_f64().unwrap(), 8, "p99"); // rank 59 400
    assert_in_slot(p["p99.9"].as_f64().unwrap(), 14, "p99.9"); // rank 59 940

    let anomalies = nvme["anomalies"].as_array().unwrap();
    assert_eq!(anomalies.len(), 1, "{anomalies:?}");
    let a = &anomalies[0];
    // Intervals 300..320 end at T0+301 .. T0+320; the range starts where the first one began.
    approx(&a["start"], T0 + 300.0, "anomaly start");
    approx(&a["end"], T0 + 320.0, "anomaly end");
    assert_in_slot(a["p99_us"].as_f64().unwrap(), 14, "anomaly p99");
    // Normal intervals: rank 99 of 100 is the 9th of 10 writes in slot 8: 256 + 256 * 9/10.
    approx(&a["baseline_p99_us"], 486.4, "baseline p99");

    let sda = device(s, node, "sda");
    assert_eq!(sda["total_requests"], 6_000);
    assert_in_slot(sda["percentiles_us"]["p50"].as_f64().unwrap(), 9, "sda p50");
    assert_eq!(sda["anomalies"].as_array().unwrap().len(), 0);

    let idle = device(s, node, "loop0");
    assert_eq!(idle["total_requests"], 0);
    assert!(idle["mean_latency_us"].is_null());
    assert!(idle["percentiles_us"]["p50"].is_null());
    assert_eq!(idle["peak_queue_depth"], 0);
    assert!(idle.get("charts").is_none(), "an idle device gets no charts");

    // The seed's three charts keep their names; throughput and sizes need the agent's `ops`.
    let mut want = vec!["latency_hist", "percentiles", "latency_dist", "requests"];
    if node.is_some() {
        want.extend(["throughput", "request_size"]);
    }
    want.extend(["queue_depth", "qd_iops"]);
    let want: Vec<String> = want.iter().map(|c| format!("nvme0n1_{c}.png")).collect();
    assert_eq!(nvme["charts"], serde_json::json!(want));
}

#[test]
fn current_schema_gives_exact_answers() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("tracepoints.jsonl");
    std::fs::write(&input, workload(Schema::Current)).unwrap();
    let out = dir.path().join("out");
    let (s, run) = analyze_ok(&[&input], &out, &["--percentiles", "50,90,99,99.9"]);
    check_common(&s, Some("node-a"));

    let nvme = device(&s, Some("node-a"), "nvme0n1");
    // Exact sum: 600*90*40 + 580*10*300 + 20*10*20000 = 7 900 000 µs over 60 000 requests.
    approx(&nvme["mean_latency_us"], 7_900_000.0 / 60_000.0, "exact mean");
    assert_eq!(nvme["mean_latency"], "exact");
    assert_eq!(nvme["peak_queue_depth"], 77, "the `peak` key wins over end-of-interval counts");
    assert_eq!(
        nvme["requests_by_op"],
        serde_json::json!({"read": 54_000, "write": 6_000, "discard": 0, "flush": 0, "other": 0})
    );
    approx(&device(&s, Some("node-a"), "sda")["mean_latency_us"], 1000.0, "sda exact mean");
    assert_eq!(device(&s, Some("node-a"), "sda")["peak_queue_depth"], 2);
    assert_eq!(device(&s, Some("node-a"), "sda")["peak_queue_depth_upper"], 9, "the range of interval 200");
    assert_eq!(nvme.get("peak_queue_depth_upper"), None, "exact peaks only: no upper bound");
    assert!(run.stdout.lines().any(|l| l.contains("sda") && l.contains(" 2-9 ")), "{}", run.stdout);

    for f in [
        "nvme0n1_latency_hist.png",
        "nvme0n1_queue_depth.png",
        "nvme0n1_requests.png",
        "sda_requests.png",
        "report.html",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    assert!(!out.join("loop0_latency_hist.png").exists());
    // The text summary names the anomaly's range in UTC (T0 = 14:20:00).
    assert!(run.stdout.contains("node-a/nvme0n1  2025-10-02 14:25:00 to 14:25:20 (20 s)"), "{}", run.stdout);
    assert!(!run.stdout.contains("(est.)"), "{}", run.stdout);
}

#[test]
fn seed_schema_gives_the_same_buckets_and_an_estimated_mean() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("tracepoints.jsonl");
    let text = workload(Schema::Seed);
    for key in ["sum_us", "node", "peak", "\"ops\"", "schema_version"] {
        assert!(!text.contains(key), "seed input must not have {key}");
    }
    std::fs::write(&input, &text).unwrap();
    let out = dir.path().join("out");
    let (s, run) = analyze_ok(&[&input], &out, &["--percentiles", "50,90,99,99.9"]);
    check_common(&s, None);

    let nvme = device(&s, None, "nvme0n1");
    // Midpoints: slot 5 -> 48, slot 8 -> 384, slot 14 -> 24 576.
    approx(
        &nvme["mean_latency_us"],
        (54_000.0 * 48.0 + 5_800.0 * 384.0 + 200.0 * 24_576.0) / 60_000.0,
        "estimated mean",
    );
    assert_eq!(nvme["mean_latency"], "estimated");
    assert_eq!(nvme["peak_queue_depth"], 50, "without `peak`, the highest end-of-interval count");
    assert!(nvme.get("requests_by_op").is_none());
    approx(&device(&s, None, "sda")["mean_latency_us"], 768.0, "sda estimated mean (slot 9 midpoint)");
    assert_eq!(device(&s, None, "sda")["peak_queue_depth"], 1);
    assert!(run.stdout.contains("(est.)"), "{}", run.stdout);
    assert!(run.stdout.contains("nvme0n1  2025-10-02 14:25:00 to 14:25:20"), "{}", run.stdout);
}

#[test]
fn both_schemas_agree_on_percentiles() {
    let dir = tempfile::tempdir().unwrap();
    let mut results = Vec::new();
    for (schema, node) in [(Schema::Current, Some("node-a")), (Schema::Seed, None)] {
        let input = dir.path().join(format!("{schema:?}.jsonl"));
        std::fs::write(&input, workload(schema)).unwrap();
        let (s, _) = analyze_ok(&[&input], &dir.path().join(format!("out-{schema:?}")), &[]);
        results.push(device(&s, node, "nvme0n1")["percentiles_us"].clone());
    }
    assert_eq!(results[0], results[1]);
}
