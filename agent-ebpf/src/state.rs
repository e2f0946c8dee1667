//! Maps and the request state machine shared by both attach modes:
//! insert (optional) -> issue -> [requeue -> insert -> issue]* -> complete.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::{bpf_get_current_cgroup_id, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use blkio_agent_common::{
    CONTROL_SLOTS, COUNTER_SLOTS, CgroupKey, CgroupStats, DEVICE_INDEX_PROBES, DEVICE_INDEX_SIZE, DeviceHists,
    EVENT_PARTIAL_COMPLETION, EVENT_REQUEUED, Framed, HistKey, IGNORED_SLOT, LOSS_CGROUP_MAP_FULL,
    LOSS_COMPLETE_WITHOUT_START, LOSS_DEVICE_MAP_FULL, LOSS_HIST_UPDATE_FAILED, LOSS_STALE_EVICTED,
    LOSS_START_INSERT_FAILED, MAX_CGROUP_KEYS, MAX_DENSE_DEVICES, MAX_HIST_KEYS, MAX_INFLIGHT_REQUESTS, OP_COUNT,
    OpHist, QUEUE_LINES, RequestKey, RequestStart, cgroup_shard, device_index_match, device_index_pos, log2_slot,
};

use crate::{
    conf,
    gauge::{inflight_add, inflight_evict},
};

/// Requests between insert/issue and completion.
#[map]
static REQUESTS: HashMap<RequestKey, RequestStart> = HashMap::with_max_entries(MAX_INFLIGHT_REQUESTS, 0);

/// Device -> dense slot (`blkio_agent_common::device_index_*`). Userspace gives each device it
/// has seen a slot and writes it here; until then (and for devices beyond `MAX_DENSE_DEVICES`)
/// the programs use the fallback hash maps below. Userspace sums both.
#[map]
static DEVICE_INDEX: Array<u64> = Array::with_max_entries(DEVICE_INDEX_SIZE, 0);

/// Cumulative per-CPU histograms per dense slot, every op: the completion path only touches its
/// own CPU's copy (no cache-line bouncing, no atomics) and finds it without a hash lookup.
#[map]
static DENSE_HISTS: PerCpuArray<Framed<DeviceHists>> = PerCpuArray::with_max_entries(MAX_DENSE_DEVICES, 0);

/// Fallback histograms per (device, op) for devices without a dense slot; shared, atomic adds.
#[map]
static HISTS: HashMap<HistKey, Framed<OpHist>> = HashMap::with_max_entries(MAX_HIST_KEYS, 0);

/// Per-(cgroup, device, op) statistics, only filled when attribution is on. Preallocated, like
/// every hash map here: kernels before 6.1 refuse run-time allocated hash maps in tracepoint and
/// kprobe programs ("trace type programs with run-time allocated hash maps are unsafe",
/// <https://elixir.bootlin.com/linux/v5.10/source/kernel/bpf/verifier.c>, `check_map_prog_compatibility`), and
/// on-demand allocation in tracepoint context can fail under bursts. The loader shrinks it to one
/// entry when attribution is off, so it costs nothing then. A full map is `cgroup_map_full`.
#[map]
static CGROUPS: HashMap<CgroupKey, Framed<CgroupStats>> = HashMap::with_max_entries(MAX_CGROUP_KEYS, 0);

/// Loss and event counters (`LOSS_*`, `EVENT_*`), all in one per-CPU element: userspace reads
/// them with one lookup.
#[map]
static COUNTERS: PerCpuArray<[u64; COUNTER_SLOTS as usize]> = PerCpuArray::with_max_entries(1, 0);

/// Written by userspace: `CONTROL_EPOCH`.
#[map]
static CONTROL: Array<u64> = Array::with_max_entries(CONTROL_SLOTS, 0);

/// Initial values for map inserts. Statics, so the 416-byte value never lives on the 512-byte
/// BPF stack.
static ZERO_HIST: Framed<OpHist> = Framed::new(OpHist::ZERO);
static ZERO_CGROUP: Framed<CgroupStats> = Framed::new(CgroupStats::ZERO);

pub enum Completion {
    Partial,
    Final,
}

#[inline(always)]
pub(crate) fn count(slot: u32) {
    let p = COUNTERS.get_ptr_mut(0);
    if let Some(c) = p.and_then(|p| unsafe { (*p).get_mut(slot as usize) }) {
        if written_by_several_programs(slot) {
            // Another program can interrupt this one on this CPU (an IRQ-time completion in the
            // middle of a task-time issue), and a plain `+=` would then lose one of the two: an
            // atomic add on this CPU's own line (uncontended; these slots count rare events).
            unsafe { add_u64(c, 1) };
        } else {
            // Only one program writes the slot, and the kernel does not re-enter a program on a
            // CPU where it runs (`prog->active` in `__bpf_trace_run`): a plain add is exact.
            *c += 1;
        }
    }
}

/// `COUNTERS` slots that more than one program writes: the slow path's stale evictions (insert
/// and issue) and a full device map (issue, completion, requeue). A constant at every call site
/// (`count` is inlined), so the test folds away.
#[inline(always)]
const fn written_by_several_programs(slot: u32) -> bool {
    slot == LOSS_STALE_EVICTED || slot == LOSS_DEVICE_MAP_FULL
}

#[inline(always)]
fn submitter_cgroup() -> u64 {
    if conf!(attribute_cgroups) != 0 { unsafe { bpf_get_current_cgroup_id() } } else { 0 }
}

pub fn on_insert(key: RequestKey, dev: u32) {
    if Device::of(dev).ignored() {
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(p) = REQUESTS.get_ptr_mut(&key) {
        let start = unsafe { &mut *p };
        if start.issue_ns != 0 {
            // Still marked in flight, yet inserted again without a requeue event: the old
            // completion was lost (or, with classic keys, two requests collided).
            count(LOSS_STALE_EVICTED);
            inflight_evict(Device::of(start.dev).on_line(start.line));
            start.issue_ns = 0;
        }
        // Otherwise a leftover of a request merged away before issue; reuse the slot.
        start.insert_ns = now;
        start.cgroup_id = submitter_cgroup();
        return;
    }
    let start = RequestStart { insert_ns: now, cgroup_id: submitter_cgroup(), ..RequestStart::default() };
    // A failure here only loses queue time; `on_issue` retries and counts a real loss.
    let _ = REQUESTS.insert(&key, &start, BPF_NOEXIST as u64);
}

/// Reads slot `i` of `CONTROL` (0 when unset).
#[inline(always)]
pub(crate) fn control(i: u32) -> u64 {
    CONTROL.get(i).copied().unwrap_or(0)
}

/// `queued_since`: when queueing began if known without an insert event (the request's
/// allocation time), else 0. `line`: the depth line of the request's hardware queue. Inlined:
/// BPF calls take at most 5 register arguments.
#[inline(always)]
pub fn on_issue(key: RequestKey, dev: u32, op: u32, bytes: u32, queued_since: u64, line: u32) {
    let device = Device::of(dev).on_line(line);
    if device.ignored() {
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(p) = REQUESTS.get_ptr_mut(&key) {
        let start = unsafe { &mut *p };
        if start.issue_ns != 0 {
            // Issued twice without completing: replace the stale entry, moving its depth.
            count(LOSS_STALE_EVICTED);
            inflight_evict(Device::of(start.dev).on_line(start.line));
            start.insert_ns = 0;
        }
        if start.cgroup_id == 0 {
            start.cgroup_id = submitter_cgroup();
        }
        if start.insert_ns == 0 {
            start.insert_ns = queued_since;
        }
        start.issue_ns = now;
        start.dev = dev;
        start.op = op;
        start.bytes = bytes;
        start.line = line;
        inflight_add(device, 1);
        return;
    }
    let start =
        RequestStart { insert_ns: queued_since, issue_ns: now, cgroup_id: submitter_cgroup(), dev, op, bytes, line };
    if REQUESTS.insert(&key, &start, BPF_ANY as u64).is_err() {
        count(LOSS_START_INSERT_FAILED);
        return;
    }
    inflight_add(device, 1);
}

/// `remaining`: the request's `__data_len` now (`u32::MAX` when unknown: the classic record has
/// only the sector count of a request it takes as whole). Bytes the request completed before it
/// was requeued are carried (see [`record_carried_bytes`]): its re-issue records only the rest.
pub fn on_requeue(key: RequestKey, remaining: u32) {
    if let Some(p) = REQUESTS.get_ptr(&key) {
        let start = unsafe { *p };
        let _ = REQUESTS.remove(&key);
        let dev = Device::of(start.dev).on_line(start.line);
        if dev.ignored() {
            // Issued before userspace marked the device: nothing of it is reported any more.
            return;
        }
        if start.issue_ns != 0 {
            inflight_add(dev, -1);
            record_carried_bytes(start.dev, start.op, start.bytes.saturating_sub(remaining));
        }
        count(EVENT_REQUEUED);
    }
}

/// `bio_cgroup`: the cgroup the block layer charged the request to (`fast::bio_cgroup`), used
/// when no submitting cgroup was recorded at insert/issue; 0 when unknown or not attributing.
/// `dev`: the request's device (the start entry has it too, but an ignored device has none).
pub fn on_complete(key: RequestKey, completion: Completion, bio_cgroup: u64, dev: u32) {
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(p) = REQUESTS.get_ptr(&key) else {
        // Issued before the agent started, or its start could not be stored; or on an ignored
        // device, which has no start entries.
        if !Device::of(dev).ignored() {
            count(if let Completion::Partial = completion {
                EVENT_PARTIAL_COMPLETION
            } else {
                LOSS_COMPLETE_WITHOUT_START
            });
        }
        return;
    };
    let start = unsafe { *p };
    let dev = Device::of(start.dev).on_line(start.line);
    if dev.ignored() {
        // Issued before userspace marked the device: nothing of it is reported any more.
        let _ = REQUESTS.remove(&key);
        return;
    }
    if let Completion::Partial = completion {
        count(EVENT_PARTIAL_COMPLETION);
        return;
    }
    let _ = REQUESTS.remove(&key);
    if start.issue_ns == 0 {
        count(LOSS_COMPLETE_WITHOUT_START);
        return;
    }
    inflight_add(dev, -1);

    let device_ns = now.saturating_sub(start.issue_ns);
    let queue_ns =
        if start.insert_ns != 0 && start.insert_ns <= start.issue_ns { start.issue_ns - start.insert_ns } else { 0 };
    let device_slot = log2_slot(device_ns / 1000);
    record_hist(dev, start.op, start.bytes, device_ns, queue_ns, device_slot);
    let cgroup_id = if start.cgroup_id != 0 { start.cgroup_id } else { bio_cgroup };
    record_cgroup(cgroup_id, dev, start.op, start.bytes, device_ns, device_slot);
}

/// A device and its dense slot, looked up once per event and shared by the depth gauge and
/// the histogram updates.
///
/// The slot is a plain integer (`NO_SLOT` for none), not an `Option`: LLVM leaves the payload of
/// a `None` uninitialized, and the verifier rejects reading that register ("!read_ok").
#[derive(Clone, Copy)]
pub(crate) struct Device {
    pub id: u32,
    pub(crate) slot: u32,
    /// Depth line of the request's hardware queue (`QUEUE_LINES`), below `QUEUE_LINES`.
    pub(crate) line: u32,
}

pub(crate) const NO_SLOT: u32 = u32::MAX;

impl Device {
    #[inline(always)]
    pub fn of(id: u32) -> Device {
        Device { id, slot: dense_slot(id).unwrap_or(NO_SLOT), line: 0 }
    }

    /// The same device, for a request of the hardware queue with depth line `line`.
    #[inline(always)]
    pub fn on_line(self, line: u32) -> Device {
        Device { line: line & (QUEUE_LINES as u32 - 1), ..self }
    }

    /// Whether the request's depth line matters: a dense device has a gauge line per hardware
    /// queue, and attribution shards by line; the fallback entry is one gauge.
    #[inline(always)]
    pub fn uses_line(self) -> bool {
        self.slot != NO_SLOT || conf!(attribute_cgroups) != 0
    }

    /// The device has a dense slot (gauge lines per hardware queue).
    #[inline(always)]
    pub fn dense(self) -> bool {
        self.slot != NO_SLOT
    }

    /// Userspace marked the device as not reported (`IGNORED_SLOT`): its requests are skipped
    /// at every event, before any map is written.
    #[inline(always)]
    pub fn ignored(self) -> bool {
        self.slot == IGNORED_SLOT
    }
}

/// The device's dense slot (or `IGNORED_SLOT`), if userspace gave it one. Two or so array loads.
#[inline(always)]
fn dense_slot(dev: u32) -> Option<u32> {
    let mut probe = 0;
    while probe < DEVICE_INDEX_PROBES {
        let entry = DEVICE_INDEX.get(device_index_pos(dev, probe)).copied().unwrap_or(0);
        if entry == 0 {
            return None;
        }
        if let Some(slot) = device_index_match(entry, dev) {
            return Some(slot);
        }
        probe += 1;
    }
    None
}

/// This CPU's element of dense slot `slot` and, in it, the statistics of `op`.
#[inline(always)]
fn dense_op(slot: u32, op: u64) -> Option<(*mut Framed<DeviceHists>, *mut OpHist)> {
    let p = DENSE_HISTS.get_ptr_mut(slot)?;
    if op >= OP_COUNT as u64 {
        return None;
    }
    let ops = unsafe { (&raw mut (*p).value.ops).cast::<OpHist>() };
    Some((p, unsafe { bounded_index(ops, op) }))
}

/// Keeps LLVM from moving memory accesses across it (an `asm!` without `nomem` may touch any
/// memory). The framing of [`Framed`] needs the update between its two counters.
#[inline(always)]
fn compiler_barrier() {
    unsafe { core::arch::asm!("", options(nostack, preserves_flags)) };
}

/// Starts an update of a value only this CPU writes; returns what [`end_own`] stores.
#[inline(always)]
unsafe fn begin_own(started: *mut u64) -> u64 {
    let n = unsafe { core::ptr::read_volatile(started) }.wrapping_add(1);
    unsafe { core::ptr::write_volatile(started, n) };
    compiler_barrier();
    n
}

#[inline(always)]
unsafe fn end_own(done: *mut u64, n: u64) {
    compiler_barrier();
    unsafe { core::ptr::write_volatile(done, n) };
}

/// Starts an update of a value several CPUs write (atomic adds, each a full barrier on x86).
#[inline(always)]
unsafe fn begin_shared(started: *mut u64) {
    unsafe { add_u64(started, 1) };
    compiler_barrier();
}

#[inline(always)]
unsafe fn end_shared(done: *mut u64) {
    compiler_barrier();
    unsafe { add_u64(done, 1) };
}

/// `base.add(i)` for `i < OP_COUNT`, with the bound checked in the register that indexes.
///
/// The Rust check above is the real one; this repeats it where the verifier can see it. Left to
/// LLVM, the check and the index used two reloads of a spilled `op`, and 6.1's verifier did not
/// carry the bound from one to the other ("R0 unbounded memory access" in record_hist). In asm the
/// compare, the multiply and the add are on one register, so every verifier sees `i <= 4` there.
/// An `i` out of range (which the caller already excluded) yields `base`.
#[inline(always)]
unsafe fn bounded_index(base: *mut OpHist, i: u64) -> *mut OpHist {
    const _: () = assert!(OP_COUNT == 5 && core::mem::size_of::<OpHist>() == 416);
    let mut p = base as u64;
    let mut i = i;
    unsafe {
        core::arch::asm!(
            "if {i} > 4 goto +2",
            "{i} *= 416",
            "{p} += {i}",
            p = inout(reg) p,
            i = inout(reg) i,
            options(pure, nomem, nostack),
        );
    }
    let _ = i;
    p as *mut OpHist
}

#[inline(always)]
pub(crate) fn record_hist(dev: Device, op: u32, bytes: u32, device_ns: u64, queue_ns: u64, device_slot: usize) {
    if dev.slot != NO_SLOT {
        if let Some((frame, h)) = dense_op(dev.slot, u64::from(op)) {
            let qs = log2_slot(queue_ns / 1000);
            let ss = log2_slot(bytes as u64);
            // This CPU's own copy, written only by the completion program (which the kernel does
            // not re-enter on a CPU): plain adds are exact.
            let n = unsafe { begin_own(&raw mut (*frame).started) };
            let h = unsafe { &mut *h };
            h.count += 1;
            h.device_ns += device_ns;
            h.queue_ns += queue_ns;
            h.bytes += bytes as u64;
            h.device_slots[device_slot] = h.device_slots[device_slot].wrapping_add(1);
            h.queue_slots[qs] = h.queue_slots[qs].wrapping_add(1);
            h.size_slots[ss] = h.size_slots[ss].wrapping_add(1);
            unsafe { end_own(&raw mut (*frame).done, n) };
            return;
        }
    }
    let qs = log2_slot(queue_ns / 1000);
    let ss = log2_slot(bytes as u64);
    let Some(p) = fallback_hist(HistKey { dev: dev.id, op }) else { return };
    // Shared between CPUs: atomic adds.
    unsafe {
        begin_shared(&raw mut (*p).started);
        let h = &raw mut (*p).value;
        add_u64(&raw mut (*h).count, 1);
        add_u64(&raw mut (*h).device_ns, device_ns);
        add_u64(&raw mut (*h).queue_ns, queue_ns);
        add_u64(&raw mut (*h).bytes, bytes as u64);
        add_u32(&raw mut (*h).device_slots[device_slot], 1);
        add_u32(&raw mut (*h).queue_slots[qs], 1);
        add_u32(&raw mut (*h).size_slots[ss], 1);
        end_shared(&raw mut (*p).done);
    }
}

/// The device's fallback entry for `key` (inserted on first use), or `None` counted as a loss.
#[inline(always)]
fn fallback_hist(key: HistKey) -> Option<*mut Framed<OpHist>> {
    if let Some(p) = HISTS.get_ptr_mut(&key) {
        return Some(p);
    }
    let _ = HISTS.insert(&key, &ZERO_HIST, BPF_NOEXIST as u64);
    let p = HISTS.get_ptr_mut(&key);
    if p.is_none() {
        count(LOSS_HIST_UPDATE_FAILED);
    }
    p
}

/// Adds `bytes` of `dev`'s `op` without a request: what earlier pieces of a request completed
/// before it was requeued (a short transfer the driver retries). diskstats counts bytes at each
/// piece (`blk_account_io_completion()`), but the request's last completion sees only the rest:
/// the restart restamps `stats_sectors` (`blk_mq_start_request`), and the start map's entry is
/// renewed at the re-issue. Into the fallback entry, bytes only, for every device (userspace sums
/// the fallback and dense entries of a device): rare, so the shared entry costs nothing per I/O,
/// and this program never writes the per-CPU entries the completion program owns.
/// <https://elixir.bootlin.com/linux/v6.18/source/block/blk-mq.c> (`blk_update_request`)
#[inline(always)]
pub(crate) fn record_carried_bytes(dev: u32, op: u32, bytes: u32) {
    if bytes == 0 {
        return;
    }
    let Some(p) = fallback_hist(HistKey { dev, op }) else { return };
    unsafe {
        begin_shared(&raw mut (*p).started);
        add_u64(&raw mut (*p).value.bytes, u64::from(bytes));
        end_shared(&raw mut (*p).done);
    }
}

/// Adds a completed request to its cgroup's statistics (nothing for cgroup 0: not attributing,
/// or no cgroup known).
#[inline(always)]
pub(crate) fn record_cgroup(cgroup_id: u64, dev: Device, op: u32, bytes: u32, device_ns: u64, device_slot: usize) {
    if cgroup_id == 0 {
        return;
    }
    let key = CgroupKey { cgroup_id, dev: dev.id, op: op as u16, shard: cgroup_shard(dev.line) };
    let p = match CGROUPS.get_ptr_mut(&key) {
        Some(p) => p,
        None => {
            let _ = CGROUPS.insert(&key, &ZERO_CGROUP, BPF_NOEXIST as u64);
            match CGROUPS.get_ptr_mut(&key) {
                Some(p) => p,
                None => {
                    count(LOSS_CGROUP_MAP_FULL);
                    return;
                }
            }
        }
    };
    // Shared between CPUs: atomic adds.
    unsafe {
        begin_shared(&raw mut (*p).started);
        let c = &raw mut (*p).value;
        add_u64(&raw mut (*c).count, 1);
        add_u64(&raw mut (*c).device_ns, device_ns);
        add_u64(&raw mut (*c).bytes, bytes as u64);
        add_u32(&raw mut (*c).device_slots[device_slot], 1);
        end_shared(&raw mut (*p).done);
    }
}

/// `lock xadd` (BPF_ATOMIC_ADD). `core::sync::atomic` has no 64-bit RMW on the bpf target.
#[inline(always)]
pub(crate) unsafe fn add_u64(dst: *mut u64, v: u64) {
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(dst, v) };
}

#[inline(always)]
unsafe fn add_u32(dst: *mut u32, v: u32) {
    unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(dst, v) };
}
