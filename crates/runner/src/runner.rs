//! `hybridlive run`: the ingest pipeline (sources → normalisation → latencystamp → transforms →
//! encoders), the outputs, the HTTP server, the status line and the shutdown sequence.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use gst::prelude::*;

use crate::RunArgs;
use crate::config::{
    EncoderKind, Fallback, H264Preset, Media, Pipeline, RungSpec, Source, SourceKind,
    TransformKind, VideoFormat,
};
use crate::events::Events;
use crate::output::{self, Input, OutputRunner, make};
use crate::srt_listener;
use crate::state::{self, Shared};
use gstabr::ladder::Ladder;

/// How long a shutdown waits for outputs to finish their files before tearing them down.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long after the grace period a shutdown that still has not finished is called stuck.
const SHUTDOWN_STUCK_AFTER: Duration = Duration::from_secs(10);
const DEFAULT_HTTP: &str = "127.0.0.1:8080";
/// What uridecodebin3 buffers of an RTMP stream (a non-live source, so it buffers; its
/// default, about 2 s, is media still playing out after the publisher is gone, delaying the
/// slate by as much).
const RTMP_BUFFER: gst::ClockTime = gst::ClockTime::from_mseconds(300);

/// How often fallbacksrc restarts a source that stalled.
const RESTART_TIMEOUT: gst::ClockTime = gst::ClockTime::from_seconds(3);
/// The decoding side of an SRT listener source is not restarted on a timer: it starts afresh
/// when a sender's stream ends (`srt_listener`), and meanwhile waits for the next one.
const LISTENER_NEVER_RESTARTS: gst::ClockTime = gst::ClockTime::from_seconds(365 * 24 * 3600);

/// The URLs of the sources (and their backups) as endpoints whose secrets no message shows.
fn source_endpoints(sources: &[Source]) -> Vec<crate::endpoint::Endpoint> {
    let mut urls = Vec::new();
    for source in sources {
        let fallback = match &source.kind {
            SourceKind::Network { uri, fallback } => {
                urls.push(uri.as_str());
                Some(fallback)
            }
            SourceKind::File { fallback, .. } => Some(fallback),
            _ => None,
        };
        urls.extend(fallback.and_then(|f| f.backup_uri.as_deref()));
    }
    urls.into_iter()
        .map(|u| crate::endpoint::Endpoint::new(u, &[]))
        .collect()
}

/// The page's address as a browser on this machine opens it: a server listening on every
/// interface (`0.0.0.0`, `::`) is reached through loopback, not through that address.
fn viewer_url(addr: std::net::SocketAddr, https: bool) -> String {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
            std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
        }
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
        }
        ip => ip,
    };
    let scheme = if https { "https" } else { "http" };
    format!("{scheme}://{}/", std::net::SocketAddr::new(ip, addr.port()))
}

impl crate::control::Control for Runner {
    fn shared(&self) -> &Shared {
        &self.shared
    }

    fn whep(&self) -> Option<hybridlive_webrtc::WhepOutput> {
        self.outputs.iter().find_map(|o| o.whep())
    }

    fn ll_hls(&self) -> Option<Arc<crate::llhls::LlHls>> {
        self.outputs.iter().find_map(|o| o.ll_hls())
    }

    fn hls_playlist_length(&self) -> Option<usize> {
        self.outputs.iter().find_map(|o| o.hls_playlist_length())
    }

    fn control_offer(&self, show: Option<&str>, hide: Option<&str>) -> usize {
        Runner::control_offer(self, show, hide)
    }

    fn marker(&self, label: String) -> state::Marker {
        Runner::marker(self, label)
    }

    fn recording(&self, start: bool, output: Option<&str>) -> Result<Vec<String>, String> {
        Runner::recording(self, start, output)
    }
}

/// The two raw streams of a component, each a tee anyone can branch from.
#[derive(Clone)]
struct Streams {
    video: gst::Element,
    audio: Option<gst::Element>,
}

/// Per-encoder counters, written by a pad probe and read by the status tick.
struct Counter {
    bytes: AtomicU64,
    buffers: AtomicU64,
    /// A video encoder: its buffers are frames, so it has a frame rate.
    video: bool,
}

impl Counter {
    fn new(video: bool) -> Self {
        Self {
            bytes: AtomicU64::new(0),
            buffers: AtomicU64::new(0),
            video,
        }
    }
}

/// An encoder's kbit/s and (video) frames per second between two readings of its counts
/// (bytes, buffers, when), over the time that really passed. The first reading has no
/// interval: what was counted before it is not one second's worth.
fn encoder_rates(
    previous: Option<(u64, u64, std::time::Instant)>,
    (bytes, buffers, now): (u64, u64, std::time::Instant),
    video: bool,
) -> Option<(f64, Option<f64>)> {
    let (pb, pn, then) = previous?;
    let seconds = now.checked_duration_since(then)?.as_secs_f64();
    if seconds <= 0.0 {
        return None;
    }
    let kbps = bytes.saturating_sub(pb) as f64 * 8.0 / 1000.0 / seconds;
    let fps = video.then(|| buffers.saturating_sub(pn) as f64 / seconds);
    Some((kbps, fps))
}

/// The whole running thing, shared with the HTTP server and the GLib callbacks.
pub struct Runner {
    /// Shared figures.
    pub shared: Arc<Shared>,
    /// Outputs by name.
    pub outputs: Vec<Arc<OutputRunner>>,
    ingest: gst::Pipeline,
    main_loop: glib::MainLoop,
    shutting_down: AtomicBool,
    counters: BTreeMap<String, Arc<Counter>>,
    /// Each encoder's counts at the previous tick, and when that was.
    previous: Mutex<BTreeMap<String, (u64, u64, std::time::Instant)>>,
    fallback_sources: Vec<(String, gst::Element)>,
    source_states: Mutex<BTreeMap<String, String>>,
    /// Set from a streaming thread when a source's fallbackswitch changed its active pad.
    sources_switched: Arc<AtomicBool>,
    /// Where this run's events go.
    events: Events,
}

impl Runner {
    /// Starts or stops recording outputs (all, or the one named).
    pub fn recording(&self, start: bool, name: Option<&str>) -> Result<Vec<String>, String> {
        if start && self.shutting_down.load(Ordering::SeqCst) {
            return Err("the runner is shutting down".into());
        }
        let selected: Vec<&Arc<OutputRunner>> = self
            .outputs
            .iter()
            .filter(|o| o.is_record() && name.is_none_or(|n| n == o.name()))
            .collect();
        if selected.is_empty() {
            return Err(match name {
                Some(n) => format!("no record output named `{n}`"),
                None => "the pipeline has no record output".into(),
            });
        }
        for o in &selected {
            if start {
                o.start();
            } else {
                o.stop();
            }
        }
        Ok(selected.iter().map(|o| o.name().to_string()).collect())
    }

    /// Adds a marker to the runner's list and to every recording's timeline.
    pub fn marker(&self, label: String) -> state::Marker {
        let marker = state::Marker {
            utc_ns: state::utc_now_ns(),
            label,
        };
        for o in &self.outputs {
            o.add_marker(&marker);
        }
        self.shared.with(|s| s.markers.push(marker.clone()));
        self.events.emit(
            "marker",
            serde_json::json!({"utc": state::rfc3339(marker.utc_ns), "label": marker.label}),
        );
        marker
    }

    /// An offer appeared or left: into every recording's timeline, and the events.
    pub fn offer(&self, entry: &hybridlive_offer_timeline::TimelineEntry) {
        let utc_ns = humantime::parse_rfc3339(&entry.utc)
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or_else(state::utc_now_ns, |d| d.as_nanos() as u64);
        for o in &self.outputs {
            o.add_offer(entry, utc_ns);
        }
        self.shared.with(|s| match entry.action {
            hybridlive_offer_timeline::Action::Shown => {
                s.offers_on_screen
                    .insert(entry.id.clone(), entry.title.clone());
            }
            hybridlive_offer_timeline::Action::Hidden => {
                s.offers_on_screen.remove(&entry.id);
            }
        });
        self.events.emit(
            match entry.action {
                hybridlive_offer_timeline::Action::Shown => "offer-shown",
                hybridlive_offer_timeline::Action::Hidden => "offer-hidden",
            },
            serde_json::json!({"id": entry.id, "title": entry.title, "utc": entry.utc}),
        );
    }

    /// Shows (`show` = the offer as JSON) or hides (`hide` = its id) an offer on every
    /// offeroverlay of the ingest; returns how many overlays took it.
    pub fn control_offer(&self, show: Option<&str>, hide: Option<&str>) -> usize {
        let overlays: Vec<gst::Element> = self
            .ingest
            .iterate_recurse()
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| e.factory().is_some_and(|f| f.name() == "offeroverlay"))
            .collect();
        overlays
            .iter()
            .filter(|overlay| match (show, hide) {
                (Some(json), _) => overlay.emit_by_name::<bool>("show-offer", &[&json]),
                (None, Some(id)) => overlay.emit_by_name::<bool>("hide-offer", &[&id]),
                (None, None) => false,
            })
            .count()
    }

    /// Begins the shutdown: EOS into every output, then quit once they are done.
    pub fn shutdown(self: &Arc<Self>, reason: &str) {
        if self.shutting_down.swap(true, Ordering::SeqCst) {
            return;
        }
        self.events
            .emit("shutdown", serde_json::json!({"reason": reason}));
        self.shutdown_watchdog();
        for o in &self.outputs {
            o.stop();
        }
        let runner = self.clone();
        let deadline = std::time::Instant::now() + SHUTDOWN_GRACE;
        glib::timeout_add(Duration::from_millis(50), move || {
            let pending = runner.outputs.iter().any(|o| o.is_active());
            if pending && std::time::Instant::now() < deadline {
                return glib::ControlFlow::Continue;
            }
            for o in &runner.outputs {
                o.force_stop();
            }
            runner.main_loop.quit();
            glib::ControlFlow::Break
        });
    }

    /// A stop must never hang. The hangs the fault suite found (a queue's task waiting for its
    /// stream lock after an output failed and restarted) came from failed output pipelines left
    /// half PLAYING, fixed by `output::tear_down`; this stays as the last resort. Recordings
    /// are crash-safe, so once the grace period and a margin have passed the process exits
    /// anyway: 0 when every recording was finalised, 1 otherwise.
    fn shutdown_watchdog(self: &Arc<Self>) {
        let shared = self.shared.clone();
        let events = self.events.clone();
        let records: Vec<String> = self
            .outputs
            .iter()
            .filter(|o| o.is_record())
            .map(|o| o.name().to_string())
            .collect();
        std::thread::spawn(move || {
            std::thread::sleep(SHUTDOWN_GRACE + SHUTDOWN_STUCK_AFTER);
            let (stuck, unfinished) = shared.with(|s| {
                let stuck: Vec<String> = s
                    .outputs
                    .iter()
                    .filter(|(_, o)| o.state != "stopped" && o.state != "failed")
                    .map(|(name, _)| name.clone())
                    .collect();
                // A failed recording has nothing open: what it wrote is whole fragments.
                let unfinished = records.iter().any(|name| {
                    s.outputs
                        .get(name)
                        .is_some_and(|o| o.state != "stopped" && o.state != "failed")
                });
                (stuck, unfinished)
            });
            events.emit(
                "shutdown-stuck",
                serde_json::json!({"outputs": stuck, "recordings_finalised": !unfinished}),
            );
            std::process::exit(i32::from(unfinished));
        });
    }

    fn tick(&self) {
        for (name, counter) in &self.counters {
            let bytes = counter.bytes.load(Ordering::Relaxed);
            let buffers = counter.buffers.load(Ordering::Relaxed);
            let now = std::time::Instant::now();
            let previous = self
                .previous
                .lock()
                .unwrap()
                .insert(name.clone(), (bytes, buffers, now));
            self.shared.with(|s| {
                let e = s.encoders.entry(name.clone()).or_default();
                e.bytes = bytes;
                e.buffers = buffers;
                if let Some((kbps, fps)) =
                    encoder_rates(previous, (bytes, buffers, now), counter.video)
                {
                    e.kbps = kbps;
                    e.fps = fps;
                }
            });
        }
        let mut viewers = 0;
        for o in &self.outputs {
            o.refresh_stats();
            o.follow_viewers();
            o.check_egress();
            viewers += o.whep().map_or(0, |w| w.session_count());
        }
        self.shared.with(|s| s.viewers = viewers);
        self.check_sources();
    }

    /// Reports each fallback source that went on or off air since the last check: from the
    /// status tick, and within 100 ms of a fallbackswitch changing its active pad.
    fn check_sources(&self) {
        for (name, src) in &self.fallback_sources {
            // What is on air is the picture: a sender without sound (or a file without an
            // audio track) is on air with silence, and says so in `audio`.
            let label = |fallback: bool| if fallback { "fallback" } else { "primary" };
            let state = label(on_fallback(src, "video").unwrap_or(false));
            let audio = on_fallback(src, "audio").map(label);
            let key = format!("{state}/{}", audio.unwrap_or("none"));
            let changed = self
                .source_states
                .lock()
                .unwrap()
                .insert(name.clone(), key.clone())
                .is_none_or(|previous| previous != key);
            if changed {
                self.events.emit(
                    "source",
                    serde_json::json!({"source": name, "state": state, "audio": audio}),
                );
            }
            self.shared
                .with(|s| s.sources.insert(name.clone(), state.to_string()));
        }
    }

    /// An `abr-decision` from the abrcontroller steering `output`: into the status and the
    /// event stream.
    fn abr_decision(&self, output: &str, controller: &str, s: &gst::StructureRef) {
        let kbps = |field: &str| s.get::<u32>(field).map_or(0, |b| u64::from(b) / 1000);
        let rung = s
            .get::<i32>("rung")
            .ok()
            .filter(|&r| r >= 0)
            .map(|r| r as u32);
        let text = |field: &str| s.get::<&str>(field).unwrap_or_default().to_string();
        let status = self.shared.with(|snapshot| {
            let a = snapshot.abr.entry(output.to_string()).or_default();
            a.controller = controller.to_string();
            a.encoder = text("encoder");
            a.bitrate_kbps = kbps("bitrate");
            a.target_kbps = kbps("target-bitrate");
            a.estimate_kbps = s.get::<u32>("estimate").ok().map(|b| u64::from(b) / 1000);
            a.rung = rung;
            a.width = s.get::<i32>("width").ok().map(|w| w as u32);
            a.height = s.get::<i32>("height").ok().map(|h| h as u32);
            a.direction = text("direction");
            a.reason = text("reason");
            a.decisions += 1;
            a.clone()
        });
        let inputs = s.get::<gst::Structure>("inputs").ok();
        let input = |field: &str| inputs.as_ref().and_then(|i| i.value(field).ok());
        // Rates in kbit/s and durations in ms, like the rest of the status.
        let kbps_in = |field: &str| {
            input(field)
                .and_then(|v| v.get::<u32>().ok())
                .map(|b| (f64::from(b) / 1000.0).round())
        };
        let ms_in = |field: &str| {
            input(field)
                .and_then(|v| v.get::<Option<gst::ClockTime>>().ok().flatten())
                .map(|t| (t.nseconds() as f64 / 1e5).round() / 10.0)
        };
        let loss = input("loss").and_then(|v| v.get::<f64>().ok());
        self.events.emit(
            "abr-decision",
            serde_json::json!({
                "output": output,
                "controller": status.controller,
                "encoder": status.encoder,
                "bitrate_kbps": status.bitrate_kbps,
                "previous_bitrate_kbps": kbps("previous-bitrate"),
                "target_kbps": status.target_kbps,
                "rung": status.rung,
                "width": status.width,
                "height": status.height,
                "direction": status.direction,
                "reason": status.reason,
                "key_frame": s.get::<bool>("key-frame").unwrap_or(false),
                "inputs": {
                    "sent_kbps": kbps_in("sent-bitrate"),
                    "loss": loss,
                    "rtt_ms": ms_in("rtt"),
                    "backlog_ms": ms_in("backlog"),
                    "estimate_kbps": kbps_in("estimate"),
                    "delivered_kbps": kbps_in("delivered-bitrate"),
                    "acked_kbps": kbps_in("acked-bitrate"),
                },
            }),
        );
    }

    fn status_line(&self) -> String {
        self.shared.with(|s| {
            let mut parts = Vec::new();
            for (name, e) in &s.encoders {
                match e.fps {
                    Some(fps) => parts.push(format!("{name} {fps:.0} fps {:.0} kbit/s", e.kbps)),
                    None => parts.push(format!("{name} {:.0} kbit/s", e.kbps)),
                }
            }
            for (path, l) in &s.latency {
                parts.push(format!("{path} p95 {:.1} ms", l.p95_ms));
            }
            for (output, a) in &s.abr {
                let size = match (a.width, a.height) {
                    (Some(w), Some(h)) => format!(" {w}x{h}"),
                    _ => String::new(),
                };
                parts.push(format!("{output} abr {} kbit/s{size}", a.bitrate_kbps));
            }
            if s.viewers > 0 {
                parts.push(format!("{} viewers", s.viewers));
            }
            if !s.offers_on_screen.is_empty() {
                let titles: Vec<&str> = s.offers_on_screen.values().map(String::as_str).collect();
                parts.push(format!("offer: {}", titles.join(", ")));
            }
            for (name, o) in &s.outputs {
                match &o.recording {
                    Some(r) if o.state == "running" => parts.push(format!(
                        "{name} rec {:.0} s {:.1} MB",
                        r.duration_s,
                        r.bytes as f64 / 1e6
                    )),
                    _ => match o.retry_in_s {
                        Some(delay) => {
                            parts.push(format!("{name} failed, retrying after {delay:.0} s"))
                        }
                        None => parts.push(format!("{name} {}", o.state)),
                    },
                }
            }
            parts.join(" | ")
        })
    }
}

/// A pipeline running inside another tool (see [`run_embedded`]).
#[derive(Clone)]
pub struct RunHandle {
    runner: Arc<Runner>,
    url: String,
}

impl RunHandle {
    /// The viewer page's URL, e.g. `http://127.0.0.1:8080/`.
    pub fn viewer_url(&self) -> &str {
        &self.url
    }

    /// Ends the run as SIGINT would: outputs finish their files, then the run returns.
    pub fn stop(&self) {
        self.runner.shutdown("stopped by the embedding tool");
    }
}

/// Builds everything, serves, and runs the main loop until shutdown.
pub fn run(config: Pipeline, args: &RunArgs) -> anyhow::Result<()> {
    let events = if args.json {
        Events::json_lines()
    } else {
        Events::human()
    };
    run_with(config, args, events, None)
}

/// Like [`run`], printing nothing; `on_ready` gets a handle once the HTTP server serves.
pub fn run_embedded(
    config: Pipeline,
    args: &RunArgs,
    events: Events,
    on_ready: impl FnOnce(RunHandle) + 'static,
) -> anyhow::Result<()> {
    run_with(config, args, events, Some(Box::new(on_ready)))
}

type OnReady = Box<dyn FnOnce(RunHandle)>;

fn run_with(
    config: Pipeline,
    args: &RunArgs,
    events: Events,
    on_ready: Option<OnReady>,
) -> anyhow::Result<()> {
    // Checked before anything starts: an out-of-range value used to panic once the outputs ran.
    let duration = args
        .duration
        .map(|secs| {
            Duration::try_from_secs_f64(secs)
                .map_err(|_| anyhow!("--duration {secs}: not a number of seconds from 0 to 1.8e19"))
        })
        .transpose()?;
    let shared = Arc::new(Shared::default());
    shared.with(|s| s.started_utc_ns = state::utc_now_ns());
    let token = match (&config.server.token, &config.server.token_env) {
        (_, Some(var)) if std::env::var(var).is_ok_and(|v| !v.is_empty()) => {
            std::env::var(var).ok()
        }
        (Some(t), _) => Some(t.clone()),
        (None, Some(var)) => {
            events.emit(
                "warning",
                serde_json::json!({"message": format!("{var} is not set: write endpoints are disabled")}),
            );
            None
        }
        (None, None) => None,
    };

    let addr = args
        .http
        .clone()
        .or_else(|| config.server.http.clone())
        .unwrap_or_else(|| DEFAULT_HTTP.to_string());
    let mut listener = crate::server::bind(&addr)?;
    // Read again at start (not only at validation): the files may have changed since.
    if let Some(tls) = &config.server.tls {
        let tls = crate::config::tls::server_config(&tls.cert, &tls.key).map_err(|e| {
            let key = match e.file {
                crate::config::tls::TlsFile::Cert => "tls_cert",
                crate::config::tls::TlsFile::Key => "tls_key",
            };
            anyhow!("[server] {key}: {e}")
        })?;
        listener = listener.with_tls(tls);
    }
    let trusted_proxies = config
        .server
        .trusted_proxies
        .iter()
        .map(|p| {
            p.parse()
                .map_err(|e| anyhow!("[server] trusted_proxies: {e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    listener = listener.with_trusted_proxies(trusted_proxies);
    let https = listener.is_tls();

    let ingest = gst::Pipeline::with_name("ingest");
    let mut graph = Graph {
        pipeline: &ingest,
        streams: BTreeMap::new(),
        fallback_sources: Vec::new(),
        sources_switched: Arc::new(AtomicBool::new(false)),
        srt_listeners: Vec::new(),
        abr_scalers: BTreeMap::new(),
        events: events.clone(),
    };
    for source in &config.sources {
        let streams = graph.source(source)?;
        graph.streams.insert(source.name.clone(), streams);
    }
    // Transforms may name each other in any order: build each once its input exists.
    let mut pending: Vec<_> = config.transforms.iter().collect();
    while !pending.is_empty() {
        let before = pending.len();
        let mut rest = Vec::new();
        for t in pending {
            match graph.streams.get(&t.input).cloned() {
                Some(input) => {
                    let video = source_of(&config, &t.input).map(|s| s.video);
                    let streams = graph.transform(&t.name, &t.kind, &input, video)?;
                    graph.streams.insert(t.name.clone(), streams);
                }
                None => rest.push(t),
            }
        }
        if rest.len() == before {
            return Err(anyhow!("transforms without a reachable input"));
        }
        pending = rest;
    }
    let mut encoded = BTreeMap::new();
    let mut counters = BTreeMap::new();
    // (output, abrcontroller) pairs: each output's feedback drives its controller.
    let mut abr_elements: Vec<(String, gst::Element)> = Vec::new();
    for e in &config.encoders {
        let input = graph
            .streams
            .get(&e.input)
            .context("encoder input")?
            .clone();
        let framerate = source_of(&config, &e.input)
            .map_or(crate::config::Framerate::whole(30), |s| s.video.framerate);
        let steering = config
            .transforms
            .iter()
            .find(|t| t.name == e.input && matches!(t.kind, TransformKind::Abrcontroller { .. }));
        let steering = match steering {
            Some(t) if e.kind.media() == Media::Video => Some(t),
            _ => None,
        };
        if let EncoderKind::H264 {
            keyframe_interval, ..
        } = &e.kind
            && !e.rungs.is_empty()
        {
            // A ladder: one encoder per rung off the same raw video, key frames aligned.
            let keys = crate::rungs::LadderKeys::new(Duration::from_secs_f64(*keyframe_interval));
            for (index, rung) in e.rungs.iter().enumerate() {
                let name = RungSpec::encoder_name(&e.name, index);
                let kind = match &e.kind {
                    EncoderKind::H264 {
                        preset,
                        keyframe_interval,
                        ..
                    } => EncoderKind::H264 {
                        preset: *preset,
                        bitrate: rung.bitrate,
                        keyframe_interval: *keyframe_interval,
                    },
                    other => other.clone(),
                };
                let counter = Arc::new(Counter::new(true));
                let (tee, _) = graph.encoder(
                    &name,
                    &kind,
                    &input,
                    framerate,
                    counter.clone(),
                    EncoderRole::Rung(rung),
                )?;
                let encoder = ingest.by_name(&name).context("a rung's encoder")?;
                keys.add_rung(&encoder, &tee);
                counters.insert(name.clone(), counter);
                encoded.insert(name, (tee, kind));
            }
            continue;
        }
        let counter = Arc::new(Counter::new(e.kind.media() == Media::Video));
        let (tee, abr) = graph.encoder(
            &e.name,
            &e.kind,
            &input,
            framerate,
            counter.clone(),
            steering.map_or(EncoderRole::Single, EncoderRole::Steered),
        )?;
        if let (Some(abr), Some(t)) = (abr, steering)
            && let TransformKind::Abrcontroller { output, .. } = &t.kind
        {
            abr_elements.push((output.clone(), abr));
        }
        counters.insert(e.name.clone(), counter);
        encoded.insert(e.name.clone(), (tee, e.kind.clone()));
    }

    let mut outputs = Vec::new();
    let mut temporary = output::TemporaryDirs::default();
    for o in &config.outputs {
        // An output that serves a ladder takes every rung of it; the others the top one,
        // which has the encoder's own name (recordings keep the best picture).
        let mut inputs: Vec<Input> = Vec::new();
        for name in &o.inputs {
            let ladder = config
                .encoders
                .iter()
                .find(|e| &e.name == name && e.rungs.len() > 1)
                .filter(|_| o.kind.takes_rungs());
            if let Some(ladder) = ladder {
                let source_rate = source_of(&config, &ladder.input)
                    .map_or(crate::config::Framerate::whole(30), |s| s.video.framerate);
                for (index, rung) in ladder.rungs.iter().enumerate() {
                    let encoder = RungSpec::encoder_name(name, index);
                    inputs.push(Input {
                        kind: encoded[&encoder].1.clone(),
                        encoder,
                        rung: Some(output::RungInput {
                            index,
                            ladder: name.clone(),
                            width: rung.width,
                            height: rung.height,
                            framerate: rung.framerate.unwrap_or(source_rate),
                            bitrate: rung.bitrate,
                        }),
                    });
                }
            } else {
                inputs.push(Input {
                    encoder: name.clone(),
                    kind: encoded[name].1.clone(),
                    rung: None,
                });
            }
        }
        let runner = OutputRunner::new(o.clone(), inputs.clone(), shared.clone(), events.clone())?;
        temporary
            .0
            .extend(runner.temporary_dir().map(|d| d.to_path_buf()));
        if let Some((_, abr)) = abr_elements.iter().find(|(output, _)| *output == o.name) {
            runner.set_abr(abr.clone());
        }
        for input in &inputs {
            let name = &input.encoder;
            let appsink = bridge(&ingest, &encoded[name].0, &runner, name)?;
            if encoded[name].1.media() == Media::Video {
                runner.add_keyframe_requester(name, appsink);
            }
        }
        outputs.push(runner);
    }

    if ingest.set_state(gst::State::Playing).is_err() {
        // The element's own error says what is wrong (which device, which server).
        let reason = ingest
            .bus()
            .and_then(|bus| bus.pop_filtered(&[gst::MessageType::Error]))
            .and_then(|msg| match msg.view() {
                gst::MessageView::Error(err) => Some(format!(
                    "{}: {}",
                    msg.src().map(|s| s.name().to_string()).unwrap_or_default(),
                    err.error()
                )),
                _ => None,
            })
            .unwrap_or_else(|| "an element failed to start".into());
        let _ = ingest.set_state(gst::State::Null);
        bail!("cannot start the ingest pipeline: {reason}");
    }
    // Output pipelines share the ingest's clock and base time, known once it plays.
    let _ = ingest.state(gst::ClockTime::from_seconds(5));
    let clock = ingest.clock().unwrap_or_else(gst::SystemClock::obtain);
    let base_time = ingest.base_time().unwrap_or(gst::ClockTime::ZERO);
    for o in &outputs {
        o.set_timing(clock.clone(), base_time);
    }

    let main_loop = glib::MainLoop::new(None, false);
    let runner = Arc::new(Runner {
        shared: shared.clone(),
        outputs,
        ingest: ingest.clone(),
        main_loop: main_loop.clone(),
        shutting_down: AtomicBool::new(false),
        counters,
        previous: Mutex::new(BTreeMap::new()),
        fallback_sources: std::mem::take(&mut graph.fallback_sources),
        source_states: Mutex::new(BTreeMap::new()),
        sources_switched: graph.sources_switched.clone(),
        events: events.clone(),
    });

    let abr_outputs: Vec<(String, String)> = abr_elements
        .iter()
        .map(|(output, abr)| (output.clone(), abr.name().to_string()))
        .collect();
    let bus = ingest.bus().context("pipeline without bus")?;
    let ingest_error: Arc<Mutex<Option<String>>> = Arc::default();
    let source_urls = source_endpoints(&config.sources);
    let _watch = {
        let runner = runner.clone();
        let ingest_error = ingest_error.clone();
        bus.add_watch(move |_, msg| {
            match msg.view() {
                gst::MessageView::Error(err) => {
                    // GStreamer's texts can quote a source's URL, stream key or passphrase
                    // included: masked like an output's.
                    let redact = |text: &str| {
                        source_urls
                            .iter()
                            .fold(text.to_string(), |t, url| url.redact(&t))
                    };
                    let src = msg
                        .src()
                        .map(|s| s.path_string().to_string())
                        .unwrap_or_default();
                    let text = redact(&format!("{src}: {}", err.error()));
                    let debug = err.debug().map(|d| redact(d.as_str()));
                    runner.events.emit(
                        "ingest-error",
                        serde_json::json!({"error": text, "debug": debug}),
                    );
                    // The first error is the cause (an encoder refusing its input); the
                    // ones after it are the queues and sources stopping because of it.
                    ingest_error.lock().unwrap().get_or_insert(text);
                    runner.shutdown("ingest error");
                }
                gst::MessageView::Eos(_) => runner.shutdown("end of input"),
                gst::MessageView::Element(e) => {
                    if let Some(s) = e.structure()
                        && s.name() == "abr-decision"
                        && let Some(src) = msg.src()
                        && let Some((output, _)) = abr_outputs
                            .iter()
                            .find(|(_, name)| *name == src.name().as_str())
                    {
                        runner.abr_decision(output, src.name().as_str(), s);
                    }
                    if let Some(s) = e.structure()
                        && s.name() == "latency-report"
                        && let Some(src) = msg.src()
                    {
                        let path = src.name().trim_start_matches("meter-").to_string();
                        output::record_latency(&runner.shared, &path, s);
                    }
                    if let Some(s) = e.structure()
                        && [
                            hybridlive_offer_timeline::MESSAGE_SHOWN,
                            hybridlive_offer_timeline::MESSAGE_HIDDEN,
                        ]
                        .contains(&s.name().as_str())
                    {
                        match hybridlive_offer_timeline::TimelineEntry::from_structure(s) {
                            Ok(entry) => runner.offer(&entry),
                            Err(err) => runner
                                .events
                                .emit("warning", serde_json::json!({"message": err.to_string()})),
                        }
                    }
                }
                _ => {}
            }
            glib::ControlFlow::Continue
        })
        .context("cannot watch the ingest bus")?
    };

    for o in &runner.outputs {
        if o.autostart() {
            o.start();
        }
    }

    let hls_dir = runner
        .outputs
        .iter()
        .find_map(|o| o.hls_dir().map(|d| d.to_path_buf()));
    let server = crate::server::start(
        listener,
        runner.clone(),
        token,
        hls_dir.clone(),
        events.clone(),
    )?;
    let url = viewer_url(server.addr, https);
    shared.with(|s| s.viewer_url = url.clone());
    let mut ready = serde_json::json!({"viewer": url, "metrics": format!("{url}metrics")});
    if server.addr.ip().is_unspecified() {
        ready["listening"] = server.addr.to_string().into();
        let loopback_webrtc = config.outputs.iter().any(|o| {
            o.kind
                .as_any()
                .downcast_ref::<output::WebrtcOutput>()
                .is_some_and(|w| w.loopback_only)
        });
        if loopback_webrtc {
            events.emit(
                "warning",
                serde_json::json!({"message": format!(
                    "HTTP listens on {} for other machines, but the webrtc output has \
                     loopback_only = true: their viewers get no WebRTC candidate they can reach \
                     and fall back to HLS",
                    server.addr
                )}),
            );
        }
    }
    if hls_dir.is_some() {
        ready["hls"] = format!("{url}hls/live.m3u8").into();
    }
    events.emit("ready", ready);
    if let Some(on_ready) = on_ready {
        on_ready(RunHandle {
            runner: runner.clone(),
            url: url.clone(),
        });
    }

    install_signal_handlers();
    {
        let runner = runner.clone();
        glib::timeout_add(Duration::from_millis(100), move || {
            if runner.sources_switched.swap(false, Ordering::SeqCst) {
                runner.check_sources();
            }
            match SIGNAL.load(Ordering::SeqCst) {
                0 => {}
                libc::SIGTERM => runner.shutdown("SIGTERM"),
                libc::SIGHUP => runner.shutdown("SIGHUP"),
                _ => runner.shutdown("SIGINT"),
            }
            glib::ControlFlow::Continue
        });
    }
    if let Some(duration) = duration {
        let runner = runner.clone();
        glib::timeout_add_once(duration, move || runner.shutdown("duration"));
    }
    {
        let runner = runner.clone();
        glib::timeout_add_seconds(1, move || {
            runner.tick();
            let status = runner
                .shared
                .with(|s| serde_json::to_value(&*s).unwrap_or_default());
            runner.events.status(&status, &runner.status_line());
            glib::ControlFlow::Continue
        });
    }

    main_loop.run();
    let _ = runner.ingest.set_state(gst::State::Null);
    drop(std::mem::take(&mut graph.srt_listeners));
    server.stop();
    for o in &runner.outputs {
        o.cleanup();
    }
    runner.events.end();
    if let Some(err) = ingest_error.lock().unwrap().take() {
        return Err(anyhow!("the ingest failed: {err}"));
    }
    events.emit("stopped", serde_json::json!({}));
    Ok(())
}

/// The last SIGINT/SIGTERM/SIGHUP received, polled by the main loop.
static SIGNAL: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn on_signal(signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    SIGNAL.store(signal, Ordering::SeqCst);
}

fn install_signal_handlers() {
    let handler = on_signal as extern "C" fn(libc::c_int);
    // SIGHUP: the terminal (an SSH session) went away; the run ends as on SIGTERM, with its
    // recordings finalised, instead of dying on the spot.
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores into an atomic, which is async-signal-safe.
        let previous = unsafe { libc::signal(signal, handler as libc::sighandler_t) };
        if signal == libc::SIGHUP && previous == libc::SIG_IGN {
            // Started under `nohup` to outlive the session: a hang-up stays ignored.
            // SAFETY: restores the disposition the process was started with.
            unsafe {
                libc::signal(signal, libc::SIG_IGN);
            }
        }
    }
}

fn source_of<'a>(config: &'a Pipeline, name: &str) -> Option<&'a Source> {
    let mut current = name;
    for _ in 0..=config.transforms.len() {
        if let Some(s) = config.sources.iter().find(|s| s.name == current) {
            return Some(s);
        }
        current = &config.transforms.iter().find(|t| t.name == current)?.input;
    }
    None
}

struct Graph<'p> {
    pipeline: &'p gst::Pipeline,
    streams: BTreeMap<String, Streams>,
    fallback_sources: Vec<(String, gst::Element)>,
    /// Raised when any source's fallbackswitch changes its active pad.
    sources_switched: Arc<AtomicBool>,
    /// The sockets of SRT listener sources, closed once the ingest has stopped.
    srt_listeners: Vec<srt_listener::Listener>,
    events: Events,
    /// Per abrcontroller transform: its ladder (`None`: bitrate only) and rung capsfilter.
    abr_scalers: BTreeMap<String, (Option<Ladder>, gst::Element, Option<VideoFormat>)>,
}

/// The ladder an abrcontroller transform uses: the rungs it lists, or the default ladder
/// without the rungs larger than the source (upscaling spends bits on nothing); `None` for
/// bitrate-only control (`ladder = []`, or a source smaller than every default rung).
fn abr_ladder(ladder: &Option<Vec<String>>, video: Option<VideoFormat>) -> Option<Ladder> {
    match ladder {
        Some(rungs) if rungs.is_empty() => None,
        Some(rungs) => Ladder::parse(&rungs.join(";")).ok(),
        None => {
            let fits = |r: &&gstabr::ladder::Rung| {
                video.is_none_or(|v| r.width <= v.width && r.height <= v.height)
            };
            let rungs: Vec<String> = Ladder::default()
                .rungs()
                .iter()
                .filter(fits)
                .map(ToString::to_string)
                .collect();
            Ladder::parse(&rungs.join(";")).ok()
        }
    }
}

impl Graph<'_> {
    fn add_chain(&self, elements: &[&gst::Element]) -> anyhow::Result<()> {
        self.pipeline.add_many(elements.iter().copied())?;
        gst::Element::link_many(elements.iter().copied())?;
        Ok(())
    }

    fn tee(&self, name: &str) -> anyhow::Result<gst::Element> {
        let tee = make("tee", name)?;
        tee.set_property("allow-not-linked", true);
        Ok(tee)
    }

    /// A queue on a new branch of `tee`, linked to `first`.
    fn branch(&self, tee: &gst::Element, first: &gst::Element) -> anyhow::Result<()> {
        let queue = make("queue", "")?;
        self.pipeline.add(&queue)?;
        tee.link(&queue)?;
        queue.link(first)?;
        Ok(())
    }

    fn video_normaliser(
        &self,
        name: &str,
        source: &Source,
    ) -> anyhow::Result<(gst::Element, gst::Element)> {
        let v = source.video;
        let convert = make("videoconvert", &format!("{name}-videoconvert"))?;
        let scale = make("videoscale", "")?;
        // videorate holds every frame until the next one arrives (a frame of latency); the
        // test source already runs at the configured rate, so it goes without.
        let rate = match source.kind {
            SourceKind::Test { .. } => make("identity", "")?,
            _ => make("videorate", "")?,
        };
        let caps = make("capsfilter", "")?;
        caps.set_property(
            "caps",
            raw_video_caps(v.width, v.height, fraction(v.framerate)),
        );
        self.add_chain(&[&convert, &scale, &rate, &caps])?;
        Ok((convert, caps))
    }

    fn audio_normaliser(
        &self,
        name: &str,
        source: &Source,
    ) -> anyhow::Result<Option<(gst::Element, gst::Element)>> {
        let Some(a) = source.audio else {
            return Ok(None);
        };
        let convert = make("audioconvert", &format!("{name}-audioconvert"))?;
        let resample = make("audioresample", "")?;
        let caps = make("capsfilter", "")?;
        caps.set_property(
            "caps",
            gst::Caps::builder("audio/x-raw")
                .field("format", "S16LE")
                .field("layout", "interleaved")
                .field("rate", a.rate as i32)
                .field("channels", a.channels as i32)
                .build(),
        );
        // Sound that stops (a sender lost before the slate's silence takes over, a file's
        // loop restarting) leaves a hole in the timestamps; muxers write it as a hole and
        // players and editors play the audio through it, drifting by as much. audiorate fills
        // every hole with silence so the audio runs as long as the video.
        let rate = make("audiorate", &format!("{name}-audiorate"))?;
        self.add_chain(&[&convert, &resample, &caps, &rate])?;
        Ok(Some((convert, rate)))
    }

    fn source(&mut self, source: &Source) -> anyhow::Result<Streams> {
        let name = &source.name;
        let (video_in, video_out) = self.video_normaliser(name, source)?;
        let audio = self.audio_normaliser(name, source)?;
        match &source.kind {
            SourceKind::Test {
                pattern,
                clock,
                tone_hz,
                microphone,
            } => {
                let src = make("videotestsrc", &format!("{name}-video"))?;
                src.set_property("is-live", true);
                src.set_property_from_str("pattern", pattern);
                // A moving picture shows a frozen output at a glance.
                src.set_property("horizontal-speed", 4i32);
                self.pipeline.add(&src)?;
                if *clock {
                    let overlay = make("clockoverlay", "")?;
                    overlay.set_property("time-format", "%Y-%m-%d %H:%M:%S UTC");
                    overlay.set_property("shaded-background", true);
                    overlay.set_property("font-desc", "Sans 24");
                    self.pipeline.add(&overlay)?;
                    src.link(&overlay)?;
                    overlay.link(&video_in)?;
                } else {
                    src.link(&video_in)?;
                }
                if let Some((audio_in, _)) = &audio {
                    if let Some(device) = microphone {
                        self.microphone(name, device, audio_in)?;
                    } else {
                        let tone = make("audiotestsrc", &format!("{name}-audio"))?;
                        tone.set_property("is-live", true);
                        tone.set_property("freq", *tone_hz);
                        tone.set_property("volume", 0.2f64);
                        self.pipeline.add(&tone)?;
                        tone.link(audio_in)?;
                    }
                }
            }
            SourceKind::File {
                location,
                looping,
                fallback,
            } => {
                let path = std::fs::canonicalize(location).with_context(|| {
                    format!("source `{name}`: cannot open {}", location.display())
                })?;
                let media = crate::probe::media_file(&path).map_err(|reason| {
                    anyhow!("source `{name}`: {}: {reason}", location.display())
                })?;
                if audio.is_some() && !media.has_audio {
                    // On air with silence, and reported so (`audio: "fallback"`), rather than
                    // a source that looks broken.
                    self.events.emit(
                        "warning",
                        serde_json::json!({
                            "source": name,
                            "message": format!(
                                "{} has no audio track: the source's sound is silence (set \
                                 `audio = false` if that is meant)",
                                location.display()
                            ),
                        }),
                    );
                }
                let uri = glib::filename_to_uri(&path, None).context("file URI")?;
                let src = self.fallback_source(
                    name,
                    &uri,
                    fallback,
                    *looping,
                    &video_in,
                    audio.as_ref().map(|a| &a.0),
                )?;
                self.fallback_sources.push((name.clone(), src));
            }
            SourceKind::Network { uri, fallback } => {
                let src = self.fallback_source(
                    name,
                    uri,
                    fallback,
                    true,
                    &video_in,
                    audio.as_ref().map(|a| &a.0),
                )?;
                self.fallback_sources.push((name.clone(), src));
            }
            SourceKind::V4l2 { device, microphone } => {
                // v4l2src only says "Element failed to change its state" when the node is
                // missing; say which camera is not there before anything starts.
                let is_device = std::fs::metadata(device)
                    .map(|m| std::os::unix::fs::FileTypeExt::is_char_device(&m.file_type()));
                match is_device {
                    Ok(true) => {}
                    Ok(false) => bail!("source `{name}`: V4L2 device {device} is not a device"),
                    Err(err) => bail!(
                        "source `{name}`: V4L2 device {device}: {err} (no camera there; set \
                         `device` to one of /dev/video*)"
                    ),
                }
                let src = make("v4l2src", &format!("{name}-video"))?;
                src.set_property("device", device);
                self.pipeline.add(&src)?;
                src.link(&video_in)?;
                if let Some((audio_in, _)) = &audio {
                    self.microphone(name, microphone, audio_in)?;
                }
            }
        }
        // Stamped once normalised: the capture time every later latency is measured from.
        let stamp = make("latencystamp", &format!("{name}-stamp"))?;
        if matches!(
            source.kind,
            SourceKind::File { .. } | SourceKind::Network { .. }
        ) {
            // Decoded network and file frames are timestamped ahead of the clock by the
            // jitter buffer or the pacing: their capture instant is when they arrive here.
            stamp.set_property_from_str("clock-source", "realtime");
        }
        let video = self.tee(&format!("{name}-video-tee"))?;
        self.add_chain(&[&stamp, &video])?;
        video_out.link(&stamp)?;
        let audio = match audio {
            Some((_, audio_out)) => {
                let tee = self.tee(&format!("{name}-audio-tee"))?;
                self.pipeline.add(&tee)?;
                audio_out.link(&tee)?;
                Some(tee)
            }
            None => None,
        };
        Ok(Streams { video, audio })
    }

    /// A PulseAudio microphone (`device` empty: the server's default source) into `audio_in`.
    fn microphone(&self, name: &str, device: &str, audio_in: &gst::Element) -> anyhow::Result<()> {
        let mic = make("pulsesrc", &format!("{name}-audio"))?;
        if !device.is_empty() {
            mic.set_property("device", device);
        }
        // Slaved to the pipeline's (system) clock like every other source: capture stamps and
        // the outputs' timing stay on one clock.
        mic.set_property("provide-clock", false);
        self.pipeline.add(&mic)?;
        mic.link(audio_in)?;
        Ok(())
    }

    /// fallbacksrc for files and network streams: it decodes, restarts the source when it
    /// stalls or ends, and meanwhile shows the slate (or the backup source) with silence.
    fn fallback_source(
        &mut self,
        name: &str,
        uri: &str,
        fallback: &Fallback,
        restart_on_eos: bool,
        video_in: &gst::Element,
        audio_in: Option<&gst::Element>,
    ) -> anyhow::Result<gst::Element> {
        let src = make("fallbacksrc", &format!("{name}-source"))?;
        src.set_property("uri", uri);
        src.set_property("enable-audio", audio_in.is_some());
        let stall = (fallback.stall_timeout * 1e9) as u64;
        src.set_property("timeout", stall);
        // Restart a stalled source every few seconds (often enough for a caller to come back,
        // seldom enough that a listener is not torn down while one connects), and never give
        // up: outputs must not stop.
        if srt_listener::is_listener(uri) {
            // The socket stays open in a pipeline of its own; fallbacksrc decodes what it
            // hands over, and starts decoding afresh when a sender's stream ends.
            src.set_property("uri", srt_listener::BRIDGE_URI);
            src.set_property("restart-timeout", LISTENER_NEVER_RESTARTS.nseconds());
            let stall = Duration::from_secs_f64(fallback.stall_timeout);
            let listener = srt_listener::open(name, uri, stall, &src, self.events.clone())?;
            self.srt_listeners.push(listener);
        } else {
            src.set_property("restart-timeout", RESTART_TIMEOUT.nseconds());
        }
        src.set_property("retry-timeout", u64::MAX - 1);
        src.set_property("restart-on-eos", restart_on_eos);
        if restart_on_eos && let Ok((path, _)) = glib::filename_from_uri(uri) {
            loop_with_segment_seeks(&src, &path);
        }
        if uri.starts_with("rtmp") {
            src.set_property("buffer-duration", RTMP_BUFFER.nseconds() as i64);
        }
        src.set_property("immediate-fallback", true);
        // A source going on or off air is reported as it happens, not at the next status tick
        // (up to a second later).
        let switched = self.sources_switched.clone();
        src.connect("deep-element-added", false, move |args| {
            let element = args.get(2).and_then(|v| v.get::<gst::Element>().ok())?;
            if element
                .factory()
                .is_some_and(|f| f.name() == "fallbackswitch")
            {
                let switched = switched.clone();
                element.connect_notify(Some("active-pad"), move |_, _| {
                    switched.store(true, Ordering::SeqCst);
                });
            }
            None
        });
        let fallback_uri = match (&fallback.backup_uri, &fallback.slate) {
            (Some(uri), _) => Some(uri.clone()),
            (None, Some(path)) => {
                let path = std::fs::canonicalize(path).with_context(|| {
                    format!("source `{name}`: cannot open slate {}", path.display())
                })?;
                Some(
                    glib::filename_to_uri(&path, None)
                        .context("slate URI")?
                        .to_string(),
                )
            }
            (None, None) => None,
        };
        if let Some(uri) = fallback_uri {
            src.set_property("fallback-uri", uri);
        }
        self.pipeline.add(&src)?;
        retimestamp_on_arrival(video_in, false);
        if let Some(a) = audio_in {
            retimestamp_on_arrival(a, true);
        }
        let mut targets = vec![("video", video_in.clone())];
        if let Some(a) = audio_in {
            targets.push(("audio", a.clone()));
        }
        src.connect_pad_added(move |_, pad| {
            for (prefix, target) in &targets {
                let Some(sink) = target.static_pad("sink") else {
                    continue;
                };
                if pad.name().starts_with(prefix) && !sink.is_linked() && pad.link(&sink).is_err() {
                    gst::warning!(
                        gst::CAT_DEFAULT,
                        "could not link {} to the normaliser",
                        pad.name()
                    );
                }
            }
        });
        Ok(src)
    }

    fn transform(
        &mut self,
        name: &str,
        kind: &TransformKind,
        input: &Streams,
        video: Option<VideoFormat>,
    ) -> anyhow::Result<Streams> {
        let (media, element): (Media, gst::Element) = match kind {
            TransformKind::Latencystamp { overwrite } => {
                let stamp = make("latencystamp", name)?;
                stamp.set_property("overwrite", *overwrite);
                (Media::Video, stamp)
            }
            TransformKind::Offeroverlay { schedule } => {
                let overlay = make("offeroverlay", name)?;
                if let Some(schedule) = schedule {
                    overlay.set_property("schedule", schedule.to_string_lossy().as_ref());
                }
                (Media::Video, overlay)
            }
            TransformKind::Abrcontroller { ladder, .. } => {
                // The scaler half: the rung's size (and framerate, if a rung sets one) through a
                // capsfilter the abrcontroller after the encoder rewrites.
                let ladder = abr_ladder(ladder, video);
                let bin = gst::Bin::with_name(&format!("{name}-scaler"));
                let scale = make("videoscale", "")?;
                let caps = make("capsfilter", &format!("{name}-rung"))?;
                let mut chain = vec![scale];
                let framerates = ladder.as_ref().is_some_and(|l| {
                    l.rungs().iter().any(|r| {
                        r.framerate.is_some_and(|(n, d)| {
                            video.is_none_or(|v| {
                                u64::from(n) * u64::from(v.framerate.denominator)
                                    != u64::from(v.framerate.numerator) * u64::from(d)
                            })
                        })
                    })
                });
                if framerates {
                    // Only then: videorate holds each frame until the next (a frame of latency).
                    chain.push(make("videorate", "")?);
                }
                chain.push(caps.clone());
                bin.add_many(&chain)?;
                gst::Element::link_many(&chain)?;
                let sink = chain[0].static_pad("sink").context("videoscale sink")?;
                let src = caps.static_pad("src").context("capsfilter src")?;
                bin.add_pad(&gst::GhostPad::with_target(&sink)?)?;
                bin.add_pad(&gst::GhostPad::with_target(&src)?)?;
                self.abr_scalers
                    .insert(name.to_string(), (ladder, caps, video));
                (Media::Video, bin.upcast())
            }
            TransformKind::Gst { media, pipeline } => {
                let bin = crate::fragment::build(pipeline)
                    .map_err(|(message, _)| anyhow!("transform `{name}`: {message}"))?;
                bin.set_property("name", name);
                (*media, bin.upcast())
            }
        };
        let tee = self.tee(&format!("{name}-tee"))?;
        self.add_chain(&[&element, &tee])?;
        let upstream = match media {
            Media::Video => &input.video,
            Media::Audio => input
                .audio
                .as_ref()
                .context("transform on audio without audio")?,
        };
        self.branch(upstream, &element)?;
        Ok(match media {
            Media::Video => Streams {
                video: tee,
                audio: input.audio.clone(),
            },
            Media::Audio => Streams {
                video: input.video.clone(),
                audio: Some(tee),
            },
        })
    }

    fn encoder(
        &self,
        name: &str,
        kind: &EncoderKind,
        input: &Streams,
        framerate: crate::config::Framerate,
        counter: Arc<Counter>,
        role: EncoderRole<'_>,
    ) -> anyhow::Result<(gst::Element, Option<gst::Element>)> {
        let (steering, rung) = match role {
            EncoderRole::Single => (None, None),
            EncoderRole::Steered(t) => (Some(t), None),
            EncoderRole::Rung(r) => (None, Some(r)),
        };
        let tee = self.tee(&format!("{name}-tee"))?;
        let mut abr = None;
        // A rung of a ladder: its own picture size (and frame rate) off the raw video.
        let mut scaler = Vec::new();
        let mut framerate = framerate;
        if let Some(rung) = rung {
            let scale = make("videoscale", &format!("{name}-scale"))?;
            scaler.push(scale);
            if let Some(rate) = rung.framerate
                && rate != framerate
            {
                scaler.push(make("videorate", "")?);
                framerate = rate;
            }
            let caps = make("capsfilter", "")?;
            caps.set_property(
                "caps",
                raw_video_caps(rung.width, rung.height, fraction(framerate)),
            );
            scaler.push(caps);
        }
        let chain: Vec<gst::Element> = match kind {
            EncoderKind::H264 {
                preset,
                bitrate,
                keyframe_interval,
            } => {
                let enc = make("x264enc", name)?;
                enc.set_property_from_str("tune", "zerolatency");
                let (speed, profile) = match preset {
                    H264Preset::Zerolatency => ("ultrafast", "constrained-baseline"),
                    H264Preset::Balanced => ("veryfast", "main"),
                };
                enc.set_property_from_str("speed-preset", speed);
                enc.set_property("bitrate", *bitrate);
                let gop = ((framerate.fps() * keyframe_interval).round() as u32).max(1);
                // A rung's key frames come from its ladder's schedule (crate::rungs), the
                // same frames on every rung; x264's own count is only a safety net.
                enc.set_property("key-int-max", if rung.is_some() { gop * 2 } else { gop });
                // Without this x264 adds IDRs on scene cuts and HLS segments come out uneven.
                enc.set_property("option-string", "scenecut=0");
                enc.set_property("bframes", 0u32);
                let profile_caps = make("capsfilter", "")?;
                profile_caps.set_property(
                    "caps",
                    gst::Caps::builder("video/x-h264")
                        .field("profile", profile)
                        .build(),
                );
                let parse = make("h264parse", "")?;
                parse.set_property("config-interval", -1i32);
                let au = make("capsfilter", "")?;
                au.set_property(
                    "caps",
                    gst::Caps::builder("video/x-h264")
                        .field("stream-format", "byte-stream")
                        .field("alignment", "au")
                        .build(),
                );
                // The capture stamp goes into the bitstream as SEI, for players and other tools.
                let sei = make("latencystamp", &format!("{name}-sei"))?;
                let mut chain = std::mem::take(&mut scaler);
                chain.push(enc.clone());
                if let Some(t) = steering
                    && let TransformKind::Abrcontroller {
                        min_bitrate,
                        max_bitrate,
                        ..
                    } = &t.kind
                {
                    let controller = make("abrcontroller", &t.name)?;
                    let max_bps = u64::from(max_bitrate.unwrap_or(*bitrate)) * 1000;
                    let start_bps = max_bps.min(u64::from(*bitrate) * 1000);
                    controller.set_property("encoder", &enc);
                    controller.set_property("min-bitrate", min_bitrate * 1000);
                    controller.set_property("max-bitrate", max_bps as u32);
                    controller.set_property("start-bitrate", start_bps as u32);
                    enc.set_property("bitrate", (start_bps / 1000) as u32);
                    if let Some((Some(ladder), caps, video)) = self.abr_scalers.get(&t.name) {
                        controller.set_property("ladder", ladder.to_string());
                        controller.set_property("capsfilter", caps);
                        // Start on the start bitrate's rung: no renegotiation on the first tick.
                        let rung = ladder.rungs()[ladder.rung_for(start_bps)];
                        let framerate = rung
                            .framerate
                            .map(|(n, d)| gst::Fraction::new(n as i32, d as i32))
                            .unwrap_or_else(|| fraction(video.map_or(framerate, |v| v.framerate)));
                        caps.set_property(
                            "caps",
                            raw_video_caps(rung.width, rung.height, framerate),
                        );
                    }
                    chain.push(controller.clone());
                    abr = Some(controller);
                }
                chain.extend([profile_caps, parse, au, sei]);
                // The encode latency is the ladder's top rung's (the other rungs' differ
                // by their scaling only).
                // (Names from the file never hold '@': only a lower rung's does.)
                if !name.contains('@') {
                    chain.push(make("latencymeter", &format!("meter-{name}"))?);
                }
                chain
            }
            EncoderKind::Vp8 {
                bitrate,
                keyframe_interval,
            } => {
                let enc = make("vp8enc", name)?;
                // Real time: encode each frame within its frame time (deadline 1 µs means
                // "fastest"), no look-ahead, constant bitrate, and partitions a receiver can
                // decode independently when packets are lost.
                enc.set_property("deadline", 1i64);
                enc.set_property("cpu-used", 8i32);
                enc.set_property("lag-in-frames", 0i32);
                enc.set_property_from_str("end-usage", "cbr");
                enc.set_property_from_str("error-resilient", "default+partitions");
                enc.set_property("threads", 2i32);
                let gop = ((framerate.fps() * keyframe_interval).round() as i32).max(1);
                enc.set_property("keyframe-max-dist", gop);
                // The encoder table knows the unit (vp8enc: bit/s in `target-bitrate`).
                hybridlive_encoders::Encoder::new(&enc)?
                    .set_bitrate_bps(u64::from(*bitrate) * 1000);
                vec![enc]
            }
            EncoderKind::Aac { bitrate } => {
                let convert = make("audioconvert", "")?;
                let enc = make("avenc_aac", name)?;
                enc.set_property("bitrate", (*bitrate * 1000) as i32);
                vec![convert, enc, make("aacparse", "")?]
            }
            EncoderKind::Opus { bitrate } => {
                let convert = make("audioconvert", "")?;
                let enc = make("opusenc", name)?;
                enc.set_property("bitrate", (*bitrate * 1000) as i32);
                vec![convert, enc]
            }
        };
        let mut all: Vec<&gst::Element> = chain.iter().collect();
        all.push(&tee);
        self.add_chain(&all)?;
        let upstream = match kind.media() {
            Media::Video => &input.video,
            Media::Audio => input
                .audio
                .as_ref()
                .context("audio encoder without audio")?,
        };
        self.branch(upstream, &chain[0])?;
        if let Some(pad) = tee.static_pad("sink") {
            pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                if let Some(buffer) = info.buffer() {
                    counter
                        .bytes
                        .fetch_add(buffer.size() as u64, Ordering::Relaxed);
                    counter.buffers.fetch_add(1, Ordering::Relaxed);
                }
                gst::PadProbeReturn::Ok
            });
        }
        Ok((tee, abr))
    }
}

/// Loops the file `path` of fallbacksrc `src` in place: a segment seek back to the start
/// whenever the demuxer finishes its segment, instead of an EOS on which fallbacksrc tears the
/// decoder down and builds it again a second later (the slate, a hole and an A/V offset at
/// every seam). The first buffer out of the decoder starts the segment mode. A file that was
/// replaced or truncated since the decoder opened it is read again instead (an error from the
/// decoder makes fallbacksrc restart it: the new version plays, or the slate covers a file
/// that is no longer playable); a file that cannot seek still loops by restarting.
fn loop_with_segment_seeks(src: &gst::Element, path: &std::path::Path) {
    let path = path.to_path_buf();
    src.connect("deep-element-added", false, move |args| {
        let element = args.get(2).and_then(|v| v.get::<gst::Element>().ok())?;
        // fallbacksrc's name for the main source's decoder (the slate has its own).
        if element.name() != "dbin-main" {
            return None;
        }
        let opened = file_identity(&path);
        let started = Arc::new(AtomicBool::new(false));
        // Every stream ends the segment with the seek's seqnum: one seek per loop.
        let looped = Arc::new(Mutex::new(None::<gst::Seqnum>));
        let path = path.clone();
        element.connect_pad_added(move |decoder, pad| {
            let (started, looped, path) = (started.clone(), looped.clone(), path.clone());
            let decoder = decoder.downgrade();
            pad.add_probe(
                gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM,
                move |pad, info| {
                    let seek_now = match &info.data {
                        Some(gst::PadProbeData::Buffer(_)) => !started.swap(true, Ordering::SeqCst),
                        Some(gst::PadProbeData::Event(e))
                            if e.type_() == gst::EventType::SegmentDone =>
                        {
                            looped.lock().unwrap().replace(e.seqnum()) != Some(e.seqnum())
                        }
                        _ => false,
                    };
                    if !seek_now {
                        return gst::PadProbeReturn::Ok;
                    }
                    if file_identity(&path) != opened {
                        if let Some(decoder) = decoder.upgrade() {
                            decoder.post_error_message(gst::error_msg!(
                                gst::ResourceError::Read,
                                ["{} changed while playing: reading it again", path.display()]
                            ));
                        }
                        return gst::PadProbeReturn::Ok;
                    }
                    // Not from the streaming thread: the demuxer takes its stream lock to
                    // seek.
                    let pad = pad.clone();
                    std::thread::spawn(move || {
                        let seek = gst::event::Seek::new(
                            1.0,
                            gst::SeekFlags::SEGMENT,
                            gst::SeekType::Set,
                            gst::ClockTime::ZERO,
                            gst::SeekType::None,
                            gst::ClockTime::NONE,
                        );
                        if !pad.send_event(seek) {
                            gst::debug!(
                                gst::CAT_DEFAULT,
                                "segment seek refused: the file loops by restarting"
                            );
                        }
                    });
                    gst::PadProbeReturn::Ok
                },
            );
        });
        None
    });
}

/// Which file is at `path`, and how big and how new it is: `None` when there is none.
fn file_identity(path: &std::path::Path) -> Option<(u64, u64, u64, Option<std::time::SystemTime>)> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.len(), m.modified().ok()))
}

/// How late audio may arrive and still be laid right after the previous buffer. Stamped at
/// its arrival instead, each late buffer would leave a hole of a few milliseconds, too short
/// for audiorate (40 ms tolerance) to fill, and on a loaded machine they add up. Above
/// audiorate's tolerance, so that a stall's hole is filled.
const AUDIO_JITTER: gst::ClockTime = gst::ClockTime::from_mseconds(60);

/// Gives every buffer entering `element` the running time at which it arrives, in one plain
/// time segment. A restarted or switched source starts its timestamps anew; without this,
/// videorate would fill the jump with a burst of duplicated frames and muxers would see time
/// go backwards.
fn retimestamp_on_arrival(element: &gst::Element, continuous: bool) {
    let Some(pad) = element.static_pad("sink") else {
        return;
    };
    let last = Mutex::new(None::<gst::ClockTime>);
    let segment_sent = AtomicBool::new(false);
    pad.add_probe(
        gst::PadProbeType::BUFFER
            | gst::PadProbeType::BUFFER_LIST
            | gst::PadProbeType::EVENT_DOWNSTREAM,
        move |pad, info| {
            match &mut info.data {
                Some(gst::PadProbeData::Event(event))
                    if event.type_() == gst::EventType::Segment =>
                {
                    // One segment for the whole run: a new one (the source restarted or the
                    // slate took over) would make videorate start counting from its start
                    // again, and time would go backwards downstream.
                    // (Replaced rather than dropped: dropping an event from a probe trips a
                    // GStreamer-CRITICAL in the 0.25 bindings on 1.22.)
                    if segment_sent.swap(true, Ordering::SeqCst) {
                        let s = gst::Structure::new_empty("hybridlive-segment-suppressed");
                        *event = gst::event::CustomDownstream::new(s);
                        return gst::PadProbeReturn::Ok;
                    }
                    let segment = gst::FormattedSegment::<gst::ClockTime>::new();
                    *event = gst::event::Segment::new(&segment);
                }
                Some(gst::PadProbeData::Buffer(buffer)) => {
                    if let Some(now) = running_time_now(pad) {
                        stamp_arrival(&last, buffer.make_mut(), now, continuous);
                    }
                }
                Some(gst::PadProbeData::BufferList(list)) => {
                    if let Some(now) = running_time_now(pad) {
                        list.make_mut().foreach_mut(|mut buffer, _| {
                            stamp_arrival(&last, buffer.make_mut(), now, continuous);
                            std::ops::ControlFlow::Continue(Some(buffer))
                        });
                    }
                }
                _ => {}
            }
            gst::PadProbeReturn::Ok
        },
    );
}

fn running_time_now(pad: &gst::Pad) -> Option<gst::ClockTime> {
    let element = pad.parent_element()?;
    Some(element.clock()?.time().saturating_sub(element.base_time()?))
}

/// `last` holds where the previous buffer ended. Audio (`continuous`) is laid end to end so a
/// burst neither overlaps nor leaves gaps, and a buffer a little late (scheduling jitter on a
/// loaded machine, up to [`AUDIO_JITTER`]) still follows on; only a real stall moves it to
/// its arrival time, leaving a hole that audiorate fills with silence. Video only never goes
/// backwards, and videorate evens it out.
fn stamp_arrival(
    last: &Mutex<Option<gst::ClockTime>>,
    buffer: &mut gst::BufferRef,
    now: gst::ClockTime,
    continuous: bool,
) {
    let mut last = last.lock().unwrap();
    let pts = match *last {
        Some(end) if continuous && now <= end + AUDIO_JITTER => end,
        Some(end) => now.max(end),
        None => now,
    };
    let length = match buffer.duration() {
        Some(d) if continuous => d,
        _ => gst::ClockTime::from_nseconds(1),
    };
    *last = Some(pts + length);
    buffer.set_pts(pts);
    buffer.set_dts(gst::ClockTime::NONE);
}

/// Whether fallbacksrc's switch for `media` (`"video"`, `"audio"`) is on its fallback (slate,
/// silence or backup) input; `None` when it has no such stream.
fn on_fallback(src: &gst::Element, media: &str) -> Option<bool> {
    let bin = src.downcast_ref::<gst::Bin>()?;
    let carries = |switch: &gst::Element| {
        switch
            .static_pad("src")
            .and_then(|pad| pad.current_caps().or_else(|| Some(pad.query_caps(None))))
            .and_then(|caps| caps.structure(0).map(|s| s.name().starts_with(media)))
            .unwrap_or(false)
    };
    bin.iterate_recurse()
        .into_iter()
        .flatten()
        .filter(|e| e.factory().is_some_and(|f| f.name() == "fallbackswitch"))
        .filter(|switch| carries(switch))
        .map(|switch| {
            switch
                .property::<Option<gst::Pad>>("active-pad")
                .is_some_and(|pad| pad.property::<u32>("priority") != 0)
        })
        .reduce(|a, b| a || b)
}

/// tee → leaky queue → appsink whose samples go to the output's appsrc.
fn bridge(
    ingest: &gst::Pipeline,
    tee: &gst::Element,
    output: &Arc<OutputRunner>,
    encoder: &str,
) -> anyhow::Result<gst::Element> {
    let queue = make("queue", "")?;
    queue.set_property_from_str("leaky", "downstream");
    queue.set_property("max-size-time", 2 * gst::ClockTime::SECOND.nseconds());
    queue.set_property("max-size-buffers", 0u32);
    queue.set_property("max-size-bytes", 0u32);
    let appsink = gst_app::AppSink::builder()
        .name(format!("to-{}-{encoder}", output.name()))
        .sync(false)
        .build();
    appsink.set_property("async", false);
    let sample_output = Arc::downgrade(output);
    let eos_output = Arc::downgrade(output);
    let encoder_name = encoder.to_string();
    appsink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                if let Some(o) = sample_output.upgrade() {
                    o.push(&encoder_name, sample);
                }
                Ok(gst::FlowSuccess::Ok)
            })
            .eos(move |_| {
                if let Some(o) = eos_output.upgrade() {
                    o.end_of_input();
                }
            })
            .build(),
    );
    ingest.add_many([&queue, appsink.upcast_ref()])?;
    tee.link(&queue)?;
    queue.link(&appsink)?;
    Ok(appsink.upcast())
}

/// What an encoder in the ingest is for.
#[derive(Clone, Copy)]
enum EncoderRole<'a> {
    /// One encode, at its configured bitrate.
    Single,
    /// One encode whose bitrate (and picture, through its scaler) this abrcontroller steers.
    Steered(&'a crate::config::Transform),
    /// One rung of a ladder encoder (never steered: `validate` refuses it).
    Rung(&'a RungSpec),
}

/// The raw video every source is normalised to (and a rung is scaled to): I420, square pixels.
/// A frame rate as caps want it.
fn fraction(rate: crate::config::Framerate) -> gst::Fraction {
    gst::Fraction::new(
        i32::try_from(rate.numerator).unwrap_or(i32::MAX),
        i32::try_from(rate.denominator).unwrap_or(1),
    )
}

fn raw_video_caps(width: u32, height: u32, framerate: gst::Fraction) -> gst::Caps {
    gst::Caps::builder("video/x-raw")
        .field("format", "I420")
        .field("width", width as i32)
        .field("height", height as i32)
        .field("pixel-aspect-ratio", gst::Fraction::new(1, 1))
        .field("framerate", framerate)
        .build()
}

#[cfg(test)]
mod tests {
    use super::{Duration, encoder_rates, source_endpoints, viewer_url};

    #[test]
    fn source_secrets_are_masked_in_ingest_errors() {
        let pipeline = crate::config::parse(
            "[sources.cam]\ntype = \"rtmp\"\nuri = \"rtmp://127.0.0.1/live/sk_cam_1\"\n\
             backup_uri = \"srt://127.0.0.1:9100?mode=caller&passphrase=backup-secret\"\n",
            std::path::Path::new(""),
            &crate::output::Registry,
        )
        .expect("a valid file");
        let urls = source_endpoints(&pipeline.sources);
        let text = "Could not connect to rtmp://127.0.0.1/live/sk_cam_1 (backup \
                    srt://127.0.0.1:9100?mode=caller&passphrase=backup-secret)";
        let masked = urls.iter().fold(text.to_string(), |t, u| u.redact(&t));
        assert!(
            !masked.contains("sk_cam_1") && !masked.contains("backup-secret"),
            "{masked}"
        );
        assert!(masked.contains("rtmp://127.0.0.1/live/****"), "{masked}");
    }

    #[test]
    fn encoder_rates_wait_for_an_interval_and_give_frames_for_video_only() {
        let start = std::time::Instant::now();
        // The first tick comes after the ingest ran a while: no rate from that.
        assert_eq!(encoder_rates(None, (137_000, 43, start), true), None);
        let later = start + Duration::from_secs(2);
        let (kbps, fps) =
            encoder_rates(Some((137_000, 43, start)), (337_000, 103, later), true).unwrap();
        assert!((kbps - 800.0).abs() < 1e-9, "{kbps}");
        assert_eq!(fps, Some(30.0));
        let (_, fps) = encoder_rates(Some((0, 0, start)), (32_000, 94, later), false).unwrap();
        assert_eq!(fps, None, "audio buffers are not frames");
    }

    #[test]
    fn a_server_on_every_interface_is_shown_at_loopback() {
        assert_eq!(
            viewer_url("0.0.0.0:8080".parse().unwrap(), false),
            "http://127.0.0.1:8080/"
        );
        assert_eq!(
            viewer_url("[::]:8080".parse().unwrap(), false),
            "http://[::1]:8080/"
        );
        assert_eq!(
            viewer_url("192.0.2.7:80".parse().unwrap(), false),
            "http://192.0.2.7:80/"
        );
        assert_eq!(
            viewer_url("0.0.0.0:8443".parse().unwrap(), true),
            "https://127.0.0.1:8443/"
        );
    }
}
