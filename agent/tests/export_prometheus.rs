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
        for (i, b) in buckets.iter().enumerate() {
            cumulative += if i < 31 { slots[i] } else { slots[31] };
            assert_eq!(b.count, cumulative as f64, "{op} le={}", b.less_than);
        }
        assert_eq!(cumulative, count);
        assert_eq!(scalar(find(&scrape, "blkio_request_duration_seconds_count", &labels)), count as f64);
        assert_eq!(scalar(find(&scrape, "blkio_request_duration_seconds_sum", &labels)), sum_ns as f64 / 1e9);
        assert_eq!(scalar(find(&scrape, "system_disk_operations_total", &labels)), count as f64);
    }
    let size = find(&scrape, "blkio_request_size_bytes", &[("blkio_operation", "read")]);
    let prometheus_parse::Value::Histogram(b) = &size.value else { panic!() };
    assert_eq!(b[11].less_than, 4095.0);
    assert_eq!(b[12].count, expected(&snaps, "read").1 as f64);
    assert_eq!(
        scalar(find(&scrape, "blkio_inflight", &[("system_device", DEVICE)])),
        snaps[4].inflight[0].count as f64
    );
    assert_eq!(
        scalar(find(&scrape, "blkio_inflight_peak", &[("system_device", DEVICE)])),
        snaps[4].inflight[0].peak.unwrap() as f64
    );
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
