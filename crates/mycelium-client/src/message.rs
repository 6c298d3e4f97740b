//! Received messages and subscription streams.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use mycelium_protocol::HeaderIter;
use tokio::sync::mpsc;

use crate::client::Shared;

/// One delivered message. Payload and headers share the received buffer: no copy.
#[derive(Debug, Clone)]
pub struct Message {
    pub(crate) topic: Bytes,
    /// The per-topic sequence the broker assigned.
    pub sequence: u64,
    pub(crate) headers: Bytes,
    /// The payload as published.
    pub payload: Bytes,
    /// The broker's id of the subscription it came on (for ACKs).
    pub(crate) subscription_id: u32,
    /// Delivery metadata (durable subscriptions only).
    pub(crate) meta: Option<mycelium_protocol::DeliveryMeta>,
}

impl Message {
    /// The topic it was published to.
    pub fn topic(&self) -> &str {
        // Checked UTF-8 when the frame was decoded.
        std::str::from_utf8(&self.topic).unwrap_or_default()
    }

    /// Header `(key, value)` pairs.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        HeaderIter::new(&self.headers).map_while(Result::ok)
    }

    /// The W3C trace context the message carries (`traceparent`): continue it in the consumer's
    /// span with `tracing_opentelemetry::OpenTelemetrySpanExt::set_parent`.
    pub fn trace_context(&self) -> Option<mycelium_trace::Context> {
        mycelium_trace::extract(&self.headers)
    }

    /// Which delivery attempt this is (1 for the first); `None` outside durable subscriptions.
    pub fn attempt(&self) -> Option<u32> {
        self.meta.map(|m| m.attempt)
    }

    /// The broker-assigned message id (UUIDv7 bytes); `None` outside durable subscriptions.
    pub fn message_id(&self) -> Option<[u8; 16]> {
        self.meta.map(|m| m.message_id)
    }

    /// The first header named `key`.
    pub fn header(&self, key: &str) -> Option<&[u8]> {
        self.headers().find(|(k, _)| *k == key).map(|(_, v)| v)
    }
}

/// A subscription: a `Stream` of [`Message`]s. Survives reconnects (the client re-subscribes).
/// Dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    pub(crate) local_id: u64,
    pub(crate) receiver: mpsc::Receiver<Vec<Message>>,
    /// The rest of the batch being handed out.
    pub(crate) pending: std::collections::VecDeque<Message>,
    pub(crate) shared: Arc<Shared>,
}

impl Subscription {
    /// The next message; `None` once the subscription or the client is closed.
    pub async fn next(&mut self) -> Option<Message> {
        if let Some(message) = self.pending.pop_front() {
            return Some(message);
        }
        let batch = self.receiver.recv().await?;
        self.pending = batch.into();
        self.pending.pop_front()
    }

    /// Ends the subscription and waits for the broker to confirm (when connected).
    ///
    /// # Errors
    /// A broker error or a timeout; the subscription is gone locally either way.
    pub async fn unsubscribe(mut self) -> Result<(), crate::Error> {
        self.receiver.close();
        self.shared.unsubscribe(self.local_id).await
    }
}

impl futures_core::Stream for Subscription {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        loop {
            if let Some(message) = self.pending.pop_front() {
                return Poll::Ready(Some(message));
            }
            match self.receiver.poll_recv(cx) {
                Poll::Ready(Some(batch)) => self.pending = batch.into(),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.shared.forget_subscription(self.local_id);
    }
}
