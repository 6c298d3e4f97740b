//! Every frame kind round-trips; partial input asks for more; limits and garbage are refused.

use bytes::BytesMut;
use mycelium_protocol::*;
use proptest::prelude::*;

fn round_trip(request_id: u32, frame: Frame<'_>) {
    let mut buf = BytesMut::new();
    encode(&mut buf, request_id, &frame).unwrap();
    let (decoded, used) = decode(&buf, DEFAULT_FRAME_BYTES_MAX)
        .unwrap()
        .expect("whole frame");
    assert_eq!(used, buf.len());
    assert_eq!(decoded.request_id, request_id);
    assert_eq!(decoded.frame, frame);
    // Every strict prefix is "need more bytes", never an error or a wrong frame.
    for cut in 0..buf.len() {
        assert_eq!(
            decode(&buf[..cut], DEFAULT_FRAME_BYTES_MAX).unwrap(),
            None,
            "cut at {cut}"
        );
    }
}

fn headers_block() -> BytesMut {
    let mut block = BytesMut::new();
    encode_headers(
        &mut block,
        [
            ("traceparent", &b"00-abc-def-01"[..]),
            ("content-type", b"application/json"),
        ],
    )
    .unwrap();
    block
}

#[test]
fn every_frame_kind_round_trips() {
    let headers = headers_block();
    let props = Props {
        priority: Some(7),
        ttl_ms: Some(60_000),
        delay_ms: Some(5),
        idempotency_key: Some(b"order-42"),
        not_before_ns: Some(9),
    };
    let mut batch_buf = BytesMut::new();
    let mut writer = BatchWriter::new(&mut batch_buf, 77);
    writer
        .push(&Publish {
            topic: "a.b",
            payload: b"one",
            ..Default::default()
        })
        .unwrap();
    writer
        .push(&Publish {
            topic: "c",
            headers: &headers,
            props,
            confirm: true,
            payload: b"two",
        })
        .unwrap();
    writer.finish().unwrap();
    let (batch, _) = decode(&batch_buf, DEFAULT_FRAME_BYTES_MAX).unwrap().unwrap();
    let Frame::PublishBatch(batch_frame) = batch.frame else {
        panic!("not a batch")
    };
    assert_eq!(batch.request_id, 77);
    let entries: Vec<_> = batch_frame.iter().collect::<Result<_, _>>().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[1].props, props);
    assert!(entries[1].confirm);
    assert_eq!(entries[1].payload, b"two");

    let frames = vec![
        Frame::Hello(Hello {
            version_min: 1,
            version_max: 3,
            client_name: "strategy-7",
            token: b"jwt",
        }),
        Frame::Welcome(Welcome {
            version: 1,
            connection_id: 9,
            frame_bytes_max: 1 << 20,
            server_name: "mycelium",
        }),
        Frame::Ping,
        Frame::Pong,
        Frame::Error(ErrorFrame {
            code: 13,
            detail: 6,
            message: "checksum mismatch",
        }),
        Frame::Publish(Publish {
            topic: "market_data",
            payload: b"x",
            ..Default::default()
        }),
        Frame::Publish(Publish {
            topic: "",
            headers: &headers,
            props,
            confirm: true,
            payload: &[0; 300],
        }),
        Frame::PublishBatch(batch_frame),
        Frame::PublishOk(PublishOk {
            sequence: 5,
            message_id: [7; 16],
            duplicate: true,
        }),
        Frame::Subscribe(Subscribe {
            pattern: "signals.>",
            group: Some("workers"),
            options: b"\x01\x00\x00",
        }),
        Frame::Subscribe(Subscribe {
            pattern: "a.*.c",
            group: None,
            options: b"",
        }),
        Frame::SubscribeOk(SubscriptionRef { subscription_id: 3 }),
        Frame::Unsubscribe(SubscriptionRef { subscription_id: 3 }),
        Frame::UnsubscribeOk(SubscriptionRef { subscription_id: 3 }),
        Frame::Deliver(Deliver {
            subscription_id: 1,
            sequence: 99,
            topic: "t",
            headers: &headers,
            meta: b"m",
            payload: b"p",
        }),
        Frame::Ack(Ack {
            subscription_id: 1,
            sequence: 2,
        }),
        Frame::Nack(Nack {
            ack: Ack {
                subscription_id: 1,
                sequence: 2,
            },
            delay_ms: 2000,
            reason: "db down",
        }),
        Frame::InProgress(Ack {
            subscription_id: 1,
            sequence: 2,
        }),
        Frame::Term(Term {
            ack: Ack {
                subscription_id: 1,
                sequence: 2,
            },
            reason: "poison",
        }),
        Frame::AckOk(Ack {
            subscription_id: 1,
            sequence: 2,
        }),
        Frame::Admin(br#"{"op":"dlq_list","topic":"orders"}"#),
        Frame::AdminOk(br#"{"entries":[]}"#),
        Frame::Admin(b""),
        Frame::Stats,
        Frame::StatsOk(StatsSnapshot {
            uptime_ms: 5,
            topics: vec![TopicStats {
                name: "t".into(),
                routing: "fanout".into(),
                published: 3,
                ..Default::default()
            }],
            subscriptions: vec![SubscriptionStats {
                pattern: ">".into(),
                delivered: 2,
                ..Default::default()
            }],
            connections: vec![ConnectionStats {
                id: 1,
                name: "c".into(),
                peer: "unix".into(),
                ..Default::default()
            }],
        }),
    ];
    for (i, frame) in frames.into_iter().enumerate() {
        round_trip(i as u32 + 1, frame);
    }
}

#[test]
fn deliver_fast_path_matches_generic_encoding_and_predicts_its_size() {
    let headers = headers_block();
    let deliver = Deliver {
        subscription_id: 4,
        sequence: 8,
        topic: "x.y",
        headers: &headers,
        meta: b"",
        payload: b"hi",
    };
    let mut fast = BytesMut::new();
    deliver.encode_frame(&mut fast).unwrap();
    let mut generic = BytesMut::new();
    encode(&mut generic, 0, &Frame::Deliver(deliver)).unwrap();
    assert_eq!(fast, generic);
    assert_eq!(deliver.frame_len(), fast.len());
}

#[test]
fn limits_are_checked_before_the_body_arrives() {
    let mut buf = BytesMut::new();
    encode(
        &mut buf,
        1,
        &Frame::Publish(Publish {
            topic: "t",
            payload: &[0; 100],
            ..Default::default()
        }),
    )
    .unwrap();
    // Only the length prefix is needed to refuse an oversize frame.
    assert_eq!(
        decode(&buf[..4], 64).unwrap_err(),
        ProtocolError::FrameTooLarge {
            len: buf.len(),
            max: 64
        }
    );
    assert_eq!(
        frame_len(&[2, 0, 0, 0], 1024).unwrap_err(),
        ProtocolError::FrameTooShort { len: 6, min: 10 }
    );
    assert_eq!(frame_len(&[0xFF, 0xFF, 0xFF, 0xFF], usize::MAX).unwrap(), None);
}

#[test]
fn malformed_bodies_name_the_fault() {
    let mut buf = BytesMut::new();
    let start = begin(&mut buf, Kind::Subscribe, 0, 1);
    buf.extend_from_slice(&[10, b'a']); // pattern says 10 bytes, has 1
    end(&mut buf, start).unwrap();
    assert_eq!(
        decode(&buf, 1024).unwrap_err(),
        ProtocolError::Truncated {
            field: "pattern",
            need: 10,
            have: 1
        }
    );

    let mut buf = BytesMut::new();
    let start = begin(&mut buf, Kind::Ping, 0, 1);
    buf.extend_from_slice(b"junk");
    end(&mut buf, start).unwrap();
    assert_eq!(
        decode(&buf, 1024).unwrap_err(),
        ProtocolError::TrailingBytes {
            frame: "PING",
            extra: 4
        }
    );

    let mut buf = BytesMut::new();
    begin(&mut buf, Kind::Ping, 0, 1);
    buf[4] = 0xEE;
    end(&mut buf, 0).unwrap();
    assert_eq!(
        decode(&buf, 1024).unwrap_err(),
        ProtocolError::UnknownKind { kind: 0xEE }
    );

    let mut buf = BytesMut::new();
    let start = begin(&mut buf, Kind::Publish, PUBLISH_HAS_PROPS, 1);
    buf.extend_from_slice(&[1, b't', 4, 0, 9, 1, 0, 0]); // property id 9 does not exist
    end(&mut buf, start).unwrap();
    assert_eq!(
        decode(&buf, 1024).unwrap_err(),
        ProtocolError::InvalidValue {
            field: "property id",
            value: 9
        }
    );

    let mut buf = BytesMut::new();
    let start = begin(&mut buf, Kind::Publish, 0, 1);
    buf.extend_from_slice(&[2, 0xC3, 0x28]); // invalid UTF-8 topic
    end(&mut buf, start).unwrap();
    assert_eq!(
        decode(&buf, 1024).unwrap_err(),
        ProtocolError::InvalidUtf8 { field: "topic" }
    );
}

#[test]
fn a_batch_that_lies_about_its_count_is_refused_whole() {
    let mut buf = BytesMut::new();
    let mut writer = BatchWriter::new(&mut buf, 1);
    writer
        .push(&Publish {
            topic: "t",
            payload: b"1",
            ..Default::default()
        })
        .unwrap();
    writer.finish().unwrap();
    buf[10] = 2; // count says 2, one entry present
    assert_eq!(
        decode(&buf, 1024).unwrap_err(),
        ProtocolError::InvalidValue {
            field: "batch count",
            value: 2
        }
    );
}

#[test]
fn version_negotiation_picks_the_newest_common_version() {
    let hello = |version_min, version_max| Hello {
        version_min,
        version_max,
        client_name: "",
        token: b"",
    };
    assert_eq!(hello(1, 1).negotiate(), Some(1));
    assert_eq!(hello(1, 9).negotiate(), Some(PROTOCOL_VERSION));
    assert_eq!(hello(2, 9).negotiate(), None);
    assert_eq!(hello(0, 0).negotiate(), None);
}

#[test]
fn error_codes_are_stable() {
    // The numbers are the wire contract: this table only ever grows.
    let expected = [
        (ErrorCode::MalformedFrame, 1),
        (ErrorCode::FrameTooLarge, 2),
        (ErrorCode::UnsupportedVersion, 3),
        (ErrorCode::HandshakeRequired, 4),
        (ErrorCode::HandshakeTimeout, 5),
        (ErrorCode::TooManyConnections, 6),
        (ErrorCode::ShuttingDown, 7),
        (ErrorCode::NotAuthenticated, 8),
        (ErrorCode::InvalidTopic, 10),
        (ErrorCode::UnknownTopic, 11),
        (ErrorCode::MessageTooLarge, 12),
        (ErrorCode::InvalidTlv, 13),
        (ErrorCode::InvalidPattern, 14),
        (ErrorCode::UnknownSubscription, 15),
        (ErrorCode::SlowConsumer, 16),
        (ErrorCode::NoRoute, 17),
        (ErrorCode::NotPermitted, 18),
        (ErrorCode::InvalidHeaders, 19),
        (ErrorCode::InvalidFilter, 20),
        (ErrorCode::LimitReached, 21),
        (ErrorCode::TimedOut, 22),
        (ErrorCode::StorageFailed, 30),
        (ErrorCode::Duplicate, 31),
        (ErrorCode::InvalidRequest, 40),
        (ErrorCode::NotFound, 41),
        (ErrorCode::Internal, 99),
    ];
    for (code, value) in expected {
        assert_eq!(code as u16, value);
        assert_eq!(ErrorCode::from_u16(value), Some(code));
    }
    assert_eq!(ErrorCode::ALL.len(), expected.len());
    assert_eq!(ErrorCode::from_u16(12345), None);
}

proptest! {
    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut rest = &bytes[..];
        while let Ok(Some((decoded, used))) = decode(rest, 4096) {
            if let Frame::PublishBatch(batch) = decoded.frame {
                prop_assert_eq!(batch.iter().count(), batch.len());
            }
            rest = &rest[used..];
        }
    }

    #[test]
    fn garbage_bodies_behind_valid_headers_never_panic(
        kind in proptest::sample::select(vec![0x01u8, 0x02, 0x05, 0x10, 0x11, 0x12, 0x20, 0x21, 0x30, 0x40, 0x41, 0x43, 0x51]),
        flags in any::<u8>(),
        body in proptest::collection::vec(any::<u8>(), 0..128),
    ) {
        let mut buf = BytesMut::new();
        let start = begin(&mut buf, Kind::from_u8(kind).unwrap(), flags, 1);
        buf.extend_from_slice(&body);
        end(&mut buf, start).unwrap();
        let _ = decode(&buf, 4096);
    }

    #[test]
    fn publish_round_trips(topic in "[a-z.]{0,40}", payload in proptest::collection::vec(any::<u8>(), 0..2048), confirm: bool, priority in proptest::option::of(0u8..=9)) {
        let props = Props { priority, ..Default::default() };
        let frame = Frame::Publish(Publish { topic: &topic, headers: b"", props, confirm, payload: &payload });
        let mut buf = BytesMut::new();
        encode(&mut buf, 5, &frame).unwrap();
        let (decoded, _) = decode(&buf, DEFAULT_FRAME_BYTES_MAX).unwrap().unwrap();
        prop_assert_eq!(decoded.frame, frame);
    }
}

#[test]
fn subscribe_options_and_delivery_meta_round_trip() {
    let options = SubscribeOptions {
        durable: Some("billing"),
        start: Some(StartPosition::Time(1_700_000_000_000_000_000)),
        ack_wait_ms: Some(30_000),
        max_deliveries: Some(5),
        max_in_flight: Some(100),
        backoff_ms: vec![2000, 4000, 8000],
        filter: Some(r#"$.side == "buy" and header.region prefix "eu""#),
    };
    let mut block = BytesMut::new();
    options.encode(&mut block).unwrap();
    assert_eq!(SubscribeOptions::decode(&block).unwrap(), options);
    for start in [
        StartPosition::New,
        StartPosition::Beginning,
        StartPosition::Sequence(42),
    ] {
        let o = SubscribeOptions {
            start: Some(start),
            ..Default::default()
        };
        let mut b = BytesMut::new();
        o.encode(&mut b).unwrap();
        assert_eq!(SubscribeOptions::decode(&b).unwrap(), o);
    }
    assert!(
        SubscribeOptions::decode(&[9, 0, 0]).is_err(),
        "unknown option ids are refused"
    );
    assert!(
        SubscribeOptions::decode(&[2, 1, 0, 7]).is_err(),
        "unknown start kind"
    );
    assert!(
        SubscribeOptions::decode(&[6, 3, 0, 1, 2, 3]).is_err(),
        "backoff not a multiple of 4 bytes"
    );

    let meta = DeliveryMeta {
        message_id: [9; 16],
        attempt: 3,
        publish_ns: 77,
    };
    let mut b = BytesMut::new();
    meta.encode(&mut b);
    assert_eq!(b.len(), DeliveryMeta::LEN);
    assert_eq!(DeliveryMeta::decode(&b).unwrap(), meta);
}

proptest! {
    #[test]
    fn option_and_meta_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = SubscribeOptions::decode(&bytes);
        let _ = DeliveryMeta::decode(&bytes);
    }
}

#[test]
fn frames_yields_whole_frames_then_stops_at_a_partial_one_or_after_a_malformed_one() {
    let mut buf = BytesMut::new();
    encode(&mut buf, 1, &Frame::Ping).unwrap();
    encode(&mut buf, 2, &Frame::Pong).unwrap();
    let whole = buf.len();
    encode(&mut buf, 3, &Frame::Stats).unwrap();
    let ids: Vec<u32> = mycelium_protocol::frames(&buf[..buf.len() - 1])
        .map(|f| f.unwrap().request_id)
        .collect();
    assert_eq!(ids, [1, 2], "the partial third frame waits");
    let mut bad = buf[..whole].to_vec();
    let mut unknown = BytesMut::new();
    encode(&mut unknown, 4, &Frame::Ping).unwrap();
    unknown[4] = 0xEE; // the kind byte
    bad.extend_from_slice(&unknown);
    bad.extend_from_slice(&buf[..whole]);
    let got: Vec<_> = mycelium_protocol::frames(&bad).collect();
    assert_eq!(got.len(), 3);
    assert!(got[2].is_err(), "an unknown kind ends the stream");
}
