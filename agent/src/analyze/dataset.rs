//! Parsed snapshots, kept per (node, device) as compact interval records. Each parser thread
//! fills its own `Dataset`; they are merged, then put in time order by `finalize`.

use std::collections::HashMap;

use super::validate::{time_mismatch, validate};
use crate::snapshot::Snapshot;

/// Slots the analyzer accepts: a log2 µs slot above 63 cannot come from a u64 latency.
pub const SLOTS: usize = 64;

/// How many bad lines are kept with their reason (all of them are counted).
const SKIPPED_KEPT: usize = 1000;

/// Marks "absent" in the integer columns of [`Rec`] (seed files lack `peak`, some devices lack
/// an `inflight` entry).
pub const NONE: u64 = u64::MAX;

/// Ops in the order charts and summaries list them; anything else counts as `other`.
pub const OPS: [&str; 5] = ["read", "write", "discard", "flush", "other"];

/// Which snapshots and devices the run looks at (`--from/--to`, `--device`).
#[derive(Debug, Default)]
pub struct Filter {
    pub include: Vec<glob::Pattern>,
    pub exclude: Vec<glob::Pattern>,
    pub from: Option<f64>,
    pub to: Option<f64>,
}

impl Filter {
    pub fn device_ok(&self, name: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|p| p.matches(name)))
            && !self.exclude.iter().any(|p| p.matches(name))
    }

    fn time_ok(&self, ts: f64) -> bool {
        self.from.is_none_or(|f| ts >= f) && self.to.is_none_or(|t| ts <= t)
    }
}

/// A line that was not used, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Skip {
    pub file: u32,
    pub line: u64,
    pub reason: String,
}

/// One device in one snapshot. `origin` (file << 40 | line) makes duplicate handling
/// deterministic whatever thread parsed the line.
#[derive(Debug, Clone, Copy)]
pub struct Rec {
    pub ts: f64,
    pub dur: f64,
    pub origin: u64,
    pub total: u64,
    /// Exact latency sum in µs; NaN when the input had none (seed schema).
    pub sum_us: f64,
    pub slot_off: u32,
    pub slot_len: u8,
    pub inflight: u64,
    pub peak: u64,
    /// `peak_upper` (the interval's I/O used several hardware queues), else NONE.
    pub peak_upper: u64,
    /// `op_recs[ops_off..ops_off + ops_len]` of the device hold this record's ops.
    pub ops_off: u32,
    pub ops_len: u8,
}

/// The highest in-flight depth over some records. `peak`: the highest the device certainly had
/// (each record's `peak`, or its end-of-interval `count` where the input has no `peak`).
/// `upper`: the highest any record allows (its `peak_upper` where its I/O used several hardware
/// queues and the agent could only bound the device's peak, docs/performance.md), shown only
/// when above `peak`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PeakDepth {
    pub peak: Option<u64>,
    bound: Option<u64>,
}

impl PeakDepth {
    pub fn add(&mut self, r: &Rec) {
        let known = [r.inflight, r.peak].into_iter().filter(|&v| v != NONE).max();
        if let Some(v) = known {
            self.peak = Some(self.peak.map_or(v, |p| p.max(v)));
        }
        if let Some(u) = known.max(Some(r.peak_upper).filter(|&u| u != NONE)) {
            self.bound = Some(self.bound.map_or(u, |b| b.max(u)));
        }
    }

    /// The upper bound of the peak when it is above `peak`.
    pub fn upper(&self) -> Option<u64> {
        self.bound.filter(|&b| self.peak.is_some_and(|p| b > p))
    }

    /// `peak`, or `peak-upper` when bounded; `-` without depth data.
    pub fn cell(&self) -> String {
        match (self.peak, self.upper()) {
            (None, _) => "-".into(),
            (Some(p), None) => p.to_string(),
            (Some(p), Some(u)) => format!("{p}-{u}"),
        }
    }
}

/// One op of one record (`ops[]` of the agent's schema): exact counts and sums, and its
/// device-time and size buckets in [`DeviceSeries::slots`].
#[derive(Debug, Clone, Copy)]
pub struct OpRec {
    /// Index into [`OPS`].
    pub op: u8,
    pub count: u64,
    pub bytes: u64,
    /// Exact sums of device time (issue -> complete) and queue time (insert -> issue), µs.
    pub device_us: f64,
    pub queue_us: f64,
    pub dev_off: u32,
    pub dev_len: u8,
    pub size_off: u32,
    pub size_len: u8,
}

#[derive(Debug, Clone, Copy)]
pub struct SlotCount {
    pub slot: u8,
    pub count: u64,
}

#[derive(Debug, Default)]
pub struct DeviceSeries {
    pub id: u64,
    pub name: String,
    pub recs: Vec<Rec>,
    /// Non-empty buckets of all records, addressed by `Rec::slot_off/slot_len` and by the
    /// `OpRec` offsets.
    pub slots: Vec<SlotCount>,
    /// Per-op detail of all records, addressed by `Rec::ops_off/ops_len`.
    pub op_recs: Vec<OpRec>,
}

impl DeviceSeries {
    pub fn rec_slots(&self, r: &Rec) -> &[SlotCount] {
        &self.slots[r.slot_off as usize..r.slot_off as usize + r.slot_len as usize]
    }

    /// Adds a record's buckets into per-slot counts.
    pub fn add_into(&self, r: &Rec, acc: &mut [u64; SLOTS]) {
        for s in self.rec_slots(r) {
            acc[s.slot as usize] += s.count;
        }
    }

    /// The record's per-op detail (empty when the input has no `ops`: the seed's schema).
    pub fn rec_op_detail(&self, r: &Rec) -> &[OpRec] {
        &self.op_recs[r.ops_off as usize..r.ops_off as usize + r.ops_len as usize]
    }

    /// Completions per op in [`OPS`] order, when the input has `ops`.
    pub fn rec_ops(&self, r: &Rec) -> Option<[u64; 5]> {
        if r.ops_len == 0 {
            return None;
        }
        let mut out = [0u64; 5];
        for o in self.rec_op_detail(r) {
            out[o.op as usize] += o.count;
        }
        Some(out)
    }

    /// Whether any record carries per-op detail.
    pub fn has_ops(&self) -> bool {
        !self.op_recs.is_empty()
    }

    pub fn op_slots(&self, o: &OpRec, acc: &mut [u64; SLOTS]) {
        for s in &self.slots[o.dev_off as usize..o.dev_off as usize + o.dev_len as usize] {
            acc[s.slot as usize] += s.count;
        }
    }

    pub fn size_slots(&self, o: &OpRec, acc: &mut [u64; SLOTS]) {
        for s in &self.slots[o.size_off as usize..o.size_off as usize + o.size_len as usize] {
            acc[s.slot as usize] += s.count;
        }
    }
}

/// A snapshot of one node: every snapshot counts as observed time for all of its devices, so
/// a device missing from `latency_histogram` had no completions then (charts show 0, not a gap).
#[derive(Debug, Clone, Copy)]
pub struct Tick {
    pub ts: f64,
    pub dur: f64,
    pub origin: u64,
}

#[derive(Debug, Default)]
pub struct NodeData {
    pub name: Option<String>,
    pub devices: Vec<DeviceSeries>,
    /// (device id) -> [(device name, index in `devices`, or None when filtered out)].
    index: HashMap<u64, Vec<(String, Option<usize>)>>,
    pub timeline: Vec<Tick>,
}

impl NodeData {
    fn device(&mut self, id: u64, name: &str, filter: &Filter) -> Option<usize> {
        let list = self.index.entry(id).or_default();
        if let Some((_, idx)) = list.iter().find(|(n, _)| n == name) {
            return *idx;
        }
        let idx = filter.device_ok(name).then(|| {
            self.devices.push(DeviceSeries { id, name: name.to_string(), ..Default::default() });
            self.devices.len() - 1
        });
        list.push((name.to_string(), idx));
        idx
    }
}

#[derive(Debug, Default)]
pub struct Dataset {
    pub nodes: Vec<NodeData>,
    node_index: HashMap<Option<String>, usize>,
    pub skipped: Vec<Skip>,
    pub skipped_count: u64,
    /// Lines that were valid snapshots inside the time range.
    pub snapshots: u64,
    /// Valid snapshots outside `--from/--to`.
    pub out_of_range: u64,
    /// Records dropped because the same (node, device, timestamp) was read twice.
    pub duplicates: u64,
    /// Snapshots whose `timestamp` and `iso_timestamp` disagree: kept (by `timestamp`), flagged.
    pub mismatches: Vec<Skip>,
    pub mismatch_count: u64,
}

impl Dataset {
    pub fn skip(&mut self, file: u32, line: u64, reason: String) {
        self.skipped_count += 1;
        if self.skipped.len() < SKIPPED_KEPT {
            self.skipped.push(Skip { file, line, reason });
        }
    }

    /// Parses one line; bad lines are recorded, never fatal.
    pub fn ingest_line(&mut self, filter: &Filter, file: u32, line: u64, bytes: &[u8]) {
        let text = bytes.trim_ascii();
        if text.is_empty() {
            return; // a blank line carries no record, so it is not a loss
        }
        if memchr::memchr(0, text).is_some() {
            // The seed's writer preallocates with NULs; a crash leaves them in place.
            self.skip(file, line, "NUL bytes (unwritten space of a preallocated file)".into());
            return;
        }
        let snap: Snapshot = match serde_json::from_slice(text) {
            Ok(s) => s,
            Err(_) if text[0] == b'[' => {
                let reason =
                    "a JSON array, not a snapshot object: JSONL is one object per line (convert with `jq -c '.[]'`)";
                self.skip(file, line, reason.into());
                return;
            }
            Err(_) if looks_pretty(text) => {
                let reason = "looks like pretty-printed JSON; JSONL is one object per line (convert with `jq -c .`)";
                self.skip(file, line, reason.into());
                return;
            }
            Err(e) => {
                use serde_json::error::Category;
                let what = match e.classify() {
                    Category::Eof => "torn line (JSON ends early)",
                    Category::Syntax | Category::Io => "not JSON",
                    Category::Data => "not a snapshot (wrong type or missing key)",
                };
                self.skip(file, line, format!("{what}: {e}"));
                return;
            }
        };
        if let Err(reason) = validate(&snap) {
            self.skip(file, line, reason);
            return;
        }
        if let Some(reason) = time_mismatch(&snap) {
            self.mismatch_count += 1;
            if self.mismatches.len() < SKIPPED_KEPT {
                self.mismatches.push(Skip { file, line, reason });
            }
        }
        if !filter.time_ok(snap.timestamp) {
            self.out_of_range += 1;
            return;
        }
        self.snapshots += 1;
        self.add_snapshot(filter, (file as u64) << 40 | line, snap);
    }

    fn add_snapshot(&mut self, filter: &Filter, origin: u64, snap: Snapshot) {
        let node_idx = match self.node_index.get(&snap.node) {
            Some(&i) => i,
            None => {
                self.nodes.push(NodeData { name: snap.node.clone(), ..Default::default() });
                self.node_index.insert(snap.node.clone(), self.nodes.len() - 1);
                self.nodes.len() - 1
            }
        };
        let node = &mut self.nodes[node_idx];
        let (ts, dur) = (snap.timestamp, snap.interval_s);
        node.timeline.push(Tick { ts, dur, origin });
        let blank = Rec {
            ts,
            dur,
            origin,
            total: 0,
            sum_us: f64::NAN,
            slot_off: 0,
            slot_len: 0,
            inflight: NONE,
            peak: NONE,
            peak_upper: NONE,
            ops_off: 0,
            ops_len: 0,
        };

        for h in &snap.latency_histogram {
            let Some(d) = node.device(h.device_id, &h.device_name, filter) else { continue };
            let dev = &mut node.devices[d];
            let slot_off = dev.slots.len() as u32;
            dev.slots.extend(
                h.buckets.iter().filter(|b| b.count > 0).map(|b| SlotCount { slot: b.slot as u8, count: b.count }),
            );
            let sum_us = match (h.sum_ns, h.sum_us) {
                (Some(ns), _) => ns as f64 / 1000.0,
                (None, Some(us)) => us,
                (None, None) => f64::NAN,
            };
            let slot_len = (dev.slots.len() as u32 - slot_off) as u8;
            dev.recs.push(Rec { total: h.total, sum_us, slot_off, slot_len, ..blank });
        }
        // A device's record for this snapshot, when it has one, is the last one pushed.
        for i in &snap.inflight {
            let Some(d) = node.device(i.device_id, &i.device_name, filter) else { continue };
            let dev = &mut node.devices[d];
            let rec = last_or_push(&mut dev.recs, origin, blank);
            rec.inflight = i.count;
            rec.peak = i.peak.unwrap_or(NONE);
            rec.peak_upper = i.peak_upper.unwrap_or(NONE);
        }
        for o in &snap.ops {
            let Some(d) = node.device(o.device_id, &o.device_name, filter) else { continue };
            let dev = &mut node.devices[d];
            let op = OPS.iter().position(|n| *n == o.op).unwrap_or(OPS.len() - 1) as u8;
            let next = dev.op_recs.len() as u32;
            let rec = last_or_push(&mut dev.recs, origin, blank);
            if rec.ops_len == 0 {
                rec.ops_off = next;
            }
            rec.ops_len += 1;
            let mut push = |buckets: &[crate::snapshot::Bucket]| {
                let off = dev.slots.len() as u32;
                dev.slots.extend(
                    buckets.iter().filter(|b| b.count > 0).map(|b| SlotCount { slot: b.slot as u8, count: b.count }),
                );
                (off, (dev.slots.len() as u32 - off) as u8)
            };
            let (dev_off, dev_len) = push(&o.device_time.buckets);
            let (size_off, size_len) = push(&o.size.buckets);
            dev.op_recs.push(OpRec {
                op,
                count: o.count,
                bytes: o.bytes,
                device_us: time_sum_us(&o.device_time),
                queue_us: time_sum_us(&o.queue_time),
                dev_off,
                dev_len,
                size_off,
                size_len,
            });
        }
    }

    /// Every device name seen, filtered out or not (for "no device matches" errors).
    pub fn seen_devices(&self) -> Vec<String> {
        let mut names: Vec<String> =
            self.nodes.iter().flat_map(|n| n.index.values().flatten().map(|(name, _)| name.clone())).collect();
        names.sort();
        names.dedup();
        names
    }

    /// Folds another thread's partial dataset into this one.
    pub fn merge(&mut self, other: Dataset) {
        for node in other.nodes {
            let idx = match self.node_index.get(&node.name) {
                Some(&i) => i,
                None => {
                    self.node_index.insert(node.name.clone(), self.nodes.len());
                    self.nodes.push(NodeData { name: node.name.clone(), ..Default::default() });
                    self.nodes.len() - 1
                }
            };
            let mine = &mut self.nodes[idx];
            mine.timeline.extend(node.timeline);
            // Remember the names the other thread filtered out (for `seen_devices`).
            for (id, list) in &node.index {
                for (name, _) in list.iter().filter(|(_, i)| i.is_none()) {
                    let mine_list = mine.index.entry(*id).or_default();
                    if !mine_list.iter().any(|(n, _)| n == name) {
                        mine_list.push((name.clone(), None));
                    }
                }
            }
            for src in node.devices {
                // Both sides applied the same filter, so only included devices arrive here.
                let Some(d) = mine.device(src.id, &src.name, &Filter::default()) else { continue };
                let dst = &mut mine.devices[d];
                let (slot_base, ops_base) = (dst.slots.len() as u32, dst.op_recs.len() as u32);
                // Exact sizes: doubling here would leave up to half of the largest vectors unused.
                dst.recs.reserve_exact(src.recs.len());
                dst.slots.reserve_exact(src.slots.len());
                dst.op_recs.reserve_exact(src.op_recs.len());
                dst.slots.extend(src.slots);
                dst.op_recs.extend(src.op_recs.into_iter().map(|mut o| {
                    o.dev_off += slot_base;
                    o.size_off += slot_base;
                    o
                }));
                dst.recs.extend(src.recs.into_iter().map(|mut r| {
                    r.slot_off += slot_base;
                    r.ops_off += ops_base;
                    r
                }));
            }
        }
        self.skipped.extend(other.skipped);
        self.skipped_count += other.skipped_count;
        self.snapshots += other.snapshots;
        self.out_of_range += other.out_of_range;
        self.duplicates += other.duplicates;
        self.mismatches.extend(other.mismatches);
        self.mismatch_count += other.mismatch_count;
    }

    /// Puts every series in time order and drops records read twice (same node, device and
    /// timestamp, e.g. a segment given both plain and gzipped): the first in input order wins.
    pub fn finalize(&mut self) {
        self.skipped.sort_by_key(|s| (s.file, s.line));
        self.skipped.truncate(SKIPPED_KEPT);
        self.mismatches.sort_by_key(|s| (s.file, s.line));
        self.mismatches.truncate(SKIPPED_KEPT);
        for node in &mut self.nodes {
            node.timeline.sort_by(|a, b| a.ts.total_cmp(&b.ts).then(a.origin.cmp(&b.origin)));
            node.timeline.dedup_by(|b, a| a.ts == b.ts);
            for dev in &mut node.devices {
                dev.recs.sort_by(|a, b| a.ts.total_cmp(&b.ts).then(a.origin.cmp(&b.origin)));
                let before = dev.recs.len();
                dev.recs.dedup_by(|b, a| a.ts == b.ts);
                self.duplicates += (before - dev.recs.len()) as u64;
            }
        }
        self.nodes.retain(|n| !n.devices.is_empty() || !n.timeline.is_empty());
    }
}

/// A line of an indented JSON document: a lone brace or bracket, or `"key": value` without the
/// enclosing object.
fn looks_pretty(text: &[u8]) -> bool {
    matches!(text, b"{" | b"}" | b"}," | b"]" | b"]," | b"[")
        || (text[0] == b'"' && memchr::memmem::find(text, b"\":").is_some())
}

/// The exact sum in µs: from `sum_ns` when present (no rounding), else `sum_us`.
fn time_sum_us(h: &crate::snapshot::TimeHistogram) -> f64 {
    if h.sum_ns > 0 { h.sum_ns as f64 / 1000.0 } else { h.sum_us }
}

fn last_or_push(recs: &mut Vec<Rec>, origin: u64, blank: Rec) -> &mut Rec {
    if recs.last().is_none_or(|r| r.origin != origin) {
        recs.push(blank);
    }
    recs.last_mut().expect("just pushed")
}
