//! What one viewer (or a crowd of offers) may cost the others: the viewer limit under concurrent
//! offers, offers that never connect, offers still negotiating when the output shuts down.
//! Real webrtcbin viewers over loopback, in a network namespace of their own.

mod common;

use common::*;
use gst::prelude::*;
use hybridlive_testkit::{eventually_explained, in_private_netns};
use hybridlive_webrtc::{Audience, HttpRequest, WhepConfig, WhepError};
use std::time::Duration;

#[test]
fn concurrent_offers_never_exceed_max_sessions_and_unconnected_ones_give_their_slot_back() {
    if !in_private_netns(
        "concurrent_offers_never_exceed_max_sessions_and_unconnected_ones_give_their_slot_back",
    ) {
        return;
    }
    let (pipeline, output) = sender_with(WhepConfig {
        loopback_ice: true,
        max_sessions: 3,
        connect_timeout: Duration::from_secs(3),
        // Long enough that only the connect timeout can free the slots below.
        viewer_timeout: Duration::from_secs(600),
        ..Default::default()
    });
    // Offers made up front, so that the ten POSTs race each other and not the offer making.
    let viewers: Vec<Viewer> = (0..10).map(|_| Viewer::new()).collect();
    let offers: Vec<String> = viewers.iter().map(Viewer::offer).collect();
    // Through the HTTP side, as a crowd of browsers would POST them.
    let results: Vec<(u16, String)> = std::thread::scope(|scope| {
        let threads: Vec<_> = offers
            .iter()
            .map(|offer| {
                scope.spawn(|| {
                    let reply = output.handle_http(
                        "/whep",
                        HttpRequest {
                            method: "POST",
                            path: "",
                            content_type: Some("application/sdp"),
                            body: offer.as_bytes(),
                        },
                    );
                    (
                        reply.status,
                        String::from_utf8_lossy(&reply.body).into_owned(),
                    )
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("an offer thread"))
            .collect()
    });
    let created = results.iter().filter(|(status, _)| *status == 201).count();
    let refused = results.iter().filter(|(status, _)| *status == 503).count();
    assert_eq!(
        (created, refused),
        (3, 7),
        "max_sessions = 3, ten concurrent offers: {:?}",
        results.iter().map(|(s, _)| s).collect::<Vec<_>>()
    );
    let branches = output.branches();
    assert_eq!(
        (branches.webrtcbins, branches.tee_pads),
        (3, 3),
        "what the pipeline holds"
    );

    // None of the three answers is ever applied: their ICE never connects, and their slots
    // come back after the connect timeout, not the viewer timeout.
    eventually_explained(
        Duration::from_secs(60),
        || (output.session_count() == 0 && output.branches().webrtcbins == 0).then_some(()),
        || {
            format!(
                "unconnected sessions still held: {:?}, {:?}",
                output.sessions(),
                output.branches()
            )
        },
    );
    // A real viewer joins in a freed slot and stays past the connect timeout once connected.
    let viewer = Viewer::new();
    let answer = output.offer(&viewer.offer()).expect("a free slot");
    viewer.answer(&answer.sdp);
    let decoded = viewer.wait_frames(10, Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        output.session_count(),
        1,
        "a connected viewer was torn down ({decoded})"
    );
    // And it still receives.
    viewer.wait_frames(
        decoded.get::<u64>("count").unwrap() + 30,
        Duration::from_secs(20),
    );
    output.close_all();
    drop(viewers);
    pipeline.set_state(gst::State::Null).unwrap();
}

#[test]
fn offers_after_close_all_are_refused_and_leave_nothing() {
    if !in_private_netns("offers_after_close_all_are_refused_and_leave_nothing") {
        return;
    }
    let (pipeline, output) = sender();
    let viewer = Viewer::new();
    let offer = viewer.offer();
    // Several offers negotiate while the output shuts down: each is either refused or its
    // branch goes with the output; none outlives it.
    let results: Vec<Result<String, WhepError>> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| output.offer(&offer).map(|a| a.id)))
            .collect();
        std::thread::sleep(Duration::from_millis(50));
        output.close_all();
        threads
            .into_iter()
            .map(|t| t.join().expect("an offer thread"))
            .collect()
    });
    for result in &results {
        assert!(
            matches!(result, Ok(_) | Err(WhepError::Closed)),
            "{results:?}"
        );
    }
    assert_eq!(output.session_count(), 0, "{results:?}");
    assert_eq!(output.branches().webrtcbins, 0, "{results:?}");
    assert_eq!(tee_src_pads(&pipeline, "t"), 0, "{results:?}");
    assert!(matches!(output.offer(&offer), Err(WhepError::Closed)));
    pipeline.set_state(gst::State::Null).unwrap();
}

/// A stranger reading the published raised hands can neither end the viewer's session nor read
/// its question; the host reads it.
#[test]
fn raised_hands_show_an_opaque_viewer_and_questions_only_to_the_host() {
    if !in_private_netns("raised_hands_show_an_opaque_viewer_and_questions_only_to_the_host") {
        return;
    }
    let (pipeline, output) = sender();
    let viewer = Viewer::new();
    // As the page does: the viewer opens the data channel before its offer.
    let channel = viewer
        .webrtcbin
        .emit_by_name::<Option<gst_webrtc::WebRTCDataChannel>>(
            "create-data-channel",
            &[&"interaction", &None::<gst::Structure>],
        )
        .expect("a data channel");
    let answer = output.offer(&viewer.offer()).expect("an answer");
    viewer.answer(&answer.sdp);
    viewer.wait_frames(10, Duration::from_secs(20));
    eventually_explained(
        Duration::from_secs(20),
        || {
            (channel.property::<gst_webrtc::WebRTCDataChannelState>("ready-state")
                == gst_webrtc::WebRTCDataChannelState::Open)
                .then_some(())
        },
        || {
            format!(
                "data channel {:?}",
                channel.property::<gst_webrtc::WebRTCDataChannelState>("ready-state")
            )
        },
    );
    channel.emit_by_name::<()>(
        "send-string",
        &[&Some(r#"{"type":"hand","text":"Where do I sign up?"}"#)],
    );
    let public = eventually_explained(
        Duration::from_secs(20),
        || Some(output.raised_hands(Audience::Public)).filter(|h| !h.is_empty()),
        || "no raised hand".to_string(),
    );
    assert_eq!(public.len(), 1, "{public:?}");
    assert_eq!(public[0].text, None, "the question is public: {public:?}");
    assert_ne!(public[0].viewer, answer.id);
    // What anyone can read does not end the session (only its resource id does).
    assert!(matches!(
        output.delete(&public[0].viewer),
        Err(WhepError::UnknownSession(_))
    ));
    assert_eq!(output.session_count(), 1);
    // The echo reached the viewer: nothing waits on the session's data channel.
    eventually_explained(
        Duration::from_secs(20),
        || (output.sessions()[0].data_channel_backlog == 0).then_some(()),
        || format!("echo still queued: {:?}", output.sessions()),
    );
    let host = output.raised_hands(Audience::Host);
    assert_eq!(host[0].text.as_deref(), Some("Where do I sign up?"));
    assert_eq!(host[0].viewer, public[0].viewer);
    output.delete(&answer.id).unwrap();
    pipeline.set_state(gst::State::Null).unwrap();
}
