//! `cargo xtask kernels`: the kernel matrix (issue 11). Fetches the newest Debian cloud kernel of
//! each series (5.10, 6.1, 6.12, newest), boots each under qemu (TCG) with an initramfs holding
//! busybox-static, the static agent and the test driver (`xtask/guest`), and runs every attach
//! mode on every device kind inside; prints one table and fails on any failed cell.

mod fetch;
mod initramfs;
mod modules;
mod qemu;
mod report;

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use blkio_guest::{plan::Plan, protocol::CellResult};

use crate::{image::build_static, setup::workspace_root};

pub const MODES: &[&str] = &["auto", "btf", "tracepoint"];
pub const DEVICES: &[&str] = &["virtio", "nvme", "null_blk", "scsi_debug"];
pub use blkio_guest::plan::SCENARIOS;
/// The attach mode the fault scenarios run in (the exact one; `auto` picks it on every kernel here).
pub const SCENARIO_MODE: &str = "btf";

#[derive(clap::Args, Clone)]
pub struct Opts {
    /// Kernel series to run (comma-separated): 5.10, 6.1, 6.12, newest. Default: all.
    #[arg(long, value_delimiter = ',')]
    pub kernel: Vec<String>,
    /// Attach modes (comma-separated): auto, btf, tracepoint. Default: all.
    #[arg(long, value_delimiter = ',')]
    pub mode: Vec<String>,
    /// Device kinds (comma-separated): virtio, nvme, null_blk, scsi_debug. Default: all.
    #[arg(long, value_delimiter = ',')]
    pub device: Vec<String>,
    /// Fault scenarios (comma-separated, run in btf mode after the device cells):
    /// null_blk-zoned, null_blk-discard, scsi_debug-faults, nvme-qd32, nvme-fio, ext4-fsync, or
    /// none.
    /// Default: all.
    #[arg(long, value_delimiter = ',')]
    pub scenario: Vec<String>,
    /// Use this static (musl) agent binary instead of building one.
    #[arg(long)]
    pub agent: Option<PathBuf>,
    /// Guests booted at once (each has 2 vCPUs). Two finish the matrix sooner on 2 host cores
    /// (measured: 113 s of boots instead of 173 s; docs/kernels.md).
    #[arg(long, default_value_t = 2)]
    pub jobs: usize,
    /// 4 KiB O_DIRECT writes per cell.
    #[arg(long, default_value_t = 64)]
    pub writes: u32,
    /// 4 KiB O_DIRECT reads per cell.
    #[arg(long, default_value_t = 96)]
    pub reads: u32,
    /// Threads of the concurrent phase (each alternates 4 KiB O_DIRECT writes and reads).
    #[arg(long, default_value_t = 4)]
    pub threads: u32,
    /// Requests per thread in the concurrent phase.
    #[arg(long, default_value_t = 32)]
    pub per_thread: u32,
    /// Echo the whole serial console and every agent log line.
    #[arg(long, short)]
    pub verbose: bool,
    /// Write the result into docs/kernels.md and the README's kernel-support table (between their
    /// `kernel-matrix` markers), with the command, the date and the machine.
    #[arg(long)]
    pub record: bool,
    /// Extra arguments for `blkio-agent run` in every cell (e.g. `--agent-arg=--attribute-pods`).
    #[arg(long = "agent-arg", allow_hyphen_values = true)]
    pub agent_args: Vec<String>,
}

impl Opts {
    /// The whole matrix with the default workload (what `cargo xtask test` runs).
    pub fn all() -> Opts {
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            opts: Opts,
        }
        <Defaults as clap::Parser>::parse_from(["kernels"]).opts
    }
}

/// One booted kernel's cells.
pub struct KernelRun {
    /// Into the fetched kernels.
    pub index: usize,
    pub cells: Vec<Cell>,
    /// The guest's BTF facts (`name=yes|no ...`), when it got that far.
    pub facts: Option<String>,
    pub elapsed: Duration,
}

/// One cell of the matrix.
pub struct Cell {
    pub kernel: String,
    pub mode: String,
    pub device: String,
    pub pass: bool,
    pub detail: String,
}

fn pick(asked: &[String], all: &[&str], what: &str) -> anyhow::Result<Vec<String>> {
    if asked.is_empty() {
        return Ok(all.iter().map(|s| s.to_string()).collect());
    }
    for a in asked {
        if !all.contains(&a.as_str()) {
            bail!("unknown {what} {a:?}; one of {}", all.join(", "));
        }
    }
    Ok(asked.to_vec())
}

fn require_tool(tool: &str, package: &str) -> anyhow::Result<PathBuf> {
    let Some(path) = crate::setup::which(tool) else {
        bail!("{tool} is not installed; fix: `cargo xtask setup` (or `apt-get install {package}`)");
    };
    Ok(path)
}

pub fn kernels(opts: Opts) -> anyhow::Result<()> {
    let started = Instant::now();
    let series_names: Vec<&str> = fetch::SERIES.iter().map(|s| s.name).collect();
    let series = pick(&opts.kernel, &series_names, "kernel series")?;
    let modes = pick(&opts.mode, MODES, "attach mode")?;
    let devices = pick(&opts.device, DEVICES, "device kind")?;
    let scenarios = if opts.scenario.iter().any(|s| s == "none") {
        Vec::new()
    } else {
        pick(&opts.scenario, SCENARIOS, "scenario")?
    };
    for (tool, pkg) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("apt-get", "apt"),
        ("dpkg-deb", "dpkg"),
        ("xz", "xz-utils"),
        ("zstd", "zstd"),
    ] {
        require_tool(tool, pkg)?;
    }
    if !Path::new(initramfs::BUSYBOX).is_file() {
        bail!("{} is missing; fix: `cargo xtask setup` (or `apt-get install busybox-static`)", initramfs::BUSYBOX);
    }
    let agent = match &opts.agent {
        Some(a) => a.canonicalize().with_context(|| format!("--agent {}", a.display()))?,
        None => build_static("blkio-agent", "blkio-agent")?,
    };
    check_static(&agent)?;
    let guest = build_static("blkio-guest", "blkio-guest")?;
    // The nvme-fio scenario runs the host's fio in the guests.
    let fio = if scenarios.iter().any(|s| s == "nvme-fio") {
        Some(initramfs::dynamic_program(&require_tool("fio", "fio")?)?)
    } else {
        None
    };
    let cache = fetch::cache_root()?;
    let mut kernels = Vec::new();
    for s in fetch::SERIES.iter().filter(|s| series.iter().any(|n| n == s.name)) {
        let k = fetch::fetch(&cache, s).with_context(|| format!("fetching the {} kernel ({})", s.name, s.suite))?;
        eprintln!("xtask: kernels: {} = {} ({}, {})", s.name, k.release, k.suite, k.version);
        kernels.push(k);
    }
    let fetched = started.elapsed();
    let plan = Plan {
        modes: modes.clone(),
        devices: devices.clone(),
        writes: opts.writes,
        reads: opts.reads,
        threads: opts.threads,
        per_thread: opts.per_thread,
        verbose: opts.verbose,
        scenarios: scenarios.clone(),
        agent_args: opts.agent_args.clone(),
    };
    // The report's rows: the device kinds, then the scenarios (one column each: btf).
    let rows: Vec<String> = devices.iter().chain(&scenarios).cloned().collect();
    let work_root = workspace_root().join("target/kernels");
    // Boot time + per cell: agent start under TCG (BTF parse, verifier), workload, stop.
    let timeout = Duration::from_secs(90 + 60 * (modes.len() * devices.len() + scenarios.len()) as u64);
    let runs: Mutex<Vec<KernelRun>> = Mutex::new(Vec::new());
    let next = Mutex::new(0usize);
    let run_one = |i: usize| -> KernelRun {
        let k = &kernels[i];
        let label = format!("{} {}", k.series, k.release);
        let t = Instant::now();
        let (cells, facts) = match boot_kernel(
            k,
            &plan,
            &agent,
            &guest,
            fio.as_ref(),
            &work_root.join(&k.release),
            timeout,
            opts.verbose,
            &label,
        ) {
            Ok(r) => r,
            Err(e) => (all_failed(k, &plan, &format!("{e:#}")), None),
        };
        KernelRun { index: i, cells, facts, elapsed: t.elapsed() }
    };
    thread::scope(|s| {
        for _ in 0..opts.jobs.clamp(1, kernels.len().max(1)) {
            s.spawn(|| {
                loop {
                    let i = {
                        let mut n = next.lock().expect("lock");
                        let i = *n;
                        *n += 1;
                        i
                    };
                    if i >= kernels.len() {
                        break;
                    }
                    let r = run_one(i);
                    runs.lock().expect("lock").push(r);
                }
            });
        }
    });
    let mut runs = runs.into_inner().expect("lock");
    runs.sort_by_key(|r| r.index);
    let total = started.elapsed();
    let table = report::render(&kernels, &runs, &modes, &rows, fetched, total, opts.jobs);
    println!("{table}");
    let _ = std::fs::write(work_root.join("matrix.md"), &table);
    if opts.record {
        record(&table, &report::summary(&kernels, &runs, &modes, &rows))?;
    }
    let cells = runs.iter().flat_map(|r| &r.cells);
    let (failed, all) = (cells.clone().filter(|c| !c.pass).count(), cells.count());
    if failed > 0 {
        bail!("{failed} of {all} kernel-matrix cells failed (console logs under {})", work_root.display());
    }
    Ok(())
}

/// The measured matrix into the docs, stamped with how and where it ran.
fn record(table: &str, summary: &str) -> anyhow::Result<()> {
    let root = workspace_root();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let uname = |flag: &str| {
        Command::new("uname").arg(flag).output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let cpus = thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let stamp = format!(
        "Command: `cargo xtask {}`, {} UTC, on a {cpus}-vCPU host running {} (guests: qemu TCG, 2 vCPUs, 1 GiB each).\n\n",
        args.join(" "),
        crate::image::rfc3339_now().replace('T', " ").trim_end_matches('Z'),
        uname("-r").unwrap_or_default()
    );
    report::replace_marked(&root.join("docs/kernels.md"), "kernel-matrix", &format!("{stamp}{table}"))?;
    let readme = format!("{summary}\n{stamp}");
    report::replace_marked(&root.join("README.md"), "kernel-matrix", &readme)?;
    eprintln!("xtask: kernels: recorded in docs/kernels.md and README.md");
    Ok(())
}

/// The guests have no libc: the agent must be the static musl build.
fn check_static(agent: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(agent).with_context(|| format!("reading {}", agent.display()))?;
    // A dynamically linked ELF has a PT_INTERP naming its loader.
    if bytes.windows(15).any(|w| w == b"/lib64/ld-linux") {
        bail!(
            "{} is dynamically linked; the guests need the static build \
             (cargo build --release --target x86_64-unknown-linux-musl -p blkio-agent)",
            agent.display()
        );
    }
    Ok(())
}

/// Every (mode, device) cell a plan runs: each attach mode on each device kind, then each
/// scenario in [`SCENARIO_MODE`].
fn plan_cells(plan: &Plan) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for d in &plan.devices {
        for m in &plan.modes {
            out.push((m.clone(), d.clone()));
        }
    }
    out.extend(plan.scenarios.iter().map(|s| (SCENARIO_MODE.to_string(), s.clone())));
    out
}

fn all_failed(k: &fetch::Kernel, plan: &Plan, why: &str) -> Vec<Cell> {
    plan_cells(plan)
        .into_iter()
        .map(|(mode, device)| Cell { kernel: k.release.clone(), mode, device, pass: false, detail: why.to_string() })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn boot_kernel(
    k: &fetch::Kernel,
    plan: &Plan,
    agent: &Path,
    guest: &Path,
    program: Option<&initramfs::Program>,
    work: &Path,
    timeout: Duration,
    verbose: bool,
    label: &str,
) -> anyhow::Result<(Vec<Cell>, Option<String>)> {
    std::fs::create_dir_all(work)?;
    let kinds: Vec<String> = plan.devices.iter().chain(&plan.scenarios).cloned().collect();
    let mods = modules::resolve(&k.modules, &kinds)?;
    let initrd = work.join(format!("initramfs.cpio.{}", std::process::id()));
    initramfs::write(
        &initrd,
        &initramfs::Contents { agent, guest, plan_json: serde_json::to_string(plan)?, modules: &mods, program },
    )?;
    eprintln!(
        "xtask: kernels: booting {} ({} modules: {})",
        k.release,
        mods.len(),
        mods.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(" ")
    );
    let out = qemu::boot(&qemu::Boot {
        vmlinuz: &k.vmlinuz,
        initramfs: &initrd,
        work,
        devices: &plan.devices,
        scenarios: &plan.scenarios,
        timeout,
        verbose,
        label,
    });
    let _ = std::fs::remove_file(&initrd);
    let out = out?;
    if let Some(r) = &out.release
        && r != &k.release
    {
        bail!("booted {} but the guest runs {r}", k.release);
    }
    let mut cells = Vec::new();
    for (m, d) in plan_cells(plan) {
        let got: Option<&CellResult> = out.results.iter().find(|r| r.mode == m && r.device == d);
        let (pass, detail) = match got {
            Some(r) => (r.pass, r.detail.clone()),
            None => (false, out.aborted.clone().unwrap_or_else(|| "the guest reported no result for this cell".into())),
        };
        cells.push(Cell { kernel: k.release.clone(), mode: m, device: d, pass, detail });
    }
    eprintln!(
        "xtask: kernels: {} done in {:.0} s (console: {})",
        k.release,
        out.elapsed.as_secs_f64(),
        out.console.display()
    );
    Ok((cells, out.facts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_run_everything() {
        let o = Opts::all();
        assert!(o.kernel.is_empty() && o.mode.is_empty() && o.device.is_empty() && o.agent.is_none());
        assert_eq!((o.writes, o.reads, o.threads, o.per_thread, o.jobs), (64, 96, 4, 32, 2));
        assert_eq!(pick(&[], MODES, "mode").unwrap(), ["auto", "btf", "tracepoint"]);
        assert!(pick(&["kprobe".into()], MODES, "mode").unwrap_err().to_string().contains("one of auto, btf"));
        assert!(o.scenario.is_empty());
        let plan = Plan {
            modes: vec!["auto".into(), "btf".into()],
            devices: vec!["nvme".into()],
            writes: 1,
            reads: 1,
            threads: 0,
            per_thread: 0,
            verbose: false,
            scenarios: vec!["ext4-fsync".into()],
            agent_args: vec![],
        };
        let cells = plan_cells(&plan);
        assert_eq!(cells.len(), 3);
        assert_eq!(cells[2], ("btf".to_string(), "ext4-fsync".to_string()));
    }
}
