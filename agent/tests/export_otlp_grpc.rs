//! OTLP over gRPC (tonic) against an in-process receiver built from the opentelemetry-proto
//! server types, on 127.0.0.1.

#![cfg(feature = "ebpf")] // the node agent; absent from the analyzer-only build

mod export_support;

use std::sync::Arc;
use std::time::Duration;

use blkio_agent::export::config::Protocol;
use blkio_agent::export::resource;
use blkio_agent::export::{AgentIdentity, Exporters, Health};
use export_support::*;
use opentelemetry_proto::tonic::metrics::v1::AggregationTemporality;

fn start(config: blkio_agent::export::config::ExportConfig, env: &[(&str, &str)]) -> Exporters {
    let identity = AgentIdentity { node_name: "node-1".into(), host_name: "host-1".into() };
    Exporters::start_with(config, resource::build(&identity, &vars(env)).unwrap(), Arc::new(Health::default()))
        .expect("exporters start")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_points_equal_the_published_snapshots() {
    let rx = grpc_receiver(0).await;
    // The flags win over the variables (which point elsewhere, over HTTP).
    let endpoint = format!("http://{}", rx.addr);
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9/unused"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "x-scope-orgid=tenant-7,authorization=Basic%20dTpw"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ("OTEL_RESOURCE_ATTRIBUTES", "k8s.cluster.name=c1"),
        ("NODE_NAME", "node-1"),
    ];
    let cfg = config(&["--metrics-addr", "off", "--otlp-endpoint", &endpoint, "--otlp-protocol", "grpc"], &env);
    assert_eq!(cfg.otlp.as_ref().unwrap().protocol, Protocol::Grpc);
    let exporters = start(cfg, &env);
    let snaps: Vec<_> = (0..3).map(snapshot).collect();
    for s in &snaps {
        exporters.publish(&interval(s.seq.unwrap()));
    }
    wait_for("3 gRPC exports", Duration::from_secs(15), || rx.log.len() == 3).await;
    let got = rx.log.requests();
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.headers["x-scope-orgid"], "tenant-7");
        assert_eq!(r.headers["authorization"], "Basic dTpw");
        assert_eq!(r.headers["grpc-encoding"], "gzip", "request {i} is gzip-compressed");
        for op in ["read", "write"] {
            let (p, temporality) =
                hist(&r.request, "blkio.request.duration", &[("system.device", DEVICE), ("blkio.operation", op)])
                    .unwrap();
            let (slots, count, sum_ns) = expected(&snaps[..=i], op);
            assert_eq!(temporality, AggregationTemporality::Cumulative as i32);
            assert_eq!(p.bucket_counts, time_buckets(&slots));
            assert_eq!(p.count, count);
            assert_eq!(p.sum, Some(sum_ns as f64 / 1e9));
            assert_eq!(p.explicit_bounds, exact_time_bounds());
            assert_eq!(p.start_time_unix_nano, 1_760_000_000_000_000_000);
        }
    }
    let last = &got[2].request;
    assert_eq!(metric(last, "blkio.request.duration").unwrap().unit, "s");
    assert_eq!(metric(last, "blkio.request.size").unwrap().unit, "By");
    let (q, _) = hist(last, "blkio.queue.duration", &[("blkio.operation", "read")]).unwrap();
    let queue_ns: u64 = snaps.iter().map(|s| s.ops[0].queue_time.sum_ns).sum();
    assert_eq!((q.count, q.sum), (expected(&snaps, "read").1, Some(queue_ns as f64 / 1e9)));
    assert_eq!(resource_attr(last, "service.name"), Some("blkio-agent"));
    assert_eq!(resource_attr(last, "k8s.node.name"), Some("node-1"));
    assert_eq!(resource_attr(last, "k8s.cluster.name"), Some("c1"));
    assert_eq!(resource_attr(last, "host.name"), Some("host-1"));
    exporters.shutdown(Duration::from_secs(2)).await;
    rx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_collector_down_then_up_resumes() {
    let port = free_port();
    let env = [
        ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", &*format!("http://127.0.0.1:{port}")),
        ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "delta"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "500"),
    ];
    let mut cfg = config(&["--metrics-addr", "off"], &env);
    let otlp = cfg.otlp.as_mut().unwrap();
    otlp.queue_capacity = 4;
    otlp.backoff_initial = Duration::from_millis(20);
    otlp.backoff_max = Duration::from_millis(100);
    let exporters = start(cfg, &env);
    for seq in 0..100 {
        exporters.publish(&interval(seq));
    }
    wait_for("failed attempts", Duration::from_secs(10), || exporters.otlp_stats().unwrap().failed_attempts >= 2).await;
    let stats = exporters.otlp_stats().unwrap();
    assert!(stats.queued_batches <= 4, "{stats:?}");
    assert!(stats.dropped_batches >= 95, "{stats:?}");

    let rx = grpc_receiver(port).await;
    // The queued delta batches arrive in order; every batch is then either sent or dropped.
    wait_for("the queued batches", Duration::from_secs(15), || {
        let s = exporters.otlp_stats().unwrap();
        s.sent_batches + s.dropped_batches == 100
    })
    .await;
    assert_eq!(rx.log.len() as u64, exporters.otlp_stats().unwrap().sent_batches);
    assert!(rx.log.len() >= 4);
    let n = rx.log.len();
    exporters.publish(&interval(100));
    wait_for("the new batch", Duration::from_secs(10), || {
        exporters.otlp_stats().unwrap().sent_batches as usize == n + 1
    })
    .await;
    let got = rx.log.requests();
    let newest = &got.last().unwrap().request;
    let (p, temporality) = hist(newest, "blkio.request.duration", &[("blkio.operation", "read")]).unwrap();
    assert_eq!(temporality, AggregationTemporality::Delta as i32);
    assert_eq!(p.bucket_counts, time_buckets(&expected(&[snapshot(100)], "read").0));
    // Queued batches kept their order; the dropped ones are counted.
    let times: Vec<u64> =
        got.iter().map(|r| hist(&r.request, "blkio.request.duration", &[]).unwrap().0.time_unix_nano).collect();
    assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");
    let stats = exporters.otlp_stats().unwrap();
    assert!(stats.failed_attempts >= 2 && stats.sent_batches as usize == got.len(), "{stats:?}");
    let (_, dropped) = number(newest, "blkio.agent.export.dropped", &[]).unwrap();
    assert!(dropped >= 1.0, "delta reports the drops since the previous batch");
    exporters.shutdown(Duration::from_secs(2)).await;
    rx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unavailable_is_retried_and_permanent_codes_are_not() {
    let rx = grpc_receiver(0).await;
    rx.log.script([
        Reply::Grpc(tonic::Code::Unavailable, Some(Duration::from_millis(800))),
        Reply::Grpc(tonic::Code::InvalidArgument, None),
    ]);
    let env =
        [("OTEL_EXPORTER_OTLP_ENDPOINT", &*format!("http://{}", rx.addr)), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")];
    let mut cfg = config(&["--metrics-addr", "off"], &env);
    cfg.otlp.as_mut().unwrap().backoff_initial = Duration::from_millis(10);
    let exporters = start(cfg, &env);
    exporters.publish(&interval(0));
    // UNAVAILABLE with RetryInfo(800 ms) -> retried after the delay -> INVALID_ARGUMENT: dropped.
    wait_for("two attempts", Duration::from_secs(10), || rx.log.attempts.lock().unwrap().len() == 2).await;
    let attempts = rx.log.attempts.lock().unwrap().clone();
    assert!(attempts[1] - attempts[0] >= Duration::from_millis(700), "{:?}", attempts[1] - attempts[0]);
    exporters.publish(&interval(1));
    // Counted as sent once the reply is back (the receiver logs before replying).
    wait_for("the next batch", Duration::from_secs(10), || exporters.otlp_stats().unwrap().sent_batches == 1).await;
    assert_eq!(rx.log.len(), 1);
    assert_eq!(rx.log.attempts.lock().unwrap().len(), 3, "INVALID_ARGUMENT is not retried");
    let stats = exporters.otlp_stats().unwrap();
    assert_eq!((stats.sent_batches, stats.failed_attempts, stats.dropped_batches), (1, 2, 1));
    exporters.shutdown(Duration::from_secs(2)).await;
    rx.stop().await;
}
