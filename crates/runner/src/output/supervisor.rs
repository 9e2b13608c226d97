//! What every output has in common, whatever its kind: start and stop, restarts with
//! back-off, generations, its state in the shared status, the egress link checks, the
//! teardown, and the appsrc side of each pipeline (appsrc → queue → parser → meter per input).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use gst::prelude::*;

use super::{Context, Input, InputLink, Kind, Take, kind_for, make};
use crate::capture::capture_utc_ns;
use crate::config::{EncoderKind, Output};
use crate::events::Events;
use crate::llhls::LlHls;
use crate::state::{self, Marker, OutputStatus, Shared};

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// An output that ran this long before failing starts again after the first back-off.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);
/// Media an output may lag behind before its oldest buffers are dropped.
const MAX_QUEUED: gst::ClockTime = gst::ClockTime::from_seconds(2);
/// WHIP/Janus egress: an SFU that sent no RTCP for this long is gone. Receivers report every
/// 5 s at most (RTCP's minimum interval, randomised to 2.5–7.5 s), so this misses none.
const EGRESS_PEER_TIMEOUT: Duration = Duration::from_secs(12);
/// WHIP/Janus egress: a publisher not connected this long after its start has failed.
const EGRESS_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a failed output's endpoint is given to accept a TCP connection when the failure
/// is described (refused comes at once; a host that drops packets takes this long).
const ENDPOINT_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// A running output: its kind and, while it runs, its pipeline.
pub struct OutputRunner {
    name: String,
    kind: Box<dyn Kind>,
    inputs: Vec<Input>,
    shared: Arc<Shared>,
    /// The ingest's clock and base time, set once the ingest plays.
    timing: Mutex<Option<(gst::Clock, gst::ClockTime)>>,
    /// appsinks on the ingest side; a start asks them for a keyframe.
    keyframe_requesters: Mutex<Vec<(String, gst::Element)>>,
    inner: Mutex<Inner>,
    /// The abrcontroller (in the ingest) that steers this output's encoder from its feedback.
    abr: Mutex<Option<gst::Element>>,
    /// Where the run's events go.
    events: Events,
}

#[derive(Default)]
struct Inner {
    pipeline: Option<gst::Pipeline>,
    watch: Option<gst::bus::BusWatchGuard>,
    appsrcs: BTreeMap<String, gst_app::AppSrc>,
    waiting_for_keyframe: bool,
    /// Set while `start` builds a pipeline outside the lock.
    building: bool,
    /// Set while EOS travels through the pipeline; its EOS message then means "done".
    stopping: bool,
    /// A start asked for while the previous pipeline was still finishing (`stopping`): it
    /// runs once that one is done, since the new take must not race the old one's last writes.
    start_queued: bool,
    /// Cleared by a stop request (recordings) or shutdown: no restart then. A stop arriving
    /// while a start builds its pipeline clears it too, and that pipeline is never played.
    wanted: bool,
    backoff: Duration,
    started_at: Option<Instant>,
    generation: u64,
    /// Record outputs: the take the pipeline writes. Set and taken together with `pipeline`,
    /// so that a new take started meanwhile is never finished in the old one's place.
    take: Option<Arc<dyn Take>>,
    first_pts: Option<gst::ClockTime>,
    last_pts: Option<gst::ClockTime>,
}

impl Inner {
    /// Seconds of video the running take holds so far.
    fn recorded_s(&self) -> f64 {
        match (self.first_pts, self.last_pts) {
            (Some(a), Some(b)) => b.saturating_sub(a).seconds_f64(),
            _ => 0.0,
        }
    }
}

/// A built output pipeline, its appsrcs by encoder, and the take of a record output.
type Built = (
    gst::Pipeline,
    BTreeMap<String, gst_app::AppSrc>,
    Option<Arc<dyn Take>>,
);

/// What [`OutputRunner::start`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// A pipeline is being built and started.
    Started,
    /// The previous pipeline is still finishing: this one starts once it is done.
    Queued,
    /// It was already running or starting.
    AlreadyRunning,
}

/// Claims the next start under the `inner` lock: no second build runs meanwhile, and a stop
/// that comes while it builds is seen when the build ends. Returns its generation.
fn claim_start(inner: &mut Inner) -> u64 {
    inner.building = true;
    inner.wanted = true;
    inner.generation += 1;
    inner.generation
}

impl OutputRunner {
    /// Prepares an output; nothing runs until [`OutputRunner::start`].
    pub fn new(
        config: Output,
        inputs: Vec<Input>,
        shared: Arc<Shared>,
        events: Events,
    ) -> anyhow::Result<Arc<Self>> {
        let kind = kind_for(
            &config,
            &Context {
                name: &config.name,
                shared: &shared,
                events: &events,
            },
        )?;
        let type_name = config.kind.type_name();
        shared.with(|s| {
            s.outputs.insert(
                config.name.clone(),
                OutputStatus {
                    kind: type_name,
                    state: "stopped".into(),
                    restarts: 0,
                    retry_in_s: None,
                    last_error: None,
                    recording: None,
                },
            )
        });
        Ok(Arc::new(OutputRunner {
            name: config.name,
            kind,
            inputs,
            shared,
            timing: Mutex::new(None),
            keyframe_requesters: Mutex::new(Vec::new()),
            inner: Mutex::new(Inner {
                backoff: FIRST_BACKOFF,
                ..Inner::default()
            }),
            events,
            abr: Mutex::new(None),
        }))
    }

    /// Shares the ingest's clock and base time; call before [`OutputRunner::start`].
    pub fn set_timing(&self, clock: gst::Clock, base_time: gst::ClockTime) {
        *self.timing.lock().unwrap() = Some((clock, base_time));
    }

    /// The output's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where HLS playlists and segments are written (HLS outputs).
    pub fn hls_dir(&self) -> Option<&Path> {
        self.kind.hls_dir()
    }

    /// Segments the live playlist lists (HLS outputs).
    pub fn hls_playlist_length(&self) -> Option<usize> {
        self.kind.hls_playlist_length()
    }

    /// The folder [`OutputRunner::cleanup`] removes, if the runner made one.
    pub fn temporary_dir(&self) -> Option<&Path> {
        self.kind.temporary_dir()
    }

    /// Removes the temporary folder, once the output has stopped.
    pub fn cleanup(&self) {
        if let Some(dir) = self.kind.temporary_dir() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    /// Whether the output starts with the runner.
    pub fn autostart(&self) -> bool {
        self.kind.autostart()
    }

    /// Whether this is a recording output.
    pub fn is_record(&self) -> bool {
        self.kind.is_record()
    }

    /// The Low-Latency HLS store of a `low_latency` HLS output.
    pub fn ll_hls(&self) -> Option<Arc<LlHls>> {
        self.kind.ll_hls()
    }

    /// The WHEP sessions, while a WebRTC output runs.
    pub fn whep(&self) -> Option<hybridlive_webrtc::WhepOutput> {
        self.kind.whep()
    }

    /// Lets `abr` (an abrcontroller in the ingest) follow this output's link: the srtsink's
    /// statistics, the backlog queue before the RTMP sink, or a WebRTC viewer's webrtcbin,
    /// re-bound on every (re)start of the output.
    pub fn set_abr(&self, abr: gst::Element) {
        *self.abr.lock().unwrap() = Some(abr);
    }

    /// The abrcontroller steering this output, if any.
    pub fn abr(&self) -> Option<gst::Element> {
        self.abr.lock().unwrap().clone()
    }

    /// Points the abrcontroller at the feedback elements of `pipeline`, or at nothing while
    /// the output is down (its statistics would be those of a dead connection).
    fn bind_feedback(&self, pipeline: Option<&gst::Pipeline>) {
        if let Some(abr) = self.abr() {
            self.kind.bind_feedback(&abr, pipeline);
        }
    }

    /// Lets the abrcontroller follow feedback that moves while the output runs (WebRTC: the
    /// viewer with the most recent session). Called every status tick.
    pub fn follow_viewers(&self) {
        let Some(abr) = self.abr() else {
            return;
        };
        let pipeline = self.inner.lock().unwrap().pipeline.clone();
        self.kind.follow_feedback(&abr, pipeline);
    }

    /// WHIP/Janus outputs: notices the publisher's link coming up (state `connected`, an
    /// `output-connected` event) and going away, which gst-plugins-rs's sinks never report
    /// as an error: then the output fails and restarts with back-off like any other. Called
    /// every status tick.
    pub fn check_egress(self: &Arc<Self>) {
        let Some(health) = self.kind.egress() else {
            return;
        };
        let (generation, started_at) = {
            let inner = self.inner.lock().unwrap();
            if inner.stopping || inner.pipeline.is_none() {
                return;
            }
            (inner.generation, inner.started_at)
        };
        let problem = health.lost(EGRESS_PEER_TIMEOUT).or_else(|| {
            (!health.connected()
                && started_at.is_some_and(|t| t.elapsed() > EGRESS_CONNECT_TIMEOUT))
            .then(|| {
                format!(
                    "not connected to the SFU {} s after the start",
                    EGRESS_CONNECT_TIMEOUT.as_secs()
                )
            })
        });
        if let Some(problem) = problem {
            self.failed(generation, problem);
            return;
        }
        if let Some(abr) = self.abr() {
            // The SFU's receiver reports on the publisher's session steer the encoder.
            let webrtcbin = health.webrtcbin();
            if abr.property::<Option<gst::Element>>("webrtcbin") != webrtcbin {
                abr.set_property("webrtcbin", webrtcbin);
            }
        }
        if health.connected() {
            let newly = self.shared.with(|s| {
                s.outputs
                    .get_mut(&self.name)
                    .filter(|o| o.state == "running")
                    .map(|o| o.state = "connected".into())
                    .is_some()
            });
            if newly {
                self.events
                    .emit("output-connected", serde_json::json!({"output": self.name}));
            }
        }
    }

    /// Remembers the ingest appsink of video encoder `encoder`, which can be asked for a
    /// keyframe.
    pub fn add_keyframe_requester(&self, encoder: &str, appsink: gst::Element) {
        self.keyframe_requesters
            .lock()
            .unwrap()
            .push((encoder.to_string(), appsink));
    }

    /// Called from the ingest appsink: forwards one encoded sample to the output's appsrc.
    pub fn push(&self, encoder: &str, sample: gst::Sample) {
        let Some(buffer) = sample.buffer() else {
            return;
        };
        let is_video = self
            .inputs
            .iter()
            .any(|i| i.encoder == encoder && i.kind.media() == crate::config::Media::Video);
        // appsrc starts a fresh segment at 0: carry running times, not the encoder's own
        // timestamps (x264enc, for one, starts its segment 1000 hours in).
        let mut buffer = buffer.copy();
        if let Some(segment) = sample
            .segment()
            .and_then(|s| s.downcast_ref::<gst::ClockTime>())
        {
            let b = buffer.make_mut();
            let pts = b.pts().and_then(|t| segment.to_running_time(t));
            let dts = b.dts().and_then(|t| segment.to_running_time(t)).or(pts);
            b.set_pts(pts);
            b.set_dts(dts);
        }
        let (appsrc, take_started) = {
            let mut inner = self.inner.lock().unwrap();
            // Until the pipeline plays, its appsrcs drop what they get (flushing): a key frame
            // taken as the take's first then would be lost, and the take begin without one.
            if inner.stopping || inner.building {
                return;
            }
            let Some(appsrc) = inner.appsrcs.get(encoder).cloned() else {
                return;
            };
            let mut started = None;
            if inner.waiting_for_keyframe {
                // Muxers and players need the stream to begin with a keyframe; audio waits too
                // so that both start together.
                if !is_video || buffer.flags().contains(gst::BufferFlags::DELTA_UNIT) {
                    return;
                }
                inner.waiting_for_keyframe = false;
                let utc_ns = capture_utc_ns(&buffer).unwrap_or_else(state::utc_now_ns);
                started = inner.take.clone().map(|take| (take, utc_ns));
            }
            if is_video && let Some(pts) = buffer.pts() {
                inner.first_pts.get_or_insert(pts);
                inner.last_pts = Some(pts);
            }
            (appsrc, started)
        };
        if let Some((take, utc_ns)) = take_started {
            take.begin(utc_ns);
        }
        if let Some(caps) = sample.caps()
            && appsrc.caps().is_none_or(|current| current.as_ref() != caps)
        {
            appsrc.set_caps(Some(&caps.to_owned()));
        }
        let _ = appsrc.push_buffer(buffer);
    }

    /// Called from the ingest appsink at EOS.
    pub fn end_of_input(&self) {
        self.stop();
    }

    /// Starts (or restarts) the output pipeline. While the previous one is still finishing
    /// (a stop's EOS on its way through), the start is queued and runs once that is done.
    pub fn start(self: &Arc<Self>) -> Start {
        let generation = {
            let mut inner = self.inner.lock().unwrap();
            if inner.stopping {
                inner.start_queued = true;
                return Start::Queued;
            }
            // The API thread and a restart timer may both ask; one build at a time. The
            // latest request wins over a stop that came in between.
            if inner.pipeline.is_some() || inner.building {
                inner.wanted = true;
                return Start::AlreadyRunning;
            }
            claim_start(&mut inner)
        };
        self.build_and_play(generation);
        Start::Started
    }

    /// Builds the pipeline of a start claimed with [`claim_start`] and plays it.
    fn build_and_play(self: &Arc<Self>, generation: u64) {
        self.set_state("starting", None);
        let built = self.build();
        if built.is_err() {
            self.inner.lock().unwrap().building = false;
        }
        match built {
            Ok((pipeline, appsrcs, take)) => {
                let bus = pipeline.bus().expect("a pipeline has a bus");
                let weak = Arc::downgrade(self);
                let watch = bus.add_watch(move |_, msg| {
                    if let Some(runner) = weak.upgrade() {
                        runner.on_message(generation, msg);
                    }
                    glib::ControlFlow::Continue
                });
                let watch = match watch {
                    Ok(w) => w,
                    Err(err) => {
                        self.inner.lock().unwrap().building = false;
                        self.failed(generation, format!("cannot watch the bus: {err}"));
                        return;
                    }
                };
                {
                    let mut inner = self.inner.lock().unwrap();
                    if !inner.wanted {
                        // Stopped while it was being built: it never plays, and its take,
                        // which has written nothing, goes with it.
                        inner.building = false;
                        drop(inner);
                        drop(watch);
                        tear_down(pipeline.upcast_ref(), &self.events);
                        self.set_state("stopped", None);
                        return;
                    }
                    // `building` stays set until it plays: a stop meanwhile only clears
                    // `wanted` (an EOS into appsrcs not yet started would be dropped, and the
                    // pipeline never finish), and is carried out below.
                    inner.pipeline = Some(pipeline.clone());
                    inner.take = take;
                    inner.watch = Some(watch);
                    inner.appsrcs = appsrcs;
                    inner.waiting_for_keyframe = true;
                    inner.stopping = false;
                    inner.started_at = Some(Instant::now());
                    inner.first_pts = None;
                    inner.last_pts = None;
                }
                if let Err(err) = pipeline.set_state(gst::State::Playing) {
                    self.failed(generation, format!("cannot start: {err}"));
                    return;
                }
                let (stopped_meanwhile, torn_down) = {
                    let mut inner = self.inner.lock().unwrap();
                    inner.building = false;
                    (!inner.wanted, inner.pipeline.as_ref() != Some(&pipeline))
                };
                if torn_down {
                    // A shutdown's force_stop took it meanwhile: it must not play on.
                    tear_down(pipeline.upcast_ref(), &self.events);
                    return;
                }
                self.set_state("running", None);
                if stopped_meanwhile {
                    self.stop();
                    return;
                }
                self.bind_feedback(Some(&pipeline));
                for (_, appsink) in self.keyframe_requesters.lock().unwrap().iter() {
                    let event = gst_video::UpstreamForceKeyUnitEvent::builder()
                        .all_headers(true)
                        .build();
                    appsink.send_event(event);
                }
            }
            Err(err) => self.failed(generation, format!("{err:#}")),
        }
    }

    /// Sends EOS so the output finishes its files; no restart follows.
    pub fn stop(&self) {
        if self.kind.stops_by_teardown() {
            self.force_stop();
            return;
        }
        let appsrcs: Vec<gst_app::AppSrc> = {
            let mut inner = self.inner.lock().unwrap();
            inner.wanted = false;
            inner.start_queued = false;
            // While a start builds or starts its pipeline, it sees `wanted` cleared and stops.
            if inner.pipeline.is_none() || inner.stopping || inner.building {
                return;
            }
            inner.stopping = true;
            inner.appsrcs.values().cloned().collect()
        };
        self.set_state("stopping", None);
        for appsrc in appsrcs {
            let _ = appsrc.end_of_stream();
        }
    }

    /// Whether a pipeline is still up (running or finishing).
    pub fn is_active(&self) -> bool {
        self.inner.lock().unwrap().pipeline.is_some()
    }

    /// Tears the pipeline down at once, e.g. when a shutdown's EOS takes too long.
    pub fn force_stop(&self) {
        self.inner.lock().unwrap().start_queued = false;
        self.force_stop_keeping_queued_start();
    }

    fn force_stop_keeping_queued_start(&self) {
        let (pipeline, take, generation) = {
            let mut inner = self.inner.lock().unwrap();
            inner.wanted = false;
            inner.stopping = false;
            inner.appsrcs.clear();
            inner.watch = None;
            let take = inner.take.take().map(|t| (t, inner.recorded_s()));
            (inner.pipeline.take(), take, inner.generation)
        };
        self.kind.release();
        if let Some(p) = pipeline {
            self.bind_feedback(None);
            self.kind.close_sessions();
            tear_down(p.upcast_ref(), &self.events);
            finish_take(take);
            // A start that came meanwhile has its own state by now.
            if self.inner.lock().unwrap().generation == generation {
                self.set_state("stopped", None);
            }
        }
    }

    /// Adds a marker to the current recording's timeline.
    pub fn add_marker(&self, marker: &Marker) {
        let take = self.inner.lock().unwrap().take.clone();
        if let Some(take) = take {
            take.add_marker(marker);
        }
    }

    /// An offer appeared or left (at `utc_ns`): an `offer-shown` event with its duration in
    /// the current recording's timeline once it leaves (or when the recording ends).
    pub fn add_offer(&self, entry: &hybridlive_offer_timeline::TimelineEntry, utc_ns: u64) {
        let take = self.inner.lock().unwrap().take.clone();
        if let Some(take) = take {
            take.add_offer(entry, utc_ns);
        }
    }

    /// Updates size and duration of the recording in the shared state.
    pub fn refresh_stats(&self) {
        let (duration, take) = {
            let inner = self.inner.lock().unwrap();
            (inner.recorded_s(), inner.take.clone())
        };
        if let Some(take) = take {
            take.refresh(duration);
        }
    }

    fn on_message(self: &Arc<Self>, generation: u64, msg: &gst::Message) {
        if self.inner.lock().unwrap().generation != generation {
            return;
        }
        match msg.view() {
            gst::MessageView::Error(err) => {
                // One viewer's session failing (its peer vanished) ends that session only.
                if let (Some(whep), Some(src)) = (self.whep(), msg.src())
                    && let Some(session) = whep.end_session_of(src)
                {
                    self.events.emit(
                        "viewer-error",
                        serde_json::json!({"output": self.name, "session": session, "error": err.error().to_string()}),
                    );
                    return;
                }
                let src = msg.src().map(|s| s.name().to_string()).unwrap_or_default();
                self.failed(generation, format!("{src}: {}", err.error()));
            }
            gst::MessageView::Warning(warning)
                if msg
                    .src()
                    .is_some_and(|s| self.kind.warning_is_failure(&s.name())) =>
            {
                let src = msg.src().map(|s| s.name().to_string()).unwrap_or_default();
                self.failed(generation, format!("{src}: {}", warning.error()));
            }
            gst::MessageView::Eos(_) => {
                let stopping = self.inner.lock().unwrap().stopping;
                if stopping {
                    self.force_stop_keeping_queued_start();
                    // A start that came while this one finished: claimed under the same lock
                    // a stop takes, so a stop after it still wins.
                    let queued = {
                        let mut inner = self.inner.lock().unwrap();
                        std::mem::take(&mut inner.start_queued).then(|| claim_start(&mut inner))
                    };
                    if let Some(generation) = queued {
                        self.build_and_play(generation);
                    }
                } else {
                    self.failed(generation, "unexpected end of stream".into());
                }
            }
            gst::MessageView::Element(e) => {
                if let Some(s) = e.structure()
                    && s.name() == "latency-report"
                {
                    super::record_latency(&self.shared, &self.name, s);
                }
            }
            _ => {}
        }
    }

    /// A failure as the status and the event log show it: for an output that sends its media
    /// somewhere, the endpoint and why it cannot be reached (the elements say only "Could not
    /// open resource for writing" or "general stream error"), and never a stream key,
    /// passphrase or token.
    fn describe_failure(&self, error: String) -> String {
        let Some(endpoint) = self.kind.endpoint() else {
            return error;
        };
        let message = match endpoint.unreachable_reason(ENDPOINT_PROBE_TIMEOUT) {
            Some(reason) => format!("{error} ({}: {reason})", endpoint.shown),
            None => format!("{error} ({})", endpoint.shown),
        };
        endpoint.redact(&message)
    }

    fn failed(self: &Arc<Self>, generation: u64, error: String) {
        let (pipeline, take, wanted, delay) = {
            let mut inner = self.inner.lock().unwrap();
            if inner.generation != generation {
                return;
            }
            inner.stopping = false;
            inner.building = false;
            if inner
                .started_at
                .is_some_and(|t| t.elapsed() > HEALTHY_AFTER)
            {
                inner.backoff = FIRST_BACKOFF;
            }
            let delay = inner.backoff;
            inner.backoff = (inner.backoff * 2).min(MAX_BACKOFF);
            // A start queued behind a stop that failed: the restart after back-off is it.
            if std::mem::take(&mut inner.start_queued) {
                inner.wanted = true;
            }
            inner.appsrcs.clear();
            inner.watch = None;
            let take = inner.take.take().map(|t| (t, inner.recorded_s()));
            (inner.pipeline.take(), take, inner.wanted, delay)
        };
        self.kind.release();
        if let Some(p) = pipeline {
            self.bind_feedback(None);
            self.kind.close_sessions();
            tear_down(p.upcast_ref(), &self.events);
        }
        finish_take(take);
        let error = self.describe_failure(error);
        self.set_state("failed", Some(error.clone()));
        if wanted {
            self.shared.with(|s| {
                if let Some(o) = s.outputs.get_mut(&self.name) {
                    o.retry_in_s = Some(delay.as_secs_f64());
                }
            });
        }
        self.events.emit(
            "output-failed",
            serde_json::json!({"output": self.name, "error": error, "restart_in_s": delay.as_secs_f64()}),
        );
        if !wanted {
            return;
        }
        let weak: Weak<Self> = Arc::downgrade(self);
        glib::timeout_add_once(delay, move || {
            if let Some(runner) = weak.upgrade() {
                let wanted = runner.inner.lock().unwrap().wanted;
                if wanted {
                    runner.shared.with(|s| {
                        if let Some(o) = s.outputs.get_mut(&runner.name) {
                            o.restarts += 1;
                        }
                    });
                    runner
                        .events
                        .emit("output-restart", serde_json::json!({"output": runner.name}));
                    runner.start();
                }
            }
        });
    }

    fn set_state(&self, state: &str, error: Option<String>) {
        self.shared.with(|s| {
            if let Some(o) = s.outputs.get_mut(&self.name) {
                o.state = state.to_string();
                o.retry_in_s = None;
                if error.is_some() {
                    o.last_error = error;
                }
            }
        });
    }

    /// Builds the output's pipeline: it, its appsrcs by encoder and (record outputs) its take.
    fn build(&self) -> anyhow::Result<Built> {
        let pipeline = gst::Pipeline::with_name(&format!("output-{}", self.name));
        let (clock, base_time) = self
            .timing
            .lock()
            .unwrap()
            .clone()
            .context("the ingest is not running")?;
        pipeline.use_clock(Some(&clock));
        pipeline.set_start_time(gst::ClockTime::NONE);
        pipeline.set_base_time(base_time);
        let sink = self.kind.build_sink(&pipeline)?;
        let keyframe_requesters = self.keyframe_requesters.lock().unwrap().clone();
        let mut appsrcs = BTreeMap::new();
        for input in &self.inputs {
            let appsrc = gst_app::AppSrc::builder()
                .name(format!("src-{}", input.encoder))
                .format(gst::Format::Time)
                .is_live(true)
                .block(false)
                .max_bytes(0)
                .max_buffers(0)
                .max_time(MAX_QUEUED)
                .leaky_type(gst_app::AppLeakyType::Downstream)
                .build();
            let queue = make("queue", &format!("queue-{}", input.encoder))?;
            let (parser, medium) = match &input.kind {
                EncoderKind::H264 { .. } => (make("h264parse", "")?, "video"),
                // VP8 frames arrive whole from the encoder: nothing to parse.
                EncoderKind::Vp8 { .. } => (make("identity", "")?, "video-vp8"),
                EncoderKind::Aac { .. } => (make("aacparse", "")?, "audio"),
                EncoderKind::Opus { .. } => (make("opusparse", "")?, "audio"),
            };
            pipeline.add_many([appsrc.upcast_ref(), &queue, &parser])?;
            gst::Element::link_many([appsrc.upcast_ref(), &queue, &parser])?;
            let mut last = parser;
            // The meter reads the SEI capture stamps: H.264 only, and of a ladder the top
            // rung (one meter per output: the rungs' latencies differ by their scaling).
            if medium == "video" && input.rung.as_ref().is_none_or(|r| r.index == 0) {
                let meter = make("latencymeter", &format!("meter-{}", self.name))?;
                pipeline.add(&meter)?;
                last.link(&meter)?;
                last = meter;
            }
            let sinkpad = self.kind.input_pad(&InputLink {
                pipeline: &pipeline,
                sink: &sink.element,
                input,
                medium,
                appsrc: &appsrc,
                keyframe_requesters: &keyframe_requesters,
            })?;
            last.static_pad("src")
                .context("element without src pad")?
                .link(&sinkpad)
                .with_context(|| {
                    format!("cannot link {} into {}", input.encoder, sink.element.name())
                })?;
            appsrcs.insert(input.encoder.clone(), appsrc);
        }
        self.kind.finish_build(&pipeline, &self.inputs)?;
        Ok((pipeline, appsrcs, sink.take))
    }
}

/// Ends a take with the seconds of video it got.
fn finish_take(take: Option<(Arc<dyn Take>, f64)>) {
    if let Some((take, recorded_s)) = take {
        take.finish(recorded_s);
    }
}

/// Takes `element` to NULL, and every element inside it even when one refuses.
///
/// A bin stops at the first child that fails a state change, also on the way down: hlssink2
/// that can no longer write into its folder fails PAUSED -> READY, and the rest of the output
/// pipeline (appsrcs, queues, parsers) stayed PLAYING. Dropped like that, their streaming
/// threads ran on over freed pads: `gst_pad_pause_task: assertion 'GST_IS_PAD (pad)' failed`
/// floods, then a crash or a hang at the next shutdown. So a bin that refuses has its children
/// taken down one by one (sinks first) and locked in NULL, then itself.
fn tear_down(element: &gst::Element, events: &Events) {
    if element.set_state(gst::State::Null).is_ok() {
        return;
    }
    if let Some(bin) = element.downcast_ref::<gst::Bin>() {
        for child in bin.iterate_sorted().into_iter().flatten() {
            tear_down(&child, events);
            // The bin's own way down passes READY, which would take the child up again (and
            // the failing one fail again): it stays where it is now.
            child.set_locked_state(true);
        }
    }
    if element.set_state(gst::State::Null).is_err() {
        events.emit(
            "teardown-failed",
            serde_json::json!({"element": element.name().as_str()}),
        );
    }
}
