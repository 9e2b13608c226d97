//! `--vertical`: a 9:16 crop of each clip, re-encoded, with its audio, recorded in the manifest.

mod common;

use std::path::Path;
use std::process::Command;

use common::{TempDir, decode, decode_errors, duration, hybridlive, run, stream_start};

fn manifest(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).expect("manifest"))
        .expect("manifest json")
}

/// `(width, height)` of the first video stream.
fn size(file: &Path) -> (u64, u64) {
    let out = run(Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
        .args(["stream=width,height", "-of", "csv=p=0"])
        .arg(file));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.trim().split(',').map(|v| v.parse().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// Duration of the first stream of a kind (`v` or `a`), seconds.
fn stream_duration(file: &Path, kind: &str) -> f64 {
    let out = run(Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", kind, "-show_entries"])
        .args(["stream=duration", "-of", "csv=p=0"])
        .arg(file));
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(f64::NAN)
}

/// Mean colour of the first frame, as RGB.
fn mean_colour(file: &Path) -> [u8; 3] {
    let out = run(Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(file)
        .args(["-vf", "scale=1:1:flags=area", "-frames:v", "1"])
        .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"]));
    [out.stdout[0], out.stdout[1], out.stdout[2]]
}

/// Worst PSNR of `clip`'s frames against frames `first..first+n` of `source` cropped to
/// `w`x`h` at `(x, y)` by ffmpeg.
#[allow(clippy::too_many_arguments)]
fn crop_psnr(clip: &Path, source: &Path, first: usize, n: usize, crop: [u64; 4]) -> f64 {
    let [w, h, x, y] = crop;
    let filter = format!(
        "[1:v]trim=start_frame={first}:end_frame={},crop={w}:{h}:{x}:{y}:exact=1,\
         setpts=PTS-STARTPTS[r];[0:v]setpts=PTS-STARTPTS[c];[c][r]psnr",
        first + n
    );
    let out = run(Command::new("ffmpeg")
        .args(["-i"])
        .arg(clip)
        .arg("-i")
        .arg(source)
        .args(["-lavfi", &filter, "-f", "null", "-"]));
    let log = String::from_utf8_lossy(&out.stderr);
    log.split_whitespace()
        .find_map(|w| w.strip_prefix("min:"))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no PSNR in {log}"))
}

#[test]
fn center_crop_is_that_part_of_the_source_with_its_audio() {
    let dir = TempDir::new("vertical");
    let src = dir.path("wide.mp4");
    run(Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg("testsrc2=size=640x360:rate=25:duration=6")
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
        .arg(&src));
    let out = dir.path("out");
    let (start, end) = (1.3, 3.1);
    let result = hybridlive()
        .arg("clip")
        .arg(&src)
        .args(["--range", &format!("{start}-{end}"), "--mode", "smart"])
        .arg("--vertical")
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run hybridlive");
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let m = manifest(&out);
    let entry = &m["clips"][0];
    let v = &entry["vertical"];
    let file = out.join(v["output"].as_str().expect("vertical output"));
    assert!(file.is_file(), "{m:#}");
    assert!(
        out.join(entry["output"].as_str().expect("output"))
            .is_file()
    );

    // Full height, 9:16, in the middle of the picture.
    let (w, h) = size(&file);
    assert_eq!(h, 360);
    assert!((w as f64 / h as f64 - 9.0 / 16.0).abs() < 0.01, "{w}x{h}");
    assert_eq!(
        (v["width"].as_u64(), v["height"].as_u64()),
        (Some(w), Some(h))
    );
    let x = v["crop_x"].as_u64().expect("crop_x");
    assert!(x.abs_diff((640 - w) / 2) <= 1, "center crop at x={x}");

    // The requested frames, no more, no less, and they are that crop of the source.
    assert!(decode_errors(&file).is_empty());
    let source = decode(&src);
    let expected: Vec<usize> = (0..source.len())
        .filter(|&i| source[i].time >= start && source[i].time < end)
        .collect();
    let frames = decode(&file);
    assert_eq!(frames.len(), expected.len(), "frame count");
    let psnr = crop_psnr(&file, &src, expected[0], frames.len(), [w, h, x, 0]);
    assert!(
        psnr > 35.0,
        "worst PSNR against the source's crop: {psnr:.1} dB"
    );
    // Shifted by 40 pixels it is another picture: the check above means something.
    let off = crop_psnr(&file, &src, expected[0], frames.len(), [w, h, x + 40, 0]);
    assert!(
        off < psnr - 10.0,
        "{off:.1} dB for a crop 40 px to the right"
    );

    // Audio comes along, starts with the video and lasts as long.
    let total = end - start;
    assert!(
        (duration(&file) - total).abs() < 0.05,
        "{}",
        duration(&file)
    );
    assert!((stream_start(&file, "v") - stream_start(&file, "a")).abs() <= 0.04);
    let (vd, ad) = (stream_duration(&file, "v"), stream_duration(&file, "a"));
    assert!(
        (vd - total).abs() < 0.05 && (ad - total).abs() < 0.05,
        "video {vd} s, audio {ad} s"
    );
    assert!((v["duration"].as_f64().unwrap_or(0.0) - total).abs() < 0.05);

    // A rerun finds both files done.
    let again = hybridlive()
        .arg("clip")
        .arg(&src)
        .args(["--range", &format!("{start}-{end}"), "--mode", "smart"])
        .arg("--vertical")
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run hybridlive");
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("vertical-center.mp4 exists"));
    assert_eq!(manifest(&out)["clips"][0]["vertical"], *v);
}

#[test]
fn left_and_right_regions_and_scaling() {
    let dir = TempDir::new("vertical-lr");
    let src = dir.path("thirds.mkv");
    // Red, green and blue thirds.
    run(Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(
            "color=c=red:s=214x360:r=25:d=4[a];color=c=lime:s=212x360:r=25:d=4[b];\
             color=c=blue:s=214x360:r=25:d=4[c];[a][b][c]hstack=3",
        )
        .args([
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000:duration=4",
        ])
        .args(["-c:v", "libx264", "-g", "25", "-pix_fmt", "yuv420p"])
        .args(["-c:a", "libopus"])
        .arg(&src));
    for (region, colour, height) in [("left", 0, None), ("right", 2, Some(640u64))] {
        let out = dir.path(&format!("out-{region}"));
        let mut cmd = hybridlive();
        cmd.arg("clip")
            .arg(&src)
            .args(["--range", "0.5-2.5", "--mode", "keyframe"])
            .arg(format!("--vertical={region}"))
            .arg("--out")
            .arg(&out);
        if let Some(h) = height {
            cmd.args(["--vertical-height", &h.to_string()]);
        }
        let result = cmd.output().expect("run hybridlive");
        assert!(
            result.status.success(),
            "{region}: {}",
            String::from_utf8_lossy(&result.stderr)
        );
        let v = &manifest(&out)["clips"][0]["vertical"];
        let file = out.join(v["output"].as_str().expect("vertical output"));
        let rgb = mean_colour(&file);
        let strongest = (0..3).max_by_key(|&i| rgb[i]).unwrap_or(0);
        assert_eq!(strongest, colour, "{region}: mean colour {rgb:?}");
        assert!(rgb[colour] > 200, "{region}: mean colour {rgb:?}");
        let (w, h) = size(&file);
        assert_eq!(h, height.unwrap_or(360), "{region}");
        assert!((w as f64 / h as f64 - 9.0 / 16.0).abs() < 0.01, "{w}x{h}");
        assert!((duration(&file) - 2.0).abs() < 0.05, "{}", duration(&file));
    }

    // A crop that does not fit is an error naming the file.
    let out = dir.path("out-bad");
    let bad = hybridlive()
        .arg("clip")
        .arg(&src)
        .args(["--range", "0.5-2.5", "--vertical=600", "--out"])
        .arg(&out)
        .output()
        .expect("run hybridlive");
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("thirds.mkv") && stderr.contains("does not fit"),
        "{stderr}"
    );
}
