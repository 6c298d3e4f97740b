//! The broker core: topics, subscriptions, routing and outbound buffers. It knows nothing of
//! sockets, HTTP or JSON: the server feeds it decoded frames and drains its outbound buffers.
//!
//! - [`Broker`]: the registry of topics, subscriptions and connections; [`Broker::publish`] is the
//!   hot path, [`Broker::subscribe`] / [`Broker::unsubscribe`] rebuild routes.
//! - [`Outbound`]: one connection's pending frames, appended by any reader, drained by its writer.
//! - [`name`]: topic names and wildcard patterns.
//! - [`spec`]: what a topic is configured to do.

mod broker;
mod dedup;
pub mod delivery;
pub mod dlq;
mod durable;
mod durable_sub;
mod error;
pub mod filter;
pub mod health;
pub mod inspect;
pub mod metrics;
pub mod name;
mod outbound;
mod publish;
pub mod spec;
mod subscription;
mod topic;

pub use broker::{Broker, BrokerConfig, ConnectionInfo, Verdict};
pub use durable::{DurableConfig, MessageProps, Stored};
pub use error::{PublishError, SubscribeError};
pub use outbound::{Append, DirectWrite, Outbound};
pub use publish::{LocalMessage, Published, Publisher};
pub use subscription::{Subscription, pick};
pub use topic::{DEAD_REASONS, Topic, TopicCounters, TopicRef};
