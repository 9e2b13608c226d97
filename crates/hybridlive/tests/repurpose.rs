//! `hybridlive repurpose` over a folder: sidecar timelines, bad inputs, manifest, reruns.

mod common;

use std::path::Path;

use common::{TempDir, ffmpeg_source, hybridlive};

fn sidecar(path: &Path, json: &str) {
    std::fs::write(path, json).expect("write sidecar");
}

#[test]
fn folder_with_good_and_bad_recordings() {
    let dir = TempDir::new("repurpose");
    let rec = dir.path("rec");
    std::fs::create_dir_all(&rec).expect("mkdir");
    ffmpeg_source(
        &rec.join("class1.mp4"),
        8,
        &["-c:v", "libx264", "-g", "25"],
        &["-c:a", "aac"],
    );
    sidecar(
        &rec.join("class1.timeline.json"),
        r#"{"version": 1, "recording": "class1.mp4", "events": [
            {"type": "offer-shown", "at": 2.02, "duration": 1.0, "offer_id": "spring", "title": "Spring sale"},
            {"type": "marker", "at": 6.02, "label": "fold", "kind": "demo"}]}"#,
    );
    ffmpeg_source(
        &rec.join("class2.mkv"),
        6,
        &["-c:v", "libx264", "-g", "25"],
        &["-c:a", "libopus"],
    );
    sidecar(
        &rec.join("class2.timeline.json"),
        r#"{"version": 1, "events": [{"type": "marker", "at": 3.02, "label": "Q: why?", "kind": "question"}]}"#,
    );
    // No sidecar.
    ffmpeg_source(
        &rec.join("nosidecar.mp4"),
        2,
        &["-c:v", "libx264"],
        &["-c:a", "aac"],
    );
    // Truncated before its index: unreadable.
    let whole = std::fs::read(rec.join("class1.mp4")).expect("read");
    std::fs::write(rec.join("broken.mp4"), &whole[..whole.len() / 3]).expect("write");
    sidecar(
        &rec.join("broken.timeline.json"),
        r#"{"version": 1, "events": [{"type": "marker", "at": 1.0, "label": "x"}]}"#,
    );
    std::fs::write(rec.join("notes.txt"), "not a recording").expect("write");

    let out = dir.path("out");
    let run = || {
        hybridlive()
            .arg("repurpose")
            .arg(&rec)
            .args(["--out"])
            .arg(&out)
            .args([
                "--lead-in",
                "0.5",
                "--lead-out",
                "1",
                "--mode",
                "exact",
                "--jobs",
                "2",
            ])
            .output()
            .expect("run hybridlive")
    };
    let first = run();
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(!first.status.success(), "bad inputs must fail the batch");
    assert!(
        stderr.contains("nosidecar.mp4") && stderr.contains("missing sidecar"),
        "missing sidecar not reported: {stderr}"
    );
    assert!(
        stderr.contains("broken.mp4"),
        "broken recording not reported: {stderr}"
    );
    assert!(
        stderr.contains("clip 1/2"),
        "no per-clip progress lines: {stderr}"
    );

    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("manifest.json")).expect("manifest"),
    )
    .expect("manifest json");
    let clips = manifest["clips"].as_array().expect("clips");
    assert_eq!(clips.len(), 3, "{manifest:#}");
    let mut files: Vec<String> = std::fs::read_dir(&out)
        .expect("out")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert!(
        !files
            .iter()
            .any(|f| f.ends_with(".part") || f.starts_with("broken")),
        "half-written or failed clip left: {files:?}"
    );
    assert_eq!(
        files.iter().filter(|f| f.ends_with(".mp4")).count(),
        3,
        "{files:?}"
    );
    for c in clips {
        let file = out.join(c["output"].as_str().expect("output"));
        assert!(file.is_file(), "{} listed but missing", file.display());
        let listed = c["duration"].as_f64().expect("duration");
        let expected = c["end"].as_f64().unwrap_or(0.0) - c["start"].as_f64().unwrap_or(0.0);
        let actual = common::duration(&file);
        assert!(
            (actual - listed).abs() < 0.05,
            "{}: file lasts {actual}, manifest says {listed}",
            file.display()
        );
        assert!(
            (actual - expected).abs() < 0.05,
            "{}: lasts {actual}, range is {expected}",
            file.display()
        );
        assert!(!c["markers"].as_array().expect("markers").is_empty());
        assert!(common::decode_errors(&file).is_empty());
    }
    let offer = clips
        .iter()
        .find(|c| {
            c["markers"][0]
                .as_str()
                .is_some_and(|m| m.contains("spring"))
        })
        .expect("offer clip");
    assert!((offer["start"].as_f64().unwrap_or(0.0) - 1.52).abs() < 1e-6);
    assert!((offer["end"].as_f64().unwrap_or(0.0) - 4.02).abs() < 1e-6);
    let errors = manifest["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 2, "{manifest:#}");

    // A rerun skips what is done and leaves the files alone.
    let mtimes = |files: &[String]| -> Vec<std::time::SystemTime> {
        files
            .iter()
            .filter(|f| f.ends_with(".mp4"))
            .map(|f| {
                std::fs::metadata(out.join(f))
                    .and_then(|m| m.modified())
                    .expect("mtime")
            })
            .collect()
    };
    let before = mtimes(&files);
    let second = run();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("exists, skipped"));
    assert_eq!(mtimes(&files), before, "done clips were rewritten");
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("manifest.json")).expect("manifest"),
    )
    .expect("manifest json");
    assert_eq!(manifest["clips"].as_array().map(|c| c.len()), Some(3));
}

#[test]
fn clip_rejects_bad_ranges_and_files() {
    let dir = TempDir::new("badargs");
    let out = dir.path("out");
    let bad_range = hybridlive()
        .args(["clip", "x.mp4", "--range", "00:02:15-00:01:30", "--out"])
        .arg(&out)
        .output()
        .expect("run");
    assert!(!bad_range.status.success());
    assert!(String::from_utf8_lossy(&bad_range.stderr).contains("empty range"));

    let missing = hybridlive()
        .args(["clip", "does-not-exist.mp4", "--range", "1-2", "--out"])
        .arg(&out)
        .output()
        .expect("run");
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("does-not-exist.mp4"), "{stderr}");

    // A video codec clipextract cannot cut.
    let vp8 = dir.path("vp8.webm");
    ffmpeg_source(&vp8, 2, &["-c:v", "libvpx"], &["-c:a", "libopus"]);
    let unsupported = hybridlive()
        .arg("clip")
        .arg(&vp8)
        .args(["--range", "0.5-1.5", "--out"])
        .arg(&out)
        .output()
        .expect("run");
    assert!(!unsupported.status.success());
    let stderr = String::from_utf8_lossy(&unsupported.stderr);
    assert!(
        stderr.contains("vp8.webm") && stderr.contains("unsupported video codec"),
        "{stderr}"
    );
    assert!(
        std::fs::read_dir(&out)
            .map(|d| d
                .filter_map(|e| e.ok())
                .all(|e| !e.file_name().to_string_lossy().ends_with(".mp4")))
            .unwrap_or(true)
    );
}
