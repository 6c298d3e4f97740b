//! Durable subscriptions: a named, persistent position on a `storage = "disk"` topic, shared by
//! every consumer that subscribes with the same durable name (each message to one of them).
//!
//! One dispatcher task per durable subscription drives its [`SubscriptionState`]: it expires ack
//! deadlines, hands out due retries and new messages (read from the topic's log) to its consumers
//! round robin, with a DELIVER metadata block (message id, attempt, publish time), and moves
//! messages that exhausted `max_deliveries` (or got TERM) to `{topic}.dlq`, keeping the original
//! topic, sequence, id, attempts and reason in headers. The acked-up-to floor is persisted
//! (write, fsync, rename) whenever it moves, at most every `PERSIST_EVERY`, and when the
//! subscription stops: after a crash at most the acks of that last interval are redelivered.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mycelium_protocol::{Deliver, DeliveryMeta, StartPosition, SubscribeOptions, encode_headers};
use mycelium_storage::{DiskBackend, StorageBackend, StoredMessage};
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::broker::Broker;
use crate::delivery::{DeadReason, DeliveryPolicy, Outcome, SubscriptionState};
use crate::durable::AppendRequest;
use crate::outbound::Outbound;
use crate::topic::TopicRef;

/// Floor writes are spaced at least this far apart.
const PERSIST_EVERY: Duration = Duration::from_millis(20);
/// Deliveries handed out per dispatcher pass.
const PASS_MAX: usize = 256;

#[derive(Debug, Clone)]
pub(crate) struct Consumer {
    pub(crate) outbound: Arc<Outbound>,
    pub(crate) subscription_id: u32,
    pub(crate) connection_id: u64,
}

/// One durable subscription.
#[derive(Debug)]
pub(crate) struct DurableSub {
    pub(crate) topic: TopicRef,
    pub(crate) name: String,
    pub(crate) state: Mutex<SubscriptionState>,
    pub(crate) consumers: Mutex<Vec<Consumer>>,
    pub(crate) wake: Notify,
    cursor: AtomicUsize,
    base: tokio::time::Instant,
    state_file: PathBuf,
    /// Serialises floor writes (the dispatcher's and the shutdown's share one temp file).
    persisting: Mutex<()>,
    /// Which consumer (connection, subscription id) each in-flight message went to.
    assigned: Mutex<std::collections::HashMap<u64, (u64, u32)>>,
    stopped: AtomicBool,
}

/// The policy a SUBSCRIBE's options ask for.
pub(crate) fn policy_of(options: &SubscribeOptions<'_>) -> DeliveryPolicy {
    let default = DeliveryPolicy::default();
    DeliveryPolicy {
        ack_wait: options
            .ack_wait_ms
            .map_or(default.ack_wait, |ms| Duration::from_millis(ms.max(1).into())),
        max_deliveries: match options.max_deliveries {
            Some(0) => None,
            Some(n) => Some(n),
            None => default.max_deliveries,
        },
        backoff: if options.backoff_ms.is_empty() {
            default.backoff
        } else {
            options
                .backoff_ms
                .iter()
                .map(|ms| Duration::from_millis((*ms).into()))
                .collect()
        },
        max_in_flight: options
            .max_in_flight
            .map_or(default.max_in_flight, |n| (n as usize).max(1)),
        jitter: default.jitter,
    }
}

impl DurableSub {
    /// Opens (resuming a persisted floor) or creates the durable subscription `name` on `topic`.
    pub(crate) fn open(
        topic: TopicRef,
        name: &str,
        options: &SubscribeOptions<'_>,
        backend: &DiskBackend,
        data_dir: &std::path::Path,
    ) -> Result<Arc<DurableSub>, mycelium_storage::StorageError> {
        let state_file = data_dir
            .join("subscriptions")
            .join(topic.name())
            .join(format!("{name}.floor"));
        let bounds = backend.bounds(topic.name())?;
        let persisted = std::fs::read_to_string(&state_file)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        let start = match persisted {
            Some(floor) => floor,
            None => match options.start.unwrap_or_default() {
                StartPosition::New => bounds.next,
                StartPosition::Beginning => bounds.first,
                StartPosition::Sequence(s) => s.max(bounds.first),
                StartPosition::Time(t) => backend.seek_time(topic.name(), t)?,
            },
        };
        let seed = start ^ (name.len() as u64) << 32;
        let sub = Arc::new(DurableSub {
            topic,
            name: name.to_owned(),
            state: Mutex::new(SubscriptionState::new(policy_of(options), start, seed)),
            consumers: Mutex::new(Vec::new()),
            wake: Notify::new(),
            cursor: AtomicUsize::new(0),
            base: tokio::time::Instant::now(),
            state_file,
            persisting: Mutex::new(()),
            assigned: Mutex::new(std::collections::HashMap::new()),
            stopped: AtomicBool::new(false),
        });
        sub.persist_floor(start)?;
        Ok(sub)
    }

    /// Monotonic nanoseconds for the state machine.
    pub(crate) fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Writes the current floor now (shutdown: called after [`DurableSub::stop`], so the dispatcher
    /// no longer writes concurrently).
    pub(crate) fn persist_now(&self) {
        let floor = self.state.lock().floor();
        if let Err(error) = self.persist_floor(floor) {
            tracing::error!(%error, "persisting a subscription's position failed");
        }
    }

    fn persist_floor(&self, floor: u64) -> Result<(), mycelium_storage::StorageError> {
        let _one_writer = self.persisting.lock();
        let io = |e| mycelium_storage::StorageError::Io {
            path: self.state_file.display().to_string(),
            source: e,
        };
        if let Some(dir) = self.state_file.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = self.state_file.with_extension("tmp");
        std::fs::write(&tmp, floor.to_string()).map_err(io)?;
        std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io)?;
        std::fs::rename(&tmp, &self.state_file).map_err(io)
    }

    /// The dispatcher loop; ends when the subscription is stopped or the broker is gone.
    pub(crate) async fn run(self: Arc<Self>, broker: Weak<Broker>, backend: Arc<DiskBackend>) {
        let mut persisted = self.state.lock().floor();
        let mut last_persist = tokio::time::Instant::now();
        loop {
            let wake = self.wake.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            if self.stopped.load(Ordering::Acquire) {
                break;
            }
            let Some(broker) = broker.upgrade() else { break };
            let now = self.now_ns();
            let available = backend.bounds(self.topic.name()).map_or(0, |b| b.next);
            let has_consumers = !self.consumers.lock().is_empty();
            let (outcomes, deliveries, wakeup, floor) = {
                let mut state = self.state.lock();
                let outcomes = state.expire(now);
                let deliveries = if has_consumers {
                    state.next_deliveries(now, available, PASS_MAX)
                } else {
                    Vec::new()
                };
                // Without consumers, due retries cannot go anywhere: wake only for deadlines (a
                // consumer arriving wakes the dispatcher anyway).
                let wakeup = if has_consumers {
                    state.next_wakeup_ns()
                } else {
                    state.next_deadline_ns()
                };
                (outcomes, deliveries, wakeup, state.floor())
            };
            for outcome in outcomes {
                self.handle_outcome(&broker, &backend, outcome);
            }
            for delivery in &deliveries {
                match backend.read(self.topic.name(), delivery.sequence, 1, usize::MAX) {
                    Ok(found) if found.first().is_some_and(|m| m.sequence == delivery.sequence) => {
                        self.send(&found[0], delivery.attempt);
                    }
                    Ok(_) => self.state.lock().skip(delivery.sequence), // removed by retention
                    Err(error) => {
                        tracing::error!(topic = self.topic.name(), %error, "reading a durable message failed");
                        self.state.lock().skip(delivery.sequence);
                    }
                }
            }
            if floor != persisted
                && last_persist.elapsed() >= PERSIST_EVERY
                && !self.stopped.load(Ordering::Acquire)
            {
                match self.persist_floor(floor) {
                    Ok(()) => {
                        persisted = floor;
                        last_persist = tokio::time::Instant::now();
                    }
                    Err(error) => tracing::error!(%error, "persisting a subscription's position failed"),
                }
            }
            drop(broker);
            if deliveries.len() == PASS_MAX {
                continue; // more may be ready
            }
            let persist_due = (floor != persisted).then(|| last_persist + PERSIST_EVERY);
            let timer = wakeup
                .map(|at| self.base + Duration::from_nanos(at))
                .into_iter()
                .chain(persist_due)
                .min();
            tokio::select! {
                () = &mut wake => {}
                () = sleep_until(timer) => {}
            }
        }
        // Stopped: the broker persists the final floor itself (`Broker::close_storage`).
        let _ = persisted;
    }

    /// Sends one delivery to the next live consumer.
    fn send(&self, message: &StoredMessage, attempt: u32) {
        let consumers = self.consumers.lock();
        let live: Vec<&Consumer> = consumers.iter().filter(|c| !c.outbound.is_closing()).collect();
        if live.is_empty() {
            return; // stays in flight; its deadline brings it back
        }
        let consumer = live[self.cursor.fetch_add(1, Ordering::Relaxed) % live.len()];
        self.assigned.lock().insert(
            message.sequence,
            (consumer.connection_id, consumer.subscription_id),
        );
        let mut meta = BytesMut::with_capacity(DeliveryMeta::LEN);
        DeliveryMeta {
            message_id: message.id,
            attempt,
            publish_ns: message.publish_ns,
        }
        .encode(&mut meta);
        let deliver = Deliver {
            subscription_id: consumer.subscription_id,
            sequence: message.sequence,
            topic: self.topic.name(),
            headers: &message.headers,
            meta: &meta,
            payload: &message.payload,
        };
        // Durable deliveries are bounded by max_in_flight, not by the outbound policy.
        consumer.outbound.append_control(|buf| {
            let _ = deliver.encode_frame(buf);
        });
        crate::topic::TopicCounters::add(&self.topic.counters.delivered, 1);
    }

    /// A consumer left (disconnect or unsubscribe): what it held unacknowledged is redelivered now
    /// to the others (the attempt counts), instead of waiting out its ack deadline.
    pub(crate) fn release(
        &self,
        broker: &Broker,
        backend: &DiskBackend,
        connection_id: u64,
        subscription_id: u32,
    ) {
        let held: Vec<u64> = {
            let mut assigned = self.assigned.lock();
            let held: Vec<u64> = assigned
                .iter()
                .filter(|(_, c)| **c == (connection_id, subscription_id))
                .map(|(s, _)| *s)
                .collect();
            for sequence in &held {
                assigned.remove(sequence);
            }
            held
        };
        let now = self.now_ns();
        for sequence in held {
            let outcome = self.state.lock().nack(sequence, Some(Duration::ZERO), now);
            if let Ok(outcome) = outcome {
                self.handle_outcome(broker, backend, outcome);
            }
        }
        self.wake.notify_one();
    }

    /// Forgets which consumer holds `sequence` (it was acknowledged or given up).
    pub(crate) fn settled(&self, sequence: u64) {
        self.assigned.lock().remove(&sequence);
    }

    /// Acts on what the state machine decided.
    pub(crate) fn handle_outcome(&self, broker: &Broker, backend: &DiskBackend, outcome: Outcome) {
        let Outcome::DeadLetter {
            sequence,
            attempts,
            reason,
        } = outcome
        else {
            return;
        };
        let original = match backend.read(self.topic.name(), sequence, 1, usize::MAX) {
            Ok(found) if found.first().is_some_and(|m| m.sequence == sequence) => found.into_iter().next(),
            _ => None,
        };
        let Some(original) = original else { return };
        let reason = match reason {
            DeadReason::MaxDeliveries => "max_deliveries",
            DeadReason::Terminated => "terminated",
        };
        let id = uuid_text(&original.id);
        let (seq_text, attempts_text) = (sequence.to_string(), attempts.to_string());
        let mut headers = BytesMut::from(&original.headers[..]);
        let _ = encode_headers(
            &mut headers,
            [
                ("x-dlq-topic", self.topic.name().as_bytes()),
                ("x-dlq-subscription", self.name.as_bytes()),
                ("x-dlq-sequence", seq_text.as_bytes()),
                ("x-dlq-message-id", id.as_bytes()),
                ("x-dlq-attempts", attempts_text.as_bytes()),
                ("x-dlq-reason", reason.as_bytes()),
            ],
        );
        broker.dead_letter(&self.topic, headers.freeze(), original.payload);
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn uuid_text(id: &[u8; 16]) -> String {
    uuid::Uuid::from_bytes(*id).to_string()
}

/// Builds the append request for a dead-lettered message.
pub(crate) fn dead_letter_request(dlq: TopicRef, headers: Bytes, payload: Bytes) -> AppendRequest {
    AppendRequest {
        topic: dlq,
        headers,
        payload,
        confirm: None,
    }
}
