//! Totals and points built from intervals; the fake loss kind through every output.
use super::*;
use crate::interval::{self, Depth, DeviceInterval, Interval, OpInterval, PodLabels, PodSeries};
use crate::losses::{KINDS, LossKind, Source};

fn hist(slots: &[(u32, u64)], sum: u64) -> interval::Hist {
    let mut h = interval::Hist { sum, ..Default::default() };
    for &(slot, n) in slots {
        h.slots[slot as usize] += n;
    }
    h
}

/// A realistic interval: `loop0` reads, its depth, one pod, some losses.
pub fn interval(end_s: f64, interval_s: f64, reads: &[(u32, u64)], read_sum_ns: u64) -> Interval {
    let count: u64 = reads.iter().map(|r| r.1).sum();
    let device_time = hist(reads, read_sum_ns);
    let mut iv = Interval::empty(end_s, interval_s, "n1", 0, "btf");
    iv.devices.push(DeviceInterval {
        id: 7,
        name: "loop0".into(),
        ops: vec![OpInterval {
            op: "read",
            count,
            bytes: count * 4096,
            device_time,
            queue_time: hist(&[(0, count)], 0),
            size: hist(&[(12, count)], count * 4096),
        }],
        depth: Some(Depth { count: 2, peak: 9, peak_upper: 9, sysfs: None }),
        unseen: None,
    });
    iv.pods.push(PodSeries {
        labels: PodLabels {
            namespace: Some("default".into()),
            pod: Some("db-0".into()),
            pod_uid: Some("uid-1".into()),
            ..Default::default()
        },
        device_id: 7,
        device_name: "loop0".into(),
        op: "read",
        count,
        bytes: count * 4096,
        device_time,
        io_pressure: None,
    });
    iv.losses = Losses::default().with("stale_evicted", 1).with("requeued", 2);
    iv
}

fn find<'a>(c: &'a Collected, name: &str) -> Vec<&'a Point> {
    c.points.iter().filter(|p| p.metric.name == name).collect()
}

#[test]
fn cumulative_is_the_exact_sum_of_deltas() {
    let mut t = Totals::default();
    t.add(&interval(100.0, 5.0, &[(4, 10), (6, 3)], 1_000_123));
    t.add(&interval(105.0, 5.0, &[(4, 1), (31, 2)], 7));
    let c = t.collect(&AgentCounters::default(), PeakWindow::Scrape);
    let h = find(&c, "blkio.request.duration");
    assert_eq!(h.len(), 1);
    let Value::Hist(hist) = &h[0].value else { panic!() };
    assert_eq!(hist.slots[4], 11);
    assert_eq!(hist.slots[6], 3);
    assert_eq!(hist.slots[31], 2, "the kernel's overflow slot is the last bucket");
    assert_eq!(hist.sum, 1_000_130);
    assert_eq!(h[0].start_ns, 95_000_000_000);
    assert_eq!(c.time_ns, 105_000_000_000);
    assert_eq!(
        h[0].attrs,
        vec![
            ("system.device", "loop0".into()),
            ("disk.io.direction", "read".into()),
            ("blkio.operation", "read".into())
        ]
    );
    let ops = find(&c, "system.disk.operations");
    assert_eq!(ops[0].value, Value::Counter(16));
    let lost = find(&c, "blkio.agent.events.lost");
    let stale = lost.iter().find(|p| p.attrs[0].1 == "stale_evicted").unwrap();
    assert_eq!(stale.value, Value::Counter(2));
    let noted = find(&c, "blkio.agent.events.noted");
    assert_eq!(noted.len(), 2);
    let pod = find(&c, "blkio.pod.request.duration");
    assert!(pod[0].attrs.contains(&("k8s.pod.name", "db-0".into())));
    assert!(!pod[0].attrs.iter().any(|(k, _)| *k == "k8s.container.name"));
}

#[test]
fn delta_is_each_window_and_skips_idle_series() {
    let mut t = Totals::default();
    t.add(&interval(100.0, 5.0, &[(4, 10)], 500));
    let c1 = t.collect(&AgentCounters::default(), PeakWindow::Scrape);
    t.add(&interval(105.0, 5.0, &[(5, 2)], 90));
    let c2 = t.collect(&AgentCounters::default(), PeakWindow::Scrape);
    let d = c2.delta_since(&c1);
    let h = find(&d, "blkio.request.duration");
    let Value::Hist(hist) = &h[0].value else { panic!() };
    assert_eq!((hist.slots[4], hist.slots[5], hist.sum), (0, 2, 90));
    assert_eq!(h[0].start_ns, 100_000_000_000);
    // write_failures never happened: no delta point.
    assert!(!find(&d, "blkio.agent.events.lost").iter().any(|p| p.attrs[0].1 == "write_failures"));
    let c3 = t.collect(&AgentCounters::default(), PeakWindow::Scrape);
    assert!(find(&c3.delta_since(&c2), "blkio.request.duration").is_empty());
    assert_eq!(find(&c3.delta_since(&c2), "blkio.inflight").len(), 1, "gauges are always sent");
}

#[test]
fn idle_pod_series_are_forgotten() {
    let mut t = Totals::default();
    t.add(&interval(100.0, 5.0, &[(4, 1)], 1));
    let mut later = interval(100.0 + 601.0, 5.0, &[(4, 1)], 1);
    later.pods.clear();
    t.add(&later);
    assert!(find(&t.collect(&AgentCounters::default(), PeakWindow::Scrape), "blkio.pod.request.duration").is_empty());
}

/// Adding a kind is one row of the table: a fake one shows up in every output.
#[test]
fn a_new_loss_kind_in_the_table_reaches_jsonl_prometheus_and_otlp() {
    let fake = LossKind {
        key: "fake_kind",
        label: "fake_kind",
        lost: true,
        source: Source::Agent,
        description: "A kind added by this test.",
    };
    let kinds: &'static [LossKind] = Box::leak(KINDS.iter().copied().chain([fake]).collect::<Vec<_>>().into());
    let mut iv = interval(100.0, 5.0, &[(4, 1)], 1);
    iv.losses = Losses::zero(kinds).with("fake_kind", 7);
    iv.losses_total = iv.losses.clone();

    let line = serde_json::to_value(iv.snapshot()).unwrap();
    assert_eq!(line["losses"]["fake_kind"], 7);
    assert_eq!(line["losses_total"]["fake_kind"], 7);

    let mut t = Totals::default();
    t.add(&iv);
    let c = t.collect(&AgentCounters::default(), PeakWindow::Scrape);
    let text = crate::export::prometheus::render(&c, &[]);
    assert!(text.contains("blkio_agent_events_lost_total{blkio_event_kind=\"fake_kind\"} 7"), "{text}");

    let req = crate::export::otlp::encode::request(
        &c,
        crate::export::config::Temporality::Cumulative,
        &opentelemetry_proto::tonic::resource::v1::Resource::default(),
    );
    let metric =
        req.resource_metrics[0].scope_metrics[0].metrics.iter().find(|m| m.name == "blkio.agent.events.lost").unwrap();
    let Some(opentelemetry_proto::tonic::metrics::v1::metric::Data::Sum(sum)) = &metric.data else { panic!() };
    let point = sum
        .data_points
        .iter()
        .find(|p| {
            p.attributes.iter().any(|kv| {
                kv.value.as_ref().and_then(|v| v.value.as_ref())
                    == Some(&opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue("fake_kind".into()))
            })
        })
        .expect("an OTLP point for the new kind");
    assert_eq!(point.value, Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(7)));
}

fn with_depth(mut iv: Interval, count: u64, peak: u64) -> Interval {
    iv.devices[0].depth = Some(Depth { count, peak, peak_upper: peak, sysfs: None });
    iv
}

fn gauge(c: &Collected, name: &str) -> u128 {
    match find(c, name)[0].value {
        Value::Gauge(v) => v,
        ref v => panic!("{name} is {v:?}"),
    }
}

/// A 15 s scrape of a 1 s agent: the peak gauge is the highest depth since the previous scrape
/// (not the last interval's), every peak is seen by exactly the scrape that follows it, and the
/// OTLP window is independent of the scrapes.
#[test]
fn the_peak_gauge_covers_everything_since_the_previous_scrape() {
    let mut t = Totals::default();
    let peaks = [3u64, 4, 40, 5, 2, 6, 1, 2, 3, 9, 2, 1, 1, 2, 3, 1, 1, 7, 1, 1];
    let mut scraped = Vec::new();
    for (i, &peak) in peaks.iter().enumerate() {
        t.add(&with_depth(interval(100.0 + i as f64, 1.0, &[(4, 1)], 1), 1, peak));
        if (i + 1) % 15 == 0 || i + 1 == peaks.len() {
            scraped.push(gauge(&t.collect(&AgentCounters::default(), PeakWindow::Scrape), "blkio.inflight.peak"));
            t.reset_window(PeakWindow::Scrape);
        }
    }
    assert_eq!(scraped, vec![40, 7], "scrape 1 sees the 40 of interval 3, scrape 2 the 7 of interval 18");
    assert_eq!(gauge(&t.collect(&AgentCounters::default(), PeakWindow::Otlp), "blkio.inflight.peak"), 40);
    // A scrape with no interval since the previous one: the depth still in flight, not an old peak.
    assert_eq!(gauge(&t.collect(&AgentCounters::default(), PeakWindow::Scrape), "blkio.inflight.peak"), 1);
    assert_eq!(gauge(&t.collect(&AgentCounters::default(), PeakWindow::Scrape), "blkio.inflight"), 1);
}

#[test]
fn every_op_series_has_a_direction() {
    let mut iv = interval(100.0, 5.0, &[(4, 1)], 1);
    let read = iv.devices[0].ops[0].clone();
    for op in ["write", "discard", "flush", "other"] {
        iv.devices[0].ops.push(OpInterval { op, ..read.clone() });
    }
    let mut t = Totals::default();
    t.add(&iv);
    let c = t.collect(&AgentCounters::default(), PeakWindow::Scrape);
    let ops = find(&c, "system.disk.operations");
    assert_eq!(ops.len(), 5);
    for p in ops {
        let get = |k: &str| p.attrs.iter().find(|(key, _)| *key == k).map(|(_, v)| v.as_str());
        let want = if get("blkio.operation") == Some("read") { "read" } else { "write" };
        assert_eq!(get("disk.io.direction"), Some(want), "{:?}", p.attrs);
    }
}

#[test]
fn diskstats_times_are_exact_second_counters() {
    let mut t = Totals::default();
    for (i, (io, w)) in [(1500u64, 6000u64), (250, 7)].into_iter().enumerate() {
        let mut iv = interval(100.0 + 2.0 * i as f64, 2.0, &[(4, 1)], 1);
        iv.disk_time.push(interval::DiskTime { id: 7, name: "loop0".into(), io_time_ms: io, weighted_io_time_ms: w });
        t.add(&iv);
    }
    let c = t.collect(&AgentCounters::default(), PeakWindow::Scrape);
    let io = find(&c, "system.disk.io_time");
    assert_eq!((io[0].value.clone(), io[0].start_ns), (Value::Counter(1_750_000_000), 98_000_000_000));
    assert_eq!(find(&c, "system.disk.weighted_io_time")[0].value, Value::Counter(6_007_000_000));
    let text = crate::export::prometheus::render(&c, &[]);
    assert!(text.contains("system_disk_io_time_seconds_total{system_device=\"loop0\"} 1.75\n"), "{text}");
    assert!(text.contains("system_disk_weighted_io_time_seconds_total{system_device=\"loop0\"} 6.007\n"), "{text}");
}
