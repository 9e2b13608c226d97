//! The playout-delay extension on real payloaders and depayloaders: what the sender configures
//! is on the wire of every packet and is what the receiver reads back.

use gst::prelude::*;
use gst_rtp::prelude::*;
use gstrtpext::{PLAYOUT_DELAY_URI, PlayoutDelay};
use std::sync::Once;

fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().unwrap();
        gstrtpext::plugin_register_static().unwrap();
    });
}

/// Found the way payloaders and webrtcbin find extensions: by URI.
fn extension(id: u32, min_ms: u32, max_ms: u32) -> gst_rtp::RTPHeaderExtension {
    let ext = gst_rtp::RTPHeaderExtension::create_from_uri(PLAYOUT_DELAY_URI)
        .expect("rtphdrextplayoutdelay is found by its URI");
    assert!(ext.is::<PlayoutDelay>());
    ext.set_id(id);
    ext.set_property("min-delay", min_ms);
    ext.set_property("max-delay", max_ms);
    ext
}

/// H.264 RTP from a short live-like encode, with `ext` on the payloader.
fn payloaded(ext: &gst_rtp::RTPHeaderExtension, frames: u32) -> Vec<gst::Buffer> {
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc num-buffers={frames} ! video/x-raw,width=160,height=120 ! \
         x264enc tune=zerolatency speed-preset=ultrafast ! rtph264pay name=pay mtu=400 ! \
         appsink name=sink sync=false"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let pay = pipeline.by_name("pay").unwrap();
    pay.emit_by_name::<()>("add-extension", &[ext]);
    let sink = pipeline
        .by_name("sink")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let mut buffers = Vec::new();
    while let Ok(sample) = sink.pull_sample() {
        buffers.push(sample.buffer_owned().unwrap());
    }
    pipeline.set_state(gst::State::Null).unwrap();
    buffers
}

/// The extension data with `id` in an RTP packet, one-byte or two-byte form.
fn extension_data(buffer: &gst::Buffer, id: u8) -> Option<Vec<u8>> {
    let rtp = gst_rtp::RTPBuffer::from_buffer_readable(buffer).unwrap();
    rtp.extension_onebyte_header(id, 0)
        .or_else(|| rtp.extension_twobytes_header(id, 0).map(|(_, d)| d))
        .map(|d| d.to_vec())
}

#[test]
fn every_packet_carries_the_configured_delays() {
    init();
    let (min_ms, max_ms) = (20, 150);
    let ext = extension(7, min_ms, max_ms);
    let packets = payloaded(&ext, 10);
    assert!(packets.len() >= 10, "{} packets", packets.len());
    let units = |ms: u32| ms / 10;
    let expected = [
        (units(min_ms) >> 4) as u8,
        ((units(min_ms) & 0xf) << 4 | units(max_ms) >> 8) as u8,
        units(max_ms) as u8,
    ];
    for packet in &packets {
        assert_eq!(extension_data(packet, 7).as_deref(), Some(&expected[..]));
    }
}

#[test]
fn an_extension_left_at_its_defaults_asks_for_0_to_200_ms() {
    init();
    let ext = gst_rtp::RTPHeaderExtension::create_from_uri(PLAYOUT_DELAY_URI).unwrap();
    ext.set_id(5);
    let packets = payloaded(&ext, 3);
    assert!(!packets.is_empty());
    // 0 and 20 units of 10 ms in two 12-bit fields.
    for packet in &packets {
        assert_eq!(
            extension_data(packet, 5).as_deref(),
            Some(&[0x00, 0x00, 0x14][..])
        );
    }
}

#[test]
fn depayloader_reads_back_what_the_payloader_wrote() {
    init();
    let sent = extension(3, 0, 80);
    let packets = payloaded(&sent, 5);

    let received = gst_rtp::RTPHeaderExtension::create_from_uri(PLAYOUT_DELAY_URI).unwrap();
    received.set_id(3);
    let changes = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = changes.clone();
    received.connect_notify(Some("max-delay"), move |_, _| {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    });
    let mut harness = gst_check::Harness::new("rtph264depay");
    harness
        .element()
        .unwrap()
        .emit_by_name::<()>("add-extension", &[&received]);
    harness.set_src_caps(
        gst::Caps::builder("application/x-rtp")
            .field("media", "video")
            .field("encoding-name", "H264")
            .field("clock-rate", 90000i32)
            .field("extmap-3", PLAYOUT_DELAY_URI)
            .build(),
    );
    for packet in packets {
        harness.push(packet).unwrap();
    }
    assert_eq!(received.property::<u32>("min-delay"), 0);
    assert_eq!(received.property::<u32>("max-delay"), 80);
    // Notified once, when the value first changed; not on every packet.
    assert_eq!(changes.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn short_extension_data_is_refused_without_harm() {
    init();
    // Extension data with the right id but a single byte: refused, and the properties keep
    // their last good values.
    let received = extension(4, 30, 60);
    let mut out = gst::Buffer::new();
    let result = received.read(
        gst_rtp::RTPHeaderExtensionFlags::ONE_BYTE,
        &[0x01],
        out.get_mut().unwrap(),
    );
    assert!(!result);
    assert_eq!(received.property::<u32>("min-delay"), 30);
    assert_eq!(received.property::<u32>("max-delay"), 60);
}
