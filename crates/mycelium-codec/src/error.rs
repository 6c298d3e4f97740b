//! The codec's one error type.

/// Everything that can be wrong with a message, as structured data.
///
/// Offsets are byte offsets from the start of the message (header included), so an error can be
/// matched against a hex dump of the exact bytes that were received.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The input ended before a field that must be there.
    #[error("unexpected end of message at offset {offset}: need {need} bytes, have {have}")]
    UnexpectedEof {
        /// Where the missing field starts.
        offset: usize,
        /// How many bytes the field needs.
        need: usize,
        /// How many bytes are left from `offset`.
        have: usize,
    },
    /// The first four bytes are not `0xDEADBEEF` (little-endian).
    #[error("bad magic 0x{found:08X} (expected 0xDEADBEEF)")]
    BadMagic {
        /// The value found at offset 0.
        found: u32,
    },
    /// The header's version byte is not one this codec speaks.
    #[error("unsupported protocol version {found} (this codec speaks version 1)")]
    UnsupportedVersion {
        /// The value found at offset 5.
        found: u8,
    },
    /// The header's relay domain byte is not a known domain.
    #[error("unknown relay domain {found}")]
    UnknownDomain {
        /// The value found at offset 4.
        found: u8,
    },
    /// A TLV type byte is not a known TLV type (used by `TlvType::try_from`).
    #[error("unknown TLV type {found}")]
    UnknownTlvType {
        /// The unknown type value.
        found: u8,
    },
    /// A source byte is not a known source type (used by `SourceType::try_from`; in a header an
    /// unknown source is carried through, not an error).
    #[error("unknown source type {found}")]
    UnknownSource {
        /// The unknown source value.
        found: u8,
    },
    /// `payload_size` in the header does not match the bytes that follow it.
    #[error("payload_size says {declared} bytes but {actual} bytes follow the header")]
    PayloadSizeMismatch {
        /// `payload_size` from the header.
        declared: u32,
        /// Bytes actually present after the header.
        actual: usize,
    },
    /// The stored checksum does not match the bytes.
    #[error("checksum mismatch: stored 0x{stored:08X}, computed 0x{computed:08X}")]
    ChecksumMismatch {
        /// The checksum field of the header.
        stored: u32,
        /// CRC-32 computed over the received bytes.
        computed: u32,
    },
    /// A TLV record uses type 0, or type 255 inside an extended record.
    #[error("invalid TLV type {tlv_type} at offset {offset}")]
    InvalidTlvType {
        /// Offset of the record.
        offset: usize,
        /// The type byte found.
        tlv_type: u8,
    },
    /// An extended TLV record (type byte 255) whose second byte is not 0.
    #[error("malformed extended TLV at offset {offset}: marker byte is {found}, expected 0")]
    BadExtendedMarker {
        /// Offset of the record.
        offset: usize,
        /// The byte found where 0 is required.
        found: u8,
    },
    /// A TLV record's value runs past the end of the payload.
    #[error("TLV type {tlv_type} at offset {offset} declares {length} bytes, past the end of the payload")]
    TlvOverrun {
        /// Offset of the record.
        offset: usize,
        /// The record's type.
        tlv_type: u8,
        /// The length the record declares.
        length: usize,
    },
    /// A TLV type that belongs neither to the header's domain nor to the system/vendor ranges.
    #[error("TLV type {tlv_type} does not belong to relay domain {domain}")]
    WrongDomain {
        /// The record's type.
        tlv_type: u8,
        /// The header's relay domain.
        domain: crate::RelayDomain,
    },
    /// A known fixed-size TLV type with a value of another size.
    #[error("TLV type {tlv_type} must be {expected} bytes, found {found}")]
    WrongSize {
        /// The record's type.
        tlv_type: u8,
        /// The size the type's layout has.
        expected: usize,
        /// The size found.
        found: usize,
    },
    /// A TLV value longer than the extended form can carry (65,535 bytes).
    #[error("TLV type {tlv_type} value of {length} bytes exceeds the maximum of {max}")]
    ValueTooLarge {
        /// The record's type.
        tlv_type: u8,
        /// The value's length.
        length: usize,
        /// The maximum a TLV value can have.
        max: usize,
    },
    /// The payload would grow past the builder's limit.
    #[error("payload of {size} bytes exceeds the limit of {max} bytes")]
    PayloadTooLarge {
        /// The payload size the operation would reach.
        size: usize,
        /// The configured limit.
        max: usize,
    },
}
