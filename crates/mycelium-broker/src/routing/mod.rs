//! The routing core: what the publish path works on. Topic names and wildcard patterns
//! ([`name`]), what a topic is configured to do ([`spec`]), content filters ([`filter`]), topics
//! and their counters ([`topic`]), subscriptions and the precomputed routes ([`subscription`]),
//! one connection's pending frames ([`outbound`]), latency histograms ([`metrics`]) and the
//! errors of publishing and subscribing ([`error`]), and who may do what ([`access`]).
//!
//! **Layer rule:** nothing here names the store, consumers, the DLQ or the broker facade.

pub mod access;
pub mod draft;
pub mod error;
pub mod filter;
pub mod metrics;
pub mod name;
pub mod outbound;
pub mod spec;
pub mod subscription;
pub mod topic;

pub use error::{PublishError, SubscribeError};
