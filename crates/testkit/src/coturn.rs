//! coturn (Debian's `turnserver`) started by a test as its user, with a configuration, log and
//! user database of its own in a temporary folder, listening on 127.0.0.1 only: TURN with the
//! shared-secret ("REST API") authentication the WHEP output's credentials are made for. Run it
//! inside the test's own network namespace ([`crate::in_private_netns`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::process::ChildGuard;

/// Debian's coturn server (`apt-get install coturn`).
pub const TURNSERVER: &str = "/usr/bin/turnserver";
/// coturn's test client: allocates on a TURN server and relays to a peer.
pub const UCLIENT: &str = "/usr/bin/turnutils_uclient";
/// coturn's echo peer for [`UCLIENT`].
pub const PEER: &str = "/usr/bin/turnutils_peer";

/// Whether coturn is installed (`scripts/setup` installs it).
pub fn available() -> bool {
    [TURNSERVER, UCLIENT, PEER]
        .iter()
        .all(|p| Path::new(p).exists())
}

/// A running coturn; killed, and its folder removed, on drop.
pub struct Coturn {
    /// TURN/STUN port on 127.0.0.1 (UDP and TCP).
    pub port: u16,
    dir: PathBuf,
    _server: ChildGuard,
}

impl Coturn {
    /// Starts coturn on 127.0.0.1:`port` (UDP and TCP) with `secret` as its
    /// `static-auth-secret`, relaying on 127.0.0.1, and waits until it accepts TCP.
    pub fn start(port: u16, secret: &str) -> Coturn {
        let dir =
            std::env::temp_dir().join(format!("hybridlive-coturn-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a folder for coturn");
        let config = format!(
            "listening-ip=127.0.0.1\nrelay-ip=127.0.0.1\nlistening-port={port}\n\
             min-port=49160\nmax-port=49400\n\
             use-auth-secret\nstatic-auth-secret={secret}\nrealm=hybridlive.test\n\
             fingerprint\nno-tls\nno-dtls\nno-cli\n\
             # The relay's peers are on 127.0.0.1 in a test; never in a deployment.\n\
             allow-loopback-peers\n\
             pidfile={dir}/turnserver.pid\nuserdb={dir}/turndb.sqlite\n\
             log-file={dir}/turn.log\nsimple-log\n",
            dir = dir.display()
        );
        let conf = dir.join("turnserver.conf");
        std::fs::write(&conf, config).expect("coturn's config written");
        let server = Command::new(TURNSERVER)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("turnserver starts (apt-get install coturn)");
        let server = ChildGuard(server);
        crate::eventually_explained(
            Duration::from_secs(30),
            || std::net::TcpStream::connect(("127.0.0.1", port)).ok(),
            || {
                format!(
                    "coturn never listened on {port}; its log:\n{}",
                    read_log(&dir)
                )
            },
        );
        Coturn {
            port,
            dir,
            _server: server,
        }
    }

    /// coturn's log so far (for failure messages).
    pub fn log(&self) -> String {
        read_log(&self.dir)
    }

    /// Allocates a relay over TCP with `username`/`password` and sends a few messages through
    /// it to an echo peer on 127.0.0.1:`peer_port` ([`EchoPeer`]): the client's output, and
    /// whether the allocation was made and echoes came back.
    pub fn allocate(&self, username: &str, password: &str, peer_port: u16) -> Allocation {
        let out = Command::new("timeout")
            .args(["60", UCLIENT, "-t", "-n", "2", "-m", "1", "-l", "100"])
            .args(["-u", username, "-w", password])
            .args(["-p", &self.port.to_string()])
            .args(["-e", "127.0.0.1", "-r", &peer_port.to_string()])
            .arg("127.0.0.1")
            .output()
            .expect("turnutils_uclient runs");
        Allocation::from_output(&out)
    }
}

/// What [`Coturn::allocate`] saw.
#[derive(Debug)]
pub struct Allocation {
    /// The client allocated a relay (no "Cannot complete Allocation", exit status 0).
    pub allocated: bool,
    /// Messages the echo peer sent back through the relay.
    pub echoed: u64,
    /// The client's output, for failure messages.
    pub output: String,
}

impl Allocation {
    fn from_output(out: &Output) -> Allocation {
        let output = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let echoed = output
            .lines()
            .filter_map(|l| l.split("tot_recv_msgs=").nth(1))
            .filter_map(|rest| {
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()
                    .and_then(|n| n.parse().ok())
            })
            .max()
            .unwrap_or(0);
        Allocation {
            allocated: out.status.success() && !output.contains("Cannot complete Allocation"),
            echoed,
            output,
        }
    }
}

/// coturn's UDP echo peer on 127.0.0.1:`port`, killed on drop.
pub struct EchoPeer {
    /// Its UDP port.
    pub port: u16,
    _peer: ChildGuard,
}

impl EchoPeer {
    /// Starts it.
    pub fn start(port: u16) -> EchoPeer {
        let peer = Command::new(PEER)
            .args(["-L", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("turnutils_peer starts");
        EchoPeer {
            port,
            _peer: ChildGuard(peer),
        }
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn read_log(dir: &Path) -> String {
    // coturn names its log file after the configured one with a date in it.
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("turn"))
        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .collect()
}
