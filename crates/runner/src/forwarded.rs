//! Who a request is from when it came through a reverse proxy (`[server] trusted_proxies`).
//!
//! Behind nginx every connection comes from nginx's address, so the per-client caps (WHEP
//! offers being set up at once) would treat the whole audience as one client. A proxy the
//! pipeline file trusts appends the address it got the request from to `X-Forwarded-For`;
//! the client is then the rightmost address of that list that is not itself a trusted proxy
//! (the entries to its left are the client's own claims, which anyone can forge). A request
//! from an address not trusted is from that address, whatever its headers say.
//!
//! The address only keys the in-memory caps while the request is in flight: it is never
//! logged or stored.

use std::net::IpAddr;
use std::str::FromStr;

use hyper::header::HeaderMap;

/// A trusted proxy: one address (`10.0.0.5`, `::1`) or a network (`10.0.0.0/8`, `fd00::/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyNet {
    addr: IpAddr,
    prefix: u8,
}

impl FromStr for ProxyNet {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{text}` is not an IP address or network like 10.0.0.0/8"))?;
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= bits)
                .ok_or_else(|| format!("`{text}`: the prefix length must be 0 to {bits}"))?,
        };
        Ok(ProxyNet { addr, prefix })
    }
}

impl ProxyNet {
    /// Whether `ip` is in this network (an IPv4 address mapped into IPv6, as a dual-stack
    /// socket reports it, counts as the IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

/// Whether the first `prefix` bits of `a` and `b` are equal.
fn prefix_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let whole = usize::from(prefix / 8);
    let rest = prefix % 8;
    if a[..whole] != b[..whole] {
        return false;
    }
    rest == 0 || (a[whole] ^ b[whole]) >> (8 - rest) == 0
}

/// The client of a request that came from `peer` with `headers`.
pub fn client(peer: IpAddr, headers: &HeaderMap, trusted: &[ProxyNet]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    // Several X-Forwarded-For headers are one list, in order.
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|value| value.to_str().unwrap_or("").split(','))
        .collect();
    for entry in entries.iter().rev() {
        match parse_entry(entry.trim()) {
            Some(ip) if is_trusted(ip) => client = ip,
            Some(ip) => return ip,
            // What a trusted proxy appended is an address: this came from further left, from
            // the client. Count the request against the last trusted hop.
            None => return client,
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, an IPv6 address in brackets, either with a port.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse() {
        return Some(ip);
    }
    if let Some(rest) = entry.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    let (addr, port) = entry.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    addr.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// For the fuzz target: the client of a request from trusted `127.0.0.1` whose
/// `X-Forwarded-For` headers are `lines`, with `10.0.0.0/8` and `::1` trusted as well.
#[cfg(feature = "fuzzing")]
pub fn client_of_lines(lines: &[&[u8]]) -> Option<IpAddr> {
    let mut headers = HeaderMap::new();
    for line in lines {
        headers.append(
            "x-forwarded-for",
            hyper::header::HeaderValue::from_bytes(line).ok()?,
        );
    }
    let trusted: Vec<ProxyNet> = ["127.0.0.1", "10.0.0.0/8", "::1"]
        .iter()
        .filter_map(|t| t.parse().ok())
        .collect();
    Some(client(IpAddr::from([127, 0, 0, 1]), &headers, &trusted))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<ProxyNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x-forwarded-for", v.parse().unwrap());
        }
        headers
    }

    #[test]
    fn networks_are_parsed_and_bad_ones_say_why() {
        let net: ProxyNet = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains(ip("10.1.200.3")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(!net.contains(ip("::1")));
        let odd: ProxyNet = "192.168.0.128/25".parse().unwrap();
        assert!(odd.contains(ip("192.168.0.200")) && !odd.contains(ip("192.168.0.100")));
        let v6: ProxyNet = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::5")) && !v6.contains(ip("fe80::1")));
        let one: ProxyNet = "127.0.0.1".parse().unwrap();
        assert!(one.contains(ip("::ffff:127.0.0.1")), "a v4-mapped peer");
        assert!(
            "0.0.0.0/0"
                .parse::<ProxyNet>()
                .unwrap()
                .contains(ip("8.8.8.8"))
        );
        for bad in [
            "",
            "nginx",
            "10.0.0.0/33",
            "::1/129",
            "10.0.0.0/",
            "10.0.0.0/-1",
        ] {
            let err = bad.parse::<ProxyNet>().unwrap_err();
            assert!(err.contains(&format!("`{bad}`")), "{err}");
        }
    }

    #[test]
    fn only_a_trusted_proxy_is_believed() {
        let trusted = nets(&["127.0.0.1", "10.0.0.0/8"]);
        let headers = forwarded(&["203.0.113.7"]);
        // Through the proxy: the address it saw.
        assert_eq!(
            client(ip("127.0.0.1"), &headers, &trusted),
            ip("203.0.113.7")
        );
        // Straight from a stranger: its own address, whatever it claims.
        assert_eq!(
            client(ip("198.51.100.1"), &headers, &trusted),
            ip("198.51.100.1")
        );
        // No proxy configured: nobody is believed.
        assert_eq!(client(ip("127.0.0.1"), &headers, &[]), ip("127.0.0.1"));
        // A proxy that forwarded nothing: the proxy.
        assert_eq!(
            client(ip("127.0.0.1"), &HeaderMap::new(), &trusted),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn a_forged_entry_left_of_the_proxys_is_ignored() {
        let trusted = nets(&["127.0.0.1", "10.0.0.0/8"]);
        // The client sent "X-Forwarded-For: 1.2.3.4"; a CDN edge (10.0.0.9) appended the
        // client's address, then nginx appended the edge's.
        let headers = forwarded(&["1.2.3.4, 203.0.113.7", "10.0.0.9"]);
        assert_eq!(
            client(ip("127.0.0.1"), &headers, &trusted),
            ip("203.0.113.7")
        );
        // Garbage where a proxy's entry should be: the request counts against the proxy.
        let headers = forwarded(&["203.0.113.7, not-an-address"]);
        assert_eq!(client(ip("127.0.0.1"), &headers, &trusted), ip("127.0.0.1"));
        // Ports and brackets as some proxies write them.
        let headers = forwarded(&["203.0.113.7:5123"]);
        assert_eq!(
            client(ip("127.0.0.1"), &headers, &trusted),
            ip("203.0.113.7")
        );
        let headers = forwarded(&["[2001:db8::1]:443"]);
        assert_eq!(
            client(ip("127.0.0.1"), &headers, &trusted),
            ip("2001:db8::1")
        );
        // Everyone in the list trusted: the leftmost.
        let headers = forwarded(&["10.0.0.3, 10.0.0.9"]);
        assert_eq!(client(ip("127.0.0.1"), &headers, &trusted), ip("10.0.0.3"));
    }

    /// Random headers from the characters addresses are made of: never a panic, and the
    /// client is the proxy or an address the headers hold.
    #[test]
    fn random_headers_never_panic() {
        let trusted = nets(&["127.0.0.1", "10.0.0.0/8", "::1"]);
        let alphabet = b"0123456789abcdef:.,[] /\n";
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..50_000 {
            let mut text = Vec::new();
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            for i in 0..(seed % 40) {
                text.push(alphabet[((seed >> (i % 50)) as usize + i as usize) % alphabet.len()]);
            }
            let text = String::from_utf8(text).unwrap();
            let lines: Vec<&str> = text.split('\n').collect();
            let headers = forwarded(&lines);
            let found = client(ip("127.0.0.1"), &headers, &trusted);
            assert!(
                found == ip("127.0.0.1") || text.contains(':') || text.contains('.'),
                "{found} from {text:?}"
            );
        }
    }
}
