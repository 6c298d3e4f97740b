//! Fixed-size typed records for the hot TLV types.
//!
//! Each struct is the value of one TLV record exactly as it lies on the wire: little-endian fields,
//! no padding, alignment 1, so a received value is read in place with [`Record::from_value`] and a
//! record is written with [`IntoBytes::as_bytes`]. Prices, volumes and quantities are [`Fixed8`]
//! raw values (`i64`, 8 decimal places). The byte tables are in `docs/PROTOCOL.md`.
//!
//! [`Fixed8`]: crate::Fixed8

use zerocopy::little_endian::{I64, U16, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::{CodecError, TlvType};

/// A TLV value with a fixed layout.
pub trait Record: FromBytes + IntoBytes + KnownLayout + Immutable + Unaligned + Copy {
    /// The TLV type this record travels as.
    const TLV_TYPE: TlvType;
    /// The value size in bytes; a TLV of this type with another size is invalid.
    const SIZE: usize = size_of::<Self>();

    /// Views `value` (a TLV value slice) as this record, in place.
    ///
    /// # Errors
    /// [`CodecError::WrongSize`] when `value` is not exactly [`Record::SIZE`] bytes.
    fn from_value(value: &[u8]) -> Result<&Self, CodecError> {
        Self::ref_from_bytes(value).map_err(|_| CodecError::WrongSize {
            tlv_type: Self::TLV_TYPE as u8,
            expected: Self::SIZE,
            found: value.len(),
        })
    }
}

/// Side of a trade, order or fill (the `side` byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Side {
    /// Not known (e.g. a venue that does not report the aggressor).
    Unknown = 0,
    /// Buy / bid.
    Buy = 1,
    /// Sell / ask.
    Sell = 2,
}

impl Side {
    /// The side for a wire byte; values other than 1 and 2 read as `Unknown`.
    pub const fn from_byte(byte: u8) -> Side {
        match byte {
            1 => Side::Buy,
            2 => Side::Sell,
            _ => Side::Unknown,
        }
    }
}

/// Trade (type 1), 33 bytes: one execution on a venue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
#[allow(missing_docs)]
pub struct Trade {
    pub instrument_id: U64,
    pub price: I64,
    pub volume: I64,
    pub timestamp_ns: U64,
    /// [`Side`] as a byte.
    pub side: u8,
}

/// Quote (type 2), 48 bytes: top of book.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
#[allow(missing_docs)]
pub struct Quote {
    pub instrument_id: U64,
    pub bid_price: I64,
    pub bid_size: I64,
    pub ask_price: I64,
    pub ask_size: I64,
    pub timestamp_ns: U64,
}

/// SignalIdentity (type 20), 19 bytes: which strategy emitted which signal, how sure it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
#[allow(missing_docs)]
pub struct SignalIdentity {
    pub strategy_id: U16,
    pub signal_id: U64,
    /// 0-100.
    pub confidence: u8,
    pub timestamp_ns: U64,
}

/// ArbitrageSignal (type 21), 52 bytes: buy on one venue, sell on another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
#[allow(missing_docs)]
pub struct ArbitrageSignal {
    pub source_venue: U16,
    pub target_venue: U16,
    pub instrument_id: U64,
    pub buy_price: I64,
    pub sell_price: I64,
    pub max_volume: I64,
    /// Expected profit in quote currency, net of estimated costs.
    pub expected_profit: I64,
    /// The signal is stale after this time (ns since the Unix epoch).
    pub valid_until_ns: U64,
}

/// OrderNew (type 40), 45 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
#[allow(missing_docs)]
pub struct OrderNew {
    pub order_id: U64,
    pub instrument_id: U64,
    /// Limit price; ignored for market orders.
    pub price: I64,
    pub quantity: I64,
    /// [`Side`] as a byte.
    pub side: u8,
    /// 1 limit, 2 market.
    pub order_type: u8,
    /// 1 GTC, 2 IOC, 3 FOK.
    pub time_in_force: u8,
    pub strategy_id: U16,
    pub timestamp_ns: U64,
}

/// OrderCancel (type 41), 25 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
#[allow(missing_docs)]
pub struct OrderCancel {
    pub order_id: U64,
    pub instrument_id: U64,
    /// 0 unspecified, 1 user, 2 risk, 3 expired.
    pub reason: u8,
    pub timestamp_ns: U64,
}

/// Fill (type 44), 58 bytes: an execution of one of our orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
#[allow(missing_docs)]
pub struct Fill {
    pub order_id: U64,
    pub fill_id: U64,
    pub instrument_id: U64,
    pub price: I64,
    pub quantity: I64,
    /// Fee in quote currency (negative for a rebate).
    pub fee: I64,
    /// [`Side`] as a byte.
    pub side: u8,
    /// 1 maker, 2 taker.
    pub liquidity: u8,
    pub timestamp_ns: U64,
}

macro_rules! records {
    ($($ty:ident => $tlv:ident, $size:literal;)*) => {
        $(
            impl Record for $ty {
                const TLV_TYPE: TlvType = TlvType::$tlv;
            }
            const _: () = assert!(size_of::<$ty>() == $size);
        )*

        /// The exact value size of a TLV type with a fixed layout, `None` for any other type.
        pub const fn fixed_size(tlv_type: u8) -> Option<usize> {
            $(
                if tlv_type == TlvType::$tlv as u8 {
                    return Some($size);
                }
            )*
            None
        }
    };
}

records! {
    Trade => Trade, 33;
    Quote => Quote, 48;
    SignalIdentity => SignalIdentity, 19;
    ArbitrageSignal => ArbitrageSignal, 52;
    OrderNew => OrderNew, 45;
    OrderCancel => OrderCancel, 25;
    Fill => Fill, 58;
}
