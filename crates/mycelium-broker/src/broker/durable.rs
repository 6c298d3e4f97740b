//! Durable subscriptions and stored topics at the broker facade: subscribe and acknowledge, the
//! store's callbacks ([`StoreEvents`]: committed groups to live subscribers, retention floors)
//! and the dispatchers' ([`DispatchHost`]: dead letters, delivery latency).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use mycelium_storage::StoredMessage;
use tokio::sync::mpsc;

use super::{Broker, ConnectionInfo, Publisher};
use crate::consumer::dispatcher::OpenRequest;
use crate::consumer::state::AckError;
use crate::consumer::{DispatchHost, DurableSub, Verdict};
use crate::routing::SubscribeError;
use crate::routing::name::{DURABLE_NAME_BYTES_MAX, is_member_name};
use crate::routing::spec::{StorageKind, TopicSpec};
use crate::routing::topic::TopicRef;
use crate::store::StoreEvents;
use crate::store::io::blocking;

/// A checked durable SUBSCRIBE ([`Broker::durable_request`]), owned so that opening can wait.
#[derive(Debug, Clone)]
pub struct DurableRequest {
    topic: TopicRef,
    open: OpenRequest,
}

/// Refuses client-chosen delivery options outside [`crate::delivery::bounds`].
fn check_bounds(options: &mycelium_protocol::SubscribeOptions<'_>) -> Result<(), SubscribeError> {
    use crate::consumer::state::bounds::{
        ACK_WAIT_MAX, ACK_WAIT_MIN, BACKOFF_MIN, BACKOFF_STEPS_MAX, DELAY_MAX, IN_FLIGHT_MAX,
    };
    let out_of = |what: &str, value: String, range: String| {
        Err(SubscribeError::Unsupported(format!(
            "{what} {value} is outside {range}"
        )))
    };
    let ms = |d: std::time::Duration| d.as_millis();
    if let Some(wait) = options.ack_wait_ms
        && !(ms(ACK_WAIT_MIN)..=ms(ACK_WAIT_MAX)).contains(&u128::from(wait))
    {
        return out_of(
            "ack wait",
            format!("{wait} ms"),
            format!("{}..={} ms", ms(ACK_WAIT_MIN), ms(ACK_WAIT_MAX)),
        );
    }
    if options.backoff_ms.len() > BACKOFF_STEPS_MAX {
        return out_of(
            "a backoff of",
            format!("{} steps", options.backoff_ms.len()),
            format!("1..={BACKOFF_STEPS_MAX} steps"),
        );
    }
    if let Some(step) = options
        .backoff_ms
        .iter()
        .find(|step| !(ms(BACKOFF_MIN)..=ms(DELAY_MAX)).contains(&u128::from(**step)))
    {
        return out_of(
            "backoff step",
            format!("{step} ms"),
            format!("{}..={} ms", ms(BACKOFF_MIN), ms(DELAY_MAX)),
        );
    }
    if let Some(n) = options.max_in_flight
        && !(1..=IN_FLIGHT_MAX).contains(&n)
    {
        return out_of("max in flight", n.to_string(), format!("1..={IN_FLIGHT_MAX}"));
    }
    Ok(())
}

impl Broker {
    /// Wakes the durable subscriptions of `topic` (new messages are stored).
    fn notify_durable(&self, topic: &str) {
        for ((t, _), sub) in self.durable_subs.lock().iter() {
            if t == topic {
                sub.wake.notify_one();
            }
        }
    }

    /// Checks a durable SUBSCRIBE (`options.durable` on the disk topic `pattern`) and makes
    /// the request [`Broker::subscribe_durable`] carries out.
    ///
    /// # Errors
    /// `Denied` when the connection's principal may not subscribe to `pattern`; `Unsupported`
    /// when the topic is not a disk topic, no durable name is given or no storage is configured;
    /// `InvalidGroup` for a bad durable name; a filter that does not parse.
    pub fn durable_request(
        &self,
        connection: &ConnectionInfo,
        pattern: &str,
        options: &mycelium_protocol::SubscribeOptions<'_>,
    ) -> Result<DurableRequest, SubscribeError> {
        let asked = crate::routing::name::Pattern::parse(pattern)?;
        self.authorize_connection(connection, super::Action::Subscribe(&asked))?;
        if let Some(filter) = options.filter {
            crate::routing::filter::Filter::parse(filter)?;
        }
        check_bounds(options)?;
        let Some(name) = options.durable else {
            return Err(SubscribeError::Unsupported(
                "subscription options need a durable name (start position, ack settings and prefetch apply to durable subscriptions)".into(),
            ));
        };
        if !is_member_name(name, DURABLE_NAME_BYTES_MAX) {
            return Err(SubscribeError::InvalidGroup(name.to_owned()));
        }
        let topic = self.topic(pattern).filter(|t| t.spec().storage == StorageKind::Disk).ok_or_else(|| {
            SubscribeError::Unsupported(format!(
                "durable subscriptions need a configured topic with storage = \"disk\"; `{pattern}` is not one"
            ))
        })?;
        if self.durable().is_none() {
            return Err(SubscribeError::Unsupported("no storage configured".into()));
        }
        let mut open = OpenRequest::new(name, options, self.config.durable.read_ahead);
        open.owner = connection.principal().map(|p| p.name.clone());
        Ok(DurableRequest { topic, open })
    }

    /// Adds a consumer to a durable subscription (created at the request's start position if
    /// new, resumed where it left off otherwise), queueing SUBSCRIBE_OK first. Opening reads and
    /// writes the subscription's state file off the async workers; opens wait for each other.
    ///
    /// # Errors
    /// `Closing`; `Unsupported` when the subscription's state cannot be opened; `Denied` when
    /// it belongs to another principal.
    pub async fn subscribe_durable(
        self: &Arc<Self>,
        connection: &ConnectionInfo,
        id: u32,
        request: DurableRequest,
        request_id: u32,
    ) -> Result<(), SubscribeError> {
        let DurableRequest { topic, open } = request;
        let store = self
            .durable()
            .ok_or_else(|| SubscribeError::Unsupported("no storage configured".into()))?;
        let key = (topic.name().to_owned(), open.name.clone());
        let opening = self.durable_opening.lock().await;
        if connection.outbound.is_closing() {
            return Err(SubscribeError::Closing);
        }
        self.check_subscription_room(connection)?;
        let existing = self.durable_subs.lock().get(&key).cloned();
        let sub = match existing {
            Some(sub) => sub,
            None => {
                let max = self.adjustable().limits.durables_per_topic_max;
                let (data_dir, name) = (self.data_dir(), key.0.clone());
                let persisted = blocking(move || data_dir.persisted_subscriptions(&name)).await;
                let opened = self
                    .durable_subs
                    .lock()
                    .keys()
                    .filter(|(t, _)| *t == key.0)
                    .count();
                let known = persisted.len().max(opened);
                if known >= max && !persisted.iter().any(|(n, _)| *n == key.1) {
                    return Err(SubscribeError::Limit(format!(
                        "topic `{}` has {max} durable subscriptions, the limit (server.max_durables_per_topic)",
                        key.0
                    )));
                }
                let (backend, config, opened_topic) = (
                    Arc::clone(store.backend()),
                    self.config.durable.clone(),
                    Arc::clone(&topic),
                );
                let sub = blocking(move || DurableSub::open(opened_topic, open, &backend, &config))
                    .await
                    .map_err(|e| {
                        SubscribeError::Unsupported(format!("cannot open durable subscription: {e}"))
                    })?;
                if sub.recovered {
                    self.incidents
                        .states_recovered
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                self.durable_subs.lock().insert(key, Arc::clone(&sub));
                let host: Weak<dyn DispatchHost> = Arc::downgrade(self) as Weak<dyn DispatchHost>;
                tokio::spawn(Arc::clone(&sub).run(host, Arc::clone(store.backend())));
                sub
            }
        };
        drop(opening);
        // Someone else's subscription: refused, the same whether or not it has consumers.
        self.authorize_connection(
            connection,
            super::Action::Durable {
                topic: sub.topic.name(),
                name: &sub.name,
                owner: sub.owner.as_deref(),
            },
        )?;
        connection.outbound.append_control(|buf| {
            let ok = mycelium_protocol::Frame::SubscribeOk(mycelium_protocol::SubscriptionRef {
                subscription_id: id,
            });
            let _ = mycelium_protocol::encode(buf, request_id, &ok);
        });
        sub.consumers.lock().push(crate::consumer::Consumer {
            outbound: Arc::clone(&connection.outbound),
            subscription_id: id,
            connection_id: connection.id,
        });
        self.durable_consumers
            .lock()
            .insert((connection.id, id), Arc::clone(&sub));
        connection.subscriptions.fetch_add(1, Ordering::Relaxed);
        sub.wake.notify_one();
        Ok(())
    }

    /// ACK, NACK, IN_PROGRESS or TERM from `connection`. An ACK with a non-zero `request_id` is
    /// answered with ACK_OK once the acknowledgement is durable.
    ///
    /// # Errors
    /// Unknown subscription, or the message is not in flight.
    pub fn acknowledge(
        &self,
        connection: &ConnectionInfo,
        verdict: Verdict<'_>,
        request_id: u32,
    ) -> Result<(), AckError> {
        let ack = verdict.ack();
        let unknown = || AckError::UnknownSubscription(ack.subscription_id);
        let sub = self
            .durable_consumers
            .lock()
            .get(&(connection.id, ack.subscription_id))
            .cloned()
            .ok_or_else(unknown)?;
        sub.verdict(self, verdict, &connection.outbound, request_id)
    }

    /// The lowest acked-up-to floor of `topic`'s durable subscriptions, open or only persisted
    /// (work-queue retention). `None`: it has none.
    pub(super) fn durable_floor(&self, topic: &str) -> Option<u64> {
        let open: Vec<(String, u64)> = self
            .durable_subs
            .lock()
            .iter()
            .filter(|((t, _), _)| t == topic)
            .map(|((_, name), sub)| (name.clone(), sub.state.lock().floor()))
            .collect();
        let persisted = self
            .data_dir()
            .persisted_subscriptions(topic)
            .into_iter()
            .filter(|(name, _)| !open.iter().any(|(n, _)| n == name))
            .filter_map(|(_, path)| {
                let snapshot: crate::consumer::state::Snapshot =
                    serde_json::from_slice(&crate::store::io::read_state(&path).ok()?).ok()?;
                Some(snapshot.floor)
            })
            .collect::<Vec<u64>>();
        open.iter().map(|(_, floor)| *floor).chain(persisted).min()
    }

    /// Stores a dead-lettered message in `{topic}.dlq` (a disk topic, created on first use); the
    /// answer comes once it is stored (none: refused at once).
    fn store_dead_letter(
        &self,
        topic: &TopicRef,
        headers: bytes::Bytes,
        original: mycelium_storage::StoredMessage,
    ) -> Option<crate::consumer::dead::DeadLetterAnswer> {
        let name = crate::dlq::dlq_topic(topic.name());
        let spec = TopicSpec {
            storage: StorageKind::Disk,
            routing: crate::routing::spec::Routing::Fanout,
            delivery: crate::routing::spec::Delivery::AtLeastOnce,
            priority: false,
            ttl: None,
            dead_letter: false,
            retention: crate::routing::spec::Retention::Limits,
            ..(**topic.spec()).clone()
        };
        let dlq = match self.create_topic(&name, spec) {
            Ok(dlq) => dlq,
            Err(error) => {
                tracing::error!(%error, topic = %name, "cannot create the dead-letter topic");
                return None;
            }
        };
        let store = self.durable()?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let request = crate::store::AppendRequest {
            topic: dlq,
            headers,
            payload: original.payload,
            props: crate::store::MessageProps::default(),
            confirm: crate::store::Confirm::Reply(reply),
            received_ns: mycelium_codec::now_ns(),
        };
        match store.queue.try_send(vec![request]) {
            Ok(()) => {}
            Err(crate::store::QueueError::Full(batch)) => {
                let queue = store.queue.clone();
                tokio::spawn(async move {
                    let _ = queue.send(batch).await;
                });
            }
            Err(crate::store::QueueError::Closed(_)) => {
                tracing::error!(topic = %name, "storage writer stopped; dead letter not stored");
                return None;
            }
        }
        Some(answer)
    }

    pub(super) fn remove_durable_consumers(&self, doomed: impl Fn(&(u64, u32)) -> bool) {
        let removed: Vec<((u64, u32), Arc<DurableSub>)> = {
            let mut consumers = self.durable_consumers.lock();
            let keys: Vec<(u64, u32)> = consumers.keys().filter(|k| doomed(k)).copied().collect();
            keys.into_iter()
                .filter_map(|k| consumers.remove(&k).map(|s| (k, s)))
                .collect()
        };
        for ((connection_id, subscription_id), sub) in removed {
            sub.consumers
                .lock()
                .retain(|c| !(c.connection_id == connection_id && c.subscription_id == subscription_id));
            sub.release(connection_id, subscription_id);
        }
    }
}

impl StoreEvents for Broker {
    fn committed(&self, topic: &TopicRef, mut messages: Vec<StoredMessage>, received_ns: &[u64]) {
        self.notify_durable(topic.name());
        let now_ns = mycelium_codec::now_ns();
        for received in received_ns {
            let seconds = now_ns.saturating_sub(*received) as f64 / 1e9;
            topic.observe_publish(&self.metrics, seconds);
        }
        if topic.route.load().is_empty() {
            return;
        }
        // Live subscribers see a message now unless it is held back: delayed messages reach
        // durable subscriptions only, at their time.
        messages.retain(|m| m.not_before_ns.is_none_or(|nb| nb <= now_ns));
        if messages.is_empty() {
            return;
        }
        if self.stored_routers.busy(topic.name()) {
            // Earlier groups still wait for a full subscriber: queue behind them, in order.
            let deferred = Deferred {
                publisher: Publisher::internal(),
                rest: messages,
            };
            return self.defer_stored(topic, deferred);
        }
        // Route here, on the storage writer's thread, flushing inline; if a subscriber under
        // `block` is full, the rest of the group (and every later group of the topic until it is
        // done) waits on the topic's routing task instead of this thread.
        let mut publisher = Publisher::internal();
        publisher.begin_batch(self);
        let mut messages = messages.into_iter();
        while let Some(message) = messages.next() {
            self.route(
                &mut publisher,
                topic,
                message.sequence,
                &message.headers,
                &message.payload,
            );
            if publisher.has_blocked() {
                let deferred = Deferred {
                    publisher,
                    rest: messages.collect(),
                };
                return self.defer_stored(topic, deferred);
            }
        }
        publisher.end_batch(self);
    }

    fn stored_topics(&self) -> Vec<TopicRef> {
        self.topics()
            .into_iter()
            .filter(|t| t.spec().storage == StorageKind::Disk)
            .collect()
    }

    fn work_queue_floor(&self, topic: &str) -> Option<u64> {
        self.durable_floor(topic)
    }
}

impl DispatchHost for Broker {
    fn dead_letter(
        &self,
        topic: &TopicRef,
        headers: Bytes,
        original: StoredMessage,
    ) -> Option<crate::consumer::dead::DeadLetterAnswer> {
        self.store_dead_letter(topic, headers, original)
    }

    fn dead_letter_held(&self) {
        self.incidents.dead_letters_held.fetch_add(1, Ordering::Relaxed);
    }

    fn state_write_failed(&self) {
        self.incidents
            .state_write_failures
            .fetch_add(1, Ordering::Relaxed);
    }

    fn observe_delivery(&self, topic: &TopicRef, seconds: f64) {
        topic.observe_delivery(&self.metrics, seconds);
    }
}

/// Routing of a stored topic's group that had to wait: the deliveries parked for full
/// subscribers (in `publisher`), then the rest of the group.
struct Deferred {
    publisher: Publisher,
    rest: Vec<StoredMessage>,
}

/// One stored topic's routing task: its queue and how many groups it has not finished.
#[derive(Debug)]
struct StoredRouter {
    sender: mpsc::UnboundedSender<Deferred>,
    pending: Arc<AtomicUsize>,
}

/// The routing tasks of stored topics whose groups had to wait for a full subscriber (`overflow
/// = "block"`), by topic. Groups wait there, in commit order, so the storage writer never does;
/// once a topic's task has caught up, its groups are routed on the writer's thread again.
#[derive(Debug, Default)]
pub(super) struct StoredRouters {
    routers: parking_lot::Mutex<HashMap<Box<str>, StoredRouter>>,
}

impl StoredRouters {
    /// Whether `topic`'s task still holds groups (later groups must queue behind them).
    fn busy(&self, topic: &str) -> bool {
        self.routers
            .lock()
            .get(topic)
            .is_some_and(|r| r.pending.load(Ordering::Acquire) > 0)
    }

    /// Stops taking groups; each task ends once it has routed what it holds.
    pub(super) fn close(&self) {
        self.routers.lock().clear();
    }
}

impl Broker {
    fn defer_stored(&self, topic: &TopicRef, deferred: Deferred) {
        let mut routers = self.stored_routers.routers.lock();
        let deferred = match routers.get(topic.name()) {
            Some(router) => {
                router.pending.fetch_add(1, Ordering::AcqRel);
                match router.sender.send(deferred) {
                    Ok(()) => return,
                    Err(returned) => {
                        router.pending.fetch_sub(1, Ordering::AcqRel);
                        returned.0
                    }
                }
            }
            None => deferred,
        };
        let Some(runtime) = &self.runtime else {
            tracing::error!(
                topic = topic.name(),
                "no runtime to route stored messages on; live subscribers miss them"
            );
            return;
        };
        let (sender, receiver) = mpsc::unbounded_channel();
        let pending = Arc::new(AtomicUsize::new(1));
        let _ = sender.send(deferred);
        routers.insert(
            topic.name().into(),
            StoredRouter {
                sender,
                pending: Arc::clone(&pending),
            },
        );
        runtime.spawn(route_stored(
            Weak::clone(&self.me),
            Arc::clone(topic),
            receiver,
            pending,
        ));
    }
}

/// Routes a stored topic's groups that had to wait: settles the deliveries parked for full
/// subscribers (up to the topic's `block_timeout` each), then routes the rest of the group.
async fn route_stored(
    broker: Weak<Broker>,
    topic: TopicRef,
    mut groups: mpsc::UnboundedReceiver<Deferred>,
    pending: Arc<AtomicUsize>,
) {
    while let Some(Deferred { mut publisher, rest }) = groups.recv().await {
        let Some(broker) = broker.upgrade() else { return };
        if publisher.has_blocked() {
            broker.settle_blocked(&mut publisher).await;
        }
        publisher.begin_batch(&broker);
        for message in &rest {
            broker.route(
                &mut publisher,
                &topic,
                message.sequence,
                &message.headers,
                &message.payload,
            );
            if publisher.has_blocked() {
                broker.settle_blocked(&mut publisher).await;
                publisher.begin_batch(&broker);
            }
        }
        publisher.end_batch(&broker);
        pending.fetch_sub(1, Ordering::AcqRel);
    }
}
