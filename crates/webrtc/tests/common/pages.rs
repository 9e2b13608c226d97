//! A test web server for browser tests: one page, the player's scripts from `web/`, the WHEP
//! endpoint of a WHEP output that can be swapped or taken away (a server restart), and routes
//! of the test's own.

use hybridlive_webrtc::{HttpRequest, WhepOutput};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};

/// The WHEP output a page talks to; `None` answers 503, as a server restarting does.
pub type SharedOutput = Arc<Mutex<Option<WhepOutput>>>;

/// A route of the test's own: `(method, path)` to `(status, body)`, or `None` to fall through.
pub type Route = Arc<dyn Fn(&str, &str) -> Option<(u16, String)> + Send + Sync>;

fn web_file(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("web")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A file of the runner's viewer page (`crates/runner/assets/`).
pub fn runner_asset(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../runner/assets")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Serves `page` at `/` on a loopback port (returned) from threads of its own.
pub fn serve_page(page: &'static str, output: SharedOutput, route: Option<Route>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let (output, route) = (output.clone(), route.clone());
            std::thread::spawn(move || {
                let _ = handle(stream, page, &output, route.as_ref());
            });
        }
    });
    port
}

/// Just enough HTTP/1.1 for one page, two scripts, the WHEP endpoint and the test's routes.
fn handle(
    mut stream: TcpStream,
    page: &str,
    output: &SharedOutput,
    route: Option<&Route>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let path = target.split('?').next().unwrap_or("/").to_string();
    let method = method.to_string();
    let (mut length, mut content_type) = (0usize, None);
    loop {
        let mut header = String::new();
        reader.read_line(&mut header)?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap_or(0),
                "content-type" => content_type = Some(value.trim().to_string()),
                _ => {}
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let whep = path
        .strip_prefix("/whep")
        .filter(|rest| rest.is_empty() || rest.starts_with('/'));
    let own = route.and_then(|route| route(&method, &path));
    let (status, headers, body): (u16, Vec<(String, String)>, Vec<u8>) = if let Some((s, b)) = own {
        (s, vec![], b.into_bytes())
    } else if let Some(rest) = whep {
        let current = output.lock().unwrap().clone();
        match current {
            Some(output) => {
                let r = output.handle_http(
                    "/whep",
                    HttpRequest {
                        method: &method,
                        path: rest,
                        content_type: content_type.as_deref(),
                        body: &body,
                    },
                );
                (r.status, r.headers, r.body)
            }
            None => (503, vec![], b"restarting".to_vec()),
        }
    } else {
        // At the root for the test pages, under /assets/ as the runner serves them.
        let (ct, body) = match path.trim_start_matches("/assets") {
            "/" => ("text/html", page.as_bytes().to_vec()),
            "/whep-player.js" => ("text/javascript", web_file("whep-player.js").into_bytes()),
            "/stamp.js" => ("text/javascript", web_file("stamp.js").into_bytes()),
            "/hls.min.js" => ("text/javascript", runner_asset("hls.min.js")),
            _ => ("text/plain", Vec::new()),
        };
        let status = if body.is_empty() { 404 } else { 200 };
        (status, vec![("Content-Type".into(), ct.into())], body)
    };
    let mut head = format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(&body)
}

/// Opens `http://127.0.0.1:<port><query>` in headless Chromium until the page sets
/// `window.result` (or `timeout_s` passes) and returns it.
pub fn open_in_chromium(port: u16, query: &str, timeout_s: u32) -> serde_json::Value {
    open_in_chromium_with(port, query, timeout_s, &[])
}

/// [`open_in_chromium`] with the driver's `WAIT` and `RESULT` expressions (see
/// `tests/browser/viewer.mjs`) in `env`.
pub fn open_in_chromium_with(
    port: u16,
    query: &str,
    timeout_s: u32,
    env: &[(&str, &str)],
) -> serde_json::Value {
    let driver = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/browser/viewer.mjs");
    let out = Command::new("node")
        .arg(&driver)
        .arg(format!("http://127.0.0.1:{port}/{query}"))
        .arg(timeout_s.to_string())
        .envs(env.iter().copied())
        .output()
        .expect("node runs (scripts/setup installs it with the browser test packages)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "browser run failed:\n{stderr}");
    serde_json::from_slice(&out.stdout).unwrap()
}
