//! Latency histograms the broker records as messages pass (the counters are the topics' and
//! subscriptions' own atomics, read at scrape time): publish duration (receipt to durable, stored
//! topics) and delivery duration (publish to acknowledgement, durable subscriptions). Labelled by
//! topic, with the number of topic labels capped: topics beyond the cap share `topic="_other"`.

use std::collections::HashSet;

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// A topic label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabel {
    /// The topic (or `_other` past the cap).
    pub topic: String,
}

/// The label used for topics past the cap.
pub const OTHER_TOPICS: &str = "_other";

fn histogram() -> Histogram {
    // 50 us .. ~13 s, doubling.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 19))
}

/// The broker's histograms.
#[derive(Debug)]
pub struct BrokerMetrics {
    /// Receipt to durable (stored topics), seconds.
    pub publish_duration: Family<TopicLabel, Histogram>,
    /// Publish to acknowledgement (durable subscriptions), seconds.
    pub delivery_duration: Family<TopicLabel, Histogram>,
    topics_max: usize,
    labelled: Mutex<HashSet<String>>,
}

impl BrokerMetrics {
    /// Histograms with at most `topics_max` topic labels.
    pub fn new(topics_max: usize) -> BrokerMetrics {
        BrokerMetrics {
            publish_duration: Family::new_with_constructor(histogram),
            delivery_duration: Family::new_with_constructor(histogram),
            topics_max,
            labelled: Mutex::new(HashSet::new()),
        }
    }

    /// The label for `topic`: itself while under the cap, else `_other`.
    pub fn label(&self, topic: &str) -> String {
        let mut labelled = self.labelled.lock();
        if labelled.contains(topic) {
            return topic.to_owned();
        }
        if labelled.len() < self.topics_max {
            labelled.insert(topic.to_owned());
            return topic.to_owned();
        }
        OTHER_TOPICS.to_owned()
    }
}

/// A topic's handles into the histogram families (set on first use).
#[derive(Debug, Default)]
pub(crate) struct TopicHistograms {
    publish: std::sync::OnceLock<Histogram>,
    delivery: std::sync::OnceLock<Histogram>,
}

impl TopicHistograms {
    /// Records a publish to `topic` that took `seconds` from receipt to durable. The topic keeps
    /// its handle, so this is one bucket search and one uncontended lock.
    pub(crate) fn observe_publish(&self, metrics: &BrokerMetrics, topic: &str, seconds: f64) {
        observe(&self.publish, &metrics.publish_duration, metrics, topic, seconds);
    }

    /// Records a message of `topic` acknowledged `seconds` after it was published.
    pub(crate) fn observe_delivery(&self, metrics: &BrokerMetrics, topic: &str, seconds: f64) {
        observe(
            &self.delivery,
            &metrics.delivery_duration,
            metrics,
            topic,
            seconds,
        );
    }
}

/// Observes `seconds` in `topic`'s histogram of `family`, fetching the handle on first use.
fn observe(
    handle: &std::sync::OnceLock<Histogram>,
    family: &Family<TopicLabel, Histogram>,
    metrics: &BrokerMetrics,
    topic: &str,
    seconds: f64,
) {
    handle
        .get_or_init(|| {
            let label = TopicLabel {
                topic: metrics.label(topic),
            };
            family.get_or_create(&label).clone()
        })
        .observe(seconds);
}

/// Configuration reloads, for `/metrics`.
#[derive(Debug, Default)]
pub struct Reloads {
    /// Reloads that applied (even when nothing changed).
    pub applied: std::sync::atomic::AtomicU64,
    /// Reloads refused: the file was unreadable or invalid, nothing changed.
    pub failed: std::sync::atomic::AtomicU64,
    /// The configuration's version now (1 at start-up).
    pub version: std::sync::atomic::AtomicU64,
    /// Changes in the file that wait for a restart.
    pub restart_pending: std::sync::atomic::AtomicU64,
    /// Whether the last reload failed (1) or not (0).
    pub last_failed: std::sync::atomic::AtomicU64,
}

/// Things that went wrong and were handled, counted for `/metrics` (each also logged, once per
/// condition where it could flood).
#[derive(Debug, Default)]
pub struct Incidents {
    /// Connections closed for having more pending toward them than `server.max_outbound_bytes`.
    pub over_budget: std::sync::atomic::AtomicU64,
    /// Durable subscription state files that could not be read and were replaced by a fallback.
    pub states_recovered: std::sync::atomic::AtomicU64,
    /// Dead letters the DLQ refused (full disk, failing storage, topic limit): held and retried.
    pub dead_letters_held: std::sync::atomic::AtomicU64,
    /// Writes of subscription state files that failed (retried with a backoff).
    pub state_write_failures: std::sync::atomic::AtomicU64,
    /// Full subscribers of `block` topics cut off at once, not waited for: their principal was
    /// cut off as slow within the cool-down.
    pub block_refused: std::sync::atomic::AtomicU64,
}

impl Incidents {
    /// `(name, help, count)` of each counter.
    pub fn counts(&self) -> [(&'static str, &'static str, u64); 5] {
        use std::sync::atomic::Ordering::Relaxed;
        [
            (
                "connections_over_budget",
                "Connections closed for having more pending toward them than server.max_outbound_bytes",
                self.over_budget.load(Relaxed),
            ),
            (
                "subscription_states_recovered",
                "Unreadable durable subscription state files replaced by the last good copy or the oldest retained message",
                self.states_recovered.load(Relaxed),
            ),
            (
                "dead_letters_held",
                "Dead letters the dead-letter queue refused (storage full or failing), kept and tried again",
                self.dead_letters_held.load(Relaxed),
            ),
            (
                "state_write_failures",
                "Failed writes of durable subscription state files (tried again with a backoff)",
                self.state_write_failures.load(Relaxed),
            ),
            (
                "block_refused",
                "Full subscribers of block topics cut off at once: their principal was cut off as slow within the last 60 s",
                self.block_refused.load(Relaxed),
            ),
        ]
    }
}
