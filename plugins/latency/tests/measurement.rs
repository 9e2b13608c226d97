//! latencymeter measures what really happened: a known delay, the render instant, and reports
//! that reach the bus, the `stats` property and a JSON lines file.

mod common;

use common::*;
use gst::prelude::*;

const TIMEOUT: gst::ClockTime = gst::ClockTime::from_seconds(30);

#[test]
fn known_100ms_delay_is_measured_within_2ms() {
    init();
    // identity holds every frame for 100 ms; at 5 frames/s nothing queues up behind it.
    let p = parse(
        "videotestsrc is-live=true num-buffers=12 ! \
         video/x-raw,width=160,height=120,framerate=5/1 ! latencystamp ! \
         latencymeter name=before ! identity sleep-time=100000 ! \
         latencymeter name=after ! fakesink sync=false",
    );
    let reports = run_to_eos_reports(&p, TIMEOUT);
    let before = &reports["before"];
    let after = &reports["after"];
    assert_eq!(field_u64(before, "count"), 12);
    assert_eq!(field_u64(after, "count"), 12);
    let delta = field_f64(after, "window-p50-ms") - field_f64(before, "window-p50-ms");
    assert!(
        (delta - 100.0).abs() <= 2.0,
        "measured {delta} ms for a 100 ms delay"
    );
    // A live source pushes a frame at its capture instant: fresh before the delay.
    let fresh = field_f64(before, "window-p50-ms");
    assert!((0.0..=20.0).contains(&fresh), "{fresh} ms before the delay");
}

#[test]
fn render_mode_adds_the_pipeline_latency() {
    init();
    let p = parse(
        "videotestsrc is-live=true num-buffers=20 ! \
         video/x-raw,width=160,height=120,framerate=30/1 ! latencystamp ! \
         latencymeter name=m measure-at=render ! fakesink sync=true",
    );
    // A fixed pipeline latency: every frame is rendered 250 ms after its capture instant.
    p.set_latency(gst::ClockTime::from_mseconds(250));
    let report = run_to_eos(&p, "m", TIMEOUT).unwrap();
    for field in ["total-min-ms", "total-max-ms"] {
        let v = field_f64(&report, field);
        assert!((v - 250.0).abs() < 1.0, "{field} = {v}");
    }
}

#[test]
fn periodic_reports_stats_property_and_json_lines_agree() {
    init();
    let dir = tempdir("jsonl");
    let log = dir.join("latency.jsonl");
    let p = parse(&format!(
        "videotestsrc is-live=true num-buffers=40 ! \
         video/x-raw,width=160,height=120,framerate=30/1 ! latencystamp ! \
         latencymeter name=m interval=300000000 location={} ! fakesink",
        log.display()
    ));
    let bus = p.bus().unwrap();
    let reports = std::sync::Arc::new(std::sync::Mutex::new(0u32));
    let counter = reports.clone();
    bus.set_sync_handler(move |_, msg| {
        if let gst::MessageView::Element(e) = msg.view()
            && e.structure().is_some_and(|s| s.name() == "latency-report")
        {
            *counter.lock().unwrap() += 1;
        }
        gst::BusSyncReply::Pass
    });
    let last = run_to_eos(&p, "m", TIMEOUT).unwrap();
    let stats = p.by_name("m").unwrap().property::<gst::Structure>("stats");
    assert_eq!(stats, last, "stats property equals the last report");

    // ~1.3 s of media at one report per 300 ms, plus the one at EOS.
    let n = *reports.lock().unwrap();
    assert!((4..=6).contains(&n), "{n} reports");
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.len() as u32, n);
    let final_line = lines.last().unwrap();
    assert_eq!(final_line["count"], 40);
    assert_eq!(final_line["element"], "m");
    assert_eq!(
        final_line["window-p95-ms"].as_f64().unwrap(),
        field_f64(&last, "window-p95-ms")
    );
}

#[test]
fn unwritable_location_is_an_error_naming_the_file() {
    init();
    let p = parse(
        "videotestsrc num-buffers=1 ! latencystamp ! \
         latencymeter location=/nonexistent/dir/latency.jsonl ! fakesink",
    );
    let _ = p.set_state(gst::State::Playing);
    let msg = p
        .bus()
        .unwrap()
        .timed_pop_filtered(TIMEOUT, &[gst::MessageType::Error])
        .expect("an error message");
    p.set_state(gst::State::Null).unwrap();
    let gst::MessageView::Error(err) = msg.view() else {
        unreachable!()
    };
    let text = format!("{} {:?}", err.error(), err.debug());
    assert!(text.contains("/nonexistent/dir/latency.jsonl"), "{text}");
}
