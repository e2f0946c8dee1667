//! (in progress)
use std::process::ExitCode;
pub fn main(_args: crate::cli::RunArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not yet")
}
