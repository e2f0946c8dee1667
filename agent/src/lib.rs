//! blkio-agent: exact block-device I/O latency and queue depth from eBPF, written as JSONL,
//! exported as OTLP and Prometheus metrics, and analyzed offline.
//!
//! Modules, one concern each:
//! - [`interval`]: the one model of an interval, built by the collector and rendered by every
//!   output (JSONL, OTLP, Prometheus, live view); [`losses`]: the one table of loss kinds.
//! - [`snapshot`], [`histogram`]: the JSONL contract and log2 bucket math (shared by all).
//! - [`btf`], [`tracefs`], [`loader`]: find kernel layouts, load and attach the eBPF programs.
//! - [`devices`], [`collector`]: name devices, read the kernel maps, turn them into intervals.
//! - [`writer`]: crash-safe mmap JSONL (single file and sealed segments).
//! - [`export`]: OTLP and Prometheus; [`supervise`]: background tasks whose end is a failure.
//! - [`k8s`]: cgroup -> pod attribution; [`pressure`]: PSI of the node and of each pod.
//! - [`analyze`]: offline charts, percentiles, anomalies.
//! - [`prereq`]: the rule for tests whose prerequisites (root, devices, Docker) are missing.

pub mod analyze;
pub mod cli;
pub mod devices;
pub mod error;
pub mod histogram;
pub mod interval;
pub mod losses;
pub mod prereq;
pub mod pressure;
pub mod snapshot;
pub mod writer;

#[cfg(feature = "ebpf")]
pub mod btf;
#[cfg(feature = "ebpf")]
pub mod collector;
#[cfg(feature = "ebpf")]
pub mod export;
#[cfg(feature = "ebpf")]
pub mod k8s;
#[cfg(feature = "ebpf")]
pub mod live;
#[cfg(feature = "ebpf")]
pub mod loader;
#[cfg(feature = "ebpf")]
pub mod run;
#[cfg(feature = "ebpf")]
pub mod supervise;
#[cfg(feature = "ebpf")]
pub mod tracefs;

pub use error::{Error, Result};
