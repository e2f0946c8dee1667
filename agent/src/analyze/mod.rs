//! Offline analysis of JSONL snapshots (issue 3) — being written.
use std::process::ExitCode;

#[derive(Debug, Clone, clap::Args)]
pub struct AnalyzeArgs {}

pub fn main(_args: AnalyzeArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not yet")
}
