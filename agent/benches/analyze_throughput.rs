//! Analyzer throughput on a generated day of 1 s snapshots for 16 devices (the full current
//! schema, as the agent writes it). Prints MB/s of JSONL for the whole `analyze` run: reading,
//! parsing, statistics, 128 charts (8 per device), summary.json and report.html.
//!
//! cargo bench -p blkio-agent --no-default-features --bench analyze_throughput
//! Environment: ANALYZE_BENCH_SECONDS (default 86400), ANALYZE_BENCH_DEVICES (default 16).

#[path = "../tests/analyze_support/mod.rs"]
mod analyze_support;

use std::time::Instant;

use blkio_agent::cli::{Cli, Command};
use clap::Parser;

fn env_or(key: &str, default: usize) -> usize {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`. Without it the target runs as a test
    // (`cargo test --all-targets`, unoptimized): then a 2-minute, 4-device input checks that
    // the bench works, and no throughput is claimed.
    let measuring = std::env::args().any(|a| a == "--bench");
    let seconds = env_or("ANALYZE_BENCH_SECONDS", if measuring { 86_400 } else { 120 });
    let devices = env_or("ANALYZE_BENCH_DEVICES", if measuring { 16 } else { 4 });
    let dir = tempfile::tempdir().expect("temp dir");
    let start = Instant::now();
    let (input, bytes) = analyze_support::generate_day(dir.path(), devices, seconds);
    eprintln!(
        "generated {seconds} snapshots x {devices} devices: {:.1} MB ({:.0} bytes/line) in {:.1} s",
        bytes as f64 / 1e6,
        bytes as f64 / seconds as f64,
        start.elapsed().as_secs_f64()
    );

    let out = dir.path().join("out");
    let cli = Cli::parse_from([
        "blkio-agent",
        "analyze",
        "--input",
        input.to_str().unwrap(),
        "--output-dir",
        out.to_str().unwrap(),
    ]);
    // Refutable only with the `ebpf` feature (which adds `run`).
    #[allow(irrefutable_let_patterns)]
    let Command::Analyze(args) = cli.command else { unreachable!("analyze was parsed") };
    let mut best = f64::INFINITY;
    for run in 1..=(if measuring { 3 } else { 1 }) {
        let t = Instant::now();
        let a = blkio_agent::analyze::analyze(&args).expect("analyze");
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(a.snapshots, seconds as u64);
        assert_eq!(a.devices.len(), devices);
        assert_eq!(a.skipped_count, 0);
        if measuring {
            println!("run {run}: {:.2} s, {:.1} MB/s", secs, bytes as f64 / 1e6 / secs);
        }
        best = best.min(secs);
    }
    if !measuring {
        println!("analyze_throughput: test mode (no --bench), no figure; run `cargo bench` to measure");
        return;
    }
    println!(
        "analyze_throughput: {:.1} MB/s (best of 3; {:.1} MB, {} snapshots x {} devices, {} threads, peak RSS {})",
        bytes as f64 / 1e6 / best,
        bytes as f64 / 1e6,
        seconds,
        devices,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        peak_rss().unwrap_or_else(|| "unknown".into())
    );
}

/// High-water mark of resident memory (Linux), to keep the documented memory use honest.
fn peak_rss() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 =
        status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(format!("{} MB", kb / 1024))
}
