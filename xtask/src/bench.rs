//! `cargo xtask bench-overhead` (issue 6): what the agent costs per I/O, in the kernel and in
//! userspace, on this machine, against libbpf-tools `biolatency -D` in the same run.
//!
//! Phases (see `phases.rs`): kernel ns per I/O with both tools attached (bpf_stats), fio IOPS with
//! and without the agent (alternating), snapshot timing/CPU/RSS with 16 busy devices, and the
//! kernel memory of the maps computed for a 192-CPU node and checked against bpftool's memlock.
//! Results go to stdout, docs/performance.md and optionally JSON.
//!
//! Disk: loop devices backed by fully allocated files on tmpfs (/dev/shm), so the "device" is a
//! memcpy and the benchmark measures CPU cost without disk noise. Loop direct I/O is off by default:
//! on tmpfs it only adds the AIO path (about half the IOPS on the 2-core VM), and the higher the
//! IOPS, the more visible the per-I/O cost. The scheduler is set explicitly (`none` by default,
//! as on NVMe) so results do not depend on udev rules.

mod bpf;
mod phases;
mod report;
mod results;
mod scaling;
mod sys;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::setup::{is_root, run, workspace_root};
use sys::{Proc, check_interrupted};

/// One fio workload: 4 KiB random read/write 50/50 at `iodepth` in each of `jobs` processes.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    pub name: &'static str,
    pub iodepth: u32,
    pub jobs: u32,
}

impl Workload {
    /// File-name part of a run of this workload.
    fn tag(self) -> String {
        if self.jobs == 1 { format!("qd{}", self.iodepth) } else { format!("{}x-qd{}", self.jobs, self.iodepth) }
    }
}

/// The fio workloads of issue 6 (4 KiB random read/write, QD 16 and QD 1), and issue 12's run
/// with two jobs, one per CPU, so that both CPUs issue and complete requests of the same device
/// at once (each tool's shared cache lines then move between CPUs).
pub const WORKLOADS: [Workload; 3] = [
    Workload { name: "4k randrw QD16", iodepth: 16, jobs: 1 },
    Workload { name: "4k randrw QD1", iodepth: 1, jobs: 1 },
    Workload { name: "4k randrw 2 jobs x QD8", iodepth: 8, jobs: 2 },
];
/// Busy devices for the snapshot timing.
pub const SNAPSHOT_DEVICES: usize = 16;

#[derive(clap::Args, Debug, Clone)]
pub struct Opts {
    /// Seconds per fio run (the kernel-cost phase runs each workload twice: agent attached
    /// first, then biolatency first).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(2..))]
    pub runtime: u64,
    /// (without, with) agent pairs per workload for the IOPS comparison; more rounds narrow the
    /// confidence interval of the ratio.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(2..))]
    pub rounds: u32,
    /// Do not run libbpf-tools biolatency (no ratio is reported).
    #[arg(long)]
    pub skip_biolatency: bool,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Seconds of the 16-device snapshot timing run (agent at a 1 s interval).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(3..))]
    pub snapshot_secs: u64,
    /// I/O scheduler of the loop devices.
    #[arg(long, default_value = "none")]
    pub scheduler: String,
    /// Loop devices do direct I/O to their backing files (losetup --direct-io=on).
    #[arg(long)]
    pub loop_direct_io: bool,
    /// Markdown report path, relative to the workspace root.
    #[arg(long, default_value = "docs/performance.md")]
    pub doc: PathBuf,
    /// Do not write the markdown report (stdout only).
    #[arg(long)]
    pub no_doc: bool,
    /// Use target/release/blkio-agent as it is (skip `cargo build --release -p blkio-agent`).
    #[arg(long)]
    pub no_build: bool,
}

/// What every phase needs.
pub struct Ctx {
    pub opts: Opts,
    pub agent_bin: PathBuf,
    pub biolatency: Option<PathBuf>,
    pub scratch: PathBuf,
}

pub fn bench_overhead(opts: Opts) -> anyhow::Result<()> {
    if !is_root() {
        bail!("bench-overhead attaches eBPF programs and creates loop devices: run it as root");
    }
    for tool in ["fio", "bpftool", "losetup"] {
        which(tool).with_context(|| format!("`{tool}` not found (cargo xtask setup installs it)"))?;
    }
    let biolatency = if opts.skip_biolatency { None } else { Some(find_biolatency()?) };
    let root = workspace_root();
    sys::install_signal_handlers();
    let load1: f64 = sys::loadavg().split_whitespace().next().and_then(|l| l.parse().ok()).unwrap_or(0.0);
    if load1 > 0.5 {
        eprintln!(
            "xtask: warning: load average {load1:.2}: other work on this machine will add noise (IOPS most of all)"
        );
    }
    let scratch = sys::ScratchDir::new()?;
    let agent_bin = agent_binary(&root, &scratch.0, opts.no_build)?;
    let started = Instant::now();
    let ctx = Ctx { opts: opts.clone(), agent_bin, biolatency, scratch: scratch.0.clone() };
    let mut results = results::Results { meta: meta(&ctx), ..Default::default() };

    phases::run_all(&ctx, &mut results)?;

    results.meta.elapsed_s = started.elapsed().as_secs_f64();
    results.meta.load_after = sys::loadavg();
    let md = report::markdown(&results);
    println!("\n{md}");
    if !opts.no_doc {
        let path = root.join(&opts.doc);
        fs::write(&path, &md).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("xtask: wrote {}", path.display());
    }
    if let Some(path) = &opts.json {
        fs::write(path, serde_json::to_string_pretty(&results::json(&results))?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("xtask: wrote {}", path.display());
    }
    Ok(())
}

/// Builds the agent and copies the binary into the scratch directory: the target directory is
/// shared, and another build (e.g. `--no-default-features`, which has no `run`) may replace
/// target/release/blkio-agent in the middle of the benchmark.
fn agent_binary(root: &Path, scratch: &Path, no_build: bool) -> anyhow::Result<PathBuf> {
    let built = root.join("target/release/blkio-agent");
    let copy = scratch.join("blkio-agent");
    for attempt in 0..2 {
        if !no_build {
            run(Command::new("cargo").current_dir(root).args(["build", "--release", "-p", "blkio-agent"]))?;
        }
        if !built.exists() {
            bail!("{} does not exist; build it or drop --no-build", built.display());
        }
        fs::copy(&built, &copy).with_context(|| format!("cannot copy {}", built.display()))?;
        let out = Command::new(&copy)
            .args(["run", "--help"])
            .output()
            .with_context(|| format!("cannot execute {} (is /dev/shm mounted noexec?)", copy.display()))?;
        if out.status.success() {
            return Ok(copy);
        }
        if no_build || attempt == 1 {
            break;
        }
        eprintln!(
            "xtask: {} has no `run` (replaced by a build without the ebpf feature?); building again",
            built.display()
        );
    }
    bail!("{} has no `run` subcommand (built without the `ebpf` feature); rebuild it", built.display())
}

fn which(tool: &str) -> anyhow::Result<PathBuf> {
    crate::setup::which(tool).context("not on PATH")
}

/// libbpf-tools' biolatency: `biolatency` on Debian, maybe prefixed elsewhere.
fn find_biolatency() -> anyhow::Result<PathBuf> {
    // Not biolatency-bpfcc: that is the BCC (Python) tool, a different cost.
    for name in ["biolatency", "libbpf-tools-biolatency"] {
        if let Ok(p) = which(name) {
            return Ok(p);
        }
    }
    let listed = sys::command_output(Command::new("dpkg").args(["-L", "libbpf-tools"]));
    listed
        .lines()
        .find(|l| l.ends_with("biolatency"))
        .map(PathBuf::from)
        .context("libbpf-tools biolatency not found (apt-get install libbpf-tools, or pass --skip-biolatency)")
}

fn meta(ctx: &Ctx) -> results::Meta {
    let o = &ctx.opts;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mem_kib: u64 = sys::read_trim("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    results::Meta {
        command: format!("cargo xtask {}", args.join(" ")),
        date_utc: sys::command_output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M"])),
        kernel: sys::read_trim("/proc/sys/kernel/osrelease"),
        cpu_model: sys::cpu_model(),
        cpus_online: sys::cpu_count("/sys/devices/system/cpu/online").unwrap_or(0),
        cpus_possible: sys::possible_cpus().unwrap_or(0),
        mem_total: format!("{:.1} GiB", mem_kib as f64 / (1 << 20) as f64),
        load_before: sys::loadavg(),
        load_after: String::new(),
        fio: sys::command_output(Command::new("fio").arg("--version")),
        biolatency: ctx.biolatency.as_ref().map(|p| format!("{} -D", p.display())),
        setup: format!(
            "fio ({}) 4 KiB random read/write 50/50, libaio, `--direct=1`, on a loop device backed by a fully allocated \
             512 MiB file on tmpfs (/dev/shm), loop direct I/O {}, scheduler `{}`; the agent as \
             `blkio-agent run --interval 1 --output-dir <tmpfs> --metrics-addr off --live log` (BTF tracepoints).",
            sys::command_output(Command::new("fio").arg("--version")),
            if o.loop_direct_io { "on" } else { "off (buffered reads/writes of tmpfs pages)" },
            o.scheduler
        ),
        stats_original: String::new(),
        runtime_s: o.runtime,
        rounds: o.rounds,
        elapsed_s: 0.0,
    }
}

/// A running `blkio-agent run`, stopped (SIGINT, clean shutdown) when dropped.
pub struct Agent {
    proc: Proc,
    log: PathBuf,
    pub dir: PathBuf,
    pub owned: bpf::Owned,
}

impl Agent {
    /// Starts the agent and waits until it logs that its programs are attached.
    pub fn start(ctx: &Ctx, tag: &str, devices: &[String], extra: &[&str]) -> anyhow::Result<Agent> {
        let dir = ctx.scratch.join(format!("agent-{tag}"));
        fs::create_dir_all(&dir)?;
        let log = ctx.scratch.join(format!("agent-{tag}.log"));
        let mut cmd = Command::new(&ctx.agent_bin);
        cmd.args(["run", "--interval", "1", "--metrics-addr", "off", "--live", "log", "--output-dir"])
            .arg(&dir)
            .env("BLKIO_AGENT_LOG", "info,blkio_agent=debug");
        if !devices.is_empty() {
            cmd.arg("--devices").arg(devices.join(","));
        }
        cmd.args(extra);
        let mut proc = Proc::spawn("blkio-agent", &mut cmd, &ctx.scratch.join(format!("agent-{tag}.out")), &log)?;
        let end = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = proc.exited() {
                bail!("the agent exited ({status}) before attaching:\n{}", tail(&log, 20));
            }
            if fs::read_to_string(&log).unwrap_or_default().contains("attached; collecting") {
                break;
            }
            if Instant::now() > end {
                bail!("the agent did not attach within 120 s:\n{}", tail(&log, 20));
            }
            sys::sleep(Duration::from_millis(50))?;
        }
        let owned = bpf::owned_by(proc.pid())?;
        if owned.prog_ids.is_empty() {
            bail!("the agent holds no eBPF program fds after attaching");
        }
        Ok(Agent { proc, log, dir, owned })
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGINT and wait for the clean shutdown (final snapshot, detach). Returns its log.
    pub fn stop(mut self) -> anyhow::Result<String> {
        match self.proc.stop(Duration::from_secs(15)) {
            Some(status) if status.success() => Ok(self.log()),
            other => bail!("the agent did not stop cleanly ({other:?}):\n{}", tail(&self.log, 20)),
        }
    }
}

pub fn tail(path: &Path, lines: usize) -> String {
    let s = fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

pub struct FioResult {
    pub iops: f64,
    /// CPU pressure during the run: share of time some runnable task waited for a CPU
    /// (/proc/pressure/cpu `some`), in %. High values mean other work competed for the CPUs.
    pub cpu_pressure: Option<f64>,
    /// Share (%) of the CPUs' time the hypervisor ran other work instead of this VM's during the
    /// run (`/proc/stat` steal): how contended the host was, recorded beside each result.
    pub steal: Option<f64>,
}

fn psi_cpu_some_us() -> Option<u64> {
    let s = fs::read_to_string("/proc/pressure/cpu").ok()?;
    s.lines().find(|l| l.starts_with("some"))?.split_whitespace().find_map(|f| f.strip_prefix("total="))?.parse().ok()
}

/// One fio run of `runtime` seconds of workload `w` on `dev` (libaio, direct); with several jobs,
/// each job is pinned to its own CPU (`--cpus_allowed_policy=split`) and they are reported as
/// one group.
pub fn fio(ctx: &Ctx, dev: &str, w: Workload, runtime: u64, tag: &str) -> anyhow::Result<FioResult> {
    check_interrupted()?;
    let tag = format!("{tag}-{}", w.tag());
    let out = ctx.scratch.join(format!("fio-{tag}.json"));
    let mut cmd = Command::new("fio");
    cmd.args(["--name=bench", "--rw=randrw", "--rwmixread=50", "--bs=4k", "--direct=1", "--ioengine=libaio"])
        .args(["--time_based", "--norandommap", "--randrepeat=0", "--output-format=json", "--group_reporting"])
        .arg(format!("--filename={dev}"))
        .arg(format!("--iodepth={}", w.iodepth))
        .arg(format!("--numjobs={}", w.jobs))
        .arg(format!("--runtime={runtime}"))
        .arg(format!("--output={}", out.display()));
    if w.jobs > 1 {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        cmd.arg(format!("--cpus_allowed=0-{}", cpus.saturating_sub(1))).arg("--cpus_allowed_policy=split");
    }
    let err = ctx.scratch.join(format!("fio-{tag}.err"));
    let psi0 = psi_cpu_some_us();
    let steal0 = sys::steal_now();
    let t0 = Instant::now();
    let mut p = Proc::spawn("fio", &mut cmd, &ctx.scratch.join(format!("fio-{tag}.out")), &err)?;
    let status = p.wait(Duration::from_secs(runtime + 60))?;
    let cpu_pressure = match (psi0, psi_cpu_some_us()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / t0.elapsed().as_micros().max(1) as f64 * 100.0),
        _ => None,
    };
    let steal = sys::steal_percent(steal0, sys::steal_now());
    if !status.success() {
        bail!("fio failed ({status}):\n{}", tail(&err, 10));
    }
    let text = fs::read_to_string(&out)?;
    // fio may print notices before the JSON document.
    let json: serde_json::Value = serde_json::from_str(&text[text.find('{').context("no JSON from fio")?..])
        .context("cannot parse fio's JSON")?;
    let job = &json["jobs"][0];
    let iops = job["read"]["iops"].as_f64().unwrap_or(0.0) + job["write"]["iops"].as_f64().unwrap_or(0.0);
    if iops <= 0.0 {
        bail!("fio reported no I/O on {dev}");
    }
    Ok(FioResult { iops, cpu_pressure, steal })
}
