//! The JSONL renderer: an [`Interval`] as the [`Snapshot`] contract (`docs/snapshot.schema.json`).

use super::{DeviceInterval, Hist, Interval, PodSeries};
use crate::{
    histogram::ns_to_us,
    snapshot::{
        AgentInfo, DeviceHistogram, DeviceInflight, OpStats, PodStats, SCHEMA_VERSION, SizeHistogram, Snapshot,
        TimeHistogram, buckets_from_slots, iso_timestamp,
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
                        sysfs_count: depth.sysfs,
                    })
                })
                .collect(),
            ops: self.devices.iter().flat_map(ops).collect(),
            pods: self.pods.iter().map(PodSeries::stats).collect(),
            losses: Some(self.losses.clone()),
            losses_total: Some(self.losses_total.clone()),
            agent: Some(AgentInfo { version: env!("CARGO_PKG_VERSION").into(), attach: self.attach.into() }),
        }
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
        }
    }
}
