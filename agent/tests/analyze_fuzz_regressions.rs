//! Replays the fuzz targets' kept inputs (agent/fuzz/regressions/<target>/, and libFuzzer's
//! working corpus when present) through the same entry point the targets use, on stable and
//! in every `cargo test`: an input that once crashed stays fixed.

use std::path::{Path, PathBuf};

use blkio_agent::analyze::analyze_bytes;

fn files(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut out = Vec::new();
    for dir in ["regressions", "corpus"] {
        let Ok(rd) = std::fs::read_dir(root.join(dir).join(target)) else { continue };
        out.extend(rd.map(|e| e.unwrap().path()).filter(|p| p.is_file()));
    }
    out.sort();
    out
}

fn non_blank_lines(data: &[u8]) -> u64 {
    data.split(|b| *b == b'\n').filter(|l| !l.trim_ascii().is_empty()).count() as u64
}

#[test]
fn analyze_lines_regressions_replay() {
    let inputs = files("analyze_lines");
    assert!(inputs.len() >= 4, "the committed regression inputs are missing: {inputs:?}");
    for p in inputs {
        let data = std::fs::read(&p).unwrap();
        let s = analyze_bytes(&data, b"");
        assert_eq!(s.snapshots + s.skipped, non_blank_lines(&data), "{}", p.display());
    }
}

#[test]
fn events_regressions_replay() {
    let run =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/analyze_lines/valid-run.jsonl"))
            .unwrap();
    let base = analyze_bytes(&run, b"");
    assert_eq!((base.skipped, base.snapshots), (0, non_blank_lines(&run)), "the fixed run is valid");
    let inputs = files("events");
    assert!(!inputs.is_empty(), "the committed regression inputs are missing");
    for p in inputs {
        let data = std::fs::read(&p).unwrap();
        let s = analyze_bytes(&run, &data);
        assert_eq!(s.events as u64 + s.skipped, non_blank_lines(&data), "{}", p.display());
        assert_eq!(s.requests, base.requests, "{}: events never change the totals", p.display());
    }
}
