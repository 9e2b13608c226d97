//! An output that cannot reach its far end says which endpoint and why, and never shows the
//! stream key, passphrase or token of its URL.

use std::process::Command;

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Runs `outputs` behind a small test source for `seconds` with `--json`; returns stdout and
/// stderr.
fn run(name: &str, outputs: &str, seconds: u32) -> (String, String) {
    let dir = std::env::temp_dir().join(format!("hybridlive-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch folder");
    let file = dir.join("pipeline.toml");
    let pipeline = format!(
        "[sources.cam]\ntype = \"test\"\nwidth = 320\nheight = 180\n\n\
         [encoders.video]\ntype = \"h264\"\ninputs = [\"cam\"]\nbitrate = 300\n\n\
         [encoders.audio]\ntype = \"aac\"\ninputs = [\"cam\"]\n\n\
         [encoders.voice]\ntype = \"opus\"\ninputs = [\"cam\"]\n\n{outputs}"
    );
    std::fs::write(&file, pipeline).expect("pipeline file");
    let out = Command::new(env!("CARGO_BIN_EXE_hybridlive"))
        .arg("run")
        .arg(&file)
        .args(["--http", "127.0.0.1:0", "--json", "--duration"])
        .arg(seconds.to_string())
        .current_dir(&dir)
        .output()
        .expect("hybridlive run");
    let _ = std::fs::remove_dir_all(&dir);
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The `error` of every `output-failed` event.
fn failures(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "output-failed")
        .filter_map(|e| e["error"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn an_rtmp_push_that_is_refused_names_the_server_not_the_stream_key() {
    let port = closed_port();
    let key = "sk_live_Zq81xY";
    let (stdout, stderr) = run(
        "rtmp-refused",
        &format!(
            "[outputs.platform]\ntype = \"rtmp\"\ninputs = [\"video\", \"audio\"]\n\
             location = \"rtmp://127.0.0.1:{port}/live/{key}\"\n"
        ),
        4,
    );
    let failed = failures(&stdout);
    let first = failed
        .first()
        .unwrap_or_else(|| panic!("no output-failed: {stdout}"));
    assert!(
        first.contains(&format!("rtmp://127.0.0.1:{port}/live/****")),
        "the endpoint is not named: {first}"
    );
    assert!(first.contains("refused"), "no reason given: {first}");
    assert!(
        !stdout.contains(key) && !stderr.contains(key),
        "the stream key was written out: {stdout}\n{stderr}"
    );
}

#[test]
fn a_janus_output_with_no_sfu_names_the_endpoint_and_the_reason() {
    let port = closed_port();
    let (stdout, _) = run(
        "janus-refused",
        &format!(
            "[outputs.room]\ntype = \"janus\"\ninputs = [\"video\", \"voice\"]\n\
             endpoint = \"ws://127.0.0.1:{port}\"\nroom_id = 1234\nloopback_only = true\n"
        ),
        6,
    );
    let failed = failures(&stdout);
    let first = failed
        .first()
        .unwrap_or_else(|| panic!("no output-failed: {stdout}"));
    assert!(
        first.contains(&format!("ws://127.0.0.1:{port}")) && first.contains("refused"),
        "the failure names neither the SFU nor why: {first}"
    );
}
