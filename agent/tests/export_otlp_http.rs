//! OTLP over HTTP/protobuf against an in-process receiver on 127.0.0.1: exact points, bounds,
//! units, temporality, resource, headers and gzip from the standard variables, retries, and a
//! collector that is down and comes back.

#![cfg(feature = "ebpf")] // the node agent; absent from the analyzer-only build

mod export_support;

use std::sync::Arc;
use std::time::Duration;

use blkio_agent::export::config::Temporality;
use blkio_agent::export::resource;
use blkio_agent::export::{AgentIdentity, Exporters, Health};
use export_support::*;
use http::StatusCode;
use opentelemetry_proto::tonic::metrics::v1::AggregationTemporality;

fn identity() -> AgentIdentity {
    AgentIdentity { node_name: "node-1".into(), host_name: "host-1".into() }
}

fn start(config: blkio_agent::export::config::ExportConfig, env: &[(&str, &str)]) -> Exporters {
    Exporters::start_with(config, resource::build(&identity(), &vars(env)).unwrap(), Arc::new(Health::default()))
        .expect("exporters start")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cumulative_points_equal_the_published_snapshots() {
    let rx = http_receiver(0, None).await;
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &*format!("http://{}", rx.addr)),
        ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20t0ken,x-tenant=team-a"),
        ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "x-tenant=team-b"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "3000"),
        ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=test,k8s.cluster.name=c1"),
        ("NODE_NAME", "node-1"),
        ("POD_NAME", "blkio-agent-abcde"),
        ("POD_NAMESPACE", "monitoring"),
    ];
    let cfg = config(&["--metrics-addr", "off"], &env);
    assert_eq!(cfg.otlp.as_ref().unwrap().temporality, Temporality::Cumulative);
    let exporters = start(cfg, &env);
    let snaps: Vec<_> = (0..4).map(snapshot).collect();
    for s in &snaps {
        exporters.publish(&interval(s.seq.unwrap()));
    }
    wait_for("4 OTLP requests", Duration::from_secs(10), || rx.log.len() == 4).await;
    let got = rx.log.requests();

    // Transport: path, content type, gzip, headers (metrics-specific value wins).
    for r in &got {
        assert_eq!(r.path, "/v1/metrics");
        assert_eq!(r.headers["content-type"], "application/x-protobuf");
        assert_eq!(r.headers["content-encoding"], "gzip");
        assert_eq!(r.headers["authorization"], "Bearer t0ken");
        assert_eq!(r.headers["x-tenant"], "team-b");
    }

    // Every request is cumulative since the first snapshot's start: request i equals the sum of
    // snapshots 0..=i, bucket by bucket, with the exact count and sum.
    let start_ns = 1_760_000_000_000_000_000u64;
    for (i, r) in got.iter().enumerate() {
        for op in ["read", "write"] {
            let (p, temporality) = hist(
                &r.request,
                "blkio.request.duration",
                &[("system.device", DEVICE), ("blkio.operation", op), ("disk.io.direction", op)],
            )
            .unwrap_or_else(|| panic!("no {op} point in request {i}"));
            let (slots, count, sum_ns) = expected(&snaps[..=i], op);
            assert_eq!(temporality, AggregationTemporality::Cumulative as i32);
            assert_eq!(p.bucket_counts, time_buckets(&slots), "{op} buckets in request {i}");
            assert_eq!(p.count, count);
            assert_eq!(p.sum, Some(sum_ns as f64 / 1e9));
            assert_eq!(p.explicit_bounds, exact_time_bounds());
            assert_eq!(p.start_time_unix_nano, start_ns, "stable start time");
            assert_eq!(p.time_unix_nano, start_ns + 5_000_000_000 * (i as u64 + 1));
        }
    }
    let last = &got[3].request;
    let m = metric(last, "blkio.request.duration").unwrap();
    assert_eq!(m.unit, "s");
    assert_eq!(metric(last, "blkio.queue.duration").unwrap().unit, "s");
    assert_eq!(metric(last, "blkio.request.size").unwrap().unit, "By");
    assert_eq!(metric(last, "system.disk.operation_time").unwrap().unit, "s");

    // Discard has a direction too (`write`: every series has one), and keeps its operation.
    let (discard, _) =
        hist(last, "blkio.request.duration", &[("blkio.operation", "discard"), ("disk.io.direction", "write")])
            .unwrap();
    assert_eq!(discard.count, 4);

    // Size histogram: bytes, exact sum.
    let (size, _) = hist(last, "blkio.request.size", &[("blkio.operation", "read")]).unwrap();
    let read_bytes: u64 = snaps.iter().flat_map(|s| &s.ops).filter(|o| o.op == "read").map(|o| o.bytes).sum();
    assert_eq!(size.sum, Some(read_bytes as f64));
    // Size buckets: the first bound is 511 B (slots 0..=8), so slot 12 is bucket 4.
    assert_eq!(size.bucket_counts[4], size.count);
    assert_eq!(size.explicit_bounds[4], 8191.0);
    assert_eq!((size.explicit_bounds[0], size.explicit_bounds.len()), (511.0, 19));

    // Derived counters equal the exact count and sums.
    let (_, ops) = number(last, "system.disk.operations", &[("blkio.operation", "read")]).unwrap();
    assert_eq!(ops as u64, expected(&snaps, "read").1);
    let (_, op_time) = number(last, "system.disk.operation_time", &[("blkio.operation", "write")]).unwrap();
    let write_ns: u64 = snaps
        .iter()
        .flat_map(|s| &s.ops)
        .filter(|o| o.op == "write")
        .map(|o| o.device_time.sum_ns + o.queue_time.sum_ns)
        .sum();
    assert!((op_time - write_ns as f64 / 1e9).abs() < 1e-12, "{op_time}");

    // Gauges from the last snapshot.
    let (inflight, v) = number(last, "blkio.inflight", &[("system.device", DEVICE)]).unwrap();
    assert_eq!(v, snaps[3].inflight[0].count as f64);
    assert_eq!(inflight.start_time_unix_nano, 0);
    assert_eq!(number(last, "blkio.inflight.peak", &[]).unwrap().1, snaps[3].inflight[0].peak.unwrap() as f64);
    let upper = number(last, "blkio.inflight.peak.upper", &[]).unwrap().1;
    assert_eq!(upper, snaps[3].inflight[0].peak_upper.unwrap() as f64, "the peak's bound, from the same snapshot");

    // Per-pod histogram with the pod's Kubernetes attributes.
    let (pod, _) = hist(
        last,
        "blkio.pod.request.duration",
        &[
            ("k8s.pod.name", "postgres-0"),
            ("k8s.namespace.name", "db"),
            ("k8s.pod.uid", "0f0e-uid"),
            ("k8s.container.name", "postgres"),
        ],
    )
    .unwrap();
    assert_eq!(pod.count, expected(&snaps, "read").1);

    // Health: losses by kind, snapshots.
    let (_, lost) = number(last, "blkio.agent.events.lost", &[("blkio.event.kind", "complete_without_start")]).unwrap();
    assert_eq!(lost, 2.0);
    assert_eq!(number(last, "blkio.agent.events.noted", &[("blkio.event.kind", "requeued")]).unwrap().1, 4.0);
    assert_eq!(number(last, "blkio.agent.snapshots", &[]).unwrap().1, 4.0);

    // Resource.
    assert_eq!(resource_attr(last, "service.name"), Some("blkio-agent"));
    assert_eq!(resource_attr(last, "service.version"), Some(env!("CARGO_PKG_VERSION")));
    assert_eq!(resource_attr(last, "host.name"), Some("host-1"));
    assert_eq!(resource_attr(last, "k8s.node.name"), Some("node-1"));
    assert_eq!(resource_attr(last, "k8s.pod.name"), Some("blkio-agent-abcde"));
    assert_eq!(resource_attr(last, "k8s.namespace.name"), Some("monitoring"));
    assert_eq!(resource_attr(last, "deployment.environment.name"), Some("test"));
    assert_eq!(resource_attr(last, "k8s.cluster.name"), Some("c1"));

    exporters.shutdown(Duration::from_secs(2)).await;
    rx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_temporality_sends_each_interval_once() {
    let rx = http_receiver(0, None).await;
    let env = [
        ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", &*format!("http://{}/otlp/v1/metrics", rx.addr)),
        ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "delta"),
        ("OTEL_SERVICE_NAME", "disk-agent"),
    ];
    let exporters = start(config(&["--metrics-addr", "off"], &env), &env);
    let snaps: Vec<_> = (0..3).map(snapshot).collect();
    for s in &snaps {
        // One batch per snapshot, in order.
        let n = rx.log.len() + 1;
        exporters.publish(&interval(s.seq.unwrap()));
        wait_for("the batch of this snapshot", Duration::from_secs(10), || rx.log.len() == n).await;
    }
    let got = rx.log.requests();
    let mut prev_time = None;
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.path, "/otlp/v1/metrics");
        assert_eq!(resource_attr(&r.request, "service.name"), Some("disk-agent"));
        let (p, temporality) = hist(&r.request, "blkio.request.duration", &[("blkio.operation", "read")]).unwrap();
        assert_eq!(temporality, AggregationTemporality::Delta as i32);
        let (slots, count, sum_ns) = expected(&snaps[i..=i], "read");
        assert_eq!(
            (p.bucket_counts.clone(), p.count, p.sum),
            (time_buckets(&slots), count, Some(sum_ns as f64 / 1e9)),
            "interval {i}"
        );
        // Each window starts where the previous ended.
        assert_eq!(p.start_time_unix_nano, prev_time.unwrap_or(p.time_unix_nano - 5_000_000_000));
        prev_time = Some(p.time_unix_nano);
        let (_, ops) = number(&r.request, "system.disk.operations", &[("blkio.operation", "write")]).unwrap();
        assert_eq!(ops as u64, snaps[i].ops[1].count);
    }
    exporters.shutdown(Duration::from_secs(2)).await;
    rx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_down_then_up_resumes_with_bounded_queue() {
    let port = free_port();
    let env =
        [("OTEL_EXPORTER_OTLP_ENDPOINT", &*format!("http://127.0.0.1:{port}")), ("OTEL_EXPORTER_OTLP_TIMEOUT", "500")];
    let mut cfg = config(&["--metrics-addr", "off"], &env);
    let otlp = cfg.otlp.as_mut().unwrap();
    otlp.queue_capacity = 8;
    otlp.backoff_initial = Duration::from_millis(20);
    otlp.backoff_max = Duration::from_millis(100);
    let exporters = start(cfg, &env);

    // An hour of 5 s snapshots while nothing listens: publish never waits, the queue stays bounded.
    let snaps: Vec<_> = (0..720).map(snapshot).collect();
    let t = std::time::Instant::now();
    for s in &snaps {
        exporters.publish(&interval(s.seq.unwrap()));
    }
    assert!(t.elapsed() < Duration::from_secs(10), "publishing must not wait for the collector: {:?}", t.elapsed());
    wait_for("failed attempts", Duration::from_secs(10), || exporters.otlp_stats().unwrap().failed_attempts >= 3).await;
    let stats = exporters.otlp_stats().unwrap();
    assert!(stats.queued_batches <= 8, "{stats:?}");
    assert!(stats.queued_bytes <= 8 * 64 * 1024, "{stats:?}");
    // Every batch is either still queued (or in flight, at most one) or counted as dropped.
    assert!(stats.dropped_batches + stats.queued_batches as u64 >= 719, "{stats:?}");
    assert_eq!(stats.sent_batches, 0);

    // The collector comes up on the same port: sending resumes without a restart.
    let rx = http_receiver(port, None).await;
    wait_for("the backlog to drain", Duration::from_secs(10), || {
        exporters.otlp_stats().unwrap().queued_batches == 0 && rx.log.len() > 0
    })
    .await;
    exporters.publish(&interval(720));
    let all: Vec<_> = (0..=720).map(snapshot).collect();
    wait_for("the newest snapshot", Duration::from_secs(10), || {
        rx.log.last().is_some_and(|r| number(&r.request, "blkio.agent.snapshots", &[]).is_some_and(|(_, n)| n == 721.0))
    })
    .await;
    // Cumulative temporality loses nothing to dropped batches: the newest one has every count.
    let last = rx.log.last().unwrap().request;
    let (p, _) = hist(&last, "blkio.request.duration", &[("blkio.operation", "read")]).unwrap();
    let (slots, count, _) = expected(&all, "read");
    assert_eq!((p.bucket_counts.clone(), p.count), (time_buckets(&slots), count));
    // The outage is visible in the agent's own metrics.
    let (_, failures) = number(&last, "blkio.agent.export.failures", &[("error.type", "transport")]).unwrap();
    assert!(failures >= 3.0, "{failures}");
    let (_, dropped) = number(&last, "blkio.agent.export.dropped", &[]).unwrap();
    assert!(dropped >= 700.0, "{dropped}");
    exporters.shutdown(Duration::from_secs(2)).await;
    rx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_statuses_honour_retry_after_and_others_drop_the_batch() {
    let rx = http_receiver(0, None).await;
    rx.log.script([Reply::Status(StatusCode::SERVICE_UNAVAILABLE, Some("1"))]);
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", &*format!("http://{}", rx.addr))];
    let mut cfg = config(&["--metrics-addr", "off"], &env);
    // Backoff alone would retry after ~10 ms: a ~1 s gap can only come from Retry-After.
    cfg.otlp.as_mut().unwrap().backoff_initial = Duration::from_millis(10);
    let exporters = start(cfg, &env);
    exporters.publish(&interval(0));
    wait_for("the retried batch", Duration::from_secs(10), || rx.log.len() == 1).await;
    let attempts = rx.log.attempts.lock().unwrap().clone();
    assert_eq!(attempts.len(), 2);
    let gap = attempts[1] - attempts[0];
    assert!(gap >= Duration::from_millis(900) && gap < Duration::from_secs(5), "{gap:?}");

    // 400 is permanent: the batch is dropped and not tried again; the next one goes through.
    rx.log.script([Reply::Status(StatusCode::BAD_REQUEST, None)]);
    exporters.publish(&interval(1));
    wait_for("the rejected attempt", Duration::from_secs(10), || rx.log.attempts.lock().unwrap().len() == 3).await;
    // The receiver logs the attempt before it replies: wait until the sender has counted the 400
    // too, or the next batch can be encoded before its failure counter moved.
    wait_for("the rejection counted", Duration::from_secs(10), || exporters.otlp_stats().unwrap().dropped_batches == 1)
        .await;
    exporters.publish(&interval(2));
    // Counted as sent once the reply is back (the receiver logs before replying).
    wait_for("the next batch", Duration::from_secs(10), || exporters.otlp_stats().unwrap().sent_batches == 2).await;
    assert_eq!(rx.log.len(), 2);
    assert_eq!(rx.log.attempts.lock().unwrap().len(), 4);
    let stats = exporters.otlp_stats().unwrap();
    assert_eq!((stats.sent_batches, stats.failed_attempts, stats.dropped_batches), (2, 2, 1));
    let last = rx.log.last().unwrap().request;
    assert_eq!(number(&last, "blkio.agent.export.failures", &[("error.type", "503")]).unwrap().1, 1.0);
    assert_eq!(number(&last, "blkio.agent.export.failures", &[("error.type", "400")]).unwrap().1, 1.0);
    exporters.shutdown(Duration::from_secs(2)).await;
    rx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_interval_merges_snapshots_and_shutdown_flushes() {
    let rx = http_receiver(0, None).await;
    let env =
        [("OTEL_EXPORTER_OTLP_ENDPOINT", &*format!("http://{}", rx.addr)), ("OTEL_METRIC_EXPORT_INTERVAL", "60000")];
    let exporters = start(config(&["--metrics-addr", "off"], &env), &env);
    let snaps: Vec<_> = (0..3).map(snapshot).collect();
    for s in &snaps {
        exporters.publish(&interval(s.seq.unwrap()));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(rx.log.len(), 0, "nothing before the export interval");
    exporters.shutdown(Duration::from_secs(5)).await;
    assert_eq!(rx.log.len(), 1, "shutdown sends what was published since the last export");
    let last = rx.log.last().unwrap().request;
    let (p, _) = hist(&last, "blkio.request.duration", &[("blkio.operation", "read")]).unwrap();
    assert_eq!(p.bucket_counts, time_buckets(&expected(&snaps, "read").0));
    rx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_custom_ca_from_otel_exporter_otlp_certificate() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server_cert =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap().signed_by(&server_key, &issuer).unwrap();
    let server_config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![server_cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
        )
        .unwrap();
    let rx = http_receiver(0, Some(Arc::new(server_config))).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &*format!("https://{}", rx.addr)),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca_path.to_str().unwrap()),
    ];
    let exporters = start(config(&["--metrics-addr", "off"], &env), &env);
    exporters.publish(&interval(0));
    wait_for("a request over TLS", Duration::from_secs(10), || rx.log.len() == 1).await;
    exporters.shutdown(Duration::from_secs(2)).await;

    // Without the CA the server is not trusted: the failure is counted, never fatal.
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", &*format!("https://{}", rx.addr))];
    let mut cfg = config(&["--metrics-addr", "off"], &env);
    cfg.otlp.as_mut().unwrap().backoff_initial = Duration::from_millis(20);
    let untrusting = start(cfg, &env);
    untrusting.publish(&interval(1));
    wait_for("a failed TLS attempt", Duration::from_secs(10), || untrusting.otlp_stats().unwrap().failed_attempts >= 1)
        .await;
    assert_eq!(rx.log.len(), 1);
    untrusting.shutdown(Duration::from_millis(200)).await;
    rx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_never_answers_times_out_without_blocking_publish() {
    // Accepts connections and holds them without a byte of response.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", &*format!("http://{addr}")), ("OTEL_EXPORTER_OTLP_TIMEOUT", "300")];
    let mut cfg = config(&["--metrics-addr", "off"], &env);
    cfg.otlp.as_mut().unwrap().backoff_initial = Duration::from_millis(10);
    cfg.otlp.as_mut().unwrap().backoff_max = Duration::from_millis(20);
    let exporters = start(cfg, &env);
    let t = std::time::Instant::now();
    for seq in 0..50 {
        exporters.publish(&interval(seq));
    }
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    wait_for("two timeouts", Duration::from_secs(10), || exporters.otlp_stats().unwrap().failed_attempts >= 2).await;
    let stats = exporters.otlp_stats().unwrap();
    assert_eq!(stats.sent_batches, 0);
    assert!(stats.queued_batches <= blkio_agent::export::config::DEFAULT_QUEUE_CAPACITY);
    // Shutdown gives up after its timeout instead of hanging on the collector.
    let t = std::time::Instant::now();
    exporters.shutdown(Duration::from_millis(500)).await;
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    holder.abort();
}
