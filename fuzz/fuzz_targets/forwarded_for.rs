//! `X-Forwarded-For` headers of a request from a trusted proxy (`[server] trusted_proxies`):
//! no panic, and headers without a hex digit or a colon (no address in them) leave the request
//! counted against the proxy.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Header lines separated by newlines, as several X-Forwarded-For headers.
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    if let Some(client) = hybridlive_runner::forwarded_for::client_of_lines(&lines) {
        if !data.iter().any(|b| b.is_ascii_hexdigit() || *b == b':') {
            assert_eq!(client, std::net::IpAddr::from([127, 0, 0, 1]));
        }
    }
});
