//! `[server]`: the HTTP listen address, the write-access token, the certificate and key
//! the server speaks HTTPS with, and the reverse proxies it believes.

use std::path::Path;

use toml::de::{DeTable, DeValue};

use super::diagnostics::Diagnostic;
use super::model::{Server, ServerTls};
use super::reader::Fields;
use super::tls::{TlsFile, server_config};
use crate::forwarded::ProxyNet;

/// Reads the optional `[server]` table; relative paths are read from `base`.
pub(super) fn read(diags: &mut Vec<Diagnostic>, document: &DeTable, base: &Path) -> Server {
    let Some(value) = document.get("server") else {
        return Server::default();
    };
    let DeValue::Table(table) = value.get_ref() else {
        return Server::default();
    };
    let mut f = Fields::new(table, Some("server".into()), value.span());
    f.base = base.to_path_buf();
    let http = f.string(diags, "http");
    if let Some((addr, span)) = &http
        && addr.parse::<std::net::SocketAddr>().is_err()
    {
        f.error(
            diags,
            span.clone(),
            "http",
            format!("`{addr}` is not an address like 127.0.0.1:8080"),
        );
    }
    let token = f.string(diags, "token").map(|t| t.0);
    let token_env = f.string(diags, "token_env").map(|t| t.0);
    let tls = tls(diags, &mut f);
    let trusted_proxies = trusted_proxies(diags, &mut f);
    f.finish(diags);
    Server {
        http: http.map(|h| h.0),
        token,
        token_env,
        tls,
        trusted_proxies,
    }
}

/// `trusted_proxies`: an array of addresses or networks (`127.0.0.1`, `10.0.0.0/8`, `::1`).
fn trusted_proxies(diags: &mut Vec<Diagnostic>, f: &mut Fields) -> Vec<String> {
    let Some(value) = f.entry("trusted_proxies") else {
        return Vec::new();
    };
    let DeValue::Array(items) = value.get_ref() else {
        f.type_error(
            diags,
            value,
            "trusted_proxies",
            "an array of addresses or networks",
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for item in items.iter() {
        let Some(text) = item.get_ref().as_str() else {
            f.type_error(
                diags,
                item,
                "trusted_proxies",
                "an address or network (string)",
            );
            continue;
        };
        match text.parse::<ProxyNet>() {
            Ok(_) => out.push(text.to_string()),
            Err(reason) => f.error(diags, item.span(), "trusted_proxies", reason),
        }
    }
    out
}

/// `tls_cert` and `tls_key`: both or neither, and a pair the server can serve with (read here
/// as at start, so a file that validates is one that serves).
fn tls(diags: &mut Vec<Diagnostic>, f: &mut Fields) -> Option<ServerTls> {
    let cert = f.path(diags, "tls_cert");
    let key = f.path(diags, "tls_key");
    let (cert, key) = match (cert, key) {
        (None, None) => return None,
        (Some((_, _, span)), None) => {
            f.error(
                diags,
                span,
                "tls_cert",
                "needs `tls_key` as well: the certificate's private key".into(),
            );
            return None;
        }
        (None, Some((_, _, span))) => {
            f.error(
                diags,
                span,
                "tls_key",
                "needs `tls_cert` as well: the certificate it is the key of".into(),
            );
            return None;
        }
        (Some(cert), Some(key)) => (cert, key),
    };
    if let Err(e) = server_config(&cert.0, &key.0) {
        let (key_name, text, span) = match e.file {
            TlsFile::Cert => ("tls_cert", &cert.1, cert.2.clone()),
            TlsFile::Key => ("tls_key", &key.1, key.2.clone()),
        };
        let looked = if e.path == Path::new(text) {
            String::new()
        } else {
            format!(" (looked for {})", e.path.display())
        };
        f.error(
            diags,
            span,
            key_name,
            format!("`{text}`{looked}: {}", e.reason),
        );
        return None;
    }
    Some(ServerTls {
        cert: cert.0,
        key: key.0,
    })
}
