//! `blkio-agent run`: attach, then one snapshot per interval to JSONL, exporters and the live
//! view, until SIGINT/SIGTERM or `--duration`. Shutdown takes a last snapshot, seals the output,
//! detaches and exits 0.

use std::{
    process::ExitCode,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::RunArgs,
    collector::Collector,
    devices::{DeviceFilter, DeviceNames},
    export::{AgentIdentity, Exporters, Health},
    k8s,
    live::LiveView,
    loader::{self, LoadOptions},
    writer::{SegmentConfig, Sink, Writer},
};

pub fn main(args: RunArgs) -> anyhow::Result<ExitCode> {
    init_tracing();
    // Before any other thread exists (see `loader::early`): spares aya's 23 MB parse of kernel BTF.
    loader::early::prepare();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("blkio-agent")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(run(args))
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BLKIO_AGENT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Plain text when stderr is not a terminal (kubectl logs, files): no colour codes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).try_init();
}

/// `--node-name`, else `$NODE_NAME` (the downward API in a pod), else the hostname.
pub fn node_name(flag: Option<&str>, env_node: Option<&str>, hostname: impl FnOnce() -> String) -> String {
    flag.or(env_node).filter(|s| !s.trim().is_empty()).map(str::to_string).unwrap_or_else(hostname)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

fn open_output(args: &RunArgs, node: &str, run: &crate::interval::RunIdentity) -> crate::Result<Option<Writer>> {
    if args.no_output {
        return Ok(None);
    }
    let sink = match &args.output_dir {
        Some(dir) => Sink::segments(SegmentConfig {
            dir: dir.clone(),
            node: node.to_string(),
            max_bytes: args.segment_max_bytes,
            max_age: Duration::from_secs_f64(args.segment_max_age),
            retain_bytes: args.retain_bytes,
            retain_files: args.retain_files,
            run: run.id[..8].to_string(),
        })?,
        None => Sink::file(&args.output)?,
    };
    Ok(Some(Writer::start(sink, args.flush_every, args.fsync)))
}

async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let node = node_name(args.node_name.as_deref(), std::env::var("NODE_NAME").ok().as_deref(), hostname);
    let filter = DeviceFilter::new(&args.devices)?;
    let names = DeviceNames::new(&args.proc_root, &args.sys_root)?;
    // The output is opened before anything is attached: an unwritable path fails fast.
    let run_identity = crate::interval::RunIdentity::new();
    let writer = open_output(&args, &node, &run_identity)?;

    let health = Arc::new(Health::default());
    health.set_interval(Duration::from_secs_f64(args.interval));
    health.set_output_writable(true);
    let identity = AgentIdentity { node_name: node.clone(), host_name: hostname() };
    let exporters = Exporters::start(&args, identity, health.clone())?;
    let plan = args
        .attribute_pods
        .then(|| k8s::CgroupPlan::resolve(args.cgroup_root.as_deref(), &args.sys_root, args.attribution_source));
    let attribution = plan.as_ref().map(|p| p.preferred);
    let probes = loader::load(&LoadOptions { mode: args.attach, sys_root: &args.sys_root, attribution })?;
    // The loader may fall back from bio to task; the ids then come from the other mount.
    let mut attribution = match (&plan, probes.cgroup_source) {
        (Some(plan), Some(source)) => {
            let root = plan.root_for(source).to_path_buf();
            tracing::info!(source = source.as_str(), cgroup_root = %root.display(), "per-pod attribution");
            let mut a = k8s::Attribution::start(root, source, node.clone(), args.max_pods)?;
            // Pods' io.pressure lives in the cgroup v2 mount, whichever hierarchy names the ids.
            a.set_pressure_root(k8s::is_cgroup2(&plan.task_root).then(|| plan.task_root.clone()));
            if let Some(watcher) = a.watcher() {
                health.tasks.watch("pod-watcher", watcher);
            }
            Some(a)
        }
        _ => None,
    };
    let mode = probes.mode;
    let programs = probes.programs.join(",");
    let mut collector = Collector::new(probes, names, filter, node.clone(), args.attribute_pods)?;
    health.set_attached();
    tracing::info!(
        attach = mode.as_str(),
        programs,
        node,
        output = %output_description(&args),
        interval_s = args.interval,
        "attached; collecting"
    );

    let mut node_pressure = crate::pressure::NodePressure::new(&args.proc_root);
    let mut disk_times = crate::devices::DiskTimes::new(&args.proc_root);
    tracing::info!(run_id = %run_identity.id, "run identity (every snapshot's run_id)");
    let live = LiveView::new(args.live);
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let interval = Duration::from_secs_f64(args.interval);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline = args.duration.map(|d| tokio::time::Instant::now() + Duration::from_secs_f64(d));
    let mut failures_seen = 0u64;
    let mut bytes_reported = 0u64;
    let mut writer_dead = false;

    loop {
        let stop = tokio::select! {
            _ = ticker.tick() => false,
            failure = health.tasks.failed() => {
                // JSONL goes on (it needs none of the background tasks); /readyz carries the
                // reason so that the orchestrator sees the agent is degraded.
                tracing::error!(%failure, "continuing without it; the agent reports unready");
                continue;
            }
            _ = sigint.recv() => { tracing::info!("SIGINT: final snapshot and exit"); true }
            _ = sigterm.recv() => { tracing::info!("SIGTERM: final snapshot and exit"); true }
            _ = sleep_until(deadline) => { tracing::info!("duration reached: final snapshot and exit"); true }
        };
        // Watched tasks (the pod watcher) are checked once per interval.
        health.tasks.poll();
        if let Some(w) = &writer {
            let failures = w.stats.write_failures.load(Ordering::Relaxed);
            collector.add_write_failures(failures - failures_seen);
            failures_seen = failures;
        }
        let started = Instant::now();
        let collected = match collector.collect() {
            Ok(c) => c,
            Err(e) => {
                // Nothing is lost: the kernel's counts are cumulative and the next interval
                // covers this one. Counted in losses.map_read_failures; persistent failures make
                // /readyz unready through the snapshot age.
                tracing::warn!(error = %crate::error::chain(&e), "cannot read the kernel maps; retrying at the next interval");
                if stop {
                    break;
                }
                continue;
            }
        };
        let mut interval = collected.interval;
        interval.io_pressure = node_pressure.sample();
        interval.disk_time =
            disk_times.sample(collected.diskstats.as_deref(), interval.devices.iter().map(|d| (d.id, d.name.as_str())));
        interval.run = Some(run_identity.clone());
        if let Some(a) = attribution.as_mut() {
            interval.pods = a.attribute_series(&collected.cgroups);
        }
        if let Some(w) = &writer {
            let line = serde_json::to_vec(&interval.snapshot()).context("cannot encode a snapshot")?;
            w.send(line);
            let written = w.stats.bytes_written.load(Ordering::Relaxed);
            health.add_jsonl_bytes(written - bytes_reported);
            bytes_reported = written;
            // The writer is a thread of its own, supervised here: if it died, nothing is written.
            let alive = !w.stopped();
            if !alive && !writer_dead {
                tracing::error!("the JSONL writer thread stopped; snapshots are not written");
            }
            writer_dead = !alive;
            health.set_output_writable(alive && w.stats.writable.load(Ordering::Relaxed));
        }
        exporters.publish(&interval);
        health.record_snapshot(collected.build_time);
        live.render(&interval);
        tracing::debug!(
            build_us = collected.build_time.as_micros() as u64,
            total_us = started.elapsed().as_micros() as u64,
            "snapshot built"
        );
        if stop {
            break;
        }
    }

    health.tasks.stopping();
    if let Some(w) = writer {
        w.close().context("cannot finish the JSONL output")?;
    }
    exporters.shutdown(Duration::from_secs(5)).await;
    drop(attribution);
    drop(collector); // detaches the programs
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn output_description(args: &RunArgs) -> String {
    match (&args.output_dir, args.no_output) {
        (_, true) => "none".into(),
        (Some(dir), _) => format!("segments in {}", dir.display()),
        (None, _) => args.output.display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_name_precedence() {
        assert_eq!(node_name(Some("a"), Some("b"), || "c".into()), "a");
        assert_eq!(node_name(None, Some("b"), || "c".into()), "b");
        assert_eq!(node_name(None, Some(" "), || "c".into()), "c");
        assert_eq!(node_name(None, None, || "c".into()), "c");
    }
}
