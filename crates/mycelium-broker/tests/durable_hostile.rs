//! Durable subscriptions against consumers and files that misbehave, under paused tokio time: a
//! consumer that never reads, a long-held message with a million acks behind it, a damaged state
//! file, a topic full of messages delayed by a day.

use std::time::Duration;

use mycelium_broker::MessageProps;
use mycelium_protocol::{Ack, Nack, StartPosition, SubscribeOptions};

mod support;
use support::*;

/// Durable subscription `w` from the oldest message, 10,000 in flight.
fn wide() -> SubscribeOptions<'static> {
    SubscribeOptions {
        durable: Some("w"),
        start: Some(StartPosition::Beginning),
        max_in_flight: Some(10_000),
        ..SubscribeOptions::default()
    }
}

fn topic_counter(
    broker: &mycelium_broker::Broker,
    read: impl Fn(&mycelium_protocol::TopicStats) -> u64,
) -> u64 {
    let stats = broker.stats();
    stats.topics.iter().find(|t| t.name == "jobs").map(read).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_consumer_that_does_not_read_is_not_sent_more_than_its_buffer_nor_redelivered_to() {
    let dir = tempfile::tempdir().unwrap();
    let buffer = 16 << 10;
    let broker = broker(
        dir.path(),
        vec![("jobs", stored_spec(|s| s.buffer_bytes = buffer))],
    );
    let payload = "x".repeat(1000);
    for _ in 0..500 {
        publish(&broker, "jobs", &payload, MessageProps::default()).await;
    }
    let conn = broker.connect("never reads".into());
    let options = SubscribeOptions {
        durable: Some("w"),
        start: Some(StartPosition::Beginning),
        ack_wait_ms: Some(100),
        max_in_flight: Some(1000),
        ..SubscribeOptions::default()
    };
    open(&broker, &conn, 1, &options).await.unwrap();
    // Fifty ack deadlines pass while it reads nothing.
    for _ in 0..50 {
        tokio::time::advance(Duration::from_millis(100)).await;
        settle().await;
    }
    let frame = 1100; // one delivery: the payload and its frame
    assert!(
        conn.outbound.pending_bytes() <= buffer + frame,
        "{} bytes pending toward a consumer whose topic buffer is {buffer}",
        conn.outbound.pending_bytes()
    );
    assert_eq!(
        topic_counter(&broker, |t| t.redelivered),
        0,
        "nothing is redelivered to a consumer that has not read what it has"
    );
    // It reads at last: deliveries resume. Each time a message arrives its attempt is one more
    // than the times it arrived before: no attempt was counted for a send that did not happen.
    let mut seen: std::collections::HashMap<u64, u32> = std::collections::HashMap::new();
    let mut check = |got: Vec<(u64, u32, String)>| {
        for (sequence, attempt, _) in got {
            let times = seen.entry(sequence).or_default();
            *times += 1;
            assert_eq!(attempt, *times, "sequence {sequence}");
            // Late acks (the deadline passed meanwhile) are refused; it comes again.
            let ack = Ack {
                subscription_id: 1,
                sequence,
            };
            let _ = broker.acknowledge(&conn, mycelium_broker::Verdict::Ack(ack), 0);
        }
    };
    wait_long("the rest of the backlog", || {
        check(deliveries(&conn));
        topic_counter(&broker, |t| t.acked) == 500
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn acks_behind_a_held_message_are_kept_as_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path(), vec![("jobs", stored_spec(|_| {}))]);
    for i in 0..3000 {
        publish(&broker, "jobs", &format!("{i}"), MessageProps::default()).await;
    }
    let conn = broker.connect("consumer".into());
    open(&broker, &conn, 1, &wide()).await.unwrap();
    let mut got = Vec::new();
    wait_long("every message", || {
        got.extend(deliveries(&conn));
        got.len() == 3000
    })
    .await;
    // The first is held for an hour; every other one is acknowledged.
    let nack = Nack {
        ack: Ack {
            subscription_id: 1,
            sequence: got[0].0,
        },
        delay_ms: 3_600_000,
        reason: "later",
    };
    broker
        .acknowledge(&conn, mycelium_broker::Verdict::Nack(nack), 0)
        .unwrap();
    for d in &got[1..] {
        ack(&broker, &conn, d.0);
    }
    tokio::time::advance(Duration::from_secs(1)).await;
    settle().await;
    off_worker(|| broker.close_storage());
    let file = mycelium_storage::DataDir::new(dir.path()).subscription_state("jobs", "w");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.len() < 200,
        "2,999 acks above the floor take {} bytes: {text}",
        text.len()
    );
    assert!(text.contains("[2,3001]"), "{text}");
    // A restart keeps them finished: only the held message comes back, after its hour.
    drop(broker);
    let broker = support::broker(dir.path(), vec![("jobs", stored_spec(|_| {}))]);
    let conn = broker.connect("consumer".into());
    open(&broker, &conn, 1, &wide()).await.unwrap();
    let mut again = Vec::new();
    wait_for("the held message", || {
        again.extend(deliveries(&conn));
        !again.is_empty()
    })
    .await;
    settle().await;
    again.extend(deliveries(&conn));
    assert_eq!(again.iter().map(|d| (d.0, d.1)).collect::<Vec<_>>(), [(1, 2)]);
}

#[tokio::test(start_paused = true)]
async fn a_damaged_state_file_redelivers_from_the_oldest_message_rather_than_skip() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path(), vec![("jobs", stored_spec(|_| {}))]);
    for i in 0..10 {
        publish(&broker, "jobs", &format!("{i}"), MessageProps::default()).await;
    }
    let conn = broker.connect("consumer".into());
    subscribe(&broker, &conn, "w", 100, vec![]).await;
    let mut got = Vec::new();
    wait_long("every message", || {
        got.extend(deliveries(&conn));
        got.len() == 10
    })
    .await;
    for d in &got[..5] {
        ack(&broker, &conn, d.0);
    }
    settle().await;
    off_worker(|| broker.close_storage());
    drop(broker);
    let file = mycelium_storage::DataDir::new(dir.path()).subscription_state("jobs", "w");
    std::fs::write(&file, b"{\"floor\": 6, \"finished\": [tor").unwrap();

    let broker = support::broker(dir.path(), vec![("jobs", stored_spec(|_| {}))]);
    let conn = broker.connect("consumer".into());
    subscribe(&broker, &conn, "w", 100, vec![]).await;
    let mut again = Vec::new();
    wait_for("the redelivery", || {
        again.extend(deliveries(&conn));
        again.len() == 10
    })
    .await;
    assert_eq!(
        again.iter().map(|d| d.0).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>(),
        "everything retained comes again; nothing unacknowledged is skipped"
    );
    let counts = broker.incidents.counts();
    assert_eq!(counts[1].0, "subscription_states_recovered");
    assert_eq!(counts[1].2, 1);
    let mut kept = file.into_os_string();
    kept.push(".corrupt");
    assert_eq!(
        std::fs::read(&kept).unwrap(),
        b"{\"floor\": 6, \"finished\": [tor",
        "the damaged file is kept to look at"
    );
}

#[tokio::test(start_paused = true)]
async fn a_due_message_goes_out_past_many_delayed_by_a_day() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path(), vec![("jobs", stored_spec(|_| {}))]);
    let day = MessageProps {
        delay: Some(Duration::from_secs(24 * 3600)),
        ..MessageProps::default()
    };
    for i in 0..5_000 {
        publish(&broker, "jobs", &format!("later {i}"), day.clone()).await;
    }
    publish(&broker, "jobs", "now", MessageProps::default()).await;
    let conn = broker.connect("consumer".into());
    open(&broker, &conn, 1, &wide()).await.unwrap();
    let mut got = Vec::new();
    wait_long("the due message", || {
        got.extend(deliveries(&conn));
        !got.is_empty()
    })
    .await;
    assert_eq!(got.iter().map(|d| d.2.as_str()).collect::<Vec<_>>(), ["now"]);
    ack(&broker, &conn, got[0].0);
    tokio::time::advance(Duration::from_secs(24 * 3600)).await;
    let mut later = 0;
    wait_long("the delayed ones, a day later", || {
        for d in deliveries(&conn) {
            ack(&broker, &conn, d.0);
            later += 1;
        }
        later == 5_000
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn after_a_failed_fsync_nothing_unconfirmed_is_delivered_and_the_log_is_cut_back() {
    use mycelium_broker::spec::Fsync;
    use mycelium_broker::{Broker, BrokerConfig, DurableConfig, FaultHook};
    let dir = tempfile::tempdir().unwrap();
    let faults = std::sync::Arc::new(mycelium_storage::Faults::default());
    let open = |faults: Option<FaultHook>| {
        Broker::new(BrokerConfig {
            topics: vec![("jobs".to_owned(), stored_spec(|s| s.fsync = Fsync::Always))],
            durable: DurableConfig {
                data_dir: dir.path().to_path_buf(),
                faults,
                ..DurableConfig::default()
            },
            ..BrokerConfig::default()
        })
        .unwrap()
    };
    let broker = open(Some(FaultHook(std::sync::Arc::clone(&faults))));
    let send = |payload: &'static str| {
        broker.publish_local(
            "jobs",
            bytes::Bytes::new(),
            bytes::Bytes::from(payload),
            MessageProps::default(),
        )
    };
    assert_eq!(send("a").await.unwrap().1.sequence, 1);
    let conn = broker.connect("consumer".into());
    subscribe(&broker, &conn, "w", 100, vec![]).await;
    let mut got = Vec::new();
    wait_for("the first message", || {
        got.extend(deliveries(&conn));
        !got.is_empty()
    })
    .await;
    ack(&broker, &conn, got[0].0);
    settle().await;
    // The disk fails the next fsync: the publisher gets an error, and no consumer sees "b".
    faults.fail_syncs("jobs", 1);
    let error = send("b").await.unwrap_err();
    assert!(error.to_string().contains("injected fsync failure"), "{error}");
    settle().await;
    assert!(
        deliveries(&conn).is_empty(),
        "an unconfirmed message is never delivered"
    );
    // The next write reopens and verifies the log, cut back to what was confirmed: "c" takes
    // sequence 2, and "b" is gone for good.
    assert_eq!(send("c").await.unwrap().1.sequence, 2);
    let mut later = Vec::new();
    wait_for("the next message", || {
        later.extend(deliveries(&conn));
        !later.is_empty()
    })
    .await;
    assert_eq!(
        later.iter().map(|d| (d.0, d.2.as_str())).collect::<Vec<_>>(),
        [(2, "c")]
    );
    off_worker(|| broker.close_storage());
    drop(broker);
    let broker = open(None);
    let stored = off_worker(|| broker.storage().unwrap().read("jobs", 1, 10, usize::MAX).unwrap());
    assert_eq!(
        stored.iter().map(|m| &m.payload[..]).collect::<Vec<_>>(),
        [&b"a"[..], &b"c"[..]]
    );
}

#[tokio::test(start_paused = true)]
async fn a_state_write_that_keeps_failing_backs_off_instead_of_spinning() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path(), vec![("jobs", stored_spec(|_| {}))]);
    for i in 0..20 {
        publish(&broker, "jobs", &format!("{i}"), MessageProps::default()).await;
    }
    let conn = broker.connect("consumer".into());
    open(&broker, &conn, 1, &wide()).await.unwrap();
    let mut got = Vec::new();
    wait_for("every message", || {
        got.extend(deliveries(&conn));
        got.len() == 20
    })
    .await;
    // The state's directory becomes a file: every write of the state fails (as on a broken disk).
    let states = mycelium_storage::DataDir::new(dir.path()).subscriptions_dir("jobs");
    std::fs::remove_dir_all(&states).unwrap();
    std::fs::write(&states, b"in the way").unwrap();
    let failures = || broker.incidents.counts()[3].2;
    for d in &got {
        ack(&broker, &conn, d.0);
    }
    // Ten seconds of failing writes: a handful of attempts (50 ms doubling to 5 s), not one per
    // pass (every 20 ms, or in a loop).
    for _ in 0..100 {
        tokio::time::advance(Duration::from_millis(100)).await;
        settle().await;
    }
    let failed = failures();
    assert!((1..=12).contains(&failed), "{failed} failed state writes in 10 s");
    // The disk is fixed: the next attempt writes the state, and the failures stop.
    std::fs::remove_file(&states).unwrap();
    for _ in 0..100 {
        tokio::time::advance(Duration::from_millis(100)).await;
        settle().await;
    }
    let after = failures();
    assert!(after <= failed + 1, "{after} failures after the fix");
    let state = mycelium_storage::DataDir::new(dir.path()).subscription_state("jobs", "w");
    wait_for("the state written again", || state.exists()).await;
}
