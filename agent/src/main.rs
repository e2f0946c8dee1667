use std::process::ExitCode;

use blkio_agent::cli::{Cli, Command};
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        #[cfg(feature = "ebpf")]
        Command::Run(args) => blkio_agent::run::main(*args),
        Command::Analyze(args) => blkio_agent::analyze::main(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            // One line, naming the fix where there is one (the error texts do).
            eprintln!("blkio-agent: error: {}", error_chain(&err));
            ExitCode::from(1)
        }
    }
}

fn error_chain(err: &anyhow::Error) -> String {
    err.chain().map(|e| e.to_string()).collect::<Vec<_>>().join(": ")
}
