//! OTLP and Prometheus exporters (issue 4) — being written.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use crate::snapshot::Snapshot;

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
}

/// Identity of the agent for OTLP resources.
#[derive(Debug, Clone, Default)]
pub struct AgentIdentity {
    pub node_name: String,
    pub host_name: String,
}

pub struct Exporters {}

impl Exporters {
    /// Starts the exporters configured by flags and `OTEL_*` variables (none: nothing runs).
    /// Must be called inside a tokio runtime.
    pub fn start(_args: &crate::cli::RunArgs, _identity: AgentIdentity, _health: Arc<Health>) -> crate::Result<Exporters> {
        Ok(Exporters {})
    }

    /// Hands one snapshot (the same that is written to JSONL) to every exporter. Never blocks.
    pub fn publish(&self, _snapshot: &Snapshot) {}

    /// Final export attempt within `timeout`, then stops the servers.
    pub async fn shutdown(self, _timeout: std::time::Duration) {}
}
