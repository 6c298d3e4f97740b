//! What a configuration reload changes in a running broker: the broker-wide settings that may
//! change live ([`Adjustable`]), a topic's settings in place ([`Broker::update_topic`]), a topic's
//! removal when nothing depends on it ([`Broker::remove_topic`]), and the hook through which
//! both doors ask the server to reload ([`Control`]).
//!
//! The broker does not read configuration files: the server parses and validates the new file,
//! works out what changed, and calls these.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use mycelium_codec::RelayDomain;
use mycelium_protocol::admin::{ConfigView, ReloadReport};

use super::{Broker, Limits};
use crate::routing::error::PublishError;
use crate::routing::name::validate_topic;
use crate::routing::spec::TopicSpec;
use crate::routing::subscription::Route;
use crate::routing::topic::TopicRef;

/// Broker-wide settings a reload may change; swapped whole, read where they are used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adjustable {
    /// Publishing to an unknown topic creates it.
    pub auto_create_topics: bool,
    /// Topic for a PUBLISH with no topic, by the TLV header's relay domain.
    pub domain_topics: Vec<(RelayDomain, String)>,
    /// How much one client can make the broker hold (new connections get the new budget).
    pub limits: Limits,
}

impl Adjustable {
    /// The topic a PUBLISH without topic goes to, by its TLV relay domain.
    pub fn domain_topic(&self, domain: RelayDomain) -> Option<&str> {
        self.domain_topics
            .iter()
            .find(|(d, _)| *d == domain)
            .map(|(_, t)| t.as_str())
    }
}

/// Why a reload was not applied: the file, and each problem as a key and a reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadFailure {
    /// The configuration file (or what stood for it).
    pub file: String,
    /// `(key, reason)` pairs; the key is empty when the problem is the whole file.
    pub problems: Vec<(String, String)>,
}

impl std::fmt::Display for ReloadFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lines: Vec<String> = self
            .problems
            .iter()
            .map(|(key, reason)| match key.is_empty() {
                true => format!("{}: {reason}", self.file),
                false => format!("{}: {key}: {reason}", self.file),
            })
            .collect();
        f.write_str(&lines.join("; "))
    }
}

/// A reload's answer, as both doors hand it back.
pub type ReloadFuture = Pin<Box<dyn Future<Output = Result<ReloadReport, ReloadFailure>> + Send>>;

/// What the server lends the broker so that the doors can reload the configuration and show the
/// effective one (the server owns the file, the listeners and the keys).
pub trait Control: Send + Sync + std::fmt::Debug {
    /// Reads, validates and applies the configuration file again. `force`: remove topics the
    /// file no longer names even when they hold messages or subscriptions.
    fn reload(&self, force: bool) -> ReloadFuture;
    /// The configuration in effect (secrets redacted), its version and what waits for a restart.
    fn effective(&self) -> ConfigView;
}

/// Why [`Broker::remove_topic`] kept a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kept {
    /// No topic of that name.
    Missing,
    /// It is in use; the text says how.
    InUse(String),
}

impl Broker {
    /// The settings a reload may change, as they are now.
    #[inline]
    pub fn adjustable(&self) -> arc_swap::Guard<Arc<Adjustable>> {
        self.adjustable.load()
    }

    /// Replaces the settings a reload may change.
    ///
    /// # Errors
    /// A domain topic name that breaks the naming rules (nothing is changed).
    pub fn set_adjustable(&self, adjustable: Adjustable) -> Result<(), PublishError> {
        for (_, name) in &adjustable.domain_topics {
            validate_topic(name)?;
        }
        self.adjustable.store(Arc::new(adjustable));
        Ok(())
    }

    /// Changes a topic's settings in place: its messages, sequence, counters, subscriptions and
    /// storage stay; the next message routed uses the new settings (a changed routing rule
    /// rebuilds the route first).
    ///
    /// # Errors
    /// `UnknownTopic`; `Unsupported` when the storage kind would change (that needs the topic
    /// made anew: delete and create it, or restart).
    pub fn update_topic(&self, name: &str, spec: TopicSpec) -> Result<TopicRef, PublishError> {
        let registry = self.registry.lock();
        let topics = self.topics.read();
        let topic = topics
            .get(name)
            .cloned()
            .ok_or_else(|| PublishError::UnknownTopic(name.to_owned()))?;
        let old = topic.spec();
        if old.storage != spec.storage {
            return Err(PublishError::Unsupported(format!(
                "topic `{name}`: storage cannot change from {} to {} while the topic exists",
                old.storage, spec.storage
            )));
        }
        let reroute = old.routing != spec.routing;
        let routing = spec.routing;
        drop(old);
        topic.set_spec(spec);
        if reroute {
            topic
                .route
                .store(Arc::new(Route::build(name, routing, &registry)));
        }
        Ok(topic)
    }

    /// Removes a topic unless `force` is off and it is in use: it has subscribers now, durable
    /// subscriptions (open or persisted), or stored messages. Forced, its durable subscriptions
    /// are deleted with it; stored messages stay on disk. Blocking (reads state files).
    ///
    /// # Errors
    /// [`Kept`]: why the topic stays.
    pub fn remove_topic(&self, name: &str, force: bool) -> Result<(), Kept> {
        let Some(topic) = self.topic(name) else {
            return Err(Kept::Missing);
        };
        let durable = self.has_durable_subscriptions(name);
        if !force {
            let mut uses = Vec::new();
            let subscribers = topic.subscriber_count();
            if subscribers > 0 {
                uses.push(format!("{subscribers} subscriber(s)"));
            }
            if durable {
                uses.push("durable subscriptions".to_owned());
            }
            let stored = self.topic_stats(&topic).stored;
            if stored > 0 {
                uses.push(format!("{stored} stored message(s)"));
            }
            if !uses.is_empty() {
                return Err(Kept::InUse(uses.join(", ")));
            }
        }
        if durable {
            let subs: Vec<String> = self
                .durable_subscription_names()
                .into_iter()
                .filter(|(topic, _)| topic == name)
                .map(|(_, sub)| sub)
                .collect();
            for sub in &subs {
                if let Err(error) = self.delete_durable(name, sub) {
                    tracing::warn!(topic = name, subscription = %sub, %error, "durable subscription not deleted");
                }
            }
            if let Err(error) = self.delete_persisted_subscriptions(name) {
                tracing::warn!(topic = name, %error, "persisted subscriptions not deleted");
            }
        }
        self.delete_topic(name);
        Ok(())
    }

    /// Lends the broker the server's reload hook (once, at start-up).
    pub fn set_control(&self, control: Arc<dyn Control>) {
        let _ = self.control.set(control);
    }

    /// The server's reload hook, if the server gave one (in-process brokers have none).
    pub fn control(&self) -> Option<&Arc<dyn Control>> {
        self.control.get()
    }
}
