//! The analyzer's JSONL line parser and everything computed from what it accepts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let s = blkio_agent::analyze::analyze_bytes(data, b"");
    // Every non-blank line is either a snapshot or a counted bad line.
    let lines = data.split(|b| *b == b'\n').filter(|l| !l.trim_ascii().is_empty()).count() as u64;
    assert_eq!(s.snapshots + s.skipped, lines);
});
