//! The agent's segment output: sealed `<node>-<UTC time>-<seq>.jsonl` files, each line one
//! snapshot, parsed with the agent's own [`Snapshot`] type (the JSONL contract).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use blkio_agent::snapshot::Snapshot;

#[derive(Debug)]
pub struct Segment {
    pub path: PathBuf,
    /// `20251002T142000Z`.
    pub utc: String,
    pub seq: u64,
    pub snapshots: Vec<Snapshot>,
}

/// Splits `<node>-<UTC time>-<run>-<seq>.jsonl` (`<run>`: 8 hex digits; older agents wrote
/// none) for the given node; `None` if it is not one.
pub fn parse_name(file_name: &str, node: &str) -> Option<(String, u64)> {
    let rest = file_name.strip_prefix(node)?.strip_prefix('-')?.strip_suffix(".jsonl")?;
    let (utc, seq) = rest.rsplit_once('-')?;
    let utc = match utc.rsplit_once('-') {
        Some((t, run)) if run.len() == 8 && run.bytes().all(|c| c.is_ascii_hexdigit()) => t,
        _ => utc,
    };
    let b = utc.as_bytes();
    let utc_ok = b.len() == 16
        && b[8] == b'T'
        && b[15] == b'Z'
        && b.iter().enumerate().all(|(i, c)| i == 8 || i == 15 || c.is_ascii_digit());
    if !utc_ok || seq.is_empty() || !seq.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some((utc.to_string(), seq.parse().ok()?))
}

/// Every sealed segment of `node` in `dir`, by sequence number. A `*.jsonl` file that is not
/// named as the agent names segments, or a line that is not a complete snapshot, is an error:
/// sealed segments are what log shippers read, and must be whole.
pub fn read_sealed(dir: &Path, node: &str) -> anyhow::Result<Vec<Segment>> {
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        if name.starts_with('.') || !name.ends_with(".jsonl") {
            continue;
        }
        let Some((utc, seq)) = parse_name(name, node) else {
            bail!("{name} is not a segment name of node {node} (<node>-<UTC time>-<seq>.jsonl)");
        };
        let text = std::fs::read_to_string(&path)?;
        if !text.is_empty() && !text.ends_with('\n') {
            bail!("{name}: last line is not terminated (a sealed segment ends with a complete line)");
        }
        let snapshots = text
            .lines()
            .enumerate()
            .map(|(i, line)| {
                serde_json::from_str::<Snapshot>(line).with_context(|| format!("{name}:{}: not a snapshot", i + 1))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        segments.push(Segment { path, utc, seq, snapshots });
    }
    segments.sort_by_key(|s| s.seq);
    Ok(segments)
}

/// Files a log shipper must not read and a clean shutdown must not leave: staging segments.
pub fn leftover_staging(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(".staging")) {
            out.push(path);
        }
    }
    Ok(out)
}

/// Completed requests of `device` over all snapshots (from `latency_histogram[].total`).
pub fn device_total(snapshots: &[&Snapshot], device: &str) -> u64 {
    snapshots.iter().flat_map(|s| &s.latency_histogram).filter(|h| h.device_name == device).map(|h| h.total).sum()
}

/// Completions of `device` the kernel counted and the agent's programs did not see (this VM's
/// kernel sometimes runs no program for one; GUIDE), over all snapshots.
pub fn device_unseen(snapshots: &[&Snapshot], device: &str) -> u64 {
    snapshots
        .iter()
        .flat_map(|s| &s.inflight)
        .filter(|i| i.device_name == device)
        .filter_map(|i| i.unseen_completions)
        .sum()
}

/// Requests of `device` attributed to pod `namespace/pod` over all snapshots.
pub fn pod_device_count(snapshots: &[&Snapshot], namespace: &str, pod: &str, device: &str) -> u64 {
    snapshots
        .iter()
        .flat_map(|s| &s.pods)
        .filter(|p| {
            p.device_name == device && p.pod.as_deref() == Some(pod) && p.namespace.as_deref() == Some(namespace)
        })
        .map(|p| p.count)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names() {
        assert_eq!(parse_name("n1-20251002T142000Z-000003.jsonl", "n1"), Some(("20251002T142000Z".into(), 3)));
        assert_eq!(parse_name("n1-20251002T142000Z-0a1b2c3d-000003.jsonl", "n1"), Some(("20251002T142000Z".into(), 3)));
        assert_eq!(parse_name("n1-20251002T142000Z-0a1b2c3-000003.jsonl", "n1"), None);
        // Node names contain dashes; the node is matched as a prefix, not split on.
        assert_eq!(
            parse_name("kind-worker-20251002T142000Z-000012.jsonl", "kind-worker"),
            Some(("20251002T142000Z".into(), 12))
        );
        assert_eq!(parse_name("kind-worker-20251002T142000Z-000012.jsonl", "kind"), None);
        assert_eq!(parse_name("n1-2025-000003.jsonl", "n1"), None);
        assert_eq!(parse_name("n1-20251002T142000Z-x.jsonl", "n1"), None);
        assert_eq!(parse_name(".n1-20251002T142000Z-000001.jsonl.staging", "n1"), None);
    }

    const LINE: &str = r#"{"timestamp": 1.0, "iso_timestamp": "1970-01-01T00:00:01.000000+00:00", "interval_s": 1.0, "node": "n1", "latency_histogram": [{"device_id": 1, "device_name": "loop3", "total": 7, "buckets": []}], "inflight": [], "pods": [{"namespace": "ns", "pod": "w", "device_id": 1, "device_name": "loop3", "op": "write", "count": 5, "bytes": 20480, "device_time": {"sum_ns": 1, "sum_us": 0.001, "buckets": []}}]}"#;

    #[test]
    fn reads_sealed_segments_and_rejects_torn_ones() {
        let dir = std::env::temp_dir().join(format!("e2e-segments-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("n1-19700101T000001Z-000002.jsonl"), format!("{LINE}\n{LINE}\n")).unwrap();
        std::fs::write(dir.join("n1-19700101T000000Z-000001.jsonl"), format!("{LINE}\n")).unwrap();
        std::fs::write(dir.join(".n1-19700101T000002Z-000003.jsonl.staging"), "{\"torn").unwrap();
        let segs = read_sealed(&dir, "n1").unwrap();
        assert_eq!(segs.iter().map(|s| s.seq).collect::<Vec<_>>(), vec![1, 2]);
        let all: Vec<&Snapshot> = segs.iter().flat_map(|s| &s.snapshots).collect();
        assert_eq!(device_total(&all, "loop3"), 21);
        assert_eq!(device_total(&all, "loop4"), 0);
        assert_eq!(pod_device_count(&all, "ns", "w", "loop3"), 15);
        assert_eq!(pod_device_count(&all, "other", "w", "loop3"), 0);
        assert_eq!(leftover_staging(&dir).unwrap().len(), 1);

        std::fs::write(dir.join("n1-19700101T000003Z-000004.jsonl"), LINE).unwrap();
        let err = read_sealed(&dir, "n1").unwrap_err().to_string();
        assert!(err.contains("not terminated"), "{err}");
        std::fs::write(dir.join("n1-19700101T000003Z-000004.jsonl"), "{}\n").unwrap();
        let err = format!("{:#}", read_sealed(&dir, "n1").unwrap_err());
        assert!(err.contains("000004.jsonl:1: not a snapshot"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
