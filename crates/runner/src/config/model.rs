//! The model a pipeline file is read into: plain data, validated, serialisable for the status
//! API. Nothing here reads TOML.

use std::ops::Range;
use std::path::PathBuf;

use serde::Serialize;

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
    /// `tls_cert` and `tls_key`: the server speaks HTTPS with them.
    pub tls: Option<ServerTls>,
    /// `trusted_proxies`: reverse proxies (addresses or networks, checked) whose
    /// `X-Forwarded-For` names the client, for the per-client caps.
    pub trusted_proxies: Vec<String>,
}

/// `tls_cert` / `tls_key` of `[server]`, both given (relative paths read from the pipeline
/// file's folder), both checked readable and a matching pair at validation.
#[derive(Debug, Clone, Serialize)]
pub struct ServerTls {
    /// `tls_cert`: the server's certificate, then its chain, PEM.
    pub cert: PathBuf,
    /// `tls_key`: the certificate's private key, PEM.
    pub key: PathBuf,
}

/// Raw video every source is normalised to.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct VideoFormat {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Frames per second.
    pub framerate: Framerate,
}

/// A frame rate as a fraction: `30/1`, or `30000/1001` for the "29.97" of NTSC-derived
/// cameras and phones (normalised to a whole 30, such a source gets a repeated frame about
/// every 33 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framerate {
    /// Frames...
    pub numerator: u32,
    /// ...per this many seconds.
    pub denominator: u32,
}

impl Framerate {
    /// The highest rate a source may have.
    pub const MAX_FPS: u32 = 120;

    /// A whole number of frames per second.
    pub const fn whole(fps: u32) -> Self {
        Self {
            numerator: fps,
            denominator: 1,
        }
    }

    /// Frames per second.
    pub fn fps(self) -> f64 {
        f64::from(self.numerator) / f64::from(self.denominator)
    }

    /// The nearest whole number of frames per second (29.97 → 30): for what counts whole
    /// frames, such as a key-frame interval.
    pub fn rounded(self) -> u32 {
        ((self.fps()).round() as u32).max(1)
    }

    /// Reads `30`, `29.97` (the NTSC rates 23.976, 29.97, 59.94 and 119.88 are read as
    /// n×1000/1001), `12.5` or `30000/1001`; `None` for anything else or a rate outside
    /// 1..=120 fps.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let rate = if let Some((n, d)) = text.split_once('/') {
            let (n, d) = (n.trim().parse::<u32>().ok()?, d.trim().parse::<u32>().ok()?);
            (d > 0).then_some(Self {
                numerator: n,
                denominator: d,
            })?
        } else {
            let fps: f64 = text.parse().ok()?;
            if !fps.is_finite() || fps <= 0.0 {
                return None;
            }
            let ntsc = fps * 1001.0 / 1000.0;
            if fps.fract() != 0.0 && (ntsc - ntsc.round()).abs() < 0.005 {
                Self {
                    numerator: ntsc.round() as u32 * 1000,
                    denominator: 1001,
                }
            } else {
                // Milliframes, reduced: 12.5 → 25/2.
                let milli = (fps * 1000.0).round() as u32;
                let gcd = gcd(milli, 1000);
                Self {
                    numerator: milli / gcd,
                    denominator: 1000 / gcd,
                }
            }
        };
        (1.0..=f64::from(Self::MAX_FPS))
            .contains(&rate.fps())
            .then_some(rate)
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a.max(1) } else { gcd(b, a % b) }
}

impl std::fmt::Display for Framerate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.denominator {
            1 => write!(f, "{}", self.numerator),
            d => write!(f, "{}/{d}", self.numerator),
        }
    }
}

/// A whole rate as a number (as before fractions were accepted), any other as `"n/d"`.
impl Serialize for Framerate {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.denominator {
            1 => serializer.serialize_u32(self.numerator),
            _ => serializer.collect_str(self),
        }
    }
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
    /// `rungs` (h264 only): a ladder encoded once, highest first; empty for one rendition.
    /// The encoder's own name is the top rung; the others are `NAME@1`, `NAME@2`... Outputs
    /// that serve a ladder (WebRTC viewers, HLS) take every rung, the others the top one.
    pub rungs: Vec<RungSpec>,
}

/// One rung of a ladder encoder: `"WIDTHxHEIGHT@FPS:KBPS"` in a pipeline file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RungSpec {
    /// Width in pixels (even).
    pub width: u32,
    /// Height in pixels (even).
    pub height: u32,
    /// Frames per second; `None` keeps the source's.
    pub framerate: Option<Framerate>,
    /// The rung's bitrate, kbit/s.
    pub bitrate: u32,
    /// Where the rung is written, for diagnostics that need the source (size, rate).
    #[serde(skip)]
    pub span: Range<usize>,
}

impl RungSpec {
    /// The name of rung `index` of encoder `encoder`: the encoder's own for the top rung.
    pub fn encoder_name(encoder: &str, index: usize) -> String {
        if index == 0 {
            encoder.to_string()
        } else {
            format!("{encoder}@{index}")
        }
    }
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
    /// Where the media goes, read by its kind.
    pub kind: Box<dyn OutputSpec>,
}

/// The parsed table of one output, whatever its kind: each kind (in the `output` module) reads
/// its own settings into a type of its own, and the model holds it as this trait object.
/// Callers that need one kind's settings downcast with [`OutputSpec::as_any`].
pub trait OutputSpec: std::fmt::Debug + Send + Sync + 'static {
    /// The `type` name, as written in pipeline files.
    fn type_name(&self) -> &'static str;
    /// Why this output cannot take the encoder `input` (of `encoder`'s kind) as an input, if
    /// it cannot: a codec it cannot carry, or encoder settings it needs.
    fn refuses_input(&self, _input: &str, _encoder: &EncoderKind) -> Option<Refusal> {
        None
    }
    /// The one HTTP path the output is served at, for kinds of which one output at most can
    /// be served.
    fn served_at(&self) -> Option<&'static str> {
        None
    }
    /// Whether a VP8 encoder may feed it beside an H.264 one (viewers pick the first codec
    /// their offer has).
    fn takes_vp8_beside_h264(&self) -> bool {
        false
    }
    /// Whether it serves every rung of a ladder encoder (viewers on a rung each); the others
    /// take the top rung only.
    fn takes_rungs(&self) -> bool {
        false
    }
    /// The settings, for a downcast to the kind's own type.
    fn as_any(&self) -> &dyn std::any::Any;
    /// The settings, for a downcast to the kind's own type, to change them.
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any;
    /// A copy in a new box.
    fn clone_box(&self) -> Box<dyn OutputSpec>;
    /// The settings as JSON (without `type`), secrets left out.
    fn settings_json(&self) -> serde_json::Value;
}

/// Why an output refuses an input, as a diagnostic on that input says it.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// What is wrong.
    pub message: String,
    /// What to change.
    pub help: Option<String>,
}

impl Clone for Box<dyn OutputSpec> {
    fn clone(&self) -> Self {
        self.clone_box()
    }
}

impl Serialize for dyn OutputSpec {
    /// `{"type": ..., settings...}`, as the tagged enum the kinds once were.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut value = self.settings_json();
        if let Some(object) = value.as_object_mut() {
            object.insert("type".into(), self.type_name().into());
        }
        value.serialize(serializer)
    }
}

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

#[cfg(test)]
mod tests {
    use super::Framerate;

    #[test]
    fn frame_rates_read_as_fractions() {
        let rate = |n, d| {
            Some(Framerate {
                numerator: n,
                denominator: d,
            })
        };
        assert_eq!(Framerate::parse("30"), rate(30, 1));
        assert_eq!(Framerate::parse("29.97"), rate(30000, 1001));
        assert_eq!(Framerate::parse("23.976"), rate(24000, 1001));
        assert_eq!(Framerate::parse("59.94"), rate(60000, 1001));
        assert_eq!(Framerate::parse("12.5"), rate(25, 2));
        assert_eq!(Framerate::parse("30000/1001"), rate(30000, 1001));
        assert_eq!(Framerate::parse(" 25 / 1 "), rate(25, 1));
        for bad in [
            "0", "0.5", "121", "30/0", "abc", "NaN", "-30", "inf", "1e9/1",
        ] {
            assert_eq!(Framerate::parse(bad), None, "{bad}");
        }
        assert_eq!(Framerate::parse("29.97").map(|r| r.rounded()), Some(30));
        assert_eq!(
            Framerate::parse("30000/1001")
                .map(|r| r.to_string())
                .as_deref(),
            Some("30000/1001")
        );
    }
}
