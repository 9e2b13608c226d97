//! How many 1280x720@30 viewers one machine serves while capture → viewer p95 stays within
//! 100 ms: hybridlive's WHEP output (one encode fanned out to a webrtcbin per viewer) against
//! gst-plugin-webrtc's `whepserversink` (an encoder per viewer), in the same run, with the same
//! viewers and the same ramp.
//!
//! Viewers are GStreamer `webrtcbin` receivers in this process (ICE, DTLS, SRTP, RTP as a
//! browser gets them), without a decoder: 60 decoders would measure the decoders. Latency is
//! taken when a whole access unit is out of the depayloader:
//! - hybridlive: from the capture stamp in the SEI (UTC, written at capture by latencystamp);
//! - whepserversink: it cannot carry the SEI (its encoder is internal), so its payloaders are
//!   set to `timestamp-offset=0` and the RTP timestamp is the capture running time of the
//!   frame on the sender's clock, which is this process's.
//!
//! Also measured: join time, from the offer leaving to the first access unit received.
//!
//!   cargo bench -p hybridlive-webrtc --bench viewers --profile dev
//!   VIEWER_STEPS=1,2,4,8 VIEWER_WINDOW_S=5 cargo bench ... (the defaults are below)
//!
//! Runs in a private network namespace (needs root, like the tests): only 127.0.0.1 exists.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gst::prelude::*;
use hybridlive_stamp::{Codec, Framing, find_stamp};
use hybridlive_testkit::in_private_netns;
use hybridlive_webrtc::{WhepConfig, WhepOutput, add_local_address, register_webrtc_elements};

const WIDTH: u32 = 1280;
const HEIGHT: u32 = 720;
const BITRATE_KBPS: u32 = 2500;
const P95_LIMIT_MS: f64 = 100.0;
/// What the viewers offer: constrained baseline 3.1. whepserversink on GStreamer 1.22 cannot
/// negotiate `42e01f` (its discovery pipeline fails), `42c01f` works for both servers.
static PROFILE_LEVEL_ID: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| env_or("VIEWER_PROFILE", "42c01f".to_string()));
/// A viewer receiving fewer frames per second than this is not served.
const MIN_FPS: f64 = 25.0;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn utc_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64
}

/// What one viewer measured, shared with its pad probe.
#[derive(Default)]
struct Samples {
    latencies_ms: Mutex<Vec<f64>>,
    frames: AtomicU64,
    first_frame_ns: AtomicU64,
}

/// How a viewer turns a received access unit into a latency.
#[derive(Clone)]
enum Clocking {
    /// The capture stamp in the SEI.
    Stamp,
    /// The RTP timestamp is the capture running time of `pipeline` (offset 0, 90 kHz).
    RtpRunningTime(gst::Pipeline),
}

struct Viewer {
    pipeline: gst::Pipeline,
    webrtcbin: gst::Element,
    samples: Arc<Samples>,
}

impl Viewer {
    fn new(clocking: Clocking) -> Viewer {
        let pipeline = gst::Pipeline::new();
        let webrtcbin = gst::ElementFactory::make("webrtcbin")
            .property_from_str("bundle-policy", "max-bundle")
            .build()
            .expect("webrtcbin");
        add_local_address(&webrtcbin, "127.0.0.1").expect("loopback ICE");
        pipeline.add(&webrtcbin).expect("add");
        let caps = gst::Caps::builder("application/x-rtp")
            .field("media", "video")
            .field("encoding-name", "H264")
            .field("clock-rate", 90000i32)
            .field("payload", 102i32)
            .field("packetization-mode", "1")
            .field("profile-level-id", PROFILE_LEVEL_ID.as_str())
            .build();
        webrtcbin.emit_by_name::<gst_webrtc::WebRTCRTPTransceiver>(
            "add-transceiver",
            &[&gst_webrtc::WebRTCRTPTransceiverDirection::Recvonly, &caps],
        );
        let samples = Arc::new(Samples::default());
        let (weak, s) = (pipeline.downgrade(), samples.clone());
        webrtcbin.connect_pad_added(move |_, pad| {
            let Some(pipeline) = weak.upgrade() else {
                return;
            };
            let depay = gst::parse::bin_from_description(
                "rtph264depay ! video/x-h264,stream-format=byte-stream,alignment=au ! fakesink name=sink async=false",
                true,
            )
            .expect("depayloader");
            pipeline.add(&depay).expect("add");
            depay.sync_state_with_parent().expect("play");
            let rtp_ts = Arc::new(AtomicU64::new(u64::MAX));
            if let Clocking::RtpRunningTime(_) = &clocking {
                // The RTP timestamp of the packet that completes each access unit.
                let rtp_ts = rtp_ts.clone();
                pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                    if let Some(buffer) = info.buffer()
                        && let Ok(rtp) = gst_rtp::RTPBuffer::from_buffer_readable(buffer)
                        && rtp.is_marker()
                    {
                        rtp_ts.store(u64::from(rtp.timestamp()), Ordering::Relaxed);
                    }
                    gst::PadProbeReturn::Ok
                });
            }
            let sink_pad = depay
                .by_name("sink")
                .and_then(|s| s.static_pad("sink"))
                .expect("fakesink pad");
            let (s, clocking) = (s.clone(), clocking.clone());
            sink_pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                let Some(buffer) = info.buffer() else {
                    return gst::PadProbeReturn::Ok;
                };
                let now = utc_ns();
                let _ = s
                    .first_frame_ns
                    .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
                s.frames.fetch_add(1, Ordering::Relaxed);
                let latency_ms = match &clocking {
                    Clocking::Stamp => buffer.map_readable().ok().and_then(|map| {
                        find_stamp(Codec::H264, Framing::AnnexB, &map)
                            .ok()
                            .flatten()
                            .map(|stamp| (now as f64 - stamp.capture_time_ns as f64) / 1e6)
                    }),
                    Clocking::RtpRunningTime(sender) => {
                        let ts = rtp_ts.load(Ordering::Relaxed);
                        sender.current_running_time().filter(|_| ts != u64::MAX).map(|rt| {
                            let now_ts = (rt.nseconds() as u128 * 90_000 / 1_000_000_000) as u32;
                            f64::from(now_ts.wrapping_sub(ts as u32)) / 90.0
                        })
                    }
                };
                if let Some(ms) = latency_ms {
                    s.latencies_ms.lock().unwrap().push(ms);
                }
                gst::PadProbeReturn::Ok
            });
            let _ = pad.link(&depay.static_pad("sink").expect("ghost pad"));
        });
        pipeline
            .set_state(gst::State::Playing)
            .expect("viewer plays");
        Viewer {
            pipeline,
            webrtcbin,
            samples,
        }
    }

    /// Creates the offer and waits for ICE gathering; returns the SDP.
    fn offer(&self) -> String {
        let promise = gst::Promise::new();
        self.webrtcbin
            .emit_by_name::<()>("create-offer", &[&None::<gst::Structure>, &promise]);
        promise.wait();
        let offer = promise
            .get_reply()
            .and_then(|r| r.get::<gst_webrtc::WebRTCSessionDescription>("offer").ok())
            .expect("offer");
        hybridlive_webrtc::set_local_description(&self.webrtcbin, &offer, Duration::from_secs(5))
            .expect("local offer")
    }

    fn answer(&self, sdp: &str) -> Result<(), String> {
        let sdp = gst_sdp::SDPMessage::parse_buffer(sdp.as_bytes()).map_err(|e| e.to_string())?;
        let answer =
            gst_webrtc::WebRTCSessionDescription::new(gst_webrtc::WebRTCSDPType::Answer, sdp);
        let promise = gst::Promise::new();
        self.webrtcbin
            .emit_by_name::<()>("set-remote-description", &[&answer, &promise]);
        promise.wait();
        Ok(())
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// A server under test: something that turns an offer into an answer.
trait Server {
    fn name(&self) -> &'static str;
    fn clocking(&self) -> Clocking;
    fn answer(&self, offer: &str) -> Result<String, String>;
}

struct Hybridlive {
    pipeline: gst::Pipeline,
    output: WhepOutput,
}

impl Hybridlive {
    fn start() -> Self {
        let pipeline = gst::parse::launch(&format!(
            "videotestsrc is-live=true pattern=ball ! \
             video/x-raw,format=I420,width={WIDTH},height={HEIGHT},framerate=30/1 ! \
             latencystamp ! x264enc tune=zerolatency speed-preset=ultrafast bitrate={BITRATE_KBPS} \
             key-int-max=60 ! video/x-h264,profile=constrained-baseline ! \
             latencystamp mode=sei stream-id=bench ! tee name=t allow-not-linked=true"
        ))
        .expect("sender pipeline")
        .downcast::<gst::Pipeline>()
        .expect("a pipeline");
        let tee = pipeline.by_name("t").expect("tee");
        pipeline
            .set_state(gst::State::Playing)
            .expect("sender plays");
        let output = WhepOutput::new(
            &pipeline,
            &tee,
            None,
            WhepConfig {
                loopback_ice: true,
                max_sessions: 1000,
                ..Default::default()
            },
        );
        Hybridlive { pipeline, output }
    }
}

impl Server for Hybridlive {
    fn name(&self) -> &'static str {
        "hybridlive WHEP (one encode)"
    }
    fn clocking(&self) -> Clocking {
        Clocking::Stamp
    }
    fn answer(&self, offer: &str) -> Result<String, String> {
        self.output
            .offer(offer)
            .map(|a| a.sdp)
            .map_err(|e| e.to_string())
    }
}

impl Drop for Hybridlive {
    fn drop(&mut self) {
        self.output.close_all();
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

struct WhepServerSink {
    pipeline: gst::Pipeline,
    port: u16,
}

impl WhepServerSink {
    fn start() -> Self {
        register_webrtc_elements().expect("gst-plugin-webrtc");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let pipeline = gst::parse::launch(&format!(
            "videotestsrc is-live=true pattern=ball ! \
             video/x-raw,format=I420,width={WIDTH},height={HEIGHT},framerate=30/1 ! \
             whepserversink name=s video-caps=video/x-h264 congestion-control=disabled \
             start-bitrate={} min-bitrate={} max-bitrate={}",
            BITRATE_KBPS * 1000,
            BITRATE_KBPS * 1000,
            BITRATE_KBPS * 1000
        ))
        .expect("whepserversink pipeline")
        .downcast::<gst::Pipeline>()
        .expect("a pipeline");
        let sink = pipeline.by_name("s").expect("whepserversink");
        sink.set_property("stun-server", None::<String>);
        let signaller = sink.property::<gst::glib::Object>("signaller");
        signaller.set_property("host-addr", format!("http://127.0.0.1:{port}"));
        signaller.connect("webrtcbin-ready", false, |values| {
            if let Ok(webrtcbin) = values[2].get::<gst::Element>() {
                let _ = add_local_address(&webrtcbin, "127.0.0.1");
            }
            None
        });
        // RTP timestamps = capture running time, so viewers can tell the latency.
        sink.connect("payloader-setup", false, |values| {
            if let Ok(pay) = values[3].get::<gst::Element>()
                && pay.has_property_with_type("timestamp-offset", u32::static_type())
            {
                pay.set_property("timestamp-offset", 0u32);
            }
            Some(false.to_value())
        });
        pipeline
            .set_state(gst::State::Playing)
            .expect("whepserversink plays");
        WhepServerSink { pipeline, port }
    }
}

impl Server for WhepServerSink {
    fn name(&self) -> &'static str {
        "whepserversink (encoder per viewer)"
    }
    fn clocking(&self) -> Clocking {
        Clocking::RtpRunningTime(self.pipeline.clone())
    }
    fn answer(&self, offer: &str) -> Result<String, String> {
        http_post_sdp(self.port, "/whep/endpoint", offer)
    }
}

impl Drop for WhepServerSink {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// POSTs an SDP offer and returns the body of a `201`.
fn http_post_sdp(port: u16, path: &str, sdp: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/sdp\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{sdp}",
        sdp.len()
    )
    .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP response")?;
    if !head.starts_with("HTTP/1.1 201") {
        return Err(head.lines().next().unwrap_or("").to_string());
    }
    Ok(body.to_string())
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is always valid.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(usage.ru_utime) + t(usage.ru_stime)
}

struct Step {
    viewers: usize,
    p50: f64,
    p95: f64,
    min_fps: f64,
    cpu: f64,
}

struct Outcome {
    name: &'static str,
    steps: Vec<Step>,
    joins_ms: Vec<f64>,
    served: usize,
}

fn ramp(server: &dyn Server, steps: &[usize], settle: Duration, window: Duration) -> Outcome {
    // The encoder and the source warm up before the first viewer.
    std::thread::sleep(Duration::from_secs(2));
    let mut viewers: Vec<Viewer> = Vec::new();
    let mut outcome = Outcome {
        name: server.name(),
        steps: Vec::new(),
        joins_ms: Vec::new(),
        served: 0,
    };
    for &target in steps {
        while viewers.len() < target {
            let viewer = Viewer::new(server.clocking());
            let offer = viewer.offer();
            let posted = utc_ns();
            match server.answer(&offer).and_then(|sdp| viewer.answer(&sdp)) {
                Ok(()) => {}
                Err(e) => {
                    eprintln!(
                        "{}: viewer {} refused: {e}",
                        server.name(),
                        viewers.len() + 1
                    );
                    return outcome;
                }
            }
            let samples = viewer.samples.clone();
            viewers.push(viewer);
            // Join time: wait for this viewer's first access unit (bounded).
            let deadline = Instant::now() + Duration::from_secs(5);
            while samples.first_frame_ns.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            let first = samples.first_frame_ns.load(Ordering::Relaxed);
            if first != 0 {
                outcome
                    .joins_ms
                    .push((first.saturating_sub(posted)) as f64 / 1e6);
            }
        }
        std::thread::sleep(settle);
        // The machine is shared: a step passes if one of up to WINDOWS windows passes, the
        // same rule for both servers.
        let mut best: Option<Step> = None;
        for _ in 0..WINDOWS {
            let step = measure_window(&viewers, window);
            eprintln!(
                "{}: {target} viewers: p50 {:.1} ms, p95 {:.1} ms, slowest viewer {:.1} fps, CPU {:.0} % of a core",
                server.name(),
                step.p50,
                step.p95,
                step.min_fps,
                step.cpu
            );
            let passed = step.passes();
            if best.as_ref().is_none_or(|b| step.p95 < b.p95) {
                best = Some(step);
            }
            if passed {
                break;
            }
        }
        let best = best.expect("at least one window");
        let passed = best.passes();
        outcome.steps.push(best);
        if !passed {
            break;
        }
        outcome.served = target;
    }
    outcome
}

/// Windows tried per step before it counts as failed.
const WINDOWS: usize = 3;

impl Step {
    fn passes(&self) -> bool {
        self.p95 <= P95_LIMIT_MS && self.min_fps >= MIN_FPS
    }
}

fn measure_window(viewers: &[Viewer], window: Duration) -> Step {
    for v in viewers {
        v.samples.latencies_ms.lock().unwrap().clear();
        v.samples.frames.store(0, Ordering::Relaxed);
    }
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    std::thread::sleep(window);
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = (cpu_seconds() - cpu0) / elapsed * 100.0;
    let mut all = Vec::new();
    let mut min_fps = f64::INFINITY;
    for v in viewers {
        all.extend(v.samples.latencies_ms.lock().unwrap().iter().copied());
        min_fps = min_fps.min(v.samples.frames.load(Ordering::Relaxed) as f64 / elapsed);
    }
    all.sort_by(f64::total_cmp);
    let (p50, p95) = if all.is_empty() {
        (f64::INFINITY, f64::INFINITY)
    } else {
        (quantile(&all, 0.5), quantile(&all, 0.95))
    };
    Step {
        viewers: viewers.len(),
        p50,
        p95,
        min_fps,
        cpu,
    }
}

fn main() {
    if !in_private_netns("viewers") {
        return;
    }
    gst::init().expect("GStreamer");
    gstlatency::plugin_register_static().expect("latency plugin");
    let steps: Vec<usize> = std::env::var("VIEWER_STEPS")
        .unwrap_or_else(|_| "1,2,4,8,16,24,32,40,48,64,96,128".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let settle = Duration::from_secs_f64(env_or("VIEWER_SETTLE_S", 3.0));
    let window = Duration::from_secs_f64(env_or("VIEWER_WINDOW_S", 5.0));
    println!(
        "viewers at {WIDTH}x{HEIGHT}@30, {BITRATE_KBPS} kbit/s, while capture → viewer p95 ≤ {P95_LIMIT_MS} ms \
         and every viewer ≥ {MIN_FPS} fps (steps {steps:?}, {} s settle, {} s window)",
        settle.as_secs_f64(),
        window.as_secs_f64()
    );

    let mut outcomes = Vec::new();
    {
        let baseline = WhepServerSink::start();
        outcomes.push(ramp(&baseline, &steps, settle, window));
    }
    {
        let ours = Hybridlive::start();
        outcomes.push(ramp(&ours, &steps, settle, window));
    }

    println!("\n| server | viewers | p50 ms | p95 ms | slowest viewer fps | CPU % of a core |");
    println!("|---|---:|---:|---:|---:|---:|");
    for o in &outcomes {
        for s in &o.steps {
            println!(
                "| {} | {} | {:.1} | {:.1} | {:.1} | {:.0} |",
                o.name, s.viewers, s.p50, s.p95, s.min_fps, s.cpu
            );
        }
    }
    println!("\n| server | viewers served | join p50 ms | join max ms |");
    println!("|---|---:|---:|---:|");
    for o in &outcomes {
        let mut joins = o.joins_ms.clone();
        joins.sort_by(f64::total_cmp);
        let (p50, max) = if joins.is_empty() {
            (f64::NAN, f64::NAN)
        } else {
            (quantile(&joins, 0.5), joins[joins.len() - 1])
        };
        println!("| {} | {} | {p50:.0} | {max:.0} |", o.name, o.served);
    }
    let (baseline, ours) = (&outcomes[0], &outcomes[1]);
    hybridlive_bench::record(&hybridlive_bench::Figure {
        benchmark: "WebRTC viewers at 1280x720@30 within p95 100 ms (webrtcbin viewers)",
        case: "hybridlive WHEP, one encode",
        value: ours.served as f64,
        unit: "viewers",
        baseline: Some((
            "whepserversink, an encoder per viewer",
            baseline.served as f64,
        )),
        better: hybridlive_bench::Better::Higher,
    });
    let join_p50 = |o: &Outcome| {
        let mut joins = o.joins_ms.clone();
        joins.sort_by(f64::total_cmp);
        (!joins.is_empty()).then(|| quantile(&joins, 0.5))
    };
    if let (Some(value), Some(base)) = (join_p50(ours), join_p50(baseline)) {
        hybridlive_bench::record(&hybridlive_bench::Figure {
            benchmark: "WebRTC viewers at 1280x720@30 within p95 100 ms (webrtcbin viewers)",
            case: "hybridlive WHEP: join, offer → first access unit, p50",
            value,
            unit: "ms",
            baseline: Some(("whepserversink", base)),
            better: hybridlive_bench::Better::Lower,
        });
    }
    let last = steps.last().copied().unwrap_or(0);
    println!(
        "\nratio: {} viewers served vs {} ({}){}",
        ours.served,
        baseline.served,
        if baseline.served > 0 {
            format!("{:.1}x", ours.served as f64 / baseline.served as f64)
        } else {
            "baseline served none".into()
        },
        if ours.served == last {
            format!(" — the ramp ended at {last} with hybridlive still within the limit")
        } else {
            String::new()
        }
    );
}
