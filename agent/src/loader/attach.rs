//! Load the object with its [`Config`], verify every program, attach them ends first, arm the
//! depth gauge.

use std::path::Path;

use aya::{
    Ebpf, EbpfLoader,
    programs::{BtfTracePoint, ProgramError, TracePoint},
};
use blkio_agent_common::{ARM_LEAD_NS, CONTROL_ARMED_NS, CONTROL_FAST_SINCE, Config, MAX_CGROUP_KEYS};

use super::{Attached, CgroupSource, FastPath, HOOKS, Hook, Probes, layout::BtfLayout, layout::TracepointLayout};
use crate::{
    btf::Btf,
    error::{Error, Result},
    tracefs,
};

/// The eBPF object built by `build.rs` (aya-build) from the `agent-ebpf` crate.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/blkio-agent"));

/// A loader with `config` as the `CONFIG` global and no kernel BTF relocation (Rust eBPF objects
/// have no CO-RE relocations). aya 0.14 parses all of vmlinux BTF in `EbpfLoader::new()` (about
/// 23 MB of heap) unless the loader was made early ([`super::early`]); `.btf(None)` drops any
/// such copy at once.
fn loader(config: &Config, attribute: bool) -> EbpfLoader<'_> {
    super::memory_mark("before the loader");
    let mut loader: EbpfLoader<'_> = super::early::take();
    super::memory_mark("loader made");
    loader.btf(None).override_global("CONFIG", config, true);
    if !attribute {
        // Preallocated (older kernels refuse anything else for tracing programs): one entry when
        // it is never written.
        loader.map_max_entries("CGROUPS", 1);
    } else {
        loader.map_max_entries("CGROUPS", MAX_CGROUP_KEYS);
    }
    loader
}

pub(super) fn load_btf(
    vmlinux: &Path,
    version: Option<(u32, u32)>,
    attribution: Option<CgroupSource>,
) -> Result<Probes> {
    super::memory_mark("start");
    let btf = Btf::from_file(vmlinux)?;
    let layout = BtfLayout::from_btf(&btf, version)?;
    super::memory_mark("after our BTF parse");
    // Freed before aya parses the same file: the parses never hold memory at once.
    drop(btf);
    tracing::debug!(?layout, "kernel layout from BTF");
    if attribution == Some(CgroupSource::Bio) && layout.bio_cgroup.is_none() {
        tracing::warn!(
            "no bio->bi_blkg in kernel BTF (CONFIG_BLK_CGROUP off?); attributing by the submitting task's cgroup"
        );
    }
    let cgroup_source = match (attribution, &layout.bio_cgroup) {
        (None, _) => None,
        (Some(CgroupSource::Bio), Some(_)) => Some(CgroupSource::Bio),
        (Some(_), _) => Some(CgroupSource::Task),
    };
    let config = layout.config(cgroup_source);
    let fast = match layout.fast.as_ref().filter(|_| config.fast_layout != 0) {
        Some(f) => FastPath::new(f.flags_from),
        None => FastPath::unavailable(),
    };
    tracing::info!(
        fast_path = fast.state.as_str(),
        stats_flags = fast.flags_from.map(|f| f.as_str()),
        attribution = cgroup_source.map(CgroupSource::as_str),
        "BTF layout resolved"
    );
    let mut ebpf = loader(&config, cgroup_source.is_some())
        .load(EBPF_OBJECT)
        .map_err(|e| Error::bpf("cannot load the eBPF object", e))?;
    super::memory_mark("after load");
    let aya_btf = attach_btf(&layout.attach_ids)?;
    super::memory_mark("after the attach-id table");
    // Every program is verified before any is attached: a verification takes tens of ms, and
    // completions during it would be missed by programs already attached.
    let mut loaded = Vec::new();
    for hook in HOOKS.iter() {
        // With the kernel's stamps queue time starts at allocation on both paths: no insert hook.
        if config.fast_layout != 0 && hook.tracepoint == "block_rq_insert" {
            continue;
        }
        let legacy = layout.legacy_q_arg.contains(&hook.tracepoint);
        let name: &'static str = match (hook.tracepoint, legacy) {
            ("block_rq_issue", false) => "rq_issue_btf",
            ("block_rq_issue", true) => "rq_issue_btf_q",
            ("block_rq_complete", _) => "rq_complete_btf",
            ("block_rq_insert", false) => "rq_insert_btf",
            ("block_rq_insert", true) => "rq_insert_btf_q",
            ("block_rq_requeue", false) => "rq_requeue_btf",
            (_, _) => "rq_requeue_btf_q",
        };
        let prog: &mut BtfTracePoint = program(&mut ebpf, name)?;
        match prog.load(hook.tracepoint, &aya_btf) {
            Ok(()) => loaded.push((hook, name)),
            Err(e) => optional(hook, load_error(name, hook.tracepoint, "BTF tracepoints (tp_btf)", e))?,
        }
    }
    let mut programs = Vec::new();
    for (hook, name) in in_attach_order(loaded) {
        let prog: &mut BtfTracePoint = program(&mut ebpf, name)?;
        match prog.attach() {
            Ok(_) => programs.push(name),
            Err(e) => optional(hook, Error::bpf(format!("cannot attach {name}"), e))?,
        }
    }
    drop(aya_btf);
    let fast_since_now = fast.state == super::fastpath::FastState::On;
    arm(&mut ebpf, fast_since_now)?;
    release_freed_memory();
    super::memory_mark("attached");
    Ok(Probes { ebpf, mode: Attached::Btf, programs, cgroup_source, fast })
}

pub(super) fn load_tracepoints(attribution: Option<CgroupSource>) -> Result<Probes> {
    let root = tracefs::find_or_mount()?;
    let mut config = TracepointLayout::from_tracefs(&root)?.config;
    config.attribute_cgroups = u64::from(attribution.is_some());
    let mut ebpf = loader(&config, attribution.is_some())
        .load(EBPF_OBJECT)
        .map_err(|e| Error::bpf("cannot load the eBPF object", e))?;
    let mut loaded = Vec::new();
    for hook in HOOKS.iter() {
        let name: &'static str = match hook.tracepoint {
            "block_rq_issue" => "rq_issue_tp",
            "block_rq_complete" => "rq_complete_tp",
            "block_rq_insert" => "rq_insert_tp",
            _ => "rq_requeue_tp",
        };
        let prog: &mut TracePoint = program(&mut ebpf, name)?;
        match prog.load() {
            Ok(()) => loaded.push((hook, name)),
            Err(e) => optional(hook, load_error(name, hook.tracepoint, "classic tracepoints", e))?,
        }
    }
    let mut programs = Vec::new();
    for (hook, name) in in_attach_order(loaded) {
        let prog: &mut TracePoint = program(&mut ebpf, name)?;
        match prog.attach("block", hook.tracepoint) {
            Ok(_) => programs.push(name),
            Err(e) => optional(hook, Error::bpf(format!("cannot attach {name} to block/{}", hook.tracepoint), e))?,
        }
    }
    arm(&mut ebpf, false)?;
    Ok(Probes { ebpf, mode: Attached::Tracepoint, programs, cgroup_source: attribution, fast: FastPath::unavailable() })
}

/// The order programs are attached in: every end of a request (completion, requeue) is watched
/// before its start (insert, issue), so no request is counted up whose end could go unseen
/// because its program was not attached yet. That is the slow path's arming rule: a request is
/// counted up when the issue program stores its start, and down only by the completion or
/// requeue that finds it, so requests issued before the issue program was attached are never
/// counted at all (`complete_without_start`). The fast path has no entry to find, so it waits
/// for `CONTROL_ARMED_NS` (see [`arm`]), written once everything is attached.
const ATTACH_ORDER: [&str; 4] = ["block_rq_complete", "block_rq_requeue", "block_rq_insert", "block_rq_issue"];

fn in_attach_order<'h>(mut loaded: Vec<(&'h Hook, &'static str)>) -> Vec<(&'h Hook, &'static str)> {
    loaded.sort_by_key(|(hook, _)| ATTACH_ORDER.iter().position(|&t| t == hook.tracepoint));
    loaded
}

/// A hook that could not be loaded or attached: an error if it is required, a warning otherwise.
fn optional(hook: &Hook, e: Error) -> Result<()> {
    if hook.required {
        return Err(e);
    }
    tracing::warn!(error = %crate::error::chain(&e), "optional hook not attached");
    Ok(())
}

/// What `BtfTracePoint::load` reads from the BTF it is given: only
/// `id_by_type_name_kind("btf_trace_<tp>", Typedef)`, the vmlinux type id that becomes the
/// program's `attach_btf_id`. aya 0.14 offers no other way to pass that id, and a second full parse
/// of vmlinux is about 20 MB of heap; so aya parses a small BTF blob instead that has those
/// typedefs at their vmlinux ids (found by our own reader) and pointer placeholders in between.
fn attach_btf(ids: &[(&'static str, u32)]) -> Result<aya::Btf> {
    let named: Vec<(String, u32)> = ids.iter().map(|&(tp, id)| (format!("btf_trace_{tp}"), id)).collect();
    let blob = crate::btf::typedefs_at(&named);
    let btf = aya::Btf::parse(&blob, aya::Endianness::default())
        .map_err(|e| Error::bpf("cannot build the tp_btf attach ids", e))?;
    Ok(btf)
}

/// One line for a program the kernel refused: the mode, the program, and the verifier's own
/// reason (its last meaningful line), not the whole log (which goes to debug).
fn load_error(name: &str, tracepoint: &str, mode: &str, e: ProgramError) -> Error {
    if let ProgramError::LoadError { io_error, verifier_log } = &e {
        let log = verifier_log.to_string();
        tracing::debug!(program = name, log = %log, "verifier log");
        let reason = verifier_reason(&log).unwrap_or_else(|| io_error.to_string());
        return Error::Other(format!("this kernel cannot run {mode}: it refused {name} ({tracepoint}): {reason}"));
    }
    Error::bpf(format!("cannot load {name} for {tracepoint}"), e)
}

/// The verifier's reason in its log: the last line that is not statistics.
pub(crate) fn verifier_reason(log: &str) -> Option<String> {
    log.lines()
        .rev()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .find(|l| {
            !l.starts_with("processed ")
                && !l.starts_with("verification time")
                && !l.starts_with("stack depth")
                && !l.starts_with("max_states_per_insn")
        })
        .map(str::to_string)
}

/// Parsing kernel BTF leaves freed heap that glibc keeps mapped; hand it back so the agent's
/// steady RSS is its real working set.
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Tells the programs that every hook is attached (see `CONTROL_ARMED_NS`): requests allocated
/// from `ARM_LEAD_NS` after now on are counted in the depth gauge and, when `fast` (stats flags
/// from BTF), handled by the fast path (`CONTROL_FAST_SINCE`).
fn arm(ebpf: &mut Ebpf, fast: bool) -> Result<()> {
    let map = ebpf.map_mut("CONTROL").ok_or_else(|| Error::Other("map CONTROL is not in the eBPF object".into()))?;
    let mut control: aya::maps::Array<_, u64> =
        aya::maps::Array::try_from(map).map_err(|e| Error::bpf("map CONTROL has an unexpected type", e))?;
    let armed = monotonic_ns() + ARM_LEAD_NS;
    if fast {
        control.set(CONTROL_FAST_SINCE, armed, 0).map_err(|e| Error::bpf("cannot write map CONTROL", e))?;
    }
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
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog =
        ebpf.program_mut(name).ok_or_else(|| Error::Other(format!("program {name} is not in the eBPF object")))?;
    prog.try_into().map_err(|e| Error::bpf(format!("program {name} has an unexpected type"), e))
}

#[cfg(test)]
mod tests {
    use super::verifier_reason;

    #[test]
    fn ends_are_attached_before_starts() {
        use super::{HOOKS, in_attach_order};
        let loaded = HOOKS.iter().map(|h| (h, h.tracepoint)).collect();
        let order: Vec<&str> = in_attach_order(loaded).into_iter().map(|(_, n)| n).collect();
        assert_eq!(order, ["block_rq_complete", "block_rq_requeue", "block_rq_insert", "block_rq_issue"]);
        let without_insert = HOOKS.iter().filter(|h| h.tracepoint != "block_rq_insert").map(|h| (h, h.tracepoint));
        let order: Vec<&str> = in_attach_order(without_insert.collect()).into_iter().map(|(_, n)| n).collect();
        assert_eq!(order, ["block_rq_complete", "block_rq_requeue", "block_rq_issue"]);
    }

    #[test]
    fn verifier_reason_is_the_last_meaningful_line() {
        let log = "0: (79) r1 = *(u64 *)(r1 +0)\nR0 unbounded memory access, make sure to bounds check\nprocessed 120 insns (limit 1000000)\n";
        assert_eq!(verifier_reason(log).as_deref(), Some("R0 unbounded memory access, make sure to bounds check"));
        assert_eq!(verifier_reason("\n"), None);
    }
}
