//! `hybridlive run` end to end: each shipped pipeline runs on its test sources in a child
//! process; HLS is checked with ffprobe, recordings survive `kill -9`, the HTTP API enforces
//! its token and limits, a failing output is restarted while the others keep running, and
//! SIGTERM finalises the recording and exits 0.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hybridlive_testkit::media::{decoded_video_frames, ffprobe, media_duration};
use hybridlive_testkit::process::{ChildGuard, GroupGuard, sh};
use hybridlive_testkit::runner_child::{self, ENTRY, RunnerChild, RunnerCommand};
use hybridlive_testkit::senders::Redialing;
use hybridlive_testkit::time::{now_ms, utc_ms};
use hybridlive_testkit::{
    eventually, in_private_netns, metric, shipped_pipeline, tail_lines, viewer_page,
};

const TOKEN: &str = "test-token-5f1c";

hybridlive_testkit::runner_child_entry!();

/// Starts `run FILE --http 127.0.0.1:0 --json EXTRA...` in `dir`, with the API token set, and
/// waits for `ready`.
fn start_runner(file: &Path, dir: &Path, extra: &[&str]) -> RunnerChild {
    runner_command(file, dir).args(extra).start()
}

/// The runner on `file` in `dir`, with the API token set.
fn runner_command(file: &Path, dir: &Path) -> RunnerCommand {
    RunnerCommand::entry(ENTRY, file, dir).env(&[("HYBRIDLIVE_TOKEN", TOKEN)])
}

/// A runner child whose stdout and stderr are both kept, for tests that read everything it
/// prints (the token must never show) or expect it to fail before `ready`.
fn logged_runner(file: &Path, dir: &Path, env: &[(&str, &str)]) -> RunnerChild {
    RunnerCommand::entry(ENTRY, file, dir)
        .env(env)
        .keep_stderr()
        .spawn()
}

fn scratch(name: &str) -> PathBuf {
    hybridlive_testkit::scratch_dir("runner-test", name)
}

#[test]
fn workshop_serves_hls_metrics_and_a_guarded_api_and_exits_cleanly_on_sigterm() {
    let dir = scratch("workshop");
    let mut runner = start_runner(&shipped_pipeline("workshop.toml"), &dir, &[]);
    let first = runner.wait_event("recording-started", Duration::from_secs(10));

    // The viewer page plays /hls/live.m3u8 with the vendored hls.js.
    let page = runner.get("/");
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .unwrap_or_default()
            .starts_with("text/html")
    );
    assert!(page.text().contains("/assets/hls.min.js") && page.text().contains("/hls/live.m3u8"));
    let js = runner.get("/assets/hls.min.js");
    assert_eq!(js.status, 200);
    assert!(
        js.header("content-type")
            .unwrap_or_default()
            .starts_with("text/javascript")
    );
    assert!(js.body.len() > 100_000);

    // HLS: a live playlist of 1 s segments, served with the right types and cache headers.
    let playlist = eventually(Duration::from_secs(20), "two HLS segments", || {
        let r = runner.get("/hls/live.m3u8");
        (r.status == 200 && r.text().matches(".ts").count() >= 2).then_some(r)
    });
    assert_eq!(
        playlist.header("content-type").unwrap_or_default(),
        "application/vnd.apple.mpegurl"
    );
    assert!(
        playlist
            .header("cache-control")
            .unwrap_or_default()
            .contains("no-cache")
    );
    let text = playlist.text();
    assert!(text.contains("#EXT-X-TARGETDURATION:1"), "{text}");
    // Program-date-time: the capture time of each segment's first frame, read from its stamp.
    let dates: Vec<i64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("#EXT-X-PROGRAM-DATE-TIME:"))
        .map(utc_ms)
        .collect();
    assert_eq!(dates.len(), text.matches("#EXTINF").count(), "{text}");
    for pair in dates.windows(2) {
        assert!(
            (pair[1] - pair[0] - 1000).abs() <= 100,
            "segments {} ms apart: {text}",
            pair[1] - pair[0]
        );
    }
    let age_ms = now_ms() - dates.last().copied().unwrap_or_default();
    assert!(
        (0..10_000).contains(&age_ms),
        "last segment dated {age_ms} ms ago"
    );
    let segment_name = text
        .lines()
        .find(|l| l.ends_with(".ts"))
        .expect("a segment")
        .to_string();
    let segment = runner.get(&format!("/hls/{segment_name}"));
    assert_eq!(segment.status, 200);
    assert_eq!(
        segment.header("content-type").unwrap_or_default(),
        "video/mp2t"
    );
    assert!(
        segment
            .header("cache-control")
            .unwrap_or_default()
            .contains("max-age")
    );
    let segment_file = dir.join("segment.ts");
    std::fs::write(&segment_file, &segment.body).unwrap();
    let streams = ffprobe(
        &["-show_entries", "stream=codec_name", "-of", "csv=p=0"],
        &segment_file,
    );
    assert!(
        streams.contains("h264") && streams.contains("aac"),
        "{streams}"
    );
    let duration = media_duration(&segment_file);
    assert!((0.5..=1.6).contains(&duration), "segment of {duration} s");
    // The capture stamps travel inside the segments as SEI, readable by other tools.
    let side_data = ffprobe(
        &[
            "-select_streams",
            "v",
            "-show_frames",
            "-show_entries",
            "frame_side_data=side_data_type",
            "-of",
            "csv",
        ],
        &segment_file,
    );
    assert!(
        side_data.contains("User Data Unregistered SEI"),
        "no SEI stamps in the segment"
    );

    // Static routes never leave their folder.
    for path in [
        "/hls/../Cargo.toml",
        "/hls/..%2F..%2Fetc%2Fpasswd",
        "/hls/%2Fetc%2Fpasswd",
        "/hls/.hidden.ts",
    ] {
        let r = runner.get(path);
        assert_eq!(r.status, 404, "{path} answered {}", r.status);
    }

    // Write endpoints need the bearer token, and bodies are size-limited.
    let marker = br#"{"label":"intro done"}"#;
    assert_eq!(
        runner.request("POST", "/api/markers", &[], marker).status,
        401
    );
    let wrong = [("Authorization", "Bearer wrong-token-5f1c")];
    assert_eq!(
        runner
            .request("POST", "/api/markers", &wrong, marker)
            .status,
        401
    );
    let auth = [("Authorization", "Bearer test-token-5f1c")];
    let huge = vec![b' '; 64 * 1024];
    assert_eq!(
        runner.request("POST", "/api/markers", &auth, &huge).status,
        413
    );
    assert_eq!(
        runner
            .request("POST", "/api/markers", &auth, b"not json")
            .status,
        400
    );
    // GET lists the markers (recording.rs); other methods are refused.
    assert_eq!(
        runner.request("PUT", "/api/markers", &auth, b"").status,
        405
    );
    let created = runner.request("POST", "/api/markers", &auth, marker);
    assert_eq!(created.status, 201, "{}", created.text());

    // Metrics: latency per path from latencymeter, bitrates, the recording.
    let metrics = eventually(
        Duration::from_secs(10),
        "latency metrics of the hls path",
        || {
            let m = runner.get("/metrics").text();
            m.contains("hybridlive_latency_ms{path=\"hls\",quantile=\"0.95\"}")
                .then_some(m)
        },
    );
    let p95 = metric(
        &metrics,
        "hybridlive_latency_ms{path=\"hls\",quantile=\"0.95\"}",
    )
    .expect("p95");
    assert!(p95 > 0.0 && p95 < 2000.0, "hls p95 {p95} ms");
    let kbps = metric(
        &metrics,
        "hybridlive_encoder_bitrate_kbps{encoder=\"video\"}",
    )
    .expect("bitrate");
    assert!(kbps > 100.0, "video at {kbps} kbit/s");
    assert!(
        metric(&metrics, "hybridlive_recording_bytes{output=\"recording\"}")
            .expect("recording size")
            > 0.0
    );
    assert_eq!(metric(&metrics, "hybridlive_markers_total"), Some(1.0));
    let status: serde_json::Value =
        serde_json::from_slice(&runner.get("/api/status").body).expect("JSON status");
    assert_eq!(status["outputs"]["hls"]["state"], "running");

    // Stop the recording: the file is finalised and its timeline holds the marker.
    let stop = runner.request("POST", "/api/recording", &auth, br#"{"action":"stop"}"#);
    assert_eq!(stop.status, 202, "{}", stop.text());
    let finished = runner.wait_event("recording-finished", Duration::from_secs(10));
    let first_file = PathBuf::from(first["path"].as_str().unwrap());
    assert_eq!(finished["path"].as_str(), first["path"].as_str());
    assert!(media_duration(&first_file) > 1.0);
    let timeline: serde_json::Value =
        serde_json::from_slice(&std::fs::read(first["timeline"].as_str().unwrap()).unwrap())
            .unwrap();
    // The shared sidecar format (hybridlive-timeline), the one `hybridlive repurpose` reads.
    assert_eq!(timeline["version"], 1);
    assert_eq!(timeline["events"][0]["type"], "marker");
    assert_eq!(timeline["events"][0]["label"], "intro done");
    assert!(timeline["events"][0]["at"].as_f64().unwrap() >= 0.0);
    assert!(timeline["started_at"].as_str().unwrap().ends_with('Z'));
    assert!(timeline["ended_at"].is_string());

    // A failing output is reported and retried while HLS keeps going: the recording folder is
    // replaced by a file, so the next recording cannot be created.
    let folder = first_file.parent().unwrap().to_path_buf();
    let aside = dir.join("recordings-aside");
    std::fs::rename(&folder, &aside).unwrap();
    std::fs::write(&folder, b"not a folder").unwrap();
    let start = runner.request("POST", "/api/recording", &auth, br#"{"action":"start"}"#);
    assert_eq!(start.status, 202);
    let failed = runner.wait_event("output-failed", Duration::from_secs(10));
    assert_eq!(failed["output"], "recording");
    let segments_before = runner.get("/hls/live.m3u8").text();
    std::fs::remove_file(&folder).unwrap();
    std::fs::rename(&aside, &folder).unwrap();
    runner.wait_event("output-restart", Duration::from_secs(10));
    let second = runner.wait_event("recording-started", Duration::from_secs(10));
    eventually(Duration::from_secs(5), "HLS to keep going", || {
        (runner.get("/hls/live.m3u8").text() != segments_before).then_some(())
    });

    // SIGTERM: EOS, the recording is finalised, exit 0.
    std::thread::sleep(Duration::from_secs(2));
    runner.signal("TERM");
    let status = runner.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "exit status {status}");
    let second_file = PathBuf::from(second["path"].as_str().unwrap());
    assert!(media_duration(&second_file) > 1.0);
    assert!(decoded_video_frames(&second_file) > 30);
    let _ = std::fs::remove_dir_all(&dir);
}

fn file_source_pipeline(location: &str) -> String {
    format!(
        "[sources.lesson]\ntype = \"file\"\nlocation = \"{location}\"\n\n\
         [encoders.video]\ntype = \"h264\"\ninputs = [\"lesson\"]\n\n\
         [encoders.audio]\ntype = \"aac\"\ninputs = [\"lesson\"]\n\n\
         [outputs.hls]\ntype = \"hls\"\ninputs = [\"video\", \"audio\"]\n"
    )
}

/// File ingest refuses media it cannot play before anything starts: the error names the file
/// and the reason, the run exits non-zero, nothing hangs or panics.
#[test]
fn broken_file_sources_fail_at_start_naming_the_file_and_the_reason() {
    let dir = scratch("broken-files");
    let good = dir.join("good.mp4");
    let made = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg("testsrc2=size=320x240:rate=25:duration=2")
        .args(["-c:v", "libx264", "-pix_fmt", "yuv420p"])
        .arg(&good)
        .status()
        .expect("ffmpeg");
    assert!(made.success());
    let whole = std::fs::read(&good).unwrap();
    let audio_only = dir.join("audio-only.m4a");
    let made = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i", "sine=duration=2"])
        .args(["-c:a", "aac"])
        .arg(&audio_only)
        .status()
        .expect("ffmpeg");
    assert!(made.success());
    let huge = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/media/broken/huge-dimensions.mp4")
        .canonicalize()
        .expect("committed broken media");
    let mut noise = vec![0u8; 128 * 1024];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for b in &mut noise {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = (x >> 24) as u8;
    }
    let write = |name: &str, data: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, data).unwrap();
        path
    };
    let cases: Vec<(PathBuf, &str)> = vec![
        (write("zero-length.mp4", &[]), "the file is empty"),
        (
            write("truncated.mp4", &whole[..whole.len() / 2]),
            "not playable",
        ),
        (write("garbage.mp4", &noise), "not playable"),
        (
            write("notes.mkv", b"lesson plan, not a recording\n"),
            "not playable",
        ),
        (audio_only, "has no video stream"),
        (huge, "16000x16000"),
        (dir.join("missing.mp4"), "is not a file"),
    ];
    for (file, reason) in cases {
        let toml = dir.join("broken-file.toml");
        std::fs::write(&toml, file_source_pipeline(&file.to_string_lossy())).unwrap();
        let mut runner = logged_runner(&toml, &dir, &[]);
        let status = runner.wait_exit(Duration::from_secs(90));
        let log = runner.output();
        assert!(
            !status.success(),
            "{}: the run went on: {log}",
            file.display()
        );
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            log.lines().any(|l| l.contains(&name) && l.contains(reason)),
            "{name}: no error naming the file and `{reason}`: {log}"
        );
        assert!(!log.contains("panicked"), "{name}: {log}");
        assert!(
            !log.contains("\"event\":\"ready\""),
            "{name}: served anyway"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Oversized bodies, malformed SDP, bad JSON, path traversal and control calls without the
/// right token all get their 4xx, slow senders hold no worker, HLS keeps producing segments
/// throughout, no session is left behind, and the token never appears in anything the runner
/// prints.
#[test]
fn http_abuse_gets_4xx_while_the_stream_plays_and_the_token_is_never_printed() {
    const SECRET: &str = "file-token-8d2e41c07b";
    const ENV_SECRET: &str = "env-token-3a9f5570c1";
    let dir = scratch("abuse");
    let toml = dir.join("abuse.toml");
    let pipeline = |token_line: &str| {
        format!(
            "[server]\n{token_line}\n\n\
             [sources.cam]\ntype = \"test\"\nwidth = 320\nheight = 240\nframerate = 15\n\n\
             [encoders.video]\ntype = \"h264\"\ninputs = [\"cam\"]\npreset = \"zerolatency\"\n\
             bitrate = 400\nkeyframe_interval = 1\n\n\
             [encoders.audio]\ntype = \"aac\"\ninputs = [\"cam\"]\n\n\
             [outputs.webrtc]\ntype = \"webrtc\"\ninputs = [\"video\"]\nloopback_only = true\n\n\
             [outputs.hls]\ntype = \"hls\"\ninputs = [\"video\", \"audio\"]\n\
             segment_duration = 1\nplaylist_length = 5\n"
        )
    };
    std::fs::write(&toml, pipeline(&format!("token = \"{SECRET}\""))).unwrap();
    let mut runner = logged_runner(&toml, &dir, &[("GST_DEBUG", "3")]);
    runner.wait_ready(Duration::from_secs(30));
    let addr = runner.addr();
    let request = |method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]| {
        runner_child::request(&addr, method, path, headers, body)
    };
    eventually(Duration::from_secs(30), "the first HLS segments", || {
        let playlist = request("GET", "/hls/live.m3u8", &[], b"");
        (playlist.status == 200 && playlist.text().matches(".ts").count() >= 2).then_some(())
    });

    // The page's icon is there: a browser's console shows no 404 for it on every load.
    let page = request("GET", "/", &[], b"").text();
    let icon = page
        .split("<link rel=\"icon\" href=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page declares its icon");
    for path in [icon, "/favicon.ico"] {
        let got = request("GET", path, &[], b"");
        assert_eq!(got.status, 200, "{path}");
        assert_eq!(
            got.header("Content-Type").unwrap_or_default(),
            "image/svg+xml",
            "{path}"
        );
    }

    // HLS is watched all along: every segment name it lists, in order.
    let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = {
        let addr = addr.clone();
        let watching = watching.clone();
        std::thread::spawn(move || {
            let mut seen: Vec<String> = Vec::new();
            while watching.load(std::sync::atomic::Ordering::SeqCst) {
                let playlist = runner_child::request(&addr, "GET", "/hls/live.m3u8", &[], b"");
                assert_eq!(playlist.status, 200, "the playlist went away");
                for line in playlist.text().lines().filter(|l| l.ends_with(".ts")) {
                    if !seen.iter().any(|s| s == line) {
                        seen.push(line.to_string());
                    }
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            seen
        })
    };

    let auth = format!("Bearer {SECRET}");
    let auth = [("Authorization", auth.as_str())];
    let sdp = [("Content-Type", "application/sdp")];
    fn json<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut h = vec![("Content-Type", "application/json")];
        h.extend_from_slice(extra);
        h
    }
    let tried = std::cell::Cell::new(0);
    let expect = |status: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]| {
        let r = request(method, path, headers, body);
        assert_eq!(r.status, status, "{method} {path}: {}", r.text());
        assert!(!r.text().contains("root:"), "{path} leaked a file");
        tried.set(tried.get() + 1);
    };

    // Oversized bodies.
    expect(413, "POST", "/api/markers", &auth, &vec![b' '; 1 << 20]);
    expect(413, "POST", "/whep", &sdp, &vec![b'a'; 1 << 20]);
    // Malformed SDP and offers the stream cannot serve.
    expect(400, "POST", "/whep", &sdp, b"v=0\r\nthis is not sdp");
    expect(400, "POST", "/whep", &sdp, &[0xff, 0xfe, 0x00, 0x80]);
    let audio_only = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n";
    expect(400, "POST", "/whep", &sdp, audio_only.as_bytes());
    let vp8_only = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n";
    expect(406, "POST", "/whep", &sdp, vp8_only.as_bytes());
    let out_of_range = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 300\r\na=rtpmap:300 H264/90000\r\n\
        a=fmtp:300 packetization-mode=1;profile-level-id=42e01f\r\n";
    expect(406, "POST", "/whep", &sdp, out_of_range.as_bytes());
    expect(
        415,
        "POST",
        "/whep",
        &[("Content-Type", "text/plain")],
        vp8_only.as_bytes(),
    );
    expect(
        404,
        "DELETE",
        "/whep/0123456789abcdef0123456789abcdef",
        &[],
        b"",
    );
    expect(405, "GET", "/whep", &[], b"");
    // Bad JSON on every write endpoint (with the token).
    for body in [
        &b"{"[..],
        b"[]",
        b"\"label\"",
        b"{\"label\": 5}",
        &[0xc3, 0x28],
    ] {
        expect(400, "POST", "/api/markers", &json(&auth), body);
    }
    expect(
        400,
        "POST",
        "/api/recording",
        &json(&auth),
        br#"{"action":"explode"}"#,
    );
    expect(400, "POST", "/api/offers", &json(&auth), br#"{"show": 5}"#);
    expect(
        422,
        "POST",
        "/api/offers",
        &json(&auth),
        br#"{"hide": "no-such-offer"}"#,
    );
    // Path traversal on the static and HLS routes.
    for path in [
        "/hls/../Cargo.toml",
        "/hls/..%2F..%2F..%2Fetc%2Fpasswd",
        "/hls/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/hls/%2e%2e%2f%2e%2e%2fetc%2fpasswd.m3u8",
        "/hls/..%5c..%5cetc%5cpasswd.ts",
        "/hls//etc/passwd",
        "/hls/%2Fetc%2Fpasswd.ts",
        "/hls/live.m3u8%00.ts",
        "/../../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/assets/../../../etc/passwd",
        "/assets/%2e%2e/%2e%2e/Cargo.toml",
        "//etc/passwd",
        "/etc/passwd",
    ] {
        expect(404, "GET", path, &[], b"");
    }
    // Viewer routes are read-only.
    expect(405, "POST", "/metrics", &auth, b"");
    expect(405, "DELETE", "/api/status", &auth, b"");
    expect(405, "PUT", "/", &auth, b"x");
    // Control calls without the token, with a wrong one, or with it in the wrong place.
    let marker = br#"{"label": "x"}"#;
    let wrong_case = format!("Bearer {}", SECRET.to_uppercase());
    let prefix = format!("Bearer {}", &SECRET[..SECRET.len() - 1]);
    let longer = format!("Bearer {SECRET}0");
    let basic = format!("Basic {SECRET}");
    for path in ["/api/markers", "/api/recording", "/api/offers"] {
        expect(401, "POST", path, &json(&[]), marker);
        for header in [&wrong_case, &prefix, &longer, &basic] {
            expect(
                401,
                "POST",
                path,
                &json(&[("Authorization", header)]),
                marker,
            );
        }
        expect(
            401,
            "POST",
            &format!("{path}?token={SECRET}"),
            &json(&[]),
            marker,
        );
    }
    // A body announced as huge is refused before it is read.
    let mut stream = TcpStream::connect(&addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "POST /whep HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n\
         Content-Length: 10000000000\r\nConnection: close\r\n\r\nv=0\r\n"
    )
    .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 413"),
        "a 10 GB Content-Length: {}",
        String::from_utf8_lossy(&answer)
    );
    tried.set(tried.get() + 1);

    // Clients that announce an offer and never finish sending it hold none of the workers the
    // viewer page and HLS need (there are 4).
    let slow: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut stream = TcpStream::connect(&addr).expect("connect");
            write!(
                stream,
                "POST /whep HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n\
                 Content-Length: 60000\r\n\r\nv=0\r\n"
            )
            .unwrap();
            stream
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..3 {
        expect(200, "GET", "/hls/live.m3u8", &[], b"");
        expect(200, "GET", "/", &[], b"");
        expect(200, "GET", "/api/status", &[], b"");
    }
    drop(slow);

    // The right token still works, and nothing of the abuse stayed behind.
    expect(201, "POST", "/api/markers", &json(&auth), marker);
    let metrics = request("GET", "/metrics", &[], b"").text();
    assert_eq!(metric(&metrics, "hybridlive_webrtc_viewers"), Some(0.0));
    assert_eq!(
        metric(&metrics, "hybridlive_output_restarts_total{output=\"hls\"}"),
        Some(0.0)
    );
    // HLS went on during all of it: new segments, consecutive, the newest one plays.
    // A few more segments after the abuse.
    std::thread::sleep(Duration::from_secs(3));
    watching.store(false, std::sync::atomic::Ordering::SeqCst);
    let seen = watcher.join().expect("the HLS watcher");
    let index = |name: &str| -> u64 {
        name.trim_end_matches(".ts")
            .rsplit(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|d| d.parse().ok())
            .unwrap_or_else(|| panic!("segment name {name}"))
    };
    let indexes: Vec<u64> = seen.iter().map(|s| index(s)).collect();
    assert!(indexes.len() >= 4, "HLS stalled during the abuse: {seen:?}");
    assert!(
        indexes.windows(2).all(|w| w[1] == w[0] + 1),
        "HLS skipped or restarted during the abuse: {seen:?}"
    );
    let newest = seen.last().expect("a segment");
    let segment = request("GET", &format!("/hls/{newest}"), &[], b"");
    assert_eq!(segment.status, 200);
    let file = dir.join("newest.ts");
    std::fs::write(&file, &segment.body).unwrap();
    assert!(
        decoded_video_frames(&file) > 5,
        "the newest segment does not play"
    );
    eprintln!(
        "http abuse: {} requests refused or answered as expected; HLS {seen:?}",
        tried.get()
    );

    let log = runner.output();
    assert!(!log.contains(SECRET), "the token was printed:\n{log}");
    drop(runner);

    // The same for a token from the environment.
    std::fs::write(&toml, pipeline("token_env = \"ABUSE_TOKEN\"")).unwrap();
    let mut runner = logged_runner(
        &toml,
        &dir,
        &[("ABUSE_TOKEN", ENV_SECRET), ("GST_DEBUG", "3")],
    );
    runner.wait_ready(Duration::from_secs(30));
    let addr = runner.addr();
    let bearer = format!("Bearer {ENV_SECRET}");
    let created = runner_child::request(
        &addr,
        "POST",
        "/api/markers",
        &[("Authorization", &bearer)],
        marker,
    );
    assert_eq!(created.status, 201);
    let wrong = runner_child::request(
        &addr,
        "POST",
        "/api/markers",
        &[("Authorization", "Bearer x")],
        marker,
    );
    assert_eq!(wrong.status, 401);
    let log = runner.output();
    assert!(!log.contains(ENV_SECRET), "the token was printed:\n{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn recording_survives_kill_9() {
    let dir = scratch("kill9");
    let mut runner = start_runner(&shipped_pipeline("record.toml"), &dir, &[]);
    let started = runner.wait_event("recording-started", Duration::from_secs(10));
    let utc_start_ms = utc_ms(started["utc_start"].as_str().unwrap());
    std::thread::sleep(Duration::from_secs(4));
    runner.signal("KILL");
    let killed_at_ms = now_ms();
    runner.wait_exit(Duration::from_secs(5));
    let file = PathBuf::from(started["path"].as_str().unwrap());
    let ran = (killed_at_ms - utc_start_ms) as f64 / 1000.0;
    let duration = media_duration(&file);
    assert!(
        (ran - duration).abs() <= 1.0,
        "ran {ran:.2} s from the first frame, the file holds {duration:.2} s"
    );
    let frames = decoded_video_frames(&file);
    assert!(
        frames as f64 >= (duration - 0.5) * 30.0,
        "{frames} frames decode in {duration} s"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn hls_pipeline_plays_in_headless_chromium_and_stops_after_its_duration() {
    let dir = scratch("hls");
    // Long enough for a browser that starts slowly on a loaded machine to find the page up
    // (with 8 s, one CI run's Chromium came after the runner had ended and dumped nothing).
    let mut runner = start_runner(&shipped_pipeline("hls.toml"), &dir, &["--duration", "25"]);
    eventually(Duration::from_secs(10), "two HLS segments", || {
        let r = runner.get("/hls/live.m3u8");
        (r.status == 200 && r.text().matches(".ts").count() >= 2).then_some(())
    });
    // The viewer page itself, in a real browser: hls.js loads the playlist, MSE plays it.
    let profile = dir.join("chromium-profile");
    // Bounded: a browser that hangs fails the test instead of stalling the suite.
    let dom = Command::new("timeout")
        .args(["90", "chromium"])
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
        ])
        .args([
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .args([
            "--autoplay-policy=no-user-gesture-required",
            "--virtual-time-budget=15000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("{}/", runner.base))
        .output()
        .expect("chromium is installed (scripts/setup)");
    let browser_log = String::from_utf8_lossy(&dom.stderr).to_string();
    let dom = String::from_utf8_lossy(&dom.stdout);
    let state = dom
        .split("<div id=\"state\"")
        .nth(1)
        .and_then(|rest| rest.split("</div>").next())
        .unwrap_or_else(|| {
            panic!(
                "no state element in the page:\n{dom}\nchromium's log:\n{}",
                tail_lines(&browser_log, 30)
            )
        });
    // No WebRTC output in hls.toml: the page falls back to HLS and plays it.
    assert!(
        state.contains("data-mode=\"hls\""),
        "the page is not on HLS: {state}"
    );
    let played: f64 = state
        .split("data-current-time=\"")
        .nth(1)
        .and_then(|v| v.split('"').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no playback position: {state}"));
    assert!(played > 0.0, "playback did not advance: {state}");
    let status = runner.wait_exit(Duration::from_secs(40));
    assert!(status.success(), "exit status {status}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A contribution encoder dialing `ingest.toml`'s SRT listener on 127.0.0.1:9000.
const SRT_SENDER: &str = "videotestsrc is-live=true ! video/x-raw,width=640,height=360,framerate=30/1 \
     ! x264enc tune=zerolatency key-int-max=30 ! mpegtsmux name=m \
     ! srtsink uri=srt://127.0.0.1:9000?mode=caller \
     audiotestsrc is-live=true ! audioconvert ! avenc_aac ! m.";

/// Waits for the `source` event that puts `state` on air.
fn wait_source_state(runner: &mut RunnerChild, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "the source never went to `{state}`");
        let event = runner.wait_event("source", left);
        if event["state"] == state {
            return;
        }
    }
}

#[test]
fn ingest_takes_an_srt_contribution_and_the_slate_covers_while_the_sender_is_gone() {
    let dir = scratch("ingest");
    let mut runner = start_runner(&shipped_pipeline("ingest.toml"), &dir, &[]);
    let started = runner.wait_event("recording-started", Duration::from_secs(10));
    let sender = Redialing::gst_launch(SRT_SENDER.into());
    wait_source_state(&mut runner, "primary");
    let playlist = eventually(
        Duration::from_secs(20),
        "HLS segments from the SRT contribution",
        || {
            let r = runner.get("/hls/live.m3u8");
            (r.status == 200 && r.text().matches(".ts").count() >= 2).then_some(r.text())
        },
    );
    let name = playlist
        .lines()
        .find(|l| l.ends_with(".ts"))
        .unwrap()
        .to_string();
    let segment = dir.join("segment.ts");
    std::fs::write(&segment, runner.get(&format!("/hls/{name}")).body).unwrap();
    // Normalised to the configured 1280x720, whatever the sender sent.
    let size = ffprobe(
        &[
            "-select_streams",
            "v",
            "-show_entries",
            "stream=width,height",
            "-of",
            "csv=p=0",
        ],
        &segment,
    );
    assert_eq!(size.lines().next(), Some("1280,720"), "{size}");

    // The sender dies: the slate takes over and HLS goes on.
    drop(sender);
    wait_source_state(&mut runner, "fallback");
    let before = runner.get("/hls/live.m3u8").text();
    eventually(
        Duration::from_secs(5),
        "HLS to go on over the slate",
        || (runner.get("/hls/live.m3u8").text() != before).then_some(()),
    );
    let metrics = runner.get("/metrics").text();
    assert_eq!(
        metric(
            &metrics,
            "hybridlive_source_on_fallback{source=\"presenter\"}"
        ),
        Some(1.0)
    );

    // It comes back: the source is given back.
    let _sender = Redialing::gst_launch(SRT_SENDER.into());
    wait_source_state(&mut runner, "primary");
    std::thread::sleep(Duration::from_secs(1));
    runner.signal("INT");
    let stopped_at_ms = now_ms();
    let status = runner.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "exit status {status}");
    // Nothing was lost across the two switches: the recording covers the whole run.
    let file = PathBuf::from(started["path"].as_str().unwrap());
    let ran = (stopped_at_ms - utc_ms(started["utc_start"].as_str().unwrap())) as f64 / 1000.0;
    let duration = media_duration(&file);
    assert!(
        (ran - duration).abs() <= 1.0,
        "ran {ran:.2} s, recorded {duration:.2} s"
    );
    assert!(decoded_video_frames(&file) as f64 >= (duration - 0.5) * 30.0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn uplink_pushes_rtmp_and_serves_srt_and_survives_a_missing_platform() {
    let dir = scratch("uplink");
    let mut runner = start_runner(&shipped_pipeline("uplink.toml"), &dir, &[]);
    // No RTMP server yet: that output fails and is retried; the others run on.
    let failed = runner.wait_event("output-failed", Duration::from_secs(10));
    assert_eq!(failed["output"], "platform");
    let flv = dir.join("platform.flv");
    let server = ChildGuard(
        Command::new("ffmpeg")
            .args([
                "-v",
                "error",
                "-listen",
                "1",
                "-i",
                "rtmp://127.0.0.1:1935/live/stream-key",
            ])
            .args(["-c", "copy", "-f", "flv", "-y"])
            .arg(&flv)
            .stdin(Stdio::null())
            .spawn()
            .expect("ffmpeg"),
    );
    let ts = dir.join("contribution.ts");
    let pulled = Command::new("timeout")
        .args([
            "4",
            "gst-launch-1.0",
            "-q",
            "srtsrc",
            "uri=srt://127.0.0.1:9100?mode=caller",
            "!",
            "filesink",
        ])
        .arg(format!("location={}", ts.display()))
        .status()
        .expect("gst-launch-1.0");
    assert!(!pulled.success() || ts.exists(), "the SRT pull did not run");
    eventually(
        Duration::from_secs(15),
        "the RTMP platform to receive",
        || {
            std::fs::metadata(&flv)
                .is_ok_and(|m| m.len() > 200_000)
                .then_some(())
        },
    );
    runner.signal("INT");
    assert!(runner.wait_exit(Duration::from_secs(15)).success());
    drop(server);
    for file in [&ts, &flv] {
        let streams = ffprobe(
            &["-show_entries", "stream=codec_name", "-of", "csv=p=0"],
            file,
        );
        assert!(
            streams.contains("h264") && streams.contains("aac"),
            "{}: {streams}",
            file.display()
        );
        assert!(
            decoded_video_frames(file) > 30,
            "{} does not decode",
            file.display()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_looping_file_source_plays_longer_than_the_file() {
    let dir = scratch("file");
    let made = Command::new("gst-launch-1.0")
        .current_dir(&dir)
        .args([
            "-q",
            "videotestsrc",
            "num-buffers=30",
            "!",
            "video/x-raw,width=320,height=180,framerate=30/1",
        ])
        .args([
            "!",
            "x264enc",
            "!",
            "h264parse",
            "!",
            "mp4mux",
            "name=m",
            "!",
            "filesink",
            "location=clip.mp4",
        ])
        .args([
            "audiotestsrc",
            "num-buffers=47",
            "!",
            "audioconvert",
            "!",
            "avenc_aac",
            "!",
            "aacparse",
            "!",
            "m.",
        ])
        .status()
        .expect("gst-launch-1.0");
    assert!(made.success());
    let config = dir.join("file.toml");
    std::fs::write(
        &config,
        "[sources.clip]\ntype = \"file\"\nlocation = \"clip.mp4\"\nloop = true\n\n\
         [encoders.video]\ntype = \"h264\"\ninputs = [\"clip\"]\n\n\
         [encoders.audio]\ntype = \"aac\"\ninputs = [\"clip\"]\n\n\
         [outputs.rec]\ntype = \"record\"\ninputs = [\"video\", \"audio\"]\ndirectory = \"rec\"\n",
    )
    .unwrap();
    let mut runner = start_runner(&config, &dir, &["--duration", "4"]);
    let started = runner.wait_event("recording-started", Duration::from_secs(10));
    let status = runner.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "exit status {status}");
    let file = PathBuf::from(started["path"].as_str().unwrap());
    let duration = media_duration(&file);
    // The clip lasts 1 s; looping keeps the programme going for the whole run.
    assert!(duration > 2.5, "recorded {duration} s from a 1 s clip");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Run in the viewer page once it plays WebRTC: asks the test (a console line) to restart the
/// runner, then watches until a new peer connection decodes 30 frames or HLS plays on, and
/// returns what it saw.
const PAGE_ACROSS_RUNNER_RESTART: &str = "(async () => { \
    const v = window.viewer; const firstPc = v.player.pc; const texts = []; \
    console.log('RESTART-THE-RUNNER'); \
    const deadline = performance.now() + 60000; let decoded = 0; let hlsFrom = null; let hlsPlayed = 0; \
    while (performance.now() < deadline) { \
      const t = `${v.mode}: ${document.getElementById('state').textContent}`; \
      if (texts[texts.length - 1] !== t) texts.push(t); \
      if (v.mode === 'webrtc' && v.player && v.player.pc && v.player.pc !== firstPc) { \
        const s = await v.player.stats(); decoded = s ? s.framesDecoded : 0; \
        if (decoded >= 30) break; \
      } \
      if (v.mode === 'hls') { \
        const now = document.querySelector('video').currentTime; \
        if (hlsFrom === null) hlsFrom = now; \
        hlsPlayed = now - hlsFrom; if (hlsPlayed >= 2) break; \
      } \
      await new Promise((r) => setTimeout(r, 100)); \
    } \
    return { mode: v.mode, decoded, hlsPlayed, texts }; \
  })()";

#[test]
fn viewer_page_plays_again_after_the_runner_restarted() {
    if !in_private_netns("viewer_page_plays_again_after_the_runner_restarted") {
        return;
    }
    let dir = scratch("page-restart");
    let file = dir.join("page.toml");
    std::fs::write(
        &file,
        "[sources.cam]\ntype = \"test\"\nwidth = 640\nheight = 360\n\n\
         [encoders.video]\ntype = \"h264\"\ninputs = [\"cam\"]\npreset = \"zerolatency\"\n\
         bitrate = 1200\nkeyframe_interval = 1\n\n\
         [encoders.voice]\ntype = \"opus\"\ninputs = [\"cam\"]\n\n\
         [encoders.audio]\ntype = \"aac\"\ninputs = [\"cam\"]\n\n\
         [outputs.webrtc]\ntype = \"webrtc\"\ninputs = [\"video\", \"voice\"]\nloopback_only = true\n\n\
         [outputs.hls]\ntype = \"hls\"\ninputs = [\"video\", \"audio\"]\nsegment_duration = 1\n",
    )
    .unwrap();
    // A fixed port, so that the page finds the restarted runner where it left the first.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let addr = format!("127.0.0.1:{port}");
    let mut runner = runner_command(&file, &dir).http(&addr).start();
    let driver = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/browser/viewer.mjs");
    let mut page = Command::new("node")
        .arg(&driver)
        .arg(format!("http://{addr}/"))
        .arg("90")
        .env(
            "WAIT",
            "window.viewer && window.viewer.mode === 'webrtc' && window.viewer.latencies.length >= 10",
        )
        .env("RESULT", PAGE_ACROSS_RUNNER_RESTART)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs (scripts/setup installs the browser test driver)");
    let stderr = page.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("the page never played WebRTC:\n{}", log.join("\n")));
        let asked = line.contains("RESTART-THE-RUNNER");
        log.push(line);
        if asked {
            break;
        }
    }
    runner.signal("INT");
    assert!(runner.wait_exit(Duration::from_secs(30)).success());
    let mut runner = runner_command(&file, &dir).http(&addr).start();
    let out = page.wait_with_output().expect("the page driver ends");
    log.extend(rx.try_iter());
    assert!(
        out.status.success(),
        "browser run failed:\n{}",
        log.join("\n")
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("the viewer page across a runner restart: {result}");
    let again_webrtc = result["mode"] == "webrtc" && result["decoded"].as_u64() >= Some(30);
    let on_hls = result["mode"] == "hls" && result["hlsPlayed"].as_f64() >= Some(2.0);
    assert!(
        again_webrtc || on_hls,
        "the page did not play again after the runner restarted: {result}\n{}",
        log.join("\n")
    );
    runner.signal("INT");
    assert!(runner.wait_exit(Duration::from_secs(30)).success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn viewer_page_plays_webrtc_over_whep_and_a_raised_hand_reaches_the_host() {
    if !in_private_netns("viewer_page_plays_webrtc_over_whep_and_a_raised_hand_reaches_the_host") {
        return;
    }
    let dir = scratch("webrtc");
    let file = dir.join("webrtc.toml");
    std::fs::write(
        &file,
        r#"
[server]
token_env = "HYBRIDLIVE_TOKEN"

[sources.cam]
type = "test"
width = 640
height = 360
framerate = 30

[encoders.video]
type = "h264"
inputs = ["cam"]
preset = "zerolatency"
bitrate = 1500
keyframe_interval = 1

[encoders.voice]
type = "opus"
inputs = ["cam"]
bitrate = 64

[outputs.webrtc]
type = "webrtc"
inputs = ["video", "voice"]
loopback_only = true
"#,
    )
    .unwrap();
    let runner = start_runner(&file, &dir, &[]);
    let result = viewer_page(
        &runner.base,
        "window.viewer && window.viewer.mode === 'webrtc' && window.viewer.latencies.length >= 60",
        "(async () => { \
               const rtt = await window.viewer.player.raiseHand('Which brush for the edges?'); \
               const s = await window.viewer.player.stats(); \
               const l = [...window.viewer.latencies].sort((a, b) => a - b); \
               const p50 = l[Math.floor(l.length / 2)], p95 = l[Math.floor(l.length * 0.95)]; \
               await window.viewer.player.reportLatency(p50, p95); \
               await new Promise((r) => setTimeout(r, 300)); \
               const metrics = await (await fetch('/metrics')).text(); \
               await window.viewer.player.stop(); \
               await new Promise((r) => setTimeout(r, 1000)); \
               return { rtt, framesDecoded: s.framesDecoded, p50, p95, metrics }; })()",
    );
    eprintln!("chromium through the runner: {}", {
        let mut shown = result.clone();
        shown["metrics"] = serde_json::Value::Null;
        shown
    });
    assert!(result["framesDecoded"].as_u64().unwrap() >= 60, "{result}");
    let p50 = result["p50"].as_f64().unwrap();
    // A bound that catches a stamp read against the wrong clock; the benchmark measures the
    // figure.
    assert!(p50 > 0.0 && p50 < 1000.0, "glass-to-glass p50 {p50} ms");
    assert!(result["rtt"].as_f64().unwrap() > 0.0, "{result}");

    // The page reported its latency over the data channel while it played (read by the page
    // itself, while its session is certainly alive).
    let metrics = result["metrics"].as_str().unwrap_or_default();
    let reported = metric(metrics, "hybridlive_viewer_latency_ms{stat=\"median_p50\"}");
    assert!(
        reported.is_some_and(|ms| ms > 0.0 && ms < 1000.0),
        "viewer latency in /metrics: {metrics}"
    );
    assert_eq!(
        metric(metrics, "hybridlive_webrtc_viewers"),
        Some(1.0),
        "{metrics}"
    );

    // Anyone sees that a viewer raised a hand (an opaque id, not its WHEP resource); only the
    // host, with the token, reads the question.
    let status: serde_json::Value =
        serde_json::from_str(&runner.get("/api/status").text()).unwrap();
    let hands = &status["webrtc"]["raised_hands"];
    assert!(hands[0]["viewer"].is_string(), "{status}");
    assert!(
        hands[0]["text"].is_null(),
        "the question is public: {status}"
    );
    let auth = [("Authorization", "Bearer test-token-5f1c")];
    let status: serde_json::Value =
        serde_json::from_str(&runner.request("GET", "/api/status", &auth, b"").text()).unwrap();
    let hands = &status["webrtc"]["raised_hands"];
    assert_eq!(hands[0]["text"], "Which brush for the edges?", "{status}");
    // The page closed with the browser: its session is gone (DELETE or RTCP silence).
    eventually(
        Duration::from_secs(30),
        "the viewer's session torn down",
        || {
            let status: serde_json::Value =
                serde_json::from_str(&runner.get("/api/status").text()).ok()?;
            (status["webrtc"]["viewers"] == 0).then_some(())
        },
    );
    // The viewer leaving (its data channel torn down under the server's feet) ended its own
    // session only: the output the other viewers watch kept running.
    let status: serde_json::Value =
        serde_json::from_str(&runner.get("/api/status").text()).unwrap();
    let webrtc = &status["outputs"]["webrtc"];
    assert_eq!(webrtc["state"], "running", "{status}");
    assert_eq!(webrtc["restarts"], 0, "{status}");
    assert_eq!(runner.request("OPTIONS", "/whep", &[], b"").status, 204);
}

#[test]
fn webrtc_output_sends_vp8_to_viewers_when_listed_first() {
    if !in_private_netns("webrtc_output_sends_vp8_to_viewers_when_listed_first") {
        return;
    }
    let dir = scratch("webrtc-vp8");
    let file = dir.join("webrtc-vp8.toml");
    std::fs::write(
        &file,
        r#"
[sources.cam]
type = "test"
width = 640
height = 360
framerate = 30

[encoders.vp8]
type = "vp8"
inputs = ["cam"]
bitrate = 1000

[encoders.video]
type = "h264"
inputs = ["cam"]
preset = "zerolatency"
bitrate = 1000

[outputs.webrtc]
type = "webrtc"
inputs = ["vp8", "video"]
loopback_only = true
"#,
    )
    .unwrap();
    let runner = start_runner(&file, &dir, &[]);
    let result = viewer_page(
        &runner.base,
        "window.viewer && window.viewer.mode === 'webrtc' && window.viewer.player",
        "(async () => { \
               const until = performance.now() + 20000; \
               let s = await window.viewer.player.stats(); \
               while (s.framesDecoded < 45 && performance.now() < until) { \
                 await new Promise((r) => setTimeout(r, 100)); \
                 s = await window.viewer.player.stats(); } \
               const report = await window.viewer.player.pc.getStats(); \
               const codec = report.get(s.codecId).mimeType; \
               await window.viewer.player.stop(); \
               return { framesDecoded: s.framesDecoded, codec }; })()",
    );
    eprintln!("chromium through the runner, VP8 first: {result}");
    assert_eq!(result["codec"], "video/VP8", "{result}");
    // 45 frames decoded within 20 s (a stalled stream never gets there).
    assert!(result["framesDecoded"].as_u64().unwrap() >= 45, "{result}");

    // A viewer that offers only H.264 gets the second choice.
    let h264_only = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        a=group:BUNDLE 0\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 102\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=recvonly\r\n\
        a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
        a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
        a=setup:actpass\r\na=rtcp-mux\r\n\
        a=rtpmap:102 H264/90000\r\na=fmtp:102 packetization-mode=1;profile-level-id=42e01f\r\n";
    let answer = runner.request(
        "POST",
        "/whep",
        &[("Content-Type", "application/sdp")],
        h264_only.as_bytes(),
    );
    assert_eq!(answer.status, 201, "{}", answer.text());
    assert!(answer.text().contains("H264/90000"), "{}", answer.text());
    assert!(!answer.text().contains("VP8"), "{}", answer.text());
}

#[test]
fn offers_shown_over_the_api_land_in_the_recording_timeline() {
    let dir = scratch("offers");
    let file = dir.join("offers.toml");
    std::fs::write(
        &file,
        r#"
[server]
token_env = "HYBRIDLIVE_TOKEN"

[sources.cam]
type = "test"
width = 640
height = 360
framerate = 30

[transforms.offers]
type = "offeroverlay"
inputs = ["cam"]

[encoders.video]
type = "h264"
inputs = ["offers"]

[encoders.audio]
type = "aac"
inputs = ["cam"]

[outputs.recording]
type = "record"
inputs = ["video", "audio"]
directory = "rec"
"#,
    )
    .unwrap();
    let runner = start_runner(&file, &dir, &[]);
    let started = runner.wait_event("recording-started", Duration::from_secs(10));
    let bearer = format!("Bearer {TOKEN}");
    let auth = [("Authorization", bearer.as_str())];
    let show = br#"{"show": {"id": "kit", "title": "Watercolour starter kit", "price": "29 EUR", "qr": "https://shop.example/kit"}}"#;

    assert_eq!(runner.request("POST", "/api/offers", &[], show).status, 401);
    assert_eq!(
        runner
            .request("POST", "/api/offers", &auth, br#"{"show": 3}"#)
            .status,
        400
    );
    // A card without a title is refused by the overlay itself.
    let untitled = br#"{"show": {"id": "x", "price": "1"}}"#;
    assert_eq!(
        runner
            .request("POST", "/api/offers", &auth, untitled)
            .status,
        422
    );

    let shown = runner.request("POST", "/api/offers", &auth, show);
    assert_eq!(shown.status, 200, "{}", shown.text());
    let event = runner.wait_event("offer-shown", Duration::from_secs(5));
    assert_eq!(event["id"], "kit");
    std::thread::sleep(Duration::from_millis(1500));
    let hide = runner.request("POST", "/api/offers", &auth, br#"{"hide": "kit"}"#);
    assert_eq!(hide.status, 200, "{}", hide.text());
    runner.wait_event("offer-hidden", Duration::from_secs(5));
    assert_eq!(
        runner
            .request("POST", "/api/offers", &auth, br#"{"hide": "nope"}"#)
            .status,
        422
    );

    let stop = runner.request("POST", "/api/recording", &auth, br#"{"action":"stop"}"#);
    assert_eq!(stop.status, 202, "{}", stop.text());
    runner.wait_event("recording-finished", Duration::from_secs(10));
    let timeline: serde_json::Value =
        serde_json::from_slice(&std::fs::read(started["timeline"].as_str().unwrap()).unwrap())
            .unwrap();
    let offer = &timeline["events"][0];
    assert_eq!(offer["type"], "offer-shown", "{timeline}");
    assert_eq!(offer["offer_id"], "kit");
    assert_eq!(offer["title"], "Watercolour starter kit");
    // On screen from the show to the end of the fade-out that followed the hide.
    let duration = offer["duration"].as_f64().unwrap();
    assert!(
        (1.2..4.0).contains(&duration),
        "on screen {duration} s: {timeline}"
    );
    assert!(offer["at"].as_f64().unwrap() > 0.0);
}

/// The latest `status` and every `abr-decision` a runner printed so far.
#[derive(Default)]
struct Seen {
    status: serde_json::Value,
    decisions: Vec<serde_json::Value>,
}

impl Seen {
    /// Reads events until `done` holds for what was seen.
    fn until(
        &mut self,
        runner: &mut RunnerChild,
        timeout: Duration,
        what: &str,
        done: &dyn Fn(&serde_json::Value, &[serde_json::Value]) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        while !done(&self.status, &self.decisions) {
            let left = deadline.saturating_duration_since(Instant::now());
            match runner.next_event(left) {
                Some(event) if event["event"] == "status" => self.status = event["status"].clone(),
                Some(event) if event["event"] == "abr-decision" => self.decisions.push(event),
                Some(event) => {
                    assert_ne!(event["event"], "ingest-error", "{event}");
                    eprintln!("{event}");
                }
                None => panic!(
                    "timed out waiting for {what}; last status {}; decisions {:#?}",
                    self.status,
                    self.decisions.iter().rev().take(10).collect::<Vec<_>>()
                ),
            }
        }
    }
}

#[test]
fn an_srt_uplink_squeezed_by_tc_tbf_gets_a_lower_bitrate_from_its_abrcontroller() {
    // hl0 stays here, shaped by tbf; hl1 moves into the receiver's own namespace so that the
    // SRT traffic really crosses the veth pair (between two local addresses it would not).
    if !hybridlive_testkit::in_private_netns_with_veth(
        "an_srt_uplink_squeezed_by_tc_tbf_gets_a_lower_bitrate_from_its_abrcontroller",
    ) {
        return;
    }
    let dir = scratch("abr-tbf");
    // A receiver that listens again whenever a connection ends (as a real one would), in a
    // process group of its own so that the whole loop dies with the test.
    let receiver = GroupGuard(
        Command::new("unshare")
            .process_group(0)
            .args(["--net", "--", "sh", "-c"])
            .arg(
                "while ! ip link show hl1 >/dev/null 2>&1; do sleep 0.1; done; \
                 ip link set lo up && ip addr add 10.213.0.2/24 dev hl1 && ip link set hl1 up && \
                 while true; do \
                   gst-launch-1.0 -q srtsrc uri=srt://10.213.0.2:9100?mode=listener ! fakesink; \
                 done",
            )
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare"),
    );
    hybridlive_testkit::wait_for_own_netns(receiver.0.id());
    sh(&format!("ip link set hl1 netns {}", receiver.0.id()));
    sh("tc qdisc add dev hl0 root tbf rate 8mbit burst 32kb latency 200ms");
    hybridlive_testkit::wait_for_udp_listener(receiver.0.id(), "10.213.0.2:9100");
    let file = dir.join("uplink.toml");
    std::fs::write(
        &file,
        r#"
[sources.cam]
type = "test"
width = 960
height = 540
audio = false

[transforms.uplink-abr]
type = "abrcontroller"
inputs = ["cam"]
output = "contribution"
min_bitrate = 200

[encoders.uplink-video]
type = "h264"
inputs = ["uplink-abr"]
bitrate = 2500

[outputs.contribution]
type = "srt"
inputs = ["uplink-video"]
uri = "srt://10.213.0.2:9100?mode=caller&latency=200"
"#,
    )
    .expect("pipeline file");
    let mut runner = start_runner(&file, &dir, &[]);
    // A roomy link: the contribution runs and its encoder makes its full bitrate.
    let mut seen = Seen::default();
    let video_kbps = |status: &serde_json::Value| {
        status["encoders"]["uplink-video"]["kbps"]
            .as_f64()
            .unwrap_or(0.0)
    };
    seen.until(
        &mut runner,
        Duration::from_secs(30),
        "the contribution to run at its full bitrate",
        &|status, _| {
            status["outputs"]["contribution"]["state"] == "running" && video_kbps(status) > 1800.0
        },
    );
    assert!(
        seen.decisions.iter().all(|d| d["direction"] != "decrease"),
        "cut on a roomy link: {:?}",
        seen.decisions
    );
    // /metrics shows the controller's state per output, as decided.
    let abr_gauge = |metrics: &str, name: &str| {
        metric(
            metrics,
            &format!("hybridlive_abr_{name}{{output=\"contribution\",encoder=\"uplink-video\"}}"),
        )
    };
    let metrics = runner.get("/metrics").text();
    assert!(
        abr_gauge(&metrics, "target_kbps").is_some_and(|t| t >= 2500.0),
        "{metrics}"
    );
    let before = seen.decisions.len();
    // The venue's uplink collapses to 800 kbit/s.
    sh("tc qdisc change dev hl0 root tbf rate 800kbit burst 16kb latency 200ms");
    seen.until(
        &mut runner,
        Duration::from_secs(40),
        "the encoder to be given less than the link carries and to follow",
        &|status, decisions| {
            decisions[before..]
                .iter()
                .any(|d| d["direction"] == "decrease")
                && status["abr"]["contribution"]["bitrate_kbps"]
                    .as_u64()
                    .is_some_and(|b| b < 800)
                // Measured over one second, key frames included: near the target, far below
                // the 2500 kbit/s of before.
                && video_kbps(status) < 1000.0
        },
    );
    for d in &seen.decisions[before..] {
        eprintln!(
            "{} {} kbit/s {} {:?} {}",
            d["utc"], d["bitrate_kbps"], d["reason"], d["height"], d["inputs"]
        );
    }
    let cut = seen.decisions[before..]
        .iter()
        .find(|d| d["direction"] == "decrease")
        .expect("a decrease");
    assert_eq!(cut["output"], "contribution");
    assert_eq!(cut["encoder"], "uplink-video");
    assert!(
        ["loss", "rtt", "delivery", "backlog", "estimate"]
            .contains(&cut["reason"].as_str().unwrap_or("")),
        "{cut}"
    );
    assert!(cut["bitrate_kbps"].as_u64() < cut["previous_bitrate_kbps"].as_u64());
    // A ladder is on by default: below 800 kbit/s the picture drops from 960x540 to 640x360.
    assert_eq!(
        seen.status["abr"]["contribution"]["height"], 360,
        "{}",
        seen.status
    );
    // The gauges followed the cut: a bitrate and a target the link carries, a lower rung.
    let metrics = runner.get("/metrics").text();
    for name in ["bitrate_kbps", "target_kbps"] {
        assert!(
            abr_gauge(&metrics, name).is_some_and(|b| b < 1000.0),
            "{name}: {metrics}"
        );
    }
    assert!(
        abr_gauge(&metrics, "rung").is_some_and(|r| r >= 1.0),
        "{metrics}"
    );
    assert!(
        abr_gauge(&metrics, "decisions_total").is_some_and(|n| n > before as f64),
        "{metrics}"
    );
    runner.signal("INT");
    assert!(runner.wait_exit(Duration::from_secs(15)).success());
    drop(receiver);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn low_latency_hls_serves_parts_blocks_reloads_and_plays_in_chromium() {
    let dir = scratch("llhls");
    let file = dir.join("llhls.toml");
    let hls = std::fs::read_to_string(shipped_pipeline("hls.toml")).unwrap();
    std::fs::write(&file, hls + "low_latency = true\npart_duration_ms = 200\n").unwrap();
    let runner = start_runner(&file, &dir, &["--duration", "40"]);

    let playlist = eventually(Duration::from_secs(15), "two complete segments", || {
        let r = runner.get("/hls/live.m3u8");
        (r.status == 200 && r.text().matches("#EXTINF").count() >= 2).then(|| r.text())
    });
    for tag in [
        "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES",
        "#EXT-X-PART-INF:PART-TARGET=",
        "#EXT-X-MAP:URI=\"init.mp4\"",
        "#EXT-X-PROGRAM-DATE-TIME:",
        ",INDEPENDENT=YES",
        "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part",
    ] {
        assert!(playlist.contains(tag), "no {tag} in\n{playlist}");
    }

    // A blocking reload for the hinted part answers once that part exists, and lists it.
    let hint = playlist
        .split("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part")
        .nth(1)
        .and_then(|rest| rest.split(".m4s").next())
        .and_then(|mp| mp.split_once('.'))
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .expect("a preload hint partM.P.m4s");
    let blocked = runner.get(&format!(
        "/hls/live.m3u8?_HLS_msn={}&_HLS_part={}",
        hint.0, hint.1
    ));
    assert_eq!(blocked.status, 200);
    assert!(
        blocked
            .text()
            .contains(&format!("URI=\"part{}.{}.m4s\"", hint.0, hint.1)),
        "the blocking reload does not list the part it waited for:\n{}",
        blocked.text()
    );
    let hinted = runner.get(&format!("/hls/part{}.{}.m4s", hint.0, hint.1));
    assert_eq!(hinted.status, 200);
    assert_eq!(
        hinted.header("content-type").unwrap_or_default(),
        "video/iso.segment"
    );
    assert_eq!(runner.get("/hls/live.m3u8?_HLS_msn=999999").status, 400);

    // The initialisation segment plus a complete segment decode: one second of 720p30.
    let segment = playlist
        .lines()
        .find(|l| l.starts_with("seg") && l.ends_with(".m4s"))
        .expect("a complete segment");
    let mut file_data = runner.get("/hls/init.mp4").body;
    file_data.extend(runner.get(&format!("/hls/{segment}")).body);
    let mp4 = dir.join("segment.mp4");
    std::fs::write(&mp4, file_data).unwrap();
    assert_eq!(decoded_video_frames(&mp4), 30, "{segment}");

    // hls.js in Chromium plays the parts (lowLatencyMode) from the viewer page.
    let result = viewer_page(
        &runner.base,
        "window.viewer && window.viewer.mode === 'hls' && window.viewer.hls \
             && window.viewer.hls.playingDate && document.querySelector('video').currentTime > 3",
        "(() => { const h = window.viewer.hls; \
               const d = h.latestLevelDetails || h.levels[h.currentLevel].details; \
               return { parts: d.partList ? d.partList.length : 0, lowLatency: h.lowLatencyMode, \
                        glassToGlassMs: Date.now() - h.playingDate.getTime(), \
                        played: document.querySelector('video').currentTime }; })()",
    );
    println!("LL-HLS in Chromium: {result}");
    assert!(result["parts"].as_u64().unwrap_or(0) > 0, "{result}");
    assert!(result["played"].as_f64().unwrap_or(0.0) > 3.0, "{result}");
    // Capture time (program date time from the stamps) to the frame on screen: a real figure.
    let g2g = result["glassToGlassMs"].as_f64().unwrap_or(f64::NAN);
    assert!(g2g.is_finite() && g2g > 0.0, "{result}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sfu_pipeline_publishes_the_shared_encode_over_whip_and_retries_a_missing_janus() {
    if !in_private_netns(
        "sfu_pipeline_publishes_the_shared_encode_over_whip_and_retries_a_missing_janus",
    ) {
        return;
    }
    let dir = scratch("sfu");
    // The WHIP server pipelines/sfu.toml names (a private network namespace: the port is ours);
    // no Janus: that output fails and retries while the others go on.
    let server = hybridlive_testkit::WhipServer::start(8190);
    let mut runner = start_runner(&shipped_pipeline("sfu.toml"), &dir, &[]);
    let connected = runner.wait_event("output-connected", Duration::from_secs(30));
    assert_eq!(connected["output"], "whip");
    eventually(Duration::from_secs(30), "frames at the WHIP server", || {
        (server.frames() >= 60).then_some(())
    });
    let status = eventually(Duration::from_secs(30), "janus to fail and retry", || {
        let status: serde_json::Value =
            serde_json::from_slice(&runner.get("/api/status").body).ok()?;
        (status["outputs"]["janus"]["restarts"].as_u64() >= Some(1)).then_some(status)
    });
    assert_eq!(status["outputs"]["whip"]["state"], "connected", "{status}");
    assert_eq!(status["outputs"]["whip"]["kind"], "whip", "{status}");
    assert_eq!(status["outputs"]["whip"]["restarts"], 0, "{status}");
    assert_eq!(status["outputs"]["hls"]["restarts"], 0, "{status}");
    assert!(
        status["outputs"]["janus"]["last_error"].is_string(),
        "{status}"
    );
    // Encoded once: the three encoders of the file, nothing more for the two egress outputs.
    let encoders: Vec<&String> = status["encoders"]
        .as_object()
        .expect("encoders")
        .keys()
        .collect();
    assert_eq!(encoders, ["audio", "video", "voice"]);
    let metrics = runner.get("/metrics").text();
    assert_eq!(
        metric(
            &metrics,
            "hybridlive_output_up{output=\"whip\",type=\"whip\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(runner.get("/hls/live.m3u8").status, 200);
    runner.signal("INT");
    assert!(runner.wait_exit(Duration::from_secs(20)).success());
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_whip_token_is_never_shown() {
    if !in_private_netns("a_whip_token_is_never_shown") {
        return;
    }
    let dir = scratch("whip-token");
    let server = hybridlive_testkit::WhipServer::start(hybridlive_testkit::free_tcp_port());
    let file = dir.join("sfu.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[sources.cam]
type = "test"
width = 640
height = 360
audio = false

[encoders.video]
type = "h264"
inputs = ["cam"]
bitrate = 800

[outputs.sfu]
type = "whip"
inputs = ["video"]
endpoint = "{}"
token = "sfu-secret-7d2"
loopback_only = true
"#,
            server.endpoint()
        ),
    )
    .expect("pipeline file");
    let mut runner = start_runner(&file, &dir, &[]);
    runner.wait_event("output-connected", Duration::from_secs(30));
    eventually(Duration::from_secs(30), "frames at the WHIP server", || {
        (server.frames() >= 30).then_some(())
    });
    for path in ["/api/status", "/metrics"] {
        let body = runner.get(path).text();
        assert!(!body.contains("sfu-secret-7d2"), "{path} shows the token");
    }
    runner.signal("INT");
    assert!(runner.wait_exit(Duration::from_secs(20)).success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn janus_output_publishes_into_a_videoroom_and_a_subscriber_decodes_it() {
    // Janus gathers no ICE candidates on loopback: the veth test hosts carry the media.
    if !hybridlive_testkit::in_private_netns_with_veth(
        "janus_output_publishes_into_a_videoroom_and_a_subscriber_decodes_it",
    ) {
        return;
    }
    const ROOM: u64 = 4321;
    const FEED: u64 = 7;
    let dir = scratch("janus");
    let janus = hybridlive_testkit::Janus::start();
    janus.create_room(ROOM, 4_000_000);
    let file = dir.join("janus.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[sources.cam]
type = "test"
width = 640
height = 360

[encoders.video]
type = "h264"
inputs = ["cam"]
bitrate = 1000

[encoders.voice]
type = "opus"
inputs = ["cam"]

[outputs.room]
type = "janus"
inputs = ["video", "voice"]
endpoint = "{}"
room_id = {ROOM}
feed_id = {FEED}
display_name = "class"
"#,
            janus.ws_endpoint()
        ),
    )
    .expect("pipeline file");
    let mut runner = start_runner(&file, &dir, &[]);
    let connected = runner.wait_event("output-connected", Duration::from_secs(30));
    assert_eq!(connected["output"], "room");
    eventually(Duration::from_secs(20), "the feed in the room", || {
        janus.is_publishing(ROOM, FEED).then_some(())
    });
    let subscriber = janus.subscribe(ROOM, FEED, "rtph264depay ! h264parse ! avdec_h264");
    eventually(
        Duration::from_secs(30),
        "frames decoded through Janus",
        || (subscriber.frames() >= 30).then_some(()),
    );
    let status: serde_json::Value =
        serde_json::from_slice(&runner.get("/api/status").body).expect("status JSON");
    assert_eq!(status["outputs"]["room"]["state"], "connected", "{status}");
    assert_eq!(status["outputs"]["room"]["kind"], "janus", "{status}");
    drop(subscriber);
    runner.signal("INT");
    assert!(runner.wait_exit(Duration::from_secs(20)).success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_abrcontroller_follows_the_sfu_of_a_whip_output() {
    if !in_private_netns("an_abrcontroller_follows_the_sfu_of_a_whip_output") {
        return;
    }
    let dir = scratch("whip-abr");
    let server = hybridlive_testkit::WhipServer::start(hybridlive_testkit::free_tcp_port());
    let file = dir.join("sfu.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[sources.cam]
type = "test"
width = 640
height = 360
audio = false

[transforms.sfu-abr]
type = "abrcontroller"
inputs = ["cam"]
output = "sfu"
ladder = []

[encoders.video]
type = "h264"
inputs = ["sfu-abr"]
bitrate = 2000

[outputs.sfu]
type = "whip"
inputs = ["video"]
endpoint = "{}"
loopback_only = true
"#,
            server.endpoint()
        ),
    )
    .expect("pipeline file");
    // Everything here crosses `lo`: packets the size of a real link's, for tbf to shape.
    sh("ip link set lo mtu 1500");
    let mut runner = start_runner(&file, &dir, &[]);
    runner.wait_event("output-connected", Duration::from_secs(30));
    // The path to the SFU narrows to 600 kbit/s: only the SFU's receiver reports (loss, RTT)
    // can tell the controller, which probed up to its ceiling on the clean link.
    sh("tc qdisc add dev lo root tbf rate 600kbit burst 16kbit latency 200ms");
    let informed = loop {
        let event = runner.wait_event("abr-decision", Duration::from_secs(40));
        if event["direction"] == "decrease" {
            break event;
        }
    };
    sh("tc qdisc del dev lo root");
    assert_eq!(informed["output"], "sfu", "{informed}");
    assert!(
        ["loss", "rtt"].contains(&informed["reason"].as_str().unwrap_or_default()),
        "{informed}"
    );
    assert!(
        informed["inputs"]["rtt_ms"].is_number() || informed["inputs"]["loss"].is_number(),
        "{informed}"
    );
    assert!(server.frames() > 0);
    runner.signal("INT");
    assert!(runner.wait_exit(Duration::from_secs(20)).success());
    let _ = std::fs::remove_dir_all(&dir);
}
