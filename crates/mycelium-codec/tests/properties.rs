//! Property tests: round trips, robustness against arbitrary bytes, and bit-flip detection.

use mycelium_codec::records::{
    ArbitrageSignal, Fill, OrderCancel, OrderNew, Quote, Record, SignalIdentity, Trade,
};
use mycelium_codec::{
    CodecError, HEADER_LEN, Message, MessageBuilder, RelayDomain, validate, validate_structure,
};
use proptest::prelude::*;

/// A record to put in a message: (type, value bytes).
#[derive(Debug, Clone)]
struct Item {
    tlv_type: u8,
    value: Vec<u8>,
}

fn typed<R: Record>() -> impl Strategy<Value = Item> {
    proptest::collection::vec(any::<u8>(), R::SIZE).prop_map(|bytes| {
        // Any bytes are a valid record of a fixed layout; read through the type to be sure.
        let record = R::read_from_bytes(&bytes).expect("size matches");
        Item {
            tlv_type: R::TLV_TYPE as u8,
            value: zerocopy::IntoBytes::as_bytes(&record).to_vec(),
        }
    })
}

fn vendor(max_len: usize) -> impl Strategy<Value = Item> {
    (200u8..=254, proptest::collection::vec(any::<u8>(), 0..=max_len))
        .prop_map(|(tlv_type, value)| Item { tlv_type, value })
}

fn items_for(domain: RelayDomain) -> BoxedStrategy<Vec<Item>> {
    let own: BoxedStrategy<Item> = match domain {
        RelayDomain::MarketData => prop_oneof![typed::<Trade>(), typed::<Quote>()].boxed(),
        RelayDomain::Signal => prop_oneof![typed::<SignalIdentity>(), typed::<ArbitrageSignal>()].boxed(),
        RelayDomain::Execution => {
            prop_oneof![typed::<OrderNew>(), typed::<OrderCancel>(), typed::<Fill>()].boxed()
        }
        RelayDomain::System => vendor(16).boxed(),
    };
    // Mostly small vendor values, now and then one that needs the extended form, up to 65,535.
    let vendor_any = prop_oneof![4 => vendor(300), 1 => vendor(65_535)];
    proptest::collection::vec(prop_oneof![own, vendor_any], 0..6).boxed()
}

fn message_parts() -> impl Strategy<Value = (RelayDomain, u8, u8, u64, u64, Vec<Item>)> {
    proptest::sample::select(RelayDomain::ALL.to_vec()).prop_flat_map(|domain| {
        (
            Just(domain),
            any::<u8>(),
            any::<u8>(),
            any::<u64>(),
            any::<u64>(),
            items_for(domain),
        )
    })
}

fn build(domain: RelayDomain, source: u8, flags: u8, sequence: u64, ts: u64, items: &[Item]) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut builder = MessageBuilder::new(&mut buf, domain, source)
        .flags(flags)
        .sequence(sequence)
        .timestamp_ns(ts);
    for item in items {
        builder.add_tlv(item.tlv_type, &item.value).expect("valid item");
    }
    builder.finish();
    buf
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn parse_of_build_is_identity((domain, source, flags, sequence, ts, items) in message_parts()) {
        let bytes = build(domain, source, flags, sequence, ts, &items);
        let message = validate(&bytes).expect("a built message validates");
        prop_assert_eq!(message.relay_domain().unwrap(), domain);
        prop_assert_eq!(message.source(), source);
        prop_assert_eq!(message.flags(), flags);
        prop_assert_eq!(message.sequence(), sequence);
        prop_assert_eq!(message.timestamp_ns(), ts);
        let parsed: Vec<(u8, Vec<u8>)> =
            message.tlvs().map(|t| t.map(|t| (t.tlv_type, t.value.to_vec()))).collect::<Result<_, _>>().unwrap();
        let expected: Vec<(u8, Vec<u8>)> = items.iter().map(|i| (i.tlv_type, i.value.clone())).collect();
        prop_assert_eq!(parsed, expected);
    }

    #[test]
    fn typed_records_round_trip(record in typed::<Fill>()) {
        let bytes = build(RelayDomain::Execution, 20, 0, 1, 2, std::slice::from_ref(&record));
        let message = validate(&bytes).unwrap();
        let fill = message.record::<Fill>().unwrap().unwrap();
        prop_assert_eq!(zerocopy::IntoBytes::as_bytes(fill), record.value.as_slice());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = validate(&bytes);
        let _ = validate_structure(&bytes);
        if let Ok(message) = Message::new(&bytes) {
            for tlv in message.tlvs().flatten() {
                prop_assert!(tlv.offset + tlv.value.len() <= bytes.len());
            }
        }
        let _ = Message::split_first(&bytes);
    }

    #[test]
    fn arbitrary_payload_behind_a_valid_header_never_panics(
        domain in 1u8..=4,
        payload in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        // A header that passes the first checks, so the walk really runs over the random payload.
        let mut bytes = vec![0u8; HEADER_LEN];
        bytes[0..4].copy_from_slice(&0xDEAD_BEEFu32.to_le_bytes());
        bytes[4] = domain;
        bytes[5] = 1;
        bytes[24..28].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&payload);
        let checksum = mycelium_codec::compute_checksum(&bytes);
        bytes[28..32].copy_from_slice(&checksum.to_le_bytes());
        match validate(&bytes) {
            Ok(message) => prop_assert_eq!(message.tlvs().filter(Result::is_err).count(), 0),
            Err(CodecError::ChecksumMismatch { .. }) => prop_assert!(false, "checksum was sealed"),
            Err(_) => {}
        }
    }

    #[test]
    fn any_single_bit_flip_is_caught(
        (domain, source, flags, sequence, ts, items) in message_parts(),
        bit in any::<prop::sample::Index>(),
    ) {
        let mut bytes = build(domain, source, flags, sequence, ts, &items);
        let bit = bit.index(bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(validate(&bytes).is_err(), "flip of bit {} went unnoticed", bit);
    }
}
