//! Per-viewer rungs of a ladder encoded once: real webrtcbin viewers over loopback ICE in a
//! network namespace of their own, switched between three x264 rungs on one continuous track.

mod common;

use common::init;
use gst::prelude::*;
use hybridlive_ladder::Rung;
use hybridlive_testkit::{eventually, eventually_explained, in_private_netns};
use hybridlive_webrtc::{RungSwitch, WhepConfig, WhepOutput, add_local_address};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The test ladder: the default viewer ladder's bitrates (what the selector reasons with) at a
/// quarter of its sizes, to spare the machine.
const TWCC_URI: &str = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01";

const RUNGS: [(u32, u32, u64); 3] = [
    (640, 360, 2_500_000),
    (320, 180, 700_000),
    (160, 90, 200_000),
];

/// A live source scaled and encoded once per rung, as the runner's ladder encoder does: one
/// key-frame interval for all, a key-frame request reaching any rung's tee forces one on
/// every rung (so IDRs stay aligned), each rung on a tee `r0`, `r1`, `r2`.
fn ladder_source() -> gst::Pipeline {
    init();
    let mut description = String::from(
        "videotestsrc is-live=true pattern=ball ! \
         video/x-raw,format=I420,width=640,height=360,framerate=30/1 ! \
         latencystamp ! tee name=raw ",
    );
    for (i, (width, height, bps)) in RUNGS.iter().enumerate() {
        description.push_str(&format!(
            "raw. ! queue max-size-buffers=2 ! videoscale ! video/x-raw,width={width},height={height} ! \
             x264enc name=e{i} tune=zerolatency speed-preset=ultrafast key-int-max=30 \
             option-string=scenecut=0 bitrate={} ! video/x-h264,profile=constrained-baseline ! \
             h264parse name=p{i} config-interval=-1 ! \
             video/x-h264,stream-format=byte-stream,alignment=au ! \
             latencystamp mode=sei stream-id=rung{i} ! tee name=r{i} allow-not-linked=true ",
            bps / 1000
        ));
    }
    let pipeline = gst::parse::launch(&description)
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    let encoders: Vec<gst::Pad> = (0..RUNGS.len())
        .map(|i| {
            pipeline
                .by_name(&format!("e{i}"))
                .unwrap()
                .static_pad("src")
                .unwrap()
        })
        .collect();
    for i in 0..RUNGS.len() {
        let others: Vec<gst::Pad> = encoders
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, pad)| pad.clone())
            .collect();
        // Below the parser, so the copies sent into the other encoders never come back here.
        let parser = pipeline.by_name(&format!("p{i}")).unwrap();
        parser.static_pad("src").unwrap().add_probe(
            gst::PadProbeType::EVENT_UPSTREAM,
            move |_, info| {
                if let Some(event) = info.event()
                    && gst_video::UpstreamForceKeyUnitEvent::parse(event).is_ok()
                {
                    for pad in &others {
                        pad.send_event(event.clone());
                    }
                }
                gst::PadProbeReturn::Ok
            },
        );
    }
    pipeline
}

/// A WHEP output over the ladder of [`ladder_source`]. Key-frame requests reach the encoders
/// at most once per `key_frame_interval`.
fn ladder_output(pipeline: &gst::Pipeline, key_frame_interval: Duration) -> WhepOutput {
    let rungs = RUNGS
        .iter()
        .enumerate()
        .map(|(i, &(width, height, bps))| {
            (
                Rung {
                    width,
                    height,
                    framerate: Some((30, 1)),
                    min_bps: bps,
                    max_bps: bps,
                },
                pipeline.by_name(&format!("r{i}")).unwrap(),
            )
        })
        .collect();
    let output = WhepOutput::with_ladder(
        pipeline,
        rungs,
        None,
        None,
        WhepConfig {
            loopback_ice: true,
            min_key_frame_interval: key_frame_interval,
            ..Default::default()
        },
    );
    pipeline.set_state(gst::State::Playing).unwrap();
    output
}

/// What a viewer saw.
#[derive(Default)]
struct Seen {
    /// Decoded (or parsed) frame sizes, one entry per change, with the frames count then.
    sizes: Vec<(i32, i32, u64)>,
    /// When the last size change came out (the decoder's caps, just before its first frame).
    size_changed: Option<Instant>,
    ssrcs: Vec<u32>,
    last_seq: Option<u16>,
    /// Packets whose sequence number did not follow the one before.
    seq_gaps: u64,
    /// Errors and warnings on the viewer's bus.
    errors: Vec<String>,
    /// The rungs received (stream ids of the capture stamps), one entry per change.
    rungs: Vec<String>,
    /// Changes of rung on a frame that is not a key frame (a decoder cannot start there).
    delta_switches: u64,
    /// Frames other than key frames without a capture stamp.
    unstamped: u64,
    /// A key frame came since the last stamped frame.
    key_since_stamp: bool,
    last_pts: Option<gst::ClockTime>,
    /// Frames no later than the one before.
    pts_backwards: u64,
    /// `rung` messages from the server.
    messages: Vec<serde_json::Value>,
}

/// A receive-only webrtcbin viewer with a data channel, that decodes (or only parses) the
/// video and records the sizes, the RTP stream and any error.
struct RungViewer {
    pipeline: gst::Pipeline,
    webrtcbin: gst::Element,
    channel: gst_webrtc::WebRTCDataChannel,
    frames: Arc<AtomicU64>,
    seen: Arc<Mutex<Seen>>,
}

impl RungViewer {
    /// With `twcc`, the viewer offers transport-wide congestion control, as browsers do.
    fn new(decode: bool, twcc: bool) -> Self {
        let pipeline = gst::Pipeline::new();
        let webrtcbin = gst::ElementFactory::make("webrtcbin")
            .property_from_str("bundle-policy", "max-bundle")
            .build()
            .unwrap();
        add_local_address(&webrtcbin, "127.0.0.1").unwrap();
        pipeline.add(&webrtcbin).unwrap();
        let mut caps = gst::Caps::builder("application/x-rtp")
            .field("media", "video")
            .field("encoding-name", "H264")
            .field("clock-rate", 90000i32)
            .field("payload", 102i32)
            .field("packetization-mode", "1")
            .field("profile-level-id", "42e01f")
            .build();
        if twcc {
            let caps = caps.make_mut();
            caps.set("extmap-3", TWCC_URI);
            caps.set("rtcp-fb-transport-cc", true);
        }
        webrtcbin.emit_by_name::<gst_webrtc::WebRTCRTPTransceiver>(
            "add-transceiver",
            &[&gst_webrtc::WebRTCRTPTransceiverDirection::Recvonly, &caps],
        );
        let frames = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (pipe, counter, record) = (pipeline.downgrade(), frames.clone(), seen.clone());
        webrtcbin.connect_pad_added(move |_, pad| {
            let Some(pipeline) = pipe.upgrade() else {
                return;
            };
            let description = if decode {
                "rtph264depay name=depay ! h264parse name=parse ! \
                 video/x-h264,stream-format=byte-stream,alignment=au ! \
                 avdec_h264 name=out ! fakesink name=sink async=false"
            } else {
                "rtph264depay name=depay ! h264parse name=parse ! \
                 video/x-h264,stream-format=byte-stream,alignment=au ! \
                 identity name=out ! fakesink name=sink async=false"
            };
            let bin = gst::parse::bin_from_description(description, true).unwrap();
            pipeline.add(&bin).unwrap();
            bin.sync_state_with_parent().unwrap();
            let depay = bin.by_name("depay").unwrap().static_pad("sink").unwrap();
            let rtp = record.clone();
            depay.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                if let Some(buffer) = info.buffer()
                    && let Ok(packet) = gst_rtp::RTPBuffer::from_buffer_readable(buffer)
                {
                    let mut seen = rtp.lock().unwrap();
                    let (ssrc, seq) = (packet.ssrc(), packet.seq());
                    if !seen.ssrcs.contains(&ssrc) {
                        seen.ssrcs.push(ssrc);
                    }
                    if seen
                        .last_seq
                        .is_some_and(|last| last.wrapping_add(1) != seq)
                    {
                        seen.seq_gaps += 1;
                    }
                    seen.last_seq = Some(seq);
                }
                gst::PadProbeReturn::Ok
            });
            // Which rung each access unit comes from: the stream id of its capture stamp.
            let parse = bin.by_name("parse").unwrap().static_pad("src").unwrap();
            let units = record.clone();
            parse.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                let Some(buffer) = info.buffer() else {
                    return gst::PadProbeReturn::Ok;
                };
                let Ok(map) = buffer.map_readable() else {
                    return gst::PadProbeReturn::Ok;
                };
                let stamp = hybridlive_stamp::find_stamp(
                    hybridlive_stamp::Codec::H264,
                    hybridlive_stamp::Framing::AnnexB,
                    &map,
                );
                let mut seen = units.lock().unwrap();
                // A browser drops a frame no later than the one it decoded before.
                if let Some(pts) = buffer.pts().filter(|_| has_slice(&map)) {
                    if seen.last_pts.is_some_and(|last| pts <= last) {
                        seen.pts_backwards += 1;
                    }
                    seen.last_pts = Some(pts);
                }
                let key = !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT);
                if key && has_slice(&map) {
                    seen.key_since_stamp = true;
                }
                let Ok(Some(stamp)) = stamp else {
                    // Parameter sets alone (the payloader repeats them when a key frame is
                    // asked for) are no frame; a key frame may come without the SEI.
                    if !key && has_slice(&map) {
                        seen.unstamped += 1;
                    }
                    return gst::PadProbeReturn::Ok;
                };
                if seen.rungs.last() != Some(&stamp.stream_id) {
                    if !key && !seen.key_since_stamp {
                        seen.delta_switches += 1;
                    }
                    seen.rungs.push(stamp.stream_id);
                }
                seen.key_since_stamp = key;
                gst::PadProbeReturn::Ok
            });
            let out = bin.by_name("out").unwrap().static_pad("src").unwrap();
            let (sizes, count) = (record.clone(), counter.clone());
            out.add_probe(
                gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM,
                move |pad, info| {
                    if info.buffer().is_some() {
                        count.fetch_add(1, Ordering::SeqCst);
                    } else if let Some(gst::EventView::Caps(caps)) = info.event().map(|e| e.view())
                        && let Some(s) = caps.caps().structure(0)
                        && let (Ok(w), Ok(h)) = (s.get::<i32>("width"), s.get::<i32>("height"))
                    {
                        let mut seen = sizes.lock().unwrap();
                        if seen
                            .sizes
                            .last()
                            .is_none_or(|&(lw, lh, _)| (lw, lh) != (w, h))
                        {
                            let n = count.load(Ordering::SeqCst);
                            seen.sizes.push((w, h, n));
                            seen.size_changed = Some(Instant::now());
                        }
                        let _ = pad;
                    }
                    gst::PadProbeReturn::Ok
                },
            );
            pad.link(&bin.static_pad("sink").unwrap()).unwrap();
        });
        // webrtcbin makes data channels only once it runs.
        pipeline.set_state(gst::State::Playing).unwrap();
        let channel = webrtcbin.emit_by_name::<gst_webrtc::WebRTCDataChannel>(
            "create-data-channel",
            &[&"interaction", &None::<gst::Structure>],
        );
        let messages = seen.clone();
        channel.connect("on-message-string", false, move |values| {
            let text = values[1].get::<Option<String>>().ok()??;
            if let Ok(value) = serde_json::from_str::<serde_json::Value>(&text)
                && value["type"] == "rung"
            {
                messages.lock().unwrap().messages.push(value);
            }
            None
        });
        let errors = seen.clone();
        let bus = pipeline.bus().unwrap();
        bus.set_sync_handler(move |_, message| {
            // A decoder fed a frame it cannot decode warns (and errors only after several).
            let (src, error) = match message.view() {
                gst::MessageView::Error(err) => (err.src(), err.error()),
                gst::MessageView::Warning(warning) => (warning.src(), warning.error()),
                _ => return gst::BusSyncReply::Drop,
            };
            errors.lock().unwrap().errors.push(format!(
                "{}: {error}",
                src.map(|s| s.path_string()).unwrap_or_default(),
            ));
            gst::BusSyncReply::Drop
        });
        RungViewer {
            pipeline,
            webrtcbin,
            channel,
            frames,
            seen,
        }
    }

    /// Offers, takes the answer, and reports every second as browsers do.
    fn connect(&self, output: &WhepOutput) -> String {
        let promise = gst::Promise::new();
        self.webrtcbin
            .emit_by_name::<()>("create-offer", &[&None::<gst::Structure>, &promise]);
        promise.wait();
        let offer = promise
            .get_reply()
            .unwrap()
            .get::<gst_webrtc::WebRTCSessionDescription>("offer")
            .unwrap();
        let offer = hybridlive_webrtc::set_local_description(
            &self.webrtcbin,
            &offer,
            Duration::from_secs(5),
        )
        .unwrap();
        let answer = output.offer(&offer).expect("an answer");
        common::take_answer(&self.webrtcbin, &answer.sdp);
        answer.id
    }

    /// Sends `message` once the data channel is open.
    fn send(&self, message: &str) {
        eventually(Duration::from_secs(20), "the data channel to open", || {
            (self
                .channel
                .property::<gst_webrtc::WebRTCDataChannelState>("ready-state")
                == gst_webrtc::WebRTCDataChannelState::Open)
                .then_some(())
        });
        self.channel
            .emit_by_name::<()>("send-string", &[&Some(message)]);
    }

    fn frames(&self) -> u64 {
        self.frames.load(Ordering::SeqCst)
    }

    /// Waits until `frames` more frames of `height` came out; returns when the size changed to
    /// it.
    fn wait_height(&self, height: i32, frames: u64) -> Instant {
        eventually_explained(
            Duration::from_secs(30),
            || {
                let seen = self.seen.lock().unwrap();
                let &(_, h, at) = seen.sizes.last()?;
                (h == height && self.frames() >= at + frames).then_some(seen.size_changed?)
            },
            || {
                let seen = self.seen.lock().unwrap();
                format!(
                    "no {frames} frames of height {height}: sizes {:?}, {} frames, errors {:?}",
                    seen.sizes,
                    self.frames(),
                    seen.errors
                )
            },
        )
    }
}

/// Whether an Annex B access unit holds a coded slice (NAL unit type 1 or 5).
fn has_slice(au: &[u8]) -> bool {
    au.windows(4)
        .any(|w| w[..3] == [0, 0, 1] && matches!(w[3] & 0x1f, 1 | 5))
}

impl Drop for RungViewer {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

#[test]
fn a_pinned_viewer_is_switched_between_rungs_on_one_continuous_track() {
    if !in_private_netns("a_pinned_viewer_is_switched_between_rungs_on_one_continuous_track") {
        return;
    }
    let pipeline = ladder_source();
    // Key-frame requests held back for longer than the test: every switch waits for a key
    // frame the encoders make by themselves (every 30 frames), and the frames of the target
    // rung before it must not reach the viewer.
    let output = ladder_output(&pipeline, Duration::from_secs(60));
    let switches: Arc<Mutex<Vec<RungSwitch>>> = Arc::default();
    let heard = switches.clone();
    output.on_rung_switch(Box::new(move |switch| heard.lock().unwrap().push(switch)));

    let viewer = RungViewer::new(true, false);
    let id = viewer.connect(&output);
    // Without a bandwidth estimate the viewer starts, and stays, on the 700 kbit/s rung.
    viewer.wait_height(180, 30);
    eventually(
        Duration::from_secs(20),
        "the page to learn its rung",
        || {
            let seen = viewer.seen.lock().unwrap();
            let last = seen.messages.last()?;
            (last["rung"] == 1 && last["auto"] == true && last["height"] == 180).then_some(())
        },
    );

    let mut took = Vec::new();
    for (rung, height) in [(0, 360), (2, 90), (0, 360)] {
        let asked = Instant::now();
        viewer.send(&format!(r#"{{"type":"quality","rung":{rung}}}"#));
        took.push(viewer.wait_height(height, 30) - asked);
    }
    eprintln!("pin to the first decoded frame of the new rung, no key-frame request: {took:?}");

    let seen = viewer.seen.lock().unwrap();
    let heights: Vec<i32> = seen.sizes.iter().map(|&(_, h, _)| h).collect();
    assert_eq!(heights, vec![180, 360, 90, 360], "{:?}", seen.sizes);
    let what = format!(
        "rungs {:?}, delta switches {}, unstamped {}, pts backwards {}",
        seen.rungs, seen.delta_switches, seen.unstamped, seen.pts_backwards
    );
    assert_eq!(seen.rungs, ["rung1", "rung0", "rung2", "rung0"], "{what}");
    assert_eq!(
        seen.delta_switches, 0,
        "every switch is at a key frame: {what}"
    );
    assert_eq!(seen.unstamped, 0, "{what}");
    assert_eq!(
        seen.pts_backwards, 0,
        "timestamps rise across switches: {what}"
    );
    assert_eq!(seen.ssrcs.len(), 1, "one track: {:?}", seen.ssrcs);
    assert_eq!(seen.seq_gaps, 0, "sequence numbers run on across switches");
    assert!(seen.errors.is_empty(), "{:?}", seen.errors);
    let told = seen.messages.last().unwrap();
    assert_eq!(
        (told["rung"].as_u64(), told["auto"].as_bool()),
        (Some(0), Some(false))
    );
    drop(seen);

    let info = output.sessions().pop().unwrap();
    let rung = info.rung.expect("a ladder session reports its rung");
    assert_eq!((rung.rung, rung.height, rung.pinned), (0, 360, Some(0)));
    assert_eq!(rung.switches, 3);
    let heard = eventually(
        Duration::from_secs(10),
        "the hook to hear 3 switches",
        || {
            let heard = switches.lock().unwrap().clone();
            (heard.len() == 3).then_some(heard)
        },
    );
    let path: Vec<(usize, usize, &str)> = heard.iter().map(|s| (s.from, s.to, s.reason)).collect();
    assert_eq!(path, vec![(1, 0, "pin"), (0, 2, "pin"), (2, 0, "pin")]);
    assert!(heard.iter().all(|s| s.viewer != id && !s.viewer.is_empty()));
    assert_eq!(output.rung_counts().viewers, vec![1, 0, 0]);
    assert_eq!(output.rung_counts().switches_total, 3);

    // Back to automatic: the page is told so.
    viewer.send(r#"{"type":"quality","rung":null}"#);
    eventually(Duration::from_secs(10), "auto to be confirmed", || {
        let seen = viewer.seen.lock().unwrap();
        (seen.messages.last()?["auto"] == true).then_some(())
    });
    output.close_all();
    pipeline.set_state(gst::State::Null).unwrap();
}

#[test]
fn one_viewer_forced_down_leaves_the_others_rung_alone_and_feedback_feeds_the_selector() {
    if !in_private_netns(
        "one_viewer_forced_down_leaves_the_others_rung_alone_and_feedback_feeds_the_selector",
    ) {
        return;
    }
    let pipeline = ladder_source();
    // Switches ask for a key frame, which comes at once.
    let output = ladder_output(&pipeline, Duration::from_millis(200));
    let switches: Arc<Mutex<Vec<RungSwitch>>> = Arc::default();
    let heard = switches.clone();
    output.on_rung_switch(Box::new(move |switch| heard.lock().unwrap().push(switch)));
    // Two viewers without transport-wide CC (no estimate: they stay on the start rung unless
    // they pin another), one with it, as browsers offer.
    let (down, other) = (RungViewer::new(false, false), RungViewer::new(false, false));
    let down_id = down.connect(&output);
    let other_id = other.connect(&output);
    down.wait_height(180, 30);
    other.wait_height(180, 30);

    let asked = Instant::now();
    down.send(r#"{"type":"quality","rung":2}"#);
    let switched = down.wait_height(90, 60);
    eprintln!(
        "pin to the first frame of the new rung, with a key-frame request: {:?}",
        switched - asked
    );
    let rung_of = |id: &str| {
        output
            .sessions()
            .into_iter()
            .find(|s| s.id == id)
            .and_then(|s| s.rung)
            .unwrap()
    };

    // The receiver reports reach the selector: loss (none here), round trip, what got through.
    let fed = eventually_explained(
        Duration::from_secs(20),
        || {
            let status = rung_of(&other_id);
            (status.loss.is_some() && status.rtt.is_some() && status.throughput_bps.is_some())
                .then_some(status)
        },
        || format!("the selector is not fed: {:?}", rung_of(&other_id)),
    );
    assert!(fed.loss.unwrap() < 0.05, "{fed:?}");
    assert!(fed.rtt.unwrap() < Duration::from_secs(1), "{fed:?}");
    assert!(fed.throughput_bps.unwrap() > 0, "{fed:?}");
    assert_eq!(fed.estimate_bps, None, "no TWCC, no estimate: {fed:?}");

    // The viewer that offers transport-wide CC gets rtpgccbwe's estimate, and its selector
    // decides on it. (On an idle machine the estimate finds loopback wide open and the viewer
    // climbs to the top rung in about 18 s; on a busy one, the delay the CPU adds can make it
    // go down instead: where it goes is not asserted.)
    let climber = RungViewer::new(false, true);
    let climber_id = climber.connect(&output);
    let status = eventually_explained(
        Duration::from_secs(30),
        || {
            let status = rung_of(&climber_id);
            (status.estimate_bps.is_some() && !["start", "no-estimate"].contains(&status.reason))
                .then_some(status)
        },
        || format!("no estimate decides: {:?}", rung_of(&climber_id)),
    );
    eprintln!("TWCC viewer: {status:?}");
    let plain = rung_of(&other_id);
    assert_eq!(plain.estimate_bps, None, "{plain:?}");
    // Every switch heard carries why, and the switches of the TWCC viewer the estimate.
    let heard = switches.lock().unwrap().clone();
    assert!(
        heard
            .iter()
            .any(|s| (s.from, s.to, s.reason) == (1, 2, "pin")),
        "{heard:?}"
    );
    for switch in heard.iter().filter(|s| s.reason != "pin") {
        assert!(switch.estimate_bps.is_some(), "{switch:?}");
    }

    // Through all this, the viewer that did nothing stayed where it was.
    let heights: Vec<i32> = other
        .seen
        .lock()
        .unwrap()
        .sizes
        .iter()
        .map(|s| s.1)
        .collect();
    assert_eq!(heights, vec![180], "the other viewer stays on its rung");
    assert_eq!(rung_of(&down_id).rung, 2);
    assert_eq!(rung_of(&other_id).rung, 1);
    assert_eq!(rung_of(&other_id).switches, 0);
    assert_eq!(output.rung_counts().viewers.iter().sum::<usize>(), 3);
    for viewer in [&down, &other, &climber] {
        let seen = viewer.seen.lock().unwrap();
        assert_eq!(seen.ssrcs.len(), 1);
        assert_eq!(seen.delta_switches, 0);
        assert!(seen.errors.is_empty(), "{:?}", seen.errors);
    }
    output.close_all();
    pipeline.set_state(gst::State::Null).unwrap();
}

/// CPU time of this process (user and system), from `getrusage`.
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes into the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// Share of one core the process used over `window`.
fn cores_used(window: Duration) -> f64 {
    let (cpu, wall) = (cpu_time(), Instant::now());
    std::thread::sleep(window);
    (cpu_time() - cpu).as_secs_f64() / wall.elapsed().as_secs_f64()
}

/// Measures, not a check: CPU per viewer on the top rung served as a single rendition (as
/// before the ladder), from the ladder (every rung's tee into the viewer's funnel), and from
/// the ladder with transport-wide CC (an rtpgccbwe pacing thread per viewer). Viewers and
/// server share the process; the encoders run in every phase and are subtracted.
///
///   cargo nextest run -p hybridlive-webrtc --test rungs --run-ignored only --no-capture
///   RUNG_COST_VIEWERS=16 ... (default 8)
#[test]
#[ignore = "a measurement: run it on an idle machine"]
fn measure_cpu_per_viewer() {
    if !hybridlive_testkit::in_private_namespaces("measure_cpu_per_viewer") {
        return;
    }
    let viewers: usize = std::env::var("RUNG_COST_VIEWERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let window = Duration::from_secs(10);
    let config = WhepConfig {
        loopback_ice: true,
        max_sessions: 1000,
        ..Default::default()
    };
    let mut figures = Vec::new();
    for phase in [
        "encoders only",
        "single rendition",
        "ladder",
        "ladder + TWCC",
    ] {
        let pipeline = ladder_source();
        let output = match phase {
            "single rendition" => WhepOutput::new(
                &pipeline,
                &pipeline.by_name("r0").unwrap(),
                None,
                config.clone(),
            ),
            _ => ladder_output(&pipeline, Duration::from_secs(1)),
        };
        pipeline.set_state(gst::State::Playing).unwrap();
        let count = if phase == "encoders only" { 0 } else { viewers };
        let mut served = Vec::new();
        for _ in 0..count {
            let viewer = RungViewer::new(false, phase == "ladder + TWCC");
            let id = viewer.connect(&output);
            let _ = output.pin_rung(&id, Some(0));
            served.push(viewer);
        }
        for viewer in &served {
            // A TWCC viewer's estimate may take it below its pin on a busy machine.
            let before = viewer.frames();
            eventually(Duration::from_secs(30), "30 frames", || {
                (viewer.frames() > before + 30).then_some(())
            });
        }
        std::thread::sleep(Duration::from_secs(2));
        let used = cores_used(window);
        let estimates: Vec<Option<u64>> = output
            .sessions()
            .iter()
            .map(|s| s.rung.as_ref().and_then(|r| r.estimate_bps))
            .collect();
        eprintln!(
            "{phase}: viewers per rung {:?}, estimates {estimates:?}",
            output.rung_counts().viewers
        );
        for viewer in &served {
            let before = viewer.frames();
            eventually(Duration::from_secs(10), "frames to keep coming", || {
                (viewer.frames() > before).then_some(())
            });
        }
        eprintln!("{phase}: {count} viewers, {:.1} % of a core", used * 100.0);
        figures.push((phase, count, used));
        output.close_all();
        drop(served);
        pipeline.set_state(gst::State::Null).unwrap();
    }
    let base = figures[0].2;
    for (phase, count, used) in &figures[1..] {
        eprintln!(
            "{phase}: {:.2} % of a core per viewer (server and viewer)",
            (used - base) * 100.0 / *count as f64
        );
    }
}
