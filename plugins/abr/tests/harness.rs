//! `abrcontroller` driven by a harness with a test clock: synthetic congestion signals arrive
//! as `abr-estimate` events, the controlled encoders are real elements.

use gst::prelude::*;
use gst_check::Harness;

fn init() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        gst::init().expect("GStreamer initialises");
        gstabr::plugin_register_static().expect("abr plugin registers");
        gstrsrtp::plugin_register_static().expect("rtp plugin (rtpgccbwe) registers");
    });
}

struct Rig {
    h: Harness,
    bus: gst::Bus,
    encoder: gst::Element,
}

/// A harness around an abrcontroller controlling a standalone `factory` encoder.
fn rig(factory: &str, props: &[(&str, &dyn ToValue)]) -> Rig {
    init();
    let encoder = gst::ElementFactory::make(factory)
        .build()
        .unwrap_or_else(|_| panic!("{factory} is installed"));
    let mut h = Harness::new("abrcontroller");
    let element = h.element().expect("harness element");
    let bus = gst::Bus::new();
    element.set_bus(Some(&bus));
    element.set_property("encoder", &encoder);
    for (name, value) in props {
        element.set_property_from_value(name, &value.to_value());
    }
    h.set_src_caps_str("video/x-h264,stream-format=byte-stream,alignment=au");
    h.play();
    Rig { h, bus, encoder }
}

impl Rig {
    /// `n` ticks of 3 Mbit/s, each after a report of a clear link.
    fn clear_ticks(&mut self, n: usize) {
        for _ in 0..n {
            self.signal_upstream(clear());
            self.tick(BYTES_3M);
        }
    }

    fn element(&self) -> gst::Element {
        self.h.element().unwrap()
    }

    /// One 100 ms tick with `bytes` of media passing through.
    fn tick(&mut self, bytes: usize) {
        if bytes > 0 {
            self.h
                .push(gst::Buffer::with_size(bytes).unwrap())
                .expect("buffer flows");
            self.h.pull().expect("buffer comes out");
        }
        self.h
            .crank_single_clock_wait()
            .expect("tick scheduled on the clock");
    }

    fn ticks(&mut self, n: usize, bytes: usize) {
        for _ in 0..n {
            self.tick(bytes);
        }
    }

    /// Sends an `abr-estimate` event upstream, as a downstream element would.
    fn signal_upstream(&mut self, s: gst::Structure) {
        assert!(
            self.h
                .push_upstream_event(gst::event::CustomUpstream::new(s))
        );
    }

    /// Sends an `abr-estimate` event downstream, as an upstream element would.
    fn signal_downstream(&mut self, s: gst::Structure) {
        assert!(self.h.push_event(gst::event::CustomDownstream::new(s)));
    }

    fn decisions(&self) -> Vec<gst::Structure> {
        std::iter::from_fn(|| self.bus.pop())
            .filter_map(|m| match m.view() {
                gst::MessageView::Element(e) => e
                    .structure()
                    .filter(|s| s.name() == "abr-decision")
                    .map(|s| s.to_owned()),
                _ => None,
            })
            .collect()
    }

    fn warnings(&self) -> Vec<String> {
        std::iter::from_fn(|| self.bus.pop())
            .filter_map(|m| match m.view() {
                gst::MessageView::Warning(w) => Some(format!("{} {:?}", w.error(), w.debug())),
                _ => None,
            })
            .collect()
    }

    fn x264_kbps(&self) -> u32 {
        self.encoder.property::<u32>("bitrate")
    }
}

fn clear() -> gst::Structure {
    gst::Structure::builder("abr-estimate")
        .field("loss", 0.0f64)
        .field("rtt", gst::ClockTime::from_mseconds(40))
        .build()
}

/// 3 Mbit/s worth of media per 100 ms tick.
const BYTES_3M: usize = 37_500;

/// An x264enc steered from 3 Mbit/s, which is also its maximum.
fn x264_at_3m() -> Rig {
    rig(
        "x264enc",
        &[
            ("start-bitrate", &3_000_000u32),
            ("max-bitrate", &3_000_000u32),
        ],
    )
}

#[test]
fn loss_spike_lowers_x264enc_bitrate_on_the_next_tick() {
    let mut r = x264_at_3m();
    r.clear_ticks(20);
    assert_eq!(r.x264_kbps(), 3000);
    r.decisions();

    r.signal_upstream(
        gst::Structure::builder("abr-estimate")
            .field("loss", 0.3f64)
            .build(),
    );
    r.tick(BYTES_3M);
    let kbps = r.x264_kbps();
    // Down to what got through (3 Mbit/s × 0.7 × 0.9 = 1890 kbit/s), never below half.
    assert!((1500..3000).contains(&kbps), "{kbps}");
    let d = r.decisions();
    let last = d.last().expect("a decision is posted");
    assert_eq!(last.get::<&str>("reason").unwrap(), "loss");
    assert_eq!(last.get::<&str>("direction").unwrap(), "decrease");
    assert_eq!(last.get::<u32>("bitrate").unwrap(), kbps * 1000);
    assert_eq!(last.get::<String>("encoder").unwrap(), r.encoder.name());
    let inputs = last.get::<gst::Structure>("inputs").unwrap();
    assert_eq!(inputs.get::<f64>("loss").unwrap(), 0.3);
    assert!(inputs.get::<u32>("sent-bitrate").unwrap() > 2_500_000);

    let stats = r.element().property::<gst::Structure>("stats");
    assert_eq!(stats.get::<u64>("decreases").unwrap(), 1);
    assert_eq!(stats.get::<&str>("last-reason").unwrap(), "loss");
}

/// One TWCC feedback event as rtpbin sends it upstream: `(size, arrival)` per packet in
/// sequence order, arrival `None` for a packet reported lost.
fn twcc_feedback(first_seqnum: u32, packets: &[(u32, Option<gst::ClockTime>)]) -> gst::Structure {
    let packets = packets.iter().enumerate().map(|(i, &(size, arrival))| {
        gst::Structure::builder("RTPTWCCPacket")
            .field("seqnum", first_seqnum + i as u32)
            .field("local-ts", gst::ClockTime::from_mseconds(i as u64))
            .field("remote-ts", arrival.map_or(u64::MAX, |t| t.nseconds()))
            .field("payload-type", 96u8)
            .field("size", size)
            .field("lost", arrival.is_none())
            .build()
            .to_send_value()
    });
    gst::Structure::builder("RTPTWCCPackets")
        .field("packets", gst::Array::from_values(packets))
        .build()
}

#[test]
fn twcc_feedback_cuts_to_the_rate_that_arrived() {
    let mut r = x264_at_3m();
    r.clear_ticks(20);
    assert_eq!(r.x264_kbps(), 3000);
    r.decisions();

    // A policer: 10 packets arrive back to back, then every other one is dropped and the
    // rest arrive 10 ms apart (15 × 1188 bytes over 142.5 ms: 1.0 Mbit/s).
    let ms = |v: f64| Some(gst::ClockTime::from_nseconds((v * 1e6) as u64));
    let mut packets: Vec<_> = (0..10).map(|i| (1188, ms(2.5 * i as f64))).collect();
    for k in 0..15 {
        packets.push((1188, None));
        packets.push((1188, ms(25.0 + 10.0 * k as f64)));
    }
    r.signal_upstream(twcc_feedback(100, &packets));
    r.tick(BYTES_3M);
    let kbps = r.x264_kbps();
    // 90 % of what arrived, not the loss factor's 3000 × (1 − 0.375 / 2) = 2440 kbit/s.
    assert!((800..=1000).contains(&kbps), "{kbps}");
    let d = r.decisions();
    let last = d.last().expect("a decision is posted");
    assert_eq!(last.get::<&str>("reason").unwrap(), "loss");
    let inputs = last.get::<gst::Structure>("inputs").unwrap();
    assert_eq!(inputs.get::<f64>("loss").unwrap(), 15.0 / 40.0);
}

#[test]
fn a_decrease_tightens_the_encoder_buffer_for_a_moment() {
    let mut r = x264_at_3m();
    r.clear_ticks(10);
    let buffer_ms = |r: &Rig| r.encoder.property::<u32>("vbv-buf-capacity");
    assert_eq!(buffer_ms(&r), 250, "the default VBV capacity");
    r.signal_upstream(
        gst::Structure::builder("abr-estimate")
            .field("loss", 0.3f64)
            .build(),
    );
    r.tick(BYTES_3M);
    assert!(r.x264_kbps() < 3000);
    // Right after the cut: a buffer of 100 ms of the new rate, so the encoder cannot spend
    // a buffer filled at the old rate and a key frame stays small.
    assert_eq!(buffer_ms(&r), 100);
    for _ in 0..20 {
        r.signal_upstream(clear());
        r.tick(BYTES_3M / 2);
    }
    assert_eq!(buffer_ms(&r), 250, "back to the configured capacity");
}

#[test]
fn rtt_rise_lowers_bitrate_within_half_a_second() {
    let mut r = rig("x264enc", &[("start-bitrate", &2_000_000u32)]);
    for _ in 0..20 {
        r.signal_upstream(clear());
        r.tick(25_000);
    }
    let before = r.x264_kbps();
    r.decisions();
    // Queuing delay builds up by 60 ms per tick.
    let mut cut_after = None;
    for i in 1..=5u64 {
        r.signal_downstream(
            gst::Structure::builder("abr-estimate")
                .field("rtt", gst::ClockTime::from_mseconds(40 + 60 * i))
                .build(),
        );
        r.tick(25_000);
        if r.x264_kbps() < before {
            cut_after = Some(i);
            break;
        }
    }
    let ticks = cut_after.expect("RTT rise lowers the bitrate within 5 ticks (500 ms)");
    assert!(ticks <= 3, "{ticks}");
    let after = r.x264_kbps();
    // One cut from what is really sent (2 Mbit/s of buffers per second here): a delay
    // growing by 60 ms every 100 ms means the link carries 1 / 1.6 of it.
    let sent_kbps = 2000.min(before);
    assert!(
        (sent_kbps * 60 / 100..sent_kbps * 66 / 100).contains(&after),
        "{before} → {after}"
    );
    let reasons: Vec<String> = r
        .decisions()
        .iter()
        .map(|d| d.get::<String>("reason").unwrap())
        .collect();
    assert_eq!(reasons, ["rtt"]);
}

#[test]
fn backlog_growth_brings_bitrate_under_the_drain_rate() {
    let mut r = x264_at_3m();
    r.ticks(5, BYTES_3M);
    // The uplink drains 1 Mbit/s (12.5 kB per tick) of the 37.5 kB arriving per tick.
    let mut backlog_bytes = 0u64;
    let mut cut_after = None;
    for i in 1..=10u64 {
        backlog_bytes += (BYTES_3M - 12_500) as u64;
        r.signal_upstream(
            gst::Structure::builder("abr-estimate")
                .field(
                    "backlog",
                    gst::ClockTime::from_mseconds(backlog_bytes * 8 / 1000),
                )
                .field("backlog-bytes", backlog_bytes)
                .build(),
        );
        r.tick(BYTES_3M);
        if r.x264_kbps() < 3000 {
            cut_after = Some(i);
            break;
        }
    }
    let ticks = cut_after.expect("backlog growth lowers the bitrate");
    assert!(ticks <= 5, "{ticks}");
    let kbps = r.x264_kbps();
    assert!(
        (700..=1000).contains(&kbps),
        "{kbps} kbit/s for a 1000 kbit/s link"
    );
}

#[test]
fn explicit_estimate_caps_and_min_max_bound_the_bitrate() {
    let mut r = rig(
        "x264enc",
        &[
            ("start-bitrate", &2_000_000u32),
            ("min-bitrate", &400_000u32),
            ("max-bitrate", &2_500_000u32),
        ],
    );
    r.signal_downstream(
        gst::Structure::builder("abr-estimate")
            .field("bitrate", 100_000u32)
            .build(),
    );
    r.ticks(3, 10_000);
    assert_eq!(r.x264_kbps(), 400, "never below min-bitrate");
    r.signal_downstream(
        gst::Structure::builder("abr-estimate")
            .field("bitrate", 50_000_000u32)
            .build(),
    );
    // 30 s of clear signals with the encoder producing what it is asked.
    for _ in 0..300 {
        let bytes = r.x264_kbps() as usize * 1000 / 80;
        r.tick(bytes);
    }
    assert_eq!(r.x264_kbps(), 2500, "never above max-bitrate");
}

/// Reads an integer property whatever its signedness.
fn int_property(element: &gst::Element, name: &str) -> u64 {
    let value = element.property_value(name);
    value
        .get::<u32>()
        .map(u64::from)
        .or_else(|_| value.get::<i32>().map(|v| v as u64))
        .expect("integer property")
}

#[test]
fn unit_conversion_per_encoder() {
    init();
    // 500 kbit/s as each encoder spells it.
    let cases = [
        ("x264enc", "bitrate", 500),
        ("x265enc", "bitrate", 500),
        ("vp8enc", "target-bitrate", 500_000),
        ("vp9enc", "target-bitrate", 500_000),
        ("opusenc", "bitrate", 500_000),
        ("openh264enc", "bitrate", 500_000),
    ];
    let mut checked = 0;
    for (factory, property, expected) in cases {
        if gst::ElementFactory::find(factory).is_none() {
            continue;
        }
        let mut r = rig(
            factory,
            &[("start-bitrate", &500_000u32), ("min-bitrate", &1000u32)],
        );
        r.tick(0);
        assert_eq!(int_property(&r.encoder, property), expected, "{factory}");
        let d = r.decisions();
        let start = d.first().expect("start decision");
        assert_eq!(start.get::<&str>("reason").unwrap(), "start");
        assert_eq!(start.get::<u32>("bitrate").unwrap(), 500_000);
        checked += 1;
    }
    assert!(checked >= 4, "only {checked} encoders installed");
}

/// Runs `ticks` ticks sending what x264enc is set to, and notes every new height the
/// capsfilter is given in `heights`.
fn ticks_at_encoder_rate(
    r: &mut Rig,
    capsfilter: &gst::Element,
    ticks: u32,
    heights: &mut Vec<i32>,
) {
    for _ in 0..ticks {
        let bytes = r.x264_kbps() as usize * 1000 / 80;
        r.tick(bytes);
        let h = capsfilter
            .property::<gst::Caps>("caps")
            .structure(0)
            .unwrap()
            .get::<i32>("height")
            .unwrap();
        if heights.last() != Some(&h) {
            heights.push(h);
        }
    }
}

#[test]
fn rung_changes_set_caps_force_a_key_frame_and_do_not_oscillate() {
    init();
    let capsfilter = gst::ElementFactory::make("capsfilter")
        .property(
            "caps",
            gst::Caps::builder("video/x-raw")
                .field("format", "I420")
                .build(),
        )
        .build()
        .unwrap();
    let mut r = rig(
        "x264enc",
        &[
            ("start-bitrate", &1_700_000u32),
            ("capsfilter", &capsfilter),
        ],
    );
    // Active pads, so that the key unit request reaches the encoder's source pad.
    r.encoder.set_state(gst::State::Playing).unwrap();
    let key_requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = key_requests.clone();
    r.encoder.static_pad("src").unwrap().add_probe(
        gst::PadProbeType::EVENT_UPSTREAM,
        move |_, info| {
            if let Some(gst::PadProbeData::Event(ev)) = &info.data
                && gst_video::UpstreamForceKeyUnitEvent::parse(ev).is_ok()
            {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            gst::PadProbeReturn::Ok
        },
    );
    r.tick(0);
    let caps = capsfilter.property::<gst::Caps>("caps");
    let s = caps.structure(0).unwrap();
    assert_eq!(s.get::<i32>("height").unwrap(), 720);
    assert_eq!(
        s.get::<&str>("format").unwrap(),
        "I420",
        "other fields kept"
    );
    assert_eq!(
        s.get::<gst::Fraction>("framerate").unwrap(),
        gst::Fraction::new(30, 1)
    );

    // The link wobbles around the 720p minimum (1500 kbit/s) every second for a minute.
    let mut heights = Vec::new();
    for i in 0..60 {
        let estimate = if i % 2 == 0 { 1_400_000u32 } else { 1_700_000 };
        r.signal_downstream(
            gst::Structure::builder("abr-estimate")
                .field("bitrate", estimate)
                .build(),
        );
        ticks_at_encoder_rate(&mut r, &capsfilter, 10, &mut heights);
    }
    assert_eq!(heights, [540], "one step down to 540p, no flapping back");
    assert_eq!(key_requests.load(std::sync::atomic::Ordering::SeqCst), 1);
    let rung_changes: Vec<gst::Structure> = r
        .decisions()
        .into_iter()
        .filter(|d| d.get::<bool>("rung-changed").unwrap())
        .collect();
    assert_eq!(rung_changes.len(), 1);
    assert_eq!(rung_changes[0].get::<i32>("height").unwrap(), 540);
    assert_eq!(rung_changes[0].get::<i32>("width").unwrap(), 960);

    // A steady 3.2 Mbit/s link: back to 720p after the hold; 1080p needs 3000 × 1.15.
    r.signal_downstream(
        gst::Structure::builder("abr-estimate")
            .field("bitrate", 3_200_000u32)
            .build(),
    );
    heights.clear();
    ticks_at_encoder_rate(&mut r, &capsfilter, 200, &mut heights);
    assert_eq!(heights, [540, 720]);
    assert!(r.x264_kbps() <= 3200);
    assert_eq!(key_requests.load(std::sync::atomic::Ordering::SeqCst), 2);
    r.encoder.set_state(gst::State::Null).unwrap();
}

#[test]
fn bad_configuration_is_reported_not_fatal() {
    let mut r = rig("identity", &[("ladder", &"1280x720@30")]);
    assert_eq!(
        r.element().property::<String>("ladder"),
        gstabr::ladder::DEFAULT_LADDER,
        "invalid ladder refused"
    );
    r.ticks(3, 1000);
    let warnings = r.warnings().join("\n");
    assert!(warnings.contains("1280x720@30"), "{warnings}");
    assert!(warnings.contains("not a known encoder"), "{warnings}");
}

#[test]
fn real_queue_filling_up_lowers_bitrate() {
    init();
    // A TCP-like uplink that stopped draining: the sink waits for a time an hour away.
    let uplink = gst::parse::launch(
        "appsrc name=src format=time ! queue name=q max-size-time=0 max-size-bytes=0 \
         max-size-buffers=0 ! fakesink sync=true async=false",
    )
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let queue = uplink.by_name("q").unwrap();
    let appsrc = uplink
        .by_name("src")
        .unwrap()
        .downcast::<gst_app::AppSrc>()
        .unwrap();
    appsrc.set_caps(Some(&gst::Caps::new_empty_simple("video/x-h264")));
    uplink.set_state(gst::State::Playing).unwrap();

    let mut r = rig(
        "x264enc",
        &[("start-bitrate", &2_000_000u32), ("queue", &queue)],
    );
    let mut pts = gst::ClockTime::from_seconds(3600);
    let mut cut = None;
    for i in 0..20u32 {
        let mut buffer = gst::Buffer::with_size(25_000).unwrap();
        {
            let b = buffer.get_mut().unwrap();
            b.set_pts(pts);
            b.set_duration(gst::ClockTime::from_mseconds(100));
        }
        pts += gst::ClockTime::from_mseconds(100);
        appsrc.push_buffer(buffer).unwrap();
        // Let appsrc's thread hand the buffer over to the queue before the tick reads it (the
        // first buffer leaves the queue and waits in the sink).
        for _ in 0..1000 {
            if queue.property::<u32>("current-level-bytes") >= i * 25_000 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        r.tick(25_000);
        if r.x264_kbps() < 2000 {
            cut = Some(i);
            break;
        }
    }
    let level = queue.property::<u64>("current-level-time");
    uplink.set_state(gst::State::Null).unwrap();
    let ticks = cut.expect("a filling queue lowers the bitrate");
    assert!(level >= 200_000_000, "backlog {level} ns");
    assert!(ticks <= 6, "{ticks}");
    let d = r.decisions();
    let last = d.last().unwrap();
    assert_eq!(last.get::<&str>("reason").unwrap(), "backlog");
    assert!(
        last.get::<gst::Structure>("inputs")
            .unwrap()
            .get::<gst::ClockTime>("backlog")
            .is_ok()
    );
}

#[test]
fn rtpgccbwe_estimate_is_followed() {
    init();
    let gcc = gst::ElementFactory::make("rtpgccbwe")
        .property("estimated-bitrate", 700_000u32)
        .build()
        .expect("rtpgccbwe from gst-plugin-rtp");
    let mut r = rig(
        "x264enc",
        &[("start-bitrate", &2_000_000u32), ("estimator", &gcc)],
    );
    r.ticks(2, 25_000);
    assert_eq!(r.x264_kbps(), 700);
    let d = r.decisions();
    assert!(
        d.iter().any(|d| d.get::<&str>("reason") == Ok("estimate")
            && d.get::<u32>("estimate") == Ok(700_000)),
        "{d:?}"
    );
}

#[test]
fn pause_and_play_during_a_tick_leave_one_tick_chain() {
    let mut r = x264_at_3m();
    let element = r.element();
    let clock = r.h.testclock().expect("test clock");
    // An application pausing and resuming while a tick runs on the clock's thread: here from
    // the tick's own start decision, so the two meet every time.
    let toggled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let once = toggled.clone();
    r.bus.set_sync_handler(move |_, msg| {
        if matches!(msg.view(), gst::MessageView::Element(_))
            && !once.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            element.set_state(gst::State::Paused).expect("paused");
            element.set_state(gst::State::Playing).expect("playing");
        }
        gst::BusSyncReply::Pass
    });
    r.tick(BYTES_3M);
    assert!(
        toggled.load(std::sync::atomic::Ordering::SeqCst),
        "no decision posted"
    );
    assert_eq!(clock.peek_id_count(), 1, "tick chains waiting on the clock");
    // And it stays one.
    r.ticks(5, BYTES_3M);
    assert_eq!(clock.peek_id_count(), 1, "tick chains waiting on the clock");
}
