//! Debian's Janus for tests: started with the project's config folder (`crates/testkit/janus/`:
//! the VideoRoom plugin, HTTP and WebSocket transports on free 127.0.0.1 ports, ICE on the veth
//! test host `hl0` of [`crate::in_private_netns_with_veth`], since Janus gathers nothing on
//! `lo`), its HTTP API (a subscriber's join → offer and answer → start, for any WebRTC stack,
//! e.g. Chromium), and a GStreamer subscriber that receives a feed through it.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gst::prelude::*;
use serde_json::{Value, json};

use crate::free_tcp_port;

/// Janus running with the test configuration, on free ports; killed on drop.
pub struct Janus {
    child: Child,
    http_port: u16,
    ws_port: u16,
    log: PathBuf,
}

impl Janus {
    /// Starts Janus and waits until its HTTP API answers (panics after 20 s, with its log).
    pub fn start() -> Janus {
        let dir = std::env::temp_dir().join(format!(
            "hybridlive-janus-{}-{}",
            std::process::id(),
            free_tcp_port()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("Janus's folder");
        let (http_port, ws_port) = (free_tcp_port(), free_tcp_port());
        let templates = Path::new(env!("CARGO_MANIFEST_DIR")).join("janus");
        for entry in std::fs::read_dir(&templates).expect("crates/testkit/janus") {
            let path = entry.expect("a template").path();
            let text = std::fs::read_to_string(&path)
                .expect("a template")
                .replace("@DIR@", &dir.display().to_string())
                .replace("@HTTP_PORT@", &http_port.to_string())
                .replace("@WS_PORT@", &ws_port.to_string())
                .replace("@RTP_MIN@", "40000")
                .replace("@RTP_MAX@", "40200");
            std::fs::write(dir.join(path.file_name().expect("a file name")), text)
                .expect("write Janus's configuration");
        }
        let log = dir.join("janus.log");
        let child = Command::new("janus")
            .arg("-C")
            .arg(dir.join("janus.jcfg"))
            .arg("-F")
            .arg(&dir)
            .stdout(Stdio::from(
                std::fs::File::create(&log).expect("Janus's log"),
            ))
            .stderr(Stdio::null())
            .spawn()
            .expect("janus starts (Debian package janus, installed by scripts/setup)");
        let janus = Janus {
            child,
            http_port,
            ws_port,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while http(janus.http_port, "GET", "/janus/info", None).is_err() {
            assert!(
                Instant::now() < deadline,
                "janus did not come up:\n{}",
                janus.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        janus
    }

    /// The WebSocket URL publishers (`janusvrwebrtcsink`) connect to.
    pub fn ws_endpoint(&self) -> String {
        format!("ws://127.0.0.1:{}", self.ws_port)
    }

    /// What Janus logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A new Janus session with a VideoRoom handle: (session, handle).
    pub fn attach(&self) -> (u64, u64) {
        let session = self.call("/janus", json!({"janus": "create"}))["data"]["id"]
            .as_u64()
            .expect("a session id");
        let handle = self.call(
            &format!("/janus/{session}"),
            json!({"janus": "attach", "plugin": "janus.plugin.videoroom"}),
        )["data"]["id"]
            .as_u64()
            .expect("a handle id");
        (session, handle)
    }

    /// One request to the HTTP API; panics on an error reply.
    pub fn call(&self, path: &str, mut body: Value) -> Value {
        body["transaction"] = json!(format!("t{}", rand_suffix()));
        let reply = http(self.http_port, "POST", path, Some(&body))
            .unwrap_or_else(|e| panic!("{path}: {e}\n{}", self.log()));
        assert_ne!(reply["janus"], "error", "{path}: {reply}");
        reply
    }

    /// Sends a VideoRoom request on a handle and returns the plugin's synchronous answer.
    pub fn videoroom(
        &self,
        (session, handle): (u64, u64),
        body: Value,
        jsep: Option<Value>,
    ) -> Value {
        let mut message = json!({"janus": "message", "body": body});
        if let Some(jsep) = jsep {
            message["jsep"] = jsep;
        }
        self.call(&format!("/janus/{session}/{handle}"), message)
    }

    /// Creates VideoRoom `room` for H.264 + Opus with room for `bitrate` bit/s per publisher
    /// (the demo room caps at 128 kbit/s).
    pub fn create_room(&self, room: u64, bitrate: u64) {
        let admin = self.attach();
        let created = self.videoroom(
            admin,
            json!({"request": "create", "room": room, "publishers": 4, "bitrate": bitrate,
                   "videocodec": "h264", "audiocodec": "opus"}),
            None,
        );
        assert_eq!(
            created["plugindata"]["data"]["videoroom"], "created",
            "{created}"
        );
    }

    /// Whether `feed` publishes in `room` right now.
    pub fn is_publishing(&self, room: u64, feed: u64) -> bool {
        let list = self.videoroom(
            self.attach(),
            json!({"request": "listparticipants", "room": room}),
            None,
        );
        list["plugindata"]["data"]["participants"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["id"] == feed && p["publisher"] == true))
    }

    /// Long-polls the session until an event carrying a JSEP arrives.
    pub fn wait_jsep(&self, session: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            assert!(
                Instant::now() < deadline,
                "no JSEP from janus:\n{}",
                self.log()
            );
            if let Ok(reply) = http(
                self.http_port,
                "GET",
                &format!("/janus/{session}?maxev=1"),
                None,
            ) && let Some(jsep) = reply.get("jsep")
            {
                return jsep.clone();
            }
        }
    }

    /// Joins `room` as a subscriber to `feed` on a new handle and returns the handle with
    /// Janus's JSEP offer (`{"type": "offer", "sdp": ...}`, its candidates included). Any
    /// WebRTC stack answers it; [`Janus::start_subscriber`] sends the answer.
    pub fn join_subscriber(&self, room: u64, feed: u64) -> ((u64, u64), Value) {
        let subscriber = self.attach();
        self.videoroom(
            subscriber,
            json!({"request": "join", "ptype": "subscriber", "room": room, "feed": feed}),
            None,
        );
        let offer = self.wait_jsep(subscriber.0);
        assert_eq!(offer["type"], "offer", "Janus's JSEP: {offer}");
        (subscriber, offer)
    }

    /// Sends the subscriber's answer (an SDP with its candidates: no trickle) with `start`:
    /// Janus then forwards the feed to it.
    pub fn start_subscriber(&self, subscriber: (u64, u64), room: u64, answer_sdp: &str) {
        self.videoroom(
            subscriber,
            json!({"request": "start", "room": room}),
            Some(json!({"type": "answer", "sdp": answer_sdp})),
        );
    }

    /// Subscribes to `feed` in `room` with a `webrtcbin`; its video goes through
    /// `video_chain` (a gst-launch fragment starting at RTP, e.g. `rtph264depay ! h264parse !
    /// avdec_h264`) into a sink that counts the frames.
    pub fn subscribe(&self, room: u64, feed: u64, video_chain: &str) -> JanusSubscriber {
        gst::init().expect("GStreamer initialises");
        let (subscriber, offer) = self.join_subscriber(room, feed);
        let pipeline = gst::Pipeline::new();
        let webrtcbin = gst::ElementFactory::make("webrtcbin")
            .property_from_str("bundle-policy", "max-bundle")
            .build()
            .expect("webrtcbin");
        pipeline.add(&webrtcbin).expect("add webrtcbin");
        let frames = Arc::new(AtomicU64::new(0));
        let (weak, counter, chain) = (
            pipeline.downgrade(),
            frames.clone(),
            video_chain.to_string(),
        );
        webrtcbin.connect_pad_added(move |_, pad| {
            let Some(pipeline) = weak.upgrade() else {
                return;
            };
            let video = pad
                .current_caps()
                .and_then(|c| c.structure(0).and_then(|s| s.get::<String>("media").ok()))
                .is_some_and(|m| m == "video");
            let description = if video {
                format!("{chain} ! fakesink name=frames")
            } else {
                "fakesink".to_string()
            };
            let Ok(bin) = gst::parse::bin_from_description(&description, true) else {
                return;
            };
            if pipeline.add(&bin).is_err() {
                return;
            }
            if let Some(sink) = bin.by_name("frames").and_then(|s| s.static_pad("sink")) {
                let counter = counter.clone();
                sink.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                    counter.fetch_add(1, Ordering::Relaxed);
                    gst::PadProbeReturn::Ok
                });
            }
            let _ = bin.sync_state_with_parent();
            if let Some(sink) = bin.static_pad("sink") {
                let _ = pad.link(&sink);
            }
        });
        pipeline
            .set_state(gst::State::Playing)
            .expect("the subscriber plays");

        let sdp = gst_sdp::SDPMessage::parse_buffer(
            offer["sdp"].as_str().expect("an SDP offer").as_bytes(),
        )
        .expect("Janus's offer parses");
        let offer =
            gst_webrtc::WebRTCSessionDescription::new(gst_webrtc::WebRTCSDPType::Offer, sdp);
        let promise = gst::Promise::new();
        webrtcbin.emit_by_name::<()>("set-remote-description", &[&offer, &promise]);
        promise.wait();
        let promise = gst::Promise::new();
        webrtcbin.emit_by_name::<()>("create-answer", &[&None::<gst::Structure>, &promise]);
        promise.wait();
        let answer = promise
            .get_reply()
            .expect("an answer")
            .get::<gst_webrtc::WebRTCSessionDescription>("answer")
            .expect("an answer");
        let local =
            hybridlive_webrtc::set_local_description(&webrtcbin, &answer, Duration::from_secs(5))
                .expect("local answer");
        self.start_subscriber(subscriber, room, &local);
        JanusSubscriber { pipeline, frames }
    }
}

impl Drop for Janus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A subscriber receiving one feed through Janus; stopped on drop.
pub struct JanusSubscriber {
    /// Its pipeline (elements of the video chain can be found by name).
    pub pipeline: gst::Pipeline,
    frames: Arc<AtomicU64>,
}

impl JanusSubscriber {
    /// Video frames that came out of the chain so far.
    pub fn frames(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }
}

impl Drop for JanusSubscriber {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()))
}

/// One HTTP/1.1 exchange with Janus's HTTP transport (JSON in, JSON out).
fn http(port: u16, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(40)))
        .map_err(|e| e.to_string())?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or("no HTTP body")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(head.lines().next().unwrap_or("").to_string());
    }
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)?
    } else {
        body.to_string()
    };
    serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))
}

fn dechunk(mut body: &str) -> Result<String, String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").ok_or("bad chunk")?;
        let size = usize::from_str_radix(size.trim(), 16).map_err(|e| e.to_string())?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..size).ok_or("short chunk")?);
        body = rest.get(size + 2..).ok_or("short chunk")?;
    }
}
