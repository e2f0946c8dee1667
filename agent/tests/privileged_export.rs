//! Privileged: the agent on a real loop device exporting to an in-process OTLP receiver and
//! serving `/metrics`, checked against the JSONL it wrote in the same run.

#![cfg(feature = "ebpf")] // the node agent; absent from the analyzer-only build

mod export_support;
mod privileged_support;

use std::io::{Read as _, Write as _};

use blkio_agent::{histogram::HIST_SLOTS, snapshot::slots_from_buckets};
use export_support::{free_port, hist, http_receiver, number, resource_attr, time_buckets};
use privileged_support::*;

fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_and_prometheus_equal_the_jsonl_of_the_same_run() {
    let Some(_p) = privileged("otlp_and_prometheus_equal_the_jsonl_of_the_same_run") else { return };
    let receiver = http_receiver(0, None).await;
    let endpoint = format!("http://{}", receiver.addr);
    let metrics_port = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");

    let (jsonl, dev_name, ready_code) = tokio::task::spawn_blocking(move || {
        let dev = LoopDev::new(32);
        let mut agent = Agent::start_with_env(
            &[
                "--interval",
                "0.25",
                "--flush-every",
                "1",
                "--output",
                out.to_str().unwrap(),
                "--metrics-addr",
                &metrics_addr,
            ],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
                ("OTEL_SERVICE_NAME", "blkio-agent-test"),
                ("NODE_NAME", "otlp-node"),
            ],
        );
        agent.wait_snapshots(1);
        let (ready_code, _) = http_get(metrics_port, "/readyz");
        let before = dev.diskstats();
        dev.dd_write(3000);
        dev.dd_read(2000);
        let after = dev.diskstats();
        assert_eq!((after.0 - before.0, after.1 - before.1), (2000, 3000), "the kernel's own counts");
        agent.wait_snapshots(2);
        let (code, body) = http_get(metrics_port, "/metrics");
        assert_eq!(code, 200, "{body}");
        assert!(body.contains(&format!("device=\"{}\"", dev.name)) || body.contains(&dev.name), "device in /metrics");
        agent.stop(libc::SIGTERM);
        (read_jsonl(&out), dev.name.clone(), ready_code)
    })
    .await
    .unwrap();
    assert_eq!(ready_code, 200, "/readyz is ready once attached and a snapshot was taken");

    // The last request carries the cumulative totals of the whole run (the final snapshot is
    // exported by the shutdown flush).
    let last = receiver.log.last().expect("the collector received exports").request;
    assert_eq!(resource_attr(&last, "k8s.node.name"), Some("otlp-node"));
    assert_eq!(resource_attr(&last, "service.name"), Some("blkio-agent-test"));
    // Exact with the completions this VM's kernel ran no program for (GUIDE; counted per device as
    // unseen, so per op the agent never counts more than the kernel); the exports must equal the
    // JSONL, unseen included.
    let unseen = unseen(&jsonl, &dev_name);
    let mut total = 0;
    for (op, expected_count) in [("read", 2000u64), ("write", 3000u64)] {
        let mut slots = vec![0u64; HIST_SLOTS];
        let mut count = 0;
        let mut sum_ns = 0u64;
        for s in &jsonl {
            for o in s.ops.iter().filter(|o| o.device_name == dev_name && o.op == op) {
                count += o.count;
                sum_ns += o.device_time.sum_ns;
                for (i, c) in slots_from_buckets(&o.device_time.buckets, HIST_SLOTS).into_iter().enumerate() {
                    slots[i] += c;
                }
            }
        }
        assert!(count <= expected_count, "JSONL {op}s: {count} of {expected_count}");
        total += count;
        let (point, temporality) =
            hist(&last, "blkio.request.duration", &[("system.device", &dev_name), ("blkio.operation", op)])
                .unwrap_or_else(|| panic!("no blkio.request.duration point for {dev_name} {op}"));
        assert_eq!(temporality, 2, "cumulative");
        assert_eq!(point.count, count, "{op}: OTLP count equals JSONL");
        assert_eq!(point.bucket_counts, time_buckets(&slots), "{op}: OTLP buckets equal JSONL slots (default range)");
        let sum_s = point.sum.expect("sum");
        assert!((sum_s - sum_ns as f64 / 1e9).abs() < 1e-9 * count as f64, "{op}: sum {sum_s} vs {sum_ns} ns");
    }
    assert_reconciled("JSONL reads + writes", total, unseen, 5000);
    let otlp_unseen = number(&last, "blkio.completions.unseen", &[("system.device", &dev_name)]).map(|(_, v)| v);
    assert_eq!(otlp_unseen.unwrap_or(0.0), unseen as f64, "OTLP unseen completions equal the JSONL's");
    receiver.stop().await;
}
