//! WHEP viewer churn against the runner, with the leaks counted:
//!
//! ```sh
//! cargo run --release -p hybridlive-loadtest --bin hybridlive-churn -- --cycles 200
//! ```
//!
//! Runs in a private network namespace (root needed), the runner in a child process. Prints
//! one JSON object with the counts; exits 1 when something leaked.

use anyhow::Context as _;
use clap::Parser;
use hybridlive_loadtest::churn::{ChurnConfig, churn};
use hybridlive_loadtest::runner::{ARGS_ENV, Runner, child_main};
use hybridlive_testkit::runner_child::RunnerCommand;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
struct Cli {
    /// Measured join/leave cycles (kinds in turn: delete, vanish, abort-before-ice,
    /// abort-mid-ice).
    #[arg(long, default_value_t = 200)]
    cycles: usize,
    /// Cycles before the baseline is taken: enough for the runner to have held as many
    /// viewers at once as during the measured cycles (the heap's high-water mark).
    #[arg(long, default_value_t = 100)]
    warmup: usize,
    /// Viewers joining and leaving at once.
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// Pipeline file to run instead of the built-in one (its WebRTC output must have
    /// `loopback_only = true`: the namespace has only `lo`).
    #[arg(long)]
    pipeline: Option<PathBuf>,
    /// Allowed RSS growth from baseline, MB.
    #[arg(long, default_value_t = 10.0)]
    max_rss_growth_mb: f64,
}

fn main() -> anyhow::Result<()> {
    if std::env::var_os(ARGS_ENV).is_some() {
        child_main();
    }
    let cli = Cli::parse();
    if let Some(code) = hybridlive_loadtest::reexec_in_netns(false) {
        std::process::exit(code);
    }
    hybridlive_loadtest::init()?;
    let dir = std::env::temp_dir().join(format!("hybridlive-churn-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = match &cli.pipeline {
        Some(file) => file
            .canonicalize()
            .with_context(|| format!("{}", file.display()))?,
        None => {
            let file = dir.join("churn.toml");
            std::fs::write(&file, hybridlive_loadtest::CHURN_PIPELINE)?;
            file
        }
    };
    let runner = Runner::start(
        RunnerCommand::args_in_env(&std::env::current_exe()?, &file, &dir),
        Duration::from_secs(60),
    )?;
    eprintln!(
        "runner pid {} at {}; {} warm-up + {} cycles, {} at once",
        runner.pid(),
        runner.addr(),
        cli.warmup,
        cli.cycles,
        cli.parallel
    );
    let report = churn(
        &runner,
        &ChurnConfig {
            cycles: cli.cycles,
            warmup: cli.warmup,
            parallel: cli.parallel,
            ..Default::default()
        },
    )?;
    println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    let _ = runner.stop(Duration::from_secs(10));
    let _ = std::fs::remove_dir_all(&dir);
    let leaked = report.left_sessions != 0.0
        || report.left_webrtcbins != 0.0
        || report.left_tee_pads != 0.0
        || report.left_status_viewers != 0
        || report.after.fds > report.baseline.fds
        || report.rss_growth_mb() > cli.max_rss_growth_mb;
    if leaked {
        eprintln!("LEAK: see the counts above");
        std::process::exit(1);
    }
    Ok(())
}
