//! Messages for input that is JSON but not JSONL, for `--format json` users, and for
//! snapshots whose two timestamps disagree.

mod analyze_support;

use analyze_support::*;

fn good(i: usize) -> blkio_agent::snapshot::Snapshot {
    let devs = [DevSample::new("nvme0n1", 259 << 20, vec![io("read", 40, 100)], 3, 5)];
    snapshot(Schema::Current, Some("n1"), T0 + (i + 1) as f64, 1.0, i as u64, &devs)
}

fn analyze(input: &std::path::Path, extra: &[&str]) -> Run {
    let out = input.with_extension("out");
    let mut args = vec!["--input", input.to_str().unwrap(), "--output-dir", out.to_str().unwrap()];
    args.extend(extra);
    run(&args)
}

#[test]
fn pretty_printed_json_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("pasted.json");
    std::fs::write(&input, serde_json::to_string_pretty(&good(0)).unwrap()).unwrap();
    let r = analyze(&input, &[]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let err = r.stderr.trim();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("looks like pretty-printed JSON; JSONL is one object per line"), "{err}");
    assert!(err.contains("jq -c ."), "{err}");
}

#[test]
fn a_json_array_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("array.json");
    std::fs::write(&input, serde_json::to_string(&vec![good(0), good(1)]).unwrap()).unwrap();
    let r = analyze(&input, &[]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("is a JSON array") && r.stderr.contains("jq -c '.[]'"), "{}", r.stderr);
    assert!(!r.stderr.contains("expected"), "no serde type jargon: {}", r.stderr);
}

#[test]
fn json_format_also_reports_skipped_lines_and_time_mismatches_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let mut bad = good(2);
    bad.iso_timestamp = blkio_agent::snapshot::iso_timestamp(bad.timestamp + 3600.0);
    let text = format!("{}garbage\n{}{}", line(&good(0)), line(&good(1)), line(&bad));
    std::fs::write(&input, text).unwrap();
    let r = analyze(&input, &["--format", "json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let s: serde_json::Value = serde_json::from_str(&r.stdout).expect("stdout is only the JSON");
    assert_eq!(s["skipped_lines"], 1);
    assert_eq!(s["timestamp_mismatches"], 1);
    assert!(r.stderr.contains("skipped 1 bad line(s)") && r.stderr.contains(":2:"), "{}", r.stderr);
    assert!(r.stderr.contains("disagree") && r.stderr.contains(":4:"), "{}", r.stderr);
    // The mismatching snapshot is still used (by its timestamp), and the text report says so.
    assert_eq!(s["devices"][0]["total_requests"], 300);
    let t = analyze(&input, &[]);
    assert!(t.stdout.contains("timestamp and iso_timestamp that disagree"), "{}", t.stdout);
}
