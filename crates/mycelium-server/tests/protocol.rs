//! The server over real sockets: handshake, limits, malformed input, shutdown.

mod support;

use std::time::Duration;

use mycelium_protocol::{ErrorCode, Frame, Hello, Publish, Subscribe, SubscriptionRef};
use mycelium_server::units::{ByteSize, HumanDuration};
use mycelium_test_support::TestServer;
use support::{Got, Raw};

async fn subscribe(raw: &mut Raw, request_id: u32, pattern: &str) -> u32 {
    raw.send(
        request_id,
        &Frame::Subscribe(Subscribe {
            pattern,
            group: None,
            options: b"",
        }),
    )
    .await;
    match raw.recv().await {
        Some(Got::SubscribeOk { request_id: r, id }) if r == request_id => id,
        other => panic!("expected SUBSCRIBE_OK, got {other:?}"),
    }
}

async fn publish(raw: &mut Raw, topic: &str, payload: &[u8]) {
    raw.send(
        0,
        &Frame::Publish(Publish {
            topic,
            payload,
            ..Default::default()
        }),
    )
    .await;
}

fn code_of(got: &Got) -> u16 {
    match got {
        Got::Error { code, .. } => *code,
        other => panic!("expected ERROR, got {other:?}"),
    }
}

#[tokio::test]
async fn publish_subscribe_over_unix_and_tcp() {
    let server = TestServer::start().await;
    let mut sub = Raw::hello(&server).await;
    let id = subscribe(&mut sub, 7, "a.*").await;
    // A publisher over TCP (with a credential: TCP needs one) reaches a subscriber over the
    // Unix socket.
    let tcp = tokio::net::TcpStream::connect(server.tcp_addr()).await.unwrap();
    let (mut r, mut w) = tcp.into_split();
    let mut buf = bytes::BytesMut::new();
    mycelium_protocol::encode(
        &mut buf,
        0,
        &Frame::Hello(Hello {
            version_min: 1,
            version_max: 1,
            client_name: "t",
            token: mycelium_test_support::TEST_TOKEN.as_bytes(),
        }),
    )
    .unwrap();
    mycelium_protocol::encode(
        &mut buf,
        5,
        &Frame::Publish(Publish {
            topic: "a.b",
            payload: b"hi",
            confirm: true,
            ..Default::default()
        }),
    )
    .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut w, &buf).await.unwrap();
    assert_eq!(
        sub.recv().await,
        Some(Got::Deliver {
            sub: id,
            sequence: 1,
            topic: "a.b".into(),
            payload: b"hi".to_vec()
        })
    );
    let mut reply = bytes::BytesMut::new();
    loop {
        tokio::io::AsyncReadExt::read_buf(&mut r, &mut reply)
            .await
            .unwrap();
        let mut rest = &reply[..];
        let mut frames = Vec::new();
        while let Some((d, used)) = mycelium_protocol::decode(rest, usize::MAX).unwrap() {
            frames.push(d.frame.kind());
            rest = &rest[used..];
        }
        if frames.len() == 2 {
            assert_eq!(
                frames,
                [
                    mycelium_protocol::Kind::Welcome,
                    mycelium_protocol::Kind::PublishOk
                ]
            );
            break;
        }
    }
}

#[tokio::test]
async fn garbage_gets_an_error_and_a_close_while_others_keep_working() {
    let server = TestServer::start().await;
    let mut healthy = Raw::hello(&server).await;
    let id = subscribe(&mut healthy, 1, "t").await;

    // Garbage before the handshake.
    let mut garbage = Raw::connect(&server).await;
    garbage.send_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let got = garbage.recv_until_closed().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert!([ErrorCode::FrameTooLarge as u16, ErrorCode::MalformedFrame as u16].contains(&code_of(&got[0])));

    // A malformed frame after the handshake.
    let mut bad = Raw::hello(&server).await;
    bad.send_bytes(&[8, 0, 0, 0, 0xEE, 0, 1, 0, 0, 0, 9, 9]).await;
    let got = bad.recv_until_closed().await;
    assert_eq!(code_of(&got[0]), ErrorCode::MalformedFrame as u16);
    assert!(matches!(&got[0], Got::Error { message, .. } if message.contains("unknown frame kind 0xEE")));

    // An oversize frame: refused from its length prefix alone.
    let mut big = Raw::hello(&server).await;
    big.send_bytes(&(u32::MAX - 10).to_le_bytes()).await;
    let got = big.recv_until_closed().await;
    assert_eq!(code_of(&got[0]), ErrorCode::FrameTooLarge as u16);

    // The healthy connection never noticed.
    let mut publisher = Raw::hello(&server).await;
    publish(&mut publisher, "t", b"still here").await;
    assert_eq!(
        healthy.recv().await,
        Some(Got::Deliver {
            sub: id,
            sequence: 1,
            topic: "t".into(),
            payload: b"still here".to_vec()
        })
    );
}

#[tokio::test]
async fn handshake_rules() {
    let server =
        TestServer::start_with(|c| c.server.connection_timeout = HumanDuration(Duration::from_millis(300)))
            .await;
    // A frame before HELLO.
    let mut early = Raw::connect(&server).await;
    early.send(3, &Frame::Ping).await;
    let got = early.recv_until_closed().await;
    assert_eq!(
        got,
        vec![Got::Error {
            request_id: 3,
            code: ErrorCode::HandshakeRequired as u16,
            message: "expected HELLO, got Ping".into()
        }]
    );
    // An unsupported version.
    let mut future = Raw::connect(&server).await;
    future
        .send(
            1,
            &Frame::Hello(Hello {
                version_min: 7,
                version_max: 9,
                client_name: "",
                token: b"",
            }),
        )
        .await;
    assert_eq!(
        code_of(&future.recv_until_closed().await[0]),
        ErrorCode::UnsupportedVersion as u16
    );
    // Silence: the connection timeout closes it.
    let mut silent = Raw::connect(&server).await;
    let got = silent.recv_until_closed().await;
    assert_eq!(code_of(&got[0]), ErrorCode::HandshakeTimeout as u16);
}

#[tokio::test]
async fn max_connections_is_enforced_with_a_clear_error() {
    let server = TestServer::start_with(|c| c.server.max_connections = 2).await;
    let _a = Raw::hello(&server).await;
    let _b = Raw::hello(&server).await;
    let mut c = Raw::connect(&server).await;
    let got = c.recv_until_closed().await;
    assert_eq!(code_of(&got[0]), ErrorCode::TooManyConnections as u16);
    drop(_a);
    // Room again once a connection goes away.
    let mut ok = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut d = Raw::connect(&server).await;
        d.send(
            0,
            &Frame::Hello(Hello {
                version_min: 1,
                version_max: 1,
                client_name: "",
                token: b"",
            }),
        )
        .await;
        if d.recv().await == Some(Got::Welcome) {
            ok = Some(d);
            break;
        }
    }
    assert!(ok.is_some(), "a slot frees up after a disconnect");
}

#[tokio::test]
async fn one_address_holds_at_most_max_connections_per_ip() {
    let server = TestServer::start_with(|c| c.server.max_connections_per_ip = 2).await;
    let token = mycelium_test_support::TEST_TOKEN.as_bytes();
    let (a, got) = Raw::connect_tcp(&server).await.hello_with(token).await;
    assert_eq!(got, Some(Got::Welcome));
    let (_b, got) = Raw::connect_tcp(&server).await.hello_with(token).await;
    assert_eq!(got, Some(Got::Welcome));
    let mut third = Raw::connect_tcp(&server).await;
    let got = third.recv_until_closed().await;
    assert_eq!(code_of(&got[0]), ErrorCode::TooManyConnections as u16);
    assert!(matches!(&got[0], Got::Error { message, .. } if message.contains("max_connections_per_ip")));
    // The Unix socket is not an address: it is not counted.
    let _local = Raw::hello(&server).await;
    drop(a);
    let mut admitted = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (_, got) = Raw::connect_tcp(&server).await.hello_with(token).await;
        if got == Some(Got::Welcome) {
            admitted = true;
            break;
        }
    }
    assert!(admitted, "the address gets its place back after a disconnect");
}

#[tokio::test]
async fn unknown_topics_and_oversize_messages_are_refused_per_request() {
    let server = TestServer::start_with(|c| {
        c.server.auto_create_topics = false;
        c.topics.push(mycelium_server::config_topic("small", |t| {
            t.max_message_size = ByteSize(8)
        }));
    })
    .await;
    let mut raw = Raw::hello(&server).await;
    raw.send(
        1,
        &Frame::Publish(Publish {
            topic: "nope",
            payload: b"x",
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(
        code_of(&raw.recv().await.unwrap()),
        ErrorCode::UnknownTopic as u16
    );
    raw.send(
        2,
        &Frame::Publish(Publish {
            topic: "small",
            payload: b"123456789",
            ..Default::default()
        }),
    )
    .await;
    let got = raw.recv().await.unwrap();
    assert_eq!(code_of(&got), ErrorCode::MessageTooLarge as u16);
    assert!(matches!(got, Got::Error { request_id: 2, .. }));
    // The connection stays usable after a refused request.
    raw.send(3, &Frame::Ping).await;
    assert_eq!(raw.recv().await, Some(Got::Pong(3)));
}

#[tokio::test]
async fn unsubscribe_and_unknown_subscription() {
    let server = TestServer::start().await;
    let mut raw = Raw::hello(&server).await;
    let id = subscribe(&mut raw, 1, "x").await;
    raw.send(2, &Frame::Unsubscribe(SubscriptionRef { subscription_id: id }))
        .await;
    assert_eq!(raw.recv().await, Some(Got::UnsubscribeOk(id)));
    raw.send(3, &Frame::Unsubscribe(SubscriptionRef { subscription_id: id }))
        .await;
    assert_eq!(
        code_of(&raw.recv().await.unwrap()),
        ErrorCode::UnknownSubscription as u16
    );
    raw.send(
        4,
        &Frame::Subscribe(Subscribe {
            pattern: "a.>.b",
            group: None,
            options: b"",
        }),
    )
    .await;
    assert_eq!(
        code_of(&raw.recv().await.unwrap()),
        ErrorCode::InvalidPattern as u16
    );
}

#[tokio::test]
async fn shutdown_flushes_and_removes_the_socket() {
    let server = TestServer::start().await;
    let mut sub = Raw::hello(&server).await;
    let id = subscribe(&mut sub, 1, "t").await;
    let mut publisher = Raw::hello(&server).await;
    for i in 0..100u32 {
        publish(&mut publisher, "t", &i.to_le_bytes()).await;
    }
    publisher.send(9, &Frame::Ping).await;
    assert_eq!(publisher.recv().await, Some(Got::Pong(9)));
    let socket = server.socket.clone();
    server.stop().await;
    let got = sub.recv_until_closed().await;
    assert_eq!(got.len(), 100, "everything routed before shutdown is delivered");
    assert!(matches!(got[99], Got::Deliver { sub, sequence: 100, .. } if sub == id));
    assert!(!socket.exists(), "socket file removed");
}

#[tokio::test]
async fn stale_socket_is_replaced_and_live_socket_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    // A stale socket: bound by a listener that is gone.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let mut config = mycelium_server::Config::default();
    config.server.socket_path = path.display().to_string();
    config.server.tcp = String::new();
    let server = mycelium_server::Server::bind(config.clone())
        .await
        .expect("stale socket replaced");
    // A second broker on the same live path is refused.
    let error = mycelium_server::Server::bind(config.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("a running broker is listening on it"), "{error}");
    drop(server);
    // A regular file is never deleted.
    let file = dir.path().join("file");
    std::fs::write(&file, b"precious").unwrap();
    config.server.socket_path = file.display().to_string();
    let error = mycelium_server::Server::bind(config)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("is not a socket"), "{error}");
    assert_eq!(std::fs::read(&file).unwrap(), b"precious");
}

#[tokio::test]
async fn socket_mode_is_applied() {
    use std::os::unix::fs::PermissionsExt;
    let server = TestServer::start_with(|c| c.server.socket_mode = "0600".into()).await;
    let mode = std::fs::metadata(&server.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[tokio::test]
async fn admin_requests_are_typed_and_refusals_carry_their_code() {
    let server = TestServer::start().await;
    let mut raw = Raw::hello(&server).await;
    // An operation the protocol does not define, and a known one with a field it does not have.
    for (request_id, body) in [
        (5, r#"{"op":"drop_everything"}"#),
        (6, r#"{"op":"dlq_get","topic":"jobs","sequence":1,"force":true}"#),
        (7, "not json"),
    ] {
        raw.send(request_id, &Frame::Admin(body.as_bytes())).await;
        match raw.recv().await {
            Some(Got::Error {
                request_id: r, code, ..
            }) => {
                assert_eq!(r, request_id);
                assert_eq!(code, ErrorCode::InvalidRequest as u16, "{body}");
            }
            other => panic!("{body}: expected ERROR, got {other:?}"),
        }
    }
    // A well-formed request for a dead-letter queue that does not exist.
    let list = mycelium_protocol::admin::AdminRequest::DlqList {
        topic: "nowhere".into(),
        filter: Default::default(),
        after: 0,
        limit: 10,
    };
    let body = serde_json::to_vec(&list).unwrap();
    raw.send(8, &Frame::Admin(&body)).await;
    let got = raw.recv().await.expect("an answer");
    assert_eq!(code_of(&got), ErrorCode::NotFound as u16);
    // The connection is still usable after refused ADMIN requests (subscribe asserts SUBSCRIBE_OK).
    subscribe(&mut raw, 9, "after.admin").await;
    server.stop().await;
}

/// Sends one ADMIN request and returns its ADMIN_OK answer, decoded.
async fn admin<T: serde::de::DeserializeOwned>(
    raw: &mut Raw,
    request_id: u32,
    request: &mycelium_protocol::admin::AdminRequest,
) -> T {
    let body = serde_json::to_vec(request).unwrap();
    raw.send(request_id, &Frame::Admin(&body)).await;
    loop {
        match raw.recv().await.expect("an answer") {
            Got::AdminOk { request_id: r, json } if r == request_id => {
                return serde_json::from_slice(&json).unwrap();
            }
            Got::Deliver { .. } => {}
            other => panic!("{request:?}: expected ADMIN_OK, got {other:?}"),
        }
    }
}

/// ADMIN: the first page of `jobs`'s dead letters.
fn list_jobs_dlq() -> mycelium_protocol::admin::AdminRequest {
    mycelium_protocol::admin::AdminRequest::DlqList {
        topic: "jobs".into(),
        filter: Default::default(),
        after: 0,
        limit: 10,
    }
}

/// Publishes `payload` to the stored topic `jobs` (confirmed), has the durable consumer `sub`
/// TERM it, and waits until the dead-letter queue holds `depth` dead letters.
async fn dead_letter(raw: &mut Raw, request_id: u32, sub: u32, payload: &[u8], depth: u64) {
    use mycelium_protocol::admin::DlqPage;
    let publish = Publish {
        topic: "jobs",
        payload,
        confirm: true,
        ..Default::default()
    };
    raw.send(request_id, &Frame::Publish(publish)).await;
    let mut delivered = None;
    while delivered.is_none() {
        match raw.recv().await.expect("a frame") {
            Got::PublishOk { .. } => {}
            Got::Deliver { sub: s, sequence, .. } if s == sub => delivered = Some(sequence),
            other => panic!("expected PUBLISH_OK and DELIVER, got {other:?}"),
        }
    }
    let term = mycelium_protocol::Term {
        ack: mycelium_protocol::Ack {
            subscription_id: sub,
            sequence: delivered.unwrap(),
        },
        reason: "cannot parse",
    };
    raw.send(0, &Frame::Term(term)).await;
    let list = list_jobs_dlq();
    // The DLQ is written by the storage writer after the dispatcher hands the message over.
    for attempt in 0.. {
        let body = serde_json::to_vec(&list).unwrap();
        raw.send(request_id + 1, &Frame::Admin(&body)).await;
        match raw.recv().await.expect("an answer") {
            Got::AdminOk { json, .. } => {
                let page: DlqPage = serde_json::from_slice(&json).unwrap();
                if page.depth == depth {
                    return;
                }
            }
            Got::Error { code, .. } if code == ErrorCode::NotFound as u16 => {}
            other => panic!("expected ADMIN_OK, got {other:?}"),
        }
        assert!(attempt < 500, "the dead letter never reached the DLQ");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn admin_lists_gets_replays_and_purges_dead_letters_and_reports_health() {
    use mycelium_protocol::admin::{AdminRequest, DeadLetter, DlqFilter, DlqPage, PurgeReport, ReplayReport};
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("topics.toml");
    std::fs::write(
        &file,
        format!(
            "[storage]\ndata_dir = \"{}\"\n\
             [[topics]]\nname = \"jobs\"\ndelivery = \"at_least_once\"\n\
             [[topics]]\nname = \"redo\"\ndelivery = \"at_least_once\"\n",
            data.path().join("data").display()
        ),
    )
    .unwrap();
    let stored = mycelium_server::Config::load(Some(&file), Vec::<(String, String)>::new()).unwrap();
    let server = TestServer::start_with(|c| {
        c.topics = stored.topics.clone();
        c.storage = stored.storage.clone();
    })
    .await;
    let mut raw = Raw::hello(&server).await;
    let mut options = bytes::BytesMut::new();
    mycelium_protocol::SubscribeOptions {
        durable: Some("workers"),
        start: Some(mycelium_protocol::StartPosition::Beginning),
        ..Default::default()
    }
    .encode(&mut options)
    .unwrap();
    let subscribe = Subscribe {
        pattern: "jobs",
        group: None,
        options: &options,
    };
    raw.send(1, &Frame::Subscribe(subscribe)).await;
    let Some(Got::SubscribeOk { id: sub, .. }) = raw.recv().await else {
        panic!("expected SUBSCRIBE_OK")
    };
    dead_letter(&mut raw, 10, sub, b"first", 1).await;

    let page: DlqPage = admin(&mut raw, 20, &list_jobs_dlq()).await;
    assert_eq!((page.dlq.as_str(), page.entries.len()), ("jobs.dlq", 1));
    let entry: DeadLetter = admin(
        &mut raw,
        21,
        &AdminRequest::DlqGet {
            topic: "jobs".into(),
            sequence: page.entries[0].sequence,
        },
    )
    .await;
    assert_eq!(
        (
            entry.reason.as_str(),
            entry.error.as_deref(),
            entry.payload.as_str()
        ),
        ("terminated", Some("cannot parse"), "first")
    );
    assert_eq!(
        (entry.topic.as_str(), entry.subscription.as_str()),
        ("jobs", "workers")
    );

    // Replayed to another topic: gone from the DLQ, stored in the target.
    let report: ReplayReport = admin(
        &mut raw,
        22,
        &AdminRequest::DlqReplay {
            topic: "jobs".into(),
            filter: DlqFilter::default(),
            target: Some("redo".into()),
            rate: None,
        },
    )
    .await;
    assert_eq!(
        (report.replayed, report.duplicates, report.failed.len()),
        (1, 0, 0)
    );
    let page: DlqPage = admin(&mut raw, 23, &list_jobs_dlq()).await;
    assert_eq!((page.depth, page.entries.len()), (0, 0));

    // Purged: a second dead letter, removed for good.
    dead_letter(&mut raw, 30, sub, b"second", 1).await;
    let purged: PurgeReport = admin(
        &mut raw,
        40,
        &AdminRequest::DlqPurge {
            topic: "jobs".into(),
            filter: DlqFilter::default(),
        },
    )
    .await;
    assert_eq!(purged.purged, 1);

    let health: serde_json::Value = admin(&mut raw, 41, &AdminRequest::Health).await;
    assert!(health["health"]["checks"].is_array(), "{health}");
    server.stop().await;
}

#[tokio::test]
async fn silent_connections_are_pinged_then_closed_and_half_sent_frames_cut_off() {
    let server = TestServer::start_with(|c| {
        c.server.idle_timeout = HumanDuration(Duration::from_millis(300));
        c.server.frame_timeout = HumanDuration(Duration::from_millis(300));
    })
    .await;
    // Silent: a PING first; silent still, an ERROR and the close.
    let mut silent = Raw::hello(&server).await;
    assert_eq!(silent.recv().await, Some(Got::Other("Ping".into())));
    let rest = silent.recv_until_closed().await;
    assert_eq!(rest.len(), 1, "{rest:?}");
    assert_eq!(code_of(&rest[0]), ErrorCode::TimedOut as u16);
    // Answering the PING keeps a connection open.
    let mut alive = Raw::hello(&server).await;
    for _ in 0..3 {
        assert_eq!(alive.recv().await, Some(Got::Other("Ping".into())));
        alive.send(0, &Frame::Pong).await;
    }
    alive.send(5, &Frame::Ping).await;
    assert_eq!(alive.recv().await, Some(Got::Pong(5)));
    // Half a frame: the prefix promises 100 bytes, 10 come; cut off, not held for ever.
    let mut half = Raw::hello(&server).await;
    half.send_bytes(&[100, 0, 0, 0, 0x10, 0, 0, 0, 0, 0]).await;
    let got = half.recv_until_closed().await;
    let last = got.last().expect("an ERROR before the close");
    assert_eq!(code_of(last), ErrorCode::TimedOut as u16, "{got:?}");
    assert!(
        matches!(last, Got::Error { message, .. } if message.contains("incomplete")),
        "{got:?}"
    );
}

#[tokio::test]
async fn a_batch_of_bad_entries_gets_one_summarised_error() {
    let server = TestServer::start().await;
    let mut raw = Raw::hello(&server).await;
    let mut buf = bytes::BytesMut::new();
    let mut batch = mycelium_protocol::BatchWriter::new(&mut buf, 9);
    for topic in ["bad..topic", "ok", "also..bad", "bad..too"] {
        batch
            .push(&Publish {
                topic,
                payload: b"x",
                confirm: true,
                ..Default::default()
            })
            .unwrap();
    }
    batch.finish().unwrap();
    raw.send_bytes(&buf).await;
    raw.send(10, &Frame::Ping).await;
    let mut got = Vec::new();
    loop {
        match raw.recv().await.expect("answers") {
            Got::Pong(10) => break,
            other => got.push(other),
        }
    }
    // One PUBLISH_OK for the good entry, one ERROR for the three bad ones.
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(matches!(got[0], Got::PublishOk { request_id: 9, .. }), "{got:?}");
    let Got::Error { code, message, .. } = &got[1] else {
        panic!("{got:?}")
    };
    assert_eq!(*code, ErrorCode::InvalidTopic as u16);
    assert!(
        message.starts_with("3 of 4 batch entries refused; the first, entry 0:"),
        "{message}"
    );
}

#[tokio::test]
async fn the_http_door_caps_connections_per_address_and_gives_places_back() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = TestServer::start_at(&dir.path().join("h.sock"), move |c| {
        c.storage.data_dir = data.display().to_string();
        c.http.enabled = true;
        c.http.listen = "127.0.0.1:0".into();
        c.auth.jwt_secret = "a-shared-secret-of-at-least-32-bytes!".into();
        c.http.max_connections_per_ip = 2;
    })
    .await;
    let addr = server.http.expect("http listening");
    let probe = |mut stream: tokio::net::TcpStream| async move {
        stream
            .write_all(b"GET /api/v1/health/live HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer).await;
        answer
    };
    // Two idle connections hold this address's places: a third (accepted after them, in
    // order) is refused with 503.
    let held = vec![
        tokio::net::TcpStream::connect(addr).await.unwrap(),
        tokio::net::TcpStream::connect(addr).await.unwrap(),
    ];
    let third = tokio::net::TcpStream::connect(addr).await.unwrap();
    let answer = probe(third).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("http.max_connections_per_ip"), "{answer}");
    // A place given back is taken again.
    drop(held);
    let mut answer = String::new();
    for _ in 0..100 {
        answer = probe(tokio::net::TcpStream::connect(addr).await.unwrap()).await;
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    server.stop().await;
}

#[tokio::test]
async fn a_stats_answer_larger_than_a_frame_is_refused_not_sent() {
    let server = TestServer::start_with(|c| {
        c.server.max_frame_size = ByteSize(8 << 10);
    })
    .await;
    let mut raw = Raw::hello(&server).await;
    for i in 0..300 {
        publish(&mut raw, &format!("many.topics.number.{i:04}"), b"x").await;
    }
    raw.send(7, &Frame::Stats).await;
    let got = raw.recv().await.expect("an answer");
    assert_eq!(code_of(&got), ErrorCode::LimitReached as u16, "{got:?}");
    assert!(
        matches!(&got, Got::Error { request_id: 7, message, .. } if message.contains("GET /api/v1/topics")),
        "{got:?}"
    );
    // The connection goes on.
    raw.send(8, &Frame::Ping).await;
    assert_eq!(raw.recv().await, Some(Got::Pong(8)));
    server.stop().await;
}
