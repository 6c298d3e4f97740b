//! Durable subscriptions: the pure state machine ([`state`], checked against a reference model)
//! and the dispatcher task that drives it for one (topic, durable name).
//!
//! **Layer rule:** this layer uses the routing core, the store and the DLQ record; what it needs
//! of the broker facade (storing a dead letter, the latency histograms) comes through
//! [`DispatchHost`].

pub(crate) mod dead;
pub(crate) mod dispatcher;
mod ranges;
pub mod state;

use bytes::Bytes;
use mycelium_storage::StoredMessage;

use crate::routing::topic::TopicRef;

pub(crate) use dispatcher::{Consumer, DurableSub};

/// A consumer's verdict on a durable delivery.
#[derive(Debug, Clone, Copy)]
#[allow(missing_docs)]
pub enum Verdict<'a> {
    Ack(mycelium_protocol::Ack),
    Nack(mycelium_protocol::Nack<'a>),
    InProgress(mycelium_protocol::Ack),
    Term(mycelium_protocol::Term<'a>),
}

impl Verdict<'_> {
    pub(crate) fn ack(&self) -> mycelium_protocol::Ack {
        match self {
            Verdict::Ack(a) | Verdict::InProgress(a) => *a,
            Verdict::Nack(n) => n.ack,
            Verdict::Term(t) => t.ack,
        }
    }
}

/// What a dispatcher needs of the broker. The broker implements it; dispatchers hold it weakly.
pub(crate) trait DispatchHost: Send + Sync {
    /// Stores a dead-lettered message of `topic` in its DLQ, with the record in `headers`; the
    /// answer comes when the DLQ has it (none: refused at once, e.g. past the topic limit).
    fn dead_letter(
        &self,
        topic: &TopicRef,
        headers: Bytes,
        original: StoredMessage,
    ) -> Option<dead::DeadLetterAnswer>;
    /// Counts a dead letter the DLQ refused (it is held and tried again).
    fn dead_letter_held(&self);
    /// Counts a failed write of a subscription's state (tried again with a backoff).
    fn state_write_failed(&self);
    /// Records a message of `topic` acknowledged `seconds` after it was published.
    fn observe_delivery(&self, topic: &TopicRef, seconds: f64);
}
