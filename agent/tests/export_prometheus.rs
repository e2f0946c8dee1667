//! `/metrics` scraped over HTTP and parsed with a Prometheus text-format parser; `/healthz` and
//! `/readyz` as Kubernetes probes see them.

#![cfg(feature = "ebpf")] // the node agent; absent from the analyzer-only build

mod export_support;

use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use blkio_agent::export::config::ExportConfig;
use blkio_agent::export::resource;
use blkio_agent::export::{AgentIdentity, Exporters, Health};
use export_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A plain HTTP/1.1 GET; returns (status, headers, body).
async fn get(addr: SocketAddr, path: &str, gzip: bool) -> (u16, HashMap<String, String>, Vec<u8>) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let enc = if gzip { "Accept-Encoding: gzip\r\n" } else { "" };
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n{enc}Connection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("complete response");
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string())).collect();
    (status, headers, raw[split + 4..].to_vec())
}

fn parse(body: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("valid exposition")
}

fn find<'a>(scrape: &'a prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> &'a prometheus_parse::Sample {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
}

fn scalar(s: &prometheus_parse::Sample) -> f64 {
    match s.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => v,
        _ => panic!("{} is not a scalar", s.metric),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_readyz_and_healthz() {
    let health = Arc::new(Health::default());
    let cfg: ExportConfig = config(&["--metrics-addr", "127.0.0.1:0"], &[]);
    assert!(cfg.otlp.is_none(), "no endpoint: OTLP off");
    let env = [("OTEL_RESOURCE_ATTRIBUTES", "k8s.cluster.name=c1")];
    let identity = AgentIdentity { node_name: "node-1".into(), host_name: "host-1".into() };
    let exporters =
        Exporters::start_with(cfg, resource::build(&identity, &vars(&env)).unwrap(), health.clone()).unwrap();
    let addr = exporters.metrics_addr().expect("listening");
    assert!(addr.ip().is_loopback() && addr.port() != 0);

    // Alive from the start, ready only once attached.
    assert_eq!(get(addr, "/healthz", false).await.0, 200);
    let (status, _, body) = get(addr, "/readyz", false).await;
    assert_eq!(status, 503);
    assert!(String::from_utf8(body).unwrap().contains("not attached"));

    let snaps: Vec<_> = (0..5).map(snapshot).collect();
    for s in &snaps {
        exporters.publish(&interval(s.seq.unwrap()));
    }
    let (status, headers, body) = get(addr, "/metrics", false).await;
    assert_eq!(status, 200);
    assert!(headers["content-type"].starts_with("text/plain; version=0.0.4"));
    let text = String::from_utf8(body).unwrap();
    let scrape = parse(&text);

    // Histogram: same exact bounds as OTLP, cumulative buckets equal to the JSONL totals.
    for op in ["read", "write"] {
        let labels = [("system_device", DEVICE), ("blkio_operation", op), ("disk_io_direction", op)];
        let h = find(&scrape, "blkio_request_duration_seconds", &labels);
        let prometheus_parse::Value::Histogram(buckets) = &h.value else { panic!("not a histogram") };
        let (slots, count, sum_ns) = expected(&snaps, op);
        let mut bounds = exact_time_bounds();
        bounds.push(f64::INFINITY);
        assert_eq!(buckets.iter().map(|b| b.less_than).collect::<Vec<_>>(), bounds);
        let mut cumulative = 0;
        for (b, n) in buckets.iter().zip(time_buckets(&slots)) {
            cumulative += n;
            assert_eq!(b.count, cumulative as f64, "{op} le={}", b.less_than);
        }
        assert_eq!(cumulative, count);
        assert_eq!(scalar(find(&scrape, "blkio_request_duration_seconds_count", &labels)), count as f64);
        assert_eq!(scalar(find(&scrape, "blkio_request_duration_seconds_sum", &labels)), sum_ns as f64 / 1e9);
        assert_eq!(scalar(find(&scrape, "system_disk_operations_total", &labels)), count as f64);
    }
    let size = find(&scrape, "blkio_request_size_bytes", &[("blkio_operation", "read")]);
    let prometheus_parse::Value::Histogram(b) = &size.value else { panic!() };
    // Size buckets start at 511 B (slots 0..=8 merged): slot 11 is bucket 3, slot 12 bucket 4.
    assert_eq!(b[3].less_than, 4095.0);
    assert_eq!(b[3].count, 0.0);
    assert_eq!(b[4].count, expected(&snaps, "read").1 as f64);
    assert_eq!(
        scalar(find(&scrape, "blkio_inflight", &[("system_device", DEVICE)])),
        snaps[4].inflight[0].count as f64
    );
    // The first scrape's peak window covers every interval since the agent started.
    let max_peak = snaps.iter().map(|s| s.inflight[0].peak.unwrap()).max().unwrap();
    assert_eq!(scalar(find(&scrape, "blkio_inflight_peak", &[("system_device", DEVICE)])), max_peak as f64);
    let pod = find(
        &scrape,
        "blkio_pod_request_duration_seconds_count",
        &[("k8s_pod_name", "postgres-0"), ("k8s_namespace_name", "db")],
    );
    assert_eq!(scalar(pod), expected(&snaps, "read").1 as f64);
    assert_eq!(
        scalar(find(&scrape, "blkio_agent_events_lost_total", &[("blkio_event_kind", "complete_without_start")])),
        2.0
    );
    assert_eq!(scalar(find(&scrape, "blkio_agent_snapshots_total", &[])), 5.0);
    let target = find(
        &scrape,
        "target_info",
        &[("service_name", "blkio-agent"), ("k8s_cluster_name", "c1"), ("host_name", "host-1")],
    );
    assert_eq!(scalar(target), 1.0);
    // Every HELP line belongs to a metric with samples; OTLP-only metrics are absent.
    assert!(!text.contains("blkio_agent_export_"), "no OTLP health metrics when OTLP is off");

    // The run loop's health updates make it ready; agent stats appear on the next scrape.
    health.set_interval(Duration::from_secs(5));
    health.set_output_writable(true);
    health.set_attached();
    health.record_snapshot(Duration::from_micros(1500));
    health.add_jsonl_bytes(4242);
    let (status, _, body) = get(addr, "/readyz", false).await;
    assert_eq!((status, String::from_utf8(body).unwrap().trim()), (200, "ready"));
    let (_, headers, gz) = get(addr, "/metrics", true).await;
    assert_eq!(headers["content-encoding"], "gzip");
    let mut text = String::new();
    flate2::read::GzDecoder::new(&gz[..]).read_to_string(&mut text).unwrap();
    let scrape = parse(&text);
    assert_eq!(scalar(find(&scrape, "blkio_agent_jsonl_written_bytes_total", &[])), 4242.0);
    assert_eq!(scalar(find(&scrape, "blkio_agent_snapshot_build_time_seconds", &[])), 0.0015);

    // An unwritable output makes the agent unready again.
    health.set_output_writable(false);
    assert_eq!(get(addr, "/readyz", false).await.0, 503);
    assert_eq!(get(addr, "/nope", false).await.0, 404);

    exporters.shutdown(Duration::from_secs(1)).await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "the server stops on shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_addr_off_and_busy_port() {
    let cfg = config(&["--metrics-addr", "off"], &[]);
    let exporters =
        Exporters::start_with(cfg, resource::build(&AgentIdentity::default(), &vars(&[])).unwrap(), Arc::default())
            .unwrap();
    assert_eq!(exporters.metrics_addr(), None);
    exporters.shutdown(Duration::from_millis(100)).await;

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let cfg = config(&["--metrics-addr", &addr], &[]);
    let err =
        Exporters::start_with(cfg, resource::build(&AgentIdentity::default(), &vars(&[])).unwrap(), Arc::default())
            .err()
            .expect("port in use");
    let msg = err.to_string();
    assert!(msg.contains("--metrics-addr") && msg.contains(&addr) && msg.contains("off"), "{msg}");
}

/// Supervision: the OTLP sender killed (the supervisor's abort, as a crash would end it) turns
/// `/readyz` unready with the task's name and reason, and the run loop is told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_otlp_task_makes_readyz_unready_with_the_reason() {
    let health = Arc::new(Health::default());
    health.set_interval(Duration::from_secs(5));
    health.set_output_writable(true);
    health.set_attached();
    // Nothing listens on the discard port: the sender just retries, it never ends by itself.
    let cfg = config(&["--metrics-addr", "127.0.0.1:0"], &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")]);
    assert!(cfg.otlp.is_some());
    let exporters =
        Exporters::start_with(cfg, resource::build(&AgentIdentity::default(), &vars(&[])).unwrap(), health.clone())
            .unwrap();
    let addr = exporters.metrics_addr().unwrap();
    exporters.publish(&interval(0));
    assert_eq!(get(addr, "/readyz", false).await.0, 200);

    assert!(exporters.tasks().abort("otlp-sender"));
    let failure = tokio::time::timeout(Duration::from_secs(5), health.tasks.failed()).await.expect("reported");
    assert_eq!((failure.task, failure.reason.as_str()), ("otlp-sender", "was cancelled"));
    let (status, _, body) = get(addr, "/readyz", false).await;
    assert_eq!(status, 503);
    assert_eq!(String::from_utf8(body).unwrap(), "not ready: background task otlp-sender was cancelled\n");
    assert_eq!(get(addr, "/healthz", false).await.0, 200, "alive: JSONL collection goes on");
    exporters.shutdown(Duration::from_secs(1)).await;
    assert_eq!(health.tasks.failures().len(), 1, "shutdown's own task ends are not failures");
}

/// Starts an exporter serving `/metrics` only, with the default flags plus `flags`.
fn metrics_only(flags: &[&str]) -> Exporters {
    let mut all = vec!["--metrics-addr", "127.0.0.1:0"];
    all.extend_from_slice(flags);
    let identity = AgentIdentity { node_name: "node-1".into(), host_name: "host-1".into() };
    Exporters::start_with(config(&all, &[]), resource::build(&identity, &vars(&[])).unwrap(), Arc::default()).unwrap()
}

async fn scrape_text(addr: SocketAddr) -> String {
    let (status, _, body) = get(addr, "/metrics", false).await;
    assert_eq!(status, 200);
    String::from_utf8(body).unwrap()
}

/// `promtool check metrics` (Prometheus's own linter) over a real scrape with every kind of
/// series: histograms, counters, gauges, pods, losses, diskstats times, target_info. No output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_passes_promtool_check_metrics() {
    let test = "a_scrape_passes_promtool_check_metrics";
    let found = std::process::Command::new("promtool").arg("--version").output().is_ok_and(|o| o.status.success());
    let missing = if found {
        vec![]
    } else {
        vec!["promtool (Debian package `prometheus`; `cargo xtask setup` installs it)".into()]
    };
    if !blkio_agent::prereq::require(test, &missing) {
        return;
    }
    let exporters = metrics_only(&[]);
    for seq in 0..3 {
        let mut iv = interval(seq);
        iv.disk_time.push(blkio_agent::interval::DiskTime {
            id: 7 << 20 | 7,
            name: DEVICE.into(),
            io_time_ms: 1200,
            weighted_io_time_ms: 4000,
        });
        exporters.publish(&iv);
    }
    let text = scrape_text(exporters.metrics_addr().unwrap()).await;
    for name in ["system_disk_io_time_seconds_total", "blkio_request_size_bytes_bucket", "blkio_pod_io_bytes_total"] {
        assert!(text.contains(name), "{name} missing from the scrape:\n{text}");
    }
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool starts");
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.is_empty(), "promtool check metrics: {:?}\n{said}", out.status);
    exporters.shutdown(Duration::from_secs(1)).await;
}

/// Prometheus's `histogram_quantile` (promql/quantile.go, `bucketQuantile`): linear
/// interpolation inside the first bucket whose cumulative count reaches `q * total`; the first
/// bucket starts at 0; a rank in `+Inf` returns the highest finite bound.
fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> f64 {
    assert!(buckets.last().unwrap().0.is_infinite(), "the last bucket is +Inf");
    let total = buckets.last().unwrap().1;
    let rank = q * total;
    let b = buckets[..buckets.len() - 1].iter().position(|&(_, c)| c >= rank).unwrap_or(buckets.len() - 1);
    if b == buckets.len() - 1 {
        return buckets[buckets.len() - 2].0;
    }
    let (start, before) = if b == 0 { (0.0, 0.0) } else { buckets[b - 1] };
    let (end, count) = buckets[b];
    start + (end - start) * ((rank - before) / (count - before))
}

/// The JSONL's answer: the bucket `[bucket_low, bucket_high + 1)` µs holding the nearest rank
/// `ceil(q * total)`, from the JSONL lines themselves.
fn jsonl_bucket(q: f64, lines: &[serde_json::Value], op: &str) -> (f64, f64) {
    let mut slots: Vec<(u64, u64, u64)> = Vec::new();
    for l in lines {
        for o in l["ops"].as_array().unwrap().iter().filter(|o| o["op"] == op) {
            for b in o["device_time"]["buckets"].as_array().unwrap() {
                let (low, high, n) = (
                    b["bucket_low"].as_u64().unwrap(),
                    b["bucket_high"].as_u64().unwrap(),
                    b["count"].as_u64().unwrap(),
                );
                match slots.iter_mut().find(|s| s.0 == low) {
                    Some(s) => s.2 += n,
                    None => slots.push((low, high, n)),
                }
            }
        }
    }
    slots.sort();
    let total: u64 = slots.iter().map(|s| s.2).sum();
    let rank = (q * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (low, high, n) in slots {
        seen += n;
        if seen >= rank {
            return (low as f64 / 1e6, (high + 1) as f64 / 1e6);
        }
    }
    unreachable!()
}

/// Acceptance: `histogram_quantile` over a scrape lands in the JSONL's bucket for every
/// quantile, including ranks at the very start of a bucket, where bounds of `2^(k+1) - 1` µs put
/// the answer below the bucket's real lower edge (the "~1 µs low").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histogram_quantile_over_a_scrape_lands_in_the_jsonl_bucket() {
    let exporters = metrics_only(&[]);
    let mut lines = Vec::new();
    for seq in 0..7 {
        let iv = interval(seq);
        lines.push(serde_json::to_value(iv.snapshot()).unwrap());
        exporters.publish(&iv);
    }
    let scrape = parse(&scrape_text(exporters.metrics_addr().unwrap()).await);
    for op in ["read", "write"] {
        let h = find(&scrape, "blkio_request_duration_seconds", &[("blkio_operation", op)]);
        let prometheus_parse::Value::Histogram(buckets) = &h.value else { panic!() };
        let buckets: Vec<(f64, f64)> = buckets.iter().map(|b| (b.less_than, b.count)).collect();
        let total = buckets.last().unwrap().1;
        let mut qs: Vec<f64> = (1..1000).map(|i| i as f64 / 1000.0).collect();
        // Ranks just past each bucket's start: the cases where the old bounds failed.
        for &(_, c) in &buckets {
            qs.push(((c + 0.01) / total).min(1.0));
        }
        for q in qs {
            let got = histogram_quantile(q, &buckets);
            let (low, high) = jsonl_bucket(q, &lines, op);
            assert!(low <= got && got <= high, "{op} q={q}: histogram_quantile {got} s is outside [{low}, {high}]");
        }
    }
    exporters.shutdown(Duration::from_secs(1)).await;
}

/// `--histogram-max` bounds the exported buckets; counts and sums stay exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histogram_max_bounds_the_buckets() {
    let exporters = metrics_only(&["--histogram-max", "0.001"]);
    let snaps: Vec<_> = (0..3).map(snapshot).collect();
    for seq in 0..3 {
        exporters.publish(&interval(seq));
    }
    let scrape = parse(&scrape_text(exporters.metrics_addr().unwrap()).await);
    let h = find(&scrape, "blkio_request_duration_seconds", &[("blkio_operation", "write")]);
    let prometheus_parse::Value::Histogram(buckets) = &h.value else { panic!() };
    // 1 ms -> the last bound is 2^10 µs = 1.024 ms (slot 9): 10 bounds and +Inf.
    let bounds: Vec<f64> = buckets.iter().map(|b| b.less_than).collect();
    let mut want: Vec<f64> = (0..10u32).map(|k| (1u64 << (k + 1)) as f64 / 1e6).collect();
    want.push(f64::INFINITY);
    assert_eq!(bounds, want);
    let (slots, count, _) = expected(&snaps, "write");
    assert_eq!(buckets[9].count, slots[..10].iter().sum::<u64>() as f64);
    assert_eq!(buckets[10].count, count as f64, "the slot-20 writes are in +Inf");
    let err = <blkio_agent::cli::Cli as clap::Parser>::try_parse_from(["blkio-agent", "run", "--histogram-max", "0"])
        .err()
        .unwrap();
    assert!(err.to_string().contains("histogram-max"), "{err}");
    exporters.shutdown(Duration::from_secs(1)).await;
}

/// Issue 12 item 4: with a 1 s agent and a 15 s scrape, each scrape's `blkio_inflight_peak` is
/// the highest depth since the previous scrape, so no interval's peak is lost; a scrape with no
/// interval since the previous one reports the depth still in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inflight_peak_is_the_highest_since_the_previous_scrape() {
    let exporters = metrics_only(&[]);
    let addr = exporters.metrics_addr().unwrap();
    let peak_of = |text: &str| scalar(find(&parse(text), "blkio_inflight_peak", &[("system_device", DEVICE)]));
    let upper_of = |text: &str| scalar(find(&parse(text), "blkio_inflight_peak_upper", &[("system_device", DEVICE)]));
    // Interval 3's burst used several hardware queues: its peak is bounded, by 70.
    let with_peak = |seq: u64, count: u64, peak: u64| {
        let mut iv = interval(seq);
        let peak_upper = if seq == 3 { 70 } else { peak };
        iv.devices[0].depth = Some(blkio_agent::interval::Depth { count, peak, peak_upper, sysfs: None });
        iv
    };
    // Scrape 1 covers intervals 0..15, with a burst to 57 in interval 3 only.
    for seq in 0..15 {
        exporters.publish(&with_peak(seq, 2, if seq == 3 { 57 } else { 4 }));
    }
    let text = scrape_text(addr).await;
    assert_eq!((peak_of(&text), upper_of(&text)), (57.0, 70.0));
    // Scrape 2: intervals 15..30 peak at 9 (interval 16); the 57 is not reported twice.
    for seq in 15..30 {
        exporters.publish(&with_peak(seq, 1, if seq == 16 { 9 } else { 3 }));
    }
    let text = scrape_text(addr).await;
    assert_eq!((peak_of(&text), upper_of(&text)), (9.0, 9.0), "the bound's window restarts too");
    // Scrape 3 with nothing published since: the depth still in flight.
    let text = scrape_text(addr).await;
    assert_eq!((peak_of(&text), upper_of(&text)), (1.0, 1.0));
    assert_eq!(scalar(find(&parse(&text), "blkio_inflight", &[("system_device", DEVICE)])), 1.0);
    exporters.shutdown(Duration::from_secs(1)).await;
}

/// docs/export.md's series count per device at the default flags: 79 per operation, 6 per
/// device, so 401 for a device with all five operations; counted on a real scrape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_per_device_are_as_documented() {
    let exporters = metrics_only(&[]);
    let mut iv = interval(0);
    iv.pods.clear();
    let read = iv.devices[0].ops[0].clone();
    iv.devices[0].ops = ["read", "write", "discard", "flush", "other"]
        .into_iter()
        .map(|op| blkio_agent::interval::OpInterval { op, ..read.clone() })
        .collect();
    iv.disk_time.push(blkio_agent::interval::DiskTime {
        id: iv.devices[0].id,
        name: DEVICE.into(),
        io_time_ms: 1,
        weighted_io_time_ms: 1,
    });
    iv.devices[0].unseen = Some(2);
    exporters.publish(&iv);
    iv.devices[0].unseen = Some(1);
    exporters.publish(&iv);
    let text = scrape_text(exporters.metrics_addr().unwrap()).await;
    let device = format!("system_device=\"{DEVICE}\"");
    let unseen = format!("blkio_completions_unseen_total{{{device}}} 3");
    assert!(text.lines().any(|l| l == unseen), "no `{unseen}` in\n{text}");
    let series: Vec<&str> = text.lines().filter(|l| !l.starts_with('#') && l.contains(&device)).collect();
    let per_op = |op: &str| series.iter().filter(|l| l.contains(&format!("blkio_operation=\"{op}\""))).count();
    for op in ["read", "write", "discard", "flush", "other"] {
        assert_eq!(per_op(op), 79, "{op}");
    }
    assert_eq!(series.len(), 401, "{}", series.join("\n"));
    exporters.shutdown(Duration::from_secs(1)).await;
}
