//! Broken media for `hybridlive clip` and `hybridlive repurpose`: truncated, empty, misnamed,
//! garbage, absurd dimensions, unsupported codecs, missing and unreadable sidecars. Each must
//! end in an error naming the file and the reason, within a bounded time, with nothing left
//! under a final name; a batch goes on with the other recordings and exits non-zero.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{TempDir, ffmpeg_source, hybridlive};

/// Longer than any stall timeout of the cutter: a case that takes this long hangs.
const CASE_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `cmd`, killing it (and failing the test) if it outlives `CASE_TIMEOUT`.
fn bounded(cmd: &mut Command, what: &str) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let started = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if started.elapsed() > CASE_TIMEOUT {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "{what}: still running after {} s (hang): {}",
                CASE_TIMEOUT.as_secs(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Deterministic pseudo-random bytes (xorshift), so a failure reproduces.
fn garbage(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Files in `out` other than the manifest: clips, or leftovers of failed ones.
fn outputs(out: &Path) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(out)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "manifest.json")
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

// --- An H.264 stream whose SPS claims 16000x16000 (ffmpeg refuses 16384x16384 itself) ----

struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl BitReader<'_> {
    fn bit(&mut self) -> u32 {
        let b = (self.data[self.pos / 8] >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        u32::from(b)
    }

    fn bits(&mut self, n: u32) -> u32 {
        (0..n).fold(0, |v, _| (v << 1) | self.bit())
    }

    fn ue(&mut self) -> u32 {
        let mut zeros = 0;
        while self.bit() == 0 {
            zeros += 1;
        }
        (1 << zeros) - 1 + self.bits(zeros)
    }
}

#[derive(Default)]
struct BitWriter {
    data: Vec<u8>,
    len: usize,
}

impl BitWriter {
    fn bit(&mut self, b: u32) {
        if self.len.is_multiple_of(8) {
            self.data.push(0);
        }
        if b != 0 {
            *self.data.last_mut().expect("a byte") |= 0x80 >> (self.len % 8);
        }
        self.len += 1;
    }

    fn bits(&mut self, v: u32, n: u32) {
        for i in (0..n).rev() {
            self.bit((v >> i) & 1);
        }
    }

    fn ue(&mut self, v: u32) {
        let v = v + 1;
        let n = 32 - v.leading_zeros();
        self.bits(0, n - 1);
        self.bits(v, n);
    }
}

fn unescape(ebsp: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut zeros = 0;
    for &b in ebsp {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        out.push(b);
        zeros = if b == 0 { zeros + 1 } else { 0 };
    }
    out
}

fn escape(rbsp: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut zeros = 0;
    for &b in rbsp {
        if zeros >= 2 && b <= 3 {
            out.push(3);
            zeros = 0;
        }
        out.push(b);
        zeros = if b == 0 { zeros + 1 } else { 0 };
    }
    out
}

/// A baseline-profile SPS NAL unit (header included) with its picture size replaced.
fn resize_sps(nal: &[u8], width_mbs: u32, height_mbs: u32) -> Vec<u8> {
    let rbsp = unescape(&nal[1..]);
    let mut r = BitReader {
        data: &rbsp,
        pos: 0,
    };
    let mut w = BitWriter::default();
    let profile = r.bits(8);
    assert_eq!(profile, 66, "the test stream must be baseline");
    w.bits(profile, 8);
    w.bits(r.bits(16), 16); // constraint flags, level
    w.ue(r.ue()); // seq_parameter_set_id
    w.ue(r.ue()); // log2_max_frame_num_minus4
    let poc_type = r.ue();
    w.ue(poc_type);
    match poc_type {
        0 => w.ue(r.ue()),
        2 => {}
        other => panic!("pic_order_cnt_type {other} not handled"),
    }
    w.ue(r.ue()); // max_num_ref_frames
    w.bit(r.bit()); // gaps_in_frame_num_value_allowed_flag
    r.ue();
    r.ue();
    w.ue(width_mbs - 1);
    w.ue(height_mbs - 1);
    // The rest up to the stop bit is unchanged.
    let last_one = (0..rbsp.len() * 8)
        .rev()
        .find(|&i| (rbsp[i / 8] >> (7 - i % 8)) & 1 == 1)
        .expect("stop bit");
    while r.pos < last_one {
        w.bit(r.bit());
    }
    w.bit(1);
    let mut out = vec![nal[0]];
    out.extend(escape(&w.data));
    out
}

/// Annex B NAL units (without start codes).
fn annexb_units(stream: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= stream.len() {
        if stream[i..i + 3] == [0, 0, 1] {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    starts
        .iter()
        .enumerate()
        .map(|(k, &s)| {
            let mut end = starts.get(k + 1).map_or(stream.len(), |&n| n - 3);
            while end > s && stream[end - 1] == 0 {
                end -= 1;
            }
            &stream[s..end]
        })
        .collect()
}

/// An MP4 whose H.264 SPS says 16000x16000 while its slices are 320x240.
fn huge_dimensions_mp4(dir: &TempDir) -> PathBuf {
    let small = dir.path("small.h264");
    common::run(
        Command::new("ffmpeg")
            .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
            .arg("testsrc2=size=320x240:rate=25:duration=3")
            .args(["-c:v", "libx264", "-profile:v", "baseline", "-g", "25"])
            .args(["-pix_fmt", "yuv420p", "-f", "h264"])
            .arg(&small),
    );
    let stream = std::fs::read(&small).expect("read h264");
    let mut huge = Vec::new();
    let mut replaced = 0;
    for unit in annexb_units(&stream) {
        huge.extend_from_slice(&[0, 0, 0, 1]);
        if unit.first().is_some_and(|h| h & 0x1f == 7) {
            huge.extend(resize_sps(unit, 1000, 1000));
            replaced += 1;
        } else {
            huge.extend_from_slice(unit);
        }
    }
    assert!(replaced > 0, "no SPS in the test stream");
    let raw = dir.path("huge.h264");
    std::fs::write(&raw, huge).expect("write");
    let mp4 = dir.path("huge.mp4");
    common::run(
        Command::new("ffmpeg")
            .args(["-v", "error", "-y", "-r", "25", "-f", "h264", "-i"])
            .arg(&raw)
            .args(["-c", "copy"])
            .arg(&mp4),
    );
    let probed = common::run(
        Command::new("ffprobe")
            .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
            .args(["stream=width,height", "-of", "csv=p=0"])
            .arg(&mp4),
    );
    assert_eq!(
        String::from_utf8_lossy(&probed.stdout).trim(),
        "16000,16000",
        "the crafted SPS is not read as 16000x16000"
    );
    mp4
}

/// One broken recording: its file name, then the reasons its error may give (one must show).
struct Case {
    file: PathBuf,
    reason: &'static [&'static str],
}

/// Writes the broken corpus into `dir`; `good` is a healthy MP4 used as raw material.
fn corpus(dir: &TempDir, good: &Path) -> Vec<Case> {
    let whole = std::fs::read(good).expect("read");
    let write = |name: &str, data: &[u8]| {
        let path = dir.path(name);
        std::fs::write(&path, data).expect("write");
        path
    };
    let ts = dir.path("source.ts");
    ffmpeg_source(&ts, 3, &["-c:v", "libx264", "-g", "25"], &["-c:a", "aac"]);
    let ts_bytes = std::fs::read(&ts).expect("read");
    let _ = std::fs::remove_file(&ts);
    let vp8 = dir.path("vp8.webm");
    ffmpeg_source(&vp8, 2, &["-c:v", "libvpx"], &["-c:a", "libopus"]);
    vec![
        Case {
            file: write("zero-length.mp4", &[]),
            reason: &["zero-length.mp4", "the file is empty"],
        },
        Case {
            file: write("truncated-head.mp4", &whole[..whole.len().min(600)]),
            reason: &[
                "truncated-head.mp4",
                "no playable streams",
                "no H.264/H.265 video",
            ],
        },
        Case {
            file: write("truncated-half.mp4", &whole[..whole.len() / 2]),
            reason: &[
                "truncated-half.mp4",
                "no playable streams",
                "no H.264/H.265 video",
            ],
        },
        Case {
            file: write("truncated.ts", &ts_bytes[..ts_bytes.len() / 5]),
            reason: &["truncated.ts", "ended"],
        },
        Case {
            file: write("garbage.mp4", &garbage(256 * 1024, 7)),
            reason: &["garbage.mp4", "Could not determine type"],
        },
        Case {
            file: write("garbage.ts", &garbage(256 * 1024, 11)),
            reason: &["garbage.ts", "Could not determine type"],
        },
        Case {
            file: write(
                "text-named.mkv",
                b"this is a lesson plan, not a recording\n",
            ),
            reason: &["text-named.mkv", "Could not determine type"],
        },
        Case {
            file: huge_dimensions_mp4(dir),
            reason: &["huge.mp4", "16000x16000"],
        },
        Case {
            file: vp8,
            reason: &["vp8.webm", "unsupported video codec"],
        },
    ]
}

fn assert_reported(stderr: &str, case: &Case) {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error:") && l.contains(case.reason[0]))
        .unwrap_or_else(|| panic!("{} not reported: {stderr}", case.file.display()));
    assert!(
        case.reason[1..].iter().any(|why| line.contains(why)),
        "{}: the error says none of {:?}: {line}",
        case.file.display(),
        &case.reason[1..]
    );
    assert!(!stderr.contains("panicked"), "a panic: {stderr}");
}

#[test]
fn clip_reports_each_broken_recording() {
    let dir = TempDir::new("broken-clip");
    let good = dir.path("good.mp4");
    ffmpeg_source(&good, 4, &["-c:v", "libx264", "-g", "25"], &["-c:a", "aac"]);
    for case in corpus(&dir, &good) {
        let out = dir.path(&format!(
            "out-{}",
            case.file.file_name().unwrap_or_default().to_string_lossy()
        ));
        let run = bounded(
            hybridlive()
                .arg("clip")
                .arg(&case.file)
                .args(["--range", "1.5-2.5", "--mode", "exact", "--out"])
                .arg(&out),
            &case.file.display().to_string(),
        );
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(
            !run.status.success(),
            "{}: clip succeeded: {stderr}",
            case.file.display()
        );
        assert_reported(&stderr, &case);
        assert_eq!(
            outputs(&out),
            Vec::<String>::new(),
            "{}: something was left in the output folder",
            case.file.display()
        );
    }

    // A recording with another container's extension is read by its content.
    let misnamed = dir.path("really-mkv.mp4");
    ffmpeg_source(
        &misnamed,
        3,
        &["-c:v", "libx264", "-g", "25", "-f", "matroska"],
        &["-c:a", "aac"],
    );
    let out = dir.path("out-misnamed");
    let run = bounded(
        hybridlive()
            .arg("clip")
            .arg(&misnamed)
            .args(["--range", "1.5-2.5", "--mode", "exact", "--out"])
            .arg(&out),
        "misnamed",
    );
    assert!(
        run.status.success(),
        "a Matroska file named .mp4: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(outputs(&out).len(), 1);
}

#[test]
fn repurpose_batch_goes_on_past_broken_recordings() {
    let dir = TempDir::new("broken-repurpose");
    let rec = dir.path("rec");
    std::fs::create_dir_all(&rec).expect("mkdir");
    let good = rec.join("good.mp4");
    ffmpeg_source(&good, 4, &["-c:v", "libx264", "-g", "25"], &["-c:a", "aac"]);
    let sidecar = |recording: &Path| {
        std::fs::write(
            recording.with_extension("timeline.json"),
            r#"{"version": 1, "events": [{"type": "marker", "at": 1.5, "label": "x"}]}"#,
        )
        .expect("sidecar");
    };
    sidecar(&good);
    let corpus_dir = TempDir::new("broken-repurpose-corpus");
    let mut cases = corpus(&corpus_dir, &good);
    for case in &mut cases {
        let name = case.file.file_name().expect("name").to_owned();
        let moved = rec.join(&name);
        std::fs::rename(&case.file, &moved).expect("move into the batch folder");
        case.file = moved;
        sidecar(&case.file);
    }
    // A good recording without its sidecar, and one with a sidecar that is not JSON.
    let lonely = rec.join("no-sidecar.mp4");
    std::fs::copy(&good, &lonely).expect("copy");
    let bad_sidecar = rec.join("bad-sidecar.mp4");
    std::fs::copy(&good, &bad_sidecar).expect("copy");
    std::fs::write(bad_sidecar.with_extension("timeline.json"), garbage(300, 3)).expect("write");
    cases.push(Case {
        file: lonely,
        reason: &["no-sidecar.mp4", "missing sidecar"],
    });
    cases.push(Case {
        file: bad_sidecar,
        reason: &["bad-sidecar", "cannot read sidecar"],
    });

    let out = dir.path("out");
    let run = bounded(
        hybridlive()
            .arg("repurpose")
            .arg(&rec)
            .args(["--out"])
            .arg(&out)
            .args(["--lead-in", "0.5", "--lead-out", "0.5", "--mode", "exact"])
            .args(["--jobs", "2"]),
        "repurpose",
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "broken inputs must fail the batch");
    for case in &cases {
        assert_reported(&stderr, case);
    }
    // The good recording was cut, and nothing else was left.
    let files = outputs(&out);
    assert_eq!(files.len(), 1, "{files:?}\n{stderr}");
    assert!(files[0].starts_with("good_") && files[0].ends_with(".mp4"));
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("manifest.json")).expect("manifest"),
    )
    .expect("manifest json");
    assert_eq!(
        manifest["errors"].as_array().map(Vec::len),
        Some(cases.len()),
        "{manifest:#}"
    );
}
