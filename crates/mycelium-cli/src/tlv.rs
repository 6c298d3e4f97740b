//! `--tlv` message building for `mycelium pub`, and readable TLV decoding for `mycelium sub`.

use std::collections::HashMap;
use std::fmt::Write;

use anyhow::{Context, anyhow, bail};
use mycelium_codec::records::{ArbitrageSignal, Fill, OrderNew, Quote, Side, SignalIdentity, Trade};
use mycelium_codec::{Fixed8, Message, MessageBuilder, RelayDomain, SourceType, TlvType, now_ns};

/// Kinds `--tlv` builds.
pub const KINDS: &str = "trade, quote, arbitrage, order, fill";

struct Fields(HashMap<String, String>);

impl Fields {
    fn parse(spec: &str) -> anyhow::Result<Fields> {
        let mut map = HashMap::new();
        for pair in spec.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| anyhow!("`{pair}` is not key=value"))?;
            map.insert(k.trim().to_owned(), v.trim().to_owned());
        }
        Ok(Fields(map))
    }

    fn take<T: std::str::FromStr>(&mut self, key: &str, default: T) -> anyhow::Result<T>
    where
        T::Err: std::fmt::Display,
    {
        match self.0.remove(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|e| anyhow!("field `{key}`: `{v}`: {e}")),
        }
    }

    fn fixed(&mut self, key: &str, default: &str) -> anyhow::Result<i64> {
        let text = self.0.remove(key).unwrap_or_else(|| default.to_owned());
        Ok(text
            .parse::<Fixed8>()
            .with_context(|| format!("field `{key}`"))?
            .raw())
    }

    fn side(&mut self) -> anyhow::Result<u8> {
        match self.0.remove("side").as_deref() {
            None | Some("buy") => Ok(Side::Buy as u8),
            Some("sell") => Ok(Side::Sell as u8),
            Some(other) => bail!("field `side`: `{other}` is not buy or sell"),
        }
    }

    fn finish(self) -> anyhow::Result<()> {
        match self.0.keys().next() {
            Some(key) => bail!("unknown field `{key}`"),
            None => Ok(()),
        }
    }
}

/// Builds a TLV message from `kind[:key=value,...]`, e.g. `trade:price=2500.5,volume=1.5,side=sell`.
///
/// # Errors
/// Unknown kind or field, a value that does not parse.
pub fn build(spec: &str, sequence: u64) -> anyhow::Result<Vec<u8>> {
    let (kind, rest) = spec.split_once(':').unwrap_or((spec, ""));
    let mut f = Fields::parse(rest)?;
    let ts = now_ns();
    let mut buf = Vec::with_capacity(128);
    let (domain, source) = match kind {
        "trade" | "quote" => (RelayDomain::MarketData, SourceType::TestClient),
        "arbitrage" => (RelayDomain::Signal, SourceType::ArbitrageStrategy),
        "order" | "fill" => (RelayDomain::Execution, SourceType::ExecutionEngine),
        _ => bail!("unknown --tlv kind `{kind}` (one of: {KINDS})"),
    };
    let mut builder = MessageBuilder::new(&mut buf, domain, source)
        .sequence(sequence)
        .timestamp_ns(ts);
    let instrument: u64 = f.take("instrument", 42)?;
    match kind {
        "trade" => builder.add_record(&Trade {
            instrument_id: instrument.into(),
            price: f.fixed("price", "2500.5")?.into(),
            volume: f.fixed("volume", "1")?.into(),
            timestamp_ns: ts.into(),
            side: f.side()?,
        })?,
        "quote" => builder.add_record(&Quote {
            instrument_id: instrument.into(),
            bid_price: f.fixed("bid", "2500")?.into(),
            bid_size: f.fixed("bid_size", "1")?.into(),
            ask_price: f.fixed("ask", "2501")?.into(),
            ask_size: f.fixed("ask_size", "1")?.into(),
            timestamp_ns: ts.into(),
        })?,
        "arbitrage" => {
            builder.add_record(&SignalIdentity {
                strategy_id: f.take::<u16>("strategy", 1)?.into(),
                signal_id: f.take::<u64>("signal", sequence)?.into(),
                confidence: f.take("confidence", 90)?,
                timestamp_ns: ts.into(),
            })?;
            builder.add_record(&ArbitrageSignal {
                source_venue: f.take::<u16>("from", 1)?.into(),
                target_venue: f.take::<u16>("to", 2)?.into(),
                instrument_id: instrument.into(),
                buy_price: f.fixed("buy", "2500")?.into(),
                sell_price: f.fixed("sell", "2503")?.into(),
                max_volume: f.fixed("volume", "1")?.into(),
                expected_profit: f.fixed("profit", "2.5")?.into(),
                valid_until_ns: (ts + 5_000_000_000).into(),
            })?;
        }
        "order" => builder.add_record(&OrderNew {
            order_id: f.take::<u64>("order", sequence)?.into(),
            instrument_id: instrument.into(),
            price: f.fixed("price", "2500")?.into(),
            quantity: f.fixed("quantity", "1")?.into(),
            side: f.side()?,
            order_type: f.take("type", 1)?,
            time_in_force: f.take("tif", 1)?,
            strategy_id: f.take::<u16>("strategy", 1)?.into(),
            timestamp_ns: ts.into(),
        })?,
        _ => builder.add_record(&Fill {
            order_id: f.take::<u64>("order", sequence)?.into(),
            fill_id: f.take::<u64>("fill", sequence)?.into(),
            instrument_id: instrument.into(),
            price: f.fixed("price", "2500")?.into(),
            quantity: f.fixed("quantity", "1")?.into(),
            fee: f.fixed("fee", "0.25")?.into(),
            side: f.side()?,
            liquidity: f.take("liquidity", 2)?,
            timestamp_ns: ts.into(),
        })?,
    }
    f.finish()?;
    builder.finish();
    Ok(buf)
}

fn side(byte: u8) -> &'static str {
    match Side::from_byte(byte) {
        Side::Buy => "buy",
        Side::Sell => "sell",
        Side::Unknown => "unknown",
    }
}

/// A readable rendering of a TLV message, or why it is not one.
pub fn describe(payload: &[u8]) -> String {
    let message = match mycelium_codec::validate(payload) {
        Ok(m) => m,
        Err(e) => return format!("not a valid TLV message: {e}"),
    };
    let mut out = header_line(&message);
    for tlv in message.tlvs().map_while(Result::ok) {
        let name = TlvType::try_from(tlv.tlv_type)
            .map_or_else(|_| format!("type {}", tlv.tlv_type), |t| t.to_string());
        let _ = write!(out, "\n  {name}: ");
        let fx = |v: zerocopy::little_endian::I64| Fixed8(v.get());
        let text = match tlv.tlv_type {
            1 => tlv.record::<Trade>().map(|t| {
                format!(
                    "instrument={} price={} volume={} side={}",
                    t.instrument_id,
                    fx(t.price),
                    fx(t.volume),
                    side(t.side)
                )
            }),
            2 => tlv.record::<Quote>().map(|q| {
                format!(
                    "instrument={} bid={}x{} ask={}x{}",
                    q.instrument_id,
                    fx(q.bid_price),
                    fx(q.bid_size),
                    fx(q.ask_price),
                    fx(q.ask_size)
                )
            }),
            20 => tlv.record::<SignalIdentity>().map(|s| {
                format!(
                    "strategy={} signal={} confidence={}",
                    s.strategy_id, s.signal_id, s.confidence
                )
            }),
            21 => tlv.record::<ArbitrageSignal>().map(|a| {
                format!(
                    "instrument={} venues={}->{} buy={} sell={} volume={} profit={}",
                    a.instrument_id,
                    a.source_venue,
                    a.target_venue,
                    fx(a.buy_price),
                    fx(a.sell_price),
                    fx(a.max_volume),
                    fx(a.expected_profit)
                )
            }),
            40 => tlv.record::<OrderNew>().map(|o| {
                format!(
                    "order={} instrument={} {} {} @ {}",
                    o.order_id,
                    o.instrument_id,
                    side(o.side),
                    fx(o.quantity),
                    fx(o.price)
                )
            }),
            44 => tlv.record::<Fill>().map(|o| {
                format!(
                    "order={} fill={} instrument={} {} {} @ {} fee={}",
                    o.order_id,
                    o.fill_id,
                    o.instrument_id,
                    side(o.side),
                    fx(o.quantity),
                    fx(o.price),
                    fx(o.fee)
                )
            }),
            _ => Ok(format!("{} bytes: {}", tlv.value.len(), hex(tlv.value))),
        };
        out.push_str(&text.unwrap_or_else(|e| e.to_string()));
    }
    out
}

fn header_line(message: &Message<'_>) -> String {
    let source = message
        .source_type()
        .map_or_else(|| message.source().to_string(), |s| s.to_string());
    let domain = message
        .relay_domain()
        .map_or_else(|_| "?".to_owned(), |d| d.to_string());
    format!(
        "{domain} from {source} seq={} ts={}",
        message.sequence(),
        message.timestamp_ns()
    )
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
