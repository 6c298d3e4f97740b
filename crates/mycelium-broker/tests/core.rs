//! Broker core behaviour, without sockets: frames land in outbound buffers, read back here.

use std::sync::Arc;
use std::time::Duration;

use mycelium_broker::name::{Pattern, validate_topic};
use mycelium_broker::spec::{Balance, Overflow, PayloadCodec, Routing, TopicSpec};
use mycelium_broker::{Broker, BrokerConfig, ConnectionInfo, PublishError, Publisher, pick};
use mycelium_codec::{MessageBuilder, RelayDomain, SourceType};
use mycelium_protocol::{Deliver, ErrorCode, Frame, Publish, frames};

fn broker_with(topics: Vec<(&str, TopicSpec)>, auto_create: bool) -> Arc<Broker> {
    Broker::new(BrokerConfig {
        auto_create_topics: auto_create,
        topics: topics.into_iter().map(|(n, s)| (n.to_owned(), s)).collect(),
        ..BrokerConfig::default()
    })
    .unwrap()
}

fn spec(routing: Routing) -> TopicSpec {
    TopicSpec {
        routing,
        ..TopicSpec::default()
    }
}

/// Drains a connection's outbound and decodes every frame into (subscription, sequence, payload)
/// for deliveries, or the error code for errors.
#[derive(Debug, PartialEq)]
enum Got {
    Msg(u32, u64, Vec<u8>),
    Err(u16),
}

fn drain(conn: &ConnectionInfo) -> Vec<Got> {
    let buf = conn.outbound.take_all();
    let mut out = Vec::new();
    for decoded in frames(&buf) {
        match decoded.unwrap().frame {
            Frame::Deliver(Deliver {
                subscription_id,
                sequence,
                payload,
                ..
            }) => out.push(Got::Msg(subscription_id, sequence, payload.to_vec())),
            Frame::Error(e) => out.push(Got::Err(e.code)),
            other => panic!("unexpected frame {other:?}"),
        }
    }
    out
}

fn publish(broker: &Broker, p: &mut Publisher, topic: &str, payload: &[u8]) -> Result<u64, PublishError> {
    p.begin_batch(broker);
    let result = broker
        .publish(
            p,
            &Publish {
                topic,
                payload,
                ..Default::default()
            },
        )
        .map(|r| r.sequence);
    p.end_batch(broker);
    result
}

#[test]
fn wildcards_match_exactly_as_specified() {
    let table: &[(&str, &str, bool)] = &[
        ("a.b.c", "a.b.c", true),
        ("a.b.c", "a.b", false),
        ("a.b.c", "a.b.c.d", false),
        ("a.*.c", "a.b.c", true),
        ("a.*.c", "a.b.d", false),
        ("a.*.c", "a.c", false),
        ("a.*", "a.b", true),
        ("a.*", "a.b.c", false),
        ("a.*", "a", false),
        ("*", "a", true),
        ("*", "a.b", false),
        ("a.>", "a.b", true),
        ("a.>", "a.b.c.d", true),
        ("a.>", "a", false),
        (">", "a", true),
        (">", "a.b.c", true),
        ("*.*.>", "a.b", false),
        ("*.*.>", "a.b.c", true),
        ("market_data", "market_data", true),
        ("market_data", "market_data.eth", false),
        ("signals.*.eth", "signals.arbitrage.eth", true),
    ];
    for (pattern, topic, expected) in table {
        validate_topic(topic).unwrap();
        assert_eq!(
            Pattern::parse(pattern).unwrap().matches(topic),
            *expected,
            "{pattern} vs {topic}"
        );
    }
}

#[test]
fn names_and_patterns_are_validated() {
    for bad in ["", ".a", "a.", "a..b", "a b", "a.*", "a.>", "ü", &"x".repeat(256)] {
        assert!(validate_topic(bad).is_err(), "{bad:?} should be refused");
    }
    for bad in ["", "a.>.b", "a..b", "a.**", "a.b>"] {
        assert!(Pattern::parse(bad).is_err(), "{bad:?} should be refused");
    }
    let error = validate_topic("a..b").unwrap_err().to_string();
    assert!(error.contains("token 2 is empty"), "{error}");
}

#[test]
fn fanout_reaches_every_subscription_and_each_group_once() {
    let broker = broker_with(vec![("t", spec(Routing::Fanout))], false);
    let a = broker.connect("test".into());
    let b = broker.connect("test".into());
    let c = broker.connect("test".into());
    broker.subscribe(&a, 1, "t", None).unwrap();
    broker.subscribe(&b, 1, ">", None).unwrap();
    broker.subscribe(&b, 2, "t", Some("g")).unwrap();
    broker.subscribe(&c, 1, "t", Some("g")).unwrap();
    let publisher = broker.connect("test".into());
    let mut p = Publisher::new(publisher);
    for i in 0..4u8 {
        publish(&broker, &mut p, "t", &[i]).unwrap();
    }
    assert_eq!(
        drain(&a),
        (1..=4)
            .map(|s| Got::Msg(1, s, vec![s as u8 - 1]))
            .collect::<Vec<_>>()
    );
    let b_got = drain(&b);
    let c_got = drain(&c);
    let plain_b = b_got.iter().filter(|g| matches!(g, Got::Msg(1, ..))).count();
    let group_b = b_got.iter().filter(|g| matches!(g, Got::Msg(2, ..))).count();
    assert_eq!(plain_b, 4);
    assert_eq!(group_b + c_got.len(), 4, "the group gets each message once");
    assert_eq!((group_b, c_got.len()), (2, 2), "round robin spreads the group");
}

#[test]
fn queue_routing_makes_plain_subscriptions_one_group() {
    let broker = broker_with(vec![("jobs", spec(Routing::Queue))], false);
    let members: Vec<_> = (0..4).map(|_| broker.connect("test".into())).collect();
    for m in &members {
        broker.subscribe(m, 7, "jobs", None).unwrap();
    }
    let mut p = Publisher::new(broker.connect("test".into()));
    for i in 0..100u32 {
        publish(&broker, &mut p, "jobs", &i.to_le_bytes()).unwrap();
    }
    let mut all: Vec<u64> = Vec::new();
    for m in &members {
        let got = drain(m);
        assert_eq!(got.len(), 25, "round robin gives each member a quarter");
        all.extend(got.iter().map(|g| match g {
            Got::Msg(_, seq, _) => *seq,
            Got::Err(_) => panic!(),
        }));
    }
    all.sort_unstable();
    assert_eq!(all, (1..=100).collect::<Vec<_>>(), "each message exactly once");
}

#[test]
fn direct_routing_fails_over_in_subscription_order() {
    let broker = broker_with(vec![("d", spec(Routing::Direct))], false);
    let first = broker.connect("test".into());
    let second = broker.connect("test".into());
    broker.subscribe(&first, 1, "d", None).unwrap();
    broker.subscribe(&second, 1, "d", None).unwrap();
    let mut p = Publisher::new(broker.connect("test".into()));
    publish(&broker, &mut p, "d", b"1").unwrap();
    broker.disconnect(first.id);
    publish(&broker, &mut p, "d", b"2").unwrap();
    broker.disconnect(second.id);
    publish(&broker, &mut p, "d", b"3").unwrap();
    assert_eq!(drain(&second), vec![Got::Msg(1, 2, b"2".to_vec())]);
    let stats = broker.stats();
    assert_eq!(
        stats.topics[0].dropped, 1,
        "no subscriber left: counted as dropped"
    );
}

#[test]
fn pick_strategies_are_pure_and_skip_dead_members() {
    let loads = [5usize, 1, 3, 1];
    let live = |i: &usize| *i != 1;
    let room = |_: &usize| true;
    let members = [0usize, 1, 2, 3];
    assert_eq!(
        pick(&members, Balance::RoundRobin, 0, live, room, |i| loads[*i]),
        Some(0)
    );
    assert_eq!(
        pick(&members, Balance::RoundRobin, 1, live, room, |i| loads[*i]),
        Some(2)
    );
    assert_eq!(
        pick(&members, Balance::RoundRobin, 5, live, room, |i| loads[*i]),
        Some(2)
    );
    assert_eq!(
        pick(&members, Balance::LeastLoaded, 0, live, room, |i| loads[*i]),
        Some(3)
    );
    // Nobody has room: round robin still names a live member so the overflow policy can apply.
    assert_eq!(
        pick(&members, Balance::RoundRobin, 1, live, |_| false, |i| loads[*i]),
        Some(2)
    );
    assert_eq!(
        pick(&members, Balance::RoundRobin, 0, |_| false, room, |i| loads[*i]),
        None
    );
    assert_eq!(
        pick::<usize>(&[], Balance::LeastLoaded, 0, live, room, |i| loads[*i]),
        None
    );
}

#[test]
fn unsubscribe_stops_delivery() {
    let broker = broker_with(vec![], true);
    let sub = broker.connect("test".into());
    broker.subscribe(&sub, 3, "x.*", None).unwrap();
    let mut p = Publisher::new(broker.connect("test".into()));
    publish(&broker, &mut p, "x.y", b"a").unwrap();
    assert!(broker.unsubscribe(&sub, 3));
    assert!(!broker.unsubscribe(&sub, 3), "already gone");
    publish(&broker, &mut p, "x.y", b"b").unwrap();
    assert_eq!(drain(&sub), vec![Got::Msg(3, 1, b"a".to_vec())]);
}

fn small(overflow: Overflow) -> TopicSpec {
    // Room for exactly two 100-byte-payload deliveries (each frame is 10+4+8+2+100 = 124 bytes).
    TopicSpec {
        buffer_bytes: 250,
        overflow,
        block_timeout: Duration::from_millis(200),
        ..TopicSpec::default()
    }
}

#[test]
fn drop_oldest_drops_the_oldest_and_counts() {
    let broker = broker_with(vec![("q", small(Overflow::DropOldest))], false);
    let sub = broker.connect("test".into());
    broker.subscribe(&sub, 1, "q", None).unwrap();
    let mut p = Publisher::new(broker.connect("test".into()));
    for i in 0..5u8 {
        publish(&broker, &mut p, "q", &[i; 100]).unwrap();
    }
    let got = drain(&sub);
    assert_eq!(
        got,
        vec![Got::Msg(1, 4, vec![3; 100]), Got::Msg(1, 5, vec![4; 100])]
    );
    let stats = broker.stats();
    assert_eq!((stats.topics[0].dropped, stats.topics[0].delivered), (3, 5));
    assert_eq!(stats.subscriptions[0].dropped, 3);
}

#[test]
fn disconnect_policy_disconnects_at_once_with_an_error() {
    let broker = broker_with(vec![("q", small(Overflow::Disconnect))], false);
    let slow = broker.connect("test".into());
    let fine = broker.connect("test".into());
    broker.subscribe(&slow, 1, "q", None).unwrap();
    let mut p = Publisher::new(broker.connect("test".into()));
    for i in 0..3u8 {
        publish(&broker, &mut p, "q", &[i; 100]).unwrap();
    }
    broker.subscribe(&fine, 1, "q", None).unwrap();
    publish(&broker, &mut p, "q", b"after").unwrap();
    assert!(slow.outbound.is_closing());
    let got = drain(&slow);
    assert_eq!(got.len(), 3);
    assert_eq!(got[2], Got::Err(ErrorCode::SlowConsumer as u16));
    assert_eq!(drain(&fine), vec![Got::Msg(1, 4, b"after".to_vec())]);
    assert_eq!(broker.stats().topics[0].slow_disconnects, 1);
}

#[tokio::test(start_paused = true)]
async fn block_waits_for_room_then_delivers_in_order() {
    let broker = broker_with(vec![("q", small(Overflow::Block))], false);
    let sub = broker.connect("test".into());
    broker.subscribe(&sub, 1, "q", None).unwrap();
    let mut p = Publisher::new(broker.connect("test".into()));
    publish(&broker, &mut p, "q", &[0; 100]).unwrap();
    publish(&broker, &mut p, "q", &[1; 100]).unwrap();
    p.begin_batch(&broker);
    broker
        .publish(
            &mut p,
            &Publish {
                topic: "q",
                payload: &[2; 100],
                ..Default::default()
            },
        )
        .unwrap();
    assert!(p.has_blocked(), "third message does not fit");
    // The subscriber drains 100 ms later; the publisher is waiting meanwhile.
    let sub2 = Arc::clone(&sub);
    let drainer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        drain(&sub2)
    });
    broker.settle_blocked(&mut p).await;
    let first = drainer.await.unwrap();
    assert_eq!(first.len(), 2);
    assert_eq!(drain(&sub), vec![Got::Msg(1, 3, vec![2; 100])]);
    assert!(!sub.outbound.is_closing());
    assert_eq!(broker.stats().topics[0].blocked, 1);
}

#[tokio::test(start_paused = true)]
async fn block_gives_up_after_block_timeout_and_disconnects() {
    let broker = broker_with(vec![("q", small(Overflow::Block))], false);
    let sub = broker.connect("test".into());
    broker.subscribe(&sub, 1, "q", None).unwrap();
    let mut p = Publisher::new(broker.connect("test".into()));
    for i in 0..3u8 {
        p.begin_batch(&broker);
        broker
            .publish(
                &mut p,
                &Publish {
                    topic: "q",
                    payload: &[i; 100],
                    ..Default::default()
                },
            )
            .unwrap();
    }
    let start = tokio::time::Instant::now();
    broker.settle_blocked(&mut p).await;
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(200),
        "waited exactly block_timeout"
    );
    assert!(sub.outbound.is_closing());
    let got = drain(&sub);
    assert_eq!(got.last(), Some(&Got::Err(ErrorCode::SlowConsumer as u16)));
    assert_eq!(broker.stats().topics[0].slow_disconnects, 1);
}

fn trade_message(domain: RelayDomain) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut b = MessageBuilder::new(&mut buf, domain, SourceType::TestClient);
    b.add_tlv(200, b"vendor").unwrap();
    b.finish();
    buf
}

#[test]
fn tlv_topics_reject_invalid_payloads_with_the_exact_fault() {
    let broker = broker_with(
        vec![(
            "md",
            TopicSpec {
                codec: PayloadCodec::Tlv,
                ..TopicSpec::default()
            },
        )],
        false,
    );
    let sub = broker.connect("test".into());
    broker.subscribe(&sub, 1, "md", None).unwrap();
    let mut p = Publisher::new(broker.connect("test".into()));
    let good = trade_message(RelayDomain::MarketData);
    publish(&broker, &mut p, "md", &good).unwrap();
    let mut bad = good.clone();
    bad[38] ^= 1;
    let error = publish(&broker, &mut p, "md", &bad).unwrap_err();
    assert_eq!(error.code(), ErrorCode::InvalidTlv);
    assert_eq!(
        error.detail(),
        mycelium_protocol::TlvFault::ChecksumMismatch as u16
    );
    assert!(error.to_string().contains("checksum mismatch"), "{error}");
    assert_eq!(drain(&sub).len(), 1, "the bad one is not delivered");
    assert_eq!(broker.stats().topics[0].rejected, 1);
}

#[test]
fn domain_mapping_routes_topicless_tlv_publishes() {
    let broker = broker_with(vec![], true);
    let sub = broker.connect("test".into());
    broker.subscribe(&sub, 1, "signals", None).unwrap();
    let mut p = Publisher::new(broker.connect("test".into()));
    let message = trade_message(RelayDomain::Signal);
    publish(&broker, &mut p, "", &message).unwrap();
    assert_eq!(drain(&sub), vec![Got::Msg(1, 1, message)]);
    let error = publish(&broker, &mut p, "", b"not tlv").unwrap_err();
    assert_eq!(error.code(), ErrorCode::NoRoute);
}

#[test]
fn limits_and_unknown_topics() {
    let broker = broker_with(
        vec![(
            "small",
            TopicSpec {
                message_bytes_max: 4,
                ..TopicSpec::default()
            },
        )],
        false,
    );
    let mut p = Publisher::new(broker.connect("test".into()));
    assert_eq!(
        publish(&broker, &mut p, "small", b"12345").unwrap_err().code(),
        ErrorCode::MessageTooLarge
    );
    assert_eq!(
        publish(&broker, &mut p, "nope", b"1").unwrap_err().code(),
        ErrorCode::UnknownTopic
    );
    assert_eq!(
        publish(&broker, &mut p, "bad..name", b"1").unwrap_err().code(),
        ErrorCode::InvalidTopic
    );
    let props = mycelium_protocol::Props {
        priority: Some(1),
        ..Default::default()
    };
    p.begin_batch(&broker);
    let error = broker.publish(
        &mut p,
        &Publish {
            topic: "small",
            props,
            payload: b"1",
            ..Default::default()
        },
    );
    assert_eq!(
        error.unwrap_err().code(),
        ErrorCode::InvalidHeaders,
        "unsupported properties are refused, not ignored"
    );
}

#[test]
fn order_is_kept_per_publisher_per_topic() {
    let broker = broker_with(vec![], true);
    let subs: Vec<_> = (0..10).map(|_| broker.connect("test".into())).collect();
    for s in &subs {
        broker.subscribe(s, 1, "o", None).unwrap();
    }
    let mut p = Publisher::new(broker.connect("test".into()));
    for i in 0..1000u32 {
        publish(&broker, &mut p, "o", &i.to_le_bytes()).unwrap();
    }
    for s in &subs {
        let got: Vec<u32> = drain(s)
            .into_iter()
            .map(|g| match g {
                Got::Msg(_, _, p) => u32::from_le_bytes(p.try_into().unwrap()),
                Got::Err(_) => panic!(),
            })
            .collect();
        assert_eq!(got, (0..1000).collect::<Vec<_>>());
    }
}

#[test]
fn filtered_subscriptions_and_groups_get_only_what_they_accept() {
    let broker = broker_with(vec![("orders", spec(Routing::Fanout))], false);
    let (eu, us, any) = (
        broker.connect("eu".into()),
        broker.connect("us".into()),
        broker.connect("any".into()),
    );
    broker
        .subscribe_filtered(&eu, 1, "orders", None, Some(r#"$.region == "eu""#), 0)
        .unwrap();
    // A queue group whose members split the work by size.
    broker
        .subscribe_filtered(&us, 2, "orders", Some("workers"), Some("$.qty > 10"), 0)
        .unwrap();
    broker
        .subscribe_filtered(&any, 3, "orders", Some("workers"), Some("$.qty <= 10"), 0)
        .unwrap();
    let bad = broker.subscribe_filtered(&any, 4, "orders", None, Some("$.qty >"), 0);
    match bad {
        Err(mycelium_broker::SubscribeError::InvalidFilter(e)) => assert_eq!(e.position, 7),
        other => panic!("{other:?}"),
    }
    for c in [&eu, &us, &any] {
        // Discard the SUBSCRIBE_OK frames.
        c.outbound.take_all();
    }
    let mut p = Publisher::new(Arc::clone(&eu));
    publish(&broker, &mut p, "orders", br#"{"region": "eu", "qty": 50}"#).unwrap();
    publish(&broker, &mut p, "orders", br#"{"region": "us", "qty": 5}"#).unwrap();
    publish(&broker, &mut p, "orders", b"not json").unwrap();
    let got = |c: &ConnectionInfo| -> Vec<Vec<u8>> {
        drain(c)
            .into_iter()
            .filter_map(|g| match g {
                Got::Msg(_, _, payload) => Some(payload),
                Got::Err(_) => None,
            })
            .collect()
    };
    assert_eq!(got(&eu), [br#"{"region": "eu", "qty": 50}"#.to_vec()]);
    assert_eq!(got(&us), [br#"{"region": "eu", "qty": 50}"#.to_vec()]);
    assert_eq!(got(&any), [br#"{"region": "us", "qty": 5}"#.to_vec()]);
    let stats = broker.stats();
    let orders = stats.topics.iter().find(|t| t.name == "orders").unwrap();
    // eu refused 2 messages; the group had no taker for "not json".
    assert_eq!(orders.filtered, 3);
}

#[test]
fn topics_and_subscriptions_per_connection_are_capped() {
    use mycelium_broker::Limits;
    let broker = Broker::new(BrokerConfig {
        limits: Limits {
            topics_max: 3,
            subscriptions_per_connection_max: 2,
            ..Limits::default()
        },
        ..BrokerConfig::default()
    })
    .unwrap();
    let conn = broker.connect("test".into());
    let mut publisher = Publisher::new(Arc::clone(&conn));
    for topic in ["a", "b", "c"] {
        publish(&broker, &mut publisher, topic, b"x").unwrap();
    }
    let error = publish(&broker, &mut publisher, "d", b"x").unwrap_err();
    assert_eq!(error.code(), ErrorCode::LimitReached);
    assert!(error.to_string().contains("server.max_topics"), "{error}");
    assert!(broker.topic("d").is_none(), "nothing was created");
    publish(&broker, &mut publisher, "a", b"x").unwrap();
    // Subscriptions: two per connection; a third is refused, and room comes back on unsubscribe.
    broker.subscribe(&conn, 1, "a", None).unwrap();
    broker.subscribe(&conn, 2, "b.>", None).unwrap();
    let error = broker.subscribe(&conn, 3, "c", None).unwrap_err();
    assert_eq!(error.code(), ErrorCode::LimitReached);
    let other = broker.connect("other".into());
    broker.subscribe(&other, 1, "c", None).unwrap();
    assert!(broker.unsubscribe(&conn, 1));
    broker.subscribe(&conn, 3, "c", None).unwrap();
}

#[test]
fn a_header_block_too_large_to_deliver_is_refused_at_publish() {
    let broker = broker_with(vec![], true);
    let conn = broker.connect("test".into());
    let subscriber = broker.connect("sub".into());
    broker.subscribe(&subscriber, 1, "h", None).unwrap();
    let mut publisher = Publisher::new(Arc::clone(&conn));
    let pairs = [("k", "v".repeat(mycelium_broker::HEADERS_BYTES_MAX))];
    let mut headers = bytes::BytesMut::new();
    mycelium_protocol::encode_headers(&mut headers, pairs.iter().map(|(k, v)| (*k, v.as_bytes()))).unwrap();
    let message = Publish {
        topic: "h",
        headers: &headers,
        payload: b"x",
        ..Default::default()
    };
    let error = broker.publish(&mut publisher, &message).unwrap_err();
    assert_eq!(error.code(), ErrorCode::InvalidHeaders);
    assert!(error.to_string().contains("header block"), "{error}");
    assert!(subscriber.outbound.take_all().is_empty(), "nothing was routed");
}

#[tokio::test(start_paused = true)]
async fn a_slow_subscriber_that_comes_back_may_not_make_publishers_wait_again() {
    let broker = broker_with(vec![("q", small(Overflow::Block))], false);
    let fill = |p: &mut Publisher| {
        for i in 0..3u8 {
            p.begin_batch(&broker);
            broker
                .publish(
                    p,
                    &Publish {
                        topic: "q",
                        payload: &[i; 100],
                        ..Default::default()
                    },
                )
                .unwrap();
        }
    };
    let mut p = Publisher::new(broker.connect("publisher".into()));
    // A `>` subscriber that never reads costs the publisher one block_timeout, and is cut off.
    let slow = broker.connect("tcp:10.0.0.9:4001".into());
    broker.subscribe(&slow, 1, ">", None).unwrap();
    fill(&mut p);
    let start = tokio::time::Instant::now();
    broker.settle_blocked(&mut p).await;
    assert_eq!(start.elapsed(), Duration::from_millis(200));
    assert!(slow.outbound.is_closing());
    broker.disconnect(slow.id);
    // It reconnects (another port, same principal and address) and stops reading again: cut
    // off at once, the publisher does not wait.
    let again = broker.connect("tcp:10.0.0.9:4002".into());
    broker.subscribe(&again, 1, ">", None).unwrap();
    fill(&mut p);
    let start = tokio::time::Instant::now();
    broker.settle_blocked(&mut p).await;
    assert_eq!(start.elapsed(), Duration::ZERO, "no second block_timeout");
    assert!(again.outbound.is_closing());
    assert_eq!(
        drain(&again).last(),
        Some(&Got::Err(ErrorCode::SlowConsumer as u16))
    );
    assert_eq!(
        broker.incidents.counts()[4],
        ("block_refused", broker.incidents.counts()[4].1, 1)
    );
    // Another address is not penalised: it may make the publisher wait.
    let other = broker.connect("tcp:10.0.0.7:5000".into());
    broker.subscribe(&other, 1, "q", None).unwrap();
    fill(&mut p);
    let start = tokio::time::Instant::now();
    broker.settle_blocked(&mut p).await;
    assert_eq!(start.elapsed(), Duration::from_millis(200));
}
