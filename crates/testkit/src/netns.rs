//! Viewer "hosts" behind shaped links, for tests of what each viewer of a server receives.
//!
//! Inside the private network namespace of a test ([`in_private_netns`](crate::in_private_netns)
//! or [`in_private_namespaces`](crate::in_private_namespaces)), [`ViewerHost::new`] makes one
//! more network namespace, held open by a `sleep` started under `unshare --net`, joined to the
//! test's namespace by a veth pair on a /24 of its own:
//!
//! ```text
//!   test namespace (the server)                 viewer host i
//!   hlvI 10.214.I.1/24  ── tbf RATE ──▶  hlvIv 10.214.I.2/24
//!                       ◀── unshaped ──
//! ```
//!
//! The server side of the pair is shaped with `tc qdisc … root tbf`: the downlink to the viewer,
//! where a stream sent to it queues. The viewer's feedback (RTCP, acknowledgements) goes back
//! unshaped, as on an access link whose bottleneck is the download. A server listens on
//! [`ViewerHost::server_ip`] (or on `0.0.0.0`), and programs reach it from inside the host
//! through [`ViewerHost::command`] (a child process) or [`ViewerHost::run_inside`] (a thread).
//!
//! The viewers: [`BrowserViewer`] (headless Chromium playing the runner's WHEP endpoint through
//! `/assets/whep-player.js`, `tests/browser/shaped-viewer.mjs`) and [`GstViewer`] (the
//! `webrtcbin` viewer of [`crate::viewer`], in a child process: the test binary started again
//! with only the entry point of [`whep_viewer_child_entry!`](crate::whep_viewer_child_entry)
//! selected). Both report once a second.

use std::io::{BufRead as _, BufReader, Read as _};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd as _;
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::process::{ChildGuard, GroupGuard, sh};

/// Token bucket depth of every shaped link, at least: two full Ethernet frames (2 × 1514
/// bytes). A bucket of one frame would stall on every packet that arrives while a previous
/// one drains; a deep bucket (tc's examples use 10–32 kB) lets bursts through at line rate
/// and a 600 kbit/s link would carry a key frame's worth of packets at once, unlike a real one.
pub const MIN_BURST_BYTES: u32 = 2 * 1514;

/// The bucket also holds this much of the rate, for fast links (above about 6 Mbit/s) whose
/// packets come in faster than the kernel's timers tick.
pub const BURST_TIME: Duration = Duration::from_millis(4);

/// How long a packet may wait in the link's queue before tbf drops it: the buffer of a home
/// router or a mobile base station, where a stream above the link's rate first queues (the
/// delay a congestion controller sees growing) and then loses packets.
pub const QUEUE_LATENCY: Duration = Duration::from_millis(200);

/// The `tbf` parameters of a link of `kbit` kbit/s: `rate Rkbit burst B latency Lms`.
pub fn tbf_parameters(kbit: u32) -> String {
    let burst = (u64::from(kbit) * 1000 / 8 * BURST_TIME.as_millis() as u64 / 1000)
        .max(u64::from(MIN_BURST_BYTES));
    format!(
        "rate {kbit}kbit burst {burst} latency {}ms",
        QUEUE_LATENCY.as_millis()
    )
}

/// A network namespace of its own joined to the test's by a shaped veth pair: one viewer's
/// machine. Removed (with its link) when dropped.
pub struct ViewerHost {
    index: u8,
    /// The `sleep` holding the namespace open.
    holder: ChildGuard,
    kbit: Mutex<u32>,
}

impl ViewerHost {
    /// Viewer host `index` (0–250; one test's hosts need distinct indices): the link
    /// `hlvINDEX` (10.214.INDEX.1, in the caller's namespace) / `hlvINDEXv` (10.214.INDEX.2, in
    /// the new one), the downlink shaped to `kbit` kbit/s. Fails the test when the namespace
    /// or the link cannot be made (the caller must be root in a namespace of its own).
    pub fn new(index: u8, kbit: u32) -> ViewerHost {
        assert!(index <= 250, "viewer host index {index} out of 0-250");
        let holder = ChildGuard(
            Command::new("unshare")
                .args(["--net", "--", "sleep", "infinity"])
                .stdin(Stdio::null())
                .spawn()
                .expect("unshare runs (viewer hosts need root)"),
        );
        crate::wait_for_own_netns(holder.pid());
        let host = ViewerHost {
            index,
            holder,
            kbit: Mutex::new(kbit),
        };
        let (dev, peer, pid) = (host.device(), host.peer_device(), host.holder.pid());
        let (server, viewer) = (host.server_ip(), host.viewer_ip());
        sh(&format!(
            "ip link add {dev} type veth peer name {peer} netns {pid} && \
             ip addr add {server}/24 dev {dev} && ip link set {dev} up && \
             tc qdisc add dev {dev} root tbf {}",
            tbf_parameters(kbit)
        ));
        sh(&format!(
            "nsenter --net=/proc/{pid}/ns/net sh -c 'ip link set lo up && \
             ip addr add {viewer}/24 dev {peer} && ip link set {peer} up'"
        ));
        host
    }

    /// The server's address on this host's link (in the test's namespace).
    pub fn server_ip(&self) -> IpAddr {
        Ipv4Addr::new(10, 214, self.index, 1).into()
    }

    /// The viewer's address (in this host's namespace).
    pub fn viewer_ip(&self) -> IpAddr {
        Ipv4Addr::new(10, 214, self.index, 2).into()
    }

    /// The shaped device on the server's side.
    pub fn device(&self) -> String {
        format!("hlv{}", self.index)
    }

    fn peer_device(&self) -> String {
        format!("hlv{}v", self.index)
    }

    /// The downlink's rate now, in kbit/s.
    pub fn rate_kbit(&self) -> u32 {
        *self.kbit.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the downlink's rate (`tc qdisc change`) while streams run through it; what is
    /// queued stays queued.
    pub fn set_rate_kbit(&self, kbit: u32) {
        sh(&format!(
            "tc qdisc change dev {} root tbf {}",
            self.device(),
            tbf_parameters(kbit)
        ));
        *self.kbit.lock().unwrap_or_else(|e| e.into_inner()) = kbit;
    }

    /// What the link's shaper did so far (`tc -s qdisc show`): bytes and packets sent, packets
    /// dropped because the queue was full, its backlog now. For failure messages: tells a link
    /// that dropped from a sender that misjudged it.
    pub fn link_stats(&self) -> String {
        Command::new("tc")
            .args(["-s", "qdisc", "show", "dev", &self.device()])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_else(|e| format!("tc: {e}"))
    }

    /// `program` run inside this host's network namespace (`nsenter --net`; the mount
    /// namespace and the file system stay the test's): add arguments and spawn.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/proc/{}/ns/net", self.holder.pid()))
            .arg("--")
            .arg(program);
        command
    }

    /// Runs `f` on a thread of its own inside this host's network namespace and returns what
    /// it returns: the sockets it opens are the viewer's (and stay so when handed back).
    pub fn run_inside<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let netns = std::fs::File::open(format!("/proc/{}/ns/net", self.holder.pid()))
            .expect("the viewer host's network namespace");
        std::thread::scope(|scope| {
            let thread = scope.spawn(|| {
                // SAFETY: setns on a namespace file descriptor we own; it moves this thread
                // only (a network namespace may be entered by one thread of many).
                let moved = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(
                    moved,
                    0,
                    "setns into the viewer host: {}",
                    std::io::Error::last_os_error()
                );
                f()
            });
            thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Receives, inside the host, what a sender in the test's namespace pushes as fast as TCP
    /// lets it through the shaped link for `warmup` + `window`, and returns the rate the
    /// receiver saw over `window` (after `warmup`, which lets TCP leave slow start and fill the
    /// queue), in kbit/s of TCP payload.
    pub fn measure_download_kbit(&self, warmup: Duration, window: Duration) -> f64 {
        let listener = std::net::TcpListener::bind((self.server_ip(), 0)).expect("bind a sender");
        let target = listener.local_addr().expect("the sender's address");
        let sender = std::thread::spawn(move || {
            use std::io::Write as _;
            let Ok((mut stream, _)) = listener.accept() else {
                return;
            };
            let chunk = vec![0x5a_u8; 64 * 1024];
            // Until the receiver hangs up.
            while stream.write_all(&chunk).is_ok() {}
        });
        let source = self.viewer_ip();
        // The sender is left to end on its own: its write fails once the receiver hangs up.
        drop(sender);
        self.run_inside(move || {
            let mut stream = crate::http::connect_from(source, &target.to_string())
                .expect("connect through the shaped link");
            stream
                .set_read_timeout(Some(Duration::from_secs(20)))
                .expect("a read timeout");
            let mut buf = vec![0u8; 64 * 1024];
            let mut read_for = |span: Duration| {
                let (start, mut bytes) = (Instant::now(), 0u64);
                while start.elapsed() < span {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => panic!("the transfer through the shaped link stopped"),
                        Ok(n) => bytes += n as u64,
                    }
                }
                (bytes, start.elapsed())
            };
            read_for(warmup);
            let (bytes, elapsed) = read_for(window);
            bytes as f64 * 8.0 / 1000.0 / elapsed.as_secs_f64()
        })
    }
}

impl Drop for ViewerHost {
    fn drop(&mut self) {
        // The peer goes with the namespace when the holder dies; this end may outlive it
        // until then, and a later host with the same index would collide with it.
        let _ = Command::new("ip")
            .args(["link", "del", &self.device()])
            .stderr(Stdio::null())
            .status();
    }
}

/// Lines of JSON a viewer process prints, kept as they come.
#[derive(Clone, Default)]
struct Reports(Arc<Mutex<Vec<serde_json::Value>>>);

impl Reports {
    /// Reads JSON objects from `stdout` (a line may have a prefix before its `{`, as libtest
    /// prints one) on a thread, until it closes; other lines go to stderr with `tag`.
    fn read(&self, stdout: impl std::io::Read + Send + 'static, tag: String) {
        let reports = self.0.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let json = line.find('{').map_or("", |i| &line[i..]);
                match serde_json::from_str::<serde_json::Value>(json) {
                    Ok(value) if value.is_object() => reports
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(value),
                    _ => eprintln!("{tag}: {line}"),
                }
            }
        });
    }

    fn all(&self) -> Vec<serde_json::Value> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What a viewer reported in one second.
pub trait ViewerReports {
    /// Every report so far, oldest first.
    fn reports(&self) -> Vec<serde_json::Value>;

    /// The newest report.
    fn latest(&self) -> Option<serde_json::Value> {
        self.reports().pop()
    }

    /// Waits (up to `timeout`) for a report for which `accept` holds and returns it; fails the
    /// test with the reports so far when none comes.
    fn wait_report(
        &self,
        what: &str,
        timeout: Duration,
        mut accept: impl FnMut(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let mut seen = 0;
        crate::eventually_explained(
            timeout,
            || {
                let reports = self.reports();
                let found = reports[seen..].iter().find(|r| accept(r)).cloned();
                seen = reports.len();
                found
            },
            || {
                format!(
                    "timed out waiting for {what}; reports: {}",
                    serde_json::Value::from(self.reports())
                )
            },
        )
    }
}

/// Headless Chromium inside a viewer host playing a runner's WHEP endpoint with the runner's
/// own `/assets/whep-player.js` (`tests/browser/shaped-viewer.mjs`). Once a second it reports
/// its video `inbound-rtp` statistics: `frameWidth`, `frameHeight`, `framesDecoded`,
/// `framesDropped`, `freezeCount`, `totalFreezesDuration` (s), `bytesReceived`,
/// `keyFramesDecoded`, `packetsLost`, `pliCount`, `nackCount`; `connected`; `latencies` (the
/// glass-to-glass latency of each frame shown since the last report, in ms, from the capture
/// stamps); `sizes` (each change of the picture's size shown since the last report:
/// `{utcMs, width, height}`, the wall clock when the first frame of the new size was shown);
/// `t` (s since playing started); `errors` (page errors so far). Browser and driver are killed
/// when it drops.
pub struct BrowserViewer {
    process: GroupGuard,
    reports: Reports,
}

impl BrowserViewer {
    /// Plays `base` (`http://SERVER:PORT`, reachable from `host`) for at most `seconds`.
    pub fn start(host: &ViewerHost, base: &str, seconds: u32) -> BrowserViewer {
        let driver = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/browser/shaped-viewer.mjs");
        let mut command = host.command("node");
        command
            .arg(driver)
            .arg(base)
            .arg(seconds.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .process_group(0);
        let mut child = command
            .spawn()
            .expect("node runs (scripts/setup installs the browser test driver)");
        let reports = Reports::default();
        reports.read(
            child.stdout.take().expect("stdout is piped"),
            format!("chromium {}", host.viewer_ip()),
        );
        BrowserViewer {
            process: GroupGuard(child),
            reports,
        }
    }

    /// Whether the driver still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.process.0.try_wait(), Ok(None))
    }
}

impl ViewerReports for BrowserViewer {
    fn reports(&self) -> Vec<serde_json::Value> {
        self.reports.all()
    }
}

/// The environment variable that carries a [`GstViewer`] child's orders, a JSON object
/// `{"server": "10.214.0.1:PORT", "source": "10.214.0.2", "seconds": N}`.
pub const GST_VIEWER_VAR: &str = "HYBRIDLIVE_WHEP_VIEWER";

/// The name of the entry point [`whep_viewer_child_entry!`](crate::whep_viewer_child_entry)
/// defines.
pub const GST_VIEWER_ENTRY: &str = "whep_viewer_child_process";

/// The ignored test `whep_viewer_child_process`: the entry point of [`GstViewer`] children.
/// The calling crate's test binary must use it once.
#[macro_export]
macro_rules! whep_viewer_child_entry {
    () => {
        /// A webrtcbin WHEP viewer in a child process (in a viewer host's namespace): the
        /// other tests start this test binary again with only this test selected.
        #[test]
        #[ignore = "entry point of the WHEP viewer child process started by the other tests"]
        fn whep_viewer_child_process() {
            $crate::netns::whep_viewer_child_main();
        }
    };
}

/// The `webrtcbin` viewer of [`crate::viewer`], decoding and sending transport-wide congestion
/// control feedback as browsers do, in a child process inside a viewer host: POSTs its offer to `/whep` of the server, plays, and reports once a second: `t` (s),
/// `units` (video access units decoded so far), `width`, `height` (of the decoded picture),
/// `longest_gap_ms` (the longest time without a new picture in that second, at 50 ms
/// resolution), `freezes` (gaps of 500 ms or more so far, after the first picture), `errors`
/// (error messages on its bus so far, e.g. a decoder's), `ice` (state). Killed when it drops.
pub struct GstViewer {
    process: ChildGuard,
    reports: Reports,
}

impl GstViewer {
    /// Plays `server` (`SERVER_IP:PORT` on `host`'s link) for at most `seconds`.
    pub fn start(host: &ViewerHost, server: &str, seconds: u32) -> GstViewer {
        let orders = serde_json::json!({
            "server": server,
            "source": host.viewer_ip().to_string(),
            "seconds": seconds,
        });
        let mut command = host.command(std::env::current_exe().expect("the test binary"));
        command
            .args(["--ignored", "--exact", GST_VIEWER_ENTRY, "--nocapture"])
            .env(GST_VIEWER_VAR, orders.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let mut child = command.spawn().expect("start the WHEP viewer child");
        let reports = Reports::default();
        reports.read(
            child.stdout.take().expect("stdout is piped"),
            format!("webrtcbin {}", host.viewer_ip()),
        );
        GstViewer {
            process: ChildGuard(child),
            reports,
        }
    }

    /// Whether the child still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.process.0.try_wait(), Ok(None))
    }
}

impl ViewerReports for GstViewer {
    fn reports(&self) -> Vec<serde_json::Value> {
        self.reports.all()
    }
}

/// The body of [`whep_viewer_child_entry!`](crate::whep_viewer_child_entry): does nothing
/// without [`GST_VIEWER_VAR`], else plays as [`GstViewer`] says and exits the process (1 on a
/// failure, printed).
pub fn whep_viewer_child_main() {
    let Some(orders) = std::env::var_os(GST_VIEWER_VAR) else {
        return;
    };
    let code = match play_whep(&orders.to_string_lossy()) {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("WHEP viewer failed: {err:#}");
            1
        }
    };
    std::process::exit(code)
}

fn play_whep(orders: &str) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use gst::prelude::*;

    let orders: serde_json::Value = serde_json::from_str(orders).context("orders")?;
    let server = orders["server"].as_str().context("orders: server")?;
    let source: IpAddr = orders["source"]
        .as_str()
        .context("orders: source")?
        .parse()
        .context("orders: source address")?;
    let seconds = orders["seconds"].as_u64().context("orders: seconds")?;
    gst::init()?;
    let viewer = crate::viewer::Viewer::new(&crate::viewer::ViewerOptions {
        loopback: false,
        decode: true,
        meter_windows: Vec::new(),
        audio: true,
        twcc: true,
    })?;
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let bus = viewer.pipeline().bus().context("a pipeline bus")?;
    let counted = errors.clone();
    bus.set_sync_handler(move |_, message| {
        if let gst::MessageView::Error(err) = message.view() {
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            eprintln!("WHEP viewer error: {} ({:?})", err.error(), err.debug());
        }
        gst::BusSyncReply::Drop
    });
    let offer = viewer.offer(Duration::from_secs(10))?;
    let reply = crate::http::http_from(
        source,
        server,
        "POST",
        "/whep",
        &[("Content-Type", "application/sdp")],
        offer.as_bytes(),
    )?;
    anyhow::ensure!(
        reply.status == 201,
        "POST /whep: {} {}",
        reply.status,
        reply.text()
    );
    let resource = reply.header("location").map(str::to_string);
    viewer.accept(&reply.text())?;

    let start = Instant::now();
    let (mut units, mut last_picture) = (0, None::<Instant>);
    let (mut freezes, mut in_freeze, mut longest_gap) = (0u64, false, Duration::ZERO);
    let mut next_report = start + Duration::from_secs(1);
    while start.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(Duration::from_millis(50));
        let now = Instant::now();
        let decoded = viewer.video_units();
        if decoded > units {
            units = decoded;
            last_picture = Some(now);
            in_freeze = false;
        } else if let Some(last) = last_picture {
            let gap = now - last;
            longest_gap = longest_gap.max(gap);
            if gap >= Duration::from_millis(500) && !in_freeze {
                in_freeze = true;
                freezes += 1;
            }
        }
        if now >= next_report {
            next_report += Duration::from_secs(1);
            let (width, height) = decoded_size(viewer.pipeline()).unwrap_or((0, 0));
            let report = serde_json::json!({
                "t": start.elapsed().as_secs_f64(),
                "units": units,
                "width": width,
                "height": height,
                "longest_gap_ms": longest_gap.as_millis() as u64,
                "freezes": freezes,
                "errors": errors.load(std::sync::atomic::Ordering::Relaxed),
                "ice": format!("{:?}", viewer.ice_state()),
            });
            println!("{report}");
            longest_gap = Duration::ZERO;
        }
    }
    if let Some(resource) = resource {
        let _ = crate::http::http_from(source, server, "DELETE", &resource, &[], b"");
    }
    Ok(())
}

/// Width and height of the decoded video (the caps on the sink after the decoder).
fn decoded_size(pipeline: &gst::Pipeline) -> Option<(i32, i32)> {
    use gst::prelude::*;
    pipeline
        .iterate_sinks()
        .into_iter()
        .filter_map(Result::ok)
        .find_map(|sink| {
            let caps = sink.static_pad("sink")?.current_caps()?;
            let s = caps.structure(0)?;
            (s.name() == "video/x-raw")
                .then(|| Some((s.get::<i32>("width").ok()?, s.get::<i32>("height").ok()?)))?
        })
}

/// The `p`-quantile (0–1) of `values` (none: `None`).
pub fn quantile(values: &[f64], p: f64) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let i = ((sorted.len() - 1) as f64 * p.clamp(0.0, 1.0)).round() as usize;
    Some(sorted[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tbf_buckets_hold_two_frames_or_four_milliseconds() {
        assert_eq!(tbf_parameters(600), "rate 600kbit burst 3028 latency 200ms");
        assert_eq!(
            tbf_parameters(5000),
            "rate 5000kbit burst 3028 latency 200ms"
        );
        assert_eq!(
            tbf_parameters(20000),
            "rate 20000kbit burst 10000 latency 200ms"
        );
    }

    /// A shaped link carries its rate, also after `tc qdisc change` mid-transfer: TCP payload
    /// within ±25 % of the setting (headers cost about 5 %).
    #[test]
    fn shaped_links_carry_their_rate_and_follow_a_change() {
        if !crate::in_private_netns(
            "netns::tests::shaped_links_carry_their_rate_and_follow_a_change",
        ) {
            return;
        }
        let slow = ViewerHost::new(0, 600);
        let fast = ViewerHost::new(1, 5000);
        let (warmup, window) = (Duration::from_secs(1), Duration::from_secs(3));
        let mut measured = Vec::new();
        let mut check = |host: &ViewerHost| {
            let kbit = host.measure_download_kbit(warmup, window);
            let setting = f64::from(host.rate_kbit());
            eprintln!("{} at {setting} kbit/s: {kbit:.0} kbit/s", host.device());
            measured.push((host.device(), setting, kbit));
            assert!(
                (kbit / setting - 1.0).abs() <= 0.25,
                "{} shaped to {setting} kbit/s carried {kbit:.0} kbit/s",
                host.device()
            );
        };
        check(&slow);
        check(&fast);
        fast.set_rate_kbit(600);
        check(&fast);
        fast.set_rate_kbit(5000);
        check(&fast);
        // The other link is untouched by the changes.
        check(&slow);
    }

    #[test]
    fn quantiles_of_measurements() {
        assert_eq!(quantile(&[], 0.95), None);
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&values, 0.5), Some(51.0));
        assert_eq!(quantile(&values, 0.95), Some(95.0));
        assert_eq!(quantile(&values, 1.0), Some(100.0));
    }
}
