// SPDX-License-Identifier: MPL-2.0

//! GStreamer glue of `abrcontroller`: gathers signals, runs [`Controller`] on a clock tick and
//! applies its decisions to the encoder and the capsfilter.
//!
//! Lock order: `settings` before `state`. Neither is held while touching other elements
//! (property reads and writes, events, `get-stats`) or posting messages.

use std::collections::VecDeque;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::prelude::*;
use hybridlive_encoders::{Encoder, find_upstream_encoder};

use super::checked;
use crate::ESTIMATE_EVENT;
use crate::controller::{Config, Controller, Decision, Observation, Reason};
use crate::ladder::{Ladder, Rung};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "abrcontroller",
        gst::DebugColorFlags::empty(),
        Some("Adaptive bitrate controller"),
    )
});

const DEFAULT_MIN_BITRATE: u32 = 150_000;
const DEFAULT_MAX_BITRATE: u32 = 6_000_000;
const DEFAULT_START_BITRATE: u32 = 0;
const FALLBACK_START_BITRATE: u64 = 2_000_000;
const DEFAULT_INTERVAL_MS: u32 = 100;
const DEFAULT_LOSS_THRESHOLD: f64 = 0.10;
const DEFAULT_RTT_THRESHOLD_MS: u32 = 100;
const DEFAULT_BACKLOG_THRESHOLD_MS: u32 = 200;
const DEFAULT_RUNG_UP_HOLD_MS: u32 = 4000;
const DEFAULT_VBV_CAPACITY_MS: u32 = 250;
/// Rate-control buffer right after a decrease, milliseconds of the new rate...
const TIGHT_VBV_MS: u32 = 100;
/// ...for this long: the encoder meets the new rate within a few frames instead of spending
/// a buffer filled at the old one, and a key frame in that time stays small.
const TIGHT_VBV_TIME: gst::ClockTime = gst::ClockTime::from_mseconds(1500);
/// An SRT loss report covers at least this many packets...
const SRT_REPORT_PACKETS: f64 = 30.0;
/// ...or this much time.
const SRT_REPORT_PERIOD: gst::ClockTime = gst::ClockTime::from_mseconds(250);
/// Highest loss fraction an SRT report counts as (see where it is used).
const SRT_LOSS_CAP: f64 = 0.5;
/// Span over which the receiver's SRT acknowledgements are counted.
const SRT_ACK_WINDOW: gst::ClockTime = gst::ClockTime::from_mseconds(300);
/// An SRT receiver acknowledges at most every 10 ms, and more than one packet at a time once
/// packets come faster than a few dozen per second: only below this many acknowledgements
/// per second is one acknowledgement one delivered packet.
const SRT_ACKS_COUNTABLE: f64 = 40.0;
/// Share of a muxed stream's bytes that is container overhead (MPEG-TS headers, PES, PCR).
const SRT_MUX_OVERHEAD: f64 = 0.05;
/// Acknowledgements per fresh packet sent below which the link delivers less than is sent.
const SRT_ACK_SHORTFALL: f64 = 0.6;

#[derive(Debug, Clone)]
struct Settings {
    encoder: Option<gst::Element>,
    encoder_name: Option<String>,
    capsfilter: Option<gst::Element>,
    capsfilter_name: Option<String>,
    webrtcbin: Option<gst::Element>,
    webrtcbin_name: Option<String>,
    srtsink: Option<gst::Element>,
    srtsink_name: Option<String>,
    rtpbin: Option<gst::Element>,
    rtpbin_name: Option<String>,
    queue: Option<gst::Element>,
    queue_name: Option<String>,
    estimator: Option<gst::Element>,
    estimator_name: Option<String>,
    ladder: Ladder,
    min_bitrate: u32,
    max_bitrate: u32,
    start_bitrate: u32,
    interval: u32,
    loss_threshold: f64,
    rtt_threshold: u32,
    backlog_threshold: u32,
    rung_up_hold: u32,
    vbv_capacity: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            encoder: None,
            encoder_name: None,
            capsfilter: None,
            capsfilter_name: None,
            webrtcbin: None,
            webrtcbin_name: None,
            srtsink: None,
            srtsink_name: None,
            rtpbin: None,
            rtpbin_name: None,
            queue: None,
            queue_name: None,
            estimator: None,
            estimator_name: None,
            ladder: Ladder::default(),
            min_bitrate: DEFAULT_MIN_BITRATE,
            max_bitrate: DEFAULT_MAX_BITRATE,
            start_bitrate: DEFAULT_START_BITRATE,
            interval: DEFAULT_INTERVAL_MS,
            loss_threshold: DEFAULT_LOSS_THRESHOLD,
            rtt_threshold: DEFAULT_RTT_THRESHOLD_MS,
            backlog_threshold: DEFAULT_BACKLOG_THRESHOLD_MS,
            rung_up_hold: DEFAULT_RUNG_UP_HOLD_MS,
            vbv_capacity: DEFAULT_VBV_CAPACITY_MS,
        }
    }
}

impl Settings {
    fn config(&self, with_ladder: bool, start_bps: u64) -> Config {
        let defaults = Config::default();
        Config {
            min_bps: self.min_bitrate as u64,
            max_bps: self.max_bitrate as u64,
            start_bps,
            loss_high: self.loss_threshold,
            loss_low: (self.loss_threshold / 5.0).min(defaults.loss_low),
            rtt_threshold: Duration::from_millis(self.rtt_threshold as u64),
            backlog_threshold: Duration::from_millis(self.backlog_threshold as u64),
            rung_up_hold: Duration::from_millis(self.rung_up_hold as u64),
            ladder: with_ladder.then(|| self.ladder.clone()),
            ..defaults
        }
    }
}

/// Signals carried by `abr-estimate` events since the last tick.
#[derive(Debug, Clone, Copy, Default)]
struct EventSignals {
    /// Persists until replaced: an estimate stays valid until a newer one arrives.
    estimate_bps: Option<u64>,
    loss: Option<f64>,
    rtt: Option<Duration>,
    jitter: Option<Duration>,
    backlog: Option<Duration>,
    backlog_bytes: Option<u64>,
}

/// Transport-wide CC feedback as rtpbin sends it upstream (`RTPTWCCPackets` events, one
/// per feedback packet, every few frames): per packet, lost or when it arrived.
#[derive(Debug, Default)]
struct TwccWindow {
    /// Packets reported, and of those lost, since the last report was taken.
    reported: u64,
    lost: u64,
    /// Arrival time (receiver clock, ns) of the last packet received.
    last_arrival: Option<u64>,
    /// Since the first loss of this report, or its start while a loss run goes on: first
    /// and last arrival, bytes arrived.
    since_loss: Option<(u64, u64, u64)>,
}

/// Name of rtpbin's upstream event with the TWCC feedback of each sent packet.
const TWCC_EVENT: &str = "RTPTWCCPackets";
/// A TWCC report covers at least this many packets (75 ms at 4 Mbit/s, 300 ms at 1):
/// a key frame's burst losing its tail within a tick's few packets is not a link at 10 %
/// loss.
const TWCC_REPORT_PACKETS: u64 = 30;
/// TWCC feedback this recent makes the receiver reports' loss redundant.
const TWCC_FRESH: gst::ClockTime = gst::ClockTime::from_seconds(1);
/// Shortest arrival span a delivery rate is measured over.
const TWCC_RATE_SPAN: u64 = 40_000_000;

impl TwccWindow {
    fn add(&mut self, packets: &[gst::Structure]) {
        for packet in packets {
            self.reported += 1;
            let lost = packet.get::<bool>("lost").unwrap_or(false);
            let arrival = packet
                .get::<u64>("remote-ts")
                .ok()
                .filter(|&t| t != u64::MAX);
            match (lost, arrival) {
                (true, _) | (false, None) => {
                    self.lost += lost as u64;
                    if lost
                        && self.since_loss.is_none()
                        && let Some(at) = self.last_arrival
                    {
                        self.since_loss = Some((at, at, 0));
                    }
                }
                (false, Some(at)) => {
                    self.last_arrival = Some(at);
                    if let Some((first, last, bytes)) = &mut self.since_loss {
                        *last = (*last).max(at);
                        *first = (*first).min(at);
                        *bytes += packet.get::<u32>("size").unwrap_or(0) as u64;
                    }
                }
            }
        }
    }

    /// Loss fraction and, when packets were lost, the rate that arrived since the first
    /// loss of the report: what a policer or a full link lets through. `None` until
    /// enough packets.
    fn take(&mut self) -> Option<(f64, Option<u64>)> {
        if self.reported < TWCC_REPORT_PACKETS {
            return None;
        }
        let loss = self.lost as f64 / self.reported as f64;
        let delivered = self
            .since_loss
            .filter(|&(first, last, _)| last.saturating_sub(first) >= TWCC_RATE_SPAN)
            .map(|(first, last, bytes)| (bytes as f64 * 8e9 / (last - first) as f64) as u64);
        // The next report measures afresh: from its end if the run goes on. A run measured
        // as a whole would carry on past a cut into what the encoder sends after it, and
        // each report's ceiling would walk the target down with it.
        self.since_loss = match (self.lost, self.last_arrival) {
            (0, _) | (_, None) => None,
            (_, Some(at)) => Some((at, at, 0)),
        };
        self.reported = 0;
        self.lost = 0;
        Some((loss, delivered))
    }
}

/// Latest parsed `webrtcbin` statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct WebrtcReport {
    loss: Option<f64>,
    rtt: Option<Duration>,
    jitter: Option<Duration>,
    packets_lost: Option<i64>,
    estimate_bps: Option<u64>,
}

#[derive(Debug, Default)]
struct Counters {
    ticks: u64,
    decreases: u64,
    increases: u64,
    rung_changes: u64,
    last: Option<Decision>,
    last_inputs: Observation,
}

#[derive(Default)]
struct State {
    running: bool,
    /// Which start of ticking the scheduled tick belongs to: a tick of an earlier start
    /// (still running on the clock's thread while the element paused and resumed) must not
    /// schedule another, or two chains would tick.
    generation: u64,
    clock_id: Option<gst::SingleShotClockId>,
    controller: Option<Controller>,
    last_tick: Option<gst::ClockTime>,
    bytes: u64,
    /// Bytes passed through since the start (for the stream's share of an SRT connection).
    bytes_total: u64,
    upstream_encoder: Option<gst::Element>,
    webrtc_latest: Option<WebrtcReport>,
    webrtc_used: Option<WebrtcReport>,
    rtp_used: Option<WebrtcReport>,
    twcc: TwccWindow,
    /// When the last TWCC report was taken.
    twcc_report_at: Option<gst::ClockTime>,
    stats_pending: bool,
    /// Sent and lost packet counters and clock time at the start of the SRT loss window.
    srt_previous: Option<SrtCounters>,
    /// The counters of the last second, to count acknowledgements over `SRT_ACK_WINDOW`.
    srt_recent: VecDeque<SrtCounters>,
    /// The srtsink those counters belong to: a new one (an output restarted) counts from 0.
    srt_element: Option<gst::Element>,
    srt_bandwidth: Option<u64>,
    /// Until when the encoder's rate-control buffer is kept tight after a decrease.
    tight_vbv_until: Option<gst::ClockTime>,
    events: EventSignals,
    counters: Counters,
    warned: Vec<String>,
}

#[derive(glib::Properties, Default)]
#[properties(wrapper_type = super::AbrController)]
pub struct AbrController {
    #[property(name = "encoder", nick = "Encoder",
        blurb = "Encoder whose bitrate is controlled (NULL: encoder-name, else the first known encoder upstream)",
        get, set, type = Option<gst::Element>, member = encoder)]
    #[property(name = "encoder-name", nick = "Encoder name",
        blurb = "Name of the encoder element in the pipeline, used when encoder is NULL",
        get, set, type = Option<String>, member = encoder_name)]
    #[property(name = "capsfilter", nick = "Capsfilter",
        blurb = "Capsfilter after videoscale/videorate that receives each rung's resolution and framerate (NULL: bitrate only)",
        get, set, type = Option<gst::Element>, member = capsfilter)]
    #[property(name = "capsfilter-name", nick = "Capsfilter name",
        blurb = "Name of the capsfilter element in the pipeline, used when capsfilter is NULL",
        get, set, type = Option<String>, member = capsfilter_name)]
    #[property(name = "webrtcbin", nick = "webrtcbin",
        blurb = "webrtcbin whose statistics (remote-inbound-rtp loss, RTT, jitter; TWCC) are followed",
        get, set, type = Option<gst::Element>, member = webrtcbin)]
    #[property(name = "webrtcbin-name", nick = "webrtcbin name",
        blurb = "Name of the webrtcbin in the pipeline, used when webrtcbin is NULL",
        get, set, type = Option<String>, member = webrtcbin_name)]
    #[property(name = "srtsink", nick = "srtsink",
        blurb = "srtsink whose statistics (RTT, loss) are followed; its bandwidth estimate is shown in stats only",
        get, set, type = Option<gst::Element>, member = srtsink)]
    #[property(name = "srtsink-name", nick = "srtsink name",
        blurb = "Name of the srtsink in the pipeline, used when srtsink is NULL",
        get, set, type = Option<String>, member = srtsink_name)]
    #[property(name = "rtpbin", nick = "rtpbin",
        blurb = "rtpbin whose sessions' RTCP receiver reports (fraction lost, round-trip time, jitter) are followed",
        get, set, type = Option<gst::Element>, member = rtpbin)]
    #[property(name = "rtpbin-name", nick = "rtpbin name",
        blurb = "Name of the rtpbin in the pipeline, used when rtpbin is NULL",
        get, set, type = Option<String>, member = rtpbin_name)]
    #[property(name = "queue", nick = "Backlog queue",
        blurb = "queue between the encoder and a TCP-like sink; its fill level is the send backlog",
        get, set, type = Option<gst::Element>, member = queue)]
    #[property(name = "queue-name", nick = "Backlog queue name",
        blurb = "Name of the backlog queue in the pipeline, used when queue is NULL",
        get, set, type = Option<String>, member = queue_name)]
    #[property(name = "estimator", nick = "Estimator",
        blurb = "Element with an estimated-bitrate property in bit/s (e.g. rtpgccbwe), used as a ceiling",
        get, set, type = Option<gst::Element>, member = estimator)]
    #[property(name = "estimator-name", nick = "Estimator name",
        blurb = "Name of the estimator element in the pipeline, used when estimator is NULL",
        get, set, type = Option<String>, member = estimator_name)]
    #[property(name = "ladder", nick = "Ladder",
        blurb = "Rungs 'WIDTHxHEIGHT@FPS:MIN-MAX' (kbit/s) separated by ';', applied through capsfilter",
        get = Self::ladder, set = Self::set_ladder, type = String)]
    #[property(name = "min-bitrate", nick = "Minimum bitrate",
        blurb = "Lowest bitrate given to the encoder, in bit/s",
        get, set, type = u32, member = min_bitrate, minimum = 1000, default = DEFAULT_MIN_BITRATE)]
    #[property(name = "max-bitrate", nick = "Maximum bitrate",
        blurb = "Highest bitrate given to the encoder, in bit/s",
        get, set, type = u32, member = max_bitrate, minimum = 1000, default = DEFAULT_MAX_BITRATE)]
    #[property(name = "start-bitrate", nick = "Start bitrate",
        blurb = "Bitrate at start, in bit/s (0: the encoder's configured bitrate)",
        get, set, type = u32, member = start_bitrate, default = DEFAULT_START_BITRATE)]
    #[property(name = "interval", nick = "Interval",
        blurb = "Time between two decisions, in milliseconds (10-1000)",
        get, set, type = u32, member = interval, minimum = 10, maximum = 1000, default = DEFAULT_INTERVAL_MS)]
    #[property(name = "loss-threshold", nick = "Loss threshold",
        blurb = "Loss fraction (0-1) that cuts the bitrate; a fifth of it (at most 0.02) holds it",
        get, set, type = f64, member = loss_threshold, minimum = 0.0, maximum = 1.0, default = DEFAULT_LOSS_THRESHOLD)]
    #[property(name = "rtt-threshold", nick = "RTT threshold",
        blurb = "Queuing delay (RTT above its 30 s minimum) that cuts the bitrate, in milliseconds (1-60000)",
        get, set, type = u32, member = rtt_threshold, minimum = 1, maximum = 60_000, default = DEFAULT_RTT_THRESHOLD_MS)]
    #[property(name = "backlog-threshold", nick = "Backlog threshold",
        blurb = "Growing send backlog that cuts the bitrate, in milliseconds (1-60000)",
        get, set, type = u32, member = backlog_threshold, minimum = 1, maximum = 60_000, default = DEFAULT_BACKLOG_THRESHOLD_MS)]
    #[property(name = "rung-up-hold", nick = "Rung up hold",
        blurb = "How long the bitrate must afford the next rung before climbing to it, in milliseconds (0-600000); half of it once the link carried the rung's rate (then several rungs at once)",
        get, set, type = u32, member = rung_up_hold, maximum = 600_000, default = DEFAULT_RUNG_UP_HOLD_MS)]
    #[property(name = "vbv-capacity", nick = "VBV capacity",
        blurb = "Rate-control buffer the encoder is given, in milliseconds of its bitrate (0: leave the encoder's; only encoders whose table row names one, e.g. x264enc vbv-buf-capacity): bounds how far a key frame bursts above the link's rate (0-10000)",
        get, set, type = u32, member = vbv_capacity, maximum = 10_000, default = DEFAULT_VBV_CAPACITY_MS)]
    settings: Mutex<Settings>,
    state: Mutex<State>,
}

#[glib::object_subclass]
impl ObjectSubclass for AbrController {
    const NAME: &'static str = "GstAbrController";
    type Type = super::AbrController;
    type ParentType = gst_base::BaseTransform;
}

impl ObjectImpl for AbrController {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            let mut props = AbrController::derived_properties().to_vec();
            props.push(
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb(
                        "abr-stats structure: target-bitrate and bitrate (bit/s), rung, \
                         ticks, decreases, increases, rung-changes, last-reason, inputs",
                    )
                    .read_only()
                    .build(),
            );
            props
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        self.derived_set_property(id, value, pspec)
    }

    fn property(&self, id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        match pspec.name() {
            "stats" => self.stats().to_value(),
            _ => self.derived_property(id, pspec),
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        self.obj().set_passthrough(true);
    }
}

impl GstObjectImpl for AbrController {}

impl ElementImpl for AbrController {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "Adaptive bitrate controller",
                "Filter/Network/Video/Audio",
                "Pass-through element that steers an encoder's bitrate and, through a \
                 capsfilter, its resolution and framerate from congestion signals. \
                 Inputs: webrtcbin stats (remote-inbound-rtp fraction-lost, \
                 round-trip-time, jitter; gst-twcc-stats), rtpbin RTCP receiver \
                 reports (while TWCC feedback comes, their loss holds but never cuts), \
                 transport-wide CC feedback (the RTPTWCCPackets events rtpbin and \
                 webrtcbin send upstream when the payloader writes the TWCC header \
                 extension: loss over at least 30 packets, counted from loss-threshold \
                 up, and the rate that arrived since the first loss of the report, or \
                 over the whole report while a loss run goes on, as the delivery rate), \
                 srtsink stats (rtt-ms; \
                 packets-sent-lost over at least 30 packets and 250 ms, counted as at most \
                 50 % loss since SRT retransmits; bytes-sent minus the share lost, scaled \
                 to this stream's part of the connection, as the delivery rate; \
                 packet-ack-received over 300 ms, when fewer than 40 a second and fewer \
                 than 0.6 per fresh packet sent, times the mean packet size, less 5 % muxing \
                 overhead and less the rate of the connection's other streams, as the \
                 acknowledged rate; bandwidth-mbps only shown in stats), the fill level of a queue before a \
                 TCP-like sink, the estimated-bitrate of an estimator such as rtpgccbwe, \
                 and 'abr-estimate' custom events (upstream or downstream) with optional \
                 fields bitrate (bit/s), loss (0-1), rtt, jitter, backlog (ns) and \
                 backlog-bytes. Algorithm, every interval: DECREASE on the first tick \
                 with clear congestion to the lowest ceiling proposed by the signals \
                 (loss >= loss-threshold: x(1-loss/2), 0.5..0.95, and 90% of what \
                 got through: the transport's delivery rate, else the send rate over the \
                 reported period x(1-loss); loss above a fifth of \
                 that threshold in 3 reports in a row: 97% of what got through; queuing delay >= \
                 rtt-threshold and not shrinking: /(1+g) where g is the delay's growth \
                 in s/s since the previous sample, x0.5..x0.85; backlog >= backlog-threshold \
                 and growing: 85% of its drain rate; an acknowledged rate while the \
                 queuing delay is at least half of rtt-threshold: 90% of the highest \
                 reading within max(2 RTT, 300 ms) of the previous one, and for that hold-off \
                 plus one RTT after the last one loss only holds and delay cuts by no factor; an estimate below \
                 the target: the estimate), one multiplicative cut per max(2 RTT, 300 ms) after the \
                 previous multiplicative cut and not while \
                 the encoder still sends 1.15x the new target (up to 1 s); after any cut \
                 the encoder's rate-control buffer is 100 ms (at most vbv-capacity) for \
                 1.5 s; HOLD while a \
                 signal is elevated and for 1 s after a cut; INCREASE by probing, one step \
                 per max(300 ms, 2 RTT), +8% growing 8 points per clear step to +45%, \
                 stopping at 95% of the rate where congestion was last seen and at most \
                 +4% from there to 105% of it (that rate raised to r/(1-s) when, within 5 s \
                 of a cut, the queuing delay drains at s s/s while r is sent), never \
                 above max-bitrate, the estimate or 1.5x the measured encoder output, and \
                 no step while the encoder sends less than 70% of the last one. \
                 Rungs: down on the tick the target falls below the rung minimum; up one \
                 rung after the target has stayed at 1.15x the next rung's minimum for \
                 rung-up-hold, or, once the target has been above 105% of the rate where \
                 congestion was last seen with every signal clear for half of \
                 rung-up-hold, straight to the highest rung whose 1.15x minimum both the \
                 target and the smoothed send rate (for 300 ms) cover, however many rungs \
                 up (that time is not restarted by a climb: holds do not stack); each rung change sets the capsfilter caps and forces a \
                 key frame, and so does the end of a loss episode that cut the bitrate (first report \
                 under loss-threshold once the encoder follows). Element message abr-decision, posted at start and on every change of bitrate or rung, \
                 with fields: time (guint64 ns, clock time), running-time (guint64 ns), inputs \
                 (GstStructure abr-inputs: sent-bitrate guint bit/s, loss double 0-1, rtt, \
                 jitter and backlog guint64 ns, backlog-bytes guint64, estimate, \
                 delivered-bitrate and acked-bitrate guint bit/s; only the signals present), estimate (guint bit/s, when an estimator or event \
                 gave one), target-bitrate, bitrate (what the encoder was given) and \
                 previous-bitrate (guint bit/s), rung (gint, index in the ladder, -1 without \
                 one), rung-changed and key-frame (gboolean), direction (string: decrease, \
                 hold, increase), reason (string: start, loss, rtt, delivery, backlog, \
                 estimate, caution, steady, probe, limit), encoder (string, its name), and width, height \
                 (gint) and framerate (fraction) of the rung. The stats property is an \
                 abr-stats structure with the running totals.",
                "The hybridlive developers",
            )
        });
        Some(&*METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            let caps = gst::Caps::new_any();
            vec![
                gst::PadTemplate::new(
                    "sink",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Always,
                    &caps,
                )
                .expect("sink template"),
                gst::PadTemplate::new(
                    "src",
                    gst::PadDirection::Src,
                    gst::PadPresence::Always,
                    &caps,
                )
                .expect("src template"),
            ]
        });
        TEMPLATES.as_ref()
    }

    fn change_state(
        &self,
        transition: gst::StateChange,
    ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        if transition == gst::StateChange::PlayingToPaused {
            self.stop_ticking();
        }
        let ret = self.parent_change_state(transition)?;
        match transition {
            gst::StateChange::PausedToPlaying => self.start_ticking(),
            gst::StateChange::PausedToReady => {
                self.stop_ticking();
                *self.state.lock().unwrap() = State::default();
            }
            _ => {}
        }
        Ok(ret)
    }
}

impl BaseTransformImpl for AbrController {
    const MODE: gst_base::subclass::BaseTransformMode =
        gst_base::subclass::BaseTransformMode::AlwaysInPlace;
    const PASSTHROUGH_ON_SAME_CAPS: bool = false;
    const TRANSFORM_IP_ON_PASSTHROUGH: bool = true;

    fn transform_ip_passthrough(
        &self,
        buffer: &gst::Buffer,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let mut state = self.state.lock().unwrap();
        state.bytes += buffer.size() as u64;
        state.bytes_total += buffer.size() as u64;
        Ok(gst::FlowSuccess::Ok)
    }

    fn sink_event(&self, event: gst::Event) -> bool {
        self.take_estimate_event(&event);
        self.parent_sink_event(event)
    }

    fn src_event(&self, event: gst::Event) -> bool {
        self.take_estimate_event(&event);
        self.parent_src_event(event)
    }
}

/// The elements a tick works with, resolved from the settings.
#[derive(Default)]
struct Targets {
    encoder: Option<gst::Element>,
    capsfilter: Option<gst::Element>,
    webrtcbin: Option<gst::Element>,
    srtsink: Option<gst::Element>,
    rtpbin: Option<gst::Element>,
    queue: Option<gst::Element>,
    estimator: Option<gst::Element>,
}

impl AbrController {
    fn ladder(&self) -> String {
        self.settings.lock().unwrap().ladder.to_string()
    }

    fn set_ladder(&self, text: String) {
        match Ladder::parse(&text) {
            Ok(ladder) => self.settings.lock().unwrap().ladder = ladder,
            Err(err) => {
                gst::error!(CAT, imp = self, "Ignoring ladder '{text}': {err}");
                gst::element_imp_warning!(
                    self,
                    gst::LibraryError::Settings,
                    ("Invalid ladder, keeping the previous one"),
                    ["{err}"]
                );
            }
        }
    }

    fn stats(&self) -> gst::Structure {
        let state = self.state.lock().unwrap();
        let c = &state.counters;
        let mut s = gst::Structure::builder("abr-stats")
            .field("ticks", c.ticks)
            .field("decreases", c.decreases)
            .field("increases", c.increases)
            .field("rung-changes", c.rung_changes)
            .build();
        if let Some(controller) = &state.controller {
            s.set("target-bitrate", clamp_u32(controller.target_bps()));
            s.set("bitrate", clamp_u32(controller.encoder_bps()));
            s.set("rung", controller.rung().map_or(-1, |r| r as i32));
        }
        if let Some(last) = &c.last {
            s.set("last-reason", last.reason.as_str());
            s.set("last-direction", last.direction.as_str());
        }
        s.set("inputs", inputs_structure(&c.last_inputs));
        if let Some(bps) = state.srt_bandwidth {
            s.set("srt-bandwidth", clamp_u32(bps));
        }
        s
    }

    fn start_ticking(&self) {
        let Some(clock) = self.obj().clock() else {
            gst::warning!(CAT, imp = self, "No clock, cannot run");
            return;
        };
        let generation = {
            let mut state = self.state.lock().unwrap();
            state.running = true;
            state.generation += 1;
            state.generation
        };
        let interval = self.settings.lock().unwrap().interval;
        let first = clock.time() + gst::ClockTime::from_mseconds(interval as u64);
        self.schedule(&clock, first, generation);
    }

    fn stop_ticking(&self) {
        let id = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state.running = false;
            state.generation += 1;
            state.clock_id.take()
        };
        if let Some(id) = id {
            id.unschedule();
        }
    }

    fn schedule(&self, clock: &gst::Clock, at: gst::ClockTime, generation: u64) {
        let id = clock.new_single_shot_id(at);
        let weak = self.obj().downgrade();
        let result = id.wait_async(move |clock, time, _id| {
            if let Some(obj) = weak.upgrade() {
                obj.imp()
                    .on_clock(clock, time.unwrap_or(gst::ClockTime::ZERO), generation);
            }
        });
        if let Err(err) = result {
            gst::warning!(CAT, imp = self, "Cannot wait on the clock: {err:?}");
            return;
        }
        let mut state = self.state.lock().unwrap();
        if state.running && state.generation == generation {
            state.clock_id = Some(id);
        } else {
            drop(state);
            id.unschedule();
        }
    }

    fn is_current(&self, generation: u64) -> bool {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.running && state.generation == generation
    }

    fn on_clock(&self, clock: &gst::Clock, time: gst::ClockTime, generation: u64) {
        if !self.is_current(generation) {
            return;
        }
        // The clock's thread cannot unwind: a panic there aborts the whole process. Elements
        // named by the user are checked before use; anything missed stops the controller
        // with an error instead.
        let ticked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.tick(time)));
        if let Err(panic) = ticked {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            self.stop_ticking();
            gst::element_imp_error!(
                self,
                gst::CoreError::Failed,
                ["Bitrate control stopped: {what}"]
            );
            return;
        }
        let interval = gst::ClockTime::from_mseconds(self.settings.lock().unwrap().interval as u64);
        // Never try to catch up on missed ticks: the next one is one interval from now at most.
        let next = (time + interval).max(clock.time().min(time + interval * 10));
        if self.is_current(generation) {
            self.schedule(clock, next, generation);
        }
    }

    /// Warns once that `role` (e.g. "queue") points at something it cannot use.
    fn unusable(&self, role: &str, err: String) {
        self.warn_once(format!("{role}:{err}"), format!("{role}: {err}; not used"));
    }

    /// The value of a checked read, warning once when it failed.
    fn usable<T>(&self, role: &str, read: Result<T, String>) -> Option<T> {
        read.map_err(|err| self.unusable(role, err)).ok()
    }

    fn warn_once(&self, key: String, text: String) {
        {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if state.warned.contains(&key) {
                return;
            }
            state.warned.push(key);
        }
        gst::warning!(CAT, imp = self, "{text}");
        gst::element_imp_warning!(self, gst::LibraryError::Settings, ("{}", text));
    }

    fn find_by_name(&self, property: &str, name: &str) -> Option<gst::Element> {
        let mut top: gst::Object = self.obj().clone().upcast();
        while let Some(parent) = top.parent() {
            top = parent;
        }
        let found = top
            .downcast::<gst::Bin>()
            .ok()
            .and_then(|bin| bin.by_name(name));
        if found.is_none() {
            self.warn_once(
                format!("{property}:{name}"),
                format!("{property} '{name}': no element of that name in the pipeline"),
            );
        }
        found
    }

    fn resolve(&self, settings: &Settings) -> Targets {
        let pick = |property: &str, element: &Option<gst::Element>, name: &Option<String>| {
            element.clone().or_else(|| {
                name.as_deref()
                    .and_then(|name| self.find_by_name(property, name))
            })
        };
        let mut encoder = pick("encoder-name", &settings.encoder, &settings.encoder_name);
        if encoder.is_none() && settings.encoder_name.is_none() {
            let cached = self.state.lock().unwrap().upstream_encoder.clone();
            encoder = cached.or_else(|| {
                let pad = self.obj().static_pad("sink")?;
                let found = find_upstream_encoder(&pad, None);
                if let Some(found) = &found {
                    gst::info!(
                        CAT,
                        imp = self,
                        "Controlling upstream encoder {}",
                        found.name()
                    );
                    self.state.lock().unwrap().upstream_encoder = Some(found.clone());
                }
                found
            });
        }
        Targets {
            encoder,
            capsfilter: pick(
                "capsfilter-name",
                &settings.capsfilter,
                &settings.capsfilter_name,
            ),
            webrtcbin: pick(
                "webrtcbin-name",
                &settings.webrtcbin,
                &settings.webrtcbin_name,
            ),
            srtsink: pick("srtsink-name", &settings.srtsink, &settings.srtsink_name),
            rtpbin: pick("rtpbin-name", &settings.rtpbin, &settings.rtpbin_name),
            queue: pick("queue-name", &settings.queue, &settings.queue_name),
            estimator: pick(
                "estimator-name",
                &settings.estimator,
                &settings.estimator_name,
            ),
        }
    }

    fn take_estimate_event(&self, event: &gst::Event) {
        use gst::EventType::*;
        if !matches!(
            event.type_(),
            CustomUpstream | CustomDownstream | CustomDownstreamOob | CustomBoth | CustomBothOob
        ) {
            return;
        }
        if let Some(s) = event.structure().filter(|s| s.name() == TWCC_EVENT) {
            let packets = structure_list(s, "packets");
            self.state.lock().unwrap().twcc.add(&packets);
            return;
        }
        let Some(s) = event.structure().filter(|s| s.name() == ESTIMATE_EVENT) else {
            return;
        };
        let parsed = parse_estimate_event(s);
        gst::debug!(CAT, imp = self, "Explicit signals {parsed:?} from {s}");
        let mut state = self.state.lock().unwrap();
        let events = &mut state.events;
        events.estimate_bps = parsed.estimate_bps.or(events.estimate_bps);
        events.loss = parsed.loss.or(events.loss);
        events.rtt = parsed.rtt.or(events.rtt);
        events.jitter = parsed.jitter.or(events.jitter);
        events.backlog = parsed.backlog.or(events.backlog);
        events.backlog_bytes = parsed.backlog_bytes.or(events.backlog_bytes);
    }

    fn request_webrtc_stats(&self, webrtcbin: &gst::Element) {
        let fits = checked::signal(
            webrtcbin,
            "get-stats",
            &[gst::Pad::static_type(), gst::Promise::static_type()],
            glib::Type::UNIT,
        );
        if self.usable("webrtcbin", fits).is_none() {
            return;
        }
        {
            let mut state = self.state.lock().unwrap();
            if state.stats_pending {
                return;
            }
            state.stats_pending = true;
        }
        let weak = self.obj().downgrade();
        let promise = gst::Promise::with_change_func(move |reply| {
            let Some(obj) = weak.upgrade() else {
                return;
            };
            let report = match reply {
                Ok(Some(stats)) => Some(parse_webrtc_stats(stats)),
                _ => None,
            };
            let mut state = obj.imp().state.lock().unwrap();
            state.stats_pending = false;
            if report.is_some() {
                state.webrtc_latest = report;
            }
        });
        webrtcbin.emit_by_name::<()>("get-stats", &[&None::<gst::Pad>, &promise]);
    }

    fn tick(&self, now: gst::ClockTime) {
        let settings = self.settings.lock().unwrap().clone();
        let targets = self.resolve(&settings);

        // Read the other elements without holding our locks.
        let encoder = targets
            .encoder
            .as_ref()
            .and_then(|e| match Encoder::new(e) {
                Ok(encoder) => Some(encoder),
                Err(err) => {
                    self.warn_once(format!("encoder:{}", e.name()), err.to_string());
                    None
                }
            });
        if targets.encoder.is_none() {
            self.warn_once(
                "encoder".into(),
                "No encoder to control: set encoder or encoder-name, or place abrcontroller \
                 downstream of a known encoder"
                    .into(),
            );
        }
        let queue_level = targets.queue.as_ref().and_then(|q| {
            let time = self.usable("queue", checked::read::<u64>(q, "current-level-time"))?;
            let bytes = self.usable("queue", checked::read::<u32>(q, "current-level-bytes"))?;
            Some((time, bytes as u64))
        });
        let srt_stats = targets.srtsink.as_ref().and_then(|s| {
            self.usable(
                "srtsink",
                checked::read::<Option<gst::Structure>>(s, "stats"),
            )
            .flatten()
        });
        // The ladder is followed only through a capsfilter whose caps can be set.
        let capsfilter = targets.capsfilter.as_ref().and_then(|c| {
            let current = checked::read::<Option<gst::Caps>>(c, "caps").and_then(|caps| {
                checked::writable(c, "caps", gst::Caps::static_type()).map(|_| (c.clone(), caps))
            });
            self.usable("capsfilter", current)
        });
        let estimator_bps = targets.estimator.as_ref().and_then(|e| {
            let value = e
                .find_property("estimated-bitrate")
                .map(|_| e.property_value("estimated-bitrate"));
            if value.is_none() {
                self.warn_once(
                    format!("estimator:{}", e.name()),
                    format!("estimator {} has no estimated-bitrate property", e.name()),
                );
            }
            value
                .as_ref()
                .and_then(value_as_f64)
                .map(|v| v as u64)
                .filter(|&v| v > 0)
        });
        if let Some(webrtcbin) = &targets.webrtcbin {
            self.request_webrtc_stats(webrtcbin);
        }
        let rtp_report = targets
            .rtpbin
            .as_ref()
            .and_then(|r| self.usable("rtpbin", rtpbin_report(r)));
        let encoder_bps = encoder.as_ref().map(|e| e.bitrate_bps());

        let mut state = self.state.lock().unwrap();
        let elapsed = state.last_tick.map(|t| now.saturating_sub(t));
        state.last_tick = Some(now);
        let bytes = std::mem::take(&mut state.bytes);
        let sent_bps = elapsed
            .filter(|e| !e.is_zero() && bytes > 0)
            .map(|e| (bytes as f64 * 8.0 / e.seconds_f64()) as u64);

        let mut obs = Observation {
            now: Duration::from_nanos(now.nseconds()),
            sent_bps,
            ..Default::default()
        };

        // Explicit signals from events: the estimate persists, the rest is used once.
        let persistent = EventSignals {
            estimate_bps: state.events.estimate_bps,
            ..Default::default()
        };
        let events = std::mem::replace(&mut state.events, persistent);
        merge_max(&mut obs.loss, events.loss);
        merge_max(&mut obs.rtt, events.rtt);
        merge_max(&mut obs.jitter, events.jitter);
        merge_max(&mut obs.backlog, events.backlog);
        merge_max(&mut obs.backlog_bytes, events.backlog_bytes);
        merge_min(&mut obs.estimate_bps, events.estimate_bps);
        merge_min(&mut obs.estimate_bps, estimator_bps);

        if let Some((time, bytes)) = queue_level {
            merge_max(&mut obs.backlog, Some(Duration::from_nanos(time)));
            merge_max(&mut obs.backlog_bytes, Some(bytes));
        }

        // webrtcbin: a receiver report is only used on the first tick after it changed.
        if let Some(report) = state.webrtc_latest
            && state.webrtc_used != Some(report)
        {
            state.webrtc_used = Some(report);
            merge_max(&mut obs.loss, report.loss);
            merge_max(&mut obs.rtt, report.rtt);
            merge_max(&mut obs.jitter, report.jitter);
            merge_min(&mut obs.estimate_bps, report.estimate_bps);
        }

        // rtpbin: same rule, a receiver report counts once.
        if let Some(report) = rtp_report
            && state.rtp_used != Some(report)
        {
            state.rtp_used = Some(report);
            // With TWCC feedback, the cut for a clear loss was made when the feedback
            // showed it, up to a report interval earlier; the report (of the same packets)
            // still holds probing but must not cut a second time.
            let twcc_fresh = state
                .twcc_report_at
                .is_some_and(|at| now.saturating_sub(at) < TWCC_FRESH);
            let loss = report.loss.map(|loss| match twcc_fresh {
                true => loss.min(settings.loss_threshold * 0.99),
                false => loss,
            });
            merge_max(&mut obs.loss, loss);
            merge_max(&mut obs.rtt, report.rtt);
            merge_max(&mut obs.jitter, report.jitter);
        }
        // TWCC feedback: a report per tick once it covers enough packets. Its fractions are
        // of a tick's worth of packets: only a clear loss counts (moderate loss is for the
        // receiver reports, over longer periods, to judge).
        if let Some((loss, delivered)) = state.twcc.take() {
            state.twcc_report_at = Some(now);
            if loss >= settings.loss_threshold {
                merge_max(&mut obs.loss, Some(loss));
                merge_min(&mut obs.delivered_bps, delivered);
            }
        }

        if state.srt_element != targets.srtsink {
            state.srt_element = targets.srtsink.clone();
            state.srt_previous = None;
            state.srt_recent.clear();
        }
        if let Some(stats) = &srt_stats {
            let srt = parse_srt_stats(stats);
            if let Some(counters) = srt.counters {
                let counters = SrtCounters {
                    time: now,
                    stream_bytes: state.bytes_total as f64,
                    ..counters
                };
                while state
                    .srt_recent
                    .front()
                    .is_some_and(|c| now.saturating_sub(c.time) > SRT_ACK_WINDOW * 3)
                {
                    state.srt_recent.pop_front();
                }
                if let Some(earlier) = state
                    .srt_recent
                    .iter()
                    .rev()
                    .find(|c| now.saturating_sub(c.time) >= SRT_ACK_WINDOW)
                {
                    obs.acked_bps = counters.acked_since(earlier);
                }
                state.srt_recent.push_back(counters);
                match state.srt_previous {
                    // A loss report needs enough packets to mean something: at low rates a
                    // tick carries a handful, and one lost packet of three is not 33 % loss.
                    Some(previous)
                        if counters.sent - previous.sent >= SRT_REPORT_PACKETS
                            && now.saturating_sub(previous.time) >= SRT_REPORT_PERIOD
                            || (now.saturating_sub(previous.time) >= SRT_REPORT_PERIOD * 2
                                && counters.sent > previous.sent) =>
                    {
                        let report = counters.since(&previous);
                        // SRT's lost packets are retransmitted: they say "congested", not
                        // "this much never arrived". Capped, the loss factor cuts by a
                        // quarter at most; how deep the link really is comes from what it
                        // delivered.
                        merge_max(&mut obs.loss, Some(report.loss.min(SRT_LOSS_CAP)));
                        merge_min(&mut obs.delivered_bps, report.delivered_bps);
                        state.srt_previous = Some(counters);
                    }
                    Some(_) => {}
                    None => state.srt_previous = Some(counters),
                }
            }
            merge_max(&mut obs.rtt, srt.rtt);
            // Not a ceiling: measured across a tbf-shaped veth link, SRT's packet-pair
            // estimate follows the send rate down and would drag the target to the floor.
            state.srt_bandwidth = srt.bandwidth_bps;
        }

        let start_bps = match settings.start_bitrate {
            0 => encoder_bps
                .filter(|&b| b > 0)
                .unwrap_or(FALLBACK_START_BITRATE),
            bps => bps as u64,
        };
        let config = settings.config(capsfilter.is_some(), start_bps);
        let mut force_apply = false;
        let controller = match &mut state.controller {
            Some(controller) => {
                let mut config = config;
                config.start_bps = controller.config().start_bps;
                if *controller.config() != config {
                    force_apply = controller.reconfigure(config);
                }
                controller
            }
            None => state.controller.insert(Controller::new(config)),
        };
        let decision = controller.update(&obs);
        gst::log!(
            CAT,
            imp = self,
            "tick: {obs:?} -> {} {} target {} (srt {:?})",
            decision.direction.as_str(),
            decision.reason.as_str(),
            decision.target_bps,
            srt_stats
        );
        let rung = controller
            .config()
            .ladder
            .as_ref()
            .zip(decision.rung)
            .map(|(ladder, i)| ladder.rungs()[i]);

        let counters = &mut state.counters;
        counters.ticks += 1;
        counters.decreases += (decision.direction == crate::controller::Direction::Decrease) as u64;
        counters.increases += (decision.direction == crate::controller::Direction::Increase) as u64;
        counters.rung_changes += decision.rung_changed as u64;
        counters.last = Some(decision);
        counters.last_inputs = obs;
        if decision.direction == crate::controller::Direction::Decrease {
            state.tight_vbv_until = Some(now + TIGHT_VBV_TIME);
        }
        let tight_vbv = state.tight_vbv_until.is_some_and(|until| now < until);
        drop(state);

        let start = decision.reason == Reason::Start;
        let apply_rung = decision.rung_changed || start || force_apply;
        if let Some(encoder) = &encoder
            && (decision.changed()
                || start
                // Someone else changed it: put ours back (unit rounding aside).
                || encoder_bps.is_some_and(|b| b.abs_diff(decision.encoder_bps) >= 1000))
        {
            let applied = encoder.set_bitrate_bps(decision.encoder_bps);
            gst::debug!(
                CAT,
                imp = self,
                "{} bitrate {} bit/s ({}), target {} bit/s",
                encoder.element().name(),
                applied,
                decision.reason.as_str(),
                decision.target_bps
            );
        }
        // A key frame larger than a few hundred ms of the link's rate overflows a policer's
        // bucket or a shallow queue: its tail is lost and the picture freezes until the next.
        if settings.vbv_capacity > 0
            && let Some(encoder) = &encoder
        {
            let vbv_ms = if tight_vbv {
                settings.vbv_capacity.min(TIGHT_VBV_MS)
            } else {
                settings.vbv_capacity
            };
            encoder.set_vbv_ms(vbv_ms);
        }
        if apply_rung
            && let (Some((capsfilter, current)), Some(rung)) = (&capsfilter, rung)
            && let caps = rung_caps(current.as_ref(), &rung)
            && self
                .usable(
                    "capsfilter",
                    checked::write(capsfilter, "caps", &caps.to_value()),
                )
                .is_some()
        {
            gst::info!(CAT, imp = self, "Rung {rung}: {caps}");
            if !start
                && let Some(encoder) = &encoder
                && !encoder.force_key_frame()
            {
                gst::debug!(
                    CAT,
                    imp = self,
                    "Encoder did not take the key frame request"
                );
            }
        }
        if decision.recovery_key_frame
            && let Some(encoder) = &encoder
        {
            gst::debug!(CAT, imp = self, "Loss episode over, asking for a key frame");
            encoder.force_key_frame();
        }
        if decision.changed() || start || force_apply || decision.recovery_key_frame {
            self.post_decision(now, &decision, &obs, rung.as_ref(), encoder.as_ref());
        }
    }

    fn post_decision(
        &self,
        now: gst::ClockTime,
        decision: &Decision,
        obs: &Observation,
        rung: Option<&Rung>,
        encoder: Option<&Encoder>,
    ) {
        let obj = self.obj();
        let mut s = gst::Structure::builder("abr-decision")
            .field("time", now)
            .field_if_some(
                "running-time",
                obj.base_time().map(|base| now.saturating_sub(base)),
            )
            .field("inputs", inputs_structure(obs))
            .field_if_some("estimate", obs.estimate_bps.map(clamp_u32))
            .field("target-bitrate", clamp_u32(decision.target_bps))
            .field("bitrate", clamp_u32(decision.encoder_bps))
            .field("previous-bitrate", clamp_u32(decision.previous_encoder_bps))
            .field("rung", decision.rung.map_or(-1, |r| r as i32))
            .field("rung-changed", decision.rung_changed)
            .field(
                "key-frame",
                decision.rung_changed || decision.recovery_key_frame,
            )
            .field("direction", decision.direction.as_str())
            .field("reason", decision.reason.as_str())
            .field_if_some("encoder", encoder.map(|e| e.element().name().to_string()))
            .build();
        if let Some(rung) = rung {
            s.set("width", rung.width as i32);
            s.set("height", rung.height as i32);
            if let Some((n, d)) = rung.framerate {
                s.set("framerate", gst::Fraction::new(n as i32, d as i32));
            }
        }
        let _ = obj.post_message(gst::message::Element::builder(s).src(&*obj).build());
    }
}

fn clamp_u32(v: u64) -> u32 {
    v.min(u32::MAX as u64) as u32
}

fn merge_max<T: PartialOrd + Copy>(into: &mut Option<T>, value: Option<T>) {
    if let Some(v) = value
        && into.is_none_or(|cur| v > cur)
    {
        *into = Some(v);
    }
}

fn merge_min<T: PartialOrd + Copy>(into: &mut Option<T>, value: Option<T>) {
    if let Some(v) = value
        && into.is_none_or(|cur| v < cur)
    {
        *into = Some(v);
    }
}

fn inputs_structure(obs: &Observation) -> gst::Structure {
    let time = |d: Duration| gst::ClockTime::from_nseconds(d.as_nanos() as u64);
    gst::Structure::builder("abr-inputs")
        .field_if_some("sent-bitrate", obs.sent_bps.map(clamp_u32))
        .field_if_some("loss", obs.loss)
        .field_if_some("rtt", obs.rtt.map(time))
        .field_if_some("jitter", obs.jitter.map(time))
        .field_if_some("backlog", obs.backlog.map(time))
        .field_if_some("backlog-bytes", obs.backlog_bytes)
        .field_if_some("estimate", obs.estimate_bps.map(clamp_u32))
        .field_if_some("delivered-bitrate", obs.delivered_bps.map(clamp_u32))
        .field_if_some("acked-bitrate", obs.acked_bps.map(clamp_u32))
        .build()
}

/// Caps for a rung, keeping the other fields (format...) the capsfilter already had.
fn rung_caps(current: Option<&gst::Caps>, rung: &Rung) -> gst::Caps {
    let mut s = current
        .and_then(|c| c.structure(0))
        .filter(|s| s.name().starts_with("video/"))
        .map(|s| s.to_owned())
        .unwrap_or_else(|| gst::Structure::new_empty("video/x-raw"));
    s.set("width", rung.width as i32);
    s.set("height", rung.height as i32);
    s.set("pixel-aspect-ratio", gst::Fraction::new(1, 1));
    match rung.framerate {
        Some((n, d)) => s.set("framerate", gst::Fraction::new(n as i32, d as i32)),
        None => s.remove_field("framerate"),
    }
    gst::Caps::builder_full().structure(s).build()
}

fn value_as_f64(value: &glib::Value) -> Option<f64> {
    value
        .get::<f64>()
        .ok()
        .or_else(|| value.get::<u32>().ok().map(f64::from))
        .or_else(|| value.get::<i32>().ok().map(f64::from))
        .or_else(|| value.get::<u64>().ok().map(|v| v as f64))
        .or_else(|| value.get::<i64>().ok().map(|v| v as f64))
        .or_else(|| value.get::<f32>().ok().map(f64::from))
}

fn field_f64(s: &gst::StructureRef, field: &str) -> Option<f64> {
    s.value(field).ok().and_then(|v| value_as_f64(v))
}

fn field_time(s: &gst::StructureRef, field: &str) -> Option<Duration> {
    s.get::<gst::ClockTime>(field)
        .ok()
        .map(|t| Duration::from_nanos(t.nseconds()))
        .or_else(|| field_f64(s, field).map(|ns| Duration::from_nanos(ns.max(0.0) as u64)))
}

fn parse_estimate_event(s: &gst::StructureRef) -> EventSignals {
    EventSignals {
        estimate_bps: field_f64(s, "bitrate")
            .filter(|&v| v > 0.0)
            .map(|v| v as u64),
        loss: field_f64(s, "loss").map(|v| v.clamp(0.0, 1.0)),
        rtt: field_time(s, "rtt"),
        jitter: field_time(s, "jitter"),
        backlog: field_time(s, "backlog"),
        backlog_bytes: field_f64(s, "backlog-bytes").map(|v| v.max(0.0) as u64),
    }
}

fn parse_webrtc_stats(stats: &gst::StructureRef) -> WebrtcReport {
    let mut report = WebrtcReport::default();
    for (_, value) in stats.iter() {
        let Ok(s) = value.get::<gst::Structure>() else {
            continue;
        };
        let Ok(kind) = s.get::<gst_webrtc::WebRTCStatsType>("type") else {
            continue;
        };
        match kind {
            gst_webrtc::WebRTCStatsType::RemoteInboundRtp => {
                merge_max(&mut report.loss, field_f64(&s, "fraction-lost"));
                merge_max(
                    &mut report.rtt,
                    field_f64(&s, "round-trip-time").map(Duration::from_secs_f64),
                );
                merge_max(
                    &mut report.jitter,
                    field_f64(&s, "jitter").map(Duration::from_secs_f64),
                );
                merge_max(
                    &mut report.packets_lost,
                    field_f64(&s, "packets-lost").map(|v| v as i64),
                );
            }
            gst_webrtc::WebRTCStatsType::Transport | gst_webrtc::WebRTCStatsType::CandidatePair => {
                if let Ok(twcc) = s.get::<gst::Structure>("gst-twcc-stats") {
                    merge_max(
                        &mut report.loss,
                        field_f64(&twcc, "packet-loss-pct").map(|pct| pct / 100.0),
                    );
                    // Sent faster than received: what arrives is what the path carries.
                    if let (Some(sent), Some(recv)) = (
                        field_f64(&twcc, "bitrate-sent"),
                        field_f64(&twcc, "bitrate-recv"),
                    ) && recv > 0.0
                        && sent > recv * 1.1
                    {
                        merge_min(&mut report.estimate_bps, Some((recv * 0.95) as u64));
                    }
                }
            }
            _ => {}
        }
    }
    report
}

/// The last receiver reports of all sessions of an rtpbin, worst values.
fn rtpbin_report(rtpbin: &gst::Element) -> Result<WebrtcReport, String> {
    checked::signal(
        rtpbin,
        "get-internal-session",
        &[u32::static_type()],
        glib::Object::static_type(),
    )?;
    let mut report = WebrtcReport::default();
    for id in 0u32..16 {
        let Some(session) =
            rtpbin.emit_by_name::<Option<glib::Object>>("get-internal-session", &[&id])
        else {
            break;
        };
        let stats = checked::read::<gst::Structure>(&session, "stats")?;
        let other = parse_rtp_session_stats(&stats);
        merge_max(&mut report.loss, other.loss);
        merge_max(&mut report.rtt, other.rtt);
        merge_max(&mut report.jitter, other.jitter);
        merge_max(&mut report.packets_lost, other.packets_lost);
    }
    Ok(report)
}

/// RTPSession `stats`: report blocks are in the `source-stats` list, fraction lost in
/// 1/256, round trip in 1/65536 s, jitter in clock-rate units.
fn parse_rtp_session_stats(stats: &gst::StructureRef) -> WebrtcReport {
    let mut report = WebrtcReport::default();
    for source in structure_list(stats, "source-stats") {
        if !source.get::<bool>("have-rb").unwrap_or(false) {
            continue;
        }
        merge_max(
            &mut report.loss,
            field_f64(&source, "rb-fractionlost").map(|v| v / 256.0),
        );
        merge_max(
            &mut report.rtt,
            field_f64(&source, "rb-round-trip")
                .filter(|&v| v > 0.0)
                .map(|v| Duration::from_secs_f64(v / 65536.0)),
        );
        if let (Some(jitter), Some(rate)) = (
            field_f64(&source, "rb-jitter"),
            field_f64(&source, "clock-rate").filter(|&r| r > 0.0),
        ) {
            merge_max(
                &mut report.jitter,
                Some(Duration::from_secs_f64(jitter / rate)),
            );
        }
        merge_max(
            &mut report.packets_lost,
            field_f64(&source, "rb-packetslost").map(|v| v as i64),
        );
    }
    report
}

/// Structures in a list field, whether it is a `GstValueArray` or a `GValueArray`.
fn structure_list(s: &gst::StructureRef, field: &str) -> Vec<gst::Structure> {
    let Ok(value) = s.value(field) else {
        return Vec::new();
    };
    if let Ok(array) = value.get::<gst::Array>() {
        array
            .iter()
            .filter_map(|v| v.get::<gst::Structure>().ok())
            .collect()
    } else if let Ok(array) = value.get::<glib::ValueArray>() {
        array
            .iter()
            .filter_map(|v| v.get::<gst::Structure>().ok())
            .collect()
    } else {
        Vec::new()
    }
}

#[derive(Debug, Default)]
struct SrtSignals {
    rtt: Option<Duration>,
    bandwidth_bps: Option<u64>,
    counters: Option<SrtCounters>,
}

/// Cumulative srtsink counters (summed over connections) at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct SrtCounters {
    time: gst::ClockTime,
    /// Data packets sent, retransmissions included.
    sent: f64,
    /// Packets the receiver reported lost.
    lost: f64,
    /// Data bytes sent, retransmissions included.
    bytes_sent: f64,
    /// Bytes sent again.
    bytes_retransmitted: f64,
    /// Bytes of this stream that passed the controller.
    stream_bytes: f64,
    /// Acknowledgements received (full and light).
    acks: f64,
}

/// What one SRT loss report says.
#[derive(Debug, Clone, Copy, PartialEq)]
struct SrtReport {
    /// Lost packets / sent packets over the period (uncapped).
    loss: f64,
    /// This stream's share of what got through, bit/s.
    delivered_bps: Option<u64>,
}

impl SrtCounters {
    /// This stream's share of the rate the receiver acknowledged since `earlier`, when it
    /// can be counted and falls short of what was sent: SRT acknowledges arriving packets at
    /// once (every 10 ms at most) over a return path that does not queue, so a few dozen
    /// acknowledgements a second while several times more packets leave is the pace of a
    /// bottleneck, seen a one-way delay after it changed, long before the loss reports come
    /// back through its queue. A receiver waiting for a retransmission acknowledges nothing,
    /// so under loss this undercounts: a floor of what gets through.
    fn acked_since(&self, earlier: &SrtCounters) -> Option<u64> {
        let seconds = self.time.saturating_sub(earlier.time).seconds_f64();
        let sent = self.sent - earlier.sent;
        let acks = self.acks - earlier.acks;
        let wire = self.bytes_sent - earlier.bytes_sent;
        let fresh = wire - (self.bytes_retransmitted - earlier.bytes_retransmitted);
        let stream = self.stream_bytes - earlier.stream_bytes;
        if seconds <= 0.0 || sent < 5.0 || wire <= 0.0 || fresh <= 0.0 || stream <= 0.0 {
            return None;
        }
        // Retransmissions are acknowledged as the gaps they fill: compare with fresh packets.
        let fresh_packets = sent * fresh / wire;
        if acks / seconds > SRT_ACKS_COUNTABLE || acks >= fresh_packets * SRT_ACK_SHORTFALL {
            return None;
        }
        // The other streams of the connection (audio) keep their rate when the link falls:
        // they are taken off what is acknowledged, not shared in proportion. The muxer's
        // overhead is taken as a share.
        let other = (fresh / (1.0 + SRT_MUX_OVERHEAD) - stream).max(0.0);
        let acked = acks.max(1.0) * wire / sent;
        let ours = (acked / (1.0 + SRT_MUX_OVERHEAD) - other).max(0.0);
        Some((ours * 8.0 / seconds) as u64)
    }

    fn since(&self, earlier: &SrtCounters) -> SrtReport {
        let sent = self.sent - earlier.sent;
        let loss = if sent > 0.0 {
            ((self.lost - earlier.lost).max(0.0) / sent).clamp(0.0, 1.0)
        } else {
            0.0
        };
        let seconds = self.time.saturating_sub(earlier.time).seconds_f64();
        let wire = self.bytes_sent - earlier.bytes_sent;
        let fresh = wire - (self.bytes_retransmitted - earlier.bytes_retransmitted);
        let stream = self.stream_bytes - earlier.stream_bytes;
        // The connection also carries audio, the muxer's overhead and retransmissions: the
        // stream's share is its bytes over the fresh bytes sent.
        let delivered_bps =
            (seconds > 0.0 && wire > 0.0 && fresh > 0.0 && stream > 0.0).then(|| {
                let share = (stream / fresh).clamp(0.2, 1.0);
                (wire * (1.0 - loss) * share * 8.0 / seconds) as u64
            });
        SrtReport {
            loss,
            delivered_bps,
        }
    }
}

/// srtsink stats: one connection at the top level (caller mode) or one per caller in a
/// `callers` list (listener mode). The worst connection wins.
fn parse_srt_stats(stats: &gst::StructureRef) -> SrtSignals {
    let mut connections: Vec<gst::Structure> = Vec::new();
    if stats.has_field("rtt-ms") {
        connections.push(stats.to_owned());
    }
    connections.extend(structure_list(stats, "callers"));
    let mut signals = SrtSignals::default();
    let mut sent_total = SrtCounters::default();
    let mut have_counters = false;
    for c in &connections {
        merge_max(
            &mut signals.rtt,
            field_f64(c, "rtt-ms").map(|ms| Duration::from_secs_f64(ms.max(0.0) / 1000.0)),
        );
        merge_min(
            &mut signals.bandwidth_bps,
            field_f64(c, "bandwidth-mbps")
                .filter(|&v| v > 0.0)
                .map(|mbps| (mbps * 1_000_000.0) as u64),
        );
        if let (Some(sent), Some(lost)) = (
            field_f64(c, "packets-sent"),
            field_f64(c, "packets-sent-lost"),
        ) {
            sent_total.sent += sent;
            sent_total.lost += lost;
            sent_total.bytes_sent += field_f64(c, "bytes-sent").unwrap_or(0.0);
            sent_total.bytes_retransmitted += field_f64(c, "bytes-retransmitted").unwrap_or(0.0);
            sent_total.acks += field_f64(c, "packet-ack-received").unwrap_or(0.0);
            have_counters = true;
        }
    }
    if have_counters {
        signals.counters = Some(sent_total);
    }
    signals
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webrtc_stats_take_the_worst_stream() {
        gst::init().unwrap();
        let stats = gst::Structure::builder("application/x-webrtc-stats")
            .field(
                "remote-inbound-rtp_1",
                gst::Structure::builder("remote-inbound-rtp")
                    .field("type", gst_webrtc::WebRTCStatsType::RemoteInboundRtp)
                    .field("fraction-lost", 0.25f64)
                    .field("round-trip-time", 0.120f64)
                    .field("jitter", 0.004f64)
                    .build(),
            )
            .field(
                "remote-inbound-rtp_2",
                gst::Structure::builder("remote-inbound-rtp")
                    .field("type", gst_webrtc::WebRTCStatsType::RemoteInboundRtp)
                    .field("fraction-lost", 0.0f64)
                    .field("round-trip-time", 0.030f64)
                    .build(),
            )
            .field(
                "transport",
                gst::Structure::builder("transport")
                    .field("type", gst_webrtc::WebRTCStatsType::Transport)
                    .field(
                        "gst-twcc-stats",
                        gst::Structure::builder("twcc")
                            .field("bitrate-sent", 2_000_000u32)
                            .field("bitrate-recv", 1_000_000u32)
                            .field("packet-loss-pct", 5.0f64)
                            .build(),
                    )
                    .build(),
            )
            .build();
        let report = parse_webrtc_stats(&stats);
        assert_eq!(report.loss, Some(0.25));
        assert_eq!(report.rtt, Some(Duration::from_millis(120)));
        assert_eq!(report.jitter, Some(Duration::from_millis(4)));
        assert_eq!(report.estimate_bps, Some(950_000));
    }

    #[test]
    fn srt_stats_in_caller_and_listener_mode() {
        gst::init().unwrap();
        let caller = gst::Structure::builder("application/x-srt-statistics")
            .field("rtt-ms", 42.0f64)
            .field("bandwidth-mbps", 3.5f64)
            .field("packets-sent", 1000i64)
            .field("packets-sent-lost", 10i32)
            .field("bytes-sent", 1_316_000u64)
            .field("bytes-retransmitted", 13_160u64)
            .build();
        let signals = parse_srt_stats(&caller);
        assert_eq!(signals.rtt, Some(Duration::from_millis(42)));
        assert_eq!(signals.bandwidth_bps, Some(3_500_000));
        let counters = signals.counters.expect("counters");
        assert_eq!((counters.sent, counters.lost), (1000.0, 10.0));
        assert_eq!(counters.bytes_sent, 1_316_000.0);
        assert_eq!(counters.bytes_retransmitted, 13_160.0);

        let second = gst::Structure::builder("application/x-srt-statistics")
            .field("rtt-ms", 80.0f64)
            .field("bandwidth-mbps", 9.0f64)
            .field("packets-sent", 500i64)
            .field("packets-sent-lost", 0i32)
            .build();
        let listener = gst::Structure::builder("application/x-srt-statistics")
            .field(
                "callers",
                gst::Array::new([caller.to_send_value(), second.to_send_value()]),
            )
            .build();
        let signals = parse_srt_stats(&listener);
        assert_eq!(signals.rtt, Some(Duration::from_millis(80)));
        assert_eq!(signals.bandwidth_bps, Some(3_500_000));
        let counters = signals.counters.expect("counters");
        assert_eq!((counters.sent, counters.lost), (1500.0, 10.0));
    }

    #[test]
    fn srt_acknowledgements_count_only_when_few_and_short_of_what_is_sent() {
        let at = |ms: u64, sent: f64, acks: f64, stream: f64| SrtCounters {
            time: gst::ClockTime::from_mseconds(ms),
            sent,
            lost: 0.0,
            bytes_sent: sent * 1316.0,
            bytes_retransmitted: 0.0,
            stream_bytes: stream,
            acks,
        };
        let earlier = at(1000, 1000.0, 500.0, 1000.0 * 1316.0 * 0.9);
        // 300 ms: 60 packets sent (2.1 Mbit/s on the wire), 9 acknowledged (30 a second):
        // the bottleneck passes 9 packets. The stream is 90 % of what was sent; the rest,
        // beyond the muxer's 5 %, is another stream that keeps its rate.
        let collapsed = at(1300, 1060.0, 509.0, (1000.0 + 60.0) * 1316.0 * 0.9);
        let acked = collapsed.acked_since(&earlier).expect("a rate") as f64;
        let other = 60.0 * 1316.0 * (1.0 / 1.05 - 0.9);
        let expected = (9.0 * 1316.0 / 1.05 - other) * 8.0 / 0.3;
        assert!((acked - expected).abs() < 2.0, "{acked} vs {expected}");
        assert!(acked < 9.0 * 1316.0 * 0.9 * 8.0 / 0.3);
        // Many acknowledgements: the receiver coalesces them, nothing to count.
        let fast = at(1300, 1060.0, 525.0, (1000.0 + 60.0) * 1316.0 * 0.9);
        assert_eq!(fast.acked_since(&earlier), None);
        // As many acknowledgements as packets: the link carries what is sent.
        let slow = at(1300, 1009.0, 508.0, (1000.0 + 9.0) * 1316.0 * 0.9);
        assert_eq!(slow.acked_since(&earlier), None);
        // 30 packets sent, 20 of them retransmissions, 8 acknowledged: the 10 fresh ones
        // nearly all arrive, the link is not short of them.
        let retransmitting = SrtCounters {
            bytes_retransmitted: 20.0 * 1316.0,
            ..at(1300, 1030.0, 508.0, (1000.0 + 10.0) * 1316.0 * 0.9)
        };
        assert_eq!(retransmitting.acked_since(&earlier), None);
        // Nearly nothing sent: nothing to say.
        let idle = at(1300, 1003.0, 500.0, (1000.0 + 3.0) * 1316.0 * 0.9);
        assert_eq!(idle.acked_since(&earlier), None);
    }

    #[test]
    fn srt_delivered_rate_is_the_stream_share_of_what_got_through() {
        // 1 s: 2000 packets of 1316 bytes on the wire, 500 of them retransmissions, 40 % of
        // the packets reported lost; the stream is 80 % of the fresh bytes.
        let earlier = SrtCounters::default();
        let now = SrtCounters {
            time: gst::ClockTime::SECOND,
            sent: 2000.0,
            lost: 800.0,
            bytes_sent: 2000.0 * 1316.0,
            bytes_retransmitted: 500.0 * 1316.0,
            stream_bytes: 1500.0 * 1316.0 * 0.8,
            acks: 600.0,
        };
        let report = now.since(&earlier);
        assert!((report.loss - 0.4).abs() < 1e-9);
        let expected = 2000.0 * 1316.0 * 8.0 * 0.6 * 0.8;
        let delivered = report.delivered_bps.expect("a rate") as f64;
        assert!(
            (delivered - expected).abs() < 2.0,
            "{delivered} vs {expected}"
        );
        // Nothing sent: no rate, no loss.
        let idle = SrtCounters {
            time: gst::ClockTime::SECOND,
            ..earlier
        };
        assert_eq!(idle.since(&earlier).delivered_bps, None);
        assert_eq!(idle.since(&earlier).loss, 0.0);
    }

    #[test]
    fn estimate_event_fields() {
        gst::init().unwrap();
        let s = gst::Structure::builder(ESTIMATE_EVENT)
            .field("bitrate", 1_200_000u32)
            .field("loss", 1.5f64)
            .field("rtt", gst::ClockTime::from_mseconds(80))
            .field("backlog-bytes", 5000u64)
            .build();
        let e = parse_estimate_event(&s);
        assert_eq!(e.estimate_bps, Some(1_200_000));
        assert_eq!(e.loss, Some(1.0));
        assert_eq!(e.rtt, Some(Duration::from_millis(80)));
        assert_eq!(e.backlog, None);
        assert_eq!(e.backlog_bytes, Some(5000));
    }

    fn twcc_packet(size: u32, arrival_ms: Option<f64>) -> gst::Structure {
        gst::Structure::builder("RTPTWCCPacket")
            .field(
                "remote-ts",
                arrival_ms.map_or(u64::MAX, |ms| (ms * 1e6) as u64),
            )
            .field("size", size)
            .field("lost", arrival_ms.is_none())
            .build()
    }

    #[test]
    fn twcc_reports_wait_for_enough_packets() {
        gst::init().unwrap();
        let mut w = TwccWindow::default();
        w.add(&[twcc_packet(1000, Some(0.0)), twcc_packet(1000, None)]);
        assert_eq!(w.take(), None, "2 packets are not a fraction");
        let more: Vec<_> = (1..29).map(|i| twcc_packet(1000, Some(i as f64))).collect();
        w.add(&more);
        let (loss, _) = w.take().expect("30 packets make a report");
        assert_eq!(loss, 1.0 / 30.0);
    }

    /// `n` packets of 1250 bytes, every other one lost when `lossy`, the others arriving
    /// `spacing_ms` apart after `from_ms`.
    fn twcc_run(n: usize, lossy: bool, from_ms: f64, spacing_ms: f64) -> Vec<gst::Structure> {
        let mut arrival = from_ms;
        (0..n)
            .map(|k| {
                if lossy && k % 2 == 0 {
                    twcc_packet(1250, None)
                } else {
                    arrival += spacing_ms;
                    twcc_packet(1250, Some(arrival))
                }
            })
            .collect()
    }

    #[test]
    fn twcc_delivery_rate_counts_from_the_first_loss_of_each_report() {
        gst::init().unwrap();
        let mut w = TwccWindow::default();
        // Fast arrivals before the loss run do not count: 1 Mbit/s after it.
        let mut packets = twcc_run(10, false, -1.0, 1.0);
        packets.extend(twcc_run(20, true, 9.0, 10.0));
        w.add(&packets);
        let (loss, delivered) = w.take().unwrap();
        assert_eq!(loss, 10.0 / 30.0);
        assert_eq!(delivered, Some(1_000_000));
        // The run goes on in the next report, measured from the end of the last one: the
        // rate now (15 × 1250 bytes over 75 ms), not the run's average (1.43 Mbit/s).
        w.add(&twcc_run(30, true, 109.0, 5.0));
        let (_, delivered) = w.take().unwrap();
        assert_eq!(delivered, Some(2_000_000));
        // A report without loss ends the run; the next one starts afresh.
        w.add(&twcc_run(30, false, 259.0, 1.0));
        assert_eq!(w.take().unwrap().0, 0.0);
        let mut packets = vec![twcc_packet(1250, None)];
        packets.extend(twcc_run(30, false, 289.0, 10.0));
        w.add(&packets);
        let (_, delivered) = w.take().unwrap();
        assert_eq!(delivered, Some(1_000_000));
    }
}
