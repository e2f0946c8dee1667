//! Shared pieces of the exporter tests: realistic snapshots, in-process OTLP receivers (HTTP and
//! gRPC, built from the opentelemetry-proto types) on 127.0.0.1, and point lookups.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blkio_agent::cli::{Cli, Command, RunArgs};
use blkio_agent::export::config::{ExportConfig, Vars};
use blkio_agent::interval::{Depth, DeviceInterval, Hist, Interval, OpInterval, PodLabels, PodSeries};
use blkio_agent::snapshot::*;
use bytes::Bytes;
use clap::Parser;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::metrics::v1::{
    HistogramDataPoint, Metric, NumberDataPoint, metric::Data, number_data_point,
};
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub const DEVICE: &str = "loop7";

/// `blkio-agent run <flags>` parsed by the real CLI.
pub fn run_args(flags: &[&str]) -> RunArgs {
    let mut argv = vec!["blkio-agent", "run"];
    argv.extend_from_slice(flags);
    match Cli::try_parse_from(argv).expect("valid flags").command {
        Command::Run(args) => *args,
        _ => unreachable!(),
    }
}

pub fn vars(pairs: &[(&str, &str)]) -> Vars {
    pairs.iter().map(|&(k, v)| (k, v)).collect()
}

pub fn config(flags: &[&str], pairs: &[(&str, &str)]) -> ExportConfig {
    ExportConfig::from_vars(&run_args(flags), &vars(pairs)).expect("valid config")
}

fn slots_hist(slots: &[(u32, u64)], sum: u64) -> Hist {
    let mut h = Hist { sum, ..Hist::default() };
    for &(slot, n) in slots {
        h.slots[slot as usize] += n;
    }
    h
}

/// Interval number `seq` of 5 s on a loop device: reads and writes whose slots vary with `seq`,
/// a discard, an in-flight gauge, a pod, and some losses, as the collector builds it.
pub fn interval(seq: u64) -> Interval {
    let end = 1_760_000_000.0 + 5.0 * (seq + 1) as f64;
    let k = seq as u32 % 5;
    let read_slots = [(3 + k, 10 + seq), (7, 4), (12 + k, 1)];
    let write_slots = [(5, 3 + seq % 3), (20, 1)];
    let op = |op: &'static str, slots: &[(u32, u64)], sum_ns: u64, qsum: u64| {
        let count: u64 = slots.iter().map(|s| s.1).sum();
        OpInterval {
            op,
            count,
            bytes: count * 4096,
            device_time: slots_hist(slots, sum_ns),
            queue_time: slots_hist(&[(0, count - 1), (2, 1)], qsum),
            size: slots_hist(&[(12, count)], count * 4096),
        }
    };
    let reads = op("read", &read_slots, 123_456_789 + seq * 1_001, 4_000 + seq);
    let writes = op("write", &write_slots, 9_876_543 + seq * 7, 2_500);
    let discard = op("discard", &[(9, 1)], 700_000, 0);
    let mut iv = Interval::empty(end, 5.0, "node-1", seq, "btf");
    iv.pods.push(PodSeries {
        labels: PodLabels {
            namespace: Some("db".into()),
            pod: Some("postgres-0".into()),
            pod_uid: Some("0f0e-uid".into()),
            container: Some("postgres".into()),
            cgroup: None,
        },
        device_id: 7 << 20 | 7,
        device_name: DEVICE.into(),
        op: "read",
        count: reads.count,
        bytes: reads.bytes,
        device_time: reads.device_time,
        io_pressure: None,
    });
    iv.devices.push(DeviceInterval {
        id: 7 << 20 | 7,
        name: DEVICE.into(),
        ops: vec![reads, writes, discard],
        depth: Some(Depth { count: seq % 4, peak: 10 + seq % 7, peak_upper: 12 + seq % 7, sysfs: None }),
        unseen: None,
    });
    iv.losses = Losses::default().with("complete_without_start", seq % 2).with("requeued", 1);
    iv
}

/// The JSONL line of [`interval`] `seq` (what the exporters' numbers must equal).
pub fn snapshot(seq: u64) -> Snapshot {
    interval(seq).snapshot()
}

/// The JSONL-side truth for (op) over `snaps`: dense slots, count, sum of ns.
pub fn expected(snaps: &[Snapshot], op: &str) -> (Vec<u64>, u64, u64) {
    let mut slots = vec![0u64; 32];
    let (mut count, mut sum_ns) = (0, 0);
    for s in snaps {
        for o in s.ops.iter().filter(|o| o.device_name == DEVICE && o.op == op) {
            for (i, n) in slots_from_buckets(&o.device_time.buckets, 32).into_iter().enumerate() {
                slots[i] += n;
            }
            count += o.count;
            sum_ns += o.device_time.sum_ns;
        }
    }
    (slots, count, sum_ns)
}

/// Exported time bounds at the default `--histogram-max` (16 s): the exact slot edges
/// `2^(k+1) / 1e6` s of slots 0..=23 (the last is 16.777216 s).
pub fn exact_time_bounds() -> Vec<f64> {
    (0..24u32).map(|k| (1u64 << (k + 1)) as f64 / 1e6).collect()
}

/// The exported (non-cumulative) time buckets of 32 kernel slots at the default range: slots
/// 0..=23, then the overflow bucket holding slots 24..=31.
pub fn time_buckets(slots: &[u64]) -> Vec<u64> {
    let mut b = slots[..24].to_vec();
    b.push(slots[24..].iter().sum());
    b
}

// ---------- lookups in received requests ----------

pub fn metric<'a>(req: &'a ExportMetricsServiceRequest, name: &str) -> Option<&'a Metric> {
    req.resource_metrics.iter().flat_map(|r| &r.scope_metrics).flat_map(|s| &s.metrics).find(|m| m.name == name)
}

fn attr<'a>(attrs: &'a [opentelemetry_proto::tonic::common::v1::KeyValue], key: &str) -> Option<&'a str> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.as_str()),
        _ => None,
    })
}

pub fn resource_attr<'a>(req: &'a ExportMetricsServiceRequest, key: &str) -> Option<&'a str> {
    attr(&req.resource_metrics[0].resource.as_ref()?.attributes, key)
}

/// The histogram point of `name` whose attributes include all of `want`.
pub fn hist<'a>(
    req: &'a ExportMetricsServiceRequest,
    name: &str,
    want: &[(&str, &str)],
) -> Option<(&'a HistogramDataPoint, i32)> {
    let Some(Data::Histogram(h)) = &metric(req, name)?.data else { return None };
    let p = h.data_points.iter().find(|p| want.iter().all(|(k, v)| attr(&p.attributes, k) == Some(v)))?;
    Some((p, h.aggregation_temporality))
}

pub fn number<'a>(
    req: &'a ExportMetricsServiceRequest,
    name: &str,
    want: &[(&str, &str)],
) -> Option<(&'a NumberDataPoint, f64)> {
    let points = match &metric(req, name)?.data {
        Some(Data::Sum(s)) => &s.data_points,
        Some(Data::Gauge(g)) => &g.data_points,
        _ => return None,
    };
    let p = points.iter().find(|p| want.iter().all(|(k, v)| attr(&p.attributes, k) == Some(v)))?;
    let v = match p.value? {
        number_data_point::Value::AsInt(i) => i as f64,
        number_data_point::Value::AsDouble(d) => d,
    };
    Some((p, v))
}

pub async fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------- receivers ----------

#[derive(Clone, Debug)]
pub struct Received {
    pub at: Instant,
    pub path: String,
    pub headers: HeaderMap,
    pub request: ExportMetricsServiceRequest,
}

/// What an in-process collector answers, in order; once empty, success.
#[derive(Clone, Debug)]
pub enum Reply {
    Status(StatusCode, Option<&'static str>),
    Grpc(tonic::Code, Option<Duration>),
}

#[derive(Clone, Default)]
pub struct Log {
    pub received: Arc<Mutex<Vec<Received>>>,
    /// Every attempt, including those answered with an error.
    pub attempts: Arc<Mutex<Vec<Instant>>>,
    pub replies: Arc<Mutex<VecDeque<Reply>>>,
}

impl Log {
    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
    pub fn len(&self) -> usize {
        self.received.lock().unwrap().len()
    }
    pub fn last(&self) -> Option<Received> {
        self.received.lock().unwrap().last().cloned()
    }
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.replies.lock().unwrap().extend(replies);
    }
}

pub struct Receiver {
    pub addr: SocketAddr,
    pub log: Log,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let _ = self.task.await;
    }
}

async fn handle_http(req: Request<Incoming>, log: Log) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    log.attempts.lock().unwrap().push(Instant::now());
    if let Some(Reply::Status(code, retry_after)) = log.replies.lock().unwrap().pop_front() {
        let mut resp = Response::builder().status(code);
        if let Some(r) = retry_after {
            resp = resp.header("retry-after", r);
        }
        return Ok(resp.body(Full::new(Bytes::from_static(b"scripted failure"))).unwrap());
    }
    let raw = if parts.headers.get("content-encoding").is_some_and(|v| v == "gzip") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut out).expect("valid gzip body");
        out
    } else {
        body.to_vec()
    };
    let request = ExportMetricsServiceRequest::decode(&raw[..]).expect("valid OTLP protobuf");
    log.received.lock().unwrap().push(Received {
        at: Instant::now(),
        path: parts.uri.path().to_string(),
        headers: parts.headers,
        request,
    });
    let reply = ExportMetricsServiceResponse::default().encode_to_vec();
    Ok(Response::builder()
        .header("content-type", "application/x-protobuf")
        .body(Full::new(Bytes::from(reply)))
        .unwrap())
}

/// OTLP/HTTP receiver on 127.0.0.1 (`port` 0: any free port). With `tls`, serves HTTPS.
pub async fn http_receiver(port: u16, tls: Option<Arc<rustls::ServerConfig>>) -> Receiver {
    let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind 127.0.0.1");
    let addr = listener.local_addr().unwrap();
    let log = Log::default();
    let (stop_tx, mut stop_rx) = oneshot::channel();
    let task_log = log.clone();
    let task = tokio::spawn(async move {
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let stream = tokio::select! {
                s = listener.accept() => s.expect("accept").0,
                _ = &mut stop_rx => break,
            };
            let log = task_log.clone();
            let acceptor = acceptor.clone();
            conns.spawn(async move {
                let svc = service_fn(move |req| handle_http(req, log.clone()));
                let builder = hyper::server::conn::http1::Builder::new();
                match acceptor {
                    Some(a) => {
                        if let Ok(tls) = a.accept(stream).await {
                            let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
                        }
                    }
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                    }
                }
            });
        }
        // Closing every connection makes the stop look like a dead collector to the client.
        conns.shutdown().await;
    });
    Receiver { addr, log, stop: Some(stop_tx), task }
}

struct GrpcCollector(Log);

#[tonic::async_trait]
impl MetricsService for GrpcCollector {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0.attempts.lock().unwrap().push(Instant::now());
        if let Some(Reply::Grpc(code, delay)) = self.0.replies.lock().unwrap().pop_front() {
            let status = match delay {
                Some(d) => tonic::Status::with_details(
                    code,
                    "scripted failure",
                    blkio_agent::export::otlp::grpc::retry_info_details(d).into(),
                ),
                None => tonic::Status::new(code, "scripted failure"),
            };
            return Err(status);
        }
        let headers = request.metadata().clone().into_headers();
        self.0.received.lock().unwrap().push(Received {
            at: Instant::now(),
            path: "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export".into(),
            headers,
            request: request.into_inner(),
        });
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// OTLP/gRPC receiver on 127.0.0.1 that accepts gzip-compressed requests.
pub async fn grpc_receiver(port: u16) -> Receiver {
    let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind 127.0.0.1");
    let addr = listener.local_addr().unwrap();
    let log = Log::default();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let svc = MetricsServiceServer::new(GrpcCollector(log.clone()))
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
    let task = tokio::spawn(async move {
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let _ = tonic::transport::Server::builder()
            .serve_with_incoming_shutdown(svc, incoming, async {
                let _ = stop_rx.await;
            })
            .await;
    });
    Receiver { addr, log, stop: Some(stop_tx), task }
}

/// A loopback port with nothing listening on it (bound once, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
