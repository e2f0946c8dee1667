//! The `--events` parser (epoch and ISO 8601 times), and phases built from what it accepts.
#![no_main]

/// A fixed, valid run of snapshots, so the events become phase boundaries over real data.
const RUN: &[u8] = include_bytes!("../regressions/analyze_lines/valid-run.jsonl");

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let s = blkio_agent::analyze::analyze_bytes(RUN, data);
    let lines = data.split(|b| *b == b'\n').filter(|l| !l.trim_ascii().is_empty()).count() as u64;
    assert_eq!(s.events as u64 + s.skipped, lines);
});
