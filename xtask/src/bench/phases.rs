//! The benchmark's phases. Each owns its processes and loop devices through guards, so an
//! error anywhere leaves nothing behind.

use std::{
    collections::BTreeSet,
    fs,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{
    Agent, Ctx, SNAPSHOT_DEVICES, WORKLOADS, Workload,
    bpf::{self, LoadedMap, MapSpec, Owned},
    fio,
    results::{IopsRun, KernelRun, MapRow, NODE_CPUS, NODE_DEVICES, ProgRow, Results, SnapshotStats, pct},
    sys::{self, LoopDev, Proc, Sysctl},
};

pub fn run_all(ctx: &Ctx, r: &mut Results) -> anyhow::Result<()> {
    let stats = Sysctl::new("kernel.bpf_stats_enabled")?;
    r.meta.stats_original = stats.original.clone();
    let file = ctx.scratch.join("bench.img");
    sys::allocated_file(&file, 512 << 20)?;
    let lo = LoopDev::attach(&file, ctx.opts.loop_direct_io)?;
    lo.set_scheduler(&ctx.opts.scheduler)?;
    eprintln!("xtask: benchmark device {} on {} (scheduler {})", lo.dev, file.display(), lo.scheduler());

    let t = Instant::now();
    stats.set("1")?;
    let (maps, mid) = kernel_cost(ctx, &lo, r)?;
    stats.restore()?;
    r.maps = memory_rows(&maps, &mid)?;
    eprintln!("xtask: kernel cost phase took {:.0} s", t.elapsed().as_secs_f64());

    if stats.original.trim() != "0" {
        eprintln!(
            "xtask: warning: kernel.bpf_stats_enabled was {} before the benchmark (set by someone else?); \
             the IOPS runs keep it, so the agent's runs include the stats' clock reads",
            stats.original
        );
    }
    let t = Instant::now();
    iops(ctx, &lo, r)?;
    drop(lo);
    eprintln!("xtask: IOPS phase took {:.0} s", t.elapsed().as_secs_f64());

    let t = Instant::now();
    r.snapshot = Some(snapshot(ctx)?);
    eprintln!("xtask: snapshot phase took {:.0} s", t.elapsed().as_secs_f64());
    Ok(())
}

/// libbpf-tools `biolatency -D`, stopped when dropped.
struct Biolatency {
    proc: Proc,
    owned: Owned,
}

impl Biolatency {
    /// Starts it and waits until its links exist (its stdout is block-buffered into a file, so
    /// the "Tracing..." line cannot be waited for).
    fn start(ctx: &Ctx) -> anyhow::Result<Biolatency> {
        let path = ctx.biolatency.as_ref().context("biolatency skipped")?;
        let out = ctx.scratch.join("biolatency.out");
        let mut proc =
            Proc::spawn("biolatency", Command::new(path).arg("-D"), &out, &ctx.scratch.join("biolatency.err"))?;
        let end = Instant::now() + Duration::from_secs(60);
        let mut last = (0, Instant::now());
        loop {
            if let Some(status) = proc.exited() {
                bail!("biolatency exited ({status}): {}", super::tail(&ctx.scratch.join("biolatency.err"), 10));
            }
            let links = bpf::owned_by(proc.pid())?.links;
            if links != last.0 {
                last = (links, Instant::now());
            } else if links > 0 && last.1.elapsed() > Duration::from_millis(500) {
                break;
            }
            if Instant::now() > end {
                bail!("biolatency attached nothing within 60 s");
            }
            sys::sleep(Duration::from_millis(50))?;
        }
        let owned = bpf::owned_by(proc.pid())?;
        Ok(Biolatency { proc, owned })
    }
}

/// Kernel ns per I/O of the agent and biolatency, both attached. Returns the agent's maps.
/// Also returns the agent's maps right after attaching and again halfway through the first
/// (QD16) run, which shows how full the non-preallocated maps get under load.
fn kernel_cost(ctx: &Ctx, lo: &LoopDev, r: &mut Results) -> anyhow::Result<(Vec<LoadedMap>, Vec<LoadedMap>)> {
    let runtime = ctx.opts.runtime;
    if ctx.biolatency.is_none() {
        let agent = Agent::start(ctx, "kernel", &[], &[])?;
        let maps = bpf::maps(&agent.owned.map_ids)?;
        let mut mid = Vec::new();
        for (i, w) in WORKLOADS.into_iter().enumerate() {
            let sample = (i == 0).then_some(&agent.owned.map_ids);
            let (run, maps) = measure(ctx, lo, w, runtime, "agent only", &[("agent", &agent.owned)], sample)?;
            r.kernel.push(run);
            mid.extend(maps);
        }
        agent.stop()?;
        return Ok((maps, mid));
    }
    let agent = Agent::start(ctx, "kernel-1", &[], &[])?;
    let maps = bpf::maps(&agent.owned.map_ids)?;
    let bio = Biolatency::start(ctx)?;
    let mut mid = Vec::new();
    for (i, w) in WORKLOADS.into_iter().enumerate() {
        let tools = [("agent", &agent.owned), ("biolatency", &bio.owned)];
        let (run, maps) =
            measure(ctx, lo, w, runtime, "agent first", &tools, (i == 0).then_some(&agent.owned.map_ids))?;
        r.kernel.push(run);
        mid.extend(maps);
    }
    agent.stop()?;
    // Restarted after biolatency, the agent's programs now run second on each tracepoint.
    let agent = Agent::start(ctx, "kernel-2", &[], &[])?;
    for w in WORKLOADS {
        let tools = [("agent", &agent.owned), ("biolatency", &bio.owned)];
        r.kernel.push(measure(ctx, lo, w, runtime, "biolatency first", &tools, None)?.0);
    }
    agent.stop()?;
    attribution_cost(ctx, lo, r, bio)?;
    Ok((maps, mid))
}

/// "attribution source bio, fast path on" from the agent's `BTF layout resolved` log line.
fn attribution_mode(log: &str) -> Option<String> {
    let l = log.lines().find(|l| l.contains("BTF layout resolved"))?;
    let field = |name: &str| {
        let v = l.split(&format!(" {name}=")).nth(1).and_then(|v| v.split_whitespace().next());
        v.unwrap_or("?").trim_matches('"').to_string()
    };
    // The loader logs the fast path's state (`on`, `verifying`, `unavailable`, `failed`).
    Some(format!("attribution source {}, fast path {}", field("attribution"), field("fast_path")))
}

/// The agent with `--attribute-pods` (the chart's default), in both attach orders against
/// biolatency, which is running when this starts and is restarted once to run second.
fn attribution_cost(ctx: &Ctx, lo: &LoopDev, r: &mut Results, bio: Biolatency) -> anyhow::Result<()> {
    let runtime = ctx.opts.runtime;
    let agent = Agent::start(ctx, "attribution", &[], &["--attribute-pods"])?;
    let log = agent.log();
    r.attribution_mode = attribution_mode(&log);
    for w in WORKLOADS {
        let tools = [("agent", &agent.owned), ("biolatency", &bio.owned)];
        r.attribution.push(measure(ctx, lo, w, runtime, "biolatency first", &tools, None)?.0);
    }
    stop_biolatency(bio);
    let bio = Biolatency::start(ctx)?;
    for w in WORKLOADS {
        let tools = [("agent", &agent.owned), ("biolatency", &bio.owned)];
        r.attribution.push(measure(ctx, lo, w, runtime, "agent first", &tools, None)?.0);
    }
    agent.stop()?;
    stop_biolatency(bio);
    Ok(())
}

fn stop_biolatency(mut bio: Biolatency) {
    if !matches!(bio.proc.stop(Duration::from_secs(10)), Some(s) if s.success()) {
        eprintln!("xtask: warning: biolatency did not exit cleanly");
    }
}

#[allow(clippy::too_many_arguments)]
fn measure(
    ctx: &Ctx,
    lo: &LoopDev,
    w: Workload,
    runtime: u64,
    order: &'static str,
    tools: &[(&'static str, &Owned)],
    sample_maps: Option<&BTreeSet<u32>>,
) -> anyhow::Result<(KernelRun, Vec<LoadedMap>)> {
    let ids: BTreeSet<u32> = tools.iter().flat_map(|(_, o)| o.prog_ids.iter().copied()).collect();
    let before = bpf::prog_stats(&ids)?;
    let io0 = lo.completed_ios()?;
    let t0 = Instant::now();
    let tag = format!("kernel-{}", order.replace(' ', "-"));
    let (f, maps) = std::thread::scope(|scope| {
        let sampler = sample_maps.map(|ids| {
            scope.spawn(move || {
                std::thread::sleep(Duration::from_secs_f64(runtime as f64 / 2.0));
                bpf::maps(ids)
            })
        });
        let f = fio(ctx, &lo.dev, w, runtime, &tag);
        let maps = sampler.map(|h| h.join().map_err(|_| anyhow::anyhow!("map sampler panicked"))).transpose();
        (f, maps)
    });
    let f = f?;
    let maps = maps?.transpose()?.unwrap_or_default();
    let secs = t0.elapsed().as_secs_f64();
    let after = bpf::prog_stats(&ids)?;
    let ios = lo.completed_ios()? - io0;
    let mut progs = Vec::new();
    for (tool, owned) in tools {
        for id in &owned.prog_ids {
            let (Some(a), Some(b)) = (after.get(id), before.get(id)) else { continue };
            progs.push(ProgRow {
                tool,
                name: a.name.clone(),
                runs: a.run_cnt - b.run_cnt,
                run_ns: a.run_time_ns - b.run_time_ns,
                jited: a.bytes_jited,
            });
        }
    }
    let per_io =
        |tool: &str| progs.iter().filter(|p| p.tool == tool).map(|p| p.run_ns).sum::<u64>() as f64 / ios.max(1) as f64;
    eprintln!(
        "xtask: {}, {order}: {ios} I/Os ({:.0} IOPS, steal {:.0} %), agent {:.1} ns/I/O, biolatency {:.1} ns/I/O",
        w.name,
        f.iops,
        f.steal.unwrap_or(f64::NAN),
        per_io("agent"),
        per_io("biolatency")
    );
    Ok((
        KernelRun {
            workload: w.name,
            order,
            ios,
            secs,
            fio_iops: f.iops,
            cpu_pressure: f.cpu_pressure,
            steal: f.steal,
            progs,
        },
        maps,
    ))
}

/// fio IOPS without and with the agent: per round and workload, one run of each back to back
/// (the agent started just for its run), in ABBA order across rounds to cancel drift.
fn iops(ctx: &Ctx, lo: &LoopDev, r: &mut Results) -> anyhow::Result<()> {
    let o = &ctx.opts;
    for round in 0..o.rounds {
        let agent_first = round % 2 == 1;
        for w in WORKLOADS {
            for with_agent in [agent_first, !agent_first] {
                let name = format!("iops-{round}-{}", w.tag());
                let agent = if with_agent { Some(Agent::start(ctx, &name, &[], &[])?) } else { None };
                let tag = format!("iops-{round}-{}", if with_agent { "with" } else { "without" });
                let f = fio(ctx, &lo.dev, w, o.runtime, &tag)?;
                if let Some(a) = agent {
                    a.stop()?;
                }
                eprintln!(
                    "xtask: round {}/{}, {}, {} agent: {:.0} IOPS (CPU pressure {:.0} %, steal {:.0} %)",
                    round + 1,
                    o.rounds,
                    w.name,
                    if with_agent { "with" } else { "without" },
                    f.iops,
                    f.cpu_pressure.unwrap_or(f64::NAN),
                    f.steal.unwrap_or(f64::NAN)
                );
                r.iops.push(IopsRun {
                    workload: w.name,
                    round,
                    with_agent,
                    iops: f.iops,
                    cpu_pressure: f.cpu_pressure,
                    steal: f.steal,
                });
            }
        }
    }
    Ok(())
}

/// Snapshot timing, CPU and RSS with 16 busy devices at a 1 s interval.
fn snapshot(ctx: &Ctx) -> anyhow::Result<SnapshotStats> {
    let o = &ctx.opts;
    let mut loops = Vec::new();
    for i in 0..SNAPSHOT_DEVICES {
        let f = ctx.scratch.join(format!("dev{i}.img"));
        sys::allocated_file(&f, 64 << 20)?;
        let l = LoopDev::attach(&f, o.loop_direct_io)?;
        l.set_scheduler(&o.scheduler)?;
        loops.push(l);
    }
    let names: Vec<String> = loops.iter().map(|l| l.name.clone()).collect();
    let mut cmd = Command::new("fio");
    cmd.args(["--rw=randrw", "--bs=4k", "--direct=1", "--ioengine=psync", "--rate_iops=200"])
        .args(["--time_based", "--norandommap", "--randrepeat=0"])
        .arg(format!("--runtime={}", o.snapshot_secs + 300));
    for l in &loops {
        cmd.arg(format!("--name={}", l.name)).arg(format!("--filename={}", l.dev));
    }
    let mut load =
        Proc::spawn("fio (16 devices)", &mut cmd, &ctx.scratch.join("fio-16.out"), &ctx.scratch.join("fio-16.err"))?;
    sys::sleep(Duration::from_secs(1))?;
    if let Some(status) = load.exited() {
        bail!("fio on 16 devices exited ({status}): {}", super::tail(&ctx.scratch.join("fio-16.err"), 10));
    }
    let agent = Agent::start(ctx, "snapshot", &names, &[])?;
    let pid = agent.pid();
    let (_, hwm_attach_kib) = sys::rss_kib(pid)?;
    let end = Instant::now() + Duration::from_secs(30);
    while !agent.log().contains("snapshot built") {
        if Instant::now() > end {
            bail!("no `snapshot built` debug line from the agent within 30 s");
        }
        sys::sleep(Duration::from_millis(20))?;
    }
    let (tick0, sched0) = sys::cpu_time(pid)?;
    let t0 = Instant::now();
    sys::sleep(Duration::from_secs(o.snapshot_secs))?;
    let (tick1, sched1) = sys::cpu_time(pid)?;
    let wall_s = t0.elapsed().as_secs_f64();
    let (rss_kib, hwm_kib) = sys::rss_kib(pid)?;
    let dir = agent.dir.clone();
    let log = agent.stop()?;
    load.stop(Duration::from_secs(10));

    // The first snapshot (before the window; it also creates the map entries) and the shutdown
    // snapshot (after it) are left out.
    let timings: Vec<(u64, u64)> = log
        .lines()
        .filter(|l| l.contains("snapshot built"))
        .filter_map(|l| Some((field(l, "build_us=")?, field(l, "total_us=")?)))
        .collect();
    if timings.len() < 3 {
        bail!("only {} `snapshot built` lines in the agent's log", timings.len());
    }
    let timings = &timings[1..timings.len() - 1];
    Ok(SnapshotStats {
        devices: devices_per_snapshot(&dir, &names)?,
        interval_s: 1.0,
        wall_s,
        build_us: timings.iter().map(|t| t.0).collect(),
        total_us: timings.iter().map(|t| t.1).collect(),
        cpu_sched_ns: sched1.saturating_sub(sched0),
        cpu_tick_ns: tick1.saturating_sub(tick0),
        rss_kib,
        hwm_kib,
        hwm_attach_kib,
    })
}

fn field(line: &str, name: &str) -> Option<u64> {
    let rest = &line[line.find(name)? + name.len()..];
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// Median number of our devices with completions per snapshot (from the agent's JSONL).
fn devices_per_snapshot(dir: &std::path::Path, names: &[String]) -> anyhow::Result<usize> {
    let mut counts = Vec::new();
    for entry in fs::read_dir(dir)? {
        let text = fs::read_to_string(entry?.path()).unwrap_or_default();
        for line in text.lines().filter(|l| l.starts_with('{')) {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            let n = v["latency_histogram"]
                .as_array()
                .map(|a| {
                    a.iter().filter(|d| d["device_name"].as_str().is_some_and(|n| names.iter().any(|x| x == n))).count()
                })
                .unwrap_or(0);
            counts.push(n as u64);
        }
    }
    if counts.is_empty() {
        bail!("the agent wrote no snapshots to {}", dir.display());
    }
    Ok(pct(&counts, 50.0) as usize)
}

/// Code-declared maps (shape from blkio-agent-common) matched with the loaded ones, plus any
/// loaded map the table does not know (globals sections, new maps).
fn memory_rows(loaded: &[LoadedMap], mid: &[LoadedMap]) -> anyhow::Result<Vec<MapRow>> {
    let ncpu = sys::possible_cpus()?;
    let mut rows = Vec::new();
    let mut matched = BTreeSet::new();
    for code in bpf::code_maps() {
        // The kernel keeps 15 characters of a map name.
        let l = loaded.iter().find(|l| l.spec.name == code.name.chars().take(15).collect::<String>());
        let mut spec = code.clone();
        let mut note = String::new();
        match l {
            Some(l) => {
                matched.insert(l.id);
                spec.flags = l.spec.flags;
                let shape = |s: &MapSpec| (s.kind.clone(), s.key, s.value, s.max_entries);
                if shape(&l.spec) != shape(&code) {
                    note = format!(
                        "loaded map is {} key {} value {} max {}: update code_maps() in xtask/src/bench/bpf.rs",
                        l.spec.kind, l.spec.key, l.spec.value, l.spec.max_entries
                    );
                }
            }
            None => note = "not in the loaded object".into(),
        }
        let m = l.and_then(|l| mid.iter().find(|m| m.id == l.id));
        rows.push(row(spec, "code", l, m, ncpu, note));
    }
    for l in loaded.iter().filter(|l| !matched.contains(&l.id)) {
        let m = mid.iter().find(|m| m.id == l.id);
        rows.push(row(l.spec.clone(), "loaded", Some(l), m, ncpu, String::new()));
    }
    Ok(rows)
}

/// `mid`: the same map sampled under load, to count the entries of a non-preallocated map.
fn row(
    spec: MapSpec,
    source: &'static str,
    loaded: Option<&LoadedMap>,
    mid: Option<&LoadedMap>,
    ncpu: u64,
    note: String,
) -> MapRow {
    let mut notes: Vec<String> = vec![note].into_iter().filter(|n| !n.is_empty()).collect();
    let prealloc = spec.flags & 1 == 0;
    // Validation: the loaded map's own shape at this machine's CPU count. A non-preallocated map
    // is read right after attaching, when it holds (almost) no entries.
    let formula_local = loaded.and_then(|l| bpf::kernel_bytes(&l.spec, ncpu, 0));
    let header = match (loaded, formula_local) {
        (Some(l), Some(f)) if l.memlock >= f && l.memlock - f < 64 << 10 => l.memlock - f,
        (Some(l), Some(f)) => {
            notes.push(format!("formula off by {} B against memlock", l.memlock as i64 - f as i64));
            0
        }
        _ => 0,
    };
    let node_bytes = match bpf::kernel_bytes(&spec, NODE_CPUS, bpf::occupancy(&spec, NODE_DEVICES)) {
        Some(b) => Some(b + header),
        None => {
            notes.push("type not modelled: memlock as measured here".into());
            loaded.map(|l| l.memlock)
        }
    };
    if !prealloc {
        let mut n = format!("not preallocated: sized for {} entries", bpf::occupancy(&spec, NODE_DEVICES));
        if let (Some(l), Some(m)) = (loaded, mid) {
            let per_entry =
                bpf::kernel_bytes(&l.spec, ncpu, 1).zip(bpf::kernel_bytes(&l.spec, ncpu, 0)).map(|(a, b)| a - b);
            if let Some(per_entry) = per_entry.filter(|p| *p > 0) {
                let seen = m.memlock.saturating_sub(l.memlock) / per_entry;
                n += &format!(", {seen} in use halfway through the QD16 run here");
            }
        }
        notes.push(n);
    }
    MapRow { spec, source, loaded: loaded.cloned(), formula_local, node_bytes, note: notes.join("; ") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_attribution_label_names_the_logged_fast_path_state() {
        let log = "2026-12-03T12:29:53Z  INFO blkio_agent::loader::attach: BTF layout resolved fast_path=\"on\" \
                   stats_flags=\"btf\" attribution=\"bio\"\n";
        assert_eq!(attribution_mode(log).as_deref(), Some("attribution source bio, fast path on"));
        let verifying = log.replace("\"on\"", "\"verifying\"").replace("\"bio\"", "\"task\"");
        assert_eq!(attribution_mode(&verifying).as_deref(), Some("attribution source task, fast path verifying"));
        assert_eq!(attribution_mode("no such line\n"), None);
    }
}
