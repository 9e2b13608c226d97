//! WHEP viewer churn through the runner, inside a network namespace of its own: viewers that
//! DELETE, vanish, or abort before or during ICE leave nothing behind in the runner.
//!
//! CI runs a short churn; `hybridlive-churn --cycles 200` runs the long one with the same code.

use hybridlive_loadtest::churn::{ChurnConfig, Kind, churn};
use hybridlive_loadtest::runner::{Runner, child_main};
use hybridlive_testkit::in_private_netns;
use hybridlive_testkit::runner_child::{ENTRY, RunnerCommand};
use std::time::Duration;

/// The runner in a child process: the churn test starts this test binary again with only this
/// test selected.
#[test]
#[ignore = "entry point of the runner child process started by the churn test"]
fn runner_child_process() {
    child_main();
}

#[test]
fn viewer_churn_leaves_no_session_branch_descriptor_or_thread_behind() {
    if !in_private_netns("viewer_churn_leaves_no_session_branch_descriptor_or_thread_behind") {
        return;
    }
    hybridlive_loadtest::init().unwrap();
    let dir = std::env::temp_dir().join(format!("hybridlive-churn-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("churn.toml");
    std::fs::write(&file, hybridlive_loadtest::CHURN_PIPELINE).unwrap();
    let runner = Runner::start(
        RunnerCommand::entry(ENTRY, &file, &dir),
        Duration::from_secs(60),
    )
    .unwrap();
    // The warm-up runs as many cycles as the measurement, so the baseline is taken after the
    // runner has already held as many viewers at once: what grows after that is kept per
    // session, not the high-water mark of the heap.
    let config = ChurnConfig {
        cycles: 40,
        warmup: 40,
        ..Default::default()
    };
    let report = churn(&runner, &config).unwrap();
    eprintln!("churn: {:#}", report.to_json());

    // Every kind of leaving was exercised, and viewers that joined really received video.
    for (kind, n) in &report.cycles {
        assert_eq!(*n, config.cycles / Kind::ALL.len(), "{kind:?}");
    }
    assert_eq!(report.answered, config.cycles + config.warmup);
    assert!(
        report.received > 0 && report.starved == 0,
        "{:#}",
        report.to_json()
    );
    assert!(
        report.peak_sessions >= 2.0,
        "viewers overlapped: {}",
        report.peak_sessions
    );

    // Nothing of any session is left: in the session table, the status page, the pipeline.
    assert_eq!(report.left_sessions, 0.0);
    assert_eq!(report.left_status_viewers, 0);
    assert_eq!(report.left_webrtcbins, 0.0);
    assert_eq!(report.left_tee_pads, 0.0);
    // Descriptors come back exactly: every session opens sockets (ICE, DTLS) and a leaked one
    // would show. Threads: the same count, give or take one worker of GLib's shared thread
    // pool that may be idle or just retired at the moment of the sample.
    assert!(
        report.after.fds <= report.baseline.fds,
        "file descriptors {} -> {}",
        report.baseline.fds,
        report.after.fds
    );
    assert!(
        report.after.threads <= report.baseline.threads + 1,
        "threads {} -> {}",
        report.baseline.threads,
        report.after.threads
    );
    assert!(
        report.rss_growth_mb() < 10.0,
        "RSS grew {:.1} MB over {} cycles",
        report.rss_growth_mb(),
        config.cycles
    );
    drop(runner);
    let _ = std::fs::remove_dir_all(&dir);
}
