//! Segment mode for log shippers: lines go into a staging file whose name no `*.jsonl` glob
//! matches; at the size/age limit (and on shutdown) it is sealed — msync, truncate to the data,
//! fsync, rename to a never-reused `<node>-<UTC time>-<run>-<seq>.jsonl`, fsync the directory — so a
//! file matching `*.jsonl` is always complete and never changes again. Shippers (Fluent Bit,
//! Vector, Filebeat, Alloy, OTel filelog) all handle this rename-on-seal pattern.

use std::{
    fs::File,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use super::mmap_log::{MmapLog, repair};
use crate::{
    error::{Error, Result},
    snapshot::compact_utc,
};

const STAGING_SUFFIX: &str = ".staging";

#[derive(Debug, Clone)]
pub struct SegmentConfig {
    pub dir: PathBuf,
    pub node: String,
    pub max_bytes: u64,
    pub max_age: Duration,
    pub retain_bytes: u64,
    pub retain_files: u64,
    /// The first 8 hex digits of the run id ([`crate::interval::RunIdentity`]): names stay unique
    /// across restarts even when the directory was emptied (a shipper that deletes what it read)
    /// and the agent restarts within the same second, where `seq` would start again at 0.
    pub run: String,
}

struct Open {
    /// `None` once sealing began: the staging file is finished (or being repaired by a retry),
    /// so no line may go into it any more.
    log: Option<MmapLog>,
    staging: PathBuf,
    final_path: PathBuf,
    opened: Instant,
    /// Data length once `MmapLog::finish` succeeded; `None` before (a retry must finish again).
    finished: Option<u64>,
}

pub struct SegmentWriter {
    cfg: SegmentConfig,
    node: String,
    next_seq: u64,
    current: Option<Open>,
    /// A seal that failed after its line was written (see [`SegmentWriter::append`]).
    seal_error: Option<Box<Error>>,
}

/// What start-up recovery did with leftover staging files.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovered {
    pub sealed: Vec<PathBuf>,
    pub deleted: Vec<PathBuf>,
}

/// Node names become part of file names: keep them to a safe alphabet.
fn sanitize(node: &str) -> String {
    let s: String =
        node.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '_' { c } else { '-' }).collect();
    if s.is_empty() { "node".into() } else { s }
}

/// `<node>-<time>[-<run>]-<seq>.jsonl` -> seq (names without the run are older agents').
fn seq_of(name: &str) -> Option<u64> {
    let stem = name.strip_prefix('.').unwrap_or(name);
    let stem = stem.strip_suffix(STAGING_SUFFIX).unwrap_or(stem);
    let stem = stem.strip_suffix(".jsonl.gz").or_else(|| stem.strip_suffix(".jsonl"))?;
    stem.rsplit('-').next()?.parse().ok()
}

impl SegmentWriter {
    /// Creates the directory if needed, recovers staging files left by a crash, and prepares a
    /// new segment number (a segment is always new after a start).
    pub fn open(cfg: SegmentConfig) -> Result<(SegmentWriter, Recovered)> {
        std::fs::create_dir_all(&cfg.dir).map_err(|e| Error::write(&cfg.dir, e))?;
        // Numbers of staging files count too, even those recovery deletes: never reuse one.
        let next_seq = list(&cfg.dir)?.iter().filter_map(|(name, _)| seq_of(name)).max().map_or(0, |s| s + 1);
        let recovered = recover(&cfg.dir)?;
        let node = sanitize(&cfg.node);
        let w = SegmentWriter { cfg, node, next_seq, current: None, seal_error: None };
        w.enforce_retention()?;
        Ok((w, recovered))
    }

    /// Appends one line. `Err` means the line was not written (the caller retries it); `Ok`
    /// means it is in a segment, even when the seal it triggered failed: that seal is retried
    /// before the next line goes anywhere (so a retry never writes a line twice, and no line is
    /// written into a segment that is half sealed), and its error is kept for
    /// [`SegmentWriter::take_seal_error`].
    pub fn append(&mut self, line: &[u8]) -> Result<()> {
        if self.current.as_ref().is_some_and(|c| c.log.is_none()) {
            self.seal()?;
        }
        if self.current.is_none() {
            self.start_segment()?;
        }
        let cur = self.current.as_mut().expect("just started");
        let log = cur.log.as_mut().expect("an open segment has its log");
        log.append(line)?;
        if (log.len() >= self.cfg.max_bytes || cur.opened.elapsed() >= self.cfg.max_age)
            && let Err(e) = self.seal()
        {
            self.seal_error = Some(Box::new(e));
        }
        Ok(())
    }

    /// The error of a seal that failed after its line was written, once.
    pub fn take_seal_error(&mut self) -> Option<Error> {
        self.seal_error.take().map(|e| *e)
    }

    /// Seals the current segment if it is older than the age limit (called between appends
    /// too, so an idle agent still hands data to shippers on time).
    pub fn seal_if_old(&mut self) -> Result<()> {
        if self.current.as_ref().is_some_and(|c| c.opened.elapsed() >= self.cfg.max_age) {
            self.seal()?;
        }
        Ok(())
    }

    pub fn flush(&mut self, fsync: bool) -> Result<()> {
        match self.current.as_mut().and_then(|c| c.log.as_mut()) {
            Some(log) => log.flush(fsync),
            None => Ok(()),
        }
    }

    pub fn unflushed(&self) -> u32 {
        self.current.as_ref().and_then(|c| c.log.as_ref()).map_or(0, |log| log.unflushed())
    }

    fn start_segment(&mut self) -> Result<()> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        let name = format!("{}-{}-{}-{:06}.jsonl", self.node, compact_utc(now), sanitize(&self.cfg.run), self.next_seq);
        self.next_seq += 1;
        let final_path = self.cfg.dir.join(&name);
        let staging = self.cfg.dir.join(format!(".{name}{STAGING_SUFFIX}"));
        // Never larger than needed: a full segment plus room for the line that crosses the limit.
        let (log, _) = MmapLog::open(&staging, (self.cfg.max_bytes + 64 * 1024).min(64 << 20))?;
        self.current = Some(Open { log: Some(log), staging, final_path, opened: Instant::now(), finished: None });
        Ok(())
    }

    /// Seals the current segment (if it holds anything; an empty one is removed). On failure the
    /// segment stays current and closed to new lines, and the next call resumes where this one
    /// stopped: a failed finish is redone from the staging file (reopening it cuts the padding
    /// and keeps every complete line), a failed rename is retried.
    pub fn seal(&mut self) -> Result<Option<PathBuf>> {
        let Some(cur) = self.current.as_mut() else { return Ok(None) };
        let len = match (cur.finished, cur.log.take()) {
            (Some(len), _) => len,
            (None, Some(log)) => log.finish()?,
            (None, None) => MmapLog::open(&cur.staging, 0)?.0.finish()?,
        };
        cur.finished = Some(len);
        if len == 0 {
            std::fs::remove_file(&cur.staging).map_err(|e| Error::write(&cur.staging, e))?;
            self.current = None;
            return Ok(None);
        }
        publish(&cur.staging, &cur.final_path)?;
        let sealed = self.current.take().expect("current segment").final_path;
        // The segment is sealed whatever retention does; its error is reported, not retried.
        self.enforce_retention()?;
        Ok(Some(sealed))
    }

    /// Deletes the oldest sealed segments past the file-count or byte limits (the newest one is
    /// always kept).
    fn enforce_retention(&self) -> Result<()> {
        let mut sealed: Vec<(String, u64)> =
            list(&self.cfg.dir)?.into_iter().filter(|(n, _)| !n.starts_with('.') && seq_of(n).is_some()).collect();
        sealed.sort_by_key(|(n, _)| seq_of(n));
        let mut total: u64 = sealed.iter().map(|(_, len)| len).sum();
        let mut count = sealed.len() as u64;
        for (name, len) in &sealed {
            if count <= 1 || (count <= self.cfg.retain_files && total <= self.cfg.retain_bytes) {
                break;
            }
            let path = self.cfg.dir.join(name);
            std::fs::remove_file(&path).map_err(|e| Error::write(&path, e))?;
            tracing::debug!(file = %path.display(), "retention: deleted");
            total -= len;
            count -= 1;
        }
        Ok(())
    }
}

/// truncate+fsync were done by `MmapLog::finish`; rename, then fsync the directory so the new
/// name survives a power loss.
fn publish(staging: &Path, final_path: &Path) -> Result<()> {
    std::fs::rename(staging, final_path).map_err(|e| Error::write(final_path, e))?;
    let dir = final_path.parent().unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::write(dir, e))
}

/// `(file name, length)` of regular files in `dir`.
fn list(dir: &Path) -> Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::read(dir, e))? {
        let entry = entry.map_err(|e| Error::read(dir, e))?;
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_file() {
            out.push((entry.file_name().to_string_lossy().into_owned(), meta.len()));
        }
    }
    Ok(out)
}

/// Trims every leftover staging file to its last complete line, then seals it under the name
/// it was meant to have, or deletes it when nothing complete is left.
pub fn recover(dir: &Path) -> Result<Recovered> {
    let mut out = Recovered::default();
    let mut leftovers: Vec<String> =
        list(dir)?.into_iter().map(|(n, _)| n).filter(|n| n.starts_with('.') && n.ends_with(STAGING_SUFFIX)).collect();
    leftovers.sort();
    for name in leftovers {
        let staging = dir.join(&name);
        let rep = repair(&staging)?;
        if rep.kept == 0 {
            std::fs::remove_file(&staging).map_err(|e| Error::write(&staging, e))?;
            out.deleted.push(staging);
            continue;
        }
        let final_name = name.trim_start_matches('.').trim_end_matches(STAGING_SUFFIX);
        let final_path = dir.join(final_name);
        publish(&staging, &final_path)?;
        tracing::info!(file = %final_path.display(), dropped_bytes = rep.dropped, "recovered a segment left by a crash");
        out.sealed.push(final_path);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &Path) -> SegmentConfig {
        SegmentConfig {
            dir: dir.to_path_buf(),
            node: "node/a b".into(),
            max_bytes: 4096,
            max_age: Duration::from_secs(3600),
            retain_bytes: u64::MAX,
            retain_files: 1000,
            run: "0a1b2c3d".into(),
        }
    }

    /// Two runs in the same second over a directory a shipper emptied in between: `seq` starts
    /// at 0 both times, the run keeps the names apart; the seq is still parsed from either form.
    #[test]
    fn names_stay_unique_across_restarts_into_an_emptied_directory() {
        let dir = tempfile::tempdir().unwrap();
        let mut names = Vec::new();
        for run in ["0a1b2c3d", "99ff0011"] {
            let mut c = cfg(dir.path());
            c.run = run.into();
            let (mut w, _) = SegmentWriter::open(c).unwrap();
            w.append(b"{\"a\":1}\n").unwrap();
            let sealed = w.seal().unwrap().unwrap();
            let name = sealed.file_name().unwrap().to_string_lossy().into_owned();
            assert!(name.starts_with("node-a-b-") && name.ends_with(&format!("-{run}-000000.jsonl")), "{name}");
            names.push(name);
            std::fs::remove_file(&sealed).unwrap();
        }
        assert_ne!(names[0], names[1]);
        assert_eq!(seq_of(&names[1]), Some(0));
        assert_eq!(seq_of("n-20250101T000000Z-000004.jsonl"), Some(4));
    }

    fn jsonl_files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            list(dir).unwrap().into_iter().map(|(n, _)| n).filter(|n| n.ends_with(".jsonl")).collect();
        v.sort_by_key(|n| seq_of(n));
        v
    }

    #[test]
    fn seals_at_the_size_limit_with_unique_names() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _) = SegmentWriter::open(cfg(dir.path())).unwrap();
        let line = format!("{{\"x\":\"{}\"}}\n", "a".repeat(1000));
        for _ in 0..10 {
            w.append(line.as_bytes()).unwrap();
        }
        w.seal().unwrap();
        let files = jsonl_files(dir.path());
        // 1009-byte lines: the 5th crosses 4096 bytes and seals, so 5 + 5.
        assert_eq!(files.len(), 2, "{files:?}");
        assert!(files[0].starts_with("node-a-b-") && files[0].ends_with("-000000.jsonl"), "{}", files[0]);
        let mut lines = 0;
        for f in &files {
            let text = std::fs::read(dir.path().join(f)).unwrap();
            assert!(!text.contains(&0), "NUL in {f}");
            assert!(text.ends_with(b"\n"));
            assert!(text.len() < 4096 + line.len(), "{f} is {} bytes", text.len());
            lines += text.iter().filter(|&&b| b == b'\n').count();
        }
        assert_eq!(lines, 10);
        assert!(list(dir.path()).unwrap().iter().all(|(n, _)| !n.ends_with(STAGING_SUFFIX)));
    }

    #[test]
    fn recovers_staging_files_and_never_reuses_a_number() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("n-20250101T000000Z-000004.jsonl"), "{\"a\":1}\n").unwrap();
        let mut torn = b"{\"b\":2}\n{\"c\":".to_vec();
        torn.extend([0u8; 100]);
        std::fs::write(d.join(".n-20250101T000100Z-000005.jsonl.staging"), &torn).unwrap();
        std::fs::write(d.join(".n-20250101T000200Z-000006.jsonl.staging"), [0u8; 100]).unwrap();
        let (mut w, rec) = SegmentWriter::open(cfg(d)).unwrap();
        assert_eq!(rec.sealed, vec![d.join("n-20250101T000100Z-000005.jsonl")]);
        assert_eq!(rec.deleted.len(), 1);
        assert_eq!(std::fs::read_to_string(&rec.sealed[0]).unwrap(), "{\"b\":2}\n");
        w.append(b"{\"d\":4}\n").unwrap();
        let sealed = w.seal().unwrap().unwrap();
        assert!(sealed.to_string_lossy().ends_with("-000007.jsonl"), "{}", sealed.display());
    }

    #[test]
    fn retention_deletes_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(dir.path());
        c.retain_files = 2;
        let (mut w, _) = SegmentWriter::open(c).unwrap();
        for i in 0..4 {
            w.append(format!("{{\"i\":{i}}}\n").as_bytes()).unwrap();
            w.seal().unwrap();
        }
        let files = jsonl_files(dir.path());
        assert_eq!(files.len(), 2);
        assert!(files[0].ends_with("-000002.jsonl") && files[1].ends_with("-000003.jsonl"), "{files:?}");
    }

    /// Injected failure: a non-empty directory where the segment is to be renamed to.
    #[test]
    fn a_failed_seal_neither_duplicates_nor_loses_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _) = SegmentWriter::open(cfg(dir.path())).unwrap();
        let line = |i: usize| format!("{{\"i\":{i},\"x\":\"{}\"}}\n", "a".repeat(1000));
        for i in 0..4 {
            w.append(line(i).as_bytes()).unwrap();
        }
        let target = w.current.as_ref().unwrap().final_path.clone();
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("blocker"), "x").unwrap();
        // The 5th line crosses the size limit: it is written, the seal fails and is kept.
        w.append(line(4).as_bytes()).unwrap();
        assert!(w.take_seal_error().is_some(), "the failed seal is reported");
        // The next line waits for the seal, which still fails: that line is not written.
        assert!(w.append(line(5).as_bytes()).is_err());
        std::fs::remove_dir_all(&target).unwrap();
        // The caller's retry: the seal succeeds first, then the line goes into a new segment.
        w.append(line(5).as_bytes()).unwrap();
        assert!(w.take_seal_error().is_none());
        w.seal().unwrap();
        let files = jsonl_files(dir.path());
        assert_eq!(files.len(), 2, "{files:?}");
        let mut seen = Vec::new();
        for f in &files {
            let text = std::fs::read_to_string(dir.path().join(f)).unwrap();
            for l in text.lines() {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                seen.push(v["i"].as_u64().unwrap());
            }
        }
        assert_eq!(seen, vec![0, 1, 2, 3, 4, 5], "every line once, in order");
    }

    #[test]
    fn empty_segment_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _) = SegmentWriter::open(cfg(dir.path())).unwrap();
        assert_eq!(w.seal().unwrap(), None);
        assert!(list(dir.path()).unwrap().is_empty());
    }
}
