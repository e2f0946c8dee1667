//! The JSONL renderer: an [`Interval`] as the [`Snapshot`] contract (`docs/snapshot.schema.json`).

use super::{DeviceInterval, DiskTime, Hist, Interval, PodSeries};
use crate::{
    histogram::ns_to_us,
    snapshot::{
        AgentInfo, DeviceHistogram, DeviceInflight, DiskTimeStats, OpStats, PathInfo, PodStats, SCHEMA_VERSION,
        SizeHistogram, Snapshot, TimeHistogram, buckets_from_slots, iso_timestamp,
    },
};

impl Interval {
    /// The JSONL line of this interval: `latency_histogram` holds the devices with completions,
    /// `inflight` those with a gauge, `ops` every (device, op) with completions, in device order.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            schema_version: Some(SCHEMA_VERSION),
            timestamp: self.end_s,
            iso_timestamp: iso_timestamp(self.end_s),
            interval_s: self.interval_s,
            node: Some(self.node.clone()),
            seq: Some(self.seq),
            run_id: self.run.as_ref().map(|r| r.id.clone()),
            run_started: self.run.as_ref().map(|r| r.started_s),
            latency_histogram: self.devices.iter().filter(|d| !d.ops.is_empty()).map(latency).collect(),
            inflight: self
                .devices
                .iter()
                .filter_map(|d| {
                    d.depth.map(|depth| DeviceInflight {
                        device_id: u64::from(d.id),
                        device_name: d.name.clone(),
                        count: depth.count,
                        peak: Some(depth.peak),
                        peak_upper: (depth.peak_upper > depth.peak).then_some(depth.peak_upper),
                        sysfs_count: depth.sysfs,
                        unseen_completions: d.unseen,
                    })
                })
                .collect(),
            ops: self.devices.iter().flat_map(ops).collect(),
            pods: self.pods.iter().map(PodSeries::stats).collect(),
            losses: Some(self.losses.clone()),
            losses_total: Some(self.losses_total.clone()),
            agent: Some(AgentInfo {
                version: env!("CARGO_PKG_VERSION").into(),
                attach: self.attach.into(),
                path: self.path.as_ref().map(|p| PathInfo {
                    fast: p.fast.into(),
                    flags: p.flags.map(Into::into),
                    fast_completions: p.fast_completions,
                    flag_disagreements: p.flag_disagreements,
                }),
            }),
            io_pressure: self.io_pressure,
            disk_time: self.disk_time.iter().map(|d| disk_time(d, self.interval_s)).collect(),
        }
    }
}

fn disk_time(d: &DiskTime, interval_s: f64) -> DiskTimeStats {
    let ms = interval_s * 1000.0;
    let per_ms = |v: u64| if ms > 0.0 { v as f64 / ms } else { 0.0 };
    DiskTimeStats {
        device_id: u64::from(d.id),
        device_name: d.name.clone(),
        io_time_ms: d.io_time_ms,
        weighted_io_time_ms: d.weighted_io_time_ms,
        utilization: per_ms(d.io_time_ms),
        avg_queue_size: per_ms(d.weighted_io_time_ms),
    }
}

fn latency(d: &DeviceInterval) -> DeviceHistogram {
    let h = d.device_time();
    DeviceHistogram {
        device_id: u64::from(d.id),
        device_name: d.name.clone(),
        total: d.count(),
        sum_us: Some(ns_to_us(h.sum)),
        sum_ns: Some(h.sum),
        buckets: buckets_from_slots(&h.slots),
    }
}

fn ops(d: &DeviceInterval) -> impl Iterator<Item = OpStats> + '_ {
    d.ops.iter().map(|o| OpStats {
        device_id: u64::from(d.id),
        device_name: d.name.clone(),
        op: o.op.to_string(),
        count: o.count,
        bytes: o.bytes,
        device_time: time(&o.device_time),
        queue_time: time(&o.queue_time),
        size: SizeHistogram { buckets: buckets_from_slots(&o.size.slots) },
    })
}

fn time(h: &Hist) -> TimeHistogram {
    TimeHistogram { sum_ns: h.sum, sum_us: ns_to_us(h.sum), buckets: buckets_from_slots(&h.slots) }
}

impl PodSeries {
    /// The JSONL `pods[]` entry of this series.
    pub fn stats(&self) -> PodStats {
        let l = self.labels.clone();
        PodStats {
            namespace: l.namespace,
            pod: l.pod,
            pod_uid: l.pod_uid,
            container: l.container,
            cgroup: l.cgroup,
            device_id: u64::from(self.device_id),
            device_name: self.device_name.clone(),
            op: self.op.to_string(),
            count: self.count,
            bytes: self.bytes,
            device_time: time(&self.device_time),
            io_pressure: self.io_pressure,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interval::{Depth, OpInterval, PodLabels};

    /// The exact line for a small interval: the seed's keys and shapes, devices with
    /// completions in `latency_histogram`, every gauge in `inflight`, µs sums from the ns sums.
    #[test]
    fn renders_the_snapshot_contract_byte_for_byte() {
        let mut slots = [0u64; crate::histogram::HIST_SLOTS];
        slots[4] = 2;
        let h = Hist::new(slots, 40_500);
        let mut iv = Interval::empty(1_759_414_800.123, 5.0, "n1", 3, "btf");
        iv.devices.push(DeviceInterval {
            id: 7 << 20,
            name: "loop0".into(),
            ops: vec![OpInterval { op: "read", count: 2, bytes: 8192, device_time: h, queue_time: h, size: h }],
            depth: Some(Depth { count: 1, peak: 4, peak_upper: 7, sysfs: None }),
            unseen: None,
        });
        iv.devices.push(DeviceInterval {
            id: 8 << 20,
            name: "sda".into(),
            ops: vec![],
            depth: Some(Depth { count: 0, peak: 0, peak_upper: 0, sysfs: Some(0) }),
            unseen: None,
        });
        iv.pods.push(PodSeries {
            labels: PodLabels { cgroup: Some("system.slice".into()), ..Default::default() },
            device_id: 7 << 20,
            device_name: "loop0".into(),
            op: "read",
            count: 2,
            bytes: 8192,
            device_time: h,
            io_pressure: None,
        });
        let line = serde_json::to_string(&iv.snapshot()).unwrap();
        let b = r#"[{"slot":4,"count":2,"bucket_low":16,"bucket_high":31}]"#;
        let t = format!(r#"{{"sum_ns":40500,"sum_us":40.5,"buckets":{b}}}"#);
        let zero = r#"{"start_insert_failed":0,"complete_without_start":0,"stale_evicted":0,"hist_update_failed":0,"device_map_full":0,"cgroup_map_full":0,"recursion_misses":0,"inflight_resync":0,"write_failures":0,"requeued":0,"partial_completion":0,"map_read_failures":0,"unseen_completions":0}"#;
        let expected = format!(
            concat!(
                r#"{{"schema_version":1,"timestamp":1759414800.123,"iso_timestamp":"2025-10-02T14:20:00.123000+00:00","interval_s":5.0,"node":"n1","seq":3,"#,
                r#""latency_histogram":[{{"device_id":7340032,"device_name":"loop0","total":2,"sum_us":40.5,"sum_ns":40500,"buckets":{b}}}],"#,
                r#""inflight":[{{"device_id":7340032,"device_name":"loop0","count":1,"peak":4,"peak_upper":7}},{{"device_id":8388608,"device_name":"sda","count":0,"peak":0,"sysfs_count":0}}],"#,
                r#""ops":[{{"device_id":7340032,"device_name":"loop0","op":"read","count":2,"bytes":8192,"device_time":{t},"queue_time":{t},"size":{{"buckets":{b}}}}}],"#,
                r#""pods":[{{"cgroup":"system.slice","device_id":7340032,"device_name":"loop0","op":"read","count":2,"bytes":8192,"device_time":{t}}}],"#,
                r#""losses":{z},"losses_total":{z},"agent":{{"version":"{v}","attach":"btf"}}}}"#
            ),
            b = b,
            t = t,
            z = zero,
            v = env!("CARGO_PKG_VERSION")
        );
        assert_eq!(line, expected);
    }

    /// Run identity on every line: two runs have different ids, each id is 128 random bits in
    /// hex, and the start time is carried as is.
    #[test]
    fn every_line_carries_the_run_identity() {
        let (a, b) = (crate::interval::RunIdentity::new(), crate::interval::RunIdentity::new());
        assert_ne!(a.id, b.id);
        for r in [&a, &b] {
            assert!(
                r.id.len() == 32 && r.id.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
                "{}",
                r.id
            );
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        assert!((a.started_s - now).abs() < 60.0, "{}", a.started_s);
        let mut iv = Interval::empty(1_759_414_800.5, 5.0, "n1", 9, "btf");
        iv.run = Some(crate::interval::RunIdentity { id: "00ff".repeat(8), started_s: 1_759_414_700.25 });
        let v = serde_json::to_value(iv.snapshot()).unwrap();
        assert_eq!(v["run_id"], "00ff".repeat(8));
        assert_eq!(v["run_started"], 1_759_414_700.25);
        assert_eq!(v["seq"], 9);
        iv.run = None;
        let v = serde_json::to_value(iv.snapshot()).unwrap();
        assert!(v.get("run_id").is_none() && v.get("run_started").is_none());
    }
}
