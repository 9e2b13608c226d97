//! What players present of an `exact` clip: ffmpeg applies the MP4 edit list hybridlive writes
//! (checked frame by frame in `sources.rs`); this checks GStreamer's own playback (`playbin`:
//! qtdemux turns the edit list into a segment, decoders drop what falls outside it).

mod common;

use std::path::Path;

use common::{TempDir, decode, ffmpeg_source, hybridlive};
use gst::prelude::*;

/// Stream times (ns) of the video frames and the audio span `playbin` presents.
struct Presented {
    video: Vec<u64>,
    audio: Option<(u64, u64)>,
}

fn sink(
    kind: &'static str,
    out: std::sync::Arc<std::sync::Mutex<Vec<(u64, u64)>>>,
) -> gst::Element {
    let appsink = gst_app::AppSink::builder().sync(false).build();
    appsink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |s| {
                let sample = s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let seg = sample
                    .segment()
                    .and_then(|s| s.downcast_ref::<gst::ClockTime>().cloned());
                if let (Some(seg), Some(b)) = (seg, sample.buffer())
                    && let Some(pts) = b.pts()
                    && let Some(t) = seg.to_stream_time(pts)
                {
                    let d = b.duration().map_or(0, |d| d.nseconds());
                    out.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((t.nseconds(), d));
                }
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    appsink.set_property("name", kind);
    appsink.upcast()
}

fn play(file: &Path) -> Presented {
    gst::init().expect("gst init");
    let video = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let audio = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let playbin = gst::ElementFactory::make("playbin")
        .property(
            "uri",
            glib_uri(&std::fs::canonicalize(file).expect("canonical path")),
        )
        .property("video-sink", sink("video", video.clone()))
        .property("audio-sink", sink("audio", audio.clone()))
        .build()
        .expect("playbin");
    playbin.set_state(gst::State::Playing).expect("play");
    let bus = playbin.bus().expect("bus");
    for msg in bus.iter_timed(gst::ClockTime::from_seconds(60)) {
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => panic!("playbin: {} {:?}", e.error(), e.debug()),
            _ => {}
        }
    }
    let _ = playbin.set_state(gst::State::Null);
    let video: Vec<u64> = video
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|&(t, _)| t)
        .collect();
    let audio = audio.lock().unwrap_or_else(|e| e.into_inner());
    let span = audio
        .first()
        .zip(audio.last())
        .map(|(f, l)| (f.0, l.0 + l.1));
    Presented { video, audio: span }
}

fn glib_uri(path: &Path) -> String {
    format!("file://{}", path.display())
}

fn cut(src: &Path, mode: &str, start: f64, end: f64, dir: &TempDir) -> std::path::PathBuf {
    let out = dir.path(&format!("out-{mode}"));
    let result = hybridlive()
        .arg("clip")
        .arg(src)
        .args([
            "--range",
            &format!("{start}-{end}"),
            "--mode",
            mode,
            "--out",
        ])
        .arg(&out)
        .output()
        .expect("run hybridlive");
    assert!(result.status.success(), "{mode}");
    std::fs::read_dir(&out)
        .expect("out")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "mp4"))
        .expect("clip")
}

#[test]
fn gstreamer_playback_of_exact_and_smart_clips() {
    let dir = TempDir::new("playback");
    let src = dir.path("src.mp4");
    ffmpeg_source(
        &src,
        8,
        &["-c:v", "libx264", "-g", "50", "-bf", "3"],
        &["-c:a", "aac"],
    );
    let (start, end) = (3.3, 5.1);
    let frames: Vec<f64> = decode(&src)
        .iter()
        .map(|f| f.time)
        .filter(|&t| t >= start && t < end)
        .collect();
    let expected = frames.len();
    // A clip starts on its first frame (here 20 ms after the requested start): every track
    // starts there, so a range starting between frames keeps audio and video together.
    let total = ((end - frames.first().copied().unwrap_or(start)) * 1e9) as u64;

    // Both start on the requested frame, at 0 (frames are 40 ms apart; the range starts
    // 20 ms before one).
    for mode in ["exact", "smart"] {
        let shown = play(&cut(&src, mode, start, end, &dir));
        let first = shown.video.first().copied().unwrap_or(u64::MAX);
        assert!(
            first <= 20_000_000,
            "{mode}: first frame shown at {first} ns"
        );
        let (a_start, _) = shown.audio.expect("audio presented");
        assert!(a_start <= 1_000_000, "{mode}: audio starts at {a_start} ns");
        if mode == "smart" {
            // The whole clip. (`exact`: GStreamer 1.22's qtdemux ends an edit whose media
            // time skips a long GOP head at the clip's next key frame, ffmpeg's own
            // `-ss -c copy` files included; see docs/elements.md, clipextract.)
            assert_eq!(shown.video.len(), expected, "{mode}: frames shown");
            let (_, a_end) = shown.audio.expect("audio presented");
            assert!(
                a_end.abs_diff(total) <= 25_000_000,
                "{mode}: audio ends at {a_end} ns, clip lasts {total} ns"
            );
        }
    }
}
