//! One connection of the server's transport abused in memory: a client script (bytes sent,
//! pauses, reads, a half-close) against [`serve`] with short limits and a small route table
//! that reads bodies the way the real routes do. The `http_connection` fuzz target (feature
//! `fuzzing`) feeds it arbitrary scripts; the tests below are the named abuses (a huge
//! Content-Length, slow headers, a slow reader, pipelining).
//!
//! What must hold whatever the client does: the server neither panics nor allocates what a
//! client merely announces, what it writes are HTTP/1.1 responses, and once the client goes
//! quiet (sending nothing, reading nothing) the server ends the connection within its limits.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};
use tokio::sync::watch;

use super::transport::{Handler, Limits, Request, Response, declared_length, read_body, serve};
use super::{body_error, error_closing, respond};

/// The limits under abuse: short, so a script runs in a moment.
pub const SHORT: Limits = Limits {
    header_timeout: Duration::from_millis(100),
    body_deadline: Duration::from_millis(100),
    write_stall: Duration::from_millis(100),
    max_lifetime: Duration::from_secs(1),
    close_grace: Duration::from_millis(100),
    linger: Duration::from_millis(100),
};
/// How long the server may keep a quiet client's connection: well past every limit.
const QUIET_DEADLINE: Duration = Duration::from_secs(5);
/// Pauses of a script add up to at most this.
const MAX_PAUSES: Duration = Duration::from_millis(1500);
/// What `POST /body` takes.
const BODY_LIMIT: usize = 1024;
/// What `GET /big` answers: far more than the pipe between client and server holds.
const BIG: usize = 256 * 1024;
/// The pipe between client and server holds this much each way (a small receive window).
const PIPE: usize = 4096;

/// Request heads a script can send by number, so the fuzzer finds the routes at once.
pub const HEADS: [&str; 8] = [
    "GET /small HTTP/1.1\r\nHost: x\r\n\r\n",
    "GET /big HTTP/1.1\r\nHost: x\r\n\r\n",
    "POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 1099511627776\r\n\r\n",
    "POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n",
    "POST /body HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
    "POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456789",
    "GET /small HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "GET /small HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n",
];

fn routes() -> Handler {
    static BIG_BODY: [u8; BIG] = [b'x'; BIG];
    Arc::new(|_client, request: Request| {
        Box::pin(async move {
            let post = request.method() == hyper::Method::POST;
            match (post, request.uri().path()) {
                (true, "/body") => {
                    if declared_length(&request) > BODY_LIMIT as u64 {
                        return error_closing(413, "too large");
                    }
                    match read_body(request.into_body(), BODY_LIMIT, SHORT.body_deadline).await {
                        Ok(body) => {
                            assert!(body.len() <= BODY_LIMIT, "read past the limit");
                            respond(200, &[], body.len().to_string())
                        }
                        Err(e) => body_error(&e, BODY_LIMIT),
                    }
                }
                (false, "/big") => respond(200, &[], Bytes::from_static(&BIG_BODY)),
                _ => respond(200, &[], "ok"),
            }
        }) as std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send>>
    })
}

/// A client and the server task serving it.
pub struct Session {
    runtime: tokio::runtime::Runtime,
    client: DuplexStream,
    server: tokio::task::JoinHandle<()>,
    /// Kept so the server is not told to stop.
    _running: watch::Sender<bool>,
    received: Vec<u8>,
    paused: Duration,
}

impl Session {
    /// Connects a client to a server with [`SHORT`] limits.
    pub fn start() -> Session {
        // The server runs on a worker of its own, as it does for real: its timers fire while
        // the client waits.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .expect("a runtime");
        let (client, server_end) = tokio::io::duplex(PIPE);
        let (running, stopped) = watch::channel(false);
        let server = runtime.spawn(serve(
            server_end,
            IpAddr::from([127, 0, 0, 1]),
            routes(),
            stopped,
            (),
            SHORT,
        ));
        Session {
            runtime,
            client,
            server,
            _running: running,
            received: Vec::new(),
            paused: Duration::ZERO,
        }
    }

    /// Sends `bytes`; false once the server no longer takes them (closed, or not reading for
    /// a moment).
    pub fn send(&mut self, bytes: &[u8]) -> bool {
        let client = &mut self.client;
        self.runtime.block_on(async {
            matches!(
                tokio::time::timeout(Duration::from_millis(200), client.write_all(bytes)).await,
                Ok(Ok(()))
            )
        })
    }

    /// Waits, as a client that thinks (pauses add up to [`MAX_PAUSES`] at most).
    pub fn pause(&mut self, how_long: Duration) {
        let how_long = how_long.min(MAX_PAUSES.saturating_sub(self.paused));
        self.paused += how_long;
        std::thread::sleep(how_long);
    }

    /// Reads up to `n` bytes of what the server sent, if they come soon.
    pub fn read(&mut self, n: usize) {
        let mut buffer = vec![0; n];
        let client = &mut self.client;
        let read = self.runtime.block_on(async {
            tokio::time::timeout(Duration::from_millis(50), client.read(&mut buffer)).await
        });
        if let Ok(Ok(got)) = read {
            self.received.extend_from_slice(&buffer[..got]);
        }
    }

    /// Half-closes: the client sends nothing more.
    pub fn shut_write(&mut self) {
        let client = &mut self.client;
        let _ = self.runtime.block_on(client.shutdown());
    }

    /// Whether the server has ended the connection.
    pub fn ended(&self) -> bool {
        self.server.is_finished()
    }

    /// Goes quiet (sends and reads nothing), fails if the server keeps the connection past
    /// [`QUIET_DEADLINE`], then reads all the server wrote and returns its statuses in order.
    pub fn finish(mut self) -> Vec<u16> {
        let server = &mut self.server;
        let ended = self
            .runtime
            .block_on(async { tokio::time::timeout(QUIET_DEADLINE, server).await });
        match ended {
            Err(_) => panic!("the server kept a quiet client's connection for {QUIET_DEADLINE:?}"),
            Ok(Err(e)) => panic!("the connection's task failed: {e}"),
            Ok(Ok(())) => {}
        }
        let client = &mut self.client;
        let received = &mut self.received;
        self.runtime.block_on(async {
            let _ = client.read_to_end(received).await;
        });
        statuses(&self.received)
    }
}

/// The status of every response in `raw`, which must be HTTP/1.1 responses one after the
/// other (the last one may be cut short: the server gave up on a client that did not read).
fn statuses(raw: &[u8]) -> Vec<u16> {
    let mut found = Vec::new();
    let mut rest = raw;
    while !rest.is_empty() {
        assert!(
            rest.starts_with(b"HTTP/1.1 "),
            "not a response: {:?}",
            String::from_utf8_lossy(&rest[..rest.len().min(80)])
        );
        let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") else {
            break;
        };
        let head = String::from_utf8_lossy(&rest[..end]);
        let status: u16 = head[9..]
            .split_whitespace()
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {head:?}"));
        assert!((100..600).contains(&status), "{head:?}");
        found.push(status);
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        // Answers to HEAD announce a length and carry nothing: what follows is checked only
        // when it is where the next response would start.
        let next = end + 4 + length;
        if next > rest.len() {
            break;
        }
        if !rest[next..].starts_with(b"HTTP/1.1 ") && rest[end + 4..].starts_with(b"HTTP/1.1 ") {
            rest = &rest[end + 4..];
        } else {
            rest = &rest[next..];
        }
    }
    found
}

/// Plays a script from fuzz input: each step is an opcode byte and an argument byte.
///
/// | opcode % 5 | step |
/// |---|---|
/// | 0 | send the next `argument` bytes of the input |
/// | 1 | send head number `argument` % 8 of [`HEADS`] |
/// | 2 | pause `argument` × 2 ms |
/// | 3 | read up to `argument` × 256 bytes |
/// | 4 | half-close |
///
/// Then the client goes quiet, and [`Session::finish`] checks what the server did.
pub fn run_script(script: &[u8]) -> Vec<u16> {
    let mut session = Session::start();
    let mut input = script;
    while let [opcode, argument, rest @ ..] = input {
        input = rest;
        let argument = usize::from(*argument);
        match opcode % 5 {
            0 => {
                let (bytes, rest) = input.split_at(argument.min(input.len()));
                input = rest;
                session.send(bytes);
            }
            1 => {
                session.send(HEADS[argument % HEADS.len()].as_bytes());
            }
            2 => session.pause(Duration::from_millis(2 * argument as u64)),
            3 => session.read(argument * 256),
            _ => session.shut_write(),
        }
    }
    session.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
        }
    }

    #[test]
    fn a_huge_content_length_gets_413_without_its_body() {
        let mut session = Session::start();
        assert!(session.send(HEADS[2].as_bytes()));
        poll_until("the 413", || {
            session.read(4096);
            session.received.starts_with(b"HTTP/1.1 413")
        });
        assert_eq!(session.finish(), [413]);
    }

    #[test]
    fn a_body_that_never_comes_gets_408() {
        let mut session = Session::start();
        assert!(session.send(HEADS[3].as_bytes()));
        assert!(session.send(&[b'a'; 100]));
        assert_eq!(session.finish(), [408]);
    }

    #[test]
    fn a_head_sent_a_line_at_a_time_forever_is_cut_off() {
        let mut session = Session::start();
        assert!(session.send(HEADS[7].as_bytes()));
        let mut lines = 0;
        // The client never stops: only the server can end this.
        poll_until("the server to end the trickling head", || {
            lines += 1;
            std::thread::sleep(Duration::from_millis(10));
            !session.send(format!("X-{lines}: {lines}\r\n").as_bytes()) || session.ended()
        });
        let answered = session.finish();
        assert!(!answered.contains(&200), "{answered:?}");
    }

    #[test]
    fn a_client_that_never_reads_loses_its_connection() {
        let mut session = Session::start();
        // Twenty big answers asked for at once, none read.
        let many = HEADS[1].repeat(20);
        session.send(many.as_bytes());
        // `finish` fails unless the server gives up on the write within its limits.
        let answered = session.finish();
        assert!(
            answered.len() < 20,
            "all {} answers fit in the pipe?",
            answered.len()
        );
        assert_eq!(answered.first(), Some(&200));
    }

    #[test]
    fn pipelined_requests_are_answered_in_order() {
        let mut session = Session::start();
        let mut requests = String::new();
        for i in 0..10 {
            requests.push_str(HEADS[if i % 2 == 0 { 0 } else { 5 }]);
        }
        requests.push_str(HEADS[6]);
        assert!(session.send(requests.as_bytes()));
        poll_until("eleven answers", || {
            session.read(4096);
            statuses(&session.received).len() == 11
        });
        assert_eq!(session.finish(), [200; 11]);
    }

    #[test]
    fn scripts_run_to_the_end() {
        // A head, a pause, a read, then a body that stops short: the fuzz target's format.
        let script = [1, 0, 2, 10, 3, 4, 1, 3, 0, 5, b'h', b'e', b'l', b'l', b'o'];
        assert_eq!(run_script(&script), [200, 408]);
    }
}
