//! Odd but valid offers: a rejected (port 0) video section before the live one, send-only or
//! inactive video. Real webrtcbin viewers over loopback, in a network namespace of their own.

mod common;

use common::*;
use gst::prelude::*;
use hybridlive_testkit::in_private_netns;
use hybridlive_webrtc::{OfferError, WhepError};
use std::sync::{Arc, Mutex};

/// A page offering two video sections, the first one rejected (`?first=rejected`: port 0, out
/// of the BUNDLE group, as a browser sends a transceiver it stopped) or send-only
/// (`?first=sendonly`): the second one, which receives, must get the stream.
const REJECTED_FIRST_PAGE: &str = r#"<!doctype html>
<video id="v" autoplay muted playsinline></video>
<script type="module">
const rejected = new URLSearchParams(location.search).get('first') === 'rejected';
const pc = new RTCPeerConnection();
const first = pc.addTransceiver('video', { direction: rejected ? 'recvonly' : 'sendonly' });
const second = pc.addTransceiver('video', { direction: 'recvonly' });
const video = document.getElementById('v');
pc.ontrack = (event) => {
  if (event.transceiver === second) video.srcObject = new MediaStream([event.track]);
};
await pc.setLocalDescription(await pc.createOffer());
await new Promise((resolve) => {
  if (pc.iceGatheringState === 'complete') resolve();
  pc.onicegatheringstatechange = () => { if (pc.iceGatheringState === 'complete') resolve(); };
  setTimeout(resolve, 2000);
});
const sections = pc.localDescription.sdp.split(/\r\n(?=m=)/);
const mid = sections[1].match(/a=mid:(\S+)/)[1];
if (rejected) {
  sections[1] = sections[1].replace(/^m=video \d+ /, 'm=video 0 ');
  sections[0] = sections[0].replace(/^a=group:BUNDLE .*$/m,
    (line) => line.split(' ').filter((m) => m !== mid).join(' '));
}
const response = await fetch('/whep', {
  method: 'POST', headers: { 'Content-Type': 'application/sdp' }, body: sections.join('\r\n'),
});
const answer = await response.text();
let error = null;
if (response.status === 201) {
  try { await pc.setRemoteDescription({ type: 'answer', sdp: answer }); } catch (e) { error = String(e); }
}
let decoded = 0;
const deadline = performance.now() + 20000;
while (response.status === 201 && !error && decoded < 30 && performance.now() < deadline) {
  for (const s of (await second.receiver.getStats()).values()) {
    if (s.type === 'inbound-rtp') decoded = s.framesDecoded;
  }
  await new Promise((r) => setTimeout(r, 100));
}
pc.close();
window.result = { status: response.status, error, decoded, answer };
</script>
"#;

#[test]
fn a_rejected_first_video_section_is_skipped_and_the_live_one_plays() {
    if !in_private_netns("a_rejected_first_video_section_is_skipped_and_the_live_one_plays") {
        return;
    }
    let (pipeline, output) = sender();
    let port = serve_page(
        REJECTED_FIRST_PAGE,
        Arc::new(Mutex::new(Some(output.clone()))),
        None,
    );
    let result = open_in_chromium(port, "?first=rejected", 60);
    eprintln!("chromium, first video section rejected: {result}");
    assert_eq!(result["status"], 201, "{result}");
    assert_eq!(result["error"], serde_json::Value::Null, "{result}");
    // The answer rejects what the offer rejected, and bundles only the live section.
    let answer = result["answer"].as_str().unwrap();
    let sections: Vec<&str> = answer.split("m=").skip(1).collect();
    assert_eq!(sections.len(), 2, "{answer}");
    assert!(sections[0].starts_with("video 0 "), "{answer}");
    assert!(sections[1].contains("a=sendonly"), "{answer}");
    assert!(
        result["decoded"].as_u64().unwrap() >= 30,
        "the live section got no stream: {result}"
    );
    output.close_all();
    pipeline.set_state(gst::State::Null).unwrap();
}

#[test]
fn offers_with_no_video_to_receive_are_refused_with_400() {
    if !in_private_netns("offers_with_no_video_to_receive_are_refused_with_400") {
        return;
    }
    let (pipeline, output) = sender();
    let viewer = Viewer::new();
    let offer = viewer.offer();
    assert!(offer.contains("a=recvonly"), "{offer}");
    let refused = [
        offer.replace("a=recvonly", "a=sendonly"),
        offer.replace("a=recvonly", "a=inactive"),
        offer.replacen("m=video 9 ", "m=video 0 ", 1),
    ];
    for offer in &refused {
        assert!(
            matches!(
                output.offer(offer),
                Err(WhepError::Offer(OfferError::NoVideo))
            ),
            "{offer}"
        );
        let reply = output.handle_http(
            "/whep",
            hybridlive_webrtc::HttpRequest {
                method: "POST",
                path: "",
                content_type: Some("application/sdp"),
                body: offer.as_bytes(),
            },
        );
        assert_eq!(
            reply.status,
            400,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
    }
    assert_eq!(output.branches().webrtcbins, 0);
    // The same offer receiving on its video section is answered.
    output.offer(&offer).expect("an answer");
    output.close_all();
    pipeline.set_state(gst::State::Null).unwrap();
}

#[test]
fn a_send_only_first_video_section_is_skipped_and_the_next_one_plays() {
    if !in_private_netns("a_send_only_first_video_section_is_skipped_and_the_next_one_plays") {
        return;
    }
    let (pipeline, output) = sender();
    let port = serve_page(
        REJECTED_FIRST_PAGE,
        Arc::new(Mutex::new(Some(output.clone()))),
        None,
    );
    let result = open_in_chromium(port, "?first=sendonly", 60);
    eprintln!("chromium, first video section send-only: {result}");
    assert_eq!(result["status"], 201, "{result}");
    assert_eq!(result["error"], serde_json::Value::Null, "{result}");
    let answer = result["answer"].as_str().unwrap();
    let sections: Vec<&str> = answer.split("m=").skip(1).collect();
    assert_eq!(sections.len(), 2, "{answer}");
    assert!(sections[0].contains("a=inactive"), "{answer}");
    assert!(sections[1].contains("a=sendonly"), "{answer}");
    assert!(
        result["decoded"].as_u64().unwrap() >= 30,
        "the receiving section got no stream: {result}"
    );
    output.close_all();
    pipeline.set_state(gst::State::Null).unwrap();
}
