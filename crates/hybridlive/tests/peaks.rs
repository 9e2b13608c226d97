//! `hybridlive repurpose --peaks`: clips around the loud moments of the audio.

mod common;

use std::path::Path;

use common::{TempDir, hybridlive, run};

/// A recording whose audio is a quiet tone with one burst of white noise (like applause) from
/// `burst` to `burst + 1` seconds.
fn recording_with_burst(out: &Path, seconds: u32, burst: u32) {
    run(std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=size=320x240:rate=25:duration={seconds}"))
        .args(["-f", "lavfi", "-i"])
        .arg(format!(
            "aevalsrc=0.1*sin(2*PI*440*t)+if(between(t\\,{burst}\\,{})\\,0.6*(2*random(0)-1)\\,0)\
             :s=48000:d={seconds}",
            burst + 1
        ))
        .args(["-c:v", "libx264", "-g", "25", "-pix_fmt", "yuv420p"])
        .args(["-c:a", "aac"])
        .arg(out));
}

fn is_peak(clip: &serde_json::Value) -> bool {
    clip["markers"].as_array().is_some_and(|m| {
        m.iter()
            .any(|m| m.as_str().is_some_and(|m| m.contains("loudness peak")))
    })
}

#[test]
fn burst_becomes_one_clip_merged_with_the_timeline() {
    let dir = TempDir::new("peaks");
    let rec = dir.path("rec");
    std::fs::create_dir_all(&rec).expect("mkdir");
    // With a sidecar: one marker far from the burst, one whose clip overlaps the burst's.
    recording_with_burst(&rec.join("talk.mp4"), 30, 20);
    std::fs::write(
        rec.join("talk.timeline.json"),
        r#"{"version": 1, "events": [
            {"type": "marker", "at": 5.02, "label": "hello"},
            {"type": "marker", "at": 19.02, "label": "the joke"}]}"#,
    )
    .expect("sidecar");
    // Without a sidecar: cut on its peaks alone.
    recording_with_burst(&rec.join("nosidecar.mkv"), 16, 9);

    let out = dir.path("out");
    let result = hybridlive()
        .arg("repurpose")
        .arg(&rec)
        .arg("--out")
        .arg(&out)
        .args(["--lead-in", "0.5", "--lead-out", "0.5"])
        .args(["--peaks", "3", "--peak-threshold", "8"])
        .args(["--peak-lead-in", "1", "--peak-lead-out", "1"])
        .args(["--mode", "keyframe"])
        .output()
        .expect("run hybridlive");
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{stderr}");
    assert!(stderr.contains("programme loudness"), "{stderr}");

    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("manifest.json")).expect("manifest"),
    )
    .expect("manifest json");
    let clips = manifest["clips"].as_array().expect("clips");
    let of = |name: &str| -> Vec<&serde_json::Value> {
        clips
            .iter()
            .filter(|c| c["source"].as_str().is_some_and(|s| s.ends_with(name)))
            .collect()
    };
    let span = |c: &serde_json::Value| {
        (
            c["start"].as_f64().unwrap_or(f64::NAN),
            c["end"].as_f64().unwrap_or(f64::NAN),
        )
    };

    for (name, burst, timeline_clips) in [("talk.mp4", 20.0, 1), ("nosidecar.mkv", 9.0, 0)] {
        let clips = of(name);
        let peaks: Vec<_> = clips.iter().filter(|c| is_peak(c)).collect();
        assert_eq!(
            peaks.len(),
            1,
            "{name}: one burst, one peak clip: {manifest:#}"
        );
        let (start, end) = span(peaks[0]);
        // The clip covers the burst with its lead-in and lead-out, and not much more: the
        // momentary window (400 ms) may widen the loud stretch a little on each side.
        assert!(
            start <= burst - 1.0 && end >= burst + 2.0,
            "{name}: peak clip {start}-{end} misses the burst at {burst}"
        );
        assert!(
            start >= burst - 2.0 && end <= burst + 3.0,
            "{name}: peak clip {start}-{end} is not around the burst at {burst}"
        );
        assert_eq!(clips.len(), timeline_clips + 1, "{name}: {manifest:#}");
        let mut spans: Vec<(f64, f64)> = clips.iter().map(|c| span(c)).collect();
        spans.sort_by(|a, b| a.0.total_cmp(&b.0));
        for w in spans.windows(2) {
            assert!(w[0].1 <= w[1].0, "{name}: clips overlap: {spans:?}");
        }
        for c in &clips {
            let file = out.join(c["output"].as_str().expect("output"));
            assert!(
                common::decode_errors(&file).is_empty(),
                "{}",
                file.display()
            );
        }
    }
    // The marker just before the burst was merged into the peak's clip, not cut twice.
    let talk = of("talk.mp4");
    let merged = talk.iter().find(|c| is_peak(c)).expect("peak clip");
    let markers = merged["markers"].to_string();
    assert!(markers.contains("the joke"), "{markers}");
    assert!(
        talk.iter()
            .any(|c| !is_peak(c) && c["markers"].to_string().contains("hello"))
    );
}

#[test]
fn peaks_need_audio() {
    let dir = TempDir::new("peaks-noaudio");
    let src = dir.path("silent-film.mp4");
    run(std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg("testsrc2=size=320x240:rate=25:duration=3")
        .args(["-c:v", "libx264", "-pix_fmt", "yuv420p"])
        .arg(&src));
    let out = dir.path("out");
    let result = hybridlive()
        .arg("repurpose")
        .arg(&src)
        .arg("--out")
        .arg(&out)
        .args(["--peaks", "2"])
        .output()
        .expect("run hybridlive");
    assert!(!result.status.success());
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        stderr.contains("silent-film.mp4") && stderr.contains("no audio stream"),
        "{stderr}"
    );
}
