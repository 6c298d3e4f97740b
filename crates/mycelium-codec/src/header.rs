//! The 32-byte message header.

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// `magic` at offset 0 of every message.
pub const MAGIC: u32 = 0xDEAD_BEEF;
/// The only protocol version this codec speaks.
pub const VERSION: u8 = 1;
/// Size of the header in bytes.
pub const HEADER_LEN: usize = 32;
/// Offset of the checksum field; the checksum covers `0..CHECKSUM_OFFSET` and `HEADER_LEN..`.
pub const CHECKSUM_OFFSET: usize = 28;

/// The header exactly as it lies on the wire: 32 bytes, little-endian, no padding, alignment 1,
/// so it can be viewed in place over any received byte slice.
///
/// ```text
///  0       4    5    6    7    8               16              24      28      32
///  +-------+----+----+----+----+---------------+---------------+-------+-------+
///  | magic |dom |ver |src |flg |   sequence    | timestamp_ns  |payload|checksum
///  | u32   | u8 | u8 | u8 | u8 |     u64       |     u64       |  u32  |  u32  |
///  +-------+----+----+----+----+---------------+---------------+-------+-------+
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct Header {
    /// Always [`MAGIC`].
    pub magic: U32,
    /// [`crate::RelayDomain`] as a byte.
    pub relay_domain: u8,
    /// Always [`VERSION`].
    pub version: u8,
    /// [`crate::SourceType`] as a byte (unknown values are carried through).
    pub source: u8,
    /// Free for the producer; the broker carries it through.
    pub flags: u8,
    /// Monotonic per source.
    pub sequence: U64,
    /// Nanoseconds since the Unix epoch.
    pub timestamp_ns: U64,
    /// Bytes of TLV payload after the header.
    pub payload_size: U32,
    /// CRC-32 (IEEE) over bytes `0..28` followed by bytes `32..end`.
    pub checksum: U32,
}

const _: () = assert!(size_of::<Header>() == HEADER_LEN);

/// CRC-32 (IEEE, as `crc32fast` and zlib compute it) of a whole message, skipping the checksum
/// field. `message` must be at least [`HEADER_LEN`] bytes; shorter input yields the CRC of what is
/// there, which never matches a stored checksum.
pub fn compute_checksum(message: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(message.get(..CHECKSUM_OFFSET).unwrap_or(message));
    hasher.update(message.get(HEADER_LEN..).unwrap_or(&[]));
    hasher.finalize()
}
