//! Durable subscriptions through the client: replay from a start position, ACK, redelivery after
//! the ack deadline, NACK and TERM to the dead-letter queue, shared consumers, prefetch, and
//! progress that survives a broker restart.

use std::collections::HashMap;
use std::time::Duration;

use mycelium_client::{Client, DurableOptions, Message, StartPosition, Subscription};
use mycelium_test_support::TestServer;

async fn server(dir: &tempfile::TempDir) -> TestServer {
    let data = dir.path().join("data");
    TestServer::start_at(&dir.path().join("b.sock"), move |c| {
        c.storage.data_dir = data.display().to_string();
        c.topics.push(mycelium_server::config_topic("orders", |t| {
            t.storage = "disk".into()
        }));
    })
    .await
}

async fn next(sub: &mut Subscription) -> Message {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("a message within 10 s")
        .unwrap()
}

async fn nothing_within(sub: &mut Subscription, ms: u64) -> bool {
    tokio::time::timeout(Duration::from_millis(ms), sub.next())
        .await
        .is_err()
}

fn opts(start: StartPosition) -> DurableOptions {
    DurableOptions {
        start,
        ack_wait: Some(Duration::from_millis(300)),
        backoff: vec![Duration::from_millis(20)],
        ..DurableOptions::default()
    }
}

async fn publish(client: &Client, count: u32) {
    for i in 0..count {
        client
            .publish_confirmed("orders", format!("order {i}"))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_from_the_beginning_and_redelivers_what_is_not_acked() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(&dir).await;
    let client = Client::connect(&server.url()).await.unwrap();
    publish(&client, 10).await;
    let mut sub = client
        .subscribe_durable("orders", "billing", opts(StartPosition::Beginning))
        .await
        .unwrap();
    for expected in 1..=10u64 {
        let message = next(&mut sub).await;
        assert_eq!((message.sequence, message.attempt()), (expected, Some(1)));
        assert!(message.message_id().is_some());
        if expected != 3 {
            client.ack(&message).await.unwrap();
        }
    }
    // Sequence 3 was never acknowledged: it comes back after the 300 ms deadline, attempt 2.
    let again = next(&mut sub).await;
    assert_eq!((again.sequence, again.attempt()), (3, Some(2)));
    client.ack(&again).await.unwrap();
    assert!(
        nothing_within(&mut sub, 500).await,
        "acked messages never come back"
    );
    // New messages reach the durable subscription as they are stored.
    client.publish_confirmed("orders", b"late").await.unwrap();
    let late = next(&mut sub).await;
    assert_eq!((late.sequence, &late.payload[..]), (11, &b"late"[..]));
    client.ack(&late).await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_until_max_deliveries_then_term_go_to_the_dead_letter_queue() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(&dir).await;
    let client = Client::connect(&server.url()).await.unwrap();
    publish(&client, 2).await;
    let options = DurableOptions {
        max_deliveries: Some(2),
        ..opts(StartPosition::Beginning)
    };
    let mut sub = client
        .subscribe_durable("orders", "flaky", options)
        .await
        .unwrap();
    let first = next(&mut sub).await;
    let second = next(&mut sub).await;
    assert_eq!((first.sequence, second.sequence), (1, 2));
    client.term(&second, "poison").await.unwrap();
    client.nack(&first, None, "db down").await.unwrap();
    let retry = next(&mut sub).await;
    assert_eq!((retry.sequence, retry.attempt()), (1, Some(2)));
    client.nack(&retry, None, "db still down").await.unwrap();
    assert!(
        nothing_within(&mut sub, 300).await,
        "after max_deliveries it is not redelivered"
    );

    let mut dlq = client
        .subscribe_durable("orders.dlq", "inspect", opts(StartPosition::Beginning))
        .await
        .unwrap();
    let mut dead: HashMap<String, HashMap<String, String>> = HashMap::new();
    for _ in 0..2 {
        let message = next(&mut dlq).await;
        let headers: HashMap<String, String> = message
            .headers()
            .map(|(k, v)| (k.to_owned(), String::from_utf8_lossy(v).into_owned()))
            .collect();
        dead.insert(String::from_utf8_lossy(&message.payload).into_owned(), headers);
        client.ack(&message).await.unwrap();
    }
    let terminated = &dead["order 1"];
    assert_eq!(terminated["x-dlq-reason"], "terminated");
    assert_eq!(terminated["x-dlq-sequence"], "2");
    assert_eq!(terminated["x-dlq-topic"], "orders");
    let exhausted = &dead["order 0"];
    assert_eq!(exhausted["x-dlq-reason"], "max_deliveries");
    assert_eq!(exhausted["x-dlq-attempts"], "2");
    assert_eq!(exhausted["x-dlq-subscription"], "flaky");
    assert_eq!(
        exhausted["x-dlq-message-id"].len(),
        36,
        "the original id, as a UUID"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_do_not_come_back_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(&dir).await;
    let client = Client::connect(&server.url()).await.unwrap();
    publish(&client, 20).await;
    let mut sub = client
        .subscribe_durable("orders", "ledger", opts(StartPosition::Beginning))
        .await
        .unwrap();
    for expected in 1..=10u64 {
        let message = next(&mut sub).await;
        assert_eq!(message.sequence, expected);
        client.ack(&message).await.unwrap();
    }
    client.flush().await.unwrap();
    drop(sub);
    client.close().await;
    server.stop().await;

    let server = self::server(&dir).await;
    let client = Client::connect(&server.url()).await.unwrap();
    // `New` would skip everything; an existing durable subscription resumes where it was instead.
    let mut sub = client
        .subscribe_durable("orders", "ledger", opts(StartPosition::New))
        .await
        .unwrap();
    let first = next(&mut sub).await;
    assert!(
        first.sequence > 10,
        "acked messages came back after restart: got {}",
        first.sequence
    );
    assert_eq!(first.sequence, 11, "unacked messages are not skipped either");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_sharing_a_durable_name_split_the_messages() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(&dir).await;
    let a = Client::connect(&server.url()).await.unwrap();
    let b = Client::connect(&server.url()).await.unwrap();
    let mut sub_a = a
        .subscribe_durable("orders", "workers", opts(StartPosition::New))
        .await
        .unwrap();
    let mut sub_b = b
        .subscribe_durable("orders", "workers", opts(StartPosition::New))
        .await
        .unwrap();
    publish(&a, 20).await;
    let mut seen = Vec::new();
    for (client, sub) in [(&a, &mut sub_a), (&b, &mut sub_b)] {
        for _ in 0..10 {
            let message = next(sub).await;
            seen.push(message.sequence);
            client.ack(&message).await.unwrap();
        }
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        (1..=20).collect::<Vec<_>>(),
        "each message to exactly one consumer"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_holds_back_messages_until_acks_make_room() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(&dir).await;
    let client = Client::connect(&server.url()).await.unwrap();
    publish(&client, 10).await;
    let options = DurableOptions {
        max_in_flight: Some(3),
        ack_wait: Some(Duration::from_secs(30)),
        ..opts(StartPosition::Beginning)
    };
    let mut sub = client.subscribe_durable("orders", "slow", options).await.unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(next(&mut sub).await);
    }
    assert!(
        nothing_within(&mut sub, 300).await,
        "no fourth message while three are in flight"
    );
    client.ack(&held[0]).await.unwrap();
    assert_eq!(next(&mut sub).await.sequence, 4);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_subscriptions_need_a_disk_topic_and_acks_need_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(&dir).await;
    let client = Client::connect(&server.url()).await.unwrap();
    let error = client
        .subscribe_durable("memory.topic", "x", DurableOptions::default())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("storage = \"disk\""), "{error}");
    // An ACK on a plain subscription is refused with a clear error, on the errors channel.
    let mut errors = client.errors();
    let mut plain = client.subscribe("plain").await.unwrap();
    client.publish("plain", b"x").await.unwrap();
    let message = next(&mut plain).await;
    client.ack(&message).await.unwrap();
    client.flush().await.unwrap();
    let error = tokio::time::timeout(Duration::from_secs(5), errors.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(error.to_string().contains("durable"), "{error}");
    server.stop().await;
}
