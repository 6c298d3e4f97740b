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
    /// The delivery guarantee (`at_least_once` and `exactly_once` need `storage = "disk"`).
    pub delivery: Delivery,
    /// Whether message priorities (0-9) reorder delivery within a durable subscription.
    pub priority: bool,
    /// Time to live of messages that carry none.
    pub ttl: Option<Duration>,
    /// What happens to a message whose TTL passed before it was acknowledged.
    pub on_expired: OnExpired,
    /// How long an idempotency key is remembered.
    pub dedup_window: Duration,
    /// Whether messages out of attempts (or given up with TERM) go to `{topic}.dlq`; when off
    /// they are dropped and counted.
    pub dead_letter: bool,
    /// When stored messages are deleted.
    pub retention: Retention,
    /// Keep at most this many messages (`None`: the `[storage]` default).
    pub retention_messages: Option<u64>,
    /// Keep at most this many bytes.
    pub retention_bytes: Option<u64>,
    /// Delete messages older than this.
    pub retention_age: Option<Duration>,
    /// Stored topics: what happens to a message a durable subscription's filter refuses.
    pub unmatched: Unmatched,
}

named_enum! {
    /// What happens to a message a durable subscription's filter refuses.
    Unmatched {
        /// Skipped (counted as filtered).
        #[default]
        Skip = "skip",
        /// Moved to `{topic}.dlq` with reason `unmatched`.
        DeadLetter = "dead_letter",
    }
}

named_enum! {
    /// The delivery guarantee of a topic.
    Delivery {
        /// Routed to the subscribers connected now; nothing is stored or acknowledged.
        #[default]
        AtMostOnce = "at_most_once",
        /// Stored before it is confirmed; durable subscriptions acknowledge, and what is not
        /// acknowledged is redelivered.
        AtLeastOnce = "at_least_once",
        /// As `at_least_once`, plus: every publish carries an idempotency key (duplicates within
        /// the dedup window are stored once), and an ACK sent with a request id is confirmed only
        /// once it is durable, so a confirmed ack is never redelivered, even after a crash.
        ExactlyOnce = "exactly_once",
    }
}

named_enum! {
    /// What happens to an expired message.
    OnExpired {
        /// Counted and dropped.
        #[default]
        Drop = "drop",
        /// Counted and moved to `{topic}.dlq` with reason `expired`.
        DeadLetter = "dead_letter",
    }
}

named_enum! {
    /// When a stored topic's messages are deleted.
    Retention {
        /// By the retention limits (count, bytes, age) only.
        #[default]
        Limits = "limits",
        /// Also once every durable subscription has acknowledged them (a work queue).
        WorkQueue = "work_queue",
    }
}

/// Default dedup window: 2 minutes.
pub const DEFAULT_DEDUP_WINDOW: Duration = Duration::from_secs(120);

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
            delivery: Delivery::AtMostOnce,
            priority: false,
            ttl: None,
            on_expired: OnExpired::Drop,
            dedup_window: DEFAULT_DEDUP_WINDOW,
            dead_letter: true,
            retention: Retention::Limits,
            retention_messages: None,
            retention_bytes: None,
            retention_age: None,
            unmatched: Unmatched::Skip,
        }
    }
}
