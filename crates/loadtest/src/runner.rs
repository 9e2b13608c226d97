//! The runner under test, in a child process, and a minimal HTTP/1.1 client for its API.

use anyhow::Context as _;
use hybridlive_testkit::http::HttpReply;
use hybridlive_testkit::runner_child::{RunnerChild, RunnerCommand};
use std::time::{Duration, Instant};

/// Environment variable carrying the runner's arguments (a JSON list) to [`child_main`].
pub use hybridlive_testkit::runner_child::ARGS_VAR as ARGS_ENV;

/// Entry point of a runner child process started by [`Runner::start`]: runs `hybridlive run`
/// with the arguments in [`ARGS_ENV`] and exits with its status. Call it first thing in
/// `main` (or in an ignored test) when [`ARGS_ENV`] is set.
pub fn child_main() -> ! {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        run: hybridlive_runner::RunArgs,
    }
    let cli = <Cli as clap::Parser>::parse_from(hybridlive_testkit::runner_child::child_args());
    hybridlive_testkit::runner_child::exit_with(hybridlive_runner::run(&cli.run))
}

/// A running `hybridlive run FILE --http 127.0.0.1:0 --json`.
pub struct Runner {
    child: RunnerChild,
    addr: String,
}

impl Runner {
    /// Starts the runner `command` describes, with the API token `loadtest`, and waits up to
    /// `ready_timeout` for its `ready` event.
    pub fn start(command: RunnerCommand, ready_timeout: Duration) -> anyhow::Result<Runner> {
        let child = command
            .env(&[("HYBRIDLIVE_TOKEN", "loadtest")])
            .try_start_within(ready_timeout)
            .map_err(anyhow::Error::msg)?;
        Ok(Runner {
            addr: child.addr(),
            child,
        })
    }

    /// Process id, for `/proc`.
    pub fn pid(&self) -> u32 {
        self.child.pid()
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
    ) -> anyhow::Result<HttpReply> {
        http(&self.addr, method, path, content_type, body)
    }

    /// A Prometheus series of `/metrics` (`name` or `name{labels}` exactly as printed).
    pub fn metric(&self, series: &str) -> anyhow::Result<Option<f64>> {
        let metrics = self.request("GET", "/metrics", None, b"")?.text();
        Ok(metric(&metrics, series))
    }

    /// Ends it with SIGTERM (recordings finalised) and waits up to `timeout`, then kills it.
    pub fn stop(mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.child.signal("TERM");
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_exit() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// Whether it is still running.
    pub fn alive(&mut self) -> bool {
        self.child.alive()
    }
}

/// A Prometheus series in exposition text.
pub fn metric(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// One request on its own connection (`Connection: close`), with a `Content-Type` when given.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> anyhow::Result<HttpReply> {
    let headers: Vec<(&str, &str)> = content_type
        .map(|t| ("Content-Type", t))
        .into_iter()
        .collect();
    hybridlive_testkit::http::http(addr, method, path, &headers, body)
        .with_context(|| format!("{method} http://{addr}{path}"))
}
