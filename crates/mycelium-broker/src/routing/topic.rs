//! A topic: its spec, its sequence, its counters and its current route.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arc_swap::ArcSwap;

use crate::routing::spec::TopicSpec;
use crate::routing::subscription::Route;

macro_rules! atomic_counters {
    ($($name:ident: $export:expr, $help:literal;)*) => {
        /// Counters of one topic (monotonic totals, relaxed atomics: exact per counter, not a
        /// snapshot across counters), one per row of [`mycelium_protocol::topic_counters!`].
        #[derive(Debug, Default)]
        pub struct TopicCounters {
            $(#[doc = $help] pub $name: AtomicU64,)*
        }

        impl TopicCounters {
            /// Copies every counter into `stats`.
            pub fn load_into(&self, stats: &mut mycelium_protocol::TopicStats) {
                $(stats.$name = self.$name.load(Ordering::Relaxed);)*
            }
        }
    };
}

mycelium_protocol::topic_counters!(atomic_counters);

/// The reasons a message is given up, as the DLQ records them.
pub const DEAD_REASONS: [&str; 4] = ["max_deliveries", "terminated", "expired", "unmatched"];

impl TopicCounters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a message given up for `reason` (an index into [`DEAD_REASONS`]).
    pub(crate) fn dead(&self, reason: usize) {
        Self::add(&self.dead_lettered, 1);
        let by_reason = [
            &self.dead_max_deliveries,
            &self.dead_terminated,
            &self.dead_expired,
            &self.dead_unmatched,
        ];
        if let Some(counter) = by_reason.get(reason) {
            Self::add(counter, 1);
        }
    }
}

/// One topic.
#[derive(Debug)]
pub struct Topic {
    name: Box<str>,
    /// The settings; a configuration reload or the topics API may replace them while the topic
    /// lives (its sequence, counters, route and storage stay).
    spec: ArcSwap<TopicSpec>,
    next_sequence: AtomicU64,
    pub(crate) counters: TopicCounters,
    pub(crate) route: ArcSwap<Route>,
    deleted: AtomicBool,
    pub(crate) histograms: crate::routing::metrics::TopicHistograms,
    /// Stored topics: messages from this sequence on are written but not yet confirmed durable
    /// (`u64::MAX`: everything in the log is). Durable subscriptions deliver only below it, so
    /// nothing an fsync may still fail reaches a consumer.
    committed: AtomicU64,
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

    /// Messages below this sequence are durable (see the field).
    pub(crate) fn committed(&self) -> u64 {
        self.committed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// A group from `first` on was written, not yet confirmed.
    pub(crate) fn written_from(&self, first: u64) {
        self.committed
            .fetch_min(first, std::sync::atomic::Ordering::AcqRel);
    }

    /// Everything below `end` is durable; `u64::MAX`: everything in the log.
    pub(crate) fn committed_to(&self, end: u64) {
        self.committed.store(end, std::sync::atomic::Ordering::Release);
    }

    pub(crate) fn new(name: &str, spec: TopicSpec, route: Route) -> Topic {
        Topic {
            name: name.into(),
            spec: ArcSwap::from_pointee(spec),
            next_sequence: AtomicU64::new(1),
            counters: TopicCounters::default(),
            route: ArcSwap::from_pointee(route),
            deleted: AtomicBool::new(false),
            histograms: crate::routing::metrics::TopicHistograms::default(),
            committed: AtomicU64::new(u64::MAX),
        }
    }

    /// The topic's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The topic's configuration now (a cheap guard; load it once per message, not per field).
    #[inline]
    pub fn spec(&self) -> arc_swap::Guard<Arc<TopicSpec>> {
        self.spec.load()
    }

    /// Replaces the topic's configuration (the caller rebuilds the route when routing changes).
    pub(crate) fn set_spec(&self, spec: TopicSpec) {
        self.spec.store(Arc::new(spec));
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
