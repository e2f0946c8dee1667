//! Bad lines are skipped and reported with file:line and a reason; the run still succeeds when
//! anything usable remains, and fails with one clear line when nothing does.

mod analyze_support;

use analyze_support::*;

fn good(i: usize) -> String {
    let devs = [DevSample::new("nvme0n1", 259 << 20, vec![io("read", 40, 100)], 3, 5)];
    line(&snapshot(Schema::Current, Some("n1"), T0 + (i + 1) as f64, 1.0, i as u64, &devs))
}

#[test]
fn every_kind_of_bad_line_is_counted_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let g = good(2);
    let mut text = String::new();
    text += &good(0); // 1
    text += &format!("{}\n", &g[..g.len() / 2]); // 2: torn (a crash mid-write)
    text += &good(1); // 3
    text += &format!("{}\n", "\0".repeat(64)); // 4: NUL run
    text += "hello, not json\n"; // 5
    text += &good(3).replacen("\"total\":100", "\"total\":\"100\"", 1); // 6: wrong type
    text += "   \n"; // 7: blank, not a loss
    text += &good(4).replacen("\"total\":100", "\"total\":99", 1); // 8: total != bucket sum
    text += &good(5); // 9
    text += "{\"timestamp\": 5}\n"; // 10: missing keys
    text += &good(6); // 11
    text += &"\0".repeat(4096); // 12: preallocated tail left by a crashed mmap writer
    std::fs::write(&input, text).unwrap();

    let (s, run) = analyze_ok(&[&input], &dir.path().join("out"), &[]);
    let expected: [(u64, &str); 7] = [
        (2, "torn line"),
        (4, "NUL bytes"),
        (5, "not JSON"),
        (6, "invalid type"),
        (8, "total 99 differs from the sum of its bucket counts 100"),
        (10, "missing field"),
        (12, "NUL bytes"),
    ];
    assert_eq!(s["skipped_lines"], expected.len() as u64);
    let skipped = s["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), expected.len());
    for ((line, reason), got) in expected.iter().zip(skipped) {
        assert_eq!(got["line"], *line, "{got}");
        assert!(got["reason"].as_str().unwrap().contains(reason), "line {line}: {got}");
        assert_eq!(got["file"], input.display().to_string());
        // The text report lists them as file:line too.
        assert!(run.stdout.contains(&format!("{}:{line}: ", input.display())), "{}", run.stdout);
    }
    assert!(run.stdout.contains("Skipped 7 bad line(s)"), "{}", run.stdout);
    // Only the 4 good snapshots count.
    assert_eq!(s["snapshots"], 4);
    assert_eq!(device(&s, Some("n1"), "nvme0n1")["total_requests"], 400);
}

#[test]
fn a_truncated_gzip_keeps_every_whole_line_before_the_damage() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole.jsonl.gz");
    let text: String = (0..3000).map(good).collect();
    gzip(&whole, &text);
    let bytes = std::fs::read(&whole).unwrap();
    let cut = dir.path().join("cut.jsonl.gz");
    std::fs::write(&cut, &bytes[..bytes.len() * 6 / 10]).unwrap();

    let (s, _) = analyze_ok(&[&cut], &dir.path().join("out"), &[]);
    let used = s["snapshots"].as_u64().unwrap();
    assert!(used > 500 && used < 3000, "{used}");
    assert_eq!(s["skipped_lines"], 1);
    let bad = &s["skipped"][0];
    assert!(bad["reason"].as_str().unwrap().contains("gzip"), "{bad}");
    // Every line before the damage was used; the damage is reported at the next line.
    assert_eq!(bad["line"], used + 1);
    assert_eq!(device(&s, Some("n1"), "nvme0n1")["total_requests"], used * 100);
}

#[test]
fn nothing_usable_fails_with_one_line_naming_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bad.jsonl");
    std::fs::write(&input, "garbage\n{\"timestamp\": \"x\"}\n").unwrap();
    let out = dir.path().join("out");
    let r = run(&["--input", input.to_str().unwrap(), "--output-dir", out.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let err = r.stderr.trim();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no usable snapshot"), "{err}");
    assert!(err.contains(&format!("{}:1", input.display())), "{err}");
    assert!(err.contains("check that --input points at blkio-agent JSONL"), "{err}");

    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "\n\n").unwrap();
    let r = run(&["--input", empty.to_str().unwrap(), "--output-dir", out.to_str().unwrap()]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("contains no snapshots"), "{}", r.stderr);
}
