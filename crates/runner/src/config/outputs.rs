//! `[outputs.NAME]`: where the encoded media goes. Each output kind reads its own table in its
//! own function, so the kind's parsing can live next to the code that builds it.

use std::path::PathBuf;

use toml::de::DeValue;

use super::diagnostics::{Diagnostic, suggest};
use super::model::{Output, OutputKind, loopback_if_unbound};
use super::reader::{Fields, Spanned};

/// Outputs an abrcontroller can read feedback from.
pub(super) const ABR_OUTPUT_TYPES: &[&str] = &["srt", "rtmp", "webrtc", "whip", "janus"];
const OUTPUT_TYPES: &[&str] = &["hls", "record", "srt", "rtmp", "webrtc", "whip", "janus"];
const PLANNED_OUTPUT_TYPES: &[&str] = &[];

/// Reads one `[outputs.NAME]` table; its `inputs` are read (and later checked) by the caller.
pub(super) fn output(diags: &mut Vec<Diagnostic>, f: &mut Fields, name: &str) -> Option<Output> {
    let kind = f.component_type(diags, OUTPUT_TYPES, PLANNED_OUTPUT_TYPES)?;
    let kind = match kind.as_str() {
        "hls" => hls(diags, f)?,
        "record" => record(diags, f)?,
        "srt" => srt(diags, f)?,
        "rtmp" => rtmp(diags, f)?,
        "webrtc" => webrtc(diags, f)?,
        "whip" => whip(diags, f)?,
        "janus" => janus(diags, f)?,
        _ => return None,
    };
    Some(Output {
        name: name.to_string(),
        inputs: Vec::new(),
        kind,
    })
}

/// `type = "hls"`: MPEG-TS segments, or Low-Latency HLS parts served from memory.
fn hls(diags: &mut Vec<Diagnostic>, f: &mut Fields) -> Option<OutputKind> {
    Some(OutputKind::Hls {
        segment_duration: f.integer(diags, "segment_duration", 1..11, 1),
        playlist_length: f.integer(diags, "playlist_length", 2..31, 5),
        low_latency: f.bool(diags, "low_latency", false),
        part_duration_ms: f.integer(diags, "part_duration_ms", 100..2001, 200),
        directory: f.string(diags, "directory").map(|d| PathBuf::from(d.0)),
    })
}

/// `type = "record"`: a crash-safe fragmented MP4 recording.
fn record(diags: &mut Vec<Diagnostic>, f: &mut Fields) -> Option<OutputKind> {
    Some(OutputKind::Record {
        directory: f
            .string(diags, "directory")
            .map_or_else(|| PathBuf::from("recordings"), |d| PathBuf::from(d.0)),
        autostart: f.bool(diags, "autostart", true),
    })
}

/// `type = "srt"`: MPEG-TS over SRT, caller or listener.
fn srt(diags: &mut Vec<Diagnostic>, f: &mut Fields) -> Option<OutputKind> {
    let (uri, span) = f.required_string(diags, "uri")?;
    if !uri.starts_with("srt://") {
        f.error(diags, span, "uri", format!("`{uri}` is not an srt:// URI"));
    }
    Some(OutputKind::Srt {
        uri: loopback_if_unbound(uri),
    })
}

/// `type = "rtmp"`: FLV pushed to an RTMP server.
fn rtmp(diags: &mut Vec<Diagnostic>, f: &mut Fields) -> Option<OutputKind> {
    let (location, span) = f.required_string(diags, "location")?;
    if !(location.starts_with("rtmp://") || location.starts_with("rtmps://")) {
        f.error(
            diags,
            span,
            "location",
            format!("`{location}` is not an rtmp:// URL"),
        );
    }
    Some(OutputKind::Rtmp { location })
}

/// `type = "webrtc"`: WHEP viewers served at `/whep`.
fn webrtc(diags: &mut Vec<Diagnostic>, f: &mut Fields) -> Option<OutputKind> {
    Some(OutputKind::Webrtc {
        max_viewers: f.integer(diags, "max_viewers", 1..1001, 64),
        loopback_only: f.bool(diags, "loopback_only", false),
        playout_delay_ms: playout_delay(f, diags, "playout_delay_ms"),
    })
}

/// `type = "whip"`: publishing to an SFU's WHIP endpoint.
fn whip(diags: &mut Vec<Diagnostic>, f: &mut Fields) -> Option<OutputKind> {
    let (endpoint, span) = f.required_string(diags, "endpoint")?;
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        f.error(
            diags,
            span,
            "endpoint",
            format!("`{endpoint}` is not an http:// or https:// WHIP endpoint URL"),
        );
    }
    let token = f.string(diags, "token").map(|t| t.0);
    if let Some(value) = f.table.get("token")
        && token.as_deref().is_some_and(str::is_empty)
    {
        f.error(
            diags,
            value.span(),
            "token",
            "an empty token: leave the key out to send none".into(),
        );
    }
    Some(OutputKind::Whip {
        endpoint,
        token,
        loopback_only: f.bool(diags, "loopback_only", false),
    })
}

/// `type = "janus"`: publishing into a Janus VideoRoom.
fn janus(diags: &mut Vec<Diagnostic>, f: &mut Fields) -> Option<OutputKind> {
    let (endpoint, span) = f.required_string(diags, "endpoint")?;
    if !(endpoint.starts_with("ws://") || endpoint.starts_with("wss://")) {
        f.error(
            diags,
            span,
            "endpoint",
            format!("`{endpoint}` is not a ws:// or wss:// URL (Janus's WebSocket API)"),
        );
    }
    if !f.table.contains_key("room_id") {
        f.error(
            diags,
            f.header.clone(),
            "room_id",
            "missing required key".into(),
        );
    }
    let room_id = f.integer(diags, "room_id", 1..4_294_967_296, 1);
    // 0: absent (Janus picks the id).
    let feed_id = f.integer(diags, "feed_id", 1..4_294_967_296, 0);
    let feed_id = (feed_id != 0).then_some(feed_id);
    Some(OutputKind::Janus {
        endpoint,
        room_id: u64::from(room_id),
        feed_id: feed_id.map(u64::from),
        display_name: f
            .string(diags, "display_name")
            .map_or_else(|| "hybridlive".to_string(), |d| d.0),
        loopback_only: f.bool(diags, "loopback_only", false),
    })
}

/// A playout delay in ms: `[min, max]`, one integer for both, or `"off"` (not negotiated).
fn playout_delay(
    f: &mut Fields,
    diags: &mut Vec<Diagnostic>,
    key: &'static str,
) -> Option<[u32; 2]> {
    const MAX: i64 = 40_950;
    let default = hybridlive_webrtc::DEFAULT_PLAYOUT_DELAY;
    let default = Some([default.min, default.max]);
    let Some(value) = f.entry(key) else {
        return default;
    };
    let ms = |item: &Spanned<DeValue>| {
        let int = item.get_ref().as_integer()?;
        i64::from_str_radix(&int.as_str().replace('_', ""), int.radix())
            .ok()
            .filter(|n| (0..=MAX).contains(n))
            .map(|n| n as u32)
    };
    let delay = match value.get_ref() {
        DeValue::String(s) if s == "off" => return None,
        DeValue::Integer(_) => ms(value).map(|n| (n, n)),
        DeValue::Array(items) if items.len() == 2 => {
            let mut items = items.iter();
            ms(items.next()?).zip(ms(items.next()?))
        }
        _ => None,
    };
    match delay {
        Some((min, max)) if min <= max => Some([min, max]),
        _ => {
            diags.push(Diagnostic {
                span: value.span(),
                component: f.component.clone(),
                key: Some(key.to_string()),
                message: format!(
                    "expected [min, max] or one value in ms (0..={MAX}, min <= max), or \"off\""
                ),
                help: match value.get_ref() {
                    DeValue::String(s) => suggest(s, ["off"]),
                    _ => None,
                },
            });
            default
        }
    }
}
