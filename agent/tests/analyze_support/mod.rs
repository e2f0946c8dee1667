//! Generated JSONL inputs with known answers, for the analyzer's integration tests and its
//! throughput bench. Snapshots are built from individual request latencies, so totals, bucket
//! counts and exact sums follow from the construction, and they are serialized with the
//! crate's own `Snapshot` type (the seed schema is the same type with every new key left out).
#![allow(dead_code)] // each test binary uses a different part

use std::path::{Path, PathBuf};
use std::process::Command;

use blkio_agent::histogram::{HIST_SLOTS, log2_slot};
use blkio_agent::snapshot::{
    AgentInfo, DeviceHistogram, DeviceInflight, Losses, OpStats, SizeHistogram, Snapshot, TimeHistogram,
    buckets_from_slots, iso_timestamp,
};

/// 2025-10-02T14:20:00Z
pub const T0: f64 = 1_759_414_800.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    /// The seed's keys only: no schema_version, node, seq, sum_us/sum_ns, peak, ops.
    Seed,
    /// Everything the agent writes.
    Current,
}

/// `count` requests of one op that each took `latency_us`.
#[derive(Debug, Clone, Copy)]
pub struct Io {
    pub op: &'static str,
    pub latency_us: u64,
    pub count: u64,
    /// Bytes per request and queue time (insert -> issue) per request.
    pub size: u64,
    pub queue_us: u64,
}

#[derive(Debug, Clone)]
pub struct DevSample {
    pub name: String,
    pub id: u64,
    pub ios: Vec<Io>,
    pub inflight: u64,
    pub peak: u64,
    /// `peak_upper` (the agent's schema only): the I/O used several hardware queues.
    pub peak_upper: Option<u64>,
}

impl DevSample {
    pub fn new(name: &str, id: u64, ios: Vec<Io>, inflight: u64, peak: u64) -> Self {
        DevSample { name: name.into(), id, ios, inflight, peak, peak_upper: None }
    }

    pub fn with_peak_upper(self, upper: u64) -> Self {
        DevSample { peak_upper: Some(upper), ..self }
    }
}

pub fn io(op: &'static str, latency_us: u64, count: u64) -> Io {
    Io { op, latency_us, count, size: 4096, queue_us: 0 }
}

/// `count` requests of `size` bytes that waited `queue_us` before issue and took `latency_us`.
pub fn io_full(op: &'static str, latency_us: u64, count: u64, size: u64, queue_us: u64) -> Io {
    Io { op, latency_us, count, size, queue_us }
}

fn slots_of<'a>(ios: impl Iterator<Item = &'a Io>) -> Vec<u64> {
    let mut slots = vec![0u64; HIST_SLOTS];
    for i in ios {
        slots[log2_slot(i.latency_us)] += i.count;
    }
    slots
}

/// One snapshot ending at `ts`. Devices without requests are left out of `latency_histogram`
/// (as the agent does) but stay in `inflight`.
pub fn snapshot(
    schema: Schema,
    node: Option<&str>,
    ts: f64,
    interval_s: f64,
    seq: u64,
    devs: &[DevSample],
) -> Snapshot {
    let cur = schema == Schema::Current;
    let mut latency_histogram = Vec::new();
    let mut inflight = Vec::new();
    let mut ops = Vec::new();
    for d in devs {
        let total: u64 = d.ios.iter().map(|i| i.count).sum();
        let sum_ns: u64 = d.ios.iter().map(|i| i.latency_us * i.count * 1000).sum();
        if total > 0 {
            latency_histogram.push(DeviceHistogram {
                device_id: d.id,
                device_name: d.name.clone(),
                total,
                sum_us: cur.then_some(sum_ns as f64 / 1000.0),
                sum_ns: cur.then_some(sum_ns),
                buckets: buckets_from_slots(&slots_of(d.ios.iter())),
            });
        }
        inflight.push(DeviceInflight {
            device_id: d.id,
            device_name: d.name.clone(),
            count: d.inflight,
            peak: cur.then_some(d.peak),
            peak_upper: d.peak_upper.filter(|_| cur),
            sysfs_count: cur.then_some(d.inflight),
            unseen_completions: None,
        });
        if cur {
            for op in ["read", "write", "discard", "flush"] {
                let mine: Vec<&Io> = d.ios.iter().filter(|i| i.op == op).collect();
                let count: u64 = mine.iter().map(|i| i.count).sum();
                if count == 0 {
                    continue;
                }
                let op_sum_ns: u64 = mine.iter().map(|i| i.latency_us * i.count * 1000).sum();
                let queue_ns: u64 = mine.iter().map(|i| i.queue_us * i.count * 1000).sum();
                let mut queue = vec![0u64; HIST_SLOTS];
                let mut size = vec![0u64; HIST_SLOTS];
                for i in &mine {
                    queue[log2_slot(i.queue_us)] += i.count;
                    size[log2_slot(i.size)] += i.count;
                }
                let bytes: u64 = mine.iter().map(|i| i.size * i.count).sum();
                ops.push(OpStats {
                    device_id: d.id,
                    device_name: d.name.clone(),
                    op: op.into(),
                    count,
                    bytes,
                    device_time: TimeHistogram {
                        sum_ns: op_sum_ns,
                        sum_us: op_sum_ns as f64 / 1000.0,
                        buckets: buckets_from_slots(&slots_of(mine.into_iter())),
                    },
                    queue_time: TimeHistogram {
                        sum_ns: queue_ns,
                        sum_us: queue_ns as f64 / 1000.0,
                        buckets: buckets_from_slots(&queue),
                    },
                    size: SizeHistogram { buckets: buckets_from_slots(&size) },
                });
            }
        }
    }
    Snapshot {
        schema_version: cur.then_some(1),
        timestamp: ts,
        iso_timestamp: iso_timestamp(ts),
        interval_s,
        node: if cur { node.map(String::from) } else { None },
        seq: cur.then_some(seq),
        latency_histogram,
        inflight,
        ops,
        pods: vec![],
        losses: cur.then(Losses::default),
        losses_total: cur.then(Losses::default),
        agent: cur.then(|| AgentInfo { version: "0.1.0".into(), attach: "btf".into(), path: None }),
        io_pressure: None,
        run_id: None,
        run_started: None,
        disk_time: vec![],
    }
}

pub fn line(s: &Snapshot) -> String {
    let mut l = serde_json::to_string(s).expect("serializable");
    l.push('\n');
    l
}

pub fn write(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.concat()).expect("write input");
}

pub fn gzip(path: &Path, text: &str) {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(text.as_bytes()).unwrap();
    std::fs::write(path, enc.finish().unwrap()).unwrap();
}

/// Result of running the real binary.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(args: &[&str]) -> Run {
    let out =
        Command::new(env!("CARGO_BIN_EXE_blkio-agent")).arg("analyze").args(args).output().expect("run blkio-agent");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

/// Runs `analyze --input <inputs> --output-dir <out> <extra>`, asserts success, returns
/// summary.json and the run.
pub fn analyze_ok(inputs: &[&Path], out: &Path, extra: &[&str]) -> (serde_json::Value, Run) {
    let mut args: Vec<String> = vec!["--input".into()];
    args.extend(inputs.iter().map(|p| p.display().to_string()));
    args.push("--output-dir".into());
    args.push(out.display().to_string());
    args.extend(extra.iter().map(|s| s.to_string()));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = run(&argv);
    assert_eq!(r.code, 0, "analyze failed:\nstdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    let summary = serde_json::from_slice(&std::fs::read(out.join("summary.json")).expect("summary.json written"))
        .expect("summary.json is JSON");
    (summary, r)
}

/// The summary entry of one device (and node).
pub fn device<'a>(summary: &'a serde_json::Value, node: Option<&str>, name: &str) -> &'a serde_json::Value {
    summary["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .find(|d| d["device_name"] == name && d["node"].as_str() == node)
        .unwrap_or_else(|| panic!("no device {node:?}/{name} in {summary:#}"))
}

/// Asserts that `v` (µs) lies in log2 slot `slot`: [bucket_low, bucket_high + 1].
pub fn assert_in_slot(v: f64, slot: u32, what: &str) {
    let lo = blkio_agent::histogram::bucket_low(slot) as f64;
    let hi = blkio_agent::histogram::bucket_high(slot) as f64 + 1.0;
    assert!(v >= lo && v <= hi, "{what} = {v} not in slot {slot} [{lo}, {hi}]");
}

/// A small deterministic PRNG (xorshift64*), so generated inputs are reproducible.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A day-like workload: `devices` devices, `seconds` snapshots of 1 s, mixed reads and writes
/// with a few latency modes each. Returns the JSONL path and its size in bytes.
pub fn generate_day(dir: &Path, devices: usize, seconds: usize) -> (PathBuf, u64) {
    use std::io::Write;
    let path = dir.join("day.jsonl");
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path).unwrap());
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let names: Vec<(String, u64)> = (0..devices).map(|i| (format!("nvme{}n1", i), (259u64 << 20) | i as u64)).collect();
    for s in 0..seconds {
        let devs: Vec<DevSample> = names
            .iter()
            .map(|(name, id)| {
                let base = 20 + rng.below(40);
                let ios = vec![
                    io("read", base, 500 + rng.below(2000)),
                    io("read", base * 3, 100 + rng.below(300)),
                    io("read", base * 20, rng.below(20)),
                    io("write", base * 2, 200 + rng.below(800)),
                    io("write", base * 8, 50 + rng.below(100)),
                    io("flush", 900 + rng.below(300), rng.below(3)),
                ];
                let inflight = rng.below(64);
                DevSample::new(name, *id, ios, inflight, inflight + rng.below(32))
            })
            .collect();
        let snap = snapshot(Schema::Current, Some("node-a"), T0 + s as f64 + 1.0, 1.0, s as u64, &devs);
        serde_json::to_writer(&mut f, &snap).unwrap();
        f.write_all(b"\n").unwrap();
    }
    f.flush().unwrap();
    drop(f);
    let size = std::fs::metadata(&path).unwrap().len();
    (path, size)
}
