//! OTLP sender: a bounded queue of encoded batches and one task that sends them in order, with
//! retries and backoff. The collection side only ever pushes to the queue (never waits), so a
//! dead or slow collector cannot hold up snapshots or JSONL.

pub mod encode;
pub mod grpc;
pub mod http;
pub mod tls;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use prost::Message;
use tokio::sync::Notify;

use super::config::{OtlpConfig, Protocol};
use crate::Result;

/// A collector's Retry-After is honoured up to this long, so that one odd header cannot park
/// the exporter for hours.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// At most one warning per this period while exports keep failing.
const LOG_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct Outcome {
    pub rejected_points: u64,
    pub message: String,
}

#[derive(Debug)]
pub struct SendError {
    pub retryable: bool,
    /// Low-cardinality reason for `error.type`: HTTP status, gRPC code, `timeout`, `transport`.
    pub error_type: String,
    pub detail: String,
    pub retry_after: Option<Duration>,
}

impl SendError {
    pub fn retry(error_type: &str, detail: String, retry_after: Option<Duration>) -> Self {
        Self::retry_owned(error_type.to_string(), detail, retry_after)
    }
    pub fn retry_owned(error_type: String, detail: String, retry_after: Option<Duration>) -> Self {
        SendError { retryable: true, error_type, detail, retry_after }
    }
    pub fn permanent(error_type: &str, detail: String) -> Self {
        Self::permanent_owned(error_type.to_string(), detail)
    }
    pub fn permanent_owned(error_type: String, detail: String) -> Self {
        SendError { retryable: false, error_type, detail, retry_after: None }
    }
}

pub struct Batch {
    pub request: ExportMetricsServiceRequest,
    /// Encoded size, for the queue's byte bound.
    pub bytes: usize,
}

impl Batch {
    pub fn new(request: ExportMetricsServiceRequest) -> Batch {
        Batch { bytes: request.encoded_len(), request }
    }
}

/// Counters of the sender, shared with the collection side (they are exported as metrics too).
#[derive(Debug, Default)]
pub struct Stats {
    pub sent: AtomicU64,
    pub dropped: AtomicU64,
    pub rejected_points: AtomicU64,
    pub failures: Mutex<BTreeMap<String, u64>>,
}

impl Stats {
    pub fn failed_attempts(&self) -> u64 {
        self.failures.lock().unwrap().values().sum()
    }
}

/// FIFO of batches bounded by count and bytes; a push past either bound drops the oldest.
pub struct Queue {
    inner: Mutex<QueueInner>,
    notify: Notify,
    capacity: usize,
    max_bytes: usize,
    stats: Arc<Stats>,
}

#[derive(Default)]
struct QueueInner {
    items: VecDeque<Batch>,
    bytes: usize,
    closed: bool,
}

impl Queue {
    pub fn new(capacity: usize, max_bytes: usize, stats: Arc<Stats>) -> Queue {
        Queue { inner: Mutex::default(), notify: Notify::new(), capacity: capacity.max(1), max_bytes, stats }
    }

    /// Appends a batch, dropping the oldest ones beyond the bounds. Never waits.
    pub fn push(&self, batch: Batch) {
        self.insert(batch, false);
        self.notify.notify_one();
    }

    /// Puts a batch that failed back at the head for a retry (it is the oldest, so it is the
    /// first to go if newer batches fill the queue meanwhile).
    fn push_front(&self, batch: Batch) {
        self.insert(batch, true);
    }

    fn insert(&self, batch: Batch, front: bool) {
        let mut q = self.inner.lock().unwrap();
        q.bytes += batch.bytes;
        if front {
            q.items.push_front(batch);
        } else {
            q.items.push_back(batch);
        }
        // Keep at least the newest batch even if it alone exceeds the byte bound.
        while q.items.len() > self.capacity || (q.bytes > self.max_bytes && q.items.len() > 1) {
            let old = q.items.pop_front().expect("non-empty");
            q.bytes -= old.bytes;
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The next batch; `None` once closed and empty.
    async fn pop(&self) -> Option<Batch> {
        loop {
            let notified = self.notify.notified();
            {
                let mut q = self.inner.lock().unwrap();
                if let Some(b) = q.items.pop_front() {
                    q.bytes -= b.bytes;
                    return Some(b);
                }
                if q.closed {
                    return None;
                }
            }
            notified.await;
        }
    }

    pub fn close(&self) {
        self.inner.lock().unwrap().closed = true;
        self.notify.notify_one();
    }

    pub fn len(&self) -> usize {
        self.inner.lock().unwrap().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn bytes(&self) -> usize {
        self.inner.lock().unwrap().bytes
    }
}

// One transport per process: boxing would only add an indirection.
#[allow(clippy::large_enum_variant)]
enum Transport {
    Http(http::HttpTransport),
    Grpc(grpc::GrpcTransport),
}

impl Transport {
    async fn send(&self, req: &ExportMetricsServiceRequest) -> Result<Outcome, SendError> {
        match self {
            Transport::Http(t) => t.send(req).await,
            Transport::Grpc(t) => t.send(req).await,
        }
    }
}

pub struct Sender {
    transport: Transport,
    queue: Arc<Queue>,
    stats: Arc<Stats>,
    endpoint: String,
    backoff_initial: Duration,
    backoff_max: Duration,
}

impl Sender {
    /// Builds the transport now (so that TLS or endpoint errors fail the start), sends nothing yet.
    pub fn new(cfg: &OtlpConfig, queue: Arc<Queue>, stats: Arc<Stats>) -> Result<Sender> {
        let transport = match cfg.protocol {
            Protocol::HttpProtobuf => Transport::Http(http::HttpTransport::new(cfg)?),
            Protocol::Grpc => Transport::Grpc(grpc::GrpcTransport::new(cfg)?),
        };
        Ok(Sender {
            transport,
            queue,
            stats,
            endpoint: cfg.endpoint.to_string(),
            backoff_initial: cfg.backoff_initial,
            backoff_max: cfg.backoff_max.max(cfg.backoff_initial),
        })
    }

    /// Sends until the queue is closed and drained.
    pub async fn run(self) {
        let mut backoff = self.backoff_initial;
        let mut log = FailureLog::default();
        while let Some(batch) = self.queue.pop().await {
            match self.transport.send(&batch.request).await {
                Ok(outcome) => {
                    self.stats.sent.fetch_add(1, Ordering::Relaxed);
                    backoff = self.backoff_initial;
                    log.recovered(&self.endpoint);
                    if outcome.rejected_points > 0 {
                        self.stats.rejected_points.fetch_add(outcome.rejected_points, Ordering::Relaxed);
                        log.rejected(outcome.rejected_points, &outcome.message);
                    }
                }
                Err(e) => {
                    *self.stats.failures.lock().unwrap().entry(e.error_type.clone()).or_default() += 1;
                    log.failed(&self.endpoint, &e);
                    if e.retryable {
                        let delay = match e.retry_after {
                            Some(d) => d.min(MAX_RETRY_AFTER),
                            None => jitter(backoff),
                        };
                        backoff = (backoff * 2).min(self.backoff_max);
                        self.queue.push_front(batch);
                        tokio::time::sleep(delay).await;
                    } else {
                        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

/// ±25 % so that the agents of a whole cluster do not retry in lockstep after a collector outage.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |t| t.subsec_nanos());
    let x = (nanos ^ (nanos >> 13)).wrapping_mul(0x9E37_79B9) % 1000; // 0..1000
    d.mul_f64(0.75 + x as f64 / 2000.0)
}

/// Rate-limited logging of export failures: the first one, then one summary per [`LOG_EVERY`].
#[derive(Default)]
struct FailureLog {
    failing_since: Option<Instant>,
    failures: u64,
    last_warn: Option<Instant>,
    suppressed: u64,
    last_rejected_warn: Option<Instant>,
}

impl FailureLog {
    fn failed(&mut self, endpoint: &str, e: &SendError) {
        self.failing_since.get_or_insert_with(Instant::now);
        self.failures += 1;
        if self.last_warn.is_some_and(|t| t.elapsed() < LOG_EVERY) {
            self.suppressed += 1;
            return;
        }
        let action = if e.retryable { "will retry with backoff" } else { "batch dropped (collector rejected it)" };
        tracing::warn!(endpoint, error.type = %e.error_type, error = %e.detail, similar_since_last = self.suppressed, "OTLP export failed; {action}");
        self.last_warn = Some(Instant::now());
        self.suppressed = 0;
    }

    fn recovered(&mut self, endpoint: &str) {
        if let Some(since) = self.failing_since.take() {
            tracing::info!(
                endpoint,
                failed_attempts = self.failures,
                outage_s = since.elapsed().as_secs(),
                "OTLP export recovered"
            );
            self.failures = 0;
            self.last_warn = None;
            self.suppressed = 0;
        }
    }

    fn rejected(&mut self, points: u64, message: &str) {
        if self.last_rejected_warn.is_some_and(|t| t.elapsed() < LOG_EVERY) {
            return;
        }
        tracing::warn!(rejected_points = points, message, "OTLP collector rejected part of a batch");
        self.last_rejected_warn = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: usize) -> Batch {
        Batch { request: ExportMetricsServiceRequest::default(), bytes: n }
    }

    #[test]
    fn queue_drops_oldest_beyond_count_and_bytes() {
        let stats = Arc::new(Stats::default());
        let q = Queue::new(3, 250, stats.clone());
        for _ in 0..5 {
            q.push(batch(10));
        }
        assert_eq!((q.len(), q.bytes()), (3, 30));
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 2);
        q.push(batch(241));
        assert_eq!((q.len(), q.bytes()), (1, 241), "byte bound drops the older ones");
        q.push(batch(1000));
        assert_eq!((q.len(), q.bytes()), (1, 1000), "the newest batch is always kept");
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 6);
    }

    #[test]
    fn jitter_stays_within_a_quarter() {
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(4));
            assert!(j >= Duration::from_secs(3) && j <= Duration::from_secs(5), "{j:?}");
        }
    }

    #[tokio::test]
    async fn pop_waits_and_ends_when_closed() {
        let q = Arc::new(Queue::new(4, 1 << 20, Arc::default()));
        let q2 = q.clone();
        let waiter = tokio::spawn(async move { q2.pop().await.map(|b| b.bytes) });
        tokio::task::yield_now().await;
        q.push(batch(7));
        assert_eq!(waiter.await.unwrap(), Some(7));
        q.close();
        assert!(q.pop().await.is_none());
    }
}
