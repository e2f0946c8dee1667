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
//! Fields are read with plain loads: a `tp_btf` argument is a BTF-typed pointer, so the verifier
//! checks each load against `struct request` (and the pointers reached from it) and turns it into
//! a fault-safe `BPF_PROBE_MEM` load — a few ns, where a `bpf_probe_read_kernel` call costs tens
//! (a one-off experiment on the development VM, not a benchmark: one 128-byte probe read cost
//! about three times the rest of the issue program).
//! The offsets are `.rodata` globals, which the verifier sees as constants.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use blkio_agent_common::{
    CONTROL_ARMED_NS, EVENT_PARTIAL_COMPLETION, EVENT_REQUEUED, gauge_counts_end, gauge_counts_issue, log2_slot,
};

use crate::{
    DISK_FIRST_MINOR_OFF, DISK_MAJOR_OFF, Q_DISK_OFF, REQ_OP_MASK, RQ_CMD_FLAGS_OFF, RQ_DATA_LEN_OFF, RQ_Q_OFF, global,
    state::{Device, control, count, inflight_add, record_cgroup, record_hist},
};

/// 1 when userspace found every field below in BTF and attribution by task is off.
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
/// 1 when attribution takes the cgroup the block layer charged the request to (below).
#[unsafe(no_mangle)]
static BIO_CGROUP: u8 = 0;
#[unsafe(no_mangle)]
static RQ_BIO_OFF: u64 = 0;
#[unsafe(no_mangle)]
static BIO_BLKG_OFF: u64 = 0;
#[unsafe(no_mangle)]
static BLKG_BLKCG_OFF: u64 = 0;
/// `offsetof(struct blkcg, css) + offsetof(struct cgroup_subsys_state, cgroup)`.
#[unsafe(no_mangle)]
static BLKCG_CGROUP_OFF: u64 = 0;
#[unsafe(no_mangle)]
static CGROUP_KN_OFF: u64 = 0;
#[unsafe(no_mangle)]
static KN_ID_OFF: u64 = 0;
/// Passthrough ops never get `io_start_time_ns` (`blk_rq_is_passthrough`).
#[unsafe(no_mangle)]
static REQ_OP_DRV_IN: u32 = 34;
#[unsafe(no_mangle)]
static REQ_OP_DRV_OUT: u32 = 35;
#[unsafe(no_mangle)]
static RQ_STATE_OFF: u64 = 0;
#[unsafe(no_mangle)]
static MQ_RQ_IN_FLIGHT: u32 = 1;

pub fn enabled() -> bool {
    global!(FAST_PATH) != 0
}

/// A plain load of the field at `base + off`. Only for BTF-typed pointers (tp_btf arguments and
/// pointers loaded from their fields): the verifier rejects it for anything else.
#[inline(always)]
pub fn load<T>(base: u64, off: u64) -> T {
    unsafe { core::ptr::read_volatile((base + off) as *const T) }
}

/// Id of the cgroup the block layer charged the request to, or 0 (attribution off, or a request
/// without a bio or blkg, such as a flush).
///
/// Every bio is associated with a blkcg_gq of the submitting task's io cgroup, or, for cgroup v2
/// writeback, of the cgroup that dirtied the pages (`bio_associate_blkg()`, `wbc_init_bio()`,
/// <https://github.com/torvalds/linux/blob/v6.18/block/blk-cgroup.c>); requests never merge
/// bios of different blkgs (`blk_cgroup_mergeable()`). So `rq->bio->bi_blkg->blkcg` names the
/// submitter even though completion runs in IRQ context, with five loads and no per-request
/// map. The id is that of the io controller's hierarchy: cgroup v2 when io is enabled there,
/// else the v1 blkio hierarchy (userspace maps ids through the matching mount).
#[inline(always)]
pub fn bio_cgroup(rq: Rq) -> u64 {
    if global!(BIO_CGROUP) == 0 {
        return 0;
    }
    // Each pointer may be NULL (no bio, no blkg): stop there.
    let follow = |base: u64, off: u64| -> Option<u64> {
        let p: u64 = load(base, off);
        if p == 0 { None } else { Some(p) }
    };
    let id = || -> Option<u64> {
        let bio = follow(rq.0, global!(RQ_BIO_OFF))?;
        let blkg = follow(bio, global!(BIO_BLKG_OFF))?;
        let blkcg = follow(blkg, global!(BLKG_BLKCG_OFF))?;
        let cgroup = follow(blkcg, global!(BLKCG_CGROUP_OFF))?;
        let kn = follow(cgroup, global!(CGROUP_KN_OFF))?;
        Some(load(kn, global!(KN_ID_OFF)))
    };
    id().unwrap_or(0)
}

/// A `struct request *` argument of a BTF tracepoint.
#[derive(Clone, Copy)]
pub struct Rq(pub u64);

impl Rq {
    #[inline(always)]
    pub fn raw_op(self) -> u32 {
        load::<u32>(self.0, global!(RQ_CMD_FLAGS_OFF)) & global!(REQ_OP_MASK)
    }

    #[inline(always)]
    pub fn q(self) -> u64 {
        load(self.0, global!(RQ_Q_OFF))
    }

    #[inline(always)]
    pub fn data_len(self) -> u32 {
        load(self.0, global!(RQ_DATA_LEN_OFF))
    }

    /// Allocation time of the request (0 when the kernel did not stamp it).
    #[inline(always)]
    pub fn start_time_ns(self) -> u64 {
        load(self.0, global!(RQ_START_TIME_OFF))
    }

    /// `io_start_time_ns` when this request went through blk-stat accounting, else 0.
    #[inline(always)]
    fn stats_issue_ns(self) -> u64 {
        if load::<u32>(self.0, global!(RQ_RQ_FLAGS_OFF)) & global!(RQF_STATS_MASK) == 0 {
            return 0;
        }
        load(self.0, global!(RQ_IO_START_TIME_OFF))
    }

    /// `(major << 20) | first_minor` of the request's disk.
    #[inline(always)]
    pub fn dev(self) -> u32 {
        queue_dev(self.q())
    }
}

/// `(major << 20) | first_minor` of `q->disk` (0 for a queue without a disk).
#[inline(always)]
fn queue_dev(q: u64) -> u32 {
    let disk: u64 = load(q, global!(Q_DISK_OFF));
    if disk == 0 {
        return 0;
    }
    let major: u32 = load(disk, global!(DISK_MAJOR_OFF));
    let minor: u32 = load(disk, global!(DISK_FIRST_MINOR_OFF));
    (major << 20) | (minor & 0xfffff)
}

/// Issue: handles the request and returns true when the block layer will stamp it
/// (`QUEUE_FLAG_STATS` and not passthrough — the same test `blk_mq_start_request` makes next).
#[inline(always)]
pub fn issue(rq: Rq) -> bool {
    let op = rq.raw_op();
    if op == global!(REQ_OP_DRV_IN) || op == global!(REQ_OP_DRV_OUT) {
        return false;
    }
    let q = rq.q();
    let flags: u64 = load(q, global!(Q_QUEUE_FLAGS_OFF));
    if flags & global!(QUEUE_FLAG_STATS_MASK) == 0 {
        return false;
    }
    if gauge_counts_issue(control(CONTROL_ARMED_NS), rq.start_time_ns(), || unsafe { bpf_ktime_get_ns() }) {
        inflight_add(Device::of(queue_dev(q)), 1);
    }
    true
}

/// Completion of a stamped request: returns false when the request was not stamped (the caller
/// then uses the start map). `remaining` (`__data_len`) and `op` (classified) are what the
/// caller already read.
#[inline(always)]
pub fn complete(rq: Rq, nr_bytes: u32, remaining: u32, op: u32, cgroup_id: u64) -> bool {
    let issued = rq.stats_issue_ns();
    if issued == 0 {
        return false;
    }
    if nr_bytes < remaining {
        count(EVENT_PARTIAL_COMPLETION);
        return true;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let dev = Device::of(rq.dev());
    let allocated = rq.start_time_ns();
    let device_ns = now.saturating_sub(issued);
    let queue_ns = if allocated != 0 && allocated <= issued { issued - allocated } else { 0 };
    let bytes = u32::from(load::<u16>(rq.0, global!(RQ_STATS_SECTORS_OFF))) << 9;
    if gauge_counts_end(control(CONTROL_ARMED_NS), allocated, issued) {
        inflight_add(dev, -1);
    }
    let device_slot = log2_slot(device_ns / 1000);
    record_hist(dev, op, bytes, device_ns, queue_ns, device_slot);
    record_cgroup(cgroup_id, dev.id, op, bytes, device_ns, device_slot);
    true
}

/// Requeue of a stamped request: it leaves the device and will be issued (and counted) again.
///
/// `__blk_mq_requeue_request()` fires the tracepoint for requests the driver never started in
/// this dispatch too (`queue_rq` refused them before `blk_mq_start_request()`), and their
/// `RQF_STATS` and `io_start_time_ns` are still those of an earlier start, already counted down
/// at that earlier requeue. So, like the kernel (`blk_mq_request_started()`), only a request whose
/// state is still `MQ_RQ_IN_FLIGHT` is counted down: without that, each such requeue lowered the
/// gauge by one for good (found with fio at QD16 on a loop device).
/// <https://github.com/torvalds/linux/blob/v6.18/block/blk-mq.c> (`__blk_mq_requeue_request`)
#[inline(always)]
pub fn requeue(rq: Rq) -> bool {
    let issued = rq.stats_issue_ns();
    if issued == 0 {
        return false;
    }
    let started = load::<u32>(rq.0, global!(RQ_STATE_OFF)) == global!(MQ_RQ_IN_FLIGHT);
    if started && gauge_counts_end(control(CONTROL_ARMED_NS), rq.start_time_ns(), issued) {
        inflight_add(Device::of(rq.dev()), -1);
    }
    count(EVENT_REQUEUED);
    true
}
