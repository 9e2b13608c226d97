//! Faults of one output while the others go on: a vanished SRT listener (the uplink retries),
//! a killed WHIP server (the egress retries and reconnects), an unwritable HLS folder (HLS
//! retries while a browser keeps playing).
//!
//! Part of the fault suite: the real `hybridlive run` binary under the faults a live class
//! meets. Every test runs in a network and mount namespace of its own (fixed ports cannot
//! collide with other runs; tmpfs and read-only mounts stay private), drives the runner through
//! its `--json` events and HTTP API, injects one fault with real components and asserts what a
//! viewer or the host would notice. Each test prints one row of the reliability table; with
//! `HYBRIDLIVE_FAULT_REPORT=FILE` the rows are also appended there as JSON lines
//! (`scripts/faults` runs the whole suite, `--test 'faults_*'`, with 20 kills and prints the
//! table).
//!
//! `cargo nextest run -p hybridlive --test faults_outputs`

use hybridlive_testkit::faults::{
    ENCODERS, HLS, Progress, RECORD, TEST_SOURCE, Viewer, WEBRTC, Watched, assert_only_failed,
    assert_plays, assert_stopped, backoffs, failures_of, playback, report, write_config,
};
use hybridlive_testkit::process::{ChildGuard, gst_launch, sh};
use hybridlive_testkit::runner_child::{RunnerChild, RunnerCommand};
use hybridlive_testkit::{eventually, in_private_namespaces, scratch_dir};
use std::io::{BufRead as _, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The `hybridlive` binary under test.
const HYBRIDLIVE: &str = env!("CARGO_BIN_EXE_hybridlive");

const UPLINK: &str = r#"
[outputs.uplink]
type = "srt"
inputs = ["video", "audio"]
uri = "srt://127.0.0.1:9300?mode=caller"
"#;

fn srt_listener(file: &Path) -> ChildGuard {
    gst_launch(&format!(
        "srtsrc uri=srt://127.0.0.1:9300?mode=listener ! filesink location={}",
        file.display()
    ))
}

#[test]
fn srt_listener_gone_the_uplink_retries_and_the_rest_goes_on() {
    if !in_private_namespaces("srt_listener_gone_the_uplink_retries_and_the_rest_goes_on") {
        return;
    }
    let dir = scratch_dir("faults", "srt-output");
    let config = write_config(
        Path::new(HYBRIDLIVE),
        &dir,
        &[TEST_SOURCE, ENCODERS, HLS, RECORD, WEBRTC, UPLINK],
    );
    let first = dir.join("uplink-1.ts");
    let listener = srt_listener(&first);
    let mut runner = RunnerCommand::binary(Path::new(HYBRIDLIVE), &config, &dir)
        .quiet()
        .start();
    let started = runner.wait_for_event("recording-started", Duration::from_secs(30));
    let recording = PathBuf::from(started["path"].as_str().unwrap());
    let viewer = Viewer::join(&runner);
    let watched = Watched {
        runner: &runner,
        recording: Some(recording.clone()),
        viewer: Some(&viewer),
        uplink: Some(first.clone()),
    };
    let p = watched.all_advance(&Progress::default(), &[], "every output to produce");

    // The far end vanishes without a word (SIGKILL): SRT notices when the peer falls silent.
    listener.kill();
    let gone_at = Instant::now();
    runner.wait_for_output_event("output-failed", "uplink");
    let noticed = gone_at.elapsed().as_secs_f64();
    let watched = Watched {
        runner: &runner,
        recording: Some(recording.clone()),
        viewer: Some(&viewer),
        uplink: None,
    };
    let p = watched.all_advance(&p, &["uplink"], "the other outputs to go on");
    // It retries with back-off while the listener is away.
    runner.wait_for_output_event("output-restart", "uplink");
    runner.wait_for_output_event("output-failed", "uplink");
    let state = runner.status()["outputs"]["uplink"].clone();
    assert_ne!(state["state"], "running", "{state}");
    assert!(state["last_error"].is_string(), "{state}");
    watched.all_advance(&p, &["uplink"], "the other outputs to go on");

    // The listener returns: the uplink reconnects on its next try.
    let second = dir.join("uplink-2.ts");
    let listener = srt_listener(&second);
    let back_at = Instant::now();
    let watched = Watched {
        runner: &runner,
        recording: Some(recording.clone()),
        viewer: Some(&viewer),
        uplink: Some(second.clone()),
    };
    let p = eventually(
        Duration::from_secs(60),
        "the uplink to deliver again",
        || {
            let now = watched.progress();
            (now.uplink_bytes > 100_000).then_some(now)
        },
    );
    let reconnected = back_at.elapsed().as_secs_f64();
    watched.all_advance(&p, &[], "every output to produce");
    let (failed, restarts) = failures_of(&runner, "uplink");
    assert_only_failed(&runner, "uplink");
    drop(viewer);
    let stopped_at = Instant::now();
    assert_stopped(&mut runner);
    let ran = stopped_at
        .duration_since(runner.seen_at(&started))
        .as_secs_f64();
    let played = assert_plays(&recording);
    listener.interrupt();
    // A live stream cut by the sender's shutdown may end in half a frame: what counts is that
    // the reconnected uplink carried decodable pictures.
    let uplink = playback(&second);
    assert!(
        uplink.frames >= 30,
        "{}: {} frames decode after the reconnection ({})",
        second.display(),
        uplink.frames,
        uplink.errors
    );
    report(
        "output peer gone: SRT listener of the uplink killed, back later",
        1,
        &format!(
            "uplink reported `output-failed` {noticed:.1} s after the peer vanished, retried \
             with back-off ({} s; {restarts} restarts), delivered again {reconnected:.1} s after \
             the listener returned ({} frames decodable); HLS, recording and WHEP never stopped",
            backoffs(&failed),
            uplink.frames
        ),
        &format!(
            "uplink: the time it was away; recording: {:.2} s of {ran:.1} s",
            (ran - played.duration).max(0.0)
        ),
    );
    assert!((ran - played.duration).abs() <= 1.0);
    let _ = std::fs::remove_dir_all(&dir);
}

const WHIP_PORT: u16 = 8190;

const WHIP: &str = r#"
[outputs.whip]
type = "whip"
inputs = ["video", "voice"]
endpoint = "http://127.0.0.1:8190/whip/endpoint"
loopback_only = true
"#;

/// The WHIP server (`whipserversrc`) as a process of its own, so that it can die as a server
/// does: it writes the number of video frames received to `HYBRIDLIVE_WHIP_FRAMES`.
#[test]
#[ignore = "helper process of whip_server_down_the_egress_retries_and_the_rest_goes_on"]
fn whip_server_process() {
    let Some(count_file) = std::env::var_os("HYBRIDLIVE_WHIP_FRAMES").map(PathBuf::from) else {
        return;
    };
    let server = hybridlive_testkit::WhipServer::start(WHIP_PORT);
    let tmp = count_file.with_extension("tmp");
    loop {
        if std::fs::write(&tmp, server.frames().to_string()).is_ok() {
            let _ = std::fs::rename(&tmp, &count_file);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn whip_server(count_file: &Path) -> ChildGuard {
    ChildGuard(
        Command::new(std::env::current_exe().expect("test binary"))
            .args(["--ignored", "--exact", "whip_server_process", "--nocapture"])
            .env("HYBRIDLIVE_WHIP_FRAMES", count_file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the WHIP server process"),
    )
}

fn whip_frames(count_file: &Path) -> u64 {
    std::fs::read_to_string(count_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn whip_server_down_the_egress_retries_and_the_rest_goes_on() {
    if !in_private_namespaces("whip_server_down_the_egress_retries_and_the_rest_goes_on") {
        return;
    }
    let dir = scratch_dir("faults", "whip-down");
    let config = write_config(
        Path::new(HYBRIDLIVE),
        &dir,
        &[TEST_SOURCE, ENCODERS, HLS, RECORD, WEBRTC, WHIP],
    );
    let first = dir.join("whip-1.frames");
    let server = whip_server(&first);
    let mut runner = RunnerCommand::binary(Path::new(HYBRIDLIVE), &config, &dir)
        .quiet()
        .start();
    let started = runner.wait_for_event("recording-started", Duration::from_secs(30));
    let recording = PathBuf::from(started["path"].as_str().unwrap());
    runner.wait_for_output_event("output-connected", "whip");
    eventually(Duration::from_secs(30), "frames at the WHIP server", || {
        (whip_frames(&first) >= 60).then_some(())
    });
    let viewer = Viewer::join(&runner);
    let watched = Watched {
        runner: &runner,
        recording: Some(recording.clone()),
        viewer: Some(&viewer),
        uplink: None,
    };
    let p = watched.all_advance(&Progress::default(), &[], "every output to produce");

    // The SFU dies without a word (SIGKILL): no DELETE, no ICE failure on GStreamer 1.22; the
    // runner notices the silence of its RTCP.
    server.kill();
    let gone_at = Instant::now();
    let failed = runner.wait_for_output_event("output-failed", "whip");
    let noticed = gone_at.elapsed().as_secs_f64();
    let p = watched.all_advance(&p, &[], "the other outputs to go on");
    // It retries with back-off while the server is away; each try is refused.
    runner.wait_for_output_event("output-restart", "whip");
    runner.wait_for_output_event("output-failed", "whip");
    let state = runner.status()["outputs"]["whip"].clone();
    assert!(
        state["state"] != "connected" && state["state"] != "running",
        "{state}"
    );
    assert!(state["last_error"].is_string(), "{state}");
    assert!(state["retry_in_s"].is_number(), "{state}");
    let p = watched.all_advance(&p, &[], "the other outputs to go on");

    // The server comes back: the output reconnects on its next try and frames arrive again.
    let second = dir.join("whip-2.frames");
    let server = whip_server(&second);
    let back_at = Instant::now();
    runner.wait_for_output_event("output-connected", "whip");
    eventually(
        Duration::from_secs(30),
        "frames at the WHIP server again",
        || (whip_frames(&second) >= 60).then_some(()),
    );
    let reconnected = back_at.elapsed().as_secs_f64();
    assert_eq!(runner.status()["outputs"]["whip"]["state"], "connected");
    watched.all_advance(&p, &[], "every output to produce");
    let (failures, restarts) = failures_of(&runner, "whip");
    assert_only_failed(&runner, "whip");
    drop(viewer);
    let stopped_at = Instant::now();
    assert_stopped(&mut runner);
    let ran = stopped_at
        .duration_since(runner.seen_at(&started))
        .as_secs_f64();
    let played = assert_plays(&recording);
    let frames_after = whip_frames(&second);
    server.kill();
    report(
        "output peer gone: WHIP server (whipserversrc) killed while publishing, back later",
        1,
        &format!(
            "whip reported `output-failed` {noticed:.1} s after the server vanished (\"{}\"), \
             retried with back-off ({} s; {restarts} restarts), connected again and frames \
             arriving {reconnected:.1} s after the server returned ({frames_after} frames); \
             HLS, recording and WHEP never stopped",
            failed["error"].as_str().unwrap_or_default(),
            backoffs(&failures)
        ),
        &format!(
            "whip: the time its server was away; recording: {:.2} s of {ran:.1} s",
            (ran - played.duration).max(0.0)
        ),
    );
    assert!((ran - played.duration).abs() <= 1.0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn hls_folder_unwritable_hls_retries_and_the_rest_goes_on() {
    if !in_private_namespaces("hls_folder_unwritable_hls_retries_and_the_rest_goes_on") {
        return;
    }
    let dir = scratch_dir("faults", "hls-readonly");
    let config = write_config(
        Path::new(HYBRIDLIVE),
        &dir,
        &[TEST_SOURCE, ENCODERS, HLS, RECORD, WEBRTC],
    );
    let mut runner = RunnerCommand::binary(Path::new(HYBRIDLIVE), &config, &dir)
        .quiet()
        .start();
    let started = runner.wait_for_event("recording-started", Duration::from_secs(30));
    let recording = PathBuf::from(started["path"].as_str().unwrap());
    let viewer = Viewer::join(&runner);
    let watched = Watched {
        runner: &runner,
        recording: Some(recording.clone()),
        viewer: Some(&viewer),
        uplink: None,
    };
    let p = watched.all_advance(&Progress::default(), &[], "every output to produce");
    // A browser plays the HLS fallback (hls.js in Chromium) from before the fault until well
    // into the restarted output's segments.
    let browser = HlsBrowser::start(&runner);

    // The folder turns read-only under the running output (root ignores permissions; a
    // read-only bind mount stops root too). Made read-only where nothing writes, then moved
    // over the folder at once: remounting in place fails ("mount point is busy") when the
    // output opens its next segment through the new mount in between.
    let hls = dir.join("hls");
    let staging = dir.join("hls-readonly");
    std::fs::create_dir(&staging).unwrap();
    sh(&format!(
        "mount --bind {0} {1} && mount -o remount,bind,ro {1} && mount --move {1} {0}",
        hls.display(),
        staging.display()
    ));
    let failed = runner.wait_for_output_event("output-failed", "hls");
    let error = failed["error"].as_str().unwrap_or_default().to_string();
    let p = watched.all_advance(&p, &["hls"], "the other outputs to go on");
    runner.wait_for_output_event("output-restart", "hls");
    runner.wait_for_output_event("output-failed", "hls");
    let p = watched.all_advance(&p, &["hls"], "the other outputs to go on");
    // The playlist still answers (the last one written), so players keep what they have.
    let (status, _) = runner.get("/hls/live.m3u8").into_parts();
    assert_eq!(status, 200);

    let before = media_sequence(&runner).unwrap_or(0);
    let last_before = runner.last_segment().unwrap_or_default();
    sh(&format!("umount {}", hls.display()));
    let back_at = Instant::now();
    // Back on its next try: new segments, numbered on from the ones players already have.
    let last_after = eventually(Duration::from_secs(60), "HLS to write again", || {
        runner.last_segment().filter(|s| *s > last_before)
    });
    let after = media_sequence(&runner).unwrap_or(0);
    assert!(
        after >= before,
        "the media sequence went back from {before} to {after}"
    );
    // The playlist players reload: the old run's last segment still listed (the window is 5
    // segments), then a discontinuity, then the new run; every listed segment is served and
    // decodes.
    let (_, playlist) = runner.get("/hls/live.m3u8").into_parts();
    let playlist = String::from_utf8_lossy(&playlist).into_owned();
    let listed: Vec<&str> = playlist.lines().filter(|l| l.ends_with(".ts")).collect();
    let old_at = listed
        .iter()
        .position(|l| *l == last_before)
        .unwrap_or_else(|| panic!("{last_before} left the window at once:\n{playlist}"));
    let tagged = playlist
        .split(&format!("{last_before}\n"))
        .nth(1)
        .is_some_and(|rest| rest.starts_with("#EXT-X-DISCONTINUITY\n"));
    assert!(
        tagged && old_at + 1 < listed.len(),
        "no discontinuity after the old run's {last_before}:\n{playlist}"
    );
    for segment in &listed {
        let (status, data) = runner.get(&format!("/hls/{segment}")).into_parts();
        assert_eq!(
            status, 200,
            "{segment} is listed but not served:\n{playlist}"
        );
        let file = dir.join("listed.ts");
        std::fs::write(&file, data).unwrap();
        assert_plays(&file);
    }
    let recovered = back_at.elapsed().as_secs_f64();
    watched.all_advance(&p, &[], "every output to produce");
    let (failures, restarts) = failures_of(&runner, "hls");
    assert_only_failed(&runner, "hls");
    let in_browser = browser.finish();
    drop(viewer);
    let stopped_at = Instant::now();
    // The failed outputs were taken down whole (tear_down in output.rs): SIGINT finishes every
    // output and the runner exits 0 on its own, without its shutdown watchdog.
    let status = runner.stop();
    assert!(status.success(), "the runner failed to stop: {status}");
    assert!(
        runner.logged("shutdown-stuck").is_empty(),
        "the shutdown hung after the HLS restarts: {:?}",
        runner.logged("shutdown-stuck")
    );
    let ran = stopped_at
        .duration_since(runner.seen_at(&started))
        .as_secs_f64();
    let played = assert_plays(&recording);
    report(
        "output storage gone: HLS folder turned read-only, writable later",
        1,
        &format!(
            "HLS reported `output-failed` ({error}), retried with back-off ({} s; {restarts} \
             restarts), wrote again {recovered:.1} s after the folder came back ({last_before} -> \
             {last_after}, media sequence {before} -> {after}, EXT-X-DISCONTINUITY between the \
             runs, the old run's segments still listed); hls.js in Chromium played on across the \
             discontinuity ({in_browser}); recording and WHEP never stopped; \
             SIGINT: exit 0",
            backoffs(&failures)
        ),
        &format!(
            "HLS: the segments of the time it could not write; recording: {:.2} s of {ran:.1} s",
            (ran - played.duration).max(0.0)
        ),
    );
    assert!((ran - played.duration).abs() <= 1.0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The viewer page in HLS mode in headless Chromium (`tests/browser/viewer.mjs`), watched until
/// it has played a segment of the HLS output's first run and then 2 s into the first segment
/// after a discontinuity (hls.js numbers runs in `frag.cc`).
struct HlsBrowser {
    child: ChildGuard,
    output: Option<std::thread::JoinHandle<String>>,
}

impl HlsBrowser {
    /// Starts the browser and returns once it plays the first run's segments.
    fn start(runner: &RunnerChild) -> HlsBrowser {
        let driver =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/browser/viewer.mjs");
        // Evaluated every 200 ms: notes (and logs, for the test to wait on) when a first-run
        // fragment is playing, then the first fragment of a later run it plays, and holds once
        // it has played on for 2 s from there.
        let wait = "(() => { const v = document.querySelector('video'); \
            const h = window.viewer && window.viewer.hls; \
            const d = h && h.latestLevelDetails; if (!d) return false; \
            const f = d.fragments.find((f) => v.currentTime >= f.start && v.currentTime < f.end); \
            if (f && f.cc === 0 && !v.paused && !window.playedFirstRun) { \
              window.playedFirstRun = true; console.log('hybridlive: first run playing'); } \
            if (f && f.cc > 0 && window.playedFirstRun && !window.newRun) { \
              window.newRun = { sn: f.sn, cc: f.cc, start: f.start }; } \
            const n = window.newRun; \
            if (n && f && f.cc >= n.cc && !v.paused && v.currentTime > n.start + 2) { \
              window.result = { cc: n.cc, sn: n.sn, played: v.currentTime - n.start, \
                                error: v.error ? v.error.message : null }; } \
            return window.result !== undefined; })()";
        let mut child = Command::new("node")
            .arg(&driver)
            .arg(format!("http://{}/?mode=hls", runner.addr()))
            .arg("90")
            .env("WAIT", wait)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("node runs (scripts/setup installs the browser test driver)");
        let stderr = child.stderr.take().expect("stderr");
        let (playing_tx, playing) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("hybridlive: first run playing") {
                    let _ = playing_tx.send(());
                }
                eprintln!("chromium: {line}");
            }
        });
        let mut stdout = child.stdout.take().expect("stdout");
        let output = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text);
            text
        });
        playing
            .recv_timeout(Duration::from_secs(60))
            .expect("hls.js in Chromium to play the first run");
        HlsBrowser {
            child: ChildGuard(child),
            output: Some(output),
        }
    }

    /// Waits for the page's verdict; returns it for the report.
    fn finish(mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(90);
        let status = loop {
            if let Some(status) = self.child.0.try_wait().expect("wait for node") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "hls.js did not play 2 s past the discontinuity"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let output = self
            .output
            .take()
            .and_then(|o| o.join().ok())
            .unwrap_or_default();
        assert!(
            status.success(),
            "hls.js did not play across the restart: {output}"
        );
        let result: serde_json::Value = serde_json::from_str(output.trim()).unwrap_or_default();
        assert!(
            result["error"].is_null(),
            "the video element failed: {result}"
        );
        format!(
            "segment {} of run {} played {:.1} s",
            result["sn"],
            result["cc"],
            result["played"].as_f64().unwrap_or(0.0)
        )
    }
}

/// `#EXT-X-MEDIA-SEQUENCE` of the live playlist.
fn media_sequence(runner: &RunnerChild) -> Option<u64> {
    let (status, body) = runner.get("/hls/live.m3u8").into_parts();
    (status == 200).then_some(())?;
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-MEDIA-SEQUENCE:"))
        .and_then(|v| v.trim().parse().ok())
}
