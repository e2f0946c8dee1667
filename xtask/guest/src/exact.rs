//! The check every fault scenario ends with: per op, the agent's counts and bytes over the whole
//! JSONL equal the device's `/proc/diskstats` delta, the in-flight gauge is back to 0 (and, where
//! the scenario knows its concurrency, never above it), and the BTF mode reported no losses.
//!
//! How the agent's ops map to diskstats' groups: `read`, `write`, `discard` and `flush` are the
//! same groups (`op_stat_group()`,
//! <https://elixir.bootlin.com/linux/v6.18/source/include/linux/blk_types.h>; flushes are counted
//! per flush request, `blk_account_io_flush()`). Every other op — zone management (open, close,
//! finish, reset), write-zeroes — is the agent's `other`, while diskstats folds it into reads or
//! writes by the op's direction bit (`op_stat_group()` -> `op_is_write()`, the op's low bit).
//! Zone management ops are all odd, so "writes" of 0 sectors: measured on 5.10, 6.1, 6.12 and 7.2
//! (16 zone ops, diskstats writes = data writes + 16), and 6.18's BTF has ZONE_OPEN = 11,
//! ZONE_CLOSE = 13, ZONE_FINISH = 15, ZONE_RESET = 17, ZONE_RESET_ALL = 19. So a scenario says
//! how many such ops it issued in each direction, and the check subtracts them.

use serde_json::Value;

use crate::{check::LOSS_KINDS, device::DiskStats};

/// Ops the agent reports, in the order of its JSONL `op` names.
pub const OPS: [&str; 5] = ["read", "write", "discard", "flush", "other"];

#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    pub count: [u64; 5],
    pub bytes: [u64; 5],
    /// Highest `inflight.peak` (or count) of any snapshot.
    pub peak: u64,
    /// The same per [`DepthPhase`] of the scenario, in its order.
    pub phase_peaks: [u64; MAX_PHASES],
    /// The highest upper bound of the peak (`peak_upper`, else `peak`) per phase.
    pub phase_uppers: [u64; MAX_PHASES],
    /// Snapshots whose peak was a range (`peak_upper`: the I/O used several hardware queues),
    /// and the highest such bound.
    pub bounded: usize,
    pub peak_upper: u64,
    pub snapshots: usize,
    /// `losses_total.requeued` and `.partial_completion` of the last snapshot (not losses: they
    /// show that the fault paths ran).
    pub requeued: u64,
    pub partial: u64,
    /// `losses_total.recursion_misses` of the last snapshot, when the counts were exact anyway.
    pub recursion_misses: u64,
}

/// At most this many depth phases per scenario.
pub const MAX_PHASES: usize = 4;

/// Hardware queues a guest device has at most: blk-mq makes no more than one per CPU, and the
/// guests have 2 (`-smp 2`, xtask/src/kernels/qemu.rs). Each queue's depth is at most the
/// device's, so a peak's upper bound (the sum of the queues' peaks) is at most this many times
/// the depth bound.
pub const GUEST_QUEUES: u64 = 2;

/// A depth bound for the snapshots stamped before `until` (the guest's wall clock, seconds since
/// the epoch) and after the previous phase's: every snapshot's in-flight count and peak at most
/// `max`, and the highest peak among them at least half of it. A snapshot's `timestamp` is taken
/// after its maps were read (agent/src/collector/mod.rs), so one stamped before a workload
/// started holds none of that workload's requests.
///
/// `spread`: the phase's I/O comes from threads on every CPU, so on every hardware queue, and the
/// agent reports the peak as a range (`peak` is the deepest queue's, `peak_upper` the sum of the
/// queues'; docs/performance.md, "Depth per hardware queue"): then the range's top must reach
/// half, while `peak` (which the device certainly reached) must still stay within `max`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DepthPhase {
    pub until: f64,
    pub max: u64,
    pub spread: bool,
}

impl DepthPhase {
    /// One bound for the whole run.
    pub fn always(max: u64) -> Self {
        DepthPhase { until: f64::INFINITY, max, spread: false }
    }

    /// One bound for the whole run, of I/O spread over the hardware queues.
    pub fn spread(max: u64) -> Self {
        DepthPhase { spread: true, ..DepthPhase::always(max) }
    }
}

/// What a scenario expects besides "equal to diskstats".
#[derive(Debug, Default, Clone, Copy)]
pub struct Expect {
    /// Dataless ops the scenario issued that diskstats counts as reads / writes and the agent as
    /// `other` (zone management).
    pub other_as_reads: u64,
    pub other_as_writes: u64,
    /// In-flight bounds, in time order (`depth_phases` used); none when the scenario does not
    /// know its concurrency.
    pub depth: [Option<DepthPhase>; MAX_PHASES],
}

impl Expect {
    fn phases(&self) -> impl Iterator<Item = &DepthPhase> {
        self.depth.iter().map_while(Option::as_ref)
    }

    /// The phase a snapshot stamped at `ts` belongs to, if any.
    fn phase_of(&self, ts: f64) -> Option<(usize, &DepthPhase)> {
        self.phases().enumerate().find(|(_, p)| ts < p.until)
    }
}

fn u(v: &Value, key: &str) -> Result<u64, String> {
    v.get(key).and_then(Value::as_u64).ok_or_else(|| format!("missing or non-integer `{key}`"))
}

fn bucket_sum(h: &Value, what: &str) -> Result<u64, String> {
    let b = h.get("buckets").and_then(Value::as_array).ok_or_else(|| format!("{what}: no `buckets` array"))?;
    b.iter().map(|b| u(b, "count").map_err(|e| format!("{what}: {e}"))).sum()
}

/// Sums the device's ops over every snapshot, checking each histogram against its count and
/// each snapshot's depth against its phase's bound.
pub fn totals(jsonl: &str, dev: &str, exp: &Expect) -> Result<(Totals, Value), String> {
    if jsonl.is_empty() || !jsonl.ends_with('\n') {
        return Err("the JSONL is empty or does not end with a newline".into());
    }
    let mut t = Totals::default();
    let mut last = Value::Null;
    for (i, line) in jsonl.lines().enumerate() {
        let snap: Value = serde_json::from_str(line).map_err(|e| format!("JSONL line {} is not JSON: {e}", i + 1))?;
        // An interval without completions may have no `ops`.
        for e in snap.get("ops").and_then(Value::as_array).into_iter().flatten() {
            if e.get("device_name").and_then(Value::as_str) != Some(dev) {
                return Err(format!("line {}: ops entry for another device (--devices {dev})", i + 1));
            }
            let op = e.get("op").and_then(Value::as_str).ok_or("ops entry without op")?;
            let k = OPS.iter().position(|o| *o == op).ok_or_else(|| format!("unknown op {op:?}"))?;
            let count = u(e, "count")?;
            for h in ["device_time", "queue_time", "size"] {
                let what = format!("line {}: ops[{op}].{h}", i + 1);
                let sum = bucket_sum(e.get(h).ok_or_else(|| format!("{what} missing"))?, &what)?;
                if sum != count {
                    return Err(format!("{what} buckets sum to {sum}, count is {count}"));
                }
            }
            t.count[k] += count;
            t.bytes[k] += u(e, "bytes")?;
        }
        let inflight = snap
            .get("inflight")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().find(|e| e.get("device_name").and_then(Value::as_str) == Some(dev)));
        if let Some(f) = inflight {
            let count = u(f, "count")?;
            let peak = f.get("peak").and_then(Value::as_u64).unwrap_or(count);
            let ts = snap.get("timestamp").and_then(Value::as_f64).ok_or("snapshot without `timestamp`")?;
            let upper = f.get("peak_upper").and_then(Value::as_u64);
            if let Some(upper) = upper {
                if upper <= peak {
                    return Err(format!("line {}: peak_upper {upper} present but not above peak {peak}", i + 1));
                }
                t.bounded += 1;
                t.peak_upper = t.peak_upper.max(upper);
            }
            if let Some((k, phase)) = exp.phase_of(ts) {
                if upper.is_some_and(|u| u > GUEST_QUEUES * phase.max) {
                    return Err(format!(
                        "line {}: peak_upper {} above {GUEST_QUEUES} queues of {} in flight (depth phase {})",
                        i + 1,
                        upper.unwrap_or(0),
                        phase.max,
                        k + 1
                    ));
                }
                if count > phase.max || peak > phase.max {
                    return Err(format!(
                        "line {}: in-flight count {count} / peak {peak} above the {} in flight (depth phase {})",
                        i + 1,
                        phase.max,
                        k + 1
                    ));
                }
                t.phase_peaks[k] = t.phase_peaks[k].max(peak).max(count);
                t.phase_uppers[k] = t.phase_uppers[k].max(upper.unwrap_or(peak)).max(count);
            }
            t.peak = t.peak.max(peak).max(count);
        }
        t.snapshots += 1;
        last = snap;
    }
    let losses = |k: &str| last.get("losses_total").and_then(|l| l.get(k)).and_then(Value::as_u64).unwrap_or(0);
    (t.requeued, t.partial) = (losses("requeued"), losses("partial_completion"));
    Ok((t, last))
}

/// Every check of a scenario; `Ok` is the pass line's summary.
pub fn check(jsonl: &str, dev: &str, disk: &DiskStats, exp: &Expect) -> Result<Totals, String> {
    let (mut t, last) = totals(jsonl, dev, exp)?;
    let attach = last.pointer("/agent/attach").and_then(Value::as_str).unwrap_or("-");
    if attach != "btf" {
        return Err(format!("agent.attach={attach}, the scenarios run in btf mode"));
    }
    let depth = last
        .get("inflight")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find(|e| e.get("device_name").and_then(Value::as_str) == Some(dev)))
        .ok_or_else(|| format!("the last snapshot has no inflight entry for {dev}"))
        .and_then(|e| u(e, "count"))?;
    if depth != 0 {
        return Err(format!("in-flight count {depth} in the last snapshot, not 0"));
    }
    let lost: Vec<String> = LOSS_KINDS
        .iter()
        .filter_map(|k| {
            let n = last.pointer(&format!("/losses_total/{k}")).and_then(Value::as_u64).filter(|n| *n > 0)?;
            Some(format!("{k}={n}"))
        })
        .collect();
    let other = exp.other_as_reads + exp.other_as_writes;
    let want = [
        ("read", disk.reads.checked_sub(exp.other_as_reads), disk.read_sectors * 512),
        ("write", disk.writes.checked_sub(exp.other_as_writes), disk.write_sectors * 512),
        ("discard", Some(disk.discards), disk.discard_sectors * 512),
        ("flush", Some(disk.flushes), 0),
        ("other", Some(other), 0),
    ];
    for (k, (op, count, bytes)) in want.into_iter().enumerate() {
        let Some(count) = count else {
            return Err(format!("/proc/diskstats counted fewer {op}s than the scenario's {other} zone ops: {disk:?}"));
        };
        if t.count[k] != count || t.bytes[k] != bytes {
            return Err(format!(
                "{op}: agent {} ops / {} bytes, /proc/diskstats {count} / {bytes} (zone ops as reads {}, as writes {}); agent {}; diskstats {disk:?}{}",
                t.count[k],
                t.bytes[k],
                exp.other_as_reads,
                exp.other_as_writes,
                summary(&t),
                if lost.is_empty() { String::new() } else { format!(" [losses: {}]", lost.join(" ")) }
            ));
        }
    }
    // Counts exact: a program run the kernel skipped (`recursion_misses`: a tp_btf program
    // re-entered on its CPU, e.g. an issue from a completion interrupt; seen once in three runs
    // of nvme-qd32 on 7.2) did not cost a count here, and is reported in the pass line. Every
    // other loss kind fails the scenario.
    t.recursion_misses = last.pointer("/losses_total/recursion_misses").and_then(Value::as_u64).unwrap_or(0);
    let lost: Vec<&String> = lost.iter().filter(|l| !l.starts_with("recursion_misses=")).collect();
    if !lost.is_empty() {
        return Err(format!(
            "counts exact but the BTF mode reported losses: {}",
            lost.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")
        ));
    }
    for (k, phase) in exp.phases().enumerate() {
        let (reached, what) = if phase.spread { (t.phase_uppers[k], "peak_upper") } else { (t.phase_peaks[k], "peak") };
        if reached * 2 < phase.max {
            return Err(format!(
                "the highest in-flight {what} was {reached}, below half of the {} in flight (depth phase {})",
                phase.max,
                k + 1
            ));
        }
    }
    Ok(t)
}

/// `read=N/B write=N/B ...` for the ops that occurred.
pub fn summary(t: &Totals) -> String {
    OPS.iter()
        .enumerate()
        .filter(|(k, _)| t.count[*k] > 0)
        .map(|(k, op)| format!("{op}={}/{}", t.count[k], t.bytes[k]))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(op: &str, n: u64, bytes: u64, inflight: u64, peak: u64) -> String {
        snap_at(100.0, op, n, bytes, inflight, peak)
    }

    fn snap_at(ts: f64, op: &str, n: u64, bytes: u64, inflight: u64, peak: u64) -> String {
        let b = |n: u64| serde_json::json!([{"slot": 3, "count": n}]);
        let h = |n: u64| serde_json::json!({"buckets": b(n)});
        serde_json::json!({
            "timestamp": ts,
            "ops": [{"device_name": "nullb1", "op": op, "count": n, "bytes": bytes,
                     "device_time": h(n), "queue_time": h(n), "size": h(n)}],
            "inflight": [{"device_name": "nullb1", "count": inflight, "peak": peak}],
            "agent": {"attach": "btf"},
            "losses_total": {"requeued": 2}
        })
        .to_string()
    }

    #[test]
    fn a_peak_range_is_checked_against_the_queues() {
        let with_upper = |upper: u64| {
            let mut v: Value = serde_json::from_str(&snap("write", 4, 16384, 1, 3)).unwrap();
            v["inflight"][0]["peak_upper"] = upper.into();
            format!("{v}\n")
        };
        let exp = Expect { depth: [Some(DepthPhase::always(4)), None, None, None], ..Expect::default() };
        let (t, _) = totals(&with_upper(8), "nullb1", &exp).unwrap();
        assert_eq!((t.bounded, t.peak_upper, t.peak), (1, 8, 3));
        assert!(totals(&with_upper(9), "nullb1", &exp).unwrap_err().contains("above 2 queues"));
        assert!(totals(&with_upper(3), "nullb1", &exp).unwrap_err().contains("not above peak"));
    }

    #[test]
    fn a_spread_phase_reaches_half_with_its_upper_bound_and_keeps_its_peak_within_the_bound() {
        let disk = DiskStats { writes: 4, write_sectors: 32, ..DiskStats::default() };
        let line = |peak: u64, upper: Option<u64>| {
            let mut v: Value = serde_json::from_str(&snap("write", 4, 16384, 0, peak)).unwrap();
            if let Some(u) = upper {
                v["inflight"][0]["peak_upper"] = u.into();
            }
            format!("{v}\n")
        };
        let spread = Expect { depth: [Some(DepthPhase::spread(32)), None, None, None], ..Expect::default() };
        let strict = Expect { depth: [Some(DepthPhase::always(32)), None, None, None], ..Expect::default() };
        // The deepest queue held 11, the queues together at most 20.
        let t = check(&line(11, Some(20)), "nullb1", &disk, &spread).unwrap();
        assert_eq!((t.phase_peaks[0], t.phase_uppers[0]), (11, 20));
        let e = check(&line(11, Some(20)), "nullb1", &disk, &strict).unwrap_err();
        assert!(e.contains("in-flight peak was 11, below half"), "{e}");
        let e = check(&line(11, Some(15)), "nullb1", &disk, &spread).unwrap_err();
        assert!(e.contains("in-flight peak_upper was 15, below half"), "{e}");
        // The certain peak is held to the bound even where the range is what reaches half.
        assert!(check(&line(33, Some(40)), "nullb1", &disk, &spread).unwrap_err().contains("peak 33 above the 32"));
    }

    #[test]
    fn zone_ops_map_to_diskstats_and_defects_fail() {
        let j = format!("{}\n{}\n", snap("write", 4, 16384, 1, 3), snap("other", 3, 0, 0, 1));
        let disk = DiskStats { writes: 6, write_sectors: 32, reads: 1, ..DiskStats::default() };
        let bound = |max| [Some(DepthPhase::always(max)), None, None, None];
        let exp = Expect { other_as_reads: 1, other_as_writes: 2, depth: bound(4) };
        let t = check(&j, "nullb1", &disk, &exp).unwrap();
        assert_eq!((t.count[1], t.count[4], t.peak, t.requeued), (4, 3, 3, 2));
        assert_eq!(summary(&t), "write=4/16384 other=3/0");
        // One zone op diskstats saw and the agent did not.
        let e = check(&j, "nullb1", &DiskStats { writes: 7, ..disk }, &exp).unwrap_err();
        assert!(e.starts_with("write: agent 4 ops"), "{e}");
        assert!(check(&j, "nullb1", &disk, &Expect { depth: bound(2), ..exp }).unwrap_err().contains("above"));
        assert!(check(&j, "nullb1", &disk, &Expect { depth: bound(8), ..exp }).unwrap_err().contains("below half"));
        let busy = format!("{}\n", snap("write", 4, 16384, 1, 1));
        assert!(check(&busy, "nullb1", &disk, &exp).unwrap_err().contains("in-flight count 1"));
        let lossy = j.replace("\"requeued\":2", "\"stale_evicted\":1");
        assert!(check(&lossy, "nullb1", &disk, &exp).unwrap_err().contains("stale_evicted=1"));
        // A skipped program run is reported, not failed, when the counts are exact anyway...
        let skipped = j.replace("\"requeued\":2", "\"recursion_misses\":1");
        assert_eq!(check(&skipped, "nullb1", &disk, &exp).unwrap().recursion_misses, 1);
        // ...and fails when they are not.
        let e = check(&skipped, "nullb1", &DiskStats { writes: 7, ..disk }, &exp).unwrap_err();
        assert!(e.contains("[losses: recursion_misses=1]"), "{e}");
    }

    #[test]
    fn each_depth_phase_has_its_own_bound() {
        // A QD4 phase until t=110, then a QD32 phase.
        let phases =
            [Some(DepthPhase { until: 110.0, max: 4, spread: false }), Some(DepthPhase::always(32)), None, None];
        let exp = Expect { depth: phases, ..Expect::default() };
        let disk = DiskStats { writes: 8, write_sectors: 64, ..DiskStats::default() };
        let run = |qd4_peak: u64, qd32_at: f64, qd32_peak: u64| {
            let lines = [
                snap_at(105.0, "write", 4, 16384, 1, qd4_peak),
                snap_at(qd32_at, "write", 4, 16384, 2, qd32_peak),
                snap_at(120.0, "write", 0, 0, 0, 0),
            ];
            check(&(lines.join("\n") + "\n"), "nullb1", &disk, &exp)
        };
        let t = run(4, 115.0, 32).unwrap();
        assert_eq!(t.phase_peaks[..2], [4, 32]);
        // A QD32 snapshot stamped inside the QD4 phase is held to 4.
        assert!(run(4, 109.0, 32).unwrap_err().contains("above the 4 in flight (depth phase 1)"));
        assert!(run(4, 115.0, 33).unwrap_err().contains("above the 32 in flight (depth phase 2)"));
        assert!(run(1, 115.0, 32).unwrap_err().contains("below half of the 4 in flight (depth phase 1)"));
        assert!(run(4, 115.0, 15).unwrap_err().contains("below half of the 32 in flight (depth phase 2)"));
    }
}
