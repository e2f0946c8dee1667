//! The fault and lifecycle workloads of the scenarios (`scenario.rs`): zone management ioctls,
//! discards, many requests in flight at once, an ext4 file system with fsync, and scsi_debug's
//! injected errors. Each returns what it did, so the check knows which counts it must see.

use std::{fs, os::fd::AsRawFd as _, thread};

use crate::workload::{self, BLOCK, Dev};

/// `struct blk_zone_range` (include/uapi/linux/blkzoned.h).
#[repr(C)]
struct ZoneRange {
    sector: u64,
    nr_sectors: u64,
}

// _IOW(0x12, nr, struct blk_zone_range): direction write (1 << 30), size 16 << 16, type 0x12 << 8.
const fn zone_ioctl(nr: u64) -> u64 {
    (1 << 30) | (16 << 16) | (0x12 << 8) | nr
}
const BLKRESETZONE: u64 = zone_ioctl(131);
const BLKOPENZONE: u64 = zone_ioctl(134);
const BLKCLOSEZONE: u64 = zone_ioctl(135);
const BLKFINISHZONE: u64 = zone_ioctl(136);
/// `_IO(0x12, 119)`, argument `u64[2] = {start, length}` in bytes.
const BLKDISCARD: u64 = 0x1277;

fn ioctl(d: &Dev, req: u64, arg: *const libc::c_void, what: &str) -> Result<(), String> {
    // SAFETY: fd is open; arg points to the struct the request takes, alive for the call.
    if unsafe { libc::ioctl(d.file.as_raw_fd(), req as _, arg) } != 0 {
        return Err(format!("{what} on {}: {}", d.path, std::io::Error::last_os_error()));
    }
    Ok(())
}

/// On each of the first `zones` sequential zones: open, 4 writes at the write pointer, a read,
/// close, finish, reset. Returns the zone management requests issued (one per ioctl: one zone
/// each).
pub fn zoned(dev: &str, zones: u64) -> Result<u64, String> {
    let d = workload::open(dev)?;
    let zone_sectors: u64 = fs::read_to_string(format!("/sys/block/{dev}/queue/chunk_sectors"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{dev}: no queue/chunk_sectors (not zoned?)"))?;
    let buf = workload::buffer()?;
    let mut ops = 0;
    let per_zone = zone_sectors * 512 / BLOCK as u64;
    for z in 0..zones {
        let r = ZoneRange { sector: z * zone_sectors, nr_sectors: zone_sectors };
        let arg = (&raw const r).cast();
        ioctl(&d, BLKOPENZONE, arg, "BLKOPENZONE")?;
        ops += 1;
        for i in 0..4 {
            workload::io(&d, &buf, true, z * per_zone + i)?;
        }
        workload::io(&d, &buf, false, z * per_zone)?;
        for (req, what) in
            [(BLKCLOSEZONE, "BLKCLOSEZONE"), (BLKFINISHZONE, "BLKFINISHZONE"), (BLKRESETZONE, "BLKRESETZONE")]
        {
            ioctl(&d, req, arg, what)?;
            ops += 1;
        }
    }
    Ok(ops)
}

/// Writes a few blocks, then discards each `len` (bytes) range, one at a time, at 1 MiB-aligned
/// offsets with a gap between them (so no two merge).
pub fn discard(dev: &str, lens: &[u64]) -> Result<(), String> {
    let d = workload::open(dev)?;
    let buf = workload::buffer()?;
    let mut at = 1u64 << 20;
    for len in lens {
        workload::io(&d, &buf, true, at / BLOCK as u64)?;
        let range = [at, *len];
        ioctl(&d, BLKDISCARD, range.as_ptr().cast(), &format!("BLKDISCARD of {len} bytes"))?;
        at += len + (1 << 20);
    }
    Ok(())
}

/// `threads` threads, each doing `per_thread` synchronous 4 KiB O_DIRECT requests (alternating
/// writes and reads) on its own blocks: up to `threads` requests in flight at once.
pub fn concurrent(dev: &str, threads: u64, per_thread: u64) -> Result<(), String> {
    let results: Vec<Result<(), String>> = thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let d = workload::open(dev)?;
                    let buf = workload::buffer()?;
                    for i in 0..per_thread {
                        workload::io(&d, &buf, i % 2 == 0, 2 * (t * per_thread + i))?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("thread panicked".into()))).collect()
    });
    results.into_iter().collect()
}

/// Mounts `/dev/<dev>` (an ext4 image made on the host) and writes files with fsync and
/// fdatasync (journal commits: PREFLUSH + FUA writes, and flushes), an fsync with nothing to
/// write (an empty PREFLUSH), then unmounts (which writes and flushes the journal).
pub fn ext4(dev: &str) -> Result<(), String> {
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
    let (src, target, fstype) = (c(&format!("/dev/{dev}")), c("/mnt"), c("ext4"));
    let _ = fs::create_dir_all("/mnt");
    // SAFETY: NUL-terminated strings alive for the call.
    if unsafe { libc::mount(src.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) } != 0 {
        return Err(format!("mount -t ext4 /dev/{dev} /mnt: {}", std::io::Error::last_os_error()));
    }
    let work = || -> Result<(), String> {
        use std::io::Write as _;
        for i in 0..8 {
            let path = format!("/mnt/f{i}");
            let mut f = fs::File::create(&path).map_err(|e| format!("{path}: {e}"))?;
            f.write_all(&vec![i as u8; 64 << 10]).map_err(|e| format!("{path}: {e}"))?;
            if i % 2 == 0 { f.sync_all() } else { f.sync_data() }.map_err(|e| format!("fsync {path}: {e}"))?;
            // Nothing new to write: ext4 still flushes the device cache (an empty PREFLUSH).
            f.sync_all().map_err(|e| format!("fsync {path}: {e}"))?;
        }
        Ok(())
    };
    let r = work();
    // SAFETY: as above.
    if unsafe { libc::umount(target.as_ptr()) } != 0 {
        return Err(format!("umount /mnt: {}", std::io::Error::last_os_error()));
    }
    r
}

const SCSI_DEBUG: &str = "/sys/bus/pseudo/drivers/scsi_debug";

fn sdebug(knob: &str, value: u64) -> Result<(), String> {
    fs::write(format!("{SCSI_DEBUG}/{knob}"), value.to_string()).map_err(|e| format!("{SCSI_DEBUG}/{knob}: {e}"))
}

/// scsi_debug's `opts` bits (drivers/scsi/scsi_debug.c).
const OPT_MEDIUM_ERR: u64 = 0x2;
const OPT_TRANSPORT_ERR: u64 = 0x10;
const OPT_SHORT_TRANSFER: u64 = 0x100;
const OPT_HOST_BUSY: u64 = 0x8000;
/// `medium_error_start` default (OPT_MEDIUM_ERR_ADDR): reads covering it fail.
const MEDIUM_ERR_SECTOR: u64 = 0x1234;

/// What the fault workload did.
#[derive(Debug, Default, Clone, Copy)]
pub struct ScsiFaults {
    pub failed_reads: u64,
    /// Reads issued while every 4th command transferred only half its data.
    pub short_phase_reads: u64,
}

/// Every 5th command fails with a transport error (ABORTED COMMAND: the SCSI midlayer retries
/// it, requeueing the request from MQ_RQ_COMPLETE), then every 7th is refused as host busy
/// (blk-mq requeues it before or after start), then every 4th command transfers half its data
/// (sd completes that half — a partial completion — and requeues the rest: the restart restamps
/// the request's size, so the agent must carry the first half's bytes), then a read covering the
/// medium-error sector
/// fails (sd completes the good sectors before the bad one, then fails the rest: a partial
/// completion), each phase with 4 KiB O_DIRECT writes and reads one at a time.
pub fn scsi(dev: &str) -> Result<ScsiFaults, String> {
    let d = workload::open(dev)?;
    let buf = workload::buffer()?;
    let run = || -> Result<ScsiFaults, String> {
        for (phase, (opts, nth)) in [(OPT_TRANSPORT_ERR, 5), (OPT_HOST_BUSY, 7)].into_iter().enumerate() {
            sdebug("every_nth", nth)?;
            sdebug("opts", opts)?;
            let base = 64 + phase as u64 * 256;
            for i in 0..24 {
                workload::io(&d, &buf, true, base + 2 * i)?;
                workload::io(&d, &buf, false, base + 2 * i)?;
            }
        }
        let mut out = ScsiFaults::default();
        sdebug("every_nth", 4)?;
        sdebug("opts", OPT_SHORT_TRANSFER)?;
        for i in 0..16 {
            workload::io(&d, &buf, false, 64 + 2 * 256 + 2 * i)?;
            out.short_phase_reads += 1;
        }
        sdebug("every_nth", 0)?;
        sdebug("opts", OPT_MEDIUM_ERR)?;
        // The 4 KiB block holding the bad sector, and a good block after it.
        let bad = MEDIUM_ERR_SECTOR * 512 / BLOCK as u64;
        for _ in 0..2 {
            if workload::io(&d, &buf, false, bad).is_ok() {
                return Err(format!("a read of block {bad} (sector {MEDIUM_ERR_SECTOR:#x}) did not fail with opts=2"));
            }
            out.failed_reads += 1;
            workload::io(&d, &buf, false, bad + 16)?;
        }
        Ok(out)
    };
    let r = run();
    let _ = sdebug("opts", 0);
    let _ = sdebug("every_nth", 0);
    r
}
