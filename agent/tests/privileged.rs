//! Privileged end-to-end tests of the agent core on real loop devices and real tracepoints.
//! Run as root (CI does); see `privileged_support` for the skip/fail policy.

#![cfg(feature = "ebpf")] // the node agent; absent from the analyzer-only build

mod privileged_support;

use std::time::Duration;

use blkio_agent::{btf::Btf, loader::BtfLayout, snapshot::Snapshot};
use privileged_support::*;

const WRITES: u32 = 3000;
const READS: u32 = 2000;

/// `/proc/diskstats` fields 10 and 11 (io_ticks, time_in_queue) of `name`, ms.
fn disk_times(name: &str) -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/diskstats").unwrap();
    let s = blkio_agent::devices::parse_diskstats(&text).into_iter().find(|d| d.name == name).expect("in diskstats");
    (s.io_ticks_ms, s.time_in_queue_ms)
}

/// Runs the known workload under an agent started with `attach` and checks exactness against
/// the kernel's own counters.
fn exact_counts(attach: &str) {
    let Some(_p) = privileged(&format!("exact_counts({attach})")) else { return };
    let dev = LoopDev::new(64);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let times_at_start = disk_times(&dev.name);
    let mut agent = Agent::start_with_env(
        &["--attach", attach, "--interval", "0.25", "--flush-every", "1", "--output", out.to_str().unwrap()],
        &[("BLKIO_AGENT_LOG", "info,blkio_agent::collector=debug")],
    );
    let slot_given = format!("device given a dense slot device={}", dev.name);
    assert!(!agent.stderr().contains(&slot_given), "no I/O on the new device yet, so no slot");
    let before = dev.diskstats();
    let times_before = disk_times(&dev.name);
    // The writes start on the fallback maps (a new device has no dense slot); after a snapshot the
    // device gets one and the reads go to the dense maps: the totals must not care.
    dev.dd_write(WRITES);
    agent.wait_for_log(&slot_given, Duration::from_secs(10));
    dev.dd_read(READS);
    let after = dev.diskstats();
    let times_after = disk_times(&dev.name);
    agent.wait_snapshots(2);
    let log = agent.stop(libc::SIGINT);
    let times_at_end = disk_times(&dev.name);
    assert!(log.contains(&format!("attach={attach}")) || log.contains(&format!("attach=\"{attach}\"")), "{log}");

    let snaps = read_jsonl(&out);
    let counts = op_counts(&snaps, &dev.name);
    let (reads, writes) = (after.0 - before.0, after.1 - before.1);
    assert_eq!((reads, writes), (u64::from(READS), u64::from(WRITES)), "the kernel's own counts");
    // Exact, with the completions the kernel did not show the programs counted as unseen (the
    // reconciliation is per device; per op the agent never counts more than the kernel).
    let (agent_reads, agent_writes) =
        (counts.get("read").copied().unwrap_or(0), counts.get("write").copied().unwrap_or(0));
    assert!(agent_reads <= reads && agent_writes <= writes, "{counts:?} vs diskstats {reads}/{writes}");
    let unseen = unseen(&snaps, &dev.name);
    assert_reconciled(&format!("{attach}: reads + writes"), agent_reads + agent_writes, unseen, reads + writes);
    let last_total = snaps.last().unwrap().losses_total.as_ref().unwrap().get("unseen_completions");
    assert!(last_total >= unseen, "losses_total.unseen_completions {last_total} covers the device's {unseen}");

    // The seed-compatible histogram agrees with the per-op detail, bucket by bucket.
    let mut total = 0;
    for s in &snaps {
        for h in s.latency_histogram.iter().filter(|h| h.device_name == dev.name) {
            assert_eq!(h.buckets.iter().map(|b| b.count).sum::<u64>(), h.total);
            let op_total: u64 = s.ops.iter().filter(|o| o.device_name == dev.name).map(|o| o.count).sum();
            assert_eq!(op_total, h.total);
            assert!(h.sum_ns.unwrap() > 0);
            total += h.total;
        }
        for o in s.ops.iter().filter(|o| o.device_name == dev.name) {
            assert_eq!(o.bytes, o.count * 4096, "4 KiB requests");
            assert!(o.size.buckets.iter().all(|b| b.slot == 12), "size slot of 4096 is 12: {:?}", o.size.buckets);
            assert_eq!(o.queue_time.buckets.iter().map(|b| b.count).sum::<u64>(), o.count);
        }
    }
    assert_eq!(total + unseen, reads + writes);

    // Depth went back to 0 once the workload finished, and it was seen during the workload.
    let last = snaps.last().unwrap();
    let depth = last.inflight.iter().find(|i| i.device_name == dev.name).expect("inflight entry");
    assert_eq!(depth.count, 0, "in flight at the end: {depth:?}");
    let peak =
        snaps.iter().flat_map(|s| &s.inflight).filter(|i| i.device_name == dev.name).filter_map(|i| i.peak).max();
    assert!(peak >= Some(1), "peak depth seen: {peak:?}");
    let losses = last.losses_total.clone().unwrap();
    let l = |k: &str| losses.get(k);
    assert_eq!(l("start_insert_failed") + l("hist_update_failed") + l("device_map_full"), 0, "{losses:?}");
    assert_eq!(last.agent.as_ref().unwrap().attach, attach);

    // diskstats busy and weighted time: the JSONL's deltas add up to the kernel's counters
    // between the agent's first and last readings, which lie between these four readings.
    let sum = |f: fn(&blkio_agent::snapshot::DiskTimeStats) -> u64| -> u64 {
        snaps.iter().flat_map(|s| &s.disk_time).filter(|d| d.device_name == dev.name).map(f).sum()
    };
    let (io, weighted) = (sum(|d| d.io_time_ms), sum(|d| d.weighted_io_time_ms));
    assert!(times_after.0 > times_before.0, "the workload kept the device busy: {times_before:?} -> {times_after:?}");
    assert!((times_after.0 - times_before.0..=times_at_end.0 - times_at_start.0).contains(&io), "io_time {io} ms");
    assert!(
        (times_after.1 - times_before.1..=times_at_end.1 - times_at_start.1).contains(&weighted),
        "weighted_io_time {weighted} ms"
    );
    for d in
        snaps.iter().flat_map(|s| s.disk_time.iter().map(move |d| (s, d))).filter(|(_, d)| d.device_name == dev.name)
    {
        let (s, d) = d;
        assert_eq!(d.utilization, d.io_time_ms as f64 / (s.interval_s * 1000.0));
    }
    // One run: the same run id on every line, seq counting up from 0.
    let run = snaps[0].run_id.clone().expect("run_id");
    assert!(snaps.iter().all(|s| s.run_id.as_ref() == Some(&run) && s.run_started == snaps[0].run_started));
    assert!(snaps.iter().enumerate().all(|(i, s)| s.seq == Some(i as u64)), "seq 0, 1, 2, ...");
}

#[test]
fn btf_mode_counts_a_known_workload_exactly() {
    exact_counts("btf");
}

#[test]
fn tracepoint_mode_counts_a_known_workload_exactly() {
    exact_counts("tracepoint");
}

#[test]
fn running_kernel_btf_gives_a_layout() {
    let Some(_p) = privileged("running_kernel_btf_gives_a_layout") else { return };
    let btf = Btf::from_file(std::path::Path::new("/sys/kernel/btf/vmlinux")).expect("kernel BTF");
    let version =
        blkio_agent::loader::caps::running_release().as_deref().and_then(blkio_agent::loader::caps::kernel_version);
    let l = BtfLayout::from_btf(&btf, version).expect("layout");
    // Distinct, plausible offsets inside struct request; REQ_OP_* as in include/linux/blk_types.h.
    let offs = [l.rq_q, l.rq_cmd_flags, l.rq_data_len];
    assert!(offs.iter().all(|&o| o < 512), "{l:?}");
    assert_ne!(l.rq_cmd_flags, l.rq_data_len);
    assert_eq!((l.req_op_read, l.req_op_write, l.req_op_flush, l.req_op_discard), (0, 1, 2, 3));
    assert_eq!(l.req_op_mask, 0xff);
    assert!(l.legacy_q_arg.is_empty(), "kernel 6.x passes only rq: {:?}", l.legacy_q_arg);
}

#[test]
fn sigterm_truncates_the_single_file() {
    let Some(_p) = privileged("sigterm_truncates_the_single_file") else { return };
    let dev = LoopDev::new(16);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let mut agent = Agent::start(&["--interval", "0.1", "--output", out.to_str().unwrap()]);
    dev.dd_write(200);
    agent.wait_snapshots(3);
    agent.stop(libc::SIGTERM);
    let snaps = read_jsonl(&out);
    assert!(snaps.len() >= 4, "{} snapshots", snaps.len());
    // seq is consecutive from 0: no snapshot lost or duplicated.
    for (i, s) in snaps.iter().enumerate() {
        assert_eq!(s.seq, Some(i as u64));
    }
    assert_eq!(op_counts(&snaps, &dev.name).get("write").copied(), Some(200));
}

#[test]
fn sigint_seals_segments() {
    let Some(_p) = privileged("sigint_seals_segments") else { return };
    let dev = LoopDev::new(16);
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(&[
        "--interval",
        "0.05",
        "--output-dir",
        dir.path().to_str().unwrap(),
        "--segment-max-bytes",
        "4096",
        "--node-name",
        "test-node",
    ]);
    dev.dd_write(300);
    agent.wait_snapshots(10);
    agent.stop(libc::SIGINT);
    let files = sealed_segments(dir.path());
    assert!(files.len() >= 2, "several segments sealed: {files:?}");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().ends_with(".staging"))
        .collect();
    assert!(leftovers.is_empty(), "staging files left: {leftovers:?}");
    let snaps: Vec<Snapshot> = files.iter().flat_map(|f| read_jsonl(f)).collect();
    assert!(files.iter().all(|f| f.file_name().unwrap().to_string_lossy().starts_with("test-node-")));
    assert!(snaps.iter().all(|s| s.node.as_deref() == Some("test-node")));
    for (i, s) in snaps.iter().enumerate() {
        assert_eq!(s.seq, Some(i as u64), "segments in order, nothing lost");
    }
    assert_eq!(op_counts(&snaps, &dev.name).get("write").copied(), Some(300));
}

#[test]
fn kill_9_during_segment_writing_leaves_only_complete_jsonl() {
    let Some(_p) = privileged("kill_9_during_segment_writing_leaves_only_complete_jsonl") else { return };
    let dev = LoopDev::new(16);
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--interval",
        "0.02",
        "--flush-every",
        "1000",
        "--output-dir",
        dir.path().to_str().unwrap(),
        "--segment-max-bytes",
        "8192",
    ];
    for round in 0..3u64 {
        let mut agent = Agent::start(&args);
        dev.dd_write(50);
        agent.wait_snapshots(5 + round as usize * 7);
        agent.signal(libc::SIGKILL);
        let _ = agent.child.wait();
        for f in sealed_segments(dir.path()) {
            read_jsonl(&f); // panics on NUL, torn line or bad JSON
        }
    }
    // A clean start recovers what the kills left, then a clean stop seals the rest.
    let agent = Agent::start(&args);
    agent.stop(libc::SIGTERM);
    let names: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| n.ends_with(".jsonl")), "only sealed segments remain: {names:?}");
    let total: usize = sealed_segments(dir.path()).iter().map(|f| read_jsonl(f).len()).sum();
    assert!(total >= 15, "snapshots kept across kills: {total}");
}

#[test]
fn full_disk_is_survived_and_writing_resumes() {
    let Some(_p) = privileged("full_disk_is_survived_and_writing_resumes") else { return };
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(st.success(), "mount tmpfs");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    // Leave room for the first 64 KiB allocation only.
    let filler = mnt.join("filler");
    std::fs::write(&filler, vec![1u8; 150 * 1024]).unwrap();
    let out = mnt.join("out.jsonl");
    let dev = LoopDev::new(16);
    let mut agent = Agent::start(&["--interval", "0.01", "--flush-every", "1", "--output", out.to_str().unwrap()]);
    let start = std::time::Instant::now();
    while !agent.stderr().contains("JSONL write failed") {
        dev.dd_write(20);
        assert!(start.elapsed() < Duration::from_secs(60), "disk never filled:\n{}", agent.stderr());
    }
    std::fs::remove_file(&filler).unwrap();
    agent.wait_for_log("JSONL writes resumed", Duration::from_secs(30));
    agent.wait_snapshots(3);
    agent.stop(libc::SIGTERM);
    let snaps = read_jsonl(&out);
    let failures: u64 = snaps.iter().filter_map(|s| s.losses.as_ref()).map(|l| l.get("write_failures")).sum();
    assert!(failures > 0, "write failures are counted in snapshots");
    for (i, s) in snaps.iter().enumerate() {
        assert_eq!(s.seq, Some(i as u64), "queued snapshots were written in order once space returned");
    }
}
