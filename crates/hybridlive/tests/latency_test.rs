//! `hybridlive latency-test` end to end: the pipeline in-process, headless Chromium viewers over
//! WebRTC and HLS, the report, the histogram and the exit code. Runs in a private network
//! namespace: only 127.0.0.1 exists.

mod common;

use common::TempDir;
use hybridlive_testkit::in_private_netns;
use std::process::Command;

const PIPELINE: &str = r#"
[sources.cam]
type = "srt"
uri = "srt://127.0.0.1:9713?mode=caller"
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

[encoders.audio]
type = "aac"
inputs = ["cam"]

[outputs.webrtc]
type = "webrtc"
inputs = ["video", "voice"]

[outputs.hls]
type = "hls"
inputs = ["video", "audio"]

[outputs.platform]
type = "rtmp"
inputs = ["video", "audio"]
location = "rtmp://127.0.0.1:1/live/key"

[latency_test]
duration = 5
webrtc_p95_ms = 2000
hls_p95_ms = 30000
"#;

fn hybridlive(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hybridlive"))
        .args(args)
        .output()
        .expect("hybridlive runs")
}

#[test]
fn latency_test_measures_webrtc_and_hls_in_chromium_and_fails_on_a_budget() {
    if !in_private_netns("latency_test_measures_webrtc_and_hls_in_chromium_and_fails_on_a_budget") {
        return;
    }
    let dir = TempDir::new("latency-test");
    let file = dir.path("event.toml");
    std::fs::write(&file, PIPELINE).unwrap();
    let plot = dir.path("latency.svg");
    let file_arg = file.to_str().unwrap();

    let out = hybridlive(&[
        "latency-test",
        file_arg,
        "--json",
        "--out",
        plot.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "latency-test failed:\n{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("{report:#}");

    // The camera that is not there was replaced by a test source, the platform push left out.
    let changes = report["changes"].to_string();
    assert!(changes.contains("source `cam` replaced"), "{changes}");
    assert!(changes.contains("output `platform` left out"), "{changes}");

    let path = |name: &str| {
        report["paths"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["path"] == name)
            .unwrap_or_else(|| panic!("no {name} in {report}"))
            .clone()
    };
    let (webrtc, hls) = (path("webrtc"), path("hls"));
    assert_eq!(webrtc["played"], "webrtc");
    assert_eq!(hls["played"], "hls");
    // 5 s at 30 fps: at least a fifth of the frames matched to their capture stamp (a loaded
    // machine lets headless Chromium composite fewer frames than it decodes).
    for p in [&webrtc, &hls] {
        assert!(p["latency_ms"]["count"].as_u64().unwrap() >= 30, "{p}");
    }
    let webrtc_p50 = webrtc["latency_ms"]["p50"].as_f64().unwrap();
    let hls_p50 = hls["latency_ms"]["p50"].as_f64().unwrap();
    assert!(webrtc_p50 > 0.0 && webrtc_p50 < 1000.0, "{webrtc}");
    // HLS waits for whole 1 s segments: it trails WebRTC.
    assert!(
        hls_p50 > webrtc_p50 + 500.0,
        "WebRTC {webrtc_p50} ms, HLS {hls_p50} ms"
    );
    assert!(webrtc["join_ms"].as_f64().unwrap() > 0.0, "{webrtc}");
    assert!(
        report["interaction_ms"]["count"].as_u64().unwrap() >= 3,
        "{report}"
    );
    assert!(
        report["webrtc_rtt_ms"]["count"].as_u64().unwrap() >= 1,
        "{report}"
    );
    let budgets: Vec<&str> = report["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(budgets, ["webrtc_p95_ms", "hls_p95_ms"]);

    let svg = std::fs::read_to_string(&plot).expect("the histogram was written");
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("WebRTC: ") && svg.contains("HLS: "), "{svg}");

    // A budget no pipeline can meet fails the run and is named.
    let out = hybridlive(&[
        "latency-test",
        file_arg,
        "--only",
        "webrtc",
        "--duration",
        "2",
        "--webrtc-p95-ms",
        "0.001",
        "--out",
        plot.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("over budget: webrtc_p95_ms = 0.001 ms, measured"),
        "{stderr}"
    );
    assert!(stdout.contains("EXCEEDED"), "{stdout}");
}

#[test]
fn latency_test_names_a_missing_file() {
    let out = hybridlive(&["latency-test", "/nonexistent/event.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/event.toml"), "{stderr}");
}
