//! abr-eval: step response of bitrate controllers over a `netsim`-shaped RTP link.
//!
//! Every mode runs its own sender → RTP (rtpbin) → netsim → UDP loopback → receiver pipeline,
//! all at the same time, and all links follow the same bandwidth profile. Modes:
//!
//! * `fixed`: x264enc at a fixed bitrate (the baseline of "doing nothing");
//! * `gcc`: rtpgccbwe (gst-plugin-rtp) as rtpbin aux sender with transport-wide CC, its
//!   `estimated-bitrate` written straight into x264enc (what webrtcsink does);
//! * `abr`: abrcontroller following rtpbin's RTCP receiver reports and transport-wide CC
//!   feedback (the payloader writes the TWCC header extension, the receiver answers);
//! * `abr-rr`: abrcontroller following the receiver reports only (no TWCC);
//! * `abr-gcc`: abrcontroller following the receiver reports and rtpgccbwe's estimate.
//!
//! Per profile step it reports: time until the send rate is under capacity after a drop,
//! time until 80 % of capacity is received after a rise, steady-state utilisation (mean received
//! rate over the second half of the step / capacity), packet loss at the bottleneck, frozen
//! intervals at the receiver (> 200 ms without a decoded frame) and glass-to-glass latency p95
//! (latencystamp → SEI → latencymeter, sampled every 100 ms). It writes `report.md`,
//! `samples.csv` and `step-response.svg` (capacity, encoder target and received rate over time).
//!
//! ```text
//! cargo run -p gst-plugin-abr --example abr-eval -- \
//!     --profile 4000:20,1000:20,3000:20 --out target/abr-eval
//! ```
//!
//! netsim polices: what exceeds the token bucket is dropped, nothing queues. Congestion shows
//! as loss, not as delay; a kernel queue (tc tbf) would add delay.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use gst::prelude::*;
use gst_rtp::prelude::*;
use hybridlive_encoders::Encoder;

const TWCC_URI: &str = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01";
const SAMPLE: Duration = Duration::from_millis(100);
const FREEZE: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Mode {
    Fixed,
    Gcc,
    Abr,
    AbrRr,
    AbrGcc,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Fixed => "fixed",
            Mode::Gcc => "gcc",
            Mode::Abr => "abr",
            Mode::AbrRr => "abr-rr",
            Mode::AbrGcc => "abr-gcc",
        }
    }

    fn parse(text: &str) -> Result<Mode> {
        Ok(match text {
            "fixed" => Mode::Fixed,
            "gcc" => Mode::Gcc,
            "abr" => Mode::Abr,
            "abr-rr" => Mode::AbrRr,
            "abr-gcc" => Mode::AbrGcc,
            other => bail!("unknown mode '{other}' (fixed, gcc, abr, abr-rr, abr-gcc)"),
        })
    }

    fn uses_gcc(self) -> bool {
        matches!(self, Mode::Gcc | Mode::AbrGcc)
    }

    /// Whether the RTP link carries transport-wide CC (header extension and feedback).
    fn uses_twcc(self) -> bool {
        matches!(self, Mode::Gcc | Mode::Abr | Mode::AbrGcc)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// RTP through netsim inside the pipeline.
    Netsim,
    /// SRT across a veth pair into a network namespace, shaped by `tc tbf` (needs root).
    SrtTbf,
}

struct Args {
    link: Link,
    /// Child process mode: SRT listener on this port, reporting to stdout.
    receiver: Option<u16>,
    repeat: usize,
    profile: Vec<(u32, Duration)>,
    modes: Vec<Mode>,
    fixed_kbps: u32,
    delay_ms: u32,
    rtcp_interval_ms: u64,
    out: PathBuf,
    /// Resolution ladder for abrcontroller (SRT link): the source is the top rung's size and
    /// a capsfilter before the encoder follows the controller's rung.
    ladder: Option<gstabr::ladder::Ladder>,
    /// Third octet of the first veth pair's addresses: two harnesses (e.g. this build and
    /// the previous one) can run side by side.
    link_base: u8,
}

/// The default ladder cut to a 1280x720 source: the rungs a runner's abrcontroller uses on a
/// 720p source without a `ladder` key.
const DEFAULT_LADDER_720P: &str = "1280x720@30:1500-4000;960x540@30:800-2200;640x360@30:0-1200";

fn parse_args() -> Result<Args> {
    let mut args = Args {
        link: Link::Netsim,
        receiver: None,
        repeat: 1,
        profile: parse_profile("4000:20,1000:20,3000:20")?,
        modes: vec![Mode::Fixed, Mode::Gcc, Mode::Abr, Mode::AbrRr, Mode::AbrGcc],
        fixed_kbps: 2500,
        delay_ms: 20,
        rtcp_interval_ms: 250,
        out: PathBuf::from("target/abr-eval"),
        ladder: None,
        link_base: 200,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--profile" => args.profile = parse_profile(&value()?)?,
            "--modes" => {
                args.modes = value()?
                    .split(',')
                    .map(Mode::parse)
                    .collect::<Result<_>>()?
            }
            "--fixed-kbps" => args.fixed_kbps = value()?.parse().context("--fixed-kbps")?,
            "--delay-ms" => args.delay_ms = value()?.parse().context("--delay-ms")?,
            "--rtcp-interval-ms" => {
                args.rtcp_interval_ms = value()?.parse().context("--rtcp-interval-ms")?
            }
            "--out" => args.out = PathBuf::from(value()?),
            "--link" => {
                args.link = match value()?.as_str() {
                    "netsim" => Link::Netsim,
                    "srt-tbf" => Link::SrtTbf,
                    other => bail!("unknown link '{other}' (netsim, srt-tbf)"),
                }
            }
            "--receiver" => args.receiver = Some(value()?.parse().context("--receiver")?),
            "--repeat" => args.repeat = value()?.parse().context("--repeat")?,
            "--ladder" => {
                let text = value()?;
                let text = if text == "default" {
                    DEFAULT_LADDER_720P.to_string()
                } else {
                    text
                };
                args.ladder = Some(
                    gstabr::ladder::Ladder::parse(&text)
                        .map_err(|e| anyhow::anyhow!("--ladder '{text}': {e}"))?,
                );
            }
            "--link-base" => args.link_base = value()?.parse().context("--link-base")?,
            "--help" | "-h" => {
                println!(
                    "abr-eval [--link netsim|srt-tbf] [--profile KBPS:SECS,...] \
                     [--modes fixed,gcc,abr,abr-rr,abr-gcc] [--fixed-kbps N] [--delay-ms N] \
                     [--rtcp-interval-ms N] [--repeat N] [--out DIR] \
                     [--ladder default|LADDER (srt-tbf)] [--link-base N (srt-tbf)]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument '{other}' (see --help)"),
        }
    }
    if args.link == Link::SrtTbf
        && let Some(m) = args
            .modes
            .iter()
            .find(|m| m.uses_gcc() || **m == Mode::AbrRr)
    {
        bail!("mode {} needs RTP: not available over SRT", m.name());
    }
    if args.ladder.is_some() && args.link != Link::SrtTbf {
        bail!("--ladder is implemented for --link srt-tbf only");
    }
    if let Some(ladder) = &args.ladder
        && ladder
            .rungs()
            .iter()
            .any(|r| r.framerate.is_some_and(|f| f != (30, 1)))
    {
        bail!("--ladder: the source runs at 30 fps, every rung must keep @30");
    }
    if args.link_base > 250 {
        bail!("--link-base must leave room for the links (at most 250)");
    }
    Ok(args)
}

fn parse_profile(text: &str) -> Result<Vec<(u32, Duration)>> {
    text.split(',')
        .map(|step| {
            let (kbps, secs) = step
                .split_once(':')
                .with_context(|| format!("profile step '{step}' is not KBPS:SECONDS"))?;
            let kbps: u32 = kbps
                .trim()
                .parse()
                .with_context(|| format!("rate in '{step}'"))?;
            let secs: f64 = secs
                .trim()
                .parse()
                .with_context(|| format!("duration in '{step}'"))?;
            if kbps == 0 || secs <= 0.0 {
                bail!("profile step '{step}' needs a positive rate and duration");
            }
            Ok((kbps, Duration::from_secs_f64(secs)))
        })
        .collect()
}

/// Counters updated from pad probes.
#[derive(Default)]
struct Counters {
    bytes_in: AtomicU64,
    packets_in: AtomicU64,
    bytes_out: AtomicU64,
    packets_out: AtomicU64,
    frames: Mutex<Vec<Duration>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    t: f64,
    capacity_kbps: f64,
    target_kbps: f64,
    sent_kbps: f64,
    recv_kbps: f64,
    packets_in: u64,
    packets_out: u64,
    latency_ms: Option<f64>,
}

/// Where the bottleneck is and how the receiver is observed.
enum Bottleneck {
    Netsim {
        net: gst::Element,
        meter: gst::Element,
    },
    SrtTbf {
        device: String,
        srtsink: gst::Element,
        receiver: std::process::Child,
        latency_ms: Arc<Mutex<Option<f64>>>,
    },
}

struct Run {
    mode: Mode,
    pipeline: gst::Pipeline,
    encoder: Encoder,
    bottleneck: Bottleneck,
    counters: Arc<Counters>,
    samples: Vec<Sample>,
    last: (u64, u64, u64, u64),
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
        // A receiver left running would outlive its namespace's name.
        if let Bottleneck::SrtTbf { receiver, .. } = &mut self.bottleneck {
            let _ = receiver.kill();
            let _ = receiver.wait();
        }
    }
}

fn free_udp_port() -> Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Counts buffers through netsim's pads. Only buffers: netsim has no chain_list, so a list
/// pushed to it is split and each buffer passes the probe (counting lists too would count
/// every packet twice).
fn count_probe(pad: &gst::Pad, bytes: &'static str, counters: Arc<Counters>) {
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        let (n, size) = match &info.data {
            Some(gst::PadProbeData::Buffer(b)) => (1, b.size() as u64),
            _ => (0, 0),
        };
        let (b, p) = if bytes == "in" {
            (&counters.bytes_in, &counters.packets_in)
        } else {
            (&counters.bytes_out, &counters.packets_out)
        };
        b.fetch_add(size, Ordering::Relaxed);
        p.fetch_add(n, Ordering::Relaxed);
        gst::PadProbeReturn::Ok
    });
}

fn build(mode: Mode, args: &Args, start: Instant) -> Result<Run> {
    let (rtp, rtcp_to_receiver, rtcp_to_sender) =
        (free_udp_port()?, free_udp_port()?, free_udp_port()?);
    let start_kbps = args.fixed_kbps;
    let abr = match mode {
        Mode::Abr | Mode::AbrRr => {
            "! abrcontroller name=abr rtpbin-name=sendbin min-bitrate=150000 max-bitrate=6000000"
        }
        Mode::AbrGcc => {
            "! abrcontroller name=abr rtpbin-name=sendbin estimator-name=gcc min-bitrate=150000 max-bitrate=6000000"
        }
        _ => "",
    };
    let d = args.delay_ms;
    let description = format!(
        "videotestsrc is-live=true pattern=zone-plate kx2=20 ky2=20 kt=1 ! video/x-raw,width=640,height=360,framerate=30/1 \
         ! x264enc name=enc tune=zerolatency speed-preset=ultrafast bitrate={start_kbps} key-int-max=60 \
         ! latencystamp mode=sei stream-id={name} {abr} \
         ! rtph264pay name=pay mtu=1200 config-interval=-1 \
         rtpbin name=sendbin \
         sendbin.send_rtp_src_0 ! netsim name=net delay-probability=1 min-delay={d} max-delay={d} \
           ! udpsink host=127.0.0.1 port={rtp} sync=false async=false \
         sendbin.send_rtcp_src_0 ! udpsink host=127.0.0.1 port={rtcp_to_receiver} sync=false async=false \
         udpsrc address=127.0.0.1 port={rtcp_to_sender} ! sendbin.recv_rtcp_sink_0 \
         rtpbin name=recvbin latency=200 \
         udpsrc name=rtpsrc address=127.0.0.1 port={rtp} ! recvbin.recv_rtp_sink_0 \
         udpsrc address=127.0.0.1 port={rtcp_to_receiver} ! recvbin.recv_rtcp_sink_0 \
         recvbin.send_rtcp_src_0 ! udpsink host=127.0.0.1 port={rtcp_to_sender} sync=false async=false \
         recvbin. ! rtph264depay ! h264parse ! latencymeter name=meter window=1000000000 \
           ! avdec_h264 name=dec ! fakesink sync=false",
        name = mode.name(),
    );
    let pipeline = gst::parse::launch(&description)
        .with_context(|| format!("{}: pipeline", mode.name()))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| anyhow::anyhow!("not a pipeline"))?;
    let by_name = |name: &str| {
        pipeline
            .by_name(name)
            .with_context(|| format!("{}: no element {name}", mode.name()))
    };
    let enc = by_name("enc")?;
    let encoder = Encoder::new(&enc)?;
    let pay = by_name("pay")?;
    let sendbin = by_name("sendbin")?;
    let recvbin = by_name("recvbin")?;

    let mut rtp_caps = gst::Caps::builder("application/x-rtp")
        .field("media", "video")
        .field("encoding-name", "H264")
        .field("clock-rate", 90000i32)
        .field("payload", 96i32);
    if mode.uses_twcc() {
        let ext = gst_rtp::RTPHeaderExtension::create_from_uri(TWCC_URI)
            .context("rtphdrext-twcc is missing (gst-plugins-good rtpmanager)")?;
        ext.set_id(1);
        pay.emit_by_name::<()>("add-extension", &[&ext]);
        rtp_caps = rtp_caps.field("extmap-1", TWCC_URI);
    }
    if mode.uses_gcc() {
        let gcc = gst::ElementFactory::make("rtpgccbwe")
            .name("gcc")
            .property("estimated-bitrate", start_kbps * 1000)
            .property("min-bitrate", 150_000u32)
            .property("max-bitrate", 6_000_000u32)
            .build()
            .context("rtpgccbwe")?;
        if mode == Mode::Gcc {
            let encoder = encoder.clone();
            gcc.connect_notify(Some("estimated-bitrate"), move |gcc, _| {
                encoder.set_bitrate_bps(gcc.property::<u32>("estimated-bitrate") as u64);
            });
        }
        let gcc = Mutex::new(Some(gcc));
        sendbin.connect("request-aux-sender", false, move |values| {
            let session = values[1].get::<u32>().unwrap_or(0);
            let gcc = gcc.lock().unwrap().take()?;
            let bin = gst::Bin::new();
            bin.add(&gcc).ok()?;
            let sink = gst::GhostPad::with_target(&gcc.static_pad("sink")?).ok()?;
            sink.set_property("name", format!("sink_{session}"));
            let src = gst::GhostPad::with_target(&gcc.static_pad("src")?).ok()?;
            src.set_property("name", format!("src_{session}"));
            bin.add_pad(&sink).ok()?;
            bin.add_pad(&src).ok()?;
            Some(bin.upcast::<gst::Element>().to_value())
        });
    }
    by_name("rtpsrc")?.set_property("caps", rtp_caps.build());
    pay.link_pads(Some("src"), &sendbin, Some("send_rtp_sink_0"))
        .with_context(|| format!("{}: payloader to rtpbin", mode.name()))?;
    for bin in [&sendbin, &recvbin] {
        let session = bin
            .emit_by_name::<Option<gst::glib::Object>>("get-internal-session", &[&0u32])
            .context("rtpbin session 0")?;
        session.set_property("rtcp-min-interval", args.rtcp_interval_ms * 1_000_000);
    }

    let counters = Arc::new(Counters::default());
    let net = by_name("net")?;
    count_probe(&net.static_pad("sink").unwrap(), "in", counters.clone());
    count_probe(&net.static_pad("src").unwrap(), "out", counters.clone());
    let frames = counters.clone();
    by_name("dec")?
        .static_pad("src")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            frames.frames.lock().unwrap().push(start.elapsed());
            gst::PadProbeReturn::Ok
        });
    let meter = by_name("meter")?;
    Ok(Run {
        mode,
        pipeline,
        encoder,
        bottleneck: Bottleneck::Netsim { net, meter },
        counters,
        samples: Vec::new(),
        last: (0, 0, 0, 0),
    })
}

fn set_capacity(run: &Run, kbps: u32) -> Result<()> {
    match &run.bottleneck {
        Bottleneck::Netsim { net, .. } => {
            // A quarter second of burst: a key frame larger than that loses packets.
            net.set_property("max-bucket-size", (kbps / 4).max(20) as i32);
            net.set_property("max-kbps", kbps as i32);
        }
        Bottleneck::SrtTbf { device, .. } => {
            // A 200 ms queue in front of the link, tail drop beyond.
            command(&[
                "tc",
                "qdisc",
                "replace",
                "dev",
                device,
                "root",
                "tbf",
                "rate",
                &format!("{kbps}kbit"),
                "burst",
                "32kbit",
                "latency",
                "200ms",
            ])?;
        }
    }
    Ok(())
}

fn command(argv: &[&str]) -> Result<()> {
    let status = std::process::Command::new(argv[0])
        .args(&argv[1..])
        .status()
        .with_context(|| format!("cannot run {}", argv.join(" ")))?;
    if !status.success() {
        bail!("'{}' failed ({status})", argv.join(" "));
    }
    Ok(())
}

/// A network namespace holding the receiving ends of one veth pair per mode; deleted (with
/// the pairs) on drop.
struct Namespace {
    name: String,
    devices: Mutex<Vec<String>>,
}

impl Namespace {
    fn create() -> Result<Namespace> {
        let name = format!("abreval{}", std::process::id());
        command(&["ip", "netns", "add", &name])
            .context("creating a network namespace (srt-tbf needs root)")?;
        let ns = Namespace {
            name,
            devices: Mutex::new(Vec::new()),
        };
        command(&[
            "ip", "netns", "exec", &ns.name, "ip", "link", "set", "lo", "up",
        ])?;
        Ok(ns)
    }

    /// Adds veth pair `index`; returns the sending device and the receiver's address.
    fn add_link(&self, index: usize, base: u8) -> Result<(String, String)> {
        let id = std::process::id() % 10_000;
        let (a, b) = (format!("abr{id}x{index}a"), format!("abr{id}x{index}b"));
        let octet = base as usize + index;
        let (ip_a, ip_b) = (format!("10.213.{octet}.1"), format!("10.213.{octet}.2"));
        command(&["ip", "link", "add", &a, "type", "veth", "peer", "name", &b])?;
        self.devices.lock().unwrap().push(a.clone());
        command(&["ip", "link", "set", &b, "netns", &self.name])?;
        command(&["ip", "addr", "add", &format!("{ip_a}/30"), "dev", &a])?;
        command(&["ip", "link", "set", &a, "up"])?;
        let exec = ["ip", "netns", "exec", &self.name];
        command(
            &[
                &exec[..],
                &["ip", "addr", "add", &format!("{ip_b}/30"), "dev", &b],
            ]
            .concat(),
        )?;
        command(&[&exec[..], &["ip", "link", "set", &b, "up"]].concat())?;
        Ok((a, ip_b))
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // Deleting one end of a veth pair deletes both, now; deleting the namespace alone
        // would remove them only later, and the next round could not reuse the names.
        for device in self.devices.lock().unwrap().drain(..) {
            let _ = command(&["ip", "link", "del", &device]);
        }
        let _ = command(&["ip", "netns", "del", &self.name]);
    }
}

/// Child-process mode: an SRT listener that decodes and reports to stdout, one line each:
/// `F <unix ns>` per decoded frame, `B <unix ns> <bytes so far>` and `L <unix ns> <latency ms>`
/// every 100 ms.
fn run_receiver(port: u16) -> Result<()> {
    gst::init()?;
    gstlatency::plugin_register_static()?;
    let pipeline = gst::parse::launch(&format!(
        "srtsrc name=src uri=srt://:{port}?mode=listener latency=200 ! tsdemux ! h264parse \
         ! latencymeter name=meter window=1000000000 ! avdec_h264 name=dec ! fakesink sync=false"
    ))?
    .downcast::<gst::Pipeline>()
    .map_err(|_| anyhow::anyhow!("not a pipeline"))?;
    let unix_ns = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    };
    let bytes = Arc::new(AtomicU64::new(0));
    let counter = bytes.clone();
    let by_name = |n: &str| pipeline.by_name(n).with_context(|| format!("no {n}"));
    by_name("src")?
        .static_pad("src")
        .context("srtsrc pad")?
        .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(gst::PadProbeData::Buffer(b)) = &info.data {
                counter.fetch_add(b.size() as u64, Ordering::Relaxed);
            }
            gst::PadProbeReturn::Ok
        });
    by_name("dec")?
        .static_pad("src")
        .context("decoder pad")?
        .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            println!("F {}", unix_ns());
            gst::PadProbeReturn::Ok
        });
    let meter = by_name("meter")?;
    pipeline.set_state(gst::State::Playing)?;
    loop {
        std::thread::sleep(SAMPLE);
        let now = unix_ns();
        println!("B {now} {}", bytes.load(Ordering::Relaxed));
        if let Some(ms) = meter
            .property::<Option<gst::Structure>>("stats")
            .and_then(|s| s.get::<f64>("last-ms").ok())
        {
            println!("L {now} {ms}");
        }
    }
}

fn build_srt(
    mode: Mode,
    args: &Args,
    start: Instant,
    start_unix: Duration,
    ns: &Namespace,
    index: usize,
) -> Result<Run> {
    let (device, address) = ns.add_link(index, args.link_base)?;
    let port = 5000 + index as u16;
    let exe = std::env::current_exe()?;
    let mut receiver = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(&exe)
        .args(["--receiver", &port.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting the receiver in the namespace")?;
    let counters = Arc::new(Counters::default());
    let latency_ms = Arc::new(Mutex::new(None));
    let stdout = receiver.stdout.take().context("receiver stdout")?;
    {
        let counters = counters.clone();
        let latency_ms = latency_ms.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let since_start = |ns: u128| Duration::from_nanos(ns as u64).saturating_sub(start_unix);
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let parts: Vec<&str> = line.split_whitespace().collect();
                match parts.as_slice() {
                    ["F", t] => {
                        if let Ok(t) = t.parse::<u128>() {
                            counters.frames.lock().unwrap().push(since_start(t));
                        }
                    }
                    ["B", _, bytes] => {
                        if let Ok(b) = bytes.parse::<u64>() {
                            counters.bytes_out.store(b, Ordering::Relaxed);
                        }
                    }
                    ["L", _, ms] => *latency_ms.lock().unwrap() = ms.parse::<f64>().ok(),
                    _ => {}
                }
            }
        });
    }
    let mut abr = match mode {
        Mode::Abr => {
            "! abrcontroller name=abr srtsink-name=srt min-bitrate=150000 max-bitrate=6000000"
                .to_string()
        }
        _ => String::new(),
    };
    // With a ladder the source has the top rung's size, and the capsfilter the controller
    // sets scales it to the current rung (the fixed encoder stays at the top rung). No
    // videorate (rungs keep 30 fps, checked in parse_args): on a loaded machine it would pad
    // late frames with duplicates the encoder turns into nothing.
    let (width, height, scaler) = match &args.ladder {
        Some(ladder) => {
            let top = &ladder.rungs()[0];
            if mode == Mode::Abr {
                let _ = write!(abr, " capsfilter-name=rung ladder=\"{ladder}\"");
            }
            (
                top.width,
                top.height,
                format!(
                    "! videoscale ! capsfilter name=rung \
                     caps=video/x-raw,width={},height={},framerate=30/1",
                    top.width, top.height
                ),
            )
        }
        None => (640, 360, String::new()),
    };
    let description = format!(
        "videotestsrc is-live=true pattern=zone-plate kx2=20 ky2=20 kt=1 ! video/x-raw,width={width},height={height},framerate=30/1 {scaler} \
         ! x264enc name=enc tune=zerolatency speed-preset=ultrafast bitrate={kbps} key-int-max=60 \
         ! latencystamp mode=sei stream-id={name} {abr} ! mpegtsmux alignment=7 \
         ! srtsink name=srt uri=srt://{address}:{port}?mode=caller latency=200",
        kbps = args.fixed_kbps,
        name = mode.name(),
    );
    let pipeline = gst::parse::launch(&description)?
        .downcast::<gst::Pipeline>()
        .map_err(|_| anyhow::anyhow!("not a pipeline"))?;
    let enc = pipeline.by_name("enc").context("no encoder")?;
    let srtsink = pipeline.by_name("srt").context("no srtsink")?;
    // What the encoder produces: srtsink itself takes only what SRT's buffer accepts.
    count_probe(&enc.static_pad("src").unwrap(), "in", counters.clone());
    let _ = start;
    Ok(Run {
        mode,
        pipeline,
        encoder: Encoder::new(&enc)?,
        bottleneck: Bottleneck::SrtTbf {
            device,
            srtsink,
            receiver,
            latency_ms,
        },
        counters,
        samples: Vec::new(),
        last: (0, 0, 0, 0),
    })
}

fn sample(run: &mut Run, t: f64, capacity_kbps: u32) {
    let c = &run.counters;
    if let Bottleneck::SrtTbf { srtsink, .. } = &run.bottleneck
        && let Some(stats) = srtsink.property::<Option<gst::Structure>>("stats")
    {
        let number = |f: &str| {
            stats
                .get::<i64>(f)
                .ok()
                .or_else(|| stats.get::<i32>(f).ok().map(i64::from))
                .unwrap_or(0)
                .max(0) as u64
        };
        let (sent, lost) = (number("packets-sent"), number("packets-sent-lost"));
        c.packets_in.store(sent, Ordering::Relaxed);
        c.packets_out
            .store(sent.saturating_sub(lost), Ordering::Relaxed);
    }
    let now = (
        c.bytes_in.load(Ordering::Relaxed),
        c.packets_in.load(Ordering::Relaxed),
        c.bytes_out.load(Ordering::Relaxed),
        c.packets_out.load(Ordering::Relaxed),
    );
    let secs = SAMPLE.as_secs_f64();
    let latency_ms = match &run.bottleneck {
        Bottleneck::Netsim { meter, .. } => meter
            .property::<Option<gst::Structure>>("stats")
            .and_then(|s| s.get::<f64>("last-ms").ok()),
        Bottleneck::SrtTbf { latency_ms, .. } => *latency_ms.lock().unwrap(),
    };
    run.samples.push(Sample {
        t,
        capacity_kbps: capacity_kbps as f64,
        target_kbps: run.encoder.bitrate_bps() as f64 / 1000.0,
        sent_kbps: (now.0 - run.last.0) as f64 * 8.0 / 1000.0 / secs,
        recv_kbps: (now.2 - run.last.2) as f64 * 8.0 / 1000.0 / secs,
        packets_in: now.1.saturating_sub(run.last.1),
        packets_out: now.3.saturating_sub(run.last.3),
        latency_ms,
    });
    run.last = now;
}

/// Figures of one mode over one profile step.
#[derive(Debug, Default, Clone)]
struct StepFigures {
    reaction_s: Option<f64>,
    t80_s: Option<f64>,
    utilization: f64,
    loss: f64,
    freezes: usize,
    longest_freeze_ms: f64,
    latency_p95_ms: Option<f64>,
}

/// Mean of the `n` samples from `i` on: the rate the link sees from that moment.
fn forward_average(values: &[f64], i: usize, n: usize) -> f64 {
    let window = &values[i..(i + n).min(values.len())];
    window.iter().sum::<f64>() / window.len() as f64
}

fn moving_average(values: &[f64], i: usize, n: usize) -> f64 {
    let lo = (i + 1).saturating_sub(n);
    let window = &values[lo..=i];
    window.iter().sum::<f64>() / window.len() as f64
}

fn figures(run: &Run, from: f64, to: f64, capacity: f64, previous: Option<f64>) -> StepFigures {
    let idx: Vec<usize> = (0..run.samples.len())
        .filter(|&i| run.samples[i].t > from && run.samples[i].t <= to)
        .collect();
    let mut f = StepFigures::default();
    if idx.is_empty() {
        return f;
    }
    let sent: Vec<f64> = run.samples.iter().map(|s| s.sent_kbps).collect();
    let recv: Vec<f64> = run.samples.iter().map(|s| s.recv_kbps).collect();
    // The first moment from which the next 500 ms average is under capacity (a single 100 ms
    // window is dominated by key frames). Samples cover the 100 ms before their time.
    let window_start = |i: usize| (run.samples[i].t - SAMPLE.as_secs_f64() - from).max(0.0);
    if previous.is_some_and(|p| capacity < p) {
        f.reaction_s = idx
            .iter()
            .find(|&&i| forward_average(&sent, i, 5) <= capacity)
            .map(|&i| window_start(i));
    }
    if previous.is_none_or(|p| capacity > p) {
        f.t80_s = idx
            .iter()
            .find(|&&i| forward_average(&recv, i, 5) >= 0.8 * capacity)
            .map(|&i| window_start(i));
    }
    let half = from + (to - from) / 2.0;
    let steady: Vec<f64> = idx
        .iter()
        .filter(|&&i| run.samples[i].t > half)
        .map(|&i| recv[i])
        .collect();
    if !steady.is_empty() {
        f.utilization = steady.iter().sum::<f64>() / steady.len() as f64 / capacity;
    }
    let (inn, out): (u64, u64) = idx.iter().fold((0, 0), |(a, b), &i| {
        (
            a + run.samples[i].packets_in,
            b + run.samples[i].packets_out,
        )
    });
    if inn > 0 {
        f.loss = inn.saturating_sub(out) as f64 / inn as f64;
    }
    let frames = run.counters.frames.lock().unwrap();
    let mut previous_frame = Duration::from_secs_f64(from);
    let mut gaps = Vec::new();
    for &t in frames
        .iter()
        .filter(|t| t.as_secs_f64() > from && t.as_secs_f64() <= to)
    {
        gaps.push(t.saturating_sub(previous_frame));
        previous_frame = t;
    }
    gaps.push(Duration::from_secs_f64(to).saturating_sub(previous_frame));
    f.freezes = gaps.iter().filter(|g| **g > FREEZE).count();
    f.longest_freeze_ms = gaps
        .iter()
        .filter(|g| **g > FREEZE)
        .map(|g| g.as_secs_f64() * 1000.0)
        .fold(0.0, f64::max);
    let mut latencies: Vec<f64> = idx
        .iter()
        .filter_map(|&i| run.samples[i].latency_ms)
        .collect();
    if !latencies.is_empty() {
        latencies.sort_by(f64::total_cmp);
        let k = ((latencies.len() as f64 * 0.95).ceil() as usize).clamp(1, latencies.len());
        f.latency_p95_ms = Some(latencies[k - 1]);
    }
    f
}

fn fmt_opt(v: Option<f64>, unit: &str) -> String {
    v.map_or("never".into(), |v| format!("{v:.1} {unit}"))
}

/// A plotted line: colour, value of a sample, moving-average length.
type Series = (&'static str, fn(&Sample) -> f64, usize);

fn svg(runs: &[Run], total: f64) -> String {
    let (w, ph, left, top) = (960.0, 220.0, 60.0, 30.0);
    let ymax = runs
        .iter()
        .flat_map(|r| r.samples.iter())
        .map(|s| s.capacity_kbps)
        .fold(1000.0, f64::max)
        * 1.3;
    let h = top + runs.len() as f64 * (ph + 40.0);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r##"<text x="{left}" y="18">capacity (black), encoder target (blue), received (green), kbit/s over s</text>"##
    );
    let pw = w - left - 20.0;
    for (k, run) in runs.iter().enumerate() {
        let y0 = top + k as f64 * (ph + 40.0) + 15.0;
        let x = |t: f64| left + t / total * pw;
        let y = |v: f64| y0 + ph - (v.min(ymax) / ymax) * ph;
        let _ = writeln!(
            out,
            r##"<text x="{left}" y="{}" font-weight="bold">{}</text><rect x="{left}" y="{y0}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>"##,
            y0 - 3.0,
            run.mode.name()
        );
        let step = if ymax > 4000.0 { 1000.0 } else { 500.0 };
        let mut v = 0.0;
        while v <= ymax {
            let _ = writeln!(
                out,
                r##"<line x1="{left}" x2="{}" y1="{}" y2="{}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end">{v}</text>"##,
                left + pw,
                y(v),
                y(v),
                left - 4.0,
                y(v) + 4.0
            );
            v += step;
        }
        let mut t = 0.0;
        while t <= total {
            let _ = writeln!(
                out,
                r##"<text x="{}" y="{}" text-anchor="middle">{t}</text>"##,
                x(t),
                y0 + ph + 14.0
            );
            t += 10.0;
        }
        let series: [Series; 3] = [
            ("#000", |s| s.capacity_kbps, 1),
            ("#1f5fd0", |s| s.target_kbps, 1),
            ("#2a9d3a", |s| s.recv_kbps, 5),
        ];
        for (color, value, smooth) in series {
            let values: Vec<f64> = run.samples.iter().map(value).collect();
            let points: Vec<String> = run
                .samples
                .iter()
                .enumerate()
                .map(|(i, s)| format!("{:.1},{:.1}", x(s.t), y(moving_average(&values, i, smooth))))
                .collect();
            let _ = writeln!(
                out,
                r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
                points.join(" ")
            );
        }
    }
    out.push_str("</svg>\n");
    out
}

/// One run of every mode over the whole profile. Returns the runs (stopped) and the step
/// boundaries in seconds.
fn experiment(args: &Args) -> Result<(Vec<Run>, Vec<f64>)> {
    let start = Instant::now();
    let start_unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let namespace = match args.link {
        Link::SrtTbf => Some(Namespace::create()?),
        Link::Netsim => None,
    };
    let mut runs = args
        .modes
        .iter()
        .enumerate()
        .map(|(i, &m)| match &namespace {
            Some(ns) => build_srt(m, args, start, start_unix, ns, i),
            None => build(m, args, start),
        })
        .collect::<Result<Vec<_>>>()?;
    if namespace.is_some() {
        // Let the listeners come up before the callers dial.
        std::thread::sleep(Duration::from_secs(1));
    }
    for run in &runs {
        set_capacity(run, args.profile[0].0)?;
        run.pipeline
            .set_state(gst::State::Playing)
            .with_context(|| format!("{}: cannot start", run.mode.name()))?;
    }
    let boundaries: Vec<f64> = args
        .profile
        .iter()
        .scan(0.0, |acc, (_, d)| {
            *acc += d.as_secs_f64();
            Some(*acc)
        })
        .collect();
    let total = *boundaries.last().unwrap_or(&0.0);
    eprintln!(
        "abr-eval: {} modes, profile {:?}, {total:.0} s",
        runs.len(),
        args.profile
            .iter()
            .map(|(k, d)| format!("{k} kbit/s for {:.0} s", d.as_secs_f64()))
            .collect::<Vec<_>>()
    );

    let mut step = 0;
    let mut next = start + SAMPLE;
    loop {
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        next += SAMPLE;
        let t = start.elapsed().as_secs_f64();
        if t > total {
            break;
        }
        let current = boundaries.iter().position(|&b| t <= b).unwrap_or(0);
        if current != step {
            step = current;
            for run in &runs {
                set_capacity(run, args.profile[step].0)?;
            }
            eprintln!("t={t:.1}s capacity {} kbit/s", args.profile[step].0);
        }
        for run in &mut runs {
            sample(run, t, args.profile[step].0);
            let bus = run.pipeline.bus().unwrap();
            while let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error]) {
                if let gst::MessageView::Error(e) = msg.view() {
                    bail!("{}: {} ({:?})", run.mode.name(), e.error(), e.debug());
                }
            }
        }
    }
    for run in &mut runs {
        let _ = run.pipeline.set_state(gst::State::Null);
        if let Bottleneck::SrtTbf { receiver, .. } = &mut run.bottleneck {
            let _ = receiver.kill();
            let _ = receiver.wait();
        }
    }
    drop(namespace);
    Ok((runs, boundaries))
}

type Figures = HashMap<(usize, Mode), StepFigures>;

fn step_figures(runs: &[Run], args: &Args, boundaries: &[f64]) -> Figures {
    let mut all = Figures::new();
    let mut from = 0.0;
    for (i, &(kbps, _)) in args.profile.iter().enumerate() {
        let to = boundaries[i];
        let previous = (i > 0).then(|| args.profile[i - 1].0 as f64);
        for run in runs {
            all.insert((i, run.mode), figures(run, from, to, kbps as f64, previous));
        }
        from = to;
    }
    all
}

/// Median of the values, "never" (None) counting as the largest.
fn median_opt(mut values: Vec<Option<f64>>) -> Option<f64> {
    values.sort_by(|a, b| match (a, b) {
        (Some(a), Some(b)) => a.total_cmp(b),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    });
    values.get((values.len().max(1) - 1) / 2).copied().flatten()
}

fn median(values: Vec<f64>) -> f64 {
    median_opt(values.into_iter().map(Some).collect()).unwrap_or(0.0)
}

/// The table; with several rounds every figure is the median over the rounds.
fn render_table(args: &Args, rounds: &[Figures]) -> String {
    let mut table = String::new();
    let _ = writeln!(
        table,
        "| step | capacity | mode | under capacity after drop | 80 % reached after rise | utilization | loss | freezes > 200 ms (longest) | latency p95 |"
    );
    let _ = writeln!(table, "|---|---|---|---|---|---|---|---|---|");
    for (i, &(kbps, _)) in args.profile.iter().enumerate() {
        let previous = (i > 0).then(|| args.profile[i - 1].0 as f64);
        for &mode in &args.modes {
            let all: Vec<&StepFigures> = rounds.iter().filter_map(|r| r.get(&(i, mode))).collect();
            let pick = |f: fn(&StepFigures) -> f64| median(all.iter().map(|s| f(s)).collect());
            let pick_opt =
                |f: fn(&StepFigures) -> Option<f64>| median_opt(all.iter().map(|s| f(s)).collect());
            let _ = writeln!(
                table,
                "| {} | {kbps} kbit/s | {} | {} | {} | {:.0} % | {:.1} % | {:.0} ({:.0} ms) | {} |",
                i + 1,
                mode.name(),
                if previous.is_some_and(|p| (kbps as f64) < p) {
                    fmt_opt(pick_opt(|s| s.reaction_s), "s")
                } else {
                    "–".into()
                },
                if previous.is_none_or(|p| (kbps as f64) > p) {
                    fmt_opt(pick_opt(|s| s.t80_s), "s")
                } else {
                    "–".into()
                },
                pick(|s| s.utilization) * 100.0,
                pick(|s| s.loss) * 100.0,
                pick(|s| s.freezes as f64),
                pick(|s| s.longest_freeze_ms),
                fmt_opt(pick_opt(|s| s.latency_p95_ms), "ms"),
            );
        }
    }
    table
}

/// The reaction to each drop and the time to 80 % after each rise, round by round: on a
/// shared machine the spread says as much as the median.
fn render_rounds(args: &Args, rounds: &[Figures]) -> String {
    let mut table = String::from(
        "| round | step | mode | under capacity after drop | 80 % reached after rise | longest freeze |\n|---|---|---|---|---|---|\n",
    );
    for (n, round) in rounds.iter().enumerate() {
        for i in 1..args.profile.len() {
            for &mode in &args.modes {
                let Some(f) = round.get(&(i, mode)) else {
                    continue;
                };
                let rise = args.profile[i].0 > args.profile[i - 1].0;
                let _ = writeln!(
                    table,
                    "| {} | {} | {} | {} | {} | {:.0} ms |",
                    n + 1,
                    i + 1,
                    mode.name(),
                    if rise {
                        "–".into()
                    } else {
                        fmt_opt(f.reaction_s, "s")
                    },
                    if rise {
                        fmt_opt(f.t80_s, "s")
                    } else {
                        "–".into()
                    },
                    f.longest_freeze_ms,
                );
            }
        }
    }
    table
}

fn main() -> Result<()> {
    let args = parse_args()?;
    if let Some(port) = args.receiver {
        return run_receiver(port);
    }
    gst::init()?;
    gstabr::plugin_register_static()?;
    gstrsrtp::plugin_register_static()?;
    gstlatency::plugin_register_static()?;

    let mut rounds = Vec::new();
    let mut last = None;
    for round in 1..=args.repeat {
        if args.repeat > 1 {
            eprintln!("round {round} of {}", args.repeat);
        }
        let (runs, boundaries) = experiment(&args)?;
        rounds.push(step_figures(&runs, &args, &boundaries));
        last = Some((runs, boundaries));
    }
    let (runs, boundaries) = last.context("--repeat must be at least 1")?;
    let total = *boundaries.last().unwrap_or(&0.0);
    let table = render_table(&args, &rounds);
    println!("{table}");
    let per_round = render_rounds(&args, &rounds);
    println!("{per_round}");

    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let mut csv = String::from(
        "mode,t,capacity_kbps,target_kbps,sent_kbps,received_kbps,packets_in,packets_out,latency_ms\n",
    );
    for run in &runs {
        for s in &run.samples {
            let _ = writeln!(
                csv,
                "{},{:.2},{},{:.0},{:.0},{:.0},{},{},{}",
                run.mode.name(),
                s.t,
                s.capacity_kbps,
                s.target_kbps,
                s.sent_kbps,
                s.recv_kbps,
                s.packets_in,
                s.packets_out,
                s.latency_ms.map_or(String::new(), |l| format!("{l:.1}"))
            );
        }
    }
    let write = |name: &str, text: &str| -> Result<()> {
        let path = args.out.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    };
    write("samples.csv", &csv)?;
    // Every frozen interval of the last round: where freezes come from, next to samples.csv.
    let mut freezes = String::from("mode,start_s,duration_ms\n");
    for run in &runs {
        let frames = run.counters.frames.lock().unwrap();
        for pair in frames.windows(2) {
            let gap = pair[1].saturating_sub(pair[0]);
            if gap > FREEZE {
                let _ = writeln!(
                    freezes,
                    "{},{:.2},{:.0}",
                    run.mode.name(),
                    pair[0].as_secs_f64(),
                    gap.as_secs_f64() * 1000.0
                );
            }
        }
    }
    write("freezes.csv", &freezes)?;
    write("step-response.svg", &svg(&runs, total))?;
    write(
        "report.md",
        &format!(
            "# abr-eval\n\nLink: {}. Profile: {}; fixed bitrate {} kbit/s; {}; \
             moving zone plate at 30 fps (x264 meets its target within 5 % on an idle machine; a starved CPU makes fewer frames and fewer bits) with x264 ultrafast/zerolatency.\n\n{table}\n\nEvery round (the spread behind the medians):\n\n{per_round}\n![step response](step-response.svg)\n",
            match args.link {
                Link::Netsim => format!(
                    "RTP (rtpbin) through netsim (policer, burst = 250 ms of capacity), one-way delay {} ms, \
                     RTCP interval {} ms, receiver jitterbuffer 200 ms",
                    args.delay_ms, args.rtcp_interval_ms
                ),
                Link::SrtTbf => format!(
                    "MPEG-TS over SRT (latency 200 ms) across a veth pair into a network \
                     namespace, tc tbf (200 ms queue) on the sending side{}",
                    args.ladder.as_ref().map_or(String::new(), |l| format!(
                        "; abrcontroller with the ladder `{l}` (source at the top rung's size)"
                    ))
                ),
            },
            args.profile
                .iter()
                .map(|(k, d)| format!("{k} kbit/s × {:.0} s", d.as_secs_f64()))
                .collect::<Vec<_>>()
                .join(" → "),
            args.fixed_kbps,
            if args.repeat > 1 {
                format!(
                    "figures are medians of {} rounds, plot of the last",
                    args.repeat
                )
            } else {
                "one round".to_string()
            }
        ),
    )?;
    eprintln!(
        "wrote {}/report.md, samples.csv, freezes.csv, step-response.svg",
        args.out.display()
    );
    Ok(())
}
