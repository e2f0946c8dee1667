//! `cargo xtask test`: every test the project has, in one command.

use std::process::Command;

use crate::setup::{run, workspace_root};

pub fn test_all() -> anyhow::Result<()> {
    let root = workspace_root();
    let cargo = || {
        let mut c = Command::new("cargo");
        c.current_dir(&root);
        c
    };
    // Lints first: cheapest failure. The eBPF crate is checked by its own build (build.rs).
    run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    // Unit, integration and privileged tests (privileged ones serialize themselves, need root,
    // and fail instead of skipping when CI=true), docker e2e (crate `e2e`).
    run(cargo().args(["test", "--all-targets"]))?;
    // The analyzer-only build (what `cargo install --path agent --no-default-features` gives).
    run(cargo().args(["test", "-p", "blkio-agent", "--no-default-features"]))?;
    Ok(())
}
