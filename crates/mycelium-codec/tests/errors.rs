//! Each validation fault is reported as the exact error, with the offsets of the bytes at fault.

use mycelium_codec::records::Trade;
use mycelium_codec::{
    CodecError, HEADER_LEN, Message, MessageBuilder, RelayDomain, SourceType, compute_checksum, validate,
    validate_domain, validate_structure, verify_checksum,
};

fn trade_message() -> Vec<u8> {
    let mut buf = Vec::new();
    let mut builder = MessageBuilder::new(&mut buf, RelayDomain::MarketData, SourceType::BinanceCollector)
        .sequence(9)
        .timestamp_ns(5);
    builder.add_record(&Trade::default_for_tests()).unwrap();
    builder.finish();
    buf
}

trait TestDefault {
    fn default_for_tests() -> Self;
}

impl TestDefault for Trade {
    fn default_for_tests() -> Self {
        Trade {
            instrument_id: 1.into(),
            price: 2.into(),
            volume: 3.into(),
            timestamp_ns: 4.into(),
            side: 2,
        }
    }
}

/// Raw message with the given payload and a correct checksum.
fn raw(domain: u8, payload: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0u8; HEADER_LEN];
    bytes[0..4].copy_from_slice(&0xDEAD_BEEFu32.to_le_bytes());
    bytes[4] = domain;
    bytes[5] = 1;
    bytes[24..28].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    bytes.extend_from_slice(payload);
    reseal(&mut bytes);
    bytes
}

fn reseal(bytes: &mut [u8]) {
    let checksum = compute_checksum(bytes);
    bytes[28..32].copy_from_slice(&checksum.to_le_bytes());
}

#[test]
fn short_input_is_unexpected_eof() {
    assert_eq!(
        validate(&[0xEF, 0xBE]).unwrap_err(),
        CodecError::UnexpectedEof {
            offset: 0,
            need: 32,
            have: 2
        }
    );
}

#[test]
fn bad_magic() {
    let mut bytes = trade_message();
    bytes[0] = 0;
    reseal(&mut bytes);
    assert_eq!(
        validate(&bytes).unwrap_err(),
        CodecError::BadMagic { found: 0xDEAD_BE00 }
    );
}

#[test]
fn unsupported_version_and_unknown_domain() {
    let mut bytes = trade_message();
    bytes[5] = 2;
    reseal(&mut bytes);
    assert_eq!(
        validate(&bytes).unwrap_err(),
        CodecError::UnsupportedVersion { found: 2 }
    );
    let bytes = raw(9, &[]);
    assert_eq!(
        validate(&bytes).unwrap_err(),
        CodecError::UnknownDomain { found: 9 }
    );
}

#[test]
fn payload_size_must_match() {
    let mut bytes = trade_message();
    bytes.push(0);
    assert_eq!(
        validate(&bytes).unwrap_err(),
        CodecError::PayloadSizeMismatch {
            declared: 35,
            actual: 36
        }
    );
}

#[test]
fn checksum_mismatch_names_both_values() {
    let mut bytes = trade_message();
    let stored = u32::from_le_bytes(bytes[28..32].try_into().unwrap());
    bytes[40] ^= 0x10;
    let computed = compute_checksum(&bytes);
    assert_eq!(
        validate(&bytes).unwrap_err(),
        CodecError::ChecksumMismatch { stored, computed }
    );
    // Structure alone does not look at the checksum.
    assert!(validate_structure(&bytes).is_ok());
    assert!(verify_checksum(&Message::new(&bytes).unwrap()).is_err());
}

#[test]
fn tlv_overrun_names_offset_type_and_length() {
    let bytes = raw(1, &[200, 10, 1, 2, 3]);
    assert_eq!(
        validate(&bytes).unwrap_err(),
        CodecError::TlvOverrun {
            offset: 32,
            tlv_type: 200,
            length: 10
        }
    );
}

#[test]
fn truncated_tlv_headers_are_eof() {
    assert_eq!(
        validate(&raw(1, &[200])).unwrap_err(),
        CodecError::UnexpectedEof {
            offset: 32,
            need: 2,
            have: 1
        }
    );
    assert_eq!(
        validate(&raw(1, &[255, 0, 200])).unwrap_err(),
        CodecError::UnexpectedEof {
            offset: 32,
            need: 5,
            have: 3
        }
    );
}

#[test]
fn extended_record_rules() {
    let ok = raw(1, &[255, 0, 200, 2, 0, 7, 8]);
    let message = validate(&ok).unwrap();
    let tlv = message.tlvs().next().unwrap().unwrap();
    assert_eq!((tlv.tlv_type, tlv.value), (200, &[7u8, 8][..]));
    assert_eq!(
        validate(&raw(1, &[255, 1, 200, 0, 0])).unwrap_err(),
        CodecError::BadExtendedMarker { offset: 32, found: 1 }
    );
    assert_eq!(
        validate(&raw(1, &[255, 0, 255, 0, 0])).unwrap_err(),
        CodecError::InvalidTlvType {
            offset: 32,
            tlv_type: 255
        }
    );
    assert_eq!(
        validate(&raw(1, &[0, 0])).unwrap_err(),
        CodecError::InvalidTlvType {
            offset: 32,
            tlv_type: 0
        }
    );
}

#[test]
fn wrong_domain_and_reserved_ranges() {
    // A Fill (execution, 44) in a market-data message.
    let bytes = raw(1, &[44, 0]);
    assert_eq!(
        validate(&bytes).unwrap_err(),
        CodecError::WrongDomain {
            tlv_type: 44,
            domain: RelayDomain::MarketData
        }
    );
    // 80-99 and 120-199 belong to no domain.
    for reserved in [80u8, 99, 120, 199] {
        assert!(matches!(
            validate(&raw(3, &[reserved, 0])),
            Err(CodecError::WrongDomain { .. })
        ));
    }
    // System and vendor types are allowed everywhere; unknown types inside the domain's range too.
    for ok in [100u8, 119, 200, 254, 6, 19] {
        assert!(validate(&raw(1, &[ok, 0])).is_ok(), "type {ok}");
    }
    assert!(validate_domain(&Message::new(&raw(2, &[1, 0])).unwrap()).is_err());
}

#[test]
fn fixed_layouts_must_have_their_size() {
    let bytes = raw(1, &[1, 3, 0, 0, 0]);
    assert_eq!(
        validate(&bytes).unwrap_err(),
        CodecError::WrongSize {
            tlv_type: 1,
            expected: 33,
            found: 3
        }
    );
}

#[test]
fn builder_refuses_bad_records_and_writes_nothing() {
    let mut buf = Vec::new();
    let mut builder = MessageBuilder::new(&mut buf, RelayDomain::Signal, SourceType::TestClient);
    let before = builder.payload_len();
    assert!(matches!(
        builder.add_record(&Trade::default_for_tests()),
        Err(CodecError::WrongDomain { .. })
    ));
    assert!(matches!(
        builder.add_tlv(0, b""),
        Err(CodecError::InvalidTlvType { tlv_type: 0, .. })
    ));
    assert!(matches!(
        builder.add_tlv(255, b""),
        Err(CodecError::InvalidTlvType { tlv_type: 255, .. })
    ));
    assert!(matches!(
        builder.add_tlv(20, &[0; 3]),
        Err(CodecError::WrongSize { expected: 19, .. })
    ));
    assert!(matches!(
        builder.add_tlv(200, &vec![0; 65_536]),
        Err(CodecError::ValueTooLarge {
            length: 65_536,
            max: 65_535,
            ..
        })
    ));
    assert_eq!(builder.payload_len(), before);
    builder.finish();
    assert_eq!(buf.len(), HEADER_LEN);
    assert!(validate(&buf).is_ok());
}

#[test]
fn builder_enforces_its_payload_limit() {
    let mut buf = Vec::new();
    let mut builder =
        MessageBuilder::new(&mut buf, RelayDomain::System, SourceType::TestClient).payload_bytes_max(100);
    builder.add_tlv(200, &[1; 98]).unwrap();
    assert_eq!(
        builder.add_tlv(201, &[]).unwrap_err(),
        CodecError::PayloadTooLarge { size: 102, max: 100 }
    );
    assert_eq!(builder.finish(), HEADER_LEN + 100);
}

#[test]
fn abandoned_builder_leaves_the_buffer_as_it_was() {
    let mut buf = trade_message();
    let len = buf.len();
    {
        let mut builder = MessageBuilder::new(&mut buf, RelayDomain::MarketData, SourceType::TestClient);
        builder.add_tlv(200, b"partial").unwrap();
    }
    assert_eq!(buf.len(), len);
}

#[test]
fn messages_back_to_back_split_cleanly() {
    let mut buf = bytes::BytesMut::new();
    for sequence in 0..3u64 {
        let mut builder = MessageBuilder::new(&mut buf, RelayDomain::MarketData, 250u8).sequence(sequence);
        builder.add_tlv(200, &sequence.to_le_bytes()).unwrap();
        builder.finish();
    }
    let mut rest = &buf[..];
    let mut seen = Vec::new();
    while !rest.is_empty() {
        let (message, tail) = Message::split_first(rest).unwrap();
        validate(message.as_bytes()).unwrap();
        assert_eq!(message.source(), 250, "unknown sources are carried through");
        assert_eq!(message.source_type(), None);
        seen.push(message.sequence());
        rest = tail;
    }
    assert_eq!(seen, [0, 1, 2]);
    assert!(matches!(
        Message::split_first(&buf[..40]),
        Err(CodecError::UnexpectedEof { .. })
    ));
}

#[test]
fn enums_convert_and_display() {
    use mycelium_codec::TlvType;
    assert_eq!(RelayDomain::try_from(3).unwrap(), RelayDomain::Execution);
    assert_eq!(
        RelayDomain::try_from(0).unwrap_err(),
        CodecError::UnknownDomain { found: 0 }
    );
    assert_eq!(RelayDomain::Signal.to_string(), "signal");
    assert_eq!(
        "execution".parse::<RelayDomain>().unwrap(),
        RelayDomain::Execution
    );
    assert_eq!(SourceType::try_from(20).unwrap(), SourceType::ExecutionEngine);
    assert_eq!(
        SourceType::try_from(21).unwrap_err(),
        CodecError::UnknownSource { found: 21 }
    );
    assert_eq!(TlvType::try_from(44).unwrap().to_string(), "Fill");
    assert_eq!(
        TlvType::try_from(46).unwrap_err(),
        CodecError::UnknownTlvType { found: 46 }
    );
    let signal_types: Vec<_> = RelayDomain::Signal.tlv_types().collect();
    assert_eq!(
        signal_types,
        [
            TlvType::SignalIdentity,
            TlvType::ArbitrageSignal,
            TlvType::DirectionalSignal,
            TlvType::LiquiditySignal,
            TlvType::VolatilitySignal
        ]
    );
    assert_eq!(TlvType::Fill.fixed_size(), Some(58));
    assert_eq!(TlvType::OrderBook.fixed_size(), None);
    assert_eq!(TlvType::Fill.domain(), RelayDomain::Execution);
}

#[test]
fn fixed_point_is_exact() {
    use mycelium_codec::Fixed8;
    assert_eq!("2500.5".parse::<Fixed8>().unwrap(), Fixed8(250_050_000_000));
    assert_eq!("-0.00000001".parse::<Fixed8>().unwrap(), Fixed8(-1));
    assert_eq!(Fixed8(250_050_000_000).to_string(), "2500.5");
    assert_eq!(Fixed8(-1).to_string(), "-0.00000001");
    assert_eq!(Fixed8(7 * 100_000_000).to_string(), "7");
    for bad in [
        "",
        "1.",
        ".5",
        "1.123456789",
        "abc",
        "99999999999999999999",
        "1e5",
    ] {
        assert!(bad.parse::<Fixed8>().is_err(), "{bad:?}");
    }
    assert_eq!(Fixed8::from_f64(1.5), Some(Fixed8(150_000_000)));
    assert_eq!(Fixed8::from_f64(f64::NAN), None);
}
