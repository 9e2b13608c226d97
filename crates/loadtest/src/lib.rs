//! Load tests of `hybridlive run`: many WHEP viewers joining and leaving (churn) and a long
//! run with viewers attached (soak).
//!
//! The runner runs in a child process of its own, so that what is counted in
//! `/proc/<pid>` (file descriptors, threads, memory, CPU time) is the runner's alone and not
//! the viewers'. The viewers are GStreamer `webrtcbin` receivers in this process.
//!
//! - [`churn`]: join/leave cycles of every kind a viewer can leave by, with the leaks counted.
//! - [`viewer`]: a WHEP viewer (SDP offer, answer, frames, latency from the capture stamps).
//! - [`process`]: RSS, CPU time, threads and file descriptors of a process.
//! - [`runner`]: the runner child process and a tiny HTTP client for its API.
//! - [`plot`]: an SVG of sampled curves.

pub mod churn;
pub mod plot;
pub mod process;
pub mod runner;
pub use hybridlive_testkit::viewer;

/// The pipeline churn runs by default: a small test picture (churn is about sessions, not
/// pixels), one H.264 and one Opus encode, WebRTC on loopback.
pub const CHURN_PIPELINE: &str = r#"
[sources.cam]
type = "test"
width = 640
height = 360
framerate = 30

[encoders.video]
type = "h264"
inputs = ["cam"]
preset = "zerolatency"
bitrate = 1000
keyframe_interval = 1

[encoders.voice]
type = "opus"
inputs = ["cam"]
bitrate = 64

[outputs.webrtc]
type = "webrtc"
inputs = ["video", "voice"]
loopback_only = true
max_viewers = 64
"#;

/// Initialises GStreamer and registers `latencymeter` for the viewers.
pub fn init() -> anyhow::Result<()> {
    gst::init()?;
    static REGISTER: std::sync::Once = std::sync::Once::new();
    let mut result = Ok(());
    REGISTER.call_once(|| result = gstlatency::plugin_register_static());
    Ok(result?)
}

/// Runs the current program again inside a new network namespace holding `lo` (and, with
/// `veth`, a veth pair `hl0` 10.213.0.1 / `hl1` 10.213.0.2 for pipelines that gather ICE
/// candidates on real interfaces only), so no WebRTC traffic can leave the machine. Returns
/// `None` when already inside (carry on), or the exit code of the run inside.
pub fn reexec_in_netns(veth: bool) -> Option<i32> {
    if std::env::var_os(hybridlive_testkit::INSIDE_VAR).is_some() {
        return None;
    }
    let exe = std::env::current_exe().ok()?;
    let setup = if veth {
        hybridlive_testkit::VETH_SETUP
    } else {
        ""
    };
    let status = hybridlive_testkit::unshare_command(false, setup)
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .status();
    Some(match status {
        Ok(status) => status.code().unwrap_or(1),
        Err(err) => {
            eprintln!("cannot run unshare --net (root is needed for a network namespace): {err}");
            1
        }
    })
}
