//! `cargo xtask test`: every test the project has, in one command.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::bail;

use crate::setup::{is_root, run, workspace_root};

pub fn test_all() -> anyhow::Result<()> {
    let root = workspace_root();
    let cargo = || {
        let mut c = Command::new("cargo");
        c.current_dir(&root);
        c
    };
    if is_root() {
        // The docker-level e2e needs an engine; this kind of machine starts none by itself.
        ensure_dockerd()?;
    }
    // Formatting and lints first: cheapest failures. The eBPF crate is checked by its own build
    // (build.rs); `--all` formats it too.
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    // Unit, integration and privileged tests (privileged ones serialize themselves and need
    // root), docker e2e (crate `e2e`). A missing prerequisite fails a test unless
    // BLKIO_AGENT_ALLOW_SKIP=1; skips are logged to a file and counted here.
    let skip_log = std::env::temp_dir().join(format!("blkio-agent-skips-{}", std::process::id()));
    let _ = std::fs::remove_file(&skip_log);
    run(cargo().args(["test", "--all-targets"]).env("BLKIO_AGENT_SKIP_LOG", &skip_log))?;
    // The analyzer-only build (what `cargo install --path agent --no-default-features` gives).
    run(cargo().args(["test", "-p", "blkio-agent", "--no-default-features"]).env("BLKIO_AGENT_SKIP_LOG", &skip_log))?;
    report_skips(&skip_log)
}

/// Prints how many tests skipped for a missing prerequisite; any skip fails the run unless it
/// was allowed explicitly (`BLKIO_AGENT_ALLOW_SKIP=1`): a skipped test is not a passed one.
fn report_skips(log: &std::path::Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let _ = std::fs::remove_file(log);
    let skips: Vec<&str> = text.lines().filter(|l| l.starts_with("SKIPPED")).collect();
    eprintln!("xtask: {} test(s) skipped for missing prerequisites", skips.len());
    for s in &skips {
        eprintln!("xtask:   {s}");
    }
    if !skips.is_empty() && std::env::var("BLKIO_AGENT_ALLOW_SKIP").map_or(true, |v| v != "1" && v != "true") {
        bail!("{} test(s) skipped without BLKIO_AGENT_ALLOW_SKIP=1", skips.len());
    }
    Ok(())
}

fn docker_ready() -> bool {
    Command::new("docker").arg("info").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Starts `dockerd` in the background when it is installed but not running.
fn ensure_dockerd() -> anyhow::Result<()> {
    if docker_ready()
        || Command::new("sh")
            .args(["-c", "command -v dockerd"])
            .stdout(Stdio::null())
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
    {
        return Ok(());
    }
    let log = std::fs::File::create(std::env::temp_dir().join("blkio-agent-dockerd.log"))?;
    eprintln!("xtask: starting dockerd (log in {})", std::env::temp_dir().join("blkio-agent-dockerd.log").display());
    Command::new("dockerd").stdout(log.try_clone()?).stderr(log).spawn()?;
    let start = Instant::now();
    while !docker_ready() {
        if start.elapsed() > Duration::from_secs(60) {
            bail!("dockerd did not become ready within 60 s; see its log");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}
