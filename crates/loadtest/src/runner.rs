//! The runner under test, in a child process, and a minimal HTTP/1.1 client for its API.

use anyhow::{Context as _, bail};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Environment variable carrying the runner's arguments (a JSON list) to [`child_main`].
pub const ARGS_ENV: &str = "HYBRIDLIVE_RUNNER_ARGS";

/// Entry point of a runner child process started by [`Runner::start`]: runs `hybridlive run`
/// with the arguments in [`ARGS_ENV`] and exits with its status. Call it first thing in
/// `main` (or in an ignored test) when [`ARGS_ENV`] is set.
pub fn child_main() -> ! {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        run: hybridlive_runner::RunArgs,
    }
    let args: Vec<String> = std::env::var(ARGS_ENV)
        .ok()
        .and_then(|a| serde_json::from_str(&a).ok())
        .unwrap_or_default();
    let cli =
        <Cli as clap::Parser>::parse_from(std::iter::once("hybridlive-run".into()).chain(args));
    let code = match hybridlive_runner::run(&cli.run) {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("run failed: {err:#}");
            1
        }
    };
    std::process::exit(code)
}

/// A running `hybridlive run FILE --http 127.0.0.1:0 --json`.
pub struct Runner {
    child: Child,
    /// JSON event lines; behind a mutex so that viewer threads may share the runner.
    events: std::sync::Mutex<mpsc::Receiver<serde_json::Value>>,
    addr: String,
}

impl Runner {
    /// Starts the runner with `command` (a program that ends up in [`child_main`] when
    /// [`ARGS_ENV`] is set, or the `hybridlive` binary itself when `args_as_env` is false) in
    /// folder `dir`, and waits for its `ready` event.
    pub fn start(
        mut command: Command,
        args_as_env: bool,
        file: &Path,
        dir: &Path,
        ready_timeout: Duration,
    ) -> anyhow::Result<Runner> {
        let args = vec![
            "run".to_string(),
            file.to_string_lossy().into_owned(),
            "--http".into(),
            "127.0.0.1:0".into(),
            "--json".into(),
        ];
        if args_as_env {
            command.env(ARGS_ENV, serde_json::to_string(&args[1..])?);
        } else {
            command.args(&args);
        }
        let mut child = command
            .current_dir(dir)
            .env("HYBRIDLIVE_TOKEN", "loadtest")
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start the runner")?;
        let stdout = child.stdout.take().context("runner stdout")?;
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // A test harness may print `test ... ` before the first line.
                let json = line.find('{').map_or("", |i| &line[i..]);
                if let Ok(value) = serde_json::from_str::<serde_json::Value>(json)
                    && tx.send(value).is_err()
                {
                    break;
                }
            }
        });
        let mut runner = Runner {
            child,
            events: std::sync::Mutex::new(events),
            addr: String::new(),
        };
        let deadline = Instant::now() + ready_timeout;
        let ready = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match runner.events.lock().unwrap().recv_timeout(left) {
                Ok(event) if event["event"] == "ready" => break event,
                Ok(_) => {}
                Err(_) => bail!("the runner sent no `ready` event within {ready_timeout:?}"),
            }
        };
        runner.addr = ready["viewer"]
            .as_str()
            .context("`ready` without a viewer URL")?
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        Ok(runner)
    }

    /// Process id, for `/proc`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `host:port` of its HTTP server.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// One HTTP request to the runner.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> anyhow::Result<Response> {
        http(&self.addr, method, path, content_type, body)
    }

    /// A Prometheus series of `/metrics` (`name` or `name{labels}` exactly as printed).
    pub fn metric(&self, series: &str) -> anyhow::Result<Option<f64>> {
        let metrics = self.request("GET", "/metrics", None, b"")?.text();
        Ok(metric(&metrics, series))
    }

    /// Ends it with SIGTERM (recordings finalised) and waits up to `timeout`, then kills it.
    pub fn stop(mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        // SAFETY: plain kill(2) on our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// Whether it is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Prometheus series in exposition text.
pub fn metric(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// An HTTP response.
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// Body (de-chunked).
    pub body: Vec<u8>,
}

impl Response {
    /// Body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One request on its own connection (`Connection: close`).
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> anyhow::Result<Response> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("connect to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(content_type) = content_type {
        head.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("HTTP response without a header end")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .context("HTTP response without a status")?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"))
    {
        body = dechunk(&body);
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&data[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 || data.len() < eol + 2 + size {
            break;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[(eol + 4 + size).min(data.len())..];
    }
    out
}
