//! The HTTP control API of `hybridlive run`, end to end: abuse (oversized bodies, malformed SDP,
//! bad JSON, path traversal, a wrong token, slow senders) gets 4xx while the stream plays and
//! the token is never printed; offers shown over the API land in the recording's timeline.
//!
//! `cargo nextest run -p hybridlive-runner --test control_api`

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use hybridlive_testkit::media::decoded_video_frames;
use hybridlive_testkit::runner_child::{self, ENTRY, RunnerCommand, TEST_TOKEN, test_runner};
use hybridlive_testkit::{eventually, metric, scratch_dir};

hybridlive_testkit::runner_child_entry!();

/// Oversized bodies, malformed SDP, bad JSON, path traversal and control calls without the
/// right token all get their 4xx, slow senders hold no worker, HLS keeps producing segments
/// throughout, no session is left behind, and the token never appears in anything the runner
/// prints.
#[test]
fn http_abuse_gets_4xx_while_the_stream_plays_and_the_token_is_never_printed() {
    const SECRET: &str = "file-token-8d2e41c07b";
    const ENV_SECRET: &str = "env-token-3a9f5570c1";
    let dir = scratch_dir("runner-test", "abuse");
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
    let mut runner = RunnerCommand::entry(ENTRY, &toml, &dir)
        .env(&[("GST_DEBUG", "3")])
        .keep_stderr()
        .spawn();
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
    let mut runner = RunnerCommand::entry(ENTRY, &toml, &dir)
        .env(&[("ABUSE_TOKEN", ENV_SECRET), ("GST_DEBUG", "3")])
        .keep_stderr()
        .spawn();
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
fn offers_shown_over_the_api_land_in_the_recording_timeline() {
    let dir = scratch_dir("runner-test", "offers");
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
    let runner = test_runner(&file, &dir).start();
    let started = runner.wait_event("recording-started", Duration::from_secs(10));
    let bearer = format!("Bearer {TEST_TOKEN}");
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
