//! HTTP consumers. HTTP has no connection to push to, so each (topic, durable subscription) that
//! HTTP clients consume from gets one pull consumer: a broker connection of its own whose
//! DELIVER frames wait in a queue until a `GET /messages/consume` takes them (long-polling up to
//! `wait`). It is one more consumer of the durable subscription, beside any native ones; its
//! deliveries are in flight (ack deadline running) from the moment the broker hands them over.
//! Idle pull consumers are detached after `idle_timeout`, which hands their unacknowledged
//! messages back for redelivery.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mycelium_broker::{Action, Broker, ConnectionInfo, Door, Principal, Verdict};

use crate::auth::Allow;
use mycelium_protocol::{Ack, DeliveryMeta, Frame, HeaderIter, Nack, SubscribeOptions, Term, frames};
use parking_lot::Mutex;

use crate::error::{ApiError, Kind};

/// Polling step while waiting (a consumer's wake-up is shared by its waiters).
const POLL: Duration = Duration::from_millis(50);

/// One message handed to an HTTP consumer.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// Its topic.
    pub topic: String,
    /// Its sequence.
    pub sequence: u64,
    /// Its id.
    pub id: [u8; 16],
    /// 1 for the first delivery.
    pub attempt: u32,
    /// Publish time, ns since the Unix epoch.
    pub publish_ns: u64,
    /// Headers.
    pub headers: Vec<(String, Bytes)>,
    /// Payload.
    pub payload: Bytes,
}

/// The pull consumer of one durable subscription.
#[derive(Debug)]
pub struct PullConsumer {
    topic: String,
    name: String,
    conn: Arc<ConnectionInfo>,
    queue: Mutex<VecDeque<Delivered>>,
    /// ACKs waiting for their ACK_OK, by request id.
    acks: Mutex<HashMap<u32, tokio::sync::oneshot::Sender<Result<(), String>>>>,
    next_request: AtomicU32,
    last_used: Mutex<Instant>,
}

/// Where a delivered message's acknowledgement goes.
#[derive(Debug, Clone)]
struct Handle {
    topic: String,
    name: String,
    sequence: u64,
    at: Instant,
}

/// Every pull consumer, and the handles of messages handed out over HTTP.
#[derive(Debug, Default)]
pub struct PullConsumers {
    consumers: Mutex<HashMap<(String, String), Arc<PullConsumer>>>,
    handles: Mutex<HashMap<[u8; 16], Handle>>,
}

/// A consumer's verdict over HTTP.
#[derive(Debug, Clone)]
pub enum HttpVerdict {
    /// Done.
    Ack,
    /// Failed: retry after the delay (or the backoff).
    Nack {
        /// Requeue delay.
        delay: Option<Duration>,
        /// The consumer's error text.
        error: String,
    },
    /// Give up: dead-letter it.
    Term {
        /// The consumer's error text.
        error: String,
    },
    /// Still working: extend the deadline.
    InProgress,
}

/// Handles older than this are forgotten (the message was redelivered long since).
const HANDLE_TTL: Duration = Duration::from_secs(24 * 3600);

impl PullConsumers {
    /// The pull consumer of `topic` / `name`, created (and the durable subscription opened with
    /// `options`) if needed.
    ///
    /// # Errors
    /// The subscription cannot be opened (not a stored topic, bad name).
    pub async fn get_or_create(
        &self,
        broker: &Arc<Broker>,
        principal: &Principal,
        topic: &str,
        name: &str,
        options: &SubscribeOptions<'_>,
    ) -> Result<Arc<PullConsumer>, ApiError> {
        let key = (topic.to_owned(), name.to_owned());
        let existing = self.consumers.lock().get(&key).cloned();
        if let Some(existing) = existing {
            // Someone else's subscription: refused, as over the native door.
            let owner = broker.durable_owner(topic, name);
            principal.allow(
                broker,
                Action::Durable {
                    topic,
                    name,
                    owner: owner.as_deref(),
                },
            )?;
            *existing.last_used.lock() = Instant::now();
            return Ok(existing);
        }
        let conn = broker.connect_unauthenticated(Door::Http, format!("http:{topic}/{name}"));
        conn.authenticate(principal.clone());
        conn.set_name("http-pull-consumer");
        let options = SubscribeOptions {
            durable: Some(name),
            ..options.clone()
        };
        let opened = match broker.durable_request(&conn, topic, &options) {
            Ok(request) => broker.subscribe_durable(&conn, 1, request, 0).await,
            Err(error) => Err(error),
        };
        if let Err(error) = opened {
            broker.disconnect(conn.id);
            return Err(match error {
                mycelium_broker::SubscribeError::InvalidFilter(e) => {
                    ApiError::invalid(vec![crate::error::FieldError {
                        field: "filter".into(),
                        message: e.to_string(),
                    }])
                }
                mycelium_broker::SubscribeError::Denied(denied) => ApiError::from(denied),
                limit @ mycelium_broker::SubscribeError::Limit(_) => {
                    ApiError::new(Kind::Conflict, limit.to_string())
                }
                other => ApiError::new(Kind::Invalid, other.to_string()),
            });
        }
        let consumer = Arc::new(PullConsumer {
            topic: topic.to_owned(),
            name: name.to_owned(),
            conn,
            queue: Mutex::new(VecDeque::new()),
            acks: Mutex::new(HashMap::new()),
            next_request: AtomicU32::new(1),
            last_used: Mutex::new(Instant::now()),
        });
        let mut consumers = self.consumers.lock();
        match consumers.get(&key) {
            // Lost a race with another request: keep the first, drop ours.
            Some(existing) => {
                broker.disconnect(consumer.conn.id);
                Ok(Arc::clone(existing))
            }
            None => {
                consumers.insert(key, Arc::clone(&consumer));
                Ok(consumer)
            }
        }
    }

    /// Up to `max` messages, waiting up to `wait` for the first.
    pub async fn consume(&self, consumer: &PullConsumer, max: usize, wait: Duration) -> Vec<Delivered> {
        let deadline = Instant::now() + wait;
        loop {
            consumer.drain();
            let taken: Vec<Delivered> = {
                let mut queue = consumer.queue.lock();
                let n = queue.len().min(max);
                queue.drain(..n).collect()
            };
            if !taken.is_empty() {
                let mut handles = self.handles.lock();
                let now = Instant::now();
                if handles.len() > 100_000 {
                    handles.retain(|_, h| now.duration_since(h.at) < HANDLE_TTL);
                }
                for message in &taken {
                    handles.insert(
                        message.id,
                        Handle {
                            topic: consumer.topic.clone(),
                            name: consumer.name.clone(),
                            sequence: message.sequence,
                            at: now,
                        },
                    );
                }
                *consumer.last_used.lock() = now;
                return taken;
            }
            let now = Instant::now();
            if now >= deadline {
                *consumer.last_used.lock() = now;
                return Vec::new();
            }
            let step = (deadline - now).min(POLL);
            let _ = tokio::time::timeout(step, consumer.conn.outbound.wait_for_work()).await;
        }
    }

    /// Applies a verdict to the message `id` handed out over HTTP; an ACK returns once it is
    /// durable.
    ///
    /// # Errors
    /// 404 for an id never handed out here (or long ago), 409 when the delivery is no longer in
    /// flight (redelivered or already settled).
    pub async fn verdict(
        &self,
        broker: &Broker,
        principal: &Principal,
        id: &[u8; 16],
        verdict: HttpVerdict,
    ) -> Result<(), ApiError> {
        // A message handed to someone else's subscription, or of a topic the caller may not
        // consume, gets the answer of an id never handed out: the refusal is counted, not told.
        let unknown = || {
            ApiError::not_found(
                "no message with this id was delivered to an HTTP consumer of yours (or it was long ago)",
            )
        };
        let handle = self.handles.lock().get(id).cloned().ok_or_else(unknown)?;
        let owner = broker.durable_owner(&handle.topic, &handle.name);
        principal
            .allow(broker, Action::Consume(&handle.topic))
            .and_then(|()| {
                principal.allow(
                    broker,
                    Action::Durable {
                        topic: &handle.topic,
                        name: &handle.name,
                        owner: owner.as_deref(),
                    },
                )
            })
            .map_err(|_| unknown())?;
        let consumer = self
            .consumers
            .lock()
            .get(&(handle.topic.clone(), handle.name.clone()))
            .cloned()
            .ok_or_else(|| {
                ApiError::new(
                    Kind::Conflict,
                    "the consumer that received this message was detached after being idle; the message is redelivered",
                )
            })?;
        *consumer.last_used.lock() = Instant::now();
        let ack = Ack {
            subscription_id: 1,
            sequence: handle.sequence,
        };
        let conflict = |text: String| ApiError::new(Kind::Conflict, text);
        match verdict {
            HttpVerdict::Ack => {
                let request_id = consumer.next_request.fetch_add(1, Ordering::Relaxed).max(1);
                let (tx, rx) = tokio::sync::oneshot::channel();
                consumer.acks.lock().insert(request_id, tx);
                if let Err(error) = broker.acknowledge(&consumer.conn, Verdict::Ack(ack), request_id) {
                    consumer.acks.lock().remove(&request_id);
                    return Err(conflict(error.to_string()));
                }
                self.handles.lock().remove(id);
                let mut rx = rx;
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    consumer.drain();
                    match rx.try_recv() {
                        Ok(Ok(())) => return Ok(()),
                        Ok(Err(text)) => return Err(conflict(text)),
                        Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                            return Err(ApiError::internal("the acknowledgement was lost"));
                        }
                        Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {}
                    }
                    if Instant::now() >= deadline {
                        return Err(ApiError::new(
                            Kind::Storage,
                            "the acknowledgement was not confirmed in time",
                        ));
                    }
                    let _ = tokio::time::timeout(POLL, consumer.conn.outbound.wait_for_work()).await;
                }
            }
            HttpVerdict::Nack { delay, error } => {
                let delay_ms = delay.map_or(0, |d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX).max(1));
                let nack = Nack {
                    ack,
                    delay_ms,
                    reason: &error,
                };
                broker
                    .acknowledge(&consumer.conn, Verdict::Nack(nack), 0)
                    .map_err(|e| conflict(e.to_string()))?;
                self.handles.lock().remove(id);
                Ok(())
            }
            HttpVerdict::Term { error } => {
                let term = Term { ack, reason: &error };
                broker
                    .acknowledge(&consumer.conn, Verdict::Term(term), 0)
                    .map_err(|e| conflict(e.to_string()))?;
                self.handles.lock().remove(id);
                Ok(())
            }
            HttpVerdict::InProgress => broker
                .acknowledge(&consumer.conn, Verdict::InProgress(ack), 0)
                .map_err(|e| conflict(e.to_string())),
        }
    }

    /// Detaches pull consumers idle for longer than `idle`; their unacked messages go back.
    pub fn reap(&self, broker: &Broker, idle: Duration) {
        let now = Instant::now();
        let doomed: Vec<Arc<PullConsumer>> = {
            let mut consumers = self.consumers.lock();
            let keys: Vec<(String, String)> = consumers
                .iter()
                .filter(|(_, c)| now.duration_since(*c.last_used.lock()) > idle)
                .map(|(k, _)| k.clone())
                .collect();
            keys.iter().filter_map(|k| consumers.remove(k)).collect()
        };
        for consumer in doomed {
            tracing::debug!(
                topic = consumer.topic,
                subscription = consumer.name,
                "detaching an idle HTTP consumer"
            );
            broker.disconnect(consumer.conn.id);
        }
    }

    /// Detaches the pull consumer of a deleted subscription.
    pub fn forget(&self, broker: &Broker, topic: &str, name: &str) {
        if let Some(consumer) = self.consumers.lock().remove(&(topic.to_owned(), name.to_owned())) {
            broker.disconnect(consumer.conn.id);
        }
    }
}

impl PullConsumer {
    /// Moves what the broker queued for this consumer into its queue (and completes ACKs).
    fn drain(&self) {
        let taken = self.conn.outbound.take_all();
        if taken.is_empty() {
            return;
        }
        let mut queue = self.queue.lock();
        for decoded in frames(&taken).map_while(Result::ok) {
            match decoded.frame {
                Frame::Deliver(d) => {
                    let meta = DeliveryMeta::decode(d.meta).unwrap_or(DeliveryMeta {
                        message_id: [0; 16],
                        attempt: 1,
                        publish_ns: 0,
                    });
                    let headers = HeaderIter::new(d.headers)
                        .map_while(Result::ok)
                        .map(|(k, v)| (k.to_owned(), Bytes::copy_from_slice(v)))
                        .collect();
                    queue.push_back(Delivered {
                        topic: d.topic.to_owned(),
                        sequence: d.sequence,
                        id: meta.message_id,
                        attempt: meta.attempt,
                        publish_ns: meta.publish_ns,
                        headers,
                        payload: Bytes::copy_from_slice(d.payload),
                    });
                }
                Frame::AckOk(_) => {
                    if let Some(tx) = self.acks.lock().remove(&decoded.request_id) {
                        let _ = tx.send(Ok(()));
                    }
                }
                Frame::Error(e) => {
                    if let Some(tx) = self.acks.lock().remove(&decoded.request_id) {
                        let _ = tx.send(Err(e.message.to_owned()));
                    }
                }
                _ => {}
            }
        }
    }
}
