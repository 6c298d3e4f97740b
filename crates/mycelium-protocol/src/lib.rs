//! Mycelium's native wire protocol: length-prefixed binary frames. Sans-IO: this crate turns bytes
//! into [`Frame`]s and back, and knows nothing of sockets or tasks.
//!
//! Every frame starts with the same 10-byte header:
//!
//! ```text
//!  0          4       5        6              10
//!  +----------+-------+--------+--------------+---------------------- - -
//!  | length   | kind  | flags  | request_id   | body (length - 6 bytes)
//!  | u32 LE   | u8    | u8     | u32 LE       |
//!  +----------+-------+--------+--------------+---------------------- - -
//!  length counts every byte after itself.
//! ```
//!
//! Decoding borrows: a decoded [`Frame`] points into the read buffer, so routing a PUBLISH copies
//! nothing until the payload lands in a subscriber's outbound buffer. The byte layout of each body
//! is on its type and in `docs/PROTOCOL.md`.

mod ack;
pub mod admin;
mod deliver;
mod error;
mod frame;
mod handshake;
mod headers;
mod options;
mod publish;
mod stats;
mod subscribe;
mod tlv_fault;
pub mod units;
mod wire;

pub use ack::{Ack, Nack, Term};
pub use deliver::{DELIVER_HAS_HEADERS, DELIVER_HAS_META, Deliver};
pub use error::{ErrorCode, ErrorFrame, ProtocolError};
pub use frame::{
    DEFAULT_FRAME_BYTES_MAX, Decoded, FRAME_HEADER_LEN, Frame, Frames, Kind, LENGTH_LEN, begin, decode,
    encode, end, frame_len, frames,
};
pub use handshake::{Hello, PROTOCOL_VERSION, PROTOCOL_VERSION_MIN, Welcome};
pub use headers::{HeaderIter, PropId, Props, encode_headers, validate_headers};
pub use options::{DeliveryMeta, StartPosition, SubscribeOptions};
pub use publish::{
    BatchIter, BatchWriter, PUBLISH_CONFIRM, PUBLISH_HAS_HEADERS, PUBLISH_HAS_PROPS, Publish, PublishBatch,
    PublishOk,
};
pub use stats::{
    ConnectionStats, Counter, Export, StatsSnapshot, SubscriptionStats, TOPIC_COUNTERS, TopicStats,
};
pub use subscribe::{SUBSCRIBE_HAS_GROUP, SUBSCRIBE_HAS_OPTIONS, Subscribe, SubscriptionRef};
pub use tlv_fault::TlvFault;
