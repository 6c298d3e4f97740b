//! Subscriptions (plain, filtered, queue groups, durable) and the acknowledgements of durable
//! deliveries.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mycelium_protocol::{Frame, Subscribe, SubscriptionRef, encode};
use tokio::sync::{mpsc, oneshot};

use super::{Client, LocalSub, Pending, Reply, Shared};
use crate::message::{Message, Subscription};
use crate::{Error, ErrorKind};

/// How a durable subscription starts and retries (every field optional; broker defaults apply).
#[derive(Debug, Clone, Default)]
pub struct DurableOptions {
    /// Where a new durable subscription starts (ignored when it exists already).
    pub start: mycelium_protocol::StartPosition,
    /// Ack deadline (default 30 s).
    pub ack_wait: Option<Duration>,
    /// Attempts before dead-lettering (default 5; 0: unlimited).
    pub max_deliveries: Option<u32>,
    /// Messages in flight at once (default 1000).
    pub max_in_flight: Option<u32>,
    /// Retry delays (default 2 s, 4 s, 8 s, 16 s, 32 s, with jitter).
    pub backoff: Vec<Duration>,
    /// Content filter (docs/FILTERS.md), fixed when the subscription is created.
    pub filter: Option<String>,
}

impl Client {
    /// Subscribes to a topic or pattern.
    ///
    /// # Errors
    /// `Server` (invalid pattern), `Timeout`, `CircuitOpen`, `Closed`. While disconnected the
    /// subscription is recorded and made on reconnect.
    pub async fn subscribe(&self, pattern: &str) -> Result<Subscription, Error> {
        self.shared.subscribe(pattern, None).await
    }

    /// Subscribes with a content filter (docs/FILTERS.md): only matching messages are delivered.
    /// In a queue group (`group`), each message goes to one member whose filter accepts it.
    ///
    /// # Errors
    /// As [`Client::subscribe`]; `Server` with `InvalidFilter` naming the position of the fault.
    pub async fn subscribe_filtered(
        &self,
        pattern: &str,
        group: Option<&str>,
        filter: &str,
    ) -> Result<Subscription, Error> {
        let wire = mycelium_protocol::SubscribeOptions {
            filter: Some(filter),
            ..mycelium_protocol::SubscribeOptions::default()
        };
        let mut block = BytesMut::new();
        wire.encode(&mut block)
            .map_err(|e| Error::new(ErrorKind::InvalidArgument, e.to_string()))?;
        self.shared.subscribe_with(pattern, group, block.freeze()).await
    }

    /// Subscribes as a member of queue group `group`: each message goes to one member.
    ///
    /// # Errors
    /// As [`Client::subscribe`].
    pub async fn queue_subscribe(&self, pattern: &str, group: &str) -> Result<Subscription, Error> {
        self.shared.subscribe(pattern, Some(group)).await
    }

    /// Subscribes to the disk topic `topic` under the durable name `name`: progress survives
    /// disconnects and broker restarts, and consumers sharing the name share the messages. ACK each
    /// message ([`Client::ack`]); unacknowledged ones are redelivered after the ack deadline.
    ///
    /// # Errors
    /// As [`Client::subscribe`]; `Server` when the topic is not a disk topic.
    pub async fn subscribe_durable(
        &self,
        topic: &str,
        name: &str,
        options: DurableOptions,
    ) -> Result<Subscription, Error> {
        let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
        let wire = mycelium_protocol::SubscribeOptions {
            durable: Some(name),
            start: Some(options.start),
            ack_wait_ms: options.ack_wait.map(ms),
            max_deliveries: options.max_deliveries,
            max_in_flight: options.max_in_flight,
            backoff_ms: options.backoff.iter().copied().map(ms).collect(),
            filter: options.filter.as_deref(),
        };
        let mut block = BytesMut::new();
        wire.encode(&mut block)
            .map_err(|e| Error::new(ErrorKind::InvalidArgument, e.to_string()))?;
        self.shared.subscribe_with(topic, None, block.freeze()).await
    }

    /// Acknowledges a durable delivery: it is done and never comes back.
    ///
    /// # Errors
    /// As [`Client::publish`]; a broker refusal arrives on [`Client::errors`].
    pub async fn ack(&self, message: &Message) -> Result<(), Error> {
        let ack = mycelium_protocol::Ack {
            subscription_id: message.subscription_id,
            sequence: message.sequence,
        };
        self.shared.send(32, |buf| encode(buf, 0, &Frame::Ack(ack))).await
    }

    /// Acknowledges a durable delivery and waits until the broker has made the acknowledgement
    /// durable (ACK_OK): a message acknowledged this way is never redelivered, even after a
    /// broker crash.
    ///
    /// # Errors
    /// `Server` (not in flight, unknown subscription), `Disconnected`, `Timeout`.
    pub async fn ack_confirmed(&self, message: &Message) -> Result<(), Error> {
        let ack = mycelium_protocol::Ack {
            subscription_id: message.subscription_id,
            sequence: message.sequence,
        };
        match self
            .shared
            .request(32, |buf, id| encode(buf, id, &Frame::Ack(ack)))
            .await?
        {
            Reply::Acked => Ok(()),
            _ => Err(Error::new(ErrorKind::Protocol, "unexpected reply to ACK")),
        }
    }

    /// Refuses a durable delivery: redelivered after `delay` (or the subscription's backoff).
    ///
    /// # Errors
    /// As [`Client::ack`].
    pub async fn nack(&self, message: &Message, delay: Option<Duration>, reason: &str) -> Result<(), Error> {
        let ack = mycelium_protocol::Ack {
            subscription_id: message.subscription_id,
            sequence: message.sequence,
        };
        let delay_ms = delay.map_or(0, |d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX));
        let nack = mycelium_protocol::Nack {
            ack,
            delay_ms,
            reason,
        };
        self.shared
            .send(64 + reason.len(), |buf| encode(buf, 0, &Frame::Nack(nack)))
            .await
    }

    /// Extends a durable delivery's ack deadline.
    ///
    /// # Errors
    /// As [`Client::ack`].
    pub async fn in_progress(&self, message: &Message) -> Result<(), Error> {
        let ack = mycelium_protocol::Ack {
            subscription_id: message.subscription_id,
            sequence: message.sequence,
        };
        self.shared
            .send(32, |buf| encode(buf, 0, &Frame::InProgress(ack)))
            .await
    }

    /// Gives up on a durable delivery: it goes to the dead-letter queue now.
    ///
    /// # Errors
    /// As [`Client::ack`].
    pub async fn term(&self, message: &Message, reason: &str) -> Result<(), Error> {
        let ack = mycelium_protocol::Ack {
            subscription_id: message.subscription_id,
            sequence: message.sequence,
        };
        let term = mycelium_protocol::Term { ack, reason };
        self.shared
            .send(64 + reason.len(), |buf| encode(buf, 0, &Frame::Term(term)))
            .await
    }
}

impl Shared {
    async fn subscribe(self: &Arc<Self>, pattern: &str, group: Option<&str>) -> Result<Subscription, Error> {
        self.subscribe_with(pattern, group, Bytes::new()).await
    }

    async fn subscribe_with(
        self: &Arc<Self>,
        pattern: &str,
        group: Option<&str>,
        options: Bytes,
    ) -> Result<Subscription, Error> {
        self.check_usable()?;
        if pattern.len() > 255 || group.is_some_and(|g| g.len() > 255) {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "pattern and group are at most 255 bytes",
            ));
        }
        let local = self.next_local.fetch_add(1, Ordering::Relaxed);
        // Messages travel in batches (one per subscription per socket read), so the channel is
        // sized in batches: enough for `subscription_capacity` messages of small batches.
        let batches = (self.options.subscription_capacity / 64).max(4);
        let (sender, receiver) = mpsc::channel(batches);
        self.subs.lock().local.insert(
            local,
            LocalSub {
                pattern: pattern.to_owned(),
                group: group.map(str::to_owned),
                options: options.clone(),
                sender,
                server_id: None,
            },
        );
        let subscription = Subscription {
            local_id: local,
            receiver,
            pending: Default::default(),
            shared: Arc::clone(self),
        };
        if !self.out.lock().connected {
            return Ok(subscription); // made on reconnect
        }
        let id = self.request_id();
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(
            id,
            Pending::Subscribe {
                local,
                reply: Some(tx),
            },
        );
        self.send(pattern.len() + 300, |buf| {
            encode(
                buf,
                id,
                &Frame::Subscribe(Subscribe {
                    pattern,
                    group,
                    options: &options,
                }),
            )
        })
        .await?;
        match self.await_reply(id, rx).await {
            Ok(_) => Ok(subscription),
            // Lost the connection meanwhile: the subscription stands and is made on reconnect.
            Err(e) if e.kind() == ErrorKind::Disconnected => Ok(subscription),
            Err(e) => Err(e), // dropping `subscription` forgets it
        }
    }

    pub(crate) fn forget_subscription(&self, local: u64) -> Option<u32> {
        let mut subs = self.subs.lock();
        let server_id = subs.local.remove(&local).and_then(|s| s.server_id);
        if let Some(id) = server_id {
            subs.by_server.remove(&id);
            drop(subs);
            let mut out = self.out.lock();
            if out.connected {
                let _ = encode(
                    &mut out.buf,
                    0,
                    &Frame::Unsubscribe(SubscriptionRef { subscription_id: id }),
                );
                drop(out);
                self.wake_writer.notify_one();
            }
        }
        server_id
    }

    pub(crate) async fn unsubscribe(&self, local: u64) -> Result<(), Error> {
        let server_id = {
            let mut subs = self.subs.lock();
            let id = subs.local.remove(&local).and_then(|s| s.server_id);
            if let Some(id) = id {
                subs.by_server.remove(&id);
            }
            id
        };
        match server_id {
            Some(subscription_id) if self.out.lock().connected => self
                .request(32, |buf, id| {
                    encode(buf, id, &Frame::Unsubscribe(SubscriptionRef { subscription_id }))
                })
                .await
                .map(|_| ()),
            _ => Ok(()),
        }
    }
}
