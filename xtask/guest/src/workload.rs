//! The known workload: exactly `writes` then `reads` 4 KiB O_DIRECT requests, one at a time, at
//! distinct 4 KiB-aligned offsets (no merging, no readahead, no page cache), so the block layer
//! completes exactly that many read and write requests of 4096 bytes.

use std::{fs::OpenOptions, os::fd::AsRawFd as _, os::unix::fs::OpenOptionsExt as _};

pub const BLOCK: usize = 4096;

struct Aligned(*mut u8);

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated by posix_memalign, freed once.
        unsafe { libc::free(self.0.cast()) }
    }
}

/// Runs the workload on `/dev/<dev>`; fails on any short or failed request.
pub fn run(dev: &str, writes: u32, reads: u32) -> Result<(), String> {
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
    let blocks = size / BLOCK as u64;
    let needed = u64::from(writes.max(reads));
    if blocks < needed * 2 {
        return Err(format!("{dev} has {blocks} blocks of 4 KiB, the workload needs {}", needed * 2));
    }
    let mut p: *mut libc::c_void = std::ptr::null_mut();
    // SAFETY: out-pointer to a local; alignment is a power of two multiple of sizeof(void*).
    if unsafe { libc::posix_memalign(&mut p, BLOCK, BLOCK) } != 0 {
        return Err("posix_memalign failed".into());
    }
    let buf = Aligned(p.cast());
    // Every other block, so no two requests are adjacent even if the scheduler held them.
    let offset = |i: u32| (u64::from(i) * 2 % blocks) * BLOCK as u64;
    let fd = file.as_raw_fd();
    for i in 0..writes {
        // SAFETY: buf points to BLOCK writable bytes.
        unsafe { std::ptr::write_bytes(buf.0, (i % 251) as u8, BLOCK) };
        // SAFETY: fd is open; buf is BLOCK bytes, aligned for O_DIRECT.
        let n = unsafe { libc::pwrite(fd, buf.0.cast(), BLOCK, offset(i) as libc::off_t) };
        if n != BLOCK as isize {
            return Err(format!("write {i} of {writes} on {path}: {}", std::io::Error::last_os_error()));
        }
    }
    for i in 0..reads {
        // SAFETY: as above.
        let n = unsafe { libc::pread(fd, buf.0.cast(), BLOCK, offset(i) as libc::off_t) };
        if n != BLOCK as isize {
            return Err(format!("read {i} of {reads} on {path}: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}
