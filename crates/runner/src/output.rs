//! Outputs, each in its own GStreamer pipeline fed from the ingest through appsink → appsrc.
//!
//! A separate pipeline per output is what isolates them: a full disk or a failing muxer posts
//! an error on that output's bus only, the output is torn down and started again with
//! back-off, and the ingest and the other outputs never notice. Every output pipeline shares
//! the ingest's clock and base time, so running times (and the capture stamps derived from
//! them) mean the same everywhere.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use gst::prelude::*;

use crate::config::{EncoderKind, Output, OutputKind};
use crate::llhls::LlHls;
use crate::events::Events;
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
/// How long a failed output's endpoint is given to accept a TCP connection when the failure
/// is described (refused comes at once; a host that drops packets takes this long).
const ENDPOINT_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
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
    /// The abrcontroller (in the ingest) that steers this output's encoder from its feedback.
    abr: Mutex<Option<gst::Element>>,
    /// Low-Latency HLS outputs: parts and segments in memory, kept across restarts.
    ll_hls: Option<Arc<LlHls>>,
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
    take: Option<Arc<Take>>,
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

/// One recording: an MP4 and its sidecar, from a start to its stop (or failure).
///
/// Lock order: `timeline` before `writer`; the recorder's streaming thread takes `writer`
/// alone and lets it go before it takes `timeline`. The sidecar is written while `timeline`
/// is held, so concurrent changes (markers from several API threads, offers, the finish) land
/// on disk one after the other, each write holding every change made before it.
struct Take {
    /// The MP4 file; it exists from its first whole fragment on.
    mp4: PathBuf,
    /// Fed by the recorder appsink's streaming thread.
    writer: Mutex<FragmentedMp4File>,
    /// Set at the first key frame.
    timeline: Mutex<Option<Timeline>>,
    /// Whether the MP4 exists. The sidecar is written from then on only: never a sidecar
    /// beside a missing recording (a crash or a stop before the first fragment leaves
    /// neither file).
    mp4_created: AtomicBool,
    /// Where a failed sidecar write is reported (`last_error` of the output).
    shared: Arc<Shared>,
    output: String,
}

impl Take {
    fn new(mp4: PathBuf, shared: Arc<Shared>, output: &str) -> Arc<Self> {
        Arc::new(Take {
            writer: Mutex::new(FragmentedMp4File::new(&mp4)),
            mp4,
            timeline: Mutex::new(None),
            mp4_created: AtomicBool::new(false),
            shared,
            output: output.to_string(),
        })
    }

    /// Applies `change` to the timeline (if the first key frame has set it up) and, when it
    /// says it changed something and the MP4 exists, writes the sidecar.
    fn update(&self, change: impl FnOnce(&mut Timeline) -> bool) {
        let mut guard = self.timeline.lock().unwrap();
        let Some(timeline) = guard.as_mut() else {
            return;
        };
        if change(timeline) && self.mp4_created.load(Ordering::SeqCst) {
            self.write(timeline);
        }
    }

    /// The first key frame: the timeline starts (and is written if the MP4 already exists).
    fn begin(&self, timeline: Timeline) {
        let mut guard = self.timeline.lock().unwrap();
        if self.mp4_created.load(Ordering::SeqCst) {
            self.write(&timeline);
        }
        *guard = Some(timeline);
    }

    /// The recorder wrote the MP4's first fragment: the sidecar follows.
    fn on_mp4_created(&self) {
        self.mp4_created.store(true, Ordering::SeqCst);
        self.update(|_| true);
    }

    fn write(&self, timeline: &Timeline) {
        if let Err(err) = timeline.sidecar.write_atomic(&timeline.path) {
            let error = format!("cannot write {}: {err}", timeline.path.display());
            self.shared.with(|s| {
                if let Some(o) = s.outputs.get_mut(&self.output) {
                    o.last_error = Some(error);
                }
            });
        }
    }
}

/// A name for a new take in `directory`: `<output>-<UTC second>.mp4`, or with `-2`, `-3`...
/// when that MP4 or its sidecar already exists (a second take started within the same
/// second, an earlier run's file).
fn free_take_path(directory: &Path, output: &str, utc_ns: u64) -> PathBuf {
    let stem = format!("{output}-{}", state::compact_utc(utc_ns));
    (1u32..)
        .map(|n| match n {
            1 => directory.join(format!("{stem}.mp4")),
            n => directory.join(format!("{stem}-{n}.mp4")),
        })
        .find(|mp4| !mp4.exists() && !hybridlive_timeline::sidecar_path(mp4).exists())
        .unwrap_or_else(|| directory.join(format!("{stem}.mp4")))
}

impl OutputRunner {
    /// Prepares an output; nothing runs until [`OutputRunner::start`].
    pub fn new(
        config: Output,
        inputs: Vec<Input>,
        shared: Arc<Shared>,
        events: Events,
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
                // A folder kept from an earlier run holds its final playlist, which ends in
                // #EXT-X-ENDLIST: served until this run's first segment replaced it, it told
                // players the stream was over and they stopped reloading. Until then there is
                // no playlist (404, which players retry); the old segments stay, so this run
                // numbers its own on from them.
                let stale = dir.join("live.m3u8");
                match std::fs::remove_file(&stale) {
                    Ok(()) => {}
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                    Err(err) => {
                        return Err(err)
                            .with_context(|| format!("cannot remove the old {}", stale.display()));
                    }
                }
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
            events,
            hls_dir,
            hls_dir_is_temporary,
            whep: Mutex::new(None),
            egress: Mutex::new(None),
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

    /// The folder [`OutputRunner::cleanup`] removes, if the runner made one.
    pub fn temporary_dir(&self) -> Option<&Path> {
        self.hls_dir
            .as_deref()
            .filter(|_| self.hls_dir_is_temporary)
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
                self.events.emit(
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
        if let Some((take, utc_ns)) = timeline_started {
            self.begin_timeline(&take, utc_ns);
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
        *self.egress.lock().unwrap() = None;
        if let Some(p) = pipeline {
            self.bind_feedback(None);
            self.close_viewers();
            tear_down(p.upcast_ref(), &self.events);
            self.finish_timeline(take);
            // A start that came meanwhile has its own state by now.
            if self.inner.lock().unwrap().generation == generation {
                self.set_state("stopped", None);
            }
        }
    }

    /// Adds a marker to the current recording's timeline.
    pub fn add_marker(&self, marker: &Marker) {
        let Some(take) = self.inner.lock().unwrap().take.clone() else {
            return;
        };
        take.update(|t| {
            t.sidecar
                .events
                .push(hybridlive_timeline::TimelineEvent::Marker {
                    at: marker.utc_ns.saturating_sub(t.utc_start_ns) as f64 / 1e9,
                    duration: 0.0,
                    label: marker.label.clone(),
                    kind: None,
                });
            true
        });
    }

    /// An offer appeared or left (at `utc_ns`): an `offer-shown` event with its duration in
    /// the current recording's timeline once it leaves (or when the recording ends).
    pub fn add_offer(&self, entry: &hybridlive_offer_timeline::TimelineEntry, utc_ns: u64) {
        let Some(take) = self.inner.lock().unwrap().take.clone() else {
            return;
        };
        take.update(|t| {
            let at = utc_ns.saturating_sub(t.utc_start_ns) as f64 / 1e9;
            match entry.action {
                hybridlive_offer_timeline::Action::Shown => {
                    t.showing
                        .insert(entry.id.clone(), (at, entry.title.clone()));
                    false
                }
                hybridlive_offer_timeline::Action::Hidden => {
                    let Some((start, title)) = t.showing.remove(&entry.id) else {
                        return false;
                    };
                    t.sidecar
                        .events
                        .push(offer_event(&entry.id, start, at, title));
                    true
                }
            }
        });
    }

    /// Updates size and duration of the recording in the shared state.
    pub fn refresh_stats(&self) {
        let (duration, take) = {
            let inner = self.inner.lock().unwrap();
            (inner.recorded_s(), inner.take.clone())
        };
        if let Some(take) = take {
            self.refresh_take_stats(&take, duration);
        }
    }

    fn refresh_take_stats(&self, take: &Take, duration: f64) {
        let mp4 = &take.mp4;
        self.shared.with(|s| {
            if let Some(rec) = s
                .outputs
                .get_mut(&self.config.name)
                .and_then(|o| o.recording.as_mut())
                && rec.path == *mp4
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
                    self.events.emit(
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
                    record_latency(&self.shared, &self.config.name, s);
                }
            }
            _ => {}
        }
    }

    /// Where this output sends its media, for messages (secrets masked): `None` for outputs
    /// that serve or write locally.
    fn endpoint(&self) -> Option<crate::endpoint::Endpoint> {
        use crate::endpoint::Endpoint;
        match &self.config.kind {
            OutputKind::Srt { uri } => Some(Endpoint::new(uri, &[])),
            OutputKind::Rtmp { location } => Some(Endpoint::new(location, &[])),
            OutputKind::Whip {
                endpoint, token, ..
            } => Some(Endpoint::new(endpoint, &[token.as_deref().unwrap_or("")])),
            OutputKind::Janus { endpoint, .. } => Some(Endpoint::new(endpoint, &[])),
            OutputKind::Hls { .. } | OutputKind::Record { .. } | OutputKind::Webrtc { .. } => None,
        }
    }

    /// A failure as the status and the event log show it: for an output that sends its media
    /// somewhere, the endpoint and why it cannot be reached (the elements say only "Could not
    /// open resource for writing" or "general stream error"), and never a stream key,
    /// passphrase or token.
    fn describe_failure(&self, error: String) -> String {
        let Some(endpoint) = self.endpoint() else {
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
        *self.egress.lock().unwrap() = None;
        if let Some(p) = pipeline {
            self.bind_feedback(None);
            self.close_viewers();
            tear_down(p.upcast_ref(), &self.events);
        }
        self.finish_timeline(take);
        let error = self.describe_failure(error);
        self.set_state("failed", Some(error.clone()));
        if wanted {
            self.shared.with(|s| {
                if let Some(o) = s.outputs.get_mut(&self.config.name) {
                    o.retry_in_s = Some(delay.as_secs_f64());
                }
            });
        }
        self.events.emit(
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
                    runner.events.emit(
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

    fn begin_timeline(&self, take: &Take, utc_start_ns: u64) {
        let path = take.mp4.clone();
        let mut sidecar = hybridlive_timeline::Timeline::new();
        sidecar.recording = path.file_name().map(|n| n.to_string_lossy().into_owned());
        sidecar.started_at = Some(state::rfc3339(utc_start_ns));
        sidecar.started_at_ns = Some(utc_start_ns);
        let timeline_path = hybridlive_timeline::sidecar_path(&path);
        let utc_start = sidecar.started_at.clone();
        take.begin(Timeline {
            sidecar,
            showing: BTreeMap::new(),
            utc_start_ns,
            path: timeline_path.clone(),
        });
        self.shared.with(|s| {
            if let Some(o) = s.outputs.get_mut(&self.config.name) {
                o.recording = Some(Recording {
                    path: path.clone(),
                    timeline: timeline_path.clone(),
                    start_utc_ns: utc_start_ns,
                    duration_s: 0.0,
                    bytes: 0,
                });
            }
        });
        self.events.emit(
            "recording-started",
            serde_json::json!({"output": self.config.name, "path": path, "timeline": timeline_path, "utc_start": utc_start}),
        );
    }

    /// Ends the take: offers still on screen close at its end, `ended_at` is set and the
    /// sidecar written a last time. A take that never wrote a fragment has no files and is
    /// reported as `empty`.
    /// `take`: the take and the seconds of video it got.
    fn finish_timeline(&self, take: Option<(Arc<Take>, f64)>) {
        let Some((take, duration)) = take else {
            return;
        };
        self.refresh_take_stats(&take, duration);
        let mut begun = false;
        take.update(|timeline| {
            begun = true;
            let end_ns = state::utc_now_ns();
            let end = end_ns.saturating_sub(timeline.utc_start_ns) as f64 / 1e9;
            for (id, (start, title)) in std::mem::take(&mut timeline.showing) {
                timeline
                    .sidecar
                    .events
                    .push(offer_event(&id, start, end, title));
            }
            timeline.sidecar.ended_at = Some(state::rfc3339(end_ns));
            true
        });
        if !begun {
            // Stopped before its first key frame: no recording-started, nothing to finish.
            return;
        }
        let empty = !take.mp4_created.load(Ordering::SeqCst);
        if empty {
            // Its status would name files that do not exist.
            self.shared.with(|s| {
                if let Some(o) = s.outputs.get_mut(&self.config.name)
                    && o.recording.as_ref().is_some_and(|r| r.path == take.mp4)
                {
                    o.recording = None;
                }
            });
        }
        self.events.emit(
            "recording-finished",
            serde_json::json!({"output": self.config.name, "path": take.mp4, "timeline": hybridlive_timeline::sidecar_path(&take.mp4), "empty": empty}),
        );
    }

    /// Builds the output's pipeline: it, its appsrcs by encoder and (record outputs) its take.
    fn build(&self) -> anyhow::Result<Built> {
        let mut take = None;
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
                let file = free_take_path(directory, &self.config.name, state::utc_now_ns());
                let new_take = Take::new(file, self.shared.clone(), &self.config.name);
                // Not filesink: it leaves half a fragment (or no header at all) behind when
                // the process is killed or the disk fills; this writes whole fragments only.
                let writer = recording_writer(new_take.clone());
                pipeline.add_many([&mux, writer.upcast_ref()])?;
                mux.link(&writer)?;
                take = Some(new_take);
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
        Ok((pipeline, appsrcs, take))
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

/// An appsink named `recorder` that appends mp4mux's output to the take's MP4 whole
/// fragments at a time ([`FragmentedMp4File`]) and has the sidecar written once the MP4
/// exists; a failed write is an element error (the output restarts).
fn recording_writer(take: Arc<Take>) -> gst_app::AppSink {
    let at_eos = take.clone();
    let path = take.mp4.clone();
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
                let pushed = {
                    let mut writer = take.writer.lock().unwrap();
                    let before = writer.created();
                    writer.push(&map).map(|()| !before && writer.created())
                };
                if let Ok(true) = pushed {
                    take.on_mp4_created();
                }
                if let Err(err) = pushed {
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
                if let Err(err) = at_eos.writer.lock().unwrap().finish() {
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

/// Temporary folders removed when this is dropped: at the end of a run, and also when its
/// start-up fails half-way or it unwinds from a panic.
#[derive(Debug, Default)]
pub struct TemporaryDirs(pub Vec<PathBuf>);

impl Drop for TemporaryDirs {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A built output pipeline, its appsrcs by encoder, and the take of a record output.
type Built = (
    gst::Pipeline,
    BTreeMap<String, gst_app::AppSrc>,
    Option<Arc<Take>>,
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
