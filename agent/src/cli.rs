//! Command line: `blkio-agent run` (the node agent) and `blkio-agent analyze` (offline).
//! Every `run` flag can also be set through its `BLKIO_AGENT_*` environment variable.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "blkio-agent", version, about = "Exact block-device I/O latency and queue depth, from eBPF", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach to the block tracepoints and write one JSONL snapshot per interval (needs root,
    /// or CAP_BPF + CAP_PERFMON).
    #[cfg(feature = "ebpf")]
    Run(Box<RunArgs>),
    /// Turn JSONL snapshots into charts, percentiles and anomalies (no privileges needed).
    Analyze(crate::analyze::AnalyzeArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AttachMode {
    /// BTF tracepoints when the kernel has BTF, else classic tracepoints.
    Auto,
    /// BTF-typed tracepoints (tp_btf), keyed by `struct request *`.
    Btf,
    /// Classic tracepoints via tracefs, keyed by (device, sector).
    Tracepoint,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AttributionSource {
    /// `bio` when the io controller's hierarchy is usable for pods, else `task`.
    Auto,
    /// The cgroup the block layer charged the request to (io controller), read at completion.
    Bio,
    /// The submitting task's cgroup v2, recorded at insert/issue in the per-request map.
    Task,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Seconds per snapshot (float).
    #[arg(long, env = "BLKIO_AGENT_INTERVAL", default_value_t = 5.0, value_parser = parse_positive_secs)]
    pub interval: f64,

    /// JSONL output file (single-file mode). Ignored when --output-dir is given.
    #[arg(long, env = "BLKIO_AGENT_OUTPUT", default_value = "tracepoints.jsonl")]
    pub output: PathBuf,

    /// Do not write JSONL (live view, OTLP and /metrics only).
    #[arg(long, env = "BLKIO_AGENT_NO_OUTPUT")]
    pub no_output: bool,

    /// Snapshots per flush (msync; plus fsync with --fsync).
    #[arg(long, env = "BLKIO_AGENT_FLUSH_EVERY", default_value_t = 12, value_parser = clap::value_parser!(u32).range(1..))]
    pub flush_every: u32,

    /// fsync after each flush (durable against power loss, not only against a crash).
    #[arg(long, env = "BLKIO_AGENT_FSYNC")]
    pub fsync: bool,

    /// Segment mode for log shippers: write sealed `<node>-<UTC time>-<run>-<seq>.jsonl` files here.
    #[arg(long, env = "BLKIO_AGENT_OUTPUT_DIR")]
    pub output_dir: Option<PathBuf>,

    /// Seal the current segment when it reaches this many bytes.
    #[arg(long, env = "BLKIO_AGENT_SEGMENT_MAX_BYTES", default_value_t = 16 << 20, value_parser = clap::value_parser!(u64).range(4096..))]
    pub segment_max_bytes: u64,

    /// Seal the current segment when it is this many seconds old.
    #[arg(long, env = "BLKIO_AGENT_SEGMENT_MAX_AGE", default_value_t = 300.0, value_parser = parse_positive_secs)]
    pub segment_max_age: f64,

    /// Delete the oldest sealed segments while all of them take more than this many bytes.
    #[arg(long, env = "BLKIO_AGENT_RETAIN_BYTES", default_value_t = 512 << 20)]
    pub retain_bytes: u64,

    /// Keep at most this many sealed segments.
    #[arg(long, env = "BLKIO_AGENT_RETAIN_FILES", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub retain_files: u64,

    /// Root under which `proc/diskstats` is read (`/host` in a pod).
    #[arg(long, env = "BLKIO_AGENT_PROC_ROOT", default_value = "/")]
    pub proc_root: PathBuf,

    /// Root under which `sys/block/*` and `sys/kernel/btf/vmlinux` are read (`/host` in a pod).
    #[arg(long, env = "BLKIO_AGENT_SYS_ROOT", default_value = "/")]
    pub sys_root: PathBuf,

    /// Node name written into every snapshot [default: $NODE_NAME, else the hostname].
    #[arg(long, env = "BLKIO_AGENT_NODE_NAME")]
    pub node_name: Option<String>,

    /// Stop by itself after this many seconds (a final snapshot is still written).
    #[arg(long, env = "BLKIO_AGENT_DURATION", value_parser = parse_positive_secs)]
    pub duration: Option<f64>,

    /// How to attach to the block tracepoints.
    #[arg(long, env = "BLKIO_AGENT_ATTACH", value_enum, default_value_t = AttachMode::Auto)]
    pub attach: AttachMode,

    /// Device filter, comma-separated glob patterns; `!pattern` excludes. Example: `nvme*,sd*`
    /// or `!loop*,!ram*`. Default: every device. The programs skip excluded devices' requests
    /// from their second interval on.
    #[arg(long, env = "BLKIO_AGENT_DEVICES", value_delimiter = ',')]
    pub devices: Vec<String>,

    /// Live view: `auto` (table on a terminal, one log line per interval otherwise), `table`,
    /// `log`, or `off`.
    #[arg(long, env = "BLKIO_AGENT_LIVE", value_enum, default_value_t = LiveMode::Auto)]
    pub live: LiveMode,

    /// Attribute I/O to the submitting cgroup / Kubernetes pod (per-pod histograms).
    #[arg(long, env = "BLKIO_AGENT_ATTRIBUTE_PODS")]
    pub attribute_pods: bool,

    /// Which cgroup a request is charged to: `bio` (the io controller's, from the request's bio:
    /// cheap, and right for writeback), `task` (the submitting task's cgroup v2, kept per
    /// request), or `auto` (`bio` when the io controller is usable for pods, see
    /// docs/attribution.md).
    #[arg(long, env = "BLKIO_AGENT_ATTRIBUTION_SOURCE", value_enum, default_value_t = AttributionSource::Auto)]
    pub attribution_source: AttributionSource,

    /// Cgroup mount point used to map cgroup ids to pods [default: the io controller's hierarchy
    /// for `bio` (cgroup v2 at <sys-root>/sys/fs/cgroup, or v1 `blkio` beside it); the cgroup v2
    /// mount for `task` (<sys-root>/sys/fs/cgroup, or its `unified` subdirectory on hybrid hosts)].
    #[arg(long, env = "BLKIO_AGENT_CGROUP_ROOT")]
    pub cgroup_root: Option<PathBuf>,

    /// Per-pod series kept per snapshot (busiest first); the rest are summed into `other`.
    #[arg(long, env = "BLKIO_AGENT_MAX_PODS", default_value_t = 50)]
    pub max_pods: usize,

    /// OTLP endpoint (overrides OTEL_EXPORTER_OTLP_[METRICS_]ENDPOINT). No endpoint: OTLP off.
    #[arg(long, env = "BLKIO_AGENT_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// OTLP protocol, `http/protobuf` or `grpc` (overrides OTEL_EXPORTER_OTLP_[METRICS_]PROTOCOL).
    #[arg(long, env = "BLKIO_AGENT_OTLP_PROTOCOL")]
    pub otlp_protocol: Option<String>,

    /// Address of the Prometheus `/metrics`, `/healthz`, `/readyz` server, or `off`.
    #[arg(long, env = "BLKIO_AGENT_METRICS_ADDR", default_value = "0.0.0.0:9435")]
    pub metrics_addr: String,

    /// Largest exported time-histogram bound, seconds (OTLP and Prometheus; JSONL keeps every
    /// slot). The last bound is the first slot edge 2^(k+1) µs at or above it (16 -> 16.777216 s);
    /// longer requests are in the overflow (+Inf) bucket, sums and counts stay exact.
    #[arg(long, env = "BLKIO_AGENT_HISTOGRAM_MAX", default_value_t = 16.0, value_parser = parse_positive_secs)]
    pub histogram_max: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LiveMode {
    Auto,
    Table,
    Log,
    Off,
}

fn parse_positive_secs(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if v.is_finite() && v > 0.0 { Ok(v) } else { Err(format!("`{s}` must be a positive number of seconds")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_must_be_positive_numbers() {
        assert_eq!(parse_positive_secs("0.5"), Ok(0.5));
        assert!(parse_positive_secs("0").is_err());
        assert!(parse_positive_secs("-1").is_err());
        assert!(parse_positive_secs("abc").unwrap_err().contains("abc"));
        assert!(parse_positive_secs("inf").is_err());
    }

    #[cfg(feature = "ebpf")]
    #[test]
    fn run_defaults_match_the_seed() {
        let cli = Cli::try_parse_from(["blkio-agent", "run"]).unwrap();
        let Command::Run(args) = cli.command else { panic!("not run") };
        assert_eq!(args.interval, 5.0);
        assert_eq!(args.output, PathBuf::from("tracepoints.jsonl"));
        assert_eq!(args.flush_every, 12);
        assert!(!args.fsync && !args.no_output);
        assert!(Cli::try_parse_from(["blkio-agent", "run", "--flush-every", "0"]).is_err());
    }
}
