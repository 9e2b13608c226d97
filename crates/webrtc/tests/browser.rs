//! Headless Chromium (Debian's, driven by playwright-core) plays the WHEP output, decodes the
//! stream and reads the capture stamps from the SEI to measure glass-to-glass latency. Runs in a
//! private network namespace: only 127.0.0.1 exists.

mod common;

use common::*;
use gst::prelude::*;
use hybridlive_testkit::in_private_netns;
use hybridlive_webrtc::{Audience, VideoCodec, WhepConfig, WhepOutput};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const PAGE: &str = r#"<!doctype html>
<video id="v" autoplay muted playsinline></video>
<script type="module">
import { playWhep } from '/whep-player.js';
// Plays until `frames` frames are decoded and `measured` of them matched to a latency, or
// 20 s have passed: a loaded machine gets there later, a stalled stream never.
const params = new URLSearchParams(location.search);
const frames = Number(params.get('frames') || 90);
const wanted = Number(params.get('measured') || 0);
const latencies = [];
const ids = new Set();
const player = await playWhep(document.getElementById('v'), '/whep', {
  onLatency: (ms, stamp) => { latencies.push(ms); ids.add(stamp.streamId); },
});
const deadline = performance.now() + 20000;
for (;;) {
  const s = await player.stats();
  const decoded = s ? s.framesDecoded : 0;
  if ((decoded >= frames && latencies.length >= wanted) || performance.now() > deadline) break;
  await new Promise((r) => setTimeout(r, 100));
}
const handRttMs = await player.raiseHand('How thick is the glaze?');
const inbound = await player.stats();
const report = await player.pc.getStats();
const codec = inbound && inbound.codecId && report.get(inbound.codecId) ? report.get(inbound.codecId).mimeType : null;
const audio = await player.stats('audio');
const stampsRead = player.stampsRead();
const offered = player.pc.localDescription.sdp.match(/^a=extmap:(\d+)\S* http:\/\/www\.webrtc\.org\/experiments\/rtp-hdrext\/playout-delay/m);
const answered = player.pc.remoteDescription.sdp.match(/^a=extmap:(\d+)\S* http:\/\/www\.webrtc\.org\/experiments\/rtp-hdrext\/playout-delay/m);
await player.stop();
latencies.sort((a, b) => a - b);
const q = (p) => latencies.length ? latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))] : null;
window.result = {
  framesDecoded: inbound ? inbound.framesDecoded : 0, handRttMs, codec,
  nackCount: inbound ? inbound.nackCount : 0,
  retransmitted: inbound ? (inbound.retransmittedPacketsReceived || 0) : 0,
  packetsLost: inbound ? inbound.packetsLost : 0,
  freezeCount: inbound ? inbound.freezeCount : 0,
  audioPackets: audio ? audio.packetsReceived : 0,
  stampsRead, measured: latencies.length, streamIds: [...ids],
  playoutDelayOffered: offered ? Number(offered[1]) : null,
  playoutDelayAnswered: answered ? Number(answered[1]) : null,
  p50: q(0.5), p95: q(0.95), max: latencies.length ? latencies[latencies.length - 1] : null,
};
</script>
"#;

/// Drops `drop` of the packets each new viewer's webrtcbin puts on the wire: a netsim between
/// its DTLS/SRTP encoder and its ICE sink, where a lossy network would lose them (after the
/// retransmission buffer, which must still hold what was lost).
fn lose_packets_of_new_sessions(pipeline: gst::Pipeline, drop: f32) {
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_millis(2));
            let sessions = pipeline
                .iterate_elements()
                .into_iter()
                .filter_map(Result::ok)
                .filter(|e| e.name().starts_with("whep-"))
                .filter_map(|e| e.downcast::<gst::Bin>().ok());
            for bin in sessions {
                let sinks: Vec<gst::Element> = bin
                    .iterate_recurse()
                    .into_iter()
                    .filter_map(Result::ok)
                    .filter(|e| e.factory().is_some_and(|f| f.name() == "nicesink"))
                    .collect();
                for nicesink in sinks {
                    let Some(parent) = nicesink
                        .parent()
                        .and_then(|p| p.downcast::<gst::Bin>().ok())
                    else {
                        continue;
                    };
                    let name = format!("loss-{}", nicesink.name());
                    if parent.by_name(&name).is_some() {
                        continue;
                    }
                    let sink = nicesink.static_pad("sink").unwrap();
                    let Some(upstream) = sink.peer() else {
                        continue;
                    };
                    let netsim = gst::ElementFactory::make("netsim")
                        .name(name.as_str())
                        .property("drop-probability", drop)
                        .build()
                        .unwrap();
                    parent.add(&netsim).unwrap();
                    netsim.sync_state_with_parent().unwrap();
                    upstream.add_probe(gst::PadProbeType::BLOCK_DOWNSTREAM, move |pad, _| {
                        let _ = pad.unlink(&sink);
                        pad.link(&netsim.static_pad("sink").unwrap()).unwrap();
                        netsim.static_pad("src").unwrap().link(&sink).unwrap();
                        gst::PadProbeReturn::Remove
                    });
                }
            }
        }
    });
}

/// Plays the test page until `frames` frames are decoded and `measured` latencies read (or
/// 20 s), returns its result.
fn run_chromium(port: u16, frames: u32, measured: u32) -> serde_json::Value {
    open_in_chromium(port, &format!("?frames={frames}&measured={measured}"), 40)
}

/// Serves the test page and `output`'s WHEP endpoint; returns the port.
fn serve(output: &WhepOutput) -> u16 {
    serve_page(PAGE, Arc::new(Mutex::new(Some(output.clone()))), None)
}

#[test]
fn chromium_recovers_lost_packets_with_nack_and_rtx() {
    if !in_private_netns("chromium_recovers_lost_packets_with_nack_and_rtx") {
        return;
    }
    let pipeline = encoded_source(640, 360, "lossy");
    let output = WhepOutput::new(
        &pipeline,
        &pipeline.by_name("t").unwrap(),
        None,
        WhepConfig {
            loopback_ice: true,
            ..Default::default()
        },
    );
    pipeline.set_state(gst::State::Playing).unwrap();
    lose_packets_of_new_sessions(pipeline.clone(), 0.05);
    let port = serve(&output);

    let result = run_chromium(port, 120, 1);
    eprintln!("chromium with 5 % loss on the sender: {result}");
    // The browser asked for the lost packets and got them back as retransmissions...
    assert!(result["nackCount"].as_u64().unwrap() > 0, "{result}");
    assert!(result["retransmitted"].as_u64().unwrap() > 0, "{result}");
    // ...so the picture kept moving: 120 frames decoded, most with their stamps read from the
    // received frames. (How many of them are matched to a displayed frame depends on how often
    // a loaded machine lets Chromium composite; the latency test counts those.)
    assert!(result["framesDecoded"].as_u64().unwrap() >= 120, "{result}");
    assert!(result["stampsRead"].as_u64().unwrap() >= 80, "{result}");
    assert!(result["measured"].as_u64().unwrap() > 0, "{result}");
    pipeline.set_state(gst::State::Null).unwrap();
}

#[test]
fn chromium_plays_whep_and_measures_latency_from_sei() {
    if !in_private_netns("chromium_plays_whep_and_measures_latency_from_sei") {
        return;
    }
    let pipeline = encoded_source(640, 360, "browser");
    let output = WhepOutput::new(
        &pipeline,
        &pipeline.by_name("t").unwrap(),
        Some(&pipeline.by_name("a").unwrap()),
        WhepConfig {
            loopback_ice: true,
            ..Default::default()
        },
    );
    pipeline.set_state(gst::State::Playing).unwrap();
    let port = serve(&output);

    let result = run_chromium(port, 90, 30);
    eprintln!("chromium: {result}");

    // 90 frames decoded, most with their stamps read and 30 matched to displayed frames.
    assert!(result["framesDecoded"].as_u64().unwrap() >= 90, "{result}");
    assert!(result["stampsRead"].as_u64().unwrap() >= 60, "{result}");
    assert!(result["measured"].as_u64().unwrap() >= 30, "{result}");
    assert_eq!(result["streamIds"], serde_json::json!(["browser"]));
    // Opus from the shared audio encoder arrives (headless Chromium has no audio device to
    // play it out, so decoded samples are not counted): 20 ms packets for the 3 s or more the
    // page played.
    assert!(result["audioPackets"].as_u64().unwrap() >= 100, "{result}");
    let p50 = result["p50"].as_f64().unwrap();
    // A bound that catches a stamp read against the wrong clock, not a figure: the benchmark
    // (`cargo bench -p hybridlive-latency-test --bench chromium`) measures that.
    assert!(p50 > 0.0 && p50 < 1000.0, "glass-to-glass p50 {p50} ms");
    // Chromium offers the playout-delay extension; the answer takes it with Chromium's id, and
    // Chromium accepted that answer (its remote description) and decoded the frames above.
    assert!(result["playoutDelayOffered"].is_u64(), "{result}");
    assert_eq!(
        result["playoutDelayAnswered"], result["playoutDelayOffered"],
        "{result}"
    );

    // The question reached the host, and its echo came back over the data channel.
    let hands = output.raised_hands(Audience::Host);
    assert_eq!(hands.len(), 1, "{hands:?}");
    assert_eq!(hands[0].text.as_deref(), Some("How thick is the glaze?"));
    let rtt = result["handRttMs"].as_f64().unwrap();
    assert!(
        rtt > 0.0 && rtt < 1000.0,
        "data channel round trip {rtt} ms"
    );

    // The page's DELETE ended the session.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(output.session_count(), 0);
    pipeline.set_state(gst::State::Null).unwrap();
}

#[test]
fn chromium_decodes_vp8_when_the_output_prefers_it() {
    if !in_private_netns("chromium_decodes_vp8_when_the_output_prefers_it") {
        return;
    }
    let vp8 = encoded_vp8_source(640, 360);
    let output = WhepOutput::with_codecs(
        &vp8,
        &[(VideoCodec::Vp8, &vp8.by_name("t").unwrap())],
        None,
        WhepConfig {
            loopback_ice: true,
            ..Default::default()
        },
    );
    vp8.set_state(gst::State::Playing).unwrap();
    let port = serve(&output);

    let result = run_chromium(port, 60, 0);
    eprintln!("chromium, VP8: {result}");
    assert_eq!(result["codec"], "video/VP8", "{result}");
    // 60 frames decoded; no SEI in VP8, so no stamps and no latency figure.
    assert!(result["framesDecoded"].as_u64().unwrap() >= 60, "{result}");
    assert_eq!(result["stampsRead"].as_u64(), Some(0), "{result}");
    // The rest of the session works as with H.264: data channel, DELETE.
    assert_eq!(output.raised_hands(Audience::Host).len(), 1);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(output.session_count(), 0);
    vp8.set_state(gst::State::Null).unwrap();
}
