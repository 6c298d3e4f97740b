//! The broker core: topics, subscriptions, routing and outbound buffers. It knows nothing of
//! sockets or HTTP: the server feeds it decoded frames and drains its outbound buffers.
//!
//! Its modules are layers; each uses only the layers listed before it (a test in
//! `mycelium-test-support` fails when a reference points the other way):
//!
//! 1. [`routing`]: names, specs, filters, topics, subscriptions, routes, outbound buffers: the
//!    model the hot path works on.
//! 2. [`store`]: the storage writer of stored topics: its queue, group commit, confirms, dedup.
//!    It hands committed groups to the broker through [`store`]'s `StoreEvents`, never routing
//!    or waiting for a subscriber itself.
//! 3. [`dlq`]: the dead-letter record (`x-dlq-*` headers), its views and removal marks.
//! 4. [`consumer`]: durable subscriptions: the pure [`delivery`] state machine and the
//!    dispatcher that drives it; what it needs of the broker comes through `DispatchHost`.
//! 5. `broker`: the [`Broker`] facade that owns the registries and ties the layers together:
//!    the publish path, durable subscribe and acknowledge, DLQ operations, [`inspect`],
//!    [`health`].

mod broker;
pub mod consumer;
pub mod dlq;
pub mod routing;
pub mod store;

pub use broker::{
    Action, Adjustable, AuditLog, Broker, BrokerConfig, ConnectionInfo, Control, DurableRequest,
    HEADERS_BYTES_MAX, Kept, Limits, LocalMessage, Published, Publisher, ReloadFailure, ReloadFuture, health,
    inspect,
};
pub use consumer::Verdict;
pub use consumer::state as delivery;
pub use routing::access::{Denied, DenyReason, Door, Principal, Role};
pub use routing::outbound::{Append, DirectWrite, Outbound};
pub use routing::subscription::{Subscription, pick};
pub use routing::topic::{DEAD_REASONS, Topic, TopicCounters, TopicRef};
pub use routing::{PublishError, SubscribeError, access, draft, filter, metrics, name, spec};
pub use store::io::{blocking, may_block};
pub use store::{DurableConfig, FaultHook, MessageProps, Stored};
