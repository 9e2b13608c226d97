//! The table against the real elements installed on this machine.

use gst::prelude::*;
use hybridlive_encoders::{Encoder, MediaKind, find_upstream_encoder, lookup};

fn init() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| gst::init().expect("GStreamer initialises"));
}

fn make(factory: &str) -> Option<gst::Element> {
    init();
    gst::ElementFactory::make(factory).build().ok()
}

#[test]
fn table_matches_installed_elements() {
    init();
    let mut checked = 0;
    for row in hybridlive_encoders::ENCODERS {
        let Some(element) = make(row.factory) else {
            continue;
        };
        let encoder = Encoder::new(&element).unwrap_or_else(|e| panic!("{}: {e}", row.factory));
        let pspec = element.find_property(row.bitrate_property).unwrap();
        assert!(
            pspec.flags().contains(gst::glib::ParamFlags::WRITABLE),
            "{}",
            row.factory
        );
        let klass = element.factory().unwrap().klass().to_string();
        assert!(klass.contains("Encoder"), "{}: {klass}", row.factory);
        let is_video = klass.contains("Video");
        assert_eq!(is_video, row.kind == MediaKind::Video, "{}", row.factory);
        let (min, max) = encoder.range_bps();
        assert!(min >= 1 && max > min, "{}: {min}..{max}", row.factory);
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} encoders installed");
}

#[test]
fn x264enc_takes_kbit_per_second() {
    let element = make("x264enc").unwrap();
    let encoder = Encoder::new(&element).unwrap();
    assert_eq!(encoder.set_bitrate_bps(1_500_400), 1_500_000);
    assert_eq!(element.property::<u32>("bitrate"), 1500);
    assert_eq!(encoder.bitrate_bps(), 1_500_000);
    // Below the property's minimum of 1 kbit/s: clamped, never 0.
    assert_eq!(encoder.set_bitrate_bps(10), 1000);
    assert_eq!(element.property::<u32>("bitrate"), 1);
}

#[test]
fn x265enc_clamps_to_its_maximum() {
    let Some(element) = make("x265enc") else {
        return;
    };
    let encoder = Encoder::new(&element).unwrap();
    let (_, max) = encoder.range_bps();
    assert_eq!(
        max,
        element.property::<u32>("bitrate").max(102_400) as u64 * 1000
    );
    assert_eq!(encoder.set_bitrate_bps(u64::MAX), max);
    encoder.set_bitrate_bps(800_000);
    assert_eq!(element.property::<u32>("bitrate"), 800);
}

#[test]
fn vpx_takes_bit_per_second_and_never_auto() {
    for factory in ["vp8enc", "vp9enc"] {
        let element = make(factory).unwrap();
        let encoder = Encoder::new(&element).unwrap();
        // libvpx works in whole kbit/s: the value is rounded, and reads back as set.
        assert_eq!(encoder.set_bitrate_bps(1_234_567), 1_235_000);
        assert_eq!(element.property::<i32>("target-bitrate"), 1_235_000);
        assert_eq!(encoder.bitrate_bps(), 1_235_000);
        // 0 would mean "automatic" for libvpx: the smallest real rate is used instead.
        assert_eq!(encoder.set_bitrate_bps(0), 1000);
        assert_eq!(element.property::<i32>("target-bitrate"), 1000);
    }
}

#[test]
fn opusenc_is_audio_in_bit_per_second() {
    let element = make("opusenc").unwrap();
    let encoder = Encoder::new(&element).unwrap();
    assert_eq!(encoder.properties().kind, MediaKind::Audio);
    assert_eq!(encoder.set_bitrate_bps(48_000), 48_000);
    assert_eq!(element.property::<i32>("bitrate"), 48_000);
    // opusenc accepts 4 kbit/s at least.
    assert_eq!(encoder.set_bitrate_bps(1000), 4000);
    assert!(!encoder.force_key_frame());
}

#[test]
fn avenc_falls_back_to_the_generic_row() {
    let Some(element) = make("avenc_mpeg4") else {
        return;
    };
    let encoder = Encoder::new(&element).unwrap();
    assert!(!encoder.properties().live_update);
    encoder.set_bitrate_bps(900_000);
    assert_eq!(element.property::<i32>("bitrate"), 900_000);
}

#[test]
fn unknown_elements_are_refused() {
    let element = make("identity").unwrap();
    let err = Encoder::new(&element).unwrap_err().to_string();
    assert!(err.contains("identity"), "{err}");
    assert!(lookup("identity").is_none());
}

#[test]
fn finds_the_encoder_upstream_through_bins() {
    init();
    let pipeline = gst::parse::launch(
        "videotestsrc ! bin. ( name=bin x264enc name=enc ! h264parse ) ! queue ! identity name=last ! fakesink \
         audiotestsrc ! opusenc name=aenc ! fakesink",
    )
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let last = pipeline.by_name("last").unwrap();
    let pad = last.static_pad("sink").unwrap();
    let found = find_upstream_encoder(&pad, None).expect("x264enc found");
    assert_eq!(found.name(), "enc");
    assert_eq!(
        find_upstream_encoder(&pad, Some(MediaKind::Video))
            .unwrap()
            .name(),
        "enc"
    );
    assert!(find_upstream_encoder(&pad, Some(MediaKind::Audio)).is_none());
}
