//! Types shared by the kernel programs (`blkio-agent-ebpf`) and userspace (`blkio-agent`).
//!
//! Everything here is `#[repr(C)]` plain data: the same bytes are written by the eBPF programs
//! and read back through aya's map API, so layout changes must be made on both sides at once
//! (they are, since both sides compile this one file).
#![no_std]

mod config;
pub use config::Config;

/// Number of log2 slots in every histogram. Slot `k` holds values `v` with `floor(log2(v)) == k`
/// (slot 0 also holds 0); the last slot also holds everything larger.
/// 32 µs-slots reach 2^32 µs (71 minutes); 32 byte-slots reach 4 GiB requests.
pub const HIST_SLOTS: usize = 32;

/// Request operations, as reported in JSONL and OTLP (`blkio.operation`).
pub const OP_READ: u32 = 0;
pub const OP_WRITE: u32 = 1;
pub const OP_DISCARD: u32 = 2;
pub const OP_FLUSH: u32 = 3;
pub const OP_OTHER: u32 = 4;
pub const OP_COUNT: usize = 5;
pub const OP_NAMES: [&str; OP_COUNT] = ["read", "write", "discard", "flush", "other"];

/// Capacity of the in-flight request map. blk-mq preallocates its requests, so the number of
/// distinct `struct request *` keys is bounded by the tags of all queues; 16k covers 32 devices
/// with 512 requests in flight each on the slow path (the fast path does not use this map). A full map is counted
/// (`LOSS_START_INSERT_FAILED`), never silent. Preallocated: 16k x ~104 B = 1.7 MB.
pub const MAX_INFLIGHT_REQUESTS: u32 = 16_384;
/// Devices that get a dense slot: their histograms live in a per-CPU array of [`DeviceHists`]
/// (32 x 2096 B x 192 CPUs = 12.3 MiB) and their depth in a plain array. An array lookup is an
/// index computation (inlined by the verifier for arrays, and for per-CPU arrays since 6.10),
/// where a hash lookup hashes the key and walks a bucket: on the per-I/O path that difference
/// was about a third of the agent's kernel time (see docs/performance.md).
pub const MAX_DENSE_DEVICES: u32 = 32;
/// Size of the `DEVICE_INDEX` table that maps a device to its dense slot (open addressing,
/// written only by userspace, so the programs never need a compare-and-swap).
pub const DEVICE_INDEX_SIZE: u32 = 256;
/// Positions the programs try before giving up and using the fallback hash maps.
pub const DEVICE_INDEX_PROBES: u32 = 4;
/// Capacity of the fallback per-(device, op) histogram map: devices without a dense slot (the
/// first interval after start or after a hotplug, and devices beyond `MAX_DENSE_DEVICES`). Shared
/// between CPUs with atomic adds, so its memory does not grow with the CPU count. A full map is
/// counted in `hist_update_failed`.
pub const MAX_HIST_KEYS: u32 = 160;
/// Capacity of the fallback per-device in-flight gauge map.
pub const MAX_DEVICES: u32 = 256;

/// Position of probe `probe` for `dev` in `DEVICE_INDEX` (Fibonacci hashing of the device
/// number, then linear probing). The programs and userspace both call this one function.
#[inline(always)]
pub fn device_index_pos(dev: u32, probe: u32) -> u32 {
    const _: () = assert!(DEVICE_INDEX_SIZE == 1 << 8);
    ((dev.wrapping_mul(0x9e37_79b1) >> 24).wrapping_add(probe)) & (DEVICE_INDEX_SIZE - 1)
}

/// A `DEVICE_INDEX` entry: the device in the high half, its slot + 1 in the low half (0 is an
/// empty position).
#[inline(always)]
pub fn device_index_entry(dev: u32, slot: u32) -> u64 {
    (u64::from(dev) << 32) | u64::from(slot + 1)
}

/// The slot of a `DEVICE_INDEX` entry that marks a device the agent does not report (`--devices`
/// excludes it): the programs skip its requests, so it neither costs the fallback path's
/// atomics nor takes fallback entries that new devices need.
pub const IGNORED_SLOT: u32 = u32::MAX - 1;

/// The dense slot an entry gives `dev`: `Some(slot)` on a match (`IGNORED_SLOT` for an ignored
/// device), `None` when the entry belongs to another device or is empty.
#[inline(always)]
pub fn device_index_match(entry: u64, dev: u32) -> Option<u32> {
    let slot = (entry as u32).wrapping_sub(1);
    if entry != 0 && (entry >> 32) as u32 == dev && (slot < MAX_DENSE_DEVICES || slot == IGNORED_SLOT) {
        Some(slot)
    } else {
        None
    }
}
/// Capacity of the per-(cgroup, device, op) attribution map (not preallocated: no memory unless
/// attribution is on).
pub const MAX_CGROUP_KEYS: u32 = 4_096;

/// Indices into the per-CPU `COUNTERS` element. Cumulative, never reset. Their names, metric
/// labels and descriptions are in the agent's one table of kinds (`agent/src/losses.rs`).
pub const LOSS_START_INSERT_FAILED: u32 = 0;
pub const LOSS_COMPLETE_WITHOUT_START: u32 = 1;
pub const LOSS_STALE_EVICTED: u32 = 2;
pub const LOSS_HIST_UPDATE_FAILED: u32 = 3;
pub const LOSS_DEVICE_MAP_FULL: u32 = 4;
pub const LOSS_CGROUP_MAP_FULL: u32 = 5;
/// Not losses but worth showing: requeued requests (removed from tracking, issued again later)
/// and partial completions (the request stays in flight until its last bytes complete).
pub const EVENT_REQUEUED: u32 = 6;
pub const EVENT_PARTIAL_COMPLETION: u32 = 7;
/// Completions counted from the request's own timestamps (the fast path, no start map).
pub const EVENT_FAST_COMPLETION: u32 = 8;
/// Flag self-test (see [`Config::stats_flags_from_btf`]): completions whose `QUEUE_FLAG_STATS`,
/// `RQF_STATS` and `io_start_time_ns` agreed (counted only while the fast path is not yet on) and
/// those that disagreed (always counted: one disagreement keeps or turns the fast path off).
pub const SELFTEST_AGREE: u32 = 9;
pub const SELFTEST_DISAGREE: u32 = 10;
pub const COUNTER_SLOTS: u32 = 11;

/// Index 0 of the `CONTROL` array: the interval epoch. Userspace increments it at each snapshot;
/// programs use its parity to pick which of the two `peak` slots of [`DeviceInflight`] to raise.
pub const CONTROL_EPOCH: u32 = 0;
/// Index 1 of `CONTROL`: a `CLOCK_MONOTONIC` time written by userspace once every program is
/// attached (0 before), a little in the future (see [`ARM_LEAD_NS`]). The fast path counts a
/// request in the depth gauge only when [`gauge_counts_issue`] and [`gauge_counts_end`] say so,
/// so requests already in flight at start are never counted down without having been counted up.
pub const CONTROL_ARMED_NS: u32 = 1;
/// How far ahead of the write userspace sets `CONTROL_ARMED_NS`. The issue and completion
/// decisions agree only if no request can be allocated at or after the armed time before the
/// write is visible; a lead of 50 ms covers a write syscall even on a loaded node (userspace
/// checks the clock after writing and warns when it was late).
pub const ARM_LEAD_NS: u64 = 50_000_000;

/// Whether the issue program counts a request up in the depth gauge.
///
/// The decision is taken from the request's allocation time (`rq->start_time_ns`), which the
/// completion reads back unchanged, so both ends decide alike. Deciding by the issue time
/// instead does not work: the block layer stamps `io_start_time_ns` from the plug's cached
/// clock (`blk_time_get_ns()`), which can predate the issue, so a request issued just after
/// arming could be counted up and never down. A request without an allocation time (a queue
/// with neither iostats nor a scheduler) is decided by the clock now (`now`, only called then),
/// where that plug-clock race remains for requests issued within microseconds of the armed time.
#[inline(always)]
pub fn gauge_counts_issue(armed: u64, allocated: u64, now: impl FnOnce() -> u64) -> bool {
    armed != 0 && if allocated != 0 { allocated >= armed } else { now() >= armed }
}

/// Whether a completion (or requeue) counts the request down: the same rule as
/// [`gauge_counts_issue`], from the same allocation time, or from the block layer's issue time
/// `issued` when the request has no allocation time.
#[inline(always)]
pub fn gauge_counts_end(armed: u64, allocated: u64, issued: u64) -> bool {
    armed != 0 && if allocated != 0 { allocated >= armed } else { issued >= armed }
}
/// Index 2 of `CONTROL`: the fast path is taken for requests allocated from this
/// `CLOCK_MONOTONIC` time on (0: not yet, or never). Decided like the depth gauge (by the
/// request's allocation time, which issue and completion both read), so a request is handled by
/// the fast path at both ends or at neither. Userspace writes it at arming when the stats flags
/// come from BTF, and after the flag self-test passed when they come from the kernel-version table.
pub const CONTROL_FAST_SINCE: u32 = 2;
pub const CONTROL_SLOTS: u32 = 3;

/// Size of the request at issue, in bytes, from `stats_sectors` (its sectors at
/// `blk_mq_start_request`, kept in an `unsigned short`: only the low 16 bits of the sector count,
/// so a discard of 32 MiB or more wraps) and `remaining` (`__data_len` now, which is the whole
/// size unless earlier pieces completed). The size is the smallest sector count not below
/// `remaining` whose low 16 bits are `stats_sectors`: exact for any size as long as less than
/// 32 MiB completed in earlier pieces (blk-mq drivers complete whole requests).
#[inline(always)]
pub fn request_bytes(stats_sectors: u16, remaining: u32) -> u32 {
    let rem = u64::from(remaining) >> 9;
    let sectors = rem + (u64::from(stats_sectors).wrapping_sub(rem) & 0xffff);
    // `__data_len` is a u32 of bytes, so the size at issue fits; saturate rather than wrap anyway.
    (sectors << 9).min(u64::from(u32::MAX)) as u32
}

/// Key of the in-flight request map. In BTF mode `a` is the `struct request *` and `b` is 0;
/// with classic tracepoints (no pointer in the record) it is `(sector, dev)`, which collides for
/// concurrent I/O to one sector of one device — the documented limit of the fallback.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RequestKey {
    pub a: u64,
    pub b: u64,
}

/// What the programs remember about one tracked request between insert/issue and completion.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestStart {
    /// `bpf_ktime_get_ns()` at `block_rq_insert`, 0 when the request was issued directly.
    pub insert_ns: u64,
    /// `bpf_ktime_get_ns()` at `block_rq_issue`, 0 until issued.
    pub issue_ns: u64,
    /// cgroup v2 id of the submitting task (taken at insert, else at issue), 0 when not attributing.
    pub cgroup_id: u64,
    /// `(major << 20) | minor` of the disk.
    pub dev: u32,
    /// One of the `OP_*` values.
    pub op: u32,
    /// Request size in bytes at issue.
    pub bytes: u32,
    /// The depth line of the request's hardware queue ([`queue_line`]), taken at issue.
    pub line: u32,
}

/// Key of the per-(device, op) histogram map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HistKey {
    pub dev: u32,
    pub op: u32,
}

/// Cumulative statistics of completed requests for one (device, op): per CPU in the dense array,
/// shared (atomic adds) in the fallback hash map.
///
/// Slot counters are `u32` to keep per-CPU memory small; they wrap, and userspace takes deltas
/// with `wrapping_sub`, which is exact as long as fewer than 2^32 requests land in one slot on
/// one CPU between two snapshots. `count` and the sums are `u64` and never wrap in practice.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OpHist {
    pub count: u64,
    /// Exact sum of device time (issue -> complete) in nanoseconds.
    pub device_ns: u64,
    /// Exact sum of queue time (insert -> issue) in nanoseconds.
    pub queue_ns: u64,
    /// Exact sum of request bytes.
    pub bytes: u64,
    /// Device time, log2 of microseconds.
    pub device_slots: [u32; HIST_SLOTS],
    /// Queue time, log2 of microseconds (slot 0 for requests that were never queued).
    pub queue_slots: [u32; HIST_SLOTS],
    /// Request size, log2 of bytes.
    pub size_slots: [u32; HIST_SLOTS],
}

impl OpHist {
    pub const ZERO: OpHist = OpHist {
        count: 0,
        device_ns: 0,
        queue_ns: 0,
        bytes: 0,
        device_slots: [0; HIST_SLOTS],
        queue_slots: [0; HIST_SLOTS],
        size_slots: [0; HIST_SLOTS],
    };

    /// Each histogram holds `count` requests, as every whole update leaves them (compared in
    /// `u32`, the width the slots wrap at).
    pub fn buckets_agree(&self) -> bool {
        let sum = |s: &[u32; HIST_SLOTS]| s.iter().fold(0u32, |a, &v| a.wrapping_add(v));
        let count = self.count as u32;
        sum(&self.device_slots) == count && sum(&self.queue_slots) == count && sum(&self.size_slots) == count
    }
}

/// Every op of one device: one element of the dense per-CPU array, so userspace reads a device
/// with one lookup (per-CPU values are copied out per element: fewer, larger reads).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DeviceHists {
    pub ops: [OpHist; OP_COUNT],
}

/// A map value between two write counters, so that userspace can tell a copy taken while a
/// program was half-way through its update (the count raised, a bucket not yet) from a whole one.
///
/// The kernel copies a map value out without stopping the programs (per-CPU values with
/// `bpf_long_memcpy`, word by word, lowest address first). A program raises `started`, updates
/// `value`, then raises `done`; the copy reads `done` first and `started` last. If the two are
/// equal, every update that had begun when `started` was read had ended before `done` was read,
/// so no update overlapped the copy of `value` (x86-64 keeps stores, and loads, in program order;
/// the programs put compiler barriers between the three steps). With atomic increments this holds
/// for several CPUs updating one shared value too. The same idea as the kernel's
/// `u64_stats_sync`; a torn copy is simply read again.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Framed<T> {
    pub done: u64,
    pub value: T,
    pub started: u64,
}

impl<T> Framed<T> {
    pub const fn new(value: T) -> Self {
        Framed { done: 0, value, started: 0 }
    }

    /// No update overlapped the copy (see the type's documentation).
    pub fn settled(&self) -> bool {
        self.done == self.started
    }
}

/// In-flight gauge of one device, shared by all CPUs (atomic adds).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DeviceInflight {
    /// Requests issued and not yet completed, among those tracked since the agent started.
    pub inflight: i64,
    /// Highest `inflight` seen, one slot per epoch parity (see [`CONTROL_EPOCH`]).
    /// Signed: while a device's requests issued before it got its dense slot are in flight, its
    /// dense entry runs below the true depth (userspace adds the fallback entry back), and peaks
    /// reached there must still be recorded.
    pub peak: [i64; 2],
    /// The epoch each `peak` slot belongs to. The programs restart a slot when it holds an
    /// older epoch, so userspace never writes this struct (which would race with the adds).
    pub peak_epoch: [u64; 2],
    /// Requests the programs counted down because they saw them issued again while still counted
    /// in flight: their completion was never seen. Cumulative; userspace matches it with what the
    /// reconciliation with diskstats finds, so that the depth is not corrected twice.
    pub evicted: u64,
}

/// Depth lines per dense device: one per hardware queue (`rq->mq_hctx->queue_num` modulo this;
/// line 0 in tracepoint mode, which has no request pointer).
///
/// A line is written at every issue and completion of its queue's requests, so only the CPUs the
/// block layer maps to that queue write it: on a multi-queue NVMe each line stays in one core's
/// cache (the queue's submission and completion both run on its CPUs), where one line per device
/// moved between every core that did I/O. The device's depth is the sum of its lines; its peak
/// lies between the highest line peak and the sum of the line peaks (equal when one line moved),
/// see `docs/performance.md` ("Depth per hardware queue"). 64 lines: at most 3 queues share a
/// line on a 192-CPU node, and 32 devices cost 128 KiB.
pub const QUEUE_LINES: usize = 64;

/// One hardware queue's gauge, alone on its 64-byte cache line (the array is `BPF_F_MMAPABLE`,
/// which page-aligns its values).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct QueueLine {
    pub gauge: DeviceInflight,
    /// The queue's requests counted in `gauge`, one bit per tag (see [`TagMark`]).
    pub tags: [u64; 2],
}

const _: () = assert!(core::mem::size_of::<QueueLine>() == 64);
const _: () = assert!(QUEUE_LINES.is_power_of_two());

/// Every queue line of one dense device: one element of `DENSE_INFLIGHT`, read with one lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DeviceQueues {
    pub lines: [QueueLine; QUEUE_LINES],
}

impl Default for DeviceQueues {
    fn default() -> Self {
        DeviceQueues { lines: [QueueLine::default(); QUEUE_LINES] }
    }
}

/// The line of hardware queue `queue_num`.
#[inline(always)]
pub fn queue_line(queue_num: u32) -> u32 {
    queue_num & (QUEUE_LINES as u32 - 1)
}

/// Tags below this are marked on their queue's line ([`QueueLine::tags`]); requests with higher
/// tags go to the outstanding table ([`OUTSTANDING_SIZE`]).
pub const TAG_BITS: u32 = 128;

/// Where a fast-path request counted in its queue line's gauge is marked, when its tag says so.
///
/// Marking a request in the outstanding table costs a cache line that the issuing and the
/// completing CPU pass between them at every I/O. The queue's gauge line already moves that way,
/// and has 16 bytes to spare: one bit per tag below [`TAG_BITS`]. A tag names one request of
/// its queue at a time (the block layer frees it only after the completion, where the programs
/// clear the bit), so an issue that finds its tag's bit still set knows the tag's last holder
/// completed unseen, as the table knew from its request pointer. Only the tag's holder changes
/// its bit, so setting it is an atomic add of `mask` to a word whose bit is clear and clearing
/// it an add of `-mask` where it is set: no carry or borrow reaches another tag's bit (BPF
/// ISA v1, which rustc links for, has no atomic or; nor has 5.10's verifier).
///
/// The tag is `internal_tag` when the queue has a scheduler (the scheduler tag, held from
/// allocation to free; the driver tag is released before the requeue tracepoint,
/// `__blk_mq_requeue_request`), else `tag` (the driver tag, which is then the allocation tag).
/// A line holds one queue's tags only when the queue number is below [`QUEUE_LINES`]; tags
/// shared by every queue of a host (`BLK_MQ_F_TAG_HCTX_SHARED`) are unique across its lines too.
/// <https://elixir.bootlin.com/linux/v6.18/source/block/blk-mq.c> (`__blk_mq_requeue_request`,
/// `blk_mq_free_request`)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TagMark {
    /// Index into [`QueueLine::tags`].
    pub word: u32,
    pub mask: u64,
}

impl TagMark {
    /// No mark on the line: the request goes to the outstanding table. (A plain value rather
    /// than an `Option` in the programs: the verifier rejects reading the uninitialized payload
    /// LLVM leaves in a `None`.)
    pub const NONE: TagMark = TagMark { word: 0, mask: 0 };

    /// The mark of a request with scheduler tag `internal_tag` and driver tag `tag` (each -1 for
    /// none, `BLK_MQ_NO_TAG`) on hardware queue `queue_num`; `None` when it goes to the table.
    #[inline(always)]
    pub fn of(internal_tag: i32, tag: i32, queue_num: u32) -> Option<TagMark> {
        let t = if internal_tag >= 0 { internal_tag } else { tag };
        if t < 0 || t as u32 >= TAG_BITS || queue_num as usize >= QUEUE_LINES {
            return None;
        }
        let t = t as u32;
        Some(TagMark { word: (t >> 6) & 1, mask: 1 << (t & 63) })
    }

    /// What an issue adds to the word that read `word`: `mask` to set the bit, or `None` when
    /// the bit is still set (its last holder's completion was unseen: count that one down).
    #[inline(always)]
    pub fn issue_add(self, word: u64) -> Option<u64> {
        if word & self.mask == 0 { Some(self.mask) } else { None }
    }

    /// What a completion or requeue adds to the word that read `word`: `-mask` to clear the bit,
    /// `None` when it is not set (the request was not marked).
    #[inline(always)]
    pub fn end_add(self, word: u64) -> Option<u64> {
        if word & self.mask != 0 { Some(self.mask.wrapping_neg()) } else { None }
    }
}

/// Size of the fast path's table of requests in flight: direct-mapped, one `u64` per entry.
///
/// The fast path keeps no per-request state, so a completion the kernel did not show the programs
/// would leave its request on the depth gauge until the reconciliation with diskstats finds it
/// (late, under sustained load). Instead, issue marks the request here and completion and
/// requeue clear its mark; an issue that finds its own request still marked knows that request's
/// last completion was never seen, and counts it down at once. An entry is the request pointer
/// with the device's dense slot in its low bits, stored with one 64-bit write, so a mark is never
/// mixed from two requests; two requests on one entry only forget the older mark (the
/// reconciliation still finds that completion). 2^15 entries (256 KiB) keep that rare at the
/// thousands of requests in flight of a large NVMe server.
pub const OUTSTANDING_SIZE: u32 = 1 << 15;
/// Low bits of a `struct request *` that are always 0: blk-mq places requests at multiples of
/// the cache line (`blk_mq_alloc_rqs` rounds `rq_size` up to `cache_line_size()`), and flush
/// requests come from `kzalloc`, naturally aligned for their size. A pointer with one of these
/// bits set is not marked.
/// <https://elixir.bootlin.com/linux/v6.18/source/block/blk-mq.c> (`blk_mq_alloc_rqs`)
pub const OUTSTANDING_LOW_MASK: u64 = 0x3f;

// Slot + 1 must fit in the low bits.
const _: () = assert!((MAX_DENSE_DEVICES as u64) < OUTSTANDING_LOW_MASK);

/// The entry of `rq` in the outstanding table: its cache-line number, modulo the table size.
///
/// Not hashed, on purpose: a tag set's requests are contiguous (`blk_mq_alloc_rqs`), so the
/// entries of one queue's requests are a few KiB of the table that stay in cache, where a hash
/// would send every I/O to a random line of the table. Requests 2 MiB apart share an entry,
/// which only loses marks.
#[inline(always)]
pub fn outstanding_pos(rq: u64) -> u32 {
    ((rq >> 6) as u32) & (OUTSTANDING_SIZE - 1)
}

/// `rq`'s mark, naming dense slot `slot`; `None` when `rq` cannot be marked.
#[inline(always)]
pub fn outstanding_mark(rq: u64, slot: u32) -> Option<u64> {
    if rq & OUTSTANDING_LOW_MASK != 0 || rq == 0 || slot >= MAX_DENSE_DEVICES {
        return None;
    }
    Some(rq | (u64::from(slot) + 1))
}

/// The dense slot in `entry` if it is `rq`'s mark.
#[inline(always)]
pub fn outstanding_match(entry: u64, rq: u64) -> Option<u32> {
    let slot = entry & OUTSTANDING_LOW_MASK;
    if rq != 0 && slot != 0 && entry & !OUTSTANDING_LOW_MASK == rq { Some(slot as u32 - 1) } else { None }
}

/// Key of the per-cgroup attribution map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CgroupKey {
    pub cgroup_id: u64,
    pub dev: u32,
    /// One of the `OP_*` values.
    pub op: u16,
    /// [`cgroup_shard`] of the request's hardware queue: userspace sums a series' shards.
    pub shard: u16,
}

/// Entries one (cgroup, device, op) series is spread over. One pod doing all of a device's I/O
/// from many CPUs would otherwise put every completion's atomic adds on one shared line; split
/// by hardware queue (the queue's CPUs complete its requests), 8 lines share the load. The map's
/// `MAX_CGROUP_KEYS` then hold at least 512 series even when every one of them uses every queue
/// (a series only takes the shards of the queues it used).
pub const CGROUP_SHARDS: u32 = 8;

/// The attribution shard of a request on depth line `line`.
#[inline(always)]
pub fn cgroup_shard(line: u32) -> u16 {
    (line & (CGROUP_SHARDS - 1)) as u16
}

/// Cumulative statistics of completed requests submitted from one cgroup (atomic adds).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CgroupStats {
    pub count: u64,
    pub device_ns: u64,
    pub bytes: u64,
    pub _pad: u64,
    /// Device time, log2 of microseconds; `u32` that wrap, as in [`OpHist`] (deltas are exact
    /// below 2^32 requests per slot between two reads). Half the memory of `u64`: the map is
    /// preallocated for `MAX_CGROUP_KEYS` entries.
    pub device_slots: [u32; HIST_SLOTS],
}

impl CgroupStats {
    pub const ZERO: CgroupStats =
        CgroupStats { count: 0, device_ns: 0, bytes: 0, _pad: 0, device_slots: [0; HIST_SLOTS] };

    /// The buckets hold `count` requests, as every whole update leaves them (in `u32`).
    pub fn buckets_agree(&self) -> bool {
        self.device_slots.iter().fold(0u32, |a, &v| a.wrapping_add(v)) == self.count as u32
    }
}

/// `floor(log2(v))` clamped to the last slot; 0 for 0 and 1.
///
/// Branch-free on purpose: a chain of `if`s (as in libbpf-tools' `log2l`) gives the verifier 2^6
/// distinct precise states per call, and three calls on the completion path multiply into a
/// verification that does not finish. Here the top bit is isolated with shifts, mapped to its
/// index by a de Bruijn multiplication, and the index goes through a table that already clamps.
#[inline(always)]
pub fn log2_slot(v: u64) -> usize {
    let mut v = v;
    v |= v >> 1;
    v |= v >> 2;
    v |= v >> 4;
    v |= v >> 8;
    v |= v >> 16;
    v |= v >> 32;
    let top = v - (v >> 1);
    let idx = (top.wrapping_mul(DEBRUIJN64) >> 58) as usize;
    // Volatile so LLVM cannot use its knowledge of the table to drop the mask: the verifier
    // needs to see `& (HIST_SLOTS - 1)` to bound the array index that follows.
    let slot = unsafe { core::ptr::read_volatile(&LOG2_CLAMPED[idx & 63]) } as usize;
    slot & (HIST_SLOTS - 1)
}

const _: () = assert!(HIST_SLOTS.is_power_of_two());

const DEBRUIJN64: u64 = 0x03f7_9d71_b4cb_0a89;

/// `LOG2_CLAMPED[(2^k * DEBRUIJN64) >> 58] == min(k, HIST_SLOTS - 1)`.
static LOG2_CLAMPED: [u8; 64] = {
    let mut t = [0u8; 64];
    let mut k = 0;
    while k < 64 {
        let idx = ((1u64 << k).wrapping_mul(DEBRUIJN64) >> 58) as usize;
        t[idx] = if k < HIST_SLOTS { k as u8 } else { (HIST_SLOTS - 1) as u8 };
        k += 1;
    }
    t
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all are repr(C) plain integers with explicit padding fields.
    unsafe impl aya::Pod for RequestKey {}
    unsafe impl aya::Pod for RequestStart {}
    unsafe impl aya::Pod for HistKey {}
    unsafe impl aya::Pod for OpHist {}
    unsafe impl aya::Pod for DeviceHists {}
    unsafe impl aya::Pod for DeviceInflight {}
    unsafe impl aya::Pod for DeviceQueues {}
    unsafe impl aya::Pod for CgroupKey {}
    unsafe impl aya::Pod for CgroupStats {}
    // SAFETY: `T` is Pod and a multiple of 8 bytes (asserted below), so no padding is added.
    unsafe impl<T: aya::Pod> aya::Pod for Framed<T> {}
    const _: () = assert!(
        core::mem::size_of::<OpHist>().is_multiple_of(8)
            && core::mem::size_of::<DeviceHists>().is_multiple_of(8)
            && core::mem::size_of::<CgroupStats>().is_multiple_of(8)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outstanding_marks_name_their_request_and_slot_only() {
        let rq = 0xffff_8881_2345_6780u64;
        let mark = outstanding_mark(rq, 0).unwrap();
        assert_eq!(outstanding_match(mark, rq), Some(0));
        assert_eq!(outstanding_match(outstanding_mark(rq, 31).unwrap(), rq), Some(31));
        assert_eq!(outstanding_match(mark, rq + 64), None, "another request on the same entry");
        assert_eq!(outstanding_match(0, rq), None, "a cleared entry");
        assert_eq!(outstanding_match(0, 0), None);
        assert_eq!(outstanding_mark(rq + 8, 0), None, "not cache-line aligned: not marked");
        assert_eq!(outstanding_mark(rq, MAX_DENSE_DEVICES), None);
        assert_eq!(outstanding_mark(0, 0), None);
        // Neighbouring requests (one tag set: consecutive cache-line multiples) never share.
        let rq_size = 384u64;
        let mut pos = [0u32; 1024];
        for (i, p) in pos.iter_mut().enumerate() {
            *p = outstanding_pos(rq + i as u64 * rq_size);
        }
        assert!(pos.iter().all(|&p| p < OUTSTANDING_SIZE));
        pos.sort_unstable();
        let distinct = 1 + pos.windows(2).filter(|w| w[0] != w[1]).count();
        assert_eq!(distinct, 1024);
        assert_eq!(outstanding_pos(rq), outstanding_pos(rq + (64 << 15)), "2 MiB apart: one entry");
    }

    #[test]
    fn tag_marks_pick_the_scheduler_tag_and_stay_on_their_own_line() {
        assert_eq!(TagMark::of(-1, 0, 0), Some(TagMark { word: 0, mask: 1 }));
        assert_eq!(TagMark::of(-1, 63, 0), Some(TagMark { word: 0, mask: 1 << 63 }));
        assert_eq!(TagMark::of(-1, 64, 0), Some(TagMark { word: 1, mask: 1 }));
        assert_eq!(TagMark::of(-1, 127, 63), Some(TagMark { word: 1, mask: 1 << 63 }));
        assert_eq!(TagMark::of(5, 70, 0), Some(TagMark { word: 0, mask: 1 << 5 }), "scheduler tag first");
        assert_eq!(TagMark::of(5, -1, 0), TagMark::of(5, 9, 0), "driver tag released before requeue");
        assert_eq!(TagMark::of(-1, 128, 0), None, "beyond the line's bits: the table");
        assert_eq!(TagMark::of(200, 3, 0), None, "a high scheduler tag is not replaced by the driver tag");
        assert_eq!(TagMark::of(-1, -1, 0), None, "no tag");
        assert_eq!(TagMark::of(-1, 3, QUEUE_LINES as u32), None, "a line shared by two queues");
    }

    /// A model of one line under every interleaving of three tags' lifetimes, with unseen
    /// completions: the gauge plus the evictions always equal the requests really in flight,
    /// and no bit ever leaks into another tag's.
    #[test]
    fn tag_marks_keep_the_gauge_exact_through_unseen_completions() {
        let mut words = [0u64; 2];
        let mut gauge = 0i64;
        let mut in_flight = [false; 3];
        let tags = [0, 63, 64];
        // A fixed pseudo-random schedule: (tag index, event), event 0 issue, 1 completion,
        // 2 completion the programs do not see.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x % 3) as usize;
            let m = TagMark::of(-1, tags[i], 7).unwrap();
            let w = &mut words[m.word as usize];
            if !in_flight[i] {
                match m.issue_add(*w) {
                    Some(add) => *w = w.wrapping_add(add),
                    None => gauge -= 1,
                }
                gauge += 1;
                in_flight[i] = true;
            } else if (x >> 8).is_multiple_of(4) {
                in_flight[i] = false;
            } else {
                if let Some(add) = m.end_add(*w) {
                    *w = w.wrapping_add(add);
                }
                gauge -= 1;
                in_flight[i] = false;
            }
            let unseen_marked = |j: usize| {
                let m = TagMark::of(-1, tags[j], 7).unwrap();
                !in_flight[j] && words[m.word as usize] & m.mask != 0
            };
            let real = in_flight.iter().filter(|&&f| f).count() as i64;
            let lost = (0..3).filter(|&j| unseen_marked(j)).count() as i64;
            assert_eq!(gauge, real + lost, "the gauge is off by exactly the marks still awaiting eviction");
            assert_eq!(words[0] & !(1 | 1 << 63) | words[1] & !1, 0, "no other bit set");
        }
    }

    #[test]
    fn log2_slot_edges() {
        assert_eq!(log2_slot(0), 0);
        assert_eq!(log2_slot(1), 0);
        assert_eq!(log2_slot(2), 1);
        assert_eq!(log2_slot(3), 1);
        assert_eq!(log2_slot(4), 2);
        for k in 1..HIST_SLOTS as u32 {
            assert_eq!(log2_slot((1u64 << k) - 1), (k - 1) as usize, "2^{k}-1");
            assert_eq!(log2_slot(1u64 << k), k as usize, "2^{k}");
        }
        assert_eq!(log2_slot(1u64 << 40), HIST_SLOTS - 1);
        assert_eq!(log2_slot(u64::MAX), HIST_SLOTS - 1);
        // Against the obvious definition, around every power of two.
        for k in 0..64u32 {
            for v in [(1u64 << k).wrapping_sub(1), 1u64 << k, (1u64 << k) | 1] {
                let naive = if v <= 1 { 0 } else { 63 - v.leading_zeros() as usize };
                assert_eq!(log2_slot(v), naive.min(HIST_SLOTS - 1), "v={v}");
            }
        }
    }

    /// Every order of arming, allocation, issue and completion: a request is counted down
    /// exactly when it was counted up. (The armed time lies ahead of the write, so a request
    /// allocated at or after it is issued after the write: `ARM_LEAD_NS`.)
    #[test]
    fn gauge_decisions_agree_across_arming() {
        let write_at = 1_000;
        let armed = write_at + ARM_LEAD_NS;
        let mut checked = 0;
        for allocated in [10, write_at - 1, write_at + 1, armed - 1, armed, armed + 5] {
            for issue_delay in [0, 3, ARM_LEAD_NS] {
                let issue_runs = allocated + issue_delay;
                // Stamps may come from a plug's cached clock: anything up to the real time.
                for issued in [allocated, issue_runs, issue_runs.saturating_sub(7)] {
                    let armed_seen = if issue_runs >= write_at { armed } else { 0 };
                    let up =
                        gauge_counts_issue(armed_seen, allocated, || panic!("clock read with an allocation stamp"));
                    assert_eq!(
                        up,
                        gauge_counts_end(armed, allocated, issued),
                        "allocated={allocated} issue_runs={issue_runs} issued={issued}"
                    );
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 6 * 3 * 3);
        // No allocation stamp: decided by the clock, agreeing whenever the block layer's stamp is
        // the real issue time.
        for issue_runs in [10, write_at, armed - 1, armed, armed + 9] {
            let armed_seen = if issue_runs >= write_at { armed } else { 0 };
            assert_eq!(
                gauge_counts_issue(armed_seen, 0, || issue_runs),
                gauge_counts_end(armed, 0, issue_runs),
                "issue_runs={issue_runs}"
            );
        }
        assert!(!gauge_counts_issue(0, 5, || 5) && !gauge_counts_end(0, 5, 5), "nothing counts before arming");
        assert!(gauge_counts_issue(armed, armed, || 0) && gauge_counts_end(armed, armed, 0));
        assert!(!gauge_counts_issue(armed, armed - 1, || 0) && !gauge_counts_end(armed, armed - 1, armed + 1));
    }

    #[test]
    fn request_bytes_undo_the_u16_sector_wrap() {
        let sectors = |b: u32| ((b >> 9) & 0xffff) as u16;
        for size in [512u32, 4096, 1 << 20, (32 << 20) - 512, 32 << 20, (32 << 20) + 4096, 1 << 30, !511] {
            assert_eq!(request_bytes(sectors(size), size), size, "whole completion of {size}");
        }
        // Completed in pieces: the last piece still gives the size at issue.
        assert_eq!(request_bytes(sectors(1 << 20), 4096), 1 << 20);
        assert_eq!(request_bytes(sectors(64 << 20), (64 << 20) - (16 << 20)), 64 << 20);
    }

    #[test]
    fn device_index_round_trips_and_rejects_others() {
        let dev = (259 << 20) | 3;
        let e = device_index_entry(dev, 7);
        assert_eq!(device_index_match(e, dev), Some(7));
        assert_eq!(device_index_match(e, dev + 1), None);
        assert_eq!(device_index_match(0, 0), None, "an empty position matches nothing, not even 0:0");
        assert_eq!(device_index_match(device_index_entry(0, 0), 0), Some(0), "0:0 can be registered");
        assert_eq!(device_index_match(device_index_entry(dev, MAX_DENSE_DEVICES), dev), None);
        assert_eq!(device_index_match(device_index_entry(dev, IGNORED_SLOT), dev), Some(IGNORED_SLOT));
        assert_eq!(device_index_match(device_index_entry(dev, IGNORED_SLOT), dev + 1), None);
        // Probes stay in the table and wrap.
        for d in [0, dev, u32::MAX] {
            for p in 0..DEVICE_INDEX_PROBES {
                assert!(device_index_pos(d, p) < DEVICE_INDEX_SIZE);
            }
            assert_eq!(device_index_pos(d, 1), (device_index_pos(d, 0) + 1) % DEVICE_INDEX_SIZE);
        }
    }

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<RequestStart>(), 40);
        assert_eq!(core::mem::size_of::<OpHist>(), 32 + 3 * 4 * HIST_SLOTS);
        assert_eq!(core::mem::size_of::<DeviceHists>(), OP_COUNT * core::mem::size_of::<OpHist>());
        assert_eq!(core::mem::size_of::<CgroupStats>(), 32 + 4 * HIST_SLOTS);
        assert_eq!(core::mem::size_of::<Framed<DeviceHists>>(), 16 + core::mem::size_of::<DeviceHists>());
        assert_eq!(core::mem::size_of::<DeviceInflight>(), 48);
        assert_eq!(core::mem::size_of::<CgroupKey>(), 16);
    }
}
