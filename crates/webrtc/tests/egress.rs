//! The shared encode published to a WHIP server (gst-plugins-rs's `whipserversrc`) over loopback
//! ICE, in a private network namespace: the frames arrive and decode.

mod common;

use common::*;
use gst::prelude::*;
use hybridlive_testkit::in_private_netns;
use hybridlive_webrtc::{Egress, add_egress, add_local_address, register_webrtc_elements};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[test]
fn whip_egress_reaches_a_whip_server() {
    if !in_private_netns("whip_egress_reaches_a_whip_server") {
        return;
    }
    let sender = encoded_source(320, 240, "whip");
    register_webrtc_elements().unwrap();
    let port = free_tcp_port();

    // The WHIP server: decodes what is published to it and counts the frames.
    let receiver = gst::Pipeline::new();
    let server = gst::ElementFactory::make("whipserversrc").build().unwrap();
    server.set_property("stun-server", None::<String>);
    let signaller = server.property::<gst::glib::Object>("signaller");
    signaller.set_property("host-addr", format!("http://127.0.0.1:{port}"));
    signaller.connect("webrtcbin-ready", false, |values| {
        let webrtcbin = values[2].get::<gst::Element>().unwrap();
        add_local_address(&webrtcbin, "127.0.0.1").unwrap();
        None
    });
    receiver.add(&server).unwrap();
    let frames = Arc::new(AtomicU64::new(0));
    let (pipeline, counter) = (receiver.downgrade(), frames.clone());
    server.connect_pad_added(move |_, pad| {
        let Some(pipeline) = pipeline.upgrade() else {
            return;
        };
        let sink = gst::ElementFactory::make("fakesink").build().unwrap();
        pipeline.add(&sink).unwrap();
        sink.sync_state_with_parent().unwrap();
        if pad.name().starts_with("video") {
            let counter = counter.clone();
            sink.static_pad("sink")
                .unwrap()
                .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                    counter.fetch_add(1, Ordering::Relaxed);
                    gst::PadProbeReturn::Ok
                });
        }
        pad.link(&sink.static_pad("sink").unwrap()).unwrap();
    });
    receiver.set_state(gst::State::Playing).unwrap();

    sender.set_state(gst::State::Playing).unwrap();
    add_egress(
        &sender,
        &sender.by_name("t").unwrap(),
        Some(&sender.by_name("a").unwrap()),
        &Egress::Whip {
            endpoint: format!("http://127.0.0.1:{port}/whip/endpoint"),
            token: None,
        },
        true,
    )
    .unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    while frames.load(Ordering::Relaxed) < 30 {
        if let Some(msg) = sender
            .bus()
            .unwrap()
            .pop_filtered(&[gst::MessageType::Error])
        {
            panic!("sender: {msg:?}");
        }
        if let Some(msg) = receiver
            .bus()
            .unwrap()
            .pop_filtered(&[gst::MessageType::Error])
        {
            panic!("receiver: {msg:?}");
        }
        assert!(
            Instant::now() < deadline,
            "{} frames after 30 s",
            frames.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Still one video and one audio encoder: the egress reused the shared encode.
    let mut encoders = sender
        .iterate_recurse()
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|e| e.factory())
        .filter(|f| {
            f.metadata(gst::ELEMENT_METADATA_KLASS)
                .is_some_and(|k| k.contains("Encoder"))
        })
        .map(|f| f.name().to_string())
        .collect::<Vec<_>>();
    encoders.sort();
    assert_eq!(encoders, ["opusenc", "x264enc"]);
    sender.set_state(gst::State::Null).unwrap();
    receiver.set_state(gst::State::Null).unwrap();
}
