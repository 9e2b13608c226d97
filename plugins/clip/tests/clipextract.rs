//! clipextract in real pipelines: what a muxer or a file-per-clip bin downstream sees.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, Once};

use gst::prelude::*;

fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().expect("gst init");
        gstclip::plugin_register_static().expect("register clip plugin");
    });
}

/// 6 s of 320x240 at 25 fps, key frames every 2 s, B-frames, AAC, made by ffmpeg.
fn source(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("clipextract-{}-{name}.mp4", std::process::id()));
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg("testsrc2=size=320x240:rate=25:duration=6")
        .args([
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000:duration=6",
        ])
        .args([
            "-c:v", "libx264", "-g", "50", "-bf", "2", "-pix_fmt", "yuv420p",
        ])
        .args(["-c:a", "aac"])
        .arg(&path)
        .status()
        .expect("ffmpeg");
    assert!(status.success());
    path
}

#[derive(Debug, Clone)]
enum Item {
    ClipStart {
        index: u32,
        present_start: u64,
        present_stop: Option<u64>,
    },
    Segment {
        start: u64,
        stop: Option<u64>,
    },
    Buffer {
        pts: u64,
    },
    ClipEnd {
        index: u32,
    },
    Eos,
}

struct Run {
    video: Vec<Item>,
    audio: Vec<Item>,
    stats: gst::Structure,
    warnings: Vec<String>,
}

fn record(sink: &gst::Element, items: Arc<Mutex<Vec<Item>>>) {
    let pad = sink.static_pad("sink").expect("sink pad");
    pad.add_probe(
        gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM,
        move |_, info| {
            let item = match &info.data {
                Some(gst::PadProbeData::Buffer(b)) => b.pts().map(|pts| Item::Buffer {
                    pts: pts.nseconds(),
                }),
                Some(gst::PadProbeData::Event(e)) => match e.view() {
                    gst::EventView::Segment(s) => {
                        let seg = s.segment().downcast_ref::<gst::ClockTime>().cloned();
                        seg.map(|seg| Item::Segment {
                            start: seg.start().map_or(0, |t| t.nseconds()),
                            stop: seg.stop().map(|t| t.nseconds()),
                        })
                    }
                    gst::EventView::Eos(_) => Some(Item::Eos),
                    gst::EventView::CustomDownstream(c) => {
                        let s = c.structure().expect("structure");
                        let index = s.get::<u32>("index").expect("index");
                        match s.name().as_str() {
                            gstclip::CLIP_START_EVENT => Some(Item::ClipStart {
                                index,
                                present_start: s.get("present-start").expect("present-start"),
                                present_stop: s.get("present-stop").ok(),
                            }),
                            gstclip::CLIP_END_EVENT => Some(Item::ClipEnd { index }),
                            _ => None,
                        }
                    }
                    _ => None,
                },
                _ => None,
            };
            if let Some(item) = item {
                items.lock().expect("lock").push(item);
            }
            gst::PadProbeReturn::Ok
        },
    );
}

fn run(src: &Path, props: &str) -> Result<Run, String> {
    init();
    // The sinks do not preroll (async=false): clipextract passes a clip's video from the key
    // frame before it and its audio from the clip's start, and two prerolling sinks behind
    // 1 s queues tied the streams together (the video sink waited for the audio one, whose
    // data qtdemux could not reach past the full video queue: a stall once in a few hundred
    // runs). What these tests check is the element's output, not the sinks' preroll.
    let desc = format!(
        "filesrc location={} ! qtdemux name=d \
         d.video_0 ! queue ! h264parse ! c.sink_0 \
         d.audio_0 ! queue ! aacparse ! c.sink_1 \
         clipextract name=c {props} \
         c.src_0 ! fakesink name=v sync=false async=false \
         c.src_1 ! fakesink name=a sync=false async=false",
        src.display()
    );
    let pipeline = gst::parse::launch(&desc)
        .map_err(|e| e.to_string())?
        .downcast::<gst::Pipeline>()
        .map_err(|_| "not a pipeline".to_owned())?;
    let video = Arc::new(Mutex::new(Vec::new()));
    let audio = Arc::new(Mutex::new(Vec::new()));
    record(&pipeline.by_name("v").expect("v"), video.clone());
    record(&pipeline.by_name("a").expect("a"), audio.clone());
    let bus = pipeline.bus().expect("bus");
    let started = pipeline.set_state(gst::State::Playing);
    let mut result = Ok(());
    if started.is_err() {
        result = Err("state change failed".to_owned());
    }
    let mut warnings = Vec::new();
    // Ends with EOS or an error; 30 s without any message is a stall, not a success.
    let mut ended = false;
    for msg in bus.iter_timed(gst::ClockTime::from_seconds(30)) {
        match msg.view() {
            gst::MessageView::Eos(_) => {
                ended = true;
                break;
            }
            gst::MessageView::Warning(w) => warnings.push(w.error().to_string()),
            gst::MessageView::Error(e) => {
                ended = true;
                result = Err(format!("{} {:?}", e.error(), e.debug()));
                break;
            }
            _ => {}
        }
    }
    if !ended && result.is_ok() {
        result = Err("stalled: no EOS and no message for 30 s".to_owned());
    }
    let stats = pipeline
        .by_name("c")
        .expect("c")
        .property::<gst::Structure>("stats");
    let _ = pipeline.set_state(gst::State::Null);
    result?;
    let video = video.lock().expect("lock").clone();
    let audio = audio.lock().expect("lock").clone();
    Ok(Run {
        video,
        audio,
        stats,
        warnings,
    })
}

/// The items of each clip, split at clip-start.
fn clips(items: &[Item]) -> Vec<Vec<Item>> {
    let mut out: Vec<Vec<Item>> = Vec::new();
    for i in items {
        if matches!(i, Item::ClipStart { .. }) {
            out.push(Vec::new());
        }
        if let Some(last) = out.last_mut() {
            last.push(i.clone());
        }
    }
    out
}

const MS: u64 = 1_000_000;

#[test]
fn two_clips_each_zero_based_with_markers() {
    let src = source("two");
    let run = run(&src, "ranges=1.3-2.1;3.3-4.1 mode=exact").expect("pipeline");
    let _ = std::fs::remove_file(&src);
    assert!(
        matches!(run.video.last(), Some(Item::Eos)),
        "no EOS after the last clip"
    );
    assert!(matches!(run.audio.last(), Some(Item::Eos)));
    let video = clips(&run.video);
    assert_eq!(video.len(), 2, "{:?}", run.video);
    for (n, clip) in video.iter().enumerate() {
        let Item::ClipStart {
            index,
            present_start,
            present_stop,
        } = clip[0]
        else {
            unreachable!()
        };
        assert_eq!(index as usize, n);
        let Some(Item::Segment { start, stop }) = clip
            .iter()
            .find(|i| matches!(i, Item::Segment { .. }))
            .cloned()
        else {
            panic!("clip {n} without segment");
        };
        assert_eq!(stop, None, "muxer-friendly segment has no stop");
        let pts: Vec<u64> = clip
            .iter()
            .filter_map(|i| match i {
                Item::Buffer { pts } => Some(*pts),
                _ => None,
            })
            .collect();
        // The clip starts on its key frame at running time zero (the segment start, which is
        // the decoder delay of the source: two frames here) ...
        assert_eq!(
            pts[0], start,
            "clip {n}: first frame is not at the segment start"
        );
        assert!(
            start <= 200 * MS,
            "clip {n}: timestamps do not start near zero: {start}"
        );
        // ... the key frame is at 0 s / 2 s, so the requested start lies 1.3 s after it ...
        assert_eq!(present_start - start, 1300 * MS, "clip {n}: present-start");
        assert_eq!(
            present_stop,
            Some(present_start + 800 * MS),
            "clip {n}: present-stop"
        );
        // ... and nothing from beyond the clip's decode needs is copied.
        assert!(pts.iter().all(|&p| p < present_start + 800 * MS + 200 * MS));
        assert!(
            matches!(clip.last(), Some(Item::ClipEnd { index: i }) if *i as usize == n) || n == 1
        );
    }
    let audio = clips(&run.audio);
    assert_eq!(audio.len(), 2);
    for (n, clip) in audio.iter().enumerate() {
        let Item::ClipStart { present_start, .. } = clip[0] else {
            unreachable!()
        };
        let first = clip.iter().find_map(|i| match i {
            Item::Buffer { pts } => Some(*pts),
            _ => None,
        });
        let first = first.expect("audio buffers");
        // The first audio frame contains the first presented video frame's instant.
        assert!(
            first <= present_start && present_start - first < 22 * MS,
            "clip {n}: audio starts at {first}, video at {present_start}"
        );
    }
    assert_eq!(run.stats.get::<u32>("clips-finished").ok(), Some(2));
    // Stopped after the last clip instead of reading the whole file (150 frames + 282 audio).
    let frames_in = run.stats.get::<u64>("frames-in").unwrap_or(0);
    assert!(frames_in < 380, "read {frames_in} frames");
}

/// The first clip's video: its presentation start and stop as the clip-start event
/// announces them, and the segment (start, stop) it was sent with.
struct FirstClip {
    present_start: u64,
    present_stop: Option<u64>,
    segment: Option<(u64, Option<u64>)>,
}

/// Cuts a fresh source named after `name` with the element properties `props`.
fn first_video_clip(name: &str, props: &str) -> FirstClip {
    let src = source(name);
    let run = run(&src, props).expect("pipeline");
    let _ = std::fs::remove_file(&src);
    let clip = &clips(&run.video)[0];
    let Item::ClipStart {
        present_start,
        present_stop,
        ..
    } = clip[0]
    else {
        unreachable!()
    };
    let segment = clip.iter().find_map(|i| match i {
        Item::Segment { start, stop } => Some((*start, *stop)),
        _ => None,
    });
    FirstClip {
        present_start,
        present_stop,
        segment,
    }
}

#[test]
fn exact_segment_for_players() {
    let FirstClip {
        present_start,
        present_stop,
        segment,
    } = first_video_clip("seg", "ranges=1.3-2.1 mode=exact exact-segment=true");
    assert_eq!(segment, Some((present_start, present_stop)));
}

#[test]
fn keyframe_mode_starts_on_the_key_frame() {
    let FirstClip {
        present_start,
        present_stop,
        segment,
    } = first_video_clip("kf", "ranges=3.3-4.1 mode=keyframe");
    assert_eq!(
        segment.map(|(start, _)| start),
        Some(present_start),
        "presentation starts on the key frame"
    );
    assert_eq!(present_stop, None);
}

#[test]
fn bad_ranges_are_element_errors() {
    let src = source("bad");
    for (ranges, needle) in [
        ("ranges=5-3", "empty range"),
        ("ranges=1-3;2-4", "overlap"),
        ("ranges=abc", "invalid"),
        ("ranges-file=/nonexistent/ranges.txt", "ranges file"),
        // Copied frames cannot be cropped; a filter that does not parse is named.
        (
            "ranges=1-2 mode=smart reencode-filter=videoflip",
            "needs mode=reencode",
        ),
        (
            "ranges=1-2 mode=reencode reencode-filter=nosuchfilter",
            "invalid 'reencode-filter'",
        ),
    ] {
        let err = run(&src, ranges)
            .err()
            .unwrap_or_else(|| panic!("{ranges} accepted"));
        assert!(err.to_lowercase().contains(needle), "{ranges}: {err}");
    }
    let _ = std::fs::remove_file(&src);
}

/// 6 s of 320x240 H.264 byte-stream at 25 fps with a key frame every second and B-frames, as
/// h264parse hands it on. `sets_once`: the SPS and PPS only in front of the first key frame,
/// as a camera or a transport stream joined at its start sends them; otherwise nowhere.
fn byte_stream(sets_once: bool) -> (gst::Caps, Vec<gst::Buffer>) {
    init();
    let pipeline = gst::parse::launch(
        "videotestsrc num-buffers=150 ! video/x-raw,width=320,height=240,framerate=25/1 ! \
         x264enc key-int-max=25 bframes=2 speed-preset=ultrafast ! h264parse ! \
         video/x-h264,stream-format=byte-stream,alignment=au ! appsink name=out sync=false",
    )
    .expect("encoder pipeline")
    .downcast::<gst::Pipeline>()
    .expect("pipeline");
    let sink = pipeline
        .by_name("out")
        .expect("appsink")
        .downcast::<gst_app::AppSink>()
        .expect("appsink");
    pipeline.set_state(gst::State::Playing).expect("encode");
    let mut caps = None;
    let mut aus = Vec::new();
    while let Ok(sample) = sink.pull_sample() {
        caps = sample.caps_owned();
        let buffer = sample.buffer_owned().expect("buffer");
        let data = buffer.map_readable().expect("map").to_vec();
        let keep_sets = sets_once && aus.is_empty();
        let mut stripped = Vec::new();
        for nal in hybridlive_stamp::NalUnits::new(&data, hybridlive_stamp::Framing::AnnexB) {
            if keep_sets || !matches!(nal.header() & 0x1f, 7 | 8) {
                stripped.extend_from_slice(&[0, 0, 0, 1]);
                stripped.extend_from_slice(nal.data());
            }
        }
        let mut out = gst::Buffer::from_mut_slice(stripped);
        buffer
            .copy_into(
                out.get_mut().expect("writable"),
                gst::BufferCopyFlags::FLAGS | gst::BufferCopyFlags::TIMESTAMPS,
                ..,
            )
            .expect("copy timestamps");
        // x264enc starts its segment 1000 hours in (to keep decode times positive).
        let segment = sample
            .segment()
            .and_then(|s| s.downcast_ref::<gst::ClockTime>().cloned());
        if let Some(segment) = segment {
            let out = out.get_mut().expect("writable");
            out.set_pts(buffer.pts().and_then(|t| segment.to_running_time(t)));
            out.set_dts(buffer.dts().and_then(|t| segment.to_running_time(t)));
        }
        aus.push(out);
    }
    let _ = pipeline.set_state(gst::State::Null);
    assert_eq!(aus.len(), 150, "encoded frames");
    (caps.expect("caps"), aus)
}

/// Cuts `aus` with clipextract and returns the clip's bytes and the element's stats.
fn cut(
    caps: &gst::Caps,
    aus: &[gst::Buffer],
    props: &str,
) -> Result<(Vec<u8>, gst::Structure), String> {
    cut_on(caps, aus, props, |c| {
        c.request_pad_simple("sink_%u").expect("sink pad")
    })
}

/// [`cut`] through the sink pad `request` gets from the clipextract.
fn cut_on(
    caps: &gst::Caps,
    aus: &[gst::Buffer],
    props: &str,
    request: impl FnOnce(&gst::Element) -> gst::Pad,
) -> Result<(Vec<u8>, gst::Structure), String> {
    init();
    let pipeline = gst::parse::launch(&format!(
        "appsrc name=in format=time clipextract name=c {props} appsink name=out sync=false"
    ))
    .map_err(|e| e.to_string())?
    .downcast::<gst::Pipeline>()
    .map_err(|_| "not a pipeline".to_owned())?;
    let src = pipeline
        .by_name("in")
        .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
        .expect("appsrc");
    src.set_caps(Some(caps));
    let clipextract = pipeline.by_name("c").expect("clipextract");
    let sink_pad = request(&clipextract);
    let src_pad = clipextract
        .static_pad(&sink_pad.name().replace("sink_", "src_"))
        .expect("src pad of the same number");
    src.static_pad("src")
        .expect("appsrc pad")
        .link(&sink_pad)
        .expect("link appsrc");
    src_pad
        .link(
            &pipeline
                .by_name("out")
                .expect("appsink")
                .static_pad("sink")
                .expect("sink"),
        )
        .expect("link appsink");
    let bytes = Arc::new(Mutex::new(Vec::new()));
    let sink_bytes = bytes.clone();
    let sink = pipeline
        .by_name("out")
        .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
        .expect("appsink");
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                if let Some(map) = sample.buffer().and_then(|b| b.map_readable().ok()) {
                    sink_bytes.lock().expect("lock").extend_from_slice(&map);
                }
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| e.to_string())?;
    for au in aus {
        // Refused once the last clip is out.
        if src.push_buffer(au.clone()).is_err() {
            break;
        }
    }
    let _ = src.end_of_stream();
    let bus = pipeline.bus().expect("bus");
    let mut result = Err("no EOS within 60 s".to_owned());
    for msg in bus.iter_timed(gst::ClockTime::from_seconds(60)) {
        match msg.view() {
            gst::MessageView::Eos(_) => {
                result = Ok(());
                break;
            }
            gst::MessageView::Error(e) => {
                result = Err(format!("{} {:?}", e.error(), e.debug()));
                break;
            }
            _ => {}
        }
    }
    let stats = pipeline
        .by_name("c")
        .expect("c")
        .property::<gst::Structure>("stats");
    let _ = pipeline.set_state(gst::State::Null);
    result?;
    let bytes = std::mem::take(&mut *bytes.lock().expect("lock"));
    Ok((bytes, stats))
}

/// Decodes an H.264 byte-stream with ffmpeg: the frames decoded, and what ffmpeg complained
/// about.
fn decode(bytes: &[u8], name: &str) -> (u64, String) {
    let path = std::env::temp_dir().join(format!("clipextract-{}-{name}.h264", std::process::id()));
    std::fs::write(&path, bytes).expect("write clip");
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"])
        .arg(&path)
        .output()
        .expect("ffprobe");
    let _ = std::fs::remove_file(&path);
    let frames = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    (frames, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn byte_stream_clips_decode_when_parameter_sets_came_once() {
    let (caps, aus) = byte_stream(true);
    for mode in ["exact", "keyframe", "smart", "reencode"] {
        let (bytes, stats) = cut(&caps, &aus, &format!("ranges=3.5-5.0 mode={mode}"))
            .unwrap_or_else(|e| panic!("{mode}: {e}"));
        let copied = stats.get::<u64>("frames-copied").unwrap_or(0);
        let encoded = stats.get::<u64>("frames-encoded").unwrap_or(0);
        if mode == "smart" || mode == "reencode" {
            assert!(encoded > 0, "{mode}: nothing re-encoded: {stats}");
        }
        let (decoded, errors) = decode(&bytes, mode);
        assert!(errors.trim().is_empty(), "{mode}: ffmpeg: {errors}");
        assert!(decoded > 0, "{mode}: no frame decodes");
        assert_eq!(
            decoded,
            copied + encoded,
            "{mode}: frames decoded vs output: {stats}"
        );
    }
}

#[test]
fn a_re_encode_that_decodes_nothing_is_an_error() {
    let (caps, aus) = byte_stream(false);
    for mode in ["smart", "reencode"] {
        let err = cut(&caps, &aus, &format!("ranges=3.5-5.0 mode={mode}"))
            .err()
            .unwrap_or_else(|| panic!("{mode}: a clip without parameter sets was re-encoded"));
        assert!(err.contains("no picture"), "{mode}: {err}");
    }
}

#[test]
fn a_released_request_pad_leaves_no_stream_behind() {
    let (caps, aus) = byte_stream(true);
    let (bytes, stats) = cut_on(&caps, &aus, "ranges=3.5-5.0", |c| {
        let released = c.request_pad_simple("sink_%u").expect("sink_0");
        let used = c.request_pad_simple("sink_%u").expect("sink_1");
        c.release_request_pad(&released);
        used
    })
    .expect("a clip through the remaining pad");
    assert_eq!(stats.get::<u32>("clips-finished").ok(), Some(1), "{stats}");
    let (decoded, errors) = decode(&bytes, "released");
    assert!(
        decoded > 0 && errors.trim().is_empty(),
        "{decoded} frames: {errors}"
    );
}

/// What came out of a src pad of clipextract, recorded in order.
#[derive(Debug, Clone, PartialEq)]
enum Out {
    Segment,
    Buffer(u64),
    Gap(u64, Option<u64>),
    /// Answers of the src pad's POSITION and DURATION queries (ms).
    Query(Option<u64>, Option<u64>),
}

/// Feeds one audio stream (20 ms frames from 0 to `until_ms`) into clipextract with `ranges`,
/// sending GAP events (stream time ms, duration ms) before the frame at their time, and
/// returns what came out.
fn audio_with_gaps(ranges: &str, until_ms: u64, gaps: &[(u64, u64)]) -> Vec<Out> {
    audio_fed(ranges, until_ms, gaps, &[])
}

/// [`audio_with_gaps`], also asking the src pad for its position and duration before the
/// frames at `queries` (ms).
fn audio_fed(ranges: &str, until_ms: u64, gaps: &[(u64, u64)], queries: &[u64]) -> Vec<Out> {
    init();
    let c = gst::ElementFactory::make("clipextract")
        .property_from_str("ranges", ranges)
        .build()
        .expect("clipextract");
    let sink = c.request_pad_simple("sink_%u").expect("sink pad");
    // Answers like a demuxer: in the source's time.
    let fed_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let answer_ms = fed_ms.clone();
    let feed = gst::Pad::builder(gst::PadDirection::Src)
        .name("feed")
        .query_function(move |_, _, query| match query.view_mut() {
            gst::QueryViewMut::Position(q) => {
                let ms = answer_ms.load(std::sync::atomic::Ordering::SeqCst);
                q.set(gst::ClockTime::from_mseconds(ms));
                true
            }
            gst::QueryViewMut::Duration(q) => {
                q.set(gst::ClockTime::from_mseconds(until_ms));
                true
            }
            _ => false,
        })
        .build();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (on_buffer, on_event) = (seen.clone(), seen.clone());
    let record = gst::Pad::builder(gst::PadDirection::Sink)
        .name("record")
        .chain_function(move |_, _, buffer| {
            let pts = buffer.pts().map_or(0, |t| t.mseconds());
            on_buffer.lock().expect("lock").push(Out::Buffer(pts));
            Ok(gst::FlowSuccess::Ok)
        })
        .event_function(move |_, _, event| {
            match event.view() {
                gst::EventView::Segment(_) => on_event.lock().expect("lock").push(Out::Segment),
                gst::EventView::Gap(g) => {
                    let (ts, duration) = g.get();
                    let gap = Out::Gap(ts.mseconds(), duration.map(|d| d.mseconds()));
                    on_event.lock().expect("lock").push(gap);
                }
                _ => {}
            }
            true
        })
        .build();
    feed.link(&sink).expect("link feed");
    c.static_pad("src_0")
        .expect("src_0")
        .link(&record)
        .expect("link record");
    feed.set_active(true).expect("activate");
    record.set_active(true).expect("activate");
    c.set_state(gst::State::Playing).expect("play");
    feed.push_event(gst::event::StreamStart::new("audio"));
    feed.push_event(gst::event::Caps::new(
        &gst::Caps::builder("audio/mpeg")
            .field("mpegversion", 4i32)
            .field("rate", 48000i32)
            .field("channels", 1i32)
            .build(),
    ));
    feed.push_event(gst::event::Segment::new(&gst::FormattedSegment::<
        gst::ClockTime,
    >::new()));
    let src = c.static_pad("src_0").expect("src_0");
    for ms in (0..until_ms).step_by(20) {
        if queries.contains(&ms) {
            let position = src.query_position::<gst::ClockTime>().map(|t| t.mseconds());
            let duration = src.query_duration::<gst::ClockTime>().map(|t| t.mseconds());
            seen.lock()
                .expect("lock")
                .push(Out::Query(position, duration));
        }
        for &(at, duration) in gaps.iter().filter(|g| g.0 == ms) {
            feed.push_event(
                gst::event::Gap::builder(gst::ClockTime::from_mseconds(at))
                    .duration(gst::ClockTime::from_mseconds(duration))
                    .build(),
            );
        }
        let mut buffer = gst::Buffer::with_size(16).expect("buffer");
        {
            let b = buffer.get_mut().expect("writable");
            b.set_pts(gst::ClockTime::from_mseconds(ms));
            b.set_duration(gst::ClockTime::from_mseconds(20));
        }
        if feed.push(buffer).is_err() {
            break;
        }
        fed_ms.store(ms + 20, std::sync::atomic::Ordering::SeqCst);
    }
    let _ = c.set_state(gst::State::Null);
    std::mem::take(&mut *seen.lock().expect("lock"))
}

#[test]
fn gaps_go_out_in_clip_time_and_only_inside_clips() {
    // Clip 1.0-2.0 s: the audio clip starts with the frame at 1.0 s (clip time 0). Gaps at
    // 0.5 s (before the clip), 1.5 s (inside, 0.2 s) and 1.9 s (0.3 s, cut at the end).
    let out = audio_with_gaps("1.0-2.0", 3000, &[(500, 100), (1500, 200), (1900, 300)]);
    let gaps: Vec<&Out> = out.iter().filter(|o| matches!(o, Out::Gap(..))).collect();
    assert_eq!(
        gaps,
        [&Out::Gap(500, Some(200)), &Out::Gap(900, Some(100))],
        "{out:?}"
    );
    let segment = out.iter().position(|o| *o == Out::Segment);
    let first_gap = out.iter().position(|o| matches!(o, Out::Gap(..)));
    assert!(
        segment < first_gap,
        "gap before the clip's segment: {out:?}"
    );
    // In order with the frames: after the frame before 1.5 s, before the one at 1.5 s.
    let at = first_gap.expect("gap");
    assert_eq!(out[at - 1], Out::Buffer(480), "{out:?}");
    assert_eq!(out[at + 1], Out::Buffer(500), "{out:?}");
}

#[test]
fn ranges_past_the_end_are_named() {
    let src = source("past");
    // One clip in the 6 s file and one past its end: the clip is cut, the other named.
    let run = run(&src, "ranges=1.3-2.1;10-20").expect("pipeline");
    assert_eq!(run.stats.get::<u32>("clips-finished").ok(), Some(1));
    let named: Vec<&String> = run
        .warnings
        .iter()
        .filter(|w| w.contains("00:00:10.000-00:00:20.000"))
        .collect();
    assert_eq!(named.len(), 1, "{:?}", run.warnings);
    assert!(named[0].contains("ended first"), "{}", named[0]);
    // Nothing to cut at all: an error, not an empty output.
    let err = run_err(&src, "ranges=10-20");
    let _ = std::fs::remove_file(&src);
    assert!(err.contains("00:00:10.000-00:00:20.000"), "{err}");
    assert!(
        err.contains("00:00:05."),
        "names where the stream ends: {err}"
    );
}

fn run_err(src: &Path, props: &str) -> String {
    match run(src, props) {
        Ok(_) => panic!("{props} gave no error"),
        Err(e) => e,
    }
}

#[test]
fn position_and_duration_are_in_clip_time() {
    // Clip 1.0-2.0 s of 20 ms audio frames: before the frame at 1.5 s, the frames up to
    // 1.5 s are out: 0.5 s into a 1 s clip.
    let out = audio_fed("1.0-2.0", 3000, &[], &[1500]);
    let answers: Vec<&Out> = out.iter().filter(|o| matches!(o, Out::Query(..))).collect();
    assert_eq!(answers, [&Out::Query(Some(500), Some(1000))], "{out:?}");
}

#[test]
fn a_flushing_seek_cuts_again_from_the_new_position() {
    let src = source("seek");
    init();
    let pipeline = gst::parse::launch(&format!(
        "filesrc location={} ! qtdemux name=d \
         d.video_0 ! queue ! h264parse ! c.sink_0 \
         d.audio_0 ! queue ! aacparse ! c.sink_1 \
         clipextract name=c ranges=3.3-4.1 \
         c.src_0 ! fakesink name=v sync=false c.src_1 ! fakesink name=a sync=false",
        src.display()
    ))
    .expect("pipeline")
    .downcast::<gst::Pipeline>()
    .expect("pipeline");
    let video = Arc::new(Mutex::new(Vec::new()));
    record(&pipeline.by_name("v").expect("v"), video.clone());
    let bus = pipeline.bus().expect("bus");
    pipeline.set_state(gst::State::Paused).expect("pause");
    let prerolled = bus.timed_pop_filtered(
        gst::ClockTime::from_seconds(30),
        &[gst::MessageType::AsyncDone, gst::MessageType::Error],
    );
    assert!(
        matches!(
            prerolled.as_ref().map(|m| m.view()),
            Some(gst::MessageView::AsyncDone(_))
        ),
        "{prerolled:?}"
    );
    // Back to the start, while both streams' threads are busy.
    pipeline
        .seek_simple(gst::SeekFlags::FLUSH, gst::ClockTime::ZERO)
        .expect("seek");
    pipeline.set_state(gst::State::Playing).expect("play");
    let end = bus.timed_pop_filtered(
        gst::ClockTime::from_seconds(30),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    );
    let _ = pipeline.set_state(gst::State::Null);
    let _ = std::fs::remove_file(&src);
    assert!(
        matches!(
            end.as_ref().map(|m| m.view()),
            Some(gst::MessageView::Eos(_))
        ),
        "{end:?}"
    );
    // The clip after the seek is whole: from its key frame at 2 s to the end at 4.1 s.
    let video = video.lock().expect("lock").clone();
    let clips = clips(&video);
    let last = clips.last().expect("a clip after the seek");
    let Some(Item::ClipStart {
        present_stop: Some(stop),
        ..
    }) = last.first().cloned()
    else {
        panic!("{last:?}")
    };
    let pts: Vec<u64> = last
        .iter()
        .filter_map(|i| match i {
            Item::Buffer { pts } => Some(*pts),
            _ => None,
        })
        .collect();
    let segment_start = last.iter().find_map(|i| match i {
        Item::Segment { start, .. } => Some(*start),
        _ => None,
    });
    assert_eq!(pts.first().copied(), segment_start, "{last:?}");
    assert!(
        pts.iter().max().is_some_and(|&p| p + 40 * MS >= stop),
        "{last:?}"
    );
    // 2.0-4.1 s less the B-frames before 3.3 s that nothing needs.
    assert!(pts.len() >= 40, "{} frames: {last:?}", pts.len());
}
