//! What a topic is configured to do. Plain data: the server maps its TOML onto these.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

macro_rules! named_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            /// The name used in configuration and stats.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)*
                    _ => Err(format!(
                        "`{s}` is not one of: {}",
                        [$($text),*].join(", ")
                    )),
                }
            }
        }
    };
}

named_enum! {
    /// How a topic picks the subscriptions that receive a message.
    Routing {
        /// Every subscription gets every message (each queue group gets one copy).
        #[default]
        Fanout = "fanout",
        /// Each message goes to exactly one member of each group; plain subscriptions form one
        /// implicit group.
        Queue = "queue",
        /// Each message goes to the first available subscription, in subscription order.
        Direct = "direct",
    }
}

named_enum! {
    /// How a queue group picks its member.
    Balance {
        /// Members in turn.
        #[default]
        RoundRobin = "round_robin",
        /// The member with the fewest bytes waiting.
        LeastLoaded = "least_loaded",
    }
}

named_enum! {
    /// What happens when a subscriber's outbound buffer is full.
    Overflow {
        /// Nothing is lost: the publisher waits until the subscriber drains, up to
        /// `block_timeout`; then the subscriber is disconnected.
        #[default]
        Block = "block",
        /// The oldest waiting deliveries are dropped and counted.
        DropOldest = "drop_oldest",
        /// The subscriber is disconnected at once.
        Disconnect = "disconnect",
    }
}

named_enum! {
    /// What the broker checks in a payload.
    PayloadCodec {
        /// Opaque bytes.
        #[default]
        Raw = "raw",
        /// Every payload must be a valid Torq Protocol V2 message (all validation levels).
        Tlv = "tlv",
    }
}

/// The configuration of one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Routing rule.
    pub routing: Routing,
    /// Group member choice (queue routing and queue groups).
    pub balance: Balance,
    /// Bytes a subscriber of this topic may have waiting before `overflow` applies.
    pub buffer_bytes: usize,
    /// Largest payload accepted.
    pub message_bytes_max: usize,
    /// Slow-subscriber policy.
    pub overflow: Overflow,
    /// How long `block` waits before disconnecting the subscriber.
    pub block_timeout: Duration,
    /// Payload validation.
    pub codec: PayloadCodec,
    /// Where messages are kept: `memory` (nothing is written) or `disk` (the segment log).
    pub storage: StorageKind,
    /// When a `disk` topic's appends are made durable, and so when PUBLISH_OK is sent.
    pub fsync: Fsync,
}

named_enum! {
    /// Where a topic's messages are kept.
    StorageKind {
        /// Not stored: routed to live subscribers only (at-most-once), as fast as it gets.
        #[default]
        Memory = "memory",
        /// Appended to the topic's segment log before PUBLISH_OK.
        Disk = "disk",
    }
}

named_enum! {
    /// When appends to a `disk` topic are synced to stable storage.
    Fsync {
        /// Group commit: one fsync every `fsync_interval` or `fsync_bytes`, whichever comes first;
        /// PUBLISH_OK waits for the fsync that covers the message.
        #[default]
        Batch = "batch",
        /// Every batch of appends is fsynced before any of it is confirmed.
        Always = "always",
        /// Written to the OS and confirmed; a machine crash (not a broker crash) can lose it.
        Never = "never",
    }
}

/// Default subscriber buffer: 8 MiB.
pub const DEFAULT_BUFFER_BYTES: usize = 8 * 1024 * 1024;
/// Default largest message: 1 MiB.
pub const DEFAULT_MESSAGE_BYTES_MAX: usize = 1024 * 1024;
/// Default `block_timeout`: 5 s.
pub const DEFAULT_BLOCK_TIMEOUT: Duration = Duration::from_secs(5);

impl Default for TopicSpec {
    fn default() -> Self {
        TopicSpec {
            routing: Routing::Fanout,
            balance: Balance::RoundRobin,
            buffer_bytes: DEFAULT_BUFFER_BYTES,
            message_bytes_max: DEFAULT_MESSAGE_BYTES_MAX,
            overflow: Overflow::Block,
            block_timeout: DEFAULT_BLOCK_TIMEOUT,
            codec: PayloadCodec::Raw,
            storage: StorageKind::Memory,
            fsync: Fsync::Batch,
        }
    }
}
