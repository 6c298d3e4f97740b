//! The Rust client for Mycelium.
//!
//! [`Client::connect`] opens one connection (Unix socket or TCP) and supervises it: when it drops,
//! the client reconnects with exponential backoff plus jitter, re-subscribes everything, and sends
//! what was published meanwhile (held in a bounded buffer; when it is full, publishing fails with
//! [`ErrorKind::BufferFull`], never a silent drop). After `breaker_threshold` consecutive failed
//! attempts the circuit breaker opens and calls fail fast with [`ErrorKind::CircuitOpen`] until a
//! probe attempt succeeds. [`Client::state_changes`] shows every transition.
//!
//! Several brokers can be given, comma separated (`"unix:///run/m.sock,tcp://10.0.0.2:7420"`):
//! the first that answers is used, and after a lost connection the others are tried in turn.
//! `max_reconnects` makes the client give up ([`ErrorKind::GaveUp`]) after that many failed
//! attempts in a row. [`config::ClientConfig`] reads all of it from a TOML file and the
//! environment ([`Client::connect_config`]).

mod client;
pub mod config;
mod error;
mod message;
mod options;
pub mod resilience;
mod tls;
mod url;

pub use client::{Client, Confirmed, ConnectionState, DurableOptions, PendingConfirm, PublishOptions};
pub use error::{Error, ErrorKind};
pub use message::{Message, Subscription};
pub use mycelium_protocol::{
    Counter, ErrorCode, Export, StartPosition, StatsSnapshot, TOPIC_COUNTERS, TopicStats, admin,
};
pub use options::{ClientOptions, Token};
pub use url::Endpoint;
