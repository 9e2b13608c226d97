//! Test media made at test time, and independent checks with ffmpeg/ffprobe.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

pub use hybridlive_testkit::TempDir;

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// ffmpeg with test sources: 320x240 testsrc2 at 25 fps and a sine, `seconds` long.
pub fn ffmpeg_source(out: &Path, seconds: u32, video_args: &[&str], audio_args: &[&str]) {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=size=320x240:rate=25:duration={seconds}"))
        .args(["-f", "lavfi", "-i"])
        .arg(format!(
            "sine=frequency=440:sample_rate=48000:duration={seconds}"
        ))
        .args(video_args)
        .args(["-pix_fmt", "yuv420p"])
        .args(audio_args)
        .arg(out);
    run(&mut cmd);
}

/// The CLI under test.
pub fn hybridlive() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hybridlive"))
}

/// One decoded video frame: presentation time relative to the file's start, and its hash.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedFrame {
    pub time: f64,
    pub key: bool,
    pub md5: String,
}

fn ffprobe_value(file: &Path, entries: &str) -> String {
    let out = run(Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", entries, "-of", "csv=p=0"])
        .arg(file));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The file's start time as players show it (ffprobe format start_time).
pub fn start_time(file: &Path) -> f64 {
    ffprobe_value(file, "format=start_time")
        .parse()
        .unwrap_or(0.0)
}

/// Format duration (seconds).
pub fn duration(file: &Path) -> f64 {
    ffprobe_value(file, "format=duration")
        .parse()
        .unwrap_or(0.0)
}

/// Start time of the first stream of a kind (`v` or `a`).
pub fn stream_start(file: &Path, kind: &str) -> f64 {
    let out = run(Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            kind,
            "-show_entries",
            "stream=start_time",
        ])
        .args(["-of", "csv=p=0"])
        .arg(file));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

/// Every decoded video frame of `file` in presentation order, times relative to the file's
/// start, as ffmpeg decodes them (edit lists applied).
pub fn decode(file: &Path) -> Vec<DecodedFrame> {
    let origin = start_time(file);
    let probe = run(Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
        .args([
            "frame=best_effort_timestamp_time,key_frame",
            "-of",
            "csv=p=0",
        ])
        .arg(file));
    let frames: Vec<(f64, bool)> = String::from_utf8_lossy(&probe.stdout)
        .lines()
        .filter_map(|l| {
            let mut it = l.split(',');
            let key = it.next()?.trim() == "1";
            let t: f64 = it.next()?.trim().parse().ok()?;
            Some((t - origin, key))
        })
        .collect();
    let md5 = run(Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(file)
        .args(["-map", "0:v:0", "-f", "framemd5", "-"]));
    let hashes: Vec<String> = String::from_utf8_lossy(&md5.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit(',').next().map(|h| h.trim().to_owned()))
        .collect();
    assert_eq!(
        frames.len(),
        hashes.len(),
        "ffprobe and ffmpeg disagree on the frame count of {}",
        file.display()
    );
    frames
        .into_iter()
        .zip(hashes)
        .map(|((time, key), md5)| DecodedFrame { time, key, md5 })
        .collect()
}

/// Decoding errors ffmpeg reports for `file` (empty when clean).
pub fn decode_errors(file: &Path) -> String {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(file)
        .args(["-f", "null", "-"])
        .output()
        .expect("ffmpeg");
    let mut s = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        s.push_str("(ffmpeg failed)");
    }
    s
}

/// PSNR (dB) of each frame of `clip` against frames `first..first+n` of `source`.
pub fn psnr(clip: &Path, source: &Path, first: usize, n: usize, dir: &Path) -> Vec<f64> {
    let stats = dir.join(format!(
        "psnr-{}.log",
        clip.file_name().unwrap_or_default().to_string_lossy()
    ));
    let filter = format!(
        "[1:v]trim=start_frame={first}:end_frame={},setpts=PTS-STARTPTS[r];\
         [0:v]setpts=PTS-STARTPTS[c];[c][r]psnr=stats_file={}",
        first + n,
        stats.display()
    );
    run(Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(clip)
        .arg("-i")
        .arg(source)
        .args(["-lavfi", &filter, "-f", "null", "-"]));
    std::fs::read_to_string(&stats)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|kv| kv.strip_prefix("psnr_avg:"))
                .map(|v| {
                    if v == "inf" {
                        f64::INFINITY
                    } else {
                        v.parse().unwrap_or(0.0)
                    }
                })
        })
        .collect()
}

/// What a mode must produce for `[start, end)` of `source`.
pub fn check_clip(source: &Path, clip: &Path, mode: &str, start: f64, end: f64, dir: &Path) {
    let errors = decode_errors(clip);
    assert!(
        errors.is_empty(),
        "{mode}: {} does not decode cleanly: {errors}",
        clip.display()
    );
    let src = decode(source);
    let out = decode(clip);
    let expected: Vec<usize> = (0..src.len())
        .filter(|&i| src[i].time >= start && src[i].time < end)
        .collect();
    assert!(!expected.is_empty(), "test range holds no frames");
    let first = expected[0];
    match mode {
        "keyframe" => {
            let k = src
                .iter()
                .position(|f| f.md5 == out[0].md5)
                .expect("keyframe clip starts on a source frame");
            assert!(src[k].key, "keyframe clip starts on a non-key frame {k}");
            assert!(
                !src[k + 1..=first].iter().any(|f| f.key),
                "keyframe clip starts at {k}, not at the last key frame before {first}"
            );
            // Up to the end of the range every frame is a copy; after it only the reference
            // frames the last ones needed may follow.
            let last = *expected.last().unwrap_or(&first);
            assert!(k + out.len() > last, "keyframe clip ends early");
            for i in 0..=(last - k) {
                assert_eq!(
                    out[i].md5,
                    src[k + i].md5,
                    "keyframe clip frame {i} differs"
                );
            }
        }
        "exact" => {
            assert_eq!(out.len(), expected.len(), "exact: frame count");
            for (i, f) in out.iter().enumerate() {
                assert_eq!(f.md5, src[first + i].md5, "exact: frame {i} differs");
            }
        }
        "smart" | "reencode" => {
            assert_eq!(out.len(), expected.len(), "{mode}: frame count");
            let copied = out
                .iter()
                .enumerate()
                .filter(|(i, f)| f.md5 == src[first + i].md5)
                .count();
            if mode == "smart" {
                // Re-encoded frames form the head; from the first identical frame on every
                // frame is a bit-identical copy.
                if let Some(j) = out
                    .iter()
                    .enumerate()
                    .position(|(i, f)| f.md5 == src[first + i].md5)
                {
                    assert_eq!(copied, out.len() - j, "smart: copied frames are not a tail");
                }
            }
            let p = psnr(clip, source, first, out.len(), dir);
            assert_eq!(p.len(), out.len(), "psnr frame count");
            let worst = p.iter().cloned().fold(f64::INFINITY, f64::min);
            assert!(worst > 35.0, "{mode}: worst PSNR {worst:.1} dB");
        }
        _ => unreachable!(),
    }
    // Audio and video start together (within one frame at 25 fps).
    let (v, a) = (stream_start(clip, "v"), stream_start(clip, "a"));
    if a.is_finite() {
        assert!(
            (v - a).abs() <= 0.04,
            "{mode}: video starts at {v}, audio at {a}"
        );
    }
}

/// Cuts `range` in every mode with the CLI and checks each clip.
pub fn cut_and_check_all(source: &Path, start: f64, end: f64, modes: &[&str], dir: &TempDir) {
    for mode in modes {
        let out = dir.path(&format!("out-{mode}"));
        let status = hybridlive()
            .arg("clip")
            .arg(source)
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
        assert!(
            status.status.success(),
            "{mode}: hybridlive clip failed: {}",
            String::from_utf8_lossy(&status.stderr)
        );
        let clip = std::fs::read_dir(&out)
            .expect("output dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|e| e == "mp4"))
            .unwrap_or_else(|| panic!("{mode}: no clip written"));
        check_clip(source, &clip, mode, start, end, &dir.0);
    }
}
