//! WebRTC viewers of `hybridlive run`, end to end in headless Chromium: the viewer page plays
//! over WHEP and a raised hand reaches the host, it plays again after the runner itself
//! restarted, and VP8 is sent when the output lists it first.
//!
//! `cargo nextest run -p hybridlive-runner --test webrtc`

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hybridlive_testkit::runner_child::test_runner;
use hybridlive_testkit::{eventually, in_private_netns, metric, scratch_dir, viewer_page};

hybridlive_testkit::runner_child_entry!();

/// Run in the viewer page once it plays WebRTC: asks the test (a console line) to restart the
/// runner, then watches until a new peer connection decodes 30 frames or HLS plays on, and
/// returns what it saw.
const PAGE_ACROSS_RUNNER_RESTART: &str = "(async () => { \
    const v = window.viewer; const firstPc = v.player.pc; const texts = []; \
    console.log('RESTART-THE-RUNNER'); \
    const deadline = performance.now() + 60000; let decoded = 0; let hlsFrom = null; let hlsPlayed = 0; \
    while (performance.now() < deadline) { \
      const t = `${v.mode}: ${document.getElementById('state').textContent}`; \
      if (texts[texts.length - 1] !== t) texts.push(t); \
      if (v.mode === 'webrtc' && v.player && v.player.pc && v.player.pc !== firstPc) { \
        const s = await v.player.stats(); decoded = s ? s.framesDecoded : 0; \
        if (decoded >= 30) break; \
      } \
      if (v.mode === 'hls') { \
        const now = document.querySelector('video').currentTime; \
        if (hlsFrom === null) hlsFrom = now; \
        hlsPlayed = now - hlsFrom; if (hlsPlayed >= 2) break; \
      } \
      await new Promise((r) => setTimeout(r, 100)); \
    } \
    return { mode: v.mode, decoded, hlsPlayed, texts }; \
  })()";

#[test]
fn viewer_page_plays_again_after_the_runner_restarted() {
    if !in_private_netns("viewer_page_plays_again_after_the_runner_restarted") {
        return;
    }
    let dir = scratch_dir("runner-test", "page-restart");
    let file = dir.join("page.toml");
    std::fs::write(
        &file,
        "[sources.cam]\ntype = \"test\"\nwidth = 640\nheight = 360\n\n\
         [encoders.video]\ntype = \"h264\"\ninputs = [\"cam\"]\npreset = \"zerolatency\"\n\
         bitrate = 1200\nkeyframe_interval = 1\n\n\
         [encoders.voice]\ntype = \"opus\"\ninputs = [\"cam\"]\n\n\
         [encoders.audio]\ntype = \"aac\"\ninputs = [\"cam\"]\n\n\
         [outputs.webrtc]\ntype = \"webrtc\"\ninputs = [\"video\", \"voice\"]\nloopback_only = true\n\n\
         [outputs.hls]\ntype = \"hls\"\ninputs = [\"video\", \"audio\"]\nsegment_duration = 1\n",
    )
    .unwrap();
    // A fixed port, so that the page finds the restarted runner where it left the first.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let addr = format!("127.0.0.1:{port}");
    let mut runner = test_runner(&file, &dir).http(&addr).start();
    let driver = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/browser/viewer.mjs");
    let mut page = Command::new("node")
        .arg(&driver)
        .arg(format!("http://{addr}/"))
        .arg("90")
        .env(
            "WAIT",
            "window.viewer && window.viewer.mode === 'webrtc' && window.viewer.latencies.length >= 10",
        )
        .env("RESULT", PAGE_ACROSS_RUNNER_RESTART)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs (scripts/setup installs the browser test driver)");
    let stderr = page.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("the page never played WebRTC:\n{}", log.join("\n")));
        let asked = line.contains("RESTART-THE-RUNNER");
        log.push(line);
        if asked {
            break;
        }
    }
    runner.signal("INT");
    assert!(runner.wait_exit(Duration::from_secs(30)).success());
    let mut runner = test_runner(&file, &dir).http(&addr).start();
    let out = page.wait_with_output().expect("the page driver ends");
    log.extend(rx.try_iter());
    assert!(
        out.status.success(),
        "browser run failed:\n{}",
        log.join("\n")
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("the viewer page across a runner restart: {result}");
    let again_webrtc = result["mode"] == "webrtc" && result["decoded"].as_u64() >= Some(30);
    let on_hls = result["mode"] == "hls" && result["hlsPlayed"].as_f64() >= Some(2.0);
    assert!(
        again_webrtc || on_hls,
        "the page did not play again after the runner restarted: {result}\n{}",
        log.join("\n")
    );
    runner.signal("INT");
    assert!(runner.wait_exit(Duration::from_secs(30)).success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn viewer_page_plays_webrtc_over_whep_and_a_raised_hand_reaches_the_host() {
    if !in_private_netns("viewer_page_plays_webrtc_over_whep_and_a_raised_hand_reaches_the_host") {
        return;
    }
    let dir = scratch_dir("runner-test", "webrtc");
    let file = dir.join("webrtc.toml");
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
preset = "zerolatency"
bitrate = 1500
keyframe_interval = 1

[encoders.voice]
type = "opus"
inputs = ["cam"]
bitrate = 64

[outputs.webrtc]
type = "webrtc"
inputs = ["video", "voice"]
loopback_only = true
"#,
    )
    .unwrap();
    let runner = test_runner(&file, &dir).start();
    let result = viewer_page(
        &runner.base,
        "window.viewer && window.viewer.mode === 'webrtc' && window.viewer.latencies.length >= 60",
        "(async () => { \
               const rtt = await window.viewer.player.raiseHand('Which brush for the edges?'); \
               const s = await window.viewer.player.stats(); \
               const l = [...window.viewer.latencies].sort((a, b) => a - b); \
               const p50 = l[Math.floor(l.length / 2)], p95 = l[Math.floor(l.length * 0.95)]; \
               await window.viewer.player.reportLatency(p50, p95); \
               await new Promise((r) => setTimeout(r, 300)); \
               const metrics = await (await fetch('/metrics')).text(); \
               await window.viewer.player.stop(); \
               await new Promise((r) => setTimeout(r, 1000)); \
               return { rtt, framesDecoded: s.framesDecoded, p50, p95, metrics }; })()",
    );
    eprintln!("chromium through the runner: {}", {
        let mut shown = result.clone();
        shown["metrics"] = serde_json::Value::Null;
        shown
    });
    assert!(result["framesDecoded"].as_u64().unwrap() >= 60, "{result}");
    let p50 = result["p50"].as_f64().unwrap();
    // A bound that catches a stamp read against the wrong clock; the benchmark measures the
    // figure.
    assert!(p50 > 0.0 && p50 < 1000.0, "glass-to-glass p50 {p50} ms");
    assert!(result["rtt"].as_f64().unwrap() > 0.0, "{result}");

    // The page reported its latency over the data channel while it played (read by the page
    // itself, while its session is certainly alive).
    let metrics = result["metrics"].as_str().unwrap_or_default();
    let reported = metric(metrics, "hybridlive_viewer_latency_p50_seconds");
    assert!(
        reported.is_some_and(|s| s > 0.0 && s < 1.0),
        "viewer latency in /metrics: {metrics}"
    );
    assert_eq!(
        metric(metrics, "hybridlive_webrtc_viewers"),
        Some(1.0),
        "{metrics}"
    );

    // Anyone sees that a viewer raised a hand (an opaque id, not its WHEP resource); only the
    // host, with the token, reads the question.
    let status: serde_json::Value =
        serde_json::from_str(&runner.get("/api/status").text()).unwrap();
    let hands = &status["webrtc"]["raised_hands"];
    assert!(hands[0]["viewer"].is_string(), "{status}");
    assert!(
        hands[0]["text"].is_null(),
        "the question is public: {status}"
    );
    let auth = [("Authorization", "Bearer test-token-5f1c")];
    let status: serde_json::Value =
        serde_json::from_str(&runner.request("GET", "/api/status", &auth, b"").text()).unwrap();
    let hands = &status["webrtc"]["raised_hands"];
    assert_eq!(hands[0]["text"], "Which brush for the edges?", "{status}");
    // The page closed with the browser: its session is gone (DELETE or RTCP silence).
    eventually(
        Duration::from_secs(30),
        "the viewer's session torn down",
        || {
            let status: serde_json::Value =
                serde_json::from_str(&runner.get("/api/status").text()).ok()?;
            (status["webrtc"]["viewers"] == 0).then_some(())
        },
    );
    // The viewer leaving (its data channel torn down under the server's feet) ended its own
    // session only: the output the other viewers watch kept running.
    let status: serde_json::Value =
        serde_json::from_str(&runner.get("/api/status").text()).unwrap();
    let webrtc = &status["outputs"]["webrtc"];
    assert_eq!(webrtc["state"], "running", "{status}");
    assert_eq!(webrtc["restarts"], 0, "{status}");
    assert_eq!(runner.request("OPTIONS", "/whep", &[], b"").status, 204);
}

#[test]
fn webrtc_output_sends_vp8_to_viewers_when_listed_first() {
    if !in_private_netns("webrtc_output_sends_vp8_to_viewers_when_listed_first") {
        return;
    }
    let dir = scratch_dir("runner-test", "webrtc-vp8");
    let file = dir.join("webrtc-vp8.toml");
    std::fs::write(
        &file,
        r#"
[sources.cam]
type = "test"
width = 640
height = 360
framerate = 30

[encoders.vp8]
type = "vp8"
inputs = ["cam"]
bitrate = 1000

[encoders.video]
type = "h264"
inputs = ["cam"]
preset = "zerolatency"
bitrate = 1000

[outputs.webrtc]
type = "webrtc"
inputs = ["vp8", "video"]
loopback_only = true
"#,
    )
    .unwrap();
    let runner = test_runner(&file, &dir).start();
    let result = viewer_page(
        &runner.base,
        "window.viewer && window.viewer.mode === 'webrtc' && window.viewer.player",
        "(async () => { \
               const until = performance.now() + 20000; \
               let s = await window.viewer.player.stats(); \
               while (s.framesDecoded < 45 && performance.now() < until) { \
                 await new Promise((r) => setTimeout(r, 100)); \
                 s = await window.viewer.player.stats(); } \
               const report = await window.viewer.player.pc.getStats(); \
               const codec = report.get(s.codecId).mimeType; \
               await window.viewer.player.stop(); \
               return { framesDecoded: s.framesDecoded, codec }; })()",
    );
    eprintln!("chromium through the runner, VP8 first: {result}");
    assert_eq!(result["codec"], "video/VP8", "{result}");
    // 45 frames decoded within 20 s (a stalled stream never gets there).
    assert!(result["framesDecoded"].as_u64().unwrap() >= 45, "{result}");

    // A viewer that offers only H.264 gets the second choice.
    let h264_only = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        a=group:BUNDLE 0\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 102\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=recvonly\r\n\
        a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
        a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
        a=setup:actpass\r\na=rtcp-mux\r\n\
        a=rtpmap:102 H264/90000\r\na=fmtp:102 packetization-mode=1;profile-level-id=42e01f\r\n";
    let answer = runner.request(
        "POST",
        "/whep",
        &[("Content-Type", "application/sdp")],
        h264_only.as_bytes(),
    );
    assert_eq!(answer.status, 201, "{}", answer.text());
    assert!(answer.text().contains("H264/90000"), "{}", answer.text());
    assert!(!answer.text().contains("VP8"), "{}", answer.text());
}

/// A ladder encoder (three rungs) behind the webrtc output: Chromium decodes the rung the
/// status says the viewer is on, the metrics count it, and the status names no session.
#[test]
fn a_ladder_viewer_decodes_the_rung_the_status_reports() {
    if !in_private_netns("a_ladder_viewer_decodes_the_rung_the_status_reports") {
        return;
    }
    let dir = scratch_dir("runner-test", "webrtc-ladder");
    let file = dir.join("ladder.toml");
    std::fs::write(
        &file,
        r#"
[sources.cam]
type = "test"
width = 1280
height = 720
framerate = 30

[encoders.video]
type = "h264"
inputs = ["cam"]
rungs = ["1280x720@30:2500", "640x360@30:700", "320x180@30:200"]

[encoders.voice]
type = "opus"
inputs = ["cam"]

[outputs.webrtc]
type = "webrtc"
inputs = ["video", "voice"]
loopback_only = true
"#,
    )
    .unwrap();
    let runner = test_runner(&file, &dir).start();
    // Every rung is encoded: each has its own encoder rate in the status.
    let status = eventually(Duration::from_secs(30), "every rung encodes", || {
        let status = runner.get("/api/status").json();
        let rates = &status["encoders"];
        ["video", "video@1", "video@2"]
            .iter()
            .all(|name| rates[name]["kbps"].as_f64().is_some_and(|k| k > 0.0))
            .then_some(status)
    });
    eprintln!("encoders: {}", status["encoders"]);
    let result = viewer_page(
        &runner.base,
        "window.viewer && window.viewer.mode === 'webrtc' && window.viewer.player",
        "(async () => { \
               const until = performance.now() + 20000; \
               let s = await window.viewer.player.stats(); \
               while ((!s || s.framesDecoded < 60) && performance.now() < until) { \
                 await new Promise((r) => setTimeout(r, 100)); \
                 s = await window.viewer.player.stats(); } \
               const status = await (await fetch('/api/status')).json(); \
               const metrics = await (await fetch('/metrics')).text(); \
               return { framesDecoded: s.framesDecoded, height: s.frameHeight, \
                        status: status.webrtc, metrics }; })()",
    );
    let webrtc = &result["status"];
    eprintln!(
        "chromium on a ladder: decoded {} frames at {}p; status {webrtc}",
        result["framesDecoded"], result["height"]
    );
    assert!(result["framesDecoded"].as_u64().unwrap() >= 60, "{result}");
    let sessions = webrtc["sessions"].as_array().expect("sessions with rungs");
    assert_eq!(sessions.len(), 1, "{webrtc}");
    let session = &sessions[0];
    assert_eq!(result["height"], session["height"], "{webrtc}");
    // No session id, no address: the resource id ends the session.
    let text = session.to_string();
    assert!(
        !text.contains("\"id\"") && !text.contains("127.0.0.1"),
        "{text}"
    );
    let per_rung = webrtc["viewers_per_rung"]
        .as_array()
        .expect("viewers per rung");
    assert_eq!(per_rung.len(), 3, "{webrtc}");
    assert_eq!(
        per_rung.iter().filter_map(|v| v.as_u64()).sum::<u64>(),
        1,
        "{webrtc}"
    );
    let metrics = result["metrics"].as_str().unwrap_or_default();
    let counted: f64 = (0..3)
        .filter_map(|r| {
            metric(
                metrics,
                &format!("hybridlive_webrtc_rung_viewers{{rung=\"{r}\"}}"),
            )
        })
        .sum();
    assert_eq!(counted, 1.0, "{metrics}");
}
