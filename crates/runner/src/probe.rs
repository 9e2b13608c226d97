//! Checks a `type = "file"` source before the run starts. fallbacksrc never gives up on a
//! source (a live class must stay on air), so a file that cannot play would only ever show
//! the slate; reading it once up front turns that into an error naming the file and the
//! reason.

use std::path::Path;

use gst::glib;

/// How long discovering one file may take before it is declared unreadable.
const DISCOVER_TIMEOUT: gst::ClockTime = gst::ClockTime::from_seconds(15);

/// What the runner needs to know of a playable media file.
#[derive(Debug, Clone, Copy)]
pub struct MediaFile {
    /// Whether it has an audio stream (without one, the source's sound is silence).
    pub has_audio: bool,
}

/// Whether `path` is a media file the runner can play: a non-empty regular file with a video
/// stream of sane dimensions that the installed plugins can read. `Err` says why not.
pub fn media_file(path: &Path) -> Result<MediaFile, String> {
    let metadata = std::fs::metadata(path).map_err(|e| format!("cannot read it: {e}"))?;
    if !metadata.is_file() {
        return Err("not a regular file".into());
    }
    if metadata.len() == 0 {
        return Err("the file is empty".into());
    }
    let uri = glib::filename_to_uri(path, None).map_err(|e| e.to_string())?;
    let discoverer = gst_pbutils::Discoverer::new(DISCOVER_TIMEOUT)
        .map_err(|e| format!("cannot inspect media files: {e}"))?;
    let info = discoverer
        .discover_uri(&uri)
        .map_err(|e| format!("not playable: {}", e.message()))?;
    if info.result() != gst_pbutils::DiscovererResult::Ok {
        return Err(format!("not playable ({:?})", info.result()));
    }
    let videos = info.video_streams();
    let Some(video) = videos.first() else {
        return Err("the file has no video stream".into());
    };
    let (width, height) = (video.width(), video.height());
    let pixels = u64::from(width) * u64::from(height);
    if pixels == 0 || pixels > hybridlive_encoders::MAX_FRAME_PIXELS {
        return Err(format!(
            "the video claims {width}x{height} pixels: beyond what any H.264/H.265 level allows \
             ({} pixels a frame), so the stream is corrupt",
            hybridlive_encoders::MAX_FRAME_PIXELS
        ));
    }
    Ok(MediaFile {
        has_audio: !info.audio_streams().is_empty(),
    })
}
