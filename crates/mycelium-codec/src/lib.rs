//! The Torq Protocol V2 message codec: the one place where TLV messages are built, viewed and
//! validated. Sans-IO: no sockets, no async, no allocation per message.
//!
//! A message is a 32-byte [`Header`] followed by `payload_size` bytes of TLV records:
//!
//! ```text
//! standard record (value <= 255 bytes)      extended record (value <= 65,535 bytes)
//! +------+--------+---------------+         +-----+---+------+-----------+---------------+
//! | type | length | value ...     |         | 255 | 0 | type | length    | value ...     |
//! | u8   | u8     | length bytes  |         | u8  |u8 | u8   | u16 (LE)  | length bytes  |
//! +------+--------+---------------+         +-----+---+------+-----------+---------------+
//! ```
//!
//! - Build with [`MessageBuilder`] into a reused `Vec<u8>` or `BytesMut`.
//! - View with [`Message`]: header accessors and [`Message::tlvs`], borrowing the bytes.
//! - Validate with [`validate`] (all levels) or the level functions in [`validate`](mod@validate).
//! - Hot TLV types have zero-copy layouts in [`records`].
//!
//! The full byte tables are in `docs/PROTOCOL.md`.

mod builder;
mod domain;
mod error;
mod fixed;
mod header;
mod message;
pub mod records;
pub mod validate;

pub use builder::{DEFAULT_PAYLOAD_BYTES_MAX, MessageBuf, MessageBuilder, now_ns};
pub use domain::{RelayDomain, SourceType, TlvType, is_vendor_type};
pub use error::CodecError;
pub use fixed::{FIXED_SCALE, Fixed8, ParseFixedError};
pub use header::{CHECKSUM_OFFSET, HEADER_LEN, Header, MAGIC, VERSION, compute_checksum};
pub use message::{EXTENDED_MARKER, EXTENDED_VALUE_MAX, Message, STANDARD_VALUE_MAX, Tlv, TlvIter};
pub use validate::{validate, validate_domain, validate_structure, verify_checksum};
