//! Developer tasks: `cargo xtask <task>`. The README's two commands are `cargo xtask run` and
//! `cargo xtask test`; both install what they need first (`setup`), so they work on a fresh
//! machine of this project's kind.

mod bench;
mod e2e;
mod image;
mod kernels;
mod setup;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "blkio-agent developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the toolchain pieces and packages the build and tests need (idempotent).
    Setup,
    /// Set up, build in release mode and run `blkio-agent run` with the given arguments.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up and run every test: unit, integration, privileged eBPF (needs root), docker e2e.
    Test,
    /// Build the container image (static musl binary, FROM scratch).
    Image {
        #[arg(long, default_value = "blkio-agent:dev")]
        tag: String,
    },
    /// End-to-end test on a kind cluster (needs docker, kind, kubectl, helm).
    E2e,
    /// Overhead benchmark (issue 6): kernel ns/I/O vs biolatency, fio IOPS, snapshot cost, map
    /// memory; writes docs/performance.md (needs root, fio, bpftool, libbpf-tools).
    BenchOverhead(bench::Opts),
    /// Kernel matrix (issue 11): boot the newest Debian cloud kernel of 5.10, 6.1, 6.12 and sid
    /// under qemu and check every attach mode on virtio-blk, NVMe, null_blk and scsi_debug.
    Kernels(kernels::Opts),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::setup(),
        Task::Run { args } => setup::setup().and_then(|()| setup::run_agent(&args)),
        Task::Test => setup::setup().and_then(|()| test::test_all()),
        Task::Image { tag } => image::build_image(&tag),
        Task::E2e => e2e::kind_e2e(),
        Task::BenchOverhead(opts) => bench::bench_overhead(opts),
        Task::Kernels(opts) => kernels::kernels(opts),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
