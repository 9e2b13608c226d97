//! Sources of `hybridlive run`, end to end: broken media files are refused at start naming the
//! file and the reason, an SRT contribution goes on air and the slate covers while its sender
//! is gone, and a looping file source plays longer than the file.
//!
//! `cargo nextest run -p hybridlive-runner --test sources`

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use hybridlive_testkit::media::{decoded_video_frames, ffprobe, media_duration};
use hybridlive_testkit::runner_child::{ENTRY, RunnerChild, RunnerCommand, test_runner};
use hybridlive_testkit::senders::Redialing;
use hybridlive_testkit::{eventually, metric, scratch_dir, shipped_pipeline_in};

hybridlive_testkit::runner_child_entry!();

fn file_source_pipeline(location: &str) -> String {
    format!(
        "[sources.lesson]\ntype = \"file\"\nlocation = \"{location}\"\n\n\
         [encoders.video]\ntype = \"h264\"\ninputs = [\"lesson\"]\n\n\
         [encoders.audio]\ntype = \"aac\"\ninputs = [\"lesson\"]\n\n\
         [outputs.hls]\ntype = \"hls\"\ninputs = [\"video\", \"audio\"]\n"
    )
}

/// File ingest refuses media it cannot play before anything starts: the error names the file
/// and the reason, the run exits non-zero, nothing hangs or panics.
#[test]
fn broken_file_sources_fail_at_start_naming_the_file_and_the_reason() {
    let dir = scratch_dir("runner-test", "broken-files");
    let good = dir.join("good.mp4");
    let made = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg("testsrc2=size=320x240:rate=25:duration=2")
        .args(["-c:v", "libx264", "-pix_fmt", "yuv420p"])
        .arg(&good)
        .status()
        .expect("ffmpeg");
    assert!(made.success());
    let whole = std::fs::read(&good).unwrap();
    let audio_only = dir.join("audio-only.m4a");
    let made = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i", "sine=duration=2"])
        .args(["-c:a", "aac"])
        .arg(&audio_only)
        .status()
        .expect("ffmpeg");
    assert!(made.success());
    let huge = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/media/broken/huge-dimensions.mp4")
        .canonicalize()
        .expect("committed broken media");
    let mut noise = vec![0u8; 128 * 1024];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for b in &mut noise {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = (x >> 24) as u8;
    }
    let write = |name: &str, data: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, data).unwrap();
        path
    };
    let cases: Vec<(PathBuf, &str)> = vec![
        (write("zero-length.mp4", &[]), "the file is empty"),
        (
            write("truncated.mp4", &whole[..whole.len() / 2]),
            "not playable",
        ),
        (write("garbage.mp4", &noise), "not playable"),
        (
            write("notes.mkv", b"lesson plan, not a recording\n"),
            "not playable",
        ),
        (audio_only, "has no video stream"),
        (huge, "16000x16000"),
        (dir.join("missing.mp4"), "is not a file"),
    ];
    for (file, reason) in cases {
        let toml = dir.join("broken-file.toml");
        std::fs::write(&toml, file_source_pipeline(&file.to_string_lossy())).unwrap();
        let mut runner = RunnerCommand::entry(ENTRY, &toml, &dir)
            .keep_stderr()
            .spawn();
        let status = runner.wait_exit(Duration::from_secs(90));
        let log = runner.output();
        assert!(
            !status.success(),
            "{}: the run went on: {log}",
            file.display()
        );
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            log.lines().any(|l| l.contains(&name) && l.contains(reason)),
            "{name}: no error naming the file and `{reason}`: {log}"
        );
        assert!(!log.contains("panicked"), "{name}: {log}");
        assert!(
            !log.contains("\"event\":\"ready\""),
            "{name}: served anyway"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A contribution encoder dialing `ingest.toml`'s SRT listener on 127.0.0.1:9000.
const SRT_SENDER: &str = "videotestsrc is-live=true ! video/x-raw,width=640,height=360,framerate=30/1 \
     ! x264enc tune=zerolatency key-int-max=30 ! mpegtsmux name=m \
     ! srtsink uri=srt://127.0.0.1:9000?mode=caller \
     audiotestsrc is-live=true ! audioconvert ! avenc_aac ! m.";

/// Waits for the `source` event that puts `state` on air.
fn wait_source_state(runner: &mut RunnerChild, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "the source never went to `{state}`");
        let event = runner.wait_event("source", left);
        if event["state"] == state {
            return;
        }
    }
}

#[test]
fn ingest_takes_an_srt_contribution_and_the_slate_covers_while_the_sender_is_gone() {
    let dir = scratch_dir("runner-test", "ingest");
    let mut runner = test_runner(&shipped_pipeline_in("ingest.toml", &dir), &dir).start();
    let started = runner.wait_event("recording-started", Duration::from_secs(10));
    let sender = Redialing::gst_launch(SRT_SENDER.into());
    wait_source_state(&mut runner, "primary");
    let playlist = eventually(
        Duration::from_secs(20),
        "HLS segments from the SRT contribution",
        || {
            let r = runner.get("/hls/live.m3u8");
            (r.status == 200 && r.text().matches(".ts").count() >= 2).then_some(r.text())
        },
    );
    let name = playlist
        .lines()
        .find(|l| l.ends_with(".ts"))
        .unwrap()
        .to_string();
    let segment = dir.join("segment.ts");
    std::fs::write(&segment, runner.get(&format!("/hls/{name}")).body).unwrap();
    // Normalised to the configured 1280x720, whatever the sender sent.
    let size = ffprobe(
        &[
            "-select_streams",
            "v",
            "-show_entries",
            "stream=width,height",
            "-of",
            "csv=p=0",
        ],
        &segment,
    );
    assert_eq!(size.lines().next(), Some("1280,720"), "{size}");

    // The sender dies: the slate takes over and HLS goes on.
    drop(sender);
    wait_source_state(&mut runner, "fallback");
    let before = runner.get("/hls/live.m3u8").text();
    eventually(
        Duration::from_secs(5),
        "HLS to go on over the slate",
        || (runner.get("/hls/live.m3u8").text() != before).then_some(()),
    );
    let metrics = runner.get("/metrics").text();
    assert_eq!(
        metric(
            &metrics,
            "hybridlive_source_on_fallback{source=\"presenter\"}"
        ),
        Some(1.0)
    );

    // It comes back: the source is given back.
    let _sender = Redialing::gst_launch(SRT_SENDER.into());
    wait_source_state(&mut runner, "primary");
    std::thread::sleep(Duration::from_secs(1));
    runner.signal("INT");
    let stopped_at = Instant::now();
    let status = runner.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "exit status {status}");
    // Nothing was lost across the two switches: the recording covers the whole run.
    let file = PathBuf::from(started["path"].as_str().unwrap());
    let ran = stopped_at
        .duration_since(runner.seen_at(&started))
        .as_secs_f64();
    let duration = media_duration(&file);
    assert!(
        (ran - duration).abs() <= 1.0,
        "ran {ran:.2} s, recorded {duration:.2} s"
    );
    assert!(decoded_video_frames(&file) as f64 >= (duration - 0.5) * 30.0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_looping_file_source_plays_longer_than_the_file() {
    let dir = scratch_dir("runner-test", "file");
    let made = Command::new("gst-launch-1.0")
        .current_dir(&dir)
        .args([
            "-q",
            "videotestsrc",
            "num-buffers=30",
            "!",
            "video/x-raw,width=320,height=180,framerate=30/1",
        ])
        .args([
            "!",
            "x264enc",
            "!",
            "h264parse",
            "!",
            "mp4mux",
            "name=m",
            "!",
            "filesink",
            "location=clip.mp4",
        ])
        .args([
            "audiotestsrc",
            "num-buffers=47",
            "!",
            "audioconvert",
            "!",
            "avenc_aac",
            "!",
            "aacparse",
            "!",
            "m.",
        ])
        .status()
        .expect("gst-launch-1.0");
    assert!(made.success());
    let config = dir.join("file.toml");
    std::fs::write(
        &config,
        "[sources.clip]\ntype = \"file\"\nlocation = \"clip.mp4\"\nloop = true\n\n\
         [encoders.video]\ntype = \"h264\"\ninputs = [\"clip\"]\n\n\
         [encoders.audio]\ntype = \"aac\"\ninputs = [\"clip\"]\n\n\
         [outputs.rec]\ntype = \"record\"\ninputs = [\"video\", \"audio\"]\ndirectory = \"rec\"\n",
    )
    .unwrap();
    let mut runner = test_runner(&config, &dir)
        .args(&["--duration", "4"])
        .start();
    let started = runner.wait_event("recording-started", Duration::from_secs(10));
    let status = runner.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "exit status {status}");
    let file = PathBuf::from(started["path"].as_str().unwrap());
    let duration = media_duration(&file);
    // The clip lasts 1 s; looping keeps the programme going for the whole run.
    assert!(duration > 2.5, "recorded {duration} s from a 1 s clip");
    let _ = std::fs::remove_dir_all(&dir);
}
