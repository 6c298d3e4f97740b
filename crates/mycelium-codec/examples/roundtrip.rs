//! Builds a Trade message, prints it as hex, and parses it back.
//!
//! `cargo run -p mycelium-codec --example roundtrip`

use mycelium_codec::records::{Side, Trade};
use mycelium_codec::{Fixed8, MessageBuilder, RelayDomain, SourceType, TlvType, validate};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut buf = Vec::with_capacity(128);
    let mut builder =
        MessageBuilder::new(&mut buf, RelayDomain::MarketData, SourceType::PolygonCollector).sequence(1);
    let trade = Trade {
        instrument_id: 42.into(),
        price: "2500.50".parse::<Fixed8>()?.raw().into(),
        volume: "1.5".parse::<Fixed8>()?.raw().into(),
        timestamp_ns: mycelium_codec::now_ns().into(),
        side: Side::Buy as u8,
    };
    builder.add_record(&trade)?;
    let len = builder.finish();

    let hex: String = buf.iter().map(|b| format!("{b:02x}")).collect();
    println!("built {len} bytes: {hex}");

    let message = validate(&buf)?;
    println!(
        "domain={} source={} sequence={} timestamp_ns={} payload={} bytes",
        message.relay_domain()?,
        message
            .source_type()
            .map_or_else(|| message.source().to_string(), |s| s.to_string()),
        message.sequence(),
        message.timestamp_ns(),
        message.payload().len(),
    );
    for tlv in message.tlvs() {
        let tlv = tlv?;
        let name =
            TlvType::try_from(tlv.tlv_type).map_or_else(|_| tlv.tlv_type.to_string(), |t| t.to_string());
        println!(
            "  TLV {name} ({} bytes) at offset {}",
            tlv.value.len(),
            tlv.offset
        );
        if let Ok(trade) = tlv.record::<Trade>() {
            println!(
                "    instrument={} price={} volume={} side={:?}",
                trade.instrument_id,
                Fixed8(trade.price.get()),
                Fixed8(trade.volume.get()),
                Side::from_byte(trade.side)
            );
        }
    }
    Ok(())
}
