//! Outputs, each in its own GStreamer pipeline fed from the ingest through appsink → appsrc.
//!
//! A separate pipeline per output is what isolates them: a full disk or a failing muxer posts
//! an error on that output's bus only, the output is torn down and started again with
//! back-off, and the ingest and the other outputs never notice. Every output pipeline shares
//! the ingest's clock and base time, so running times (and the capture stamps derived from
//! them) mean the same everywhere.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use gst::prelude::*;

use crate::config::{EncoderKind, Output, OutputKind};
use crate::llhls::LlHls;
use crate::mp4file::FragmentedMp4File;
use crate::state::{self, Marker, OutputStatus, Recording, Shared};

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// An output that ran this long before failing starts again after the first back-off.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);
/// Media an output may lag behind before its oldest buffers are dropped.
const MAX_QUEUED: gst::ClockTime = gst::ClockTime::from_seconds(2);
/// Longest send backlog kept before an RTMP sink.
const RTMP_BACKLOG: gst::ClockTime = gst::ClockTime::from_seconds(5);
/// WHIP/Janus egress: an SFU that sent no RTCP for this long is gone. Receivers report every
/// 5 s at most (RTCP's minimum interval, randomised to 2.5–7.5 s), so this misses none.
const EGRESS_PEER_TIMEOUT: Duration = Duration::from_secs(12);
/// WHIP/Janus egress: a publisher not connected this long after its start has failed.
const EGRESS_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// mp4mux fragment length: at most this much media is lost on `kill -9`.
const FRAGMENT_MS: u32 = 500;

/// One encoded stream an output consumes.
#[derive(Debug, Clone)]
pub struct Input {
    /// Encoder name.
    pub encoder: String,
    /// Its codec.
    pub kind: EncoderKind,
}

/// A running output: its configuration and, while it runs, its pipeline.
pub struct OutputRunner {
    config: Output,
    inputs: Vec<Input>,
    shared: Arc<Shared>,
    /// The ingest's clock and base time, set once the ingest plays.
    timing: Mutex<Option<(gst::Clock, gst::ClockTime)>>,
    /// appsinks on the ingest side; a start asks them for a keyframe.
    keyframe_requesters: Mutex<Vec<(String, gst::Element)>>,
    inner: Mutex<Inner>,
    /// The HLS folder, fixed for the whole run.
    hls_dir: Option<PathBuf>,
    /// Whether the runner made that folder (a temporary one) and removes it at the end.
    hls_dir_is_temporary: bool,
    /// WebRTC outputs: the WHEP sessions of the running pipeline.
    whep: Mutex<Option<hybridlive_webrtc::WhepOutput>>,
    /// WHIP/Janus outputs: the link of the running publisher to its SFU.
    egress: Mutex<Option<hybridlive_webrtc::EgressHealth>>,
    /// Record outputs: the file the running pipeline writes.
    recording_file: Mutex<Option<PathBuf>>,
    /// The abrcontroller (in the ingest) that steers this output's encoder from its feedback.
    abr: Mutex<Option<gst::Element>>,
    /// Low-Latency HLS outputs: parts and segments in memory, kept across restarts.
    ll_hls: Option<Arc<LlHls>>,
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
    /// Cleared by a stop request (recordings) or shutdown: no restart then.
    wanted: bool,
    backoff: Duration,
    started_at: Option<Instant>,
    generation: u64,
    timeline: Option<Timeline>,
    first_pts: Option<gst::ClockTime>,
    last_pts: Option<gst::ClockTime>,
}

/// The sidecar timeline next to a recording (the format `hybridlive repurpose` reads, defined
/// in `hybridlive-timeline`), rewritten whole and atomically on every change.
#[derive(Debug, Clone)]
struct Timeline {
    sidecar: hybridlive_timeline::Timeline,
    /// Offers on screen: id -> (seconds from the start, title).
    showing: BTreeMap<String, (f64, String)>,
    /// Capture time of the recording's first frame, ns since the Unix epoch.
    utc_start_ns: u64,
    path: PathBuf,
}

impl Timeline {
    fn write(&self) -> std::io::Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let json = serde_json::to_vec_pretty(&self.sidecar).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, &self.path)
    }
}

impl OutputRunner {
    /// Prepares an output; nothing runs until [`OutputRunner::start`].
    pub fn new(
        config: Output,
        inputs: Vec<Input>,
        shared: Arc<Shared>,
    ) -> anyhow::Result<Arc<Self>> {
        let hls_dir_is_temporary = matches!(
            config.kind,
            OutputKind::Hls {
                directory: None,
                ..
            }
        );
        let hls_dir = match &config.kind {
            OutputKind::Hls { directory, .. } => {
                let dir = directory.clone().unwrap_or_else(|| {
                    std::env::temp_dir().join(format!(
                        "hybridlive-{}-{}",
                        std::process::id(),
                        config.name
                    ))
                });
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                Some(dir)
            }
            OutputKind::Record { directory, .. } => {
                std::fs::create_dir_all(directory)
                    .with_context(|| format!("cannot create {}", directory.display()))?;
                None
            }
            OutputKind::Srt { .. }
            | OutputKind::Rtmp { .. }
            | OutputKind::Webrtc { .. }
            | OutputKind::Whip { .. }
            | OutputKind::Janus { .. } => None,
        };
        let ll_hls = match config.kind {
            OutputKind::Hls {
                low_latency: true,
                segment_duration,
                playlist_length,
                part_duration_ms,
                ..
            } => Some(Arc::new(LlHls::new(
                Duration::from_secs(u64::from(segment_duration)),
                Duration::from_millis(u64::from(part_duration_ms)),
                playlist_length as usize,
            ))),
            _ => None,
        };
        // Absolute paths in events and the API: the runner's working folder is not the user's.
        let mut config = config;
        if let OutputKind::Record { directory, .. } = &mut config.kind {
            *directory = std::path::absolute(&*directory).unwrap_or_else(|_| directory.clone());
        }
        let kind = config.kind.type_name();
        shared.with(|s| {
            s.outputs.insert(
                config.name.clone(),
                OutputStatus {
                    kind,
                    state: "stopped".into(),
                    restarts: 0,
                    retry_in_s: None,
                    last_error: None,
                    recording: None,
                },
            )
        });
        Ok(Arc::new(OutputRunner {
            config,
            inputs,
            shared,
            timing: Mutex::new(None),
            keyframe_requesters: Mutex::new(Vec::new()),
            inner: Mutex::new(Inner {
                backoff: FIRST_BACKOFF,
                ..Inner::default()
            }),
            ll_hls,
            hls_dir,
            hls_dir_is_temporary,
            whep: Mutex::new(None),
            egress: Mutex::new(None),
            recording_file: Mutex::new(None),
            abr: Mutex::new(None),
        }))
    }

    /// Shares the ingest's clock and base time; call before [`OutputRunner::start`].
    pub fn set_timing(&self, clock: gst::Clock, base_time: gst::ClockTime) {
        *self.timing.lock().unwrap() = Some((clock, base_time));
    }

    /// The output's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Where HLS playlists and segments are written (HLS outputs).
    pub fn hls_dir(&self) -> Option<&Path> {
        self.hls_dir.as_deref()
    }

    /// Segments the live playlist lists (HLS outputs).
    pub fn hls_playlist_length(&self) -> Option<usize> {
        match &self.config.kind {
            OutputKind::Hls {
                playlist_length, ..
            } => Some(*playlist_length as usize),
            _ => None,
        }
    }

    /// Removes the temporary HLS folder, once the output has stopped.
    pub fn cleanup(&self) {
        if self.hls_dir_is_temporary
            && let Some(dir) = &self.hls_dir
        {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    /// Whether the output starts with the runner.
    pub fn autostart(&self) -> bool {
        !matches!(
            self.config.kind,
            OutputKind::Record {
                autostart: false,
                ..
            }
        )
    }

    /// Whether this is a recording output.
    pub fn is_record(&self) -> bool {
        matches!(self.config.kind, OutputKind::Record { .. })
    }

    /// The Low-Latency HLS store of a `low_latency` HLS output.
    pub fn ll_hls(&self) -> Option<Arc<LlHls>> {
        self.ll_hls.clone()
    }

    /// The WHEP sessions, while a WebRTC output runs.
    pub fn whep(&self) -> Option<hybridlive_webrtc::WhepOutput> {
        self.whep.lock().unwrap().clone()
    }

    /// Ends every WebRTC session before the pipeline goes down.
    fn close_viewers(&self) {
        if let Some(whep) = self.whep.lock().unwrap().take() {
            whep.close_all();
        }
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
        let Some(abr) = self.abr() else {
            return;
        };
        let find = |name: &str| pipeline.and_then(|p| p.by_name(name));
        match self.config.kind {
            OutputKind::Srt { .. } => abr.set_property("srtsink", find("srtsink")),
            OutputKind::Rtmp { .. } => abr.set_property("queue", find("backlog")),
            // Egress: set once the publisher is connected (check_egress).
            OutputKind::Webrtc { .. } | OutputKind::Whip { .. } | OutputKind::Janus { .. } => {
                abr.set_property("webrtcbin", None::<gst::Element>)
            }
            _ => {}
        }
    }

    /// WebRTC outputs: the abrcontroller follows the viewer with the most recent session
    /// (one encode feeds every viewer; see pipelines/README.md). Called every status tick.
    pub fn follow_viewers(&self) {
        if !matches!(self.config.kind, OutputKind::Webrtc { .. }) {
            return;
        }
        let Some(abr) = self.abr() else {
            return;
        };
        let pipeline = self.inner.lock().unwrap().pipeline.clone();
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

    /// WHIP/Janus outputs: notices the publisher's link coming up (state `connected`, an
    /// `output-connected` event) and going away, which gst-plugins-rs's sinks never report
    /// as an error: then the output fails and restarts with back-off like any other. Called
    /// every status tick.
    pub fn check_egress(self: &Arc<Self>) {
        let Some(health) = self.egress.lock().unwrap().clone() else {
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
                    .get_mut(&self.config.name)
                    .filter(|o| o.state == "running")
                    .map(|o| o.state = "connected".into())
                    .is_some()
            });
            if newly {
                crate::runner::event(
                    "output-connected",
                    serde_json::json!({"output": self.config.name}),
                );
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
        let (appsrc, timeline_started) = {
            let mut inner = self.inner.lock().unwrap();
            if inner.stopping {
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
                started = Some(capture_utc_ns(&buffer).unwrap_or_else(state::utc_now_ns));
            }
            if is_video && let Some(pts) = buffer.pts() {
                inner.first_pts.get_or_insert(pts);
                inner.last_pts = Some(pts);
            }
            (appsrc, started)
        };
        if let Some(utc_ns) = timeline_started {
            self.begin_timeline(utc_ns);
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

    /// Starts (or restarts) the output pipeline.
    pub fn start(self: &Arc<Self>) {
        let generation = {
            let mut inner = self.inner.lock().unwrap();
            // The API thread and a restart timer may both ask; one build at a time.
            if inner.pipeline.is_some() || inner.building {
                return;
            }
            inner.building = true;
            inner.wanted = true;
            inner.generation += 1;
            inner.generation
        };
        self.set_state("starting", None);
        let built = self.build();
        if built.is_err() {
            self.inner.lock().unwrap().building = false;
        }
        match built {
            Ok((pipeline, appsrcs)) => {
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
                    inner.pipeline = Some(pipeline.clone());
                    inner.building = false;
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
                self.set_state("running", None);
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
        if matches!(
            self.config.kind,
            OutputKind::Whip { .. } | OutputKind::Janus { .. }
        ) {
            // An SFU publisher has no file to finish. An EOS through gst-plugins-rs's webrtcsink
            // can end in an error inside its session pipeline, which it handles on its tokio
            // runtime, where whipclientsink's blocking DELETE aborts the whole process (seen 1 in
            // 8 stops). Taken down from this thread, the sink ends its session (DELETE) here.
            self.force_stop();
            return;
        }
        let appsrcs: Vec<gst_app::AppSrc> = {
            let mut inner = self.inner.lock().unwrap();
            inner.wanted = false;
            if inner.pipeline.is_none() || inner.stopping {
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
        let pipeline = {
            let mut inner = self.inner.lock().unwrap();
            inner.wanted = false;
            inner.appsrcs.clear();
            inner.watch = None;
            inner.pipeline.take()
        };
        *self.egress.lock().unwrap() = None;
        if let Some(p) = pipeline {
            self.bind_feedback(None);
            self.close_viewers();
            tear_down(p.upcast_ref());
            self.finish_timeline();
            self.set_state("stopped", None);
        }
    }

    /// Adds a marker to the current recording's timeline.
    pub fn add_marker(&self, marker: &Marker) {
        let timeline = {
            let mut inner = self.inner.lock().unwrap();
            let Some(t) = inner.timeline.as_mut() else {
                return;
            };
            t.sidecar
                .events
                .push(hybridlive_timeline::TimelineEvent::Marker {
                    at: marker.utc_ns.saturating_sub(t.utc_start_ns) as f64 / 1e9,
                    duration: 0.0,
                    label: marker.label.clone(),
                    kind: None,
                });
            t.clone()
        };
        if let Err(err) = timeline.write() {
            self.set_state(
                "running",
                Some(format!("cannot write {}: {err}", timeline.path.display())),
            );
        }
    }

    /// An offer appeared or left (at `utc_ns`): an `offer-shown` event with its duration in
    /// the current recording's timeline once it leaves (or when the recording ends).
    pub fn add_offer(&self, entry: &hybridlive_offer_timeline::TimelineEntry, utc_ns: u64) {
        let timeline = {
            let mut inner = self.inner.lock().unwrap();
            let Some(t) = inner.timeline.as_mut() else {
                return;
            };
            let at = utc_ns.saturating_sub(t.utc_start_ns) as f64 / 1e9;
            match entry.action {
                hybridlive_offer_timeline::Action::Shown => {
                    t.showing
                        .insert(entry.id.clone(), (at, entry.title.clone()));
                    return;
                }
                hybridlive_offer_timeline::Action::Hidden => {
                    let Some((start, title)) = t.showing.remove(&entry.id) else {
                        return;
                    };
                    t.sidecar
                        .events
                        .push(offer_event(&entry.id, start, at, title));
                }
            }
            t.clone()
        };
        if let Err(err) = timeline.write() {
            self.set_state(
                "running",
                Some(format!("cannot write {}: {err}", timeline.path.display())),
            );
        }
    }

    /// Updates size and duration of the recording in the shared state.
    pub fn refresh_stats(&self) {
        let (duration, path) = {
            let inner = self.inner.lock().unwrap();
            let duration = match (inner.first_pts, inner.last_pts) {
                (Some(a), Some(b)) => b.saturating_sub(a).seconds_f64(),
                _ => 0.0,
            };
            (duration, inner.timeline.as_ref().map(|t| t.path.clone()))
        };
        let Some(timeline_path) = path else { return };
        self.shared.with(|s| {
            if let Some(rec) = s
                .outputs
                .get_mut(&self.config.name)
                .and_then(|o| o.recording.as_mut())
                && rec.timeline == timeline_path
            {
                rec.duration_s = duration;
                rec.bytes = std::fs::metadata(&rec.path).map_or(0, |m| m.len());
            }
        });
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
                    crate::runner::event(
                        "viewer-error",
                        serde_json::json!({"output": self.config.name, "session": session, "error": err.error().to_string()}),
                    );
                    return;
                }
                let src = msg.src().map(|s| s.name().to_string()).unwrap_or_default();
                self.failed(generation, format!("{src}: {}", err.error()));
            }
            // srtsink (1.22) only warns when its peer is gone and then redials on its own,
            // silently: the uplink would be down with nobody told. Treat it as the failure it
            // is, so it is reported and retried with back-off like any other.
            gst::MessageView::Warning(warning)
                if msg.src().is_some_and(|s| s.name() == "srtsink") =>
            {
                self.failed(generation, format!("srtsink: {}", warning.error()));
            }
            gst::MessageView::Eos(_) => {
                let stopping = self.inner.lock().unwrap().stopping;
                if stopping {
                    self.force_stop();
                } else {
                    self.failed(generation, "unexpected end of stream".into());
                }
            }
            gst::MessageView::Element(e) => {
                if let Some(s) = e.structure()
                    && s.name() == "latency-report"
                {
                    record_latency(&self.shared, &self.config.name, s);
                }
            }
            _ => {}
        }
    }

    fn failed(self: &Arc<Self>, generation: u64, error: String) {
        let (pipeline, wanted, delay) = {
            let mut inner = self.inner.lock().unwrap();
            if inner.generation != generation {
                return;
            }
            if inner
                .started_at
                .is_some_and(|t| t.elapsed() > HEALTHY_AFTER)
            {
                inner.backoff = FIRST_BACKOFF;
            }
            let delay = inner.backoff;
            inner.backoff = (inner.backoff * 2).min(MAX_BACKOFF);
            inner.appsrcs.clear();
            inner.watch = None;
            (inner.pipeline.take(), inner.wanted, delay)
        };
        *self.egress.lock().unwrap() = None;
        if let Some(p) = pipeline {
            self.bind_feedback(None);
            self.close_viewers();
            tear_down(p.upcast_ref());
        }
        self.finish_timeline();
        self.set_state("failed", Some(error.clone()));
        if wanted {
            self.shared.with(|s| {
                if let Some(o) = s.outputs.get_mut(&self.config.name) {
                    o.retry_in_s = Some(delay.as_secs_f64());
                }
            });
        }
        crate::runner::event(
            "output-failed",
            serde_json::json!({"output": self.config.name, "error": error, "restart_in_s": delay.as_secs_f64()}),
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
                        if let Some(o) = s.outputs.get_mut(&runner.config.name) {
                            o.restarts += 1;
                        }
                    });
                    crate::runner::event(
                        "output-restart",
                        serde_json::json!({"output": runner.config.name}),
                    );
                    runner.start();
                }
            }
        });
    }

    fn set_state(&self, state: &str, error: Option<String>) {
        self.shared.with(|s| {
            if let Some(o) = s.outputs.get_mut(&self.config.name) {
                o.state = state.to_string();
                o.retry_in_s = None;
                if error.is_some() {
                    o.last_error = error;
                }
            }
        });
    }

    fn begin_timeline(&self, utc_start_ns: u64) {
        if !self.is_record() {
            return;
        }
        let (path, timeline) = {
            let inner = self.inner.lock().unwrap();
            let Some(pipeline) = inner.pipeline.as_ref() else {
                return;
            };
            if pipeline.by_name("recorder").is_none() {
                return;
            }
            let Some(path) = self.recording_file.lock().unwrap().clone() else {
                return;
            };
            let mut sidecar = hybridlive_timeline::Timeline::new();
            sidecar.recording = path.file_name().map(|n| n.to_string_lossy().into_owned());
            sidecar.started_at = Some(state::rfc3339(utc_start_ns));
            sidecar.started_at_ns = Some(utc_start_ns);
            let timeline = Timeline {
                sidecar,
                showing: BTreeMap::new(),
                utc_start_ns,
                path: hybridlive_timeline::sidecar_path(&path),
            };
            (path, timeline)
        };
        let written = timeline.write();
        self.shared.with(|s| {
            if let Some(o) = s.outputs.get_mut(&self.config.name) {
                o.recording = Some(Recording {
                    path: path.clone(),
                    timeline: timeline.path.clone(),
                    start_utc_ns: utc_start_ns,
                    duration_s: 0.0,
                    bytes: 0,
                });
            }
        });
        if let Err(err) = written {
            self.set_state(
                "running",
                Some(format!("cannot write {}: {err}", timeline.path.display())),
            );
        }
        crate::runner::event(
            "recording-started",
            serde_json::json!({"output": self.config.name, "path": path, "timeline": timeline.path, "utc_start": timeline.sidecar.started_at}),
        );
        self.inner.lock().unwrap().timeline = Some(timeline);
    }

    fn finish_timeline(&self) {
        self.refresh_stats();
        let Some(mut timeline) = self.inner.lock().unwrap().timeline.take() else {
            return;
        };
        let end_ns = state::utc_now_ns();
        // Offers still on screen when the recording ends last until its end.
        let end = end_ns.saturating_sub(timeline.utc_start_ns) as f64 / 1e9;
        for (id, (start, title)) in std::mem::take(&mut timeline.showing) {
            timeline
                .sidecar
                .events
                .push(offer_event(&id, start, end, title));
        }
        timeline.sidecar.ended_at = Some(state::rfc3339(end_ns));
        let _ = timeline.write();
        crate::runner::event(
            "recording-finished",
            serde_json::json!({"output": self.config.name, "path": timeline.path.with_file_name(timeline.sidecar.recording.as_deref().unwrap_or_default()), "timeline": timeline.path}),
        );
    }

    fn build(&self) -> anyhow::Result<(gst::Pipeline, BTreeMap<String, gst_app::AppSrc>)> {
        let pipeline = gst::Pipeline::with_name(&format!("output-{}", self.config.name));
        let (clock, base_time) = self
            .timing
            .lock()
            .unwrap()
            .clone()
            .context("the ingest is not running")?;
        pipeline.use_clock(Some(&clock));
        pipeline.set_start_time(gst::ClockTime::NONE);
        pipeline.set_base_time(base_time);
        let sink = match &self.config.kind {
            OutputKind::Hls {
                low_latency: true,
                segment_duration,
                part_duration_ms,
                ..
            } => {
                let store = self
                    .ll_hls
                    .clone()
                    .context("LL-HLS output without a store")?;
                // After a failure this is a new muxer: the store marks the discontinuity.
                store.restart();
                // One fragment per segment (fragments start on key frames), one chunk per part.
                let mux = make("isofmp4mux", "sink")?;
                mux.set_property(
                    "fragment-duration",
                    gst::ClockTime::from_seconds(u64::from(*segment_duration)),
                );
                mux.set_property(
                    "chunk-duration",
                    gst::ClockTime::from_mseconds(u64::from(*part_duration_ms)),
                );
                let appsink = gst_app::AppSink::builder()
                    .name("llhls")
                    .sync(false)
                    .async_(false)
                    .buffer_list(true)
                    .build();
                let on_eos = store.clone();
                appsink.set_callbacks(
                    gst_app::AppSinkCallbacks::builder()
                        .new_sample(move |sink| {
                            let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                            if let Some(list) = sample.buffer_list() {
                                store.push_chunk(list);
                            } else if let Some(buffer) = sample.buffer_owned() {
                                let mut list = gst::BufferList::new();
                                list.get_mut().unwrap().add(buffer);
                                store.push_chunk(&list);
                            }
                            Ok(gst::FlowSuccess::Ok)
                        })
                        .eos(move |_| on_eos.finish())
                        .build(),
                );
                pipeline.add_many([&mux, appsink.upcast_ref()])?;
                mux.link(&appsink)?;
                mux
            }
            OutputKind::Hls {
                segment_duration,
                playlist_length,
                ..
            } => {
                let dir = self
                    .hls_dir
                    .as_deref()
                    .context("HLS output without a folder")?;
                let sink = make("hlssink2", "sink")?;
                sink.set_property(
                    "location",
                    dir.join("segment%05d.ts").to_string_lossy().as_ref(),
                );
                sink.set_property(
                    "playlist-location",
                    dir.join("live.m3u8").to_string_lossy().as_ref(),
                );
                sink.set_property("target-duration", *segment_duration);
                sink.set_property("playlist-length", *playlist_length);
                sink.set_property("max-files", *playlist_length + 3);
                // Keyframes come every segment from the encoder already; hlssink2's own
                // requests would reach the shared encoder through appsrc and nowhere.
                sink.set_property("send-keyframe-requests", false);
                // A restarted output numbers its segments on from the last one written, and the
                // served playlist's media sequence is the first listed segment's number
                // (hls.rs): players never see the sequence go back or a segment name reused.
                let next = next_segment_index(dir);
                if let Some(split) = sink.downcast_ref::<gst::Bin>().and_then(|bin| {
                    bin.iterate_elements()
                        .into_iter()
                        .flatten()
                        .find(|e| e.factory().is_some_and(|f| f.name() == "splitmuxsink"))
                }) {
                    split.set_property("start-index", next as i32);
                }
                pipeline.add(&sink)?;
                sink
            }
            OutputKind::Record { directory, .. } => {
                let mux = make("mp4mux", "mux")?;
                // Fragments make the file playable up to the last one written after a crash.
                mux.set_property("fragment-duration", FRAGMENT_MS);
                mux.set_property("streamable", true);
                let file = directory.join(format!(
                    "{}-{}.mp4",
                    self.config.name,
                    state::compact_utc(state::utc_now_ns())
                ));
                // Not filesink: it leaves half a fragment (or no header at all) behind when
                // the process is killed or the disk fills; this writes whole fragments only.
                let writer = recording_writer(&file);
                pipeline.add_many([&mux, writer.upcast_ref()])?;
                mux.link(&writer)?;
                *self.recording_file.lock().unwrap() = Some(file);
                mux
            }
            OutputKind::Srt { uri } => {
                let mux = make("mpegtsmux", "mux")?;
                // Whole 188-byte packets, 7 to a datagram: what SRT receivers expect.
                mux.set_property("alignment", 7i32);
                let sink = make("srtsink", "srtsink")?;
                sink.set_property("uri", uri);
                // A missing peer is an error (and a restart), not a silent wait.
                sink.set_property("wait-for-connection", false);
                pipeline.add_many([&mux, &sink])?;
                mux.link(&sink)?;
                mux
            }
            OutputKind::Webrtc { .. } | OutputKind::Whip { .. } | OutputKind::Janus { .. } => {
                // One tee per medium; each viewer's branch (or the egress publisher) hangs
                // off them. A fakesink on each
                // keeps the tees flowing and lets EOS finish the pipeline without viewers.
                let video = make("tee", "video")?;
                let audio = make("tee", "audio")?;
                let vp8 = make("tee", "video-vp8")?;
                for tee in [&video, &audio, &vp8] {
                    tee.set_property("allow-not-linked", true);
                    let queue = make("queue", &format!("{}-keepalive-queue", tee.name()))?;
                    queue.set_property_from_str("leaky", "downstream");
                    let sink = make("fakesink", &format!("{}-keepalive", tee.name()))?;
                    sink.set_property("sync", false);
                    sink.set_property("async", false);
                    pipeline.add_many([tee, &queue, &sink])?;
                    gst::Element::link_many([tee, &queue, &sink])?;
                }
                video
            }
            OutputKind::Rtmp { location } => {
                let mux = make("flvmux", "mux")?;
                mux.set_property("streamable", true);
                // What TCP has not taken yet waits here: the send backlog an abrcontroller
                // reads. Bounded, so a stuck connection drops old media instead of memory.
                let backlog = make("queue", "backlog")?;
                backlog.set_property("max-size-time", RTMP_BACKLOG.nseconds());
                backlog.set_property("max-size-bytes", 0u32);
                backlog.set_property("max-size-buffers", 0u32);
                backlog.set_property_from_str("leaky", "downstream");
                let sink = make("rtmpsink", "rtmpsink")?;
                sink.set_property("location", location);
                pipeline.add_many([&mux, &backlog, &sink])?;
                gst::Element::link_many([&mux, &backlog, &sink])?;
                mux
            }
        };
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
            let (parser, pad_name) = match &input.kind {
                EncoderKind::H264 { .. } => (make("h264parse", "")?, "video"),
                // VP8 frames arrive whole from the encoder: nothing to parse.
                EncoderKind::Vp8 { .. } => (make("identity", "")?, "video-vp8"),
                EncoderKind::Aac { .. } => (make("aacparse", "")?, "audio"),
                EncoderKind::Opus { .. } => (make("opusparse", "")?, "audio"),
            };
            pipeline.add_many([appsrc.upcast_ref(), &queue, &parser])?;
            gst::Element::link_many([appsrc.upcast_ref(), &queue, &parser])?;
            let mut last = parser;
            // The meter reads the SEI capture stamps: H.264 only.
            if pad_name == "video" {
                let meter = make("latencymeter", &format!("meter-{}", self.config.name))?;
                pipeline.add(&meter)?;
                last.link(&meter)?;
                last = meter;
            }
            let template = match (&self.config.kind, pad_name) {
                (
                    OutputKind::Hls {
                        low_latency: true, ..
                    },
                    _,
                ) => "sink_%u".to_string(),
                (OutputKind::Hls { .. }, name) => name.to_string(),
                (OutputKind::Record { .. }, name) => format!("{name}_%u"),
                (OutputKind::Srt { .. }, _) => "sink_%d".to_string(),
                (OutputKind::Rtmp { .. }, name) => name.to_string(),
                (OutputKind::Webrtc { .. } | OutputKind::Whip { .. }, name)
                | (OutputKind::Janus { .. }, name) => name.to_string(),
            };
            let sinkpad = if self.config.kind.is_webrtc() {
                // A joining viewer (or the SFU) asks its branch for a key frame; the encoder is
                // in the ingest pipeline, behind the appsrc: pass the request on to it (to the
                // encoder of this input only: a VP8 viewer needs no H.264 key frame).
                let requesters: Vec<gst::Element> = self
                    .keyframe_requesters
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|(encoder, _)| *encoder == input.encoder)
                    .map(|(_, appsink)| appsink.clone())
                    .collect();
                appsrc.static_pad("src").context("appsrc src")?.add_probe(
                    gst::PadProbeType::EVENT_UPSTREAM,
                    move |_, info| {
                        if let Some(event) = info.event()
                            && gst_video::UpstreamForceKeyUnitEvent::parse(event).is_ok()
                        {
                            for appsink in &requesters {
                                appsink.send_event(event.clone());
                            }
                        }
                        gst::PadProbeReturn::Ok
                    },
                );
                pipeline
                    .by_name(&template)
                    .and_then(|tee| tee.static_pad("sink"))
                    .with_context(|| format!("no {template} tee"))?
            } else {
                sink.request_pad_simple(&template)
                    .with_context(|| format!("{} has no {template} pad", sink.name()))?
            };
            last.static_pad("src")
                .context("element without src pad")?
                .link(&sinkpad)
                .with_context(|| format!("cannot link {} into {}", input.encoder, sink.name()))?;
            appsrcs.insert(input.encoder.clone(), appsrc);
        }
        if let OutputKind::Webrtc {
            max_viewers,
            loopback_only,
            playout_delay_ms,
        } = &self.config.kind
        {
            let audio = pipeline.by_name("audio").context("no audio tee")?;
            let audio_fed = audio.static_pad("sink").is_some_and(|pad| pad.is_linked());
            // In the order of the inputs: the first codec a viewer offers wins.
            let mut videos = Vec::new();
            for input in &self.inputs {
                let (codec, tee) = match input.kind {
                    EncoderKind::H264 { .. } => (hybridlive_webrtc::VideoCodec::H264, "video"),
                    EncoderKind::Vp8 { .. } => (hybridlive_webrtc::VideoCodec::Vp8, "video-vp8"),
                    _ => continue,
                };
                videos.push((codec, pipeline.by_name(tee).context("no video tee")?));
            }
            let videos: Vec<_> = videos.iter().map(|(codec, tee)| (*codec, tee)).collect();
            let whep = hybridlive_webrtc::WhepOutput::with_codecs(
                &pipeline,
                &videos,
                audio_fed.then_some(&audio),
                hybridlive_webrtc::WhepConfig {
                    loopback_ice: *loopback_only,
                    max_sessions: *max_viewers as usize,
                    playout_delay: playout_delay_ms
                        .map(|[min, max]| hybridlive_webrtc::PlayoutDelayMs { min, max }),
                    ..Default::default()
                },
            );
            *self.whep.lock().unwrap() = Some(whep);
        }
        let egress = match &self.config.kind {
            OutputKind::Whip {
                endpoint,
                token,
                loopback_only,
            } => Some((
                hybridlive_webrtc::Egress::Whip {
                    endpoint: endpoint.clone(),
                    token: token.clone(),
                },
                *loopback_only,
            )),
            OutputKind::Janus {
                endpoint,
                room_id,
                feed_id,
                display_name,
                loopback_only,
            } => Some((
                hybridlive_webrtc::Egress::Janus {
                    endpoint: endpoint.clone(),
                    room_id: *room_id,
                    feed_id: *feed_id,
                    display_name: display_name.clone(),
                },
                *loopback_only,
            )),
            _ => None,
        };
        for tee in ["audio", "video-vp8", "video"] {
            if self.config.kind.is_webrtc()
                && let Some(unfed) = pipeline.by_name(tee)
                && unfed.static_pad("sink").is_some_and(|pad| !pad.is_linked())
            {
                // No encoder of that kind (no audio, or only one of the video codecs): an
                // unfed branch would never see EOS, and the pipeline would never finish on a
                // stop (the shutdown would wait out its grace period).
                let branch: Vec<gst::Element> = [
                    tee.to_string(),
                    format!("{tee}-keepalive-queue"),
                    format!("{tee}-keepalive"),
                ]
                .iter()
                .filter_map(|name| pipeline.by_name(name))
                .collect();
                pipeline.remove_many(&branch)?;
            }
        }
        if let Some((egress, loopback_ice)) = egress {
            // Fed from the tees of the shared encode: the SFU gets the very stream the
            // viewers, HLS and the recording get, with its capture stamps.
            let video = pipeline.by_name("video").context("no video tee")?;
            // Only there with an audio encoder (see above).
            let audio = pipeline.by_name("audio");
            let publisher = hybridlive_webrtc::add_egress(
                &pipeline,
                &video,
                audio.as_ref(),
                &egress,
                loopback_ice,
            )
            .context("cannot set up the egress publisher")?;
            *self.egress.lock().unwrap() = Some(publisher.health);
        }
        Ok((pipeline, appsrcs))
    }
}

fn offer_event(
    id: &str,
    start: f64,
    end: f64,
    title: String,
) -> hybridlive_timeline::TimelineEvent {
    hybridlive_timeline::TimelineEvent::OfferShown {
        at: start,
        duration: (end - start).max(0.0),
        offer_id: id.to_string(),
        title: Some(title),
    }
}

/// An appsink named `recorder` that appends mp4mux's output to `file` whole fragments at a
/// time ([`FragmentedMp4File`]); a failed write is an element error (the output restarts).
fn recording_writer(file: &Path) -> gst_app::AppSink {
    let writer = Arc::new(Mutex::new(FragmentedMp4File::new(file)));
    let at_eos = writer.clone();
    let path = file.to_path_buf();
    let sink = gst_app::AppSink::builder()
        .name("recorder")
        .sync(false)
        .build();
    sink.set_property("async", false);
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let Some(buffer) = sample.buffer() else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                let map = buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
                if let Err(err) = writer.lock().unwrap().push(&map) {
                    let kind = if err.raw_os_error() == Some(libc::ENOSPC) {
                        gst::ResourceError::NoSpaceLeft
                    } else {
                        gst::ResourceError::Write
                    };
                    gst::element_error!(sink, kind, ["cannot write {}: {err}", path.display()]);
                    return Err(gst::FlowError::Error);
                }
                Ok(gst::FlowSuccess::Ok)
            })
            .eos(move |sink| {
                if let Err(err) = at_eos.lock().unwrap().finish() {
                    gst::element_error!(
                        sink,
                        gst::ResourceError::Write,
                        ["cannot finish the recording: {err}"]
                    );
                }
            })
            .build(),
    );
    sink
}

/// Takes `element` to NULL, and every element inside it even when one refuses.
///
/// A bin stops at the first child that fails a state change, also on the way down: hlssink2
/// that can no longer write into its folder fails PAUSED -> READY, and the rest of the output
/// pipeline (appsrcs, queues, parsers) stayed PLAYING. Dropped like that, their streaming
/// threads ran on over freed pads: `gst_pad_pause_task: assertion 'GST_IS_PAD (pad)' failed`
/// floods, then a crash or a hang at the next shutdown. So a bin that refuses has its children
/// taken down one by one (sinks first) and locked in NULL, then itself.
fn tear_down(element: &gst::Element) {
    if element.set_state(gst::State::Null).is_ok() {
        return;
    }
    if let Some(bin) = element.downcast_ref::<gst::Bin>() {
        for child in bin.iterate_sorted().into_iter().flatten() {
            tear_down(&child);
            // The bin's own way down passes READY, which would take the child up again (and
            // the failing one fail again): it stays where it is now.
            child.set_locked_state(true);
        }
    }
    if element.set_state(gst::State::Null).is_err() {
        crate::runner::event(
            "teardown-failed",
            serde_json::json!({"element": element.name().as_str()}),
        );
    }
}

/// The index after the highest `segmentNNNNN.ts` in `dir` (0 in an empty folder).
fn next_segment_index(dir: &Path) -> u32 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| crate::hls::segment_index(entry.file_name().to_str()?))
        .max()
        .map_or(0, |highest| u32::try_from(highest + 1).unwrap_or(u32::MAX))
}

/// Creates an element, with a name unless `name` is empty.
pub fn make(factory: &str, name: &str) -> anyhow::Result<gst::Element> {
    let mut builder = gst::ElementFactory::make(factory);
    if !name.is_empty() {
        builder = builder.name(name);
    }
    builder
        .build()
        .with_context(|| format!("the GStreamer element `{factory}` is not installed"))
}

/// The capture time latencystamp attached to a buffer, UTC nanoseconds.
pub(crate) fn capture_utc_ns(buffer: &gst::BufferRef) -> Option<u64> {
    let caps = gst::Caps::builder("timestamp/x-unix").build();
    buffer
        .iter_meta::<gst::ReferenceTimestampMeta>()
        .find(|m| m.reference().is_subset(&caps))
        .map(|m| m.timestamp().nseconds())
}

/// Stores a latencymeter report under a path name.
pub fn record_latency(shared: &Shared, path: &str, report: &gst::StructureRef) {
    let p50 = report.get::<f64>("window-p50-ms").unwrap_or(0.0);
    let p95 = report.get::<f64>("window-p95-ms").unwrap_or(0.0);
    let count = report.get::<u64>("count").unwrap_or(0);
    shared.with(|s| {
        s.latency.insert(
            path.to_string(),
            state::Latency {
                p50_ms: p50,
                p95_ms: p95,
                count,
            },
        );
    });
}
