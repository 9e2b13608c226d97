//! Recording takes over the HTTP API, end to end in a child runner: a take is never lost or
//! overwritten (a second take in the same second, files already in the folder), a start sent
//! while a stop finishes is carried out, a stop sent while a start builds wins, every one of a
//! burst of concurrent markers reaches the sidecar, no unreadable file is left behind, and a
//! closed terminal (SIGHUP) finalises the run like SIGTERM.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hybridlive_testkit::eventually;
use hybridlive_testkit::http::HttpReply;
use hybridlive_testkit::media::{decoded_video_frames, media_duration, probed_duration};
use hybridlive_testkit::runner_child::{ENTRY, RunnerChild, RunnerCommand, request};
use hybridlive_testkit::shipped_pipeline_in;

const TOKEN: &str = "recording-test-token-7a21";
/// Generous: the machine may be loaded by other test binaries.
const WAIT: Duration = Duration::from_secs(60);

hybridlive_testkit::runner_child_entry!();

fn scratch(name: &str) -> PathBuf {
    hybridlive_testkit::scratch_dir("recording-test", name)
}

/// A test picture and tone, H.264 + AAC, into a record output `rec` writing to `rec/`;
/// `extra` is appended (more outputs).
fn pipeline(dir: &Path, autostart: bool, extra: &str) -> PathBuf {
    let file = dir.join("recording.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[server]
token_env = "HYBRIDLIVE_TOKEN"

[sources.cam]
type = "test"
width = 320
height = 180
framerate = 30

[encoders.video]
type = "h264"
inputs = ["cam"]

[encoders.audio]
type = "aac"
inputs = ["cam"]

[outputs.rec]
type = "record"
inputs = ["video", "audio"]
directory = "rec"
autostart = {autostart}
{extra}"#
        ),
    )
    .expect("write the pipeline");
    file
}

fn start_runner(dir: &Path, autostart: bool, extra: &str) -> RunnerChild {
    RunnerCommand::entry(ENTRY, &pipeline(dir, autostart, extra), dir)
        .env(&[("HYBRIDLIVE_TOKEN", TOKEN)])
        .start()
}

fn post(runner: &RunnerChild, path: &str, body: &str) -> HttpReply {
    post_to(&runner.addr(), path, body)
}

fn post_to(addr: &str, path: &str, body: &str) -> HttpReply {
    let bearer = format!("Bearer {TOKEN}");
    request(
        addr,
        "POST",
        path,
        &[
            ("Authorization", bearer.as_str()),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    )
}

fn recording(runner: &RunnerChild, action: &str) {
    let answer = post(
        runner,
        "/api/recording",
        &format!(r#"{{"action":"{action}"}}"#),
    );
    assert_eq!(answer.status, 202, "{action}: {}", answer.text());
}

fn marker(runner: &RunnerChild, label: &str) {
    marker_to(&runner.addr(), label);
}

fn marker_to(addr: &str, label: &str) {
    let answer = post_to(
        addr,
        "/api/markers",
        &serde_json::json!({ "label": label }).to_string(),
    );
    assert_eq!(answer.status, 201, "marker {label}: {}", answer.text());
}

fn output_state(runner: &RunnerChild) -> String {
    runner.status()["outputs"]["rec"]["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn wait_state(runner: &RunnerChild, state: &str) {
    hybridlive_testkit::eventually_explained(
        WAIT,
        || (output_state(runner) == state).then_some(()),
        || {
            format!(
                "the record output never became `{state}`: {}",
                runner.status()["outputs"]["rec"]
            )
        },
    );
}

/// Waits until the take's MP4 holds its first fragment (it exists from then on).
fn wait_file(path: &Path) {
    eventually(WAIT, &format!("{} to be written", path.display()), || {
        std::fs::metadata(path)
            .is_ok_and(|m| m.len() > 0)
            .then_some(())
    });
}

fn started_path(event: &serde_json::Value) -> PathBuf {
    PathBuf::from(
        event["path"]
            .as_str()
            .expect("recording-started names its file"),
    )
}

/// Seconds of media ffprobe reads from `file`, and the video frames ffmpeg decodes.
fn readable(file: &Path) -> (f64, usize) {
    (
        probed_duration(file).unwrap_or(0.0),
        decoded_video_frames(file),
    )
}

fn assert_readable(file: &Path) {
    let (duration, frames) = readable(file);
    assert!(
        duration > 0.0 && frames > 0,
        "{}: ffprobe reads {duration} s and ffmpeg decodes {frames} frames ({} bytes)",
        file.display(),
        std::fs::metadata(file).map_or(0, |m| m.len())
    );
}

fn sidecar(mp4: &Path) -> serde_json::Value {
    let path = hybridlive_timeline::sidecar_path(mp4);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("{}: {err}: {text}", path.display()))
}

fn marker_labels(timeline: &serde_json::Value) -> BTreeSet<String> {
    timeline["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "marker")
        .filter_map(|e| e["label"].as_str().map(str::to_string))
        .collect()
}

/// Every file in `dir`, by name.
fn files(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Every MP4 in `dir` decodes, and every sidecar has its MP4: nothing a user would trip over.
fn assert_folder_clean(dir: &Path) {
    let names = files(dir);
    for name in &names {
        if name.ends_with(".mp4") {
            assert_readable(&dir.join(name));
        } else if let Some(stem) = name.strip_suffix(hybridlive_timeline::SIDECAR_SUFFIX) {
            assert!(
                names.contains(&format!("{stem}.mp4")),
                "{name} has no recording beside it: {names:?}"
            );
        } else {
            panic!("unexpected file {name} in the recording folder: {names:?}");
        }
    }
}

/// The issue's sequence: start, (first fragment), marker, stop, start at once. Two takes,
/// both readable, the marker in the first one's sidecar only.
#[test]
fn a_second_take_right_after_a_stop_keeps_the_first_and_its_marker() {
    let dir = scratch("second-take");
    let runner = start_runner(&dir, false, "");
    recording(&runner, "start");
    let first = started_path(&runner.wait_event("recording-started", WAIT));
    wait_file(&first);
    marker(&runner, "in the first take");
    recording(&runner, "stop");
    // Back to back: the stop is still finishing the first take.
    recording(&runner, "start");
    let finished = runner.wait_event("recording-finished", WAIT);
    assert_eq!(finished["path"], first.to_string_lossy().as_ref());
    let second = started_path(&runner.wait_event("recording-started", WAIT));
    assert_ne!(first, second, "both takes named the same file");
    wait_file(&second);
    wait_state(&runner, "running");
    recording(&runner, "stop");
    runner.wait_event_where("recording-finished", WAIT, |e| {
        e["path"] == second.to_string_lossy().as_ref()
    });
    wait_state(&runner, "stopped");

    assert_readable(&first);
    assert_readable(&second);
    let first_timeline = sidecar(&first);
    assert!(
        marker_labels(&first_timeline).contains("in the first take"),
        "{first_timeline}"
    );
    assert!(first_timeline["ended_at"].is_string(), "{first_timeline}");
    let second_timeline = sidecar(&second);
    assert!(
        marker_labels(&second_timeline).is_empty(),
        "{second_timeline}"
    );
    assert!(second_timeline["ended_at"].is_string(), "{second_timeline}");
    assert_folder_clean(&dir.join("rec"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `rec-<UTC second>.mp4`: the name a take started at `utc_s` would get without a suffix.
fn take_name(utc_s: u64) -> String {
    let days = (utc_s / 86_400) as i64;
    let rem = utc_s % 86_400;
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "rec-{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z.mp4",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Files already in the folder under the very names new takes would get (an earlier run, a
/// clock set back) are never touched: takes get a suffix instead.
#[test]
fn a_take_never_overwrites_a_file_already_in_the_folder() {
    let dir = scratch("existing");
    let rec = dir.join("rec");
    std::fs::create_dir_all(&rec).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Every second the takes below may start in, with generous room for a slow machine.
    let mut planted = Vec::new();
    for s in now.saturating_sub(2)..now + 300 {
        let mp4 = rec.join(take_name(s));
        std::fs::write(&mp4, format!("earlier take {s}")).unwrap();
        let timeline = hybridlive_timeline::sidecar_path(&mp4);
        std::fs::write(&timeline, format!("earlier sidecar {s}")).unwrap();
        planted.push((s, mp4, timeline));
    }
    let runner = start_runner(&dir, false, "");
    let mut takes = Vec::new();
    for _ in 0..2 {
        recording(&runner, "start");
        let take = started_path(&runner.wait_event("recording-started", WAIT));
        wait_file(&take);
        marker(&runner, "new");
        recording(&runner, "stop");
        runner.wait_event("recording-finished", WAIT);
        takes.push(take);
    }
    wait_state(&runner, "stopped");
    for (s, mp4, timeline) in &planted {
        assert_eq!(
            std::fs::read_to_string(mp4).unwrap(),
            format!("earlier take {s}"),
            "{} was overwritten",
            mp4.display()
        );
        assert_eq!(
            std::fs::read_to_string(timeline).unwrap(),
            format!("earlier sidecar {s}"),
            "{} was overwritten",
            timeline.display()
        );
    }
    assert_ne!(takes[0], takes[1]);
    for take in &takes {
        assert!(
            !planted.iter().any(|(_, mp4, _)| mp4 == take),
            "{} reused an existing name",
            take.display()
        );
        assert_readable(take);
        assert!(marker_labels(&sidecar(take)).contains("new"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Stop/start/stop back to back ends stopped; start/stop back to back (the stop arriving
/// while the start builds its pipeline) ends stopped with nothing unreadable left behind;
/// start/stop/start ends recording.
#[test]
fn quick_start_stop_sequences_end_in_the_state_last_asked_for() {
    let dir = scratch("sequences");
    let rec = dir.join("rec");
    let mut runner = start_runner(&dir, false, "");

    // start, stop at once: the stop wins, whatever the start had got to.
    recording(&runner, "start");
    recording(&runner, "stop");
    wait_state(&runner, "stopped");
    assert_folder_clean(&rec);

    // A take, then stop/start/stop back to back: stopped, and no take is started after it.
    recording(&runner, "start");
    let first = started_path(&runner.wait_event("recording-started", WAIT));
    wait_file(&first);
    recording(&runner, "stop");
    recording(&runner, "start");
    recording(&runner, "stop");
    runner.wait_event_where("recording-finished", WAIT, |e| {
        e["path"] == first.to_string_lossy().as_ref()
    });
    wait_state(&runner, "stopped");
    // A start queued and not cancelled would begin right after the finish: two status ticks
    // later there must still be nothing. (This can only miss a bug, never invent one.)
    for _ in 0..2 {
        runner.wait_event("status", WAIT);
    }
    let later: Vec<_> = runner
        .drain_events()
        .into_iter()
        .filter(|e| e["event"] == "recording-started")
        .collect();
    assert!(
        later.is_empty(),
        "a take started after the last stop: {later:?}"
    );
    assert_eq!(output_state(&runner), "stopped");

    // start/stop/start: recording, in a new take. Again and again, each sequence sent while
    // the previous take's stop is still finishing it (its teardown once overlapped the next
    // start, which lost its take: recording with no sidecar and no `recording-started`).
    let mut takes = vec![first];
    for _ in 0..6 {
        recording(&runner, "start");
        recording(&runner, "stop");
        recording(&runner, "start");
        let take = started_path(&runner.wait_event("recording-started", WAIT));
        assert!(!takes.contains(&take), "{} reused", take.display());
        wait_file(&take);
        wait_state(&runner, "running");
        recording(&runner, "stop");
        takes.push(take);
    }
    let last = takes.last().cloned().unwrap_or_default();
    runner.wait_event_where("recording-finished", WAIT, |e| {
        e["path"] == last.to_string_lossy().as_ref()
    });
    wait_state(&runner, "stopped");
    for take in &takes {
        assert_readable(take);
        assert!(sidecar(take)["ended_at"].is_string(), "{}", take.display());
    }
    assert_folder_clean(&rec);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Bursts of 40 concurrent markers all reach the sidecar; markers racing the stop never leave
/// a sidecar without `ended_at`.
#[test]
fn every_marker_of_concurrent_bursts_reaches_the_sidecar() {
    let dir = scratch("markers");
    let runner = start_runner(&dir, false, "");
    recording(&runner, "start");
    let take = started_path(&runner.wait_event("recording-started", WAIT));
    wait_file(&take);
    let addr = runner.addr();
    let mut sent = BTreeSet::new();
    for burst in 0..5 {
        let labels: Vec<String> = (0..40)
            .map(|i| format!("burst {burst} marker {i}"))
            .collect();
        std::thread::scope(|scope| {
            for label in &labels {
                let addr = &addr;
                scope.spawn(move || marker_to(addr, label));
            }
        });
        sent.extend(labels);
    }
    // Each answered marker is on disk already, before the stop rewrites the sidecar.
    let on_disk = marker_labels(&sidecar(&take));
    let missing: Vec<_> = sent.difference(&on_disk).collect();
    assert!(
        missing.is_empty(),
        "{} of {} markers on disk; missing {missing:?}",
        on_disk.len(),
        sent.len()
    );
    recording(&runner, "stop");
    runner.wait_event("recording-finished", WAIT);
    let finished = sidecar(&take);
    assert_eq!(marker_labels(&finished), sent);
    assert!(finished["ended_at"].is_string(), "{finished}");

    // Markers racing a stop: whichever land in the take, the sidecar is whole and finished.
    recording(&runner, "start");
    let racing = started_path(&runner.wait_event("recording-started", WAIT));
    wait_file(&racing);
    std::thread::scope(|scope| {
        for i in 0..40 {
            let addr = &addr;
            scope.spawn(move || marker_to(addr, &format!("racing {i}")));
        }
        recording(&runner, "stop");
    });
    runner.wait_event_where("recording-finished", WAIT, |e| {
        e["path"] == racing.to_string_lossy().as_ref()
    });
    wait_state(&runner, "stopped");
    let raced = sidecar(&racing);
    assert!(raced["ended_at"].is_string(), "{raced}");
    assert_readable(&racing);
    assert_folder_clean(&dir.join("rec"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A closed SSH session (SIGHUP) ends the run like SIGTERM: the recording is finalised, the
/// temporary HLS folder removed, exit 0.
#[test]
fn sighup_finalises_the_recording_and_removes_the_temporary_hls_folder() {
    let dir = scratch("sighup");
    let mut runner = start_runner(
        &dir,
        true,
        "\n[outputs.hls]\ntype = \"hls\"\ninputs = [\"video\", \"audio\"]\n",
    );
    let take = started_path(&runner.wait_event("recording-started", WAIT));
    wait_file(&take);
    let hls = std::env::temp_dir().join(format!("hybridlive-{}-hls", runner.pid()));
    assert!(hls.is_dir(), "no temporary HLS folder at {}", hls.display());
    runner.signal("HUP");
    let status = runner.wait_exit(WAIT);
    assert_eq!(status.code(), Some(0), "the runner ended with {status}");
    let timeline = sidecar(&take);
    assert!(
        timeline["ended_at"].is_string(),
        "not finalised: {timeline}"
    );
    assert_readable(&take);
    assert!(!hls.exists(), "{} was left behind", hls.display());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A run that fails to start (here its microphone cannot be opened) or is given a `--duration`
/// out of range exits with an error, not a panic, and leaves no temporary HLS folder.
#[test]
fn failed_starts_leave_no_temporary_hls_folder() {
    let dir = scratch("failed-start");
    let hls_output = "\n[outputs.hls]\ntype = \"hls\"\ninputs = [\"video\", \"audio\"]\n";
    let toml = pipeline(&dir, true, hls_output);
    let mut runner = RunnerCommand::entry(ENTRY, &toml, &dir)
        .args(&["--duration", "1e30"])
        .env(&[("HYBRIDLIVE_TOKEN", TOKEN)])
        .spawn();
    let status = runner.wait_exit(WAIT);
    assert_eq!(
        status.code(),
        Some(1),
        "--duration 1e30 ended with {status}"
    );
    let hls = std::env::temp_dir().join(format!("hybridlive-{}-hls", runner.pid()));
    assert!(!hls.exists(), "{} was left behind", hls.display());

    // A microphone that does not exist fails the ingest's start, after the outputs exist.
    let text = std::fs::read_to_string(&toml).unwrap().replace(
        "framerate = 30\n",
        "framerate = 30\nmicrophone = \"no-such-microphone\"\n",
    );
    std::fs::write(&toml, text).unwrap();
    let mut runner = RunnerCommand::entry(ENTRY, &toml, &dir)
        .env(&[("HYBRIDLIVE_TOKEN", TOKEN)])
        .spawn();
    let status = runner.wait_exit(WAIT);
    let events = runner.drain_events();
    assert!(
        !status.success() && status.code() != Some(101),
        "a run with a missing microphone ended with {status}: {events:?}"
    );
    let hls = std::env::temp_dir().join(format!("hybridlive-{}-hls", runner.pid()));
    assert!(!hls.exists(), "{} was left behind", hls.display());
    let _ = std::fs::remove_dir_all(&dir);
}

/// An HLS output writing into a folder kept from an earlier run never serves that run's final
/// playlist (which ends in #EXT-X-ENDLIST: players stop reloading).
#[test]
fn a_restart_into_an_old_hls_folder_never_serves_its_ended_playlist() {
    let dir = scratch("old-hls");
    let hls = dir.join("hls");
    std::fs::create_dir_all(&hls).unwrap();
    std::fs::write(
        hls.join("live.m3u8"),
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:0\n\
         #EXTINF:1.0,\nsegment00000.ts\n#EXTINF:1.0,\nsegment00001.ts\n#EXT-X-ENDLIST\n",
    )
    .unwrap();
    let runner = RunnerCommand::entry(ENTRY, &pipeline(
            &dir,
            false,
            "\n[outputs.hls]\ntype = \"hls\"\ninputs = [\"video\", \"audio\"]\ndirectory = \"hls\"\n",
        ), &dir).env(&[("HYBRIDLIVE_TOKEN", TOKEN)]).start();
    let playlist = eventually(WAIT, "a playlist of this run", || {
        let answer = runner.request("GET", "/hls/live.m3u8", &[], b"");
        let text = answer.text();
        assert!(
            !text.contains("#EXT-X-ENDLIST"),
            "an ended playlist was served: {text}"
        );
        (answer.status == 200 && text.contains(".ts")).then_some(text)
    });
    assert!(playlist.contains("#EXTINF"), "{playlist}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The status (and every `--json` status line) carries the number of markers and the latest,
/// not a list growing with each one; `GET /api/markers` lists them all, oldest first.
#[test]
fn markers_are_counted_in_the_status_and_listed_on_their_own_route() {
    let dir = scratch("marker-list");
    let runner = start_runner(&dir, false, "");
    let addr = runner.addr();
    let labels: Vec<String> = (0..240).map(|i| format!("moment number {i:03}")).collect();
    for chunk in labels.chunks(40) {
        std::thread::scope(|scope| {
            for label in chunk {
                let addr = &addr;
                scope.spawn(move || marker_to(addr, label));
            }
        });
    }
    let last = "the very last moment";
    marker(&runner, last);

    let status = runner.status();
    assert_eq!(status["markers"]["count"], 241, "{}", status["markers"]);
    assert_eq!(status["markers"]["latest"]["label"], last);
    // A status line printed after the last marker: the same summary, none of the old labels.
    let line = runner.wait_event_where("status", WAIT, |e| e["status"]["markers"]["count"] == 241);
    let text = line.to_string();
    assert!(
        !text.contains("moment number"),
        "the status line lists markers ({} bytes)",
        text.len()
    );

    let answer = runner.request("GET", "/api/markers", &[], b"");
    assert_eq!(answer.status, 200, "{}", answer.text());
    let listed: Vec<String> = answer.json()["markers"]
        .as_array()
        .expect("a list of markers")
        .iter()
        .filter_map(|m| m["label"].as_str().map(str::to_string))
        .collect();
    assert_eq!(listed.len(), 241);
    assert_eq!(listed.last().map(String::as_str), Some(last));
    let mut sent: Vec<String> = labels.clone();
    sent.push(last.to_string());
    let mut got = listed.clone();
    got.sort();
    sent.sort();
    assert_eq!(got, sent);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `kill -9` between a take's first key frame and its first whole fragment: no sidecar is
/// left without its recording (the sidecar is written once the MP4 exists), and whatever MP4
/// there is decodes.
#[test]
fn a_kill_before_the_first_fragment_leaves_no_sidecar_without_its_recording() {
    let dir = scratch("kill-early");
    let mut runner = start_runner(&dir, false, "");
    recording(&runner, "start");
    let take = started_path(&runner.wait_event("recording-started", WAIT));
    runner.signal("KILL");
    runner.wait_exit(WAIT);
    let rec = dir.join("rec");
    let timeline = hybridlive_timeline::sidecar_path(&take);
    assert!(
        !timeline.exists() || take.exists(),
        "{} without its recording",
        timeline.display()
    );
    assert_folder_clean(&rec);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Started under `nohup` (SIGHUP ignored, to outlive the SSH session), a hang-up does not end
/// the run; SIGTERM still does, cleanly.
#[test]
fn under_nohup_a_hangup_is_ignored() {
    let dir = scratch("nohup");
    let mut runner = RunnerCommand::entry(ENTRY, &pipeline(&dir, true, ""), &dir)
        .via(&["nohup"])
        .env(&[("HYBRIDLIVE_TOKEN", TOKEN)])
        .start();
    let take = started_path(&runner.wait_event("recording-started", WAIT));
    wait_file(&take);
    runner.signal("HUP");
    // The signal is polled every 100 ms: a shutdown would be announced long before two more
    // status lines. (This can only miss a bug, never invent one.)
    for _ in 0..2 {
        runner.wait_event("status", WAIT);
    }
    let events = runner.drain_events();
    assert!(
        !events.iter().any(|e| e["event"] == "shutdown"),
        "a hang-up ended a run started under nohup: {events:?}"
    );
    assert_eq!(output_state(&runner), "running");
    runner.signal("TERM");
    let status = runner.wait_exit(WAIT);
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM ended the run with {status}"
    );
    assert!(sidecar(&take)["ended_at"].is_string());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn recording_survives_kill_9() {
    let dir = scratch("kill9");
    let mut runner = RunnerCommand::entry(ENTRY, &shipped_pipeline_in("record.toml", &dir), &dir)
        .env(&[("HYBRIDLIVE_TOKEN", TOKEN)])
        .start();
    let started = runner.wait_event("recording-started", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(4));
    runner.signal("KILL");
    let killed_at = Instant::now();
    runner.wait_exit(Duration::from_secs(5));
    let file = PathBuf::from(started["path"].as_str().unwrap());
    let ran = killed_at
        .duration_since(runner.seen_at(&started))
        .as_secs_f64();
    let duration = media_duration(&file);
    assert!(
        (ran - duration).abs() <= 1.0,
        "ran {ran:.2} s from the first frame, the file holds {duration:.2} s"
    );
    let frames = decoded_video_frames(&file);
    assert!(
        frames as f64 >= (duration - 0.5) * 30.0,
        "{frames} frames decode in {duration} s"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A source declared at 29.97 fps (NTSC cameras and phones) runs at 30000/1001: the take says
/// so and holds that many frames a second, where a whole 30 fps would repeat a frame about
/// every 33 s.
#[test]
fn a_29_97_source_is_recorded_at_30000_1001() {
    let dir = scratch("ntsc-rate");
    let toml = pipeline(&dir, true, "");
    let text = std::fs::read_to_string(&toml)
        .unwrap()
        .replace("framerate = 30\n", "framerate = 29.97\n");
    std::fs::write(&toml, text).unwrap();
    let mut runner = RunnerCommand::entry(ENTRY, &toml, &dir)
        .env(&[("HYBRIDLIVE_TOKEN", TOKEN)])
        .start();
    let take = started_path(&runner.wait_event("recording-started", WAIT));
    wait_file(&take);
    hybridlive_testkit::eventually_explained(
        WAIT,
        || {
            runner.status()["outputs"]["rec"]["recording"]["duration_s"]
                .as_f64()
                .is_some_and(|d| d >= 4.0)
                .then_some(())
        },
        || {
            format!(
                "4 s were never recorded: {}",
                runner.status()["outputs"]["rec"]
            )
        },
    );
    runner.signal("TERM");
    let status = runner.wait_exit(WAIT);
    assert_eq!(status.code(), Some(0), "the runner ended with {status}");
    let probe = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
        .args(["stream=r_frame_rate,avg_frame_rate", "-of", "default=nw=1"])
        .arg(&take)
        .output()
        .expect("ffprobe");
    let probed = String::from_utf8_lossy(&probe.stdout);
    assert!(
        probed.contains("r_frame_rate=30000/1001"),
        "{}: {probed}",
        take.display()
    );
    let (duration, frames) = readable(&take);
    let fps = frames as f64 / duration;
    assert!(
        (fps - 29.97).abs() < 0.2,
        "{frames} frames in {duration} s: {fps} fps"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A ladder encoder feeds the recording its top rung only: the take has the full picture,
/// however many lower rungs the viewers get.
#[test]
fn a_recording_of_a_ladder_keeps_the_top_rung() {
    let dir = scratch("ladder");
    let file = dir.join("ladder.toml");
    std::fs::write(
        &file,
        r#"
[server]
token_env = "HYBRIDLIVE_TOKEN"

[sources.cam]
type = "test"
width = 640
height = 360
framerate = 30

[encoders.video]
type = "h264"
inputs = ["cam"]
rungs = ["640x360@30:1000", "320x180@30:300"]

[encoders.audio]
type = "aac"
inputs = ["cam"]

[outputs.rec]
type = "record"
inputs = ["video", "audio"]
directory = "rec"
autostart = false
"#,
    )
    .expect("write the pipeline");
    let runner = RunnerCommand::entry(ENTRY, &file, &dir)
        .env(&[("HYBRIDLIVE_TOKEN", TOKEN)])
        .start();
    recording(&runner, "start");
    let take = started_path(&runner.wait_event("recording-started", WAIT));
    wait_file(&take);
    // Both rungs encode meanwhile (the lower one for nobody here).
    eventually(WAIT, "both rungs to encode", || {
        let encoders = runner.status()["encoders"].clone();
        (encoders["video@1"]["kbps"].as_f64().unwrap_or(0.0) > 0.0).then_some(())
    });
    recording(&runner, "stop");
    runner.wait_event("recording-finished", WAIT);
    assert_readable(&take);
    let size = hybridlive_testkit::media::ffprobe(
        &[
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=width,height",
            "-of",
            "csv=p=0",
        ],
        &take,
    );
    assert_eq!(size.trim(), "640,360", "{}", take.display());
    let _ = std::fs::remove_dir_all(&dir);
}
