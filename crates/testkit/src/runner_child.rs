//! `hybridlive run` in a child process, for the runner's integration tests.
//!
//! The test binary starts itself again with only its child entry point selected (an ignored
//! test that parses `HYBRIDLIVE_RUNNER_ARGS` and calls `hybridlive_runner::run`), reads the
//! `--json` event lines the runner prints, and talks to its HTTP API. The child is killed
//! when the handle drops, so a failing test leaves no runner behind.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The environment variable carrying the child's arguments, a JSON list of strings.
pub const ARGS_VAR: &str = "HYBRIDLIVE_RUNNER_ARGS";

/// A runner in a child process.
pub struct RunnerChild {
    child: Child,
    events: mpsc::Receiver<serde_json::Value>,
    /// `http://127.0.0.1:PORT`, from the `ready` event.
    pub base: String,
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (`Null` when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }
}

impl RunnerChild {
    /// Starts `run FILE --http 127.0.0.1:0 --json EXTRA...` in `dir` through the test named
    /// `entry` of this binary, with `env` set, and waits (up to 30 s) for its `ready` event.
    pub fn start(
        entry: &str,
        file: &Path,
        dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> RunnerChild {
        Self::start_via(&[], entry, file, dir, extra, env)
    }

    /// Like [`RunnerChild::start`] without waiting for `ready`: for runs that fail to start.
    pub fn spawn(
        entry: &str,
        file: &Path,
        dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> RunnerChild {
        Self::spawn_via(&[], entry, file, dir, extra, env)
    }

    /// Like [`RunnerChild::start`], the runner started through `wrapper` (e.g. `["nohup"]`),
    /// which must `exec` it: the process id and the signals are then the runner's.
    pub fn start_via(
        wrapper: &[&str],
        entry: &str,
        file: &Path,
        dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> RunnerChild {
        let mut runner = Self::spawn_via(wrapper, entry, file, dir, extra, env);
        let ready = runner.wait_event("ready", Duration::from_secs(30));
        runner.base = ready["viewer"]
            .as_str()
            .expect("the ready event names the viewer URL")
            .trim_end_matches('/')
            .to_string();
        runner
    }

    fn spawn_via(
        wrapper: &[&str],
        entry: &str,
        file: &Path,
        dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> RunnerChild {
        let mut args = vec![
            file.to_string_lossy().into_owned(),
            "--http".into(),
            "127.0.0.1:0".into(),
            "--json".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let exe = std::env::current_exe().expect("the test binary");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(exe);
                command
            }
            None => Command::new(exe),
        };
        command
            .args([
                "--ignored",
                "--exact",
                entry,
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ARGS_VAR, serde_json::Value::from(args).to_string())
            .current_dir(dir)
            .stdout(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("start the runner");
        let stdout = child.stdout.take().expect("the runner's stdout");
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // libtest prints `test NAME ... ` before the first line.
                let json = line.find('{').map_or("", |i| &line[i..]);
                if let Ok(value) = serde_json::from_str::<serde_json::Value>(json)
                    && tx.send(value).is_err()
                {
                    break;
                }
            }
        });
        RunnerChild {
            child,
            events,
            base: String::new(),
        }
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the next event of kind `kind` (skipping others); fails the test after
    /// `timeout`, or at once on an `ingest-error`.
    pub fn wait_event(&mut self, kind: &str, timeout: Duration) -> serde_json::Value {
        self.wait_event_where(kind, timeout, |_| true)
    }

    /// Waits for the next event of kind `kind` for which `accept` holds.
    pub fn wait_event_where(
        &mut self,
        kind: &str,
        timeout: Duration,
        mut accept: impl FnMut(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        // What came meanwhile (status lines aside), to say what happened instead.
        let mut others = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(event) if event["event"] == kind && accept(&event) => return event,
                Ok(event) => {
                    assert_ne!(event["event"], "ingest-error", "the ingest failed: {event}");
                    if event["event"] != "status" {
                        others.push(event);
                    }
                }
                Err(_) => {
                    let status = match self.base.is_empty() {
                        true => serde_json::Value::Null,
                        false => self.status()["outputs"].clone(),
                    };
                    panic!(
                        "no `{kind}` event within {timeout:?}; other events: {others:?}; \
                         outputs now: {status}"
                    )
                }
            }
        }
    }

    /// Every event printed so far and not yet consumed by a wait.
    pub fn drain_events(&mut self) -> Vec<serde_json::Value> {
        self.events.try_iter().collect()
    }

    /// `127.0.0.1:PORT` of the HTTP server.
    pub fn addr(&self) -> String {
        self.base.trim_start_matches("http://").to_string()
    }

    /// One request on a connection of its own; see [`request`].
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Answer {
        request(&self.addr(), method, path, headers, body)
    }

    /// `GET /api/status` as JSON.
    pub fn status(&self) -> serde_json::Value {
        self.request("GET", "/api/status", &[], b"").json()
    }

    /// Sends `signal` (a name `kill` knows: `HUP`, `TERM`, `KILL`) to the child.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the child to exit; fails the test after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        crate::eventually(timeout, "the runner to exit", || {
            self.child.try_wait().expect("wait for the runner")
        })
    }
}

impl Drop for RunnerChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request to `addr` (`127.0.0.1:PORT`) on a connection of its own (`Connection: close`);
/// `headers` are added as given. Fails the test when nothing answers within 30 s.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    let mut stream = TcpStream::connect(addr).expect("connect to the runner");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("a read timeout");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("send the request");
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP answer to {method} {path}"));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in the answer to {method} {path}: {head}"));
    let chunked = head.lines().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked")
        })
    });
    let mut body = raw[split + 4..].to_vec();
    if chunked {
        body = dechunk(&body);
    }
    Answer { status, body }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = data.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&data[..end]).trim(), 16).unwrap_or(0);
        if size == 0 || data.len() < end + 4 + size {
            break;
        }
        out.extend_from_slice(&data[end + 2..end + 2 + size]);
        data = &data[end + 4 + size..];
    }
    out
}
