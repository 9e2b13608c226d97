//! WHEP sessions against real webrtcbin viewers over loopback ICE/DTLS/SRTP, inside a network
//! namespace of their own so that no traffic leaves 127.0.0.1.

mod common;

use common::*;
use gst::prelude::*;
use hybridlive_testkit::{eventually_explained, in_private_netns};
use hybridlive_webrtc::{
    PLAYOUT_DELAY_URI, PlayoutDelayMs, VideoCodec, WhepConfig, WhepError, WhepOutput,
    add_local_address,
};
use std::time::{Duration, Instant};

#[test]
fn viewer_decodes_stamped_frames_and_delete_frees_everything() {
    if !in_private_netns("viewer_decodes_stamped_frames_and_delete_frees_everything") {
        return;
    }
    let (pipeline, output) = sender();
    let viewer = Viewer::with_audio(true);
    let answer = output.offer(&viewer.offer()).expect("an answer");
    assert!(answer.sdp.contains("a=candidate"), "{}", answer.sdp);
    viewer.answer(&answer.sdp);

    let stats = viewer.wait_frames(30, Duration::from_secs(15));
    assert_eq!(stats.get::<String>("stream-id").unwrap(), "whep");
    let p50 = stats.get::<f64>("window-p50-ms").unwrap();
    assert!(
        p50 > 0.0 && p50 < 500.0,
        "capture to decoded over WebRTC: {p50} ms"
    );
    assert_eq!(output.session_count(), 1);
    assert_eq!(webrtcbins(&pipeline), 1);
    // Opus from the shared audio encoder decodes too.
    let audio = viewer
        .audio_buffers
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(audio >= 20, "{audio} audio buffers decoded");

    output.delete(&answer.id).unwrap();
    assert_eq!(output.session_count(), 0);
    assert_eq!(webrtcbins(&pipeline), 0);
    assert_eq!(tee_src_pads(&pipeline, "t"), 0);
    assert_eq!(tee_src_pads(&pipeline, "a"), 0);
    assert!(matches!(
        output.delete(&answer.id),
        Err(WhepError::UnknownSession(_))
    ));
    pipeline.set_state(gst::State::Null).unwrap();
}

#[test]
fn playout_delay_is_answered_with_the_viewers_id_and_sent_on_the_packets() {
    if !in_private_netns("playout_delay_is_answered_with_the_viewers_id_and_sent_on_the_packets") {
        return;
    }
    let delay = PlayoutDelayMs { min: 0, max: 120 };
    let (pipeline, output) = sender_with(WhepConfig {
        loopback_ice: true,
        playout_delay: Some(delay),
        ..Default::default()
    });
    // An id other than the first free one, so an answer that numbers extensions itself fails.
    let id = 9;
    let viewer = Viewer::with_options(false, Some(id));
    let offer = viewer.offer();
    let extmap = format!("a=extmap:{id} {PLAYOUT_DELAY_URI}");
    assert!(
        offer.contains(&extmap),
        "the test viewer offers it: {offer}"
    );
    let answer = output.offer(&offer).expect("an answer");
    assert!(
        answer.sdp.lines().any(|l| l.trim() == extmap),
        "answer without `{extmap}`: {}",
        answer.sdp
    );
    viewer.answer(&answer.sdp);
    viewer.wait_frames(10, Duration::from_secs(15));
    let read = viewer.playout_delay.as_ref().unwrap();
    assert_eq!(
        (
            read.property::<u32>("min-delay"),
            read.property::<u32>("max-delay")
        ),
        (delay.min, delay.max)
    );
    output.close_all();

    // Not configured: not answered, even though offered.
    let (pipeline2, output2) = sender_with(WhepConfig {
        loopback_ice: true,
        playout_delay: None,
        ..Default::default()
    });
    let viewer = Viewer::with_options(false, Some(id));
    let answer = output2.offer(&viewer.offer()).unwrap();
    assert!(!answer.sdp.contains(PLAYOUT_DELAY_URI), "{}", answer.sdp);
    output2.close_all();
    pipeline.set_state(gst::State::Null).unwrap();
    pipeline2.set_state(gst::State::Null).unwrap();
}

#[test]
fn errors_of_a_session_already_torn_down_are_still_its_own() {
    init();
    let pipeline = gst::parse::launch("fakesrc ! tee name=t allow-not-linked=true")
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    let output = WhepOutput::new(
        &pipeline,
        &pipeline.by_name("t").unwrap(),
        None,
        WhepConfig::default(),
    );
    // What is left of a session whose bin was removed before its last error was read: the
    // message's source (sctpenc inside webrtcbin inside the bin) has no way up to the pipeline.
    let bin = gst::Bin::with_name("whep-0123abcd");
    let inner = gst::Bin::with_name("webrtcbin7");
    let sctpenc = gst::ElementFactory::make("identity")
        .name("sctpenc3")
        .build()
        .unwrap();
    inner.add(&sctpenc).unwrap();
    bin.add(&inner).unwrap();
    assert_eq!(
        output.end_session_of(sctpenc.upcast_ref()),
        Some("0123abcd".to_string())
    );
    // Anything else out of the pipeline is not a viewer's.
    let stray = gst::ElementFactory::make("identity").build().unwrap();
    assert_eq!(output.end_session_of(stray.upcast_ref()), None);
}

/// A receive-only webrtcbin that offers VP8 only, decodes what arrives and counts the frames.
fn vp8_viewer() -> (
    gst::Pipeline,
    gst::Element,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    let pipeline = gst::Pipeline::new();
    let webrtcbin = gst::ElementFactory::make("webrtcbin")
        .property_from_str("bundle-policy", "max-bundle")
        .build()
        .unwrap();
    add_local_address(&webrtcbin, "127.0.0.1").unwrap();
    pipeline.add(&webrtcbin).unwrap();
    let caps = gst::Caps::builder("application/x-rtp")
        .field("media", "video")
        .field("encoding-name", "VP8")
        .field("clock-rate", 90000i32)
        .field("payload", 98i32)
        .build();
    webrtcbin.emit_by_name::<gst_webrtc::WebRTCRTPTransceiver>(
        "add-transceiver",
        &[&gst_webrtc::WebRTCRTPTransceiverDirection::Recvonly, &caps],
    );
    let frames = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (pipe, counter) = (pipeline.downgrade(), frames.clone());
    webrtcbin.connect_pad_added(move |_, pad| {
        let Some(pipeline) = pipe.upgrade() else {
            return;
        };
        decode_and_count(
            &pipeline,
            pad,
            "rtpvp8depay ! vp8dec ! fakesink name=s",
            counter.clone(),
        );
    });
    pipeline.set_state(gst::State::Playing).unwrap();
    (pipeline, webrtcbin, frames)
}

#[test]
fn a_viewer_offering_only_vp8_gets_the_outputs_second_codec() {
    if !in_private_netns("a_viewer_offering_only_vp8_gets_the_outputs_second_codec") {
        return;
    }
    init();
    let source = gst::parse::launch(
        "videotestsrc is-live=true pattern=ball ! \
         video/x-raw,format=I420,width=320,height=240,framerate=30/1 ! tee name=raw \
         raw. ! queue ! x264enc tune=zerolatency speed-preset=ultrafast ! \
         video/x-h264,profile=constrained-baseline ! tee name=h264 allow-not-linked=true \
         raw. ! queue ! vp8enc deadline=1 cpu-used=8 lag-in-frames=0 end-usage=cbr ! \
         tee name=vp8 allow-not-linked=true",
    )
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    source.set_state(gst::State::Playing).unwrap();
    let output = WhepOutput::with_codecs(
        &source,
        &[
            (VideoCodec::H264, &source.by_name("h264").unwrap()),
            (VideoCodec::Vp8, &source.by_name("vp8").unwrap()),
        ],
        None,
        WhepConfig {
            loopback_ice: true,
            ..Default::default()
        },
    );
    let (viewer, webrtcbin, frames) = vp8_viewer();
    let offer = {
        let promise = gst::Promise::new();
        webrtcbin.emit_by_name::<()>("create-offer", &[&None::<gst::Structure>, &promise]);
        promise.wait();
        let offer = promise
            .get_reply()
            .unwrap()
            .get::<gst_webrtc::WebRTCSessionDescription>("offer")
            .unwrap();
        let promise = gst::Promise::new();
        webrtcbin.emit_by_name::<()>("set-local-description", &[&offer, &promise]);
        promise.wait();
        // Candidates come from the answer's side; the viewer's own arrive as peer-reflexive.
        offer.sdp().as_text().unwrap()
    };
    assert!(!offer.contains("H264"), "{offer}");
    let answer = output.offer(&offer).expect("an answer");
    assert!(answer.sdp.contains("VP8/90000"), "{}", answer.sdp);
    let sdp = gst_sdp::SDPMessage::parse_buffer(answer.sdp.as_bytes()).unwrap();
    let promise = gst::Promise::new();
    webrtcbin.emit_by_name::<()>(
        "set-remote-description",
        &[
            &gst_webrtc::WebRTCSessionDescription::new(gst_webrtc::WebRTCSDPType::Answer, sdp),
            &promise,
        ],
    );
    promise.wait();
    let deadline = Instant::now() + Duration::from_secs(20);
    while frames.load(std::sync::atomic::Ordering::Relaxed) < 30 {
        assert!(
            Instant::now() < deadline,
            "{} VP8 frames decoded",
            frames.load(std::sync::atomic::Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    output.close_all();
    viewer.set_state(gst::State::Null).unwrap();
    source.set_state(gst::State::Null).unwrap();
}

#[test]
fn several_viewers_share_one_encoder() {
    if !in_private_netns("several_viewers_share_one_encoder") {
        return;
    }
    let (pipeline, output) = sender();
    let viewers: Vec<Viewer> = (0..3).map(|_| Viewer::new()).collect();
    for viewer in &viewers {
        let answer = output.offer(&viewer.offer()).unwrap();
        viewer.answer(&answer.sdp);
    }
    for viewer in &viewers {
        viewer.wait_frames(20, Duration::from_secs(15));
    }
    let encoders = pipeline
        .iterate_recurse()
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.factory().is_some_and(|f| f.name() == "x264enc"))
        .count();
    assert_eq!(encoders, 1);
    assert_eq!(webrtcbins(&pipeline), 3);
    output.close_all();
    assert_eq!(webrtcbins(&pipeline), 0);
    pipeline.set_state(gst::State::Null).unwrap();
}

#[test]
fn vanished_viewer_is_torn_down() {
    if !in_private_netns("vanished_viewer_is_torn_down") {
        return;
    }
    let (pipeline, output) = sender_with(WhepConfig {
        loopback_ice: true,
        viewer_timeout: Duration::from_secs(3),
        ..Default::default()
    });
    let viewer = Viewer::new();
    let answer = output.offer(&viewer.offer()).unwrap();
    viewer.answer(&answer.sdp);
    viewer.wait_frames(10, Duration::from_secs(15));
    // Still there after more than the timeout while the viewer lives and reports.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(output.session_count(), 1, "a live viewer was torn down");
    // The viewer disappears without DELETE.
    drop(viewer);
    // The session leaves the table first and its branch leaves the pipeline after, from a
    // thread of its own: both have to go.
    eventually_explained(
        Duration::from_secs(20),
        || (output.session_count() == 0 && webrtcbins(&pipeline) == 0).then_some(()),
        || {
            format!(
                "session still alive: {:?}, webrtcbins in the pipeline: {}",
                output.sessions(),
                webrtcbins(&pipeline)
            )
        },
    );
    pipeline.set_state(gst::State::Null).unwrap();
}

#[test]
fn unusable_offers_are_refused_without_side_effects() {
    if !in_private_netns("unusable_offers_are_refused_without_side_effects") {
        return;
    }
    let (pipeline, output) = sender();
    assert!(matches!(output.offer("not sdp"), Err(WhepError::Offer(_))));
    let vp8_only = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n";
    assert!(matches!(output.offer(vp8_only), Err(WhepError::Offer(_))));
    assert_eq!(webrtcbins(&pipeline), 0);
    assert_eq!(tee_src_pads(&pipeline, "t"), 0);
    pipeline.set_state(gst::State::Null).unwrap();
}

#[test]
fn http_status_codes_follow_whep() {
    if !in_private_netns("http_status_codes_follow_whep") {
        return;
    }
    use hybridlive_webrtc::HttpRequest;
    let (pipeline, output) = sender();
    let req = |method, path, content_type, body: &[u8]| {
        output.handle_http(
            "/whep",
            HttpRequest {
                method,
                path,
                content_type,
                body,
            },
        )
    };
    let header = |r: &hybridlive_webrtc::HttpResponse, name: &str| {
        r.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let sdp = Some("application/sdp");

    let preflight = req("OPTIONS", "", None, b"");
    assert_eq!(preflight.status, 204);
    assert_eq!(
        header(&preflight, "Access-Control-Allow-Origin").unwrap(),
        "*"
    );
    assert!(
        header(&preflight, "Access-Control-Allow-Methods")
            .unwrap()
            .contains("POST")
    );

    assert_eq!(req("POST", "", Some("text/plain"), b"v=0").status, 415);
    assert_eq!(req("POST", "", sdp, &vec![b'a'; 70_000]).status, 413);
    assert_eq!(req("POST", "", sdp, b"not sdp").status, 400);
    // Transport complete (ICE credentials, fingerprint), codec not served.
    let vp8_only = b"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuv\r\n\
        a=fingerprint:sha-256 AB:CD:EF\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n";
    assert_eq!(req("POST", "", sdp, vp8_only).status, 406);
    assert_eq!(req("GET", "", None, b"").status, 405);
    assert_eq!(req("DELETE", "/nope", None, b"").status, 404);
    assert_eq!(
        webrtcbins(&pipeline),
        0,
        "refused offers left nothing behind"
    );

    let viewer = Viewer::new();
    let created = req(
        "POST",
        "",
        Some("application/sdp; charset=utf-8"),
        viewer.offer().as_bytes(),
    );
    assert_eq!(
        created.status,
        201,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    assert_eq!(header(&created, "Content-Type").unwrap(), "application/sdp");
    let location = header(&created, "Location").unwrap();
    let id = location
        .strip_prefix("/whep/")
        .expect("a resource under /whep");
    assert_eq!(id.len(), 32);
    viewer.answer(std::str::from_utf8(&created.body).unwrap());
    viewer.wait_frames(10, Duration::from_secs(15));

    let resource = format!("/{id}");
    assert_eq!(req("PATCH", &resource, None, b"").status, 405);
    assert_eq!(req("DELETE", &resource, None, b"").status, 200);
    assert_eq!(req("DELETE", &resource, None, b"").status, 404);
    assert_eq!(webrtcbins(&pipeline), 0);
    pipeline.set_state(gst::State::Null).unwrap();
}
