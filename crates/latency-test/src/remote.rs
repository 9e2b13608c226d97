//! `hybridlive latency-test --url`: watch a running deployment from where this command runs.
//!
//! Estimates this machine's clock against the server's (`GET /api/time`, see [`crate::clock`]),
//! joins its WHEP endpoint with a built-in GStreamer receiver (no browser needed), decodes the
//! video and reads the capture stamp of every frame: glass-to-glass is the local instant of the
//! decoded frame, moved onto the server's clock, minus the capture instant.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs as _};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow, bail};
use gst::prelude::*;
use serde::Serialize;

use crate::clock::{self, ClockOffset, Sample};
use crate::{Args, BudgetCheck, DEFAULT_DURATION_S, Summary, ViewerPath, ms};

/// How long a connection or an answer may take before the server counts as unreachable.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long ICE gathering may take for the offer.
const GATHER_TIMEOUT: Duration = Duration::from_secs(10);
/// From the WHEP answer to the first decoded frame, generous for loaded machines and far CDNs.
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// Frames decoded this soon after the first are the join, not the steady state: a joining
/// receiver gets the frames since the last key frame in one burst (measured on loopback: about
/// 12 frames decoded at once, the first ~400 ms old), which no later frame resembles.
const JOIN: Duration = Duration::from_secs(1);
/// The largest answer read from the server.
const MAX_ANSWER_BYTES: u64 = 1 << 20;
/// Default fraction of the reference figure the clock uncertainty may reach.
pub const DEFAULT_MAX_CLOCK_UNCERTAINTY: f64 = 0.1;

/// What one run against a deployment measured: written by `--json-out`, read by `merge`.
#[derive(Debug, Clone, Serialize)]
pub struct RemoteReport {
    /// Always `remote`: tells these reports from the in-process test's.
    pub kind: &'static str,
    /// Where the measurement ran (`--name`, else the host name).
    pub vantage: String,
    /// The WHEP endpoint watched.
    pub whep: String,
    /// Seconds measured after the first frame.
    pub duration_s: f64,
    /// This machine's clock against the server's.
    pub clock: ClockOffset,
    /// Round trip of an HTTP request to the origin on an open connection, ms.
    pub http_rtt_ms: Option<Summary>,
    /// WHEP POST to the first decoded frame, ms.
    pub first_frame_ms: Option<f64>,
    /// Frames decoded with a capture stamp, after the join.
    pub frames: usize,
    /// Frames decoded in the first second after the first (the join's catch-up burst).
    pub join_frames: usize,
    /// Glass-to-glass of the join's frames, ms (`None` when not trustworthy).
    pub join_g2g_ms: Option<Summary>,
    /// Glass-to-glass (capture to decoded here) per frame, on the server's clock, ms; `None`
    /// when not measured or not trustworthy.
    pub g2g_ms: Option<Summary>,
    /// Why `g2g_ms` is left out although frames were measured.
    pub g2g_untrusted: Option<String>,
    /// What Chromium measured on the deployment's viewer page (`--chromium`).
    pub chromium: Vec<BrowserPath>,
    /// The budgets checked.
    pub budgets: Vec<BudgetCheck>,
}

/// The viewer page in headless Chromium over one path, as a viewer's browser plays it.
#[derive(Debug, Clone, Serialize)]
pub struct BrowserPath {
    /// The path asked for.
    pub path: ViewerPath,
    /// What the page played (`webrtc`, `hls`; a WebRTC page that fell back says `hls`).
    pub played: String,
    /// Frames shown with a capture stamp.
    pub frames: usize,
    /// Glass-to-glass per shown frame on the server's clock, ms; `None` when the page did not
    /// play the path asked for, or the clock is not trustworthy.
    pub g2g_ms: Option<Summary>,
    /// Page start to the first frame shown, ms.
    pub first_frame_ms: Option<f64>,
}

impl RemoteReport {
    /// No budget exceeded.
    pub fn passed(&self) -> bool {
        self.budgets.iter().all(|b| b.ok)
    }
}

/// An `http://host:port/path` URL, split.
#[derive(Debug, Clone, PartialEq)]
struct HttpUrl {
    /// `host:port`, as connected to and sent in `Host`.
    authority: String,
    /// The path and query, `/` at least.
    path: String,
}

impl HttpUrl {
    fn parse(url: &str) -> anyhow::Result<HttpUrl> {
        if url.starts_with("https://") {
            bail!(
                "{url}: https is not supported by the built-in receiver yet; give the origin's \
                 http:// address"
            );
        }
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow!("{url}: not an http:// URL"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            bail!("{url}: no host (or credentials in the URL, which are not sent)");
        }
        let authority = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.contains(']'))
        {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(HttpUrl {
            authority,
            path: path.to_string(),
        })
    }

    /// `path` relative to this URL's origin.
    fn at(&self, path: &str) -> HttpUrl {
        HttpUrl {
            authority: self.authority.clone(),
            path: path.to_string(),
        }
    }

    fn is_loopback(&self) -> bool {
        self.authority
            .to_socket_addrs()
            .is_ok_and(|mut a| a.all(|a| a.ip().is_loopback()))
    }
}

impl std::fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}{}", self.authority, self.path)
    }
}

/// One HTTP/1.1 connection to the origin, kept open between requests.
struct Connection {
    reader: BufReader<TcpStream>,
    url: HttpUrl,
}

/// An answer: status, headers (names lower-cased), body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).trim().to_string()
    }
}

impl Connection {
    fn open(url: &HttpUrl) -> anyhow::Result<Connection> {
        let addrs: Vec<_> = url
            .authority
            .to_socket_addrs()
            .with_context(|| format!("{url}: cannot resolve the host"))?
            .collect();
        let mut last = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, HTTP_TIMEOUT) {
                Ok(stream) => {
                    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
                    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
                    let _ = stream.set_nodelay(true);
                    return Ok(Connection {
                        reader: BufReader::new(stream),
                        url: url.clone(),
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        match last {
            Some(e) => Err(anyhow!("{url}: cannot connect: {e}")),
            None => Err(anyhow!("{url}: the host has no address")),
        }
    }

    fn request(
        &mut self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> anyhow::Result<Answer> {
        let url = self.url.at(path);
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n",
            self.url.authority,
            body.len()
        );
        if let Some(t) = content_type {
            head += &format!("Content-Type: {t}\r\n");
        }
        head += "\r\n";
        let stream = self.reader.get_mut();
        stream
            .write_all(head.as_bytes())
            .and_then(|()| stream.write_all(body))
            .with_context(|| format!("{method} {url}: cannot send"))?;
        self.read_answer()
            .with_context(|| format!("{method} {url}: no HTTP answer"))
    }

    fn read_answer(&mut self) -> anyhow::Result<Answer> {
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("not an HTTP status line: {:?}", line.trim()))?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                bail!("the connection closed in the headers");
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((n, v)) = l.split_once(':') {
                headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let length = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse::<u64>().ok());
        let mut body = Vec::new();
        match length {
            Some(n) if n > MAX_ANSWER_BYTES => bail!("an answer of {n} bytes is too large"),
            Some(n) => {
                (&mut self.reader).take(n).read_to_end(&mut body)?;
                if body.len() as u64 != n {
                    bail!("the answer ended after {} of {n} bytes", body.len());
                }
            }
            None => {
                (&mut self.reader)
                    .take(MAX_ANSWER_BYTES)
                    .read_to_end(&mut body)?;
            }
        }
        Ok(Answer {
            status,
            headers,
            body,
        })
    }
}

/// This machine's realtime clock, ns since the epoch, shifted by `skew_ns` (a test's fake
/// offset).
fn local_now_ns(skew_ns: i128) -> i128 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    now + skew_ns
}

/// `samples` exchanges with `/api/time` on one open connection: the clock offset and the
/// round trips (ms).
fn exchange_clocks(
    origin: &HttpUrl,
    samples: usize,
    skew_ns: i128,
) -> anyhow::Result<(ClockOffset, Vec<f64>)> {
    let mut connection = Connection::open(origin)?;
    let mut exchanged = Vec::new();
    let mut rtts = Vec::new();
    for _ in 0..samples.max(1) {
        let t0 = local_now_ns(skew_ns);
        let started = Instant::now();
        let answer = connection.request("GET", "/api/time", None, b"")?;
        // The round trip on the monotonic clock: a realtime step mid-exchange cannot shrink it.
        let rtt = started.elapsed();
        let url = origin.at("/api/time");
        if answer.status != 200 {
            bail!(
                "{url} answered {}: {} (is this a hybridlive server of this version?)",
                answer.status,
                answer.text()
            );
        }
        let server_ns = serde_json::from_slice::<serde_json::Value>(&answer.body)
            .ok()
            .and_then(|v| v["utc_ns"].as_u64())
            .ok_or_else(|| anyhow!("{url}: the answer holds no utc_ns: {}", answer.text()))?;
        exchanged.push(Sample {
            t0_ns: t0,
            server_ns: i128::from(server_ns),
            t3_ns: t0 + rtt.as_nanos() as i128,
        });
        rtts.push(rtt.as_secs_f64() * 1e3);
    }
    let clock = clock::estimate(&exchanged).context("no usable clock exchange")?;
    Ok((clock, rtts))
}

/// What the receiver saw, shared with its pad probe.
#[derive(Default)]
struct Frames {
    /// When each stamped frame was decoded, and its local instant (skewed) minus its capture
    /// instant, ns.
    raw_g2g_ns: Vec<(Instant, i128)>,
    first_at: Option<Instant>,
}

/// A receive-only webrtcbin that decodes H.264 and reads each frame's capture stamp.
struct Receiver {
    pipeline: gst::Pipeline,
    webrtcbin: gst::Element,
    frames: Arc<Mutex<Frames>>,
}

impl Receiver {
    fn new(loopback: bool, skew_ns: i128) -> anyhow::Result<Receiver> {
        gst::init()?;
        let pipeline = gst::Pipeline::new();
        let webrtcbin = gst::ElementFactory::make("webrtcbin")
            .property_from_str("bundle-policy", "max-bundle")
            .build()
            .context("no webrtcbin (GStreamer's plugins-bad webrtc)")?;
        // There is no internet to reach a STUN server with; host candidates do.
        if loopback {
            hybridlive_webrtc::add_local_address(&webrtcbin, "127.0.0.1")
                .map_err(|e| anyhow!("cannot gather on 127.0.0.1: {e}"))?;
        }
        pipeline.add(&webrtcbin)?;
        let video = gst::Caps::builder("application/x-rtp")
            .field("media", "video")
            .field("encoding-name", "H264")
            .field("clock-rate", 90000i32)
            .field("payload", 102i32)
            .field("packetization-mode", "1")
            .field("profile-level-id", "42e01f")
            .build();
        webrtcbin.emit_by_name::<gst_webrtc::WebRTCRTPTransceiver>(
            "add-transceiver",
            &[&gst_webrtc::WebRTCRTPTransceiverDirection::Recvonly, &video],
        );
        let frames = Arc::new(Mutex::new(Frames::default()));
        let (weak, shared) = (pipeline.downgrade(), frames.clone());
        webrtcbin.connect_pad_added(move |_, pad| {
            let Some(pipeline) = weak.upgrade() else {
                return;
            };
            if let Err(err) = decode(&pipeline, pad, shared.clone(), skew_ns) {
                eprintln!("latency-test: cannot receive {}: {err:#}", pad.name());
            }
        });
        pipeline.set_state(gst::State::Playing)?;
        Ok(Receiver {
            pipeline,
            webrtcbin,
            frames,
        })
    }

    fn offer(&self) -> anyhow::Result<String> {
        let promise = gst::Promise::new();
        self.webrtcbin
            .emit_by_name::<()>("create-offer", &[&None::<gst::Structure>, &promise]);
        promise.wait();
        let offer = promise
            .get_reply()
            .and_then(|r| r.get::<gst_webrtc::WebRTCSessionDescription>("offer").ok())
            .context("webrtcbin made no offer")?;
        hybridlive_webrtc::set_local_description(&self.webrtcbin, &offer, GATHER_TIMEOUT)
            .map_err(|e| anyhow!("offer: {e}"))
    }

    fn accept(&self, answer: &str) -> anyhow::Result<()> {
        let sdp = gst_sdp::SDPMessage::parse_buffer(answer.as_bytes())
            .map_err(|_| anyhow!("the WHEP answer is not SDP"))?;
        let answer =
            gst_webrtc::WebRTCSessionDescription::new(gst_webrtc::WebRTCSDPType::Answer, sdp);
        let promise = gst::Promise::new();
        self.webrtcbin
            .emit_by_name::<()>("set-remote-description", &[&answer, &promise]);
        promise.wait();
        if let Some(err) = promise
            .get_reply()
            .and_then(|r| r.get::<gst::glib::Error>("error").ok())
        {
            bail!("the WHEP answer was refused: {err}");
        }
        Ok(())
    }

    fn snapshot(&self) -> (usize, Option<Instant>) {
        let frames = self.frames.lock().unwrap_or_else(|e| e.into_inner());
        (frames.raw_g2g_ns.len(), frames.first_at)
    }

    /// The first bus error, if any.
    fn error(&self) -> Option<String> {
        let bus = self.pipeline.bus()?;
        bus.pop_filtered(&[gst::MessageType::Error])
            .and_then(|m| match m.view() {
                gst::MessageView::Error(e) => Some(format!("{} ({:?})", e.error(), e.debug())),
                _ => None,
            })
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// Decodes a new video pad and notes, per decoded frame, when it arrived against its stamp.
fn decode(
    pipeline: &gst::Pipeline,
    pad: &gst::Pad,
    frames: Arc<Mutex<Frames>>,
    skew_ns: i128,
) -> anyhow::Result<()> {
    let is_video = pad
        .current_caps()
        .and_then(|c| {
            c.structure(0)
                .and_then(|s| s.get::<&str>("media").ok().map(|m| m == "video"))
        })
        .unwrap_or(false);
    let sink = gst::ElementFactory::make("fakesink")
        .property("async", false)
        .property("sync", false)
        .build()?;
    if !is_video {
        pipeline.add(&sink)?;
        sink.sync_state_with_parent()?;
        pad.link(&sink.static_pad("sink").context("fakesink pad")?)?;
        return Ok(());
    }
    // h264parse attaches each access unit's user-data SEI as a meta the decoder carries over
    // to the decoded frame: the stamp is read where the frame is ready to show.
    let bin = gst::parse::bin_from_description("rtph264depay ! h264parse ! avdec_h264", true)?;
    pipeline.add_many([bin.upcast_ref::<gst::Element>(), &sink])?;
    bin.link(&sink)?;
    bin.sync_state_with_parent()?;
    sink.sync_state_with_parent()?;
    sink.static_pad("sink").context("fakesink pad")?.add_probe(
        gst::PadProbeType::BUFFER,
        move |_, info| {
            let now = local_now_ns(skew_ns);
            if let Some(buffer) = info.buffer()
                && let Some(capture) = capture_time_ns(buffer)
            {
                let mut frames = frames.lock().unwrap_or_else(|e| e.into_inner());
                let at = Instant::now();
                frames.first_at.get_or_insert(at);
                frames.raw_g2g_ns.push((at, now - i128::from(capture)));
            }
            gst::PadProbeReturn::Ok
        },
    );
    pad.link(&bin.static_pad("sink").context("depayloader pad")?)?;
    Ok(())
}

/// The capture instant in a decoded frame's SEI meta, if it carries a hybridlive stamp.
fn capture_time_ns(buffer: &gst::BufferRef) -> Option<u64> {
    buffer
        .iter_meta::<gst_video::video_meta::VideoSeiUserDataUnregisteredMeta>()
        .find_map(|meta| {
            hybridlive_stamp::CaptureStamp::from_uuid_and_data(&meta.uuid(), meta.data()).ok()
        })
        .map(|stamp| stamp.capture_time_ns)
}

/// Where this run stands: `--name`, else the host name.
fn vantage(args: &Args) -> String {
    args.name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "here".into())
    })
}

/// Measures the deployment at `--url` / `--whep`.
pub fn measure(args: &Args) -> anyhow::Result<RemoteReport> {
    let duration = args.duration.unwrap_or(DEFAULT_DURATION_S);
    if !(duration > 0.0 && duration <= 3600.0) {
        bail!("--duration must be between 0 and 3600 seconds, not {duration}");
    }
    let max_fraction = args.max_clock_uncertainty;
    if !(max_fraction > 0.0 && max_fraction <= 1.0) {
        bail!("--max-clock-uncertainty must be a fraction in (0, 1], not {max_fraction}");
    }
    let origin = match (&args.url, &args.whep) {
        (Some(url), _) => HttpUrl::parse(url)?,
        (None, Some(whep)) => HttpUrl::parse(whep)?.at("/"),
        (None, None) => bail!("give --url or --whep"),
    };
    let whep = match &args.whep {
        Some(whep) => HttpUrl::parse(whep)?,
        None => origin.at(&format!("{}whep", with_slash(&origin.path))),
    };
    let skew_ns = args.clock_skew_ms.map_or(0, |ms| (ms * 1e6) as i128);

    let (clock, rtts) = exchange_clocks(&origin, args.clock_samples, skew_ns)?;

    let receiver = Receiver::new(whep.is_loopback(), skew_ns)?;
    let offer = receiver.offer()?;
    let mut connection = Connection::open(&whep)?;
    let posted = Instant::now();
    let answer = connection.request(
        "POST",
        &whep.path,
        Some("application/sdp"),
        offer.as_bytes(),
    )?;
    if answer.status != 201 {
        bail!(
            "{whep} answered {} to the WHEP offer: {}",
            answer.status,
            answer.text()
        );
    }
    let resource = answer.header("location").map(str::to_string);
    receiver.accept(&String::from_utf8_lossy(&answer.body))?;

    let first_deadline = posted + FIRST_FRAME_TIMEOUT;
    let first_at = loop {
        if let Some(err) = receiver.error() {
            bail!("{whep}: the receiver failed: {err}");
        }
        if let (_, Some(at)) = receiver.snapshot() {
            break at;
        }
        if Instant::now() >= first_deadline {
            bail!(
                "{whep}: no video frame with a capture stamp within {} s of the WHEP answer \
                 (ICE could not connect, or the stream carries no stamps)",
                FIRST_FRAME_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let end = first_at + JOIN + Duration::from_secs_f64(duration);
    while Instant::now() < end {
        if let Some(err) = receiver.error() {
            bail!("{whep}: the receiver failed: {err}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let raw = {
        let frames = receiver.frames.lock().unwrap_or_else(|e| e.into_inner());
        frames.raw_g2g_ns.clone()
    };
    drop(receiver);
    if let Some(location) = resource {
        // Leave as a browser tab does: the server frees the session at once.
        let path = if location.starts_with('/') {
            location
        } else {
            format!("{}/{location}", whep.path.trim_end_matches('/'))
        };
        let _ = connection.request("DELETE", &path, None, b"");
    }

    let page = format!(
        "http://{}{}{}",
        origin.authority,
        origin.path,
        if origin.path.contains('?') { '&' } else { '?' }
    );
    let mut chromium = Vec::new();
    for path in &args.chromium {
        chromium.push(browse(&page, *path, duration, &clock)?);
    }

    let corrected = |join: bool| -> Vec<f64> {
        raw.iter()
            .filter(|(at, _)| (*at < first_at + JOIN) == join)
            .map(|(_, ns)| (*ns as f64) / 1e6 + clock.offset_ms)
            .collect()
    };
    let (steady, join) = (corrected(false), corrected(true));
    let summary = Summary::of(&steady);
    let budget_g2g = args.budget_g2g_ms.or(args.webrtc_p95_ms);
    let untrusted = summary
        .and_then(|s| clock::untrustworthy(&clock, budget_g2g.unwrap_or(s.p50), max_fraction));
    let trusted = |s: Option<Summary>| if untrusted.is_some() { None } else { s };
    let mut report = RemoteReport {
        kind: "remote",
        vantage: vantage(args),
        whep: whep.to_string(),
        duration_s: duration,
        clock,
        http_rtt_ms: Summary::of(&rtts),
        first_frame_ms: Some(first_at.duration_since(posted).as_secs_f64() * 1e3),
        frames: steady.len(),
        join_frames: join.len(),
        join_g2g_ms: trusted(Summary::of(&join)),
        g2g_ms: trusted(summary),
        chromium: chromium
            .into_iter()
            .map(|mut p| {
                p.g2g_ms = trusted(p.g2g_ms);
                p
            })
            .collect(),
        g2g_untrusted: untrusted,
        budgets: Vec::new(),
    };
    report.budgets = budgets(&report, args);
    Ok(report)
}

/// Plays the viewer page `page` (ending in `?` or `&`) over `path` in headless Chromium for
/// `duration` seconds after its first frame. The page times frames on this machine's clock:
/// the offset moves them onto the server's.
fn browse(
    page: &str,
    path: ViewerPath,
    duration: f64,
    clock: &ClockOffset,
) -> anyhow::Result<BrowserPath> {
    let mode = match path {
        ViewerPath::Webrtc => "webrtc",
        ViewerPath::Hls => "hls",
    };
    let url = format!("{page}mode={mode}&measure={duration}");
    let result = crate::browser::open_pages(std::slice::from_ref(&url), duration + 90.0)
        .with_context(|| format!("Chromium on {url}"))?;
    let result = result.into_iter().next().unwrap_or_default();
    let played = result["mode"].as_str().unwrap_or("nothing").to_string();
    let latencies: Vec<f64> = result["latencies"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_f64()).collect())
        .unwrap_or_default();
    let corrected: Vec<f64> = latencies.iter().map(|l| l + clock.offset_ms).collect();
    Ok(BrowserPath {
        path,
        g2g_ms: (played == mode).then(|| Summary::of(&corrected)).flatten(),
        played,
        frames: corrected.len(),
        first_frame_ms: result["firstFrameMs"].as_f64(),
    })
}

fn with_slash(path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or("/");
    if path.ends_with('/') {
        path.to_string()
    } else {
        format!("{path}/")
    }
}

fn budgets(report: &RemoteReport, args: &Args) -> Vec<BudgetCheck> {
    [
        (
            "g2g_p95_ms",
            args.budget_g2g_ms.or(args.webrtc_p95_ms),
            report.g2g_ms.map(|s| s.p95),
        ),
        (
            "first_frame_ms",
            args.budget_first_frame_ms.or(args.first_frame_ms),
            report.first_frame_ms,
        ),
        (
            "hls_p95_ms",
            args.hls_p95_ms,
            report
                .chromium
                .iter()
                .find(|p| p.path == ViewerPath::Hls)
                .and_then(|p| p.g2g_ms)
                .map(|s| s.p95),
        ),
        (
            "http_rtt_ms",
            args.budget_http_rtt_ms,
            report.http_rtt_ms.map(|s| s.p50),
        ),
    ]
    .into_iter()
    .filter_map(|(name, budget, measured)| {
        let budget_ms = budget?;
        Some(BudgetCheck {
            name,
            budget_ms,
            measured_ms: measured,
            ok: measured.is_some_and(|m| m <= budget_ms),
        })
    })
    .collect()
}

/// The human-readable report.
pub fn render(report: &RemoteReport) -> String {
    let c = &report.clock;
    let mut out = format!(
        "hybridlive latency-test: {} from {} ({} s)\n",
        report.whep, report.vantage, report.duration_s
    );
    out += &format!(
        "clock offset to the server  {:+.2} ms ± {:.2} ms (best of {} exchanges)\n",
        c.offset_ms, c.uncertainty_ms, c.samples
    );
    out += &format!(
        "HTTP RTT to the origin      p50 {}  max {}\n",
        ms(report.http_rtt_ms.map(|s| s.p50)),
        ms(report.http_rtt_ms.map(|s| s.max))
    );
    out += &format!(
        "WHEP POST to first frame    {}\n",
        ms(report.first_frame_ms)
    );
    match (&report.g2g_ms, &report.g2g_untrusted) {
        (Some(s), _) => {
            out += &format!(
                "glass-to-glass (WebRTC)     p50 {}  p95 {}  p99 {}  max {}  ({} frames)\n",
                ms(Some(s.p50)),
                ms(Some(s.p95)),
                ms(Some(s.p99)),
                ms(Some(s.max)),
                s.count
            );
        }
        (None, Some(why)) => {
            out += &format!("glass-to-glass (WebRTC)     not trustworthy, not printed: {why}\n");
        }
        (None, None) => out += "glass-to-glass (WebRTC)     no stamped frame\n",
    }
    if let Some(s) = report.join_g2g_ms {
        out += &format!(
            "joining (first second)      {} frames, glass-to-glass max {}\n",
            report.join_frames,
            ms(Some(s.max))
        );
    }
    for p in &report.chromium {
        let label = format!("Chromium, {}", p.path.label());
        match p.g2g_ms {
            Some(s) => {
                out += &format!(
                    "{label:<27} p50 {}  p95 {}  max {}  ({} frames, first frame {})\n",
                    ms(Some(s.p50)),
                    ms(Some(s.p95)),
                    ms(Some(s.max)),
                    s.count,
                    ms(p.first_frame_ms)
                );
            }
            None => {
                out += &format!(
                    "{label:<27} played {}, {} stamped frames: no figure\n",
                    p.played, p.frames
                )
            }
        }
    }
    for b in &report.budgets {
        out += &format!(
            "budget {:<15} {:>9} ms  measured {:>11}  {}\n",
            b.name,
            b.budget_ms,
            ms(b.measured_ms),
            if b.ok { "ok" } else { "EXCEEDED" }
        );
    }
    out
}

/// Writes the report where `--json-out` says, prints it, and says which budgets were exceeded.
pub fn run(args: &Args) -> anyhow::Result<std::process::ExitCode> {
    let report = measure(args)?;
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.json_out {
        std::fs::write(path, format!("{json}\n"))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if args.json {
        println!("{json}");
    } else {
        print!("{}", render(&report));
    }
    if report.passed() {
        return Ok(std::process::ExitCode::SUCCESS);
    }
    crate::report_exceeded(&report.budgets);
    if let Some(why) = &report.g2g_untrusted {
        eprintln!("latency-test: glass-to-glass not trustworthy, not measured: {why}");
    }
    Ok(std::process::ExitCode::from(crate::EXIT_OVER_BUDGET))
}

/// Reports written by `--json-out`, for `merge`.
pub fn read_reports(files: &[PathBuf]) -> anyhow::Result<Vec<serde_json::Value>> {
    files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read {}", f.display()))?;
            let value: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: not a latency-test JSON report", f.display()))?;
            if value["kind"] != "remote" {
                bail!(
                    "{}: not a report of `latency-test --url --json-out`",
                    f.display()
                );
            }
            Ok(value)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_split_and_refused_clearly() {
        let u = HttpUrl::parse("http://example.org:8080/live/").unwrap();
        assert_eq!(
            (u.authority.as_str(), u.path.as_str()),
            ("example.org:8080", "/live/")
        );
        let u = HttpUrl::parse("http://10.0.0.1").unwrap();
        assert_eq!(
            (u.authority.as_str(), u.path.as_str()),
            ("10.0.0.1:80", "/")
        );
        let u = HttpUrl::parse("http://[::1]/").unwrap();
        assert_eq!(u.authority, "[::1]:80");
        let u = HttpUrl::parse("http://[::1]:9/").unwrap();
        assert_eq!(u.authority, "[::1]:9");
        for bad in ["ftp://x/", "https://x/", "http:///", "http://u:p@x/"] {
            let err = HttpUrl::parse(bad).unwrap_err().to_string();
            assert!(err.starts_with(bad), "{err}");
        }
        assert_eq!(with_slash("/live?x=1"), "/live/");
    }
}
