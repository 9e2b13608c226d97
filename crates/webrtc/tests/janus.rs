//! The shared encode published into a Janus VideoRoom (Debian's `janus`, started by the test
//! with testkit's config folder, loopback only) and received by a subscriber through Janus:
//! the frames decode and still carry their capture stamps.

mod common;

use common::*;
use gst::prelude::*;
use hybridlive_testkit::{Janus, in_private_netns_with_veth};
use hybridlive_webrtc::{Egress, add_egress};
use std::time::{Duration, Instant};

const ROOM: u64 = 1234;
const FEED: u64 = 42;

#[test]
fn janus_videoroom_forwards_the_published_stream_with_its_stamps() {
    if !in_private_netns_with_veth("janus_videoroom_forwards_the_published_stream_with_its_stamps")
    {
        return;
    }
    let janus = Janus::start();
    janus.create_room(ROOM, 4_000_000);

    // Publish the shared encode into the room.
    let sender = encoded_source(640, 360, "janus");
    sender.set_state(gst::State::Playing).unwrap();
    let publisher = add_egress(
        &sender,
        &sender.by_name("t").unwrap(),
        Some(&sender.by_name("a").unwrap()),
        &Egress::Janus {
            endpoint: janus.ws_endpoint(),
            room_id: ROOM,
            feed_id: Some(FEED),
            display_name: "hybridlive".into(),
        },
        // Janus gathers no loopback candidates: both sides use the veth test hosts.
        false,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !janus.is_publishing(ROOM, FEED) {
        if let Some(msg) = sender
            .bus()
            .unwrap()
            .pop_filtered(&[gst::MessageType::Error])
        {
            panic!("publisher: {msg:?}\n{}", janus.log());
        }
        assert!(
            Instant::now() < deadline,
            "never published:\n{}",
            janus.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Subscribe through Janus with a webrtcbin that decodes and reads the stamps.
    let subscriber = janus.subscribe(
        ROOM,
        FEED,
        "rtph264depay ! h264parse ! avdec_h264 ! latencymeter name=meter",
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let stats = loop {
        // The meter exists once Janus's video pad came.
        if let Some(stats) = subscriber
            .pipeline
            .by_name("meter")
            .map(|m| m.property::<gst::Structure>("stats"))
            .filter(|s| s.get::<u64>("count").unwrap() >= 30)
        {
            break stats;
        }
        assert!(
            Instant::now() < deadline,
            "through Janus: {} frames\n{}",
            subscriber.frames(),
            janus.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(publisher.health.connected());
    // The SFU forwards RTP untouched: the capture stamps come through with the frames.
    assert_eq!(stats.get::<String>("stream-id").unwrap(), "janus");
    let p50 = stats.get::<f64>("window-p50-ms").unwrap();
    assert!(
        p50 > 0.0 && p50 < 1000.0,
        "capture to decoded through Janus: {p50} ms"
    );
    drop(subscriber);
    sender.set_state(gst::State::Null).unwrap();
}
