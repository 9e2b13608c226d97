//! A raw HTTP/1.1 client for tests that need the socket itself: a source address of their own
//! (`127.0.0.2` is a second client on loopback), a head without its body, a tiny receive buffer,
//! or a request that never ends.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs as _};
use std::time::Duration;

/// How long a request waits for its answer before it counts as unanswered.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

/// A response as read off the wire.
#[derive(Debug, Clone)]
pub struct HttpReply {
    /// Status code.
    pub status: u16,
    /// Header names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl HttpReply {
    /// The first header of that name (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (`Null` when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }

    /// Status and body, for a caller that needs no headers.
    pub fn into_parts(self) -> (u16, Vec<u8>) {
        (self.status, self.body)
    }

    /// What a request that nothing answered gets: status 0, no headers, no body.
    pub fn unanswered() -> HttpReply {
        HttpReply {
            status: 0,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }
}

/// Connects to `addr` from `source` (any free port), so one test can be several clients.
pub fn connect_from(source: IpAddr, addr: &str) -> std::io::Result<TcpStream> {
    let (socket, target) = socket_for(addr)?;
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.connect_timeout(&target.into(), ANSWER_TIMEOUT)?;
    Ok(socket.into())
}

/// Connects to `addr` with a receive buffer of about `bytes` (the kernel's minimum at least):
/// a client that reads slowly, or never.
pub fn connect_with_receive_buffer(addr: &str, bytes: usize) -> std::io::Result<TcpStream> {
    let (socket, target) = socket_for(addr)?;
    // Before connecting, so the window announced in the handshake is small too.
    socket.set_recv_buffer_size(bytes)?;
    socket.connect_timeout(&target.into(), ANSWER_TIMEOUT)?;
    Ok(socket.into())
}

/// A TCP socket, not yet connected, of the family `addr` resolves to.
fn socket_for(addr: &str) -> std::io::Result<(socket2::Socket, SocketAddr)> {
    let target: SocketAddr = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{addr} resolves to nothing")))?;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(target),
        socket2::Type::STREAM,
        None,
    )?;
    Ok((socket, target))
}

/// One request on its own connection (`Connection: close`) from `source`, answered within
/// [`ANSWER_TIMEOUT`]. `Err` when it cannot connect, or the connection ends without an answer.
pub fn http_from(
    source: IpAddr,
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpReply> {
    let mut stream = connect_from(source, addr)?;
    exchange(&mut stream, addr, method, path, headers, body)
}

/// Sends one request (`Connection: close`) on `stream`, already connected to `addr`, and reads
/// the answer, waiting at most [`ANSWER_TIMEOUT`] for each read.
pub fn exchange(
    stream: &mut TcpStream,
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpReply> {
    stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    send_request(stream, addr, method, path, headers, body)?;
    read_reply(stream)
}

/// Sends one request (`Connection: close`) on `stream` without reading the answer: a test
/// holding thousands of requests open sends them all, then reads each with [`read_reply`].
pub fn send_request(
    stream: &mut TcpStream,
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    // A server may answer (413) and close before it reads the whole body.
    let _ = stream.write_all(body);
    Ok(())
}

/// Raises this process's soft limit of open descriptors to its hard limit (a test that holds
/// thousands of connections); the new soft limit.
pub fn raise_descriptor_limit() -> libc::rlim_t {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write only the struct they are given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                ..limit
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
    }
    limit.rlim_cur
}

/// [`http_from`] from 127.0.0.1.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpReply> {
    http_from([127, 0, 0, 1].into(), addr, method, path, headers, body)
}

/// Reads until the server closes the connection and parses the one response it sent. What
/// arrived before a reset counts.
pub fn read_reply(stream: &mut TcpStream) -> std::io::Result<HttpReply> {
    let mut raw = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let error = loop {
        match stream.read(&mut chunk) {
            Ok(0) => break None,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => break Some(e),
        }
    };
    match (parse_reply(&raw), error) {
        (Some(reply), _) => Ok(reply),
        (None, Some(e)) => Err(e),
        (None, None) => Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!(
                "the connection closed without a response: {:?}",
                String::from_utf8_lossy(&raw)
            ),
        )),
    }
}

/// Parses one HTTP/1.1 response (head and body) from `raw`; `None` without a complete head.
pub fn parse_reply(raw: &[u8]) -> Option<HttpReply> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Some(HttpReply {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = data.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&data[..end]).trim(), 16).unwrap_or(0);
        if size == 0 || data.len() < end + 4 + size {
            break;
        }
        out.extend_from_slice(&data[end + 2..end + 2 + size]);
        data = &data[end + 4 + size..];
    }
    out
}
