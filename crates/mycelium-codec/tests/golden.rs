//! Golden byte vectors: the expected bytes were computed by an independent implementation
//! (Python's `struct` and `zlib.crc32`), so these tests pin the wire format, not our own code.

use mycelium_codec::records::{ArbitrageSignal, SignalIdentity, Trade};
use mycelium_codec::{MessageBuilder, RelayDomain, SourceType, TlvType, validate};

const TS: u64 = 1_700_000_000_000_000_000;
const TS2: u64 = 1_700_000_000_123_456_789;

const TRADE_HEX: &str = "efbeadde01010300010000000000000000002a36fe9c97172300000067852dde01212a00000000000000803424383a00000080d1f0080000000000002a36fe9c971701";

const SIGNAL_HEX: &str = "efbeadde02010a00070000000000000015cd853dfe9c971781010000cf44fe3e1413150008070605040302015715cd853dfe9c97171534010003002a00000000000000004429353a00000000e70a473a00000000c2eb0b000000008074d21a0000000015bf8b67ff9c9717c803616263ff00c92c01000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9fa0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fa000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f30";

fn trade() -> Trade {
    Trade {
        instrument_id: 42.into(),
        price: 250_050_000_000.into(),
        volume: 150_000_000.into(),
        timestamp_ns: TS.into(),
        side: 1,
    }
}

fn identity() -> SignalIdentity {
    SignalIdentity {
        strategy_id: 21.into(),
        signal_id: 0x0102_0304_0506_0708.into(),
        confidence: 87,
        timestamp_ns: TS2.into(),
    }
}

fn arbitrage() -> ArbitrageSignal {
    ArbitrageSignal {
        source_venue: 1.into(),
        target_venue: 3.into(),
        instrument_id: 42.into(),
        buy_price: 250_000_000_000.into(),
        sell_price: 250_300_000_000.into(),
        max_volume: 200_000_000.into(),
        expected_profit: 450_000_000.into(),
        valid_until_ns: (TS2 + 5_000_000_000).into(),
    }
}

fn vendor_value() -> Vec<u8> {
    (0..300).map(|i| (i % 251) as u8).collect()
}

#[test]
fn trade_message_builds_to_golden_bytes() {
    let mut buf = Vec::new();
    let mut builder = MessageBuilder::new(&mut buf, RelayDomain::MarketData, SourceType::KrakenCollector)
        .sequence(1)
        .timestamp_ns(TS);
    builder.add_record(&trade()).unwrap();
    builder.finish();
    assert_eq!(hex::encode(&buf), TRADE_HEX);
}

#[test]
fn trade_message_parses_from_golden_bytes() {
    let bytes = hex::decode(TRADE_HEX).unwrap();
    let message = validate(&bytes).unwrap();
    assert_eq!(message.relay_domain().unwrap(), RelayDomain::MarketData);
    assert_eq!(message.source_type(), Some(SourceType::KrakenCollector));
    assert_eq!(message.sequence(), 1);
    assert_eq!(message.timestamp_ns(), TS);
    assert_eq!(message.header().payload_size.get(), 35);
    let tlvs: Vec<_> = message.tlvs().collect::<Result<_, _>>().unwrap();
    assert_eq!(tlvs.len(), 1);
    assert_eq!(tlvs[0].tlv_type, TlvType::Trade as u8);
    assert_eq!(tlvs[0].offset, 32);
    assert_eq!(tlvs[0].record::<Trade>().unwrap(), &trade());
}

#[test]
fn signal_message_builds_to_golden_bytes() {
    let mut buf = Vec::new();
    let mut builder = MessageBuilder::new(&mut buf, RelayDomain::Signal, SourceType::ArbitrageStrategy)
        .sequence(7)
        .timestamp_ns(TS2);
    builder.add_record(&identity()).unwrap();
    builder.add_record(&arbitrage()).unwrap();
    builder.add_tlv(200, b"abc").unwrap();
    builder.add_tlv(201, &vendor_value()).unwrap();
    assert_eq!(builder.finish(), 417);
    assert_eq!(hex::encode(&buf), SIGNAL_HEX);
}

#[test]
fn signal_message_parses_from_golden_bytes() {
    let bytes = hex::decode(SIGNAL_HEX).unwrap();
    let message = validate(&bytes).unwrap();
    assert_eq!(message.relay_domain().unwrap(), RelayDomain::Signal);
    assert_eq!(message.sequence(), 7);
    let tlvs: Vec<_> = message.tlvs().collect::<Result<_, _>>().unwrap();
    let types: Vec<u8> = tlvs.iter().map(|t| t.tlv_type).collect();
    assert_eq!(types, [20, 21, 200, 201]);
    assert_eq!(tlvs[0].record::<SignalIdentity>().unwrap(), &identity());
    assert_eq!(tlvs[1].record::<ArbitrageSignal>().unwrap(), &arbitrage());
    assert_eq!(tlvs[2].value, b"abc");
    assert_eq!(tlvs[3].value, vendor_value().as_slice());
    assert_eq!(
        message.record::<ArbitrageSignal>().unwrap().unwrap(),
        &arbitrage()
    );
}
