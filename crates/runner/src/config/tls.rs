//! HTTPS: the certificate chain and private key of `[server] tls_cert` / `tls_key`, read into
//! the rustls configuration the server's transport serves with.
//!
//! The same reading checks the files at `hybridlive validate` and at start, so a file that
//! validates is one the server can use: PEM, at least one certificate, one private key
//! (PKCS#8, PKCS#1 or SEC1), and the key the certificate's.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Which of the two files a [`TlsError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    /// `tls_cert`: the certificate chain.
    Cert,
    /// `tls_key`: the private key.
    Key,
}

/// Why the certificate or key cannot be served with.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct TlsError {
    /// The file at fault.
    pub file: TlsFile,
    /// Its path, as it was looked for.
    pub path: PathBuf,
    /// What is wrong with it, for a person.
    pub reason: String,
}

/// The server configuration for `cert` (PEM, the server's certificate first, then its chain)
/// and `key` (PEM). Speaks HTTP/1.1 only, as the transport does.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let fail = |file: TlsFile, reason: String| TlsError {
        file,
        path: match file {
            TlsFile::Cert => cert.to_path_buf(),
            TlsFile::Key => key.to_path_buf(),
        },
        reason,
    };
    let cert_pem = read(cert).map_err(|r| fail(TlsFile::Cert, r))?;
    let key_pem = read(key).map_err(|r| fail(TlsFile::Key, r))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(TlsFile::Cert, format!("not a PEM certificate file ({e})")))?;
    if chain.is_empty() {
        return Err(fail(
            TlsFile::Cert,
            "holds no certificate (no `-----BEGIN CERTIFICATE-----` section)".into(),
        ));
    }
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        let reason = match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "holds no private key (no `-----BEGIN ... PRIVATE KEY-----` section)".into()
            }
            e => format!("not a PEM private key file ({e})"),
        };
        fail(TlsFile::Key, reason)
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(TlsFile::Cert, format!("no TLS version to offer ({e})")))?
        .with_no_client_auth();
    let mut config = builder
        .with_single_cert(chain, key_der)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => fail(
                TlsFile::Key,
                format!(
                    "is not the private key of the certificate in {}",
                    cert.display()
                ),
            ),
            rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => fail(
                TlsFile::Cert,
                format!("the certificate cannot be read ({e})"),
            ),
            e => fail(TlsFile::Key, format!("the key cannot be used ({e})")),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The file's bytes, or why not (a PEM file is small: a larger one is not one).
fn read(path: &Path) -> Result<Vec<u8>, String> {
    const MAX_PEM_BYTES: u64 = 1024 * 1024;
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read it ({e})"))?;
    if !meta.is_file() {
        return Err("is not a file".into());
    }
    if meta.len() > MAX_PEM_BYTES {
        return Err(format!("is {} bytes, too large for a PEM file", meta.len()));
    }
    std::fs::read(path).map_err(|e| format!("cannot read it ({e})"))
}
