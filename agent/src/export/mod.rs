//! OTLP and Prometheus exporters (issue 4): the same kernel numbers as the JSONL snapshots.
//!
//! The run loop calls [`Exporters::publish`] with every interval it writes to JSONL (the
//! collector's [`Interval`] model, not the JSONL text). `publish` adds the interval's deltas to exact running totals ([`model::Totals`]); `/metrics`
//! renders those totals on each scrape, and OTLP batches are built from them and queued for the
//! sender task ([`otlp`]). Nothing on the collection side ever waits for the network.
//!
//! What the run loop must do (see each method): build an [`AgentIdentity`], create one
//! `Arc<Health>`, call [`Exporters::start`] inside the tokio runtime, [`Health::set_interval`] and
//! [`Health::set_attached`] after attaching, then per snapshot [`Health::record_snapshot`],
//! [`Health::add_jsonl_bytes`] / [`Health::set_output_writable`] after the JSONL write, and
//! [`Exporters::publish`]; finally [`Exporters::shutdown`].

pub mod config;
pub mod metrics;
pub mod model;
pub mod otlp;
pub mod prometheus;
pub mod resource;
mod server;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use self::config::{ExportConfig, OtlpConfig, Temporality, Vars};
use self::metrics::Ranges;
use self::model::{AgentCounters, Collected, ExportCounters, PeakWindow, Totals};
use crate::interval::Interval;
use crate::supervise::Supervisor;
use crate::{Error, Result};

/// Facts `/readyz` is built from, updated by the run loop.
#[derive(Debug, Default)]
pub struct Health {
    /// The eBPF programs are loaded and attached.
    pub attached: AtomicBool,
    /// Unix time (ms) of the last snapshot taken.
    pub last_snapshot_unix_ms: AtomicU64,
    /// Interval in ms (a snapshot older than 3 intervals makes the agent unready).
    pub interval_ms: AtomicU64,
    /// The last JSONL write succeeded (or JSONL output is off).
    pub output_writable: AtomicBool,
    /// Unix time (ms) of attaching: the reference for staleness until the first snapshot.
    pub attached_unix_ms: AtomicU64,
    /// JSONL bytes written since start (exported as `blkio.agent.jsonl.written`).
    pub jsonl_bytes_written: AtomicU64,
    /// Build time of the last snapshot in ns, 0 before the first (`blkio.agent.snapshot.build_time`).
    pub last_build_ns: AtomicU64,
    /// The background tasks; any of them ending makes the agent unready.
    pub tasks: Arc<Supervisor>,
}

pub fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Health {
    pub fn set_interval(&self, interval: Duration) {
        self.interval_ms.store(interval.as_millis() as u64, Ordering::Relaxed);
    }

    /// Call once the programs are attached.
    pub fn set_attached(&self) {
        self.attached_unix_ms.store(now_unix_ms(), Ordering::Relaxed);
        self.attached.store(true, Ordering::Release);
    }

    /// Call when a snapshot has been built, with how long building it took.
    pub fn record_snapshot(&self, build_time: Duration) {
        self.last_build_ns.store(build_time.as_nanos().max(1) as u64, Ordering::Relaxed);
        self.last_snapshot_unix_ms.store(now_unix_ms(), Ordering::Release);
    }

    /// Call after each JSONL write with the bytes written.
    pub fn add_jsonl_bytes(&self, bytes: u64) {
        self.jsonl_bytes_written.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Call after each JSONL write attempt (and once with `true` when JSONL output is off).
    pub fn set_output_writable(&self, ok: bool) {
        self.output_writable.store(ok, Ordering::Release);
    }

    /// `Ok` when attached, a snapshot (or the attach, before the first one) is no older than 3
    /// intervals (at least 1 s, to ride out scheduling hiccups at tiny intervals), the output is
    /// writable and no background task has ended; otherwise the reason.
    pub fn readiness(&self, now_ms: u64) -> std::result::Result<(), String> {
        if !self.attached.load(Ordering::Acquire) {
            return Err("eBPF programs not attached yet".into());
        }
        if let Some(f) = self.tasks.failures().first() {
            return Err(f.to_string());
        }
        let interval = self.interval_ms.load(Ordering::Relaxed);
        let last = match self.last_snapshot_unix_ms.load(Ordering::Acquire) {
            0 => self.attached_unix_ms.load(Ordering::Relaxed),
            t => t,
        };
        if interval > 0 && last > 0 {
            let age = now_ms.saturating_sub(last);
            let limit = (3 * interval).max(1000);
            if age > limit {
                return Err(format!("last snapshot is {age} ms old (limit {limit} ms, 3 intervals)"));
            }
        }
        if !self.output_writable.load(Ordering::Acquire) {
            return Err("the JSONL output is not writable".into());
        }
        Ok(())
    }
}

/// Identity of the agent for OTLP resources. `k8s.node.name`, `k8s.pod.name`,
/// `k8s.namespace.name` and `k8s.pod.uid` come from `$NODE_NAME`, `$POD_NAME`, `$POD_NAMESPACE`
/// and `$POD_UID` (downward API) when set; see [`resource::build`].
#[derive(Debug, Clone, Default)]
pub struct AgentIdentity {
    pub node_name: String,
    pub host_name: String,
}

/// State shared by `publish`, the HTTP server and the periodic OTLP collector.
struct Shared {
    state: Mutex<State>,
    health: Arc<Health>,
    proto_resource: ProtoResource,
    resource_strings: Vec<(String, String)>,
    start_ns: u64,
    otlp: Option<OtlpShared>,
    ranges: Ranges,
}

struct OtlpShared {
    temporality: Temporality,
    queue: Arc<otlp::Queue>,
    stats: Arc<otlp::Stats>,
}

#[derive(Default)]
struct State {
    totals: Totals,
    /// Previous cumulative collection, for delta temporality.
    prev: Option<Collected>,
}

impl Shared {
    fn agent_counters(&self) -> AgentCounters {
        let build = self.health.last_build_ns.load(Ordering::Relaxed);
        AgentCounters {
            start_ns: self.start_ns,
            jsonl_bytes: self.health.jsonl_bytes_written.load(Ordering::Relaxed),
            last_build_ns: (build > 0).then_some(build),
            export: self.otlp.as_ref().map(|o| ExportCounters {
                failures: o.stats.failures.lock().unwrap().clone(),
                dropped: o.stats.dropped.load(Ordering::Relaxed),
                queued: o.queue.len() as u64,
            }),
        }
    }

    /// One scrape: the peak gauge covers the time since the previous scrape, which then
    /// starts a new scrape window (so a 15 s scrape of a 1 s interval sees every peak).
    fn render_prometheus(&self) -> String {
        let counters = self.agent_counters();
        let mut collected = {
            let mut st = self.state.lock().unwrap();
            let c = st.totals.collect(&counters, PeakWindow::Scrape);
            st.totals.reset_window(PeakWindow::Scrape);
            c
        };
        collected.ranges = self.ranges;
        prometheus::render(&collected, &self.resource_strings)
    }

    /// Builds one OTLP batch from the totals and queues it (when anything was published since
    /// the last one).
    fn collect_otlp(&self) {
        let Some(o) = &self.otlp else { return };
        let counters = self.agent_counters();
        let collected = {
            let mut st = self.state.lock().unwrap();
            if st.totals.since_collect == 0 {
                return;
            }
            let mut cumulative = st.totals.collect(&counters, PeakWindow::Otlp);
            cumulative.ranges = self.ranges;
            st.totals.reset_window(PeakWindow::Otlp);
            match o.temporality {
                Temporality::Cumulative => cumulative,
                Temporality::Delta => {
                    let delta = cumulative.delta_since(st.prev.as_ref().unwrap_or(&Collected::default()));
                    st.prev = Some(cumulative);
                    delta
                }
            }
        };
        let request = otlp::encode::request(&collected, o.temporality, &self.proto_resource);
        o.queue.push(otlp::Batch::new(request));
    }
}

/// Counters of the OTLP sender, for operators and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OtlpStats {
    pub sent_batches: u64,
    pub failed_attempts: u64,
    pub dropped_batches: u64,
    pub queued_batches: usize,
    pub queued_bytes: usize,
    pub rejected_points: u64,
}

pub struct Exporters {
    shared: Arc<Shared>,
    /// Exported on each publish when `OTEL_METRIC_EXPORT_INTERVAL` is unset.
    export_each_snapshot: bool,
    stop: watch::Sender<bool>,
    sender: Option<JoinHandle<()>>,
    ticker: Option<JoinHandle<()>>,
    server: Option<JoinHandle<()>>,
    metrics_addr: Option<std::net::SocketAddr>,
}

impl Exporters {
    /// Starts the exporters configured by flags and `OTEL_*` variables (none: nothing runs).
    /// Must be called inside a tokio runtime.
    pub fn start(args: &crate::cli::RunArgs, identity: AgentIdentity, health: Arc<Health>) -> Result<Exporters> {
        let vars = Vars::from_env();
        let config = ExportConfig::from_vars(args, &vars)?;
        Self::start_with(config, resource::build(&identity, &vars)?, health)
    }

    /// [`Exporters::start`] with an explicit configuration and resource (tests, embedding).
    pub fn start_with(
        config: ExportConfig,
        resource: opentelemetry_sdk::Resource,
        health: Arc<Health>,
    ) -> Result<Exporters> {
        let (stop, stop_rx) = watch::channel(false);
        let mut sender = None;
        let mut otlp_shared = None;
        let mut export_each_snapshot = false;
        let mut interval = None;
        let tasks = health.tasks.clone();
        if let Some(cfg) = &config.otlp {
            let (os, task) = start_otlp(cfg, &tasks)?;
            otlp_shared = Some(os);
            sender = Some(task);
            export_each_snapshot = cfg.export_interval.is_none();
            interval = cfg.export_interval;
            tracing::info!(endpoint = %cfg.endpoint, protocol = ?cfg.protocol, temporality = ?cfg.temporality, "OTLP export on");
        }
        let shared = Arc::new(Shared {
            state: Mutex::default(),
            health,
            proto_resource: resource::to_proto(&resource),
            resource_strings: resource::string_attributes(&resource),
            start_ns: now_unix_ms() * 1_000_000,
            otlp: otlp_shared,
            ranges: config.ranges,
        });
        let ticker = interval.map(|every| {
            let shared = shared.clone();
            tasks.spawn("otlp-ticker", async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    shared.collect_otlp();
                }
            })
        });
        let (server, metrics_addr) = match config.metrics_addr {
            None => (None, None),
            Some(addr) => {
                let std_listener = std::net::TcpListener::bind(addr)
                    .and_then(|l| l.set_nonblocking(true).map(|_| l))
                    .map_err(|e| metrics_addr_err(addr, e))?;
                let bound = std_listener.local_addr().map_err(|e| metrics_addr_err(addr, e))?;
                let listener =
                    tokio::net::TcpListener::from_std(std_listener).map_err(|e| metrics_addr_err(addr, e))?;
                tracing::info!(addr = %bound, "serving /metrics, /healthz and /readyz");
                (Some(tasks.spawn("metrics-server", server::serve(listener, shared.clone(), stop_rx))), Some(bound))
            }
        };
        Ok(Exporters { shared, export_each_snapshot, stop, sender, ticker, server, metrics_addr })
    }

    /// Hands one interval (the same that is written to JSONL) to every exporter. Never blocks
    /// on the network: it adds to the totals and, when exporting per interval, queues a batch.
    pub fn publish(&self, interval: &Interval) {
        self.shared.state.lock().unwrap().totals.add(interval);
        if self.export_each_snapshot {
            self.shared.collect_otlp();
        }
    }

    /// Where `/metrics` listens (the real port when configured with port 0).
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_addr
    }

    /// Sender counters; `None` when OTLP is off.
    pub fn otlp_stats(&self) -> Option<OtlpStats> {
        self.shared.otlp.as_ref().map(|o| OtlpStats {
            sent_batches: o.stats.sent.load(Ordering::Relaxed),
            failed_attempts: o.stats.failed_attempts(),
            dropped_batches: o.stats.dropped.load(Ordering::Relaxed),
            queued_batches: o.queue.len(),
            queued_bytes: o.queue.bytes(),
            rejected_points: o.stats.rejected_points.load(Ordering::Relaxed),
        })
    }

    /// The supervisor of the exporters' tasks (`otlp-sender`, `otlp-ticker`, `metrics-server`).
    pub fn tasks(&self) -> &Supervisor {
        &self.shared.health.tasks
    }

    /// Final export attempt within `timeout`, then stops the servers.
    pub async fn shutdown(self, timeout: Duration) {
        // From here on the tasks end on purpose.
        self.shared.health.tasks.stopping();
        if let Some(t) = &self.ticker {
            t.abort();
            // Whatever was published since the last tick still goes out.
            self.shared.collect_otlp();
        }
        let _ = self.stop.send(true);
        if let Some(o) = &self.shared.otlp {
            o.queue.close();
        }
        if let Some(mut sender) = self.sender
            && tokio::time::timeout(timeout, &mut sender).await.is_err()
        {
            sender.abort();
            if let Some(left) = self.shared.otlp.as_ref().map(|o| o.queue.len()).filter(|&n| n > 0) {
                tracing::warn!(batches = left, "OTLP batches not sent before shutdown");
            }
        }
        if let Some(server) = self.server {
            let _ = tokio::time::timeout(Duration::from_secs(1), server).await;
        }
    }
}

fn start_otlp(cfg: &OtlpConfig, tasks: &Arc<Supervisor>) -> Result<(OtlpShared, JoinHandle<()>)> {
    let stats = Arc::new(otlp::Stats::default());
    let queue = Arc::new(otlp::Queue::new(cfg.queue_capacity, cfg.queue_max_bytes, stats.clone()));
    let sender = otlp::Sender::new(cfg, queue.clone(), stats.clone())?;
    Ok((OtlpShared { temporality: cfg.temporality, queue, stats }, tasks.spawn("otlp-sender", sender.run())))
}

fn metrics_addr_err(addr: std::net::SocketAddr, e: std::io::Error) -> Error {
    Error::Config {
        what: "--metrics-addr",
        value: addr.to_string(),
        reason: format!("cannot listen ({e}); pick a free port, or `off` to disable /metrics"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_attach_fresh_snapshots_and_writable_output() {
        let h = Health::default();
        assert!(h.readiness(now_unix_ms()).unwrap_err().contains("attached"));
        h.set_interval(Duration::from_secs(5));
        h.set_output_writable(true);
        h.set_attached();
        let now = now_unix_ms();
        assert_eq!(h.readiness(now), Ok(()), "fresh attach counts until the first snapshot");
        assert!(h.readiness(now + 16_000).unwrap_err().contains("old"));
        h.record_snapshot(Duration::from_millis(3));
        assert_eq!(h.readiness(now_unix_ms() + 14_000), Ok(()));
        h.set_output_writable(false);
        assert!(h.readiness(now_unix_ms()).unwrap_err().contains("writable"));
    }

    #[tokio::test]
    async fn a_background_task_that_ends_makes_the_agent_unready_with_its_name() {
        let h = Health::default();
        h.set_interval(Duration::from_secs(5));
        h.set_output_writable(true);
        h.set_attached();
        h.tasks.spawn("otlp-sender", async {}).await.unwrap();
        assert_eq!(h.readiness(now_unix_ms()), Err("background task otlp-sender stopped".into()));
    }
}
