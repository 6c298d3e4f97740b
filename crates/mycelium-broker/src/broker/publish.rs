//! The publish path: resolve the topic, check the payload, route, append to outbound buffers.
//!
//! It runs on the task that read the PUBLISH frame. Each delivery is appended to its subscriber's
//! outbound buffer right here; the subscriber's writer is woken once per read batch
//! ([`Publisher::end_batch`]), not once per message. Nothing here allocates per message in steady
//! state: the DELIVER frame is encoded straight into the outbound buffer, and the only allocation
//! is the rare copy kept for a subscriber that is full under the `block` policy.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::BytesMut;
use mycelium_protocol::{Deliver, ErrorCode, ErrorFrame, Frame, Publish};

use crate::broker::{Broker, ConnectionInfo};
use crate::routing::error::PublishError;
use crate::routing::outbound::{Append, Outbound};
use crate::routing::spec::{Delivery, Overflow, PayloadCodec, Routing, StorageKind};
use crate::routing::subscription::Subscription;
use crate::routing::topic::{TopicCounters, TopicRef};
use crate::store::{AppendRequest, Confirm, MessageProps, QueueError, Stored};

/// The largest header block a message may carry: a DELIVER's header length is 16 bits, and 4 KiB
/// stays free for what the broker adds (trace context, a dead letter's `x-dlq-*` headers).
pub const HEADERS_BYTES_MAX: usize = u16::MAX as usize - 4096;

/// A delivery waiting for room in a full subscriber's buffer (policy `block`).
#[derive(Debug)]
struct Blocked {
    sub: Arc<Subscription>,
    topic: TopicRef,
    frame: BytesMut,
}

/// Per-connection publishing state: the read batch, the writers to wake, a topic cache.
#[derive(Debug)]
pub struct Publisher {
    /// `None` for the broker's own storage writer.
    connection: Option<Arc<ConnectionInfo>>,
    batch: u64,
    touched: Vec<Arc<Outbound>>,
    blocked: Vec<Blocked>,
    /// Durable publishes of this read batch, handed to the storage writer together when the
    /// batch ends.
    durable: Vec<AppendRequest>,
    /// Durable publishes that did not fit the storage writer's queue.
    queued: Vec<AppendRequest>,
    last_topic: Option<TopicRef>,
}

/// A message published from inside the process ([`Broker::publish_local_many`]).
#[derive(Debug, Clone)]
pub struct LocalMessage {
    /// Its topic.
    pub topic: String,
    /// Header block.
    pub headers: bytes::Bytes,
    /// Payload.
    pub payload: bytes::Bytes,
    /// Properties.
    pub props: MessageProps,
}

/// A message the broker accepted.
#[derive(Debug, Clone)]
pub struct Published {
    /// Its per-topic sequence (0 when `queued`: the storage writer assigns it).
    pub sequence: u64,
    /// The topic it went to.
    pub topic: TopicRef,
    /// Handed to the storage writer (`storage = "disk"`): the writer confirms it once durable.
    pub queued: bool,
}

impl Publisher {
    /// Publishing state for `connection`.
    pub fn new(connection: Arc<ConnectionInfo>) -> Self {
        Publisher {
            connection: Some(connection),
            ..Publisher::internal()
        }
    }

    /// Publishing state for the broker's own storage writer.
    pub(crate) fn internal() -> Self {
        Publisher {
            connection: None,
            batch: 0,
            touched: Vec::new(),
            blocked: Vec::new(),
            durable: Vec::new(),
            queued: Vec::new(),
            last_topic: None,
        }
    }

    /// Starts a read batch: call before routing the frames of one read.
    pub fn begin_batch(&mut self, broker: &Broker) {
        self.batch = broker.next_batch();
    }

    /// Ends a read batch: wakes every writer the batch appended to, once each, and hands the
    /// batch's durable publishes to the storage writer in one go. What does not fit its queue
    /// waits in this publisher: [`Publisher::has_blocked`] then says so.
    pub fn end_batch(&mut self, broker: &Broker) {
        for outbound in self.touched.drain(..) {
            outbound.wake();
        }
        if self.durable.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.durable);
        if !self.queued.is_empty() {
            // Behind publishes already waiting for room: keep their order.
            self.queued.extend(batch);
            return;
        }
        let Some(store) = broker.durable() else {
            QueueError::Closed(batch).fail();
            return;
        };
        match store.queue.try_send(batch) {
            Ok(()) => {}
            Err(QueueError::Full(batch)) => self.queued = batch,
            Err(closed @ QueueError::Closed(_)) => closed.fail(),
        }
    }

    /// Whether some delivery waits for a full subscriber or for room in the storage writer's
    /// queue; call [`Broker::settle_blocked`] before reading the next frame, so order is kept.
    pub fn has_blocked(&self) -> bool {
        !self.blocked.is_empty() || !self.queued.is_empty()
    }

    fn topic(&mut self, broker: &Broker, name: &str) -> Result<TopicRef, PublishError> {
        if let Some(topic) = &self.last_topic
            && topic.name() == name
            && !topic.is_deleted()
        {
            return Ok(Arc::clone(topic));
        }
        // Checked before the topic is looked up or created: a refusal says nothing of whether
        // it exists. The cached topic stands for the check until the topic changes.
        if let Some(connection) = &self.connection {
            broker.authorize_connection(connection, crate::broker::Action::Publish(name))?;
        }
        let topic = broker.topic_or_create(name)?;
        self.last_topic = Some(Arc::clone(&topic));
        Ok(topic)
    }
}

impl Broker {
    /// Publishes one message: routes it to every subscription its topic's rule selects.
    ///
    /// # Errors
    /// The message is refused whole (nothing delivered): bad or unknown topic, too large, invalid
    /// TLV, no domain mapping, properties the topic cannot honour.
    pub fn publish(
        &self,
        publisher: &mut Publisher,
        message: &Publish<'_>,
    ) -> Result<Published, PublishError> {
        self.publish_request(publisher, message, 0)
    }

    /// [`Broker::publish`] for a frame with request id `request_id`: a durable topic's writer
    /// answers that id with PUBLISH_OK (or ERROR) once the message is stored.
    ///
    /// # Errors
    /// As [`Broker::publish`], and `StorageUnavailable` when the storage writer has stopped.
    pub fn publish_request(
        &self,
        publisher: &mut Publisher,
        message: &Publish<'_>,
        request_id: u32,
    ) -> Result<Published, PublishError> {
        let topic = if message.topic.is_empty() {
            let adjustable = self.adjustable();
            let name = Self::mapped_topic(&adjustable, message.payload)?;
            publisher.topic(self, name)?
        } else {
            publisher.topic(self, message.topic)?
        };
        if let Err(error) = self.check(&topic, message) {
            TopicCounters::add(&topic.counters.rejected, 1);
            return Err(error);
        }
        let counters = &topic.counters;
        TopicCounters::add(&counters.published, 1);
        TopicCounters::add(&counters.bytes_in, message.payload.len() as u64);
        if let Some(connection) = &publisher.connection {
            connection.published.fetch_add(1, Ordering::Relaxed);
        }
        // Tracing (off: one relaxed load): a message carrying a trace context gets a publish span
        // continuing it, and goes on with the broker's context in its headers.
        if mycelium_trace::enabled() && mycelium_trace::has_context(message.headers) {
            let span = mycelium_trace::span("mycelium.publish", topic.name(), message.headers);
            let _entered = span.enter();
            let headers = mycelium_trace::with_context(message.headers, &mycelium_trace::context_of(&span));
            let traced = Publish {
                headers: &headers,
                ..*message
            };
            return self.publish_checked(publisher, &topic, &traced, request_id);
        }
        self.publish_checked(publisher, &topic, message, request_id)
    }

    fn publish_checked(
        &self,
        publisher: &mut Publisher,
        topic: &TopicRef,
        message: &Publish<'_>,
        request_id: u32,
    ) -> Result<Published, PublishError> {
        if topic.spec().storage == StorageKind::Disk {
            return self.queue_durable(publisher, topic, message, request_id);
        }
        let sequence = topic.next_sequence();
        self.route(publisher, topic, sequence, message.headers, message.payload);
        Ok(Published {
            sequence,
            topic: Arc::clone(topic),
            queued: false,
        })
    }

    /// Publishes one message from inside the process (HTTP, DLQ replay) and waits until it is
    /// stored (durable topics: under the topic's fsync policy) or routed (in-memory topics, whose
    /// messages get no id).
    ///
    /// # Errors
    /// As [`Broker::publish`]; `StorageUnavailable` when the store refused it.
    pub async fn publish_local(
        &self,
        topic: &str,
        headers: bytes::Bytes,
        payload: bytes::Bytes,
        props: MessageProps,
    ) -> Result<(TopicRef, Stored), PublishError> {
        let message = LocalMessage {
            topic: topic.to_owned(),
            headers,
            payload,
            props,
        };
        self.publish_local_many(vec![message])
            .await
            .pop()
            .unwrap_or_else(|| Err(PublishError::StorageUnavailable("nothing was published".into())))
    }

    /// Publishes messages in order from inside the process; stored ones are handed to the storage
    /// writer all together (one group commit can cover them) and the results come back in order.
    /// A message refused by validation does not stop the others.
    pub async fn publish_local_many(
        &self,
        messages: Vec<LocalMessage>,
    ) -> Vec<Result<(TopicRef, Stored), PublishError>> {
        enum Step {
            Done(Result<(TopicRef, Stored), PublishError>),
            Waiting(TopicRef, tokio::sync::oneshot::Receiver<Result<Stored, String>>),
        }
        let mut publisher = Publisher::internal();
        publisher.begin_batch(self);
        let mut steps = Vec::with_capacity(messages.len());
        let mut durable = Vec::new();
        for LocalMessage {
            topic,
            headers,
            payload,
            props,
        } in messages
        {
            let topic = match publisher.topic(self, &topic) {
                Ok(topic) => topic,
                Err(error) => {
                    steps.push(Step::Done(Err(error)));
                    continue;
                }
            };
            let key = props.idempotency_key.clone();
            let message = Publish {
                topic: topic.name(),
                headers: &headers,
                props: mycelium_protocol::Props {
                    priority: (props.priority > 0).then_some(props.priority),
                    ttl_ms: props.ttl.map(|d| d.as_millis() as u64),
                    delay_ms: props.delay.map(|d| d.as_millis() as u64),
                    idempotency_key: key.as_deref(),
                    not_before_ns: props.not_before_ns,
                },
                confirm: true,
                payload: &payload,
            };
            if let Err(error) = self.check(&topic, &message) {
                TopicCounters::add(&topic.counters.rejected, 1);
                steps.push(Step::Done(Err(error)));
                continue;
            }
            let counters = &topic.counters;
            TopicCounters::add(&counters.published, 1);
            TopicCounters::add(&counters.bytes_in, payload.len() as u64);
            let span = (mycelium_trace::enabled() && mycelium_trace::has_context(&headers))
                .then(|| mycelium_trace::span("mycelium.publish", topic.name(), &headers));
            let _entered = span.as_ref().map(tracing::Span::enter);
            let headers = match &span {
                Some(span) => mycelium_trace::with_context(&headers, &mycelium_trace::context_of(span)),
                None => headers,
            };
            if topic.spec().storage != StorageKind::Disk {
                let sequence = topic.next_sequence();
                self.route(&mut publisher, &topic, sequence, &headers, &payload);
                if publisher.has_blocked() {
                    self.settle_blocked(&mut publisher).await;
                    publisher.begin_batch(self);
                }
                let stored = Stored {
                    sequence,
                    id: [0; 16],
                    duplicate: false,
                };
                steps.push(Step::Done(Ok((topic, stored))));
                continue;
            }
            if self.durable().is_none() {
                let error = PublishError::StorageUnavailable("no storage is configured".into());
                steps.push(Step::Done(Err(error)));
                continue;
            }
            let (reply, answer) = tokio::sync::oneshot::channel();
            durable.push(AppendRequest {
                topic: Arc::clone(&topic),
                headers,
                payload,
                props,
                confirm: Confirm::Reply(reply),
                received_ns: mycelium_codec::now_ns(),
            });
            steps.push(Step::Waiting(topic, answer));
        }
        publisher.end_batch(self);
        // Every durable publish of the request in one hand-over; a refused one answers each
        // waiting step with the reason.
        if let Some(store) = self.durable()
            && let Err(error) = store.queue.send(durable).await
        {
            error.fail();
        }
        let mut results = Vec::with_capacity(steps.len());
        for step in steps {
            results.push(match step {
                Step::Done(result) => result,
                Step::Waiting(topic, answer) => match answer.await {
                    Ok(Ok(stored)) => Ok((topic, stored)),
                    Ok(Err(text)) => Err(PublishError::StorageUnavailable(text)),
                    Err(_) => Err(PublishError::StorageUnavailable(
                        "the storage writer has stopped".into(),
                    )),
                },
            });
        }
        results
    }

    fn queue_durable(
        &self,
        publisher: &mut Publisher,
        topic: &TopicRef,
        message: &Publish<'_>,
        request_id: u32,
    ) -> Result<Published, PublishError> {
        let Some(store) = self.durable() else {
            return Err(PublishError::StorageUnavailable(
                "no storage is configured".into(),
            ));
        };
        if store.queue.is_closed() {
            return Err(PublishError::StorageUnavailable(
                "the storage writer has stopped".into(),
            ));
        }
        let confirm = match (&publisher.connection, message.confirm) {
            (Some(connection), true) => Confirm::Frame(Arc::clone(&connection.outbound), request_id),
            _ => Confirm::None,
        };
        publisher.durable.push(AppendRequest {
            topic: Arc::clone(topic),
            headers: bytes::Bytes::copy_from_slice(message.headers),
            payload: bytes::Bytes::copy_from_slice(message.payload),
            props: MessageProps::from(&message.props),
            confirm,
            received_ns: mycelium_codec::now_ns(),
        });
        Ok(Published {
            sequence: 0,
            topic: Arc::clone(topic),
            queued: true,
        })
    }

    /// Routes a message that already has its sequence to the topic's subscriptions.
    pub(crate) fn route(
        &self,
        publisher: &mut Publisher,
        topic: &TopicRef,
        sequence: u64,
        headers: &[u8],
        payload: &[u8],
    ) {
        let counters = &topic.counters;
        let deliver = Deliver {
            subscription_id: 0,
            sequence,
            topic: topic.name(),
            headers,
            meta: &[],
            payload,
        };
        let frame_len = deliver.frame_len();
        let spec = topic.spec();
        let limit = spec.buffer_bytes;
        let route = topic.route.load();
        let has_room = |s: &Subscription| s.outbound.has_room(frame_len, limit);
        let accepts = |s: &Subscription| s.accepts(headers, payload);
        match spec.routing {
            Routing::Fanout | Routing::Queue => {
                for sub in &route.each {
                    if sub.filter.is_none() || accepts(sub) {
                        self.offer(publisher, topic, sub, deliver, frame_len);
                    } else {
                        TopicCounters::add(&counters.filtered, 1);
                    }
                }
                for group in &route.groups {
                    match group.pick(spec.balance, has_room, accepts) {
                        Some(sub) => self.offer(publisher, topic, sub, deliver, frame_len),
                        None => TopicCounters::add(&counters.filtered, 1),
                    }
                }
            }
            Routing::Direct => {
                let live = route.ordered.iter().filter(|s| s.is_live() && accepts(s));
                match live.clone().find(|s| has_room(s)).or_else(|| live.clone().next()) {
                    Some(sub) => self.offer(publisher, topic, sub, deliver, frame_len),
                    None => TopicCounters::add(&counters.dropped, 1),
                }
            }
        }
    }

    fn mapped_topic<'a>(adjustable: &'a super::Adjustable, payload: &[u8]) -> Result<&'a str, PublishError> {
        let message = mycelium_codec::validate(payload)
            .map_err(|e| PublishError::NoRoute(format!("the payload is not a valid TLV message: {e}")))?;
        let domain = message
            .relay_domain()
            .map_err(|e| PublishError::NoRoute(format!("the payload's relay domain is unknown: {e}")))?;
        adjustable
            .domain_topic(domain)
            .ok_or_else(|| PublishError::NoRoute(format!("relay domain `{domain}` maps to no topic")))
    }

    fn check(&self, topic: &TopicRef, message: &Publish<'_>) -> Result<(), PublishError> {
        let spec = topic.spec();
        // A DELIVER carries the header block in a 16-bit length, and a dead letter adds its
        // `x-dlq-*` headers: a larger block could be accepted but never delivered.
        if message.headers.len() > HEADERS_BYTES_MAX {
            return Err(PublishError::Unsupported(format!(
                "a header block of {} bytes is larger than the {HEADERS_BYTES_MAX} bytes a delivery can carry",
                message.headers.len()
            )));
        }
        if message.payload.len() > spec.message_bytes_max {
            return Err(PublishError::MessageTooLarge {
                topic: topic.name().to_owned(),
                size: message.payload.len(),
                max: spec.message_bytes_max,
            });
        }
        if spec.codec == PayloadCodec::Tlv
            && let Err(error) = mycelium_codec::validate(message.payload)
        {
            return Err(PublishError::InvalidTlv {
                topic: topic.name().to_owned(),
                error,
            });
        }
        if spec.storage != StorageKind::Disk && !message.props.is_empty() {
            return Err(PublishError::Unsupported(format!(
                "topic `{}` is an in-memory at-most-once topic: message properties (priority, ttl, delay, \
                 idempotency key) need a topic with delivery guarantees",
                topic.name()
            )));
        }
        if spec.delivery == Delivery::ExactlyOnce
            && message.props.idempotency_key.is_none_or(<[u8]>::is_empty)
        {
            return Err(PublishError::Unsupported(format!(
                "topic `{}` is exactly_once: every publish needs an idempotency key",
                topic.name()
            )));
        }
        if message.props.priority.is_some_and(|p| p > 0) && !spec.priority {
            return Err(PublishError::Unsupported(format!(
                "topic `{}` does not have priority = true: a message priority would be ignored",
                topic.name()
            )));
        }
        Ok(())
    }

    #[inline]
    fn offer(
        &self,
        publisher: &mut Publisher,
        topic: &TopicRef,
        sub: &Arc<Subscription>,
        mut deliver: Deliver<'_>,
        frame_len: usize,
    ) {
        deliver.subscription_id = sub.id;
        let spec = topic.spec();
        let drop_oldest = spec.overflow == Overflow::DropOldest;
        let (outcome, first_in_batch) = sub.outbound.append_delivery(
            frame_len,
            spec.buffer_bytes,
            drop_oldest,
            publisher.batch,
            |buf| {
                // Cannot fail: topics are <= 255 bytes and header blocks arrived in a u16 block.
                let _ = deliver.encode_frame(buf);
            },
        );
        if first_in_batch {
            publisher.touched.push(Arc::clone(&sub.outbound));
        }
        let counters = &topic.counters;
        match outcome {
            Append::Done { dropped_older } => {
                self.count_dropped(topic, sub, dropped_older);
                self.count_delivery(topic, sub, frame_len);
            }
            Append::DroppedNew { dropped_older } => self.count_dropped(topic, sub, dropped_older + 1),
            Append::Full => match spec.overflow {
                Overflow::Block if !sub.may_block => {
                    self.incidents.block_refused.fetch_add(1, Ordering::Relaxed);
                    self.disconnect_slow(
                        topic,
                        sub,
                        "overflow = block, but a subscriber of the same principal was cut off as slow within \
                         the last 60 s: it may not make publishers wait again yet",
                    );
                }
                Overflow::Block => {
                    let mut frame = BytesMut::with_capacity(frame_len);
                    let _ = deliver.encode_frame(&mut frame);
                    TopicCounters::add(&counters.blocked, 1);
                    sub.blocked.fetch_add(1, Ordering::Relaxed);
                    publisher.blocked.push(Blocked {
                        sub: Arc::clone(sub),
                        topic: Arc::clone(topic),
                        frame,
                    });
                }
                Overflow::Disconnect | Overflow::DropOldest => {
                    self.disconnect_slow(topic, sub, "overflow = disconnect")
                }
            },
            Append::Closed => {}
        }
    }

    fn count_delivery(&self, topic: &TopicRef, sub: &Subscription, frame_len: usize) {
        TopicCounters::add(&topic.counters.delivered, 1);
        TopicCounters::add(&topic.counters.bytes_out, frame_len as u64);
        sub.delivered.fetch_add(1, Ordering::Relaxed);
    }

    fn count_dropped(&self, topic: &TopicRef, sub: &Subscription, dropped: u64) {
        if dropped > 0 {
            TopicCounters::add(&topic.counters.dropped, dropped);
            sub.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
    }

    /// Disconnects a subscriber that cannot keep up: a final ERROR, then close.
    fn disconnect_slow(&self, topic: &TopicRef, sub: &Subscription, why: &str) {
        if sub.outbound.is_closing() {
            return;
        }
        TopicCounters::add(&topic.counters.slow_disconnects, 1);
        let message = format!(
            "slow consumer: subscription {} (`{}`) on topic `{}` had {} bytes pending, over its buffer of {} \
             bytes ({why}); disconnecting",
            sub.id,
            sub.pattern,
            topic.name(),
            sub.outbound.pending_bytes(),
            topic.spec().buffer_bytes
        );
        tracing::warn!(
            topic = topic.name(),
            subscription = sub.id,
            connection = sub.connection_id(),
            principal = %sub.owner,
            "{message}"
        );
        sub.outbound.append_final(|buf| {
            let _ = mycelium_protocol::encode(
                buf,
                0,
                &Frame::Error(ErrorFrame::new(ErrorCode::SlowConsumer, &message)),
            );
        });
        sub.outbound.close();
        self.cut_off(&sub.owner);
    }

    /// Delivers what [`Broker::publish`] left waiting for full subscribers (policy `block`): waits
    /// for each to drain, up to the topic's `block_timeout`, and disconnects those that do not.
    /// The caller must not read further frames from this publisher until it returns.
    pub async fn settle_blocked(&self, publisher: &mut Publisher) {
        publisher.end_batch(self);
        // Durable publishes wait for room in the storage writer's queue, in order.
        let queued = std::mem::take(&mut publisher.queued);
        if !queued.is_empty() {
            let sent = match self.durable() {
                Some(store) => store.queue.send(queued).await,
                None => Err(QueueError::Closed(queued)),
            };
            if let Err(error) = sent {
                error.fail();
            }
        }
        let blocked = std::mem::take(&mut publisher.blocked);
        for Blocked { sub, topic, frame } in blocked {
            let spec = topic.spec();
            let deadline = tokio::time::Instant::now() + spec.block_timeout;
            loop {
                let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
                if !sub
                    .outbound
                    .wait_for_room(frame.len(), spec.buffer_bytes, remaining)
                    .await
                {
                    if sub.is_live() {
                        let why = format!(
                            "overflow = block, still full after block_timeout of {:?}",
                            spec.block_timeout
                        );
                        self.disconnect_slow(&topic, &sub, &why);
                    }
                    break;
                }
                let (outcome, _) =
                    sub.outbound
                        .append_delivery(frame.len(), spec.buffer_bytes, false, 0, |buf| {
                            buf.extend_from_slice(&frame);
                        });
                match outcome {
                    Append::Done { .. } | Append::DroppedNew { .. } => {
                        self.count_delivery(&topic, &sub, frame.len());
                        sub.outbound.wake();
                        break;
                    }
                    Append::Closed => break,
                    // Another publisher took the room first: wait again.
                    Append::Full => continue,
                }
            }
        }
    }
}
