//! `abrcontroller` following a real webrtcbin: two webrtcbins negotiate in-process over
//! loopback ICE (in a private network namespace: nothing leaves 127.0.0.1), the receiver's
//! RTCP reports reach the sender's statistics.

use std::time::Duration;

use gst::prelude::*;

mod common;
use common::{StopOnDrop, init, rtt_and_loss_inputs};

/// Offer from `send`, answer from `recv`, candidates both ways.
fn connect(send: &gst::Element, recv: &gst::Element) {
    for (from, to) in [(send, recv), (recv, send)] {
        let to = to.clone();
        from.connect("on-ice-candidate", false, move |values| {
            let mline = values[1].get::<u32>().unwrap();
            let candidate = values[2].get::<String>().unwrap();
            to.emit_by_name::<()>("add-ice-candidate", &[&mline, &candidate]);
            None
        });
    }
    let recv = recv.clone();
    send.connect("on-negotiation-needed", false, move |values| {
        let send = values[0].get::<gst::Element>().unwrap();
        let recv = recv.clone();
        let send2 = send.clone();
        let promise = gst::Promise::with_change_func(move |reply| {
            let offer = reply
                .unwrap()
                .unwrap()
                .get::<gst_webrtc::WebRTCSessionDescription>("offer")
                .unwrap();
            send2.emit_by_name::<()>("set-local-description", &[&offer, &None::<gst::Promise>]);
            recv.emit_by_name::<()>("set-remote-description", &[&offer, &None::<gst::Promise>]);
            let recv2 = recv.clone();
            let send3 = send2.clone();
            let promise = gst::Promise::with_change_func(move |reply| {
                let answer = reply
                    .unwrap()
                    .unwrap()
                    .get::<gst_webrtc::WebRTCSessionDescription>("answer")
                    .unwrap();
                recv2
                    .emit_by_name::<()>("set-local-description", &[&answer, &None::<gst::Promise>]);
                send3.emit_by_name::<()>(
                    "set-remote-description",
                    &[&answer, &None::<gst::Promise>],
                );
            });
            recv.emit_by_name::<()>("create-answer", &[&None::<gst::Structure>, &promise]);
        });
        send.emit_by_name::<()>("create-offer", &[&None::<gst::Structure>, &promise]);
        None
    });
}

#[test]
fn webrtcbin_receiver_reports_reach_the_controller() {
    if !hybridlive_testkit::in_private_netns("webrtcbin_receiver_reports_reach_the_controller") {
        return;
    }
    init();
    let pipeline = gst::parse::launch(
        "videotestsrc is-live=true pattern=zone-plate kx2=20 ky2=20 kt=1 \
         ! video/x-raw,width=320,height=180,framerate=30/1 \
         ! x264enc tune=zerolatency speed-preset=ultrafast bitrate=600 \
         ! abrcontroller name=abr webrtcbin-name=send \
         ! rtph264pay config-interval=-1 ! application/x-rtp,media=video,encoding-name=H264,payload=96 \
         ! webrtcbin name=send bundle-policy=max-bundle \
         webrtcbin name=recv bundle-policy=max-bundle",
    )
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let _stop = StopOnDrop(pipeline.clone());
    let send = pipeline.by_name("send").unwrap();
    let recv = pipeline.by_name("recv").unwrap();
    for webrtcbin in [&send, &recv] {
        hybridlive_webrtc::add_local_address(webrtcbin, "127.0.0.1").unwrap();
    }
    let bin = pipeline.clone();
    recv.connect_pad_added(move |_, pad| {
        let sink = gst::ElementFactory::make("fakesink")
            .property("sync", false)
            .build()
            .unwrap();
        bin.add(&sink).unwrap();
        sink.sync_state_with_parent().unwrap();
        pad.link(&sink.static_pad("sink").unwrap()).unwrap();
    });
    connect(&send, &recv);
    pipeline.set_state(gst::State::Playing).unwrap();

    let abr = pipeline.by_name("abr").unwrap();
    // Waiting, not measuring: ICE, DTLS and the first receiver reports take seconds under load.
    let inputs = rtt_and_loss_inputs(
        &abr,
        Duration::from_secs(45),
        "webrtcbin receiver reports reach the controller",
    );
    let loss = inputs.get::<f64>("loss").unwrap();
    assert!((0.0..=0.02).contains(&loss), "{loss} on loopback");
    assert!(inputs.get::<gst::ClockTime>("rtt").unwrap() < gst::ClockTime::from_mseconds(500));
}
