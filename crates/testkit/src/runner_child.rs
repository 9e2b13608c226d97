//! `hybridlive run` in a child process, for the integration tests.
//!
//! The runner is either the test binary started again with only its child entry point
//! selected (an ignored test, [`runner_child_entry!`](crate::runner_child_entry), that parses
//! [`ARGS_VAR`] and calls `hybridlive_runner::run`) or the `hybridlive` binary itself. The
//! handle reads the `--json` event lines the runner prints, keeps what it printed, and talks to
//! its HTTP API. The child is killed when the handle drops, so a failing test leaves no runner
//! behind.

use std::io::{BufRead as _, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use crate::http::HttpReply;

/// The environment variable carrying the child's arguments, a JSON list of strings.
pub const ARGS_VAR: &str = "HYBRIDLIVE_RUNNER_ARGS";

/// How long [`RunnerCommand::start`] waits for `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The ignored test `runner_child_process` that runs `hybridlive run` with the arguments in
/// [`ARGS_VAR`](crate::runner_child::ARGS_VAR) and exits with its status: the entry point
/// [`RunnerCommand::entry`] starts. The calling crate needs `clap` and `hybridlive_runner`.
#[macro_export]
macro_rules! runner_child_entry {
    () => {
        /// The runner in a child process: the other tests start this test binary again with
        /// only this test selected and the arguments in `HYBRIDLIVE_RUNNER_ARGS`.
        #[test]
        #[ignore = "entry point of the runner child process started by the other tests"]
        fn runner_child_process() {
            #[derive(clap::Parser)]
            struct ChildCli {
                #[command(flatten)]
                run: hybridlive_runner::RunArgs,
            }
            let cli = <ChildCli as clap::Parser>::parse_from($crate::runner_child::child_args());
            $crate::runner_child::exit_with(hybridlive_runner::run(&cli.run));
        }
    };
}

/// The name the entry point of [`runner_child_entry!`](crate::runner_child_entry) has.
pub const ENTRY: &str = "runner_child_process";

/// The API token (`HYBRIDLIVE_TOKEN`) of the runners [`test_runner`] starts.
pub const TEST_TOKEN: &str = "test-token-5f1c";

/// The runner of this test binary's entry point ([`ENTRY`]) on `file`, in `dir`, with the
/// API token [`TEST_TOKEN`].
pub fn test_runner(file: &Path, dir: &Path) -> RunnerCommand {
    RunnerCommand::entry(ENTRY, file, dir).env(&[("HYBRIDLIVE_TOKEN", TEST_TOKEN)])
}

/// The command line of a runner child: `hybridlive-run` and the arguments in [`ARGS_VAR`]
/// (none when it is unset or not a JSON list of strings).
pub fn child_args() -> Vec<String> {
    let args: Vec<String> = std::env::var(ARGS_VAR)
        .ok()
        .and_then(|a| serde_json::from_str(&a).ok())
        .unwrap_or_default();
    std::iter::once("hybridlive-run".to_string())
        .chain(args)
        .collect()
}

/// Ends a runner child: 0 after `Ok`, 1 after an error (printed as `run failed: …`).
pub fn exit_with<E: std::fmt::Debug + std::fmt::Display>(result: Result<(), E>) -> ! {
    let code = match result {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("run failed: {err:#}");
            1
        }
    };
    std::process::exit(code)
}

/// What runs the runner.
enum Program {
    /// A program that runs the runner with the arguments in [`ARGS_VAR`] when it is set,
    /// started with `args` (e.g. this test binary with only its entry point selected).
    ArgsInEnv { program: PathBuf, args: Vec<String> },
    /// A `hybridlive` binary (`PROGRAM run FILE …`).
    Binary(PathBuf),
}

/// Where the runner's stderr goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stderr {
    Inherit,
    Null,
    Keep,
}

/// How to start a runner child: `run FILE --http 127.0.0.1:0 --json EXTRA...` in a folder.
pub struct RunnerCommand {
    program: Program,
    wrapper: Vec<String>,
    file: PathBuf,
    dir: PathBuf,
    http: String,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    stderr: Stderr,
}

impl RunnerCommand {
    /// The runner run by this test binary's ignored test `entry` (see
    /// [`runner_child_entry!`](crate::runner_child_entry)) on `file`, in `dir`.
    pub fn entry(entry: &str, file: &Path, dir: &Path) -> RunnerCommand {
        let program = std::env::current_exe().expect("the test binary");
        let args = [
            "--ignored",
            "--exact",
            entry,
            "--nocapture",
            "--test-threads=1",
        ];
        let args = args.iter().map(|a| a.to_string()).collect();
        Self::new(Program::ArgsInEnv { program, args }, file, dir)
    }

    /// `program`, which runs the runner with the arguments in [`ARGS_VAR`] when that is set
    /// (it calls [`child_args`] and [`exit_with`] first thing in `main`), on `file`, in `dir`.
    pub fn args_in_env(program: &Path, file: &Path, dir: &Path) -> RunnerCommand {
        let program = program.to_path_buf();
        Self::new(
            Program::ArgsInEnv {
                program,
                args: Vec::new(),
            },
            file,
            dir,
        )
    }

    /// The `hybridlive` binary at `program` running `file`, in `dir`.
    pub fn binary(program: &Path, file: &Path, dir: &Path) -> RunnerCommand {
        Self::new(Program::Binary(program.to_path_buf()), file, dir)
    }

    fn new(program: Program, file: &Path, dir: &Path) -> RunnerCommand {
        RunnerCommand {
            program,
            wrapper: Vec::new(),
            file: file.to_path_buf(),
            dir: dir.to_path_buf(),
            http: "127.0.0.1:0".into(),
            extra: Vec::new(),
            env: Vec::new(),
            stderr: Stderr::Inherit,
        }
    }

    /// More arguments after `--json`.
    pub fn args(mut self, extra: &[&str]) -> RunnerCommand {
        self.extra.extend(extra.iter().map(|s| s.to_string()));
        self
    }

    /// Environment variables for the runner.
    pub fn env(mut self, vars: &[(&str, &str)]) -> RunnerCommand {
        self.env
            .extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self
    }

    /// Starts the runner through `wrapper` (e.g. `["nohup"]`, `["prlimit", "--nofile=64:64",
    /// "--"]`), which must `exec` it: the process id and the signals are then the runner's.
    pub fn via(mut self, wrapper: &[&str]) -> RunnerCommand {
        self.wrapper = wrapper.iter().map(|s| s.to_string()).collect();
        self
    }

    /// The address the HTTP server listens on, instead of `127.0.0.1:0`.
    pub fn http(mut self, addr: &str) -> RunnerCommand {
        self.http = addr.to_string();
        self
    }

    /// Keeps the runner's stderr in [`RunnerChild::output`] (stdout is always kept).
    pub fn keep_stderr(mut self) -> RunnerCommand {
        self.stderr = Stderr::Keep;
        self
    }

    /// Discards the runner's stderr.
    pub fn quiet(mut self) -> RunnerCommand {
        self.stderr = Stderr::Null;
        self
    }

    /// Starts the runner and waits (up to 30 s) for its `ready` event.
    pub fn start(self) -> RunnerChild {
        self.start_within(READY_TIMEOUT)
    }

    /// Starts the runner and waits up to `timeout` for its `ready` event.
    pub fn start_within(self, timeout: Duration) -> RunnerChild {
        let mut runner = self.spawn();
        runner.wait_ready(timeout);
        runner
    }

    /// [`RunnerCommand::start_within`], for a program rather than a test: `Err` saying why
    /// when the runner does not start or sends no `ready` event within `timeout`.
    pub fn try_start_within(self, timeout: Duration) -> Result<RunnerChild, String> {
        let mut runner = self
            .try_spawn()
            .map_err(|e| format!("cannot start the runner: {e}"))?;
        let deadline = Instant::now() + timeout;
        let ready = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match runner.next_event(left) {
                Some(event) if event["event"] == "ready" => break event,
                Some(_) => {}
                None => {
                    return Err(format!(
                        "the runner sent no `ready` event within {timeout:?}"
                    ));
                }
            }
        };
        runner.base = ready["viewer"]
            .as_str()
            .ok_or("`ready` without a viewer URL")?
            .trim_end_matches('/')
            .to_string();
        Ok(runner)
    }

    /// Starts the runner without waiting for `ready`: for runs that fail to start.
    pub fn spawn(self) -> RunnerChild {
        self.try_spawn().expect("start the runner")
    }

    fn try_spawn(self) -> std::io::Result<RunnerChild> {
        let mut args = vec![
            self.file.to_string_lossy().into_owned(),
            "--http".into(),
            self.http,
            "--json".into(),
        ];
        args.extend(self.extra);
        let program = match &self.program {
            Program::ArgsInEnv { program, .. } | Program::Binary(program) => program,
        };
        let mut command = match self.wrapper.split_first() {
            Some((wrapper, wrapper_args)) => {
                let mut command = Command::new(wrapper);
                command.args(wrapper_args).arg(program);
                command
            }
            None => Command::new(program),
        };
        match &self.program {
            Program::ArgsInEnv { args: own, .. } => {
                command
                    .args(own)
                    .env(ARGS_VAR, serde_json::Value::from(args).to_string());
            }
            Program::Binary(_) => {
                command.arg("run").args(args);
            }
        }
        command
            .current_dir(&self.dir)
            .stdout(Stdio::piped())
            .stderr(match self.stderr {
                Stderr::Inherit => Stdio::inherit(),
                // Quiet keeps the last lines, for a failure to show how the runner ended.
                Stderr::Null | Stderr::Keep => Stdio::piped(),
            })
            .envs(self.env);
        let mut child = command.spawn()?;
        let output = Arc::new(Mutex::new(String::new()));
        let history = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, events) = mpsc::channel();
        let (kept, all, when) = (output.clone(), history.clone(), seen.clone());
        let mut readers = vec![std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                keep_line(&kept, &line);
                // libtest prints `test NAME ... ` before the first line.
                let json = line.find('{').map_or("", |i| &line[i..]);
                if let Ok(value) = serde_json::from_str::<serde_json::Value>(json) {
                    if value["event"] != "status" {
                        lock(&all).push(value.clone());
                        lock(&when).push((Instant::now(), value.clone()));
                    }
                    // The test may have stopped listening; the output is still kept.
                    let _ = tx.send(value);
                }
            }
        })];
        let stderr_tail = Arc::new(Mutex::new(std::collections::VecDeque::new()));
        if let Some(stderr) = child.stderr.take() {
            let kept = (self.stderr == Stderr::Keep).then(|| output.clone());
            let tail = stderr_tail.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Some(kept) = &kept {
                        keep_line(kept, &line);
                    }
                    let mut tail = lock(&tail);
                    if tail.len() == STDERR_TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
            }));
        }
        Ok(RunnerChild {
            child,
            events: Mutex::new(events),
            skipped: Mutex::new(Vec::new()),
            history,
            seen,
            output,
            stderr_tail,
            readers,
            base: String::new(),
        })
    }
}

fn keep_line(output: &Mutex<String>, line: &str) {
    let mut output = lock(output);
    output.push_str(line);
    output.push('\n');
}

/// How many of the last lines of a runner's stderr are kept (see [`RunnerChild::post_mortem`]).
const STDERR_TAIL_LINES: usize = 40;

/// The lock even when a test thread panicked while holding it: what it guards is a log.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A runner in a child process.
pub struct RunnerChild {
    child: Child,
    events: Mutex<mpsc::Receiver<serde_json::Value>>,
    /// Events [`RunnerChild::wait_for`] passed over, for its next calls.
    skipped: Mutex<Vec<serde_json::Value>>,
    /// Every event so far, status lines aside.
    history: Arc<Mutex<Vec<serde_json::Value>>>,
    /// Every event of `history` with the moment this process read it (the monotonic clock:
    /// the wall clock of the events' `utc` may be stepped while a test runs).
    seen: Arc<Mutex<Vec<(Instant, serde_json::Value)>>>,
    /// The last lines the runner wrote to stderr (none when its stderr is the test's).
    stderr_tail: Arc<Mutex<std::collections::VecDeque<String>>>,
    /// Every line printed so far (stdout, and stderr when kept).
    output: Arc<Mutex<String>>,
    /// The threads reading stdout and stderr.
    readers: Vec<std::thread::JoinHandle<()>>,
    /// `http://127.0.0.1:PORT`, from the `ready` event.
    pub base: String,
}

impl RunnerChild {
    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `timeout` for the `ready` event and takes the server's address from it.
    /// What came before it (e.g. `recording-started` on a loaded machine) is kept for
    /// [`RunnerChild::wait_for`].
    pub fn wait_ready(&mut self, timeout: Duration) {
        let ready = self.wait_for_event("ready", timeout);
        self.base = ready["viewer"]
            .as_str()
            .expect("the ready event names the viewer URL")
            .trim_end_matches('/')
            .to_string();
    }

    /// Waits for the next event of kind `kind` (skipping others); fails the test after
    /// `timeout`, or at once on an `ingest-error`.
    pub fn wait_event(&self, kind: &str, timeout: Duration) -> serde_json::Value {
        self.wait_event_where(kind, timeout, |_| true)
    }

    /// Waits for the next event of kind `kind` for which `accept` holds.
    pub fn wait_event_where(
        &self,
        kind: &str,
        timeout: Duration,
        mut accept: impl FnMut(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        // What came meanwhile (status lines aside), to say what happened instead.
        let mut others = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left) {
                Some(event) if event["event"] == kind && accept(&event) => return event,
                Some(event) => {
                    assert_ne!(event["event"], "ingest-error", "the ingest failed: {event}");
                    if event["event"] != "status" {
                        others.push(event);
                    }
                }
                None => {
                    let ended = self.post_mortem();
                    assert!(
                        ended.starts_with("the runner is running"),
                        "no `{kind}` event; other events: {others:?}; {ended}"
                    );
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

    /// The next event printed, status lines included; `None` when none comes within
    /// `timeout`.
    pub fn next_event(&self, timeout: Duration) -> Option<serde_json::Value> {
        lock(&self.events).recv_timeout(timeout).ok()
    }

    /// The next event for which `matches` holds, waiting at most `timeout`. Unlike
    /// [`RunnerChild::wait_event`], the events passed over (e.g. `recording-started` before
    /// `ready` on a loaded machine) stay there for the next call.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        {
            let mut skipped = lock(&self.skipped);
            if let Some(i) = skipped.iter().position(&matches) {
                return skipped.remove(i);
            }
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left) {
                Some(event) if matches(&event) => return event,
                Some(event) => {
                    assert_ne!(event["event"], "ingest-error", "the ingest failed: {event}");
                    if event["event"] != "status" {
                        lock(&self.skipped).push(event);
                    }
                }
                None => panic!(
                    "no {what} within {timeout:?}; events so far: {:?}; {}",
                    lock(&self.history),
                    self.post_mortem()
                ),
            }
        }
    }

    /// [`RunnerChild::wait_for`] the next event of kind `kind`.
    pub fn wait_for_event(&self, kind: &str, timeout: Duration) -> serde_json::Value {
        self.wait_for(&format!("`{kind}` event"), timeout, |e| e["event"] == kind)
    }

    /// [`RunnerChild::wait_for`] (up to 30 s) event `kind` of output `output`.
    pub fn wait_for_output_event(&self, kind: &str, output: &str) -> serde_json::Value {
        self.wait_for(
            &format!("`{kind}` of output `{output}`"),
            Duration::from_secs(30),
            |e| e["event"] == kind && e["output"] == output,
        )
    }

    /// [`RunnerChild::wait_for`] the `source` event that puts `state` ("primary" /
    /// "fallback") on air.
    pub fn wait_for_source(&self, state: &str, timeout: Duration) {
        self.wait_for(&format!("source `{state}`"), timeout, |e| {
            e["event"] == "source" && e["state"] == state
        });
    }

    /// Drops the events of that kind [`RunnerChild::wait_for`] passed over, so that its next
    /// call sees only new ones (e.g. the slate reported at start-up, before the primary).
    pub fn forget(&self, kind: &str) {
        lock(&self.skipped).retain(|e| e["event"] != kind);
    }

    /// Every event so far (status lines excluded) of that kind.
    pub fn logged(&self, kind: &str) -> Vec<serde_json::Value> {
        lock(&self.history)
            .iter()
            .filter(|e| e["event"] == kind)
            .cloned()
            .collect()
    }

    /// Whether the runner still runs, or how it ended (exit code or signal) with the last
    /// lines of its stderr: what a test that stopped hearing from it reports. The child is
    /// not reaped.
    pub fn post_mortem(&self) -> String {
        // A runner whose stdout just closed is exiting: its exit becomes visible a moment
        // later. Only failing tests call this, so waiting a little for it costs nothing.
        let deadline = Instant::now() + Duration::from_secs(3);
        let (found, pid, code, status) = loop {
            // SAFETY: waitid writes only into `info`; WNOWAIT leaves the child to `wait_exit`.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            let found = unsafe {
                libc::waitid(
                    libc::P_PID,
                    self.child.id(),
                    &mut info,
                    libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
                )
            };
            // SAFETY: waitid filled `info` for an exited child (si_pid non-zero).
            let (pid, code, status) = unsafe { (info.si_pid(), info.si_code, info.si_status()) };
            if found != 0 || pid != 0 || Instant::now() >= deadline {
                break (found, pid, code, status);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let ended = if found != 0 {
            "the runner's state is unknown (already reaped)".to_string()
        } else if pid == 0 {
            "the runner is running".to_string()
        } else if code == libc::CLD_EXITED {
            format!("the runner exited with code {status}")
        } else {
            format!("the runner was killed by signal {status}")
        };
        let tail = lock(&self.stderr_tail);
        if tail.is_empty() {
            return ended;
        }
        let lines: Vec<&str> = tail.iter().map(String::as_str).collect();
        format!("{ended}; the end of its stderr:\n{}", lines.join("\n"))
    }

    /// When this process read `event` (one returned by a wait or [`RunnerChild::logged`]),
    /// on the monotonic clock: durations between events, or from one to now, that hold when
    /// the machine's wall clock is stepped (NTP on a freshly booted machine) during a test.
    pub fn seen_at(&self, event: &serde_json::Value) -> Instant {
        lock(&self.seen)
            .iter()
            .find(|(_, e)| e == event)
            .map(|(at, _)| *at)
            .unwrap_or_else(|| panic!("{event} was never printed by this runner"))
    }

    /// Every event printed so far and not yet consumed by a wait.
    pub fn drain_events(&mut self) -> Vec<serde_json::Value> {
        lock(&self.events).try_iter().collect()
    }

    /// Everything the runner printed so far: stdout, and stderr when kept.
    pub fn output(&self) -> String {
        lock(&self.output).clone()
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
    ) -> HttpReply {
        request(&self.addr(), method, path, headers, body)
    }

    /// `GET path`; [`HttpReply::unanswered`] when nothing answers (e.g. while the runner
    /// stops).
    pub fn get(&self, path: &str) -> HttpReply {
        crate::http::http(&self.addr(), "GET", path, &[], b"")
            .unwrap_or_else(|_| HttpReply::unanswered())
    }

    /// `GET /api/status` as JSON (`Null` when nothing answers).
    pub fn status(&self) -> serde_json::Value {
        self.get("/api/status").json()
    }

    /// The name of the newest segment in the live playlist `/hls/live.m3u8`.
    pub fn last_segment(&self) -> Option<String> {
        let playlist = self.get("/hls/live.m3u8");
        (playlist.status == 200).then_some(())?;
        playlist
            .text()
            .lines()
            .rfind(|l| l.ends_with(".ts"))
            .map(str::to_string)
    }

    /// Sends `signal` (a name `kill` knows: `HUP`, `INT`, `TERM`, `KILL`) to the child.
    pub fn signal(&self, signal: &str) {
        crate::process::signal(self.child.id(), signal);
    }

    /// Whether the child still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The child's exit status once it has exited (`None` while it runs), and then (up to
    /// 5 s) once all it printed is in [`RunnerChild::output`].
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        let status = self.child.try_wait().expect("wait for the runner")?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.readers.iter().any(|r| !r.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(status)
    }

    /// Waits for the child to exit; fails the test after `timeout`, with the events it
    /// printed and where its threads hang.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                return status;
            }
            if Instant::now() >= deadline {
                // Where it hangs, for whoever reads the failure.
                let stacks = Command::new("gdb")
                    .args(["-p", &self.child.id().to_string(), "-batch"])
                    .args(["-ex", "thread apply all bt 12"])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                panic!(
                    "the runner did not exit within {timeout:?}; events: {:?}\n{stacks}",
                    lock(&self.history)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGINT, and the exit status once the outputs are finalised (at most 30 s).
    pub fn stop(&mut self) -> ExitStatus {
        self.signal("INT");
        let status = self.wait_exit(Duration::from_secs(30));
        for stuck in self.logged("shutdown-stuck") {
            eprintln!("the shutdown hung and the runner's watchdog ended it: {stuck}");
        }
        status
    }
}

impl RunnerChild {
    /// Kills the child (SIGKILL) and waits for it; what a drop does.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RunnerChild {
    fn drop(&mut self) {
        self.kill();
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
) -> HttpReply {
    let mut stream = TcpStream::connect(addr).expect("connect to the runner");
    crate::http::exchange(&mut stream, addr, method, path, headers, body)
        .unwrap_or_else(|e| panic!("no HTTP answer to {method} {path}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A "runner" that dies at once (a shell given a script that does not exist): a wait for
    /// its events fails at once, saying how it ended and what it last wrote.
    #[test]
    fn a_runner_that_dies_is_reported_with_its_exit_and_stderr() {
        let dir = std::env::temp_dir();
        let mut runner = RunnerCommand::binary(Path::new("/bin/sh"), Path::new("x.toml"), &dir)
            .quiet()
            .spawn();
        let failure = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            runner.wait_for("a `ready` event", Duration::from_secs(60), |e| {
                e["event"] == "ready"
            })
        }))
        .expect_err("no event can come");
        let message = failure
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default();
        assert!(message.contains("exited with code"), "{message}");
        assert!(message.contains("run"), "the shell's complaint: {message}");
        runner.wait_exit(Duration::from_secs(10));
    }
}
