//! The broker facade: it owns the registries (topics, subscriptions, connections, durable
//! subscriptions, DLQ marks) and ties the layers together. `publish.rs` is the hot path,
//! `durable.rs` durable subscriptions and the store's callbacks, `dlq.rs` the DLQ operations,
//! [`inspect`] and [`health`] what tools and probes read, `access.rs` the authorization check
//! both doors call, its refusal counters and the audit log.

mod access;
mod dlq;
mod durable;
pub mod health;
pub mod inspect;
mod live;
mod publish;
mod registry;

pub use access::{Action, AuditLog};
pub use durable::DurableRequest;
pub use live::{Adjustable, Control, Kept, ReloadFailure, ReloadFuture};
pub use publish::{HEADERS_BYTES_MAX, LocalMessage, Published, Publisher};

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use mycelium_codec::RelayDomain;
use mycelium_protocol::{ConnectionStats, StatsSnapshot, SubscriptionStats, TopicStats};
use parking_lot::{Mutex, RwLock};

use crate::consumer::DurableSub;
use crate::routing::access::{Door, Principal};
use crate::routing::error::{PublishError, SubscribeError};
use crate::routing::name::{GROUP_NAME_BYTES_MAX, Pattern, is_member_name, validate_topic};
use crate::routing::outbound::Outbound;
use crate::routing::spec::{StorageKind, TopicSpec};
use crate::routing::subscription::{Route, Subscription};
use crate::routing::topic::{Topic, TopicRef};
use crate::store::{DurableConfig, DurableStore, StoreEvents};

/// Broker-wide settings.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Publishing to an unknown topic creates it (with `default_spec`) instead of failing.
    pub auto_create_topics: bool,
    /// Spec of auto-created topics.
    pub default_spec: TopicSpec,
    /// Topics configured up front: (name, spec).
    pub topics: Vec<(String, TopicSpec)>,
    /// Topic for a PUBLISH with no topic, by the TLV header's relay domain.
    pub domain_topics: Vec<(RelayDomain, String)>,
    /// Storage of `storage = "disk"` topics (opened only if such a topic is configured).
    pub durable: DurableConfig,
    /// Topic labels on metrics, at most; topics past it share `topic="_other"`.
    pub metrics_topics_max: usize,
    /// The bounds every topic spec keeps, whichever door creates the topic.
    pub spec_limits: crate::routing::draft::SpecLimits,
    /// How much one client can make the broker hold.
    pub limits: Limits,
}

/// Caps on what clients can make the broker create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Topics, configured ones included; a publish that would create one more is refused.
    pub topics_max: usize,
    /// Subscriptions one connection holds at once (durable ones included).
    pub subscriptions_per_connection_max: usize,
    /// Durable subscriptions of one topic (open or only persisted).
    pub durables_per_topic_max: usize,
    /// Bytes one connection may have pending toward it at once, every frame counted (see
    /// [`Outbound::budget`]).
    pub outbound_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            topics_max: 10_000,
            subscriptions_per_connection_max: 1_000,
            durables_per_topic_max: 1_000,
            outbound_bytes_max: 64 << 20,
        }
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            auto_create_topics: true,
            default_spec: TopicSpec::default(),
            topics: Vec::new(),
            domain_topics: vec![
                (RelayDomain::MarketData, "market_data".into()),
                (RelayDomain::Signal, "signals".into()),
                (RelayDomain::Execution, "execution".into()),
                (RelayDomain::System, "system".into()),
            ],
            durable: DurableConfig::default(),
            metrics_topics_max: 1000,
            spec_limits: crate::routing::draft::SpecLimits {
                message_bytes_max: (16 << 20) - 1024,
            },
            limits: Limits::default(),
        }
    }
}

/// What the broker knows of a connection.
#[derive(Debug)]
pub struct ConnectionInfo {
    /// Broker-assigned id.
    pub id: u64,
    /// `unix` or `tcp:<peer>`.
    pub peer: String,
    name: Mutex<String>,
    /// Where replies and deliveries for it go.
    pub outbound: Arc<Outbound>,
    pub(crate) published: AtomicU64,
    subscriptions: AtomicU32,
    /// The door it came through.
    door: Door,
    /// Who it is: set once, when it authenticates (in-process connections are admins from
    /// the start); until then every check refuses it.
    principal: std::sync::OnceLock<Principal>,
}

impl ConnectionInfo {
    /// The door it came through.
    pub fn door(&self) -> Door {
        self.door
    }

    /// Who it is, once authenticated.
    pub fn principal(&self) -> Option<&Principal> {
        self.principal.get()
    }

    /// Records who it is (the door checked the credential). Returns false, changing nothing,
    /// when it was already set.
    pub fn authenticate(&self, principal: Principal) -> bool {
        self.principal.set(principal).is_ok()
    }

    /// Sets the client's name (from HELLO).
    pub fn set_name(&self, name: &str) {
        *self.name.lock() = name.to_owned();
    }

    /// The client's name.
    pub fn name(&self) -> String {
        self.name.lock().clone()
    }
}

/// The broker core, shared by every connection task.
#[derive(Debug)]
pub struct Broker {
    config: BrokerConfig,
    topics: RwLock<HashMap<Box<str>, TopicRef>>,
    /// Every subscription, in creation order. Lock order: `registry`, then `topics`.
    registry: Mutex<Vec<Arc<Subscription>>>,
    connections: RwLock<HashMap<u64, Arc<ConnectionInfo>>>,
    next_connection: AtomicU64,
    next_subscription_key: AtomicU64,
    next_batch: AtomicU64,
    started: Instant,
    durable: std::sync::OnceLock<DurableStore>,
    /// Durable subscriptions by (topic, durable name).
    pub(crate) durable_subs: Mutex<HashMap<(String, String), Arc<DurableSub>>>,
    /// Which durable subscription a (connection, subscription id) consumes.
    pub(crate) durable_consumers: Mutex<HashMap<(u64, u32), Arc<DurableSub>>>,
    /// Held while a durable subscription is opened (so one is never opened twice).
    durable_opening: tokio::sync::Mutex<()>,
    /// Removal marks of dead-letter queues, by DLQ topic (loaded on first use).
    pub(crate) dlq_marks: Mutex<HashMap<String, crate::dlq::Marks>>,
    /// Latency histograms.
    pub metrics: crate::routing::metrics::BrokerMetrics,
    /// Things that went wrong and were handled.
    pub incidents: crate::routing::metrics::Incidents,
    /// Configuration reloads (the server counts them).
    pub reloads: crate::routing::metrics::Reloads,
    health: std::sync::OnceLock<Arc<health::Health>>,
    /// Where stored topics that may block route their committed groups.
    stored_routers: durable::StoredRouters,
    /// The runtime the broker was made on (for tasks started from the storage writer's thread).
    runtime: Option<tokio::runtime::Handle>,
    /// This broker, for tasks it starts.
    me: std::sync::Weak<Broker>,
    /// Refusals by door and reason.
    refusals: access::Refusals,
    /// Principals whose subscriber was cut off as slow, and when (see `BLOCK_COOLDOWN`).
    slow_cutoffs: Mutex<HashMap<Box<str>, Instant>>,
    /// The topic registry's entries (see `registry.rs`); held while the file is written.
    topic_registry: Mutex<std::collections::BTreeMap<String, serde_json::Value>>,
    /// Where audit lines go (the log only until one is set).
    audit: std::sync::OnceLock<AuditLog>,
    /// The settings a configuration reload may change (see `live.rs`).
    adjustable: arc_swap::ArcSwap<Adjustable>,
    /// The server's reload hook.
    control: std::sync::OnceLock<Arc<dyn Control>>,
}

impl Broker {
    /// A broker with the configured topics created.
    ///
    /// # Errors
    /// A configured topic name that breaks the naming rules.
    pub fn new(config: BrokerConfig) -> Result<Arc<Broker>, PublishError> {
        let mut topics = HashMap::new();
        for (name, spec) in &config.topics {
            validate_topic(name)?;
            topics.insert(
                name.as_str().into(),
                Arc::new(Topic::new(name, spec.clone(), Route::default())),
            );
        }
        for (_, name) in &config.domain_topics {
            validate_topic(name)?;
        }
        let needs_storage = config
            .topics
            .iter()
            .any(|(_, spec)| spec.storage == StorageKind::Disk);
        let durable_config = config.durable.clone();
        let adjustable = Adjustable {
            auto_create_topics: config.auto_create_topics,
            domain_topics: config.domain_topics.clone(),
            limits: config.limits,
        };
        let metrics_topics_max = config.metrics_topics_max;
        let broker = Arc::new_cyclic(|me| Broker {
            config,
            topics: RwLock::new(topics),
            registry: Mutex::new(Vec::new()),
            connections: RwLock::new(HashMap::new()),
            next_connection: AtomicU64::new(1),
            next_subscription_key: AtomicU64::new(1),
            next_batch: AtomicU64::new(1),
            started: Instant::now(),
            durable: std::sync::OnceLock::new(),
            durable_subs: Mutex::new(HashMap::new()),
            durable_consumers: Mutex::new(HashMap::new()),
            durable_opening: tokio::sync::Mutex::new(()),
            dlq_marks: Mutex::new(HashMap::new()),
            metrics: crate::routing::metrics::BrokerMetrics::new(metrics_topics_max),
            health: std::sync::OnceLock::new(),
            stored_routers: durable::StoredRouters::default(),
            runtime: tokio::runtime::Handle::try_current().ok(),
            me: me.clone(),
            refusals: access::Refusals::default(),
            slow_cutoffs: Mutex::new(HashMap::new()),
            topic_registry: Mutex::new(std::collections::BTreeMap::new()),
            incidents: crate::routing::metrics::Incidents::default(),
            reloads: crate::routing::metrics::Reloads::default(),
            audit: std::sync::OnceLock::new(),
            adjustable: arc_swap::ArcSwap::from_pointee(adjustable),
            control: std::sync::OnceLock::new(),
        });
        if needs_storage {
            let store = DurableStore::start(
                durable_config,
                Arc::downgrade(&broker) as std::sync::Weak<dyn StoreEvents>,
            )
            .map_err(|e| PublishError::StorageUnavailable(e.to_string()))?;
            let _ = broker.durable.set(store);
        }
        Ok(broker)
    }

    /// The storage writer, if durable topics are configured.
    pub(crate) fn durable(&self) -> Option<&DurableStore> {
        self.durable.get()
    }

    /// The durable topics' storage backend, if any (for reads and tools).
    pub fn storage(&self) -> Option<Arc<dyn mycelium_storage::StorageBackend>> {
        self.durable()
            .map(|d| Arc::clone(d.backend()) as Arc<dyn mycelium_storage::StorageBackend>)
    }

    /// Stops the storage writer once everything queued is stored, synced and confirmed. Call
    /// after the last connection is gone. Blocking: call it in [`crate::blocking`] or off the
    /// runtime.
    pub fn close_storage(&self) {
        let subs: Vec<Arc<DurableSub>> = self.durable_subs.lock().values().cloned().collect();
        if let Some(store) = self.durable() {
            for sub in subs {
                sub.stop();
                sub.persist_now(self, store.backend());
            }
        }
        if let Some(store) = self.durable() {
            store.close();
        }
        self.stored_routers.close();
    }

    /// Attaches the health monitor (once; the server does it at start-up).
    pub fn set_health(&self, health: Arc<health::Health>) {
        let _ = self.health.set(health);
    }

    /// The health monitor, if one runs.
    pub fn health(&self) -> Option<&Arc<health::Health>> {
        self.health.get()
    }

    /// The broker's settings.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// The paths under the data directory.
    pub fn data_dir(&self) -> mycelium_storage::DataDir {
        mycelium_storage::DataDir::new(&self.config.durable.data_dir)
    }

    /// Writes, syncs and removes a probe file in the data directory (readiness and health
    /// checks); blocking, so call it off the async workers.
    ///
    /// # Errors
    /// The data directory cannot take a write now.
    pub fn probe_data_dir(&self) -> std::io::Result<()> {
        crate::store::io::assert_may_block("data directory probe");
        self.data_dir().probe_write()
    }

    /// A fresh read-batch id (see [`crate::Publisher`]).
    pub(crate) fn next_batch(&self) -> u64 {
        self.next_batch.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a connection made inside the process (tests, tools): an admin from the start.
    pub fn connect(&self, peer: String) -> Arc<ConnectionInfo> {
        let info = self.connect_unauthenticated(Door::Unix, peer);
        info.authenticate(Principal::admin("internal"));
        info
    }

    /// Registers a connection that came through `door`; it may do nothing until
    /// [`ConnectionInfo::authenticate`] says who it is.
    pub fn connect_unauthenticated(&self, door: Door, peer: String) -> Arc<ConnectionInfo> {
        let id = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let info = Arc::new(ConnectionInfo {
            id,
            peer,
            name: Mutex::new(String::new()),
            outbound: {
                let outbound = Outbound::new(id);
                outbound.set_budget(self.adjustable().limits.outbound_bytes_max);
                outbound
            },
            published: AtomicU64::new(0),
            subscriptions: AtomicU32::new(0),
            door,
            principal: std::sync::OnceLock::new(),
        });
        self.connections.write().insert(id, Arc::clone(&info));
        info
    }

    /// Forgets a connection and every subscription it held.
    pub fn disconnect(&self, connection_id: u64) {
        let removed = self.connections.write().remove(&connection_id);
        if let Some(info) = removed {
            info.outbound.close();
            if info.outbound.went_over_budget() {
                self.incidents.over_budget.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.remove_subscriptions(|s| s.connection_id() == connection_id);
        self.remove_durable_consumers(|(c, _)| *c == connection_id);
    }

    /// Connections currently registered.
    pub fn connection_count(&self) -> usize {
        self.connections.read().len()
    }

    /// Looks a topic up by name.
    pub fn topic(&self, name: &str) -> Option<TopicRef> {
        self.topics.read().get(name).cloned()
    }

    /// Every topic, sorted by name.
    pub fn topics(&self) -> Vec<TopicRef> {
        let mut topics: Vec<TopicRef> = self.topics.read().values().cloned().collect();
        topics.sort_by(|a, b| a.name().cmp(b.name()));
        topics
    }

    /// The topic named `name`, creating it if `auto_create_topics` allows.
    ///
    /// # Errors
    /// `InvalidTopic`, `UnknownTopic`.
    pub fn topic_or_create(&self, name: &str) -> Result<TopicRef, PublishError> {
        if let Some(topic) = self.topic(name) {
            return Ok(topic);
        }
        validate_topic(name)?;
        if !self.adjustable().auto_create_topics {
            return Err(PublishError::UnknownTopic(name.to_owned()));
        }
        self.create_topic(name, self.config.default_spec.clone())
    }

    /// Creates a topic (or returns the existing one of that name).
    ///
    /// # Errors
    /// `InvalidTopic`.
    pub fn create_topic(&self, name: &str, spec: TopicSpec) -> Result<TopicRef, PublishError> {
        validate_topic(name)?;
        let registry = self.registry.lock();
        let mut topics = self.topics.write();
        if let Some(existing) = topics.get(name) {
            return Ok(Arc::clone(existing));
        }
        let max = self.adjustable().limits.topics_max;
        if topics.len() >= max {
            return Err(PublishError::Limit(format!(
                "the broker holds {max} topics, its limit (server.max_topics); `{name}` was not created"
            )));
        }
        let route = Route::build(name, spec.routing, &registry);
        let topic = Arc::new(Topic::new(name, spec, route));
        topics.insert(name.into(), Arc::clone(&topic));
        Ok(topic)
    }

    /// Removes a topic; publishers holding it notice and look it up again.
    pub fn delete_topic(&self, name: &str) -> bool {
        let removed = self.topics.write().remove(name);
        removed.map(|t| t.mark_deleted()).is_some()
    }

    /// Adds a subscription for `connection` with the connection-chosen `id`.
    ///
    /// # Errors
    /// `InvalidPattern`, `InvalidGroup`, `Closing`.
    pub fn subscribe(
        &self,
        connection: &ConnectionInfo,
        id: u32,
        pattern: &str,
        group: Option<&str>,
    ) -> Result<Arc<Subscription>, SubscribeError> {
        self.subscribe_inner(connection, id, pattern, group, None, || {})
    }

    /// Like [`Broker::subscribe`], and queues SUBSCRIBE_OK (answering `request_id`) on the
    /// connection *before* the subscription becomes routable, so the client always sees its
    /// SUBSCRIBE_OK before the first DELIVER for it.
    ///
    /// # Errors
    /// As [`Broker::subscribe`]; nothing is queued then.
    pub fn subscribe_with_reply(
        &self,
        connection: &ConnectionInfo,
        id: u32,
        pattern: &str,
        group: Option<&str>,
        request_id: u32,
    ) -> Result<Arc<Subscription>, SubscribeError> {
        self.subscribe_filtered(connection, id, pattern, group, None, request_id)
    }

    /// As [`Broker::subscribe_with_reply`], delivering only messages that match `filter` (the
    /// filter language of [`crate::filter`]); a group member's filter decides which messages it
    /// can be picked for.
    ///
    /// # Errors
    /// As [`Broker::subscribe`], and `InvalidFilter` naming the position.
    pub fn subscribe_filtered(
        &self,
        connection: &ConnectionInfo,
        id: u32,
        pattern: &str,
        group: Option<&str>,
        filter: Option<&str>,
        request_id: u32,
    ) -> Result<Arc<Subscription>, SubscribeError> {
        let filter = filter
            .map(crate::routing::filter::Filter::parse)
            .transpose()?
            .map(Arc::new);
        self.subscribe_inner(connection, id, pattern, group, filter, || {
            connection.outbound.append_control(|buf| {
                let ok = mycelium_protocol::Frame::SubscribeOk(mycelium_protocol::SubscriptionRef {
                    subscription_id: id,
                });
                let _ = mycelium_protocol::encode(buf, request_id, &ok);
            });
        })
    }

    fn subscribe_inner(
        &self,
        connection: &ConnectionInfo,
        id: u32,
        pattern: &str,
        group: Option<&str>,
        filter: Option<Arc<crate::routing::filter::Filter>>,
        before_routable: impl FnOnce(),
    ) -> Result<Arc<Subscription>, SubscribeError> {
        let pattern = Pattern::parse(pattern)?;
        self.authorize_connection(connection, Action::Subscribe(&pattern))?;
        if let Some(group) = group
            && !is_member_name(group, GROUP_NAME_BYTES_MAX)
        {
            return Err(SubscribeError::InvalidGroup(group.to_owned()));
        }
        if connection.outbound.is_closing() {
            return Err(SubscribeError::Closing);
        }
        self.check_subscription_room(connection)?;
        let key = self.next_subscription_key.fetch_add(1, Ordering::Relaxed);
        // Who, from where: the principal and the peer's address without its port (with
        // authentication off everyone is `anonymous`; one slow client must not cost the others).
        let host = connection
            .peer
            .rsplit_once(':')
            .map_or(connection.peer.as_str(), |(h, _)| h);
        let owner: Box<str> = format!(
            "{}@{host}",
            connection.principal().map_or("", |p| p.name.as_str())
        )
        .into();
        let may_block = !self.recently_cut_off(&owner);
        let sub = Arc::new(
            Subscription::new(
                id,
                key,
                pattern,
                group.map(Into::into),
                Arc::clone(&connection.outbound),
                filter,
            )
            .owned_by(owner, may_block),
        );
        let mut registry = self.registry.lock();
        before_routable();
        registry.push(Arc::clone(&sub));
        self.rebuild_routes(&registry, |topic| sub.pattern.matches(topic));
        connection.subscriptions.fetch_add(1, Ordering::Relaxed);
        Ok(sub)
    }

    /// Whether `principal` had a subscriber cut off as slow within `BLOCK_COOLDOWN`.
    fn recently_cut_off(&self, principal: &str) -> bool {
        self.slow_cutoffs
            .lock()
            .get(principal)
            .is_some_and(|at| at.elapsed() < crate::routing::subscription::BLOCK_COOLDOWN)
    }

    /// Remembers that `principal`'s subscriber was cut off as slow now (forgetting those older
    /// than the cool-down, so the map holds only recent ones).
    pub(crate) fn cut_off(&self, principal: &str) {
        let mut cutoffs = self.slow_cutoffs.lock();
        cutoffs.retain(|_, at| at.elapsed() < crate::routing::subscription::BLOCK_COOLDOWN);
        cutoffs.insert(principal.into(), Instant::now());
    }

    /// Refuses one more subscription on a connection at its limit.
    pub(crate) fn check_subscription_room(&self, connection: &ConnectionInfo) -> Result<(), SubscribeError> {
        let max = self.adjustable().limits.subscriptions_per_connection_max;
        if connection.subscriptions.load(Ordering::Relaxed) as usize >= max {
            return Err(SubscribeError::Limit(format!(
                "this connection holds {max} subscriptions, the limit (server.max_subscriptions_per_connection)"
            )));
        }
        Ok(())
    }

    /// Removes subscription `id` of `connection`. Returns whether it existed. Once this returns,
    /// no publisher routes to it any more.
    pub fn unsubscribe(&self, connection: &ConnectionInfo, id: u32) -> bool {
        let durable = self.durable_consumers.lock().contains_key(&(connection.id, id));
        if durable {
            self.remove_durable_consumers(|k| *k == (connection.id, id));
            connection.subscriptions.fetch_sub(1, Ordering::Relaxed);
            return true;
        }
        let removed = self.remove_subscriptions(|s| s.connection_id() == connection.id && s.id == id);
        if removed > 0 {
            connection.subscriptions.fetch_sub(1, Ordering::Relaxed);
        }
        removed > 0
    }

    fn remove_subscriptions(&self, doomed: impl Fn(&Subscription) -> bool) -> usize {
        let mut registry = self.registry.lock();
        let (gone, kept): (Vec<_>, Vec<_>) = registry.drain(..).partition(|s| doomed(s));
        *registry = kept;
        if !gone.is_empty() {
            self.rebuild_routes(&registry, |topic| gone.iter().any(|s| s.pattern.matches(topic)));
        }
        gone.len()
    }

    fn rebuild_routes(&self, registry: &[Arc<Subscription>], affected: impl Fn(&str) -> bool) {
        for topic in self.topics.read().values() {
            if affected(topic.name()) {
                topic.route.store(Arc::new(Route::build(
                    topic.name(),
                    topic.spec().routing,
                    registry,
                )));
            }
        }
    }

    /// One topic's counters (what [`Broker::stats`] lists for each). Blocking for a stored
    /// topic: its log's bounds are read.
    pub fn topic_stats(&self, topic: &TopicRef) -> TopicStats {
        let stored = match (self.storage(), topic.spec().storage) {
            (Some(backend), StorageKind::Disk) => backend
                .bounds(topic.name())
                .map_or(0, |b| b.next.saturating_sub(b.first)),
            _ => 0,
        };
        let mut stats = TopicStats {
            name: topic.name().to_owned(),
            routing: topic.spec().routing.to_string(),
            subscribers: topic.subscriber_count() as u32,
            stored,
            ..TopicStats::default()
        };
        topic.counters().load_into(&mut stats);
        stats
    }

    /// Every counter, for STATS and the metrics exporter.
    pub fn stats(&self) -> StatsSnapshot {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let topics = self.topics().iter().map(|t| self.topic_stats(t)).collect();
        let subscriptions = self
            .registry
            .lock()
            .iter()
            .map(|s| SubscriptionStats {
                connection_id: s.connection_id(),
                subscription_id: s.id,
                pattern: s.pattern.to_string(),
                group: s.group.as_deref().unwrap_or("").to_owned(),
                delivered: load(&s.delivered),
                dropped: load(&s.dropped),
                blocked: load(&s.blocked),
            })
            .collect();
        let mut connections: Vec<ConnectionStats> = self
            .connections
            .read()
            .values()
            .map(|c| ConnectionStats {
                id: c.id,
                name: c.name(),
                peer: c.peer.clone(),
                published: load(&c.published),
                delivered: c.outbound.delivered(),
                subscriptions: c.subscriptions.load(Ordering::Relaxed),
                pending_bytes: c.outbound.pending_bytes() as u64,
            })
            .collect();
        connections.sort_by_key(|c| c.id);
        StatsSnapshot {
            uptime_ms: self.started.elapsed().as_millis() as u64,
            topics,
            subscriptions,
            connections,
        }
    }
}
