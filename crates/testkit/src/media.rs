//! What ffprobe and ffmpeg make of a file the runner wrote: independent checks of the media.

use std::path::Path;
use std::process::Command;

/// What `ffprobe -v error ARGS FILE` prints on stdout.
pub fn ffprobe(args: &[&str], file: &Path) -> String {
    let out = Command::new("ffprobe")
        .args(["-v", "error"])
        .args(args)
        .arg(file)
        .output()
        .expect("ffprobe is installed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The duration ffprobe reads from the container, in seconds; fails the test when it reads
/// none.
pub fn media_duration(file: &Path) -> f64 {
    probed_duration(file)
        .unwrap_or_else(|| panic!("ffprobe reads no duration from {}", file.display()))
}

/// The duration ffprobe reads from the container, in seconds, if it reads one.
pub fn probed_duration(file: &Path) -> Option<f64> {
    ffprobe(
        &["-show_entries", "format=duration", "-of", "csv=p=0"],
        file,
    )
    .trim()
    .parse()
    .ok()
}

/// How many video frames ffmpeg decodes from `file`.
pub fn decoded_video_frames(file: &Path) -> usize {
    String::from_utf8_lossy(&framemd5(file))
        .lines()
        .filter(|l| !l.starts_with('#'))
        .count()
}

/// ffmpeg's `framemd5` of the video of `file`: one line a decoded frame (empty when it decodes
/// nothing).
pub fn framemd5(file: &Path) -> Vec<u8> {
    Command::new("ffmpeg")
        .args(["-nostdin", "-v", "quiet", "-i"])
        .arg(file)
        .args(["-map", "0:v", "-f", "framemd5", "-"])
        .output()
        .map(|o| o.stdout)
        .expect("ffmpeg is installed")
}
