//! The known workload: exactly `writes` then `reads` 4 KiB O_DIRECT requests, one at a time, at
//! distinct 4 KiB-aligned offsets (no merging, no readahead, no page cache), so the block layer
//! completes exactly that many read and write requests of 4096 bytes; then a concurrent phase
//! (several threads, each alternating writes and reads on its own blocks) so requests overlap in
//! flight, with counts just as exact.

use std::{fs::OpenOptions, os::fd::AsRawFd as _, os::unix::fs::OpenOptionsExt as _};

pub const BLOCK: usize = 4096;

pub struct Aligned(pub *mut u8);

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated by posix_memalign, freed once.
        unsafe { libc::free(self.0.cast()) }
    }
}

/// Exact counts of one workload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub writes: u64,
    pub reads: u64,
}

pub struct Dev {
    pub file: std::fs::File,
    pub path: String,
    pub blocks: u64,
}

pub fn open(dev: &str) -> Result<Dev, String> {
    let path = format!("/dev/{dev}");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .map_err(|e| format!("open {path} O_DIRECT: {e}"))?;
    let size = std::fs::read_to_string(format!("/sys/block/{dev}/size"))
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .ok_or_else(|| format!("cannot read /sys/block/{dev}/size"))?
        * 512;
    Ok(Dev { file, path, blocks: size / BLOCK as u64 })
}

pub fn buffer() -> Result<Aligned, String> {
    let mut p: *mut libc::c_void = std::ptr::null_mut();
    // SAFETY: out-pointer to a local; alignment is a power of two multiple of sizeof(void*).
    if unsafe { libc::posix_memalign(&mut p, BLOCK, BLOCK) } != 0 {
        return Err("posix_memalign failed".into());
    }
    Ok(Aligned(p.cast()))
}

/// One 4 KiB request at block `block`.
pub fn io(d: &Dev, buf: &Aligned, write: bool, block: u64) -> Result<(), String> {
    let off = (block % d.blocks * BLOCK as u64) as libc::off_t;
    let fd = d.file.as_raw_fd();
    // SAFETY: fd is open; buf is BLOCK bytes, aligned for O_DIRECT.
    let n = unsafe {
        if write { libc::pwrite(fd, buf.0.cast(), BLOCK, off) } else { libc::pread(fd, buf.0.cast(), BLOCK, off) }
    };
    if n != BLOCK as isize {
        let op = if write { "write" } else { "read" };
        return Err(format!("{op} of block {block} on {}: {}", d.path, std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Runs both phases on `/dev/<dev>`; fails on any short or failed request.
pub fn run(dev: &str, writes: u32, reads: u32, threads: u32, per_thread: u32) -> Result<Counts, String> {
    let d = open(dev)?;
    let needed = 2 * u64::from(writes.max(reads)) + 2 * u64::from(threads * per_thread) + 2;
    if d.blocks < needed {
        return Err(format!("{dev} has {} blocks of 4 KiB, the workload needs {needed}", d.blocks));
    }
    let buf = buffer()?;
    // Phase 1, one at a time: even blocks, so no two requests are adjacent.
    for i in 0..u64::from(writes) {
        // SAFETY: buf points to BLOCK writable bytes.
        unsafe { std::ptr::write_bytes(buf.0, (i % 251) as u8, BLOCK) };
        io(&d, &buf, true, 2 * i)?;
    }
    for i in 0..u64::from(reads) {
        io(&d, &buf, false, 2 * i)?;
    }
    // Phase 2, concurrent: odd blocks, one range per thread; even i writes, odd i reads.
    let results: Vec<Result<(), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..u64::from(threads))
            .map(|t| {
                s.spawn(move || {
                    let d = open(dev)?;
                    let buf = buffer()?;
                    for i in 0..u64::from(per_thread) {
                        io(&d, &buf, i % 2 == 0, 2 * (t * u64::from(per_thread) + i) + 1)?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("workload thread panicked".into()))).collect()
    });
    results.into_iter().collect::<Result<(), String>>()?;
    let (w2, r2) = (u64::from(per_thread).div_ceil(2), u64::from(per_thread) / 2);
    Ok(Counts {
        writes: u64::from(writes) + u64::from(threads) * w2,
        reads: u64::from(reads) + u64::from(threads) * r2,
    })
}
