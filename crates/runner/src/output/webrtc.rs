//! `type = "webrtc"`: WHEP at `/whep`, every viewer fed from the one encode.

use std::sync::Mutex;

use anyhow::Context as _;
use gst::prelude::*;

use serde::Serialize;
use toml::de::DeValue;

use super::{
    Context, Input, InputLink, Kind, OutputFactory, Sink, refuse_for_webrtc, settings, tees,
};
use crate::config::reader::{Fields, Spanned};
use crate::config::{Diagnostic, EncoderKind, OutputSpec, Refusal, suggest};

const TYPE: &str = "webrtc";

/// `type = "webrtc"`: WHEP at `/whep`, every viewer fed from the one encode (H.264
/// constrained baseline + Opus).
#[derive(Debug, Clone, Serialize)]
pub struct WebrtcOutput {
    /// `max_viewers`: further offers get 503.
    pub max_viewers: u32,
    /// `loopback_only`: ICE on 127.0.0.1 only (viewers on this machine, loopback-only
    /// networks).
    pub loopback_only: bool,
    /// `playout_delay_ms`: the playout delay asked of viewers whose offer has the
    /// playout-delay header extension, `[min, max]` (one value in the file sets both), or
    /// `None` for `"off"`.
    pub playout_delay_ms: Option<[u32; 2]>,
    /// `ice_tcp`: passive TCP candidates (ICE-TCP) beside the UDP ones in every answer, for
    /// viewers whose network drops UDP.
    pub ice_tcp: bool,
    /// `ice_ports`: `[min, max]`, the local UDP and TCP ports of the viewers' ICE candidates
    /// (each viewer holds one of each while it watches); `None`: any port.
    pub ice_ports: Option<[u16; 2]>,
    /// `ice_servers`: STUN/TURN URLs (`stun:host:3478`, `turn:host:3478?transport=tcp`,
    /// `turns:host:443?transport=tcp`) named to viewers in WHEP `Link` headers.
    pub ice_servers: Vec<String>,
    /// `turn_secret_env`: the environment variable holding the secret shared with the TURN
    /// server (coturn's `static-auth-secret`); every viewer gets a credential made from it.
    /// The secret itself is never in the pipeline file.
    pub turn_secret_env: Option<String>,
    /// `turn_ttl`: seconds a TURN credential stays valid.
    pub turn_ttl: u32,
    /// `server_relay`: the runner's own sessions gather a relay candidate on the first TURN
    /// server too (a runner behind NAT).
    pub server_relay: bool,
}

output_spec!(WebrtcOutput, TYPE, {
    fn refuses_input(&self, input: &str, encoder: &EncoderKind) -> Option<Refusal> {
        refuse_for_webrtc(input, encoder)
    }

    fn served_at(&self) -> Option<&'static str> {
        Some("/whep")
    }

    fn takes_vp8_beside_h264(&self) -> bool {
        true
    }

    fn takes_rungs(&self) -> bool {
        true
    }
});

/// The WebRTC kind in the registry.
pub(super) struct Factory;

impl OutputFactory for Factory {
    fn type_name(&self) -> &'static str {
        TYPE
    }

    fn steerable(&self) -> bool {
        true
    }

    /// WHEP viewers served at `/whep`.
    fn parse(&self, diags: &mut Vec<Diagnostic>, f: &mut Fields) -> Option<Box<dyn OutputSpec>> {
        let max_viewers = f.integer(diags, "max_viewers", 1..1001, 64);
        let (ice_servers, first_turn) = ice_servers(f, diags);
        let turn_secret_env = turn_secret_env(f, diags);
        let server_relay = f.bool(diags, "server_relay", false);
        if server_relay
            && first_turn.is_none()
            && let Some(value) = f.entry("server_relay")
        {
            diags.push(Diagnostic {
                span: value.span(),
                component: f.component.clone(),
                key: Some("server_relay".into()),
                message: "server_relay needs a turn: server in ice_servers".into(),
                help: Some(
                    "e.g. `ice_servers = [\"turn:turn.example.org:3478?transport=udp\"]`".into(),
                ),
            });
        }
        if let (Some(span), None) = (first_turn, &turn_secret_env) {
            // Browsers refuse a TURN server without a credential (InvalidAccessError).
            diags.push(Diagnostic {
                span,
                component: f.component.clone(),
                key: Some("ice_servers".into()),
                message: "a turn: server needs credentials: set turn_secret_env to the \
                          environment variable holding the secret shared with it"
                    .into(),
                help: Some("e.g. `turn_secret_env = \"HYBRIDLIVE_TURN_SECRET\"`".into()),
            });
        }
        Some(Box::new(WebrtcOutput {
            max_viewers,
            loopback_only: f.bool(diags, "loopback_only", false),
            playout_delay_ms: playout_delay(f, diags, "playout_delay_ms"),
            ice_tcp: f.bool(diags, "ice_tcp", true),
            ice_ports: ice_ports(f, diags, "ice_ports", max_viewers),
            ice_servers,
            turn_secret_env,
            turn_ttl: f.integer(diags, "turn_ttl", 60..86_401, 3600),
            server_relay,
        }))
    }

    fn prepare(&self, spec: &dyn OutputSpec, cx: &Context<'_>) -> anyhow::Result<Box<dyn Kind>> {
        let settings = settings::<WebrtcOutput>(spec)?;
        let mut webrtc = Webrtc::new(settings);
        // Read before anything starts: a missing secret stops the start, naming the variable.
        webrtc.turn = webrtc.turn_auth()?;
        webrtc.events = Some(cx.events.clone());
        Ok(Box::new(webrtc))
    }
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

/// `[min, max]` local ports for ICE candidates, holding at least `max_viewers` ports: libnice
/// binds a port per viewer (and per transport) and cannot share one between sessions.
fn ice_ports(
    f: &mut Fields,
    diags: &mut Vec<Diagnostic>,
    key: &'static str,
    max_viewers: u32,
) -> Option<[u16; 2]> {
    let value = f.entry(key)?;
    let port = |item: &Spanned<DeValue>| {
        let int = item.get_ref().as_integer()?;
        i64::from_str_radix(&int.as_str().replace('_', ""), int.radix())
            .ok()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n > 0)
    };
    let range = match value.get_ref() {
        DeValue::Array(items) if items.len() == 2 => port(&items[0]).zip(port(&items[1])),
        _ => None,
    };
    let message = match range {
        Some((min, max)) if min <= max => {
            let ports = u32::from(max - min) + 1;
            if ports >= max_viewers {
                return Some([min, max]);
            }
            format!(
                "[{min}, {max}] holds {ports} ports, fewer than max_viewers ({max_viewers}): every \
                 viewer holds a port of the range while it watches"
            )
        }
        _ => "expected [min, max]: two ports (1..=65535), min <= max".to_string(),
    };
    diags.push(Diagnostic {
        span: value.span(),
        component: f.component.clone(),
        key: Some(key.to_string()),
        message,
        help: Some(format!(
            "e.g. `{key} = [20000, 20099]`, opened for UDP and TCP in the firewall, for up to \
             100 viewers"
        )),
    });
    None
}

/// `ice_servers`: every entry a STUN/TURN URL, refused where it is written; and where the
/// first TURN one is.
fn ice_servers(
    f: &mut Fields,
    diags: &mut Vec<Diagnostic>,
) -> (Vec<String>, Option<std::ops::Range<usize>>) {
    const KEY: &str = "ice_servers";
    let Some(value) = f.entry(KEY) else {
        return (Vec::new(), None);
    };
    let DeValue::Array(items) = value.get_ref() else {
        f.type_error(diags, value, KEY, "an array of stun:/turn: URLs");
        return (Vec::new(), None);
    };
    let mut servers = Vec::new();
    let mut first_turn = None;
    for item in items.iter() {
        let Some(url) = item.get_ref().as_str() else {
            f.type_error(diags, item, KEY, "a stun:/turn: URL (string)");
            continue;
        };
        match hybridlive_webrtc::IceServer::parse(url) {
            Ok(server) => {
                if server.kind() == hybridlive_webrtc::IceServerKind::Turn && first_turn.is_none() {
                    first_turn = Some(item.span());
                }
                servers.push(url.to_string());
            }
            Err(e) => diags.push(Diagnostic {
                span: item.span(),
                component: f.component.clone(),
                key: Some(KEY.to_string()),
                message: format!("`{url}`: {}", e.reason),
                help: Some(
                    "e.g. \"stun:turn.example.org:3478\", \"turn:turn.example.org:3478?transport=udp\", \
                     \"turns:turn.example.org:443?transport=tcp\""
                        .into(),
                ),
            }),
        }
    }
    (servers, first_turn)
}

/// `turn_secret_env`: the name of an environment variable (not the secret).
fn turn_secret_env(f: &mut Fields, diags: &mut Vec<Diagnostic>) -> Option<String> {
    let (name, span) = f.string(diags, "turn_secret_env")?;
    let ok = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        return Some(name);
    }
    diags.push(Diagnostic {
        span,
        component: f.component.clone(),
        key: Some("turn_secret_env".into()),
        message: "expected the name of an environment variable (letters, digits, _), not the \
                  secret itself"
            .into(),
        help: Some("e.g. `turn_secret_env = \"HYBRIDLIVE_TURN_SECRET\"`".into()),
    });
    None
}

/// A WebRTC (WHEP) output.
struct Webrtc {
    max_viewers: u32,
    loopback_only: bool,
    playout_delay_ms: Option<[u32; 2]>,
    ice_tcp: bool,
    ice_ports: Option<[u16; 2]>,
    ice_servers: Vec<String>,
    turn_secret_env: Option<String>,
    turn_ttl: u32,
    server_relay: bool,
    /// TURN credentials' secret and lifetime, read from the environment when prepared.
    turn: Option<hybridlive_webrtc::TurnAuth>,
    /// The WHEP sessions of the running pipeline.
    whep: Mutex<Option<hybridlive_webrtc::WhepOutput>>,
    /// Where viewers' rung switches are told.
    events: Option<crate::events::Events>,
}

impl Webrtc {
    /// An output as its table in the pipeline file says.
    fn new(settings: &WebrtcOutput) -> Webrtc {
        Webrtc {
            max_viewers: settings.max_viewers,
            loopback_only: settings.loopback_only,
            playout_delay_ms: settings.playout_delay_ms,
            ice_tcp: settings.ice_tcp,
            ice_ports: settings.ice_ports,
            ice_servers: settings.ice_servers.clone(),
            turn_secret_env: settings.turn_secret_env.clone(),
            turn_ttl: settings.turn_ttl,
            server_relay: settings.server_relay,
            turn: None,
            whep: Mutex::new(None),
            events: None,
        }
    }
}

impl Webrtc {
    /// The TURN secret from the environment, when `turn_secret_env` names one. `Err` names
    /// the variable, never its value.
    fn turn_auth(&self) -> anyhow::Result<Option<hybridlive_webrtc::TurnAuth>> {
        let Some(name) = &self.turn_secret_env else {
            return Ok(None);
        };
        let secret = std::env::var(name).ok().filter(|s| !s.is_empty());
        let secret = secret.with_context(|| {
            format!(
                "webrtc output: turn_secret_env names {name}, which is not set (or empty): \
                 export the secret shared with the TURN server as {name}"
            )
        })?;
        Ok(Some(hybridlive_webrtc::TurnAuth {
            secret: hybridlive_webrtc::TurnSecret::new(secret),
            ttl: std::time::Duration::from_secs(u64::from(self.turn_ttl)),
        }))
    }
}

impl Kind for Webrtc {
    fn build_sink(&self, pipeline: &gst::Pipeline) -> anyhow::Result<Sink> {
        tees::build_sink(pipeline)
    }

    fn input_pad(&self, link: &InputLink<'_>) -> anyhow::Result<gst::Pad> {
        tees::input_pad(link)
    }

    fn finish_build(&self, pipeline: &gst::Pipeline, inputs: &[Input]) -> anyhow::Result<()> {
        let audio = pipeline.by_name("audio").context("no audio tee")?;
        let audio_fed = audio.static_pad("sink").is_some_and(|pad| pad.is_linked());
        let config = hybridlive_webrtc::WhepConfig {
            loopback_ice: self.loopback_only,
            ice_tcp: self.ice_tcp,
            ice_ports: self
                .ice_ports
                .map(|[min, max]| hybridlive_webrtc::IcePorts { min, max }),
            max_sessions: self.max_viewers as usize,
            playout_delay: self
                .playout_delay_ms
                .map(|[min, max]| hybridlive_webrtc::PlayoutDelayMs { min, max }),
            ice_servers: self
                .ice_servers
                .iter()
                .map(|url| hybridlive_webrtc::IceServer::parse(url))
                .collect::<Result<_, _>>()?,
            turn: self.turn.clone(),
            server_relay: self.server_relay,
            ..Default::default()
        };
        let audio = audio_fed.then_some(&audio);
        // A ladder: every rung on a tee of its own, each viewer on one of them.
        let mut rungs = Vec::new();
        for input in inputs {
            if let Some(rung) = &input.rung {
                let tee = match rung.index {
                    0 => "video".to_string(),
                    index => tees::rung_tee_name(index),
                };
                let framerate = (rung.framerate.numerator, rung.framerate.denominator);
                let bps = u64::from(rung.bitrate) * 1000;
                rungs.push((
                    hybridlive_ladder::Rung {
                        width: rung.width,
                        height: rung.height,
                        framerate: Some(framerate),
                        min_bps: bps,
                        max_bps: bps,
                    },
                    pipeline.by_name(&tee).context("no rung tee")?,
                ));
            }
        }
        let whep = if rungs.is_empty() {
            // In the order of the inputs: the first codec a viewer offers wins.
            let mut videos = Vec::new();
            for input in inputs {
                let (codec, tee) = match input.kind {
                    EncoderKind::H264 { .. } => (hybridlive_webrtc::VideoCodec::H264, "video"),
                    EncoderKind::Vp8 { .. } => (hybridlive_webrtc::VideoCodec::Vp8, "video-vp8"),
                    _ => continue,
                };
                videos.push((codec, pipeline.by_name(tee).context("no video tee")?));
            }
            let videos: Vec<_> = videos.iter().map(|(codec, tee)| (*codec, tee)).collect();
            hybridlive_webrtc::WhepOutput::with_codecs(pipeline, &videos, audio, config)
        } else {
            let vp8 = inputs
                .iter()
                .any(|i| matches!(i.kind, EncoderKind::Vp8 { .. }))
                .then(|| pipeline.by_name("video-vp8"))
                .flatten();
            let whep = hybridlive_webrtc::WhepOutput::with_ladder(
                pipeline,
                rungs,
                vp8.as_ref(),
                audio,
                config,
            );
            if let Some(events) = self.events.clone() {
                whep.on_rung_switch(Box::new(move |switch| {
                    events.emit(
                        "viewer-rung",
                        serde_json::json!({
                            "viewer": switch.viewer,
                            "from": switch.from,
                            "to": switch.to,
                            "reason": switch.reason,
                            "estimate_bps": switch.estimate_bps,
                        }),
                    );
                }));
            }
            whep
        };
        *self.whep.lock().unwrap() = Some(whep);
        tees::remove_unfed(pipeline)
    }

    fn bind_feedback(&self, abr: &gst::Element, _pipeline: Option<&gst::Pipeline>) {
        tees::unbind_feedback(abr);
    }

    /// The abrcontroller follows the viewer with the most recent session (one encode feeds
    /// every viewer; see pipelines/README.md).
    fn follow_feedback(&self, abr: &gst::Element, pipeline: Option<gst::Pipeline>) {
        let newest = pipeline.and_then(|p| {
            p.iterate_recurse()
                .into_iter()
                .filter_map(Result::ok)
                .filter(|e| e.factory().is_some_and(|f| f.name() == "webrtcbin"))
                // Unnamed: webrtcbin0, webrtcbin1...: the longest, then greatest name is the newest.
                .max_by_key(|e| {
                    let name = e.name().to_string();
                    (name.len(), name)
                })
        });
        let current = abr.property::<Option<gst::Element>>("webrtcbin");
        if current != newest {
            abr.set_property("webrtcbin", newest);
        }
    }

    /// Ends every WebRTC session before the pipeline goes down.
    fn close_sessions(&self) {
        if let Some(whep) = self.whep.lock().unwrap().take() {
            whep.close_all();
        }
    }

    fn whep(&self) -> Option<hybridlive_webrtc::WhepOutput> {
        self.whep.lock().unwrap().clone()
    }
}
