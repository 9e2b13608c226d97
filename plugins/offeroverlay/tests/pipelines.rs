// SPDX-License-Identifier: MPL-2.0
//! `offeroverlay` in real pipelines: the QR code read back by zbarimg after H.264 at
//! 2 Mbit/s, and the timeline events reaching an appsink through a queue.

mod common;

use common::*;
use gst::prelude::*;
use gst_video::prelude::*;
use hybridlive_offer_timeline::TimelineEntry;

fn pipeline(desc: &str) -> (gst::Pipeline, gst_app::AppSink) {
    init();
    let pipeline = gst::parse::launch(desc)
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    let sink = pipeline
        .by_name("sink")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    (pipeline, sink)
}

#[test]
fn qr_code_decodes_after_h264_at_2_mbits_720p() {
    let url = "https://shop.example.com/checkout/kit-42?src=live";
    // A long URL needs a denser code: 3 px modules on a default-width card at 720p.
    let long_url = "https://shop.example.com/checkout/watercolour-starter-kit-42?utm_source=live&utm_medium=class&ref=abc123";
    let dir = TempDir::new("qr");
    let schedule = dir.write(
        "s.toml",
        &format!(
            "{}{}",
            offer_toml(
                "kit",
                &format!(
                    "subtitle = \"Scan to buy\"\nqr = \"{url}\"\nbadge = \"12 kits left\"\ncountdown = true\nend = 600"
                ),
            ),
            offer_toml("seat", &format!("qr = \"{long_url}\"\nanchor = \"top-left\"")),
        ),
    );
    // The SMPTE pattern puts moving snow under the bottom-right card: the encoder has to spend
    // bits on it too.
    let (pipeline, sink) = pipeline(&format!(
        "videotestsrc pattern=smpte num-buffers=30 ! \
         video/x-raw,format=I420,width=1280,height=720,framerate=30/1 ! \
         offeroverlay schedule=\"{schedule}\" fade-in=0 ! \
         x264enc bitrate=2000 speed-preset=veryfast tune=zerolatency key-int-max=30 ! \
         avdec_h264 ! videoconvert ! video/x-raw,format=GRAY8 ! \
         appsink name=sink sync=false"
    ));
    pipeline.set_state(gst::State::Playing).unwrap();
    let mut last = None;
    while let Ok(sample) = sink.pull_sample() {
        last = Some(sample);
    }
    pipeline.set_state(gst::State::Null).unwrap();
    let sample = last.expect("decoded frames");
    let info = gst_video::VideoInfo::from_caps(sample.caps().unwrap()).unwrap();
    let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(sample.buffer().unwrap(), &info)
        .unwrap();
    let (w, h) = (info.width() as usize, info.height() as usize);
    let stride = frame.plane_stride()[0] as usize;
    let plane = frame.plane_data(0).unwrap();
    let mut pgm = format!("P5\n{w} {h}\n255\n").into_bytes();
    for y in 0..h {
        pgm.extend_from_slice(&plane[y * stride..y * stride + w]);
    }
    let path = dir.path("frame.pgm");
    std::fs::write(&path, pgm).unwrap();

    let out = std::process::Command::new("zbarimg")
        .args(["--raw", "-q"])
        .arg(&path)
        .output()
        .expect("zbarimg (Debian zbar-tools) runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut decoded: Vec<&str> = stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    decoded.sort();
    let mut expected = vec![url, long_url];
    expected.sort();
    assert_eq!(
        decoded,
        expected,
        "zbarimg: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn timeline_events_reach_an_appsink_before_their_frames() {
    let dir = TempDir::new("events");
    let schedule = dir.write(
        "s.toml",
        &format!(
            "{}{}",
            offer_toml("kit", "start = 0.5\nend = 1.2"),
            offer_toml("open", "start = 1.5")
        ),
    );
    let (pipeline, sink) = pipeline(&format!(
        "videotestsrc num-buffers=20 ! video/x-raw,format=I420,width=320,height=240,framerate=10/1 ! \
         offeroverlay schedule=\"{schedule}\" ! queue ! appsink name=sink sync=false"
    ));
    let bus = pipeline.bus().unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();

    // (action, id, running-time of the event, pts of the next frame if any)
    let mut pending: Vec<(String, String, gst::ClockTime)> = Vec::new();
    let mut seen = Vec::new();
    let mut sidecar = Vec::new();
    loop {
        let Ok(obj) = sink.pull_object() else { break };
        if let Some(ev) = obj.downcast_ref::<gst::Event>() {
            if let gst::EventView::CustomDownstream(c) = ev.view()
                && let Some(s) = c.structure()
                && s.name() == "hybridlive/offer"
            {
                assert!(s.get::<&str>("utc").is_ok());
                assert_eq!(
                    s.get::<&str>("title").unwrap(),
                    format!("Offer {}", s.get::<&str>("id").unwrap())
                );
                assert!(!s.has_field("badge"), "no badge in this offer");
                // What a recorder does with it: one JSON line per change.
                let entry = TimelineEntry::from_event(ev).unwrap().unwrap();
                sidecar.push(entry.to_json_line());
                pending.push((
                    s.get::<&str>("action").unwrap().to_string(),
                    s.get::<&str>("id").unwrap().to_string(),
                    clock_field(s, "running-time"),
                ));
            }
        } else if let Some(sample) = obj.downcast_ref::<gst::Sample>() {
            let pts = sample.buffer().unwrap().pts().unwrap();
            for (action, id, rt) in pending.drain(..) {
                seen.push((action, id, rt, Some(pts)));
            }
        }
    }
    // Offers still on screen at EOS are closed where the last frame ends.
    for (action, id, rt) in pending.drain(..) {
        seen.push((action, id, rt, None));
    }
    assert_eq!(sidecar.len(), 4);
    assert!(
        sidecar[0].starts_with(r#"{"action":"shown","id":"kit","title":"Offer kit""#)
            && sidecar[0].contains(r#""running-time":500000000"#),
        "{sidecar:?}"
    );
    let messages: Vec<(String, gst::ClockTime)> = std::iter::from_fn(|| bus.pop())
        .filter_map(|m| match m.view() {
            gst::MessageView::Element(e) => e
                .structure()
                .map(|s| (s.name().to_string(), clock_field(s, "running-time"))),
            _ => None,
        })
        .collect();
    pipeline.set_state(gst::State::Null).unwrap();
    let ms = gst::ClockTime::from_mseconds;
    let row = |a: &str, id: &str, rt, pts| (a.to_string(), id.to_string(), ms(rt), pts);
    assert_eq!(
        seen,
        [
            row("shown", "kit", 500, Some(ms(500))),
            row("hidden", "kit", 1200, Some(ms(1200))),
            row("shown", "open", 1500, Some(ms(1500))),
            row("hidden", "open", 2000, None),
        ]
    );

    assert_eq!(
        messages,
        [
            ("offer-shown".to_string(), ms(500)),
            ("offer-hidden".to_string(), ms(1200)),
            ("offer-shown".to_string(), ms(1500)),
            ("offer-hidden".to_string(), ms(2000)),
        ]
    );
}
