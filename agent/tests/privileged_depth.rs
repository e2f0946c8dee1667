//! Depth and counts under sustained load: fio randrw at QD4 then QD32 on a loop device. Every
//! snapshot's depth and peak stay within the job's iodepth (the kernel now and then completes a
//! request without running the programs; the agent must take those off the gauge at once, not
//! at the next idle), the peak reaches at least half of it, the depth is 0 once idle, and the
//! agent's total plus `unseen_completions` is the kernel's own count exactly.

#![cfg(feature = "ebpf")] // the node agent; absent from the analyzer-only build

mod privileged_support;

use std::{
    process::Command,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use privileged_support::*;

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// One fio job: 4 KiB random reads and writes at `iodepth` for `secs`.
fn fio(dev: &str, iodepth: u32, secs: u32) {
    let out = Command::new("fio")
        .args(["--name=depth", &format!("--filename={dev}"), "--rw=randrw", "--bs=4k", "--direct=1"])
        .args(["--ioengine=libaio", &format!("--iodepth={iodepth}"), "--time_based", &format!("--runtime={secs}")])
        .args(["--output-format=terse"])
        .output()
        .expect("run fio");
    assert!(out.status.success(), "fio QD{iodepth}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn depth_stays_within_iodepth_under_sustained_fio_load() {
    let test = "depth_stays_within_iodepth_under_sustained_fio_load";
    let has_fio = Command::new("sh").args(["-c", "command -v fio"]).output().is_ok_and(|o| o.status.success());
    let missing = if has_fio { vec![] } else { vec!["needs fio (`cargo xtask setup` installs it)".to_string()] };
    if !blkio_agent::prereq::require(test, &missing) {
        return;
    }
    let Some(_p) = privileged(test) else { return };
    let dev = LoopDev::new(256);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let mut agent = Agent::start(&["--interval", "0.5", "--flush-every", "1", "--output", out.to_str().unwrap()]);
    agent.wait_snapshots(1);
    let before = dev.diskstats();
    let path = dev.dev.to_str().unwrap();
    // (iodepth, start, end) of each job, in wall time.
    let mut jobs = Vec::new();
    for qd in [4u32, 32] {
        let start = now();
        fio(path, qd, 12);
        jobs.push((qd, start, now()));
        std::thread::sleep(Duration::from_millis(1200)); // idle: the depth goes back to 0
    }
    let after = dev.diskstats();
    agent.wait_snapshots(2);
    agent.stop(libc::SIGINT);

    let snaps = read_jsonl(&out);
    let mut peak_seen = [0u64; 2];
    for s in &snaps {
        let Some(d) = s.inflight.iter().find(|i| i.device_name == dev.name) else { continue };
        // The jobs this snapshot's interval overlaps (wall-clock windows widened by 0.3 s for
        // the skew between the agent's and this process's clock reads).
        let (from, to) = (s.timestamp - s.interval_s, s.timestamp);
        let overlapping: Vec<usize> =
            (0..jobs.len()).filter(|&j| from < jobs[j].2 + 0.3 && to > jobs[j].1 - 0.3).collect();
        let limit = overlapping.iter().map(|&j| u64::from(jobs[j].0)).max().unwrap_or(0);
        let peak = d.peak.expect("peak");
        eprintln!(
            "t={:+.1}s count={} peak={peak} limit={limit} unseen={:?}",
            to - jobs[0].1,
            d.count,
            d.unseen_completions
        );
        // Every snapshot, busy or idle: the gauge never drifts above the real depth.
        assert!(d.count <= limit && peak <= limit, "seq {:?}: count {} peak {peak} above {limit}", s.seq, d.count);
        if let [j] = overlapping[..] {
            peak_seen[j] = peak_seen[j].max(peak);
        }
    }
    for (j, &(qd, ..)) in jobs.iter().enumerate() {
        assert!(peak_seen[j] * 2 >= u64::from(qd), "QD{qd}: the peak reached only {}", peak_seen[j]);
    }
    let last = snaps.last().unwrap().inflight.iter().find(|i| i.device_name == dev.name).expect("gauge").clone();
    assert_eq!(last.count, 0, "idle at the end: {last:?}");

    let counts = op_counts(&snaps, &dev.name);
    let agent_total: u64 = counts.values().sum();
    let kernel = (after.0 - before.0) + (after.1 - before.1);
    assert_reconciled("fio QD4 + QD32", agent_total, unseen(&snaps, &dev.name), kernel);
}
