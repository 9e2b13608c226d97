//! ICE servers handed to viewers (RFC 9725 `Link: <...>; rel="ice-server"`), and short-lived
//! TURN credentials derived from a secret shared with the TURN server: the coturn "REST API"
//! scheme (draft-uberti-behave-turn-rest), username = `expiry:label`, password =
//! base64(HMAC-SHA1(secret, username)). The TURN server checks the HMAC and the expiry itself,
//! so nothing is stored per viewer and a leaked credential dies with its expiry.
//!
//! GStreamer-free: the runner validates its configuration with it.

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Whether an ICE server relays (TURN) or only tells a viewer its public address (STUN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IceServerKind {
    /// `stun:` or `stuns:`.
    Stun,
    /// `turn:` or `turns:`: gets a credential.
    Turn,
}

/// A STUN or TURN server URL (RFC 7064, RFC 7065), checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceServer {
    url: String,
    kind: IceServerKind,
}

/// Why an ICE server URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{url:?} is not a STUN/TURN URL: {reason}")]
pub struct IceServerError {
    /// The URL as given.
    pub url: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl IceServer {
    /// Checks `url`: `stun:`/`stuns:` `host[:port]`, or `turn:`/`turns:` `host[:port]` with an
    /// optional `?transport=udp|tcp`. Host: a DNS name, an IPv4 address or `[IPv6]`.
    pub fn parse(url: &str) -> Result<IceServer, IceServerError> {
        let refuse = |reason| IceServerError {
            url: url.to_string(),
            reason,
        };
        let (scheme, rest) = url
            .split_once(':')
            .ok_or_else(|| refuse("no scheme (stun:, stuns:, turn: or turns:)"))?;
        let kind = match scheme {
            "stun" | "stuns" => IceServerKind::Stun,
            "turn" | "turns" => IceServerKind::Turn,
            _ => return Err(refuse("the scheme is not stun:, stuns:, turn: or turns:")),
        };
        if rest.starts_with("//") {
            return Err(refuse("no `//` after the scheme (e.g. turn:host:3478)"));
        }
        let (authority, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        match (kind, query) {
            (_, None) => {}
            (IceServerKind::Stun, Some(_)) => {
                return Err(refuse("a STUN URL takes no query"));
            }
            (IceServerKind::Turn, Some("transport=udp" | "transport=tcp")) => {}
            (IceServerKind::Turn, Some(_)) => {
                return Err(refuse("the only query is ?transport=udp or ?transport=tcp"));
            }
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (addr, after) = v6
                .split_once(']')
                .ok_or_else(|| refuse("an IPv6 address without `]`"))?;
            if addr.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(refuse("not an IPv6 address between [ ]"));
            }
            match after {
                "" => (addr, None),
                p => (
                    addr,
                    Some(
                        p.strip_prefix(':')
                            .ok_or_else(|| refuse("junk after the IPv6 address"))?,
                    ),
                ),
            }
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(refuse("no host"));
        }
        let host_ok = authority.starts_with('[')
            || host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !host_ok {
            return Err(refuse("the host is not a DNS name or an IP address"));
        }
        if let Some(port) = port
            && !port.parse::<u16>().is_ok_and(|p| p > 0)
        {
            return Err(refuse("the port is not 1..=65535"));
        }
        Ok(IceServer {
            url: url.to_string(),
            kind,
        })
    }

    /// The URL, as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// STUN or TURN.
    pub fn kind(&self) -> IceServerKind {
        self.kind
    }

    /// The URI webrtcbin's `turn-server` takes (`turn://user:pass@host:port?transport=...`,
    /// user and password percent-encoded: coturn's usernames hold a `:`), for a TURN server.
    pub fn webrtcbin_turn_uri(&self, credential: &TurnCredential) -> Option<String> {
        if self.kind != IceServerKind::Turn {
            return None;
        }
        let (scheme, rest) = self.url.split_once(':')?;
        Some(format!(
            "{scheme}://{}:{}@{rest}",
            percent_encode(&credential.username),
            percent_encode(&credential.password)
        ))
    }
}

/// Everything but RFC 3986's unreserved characters as `%XX`.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The secret shared with the TURN server (coturn's `static-auth-secret`). Its `Debug` does
/// not show it, so a config printed in a log does not leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct TurnSecret(Vec<u8>);

impl TurnSecret {
    /// Wraps the secret's bytes.
    pub fn new(secret: impl Into<Vec<u8>>) -> TurnSecret {
        TurnSecret(secret.into())
    }
}

impl fmt::Debug for TurnSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TurnSecret(..)")
    }
}

/// A TURN username and password, valid until the expiry in the username. `Debug` hides the
/// password.
#[derive(Clone, PartialEq, Eq)]
pub struct TurnCredential {
    /// `expiry_unix_seconds:label`.
    pub username: String,
    /// base64(HMAC-SHA1(secret, username)).
    pub password: String,
}

impl fmt::Debug for TurnCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnCredential")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl TurnCredential {
    /// The credential for `label` expiring at `expiry_unix` (seconds since the epoch).
    pub fn new(secret: &TurnSecret, expiry_unix: u64, label: &str) -> TurnCredential {
        let username = format!("{expiry_unix}:{label}");
        // HMAC takes a key of any length: new_from_slice cannot fail for it.
        let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(&secret.0)
            .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
        mac.update(username.as_bytes());
        let password =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        TurnCredential { username, password }
    }

    /// A credential for one viewer session: a fresh random label (never who the viewer is:
    /// the TURN server logs usernames), expiring `ttl` after `now`.
    pub fn for_session(secret: &TurnSecret, ttl: Duration, now: SystemTime) -> TurnCredential {
        let expiry = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_add(ttl)
            .as_secs();
        TurnCredential::new(secret, expiry, &crate::whep::random_hex(8))
    }
}

/// TURN credentials for the viewers: the shared secret and how long each credential lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnAuth {
    /// The secret shared with the TURN server.
    pub secret: TurnSecret,
    /// A credential's lifetime: a viewer must have allocated on the relay by then (an
    /// allocation made in time is refreshed past it by coturn).
    pub ttl: Duration,
}

/// The `Link` header values (RFC 9725 section 4.4) naming `servers`: one per server, TURN ones
/// with one fresh credential (shared by this session's TURN URLs), or none without `auth`.
pub fn ice_server_links(
    servers: &[IceServer],
    auth: Option<&TurnAuth>,
    now: SystemTime,
) -> Vec<String> {
    let credential = auth
        .filter(|_| servers.iter().any(|s| s.kind == IceServerKind::Turn))
        .map(|auth| TurnCredential::for_session(&auth.secret, auth.ttl, now));
    servers
        .iter()
        .map(|server| match (server.kind, &credential) {
            (IceServerKind::Turn, Some(c)) => format!(
                "<{}>; rel=\"ice-server\"; username=\"{}\"; credential=\"{}\"; \
                 credential-type=\"password\"",
                server.url, c.username, c.password
            ),
            _ => format!("<{}>; rel=\"ice-server\"", server.url),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_the_hmac_openssl_computes() {
        // printf '%s' '1700000000:0123456789abcdef' \
        //   | openssl dgst -sha1 -hmac 'north-secret' -binary | base64
        let c = TurnCredential::new(
            &TurnSecret::new("north-secret"),
            1_700_000_000,
            "0123456789abcdef",
        );
        assert_eq!(c.username, "1700000000:0123456789abcdef");
        assert_eq!(c.password, "EbqP+CUAhpDVdnQoq4ZF3iy+1us=");
    }

    #[test]
    fn a_session_credential_expires_after_the_ttl_with_a_random_label() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let secret = TurnSecret::new("s");
        let a = TurnCredential::for_session(&secret, Duration::from_secs(3600), now);
        let b = TurnCredential::for_session(&secret, Duration::from_secs(3600), now);
        let (expiry, label) = a.username.split_once(':').unwrap();
        assert_eq!(expiry, "4600");
        assert_eq!(label.len(), 16);
        assert_ne!(a.username, b.username, "every session has its own label");
        assert_eq!(a, TurnCredential::new(&secret, 4600, label));
    }

    #[test]
    fn debug_shows_no_secret_and_no_password() {
        let secret = TurnSecret::new("hunter2-secret");
        let c = TurnCredential::new(&secret, 1, "x");
        let shown = format!("{secret:?} {c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains(&c.password), "{shown}");
    }

    #[test]
    fn webrtcbin_gets_the_credential_percent_encoded() {
        let c = TurnCredential {
            username: "17:ab".into(),
            password: "a+b/c=".into(),
        };
        let turn = IceServer::parse("turn:127.0.0.1:3478?transport=tcp").unwrap();
        assert_eq!(
            turn.webrtcbin_turn_uri(&c).as_deref(),
            Some("turn://17%3Aab:a%2Bb%2Fc%3D@127.0.0.1:3478?transport=tcp")
        );
        let stun = IceServer::parse("stun:127.0.0.1").unwrap();
        assert_eq!(stun.webrtcbin_turn_uri(&c), None);
    }

    #[test]
    fn urls_are_checked() {
        for good in [
            "stun:stun.example.org",
            "stun:192.0.2.1:3478",
            "stuns:[2001:db8::1]:5349",
            "turn:turn.example.org:3478?transport=tcp",
            "turns:turn.example.org:443?transport=tcp",
            "turn:127.0.0.1?transport=udp",
        ] {
            assert!(IceServer::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "turn.example.org:3478",
            "http://turn.example.org",
            "turn://turn.example.org",
            "turn:",
            "turn::3478",
            "turn:host:0",
            "turn:host:70000",
            "turn:host:x",
            "turn:host?transport=sctp",
            "stun:host?transport=tcp",
            "turn:ho st",
            "turn:host>; rel=\"x\"",
            "turn:[::1",
            "turn:[nope]:3478",
        ] {
            assert!(IceServer::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn links_carry_one_credential_for_turn_and_none_for_stun() {
        let servers = [
            IceServer::parse("stun:127.0.0.1:3478").unwrap(),
            IceServer::parse("turn:127.0.0.1:3478?transport=udp").unwrap(),
            IceServer::parse("turns:t.example.org:443?transport=tcp").unwrap(),
        ];
        let auth = TurnAuth {
            secret: TurnSecret::new("k"),
            ttl: Duration::from_secs(60),
        };
        let links = ice_server_links(&servers, Some(&auth), SystemTime::now());
        assert_eq!(links[0], "<stun:127.0.0.1:3478>; rel=\"ice-server\"");
        let user = |l: &str| {
            l.split("username=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .map(str::to_string)
        };
        assert!(links[1].starts_with("<turn:127.0.0.1:3478?transport=udp>; rel=\"ice-server\""));
        assert!(links[1].contains("credential-type=\"password\""));
        assert!(user(&links[1]).is_some());
        assert_eq!(user(&links[1]), user(&links[2]));
        assert_eq!(
            ice_server_links(&servers[1..2], None, SystemTime::now()),
            ["<turn:127.0.0.1:3478?transport=udp>; rel=\"ice-server\""]
        );
    }
}
