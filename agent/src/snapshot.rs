//! The JSONL snapshot contract (one object per line). A superset of the seed's schema: the
//! seed's keys keep their names, types and meaning; everything new is additional keys.
//! `docs/snapshot.schema.json` is the JSON Schema of this file; a test keeps them in sync.
//!
//! Reading is lenient on purpose (the analyzer reads the seed's original files): every key that
//! the seed did not have is optional on input.

use serde::{Deserialize, Serialize};

use crate::{
    histogram::{bucket_high, bucket_low, clamp_slot},
    pressure::Pressure,
};

/// Bumped when a key changes meaning; adding keys does not bump it.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Absent in the seed's files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<u32>,
    /// End of the interval, Unix epoch seconds.
    pub timestamp: f64,
    /// The same instant as UTC ISO 8601 with microseconds and `+00:00`, as the seed wrote it.
    pub iso_timestamp: String,
    /// Seconds this snapshot covers (measured, not the configured interval).
    pub interval_s: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Snapshot number since the agent started (0-based); restarts at 0 with the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Random id of the agent run (128-bit hex): `(node, run_id, seq)` is unique across restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// When that run started, Unix epoch seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_started: Option<f64>,
    /// Device time (issue -> complete), all ops combined, devices with completions only.
    #[serde(default)]
    pub latency_histogram: Vec<DeviceHistogram>,
    /// In-flight depth of every device the agent has seen.
    #[serde(default)]
    pub inflight: Vec<DeviceInflight>,
    /// Per (device, op) detail: device time, queue time, sizes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ops: Vec<OpStats>,
    /// Per pod (or cgroup) detail when attribution is on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<PodStats>,
    /// Lost or unusual events during this interval, by kind (see [`Losses`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub losses: Option<Losses>,
    /// The same counters since the agent started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub losses_total: Option<Losses>,
    /// How the data was collected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentInfo>,
    /// The node's `/proc/pressure/io` (PSI); absent where the kernel has no PSI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_pressure: Option<Pressure>,
    /// Busy time and weighted I/O time per device from `/proc/diskstats` (iostat's `%util` and
    /// `aqu-sz`); absent in older files and before the second diskstats reading.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disk_time: Vec<DiskTimeStats>,
}

/// One entry of `disk_time`: `/proc/diskstats` fields 10 and 11 over the interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskTimeStats {
    pub device_id: u64,
    pub device_name: String,
    /// ms with at least one request in flight (field 10, `io_ticks`).
    pub io_time_ms: u64,
    /// ms of request time summed over all requests (field 11, `time_in_queue`).
    pub weighted_io_time_ms: u64,
    /// `io_time_ms / interval`: fraction of the interval the device was busy (iostat `%util`/100).
    pub utilization: f64,
    /// `weighted_io_time_ms / interval`: average number of requests in flight (iostat `aqu-sz`).
    pub avg_queue_size: f64,
}

/// One entry of `latency_histogram` (the seed's shape plus `sum_us`/`sum_ns`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceHistogram {
    pub device_id: u64,
    pub device_name: String,
    pub total: u64,
    /// Exact sum of latencies in µs (from the kernel's ns sum). Absent in the seed's files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sum_us: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sum_ns: Option<u64>,
    pub buckets: Vec<Bucket>,
}

/// A non-empty log2 slot. Units are µs for latency histograms and bytes for size histograms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    pub slot: u32,
    pub count: u64,
    pub bucket_low: u64,
    pub bucket_high: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceInflight {
    pub device_id: u64,
    pub device_name: String,
    /// Requests in flight at the end of the interval (tracked since the agent started).
    pub count: u64,
    /// Highest in-flight count during the interval. Absent in the seed's files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak: Option<u64>,
    /// Upper bound of the interval's highest in-flight count, present only when it is above
    /// `peak`: the device's I/O moved on several hardware queues, and `peak` is then the highest
    /// queue's (a depth the device had) while the device's own lies in `[peak, peak_upper]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_upper: Option<u64>,
    /// The kernel's own count from `/sys/block/<dev>/inflight` (reads + writes) at the same time;
    /// read only when the agent's count is non-zero while nothing completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sysfs_count: Option<u64>,
    /// Completions of the device in the interval that `/proc/diskstats` counted and the agent
    /// did not record (`losses.unseen_completions` per device); absent when not reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unseen_completions: Option<u64>,
}

/// Detail for one (device, op): op is `read`, `write`, `discard`, `flush` or `other`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpStats {
    pub device_id: u64,
    pub device_name: String,
    pub op: String,
    /// Completed requests in the interval (exact).
    pub count: u64,
    /// Bytes of those requests (exact).
    pub bytes: u64,
    /// Issue -> complete, µs buckets, exact sum.
    pub device_time: TimeHistogram,
    /// Insert -> issue, µs buckets (requests never queued land in slot 0), exact sum.
    pub queue_time: TimeHistogram,
    /// Request size, log2 byte buckets.
    pub size: SizeHistogram,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimeHistogram {
    pub sum_ns: u64,
    pub sum_us: f64,
    pub buckets: Vec<Bucket>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SizeHistogram {
    pub buckets: Vec<Bucket>,
}

/// I/O submitted by one pod (or one non-pod cgroup) to one device, when attribution is on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodStats {
    /// `k8s.namespace.name`; absent for cgroups that are not pods, and when the API is unreachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// `k8s.pod.uid`, known from the cgroup path even without API access.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Cgroup path (relative to the cgroup v2 root) when not a pod; `"other"` for the aggregate
    /// of everything past the cardinality limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    pub device_id: u64,
    pub device_name: String,
    pub op: String,
    pub count: u64,
    pub bytes: u64,
    pub device_time: TimeHistogram,
    /// The pod's cgroup v2 `io.pressure` (the pod's, not this row's: the same on each of its
    /// rows); absent for non-pod series and where PSI is unavailable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_pressure: Option<Pressure>,
}

/// Event counters (one per kind of [`crate::losses::KINDS`]). In `losses` they are deltas for
/// the interval; in `losses_total`, totals since the agent started.
pub use crate::losses::Losses;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub version: String,
    /// `btf` or `tracepoint`.
    pub attach: String,
    /// Which path counted the interval's completions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathInfo>,
}

/// The fast path (the request's own block-layer stamps, no start map) and how it was decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathInfo {
    /// `on`, `verifying` (stats flags from the kernel-version table, self-test still counting),
    /// `failed` (the self-test saw them disagree) or `unavailable`.
    pub fast: String,
    /// Where the stats flag values came from: `btf` or `kernel-table`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<String>,
    /// Completions of the interval (all devices, before `--devices` filtering) counted by the fast
    /// path; the others used the start map.
    pub fast_completions: u64,
    /// Completions whose `QUEUE_FLAG_STATS`, `RQF_STATS` and `io_start_time_ns` disagreed: of
    /// every completion while verifying, of one in 64 once the fast path is on.
    pub flag_disagreements: u64,
}

/// Buckets of the non-empty slots of `slots`.
pub fn buckets_from_slots(slots: &[u64]) -> Vec<Bucket> {
    slots
        .iter()
        .enumerate()
        .filter(|(_, c)| **c > 0)
        .map(|(slot, &count)| Bucket {
            slot: slot as u32,
            count,
            bucket_low: bucket_low(slot as u32),
            bucket_high: bucket_high(slot as u32),
        })
        .collect()
}

/// Per-slot counts of buckets read from a JSONL file (`len` slots; larger slots are clamped
/// into the last). For readers of files (tests, tools); the agent's own outputs are rendered
/// from its interval model and never read buckets back.
pub fn slots_from_buckets(buckets: &[Bucket], len: usize) -> Vec<u64> {
    let mut slots = vec![0u64; len];
    for b in buckets {
        slots[clamp_slot(b.slot as usize).min(len - 1)] += b.count;
    }
    slots
}

/// Formats epoch seconds as the seed did (Python's `datetime.isoformat()` on a UTC datetime):
/// `2025-10-02T14:20:00.123000+00:00`.
pub fn iso_timestamp(epoch_s: f64) -> String {
    let micros_total = (epoch_s * 1e6).round() as i64;
    let secs = micros_total.div_euclid(1_000_000);
    let micros = micros_total.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}+00:00", sod / 3600, (sod / 60) % 60, sod % 60)
}

/// Compact UTC time for file names: `20251002T142000Z`.
pub fn compact_utc(epoch_s: f64) -> String {
    let secs = epoch_s.floor() as i64;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!("{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z", sod / 3600, (sod / 60) % 60, sod % 60)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED_EXAMPLE: &str = r#"{"timestamp": 1696262400.123, "iso_timestamp": "2025-10-02T14:20:00.123000+00:00", "interval_s": 5.0, "latency_histogram": [{"device_id": 271581184, "device_name": "nvme0n1", "total": 45123, "buckets": [{"slot": 4, "count": 12000, "bucket_low": 16, "bucket_high": 31}, {"slot": 5, "count": 28000, "bucket_low": 32, "bucket_high": 63}, {"slot": 6, "count": 5123, "bucket_low": 64, "bucket_high": 127}]}], "inflight": [{"device_id": 271581184, "device_name": "nvme0n1", "count": 24}]}"#;

    #[test]
    fn reads_the_seed_schema() {
        let s: Snapshot = serde_json::from_str(SEED_EXAMPLE).unwrap();
        assert_eq!(s.latency_histogram[0].total, 45123);
        assert_eq!(s.latency_histogram[0].sum_us, None);
        assert_eq!(s.node, None);
        assert_eq!(s.inflight[0].count, 24);
        assert_eq!(s.inflight[0].peak, None);
        let slots = slots_from_buckets(&s.latency_histogram[0].buckets, 32);
        assert_eq!(buckets_from_slots(&slots), s.latency_histogram[0].buckets);
    }

    #[test]
    fn written_snapshot_keeps_seed_keys() {
        let mut slots = vec![0u64; 32];
        slots[4] = 3;
        let snap = Snapshot {
            schema_version: Some(SCHEMA_VERSION),
            timestamp: 1696262400.123,
            iso_timestamp: iso_timestamp(1696262400.123),
            interval_s: 5.0,
            node: Some("n1".into()),
            seq: Some(0),
            latency_histogram: vec![DeviceHistogram {
                device_id: 7 << 20,
                device_name: "loop0".into(),
                total: 3,
                sum_us: Some(60.0),
                sum_ns: Some(60_000),
                buckets: buckets_from_slots(&slots),
            }],
            inflight: vec![],
            ops: vec![],
            pods: vec![],
            losses: Some(Losses::default()),
            losses_total: None,
            agent: None,
            io_pressure: None,
            run_id: None,
            run_started: None,
            disk_time: vec![],
        };
        let line = serde_json::to_string(&snap).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        for key in ["timestamp", "iso_timestamp", "interval_s", "latency_histogram", "inflight"] {
            assert!(v.get(key).is_some(), "{key}");
        }
        let b = &v["latency_histogram"][0]["buckets"][0];
        assert_eq!(b["slot"], 4);
        assert_eq!(b["bucket_low"], 16);
        assert_eq!(b["bucket_high"], 31);
        assert_eq!(v["iso_timestamp"], "2023-10-02T16:00:00.123000+00:00");
        let back: Snapshot = serde_json::from_str(&line).unwrap();
        assert_eq!(back, snap);
    }

    fn schema() -> serde_json::Value {
        serde_json::from_str(include_str!("../../docs/snapshot.schema.json")).unwrap()
    }

    fn full_snapshot() -> Snapshot {
        let mut slots = vec![0u64; 32];
        slots[5] = 2;
        let time = TimeHistogram { sum_ns: 70_000, sum_us: 70.0, buckets: buckets_from_slots(&slots) };
        let mut s: Snapshot = serde_json::from_str(SEED_EXAMPLE).unwrap();
        s.schema_version = Some(SCHEMA_VERSION);
        s.node = Some("n".into());
        s.seq = Some(3);
        s.latency_histogram[0].sum_ns = Some(1);
        s.latency_histogram[0].sum_us = Some(0.001);
        s.inflight[0].peak = Some(30);
        s.inflight[0].sysfs_count = Some(24);
        s.inflight[0].unseen_completions = Some(1);
        s.ops.push(OpStats {
            device_id: 1,
            device_name: "loop0".into(),
            op: "write".into(),
            count: 2,
            bytes: 8192,
            device_time: time.clone(),
            queue_time: time.clone(),
            size: SizeHistogram { buckets: buckets_from_slots(&slots) },
        });
        s.pods.push(PodStats {
            namespace: Some("ns".into()),
            pod: Some("p".into()),
            pod_uid: Some("u".into()),
            container: None,
            cgroup: None,
            device_id: 1,
            device_name: "loop0".into(),
            op: "write".into(),
            count: 2,
            bytes: 8192,
            device_time: time,
            io_pressure: Some(psi()),
        });
        s.losses = Some(Losses::default());
        s.losses_total = Some(Losses::default().with("recursion_misses", 1));
        s.agent = Some(AgentInfo {
            version: "0.1.0".into(),
            attach: "btf".into(),
            path: Some(PathInfo {
                fast: "on".into(),
                flags: Some("btf".into()),
                fast_completions: 3,
                flag_disagreements: 0,
            }),
        });
        s.io_pressure = Some(psi());
        s.run_id = Some("0123456789abcdef0123456789abcdef".into());
        s.run_started = Some(1_696_262_000.5);
        s.disk_time.push(DiskTimeStats {
            device_id: 1,
            device_name: "loop0".into(),
            io_time_ms: 1000,
            weighted_io_time_ms: 7500,
            utilization: 0.2,
            avg_queue_size: 1.5,
        });
        s
    }

    fn psi() -> Pressure {
        let mut p = crate::pressure::parse(
            "some avg10=1.50 avg60=0.2 avg300=0 total=900\nfull avg10=0 avg60=0 avg300=0 total=40",
        )
        .unwrap();
        p.some.delta_us = Some(120);
        p
    }

    #[test]
    fn json_schema_accepts_both_schemas_and_rejects_drift() {
        let validator = jsonschema::validator_for(&schema()).unwrap();
        let seed: serde_json::Value = serde_json::from_str(SEED_EXAMPLE).unwrap();
        assert!(validator.is_valid(&seed));
        let full = serde_json::to_value(full_snapshot()).unwrap();
        let errors: Vec<String> = validator.iter_errors(&full).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{errors:?}");
        // A renamed key or a wrong type is caught: the schema is not vacuous.
        let mut bad = full.clone();
        bad["ops"][0]["op"] = "scribble".into();
        assert!(!validator.is_valid(&bad));
        let mut bad = full.clone();
        bad["losses"].as_object_mut().unwrap().remove("stale_evicted");
        assert!(!validator.is_valid(&bad));
        // PSI: present and checked where the kernel has it; a zero stand-in is not the shape.
        assert!(full["io_pressure"]["some"]["delta_us"] == 120 && full["pods"][0]["io_pressure"].is_object());
        let mut bad = full.clone();
        bad["pods"][0]["io_pressure"]["full"].as_object_mut().unwrap().remove("total_us");
        assert!(!validator.is_valid(&bad));
        let mut bad = full.clone();
        bad["io_pressure"] = 0.into();
        assert!(!validator.is_valid(&bad));
        // Without PSI the keys are absent (never zero), and that is valid.
        let mut snap = full_snapshot();
        snap.io_pressure = None;
        snap.pods[0].io_pressure = None;
        let none = serde_json::to_value(&snap).unwrap();
        assert!(none.get("io_pressure").is_none() && none["pods"][0].get("io_pressure").is_none());
        assert!(validator.is_valid(&none));
        // Run identity and diskstats times: present and checked; absent (older files) is valid.
        assert!(full["run_id"].is_string() && full["disk_time"][0]["avg_queue_size"] == 1.5);
        let mut bad = full.clone();
        bad["run_id"] = "not-hex".into();
        assert!(!validator.is_valid(&bad));
        let mut bad = full.clone();
        bad["disk_time"][0].as_object_mut().unwrap().remove("io_time_ms");
        assert!(!validator.is_valid(&bad));
        let mut old = full.clone();
        for key in ["run_id", "run_started", "disk_time"] {
            old.as_object_mut().unwrap().remove(key);
        }
        // A file written before a loss kind was added lacks it (map_read_failures, and every
        // kind after the first schema's).
        for l in ["losses", "losses_total"] {
            let obj = old[l].as_object_mut().unwrap();
            obj.retain(|k, _| FIRST_SCHEMA_KINDS.contains(&k.as_str()));
            assert_eq!(obj.len(), FIRST_SCHEMA_KINDS.len());
        }
        let errors: Vec<String> = validator.iter_errors(&old).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "an older line must keep validating: {errors:?}");
    }

    /// The kinds of the first schema (`losses` objects of every file ever written have them).
    /// Kinds added since are optional in the schema, so older files keep validating.
    const FIRST_SCHEMA_KINDS: &[&str] = &[
        "start_insert_failed",
        "complete_without_start",
        "stale_evicted",
        "hist_update_failed",
        "device_map_full",
        "cgroup_map_full",
        "recursion_misses",
        "inflight_resync",
        "write_failures",
        "requeued",
        "partial_completion",
    ];

    /// The schema's `losses` object is the table of kinds: the first schema's keys required,
    /// every kind described as the table describes it, and nothing else.
    #[test]
    fn json_schema_losses_are_the_table_of_kinds() {
        let schema = schema();
        let losses = &schema["$defs"]["losses"];
        let required: Vec<&str> = losses["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        let keys: Vec<&str> = crate::losses::KINDS.iter().map(|k| k.key).collect();
        assert_eq!(required, FIRST_SCHEMA_KINDS, "new kinds must stay optional: old files lack them");
        assert_eq!(&keys[..FIRST_SCHEMA_KINDS.len()], FIRST_SCHEMA_KINDS, "new kinds go at the end of the table");
        let props = losses["properties"].as_object().unwrap();
        assert_eq!(props.len(), keys.len(), "the schema has kinds the table does not");
        for k in crate::losses::KINDS {
            assert_eq!(props[k.key]["description"], k.description, "{}", k.key);
            assert_eq!(props[k.key]["type"], "integer", "{}", k.key);
        }
        let written = serde_json::to_value(Losses::default()).unwrap();
        let written: Vec<&str> = written.as_object().unwrap().keys().map(String::as_str).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(written, sorted, "the JSONL object carries exactly the table's keys");
    }

    #[test]
    fn iso_timestamps_match_python_isoformat() {
        assert_eq!(iso_timestamp(0.0), "1970-01-01T00:00:00.000000+00:00");
        assert_eq!(iso_timestamp(951_782_400.5), "2000-02-29T00:00:00.500000+00:00");
        assert_eq!(iso_timestamp(1_759_414_800.123), "2025-10-02T14:20:00.123000+00:00");
        assert_eq!(compact_utc(1_759_414_800.9), "20251002T142000Z");
    }
}
