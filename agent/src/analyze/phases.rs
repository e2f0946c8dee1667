//! Per-op and per-phase numbers: what a fio user compares with fio's JSON output.
//!
//! With `--events`, events are phase boundaries: phase `i` runs from event `i` to event `i+1`
//! (the last one to the end of the data; data before the first event is its own phase). A
//! snapshot is indivisible, so it belongs to the phase that holds the middle of its interval:
//! boundaries are exact to one interval, and counts are exact when the workload leaves an
//! interval of idle time around each event.
//!
//! IOPS and MB/s are over the phase's *active seconds*: the intervals that completed I/O, with
//! the first and last interval of each run of them counted only for the share the workload ran
//! (their completions at the median rate), because a job rarely starts or stops on a snapshot
//! boundary. That is what fio divides by (its runtime), so the rates line up.

use crate::histogram::percentile;

use super::charts::Event;
use super::dataset::{DeviceSeries, OPS, PeakDepth, Rec, SLOTS};

/// The percentiles of the phase table (fio's clat percentiles list these too).
pub const PHASE_PERCENTILES: [f64; 4] = [50.0, 90.0, 99.0, 99.9];

/// Label of the data before the first event.
pub const BEFORE_FIRST: &str = "(before first event)";

#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    pub label: String,
    /// From this time (inclusive) to the next phase's start.
    pub start: f64,
}

/// Phase boundaries from the events (time order), with the part before the first event.
pub fn phases(events: &[Event]) -> Vec<Phase> {
    let mut out = vec![Phase { label: BEFORE_FIRST.into(), start: f64::NEG_INFINITY }];
    out.extend(events.iter().map(|e| Phase { label: e.label.clone(), start: e.ts }));
    out
}

/// One row of the table: an op, or all ops together (`op == "all"`).
#[derive(Debug, Clone, PartialEq)]
pub struct OpRow {
    pub op: &'static str,
    pub requests: u64,
    pub bytes: Option<u64>,
    pub iops: Option<f64>,
    pub mb_per_s: Option<f64>,
    /// [`PHASE_PERCENTILES`] of device time, µs.
    pub percentiles: [Option<f64>; 4],
    pub mean_device_us: Option<f64>,
    pub mean_queue_us: Option<f64>,
    pub mean_size_bytes: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PhaseStats {
    pub label: String,
    /// Start of the first and end of the last interval assigned to the phase.
    pub start: f64,
    pub end: f64,
    pub active_s: f64,
    /// "all" first, then every op with completions.
    pub rows: Vec<OpRow>,
    pub peak_depth: PeakDepth,
    /// Mean number of requests in the device while active (exact device time / active s).
    pub avg_depth: Option<f64>,
}

/// The phase index of each record (by the middle of its interval).
fn phase_of(phases: &[Phase], r: &Rec) -> usize {
    let mid = r.ts - r.dur / 2.0;
    phases.partition_point(|p| p.start <= mid).saturating_sub(1)
}

/// Every phase in which the device has snapshots.
pub fn device_phases(dev: &DeviceSeries, phases: &[Phase]) -> Vec<PhaseStats> {
    let mut groups: Vec<Vec<&Rec>> = vec![Vec::new(); phases.len()];
    for r in &dev.recs {
        groups[phase_of(phases, r)].push(r);
    }
    groups.iter().zip(phases).filter(|(g, _)| !g.is_empty()).map(|(g, p)| stats_of(dev, &p.label, g)).collect()
}

/// The numbers of one group of records (a phase, or the whole recording).
pub fn stats_of(dev: &DeviceSeries, label: &str, recs: &[&Rec]) -> PhaseStats {
    let active_s = active_seconds(recs);
    let rate = |n: f64| (active_s > 0.0).then(|| n / active_s);
    let mut all = [0u64; SLOTS];
    let (mut total, mut lat_sum, mut lat_exact) = (0u64, 0f64, true);
    let mut peak = PeakDepth::default();
    // Per op: completions, bytes, device-time slots and sums, queue sum, size slots.
    let mut per_op = vec![OpAcc::default(); OPS.len()];
    for r in recs {
        dev.add_into(r, &mut all);
        total += r.total;
        if r.total > 0 {
            if r.sum_us.is_finite() { lat_sum += r.sum_us } else { lat_exact = false }
        }
        peak.add(r);
        for o in dev.rec_op_detail(r) {
            let acc = &mut per_op[o.op as usize];
            acc.count += o.count;
            acc.bytes += o.bytes;
            acc.device_us += o.device_us;
            acc.queue_us += o.queue_us;
            dev.op_slots(o, &mut acc.slots);
        }
    }
    let has_ops = dev.has_ops() && recs.iter().any(|r| r.ops_len > 0);
    let pcts = |slots: &[u64; SLOTS]| PHASE_PERCENTILES.map(|p| percentile(slots, p));
    let mean = |sum: f64, n: u64| (n > 0).then(|| sum / n as f64);
    let (bytes, queue): (u64, f64) = per_op.iter().fold((0, 0.0), |(b, q), o| (b + o.bytes, q + o.queue_us));
    let mut rows = vec![OpRow {
        op: "all",
        requests: total,
        bytes: has_ops.then_some(bytes),
        iops: rate(total as f64),
        mb_per_s: if has_ops { rate(bytes as f64 / 1e6) } else { None },
        percentiles: pcts(&all),
        mean_device_us: if lat_exact { mean(lat_sum, total) } else { None },
        mean_queue_us: if has_ops { mean(queue, total) } else { None },
        mean_size_bytes: if has_ops { mean(bytes as f64, total) } else { None },
    }];
    for (i, o) in per_op.iter().enumerate().filter(|(_, o)| o.count > 0) {
        rows.push(OpRow {
            op: OPS[i],
            requests: o.count,
            bytes: Some(o.bytes),
            iops: rate(o.count as f64),
            mb_per_s: rate(o.bytes as f64 / 1e6),
            percentiles: pcts(&o.slots),
            mean_device_us: mean(o.device_us, o.count),
            mean_queue_us: mean(o.queue_us, o.count),
            mean_size_bytes: mean(o.bytes as f64, o.count),
        });
    }
    PhaseStats {
        label: label.to_string(),
        start: recs.first().map_or(f64::NAN, |r| r.ts - r.dur),
        end: recs.last().map_or(f64::NAN, |r| r.ts),
        active_s,
        rows,
        peak_depth: peak,
        avg_depth: (lat_exact && active_s > 0.0 && total > 0).then(|| lat_sum / 1e6 / active_s),
    }
}

#[derive(Clone)]
struct OpAcc {
    count: u64,
    bytes: u64,
    device_us: f64,
    queue_us: f64,
    slots: [u64; SLOTS],
}

impl Default for OpAcc {
    fn default() -> Self {
        OpAcc { count: 0, bytes: 0, device_us: 0.0, queue_us: 0.0, slots: [0; SLOTS] }
    }
}

/// Seconds during which the records' I/O ran. Consecutive intervals with completions form a
/// run (an idle interval or missing snapshots end it); inside a run every interval counts
/// whole, and its first and last intervals count `completions / rate` (at most their length),
/// where `rate` is the median completions per second of the runs' inner intervals: a job starts
/// and stops inside an interval, and a stray completion in an idle stretch is a blip, not a
/// second of activity. Without inner intervals there is no rate to go by: whole intervals.
pub fn active_seconds(recs: &[&Rec]) -> f64 {
    let mut runs: Vec<Vec<&Rec>> = Vec::new();
    let mut prev: Option<&Rec> = None;
    for r in recs.iter().copied() {
        let joined = prev.is_some_and(|p| p.total > 0 && r.ts - r.dur <= p.ts + 0.5 * r.dur.min(p.dur));
        if r.total > 0 {
            if !joined {
                runs.push(Vec::new());
            }
            runs.last_mut().expect("pushed").push(r);
        }
        prev = Some(r);
    }
    let mut rates: Vec<f64> = runs
        .iter()
        .filter(|run| run.len() >= 3)
        .flat_map(|run| run[1..run.len() - 1].iter().map(|r| r.total as f64 / r.dur))
        .collect();
    rates.sort_by(f64::total_cmp);
    let rate = rates.get(rates.len() / 2).copied().unwrap_or(f64::NAN);
    let edge = |r: &Rec| if rate > 0.0 { (r.total as f64 / rate).min(r.dur) } else { r.dur };
    // `+ 0.0`: an empty float sum is -0.0, which would print as "-0.00".
    runs.iter()
        .map(|run| match run.as_slice() {
            [one] => edge(one),
            [first, inner @ .., last] => edge(first) + inner.iter().map(|r| r.dur).sum::<f64>() + edge(last),
            [] => 0.0,
        })
        .sum::<f64>()
        + 0.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::dataset::NONE;

    fn rec(ts: f64, total: u64) -> Rec {
        Rec {
            ts,
            dur: 1.0,
            origin: 0,
            total,
            sum_us: f64::NAN,
            slot_off: 0,
            slot_len: 0,
            inflight: NONE,
            peak: NONE,
            peak_upper: NONE,
            ops_off: 0,
            ops_len: 0,
        }
    }

    #[test]
    fn active_seconds_count_edge_intervals_by_their_share() {
        // A job at 1000/s from t=1.25 to t=5.5: the edge intervals ran 0.75 s and 0.5 s.
        let recs = [rec(1.0, 0), rec(2.0, 750), rec(3.0, 1000), rec(4.0, 1000), rec(5.0, 1000), rec(6.0, 500)];
        let refs: Vec<&Rec> = recs.iter().collect();
        assert!((active_seconds(&refs) - 4.25).abs() < 1e-9, "{}", active_seconds(&refs));
        // Too few intervals for a rate: whole intervals.
        assert_eq!(active_seconds(&refs[..3]), 2.0);
        // A stray completion in the idle time before the job is a blip, not a second.
        let mut with_blip = vec![rec(-3.0, 0), rec(-2.0, 1)];
        with_blip.extend(recs);
        let refs: Vec<&Rec> = with_blip.iter().collect();
        assert!((active_seconds(&refs) - 4.251).abs() < 1e-9, "{}", active_seconds(&refs));
    }

    #[test]
    fn records_go_to_the_phase_holding_their_middle() {
        let ev = |ts: f64, l: &str| Event { ts, label: l.into() };
        let ps = phases(&[ev(10.0, "a"), ev(20.0, "b")]);
        assert_eq!(ps.len(), 3);
        assert_eq!(phase_of(&ps, &rec(10.4, 1)), 0); // (9.4, 10.4]: middle 9.9
        assert_eq!(phase_of(&ps, &rec(10.6, 1)), 1);
        assert_eq!(phase_of(&ps, &rec(25.0, 1)), 2);
        assert_eq!(ps[0].label, BEFORE_FIRST);
    }
}
