//! `smart` on open-GOP H.264 (x264 `open-gop`: key frames after the first are recovery-point
//! I frames, not IDR): the re-encoded head ends at the next such I frame and everything from it
//! on is copied, bit-identical as both ffmpeg and GStreamer decode it.

mod common;

use std::path::Path;
use std::process::Command;

use common::{TempDir, check_clip, decode, ffmpeg_source, hybridlive, run};

/// Per-frame MD5 of the video as GStreamer (decodebin) decodes it, in presentation order.
fn gst_decode(file: &Path) -> Vec<String> {
    let out = run(Command::new("gst-launch-1.0")
        .args(["-q", "filesrc"])
        .arg(format!("location={}", file.display()))
        .args(["!", "decodebin", "!", "videoconvert", "!"])
        .args(["video/x-raw,format=I420", "!", "checksumsink", "hash=md5"]));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_owned))
        .collect()
}

/// Cuts `ranges` of `source` in `smart` mode and checks every clip: exact frames, the copied
/// part starting at the first key frame after the clip's start (nothing re-encoded beyond it)
/// and the copy bit-identical under ffmpeg and GStreamer.
fn cut_and_check(source: &Path, ranges: &[(f64, f64)], dir: &TempDir) {
    let out = dir.path("out");
    let mut cmd = hybridlive();
    cmd.arg("clip").arg(source);
    for (s, e) in ranges {
        cmd.args(["--range", &format!("{s}-{e}")]);
    }
    run(cmd.args(["--mode", "smart", "--out"]).arg(&out));
    let src = decode(source);
    let src_gst = gst_decode(source);
    assert_eq!(
        src.len(),
        src_gst.len(),
        "GStreamer and ffmpeg frame counts"
    );
    for &(start, end) in ranges {
        let name = format!(
            "{}_{}_{}_smart.mp4",
            source
                .file_stem()
                .map(|s| s.to_string_lossy())
                .unwrap_or_default(),
            hms(start),
            hms(end)
        );
        let clip = out.join(&name);
        check_clip(source, &clip, "smart", start, end, &dir.0);

        let first = src
            .iter()
            .position(|f| f.time >= start)
            .expect("range in source");
        let key = (first + 1..src.len())
            .find(|&i| src[i].key)
            .expect("a key frame after the start");
        let clip_frames = decode(&clip);
        let copied_from = clip_frames
            .iter()
            .enumerate()
            .position(|(i, f)| f.md5 == src[first + i].md5)
            .unwrap_or(clip_frames.len());
        // A clip with no key frame after its start is re-encoded whole.
        assert_eq!(
            first + copied_from,
            key.min(first + clip_frames.len()),
            "{name}: the copy starts at source frame {}, not at the key frame {key}",
            first + copied_from
        );

        let gst = gst_decode(&clip);
        assert_eq!(
            gst.len(),
            clip_frames.len(),
            "{name}: GStreamer decodes {} frames, ffmpeg {}",
            gst.len(),
            clip_frames.len()
        );
        for (i, md5) in gst.iter().enumerate().skip(copied_from) {
            assert_eq!(
                md5,
                &src_gst[first + i],
                "{name}: frame {i} as GStreamer decodes it differs from the source"
            );
        }
    }
}

/// The time as the CLI writes it in file names (`00-00-02.100`).
fn hms(t: f64) -> String {
    let ms = (t * 1000.0).round() as u64;
    format!(
        "{:02}-{:02}-{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

#[test]
fn ffmpeg_open_gop_cabac_bframes() {
    let dir = TempDir::new("open-gop-ffmpeg");
    let src = dir.path("src.mp4");
    // x264's default preset: CABAC, three reference frames, B-pyramid, weighted prediction
    // (references repeated in the lists), open GOPs every 2 s.
    ffmpeg_source(
        &src,
        9,
        &[
            "-c:v",
            "libx264",
            "-bf",
            "3",
            "-x264-params",
            "open-gop=1:keyint=50:min-keyint=50:scenecut=0",
        ],
        &["-c:a", "aac"],
    );
    // The second clip runs through two more open-GOP key frames, whose leading pictures are
    // copied this time.
    cut_and_check(&src, &[(2.1, 4.5), (4.7, 8.1)], &dir);
}

#[test]
fn ffmpeg_open_gop_slices_many_references() {
    let dir = TempDir::new("open-gop-veryslow");
    let src = dir.path("src.mkv");
    // Up to 16 reference frames and 5 B-frames (more memory management operations and list
    // modifications per frame), strict B-pyramid, four slices per frame (every slice header is
    // rewritten), no audio.
    run(Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg("testsrc2=size=320x240:rate=25:duration=9")
        .args(["-c:v", "libx264", "-preset", "veryslow", "-bf", "5"])
        .args([
            "-x264-params",
            "open-gop=1:keyint=50:min-keyint=50:scenecut=0:slices=4:b-pyramid=strict",
        ])
        .args(["-pix_fmt", "yuv420p"])
        .arg(&src));
    cut_and_check(&src, &[(2.1, 4.5), (4.7, 8.1)], &dir);
}

#[test]
fn gstreamer_open_gop_cavlc_bframes() {
    let dir = TempDir::new("open-gop-gst");
    let src = dir.path("src.mp4");
    // CAVLC: slice data is not byte-aligned after the header, so a header that changes length
    // shifts the whole slice.
    run(Command::new("gst-launch-1.0")
        .args(["-q", "videotestsrc", "num-buffers=225", "pattern=ball", "!"])
        .args(["video/x-raw,width=320,height=240,framerate=25/1", "!"])
        .args([
            "x264enc",
            "bframes=2",
            "b-pyramid=true",
            "cabac=false",
            "key-int-max=50",
            "option-string=open-gop=1:scenecut=0:min-keyint=50",
            "!",
            "h264parse",
            "!",
        ])
        .args(["mp4mux", "name=m", "!", "filesink"])
        .arg(format!("location={}", src.display()))
        .args([
            "audiotestsrc",
            "num-buffers=422",
            "samplesperbuffer=1024",
            "!",
        ])
        .args([
            "audio/x-raw,rate=48000",
            "!",
            "avenc_aac",
            "!",
            "aacparse",
            "!",
            "m.",
        ]));
    cut_and_check(&src, &[(1.3, 2.9), (3.1, 7.7)], &dir);
}
