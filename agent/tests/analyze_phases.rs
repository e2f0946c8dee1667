//! Known answers for the per-phase × per-op table and the anomaly rule, on a generated run of
//! idle → QD1 4 KiB random reads → QD32 4 KiB random writes → 1 MiB sequential writes → idle,
//! with `--events` at the phase changes.

mod analyze_support;

use analyze_support::*;

const DT: f64 = 0.25;
const KIB4: u64 = 4096;
const MIB: u64 = 1 << 20;

/// (label, intervals, ios per interval, depth) of each phase.
fn plan() -> Vec<(&'static str, usize, Vec<Io>, u64)> {
    vec![
        ("(before first event)", 20, vec![], 0),
        (
            "qd1-randread",
            40,
            vec![
                io_full("read", 150, 900, KIB4, 3),
                io_full("read", 400, 90, KIB4, 3),
                io_full("read", 3000, 10, KIB4, 3),
            ],
            1,
        ),
        (
            "qd32-randwrite",
            40,
            vec![io_full("write", 250, 27_000, KIB4, 20), io_full("write", 900, 3000, KIB4, 40)],
            32,
        ),
        ("seq-1m-write", 40, vec![io_full("write", 2000, 1000, MIB, 100)], 8),
        ("idle", 20, vec![], 0),
    ]
}

/// The JSONL and the events file; `stall` replaces intervals of the QD32 phase with a stall.
fn write_run(dir: &std::path::Path, stall: Option<std::ops::Range<usize>>) -> (std::path::PathBuf, std::path::PathBuf) {
    let (mut lines, mut events, mut k) = (Vec::new(), Vec::new(), 0usize);
    for (p, (label, n, ios, depth)) in plan().into_iter().enumerate() {
        if p > 0 {
            events.push(format!("{{\"timestamp\": {}, \"label\": \"{label}\"}}\n", T0 + k as f64 * DT));
        }
        for i in 0..n {
            let mut ios = ios.clone();
            if label == "qd32-randwrite" && stall.as_ref().is_some_and(|s| s.contains(&i)) {
                ios = vec![io_full("write", 20_000, 1600, KIB4, 20)]; // 80x slower, IOPS collapses
            }
            let d = DevSample::new("nvme0n1", 259 << 20, ios, depth, depth);
            lines.push(line(&snapshot(Schema::Current, Some("node-a"), T0 + (k + 1) as f64 * DT, DT, k as u64, &[d])));
            k += 1;
        }
    }
    let (input, ev) = (dir.join("run.jsonl"), dir.join("events.jsonl"));
    write(&input, &lines);
    std::fs::write(&ev, events.concat()).unwrap();
    (input, ev)
}

fn close(v: &serde_json::Value, want: f64, rel: f64, what: &str) {
    let got = v.as_f64().unwrap_or_else(|| panic!("{what}: {v}"));
    assert!((got - want).abs() <= want.abs() * rel, "{what}: got {got}, want {want}");
}

#[test]
fn phase_table_has_known_answers() {
    let tmp = tempfile::tempdir().unwrap();
    // To look at the charts: BLKIO_ANALYZE_KEEP=DIR writes everything there instead.
    let dir = std::env::var_os("BLKIO_ANALYZE_KEEP").map_or_else(|| tmp.path().to_path_buf(), std::path::PathBuf::from);
    let (input, ev) = write_run(&dir, None);
    let out = dir.join("out");
    let (s, run) = analyze_ok(&[&input], &out, &["--events", ev.to_str().unwrap()]);
    let d = device(&s, Some("node-a"), "nvme0n1");
    let phases = d["phases"].as_array().expect("phases");
    let labels: Vec<&str> = phases.iter().map(|p| p["label"].as_str().unwrap()).collect();
    assert_eq!(labels, ["(before first event)", "qd1-randread", "qd32-randwrite", "seq-1m-write", "idle"]);
    for (p, (label, n, ios, depth)) in phases.iter().zip(plan()) {
        let all = &p["ops"][0];
        assert_eq!(all["op"], "all", "{label}");
        let requests: u64 = ios.iter().map(|i| i.count).sum::<u64>() * n as u64;
        assert_eq!(all["requests"], requests, "{label}");
        close(&p["end"], p["start"].as_f64().unwrap() + n as f64 * DT, 1e-12, label);
        if requests == 0 {
            continue;
        }
        // Steady phases that fill whole intervals: active time is the phase's length.
        close(&p["active_seconds"], n as f64 * DT, 1e-9, label);
        let bytes: u64 = ios.iter().map(|i| i.count * i.size).sum::<u64>() * n as u64;
        close(&all["iops"], requests as f64 / (n as f64 * DT), 1e-9, label);
        close(&all["mb_per_s"], bytes as f64 / 1e6 / (n as f64 * DT), 1e-9, label);
        let lat: u64 = ios.iter().map(|i| i.count * i.latency_us).sum::<u64>() * n as u64;
        let queue: u64 = ios.iter().map(|i| i.count * i.queue_us).sum::<u64>() * n as u64;
        close(&all["mean_device_us"], lat as f64 / requests as f64, 1e-9, label);
        close(&all["mean_queue_us"], queue as f64 / requests as f64, 1e-9, label);
        // Little's law on exact sums: mean requests in the device while active.
        close(&p["avg_depth"], lat as f64 / 1e6 / (n as f64 * DT), 1e-9, label);
        assert_eq!(p["peak_depth"], depth, "{label}");
        // One op per phase here, so its row equals the all-ops row.
        let op = &p["ops"][1];
        assert_eq!(op["op"], ios[0].op);
        assert_eq!(op["requests"], requests);
        // Percentiles land in the bucket of the request that holds the rank.
        let mut sorted: Vec<(u64, u64)> = ios.iter().map(|i| (i.latency_us, i.count)).collect();
        sorted.sort();
        for (key, pct) in [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9)] {
            let rank = (pct / 100.0 * (requests / n as u64) as f64).ceil() as u64;
            let mut seen = 0;
            let holder = sorted
                .iter()
                .find(|(_, c)| {
                    seen += c;
                    seen >= rank
                })
                .unwrap()
                .0;
            let slot = blkio_agent::histogram::log2_slot(holder) as u32;
            assert_in_slot(op["percentiles_us"][key].as_f64().unwrap(), slot, &format!("{label} {key}"));
        }
    }
    // Load changes are not faults.
    assert_eq!(d["anomalies"], serde_json::json!([]), "{}", run.stdout);
    // The whole-recording per-op view and throughput.
    assert_eq!(d["by_op"][0]["op"], "all");
    close(&d["peak_mb_per_s"], 1000.0 * MIB as f64 / 1e6 / DT, 1e-9, "peak MB/s");
    // The text report prints the table and explains device time vs fio's clat.
    for needle in ["per phase", "qd32-randwrite", "p99.9", "MB/s", "not", "clat"] {
        assert!(run.stdout.contains(needle), "{needle} missing:\n{}", run.stdout);
    }
    assert!(s["latency_note"].as_str().unwrap().contains("clat"));
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("per phase") && html.contains("qd32-randwrite") && html.contains("not fio&#39;s clat"));
}

#[test]
fn an_injected_stall_is_one_anomaly_with_its_true_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let (input, ev) = write_run(dir.path(), Some(10..18)); // 2 s in the QD32 phase
    let out = dir.path().join("out");
    let (s, _) = analyze_ok(&[&input], &out, &["--events", ev.to_str().unwrap()]);
    let a = device(&s, Some("node-a"), "nvme0n1")["anomalies"].as_array().unwrap().clone();
    assert_eq!(a.len(), 1, "{a:?}");
    // The QD32 phase starts after 60 intervals; the stall covers its intervals 10..18.
    close(&a[0]["start"], T0 + (60 + 10) as f64 * DT, 1e-12, "start");
    close(&a[0]["end"], T0 + (60 + 18) as f64 * DT, 1e-12, "end");
}
