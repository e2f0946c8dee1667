//! An append-only file of complete lines that is always clean for a concurrent reader.
//!
//! Readers (`tail -F`, log shippers, `json.loads` per line, the analyzer) read the file while
//! the agent writes it. So the file's size is always the data's length: no NUL padding is ever
//! visible. Each line is appended with one positional write (`pwrite`) at the end of the data;
//! while that call runs, a reader may see the first part of the line without its newline (the
//! kernel extends the size page by page), which is the ordinary JSONL contract: a line is
//! complete when its `\n` is there. Nothing but whole lines is ever left behind by this writer.
//!
//! Disk space is reserved ahead of the data with `fallocate(FALLOC_FL_KEEP_SIZE)`, doubling
//! like the former mmap writer grew its mapping: running out of disk is an error when the
//! reservation grows (the line is then not written at all), not a short write in the middle of
//! a line. The reservation lies past the end of the file, so readers never see it;
//! [`MmapLog::finish`] releases what is unused. (The type keeps its historical name: the
//! segment writer uses it too. Mapping the file is not possible without exposing padding: a
//! shared mapping can only be written where the file size already reaches.)
//!
//! A crash (kill -9) cannot leave padding, but can leave the line that was being written cut
//! short; power loss on some filesystems can leave NULs in unsynced blocks. [`repair`] cuts
//! both, and also files written by older versions that preallocated with NULs.

use std::{
    fs::{File, OpenOptions},
    io,
    os::{fd::AsRawFd, unix::fs::FileExt},
    path::{Path, PathBuf},
};

use crate::error::{Error, Result};

const PAGE: u64 = 4096;

pub struct MmapLog {
    file: File,
    path: PathBuf,
    /// Bytes of complete lines: the file's size.
    len: u64,
    /// Bytes reserved on disk (data + space reserved past the end).
    cap: u64,
    /// Start of the range not yet flushed.
    flushed: u64,
    /// Lines appended since the last flush.
    unflushed: u32,
}

/// Result of [`repair`]: the data length kept and the bytes dropped (padding and torn tail).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repair {
    pub kept: u64,
    pub dropped: u64,
}

/// Cuts a file left by a crash down to its complete lines: everything from the first NUL byte
/// on (unsynced blocks, or an older version's padding), then a last line without its newline.
/// A line that ends in `\n` before any NUL was fully written, so it is kept.
pub fn repair(path: &Path) -> Result<Repair> {
    let data = std::fs::read(path).map_err(|e| Error::read(path, e))?;
    let end = memchr::memchr(0, &data).unwrap_or(data.len());
    let kept = memchr::memrchr(b'\n', &data[..end]).map_or(0, |i| i + 1);
    if kept as u64 != data.len() as u64 {
        let f = OpenOptions::new().write(true).open(path).map_err(|e| Error::write(path, e))?;
        f.set_len(kept as u64).map_err(|e| Error::write(path, e))?;
        f.sync_all().map_err(|e| Error::write(path, e))?;
    }
    Ok(Repair { kept: kept as u64, dropped: (data.len() - kept) as u64 })
}

impl MmapLog {
    /// Opens `path` for appending, creating it if needed and repairing what a crash left.
    /// `initial_cap` is the first disk reservation (rounded up to a page).
    pub fn open(path: &Path, initial_cap: u64) -> Result<(MmapLog, Repair)> {
        let repaired = if path.exists() { repair(path)? } else { Repair { kept: 0, dropped: 0 } };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| Error::write(path, e))?;
        let len = repaired.kept;
        let mut log = MmapLog { file, path: path.to_path_buf(), len, cap: len, flushed: len, unflushed: 0 };
        log.reserve(round_up(initial_cap.max(len + 1)))?;
        Ok((log, repaired))
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn unflushed(&self) -> u32 {
        self.unflushed
    }

    /// Appends one complete line (`line` must end with `\n`). On error nothing was written: a
    /// partial write (possible only where space could not be reserved) is cut off again.
    pub fn append(&mut self, line: &[u8]) -> Result<()> {
        debug_assert!(line.ends_with(b"\n"));
        let need = self.len + line.len() as u64;
        if need > self.cap {
            self.reserve(round_up(need.max(self.cap.saturating_mul(2))))?;
        }
        if let Err(e) = self.file.write_all_at(line, self.len) {
            // Best effort: if even the truncate fails, `repair` cuts the torn tail on restart.
            let _ = self.file.set_len(self.len);
            return Err(Error::write(&self.path, e));
        }
        self.len = need;
        self.unflushed += 1;
        Ok(())
    }

    /// Reserves disk blocks up to `new_cap` bytes without changing the file's size.
    fn reserve(&mut self, new_cap: u64) -> Result<()> {
        if new_cap <= self.cap {
            return Ok(());
        }
        reserve(&self.file, new_cap).map_err(|e| Error::write(&self.path, e))?;
        self.cap = new_cap;
        Ok(())
    }

    /// Writes the new data back to disk (like the former msync: data only); with `fsync`, also
    /// the file's metadata (its size), so it survives a power loss.
    pub fn flush(&mut self, fsync: bool) -> Result<()> {
        if fsync {
            self.file.sync_all().map_err(|e| Error::write(&self.path, e))?;
        } else if self.len > self.flushed {
            let flags =
                libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
            // SAFETY: plain syscall on an open fd.
            let rc = unsafe {
                libc::sync_file_range(
                    self.file.as_raw_fd(),
                    self.flushed as libc::off64_t,
                    (self.len - self.flushed) as libc::off64_t,
                    flags,
                )
            };
            if rc != 0 {
                return Err(Error::write(&self.path, io::Error::last_os_error()));
            }
        }
        self.flushed = self.len;
        self.unflushed = 0;
        Ok(())
    }

    /// Flushes, releases the unused reservation and syncs the file. Returns its length.
    pub fn finish(mut self) -> Result<u64> {
        self.flush(false)?;
        // Truncating to the current size frees blocks reserved past the end.
        self.file.set_len(self.len).map_err(|e| Error::write(&self.path, e))?;
        self.file.sync_all().map_err(|e| Error::write(&self.path, e))?;
        Ok(self.len)
    }
}

fn round_up(n: u64) -> u64 {
    n.div_ceil(PAGE).max(1) * PAGE
}

/// `fallocate(KEEP_SIZE)`: reserves blocks past the end without changing the size readers see.
/// Filesystems without it (EOPNOTSUPP) get no reservation; `append` then undoes a short write.
fn reserve(file: &File, len: u64) -> io::Result<()> {
    // SAFETY: plain syscall on an open fd.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, len as libc::off_t) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EOPNOTSUPP) => Ok(()),
        _ => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_grow_and_finish_keeps_exactly_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let (mut log, rep) = MmapLog::open(&path, 100).unwrap();
        assert_eq!(rep, Repair { kept: 0, dropped: 0 });
        let line = format!("{}\n", "x".repeat(3000));
        for i in 0..5u64 {
            log.append(line.as_bytes()).unwrap();
            // The size readers see is the data, even though space was reserved beyond it.
            assert_eq!(std::fs::metadata(&path).unwrap().len(), 3001 * (i + 1));
        }
        let len = log.finish().unwrap();
        assert_eq!(len, 15_005);
        assert_eq!(std::fs::read(&path).unwrap(), line.repeat(5).into_bytes());
    }

    #[test]
    fn repair_drops_padding_and_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let mut data = b"{\"a\":1}\n{\"b\":2}\n{\"c\":".to_vec();
        data.extend(std::iter::repeat_n(0u8, 4096));
        std::fs::write(&path, &data).unwrap();
        let (mut log, rep) = MmapLog::open(&path, 4096).unwrap();
        assert_eq!(rep, Repair { kept: 16, dropped: data.len() as u64 - 16 });
        log.append(b"{\"d\":4}\n").unwrap();
        log.finish().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"a\":1}\n{\"b\":2}\n{\"d\":4}\n");
    }

    #[test]
    fn repair_of_only_padding_leaves_an_empty_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        std::fs::write(&path, vec![0u8; 8192]).unwrap();
        assert_eq!(repair(&path).unwrap(), Repair { kept: 0, dropped: 8192 });
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }

    /// A reader polling the file while lines of many sizes (some crossing the reservation's
    /// doublings and page boundaries) are appended never sees a NUL, a complete line that does
    /// not parse, or content that is not a prefix of the final file.
    #[test]
    fn a_concurrent_reader_sees_only_whole_lines() {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("live.jsonl");
        let (mut log, _) = MmapLog::open(&path, 4096).unwrap();
        let done = AtomicBool::new(false);
        let seen = AtomicU64::new(0);
        let lines: Vec<String> = (0..1000u64)
            .map(|i| format!("{}\n", serde_json::json!({"i": i, "pad": "y".repeat((i * 7919 % 12_000) as usize)})))
            .collect();
        let (polls, complete) = std::thread::scope(|s| {
            let reader = s.spawn(|| {
                let (mut polls, mut complete, mut prev) = (0u64, 0u64, Vec::new());
                while !done.load(Ordering::Acquire) || polls == 0 {
                    let data = std::fs::read(&path).unwrap();
                    assert!(memchr::memchr(0, &data).is_none(), "NUL at poll {polls}");
                    assert!(data.starts_with(&prev), "the file only grows by appending");
                    let whole = memchr::memrchr(b'\n', &data).map_or(0, |i| i + 1);
                    for l in data[..whole].split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                        let v: serde_json::Value = serde_json::from_slice(l).expect("a complete line parses");
                        assert!(v["i"].is_u64());
                    }
                    complete = complete.max(data[..whole].iter().filter(|b| **b == b'\n').count() as u64);
                    prev = data;
                    polls += 1;
                    seen.store(polls, Ordering::Release);
                }
                (polls, complete)
            });
            for (i, l) in lines.iter().enumerate() {
                log.append(l.as_bytes()).unwrap();
                if i % 40 == 0 {
                    // Let the reader poll between batches, so reads really overlap the writes.
                    let at = seen.load(Ordering::Acquire);
                    while seen.load(Ordering::Acquire) == at {
                        std::thread::yield_now();
                    }
                }
            }
            done.store(true, Ordering::Release);
            reader.join().unwrap()
        });
        log.finish().unwrap();
        assert!(polls >= 20 && complete > 0, "the reader ran during the writes: {polls} polls, {complete} lines");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), lines.concat());
    }
}
