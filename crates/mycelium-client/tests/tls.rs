//! TLS on both doors' TCP listeners, with certificates made in the test: `tls://` URLs, mutual
//! TLS whose client certificate names the principal, refusals of untrusted clients, and the same
//! listeners checked with `openssl s_client` and `curl`.

use std::sync::Arc;
use std::time::Duration;

use mycelium_client::{Client, ClientOptions, ErrorKind, Token};
use mycelium_test_support::{TEST_TOKEN, TestServer, TlsFixture, tls_fixture};

fn user(name: &str, common_name: &str, roles: &[&str], publish: &[&str]) -> mycelium_server::UserSection {
    mycelium_server::UserSection {
        name: name.into(),
        cert_common_name: Some(common_name.into()),
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        publish: Some(publish.iter().map(|p| (*p).to_owned()).collect()),
        ..mycelium_server::UserSection::default()
    }
}

async fn server(dir: &std::path::Path, pki: &TlsFixture) -> TestServer {
    let (pki, data) = (pki.clone(), dir.join("data"));
    TestServer::start_at(&dir.join("t.sock"), move |c| {
        c.server.tcp = "127.0.0.1:0".into();
        c.http.enabled = true;
        c.http.listen = "127.0.0.1:0".into();
        c.storage.data_dir = data.display().to_string();
        c.auth.jwt_secret = "a test secret of at least thirty-two bytes".into();
        c.tls.cert_file = pki.cert.display().to_string();
        c.tls.key_file = pki.key.display().to_string();
        c.tls.client_ca_file = pki.ca.display().to_string();
        c.auth
            .users
            .push(user("svc", "svc.example", &["producer", "consumer"], &["tls.>"]));
    })
    .await
}

fn options(pki: &TlsFixture, client: Option<(&std::path::Path, &std::path::Path)>) -> ClientOptions {
    ClientOptions {
        tls_ca_file: Some(pki.ca.clone()),
        tls_client_cert: client.map(|(c, k)| (c.to_owned(), k.to_owned())),
        ..ClientOptions::default()
    }
}

async fn connect(url: &str, options: ClientOptions) -> Result<Client, mycelium_client::Error> {
    tokio::time::timeout(Duration::from_secs(10), Client::connect_with(url, options))
        .await
        .expect("connect answers within 10 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_urls_and_mutual_tls_reach_the_broker_as_the_certificate_s_principal() {
    let dir = tempfile::tempdir().unwrap();
    let pki = tls_fixture(dir.path(), "svc.example");
    let server = server(dir.path(), &pki).await;
    let url = format!("tls://localhost:{}", server.tcp_addr().port());
    let client_cert = Some((pki.client_cert.as_path(), pki.client_key.as_path()));

    // The client certificate names the principal: `svc` may use `tls.>` and nothing else.
    let client = connect(&url, options(&pki, client_cert)).await.unwrap();
    let mut sub = client.subscribe("tls.>").await.unwrap();
    client.flush().await.unwrap();
    let sequence = client
        .publish_confirmed("tls.hello", b"over tls".to_vec())
        .await
        .unwrap();
    assert_eq!(sequence, 1);
    let message = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&message.payload[..], b"over tls");
    let refused = client
        .publish_confirmed("plain.hello", b"x".to_vec())
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Server, "{refused}");
    assert!(refused.to_string().contains("may not publish"), "{refused}");
    // Bulk traffic crosses TLS in order.
    for i in 0..2_000u32 {
        client
            .publish("tls.bulk", i.to_le_bytes().to_vec())
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    for i in 0..2_000u32 {
        let message = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&message.payload[..], i.to_le_bytes(), "message {i}");
    }

    // A token in HELLO names the principal over the certificate's.
    let admin = ClientOptions {
        token: Some(Token::new(TEST_TOKEN)),
        ..options(&pki, client_cert)
    };
    let admin = connect(&url, admin).await.unwrap();
    admin
        .publish_confirmed("plain.hello", b"x".to_vec())
        .await
        .unwrap();

    // No client certificate, or one from a CA the broker does not trust: no connection.
    let error = connect(&url, options(&pki, None)).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Connect, "{error}");
    let stranger = Some((pki.stranger_cert.as_path(), pki.stranger_key.as_path()));
    connect(&url, options(&pki, stranger)).await.unwrap_err();
    // A broker certificate the client does not trust: refused by the client.
    let untrusted = ClientOptions {
        tls_ca_file: Some(pki.cert.clone()),
        ..options(&pki, client_cert)
    };
    connect(&url, untrusted).await.unwrap_err();
    // Plain text on the TLS port gets nowhere, and the broker keeps serving.
    let plain = format!("tcp://127.0.0.1:{}", server.tcp_addr().port());
    connect(&plain, ClientOptions::default()).await.unwrap_err();
    client
        .publish_confirmed("tls.after", b"still".to_vec())
        .await
        .unwrap();
}

/// One HTTP/1.1 request over TLS with the client certificate and no bearer token.
async fn https(pki: &TlsFixture, addr: std::net::SocketAddr, request: &str) -> String {
    use rustls::pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(&pki.ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let chain = rustls::pki_types::CertificateDer::pem_file_iter(&pki.client_cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&pki.client_key).unwrap();
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap();
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, stream)
        .await
        .unwrap();
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    let _ = tls.read_to_string(&mut response).await;
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_door_speaks_tls_and_maps_client_certificates_too() {
    let dir = tempfile::tempdir().unwrap();
    let pki = tls_fixture(dir.path(), "svc.example");
    let server = server(dir.path(), &pki).await;
    let http = server.http.unwrap();
    let publish = |topic: &str| {
        let body = format!("{{\"topic\": \"{topic}\", \"payload\": 1}}");
        format!(
            "POST /api/v1/messages/publish HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let allowed = https(&pki, http, &publish("tls.http")).await;
    assert!(allowed.starts_with("HTTP/1.1 200"), "{allowed}");
    let refused = https(&pki, http, &publish("plain.http")).await;
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");

    // The same listeners as a user's tools see them.
    let native = server.tcp_addr();
    let tools = tokio::task::spawn_blocking(move || {
        let s_client = std::process::Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &native.to_string(),
                "-servername",
                "localhost",
            ])
            .arg("-CAfile")
            .arg(&pki.ca)
            .arg("-cert")
            .arg(&pki.client_cert)
            .arg("-key")
            .arg(&pki.client_key)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl runs");
        let curl = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg("--cacert")
            .arg(&pki.ca)
            .arg("--cert")
            .arg(&pki.client_cert)
            .arg("--key")
            .arg(&pki.client_key)
            .arg(format!("https://localhost:{}/api/v1/health/live", http.port()))
            .output()
            .expect("curl runs");
        let curl_without_cert = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg("--cacert")
            .arg(&pki.ca)
            .arg(format!("https://localhost:{}/api/v1/health/live", http.port()))
            .output()
            .expect("curl runs");
        (s_client, curl, curl_without_cert)
    })
    .await
    .unwrap();
    let (s_client, curl, curl_without_cert) = tools;
    let text = String::from_utf8_lossy(&s_client.stdout);
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    assert!(text.contains("TLSv1.3"), "{text}");
    assert_eq!(String::from_utf8_lossy(&curl.stdout), "200", "{curl:?}");
    assert_eq!(
        String::from_utf8_lossy(&curl_without_cert.stdout),
        "000",
        "mutual TLS: no certificate, no connection"
    );
}

/// A certificate renewed in place (same paths, new files) is picked up by a reload: connections
/// made afterwards see the new certificate, the connection made before carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_picks_up_renewed_certificates_for_new_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (old_dir, new_dir, live) = (
        dir.path().join("old"),
        dir.path().join("new"),
        dir.path().join("live"),
    );
    for d in [&old_dir, &new_dir, &live] {
        std::fs::create_dir(d).unwrap();
    }
    let (old, new) = (
        tls_fixture(&old_dir, "svc.example"),
        tls_fixture(&new_dir, "svc.example"),
    );
    let install = |pki: &TlsFixture| {
        for (from, name) in [
            (&pki.cert, "cert.pem"),
            (&pki.key, "key.pem"),
            (&pki.ca, "ca.pem"),
        ] {
            std::fs::copy(from, live.join(name)).unwrap();
        }
    };
    install(&old);
    let file = dir.path().join("mycelium.toml");
    std::fs::write(
        &file,
        format!(
            "[server]\nsocket_path = \"{}\"\ntcp = \"127.0.0.1:0\"\nshutdown_timeout = \"2s\"\n\
             [http]\nenabled = false\n[storage]\ndata_dir = \"{}\"\n\
             [tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n\
             [[auth.users]]\nname = \"svc\"\ncert_common_name = \"svc.example\"\nroles = [\"producer\", \"consumer\"]\n",
            dir.path().join("t.sock").display(),
            dir.path().join("data").display(),
            live.join("cert.pem").display(),
            live.join("key.pem").display(),
            live.join("ca.pem").display(),
        ),
    )
    .unwrap();
    let server = TestServer::start_file(&file).await;
    let url = format!("tls://localhost:{}", server.tcp_addr().port());
    let with = |pki: &TlsFixture| options(pki, Some((pki.client_cert.as_path(), pki.client_key.as_path())));
    let before = connect(&url, with(&old)).await.unwrap();
    assert!(
        connect(&url, with(&new)).await.is_err(),
        "the new CA is not in use yet"
    );

    install(&new);
    let report = server.reloader.reload(false).await.unwrap();
    assert!(
        report.applied.iter().any(|line| line.starts_with("tls:")),
        "{:?}",
        report.applied
    );
    let after = connect(&url, with(&new)).await.unwrap();
    after.publish_confirmed("tls.after", b"x".to_vec()).await.unwrap();
    assert!(
        connect(&url, with(&old)).await.is_err(),
        "the old certificate is retired"
    );
    // The connection made before the reload keeps working.
    before
        .publish_confirmed("tls.before", b"x".to_vec())
        .await
        .unwrap();
    server.stop().await;
}
