//! The client against an in-process broker: fanout, queue groups, order, errors, the breaker.

use std::time::Duration;

use mycelium_client::{Client, ClientOptions, ConnectionState, ErrorCode, ErrorKind};
use mycelium_test_support::TestServer;

async fn server(dir: &tempfile::TempDir) -> TestServer {
    TestServer::start_at(&dir.path().join("b.sock"), |_| {}).await
}

async fn wait_for(client: &Client, state: ConnectionState) {
    let mut changes = client.state_changes();
    tokio::time::timeout(Duration::from_secs(20), changes.wait_for(|s| *s == state))
        .await
        .unwrap_or_else(|_| panic!("never reached {state:?}; now {:?}", client.state()))
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_to_100_subscribers_delivers_everything_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(&dir).await;
    const SUBSCRIBERS: usize = 100;
    const MESSAGES: u32 = 10_000;
    let mut tasks = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let client = Client::connect(&server.url()).await.unwrap();
        let mut sub = client.subscribe("ticks").await.unwrap();
        clients.push(client);
        tasks.push(tokio::spawn(async move {
            for expected in 0..MESSAGES {
                let message = sub.next().await.expect("stream ended early");
                assert_eq!(
                    u32::from_le_bytes(message.payload[..].try_into().unwrap()),
                    expected
                );
                assert_eq!(message.sequence, u64::from(expected) + 1);
            }
        }));
    }
    let publisher = Client::connect(&server.url()).await.unwrap();
    for i in 0..MESSAGES {
        publisher.publish("ticks", i.to_le_bytes()).await.unwrap();
    }
    publisher.flush().await.unwrap();
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("subscriber finished")
            .unwrap();
    }
    let stats = publisher.stats().await.unwrap();
    let ticks = stats.topics.iter().find(|t| t.name == "ticks").unwrap();
    assert_eq!(ticks.published, u64::from(MESSAGES));
    assert_eq!(ticks.delivered, u64::from(MESSAGES) * SUBSCRIBERS as u64);
    assert_eq!(ticks.dropped, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_group_of_four_gets_each_message_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(&dir).await;
    let mut members = Vec::new();
    for _ in 0..4 {
        let client = Client::connect(&server.url()).await.unwrap();
        let sub = client.queue_subscribe("jobs.*", "workers").await.unwrap();
        members.push((client, sub));
    }
    let publisher = Client::connect(&server.url()).await.unwrap();
    for i in 0..1000u32 {
        publisher.publish("jobs.resize", i.to_le_bytes()).await.unwrap();
    }
    publisher.flush().await.unwrap();
    let mut seen = Vec::new();
    let mut per_member = Vec::new();
    for (_, sub) in &mut members {
        let mut count = 0;
        while let Ok(Some(message)) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
            seen.push(u32::from_le_bytes(message.payload[..].try_into().unwrap()));
            count += 1;
        }
        per_member.push(count);
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..1000).collect::<Vec<_>>(), "each message exactly once");
    assert!(
        per_member.iter().all(|&n| n == 250),
        "round robin spreads evenly: {per_member:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_leaving_mid_stream_does_not_disturb_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(&dir).await;
    let stayer = Client::connect(&server.url()).await.unwrap();
    let mut stay = stayer.subscribe("s").await.unwrap();
    let mut leaver = Some(Client::connect(&server.url()).await.unwrap());
    let mut leave = Some(leaver.as_ref().unwrap().subscribe("s").await.unwrap());
    let publisher = Client::connect(&server.url()).await.unwrap();
    for i in 0..2000u32 {
        publisher.publish("s", i.to_le_bytes()).await.unwrap();
        if i == 500 {
            // Reads a little, then vanishes without a word.
            let _ = leave.as_mut().unwrap().next().await;
            leave = None;
            leaver = None;
        }
    }
    assert!(leave.is_none() && leaver.is_none());
    publisher.flush().await.unwrap();
    for expected in 0..2000u32 {
        let message = tokio::time::timeout(Duration::from_secs(10), stay.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            u32::from_le_bytes(message.payload[..].try_into().unwrap()),
            expected
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_stops_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(&dir).await;
    let client = Client::connect(&server.url()).await.unwrap();
    let mut kept = client.subscribe("u").await.unwrap();
    let gone = client.subscribe("u").await.unwrap();
    gone.unsubscribe().await.unwrap();
    client.publish("u", b"1").await.unwrap();
    client.flush().await.unwrap();
    assert_eq!(&kept.next().await.unwrap().payload[..], b"1");
    let stats = client.stats().await.unwrap();
    assert_eq!(stats.topics.iter().find(|t| t.name == "u").unwrap().delivered, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tlv_topic_rejects_a_corrupted_message_with_the_right_code() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(&dir.path().join("b.sock"), |c| {
        c.topics.push(mycelium_server::config_topic("market_data", |t| {
            t.codec = "tlv".into()
        }));
    })
    .await;
    let client = Client::connect(&server.url()).await.unwrap();
    let mut sub = client.subscribe("market_data").await.unwrap();
    let mut message = Vec::new();
    let mut builder = mycelium_codec::MessageBuilder::new(
        &mut message,
        mycelium_codec::RelayDomain::MarketData,
        mycelium_codec::SourceType::TestClient,
    );
    builder.add_tlv(200, b"payload").unwrap();
    builder.finish();
    assert_eq!(
        client.publish_confirmed("market_data", &message).await.unwrap(),
        1
    );
    let mut corrupted = message.clone();
    corrupted[34] ^= 0x01;
    let error = client
        .publish_confirmed("market_data", &corrupted)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Server);
    assert_eq!(error.server_code(), Some(ErrorCode::InvalidTlv));
    assert_eq!(
        error.detail(),
        mycelium_protocol::TlvFault::ChecksumMismatch as u16
    );
    assert!(error.to_string().contains("checksum mismatch"), "{error}");
    let wrong_domain = {
        let mut m = Vec::new();
        let mut b = mycelium_codec::MessageBuilder::new(&mut m, mycelium_codec::RelayDomain::Signal, 99u8);
        b.add_tlv(200, b"x").unwrap();
        b.finish();
        m[32] = 44; // a Fill type byte in a... signal message: wrong domain
        let checksum = mycelium_codec::compute_checksum(&m);
        m[28..32].copy_from_slice(&checksum.to_le_bytes());
        m
    };
    let error = client
        .publish_confirmed("market_data", &wrong_domain)
        .await
        .unwrap_err();
    assert_eq!(
        error.detail(),
        mycelium_protocol::TlvFault::WrongDomain as u16,
        "{error}"
    );
    // Only the valid one was delivered.
    assert_eq!(sub.next().await.unwrap().payload, message);
    client.flush().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(200), sub.next())
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaker_opens_fails_fast_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.sock");
    let server = TestServer::start_at(&path, |_| {}).await;
    let options = ClientOptions {
        breaker_threshold: 2,
        breaker_open_for: Duration::from_millis(300),
        backoff: mycelium_client::resilience::Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(20),
            ..Default::default()
        },
        ..ClientOptions::default()
    };
    let client = Client::connect_with(&server.url(), options).await.unwrap();
    let mut sub = client.subscribe("cb").await.unwrap();
    server.stop().await;
    wait_for(&client, ConnectionState::CircuitOpen).await;
    let error = client.publish("cb", b"x").await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::CircuitOpen, "{error}");
    // The broker comes back: the probe succeeds, the breaker closes, the subscription is restored.
    let server = TestServer::start_at(&path, |_| {}).await;
    wait_for(&client, ConnectionState::Connected).await;
    client.flush().await.unwrap();
    client.publish("cb", b"back").await.unwrap();
    let message = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&message.payload[..], b"back");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_while_disconnected_are_buffered_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.sock");
    let server = TestServer::start_at(&path, |_| {}).await;
    let options = ClientOptions {
        buffer_bytes_max: 4096,
        breaker_threshold: 1000,
        backoff: mycelium_client::resilience::Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(50),
            ..Default::default()
        },
        ..ClientOptions::default()
    };
    let client = Client::connect_with(&server.url(), options).await.unwrap();
    let mut sub = client.subscribe("buf").await.unwrap();
    server.stop().await;
    wait_for(&client, ConnectionState::Disconnected).await;
    let mut accepted = 0u32;
    let error = loop {
        match client.publish("buf", accepted.to_le_bytes()).await {
            Ok(()) => accepted += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(error.kind(), ErrorKind::BufferFull, "{error}");
    assert!(accepted > 50, "the buffer held {accepted} messages");
    let server = TestServer::start_at(&path, |_| {}).await;
    wait_for(&client, ConnectionState::Connected).await;
    for expected in 0..accepted {
        let message = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            u32::from_le_bytes(message.payload[..].try_into().unwrap()),
            expected
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn bad_urls_and_unreachable_brokers_are_clear_errors() {
    assert_eq!(
        Client::connect("http://x").await.unwrap_err().kind(),
        ErrorKind::InvalidUrl
    );
    assert_eq!(
        Client::connect("tcp://nohost").await.unwrap_err().kind(),
        ErrorKind::InvalidUrl
    );
    let error = Client::connect("unix:///nonexistent/dir/x.sock")
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Connect);
    assert!(error.to_string().contains("/nonexistent/dir/x.sock"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_subscriptions_over_the_native_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(&dir.path().join("f.sock"), |_| {}).await;
    let client = Client::connect(&server.url()).await.unwrap();
    let mut eu = client
        .subscribe_filtered("orders.>", None, r#"header.region == "eu""#)
        .await
        .unwrap();
    let error = client
        .subscribe_filtered("orders.>", None, "header.region ==")
        .await
        .unwrap_err();
    assert_eq!(error.server_code(), Some(ErrorCode::InvalidFilter), "{error}");
    assert!(error.to_string().contains("position 16"), "{error}");
    client
        .publish_with_headers("orders.new", &[("region", b"us")], "us order")
        .await
        .unwrap();
    client
        .publish_with_headers("orders.new", &[("region", b"eu")], "eu order")
        .await
        .unwrap();
    let message = tokio::time::timeout(std::time::Duration::from_secs(5), eu.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&message.payload[..], b"eu order");
    client.close().await;
    server.stop().await;
}

/// Publishes paced so that some go out inline from the caller (buffer empty, writer idle) and
/// others gather for the writer task, from several tasks at once, over Unix and TCP: every message
/// arrives, each publisher's in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_and_burst_publishes_mix_inline_and_writer_task_writes_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(&dir.path().join("b.sock"), |config| {
        config.server.tcp = "127.0.0.1:0".to_owned();
    })
    .await;
    for url in [server.url(), server.tcp_url()] {
        // TCP needs a credential; the Unix socket knows this process by its uid.
        let options = || mycelium_client::ClientOptions {
            token: Some(mycelium_client::Token::new(mycelium_test_support::TEST_TOKEN)),
            ..mycelium_client::ClientOptions::default()
        };
        let subscriber = Client::connect_with(&url, options()).await.unwrap();
        let mut sub = subscriber.subscribe("paced.>").await.unwrap();
        subscriber.flush().await.unwrap();
        let publisher = Client::connect_with(&url, options()).await.unwrap();
        const PUBLISHERS: u32 = 3;
        const EACH: u32 = 3_000;
        let mut tasks = Vec::new();
        for p in 0..PUBLISHERS {
            let publisher = publisher.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..EACH {
                    publisher
                        .publish(&format!("paced.{p}"), i.to_le_bytes())
                        .await
                        .unwrap();
                    match i % 100 {
                        // A pause: the next publish finds the buffer empty and the writer idle.
                        0..=9 => tokio::time::sleep(Duration::from_micros(50)).await,
                        10..=19 => tokio::task::yield_now().await,
                        _ => {}
                    }
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let mut next = [0u32; PUBLISHERS as usize];
        for _ in 0..PUBLISHERS * EACH {
            let message = tokio::time::timeout(Duration::from_secs(20), sub.next())
                .await
                .expect("every message arrives")
                .unwrap();
            let p: usize = message.topic().strip_prefix("paced.").unwrap().parse().unwrap();
            assert_eq!(
                u32::from_le_bytes(message.payload[..].try_into().unwrap()),
                next[p],
                "{url}"
            );
            next[p] += 1;
        }
        assert_eq!(next, [EACH; PUBLISHERS as usize]);
    }
}

fn quick_retries() -> ClientOptions {
    ClientOptions {
        breaker_threshold: 1_000,
        backoff: mycelium_client::resilience::Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(20),
            ..Default::default()
        },
        ..ClientOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_urls_are_tried_in_order_and_a_lost_broker_fails_over_to_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let first = TestServer::start_at(&dir.path().join("a.sock"), |_| {}).await;
    let second = TestServer::start_at(&dir.path().join("b.sock"), |_| {}).await;
    // A broker that is not there is skipped at connect.
    let missing = format!("unix://{}", dir.path().join("none.sock").display());
    let url = format!("{missing},{},{}", first.url(), second.url());
    let client = Client::connect_with(&url, quick_retries()).await.unwrap();
    let mut sub = client.subscribe("fo").await.unwrap();
    client.flush().await.unwrap();
    let on_first = Client::connect(&first.url()).await.unwrap();
    on_first.publish("fo", b"from the first").await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got.payload[..], b"from the first");
    // The first broker goes away: the client moves on to the next that answers, and its
    // subscription comes with it.
    first.stop().await;
    wait_for(&client, ConnectionState::Connected).await;
    client.flush().await.unwrap();
    let on_second = Client::connect(&second.url()).await.unwrap();
    on_second.publish("fo", b"from the second").await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got.payload[..], b"from the second");
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_reconnects_gives_up_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(&dir).await;
    let options = ClientOptions {
        max_reconnects: Some(3),
        ..quick_retries()
    };
    let client = Client::connect_with(&server.url(), options).await.unwrap();
    let mut errors = client.errors();
    server.stop().await;
    wait_for(&client, ConnectionState::Closed).await;
    let error = tokio::time::timeout(Duration::from_secs(5), errors.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(error.kind(), ErrorKind::GaveUp, "{error}");
    assert!(
        error.to_string().contains("3 failed reconnect attempts"),
        "{error}"
    );
    assert_eq!(
        client.publish("x", b"y").await.unwrap_err().kind(),
        ErrorKind::Closed
    );
}
