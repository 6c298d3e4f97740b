//! A topic: its spec, its sequence, its counters and its current route.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arc_swap::ArcSwap;

use crate::routing::spec::TopicSpec;
use crate::routing::subscription::Route;

/// Counters of one topic (monotonic totals, relaxed atomics: exact per counter, not a snapshot
/// across counters).
#[derive(Debug, Default)]
#[allow(missing_docs)]
pub struct TopicCounters {
    pub published: AtomicU64,
    pub delivered: AtomicU64,
    pub dropped: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub rejected: AtomicU64,
    pub blocked: AtomicU64,
    pub slow_disconnects: AtomicU64,
    /// Durable publishes recognised as duplicates (idempotency key within the dedup window).
    pub duplicates: AtomicU64,
    /// Durable deliveries after the first attempt.
    pub redelivered: AtomicU64,
    /// Messages moved to the dead-letter queue (or dropped there when it is off).
    pub dead_lettered: AtomicU64,
    /// Messages whose TTL passed before they were acknowledged.
    pub expired: AtomicU64,
    /// Acknowledgements of durable deliveries.
    pub acked: AtomicU64,
    /// Dead letters by reason, in [`DEAD_REASONS`] order.
    pub dead_by_reason: [AtomicU64; 4],
    /// Deliveries not made because a subscription's filter (or every member of a group) refused
    /// the message.
    pub filtered: AtomicU64,
}

/// The reasons of [`TopicCounters::dead_by_reason`], in order.
pub const DEAD_REASONS: [&str; 4] = ["max_deliveries", "terminated", "expired", "unmatched"];

impl TopicCounters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// One topic.
#[derive(Debug)]
pub struct Topic {
    name: Box<str>,
    spec: TopicSpec,
    next_sequence: AtomicU64,
    pub(crate) counters: TopicCounters,
    pub(crate) route: ArcSwap<Route>,
    deleted: AtomicBool,
    pub(crate) histograms: crate::routing::metrics::TopicHistograms,
}

impl Topic {
    /// Records a publish to this topic that took `seconds` from receipt to durable.
    pub(crate) fn observe_publish(&self, metrics: &crate::routing::metrics::BrokerMetrics, seconds: f64) {
        self.histograms.observe_publish(metrics, &self.name, seconds);
    }

    /// Records a message of this topic acknowledged `seconds` after it was published.
    pub(crate) fn observe_delivery(&self, metrics: &crate::routing::metrics::BrokerMetrics, seconds: f64) {
        self.histograms.observe_delivery(metrics, &self.name, seconds);
    }

    pub(crate) fn new(name: &str, spec: TopicSpec, route: Route) -> Topic {
        Topic {
            name: name.into(),
            spec,
            next_sequence: AtomicU64::new(1),
            counters: TopicCounters::default(),
            route: ArcSwap::from_pointee(route),
            deleted: AtomicBool::new(false),
            histograms: crate::routing::metrics::TopicHistograms::default(),
        }
    }

    /// The topic's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The topic's configuration.
    pub fn spec(&self) -> &TopicSpec {
        &self.spec
    }

    /// The topic's counters.
    pub fn counters(&self) -> &TopicCounters {
        &self.counters
    }

    /// Takes the next per-topic sequence (the first message is 1).
    #[inline]
    pub(crate) fn next_sequence(&self) -> u64 {
        self.next_sequence.fetch_add(1, Ordering::Relaxed)
    }

    /// The sequence the next message will get.
    pub fn peek_sequence(&self) -> u64 {
        self.next_sequence.load(Ordering::Relaxed)
    }

    /// Subscriptions currently routed from this topic.
    pub fn subscriber_count(&self) -> usize {
        self.route.load().subscriber_count()
    }

    pub(crate) fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Relaxed)
    }

    pub(crate) fn mark_deleted(&self) {
        self.deleted.store(true, Ordering::Relaxed);
    }
}

/// Shorthand for a shared topic.
pub type TopicRef = Arc<Topic>;
