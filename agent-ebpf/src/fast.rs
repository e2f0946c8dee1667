//! The BTF fast path: no per-request map.
//!
//! When a queue has `QUEUE_FLAG_STATS` (set by wbt and blk-stat users; on by default for most
//! disks), `blk_mq_start_request()` stamps `rq->io_start_time_ns`, sets `RQF_STATS` and records
//! `rq->stats_sectors` right after `trace_block_rq_issue`, and `rq->start_time_ns` was stamped
//! when the request was allocated. So the completion can compute device time
//! (`now - io_start_time_ns`) and queue time (`io_start_time_ns - start_time_ns`) from the request
//! itself: the issue program only raises the depth gauge, and the hash-map insert + lookup +
//! delete of the start map (most of a classic biolatency's cost) disappears.
//! <https://elixir.bootlin.com/linux/v5.10/source/block/blk-mq.c> (`blk_mq_start_request`,
//! the same test and stamps through v6.18:
//! <https://elixir.bootlin.com/linux/v6.18/source/block/blk-mq.c>)
//!
//! The fast path is taken only for requests allocated after `CONTROL_FAST_SINCE`, which userspace
//! writes once it trusts the flag values (at once when they come from BTF enums; after the flag
//! self-test below when they come from its per-version table), and decided from the allocation
//! stamp that issue and completion both read, so each request takes one path at both ends.
//!
//! Fields are read with plain loads: a `tp_btf` argument is a BTF-typed pointer, so the verifier
//! checks each load against `struct request` (and the pointers reached from it) and turns it into
//! a fault-safe `BPF_PROBE_MEM` load — a few ns, where a `bpf_probe_read_kernel` call costs tens.
//! The offsets are fields of the `.rodata` `CONFIG`, which the verifier sees as constants.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use blkio_agent_common::{
    CONTROL_ARMED_NS, CONTROL_FAST_SINCE, EVENT_FAST_COMPLETION, EVENT_PARTIAL_COMPLETION, EVENT_REQUEUED,
    SELFTEST_AGREE, SELFTEST_DISAGREE, TagMark, gauge_counts_end, gauge_counts_issue, log2_slot, queue_line,
    request_bytes,
};

use crate::{
    classify_req_op, conf,
    gauge::{inflight_add, mark_end, mark_issue},
    state::{Device, control, count, record_carried_bytes, record_cgroup, record_hist},
};

/// Whether the running kernel has every field the fast path reads (it still waits for
/// `CONTROL_FAST_SINCE`).
#[inline(always)]
pub fn enabled() -> bool {
    conf!(fast_layout) != 0
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
/// <https://elixir.bootlin.com/linux/v6.18/source/block/blk-cgroup.c>); requests never merge
/// bios of different blkgs (`blk_cgroup_mergeable()`). So `rq->bio->bi_blkg->blkcg` names the
/// submitter even though completion runs in IRQ context, with five loads and no per-request
/// map. The id is that of the io controller's hierarchy: cgroup v2 when io is enabled there,
/// else the v1 blkio hierarchy (userspace maps ids through the matching mount).
#[inline(always)]
pub fn bio_cgroup(rq: Rq) -> u64 {
    if conf!(bio_cgroup) == 0 {
        return 0;
    }
    // Each pointer may be NULL (no bio, no blkg): stop there.
    let follow = |base: u64, off: u64| -> Option<u64> {
        let p: u64 = load(base, off);
        if p == 0 { None } else { Some(p) }
    };
    let id = || -> Option<u64> {
        let bio = follow(rq.0, conf!(rq_bio))?;
        let blkg = follow(bio, conf!(bio_blkg))?;
        let blkcg = follow(blkg, conf!(blkg_blkcg))?;
        let cgroup = follow(blkcg, conf!(blkcg_cgroup))?;
        let kn = follow(cgroup, conf!(cgroup_kn))?;
        Some(load(kn, conf!(kn_id)))
    };
    id().unwrap_or(0)
}

/// `Rq::queue_num` of a request without a hardware queue.
const NO_QUEUE: u32 = u32::MAX;

#[inline(always)]
fn line_of(queue_num: u32) -> u32 {
    if queue_num == NO_QUEUE { 0 } else { queue_line(queue_num) }
}

/// The block layer's issue stamp of a request, read once: `RQF_STATS` and `io_start_time_ns`.
#[derive(Clone, Copy)]
struct Stamp {
    stats: bool,
    io_start_ns: u64,
}

impl Stamp {
    #[inline(always)]
    fn of(rq: Rq) -> Stamp {
        let flags = u64::from(load::<u32>(rq.0, conf!(rq_rq_flags)));
        Stamp { stats: flags & conf!(rqf_stats_mask) != 0, io_start_ns: load(rq.0, conf!(rq_io_start_time)) }
    }

    /// `io_start_time_ns` when the request went through blk-stat accounting, else 0.
    #[inline(always)]
    fn issued(self) -> u64 {
        if self.stats { self.io_start_ns } else { 0 }
    }
}

/// A `struct request *` argument of a BTF tracepoint.
#[derive(Clone, Copy)]
pub struct Rq(pub u64);

impl Rq {
    /// `cmd_flags & REQ_OP_MASK`: the kernel's `enum req_op` value.
    #[inline(always)]
    pub fn raw_op(self) -> u64 {
        u64::from(load::<u32>(self.0, conf!(rq_cmd_flags))) & conf!(req_op_mask)
    }

    #[inline(always)]
    pub fn q(self) -> u64 {
        load(self.0, conf!(rq_q))
    }

    #[inline(always)]
    pub fn data_len(self) -> u32 {
        load(self.0, conf!(rq_data_len))
    }

    /// Allocation time of the request (0 when the kernel did not stamp it).
    #[inline(always)]
    pub fn start_time_ns(self) -> u64 {
        load(self.0, conf!(rq_start_time))
    }

    /// `io_start_time_ns` when this request went through blk-stat accounting, else 0.
    #[inline(always)]
    fn stats_issue_ns(self) -> u64 {
        Stamp::of(self).issued()
    }

    /// `rq->mq_hctx->queue_num`: the request's hardware queue (`NO_QUEUE` without the fields, or
    /// for a request without a queue context).
    #[inline(always)]
    fn queue_num(self) -> u32 {
        if conf!(queue_lines) == 0 {
            return NO_QUEUE;
        }
        let hctx: u64 = load(self.0, conf!(rq_mq_hctx));
        if hctx == 0 {
            return NO_QUEUE;
        }
        load(hctx, conf!(hctx_queue_num))
    }

    /// The depth line of the request's hardware queue: its queue number folded into
    /// `QUEUE_LINES` (0 without one).
    #[inline(always)]
    pub fn queue_line(self) -> u32 {
        line_of(self.queue_num())
    }

    /// Where the request is marked while counted in its line's gauge: its tag's bit there, or
    /// `TagMark::NONE` for the outstanding table (see `TagMark`).
    #[inline(always)]
    fn tag_mark(self, queue_num: u32) -> TagMark {
        if conf!(tag_marks) == 0 {
            return TagMark::NONE;
        }
        let internal_tag: i32 = load(self.0, conf!(rq_internal_tag));
        let tag: i32 = load(self.0, conf!(rq_tag));
        TagMark::of(internal_tag, tag, queue_num).unwrap_or(TagMark::NONE)
    }

    /// `(major << 20) | first_minor` of the request's disk: `rq->rq_disk` before 5.17,
    /// `rq->q->disk` since (0 for a request without a disk, e.g. NVMe multipath's hidden paths).
    #[inline(always)]
    pub fn dev(self) -> u32 {
        let disk: u64 = match conf!(rq_disk) {
            u64::MAX => load(self.q(), conf!(q_disk)),
            off => load(self.0, off),
        };
        if disk == 0 {
            return 0;
        }
        let major: u32 = load(disk, conf!(disk_major));
        let minor: u32 = load(disk, conf!(disk_first_minor));
        (major << 20) | (minor & 0xfffff)
    }
}

/// Passthrough requests (`blk_rq_is_passthrough`) are stamped on some kernels and not on others
/// (5.10 stamps them, 6.x skips them): they always take the start map, at both ends.
#[inline(always)]
fn passthrough(op: u64) -> bool {
    op == conf!(req_op_drv_in) || op == conf!(req_op_drv_out)
}

#[inline(always)]
fn now_ns() -> u64 {
    unsafe { bpf_ktime_get_ns() }
}

/// The request's device, on its hardware queue's depth line when something uses the line: a
/// dense slot (a gauge line per queue) or attribution (its shard). An ignored device, or the
/// fallback entry without attribution, skips the line's two loads.
#[inline(always)]
pub fn device_of(rq: Rq) -> Device {
    device_on_queue(rq).0
}

/// [`device_of`], with the request's queue number when the device uses its line (`NO_QUEUE`
/// when not).
#[inline(always)]
fn device_on_queue(rq: Rq) -> (Device, u32) {
    let dev = Device::of(rq.dev());
    if dev.ignored() || !dev.uses_line() {
        return (dev, NO_QUEUE);
    }
    let n = rq.queue_num();
    (dev.on_line(line_of(n)), n)
}

/// The request's device and where it is marked while counted in the depth gauge.
#[inline(always)]
fn counted_device(rq: Rq) -> (Device, TagMark) {
    let (dev, n) = device_on_queue(rq);
    (dev, if dev.ignored() || !dev.dense() { TagMark::NONE } else { rq.tag_mark(n) })
}

/// Issue: handles the request and returns true when the block layer will stamp it
/// (`QUEUE_FLAG_STATS` and not passthrough — the same test `blk_mq_start_request` makes next)
/// and the fast path is on for it.
#[inline(always)]
pub fn issue(rq: Rq) -> bool {
    if passthrough(rq.raw_op()) {
        return false;
    }
    let q = rq.q();
    let flags: u64 = load(q, conf!(q_queue_flags));
    if flags & conf!(queue_flag_stats_mask) == 0 {
        return false;
    }
    let allocated = rq.start_time_ns();
    if !gauge_counts_issue(control(CONTROL_FAST_SINCE), allocated, now_ns) {
        return false;
    }
    if gauge_counts_issue(control(CONTROL_ARMED_NS), allocated, now_ns) {
        let (dev, mark) = counted_device(rq);
        if dev.ignored() {
            return true;
        }
        mark_issue(dev, mark, rq.0);
        inflight_add(dev, 1);
    }
    true
}

/// The flag self-test: `QUEUE_FLAG_STATS` on the queue, `RQF_STATS` on the request and a
/// non-zero `io_start_time_ns` must agree (the block layer sets the last two together, under the
/// first, and zeroes the stamp at allocation, `blk_mq_rq_ctx_init`). With a wrong bit from the
/// version table they soon disagree on some request; userspace then never turns the fast path
/// on. Run at every completion of a non-passthrough request until the fast path is on; from then
/// on it only feeds the reported disagreement count, so it runs on one completion in
/// [`SELFTEST_SAMPLE`] (chosen by the issue stamp's bits, which costs no load), and saves the
/// queue flags' load on the others.
#[inline(always)]
fn self_test(rq: Rq, stamp: Stamp, fast_on: bool) {
    if fast_on && (stamp.io_start_ns >> 10) % SELFTEST_SAMPLE != 0 {
        return;
    }
    let q_bit = load::<u64>(rq.q(), conf!(q_queue_flags)) & conf!(queue_flag_stats_mask) != 0;
    let stamped = stamp.io_start_ns != 0;
    if q_bit != stamp.stats || stamp.stats != stamped {
        count(SELFTEST_DISAGREE);
    } else if !fast_on {
        count(SELFTEST_AGREE);
    }
}

/// Once the fast path is on, the self-test checks one completion in this many.
const SELFTEST_SAMPLE: u64 = 64;

/// Completion of a request: returns false when the fast path did not take it (the caller then
/// uses the start map). `remaining` (`__data_len`) is what the caller already read.
#[inline(always)]
pub fn complete(rq: Rq, nr_bytes: u32, remaining: u32, cgroup_id: u64) -> bool {
    let raw_op = rq.raw_op();
    if passthrough(raw_op) {
        return false;
    }
    let fast_since = control(CONTROL_FAST_SINCE);
    let stamp = Stamp::of(rq);
    self_test(rq, stamp, fast_since != 0);
    let (dev, mark) = counted_device(rq);
    if dev.ignored() {
        // Not reported (`--devices`): taken, so that the start map does not count it lost.
        return true;
    }
    let issued = stamp.issued();
    if issued == 0 {
        return false;
    }
    let allocated = rq.start_time_ns();
    if !gauge_counts_end(fast_since, allocated, issued) {
        return false;
    }
    if nr_bytes < remaining {
        count(EVENT_PARTIAL_COMPLETION);
        return true;
    }
    let now = now_ns();
    let device_ns = now.saturating_sub(issued);
    let queue_ns = if allocated != 0 && allocated <= issued { issued - allocated } else { 0 };
    let bytes = request_bytes(load::<u16>(rq.0, conf!(rq_stats_sectors)), remaining);
    if gauge_counts_end(control(CONTROL_ARMED_NS), allocated, issued) {
        mark_end(dev, mark, rq.0);
        inflight_add(dev, -1);
    }
    let device_slot = log2_slot(device_ns / 1000);
    let op = classify_req_op(raw_op);
    record_hist(dev, op, bytes, device_ns, queue_ns, device_slot);
    record_cgroup(cgroup_id, dev, op, bytes, device_ns, device_slot);
    count(EVENT_FAST_COMPLETION);
    true
}

/// Requeue of a stamped request: it leaves the device and will be issued (and counted) again.
///
/// `__blk_mq_requeue_request()` fires the tracepoint for requests the driver never started in
/// this dispatch too (`queue_rq` refused them before `blk_mq_start_request()`), and their
/// `RQF_STATS` and `io_start_time_ns` are still those of an earlier start, already counted down
/// at that earlier requeue (their state is `MQ_RQ_IDLE`). So, like the kernel
/// (`blk_mq_request_started()`: state `!= MQ_RQ_IDLE`), only a started request is counted down:
/// without that, each such requeue lowered the gauge by one for good (found with fio at QD16 on a
/// loop device). Started includes `MQ_RQ_COMPLETE`: a command the driver retries (SCSI's
/// `scsi_io_completion` -> `blk_mq_requeue_request` after a zero-byte `blk_update_request`) is
/// requeued from there, and must be counted down too or each retry leaks one.
/// <https://elixir.bootlin.com/linux/v6.18/source/block/blk-mq.c> (`__blk_mq_requeue_request`)
#[inline(always)]
pub fn requeue(rq: Rq) -> bool {
    if passthrough(rq.raw_op()) {
        return false;
    }
    let issued = rq.stats_issue_ns();
    if issued == 0 {
        return false;
    }
    let allocated = rq.start_time_ns();
    if !gauge_counts_end(control(CONTROL_FAST_SINCE), allocated, issued) {
        return false;
    }
    let (dev, mark) = counted_device(rq);
    if dev.ignored() {
        return true;
    }
    let started = u64::from(load::<u32>(rq.0, conf!(rq_state))) != conf!(mq_rq_idle);
    if started {
        // What earlier pieces completed (a short transfer the driver retries): `stats_sectors`
        // still holds the size at this start, `__data_len` the rest the restart will stamp.
        let remaining = rq.data_len();
        let size = request_bytes(load::<u16>(rq.0, conf!(rq_stats_sectors)), remaining);
        record_carried_bytes(dev.id, classify_req_op(rq.raw_op()), size.saturating_sub(remaining));
    }
    if started && gauge_counts_end(control(CONTROL_ARMED_NS), allocated, issued) {
        mark_end(dev, mark, rq.0);
        inflight_add(dev, -1);
    }
    count(EVENT_REQUEUED);
    true
}
