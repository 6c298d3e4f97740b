//! TLS for the TCP listeners of both doors (rustls): the server's certificate and key from PEM
//! files, optionally a CA whose client certificates are required (mutual TLS), and the common
//! name of a client certificate, which `[[auth.users]] cert_common_name` maps to a principal.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Where the server's TLS material is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates: when set, every client must present a certificate they signed.
    pub client_ca: Option<PathBuf>,
}

/// TLS material that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct TlsError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub reason: String,
}

fn failed(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// The certificates of a PEM file (at least one).
///
/// # Errors
/// Unreadable, not PEM, or no certificate in it.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| failed(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| failed(path, e))?;
    if certs.is_empty() {
        return Err(failed(path, "no CERTIFICATE block in the file"));
    }
    Ok(certs)
}

/// The private key of a PEM file.
///
/// # Errors
/// Unreadable, not PEM, or no key in it.
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| failed(path, e))
}

/// The ring crypto provider (the one this build carries).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server side: certificate, key, and the client CA when mutual TLS is on.
///
/// # Errors
/// A file that cannot be read or used; a key that does not match the certificate.
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = certificates(&files.cert)?;
    let key = private_key(&files.key)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| failed(&files.cert, e))?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates(ca)? {
                roots.add(cert).map_err(|e| failed(ca, e))?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                    .build()
                    .map_err(|e| failed(ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(chain, key).map_err(|e| {
        failed(
            &files.key,
            format!("does not go with {}: {e}", files.cert.display()),
        )
    })?;
    Ok(Arc::new(config))
}

/// The TLS configuration both doors share. A configuration reload replaces it (a renewed
/// certificate, key or client CA): connections accepted afterwards use the new one, connections
/// already open keep the one they were made with.
#[derive(Debug)]
pub struct LiveTls {
    config: arc_swap::ArcSwap<rustls::ServerConfig>,
}

impl LiveTls {
    /// Shares `config`.
    pub fn new(config: Arc<rustls::ServerConfig>) -> Arc<LiveTls> {
        Arc::new(LiveTls {
            config: arc_swap::ArcSwap::new(config),
        })
    }

    /// The configuration for the next connection.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.config.load_full()
    }

    /// Replaces the configuration for connections accepted from now on.
    pub fn replace(&self, config: Arc<rustls::ServerConfig>) {
        self.config.store(config);
    }
}

/// The subject's common name of a (verified) client certificate.
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let name = parsed.subject().iter_common_name().next()?;
    name.as_str().ok().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_files_are_named_in_the_error() {
        let dir = std::env::temp_dir().join(format!("mycelium-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").unwrap();
        let error = certificates(&garbage).unwrap_err();
        assert_eq!(error.path, garbage);
        let missing = dir.join("missing.pem");
        assert!(
            certificates(&missing)
                .unwrap_err()
                .to_string()
                .contains("missing.pem")
        );
        assert!(private_key(&garbage).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
