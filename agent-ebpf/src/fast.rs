//! The BTF fast path: no per-request map.
//!
//! When a queue has `QUEUE_FLAG_STATS` (set by wbt and blk-stat users; on by default for most
//! disks), `blk_mq_start_request()` stamps `rq->io_start_time_ns`, sets `RQF_STATS` and records
//! `rq->stats_sectors` right after `trace_block_rq_issue`, and `rq->start_time_ns` was stamped
//! when the request was allocated. So the completion can compute device time
//! (`now - io_start_time_ns`) and queue time (`io_start_time_ns - start_time_ns`) from the request
//! itself: the issue program only raises the depth gauge, and the hash-map insert + lookup +
//! delete of the start map (most of a classic biolatency's cost) disappears.
//! <https://github.com/torvalds/linux/blob/v6.18/block/blk-mq.c> (`blk_mq_start_request`)
//!
//! Each program reads the first `RQ_CHUNK` bytes of `struct request` with one helper call and
//! takes every field from that copy; the offsets are `.rodata` globals, which the verifier sees
//! as constants.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel_buf},
    macros::map,
    maps::PerCpuArray,
};
use blkio_agent_common::{
    CONTROL_ARMED_NS, CONTROL_EPOCH, EVENT_PARTIAL_COMPLETION, EVENT_REQUEUED, QCACHE_SLOTS, QueueInfo, RQ_CHUNK,
    log2_slot,
};

use crate::{
    DISK_FIRST_MINOR_OFF, DISK_MAJOR_OFF, Q_DISK_OFF, REQ_OP_MASK, RQ_CMD_FLAGS_OFF, RQ_DATA_LEN_OFF, RQ_Q_OFF,
    classify_req_op, global, read_kernel,
    state::{control, count, inflight_add, record_hist},
};

/// 1 when userspace found every field below in BTF inside `RQ_CHUNK` and attribution is off.
#[unsafe(no_mangle)]
static FAST_PATH: u8 = 0;
#[unsafe(no_mangle)]
static RQ_RQ_FLAGS_OFF: u64 = 0;
#[unsafe(no_mangle)]
static RQ_START_TIME_OFF: u64 = 0;
#[unsafe(no_mangle)]
static RQ_IO_START_TIME_OFF: u64 = 0;
#[unsafe(no_mangle)]
static RQ_STATS_SECTORS_OFF: u64 = 0;
#[unsafe(no_mangle)]
static Q_QUEUE_FLAGS_OFF: u64 = 0;
/// `1 << QUEUE_FLAG_STATS` and `RQF_STATS`, from BTF enums.
#[unsafe(no_mangle)]
static QUEUE_FLAG_STATS_MASK: u64 = 0;
#[unsafe(no_mangle)]
static RQF_STATS_MASK: u32 = 0;
/// Passthrough ops never get `io_start_time_ns` (`blk_rq_is_passthrough`).
#[unsafe(no_mangle)]
static REQ_OP_DRV_IN: u32 = 34;
#[unsafe(no_mangle)]
static REQ_OP_DRV_OUT: u32 = 35;

/// Per-CPU cache of queue -> (device, stamped?). A hit costs no helper call (array lookups are
/// inlined by the verifier) instead of three or four `bpf_probe_read_kernel`s.
#[map]
static QCACHE: PerCpuArray<QueueInfo> = PerCpuArray::with_max_entries(QCACHE_SLOTS, 0);

pub fn enabled() -> bool {
    global!(FAST_PATH) != 0
}

/// A copy of the head of a `struct request`.
#[repr(C, align(8))]
pub struct Chunk([u8; RQ_CHUNK]);

impl Chunk {
    #[inline(always)]
    pub fn read(rq: u64) -> Result<Chunk, i64> {
        let mut c = Chunk([0; RQ_CHUNK]);
        unsafe { bpf_probe_read_kernel_buf(rq as *const u8, &mut c.0) }.map_err(i64::from)?;
        Ok(c)
    }

    // Userspace only enables the fast path when each offset is aligned and inside the chunk;
    // the checks here are what lets the verifier (and Rust) agree.
    #[inline(always)]
    pub fn u64_at(&self, off: u64) -> u64 {
        let off = off as usize;
        if off > RQ_CHUNK - 8 || off % 8 != 0 {
            return 0;
        }
        unsafe { (self.0.as_ptr().add(off) as *const u64).read() }
    }

    #[inline(always)]
    pub fn u32_at(&self, off: u64) -> u32 {
        let off = off as usize;
        if off > RQ_CHUNK - 4 || off % 4 != 0 {
            return 0;
        }
        unsafe { (self.0.as_ptr().add(off) as *const u32).read() }
    }

    #[inline(always)]
    fn u16_at(&self, off: u64) -> u16 {
        let off = off as usize;
        if off > RQ_CHUNK - 2 || off % 2 != 0 {
            return 0;
        }
        unsafe { (self.0.as_ptr().add(off) as *const u16).read() }
    }

    #[inline(always)]
    pub fn raw_op(&self) -> u32 {
        self.u32_at(global!(RQ_CMD_FLAGS_OFF)) & global!(REQ_OP_MASK)
    }

    #[inline(always)]
    pub fn q(&self) -> u64 {
        self.u64_at(global!(RQ_Q_OFF))
    }

    #[inline(always)]
    pub fn data_len(&self) -> u32 {
        self.u32_at(global!(RQ_DATA_LEN_OFF))
    }

    /// Allocation time of the request (0 when the kernel did not stamp it).
    #[inline(always)]
    pub fn start_time_ns(&self) -> u64 {
        self.u64_at(global!(RQ_START_TIME_OFF))
    }

    /// `io_start_time_ns` when this request went through blk-stat accounting, else 0.
    #[inline(always)]
    fn stats_issue_ns(&self) -> u64 {
        if self.u32_at(global!(RQ_RQ_FLAGS_OFF)) & global!(RQF_STATS_MASK) == 0 {
            return 0;
        }
        self.u64_at(global!(RQ_IO_START_TIME_OFF))
    }
}

/// `(major << 20) | first_minor` of `q->disk` (0 for a queue without a disk).
#[inline(always)]
pub fn disk_dev(q: u64) -> Result<u32, i64> {
    let disk: u64 = read_kernel(q, global!(Q_DISK_OFF))?;
    if disk == 0 {
        return Ok(0);
    }
    let (major, minor) = if global!(DISK_FIRST_MINOR_OFF) == global!(DISK_MAJOR_OFF) + 4 {
        // Adjacent `int major; int first_minor;` (every kernel so far): one read.
        let both: u64 = read_kernel(disk, global!(DISK_MAJOR_OFF))?;
        (both as u32, (both >> 32) as u32)
    } else {
        (read_kernel::<u32>(disk, global!(DISK_MAJOR_OFF))?, read_kernel::<u32>(disk, global!(DISK_FIRST_MINOR_OFF))?)
    };
    Ok((major << 20) | (minor & 0xfffff))
}

/// The device of queue `q` and whether its requests are stamped, through the per-CPU cache.
#[inline(always)]
fn queue_info(q: u64) -> Result<(u32, bool), i64> {
    let stamp = control(CONTROL_EPOCH) + 1;
    let slot = ((q >> 10) & u64::from(QCACHE_SLOTS - 1)) as u32;
    let Some(p) = QCACHE.get_ptr_mut(slot) else { return Err(-1) };
    let e = unsafe { &mut *p };
    if e.q == q && e.stamp == stamp {
        return Ok((e.dev, e.stats != 0));
    }
    let flags: u64 = read_kernel(q, global!(Q_QUEUE_FLAGS_OFF))?;
    let dev = disk_dev(q)?;
    let stats = flags & global!(QUEUE_FLAG_STATS_MASK) != 0;
    *e = QueueInfo { q, stamp, dev, stats: u32::from(stats) };
    Ok((dev, stats))
}

/// Issue: handles the request and returns true when the block layer will stamp it
/// (`QUEUE_FLAG_STATS` and not passthrough — the same test `blk_mq_start_request` makes next).
#[inline(always)]
pub fn issue(c: &Chunk) -> bool {
    let op = c.raw_op();
    if op == global!(REQ_OP_DRV_IN) || op == global!(REQ_OP_DRV_OUT) {
        return false;
    }
    let Ok((dev, stamped)) = queue_info(c.q()) else { return false };
    if !stamped {
        return false;
    }
    if control(CONTROL_ARMED_NS) != 0 {
        inflight_add(dev, 1);
    }
    true
}

/// Completion of a stamped request: returns false when the request was not stamped (the caller
/// then uses the start map).
#[inline(always)]
pub fn complete(c: &Chunk, nr_bytes: u32) -> bool {
    let issued = c.stats_issue_ns();
    if issued == 0 {
        return false;
    }
    if nr_bytes < c.data_len() {
        count(EVENT_PARTIAL_COMPLETION);
        return true;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let op = classify_req_op(c.raw_op());
    let dev = queue_info(c.q()).map_or(0, |(dev, _)| dev);
    let allocated = c.start_time_ns();
    let device_ns = now.saturating_sub(issued);
    let queue_ns = if allocated != 0 && allocated <= issued { issued - allocated } else { 0 };
    let bytes = u32::from(c.u16_at(global!(RQ_STATS_SECTORS_OFF))) << 9;
    let armed = control(CONTROL_ARMED_NS);
    if armed != 0 && issued >= armed {
        inflight_add(dev, -1);
    }
    record_hist(dev, op, bytes, device_ns, queue_ns, log2_slot(device_ns / 1000));
    true
}

/// Requeue of a stamped request: it leaves the device and will be issued (and counted) again.
#[inline(always)]
pub fn requeue(c: &Chunk) -> bool {
    let issued = c.stats_issue_ns();
    if issued == 0 {
        return false;
    }
    let armed = control(CONTROL_ARMED_NS);
    if armed != 0 && issued >= armed {
        inflight_add(queue_info(c.q()).map_or(0, |(dev, _)| dev), -1);
    }
    count(EVENT_REQUEUED);
    true
}
