// SPDX-License-Identifier: MPL-2.0
//! Behaviour of `offeroverlay` as a user sees it: where and when cards appear, how they fade,
//! every listed format, overlay meta, the timeline events and messages, control and errors.

mod common;

use common::*;
use gst::prelude::*;

fn v<T: ToValue>(x: T) -> glib::Value {
    x.to_value()
}

const SEC: gst::ClockTime = gst::ClockTime::SECOND;

/// Asserts that a card's left, right and bottom edges lie within 2 pixels of where
/// `expected_bottom_right` puts them; `what` names the case when they do not.
fn assert_card_edges(
    (left, right, bottom): (u32, u32, u32),
    (x0, x1, y1): (i64, i64, i64),
    what: &str,
) {
    assert!((left as i64 - x0).abs() <= 2, "{what}: left {left} vs {x0}");
    assert!(
        (right as i64 - x1).abs() <= 2,
        "{what}: right {right} vs {x1}"
    );
    assert!(
        (bottom as i64 - y1).abs() <= 2,
        "{what}: bottom {bottom} vs {y1}"
    );
}

/// A run of `schedule` over I420 frames of `size` at 10 fps, cards fading in and out over
/// `fade_ms`.
fn scheduled_run(schedule: &str, (width, height): (u32, u32), fade_ms: u32) -> Run {
    Run::new(
        "I420",
        width,
        height,
        10,
        &[
            ("schedule", v(schedule)),
            ("fade-in", v(fade_ms)),
            ("fade-out", v(fade_ms)),
        ],
    )
}

#[test]
fn card_appears_where_and_when_scheduled_and_timeline_is_sent() {
    let dir = TempDir::new("when");
    let schedule = dir.write(
        "s.toml",
        &offer_toml(
            "kit",
            "subtitle = \"Everything from today\"\nstart = 1\nend = \"00:03\"",
        ),
    );
    let (w, h) = (640, 360);
    let mut run = scheduled_run(&schedule, (w, h), 0);
    let (x0, x1, y1) = expected_bottom_right(w, h, 0.3, 0.03);
    let mut shown_at = None;
    let mut hidden_at = None;
    for _ in 0..40 {
        let (frame, events) = run.step();
        let t = frame.pts;
        for e in &events {
            assert_eq!(e.name(), "hybridlive/offer");
            assert_eq!(e.get::<&str>("id").unwrap(), "kit");
            assert_eq!(e.get::<&str>("subtitle").unwrap(), "Everything from today");
            assert_eq!(
                clock_field(e, "running-time"),
                t,
                "event sent just before its frame"
            );
            match e.get::<&str>("action").unwrap() {
                "shown" => shown_at = Some(t),
                "hidden" => hidden_at = Some(t),
                other => panic!("unexpected action {other}"),
            }
        }
        let bbox = frame.card_bbox();
        if t < SEC || t >= 3 * SEC {
            assert_eq!(bbox, None, "no card at {t}");
        } else {
            let (bx0, _by0, bx1, by1) = bbox.unwrap_or_else(|| panic!("card missing at {t}"));
            assert_card_edges((bx0, bx1, by1), (x0, x1, y1), &format!("at {t}"));
        }
    }
    assert_eq!(shown_at, Some(SEC));
    assert_eq!(hidden_at, Some(3 * SEC));

    let messages = run.messages();
    let named = |name: &str| -> Vec<gst::Structure> {
        messages
            .iter()
            .filter_map(|m| match m.view() {
                gst::MessageView::Element(e) => e.structure().map(|s| s.to_owned()),
                _ => None,
            })
            .filter(|s| s.name() == name)
            .collect()
    };
    let shown = named("offer-shown");
    let hidden = named("offer-hidden");
    assert_eq!(shown.len(), 1);
    assert_eq!(hidden.len(), 1);
    assert_eq!(clock_field(&shown[0], "running-time"), SEC);
    assert_eq!(clock_field(&shown[0], "stream-time"), SEC);
    assert_eq!(clock_field(&hidden[0], "running-time"), 3 * SEC);
    let utc = shown[0].get::<&str>("utc").unwrap();
    humantime::parse_rfc3339(utc).unwrap_or_else(|e| panic!("utc `{utc}`: {e}"));
    assert_eq!(shown[0].get::<&str>("title").unwrap(), "Offer kit");
}

#[test]
fn fades_are_monotonic() {
    let dir = TempDir::new("fade");
    let schedule = dir.write(
        "s.json",
        r#"{"offers": [{"id": "f", "title": "Fading", "price": "1 €", "start": 0, "end": 3}]}"#,
    );
    let (w, h) = (480, 270);
    let mut run = scheduled_run(&schedule, (w, h), 1000);
    let (x0, x1, y1) = expected_bottom_right(w, h, 0.3, 0.03);
    // A band at the card's bottom: card background whatever the content above.
    let region = (x0 as u32 + 10, y1 as u32 - 8, x1 as u32 - 10, y1 as u32 - 3);
    let strengths: Vec<f64> = (0..31).map(|_| run.step().0.strength(region)).collect();
    let (fade_in, rest) = strengths.split_at(11);
    let fade_out = &rest[9..];
    for pair in fade_in.windows(2) {
        assert!(
            pair[1] >= pair[0] - 0.5,
            "fade-in not monotonic: {fade_in:?}"
        );
    }
    for pair in fade_out.windows(2) {
        assert!(
            pair[1] <= pair[0] + 0.5,
            "fade-out not monotonic: {fade_out:?}"
        );
    }
    let full = fade_in[10];
    assert!(fade_in[0] < full * 0.1, "starts transparent: {fade_in:?}");
    assert!(
        fade_in[5] > full * 0.3 && fade_in[5] < full * 0.7,
        "half way: {fade_in:?}"
    );
    assert!(
        strengths[30] < full * 0.1,
        "ends transparent: {strengths:?}"
    );
}

#[test]
fn every_listed_format_at_odd_sizes() {
    let dir = TempDir::new("formats");
    let schedule = dir.write("s.toml", &offer_toml("fmt", "badge = \"3 left\""));
    let card_bg = 0xff20_4060u32;
    // The listed formats have their own blending; Y444, YUY2 and AYUV go through GStreamer's.
    for format in [
        "I420", "NV12", "RGBA", "BGRA", "RGBx", "BGRx", "Y444", "YUY2", "AYUV",
    ] {
        // Odd widths do not exist in 4:2:2 packed YUY2 (the last column is not a whole pixel).
        let odd_width = if format == "YUY2" { 642 } else { 641 };
        for (w, h) in [(odd_width, 359u32), (1280, 720)] {
            let mut run = Run::new(
                format,
                w,
                h,
                10,
                &[
                    ("schedule", v(&schedule)),
                    ("fade-in", v(0u32)),
                    ("background-color", v(card_bg)),
                ],
            );
            let (frame, _) = run.step();
            let (x0, x1, y1) = expected_bottom_right(w, h, 0.3, 0.03);
            let (bx0, by0, bx1, by1) = frame
                .card_bbox()
                .unwrap_or_else(|| panic!("{format} {w}x{h}: no card"));
            assert_card_edges((bx0, bx1, by1), (x0, x1, y1), &format!("{format} {w}x{h}"));
            // Top padding, away from the rounded corners: the card background colour.
            let d = frame.diff_at((bx0 + bx1) / 2, by0 + 2, card_bg);
            assert!(d <= 18, "{format} {w}x{h}: card background off by {d}");
            // Outside the card the picture is untouched.
            assert!(
                frame.diff_at(2, 2, BACKGROUND) <= 15,
                "{format}: background changed"
            );
        }
    }
}

/// A playing offeroverlay harness showing `schedule` at once (no fade-in) over a plain
/// 320x240 I420 background; `downstream` sets what the sink side takes before it starts.
fn playing_harness(
    schedule: &str,
    downstream: impl FnOnce(&mut gst_check::Harness),
) -> (gst_check::Harness, gst::Element) {
    init();
    let mut h = gst_check::Harness::new("offeroverlay");
    let overlay = h.element().unwrap();
    overlay.set_property("schedule", schedule);
    overlay.set_property("fade-in", 0u32);
    downstream(&mut h);
    h.add_src_parse(
        &format!(
            "videotestsrc pattern=solid-color foreground-color={BACKGROUND} ! capsfilter caps=\
             video/x-raw,format=I420,width=320,height=240,framerate=10/1"
        ),
        false,
    );
    h.play();
    (h, overlay)
}

#[test]
fn overlay_meta_is_attached_when_downstream_accepts_it() {
    let dir = TempDir::new("meta");
    let schedule = dir.write("s.toml", &offer_toml("m", "qr = \"https://example.com/m\""));
    let (mut h, overlay) = playing_harness(&schedule, |h| {
        h.set_sink_caps_str("video/x-raw(meta:GstVideoOverlayComposition),format=I420,width=320,height=240,framerate=10/1");
    });
    h.push_from_src().unwrap();
    let buf = h.pull().unwrap();
    let meta = buf
        .meta::<gst_video::VideoOverlayCompositionMeta>()
        .expect("composition attached");
    assert!(meta.overlay().n_rectangles() >= 1);
    // The pixels are left for downstream to draw: Y plane still uniform.
    let map = buf.map_readable().unwrap();
    let y = &map[..320 * 240];
    assert!(
        y.iter().all(|&p| p == y[0]),
        "frame was blended although meta was accepted"
    );
    let stats = overlay.property::<gst::Structure>("stats");
    assert_eq!(stats.get::<u64>("frames-attached").unwrap(), 1);
    assert_eq!(stats.get::<u64>("frames-blended").unwrap(), 0);
}

#[test]
fn overlay_meta_is_attached_when_the_allocation_query_accepts_it() {
    let dir = TempDir::new("alloc");
    let schedule = dir.write("s.toml", &offer_toml("a", ""));
    // Plain caps, but downstream says in the allocation query that it draws compositions.
    let (mut h, overlay) = playing_harness(&schedule, |h| {
        h.set_sink_caps_str("video/x-raw,format=I420,width=320,height=240,framerate=10/1");
        h.add_propose_allocation_meta(gst_video::VideoOverlayCompositionMeta::meta_api(), None);
    });
    h.push_from_src().unwrap();
    let buf = h.pull().unwrap();
    assert!(
        buf.meta::<gst_video::VideoOverlayCompositionMeta>()
            .is_some()
    );
    let stats = overlay.property::<gst::Structure>("stats");
    assert_eq!(stats.get::<u64>("frames-attached").unwrap(), 1, "{stats}");
}

#[test]
fn no_offer_means_untouched_frames_and_one_render_per_content() {
    let dir = TempDir::new("work");
    let schedule = dir.write(
        "s.toml",
        &offer_toml("c", "start = 2\nend = 12\ncountdown = true"),
    );
    let mut run = Run::new(
        "I420",
        320,
        240,
        10,
        &[("schedule", v(&schedule)), ("fade-in", v(0u32))],
    );
    let mut left_seconds = std::collections::BTreeSet::new();
    for i in 0..55 {
        let (frame, _) = run.step();
        if i < 20 {
            assert_eq!(frame.card_bbox(), None);
        } else {
            let left = (12 * SEC - frame.pts).nseconds().div_ceil(1_000_000_000);
            left_seconds.insert(left);
        }
    }
    let stats = run.stats();
    assert_eq!(stats.get::<u64>("frames").unwrap(), 55);
    assert_eq!(
        stats.get::<u64>("frames-passthrough").unwrap(),
        20,
        "{stats}"
    );
    assert_eq!(stats.get::<u64>("frames-blended").unwrap(), 35, "{stats}");
    assert_eq!(stats.get::<u64>("card-renders").unwrap(), 1, "{stats}");
    assert_eq!(
        stats.get::<u64>("countdown-renders").unwrap(),
        left_seconds.len() as u64,
        "countdown re-drawn once per second: {stats}"
    );
}

fn actions(events: &[gst::Structure]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e.get::<&str>("action").unwrap().to_string(),
                e.get::<&str>("id").unwrap().to_string(),
            )
        })
        .collect()
}

fn pair(a: &str, id: &str) -> (String, String) {
    (a.to_string(), id.to_string())
}

#[test]
fn schedule_reloads_by_property_and_signal_and_keeps_the_old_one_when_bad() {
    let dir = TempDir::new("reload");
    let path = dir.write("s.toml", &offer_toml("a", ""));
    let mut run = scheduled_run(&path, (320, 240), 0);
    let (_, ev) = run.step();
    assert_eq!(actions(&ev), [pair("shown", "a")]);

    dir.write("s.toml", &offer_toml("b", ""));
    run.overlay.set_property("schedule", &path);
    // The new card is drawn by the thread that reloads, before the next frame.
    assert_eq!(run.stats().get::<u64>("card-renders").unwrap(), 2);
    let (_, ev) = run.step();
    assert_eq!(run.stats().get::<u64>("card-renders").unwrap(), 2);
    assert_eq!(actions(&ev), [pair("hidden", "a"), pair("shown", "b")]);

    dir.write("s.toml", &offer_toml("c", "start = \"100ms\""));
    assert!(run.overlay.emit_by_name::<bool>("reload", &[]));
    let (_, ev) = run.step();
    assert_eq!(actions(&ev), [pair("hidden", "b"), pair("shown", "c")]);

    dir.write(
        "s.toml",
        "[[offers]]\nid = \"d\"\ntitle = \"D\"\nprice = 3\n",
    );
    let _ = run.messages();
    assert!(!run.overlay.emit_by_name::<bool>("reload", &[]));
    let warning = run
        .messages()
        .into_iter()
        .find_map(|m| match m.view() {
            gst::MessageView::Warning(w) => Some(w.error().to_string()),
            _ => None,
        })
        .expect("a warning for the bad schedule");
    assert!(warning.contains(&format!("{path}:4:")), "{warning}");
    assert!(warning.contains("offers[0].price"), "{warning}");
    let (frame, ev) = run.step();
    assert!(ev.is_empty(), "bad reload changed the timeline: {ev:?}");
    assert!(
        frame.card_bbox().is_some(),
        "previous schedule stays in force"
    );
}

#[test]
fn show_and_hide_signals_stack_cards_without_overlap() {
    let mut run = Run::new(
        "NV12",
        640,
        360,
        10,
        &[
            ("fade-in", v(0u32)),
            ("fade-out", v(0u32)),
            ("anchor", v(gstofferoverlay::Anchor::TopLeft)),
        ],
    );
    let (frame, ev) = run.step();
    assert!(ev.is_empty() && frame.card_bbox().is_none());

    for (n, id) in ["one", "two"].into_iter().enumerate() {
        let json = format!(
            r#"{{"id": "{id}", "title": "Card {id}", "price": "€5", "badge": "today only"}}"#
        );
        assert!(run.overlay.emit_by_name::<bool>("show-offer", &[&json]));
        // Drawn right away in the calling thread, not later on the streaming thread.
        assert_eq!(
            run.stats().get::<u64>("card-renders").unwrap(),
            n as u64 + 1
        );
    }
    let (frame, ev) = run.step();
    assert_eq!(actions(&ev), [pair("shown", "one"), pair("shown", "two")]);
    assert_eq!(run.stats().get::<u64>("card-renders").unwrap(), 2);
    let (bx0, _, bx1, _) = frame.card_bbox().unwrap();
    assert!(bx0 <= 22, "top-left anchor: {bx0}");
    let runs = frame.runs_in_column((bx0 + bx1) / 2);
    assert_eq!(runs.len(), 2, "two separate stacked cards: {runs:?}");
    assert!(runs[0].1 < runs[1].0, "cards overlap: {runs:?}");

    assert!(run.overlay.emit_by_name::<bool>("hide-offer", &[&"one"]));
    assert!(!run.overlay.emit_by_name::<bool>("hide-offer", &[&"nope"]));
    let (frame, ev) = run.step();
    assert_eq!(actions(&ev), [pair("hidden", "one")]);
    assert_eq!(frame.runs_in_column((bx0 + bx1) / 2).len(), 1);

    let _ = run.messages();
    let bad = "{\"id\": \"x\",\n \"title\": \"X\",\n \"price\": \"1\", \"anchor\": \"middle\"}";
    assert!(!run.overlay.emit_by_name::<bool>("show-offer", &[&bad]));
    let warning = run
        .messages()
        .into_iter()
        .find_map(|m| match m.view() {
            gst::MessageView::Warning(w) => Some(w.error().to_string()),
            _ => None,
        })
        .expect("a warning for the bad offer");
    assert!(warning.contains(":3:"), "{warning}");
    assert!(warning.contains("anchor"), "{warning}");
}

#[test]
fn offers_with_duration_and_utc_times() {
    let dir = TempDir::new("utc");
    let now = std::time::SystemTime::now();
    let past = humantime::format_rfc3339(now - std::time::Duration::from_secs(60));
    let future = humantime::format_rfc3339(now + std::time::Duration::from_secs(3600));
    let later = humantime::format_rfc3339(now + std::time::Duration::from_secs(7200));
    let schedule = dir.write(
        "s.toml",
        &format!(
            "{}{}{}",
            offer_toml("live", &format!("start = \"{past}\"\nduration = 3600")),
            offer_toml("later", &format!("start = \"{future}\"\nend = \"{later}\"")),
            offer_toml("short", "start = 0.5\nduration = 0.5"),
        ),
    );
    let mut run = scheduled_run(&schedule, (320, 240), 0);
    let mut seen = Vec::new();
    for _ in 0..12 {
        let (frame, ev) = run.step();
        for a in actions(&ev) {
            seen.push((frame.pts, a));
        }
    }
    assert_eq!(
        seen,
        [
            (gst::ClockTime::ZERO, pair("shown", "live")),
            (SEC / 2, pair("shown", "short")),
            (SEC, pair("hidden", "short")),
        ]
    );
}

fn start_error(schedule: &str) -> String {
    init();
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc num-buffers=3 ! offeroverlay schedule=\"{schedule}\" ! fakesink"
    ))
    .unwrap();
    let bus = pipeline.bus().unwrap();
    let _ = pipeline.set_state(gst::State::Playing);
    let msg = bus
        .timed_pop_filtered(10 * SEC, &[gst::MessageType::Error, gst::MessageType::Eos])
        .expect("pipeline ends");
    pipeline.set_state(gst::State::Null).unwrap();
    match msg.view() {
        gst::MessageView::Error(e) => e.error().to_string(),
        _ => panic!("no error for {schedule}"),
    }
}

#[test]
fn bad_schedules_and_images_are_element_errors_at_start() {
    let dir = TempDir::new("bad");
    let json = dir.write(
        "bad.json",
        "{\"offers\": [\n  {\"id\": \"a\", \"title\": \"A\", \"price\": \"1\",\n   \"start\": \"tomorrow-ish\"}\n]}",
    );
    let err = start_error(&json);
    assert!(err.contains(&format!("{json}:3:")), "{err}");
    assert!(err.contains("offers[0].start"), "{err}");

    let toml = dir.write(
        "bad.toml",
        "[[offers]]\nid = \"a\"\ntitle = \"A\"\nprice = \"1\"\ncolour = \"red\"\n",
    );
    let err = start_error(&toml);
    assert!(err.contains(&format!("{toml}:")), "{err}");
    assert!(err.contains("colour"), "{err}");

    let missing = dir.write("img.toml", &offer_toml("a", "image = \"nowhere.png\""));
    let err = start_error(&missing);
    assert!(
        err.contains(&format!("{missing}:5:1: offers[0].image")),
        "{err}"
    );
    assert!(err.contains("nowhere.png"), "{err}");

    std::fs::write(dir.path("broken.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let broken = dir.write("broken.toml", &offer_toml("a", "image = \"broken.png\""));
    let err = start_error(&broken);
    assert!(err.contains("offers[0].image"), "{err}");

    let err = start_error(&dir.0.join("absent.toml").display().to_string());
    assert!(err.contains("absent.toml"), "{err}");
}

#[test]
fn images_render_inside_the_card() {
    let dir = TempDir::new("img");
    // The same gradient as PNG and as JPEG (files named without a telling extension: the
    // format is read from the content).
    write_png(&dir.path("kit.png"), 160, 90);
    image::open(dir.path("kit.png"))
        .unwrap()
        .to_rgb8()
        .save_with_format(dir.path("kit.photo"), image::ImageFormat::Jpeg)
        .unwrap();
    for file in ["kit.png", "kit.photo"] {
        let schedule = dir.write(
            "s.toml",
            &offer_toml("i", &format!("image = \"{file}\"\nanchor = \"top-left\"")),
        );
        let mut run = Run::new(
            "RGBA",
            640,
            360,
            10,
            &[("schedule", v(&schedule)), ("fade-in", v(0u32))],
        );
        let (frame, _) = run.step();
        let (bx0, by0, bx1, _) = frame.card_bbox().unwrap();
        // The gradient's red channel grows left to right across the image row.
        let y = by0 + (bx1 - bx0) / 6;
        let left = frame.rgb(bx0 + (bx1 - bx0) / 5, y)[0];
        let right = frame.rgb(bx1 - (bx1 - bx0) / 5, y)[0];
        assert!(
            right as i32 - left as i32 > 60,
            "{file}: image gradient not drawn: {left} .. {right}"
        );
    }
}

/// One frame of `format` with a card, either attached as meta or blended by the element.
fn one_frame(format: &str, schedule: &str, attach: bool) -> gst::Buffer {
    init();
    let mut h = gst_check::Harness::new("offeroverlay");
    let overlay = h.element().unwrap();
    overlay.set_property("schedule", schedule);
    overlay.set_property("fade-in", 0u32);
    let features = if attach {
        "(meta:GstVideoOverlayComposition)"
    } else {
        ""
    };
    // GStreamer's blend converts cards with BT.709 whatever the frame says: use BT.709 frames
    // so that both sides mean the same colours.
    let colorimetry = if format.starts_with('I') || format.starts_with('N') {
        ",colorimetry=bt709"
    } else {
        ""
    };
    h.set_sink_caps_str(&format!(
        "video/x-raw{features},format={format},width=640,height=360,framerate=10/1{colorimetry}"
    ));
    h.add_src_parse(
        &format!(
            "videotestsrc pattern=smpte ! capsfilter caps=\
             video/x-raw,format={format},width=640,height=360,framerate=10/1{colorimetry}"
        ),
        false,
    );
    h.play();
    h.push_from_src().unwrap();
    h.pull().unwrap()
}

#[test]
fn own_blending_matches_gstreamer_reference_blend() {
    let dir = TempDir::new("reference");
    write_png(&dir.path("kit.png"), 160, 90);
    let schedule = dir.write(
        "s.toml",
        &offer_toml(
            "r",
            "subtitle = \"Scan me\"\nimage = \"kit.png\"\nqr = \"https://example.com/r\"\n\
             badge = \"2 left\"\ncountdown = true\nend = 60",
        ),
    );
    for format in ["I420", "NV12", "RGBA", "BGRA", "RGBx", "BGRx"] {
        // GStreamer's own blend of the composition the element attaches...
        let attached = one_frame(format, &schedule, true);
        let composition = attached
            .meta::<gst_video::VideoOverlayCompositionMeta>()
            .expect("composition attached")
            .overlay_owned();
        let mut reference = attached.copy_deep().unwrap();
        {
            let r = reference.make_mut();
            while let Some(m) = r.meta_mut::<gst_video::VideoOverlayCompositionMeta>() {
                m.remove().unwrap();
            }
            let caps = gst::Caps::builder("video/x-raw")
                .field("format", format)
                .field("width", 640)
                .field("height", 360)
                .build();
            let info = gst_video::VideoInfo::from_caps(&caps).unwrap();
            let mut frame = gst_video::VideoFrameRef::from_buffer_ref_writable(r, &info).unwrap();
            composition.blend(&mut frame).unwrap();
        }
        // ...against the element's own blending of the same frame.
        let blended = one_frame(format, &schedule, false);
        let (a, b) = (
            reference.map_readable().unwrap(),
            blended.map_readable().unwrap(),
        );
        assert_eq!(a.len(), b.len());
        let diffs: Vec<u8> = a
            .iter()
            .zip(b.iter())
            .map(|(x, y)| x.abs_diff(*y))
            .collect();
        let changed = a
            .iter()
            .zip(b.iter())
            .zip(attached.map_readable().unwrap().iter())
            .filter(|((r, _), o)| r != o)
            .count();
        let off = diffs.iter().filter(|&&d| d > 4).count();
        let max = diffs.iter().copied().max().unwrap();
        eprintln!(
            "{format}: {changed} bytes changed by the card, {off} differ by more than 4, max {max}"
        );
        // First plane: luma, or all of packed RGB. Same pixels in, same rounding out.
        let first_plane = if format.starts_with('I') || format.starts_with('N') {
            640 * 360
        } else {
            diffs.len()
        };
        let first_max = diffs[..first_plane].iter().copied().max().unwrap();
        assert!(changed > 10_000, "{format}: the card was not blended");
        assert!(first_max <= 4, "{format}: luma/RGB off by {first_max}");
        // Chroma may differ at sharp edges: GStreamer keeps one pixel of each 2x2 block, we
        // average the four.
        assert!(
            off * 50 < changed,
            "{format}: {off} of {changed} card bytes differ from GStreamer's blend by more than 4 (max {max})"
        );
    }
}

#[test]
fn utc_comes_from_unix_reference_timestamps_when_frames_carry_them() {
    let dir = TempDir::new("refts");
    let schedule = dir.write(
        "s.toml",
        &offer_toml(
            "u",
            "start = 2026-01-01T00:00:01Z\nend = 2026-01-01T00:00:02Z",
        ),
    );
    init();
    let mut h = gst_check::Harness::new("offeroverlay");
    h.element().unwrap().set_property("schedule", &schedule);
    h.set_src_caps_str("video/x-raw,format=I420,width=320,height=240,framerate=2/1");
    h.set_sink_caps_str("video/x-raw,format=I420,width=320,height=240,framerate=2/1");
    let unix = gst::Caps::builder("timestamp/x-unix").build();
    let epoch_2026 = gst::ClockTime::from_seconds(1_767_225_600);
    let mut seen = Vec::new();
    for i in 0..6u64 {
        let mut buf = gst::Buffer::with_size(320 * 240 * 3 / 2).unwrap();
        {
            let b = buf.get_mut().unwrap();
            b.set_pts(gst::ClockTime::from_mseconds(500 * i));
            gst::ReferenceTimestampMeta::add(
                b,
                &unix,
                epoch_2026 + gst::ClockTime::from_mseconds(500 * i),
                gst::ClockTime::NONE,
            );
        }
        h.push(buf).unwrap();
        h.pull().unwrap();
        while let Some(ev) = h.try_pull_event() {
            if let gst::EventView::CustomDownstream(c) = ev.view()
                && let Some(s) = c.structure()
            {
                seen.push((
                    s.get::<&str>("action").unwrap().to_string(),
                    s.get::<&str>("utc").unwrap().to_string(),
                ));
            }
        }
    }
    assert_eq!(
        seen,
        [
            ("shown".to_string(), "2026-01-01T00:00:01.000Z".to_string()),
            ("hidden".to_string(), "2026-01-01T00:00:02.000Z".to_string()),
        ]
    );
}

#[test]
fn a_card_without_room_is_left_out_with_a_warning_not_drawn_over_another() {
    // Same anchor (stacked) and opposite anchors in one column (top-right vs bottom-right).
    for second_anchor in ["bottom-right", "top-right"] {
        no_room_for_second_card(second_anchor);
    }
}

fn no_room_for_second_card(second_anchor: &str) {
    let dir = TempDir::new("room");
    let schedule = dir.write(
        "s.toml",
        &format!(
            "{}{}",
            offer_toml(
                "big",
                "qr = \"https://example.com/big\"\nbadge = \"last one\""
            ),
            offer_toml(
                "second",
                &format!("qr = \"https://example.com/second\"\nanchor = \"{second_anchor}\""),
            ),
        ),
    );
    let mut run = Run::new(
        "I420",
        640,
        360,
        10,
        &[
            ("schedule", v(&schedule)),
            ("fade-in", v(0u32)),
            ("card-width", v(0.5f64)),
        ],
    );
    for _ in 0..3 {
        let (frame, _) = run.step();
        let (bx0, _, bx1, _) = frame.card_bbox().unwrap();
        assert_eq!(
            frame.runs_in_column((bx0 + bx1) / 2).len(),
            1,
            "exactly one card"
        );
    }
    let warnings: Vec<String> = run
        .messages()
        .into_iter()
        .filter_map(|m| match m.view() {
            gst::MessageView::Warning(w) => Some(w.error().to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(warnings.len(), 1, "warned once: {warnings:?}");
    assert!(
        warnings[0].contains("second") && warnings[0].contains("no room"),
        "{warnings:?}"
    );
}

#[test]
fn theme_changes_while_playing_redraw_the_card_once() {
    let dir = TempDir::new("theme");
    let schedule = dir.write("s.toml", &offer_toml("t", ""));
    let mut run = Run::new(
        "RGBA",
        320,
        240,
        10,
        &[
            ("schedule", v(&schedule)),
            ("fade-in", v(0u32)),
            ("background-color", v(0xff10_1010u32)),
        ],
    );
    let probe = |frame: &Frame| {
        let (bx0, by0, bx1, _) = frame.card_bbox().unwrap();
        frame.rgb((bx0 + bx1) / 2, by0 + 2)
    };
    let (frame, _) = run.step();
    assert_eq!(probe(&frame), [0x10, 0x10, 0x10]);
    run.overlay.set_property("background-color", 0xff80_2040u32);
    for _ in 0..3 {
        let (frame, _) = run.step();
        assert_eq!(probe(&frame), [0x80, 0x20, 0x40]);
    }
    assert_eq!(run.stats().get::<u64>("card-renders").unwrap(), 2);

    // An offer's own colours win over the element's.
    assert!(run.overlay.emit_by_name::<bool>(
        "show-offer",
        &[&r##"{"id": "t", "title": "T", "price": "1", "background-color": "#204060"}"##],
    ));
    let (frame, _) = run.step();
    assert_eq!(probe(&frame), [0x20, 0x40, 0x60]);
}

#[test]
fn resolution_change_midstream_redraws_at_the_new_size() {
    let dir = TempDir::new("resize");
    let schedule = dir.write("s.toml", &offer_toml("r", ""));
    init();
    let mut h = gst_check::Harness::new_parse(
        "offeroverlay name=o ! videoconvert ! capsfilter caps=video/x-raw,format=RGBA",
    );
    let bin = h.element().unwrap().downcast::<gst::Bin>().unwrap();
    let overlay = bin.by_name("o").unwrap();
    overlay.set_property("schedule", &schedule);
    overlay.set_property("fade-in", 0u32);
    let mut pts = gst::ClockTime::ZERO;
    for (w, hgt) in [(320u32, 240u32), (1280, 720), (640, 360)] {
        h.set_src_caps_str(&format!(
            "video/x-raw,format=I420,width={w},height={hgt},framerate=10/1"
        ));
        let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::I420, w, hgt)
            .build()
            .unwrap();
        let mut buf = gst::Buffer::with_size(info.size()).unwrap();
        {
            let b = buf.get_mut().unwrap();
            b.set_pts(pts);
            // Mid grey: luma 128, neutral chroma.
            b.map_writable().unwrap().fill(128);
        }
        pts += gst::ClockTime::SECOND / 10;
        h.push(buf).unwrap();
        let out = h.pull().unwrap();
        let frame = Frame::from_rgba(&out, w, hgt);
        let grey = frame.rgb(1, 1);
        let grey = u32::from_be_bytes([0xff, grey[0], grey[1], grey[2]]);
        let (x0, x1, y1) = expected_bottom_right(w, hgt, 0.3, 0.03);
        let (mut bx0, mut bx1, mut by1) = (u32::MAX, 0, 0);
        for y in 0..hgt {
            for x in 0..w {
                if frame.diff_at(x, y, grey) > 30 {
                    bx0 = bx0.min(x);
                    bx1 = bx1.max(x + 1);
                    by1 = by1.max(y + 1);
                }
            }
        }
        assert_card_edges((bx0, bx1, by1), (x0, x1, y1), &format!("{w}x{hgt}"));
    }
    assert_eq!(
        overlay
            .property::<gst::Structure>("stats")
            .get::<u64>("card-renders")
            .unwrap(),
        3
    );
}

#[test]
fn a_fading_countdown_card_draws_without_glib_criticals() {
    // GStreamer reports misuse of overlay rectangles (e.g. changing a shared one) as GLib
    // criticals and carries on: catch them.
    let criticals = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = criticals.clone();
    let handler = glib::log_set_handler(
        Some("GStreamer-Video"),
        glib::LogLevels::LEVEL_CRITICAL | glib::LogLevels::LEVEL_WARNING,
        false,
        false,
        move |_, _, message| sink.lock().unwrap().push(message.to_string()),
    );
    let dir = TempDir::new("countdown-fade");
    let schedule = dir.write(
        "s.toml",
        "[[offers]]\nid = \"c\"\ntitle = \"Countdown\"\nprice = \"9 €\"\ncountdown = true\nstart = 0\nend = 3\n",
    );
    let (w, h) = (640, 360);
    let mut run = scheduled_run(&schedule, (w, h), 1000);
    let (x0, x1, y1) = expected_bottom_right(w, h, 0.3, 0.03);
    let region = (x0 as u32 + 10, y1 as u32 - 8, x1 as u32 - 10, y1 as u32 - 3);
    let strengths: Vec<f64> = (0..31).map(|_| run.step().0.strength(region)).collect();
    glib::log_remove_handler(Some("GStreamer-Video"), handler);
    assert!(
        criticals.lock().unwrap().is_empty(),
        "{:?}",
        criticals.lock().unwrap()
    );
    // And the card really was there, fading in and out.
    let full = strengths[10..20].iter().copied().fold(0.0, f64::max);
    assert!(
        full > 0.0 && strengths[5] < full && strengths[30] < full * 0.1,
        "{strengths:?}"
    );
}

#[test]
fn cards_are_blended_when_downstream_takes_any_caps() {
    let dir = TempDir::new("any");
    let schedule = dir.write("s.toml", &offer_toml("y", ""));
    // Like fakesink, appsink, shmsink or proxysink: ANY caps, no allocation meta.
    let (mut h, overlay) = playing_harness(&schedule, |_| {});
    h.push_from_src().unwrap();
    let buf = h.pull().unwrap();
    assert!(
        buf.meta::<gst_video::VideoOverlayCompositionMeta>()
            .is_none(),
        "card only attached as meta that nobody draws"
    );
    let map = buf.map_readable().unwrap();
    let y = &map[..320 * 240];
    assert!(y.iter().any(|&p| p != y[0]), "nothing burnt in");
    let caps = h.sinkpad().unwrap().current_caps().unwrap();
    assert!(
        !caps
            .features(0)
            .unwrap()
            .contains(gst_video::CAPS_FEATURE_META_GST_VIDEO_OVERLAY_COMPOSITION),
        "{caps}"
    );
    let stats = overlay.property::<gst::Structure>("stats");
    assert_eq!(stats.get::<u64>("frames-blended").unwrap(), 1, "{stats}");
}

/// The frame a viewer of the harness output sees: the crop meta's rectangle when the buffer
/// carries one, else all of it.
fn visible_rgba(buf: &gst::Buffer, height: u32) -> Frame {
    let stride = match buf.meta::<gst_video::VideoMeta>() {
        Some(meta) => meta.stride()[0] as usize,
        None => buf.size() / height as usize,
    };
    let (x0, width) = match buf.meta::<gst_video::VideoCropMeta>() {
        Some(crop) => {
            let (x, _, w, _) = crop.rect();
            (x as usize, w)
        }
        None => (0, (stride / 4) as u32),
    };
    let map = buf.map_readable().unwrap();
    let mut data = Vec::new();
    for y in 0..height as usize {
        let row = y * stride + x0 * 4;
        data.extend_from_slice(&map[row..row + width as usize * 4]);
    }
    Frame {
        pts: buf.pts().unwrap(),
        width,
        height,
        data,
    }
}

/// One 640x240 RGBA frame with a card: cut out of a 960x240 one by `videocrop left=320`
/// whose downstream takes crop meta, or made at that size.
fn card_frame(schedule: &str, cropped: bool) -> Frame {
    init();
    let (width, chain) = if cropped {
        (960, "videocrop left=320 ! offeroverlay name=o")
    } else {
        (640, "offeroverlay name=o")
    };
    let mut h = gst_check::Harness::new_parse(chain);
    let bin = h.element().unwrap().downcast::<gst::Bin>().unwrap();
    let overlay = bin.by_name("o").unwrap();
    overlay.set_property("schedule", schedule);
    overlay.set_property("fade-in", 0u32);
    // videocrop only hands on crop meta when downstream takes video meta too.
    h.add_propose_allocation_meta(gst_video::VideoCropMeta::meta_api(), None);
    h.add_propose_allocation_meta(gst_video::VideoMeta::meta_api(), None);
    h.add_src_parse(
        &format!(
            "videotestsrc pattern=solid-color foreground-color={BACKGROUND} ! capsfilter caps=\
             video/x-raw,format=RGBA,width={width},height=240,framerate=10/1"
        ),
        false,
    );
    h.play();
    h.push_from_src().unwrap();
    let buf = h.pull().unwrap();
    let frame = visible_rgba(&buf, 240);
    let _ = bin.set_state(gst::State::Null);
    frame
}

#[test]
fn a_cropped_frame_gets_its_card_in_the_visible_picture() {
    let dir = TempDir::new("crop");
    let schedule = dir.write("s.toml", &offer_toml("c", ""));
    let reference = card_frame(&schedule, false);
    let cropped = card_frame(&schedule, true);
    assert_eq!((cropped.width, cropped.height), (640, 240));
    let expected = reference.card_bbox().expect("card in the reference frame");
    assert_eq!(
        cropped.card_bbox(),
        Some(expected),
        "card not where the viewer sees it"
    );
}
