//! Broker errors, each mapped to its wire code.

use mycelium_codec::CodecError;
use mycelium_protocol::{ErrorCode, TlvFault};

use crate::routing::name::NameError;

/// Why a publish was refused. Nothing was delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The topic name breaks the naming rules.
    #[error(transparent)]
    InvalidTopic(#[from] NameError),
    /// The topic does not exist and `auto_create_topics` is off.
    #[error("unknown topic `{0}` (auto_create_topics is off)")]
    UnknownTopic(String),
    /// The payload is larger than the topic allows.
    #[error("message of {size} bytes exceeds topic `{topic}`'s max_message_size of {max} bytes")]
    MessageTooLarge {
        /// The topic.
        topic: String,
        /// Payload size.
        size: usize,
        /// The topic's limit.
        max: usize,
    },
    /// The payload fails TLV validation on a `codec = "tlv"` topic.
    #[error("invalid TLV message for topic `{topic}`: {error}")]
    InvalidTlv {
        /// The topic.
        topic: String,
        /// The exact fault.
        error: CodecError,
    },
    /// No topic given and the payload's relay domain maps to none.
    #[error("no topic given and {0}")]
    NoRoute(String),
    /// A message property this topic cannot honour.
    #[error("{0}")]
    Unsupported(String),
    /// A durable topic whose storage cannot take messages.
    #[error("storage unavailable: {0}")]
    StorageUnavailable(String),
    /// The principal may not publish there.
    #[error(transparent)]
    Denied(#[from] crate::routing::access::Denied),
    /// A limit of the broker's (topics) would be passed.
    #[error("limit reached: {0}")]
    Limit(String),
}

impl PublishError {
    /// The wire error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            PublishError::InvalidTopic(_) => ErrorCode::InvalidTopic,
            PublishError::UnknownTopic(_) => ErrorCode::UnknownTopic,
            PublishError::MessageTooLarge { .. } => ErrorCode::MessageTooLarge,
            PublishError::InvalidTlv { .. } => ErrorCode::InvalidTlv,
            PublishError::NoRoute(_) => ErrorCode::NoRoute,
            PublishError::Unsupported(_) => ErrorCode::InvalidHeaders,
            PublishError::StorageUnavailable(_) => ErrorCode::StorageFailed,
            PublishError::Denied(_) => ErrorCode::NotPermitted,
            PublishError::Limit(_) => ErrorCode::LimitReached,
        }
    }

    /// The wire detail code ([`TlvFault`] for TLV faults, 0 otherwise).
    pub fn detail(&self) -> u16 {
        match self {
            PublishError::InvalidTlv { error, .. } => TlvFault::from(error) as u16,
            _ => 0,
        }
    }
}

/// Why a subscription was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubscribeError {
    /// The pattern breaks the pattern rules.
    #[error(transparent)]
    InvalidPattern(#[from] NameError),
    /// The group name is not a single valid token.
    #[error("invalid queue group `{0}`: use 1-255 letters, digits, `_` or `-`")]
    InvalidGroup(String),
    /// Options this broker does not support.
    #[error("{0}")]
    Unsupported(String),
    /// The filter does not parse.
    #[error(transparent)]
    InvalidFilter(#[from] crate::routing::filter::FilterError),
    /// The connection is closing.
    #[error("connection is closing")]
    Closing,
    /// The principal may not subscribe there (or use that durable subscription).
    #[error(transparent)]
    Denied(#[from] crate::routing::access::Denied),
    /// A limit of the broker's (subscriptions per connection, durable subscriptions per topic)
    /// would be passed.
    #[error("limit reached: {0}")]
    Limit(String),
}

impl SubscribeError {
    /// The wire error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            SubscribeError::InvalidPattern(_) | SubscribeError::InvalidGroup(_) => ErrorCode::InvalidPattern,
            SubscribeError::Unsupported(_) => ErrorCode::InvalidHeaders,
            SubscribeError::InvalidFilter(_) => ErrorCode::InvalidFilter,
            SubscribeError::Closing => ErrorCode::ShuttingDown,
            SubscribeError::Denied(_) => ErrorCode::NotPermitted,
            SubscribeError::Limit(_) => ErrorCode::LimitReached,
        }
    }
}
