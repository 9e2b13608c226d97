//! The shared encode published into a Janus VideoRoom (Debian's `janus`, started by the test
//! with the project's config folder, loopback only) and received by a subscriber through Janus:
//! the frames decode and still carry their capture stamps.

mod common;

use common::*;
use gst::prelude::*;
use hybridlive_testkit::in_private_netns_with_veth;
use hybridlive_webrtc::{Egress, add_egress};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ROOM: u64 = 1234;
const FEED: u64 = 42;

/// Janus running with the configuration in tests/janus, on free ports; killed on drop.
struct Janus {
    child: Child,
    http_port: u16,
    ws_port: u16,
    log: PathBuf,
}

impl Janus {
    fn start() -> Janus {
        let dir = std::env::temp_dir().join(format!("hybridlive-janus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (http_port, ws_port) = (free_tcp_port(), free_tcp_port());
        let templates = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/janus");
        for entry in std::fs::read_dir(&templates).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path)
                .unwrap()
                .replace("@DIR@", &dir.display().to_string())
                .replace("@HTTP_PORT@", &http_port.to_string())
                .replace("@WS_PORT@", &ws_port.to_string())
                .replace("@RTP_MIN@", "40000")
                .replace("@RTP_MAX@", "40200");
            std::fs::write(dir.join(path.file_name().unwrap()), text).unwrap();
        }
        let log = dir.join("janus.log");
        let child = Command::new("janus")
            .arg("-C")
            .arg(dir.join("janus.jcfg"))
            .arg("-F")
            .arg(&dir)
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
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

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A new Janus session with a VideoRoom handle: (session, handle).
    fn attach(&self) -> (u64, u64) {
        let session = self.call("/janus", json!({"janus": "create"}))["data"]["id"]
            .as_u64()
            .unwrap();
        let handle = self.call(
            &format!("/janus/{session}"),
            json!({"janus": "attach", "plugin": "janus.plugin.videoroom"}),
        )["data"]["id"]
            .as_u64()
            .unwrap();
        (session, handle)
    }

    fn call(&self, path: &str, mut body: Value) -> Value {
        body["transaction"] = json!(format!("t{}", rand_suffix()));
        let reply = http(self.http_port, "POST", path, Some(&body))
            .unwrap_or_else(|e| panic!("{path}: {e}\n{}", self.log()));
        assert_ne!(reply["janus"], "error", "{path}: {reply}");
        reply
    }

    /// Sends a VideoRoom request on a handle and returns the plugin's synchronous answer.
    fn videoroom(&self, (session, handle): (u64, u64), body: Value, jsep: Option<Value>) -> Value {
        let mut message = json!({"janus": "message", "body": body});
        if let Some(jsep) = jsep {
            message["jsep"] = jsep;
        }
        self.call(&format!("/janus/{session}/{handle}"), message)
    }

    /// Long-polls the session until an event carrying a JSEP arrives.
    fn wait_jsep(&self, session: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            assert!(
                Instant::now() < deadline,
                "no JSEP from janus:\n{}",
                self.log()
            );
            let reply = http(
                self.http_port,
                "GET",
                &format!("/janus/{session}?maxev=1"),
                None,
            )
            .unwrap();
            if let Some(jsep) = reply.get("jsep") {
                return jsep.clone();
            }
        }
    }
}

impl Drop for Janus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
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

#[test]
fn janus_videoroom_forwards_the_published_stream_with_its_stamps() {
    if !in_private_netns_with_veth("janus_videoroom_forwards_the_published_stream_with_its_stamps")
    {
        return;
    }
    let janus = Janus::start();
    let admin = janus.attach();
    let created = janus.videoroom(
        admin,
        json!({"request": "create", "room": ROOM, "publishers": 4, "bitrate": 4_000_000,
               "videocodec": "h264", "audiocodec": "opus"}),
        None,
    );
    assert_eq!(
        created["plugindata"]["data"]["videoroom"], "created",
        "{created}"
    );

    // Publish the shared encode into the room.
    let sender = encoded_source(640, 360, "janus");
    sender.set_state(gst::State::Playing).unwrap();
    add_egress(
        &sender,
        &sender.by_name("t").unwrap(),
        Some(&sender.by_name("a").unwrap()),
        &Egress::Janus {
            endpoint: format!("ws://127.0.0.1:{}", janus.ws_port),
            room_id: ROOM,
            feed_id: Some(FEED),
            display_name: "hybridlive".into(),
        },
        // Janus gathers no loopback candidates: both sides use the veth test hosts.
        false,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = janus.videoroom(
            admin,
            json!({"request": "listparticipants", "room": ROOM}),
            None,
        );
        let publishing = list["plugindata"]["data"]["participants"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["id"] == FEED && p["publisher"] == true));
        if publishing {
            break;
        }
        if let Some(msg) = sender
            .bus()
            .unwrap()
            .pop_filtered(&[gst::MessageType::Error])
        {
            panic!("publisher: {msg:?}\n{}", janus.log());
        }
        assert!(
            Instant::now() < deadline,
            "never published: {list}\n{}",
            janus.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Subscribe through Janus with a webrtcbin that decodes and reads the stamps.
    let subscriber = janus.attach();
    janus.videoroom(
        subscriber,
        json!({"request": "join", "ptype": "subscriber", "room": ROOM, "feed": FEED}),
        None,
    );
    let offer = janus.wait_jsep(subscriber.0);
    let viewer = gst::Pipeline::new();
    let webrtcbin = gst::ElementFactory::make("webrtcbin")
        .property_from_str("bundle-policy", "max-bundle")
        .build()
        .unwrap();
    let meter = gst::ElementFactory::make("latencymeter").build().unwrap();
    viewer.add(&webrtcbin).unwrap();
    let (pipe, m) = (viewer.downgrade(), meter.clone());
    webrtcbin.connect_pad_added(move |_, pad| {
        let Some(pipeline) = pipe.upgrade() else {
            return;
        };
        let caps = pad.current_caps().unwrap();
        let media = caps.structure(0).unwrap().get::<&str>("media").unwrap();
        let sink = gst::ElementFactory::make("fakesink").build().unwrap();
        pipeline.add(&sink).unwrap();
        if media == "video" {
            let decode =
                gst::parse::bin_from_description("rtph264depay ! h264parse ! avdec_h264", true)
                    .unwrap();
            pipeline.add_many([decode.upcast_ref(), &m]).unwrap();
            gst::Element::link_many([decode.upcast_ref(), &m, &sink]).unwrap();
            for e in [decode.upcast_ref::<gst::Element>(), &m, &sink] {
                e.sync_state_with_parent().unwrap();
            }
            pad.link(&decode.static_pad("sink").unwrap()).unwrap();
        } else {
            sink.sync_state_with_parent().unwrap();
            pad.link(&sink.static_pad("sink").unwrap()).unwrap();
        }
    });
    viewer.set_state(gst::State::Playing).unwrap();

    let sdp = gst_sdp::SDPMessage::parse_buffer(offer["sdp"].as_str().unwrap().as_bytes()).unwrap();
    let offer = gst_webrtc::WebRTCSessionDescription::new(gst_webrtc::WebRTCSDPType::Offer, sdp);
    let promise = gst::Promise::new();
    webrtcbin.emit_by_name::<()>("set-remote-description", &[&offer, &promise]);
    promise.wait();
    let promise = gst::Promise::new();
    webrtcbin.emit_by_name::<()>("create-answer", &[&None::<gst::Structure>, &promise]);
    promise.wait();
    let answer = promise
        .get_reply()
        .unwrap()
        .get::<gst_webrtc::WebRTCSessionDescription>("answer")
        .unwrap();
    let promise = gst::Promise::new();
    webrtcbin.emit_by_name::<()>("set-local-description", &[&answer, &promise]);
    promise.wait();
    let deadline = Instant::now() + Duration::from_secs(5);
    while webrtcbin.property::<gst_webrtc::WebRTCICEGatheringState>("ice-gathering-state")
        != gst_webrtc::WebRTCICEGatheringState::Complete
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let local = webrtcbin
        .property::<gst_webrtc::WebRTCSessionDescription>("local-description")
        .sdp()
        .as_text()
        .unwrap();
    janus.videoroom(
        subscriber,
        json!({"request": "start", "room": ROOM}),
        Some(json!({"type": "answer", "sdp": local})),
    );

    let deadline = Instant::now() + Duration::from_secs(20);
    let stats = loop {
        let stats = meter.property::<gst::Structure>("stats");
        if stats.get::<u64>("count").unwrap() >= 30 {
            break stats;
        }
        assert!(
            Instant::now() < deadline,
            "through Janus: {stats}\n{}",
            janus.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // The SFU forwards RTP untouched: the capture stamps come through with the frames.
    assert_eq!(stats.get::<String>("stream-id").unwrap(), "janus");
    let p50 = stats.get::<f64>("window-p50-ms").unwrap();
    assert!(
        p50 > 0.0 && p50 < 1000.0,
        "capture to decoded through Janus: {p50} ms"
    );
    viewer.set_state(gst::State::Null).unwrap();
    sender.set_state(gst::State::Null).unwrap();
}
