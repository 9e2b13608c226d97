//! The runner's one HTTP server: viewer page, HLS, Prometheus metrics and the control API.
//!
//! | route | what |
//! |---|---|
//! | `GET /` | viewer page (hls.js, vendored) |
//! | `GET /hls/live.m3u8`, `GET /hls/<segment>.ts` | the HLS output |
//! | `GET /metrics` | Prometheus text |
//! | `GET /api/status` | JSON status |
//! | `POST /api/markers` | `{"label": "..."}`: mark a moment for repurposing (token) |
//! | `POST /api/recording` | `{"action": "start"\|"stop", "output": "rec"}` (token) |

use std::fmt::Write as _;
use std::io::Read as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use anyhow::{Context as _, anyhow};
use tiny_http::{Header, Method, Request, Response};

use crate::runner::Runner;
use crate::state::AbrStatus;

/// Largest request body accepted by the API.
pub const MAX_BODY: usize = 16 * 1024;
/// Worker threads. Low-Latency HLS holds requests (blocking playlist reload, preload hints) for
/// up to three target durations, two per viewer at a time: enough threads that a few dozen
/// waiting viewers never starve the rest.
const WORKERS: usize = 64;
/// WHEP requests handled at once, each on its own thread; more get 503 until one finishes.
const MAX_WHEP_IN_FLIGHT: usize = 32;

const INDEX_HTML: &str = include_str!("../assets/index.html");
const HLS_JS: &[u8] = include_bytes!("../assets/hls.min.js");
const HLS_JS_LICENSE: &str = include_str!("../assets/hls.js.LICENSE");

/// A running server.
pub struct ServerHandle {
    /// The address it listens on (with the real port when 0 was asked for).
    pub addr: std::net::SocketAddr,
    server: Arc<tiny_http::Server>,
    workers: Vec<JoinHandle<()>>,
}

impl ServerHandle {
    /// Stops accepting requests and joins the workers.
    pub fn stop(self) {
        for _ in &self.workers {
            self.server.unblock();
        }
        for w in self.workers {
            let _ = w.join();
        }
    }
}

struct Context {
    runner: Arc<Runner>,
    token: Option<String>,
    hls_dir: Option<PathBuf>,
    segment_times: crate::hls::SegmentTimes,
    /// WHEP requests being read or negotiated on their own threads.
    whep_in_flight: AtomicUsize,
}

/// Binds `addr`; done before anything else starts so a busy port fails fast.
pub fn bind(addr: &str) -> anyhow::Result<tiny_http::Server> {
    tiny_http::Server::http(addr).map_err(|e| anyhow!("cannot listen on {addr}: {e}"))
}

/// Serves from a few worker threads.
pub fn start(
    server: tiny_http::Server,
    runner: Arc<Runner>,
    token: Option<String>,
    hls_dir: Option<PathBuf>,
) -> anyhow::Result<ServerHandle> {
    let bound = server
        .server_addr()
        .to_ip()
        .context("the HTTP server is not on an IP address")?;
    let server = Arc::new(server);
    let hls_window = runner
        .outputs
        .iter()
        .find_map(|o| o.hls_playlist_length())
        .unwrap_or(5);
    let context = Arc::new(Context {
        runner,
        token,
        hls_dir: hls_dir.and_then(|d| std::fs::canonicalize(d).ok()),
        segment_times: crate::hls::SegmentTimes::new(hls_window),
        whep_in_flight: AtomicUsize::new(0),
    });
    let workers = (0..WORKERS)
        .map(|_| {
            let server = server.clone();
            let context = context.clone();
            std::thread::spawn(move || {
                while let Ok(request) = server.recv() {
                    handle(&context, request);
                }
            })
        })
        .collect();
    Ok(ServerHandle {
        addr: bound,
        server,
        workers,
    })
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("static header names are valid")
}

fn text(status: u16, body: impl Into<String>) -> Response<std::io::Cursor<Vec<u8>>> {
    Response::from_string(body.into())
        .with_status_code(status)
        .with_header(header("Content-Type", "text/plain; charset=utf-8"))
        .with_header(header("Cache-Control", "no-store"))
}

fn json(status: u16, value: &serde_json::Value) -> Response<std::io::Cursor<Vec<u8>>> {
    Response::from_string(value.to_string())
        .with_status_code(status)
        .with_header(header("Content-Type", "application/json"))
        .with_header(header("Cache-Control", "no-store"))
}

fn error(status: u16, message: &str) -> Response<std::io::Cursor<Vec<u8>>> {
    json(status, &serde_json::json!({ "error": message }))
}

fn handle(context: &Arc<Context>, mut request: Request) {
    let url = request.url().to_string();
    let path = url.split('?').next().unwrap_or("").to_string();
    let method = request.method().clone();
    let response = match (&method, path.as_str()) {
        (Method::Get | Method::Head, "/" | "/index.html") => Response::from_string(INDEX_HTML)
            .with_header(header("Content-Type", "text/html; charset=utf-8"))
            .with_header(header("Cache-Control", "no-cache")),
        (Method::Get | Method::Head, "/assets/hls.min.js") => Response::from_data(HLS_JS.to_vec())
            .with_header(header("Content-Type", "text/javascript; charset=utf-8"))
            .with_header(header("Cache-Control", "public, max-age=86400")),
        (Method::Get | Method::Head, "/assets/hls.js.LICENSE") => text(200, HLS_JS_LICENSE),
        (Method::Get | Method::Head, "/metrics") => Response::from_string(metrics(&context.runner))
            .with_header(header(
                "Content-Type",
                "text/plain; version=0.0.4; charset=utf-8",
            ))
            .with_header(header("Cache-Control", "no-store")),
        (Method::Get | Method::Head, "/api/status") => {
            let mut status = context
                .runner
                .shared
                .with(|s| serde_json::to_value(&*s).unwrap_or_default());
            if let Some(whep) = context.runner.outputs.iter().find_map(|o| o.whep()) {
                // Viewers by session id only, and their questions: no personal data.
                let hands: Vec<serde_json::Value> = whep
                    .raised_hands()
                    .into_iter()
                    .map(|h| serde_json::json!({"session": h.session, "text": h.text, "utc_ms": h.at_ms}))
                    .collect();
                status["webrtc"] = serde_json::json!({
                    "viewers": whep.session_count(),
                    "raised_hands": hands,
                });
            }
            json(200, &status)
        }
        (Method::Get | Method::Head, p) if p.starts_with("/hls/") => {
            match context.runner.outputs.iter().find_map(|o| o.ll_hls()) {
                Some(ll) => {
                    let query = url.split_once('?').map_or("", |(_, q)| q);
                    let reply = ll.respond(&p["/hls/".len()..], query);
                    Response::from_data(reply.body.to_vec())
                        .with_status_code(reply.status)
                        .with_header(header("Content-Type", reply.content_type))
                        .with_header(header("Cache-Control", reply.cache))
                        .with_header(header("Access-Control-Allow-Origin", "*"))
                }
                None => hls_file(context, &p["/hls/".len()..]),
            }
        }
        (Method::Post, "/api/markers" | "/api/recording" | "/api/offers") => {
            match authorised_body(context, &mut request) {
                Ok(body) if path == "/api/markers" => markers(context, &body),
                Ok(body) if path == "/api/offers" => offers(context, &body),
                Ok(body) => recording(context, &body),
                Err(response) => response,
            }
        }
        (_, p) if p == "/whep" || p.starts_with("/whep/") => {
            // Reading an offer waits on the client and answering it waits on ICE gathering: a
            // slow or hostile viewer must not hold a worker the viewer page and HLS need.
            let taken = context.whep_in_flight.fetch_add(1, Ordering::SeqCst);
            if taken >= MAX_WHEP_IN_FLIGHT {
                context.whep_in_flight.fetch_sub(1, Ordering::SeqCst);
                error(503, "too many WebRTC sessions are being set up; retry")
                    .with_header(header("Retry-After", "2"))
            } else {
                let context = context.clone();
                std::thread::spawn(move || {
                    let response = whep(&context, &mut request, &path);
                    let _ = request.respond(response);
                    context.whep_in_flight.fetch_sub(1, Ordering::SeqCst);
                });
                return;
            }
        }
        (Method::Get | Method::Head, "/assets/whep-player.js") => {
            Response::from_string(hybridlive_webrtc::WHEP_PLAYER_JS)
                .with_header(header("Content-Type", "text/javascript; charset=utf-8"))
                .with_header(header("Cache-Control", "no-cache"))
        }
        (Method::Get | Method::Head, "/assets/stamp.js") => {
            Response::from_string(hybridlive_webrtc::STAMP_JS)
                .with_header(header("Content-Type", "text/javascript; charset=utf-8"))
                .with_header(header("Cache-Control", "no-cache"))
        }
        (_, "/api/markers" | "/api/recording" | "/api/offers") => error(405, "use POST"),
        (_, "/" | "/metrics" | "/api/status") => error(405, "use GET"),
        _ => error(404, "not found"),
    };
    let _ = request.respond(response);
}

/// WHEP (viewer routes: no token; an SDP offer of at most `MAX_OFFER_BYTES`).
fn whep(
    context: &Context,
    request: &mut Request,
    path: &str,
) -> Response<std::io::Cursor<Vec<u8>>> {
    let Some(whep) = context.runner.outputs.iter().find_map(|o| o.whep()) else {
        return error(503, "no WebRTC output is running");
    };
    // Refuse an announced oversized body before reading it: reading would block this worker
    // until the client sent it all.
    if request
        .body_length()
        .is_some_and(|n| n > hybridlive_webrtc::MAX_OFFER_BYTES)
    {
        return error(
            413,
            &format!(
                "an SDP offer is at most {} bytes",
                hybridlive_webrtc::MAX_OFFER_BYTES
            ),
        );
    }
    let mut body = Vec::new();
    let limit = hybridlive_webrtc::MAX_OFFER_BYTES as u64 + 1;
    if std::io::Read::read_to_end(&mut request.as_reader().take(limit), &mut body).is_err() {
        return error(400, "cannot read the request body");
    }
    let content_type = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Content-Type"))
        .map(|h| h.value.as_str().to_string());
    let method = request.method().as_str().to_string();
    let reply = whep.handle_http(
        "/whep",
        hybridlive_webrtc::HttpRequest {
            method: &method,
            path: &path["/whep".len()..],
            content_type: content_type.as_deref(),
            body: &body,
        },
    );
    let mut response = Response::from_data(reply.body).with_status_code(reply.status);
    for (name, value) in &reply.headers {
        response.add_header(header(name, value));
    }
    response
}

/// Checks the bearer token, then reads a body of at most [`MAX_BODY`] bytes.
fn authorised_body(
    context: &Context,
    request: &mut Request,
) -> Result<Vec<u8>, Response<std::io::Cursor<Vec<u8>>>> {
    let Some(expected) = &context.token else {
        return Err(error(
            403,
            "write endpoints are disabled: set [server] token or token_env in the pipeline file",
        ));
    };
    let given = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
        .and_then(|h| h.value.as_str().strip_prefix("Bearer ").map(str::to_string));
    let ok = given.is_some_and(|g| constant_time_eq(g.as_bytes(), expected.as_bytes()));
    if !ok {
        return Err(error(401, "missing or wrong bearer token")
            .with_header(header("WWW-Authenticate", "Bearer")));
    }
    if request.body_length().is_some_and(|n| n > MAX_BODY) {
        return Err(error(413, "request body too large"));
    }
    let mut body = Vec::new();
    let read = request
        .as_reader()
        .take(MAX_BODY as u64 + 1)
        .read_to_end(&mut body);
    match read {
        Err(_) => Err(error(400, "cannot read the request body")),
        Ok(_) if body.len() > MAX_BODY => Err(error(413, "request body too large")),
        Ok(_) => Ok(body),
    }
}

/// Compares without returning early, so the time taken does not reveal the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for (i, x) in a.iter().enumerate() {
        diff |= x ^ b.get(i).copied().unwrap_or(!x);
    }
    diff == 0
}

fn parse_object(body: &[u8]) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice(body) {
        Ok(serde_json::Value::Object(o)) => Ok(o),
        Ok(_) => Err("the body must be a JSON object".into()),
        Err(e) => Err(format!("invalid JSON: {e}")),
    }
}

/// `{"show": {offer as in a schedule}}` or `{"hide": "id"}`.
fn offers(context: &Context, body: &[u8]) -> Response<std::io::Cursor<Vec<u8>>> {
    let object = match parse_object(body) {
        Ok(o) => o,
        Err(e) => return error(400, &e),
    };
    let taken = match (object.get("show"), object.get("hide")) {
        (Some(offer @ serde_json::Value::Object(_)), None) => {
            context.runner.control_offer(Some(&offer.to_string()), None)
        }
        (None, Some(serde_json::Value::String(id))) => context.runner.control_offer(None, Some(id)),
        _ => {
            return error(
                400,
                "send {\"show\": {offer}} or {\"hide\": \"id\"} (see plugins/offeroverlay/README.md)",
            );
        }
    };
    if taken == 0 {
        // No overlay, or every overlay refused it (malformed offer, unknown id).
        return error(
            422,
            "no offeroverlay took it: check the offer fields or the id",
        );
    }
    json(200, &serde_json::json!({"overlays": taken}))
}

fn markers(context: &Context, body: &[u8]) -> Response<std::io::Cursor<Vec<u8>>> {
    let object = match parse_object(body) {
        Ok(o) => o,
        Err(e) => return error(400, &e),
    };
    let label = match object.get("label") {
        None => String::new(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(_) => return error(400, "`label` must be a string"),
    };
    let marker = context.runner.marker(label);
    json(
        201,
        &serde_json::json!({"utc": crate::state::rfc3339(marker.utc_ns), "utc_ns": marker.utc_ns, "label": marker.label}),
    )
}

fn recording(context: &Context, body: &[u8]) -> Response<std::io::Cursor<Vec<u8>>> {
    let object = match parse_object(body) {
        Ok(o) => o,
        Err(e) => return error(400, &e),
    };
    let start = match object.get("action").and_then(|a| a.as_str()) {
        Some("start") => true,
        Some("stop") => false,
        _ => return error(400, "`action` must be \"start\" or \"stop\""),
    };
    let output = object.get("output").and_then(|o| o.as_str());
    match context.runner.recording(start, output) {
        Ok(names) => json(
            202,
            &serde_json::json!({"action": if start { "start" } else { "stop" }, "outputs": names}),
        ),
        Err(e) => error(404, &e),
    }
}

fn hls_file(context: &Context, name: &str) -> Response<std::io::Cursor<Vec<u8>>> {
    let Some(dir) = &context.hls_dir else {
        return error(404, "this pipeline has no hls output");
    };
    // Only plain file names from the HLS folder: no separators, no dot files, no `..`.
    let plain = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    let content_type = if name.ends_with(".m3u8") {
        "application/vnd.apple.mpegurl"
    } else if name.ends_with(".ts") {
        "video/mp2t"
    } else {
        return error(404, "not found");
    };
    if !plain {
        return error(404, "not found");
    }
    let path = dir.join(name);
    match std::fs::read(&path) {
        Ok(data) => {
            let data = if content_type == "video/mp2t" {
                data
            } else {
                let playlist = String::from_utf8_lossy(&data);
                context.segment_times.annotate(dir, &playlist).into_bytes()
            };
            // The playlist changes every segment; a segment never changes once listed.
            let cache = if content_type == "video/mp2t" {
                "public, max-age=60, immutable"
            } else {
                "no-cache, no-store"
            };
            Response::from_data(data)
                .with_header(header("Content-Type", content_type))
                .with_header(header("Cache-Control", cache))
                .with_header(header("Access-Control-Allow-Origin", "*"))
        }
        Err(_) => error(404, "not found"),
    }
}

fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus text exposition of the runner's figures.
pub fn metrics(runner: &Runner) -> String {
    let mut out = runner.shared.with(|s| {
        let mut out = String::new();
        out.push_str("# HELP hybridlive_latency_ms Capture-to-here latency per path over the meter window, milliseconds.\n");
        out.push_str("# TYPE hybridlive_latency_ms gauge\n");
        for (path, l) in &s.latency {
            let p = label(path);
            let _ = writeln!(out, "hybridlive_latency_ms{{path=\"{p}\",quantile=\"0.5\"}} {}", l.p50_ms);
            let _ = writeln!(out, "hybridlive_latency_ms{{path=\"{p}\",quantile=\"0.95\"}} {}", l.p95_ms);
        }
        out.push_str("# HELP hybridlive_latency_frames_total Frames measured per path.\n");
        out.push_str("# TYPE hybridlive_latency_frames_total counter\n");
        for (path, l) in &s.latency {
            let _ = writeln!(out, "hybridlive_latency_frames_total{{path=\"{}\"}} {}", label(path), l.count);
        }
        out.push_str("# HELP hybridlive_encoder_bitrate_kbps Encoder output over the last second, kbit/s.\n");
        out.push_str("# TYPE hybridlive_encoder_bitrate_kbps gauge\n");
        for (name, e) in &s.encoders {
            let _ = writeln!(out, "hybridlive_encoder_bitrate_kbps{{encoder=\"{}\"}} {}", label(name), e.kbps);
        }
        out.push_str("# HELP hybridlive_encoder_fps Encoded buffers over the last second.\n");
        out.push_str("# TYPE hybridlive_encoder_fps gauge\n");
        for (name, e) in &s.encoders {
            let _ = writeln!(out, "hybridlive_encoder_fps{{encoder=\"{}\"}} {}", label(name), e.fps);
        }
        out.push_str("# HELP hybridlive_encoder_bytes_total Bytes produced per encoder.\n");
        out.push_str("# TYPE hybridlive_encoder_bytes_total counter\n");
        for (name, e) in &s.encoders {
            let _ = writeln!(out, "hybridlive_encoder_bytes_total{{encoder=\"{}\"}} {}", label(name), e.bytes);
        }
        out.push_str("# HELP hybridlive_output_up 1 while the output runs (WHIP/Janus egress: running or connected to its SFU).\n");
        out.push_str("# TYPE hybridlive_output_up gauge\n");
        for (name, o) in &s.outputs {
            let up = u8::from(o.state == "running" || o.state == "connected");
            let _ = writeln!(out, "hybridlive_output_up{{output=\"{}\",type=\"{}\"}} {up}", label(name), o.kind);
        }
        out.push_str("# HELP hybridlive_output_retrying 1 while the output failed and waits out its back-off before the next try.\n");
        out.push_str("# TYPE hybridlive_output_retrying gauge\n");
        for (name, o) in &s.outputs {
            let retrying = u8::from(o.retry_in_s.is_some());
            let _ = writeln!(out, "hybridlive_output_retrying{{output=\"{}\"}} {retrying}", label(name));
        }
        out.push_str("# HELP hybridlive_output_restarts_total Restarts after failures.\n");
        out.push_str("# TYPE hybridlive_output_restarts_total counter\n");
        for (name, o) in &s.outputs {
            let _ = writeln!(out, "hybridlive_output_restarts_total{{output=\"{}\"}} {}", label(name), o.restarts);
        }
        out.push_str("# HELP hybridlive_recording_duration_seconds Media in the current recording.\n");
        out.push_str("# TYPE hybridlive_recording_duration_seconds gauge\n");
        for (name, o) in &s.outputs {
            if let Some(r) = &o.recording {
                let _ = writeln!(out, "hybridlive_recording_duration_seconds{{output=\"{}\"}} {}", label(name), r.duration_s);
            }
        }
        out.push_str("# HELP hybridlive_recording_bytes Size of the current recording on disk.\n");
        out.push_str("# TYPE hybridlive_recording_bytes gauge\n");
        for (name, o) in &s.outputs {
            if let Some(r) = &o.recording {
                let _ = writeln!(out, "hybridlive_recording_bytes{{output=\"{}\"}} {}", label(name), r.bytes);
            }
        }
        out.push_str("# HELP hybridlive_source_on_fallback 1 while a source's slate or backup is on air.\n");
        out.push_str("# TYPE hybridlive_source_on_fallback gauge\n");
        for (name, state) in &s.sources {
            let on = u8::from(state == "fallback");
            let _ = writeln!(out, "hybridlive_source_on_fallback{{source=\"{}\"}} {on}", label(name));
        }
        abr_metrics(&mut out, &s.abr);
        out.push_str("# HELP hybridlive_markers_total Markers set through the API.\n");
        out.push_str("# TYPE hybridlive_markers_total counter\n");
        let _ = writeln!(out, "hybridlive_markers_total {}", s.markers.len());
        out
    });
    if let Some(whep) = runner.outputs.iter().find_map(|o| o.whep()) {
        out.push_str(&viewer_metrics(
            whep.session_count(),
            &whep.viewer_latencies(),
        ));
        let branches = whep.branches();
        out.push_str("# HELP hybridlive_webrtc_branches webrtcbin elements in the WebRTC output's pipeline (one per session; more means a leak).\n");
        out.push_str("# TYPE hybridlive_webrtc_branches gauge\n");
        let _ = writeln!(out, "hybridlive_webrtc_branches {}", branches.webrtcbins);
        out.push_str("# HELP hybridlive_webrtc_tee_pads Tee pads feeding viewer branches (one per medium per session).\n");
        out.push_str("# TYPE hybridlive_webrtc_tee_pads gauge\n");
        let _ = writeln!(out, "hybridlive_webrtc_tee_pads {}", branches.tee_pads);
    }
    out
}

/// One gauge of [`abr_metrics`]: name suffix, help text, value.
type AbrGauge = (&'static str, &'static str, fn(&AbrStatus) -> Option<u64>);

/// Per output steered by an abrcontroller: what it decided last.
fn abr_metrics(out: &mut String, abr: &std::collections::BTreeMap<String, AbrStatus>) {
    let gauges: [AbrGauge; 4] = [
        (
            "target_kbps",
            "Rate the abrcontroller believes the uplink carries, kbit/s.",
            |a| Some(a.target_kbps),
        ),
        (
            "bitrate_kbps",
            "Bitrate the abrcontroller gave the encoder, kbit/s.",
            |a| Some(a.bitrate_kbps),
        ),
        (
            "rung",
            "Ladder rung the abrcontroller chose, 0 the highest.",
            |a| a.rung.map(u64::from),
        ),
        (
            "estimate_kbps",
            "Explicit estimate the abrcontroller followed, kbit/s.",
            |a| a.estimate_kbps,
        ),
    ];
    for (name, help, value) in gauges {
        let _ = writeln!(out, "# HELP hybridlive_abr_{name} {help}");
        let _ = writeln!(out, "# TYPE hybridlive_abr_{name} gauge");
        for (output, a) in abr {
            if let Some(v) = value(a) {
                let _ = writeln!(
                    out,
                    "hybridlive_abr_{name}{{output=\"{}\",encoder=\"{}\"}} {v}",
                    label(output),
                    label(&a.encoder)
                );
            }
        }
    }
    out.push_str(
        "# HELP hybridlive_abr_decisions_total Decisions that changed the encoder or the rung.\n",
    );
    out.push_str("# TYPE hybridlive_abr_decisions_total counter\n");
    for (output, a) in abr {
        let _ = writeln!(
            out,
            "hybridlive_abr_decisions_total{{output=\"{}\",encoder=\"{}\"}} {}",
            label(output),
            label(&a.encoder),
            a.decisions
        );
    }
}

/// WebRTC viewers and the glass-to-glass latency their pages report: the median of the
/// viewers' medians and the worst viewer's p95, so one bad link shows.
fn viewer_metrics(viewers: usize, reported: &[hybridlive_webrtc::ViewerLatency]) -> String {
    let mut out = String::new();
    out.push_str("# HELP hybridlive_webrtc_viewers WebRTC sessions open.\n");
    out.push_str("# TYPE hybridlive_webrtc_viewers gauge\n");
    let _ = writeln!(out, "hybridlive_webrtc_viewers {viewers}");
    if reported.is_empty() {
        return out;
    }
    let mut p50: Vec<f64> = reported.iter().map(|l| l.p50_ms).collect();
    p50.sort_by(f64::total_cmp);
    let median_p50 = p50[p50.len() / 2];
    let worst_p95 = reported.iter().map(|l| l.p95_ms).fold(f64::MIN, f64::max);
    out.push_str("# HELP hybridlive_viewer_latency_ms Glass-to-glass latency reported by WebRTC viewers' pages, milliseconds.\n");
    out.push_str("# TYPE hybridlive_viewer_latency_ms gauge\n");
    let _ = writeln!(
        out,
        "hybridlive_viewer_latency_ms{{stat=\"median_p50\"}} {median_p50}"
    );
    let _ = writeln!(
        out,
        "hybridlive_viewer_latency_ms{{stat=\"worst_p95\"}} {worst_p95}"
    );
    let _ = writeln!(out, "hybridlive_viewer_latency_reports {}", reported.len());
    out
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn compares_tokens() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }
}
