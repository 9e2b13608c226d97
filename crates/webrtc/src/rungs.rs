//! Per-viewer rungs of a ladder encoded once: what a WHEP session needs besides GStreamer to
//! give its viewer the rung the viewer's network carries.
//!
//! Every rung's tee feeds a `funnel` inside the session's bin, in front of the session's one
//! payloader, so the viewer sees one track (one SSRC, continuous sequence numbers; timestamps
//! are continuous because all rungs carry the same running times). A buffer probe on each
//! funnel sink pad ([`RungState::admit`]) lets through only the current rung; the first key
//! frame of the target rung makes the target current. A dropped buffer costs a probe call,
//! nothing more: no queue or thread per rung per viewer. `funnel` (with
//! `forward-sticky-events`) rather than `input-selector` because the probe already decides
//! which pad flows and funnel then only has to re-send the new rung's caps when its first
//! buffer arrives, which is what makes rtph264pay pick up the new SPS/PPS and resolution; an
//! input-selector would add a second, racing notion of the active pad.
//!
//! The decision is the [`RungSelector`]'s; the session's watchdog tick (every 250 ms) feeds it
//! an [`Observation`] built from:
//! - the bandwidth estimate of `rtpgccbwe` (Google congestion control over transport-wide CC
//!   feedback), for viewers that offer TWCC (browsers do). The estimate follows what is sent,
//!   not the link: any over-use (a key-frame burst queued behind the link is enough) cuts it
//!   to 85 % of the received rate, from below 1.5× that rate it climbs back only to 1.5× it,
//!   and above it grows by 8 % a second whatever the link carries. So the selector runs with
//!   `estimate_capped`: the estimate alone moves no viewer down (loss or a queue must confirm
//!   it, or it must fall far below what is sent), and every climb is a bounded trial (rule 6
//!   of [`hybridlive_ladder::viewer`]).
//! - for those viewers, the loss in the transport-wide CC feedback itself
//!   ([`read_twcc_feedback`]: which packets arrived, every 50–250 ms), observed every 40
//!   packets or at least once a second: a link that fell shows in a few hundred
//!   milliseconds, where receiver reports come once a second;
//! - the viewer's receiver reports (read here from the RTCP packets, [`read_report_blocks`]):
//!   loss (when there is no transport-wide feedback), round trip, jitter, and the packets
//!   delivered (times the mean size of the packets
//!   sent, for the delivered throughput). A viewer without TWCC (GStreamer's webrtcbin as
//!   shipped) has only these: it leaves a rung on loss but never climbs above the start rung
//!   on its own (nothing proves a higher one) unless it pins one.
//!
//! Lock order: `selector`, then `feedback` or `status`; no GStreamer call while any is held.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hybridlive_ladder::{Decision, Ladder, Observation, Reason, Rung, RungSelector};

/// How long an estimate that did not change is taken as current.
const ESTIMATE_HELD: Duration = Duration::from_secs(2);

/// One completed switch of one viewer, as told to [`crate::WhepOutput::on_rung_switch`].
#[derive(Debug, Clone, PartialEq)]
pub struct RungSwitch {
    /// The viewer: the same opaque id as its raised hands ([`crate::RaisedHand::viewer`]),
    /// never the session's resource id.
    pub viewer: String,
    /// The rung left (0 = highest).
    pub from: usize,
    /// The rung now received.
    pub to: usize,
    /// Why the selector chose it ([`Reason::as_str`]).
    pub reason: &'static str,
    /// The bandwidth estimate the decision was made with, bit/s.
    pub estimate_bps: Option<u64>,
}

/// A session's rung and what its selector knows, for status pages (no address, no id).
#[derive(Debug, Clone, PartialEq)]
pub struct RungStatus {
    /// The rung the viewer receives (0 = highest).
    pub rung: usize,
    /// Its width in pixels.
    pub width: u32,
    /// Its height in pixels.
    pub height: u32,
    /// Its bitrate, bit/s.
    pub bitrate: u64,
    /// The rung the viewer should receive (differs while a switch waits for a key frame).
    pub target: usize,
    /// The latest bandwidth estimate towards the viewer, bit/s.
    pub estimate_bps: Option<u64>,
    /// Delivered throughput (from the receiver reports), bit/s.
    pub throughput_bps: Option<u64>,
    /// Mean loss fraction (0–1) over the selector's loss window.
    pub loss: Option<f64>,
    /// Round-trip time from the receiver reports.
    pub rtt: Option<Duration>,
    /// Switches completed.
    pub switches: u64,
    /// The rung the viewer pinned, `None` for automatic.
    pub pinned: Option<usize>,
    /// The pinned rung is more than the link carries: the viewer gets a lower one.
    pub pin_overridden: bool,
    /// Why the selector decided what it did last ([`Reason::as_str`]).
    pub reason: &'static str,
}

/// Counts over all sessions served from a ladder, for `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RungCounts {
    /// Viewers per rung, index 0 the highest (as long as the ladder; single-rendition outputs:
    /// empty).
    pub viewers: Vec<usize>,
    /// Switches completed since the output started, all sessions, including ended ones.
    pub switches_total: u64,
}

/// What a viewer asked of its quality: `{"type":"quality","rung":N}` pins rung N,
/// `{"type":"quality","rung":null}` (or no `rung`) is automatic. `None` for any other message
/// or a rung that is not a small non-negative integer (whether the ladder has it is the
/// selector's business).
pub fn quality_pin(message: &str) -> Option<Option<usize>> {
    let value: serde_json::Value = serde_json::from_str(message).ok()?;
    if value.get("type")?.as_str()? != "quality" {
        return None;
    }
    match value.get("rung") {
        None | Some(serde_json::Value::Null) => Some(None),
        Some(rung) => {
            let rung = rung.as_u64().filter(|&r| r < 64)?;
            Some(Some(rung as usize))
        }
    }
}

/// The `{"type":"rung",...}` message that tells a page which rung it receives and which it
/// could pin.
pub fn rung_message(
    ladder: &Ladder,
    rung: usize,
    pinned: Option<usize>,
    overridden: bool,
) -> String {
    let describe =
        |r: &Rung| serde_json::json!({"width": r.width, "height": r.height, "bitrate": r.max_bps});
    let rungs: Vec<serde_json::Value> = ladder.rungs().iter().map(describe).collect();
    let current = ladder.rungs().get(rung);
    serde_json::json!({
        "type": "rung",
        "rung": rung,
        "width": current.map(|r| r.width),
        "height": current.map(|r| r.height),
        "bitrate": current.map(|r| r.max_bps),
        "auto": pinned.is_none(),
        "pinned": pinned,
        "pin_overridden": overridden,
        "rungs": rungs,
    })
    .to_string()
}

/// One report block of a receiver or sender report, about one of our SSRCs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportBlock {
    /// The SSRC reported on.
    pub ssrc: u32,
    /// Fraction lost since the previous report, in 1/256.
    pub fraction_lost: u8,
    /// Extended highest sequence number received.
    pub highest_seq: u32,
    /// Cumulative packets lost (may be negative with duplicates).
    pub cumulative_lost: i32,
    /// Interarrival jitter, in RTP clock units.
    pub jitter: u32,
    /// Middle 32 bits of the NTP time of the last sender report received (0: none).
    pub lsr: u32,
    /// Delay since that sender report, 1/65536 s.
    pub dlsr: u32,
}

/// The report blocks of the SR and RR packets of a compound RTCP packet (RFC 3550 6.4).
/// Anything malformed ends the reading: what came before it is returned.
pub fn read_report_blocks(rtcp: &[u8]) -> Vec<ReportBlock> {
    let mut blocks = Vec::new();
    let mut rest = rtcp;
    while rest.len() >= 4 {
        if rest[0] >> 6 != 2 {
            break;
        }
        let count = usize::from(rest[0] & 0x1f);
        let packet_type = rest[1];
        let len = (usize::from(u16::from_be_bytes([rest[2], rest[3]])) + 1) * 4;
        let Some(packet) = rest.get(..len) else {
            break;
        };
        // SR: sender SSRC and 20 bytes of sender info; RR: the sender SSRC.
        let skip = match packet_type {
            200 => 28,
            201 => 8,
            _ => 0,
        };
        if skip > 0 {
            for i in 0..count {
                let at = skip + i * 24;
                let Some(b) = packet.get(at..at + 24) else {
                    break;
                };
                let word = |o: usize| u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
                // 24-bit two's complement.
                let lost = ((word(4) << 8) as i32) >> 8;
                blocks.push(ReportBlock {
                    ssrc: word(0),
                    fraction_lost: b[4],
                    highest_seq: word(8),
                    cumulative_lost: lost,
                    jitter: word(12),
                    lsr: word(16),
                    dlsr: word(20),
                });
            }
        }
        rest = &rest[len..];
    }
    blocks
}

/// What one transport-wide congestion control feedback packet says arrived: packets
/// `base_seq .. base_seq + statuses.len()` (transport-wide sequence numbers, wrapping), each
/// received or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TwccFeedback {
    /// The transport-wide sequence number of the first status.
    pub base_seq: u16,
    /// One per packet: `true` if it arrived.
    pub statuses: Vec<bool>,
}

/// The transport-wide CC feedback packets (RTPFB, FMT 15:
/// draft-holmer-rmcat-transport-wide-cc-extensions-01 section 3.1) of a compound RTCP packet:
/// only which packets arrived, not when. Browsers send one every 50–250 ms, where receiver
/// reports come about once a second: loss seen here moves a viewer off a rung its link no
/// longer carries in a fraction of the time. Anything malformed ends the reading: what came
/// before it is returned.
pub fn read_twcc_feedback(rtcp: &[u8]) -> Vec<TwccFeedback> {
    let mut feedback = Vec::new();
    let mut rest = rtcp;
    while rest.len() >= 4 {
        if rest[0] >> 6 != 2 {
            break;
        }
        let len = (usize::from(u16::from_be_bytes([rest[2], rest[3]])) + 1) * 4;
        let Some(packet) = rest.get(..len) else {
            break;
        };
        if packet[1] == 205
            && packet[0] & 0x1f == 15
            && let Some(read) = twcc_statuses(packet)
        {
            feedback.push(read);
        }
        rest = &rest[len..];
    }
    feedback
}

/// The statuses of one feedback packet (`packet`: exactly its length), `None` if its chunks
/// do not cover its status count.
fn twcc_statuses(packet: &[u8]) -> Option<TwccFeedback> {
    let head = packet.get(12..20)?;
    let base_seq = u16::from_be_bytes([head[0], head[1]]);
    let count = usize::from(u16::from_be_bytes([head[2], head[3]]));
    let mut statuses = Vec::with_capacity(count);
    let mut chunks = packet[20..].chunks_exact(2);
    while statuses.len() < count {
        let chunk = chunks.next()?;
        let chunk = u16::from_be_bytes([chunk[0], chunk[1]]);
        let left = count - statuses.len();
        if chunk & 0x8000 == 0 {
            // Run length: one two-bit symbol repeated (00: not received).
            let received = (chunk >> 13) & 0b11 != 0;
            let run = usize::from(chunk & 0x1fff).min(left);
            statuses.extend(std::iter::repeat_n(received, run));
        } else if chunk & 0x4000 == 0 {
            // Status vector of 14 one-bit symbols.
            statuses.extend((0..14).rev().take(left).map(|bit| chunk >> bit & 1 != 0));
        } else {
            // Status vector of 7 two-bit symbols.
            statuses.extend(
                (0..7)
                    .rev()
                    .take(left)
                    .map(|sym| (chunk >> (2 * sym)) & 0b11 != 0),
            );
        }
    }
    Some(TwccFeedback { base_seq, statuses })
}

/// Round-trip time from a report block received at `now_ntp_mid` (middle 32 bits of the NTP
/// time, the clock rtpbin stamps its sender reports with). `None` without a sender report to
/// refer to, or for an implausible result (clocks apart).
pub fn round_trip(block: &ReportBlock, now_ntp_mid: u32) -> Option<Duration> {
    if block.lsr == 0 {
        return None;
    }
    let rtt = now_ntp_mid.wrapping_sub(block.lsr).wrapping_sub(block.dlsr);
    // Above about 10 s it is a wrap or a clock mismatch, not a path.
    (rtt < 10 * 65536).then(|| Duration::from_nanos(u64::from(rtt) * 1_000_000_000 / 65536))
}

/// The middle 32 bits of the current NTP time (seconds since 1900, 16.16).
pub fn ntp_mid_now() -> u32 {
    let since_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since_unix.as_secs() + 2_208_988_800;
    let frac = (u64::from(since_unix.subsec_nanos()) << 16) / 1_000_000_000;
    (((secs & 0xffff) << 16) | frac) as u32
}

/// Feedback gathered between two ticks, from the streaming threads.
#[derive(Debug, Default)]
pub(crate) struct Feedback {
    /// The latest report on the video SSRC since the last tick.
    pub report: Option<(ReportBlock, Option<Duration>)>,
    /// The first extended sequence number the viewer reported, for the packets delivered.
    pub first_seq: Option<u32>,
    /// The latest bandwidth estimate (rtpgccbwe over transport-wide CC) and when it came.
    pub estimate: Option<(u64, Instant)>,
    /// Packets transport-wide CC feedback reported as arrived and as lost since the loss was
    /// last observed, and since when.
    pub twcc_counts: (u32, u32, Option<Instant>),
    /// The transport-wide sequence number after the last one counted: a packet reported
    /// again (browsers re-report one that came late) is not counted twice.
    pub twcc_next: Option<u16>,
    /// The viewer sends transport-wide CC feedback: its loss is read from that, not from
    /// the receiver reports.
    pub twcc_seen: bool,
}

/// Loss from transport-wide CC feedback is observed once this many packets are reported...
const TWCC_MIN_PACKETS: u32 = 40;
/// ...or this long after the first one, whichever comes first: at 720p about a tick's worth
/// of packets, on the lowest rung about a second's.
const TWCC_MAX_WAIT: Duration = Duration::from_secs(1);

impl Feedback {
    /// Counts the statuses of one transport-wide CC feedback packet.
    fn add_twcc(&mut self, feedback: &TwccFeedback) {
        self.twcc_seen = true;
        let (received, lost, since) = &mut self.twcc_counts;
        for (i, &arrived) in feedback.statuses.iter().enumerate() {
            let seq = feedback.base_seq.wrapping_add(i as u16);
            if self
                .twcc_next
                .is_some_and(|next| (seq.wrapping_sub(next) as i16) < 0)
            {
                continue;
            }
            if arrived {
                *received += 1;
            } else {
                *lost += 1;
            }
            since.get_or_insert_with(Instant::now);
            self.twcc_next = Some(seq.wrapping_add(1));
        }
    }

    /// The loss fraction of the packets counted, once there are enough of them (or they
    /// waited long enough); counting starts again.
    fn take_twcc_loss(&mut self) -> Option<f64> {
        let (received, lost, since) = self.twcc_counts;
        let total = received + lost;
        let ready = total >= TWCC_MIN_PACKETS
            || (total > 0 && since.is_some_and(|t| t.elapsed() >= TWCC_MAX_WAIT));
        if !ready {
            return None;
        }
        self.twcc_counts = (0, 0, None);
        Some(f64::from(lost) / f64::from(total))
    }
}

/// The rung state of one session: shared by the funnel probes (streaming threads), the data
/// channel (the viewer's pin) and the watchdog tick.
pub(crate) struct RungState {
    pub ladder: Ladder,
    pub selector: Mutex<RungSelector>,
    /// The rung forwarded; written only by [`admit`](Self::admit) under `selector`.
    pub current: AtomicUsize,
    /// The rung to switch to at its next key frame (= `current` when none).
    pub target: AtomicUsize,
    /// The opaque viewer id (see [`RungSwitch::viewer`]).
    pub viewer: String,
    /// The session's video SSRC, to find its report blocks.
    pub ssrc: u32,
    pub feedback: Mutex<Feedback>,
    /// RTP bytes and packets the payloader sent, for the delivered throughput.
    pub sent_bytes: AtomicU64,
    pub sent_packets: AtomicU64,
    pub status: Mutex<TickState>,
    pub started: Instant,
    /// The page was told its rung since its data channel opened.
    pub told: std::sync::atomic::AtomicBool,
    /// Timestamp of the last buffer forwarded, ns ([`NO_PTS`]: none yet).
    last_pts: AtomicU64,
    /// A key frame of the target came too early to switch at: ask for another.
    rekey: std::sync::atomic::AtomicBool,
}

/// No timestamp forwarded yet.
const NO_PTS: u64 = u64::MAX;

/// How much later than the frame before it a switching key frame of the same instant is sent:
/// two ticks of the 90 kHz RTP clock, so that its RTP timestamp is later too.
const NUDGE_NS: u64 = 2 * 1_000_000_000 / 90_000 + 1;

/// What becomes of a buffer at a session's rung switch (see [`RungState::admit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// On to the viewer.
    Pass,
    /// On to the viewer with this timestamp (ns).
    Later(u64),
    /// Not for this viewer.
    Drop,
}

/// What the tick remembers between ticks.
#[derive(Debug)]
pub(crate) struct TickState {
    pub last: Option<Decision>,
    /// The rung last told to the page and the hook.
    pub announced: usize,
    /// The pin last told to the page, and whether it was overridden.
    pub announced_pin: (Option<usize>, bool),
    /// Why and with which estimate the pending switch was asked for, and when.
    pub pending: Option<(Reason, Option<u64>, Instant)>,
}

/// What the tick asks the session to do after the locks are released.
#[derive(Debug, Default)]
pub(crate) struct TickActions {
    /// Ask this rung for a key frame.
    pub key_frame: Option<usize>,
    /// A switch completed: tell the hook.
    pub switched: Option<RungSwitch>,
    /// Tell the page (rung or pin changed).
    pub message: Option<String>,
    /// Request to first frame of the new rung, when a switch completed.
    pub switch_time: Option<Duration>,
}

impl RungState {
    pub fn new(ladder: Ladder, selector: RungSelector, viewer: String, ssrc: u32) -> Self {
        let start = selector.rung();
        Self {
            ladder,
            selector: Mutex::new(selector),
            current: AtomicUsize::new(start),
            target: AtomicUsize::new(start),
            viewer,
            ssrc,
            feedback: Mutex::new(Feedback::default()),
            sent_bytes: AtomicU64::new(0),
            sent_packets: AtomicU64::new(0),
            status: Mutex::new(TickState {
                last: None,
                announced: usize::MAX,
                announced_pin: (None, false),
                pending: None,
            }),
            started: Instant::now(),
            told: std::sync::atomic::AtomicBool::new(false),
            last_pts: AtomicU64::new(NO_PTS),
            rekey: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The `rung` message for the page as things stand.
    pub fn message(&self) -> String {
        let status = self.status();
        rung_message(
            &self.ladder,
            status.rung,
            status.pinned,
            status.pin_overridden,
        )
    }

    /// Whether a buffer of `rung` may go on to the viewer (`key`: it starts a GOP): the cheap
    /// filter on each rung's own thread, before [`admit`](Self::admit) decides. Lock-free.
    pub fn may_admit(&self, rung: usize, key: bool) -> bool {
        rung == self.current.load(Ordering::Acquire)
            || (key && rung == self.target.load(Ordering::Acquire))
    }

    /// What becomes of a buffer of `rung` with timestamp `pts` (ns); called for one buffer at
    /// a time, in the order they reach the viewer. A key frame of the target rung switches. The
    /// timestamps the viewer sees must keep rising (a browser drops a frame no later than the
    /// last one it decoded): a key frame of the same instant as the frame just sent (the
    /// usual case: the rungs' key frames are aligned and the current rung's came first) goes
    /// [`Admit::Later`], one earlier than it (that rung's encoder runs a frame behind) is
    /// dropped and another key frame asked for. Lock-free but for the switch itself.
    pub fn admit(&self, rung: usize, key: bool, pts: Option<u64>) -> Admit {
        if rung == self.current.load(Ordering::Acquire) {
            if let Some(pts) = pts {
                self.last_pts.store(pts, Ordering::Relaxed);
            }
            return Admit::Pass;
        }
        if !key || rung != self.target.load(Ordering::Acquire) {
            return Admit::Drop;
        }
        let last = self.last_pts.load(Ordering::Relaxed);
        let admit = match pts {
            Some(pts) if last != NO_PTS && pts < last => {
                self.rekey.store(true, Ordering::Relaxed);
                return Admit::Drop;
            }
            Some(pts) if last != NO_PTS && pts == last => Admit::Later(pts + NUDGE_NS),
            _ => Admit::Pass,
        };
        let mut selector = self.selector.lock().unwrap();
        if !selector.switched(rung) {
            return Admit::Drop;
        }
        self.current.store(rung, Ordering::Release);
        match (admit, pts) {
            (Admit::Later(pts), _) | (_, Some(pts)) => self.last_pts.store(pts, Ordering::Relaxed),
            _ => {}
        }
        admit
    }

    /// Records the viewer's receiver reports in an RTCP packet.
    pub fn read_rtcp(&self, rtcp: &[u8]) {
        let now = ntp_mid_now();
        let block = read_report_blocks(rtcp)
            .into_iter()
            .find(|b| b.ssrc == self.ssrc);
        let twcc = read_twcc_feedback(rtcp);
        let mut feedback = self.feedback.lock().unwrap();
        for read in &twcc {
            feedback.add_twcc(read);
        }
        // rtpgccbwe tells an estimate only when it changes: while the viewer keeps sending
        // feedback, one that holds steady is still current.
        if let Some((_, at)) = &mut feedback.estimate {
            *at = Instant::now();
        }
        let Some(block) = block else {
            return;
        };
        feedback.first_seq.get_or_insert(block.highest_seq);
        feedback.report = Some((block, round_trip(&block, now)));
    }

    /// Records a new bandwidth estimate towards the viewer, bit/s.
    pub fn estimate(&self, bps: u64) {
        self.feedback.lock().unwrap().estimate = Some((bps, Instant::now()));
    }

    /// Sets the viewer's pin (`None`: automatic); a rung the ladder lacks is ignored.
    pub fn pin(&self, rung: Option<usize>) {
        let _ = self.selector.lock().unwrap().set_pin(rung);
    }

    /// One tick: feeds the selector what arrived since the last one.
    pub fn tick(&self) -> TickActions {
        let (report, first_seq, estimate, twcc_loss) = {
            let mut feedback = self.feedback.lock().unwrap();
            let twcc_loss = feedback.twcc_seen.then(|| feedback.take_twcc_loss());
            (
                feedback.report.take(),
                feedback.first_seq,
                feedback.estimate,
                twcc_loss,
            )
        };
        let mut obs = Observation {
            now: self.started.elapsed(),
            // Stale once the viewer's feedback stopped (see `read_rtcp`); its receiver reports
            // (loss) still move it then.
            estimate_bps: estimate
                .filter(|(_, at)| at.elapsed() < ESTIMATE_HELD)
                .map(|(bps, _)| bps),
            sent_bytes: Some(self.sent_bytes.load(Ordering::Relaxed)),
            ..Default::default()
        };
        // A viewer that sends transport-wide CC feedback tells every few packets which ones
        // arrived; its receiver reports' loss covers the same packets a second late.
        obs.loss = twcc_loss.flatten();
        if let Some((block, rtt)) = report {
            if twcc_loss.is_none() {
                obs.loss = Some(f64::from(block.fraction_lost) / 256.0);
            }
            obs.rtt = rtt;
            obs.jitter = Some(Duration::from_nanos(
                u64::from(block.jitter) * 1_000_000_000 / 90_000,
            ));
            // Packets the viewer got, at the mean size of the packets sent: RR carry no bytes.
            let packets = u64::from(
                block
                    .highest_seq
                    .wrapping_sub(first_seq.unwrap_or(block.highest_seq)),
            )
            .saturating_sub(u64::try_from(block.cumulative_lost).unwrap_or(0));
            let sent = self.sent_packets.load(Ordering::Relaxed);
            obs.delivered_bytes = self
                .sent_bytes
                .load(Ordering::Relaxed)
                .checked_div(sent)
                .map(|mean| packets * mean);
        }
        let mut actions = TickActions::default();
        let mut selector = self.selector.lock().unwrap();
        let decision = selector.update(&obs);
        self.target.store(decision.target, Ordering::Release);
        let mut status = self.status.lock().unwrap();
        let rekey = self.rekey.swap(false, Ordering::Relaxed) && decision.switch_pending;
        if decision.switch_requested || rekey {
            actions.key_frame = Some(decision.target);
        }
        if decision.switch_requested {
            status.pending = Some((decision.reason, decision.estimate_bps, Instant::now()));
        }
        let current = decision.rung;
        if current != status.announced {
            if status.announced != usize::MAX {
                let (reason, estimate, asked) = status.pending.take().unwrap_or((
                    decision.reason,
                    decision.estimate_bps,
                    Instant::now(),
                ));
                actions.switch_time = Some(asked.elapsed());
                actions.switched = Some(RungSwitch {
                    viewer: self.viewer.clone(),
                    from: status.announced,
                    to: current,
                    reason: reason.as_str(),
                    estimate_bps: estimate,
                });
            }
            status.announced = current;
        }
        let pin = (decision.pinned, decision.pin_overridden);
        if actions.switched.is_some() || status.announced_pin != pin || status.last.is_none() {
            status.announced_pin = pin;
            actions.message = Some(rung_message(&self.ladder, current, pin.0, pin.1));
        }
        status.last = Some(decision);
        actions
    }

    /// The session's rung for status pages.
    pub fn status(&self) -> RungStatus {
        let current = self.current.load(Ordering::Acquire);
        let rung = self.ladder.rungs()[current.min(self.ladder.len() - 1)];
        let last = self.status.lock().unwrap().last;
        RungStatus {
            rung: current,
            width: rung.width,
            height: rung.height,
            bitrate: rung.max_bps,
            target: self.target.load(Ordering::Acquire),
            estimate_bps: last.and_then(|d| d.estimate_bps),
            throughput_bps: last.and_then(|d| d.throughput_bps),
            loss: last.and_then(|d| d.loss),
            rtt: last.and_then(|d| d.rtt),
            switches: last.map_or(0, |d| d.switches),
            pinned: last.and_then(|d| d.pinned),
            pin_overridden: last.is_some_and(|d| d.pin_overridden),
            reason: last.map_or(Reason::Start, |d| d.reason).as_str(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hybridlive_ladder::SelectorConfig;

    #[test]
    fn quality_messages_pin_or_unpin_and_nothing_else_does() {
        assert_eq!(quality_pin(r#"{"type":"quality","rung":2}"#), Some(Some(2)));
        assert_eq!(quality_pin(r#"{"type":"quality","rung":null}"#), Some(None));
        assert_eq!(quality_pin(r#"{"type":"quality"}"#), Some(None));
        for bad in [
            r#"{"type":"quality","rung":-1}"#,
            r#"{"type":"quality","rung":1.5}"#,
            r#"{"type":"quality","rung":"1"}"#,
            r#"{"type":"quality","rung":1e30}"#,
            r#"{"type":"quality","rung":18446744073709551615}"#,
            r#"{"type":"hand","rung":1}"#,
            r#"{"type":7}"#,
            r#"[1,2]"#,
            "",
            "{",
            "\u{0}",
        ] {
            assert_eq!(quality_pin(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_rung_message_lists_the_ladder() {
        let ladder = Ladder::viewer_720p30();
        let message: serde_json::Value =
            serde_json::from_str(&rung_message(&ladder, 1, Some(0), true)).unwrap();
        assert_eq!(message["type"], "rung");
        assert_eq!(message["rung"], 1);
        assert_eq!(
            (message["width"].as_u64(), message["height"].as_u64()),
            (Some(640), Some(360))
        );
        assert_eq!(message["bitrate"], 700_000);
        assert_eq!(message["auto"], false);
        assert_eq!(message["pin_overridden"], true);
        assert_eq!(message["rungs"].as_array().unwrap().len(), 3);
        assert_eq!(message["rungs"][2]["height"], 180);
    }

    /// A session on the default 720p ladder whose video SSRC is `ssrc`.
    fn viewer_state(ssrc: u32) -> RungState {
        let ladder = Ladder::viewer_720p30();
        RungState::new(
            ladder.clone(),
            RungSelector::new(SelectorConfig::new(ladder)),
            "v".into(),
            ssrc,
        )
    }

    /// An RR from SSRC 1 about SSRC 0x01020304 (a quarter lost, 300 lost in all, jitter 900)
    /// followed by a PLI, as viewers send them in one compound packet.
    fn receiver_report() -> Vec<u8> {
        let mut rr = vec![0x81, 201, 0, 7, 0, 0, 0, 1];
        rr.extend_from_slice(&[1, 2, 3, 4, 64, 0, 1, 44]);
        rr.extend_from_slice(&1000u32.to_be_bytes());
        rr.extend_from_slice(&900u32.to_be_bytes());
        rr.extend_from_slice(&0x1234_0000u32.to_be_bytes());
        rr.extend_from_slice(&0x0000_8000u32.to_be_bytes());
        rr.extend_from_slice(&[0x81, 206, 0, 2, 0, 0, 0, 1, 1, 2, 3, 4]);
        rr
    }

    #[test]
    fn report_blocks_are_read_and_garbage_is_not() {
        let rr = receiver_report();
        let blocks = read_report_blocks(&rr);
        assert_eq!(
            blocks,
            vec![ReportBlock {
                ssrc: 0x0102_0304,
                fraction_lost: 64,
                highest_seq: 1000,
                cumulative_lost: 300,
                jitter: 900,
                lsr: 0x1234_0000,
                dlsr: 0x8000,
            }]
        );
        // 0x1234.0000 sent, received back 0.5 s later plus 0.5 s held: 1 s... minus 0.5 s.
        let rtt = round_trip(&blocks[0], 0x1235_0000).unwrap();
        assert_eq!(rtt, Duration::from_millis(500));
        // Truncated at every length: never a panic, never a block from half a packet.
        for len in 0..rr.len() {
            let read = read_report_blocks(&rr[..len]);
            assert!(read.len() <= 1);
            if len < 32 {
                assert!(read.is_empty(), "{len}");
            }
        }
        let mut negative = rr.clone();
        negative[13..16].copy_from_slice(&[0xff, 0xff, 0xfe]);
        assert_eq!(read_report_blocks(&negative)[0].cumulative_lost, -2);
    }

    #[test]
    fn only_a_key_frame_of_the_target_switches() {
        let state = viewer_state(7);
        // Starts on the 360p rung.
        assert_eq!(state.admit(1, false, Some(10)), Admit::Pass);
        assert!(!state.may_admit(0, true));
        assert_eq!(state.admit(0, true, Some(11)), Admit::Drop);
        state.pin(Some(2));
        let actions = state.tick();
        assert_eq!(actions.key_frame, Some(2));
        assert!(state.may_admit(2, true) && !state.may_admit(2, false));
        assert_eq!(
            state.admit(2, false, Some(11)),
            Admit::Drop,
            "a delta frame cannot start the decoder"
        );
        assert_eq!(
            state.admit(1, false, Some(20_000_000)),
            Admit::Pass,
            "the old rung flows until the switch"
        );
        assert_eq!(
            state.admit(2, true, Some(10)),
            Admit::Drop,
            "a key frame earlier than what the viewer has would take time back"
        );
        assert_eq!(state.tick().key_frame, Some(2), "so another is asked for");
        assert_eq!(state.tick().key_frame, None, "once");
        assert_eq!(
            state.admit(2, true, Some(20_000_000)),
            Admit::Later(20_000_000 + NUDGE_NS),
            "one of the same instant goes a little later"
        );
        assert_eq!(
            state.admit(1, false, Some(53_000_000)),
            Admit::Drop,
            "and the old rung stops"
        );
        assert!(!state.may_admit(1, false));
        assert_eq!(state.admit(2, false, Some(53_000_000)), Admit::Pass);
        let actions = state.tick();
        let switch = actions.switched.unwrap();
        assert_eq!((switch.from, switch.to, switch.reason), (1, 2, "pin"));
        let message: serde_json::Value = serde_json::from_str(&actions.message.unwrap()).unwrap();
        assert_eq!(
            (message["rung"].as_u64(), message["auto"].as_bool()),
            (Some(2), Some(false))
        );
        assert_eq!(state.status().height, 180);
        assert_eq!(state.status().switches, 1);
    }

    #[test]
    fn receiver_reports_feed_the_selector() {
        let state = viewer_state(0x0102_0304);
        state.sent_packets.store(10, Ordering::Relaxed);
        state.sent_bytes.store(12_000, Ordering::Relaxed);
        state.read_rtcp(&receiver_report());
        state.tick();
        let status = state.status();
        assert_eq!(status.loss, Some(0.25));
        assert!(
            state.feedback.lock().unwrap().report.is_none(),
            "taken once"
        );
    }
    /// A transport-wide CC feedback packet for 30 packets from sequence number 65530 (it
    /// wraps): a run of 10 received, a one-bit vector (10 received, 4 lost), a two-bit vector
    /// of which 6 symbols count (4 received, 2 lost), then zeros for the receive deltas.
    fn twcc_feedback() -> Vec<u8> {
        let mut fb = vec![0x8f, 205, 0, 12, 0, 0, 0, 1, 1, 2, 3, 4];
        fb.extend_from_slice(&65530u16.to_be_bytes());
        fb.extend_from_slice(&30u16.to_be_bytes());
        fb.extend_from_slice(&[0, 0, 9, 0]);
        for chunk in [0x200a_u16, 0xbff0, 0xd245] {
            fb.extend_from_slice(&chunk.to_be_bytes());
        }
        fb.resize(52, 0);
        fb
    }

    #[test]
    fn twcc_feedback_is_read_and_garbage_is_not() {
        let mut compound = receiver_report();
        compound.extend_from_slice(&twcc_feedback());
        let read = read_twcc_feedback(&compound);
        assert_eq!(read.len(), 1, "the RR and PLI are not feedback");
        assert_eq!(read[0].base_seq, 65530);
        let arrived = read[0].statuses.iter().filter(|&&a| a).count();
        assert_eq!((read[0].statuses.len(), arrived), (30, 24));
        assert!(read[0].statuses[..10].iter().all(|&a| a));
        assert_eq!(&read[0].statuses[20..24], &[false; 4]);
        assert_eq!(
            &read[0].statuses[24..],
            &[true, false, true, true, false, true]
        );
        // Truncated at every length: never a panic, never statuses from half a packet.
        let fb = twcc_feedback();
        for len in 0..fb.len() {
            assert!(read_twcc_feedback(&fb[..len]).is_empty(), "{len}");
        }
        // A status count its chunks do not cover is no feedback.
        let mut short = fb.clone();
        short[14..16].copy_from_slice(&60u16.to_be_bytes());
        assert!(read_twcc_feedback(&short).is_empty());
    }

    #[test]
    fn twcc_feedback_gives_the_loss_once_and_receiver_reports_no_longer_do() {
        let state = viewer_state(0x0102_0304);
        let fb = twcc_feedback();
        state.read_rtcp(&fb);
        // The same packets reported again (a browser re-reports one that came late) count
        // once: 30 packets are not yet enough for an observation...
        state.read_rtcp(&fb);
        state.tick();
        assert_eq!(state.status().loss, None);
        // ...the next ten (all received) are: 6 lost of 40.
        let mut next = twcc_feedback();
        next[12..14].copy_from_slice(&24u16.to_be_bytes());
        next[14..16].copy_from_slice(&10u16.to_be_bytes());
        state.read_rtcp(&next);
        // The RR's quarter lost is about the same packets, late: not counted.
        state.read_rtcp(&receiver_report());
        state.tick();
        let loss = state.status().loss.unwrap();
        assert!((loss - 6.0 / 40.0).abs() < 1e-9, "{loss}");
    }
}
