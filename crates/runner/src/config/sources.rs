//! `[sources.NAME]`: what produces the media, and the fallback that covers its stalls.

use super::diagnostics::Diagnostic;
use super::model::{
    AudioFormat, Fallback, Framerate, Source, SourceKind, VideoFormat, loopback_if_unbound,
};
use super::reader::{Fields, not_a};

const SOURCE_TYPES: &[&str] = &["test", "file", "srt", "rtmp", "rtsp", "v4l2"];

/// Reads one `[sources.NAME]` table.
pub(super) fn source(diags: &mut Vec<Diagnostic>, f: &mut Fields, _name: &str) -> Option<Source> {
    let kind = f.component_type(diags, SOURCE_TYPES, &[]);
    let video = VideoFormat {
        width: f.even_integer(diags, "width", 16..7681, 1280),
        height: f.even_integer(diags, "height", 16..4321, 720),
        framerate: f.framerate(diags, "framerate", Framerate::whole(30)),
    };
    let has_audio = f.bool(diags, "audio", true);
    let audio = AudioFormat {
        rate: f.integer(diags, "audio_rate", 8000..192_001, 48_000),
        channels: f.integer(diags, "audio_channels", 1..3, 2),
    };
    let kind = match kind?.as_str() {
        "test" => SourceKind::Test {
            pattern: f.choice(diags, "pattern", TEST_PATTERNS, "smpte"),
            clock: f.bool(diags, "clock", true),
            tone_hz: f.number(diags, "tone_hz", 20.0, 20_000.0, 440.0),
            microphone: f.string(diags, "microphone").map(|m| m.0),
        },
        "file" => {
            let location = f.required_string(diags, "location");
            let looping = f.bool(diags, "loop", false);
            let fallback = fallback(diags, f);
            let (text, span) = location?;
            let location = f.base.join(&text);
            if !location.is_file() {
                f.error(diags, span, "location", not_a(&location, &text, "a file"));
            }
            SourceKind::File {
                location,
                looping,
                fallback,
            }
        }
        scheme @ ("srt" | "rtmp" | "rtsp") => {
            let uri = f.required_string(diags, "uri");
            let fallback = fallback(diags, f);
            let (uri, span) = uri?;
            if !uri.starts_with(&format!("{scheme}://")) {
                f.error(
                    diags,
                    span,
                    "uri",
                    format!("a {scheme} source needs a `{scheme}://` URI"),
                );
            }
            SourceKind::Network {
                uri: loopback_if_unbound(uri),
                fallback,
            }
        }
        "v4l2" => SourceKind::V4l2 {
            device: f
                .string(diags, "device")
                .map_or_else(|| "/dev/video0".into(), |d| d.0),
            microphone: f
                .string(diags, "microphone")
                .map(|m| m.0)
                .unwrap_or_default(),
        },
        _ => return None,
    };
    Some(Source {
        name: _name.to_string(),
        kind,
        video,
        audio: has_audio.then_some(audio),
    })
}

/// The fallback keys of a file or network source.
fn fallback(diags: &mut Vec<Diagnostic>, f: &mut Fields) -> Fallback {
    let stall_timeout = f.number(diags, "stall_timeout", 0.1, 60.0, 1.0);
    let slate = f.path(diags, "slate").map(|(path, text, span)| {
        if !path.is_file() {
            f.error(diags, span, "slate", not_a(&path, &text, "a file"));
        }
        path
    });
    let backup_uri = f.string(diags, "backup_uri").map(|(uri, span)| {
        if !uri.contains("://") {
            f.error(diags, span, "backup_uri", format!("`{uri}` is not a URI"));
        }
        uri
    });
    Fallback {
        stall_timeout,
        slate,
        backup_uri: backup_uri.map(loopback_if_unbound),
    }
}

/// videotestsrc pattern nicks offered for `type = "test"` sources.
const TEST_PATTERNS: &[&str] = &[
    "smpte",
    "snow",
    "black",
    "white",
    "red",
    "green",
    "blue",
    "checkers-1",
    "checkers-2",
    "checkers-4",
    "checkers-8",
    "circular",
    "blink",
    "smpte75",
    "zone-plate",
    "gamut",
    "chroma-zone-plate",
    "solid-color",
    "ball",
    "smpte100",
    "bar",
    "pinwheel",
    "spokes",
    "gradient",
    "colors",
    "smpte-rp-219",
];
