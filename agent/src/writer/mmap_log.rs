//! An append-only file of complete lines written through a shared memory map.
//!
//! The file is allocated ahead of the data (with `fallocate`, so running out of disk is an error
//! at growth time instead of a SIGBUS on a store into a sparse page), and the bytes past the data
//! are NUL padding until [`MmapLog::finish`] truncates the file to the data length. A line is
//! copied in only when it fits whole, so the data region only ever holds complete lines; after a
//! crash [`repair`] cuts the padding and any torn tail.

use std::{
    fs::{File, OpenOptions},
    io,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use memmap2::MmapMut;

use crate::error::{Error, Result};

const PAGE: u64 = 4096;

pub struct MmapLog {
    file: File,
    path: PathBuf,
    map: Option<MmapMut>,
    /// Bytes of complete lines.
    len: u64,
    /// Allocated file size (data + padding).
    cap: u64,
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
/// (mmap padding) on, then a last line without its newline. A line that ends in `\n` before any
/// NUL was fully copied in, so it is kept.
pub fn repair(path: &Path) -> Result<Repair> {
    let data = std::fs::read(path).map_err(|e| Error::read(path, e))?;
    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let kept = data[..end].iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if kept as u64 != data.len() as u64 {
        let f = OpenOptions::new().write(true).open(path).map_err(|e| Error::write(path, e))?;
        f.set_len(kept as u64).map_err(|e| Error::write(path, e))?;
        f.sync_all().map_err(|e| Error::write(path, e))?;
    }
    Ok(Repair { kept: kept as u64, dropped: (data.len() - kept) as u64 })
}

impl MmapLog {
    /// Opens `path` for appending, creating it if needed and repairing what a crash left.
    /// `initial_cap` is the first allocation (rounded up to a page).
    pub fn open(path: &Path, initial_cap: u64) -> Result<(MmapLog, Repair)> {
        let repaired = if path.exists() { repair(path)? } else { Repair { kept: 0, dropped: 0 } };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| Error::write(path, e))?;
        let mut log =
            MmapLog { file, path: path.to_path_buf(), map: None, len: repaired.kept, cap: repaired.kept, unflushed: 0 };
        log.grow(round_up(initial_cap.max(repaired.kept + 1)))?;
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

    /// Appends one complete line (`line` must end with `\n`). On error nothing was written.
    pub fn append(&mut self, line: &[u8]) -> Result<()> {
        debug_assert!(line.ends_with(b"\n"));
        let need = self.len + line.len() as u64;
        if need > self.cap {
            self.grow(round_up(need.max(self.cap.saturating_mul(2))))?;
        }
        let map = self.map.as_mut().expect("mapped after grow");
        map[self.len as usize..need as usize].copy_from_slice(line);
        self.len = need;
        self.unflushed += 1;
        Ok(())
    }

    /// Extends the allocation to `new_cap` bytes and maps it.
    fn grow(&mut self, new_cap: u64) -> Result<()> {
        if new_cap <= self.cap && self.map.is_some() {
            return Ok(());
        }
        allocate(&self.file, new_cap).map_err(|e| Error::write(&self.path, e))?;
        if let Some(map) = self.map.take() {
            // Dirty pages stay in the page cache after munmap; flushing is only for durability.
            drop(map);
        }
        // SAFETY: the file is only written through this map by this process; other processes
        // (log readers) only read it, and the region is within the file's allocated length.
        let map = unsafe { MmapMut::map_mut(&self.file) }.map_err(|e| Error::write(&self.path, e))?;
        self.cap = new_cap;
        self.map = Some(map);
        Ok(())
    }

    /// msync the written range; with `fsync`, also make the file's metadata durable.
    pub fn flush(&mut self, fsync: bool) -> Result<()> {
        if let Some(map) = &self.map
            && self.len > 0
        {
            map.flush_range(0, self.len as usize).map_err(|e| Error::write(&self.path, e))?;
        }
        if fsync {
            self.file.sync_all().map_err(|e| Error::write(&self.path, e))?;
        }
        self.unflushed = 0;
        Ok(())
    }

    /// Flushes, unmaps and truncates the file to exactly its data, durably. Returns its length.
    pub fn finish(mut self) -> Result<u64> {
        self.flush(false)?;
        self.map = None;
        self.file.set_len(self.len).map_err(|e| Error::write(&self.path, e))?;
        self.file.sync_all().map_err(|e| Error::write(&self.path, e))?;
        Ok(self.len)
    }
}

fn round_up(n: u64) -> u64 {
    n.div_ceil(PAGE).max(1) * PAGE
}

/// Reserves disk blocks up to `len` (and sets the file size). Filesystems without fallocate
/// (EOPNOTSUPP) fall back to a sparse `set_len`.
fn allocate(file: &File, len: u64) -> io::Result<()> {
    // SAFETY: plain syscall on an open fd.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EOPNOTSUPP) => file.set_len(len),
        _ => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_grow_and_finish_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let (mut log, rep) = MmapLog::open(&path, 100).unwrap();
        assert_eq!(rep, Repair { kept: 0, dropped: 0 });
        let line = format!("{}\n", "x".repeat(3000));
        for _ in 0..5 {
            log.append(line.as_bytes()).unwrap();
        }
        assert!(std::fs::metadata(&path).unwrap().len() >= 15_000, "allocated ahead");
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
}
