//! Every object of a torn-down WHEP session is freed, not only removed from the pipeline: a
//! reference kept anywhere (a signal handler, a closure, a thread) would keep its webrtcbin,
//! ICE agent and buffers in memory for the rest of the run.

use gst::prelude::*;
use hybridlive_loadtest::viewer::{Viewer, ViewerOptions};
use hybridlive_testkit::in_private_netns;
use hybridlive_webrtc::{WhepConfig, WhepOutput};
use std::time::{Duration, Instant};

fn sender(config: WhepConfig) -> (gst::Pipeline, WhepOutput) {
    let pipeline = gst::parse::launch(
        "videotestsrc is-live=true pattern=ball ! \
         video/x-raw,format=I420,width=320,height=240,framerate=30/1 ! \
         latencystamp ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 ! \
         video/x-h264,profile=constrained-baseline ! latencystamp mode=sei ! \
         tee name=t allow-not-linked=true \
         audiotestsrc is-live=true wave=ticks ! opusenc ! tee name=a allow-not-linked=true",
    )
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    // Nobody reads this bus (the runner does, from its main loop): queued messages would keep
    // references to the elements that posted them. (After NULL->READY, which unflushes it.)
    pipeline.bus().unwrap().set_flushing(true);
    let tee = pipeline.by_name("t").unwrap();
    let audio = pipeline.by_name("a").unwrap();
    let output = WhepOutput::new(&pipeline, &tee, Some(&audio), config);
    (pipeline, output)
}

/// Weak references to every object of the session branches now in `pipeline`.
fn session_objects(pipeline: &gst::Pipeline) -> Vec<(String, gst::glib::WeakRef<gst::Object>)> {
    let mut objects = Vec::new();
    for element in pipeline
        .iterate_recurse()
        .into_iter()
        .filter_map(Result::ok)
    {
        let in_session =
            std::iter::successors(Some(element.clone().upcast::<gst::Object>()), |o| {
                o.parent()
            })
            .any(|o| o.name().starts_with("whep-"));
        if !in_session {
            continue;
        }
        let kind = element
            .factory()
            .map_or("bin".into(), |f| f.name().to_string());
        for pad in element.pads() {
            objects.push((
                format!("{kind} pad {}", pad.name()),
                pad.upcast::<gst::Object>().downgrade(),
            ));
        }
        objects.push((kind, element.upcast::<gst::Object>().downgrade()));
    }
    objects
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn torn_down_sessions_are_freed() {
    if !in_private_netns("torn_down_sessions_are_freed") {
        return;
    }
    hybridlive_loadtest::init().unwrap();
    let (pipeline, output) = sender(WhepConfig {
        loopback_ice: true,
        viewer_timeout: Duration::from_secs(2),
        ..Default::default()
    });
    for leave in ["delete", "vanish", "abort-before-ice", "abort-mid-ice"] {
        let viewer = Viewer::new(&ViewerOptions::default()).unwrap();
        let answer = output
            .offer(&viewer.offer(Duration::from_secs(5)).unwrap())
            .unwrap();
        let objects = session_objects(&pipeline);
        assert!(
            objects.iter().any(|(k, _)| k == "webrtcbin"),
            "{leave}: no session branch"
        );
        match leave {
            "abort-before-ice" => drop(viewer),
            "abort-mid-ice" => {
                viewer.accept(&answer.sdp).unwrap();
                drop(viewer);
            }
            _ => {
                viewer.accept(&answer.sdp).unwrap();
                assert!(
                    viewer.wait_video(10, Duration::from_secs(20)),
                    "{leave}: no video"
                );
                if leave == "delete" {
                    output.delete(&answer.id).unwrap();
                }
                drop(viewer);
            }
        }
        wait_until(
            &format!("{leave}: session ended"),
            Duration::from_secs(30),
            || output.session_count() == 0,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let alive: Vec<String> = objects
                .iter()
                .filter_map(|(kind, weak)| {
                    weak.upgrade()
                        .map(|o| format!("{kind} (refcount {})", o.ref_count()))
                })
                .collect();
            if alive.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{leave}: {} of {} session objects still alive: {alive:?}",
                alive.len(),
                objects.len()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("{leave}: {} objects freed", objects.len());
    }
    pipeline.set_state(gst::State::Null).unwrap();
}
