//! Durable topics in the broker core under paused tokio time: priority order, TTL, delayed
//! delivery, ack deadlines with backoff, dead letters with their story, DLQ replay and purge, and
//! idempotency keys (also across a restart of the core on the same data directory).

use std::time::Duration;

use bytes::Bytes;
use mycelium_broker::dlq::DlqFilter;
use mycelium_broker::spec::{Delivery, OnExpired};
use mycelium_broker::{Broker, BrokerConfig, DurableConfig, MessageProps, Verdict};
use mycelium_protocol::{Ack, Nack, StartPosition, SubscribeOptions};

mod support;
use support::*;

#[tokio::test(start_paused = true)]
async fn priority_ttl_and_delay_decide_what_goes_out_and_when() {
    let dir = tempfile::tempdir().unwrap();
    let spec = stored_spec(|s| {
        s.priority = true;
        s.on_expired = OnExpired::DeadLetter;
    });
    let broker = broker(dir.path(), vec![("jobs", spec)]);
    let secs = |s| Some(Duration::from_secs(s));
    let props = |priority, ttl, delay| MessageProps {
        priority,
        ttl,
        delay,
        ..MessageProps::default()
    };
    publish(&broker, "jobs", "delayed", props(0, None, secs(10))).await; // 1
    publish(&broker, "jobs", "short-lived", props(0, secs(5), None)).await; // 2
    publish(&broker, "jobs", "urgent", props(9, None, None)).await; // 3
    publish(&broker, "jobs", "soon", props(1, None, None)).await; // 4
    publish(&broker, "jobs", "plain", props(0, None, None)).await; // 5

    let conn = broker.connect("consumer".into());
    subscribe(&broker, &conn, "workers", 2, vec![1000]).await;
    settle().await;
    let first = deliveries(&conn);
    assert_eq!(
        first.iter().map(|d| d.2.as_str()).collect::<Vec<_>>(),
        ["urgent", "soon"],
        "highest priority first; prefetch 2 holds the rest back"
    );

    // 6 s later the short-lived message's TTL has passed while it waited: never delivered.
    tokio::time::sleep(Duration::from_secs(6)).await;
    settle().await;
    ack(&broker, &conn, 3);
    ack(&broker, &conn, 4);
    settle().await;
    assert_eq!(
        deliveries(&conn).iter().map(|d| d.2.as_str()).collect::<Vec<_>>(),
        ["plain"],
        "expired `short-lived` is skipped, `delayed` is not due yet"
    );
    ack(&broker, &conn, 5);

    tokio::time::sleep(Duration::from_secs(4)).await;
    settle().await;
    assert_eq!(
        deliveries(&conn).iter().map(|d| d.2.as_str()).collect::<Vec<_>>(),
        ["delayed"],
        "the delayed message goes out at its time"
    );
    let expired = broker
        .stats()
        .topics
        .iter()
        .find(|t| t.name == "jobs")
        .map(|t| t.expired);
    assert_eq!(expired, Some(1));
    wait_for("the expired message in the DLQ", || {
        off_worker(|| broker.dlq_list("jobs", &DlqFilter::default(), 0, 10))
            .is_ok_and(|p| p.entries.len() == 1)
    })
    .await;
    let page = off_worker(|| broker.dlq_list("jobs", &DlqFilter::default(), 0, 10)).unwrap();
    assert_eq!(page.entries[0].reason, "expired");
    assert_eq!(page.entries[0].original_sequence, 2);
    off_worker(|| broker.close_storage());
}

#[tokio::test(start_paused = true)]
async fn deadlines_and_nacks_retry_with_backoff_then_dead_letter_with_the_story() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path(), vec![("jobs", stored_spec(|_| {}))]);
    publish(&broker, "jobs", "poison", MessageProps::default()).await;
    let conn = broker.connect("consumer".into());
    subscribe(&broker, &conn, "workers", 10, vec![2_000, 4_000]).await;
    settle().await;
    assert_eq!(deliveries(&conn), [(1, 1, "poison".into())]);

    // Attempt 1 fails by NACK: retried after the 2 s backoff (+-20% jitter), not before.
    let nack = Nack {
        ack: Ack {
            subscription_id: 1,
            sequence: 1,
        },
        delay_ms: 0,
        reason: "cannot parse",
    };
    broker.acknowledge(&conn, Verdict::Nack(nack), 0).unwrap();
    tokio::time::sleep(Duration::from_millis(1_590)).await;
    settle().await;
    assert!(deliveries(&conn).is_empty(), "no retry before the backoff");
    tokio::time::sleep(Duration::from_millis(820)).await;
    settle().await;
    assert_eq!(deliveries(&conn), [(1, 2, "poison".into())]);

    // Attempt 2 misses its 30 s deadline: retried 4 s (+-20%) after it, attempt 3.
    tokio::time::sleep(Duration::from_secs(30)).await;
    settle().await;
    assert!(deliveries(&conn).is_empty());
    tokio::time::sleep(Duration::from_millis(3_190)).await;
    settle().await;
    assert!(deliveries(&conn).is_empty(), "no retry before the backoff");
    tokio::time::sleep(Duration::from_millis(1_620)).await;
    settle().await;
    assert_eq!(deliveries(&conn), [(1, 3, "poison".into())]);

    // Attempt 3 of 3 fails: dead-lettered with every attempt and the last error.
    let nack = Nack {
        reason: "still cannot parse",
        ..nack
    };
    broker.acknowledge(&conn, Verdict::Nack(nack), 0).unwrap();
    wait_for("the dead letter", || {
        off_worker(|| broker.dlq_depth("jobs")).is_ok_and(|d| d == 1)
    })
    .await;
    let entry = off_worker(|| broker.dlq_get("jobs", 1)).unwrap();
    assert_eq!(entry.reason, "max_deliveries");
    assert_eq!(entry.attempts, 3);
    assert_eq!(entry.error.as_deref(), Some("still cannot parse"));
    assert_eq!(entry.subscription, "workers");
    let reasons: Vec<&str> = entry
        .history
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["nack", "ack_timeout", "nack"]);
    assert_eq!(&entry.payload[..], b"poison");

    // Replay to the original topic: a new message there, gone from the DLQ.
    let report = broker
        .dlq_replay("jobs", &DlqFilter::default(), None, None)
        .await
        .unwrap();
    assert_eq!((report.replayed, report.failed.len()), (1, 0));
    assert_eq!(off_worker(|| broker.dlq_depth("jobs")).unwrap(), 0);
    settle().await;
    assert_eq!(deliveries(&conn), [(2, 1, "poison".into())]);
    off_worker(|| broker.close_storage());
}

#[tokio::test]
async fn dlq_filters_paging_and_purge() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path(), vec![("jobs", stored_spec(|_| {}))]);
    for i in 0..5 {
        publish(&broker, "jobs", &format!("m{i}"), MessageProps::default()).await;
    }
    let conn = broker.connect("consumer".into());
    subscribe(&broker, &conn, "workers", 10, vec![]).await;
    let mut got = Vec::new();
    for _ in 0..100 {
        got.extend(deliveries(&conn));
        if got.len() == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(got.len(), 5);
    for (sequence, _, _) in &got {
        let term = mycelium_protocol::Term {
            ack: Ack {
                subscription_id: 1,
                sequence: *sequence,
            },
            reason: if sequence % 2 == 0 { "even" } else { "odd" },
        };
        broker.acknowledge(&conn, Verdict::Term(term), 0).unwrap();
    }
    wait_for("five dead letters", || {
        off_worker(|| broker.dlq_depth("jobs")).is_ok_and(|d| d == 5)
    })
    .await;
    let first = off_worker(|| broker.dlq_list("jobs", &DlqFilter::default(), 0, 2)).unwrap();
    assert_eq!(first.entries.len(), 2);
    let after = first.next_after.expect("more pages");
    let rest = off_worker(|| broker.dlq_list("jobs", &DlqFilter::default(), after, 10)).unwrap();
    assert_eq!(rest.entries.len(), 3);
    assert_eq!(rest.next_after, None);
    assert!(rest.entries.iter().all(|e| e.reason == "terminated"));

    let odd: Vec<u64> = first
        .entries
        .iter()
        .chain(&rest.entries)
        .filter(|e| e.error.as_deref() == Some("odd"))
        .map(|e| e.sequence)
        .collect();
    let selection = DlqFilter {
        sequences: odd.clone(),
        ..DlqFilter::default()
    };
    assert_eq!(off_worker(|| broker.dlq_purge("jobs", &selection)).unwrap(), 3);
    assert_eq!(off_worker(|| broker.dlq_depth("jobs")).unwrap(), 2);
    assert!(matches!(
        off_worker(|| broker.dlq_get("jobs", odd[0])),
        Err(mycelium_broker::dlq::DlqError::NotFound { .. })
    ));
    assert_eq!(
        off_worker(|| broker.dlq_purge("jobs", &DlqFilter::default())).unwrap(),
        2
    );
    assert_eq!(off_worker(|| broker.dlq_depth("jobs")).unwrap(), 0);
    assert!(matches!(
        off_worker(|| broker.dlq_list("nothing", &DlqFilter::default(), 0, 10)),
        Err(mycelium_broker::dlq::DlqError::Unknown(_))
    ));
    off_worker(|| broker.close_storage());
}

#[tokio::test]
async fn idempotency_keys_store_once_within_the_window_and_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let spec = stored_spec(|s| s.delivery = Delivery::ExactlyOnce);
    let keyed = |key: &str| MessageProps {
        idempotency_key: Some(Bytes::from(key.to_owned())),
        ..MessageProps::default()
    };
    let first = {
        let broker = broker(dir.path(), vec![("jobs", spec.clone())]);
        let (_, a) = broker
            .publish_local("jobs", Bytes::new(), Bytes::from_static(b"a"), keyed("order-1"))
            .await
            .unwrap();
        let (_, again) = broker
            .publish_local("jobs", Bytes::new(), Bytes::from_static(b"a"), keyed("order-1"))
            .await
            .unwrap();
        assert!(!a.duplicate);
        assert!(again.duplicate);
        assert_eq!((again.sequence, again.id), (a.sequence, a.id));
        let (_, b) = broker
            .publish_local("jobs", Bytes::new(), Bytes::from_static(b"b"), keyed("order-2"))
            .await
            .unwrap();
        assert_eq!(b.sequence, a.sequence + 1, "a duplicate takes no sequence");
        let refused = broker
            .publish_local(
                "jobs",
                Bytes::new(),
                Bytes::from_static(b"c"),
                MessageProps::default(),
            )
            .await;
        assert!(
            refused.unwrap_err().to_string().contains("idempotency key"),
            "exactly_once topics need a key"
        );
        off_worker(|| broker.close_storage());
        a
    };
    let broker = broker(dir.path(), vec![("jobs", spec)]);
    let (_, after_restart) = broker
        .publish_local("jobs", Bytes::new(), Bytes::from_static(b"a"), keyed("order-1"))
        .await
        .unwrap();
    assert!(after_restart.duplicate, "the window is rebuilt from the log");
    assert_eq!(after_restart.id, first.id);
    assert_eq!(broker.storage().unwrap().bounds("jobs").unwrap().next, 3);
    off_worker(|| broker.close_storage());
}

#[tokio::test]
async fn retention_by_count_and_work_queue_deletion() {
    let dir = tempfile::tempdir().unwrap();
    let small_segments = |broker_dir: &std::path::Path, topics| {
        Broker::new(BrokerConfig {
            topics,
            durable: DurableConfig {
                data_dir: broker_dir.to_path_buf(),
                log: mycelium_storage::LogConfig {
                    segment_bytes: 4096,
                    ..mycelium_storage::LogConfig::default()
                },
                ..DurableConfig::default()
            },
            ..BrokerConfig::default()
        })
        .unwrap()
    };
    let broker = small_segments(
        dir.path(),
        vec![
            (
                "capped".to_owned(),
                stored_spec(|s| s.retention_messages = Some(100)),
            ),
            (
                "jobs".to_owned(),
                stored_spec(|s| s.retention = mycelium_broker::spec::Retention::WorkQueue),
            ),
        ],
    );
    let payload = "x".repeat(500);
    for _ in 0..300 {
        publish(&broker, "capped", &payload, MessageProps::default()).await;
        publish(&broker, "jobs", &payload, MessageProps::default()).await;
    }
    let storage = broker.storage().unwrap();
    // Retention drops whole segments: the count is kept, give or take one segment. It runs once a
    // second, so a pass may land while the publishes are still going on: wait for one that
    // finds them all (at most 3 s).
    let mut bounds = storage.bounds("capped").unwrap();
    for _ in 0..300 {
        bounds = storage.bounds("capped").unwrap();
        if bounds.next - bounds.first < 120 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(bounds.first > 1, "retention never ran");
    assert!(
        bounds.next - bounds.first >= 100,
        "keeps at least the limit: {bounds:?}"
    );
    assert!(bounds.next - bounds.first < 120, "drops the rest: {bounds:?}");

    // Work queue: nothing goes while a subscription still needs it; acked messages do.
    let conn = broker.connect("consumer".into());
    subscribe(&broker, &conn, "workers", 1000, vec![]).await;
    let mut got = Vec::new();
    while got.len() < 300 {
        got.extend(deliveries(&conn));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(storage.bounds("jobs").unwrap().first, 1);
    for (sequence, _, _) in got.iter().take(200) {
        ack(&broker, &conn, *sequence);
    }
    for _ in 0..300 {
        if storage.bounds("jobs").unwrap().first > 150 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let first = storage.bounds("jobs").unwrap().first;
    assert!(
        (150..=201).contains(&first),
        "acked segments deleted, unacked kept: first = {first}"
    );
    off_worker(|| broker.close_storage());
}

#[tokio::test]
async fn a_durable_filter_skips_or_dead_letters_and_outlives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let spec = stored_spec(|s| s.unmatched = mycelium_broker::spec::Unmatched::DeadLetter);
    let options = |filter: Option<&'static str>| SubscribeOptions {
        durable: Some("a-only"),
        start: Some(StartPosition::Beginning),
        filter,
        ..SubscribeOptions::default()
    };
    {
        let broker = broker(dir.path(), vec![("jobs", spec.clone())]);
        for kind in ["a", "b", "a"] {
            publish(
                &broker,
                "jobs",
                &format!(r#"{{"kind": "{kind}"}}"#),
                MessageProps::default(),
            )
            .await;
        }
        let conn = broker.connect("consumer".into());
        open(&broker, &conn, 1, &options(Some(r#"$.kind == "a""#)))
            .await
            .unwrap();
        let mut got = Vec::new();
        for _ in 0..200 {
            got.extend(deliveries(&conn));
            if got.len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(got.iter().map(|d| d.0).collect::<Vec<_>>(), [1, 3]);
        for (sequence, _, _) in &got {
            ack(&broker, &conn, *sequence);
        }
        wait_for("the unmatched message in the DLQ", || {
            off_worker(|| broker.dlq_depth("jobs")).is_ok_and(|d| d == 1)
        })
        .await;
        assert_eq!(
            off_worker(|| broker.dlq_get("jobs", 1)).unwrap().reason,
            "unmatched"
        );
        // A bad filter is refused with its position.
        let other = broker.connect("other".into());
        let bad = SubscribeOptions {
            durable: Some("bad"),
            filter: Some("$.kind =="),
            ..SubscribeOptions::default()
        };
        match open(&broker, &other, 1, &bad).await {
            Err(mycelium_broker::SubscribeError::InvalidFilter(e)) => assert_eq!(e.position, 9),
            other => panic!("{other:?}"),
        }
        off_worker(|| broker.close_storage());
    }
    // After a restart the subscription keeps its filter; asking for another one is refused.
    let broker = broker(dir.path(), vec![("jobs", spec)]);
    publish(&broker, "jobs", r#"{"kind": "b"}"#, MessageProps::default()).await;
    publish(&broker, "jobs", r#"{"kind": "a"}"#, MessageProps::default()).await;
    let conn = broker.connect("consumer".into());
    let refused = open(&broker, &conn, 2, &options(Some(r#"$.kind == "b""#))).await;
    assert!(refused.unwrap_err().to_string().contains("exists with filter"));
    open(&broker, &conn, 1, &options(None)).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..200 {
        got.extend(deliveries(&conn));
        if !got.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        got.iter().map(|d| d.2.as_str()).collect::<Vec<_>>(),
        [r#"{"kind": "a"}"#]
    );
    off_worker(|| broker.close_storage());
}

#[tokio::test(start_paused = true)]
async fn delivery_options_a_client_chooses_are_bounded() {
    use mycelium_broker::delivery::bounds;
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path(), vec![("jobs", stored_spec(|_| {}))]);
    let conn = broker.connect("consumer".into());
    let base = SubscribeOptions {
        durable: Some("w"),
        ..SubscribeOptions::default()
    };
    let refused = |options: SubscribeOptions<'_>| {
        let error = broker.durable_request(&conn, "jobs", &options).unwrap_err();
        assert!(error.to_string().contains("is outside"), "{error}");
    };
    // The abusive shape: ack wait 1 ms, backoff 0, a million in flight.
    refused(SubscribeOptions {
        ack_wait_ms: Some(1),
        ..base.clone()
    });
    refused(SubscribeOptions {
        ack_wait_ms: Some(u32::MAX),
        ..base.clone()
    });
    refused(SubscribeOptions {
        backoff_ms: vec![0],
        ..base.clone()
    });
    refused(SubscribeOptions {
        backoff_ms: vec![1000; bounds::BACKOFF_STEPS_MAX + 1],
        ..base.clone()
    });
    refused(SubscribeOptions {
        max_in_flight: Some(1_000_000),
        ..base.clone()
    });
    refused(SubscribeOptions {
        max_in_flight: Some(0),
        ..base.clone()
    });
    // The edges themselves are allowed.
    let edges = SubscribeOptions {
        ack_wait_ms: Some(bounds::ACK_WAIT_MIN.as_millis() as u32),
        backoff_ms: vec![
            bounds::BACKOFF_MIN.as_millis() as u32,
            bounds::DELAY_MAX.as_millis() as u32,
        ],
        max_in_flight: Some(bounds::IN_FLIGHT_MAX),
        ..base.clone()
    };
    open(&broker, &conn, 1, &edges).await.unwrap();
    // A NACK delay longer than the bound is shortened to it: the message comes back after a day,
    // not after 49 days.
    publish(&broker, "jobs", "j", MessageProps::default()).await;
    let mut got = Vec::new();
    wait_for("the first delivery", || {
        got.extend(deliveries(&conn));
        !got.is_empty()
    })
    .await;
    assert_eq!(got.len(), 1, "{got:?}");
    let nack = Nack {
        ack: Ack {
            subscription_id: 1,
            sequence: got[0].0,
        },
        delay_ms: u32::MAX,
        reason: "later",
    };
    broker.acknowledge(&conn, Verdict::Nack(nack), 0).unwrap();
    tokio::time::advance(bounds::DELAY_MAX - Duration::from_secs(60)).await;
    settle().await;
    assert!(deliveries(&conn).is_empty(), "not before a day");
    tokio::time::advance(Duration::from_secs(120)).await;
    let mut again = Vec::new();
    wait_for("the redelivery", || {
        again.extend(deliveries(&conn));
        !again.is_empty()
    })
    .await;
    assert_eq!(
        again.iter().map(|d| (d.0, d.1)).collect::<Vec<_>>(),
        [(got[0].0, 2)]
    );
}

#[tokio::test(start_paused = true)]
async fn on_a_work_queue_a_new_subscription_takes_the_backlog_whatever_start_it_asks() {
    let dir = tempfile::tempdir().unwrap();
    let spec = stored_spec(|s| s.retention = mycelium_broker::spec::Retention::WorkQueue);
    let broker = broker(dir.path(), vec![("jobs", spec)]);
    for i in 0..50 {
        publish(&broker, "jobs", &format!("job {i}"), MessageProps::default()).await;
    }
    // A newcomer asking to start at "new" (or far ahead) still gets the 50 waiting jobs: starting
    // after them would have let work-queue retention delete a backlog nobody acknowledged.
    let conn = broker.connect("consumer".into());
    for (id, (name, start)) in [
        ("late", StartPosition::New),
        ("ahead", StartPosition::Sequence(10_000)),
    ]
    .into_iter()
    .enumerate()
    {
        let options = SubscribeOptions {
            durable: Some(name),
            start: Some(start),
            max_in_flight: Some(100),
            ..SubscribeOptions::default()
        };
        open(&broker, &conn, id as u32 + 1, &options).await.unwrap();
    }
    let mut got = Vec::new();
    wait_for("the backlog, to both subscriptions", || {
        got.extend(deliveries(&conn));
        got.len() >= 100
    })
    .await;
    let mut sequences: Vec<u64> = got.iter().map(|d| d.0).collect();
    sequences.sort_unstable();
    sequences.dedup();
    assert_eq!(sequences, (1..=50).collect::<Vec<_>>());
    assert_eq!(
        broker.storage().unwrap().bounds("jobs").unwrap().first,
        1,
        "nothing deleted"
    );
}
