//! The shared encode published to a WHIP server (gst-plugins-rs's `whipserversrc`) over loopback
//! ICE, in a private network namespace: the frames arrive and decode.

mod common;

use common::*;
use gst::prelude::*;
use hybridlive_testkit::{WhipServer, in_private_netns};
use hybridlive_webrtc::{Egress, add_egress};
use std::time::{Duration, Instant};

#[test]
fn whip_egress_reaches_a_whip_server() {
    if !in_private_netns("whip_egress_reaches_a_whip_server") {
        return;
    }
    let sender = encoded_source(320, 240, "whip");
    // The WHIP server: decodes what is published to it and counts the frames.
    let server = WhipServer::start(free_tcp_port());

    sender.set_state(gst::State::Playing).unwrap();
    let publisher = add_egress(
        &sender,
        &sender.by_name("t").unwrap(),
        Some(&sender.by_name("a").unwrap()),
        &Egress::Whip {
            endpoint: server.endpoint(),
            token: None,
        },
        true,
    )
    .unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    while server.frames() < 30 {
        if let Some(msg) = sender
            .bus()
            .unwrap()
            .pop_filtered(&[gst::MessageType::Error])
        {
            panic!("sender: {msg:?}");
        }
        assert!(
            Instant::now() < deadline,
            "{} frames after 30 s",
            server.frames()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(publisher.health.connected());
    assert_eq!(publisher.health.lost(Duration::from_secs(12)), None);
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
}
