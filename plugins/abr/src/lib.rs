//! Adaptive bitrate control for any encoder and any uplink.
//!
//! The `abrcontroller` element sits in a stream after an encoder, listens to whatever
//! congestion signals it is given and steers the encoder's bitrate and, through a capsfilter,
//! the resolution and framerate (a ladder of rungs).
//!
//! Inputs, any combination:
//!
//! | property | what is read |
//! |---|---|
//! | `webrtcbin` | `get-stats`: remote-inbound-rtp `fraction-lost`, `round-trip-time`, `jitter`; transport `gst-twcc-stats` |
//! | `rtpbin` | RTCP receiver reports of every session (`rb-fractionlost`, `rb-round-trip`, `rb-jitter`); while TWCC feedback comes (below), their loss holds probing but does not cut: the feedback showed the same packets up to a report interval sooner |
//! | (none) | transport-wide CC feedback: the `RTPTWCCPackets` events that rtpbin (and webrtcbin) send upstream when the payloader writes the TWCC header extension (`rtphdrexttwcc`, `extmap-N` in the receiver's caps). Per packet lost or its arrival time. Each report of at least 30 packets gives a loss fraction (only from `loss-threshold` up: smaller fractions stay with the receiver reports) and, with loss, the rate that arrived since the report's first loss (its start while a loss run goes on): what a policer or a full link lets through, the depth of the cut. Over netsim this halves the reaction to a drop (0.3 s instead of 0.6 s) and shortens the longest freeze after it (267 ms against 532 ms, medians of 3 rounds on a quiet machine; `eval/README.md`) |
//! | `srtsink` | `stats`: `rtt-ms`, `packets-sent` / `packets-sent-lost` (caller and listener mode; loss over ≥ 30 packets and 250 ms, or 500 ms, counted as at most 50 % because SRT retransmits), and the delivery rate: `bytes-sent` (retransmissions included) × (1 − loss) × this stream's share of the fresh bytes (`bytes-sent` − `bytes-retransmitted`), which sets how deep a loss cut goes (SRT retransmits every packet reported lost at once, so over a report this is about the fresh send rate: such a cut goes 10 % below what is sent; `eval/README.md`); `bandwidth-mbps` is copied to `stats` but not used: across a shaped link it follows the send rate down. srtsink on 1.22 exposes no send-buffer level |
//! | `queue` | `current-level-time` / `current-level-bytes` of a queue before a TCP-like sink (backlog) |
//! | `estimator` | `estimated-bitrate` (bit/s) of e.g. `rtpgccbwe` |
//! | events | custom upstream or downstream events named [`ESTIMATE_EVENT`] |
//!
//! Each element property has a `-name` twin to find the element by name in the pipeline.
//!
//! # The `abr-estimate` event
//!
//! Any element can send a custom event (upstream from downstream, e.g. a sink or a transport
//! that knows its bandwidth, or downstream from upstream) whose structure is named
//! `abr-estimate`. All fields are optional:
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `bitrate` | any integer or double, bit/s | available rate; kept until a newer estimate replaces it |
//! | `loss` | double 0–1 | fraction of packets lost since the previous report |
//! | `rtt` | `guint64` ns (`GstClockTime`) | round-trip time |
//! | `jitter` | `guint64` ns | interarrival jitter (reported only) |
//! | `backlog` | `guint64` ns | media waiting to be sent |
//! | `backlog-bytes` | integer | the same in bytes (gives the drain rate) |
//!
//! The event is forwarded unchanged after it was read.
//!
//! # Messages and statistics
//!
//! On every change (and on the first decision) the element posts an `abr-decision` element
//! message: `time` (clock time), `running-time`, `inputs` (an `abr-inputs` structure with
//! `sent-bitrate`, `loss`, `rtt`, `jitter`, `backlog`, `backlog-bytes`, `estimate`, whichever
//! were known), `estimate`, `target-bitrate`, `bitrate` (given to the encoder),
//! `previous-bitrate`, `rung` (-1 without a ladder), `width`, `height`, `framerate`,
//! `rung-changed`, `key-frame`, `direction` (`decrease`, `hold`, `increase`), `reason` (`start`,
//! `loss`, `rtt`, `backlog`, `estimate`, `caution`, `steady`, `probe`, `limit`) and `encoder`.
//! The `stats` property (`abr-stats`) holds the current rates, counters and last inputs.
//!
//! # Example
//!
//! ```text
//! gst-launch-1.0 videotestsrc is-live=true ! videoscale ! videorate ! capsfilter name=rung \
//!   ! x264enc tune=zerolatency ! abrcontroller capsfilter-name=rung queue-name=backlog \
//!   ! flvmux ! queue name=backlog max-size-time=0 max-size-bytes=0 max-size-buffers=0 \
//!   ! rtmpsink location=rtmp://...
//! ```
//!
//! The decision logic is the pure state machine in [`controller`] (its documentation is the
//! algorithm); [`ladder`] parses the rung ladder.
#![allow(clippy::non_send_fields_in_send_ty, unused_doc_comments)]

use gst::glib;

mod abrcontroller;
pub mod controller;
pub mod ladder;

/// Name of the structure of the custom event carrying explicit signals.
pub const ESTIMATE_EVENT: &str = "abr-estimate";

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    abrcontroller::register(plugin)
}

gst::plugin_define!(
    abr,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
    "MPL",
    env!("CARGO_PKG_NAME"),
    "hybridlive",
    "https://hybridlive.invalid/",
    env!("BUILD_REL_DATE")
);
