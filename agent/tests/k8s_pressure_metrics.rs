//! PSI in the metrics: the node's and each pod's I/O stall time become counters (summed
//! `delta_us` of the snapshots, a pod counted once per snapshot however many rows it has), and
//! nothing at all where the snapshots carry no pressure.

#![cfg(feature = "ebpf")] // the node agent; absent from the analyzer-only build

use blkio_agent::{
    export::{
        model::{AgentCounters, PeakWindow, Totals, Value},
        prometheus,
    },
    interval::{Hist, Interval, PodLabels, PodSeries},
    pressure::{Pressure, parse},
};

fn psi(some_delta: u64, full_delta: u64) -> Pressure {
    let mut p =
        parse("some avg10=3.00 avg60=1.00 avg300=0.20 total=90000\nfull avg10=1.00 avg60=0.50 avg300=0.10 total=30000")
            .unwrap();
    p.some.delta_us = Some(some_delta);
    p.full.delta_us = Some(full_delta);
    p
}

fn row(op: &'static str, pressure: Option<Pressure>) -> PodSeries {
    PodSeries {
        labels: PodLabels {
            namespace: Some("ml".into()),
            pod: Some("loader-0".into()),
            pod_uid: Some("u-1".into()),
            container: Some("loader".into()),
            cgroup: None,
        },
        device_id: 7,
        device_name: "nvme0n1".into(),
        op,
        count: 1,
        bytes: 4096,
        device_time: Hist::default(),
        io_pressure: pressure,
    }
}

fn snapshot(end: f64, node: Option<Pressure>, pods: Vec<PodSeries>) -> Interval {
    let mut iv = Interval::empty(end, 5.0, "n", 0, "btf");
    iv.pods = pods;
    iv.io_pressure = node;
    iv
}

fn counter(t: &Totals, name: &str, kind: &str) -> Option<u128> {
    let c = t.collect(&AgentCounters::default(), PeakWindow::Scrape);
    let p = c
        .points
        .iter()
        .find(|p| p.metric.name == name && p.attrs.iter().any(|(k, v)| *k == "blkio.pressure.kind" && v == kind))?;
    match p.value {
        Value::Counter(v) => Some(v),
        _ => panic!("{name} is a counter"),
    }
}

#[test]
fn stall_counters_sum_the_interval_deltas_once_per_pod() {
    let mut t = Totals::default();
    // Two rows of one pod (read and write) carry the same pod pressure: counted once.
    t.add(&snapshot(
        100.0,
        Some(psi(1000, 400)),
        vec![row("read", Some(psi(700, 200))), row("write", Some(psi(700, 200)))],
    ));
    t.add(&snapshot(105.0, Some(psi(50, 0)), vec![row("write", Some(psi(30, 5)))]));
    assert_eq!(counter(&t, "blkio.node.io.pressure.stall", "some"), Some(1_050_000), "ns");
    assert_eq!(counter(&t, "blkio.node.io.pressure.stall", "full"), Some(400_000));
    assert_eq!(counter(&t, "blkio.pod.io.pressure.stall", "some"), Some(730_000));
    assert_eq!(counter(&t, "blkio.pod.io.pressure.stall", "full"), Some(205_000));
    let c = t.collect(&AgentCounters::default(), PeakWindow::Scrape);
    let text = prometheus::render(&c, &[]);
    let line = text
        .lines()
        .find(|l| l.starts_with("blkio_pod_io_pressure_stall_seconds_total{") && l.contains("kind=\"some\""))
        .unwrap_or_else(|| panic!("pod stall counter in /metrics:\n{text}"));
    assert!(line.contains("k8s_pod_name=\"loader-0\"") && line.ends_with(" 0.00073"), "{line}");
    assert!(!line.contains("k8s_container_name"), "pressure is the pod's, not a container's: {line}");
}

#[test]
fn no_psi_means_no_stall_metrics_rather_than_zeros() {
    let mut t = Totals::default();
    t.add(&snapshot(100.0, None, vec![row("read", None)]));
    let c = t.collect(&AgentCounters::default(), PeakWindow::Scrape);
    assert!(c.points.iter().all(|p| !p.metric.name.contains("pressure")), "absent, not zero");
    assert!(c.points.iter().any(|p| p.metric.name == "blkio.pod.io"), "the pod's I/O is still exported");
}
