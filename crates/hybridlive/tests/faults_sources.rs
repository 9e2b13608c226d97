//! Faults of the primary source: a killed SRT sender, a stopped RTSP server, a killed RTMP
//! publisher, a file truncated while read. The slate covers within the stall timeout, HLS, the
//! recording and a WHEP viewer keep going, and the primary comes back on air.
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
//! `cargo nextest run -p hybridlive --test faults_sources`

use hybridlive_testkit::faults::{
    ENCODERS, HLS, Progress, RECORD, Viewer, WEBRTC, Watched, assert_plays, gst_init, playback,
    report, write_config,
};
use hybridlive_testkit::process::helper_process;
use hybridlive_testkit::runner_child::RunnerCommand;
use hybridlive_testkit::senders::{self, FfmpegOptions, Redialing};
use hybridlive_testkit::{eventually, in_private_namespaces, scratch_dir};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The `hybridlive` binary under test.
const HYBRIDLIVE: &str = env!("CARGO_BIN_EXE_hybridlive");

/// `stall_timeout` of the sources below: seconds without media before the slate takes over.
const STALL_S: f64 = 1.0;

/// A contribution encoder dialing an SRT listener on 127.0.0.1:`port`.
fn srt_sender(port: u16) -> String {
    format!(
        "videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=180,framerate=30/1 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 ! mpegtsmux name=m \
         ! srtsink uri=srt://127.0.0.1:{port}?mode=caller \
         audiotestsrc is-live=true ! audioconvert ! avenc_aac ! m."
    )
}

/// The RTSP server of the source test (gst-rtsp-server), in a process of its own so that it
/// can be stopped for real: the test starts this test binary again with only this selected.
#[test]
#[ignore = "helper process of rtsp_server_stopped_the_slate_covers_and_the_camera_comes_back"]
fn rtsp_server_process() {
    use gst_rtsp_server::prelude::*;
    gst_init();
    let server = gst_rtsp_server::RTSPServer::new();
    server.set_address("127.0.0.1");
    server.set_service("8554");
    let factory = gst_rtsp_server::RTSPMediaFactory::new();
    factory.set_launch(
        "( videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=180,framerate=30/1 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 ! rtph264pay name=pay0 pt=96 \
         audiotestsrc is-live=true ! audioconvert ! opusenc ! rtpopuspay name=pay1 pt=97 )",
    );
    factory.set_shared(true);
    server
        .mount_points()
        .expect("mount points")
        .add_factory("/live", factory);
    let main_loop = glib::MainLoop::new(None, false);
    let _source = server
        .attach(None)
        .expect("the RTSP server binds 127.0.0.1:8554");
    main_loop.run();
}

/// Runs the whole programme (HLS, recording, a WHEP viewer) from the source in `source_toml`,
/// takes the primary away by dropping what `primary` returned, brings it back with `primary`
/// again, and checks what viewers and the host notice. Returns nothing: it reports a row.
fn primary_source_dies<P>(test: &str, fault: &str, source_toml: &str, primary: impl Fn() -> P) {
    let dir = scratch_dir("faults", test);
    // The primary first: `validate` (in write_config) refuses a file source that is missing.
    let live = primary();
    let config = write_config(
        Path::new(HYBRIDLIVE),
        &dir,
        &[source_toml, ENCODERS, HLS, RECORD, WEBRTC],
    );
    let mut runner = RunnerCommand::binary(Path::new(HYBRIDLIVE), &config, &dir)
        .quiet()
        .start();
    let started = runner.wait_for_event("recording-started", Duration::from_secs(30));
    runner.wait_for_source("primary", Duration::from_secs(30));
    runner.forget("source");
    let viewer = Viewer::join(&runner);
    let watched = Watched {
        runner: &runner,
        recording: Some(PathBuf::from(started["path"].as_str().unwrap())),
        viewer: Some(&viewer),
        uplink: None,
    };
    let p = watched.all_advance(&Progress::default(), &[], "every output to produce");
    let p = watched.all_advance(&p, &[], "every output to go on producing");

    // The primary dies: the slate is on air within the stall timeout (plus the runner's 1 s
    // status tick that reports it), and every output goes on.
    let lost_at = Instant::now();
    drop(live);
    runner.wait_for_source("fallback", Duration::from_secs(20));
    let to_slate = lost_at.elapsed().as_secs_f64();
    let watched = Watched {
        runner: &runner,
        recording: Some(PathBuf::from(started["path"].as_str().unwrap())),
        viewer: Some(&viewer),
        uplink: None,
    };
    let p = watched.all_advance(&p, &[], "every output to go on over the slate");
    let p = watched.all_advance(&p, &[], "every output to stay up over the slate");

    // It returns and is taken back.
    let back_at = Instant::now();
    let _live = primary();
    runner.wait_for_source("primary", Duration::from_secs(30));
    let to_primary = back_at.elapsed().as_secs_f64();
    let watched = Watched {
        runner: &runner,
        recording: Some(PathBuf::from(started["path"].as_str().unwrap())),
        viewer: Some(&viewer),
        uplink: None,
    };
    let p = watched.all_advance(&p, &[], "every output to go on with the primary back");
    let frames = p.viewer_frames;
    // What HLS players fetch decodes (the primary's pictures and sound).
    let segment = p.hls_segment.clone().expect("an HLS segment");
    let (status, data) = runner.get(&format!("/hls/{segment}")).into_parts();
    assert_eq!(status, 200, "GET /hls/{segment}");
    let fetched = dir.join("fetched.ts");
    std::fs::write(&fetched, data).unwrap();
    let segment_frames = assert_plays(&fetched).frames;
    assert!(segment_frames > 0, "{segment} holds no video frame");

    // No output noticed: nothing failed, nothing restarted.
    let failures = runner.logged("output-failed");
    let restarts: u64 = runner.status()["outputs"]
        .as_object()
        .map(|o| o.values().filter_map(|v| v["restarts"].as_u64()).sum())
        .unwrap_or(0);
    drop(viewer);
    let stopped_at = Instant::now();
    let status = runner.stop();
    let file = PathBuf::from(started["path"].as_str().unwrap());
    let ran = stopped_at
        .duration_since(runner.seen_at(&started))
        .as_secs_f64();
    let played = playback(&file);
    report(
        fault,
        1,
        &format!(
            "slate on air {to_slate:.1} s after the loss (stall_timeout {STALL_S} s + 1 s status \
             tick), primary back {to_primary:.1} s after it returned; HLS, recording and a WHEP \
             viewer ({frames} frames) kept going; {} output failures, {restarts} restarts",
            failures.len()
        ),
        &format!(
            "{:.2} s of {ran:.1} s (recording vs time run)",
            (ran - played.duration).max(0.0)
        ),
    );
    assert!(failures.is_empty(), "outputs failed: {failures:?}");
    assert_eq!(restarts, 0, "outputs restarted");
    assert!(status.success(), "exit status {status}");
    assert!(
        to_slate <= STALL_S + 3.0,
        "the slate came {to_slate:.1} s after the loss"
    );
    let played = assert_plays(&file);
    assert!(
        (ran - played.duration).abs() <= 1.0,
        "ran {ran:.2} s, recorded {:.2} s",
        played.duration
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn srt_sender_killed_the_slate_covers_and_the_sender_comes_back() {
    if !in_private_namespaces("srt_sender_killed_the_slate_covers_and_the_sender_comes_back") {
        return;
    }
    primary_source_dies(
        "srt-source",
        "primary source: SRT sender killed (`kill -9`) and back",
        r#"
[sources.cam]
type = "srt"
uri = "srt://127.0.0.1:9000?mode=listener"
width = 640
height = 360
stall_timeout = 1
"#,
        || Redialing::gst_launch(srt_sender(9000)),
    );
}

#[test]
fn rtsp_server_stopped_the_slate_covers_and_the_camera_comes_back() {
    if !in_private_namespaces("rtsp_server_stopped_the_slate_covers_and_the_camera_comes_back") {
        return;
    }
    primary_source_dies(
        "rtsp-source",
        "primary source: RTSP server (gst-rtsp-server) stopped and restarted",
        r#"
[sources.cam]
type = "rtsp"
uri = "rtsp://127.0.0.1:8554/live"
width = 640
height = 360
stall_timeout = 1
"#,
        || {
            let server = helper_process("rtsp_server_process");
            // Listening before the runner dials.
            eventually(Duration::from_secs(20), "the RTSP server to listen", || {
                TcpStream::connect("127.0.0.1:8554").ok().map(|_| ())
            });
            server
        },
    );
}

#[test]
fn rtmp_publisher_killed_the_slate_covers_and_the_publisher_comes_back() {
    if !in_private_namespaces("rtmp_publisher_killed_the_slate_covers_and_the_publisher_comes_back")
    {
        return;
    }
    let dir = scratch_dir("faults", "rtmp-server");
    let _nginx = senders::nginx_rtmp(&dir, 1935);
    // uridecodebin3 picks rtmp2src (rank primary + 1) for rtmp://; it plays from nginx-rtmp
    // (ffmpeg's `-listen 1` server is what it could not play from), so the runner keeps it.
    primary_source_dies(
        "rtmp-source",
        "primary source: RTMP publisher (ffmpeg into nginx-rtmp) killed and back",
        r#"
[sources.cam]
type = "rtmp"
uri = "rtmp://127.0.0.1:1935/live/cam"
width = 640
height = 360
stall_timeout = 1
"#,
        // A contribution encoder publishing like OBS would: ffmpeg (its own RTMP client, not
        // GStreamer's) sending H.264 + AAC in FLV, paced in real time.
        || {
            senders::ffmpeg_rtmp(
                "rtmp://127.0.0.1:1935/live/cam",
                FfmpegOptions {
                    light: true,
                    ..FfmpegOptions::default()
                },
            )
        },
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Puts the complete programme file in place (atomically); dropping it truncates the file to
/// a tenth while the runner reads it.
struct FileInPlace {
    live: PathBuf,
}

impl Drop for FileInPlace {
    fn drop(&mut self) {
        if let Ok(file) = std::fs::OpenOptions::new().write(true).open(&self.live)
            && let Ok(meta) = file.metadata()
        {
            let _ = file.set_len(meta.len() / 10);
        }
    }
}

#[test]
fn file_truncated_while_read_the_slate_covers_and_the_file_comes_back() {
    if !in_private_namespaces("file_truncated_while_read_the_slate_covers_and_the_file_comes_back")
    {
        return;
    }
    // Not the scratch folder of the run (primary_source_dies starts that afresh).
    let dir = scratch_dir("faults", "file-master");
    let master = dir.join("master.mp4");
    let made = Command::new("gst-launch-1.0")
        .args(["-q", "videotestsrc", "num-buffers=900", "pattern=ball"])
        .args(["!", "video/x-raw,width=320,height=180,framerate=30/1"])
        .args(["!", "x264enc", "speed-preset=ultrafast", "key-int-max=30"])
        .args(["!", "h264parse", "!", "mp4mux", "name=m", "!", "filesink"])
        .arg(format!("location={}", master.display()))
        .args(["audiotestsrc", "num-buffers=1400", "!", "audioconvert"])
        .args(["!", "avenc_aac", "!", "aacparse", "!", "m."])
        .status()
        .expect("gst-launch-1.0");
    assert!(made.success(), "cannot make the programme file");
    let live = dir.join("programme.mp4");
    let source = format!(
        r#"
[sources.cam]
type = "file"
location = "{}"
loop = true
width = 640
height = 360
stall_timeout = 1
"#,
        live.display()
    );
    primary_source_dies(
        "file-source",
        "primary source: file truncated while read, then restored",
        &source,
        || {
            let tmp = live.with_extension("tmp");
            std::fs::copy(&master, &tmp).expect("copy the programme");
            std::fs::rename(&tmp, &live).expect("put the programme in place");
            FileInPlace { live: live.clone() }
        },
    );
    let _ = std::fs::remove_dir_all(&dir);
}
