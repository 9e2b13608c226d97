//! HLS from `hybridlive run`, end to end: the workshop pipeline serves its viewer page, HLS
//! (checked with ffprobe), metrics and a token-guarded API, and finalises its recording and
//! exits 0 on SIGTERM; the HLS pipeline plays in headless Chromium and stops after its
//! duration; low-latency HLS serves parts, blocks playlist reloads and plays in Chromium.
//!
//! `cargo nextest run -p hybridlive-runner --test hls`

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use hybridlive_testkit::media::{decoded_video_frames, ffprobe, media_duration};
use hybridlive_testkit::runner_child::test_runner;
use hybridlive_testkit::time::{now_ms, utc_ms};
use hybridlive_testkit::{
    eventually, metric, scratch_dir, shipped_pipeline, shipped_pipeline_in, tail_lines, viewer_page,
};

hybridlive_testkit::runner_child_entry!();

#[test]
fn workshop_serves_hls_metrics_and_a_guarded_api_and_exits_cleanly_on_sigterm() {
    let dir = scratch_dir("runner-test", "workshop");
    let mut runner = test_runner(&shipped_pipeline_in("workshop.toml", &dir), &dir).start();
    let first = runner.wait_event("recording-started", Duration::from_secs(10));

    // The viewer page plays /hls/live.m3u8 with the vendored hls.js.
    let page = runner.get("/");
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .unwrap_or_default()
            .starts_with("text/html")
    );
    assert!(page.text().contains("/assets/hls.min.js") && page.text().contains("/hls/live.m3u8"));
    let js = runner.get("/assets/hls.min.js");
    assert_eq!(js.status, 200);
    assert!(
        js.header("content-type")
            .unwrap_or_default()
            .starts_with("text/javascript")
    );
    assert!(js.body.len() > 100_000);

    // HLS: a Low-Latency playlist of 1 s segments in 200 ms parts, served with the right types
    // and cache headers.
    let playlist = eventually(Duration::from_secs(20), "two HLS segments", || {
        let r = runner.get("/hls/live.m3u8");
        (r.status == 200 && r.text().matches("#EXTINF").count() >= 2).then_some(r)
    });
    assert_eq!(
        playlist.header("content-type").unwrap_or_default(),
        "application/vnd.apple.mpegurl"
    );
    assert!(
        playlist
            .header("cache-control")
            .unwrap_or_default()
            .contains("no-cache")
    );
    let text = playlist.text();
    for tag in [
        "#EXT-X-TARGETDURATION:1",
        "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES",
        "#EXT-X-PART-INF:PART-TARGET=",
        "#EXT-X-PRELOAD-HINT:TYPE=PART",
    ] {
        assert!(text.contains(tag), "no {tag} in\n{text}");
    }
    // 200 ms parts; the target covers the longest one, which audio frames may stretch a little.
    let part_target: f64 = text
        .split("#EXT-X-PART-INF:PART-TARGET=")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    assert!((0.2..0.25).contains(&part_target), "{text}");
    // Program-date-time: the capture time of each segment's first frame, read from its stamp.
    let dates: Vec<i64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("#EXT-X-PROGRAM-DATE-TIME:"))
        .map(utc_ms)
        .collect();
    // Every segment is dated, the open one (parts only, no EXTINF yet) too.
    assert!(dates.len() >= text.matches("#EXTINF").count(), "{text}");
    for pair in dates.windows(2) {
        assert!(
            (pair[1] - pair[0] - 1000).abs() <= 100,
            "segments {} ms apart: {text}",
            pair[1] - pair[0]
        );
    }
    let age_ms = now_ms() - dates.last().copied().unwrap_or_default();
    assert!(
        (0..10_000).contains(&age_ms),
        "last segment dated {age_ms} ms ago"
    );
    // The last complete segment: the first may be shorter (it ends on the segment grid).
    let segment_name = text
        .lines()
        .rfind(|l| l.starts_with("seg") && l.ends_with(".m4s"))
        .expect("a segment")
        .to_string();
    let segment = runner.get(&format!("/hls/{segment_name}"));
    assert_eq!(segment.status, 200);
    assert_eq!(
        segment.header("content-type").unwrap_or_default(),
        "video/iso.segment"
    );
    assert!(
        segment
            .header("cache-control")
            .unwrap_or_default()
            .contains("max-age")
    );
    let init = runner.get("/hls/init.mp4");
    assert_eq!(init.status, 200);
    let segment_file = dir.join("segment.mp4");
    std::fs::write(&segment_file, [init.body, segment.body].concat()).unwrap();
    let streams = ffprobe(
        &["-show_entries", "stream=codec_name", "-of", "csv=p=0"],
        &segment_file,
    );
    assert!(
        streams.contains("h264") && streams.contains("aac"),
        "{streams}"
    );
    assert_eq!(decoded_video_frames(&segment_file), 30, "{segment_name}");
    // The capture stamps travel inside the segments as SEI, readable by other tools.
    let side_data = ffprobe(
        &[
            "-select_streams",
            "v",
            "-show_frames",
            "-show_entries",
            "frame_side_data=side_data_type",
            "-of",
            "csv",
        ],
        &segment_file,
    );
    assert!(
        side_data.contains("User Data Unregistered SEI"),
        "no SEI stamps in the segment"
    );

    // Static routes never leave their folder.
    for path in [
        "/hls/../Cargo.toml",
        "/hls/..%2F..%2Fetc%2Fpasswd",
        "/hls/%2Fetc%2Fpasswd",
        "/hls/.hidden.ts",
    ] {
        let r = runner.get(path);
        assert_eq!(r.status, 404, "{path} answered {}", r.status);
    }

    // Write endpoints need the bearer token, and bodies are size-limited.
    let marker = br#"{"label":"intro done"}"#;
    assert_eq!(
        runner.request("POST", "/api/markers", &[], marker).status,
        401
    );
    let wrong = [("Authorization", "Bearer wrong-token-5f1c")];
    assert_eq!(
        runner
            .request("POST", "/api/markers", &wrong, marker)
            .status,
        401
    );
    let auth = [("Authorization", "Bearer test-token-5f1c")];
    let huge = vec![b' '; 64 * 1024];
    assert_eq!(
        runner.request("POST", "/api/markers", &auth, &huge).status,
        413
    );
    assert_eq!(
        runner
            .request("POST", "/api/markers", &auth, b"not json")
            .status,
        400
    );
    // GET lists the markers (recording.rs); other methods are refused.
    assert_eq!(
        runner.request("PUT", "/api/markers", &auth, b"").status,
        405
    );
    let created = runner.request("POST", "/api/markers", &auth, marker);
    assert_eq!(created.status, 201, "{}", created.text());

    // Metrics: latency per path from latencymeter, bitrates, the recording.
    let metrics = eventually(
        Duration::from_secs(10),
        "latency metrics of the hls path",
        || {
            let m = runner.get("/metrics").text();
            m.contains("hybridlive_latency_p95_seconds{path=\"hls\"}")
                .then_some(m)
        },
    );
    let p95 = metric(&metrics, "hybridlive_latency_p95_seconds{path=\"hls\"}").expect("p95");
    assert!(p95 > 0.0 && p95 < 2.0, "hls p95 {p95} s");
    let bits = metric(
        &metrics,
        "hybridlive_encoder_bits_per_second{encoder=\"video\"}",
    )
    .expect("bitrate");
    assert!(bits > 100_000.0, "video at {bits} bit/s");
    assert!(
        metric(&metrics, "hybridlive_recording_bytes{output=\"recording\"}")
            .expect("recording size")
            > 0.0
    );
    assert_eq!(metric(&metrics, "hybridlive_markers_total"), Some(1.0));
    let status: serde_json::Value =
        serde_json::from_slice(&runner.get("/api/status").body).expect("JSON status");
    assert_eq!(status["outputs"]["hls"]["state"], "running");

    // Stop the recording: the file is finalised and its timeline holds the marker.
    let stop = runner.request("POST", "/api/recording", &auth, br#"{"action":"stop"}"#);
    assert_eq!(stop.status, 202, "{}", stop.text());
    let finished = runner.wait_event("recording-finished", Duration::from_secs(10));
    let first_file = PathBuf::from(first["path"].as_str().unwrap());
    assert_eq!(finished["path"].as_str(), first["path"].as_str());
    assert!(media_duration(&first_file) > 1.0);
    let timeline: serde_json::Value =
        serde_json::from_slice(&std::fs::read(first["timeline"].as_str().unwrap()).unwrap())
            .unwrap();
    // The shared sidecar format (hybridlive-timeline), the one `hybridlive repurpose` reads.
    assert_eq!(timeline["version"], 1);
    assert_eq!(timeline["events"][0]["type"], "marker");
    assert_eq!(timeline["events"][0]["label"], "intro done");
    assert!(timeline["events"][0]["at"].as_f64().unwrap() >= 0.0);
    assert!(timeline["started_at"].as_str().unwrap().ends_with('Z'));
    assert!(timeline["ended_at"].is_string());

    // A failing output is reported and retried while HLS keeps going: the recording folder is
    // replaced by a file, so the next recording cannot be created.
    let folder = first_file.parent().unwrap().to_path_buf();
    let aside = dir.join("recordings-aside");
    std::fs::rename(&folder, &aside).unwrap();
    std::fs::write(&folder, b"not a folder").unwrap();
    let start = runner.request("POST", "/api/recording", &auth, br#"{"action":"start"}"#);
    assert_eq!(start.status, 202);
    let failed = runner.wait_event("output-failed", Duration::from_secs(10));
    assert_eq!(failed["output"], "recording");
    let segments_before = runner.get("/hls/live.m3u8").text();
    std::fs::remove_file(&folder).unwrap();
    std::fs::rename(&aside, &folder).unwrap();
    runner.wait_event("output-restart", Duration::from_secs(10));
    let second = runner.wait_event("recording-started", Duration::from_secs(10));
    eventually(Duration::from_secs(5), "HLS to keep going", || {
        (runner.get("/hls/live.m3u8").text() != segments_before).then_some(())
    });

    // SIGTERM: EOS, the recording is finalised, exit 0.
    std::thread::sleep(Duration::from_secs(2));
    runner.signal("TERM");
    let status = runner.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "exit status {status}");
    let second_file = PathBuf::from(second["path"].as_str().unwrap());
    assert!(media_duration(&second_file) > 1.0);
    assert!(decoded_video_frames(&second_file) > 30);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn hls_pipeline_plays_in_headless_chromium_and_stops_after_its_duration() {
    let dir = scratch_dir("runner-test", "hls");
    // Long enough for a browser that starts slowly on a loaded machine to find the page up
    // (with 8 s, one CI run's Chromium came after the runner had ended and dumped nothing).
    let mut runner = test_runner(&shipped_pipeline_in("hls.toml", &dir), &dir)
        .args(&["--duration", "25"])
        .start();
    eventually(Duration::from_secs(10), "two HLS segments", || {
        let r = runner.get("/hls/live.m3u8");
        (r.status == 200 && r.text().matches(".ts").count() >= 2).then_some(())
    });
    // The viewer page itself, in a real browser: hls.js loads the playlist, MSE plays it.
    let profile = dir.join("chromium-profile");
    // Bounded: a browser that hangs fails the test instead of stalling the suite.
    let dom = Command::new("timeout")
        .args(["90", "chromium"])
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
        ])
        .args([
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .args([
            "--autoplay-policy=no-user-gesture-required",
            "--virtual-time-budget=15000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("{}/", runner.base))
        .output()
        .expect("chromium is installed (scripts/setup)");
    let browser_log = String::from_utf8_lossy(&dom.stderr).to_string();
    let dom = String::from_utf8_lossy(&dom.stdout);
    let state = dom
        .split("<div id=\"state\"")
        .nth(1)
        .and_then(|rest| rest.split("</div>").next())
        .unwrap_or_else(|| {
            panic!(
                "no state element in the page:\n{dom}\nchromium's log:\n{}",
                tail_lines(&browser_log, 30)
            )
        });
    // No WebRTC output in hls.toml: the page falls back to HLS and plays it.
    assert!(
        state.contains("data-mode=\"hls\""),
        "the page is not on HLS: {state}"
    );
    let played: f64 = state
        .split("data-current-time=\"")
        .nth(1)
        .and_then(|v| v.split('"').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no playback position: {state}"));
    assert!(played > 0.0, "playback did not advance: {state}");
    let status = runner.wait_exit(Duration::from_secs(40));
    assert!(status.success(), "exit status {status}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn low_latency_hls_serves_parts_blocks_reloads_and_plays_in_chromium() {
    let dir = scratch_dir("runner-test", "llhls");
    let file = dir.join("llhls.toml");
    let hls = std::fs::read_to_string(shipped_pipeline("hls.toml")).unwrap();
    std::fs::write(&file, hls + "low_latency = true\npart_duration_ms = 200\n").unwrap();
    let runner = test_runner(&file, &dir).args(&["--duration", "40"]).start();

    let playlist = eventually(Duration::from_secs(15), "two complete segments", || {
        let r = runner.get("/hls/live.m3u8");
        (r.status == 200 && r.text().matches("#EXTINF").count() >= 2).then(|| r.text())
    });
    for tag in [
        "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES",
        "#EXT-X-PART-INF:PART-TARGET=",
        "#EXT-X-MAP:URI=\"init.mp4\"",
        "#EXT-X-PROGRAM-DATE-TIME:",
        ",INDEPENDENT=YES",
        "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part",
    ] {
        assert!(playlist.contains(tag), "no {tag} in\n{playlist}");
    }

    // A blocking reload for the hinted part answers once that part exists, and lists it.
    let hint = playlist
        .split("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part")
        .nth(1)
        .and_then(|rest| rest.split(".m4s").next())
        .and_then(|mp| mp.split_once('.'))
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .expect("a preload hint partM.P.m4s");
    let blocked = runner.get(&format!(
        "/hls/live.m3u8?_HLS_msn={}&_HLS_part={}",
        hint.0, hint.1
    ));
    assert_eq!(blocked.status, 200);
    assert!(
        blocked
            .text()
            .contains(&format!("URI=\"part{}.{}.m4s\"", hint.0, hint.1)),
        "the blocking reload does not list the part it waited for:\n{}",
        blocked.text()
    );
    let hinted = runner.get(&format!("/hls/part{}.{}.m4s", hint.0, hint.1));
    assert_eq!(hinted.status, 200);
    assert_eq!(
        hinted.header("content-type").unwrap_or_default(),
        "video/iso.segment"
    );
    assert_eq!(runner.get("/hls/live.m3u8?_HLS_msn=999999").status, 400);

    // The initialisation segment plus a complete segment decode: one second of 720p30.
    // The last one: the first may be shorter (it ends on the segment grid).
    let segment = playlist
        .lines()
        .rfind(|l| l.starts_with("seg") && l.ends_with(".m4s"))
        .expect("a complete segment");
    let mut file_data = runner.get("/hls/init.mp4").body;
    file_data.extend(runner.get(&format!("/hls/{segment}")).body);
    let mp4 = dir.join("segment.mp4");
    std::fs::write(&mp4, file_data).unwrap();
    assert_eq!(decoded_video_frames(&mp4), 30, "{segment}");

    // hls.js in Chromium plays the parts (lowLatencyMode) from the viewer page.
    let result = viewer_page(
        &runner.base,
        "window.viewer && window.viewer.mode === 'hls' && window.viewer.hls \
             && window.viewer.hls.playingDate && document.querySelector('video').currentTime > 3",
        "(() => { const h = window.viewer.hls; \
               const d = h.latestLevelDetails || h.levels[h.currentLevel].details; \
               return { parts: d.partList ? d.partList.length : 0, lowLatency: h.lowLatencyMode, \
                        glassToGlassMs: Date.now() - h.playingDate.getTime(), \
                        played: document.querySelector('video').currentTime }; })()",
    );
    println!("LL-HLS in Chromium: {result}");
    assert!(result["parts"].as_u64().unwrap_or(0) > 0, "{result}");
    assert!(result["played"].as_f64().unwrap_or(0.0) > 3.0, "{result}");
    // Capture time (program date time from the stamps) to the frame on screen: a real figure.
    let g2g = result["glassToGlassMs"].as_f64().unwrap_or(f64::NAN);
    assert!(g2g.is_finite() && g2g > 0.0, "{result}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_hls_viewer_that_fell_seconds_behind_comes_back_to_the_live_edge() {
    let dir = scratch_dir("runner-test", "llhls-behind");
    let file = dir.join("llhls.toml");
    let hls = std::fs::read_to_string(shipped_pipeline("hls.toml")).unwrap();
    std::fs::write(&file, hls + "low_latency = true\npart_duration_ms = 200\n").unwrap();
    let runner = test_runner(&file, &dir)
        .args(&["--duration", "120"])
        .start();

    // Pause until the playhead is 4 s behind the live sync position (hls.js keeps loading the
    // parts), play again, and see how far behind it plays once it has had time to recover:
    // hls.js alone only speeds up within one target duration of its target latency.
    let result = viewer_page(
        &runner.base,
        "window.viewer && window.viewer.mode === 'hls' && window.viewer.hls \
             && window.viewer.hls.liveSyncPosition !== null \
             && document.querySelector('video').currentTime > 2",
        "(async () => { const h = window.viewer.hls; const v = document.querySelector('video'); \
               const until = async (ok, ms) => { const end = Date.now() + ms; \
                 while (!ok() && Date.now() < end) await new Promise(r => setTimeout(r, 100)); return ok(); }; \
               v.pause(); \
               const fell = await until(() => h.liveSyncPosition - v.currentTime > 4, 60000); \
               const fellBehind = h.liveSyncPosition - v.currentTime; \
               await v.play(); \
               const back = await until(() => !v.paused && v.currentTime > 0 \
                 && h.liveSyncPosition - v.currentTime < 1, 30000); \
               return { fell, fellBehind, back, behind: h.liveSyncPosition - v.currentTime, \
                        target: h.targetLatency }; })()",
    );
    println!("LL-HLS viewer behind the live edge: {result}");
    assert_eq!(
        result["fell"], true,
        "the paused player never fell behind: {result}"
    );
    assert_eq!(
        result["back"], true,
        "the player stays behind the live sync position: {result}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
