//! WHEP sessions: one `webrtcbin` per viewer on a tee of the shared encoded stream.
//!
//! Lock order: `sessions` only; no GStreamer call that can wait on streaming threads (state
//! changes, promises) is made while it is held.

use gst::prelude::*;
use gst_rtp::prelude::*;
use gst_webrtc::{WebRTCICEConnectionState, WebRTCICEGatheringState, WebRTCSDPType};
use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::nice::add_local_address;
use crate::offer::{
    OfferError, PLAYOUT_DELAY_URI, Skipped, VideoCodec, ViewerOffer, read_viewer_offer,
};
use crate::rungs::{Admit, RungCounts, RungState, RungStatus, RungSwitch, quality_pin};
use crate::turn::{IceServer, TurnAuth};
use hybridlive_ladder::{Ladder, Rung, RungSelector, SelectorConfig};

/// Settings of the WHEP output.
#[derive(Debug, Clone)]
pub struct WhepConfig {
    /// Gather ICE candidates on 127.0.0.1 only (loopback-only networks and single-host setups;
    /// viewers must then be on the same machine).
    pub loopback_ice: bool,
    /// Offer passive TCP candidates (ICE-TCP, RFC 6544) beside the UDP ones in every answer: a
    /// viewer whose network drops UDP connects over TCP instead of falling back to HLS. A
    /// viewer that can use UDP still does (UDP candidates have the higher priority).
    pub ice_tcp: bool,
    /// The local ports every session's ICE candidates take theirs from, inclusive (`None`: any
    /// port the system gives). Each session holds one UDP and, with `ice_tcp`, one listening
    /// TCP port of the range while it lives: a firewall opens just these, and the range bounds
    /// the viewers (a session that finds no free port answers without that candidate).
    pub ice_ports: Option<IcePorts>,
    /// How long an offer may wait for ICE gathering before the answer is sent as it is.
    pub gather_timeout: Duration,
    /// Viewers at most, counting offers still being negotiated; further offers are refused
    /// (HTTP 503).
    pub max_sessions: usize,
    /// A session whose ICE connection has not formed this long after its answer was sent is
    /// torn down: an offer that never connects gives its viewer slot back well before
    /// `viewer_timeout`.
    pub connect_timeout: Duration,
    /// How much media a slow viewer's queue holds before it drops (the others never wait).
    pub viewer_queue: Duration,
    /// A session whose viewer sent no RTCP for this long is torn down: the viewer vanished
    /// without DELETE (ICE on GStreamer 1.22 does not notice a silent peer). Browsers report
    /// about once a second; GStreamer receivers every 5 s by default (up to 7.5 s randomised).
    pub viewer_timeout: Duration,
    /// Key-frame requests (viewers joining, PLI/FIR from viewers that lost packets) reach the
    /// shared encoder at most once per this interval; a request in between is held back and
    /// sent when it ends, so none is lost. Every key frame costs every viewer, the HLS output
    /// and the recording bitrate: one viewer asking for one every 30 ms must not turn every
    /// frame into a key frame.
    pub min_key_frame_interval: Duration,
    /// The playout delay asked of viewers that offer the playout-delay header extension
    /// (`None`: not negotiated, browsers pick their own jitter buffer).
    pub playout_delay: Option<PlayoutDelayMs>,
    /// STUN/TURN servers named to viewers in `Link: <...>; rel="ice-server"` headers of the
    /// answer and of OPTIONS (RFC 9725): a viewer whose network lets nothing but TCP to a
    /// relay out plays through it.
    pub ice_servers: Vec<IceServer>,
    /// Short-lived credentials for the TURN servers of `ice_servers`, one per answer (`None`:
    /// TURN URLs are named without one).
    pub turn: Option<TurnAuth>,
    /// The server's own `webrtcbin` gathers a relay candidate on the first TURN server of
    /// `ice_servers` too (with a credential of its own per session): for a server behind NAT,
    /// whose host candidates viewers cannot reach.
    pub server_relay: bool,
}

/// A range of local ports for ICE candidates, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcePorts {
    /// Lowest port (at least 1).
    pub min: u16,
    /// Highest port (at least `min`).
    pub max: u16,
}

impl IcePorts {
    /// How many ports the range holds: the most sessions that can each have a candidate of
    /// each transport at once.
    pub fn len(&self) -> usize {
        usize::from(self.max.saturating_sub(self.min)) + 1
    }

    /// Never: a range holds its `min` at least (kept for clippy's `len_without_is_empty`).
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Bounds of the playout delay (jitter buffer plus render delay) asked of a viewer, ms
/// (0-40950, sent in 10 ms steps). `0..0` asks to render every frame as soon as it is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlayoutDelayMs {
    /// Smallest delay.
    pub min: u32,
    /// Largest delay (at least `min`).
    pub max: u32,
}

impl Default for WhepConfig {
    fn default() -> Self {
        Self {
            loopback_ice: false,
            ice_tcp: true,
            ice_ports: None,
            gather_timeout: Duration::from_secs(3),
            max_sessions: 64,
            connect_timeout: Duration::from_secs(5),
            min_key_frame_interval: Duration::from_secs(1),
            viewer_queue: Duration::from_millis(500),
            viewer_timeout: Duration::from_secs(15),
            playout_delay: Some(DEFAULT_PLAYOUT_DELAY),
            ice_servers: Vec::new(),
            turn: None,
            server_relay: false,
        }
    }
}

/// Asked of viewers unless configured otherwise. Minimum 0 lets Chromium shrink its jitter
/// buffer and render on its low-latency path; a maximum above 0 keeps it off the 0/0 path
/// ("render at once"), which measured worse at p95 with more freezes; 200 ms bounds the buffer
/// on a jittery network without binding on a good one. The measurements are in
/// docs/benchmarks.md ("Playout delay").
pub const DEFAULT_PLAYOUT_DELAY: PlayoutDelayMs = PlayoutDelayMs { min: 0, max: 200 };

/// Why an offer or a delete failed.
#[derive(Debug, thiserror::Error)]
pub enum WhepError {
    /// The offer is unusable: HTTP 400 (or 406 for codecs).
    #[error(transparent)]
    Offer(#[from] OfferError),
    /// Too many viewers: HTTP 503.
    #[error("the output serves {0} viewers already")]
    Full(usize),
    /// The output is shutting down ([`WhepOutput::close_all`]): HTTP 503.
    #[error("the output is shutting down")]
    Closed,
    /// No such session: HTTP 404.
    #[error("no session {0}")]
    UnknownSession(String),
    /// webrtcbin could not negotiate: HTTP 500 (or 400 when the offer was refused).
    #[error("negotiation failed: {0}")]
    Negotiation(String),
    /// The answer would carry no candidate a viewer can connect to (every port of
    /// [`WhepConfig::ice_ports`] taken, or no usable address): HTTP 503.
    #[error("no ICE candidate could be gathered (no free port in the ICE port range?)")]
    NoCandidates,
}

/// The answer to an offer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Session id, for the resource URL and `DELETE`.
    pub id: String,
    /// SDP answer with the ICE candidates gathered.
    pub sdp: String,
}

/// A live session, for status pages.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// Session id (the last part of its resource URL).
    pub id: String,
    /// Time since the answer was sent.
    pub age: Duration,
    /// ICE connection state, as webrtcbin names it.
    pub ice_state: String,
    /// Bytes queued on the session's data channel that the viewer has not taken yet (at most
    /// about [`MAX_ECHO_BACKLOG`]: echoes beyond are dropped).
    pub data_channel_backlog: u64,
    /// The session's rung and what its selector knows (outputs serving a ladder of more than
    /// one rung to an H.264 viewer; `None` otherwise).
    pub rung: Option<RungStatus>,
}

/// Bytes of data-channel messages a session may have waiting for its viewer before echoes are
/// dropped: a viewer that sends but never reads (its receive window shut) would otherwise queue
/// every echo in memory.
pub const MAX_ECHO_BACKLOG: u64 = 256 * 1024;

/// Viewer branches present in the pipeline (see [`WhepOutput::branches`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Branches {
    /// `webrtcbin` elements anywhere in the pipeline.
    pub webrtcbins: usize,
    /// Tee source pads (video and audio) linked to a viewer's bin.
    pub tee_pads: usize,
}

/// A viewer's "raise hand / ask" message, received over the session's data channel.
#[derive(Debug, Clone, PartialEq)]
pub struct RaisedHand {
    /// The viewer who raised it: an opaque id, the same for all hands of one session, drawn
    /// apart from the session's WHEP resource id (which is the credential that ends the session)
    /// so that it can be shown to anyone.
    pub viewer: String,
    /// What the viewer typed (at most [`MAX_HAND_TEXT`] characters kept); `None` when read by
    /// [`Audience::Public`].
    pub text: Option<String>,
    /// When it arrived (UTC, ms since the Unix epoch).
    pub at_ms: u64,
}

/// Who reads the raised hands (see [`WhepOutput::raised_hands`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// Anyone, e.g. an unauthenticated status page: who raised a hand and when, without the
    /// questions.
    Public,
    /// The host, who holds the control token: the questions too.
    Host,
}

/// Longest question kept from a raised hand, in characters.
pub const MAX_HAND_TEXT: usize = 500;

struct Session {
    bin: gst::Bin,
    webrtcbin: gst::Element,
    /// Video tee and pad, and the audio ones when the viewer takes audio.
    tee_pads: Vec<(gst::Element, gst::Pad)>,
    created: Instant,
    /// The viewer's ICE connection formed (connected or completed) at least once.
    connected: Arc<AtomicBool>,
    /// Last RTCP packet from the viewer.
    last_heard: Arc<Mutex<Instant>>,
    /// What the viewer's page last reported of its glass-to-glass latency.
    reported: Arc<Mutex<Option<ViewerLatency>>>,
    /// The viewer's data channel, once it opened one.
    channel: Arc<Mutex<Option<gst_webrtc::WebRTCDataChannel>>>,
    /// The viewer's rung (ladder sessions) and the tee pad of each rung, highest first.
    rungs: Option<(Arc<RungState>, Vec<gst::Pad>)>,
}

/// Called on every completed rung switch (see [`WhepOutput::on_rung_switch`]).
type SwitchHook = Arc<dyn Fn(RungSwitch) + Send + Sync>;

/// Glass-to-glass latency a viewer's page measured and reported over its data channel
/// (`{"type":"latency","p50_ms":..,"p95_ms":..}`): figures only, nothing about the viewer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ViewerLatency {
    /// Median over the page's recent frames, ms.
    pub p50_ms: f64,
    /// 95th percentile, ms.
    pub p95_ms: f64,
}

struct Inner {
    hands: Mutex<Vec<RaisedHand>>,
    pipeline: gst::Pipeline,
    /// Video tees, one per codec, in the output's order of preference.
    videos: Vec<(VideoCodec, gst::Element)>,
    audio_tee: Option<gst::Element>,
    config: WhepConfig,
    sessions: Mutex<HashMap<String, Session>>,
    /// Viewer slots held by offers being negotiated. Taken and compared with `max_sessions`
    /// only while `sessions` is locked, so concurrent offers cannot all pass the check.
    reserved: AtomicUsize,
    /// [`WhepOutput::close_all`] was called: no session starts any more. Written while
    /// `sessions` is locked, so an offer still negotiating then cannot slip in after.
    closed: AtomicBool,
    /// A session was torn down since the watchdog last gave freed memory back.
    freed: AtomicBool,
    /// The rungs H.264 viewers are switched between, highest first, with their tees (the first
    /// is the H.264 tee of `videos`); `None` for a single rendition.
    ladder: Option<(Ladder, Vec<gst::Element>)>,
    on_switch: Mutex<Option<SwitchHook>>,
    /// Rung switches completed, all sessions.
    switches_total: AtomicU64,
}

/// WHEP sessions fed from one tee of encoded video per codec (H.264: byte-stream, access units,
/// constrained baseline; VP8) and optionally one tee of Opus.
#[derive(Clone)]
pub struct WhepOutput {
    inner: Arc<Inner>,
}

impl WhepOutput {
    /// Serves viewers from `tee`, an element of `pipeline` carrying the shared encoded video,
    /// and `audio_tee` carrying the shared Opus audio, if any.
    pub fn new(
        pipeline: &gst::Pipeline,
        tee: &gst::Element,
        audio_tee: Option<&gst::Element>,
        config: WhepConfig,
    ) -> Self {
        Self::with_codecs(pipeline, &[(VideoCodec::H264, tee)], audio_tee, config)
    }

    /// Serves viewers from one tee of encoded video per codec, best first: each viewer gets the
    /// first of them its offer has (an offer with none of them is refused, HTTP 406).
    pub fn with_codecs(
        pipeline: &gst::Pipeline,
        videos: &[(VideoCodec, &gst::Element)],
        audio_tee: Option<&gst::Element>,
        config: WhepConfig,
    ) -> Self {
        Self::build(pipeline, videos, None, audio_tee, config)
    }

    /// Serves H.264 viewers from a ladder encoded once: `rungs` are the rungs, highest first,
    /// each with the tee of its encoded video (H.264 byte-stream, access units, constrained
    /// baseline, SPS/PPS at every IDR, IDRs aligned across rungs, the same running times on
    /// all). Each viewer receives one rung at a time on one continuous track, the rung its
    /// network carries (see [`hybridlive_ladder::RungSelector`]) or the one it pinned, and is
    /// switched at an IDR of the new rung. `vp8` serves viewers that offer no H.264 (one
    /// rendition). One rung serves exactly as [`WhepOutput::new`].
    pub fn with_ladder(
        pipeline: &gst::Pipeline,
        mut rungs: Vec<(Rung, gst::Element)>,
        vp8: Option<&gst::Element>,
        audio_tee: Option<&gst::Element>,
        config: WhepConfig,
    ) -> Self {
        // The same order as the ladder's own (highest bitrate first, stable), so that a rung's
        // index is the selector's.
        rungs.sort_by(|(a, _), (b, _)| b.max_bps.cmp(&a.max_bps).then(b.min_bps.cmp(&a.min_bps)));
        let mut videos: Vec<(VideoCodec, &gst::Element)> = Vec::new();
        if let Some((_, top)) = rungs.first() {
            videos.push((VideoCodec::H264, top));
        }
        if let Some(vp8) = vp8 {
            videos.push((VideoCodec::Vp8, vp8));
        }
        let text: Vec<String> = rungs.iter().map(|(rung, _)| rung.to_string()).collect();
        let ladder = match Ladder::parse(&text.join(";")) {
            Ok(ladder) if rungs.len() > 1 => Some((
                ladder,
                rungs.iter().map(|(_, tee)| tee.clone()).collect::<Vec<_>>(),
            )),
            Ok(_) => None,
            Err(e) => {
                gst::warning!(crate::CAT, "ladder not usable, top rung only: {e}");
                None
            }
        };
        Self::build(pipeline, &videos, ladder, audio_tee, config)
    }

    fn build(
        pipeline: &gst::Pipeline,
        videos: &[(VideoCodec, &gst::Element)],
        ladder: Option<(Ladder, Vec<gst::Element>)>,
        audio_tee: Option<&gst::Element>,
        config: WhepConfig,
    ) -> Self {
        register_rtp_extensions();
        let lower_rungs = ladder.iter().flat_map(|(_, tees)| tees.iter().skip(1));
        for tee in videos.iter().map(|(_, tee)| *tee).chain(lower_rungs) {
            coalesce_key_frame_requests(tee, config.min_key_frame_interval);
        }
        let inner = Arc::new(Inner {
            hands: Mutex::new(Vec::new()),
            pipeline: pipeline.clone(),
            videos: videos
                .iter()
                .map(|(codec, tee)| (*codec, (*tee).clone()))
                .collect(),
            audio_tee: audio_tee.cloned(),
            config,
            sessions: Mutex::new(HashMap::new()),
            reserved: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            freed: AtomicBool::new(false),
            ladder,
            on_switch: Mutex::new(None),
            switches_total: AtomicU64::new(0),
        });
        spawn_watchdog(Arc::downgrade(&inner));
        Self { inner }
    }

    /// Hands raised so far, oldest first; the questions only for [`Audience::Host`].
    pub fn raised_hands(&self, audience: Audience) -> Vec<RaisedHand> {
        let hands = self.inner.hands.lock().unwrap().clone();
        match audience {
            Audience::Host => hands,
            Audience::Public => hands
                .into_iter()
                .map(|hand| RaisedHand { text: None, ..hand })
                .collect(),
        }
    }

    /// The latest latency each live viewer reported (viewers that reported nothing yet are left
    /// out).
    pub fn viewer_latencies(&self) -> Vec<ViewerLatency> {
        self.inner
            .sessions
            .lock()
            .unwrap()
            .values()
            .filter_map(|s| *s.reported.lock().unwrap())
            .collect()
    }

    /// The settings it was made with.
    pub(crate) fn config(&self) -> &WhepConfig {
        &self.inner.config
    }

    /// Number of live sessions.
    pub fn session_count(&self) -> usize {
        self.inner.sessions.lock().unwrap().len()
    }

    /// What the sessions hold in the pipeline, counted in the pipeline itself rather than in
    /// the session table: a leak shows here even when the bookkeeping says all is gone.
    pub fn branches(&self) -> Branches {
        let webrtcbins = self
            .inner
            .pipeline
            .iterate_recurse()
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| e.factory().is_some_and(|f| f.name() == "webrtcbin"))
            .count();
        let tee_pads = self
            .inner
            .videos
            .iter()
            .map(|(_, tee)| tee)
            .chain(
                self.inner
                    .ladder
                    .iter()
                    .flat_map(|(_, tees)| tees.iter().skip(1)),
            )
            .chain(&self.inner.audio_tee)
            .flat_map(|tee| tee.src_pads())
            .filter(|pad| {
                pad.peer()
                    .and_then(|peer| peer.parent_element())
                    .is_some_and(|e| e.name().starts_with("whep-"))
            })
            .count();
        Branches {
            webrtcbins,
            tee_pads,
        }
    }

    /// The live sessions.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        let sessions = self.inner.sessions.lock().unwrap();
        sessions
            .iter()
            .map(|(id, s)| SessionInfo {
                id: id.clone(),
                age: s.created.elapsed(),
                ice_state: format!(
                    "{:?}",
                    s.webrtcbin
                        .property::<WebRTCICEConnectionState>("ice-connection-state")
                ),
                data_channel_backlog: s
                    .channel
                    .lock()
                    .unwrap()
                    .as_ref()
                    .map_or(0, |c| c.property::<u64>("buffered-amount")),
                rung: s.rungs.as_ref().map(|(state, _)| state.status()),
            })
            .collect()
    }

    /// Calls `hook` on every completed rung switch of every session (from the output's
    /// watchdog thread; keep it short). Replaces the hook set before.
    pub fn on_rung_switch(&self, hook: Box<dyn Fn(RungSwitch) + Send + Sync>) {
        *self.inner.on_switch.lock().unwrap() = Some(Arc::from(hook));
    }

    /// Viewers per rung and switches so far (for `/metrics`); empty for a single rendition.
    pub fn rung_counts(&self) -> RungCounts {
        let Some((ladder, _)) = &self.inner.ladder else {
            return RungCounts::default();
        };
        let mut viewers = vec![0; ladder.len()];
        for session in self.inner.sessions.lock().unwrap().values() {
            if let Some((state, _)) = &session.rungs {
                let rung = state.current.load(Ordering::Acquire);
                if let Some(count) = viewers.get_mut(rung) {
                    *count += 1;
                }
            }
        }
        RungCounts {
            viewers,
            switches_total: self.inner.switches_total.load(Ordering::Relaxed),
        }
    }

    /// Pins session `id` to `rung` (`None`: automatic), as its viewer's page does over the
    /// data channel. A rung the ladder lacks is ignored; sessions without a ladder ignore it.
    pub fn pin_rung(&self, id: &str, rung: Option<usize>) -> Result<(), WhepError> {
        let sessions = self.inner.sessions.lock().unwrap();
        let session = sessions
            .get(id)
            .ok_or_else(|| WhepError::UnknownSession(id.to_string()))?;
        if let Some((state, _)) = &session.rungs {
            state.pin(rung);
        }
        Ok(())
    }

    /// Starts a session for `offer` (SDP text) and returns its answer once ICE gathering is done
    /// (or `gather_timeout` passed). Blocks the calling thread; never call it from a streaming
    /// thread.
    pub fn offer(&self, offer: &str) -> Result<Answer, WhepError> {
        self.start_session(read_viewer_offer(offer)?)
    }

    /// Starts a session for an offer already read with [`read_viewer_offer`].
    pub fn start_session(&self, offer: ViewerOffer) -> Result<Answer, WhepError> {
        let codecs: Vec<VideoCodec> = self.inner.videos.iter().map(|(c, _)| *c).collect();
        let (codec, payload_type) = offer.pick_codec(&codecs)?;
        let video_tee = self
            .inner
            .videos
            .iter()
            .find(|(c, _)| *c == codec)
            .map(|(_, tee)| tee.clone())
            .ok_or(OfferError::NoH264)?;
        // Transport-wide congestion control, when the viewer offers it: the estimate that
        // chooses its rung.
        let twcc_id = crate::offer::video_extmap_id(&offer.sdp, TWCC_URI)
            .filter(|_| self.inner.ladder.is_some() && codec == VideoCodec::H264);
        let ViewerOffer {
            sdp,
            h264,
            opus,
            playout_delay_id,
            skipped,
            rejected,
            ..
        } = offer;
        let video = match (codec, h264) {
            (VideoCodec::H264, Some(h264)) => VideoFormat::H264 {
                payload_type,
                profile_level_id: h264.profile_level_id,
            },
            _ => VideoFormat::Vp8 { payload_type },
        };
        let playout_delay = playout_delay_id.zip(self.inner.config.playout_delay);
        let opus = opus.filter(|_| self.inner.audio_tee.is_some());
        // The slot is taken before anything is built: an offer negotiating counts as a viewer.
        let _slot = Slot::take(&self.inner)?;
        let id = session_id();
        // Never the resource id: this one is published (see `RaisedHand::viewer`).
        let viewer = session_id();
        let last_heard = Arc::new(Mutex::new(Instant::now()));
        let (bin, webrtcbin, rung_state) = self
            .build_branch(
                &id,
                &viewer,
                &video,
                opus,
                HeaderExtensions {
                    playout_delay,
                    twcc_id,
                },
                skipped,
            )
            .map_err(|e| WhepError::Negotiation(e.to_string()))?;

        self.inner
            .pipeline
            .add(&bin)
            .map_err(|e| WhepError::Negotiation(e.to_string()))?;
        let torn_down = |this: &Self, err: String| {
            let _ = bin.set_state(gst::State::Null);
            let _ = this.inner.pipeline.remove(&bin);
            WhepError::Negotiation(err)
        };
        if let Err(e) = bin.sync_state_with_parent() {
            return Err(torn_down(self, e.to_string()));
        }

        let answer = match negotiate(&webrtcbin, sdp, self.inner.config.gather_timeout) {
            Ok(answer) => rejected.restore(&answer),
            Err(e) => {
                gst::info!(crate::CAT, "a viewer's offer failed to negotiate: {e}");
                return Err(torn_down(self, e));
            }
        };
        if !has_reachable_candidate(&answer) {
            gst::warning!(
                crate::CAT,
                "a viewer's answer has no UDP or passive TCP candidate (ICE port range full?)"
            );
            let _ = torn_down(self, String::new());
            return Err(WhepError::NoCandidates);
        }
        if let Err(e) = watch_rtcp(&webrtcbin, &last_heard, rung_state.clone()) {
            return Err(torn_down(self, e));
        }

        let mut tee_pads: Vec<(gst::Element, gst::Pad)> = Vec::new();
        let mut feeds = vec![(video_tee.clone(), "video".to_string())];
        if let (Some(_), Some((_, tees))) = (&rung_state, &self.inner.ladder) {
            feeds.extend(
                tees.iter()
                    .enumerate()
                    .skip(1)
                    .map(|(rung, tee)| (tee.clone(), format!("video_{rung}"))),
            );
        }
        if let (Some(audio_tee), Some(_)) = (&self.inner.audio_tee, opus) {
            feeds.push((audio_tee.clone(), "audio".to_string()));
        }
        for (tee, ghost) in &feeds {
            let linked = tee.request_pad_simple("src_%u").and_then(|pad| {
                tee_pads.push((tee.clone(), pad.clone()));
                let sink = bin.static_pad(ghost)?;
                pad.link(&sink).ok()
            });
            if linked.is_none() {
                for (tee, pad) in &tee_pads {
                    tee.release_request_pad(pad);
                }
                return Err(torn_down(
                    self,
                    format!("could not feed the {ghost} branch"),
                ));
            }
        }
        let rungs = rung_state.map(|state| {
            let count = state.ladder.len();
            let pads: Vec<gst::Pad> = tee_pads[..count].iter().map(|(_, p)| p.clone()).collect();
            (state, pads)
        });
        // The viewer starts on its selector's start rung: that rung's key frame is the one it
        // needs.
        let start = rungs
            .as_ref()
            .map_or(0, |(state, _)| state.current.load(Ordering::Acquire));
        let tee_pad = tee_pads[start].1.clone();
        let connected = Arc::new(AtomicBool::new(false));
        self.watch_ice(&id, &webrtcbin, &tee_pad, &connected);
        let reported = Arc::new(Mutex::new(None));
        let channel = Arc::new(Mutex::new(None));
        let pin_to = rungs.as_ref().map(|(state, _)| Arc::downgrade(state));
        self.serve_data_channel(&webrtcbin, &viewer, &reported, &channel, pin_to);
        let mut sessions = self.inner.sessions.lock().unwrap();
        if self.inner.closed.load(Ordering::SeqCst) {
            // The output shut down while this offer was negotiated: its branch goes with it
            // instead of outliving the table that close_all() emptied.
            drop(sessions);
            for (tee, pad) in &tee_pads {
                if let Some(peer) = pad.peer() {
                    let _ = pad.unlink(&peer);
                }
                tee.release_request_pad(pad);
            }
            let _ = torn_down(self, String::new());
            return Err(WhepError::Closed);
        }
        sessions.insert(
            id.clone(),
            Session {
                bin,
                webrtcbin,
                tee_pads,
                created: Instant::now(),
                connected,
                last_heard,
                reported,
                channel,
                rungs,
            },
        );
        let count = sessions.len();
        drop(sessions);
        gst::debug!(
            crate::CAT,
            "viewer session started ({codec:?}, audio {}); {count} in all",
            opus.is_some()
        );
        // The viewer starts with a key frame instead of waiting for the next GOP.
        request_key_frame(&tee_pad);
        Ok(Answer { id, sdp: answer })
    }

    /// Ends session `id` and frees everything it held.
    pub fn delete(&self, id: &str) -> Result<(), WhepError> {
        let session = self
            .inner
            .sessions
            .lock()
            .unwrap()
            .remove(id)
            .ok_or_else(|| WhepError::UnknownSession(id.to_string()))?;
        teardown(&self.inner, session);
        Ok(())
    }

    /// If `src` (the source of an error message) lives inside a viewer's session, ends that
    /// session and returns its id. An error there belongs to that one viewer — e.g. its peer
    /// went away and the data channel's `sctpenc` can no longer write — and must not fail the
    /// output the other viewers are watching. The session is torn down on a thread of its own.
    /// An error from a session already torn down (its bin out of the pipeline by the time the
    /// message is read) is recognised too.
    pub fn end_session_of(&self, src: &gst::Object) -> Option<String> {
        let mut object = Some(src.clone());
        while let Some(current) = object {
            let parent = current.parent();
            // A session torn down between the error being posted and read here is out of the
            // pipeline already: its bin is then the top of the chain.
            let in_pipeline =
                parent.as_ref() == Some(self.inner.pipeline.upcast_ref::<gst::Object>());
            let torn_down =
                parent.is_none() && current.is::<gst::Bin>() && current.name().starts_with("whep-");
            if in_pipeline || torn_down {
                let id = current.name().strip_prefix("whep-")?.to_string();
                let session = self.inner.sessions.lock().unwrap().remove(&id);
                if let Some(session) = session {
                    let inner = self.inner.clone();
                    std::thread::spawn(move || teardown(&inner, session));
                }
                return Some(id);
            }
            object = parent;
        }
        None
    }

    /// Ends every session, for good: offers still being negotiated end too, and later ones are
    /// refused ([`WhepError::Closed`]).
    pub fn close_all(&self) {
        let sessions: Vec<Session> = {
            let mut sessions = self.inner.sessions.lock().unwrap();
            self.inner.closed.store(true, Ordering::SeqCst);
            sessions.drain().map(|(_, s)| s).collect()
        };
        for session in sessions {
            teardown(&self.inner, session);
        }
    }

    #[allow(clippy::type_complexity)]
    fn build_branch(
        &self,
        id: &str,
        viewer: &str,
        video: &VideoFormat,
        opus_payload_type: Option<u32>,
        extensions: HeaderExtensions,
        skipped: Skipped,
    ) -> Result<(gst::Bin, gst::Element, Option<Arc<RungState>>), gst::glib::BoolError> {
        let HeaderExtensions {
            playout_delay,
            twcc_id,
        } = extensions;
        let bin = gst::Bin::with_name(&format!("whep-{id}"));
        let queue = self.viewer_queue()?;
        // The SSRC is chosen here and written into the caps webrtcbin answers from: the answer
        // is made before media flows, and without it webrtcbin announces SSRC 0 (with NACK on,
        // `a=ssrc-group:FID 0 <rtx>`, after which Chromium showed only the first frame).
        let ssrc = random_u32();
        let (pay, setter_caps, mut codec) = match video {
            VideoFormat::H264 {
                payload_type,
                profile_level_id,
            } => {
                let pay = gst::ElementFactory::make("rtph264pay")
                    .property("pt", *payload_type)
                    .property("ssrc", ssrc)
                    .property("config-interval", -1i32)
                    .property_from_str("aggregate-mode", "zero-latency")
                    .build()?;
                // Echo the viewer's own profile-level-id: the stream is constrained baseline
                // either way, but webrtcbin 1.22 matches the string.
                let setter = Some(
                    gst::Caps::builder("application/x-rtp")
                        .field("profile-level-id", profile_level_id)
                        .field("ssrc", ssrc)
                        .build(),
                );
                let codec = gst::Caps::builder("application/x-rtp")
                    .field("media", "video")
                    .field("encoding-name", "H264")
                    .field("clock-rate", 90000i32)
                    .field("payload", *payload_type as i32)
                    .field("packetization-mode", "1")
                    .field("profile-level-id", profile_level_id)
                    .field("ssrc", ssrc)
                    .build();
                (pay, setter, codec)
            }
            VideoFormat::Vp8 { payload_type } => {
                // 15-bit picture ids, as browsers send them: receivers use them to tell a lost
                // frame from a late one.
                let pay = gst::ElementFactory::make("rtpvp8pay")
                    .property("pt", *payload_type)
                    .property("ssrc", ssrc)
                    .property_from_str("picture-id-mode", "15-bit")
                    .build()?;
                // Its caps carry the SSRC from the property already: nothing to set.
                let setter = None;
                let codec = gst::Caps::builder("application/x-rtp")
                    .field("media", "video")
                    .field("encoding-name", "VP8")
                    .field("clock-rate", 90000i32)
                    .field("payload", *payload_type as i32)
                    .field("ssrc", ssrc)
                    .build();
                (pay, setter, codec)
            }
        };
        if let Some((id, delay)) = playout_delay {
            // The payloader writes it; the extmap field in the transceiver's codec preferences
            // is what makes webrtcbin answer it with the viewer's id.
            let ext = gst_rtp::RTPHeaderExtension::create_from_uri(PLAYOUT_DELAY_URI)
                .ok_or_else(|| gst::glib::bool_error!("no rtphdrextplayoutdelay"))?;
            ext.set_id(id);
            ext.set_property("min-delay", delay.min);
            ext.set_property("max-delay", delay.max.max(delay.min));
            pay.emit_by_name::<()>("add-extension", &[&ext]);
            codec
                .make_mut()
                .set(format!("extmap-{id}"), PLAYOUT_DELAY_URI);
        }
        if let Some(id) = twcc_id {
            // Every packet numbered transport-wide; the viewer's feedback on them goes to
            // rtpgccbwe (see `estimate_bandwidth`).
            let ext = gst_rtp::RTPHeaderExtension::create_from_uri(TWCC_URI)
                .ok_or_else(|| gst::glib::bool_error!("no rtphdrexttwcc"))?;
            ext.set_id(id);
            pay.emit_by_name::<()>("add-extension", &[&ext]);
            let codec = codec.make_mut();
            codec.set(format!("extmap-{id}"), TWCC_URI);
            codec.set("rtcp-fb-transport-cc", true);
        }
        let setter = match setter_caps {
            Some(caps) => gst::ElementFactory::make("capssetter")
                .property("caps", caps)
                .build()?,
            None => gst::ElementFactory::make("identity").build()?,
        };
        let webrtcbin = gst::ElementFactory::make("webrtcbin")
            .property_from_str("bundle-policy", "max-bundle")
            .build()?;
        configure_ice(&webrtcbin, &self.inner.config)?;
        bin.add_many([&queue, &pay, &setter, &webrtcbin])?;
        gst::Element::link_many([&queue, &pay, &setter])?;
        // webrtcbin gives a section of the offer the first transceiver of its kind not yet
        // taken: the sections passed over (send-only, inactive; rejected ones are out of the
        // offer by now) each take an inactive one first, so that the media goes to the section
        // the viewer receives on.
        for kind in std::iter::repeat_n("video", skipped.video)
            .chain(std::iter::repeat_n("audio", skipped.audio))
        {
            webrtcbin.emit_by_name::<gst_webrtc::WebRTCRTPTransceiver>(
                "add-transceiver",
                &[
                    &gst_webrtc::WebRTCRTPTransceiverDirection::Inactive,
                    // The kind alone: it answers the section inactive. With a codec the offer
                    // lacks, webrtcbin 1.22 rejected the section and then aborted the process
                    // on the bundle (`_connect_input_stream: trans->stream`).
                    &gst::Caps::builder("application/x-rtp")
                        .field("media", kind)
                        .build(),
                ],
            );
        }
        let sink = sendonly_pad(&webrtcbin, true, codec)?;
        setter
            .static_pad("src")
            .expect("capssetter/identity src")
            .link(&sink)
            .map_err(|e| gst::glib::bool_error!("linking to webrtcbin: {e}"))?;
        let ladder = match (video, &self.inner.ladder) {
            (VideoFormat::H264 { .. }, Some((ladder, _))) => Some(ladder.clone()),
            _ => None,
        };
        let rung_state = match ladder {
            None => {
                let ghost =
                    gst::GhostPad::builder_with_target(&queue.static_pad("sink").expect("queue"))?
                        .name("video")
                        .build();
                bin.add_pad(&ghost)?;
                None
            }
            Some(ladder) => {
                let mut config = SelectorConfig::new(ladder.clone());
                // Opus at its default rate goes to the viewer too.
                config.other_bps = opus_payload_type.map_or(0, |_| 64_000);
                // rtpgccbwe's estimate follows what the viewer receives, not the link (see
                // `estimate_bandwidth`): it is confirmed by loss and queuing before use.
                config.estimate_capped = twcc_id.is_some();
                let state = Arc::new(RungState::new(
                    ladder,
                    RungSelector::new(config),
                    viewer.to_string(),
                    ssrc,
                ));
                self.add_rung_switch(&bin, &queue, &pay, &state)?;
                if twcc_id.is_some() {
                    estimate_bandwidth(&webrtcbin, &state)?;
                }
                Some(state)
            }
        };

        if let Some(pt) = opus_payload_type {
            let queue = self.viewer_queue()?;
            let pay = gst::ElementFactory::make("rtpopuspay")
                .property("pt", pt)
                .build()?;
            bin.add_many([&queue, &pay])?;
            queue.link(&pay)?;
            let sink = sendonly_pad(
                &webrtcbin,
                false,
                gst::Caps::builder("application/x-rtp")
                    .field("media", "audio")
                    .field("encoding-name", "OPUS")
                    .field("clock-rate", 48000i32)
                    .field("payload", pt as i32)
                    .build(),
            )?;
            pay.static_pad("src")
                .expect("payloader src")
                .link(&sink)
                .map_err(|e| gst::glib::bool_error!("linking audio to webrtcbin: {e}"))?;
            let ghost =
                gst::GhostPad::builder_with_target(&queue.static_pad("sink").expect("queue"))?
                    .name("audio")
                    .build();
            bin.add_pad(&ghost)?;
        }
        Ok((bin, webrtcbin, rung_state))
    }

    /// A ghost pad per rung (`video`, `video_1`, ...) into a funnel in front of `queue`, with
    /// the probes that let only the viewer's rung through (see [`crate::rungs`]); and a count of
    /// what `pay` sends, for the throughput the viewer's reports confirm.
    fn add_rung_switch(
        &self,
        bin: &gst::Bin,
        queue: &gst::Element,
        pay: &gst::Element,
        state: &Arc<RungState>,
    ) -> Result<(), gst::glib::BoolError> {
        // The new rung's caps (resolution, SPS) are re-sent when its first buffer passes, so
        // the payloader and webrtcbin follow without renegotiation.
        let funnel = gst::ElementFactory::make("funnel")
            .property("forward-sticky-events", true)
            .build()?;
        bin.add(&funnel)?;
        funnel.link(queue)?;
        for rung in 0..state.ladder.len() {
            let sink = funnel
                .request_pad_simple("sink_%u")
                .ok_or_else(|| gst::glib::bool_error!("funnel gave no sink pad"))?;
            let weak = Arc::downgrade(state);
            sink.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                let Some(buffer) = info.buffer() else {
                    return gst::PadProbeReturn::Ok;
                };
                let key = !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT);
                match weak.upgrade() {
                    Some(state) if state.may_admit(rung, key) => {
                        // Read by the probe on the funnel's output, in this same call.
                        ARRIVING_RUNG.set(rung);
                        gst::PadProbeReturn::Ok
                    }
                    // Handled, not Drop: gstreamer-rs takes the buffer out of the probe info
                    // (and frees it here), and GStreamer 1.22 then unrefs the empty slot of a
                    // dropped buffer with a critical warning per buffer.
                    _ => gst::PadProbeReturn::Handled,
                }
            });
            let name = match rung {
                0 => "video".to_string(),
                n => format!("video_{n}"),
            };
            let ghost = gst::GhostPad::builder_with_target(&sink)?
                .name(name)
                .build();
            bin.add_pad(&ghost)?;
        }
        // The rungs arrive on threads of their own; funnel pushes one buffer at a time (under
        // its source pad's stream lock), so the decision made here is final: a buffer of the
        // old rung that passed its sink probe just before the switch is dropped here rather
        // than reaching the viewer after the new rung's key frame.
        // A key frame that reaches the funnel and is then refused here has had its caps sent
        // on all the same; the next buffer of the rung in use sends its own again.
        let weak = Arc::downgrade(state);
        funnel.static_pad("src").expect("funnel src").add_probe(
            gst::PadProbeType::BUFFER,
            move |_, info| {
                let Some(buffer) = info.buffer() else {
                    return gst::PadProbeReturn::Ok;
                };
                let key = !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT);
                let pts = buffer.pts().map(gst::ClockTime::nseconds);
                let Some(state) = weak.upgrade() else {
                    return gst::PadProbeReturn::Handled;
                };
                match state.admit(ARRIVING_RUNG.get(), key, pts) {
                    Admit::Pass => gst::PadProbeReturn::Ok,
                    Admit::Later(pts) => {
                        // The buffer is the tee's, shared: only its metadata is copied.
                        if let Some(buffer) = info.buffer_mut() {
                            buffer
                                .make_mut()
                                .set_pts(gst::ClockTime::from_nseconds(pts));
                        }
                        gst::PadProbeReturn::Ok
                    }
                    Admit::Drop => gst::PadProbeReturn::Handled,
                }
            },
        );
        let weak = Arc::downgrade(state);
        pay.static_pad("src").expect("payloader src").add_probe(
            gst::PadProbeType::BUFFER,
            move |_, info| {
                if let (Some(buffer), Some(state)) = (info.buffer(), weak.upgrade()) {
                    state
                        .sent_bytes
                        .fetch_add(buffer.size() as u64, Ordering::Relaxed);
                    state.sent_packets.fetch_add(1, Ordering::Relaxed);
                }
                gst::PadProbeReturn::Ok
            },
        );
        Ok(())
    }

    /// A slow viewer loses media rather than holding the others back.
    fn viewer_queue(&self) -> Result<gst::Element, gst::glib::BoolError> {
        gst::ElementFactory::make("queue")
            .property_from_str("leaky", "downstream")
            .property("max-size-buffers", 0u32)
            .property("max-size-bytes", 0u32)
            .property(
                "max-size-time",
                self.inner.config.viewer_queue.as_nanos() as u64,
            )
            .build()
    }

    /// The viewer's data channel carries interaction: every text message is echoed back at once
    /// (the page measures the round trip) and a `{"type":"hand",...}` message is recorded as a
    /// raised hand for the host.
    fn serve_data_channel(
        &self,
        webrtcbin: &gst::Element,
        viewer: &str,
        reported: &Arc<Mutex<Option<ViewerLatency>>>,
        opened: &Arc<Mutex<Option<gst_webrtc::WebRTCDataChannel>>>,
        rungs: Option<Weak<RungState>>,
    ) {
        let opened = opened.clone();
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let viewer = viewer.to_string();
        let reported = reported.clone();
        webrtcbin.connect("on-data-channel", false, move |values| {
            let channel = values[1].get::<gst_webrtc::WebRTCDataChannel>().ok()?;
            *opened.lock().unwrap() = Some(channel.clone());
            let (weak, viewer, reported) = (weak.clone(), viewer.clone(), reported.clone());
            let rungs = rungs.clone();
            channel.connect("on-message-string", false, move |values| {
                let channel = values[0].get::<gst_webrtc::WebRTCDataChannel>().ok()?;
                let message = values[1].get::<Option<String>>().ok()??;
                if let Some(latency) = latency_report(&message) {
                    *reported.lock().unwrap() = Some(latency);
                    return None;
                }
                if let Some(pin) = quality_pin(&message) {
                    // The answer is the next `rung` message, not an echo.
                    if let Some(state) = rungs.as_ref().and_then(Weak::upgrade) {
                        state.pin(pin);
                    }
                    return None;
                }
                // Echo first: the round trip measures the interaction path, not our bookkeeping.
                // Not onto a backlog the viewer does not take: it would grow without bound.
                if channel.property::<u64>("buffered-amount") < MAX_ECHO_BACKLOG {
                    channel.emit_by_name::<()>("send-string", &[&Some(message.as_str())]);
                }
                if let (Some(inner), Some(text)) = (weak.upgrade(), hand_text(&message)) {
                    let at_ms = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_millis() as u64;
                    let mut hands = inner.hands.lock().unwrap();
                    hands.push(RaisedHand {
                        viewer: viewer.clone(),
                        text: Some(text),
                        at_ms,
                    });
                    // Bounded: a spamming viewer cannot grow memory without limit.
                    if hands.len() > 1000 {
                        hands.remove(0);
                    }
                }
                None
            });
            None
        });
    }

    /// Tears the session down when its ICE connection fails or closes (a viewer that vanished
    /// without DELETE), and asks for a key frame when it connects.
    fn watch_ice(
        &self,
        id: &str,
        webrtcbin: &gst::Element,
        tee_pad: &gst::Pad,
        connected: &Arc<AtomicBool>,
    ) {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let connected = connected.clone();
        let id = id.to_string();
        let tee_pad = tee_pad.downgrade();
        webrtcbin.connect_notify(Some("ice-connection-state"), move |webrtcbin, _| {
            let state = webrtcbin.property::<WebRTCICEConnectionState>("ice-connection-state");
            gst::debug!(crate::CAT, "a viewer's ICE connection is {state:?}");
            match state {
                WebRTCICEConnectionState::Connected | WebRTCICEConnectionState::Completed => {
                    connected.store(true, Ordering::Relaxed);
                    if let Some(pad) = tee_pad.upgrade() {
                        request_key_frame(&pad);
                    }
                }
                WebRTCICEConnectionState::Failed | WebRTCICEConnectionState::Closed => {
                    let (weak, id) = (weak.clone(), id.clone());
                    // Not from webrtcbin's own thread: tearing it down waits for that thread.
                    std::thread::spawn(move || {
                        if let Some(inner) = weak.upgrade() {
                            let session = inner.sessions.lock().unwrap().remove(&id);
                            if let Some(session) = session {
                                teardown(&inner, session);
                            }
                        }
                    });
                }
                _ => {}
            }
        });
    }
}

thread_local! {
    /// The rung of the buffer this thread is pushing into a session's funnel: set by the rung's
    /// sink pad probe, read by the probe on the funnel's output further down the same call.
    static ARRIVING_RUNG: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}

/// The RTP header extensions a viewer's video gets: (id, delay) of the playout delay, the id
/// of transport-wide CC.
struct HeaderExtensions {
    playout_delay: Option<(u32, PlayoutDelayMs)>,
    twcc_id: Option<u32>,
}

/// The video format a viewer's answer uses.
enum VideoFormat {
    H264 {
        payload_type: u32,
        profile_level_id: String,
    },
    Vp8 {
        payload_type: u32,
    },
}

/// Registers the RTP header extensions of `gst-plugin-rtpext` (playout delay) with GStreamer,
/// once per process, so that they are found by URI.
fn register_rtp_extensions() {
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    REGISTERED.call_once(|| {
        // Already present (e.g. from GST_PLUGIN_PATH) is as good as registered here.
        let _ = gstrtpext::plugin_register_static();
    });
}

/// A send-only webrtcbin pad whose transceiver offers exactly `codec` (the viewer's payload type
/// and parameters). With `nack`, packets the viewer reports lost are sent again (RTX, RFC 4588,
/// when the viewer offers it; otherwise as they were).
fn sendonly_pad(
    webrtcbin: &gst::Element,
    nack: bool,
    codec: gst::Caps,
) -> Result<gst::Pad, gst::glib::BoolError> {
    let sink = webrtcbin
        .request_pad_simple("sink_%u")
        .ok_or_else(|| gst::glib::bool_error!("webrtcbin gave no sink pad"))?;
    let transceiver = sink.property::<gst_webrtc::WebRTCRTPTransceiver>("transceiver");
    transceiver.set_property(
        "direction",
        gst_webrtc::WebRTCRTPTransceiverDirection::Sendonly,
    );
    transceiver.set_property("codec-preferences", codec);
    transceiver.set_property("do-nack", nack);

    Ok(sink)
}

/// Records the arrival of every RTCP packet from the viewer (receiver reports, NACK, PLI): the
/// proof that it is still there.
fn watch_rtcp(
    webrtcbin: &gst::Element,
    last_heard: &Arc<Mutex<Instant>>,
    rungs: Option<Arc<RungState>>,
) -> Result<(), String> {
    let rtpbin = webrtcbin
        .downcast_ref::<gst::Bin>()
        .and_then(|b| {
            b.iterate_elements()
                .into_iter()
                .filter_map(Result::ok)
                .find(|e| e.factory().is_some_and(|f| f.name() == "rtpbin"))
        })
        .ok_or("webrtcbin has no rtpbin")?;
    // One bundled transport: RTP session 0 carries the video.
    let session = rtpbin
        .emit_by_name::<Option<gst::glib::Object>>("get-internal-session", &[&0u32])
        .ok_or("no RTP session after negotiation")?;
    let heard = last_heard.clone();
    let rungs = rungs.map(|state| Arc::downgrade(&state));
    session.connect("on-receiving-rtcp", false, move |values| {
        *heard.lock().unwrap() = Instant::now();
        // The viewer's receiver reports feed its rung selector.
        if let Some(state) = rungs.as_ref().and_then(Weak::upgrade)
            && let Some(Ok(buffer)) = values.get(1).map(|v| v.get::<gst::Buffer>())
            && let Ok(map) = buffer.map_readable()
        {
            state.read_rtcp(&map);
        }
        None
    });
    Ok(())
}

/// A `{"type":"latency","p50_ms":..,"p95_ms":..}` report with plausible figures.
pub fn latency_report(message: &str) -> Option<ViewerLatency> {
    let value: serde_json::Value = serde_json::from_str(message).ok()?;
    if value.get("type")?.as_str()? != "latency" {
        return None;
    }
    let figure = |key: &str| {
        value
            .get(key)?
            .as_f64()
            .filter(|v| v.is_finite() && (-60_000.0..=600_000.0).contains(v))
    };
    Some(ViewerLatency {
        p50_ms: figure("p50_ms")?,
        p95_ms: figure("p95_ms")?,
    })
}

/// The question of a `{"type":"hand","text":"..."}` message; `None` for other messages.
pub fn hand_text(message: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(message).ok()?;
    if value.get("type")?.as_str()? != "hand" {
        return None;
    }
    let text = value.get("text").and_then(|t| t.as_str()).unwrap_or("");
    Some(text.chars().take(MAX_HAND_TEXT).collect())
}

/// Tears down sessions whose viewer fell silent, and ticks the rung selectors. Ends when the
/// output is dropped.
fn spawn_watchdog(inner: Weak<Inner>) {
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(RUNG_TICK);
            let Some(inner) = inner.upgrade() else {
                return;
            };
            tick_rungs(&inner);
            let timeout = inner.config.viewer_timeout;
            let connect_timeout = inner.config.connect_timeout;
            let silent: Vec<Session> = {
                let mut sessions = inner.sessions.lock().unwrap();
                let ids: Vec<String> = sessions
                    .iter()
                    .filter(|(_, s)| {
                        s.last_heard.lock().unwrap().elapsed() > timeout
                            || (!s.connected.load(Ordering::Relaxed)
                                && s.created.elapsed() > connect_timeout)
                    })
                    .map(|(id, _)| id.clone())
                    .collect();
                ids.iter().filter_map(|id| sessions.remove(id)).collect()
            };
            for session in silent {
                teardown(&inner, session);
            }
            if inner.freed.swap(false, Ordering::Relaxed) {
                release_free_memory();
            }
        }
    });
}

/// Whether `sdp` has a candidate a viewer can connect to: a UDP one or a passive TCP one. An
/// active TCP candidate (port 9) listens on nothing: libnice lists it even when every port of
/// the range is taken.
fn has_reachable_candidate(sdp: &str) -> bool {
    sdp.lines()
        .filter_map(|line| line.trim().strip_prefix("a=candidate:"))
        .any(|candidate| {
            let fields: Vec<&str> = candidate.split_whitespace().collect();
            match fields.get(2).map(|t| t.to_ascii_lowercase()) {
                Some(t) if t == "udp" => true,
                Some(t) if t == "tcp" => fields.windows(2).any(|w| w == ["tcptype", "passive"]),
                _ => false,
            }
        })
}

/// Sets the ICE agent of a session's `webrtcbin` (libnice, through the `GstWebRTCICE` object's
/// own properties) as the output is configured: the transports its candidates use, their port
/// range and, on loopback-only networks, the one address they are gathered on. Before
/// negotiation: libnice reads them when it gathers.
fn configure_ice(
    webrtcbin: &gst::Element,
    config: &WhepConfig,
) -> Result<(), gst::glib::BoolError> {
    let ice = webrtcbin.property::<gst::glib::Object>("ice-agent");
    for name in ["ice-tcp", "min-rtp-port", "max-rtp-port"] {
        if ice.find_property(name).is_none() {
            return Err(gst::glib::bool_error!(
                "webrtcbin's ICE agent has no {name} property (GStreamer 1.22's libnice agent has)"
            ));
        }
    }
    ice.set_property("ice-tcp", config.ice_tcp);
    if let Some(ports) = config.ice_ports {
        // In this order: libnice refuses a minimum above the maximum at every step, and the
        // maximum starts at 65535.
        ice.set_property("min-rtp-port", u32::from(ports.min));
        ice.set_property("max-rtp-port", u32::from(ports.max.max(ports.min)));
    }
    if config.loopback_ice {
        add_local_address(webrtcbin, "127.0.0.1")?;
    }
    if config.server_relay {
        let turn = config
            .ice_servers
            .iter()
            .find(|s| s.kind() == crate::turn::IceServerKind::Turn);
        if let (Some(turn), Some(auth)) = (turn, &config.turn) {
            let credential = crate::turn::TurnCredential::for_session(
                &auth.secret,
                auth.ttl,
                std::time::SystemTime::now(),
            );
            if let Some(uri) = turn.webrtcbin_turn_uri(&credential) {
                webrtcbin.set_property("turn-server", uri);
            }
        }
    }
    Ok(())
}

/// URI of the transport-wide congestion control RTP header extension.
const TWCC_URI: &str = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01";

/// Puts `rtpgccbwe` (Google congestion control over transport-wide CC feedback) in front of the
/// session's RTP session: its estimate of the bandwidth towards the viewer feeds the viewer's
/// rung selector. It paces the packets at the estimate, holding at most about 30 ms of them
/// (it sends the rest at once): a burst towards a slow link is spread rather than lost.
///
/// The estimate does not measure the link: any over-use (a key frame queued for a few tens of
/// ms behind a shallow link buffer, a delayed send on a busy machine) cuts it to 0.85× the
/// rate the viewer's feedback says arrived, and from below 1.5× that rate it climbs back
/// only to 1.5× it; above that it grows by 8 % a second until the next over-use, whatever
/// the link carries. Measured on 2026-12-07 behind tbf links: 0.3–1.4 Mbit/s on 5000
/// kbit/s links in one run, 4.5 Mbit/s on a 1500 kbit/s link in another. The selector is told
/// so (`SelectorConfig::estimate_capped`).
fn estimate_bandwidth(
    webrtcbin: &gst::Element,
    state: &Arc<RungState>,
) -> Result<(), gst::glib::BoolError> {
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    REGISTERED.call_once(|| {
        if gst::ElementFactory::find("rtpgccbwe").is_none() {
            // Only failure is a plugin registered twice: then it is there.
            let _ = gstrsrtp::plugin_register_static();
        }
    });
    let rungs = state.ladder.rungs();
    let top = rungs.first().map_or(2_500_000, |r| r.max_bps);
    let lowest = rungs.last().map_or(200_000, |r| r.max_bps);
    let start = state.selector.lock().unwrap().config().start_bps;
    let weak = Arc::downgrade(state);
    let (min, start, max) = (
        clamp_u32(lowest / 2),
        // Enough for the start rung with audio and headers: pacing below it would delay the
        // first seconds of every viewer.
        clamp_u32(start + start / 2),
        // Twice the top rung: enough to prove it comfortable, no more.
        clamp_u32(top * 2),
    );
    gst::ElementFactory::find("rtpgccbwe").ok_or_else(|| gst::glib::bool_error!("no rtpgccbwe"))?;
    webrtcbin.connect("request-aux-sender", false, move |_| {
        let bwe = gst::ElementFactory::make("rtpgccbwe")
            .property("min-bitrate", min)
            .property("estimated-bitrate", start)
            .property("max-bitrate", max)
            .build()
            .ok()?;
        let weak = weak.clone();
        bwe.connect_notify(Some("estimated-bitrate"), move |bwe, _| {
            if let Some(state) = weak.upgrade() {
                let bps = bwe.property::<u32>("estimated-bitrate");
                state.estimate(u64::from(bps));
            }
        });
        Some(bwe.to_value())
    });
    Ok(())
}

fn clamp_u32(bps: u64) -> u32 {
    u32::try_from(bps).unwrap_or(u32::MAX).max(1)
}

/// How often the rung selectors are fed (and silent viewers looked for).
const RUNG_TICK: Duration = Duration::from_millis(250);

/// Feeds every ladder session's selector what its viewer reported, then does what it decided:
/// asks the target rung for a key frame, tells the page and the hook of a completed switch.
/// The session table is only read under its lock; the GStreamer calls come after.
fn tick_rungs(inner: &Inner) {
    if inner.ladder.is_none() {
        return;
    }
    type Ticked = (
        Arc<RungState>,
        Vec<gst::Pad>,
        Option<gst_webrtc::WebRTCDataChannel>,
    );
    let ladder_sessions: Vec<Ticked> = inner
        .sessions
        .lock()
        .unwrap()
        .values()
        .filter_map(|s| {
            let (state, pads) = s.rungs.as_ref()?;
            let channel = s.channel.lock().unwrap().clone();
            Some((state.clone(), pads.clone(), channel))
        })
        .collect();
    let hook = inner.on_switch.lock().unwrap().clone();
    for (state, pads, channel) in ladder_sessions {
        let actions = state.tick();
        if let Some(pad) = actions.key_frame.and_then(|rung| pads.get(rung)) {
            request_key_frame(pad);
        }
        let open = channel.as_ref().filter(|c| {
            c.property::<gst_webrtc::WebRTCDataChannelState>("ready-state")
                == gst_webrtc::WebRTCDataChannelState::Open
        });
        // A page that opened its channel after the first tick still learns its rung.
        let message = match open {
            Some(_) if !state.told.swap(true, Ordering::Relaxed) => Some(state.message()),
            _ => actions.message,
        };
        if let (Some(channel), Some(message)) = (open, message)
            && channel.property::<u64>("buffered-amount") < MAX_ECHO_BACKLOG
        {
            channel.emit_by_name::<()>("send-string", &[&Some(message.as_str())]);
        }
        if let Some(switch) = actions.switched {
            inner.switches_total.fetch_add(1, Ordering::Relaxed);
            gst::debug!(
                crate::CAT,
                "a viewer went from rung {} to {} ({}), {:?} after the request",
                switch.from,
                switch.to,
                switch.reason,
                actions.switch_time.unwrap_or_default()
            );
            if let Some(hook) = &hook {
                hook(switch);
            }
        }
    }
}

/// Gives the heap pages freed by torn-down sessions back to the system. A session holds about
/// 1 MB (DTLS, SRTP, RTX storage, queues) spread over many threads' malloc arenas; glibc keeps
/// what they free, so after a crowd of viewers leaves the process would stay at its peak.
/// Called from the watchdog thread, at most every [`RUNG_TICK`], never from a streaming thread.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions; it only returns free pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A viewer slot held by an offer from before its branch is built until it is in the session
/// table or has failed; given back when dropped.
struct Slot<'a> {
    inner: &'a Inner,
}

impl<'a> Slot<'a> {
    fn take(inner: &'a Inner) -> Result<Self, WhepError> {
        let sessions = inner.sessions.lock().unwrap();
        if inner.closed.load(Ordering::SeqCst) {
            return Err(WhepError::Closed);
        }
        let taken = sessions.len() + inner.reserved.load(Ordering::SeqCst);
        if taken >= inner.config.max_sessions {
            return Err(WhepError::Full(taken));
        }
        inner.reserved.fetch_add(1, Ordering::SeqCst);
        Ok(Self { inner })
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        // Given back after the session is in the table: for a moment both count, which only
        // ever refuses an offer, never admits one too many.
        self.inner.reserved.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Lets at most one key-frame request per `interval` leave `tee` for the encoder upstream. A
/// request that comes sooner is dropped and one is sent in its place when the interval ends
/// (one for all that came in between): the viewers that asked get their key frame, a little
/// later.
fn coalesce_key_frame_requests(tee: &gst::Element, interval: Duration) {
    let Some(sink) = tee.static_pad("sink") else {
        return;
    };
    let gate = Arc::new(Mutex::new(KeyFrameGate::default()));
    sink.add_probe(gst::PadProbeType::EVENT_UPSTREAM, move |pad, info| {
        let Some(event) = info.event() else {
            return gst::PadProbeReturn::Ok;
        };
        if gst_video::UpstreamForceKeyUnitEvent::parse(event).is_err() {
            return gst::PadProbeReturn::Ok;
        }
        let mut state = gate.lock().unwrap();
        let now = Instant::now();
        let wait = match state.passed {
            Some(passed) if now.duration_since(passed) < interval => {
                interval - now.duration_since(passed)
            }
            _ => {
                state.passed = Some(now);
                return gst::PadProbeReturn::Ok;
            }
        };
        if !state.held {
            state.held = true;
            let (pad, gate) = (pad.downgrade(), Arc::downgrade(&gate));
            // Not from this (streaming) thread, which must not wait; at most one such thread
            // per interval and tee.
            std::thread::spawn(move || {
                std::thread::sleep(wait);
                let (Some(pad), Some(gate)) = (pad.upgrade(), gate.upgrade()) else {
                    return;
                };
                gate.lock().unwrap().held = false;
                // Through this probe again, which lets it pass: the interval is over.
                pad.push_event(
                    gst_video::UpstreamForceKeyUnitEvent::builder()
                        .all_headers(true)
                        .build(),
                );
            });
        }
        // Taken and handled rather than dropped: GStreamer 1.22 unrefs an upstream event
        // dropped by a probe twice (a CRITICAL per held request).
        let _ = info.data.take();
        gst::PadProbeReturn::Handled
    });
}

/// See [`coalesce_key_frame_requests`].
#[derive(Default)]
struct KeyFrameGate {
    /// When a request last went through.
    passed: Option<Instant>,
    /// A request is held back, to be sent when the interval ends.
    held: bool,
}

fn request_key_frame(tee_pad: &gst::Pad) {
    let event = gst_video::UpstreamForceKeyUnitEvent::builder()
        .all_headers(true)
        .build();
    tee_pad.send_event(event);
}

fn teardown(inner: &Inner, session: Session) {
    let Session { bin, tee_pads, .. } = session;
    for (tee, tee_pad) in &tee_pads {
        if let Some(peer) = tee_pad.peer() {
            let _ = tee_pad.unlink(&peer);
        }
        tee.release_request_pad(tee_pad);
    }
    let _ = bin.set_state(gst::State::Null);
    let _ = inner.pipeline.remove(&bin);
    inner.freed.store(true, Ordering::Relaxed);
    gst::debug!(crate::CAT, "viewer session ended and freed");
}

/// Sets the offer, creates and sets the answer, waits for ICE gathering, returns the answer SDP.
fn negotiate(
    webrtcbin: &gst::Element,
    offer: gst_sdp::SDPMessage,
    gather_timeout: Duration,
) -> Result<String, String> {
    let offer = gst_webrtc::WebRTCSessionDescription::new(WebRTCSDPType::Offer, offer);
    let promise = gst::Promise::new();
    webrtcbin.emit_by_name::<()>("set-remote-description", &[&offer, &promise]);
    wait_promise(&promise, "set-remote-description")?;

    let promise = gst::Promise::new();
    webrtcbin.emit_by_name::<()>("create-answer", &[&None::<gst::Structure>, &promise]);
    let reply = wait_promise(&promise, "create-answer")?;
    let answer = reply
        .and_then(|r| r.get::<gst_webrtc::WebRTCSessionDescription>("answer").ok())
        .ok_or("webrtcbin created no answer (no codec in common?)")?;

    set_local_description(webrtcbin, &answer, gather_timeout)
}

/// Sets `description` as `webrtcbin`'s local description, waits up to `gather_timeout` for ICE
/// gathering to complete and returns the local SDP with the candidates gathered by then (what a
/// peer without trickle ICE, such as a WHEP/WHIP exchange or a Janus answer, needs).
pub fn set_local_description(
    webrtcbin: &gst::Element,
    description: &gst_webrtc::WebRTCSessionDescription,
    gather_timeout: Duration,
) -> Result<String, String> {
    let gathered = Arc::new((Mutex::new(false), Condvar::new()));
    let signal = gathered.clone();
    let handler = webrtcbin.connect_notify(Some("ice-gathering-state"), move |webrtcbin, _| {
        let state = webrtcbin.property::<WebRTCICEGatheringState>("ice-gathering-state");
        if state == WebRTCICEGatheringState::Complete {
            *signal.0.lock().unwrap() = true;
            signal.1.notify_all();
        }
    });
    let promise = gst::Promise::new();
    webrtcbin.emit_by_name::<()>("set-local-description", &[description, &promise]);
    let set = wait_promise(&promise, "set-local-description");
    if set.is_ok() {
        let complete = webrtcbin.property::<WebRTCICEGatheringState>("ice-gathering-state")
            == WebRTCICEGatheringState::Complete;
        let (lock, cvar) = &*gathered;
        let done = lock.lock().unwrap();
        if !complete {
            let _ = cvar.wait_timeout_while(done, gather_timeout, |done| !*done);
        }
    }
    webrtcbin.disconnect(handler);
    set?;
    let local = webrtcbin
        .property::<Option<gst_webrtc::WebRTCSessionDescription>>("local-description")
        .ok_or("no local description")?;
    local.sdp().as_text().map_err(|e| format!("local SDP: {e}"))
}

fn wait_promise(promise: &gst::Promise, what: &str) -> Result<Option<gst::Structure>, String> {
    match promise.wait() {
        gst::PromiseResult::Replied => {
            let reply = promise.get_reply().map(|r| r.to_owned());
            if let Some(err) = reply
                .as_ref()
                .and_then(|r| r.get::<gst::glib::Error>("error").ok())
            {
                return Err(format!("{what}: {err}"));
            }
            Ok(reply)
        }
        other => Err(format!("{what}: {other:?}")),
    }
}

/// A random RTP SSRC.
fn random_u32() -> u32 {
    let id = session_id();
    u32::from_str_radix(&id[..8], 16).unwrap_or(0x6879_6272)
}

/// 128 random bits as hex: the resource URL is the only credential of a viewer session.
fn session_id() -> String {
    random_hex(16)
}

/// `len` random bytes as hex.
pub(crate) fn random_hex(len: usize) -> String {
    let mut bytes = vec![0u8; len];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_err()
    {
        // No urandom: fall back to time and address entropy (ids stay unique, less secret).
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let seed = (t ^ (bytes.as_ptr() as u128)).to_le_bytes();
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = seed[i % seed.len()];
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
