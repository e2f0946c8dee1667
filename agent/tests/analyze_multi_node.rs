//! Several nodes' segment files together: grouped by (node, device), node-prefixed chart
//! names, segment directories read recursively (sealed `*.jsonl` and `*.jsonl.gz` only), and
//! records read twice counted once.

mod analyze_support;

use std::path::Path;

use analyze_support::*;

/// Snapshots `range` of one node: nvme0n1 with `reqs` requests of `us` µs each, plus sdb on node-b.
fn segment(node: &str, range: std::ops::Range<usize>, reqs: u64, us: u64) -> String {
    range
        .map(|i| {
            let mut devs = vec![DevSample::new("nvme0n1", 259 << 20, vec![io("read", us, reqs)], 1, 2)];
            if node == "node-b" {
                devs.push(DevSample::new("sdb", 8 << 20 | 16, vec![io("write", 5000, 1)], 0, 1));
            }
            line(&snapshot(Schema::Current, Some(node), T0 + (i + 1) as f64, 1.0, i as u64, &devs))
        })
        .collect()
}

/// A segment directory as two agents would leave it, plus things that must be ignored.
fn segment_dir(root: &Path) -> std::path::PathBuf {
    let dir = root.join("segments");
    std::fs::create_dir_all(dir.join("node-b")).unwrap();
    std::fs::write(dir.join("node-a-20251002T142000Z-000001.jsonl"), segment("node-a", 0..100, 100, 40)).unwrap();
    gzip(&dir.join("node-a-20251002T142140Z-000002.jsonl.gz"), &segment("node-a", 100..200, 100, 40));
    std::fs::write(dir.join("node-b-20251002T142000Z-000001.jsonl"), segment("node-b", 0..150, 10, 3000)).unwrap();
    std::fs::write(
        dir.join("node-b").join("node-b-20251002T142230Z-000002.jsonl"),
        segment("node-b", 150..200, 10, 3000),
    )
    .unwrap();
    // The agent's open segment (not sealed yet), a hidden file and a note: none is input.
    std::fs::write(dir.join("node-a-20251002T142320Z-000003.jsonl.open"), "{\"torn").unwrap();
    std::fs::write(dir.join(".partial.jsonl"), "{\"torn").unwrap();
    std::fs::write(dir.join("README.txt"), "collected with kubectl cp").unwrap();
    dir
}

#[test]
fn nodes_are_kept_apart_and_named_in_chart_files() {
    let root = tempfile::tempdir().unwrap();
    let dir = segment_dir(root.path());
    let out = root.path().join("out");
    let (s, run) = analyze_ok(&[&dir], &out, &[]);

    assert_eq!(s["skipped_lines"], 0, "ignored files must not be read: {s:#}");
    assert_eq!(s["snapshots"], 400);
    assert_eq!(s["inputs"].as_array().unwrap().len(), 4);
    assert_eq!(s["devices"].as_array().unwrap().len(), 3);

    let a = device(&s, Some("node-a"), "nvme0n1");
    assert_eq!(a["total_requests"], 20_000);
    assert_eq!(a["mean_latency_us"], 40.0);
    assert_eq!(a["intervals"], 200);
    assert_eq!(a["first_timestamp"], T0 + 1.0);
    assert_eq!(a["last_timestamp"], T0 + 200.0);
    let b = device(&s, Some("node-b"), "nvme0n1");
    assert_eq!(b["total_requests"], 2_000);
    assert_eq!(b["mean_latency_us"], 3000.0);
    assert_eq!(b["last_timestamp"], T0 + 200.0);
    assert_eq!(device(&s, Some("node-b"), "sdb")["total_requests"], 200);

    for f in [
        "node-a_nvme0n1_latency_hist.png",
        "node-a_nvme0n1_queue_depth.png",
        "node-a_nvme0n1_requests.png",
        "node-b_nvme0n1_latency_hist.png",
        "node-b_sdb_requests.png",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    assert!(!out.join("nvme0n1_latency_hist.png").exists(), "names must be node-prefixed");
    assert!(run.stdout.contains("NODE"), "{}", run.stdout);
    assert!(run.stdout.contains("on 2 node(s)"), "{}", run.stdout);
}

#[test]
fn records_read_twice_count_once() {
    let root = tempfile::tempdir().unwrap();
    let dir = segment_dir(root.path());
    // The same segment again under another name (e.g. copied next to its archive), and the
    // directory named twice (once through a glob).
    let copy = root.path().join("copy.jsonl");
    std::fs::copy(dir.join("node-a-20251002T142000Z-000001.jsonl"), &copy).unwrap();
    let glob = format!("{}/*.jsonl", dir.display());
    let out = root.path().join("out");
    let (s, run) = analyze_ok(&[&dir, &copy, Path::new(&glob)], &out, &[]);

    // 2 files named twice are read once; the copy's 100 records are duplicates.
    assert_eq!(s["inputs"].as_array().unwrap().len(), 5);
    assert_eq!(s["duplicate_records"], 100);
    assert_eq!(device(&s, Some("node-a"), "nvme0n1")["total_requests"], 20_000);
    assert_eq!(device(&s, Some("node-a"), "nvme0n1")["intervals"], 200);
    assert!(run.stdout.contains("100 duplicate record(s)"), "{}", run.stdout);
}

#[test]
fn a_seed_file_next_to_agent_files_gets_its_own_group() {
    let root = tempfile::tempdir().unwrap();
    let seed = root.path().join("old.jsonl");
    let devs = [DevSample::new("nvme0n1", 259 << 20, vec![io("read", 40, 7)], 1, 1)];
    std::fs::write(
        &seed,
        (0..10).map(|i| line(&snapshot(Schema::Seed, None, T0 + i as f64, 1.0, 0, &devs))).collect::<String>(),
    )
    .unwrap();
    let new = root.path().join("new.jsonl");
    std::fs::write(&new, segment("node-a", 0..10, 100, 40)).unwrap();
    let out = root.path().join("out");
    let (s, _) = analyze_ok(&[&seed, &new], &out, &[]);
    assert_eq!(device(&s, None, "nvme0n1")["total_requests"], 70);
    assert_eq!(device(&s, Some("node-a"), "nvme0n1")["total_requests"], 1000);
    assert!(out.join("unknown-node_nvme0n1_latency_hist.png").is_file());
    assert!(out.join("node-a_nvme0n1_latency_hist.png").is_file());
}
