//! The runner's one HTTP server: viewer page, HLS, WHEP, Prometheus metrics and the control API.
//!
//! | route | what |
//! |---|---|
//! | `GET /` | viewer page (hls.js, vendored) |
//! | `GET /assets/hls.min.js`, `/assets/whep-player.js`, `/assets/stamp.js` | the page's scripts |
//! | `GET /favicon.svg` (also `/favicon.ico`) | the page's icon |
//! | `GET /hls/live.m3u8`, `GET /hls/<segment>.ts` | the HLS output (or LL-HLS parts) |
//! | `GET /hls/r<N>/live.m3u8`, `GET /hls/r<N>/<part>` | rendition N of a ladder (`live.m3u8` is then multivariant) |
//! | `POST /whep`, `DELETE /whep/<id>`, `OPTIONS /whep` | WebRTC viewers (WHEP, no token) |
//! | `GET /metrics` | Prometheus text |
//! | `GET /api/status` | JSON status (raised hands' questions only with the token) |
//! | `POST /api/markers` | `{"label": "..."}`: mark a moment for repurposing (token) |
//! | `GET /api/markers` | every marker set, oldest first (the status has the count and latest) |
//! | `POST /api/recording` | `{"action": "start"\|"stop", "output": "rec"}` (token) |
//! | `POST /api/offers` | `{"show": {offer}}` or `{"hide": "id"}` (token) |
//!
//! The transport (connections, timeouts, limits) is in [`transport`]. Routes answer on the
//! runtime's threads when they only copy static data, and so does LL-HLS: its blocking
//! reloads and hinted parts wait as sleeping tasks (thousands at once, see [`crate::llhls`]).
//! The routes that block or lock runner state run on its blocking pool, each kind behind its
//! own bound, so a kind that waits long (WHEP negotiation waiting on ICE gathering) never
//! starves the others. A body is read only after its route accepted the head (token,
//! declared length), with a size limit and a deadline.

#[cfg(any(test, feature = "fuzzing"))]
pub mod abuse;
mod transport;

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::Method;
use tokio::sync::Semaphore;

use crate::events::Events;

use crate::control::Control;
use crate::forwarded::ProxyNet;
use crate::state::AbrStatus;
use transport::{
    BodyError, LIMITS, Places, Request, Response, Transport, declared_length, read_body,
};

/// Largest request body accepted by the API.
pub const MAX_BODY: usize = 16 * 1024;
/// WHEP offers negotiated at once (each waits on ICE gathering on a thread of its own); more
/// get 503 until one finishes.
const MAX_WHEP_IN_FLIGHT: usize = 32;
/// ... and from one client address, so one client cannot take them all.
const MAX_WHEP_IN_FLIGHT_PER_CLIENT: usize = 8;
/// Low-Latency HLS requests in flight, most of them waiting for a part (blocking playlist
/// reload, preload hint) for up to three target durations. A waiting request is a sleeping
/// task, no thread: the bound is its connection's memory and descriptor. More are answered
/// 503 with `Retry-After` at once.
const MAX_HLS_WAITS: usize = 8192;
/// Other handlers that read runner state or a file; they take milliseconds.
const MAX_QUICK: usize = 16;
/// How long a request waits for its turn before it is answered 503.
const TURN_TIMEOUT: Duration = Duration::from_secs(10);
/// Threads of the runtime that drive the connections (the waiting happens elsewhere).
const RUNTIME_THREADS: usize = 2;

const INDEX_HTML: &str = include_str!("../assets/index.html");
const HLS_JS: &[u8] = include_bytes!("../assets/hls.min.js");
const HLS_JS_LICENSE: &str = include_str!("../assets/hls.js.LICENSE");
const FAVICON_SVG: &[u8] = include_bytes!("../assets/favicon.svg");

/// A running server.
pub struct ServerHandle {
    /// The address it listens on (with the real port when 0 was asked for).
    pub addr: std::net::SocketAddr,
    transport: Transport,
}

impl ServerHandle {
    /// Stops accepting requests, lets the open ones finish for a moment and closes the rest.
    pub fn stop(self) {
        self.transport.stop();
    }
}

/// A bound listening socket, not yet served.
pub struct Listener {
    socket: std::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    trusted_proxies: Vec<ProxyNet>,
}

impl Listener {
    /// Serves HTTPS with `config` (see [`crate::config::tls::server_config`]) instead of plain HTTP.
    pub fn with_tls(self, config: Arc<rustls::ServerConfig>) -> Listener {
        Listener {
            tls: Some(config),
            ..self
        }
    }

    /// Believes the `X-Forwarded-For` of requests from these proxies (see [`crate::forwarded`]).
    pub fn with_trusted_proxies(self, trusted_proxies: Vec<ProxyNet>) -> Listener {
        Listener {
            trusted_proxies,
            ..self
        }
    }

    /// Whether it serves HTTPS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }
}

/// Connections the kernel completes before the server accepts them (capped by
/// `net.core.somaxconn`). std's 128 dropped handshakes when a few hundred viewers reloaded at
/// once: a client whose SYN is dropped retries after a second.
const LISTEN_BACKLOG: i32 = 4096;

/// Binds `addr`; done before anything else starts so a busy port fails fast.
pub fn bind(addr: &str) -> anyhow::Result<Listener> {
    let mut failure = None;
    for address in std::net::ToSocketAddrs::to_socket_addrs(addr)
        .with_context(|| format!("cannot listen on {addr}"))?
    {
        match listen(address) {
            Ok(socket) => {
                return Ok(Listener {
                    socket,
                    tls: None,
                    trusted_proxies: Vec::new(),
                });
            }
            Err(e) => failure = Some(e),
        }
    }
    Err(match failure {
        Some(e) => anyhow::anyhow!("cannot listen on {addr}: {e}"),
        None => anyhow::anyhow!("cannot listen on {addr}: it resolves to no address"),
    })
}

fn listen(address: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::STREAM,
        None,
    )?;
    // As std does: a restarted runner need not wait for the old connections' TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.bind(&address.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Limits of the handlers that run on the blocking pool, one per kind.
struct Turns {
    quick: Semaphore,
    hls_waits: Semaphore,
    whep: Arc<Places>,
}

struct Context {
    run: Arc<dyn Control>,
    token: Option<String>,
    hls_dir: Option<PathBuf>,
    segment_times: crate::hls::SegmentTimes,
    turns: Turns,
}

/// Serves `listener` until [`ServerHandle::stop`].
pub fn start(
    listener: Listener,
    run: Arc<dyn Control>,
    token: Option<String>,
    hls_dir: Option<PathBuf>,
    events: Events,
) -> anyhow::Result<ServerHandle> {
    let addr = listener
        .socket
        .local_addr()
        .context("the HTTP server has no local address")?;
    raise_descriptor_limit();
    let hls_window = run.hls_playlist_length().unwrap_or(5);
    let context = Arc::new(Context {
        run,
        token,
        hls_dir: hls_dir.and_then(|d| std::fs::canonicalize(d).ok()),
        segment_times: crate::hls::SegmentTimes::new(hls_window),
        turns: Turns {
            quick: Semaphore::new(MAX_QUICK),
            hls_waits: Semaphore::new(MAX_HLS_WAITS),
            whep: Places::new(MAX_WHEP_IN_FLIGHT, MAX_WHEP_IN_FLIGHT_PER_CLIENT),
        },
    });
    let trusted = Arc::new(listener.trusted_proxies);
    let handler: transport::Handler = Arc::new(move |peer, request| {
        // The connection caps count connections (the proxy's, behind one); the per-client
        // caps of the routes count clients.
        let client = crate::forwarded::client(peer, request.headers(), &trusted);
        Box::pin(route(context.clone(), client, request))
    });
    let transport = Transport::start(
        listener.socket,
        listener.tls,
        handler,
        RUNTIME_THREADS,
        MAX_WHEP_IN_FLIGHT + MAX_QUICK,
        events,
    )
    .context("cannot start the HTTP server")?;
    Ok(ServerHandle { addr, transport })
}

fn respond(status: u16, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Response {
    let mut response = hyper::Response::new(Full::new(body.into()));
    *response.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            hyper::header::HeaderName::from_bytes(name.as_bytes()),
            hyper::header::HeaderValue::from_str(value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    response
}

fn with_header(mut response: Response, name: &'static str, value: &str) -> Response {
    if let Ok(value) = hyper::header::HeaderValue::from_str(value) {
        response.headers_mut().append(name, value);
    }
    response
}

fn text(status: u16, body: impl Into<Bytes>) -> Response {
    respond(
        status,
        &[
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Cache-Control", "no-store"),
        ],
        body,
    )
}

fn json(status: u16, value: &serde_json::Value) -> Response {
    respond(
        status,
        &[
            ("Content-Type", "application/json"),
            ("Cache-Control", "no-store"),
        ],
        value.to_string(),
    )
}

fn error(status: u16, message: &str) -> Response {
    json(status, &serde_json::json!({ "error": message }))
}

/// An error whose connection is closed after it is sent: the rest of that request (a body
/// too large, too slow or broken) is never read.
fn error_closing(status: u16, message: &str) -> Response {
    with_header(error(status, message), "Connection", "close")
}

fn body_error(e: &BodyError, limit: usize) -> Response {
    match e {
        BodyError::TooLarge => error_closing(413, &format!("a body is at most {limit} bytes")),
        BodyError::TooSlow => error_closing(408, "the request body did not arrive in time"),
        BodyError::Unreadable => error_closing(400, "cannot read the request body"),
    }
}

/// Viewer pages may live on another origin: WHEP errors the server makes itself carry the
/// same CORS headers as the WHEP output's own answers, and `Retry-After` is readable.
fn cors(response: Response) -> Response {
    let response = with_header(response, "Access-Control-Allow-Origin", "*");
    with_header(
        response,
        "Access-Control-Expose-Headers",
        "Location, Retry-After",
    )
}

fn busy(retry_after_s: u32, message: &str) -> Response {
    with_header(
        error(503, message),
        "Retry-After",
        &retry_after_s.to_string(),
    )
}

/// Runs `work` on the blocking pool once `turns` has a place for it (503 if none comes within
/// [`TURN_TIMEOUT`]).
async fn on_blocking_pool(
    turns: &Semaphore,
    work: impl FnOnce() -> Response + Send + 'static,
) -> Response {
    let Ok(Ok(turn)) = tokio::time::timeout(TURN_TIMEOUT, turns.acquire()).await else {
        return busy(1, "the server is busy; retry");
    };
    let response = tokio::task::spawn_blocking(work).await;
    drop(turn);
    response.unwrap_or_else(|_| error(500, "internal error"))
}

/// Refuses a body announced larger than `limit` before anything of it is read.
fn refuse_declared(request: &Request, limit: usize) -> Option<Response> {
    (declared_length(request) > limit as u64)
        .then(|| error_closing(413, &format!("a body is at most {limit} bytes")))
}

fn is_get(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

async fn route(context: Arc<Context>, client: IpAddr, request: Request) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    if path == "/whep" || path.starts_with("/whep/") {
        return whep(context, client, request, &path).await;
    }
    if method == Method::POST
        && matches!(
            path.as_str(),
            "/api/markers" | "/api/recording" | "/api/offers"
        )
    {
        return control(context, request, &path).await;
    }
    // The other routes take no body: a small one is ignored, a large one refused unread.
    if let Some(refused) = refuse_declared(&request, MAX_BODY) {
        return refused;
    }
    let script = |source: &'static str| {
        respond(
            200,
            &[
                ("Content-Type", "text/javascript; charset=utf-8"),
                ("Cache-Control", "no-cache"),
            ],
            source,
        )
    };
    match path.as_str() {
        "/" | "/index.html" if is_get(&method) => respond(
            200,
            &[
                ("Content-Type", "text/html; charset=utf-8"),
                ("Cache-Control", "no-cache"),
            ],
            INDEX_HTML,
        ),
        "/assets/hls.min.js" if is_get(&method) => respond(
            200,
            &[
                ("Content-Type", "text/javascript; charset=utf-8"),
                ("Cache-Control", "public, max-age=86400"),
            ],
            Bytes::from_static(HLS_JS),
        ),
        "/assets/hls.js.LICENSE" if is_get(&method) => text(200, HLS_JS_LICENSE),
        // The page's icon; `/favicon.ico` too, for clients that ask without reading the page.
        "/favicon.svg" | "/favicon.ico" if is_get(&method) => respond(
            200,
            &[
                ("Content-Type", "image/svg+xml"),
                ("Cache-Control", "public, max-age=86400"),
            ],
            Bytes::from_static(FAVICON_SVG),
        ),
        "/assets/whep-player.js" if is_get(&method) => script(hybridlive_webrtc::WHEP_PLAYER_JS),
        "/assets/stamp.js" if is_get(&method) => script(hybridlive_webrtc::STAMP_JS),
        "/metrics" if is_get(&method) => {
            let context = context.clone();
            on_blocking_pool(&context.clone().turns.quick, move || {
                respond(
                    200,
                    &[
                        ("Content-Type", "text/plain; version=0.0.4; charset=utf-8"),
                        ("Cache-Control", "no-store"),
                    ],
                    metrics(context.run.as_ref()),
                )
            })
            .await
        }
        "/api/status" if is_get(&method) => {
            let context = context.clone();
            let host = holds_token(&context, &request);
            on_blocking_pool(&context.clone().turns.quick, move || {
                json(200, &status(context.run.as_ref(), host))
            })
            .await
        }
        p if p.starts_with("/hls/") && is_get(&method) => {
            let name = p["/hls/".len()..].to_string();
            match context.run.ll_hls() {
                Some(ll) => {
                    let Ok(_turn) = context.turns.hls_waits.try_acquire() else {
                        return with_header(
                            busy(1, "too many HLS requests at once; retry"),
                            "Access-Control-Allow-Origin",
                            "*",
                        );
                    };
                    let query = request.uri().query().unwrap_or("").to_string();
                    let header = |name: hyper::header::HeaderName| {
                        request
                            .headers()
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string)
                    };
                    let if_none_match = header(hyper::header::IF_NONE_MATCH);
                    let accept_encoding = header(hyper::header::ACCEPT_ENCODING);
                    let conditions = crate::llhls::Conditions {
                        if_none_match: if_none_match.as_deref(),
                        accept_encoding: accept_encoding.as_deref(),
                    };
                    ll_hls_response(ll.answer(&name, &query, conditions).await)
                }
                None => {
                    let context = context.clone();
                    on_blocking_pool(&context.clone().turns.quick, move || {
                        hls_file(&context, &name)
                    })
                    .await
                }
            }
        }
        "/api/time" if is_get(&method) => server_time(),
        "/api/markers" if is_get(&method) => {
            let markers = context.run.shared().with(|s| s.markers.all().to_vec());
            json(200, &serde_json::json!({ "markers": markers }))
        }
        "/api/markers" | "/api/recording" | "/api/offers" => error(405, "use POST"),
        "/" | "/metrics" | "/api/status" => error(405, "use GET"),
        _ => error(404, "not found"),
    }
}

/// The server's realtime clock, which capture stamps are written in (UTC): a viewer elsewhere
/// estimates its clock's offset from it (`hybridlive latency-test --url`). Never cached: a
/// stored answer would be a wrong clock.
fn server_time() -> Response {
    let ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    respond(
        200,
        &[
            ("Content-Type", "application/json"),
            ("Cache-Control", "no-store"),
            ("Access-Control-Allow-Origin", "*"),
        ],
        serde_json::json!({ "utc_ns": ns }).to_string(),
    )
}

/// An answer of the LL-HLS store as an HTTP response.
fn ll_hls_response(reply: crate::llhls::Reply) -> Response {
    let mut headers = vec![
        ("Cache-Control", &*reply.cache),
        ("Access-Control-Allow-Origin", "*"),
    ];
    if reply.status != 304 {
        headers.push(("Content-Type", reply.content_type));
    }
    if let Some(etag) = &reply.etag {
        headers.push(("ETag", etag));
    }
    if let Some(encoding) = reply.content_encoding {
        headers.push(("Content-Encoding", encoding));
    }
    if reply.vary_encoding {
        headers.push(("Vary", "Accept-Encoding"));
    }
    respond(reply.status, &headers, Bytes::from_owner(reply.body))
}

/// Raises this process's soft limit of open descriptors to its hard limit: thousands of
/// viewers long-polling LL-HLS hold a connection each, and the transport caps connections at
/// half the descriptors left when it starts, so this runs before it does.
fn raise_descriptor_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write only the struct they are given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// `host`: the request holds the control token, and may read the viewers' questions.
fn status(run: &dyn Control, host: bool) -> serde_json::Value {
    let mut status = run
        .shared()
        .with(|s| serde_json::to_value(&*s).unwrap_or_default());
    if let Some(whep) = run.whep() {
        // Viewers by an opaque id (never the WHEP resource, which ends the session), and their
        // questions for the host only.
        let audience = match host {
            true => hybridlive_webrtc::Audience::Host,
            false => hybridlive_webrtc::Audience::Public,
        };
        let hands: Vec<serde_json::Value> = whep
            .raised_hands(audience)
            .into_iter()
            .map(|h| serde_json::json!({"viewer": h.viewer, "text": h.text, "utc_ms": h.at_ms}))
            .collect();
        status["webrtc"] = serde_json::json!({
            "viewers": whep.session_count(),
            "raised_hands": hands,
        });
        // Each viewer's rung, when the output serves a ladder: figures only, in no particular
        // order, without the session's id (its credential) or address.
        let rungs: Vec<serde_json::Value> = whep
            .sessions()
            .into_iter()
            .filter_map(|s| s.rung)
            .map(|r| {
                serde_json::json!({
                    "rung": r.rung,
                    "width": r.width,
                    "height": r.height,
                    "bitrate_bps": r.bitrate,
                    "target": r.target,
                    "estimate_bps": r.estimate_bps,
                    "throughput_bps": r.throughput_bps,
                    "loss": r.loss,
                    "rtt_ms": r.rtt.map(|d| d.as_secs_f64() * 1000.0),
                    "switches": r.switches,
                    "pinned": r.pinned,
                    "pin_overridden": r.pin_overridden,
                    "reason": r.reason,
                })
            })
            .collect();
        let counts = whep.rung_counts();
        if !counts.viewers.is_empty() {
            status["webrtc"]["sessions"] = serde_json::Value::Array(rungs);
            status["webrtc"]["viewers_per_rung"] = serde_json::json!(counts.viewers);
            status["webrtc"]["rung_switches"] = serde_json::json!(counts.switches_total);
        }
    }
    status
}

/// WHEP (viewer routes: no token; an SDP offer of at most `MAX_OFFER_BYTES`).
async fn whep(context: Arc<Context>, client: IpAddr, request: Request, path: &str) -> Response {
    if context.run.whep().is_none() {
        return cors(error(503, "no WebRTC output is running"));
    }
    let limit = hybridlive_webrtc::MAX_OFFER_BYTES;
    if declared_length(&request) > limit as u64 {
        return cors(error_closing(
            413,
            &format!("an SDP offer is at most {limit} bytes"),
        ));
    }
    let method = request.method().as_str().to_string();
    let content_type = request
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = match read_body(request.into_body(), limit, LIMITS.body_deadline).await {
        Ok(body) => body,
        Err(e) => return cors(body_error(&e, limit)),
    };
    let resource = path["/whep".len()..].to_string();
    // As `handle_http` tells an offer (to the endpoint) from a request on a session.
    let is_offer = method == "POST"
        && resource
            .strip_prefix('/')
            .filter(|id| !id.is_empty())
            .is_none();
    let answer = {
        let context = context.clone();
        move || {
            let Some(whep) = context.run.whep() else {
                return cors(error(503, "no WebRTC output is running"));
            };
            let reply = whep.handle_http(
                "/whep",
                hybridlive_webrtc::HttpRequest {
                    method: &method,
                    path: &resource,
                    content_type: content_type.as_deref(),
                    body: &body,
                },
            );
            let headers: Vec<(&str, &str)> = reply
                .headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            respond(reply.status, &headers, reply.body)
        }
    };
    // An offer waits on ICE gathering: those have places of their own, a few per client.
    if is_offer {
        let Some(turn) = Places::take(&context.turns.whep, client) else {
            return cors(busy(2, "too many WebRTC sessions are being set up; retry"));
        };
        let response = tokio::task::spawn_blocking(answer).await;
        drop(turn);
        return response.unwrap_or_else(|_| cors(error(500, "internal error")));
    }
    on_blocking_pool(&context.turns.quick, answer).await
}

/// The control API: the bearer token first, then a body of at most [`MAX_BODY`] bytes.
async fn control(context: Arc<Context>, request: Request, path: &str) -> Response {
    if context.token.is_none() {
        return error(
            403,
            "write endpoints are disabled: set [server] token or token_env in the pipeline file",
        );
    }
    if !holds_token(&context, &request) {
        return with_header(
            error(401, "missing or wrong bearer token"),
            "WWW-Authenticate",
            "Bearer",
        );
    }
    if declared_length(&request) > MAX_BODY as u64 {
        return error_closing(413, "request body too large");
    }
    let body = match read_body(request.into_body(), MAX_BODY, LIMITS.body_deadline).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => return error_closing(413, "request body too large"),
        Err(e) => return body_error(&e, MAX_BODY),
    };
    let path = path.to_string();
    on_blocking_pool(&context.clone().turns.quick, move || match path.as_str() {
        "/api/markers" => markers(&context, &body),
        "/api/offers" => offers(&context, &body),
        _ => recording(&context, &body),
    })
    .await
}

/// Whether `request` carries the control token (`Authorization: Bearer <token>`).
fn holds_token(context: &Context, request: &Request) -> bool {
    let given = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match (&context.token, given) {
        (Some(expected), Some(given)) => constant_time_eq(given.as_bytes(), expected.as_bytes()),
        _ => false,
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
fn offers(context: &Context, body: &[u8]) -> Response {
    let object = match parse_object(body) {
        Ok(o) => o,
        Err(e) => return error(400, &e),
    };
    let taken = match (object.get("show"), object.get("hide")) {
        (Some(offer @ serde_json::Value::Object(_)), None) => {
            context.run.control_offer(Some(&offer.to_string()), None)
        }
        (None, Some(serde_json::Value::String(id))) => context.run.control_offer(None, Some(id)),
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

fn markers(context: &Context, body: &[u8]) -> Response {
    let object = match parse_object(body) {
        Ok(o) => o,
        Err(e) => return error(400, &e),
    };
    let label = match object.get("label") {
        None => String::new(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(_) => return error(400, "`label` must be a string"),
    };
    let marker = context.run.marker(label);
    json(
        201,
        &serde_json::json!({"utc": crate::state::rfc3339(marker.utc_ns), "utc_ns": marker.utc_ns, "label": marker.label}),
    )
}

fn recording(context: &Context, body: &[u8]) -> Response {
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
    match context.run.recording(start, output) {
        Ok(names) => json(
            202,
            &serde_json::json!({"action": if start { "start" } else { "stop" }, "outputs": names}),
        ),
        Err(e) => error(404, &e),
    }
}

fn hls_file(context: &Context, name: &str) -> Response {
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
            respond(
                200,
                &[
                    ("Content-Type", content_type),
                    ("Cache-Control", cache),
                    ("Access-Control-Allow-Origin", "*"),
                ],
                data,
            )
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
pub fn metrics(run: &dyn Control) -> String {
    let mut out = run.shared().with(|s| {
        let mut out = String::new();
        // Two gauges, not a summary: the quantiles are the meter's over its window, and
        // there is no running sum to go with them.
        out.push_str("# HELP hybridlive_latency_p50_seconds Capture-to-here latency per path, median over the meter window.\n");
        out.push_str("# TYPE hybridlive_latency_p50_seconds gauge\n");
        for (path, l) in &s.latency {
            let _ = writeln!(out, "hybridlive_latency_p50_seconds{{path=\"{}\"}} {}", label(path), l.p50_ms / 1000.0);
        }
        out.push_str("# HELP hybridlive_latency_p95_seconds Capture-to-here latency per path, 95th percentile over the meter window.\n");
        out.push_str("# TYPE hybridlive_latency_p95_seconds gauge\n");
        for (path, l) in &s.latency {
            let _ = writeln!(out, "hybridlive_latency_p95_seconds{{path=\"{}\"}} {}", label(path), l.p95_ms / 1000.0);
        }
        out.push_str("# HELP hybridlive_latency_frames_total Frames measured per path.\n");
        out.push_str("# TYPE hybridlive_latency_frames_total counter\n");
        for (path, l) in &s.latency {
            let _ = writeln!(out, "hybridlive_latency_frames_total{{path=\"{}\"}} {}", label(path), l.count);
        }
        out.push_str("# HELP hybridlive_encoder_bits_per_second Encoder output over the last second.\n");
        out.push_str("# TYPE hybridlive_encoder_bits_per_second gauge\n");
        for (name, e) in &s.encoders {
            let _ = writeln!(out, "hybridlive_encoder_bits_per_second{{encoder=\"{}\"}} {}", label(name), e.kbps * 1000.0);
        }
        out.push_str("# HELP hybridlive_encoder_frames_per_second Video frames encoded over the last second.\n");
        out.push_str("# TYPE hybridlive_encoder_frames_per_second gauge\n");
        for (name, e) in &s.encoders {
            if let Some(fps) = e.fps {
                let _ = writeln!(out, "hybridlive_encoder_frames_per_second{{encoder=\"{}\"}} {fps}", label(name));
            }
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
    if let Some(whep) = run.whep() {
        out.push_str(&viewer_metrics(
            whep.session_count(),
            &whep.viewer_latencies(),
        ));
        let counts = whep.rung_counts();
        if !counts.viewers.is_empty() {
            out.push_str("# HELP hybridlive_webrtc_rung_viewers WebRTC viewers receiving each rung of the ladder (0 the highest).\n");
            out.push_str("# TYPE hybridlive_webrtc_rung_viewers gauge\n");
            for (rung, viewers) in counts.viewers.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "hybridlive_webrtc_rung_viewers{{rung=\"{rung}\"}} {viewers}"
                );
            }
            out.push_str("# HELP hybridlive_webrtc_rung_switches_total Rung switches completed by WebRTC viewers.\n");
            out.push_str("# TYPE hybridlive_webrtc_rung_switches_total counter\n");
            let _ = writeln!(
                out,
                "hybridlive_webrtc_rung_switches_total {}",
                counts.switches_total
            );
        }
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

/// One gauge of [`abr_metrics`]: name suffix, help text, value (in base units).
type AbrGauge = (&'static str, &'static str, fn(&AbrStatus) -> Option<u64>);

/// Per output steered by an abrcontroller: what it decided last.
fn abr_metrics(out: &mut String, abr: &std::collections::BTreeMap<String, AbrStatus>) {
    let gauges: [AbrGauge; 4] = [
        (
            "target_bits_per_second",
            "Rate the abrcontroller believes the uplink carries.",
            |a| Some(a.target_kbps.saturating_mul(1000)),
        ),
        (
            "bitrate_bits_per_second",
            "Bitrate the abrcontroller gave the encoder.",
            |a| Some(a.bitrate_kbps.saturating_mul(1000)),
        ),
        (
            "rung",
            "Ladder rung the abrcontroller chose, 0 the highest.",
            |a| a.rung.map(u64::from),
        ),
        (
            "estimate_bits_per_second",
            "Explicit estimate the abrcontroller followed.",
            |a| a.estimate_kbps.map(|k| k.saturating_mul(1000)),
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
    out.push_str("# HELP hybridlive_viewer_latency_p50_seconds Glass-to-glass latency WebRTC viewers' pages report: the median of their medians.\n");
    out.push_str("# TYPE hybridlive_viewer_latency_p50_seconds gauge\n");
    let _ = writeln!(
        out,
        "hybridlive_viewer_latency_p50_seconds {}",
        median_p50 / 1000.0
    );
    out.push_str("# HELP hybridlive_viewer_latency_worst_p95_seconds Glass-to-glass latency WebRTC viewers' pages report: the worst viewer's 95th percentile.\n");
    out.push_str("# TYPE hybridlive_viewer_latency_worst_p95_seconds gauge\n");
    let _ = writeln!(
        out,
        "hybridlive_viewer_latency_worst_p95_seconds {}",
        worst_p95 / 1000.0
    );
    out.push_str("# HELP hybridlive_viewer_latency_reports WebRTC viewers whose pages report their latency.\n");
    out.push_str("# TYPE hybridlive_viewer_latency_reports gauge\n");
    let _ = writeln!(out, "hybridlive_viewer_latency_reports {}", reported.len());
    out
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;
    use crate::control::Control;
    use crate::state::{EncoderStats, Latency, Marker, Shared};

    /// A run with only figures: what /metrics reads.
    #[derive(Default)]
    struct Figures(Shared);

    impl Control for Figures {
        fn shared(&self) -> &Shared {
            &self.0
        }
        fn whep(&self) -> Option<hybridlive_webrtc::WhepOutput> {
            None
        }
        fn ll_hls(&self) -> Option<std::sync::Arc<crate::llhls::LlHls>> {
            None
        }
        fn hls_playlist_length(&self) -> Option<usize> {
            None
        }
        fn control_offer(&self, _: Option<&str>, _: Option<&str>) -> usize {
            0
        }
        fn marker(&self, label: String) -> Marker {
            Marker { utc_ns: 0, label }
        }
        fn recording(&self, _: bool, _: Option<&str>) -> Result<Vec<String>, String> {
            Ok(Vec::new())
        }
    }

    #[test]
    fn metrics_are_in_base_units_without_quantile_gauges() {
        let run = Figures::default();
        run.0.with(|s| {
            s.latency.insert(
                "hls".into(),
                Latency {
                    p50_ms: 120.0,
                    p95_ms: 250.0,
                    count: 90,
                },
            );
            s.encoders.insert(
                "video".into(),
                EncoderStats {
                    bytes: 1000,
                    buffers: 30,
                    kbps: 800.0,
                    fps: Some(30.0),
                },
            );
            s.encoders.insert(
                "audio".into(),
                EncoderStats {
                    bytes: 100,
                    buffers: 47,
                    kbps: 128.0,
                    fps: None,
                },
            );
        });
        let text = super::metrics(&run);
        for line in [
            "hybridlive_latency_p50_seconds{path=\"hls\"} 0.12",
            "hybridlive_latency_p95_seconds{path=\"hls\"} 0.25",
            "hybridlive_encoder_bits_per_second{encoder=\"video\"} 800000",
            "hybridlive_encoder_frames_per_second{encoder=\"video\"} 30",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
        assert!(!text.contains("quantile="), "{text}");
        assert!(!text.contains("_ms{") && !text.contains("kbps"), "{text}");
        assert!(
            !text.contains("frames_per_second{encoder=\"audio\"}"),
            "audio has no frame rate: {text}"
        );
        // Every sample belongs to a family declared with HELP and TYPE.
        for sample in text.lines().filter(|l| !l.starts_with('#')) {
            let name = sample.split(['{', ' ']).next().unwrap_or_default();
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} has no TYPE line"
            );
        }
    }

    #[test]
    fn compares_tokens() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }
}
