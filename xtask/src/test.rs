//! `cargo xtask test`: every test the project has, in one command, the kernel matrix last.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::bail;

use crate::{
    kernels,
    setup::{is_root, run, workspace_root},
};

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
    // Unit, integration and privileged tests (privileged ones serialize themselves, need root,
    // and fail instead of skipping when CI=true), docker e2e (crate `e2e`).
    run(cargo().args(["test", "--all-targets"]))?;
    // The analyzer-only build (what `cargo install --path agent --no-default-features` gives).
    run(cargo().args(["test", "-p", "blkio-agent", "--no-default-features"]))?;
    // The kernel matrix: every attach mode on every device kind of 5.10, 6.1, 6.12 and the newest
    // Debian kernel, under qemu (no root needed on the host: the guests run as root).
    eprintln!("xtask: $ cargo xtask kernels");
    kernels::kernels(kernels::Opts::all())?;
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
