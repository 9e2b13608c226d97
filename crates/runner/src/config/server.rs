//! `[server]`: the HTTP listen address and the write-access token.

use toml::de::{DeTable, DeValue};

use super::diagnostics::Diagnostic;
use super::model::Server;
use super::reader::Fields;

/// Reads the optional `[server]` table.
pub(super) fn read(diags: &mut Vec<Diagnostic>, document: &DeTable) -> Server {
    let Some(value) = document.get("server") else {
        return Server::default();
    };
    let DeValue::Table(table) = value.get_ref() else {
        return Server::default();
    };
    let mut f = Fields::new(table, Some("server".into()), value.span());
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
    f.finish(diags);
    Server {
        http: http.map(|h| h.0),
        token,
        token_env,
    }
}
