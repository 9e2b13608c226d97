//! nginx in front of a runner, as `docs/deployment.md` deploys it: Debian's `/usr/sbin/nginx`
//! run as the test's user with a configuration, logs, cache and temporary files of its own in
//! a folder, on a loopback port, and a self-signed certificate made with the `openssl` CLI.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Debian's nginx.
pub const NGINX: &str = "/usr/sbin/nginx";

/// How long nginx has to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A certificate and its key, PEM files.
#[derive(Debug, Clone)]
pub struct Certificate {
    /// The certificate (self-signed: it is its own trust anchor).
    pub cert: PathBuf,
    /// Its private key (PKCS#8).
    pub key: PathBuf,
}

/// A self-signed P-256 certificate for `localhost` and 127.0.0.1, valid two days, as
/// `dir/cert.pem` and `dir/key.pem`. Not a CA (`CA:FALSE`): a client that trusts it as an
/// anchor accepts it as the server's own certificate.
pub fn self_signed_certificate(dir: &Path) -> Certificate {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-addext", "extendedKeyUsage=serverAuth"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("the openssl CLI runs");
    assert!(
        out.status.success(),
        "openssl req failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Certificate { cert, key }
}

/// One request nginx logged: what the client asked and whether the origin was asked.
#[derive(Debug, Clone)]
pub struct Logged {
    /// Path and query as the client sent them.
    pub uri: String,
    /// The status the client got.
    pub status: u16,
    /// `$upstream_cache_status`: HIT, MISS, EXPIRED, UPDATING, ... (`-`: not cached here).
    pub cache: String,
    /// Whether nginx sent this request on to the origin (`$upstream_addr` set).
    pub to_origin: bool,
}

/// A running nginx; stopped when dropped.
pub struct Nginx {
    child: Child,
    dir: PathBuf,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
}

impl Nginx {
    /// Starts nginx in `dir` with `http_config` (directives of the `http` block: the server
    /// blocks, upstreams, cache paths) listening on `port`, and waits until it accepts
    /// connections. Every request is logged for [`Nginx::log`].
    pub fn start(dir: &Path, http_config: &str, port: u16) -> Nginx {
        for sub in ["temp", "logs"] {
            std::fs::create_dir_all(dir.join(sub)).expect("nginx folders");
        }
        let d = dir.display();
        // One process (no master): killing it leaves no worker behind, and the test's load
        // is small.
        let conf = format!(
            "master_process off;\ndaemon off;\npid {d}/nginx.pid;\n\
             error_log {d}/logs/error.log info;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n\
             client_body_temp_path {d}/temp/body;\nproxy_temp_path {d}/temp/proxy;\n\
             fastcgi_temp_path {d}/temp/fastcgi;\nuwsgi_temp_path {d}/temp/uwsgi;\n\
             scgi_temp_path {d}/temp/scgi;\n\
             log_format test '$request_uri $status $upstream_cache_status $upstream_addr';\n\
             access_log {d}/logs/access.log test;\n\
             {http_config}\n}}\n"
        );
        let file = dir.join("nginx.conf");
        std::fs::write(&file, conf).expect("write nginx.conf");
        let test = Command::new(NGINX)
            .arg("-t")
            .args(Self::args(dir, &file))
            .output()
            .expect("nginx runs (apt-get install nginx-light or nginx)");
        assert!(
            test.status.success(),
            "nginx refuses the configuration:\n{}\n{}",
            String::from_utf8_lossy(&test.stderr),
            std::fs::read_to_string(&file).unwrap_or_default()
        );
        let child = Command::new(NGINX)
            .args(Self::args(dir, &file))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx starts");
        let mut nginx = Nginx {
            child,
            dir: dir.to_path_buf(),
            port,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                panic!("nginx exited ({status}):\n{}", nginx.error_log());
            }
            assert!(
                Instant::now() < deadline,
                "nginx does not listen on {port}:\n{}",
                nginx.error_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        nginx
    }

    fn args(dir: &Path, file: &Path) -> Vec<std::ffi::OsString> {
        vec![
            "-p".into(),
            dir.into(),
            "-c".into(),
            file.into(),
            // Before the configuration is read nginx opens its compiled-in error log
            // (/var/log/nginx, root's): this one instead.
            "-e".into(),
            dir.join("logs/error.log").into(),
        ]
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Every request logged so far, oldest first.
    pub fn log(&self) -> Vec<Logged> {
        std::fs::read_to_string(self.dir.join("logs/access.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let mut fields = line.split(' ');
                let uri = fields.next()?.to_string();
                let status = fields.next()?.parse().ok()?;
                let cache = fields.next()?.to_string();
                let upstream = fields.next()?;
                Some(Logged {
                    uri,
                    status,
                    cache,
                    to_origin: upstream != "-",
                })
            })
            .collect()
    }

    /// nginx's error log (warnings and errors).
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("logs/error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
