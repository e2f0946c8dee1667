//! Privileged end-to-end tests of what the analyzer reads, with the real agent on a loop
//! device: the live `--output` file is clean for a concurrent reader during a 30 s run, and the
//! per-phase table agrees with fio's own JSON output. Root, real devices, real tracepoints;
//! a missing prerequisite fails the test with the fix ([`blkio_agent::prereq`]).

#![cfg(feature = "ebpf")] // the node agent; absent from the analyzer-only build

mod privileged_support;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use blkio_agent::snapshot::Snapshot;
use privileged_support::*;

/// Root, loop devices and `tools`, by the project's one rule ([`blkio_agent::prereq`]): missing
/// ones fail the test unless skipping was explicitly allowed.
fn require(test: &str, tools: &[&str]) -> Option<Privileged> {
    let missing: Vec<String> = tools
        .iter()
        .filter(|t| {
            !Command::new("sh").arg("-c").arg(format!("command -v {t}")).output().is_ok_and(|o| o.status.success())
        })
        .map(|t| format!("needs {t} (`cargo xtask setup` installs it)"))
        .collect();
    if !blkio_agent::prereq::require(test, &missing) {
        return None;
    }
    privileged(test)
}

#[test]
fn live_output_file_is_clean_for_a_concurrent_reader() {
    let Some(_p) = require("live_output_file_is_clean_for_a_concurrent_reader", &[]) else { return };
    let dev = LoopDev::new(32);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("live.jsonl");
    let agent = Agent::start(&["--interval", "0.05", "--flush-every", "1", "--output", out.to_str().unwrap()]);
    let done = AtomicBool::new(false);
    let (polls, lines) = std::thread::scope(|s| {
        let load = s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                dev.dd_write(200);
                dev.dd_read(200);
            }
        });
        let reader = s.spawn(|| {
            let (mut polls, mut lines, mut prev) = (0u64, 0usize, Vec::<u8>::new());
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(30) {
                let data = std::fs::read(&out).unwrap_or_default();
                assert!(memchr::memchr(0, &data).is_none(), "poll {polls}: NUL byte in the live file");
                assert!(data.starts_with(&prev[..prev.len().min(data.len())]), "poll {polls}: not append-only");
                assert!(data.len() >= prev.len(), "poll {polls}: the file shrank");
                // Every complete line parses as a snapshot; only the line being written may
                // lack its newline (it is completed by a later poll: checked by the prefix test).
                let whole = memchr::memrchr(b'\n', &data).map_or(0, |i| i + 1);
                let complete: Vec<&[u8]> = data[..whole].split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
                for l in &complete[lines.min(complete.len())..] {
                    serde_json::from_slice::<Snapshot>(l)
                        .unwrap_or_else(|e| panic!("poll {polls}: a complete line does not parse: {e}"));
                }
                lines = complete.len();
                prev = data;
                polls += 1;
                std::thread::sleep(Duration::from_millis(3));
            }
            (polls, lines)
        });
        let r = reader.join().unwrap();
        done.store(true, Ordering::Relaxed);
        load.join().unwrap();
        r
    });
    agent.stop(libc::SIGTERM);
    assert!(polls > 1000 && lines > 300, "{polls} polls saw {lines} lines");
    let snaps = read_jsonl(&out);
    assert!(snaps.len() >= lines);
    assert!(op_counts(&snaps, &dev.name).get("write").copied().unwrap_or(0) > 0, "the load was measured");
}

/// Runs one fio job on the device and returns its JSON.
fn fio(dev: &str, name: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new("fio")
        .args([&format!("--name={name}"), &format!("--filename={dev}"), "--direct=1", "--time_based", "--runtime=10"])
        .args(["--output-format=json", "--group_reporting"])
        .args(args)
        .output()
        .expect("run fio");
    assert!(out.status.success(), "fio {name}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("fio JSON: {e}\n{}", String::from_utf8_lossy(&out.stdout)))
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

/// Snapshots that share a timestamp (the analyzer keeps the first of such records), with seq.
fn repeated_timestamps(snaps: &[blkio_agent::snapshot::Snapshot]) -> Vec<(f64, Option<u64>)> {
    let mut seen = std::collections::HashSet::new();
    snaps.iter().filter(|s| !seen.insert(s.timestamp.to_bits())).map(|s| (s.timestamp, s.seq)).collect()
}

#[test]
fn phase_table_matches_fio_json() {
    let Some(_p) = require("phase_table_matches_fio_json", &["fio"]) else { return };
    let dev = LoopDev::new(256);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run.jsonl");
    // Short intervals: phase boundaries and the active-time edges are exact to an interval.
    let agent = Agent::start(&["--interval", "0.05", "--flush-every", "1", "--output", out.to_str().unwrap()]);
    let path = dev.dev.to_str().unwrap();
    let jobs: [(&str, &str, Vec<&str>); 3] = [
        ("qd1-randread", "read", vec!["--rw=randread", "--bs=4k", "--ioengine=psync", "--iodepth=1"]),
        ("qd32-randwrite", "write", vec!["--rw=randwrite", "--bs=4k", "--ioengine=libaio", "--iodepth=32"]),
        ("seq-1m-write", "write", vec!["--rw=write", "--bs=1M", "--ioengine=libaio", "--iodepth=4"]),
    ];
    let mut events = String::new();
    let mut results = Vec::new();
    std::thread::sleep(Duration::from_secs(1)); // idle
    for (label, op, args) in &jobs {
        // An interval of idle time on each side of every event keeps the counts exact (a
        // snapshot belongs to the phase holding the middle of its interval).
        events += &format!("{{\"timestamp\": {}, \"label\": \"{label}\"}}\n", now());
        std::thread::sleep(Duration::from_millis(300));
        let before = dev.diskstats();
        let f = fio(path, label, args);
        let after = dev.diskstats();
        results.push((label, op, f, (after.0 - before.0, after.1 - before.1)));
        std::thread::sleep(Duration::from_millis(300));
        events += &format!("{{\"timestamp\": {}, \"label\": \"idle after {label}\"}}\n", now());
        std::thread::sleep(Duration::from_millis(500));
    }
    agent.stop(libc::SIGINT);
    let ev = dir.path().join("events.jsonl");
    std::fs::write(&ev, &events).unwrap();

    let report = dir.path().join("report");
    let run = Command::new(agent_bin())
        .args(["analyze", "--input", out.to_str().unwrap(), "--output-dir", report.to_str().unwrap()])
        .args(["--events", ev.to_str().unwrap(), "--device", &dev.name, "--format", "json"])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let s: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let d = &s["devices"][0];
    assert_eq!(d["device_name"], dev.name.as_str());
    let phases = d["phases"].as_array().expect("phases");
    // The analyzer's totals are the JSONL's, exactly.
    let snaps = read_jsonl(&out);
    let jsonl = op_counts(&snaps, &dev.name);
    for row in d["by_op"].as_array().unwrap().iter().skip(1) {
        assert_eq!(
            row["requests"].as_u64(),
            jsonl.get(row["op"].as_str().unwrap()).copied(),
            "{row}; analyzer: skipped_lines={} duplicate_records={} skipped={}; JSONL timestamps seen twice: {:?}",
            s["skipped_lines"],
            s["duplicate_records"],
            s["skipped"],
            repeated_timestamps(&snaps)
        );
    }
    // The block layer may split a request larger than the device's limits: for the loop
    // device's 128 segments, a 1 MiB direct write from pages that are not physically
    // contiguous becomes 2 requests of 512 KiB (with a huge page behind fio's buffer, 1), and
    // which it is can change within one run as fio's buffer pages change (CI: 87,410 requests
    // for 49,949 writes while other work fragmented memory). The kernel's own count
    // (diskstats) says how many; bytes are equal either way.
    for (label, op, fio, kernel) in &results {
        let job = &fio["jobs"][0][*op];
        let fio_ios = job["total_ios"].as_u64().unwrap();
        let (fio_bytes, fio_bw) = (job["io_bytes"].as_u64().unwrap(), job["bw_bytes"].as_f64().unwrap());
        let bs = fio_bytes / fio_ios;
        let kernel = if **op == "read" { kernel.0 } else { kernel.1 };
        // A request holds at least one page: at most bs / 4 KiB requests per fio I/O.
        let most = fio_ios * (bs / 4096).max(1);
        assert!((fio_ios..=most).contains(&kernel), "{label}: diskstats {kernel} vs fio's {fio_ios}");
        assert!(kernel == fio_ios || bs > 4096, "{label}: 4 KiB requests are never split");
        // Requests per fio I/O (1 when nothing was split).
        let split = kernel as f64 / fio_ios as f64;
        let phase = phases.iter().find(|p| p["label"] == **label).unwrap_or_else(|| panic!("no phase {label}"));
        let row = phase["ops"].as_array().unwrap().iter().find(|r| r["op"] == **op).expect("op row");
        let (ios, iops) = (row["requests"].as_u64().unwrap(), row["iops"].as_f64().unwrap());
        let fio_iops = job["iops"].as_f64().unwrap() * split;
        let mb = row["mb_per_s"].as_f64().unwrap() * 1e6;
        eprintln!(
            "{label}: fio {fio_ios} ios of {bs} B, {:.0} IOPS, {fio_bw:.0} B/s; analyzer {ios} requests, {iops:.0} IOPS, {mb:.0} B/s",
            job["iops"].as_f64().unwrap()
        );
        // This VM's kernel now and then does not run the BPF programs for a completion
        // (GUIDE: about 1 in 50k under load; biolatency loses the same ones): such a request
        // cannot be in any snapshot. Allow that, loudly, and nothing else. It loses whole batches
        // (seen: 30 of 57,860 1 MiB-split requests in one CI run), so the bound is 1 in 1000.
        let missed = kernel - ios.min(kernel);
        if missed > 0 {
            eprintln!("{label}: the kernel skipped the completion programs for {missed} of {kernel} requests");
        }
        assert!(ios <= kernel && missed * 1000 <= kernel, "{label}: {ios} requests vs diskstats' {kernel}");
        if missed == 0 {
            assert_eq!(row["bytes"].as_u64(), Some(fio_bytes), "{label}: bytes (fio's io_bytes vs the {op} row)");
        }
        assert!((iops - fio_iops).abs() <= 0.02 * fio_iops, "{label}: IOPS {iops} vs fio's {fio_iops}");
        assert!((mb - fio_bw).abs() <= 0.02 * fio_bw, "{label}: MB/s {mb} vs fio's {fio_bw} B/s");
    }
}

#[test]
fn kill_9_of_the_single_file_writer_leaves_no_padding_and_restart_repairs() {
    let Some(_p) = require("kill_9_of_the_single_file_writer_leaves_no_padding_and_restart_repairs", &[]) else {
        return;
    };
    let dev = LoopDev::new(16);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let args = ["--interval", "0.02", "--flush-every", "1000", "--output", out.to_str().unwrap()];
    for round in 0..3 {
        let mut agent = Agent::start(&args);
        dev.dd_write(50);
        agent.wait_snapshots(5 + round * 7);
        agent.signal(libc::SIGKILL);
        let _ = agent.child.wait();
        // Whatever the kill interrupted, the file holds no padding and its complete lines parse.
        let data = std::fs::read(&out).unwrap();
        assert!(memchr::memchr(0, &data).is_none(), "round {round}: NUL bytes after kill -9");
        let whole = memchr::memrchr(b'\n', &data).map_or(0, |i| i + 1);
        for l in data[..whole].split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            serde_json::from_slice::<Snapshot>(l).expect("a complete line parses");
        }
    }
    // A clean start repairs what a kill left (a torn last line, if any) and appends after it.
    let agent = Agent::start(&args);
    agent.stop(libc::SIGTERM);
    let snaps = read_jsonl(&out); // panics on NUL, a torn line or bad JSON
    assert!(snaps.len() >= 5 + 12 + 19, "snapshots kept across kills: {}", snaps.len());
}
