//! Loads the eBPF object, fills in the kernel layout it needs, and attaches the programs.
//!
//! One concern per module: [`layout`] (what the programs need to know about the kernel, from BTF or
//! tracefs, as one [`blkio_agent_common::Config`]), [`caps`] (capabilities, `RLIMIT_MEMLOCK`),
//! [`attach`] (load, attach, arm, fall back), [`fastpath`] (when the no-start-map path is
//! trusted), [`progstats`] (`BPF_OBJ_GET_INFO_BY_FD`), [`early`] (loaders made before aya can parse
//! kernel BTF).

mod attach;
pub mod caps;
pub mod early;
pub mod fastpath;
pub mod layout;
mod progstats;

use std::path::{Path, PathBuf};

use aya::Ebpf;

pub use attach::monotonic_ns;
pub use caps::{check_privileges, effective_caps};
pub use fastpath::FastPath;
pub use layout::{BtfLayout, FastLayout, FlagSource, TracepointLayout};
pub use progstats::{ProgramStats, program_stats};

use crate::{
    cli::AttachMode,
    error::{Error, Result},
};

/// Which attach mode is in effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attached {
    Btf,
    Tracepoint,
}

impl Attached {
    pub fn as_str(self) -> &'static str {
        match self {
            Attached::Btf => "btf",
            Attached::Tracepoint => "tracepoint",
        }
    }
}

/// Loaded and attached programs. Dropping it detaches everything.
pub struct Probes {
    pub ebpf: Ebpf,
    pub mode: Attached,
    /// Names of the attached programs (for run statistics).
    pub programs: Vec<&'static str>,
    /// The attribution source in effect (`None`: not attributing).
    pub cgroup_source: Option<CgroupSource>,
    /// Whether and since when the fast path is on (the collector drives its self-test).
    pub fast: FastPath,
}

/// A tracepoint and whether the agent can work without it.
pub(crate) struct Hook {
    pub tracepoint: &'static str,
    pub required: bool,
}

pub(crate) const HOOKS: [Hook; 4] = [
    Hook { tracepoint: "block_rq_issue", required: true },
    Hook { tracepoint: "block_rq_complete", required: true },
    // Queue time and requeue handling are lost without these, not correctness of counts.
    Hook { tracepoint: "block_rq_insert", required: false },
    Hook { tracepoint: "block_rq_requeue", required: false },
];

/// Where the cgroup of a request comes from when attributing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupSource {
    /// The cgroup the block layer charged the request to (`rq->bio->bi_blkg`, the io
    /// controller's), read at completion: no per-request map, so the fast path stays on, and
    /// (cgroup v2) writeback is charged to the cgroup that dirtied the pages. Ids are those of the io
    /// controller's hierarchy. Needs BTF and a kernel with `CONFIG_BLK_CGROUP`.
    Bio,
    /// The cgroup v2 of the task that inserted or issued the request, kept in the per-request
    /// start map until completion (slow path). Works in every attach mode.
    Task,
}

impl CgroupSource {
    pub fn as_str(self) -> &'static str {
        match self {
            CgroupSource::Bio => "bio",
            CgroupSource::Task => "task",
        }
    }
}

pub struct LoadOptions<'a> {
    pub mode: AttachMode,
    /// Root under which `sys/kernel/btf/vmlinux` is read.
    pub sys_root: &'a Path,
    /// Per-cgroup attribution and the source wanted; the loader may fall back to `Task`
    /// ([`Probes::cgroup_source`] says what is in effect).
    pub attribution: Option<CgroupSource>,
}

pub fn btf_path(sys_root: &Path) -> PathBuf {
    sys_root.join("sys/kernel/btf/vmlinux")
}

/// Loads and attaches in the mode asked for. `auto` takes BTF tracepoints when the kernel has
/// BTF and can run them, else classic tracepoints, and says why in one log line; a forced mode
/// that this kernel cannot run fails with one line naming what is missing.
pub fn load(opts: &LoadOptions<'_>) -> Result<Probes> {
    check_privileges()?;
    let release = caps::running_release();
    caps::raise_memlock_if_charged(release.as_deref())?;
    let version = release.as_deref().and_then(caps::kernel_version);
    let vmlinux = btf_path(opts.sys_root);
    match opts.mode {
        AttachMode::Btf if !vmlinux.exists() => Err(Error::Other(format!(
            "--attach btf needs kernel BTF at {} (a kernel built with CONFIG_DEBUG_INFO_BTF=y); use --attach auto or tracepoint",
            vmlinux.display()
        ))),
        AttachMode::Btf => attach::load_btf(&vmlinux, version, opts.attribution),
        AttachMode::Tracepoint => attach::load_tracepoints(tracepoint_attribution(opts.attribution)),
        AttachMode::Auto if !vmlinux.exists() => {
            tracing::info!(btf = %vmlinux.display(), "no kernel BTF: using classic tracepoints");
            attach::load_tracepoints(tracepoint_attribution(opts.attribution))
        }
        AttachMode::Auto => match attach::load_btf(&vmlinux, version, opts.attribution) {
            Ok(p) => Ok(p),
            Err(e) => {
                tracing::warn!(reason = %crate::error::chain(&e), "BTF tracepoints unavailable; using classic tracepoints");
                attach::load_tracepoints(tracepoint_attribution(opts.attribution))
            }
        },
    }
}

/// Logs the process's resident memory now and at its peak (`VmRSS`, `VmHWM`) at debug level: where
/// the startup peak comes from (the BTF parses) is otherwise invisible.
pub(crate) fn memory_mark(phase: &str) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
    };
    tracing::debug!(phase, rss_kb = kb("VmRSS:"), peak_kb = kb("VmHWM:"), "memory");
}

fn tracepoint_attribution(wanted: Option<CgroupSource>) -> Option<CgroupSource> {
    if wanted == Some(CgroupSource::Bio) {
        tracing::warn!("attribution by bio needs BTF tracepoints; using the submitting task's cgroup");
    }
    wanted.map(|_| CgroupSource::Task)
}
