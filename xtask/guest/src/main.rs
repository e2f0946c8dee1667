//! `blkio-guest`: runs inside a kernel-matrix guest (started by the initramfs's `/init` after it
//! mounted /proc, /sys, /dev and loaded the modules). For each attach mode and device kind of
//! `/etc/blkio-plan.json` it starts the agent, runs the known workload, stops the agent with
//! SIGTERM and checks its JSONL against the workload and `/proc/diskstats`; every verdict is one
//! console line (`blkio_guest::protocol`) that the host parses.

mod agent;
mod check;
mod device;
mod workload;

use std::{fs, path::Path, thread, time::Duration};

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
    emit(Event::Kernel { release, btf: Path::new("/sys/kernel/btf/vmlinux").exists() });
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
    emit(Event::Done);
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
    let io = workload::run(&dev, plan.writes, plan.reads, plan.threads, plan.per_thread);
    // Let one interval pass so the device also gets its dense slot (the other code path).
    thread::sleep(Duration::from_millis(700));
    let stopped = agent.stop(Duration::from_secs(30));
    let log = agent.stderr_lines();
    let result = (|| {
        let counts = io?;
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
            writes: counts.writes,
            reads: counts.reads,
            disk: after.delta(before),
            stamps: wbt > 0,
        };
        let o = check::check(&jsonl, &exp)?;
        Ok(format!(
            "{dev}: attach={} path={}/{} fast={}/{} wbt={wbt} writes={} reads={} bytes={}/{} snapshots={}",
            o.attach,
            o.fast,
            o.flags,
            o.fast_completions,
            o.completions,
            o.writes,
            o.reads,
            o.write_bytes,
            o.read_bytes,
            o.snapshots
        ))
    })();
    (result, log)
}
