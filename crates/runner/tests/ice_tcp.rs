//! ICE over TCP end to end: `hybridlive run` with a WebRTC output and an HLS fallback, and the
//! runner's own viewer page in headless Chromium on another host (a network namespace of the
//! test's own, `hybridlive_testkit::netns`) whose UDP a firewall drops (nftables). The page must
//! play over WebRTC on a TCP candidate pair, not fall back to HLS, and say so; a viewer whose
//! UDP works keeps UDP. Also what a pipeline file may say of ICE.
//!
//! `cargo nextest run -p hybridlive-runner --test ice_tcp`

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use hybridlive_testkit::netns::ViewerHost;
use hybridlive_testkit::process::sh;
use hybridlive_testkit::runner_child::{RunnerChild, test_runner};
use hybridlive_testkit::{free_tcp_port, in_private_namespaces, in_private_netns, scratch_dir};

hybridlive_testkit::runner_child_entry!();

/// The ICE ports of the tests' WebRTC output.
const ICE_PORTS: [u16; 2] = [20000, 20063];

/// A 640x360 camera, stamped, encoded once for WebRTC (H.264 + Opus) and HLS (H.264 + AAC).
fn pipeline(dir: &Path) -> PathBuf {
    pipeline_with(dir, true)
}

/// [`pipeline`], with or without TCP candidates.
fn pipeline_with(dir: &Path, ice_tcp: bool) -> PathBuf {
    let file = dir.join(format!("ice-tcp-{ice_tcp}.toml"));
    std::fs::write(
        &file,
        format!(
            "[sources.cam]\ntype = \"test\"\nwidth = 640\nheight = 360\nframerate = 30\n\n\
             [encoders.video]\ntype = \"h264\"\ninputs = [\"cam\"]\npreset = \"zerolatency\"\n\
             bitrate = 1200\nkeyframe_interval = 1\n\n\
             [encoders.voice]\ntype = \"opus\"\ninputs = [\"cam\"]\n\n\
             [encoders.audio]\ntype = \"aac\"\ninputs = [\"cam\"]\n\n\
             [outputs.webrtc]\ntype = \"webrtc\"\ninputs = [\"video\", \"voice\"]\n\
             ice_tcp = {ice_tcp}\nice_ports = [{}, {}]\n\n\
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
    // The glass-to-glass figure is printed, not asserted (tests assert no wall-clock time):
    // the bound (p95 under 150 ms on loopback) is measured by the ignored `measure`
    // test and reported in docs/benchmarks.md.
    eprintln!(
        "glass-to-glass p95 over TCP: {:.0} ms",
        percentile(&latencies, 0.95)
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
    common::webrtc_output("ice.toml", keys)
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

/// Drops `percent` % of the packets arriving in `host` (from the server: media, and TCP's
/// segments with it), at random.
fn lose_in(host: &ViewerHost, percent: u32) {
    let status = host
        .command("sh")
        .arg("-c")
        .arg(format!(
            "nft add table inet loss && \
             nft add chain inet loss in '{{ type filter hook input priority 10; }}' && \
             nft add rule inet loss in numgen random mod 100 lt {percent} drop"
        ))
        .status()
        .expect("nft runs");
    assert!(status.success(), "nft loss rule in the viewer host failed");
}

/// `rounds` joins of the runner's page on `port` from `host`, each on `protocol`; prints
/// first frame, join time, glass-to-glass p50/p95 and packets lost, labelled `label`.
fn measure_joins(host: &ViewerHost, port: u16, rounds: usize, protocol: &str, label: &str) {
    let (mut first, mut join, mut all, mut lost, mut frames) =
        (Vec::new(), Vec::new(), Vec::new(), 0.0, 0.0);
    for _ in 0..rounds {
        let result = measure_from(host, port, 8);
        let summary = summary(&result);
        assert_eq!(result["mode"], "webrtc", "{summary}");
        assert_eq!(result["transport"]["protocol"], protocol, "{summary}");
        first.push(result["firstFrameMs"].as_f64().unwrap_or(f64::NAN));
        join.push(result["joinMs"].as_f64().unwrap_or(f64::NAN));
        all.extend(latencies(&result));
        lost += result["packetsLost"].as_f64().unwrap_or(0.0);
        frames += result["framesDecoded"].as_f64().unwrap_or(0.0);
    }
    eprintln!(
        "ICE-TCP bench: {label}: first frame p50 {:.0} ms (each: {first:.0?}), join p50 {:.0} ms \
         (each: {join:.0?}); glass-to-glass p50 {:.1} ms, p95 {:.1} ms over {} frames; RTP \
         packets lost {lost}, frames decoded {frames}",
        percentile(&first, 0.5),
        percentile(&join, 0.5),
        percentile(&all, 0.5),
        percentile(&all, 0.95),
        all.len()
    );
}

/// The measurement behind docs/benchmarks.md ("ICE over TCP"), not a test: Chromium joins the
/// runner's page from a host with UDP, first from a runner without TCP candidates (as before
/// ICE-TCP), then, from one with them, from that host and from one whose UDP is dropped, in
/// turns (`ROUNDS` each, 8 s of figures per join), on a clean path and then with 2 % of the
/// packets towards the viewers lost; prints first frame, join time, glass-to-glass p50/p95 and
/// packets lost per way.
///
/// `cargo nextest run -p hybridlive-runner --test ice_tcp --run-ignored only --no-capture measure`
#[test]
#[ignore = "a measurement (minutes), run by hand: see docs/benchmarks.md"]
fn measure_udp_against_tcp_in_chromium() {
    if !in_private_namespaces("measure_udp_against_tcp_in_chromium") {
        return;
    }
    const ROUNDS: usize = 4;
    let dir = scratch_dir("runner-bench", "ice-tcp");
    let (open, closed) = (ViewerHost::new(0, 50_000), ViewerHost::new(1, 50_000));
    drop_udp_of(&closed);
    {
        let (mut before, port) = start_runner(&pipeline_with(&dir, false), &dir);
        measure_joins(
            &open,
            port,
            ROUNDS,
            "udp",
            "0 % loss, UDP, no TCP candidates",
        );
        before.signal("INT");
        before.wait_exit(Duration::from_secs(30));
    }
    let (_runner, port) = start_runner(&pipeline(&dir), &dir);
    for loss in [0, 2] {
        if loss > 0 {
            lose_in(&open, loss);
            lose_in(&closed, loss);
        }
        measure_joins(&open, port, ROUNDS, "udp", &format!("{loss} % loss, UDP"));
        measure_joins(&closed, port, ROUNDS, "tcp", &format!("{loss} % loss, TCP"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
