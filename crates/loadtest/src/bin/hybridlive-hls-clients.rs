//! Concurrent Low-Latency HLS clients on one machine: the runner's origin against nginx serving
//! the same playlist and parts as static files, in one run.
//!
//! ```sh
//! cargo run -p hybridlive-loadtest --bin hybridlive-hls-clients -- [--clients 1000,2000,5000] [--seconds 20]
//! ```
//!
//! Starts `hybridlive run` with a 640x360 LL-HLS output (1 s segments, 200 ms parts). For each
//! client count, two rounds:
//!
//! - **origin**: every client holds a keep-alive connection to the runner and long-polls it as
//!   hls.js does: a blocking playlist reload for the hinted part, then a GET of that part. A
//!   part's delivery to a client is when its bytes arrived; its completion is when the first
//!   client's blocking reload announcing it returned (the server answers its waiters the moment
//!   the part is stored).
//! - **nginx**: one mirror client long-polls the runner and writes each new part and the
//!   playlist as files nginx serves; the moment both are written every client is woken and
//!   GETs the playlist and the part from nginx (keep-alive). Delivery is measured from that
//!   moment: what serving static files costs, the floor.
//!
//! Clients connect from 16 loopback addresses (`127.0.0.2`...), as viewers behind a few NATs.
//! Reported per round: p50/p99 completion → delivery, errors (non-200 answers, broken
//! connections), and the serving process's CPU (the runner's minus its CPU with no client, all
//! nginx processes'). Each client is a thread of this process, on the same two cores: the
//! figures include the load generator, for both servers alike.

use anyhow::Context as _;
use clap::Parser;
use hybridlive_bench::{Better, Figure, record};
use hybridlive_loadtest::runner::{ARGS_ENV, Runner, child_main};
use hybridlive_testkit::http::{connect_from, raise_descriptor_limit};
use hybridlive_testkit::runner_child::RunnerCommand;
use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Cli {
    /// Client counts, one pair of rounds each.
    #[arg(long, value_delimiter = ',', default_value = "1000,2000,5000")]
    clients: Vec<usize>,
    /// Seconds measured per round, after the clients joined.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Seconds between the clients joining and the measurement.
    #[arg(long, default_value_t = 4)]
    warmup: u64,
}

const PIPELINE: &str = r#"
[sources.cam]
type = "test"
pattern = "ball"
width = 640
height = 360

[encoders.video]
type = "h264"
inputs = ["cam"]
preset = "balanced"
bitrate = 600
keyframe_interval = 1

[outputs.hls]
type = "hls"
inputs = ["video"]
segment_duration = 1
playlist_length = 6
low_latency = true
part_duration_ms = 200
"#;

/// Loopback addresses the clients connect from.
const SOURCES: usize = 16;
/// How long a client waits for one answer before it counts an error and reconnects.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A keep-alive HTTP/1.1 connection reading `Content-Length` bodies.
struct Connection {
    stream: TcpStream,
    host: String,
    source: IpAddr,
    pending: Vec<u8>,
}

impl Connection {
    fn open(source: IpAddr, addr: &str) -> std::io::Result<Connection> {
        let stream = connect_from(source, addr)?;
        stream.set_read_timeout(Some(READ_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            host: addr.to_string(),
            source,
            pending: Vec::new(),
        })
    }

    fn get(&mut self, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
        write!(
            self.stream,
            "GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n",
            self.host
        )?;
        let head_end = loop {
            if let Some(end) = self.pending.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            self.fill()?;
        };
        let head = String::from_utf8_lossy(&self.pending[..head_end]).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        self.pending.drain(..head_end + 4);
        while self.pending.len() < length {
            self.fill()?;
        }
        let body = self.pending.drain(..length).collect();
        Ok((status, body))
    }

    fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.pending.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    fn reopen(&mut self) -> std::io::Result<()> {
        *self = Connection::open(self.source, &self.host)?;
        Ok(())
    }
}

/// The preload hint's part and the last part listed in a playlist.
fn hint_and_last(playlist: &str) -> Option<((u64, u64), String)> {
    let uri = |line: &str| {
        line.split("URI=\"")
            .nth(1)?
            .split('"')
            .next()
            .map(str::to_string)
    };
    let hint = playlist
        .lines()
        .rfind(|l| l.starts_with("#EXT-X-PRELOAD-HINT:"))
        .and_then(uri)?;
    let last = playlist
        .lines()
        .rfind(|l| l.starts_with("#EXT-X-PART:"))
        .and_then(uri)?;
    let (m, p) = hint
        .strip_prefix("part")?
        .strip_suffix(".m4s")?
        .split_once('.')?;
    Some(((m.parse().ok()?, p.parse().ok()?), last))
}

/// What one client saw: (part, when its playlist announced it, when its bytes arrived).
type Deliveries = Vec<(String, Instant, Instant)>;

struct Round {
    stop: AtomicBool,
    errors: AtomicU64,
}

impl Round {
    fn new() -> Arc<Round> {
        Arc::new(Round {
            stop: AtomicBool::new(false),
            errors: AtomicU64::new(0),
        })
    }

    fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
}

fn source(i: usize) -> IpAddr {
    [127, 0, 0, 2 + (i % SOURCES) as u8].into()
}

fn spawn_clients<F>(count: usize, client: F) -> Vec<std::thread::JoinHandle<Deliveries>>
where
    F: Fn(usize) -> Deliveries + Send + Sync + 'static,
{
    let client = Arc::new(client);
    (0..count)
        .map(|i| {
            let client = client.clone();
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || client(i))
                .expect("a client thread")
        })
        .collect()
}

/// Long-polls the origin as hls.js does.
fn origin_client(i: usize, addr: &str, round: &Round) -> Deliveries {
    let mut seen = Vec::new();
    let Ok(mut conn) = Connection::open(source(i), addr) else {
        round.error();
        return seen;
    };
    let mut next: Option<(u64, u64)> = None;
    while !round.stop.load(Ordering::Relaxed) {
        let path = match next {
            Some((m, p)) => format!("/hls/live.m3u8?_HLS_msn={m}&_HLS_part={p}"),
            None => "/hls/live.m3u8".to_string(),
        };
        let answer = conn.get(&path).and_then(|(status, body)| {
            let announced = Instant::now();
            let (hint, last) = hint_and_last(&String::from_utf8_lossy(&body))
                .filter(|_| status == 200)
                .ok_or_else(|| std::io::Error::other(format!("playlist answered {status}")))?;
            let (status, _) = conn.get(&format!("/hls/{last}"))?;
            if status != 200 {
                return Err(std::io::Error::other(format!("part answered {status}")));
            }
            Ok((hint, last, announced, Instant::now()))
        });
        match answer {
            Ok((hint, last, announced, delivered)) => {
                if next.is_some() {
                    seen.push((last, announced, delivered));
                }
                next = Some(hint);
            }
            Err(_) => {
                round.error();
                next = None;
                if conn.reopen().is_err() {
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }
    seen
}

/// The newest part the mirror wrote, and when.
#[derive(Default)]
struct Published {
    count: u64,
    part: String,
    at: Option<Instant>,
}

/// Waits for each new part the mirror publishes, then GETs the playlist and the part.
fn nginx_client(
    i: usize,
    addr: &str,
    round: &Round,
    news: &(Mutex<Published>, Condvar),
) -> Deliveries {
    let mut seen = Vec::new();
    let Ok(mut conn) = Connection::open(source(i), addr) else {
        round.error();
        return seen;
    };
    let mut last_count = news.0.lock().unwrap().count;
    while !round.stop.load(Ordering::Relaxed) {
        let (part, at) = {
            let mut published = news.0.lock().unwrap();
            while published.count == last_count && !round.stop.load(Ordering::Relaxed) {
                published = news
                    .1
                    .wait_timeout(published, Duration::from_secs(1))
                    .unwrap()
                    .0;
            }
            last_count = published.count;
            (published.part.clone(), published.at)
        };
        let Some(at) = at else { continue };
        let fetched = conn.get("/live.m3u8").and_then(|(status, body)| {
            let listed = status == 200 && String::from_utf8_lossy(&body).contains(&part);
            let (status, _) = conn.get(&format!("/{part}"))?;
            (listed && status == 200)
                .then(Instant::now)
                .ok_or_else(|| std::io::Error::other("not served"))
        });
        match fetched {
            Ok(delivered) => seen.push((part, at, delivered)),
            Err(_) => {
                round.error();
                let _ = conn.reopen();
            }
        }
    }
    seen
}

/// Long-polls the origin and writes each new part and the playlist where nginx serves them.
fn mirror(addr: &str, dir: &Path, round: &Round, news: &(Mutex<Published>, Condvar)) {
    let Ok(mut conn) = Connection::open([127, 0, 0, 1].into(), addr) else {
        round.error();
        return;
    };
    let mut next: Option<(u64, u64)> = None;
    let write = |name: &str, data: &[u8]| -> std::io::Result<()> {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, data)?;
        std::fs::rename(&tmp, dir.join(name))
    };
    while !round.stop.load(Ordering::Relaxed) {
        let path = match next {
            Some((m, p)) => format!("/hls/live.m3u8?_HLS_msn={m}&_HLS_part={p}"),
            None => "/hls/live.m3u8".to_string(),
        };
        let done = conn.get(&path).and_then(|(_, body)| {
            let text = String::from_utf8_lossy(&body).into_owned();
            let (hint, last) =
                hint_and_last(&text).ok_or_else(|| std::io::Error::other("no hint"))?;
            let (_, part) = conn.get(&format!("/hls/{last}"))?;
            write(&last, &part)?;
            write("live.m3u8", text.as_bytes())?;
            Ok((hint, last))
        });
        match done {
            Ok((hint, last)) => {
                next = Some(hint);
                let mut published = news.0.lock().unwrap();
                published.count += 1;
                published.part = last;
                published.at = Some(Instant::now());
                drop(published);
                news.1.notify_all();
            }
            Err(_) => {
                next = None;
                let _ = conn.reopen();
            }
        }
    }
}

/// Figures of one round.
#[derive(Debug, Clone, Copy)]
struct Figures {
    clients: usize,
    p50_ms: f64,
    p99_ms: f64,
    deliveries: usize,
    errors: u64,
    cpu_percent: f64,
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Runs `clients` for warm-up + measurement; latencies of the parts announced in the window,
/// from `reference` (the part's completion) to each delivery.
fn measure(
    cli: &Cli,
    round: Arc<Round>,
    clients: Vec<std::thread::JoinHandle<Deliveries>>,
    count: usize,
    cpu: impl Fn() -> Option<f64>,
    from_first_announce: bool,
    wake: impl Fn(),
) -> Figures {
    std::thread::sleep(Duration::from_secs(cli.warmup));
    let start = Instant::now();
    let cpu_start = cpu();
    let errors_before = round.errors.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(cli.seconds));
    let end = Instant::now();
    let cpu_end = cpu();
    let errors = round.errors.load(Ordering::Relaxed) - errors_before;
    round.stop.store(true, Ordering::Relaxed);
    wake();
    let mut all: Vec<(String, Instant, Instant)> = Vec::new();
    for client in clients {
        all.extend(client.join().unwrap_or_default());
    }
    // A part's completion: its first announcement to any client (origin), or the moment the
    // mirror published it (nginx, where every client carries the same instant).
    let mut completion: HashMap<&str, Instant> = HashMap::new();
    for (part, announced, _) in &all {
        let at = completion.entry(part.as_str()).or_insert(*announced);
        if from_first_announce && announced < at {
            *at = *announced;
        }
    }
    let mut latencies: Vec<f64> = all
        .iter()
        .filter(|(part, _, _)| {
            let done = completion[part.as_str()];
            done >= start && done <= end
        })
        .map(|(part, _, delivered)| {
            delivered
                .saturating_duration_since(completion[part.as_str()])
                .as_secs_f64()
                * 1000.0
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let cpu_percent = match (cpu_start, cpu_end) {
        (Some(a), Some(b)) => (b - a) / end.duration_since(start).as_secs_f64() * 100.0,
        _ => f64::NAN,
    };
    Figures {
        clients: count,
        p50_ms: quantile(&latencies, 0.5),
        p99_ms: quantile(&latencies, 0.99),
        deliveries: latencies.len(),
        errors,
        cpu_percent,
    }
}

/// CPU seconds used so far by `pid` and its children (nginx's workers).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let ticks = |pid: &str| -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        Some(utime + stime)
    };
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut total = ticks(&pid.to_string())?;
    for child in children.split_whitespace() {
        total += ticks(child).unwrap_or(0.0);
    }
    Some(total / hz)
}

struct Nginx {
    child: std::process::Child,
    port: u16,
}

impl Nginx {
    fn start(root: &Path, scratch: &Path) -> anyhow::Result<Nginx> {
        let port = hybridlive_testkit::free_tcp_port();
        let conf = scratch.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "daemon off;\nworker_processes 2;\nworker_rlimit_nofile 65536;\n\
                 pid {scratch}/nginx.pid;\nerror_log {scratch}/nginx-error.log warn;\n\
                 events {{ worker_connections 16384; }}\n\
                 http {{\n  access_log off;\n  sendfile on;\n  tcp_nodelay on;\n\
                 keepalive_requests 1000000;\n  keepalive_timeout 60s;\n\
                 client_body_temp_path {scratch}/body;\n  proxy_temp_path {scratch}/proxy;\n\
                 fastcgi_temp_path {scratch}/fastcgi;\n  uwsgi_temp_path {scratch}/uwsgi;\n\
                 scgi_temp_path {scratch}/scgi;\n\
                 types {{ application/vnd.apple.mpegurl m3u8; video/iso.segment m4s; }}\n\
                 server {{ listen 127.0.0.1:{port} backlog=4096; root {root}; }}\n}}\n",
                scratch = scratch.display(),
                root = root.display(),
            ),
        )?;
        let child = std::process::Command::new("nginx")
            .args(["-e", &scratch.join("nginx-error.log").to_string_lossy()])
            .arg("-c")
            .arg(&conf)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("cannot start nginx (Debian package nginx)")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(Instant::now() < deadline, "nginx did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Nginx { child, port })
    }
}

impl Drop for Nginx {
    /// SIGTERM: the master stops its workers (SIGKILL would leave them running).
    fn drop(&mut self) {
        // SAFETY: kill has no memory preconditions; the pid is our child's.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn main() -> anyhow::Result<()> {
    if std::env::var_os(ARGS_ENV).is_some() {
        child_main();
    }
    let cli = Cli::parse();
    let limit = raise_descriptor_limit();
    let most = cli.clients.iter().copied().max().unwrap_or(0);
    anyhow::ensure!(
        limit as usize > most + 512,
        "{most} clients need more descriptors than the hard limit of {limit}"
    );
    let scratch: PathBuf =
        std::env::temp_dir().join(format!("hybridlive-hls-clients-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let result = run(&cli, &scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    let rounds = result?;
    report(&rounds);
    Ok(())
}

fn run(cli: &Cli, scratch: &Path) -> anyhow::Result<Vec<(Figures, Figures)>> {
    let file = scratch.join("llhls.toml");
    std::fs::write(&file, PIPELINE)?;
    let exe = std::env::current_exe()?;
    let command = RunnerCommand::args_in_env(&exe, &file, scratch).quiet();
    let runner = Runner::start(command, Duration::from_secs(90))?;
    let addr = runner.addr().to_string();
    let pid = runner.pid();
    // The runner with no client: its pipeline's own CPU, taken off the origin's figure.
    let deadline = Instant::now() + Duration::from_secs(30);
    while runner.request("GET", "/hls/live.m3u8", None, b"")?.status != 200 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the runner serves no LL-HLS playlist"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let idle_start = (Instant::now(), cpu_seconds(pid));
    std::thread::sleep(Duration::from_secs(5));
    let idle_cpu = match (idle_start.1, cpu_seconds(pid)) {
        (Some(a), Some(b)) => (b - a) / idle_start.0.elapsed().as_secs_f64(),
        _ => 0.0,
    };
    let root = scratch.join("www");
    std::fs::create_dir_all(&root)?;
    let nginx = Nginx::start(&root, scratch)?;
    let nginx_addr = format!("127.0.0.1:{}", nginx.port);
    let nginx_pid = nginx.child.id();

    let mut rounds = Vec::new();
    for &count in &cli.clients {
        eprintln!("{count} clients: origin");
        let round = Round::new();
        let clients = {
            let (round, addr) = (round.clone(), addr.clone());
            spawn_clients(count, move |i| origin_client(i, &addr, &round))
        };
        let origin = measure(cli, round, clients, count, || cpu_seconds(pid), true, || {});
        let origin = Figures {
            cpu_percent: origin.cpu_percent - idle_cpu * 100.0,
            ..origin
        };
        eprintln!("  {origin:?}");

        eprintln!("{count} clients: nginx (static files)");
        let round = Round::new();
        let news = Arc::new((Mutex::new(Published::default()), Condvar::new()));
        let mirror_thread = {
            let (round, addr, news, root) =
                (round.clone(), addr.clone(), news.clone(), root.clone());
            std::thread::spawn(move || mirror(&addr, &root, &round, &news))
        };
        let clients = {
            let (round, news, addr) = (round.clone(), news.clone(), nginx_addr.clone());
            spawn_clients(count, move |i| nginx_client(i, &addr, &round, &news))
        };
        let static_files = measure(
            cli,
            round,
            clients,
            count,
            || cpu_seconds(nginx_pid),
            false,
            || news.1.notify_all(),
        );
        let _ = mirror_thread.join();
        eprintln!("  {static_files:?}");
        rounds.push((origin, static_files));
    }
    drop(nginx);
    runner.stop(Duration::from_secs(10));
    Ok(rounds)
}

fn report(rounds: &[(Figures, Figures)]) {
    println!(
        "| clients | server | p50 ms | p99 ms | deliveries | errors | CPU % |\n|---|---|---|---|---|---|---|"
    );
    for (origin, static_files) in rounds {
        for (name, f) in [("runner (origin)", origin), ("nginx static", static_files)] {
            println!(
                "| {} | {name} | {:.1} | {:.1} | {} | {} | {:.0} |",
                f.clients, f.p50_ms, f.p99_ms, f.deliveries, f.errors, f.cpu_percent
            );
        }
        let case = |what: &str| {
            format!(
                "{} clients, part completion to delivery {what}",
                origin.clients
            )
        };
        for (what, value, baseline) in [
            ("p50", origin.p50_ms, static_files.p50_ms),
            ("p99", origin.p99_ms, static_files.p99_ms),
        ] {
            record(&Figure {
                benchmark: "LL-HLS clients",
                case: &case(what),
                value,
                unit: "ms",
                baseline: Some(("nginx static files", baseline)),
                better: Better::Lower,
            });
        }
        record(&Figure {
            benchmark: "LL-HLS clients",
            case: &format!("{} clients, errors", origin.clients),
            value: origin.errors as f64,
            unit: "errors",
            baseline: Some(("nginx static files", static_files.errors as f64)),
            better: Better::Lower,
        });
        record(&Figure {
            benchmark: "LL-HLS clients",
            case: &format!("{} clients, server CPU", origin.clients),
            value: origin.cpu_percent,
            unit: "% of a core",
            baseline: Some(("nginx static files", static_files.cpu_percent)),
            better: Better::Lower,
        });
    }
}
