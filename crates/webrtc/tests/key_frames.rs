//! Key-frame requests from viewers reach the shared encoder coalesced: a viewer asking for a key
//! frame every 30 ms (a PLI storm) cannot make every frame a key frame for everyone else, and
//! a request that is held back is still served.

mod common;

use common::*;
use gst::prelude::*;
use hybridlive_testkit::eventually_explained;
use hybridlive_webrtc::{WhepConfig, WhepOutput};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One x264 encode on a tee `t` that never makes a key frame by itself (after the first), with
/// a WHEP output on it and a branch counting frames and key frames, as the HLS output or the
/// recording sees them.
fn encode_with_counter(
    interval: Duration,
) -> (gst::Pipeline, WhepOutput, Arc<AtomicU64>, Arc<AtomicU64>) {
    init();
    let pipeline = gst::parse::launch(
        "videotestsrc is-live=true pattern=ball ! \
         video/x-raw,format=I420,width=320,height=240,framerate=30/1 ! \
         x264enc tune=zerolatency speed-preset=ultrafast key-int-max=100000 \
         option-string=scenecut=0 ! video/x-h264,profile=constrained-baseline ! \
         tee name=t allow-not-linked=true t. ! queue ! fakesink name=recording async=false",
    )
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let (frames, key_frames) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (f, k) = (frames.clone(), key_frames.clone());
    pipeline
        .by_name("recording")
        .unwrap()
        .static_pad("sink")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(buffer) = info.buffer() {
                f.fetch_add(1, Ordering::SeqCst);
                if !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT) {
                    k.fetch_add(1, Ordering::SeqCst);
                }
            }
            gst::PadProbeReturn::Ok
        });
    let output = WhepOutput::new(
        &pipeline,
        &pipeline.by_name("t").unwrap(),
        None,
        WhepConfig {
            min_key_frame_interval: interval,
            ..Default::default()
        },
    );
    pipeline.set_state(gst::State::Playing).unwrap();
    (pipeline, output, frames, key_frames)
}

/// What a viewer's branch does on every PLI it receives: a key-frame request upstream from its
/// own tee pad.
fn viewer_branch(pipeline: &gst::Pipeline) -> gst::Pad {
    let sink = gst::ElementFactory::make("fakesink")
        .property("async", false)
        .build()
        .unwrap();
    pipeline.add(&sink).unwrap();
    sink.sync_state_with_parent().unwrap();
    let tee_pad = pipeline
        .by_name("t")
        .unwrap()
        .request_pad_simple("src_%u")
        .unwrap();
    let sink_pad = sink.static_pad("sink").unwrap();
    tee_pad.link(&sink_pad).unwrap();
    sink_pad
}

fn pli(viewer: &gst::Pad) {
    viewer.push_event(
        gst_video::UpstreamForceKeyUnitEvent::builder()
            .all_headers(true)
            .build(),
    );
}

#[test]
fn a_pli_storm_from_one_viewer_does_not_make_every_frame_a_key_frame() {
    let interval = Duration::from_secs(1);
    let (pipeline, _output, frames, key_frames) = encode_with_counter(interval);
    let viewer = viewer_branch(&pipeline);
    eventually_explained(
        Duration::from_secs(20),
        || (frames.load(Ordering::SeqCst) > 0).then_some(()),
        || "no frame encoded".into(),
    );
    let (frames_before, keys_before) = (
        frames.load(Ordering::SeqCst),
        key_frames.load(Ordering::SeqCst),
    );
    let started = Instant::now();
    // A PLI every 30 ms while 90 frames (3 s) go by.
    while frames.load(Ordering::SeqCst) < frames_before + 90 {
        pli(&viewer);
        std::thread::sleep(Duration::from_millis(30));
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the encoder stalled"
        );
    }
    let elapsed = started.elapsed();
    let counted = frames.load(Ordering::SeqCst) - frames_before;
    let keys = key_frames.load(Ordering::SeqCst) - keys_before;
    eprintln!("{keys} key frames in {counted} frames over {elapsed:?} of PLIs every 30 ms");
    // At most one per interval of the storm, plus the one held back at its start and end.
    let bound = (elapsed.as_secs_f64() / interval.as_secs_f64()).floor() as u64 + 2;
    assert!(
        keys <= bound,
        "{keys} key frames in {counted} frames ({elapsed:?}): at most {bound} expected"
    );
    pipeline.set_state(gst::State::Null).unwrap();
}

#[test]
fn a_request_held_back_is_still_served() {
    let (pipeline, _output, frames, key_frames) = encode_with_counter(Duration::from_millis(700));
    let viewer = viewer_branch(&pipeline);
    // Past the first key frame, the encoder makes none unless asked.
    eventually_explained(
        Duration::from_secs(20),
        || (frames.load(Ordering::SeqCst) > 5).then_some(()),
        || "no frame encoded".into(),
    );
    let keys = key_frames.load(Ordering::SeqCst);
    // Two viewers join at once: one request goes through, the other is held back and then
    // sent; both get their key frame.
    pli(&viewer);
    pli(&viewer);
    eventually_explained(
        Duration::from_secs(20),
        || (key_frames.load(Ordering::SeqCst) >= keys + 2).then_some(()),
        || {
            format!(
                "{} key frames after two requests",
                key_frames.load(Ordering::SeqCst) - keys
            )
        },
    );
    pipeline.set_state(gst::State::Null).unwrap();
}
