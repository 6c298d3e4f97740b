//! The filter language, table-driven: header, JSON and TLV tests, combinations, and malformed
//! filters with the position of the fault.

use bytes::BytesMut;
use mycelium_broker::filter::Filter;
use mycelium_codec::records::Trade;
use mycelium_codec::{Fixed8, MessageBuilder, RelayDomain, SourceType};
use mycelium_protocol::encode_headers;

fn headers(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut block = BytesMut::new();
    encode_headers(&mut block, pairs.iter().map(|(k, v)| (*k, v.as_bytes()))).unwrap();
    block.to_vec()
}

fn trade(price: &str, side: u8) -> Vec<u8> {
    let record = Trade {
        instrument_id: 7.into(),
        price: price.parse::<Fixed8>().unwrap().raw().into(),
        volume: "1.5".parse::<Fixed8>().unwrap().raw().into(),
        timestamp_ns: 1.into(),
        side,
    };
    let mut out = Vec::new();
    let mut builder = MessageBuilder::new(&mut out, RelayDomain::MarketData, SourceType::BinanceCollector);
    builder.add_record(&record).unwrap();
    builder.finish();
    out
}

#[test]
fn header_json_and_tlv_tests() {
    let h = headers(&[("kind", "order"), ("region", "eu-west"), ("size", "42")]);
    let json = br#"{"price": 150.5, "side": "buy", "tags": ["a", "b"], "meta": {"vip": true, "note": null}}"#;
    let cases: &[(&str, &[u8], &[u8], bool)] = &[
        (r#"header.kind == "order""#, &h, b"", true),
        (r#"header.kind = "order""#, &h, b"", true),
        (r#"header.kind != "order""#, &h, b"", false),
        (r#"header.KIND == "order""#, &h, b"", true),
        ("header.kind exists", &h, b"", true),
        ("header.missing exists", &h, b"", false),
        (r#"header.region prefix "eu-""#, &h, b"", true),
        (r#"header.region in ("us-east", "eu-west")"#, &h, b"", true),
        (r#"header.region in ("us-east")"#, &h, b"", false),
        ("header.size > 40", &h, b"", true),
        ("header.size <= 41", &h, b"", false),
        ("$.price > 100", b"", json, true),
        ("$.price >= 150.5 and $.price < 151", b"", json, true),
        (r#"$.side == "buy""#, b"", json, true),
        (r#"$.side == 'sell'"#, b"", json, false),
        (r#"$.tags[1] == "b""#, b"", json, true),
        ("$.meta.vip == true", b"", json, true),
        ("$.meta.note == null", b"", json, true),
        ("$.missing exists", b"", json, false),
        ("$.price > 100", b"", b"not json", false),
        (r#"not $.side == "buy""#, b"", json, false),
        (r#"$.price > 1000 or header.kind == "order""#, &h, json, true),
        (
            r#"($.price > 1000 or $.price < 10) and header.kind == "order""#,
            &h,
            json,
            false,
        ),
        ("not (header.kind exists and header.size > 100)", &h, b"", true),
    ];
    for (text, headers, payload, expected) in cases {
        let filter = Filter::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(filter.matches(headers, payload), *expected, "{text}");
    }
    let buy = trade("2501.25", 1);
    let sell = trade("2499", 2);
    for (text, payload, expected) in [
        ("tlv.type == 1", &buy, true),
        ("tlv.type == 2", &buy, false),
        ("tlv.trade.price > 2500", &buy, true),
        ("tlv.trade.price > 2500", &sell, false),
        (
            "tlv.trade.side == 2 and tlv.trade.instrument_id == 7",
            &sell,
            true,
        ),
        ("tlv.quote.bid_price > 0", &buy, false),
        ("tlv.trade.volume == 1.5", &buy, true),
    ] {
        let filter = Filter::parse(text).unwrap();
        assert_eq!(filter.matches(&[], payload), expected, "{text}");
    }
    assert!(!Filter::parse("tlv.type == 1").unwrap().matches(&[], b"garbage"));
}

#[test]
fn malformed_filters_name_the_position() {
    let cases = [
        ("", 0, "expected a test"),
        ("header.kind", 11, "expected an operator"),
        ("header.kind ==", 14, "expected a value"),
        (r#"header.kind == "x" and"#, 22, "expected a test"),
        (r#"header.kind == "x" header.y exists"#, 19, "unexpected"),
        ("(header.kind exists", 19, "expected `)`"),
        (r#"header.kind == "open"#, 15, "unterminated string"),
        ("price > 1", 0, "is not a subject"),
        ("$ > 1", 0, "`$` alone"),
        ("$.a[x] > 1", 0, "not an index"),
        ("tlv.trade.colour == 1", 0, "has no field `colour`"),
        ("tlv.swap.price > 1", 0, "unknown TLV record `swap`"),
        ("header.kind ! 1", 12, "use `not`"),
        ("header.kind in 1", 15, "takes a list"),
        ("$.a == 1.2.3", 7, "is not a number"),
        ("header.kind == #", 15, "unexpected character"),
    ];
    for (text, position, message) in cases {
        let error = Filter::parse(text).expect_err(text);
        assert_eq!(error.position, position, "{text}: {error}");
        assert!(error.message.contains(message), "{text}: {error}");
    }
}

#[test]
fn nesting_tests_and_lists_are_bounded_and_refused_not_crashed() {
    use mycelium_broker::filter::{FILTER_DEPTH_MAX, FILTER_IN_VALUES_MAX, FILTER_TESTS_MAX};
    // Thousands of `(` (within the 4,096-byte filter limit) aborted the broker with a stack
    // overflow; now a clear error.
    let deep = format!("{}header.a == \"x\"", "(".repeat(2600));
    let error = Filter::parse(&deep).unwrap_err();
    assert!(error.to_string().contains("nested deeper than 32"), "{error}");
    assert_eq!(
        error.position, FILTER_DEPTH_MAX,
        "at the first `(` past the limit"
    );
    let nots = format!("{}header.a exists", "not ".repeat(1000));
    assert!(
        Filter::parse(&nots)
            .unwrap_err()
            .to_string()
            .contains("nested deeper")
    );
    // Up to the limits, it works.
    let at_limit = format!(
        "{}header.a == \"x\"{}",
        "(".repeat(FILTER_DEPTH_MAX),
        ")".repeat(FILTER_DEPTH_MAX)
    );
    let filter = Filter::parse(&at_limit).unwrap();
    assert!(filter.matches(&headers(&[("a", "x")]), b""));
    // A long chain of `and`s nests one level per test: bounded by the number of tests.
    let chain = |n: usize| vec!["header.a exists"; n].join(" and ");
    Filter::parse(&chain(FILTER_TESTS_MAX)).unwrap();
    let error = Filter::parse(&chain(200)).unwrap_err();
    assert!(error.to_string().contains("more than 128 tests"), "{error}");
    let list = |n: usize| {
        let values = vec!["0"; n];
        format!("header.a in ({})", values.join(","))
    };
    Filter::parse(&list(FILTER_IN_VALUES_MAX)).unwrap();
    assert!(Filter::parse(&list(FILTER_IN_VALUES_MAX + 1)).is_err());
}
