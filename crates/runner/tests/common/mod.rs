//! What several runner test files share.

/// A test camera, H.264 and a WebRTC output `live` whose table ends the file.
pub const WEBRTC_PIPELINE: &str = "[sources.cam]\ntype = \"test\"\n\n\
     [encoders.video]\ntype = \"h264\"\ninputs = [\"cam\"]\npreset = \"zerolatency\"\n\n\
     [outputs.live]\ntype = \"webrtc\"\ninputs = [\"video\"]\n";

/// The WebRTC output of [`WEBRTC_PIPELINE`] with `keys` added to its table, read as file
/// `name` (the name the errors give).
pub fn webrtc_output(name: &str, keys: &str) -> Result<hybridlive_runner::WebrtcOutput, String> {
    hybridlive_runner::init().expect("GStreamer initialises");
    let text = format!("{WEBRTC_PIPELINE}{keys}\n");
    let pipeline = hybridlive_runner::parse_named(name, &text).map_err(|e| e.to_string())?;
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
