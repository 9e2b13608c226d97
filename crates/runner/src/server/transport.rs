//! The server's transport: hyper 1 (HTTP/1.1) on a tokio runtime of its own, with the limits
//! that keep one client from hurting the others.
//!
//! - The accept loop never ends on an error: out of descriptors (EMFILE, ENFILE) or memory it
//!   reports once, backs off and listens on; a connection aborted before it was accepted is
//!   skipped.
//! - Open connections are capped, in total (half the descriptors the process had left when the
//!   server started) and per client address; one over the cap is answered 503 at once and
//!   closed, without reading it.
//! - Each connection is one task: a client that stops reading stalls only its own task, and
//!   loses its connection once a write made no progress for a while. A request head (and an
//!   idle keep-alive connection) has a deadline; a connection finishes its request and closes
//!   when it reaches its lifetime. See [`LIMITS`].
//!
//! - With a certificate ([`Transport::start`]'s `tls`) every connection is HTTPS: the TLS
//!   handshake has the request head's deadline, and counts against the same caps, so a
//!   handshake that never completes frees its place like a slow head does. A plain HTTP
//!   request on that port is answered 400, in plain HTTP, saying to use HTTPS.
//!
//! Bodies are the routes' business: they are read only through [`read_body`], with a size
//! limit and a deadline.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::events::Events;

/// What every route answers with.
pub type Response = hyper::Response<Full<Bytes>>;
/// A request as the routes get it: the head, and a body to read with [`read_body`].
pub type Request = hyper::Request<Incoming>;
/// A route table: client address and request in, response out.
pub type Handler =
    Arc<dyn Fn(IpAddr, Request) -> Pin<Box<dyn Future<Output = Response> + Send>> + Send + Sync>;

/// The timeouts of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A request head must arrive within this, and an idle keep-alive connection is closed
    /// after it (slowloris).
    pub header_timeout: Duration,
    /// A request body must arrive within this once its head has.
    pub body_deadline: Duration,
    /// A write that makes no progress for this long ends the connection: its client stopped
    /// reading.
    pub write_stall: Duration,
    /// A connection is asked to close (after its current request) when it is this old...
    pub max_lifetime: Duration,
    /// ...and closed when it has not after this much more.
    pub close_grace: Duration,
    /// After the server's last response on a connection, what the client still sends (the
    /// rest of a refused body) is read and dropped for this long, so closing does not reset
    /// the connection under the response the client has yet to read.
    pub linger: Duration,
}

/// The limits the runner serves with.
pub const LIMITS: Limits = Limits {
    header_timeout: Duration::from_secs(15),
    body_deadline: Duration::from_secs(15),
    write_stall: Duration::from_secs(15),
    max_lifetime: Duration::from_secs(600),
    close_grace: Duration::from_secs(30),
    linger: Duration::from_secs(2),
};

/// At most this much is read and dropped while lingering.
const MAX_LINGER_BYTES: usize = 256 * 1024;
/// Request heads larger than this are refused (hyper answers 431).
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most connections whatever the descriptor limit.
const MAX_CONNECTIONS: usize = 16_384;
/// Fewest connections, however few descriptors are left.
const MIN_CONNECTIONS: usize = 16;
/// One client address may hold at most this share of the connections (a NAT'd school is one
/// address: generous, but one address can never take them all).
const PER_CLIENT_SHARE: usize = 4;
/// How long the accept loop rests after running out of descriptors or memory.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// The first byte of a TLS handshake record: a client that starts otherwise speaks plain HTTP.
const TLS_HANDSHAKE: u8 = 0x16;
/// How long `stop` waits for open requests to finish.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// The answer to a connection over the caps: written without waiting, then closed.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
Content-Type: application/json\r\nCache-Control: no-store\r\nRetry-After: 2\r\n\
Access-Control-Allow-Origin: *\r\nAccess-Control-Expose-Headers: Location, Retry-After\r\n\
Connection: close\r\nContent-Length: 48\r\n\r\n\
{\"error\":\"too many connections; retry shortly\"}\n";

/// Why a body could not be read.
#[derive(Debug)]
pub enum BodyError {
    /// It is larger than the route takes (413).
    TooLarge,
    /// It did not arrive within its deadline (408).
    TooSlow,
    /// The connection failed or the framing was broken (400).
    Unreadable,
}

/// Reads a body of at most `limit` bytes within `deadline` ([`Limits::body_deadline`]).
/// Check a declared Content-Length with [`declared_length`] first: this one stops at the
/// limit, but only after reading up to it.
pub async fn read_body(
    body: Incoming,
    limit: usize,
    deadline: Duration,
) -> Result<Bytes, BodyError> {
    match tokio::time::timeout(deadline, Limited::new(body, limit).collect()).await {
        Err(_) => Err(BodyError::TooSlow),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(BodyError::TooLarge),
        Ok(Err(_)) => Err(BodyError::Unreadable),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// The Content-Length a request announces (0 without one; chunked bodies are bounded while
/// they are read).
pub fn declared_length(request: &Request) -> u64 {
    request
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Places shared by all clients (open connections, WHEP negotiations), at most `max_total`
/// in all and `max_per_client` per client address.
pub struct Places {
    max_total: usize,
    max_per_client: usize,
    taken: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// A place taken; given back when dropped.
pub struct Place {
    places: Arc<Places>,
    client: IpAddr,
}

impl Places {
    /// `max_total` places, `max_per_client` of them for one address.
    pub fn new(max_total: usize, max_per_client: usize) -> Arc<Places> {
        Arc::new(Places {
            max_total,
            max_per_client,
            taken: Mutex::new((0, HashMap::new())),
        })
    }

    /// A place for `client`, unless all are taken or `client` has its share.
    pub fn take(places: &Arc<Places>, client: IpAddr) -> Option<Place> {
        let mut taken = places.taken.lock().unwrap_or_else(|e| e.into_inner());
        let (total, per_client) = &mut *taken;
        let mine = per_client.entry(client).or_insert(0);
        if *total >= places.max_total || *mine >= places.max_per_client {
            if *mine == 0 {
                per_client.remove(&client);
            }
            return None;
        }
        *mine += 1;
        *total += 1;
        Some(Place {
            places: places.clone(),
            client,
        })
    }

    /// Places taken now.
    fn in_use(&self) -> usize {
        self.taken.lock().map_or(0, |t| t.0)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut taken = self.places.taken.lock().unwrap_or_else(|e| e.into_inner());
        let (total, per_client) = &mut *taken;
        *total = total.saturating_sub(1);
        if let Some(mine) = per_client.get_mut(&self.client) {
            *mine = mine.saturating_sub(1);
            if *mine == 0 {
                per_client.remove(&self.client);
            }
        }
    }
}

/// Half the descriptors this process has left, within [`MIN_CONNECTIONS`] and
/// [`MAX_CONNECTIONS`]: connections alone can never exhaust them, and the pipeline (files,
/// sockets of WebRTC sessions) keeps the other half.
fn connection_cap() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
    } else {
        1024
    };
    let in_use = std::fs::read_dir("/proc/self/fd").map_or(64, |d| d.count());
    (soft.saturating_sub(in_use) / 2).clamp(MIN_CONNECTIONS, MAX_CONNECTIONS)
}

/// The running transport.
pub struct Transport {
    runtime: tokio::runtime::Runtime,
    stop: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
    table: Arc<Places>,
}

impl Transport {
    /// Serves `listener` with `handler` on a runtime of `workers` threads, whose blocking pool
    /// (for the handlers that wait) has at most `blocking` threads; over TLS with `tls`.
    pub fn start(
        listener: std::net::TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
        handler: Handler,
        workers: usize,
        blocking: usize,
        events: Events,
    ) -> io::Result<Transport> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .max_blocking_threads(blocking)
            .thread_name("http")
            .enable_io()
            .enable_time()
            .build()?;
        listener.set_nonblocking(true)?;
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let max_total = connection_cap();
        let table = Places::new(
            max_total,
            (max_total / PER_CLIENT_SHARE).max(MIN_CONNECTIONS / 2),
        );
        let (stop, stopped) = watch::channel(false);
        let accept = runtime.spawn(accept_loop(
            listener,
            tls.map(TlsAcceptor::from),
            table.clone(),
            handler,
            stopped,
            events,
        ));
        Ok(Transport {
            runtime,
            stop,
            accept,
            table,
        })
    }

    /// Stops accepting, lets open requests finish for a moment, then ends every connection.
    pub fn stop(self) {
        let _ = self.stop.send(true);
        let table = self.table;
        self.runtime.block_on(async {
            let _ = self.accept.await;
            let deadline = tokio::time::Instant::now() + STOP_GRACE;
            while table.in_use() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        // Handlers still waiting (an ICE gathering, a blocking playlist reload) are not waited
        // for: their clients are gone with the connections.
        self.runtime.shutdown_timeout(Duration::from_millis(200));
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    tls: Option<TlsAcceptor>,
    table: Arc<Places>,
    handler: Handler,
    mut stopped: watch::Receiver<bool>,
    events: Events,
) {
    let mut reported: Vec<Option<i32>> = Vec::new();
    loop {
        let accepted = tokio::select! {
            _ = stopped.changed() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => match Places::take(&table, peer.ip()) {
                Some(admission) => {
                    let _ = stream.set_nodelay(true);
                    match &tls {
                        None => tokio::spawn(serve(
                            stream,
                            peer.ip(),
                            handler.clone(),
                            stopped.clone(),
                            admission,
                            LIMITS,
                        )),
                        Some(acceptor) => tokio::spawn(serve_tls(
                            stream,
                            peer.ip(),
                            acceptor.clone(),
                            handler.clone(),
                            stopped.clone(),
                            admission,
                            LIMITS,
                        )),
                    };
                }
                // Without reading: it is closed at once whatever it sent. A TLS client would
                // take the plain answer for a broken handshake: it only sees the close.
                None => {
                    if tls.is_none() {
                        let _ = stream.try_write(REFUSAL);
                    }
                }
            },
            Err(e) => {
                // A client that gave up before its connection was accepted (ECONNABORTED)
                // costs nothing; a lack of descriptors or memory passes as connections close.
                // Neither ends the loop, and each kind is reported once.
                if !reported.contains(&e.raw_os_error()) {
                    reported.push(e.raw_os_error());
                    events.emit(
                        "warning",
                        serde_json::json!({
                            "message": format!("HTTP server: cannot accept a connection ({e}); it keeps listening")
                        }),
                    );
                }
                if e.raw_os_error() != Some(libc::ECONNABORTED) {
                    tokio::select! {
                        _ = stopped.changed() => return,
                        _ = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    }
                }
            }
        }
    }
}

/// Serves one connection until the client closes it, it breaks a limit, it reaches its
/// lifetime or the server stops. `admission` is released when it ends.
pub(super) async fn serve<Io>(
    io: Io,
    client: IpAddr,
    handler: Handler,
    stopped: watch::Receiver<bool>,
    admission: impl Send + 'static,
    limits: Limits,
) where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = StallGuard::new(io, &limits);
    serve_guarded(io, client, handler, stopped, admission, limits).await;
}

/// [`serve`] over TLS: the handshake first, complete within [`Limits::header_timeout`] of the
/// connection's start; a client that speaks plain HTTP instead gets a 400 that says to use
/// HTTPS.
async fn serve_tls(
    stream: tokio::net::TcpStream,
    client: IpAddr,
    acceptor: TlsAcceptor,
    handler: Handler,
    stopped: watch::Receiver<bool>,
    admission: impl Send + 'static,
    limits: Limits,
) {
    // One deadline for the first byte and the whole handshake: a client that sends a byte at
    // a time gets no more time than a silent one.
    let deadline = tokio::time::Instant::now() + limits.header_timeout;
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
        Ok(Ok(1..)) => {}
        // Silent past the deadline, closed, or failed: the place is freed with the task.
        _ => return,
    }
    if first[0] != TLS_HANDSHAKE {
        serve(
            stream,
            client,
            plain_http_refusal(),
            stopped,
            admission,
            limits,
        )
        .await;
        return;
    }
    // Under the TLS layer, so that a client that stops reading is caught in the handshake
    // too, and closing lingers on the socket itself.
    let handshake = acceptor.accept(StallGuard::new(stream, &limits));
    // A handshake that failed (the client distrusts the certificate, or sent garbage) has
    // already been answered with an alert by rustls; one that stalled is dropped.
    if let Ok(Ok(tls)) = tokio::time::timeout_at(deadline, handshake).await {
        serve_guarded(tls, client, handler, stopped, admission, limits).await;
    }
}

/// The routes of a TLS port for a plain HTTP client: every request is answered 400, then the
/// connection is closed.
fn plain_http_refusal() -> Handler {
    Arc::new(|_client, request| {
        let host = request
            .headers()
            .get(hyper::header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| {
                h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '-' | '[' | ']'))
            })
            .unwrap_or("this-server")
            .to_string();
        let body = serde_json::json!({
            "error": format!("this server speaks HTTPS: use https://{host}/"),
        })
        .to_string()
            + "\n";
        Box::pin(async move {
            let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
            *response.status_mut() = hyper::StatusCode::BAD_REQUEST;
            let headers = response.headers_mut();
            headers.insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            headers.insert(
                hyper::header::CACHE_CONTROL,
                hyper::header::HeaderValue::from_static("no-store"),
            );
            headers.insert(
                hyper::header::CONNECTION,
                hyper::header::HeaderValue::from_static("close"),
            );
            response
        })
    })
}

/// [`serve`] on a socket already behind a [`StallGuard`] (under the TLS layer for HTTPS).
async fn serve_guarded<Io>(
    io: Io,
    client: IpAddr,
    handler: Handler,
    mut stopped: watch::Receiver<bool>,
    admission: impl Send + 'static,
    limits: Limits,
) where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _admission = admission;
    let service = hyper::service::service_fn(move |request| {
        let response = handler(client, request);
        async move { Ok::<_, std::convert::Infallible>(response.await) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEAD_BYTES.max(8192))
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let end = tokio::time::sleep(limits.max_lifetime);
    tokio::pin!(end);
    let mut closing = false;
    loop {
        tokio::select! {
            // Errors are the client's (reset, timeout, garbage): nothing to report.
            _ = connection.as_mut() => return,
            _ = &mut end => {
                if closing {
                    return;
                }
                connection.as_mut().graceful_shutdown();
                end.as_mut().reset(tokio::time::Instant::now() + limits.close_grace);
                closing = true;
            }
            changed = stopped.changed(), if !closing => {
                connection.as_mut().graceful_shutdown();
                let grace = if changed.is_ok() { STOP_GRACE } else { Duration::ZERO };
                end.as_mut().reset(tokio::time::Instant::now() + grace);
                closing = true;
            }
        }
    }
}

/// A socket whose writes fail once one makes no progress for `stall`: hyper has no write
/// timeout, and a client that never reads would otherwise keep its task (and whatever its
/// response holds) forever.
struct StallGuard<Io> {
    io: Io,
    stall: Duration,
    stalled_since: Option<Pin<Box<tokio::time::Sleep>>>,
    linger: Duration,
    /// Set once the write side is shut: until when to drain, and how much was.
    lingering: Option<(Pin<Box<tokio::time::Sleep>>, usize)>,
}

impl<Io> StallGuard<Io> {
    fn new(io: Io, limits: &Limits) -> Self {
        Self {
            io,
            stall: limits.write_stall,
            stalled_since: None,
            linger: limits.linger,
            lingering: None,
        }
    }

    /// Passes a write's outcome through, arming the stall timer while it is pending.
    fn guard<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match poll {
            Poll::Ready(result) => {
                self.stalled_since = None;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let stall = self.stall;
                let timer = self
                    .stalled_since
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
                ready!(timer.as_mut().poll(cx));
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client stopped reading",
                )))
            }
        }
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for StallGuard<Io> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<Io: AsyncRead + AsyncWrite + Unpin> AsyncWrite for StallGuard<Io> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        self.guard(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.guard(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_flush(cx);
        self.guard(cx, poll)
    }

    /// Shuts the write side (the client sees the end of the response at once), then drains
    /// what the client still sends for [`Limits::linger`], at most [`MAX_LINGER_BYTES`]:
    /// closing a socket with unread data resets the connection, and a reset can reach the
    /// client before it read the response (a 413 for a body it is still sending).
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.lingering.is_none() {
            let poll = Pin::new(&mut this.io).poll_shutdown(cx);
            ready!(this.guard(cx, poll))?;
            this.lingering = Some((Box::pin(tokio::time::sleep(this.linger)), 0));
        }
        let Some((until, drained)) = &mut this.lingering else {
            return Poll::Ready(Ok(()));
        };
        let mut scratch = [0u8; 4096];
        while *drained < MAX_LINGER_BYTES {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => *drained += buf.filled().len(),
                // The client closed too, or failed: nothing left to protect.
                Poll::Ready(_) => return Poll::Ready(Ok(())),
                Poll::Pending => return until.as_mut().poll(cx).map(Ok),
            }
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_one_complete_response() {
        let text = std::str::from_utf8(REFUSAL).expect("ASCII");
        let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .and_then(|v| v.parse().ok())
            .expect("Content-Length");
        assert_eq!(length, body.len());
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(serde_json::from_str::<serde_json::Value>(body).is_ok());
    }

    /// A client that starts a TLS handshake and stalls loses its connection after the head
    /// timeout, and its place (counted against the connection caps) comes back.
    #[tokio::test]
    async fn a_stalled_tls_handshake_is_dropped_and_frees_its_place() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

        let dir = std::env::temp_dir().join(format!("hybridlive-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a folder");
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let made = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("the openssl CLI runs");
        assert!(made.status.success(), "{made:?}");
        let config = crate::config::tls::server_config(&cert, &key).expect("a TLS config");
        let _ = std::fs::remove_dir_all(&dir);

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server_end, peer) = listener.accept().await.expect("accept");
        let places = Places::new(4, 4);
        let place = Places::take(&places, peer.ip()).expect("a place");
        // The first bytes of a handshake record, and nothing more.
        client
            .write_all(&[TLS_HANDSHAKE, 0x03, 0x01])
            .await
            .expect("write");
        let handler: Handler = Arc::new(|_, _| {
            Box::pin(async { hyper::Response::new(Full::new(Bytes::from_static(b"ok"))) })
        });
        let limits = Limits {
            header_timeout: Duration::from_millis(300),
            ..LIMITS
        };
        let (_running, stopped) = watch::channel(false);
        let connection = tokio::spawn(serve_tls(
            server_end,
            peer.ip(),
            TlsAcceptor::from(config),
            handler,
            stopped,
            place,
            limits,
        ));
        tokio::time::timeout(Duration::from_secs(30), connection)
            .await
            .expect("the stalled handshake is given up")
            .expect("the connection task ends cleanly");
        assert_eq!(places.in_use(), 0, "the place is given back");
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(30), client.read_to_end(&mut rest))
            .await
            .expect("the client sees the connection close");
        assert!(closed.is_ok() || rest.is_empty(), "{closed:?}");
    }

    #[test]
    fn one_client_cannot_take_every_place() {
        let places = Places::new(8, 2);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let held: Vec<Place> = (0..2)
            .map(|_| Places::take(&places, a).expect("within the client's share"))
            .collect();
        assert!(Places::take(&places, a).is_none(), "over the share");
        let other = Places::take(&places, b).expect("another client still gets in");
        drop(held);
        assert!(Places::take(&places, a).is_some(), "places come back");
        drop(other);
        let many: Vec<Place> = (0..8u8)
            .filter_map(|i| Places::take(&places, [10, 0, 1, i].into()))
            .collect();
        assert_eq!(many.len(), 8);
        assert!(
            Places::take(&places, [10, 0, 2, 1].into()).is_none(),
            "over the total"
        );
        drop(many);
        assert_eq!(places.in_use(), 0);
    }
}
