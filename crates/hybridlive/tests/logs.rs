//! What `hybridlive run` writes when its output is a file or a pipe, as under systemd or a log
//! shipper: plain lines, no terminal control codes.

use std::process::Command;

#[test]
fn events_written_to_a_pipe_carry_no_terminal_control_codes() {
    let dir = std::env::temp_dir().join(format!("hybridlive-logs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch folder");
    let pipeline = dir.join("pipeline.toml");
    std::fs::write(
        &pipeline,
        "[sources.cam]\ntype = \"test\"\nwidth = 320\nheight = 180\n\n\
         [encoders.video]\ntype = \"h264\"\ninputs = [\"cam\"]\nbitrate = 300\n\n\
         [outputs.live]\ntype = \"hls\"\ninputs = [\"video\"]\n",
    )
    .expect("pipeline file");
    let out = Command::new(env!("CARGO_BIN_EXE_hybridlive"))
        .arg("run")
        .arg(&pipeline)
        .args(["--http", "127.0.0.1:0", "--duration", "3"])
        .current_dir(&dir)
        .output()
        .expect("hybridlive run");
    let _ = std::fs::remove_dir_all(&dir);
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
