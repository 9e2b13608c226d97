//! Speed of `hybridlive clip` against ffmpeg on one 1080p recording, measured in the same run.
//!
//! - `keyframe` mode against `ffmpeg -ss S -to E -i rec -c copy` (goal: no slower than 1.5×)
//! - `smart` mode against `ffmpeg -ss S -to E -i rec -c:v libx264 -c:a copy` (ffmpeg's
//!   defaults, and with the settings smart mode re-encodes with: `-preset veryfast -crf 18`);
//!   goal: at least 5× faster for 30 s clips with 2 s GOPs; on the same content with closed
//!   and with open GOPs (x264 `open-gop`, where smart mode splices at recovery-point I frames).
//!
//! Run: `cargo bench -p hybridlive --bench clip_speed` (add `--profile dev` to skip a release
//! build: the work happens in GStreamer and x264 either way). `CLIP_BENCH_SECONDS` sets the
//! recording length (default 75 s: two 30 s clips; shorter recordings get shorter clips) and
//! `CLIP_BENCH_ROUNDS` the stream-copy rounds whose median is kept (default 5).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Length of the recording, in seconds.
fn recording_seconds() -> u32 {
    std::env::var("CLIP_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(75)
        .max(20)
}

/// Two clips, each starting off a key frame (2 s GOPs), of up to 30 s.
fn ranges() -> [(f64, f64); 2] {
    let len = ((f64::from(recording_seconds()) - 15.0) / 2.0).min(30.0);
    [(10.3, 10.3 + len), (12.7 + len, 12.7 + 2.0 * len)]
}

fn run(cmd: &mut Command) -> Duration {
    let start = Instant::now();
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    start.elapsed()
}

fn hybridlive(rec: &Path, mode: &str, out: &Path) -> Duration {
    let _ = std::fs::remove_dir_all(out);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hybridlive"));
    cmd.arg("clip").arg(rec);
    for (s, e) in ranges() {
        cmd.args(["--range", &format!("{s}-{e}")]);
    }
    cmd.args(["--mode", mode, "--out"]).arg(out);
    run(&mut cmd)
}

fn ffmpeg(rec: &Path, video: &[&str], out: &Path) -> Duration {
    let _ = std::fs::remove_dir_all(out);
    std::fs::create_dir_all(out).expect("mkdir");
    let mut total = Duration::ZERO;
    for (i, (s, e)) in ranges().iter().enumerate() {
        total += run(Command::new("ffmpeg")
            .args([
                "-v",
                "error",
                "-y",
                "-ss",
                &s.to_string(),
                "-to",
                &e.to_string(),
                "-i",
            ])
            .arg(rec)
            .args(video)
            .args(["-c:a", "copy"])
            .arg(out.join(format!("{i}.mp4"))));
    }
    total
}

fn main() {
    let seconds = recording_seconds();
    let rounds: usize = std::env::var("CLIP_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
        .max(1);
    let dir = std::env::temp_dir().join(format!("hybridlive-clip-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let rec = dir.join("class-1080p.mp4");
    eprintln!("making a {seconds} s 1080p25 recording (x264, 2 s GOP, B-frames, AAC)...");
    run(Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!(
            "testsrc2=size=1920x1080:rate=25:duration={seconds}"
        ))
        .args(["-f", "lavfi", "-i"])
        .arg(format!(
            "sine=frequency=440:sample_rate=48000:duration={seconds}"
        ))
        .args([
            "-c:v", "libx264", "-preset", "veryfast", "-g", "50", "-bf", "2",
        ])
        .args(["-pix_fmt", "yuv420p", "-c:a", "aac"])
        .arg(&rec));

    let clip_s: f64 = ranges().iter().map(|(s, e)| e - s).sum();
    println!(
        "recording: {seconds} s 1080p25, clips: {} x {:.0} s ({clip_s} s)",
        ranges().len(),
        clip_s / ranges().len() as f64
    );
    // Stream copies take fractions of a second: warm the page cache, then keep the median of
    // five alternating runs so neither side pays for the first read.
    let _ = std::fs::read(&rec);
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (mut kfs, mut copies, mut exacts) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        kfs.push(hybridlive(&rec, "keyframe", &dir.join("kf")));
        copies.push(ffmpeg(&rec, &["-c:v", "copy"], &dir.join("ffcopy")));
        exacts.push(hybridlive(&rec, "exact", &dir.join("exact")));
    }
    let (kf, ff_copy, exact) = (median(kfs), median(copies), median(exacts));
    println!(
        "keyframe: hybridlive {:.2} s, ffmpeg -c copy {:.2} s, ratio {:.2}x (goal <= 1.5x)",
        kf.as_secs_f64(),
        ff_copy.as_secs_f64(),
        kf.as_secs_f64() / ff_copy.as_secs_f64()
    );
    println!(
        "exact: hybridlive {:.2} s, ratio to ffmpeg -c copy {:.2}x",
        exact.as_secs_f64(),
        exact.as_secs_f64() / ff_copy.as_secs_f64()
    );
    let smart = hybridlive(&rec, "smart", &dir.join("smart"));
    // CLIP_BENCH_QUICK: only the headline comparisons (keyframe/exact vs copy, smart vs a
    // re-encode, closed and open GOP), for `scripts/bench --quick`.
    let full = std::env::var_os("CLIP_BENCH_QUICK").is_none();
    let (smart_open, ff_x264_open) = {
        // The same content with open GOPs (x264 `open-gop`: key frames after the first are
        // recovery-point I frames, not IDR): smart mode rewrites the one it splices at into an
        // IDR and renumbers the copied frames after it.
        let open_gop = dir.join("class-1080p-open-gop.mp4");
        run(Command::new("ffmpeg")
            .args(["-v", "error", "-y", "-i"])
            .arg(&rec)
            .args(["-c:v", "libx264", "-preset", "veryfast", "-bf", "2"])
            .args([
                "-x264-params",
                "open-gop=1:keyint=50:min-keyint=50:scenecut=0",
            ])
            .args(["-pix_fmt", "yuv420p", "-c:a", "copy"])
            .arg(&open_gop));
        let smart_open = hybridlive(&open_gop, "smart", &dir.join("smart-open"));
        let ff_x264_open = ffmpeg(&open_gop, &["-c:v", "libx264"], &dir.join("ffx264open"));
        (smart_open, ff_x264_open)
    };
    let ff_x264 = ffmpeg(&rec, &["-c:v", "libx264"], &dir.join("ffx264"));
    println!(
        "smart: hybridlive {:.2} s; ffmpeg libx264 (defaults) {:.2} s: {:.1}x faster (goal >= 5x for 30 s clips)",
        smart.as_secs_f64(),
        ff_x264.as_secs_f64(),
        ff_x264.as_secs_f64() / smart.as_secs_f64(),
    );
    if full {
        let ff_x264_same = ffmpeg(
            &rec,
            &["-c:v", "libx264", "-preset", "veryfast", "-crf", "18"],
            &dir.join("ffx264same"),
        );
        println!(
            "smart vs ffmpeg libx264 -preset veryfast -crf 18 {:.2} s: {:.1}x faster",
            ff_x264_same.as_secs_f64(),
            ff_x264_same.as_secs_f64() / smart.as_secs_f64()
        );
    }
    println!(
        "smart, open GOP: hybridlive {:.2} s; ffmpeg libx264 (defaults) {:.2} s: {:.1}x faster \
         (goal >= 5x for 30 s clips)",
        smart_open.as_secs_f64(),
        ff_x264_open.as_secs_f64(),
        ff_x264_open.as_secs_f64() / smart_open.as_secs_f64()
    );
    let clips = format!(
        "{} x {:.1} s",
        ranges().len(),
        clip_s / ranges().len() as f64
    );
    let record = |case: &str, value: Duration, baseline: &str, base: Duration| {
        let case = format!("{case}, {clips}");
        hybridlive_bench::record(&hybridlive_bench::Figure {
            benchmark: "clip 2 ranges from a 1080p recording",
            case: &case,
            value: value.as_secs_f64(),
            unit: "s",
            baseline: Some((baseline, base.as_secs_f64())),
            better: hybridlive_bench::Better::Lower,
        })
    };
    record(
        "hybridlive clip --mode keyframe",
        kf,
        "ffmpeg -c copy",
        ff_copy,
    );
    record(
        "hybridlive clip --mode exact",
        exact,
        "ffmpeg -c copy",
        ff_copy,
    );
    record(
        "hybridlive clip --mode smart",
        smart,
        "ffmpeg -c:v libx264",
        ff_x264,
    );
    record(
        "hybridlive clip --mode smart, open GOP",
        smart_open,
        "ffmpeg -c:v libx264",
        ff_x264_open,
    );
    let _ = std::fs::remove_dir_all(&dir);
}
