//! Decode errors and the stable wire error-code table.

use std::fmt;

/// Why bytes are not a valid frame. Sent back to the peer as an ERROR with
/// [`ErrorCode::MalformedFrame`] (or [`ErrorCode::FrameTooLarge`]) and a text naming the fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A frame declares a length above the receiver's limit; rejected before any allocation.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Declared frame length.
        len: usize,
        /// The receiver's limit.
        max: usize,
    },
    /// A frame length too small to hold the frame header.
    #[error("frame length {len} is shorter than the {min}-byte frame header")]
    FrameTooShort {
        /// Declared frame length.
        len: usize,
        /// Smallest legal length.
        min: usize,
    },
    /// An unknown frame kind byte.
    #[error("unknown frame kind 0x{kind:02X}")]
    UnknownKind {
        /// The kind byte.
        kind: u8,
    },
    /// A field runs past the end of the frame.
    #[error("frame truncated in `{field}`: need {need} bytes, have {have}")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Bytes the field needs.
        need: usize,
        /// Bytes left in the frame.
        have: usize,
    },
    /// Bytes left over after the last field of a fixed-shape frame.
    #[error("{extra} unexpected bytes after the end of a {frame} frame")]
    TrailingBytes {
        /// The frame kind.
        frame: &'static str,
        /// How many bytes were left.
        extra: usize,
    },
    /// A string field that is not UTF-8.
    #[error("field `{field}` is not valid UTF-8")]
    InvalidUtf8 {
        /// The field.
        field: &'static str,
    },
    /// A field value too long for its length prefix (when encoding).
    #[error("field `{field}` is {len} bytes, more than its maximum of {max}")]
    FieldTooLong {
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The maximum its prefix allows.
        max: usize,
    },
    /// A field holds a value the protocol does not define.
    #[error("field `{field}` has invalid value {value}")]
    InvalidValue {
        /// The field.
        field: &'static str,
        /// The value found.
        value: u64,
    },
}

macro_rules! error_codes {
    ($($(#[doc = $doc:literal])* $name:ident = $value:literal,)*) => {
        /// Stable, append-only wire error codes. A retired code stays reserved; never renumber.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u16)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $($(#[doc = $doc])* $name = $value,)*
        }

        impl ErrorCode {
            /// Every code, in numeric order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name,)*];

            /// The code for a wire value; `None` for a value this version does not know (a newer
            /// peer's code: show the number and the message text).
            pub fn from_u16(value: u16) -> Option<ErrorCode> {
                match value {
                    $($value => Some(ErrorCode::$name),)*
                    _ => None,
                }
            }

            /// Stable snake_case name, for logs, metrics and the CLI.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$name => stringify!($name),)*
                }
            }
        }
    };
}

error_codes! {
    /// A frame could not be decoded; the connection is closed.
    MalformedFrame = 1,
    /// A frame above the server's `frame_bytes_max`; the connection is closed.
    FrameTooLarge = 2,
    /// No protocol version in common (HELLO).
    UnsupportedVersion = 3,
    /// A frame other than HELLO before the handshake.
    HandshakeRequired = 4,
    /// No HELLO within `connection_timeout`.
    HandshakeTimeout = 5,
    /// The server is at `max_connections`.
    TooManyConnections = 6,
    /// The server is shutting down.
    ShuttingDown = 7,
    /// HELLO's credential is missing or does not check out; the connection is closed.
    NotAuthenticated = 8,
    /// A topic name that breaks the naming rules.
    InvalidTopic = 10,
    /// Publishing to a topic that does not exist while `auto_create_topics` is off.
    UnknownTopic = 11,
    /// A payload above the topic's `max_message_size`.
    MessageTooLarge = 12,
    /// A payload on a `codec = "tlv"` topic that fails validation; `detail` is the
    /// [`TlvFault`](crate::TlvFault) code.
    InvalidTlv = 13,
    /// A subscription pattern that breaks the pattern rules.
    InvalidPattern = 14,
    /// UNSUBSCRIBE (or ACK) for a subscription id this connection does not hold.
    UnknownSubscription = 15,
    /// The subscriber's outbound buffer stayed full (policy `block` past `block_timeout`, or
    /// `disconnect`); the subscriber is disconnected.
    SlowConsumer = 16,
    /// A PUBLISH without a topic whose payload is not a TLV message with a mapped domain.
    NoRoute = 17,
    /// The request is not allowed for this connection's principal (role, topic grants,
    /// someone else's durable subscription, a dead-letter queue); nothing was done.
    NotPermitted = 18,
    /// A header or property that breaks the rules (unknown property id, bad value).
    InvalidHeaders = 19,
    /// A subscription filter that does not parse; the message names the position.
    InvalidFilter = 20,
    /// A broker limit would be passed (topics, subscriptions per connection, durable
    /// subscriptions per topic); the message names the limit's setting. Nothing was done.
    LimitReached = 21,
    /// A frame left incomplete past `frame_timeout`, or a connection silent past `idle_timeout`
    /// that did not answer a PING; the connection is closed.
    TimedOut = 22,
    /// The broker could not store the message (disk full, I/O error); nothing was stored.
    StorageFailed = 30,
    /// A message the broker already holds under the same idempotency key (reserved).
    Duplicate = 31,
    /// An ADMIN request that is not valid JSON for any operation, or names bad arguments.
    InvalidRequest = 40,
    /// An ADMIN request names something that does not exist (DLQ, dead letter).
    NotFound = 41,
    /// An internal fault; details are in the broker's log, keyed by the request id.
    Internal = 99,
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `ERROR`: `code u16 | detail u16 | message str16`; the frame's request id names the request it
/// answers (0: the connection as a whole).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorFrame<'a> {
    /// The wire code; see [`ErrorCode`]. Kept raw so a newer peer's code is still shown.
    pub code: u16,
    /// A code-specific detail (for [`ErrorCode::InvalidTlv`], the [`crate::TlvFault`]); 0 if none.
    pub detail: u16,
    /// A human-readable explanation naming the exact fault.
    pub message: &'a str,
}

impl<'a> ErrorFrame<'a> {
    /// An error with no detail.
    pub fn new(code: ErrorCode, message: &'a str) -> Self {
        ErrorFrame {
            code: code as u16,
            detail: 0,
            message,
        }
    }

    /// The code, if this version knows it.
    pub fn error_code(&self) -> Option<ErrorCode> {
        ErrorCode::from_u16(self.code)
    }

    pub(crate) fn decode(body: &mut crate::wire::Reader<'a>) -> Result<Self, ProtocolError> {
        let frame = ErrorFrame {
            code: body.u16("code")?,
            detail: body.u16("detail")?,
            message: body.str16("message")?,
        };
        body.finish("ERROR")?;
        Ok(frame)
    }

    pub(crate) fn encode_body(&self, buf: &mut bytes::BytesMut) -> Result<(), ProtocolError> {
        use bytes::BufMut;
        buf.put_u16_le(self.code);
        buf.put_u16_le(self.detail);
        // Messages are ours; cut rather than fail on an absurdly long one.
        let mut end = self.message.len().min(u16::MAX as usize);
        while !self.message.is_char_boundary(end) {
            end -= 1;
        }
        crate::wire::put_bytes16(buf, &self.message.as_bytes()[..end], "message")
    }
}
