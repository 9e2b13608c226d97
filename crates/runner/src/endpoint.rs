//! Where an output sends its media, as an error message may show it: secrets (an RTMP stream
//! key, an SRT passphrase or stream id, a password, a token in the query) masked, and why the
//! far end could not be reached (DNS, connection refused, no answer).
//!
//! Output elements report failures their own way: rtmpsink says only "Could not open resource
//! for writing" and puts the whole URL, stream key included, in its debug text;
//! janusvrwebrtcsink says "general stream error". The runner's messages name the endpoint
//! and the reason instead, and never a secret.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Query keys whose values are credentials.
const SECRET_KEYS: &[&str] = &[
    "passphrase",
    "streamid",
    "key",
    "token",
    "secret",
    "password",
    "pass",
    "auth",
    "access_token",
    "sig",
    "signature",
];

/// What replaces a secret.
pub const MASK: &str = "****";

/// An output's endpoint URL, parsed only as far as naming and reaching it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The URL with its secrets masked.
    pub shown: String,
    /// Host and port, when the URL names them (a listener's empty host has none to reach).
    target: Option<(String, u16)>,
    /// Whether the far end speaks TCP (RTMP, HTTP, WebSocket): only those can be probed.
    tcp: bool,
    secrets: Vec<String>,
}

impl Endpoint {
    /// Parses `url`; `extra_secrets` (a WHIP bearer token, ...) are masked too.
    pub fn new(url: &str, extra_secrets: &[&str]) -> Endpoint {
        let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
        let scheme = scheme.to_ascii_lowercase();
        let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = before_query
            .split_once('/')
            .map_or((before_query, ""), |(a, p)| (a, p));
        let mut secrets: Vec<String> = extra_secrets
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| s.to_string())
            .collect();
        // user:password@host
        let host_port = match authority.rsplit_once('@') {
            Some((userinfo, host)) => {
                if let Some((_, password)) = userinfo.split_once(':') {
                    secrets.push(password.to_string());
                }
                host
            }
            None => authority,
        };
        // rtmp://host/app/STREAM-KEY: everything after the application is the key.
        if matches!(scheme.as_str(), "rtmp" | "rtmps")
            && let Some((_, key)) = path.split_once('/')
            && !key.is_empty()
        {
            secrets.push(key.to_string());
        }
        for pair in query.split('&') {
            if let Some((k, v)) = pair.split_once('=')
                && !v.is_empty()
                && SECRET_KEYS.contains(&k.to_ascii_lowercase().as_str())
            {
                secrets.push(v.to_string());
            }
        }
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        let default_port = match scheme.as_str() {
            "rtmp" => Some(1935),
            "rtmps" | "https" | "wss" => Some(443),
            "http" | "ws" => Some(80),
            _ => None,
        };
        let target = split_host_port(host_port)
            .and_then(|(host, port)| Some((host.to_string(), port.or(default_port)?)))
            .filter(|(host, _)| !host.is_empty());
        let mut endpoint = Endpoint {
            shown: String::new(),
            target,
            tcp: default_port.is_some(),
            secrets,
        };
        endpoint.shown = endpoint.redact(url);
        endpoint
    }

    /// `text` with every secret of this endpoint masked.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in &self.secrets {
            out = out.replace(secret.as_str(), MASK);
        }
        out
    }

    /// Why the far end is not reachable, if it can be told from here: the host does not
    /// resolve, refuses connections or does not answer within `timeout`. `None` when it
    /// accepts a connection (the failure is then in the protocol) or cannot be probed (UDP).
    pub fn unreachable_reason(&self, timeout: Duration) -> Option<String> {
        let (host, port) = self.target.as_ref().filter(|_| self.tcp)?;
        let addrs: Vec<SocketAddr> = match (host.as_str(), *port).to_socket_addrs() {
            Ok(a) => a.collect(),
            Err(e) => return Some(format!("cannot resolve `{host}`: {e}")),
        };
        let Some(addr) = addrs.first() else {
            return Some(format!("`{host}` resolves to no address"));
        };
        match TcpStream::connect_timeout(addr, timeout) {
            Ok(_) => None,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                Some(format!("connection refused by {addr}"))
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Some(format!(
                "no answer from {addr} within {} s",
                timeout.as_secs_f64()
            )),
            Err(e) => Some(format!("cannot connect to {addr}: {e}")),
        }
    }
}

/// `host:port`, `[v6]:port`, `host`, with the port parsed when present.
fn split_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None => None,
        };
        return Some((host, port));
    }
    match s.rsplit_once(':') {
        Some((host, port)) => Some((host, Some(port.parse().ok()?))),
        None => Some((s, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_keys_passphrases_and_tokens_are_masked() {
        let rtmp = Endpoint::new("rtmp://live.example/app/sk_live_12345", &[]);
        assert_eq!(rtmp.shown, "rtmp://live.example/app/****");
        assert_eq!(
            rtmp.redact("Could not connect to \"rtmp://live.example/app/sk_live_12345\""),
            "Could not connect to \"rtmp://live.example/app/****\""
        );
        let srt = Endpoint::new(
            "srt://ingest.example:9000?mode=caller&passphrase=verysecret1&streamid=#!::r=live,u=me",
            &[],
        );
        assert_eq!(
            srt.shown,
            "srt://ingest.example:9000?mode=caller&passphrase=****&streamid=****"
        );
        let whip = Endpoint::new(
            "https://bob:hunter22@sfu.example/whip?token=abc123",
            &["tok"],
        );
        assert!(!whip.shown.contains("hunter22") && !whip.shown.contains("abc123"));
        assert_eq!(whip.redact("sent Bearer tok"), "sent Bearer ****");
        let plain = Endpoint::new("ws://127.0.0.1:8188", &[]);
        assert_eq!(plain.shown, "ws://127.0.0.1:8188");
    }

    #[test]
    fn targets_and_default_ports() {
        let t = |u: &str| Endpoint::new(u, &[]).target;
        assert_eq!(t("rtmp://h/app/k"), Some(("h".into(), 1935)));
        assert_eq!(t("rtmps://h:4443/app/k"), Some(("h".into(), 4443)));
        assert_eq!(t("https://h/whip"), Some(("h".into(), 443)));
        assert_eq!(t("ws://[::1]:8188"), Some(("::1".into(), 8188)));
        assert_eq!(t("srt://:9000?mode=listener"), None);
        assert_eq!(t("not a url"), None);
    }

    #[test]
    fn a_closed_port_is_reported_refused() {
        // Bind, learn the port, close: nothing listens there now.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let reason = Endpoint::new(&format!("rtmp://127.0.0.1:{port}/app/key"), &[])
            .unreachable_reason(Duration::from_secs(2));
        assert!(
            reason.as_deref().is_some_and(|r| r.contains("refused")),
            "{reason:?}"
        );
        let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/whip", open.local_addr().unwrap());
        assert_eq!(
            Endpoint::new(&url, &[]).unreachable_reason(Duration::from_secs(2)),
            None
        );
        let udp = Endpoint::new("srt://127.0.0.1:9?mode=caller", &[]);
        assert_eq!(udp.unreachable_reason(Duration::from_secs(2)), None);
    }
}
