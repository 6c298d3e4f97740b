//! The client side of `tls://` URLs (rustls with ring): the CA that signs the broker's
//! certificate, and this client's certificate for mutual TLS.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::ClientOptions;

fn io_error(path: &Path, error: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("{}: {error}", path.display()))
}

fn certificates(path: &Path) -> std::io::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| io_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| io_error(path, e))?;
    if certs.is_empty() {
        return Err(io_error(path, "no CERTIFICATE block in the file"));
    }
    Ok(certs)
}

/// The rustls client configuration `options` ask for.
pub(crate) fn client_config(options: &ClientOptions) -> std::io::Result<Arc<rustls::ClientConfig>> {
    let ca = options.tls_ca_file.as_deref().ok_or_else(|| {
        std::io::Error::other(
            "a tls:// URL needs the CA that signs the broker's certificate (tls_ca_file, --tls-ca)",
        )
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(ca)? {
        roots.add(cert).map_err(|e| io_error(ca, e))?;
    }
    let builder =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(std::io::Error::other)?
            .with_root_certificates(roots);
    let config = match &options.tls_client_cert {
        Some((cert, key)) => {
            let chain = certificates(cert)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| io_error(key, e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| io_error(cert, e))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}
