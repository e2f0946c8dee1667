//! Finding input files (files, globs, segment directories) and reading them as chunks of whole
//! lines, gzip or not, with a progress line on a terminal.

use std::fs::File;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Target size of one chunk handed to a parser thread: big enough that channel overhead is
/// nothing, small enough that both cores get work on a single file.
const CHUNK_BYTES: usize = 1 << 20;

/// Inputs at least this large get a progress line (when stderr is a terminal).
const PROGRESS_MIN_BYTES: u64 = 64 << 20;

/// A run of whole lines from one file; `first_line` is the 1-based number of its first line.
pub struct Chunk {
    pub file: u32,
    pub first_line: u64,
    pub data: Vec<u8>,
}

/// Expands `--input` values into a sorted, de-duplicated file list. Directories contribute every
/// sealed `*.jsonl` / `*.jsonl.gz` below them (the agent writes its open segment under a name no
/// `*.jsonl` glob matches, so it is left out by construction); hidden entries are skipped.
pub fn resolve_inputs(specs: &[String]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for spec in specs {
        let path = Path::new(spec);
        if path.is_dir() {
            let before = out.len();
            collect_dir(path, &mut out)?;
            if out.len() == before {
                return Err(Error::Other(format!(
                    "no *.jsonl or *.jsonl.gz files in directory {spec}; pass the agent's --output-dir or the files themselves"
                )));
            }
        } else if path.exists() {
            out.push(path.to_path_buf());
        } else if spec.contains(['*', '?', '[']) {
            // Like a shell, `*` does not match hidden files.
            let opts = glob::MatchOptions { require_literal_leading_dot: true, ..Default::default() };
            let matches = glob::glob_with(spec, opts).map_err(|e| Error::Config {
                what: "--input glob",
                value: spec.clone(),
                reason: e.to_string(),
            })?;
            let before = out.len();
            for m in matches {
                let m = m.map_err(|e| Error::read(e.path().to_path_buf(), e.into()))?;
                if m.is_dir() { collect_dir(&m, &mut out)? } else { out.push(m) }
            }
            if out.len() == before {
                return Err(Error::Other(format!(
                    "no file matches --input `{spec}`; check the pattern (quote it so the shell does not expand it)"
                )));
            }
        } else {
            return Err(Error::Other(format!(
                "--input `{spec}` does not exist; pass JSONL files, globs or directories"
            )));
        }
    }
    // The same file named twice (a directory and a glob into it) must not count twice.
    let mut seen = std::collections::HashSet::new();
    out.retain(|p| seen.insert(std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())));
    Ok(out)
}

fn collect_dir(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::read(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| !p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')))
        .collect();
    // Segment names are `<node>-<UTC time>-<run>-<seq>.jsonl`, so name order is time order per node.
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect_dir(&p, out)?;
        } else if p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(".jsonl") || n.ends_with(".jsonl.gz"))
        {
            out.push(p);
        }
    }
    Ok(())
}

/// Counts raw (on-disk) bytes for the progress line, so gzip inputs progress by file size.
struct Counting<'a, R> {
    inner: R,
    progress: &'a Progress,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.add(n as u64);
        Ok(n)
    }
}

/// Longest line kept. A snapshot is tens of KB (a few MB with thousands of devices and pods);
/// anything longer is not a snapshot (a binary file, a NUL-filled preallocated tail), and
/// buffering it whole would only cost memory.
const MAX_LINE: usize = 64 << 20;

/// Reads `path` and hands its lines to `emit` in chunks that end on a line boundary. Gzip is
/// detected by its magic bytes, not by the name. Returns `(line, reason)` for damage found
/// while reading, for the bad-line report: a line over [`MAX_LINE`] (skipped), and a gzip
/// stream that is corrupt or cut short (e.g. copied while being written), which is not fatal:
/// every whole line decoded before the damage is used.
pub fn read_chunks(path: &Path, file: u32, progress: &Progress, emit: impl FnMut(Chunk)) -> Result<Vec<(u64, String)>> {
    read_chunks_max(path, file, progress, MAX_LINE, emit)
}

fn read_chunks_max(
    path: &Path,
    file: u32,
    progress: &Progress,
    max_line: usize,
    mut emit: impl FnMut(Chunk),
) -> Result<Vec<(u64, String)>> {
    let mut f = File::open(path).map_err(|e| Error::read(path, e))?;
    let mut magic = [0u8; 2];
    let got = read_full(&mut f, &mut magic).map_err(|e| Error::read(path, e))?;
    progress.add(got as u64);
    let head = std::io::Cursor::new(magic[..got].to_vec());
    let raw = Counting { inner: head.chain(f), progress };
    let gz = got == 2 && magic == [0x1f, 0x8b];
    let mut reader: Box<dyn Read + '_> = if gz {
        Box::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::with_capacity(1 << 16, raw)))
    } else {
        Box::new(raw)
    };

    let mut problems = Vec::new();
    let mut line = 1u64;
    // `buf[..filled]` holds data not yet emitted; it starts with a whole line.
    let mut buf = vec![0u8; CHUNK_BYTES * 2];
    let mut filled = 0usize;
    // While dropping an over-long line: whether all of it so far was NUL bytes.
    let mut skipping: Option<bool> = None;
    let long = |nul: bool| {
        if nul {
            "NUL bytes (unwritten space of a preallocated file)".to_string()
        } else {
            format!("line longer than {} MiB (not JSONL?)", max_line >> 20)
        }
    };
    loop {
        if filled == buf.len() {
            if buf.len() < max_line {
                buf.resize(buf.len() * 2, 0); // one line longer than the buffer
            } else {
                skipping = Some(skipping.unwrap_or(true) && buf.iter().all(|b| *b == 0));
                filled = 0;
            }
        }
        let n = match reader.read(&mut buf[filled..]) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if gz => {
                // The unfinished line after the last whole one is part of the damage.
                if skipping.is_none() {
                    emit_lines(&mut buf, &mut filled, file, &mut line, &mut emit, false);
                }
                problems.push((line, format!("gzip data corrupt or truncated here: {e}")));
                return Ok(problems);
            }
            Err(e) => return Err(Error::read(path, e)),
        };
        if let Some(nul) = skipping {
            let data = &buf[filled..filled + n];
            match memchr::memchr(b'\n', data) {
                Some(i) => {
                    problems.push((line, long(nul && data[..i].iter().all(|b| *b == 0))));
                    line += 1;
                    buf.copy_within(filled + i + 1..filled + n, 0);
                    filled = n - i - 1;
                    skipping = None;
                    continue;
                }
                None if n == 0 => {
                    problems.push((line, long(nul)));
                    return Ok(problems);
                }
                None => {
                    skipping = Some(nul && data.iter().all(|b| *b == 0));
                    filled = 0;
                    continue;
                }
            }
        }
        filled += n;
        if n == 0 {
            emit_lines(&mut buf, &mut filled, file, &mut line, &mut emit, true);
            progress.tick();
            return Ok(problems);
        }
        if filled >= CHUNK_BYTES {
            emit_lines(&mut buf, &mut filled, file, &mut line, &mut emit, false);
            progress.tick();
        }
    }
}

/// Emits the complete lines of `buf[..filled]` (all of it at `eof`) and moves the unfinished
/// tail to the front.
fn emit_lines(buf: &mut [u8], filled: &mut usize, file: u32, line: &mut u64, emit: &mut impl FnMut(Chunk), eof: bool) {
    let data = &buf[..*filled];
    let cut = if eof { data.len() } else { memchr::memrchr(b'\n', data).map_or(0, |i| i + 1) };
    if cut == 0 {
        return;
    }
    let chunk = data[..cut].to_vec();
    let first_line = *line;
    *line += count_lines(&chunk) as u64;
    buf.copy_within(cut..*filled, 0);
    *filled -= cut;
    emit(Chunk { file, first_line, data: chunk });
}

fn count_lines(data: &[u8]) -> usize {
    memchr::memchr_iter(b'\n', data).count()
}

fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Splits a chunk into `(line number, line without its newline)`.
pub fn lines(chunk: &Chunk) -> impl Iterator<Item = (u64, &[u8])> {
    let data = chunk.data.strip_suffix(b"\n").unwrap_or(&chunk.data);
    let empty = chunk.data.is_empty();
    data.split(|b| *b == b'\n').enumerate().filter(move |_| !empty).map(move |(i, l)| (chunk.first_line + i as u64, l))
}

/// A one-line progress display on stderr: only on a terminal and only for large inputs, so
/// pipes, CI logs and `--format json` consumers never see it.
pub struct Progress {
    enabled: bool,
    total: u64,
    done: AtomicU64,
    start: Instant,
    last: std::sync::Mutex<Instant>,
}

impl Progress {
    pub fn new(total: u64) -> Self {
        let enabled = total >= PROGRESS_MIN_BYTES && std::io::stderr().is_terminal();
        let now = Instant::now();
        Progress { enabled, total, done: AtomicU64::new(0), start: now, last: std::sync::Mutex::new(now) }
    }

    fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }

    /// Redraws at most five times a second.
    pub fn tick(&self) {
        if !self.enabled {
            return;
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() < Duration::from_millis(200) {
            return;
        }
        *last = Instant::now();
        let done = self.done.load(Ordering::Relaxed);
        let secs = self.start.elapsed().as_secs_f64().max(1e-3);
        let pct = 100.0 * done as f64 / self.total.max(1) as f64;
        let width = 30usize;
        let filled = ((pct / 100.0) * width as f64).round() as usize;
        eprint!(
            "\r  reading [{}{}] {:5.1}%  {}/{} MB  {:.0} MB/s ",
            "#".repeat(filled.min(width)),
            " ".repeat(width - filled.min(width)),
            pct,
            done >> 20,
            self.total >> 20,
            done as f64 / 1e6 / secs
        );
        let _ = std::io::stderr().flush();
    }

    /// Clears the line so the report starts clean.
    pub fn finish(&self) {
        if self.enabled {
            eprint!("\r{}\r", " ".repeat(78));
            let _ = std::io::stderr().flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_keep_line_numbers_across_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.jsonl");
        // 300k lines of varying length: several chunks, boundaries inside lines.
        let mut text = String::new();
        for i in 0..300_000u64 {
            text.push_str(&format!("{}{}\n", i, "x".repeat((i % 7) as usize)));
        }
        text.push_str("tail-without-newline");
        std::fs::write(&p, &text).unwrap();
        let progress = Progress::new(0);
        let mut seen = 0u64;
        let mut chunks = 0;
        read_chunks(&p, 0, &progress, |c| {
            chunks += 1;
            for (n, l) in lines(&c) {
                seen += 1;
                assert_eq!(n, seen);
                let s = std::str::from_utf8(l).unwrap();
                if n <= 300_000 {
                    assert_eq!(s.trim_end_matches('x'), (n - 1).to_string());
                } else {
                    assert_eq!(s, "tail-without-newline");
                }
            }
        })
        .unwrap();
        assert_eq!(seen, 300_001);
        assert!(chunks > 1, "{chunks}");
    }

    #[test]
    fn over_long_lines_are_dropped_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.jsonl");
        let mut data = b"a\na\na\n".to_vec();
        data.extend(std::iter::repeat_n(b'x', 10 << 20));
        data.extend(b"\nb\n");
        data.extend(std::iter::repeat_n(0u8, 9 << 20));
        data.extend(b"\nc\n");
        data.extend(std::iter::repeat_n(0u8, 5 << 20));
        std::fs::write(&p, data).unwrap();
        let mut got = Vec::new();
        let problems = read_chunks_max(&p, 0, &Progress::new(0), 4 << 20, |c| {
            got.extend(lines(&c).map(|(n, l)| (n, String::from_utf8_lossy(l).into_owned())));
        })
        .unwrap();
        let expect: Vec<(u64, String)> =
            [(1, "a"), (2, "a"), (3, "a"), (5, "b"), (7, "c")].iter().map(|(n, s)| (*n, s.to_string())).collect();
        assert_eq!(got, expect);
        let reasons: Vec<(u64, bool)> = problems.iter().map(|(n, r)| (*n, r.starts_with("NUL"))).collect();
        assert_eq!(reasons, [(4, false), (6, true), (8, true)], "{problems:?}");
        assert!(problems[0].1.contains("longer than 4 MiB"));
    }

    #[test]
    fn truncated_gzip_keeps_what_decoded() {
        use flate2::{Compression, write::GzEncoder};
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.jsonl.gz");
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        for i in 0..200_000u64 {
            writeln!(enc, "line {i} {}", i * 7919 % 10007).unwrap();
        }
        let gz = enc.finish().unwrap();
        std::fs::write(&p, &gz[..gz.len() * 2 / 3]).unwrap();
        let progress = Progress::new(0);
        let mut n = 0u64;
        let problems = read_chunks(&p, 0, &progress, |c| n += lines(&c).count() as u64).unwrap();
        let [(line, reason)] = &problems[..] else { panic!("one problem expected: {problems:?}") };
        assert!(reason.contains("gzip"), "{reason}");
        assert!(n > 50_000 && n < 200_000, "{n}");
        assert_eq!(*line, n + 1);
    }
}
