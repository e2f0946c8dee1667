//! The exactness checks on one cell's JSONL, against what the workload did and what the kernel
//! counted (`/proc/diskstats`). Each check returns the first failure as one line.

use serde_json::Value;

use crate::device::DiskStats;

/// What one cell expects.
pub struct Expected<'a> {
    pub dev: &'a str,
    /// The `--attach` mode asked for.
    pub mode: &'a str,
    pub writes: u64,
    pub reads: u64,
    /// The kernel's counts over the agent's lifetime.
    pub disk: DiskStats,
    /// Whether the block layer stamps this device's requests (`io_start_time_ns`, RQF_STATS):
    /// true when writeback throttling is on (`queue/wbt_lat_usec` > 0), which sets
    /// QUEUE_FLAG_STATS through its blk-stat callback.
    pub stamps: bool,
    /// Completions issued after the agent reported its path decision: all of them must take
    /// the fast path where the block layer stamps requests.
    pub fast_min: u64,
}

/// What the agent reported, for the pass line.
#[derive(Debug, Default)]
pub struct Observed {
    pub snapshots: usize,
    pub attach: String,
    /// `agent.path.fast` and `.flags` of the last snapshot.
    pub fast: String,
    pub flags: String,
    /// Sums over every snapshot of `agent.path.fast_completions` / `.flag_disagreements`.
    pub fast_completions: u64,
    pub flag_disagreements: u64,
    /// Completions of the device, every op.
    pub completions: u64,
    /// Completions the agent missed and reported (as losses of its start map in classic
    /// tracepoint mode, as `unseen_completions` reconciled with diskstats in BTF mode).
    pub lost: u64,
    /// Sum over every snapshot of the device's `inflight[].unseen_completions`.
    pub unseen: u64,
    pub reads: u64,
    pub read_bytes: u64,
    pub writes: u64,
    pub write_bytes: u64,
}

/// The non-zero `losses_total` counters of the last complete snapshot, as `k=v ...` (empty
/// when all are zero or the JSONL has none): context for a failing cell.
pub fn losses_note(jsonl: &str) -> String {
    let Some(last) = jsonl.lines().rev().find_map(|l| serde_json::from_str::<Value>(l).ok()) else {
        return String::new();
    };
    let Some(losses) = last.get("losses_total").and_then(Value::as_object) else { return String::new() };
    losses
        .iter()
        .filter_map(|(k, v)| v.as_u64().filter(|n| *n > 0).map(|n| format!("{k}={n}")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The `losses_total` counters that stand for a completion the agent did not count: a program
/// run the kernel skipped, an issue without its completion (evicted when the key is reused, or
/// reset by the idle resync), a completion without its issue, a failed insert.
///
/// CLASSIC_LOSS: classic tracepoint programs run through `trace_call_bpf()`, which skips a
/// program while another BPF program runs on the same CPU (`bpf_prog_active`): a completion
/// interrupt arriving during the issue program loses that completion. Kernels from 6.7 count it
/// in the program's `recursion_misses`; older ones count nothing, and the agent sees the stale
/// start entry. tp_btf programs are guarded per program, so the BTF mode does not lose them.
pub const LOSS_KINDS: &[&str] =
    &["recursion_misses", "stale_evicted", "inflight_resync", "complete_without_start", "start_insert_failed"];

fn u(v: &Value, key: &str) -> Result<u64, String> {
    v.get(key).and_then(Value::as_u64).ok_or_else(|| format!("missing or non-integer `{key}`"))
}

fn bucket_sum(h: &Value, what: &str) -> Result<u64, String> {
    let b = h.get("buckets").and_then(Value::as_array).ok_or_else(|| format!("{what}: no `buckets` array"))?;
    b.iter().map(|b| u(b, "count").map_err(|e| format!("{what}: {e}"))).sum()
}

/// Parses every line (each must be one valid JSON object; the file must end with a newline) and
/// runs every check; `Ok` carries what was seen.
pub fn check(jsonl: &str, exp: &Expected) -> Result<Observed, String> {
    if jsonl.is_empty() {
        return Err("no snapshot in the JSONL".into());
    }
    if !jsonl.ends_with('\n') {
        return Err("the JSONL does not end with a newline (torn last line)".into());
    }
    let mut obs = Observed::default();
    let mut last: Option<Value> = None;
    for (i, line) in jsonl.lines().enumerate() {
        let snap: Value =
            serde_json::from_str(line).map_err(|e| format!("JSONL line {} is not valid JSON: {e}", i + 1))?;
        if !snap.is_object() {
            return Err(format!("JSONL line {} is not an object", i + 1));
        }
        check_snapshot(&snap, exp, &mut obs).map_err(|e| format!("snapshot {}: {e}", i + 1))?;
        obs.snapshots += 1;
        last = Some(snap);
    }
    let last = last.expect("non-empty");
    let agent = last.get("agent").ok_or("the last snapshot has no `agent` object")?;
    obs.attach = agent.get("attach").and_then(Value::as_str).ok_or("`agent.attach` is missing")?.to_string();
    match (exp.mode, obs.attach.as_str()) {
        ("auto", "btf" | "tracepoint") => {}
        (m, a) if m == a => {}
        (m, a) => return Err(format!("asked for --attach {m}, the snapshot says agent.attach={a}")),
    }
    // In-flight back to 0 once the workload is done.
    let inflight = last
        .get("inflight")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find(|e| e.get("device_name").and_then(Value::as_str) == Some(exp.dev)))
        .ok_or_else(|| format!("the last snapshot has no inflight entry for {}", exp.dev))?;
    let depth = u(inflight, "count")?;
    if depth != 0 {
        return Err(format!("in-flight count {depth} in the last snapshot, not 0"));
    }
    let losses = |k: &str| last.get("losses_total").and_then(|l| l.get(k)).and_then(Value::as_u64).unwrap_or(0);
    let d = &exp.disk;
    let mut short = [0u64; 2];
    for (i, (op, got, want, kernel)) in
        [("write", obs.writes, exp.writes, d.writes), ("read", obs.reads, exp.reads, d.reads)].into_iter().enumerate()
    {
        if kernel != want {
            return Err(format!(
                "/proc/diskstats counted {kernel} {op}s, the workload did {want} (other I/O on the device?)"
            ));
        }
        // A shortfall must be reported, which each mode's check below makes sure of.
        if got > kernel {
            return Err(format!("agent counted {got} {op}s, /proc/diskstats {kernel}"));
        }
        short[i] = kernel - got;
    }
    for (i, (op, got, sectors)) in
        [("write", obs.write_bytes, d.write_sectors), ("read", obs.read_bytes, d.read_sectors)].into_iter().enumerate()
    {
        // Every request of the workload is 4 KiB, so each lost completion is 4096 bytes.
        if got + short[i] * 4096 != sectors * 512 {
            return Err(format!("agent counted {got} {op} bytes, /proc/diskstats {}", sectors * 512));
        }
    }
    let lost = short[0] + short[1];
    let reported: u64 = LOSS_KINDS.iter().map(|k| losses(k)).sum();
    if obs.attach == "tracepoint" {
        // The agent's own accounting: every request it missed the end of left a start entry that
        // was evicted or reset (or it saw an end without a start); the kernel's count of skipped
        // runs, where it keeps one (6.7+), must agree.
        let agent_side = reported - losses("recursion_misses");
        let misses = losses("recursion_misses");
        if agent_side != lost || (misses != 0 && misses != lost) {
            return Err(format!(
                "agent missed {lost} completions ({} writes, {} reads) but reported {}",
                short[0],
                short[1],
                LOSS_KINDS.iter().map(|k| format!("{k}={}", losses(k))).collect::<Vec<_>>().join(" ")
            ));
        }
        obs.lost = lost;
    } else {
        // BTF mode. tp_btf programs are guarded per program: a run is skipped only when the same
        // program nests on one CPU (an issue from a completion interrupt that arrived during an
        // issue), counted in `recursion_misses` (6.7+); a skipped issue leaves the depth gauge
        // one low until the idle resync (`inflight_resync`), while the counts stay exact. A
        // completion the kernel did not show the programs is counted by the reconciliation with
        // diskstats (`unseen_completions`). Any other loss kind fails the cell.
        let (misses, resync) = (losses("recursion_misses"), losses("inflight_resync"));
        let other = reported - misses - resync;
        if obs.unseen != lost || other > 0 || resync > misses + lost {
            return Err(format!(
                "agent missed {lost} completions, reported unseen_completions={} and {}",
                obs.unseen,
                LOSS_KINDS.iter().map(|k| format!("{k}={}", losses(k))).collect::<Vec<_>>().join(" ")
            ));
        }
        obs.lost = lost;
    }
    let path = agent.get("path").ok_or("the snapshot does not say which path counted (no `agent.path`)")?;
    obs.fast = path.get("fast").and_then(Value::as_str).ok_or("`agent.path.fast` is missing")?.to_string();
    obs.flags = path.get("flags").and_then(Value::as_str).unwrap_or("-").to_string();
    if obs.flag_disagreements != 0 {
        return Err(format!(
            "{} completions where QUEUE_FLAG_STATS, RQF_STATS and io_start_time_ns disagreed",
            obs.flag_disagreements
        ));
    }
    if obs.fast_completions > obs.completions {
        return Err(format!("{} fast-path completions of {} completions", obs.fast_completions, obs.completions));
    }
    // A completion the programs never saw (`unseen`) took neither path.
    if exp.stamps && exp.mode != "tracepoint" && (obs.fast != "on" || obs.fast_completions + obs.unseen < exp.fast_min)
    {
        return Err(format!(
            "the block layer stamps {} (wbt on) but the fast path was not taken: path.fast={}, {}/{} completions \
             on it, {} issued after the decision",
            exp.dev, obs.fast, obs.fast_completions, obs.completions, exp.fast_min
        ));
    }
    Ok(obs)
}

fn check_snapshot(snap: &Value, exp: &Expected, obs: &mut Observed) -> Result<(), String> {
    if let Some(path) = snap.get("agent").and_then(|a| a.get("path")) {
        obs.fast_completions += u(path, "fast_completions").map_err(|e| format!("agent.path: {e}"))?;
        obs.flag_disagreements += u(path, "flag_disagreements").map_err(|e| format!("agent.path: {e}"))?;
    }
    let entries = snap.get("inflight").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    for e in entries.iter().filter(|e| e.get("device_name").and_then(Value::as_str) == Some(exp.dev)) {
        obs.unseen += e.get("unseen_completions").and_then(Value::as_u64).unwrap_or(0);
    }
    let mut dev_total = 0u64;
    for e in snap.get("ops").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
        let name = e.get("device_name").and_then(Value::as_str).ok_or("ops entry without device_name")?;
        if name != exp.dev {
            return Err(format!("ops entry for {name}, outside --devices {}", exp.dev));
        }
        let op = e.get("op").and_then(Value::as_str).ok_or("ops entry without op")?;
        let (count, bytes) = (u(e, "count")?, u(e, "bytes")?);
        for h in ["device_time", "queue_time", "size"] {
            let what = format!("ops[{name},{op}].{h}");
            let hist = e.get(h).ok_or_else(|| format!("{what} missing"))?;
            let sum = bucket_sum(hist, &what)?;
            if sum != count {
                return Err(format!("{what} buckets sum to {sum}, count is {count}"));
            }
        }
        dev_total += count;
        obs.completions += count;
        match op {
            "read" => (obs.reads, obs.read_bytes) = (obs.reads + count, obs.read_bytes + bytes),
            "write" => (obs.writes, obs.write_bytes) = (obs.writes + count, obs.write_bytes + bytes),
            _ => {}
        }
    }
    for h in snap.get("latency_histogram").and_then(Value::as_array).ok_or("no latency_histogram array")? {
        if h.get("device_name").and_then(Value::as_str) != Some(exp.dev) {
            continue;
        }
        let (total, sum) = (u(h, "total")?, bucket_sum(h, "latency_histogram")?);
        if sum != total {
            return Err(format!("latency_histogram buckets sum to {sum}, total is {total}"));
        }
        if total != dev_total {
            return Err(format!("latency_histogram total {total} != sum of ops counts {dev_total}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(writes: u64, inflight: u64, attach: &str) -> String {
        let b = |n: u64| serde_json::json!([{"slot": 3, "count": n, "bucket_low": 8, "bucket_high": 15}]);
        let hist = |n: u64| serde_json::json!({"sum_ns": 1, "sum_us": 0.001, "buckets": b(n)});
        serde_json::json!({
            "timestamp": 1.0, "iso_timestamp": "x", "interval_s": 0.5,
            "latency_histogram": [{"device_id": 1, "device_name": "vda", "total": writes, "buckets": b(writes)}],
            "inflight": [{"device_id": 1, "device_name": "vda", "count": inflight}],
            "ops": [{"device_id": 1, "device_name": "vda", "op": "write", "count": writes, "bytes": writes * 4096,
                     "device_time": hist(writes), "queue_time": hist(writes), "size": {"buckets": b(writes)}}],
            "agent": {"version": "0", "attach": attach,
                      "path": {"fast": "on", "flags": "btf", "fast_completions": writes, "flag_disagreements": 0}}
        })
        .to_string()
    }

    fn exp(mode: &str, writes: u64) -> Expected<'_> {
        Expected {
            dev: "vda",
            mode,
            writes,
            reads: 0,
            disk: DiskStats { writes, write_sectors: writes * 8, ..DiskStats::default() },
            stamps: true,
            fast_min: writes,
        }
    }

    #[test]
    fn losses_are_summarized() {
        let line = r#"{"losses_total": {"complete_without_start": 2, "requeued": 0, "stale_evicted": 1}}"#;
        assert_eq!(losses_note(&format!("{line}\n")), "complete_without_start=2 stale_evicted=1");
        assert_eq!(losses_note(""), "");
    }

    #[test]
    fn exact_counts_pass_and_each_defect_fails() {
        let good = format!("{}\n{}\n", snap(2, 1, "btf"), snap(3, 0, "btf"));
        let obs = check(&good, &exp("auto", 5)).unwrap();
        assert_eq!((obs.writes, obs.write_bytes, obs.snapshots, obs.attach.as_str()), (5, 20480, 2, "btf"));
        assert_eq!((obs.fast.as_str(), obs.fast_completions, obs.completions), ("on", 5, 5));
        assert!(check(&good, &exp("auto", 6)).unwrap_err().contains("agent missed 1 completions"));
        assert!(check(&good, &exp("tracepoint", 5)).unwrap_err().contains("agent.attach=btf"));
        assert!(check(good.trim_end(), &exp("auto", 5)).unwrap_err().contains("newline"));
        let busy = format!("{}\n", snap(5, 1, "btf"));
        assert!(check(&busy, &exp("auto", 5)).unwrap_err().contains("in-flight count 1"));
        let torn = format!("{}\n{{\"timestamp\":\n", snap(5, 0, "btf"));
        assert!(check(&torn, &exp("auto", 5)).unwrap_err().contains("not valid JSON"));
        let slow = good.replace("\"fast\":\"on\"", "\"fast\":\"unavailable\"");
        assert!(check(&slow, &exp("auto", 5)).unwrap_err().contains("fast path was not taken"));
        assert!(check(&slow, &Expected { stamps: false, ..exp("auto", 5) }).is_ok());
        let disagree = good.replace("\"flag_disagreements\":0", "\"flag_disagreements\":1");
        assert!(check(&disagree, &exp("auto", 5)).unwrap_err().contains("disagreed"));
        let nopath = format!("{}\n", snap(5, 0, "btf").replace("\"path\":", "\"x\":"));
        assert!(check(&nopath, &exp("auto", 5)).unwrap_err().contains("agent.path"));
        // Classic tracepoints: a shortfall passes only when the agent reported at least as many losses.
        let tp = |misses: u64| {
            let mut v: Value = serde_json::from_str(&snap(4, 0, "tracepoint")).unwrap();
            v["losses_total"] = serde_json::json!({ "recursion_misses": misses, "stale_evicted": 1 });
            format!("{v}\n")
        };
        let e = Expected {
            disk: DiskStats { writes: 5, write_sectors: 40, ..DiskStats::default() },
            ..exp("tracepoint", 5)
        };
        assert_eq!(check(&tp(1), &e).unwrap().lost, 1);
        // 5.10/6.1 count no skipped runs; the agent's own count must still match.
        assert_eq!(check(&tp(0), &e).unwrap().lost, 1);
        assert!(check(&tp(2), &e).unwrap_err().contains("but reported recursion_misses=2"));
        let e2 = Expected {
            disk: DiskStats { writes: 6, write_sectors: 48, ..DiskStats::default() },
            ..exp("tracepoint", 6)
        };
        assert!(check(&tp(0), &e2).unwrap_err().contains("missed 2 completions"));
        // BTF mode: a skipped program run with exact counts (and its resync) passes; any other
        // loss kind fails; a shortfall passes only when reconciled as unseen completions.
        let btf = |losses: Value, unseen: Option<u64>| {
            let mut v: Value = serde_json::from_str(&snap(4, 0, "btf")).unwrap();
            v["losses_total"] = losses;
            if let Some(n) = unseen {
                v["inflight"][0]["unseen_completions"] = n.into();
            }
            format!("{v}\n")
        };
        let skipped = serde_json::json!({"recursion_misses": 1, "inflight_resync": 1});
        assert_eq!(check(&btf(skipped.clone(), None), &exp("auto", 4)).unwrap().lost, 0);
        let evicted = serde_json::json!({"stale_evicted": 1});
        assert!(check(&btf(evicted, None), &exp("auto", 4)).unwrap_err().contains("stale_evicted=1"));
        let resync = serde_json::json!({"inflight_resync": 2, "recursion_misses": 1});
        assert!(check(&btf(resync, None), &exp("auto", 4)).unwrap_err().contains("inflight_resync=2"));
        let none = serde_json::json!({});
        let e5 = Expected { mode: "auto", ..e };
        assert_eq!(check(&btf(none.clone(), Some(1)), &e5).unwrap().lost, 1, "4 + 1 unseen == 5");
        assert!(check(&btf(none.clone(), None), &e5).unwrap_err().contains("missed 1 completions"));
        assert!(check(&btf(none, Some(2)), &e5).unwrap_err().contains("unseen_completions=2"));
        assert!(check(&btf(skipped, Some(1)), &e5).is_ok(), "a skipped run and an unseen completion");
        let skewed = snap(5, 0, "btf").replacen("\"total\":5", "\"total\":4", 1);
        assert!(check(&format!("{skewed}\n"), &exp("auto", 5)).unwrap_err().contains("latency_histogram"));
    }
}
