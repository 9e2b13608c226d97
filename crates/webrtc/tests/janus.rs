//! The shared encode published into a Janus VideoRoom (Debian's `janus`, started by the test
//! with testkit's config folder, on the veth test hosts of a private namespace) and received
//! through Janus by a webrtcbin subscriber (the frames decode and still carry their capture
//! stamps) and by headless Chromium (the frames decode as H.264).

mod common;

use common::*;
use gst::prelude::*;
use hybridlive_testkit::{Janus, in_private_netns_with_veth};
use hybridlive_webrtc::{Egress, EgressPublisher, add_egress};
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
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
    let (sender, publisher) = publish(&janus, "janus");

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

/// Publishes the shared encode (stamped with `stream_id`) into the room as feed [`FEED`] and
/// waits until Janus lists it as a publisher.
fn publish(janus: &Janus, stream_id: &str) -> (gst::Pipeline, EgressPublisher) {
    let sender = encoded_source(640, 360, stream_id);
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
    (sender, publisher)
}

#[test]
fn chromium_subscribes_through_janus_and_decodes_h264() {
    if !in_private_netns_with_veth("chromium_subscribes_through_janus_and_decodes_h264") {
        return;
    }
    let janus = Janus::start();
    janus.create_room(ROOM, 4_000_000);
    let (sender, publisher) = publish(&janus, "chromium");

    // The test signals over Janus's HTTP API; Chromium only answers the offer and decodes.
    let (subscriber, offer) = janus.join_subscriber(ROOM, FEED);
    let driver = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/browser/answer.mjs");
    let mut browser = Command::new("node")
        .arg(&driver)
        .args(["30", "20"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs (scripts/setup installs it with the browser test packages)");
    let mut stdin = browser.stdin.take().unwrap();
    writeln!(stdin, "{offer}").unwrap();
    drop(stdin);
    let (tx, lines) = mpsc::channel();
    let stdout = BufReader::new(browser.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut stderr = browser.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });

    // Generous waits (the machine is shared); the driver gives up after 20 s of stats itself.
    let next = |what: &str| -> Option<serde_json::Value> {
        let line = lines.recv_timeout(Duration::from_secs(60)).ok()?;
        Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{what}: {e}: {line}")))
    };
    let Some(answer) = next("the answer") else {
        let _ = browser.kill();
        panic!("no answer from Chromium:\n{}", stderr.join().unwrap())
    };
    assert_eq!(answer["type"], "answer", "{answer}");
    janus.start_subscriber(subscriber, ROOM, answer["sdp"].as_str().unwrap());

    let mut last = serde_json::Value::Null;
    while let Some(stats) = next("the stats") {
        last = stats;
    }
    let _ = browser.kill();
    let status = browser.wait().unwrap();
    let log = stderr.join().unwrap();
    eprintln!("chromium through Janus: {last}");
    assert!(
        status.success(),
        "Chromium decoded too little through Janus: {last}\n{log}\n{}",
        janus.log()
    );
    assert!(last["framesDecoded"].as_u64().unwrap() >= 30, "{last}");
    assert_eq!(last["codec"], "video/H264", "{last}");
    // The published picture, not some other stream.
    assert_eq!(
        (last["frameWidth"].as_u64(), last["frameHeight"].as_u64()),
        (Some(640), Some(360)),
        "{last}"
    );
    assert!(publisher.health.connected());
    sender.set_state(gst::State::Null).unwrap();
}
