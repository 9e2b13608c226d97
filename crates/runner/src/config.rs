//! The pipeline file: a TOML description of named components, read into [`Pipeline`].
//!
//! Like Vector's configuration, a file lists `sources`, `transforms`, `encoders` and `outputs`,
//! each a table named by the user, and every component that consumes something names its
//! `inputs`. Reading never stops at the first mistake: every problem is collected as a
//! [`Diagnostic`] that knows its byte span, component and key, so `validate` can print all of
//! them with file:line:column and a "did you mean" suggestion.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::PathBuf;

use serde::Serialize;
use toml::de::{DeTable, DeValue};

type Spanned<T> = toml::Spanned<T>;

/// One problem found in a pipeline file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Byte range in the file the problem points at.
    pub span: Range<usize>,
    /// `sources.cam`, `server`, ... when the problem belongs to one component.
    pub component: Option<String>,
    /// The key within the component, when the problem is about one key.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
    /// A suggestion, e.g. `did you mean "bitrate"?`.
    pub help: Option<String>,
}

impl Diagnostic {
    /// Renders the diagnostic as `file:line:column: error: ...` followed by the source line
    /// with a caret under the culprit and the suggestion, if any.
    pub fn render(&self, file: &str, text: &str) -> String {
        let (line, column) = line_column(text, self.span.start);
        let mut out = format!("{file}:{line}:{column}: error: ");
        match (&self.component, &self.key) {
            (Some(c), Some(k)) => out.push_str(&format!("{c}: `{k}`: ")),
            (Some(c), None) => out.push_str(&format!("{c}: ")),
            (None, Some(k)) => out.push_str(&format!("`{k}`: ")),
            (None, None) => {}
        }
        out.push_str(&self.message);
        if let Some(source_line) = text.lines().nth(line - 1) {
            let width = self
                .span
                .len()
                .clamp(1, source_line.len().saturating_sub(column - 1).max(1));
            out.push_str(&format!(
                "\n  {line:>4} | {source_line}\n       | {}{}",
                " ".repeat(column - 1),
                "^".repeat(width)
            ));
        }
        if let Some(help) = &self.help {
            out.push_str(&format!("\n       = help: {help}"));
        }
        out
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// The closest candidate to `name`, if it is close enough to be a likely typo.
pub fn suggest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    // Edit distance catches short swaps (`cma` → `cam`) that Jaro-Winkler misses; Jaro-Winkler
    // catches long names with a wrong tail.
    candidates
        .into_iter()
        .map(|c| {
            let edits = strsim::normalized_damerau_levenshtein(name, c);
            let jw = strsim::jaro_winkler(name, c);
            (edits >= 0.6 || jw >= 0.85, edits + jw, c)
        })
        .filter(|(close, _, _)| *close)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(_, _, c)| format!("did you mean `{c}`?"))
}

/// A whole validated pipeline file.
#[derive(Debug, Clone, Serialize)]
pub struct Pipeline {
    /// The `[server]` table.
    pub server: Server,
    /// `[sources.NAME]` in file order.
    pub sources: Vec<Source>,
    /// `[transforms.NAME]` in file order.
    pub transforms: Vec<Transform>,
    /// `[encoders.NAME]` in file order.
    pub encoders: Vec<Encoder>,
    /// `[outputs.NAME]` in file order.
    pub outputs: Vec<Output>,
    /// `[latency_test]`: the run and budgets of `hybridlive latency-test` (unused by `run`).
    pub latency_test: LatencyTest,
}

/// `[latency_test]`: how long `hybridlive latency-test` measures and the budgets it checks
/// (a measured figure above its budget makes the test fail). Flags override each key.
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq)]
pub struct LatencyTest {
    /// `duration`: seconds of measurement per path.
    pub duration: Option<f64>,
    /// `webrtc_p95_ms`: glass-to-glass p95 over WebRTC, ms.
    pub webrtc_p95_ms: Option<f64>,
    /// `hls_p95_ms`: glass-to-glass p95 over HLS, ms.
    pub hls_p95_ms: Option<f64>,
    /// `first_frame_ms`: WHEP `POST` to the first WebRTC frame shown, ms.
    pub first_frame_ms: Option<f64>,
    /// `interaction_ms`: data-channel round trip p95 ("raise hand" lag), ms.
    pub interaction_ms: Option<f64>,
}

/// `[server]`: the HTTP server and its write-access token.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Server {
    /// `http`: listen address; `--http` overrides it.
    pub http: Option<String>,
    /// `token`: bearer token for write endpoints, written in the file.
    #[serde(skip)]
    pub token: Option<String>,
    /// `token_env`: name of an environment variable holding the bearer token.
    pub token_env: Option<String>,
}

/// Raw video every source is normalised to.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct VideoFormat {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Frames per second.
    pub framerate: u32,
}

/// Raw audio every source is normalised to.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct AudioFormat {
    /// Sample rate in Hz.
    pub rate: u32,
    /// Number of channels.
    pub channels: u32,
}

/// `[sources.NAME]`.
#[derive(Debug, Clone, Serialize)]
pub struct Source {
    /// The table name.
    pub name: String,
    /// What produces the media.
    pub kind: SourceKind,
    /// Normalised raw video.
    pub video: VideoFormat,
    /// Normalised raw audio; `None` with `audio = false`.
    pub audio: Option<AudioFormat>,
}

/// The `type` of a source and its own keys.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SourceKind {
    /// `type = "test"`: moving pattern with a wall clock, and a tone.
    Test {
        /// `pattern`: a videotestsrc pattern nick.
        pattern: String,
        /// `clock`: burn the UTC wall clock into the picture.
        clock: bool,
        /// `tone_hz`: frequency of the test tone.
        tone_hz: f64,
        /// `microphone`: take the sound from this PulseAudio source instead of the tone
        /// (empty: the default source), e.g. a presenter's microphone with a test picture.
        microphone: Option<String>,
    },
    /// `type = "file"`: a media file, decoded and paced in real time.
    File {
        /// `location`: path of the file.
        location: PathBuf,
        /// `loop`: start again at the end (otherwise the run ends with the file).
        looping: bool,
        /// What takes over if decoding stalls.
        fallback: Fallback,
    },
    /// `type = "srt"`, `"rtmp"`, `"rtsp"`: a network stream, by URI.
    Network {
        /// `uri`: handed to fallbacksrc (uridecodebin3).
        uri: String,
        /// What takes over while the stream is stalled or gone.
        fallback: Fallback,
    },
    /// `type = "v4l2"`: a camera and a PulseAudio microphone.
    V4l2 {
        /// `device`: the V4L2 device node.
        device: String,
        /// `microphone`: PulseAudio source name; empty for the default.
        microphone: String,
    },
}

/// Redundancy of a file or network source: after `stall_timeout` without data the slate
/// takes over, the source is restarted, and it is given back as soon as it delivers again.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Fallback {
    /// `stall_timeout`: seconds without data before the slate takes over.
    pub stall_timeout: f64,
    /// `slate`: an image or media file shown meanwhile (with silence); black otherwise.
    pub slate: Option<PathBuf>,
    /// `backup_uri`: a second source of the same programme, used instead of the slate.
    pub backup_uri: Option<String>,
}

/// Which raw stream a transform works on.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Media {
    /// Raw video.
    Video,
    /// Raw audio.
    Audio,
}

/// `[transforms.NAME]`.
#[derive(Debug, Clone, Serialize)]
pub struct Transform {
    /// The table name.
    pub name: String,
    /// The one component it reads from.
    pub input: String,
    /// What it does.
    pub kind: TransformKind,
}

/// The `type` of a transform.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TransformKind {
    /// `type = "latencystamp"`: (re)stamp the capture time, e.g. after a slow effect.
    Latencystamp {
        /// `overwrite`: replace a stamp already present.
        overwrite: bool,
    },
    /// `type = "offeroverlay"`: offer cards burned into the video; the offers shown land in
    /// every recording's sidecar timeline; `POST /api/offers` shows and hides them live.
    Offeroverlay {
        /// `schedule`: a JSON or TOML schedule file (see plugins/offeroverlay/README.md).
        schedule: Option<PathBuf>,
    },
    /// `type = "abrcontroller"`: adaptive bitrate for an uplink. On raw video, it scales the
    /// picture to the current rung of its ladder; the one h264 encoder reading from it gets
    /// its bitrate steered from the feedback of `output` (srtsink statistics for SRT, the
    /// send backlog for RTMP, webrtcbin statistics for WebRTC).
    Abrcontroller {
        /// `output`: the uplink output whose feedback drives the encoder.
        output: String,
        /// Span of the `output` value, for diagnostics about it.
        #[serde(skip)]
        output_span: Range<usize>,
        /// `min_bitrate`: kbit/s.
        min_bitrate: u32,
        /// `max_bitrate`: kbit/s; the encoder's `bitrate` when absent.
        max_bitrate: Option<u32>,
        /// `ladder`: rungs `WIDTHxHEIGHT@FPS:MIN-MAX` (kbit/s); `None` for the default ladder
        /// cut to the source's size, empty for bitrate only.
        ladder: Option<Vec<String>>,
    },
    /// `type = "gst"`: an escape hatch, a gst-launch fragment on raw video or audio.
    Gst {
        /// `media`: which stream the fragment processes.
        media: Media,
        /// `pipeline`: the gst-launch description.
        pipeline: String,
    },
}

/// `[encoders.NAME]`.
#[derive(Debug, Clone, Serialize)]
pub struct Encoder {
    /// The table name.
    pub name: String,
    /// The source or transform it encodes.
    pub input: String,
    /// Codec and settings.
    pub kind: EncoderKind,
}

/// H.264 encoder presets (x264).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum H264Preset {
    /// tune=zerolatency, ultrafast, constrained baseline: what WebRTC receivers decode.
    Zerolatency,
    /// tune=zerolatency, veryfast, main profile: better pictures for HLS and recordings.
    Balanced,
}

/// The `type` of an encoder.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EncoderKind {
    /// `type = "h264"` (x264).
    H264 {
        /// `preset`.
        preset: H264Preset,
        /// `bitrate`: kbit/s.
        bitrate: u32,
        /// `keyframe_interval`: seconds between IDR frames.
        keyframe_interval: f64,
    },
    /// `type = "vp8"` (libvpx, real-time settings): only the webrtc output sends it.
    Vp8 {
        /// `bitrate`: kbit/s.
        bitrate: u32,
        /// `keyframe_interval`: seconds between key frames.
        keyframe_interval: f64,
    },
    /// `type = "aac"`.
    Aac {
        /// `bitrate`: kbit/s.
        bitrate: u32,
    },
    /// `type = "opus"`.
    Opus {
        /// `bitrate`: kbit/s.
        bitrate: u32,
    },
}

impl EncoderKind {
    /// The raw stream this encoder consumes.
    pub fn media(&self) -> Media {
        match self {
            EncoderKind::H264 { .. } | EncoderKind::Vp8 { .. } => Media::Video,
            EncoderKind::Aac { .. } | EncoderKind::Opus { .. } => Media::Audio,
        }
    }
}

/// `[outputs.NAME]`.
#[derive(Debug, Clone, Serialize)]
pub struct Output {
    /// The table name.
    pub name: String,
    /// Encoders it muxes: one video, at most one audio.
    pub inputs: Vec<String>,
    /// Where the media goes.
    pub kind: OutputKind,
}

/// The `type` of an output.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputKind {
    /// `type = "hls"`: MPEG-TS segments and a live playlist, served at `/hls/live.m3u8`.
    Hls {
        /// `segment_duration`: seconds per segment.
        segment_duration: u32,
        /// `playlist_length`: segments listed in the live playlist.
        playlist_length: u32,
        /// `low_latency`: Low-Latency HLS (fMP4 parts, preload hints, blocking reload) served
        /// from memory instead of MPEG-TS segment files.
        low_latency: bool,
        /// `part_duration_ms`: duration of a Low-Latency HLS part, milliseconds.
        part_duration_ms: u32,
        /// `directory`: where segments are written; a fresh temporary folder by default.
        directory: Option<PathBuf>,
    },
    /// `type = "record"`: crash-safe fragmented MP4 plus a sidecar timeline JSON.
    Record {
        /// `directory`: folder the recordings go to.
        directory: PathBuf,
        /// `autostart`: record from the start (otherwise `POST /api/recording`).
        autostart: bool,
    },
    /// `type = "srt"`: MPEG-TS pushed over SRT (caller, or listener for the far end to pull).
    Srt {
        /// `uri`: e.g. `srt://ingest.example:9000?mode=caller`.
        uri: String,
    },
    /// `type = "rtmp"`: FLV pushed to an RTMP server (H.264 + AAC).
    Rtmp {
        /// `location`: e.g. `rtmp://live.example/app/stream-key`.
        location: String,
    },
    /// `type = "webrtc"`: WHEP at `/whep`, every viewer fed from the one encode (H.264
    /// constrained baseline + Opus).
    Webrtc {
        /// `max_viewers`: further offers get 503.
        max_viewers: u32,
        /// `loopback_only`: ICE on 127.0.0.1 only (viewers on this machine, loopback-only
        /// networks).
        loopback_only: bool,
        /// `playout_delay_ms`: the playout delay asked of viewers whose offer has the
        /// playout-delay header extension, `[min, max]` (one value in the file sets both), or
        /// `None` for `"off"`.
        playout_delay_ms: Option<[u32; 2]>,
    },
    /// `type = "whip"`: the encoded streams published to an SFU's WHIP endpoint (RFC 9725)
    /// with `whipclientsink`, no second encode.
    Whip {
        /// `endpoint`: e.g. `https://sfu.example/whip/endpoint`.
        endpoint: String,
        /// `token`: bearer token sent with the offer; never shown in the status.
        #[serde(skip_serializing)]
        token: Option<String>,
        /// `loopback_only`: ICE on 127.0.0.1 only (an SFU on this machine).
        loopback_only: bool,
    },
    /// `type = "janus"`: the encoded streams published into a Janus VideoRoom with
    /// `janusvrwebrtcsink` (Janus's WebSocket API), no second encode.
    Janus {
        /// `endpoint`: Janus's WebSocket URL, e.g. `ws://janus.example:8188`.
        endpoint: String,
        /// `room_id`: the VideoRoom to publish in (it must exist).
        room_id: u64,
        /// `feed_id`: our publisher id in the room; Janus picks one when absent.
        feed_id: Option<u64>,
        /// `display_name`: the publisher's name in the room.
        display_name: String,
        /// `loopback_only`: ICE on 127.0.0.1 only.
        loopback_only: bool,
    },
}

impl OutputKind {
    /// The `type` name, as written in pipeline files.
    pub fn type_name(&self) -> &'static str {
        match self {
            OutputKind::Hls { .. } => "hls",
            OutputKind::Record { .. } => "record",
            OutputKind::Srt { .. } => "srt",
            OutputKind::Rtmp { .. } => "rtmp",
            OutputKind::Webrtc { .. } => "webrtc",
            OutputKind::Whip { .. } => "whip",
            OutputKind::Janus { .. } => "janus",
        }
    }

    /// WebRTC outputs (WHEP viewers, WHIP and Janus egress): H.264 constrained baseline and
    /// Opus.
    pub fn is_webrtc(&self) -> bool {
        matches!(
            self,
            OutputKind::Webrtc { .. } | OutputKind::Whip { .. } | OutputKind::Janus { .. }
        )
    }
}

const SECTIONS: &[&str] = &[
    "server",
    "sources",
    "transforms",
    "encoders",
    "outputs",
    "latency_test",
];
const SOURCE_TYPES: &[&str] = &["test", "file", "srt", "rtmp", "rtsp", "v4l2"];
const TRANSFORM_TYPES: &[&str] = &["latencystamp", "offeroverlay", "abrcontroller", "gst"];
const PLANNED_TRANSFORM_TYPES: &[&str] = &[];
/// Outputs an abrcontroller can read feedback from.
const ABR_OUTPUT_TYPES: &[&str] = &["srt", "rtmp", "webrtc", "whip", "janus"];
const ENCODER_TYPES: &[&str] = &["h264", "vp8", "aac", "opus"];
const OUTPUT_TYPES: &[&str] = &["hls", "record", "srt", "rtmp", "webrtc", "whip", "janus"];
const PLANNED_OUTPUT_TYPES: &[&str] = &[];

/// An SRT listener URI without a host (`srt://:9000`) would listen on every interface;
/// like every other listener of the runner it gets 127.0.0.1 unless an address is written
/// (`srt://0.0.0.0:9000?mode=listener` to accept senders from other machines). Other URIs are
/// returned unchanged.
pub fn loopback_if_unbound(uri: String) -> String {
    let Some(rest) = uri.strip_prefix("srt://:") else {
        return uri;
    };
    // GStreamer's SRT elements listen when the host is left out: keep that meaning.
    let mode = if rest.contains("mode=") {
        ""
    } else if rest.contains('?') {
        "&mode=listener"
    } else {
        "?mode=listener"
    };
    format!("srt://127.0.0.1:{rest}{mode}")
}

/// Reads a pipeline file. On failure, every problem found is returned, in file order.
pub fn parse(text: &str) -> Result<Pipeline, Vec<Diagnostic>> {
    let (document, syntax) = DeTable::parse_recoverable(text);
    let mut diags: Vec<Diagnostic> = syntax
        .iter()
        .map(|e| Diagnostic {
            span: e.span().unwrap_or(0..0),
            component: None,
            key: None,
            message: e.message().trim().to_string(),
            help: None,
        })
        .collect();
    if !diags.is_empty() {
        return Err(diags);
    }
    let document = document.into_inner();
    let mut reader = Reader {
        diags: &mut diags,
        broken: BTreeSet::new(),
    };
    let pipeline = reader.pipeline(&document);
    if diags.is_empty() {
        Ok(pipeline)
    } else {
        diags.sort_by_key(|d| d.span.start);
        Err(diags)
    }
}

struct Reader<'d> {
    diags: &'d mut Vec<Diagnostic>,
    /// Components declared but unreadable: already reported, so inputs naming them are not.
    broken: BTreeSet<String>,
}

/// The keys of one table, read one by one; whatever is left unread at the end is unknown.
struct Fields<'t, 'i> {
    table: &'t DeTable<'i>,
    component: Option<String>,
    header: Range<usize>,
    known: Vec<&'static str>,
}

impl<'t, 'i> Fields<'t, 'i> {
    fn new(table: &'t DeTable<'i>, component: Option<String>, header: Range<usize>) -> Self {
        Fields {
            table,
            component,
            header,
            known: Vec::new(),
        }
    }

    fn entry(&mut self, key: &'static str) -> Option<&'t Spanned<DeValue<'i>>> {
        self.known.push(key);
        self.table.get(key)
    }

    fn error(&self, diags: &mut Vec<Diagnostic>, span: Range<usize>, key: &str, message: String) {
        diags.push(Diagnostic {
            span,
            component: self.component.clone(),
            key: Some(key.to_string()),
            message,
            help: None,
        });
    }

    fn type_error(
        &self,
        diags: &mut Vec<Diagnostic>,
        value: &Spanned<DeValue>,
        key: &str,
        want: &str,
    ) {
        let got = type_name(value.get_ref());
        self.error(
            diags,
            value.span(),
            key,
            format!("expected {want}, found {got}"),
        );
    }

    fn string(
        &mut self,
        diags: &mut Vec<Diagnostic>,
        key: &'static str,
    ) -> Option<(String, Range<usize>)> {
        let value = self.entry(key)?;
        match value.get_ref().as_str() {
            Some(s) => Some((s.to_string(), value.span())),
            None => {
                self.type_error(diags, value, key, "a string");
                None
            }
        }
    }

    fn required_string(
        &mut self,
        diags: &mut Vec<Diagnostic>,
        key: &'static str,
    ) -> Option<(String, Range<usize>)> {
        let present = self.table.contains_key(key);
        let value = self.string(diags, key);
        if !present {
            self.error(
                diags,
                self.header.clone(),
                key,
                "missing required key".into(),
            );
        }
        value
    }

    fn bool(&mut self, diags: &mut Vec<Diagnostic>, key: &'static str, default: bool) -> bool {
        let Some(value) = self.entry(key) else {
            return default;
        };
        value.get_ref().as_bool().unwrap_or_else(|| {
            self.type_error(diags, value, key, "true or false");
            default
        })
    }

    fn integer(
        &mut self,
        diags: &mut Vec<Diagnostic>,
        key: &'static str,
        range: Range<i64>,
        default: u32,
    ) -> u32 {
        let Some(value) = self.entry(key) else {
            return default;
        };
        let Some(int) = value.get_ref().as_integer() else {
            self.type_error(diags, value, key, "an integer");
            return default;
        };
        let digits = int.as_str().replace('_', "");
        match i64::from_str_radix(&digits, int.radix()) {
            Ok(n) if range.contains(&n) => n as u32,
            _ => {
                let message = format!(
                    "{} is out of range: expected {}..={}",
                    int.as_str(),
                    range.start,
                    range.end - 1
                );
                self.error(diags, value.span(), key, message);
                default
            }
        }
    }

    /// [`Fields::integer`] for a picture dimension: H.264/H.265 encode 4:2:0 video, whose
    /// chroma planes are half the size, so an odd width or height validates here instead of
    /// failing in the encoder once the run has started.
    fn even_integer(
        &mut self,
        diags: &mut Vec<Diagnostic>,
        key: &'static str,
        range: Range<i64>,
        default: u32,
    ) -> u32 {
        let n = self.integer(diags, key, range, default);
        if n % 2 == 1
            && let Some(value) = self.table.get(key)
        {
            let message = format!(
                "{n} is odd: 4:2:0 video (H.264, H.265) needs an even {key}, e.g. {} or {}",
                n - 1,
                n + 1
            );
            self.error(diags, value.span(), key, message);
            return default;
        }
        n
    }

    fn number(
        &mut self,
        diags: &mut Vec<Diagnostic>,
        key: &'static str,
        min: f64,
        max: f64,
        default: f64,
    ) -> f64 {
        let Some(value) = self.entry(key) else {
            return default;
        };
        let parsed = match value.get_ref() {
            DeValue::Float(f) => f.as_str().replace('_', "").parse::<f64>().ok(),
            DeValue::Integer(i) => i.as_str().replace('_', "").parse::<f64>().ok(),
            _ => {
                self.type_error(diags, value, key, "a number");
                return default;
            }
        };
        match parsed {
            Some(n) if (min..=max).contains(&n) => n,
            _ => {
                self.error(
                    diags,
                    value.span(),
                    key,
                    format!("out of range: expected {min} to {max}"),
                );
                default
            }
        }
    }

    fn choice(
        &mut self,
        diags: &mut Vec<Diagnostic>,
        key: &'static str,
        choices: &[&str],
        default: &str,
    ) -> String {
        let Some((value, span)) = self.string(diags, key) else {
            return default.to_string();
        };
        if choices.contains(&value.as_str()) {
            return value;
        }
        diags.push(Diagnostic {
            span,
            component: self.component.clone(),
            key: Some(key.to_string()),
            message: format!(
                "unknown value `{value}`: expected one of {}",
                choices.join(", ")
            ),
            help: suggest(&value, choices.iter().copied()),
        });
        default.to_string()
    }

    fn string_list(
        &mut self,
        diags: &mut Vec<Diagnostic>,
        key: &'static str,
    ) -> Vec<(String, Range<usize>)> {
        let Some(value) = self.entry(key) else {
            self.error(
                diags,
                self.header.clone(),
                key,
                "missing required key".into(),
            );
            return Vec::new();
        };
        let DeValue::Array(items) = value.get_ref() else {
            self.type_error(diags, value, key, "an array of component names");
            return Vec::new();
        };
        let mut out = Vec::new();
        for item in items.iter() {
            match item.get_ref().as_str() {
                Some(s) => out.push((s.to_string(), item.span())),
                None => self.type_error(diags, item, key, "a component name (string)"),
            }
        }
        if out.is_empty() && items.is_empty() {
            self.error(
                diags,
                value.span(),
                key,
                "must name at least one component".into(),
            );
        }
        out
    }

    /// A playout delay in ms: `[min, max]`, one integer for both, or `"off"` (not negotiated).
    fn playout_delay(
        &mut self,
        diags: &mut Vec<Diagnostic>,
        key: &'static str,
    ) -> Option<[u32; 2]> {
        const MAX: i64 = 40_950;
        let default = hybridlive_webrtc::DEFAULT_PLAYOUT_DELAY;
        let default = Some([default.min, default.max]);
        let Some(value) = self.entry(key) else {
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
                    component: self.component.clone(),
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

    /// Reports every key that nothing asked for, with the closest known key.
    fn finish(self, diags: &mut Vec<Diagnostic>) {
        for (key, _) in self.table.iter() {
            let name: &str = key.get_ref();
            if !self.known.contains(&name) {
                diags.push(Diagnostic {
                    span: key.span(),
                    component: self.component.clone(),
                    key: Some(name.to_string()),
                    message: format!("unknown key (known keys: {})", self.known.join(", ")),
                    help: suggest(name, self.known.iter().copied()),
                });
            }
        }
    }
}

fn first_input(inputs: &[(String, Range<usize>)]) -> String {
    inputs.first().map(|i| i.0.clone()).unwrap_or_default()
}

fn type_name(value: &DeValue) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// A component before its inputs are checked: the name, its span and its resolved inputs.
struct Named<T> {
    value: T,
    span: Range<usize>,
    inputs: Vec<(String, Range<usize>)>,
}

impl Reader<'_> {
    fn pipeline(&mut self, document: &DeTable) -> Pipeline {
        let root = Fields::new(document, None, 0..0);
        for (key, value) in document.iter() {
            let name: &str = key.get_ref();
            if !SECTIONS.contains(&name) {
                self.diags.push(Diagnostic {
                    span: key.span(),
                    component: None,
                    key: Some(name.to_string()),
                    message: format!("unknown section (sections: {})", SECTIONS.join(", ")),
                    help: suggest(name, SECTIONS.iter().copied()),
                });
            } else if !matches!(value.get_ref(), DeValue::Table(_)) {
                root.type_error(self.diags, value, name, "a table");
            }
        }
        let server = self.server(document);
        let sources = self.section(document, "sources", |r, f, name| r.source(f, name));
        let transforms = self.section(document, "transforms", |r, f, name| r.transform(f, name));
        let encoders = self.section(document, "encoders", |r, f, name| r.encoder(f, name));
        let outputs = self.section(document, "outputs", |r, f, name| r.output(f, name));
        let latency_test = self.latency_test(document);
        // A source table that is there but refused (an unknown `type`, ...) has its own error;
        // "no source" would only send the reader looking for a table they wrote.
        let source_tables = document
            .get("sources")
            .is_some_and(|s| matches!(s.get_ref(), DeValue::Table(t) if !t.is_empty()));
        if sources.is_empty()
            && !source_tables
            && !self
                .diags
                .iter()
                .any(|d| d.key.as_deref() == Some("sources"))
        {
            self.diags.push(Diagnostic {
                span: 0..0,
                component: None,
                key: Some("sources".into()),
                message: "the pipeline has no source: add a [sources.NAME] table".into(),
                help: Some("the smallest source is `[sources.cam]` with `type = \"test\"`".into()),
            });
        }
        self.check_graph(&sources, &transforms, &encoders, &outputs);
        Pipeline {
            server,
            sources: sources.into_iter().map(|n| n.value).collect(),
            transforms: transforms
                .into_iter()
                .map(|n| Transform {
                    input: first_input(&n.inputs),
                    ..n.value
                })
                .collect(),
            encoders: encoders
                .into_iter()
                .map(|n| Encoder {
                    input: first_input(&n.inputs),
                    ..n.value
                })
                .collect(),
            outputs: outputs
                .into_iter()
                .map(|n| Output {
                    inputs: n.inputs.into_iter().map(|i| i.0).collect(),
                    ..n.value
                })
                .collect(),
            latency_test,
        }
    }

    fn latency_test(&mut self, document: &DeTable) -> LatencyTest {
        let Some(value) = document.get("latency_test") else {
            return LatencyTest::default();
        };
        let DeValue::Table(table) = value.get_ref() else {
            return LatencyTest::default();
        };
        let mut f = Fields::new(table, Some("latency_test".into()), value.span());
        let mut budget = |f: &mut Fields, key: &'static str, max: f64| {
            let value = f.number(self.diags, key, 0.0, max, 0.0);
            table.contains_key(key).then_some(value)
        };
        let test = LatencyTest {
            duration: budget(&mut f, "duration", 3600.0),
            webrtc_p95_ms: budget(&mut f, "webrtc_p95_ms", 600_000.0),
            hls_p95_ms: budget(&mut f, "hls_p95_ms", 600_000.0),
            first_frame_ms: budget(&mut f, "first_frame_ms", 600_000.0),
            interaction_ms: budget(&mut f, "interaction_ms", 600_000.0),
        };
        f.finish(self.diags);
        test
    }

    fn server(&mut self, document: &DeTable) -> Server {
        let Some(value) = document.get("server") else {
            return Server::default();
        };
        let DeValue::Table(table) = value.get_ref() else {
            return Server::default();
        };
        let mut f = Fields::new(table, Some("server".into()), value.span());
        let http = f.string(self.diags, "http");
        if let Some((addr, span)) = &http
            && addr.parse::<std::net::SocketAddr>().is_err()
        {
            f.error(
                self.diags,
                span.clone(),
                "http",
                format!("`{addr}` is not an address like 127.0.0.1:8080"),
            );
        }
        let token = f.string(self.diags, "token").map(|t| t.0);
        let token_env = f.string(self.diags, "token_env").map(|t| t.0);
        f.finish(self.diags);
        Server {
            http: http.map(|h| h.0),
            token,
            token_env,
        }
    }

    fn section<T>(
        &mut self,
        document: &DeTable,
        section: &str,
        mut read: impl FnMut(&mut Self, &mut Fields, &str) -> Option<T>,
    ) -> Vec<Named<T>> {
        let Some(DeValue::Table(components)) = document.get(section).map(|v| v.get_ref()) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (key, value) in components.iter() {
            let name: &str = key.get_ref();
            let component = format!("{section}.{name}");
            let DeValue::Table(table) = value.get_ref() else {
                self.diags.push(Diagnostic {
                    span: value.span(),
                    component: Some(component),
                    key: None,
                    message: format!(
                        "expected a table `[{section}.{name}]`, found {}",
                        type_name(value.get_ref())
                    ),
                    help: None,
                });
                continue;
            };
            if !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                self.diags.push(Diagnostic {
                    span: key.span(),
                    component: Some(component.clone()),
                    key: None,
                    message: "component names use letters, digits, `_` and `-` only".into(),
                    help: None,
                });
            }
            let mut fields = Fields::new(table, Some(component), key.span());
            let inputs = if section == "sources" {
                Vec::new()
            } else {
                fields.string_list(self.diags, "inputs")
            };
            let read = read(self, &mut fields, name);
            fields.finish(self.diags);
            match read {
                Some(value) => out.push(Named {
                    value,
                    span: key.span(),
                    inputs,
                }),
                None => {
                    self.broken.insert(name.to_string());
                }
            }
        }
        out
    }

    fn component_type(
        &mut self,
        f: &mut Fields,
        types: &[&str],
        planned: &[&str],
    ) -> Option<String> {
        let (kind, span) = f.required_string(self.diags, "type")?;
        if types.contains(&kind.as_str()) {
            return Some(kind);
        }
        if planned.contains(&kind.as_str()) {
            f.error(
                self.diags,
                span,
                "type",
                format!(
                    "`{kind}` is not supported by this build yet (supported: {})",
                    types.join(", ")
                ),
            );
            return None;
        }
        self.diags.push(Diagnostic {
            span,
            component: f.component.clone(),
            key: Some("type".into()),
            message: format!(
                "unknown type `{kind}`: expected one of {}",
                types.join(", ")
            ),
            help: suggest(&kind, types.iter().chain(planned).copied()),
        });
        None
    }

    fn source(&mut self, f: &mut Fields, _name: &str) -> Option<Source> {
        let kind = self.component_type(f, SOURCE_TYPES, &[]);
        let video = VideoFormat {
            width: f.even_integer(self.diags, "width", 16..7681, 1280),
            height: f.even_integer(self.diags, "height", 16..4321, 720),
            framerate: f.integer(self.diags, "framerate", 1..121, 30),
        };
        let has_audio = f.bool(self.diags, "audio", true);
        let audio = AudioFormat {
            rate: f.integer(self.diags, "audio_rate", 8000..192_001, 48_000),
            channels: f.integer(self.diags, "audio_channels", 1..3, 2),
        };
        let kind = match kind?.as_str() {
            "test" => SourceKind::Test {
                pattern: f.choice(self.diags, "pattern", TEST_PATTERNS, "smpte"),
                clock: f.bool(self.diags, "clock", true),
                tone_hz: f.number(self.diags, "tone_hz", 20.0, 20_000.0, 440.0),
                microphone: f.string(self.diags, "microphone").map(|m| m.0),
            },
            "file" => {
                let location = f.required_string(self.diags, "location");
                let looping = f.bool(self.diags, "loop", false);
                let fallback = self.fallback(f);
                let (location, span) = location?;
                if !std::path::Path::new(&location).is_file() {
                    f.error(
                        self.diags,
                        span,
                        "location",
                        format!("`{location}` is not a file"),
                    );
                }
                SourceKind::File {
                    location: PathBuf::from(location),
                    looping,
                    fallback,
                }
            }
            scheme @ ("srt" | "rtmp" | "rtsp") => {
                let uri = f.required_string(self.diags, "uri");
                let fallback = self.fallback(f);
                let (uri, span) = uri?;
                if !uri.starts_with(&format!("{scheme}://")) {
                    f.error(
                        self.diags,
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
                    .string(self.diags, "device")
                    .map_or_else(|| "/dev/video0".into(), |d| d.0),
                microphone: f
                    .string(self.diags, "microphone")
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

    fn fallback(&mut self, f: &mut Fields) -> Fallback {
        let stall_timeout = f.number(self.diags, "stall_timeout", 0.1, 60.0, 1.0);
        let slate = f.string(self.diags, "slate").map(|(path, span)| {
            if !std::path::Path::new(&path).is_file() {
                f.error(self.diags, span, "slate", format!("`{path}` is not a file"));
            }
            PathBuf::from(path)
        });
        let backup_uri = f.string(self.diags, "backup_uri").map(|(uri, span)| {
            if !uri.contains("://") {
                f.error(
                    self.diags,
                    span,
                    "backup_uri",
                    format!("`{uri}` is not a URI"),
                );
            }
            uri
        });
        Fallback {
            stall_timeout,
            slate,
            backup_uri: backup_uri.map(loopback_if_unbound),
        }
    }

    fn transform(&mut self, f: &mut Fields, name: &str) -> Option<Transform> {
        let kind = self.component_type(f, TRANSFORM_TYPES, PLANNED_TRANSFORM_TYPES)?;
        let kind = match kind.as_str() {
            "latencystamp" => TransformKind::Latencystamp {
                overwrite: f.bool(self.diags, "overwrite", true),
            },
            "offeroverlay" => {
                let schedule = f.string(self.diags, "schedule").map(|(path, span)| {
                    let path = PathBuf::from(path);
                    if !path.is_file() {
                        f.error(
                            self.diags,
                            span,
                            "schedule",
                            format!("`{}` is not a readable file", path.display()),
                        );
                    }
                    path
                });
                TransformKind::Offeroverlay { schedule }
            }
            "abrcontroller" => self.abrcontroller(f)?,
            "gst" => {
                let media = match f
                    .choice(self.diags, "media", &["video", "audio"], "video")
                    .as_str()
                {
                    "audio" => Media::Audio,
                    _ => Media::Video,
                };
                let (pipeline, span) = f.required_string(self.diags, "pipeline")?;
                if let Err((message, help)) = crate::fragment::check(&pipeline) {
                    self.diags.push(Diagnostic {
                        span,
                        component: f.component.clone(),
                        key: Some("pipeline".into()),
                        message,
                        help,
                    });
                }
                TransformKind::Gst { media, pipeline }
            }
            _ => return None,
        };
        Some(Transform {
            name: name.to_string(),
            input: String::new(),
            kind,
        })
    }

    fn abrcontroller(&mut self, f: &mut Fields) -> Option<TransformKind> {
        let output = f.required_string(self.diags, "output");
        let min_bitrate = f.integer(self.diags, "min_bitrate", 50..50_001, 300);
        // 0: absent (the encoder's bitrate is the ceiling).
        let max_bitrate = f.integer(self.diags, "max_bitrate", 100..50_001, 0);
        if max_bitrate != 0
            && max_bitrate < min_bitrate
            && let Some(value) = f.table.get("max_bitrate")
        {
            f.error(
                self.diags,
                value.span(),
                "max_bitrate",
                format!("{max_bitrate} kbit/s is below min_bitrate ({min_bitrate} kbit/s)"),
            );
        }
        let ladder = match f.entry("ladder") {
            None => None,
            Some(value) => {
                let DeValue::Array(items) = value.get_ref() else {
                    f.type_error(self.diags, value, "ladder", "an array of rungs");
                    return None;
                };
                let mut rungs = Vec::new();
                for item in items.iter() {
                    let Some(rung) = item.get_ref().as_str() else {
                        f.type_error(self.diags, item, "ladder", "a rung string");
                        continue;
                    };
                    if let Err(err) = gstabr::ladder::Ladder::parse(rung) {
                        f.error(self.diags, item.span(), "ladder", err.to_string());
                    } else if rung.contains(';') {
                        f.error(
                            self.diags,
                            item.span(),
                            "ladder",
                            "one rung per string".into(),
                        );
                    }
                    rungs.push(rung.to_string());
                }
                Some(rungs)
            }
        };
        let (output, output_span) = output?;
        Some(TransformKind::Abrcontroller {
            output,
            output_span,
            min_bitrate,
            max_bitrate: (max_bitrate != 0).then_some(max_bitrate),
            ladder,
        })
    }

    fn encoder(&mut self, f: &mut Fields, name: &str) -> Option<Encoder> {
        let kind = self.component_type(f, ENCODER_TYPES, &[])?;
        let kind = match kind.as_str() {
            "h264" => {
                let preset = match f
                    .choice(
                        self.diags,
                        "preset",
                        &["zerolatency", "balanced"],
                        "zerolatency",
                    )
                    .as_str()
                {
                    "balanced" => H264Preset::Balanced,
                    _ => H264Preset::Zerolatency,
                };
                EncoderKind::H264 {
                    preset,
                    bitrate: f.integer(self.diags, "bitrate", 100..50_001, 2500),
                    keyframe_interval: f.number(self.diags, "keyframe_interval", 0.1, 10.0, 1.0),
                }
            }
            "vp8" => EncoderKind::Vp8 {
                bitrate: f.integer(self.diags, "bitrate", 100..50_001, 2500),
                keyframe_interval: f.number(self.diags, "keyframe_interval", 0.1, 10.0, 1.0),
            },
            "aac" => EncoderKind::Aac {
                bitrate: f.integer(self.diags, "bitrate", 16..513, 128),
            },
            "opus" => EncoderKind::Opus {
                bitrate: f.integer(self.diags, "bitrate", 6..511, 96),
            },
            _ => return None,
        };
        Some(Encoder {
            name: name.to_string(),
            input: String::new(),
            kind,
        })
    }

    fn output(&mut self, f: &mut Fields, name: &str) -> Option<Output> {
        let kind = self.component_type(f, OUTPUT_TYPES, PLANNED_OUTPUT_TYPES)?;
        let kind = match kind.as_str() {
            "hls" => OutputKind::Hls {
                segment_duration: f.integer(self.diags, "segment_duration", 1..11, 1),
                playlist_length: f.integer(self.diags, "playlist_length", 2..31, 5),
                low_latency: f.bool(self.diags, "low_latency", false),
                part_duration_ms: f.integer(self.diags, "part_duration_ms", 100..2001, 200),
                directory: f
                    .string(self.diags, "directory")
                    .map(|d| PathBuf::from(d.0)),
            },
            "record" => OutputKind::Record {
                directory: f
                    .string(self.diags, "directory")
                    .map_or_else(|| PathBuf::from("recordings"), |d| PathBuf::from(d.0)),
                autostart: f.bool(self.diags, "autostart", true),
            },
            "srt" => {
                let (uri, span) = f.required_string(self.diags, "uri")?;
                if !uri.starts_with("srt://") {
                    f.error(
                        self.diags,
                        span,
                        "uri",
                        format!("`{uri}` is not an srt:// URI"),
                    );
                }
                OutputKind::Srt {
                    uri: loopback_if_unbound(uri),
                }
            }
            "rtmp" => {
                let (location, span) = f.required_string(self.diags, "location")?;
                if !(location.starts_with("rtmp://") || location.starts_with("rtmps://")) {
                    f.error(
                        self.diags,
                        span,
                        "location",
                        format!("`{location}` is not an rtmp:// URL"),
                    );
                }
                OutputKind::Rtmp { location }
            }
            "webrtc" => OutputKind::Webrtc {
                max_viewers: f.integer(self.diags, "max_viewers", 1..1001, 64),
                loopback_only: f.bool(self.diags, "loopback_only", false),
                playout_delay_ms: f.playout_delay(self.diags, "playout_delay_ms"),
            },
            "whip" => {
                let (endpoint, span) = f.required_string(self.diags, "endpoint")?;
                if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                    f.error(
                        self.diags,
                        span,
                        "endpoint",
                        format!("`{endpoint}` is not an http:// or https:// WHIP endpoint URL"),
                    );
                }
                let token = f.string(self.diags, "token").map(|t| t.0);
                if let Some(value) = f.table.get("token")
                    && token.as_deref().is_some_and(str::is_empty)
                {
                    f.error(
                        self.diags,
                        value.span(),
                        "token",
                        "an empty token: leave the key out to send none".into(),
                    );
                }
                OutputKind::Whip {
                    endpoint,
                    token,
                    loopback_only: f.bool(self.diags, "loopback_only", false),
                }
            }
            "janus" => {
                let (endpoint, span) = f.required_string(self.diags, "endpoint")?;
                if !(endpoint.starts_with("ws://") || endpoint.starts_with("wss://")) {
                    f.error(
                        self.diags,
                        span,
                        "endpoint",
                        format!(
                            "`{endpoint}` is not a ws:// or wss:// URL (Janus's WebSocket API)"
                        ),
                    );
                }
                if !f.table.contains_key("room_id") {
                    f.error(
                        self.diags,
                        f.header.clone(),
                        "room_id",
                        "missing required key".into(),
                    );
                }
                let room_id = f.integer(self.diags, "room_id", 1..4_294_967_296, 1);
                // 0: absent (Janus picks the id).
                let feed_id = f.integer(self.diags, "feed_id", 1..4_294_967_296, 0);
                let feed_id = (feed_id != 0).then_some(feed_id);
                OutputKind::Janus {
                    endpoint,
                    room_id: u64::from(room_id),
                    feed_id: feed_id.map(u64::from),
                    display_name: f
                        .string(self.diags, "display_name")
                        .map_or_else(|| "hybridlive".to_string(), |d| d.0),
                    loopback_only: f.bool(self.diags, "loopback_only", false),
                }
            }
            _ => return None,
        };
        Some(Output {
            name: name.to_string(),
            inputs: Vec::new(),
            kind,
        })
    }

    fn unknown_input(
        &mut self,
        component: &str,
        input: &str,
        span: Range<usize>,
        allowed: &[&str],
        what: &str,
    ) {
        if self.broken.contains(input) {
            return;
        }
        self.diags.push(Diagnostic {
            span,
            component: Some(component.to_string()),
            key: Some("inputs".into()),
            message: format!("`{input}` is not {what}"),
            help: suggest(input, allowed.iter().copied()),
        });
    }

    fn check_graph(
        &mut self,
        sources: &[Named<Source>],
        transforms: &[Named<Transform>],
        encoders: &[Named<Encoder>],
        outputs: &[Named<Output>],
    ) {
        // Names are global: an input names a component, whatever its section.
        let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
        let all = sources
            .iter()
            .map(|n| (n.value.name.as_str(), "sources", &n.span))
            .chain(
                transforms
                    .iter()
                    .map(|n| (n.value.name.as_str(), "transforms", &n.span)),
            )
            .chain(
                encoders
                    .iter()
                    .map(|n| (n.value.name.as_str(), "encoders", &n.span)),
            )
            .chain(
                outputs
                    .iter()
                    .map(|n| (n.value.name.as_str(), "outputs", &n.span)),
            );
        for (name, section, span) in all {
            if let Some(first) = seen.insert(name, section) {
                self.diags.push(Diagnostic {
                    span: span.clone(),
                    component: Some(format!("{section}.{name}")),
                    key: None,
                    message: format!(
                        "the name `{name}` is already used by {first}.{name}: names must be unique"
                    ),
                    help: None,
                });
            }
        }
        let raw: Vec<&str> = sources
            .iter()
            .map(|n| n.value.name.as_str())
            .chain(transforms.iter().map(|n| n.value.name.as_str()))
            .collect();
        for t in transforms {
            let component = format!("transforms.{}", t.value.name);
            self.single_input(&component, t, &raw, "a source or transform");
        }
        self.check_transform_cycles(transforms);
        self.check_abrcontrollers(transforms, encoders, outputs);
        for e in encoders {
            let component = format!("encoders.{}", e.value.name);
            if let Some((input, span)) =
                self.single_input(&component, e, &raw, "a source or transform")
                && e.value.kind.media() == Media::Audio
                && !self.has_audio(&input, sources, transforms)
            {
                self.diags.push(Diagnostic {
                    span,
                    component: Some(component),
                    key: Some("inputs".into()),
                    message: format!("`{input}` carries no audio (its source has `audio = false`)"),
                    help: None,
                });
            }
        }
        let encoder_names: Vec<&str> = encoders.iter().map(|n| n.value.name.as_str()).collect();
        let mut hls_outputs = 0;
        let mut webrtc_outputs = 0;
        for o in outputs {
            let component = format!("outputs.{}", o.value.name);
            let mut video = 0;
            let mut vp8 = 0;
            let mut audio = 0;
            let mut resolved = true;
            for (input, span) in &o.inputs {
                let Some(encoder) = encoders.iter().find(|e| &e.value.name == input) else {
                    resolved = false;
                    self.unknown_input(
                        &component,
                        input,
                        span.clone(),
                        &encoder_names,
                        "an encoder: outputs take encoded streams",
                    );
                    continue;
                };
                match &encoder.value.kind {
                    EncoderKind::H264 {
                        keyframe_interval,
                        preset,
                        ..
                    } => {
                        video += 1;
                        if o.value.kind.is_webrtc() && *preset != H264Preset::Zerolatency {
                            self.diags.push(Diagnostic {
                                span: span.clone(),
                                component: Some(component.clone()),
                                key: Some("inputs".into()),
                                message: format!(
                                    "`{input}` is not constrained baseline, which browsers need over WebRTC"
                                ),
                                help: Some(format!(
                                    "set `preset = \"zerolatency\"` in [encoders.{input}]"
                                )),
                            });
                        }
                        if let OutputKind::Hls {
                            segment_duration, ..
                        } = o.value.kind
                        {
                            let per_segment = f64::from(segment_duration) / keyframe_interval;
                            if (per_segment - per_segment.round()).abs() > 1e-6 {
                                self.diags.push(Diagnostic {
                                    span: span.clone(),
                                    component: Some(component.clone()),
                                    key: Some("inputs".into()),
                                    message: format!(
                                        "HLS segments of {segment_duration} s need a keyframe interval that divides them; `{input}` has {keyframe_interval} s"
                                    ),
                                    help: Some(format!("set `keyframe_interval = {segment_duration}` in [encoders.{input}]")),
                                });
                            }
                        }
                    }
                    EncoderKind::Vp8 { .. } => {
                        video += 1;
                        vp8 += 1;
                        if !matches!(o.value.kind, OutputKind::Webrtc { .. }) {
                            self.diags.push(Diagnostic {
                                span: span.clone(),
                                component: Some(component.clone()),
                                key: Some("inputs".into()),
                                message: format!(
                                    "`{input}` is VP8, which only the webrtc output sends"
                                ),
                                help: Some("use an encoder with `type = \"h264\"` here".into()),
                            });
                        }
                    }
                    EncoderKind::Opus { .. } if matches!(o.value.kind, OutputKind::Rtmp { .. }) => {
                        audio += 1;
                        self.diags.push(Diagnostic {
                            span: span.clone(),
                            component: Some(component.clone()),
                            key: Some("inputs".into()),
                            message: format!("`{input}` is Opus, which RTMP (FLV) cannot carry"),
                            help: Some("use an encoder with `type = \"aac\"` for RTMP".into()),
                        });
                    }
                    EncoderKind::Opus { .. } if matches!(o.value.kind, OutputKind::Hls { .. }) => {
                        audio += 1;
                        self.diags.push(Diagnostic {
                            span: span.clone(),
                            component: Some(component.clone()),
                            key: Some("inputs".into()),
                            message: format!(
                                "`{input}` is Opus, which browsers do not play from HLS MPEG-TS"
                            ),
                            help: Some("use an encoder with `type = \"aac\"` for HLS".into()),
                        });
                    }
                    EncoderKind::Aac { .. } if o.value.kind.is_webrtc() => {
                        audio += 1;
                        self.diags.push(Diagnostic {
                            span: span.clone(),
                            component: Some(component.clone()),
                            key: Some("inputs".into()),
                            message: format!("`{input}` is AAC; WebRTC carries Opus"),
                            help: Some("use an encoder with `type = \"opus\"` for WebRTC".into()),
                        });
                    }
                    EncoderKind::Aac { .. } | EncoderKind::Opus { .. } => audio += 1,
                }
            }
            if matches!(o.value.kind, OutputKind::Webrtc { .. }) {
                webrtc_outputs += 1;
                if webrtc_outputs > 1 {
                    self.diags.push(Diagnostic {
                        span: o.span.clone(),
                        component: Some(component.clone()),
                        key: None,
                        message: "only one webrtc output is served at /whep; remove this one"
                            .into(),
                        help: None,
                    });
                }
            }
            if matches!(o.value.kind, OutputKind::Hls { .. }) {
                hls_outputs += 1;
                if hls_outputs > 1 {
                    self.diags.push(Diagnostic {
                        span: o.span.clone(),
                        component: Some(component.clone()),
                        key: None,
                        message: "only one hls output is served at /hls/live.m3u8; remove this one"
                            .into(),
                        help: None,
                    });
                }
            }
            // WebRTC viewers get the first codec their offer has: one H.264 and one VP8 encoder
            // may both feed it, in the order of preference.
            let video_ok = video == 1
                || (matches!(o.value.kind, OutputKind::Webrtc { .. }) && video == 2 && vp8 == 1);
            if resolved && !o.inputs.is_empty() && (!video_ok || audio > 1) {
                self.diags.push(Diagnostic {
                    span: o.span.clone(),
                    component: Some(component),
                    key: Some("inputs".into()),
                    message: format!("an output takes exactly one video encoder (a webrtc output: one h264 and one vp8 at most) and at most one audio encoder (found {video} video, {audio} audio)"),
                    help: None,
                });
            }
        }
    }

    /// An abrcontroller feeds exactly one h264 encoder, which feeds only the uplink output
    /// named by `output`: its bitrate and picture size change with the link, which recordings
    /// and HLS must not inherit.
    fn check_abrcontrollers(
        &mut self,
        transforms: &[Named<Transform>],
        encoders: &[Named<Encoder>],
        outputs: &[Named<Output>],
    ) {
        let mut controlled_outputs: BTreeMap<&str, &str> = BTreeMap::new();
        for t in transforms {
            let TransformKind::Abrcontroller {
                output,
                output_span,
                ..
            } = &t.value.kind
            else {
                continue;
            };
            let name = t.value.name.as_str();
            let component = format!("transforms.{name}");
            for reader in transforms.iter().filter(|u| {
                u.inputs.first().is_some_and(|i| i.0 == name)
                    && !matches!(
                        u.value.kind,
                        TransformKind::Gst {
                            media: Media::Audio,
                            ..
                        }
                    )
            }) {
                let (_, span) = &reader.inputs[0];
                self.diags.push(Diagnostic {
                    span: span.clone(),
                    component: Some(format!("transforms.{}", reader.value.name)),
                    key: Some("inputs".into()),
                    message: format!(
                        "`{name}` is an abrcontroller: only the encoder it steers may read its video"
                    ),
                    help: Some(format!(
                        "put this transform before `{name}`, or read from `{name}`'s input"
                    )),
                });
            }
            let video_encoders: Vec<&Named<Encoder>> = encoders
                .iter()
                .filter(|e| {
                    e.value.kind.media() == Media::Video
                        && e.inputs.first().is_some_and(|i| i.0 == name)
                })
                .collect();
            let encoder = match video_encoders.as_slice() {
                [one] if matches!(one.value.kind, EncoderKind::Vp8 { .. }) => {
                    self.diags.push(Diagnostic {
                        span: one.inputs[0].1.clone(),
                        component: Some(format!("encoders.{}", one.value.name)),
                        key: Some("inputs".into()),
                        message: "an abrcontroller steers h264 encoders only".into(),
                        help: Some(
                            "read from the abrcontroller with a `type = \"h264\"` encoder".into(),
                        ),
                    });
                    continue;
                }
                [one] => &one.value.name,
                [] => {
                    self.diags.push(Diagnostic {
                        span: t.span.clone(),
                        component: Some(component),
                        key: None,
                        message: "no h264 encoder reads from this abrcontroller".into(),
                        help: Some(format!(
                            "add an encoder with `type = \"h264\"` and `inputs = [\"{name}\"]`"
                        )),
                    });
                    continue;
                }
                [_, second, ..] => {
                    self.diags.push(Diagnostic {
                        span: second.inputs[0].1.clone(),
                        component: Some(format!("encoders.{}", second.value.name)),
                        key: Some("inputs".into()),
                        message: format!(
                            "`{name}` already steers `{}`: an abrcontroller steers one encoder",
                            video_encoders[0].value.name
                        ),
                        help: None,
                    });
                    continue;
                }
            };
            let Some(target) = outputs.iter().find(|o| &o.value.name == output) else {
                if !self.broken.contains(output.as_str()) {
                    let names: Vec<&str> = outputs.iter().map(|o| o.value.name.as_str()).collect();
                    self.diags.push(Diagnostic {
                        span: output_span.clone(),
                        component: Some(component),
                        key: Some("output".into()),
                        message: format!("`{output}` is not an output"),
                        help: suggest(output, names),
                    });
                }
                continue;
            };
            let kind = target.value.kind.type_name();
            if !ABR_OUTPUT_TYPES.contains(&kind) {
                self.diags.push(Diagnostic {
                    span: output_span.clone(),
                    component: Some(component.clone()),
                    key: Some("output".into()),
                    message: format!(
                        "`{output}` is a {kind} output, which gives no feedback about its link (expected one of {})",
                        ABR_OUTPUT_TYPES.join(", ")
                    ),
                    help: None,
                });
            }
            if let Some(first) = controlled_outputs.insert(output.as_str(), name) {
                self.diags.push(Diagnostic {
                    span: output_span.clone(),
                    component: Some(component.clone()),
                    key: Some("output".into()),
                    message: format!("`{output}` is already steered by transforms.{first}"),
                    help: None,
                });
            }
            if !target.inputs.iter().any(|i| &i.0 == encoder) {
                self.diags.push(Diagnostic {
                    span: output_span.clone(),
                    component: Some(component.clone()),
                    key: Some("output".into()),
                    message: format!(
                        "`{output}` does not take `{encoder}`, the encoder this abrcontroller steers"
                    ),
                    help: Some(format!(
                        "list `{encoder}` in the `inputs` of [outputs.{output}]"
                    )),
                });
            }
            for other in outputs.iter().filter(|o| &o.value.name != output) {
                if let Some((_, span)) = other.inputs.iter().find(|i| &i.0 == encoder) {
                    self.diags.push(Diagnostic {
                        span: span.clone(),
                        component: Some(format!("outputs.{}", other.value.name)),
                        key: Some("inputs".into()),
                        message: format!(
                            "`{encoder}` is steered by abrcontroller `{name}` for `{output}`: its bitrate and picture size follow that link"
                        ),
                        help: Some(
                            "give this output an encoder of its own, reading from the abrcontroller's input"
                                .into(),
                        ),
                    });
                }
            }
        }
    }

    fn single_input<T>(
        &mut self,
        component: &str,
        n: &Named<T>,
        allowed: &[&str],
        what: &str,
    ) -> Option<(String, Range<usize>)> {
        if n.inputs.len() > 1 {
            self.diags.push(Diagnostic {
                span: n.inputs[1].1.clone(),
                component: Some(component.to_string()),
                key: Some("inputs".into()),
                message: "takes exactly one input".into(),
                help: None,
            });
        }
        let (input, span) = n.inputs.first()?;
        if !allowed.contains(&input.as_str()) {
            self.unknown_input(component, input, span.clone(), allowed, what);
            return None;
        }
        Some((input.clone(), span.clone()))
    }

    fn has_audio(
        &self,
        name: &str,
        sources: &[Named<Source>],
        transforms: &[Named<Transform>],
    ) -> bool {
        let mut current = name;
        for _ in 0..=transforms.len() {
            if let Some(s) = sources.iter().find(|s| s.value.name == current) {
                return s.value.audio.is_some();
            }
            match transforms
                .iter()
                .find(|t| t.value.name == current)
                .and_then(|t| t.inputs.first())
            {
                Some((input, _)) => current = input,
                None => return false,
            }
        }
        false
    }

    fn check_transform_cycles(&mut self, transforms: &[Named<Transform>]) {
        for t in transforms {
            let mut visited = BTreeSet::new();
            let mut current = t.value.name.as_str();
            while let Some(next) = transforms.iter().find(|x| x.value.name == current) {
                if !visited.insert(current) {
                    self.diags.push(Diagnostic {
                        span: t.span.clone(),
                        component: Some(format!("transforms.{}", t.value.name)),
                        key: Some("inputs".into()),
                        message: "transforms feed each other in a loop".into(),
                        help: None,
                    });
                    break;
                }
                match next.inputs.first() {
                    Some((input, _)) => current = input,
                    None => break,
                }
            }
        }
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
