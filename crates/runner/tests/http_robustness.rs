//! The runner's HTTP server against hostile clients (issue 27): a huge declared body, running
//! out of descriptors, a client that never reads, bodies that never come, headers that never
//! end. Each attack is bounded in count and time and stays on loopback (every test runs in a
//! network namespace of its own); during and after each, the runner must keep serving the API,
//! HLS and WHEP.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hybridlive_testkit::http::{
    HttpReply, connect_from, connect_with_receive_buffer, http, http_from, read_reply,
};
use hybridlive_testkit::runner_child::{ENTRY, RunnerChild, RunnerCommand};
use hybridlive_testkit::{eventually, eventually_explained, in_private_netns};

const TOKEN: &str = "robustness-token-71c3";
/// A second client on loopback: limits per client must not shut it out.
const OTHER_CLIENT: [u8; 4] = [127, 0, 0, 2];
/// How long the server may take to drop a client that stalls (its timeouts are shorter).
const DROP_DEADLINE: Duration = Duration::from_secs(90);

const PIPELINE: &str = r#"
[server]
token_env = "ROBUSTNESS_TOKEN"

[sources.cam]
type = "test"
width = 320
height = 240
framerate = 15

[encoders.video]
type = "h264"
inputs = ["cam"]
preset = "zerolatency"
bitrate = 300
keyframe_interval = 1

[outputs.webrtc]
type = "webrtc"
inputs = ["video"]
loopback_only = true

[outputs.hls]
type = "hls"
inputs = ["video"]
segment_duration = 1
playlist_length = 5
"#;

/// An offer as a browser sends it (H.264 only, all candidates to come from the answer).
const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
    a=group:BUNDLE 0\r\n\
    m=video 9 UDP/TLS/RTP/SAVPF 102\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=recvonly\r\n\
    a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
    a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
    a=setup:actpass\r\na=rtcp-mux\r\n\
    a=rtpmap:102 H264/90000\r\na=fmtp:102 packetization-mode=1;profile-level-id=42e01f\r\n";

hybridlive_testkit::runner_child_entry!();

fn scratch(name: &str) -> PathBuf {
    hybridlive_testkit::scratch_dir("http-robustness", name)
}

/// The runner serving [`PIPELINE`], with all it prints kept.
struct Runner {
    child: RunnerChild,
    addr: String,
    dir: PathBuf,
}

impl Runner {
    /// Starts the runner on [`PIPELINE`] in a scratch folder; with `max_files`, under that
    /// `RLIMIT_NOFILE` (soft and hard).
    fn start(name: &str, max_files: Option<u64>) -> Runner {
        Runner::start_with(name, max_files, PIPELINE)
    }

    fn start_with(name: &str, max_files: Option<u64>, pipeline: &str) -> Runner {
        let dir = scratch(name);
        let file = dir.join("pipeline.toml");
        std::fs::write(&file, pipeline).expect("pipeline file");
        let mut command = RunnerCommand::entry(ENTRY, &file, &dir)
            .env(&[("ROBUSTNESS_TOKEN", TOKEN)])
            .keep_stderr();
        if let Some(n) = max_files {
            command = command.via(&["prlimit", &format!("--nofile={n}:{n}"), "--"]);
        }
        let mut child = command.spawn();
        child.wait_ready(Duration::from_secs(60));
        let runner = Runner {
            addr: child.addr(),
            child,
            dir,
        };
        eventually_explained(
            Duration::from_secs(60),
            || {
                let playlist = http(&runner.addr, "GET", "/hls/live.m3u8", &[], b"").ok()?;
                (playlist.status == 200 && playlist.text().contains(".ts")).then_some(())
            },
            || format!("no HLS segment:\n{}", runner.log()),
        );
        runner
    }

    fn log(&self) -> String {
        self.child.output()
    }

    /// Fails the test, with the runner's output, when the runner has exited.
    fn assert_alive(&mut self, during: &str) {
        if let Some(status) = self.child.try_exit() {
            panic!(
                "the runner died {during} ({status}):\n{}",
                hybridlive_testkit::tail_lines(&self.log(), 30)
            );
        }
    }

    /// One request from `client`; fails the test naming the route when there is no answer.
    fn request_from(
        &self,
        client: IpAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> HttpReply {
        http_from(client, &self.addr, method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path}: no answer: {e}"))
    }

    /// The API, HLS and WHEP all answer `client`: the status, the playlist and one of the
    /// segments it lists, a CORS preflight, and a real offer (whose session is then ended).
    fn assert_serves(&mut self, client: IpAddr, during: &str) {
        self.assert_alive(during);
        let status = self.request_from(client, "GET", "/api/status", &[], b"");
        assert_eq!(
            status.status,
            200,
            "/api/status {during}: {}",
            status.text()
        );
        let status: serde_json::Value =
            serde_json::from_slice(&status.body).expect("/api/status is JSON");
        assert_eq!(status["outputs"]["hls"]["state"], "running", "{status}");

        let playlist = self.request_from(client, "GET", "/hls/live.m3u8", &[], b"");
        assert_eq!(playlist.status, 200, "playlist {during}");
        let segment = playlist
            .text()
            .lines()
            .rfind(|l| l.ends_with(".ts"))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("a playlist without segments {during}"));
        let segment = self.request_from(client, "GET", &format!("/hls/{segment}"), &[], b"");
        assert_eq!(segment.status, 200, "segment {during}");
        assert_eq!(segment.body.first(), Some(&0x47), "not MPEG-TS {during}");

        let preflight = self.request_from(client, "OPTIONS", "/whep", &[], b"");
        assert_eq!(preflight.status, 204, "OPTIONS /whep {during}");
        let answer = self.request_from(
            client,
            "POST",
            "/whep",
            &[("Content-Type", "application/sdp")],
            OFFER.as_bytes(),
        );
        assert_eq!(answer.status, 201, "WHEP offer {during}: {}", answer.text());
        assert!(answer.text().contains("H264/90000"), "{}", answer.text());
        let location = answer.header("location").expect("Location").to_string();
        let ended = self.request_from(client, "DELETE", &location, &[], b"");
        assert_eq!(ended.status, 200, "DELETE {location} {during}");
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.child.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn localhost() -> IpAddr {
    [127, 0, 0, 1].into()
}

/// The kernel's view of the server's end of the connection whose client port is `port`:
/// `(state, bytes queued to send)` from /proc/net/tcp, `None` once it is gone.
fn server_side(server_port: u16, client_port: u16) -> Option<(u8, u64)> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let port = |f: &str| u16::from_str_radix(f.rsplit(':').next()?, 16).ok();
        if port(fields.get(1)?)? != server_port || port(fields.get(2)?)? != client_port {
            return None;
        }
        let state = u8::from_str_radix(fields.get(3)?, 16).ok()?;
        let tx_queue = u64::from_str_radix(fields.get(4)?.split(':').next()?, 16).ok()?;
        Some((state, tx_queue))
    })
}

const TCP_ESTABLISHED: u8 = 1;

/// Waits until the server has closed `stream` (end of file or reset), reading and discarding
/// what it sent first. Returns the response it sent, if any.
fn wait_closed_by_server(stream: &mut TcpStream, what: &str) -> Option<HttpReply> {
    stream
        .set_read_timeout(Some(DROP_DEADLINE))
        .expect("read timeout");
    let started = Instant::now();
    let mut raw = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("{what}: still open after {:?}", started.elapsed())
            }
            // A reset also ends it.
            Err(_) => break,
        }
    }
    hybridlive_testkit::http::parse_reply(&raw)
}

/// Item 1: a headers-only request announcing a 1 TiB body is refused without reading or
/// allocating it, on every kind of route (one that takes a body, one that takes none, one
/// behind the token), and the runner lives on and serves.
#[test]
fn http_terabyte_content_length_gets_413_and_the_runner_serves_on() {
    if !in_private_netns("http_terabyte_content_length_gets_413_and_the_runner_serves_on") {
        return;
    }
    let mut runner = Runner::start("terabyte", None);
    let bearer = format!("Authorization: Bearer {TOKEN}\r\n");
    for (method, path, extra) in [
        ("POST", "/whep", "Content-Type: application/sdp\r\n"),
        ("GET", "/metrics", ""),
        ("POST", "/api/markers", bearer.as_str()),
        ("POST", "/api/markers", ""),
        ("GET", "/api/status", ""),
        ("GET", "/hls/live.m3u8", ""),
    ] {
        for _ in 0..3 {
            let mut stream = TcpStream::connect(&runner.addr).expect("connect");
            stream
                .set_read_timeout(Some(Duration::from_secs(20)))
                .expect("read timeout");
            write!(
                stream,
                "{method} {path} HTTP/1.1\r\nHost: x\r\n{extra}Content-Length: 1099511627776\r\n\r\n"
            )
            .expect("send the head");
            let reply = read_reply(&mut stream)
                .unwrap_or_else(|e| panic!("{method} {path} with 1 TiB announced: {e}"));
            assert!(
                (400..500).contains(&reply.status),
                "{method} {path} with 1 TiB announced: {} {}",
                reply.status,
                reply.text()
            );
            runner.assert_alive(&format!("after {method} {path} announced 1 TiB"));
        }
    }
    runner.assert_serves(localhost(), "after the 1 TiB requests");
}

/// Item 2: with few descriptors, a flood of idle connections neither kills the runner nor
/// leaves it deaf: while it lasts another client is served, and once it is over everyone is.
#[test]
fn http_flood_of_idle_connections_at_the_descriptor_limit_leaves_the_server_listening() {
    if !in_private_netns(
        "http_flood_of_idle_connections_at_the_descriptor_limit_leaves_the_server_listening",
    ) {
        return;
    }
    let mut runner = Runner::start("descriptors", Some(256));
    // More than the runner has descriptors for. Connecting itself succeeds (the kernel
    // completes handshakes into the listen backlog), whatever the server does with them.
    let mut flood = Vec::new();
    for i in 0..300 {
        match TcpStream::connect(&runner.addr) {
            Ok(stream) => flood.push(stream),
            // The backlog is full: as many as it takes.
            Err(e) if i > 150 => {
                eprintln!("connection {i} refused: {e}");
                break;
            }
            Err(e) => panic!("connection {i}: {e}: the server no longer listens"),
        }
    }
    runner.assert_alive("during the flood");
    // The flood from 127.0.0.1 does not shut out another client.
    runner.assert_serves(OTHER_CLIENT.into(), "during the flood");
    let mut refused = 0;
    for stream in &mut flood {
        stream.set_nonblocking(true).expect("non-blocking");
        let mut byte = [0u8; 1];
        // Closed by the server (end of file, reset) or answered at once (503).
        if !matches!(stream.read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock) {
            refused += 1;
        }
    }
    eprintln!(
        "{} idle connections opened, {refused} already closed or answered by the server",
        flood.len()
    );
    drop(flood);
    // The server learns of the closes as it reads them.
    eventually(Duration::from_secs(30), "an answer after the flood", || {
        http(&runner.addr, "GET", "/api/status", &[], b"")
            .ok()
            .filter(|r| r.status == 200)
    });
    runner.assert_serves(localhost(), "after the flood");
}

/// Item 3: one client pipelines many large responses and never reads them; the others are
/// served meanwhile, and the server eventually drops that client.
#[test]
fn http_client_that_never_reads_freezes_only_its_own_connection() {
    if !in_private_netns("http_client_that_never_reads_freezes_only_its_own_connection") {
        return;
    }
    let mut runner = Runner::start("never-reads", None);
    let server_port: u16 = runner
        .addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("server port");
    let hls_js = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/hls.min.js"))
        .expect("the vendored hls.js");
    let mut stuck = connect_with_receive_buffer(&runner.addr, 1024).expect("connect");
    let client_port = stuck.local_addr().expect("local address").port();
    let requests = "GET /assets/hls.min.js HTTP/1.1\r\nHost: x\r\n\r\n".repeat(70);
    stuck
        .write_all(requests.as_bytes())
        .expect("pipeline the requests");
    // The server's send queue towards that client fills: it is now blocked writing to it.
    eventually(
        Duration::from_secs(30),
        "the server writing into the full socket",
        || server_side(server_port, client_port).filter(|(_, queued)| *queued > 0),
    );
    for round in 0..3 {
        let during = format!("while a client does not read (round {round})");
        runner.assert_serves(localhost(), &during);
        let script = runner.request_from(localhost(), "GET", "/assets/hls.min.js", &[], b"");
        assert_eq!(script.status, 200, "{during}");
        assert!(script.body == hls_js, "hls.min.js {during}");
    }
    // The stalled client loses its connection (not the others theirs).
    eventually(
        DROP_DEADLINE,
        "the server to drop the stalled client",
        || match server_side(server_port, client_port) {
            Some((TCP_ESTABLISHED, _)) => None,
            _ => Some(()),
        },
    );
    drop(stuck);
    runner.assert_serves(localhost(), "after the stalled client");
}

/// Item 4: 40 clients announce an offer and never send it. A new viewer's preflight and offer
/// still succeed while they wait, and each of them is answered 408 or dropped in the end.
#[test]
fn http_offers_that_never_arrive_do_not_hold_the_negotiation_slots() {
    if !in_private_netns("http_offers_that_never_arrive_do_not_hold_the_negotiation_slots") {
        return;
    }
    let mut runner = Runner::start("slow-offers", None);
    let mut waiting: Vec<TcpStream> = (0..40)
        .map(|_| {
            let mut stream = TcpStream::connect(&runner.addr).expect("connect");
            write!(
                stream,
                "POST /whep HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n\
                 Content-Length: 2000\r\n\r\n"
            )
            .expect("send the head");
            stream
        })
        .collect();
    // The same client and another one: neither may be refused for the ones that wait.
    for client in [localhost(), OTHER_CLIENT.into(), localhost()] {
        runner.assert_serves(client, "while 40 offers are announced and never sent");
    }
    for (i, stream) in waiting.iter_mut().enumerate() {
        if let Some(reply) = wait_closed_by_server(stream, &format!("offer {i} that never came")) {
            assert_eq!(reply.status, 408, "offer {i}: {}", reply.text());
        }
    }
    runner.assert_serves(localhost(), "after the offers that never came");
}

/// Slowloris: a client that sends its request head a byte at a time, never finishing it, is
/// dropped after the header timeout, and others are served meanwhile.
#[test]
fn http_request_head_that_never_ends_is_dropped() {
    if !in_private_netns("http_request_head_that_never_ends_is_dropped") {
        return;
    }
    let mut runner = Runner::start("slowloris", None);
    let mut slow: Vec<TcpStream> = (0..10)
        .map(|_| {
            let mut stream = TcpStream::connect(&runner.addr).expect("connect");
            stream
                .write_all(b"GET /api/status HTTP/1.1\r\nHost: x\r\n")
                .expect("send the start of a head");
            stream
        })
        .collect();
    let dripping = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let drip = {
        let mut writers: Vec<TcpStream> =
            slow.iter().map(|s| s.try_clone().expect("clone")).collect();
        let dripping = dripping.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while dripping.load(std::sync::atomic::Ordering::SeqCst) {
                for w in &mut writers {
                    // Fails once the server closed it: that is what is awaited.
                    let _ = write!(w, "X-{n}: {n}\r\n");
                }
                n += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };
    runner.assert_serves(localhost(), "while heads trickle in");
    for (i, stream) in slow.iter_mut().enumerate() {
        if let Some(reply) = wait_closed_by_server(stream, &format!("trickling head {i}")) {
            assert!(
                (400..500).contains(&reply.status),
                "trickling head {i}: {}",
                reply.status
            );
        }
    }
    dripping.store(false, std::sync::atomic::Ordering::SeqCst);
    let _ = drip.join();
    // Nothing of it stays: the runner serves as before.
    let mut silent = connect_from(localhost(), &runner.addr).expect("connect");
    wait_closed_by_server(&mut silent, "a connection that never sends anything");
    runner.assert_serves(localhost(), "after the trickling heads");
}

/// Items 9 and 10: an offer without ICE credentials or a fingerprint is the viewer's mistake
/// (400, and nothing of it stays behind); a session's 405s list only the methods it answers; the
/// errors the server makes itself for WHEP (413, 408) reach a page on another origin.
#[test]
fn http_viewer_mistakes_get_4xx_a_page_on_another_origin_can_read() {
    if !in_private_netns("http_viewer_mistakes_get_4xx_a_page_on_another_origin_can_read") {
        return;
    }
    let mut runner = Runner::start("mistakes", None);
    let sdp = [
        ("Content-Type", "application/sdp"),
        ("Origin", "https://course.example"),
    ];
    for (missing, line) in [
        ("ice-ufrag", "a=ice-ufrag:abcd\r\n"),
        ("ice-pwd", "a=ice-pwd:abcdefghijklmnopqrstuvwx\r\n"),
        ("fingerprint", "a=fingerprint:sha-256 "),
    ] {
        let offer: String = OFFER
            .split_inclusive("\r\n")
            .filter(|l| !l.starts_with(line.trim_end()))
            .collect();
        assert!(!offer.contains(missing), "{offer}");
        let refused = runner.request_from(localhost(), "POST", "/whep", &sdp, offer.as_bytes());
        assert_eq!(refused.status, 400, "without {missing}: {}", refused.text());
        assert!(refused.text().contains(missing), "{}", refused.text());
        assert_eq!(refused.header("access-control-allow-origin"), Some("*"));
    }
    let metrics = runner
        .request_from(localhost(), "GET", "/metrics", &[], b"")
        .text();
    assert!(
        metrics.contains("\nhybridlive_webrtc_branches 0\n"),
        "refused offers left branches behind: {metrics}"
    );

    // A session answers every method its 405s allow.
    let created = runner.request_from(localhost(), "POST", "/whep", &sdp, OFFER.as_bytes());
    assert_eq!(created.status, 201, "{}", created.text());
    let location = created.header("location").expect("Location").to_string();
    let mut allowed = Vec::new();
    for method in ["POST", "PATCH", "GET", "PUT"] {
        let refused = runner.request_from(localhost(), method, &location, &[], b"");
        assert_eq!(refused.status, 405, "{method} {location}");
        let allow = refused.header("allow").expect("Allow").to_string();
        allowed.push(allow.clone());
        assert!(
            !allow.contains(method),
            "{method} answered 405 but Allow: {allow}"
        );
    }
    allowed.dedup();
    assert_eq!(allowed.len(), 1, "the 405s disagree: {allowed:?}");
    let preflight = runner.request_from(localhost(), "OPTIONS", &location, &[], b"");
    assert_eq!(preflight.status, 204);
    assert!(
        !preflight
            .header("access-control-allow-methods")
            .unwrap_or_default()
            .contains("PATCH"),
        "the preflight allows a method that is refused"
    );
    let ended = runner.request_from(localhost(), "DELETE", &location, &[], b"");
    assert_eq!(ended.status, 200);

    // The server's own refusals carry CORS, with Retry-After readable.
    let mut too_large = TcpStream::connect(&runner.addr).expect("connect");
    write!(
        too_large,
        "POST /whep HTTP/1.1\r\nHost: x\r\nOrigin: https://course.example\r\n\
         Content-Type: application/sdp\r\nContent-Length: 1000000\r\n\r\n"
    )
    .expect("send the head");
    let mut too_slow = TcpStream::connect(&runner.addr).expect("connect");
    write!(
        too_slow,
        "POST /whep HTTP/1.1\r\nHost: x\r\nOrigin: https://course.example\r\n\
         Content-Type: application/sdp\r\nContent-Length: 2000\r\n\r\nv=0\r\n"
    )
    .expect("send the head");
    for (status, stream) in [(413, &mut too_large), (408, &mut too_slow)] {
        let reply = wait_closed_by_server(stream, &format!("the {status}"))
            .unwrap_or_else(|| panic!("no {status} before the close"));
        assert_eq!(reply.status, status, "{}", reply.text());
        assert_eq!(reply.header("access-control-allow-origin"), Some("*"));
        assert!(
            reply
                .header("access-control-expose-headers")
                .is_some_and(|h| h.contains("Retry-After")),
            "{:?}",
            reply.headers
        );
    }
    runner.assert_serves(localhost(), "after the viewers' mistakes");
}

/// Item 7 through the server: ten viewers offer at once to an output that takes three. Three
/// get a session, the others a 503 that a page on another origin can read (`Retry-After`
/// exposed), and the runner serves on once they are gone.
#[test]
fn http_more_offers_at_once_than_viewers_get_503_a_page_can_read() {
    if !in_private_netns("http_more_offers_at_once_than_viewers_get_503_a_page_can_read") {
        return;
    }
    let pipeline = PIPELINE.replace(
        "loopback_only = true\n",
        "loopback_only = true\nmax_viewers = 3\n",
    );
    assert_ne!(pipeline, PIPELINE);
    let mut runner = Runner::start_with("crowd", None, &pipeline);
    let replies: Vec<HttpReply> = std::thread::scope(|scope| {
        let runner = &runner;
        let offers: Vec<_> = (0..10u8)
            .map(|i| {
                scope.spawn(move || {
                    // Half of them from another address: the limits per client play too.
                    let client: IpAddr = if i % 2 == 0 {
                        localhost()
                    } else {
                        OTHER_CLIENT.into()
                    };
                    runner.request_from(
                        client,
                        "POST",
                        "/whep",
                        &[
                            ("Content-Type", "application/sdp"),
                            ("Origin", "https://course.example"),
                        ],
                        OFFER.as_bytes(),
                    )
                })
            })
            .collect();
        offers
            .into_iter()
            .map(|o| o.join().expect("an offering thread"))
            .collect()
    });
    let created: Vec<&HttpReply> = replies.iter().filter(|r| r.status == 201).collect();
    let refused: Vec<&HttpReply> = replies.iter().filter(|r| r.status == 503).collect();
    assert_eq!(
        (created.len(), refused.len()),
        (3, 7),
        "{:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    for reply in &refused {
        assert_eq!(reply.header("access-control-allow-origin"), Some("*"));
        assert!(reply.header("retry-after").is_some(), "{:?}", reply.headers);
        assert!(
            reply
                .header("access-control-expose-headers")
                .is_some_and(|h| h.contains("Retry-After")),
            "{:?}",
            reply.headers
        );
    }
    for reply in created {
        let location = reply.header("location").expect("Location");
        let ended = runner.request_from(localhost(), "DELETE", location, &[], b"");
        assert_eq!(ended.status, 200, "DELETE {location}");
    }
    runner.assert_serves(localhost(), "after a crowd of offers");
}
