//! ICE over TCP end to end: `hybridlive run` with a WebRTC output and an HLS fallback, and the
//! runner's own viewer page in headless Chromium on another host (a network namespace of the
//! test's own, `hybridlive_testkit::netns`) whose UDP a firewall drops (nftables). The page must
//! play over WebRTC on a TCP candidate pair, not fall back to HLS, and say so; a viewer whose
//! UDP works keeps UDP. Also what a pipeline file may say of ICE.
//!
//! `cargo nextest run -p hybridlive-runner --test ice_tcp`

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use hybridlive_testkit::netns::ViewerHost;
use hybridlive_testkit::process::sh;
use hybridlive_testkit::runner_child::{RunnerChild, test_runner};
use hybridlive_testkit::{free_tcp_port, in_private_netns, scratch_dir};

hybridlive_testkit::runner_child_entry!();

/// The ICE ports of the tests' WebRTC output.
const ICE_PORTS: [u16; 2] = [20000, 20063];

/// A 640x360 camera, stamped, encoded once for WebRTC (H.264 + Opus) and HLS (H.264 + AAC).
fn pipeline(dir: &Path) -> PathBuf {
    let file = dir.join("ice-tcp.toml");
    std::fs::write(
        &file,
        format!(
            "[sources.cam]\ntype = \"test\"\nwidth = 640\nheight = 360\nframerate = 30\n\n\
             [encoders.video]\ntype = \"h264\"\ninputs = [\"cam\"]\npreset = \"zerolatency\"\n\
             bitrate = 1200\nkeyframe_interval = 1\n\n\
             [encoders.voice]\ntype = \"opus\"\ninputs = [\"cam\"]\n\n\
             [encoders.audio]\ntype = \"aac\"\ninputs = [\"cam\"]\n\n\
             [outputs.webrtc]\ntype = \"webrtc\"\ninputs = [\"video\", \"voice\"]\n\
             ice_tcp = true\nice_ports = [{}, {}]\n\n\
             [outputs.hls]\ntype = \"hls\"\ninputs = [\"video\", \"audio\"]\nsegment_duration = 1\n",
            ICE_PORTS[0], ICE_PORTS[1]
        ),
    )
    .expect("write the pipeline file");
    file
}

/// The runner listening on every address of the test's namespace (the viewer hosts' links).
fn start_runner(file: &Path, dir: &Path) -> (RunnerChild, u16) {
    let port = free_tcp_port();
    let runner = test_runner(file, dir)
        .http(&format!("0.0.0.0:{port}"))
        .start_within(Duration::from_secs(90));
    (runner, port)
}

/// A firewall between `host` and the server that lets no UDP through, either way, dropping it
/// silently as a middlebox does (an `input` hook on both sides: a sender sees no error).
fn drop_udp_of(host: &ViewerHost) {
    let viewer = host.viewer_ip();
    sh(&format!(
        "nft add table inet icetcp && \
         nft add chain inet icetcp in '{{ type filter hook input priority 0; }}' && \
         nft add rule inet icetcp in ip saddr {viewer} meta l4proto udp drop"
    ));
    let status = host
        .command("sh")
        .arg("-c")
        .arg(
            "nft add table inet icetcp && \
             nft add chain inet icetcp in '{ type filter hook input priority 0; }' && \
             nft add rule inet icetcp in meta l4proto udp drop",
        )
        .status()
        .expect("nft runs (scripts/setup installs nftables)");
    assert!(status.success(), "nft in the viewer host failed");
}

/// Opens the runner's viewer page from `host` with `?measure=SECONDS` and returns what it
/// publishes as `window.result` (mode, transport, first-frame time, latencies) and what it says
/// then (`says`).
fn measure_from(host: &ViewerHost, port: u16, seconds: u32) -> serde_json::Value {
    let driver = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/browser/viewer.mjs");
    let out = host
        .command("node")
        .arg(driver)
        .arg(format!(
            "http://{}:{port}/?measure={seconds}",
            host.server_ip()
        ))
        .arg((seconds + 60).to_string())
        // What the page says of the way it plays, beside its figures.
        .env(
            "RESULT",
            "({ ...window.result, says: document.getElementById('state').textContent })",
        )
        .stdin(Stdio::null())
        .output()
        .expect("node runs (scripts/setup installs the browser test driver)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "browser run failed:\n{stderr}");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("the driver printed no JSON ({e}):\n{stderr}"))
}

/// What a failure message needs of a page's result: all but the figures of every frame.
fn summary(result: &serde_json::Value) -> serde_json::Value {
    let mut summary = result.clone();
    if let Some(map) = summary.as_object_mut() {
        let latencies = latencies(result);
        for key in ["latencies", "rttMs", "interactionMs"] {
            map.remove(key);
        }
        if !latencies.is_empty() {
            map.insert(
                "glass_to_glass_ms".into(),
                serde_json::json!({
                    "frames": latencies.len(),
                    "p50": percentile(&latencies, 0.5),
                    "p95": percentile(&latencies, 0.95),
                }),
            );
        }
    }
    summary
}

fn percentile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

fn latencies(result: &serde_json::Value) -> Vec<f64> {
    result["latencies"]
        .as_array()
        .map(|l| l.iter().filter_map(|v| v.as_f64()).collect())
        .unwrap_or_default()
}

#[test]
fn a_viewer_whose_udp_is_dropped_plays_webrtc_over_tcp_not_hls() {
    if !in_private_netns("a_viewer_whose_udp_is_dropped_plays_webrtc_over_tcp_not_hls") {
        return;
    }
    let dir = scratch_dir("runner-test", "ice-tcp");
    let (_runner, port) = start_runner(&pipeline(&dir), &dir);
    let host = ViewerHost::new(0, 50_000);
    drop_udp_of(&host);
    let result = measure_from(&host, port, 10);
    let summary = summary(&result);
    eprintln!("a viewer without UDP: {summary}");
    assert_eq!(result["mode"], "webrtc", "{summary}");
    assert_eq!(result["transport"]["protocol"], "tcp", "{summary}");
    assert_eq!(result["transport"]["remoteProtocol"], "tcp", "{summary}");
    let says = result["says"].as_str().unwrap_or_default();
    assert!(says.starts_with("WebRTC over TCP · "), "{summary}");
    let latencies = latencies(&result);
    assert!(latencies.len() >= 100, "frames measured: {summary}");
    // The bound for a viewer on TCP on loopback (HLS, the fallback, is seconds).
    let p95 = percentile(&latencies, 0.95);
    assert!(
        p95 < 150.0,
        "glass-to-glass p95 {p95:.0} ms over TCP: {summary}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_viewer_whose_udp_works_keeps_udp() {
    if !in_private_netns("a_viewer_whose_udp_works_keeps_udp") {
        return;
    }
    let dir = scratch_dir("runner-test", "ice-udp");
    let (_runner, port) = start_runner(&pipeline(&dir), &dir);
    let host = ViewerHost::new(0, 50_000);
    let result = measure_from(&host, port, 10);
    let summary = summary(&result);
    eprintln!("a viewer with UDP: {summary}");
    assert_eq!(result["mode"], "webrtc", "{summary}");
    assert_eq!(result["transport"]["protocol"], "udp", "{summary}");
    let says = result["says"].as_str().unwrap_or_default();
    assert!(says.starts_with("WebRTC · "), "{summary}");
    assert!(
        latencies(&result).len() >= 100,
        "frames measured: {summary}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The WebRTC output of a file whose `[outputs.live]` table ends with `keys`.
fn webrtc_output(keys: &str) -> Result<hybridlive_runner::WebrtcOutput, String> {
    hybridlive_runner::init().expect("GStreamer initialises");
    let text = format!(
        "[sources.cam]\ntype = \"test\"\n\n\
         [encoders.video]\ntype = \"h264\"\ninputs = [\"cam\"]\npreset = \"zerolatency\"\n\n\
         [outputs.live]\ntype = \"webrtc\"\ninputs = [\"video\"]\n{keys}\n"
    );
    let pipeline = hybridlive_runner::parse_named("ice.toml", &text).map_err(|e| e.to_string())?;
    let output = pipeline
        .outputs
        .iter()
        .find(|o| o.name == "live")
        .expect("the output");
    Ok(output
        .kind
        .as_any()
        .downcast_ref::<hybridlive_runner::WebrtcOutput>()
        .expect("a webrtc output")
        .clone())
}

#[test]
fn ice_keys_are_read_with_their_defaults() {
    let default = webrtc_output("").unwrap();
    assert!(default.ice_tcp);
    assert_eq!(default.ice_ports, None);
    let set = webrtc_output("ice_tcp = false\nice_ports = [20000, 20099]").unwrap();
    assert!(!set.ice_tcp);
    assert_eq!(set.ice_ports, Some([20000, 20099]));
    // Exactly as many ports as viewers.
    let tight = webrtc_output("max_viewers = 4\nice_ports = [8189, 8192]").unwrap();
    assert_eq!(tight.ice_ports, Some([8189, 8192]));
}

#[test]
fn malformed_ice_keys_are_refused_where_they_are_written() {
    for (keys, expected) in [
        (
            "ice_ports = [20099, 20000]",
            &[
                "ice.toml:12:13",
                "outputs.live: `ice_ports`: expected [min, max]",
            ][..],
        ),
        (
            "ice_ports = 8189",
            &[
                "ice.toml:12:13",
                "outputs.live: `ice_ports`: expected [min, max]",
            ],
        ),
        (
            "ice_ports = [0, 100]",
            &["outputs.live: `ice_ports`: expected [min, max]: two ports (1..=65535)"],
        ),
        (
            "ice_ports = [60000, 70000]",
            &["outputs.live: `ice_ports`: expected [min, max]"],
        ),
        (
            "ice_ports = [8189, 8189]",
            &[
                "outputs.live: `ice_ports`: [8189, 8189] holds 1 ports, fewer than max_viewers (64)",
                "e.g. `ice_ports = [20000, 20099]`",
            ],
        ),
        (
            "ice_tcp = \"yes\"",
            &["ice.toml:12:11", "outputs.live: `ice_tcp`"],
        ),
        (
            "ice_tpc = true",
            &[
                "outputs.live: `ice_tpc`: unknown key",
                "did you mean `ice_tcp`?",
            ],
        ),
    ] {
        let error = webrtc_output(keys).expect_err(keys);
        for part in expected {
            assert!(
                error.contains(part),
                "`{keys}`: expected `{part}` in:\n{error}"
            );
        }
    }
}
