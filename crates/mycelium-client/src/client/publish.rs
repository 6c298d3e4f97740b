//! Publishing: fire-and-forget, confirmed, pipelined (confirmations awaited later) and batched.

use std::time::Duration;

use bytes::BytesMut;
use mycelium_protocol::{BatchWriter, Frame, Publish, encode};

use super::Client;
use super::request::PendingConfirm;
use crate::{Error, ErrorKind};

/// Message properties and headers of a confirmed publish ([`Client::publish_with`]). Properties
/// need a stored topic (`delivery = "at_least_once"` or `"exactly_once"`).
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    /// Application headers (`traceparent`, content type, ...).
    pub headers: Vec<(String, Vec<u8>)>,
    /// 0-9, higher first, on topics with `priority = true`.
    pub priority: Option<u8>,
    /// Time to live: never delivered after it passes.
    pub ttl: Option<Duration>,
    /// Held back this long before the first delivery.
    pub delay: Option<Duration>,
    /// Held back until this time.
    pub not_before: Option<std::time::SystemTime>,
    /// Publishes with the same key within the topic's dedup window are stored once.
    pub idempotency_key: Option<Vec<u8>>,
}

impl PublishOptions {
    /// Adds the W3C trace context of `cx` (`traceparent`, `tracestate`) to the headers, so the
    /// broker's spans and the consumer's continue the publisher's trace.
    #[must_use]
    pub fn with_trace_context(mut self, cx: &mycelium_trace::Context) -> Self {
        self.headers
            .retain(|(k, _)| !k.eq_ignore_ascii_case("traceparent") && !k.eq_ignore_ascii_case("tracestate"));
        for (key, value) in mycelium_trace::inject(cx) {
            self.headers.push((key, value.into_bytes()));
        }
        self
    }

    /// [`PublishOptions::with_trace_context`] with the current `tracing` span's context.
    #[must_use]
    pub fn with_current_trace(self) -> Self {
        let cx = mycelium_trace::context_of(&tracing::Span::current());
        self.with_trace_context(&cx)
    }
}

/// What the broker answered to a confirmed publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confirmed {
    /// The per-topic sequence.
    pub sequence: u64,
    /// The broker-assigned id (UUIDv7 bytes; all zero on memory topics).
    pub id: [u8; 16],
    /// The broker recognised the idempotency key: `sequence` and `id` are the original's.
    pub duplicate: bool,
}

impl Client {
    /// Publishes `payload` to `topic` (fire and forget: broker-side errors arrive on
    /// [`Client::errors`]). While disconnected the message is buffered and sent on reconnect.
    ///
    /// # Errors
    /// `BufferFull` (disconnected, buffer full), `CircuitOpen`, `Closed`, `InvalidArgument`.
    pub async fn publish(&self, topic: &str, payload: impl AsRef<[u8]>) -> Result<(), Error> {
        let message = Publish {
            topic,
            payload: payload.as_ref(),
            ..Default::default()
        };
        self.shared
            .send(message.payload.len() + topic.len() + 32, |buf| {
                encode(buf, 0, &Frame::Publish(message))
            })
            .await
    }

    /// Publishes with headers (`traceparent`, content type, ...).
    ///
    /// # Errors
    /// As [`Client::publish`].
    pub async fn publish_with_headers(
        &self,
        topic: &str,
        headers: &[(&str, &[u8])],
        payload: impl AsRef<[u8]>,
    ) -> Result<(), Error> {
        let mut block = BytesMut::new();
        mycelium_protocol::encode_headers(&mut block, headers.iter().copied())
            .map_err(|e| Error::new(ErrorKind::InvalidArgument, e.to_string()))?;
        let message = Publish {
            topic,
            headers: &block,
            payload: payload.as_ref(),
            ..Default::default()
        };
        let size = message.payload.len() + block.len() + topic.len() + 32;
        self.shared
            .send(size, |buf| encode(buf, 0, &Frame::Publish(message)))
            .await
    }

    /// Publishes and waits for the broker's PUBLISH_OK; returns the message's per-topic sequence.
    ///
    /// # Errors
    /// `Server` (refused: the error names why), `Disconnected`, `Timeout`, and as [`Client::publish`].
    pub async fn publish_confirmed(&self, topic: &str, payload: impl AsRef<[u8]>) -> Result<u64, Error> {
        self.publish_confirmed_id(topic, payload)
            .await
            .map(|(sequence, _)| sequence)
    }

    /// Like [`Client::publish_confirmed`], also returning the broker-assigned message id (UUIDv7
    /// bytes; all zero on memory topics, which keep no ids).
    ///
    /// # Errors
    /// As [`Client::publish_confirmed`].
    pub async fn publish_confirmed_id(
        &self,
        topic: &str,
        payload: impl AsRef<[u8]>,
    ) -> Result<(u64, [u8; 16]), Error> {
        // Awaited at once: no backstop for a future nobody waits on.
        let confirmed = self.publish_start(topic, payload, false).await?.await?;
        Ok((confirmed.sequence, confirmed.id))
    }

    /// Sends a publish that asks for a confirmation and returns without waiting for it: the
    /// returned [`PendingConfirm`] resolves once the broker confirms (on disk topics, once the
    /// message is durable under the topic's fsync policy) or refuses. Keeping many publishes in
    /// flight this way is the fast way to publish with confirms; awaiting them in the order they
    /// were sent costs the least (answers come back in that order on one topic). The wait for
    /// each answer ends after `request_timeout`, counted from the send. The publish waits in the
    /// client's buffer until a confirmation is first awaited (or dropped), so a window refilled
    /// between two awaits leaves in one write; if none is, it leaves after at most
    /// `ClientOptions::pipeline_hold_max` (0.5 ms by default, plus the timer's tick).
    ///
    /// ```no_run
    /// # async fn demo(client: &mycelium_client::Client) -> Result<(), mycelium_client::Error> {
    /// let mut in_flight = std::collections::VecDeque::new();
    /// for i in 0..10_000u32 {
    ///     if in_flight.len() == 256 {
    ///         let confirm: mycelium_client::PendingConfirm = in_flight.pop_front().unwrap();
    ///         confirm.await?;
    ///     }
    ///     in_flight.push_back(client.publish_pipelined("orders", i.to_le_bytes()).await?);
    /// }
    /// for confirm in in_flight {
    ///     confirm.await?;
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// Sending: as [`Client::publish`] (`Disconnected` when not connected). The confirmation:
    /// `Server` (refused: the error names why), `Disconnected`, `Timeout`.
    pub async fn publish_pipelined(
        &self,
        topic: &str,
        payload: impl AsRef<[u8]>,
    ) -> Result<PendingConfirm, Error> {
        self.publish_start(topic, payload, true).await
    }

    /// Sends a confirmed publish; `pipelined`: the caller may hold the confirmation without
    /// awaiting it (see `socket::defer`).
    async fn publish_start(
        &self,
        topic: &str,
        payload: impl AsRef<[u8]>,
        pipelined: bool,
    ) -> Result<PendingConfirm, Error> {
        let payload = payload.as_ref();
        let (id, rx) = self
            .shared
            .request_start(payload.len() + 64, pipelined, |buf, id| {
                let message = Publish {
                    topic,
                    payload,
                    confirm: true,
                    ..Default::default()
                };
                encode(buf, id, &Frame::Publish(message))
            })
            .await?;
        Ok(PendingConfirm::new(&self.shared, id, rx))
    }

    /// Publishes with headers and message properties, and waits for the broker's PUBLISH_OK.
    ///
    /// # Errors
    /// As [`Client::publish_confirmed`]; `InvalidArgument` for an oversize header or key.
    pub async fn publish_with(
        &self,
        topic: &str,
        payload: impl AsRef<[u8]>,
        options: &PublishOptions,
    ) -> Result<Confirmed, Error> {
        self.publish_start_with(topic, payload, options, false)
            .await?
            .await
    }

    /// [`Client::publish_pipelined`] with headers and message properties: sends at once, and the
    /// returned [`PendingConfirm`] resolves to the broker's confirmation.
    ///
    /// # Errors
    /// As [`Client::publish_pipelined`]; `InvalidArgument` for an oversize header or key.
    pub async fn publish_pipelined_with(
        &self,
        topic: &str,
        payload: impl AsRef<[u8]>,
        options: &PublishOptions,
    ) -> Result<PendingConfirm, Error> {
        self.publish_start_with(topic, payload, options, true).await
    }

    /// [`Client::publish_pipelined_with`]; `pipelined` as for `publish_start`.
    async fn publish_start_with(
        &self,
        topic: &str,
        payload: impl AsRef<[u8]>,
        options: &PublishOptions,
        pipelined: bool,
    ) -> Result<PendingConfirm, Error> {
        let invalid =
            |e: mycelium_protocol::ProtocolError| Error::new(ErrorKind::InvalidArgument, e.to_string());
        let mut headers = BytesMut::new();
        mycelium_protocol::encode_headers(
            &mut headers,
            options.headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())),
        )
        .map_err(invalid)?;
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let props = mycelium_protocol::Props {
            priority: options.priority,
            ttl_ms: options.ttl.map(millis),
            delay_ms: options.delay.map(millis),
            idempotency_key: options.idempotency_key.as_deref(),
            not_before_ns: options.not_before.map(|t| {
                t.duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            }),
        };
        let mut check = BytesMut::new();
        props.encode(&mut check).map_err(invalid)?;
        let payload = payload.as_ref();
        let size = payload.len() + headers.len() + check.len() + topic.len() + 64;
        let (id, rx) = self
            .shared
            .request_start(size, pipelined, |buf, id| {
                let message = Publish {
                    topic,
                    headers: &headers,
                    props,
                    payload,
                    confirm: true,
                };
                encode(buf, id, &Frame::Publish(message))
            })
            .await?;
        Ok(PendingConfirm::new(&self.shared, id, rx))
    }

    /// Publishes many messages in one frame.
    ///
    /// # Errors
    /// As [`Client::publish`].
    pub async fn publish_batch<'m, P: AsRef<[u8]> + 'm>(
        &self,
        messages: impl IntoIterator<Item = (&'m str, P)>,
    ) -> Result<(), Error> {
        let messages: Vec<(&str, P)> = messages.into_iter().collect();
        let size: usize = messages
            .iter()
            .map(|(t, p)| t.len() + p.as_ref().len() + 8)
            .sum::<usize>()
            + 16;
        self.shared
            .send(size, |buf| {
                let mut writer = BatchWriter::new(buf, 0);
                for (topic, payload) in &messages {
                    writer.push(&Publish {
                        topic,
                        payload: payload.as_ref(),
                        ..Default::default()
                    })?;
                }
                writer.finish()
            })
            .await
    }
}
