//! HTTPS: the runner serving it itself (`[server] tls_cert` / `tls_key`), and nginx in front
//! of a plain-HTTP runner as `docs/deployment.md` deploys it (TLS at nginx, WHEP and the API
//! proxied, HLS cached with request collapsing). Certificates are self-signed, made with the
//! `openssl` CLI; the clients here trust exactly that certificate.
//!
//! `cargo nextest run -p hybridlive-runner --test proxy`

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hybridlive_testkit::http::{ANSWER_TIMEOUT, HttpReply, parse_reply};
use hybridlive_testkit::nginx::{Certificate, Nginx, self_signed_certificate};
use hybridlive_testkit::runner_child::test_runner;
use hybridlive_testkit::viewer::{Viewer, ViewerOptions};
use hybridlive_testkit::{eventually, free_tcp_port, in_private_netns, scratch_dir};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};

hybridlive_testkit::runner_child_entry!();

/// A camera, WebRTC viewers and Low-Latency HLS (200 ms parts, 1 s segments).
const PIPELINE: &str = "[sources.cam]\ntype = \"test\"\nwidth = 640\nheight = 360\n\n\
    [encoders.video]\ntype = \"h264\"\ninputs = [\"cam\"]\npreset = \"zerolatency\"\n\
    bitrate = 1200\nkeyframe_interval = 1\n\n\
    [encoders.voice]\ntype = \"opus\"\ninputs = [\"cam\"]\n\n\
    [encoders.audio]\ntype = \"aac\"\ninputs = [\"cam\"]\n\n\
    [outputs.webrtc]\ntype = \"webrtc\"\ninputs = [\"video\", \"voice\"]\nloopback_only = true\n\n\
    [outputs.hls]\ntype = \"hls\"\ninputs = [\"video\", \"audio\"]\nsegment_duration = 1\n\
    low_latency = true\npart_duration_ms = 200\n";

/// A client that trusts `cert` (and nothing else).
fn trusting(cert: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_file_iter(cert).expect("the certificate file") {
        roots
            .add(der.expect("a PEM certificate"))
            .expect("a usable anchor");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// One HTTPS request (`Connection: close`) to `addr` for the name `localhost`, answered within
/// [`ANSWER_TIMEOUT`]. `Err` when the handshake fails (an untrusted certificate) or nothing
/// answers.
fn https(
    client: &Arc<rustls::ClientConfig>,
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpReply> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    let name = ServerName::try_from("localhost").map_err(std::io::Error::other)?;
    let connection =
        rustls::ClientConnection::new(client.clone(), name).map_err(std::io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(connection, tcp);
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    tls.write_all(head.as_bytes())?;
    tls.write_all(body)?;
    tls.flush()?;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let error = loop {
        match tls.read(&mut chunk) {
            Ok(0) => break None,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => break Some(e),
        }
    };
    match (parse_reply(&raw), error) {
        (Some(reply), _) => Ok(reply),
        (None, Some(e)) => Err(e),
        (None, None) => Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the connection closed without a response",
        )),
    }
}

/// `GET` over HTTPS; [`HttpReply::unanswered`] when nothing answers.
fn get(client: &Arc<rustls::ClientConfig>, addr: &str, path: &str) -> HttpReply {
    https(client, addr, "GET", path, &[], b"").unwrap_or_else(|_| HttpReply::unanswered())
}

/// The part the playlist hints at next (`EXT-X-PRELOAD-HINT`): its media sequence number and
/// part index, the query of the blocking reload that waits for it.
fn hinted_part(playlist: &str) -> Option<(u64, u64)> {
    let rest = playlist
        .split("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"")
        .nth(1)?;
    let name = rest.split('"').next()?;
    let (msn, part) = name
        .trim_start_matches(|c: char| !c.is_ascii_digit())
        .trim_end_matches(".m4s")
        .split_once('.')?;
    Some((msn.parse().ok()?, part.parse().ok()?))
}

/// The part a blocking reload for `msn`.`part` waited for, as the answer lists it: that part,
/// or, when the segment ended before it (the hint was one past its last part), part 0 of the
/// next segment (RFC 8216bis 6.2.5.2). `None` when it lists neither.
fn waited_for(playlist: &str, msn: u64, part: u64) -> Option<String> {
    [
        format!("part{msn}.{part}.m4s"),
        format!("part{}.0.m4s", msn + 1),
    ]
    .into_iter()
    .find(|name| playlist.contains(&format!("URI=\"{name}\"")))
}

/// A live LL-HLS playlist with a part hinted, fetched with `get`.
fn live_playlist(get: impl Fn(&str) -> HttpReply) -> String {
    eventually(Duration::from_secs(30), "an LL-HLS playlist", || {
        let reply = get("/hls/live.m3u8");
        let text = reply.text();
        (reply.status == 200 && text.contains("#EXTINF") && hinted_part(&text).is_some())
            .then_some(text)
    })
}

/// A receive-only WebRTC viewer that decodes H.264: offers over `post` (which returns the
/// answer's status, body and `Location`) and waits for 30 decoded frames.
fn whep_viewer(post: impl FnOnce(&str) -> HttpReply) -> (Viewer, String) {
    hybridlive_testkit::faults::gst_init();
    let viewer = Viewer::new(&ViewerOptions {
        audio: false,
        decode: true,
        ..Default::default()
    })
    .expect("a WHEP viewer");
    let offer = viewer.offer(Duration::from_secs(10)).expect("an offer");
    let answer = post(&offer);
    assert_eq!(answer.status, 201, "WHEP: {}", answer.text());
    let location = answer
        .header("location")
        .expect("a WHEP answer names its session")
        .to_string();
    viewer.accept(&answer.text()).expect("the answer applies");
    assert!(
        viewer.wait_video(30, Duration::from_secs(60)),
        "the viewer decoded {} frames in 60 s",
        viewer.video_units()
    );
    (viewer, location)
}

/// Writes the pipeline with `server` as its `[server]` table in a fresh folder.
fn pipeline_file(name: &str, server: &str) -> (PathBuf, PathBuf) {
    let dir = scratch_dir("runner-test", name);
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(&file, format!("{server}\n{PIPELINE}")).expect("write the pipeline");
    (dir, file)
}

/// The runner itself on HTTPS: the API, the page, the metrics, LL-HLS (a blocking reload and
/// its part) and a WHEP viewer that decodes, all over TLS to a client that trusts the
/// self-signed certificate; a plain HTTP request is answered 400 saying to use HTTPS, and
/// connections that never finish their handshake, or their request head after it, are closed.
#[test]
fn the_runner_serves_every_route_over_https() {
    if !in_private_netns("the_runner_serves_every_route_over_https") {
        return;
    }
    let (dir, file) = pipeline_file(
        "https",
        "[server]\ntls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n",
    );
    let Certificate { cert, .. } = self_signed_certificate(&dir);
    let runner = test_runner(&file, &dir).start();
    assert!(runner.base.starts_with("https://"), "{}", runner.base);
    let addr = runner.base.trim_start_matches("https://").to_string();
    let client = trusting(&cert);
    let get = |path: &str| get(&client, &addr, path);

    let status = get("/api/status");
    assert_eq!(status.status, 200, "{}", status.text());
    let shown = status.json()["viewer_url"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(shown.starts_with("https://"), "the status shows {shown:?}");
    let page = get("/");
    assert_eq!(page.status, 200);
    assert!(page.text().contains("<video"), "{}", page.text());
    let metrics = get("/metrics");
    assert_eq!(metrics.status, 200);
    assert!(metrics.text().contains("hybridlive_"), "{}", metrics.text());

    let playlist = live_playlist(get);
    let (msn, part) = hinted_part(&playlist).expect("a hinted part");
    let blocked = get(&format!("/hls/live.m3u8?_HLS_msn={msn}&_HLS_part={part}"));
    assert_eq!(blocked.status, 200, "{}", blocked.text());
    let listed = waited_for(&blocked.text(), msn, part).unwrap_or_else(|| {
        panic!(
            "the reload for {msn}.{part} lists neither:\n{}",
            blocked.text()
        )
    });
    let media = get(&format!("/hls/{listed}"));
    assert_eq!(media.status, 200);
    assert!(!media.body.is_empty());

    let (viewer, location) = whep_viewer(|offer| {
        https(
            &client,
            &addr,
            "POST",
            "/whep",
            &[("Content-Type", "application/sdp")],
            offer.as_bytes(),
        )
        .expect("WHEP over HTTPS")
    });
    let gone = https(&client, &addr, "DELETE", &location, &[], b"").expect("DELETE");
    assert!((200..300).contains(&gone.status), "{}", gone.text());
    drop(viewer);

    // Plain HTTP on the HTTPS port: a clear answer in plain HTTP, not a broken handshake.
    let plain = hybridlive_testkit::http::http(&addr, "GET", "/api/status", &[], b"")
        .expect("a plain answer");
    assert_eq!(plain.status, 400, "{}", plain.text());
    assert!(plain.text().contains("HTTPS"), "{}", plain.text());

    // A client that does not trust the certificate gets no answer.
    let other = dir.join("other");
    std::fs::create_dir_all(&other).expect("a folder");
    let stranger = trusting(&self_signed_certificate(&other).cert);
    assert!(https(&stranger, &addr, "GET", "/api/status", &[], b"").is_err());

    // A connection that never starts its handshake, and one that stops in the middle of it,
    // are closed by the server (after the head timeout, 15 s), not kept for ever.
    let mut slowloris = {
        let tcp = TcpStream::connect(&addr).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(90)))
            .expect("timeout");
        let name = ServerName::try_from("localhost").expect("a name");
        let connection = rustls::ClientConnection::new(client.clone(), name).expect("a TLS client");
        let mut tls = rustls::StreamOwned::new(connection, tcp);
        tls.write_all(b"GET /api/status HTTP/1.1\r\nHost: localhost\r\n")
            .expect("half a request head, over TLS");
        tls.flush().expect("sent");
        tls
    };
    let mut silent = TcpStream::connect(&addr).expect("connect");
    let mut stalled = TcpStream::connect(&addr).expect("connect");
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .expect("the start of a ClientHello");
    for (what, socket) in [("silent", &mut silent), ("stalled", &mut stalled)] {
        socket
            .set_read_timeout(Some(Duration::from_secs(90)))
            .expect("timeout");
        let mut byte = [0u8; 64];
        let started = Instant::now();
        match socket.read(&mut byte) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!(
                "{what} handshake: {other:?} after {:?} instead of a close",
                started.elapsed()
            ),
        }
    }
    // Past the handshake, the plain connection's limits hold: a request head that never
    // ends (slowloris) loses its connection too. Whatever the server sends before closing
    // (an alert, a 408) is read until the end.
    let end = slowloris.read_to_end(&mut Vec::new());
    assert!(
        !matches!(&end, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "a TLS request head that never ends is kept open: {end:?}"
    );
    assert_eq!(get("/api/status").status, 200, "the server serves on");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `tls_cert` and `tls_key` are checked where they are written, at validation: both or
/// neither, files that exist and read as PEM, and a key that is the certificate's. A run
/// refuses to start with the same message.
#[test]
fn tls_files_are_checked_at_validation_and_at_start() {
    hybridlive_runner::init().expect("GStreamer initialises");
    let dir = scratch_dir("runner-test", "tls-validate");
    let ours = self_signed_certificate(&dir);
    let other_dir = dir.join("other");
    std::fs::create_dir_all(&other_dir).expect("a folder");
    self_signed_certificate(&other_dir);
    std::fs::write(dir.join("garbage.pem"), "not a certificate\n").expect("write");
    let valid = "[server]\ntls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n";
    let load = |server: &str| {
        let file = dir.join("tls.toml");
        std::fs::write(&file, format!("{server}\n{PIPELINE}")).expect("write the pipeline");
        hybridlive_runner::load(&file).map_err(|e| e.to_string())
    };
    let pipeline = load(valid).expect("a certificate and its key");
    let tls = pipeline.server.tls.expect("TLS is on");
    assert_eq!(tls.cert, ours.cert);
    assert_eq!(tls.key, ours.key);

    // (the [server] table, fragments of the error a user must see)
    let table: &[(&str, &[&str])] = &[
        (
            "[server]\ntls_cert = \"nope.pem\"\ntls_key = \"key.pem\"\n",
            &[
                "tls.toml:2:12",
                "`tls_cert`",
                "`nope.pem`",
                "nope.pem)",
                "No such file",
            ],
        ),
        (
            "[server]\ntls_cert = \"cert.pem\"\n",
            &["`tls_cert`: needs `tls_key` as well"],
        ),
        (
            "[server]\ntls_key = \"key.pem\"\n",
            &["`tls_key`: needs `tls_cert` as well"],
        ),
        (
            "[server]\ntls_cert = \"garbage.pem\"\ntls_key = \"key.pem\"\n",
            &["`tls_cert`", "`garbage.pem`", "holds no certificate"],
        ),
        (
            // The key where the certificate goes.
            "[server]\ntls_cert = \"key.pem\"\ntls_key = \"key.pem\"\n",
            &["`tls_cert`", "holds no certificate"],
        ),
        (
            "[server]\ntls_cert = \"cert.pem\"\ntls_key = \"cert.pem\"\n",
            &["`tls_key`", "holds no private key"],
        ),
        (
            "[server]\ntls_cert = \"cert.pem\"\ntls_key = \"other/key.pem\"\n",
            &[
                "`tls_key`",
                "`other/key.pem`",
                "is not the private key of the certificate",
            ],
        ),
        (
            "[server]\ntls_cert = \"other\"\ntls_key = \"key.pem\"\n",
            &["`tls_cert`", "is not a file"],
        ),
    ];
    for (server, fragments) in table {
        let error = load(server).expect_err(server);
        eprintln!("{error}");
        for fragment in *fragments {
            assert!(
                error.contains(fragment),
                "{server}: `{fragment}` is not in\n{error}"
            );
        }
    }

    // `hybridlive run` refuses such a file before anything starts, with the same message.
    let (run_dir, file) = pipeline_file("tls-start", valid);
    self_signed_certificate(&run_dir);
    std::fs::remove_file(run_dir.join("key.pem")).expect("remove the key");
    let mut runner = test_runner(&file, &run_dir).keep_stderr().spawn();
    let exit = runner.wait_exit(Duration::from_secs(60));
    assert!(!exit.success());
    let output = runner.output();
    assert!(
        output.contains("tls_key") && output.contains("key.pem") && output.contains("No such file"),
        "{output}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&run_dir);
}

/// The nginx configuration of `docs/deployment.md` (its first `nginx` block), listening on
/// 127.0.0.1:`port` with `cert`, caching in `cache`, in front of the runner at `origin`.
fn documented_nginx_config(port: u16, cert: &Certificate, cache: &Path, origin: &str) -> String {
    let doc = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/deployment.md"),
    )
    .expect("docs/deployment.md");
    let block = doc
        .split("```nginx\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("an nginx block in docs/deployment.md");
    let mut config = block.to_string();
    for (from, to) in [
        (
            "listen 443 ssl http2;",
            format!("listen 127.0.0.1:{port} ssl http2;"),
        ),
        (
            "/etc/ssl/hybridlive/fullchain.pem",
            cert.cert.display().to_string(),
        ),
        (
            "/etc/ssl/hybridlive/privkey.pem",
            cert.key.display().to_string(),
        ),
        ("/var/cache/nginx/hybridlive", cache.display().to_string()),
        ("server 127.0.0.1:8080;", format!("server {origin};")),
    ] {
        assert!(
            config.contains(from),
            "docs/deployment.md's nginx block no longer has `{from}`: update this test"
        );
        config = config.replace(from, &to);
    }
    config
}

/// A runner on plain HTTP on loopback with nginx in front, as documented.
struct Deployment {
    dir: PathBuf,
    runner: hybridlive_testkit::runner_child::RunnerChild,
    nginx: Nginx,
    certificate: Certificate,
}

fn deploy(name: &str) -> Deployment {
    let (dir, file) = pipeline_file(name, "");
    let runner = test_runner(&file, &dir).start();
    let certificate = self_signed_certificate(&dir);
    let port = free_tcp_port();
    let config = documented_nginx_config(port, &certificate, &dir.join("cache"), &runner.addr());
    let nginx = Nginx::start(&dir.join("nginx"), &config, port);
    Deployment {
        dir,
        runner,
        nginx,
        certificate,
    }
}

/// `n` clients asking `path` through `addr` at the same moment; their answers.
fn at_once(client: &Arc<rustls::ClientConfig>, addr: &str, path: &str, n: usize) -> Vec<HttpReply> {
    let start = std::sync::Barrier::new(n);
    std::thread::scope(|scope| {
        let asked: Vec<_> = (0..n)
            .map(|_| {
                scope.spawn(|| {
                    start.wait();
                    get(client, addr, path)
                })
            })
            .collect();
        asked
            .into_iter()
            .map(|a| a.join().expect("a client thread"))
            .collect()
    })
}

/// The deployment of `docs/deployment.md`: nginx terminating TLS (self-signed) in front of a
/// plain-HTTP runner on loopback. Through it, over HTTPS: the API answers, a WebRTC viewer
/// posts its offer to `/whep`, decodes frames and ends its session with `DELETE` on the
/// `Location`, and identical Low-Latency HLS requests made at once (a blocking playlist
/// reload, then a part) reach the runner once.
#[test]
fn nginx_in_front_proxies_whep_and_the_api_and_collapses_hls_requests() {
    if !in_private_netns("nginx_in_front_proxies_whep_and_the_api_and_collapses_hls_requests") {
        return;
    }
    const CLIENTS: usize = 60;
    let Deployment {
        dir,
        runner: _runner,
        nginx,
        certificate,
    } = deploy("nginx");
    let addr = nginx.addr();
    let client = trusting(&certificate.cert);

    let status = get(&client, &addr, "/api/status");
    assert_eq!(
        status.status,
        200,
        "{}\n{}",
        status.text(),
        nginx.error_log()
    );
    assert!(status.json()["viewer_url"].is_string(), "{}", status.text());

    let (viewer, location) = whep_viewer(|offer| {
        https(
            &client,
            &addr,
            "POST",
            "/whep",
            &[("Content-Type", "application/sdp")],
            offer.as_bytes(),
        )
        .expect("WHEP through nginx")
    });
    assert!(location.starts_with("/whep/"), "{location}");
    let gone = https(&client, &addr, "DELETE", &location, &[], b"").expect("DELETE");
    assert!((200..300).contains(&gone.status), "{}", gone.text());
    drop(viewer);

    let playlist = live_playlist(|path| get(&client, &addr, path));
    let (msn, part) = hinted_part(&playlist).expect("a hinted part");
    let mut path = format!("/hls/live.m3u8?_HLS_msn={msn}&_HLS_part={part}");
    for what in ["blocking reload", "part"] {
        let current = path.clone();
        let answers = at_once(&client, &addr, &current, CLIENTS);
        for answer in &answers {
            assert_eq!(answer.status, 200, "{what}: {}", answer.text());
        }
        // nginx logs a request as it finishes it: all are answered, so all will be there.
        let log = eventually(
            Duration::from_secs(30),
            "every request in nginx's log",
            || {
                let log = nginx.log();
                (log.iter().filter(|l| l.uri == current).count() >= CLIENTS).then_some(log)
            },
        );
        let logged: Vec<_> = log.iter().filter(|l| l.uri == current).collect();
        let to_origin = logged.iter().filter(|l| l.to_origin).count();
        eprintln!(
            "{CLIENTS} identical {what} requests through nginx: {to_origin} reached the runner \
             ({:?})",
            logged.iter().map(|l| l.cache.as_str()).collect::<Vec<_>>()
        );
        assert_eq!(logged.len(), CLIENTS, "{what}: nginx logged {logged:?}");
        assert!(
            to_origin <= 2,
            "{what}: {to_origin} of {CLIENTS} identical requests reached the runner \
             (cache statuses {:?}; the answer's Cache-Control: {:?})",
            logged.iter().map(|l| l.cache.as_str()).collect::<Vec<_>>(),
            answers[0].header("cache-control")
        );
        if what == "blocking reload" {
            // Every client got the playlist with the part it waited for; that part next.
            let listed: Vec<Option<String>> = answers
                .iter()
                .map(|a| waited_for(&a.text(), msn, part))
                .collect();
            let Some(Some(first)) = listed.first() else {
                panic!(
                    "the reload for {msn}.{part} lists neither:\n{}",
                    answers[0].text()
                );
            };
            assert!(
                listed.iter().all(|l| l.as_ref() == Some(first)),
                "clients were told different parts: {listed:?}"
            );
            path = format!("/hls/{first}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// What a viewer page reports once it plays: HLS for 3 s (hls.js in Low-Latency mode, with
/// its parts), or 10 WebRTC latency figures.
const PAGE_PLAYS: &str = "window.viewer && ((window.viewer.mode === 'hls' && window.viewer.hls \
    && document.querySelector('video').currentTime > 3) \
    || (window.viewer.mode === 'webrtc' && window.viewer.latencies.length >= 10))";
const PAGE_RESULT: &str = "(() => { const v = window.viewer; const h = v.hls; \
    const d = h && (h.latestLevelDetails || (h.levels[h.currentLevel] || {}).details); \
    return { mode: v.mode, lowLatency: h ? h.lowLatencyMode : null, \
             parts: d && d.partList ? d.partList.length : 0, \
             played: document.querySelector('video').currentTime, \
             latencies: v.latencies.length, secure: window.isSecureContext, \
             url: location.href }; })()";

/// The viewer page in headless Chromium through nginx over HTTPS, with the self-signed
/// certificate trusted by its key (and nothing else): `?mode=hls` plays Low-Latency HLS with
/// hls.js, and the default page plays WebRTC over WHEP through nginx.
#[test]
fn chromium_plays_the_page_through_nginx_over_https() {
    if !in_private_netns("chromium_plays_the_page_through_nginx_over_https") {
        return;
    }
    let Deployment {
        dir,
        runner: _runner,
        nginx,
        certificate,
    } = deploy("nginx-chromium");
    // Chromium trusts the certificate by the hash of its public key, through a wrapper the
    // browser driver starts instead of /usr/bin/chromium.
    let spki = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl x509 -in '{}' -pubkey -noout | openssl pkey -pubin -outform der \
             | openssl dgst -sha256 -binary | base64",
            certificate.cert.display()
        ))
        .output()
        .expect("openssl runs");
    let spki = String::from_utf8_lossy(&spki.stdout).trim().to_string();
    assert!(!spki.is_empty());
    let wrapper = dir.join("chromium");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\nexec /usr/bin/chromium --ignore-certificate-errors-spki-list={spki} \"$@\"\n"),
    )
    .expect("write the wrapper");
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("make it executable");
    let base = format!("https://localhost:{}/", nginx.port);
    let driver = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/browser/viewer.mjs");
    let out = std::process::Command::new("node")
        .arg(&driver)
        .arg(format!("{base}?mode=hls"))
        .arg(&base)
        .arg("60")
        .env("CHROMIUM", &wrapper)
        .env("WAIT", PAGE_PLAYS)
        .env("RESULT", PAGE_RESULT)
        .output()
        .expect("node runs (scripts/setup installs the browser test driver)");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser run failed:\n{log}\nnginx:\n{}",
        nginx.error_log()
    );
    let pages: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("the browser driver prints JSON");
    eprintln!("the page through nginx over HTTPS: {pages}");
    let (hls, webrtc) = (&pages[0], &pages[1]);
    assert_eq!(hls["mode"], "hls", "{pages}");
    assert_eq!(hls["lowLatency"], true, "{pages}");
    assert!(hls["parts"].as_u64().unwrap_or(0) > 0, "{pages}");
    assert!(hls["played"].as_f64().unwrap_or(0.0) > 3.0, "{pages}");
    assert_eq!(webrtc["mode"], "webrtc", "{pages}");
    assert!(webrtc["latencies"].as_u64().unwrap_or(0) >= 10, "{pages}");
    for page in [hls, webrtc] {
        assert_eq!(page["secure"], true, "{pages}");
    }
    // The page's HLS came through the cache: parts were served to it by nginx.
    let log = nginx.log();
    assert!(
        log.iter()
            .any(|l| l.uri.starts_with("/hls/part") && l.status == 200),
        "no part through nginx: {log:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
