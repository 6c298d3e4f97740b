//! Certificates made in the test (rcgen): a CA, a server certificate for `localhost` and
//! `127.0.0.1`, and a client certificate with a chosen common name, written as PEM files.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// PEM files of a test PKI.
#[derive(Debug, Clone)]
pub struct TlsFixture {
    /// The CA certificate (signs the server's and the client's).
    pub ca: PathBuf,
    /// The server's certificate, for `localhost` and `127.0.0.1`.
    pub cert: PathBuf,
    /// The server's key.
    pub key: PathBuf,
    /// A client certificate (common name as asked).
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
    /// A CA nobody else trusts, and a client certificate it signed (for refusals).
    pub stranger_cert: PathBuf,
    /// Its key.
    pub stranger_key: PathBuf,
}

fn leaf(
    names: Vec<String>,
    common_name: &str,
    usage: ExtendedKeyUsagePurpose,
    issuer: &rcgen::Issuer<'_, KeyPair>,
) -> (String, String) {
    let mut params = CertificateParams::new(names).expect("certificate names");
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().expect("a key");
    let cert = params.signed_by(&key, issuer).expect("signed");
    (cert.pem(), key.serialize_pem())
}

fn ca(common_name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("a key")).expect("a CA")
}

/// Makes the PKI in `dir`, the client certificate for `client_common_name`.
///
/// # Panics
/// The files cannot be written.
pub fn tls_fixture(dir: &Path, client_common_name: &str) -> TlsFixture {
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("a PEM file");
        path
    };
    let authority = ca("mycelium test CA");
    let (cert, key) = leaf(
        vec!["localhost".into(), "127.0.0.1".into()],
        "localhost",
        ExtendedKeyUsagePurpose::ServerAuth,
        &authority,
    );
    let (client_cert, client_key) = leaf(
        Vec::new(),
        client_common_name,
        ExtendedKeyUsagePurpose::ClientAuth,
        &authority,
    );
    let other = ca("some other CA");
    let (stranger_cert, stranger_key) = leaf(
        Vec::new(),
        client_common_name,
        ExtendedKeyUsagePurpose::ClientAuth,
        &other,
    );
    TlsFixture {
        ca: write("ca.pem", &authority.pem()),
        cert: write("server.pem", &cert),
        key: write("server.key", &key),
        client_cert: write("client.pem", &client_cert),
        client_key: write("client.key", &client_key),
        stranger_cert: write("stranger.pem", &stranger_cert),
        stranger_key: write("stranger.key", &stranger_key),
    }
}
