//! The analyze flags: --top, --percentiles, --device, --from/--to, --events, --format json,
//! and one-line errors for bad arguments.

mod analyze_support;

use analyze_support::*;

/// 300 snapshots: nvme0n1 (100 req/s), sda (20 req/s), sdb (5 req/s).
fn input(dir: &std::path::Path) -> std::path::PathBuf {
    let text: String = (0..300)
        .map(|i| {
            let devs = [
                DevSample::new("nvme0n1", 259 << 20, vec![io("read", 50, 100)], 1, 1),
                DevSample::new("sda", 8 << 20, vec![io("write", 900, 20)], 1, 1),
                DevSample::new("sdb", 8 << 20 | 16, vec![io("write", 4000, 5)], 1, 1),
            ];
            line(&snapshot(Schema::Current, Some("n1"), T0 + (i + 1) as f64, 1.0, i as u64, &devs))
        })
        .collect();
    let p = dir.join("in.jsonl");
    std::fs::write(&p, text).unwrap();
    p
}

fn names(s: &serde_json::Value) -> Vec<String> {
    s["devices"].as_array().unwrap().iter().map(|d| d["device_name"].as_str().unwrap().to_string()).collect()
}

#[test]
fn top_keeps_the_busiest_devices() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (s, _) = analyze_ok(&[&input(dir.path())], &out, &["--top", "2"]);
    assert_eq!(names(&s), ["nvme0n1", "sda"]);
    assert!(!out.join("sdb_requests.png").exists());
}

#[test]
fn percentiles_are_keyed_as_requested() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (s, _) = analyze_ok(&[&input(dir.path())], &out, &["--percentiles", "99.9,50,100"]);
    let p = device(&s, Some("n1"), "sda")["percentiles_us"].as_object().unwrap().clone();
    let mut keys: Vec<&String> = p.keys().collect();
    keys.sort();
    assert_eq!(keys, ["p100", "p50", "p99.9"]);
    // In the file they are in ascending order (serde_json's map above sorts by name).
    let text = std::fs::read_to_string(out.join("summary.json")).unwrap();
    let at = |k: &str| text.find(&format!("\"{k}\": ")).unwrap_or_else(|| panic!("{k} missing"));
    assert!(at("p50") < at("p99.9") && at("p99.9") < at("p100"), "{text}");
    // All of sda's requests take 900 µs: slot 9; p100 is the bucket's upper edge.
    assert_in_slot(p["p50"].as_f64().unwrap(), 9, "p50");
    assert_eq!(p["p100"], 1024.0);
}

#[test]
fn device_patterns_include_and_exclude() {
    let dir = tempfile::tempdir().unwrap();
    let input = input(dir.path());
    let (s, _) = analyze_ok(&[&input], &dir.path().join("a"), &["--device", "sd*"]);
    assert_eq!(names(&s), ["sda", "sdb"]);
    let (s, _) = analyze_ok(&[&input], &dir.path().join("b"), &["--device", "!sdb,!nvme*"]);
    assert_eq!(names(&s), ["sda"]);

    let r = run(&[
        "--input",
        input.to_str().unwrap(),
        "--output-dir",
        dir.path().join("c").to_str().unwrap(),
        "--device",
        "vd*",
    ]);
    assert_eq!(r.code, 1);
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("no device matches --device vd*; devices in the input: nvme0n1, sda, sdb"),
        "{}",
        r.stderr
    );
}

#[test]
fn time_range_selects_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    // Snapshots end at T0+1 .. T0+300; keep those ending in [T0+100, T0+200] (14:21:40 to 14:23:20).
    let from = format!("{}", T0 + 100.0);
    let (s, _) =
        analyze_ok(&[&input(dir.path())], &dir.path().join("out"), &["--from", &from, "--to", "2025-10-02T14:23:20Z"]);
    assert_eq!(s["snapshots"], 101);
    let nvme = device(&s, Some("n1"), "nvme0n1");
    assert_eq!(nvme["total_requests"], 10_100);
    assert_eq!(nvme["first_timestamp"], T0 + 100.0);
    assert_eq!(nvme["last_timestamp"], T0 + 200.0);

    let r =
        run(&["--input", "x", "--output-dir", "y", "--from", "2025-10-02T15:00:00Z", "--to", "2025-10-02T14:00:00Z"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("--from") && r.stderr.contains("earlier than --to"), "{}", r.stderr);

    let r = run(&["--input", "x", "--output-dir", "y", "--from", "yesterday"]);
    assert_eq!(r.code, 2, "clap rejects it");
    assert!(r.stderr.contains("ISO 8601"), "{}", r.stderr);
}

#[test]
fn json_format_prints_the_summary() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (s, r) = analyze_ok(&[&input(dir.path())], &out, &["--format", "json"]);
    let printed: serde_json::Value = serde_json::from_str(&r.stdout).expect("stdout is JSON");
    assert_eq!(printed, s);
    assert_eq!(printed["devices"][0]["total_requests"], 30_000);
}

#[test]
fn events_accept_epoch_and_iso_and_report_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    std::fs::write(
        &events,
        format!("{{\"timestamp\": {}, \"label\": \"a\"}}\n{{\"timestamp\": \"2025-10-02T14:22:00Z\", \"label\": \"b\"}}\n{{\"label\": \"no time\"}}\n", T0 + 50.0),
    )
    .unwrap();
    let (s, _) = analyze_ok(&[&input(dir.path())], &dir.path().join("out"), &["--events", events.to_str().unwrap()]);
    assert_eq!(s["events"], 2);
    assert_eq!(s["skipped_lines"], 1);
    assert_eq!(s["skipped"][0]["file"], events.display().to_string());
    assert_eq!(s["skipped"][0]["line"], 3);
}

#[test]
fn bad_arguments_fail_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let input = input(dir.path());
    let out = dir.path().join("out");
    let (i, o) = (input.to_str().unwrap(), out.to_str().unwrap());

    let r = run(&["--input", i, "--output-dir", o, "--percentiles", "50,0"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("outside (0, 100]"), "{}", r.stderr);

    let r = run(&["--input", i, "--output-dir", o, "--top", "0"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("whole number >= 1"), "{}", r.stderr);

    let missing = dir.path().join("nope.jsonl");
    let r = run(&["--input", missing.to_str().unwrap(), "--output-dir", o]);
    assert_eq!(r.code, 1);
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
    assert!(r.stderr.contains("does not exist; pass JSONL files, globs or directories"), "{}", r.stderr);

    let glob = format!("{}/*.nothing", dir.path().display());
    let r = run(&["--input", &glob, "--output-dir", o]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("no file matches"), "{}", r.stderr);

    let empty_dir = dir.path().join("empty");
    std::fs::create_dir(&empty_dir).unwrap();
    let r = run(&["--input", empty_dir.to_str().unwrap(), "--output-dir", o]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("no *.jsonl or *.jsonl.gz files in directory"), "{}", r.stderr);
}
