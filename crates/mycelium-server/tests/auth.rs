//! The native door's authentication and authorization matrix, over real sockets: the same
//! refusals the HTTP door gives (its matrix is in `mycelium-http/tests/api.rs`), each counted and
//! audited.

mod support;

use std::time::Duration;

use bytes::BytesMut;
use mycelium_broker::Role;
use mycelium_protocol::admin::AdminRequest;
use mycelium_protocol::{Ack, ErrorCode, Frame, Publish, Subscribe, SubscribeOptions};
use mycelium_test_support::{TEST_TOKEN, TestServer};
use support::{Got, Raw};

const SECRET: &str = "a test secret of at least thirty-two bytes";
const PRODUCER: &str = "myc_producer-token";
const CONSUMER: &str = "myc_consumer-token";
const OTHER: &str = "myc_other-consumer-token";

fn user(
    name: &str,
    token: &str,
    role: &str,
    publish: &[&str],
    subscribe: &[&str],
) -> mycelium_server::UserSection {
    let list = |items: &[&str]| (!items.is_empty()).then(|| items.iter().map(|s| (*s).to_owned()).collect());
    mycelium_server::UserSection {
        name: name.into(),
        token_sha256: mycelium_auth::token_hash_hex(token),
        roles: vec![role.into()],
        publish: list(publish),
        subscribe: list(subscribe),
        ..mycelium_server::UserSection::default()
    }
}

struct Setup {
    server: TestServer,
    audit: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn server(local_admins: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let audit = dir.path().join("audit.log");
    let audit_path = audit.display().to_string();
    let server = TestServer::start_at(&dir.path().join("a.sock"), move |c| {
        c.server.tcp = "127.0.0.1:0".into();
        c.http.enabled = true;
        c.http.listen = "127.0.0.1:0".into();
        c.storage.data_dir = data.display().to_string();
        c.auth.jwt_secret = SECRET.into();
        c.auth.jwt_leeway = mycelium_server::units::HumanDuration(Duration::ZERO);
        c.auth.local_admins = local_admins;
        c.auth.audit_log = audit_path;
        c.auth
            .users
            .push(user("prod", PRODUCER, "producer", &["orders.>"], &[]));
        c.auth
            .users
            .push(user("cons", CONSUMER, "consumer", &[], &["orders.*", "jobs"]));
        c.auth
            .users
            .push(user("other", OTHER, "consumer", &[], &["jobs"]));
        c.topics.push(mycelium_server::config_topic("jobs", |t| {
            t.delivery = "at_least_once".into();
        }));
    })
    .await;
    Setup {
        server,
        audit,
        _dir: dir,
    }
}

fn jwt(secret: &str, role: Role, ttl: Duration) -> String {
    let config = mycelium_auth::JwtConfig {
        key: mycelium_auth::JwtKey::Hs256(secret.as_bytes().to_vec()),
        role_claim: "roles".into(),
        leeway: Duration::ZERO,
        issuer: None,
        audience: None,
        cache_tokens: 0,
    };
    let request = mycelium_auth::TokenRequest {
        subject: "jwt-user".into(),
        roles: vec![role],
        ttl,
        publish: None,
        consume: Some(vec!["orders.>".into()]),
    };
    mycelium_auth::issue(&config, &request).unwrap()
}

async fn tcp(server: &TestServer, token: &str) -> Raw {
    let (raw, got) = Raw::connect_tcp(server).await.hello_with(token.as_bytes()).await;
    assert_eq!(got, Some(Got::Welcome), "token {token}");
    raw
}

fn code_of(got: Option<Got>) -> u16 {
    match got {
        Some(Got::Error { code, .. }) => code,
        other => panic!("expected ERROR, got {other:?}"),
    }
}

async fn refused_at_hello(server: &TestServer, token: &[u8]) -> String {
    let (mut raw, got) = Raw::connect_tcp(server).await.hello_with(token).await;
    let Some(Got::Error { code, message, .. }) = got else {
        panic!("expected ERROR, got {got:?}");
    };
    assert_eq!(code, ErrorCode::NotAuthenticated as u16, "{message}");
    assert_eq!(raw.recv().await, None, "closed after the refusal");
    message
}

async fn subscribe_code(raw: &mut Raw, request_id: u32, pattern: &str, options: &[u8]) -> Option<u16> {
    raw.send(
        request_id,
        &Frame::Subscribe(Subscribe {
            pattern,
            group: None,
            options,
        }),
    )
    .await;
    match raw.recv().await {
        Some(Got::SubscribeOk { request_id: r, .. }) if r == request_id => None,
        other => Some(code_of(other)),
    }
}

async fn publish_code(raw: &mut Raw, request_id: u32, topic: &str) -> Option<u16> {
    raw.send(
        request_id,
        &Frame::Publish(Publish {
            topic,
            payload: b"x",
            confirm: true,
            ..Default::default()
        }),
    )
    .await;
    match raw.recv().await {
        Some(Got::PublishOk { request_id: r, .. }) if r == request_id => None,
        other => Some(code_of(other)),
    }
}

fn durable(name: &str) -> Vec<u8> {
    let mut buf = BytesMut::new();
    SubscribeOptions {
        durable: Some(name),
        ..SubscribeOptions::default()
    }
    .encode(&mut buf)
    .unwrap();
    buf.to_vec()
}

const NOT_PERMITTED: Option<u16> = Some(ErrorCode::NotPermitted as u16);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_is_checked_before_any_other_frame() {
    let setup = server(true).await;
    let server = &setup.server;
    // No credential, garbage, a JWT signed with another key, an expired JWT: refused at HELLO.
    let none = refused_at_hello(server, b"").await;
    assert!(none.contains("no credential"), "{none}");
    refused_at_hello(server, b"myc_not-a-known-token").await;
    refused_at_hello(server, b"\xff\xfe").await;
    let forged = jwt(
        "another secret that is also thirty-two bytes",
        Role::Admin,
        Duration::from_secs(60),
    );
    let forged = refused_at_hello(server, forged.as_bytes()).await;
    assert!(forged.contains("signature"), "{forged}");
    let expired = jwt(SECRET, Role::Consumer, Duration::from_secs(1));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let expired = refused_at_hello(server, expired.as_bytes()).await;
    assert!(expired.contains("expired"), "{expired}");
    // Frames sent before HELLO's answer are never acted on.
    let mut raw = Raw::connect_tcp(server).await;
    let mut buf = BytesMut::new();
    mycelium_protocol::encode(
        &mut buf,
        0,
        &Frame::Hello(mycelium_protocol::Hello {
            version_min: 1,
            version_max: 1,
            client_name: "x",
            token: b"",
        }),
    )
    .unwrap();
    mycelium_protocol::encode(
        &mut buf,
        1,
        &Frame::Publish(Publish {
            topic: "orders.eu",
            payload: b"sneaky",
            ..Default::default()
        }),
    )
    .unwrap();
    raw.send_bytes(&buf).await;
    let got = raw.recv_until_closed().await;
    assert_eq!(got.len(), 1, "{got:?}");
    // A valid JWT and a service user's token get in.
    let valid = jwt(SECRET, Role::Consumer, Duration::from_secs(60));
    let mut by_jwt = tcp(server, &valid).await;
    assert_eq!(subscribe_code(&mut by_jwt, 1, "orders.eu", b"").await, None);
    let mut producer = tcp(server, PRODUCER).await;
    // On the Unix socket the broker's own user needs no token, and is an admin.
    let mut local = Raw::hello(server).await;
    local.send(9, &Frame::Stats).await;
    assert!(matches!(local.recv().await, Some(Got::Other(text)) if text.starts_with("StatsOk")));
    // Nobody saw the sneaky publish.
    let mut watcher = tcp(server, TEST_TOKEN).await;
    assert_eq!(subscribe_code(&mut watcher, 1, "orders.>", b"").await, None);
    assert_eq!(publish_code(&mut producer, 2, "orders.eu").await, None);
    match watcher.recv().await {
        Some(Got::Deliver { payload, .. }) => assert_eq!(payload, b"x"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_grants_owners_and_dead_letter_queues_are_enforced_and_audited() {
    let setup = server(true).await;
    let server = &setup.server;
    let mut producer = tcp(server, PRODUCER).await;
    let mut consumer = tcp(server, CONSUMER).await;
    let mut other = tcp(server, OTHER).await;
    let mut admin = tcp(server, TEST_TOKEN).await;

    // Wrong role.
    assert_eq!(
        subscribe_code(&mut producer, 1, "orders.eu", b"").await,
        NOT_PERMITTED
    );
    assert_eq!(publish_code(&mut consumer, 2, "orders.eu").await, NOT_PERMITTED);
    // Wrong topic: refused before the topic is looked up, so the same for one that exists and
    // one that does not.
    assert_eq!(publish_code(&mut producer, 3, "orders.eu").await, None);
    assert_eq!(publish_code(&mut producer, 4, "jobs").await, NOT_PERMITTED);
    assert_eq!(
        publish_code(&mut producer, 5, "no.such.topic").await,
        NOT_PERMITTED
    );
    // A pattern wider than the grant.
    assert_eq!(
        subscribe_code(&mut consumer, 6, "orders.>", b"").await,
        NOT_PERMITTED
    );
    assert_eq!(subscribe_code(&mut consumer, 7, ">", b"").await, NOT_PERMITTED);
    assert_eq!(subscribe_code(&mut consumer, 8, "orders.*", b"").await, None);
    // STATS and ADMIN are admin only.
    consumer.send(9, &Frame::Stats).await;
    assert_eq!(Some(code_of(consumer.recv().await)), NOT_PERMITTED);
    let list = serde_json::to_vec(&AdminRequest::Health).unwrap();
    consumer.send(10, &Frame::Admin(&list)).await;
    assert_eq!(Some(code_of(consumer.recv().await)), NOT_PERMITTED);
    admin.send(10, &Frame::Admin(&list)).await;
    assert!(matches!(
        admin.recv().await,
        Some(Got::AdminOk { request_id: 10, .. })
    ));
    // Nobody publishes into a dead-letter queue, not even an admin; reading one is admin only.
    assert_eq!(publish_code(&mut admin, 11, "jobs.dlq").await, NOT_PERMITTED);
    assert_eq!(
        subscribe_code(&mut other, 12, "jobs.dlq", b"").await,
        NOT_PERMITTED
    );
    // A durable subscription belongs to its creator.
    assert_eq!(
        subscribe_code(&mut consumer, 13, "jobs", &durable("w")).await,
        None
    );
    assert_eq!(
        subscribe_code(&mut other, 14, "jobs", &durable("w")).await,
        NOT_PERMITTED
    );
    assert_eq!(
        subscribe_code(&mut other, 15, "jobs", &durable("mine")).await,
        None
    );
    assert_eq!(
        subscribe_code(&mut admin, 16, "jobs", &durable("w")).await,
        None,
        "admins may"
    );
    // An ACK names a subscription of this connection: `consumer`'s subscription 2 (its durable
    // `w`) is unknown on `other`'s connection, which holds only subscription 1.
    other
        .send(
            17,
            &Frame::Ack(Ack {
                subscription_id: 2,
                sequence: 1,
            }),
        )
        .await;
    assert_eq!(code_of(other.recv().await), ErrorCode::UnknownSubscription as u16);
    // The connections refused stay usable.
    assert_eq!(publish_code(&mut producer, 18, "orders.us").await, None);

    // Every refusal is counted by door and reason, and audited with who, what and why.
    let metrics = http_get(server, "/metrics").await;
    for (reason, at_least) in [("role", 4), ("topic", 4), ("dlq", 1), ("owner", 1)] {
        let line = format!("mycelium_auth_refusals_total{{door=\"tcp\",reason=\"{reason}\"}}");
        let value: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line).map(|v| v.trim().parse().unwrap()))
            .unwrap_or_else(|| panic!("{line} missing"));
        assert!(value >= at_least, "{line} = {value}");
    }
    let audit = wait_for_audit(&setup.audit, |lines| lines.iter().any(|l| l["reason"] == "owner")).await;
    let owner = audit.iter().find(|l| l["reason"] == "owner").unwrap();
    assert_eq!(owner["principal"], "other");
    assert_eq!(owner["door"], "tcp");
    assert_eq!(owner["outcome"], "denied");
    assert_eq!(owner["topic"], "jobs");
    assert!(owner["time"].as_str().unwrap().ends_with('Z'));
    let topic = audit
        .iter()
        .find(|l| l["reason"] == "topic" && l["topic"] == "no.such.topic")
        .unwrap();
    assert_eq!(
        (topic["principal"].as_str(), topic["action"].as_str()),
        (Some("prod"), Some("publish"))
    );
    // Admin actions are audited too.
    assert!(
        audit
            .iter()
            .any(|l| l["action"] == "health" && l["outcome"] == "allowed" && l["principal"] == "test-admin"),
        "{audit:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_local_admins_the_unix_socket_needs_a_credential_too() {
    let setup = server(false).await;
    let server = &setup.server;
    let (mut raw, got) = Raw::connect(server).await.hello_with(b"").await;
    assert_eq!(code_of(got), ErrorCode::NotAuthenticated as u16);
    assert_eq!(raw.recv().await, None);
    let (_, got) = Raw::connect(server).await.hello_with(CONSUMER.as_bytes()).await;
    assert_eq!(got, Some(Got::Welcome));
}

/// A GET over a plain TCP connection to the HTTP listener; the body.
async fn http_get(server: &TestServer, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(server.http.unwrap())
        .await
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

async fn wait_for_audit(
    path: &std::path::Path,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    for _ in 0..200 {
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if done(&lines) {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "the audit log never showed what was expected: {}",
        std::fs::read_to_string(path).unwrap_or_default()
    );
}
