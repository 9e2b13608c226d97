//! Test support shared by the integration tests of several crates.
//!
//! Network tests must send traffic only to addresses of this machine. WebRTC stacks gather
//! candidates on every interface they find, so those tests run in a network namespace of their
//! own: the test binary starts itself again, for one test, under `unshare --net`.

use std::process::Command;

pub mod http;
mod janus;
pub mod runner_child;
pub mod senders;
mod whip;

pub use janus::{Janus, JanusSubscriber};
pub use whip::{WhipServer, free_tcp_port};

/// Runs the named test in a fresh network namespace holding only `lo`, where nothing leaves
/// 127.0.0.1. Returns true when the caller is already inside it (and should run the test
/// body), false when the test ran in a child process (whose failure fails the caller).
pub fn in_private_netns(test: &str) -> bool {
    in_private_netns_with(test, "")
}

/// Like [`in_private_netns`], with a veth pair `hl0` (10.213.0.1) / `hl1` (10.213.0.2) inside
/// the namespace: two test hosts for servers that refuse loopback (Janus gathers no ICE
/// candidates on `lo`).
pub fn in_private_netns_with_veth(test: &str) -> bool {
    in_private_netns_with(
        test,
        "ip link add hl0 type veth peer name hl1 && \
         ip addr add 10.213.0.1/24 dev hl0 && ip addr add 10.213.0.2/24 dev hl1 && \
         ip link set hl0 up && ip link set hl1 up && ",
    )
}

fn in_private_netns_with(test: &str, setup: &str) -> bool {
    if std::env::var_os("HYBRIDLIVE_NETNS").is_some() {
        return true;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let status = Command::new("unshare")
        .args(["--net", "--", "sh", "-c"])
        .arg(format!(
            "ip link set lo up && {setup}exec \"{}\" --exact {test} --nocapture --test-threads=1",
            exe.display()
        ))
        .env("HYBRIDLIVE_NETNS", "1")
        .status()
        .expect("unshare runs (the network tests need root for a network namespace)");
    assert!(
        status.success(),
        "{test} failed inside its network namespace"
    );
    false
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
