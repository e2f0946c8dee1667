//! Kernel side of blkio-agent: block request latency, queue time, size and in-flight depth.
//!
//! Two attach modes feed the same maps:
//! - BTF tracepoints (`tp_btf`): the raw `struct request *` is the key, fields are read with
//!   BTF-checked plain loads at offsets userspace found in the running kernel's BTF and passed in as
//!   globals (aya has no CO-RE relocations for Rust programs, so nothing here hard-codes a layout).
//! - Classic tracepoints: the record carries no request pointer, so the key is `(sector, dev)`;
//!   record field offsets come from tracefs `format` files, again via globals.
//!
//! Tracepoint definitions: include/trace/events/block.h
//! <https://github.com/torvalds/linux/blob/v6.18/include/trace/events/block.h>
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![feature(asm_experimental_arch)]
#![allow(internal_features)]

mod fast;
mod gauge;
mod state;

use aya_ebpf::helpers::bpf_ktime_get_ns;
use aya_ebpf::{
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use blkio_agent_common::{
    CONTROL_FAST_SINCE, Config, EVENT_FAST_COMPLETION, OP_DISCARD, OP_FLUSH, OP_OTHER, OP_READ, OP_WRITE, RequestKey,
    gauge_counts_end, log2_slot,
};

use crate::fast::Rq;

use crate::state::{
    Completion, control, count, on_complete, on_insert, on_issue, on_requeue, record_cgroup, record_hist,
};

/// The kernel layout and feature switches, written by userspace as one global before loading
/// (`EbpfLoader::override_global("CONFIG", ..)`). It lands in `.rodata`, which aya freezes, so
/// the verifier sees every field as a constant.
#[unsafe(no_mangle)]
static CONFIG: Config = Config::DEFAULT;

/// Reads a field of [`CONFIG`]. The volatile read keeps LLVM from folding the compile-time
/// default into the code.
macro_rules! conf {
    ($field:ident) => {
        unsafe { core::ptr::read_volatile(&raw const crate::CONFIG.$field) }
    };
}
pub(crate) use conf;

/// What the issue path needs to know about a request in BTF mode.
struct RqInfo {
    dev: u32,
    op: u32,
    bytes: u32,
}

#[inline(always)]
fn rq_info(rq: u64) -> RqInfo {
    let r = Rq(rq);
    RqInfo { dev: r.dev(), op: classify_req_op(r.raw_op()), bytes: r.data_len() }
}

#[inline(always)]
pub(crate) fn classify_req_op(op: u64) -> u32 {
    if op == conf!(req_op_read) {
        OP_READ
    } else if op == conf!(req_op_write) {
        OP_WRITE
    } else if op == conf!(req_op_flush) {
        OP_FLUSH
    } else if op == conf!(req_op_discard) || op == conf!(req_op_secure_erase) {
        OP_DISCARD
    } else {
        OP_OTHER
    }
}

/// Op from the tracepoint's `rwbs` string (`blk_fill_rwbs`): an optional leading `F` for a
/// preflush, then the op letter (`R`, `W`, `D`, `F` for a pure flush, `N` for anything else).
#[inline(always)]
fn classify_rwbs(rwbs: &[u8; 8]) -> u32 {
    let mut saw_flush = false;
    let mut i = 0;
    while i < 8 {
        match rwbs[i] {
            b'R' => return OP_READ,
            b'W' => return OP_WRITE,
            b'D' => return OP_DISCARD,
            b'N' => return OP_OTHER,
            b'F' => saw_flush = true,
            0 => break,
            _ => {}
        }
        i += 1;
    }
    if saw_flush { OP_FLUSH } else { OP_OTHER }
}

#[inline(always)]
fn btf_key(rq: u64) -> RequestKey {
    RequestKey { a: rq, b: 0 }
}

// ---------------- BTF tracepoints ----------------
// Since 5.11 (a54895fa057c) insert/issue/requeue take `(struct request *rq)`; before that
// `(struct request_queue *q, struct request *rq)`. Both variants are compiled; the loader picks
// the one matching the parameter list of `btf_trace_block_rq_*` in the running kernel's BTF.

#[btf_tracepoint(function = "block_rq_insert")]
pub fn rq_insert_btf(ctx: BtfTracePointContext) -> i32 {
    let rq = ctx.arg::<u64>(0);
    on_insert(btf_key(rq), Rq(rq).dev());
    0
}

#[btf_tracepoint(function = "block_rq_insert")]
pub fn rq_insert_btf_q(ctx: BtfTracePointContext) -> i32 {
    let rq = ctx.arg::<u64>(1);
    on_insert(btf_key(rq), Rq(rq).dev());
    0
}

#[btf_tracepoint(function = "block_rq_issue")]
pub fn rq_issue_btf(ctx: BtfTracePointContext) -> i32 {
    let _ = try_rq_issue_btf(ctx.arg::<u64>(0));
    0
}

#[btf_tracepoint(function = "block_rq_issue")]
pub fn rq_issue_btf_q(ctx: BtfTracePointContext) -> i32 {
    let _ = try_rq_issue_btf(ctx.arg::<u64>(1));
    0
}

#[inline(always)]
fn try_rq_issue_btf(rq: u64) -> Result<(), i64> {
    if fast::enabled() {
        let r = Rq(rq);
        if fast::issue(r) {
            return Ok(());
        }
        // Not stamped by the block layer (no blk-stat on this queue, passthrough, or the fast path
        // not on yet): track it in the start map. There is no insert hook when the kernel has the
        // stamps; queueing starts at allocation on both paths.
        on_issue(btf_key(rq), r.dev(), classify_req_op(r.raw_op()), r.data_len(), r.start_time_ns(), r.queue_line());
        return Ok(());
    }
    let info = rq_info(rq);
    on_issue(btf_key(rq), info.dev, info.op, info.bytes, 0, Rq(rq).queue_line());
    Ok(())
}

#[btf_tracepoint(function = "block_rq_requeue")]
pub fn rq_requeue_btf(ctx: BtfTracePointContext) -> i32 {
    rq_requeue(ctx.arg::<u64>(0));
    0
}

#[btf_tracepoint(function = "block_rq_requeue")]
pub fn rq_requeue_btf_q(ctx: BtfTracePointContext) -> i32 {
    rq_requeue(ctx.arg::<u64>(1));
    0
}

#[inline(always)]
fn rq_requeue(rq: u64) {
    if fast::enabled() && fast::requeue(Rq(rq)) {
        return;
    }
    on_requeue(btf_key(rq), Rq(rq).data_len());
}

/// `block_rq_complete(struct request *rq, blk_status_t error, unsigned int nr_bytes)`.
/// It fires once per `blk_update_request()`, so a request completed in pieces fires several
/// times; only the call that completes its remaining `__data_len` ends it.
#[btf_tracepoint(function = "block_rq_complete")]
pub fn rq_complete_btf(ctx: BtfTracePointContext) -> i32 {
    let _ = try_rq_complete_btf(ctx);
    0
}

#[inline(always)]
fn try_rq_complete_btf(ctx: BtfTracePointContext) -> Result<(), i64> {
    let rq: u64 = ctx.arg(0);
    let nr_bytes: u32 = ctx.arg(2);
    let r = Rq(rq);
    let remaining = r.data_len();
    let op = classify_req_op(r.raw_op());
    // A zero-byte completion of a write is the end of a PREFLUSH/FUA sequence
    // (`blk_flush_complete_seq`, REQ_FSEQ_DONE): the data part already completed and was counted,
    // or it had no data (an empty PREFLUSH: fsync's `blkdev_issue_flush`) and was never issued —
    // only the flush request was, counted as a flush. Other dataless requests (zone management:
    // open, close, finish, reset) are issued and complete with 0 bytes like this: they go on to
    // be counted down and counted as `other`. (Was: every zero-byte non-flush completion was
    // skipped, which left each zone op +1 on the depth gauge for good and out of the counts.)
    if nr_bytes == 0 && remaining == 0 && op == OP_WRITE {
        empty_preflush(r);
        return Ok(());
    }
    let final_bytes = nr_bytes >= remaining;
    // Only the completion that ends the request is attributed (and only it reads the bio).
    let cgroup_id = if final_bytes { fast::bio_cgroup(r) } else { 0 };
    if fast::enabled() && fast::complete(r, nr_bytes, remaining, cgroup_id) {
        return Ok(());
    }
    let completion = if final_bytes { Completion::Final } else { Completion::Partial };
    on_complete(btf_key(rq), completion, cgroup_id, r.dev());
    Ok(())
}

/// The REQ_FSEQ_DONE completion of a write. diskstats counts an empty PREFLUSH there as a write
/// of 0 sectors (`blk_account_io_done()` once `RQF_FLUSH_SEQ` is cleared; the flush request it
/// waited for is counted as a flush), so the agent counts it too: a write of 0 bytes whose
/// device time is its whole life (the flush it waited for), never on the depth gauge (never
/// issued). It is told apart from the end of a data write, already counted at its data
/// completion, where the block layer stamps started requests: on a queue with
/// `QUEUE_FLAG_STATS` a request that was started has `RQF_STATS`. Elsewhere (no stats on the
/// queue, or the fast path not on yet) both are skipped, as before.
/// <https://elixir.bootlin.com/linux/v6.18/source/block/blk-flush.c> (`blk_flush_complete_seq`)
#[inline(always)]
fn empty_preflush(r: Rq) {
    if !fast::enabled() {
        return;
    }
    let q_flags: u64 = fast::load(r.q(), conf!(q_queue_flags));
    let rq_flags: u32 = fast::load(r.0, conf!(rq_rq_flags));
    if q_flags & conf!(queue_flag_stats_mask) == 0 || u64::from(rq_flags) & conf!(rqf_stats_mask) != 0 {
        return;
    }
    let allocated = r.start_time_ns();
    if allocated == 0 || !gauge_counts_end(control(CONTROL_FAST_SINCE), allocated, 0) {
        return;
    }
    let device_ns = unsafe { bpf_ktime_get_ns() }.saturating_sub(allocated);
    let slot = log2_slot(device_ns / 1000);
    let dev = fast::device_of(r);
    if dev.ignored() {
        return;
    }
    // A zero LLVM can see turns the shared maps' atomic `+= 0` into an atomic OR (an idempotent
    // RMW), which 5.10's verifier rejects (BPF_OR atomics are 5.12+): hide it behind a volatile load.
    let zero = unsafe { core::ptr::read_volatile(&0u32) };
    record_hist(dev, OP_WRITE, zero, device_ns, u64::from(zero), slot);
    record_cgroup(fast::bio_cgroup(r), dev, OP_WRITE, zero, device_ns, slot);
    count(EVENT_FAST_COMPLETION);
}

// ---------------- classic tracepoints (no BTF) ----------------

#[inline(always)]
fn tp_key(ctx: &TracePointContext, dev_off: u64, sector_off: u64) -> Result<(RequestKey, u32), i64> {
    let dev: u32 = unsafe { ctx.read_at(dev_off as usize) }?;
    let sector: u64 = unsafe { ctx.read_at(sector_off as usize) }?;
    Ok((RequestKey { a: sector, b: dev as u64 }, dev))
}

#[tracepoint(category = "block", name = "block_rq_insert")]
pub fn rq_insert_tp(ctx: TracePointContext) -> i32 {
    if let Ok((key, dev)) = tp_key(&ctx, conf!(tp_insert_dev), conf!(tp_insert_sector)) {
        on_insert(key, dev);
    }
    0
}

#[tracepoint(category = "block", name = "block_rq_issue")]
pub fn rq_issue_tp(ctx: TracePointContext) -> i32 {
    let _ = try_rq_issue_tp(&ctx);
    0
}

#[inline(always)]
fn try_rq_issue_tp(ctx: &TracePointContext) -> Result<(), i64> {
    let (key, dev) = tp_key(ctx, conf!(tp_issue_dev), conf!(tp_issue_sector))?;
    let (bytes_off, rwbs_off) = (conf!(tp_issue_bytes) as usize, conf!(tp_issue_rwbs) as usize);
    let bytes: u32 = unsafe { ctx.read_at(bytes_off) }?;
    let rwbs: [u8; 8] = unsafe { ctx.read_at(rwbs_off) }?;
    // The record has no request pointer: every request on line 0.
    on_issue(key, dev, classify_rwbs(&rwbs), bytes, 0, 0);
    Ok(())
}

#[tracepoint(category = "block", name = "block_rq_requeue")]
pub fn rq_requeue_tp(ctx: TracePointContext) -> i32 {
    if let Ok((key, _)) = tp_key(&ctx, conf!(tp_requeue_dev), conf!(tp_requeue_sector)) {
        on_requeue(key, u32::MAX);
    }
    0
}

/// The classic record has no remaining-bytes field, so every completion is taken as final
/// (true for blk-mq drivers, which complete whole requests).
#[tracepoint(category = "block", name = "block_rq_complete")]
pub fn rq_complete_tp(ctx: TracePointContext) -> i32 {
    if let Ok((key, dev)) = tp_key(&ctx, conf!(tp_complete_dev), conf!(tp_complete_sector)) {
        on_complete(key, Completion::Final, 0, dev);
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
