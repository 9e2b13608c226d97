//! The runner's two subcommands as a stand-alone program, the way the `hybridlive` binary
//! wires them: `cargo run -p hybridlive-runner --example runner -- run pipelines/hls.toml`.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Validate and run hybridlive pipeline files")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check pipeline files and report every error.
    Validate(hybridlive_runner::ValidateArgs),
    /// Run a pipeline file until Ctrl-C.
    Run(hybridlive_runner::RunArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Validate(args) => hybridlive_runner::validate(&args),
        Command::Run(args) => hybridlive_runner::run(&args),
    }
}
