//! Helper processes of a test (senders, servers, shells) that die with it, even when an
//! assertion fails first.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A helper process killed (SIGKILL) and reaped when the guard drops.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    /// The helper's process id.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Kills it now and waits for it.
    pub fn kill(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// SIGINT (`gst-launch-1.0 -e`: EOS, files finished), then waits up to 10 s for the exit.
    pub fn interrupt(mut self) {
        signal(self.0.id(), "INT");
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.0.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A helper process started as the leader of a process group of its own (`process_group(0)`)
/// and everything it started: the whole group is killed when the guard drops.
pub struct GroupGuard(pub Child);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        signal_group(self.0.id(), "KILL");
        let _ = self.0.wait();
    }
}

/// Sends `signal` (a name `kill` knows: `HUP`, `INT`, `TERM`, `KILL`) to process `pid`; fails
/// the test when `kill` fails.
pub fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// Sends `signal` to every process of the group `pgid`, whether or not any is left.
pub fn signal_group(pgid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(format!("-{pgid}"))
        .status();
}

/// Runs a shell command, failing the test with what it printed when it fails.
pub fn sh(command: &str) {
    let out = Command::new("sh")
        .args(["-c", command])
        .output()
        .expect("sh runs");
    assert!(
        out.status.success(),
        "`{command}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The same test binary started for one ignored helper "test" `name` (e.g. an RTSP server),
/// its stdout discarded.
pub fn helper_process(name: &str) -> ChildGuard {
    ChildGuard(
        Command::new(std::env::current_exe().expect("the test binary"))
            .args(["--ignored", "--exact", name, "--nocapture"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start the helper process"),
    )
}

/// `gst-launch-1.0 -q -e ARGS` (split at white space), its output discarded.
pub fn gst_launch(args: &str) -> ChildGuard {
    ChildGuard(
        Command::new("gst-launch-1.0")
            .args(["-q", "-e"])
            .args(args.split_whitespace())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("gst-launch-1.0"),
    )
}
