//! What `hybridlive run` writes when its output is a file or a pipe, as under systemd or a log
//! shipper: plain lines, no terminal control codes.

use std::path::PathBuf;
use std::process::{Command, Output};

/// Runs `pipeline` for 3 s with stdout piped, from a scratch folder of its own.
fn run(name: &str, pipeline: &str, http: &str) -> Output {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("hybridlive-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch folder");
    let file = dir.join("pipeline.toml");
    std::fs::write(&file, pipeline).expect("pipeline file");
    let out = Command::new(env!("CARGO_BIN_EXE_hybridlive"))
        .arg("run")
        .arg(&file)
        .args(["--http", http, "--duration", "3"])
        .current_dir(&dir)
        .output()
        .expect("hybridlive run");
    let _ = std::fs::remove_dir_all(&dir);
    out
}

#[test]
fn events_written_to_a_pipe_carry_no_terminal_control_codes() {
    let out = run(
        "logs",
        "[sources.cam]\ntype = \"test\"\nwidth = 320\nheight = 180\n\n\
         [encoders.video]\ntype = \"h264\"\ninputs = [\"cam\"]\nbitrate = 300\n\n\
         [outputs.live]\ntype = \"hls\"\ninputs = [\"video\"]\n",
        "127.0.0.1:0",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the run failed: {stdout}");
    assert!(
        stdout.contains("hybridlive: viewer at http://127.0.0.1:"),
        "no ready line: {stdout:?}"
    );
    assert!(
        stdout.lines().count() >= 2,
        "fewer event lines than expected: {stdout:?}"
    );
    assert!(
        !stdout.contains('\x1b') && !stdout.contains('\r'),
        "control codes in a piped log: {stdout:?}"
    );
}

#[test]
fn every_interface_with_loopback_only_webrtc_warns_and_shows_a_reachable_url() {
    let out = run(
        "any-interface",
        "[sources.cam]\ntype = \"test\"\nwidth = 320\nheight = 180\n\n\
         [encoders.video]\ntype = \"h264\"\ninputs = [\"cam\"]\nbitrate = 300\n\n\
         [encoders.voice]\ntype = \"opus\"\ninputs = [\"cam\"]\n\n\
         [outputs.webrtc]\ntype = \"webrtc\"\ninputs = [\"video\", \"voice\"]\n\
         loopback_only = true\n",
        "0.0.0.0:0",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the run failed: {stdout}");
    assert!(
        stdout.contains("hybridlive: viewer at http://127.0.0.1:"),
        "the ready line does not name an address a browser opens: {stdout}"
    );
    assert!(
        !stdout.contains("http://0.0.0.0"),
        "0.0.0.0 shown as a URL: {stdout}"
    );
    assert!(
        stdout.contains("loopback_only = true"),
        "no warning about remote viewers of a loopback-only WebRTC output: {stdout}"
    );
}
