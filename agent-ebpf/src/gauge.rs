//! The fast path's depth gauges: one line per hardware queue of each dense device (else a
//! fallback entry per device), and where the requests they count are marked so that an issue
//! can tell when the last completion of its request (or tag) was never seen.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_NOEXIST},
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use blkio_agent_common::{
    CONTROL_EPOCH, DeviceInflight, DeviceQueues, LOSS_DEVICE_MAP_FULL, MAX_DENSE_DEVICES, MAX_DEVICES,
    OUTSTANDING_SIZE, QUEUE_LINES, QueueLine, TagMark, outstanding_mark, outstanding_match, outstanding_pos,
};

use crate::state::{Device, NO_SLOT, add_u64, control, count};

/// In-flight gauges per dense slot, one cache line per hardware queue (`QUEUE_LINES`): the depth
/// is a property of the device, but a line per CPU could not give its peak, and one line per
/// device was written by every CPU doing its I/O. `BPF_F_MMAPABLE` page-aligns the values, so
/// each 64-byte line is a cache line of its own (a plain array's values start 16 bytes into one).
/// <https://elixir.bootlin.com/linux/v6.18/source/kernel/bpf/arraymap.c> (`array_map_alloc`)
#[map]
static DENSE_INFLIGHT: Array<DeviceQueues> = Array::with_max_entries(MAX_DENSE_DEVICES, BPF_F_MMAPABLE);

/// Fallback in-flight gauge per device for devices without a dense slot.
#[map]
static INFLIGHT: HashMap<u32, DeviceInflight> = HashMap::with_max_entries(MAX_DEVICES, 0);

/// Fast-path requests counted in the depth gauge, by request pointer (see `OUTSTANDING_SIZE`).
#[map]
static OUTSTANDING: Array<u64> = Array::with_max_entries(OUTSTANDING_SIZE, 0);

/// One word per CPU through which [`pointer_value`] turns a pointer into a number.
#[map]
static SCRATCH: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Initial value of a fallback gauge.
static ZERO_INFLIGHT: DeviceInflight = DeviceInflight { inflight: 0, peak: [0, 0], peak_epoch: [0, 0], evicted: 0 };

/// The device's in-flight gauge: its dense slot's line of the request's queue, else the
/// fallback map (one entry per device, inserted on first use).
#[inline(always)]
fn inflight_entry(dev: Device) -> Option<*mut DeviceInflight> {
    if dev.slot != NO_SLOT {
        if let Some(p) = DENSE_INFLIGHT.get_ptr_mut(dev.slot) {
            return Some(dense_line(p, dev.line));
        }
    }
    match INFLIGHT.get_ptr_mut(&dev.id) {
        Some(p) => Some(p),
        None => {
            let _ = INFLIGHT.insert(&dev.id, &ZERO_INFLIGHT, BPF_NOEXIST as u64);
            INFLIGHT.get_ptr_mut(&dev.id)
        }
    }
}

/// Line `line` of a dense device's gauges.
#[inline(always)]
fn dense_line(p: *mut DeviceQueues, line: u32) -> *mut DeviceInflight {
    unsafe { &raw mut (*queue_line_of(p, line)).gauge }
}

#[inline(always)]
fn queue_line_of(p: *mut DeviceQueues, line: u32) -> *mut QueueLine {
    let line = (line as usize) & (QUEUE_LINES - 1);
    unsafe { &raw mut (*p).lines[line] }
}

/// The word of `dev`'s line that holds `mark`'s bit (`None` for a device without a dense slot).
#[inline(always)]
fn tag_word(dev: Device, mark: TagMark) -> Option<*mut u64> {
    if !dev.dense() {
        return None;
    }
    let line = queue_line_of(DENSE_INFLIGHT.get_ptr_mut(dev.slot)?, dev.line);
    // Two constant offsets rather than an indexed one: the verifier rejected the index as an
    // unbounded access (LLVM did not keep its bound in the register that indexed).
    Some(unsafe { if mark.word == 0 { &raw mut (*line).tags[0] } else { &raw mut (*line).tags[1] } })
}

/// Fast-path issue of request `rq`, about to be counted in `dev`'s gauge: marks it by `mark`
/// (its tag's bit on the line), or in the outstanding table for `TagMark::NONE`. Either way an
/// unseen completion of the mark's last holder is counted down first (see `TagMark`).
#[inline(always)]
pub(crate) fn mark_issue(dev: Device, mark: TagMark, rq: u64) {
    if mark.mask == 0 {
        if let Some(rq) = pointer_value(rq) {
            outstanding_issue(rq, dev);
        }
        return;
    }
    let Some(w) = tag_word(dev, mark) else { return };
    // A plain read: only this tag's holder, now this request, changes its bit.
    match mark.issue_add(unsafe { core::ptr::read_volatile(w) }) {
        Some(add) => unsafe { add_u64(w, add) },
        // Still set: the tag's last holder completed unseen. Count it down on this line.
        None => inflight_evict_dense(dev),
    }
}

/// Fast-path completion or requeue of request `rq`, counted down from `dev`'s gauge: clears the
/// mark [`mark_issue`] set.
#[inline(always)]
pub(crate) fn mark_end(dev: Device, mark: TagMark, rq: u64) {
    if mark.mask == 0 {
        if let Some(rq) = pointer_value(rq) {
            outstanding_end(rq);
        }
        return;
    }
    let Some(w) = tag_word(dev, mark) else { return };
    if let Some(add) = mark.end_add(unsafe { core::ptr::read_volatile(w) }) {
        unsafe { add_u64(w, add) };
    }
}

/// Counts down, on `dev`'s dense line, one request whose completion was never seen (a decrement
/// never raises a peak, and a dense device needs no fallback insert in this program).
#[inline(always)]
fn inflight_evict_dense(dev: Device) {
    if let Some(d) = DENSE_INFLIGHT.get_ptr_mut(dev.slot) {
        let g = dense_line(d, dev.line);
        unsafe {
            atomic_xadd::<i64, i64, { AtomicOrdering::Relaxed }>(&raw mut (*g).inflight, -1);
            add_u64(&raw mut (*g).evicted, 1);
        }
    }
}

/// Counts down a request whose completion the programs never saw (it was issued again), and
/// records that on the device's gauge for userspace (`DeviceInflight::evicted`).
#[inline(always)]
pub(crate) fn inflight_evict(dev: Device) {
    inflight_add(dev, -1);
    if let Some(p) = inflight_entry(dev) {
        unsafe { add_u64(&raw mut (*p).evicted, 1) };
    }
}

/// The address a BTF-typed pointer holds, as a plain number. The verifier forbids masks and
/// shifts on pointers, and 5.10's also a partial read of one spilled to the stack ("invalid size
/// of register fill"); but a program loaded with `CAP_PERFMON` may store a pointer into a map
/// value, and what it loads back from there is a number.
#[inline(always)]
fn pointer_value(ptr: u64) -> Option<u64> {
    let p = SCRATCH.get_ptr_mut(0)?;
    unsafe {
        core::ptr::write_volatile(p, ptr);
        Some(core::ptr::read_volatile(p))
    }
}

/// Fast-path issue of `rq` (its [`pointer_value`]), counted in `dev`'s gauge: if `rq` is still
/// marked, its last completion was never seen, so it is counted down from the device it was
/// marked with; then `rq` is marked with `dev`. Devices without a dense slot are not marked.
#[inline(always)]
fn outstanding_issue(rq: u64, dev: Device) {
    let Some(mark) = outstanding_mark(rq, dev.slot) else { return };
    let Some(p) = OUTSTANDING.get_ptr_mut(outstanding_pos(rq)) else { return };
    // Plain 64-bit loads and stores: one request is issued on one CPU at a time, and an entry
    // another request overwrites concurrently can only lose a mark, never forge one.
    let old = unsafe { core::ptr::read_volatile(p) };
    if let Some(slot) = outstanding_match(old, rq) {
        // Only dense slots are marked: count down that entry directly (a decrement never raises
        // a peak), without the fallback map's insert path in this program. The line is that of
        // the request's queue now: a request keeps its hardware queue from allocation to
        // completion, and a driver tag set per queue (all but host-wide shared tags) keeps a
        // request on one queue for good. With shared tags the count-down may land on another
        // line of the same device: the device's depth stays exact.
        if let Some(d) = DENSE_INFLIGHT.get_ptr_mut(slot) {
            let g = dense_line(d, dev.line);
            unsafe {
                atomic_xadd::<i64, i64, { AtomicOrdering::Relaxed }>(&raw mut (*g).inflight, -1);
                add_u64(&raw mut (*g).evicted, 1);
            }
        }
    }
    unsafe { core::ptr::write_volatile(p, mark) };
}

/// Fast-path completion or requeue of `rq` (its [`pointer_value`]), counted down from the
/// gauge: clears its mark.
#[inline(always)]
fn outstanding_end(rq: u64) {
    let Some(p) = OUTSTANDING.get_ptr_mut(outstanding_pos(rq)) else { return };
    if outstanding_match(unsafe { core::ptr::read_volatile(p) }, rq).is_some() {
        unsafe { core::ptr::write_volatile(p, 0) };
    }
}

/// Adds `delta` to the device's in-flight count and raises this epoch's peak.
///
/// When userspace gives a device its dense slot while requests are in flight, those requests
/// were counted in the fallback entry and are uncounted from the dense one; userspace sums the
/// two, so the depth stays exact, and adds the fallback entry to the dense peaks (which is why a
/// peak is recorded even when the entry's own count is not positive).
#[inline(always)]
pub(crate) fn inflight_add(dev: Device, delta: i64) {
    let p = match inflight_entry(dev) {
        Some(p) => p,
        None => {
            count(LOSS_DEVICE_MAP_FULL);
            return;
        }
    };
    // A plain atomic add keeps the count exact. rustc links BPF objects for ISA v1, which cannot
    // use the old value an atomic returns, so the new depth is read back afterwards; under
    // concurrent issues that read may already include other CPUs' requests, which is still a
    // depth the device really had.
    let now = unsafe {
        atomic_xadd::<i64, i64, { AtomicOrdering::Relaxed }>(&raw mut (*p).inflight, delta);
        core::ptr::read_volatile(&raw const (*p).inflight)
    };
    if delta > 0 {
        let epoch = control(CONTROL_EPOCH);
        let slot = (epoch & 1) as usize;
        // A racy max: two CPUs raising the peak at once may keep the smaller value, which can
        // under-report the peak by the few requests issued in that instant.
        let (peak, peak_epoch) = unsafe { (&mut (*p).peak[slot], &mut (*p).peak_epoch[slot]) };
        if *peak_epoch != epoch {
            *peak_epoch = epoch;
            *peak = now;
        } else if now > *peak {
            *peak = now;
        }
    }
}
