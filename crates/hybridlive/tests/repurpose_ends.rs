//! `hybridlive repurpose` keeps every clip inside its recording: a marker near the end gives a
//! clip that ends where the recording ends, in its name and in the manifest.

mod common;

use common::{TempDir, ffmpeg_source, hybridlive};

#[test]
fn a_marker_near_the_end_gives_a_clip_ending_with_the_recording() {
    let dir = TempDir::new("repurpose-ends");
    let rec = dir.path("rec");
    std::fs::create_dir_all(&rec).expect("mkdir");
    ffmpeg_source(
        &rec.join("short.mp4"),
        5,
        &["-c:v", "libx264", "-g", "25"],
        &["-c:a", "aac"],
    );
    std::fs::write(
        rec.join("short.timeline.json"),
        r#"{"version": 1, "events": [{"type": "marker", "at": 4.5, "label": "last words"}]}"#,
    )
    .expect("sidecar");
    let out = dir.path("out");
    let run = hybridlive()
        .arg("repurpose")
        .arg(&rec)
        .arg("--out")
        .arg(&out)
        .args(["--lead-in", "1", "--lead-out", "10", "--mode", "keyframe"])
        .output()
        .expect("run hybridlive");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).expect("manifest.json"))
            .expect("manifest JSON");
    let clips = manifest["clips"].as_array().expect("clips");
    assert_eq!(clips.len(), 1, "{manifest}");
    let clip = &clips[0];
    let length = 5.0;
    let end = clip["end"].as_f64().expect("end");
    assert!(
        end <= length + 0.05,
        "the clip is listed as ending at {end} s in a {length} s recording: {manifest}"
    );
    let name = clip["output"].as_str().expect("output");
    assert!(
        !name.contains("00-00-14"),
        "the name gives the lead-out past the end: {name}"
    );
}

#[test]
fn a_recording_without_markers_is_skipped_not_an_error() {
    let dir = TempDir::new("repurpose-skip");
    let rec = dir.path("rec");
    std::fs::create_dir_all(&rec).expect("mkdir");
    for name in ["quiet", "marked"] {
        ffmpeg_source(
            &rec.join(format!("{name}.mp4")),
            3,
            &["-c:v", "libx264", "-g", "25"],
            &["-c:a", "aac"],
        );
    }
    std::fs::write(
        rec.join("quiet.timeline.json"),
        r#"{"version": 1, "events": []}"#,
    )
    .expect("sidecar");
    std::fs::write(
        rec.join("marked.timeline.json"),
        r#"{"version": 1, "events": [{"type": "marker", "at": 1.0, "label": "hi"}]}"#,
    )
    .expect("sidecar");
    let out = dir.path("out");
    let run = hybridlive()
        .arg("repurpose")
        .arg(&rec)
        .arg("--out")
        .arg(&out)
        .args([
            "--lead-in",
            "0.5",
            "--lead-out",
            "0.5",
            "--mode",
            "keyframe",
        ])
        .output()
        .expect("run hybridlive");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "exit status {:?}: {stderr}",
        run.status
    );
    assert!(
        stderr.contains("skipped") && stderr.contains("quiet.mp4") && stderr.contains("--peaks"),
        "the skip is not reported with a way to cut it anyway: {stderr}"
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).expect("manifest.json"))
            .expect("manifest JSON");
    assert_eq!(
        manifest["errors"].as_array().map(Vec::len),
        Some(0),
        "{manifest}"
    );
    assert_eq!(
        manifest["clips"].as_array().map(Vec::len),
        Some(1),
        "{manifest}"
    );
    let skipped = manifest["skipped"].as_array().expect("skipped");
    assert!(
        skipped.len() == 1
            && skipped[0]["source"]
                .as_str()
                .is_some_and(|s| s.ends_with("quiet.mp4")),
        "{manifest}"
    );
    let help = hybridlive()
        .args(["repurpose", "--help"])
        .output()
        .expect("help");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("--peaks") && help.contains("skipped"),
        "{help}"
    );
}
