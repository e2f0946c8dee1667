//! Loads the eBPF object, fills in the kernel layout it needs, and attaches the programs.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader, Endianness,
    programs::{BtfTracePoint, TracePoint},
};

use crate::{
    btf::Btf,
    cli::AttachMode,
    error::{Error, Result},
    tracefs,
};

/// The eBPF object built by `build.rs` (aya-build) from the `agent-ebpf` crate.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/blkio-agent"));

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
}

/// A tracepoint and whether the agent can work without it.
struct Hook {
    tracepoint: &'static str,
    required: bool,
}

const HOOKS: [Hook; 4] = [
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

pub fn load(opts: &LoadOptions<'_>) -> Result<Probes> {
    check_privileges()?;
    let vmlinux = btf_path(opts.sys_root);
    let mode = match opts.mode {
        AttachMode::Btf => Attached::Btf,
        AttachMode::Tracepoint => Attached::Tracepoint,
        AttachMode::Auto if vmlinux.exists() => Attached::Btf,
        AttachMode::Auto => Attached::Tracepoint,
    };
    match mode {
        Attached::Btf => load_btf(&vmlinux, opts.attribution),
        Attached::Tracepoint => {
            if opts.attribution == Some(CgroupSource::Bio) {
                tracing::warn!("attribution by bio needs BTF tracepoints; using the submitting task's cgroup");
            }
            load_tracepoints(opts.attribution.map(|_| CgroupSource::Task))
        }
    }
}

/// Offsets and constants for BTF mode, all taken from the running kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BtfLayout {
    pub rq_q: u64,
    pub rq_cmd_flags: u64,
    pub rq_data_len: u64,
    /// `Some` on kernels before 5.17, which had `request->rq_disk`.
    pub rq_disk: Option<u64>,
    pub q_disk: u64,
    pub disk_major: u64,
    pub disk_first_minor: u64,
    pub req_op_mask: u32,
    pub req_op_read: u32,
    pub req_op_write: u32,
    pub req_op_flush: u32,
    pub req_op_discard: u32,
    pub req_op_secure_erase: u32,
    /// Tracepoints whose `rq` is the second argument (before 5.11: `(q, rq)`).
    pub legacy_q_arg: Vec<&'static str>,
    /// What the no-start-map fast path needs; `None` when this kernel lacks any of it.
    pub fast: Option<FastLayout>,
    /// What attribution by bio needs; `None` without `CONFIG_BLK_CGROUP` (no `bio->bi_blkg`).
    pub bio_cgroup: Option<BioCgroupLayout>,
}

/// `rq->bio->bi_blkg->blkcg->css.cgroup->kn->id` (see `agent-ebpf/src/fast.rs`, `bio_cgroup`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BioCgroupLayout {
    pub rq_bio: u64,
    pub bio_blkg: u64,
    pub blkg_blkcg: u64,
    pub blkcg_cgroup: u64,
    pub cgroup_kn: u64,
    pub kn_id: u64,
}

impl BioCgroupLayout {
    fn from_btf(btf: &Btf) -> Option<BioCgroupLayout> {
        let m = |s: &str, f: &str| btf.member_offset(s, f).ok();
        Some(BioCgroupLayout {
            rq_bio: m("request", "bio")?,
            bio_blkg: m("bio", "bi_blkg")?,
            blkg_blkcg: m("blkcg_gq", "blkcg")?,
            blkcg_cgroup: m("blkcg", "css")? + m("cgroup_subsys_state", "cgroup")?,
            cgroup_kn: m("cgroup", "kn")?,
            kn_id: m("kernfs_node", "id")?,
        })
    }
}

/// Fields for the fast path (`agent-ebpf/src/fast.rs`): the block layer's own timestamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FastLayout {
    pub rq_rq_flags: u64,
    pub rq_start_time: u64,
    pub rq_io_start_time: u64,
    pub rq_stats_sectors: u64,
    pub q_queue_flags: u64,
    pub queue_flag_stats_mask: u64,
    pub rqf_stats_mask: u32,
    pub req_op_drv_in: u32,
    pub req_op_drv_out: u32,
    /// `request.state` and `MQ_RQ_IN_FLIGHT`: a requeue counts down only a started request.
    pub rq_state: u64,
    pub mq_rq_in_flight: u32,
}

impl FastLayout {
    /// `None` unless every field and flag the fast path needs exists in this kernel's BTF.
    fn from_btf(btf: &Btf) -> Option<FastLayout> {
        let m = |s: &str, f: &str| btf.member_offset(s, f).ok();
        let e = |n: &str| btf.enum_value(n).ok();
        // RQF_STATS is `1 << __RQF_STATS` since 6.8 (enum rqf_flags); older kernels have only
        // a #define, invisible in BTF: no fast path there.
        let rqf_bit = e("__RQF_STATS")?;
        let qf_bit = e("QUEUE_FLAG_STATS")?;
        let l = FastLayout {
            rq_rq_flags: m("request", "rq_flags")?,
            rq_start_time: m("request", "start_time_ns")?,
            rq_io_start_time: m("request", "io_start_time_ns")?,
            rq_stats_sectors: m("request", "stats_sectors")?,
            q_queue_flags: m("request_queue", "queue_flags")?,
            queue_flag_stats_mask: 1u64.checked_shl(qf_bit as u32)?,
            rqf_stats_mask: 1u32.checked_shl(rqf_bit as u32)?,
            req_op_drv_in: e("REQ_OP_DRV_IN")? as u32,
            req_op_drv_out: e("REQ_OP_DRV_OUT")? as u32,
            rq_state: m("request", "state")?,
            mq_rq_in_flight: e("MQ_RQ_IN_FLIGHT")? as u32,
        };
        Some(l)
    }
}

impl BtfLayout {
    pub fn from_btf(btf: &Btf) -> Result<BtfLayout> {
        let rq_disk =
            btf.has_member("request", "rq_disk").then(|| btf.member_offset("request", "rq_disk")).transpose()?;
        let q_disk = if rq_disk.is_some() { 0 } else { btf.member_offset("request_queue", "disk")? };
        // REQ_OP_BITS is a #define; the first flag bit after the op, __REQ_FAILFAST_DEV, is
        // declared as `= REQ_OP_BITS` in enum req_flag_bits, so BTF carries it.
        let op_bits = btf.enum_value("__REQ_FAILFAST_DEV")?;
        let op = |name: &str| btf.enum_value(name).map(|v| v as u32);
        let mut legacy_q_arg = Vec::new();
        for hook in HOOKS.iter() {
            let args = match btf.tracepoint_args(hook.tracepoint) {
                Ok(args) => args,
                Err(_) if !hook.required => continue,
                Err(e) => return Err(e),
            };
            match args.position("struct request *") {
                Some(0) => {}
                Some(1) if hook.tracepoint != "block_rq_complete" => legacy_q_arg.push(hook.tracepoint),
                _ => {
                    return Err(Error::BtfMissing(format!(
                        "`struct request *` argument in {} (its arguments are {:?})",
                        hook.tracepoint, args.types
                    )));
                }
            }
            // (rq, error, nr_bytes) since 2.6; the error's type changed (int -> blk_status_t).
            if hook.tracepoint == "block_rq_complete" && (args.types.len() != 3 || args.types[2] != "unsigned int") {
                return Err(Error::BtfMissing(format!(
                    "`unsigned int nr_bytes` third argument in block_rq_complete (its arguments are {:?})",
                    args.types
                )));
            }
        }
        let rq_q = btf.member_offset("request", "q")?;
        let rq_cmd_flags = btf.member_offset("request", "cmd_flags")?;
        let rq_data_len = btf.member_offset("request", "__data_len")?;
        // The fast path reads the disk through q->disk: not on pre-5.17 kernels with rq_disk.
        let fast = if rq_disk.is_none() { FastLayout::from_btf(btf) } else { None };
        Ok(BtfLayout {
            rq_q,
            rq_cmd_flags,
            rq_data_len,
            fast,
            bio_cgroup: BioCgroupLayout::from_btf(btf),
            rq_disk,
            q_disk,
            disk_major: btf.member_offset("gendisk", "major")?,
            disk_first_minor: btf.member_offset("gendisk", "first_minor")?,
            req_op_mask: ((1u64 << op_bits) - 1) as u32,
            req_op_read: op("REQ_OP_READ")?,
            req_op_write: op("REQ_OP_WRITE")?,
            req_op_flush: op("REQ_OP_FLUSH")?,
            req_op_discard: op("REQ_OP_DISCARD")?,
            req_op_secure_erase: op("REQ_OP_SECURE_ERASE")?,
            legacy_q_arg,
        })
    }
}

fn load_btf(vmlinux: &Path, attribution: Option<CgroupSource>) -> Result<Probes> {
    let btf = Btf::from_file(vmlinux)?;
    let layout = BtfLayout::from_btf(&btf)?;
    // Freed before aya parses the same file: the parses never hold memory at once.
    drop(btf);
    tracing::debug!(?layout, "kernel layout from BTF");
    let rq_disk = layout.rq_disk.unwrap_or(u64::MAX);
    // aya 0.14 parses all of vmlinux BTF in `EbpfLoader::new()` (about 16 MB of heap here), only
    // for CO-RE relocations, which Rust eBPF objects do not have. Dropped at once, so that copy
    // never coexists with the one parsed after loading for the attach ids: together they were
    // most of the agent's startup peak.
    let mut loader = EbpfLoader::new();
    loader
        .btf(None)
        .override_global("RQ_Q_OFF", &layout.rq_q, true)
        .override_global("RQ_CMD_FLAGS_OFF", &layout.rq_cmd_flags, true)
        .override_global("RQ_DATA_LEN_OFF", &layout.rq_data_len, true)
        .override_global("RQ_DISK_OFF", &rq_disk, true)
        .override_global("Q_DISK_OFF", &layout.q_disk, true)
        .override_global("DISK_MAJOR_OFF", &layout.disk_major, true)
        .override_global("DISK_FIRST_MINOR_OFF", &layout.disk_first_minor, true)
        .override_global("REQ_OP_MASK", &layout.req_op_mask, true)
        .override_global("REQ_OP_READ", &layout.req_op_read, true)
        .override_global("REQ_OP_WRITE", &layout.req_op_write, true)
        .override_global("REQ_OP_FLUSH", &layout.req_op_flush, true)
        .override_global("REQ_OP_DISCARD", &layout.req_op_discard, true)
        .override_global("REQ_OP_SECURE_ERASE", &layout.req_op_secure_erase, true);
    let bio = layout.bio_cgroup.as_ref().filter(|_| attribution == Some(CgroupSource::Bio));
    if attribution == Some(CgroupSource::Bio) && bio.is_none() {
        tracing::warn!(
            "no bio->bi_blkg in kernel BTF (CONFIG_BLK_CGROUP off?); attributing by the submitting task's cgroup"
        );
    }
    let cgroup_source = match (attribution, bio) {
        (None, _) => None,
        (Some(_), Some(_)) => Some(CgroupSource::Bio),
        (Some(_), None) => Some(CgroupSource::Task),
    };
    let (task_on, bio_on) = (u8::from(cgroup_source == Some(CgroupSource::Task)), u8::from(bio.is_some()));
    loader.override_global("ATTRIBUTE_CGROUPS", &task_on, true).override_global("BIO_CGROUP", &bio_on, true);
    if let Some(b) = bio {
        loader
            .override_global("RQ_BIO_OFF", &b.rq_bio, true)
            .override_global("BIO_BLKG_OFF", &b.bio_blkg, true)
            .override_global("BLKG_BLKCG_OFF", &b.blkg_blkcg, true)
            .override_global("BLKCG_CGROUP_OFF", &b.blkcg_cgroup, true)
            .override_global("CGROUP_KN_OFF", &b.cgroup_kn, true)
            .override_global("KN_ID_OFF", &b.kn_id, true);
    }
    // Attribution by task needs the submitting cgroup kept per request until completion: start map.
    let fast = layout.fast.as_ref().filter(|_| task_on == 0);
    let fast_on = u8::from(fast.is_some());
    if let Some(f) = fast {
        loader
            .override_global("RQ_RQ_FLAGS_OFF", &f.rq_rq_flags, true)
            .override_global("RQ_START_TIME_OFF", &f.rq_start_time, true)
            .override_global("RQ_IO_START_TIME_OFF", &f.rq_io_start_time, true)
            .override_global("RQ_STATS_SECTORS_OFF", &f.rq_stats_sectors, true)
            .override_global("Q_QUEUE_FLAGS_OFF", &f.q_queue_flags, true)
            .override_global("QUEUE_FLAG_STATS_MASK", &f.queue_flag_stats_mask, true)
            .override_global("RQF_STATS_MASK", &f.rqf_stats_mask, true)
            .override_global("REQ_OP_DRV_IN", &f.req_op_drv_in, true)
            .override_global("REQ_OP_DRV_OUT", &f.req_op_drv_out, true)
            .override_global("RQ_STATE_OFF", &f.rq_state, true)
            .override_global("MQ_RQ_IN_FLIGHT", &f.mq_rq_in_flight, true);
    }
    loader.override_global("FAST_PATH", &fast_on, true);
    tracing::info!(
        fast_path = fast.is_some(),
        attribution = cgroup_source.map(CgroupSource::as_str),
        "BTF layout resolved"
    );
    let mut ebpf = loader.load(EBPF_OBJECT).map_err(|e| Error::bpf("cannot load the eBPF object", e))?;
    drop(loader);
    // `BtfTracePoint::load` looks up the `btf_trace_*` typedef ids in aya's own parse.
    let aya_btf = aya::Btf::parse_file(vmlinux, Endianness::default())
        .map_err(|e| Error::bpf(format!("cannot parse {}", vmlinux.display()), e))?;
    let mut programs = Vec::new();
    for hook in HOOKS.iter() {
        // The fast path takes queue time from the request's allocation stamp: no insert hook.
        if fast.is_some() && hook.tracepoint == "block_rq_insert" {
            continue;
        }
        let variant = if layout.legacy_q_arg.contains(&hook.tracepoint) { "_q" } else { "" };
        let name: &'static str = match (hook.tracepoint, variant) {
            ("block_rq_issue", "") => "rq_issue_btf",
            ("block_rq_issue", _) => "rq_issue_btf_q",
            ("block_rq_complete", _) => "rq_complete_btf",
            ("block_rq_insert", "") => "rq_insert_btf",
            ("block_rq_insert", _) => "rq_insert_btf_q",
            ("block_rq_requeue", "") => "rq_requeue_btf",
            (_, _) => "rq_requeue_btf_q",
        };
        let prog: &mut BtfTracePoint = program(&mut ebpf, name)?;
        let attached = prog
            .load(hook.tracepoint, &aya_btf)
            .map_err(|e| Error::bpf(format!("cannot load {name} for {}", hook.tracepoint), e))
            .and_then(|()| prog.attach().map_err(|e| Error::bpf(format!("cannot attach {name}"), e)));
        match attached {
            Ok(_) => programs.push(name),
            Err(e) if !hook.required => tracing::warn!(error = %crate::error::chain(&e), "optional hook not attached"),
            Err(e) => return Err(e),
        }
    }
    arm(&mut ebpf)?;
    drop(aya_btf);
    release_freed_memory();
    Ok(Probes { ebpf, mode: Attached::Btf, programs, cgroup_source })
}

/// Parsing kernel BTF (~5 MB, ~150k types, twice: ours and aya's) leaves tens of MB of freed
/// heap that glibc keeps mapped; hand it back so the agent's steady RSS is its real working set.
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Tells the programs that every hook is attached (see `CONTROL_ARMED_NS`): requests allocated
/// from `ARM_LEAD_NS` after now on are counted in the depth gauge.
fn arm(ebpf: &mut Ebpf) -> Result<()> {
    use blkio_agent_common::{ARM_LEAD_NS, CONTROL_ARMED_NS};
    let map = ebpf.map_mut("CONTROL").ok_or_else(|| Error::Other("map CONTROL is not in the eBPF object".into()))?;
    let mut control: aya::maps::Array<_, u64> =
        aya::maps::Array::try_from(map).map_err(|e| Error::bpf("map CONTROL has an unexpected type", e))?;
    let armed = monotonic_ns() + ARM_LEAD_NS;
    control.set(CONTROL_ARMED_NS, armed, 0).map_err(|e| Error::bpf("cannot write map CONTROL", e))?;
    if monotonic_ns() >= armed {
        // Requests allocated between the armed time and the write may be counted down without
        // having been counted up; the idle resync repairs the gauge.
        tracing::warn!(
            "arming the depth gauge took longer than {} ms; the gauge may be off until the device is idle",
            ARM_LEAD_NS / 1_000_000
        );
    }
    Ok(())
}

/// `CLOCK_MONOTONIC` in ns, the clock of `bpf_ktime_get_ns()` and of the block layer's stamps.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Record offsets for classic tracepoints, from tracefs format files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracepointLayout {
    pub globals: Vec<(&'static str, u64)>,
}

impl TracepointLayout {
    pub fn from_tracefs(root: &Path) -> Result<TracepointLayout> {
        let mut globals = Vec::new();
        let wanted: [(&str, &[(&str, &'static str)]); 4] = [
            (
                "block_rq_issue",
                &[
                    ("dev", "TP_ISSUE_DEV"),
                    ("sector", "TP_ISSUE_SECTOR"),
                    ("bytes", "TP_ISSUE_BYTES"),
                    ("rwbs", "TP_ISSUE_RWBS"),
                ],
            ),
            ("block_rq_complete", &[("dev", "TP_COMPLETE_DEV"), ("sector", "TP_COMPLETE_SECTOR")]),
            ("block_rq_insert", &[("dev", "TP_INSERT_DEV"), ("sector", "TP_INSERT_SECTOR")]),
            ("block_rq_requeue", &[("dev", "TP_REQUEUE_DEV"), ("sector", "TP_REQUEUE_SECTOR")]),
        ];
        for (tp, fields) in wanted {
            let format = tracefs::format(root, "block", tp)?;
            for (field, global) in fields {
                let f = format.field(tp, field)?;
                let expected = match *field {
                    "dev" | "bytes" => Some(4),
                    "sector" => Some(8),
                    _ => None,
                };
                if expected.is_some_and(|size| size != f.size) || (*field == "rwbs" && f.size < 8) {
                    return Err(Error::Other(format!("tracepoint {tp} field {field} has unexpected size {}", f.size)));
                }
                globals.push((*global, f.offset));
            }
        }
        Ok(TracepointLayout { globals })
    }
}

fn load_tracepoints(attribution: Option<CgroupSource>) -> Result<Probes> {
    let attribute = u8::from(attribution.is_some());
    let root = tracefs::find_or_mount()?;
    let layout = TracepointLayout::from_tracefs(&root)?;
    let mut loader = EbpfLoader::new();
    // No kernel BTF in this mode: nothing in the object needs relocating against it.
    loader.btf(None);
    for (name, off) in &layout.globals {
        loader.override_global(name, off, true);
    }
    loader.override_global("ATTRIBUTE_CGROUPS", &attribute, true);
    let mut ebpf = loader.load(EBPF_OBJECT).map_err(|e| Error::bpf("cannot load the eBPF object", e))?;
    let mut programs = Vec::new();
    for hook in HOOKS.iter() {
        let name: &'static str = match hook.tracepoint {
            "block_rq_issue" => "rq_issue_tp",
            "block_rq_complete" => "rq_complete_tp",
            "block_rq_insert" => "rq_insert_tp",
            _ => "rq_requeue_tp",
        };
        let prog: &mut TracePoint = program(&mut ebpf, name)?;
        let attached = prog.load().map_err(|e| Error::bpf(format!("cannot load {name}"), e)).and_then(|()| {
            prog.attach("block", hook.tracepoint)
                .map_err(|e| Error::bpf(format!("cannot attach {name} to block/{}", hook.tracepoint), e))
        });
        match attached {
            Ok(_) => programs.push(name),
            Err(e) if !hook.required => tracing::warn!(error = %crate::error::chain(&e), "optional hook not attached"),
            Err(e) => return Err(e),
        }
    }
    arm(&mut ebpf)?;
    Ok(Probes { ebpf, mode: Attached::Tracepoint, programs, cgroup_source: attribution })
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog =
        ebpf.program_mut(name).ok_or_else(|| Error::Other(format!("program {name} is not in the eBPF object")))?;
    prog.try_into().map_err(|e| Error::bpf(format!("program {name} has an unexpected type"), e))
}

/// Capabilities (bit numbers from include/uapi/linux/capability.h).
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Loading tracing programs needs CAP_BPF + CAP_PERFMON (kernel >= 5.8) or CAP_SYS_ADMIN.
/// Checked up front so the error names the capability instead of a bare EPERM from the verifier.
pub fn check_privileges() -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| Error::read("/proc/self/status", e))?;
    let eff = effective_caps(&status).unwrap_or(0);
    let has = |cap: u32| eff & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    let mut missing = Vec::new();
    if !has(CAP_BPF) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) {
        missing.push("CAP_PERFMON");
    }
    Err(Error::MissingPrivilege {
        what: "loading eBPF tracing programs",
        needs: format!("{} (or CAP_SYS_ADMIN)", missing.join(" and ")),
    })
}

pub fn effective_caps(proc_status: &str) -> Option<u64> {
    proc_status.lines().find_map(|l| l.strip_prefix("CapEff:")).and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// Per-program kernel statistics from `bpf_prog_info` (uapi, append-only ABI).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProgramStats {
    /// Only advances while `kernel.bpf_stats_enabled=1`.
    pub run_time_ns: u64,
    pub run_cnt: u64,
    pub recursion_misses: u64,
}

/// Reads run statistics of a loaded program with BPF_OBJ_GET_INFO_BY_FD. aya's `ProgramInfo`
/// does not expose `recursion_misses`, so the syscall is made here.
pub fn program_stats(ebpf: &Ebpf, name: &str) -> Option<ProgramStats> {
    let prog = ebpf.program(name)?;
    let fd = prog.fd().ok()?.as_fd().as_raw_fd();
    // struct bpf_prog_info: run_time_ns @192, run_cnt @200, recursion_misses @208
    // (include/uapi/linux/bpf.h; fields are only ever appended).
    let mut info = [0u8; 256];
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let attr = InfoAttr { bpf_fd: fd as u32, info_len: info.len() as u32, info: info.as_mut_ptr() as u64 };
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    // SAFETY: attr points to a valid buffer of info_len bytes for the duration of the call.
    let rc = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, &attr as *const InfoAttr, std::mem::size_of::<InfoAttr>())
    };
    if rc != 0 {
        return None;
    }
    let u64_at = |o: usize| u64::from_le_bytes(info[o..o + 8].try_into().expect("8 bytes"));
    Some(ProgramStats { run_time_ns: u64_at(192), run_cnt: u64_at(200), recursion_misses: u64_at(208) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::btf::tests::BtfBuilder;

    #[test]
    fn capability_parsing() {
        let status = "Name:\tx\nCapEff:\t000001ffffffffff\n";
        assert_eq!(effective_caps(status), Some(0x1ff_ffff_ffff));
        assert_eq!(effective_caps("Name: x\n"), None);
    }

    fn kernel_like(legacy: bool, rq_disk: bool) -> Btf {
        let mut b = BtfBuilder::new();
        let u32t = b.int("unsigned int", 4);
        let int = b.int("int", 4);
        let vp = b.ptr(0);
        let disk = b.structure("gendisk", 64, &[("major", int, 0), ("first_minor", int, 4)]);
        let disk_ptr = b.ptr(disk);
        b.structure("request_queue", 128, &[("queuedata", vp, 0), ("disk", disk_ptr, 96)]);
        let mut members = vec![("q", vp, 0), ("cmd_flags", u32t, 24), ("__data_len", u32t, 44)];
        if rq_disk {
            members.push(("rq_disk", disk_ptr, 88));
        }
        let req = b.structure("request", 256, &members);
        b.enumeration(
            "req_op",
            &[
                ("REQ_OP_READ", 0),
                ("REQ_OP_WRITE", 1),
                ("REQ_OP_FLUSH", 2),
                ("REQ_OP_DISCARD", 3),
                ("REQ_OP_SECURE_ERASE", 5),
            ],
        );
        b.enumeration("req_flag_bits", &[("__REQ_FAILFAST_DEV", 8)]);
        let rq = b.ptr(req);
        for tp in ["block_rq_issue", "block_rq_insert", "block_rq_requeue"] {
            let proto = if legacy {
                b.func_proto(&[("", vp), ("", vp), ("", rq)])
            } else {
                b.func_proto(&[("", vp), ("", rq)])
            };
            let fp = b.ptr(proto);
            b.typedef(&format!("btf_trace_{tp}"), fp);
        }
        let proto = b.func_proto(&[("", vp), ("", rq), ("", int), ("", u32t)]);
        let fp = b.ptr(proto);
        b.typedef("btf_trace_block_rq_complete", fp);
        Btf::parse(&b.build()).unwrap()
    }

    #[test]
    fn layout_of_a_current_kernel() {
        let l = BtfLayout::from_btf(&kernel_like(false, false)).unwrap();
        assert_eq!((l.rq_q, l.rq_cmd_flags, l.rq_data_len, l.q_disk), (0, 24, 44, 96));
        assert_eq!((l.disk_major, l.disk_first_minor), (0, 4));
        assert_eq!(l.rq_disk, None);
        assert_eq!(l.req_op_mask, 0xff);
        assert_eq!(l.req_op_secure_erase, 5);
        assert!(l.legacy_q_arg.is_empty());
    }

    #[test]
    fn fast_path_needs_every_field_and_flag() {
        let build = |with_rqf_stats: bool| {
            let mut b = BtfBuilder::new();
            let u32t = b.int("unsigned int", 4);
            let u64t = b.int("u64", 8);
            let u16t = b.int("unsigned short", 2);
            let vp = b.ptr(0);
            b.structure("request_queue", 128, &[("queue_flags", u64t, 32), ("disk", vp, 104)]);
            b.structure(
                "request",
                256,
                &[
                    ("rq_flags", u32t, 28),
                    ("state", u32t, 32),
                    ("start_time_ns", u64t, 104),
                    ("io_start_time_ns", u64t, 112),
                    ("stats_sectors", u16t, 122),
                ],
            );
            b.enumeration("mq_rq_state", &[("MQ_RQ_IDLE", 0), ("MQ_RQ_IN_FLIGHT", 1), ("MQ_RQ_COMPLETE", 2)]);
            if with_rqf_stats {
                b.enumeration("rqf_flags", &[("__RQF_STATS", 11)]);
            }
            b.enumeration("qf", &[("QUEUE_FLAG_STATS", 7)]);
            b.enumeration("req_op", &[("REQ_OP_DRV_IN", 34), ("REQ_OP_DRV_OUT", 35)]);
            Btf::parse(&b.build()).unwrap()
        };
        let f = FastLayout::from_btf(&build(true)).expect("6.18-like layout");
        assert_eq!((f.rq_io_start_time, f.rqf_stats_mask, f.queue_flag_stats_mask), (112, 1 << 11, 1 << 7));
        assert_eq!((f.rq_stats_sectors, f.q_queue_flags, f.req_op_drv_out), (122, 32, 35));
        assert_eq!((f.rq_state, f.mq_rq_in_flight), (32, 1));
        assert_eq!(FastLayout::from_btf(&build(false)), None, "pre-6.8: RQF_STATS not in BTF");
        assert_eq!(BtfLayout::from_btf(&kernel_like(false, false)).unwrap().fast, None);
    }

    #[test]
    fn layout_of_a_pre_5_11_kernel() {
        let l = BtfLayout::from_btf(&kernel_like(true, true)).unwrap();
        assert_eq!(l.rq_disk, Some(88));
        assert_eq!(l.legacy_q_arg, vec!["block_rq_issue", "block_rq_insert", "block_rq_requeue"]);
    }
}
