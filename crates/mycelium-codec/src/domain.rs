//! Relay domains, source types and TLV types, with the ranges that tie them together.

use std::fmt;

use crate::CodecError;

/// The domain a message belongs to; in the relay era each domain had its own relay, in Mycelium each
/// maps to a topic (`market_data`, `signals`, `execution`, `system` by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum RelayDomain {
    /// Market data: trades, quotes, order books (TLV types 1-19).
    MarketData = 1,
    /// Strategy signals (TLV types 20-39).
    Signal = 2,
    /// Orders, fills and execution reports (TLV types 40-79).
    Execution = 3,
    /// System messages: heartbeats, snapshots (TLV types 100-119).
    System = 4,
}

impl RelayDomain {
    /// Every domain, in wire order.
    pub const ALL: [RelayDomain; 4] = [
        RelayDomain::MarketData,
        RelayDomain::Signal,
        RelayDomain::Execution,
        RelayDomain::System,
    ];

    /// The TLV type range that belongs to this domain.
    pub const fn tlv_range(self) -> std::ops::RangeInclusive<u8> {
        match self {
            RelayDomain::MarketData => 1..=19,
            RelayDomain::Signal => 20..=39,
            RelayDomain::Execution => 40..=79,
            RelayDomain::System => 100..=119,
        }
    }

    /// Whether a TLV of type `tlv_type` may appear in a message of this domain: its own range, or
    /// the system (100-119) and vendor (200-254) ranges, which are allowed everywhere.
    pub const fn allows(self, tlv_type: u8) -> bool {
        let (lo, hi) = match self {
            RelayDomain::MarketData => (1, 19),
            RelayDomain::Signal => (20, 39),
            RelayDomain::Execution => (40, 79),
            RelayDomain::System => (100, 119),
        };
        (tlv_type >= lo && tlv_type <= hi)
            || (tlv_type >= 100 && tlv_type <= 119)
            || (tlv_type >= 200 && tlv_type <= 254)
    }

    /// The known TLV types of this domain.
    pub fn tlv_types(self) -> impl Iterator<Item = TlvType> {
        TlvType::ALL
            .into_iter()
            .filter(move |t| self.tlv_range().contains(&(*t as u8)))
    }

    /// The name used in configuration and logs (`market_data`, `signal`, `execution`, `system`).
    pub const fn as_str(self) -> &'static str {
        match self {
            RelayDomain::MarketData => "market_data",
            RelayDomain::Signal => "signal",
            RelayDomain::Execution => "execution",
            RelayDomain::System => "system",
        }
    }
}

impl TryFrom<u8> for RelayDomain {
    type Error = CodecError;

    fn try_from(value: u8) -> Result<Self, Self::Error> {
        match value {
            1 => Ok(RelayDomain::MarketData),
            2 => Ok(RelayDomain::Signal),
            3 => Ok(RelayDomain::Execution),
            4 => Ok(RelayDomain::System),
            found => Err(CodecError::UnknownDomain { found }),
        }
    }
}

impl fmt::Display for RelayDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RelayDomain {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RelayDomain::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| format!("unknown relay domain `{s}` (market_data, signal, execution, system)"))
    }
}

/// The kind of service that produced a message. Informational: a header may carry a value not
/// listed here, and the codec carries it through unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
#[allow(missing_docs)] // the variant names are the documentation
pub enum SourceType {
    Unknown = 0,
    BinanceCollector = 1,
    CoinbaseCollector = 2,
    KrakenCollector = 3,
    PolygonCollector = 4,
    GeminiCollector = 5,
    ArbitrageStrategy = 10,
    StateManager = 15,
    ExecutionEngine = 20,
    Dashboard = 30,
    TestClient = 99,
}

impl SourceType {
    /// Every known source type.
    pub const ALL: [SourceType; 11] = [
        SourceType::Unknown,
        SourceType::BinanceCollector,
        SourceType::CoinbaseCollector,
        SourceType::KrakenCollector,
        SourceType::PolygonCollector,
        SourceType::GeminiCollector,
        SourceType::ArbitrageStrategy,
        SourceType::StateManager,
        SourceType::ExecutionEngine,
        SourceType::Dashboard,
        SourceType::TestClient,
    ];
}

impl TryFrom<u8> for SourceType {
    type Error = CodecError;

    fn try_from(value: u8) -> Result<Self, Self::Error> {
        SourceType::ALL
            .into_iter()
            .find(|s| *s as u8 == value)
            .ok_or(CodecError::UnknownSource { found: value })
    }
}

impl fmt::Display for SourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The TLV types this codec knows by name. Other values in a domain's range are legal on the wire
/// (forward compatibility); the vendor range 200-254 is free for experiments of any size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
#[allow(missing_docs)] // the variant names are the documentation; layouts are in docs/PROTOCOL.md
pub enum TlvType {
    // Market data, 1-19.
    Trade = 1,
    Quote = 2,
    OrderBook = 3,
    ImbalanceIndicator = 4,
    MarketStatus = 5,
    OptionGreeks = 10,
    ImpliedVolatility = 11,
    // Signals, 20-39.
    SignalIdentity = 20,
    ArbitrageSignal = 21,
    DirectionalSignal = 22,
    LiquiditySignal = 23,
    VolatilitySignal = 24,
    // Execution, 40-79.
    OrderNew = 40,
    OrderCancel = 41,
    OrderModify = 42,
    OrderStatus = 43,
    Fill = 44,
    Reject = 45,
    // System, 100-119.
    Heartbeat = 100,
    Snapshot = 101,
}

impl TlvType {
    /// Every named TLV type, in numeric order.
    pub const ALL: [TlvType; 20] = [
        TlvType::Trade,
        TlvType::Quote,
        TlvType::OrderBook,
        TlvType::ImbalanceIndicator,
        TlvType::MarketStatus,
        TlvType::OptionGreeks,
        TlvType::ImpliedVolatility,
        TlvType::SignalIdentity,
        TlvType::ArbitrageSignal,
        TlvType::DirectionalSignal,
        TlvType::LiquiditySignal,
        TlvType::VolatilitySignal,
        TlvType::OrderNew,
        TlvType::OrderCancel,
        TlvType::OrderModify,
        TlvType::OrderStatus,
        TlvType::Fill,
        TlvType::Reject,
        TlvType::Heartbeat,
        TlvType::Snapshot,
    ];

    /// The domain whose range holds this type.
    pub const fn domain(self) -> RelayDomain {
        match self as u8 {
            1..=19 => RelayDomain::MarketData,
            20..=39 => RelayDomain::Signal,
            40..=79 => RelayDomain::Execution,
            _ => RelayDomain::System,
        }
    }

    /// The exact value size of a type with a fixed layout (see [`crate::records`]), `None` for a
    /// variable-size type.
    pub const fn fixed_size(self) -> Option<usize> {
        crate::records::fixed_size(self as u8)
    }
}

impl TryFrom<u8> for TlvType {
    type Error = CodecError;

    fn try_from(value: u8) -> Result<Self, Self::Error> {
        TlvType::ALL
            .into_iter()
            .find(|t| *t as u8 == value)
            .ok_or(CodecError::UnknownTlvType { found: value })
    }
}

impl fmt::Display for TlvType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Whether `tlv_type` lies in the vendor/experimental range (200-254), where any size is allowed.
pub const fn is_vendor_type(tlv_type: u8) -> bool {
    tlv_type >= 200 && tlv_type <= 254
}
