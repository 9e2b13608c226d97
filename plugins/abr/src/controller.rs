//! The decision logic of `abrcontroller`, free of GStreamer: a state machine fed with one
//! [`Observation`] per tick that answers with a [`Decision`].
//!
//! # Algorithm
//!
//! The controller keeps a *target*: the rate it believes the uplink carries. Every tick it
//! looks at the congestion signals it was given and does one of three things.
//!
//! 1. **Decrease** as soon as one signal shows clear congestion. Each signal proposes a
//!    ceiling and the lowest one wins. *Rate* below means the lower of the target and the
//!    smoothed rate the encoder really sends (a cut from a target nobody reaches changes
//!    nothing).
//!    * loss at or above `loss_high`: `rate × (1 − loss/2)`, at most −50 %, at least −5 %
//!      (the loss rule of Google Congestion Control), and 90 % of what got through: the
//!      delivery rate the transport measured when it gives one (SRT: bytes sent minus the
//!      share reported lost, scaled to this stream's part of the connection), else the send
//!      rate over the period the report covers (since the previous one) × (1 − loss);
//!    * loss between `loss_low` and `loss_high` in three reports in a row: 97 % of what got
//!      through (a link carrying a little less than we send, e.g. a policer);
//!    * queuing delay (RTT minus the lowest RTT of the last 30 s) at or above `rtt_threshold`
//!      and not already shrinking: `rate / (1 + g)` where `g` is how fast the delay grew
//!      since the previous sample (seconds per second: a queue filling at `g` holds what
//!      arrives beyond the link's rate), between `× 0.5` and `× 0.85` (a full queue that
//!      stopped growing still costs 15 %);
//!    * a send backlog (e.g. the queue before a TCP-like sink) at or above
//!      `backlog_threshold` and still growing, or above twice that: 85 % of the rate the
//!      backlog drains at (media rate in minus backlog growth), or `rate × 0.8` when the
//!      drain rate is unknown;
//!    * an acknowledged rate (SRT: the receiver's acknowledgements, counted while they are
//!      few and fall well short of the packets sent) with a queuing delay of at least half
//!      `rtt_threshold`: 90 % of it. A queue standing before the bottleneck delivers at the
//!      bottleneck's pace, and the acknowledgements come back over a path that does not
//!      queue: this is the link's rate a one-way delay after it fell, where the loss
//!      reports take the queue's length longer. Readings within the hold-off of each other
//!      count with the highest (a receiver waiting for a retransmission acknowledges
//!      nothing, so readings undercount); for the hold-off plus one RTT after the last one,
//!      loss does not cut (it holds) and delay cuts by no factor: both describe packets
//!      sent before the cut;
//!    * an explicit estimate (rtpgccbwe, an `abr-estimate` event) below the target: the
//!      estimate.
//!
//!    The factor cuts (loss factor, delay, unknown drain) are not compounded within a
//!    hold-off of `max(2 × RTT, 300 ms)` after the previous factor cut, nor while the encoder
//!    still sends more than 1.15 × the new target (for at most 1 s: its rate control lags),
//!    so one congestion report costs one cut; ceilings computed from measured rates apply on
//!    every tick and do not restart the hold-off (over SRT the delivery rate measured during
//!    a retransmission storm is about what is sent, so those ceilings cut by 10 % a report;
//!    had they restarted the hold-off, the loss factor would never apply and a 4× drop
//!    would take seconds). Since every tick may decrease, the reaction time is one tick
//!    interval plus the age of the signal. The element also shrinks the encoder's
//!    rate-control buffer (x264enc `vbv-buf-capacity`) to 100 ms for 1.5 s after every
//!    decrease: the encoder then meets the new rate within a few frames instead of spending
//!    a buffer filled at the old rate, and a key frame sent in that time stays small.
//! 2. **Hold** while any signal is elevated without being clear congestion (loss above
//!    `loss_low` in fewer than three reports in a row, half the delay or backlog threshold,
//!    a backlog still draining), and for `increase_hold` after the last decrease.
//! 3. **Increase** by probing: one step per `probe_interval` (300 ms by default, at least
//!    2 × RTT) so that the effect of a step is seen before the next one. Steps start at +8 %
//!    and grow by 8 points per clear step up to +45 % (sustained headroom is climbed
//!    geometrically). Below the rate at which congestion was last seen (the smoothed send
//!    rate at the last cut), steps stop at 95 % of it; from there to 105 % of it steps are at
//!    most +4 %, because that is where the link broke before (probing a policed or full link
//!    costs loss, and loss costs frozen pictures). Past 105 % without loss, the link has grown:
//!    the steps, which kept growing, are large again (a 3× capacity increase is recovered
//!    in about 4 s). Increases never pass `max_bps`, the explicit
//!    estimate, or 1.5 × the rate the encoder really produces (smoothed) plus 100 kbit/s: an
//!    encoder undershooting on a static scene must not lead the target into the sky, where
//!    the next real congestion would find it. And no step is taken while the encoder sends
//!    less than 70 % of the current target: a step the link never saw probed nothing, and
//!    stacking steps on it put the target far above the link (over SRT, a standing queue
//!    before a drop delays every later signal by its length).
//!
//!    The rate where congestion was last seen is corrected upwards by the queue's drain:
//!    within 5 s of a cut, a queuing delay that falls from at least `rtt_threshold / 2` at
//!    `s` seconds per second (measured over at least 200 ms, at most 0.5) while `r` is sent
//!    says the link carries `r / (1 − s)`. After a cascade of cuts over a full queue the last
//!    cut undersells the link (over SRT the queue, full of retransmissions, drains only well
//!    below it); without the correction, probing crept through a band around that low rate,
//!    concluded that the link had grown and leapt past it, cycle after cycle.
//!
//! The target always stays within `[min_bps, max_bps]`. When a loss episode that cut the
//! target ends (the first report under `loss_high` once the encoder follows the new rate and
//! nothing cuts on that tick), the decision asks for a key frame: receivers that lost
//! references get a clean picture at the new rate, as early as the link can carry it (a key
//! frame sent into a still-congested link would be lost too, and waiting for a perfectly
//! clean report left receivers frozen for up to a second).
//!
//! # Ladder
//!
//! With a ladder, the encoder gets `min(target, rung maximum)`. The controller drops to a
//! lower rung on the tick the target falls below the current rung's minimum. A rung's
//! *threshold* is its minimum × `rung_up_margin`. Climbing takes one of two kinds of evidence:
//!
//! * **the target alone** (what probing believes, e.g. capped by an explicit estimate): one
//!   rung up, once the target has stayed at or above the next rung's threshold for
//!   `rung_up_hold` (4 s by default);
//! * **what the link carried**: once the target has been past the band where the link last
//!   broke (above 105 % of the rate at the last cut) with every signal clear for half of
//!   `rung_up_hold`, the climb goes straight to the highest rung whose threshold the target
//!   covers and whose minimum the link delivered (the smoothed send rate, for at least 300
//!   ms, on clear ticks), however many rungs up: one decision, one key frame. This "grown"
//!   time is not restarted by a climb, so the rung after it needs no new hold, only its
//!   minimum delivered on the rung just reached (the encoder, capped by a rung's maximum, can
//!   prove only what that rung lets it send: over the default ladder 360p, up to 1200
//!   kbit/s, proves 540p's 800, and 540p, up to 2200, proves 720p's 1500). Any decrease or
//!   elevated signal clears the evidence. The margin stays the target's: a rung is climbed
//!   with a target 15 % above its minimum and left only below that minimum.
//!
//! The half hold starts only once the target leaves the band where the link last broke, a
//! few probe steps after the link came back: a link that recovers for only 2 s is cut again
//! before a rung changes (`a_link_that_recovers_for_2_s_changes_no_rung`). Together with
//! overlapping rung ranges this hysteresis keeps a target hovering around a rung boundary
//! from flipping resolutions: a rung is climbed only with a threshold 15 % above its minimum
//! and dropped only below that minimum.

use std::collections::VecDeque;
use std::time::Duration;

use hybridlive_ladder::signals::{Ewma, MinWindow};

use crate::ladder::Ladder;

/// Tunables of the controller. Rates in bit/s.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Lowest target.
    pub min_bps: u64,
    /// Highest target.
    pub max_bps: u64,
    /// Target on the first tick.
    pub start_bps: u64,
    /// Loss fraction (0–1) at which the target is cut.
    pub loss_high: f64,
    /// Loss fraction (0–1) above which the target is held.
    pub loss_low: f64,
    /// Queuing delay (RTT above its recent minimum) that counts as congestion.
    pub rtt_threshold: Duration,
    /// Send backlog that counts as congestion.
    pub backlog_threshold: Duration,
    /// Quiet time after a decrease before probing up.
    pub increase_hold: Duration,
    /// Minimum time between two upward steps.
    pub probe_interval: Duration,
    /// How long the target must afford the next rung before climbing to it; half of it once
    /// the link has carried the rung's threshold (see the module documentation).
    pub rung_up_hold: Duration,
    /// Factor over the next rung's minimum the target must reach before climbing.
    pub rung_up_margin: f64,
    /// Resolution ladder, `None` to control the bitrate only.
    pub ladder: Option<Ladder>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            min_bps: 150_000,
            max_bps: 6_000_000,
            start_bps: 2_000_000,
            loss_high: 0.10,
            loss_low: 0.02,
            rtt_threshold: Duration::from_millis(100),
            backlog_threshold: Duration::from_millis(200),
            increase_hold: Duration::from_secs(1),
            probe_interval: Duration::from_millis(300),
            rung_up_hold: Duration::from_secs(4),
            rung_up_margin: 1.15,
            ladder: None,
        }
    }
}

/// What the controller knows at one tick. Every signal is optional: the controller uses
/// whatever it is given.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Observation {
    /// Time of the tick, from any monotonic origin.
    pub now: Duration,
    /// Media rate leaving the encoder during the last interval, bit/s.
    pub sent_bps: Option<u64>,
    /// Fraction of packets lost (0–1) since the previous report.
    pub loss: Option<f64>,
    /// Round-trip time.
    pub rtt: Option<Duration>,
    /// Interarrival jitter seen by the receiver (reported, not acted upon).
    pub jitter: Option<Duration>,
    /// Media waiting to be sent, as a duration.
    pub backlog: Option<Duration>,
    /// Media waiting to be sent, in bytes; with `sent_bps` it gives the drain rate.
    pub backlog_bytes: Option<u64>,
    /// Explicit estimate of the available rate, bit/s.
    pub estimate_bps: Option<u64>,
    /// What the link delivered of this stream over the period the loss report covers, bit/s,
    /// measured by the transport (SRT: bytes sent, retransmissions included, minus the share
    /// reported lost, scaled to this stream's part of the traffic). With loss, the best
    /// measure of the link's capacity.
    pub delivered_bps: Option<u64>,
    /// What the receiver is acknowledging of this stream, bit/s, measured without waiting
    /// for loss reports, given only while it falls well short of what is sent (SRT: a few
    /// dozen acknowledgements a second, one per arriving packet, while many more packets
    /// leave). With a standing queue, the pace of the bottleneck.
    pub acked_bps: Option<u64>,
}

/// Which way the target moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Lowered.
    Decrease,
    /// Unchanged.
    Hold,
    /// Raised.
    Increase,
}

impl Direction {
    /// Lower-case name used in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Decrease => "decrease",
            Direction::Hold => "hold",
            Direction::Increase => "increase",
        }
    }
}

/// Why the controller decided what it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// First decision.
    Start,
    /// Packet loss.
    Loss,
    /// Queuing delay.
    Rtt,
    /// The receiver acknowledges less than is sent while a queue stands.
    Delivery,
    /// Send backlog.
    Backlog,
    /// Explicit estimate below the target.
    Estimate,
    /// A signal is elevated, or a decrease was recent.
    Caution,
    /// Waiting for the next probe slot.
    Steady,
    /// Stepped up.
    Probe,
    /// Could not step up: at the maximum, the estimate, or the encoder's real output.
    Limit,
}

impl Reason {
    /// Lower-case name used in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Start => "start",
            Reason::Loss => "loss",
            Reason::Rtt => "rtt",
            Reason::Delivery => "delivery",
            Reason::Backlog => "backlog",
            Reason::Estimate => "estimate",
            Reason::Caution => "caution",
            Reason::Steady => "steady",
            Reason::Probe => "probe",
            Reason::Limit => "limit",
        }
    }
}

/// The outcome of one tick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// Time of the tick.
    pub time: Duration,
    /// Rate the controller believes the uplink carries, bit/s.
    pub target_bps: u64,
    /// Rate to give the encoder (target capped by the rung), bit/s.
    pub encoder_bps: u64,
    /// Encoder rate before this tick.
    pub previous_encoder_bps: u64,
    /// Current rung index (0 = highest), `None` without a ladder.
    pub rung: Option<usize>,
    /// The rung changed on this tick: apply new caps and force a key frame.
    pub rung_changed: bool,
    /// A loss episode just ended: ask the encoder for a key frame so that receivers that
    /// lost references get a clean picture at the new rate.
    pub recovery_key_frame: bool,
    /// Way the target moved.
    pub direction: Direction,
    /// Why.
    pub reason: Reason,
}

impl Decision {
    /// Whether the encoder or the scaler has to be touched.
    pub fn changed(&self) -> bool {
        self.rung_changed || self.encoder_bps != self.previous_encoder_bps
    }
}

const RTT_WINDOW: Duration = Duration::from_secs(30);
/// Weight of the newest sample in the smoothed send rate (about 0.6 s of memory at 100 ms
/// ticks).
const SENT_SMOOTHING: f64 = 0.3;
/// Consecutive reports with loss between `loss_low` and `loss_high` that count as congestion.
const SUSTAINED_LOSS_REPORTS: u32 = 3;
/// How much send-rate history is kept to match loss reports with what was sent.
const SENT_HISTORY: Duration = Duration::from_secs(3);
/// Longest wait for the encoder to follow a cut before signals may cut again.
const ENCODER_SETTLE: Duration = Duration::from_secs(1);
const FIRST_STEP: f64 = 0.08;
const STEP_GROWTH: f64 = 0.08;
const LAST_STEP: f64 = 0.45;
/// Step near the rate where congestion was last seen.
const NEAR_CONGESTION_STEP: f64 = 0.04;
/// The band around the rate where congestion was last seen that is probed carefully
/// (fractions of that rate).
const NEAR_CONGESTION_BELOW: f64 = 0.95;
const NEAR_CONGESTION_ABOVE: f64 = 1.05;
/// A queue drain measured over less than this is noise (smoothed RTTs move in steps).
const DRAIN_MIN_SPAN: Duration = Duration::from_millis(200);
/// Highest drain rate believed (seconds per second): the link carries at most twice what
/// is sent while its queue drains.
const DRAIN_MAX: f64 = 0.5;
/// A drain says something about the link only shortly after we cut.
const DRAIN_EPISODE: Duration = Duration::from_secs(5);
/// A probe step waits until the encoder sends at least this share of the rate it was given
/// (the target, capped by the rung): a step the link never saw tells nothing about it.
const PROBE_FOLLOW: f64 = 0.7;
/// How long the smoothed send rate must cover a rung's minimum before it counts as
/// delivered evidence for that rung (a key frame lifts it for a tick or two).
const RUNG_DELIVERED_FOR: Duration = Duration::from_millis(300);

/// The bitrate controller state machine.
#[derive(Debug, Clone)]
pub struct Controller {
    config: Config,
    target_bps: u64,
    encoder_bps: u64,
    rung: Option<usize>,
    started: bool,
    last_decrease: Option<Duration>,
    /// Last decrease by a factor (loss, delay, unknown drain): the hold-off runs from it.
    last_factor_cut: Option<Duration>,
    last_increase: Option<Duration>,
    /// When an acknowledged rate last came with a standing queue, and the highest of the
    /// readings that followed each other within the hold-off.
    last_acked: Option<(Duration, u64)>,
    rung_up_since: Option<Duration>,
    /// Since when the target has been past the band where the link last broke with every
    /// signal clear: how long the link has shown more than it carried then.
    grown_since: Option<Duration>,
    /// Per rung, since when the smoothed send rate has covered its minimum on clear ticks:
    /// what the link carried, not what the target hopes.
    delivered_since: Vec<Option<Duration>>,
    congestion_bps: Option<u64>,
    step: f64,
    rtts: MinWindow<Duration>,
    sent_avg: Ewma,
    sent_history: VecDeque<(Duration, u64)>,
    last_loss_report: Option<Duration>,
    loss_episode: bool,
    moderate_loss_reports: u32,
    /// The previous queuing delay and when it was measured.
    previous_delay: Option<(Duration, Duration)>,
    /// When the queuing delay last peaked before shrinking, and the peak.
    drain_peak: Option<(Duration, Duration)>,
    previous_backlog: Option<(Duration, Duration, Option<u64>)>,
}

impl Controller {
    /// A controller that starts at `config.start_bps` (clamped to the range).
    pub fn new(config: Config) -> Self {
        let (min, max) = sane_range(&config);
        let target_bps = config.start_bps.clamp(min, max);
        let mut controller = Controller {
            config,
            target_bps,
            encoder_bps: 0,
            rung: None,
            started: false,
            last_decrease: None,
            last_factor_cut: None,
            last_increase: None,
            last_acked: None,
            rung_up_since: None,
            grown_since: None,
            delivered_since: Vec::new(),
            congestion_bps: None,
            step: FIRST_STEP,
            rtts: MinWindow::new(RTT_WINDOW),
            sent_avg: Ewma::new(SENT_SMOOTHING),
            sent_history: VecDeque::new(),
            last_loss_report: None,
            loss_episode: false,
            moderate_loss_reports: 0,
            previous_delay: None,
            drain_peak: None,
            previous_backlog: None,
        };
        controller.rung = controller
            .config
            .ladder
            .as_ref()
            .map(|l| l.rung_for(target_bps));
        controller.encoder_bps = controller.encoder_rate();
        controller
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Replaces the configuration, keeping the target (clamped to the new range). Returns
    /// `true` when the ladder changed and the rung was chosen afresh: the caller has to apply
    /// it.
    pub fn reconfigure(&mut self, config: Config) -> bool {
        let ladder_changed = config.ladder != self.config.ladder;
        self.config = config;
        let (min, max) = sane_range(&self.config);
        self.target_bps = self.target_bps.clamp(min, max);
        if ladder_changed {
            self.rung = self
                .config
                .ladder
                .as_ref()
                .map(|l| l.rung_for(self.target_bps));
            self.rung_up_since = None;
            self.delivered_since.clear();
        }
        self.encoder_bps = self.encoder_rate();
        ladder_changed
    }

    /// Current target, bit/s.
    pub fn target_bps(&self) -> u64 {
        self.target_bps
    }

    /// Current encoder rate, bit/s.
    pub fn encoder_bps(&self) -> u64 {
        self.encoder_bps
    }

    /// Current rung.
    pub fn rung(&self) -> Option<usize> {
        self.rung
    }

    /// Lowest RTT seen over the last 30 s.
    pub fn base_rtt(&self) -> Option<Duration> {
        self.rtts.min()
    }

    fn encoder_rate(&self) -> u64 {
        match (&self.config.ladder, self.rung) {
            (Some(ladder), Some(rung)) => self.target_bps.min(ladder.rungs()[rung].max_bps),
            _ => self.target_bps,
        }
    }

    /// Feeds one observation and returns the decision for this tick.
    pub fn update(&mut self, obs: &Observation) -> Decision {
        let previous_encoder_bps = self.encoder_bps;
        let (min_bps, max_bps) = sane_range(&self.config);
        let now = obs.now;

        if let Some(rtt) = obs.rtt {
            self.rtts.add(now, rtt);
        }
        let queuing_delay = obs
            .rtt
            .zip(self.base_rtt())
            .map(|(rtt, base)| rtt.saturating_sub(base));
        // Reports may carry an RTT only when they are fresh: keep using the last one known.
        let rtt = self.rtts.latest().unwrap_or(Duration::ZERO);
        let holdoff = (rtt * 2).max(Duration::from_millis(300));
        if let Some(sent) = obs.sent_bps {
            self.sent_avg.add(sent as f64);
            self.sent_history.push_back((now, sent));
            while self
                .sent_history
                .front()
                .is_some_and(|&(t, _)| now.saturating_sub(t) > SENT_HISTORY)
            {
                self.sent_history.pop_front();
            }
        }
        let since_decrease = self.last_decrease.map(|t| now.saturating_sub(t));
        // After a cut the encoder's rate control needs a moment to follow: loss and delay
        // measured meanwhile still describe the old rate. Cut again once it follows.
        let encoder_lagging = since_decrease.is_some_and(|d| d < ENCODER_SETTLE)
            && self
                .sent_avg
                .value()
                .is_some_and(|sent| sent > self.target_bps as f64 * 1.15);
        // Ceilings from measured rates do not extend the hold-off: a series of shallow cuts
        // to what got through must not keep the loss factor from ever applying.
        let in_holdoff = self
            .last_factor_cut
            .is_some_and(|t| now.saturating_sub(t) < holdoff)
            || encoder_lagging;

        // Backlog trend and drain rate.
        let mut backlog_growing = false;
        let mut drain_bps = None;
        if let Some(backlog) = obs.backlog {
            if let Some((t0, b0, bytes0)) = self.previous_backlog {
                backlog_growing = backlog > b0 + Duration::from_millis(10);
                let dt = now.saturating_sub(t0).as_secs_f64();
                if let (Some(bytes0), Some(bytes1), Some(sent), true) =
                    (bytes0, obs.backlog_bytes, obs.sent_bps, dt > 0.0)
                {
                    let growth_bps = (bytes1 as f64 - bytes0 as f64) * 8.0 / dt;
                    drain_bps = Some((sent as f64 - growth_bps).max(0.0) as u64);
                }
            }
            self.previous_backlog = Some((now, backlog, obs.backlog_bytes));
        } else {
            self.previous_backlog = None;
        }

        let target = self.target_bps as f64;
        // Factors apply to what is really sent when the encoder undershoots its target: a cut
        // from a target nobody reaches would change nothing.
        let effective = self
            .sent_avg
            .value()
            .filter(|&s| s > 0.0)
            .map_or(target, |s| target.min(s));
        let mut ceilings: Vec<(u64, Reason)> = Vec::new();
        let mut caution = false;
        let mut factor_cut: Option<u64> = None;

        // The pace at which the receiver acknowledges, while a queue stands in front of the
        // bottleneck, is the bottleneck's rate: the loss reports that follow describe
        // packets sent before a cut to it and only hold (below).
        let standing_queue = queuing_delay.is_some_and(|d| d >= self.config.rtt_threshold / 2);
        // A receiver waiting for a retransmission acknowledges nothing: readings undercount,
        // each by its own gaps. The highest reading of the hold-off is the closest one, and
        // lower readings of the same episode must not cut step after step.
        if let Some(acked) = obs.acked_bps
            && standing_queue
        {
            let peak = match self.last_acked {
                Some((t, peak)) if now.saturating_sub(t) < holdoff => peak.max(acked),
                _ => acked,
            };
            ceilings.push(((peak as f64 * 0.9) as u64, Reason::Delivery));
            self.last_acked = Some((now, peak));
            caution = true;
        }
        // Loss reports come back through the queue: those of packets sent before the cut
        // keep coming for a round trip after the acknowledgements stopped telling the rate.
        let acked_recent = self
            .last_acked
            .is_some_and(|(t, _)| now.saturating_sub(t) < holdoff + rtt);

        if let Some(loss) = obs.loss {
            if acked_recent {
                // Measured at the receiver's pace already: loss only holds.
                caution |= loss > self.config.loss_low;
            } else if loss >= self.config.loss_high {
                // What got through is what the path carries: a policer dropping 70 % needs
                // more than a halving. A rate, not a factor: it applies on every report.
                match (obs.delivered_bps, self.sent_since(self.last_loss_report)) {
                    (Some(delivered), _) => {
                        ceilings.push(((delivered as f64 * 0.9) as u64, Reason::Loss))
                    }
                    (None, Some(sent)) => {
                        ceilings.push(((sent * (1.0 - loss) * 0.9) as u64, Reason::Loss))
                    }
                    (None, None) => {}
                }
                if !in_holdoff {
                    let factor = (1.0 - loss / 2.0).clamp(0.5, 0.95);
                    factor_cut = Some((effective * factor) as u64);
                    ceilings.push(((effective * factor) as u64, Reason::Loss));
                }
                caution = true;
                self.moderate_loss_reports = 0;
            } else if loss > self.config.loss_low {
                // A few percent now and then is noise; report after report it is a link
                // carrying a little less than we send, and every lost packet hurts video.
                self.moderate_loss_reports += 1;
                let got_through = obs.delivered_bps.map(|d| d as f64).or_else(|| {
                    self.sent_since(self.last_loss_report)
                        .map(|sent| sent * (1.0 - loss))
                });
                if self.moderate_loss_reports >= SUSTAINED_LOSS_REPORTS
                    && let Some(got_through) = got_through
                {
                    ceilings.push(((got_through * 0.97) as u64, Reason::Loss));
                    self.moderate_loss_reports = 0;
                }
                caution = true;
            } else {
                self.moderate_loss_reports = 0;
            }
        }
        let delay_shrinking = queuing_delay
            .zip(self.previous_delay)
            .is_some_and(|(delay, (_, previous))| delay + Duration::from_millis(5) < previous);
        // How fast the queue grows: a queue filling at g seconds per second holds what
        // arrives beyond the link's rate, so the link carries 1 / (1 + g) of what is sent.
        let delay_growth =
            queuing_delay
                .zip(self.previous_delay)
                .and_then(|(delay, (at, previous))| {
                    let dt = now.saturating_sub(at).as_secs_f64();
                    (dt > 0.0 && delay > previous).then(|| (delay - previous).as_secs_f64() / dt)
                });
        if let (Some(delay), Some((at, previous))) = (queuing_delay, self.previous_delay) {
            if delay + Duration::from_millis(1) < previous {
                self.drain_peak.get_or_insert((at, previous));
            } else if delay > previous + Duration::from_millis(5) {
                self.drain_peak = None;
            }
        }
        if queuing_delay.is_some_and(|d| d < Duration::from_millis(5)) {
            self.drain_peak = None;
        }
        if let Some(delay) = queuing_delay {
            self.previous_delay = Some((now, delay));
        }
        self.learn_from_drain(now, queuing_delay);
        if obs.loss.is_some() {
            self.last_loss_report = Some(now);
        }
        if let Some(delay) = queuing_delay {
            if delay >= self.config.rtt_threshold {
                // A queue that already drains after a cut needs time, not another cut.
                if !in_holdoff && !acked_recent && !delay_shrinking {
                    let factor = delay_growth.map_or(0.85, |g| (1.0 / (1.0 + g)).clamp(0.5, 0.85));
                    merge_min(&mut factor_cut, (effective * factor) as u64);
                    ceilings.push(((effective * factor) as u64, Reason::Rtt));
                }
                caution = true;
            } else if delay >= self.config.rtt_threshold / 2 {
                caution = true;
            }
        }
        if let Some(backlog) = obs.backlog {
            let threshold = self.config.backlog_threshold;
            if backlog >= threshold && (backlog_growing || backlog >= threshold * 2) {
                match drain_bps {
                    Some(drain) if drain > 0 => {
                        ceilings.push(((drain as f64 * 0.85) as u64, Reason::Backlog))
                    }
                    _ if !in_holdoff => {
                        merge_min(&mut factor_cut, (effective * 0.8) as u64);
                        ceilings.push(((effective * 0.8) as u64, Reason::Backlog))
                    }
                    _ => {}
                }
                caution = true;
            } else if backlog >= threshold / 2 {
                caution = true;
            }
        }
        if let Some(estimate) = obs.estimate_bps
            && estimate < self.target_bps
        {
            ceilings.push((estimate, Reason::Estimate));
        }

        let lowest = ceilings.iter().min_by_key(|(bps, _)| *bps).copied();
        let (direction, reason) = if !self.started {
            self.started = true;
            (Direction::Hold, Reason::Start)
        } else if let Some((ceiling, reason)) = lowest
            && ceiling.max(min_bps) < self.target_bps
        {
            // Remember where the link broke: the rate actually sent (smoothed: one tick's
            // worth of frames is noisy) if known, else the target.
            self.congestion_bps = Some(
                self.sent_avg
                    .value()
                    .map_or(self.target_bps, |s| s as u64)
                    .max(ceiling),
            );
            self.target_bps = ceiling.max(min_bps);
            self.last_decrease = Some(now);
            if factor_cut.is_some_and(|f| f <= ceiling) {
                self.last_factor_cut = Some(now);
            }
            self.step = FIRST_STEP;
            self.loss_episode |= matches!(reason, Reason::Loss | Reason::Delivery);
            (Direction::Decrease, reason)
        } else if caution
            || lowest.is_some()
            || self
                .last_decrease
                .is_some_and(|t| now.saturating_sub(t) < self.config.increase_hold)
        {
            self.step = FIRST_STEP;
            (Direction::Hold, Reason::Caution)
        } else if self
            .last_increase
            .is_some_and(|t| now.saturating_sub(t) < self.config.probe_interval.max(rtt * 2))
        {
            (Direction::Hold, Reason::Steady)
        } else if self.last_increase.is_some()
            && self
                .sent_avg
                .value()
                .is_some_and(|s| s < self.encoder_bps as f64 * PROBE_FOLLOW)
        {
            // The last step has not reached the link yet: stacking another on it would
            // probe nothing and leave the target far above what is really sent.
            (Direction::Hold, Reason::Limit)
        } else {
            let near_congestion = self.near_congestion(target);
            let step = if near_congestion {
                self.step.min(NEAR_CONGESTION_STEP)
            } else {
                self.step
            };
            let mut limit = max_bps;
            // Climb fast up to just below where the link broke, then carefully through it.
            if let Some(c) = self.congestion_bps
                && self.target_bps < band_low(c)
            {
                limit = limit.min(band_low(c));
            }
            if let Some(estimate) = obs.estimate_bps {
                limit = limit.min(estimate);
            }
            if let Some(sent) = self.sent_avg.value().filter(|&s| s > 0.0) {
                limit = limit.min((sent * 1.5) as u64 + 100_000);
            }
            let proposed = ((target * (1.0 + step)) as u64).min(limit);
            if proposed > self.target_bps {
                self.target_bps = proposed;
                self.last_increase = Some(now);
                self.step = (self.step + STEP_GROWTH).min(LAST_STEP);
                (Direction::Increase, Reason::Probe)
            } else {
                (Direction::Hold, Reason::Limit)
            }
        };
        self.target_bps = self.target_bps.clamp(min_bps, max_bps);

        // The episode ends with the first report under the hold threshold once the encoder
        // follows the new rate. A rung change brings its own key frame.
        let mut recovery_key_frame = false;
        if self.loss_episode
            && obs.loss.is_some_and(|l| l < self.config.loss_high)
            && direction != Direction::Decrease
            && !encoder_lagging
        {
            self.loss_episode = false;
            recovery_key_frame = true;
        }
        let clear = direction != Direction::Decrease && reason != Reason::Caution;
        self.track_climb_evidence(now, clear);
        let rung_changed = self.update_rung(now);
        let recovery_key_frame = recovery_key_frame && !rung_changed;
        self.encoder_bps = self.encoder_rate();
        Decision {
            time: now,
            target_bps: self.target_bps,
            encoder_bps: self.encoder_bps,
            previous_encoder_bps,
            rung: self.rung,
            rung_changed,
            recovery_key_frame,
            direction,
            reason,
        }
    }

    /// A queue that drains at `s` seconds per second while we send `r` sits in front of a
    /// link carrying `r / (1 − s)`: the mirror of the growth rule, and the one moment a
    /// transport that only shows delay and retransmission counters (SRT) tells the link's
    /// rate. After a cascade of cuts, the rate where congestion was last seen is the rate of
    /// the last cut, which undersold the link (the queue, full of retransmissions, drains
    /// only well below it); the drain corrects it, so probing climbs fast back to just below
    /// the link and carefully past it instead of concluding that the link has grown.
    fn learn_from_drain(&mut self, now: Duration, delay: Option<Duration>) {
        let (Some((peak_at, peak)), Some(delay), Some(sent)) =
            (self.drain_peak, delay, self.sent_avg.value())
        else {
            return;
        };
        let span = now.saturating_sub(peak_at);
        let recent_cut = self
            .last_decrease
            .is_some_and(|t| now.saturating_sub(t) < DRAIN_EPISODE);
        if span < DRAIN_MIN_SPAN || peak < self.config.rtt_threshold / 2 || !recent_cut {
            return;
        }
        let drain = (peak.saturating_sub(delay).as_secs_f64() / span.as_secs_f64()).min(DRAIN_MAX);
        let capacity = (sent / (1.0 - drain)) as u64;
        if self.congestion_bps.is_some_and(|c| c < capacity) {
            self.congestion_bps = Some(capacity);
        }
    }

    /// Whether `target` is in the band around the rate where congestion was last seen.
    fn near_congestion(&self, target: f64) -> bool {
        // The same integer bound as the cap in `update`: a target stopped at it is in the band.
        self.congestion_bps.is_some_and(|c| {
            target as u64 >= band_low(c) && target < c as f64 * NEAR_CONGESTION_ABOVE
        })
    }

    /// Mean send rate since `since` (the previous loss report: the period the new report
    /// describes), the smoothed rate when there is no such history.
    fn sent_since(&self, since: Option<Duration>) -> Option<f64> {
        let window: Vec<u64> = match since {
            Some(since) => self
                .sent_history
                .iter()
                .filter(|&&(t, _)| t > since)
                .map(|&(_, s)| s)
                .collect(),
            None => Vec::new(),
        };
        if window.is_empty() {
            self.sent_avg.value()
        } else {
            Some(window.iter().sum::<u64>() as f64 / window.len() as f64)
        }
    }

    /// Threshold the target must reach to climb to `rung`.
    fn rung_threshold(&self, ladder: &Ladder, rung: usize) -> f64 {
        ladder.rungs()[rung].min_bps as f64 * self.config.rung_up_margin
    }

    /// Keeps the evidence a climb past the next rung, or a shortened hold, needs: how long
    /// the link has shown more than where it last broke, and which rungs the rate it carried
    /// covers. Any congestion signal or decrease clears both.
    fn track_climb_evidence(&mut self, now: Duration, clear: bool) {
        let Some(ladder) = self.config.ladder.clone() else {
            return;
        };
        self.delivered_since.resize(ladder.len(), None);
        if !clear {
            self.grown_since = None;
            self.delivered_since.fill(None);
            return;
        }
        let past_band = self
            .congestion_bps
            .is_none_or(|c| self.target_bps as f64 >= c as f64 * NEAR_CONGESTION_ABOVE);
        if past_band {
            self.grown_since.get_or_insert(now);
        }
        // The rung's minimum, not its threshold: the link carrying the least the rung is ever
        // encoded at is the proof; the margin that keeps rungs from flapping is the target's
        // (a rung is left only when the target falls below its minimum).
        let sent = self.sent_avg.value().unwrap_or(0.0);
        for (rung, r) in ladder.rungs().iter().enumerate() {
            if sent >= r.min_bps as f64 {
                self.delivered_since[rung].get_or_insert(now);
            } else {
                self.delivered_since[rung] = None;
            }
        }
    }

    fn update_rung(&mut self, now: Duration) -> bool {
        let (Some(ladder), Some(current)) = (self.config.ladder.clone(), self.rung) else {
            return false;
        };
        let rungs = ladder.rungs();
        let target = self.target_bps;
        if target < rungs[current].min_bps && current + 1 < rungs.len() {
            self.rung = Some(ladder.rung_for(target).max(current + 1));
            self.rung_up_since = None;
            return true;
        }
        if current == 0 {
            return false;
        }
        // The target alone (what probing believes): one rung after the full hold.
        let mut climb_to = None;
        if (target as f64) < self.rung_threshold(&ladder, current - 1) {
            self.rung_up_since = None;
        } else {
            let since = *self.rung_up_since.get_or_insert(now);
            if now.saturating_sub(since) >= self.config.rung_up_hold {
                climb_to = Some(current - 1);
            }
        }
        // What the link carried: once it has shown more than where it last broke for half
        // the hold, straight to the highest rung whose threshold the target covers and whose
        // minimum the link delivered, however many rungs up.
        let grown_for = self.grown_since.map(|t| now.saturating_sub(t));
        if grown_for.is_some_and(|g| g >= self.config.rung_up_hold / 2)
            && let Some(best) = (0..current).find(|&r| {
                target as f64 >= self.rung_threshold(&ladder, r)
                    && self
                        .delivered_since
                        .get(r)
                        .copied()
                        .flatten()
                        .is_some_and(|t| now.saturating_sub(t) >= RUNG_DELIVERED_FOR)
            })
        {
            climb_to = Some(climb_to.map_or(best, |c: usize| c.min(best)));
        }
        match climb_to {
            Some(rung) => {
                self.rung = Some(rung);
                self.rung_up_since = None;
                true
            }
            None => false,
        }
    }
}

fn merge_min(into: &mut Option<u64>, value: u64) {
    *into = Some(into.map_or(value, |v| v.min(value)));
}

/// Where fast probing stops below the rate congestion was last seen at.
fn band_low(congestion_bps: u64) -> u64 {
    (congestion_bps as f64 * NEAR_CONGESTION_BELOW) as u64
}

fn sane_range(config: &Config) -> (u64, u64) {
    let min = config.min_bps.max(1);
    (min, config.max_bps.max(min))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(100);

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    /// Runs `ticks` ticks of `obs` (with `now` filled in), returns the last decision.
    fn run(c: &mut Controller, t: &mut Duration, ticks: u32, obs: Observation) -> Decision {
        let mut last = None;
        for _ in 0..ticks {
            *t += TICK;
            last = Some(c.update(&Observation { now: *t, ..obs }));
        }
        last.expect("at least one tick")
    }

    /// A fresh controller fed `obs` for 2 s never decreases and keeps its 2 Mbit/s start.
    fn assert_never_cuts(obs: Observation) {
        let mut c = Controller::new(Config::default());
        let mut t = Duration::ZERO;
        let d = run(&mut c, &mut t, 20, obs);
        assert_ne!(d.direction, Direction::Decrease);
        assert!(c.target_bps() >= 2_000_000);
    }

    /// Key frames asked for over `ticks` ticks of `obs`.
    fn key_frames(c: &mut Controller, t: &mut Duration, ticks: u32, obs: Observation) -> u32 {
        (0..ticks)
            .map(|_| run(c, t, 1, obs).recovery_key_frame as u32)
            .sum()
    }

    fn clear(sent_bps: u64) -> Observation {
        Observation {
            sent_bps: Some(sent_bps),
            loss: Some(0.0),
            rtt: Some(ms(40)),
            ..Default::default()
        }
    }

    /// A default controller after `ticks` clear ticks at 2 Mbit/s, and the time it is at.
    fn after_clear_ticks(ticks: u32) -> (Controller, Duration) {
        let mut c = Controller::new(Config::default());
        let mut t = Duration::ZERO;
        run(&mut c, &mut t, ticks, clear(2_000_000));
        (c, t)
    }

    /// `clear(sent_bps)` with a `loss` fraction reported.
    fn with_loss(sent_bps: u64, loss: f64) -> Observation {
        Observation {
            loss: Some(loss),
            ..clear(sent_bps)
        }
    }

    /// `clear(sent_bps)` with a smoothed RTT of `rtt_ms`.
    fn with_rtt(sent_bps: u64, rtt_ms: u64) -> Observation {
        Observation {
            rtt: Some(ms(rtt_ms)),
            ..clear(sent_bps)
        }
    }

    #[test]
    fn loss_spike_cuts_on_the_next_tick_once() {
        let (mut c, mut t) = after_clear_ticks(10);
        let before = c.target_bps();
        let d = run(&mut c, &mut t, 1, with_loss(2_000_000, 0.3));
        assert_eq!(d.direction, Direction::Decrease);
        assert_eq!(d.reason, Reason::Loss);
        // Below what the encoder really sent (2 Mbit/s), by at most half of it.
        assert!(d.target_bps < before && d.target_bps < 2_000_000);
        assert!(d.target_bps >= 1_000_000, "{}", d.target_bps);
        // The same episode reported again within the hold-off does not cut again.
        let again = run(&mut c, &mut t, 1, with_loss(2_000_000, 0.3));
        assert_eq!(again.direction, Direction::Hold);
        assert_eq!(again.target_bps, d.target_bps);
    }

    #[test]
    fn a_key_frame_is_requested_once_a_loss_episode_ends() {
        let (mut c, mut t) = after_clear_ticks(10);
        let lossy = with_loss(2_000_000, 0.4);
        let cut = run(&mut c, &mut t, 1, lossy);
        assert_eq!(cut.direction, Direction::Decrease);
        assert!(!cut.recovery_key_frame);
        // The encoder still sends the old rate: no key frame yet, whatever the report says.
        let d = run(&mut c, &mut t, 1, clear(2_000_000));
        assert!(!d.recovery_key_frame);
        // It follows the new rate and the next report is clean: one key frame.
        assert_eq!(key_frames(&mut c, &mut t, 30, clear(cut.encoder_bps)), 1);
    }

    #[test]
    fn a_measured_delivery_rate_sets_the_depth_of_a_loss_cut() {
        let (mut c, mut t) = after_clear_ticks(5);
        // The transport saw 60 % loss and measured 700 kbit/s getting through: one cut to
        // 90 % of that, not the 15 % a capped loss factor would give.
        let d = run(
            &mut c,
            &mut t,
            1,
            Observation {
                loss: Some(0.15),
                delivered_bps: Some(700_000),
                ..clear(2_000_000)
            },
        );
        assert_eq!(d.direction, Direction::Decrease);
        assert_eq!(d.reason, Reason::Loss);
        assert_eq!(d.target_bps, 630_000);
        // A delivery rate without loss is no congestion.
        assert_never_cuts(Observation {
            delivered_bps: Some(700_000),
            ..clear(2_000_000)
        });
    }

    #[test]
    fn an_acknowledged_rate_with_a_standing_queue_cuts_to_it_once() {
        let (mut c, mut t) = after_clear_ticks(10);
        // The link fell to a tenth: the queue stands 250 ms over the base RTT and the
        // receiver acknowledges 280 kbit/s of the stream. One tick later the target is 90 %
        // of it, before any loss report came back.
        let collapsed = Observation {
            rtt: Some(ms(290)),
            acked_bps: Some(280_000),
            loss: None,
            ..clear(2_000_000)
        };
        let d = run(&mut c, &mut t, 1, collapsed);
        assert_eq!(d.direction, Direction::Decrease);
        assert_eq!(d.reason, Reason::Delivery);
        assert_eq!(d.target_bps, 252_000);
        // The loss reports of what was sent before, with the queue still standing, cut by no
        // factor on top of it while the acknowledgements keep telling the rate.
        for _ in 0..5 {
            let d = run(
                &mut c,
                &mut t,
                1,
                Observation {
                    loss: Some(0.5),
                    ..collapsed
                },
            );
            assert_eq!(d.target_bps, 252_000, "{d:?}");
        }
        // Lower readings of the same episode (the receiver waited for retransmissions) do
        // not cut again.
        let d = run(
            &mut c,
            &mut t,
            1,
            Observation {
                acked_bps: Some(150_000),
                ..collapsed
            },
        );
        assert_eq!(d.target_bps, 252_000, "{d:?}");
        // The same pace without a standing queue is no congestion (a sender of few packets
        // is acknowledged a few times a second).
        assert_never_cuts(Observation {
            acked_bps: Some(280_000),
            ..clear(2_000_000)
        });
    }

    #[test]
    fn a_cut_to_the_acknowledged_rate_ends_with_a_key_frame() {
        let (mut c, mut t) = after_clear_ticks(10);
        let d = run(
            &mut c,
            &mut t,
            1,
            Observation {
                rtt: Some(ms(290)),
                acked_bps: Some(280_000),
                ..clear(2_000_000)
            },
        );
        assert_eq!(d.reason, Reason::Delivery);
        assert_eq!(key_frames(&mut c, &mut t, 30, clear(d.encoder_bps)), 1);
    }

    #[test]
    fn moderate_loss_holds_then_cuts_when_it_persists() {
        let (mut c, mut t) = after_clear_ticks(1);
        let start = c.target_bps();
        let moderate = with_loss(2_000_000, 0.05);
        for _ in 0..2 {
            let d = run(&mut c, &mut t, 1, moderate);
            assert_eq!(d.target_bps, start);
            assert_eq!(d.reason, Reason::Caution);
        }
        // The third report in a row: down to what got through, 2 Mbit/s × 0.95 × 0.97.
        let d = run(&mut c, &mut t, 1, moderate);
        assert_eq!(d.direction, Direction::Decrease);
        assert_eq!(d.reason, Reason::Loss);
        assert_eq!(d.target_bps, 1_843_000);
        // Isolated moderate losses between clean reports never cut.
        let mut c = Controller::new(Config::default());
        for i in 0..60 {
            let obs = if i % 2 == 0 {
                moderate
            } else {
                clear(2_000_000)
            };
            assert_ne!(run(&mut c, &mut t, 1, obs).direction, Direction::Decrease);
        }
    }

    #[test]
    fn rtt_rise_decreases_within_500_ms() {
        let (mut c, mut t) = after_clear_ticks(20);
        let before = c.target_bps();
        let mut decreased_after = None;
        for i in 1..=5 {
            let d = run(&mut c, &mut t, 1, with_rtt(2_000_000, 40 + 60 * i));
            if d.direction == Direction::Decrease {
                decreased_after = Some(i);
                assert_eq!(d.reason, Reason::Rtt);
                break;
            }
        }
        assert!(decreased_after.is_some_and(|i| i <= 5));
        assert!(c.target_bps() < before);
    }

    #[test]
    fn a_fast_growing_delay_cuts_deeper() {
        let (mut c, mut t) = after_clear_ticks(20);
        // A queue filling at 1.5 s per second (2.5× what the link carries is sent): the delay
        // jumps by 150 ms in one 100 ms tick.
        let d = run(&mut c, &mut t, 1, with_rtt(2_000_000, 40 + 150));
        assert_eq!(d.reason, Reason::Rtt);
        assert_eq!(d.target_bps, 1_000_000, "halved at most");
        // A slow creep cuts by 15 %.
        let mut c = Controller::new(Config::default());
        run(&mut c, &mut t, 20, clear(2_000_000));
        let mut last = None;
        for i in 1..=12 {
            let d = run(&mut c, &mut t, 1, with_rtt(2_000_000, 40 + 10 * i));
            if d.direction == Direction::Decrease {
                last = Some(d);
                break;
            }
        }
        assert_eq!(last.expect("a cut").target_bps, 1_700_000);
    }

    #[test]
    fn growing_backlog_cuts_below_the_drain_rate() {
        let mut c = Controller::new(Config {
            start_bps: 3_000_000,
            ..Default::default()
        });
        let mut t = Duration::ZERO;
        run(&mut c, &mut t, 5, clear(3_000_000));
        // The link drains 1 Mbit/s while 3 Mbit/s come in: 250 kB/s of backlog growth.
        let mut bytes = 0u64;
        let mut decision = None;
        for i in 0..20u64 {
            bytes += 25_000;
            t += TICK;
            let d = c.update(&Observation {
                now: t,
                backlog: Some(ms(i * 70)),
                backlog_bytes: Some(bytes),
                ..clear(3_000_000)
            });
            if d.direction == Direction::Decrease {
                decision = Some((i, d));
                break;
            }
        }
        let (tick, d) = decision.expect("backlog leads to a decrease");
        assert!(tick <= 5, "decided after {tick} ticks");
        assert_eq!(d.reason, Reason::Backlog);
        assert!(d.target_bps <= 1_000_000, "{}", d.target_bps);
        assert!(d.target_bps >= 700_000, "{}", d.target_bps);
    }

    #[test]
    fn explicit_estimate_is_a_ceiling() {
        let mut c = Controller::new(Config::default());
        let mut t = Duration::ZERO;
        let obs = Observation {
            estimate_bps: Some(800_000),
            ..clear(2_000_000)
        };
        let d = run(&mut c, &mut t, 2, obs);
        assert_eq!(d.target_bps, 800_000);
        let d = run(&mut c, &mut t, 100, obs);
        assert_eq!(d.target_bps, 800_000);
    }

    #[test]
    fn respects_min_and_max() {
        let config = Config {
            min_bps: 300_000,
            max_bps: 2_500_000,
            start_bps: 10_000_000,
            ..Default::default()
        };
        let mut c = Controller::new(config);
        assert_eq!(c.target_bps(), 2_500_000);
        let mut t = Duration::ZERO;
        let d = run(&mut c, &mut t, 200, clear(2_500_000));
        assert_eq!(d.target_bps, 2_500_000);
        for _ in 0..50 {
            let d = run(&mut c, &mut t, 4, with_loss(100_000, 0.5));
            assert!(d.target_bps >= 300_000);
        }
        assert_eq!(c.target_bps(), 300_000);
    }

    #[test]
    fn increases_cautiously_then_faster() {
        let mut c = Controller::new(Config {
            start_bps: 500_000,
            ..Default::default()
        });
        let mut t = Duration::ZERO;
        let mut previous = c.target_bps();
        let mut steps = Vec::new();
        for _ in 0..60 {
            // The encoder delivers what it is asked for.
            let sent = c.encoder_bps();
            let d = run(&mut c, &mut t, 1, clear(sent));
            if d.direction == Direction::Increase {
                steps.push(d.target_bps as f64 / previous as f64);
            }
            assert_ne!(d.direction, Direction::Decrease);
            previous = d.target_bps;
        }
        assert!(steps.len() >= 8, "{steps:?}");
        assert!(steps[0] <= 1.081, "first step {}", steps[0]);
        // Until the encoder's real output caps them.
        assert!(
            steps[..5].windows(2).all(|w| w[1] >= w[0] - 1e-4),
            "{steps:?}"
        );
        assert!(steps.iter().any(|&s| s > 1.35), "{steps:?}");
        // 6 s of clear signals: at least 3× the start.
        assert!(c.target_bps() >= 1_500_000, "{}", c.target_bps());
    }

    #[test]
    fn probing_slows_where_the_link_broke_and_climbs_past_it() {
        let (mut c, mut t) = after_clear_ticks(5);
        // The link breaks at about 2 Mbit/s.
        let cut = run(&mut c, &mut t, 1, with_loss(2_000_000, 0.3));
        assert_eq!(cut.direction, Direction::Decrease);
        let mut targets = Vec::new();
        for _ in 0..100 {
            let sent = c.encoder_bps();
            let d = run(&mut c, &mut t, 1, clear(sent));
            if d.direction == Direction::Increase {
                targets.push(d.target_bps);
            }
        }
        // Up to 95 % of 2 Mbit/s at once, then steps of at most 4 % through the band...
        assert!(targets.contains(&1_900_000), "{targets:?}");
        let in_band: Vec<&u64> = targets
            .iter()
            .filter(|&&b| (1_900_000..2_100_000).contains(&b))
            .collect();
        assert!(in_band.len() >= 3, "{targets:?}");
        for w in in_band.windows(2) {
            assert!(*w[1] as f64 <= *w[0] as f64 * 1.041, "{targets:?}");
        }
        // ...and on, never stuck: the link carries more now.
        assert!(c.target_bps() >= 4_000_000, "{targets:?}");
    }

    #[test]
    fn no_increase_right_after_a_decrease() {
        let (mut c, mut t) = after_clear_ticks(5);
        let cut = run(&mut c, &mut t, 1, with_loss(2_000_000, 0.4));
        let d = run(&mut c, &mut t, 9, clear(2_000_000));
        assert_eq!(d.target_bps, cut.target_bps, "no increase within 1 s");
        let d = run(&mut c, &mut t, 10, clear(2_000_000));
        assert!(d.target_bps > cut.target_bps, "probing after the hold");
    }

    #[test]
    fn cuts_apply_to_what_the_encoder_really_sends() {
        let mut c = Controller::new(Config {
            start_bps: 4_000_000,
            ..Default::default()
        });
        let mut t = Duration::ZERO;
        // The encoder cannot fill 4 Mbit/s: it sends 2.
        run(&mut c, &mut t, 20, clear(2_000_000));
        let d = run(&mut c, &mut t, 1, with_rtt(2_000_000, 300));
        assert_eq!(d.reason, Reason::Rtt);
        // The delay jumped by 260 ms in 100 ms: halved, from the 2 Mbit/s really sent.
        assert_eq!(d.target_bps, 1_000_000);
    }

    #[test]
    fn probing_waits_for_the_encoder_to_reach_the_last_step() {
        let mut c = Controller::new(Config::default());
        let mut t = Duration::ZERO;
        let d = run(&mut c, &mut t, 15, clear(2_000_000));
        assert!(d.target_bps > 2_000_000, "probed on a clear link");
        let target = d.target_bps;
        // The encoder makes only 60 % of it (its rate control lags, or the scene is easy):
        // that step never reached the link, so no further one is stacked on it.
        let lagging = (target as f64 * 0.6) as u64;
        let settled = run(&mut c, &mut t, 10, clear(lagging)).target_bps;
        let d = run(&mut c, &mut t, 20, clear(lagging));
        assert_eq!(d.target_bps, settled);
        assert_eq!(d.reason, Reason::Limit);
        let target = settled;
        // Once it sends (nearly) what it was given, probing resumes.
        let d = run(&mut c, &mut t, 10, clear(target));
        assert!(d.target_bps > target, "{} <= {target}", d.target_bps);
    }

    #[test]
    fn measured_ceilings_do_not_hold_off_the_loss_factor() {
        let (mut c, mut t) = after_clear_ticks(5);
        // Heavy loss reported every 200 ms; the transport's delivery rate is about what the
        // encoder sends (retransmissions make it look so), which alone cuts by 10 % a report.
        let mut deep_cuts = 0;
        let mut previous = c.target_bps();
        for tick in 0..16 {
            let sent = c.encoder_bps();
            let obs = if tick % 2 == 0 {
                Observation {
                    loss: Some(0.4),
                    delivered_bps: Some(sent),
                    ..clear(sent)
                }
            } else {
                Observation {
                    loss: None,
                    ..clear(sent)
                }
            };
            let d = run(&mut c, &mut t, 1, obs);
            if d.direction == Direction::Decrease && (d.target_bps as f64) < previous as f64 * 0.85
            {
                deep_cuts += 1;
            }
            previous = d.target_bps;
        }
        // The loss factor (× 0.8 at 40 %) applies again once its own hold-off (300 ms) is over,
        // whatever the shallow cuts in between.
        assert!(deep_cuts >= 2, "{deep_cuts} factor cuts");
    }

    #[test]
    fn a_draining_queue_tells_where_the_link_is() {
        // A cascade of cuts over a full queue: the last one happens at 500 kbit/s, while the
        // queue (full of retransmissions) still holds 200 ms.
        let climb = |drain_ms_per_tick: u64| {
            let mut c = Controller::new(Config {
                start_bps: 500_000,
                ..Default::default()
            });
            let mut t = Duration::ZERO;
            run(&mut c, &mut t, 10, clear(500_000));
            let cut = run(
                &mut c,
                &mut t,
                1,
                Observation {
                    loss: Some(0.3),
                    rtt: Some(ms(240)),
                    ..clear(500_000)
                },
            );
            assert_eq!(cut.direction, Direction::Decrease);
            // The encoder follows the cut while the queue drains.
            let mut rtt: u64 = 240;
            while rtt > 40 {
                rtt = rtt.saturating_sub(drain_ms_per_tick).max(40);
                let sent = c.encoder_bps();
                run(&mut c, &mut t, 1, with_rtt(sent, rtt));
            }
            let mut targets = Vec::new();
            for _ in 0..30 {
                let sent = c.encoder_bps();
                let d = run(&mut c, &mut t, 1, clear(sent));
                if d.direction == Direction::Increase {
                    targets.push(d.target_bps);
                }
            }
            targets
        };
        let careful_from = |targets: &[u64]| {
            targets
                .windows(2)
                .find(|w| (w[1] as f64) < w[0] as f64 * 1.041)
                .map(|w| w[0])
                .expect("careful steps")
        };
        // Without a measurable drain (the queue vanishes between two samples) the careful
        // steps start where the cut was decided: the 500 kbit/s sent then.
        let sudden = climb(200);
        let from_cut = careful_from(&sudden);
        assert!((450_000..550_000).contains(&from_cut), "{sudden:?}");
        // Draining at 0.4 s per second while the encoder sends the cut rate: the link carries
        // about 1 / 0.6 of it, more than the cut rate. Probing climbs straight to just below
        // that and steps carefully from there.
        let drained = climb(40);
        let from_drain = careful_from(&drained);
        assert!(
            from_drain as f64 >= from_cut as f64 * 1.15,
            "{drained:?} vs {sudden:?}"
        );
    }

    #[test]
    fn encoder_undershoot_limits_increase() {
        let mut c = Controller::new(Config {
            start_bps: 1_000_000,
            ..Default::default()
        });
        let mut t = Duration::ZERO;
        let d = run(&mut c, &mut t, 300, clear(200_000));
        assert!(d.target_bps <= 1_000_000);
        assert_eq!(d.reason, Reason::Limit);
    }

    fn laddered(start_bps: u64) -> Controller {
        Controller::new(Config {
            start_bps,
            ladder: Some(Ladder::default()),
            ..Default::default()
        })
    }

    #[test]
    fn rung_drops_on_the_tick_the_target_falls_below() {
        let mut c = laddered(2_000_000);
        assert_eq!(c.rung(), Some(1));
        let mut t = Duration::ZERO;
        run(&mut c, &mut t, 3, clear(2_000_000));
        let d = run(
            &mut c,
            &mut t,
            1,
            Observation {
                estimate_bps: Some(700_000),
                ..clear(2_000_000)
            },
        );
        assert!(d.rung_changed);
        assert_eq!(d.rung, Some(3));
        assert_eq!(d.encoder_bps, 700_000);
    }

    #[test]
    fn encoder_rate_is_capped_by_the_rung() {
        let mut c = laddered(1_400_000);
        assert_eq!(c.rung(), Some(2));
        let mut t = Duration::ZERO;
        let d = run(&mut c, &mut t, 1, clear(1_400_000));
        assert_eq!(d.encoder_bps, 1_400_000);
        let ladder = Ladder::default();
        let mut c = Controller::new(Config {
            start_bps: 2_500_000,
            ladder: Some(ladder.clone()),
            ..Default::default()
        });
        // A 960x540 ladder only: the encoder never gets more than the rung's maximum.
        let only_540 = Ladder::parse("960x540@30:0-2200").unwrap();
        c.config.ladder = Some(only_540);
        c.rung = Some(0);
        let d = run(&mut c, &mut t, 1, clear(2_500_000));
        assert_eq!(d.target_bps, 2_500_000);
        assert_eq!(d.encoder_bps, 2_200_000);
    }

    #[test]
    fn rungs_do_not_oscillate_around_a_boundary() {
        let mut c = laddered(1_600_000);
        assert_eq!(c.rung(), Some(1));
        let mut t = Duration::ZERO;
        let mut changes = 0;
        // The estimate wobbles around the 720p minimum (1500 kbit/s) every second.
        for i in 0..60 {
            let estimate = if i % 2 == 0 { 1_450_000 } else { 1_700_000 };
            for _ in 0..10 {
                t += TICK;
                let d = c.update(&Observation {
                    now: t,
                    estimate_bps: Some(estimate),
                    ..clear(c.encoder_bps())
                });
                changes += d.rung_changed as u32;
            }
        }
        assert_eq!(changes, 1, "one drop to 540p and no climb back");
        assert_eq!(c.rung(), Some(2));
    }

    #[test]
    fn rung_climbs_after_the_hold() {
        let mut c = laddered(600_000);
        assert_eq!(c.rung(), Some(3));
        let mut t = Duration::ZERO;
        let mut climbs = Vec::new();
        for _ in 0..300 {
            t += TICK;
            let d = c.update(&Observation {
                now: t,
                estimate_bps: Some(1_200_000),
                ..clear(c.encoder_bps())
            });
            if d.rung_changed {
                climbs.push((t, d.rung));
            }
        }
        // 1200 kbit/s affords 540p (800 × 1.15 = 920) but not 720p (1500).
        assert_eq!(climbs.len(), 1, "{climbs:?}");
        assert_eq!(climbs[0].1, Some(2));
        assert_eq!(c.target_bps(), 1_200_000);
    }

    /// The default ladder cut to a 720p source: three rungs, as a runner uses it.
    fn ladder_720p() -> Ladder {
        Ladder::parse("1280x720@30:1500-4000;960x540@30:800-2200;640x360@30:0-1200")
            .expect("ladder parses")
    }

    /// A policer of `capacity(t)` bit/s: the encoder sends what it is given, whatever
    /// exceeds the link is lost and reported on the next tick. Runs until `until`, returns
    /// every decision.
    fn through_link(
        c: &mut Controller,
        t: &mut Duration,
        until: Duration,
        capacity: impl Fn(Duration) -> u64,
    ) -> Vec<Decision> {
        let mut decisions = Vec::new();
        while *t < until {
            *t += TICK;
            let sent = c.encoder_bps();
            let link = capacity(*t);
            let loss = if sent > link {
                1.0 - link as f64 / sent as f64
            } else {
                0.0
            };
            decisions.push(c.update(&Observation {
                now: *t,
                loss: Some(loss),
                ..clear(sent)
            }));
        }
        decisions
    }

    /// A 3-rung controller that spent 20 s on an 800 kbit/s link (a fifth of 4 Mbit/s),
    /// starting at 2.5 Mbit/s.
    fn settled_on_a_fifth(ladder: Ladder) -> (Controller, Duration) {
        let mut c = Controller::new(Config {
            start_bps: 2_500_000,
            ladder: Some(ladder),
            ..Default::default()
        });
        let mut t = Duration::ZERO;
        through_link(&mut c, &mut t, Duration::from_secs(20), |_| 800_000);
        (c, t)
    }

    #[test]
    fn climbs_two_rungs_within_5_s_of_the_link_coming_back() {
        let (mut c, mut t) = settled_on_a_fifth(ladder_720p());
        assert_eq!(c.rung(), Some(2), "360p on 800 kbit/s");
        let rise = t;
        let decisions = through_link(&mut c, &mut t, rise + Duration::from_secs(15), |_| {
            4_000_000
        });
        // 80 % of the new capacity given to the encoder, which needs the 720p rung.
        let at_80 = decisions
            .iter()
            .find(|d| d.encoder_bps >= 3_200_000)
            .map(|d| d.time - rise)
            .expect("reaches 80 % of 4 Mbit/s");
        assert!(at_80 <= Duration::from_secs(5), "80 % after {at_80:?}");
        let climbs: Vec<(Duration, Option<usize>)> = decisions
            .iter()
            .filter(|d| d.rung_changed)
            .map(|d| (d.time - rise, d.rung))
            .collect();
        assert_eq!(climbs.last().map(|c| c.1), Some(Some(0)), "{climbs:?}");
        assert!(
            climbs.len() <= 2,
            "one key frame per rung at most: {climbs:?}"
        );
        // Never before the link has shown its new rate for half the hold.
        assert!(climbs[0].0 >= Duration::from_secs(2), "{climbs:?}");
        assert!(
            decisions.iter().all(|d| d.direction != Direction::Decrease),
            "no congestion on the way up"
        );
    }

    #[test]
    fn a_rung_the_link_carried_is_reached_in_one_decision() {
        // 360p may use up to 2 Mbit/s: on it the link already carries 720p's minimum (1500
        // kbit/s), so the climb skips 540p: one rung change, one key frame.
        let ladder = Ladder::parse("1280x720@30:1500-4000;960x540@30:800-2200;640x360@30:0-2000")
            .expect("ladder parses");
        let (mut c, mut t) = settled_on_a_fifth(ladder);
        assert_eq!(c.rung(), Some(2));
        let rise = t;
        let decisions = through_link(&mut c, &mut t, rise + Duration::from_secs(10), |_| {
            4_000_000
        });
        let climbs: Vec<Option<usize>> = decisions
            .iter()
            .filter(|d| d.rung_changed)
            .map(|d| d.rung)
            .collect();
        assert_eq!(climbs, vec![Some(0)]);
    }

    #[test]
    fn a_link_that_recovers_for_2_s_changes_no_rung() {
        // Whatever the phase of the controller's probing when the link comes back.
        for offset_ms in (0..3000).step_by(250) {
            let (mut c, mut t) = settled_on_a_fifth(ladder_720p());
            let start = t + ms(offset_ms);
            through_link(&mut c, &mut t, start, |_| 800_000);
            // Four times: 2 s at 4 Mbit/s, 6 s at 800 kbit/s.
            let cycle = Duration::from_secs(8);
            let decisions = through_link(&mut c, &mut t, start + cycle * 4, |now| {
                let into = (now - start).as_millis() % cycle.as_millis();
                if into < 2000 { 4_000_000 } else { 800_000 }
            });
            let changes: Vec<(Duration, Option<usize>)> = decisions
                .iter()
                .filter(|d| d.rung_changed)
                .map(|d| (d.time - start, d.rung))
                .collect();
            assert!(changes.is_empty(), "offset {offset_ms} ms: {changes:?}");
            assert_eq!(c.rung(), Some(2));
        }
    }
}
