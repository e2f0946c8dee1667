//! `blkio-guest`: runs inside a kernel-matrix guest (started by the initramfs's `/init` after it
//! mounted /proc, /sys, /dev and loaded the modules). For each attach mode and device kind of
//! `/etc/blkio-plan.json` it starts the agent, runs the known workload, stops the agent with
//! SIGTERM and checks its JSONL against the workload and `/proc/diskstats`; every verdict is one
//! console line (`blkio_guest::protocol`) that the host parses.

mod agent;
mod check;
mod device;
mod exact;
mod faults;
mod fio;
mod scenario;
mod workload;

use std::{fs, thread, time::Duration};

use blkio_guest::{
    plan::Plan,
    protocol::{CellResult, Event},
};

use crate::{agent::Agent, check::Expected, device::DiskStats};

const PLAN: &str = "/etc/blkio-plan.json";

fn emit(e: Event) {
    println!("{}", e.to_line());
}

fn main() {
    let plan: Plan = match fs::read_to_string(PLAN)
        .map_err(|e| e.to_string())
        .and_then(|s| serde_json::from_str(&s).map_err(|e| e.to_string()))
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!("blkio-guest: cannot read {PLAN}: {e}");
            emit(Event::Done);
            return;
        }
    };
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    let btf = fs::read("/sys/kernel/btf/vmlinux").ok();
    emit(Event::Kernel { release, btf: btf.is_some(), facts: btf_facts(btf.as_deref().unwrap_or_default()) });
    for device in &plan.devices {
        for mode in &plan.modes {
            emit(Event::Cell { mode: mode.clone(), device: device.clone() });
            let (result, log) = cell(&plan, mode, device);
            let pass = result.is_ok();
            if plan.verbose || !pass {
                for line in log {
                    emit(Event::AgentLog { mode: mode.clone(), device: device.clone(), line });
                }
            }
            let detail = result.unwrap_or_else(|e| e);
            emit(Event::Result(CellResult { mode: mode.clone(), device: device.clone(), pass, detail }));
        }
    }
    for name in &plan.scenarios {
        let mode = "btf".to_string();
        emit(Event::Cell { mode: mode.clone(), device: name.clone() });
        let (result, log) = scenario::run(name, &plan.agent_args);
        let pass = result.is_ok();
        if plan.verbose || !pass {
            for line in log {
                emit(Event::AgentLog { mode: mode.clone(), device: name.clone(), line });
            }
        }
        let detail = result.unwrap_or_else(|e| e);
        emit(Event::Result(CellResult { mode, device: name.clone(), pass, detail }));
    }
    emit(Event::Done);
}

/// BTF names whose presence changes how the agent loads (see docs/kernels.md): the request-flag
/// and queue-flag enumerators (the fast path reads them from BTF where they exist; older kernels
/// `#define` them), the pre-5.17 `request.rq_disk` member, and the tp_btf prototypes.
const BTF_NAMES: &[&str] =
    &["__RQF_STATS", "QUEUE_FLAG_STATS", "rq_disk", "btf_trace_block_rq_complete", "btf_trace_block_rq_issue"];

/// `name=yes|no` for each of [`BTF_NAMES`], found in the BTF string section (names are
/// NUL-terminated there, so a whole-name match is a search for `\0name\0`).
fn btf_facts(btf: &[u8]) -> String {
    BTF_NAMES
        .iter()
        .map(|n| {
            let needle = [b"\0", n.as_bytes(), b"\0"].concat();
            let found = btf.windows(needle.len()).any(|w| w == needle.as_slice());
            format!("{n}={}", if found { "yes" } else { "no" })
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// One cell: `Ok(what ran)` or `Err(first failure)`, plus the agent's stderr.
fn cell(plan: &Plan, mode: &str, kind: &str) -> (Result<String, String>, Vec<String>) {
    let dev = match device::find(kind, Duration::from_secs(20)) {
        Ok(d) => d,
        Err(e) => return (Err(e), Vec::new()),
    };
    let before = match DiskStats::read(&dev) {
        Ok(s) => s,
        Err(e) => return (Err(e), Vec::new()),
    };
    let tag = format!("{mode}-{kind}");
    let mut agent = match Agent::start(mode, &dev, &tag, &plan.agent_args, Duration::from_secs(90)) {
        Ok(a) => a,
        Err(e) => {
            let stderr = fs::read_to_string(format!("/tmp/{tag}.stderr")).unwrap_or_default();
            return (Err(e), stderr.lines().map(str::to_string).collect());
        }
    };
    // The agent arms its depth gauge 50 ms after attaching (agent-ebpf: arming time).
    thread::sleep(Duration::from_millis(300));
    let round1 = workload::run(&dev, plan.writes, plan.reads, plan.threads, plan.per_thread);
    // The agent decides its path at an interval's end (after a self-test where the stats flags
    // come from its kernel-version table): wait for a snapshot with the decision, then run the
    // workload again, all of it on the decided path. The wait also gives the device its dense
    // slot, so the two rounds use both of the agent's map layouts.
    let decided = agent.wait_path_decided(Duration::from_secs(6));
    // Only requests allocated 50 ms after the switch take the fast path (the agent arms it ahead,
    // like its depth gauge), so round 2 starts well after that.
    thread::sleep(Duration::from_millis(200));
    let round2 = workload::run(&dev, plan.writes, plan.reads, plan.threads, plan.per_thread);
    // Classic tracepoints can lose completions (check.rs: CLASSIC_LOSS): give the agent's idle
    // resync (two idle intervals) time to return its gauge to 0 and count them.
    thread::sleep(Duration::from_millis(if mode == "tracepoint" { 1800 } else { 600 }));
    let stopped = agent.stop(Duration::from_secs(30));
    let log = agent.stderr_lines();
    let result = (|| {
        let (r1, r2) = (round1?, round2?);
        let status = stopped?;
        if !status.success() {
            return Err(format!("agent exited with {status} after SIGTERM (want 0): {}", agent.error_line()));
        }
        let after = DiskStats::read(&dev)?;
        let jsonl = fs::read_to_string(&agent.output).map_err(|e| format!("{}: {e}", agent.output))?;
        let wbt = fs::read_to_string(format!("/sys/block/{dev}/queue/wbt_lat_usec"))
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .unwrap_or(0);
        let exp = Expected {
            dev: &dev,
            mode,
            writes: r1.writes + r2.writes,
            reads: r1.reads + r2.reads,
            disk: after.delta(before),
            stamps: wbt > 0,
            fast_min: r2.writes + r2.reads,
        };
        let losses = check::losses_note(&jsonl);
        let losses = if losses.is_empty() { String::new() } else { format!(" [losses_total: {losses}]") };
        let o = check::check(&jsonl, &exp).map_err(|e| format!("{e}{losses}"))?;
        Ok(format!(
            "{dev}: attach={} path={}/{} fast={}/{} (decided: {decided}) wbt={wbt} writes={} reads={} bytes={}/{} snapshots={}",
            o.attach,
            o.fast,
            o.flags,
            o.fast_completions,
            o.completions,
            o.writes,
            o.reads,
            o.write_bytes,
            o.read_bytes,
            o.snapshots,
        ) + &if o.lost > 0 { format!(" lost={} (reported)", o.lost) } else { String::new() }
            + &losses)
    })();
    (result, log)
}
