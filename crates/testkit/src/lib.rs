//! Test support shared by the integration tests of several crates.
//!
//! Network tests must send traffic only to addresses of this machine. WebRTC stacks gather
//! candidates on every interface they find, so those tests run in a network namespace of their
//! own: the test binary starts itself again, for one test, under `unshare --net`.

use std::process::Command;

pub mod coturn;
pub mod faults;
pub mod http;
mod janus;
pub mod media;
pub mod netns;
pub mod nginx;
pub mod process;
pub mod runner_child;
pub mod senders;
pub mod time;
pub mod viewer;
mod whip;

pub use janus::{Janus, JanusSubscriber};
pub use whip::{WhipServer, free_tcp_port};

/// Runs the named test in a fresh network namespace holding only `lo`, where nothing leaves
/// 127.0.0.1. Returns true when the caller is already inside it (and should run the test
/// body), false when the test ran in a child process (whose failure fails the caller).
pub fn in_private_netns(test: &str) -> bool {
    in_namespaces(test, Namespaces::Net, "")
}

/// Like [`in_private_netns`], with a veth pair `hl0` (10.213.0.1) / `hl1` (10.213.0.2) inside
/// the namespace: two test hosts for servers that refuse loopback (Janus gathers no ICE
/// candidates on `lo`).
pub fn in_private_netns_with_veth(test: &str) -> bool {
    in_namespaces(test, Namespaces::Net, VETH_SETUP)
}

/// Like [`in_private_netns`], in a private mount namespace too (tmpfs and read-only mounts
/// stay the test's own), with the ignored tests of the binary selectable as well.
pub fn in_private_namespaces(test: &str) -> bool {
    in_namespaces(test, Namespaces::NetAndMount, "")
}

/// Shell commands that make the veth pair `hl0` (10.213.0.1) / `hl1` (10.213.0.2), up, in the
/// current network namespace; each ends in `&&`.
pub const VETH_SETUP: &str = "ip link add hl0 type veth peer name hl1 && \
     ip addr add 10.213.0.1/24 dev hl0 && ip addr add 10.213.0.2/24 dev hl1 && \
     ip link set hl0 up && ip link set hl1 up && ";

/// Set in a process that runs inside the namespaces a test made for itself.
pub const INSIDE_VAR: &str = "HYBRIDLIVE_NETNS";

#[derive(Clone, Copy)]
enum Namespaces {
    Net,
    NetAndMount,
}

/// `unshare` starting `sh -c "ip link set lo up && SETUP exec \"$0\" \"$@\""` in a new network
/// namespace (and mount namespace, private, with `mount`), with [`INSIDE_VAR`] set: the caller
/// appends the program and its arguments.
pub fn unshare_command(mount: bool, setup: &str) -> Command {
    let mut command = Command::new("unshare");
    command.arg("--net");
    if mount {
        command.args(["--mount", "--propagation", "private"]);
    }
    command
        .args(["--", "sh", "-c"])
        .arg(format!("ip link set lo up && {setup}exec \"$0\" \"$@\""))
        .env(INSIDE_VAR, "1");
    command
}

fn in_namespaces(test: &str, namespaces: Namespaces, setup: &str) -> bool {
    if std::env::var_os(INSIDE_VAR).is_some() {
        return true;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut command = unshare_command(matches!(namespaces, Namespaces::NetAndMount), setup);
    command
        .arg(exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"]);
    if matches!(namespaces, Namespaces::NetAndMount) {
        command.arg("--include-ignored");
    }
    let status = command
        .status()
        .expect("unshare runs (the network tests need root for a network namespace)");
    assert!(
        status.success(),
        "{test} failed inside its network namespace"
    );
    false
}

/// A copy of the pipeline shipped as `pipelines/NAME`, at `dir/pipelines/NAME`: its relative
/// paths are read from the file's folder, so `../recordings` is `dir/recordings`, as the
/// shipped file's is `./recordings` in the checkout.
pub fn shipped_pipeline_in(name: &str, dir: &std::path::Path) -> std::path::PathBuf {
    let folder = dir.join("pipelines");
    let copy = folder.join(name);
    std::fs::create_dir_all(&folder).expect("the test's folder");
    std::fs::copy(shipped_pipeline(name), &copy).expect("copy the shipped pipeline");
    copy
}

/// The path of a pipeline shipped in `pipelines/`.
pub fn shipped_pipeline(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../pipelines")
        .join(name)
        .canonicalize()
        .expect("shipped pipeline")
}

/// The value of a Prometheus series in exposition text (`name` or `name{labels}` exactly as
/// printed).
pub fn metric(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// The last `n` lines of `text`.
pub fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Opens the viewer page at `base` (`http://127.0.0.1:PORT`) in headless Chromium
/// (`tests/browser/viewer.mjs`, at most 40 s), waits until the JavaScript condition `wait`
/// holds, and returns what the expression `result` evaluates to there.
pub fn viewer_page(base: &str, wait: &str, result: &str) -> serde_json::Value {
    let driver =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/browser/viewer.mjs");
    let out = Command::new("node")
        .arg(&driver)
        .arg(format!("{base}/"))
        .arg("40")
        .env("WAIT", wait)
        .env("RESULT", result)
        .output()
        .expect("node runs (scripts/setup installs the browser test driver)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "browser run failed:\n{stderr}");
    serde_json::from_slice(&out.stdout).expect("the browser driver prints JSON")
}

/// A fresh folder under the system temp dir, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    /// `hybridlive-test-NAME-N-PID`, empty (N counts the folders this process made).
    pub fn new(name: &str) -> Self {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(scratch_dir("test", &format!("{name}-{n}")))
    }

    /// The path of `name` in the folder.
    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh, empty folder `hybridlive-SUITE-NAME-PID` in the temporary folder.
pub fn scratch_dir(suite: &str, name: &str) -> std::path::PathBuf {
    let dir =
        std::env::temp_dir().join(format!("hybridlive-{suite}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir
}

/// Waits (up to 30 s) until process `pid` (started as `unshare --net …`) is in a network
/// namespace other than this one. Moving a link to it before that moves the link nowhere: the
/// process creates its namespace after, and the link is never there.
pub fn wait_for_own_netns(pid: u32) {
    let ours = std::fs::read_link("/proc/self/ns/net").expect("this process's network namespace");
    eventually(
        std::time::Duration::from_secs(30),
        &format!("process {pid} to enter a network namespace of its own"),
        || {
            std::fs::read_link(format!("/proc/{pid}/ns/net"))
                .ok()
                .filter(|theirs| *theirs != ours)
                .map(|_| ())
        },
    );
}

/// Waits (up to 90 s) until a UDP socket bound to `addr` (`10.213.0.2:9100`, or `:9300` for
/// any address) exists in the network namespace of process `pid`: a receiver a test started in
/// a namespace of its own, e.g. an SRT listener, whose first start may be slow under load. A
/// caller started before it listens backs off for longer and longer.
pub fn wait_for_udp_listener(pid: u32, addr: &str) {
    let netns = format!("--net=/proc/{pid}/ns/net");
    eventually(
        std::time::Duration::from_secs(90),
        &format!("a UDP listener on {addr}"),
        || {
            let out = std::process::Command::new("nsenter")
                .args([netns.as_str(), "ss", "-Huan"])
                .output()
                .ok()?;
            String::from_utf8_lossy(&out.stdout)
                .contains(addr)
                .then_some(())
        },
    );
}

/// Polls `f` every 200 ms until it returns `Some`, and fails the test (naming `what`) when
/// `timeout` passes first. For waiting only: a test never asserts how long something took.
pub fn eventually<T>(timeout: std::time::Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
    eventually_explained(timeout, f, || format!("timed out waiting for {what}"))
}

/// [`eventually`], failing with the message `explain` gives when `timeout` has passed (for
/// what was still missing at that moment).
pub fn eventually_explained<T>(
    timeout: std::time::Duration,
    mut f: impl FnMut() -> Option<T>,
    explain: impl FnOnce() -> String,
) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if std::time::Instant::now() >= deadline {
            panic!("{}", explain());
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
