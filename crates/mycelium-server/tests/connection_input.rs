//! The connection path the fuzzer drives (`fuzz/fuzz_targets/connection.rs`), run here on
//! generated input in the test command: whatever a client sends, the broker answers with
//! well-formed frames and never panics; without a credential over TCP nothing but HELLO is read.

use mycelium_protocol::{ErrorCode, Frame, Hello, Publish, Subscribe, decode, encode};
use mycelium_server::harness::{Harness, TOKEN};
use proptest::prelude::*;

fn frame(request_id: u32, frame: &Frame<'_>) -> Vec<u8> {
    let mut buf = bytes::BytesMut::new();
    encode(&mut buf, request_id, frame).unwrap();
    buf.to_vec()
}

fn hello(token: &[u8]) -> Vec<u8> {
    frame(
        0,
        &Frame::Hello(Hello {
            version_min: 1,
            version_max: 1,
            client_name: "prop",
            token,
        }),
    )
}

/// Every answer decodes whole: the broker never sends a torn or garbage frame.
fn answers(bytes: &[u8]) -> Vec<String> {
    let mut rest = bytes;
    let mut kinds = Vec::new();
    while !rest.is_empty() {
        let (decoded, used) = decode(rest, usize::MAX)
            .expect("the broker's answers decode")
            .expect("no torn frame at the end");
        kinds.push(match decoded.frame {
            Frame::Error(e) => format!("Error({})", e.code),
            other => other.kind().name().to_owned(),
        });
        rest = &rest[used..];
    }
    kinds
}

/// Frames a client might send, valid and not.
fn client_frame() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        ("[a-z>*.]{0,12}", proptest::collection::vec(any::<u8>(), 0..32)).prop_map(|(topic, payload)| frame(
            1,
            &Frame::Publish(Publish {
                topic: &topic,
                payload: &payload,
                confirm: true,
                ..Default::default()
            })
        )),
        ("[a-z>*.]{0,12}", proptest::collection::vec(any::<u8>(), 0..8)).prop_map(
            |(pattern, options)| frame(
                2,
                &Frame::Subscribe(Subscribe {
                    pattern: &pattern,
                    group: None,
                    options: &options,
                })
            )
        ),
        Just(frame(3, &Frame::Stats)),
        Just(frame(4, &Frame::Ping)),
        proptest::collection::vec(any::<u8>(), 0..64),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn any_input_gets_well_formed_answers(
        first in any::<u8>(),
        token in prop_oneof![Just(TOKEN.as_bytes().to_vec()), Just(Vec::new()), proptest::collection::vec(any::<u8>(), 0..16)],
        frames in proptest::collection::vec(client_frame(), 0..6),
    ) {
        let harness = Harness::new();
        let mut input = vec![first];
        input.extend(hello(&token));
        for f in &frames {
            input.extend(f);
        }
        let kinds = answers(&harness.serve(&input));
        // Over TCP (even first byte) only the user's token gets in; on the Unix socket the
        // broker's own uid gets in without one, and a token, when sent, must be valid.
        let over_tcp = first % 2 == 0;
        let admitted = token == TOKEN.as_bytes() || (!over_tcp && token.is_empty());
        if admitted {
            prop_assert_eq!(kinds.first().map(String::as_str), Some("Welcome"));
        } else {
            // Refused at HELLO: one ERROR, nothing after it was read.
            prop_assert_eq!(kinds, vec![format!("Error({})", ErrorCode::NotAuthenticated as u16)]);
        }
    }
}

#[test]
fn garbage_before_and_after_hello_is_answered_and_closed() {
    let harness = Harness::new();
    // "GET " read as a length prefix is far over the frame limit: FrameTooLarge, then closed.
    assert_eq!(
        answers(&harness.serve(b"\x00GET / HTTP/1.1\r\n\r\n")),
        [format!("Error({})", ErrorCode::FrameTooLarge as u16)]
    );
    let mut input = vec![0];
    input.extend(hello(TOKEN.as_bytes()));
    input.extend(b"\xff\xff\xff\xff\x00\x00");
    let kinds = answers(&harness.serve(&input));
    assert_eq!(kinds.first().map(String::as_str), Some("Welcome"));
    assert!(kinds.last().unwrap().starts_with("Error("), "{kinds:?}");
}
