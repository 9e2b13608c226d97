//! Element behaviour at the buffer level, driven with gst_check::Harness.

mod common;

use common::*;
use gst::prelude::*;
use hybridlive_stamp::{Codec, Framing, find_stamp};

fn unix_metas(buf: &gst::BufferRef) -> Vec<u64> {
    buf.iter_meta::<gst::ReferenceTimestampMeta>()
        .filter(|m| m.reference().structure(0).unwrap().name() == "timestamp/x-unix")
        .map(|m| m.timestamp().nseconds())
        .collect()
}

/// A harness around one element described like `"latencystamp mode=sei"`.
fn harness(element: &str, caps: &str) -> gst_check::Harness {
    let element = gst::parse::launch(element).unwrap();
    let mut h = gst_check::Harness::with_element(&element, Some("sink"), Some("src"));
    h.set_src_caps_str(caps);
    h
}

fn buffer(data: Vec<u8>, pts_ms: u64) -> gst::Buffer {
    let mut buf = gst::Buffer::from_mut_slice(data);
    buf.get_mut()
        .unwrap()
        .set_pts(gst::ClockTime::from_mseconds(pts_ms));
    buf
}

// AUD, SPS, PPS, then one IDR slice of `slice_len` bytes.
fn h264_access_unit(slice_len: usize) -> Vec<u8> {
    let mut au = vec![0, 0, 0, 1, 0x09, 0x10];
    au.extend_from_slice(&[0, 0, 0, 1, 0x67, 0x42, 0xc0, 0x1e, 0xda]);
    au.extend_from_slice(&[0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80]);
    au.extend_from_slice(&[0, 0, 0, 1, 0x65]);
    au.extend((0..slice_len).map(|i| (i % 251) as u8 | 0x10));
    au
}

const H264_CAPS: &str = "video/x-h264,stream-format=byte-stream,alignment=au";

#[test]
fn raw_video_and_audio_get_a_capture_meta_other_caps_pass_untouched() {
    init();
    for caps in [
        "video/x-raw,format=GRAY8,width=4,height=2,framerate=30/1",
        "audio/x-raw",
    ] {
        let mut h = harness("latencystamp", caps);
        h.play();
        let out = h.push_and_pull(buffer(vec![0; 8], 0)).unwrap();
        assert_eq!(unix_metas(&out).len(), 1, "{caps}");
    }
    let mut h = harness("latencystamp", "application/x-whatever");
    h.play();
    let input = buffer(vec![1, 2, 3], 0);
    let out = h.push_and_pull(input.clone()).unwrap();
    assert!(unix_metas(&out).is_empty());
    assert_eq!(out.n_memory(), 1);
    assert_eq!(out.map_readable().unwrap().as_slice(), &[1, 2, 3]);
}

#[test]
fn capture_time_follows_running_time_not_arrival() {
    init();
    let mut h = harness("latencystamp", "video/x-raw,format=GRAY8,width=4,height=2");
    h.play();
    // Two buffers pushed back to back, 400 ms apart in running time: stamps differ by 400 ms
    // although they arrive within microseconds of each other.
    let a = h.push_and_pull(buffer(vec![0; 8], 100)).unwrap();
    let b = h.push_and_pull(buffer(vec![0; 8], 500)).unwrap();
    let (a, b) = (unix_metas(&a)[0], unix_metas(&b)[0]);
    let diff = b as i128 - a as i128;
    assert!((diff - 400_000_000).abs() < 1_000_000, "{diff} ns");
}

#[test]
fn upstream_stamp_is_kept_unless_overwrite() {
    init();
    for (overwrite, expect_kept) in [(false, true), (true, false)] {
        let mut h = harness(
            &format!("latencystamp overwrite={overwrite}"),
            "video/x-raw,format=GRAY8,width=4,height=2",
        );
        h.play();
        let mut input = buffer(vec![0; 8], 0);
        gst::ReferenceTimestampMeta::add(
            input.get_mut().unwrap(),
            &gst::Caps::new_empty_simple("timestamp/x-unix"),
            gst::ClockTime::from_nseconds(12345),
            gst::ClockTime::NONE,
        );
        let out = h.push_and_pull(input).unwrap();
        let metas = unix_metas(&out);
        assert_eq!(metas.len(), 1, "exactly one capture meta");
        assert_eq!(metas[0] == 12345, expect_kept, "overwrite={overwrite}");
    }
}

#[test]
fn sei_goes_in_as_its_own_memory_without_copying_the_frame() {
    init();
    let mut h = harness("latencystamp stream-id=cam7", H264_CAPS);
    h.play();
    let au = h264_access_unit(100_000);
    let input = buffer(au.clone(), 40);
    let slice_ptr = {
        let map = input.map_readable().unwrap();
        map.as_ptr() as usize + 23 // start of the IDR slice's start code
    };
    let out = h.push_and_pull(input).unwrap();

    // head (AUD/SPS/PPS) | SEI | slice: the slice memory is the input memory, shared.
    assert_eq!(out.n_memory(), 3);
    let tail = out.peek_memory(2).map_readable().unwrap();
    assert_eq!(tail.as_ptr() as usize, slice_ptr, "frame data was copied");
    assert_eq!(tail.len(), au.len() - 23);

    let whole = out.map_readable().unwrap();
    let stamp = find_stamp(Codec::H264, Framing::AnnexB, &whole)
        .unwrap()
        .expect("a stamp in the bitstream");
    assert_eq!(stamp.stream_id, "cam7");
    assert_eq!(stamp.frame, 0);
    assert_eq!(
        stamp.capture_time_ns,
        unix_metas(&out)[0],
        "meta and SEI agree"
    );
    // The original access unit is intact around the SEI.
    assert_eq!(&whole[..23], &au[..23]);
    assert_eq!(&whole[whole.len() - (au.len() - 23)..], &au[23..]);

    // The frame counter counts.
    let out = h.push_and_pull(buffer(h264_access_unit(10), 73)).unwrap();
    let stamp = find_stamp(Codec::H264, Framing::AnnexB, &out.map_readable().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(stamp.frame, 1);
    let stats = h.element().unwrap().property::<gst::Structure>("stats");
    assert_eq!(stats.get::<u64>("sei-inserted").unwrap(), 2);
}

#[test]
fn codec_config_only_buffers_get_no_sei() {
    init();
    let mut h = harness("latencystamp mode=sei", H264_CAPS);
    h.play();
    let sps_only = vec![0, 0, 0, 1, 0x67, 0x42, 0xc0, 0x1e];
    let out = h.push_and_pull(buffer(sps_only.clone(), 0)).unwrap();
    assert_eq!(out.map_readable().unwrap().as_slice(), &sps_only[..]);
    let stats = h.element().unwrap().property::<gst::Structure>("stats");
    assert_eq!(stats.get::<u64>("no-slice").unwrap(), 1);
}

#[test]
fn meter_survives_garbage_and_counts_it_missing() {
    init();
    let mut h = harness("latencymeter", H264_CAPS);
    h.play();
    // A stamp SEI cut short inside an otherwise valid access unit, then pure noise.
    let mut truncated = vec![0, 0, 0, 1, 0x06, 0x05, 0x28];
    truncated.extend_from_slice(&hybridlive_stamp::STAMP_UUID);
    truncated.extend_from_slice(&[1, 0, 0]);
    truncated.extend_from_slice(&[0, 0, 0, 1, 0x65, 0x88]);
    let mut x = 7u32;
    let noise: Vec<u8> = (0..5000)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8 & 0x03
        })
        .chain([0, 0, 1, 0x65, 1])
        .collect();
    for data in [truncated, noise, vec![0, 0, 1, 0x41, 0xff]] {
        h.push_and_pull(buffer(data, 0)).unwrap();
    }
    let stats = h.element().unwrap().property::<gst::Structure>("stats");
    assert_eq!(stats.get::<u64>("count").unwrap(), 0);
    assert_eq!(stats.get::<u64>("missing").unwrap(), 3);
    assert_eq!(stats.get::<u64>("malformed").unwrap(), 1);
}

#[test]
fn every_property_and_report_field_is_documented() {
    init();
    for name in ["latencystamp", "latencymeter"] {
        let element = gst::ElementFactory::make(name).build().unwrap();
        let factory = element.factory().unwrap();
        let description = factory
            .metadata(gst::ELEMENT_METADATA_DESCRIPTION)
            .unwrap()
            .to_owned();
        for pspec in element.list_properties() {
            if pspec.owner_type() != element.type_() {
                continue; // name, parent, qos: documented by GStreamer
            }
            let blurb = pspec.blurb().unwrap_or_default();
            assert!(
                blurb.len() >= 40,
                "{name}::{} is not documented",
                pspec.name()
            );
            assert_ne!(
                pspec.nick(),
                pspec.name(),
                "{name}::{} has no nick",
                pspec.name()
            );
        }
        // Every field of the stats structure is described.
        let stats = element.property::<gst::Structure>("stats");
        let docs = match name {
            "latencystamp" => element
                .find_property("stats")
                .unwrap()
                .blurb()
                .unwrap()
                .to_owned(),
            _ => description.clone(),
        };
        for field in stats.fields() {
            let documented = docs.contains(field.as_str())
                || (field.starts_with("window-") || field.starts_with("total-"))
                    && docs.contains(&field.replace("window-", "").replace("total-", "")[..])
                    && docs.contains("window-")
                    && docs.contains("total-");
            assert!(documented, "{name}: stats field {field} is not documented");
        }
    }
}

#[test]
fn a_seek_is_not_frame_loss() {
    init();
    // A stamped recording: frame counters 0..300.
    let mut stamp = harness("latencystamp mode=sei", H264_CAPS);
    stamp.play();
    let recording: Vec<gst::Buffer> = (0..300u64)
        .map(|i| {
            stamp
                .push_and_pull(buffer(h264_access_unit(10), i * 40))
                .unwrap()
        })
        .collect();
    let mut h = harness("latencymeter", H264_CAPS);
    h.play();
    let lost = |h: &gst_check::Harness| {
        let stats = h.element().unwrap().property::<gst::Structure>("stats");
        stats.get::<u64>("frames-lost").unwrap()
    };
    for b in &recording[..20] {
        h.push_and_pull(b.clone()).unwrap();
    }
    // A flushing seek forward to frame 200: frames 20..200 were never sent.
    assert!(h.push_event(gst::event::FlushStart::new()));
    assert!(h.push_event(gst::event::FlushStop::new(true)));
    let mut segment = gst::FormattedSegment::<gst::ClockTime>::new();
    segment.set_start(gst::ClockTime::from_mseconds(200 * 40));
    assert!(h.push_event(gst::event::Segment::new(&segment)));
    for b in &recording[200..220] {
        h.push_and_pull(b.clone()).unwrap();
    }
    assert_eq!(lost(&h), 0, "frames skipped by the seek counted as lost");
    // Frames really lost after it still count.
    for b in &recording[220..230] {
        h.push_and_pull(b.clone()).unwrap();
    }
    for b in &recording[231..240] {
        h.push_and_pull(b.clone()).unwrap();
    }
    assert_eq!(lost(&h), 1);
}

#[test]
fn overwrite_wins_with_a_parser_and_a_decoder_in_between() {
    init();
    let source = "videotestsrc num-buffers=10 ! video/x-raw,width=160,height=120 ! \
                  x264enc speed-preset=ultrafast ! h264parse ! \
                  video/x-h264,stream-format=byte-stream,alignment=au";
    for (chain, expected) in [
        // The repro: without h264parse it said "second", with it "cam".
        (
            "latencystamp mode=sei stream-id=cam ! \
             latencystamp mode=sei overwrite=true stream-id=second ! h264parse ! latencymeter name=m",
            "second",
        ),
        (
            "latencystamp mode=sei stream-id=cam ! \
             latencystamp mode=sei overwrite=true stream-id=second ! h264parse ! avdec_h264 ! \
             latencymeter name=m",
            "second",
        ),
        // The parser's SEI meta of the old stamp is stale once the stamp is replaced.
        (
            "latencystamp mode=sei stream-id=cam ! h264parse ! \
             latencystamp mode=sei overwrite=true stream-id=third ! latencymeter name=m",
            "third",
        ),
        (
            "latencystamp mode=both stream-id=cam ! h264parse ! \
             latencystamp mode=sei overwrite=true stream-id=third ! h264parse ! avdec_h264 ! \
             latencymeter name=m",
            "third",
        ),
    ] {
        let p = parse(&format!("{source} ! {chain} ! fakesink"));
        let report = run_to_eos(&p, "m", gst::ClockTime::from_seconds(30)).expect("a report");
        assert_eq!(
            report.get::<String>("stream-id").unwrap(),
            expected,
            "{chain}"
        );
        assert_eq!(report.get::<u64>("count").unwrap(), 10, "{chain}: {report}");
    }
}
