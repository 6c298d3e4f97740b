//! What travels to the storage writer and back: a stored publish with its properties and who
//! to confirm to (`AppendRequest`, `Confirm`), the bounded queue it travels on, and the group's
//! confirmations (`Confirms`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mycelium_protocol::{ErrorCode, ErrorFrame, Frame, PublishOk, encode};
use mycelium_storage::{StorageError, StoredMessage};
use tokio::sync::mpsc;

use crate::routing::outbound::Outbound;
use crate::routing::topic::TopicRef;

/// The message properties of a durable publish (owned; the wire form is
/// [`mycelium_protocol::Props`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageProps {
    /// 0-9, on topics with `priority = true`.
    pub priority: u8,
    /// Time to live (else the topic's `ttl`).
    pub ttl: Option<Duration>,
    /// Held back this long before the first delivery.
    pub delay: Option<Duration>,
    /// Held back until this time (ns since the Unix epoch).
    pub not_before_ns: Option<u64>,
    /// Deduplication key.
    pub idempotency_key: Option<Bytes>,
}

impl From<&mycelium_protocol::Props<'_>> for MessageProps {
    fn from(props: &mycelium_protocol::Props<'_>) -> Self {
        MessageProps {
            priority: props.priority.unwrap_or(0),
            ttl: props.ttl_ms.map(Duration::from_millis),
            delay: props.delay_ms.map(Duration::from_millis),
            not_before_ns: props.not_before_ns,
            idempotency_key: props.idempotency_key.map(Bytes::copy_from_slice),
        }
    }
}

impl MessageProps {
    /// The stored message these properties make, published at `publish_ns` on a topic whose
    /// default TTL is `topic_ttl`.
    pub(crate) fn apply(&self, message: &mut StoredMessage, topic_ttl: Option<Duration>) {
        let at = |d: Duration| {
            message
                .publish_ns
                .saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        };
        message.priority = self.priority;
        message.expires_at_ns = self.ttl.or(topic_ttl).map(at);
        let delayed = self.delay.map(at);
        message.not_before_ns = match (delayed, self.not_before_ns) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
        .filter(|nb| *nb > message.publish_ns);
        message.idempotency_key.clone_from(&self.idempotency_key);
    }
}

/// One durable publish on its way to the writer.
#[derive(Debug)]
pub(crate) struct AppendRequest {
    pub(crate) topic: TopicRef,
    pub(crate) headers: Bytes,
    pub(crate) payload: Bytes,
    pub(crate) props: MessageProps,
    /// Where to send PUBLISH_OK or the ERROR, and the request id to answer.
    pub(crate) confirm: Confirm,
    /// When the broker received it, ns since the Unix epoch (for the publish-duration histogram).
    pub(crate) received_ns: u64,
}

/// The storage writer's queue: publishes travel in batches (one per connection read, or per HTTP
/// request), bounded in publishes (`queue_capacity`). One hand-over per batch, not per publish:
/// a channel send per publish cost the connection reader and the writer a semaphore operation and
/// a list node each, 256 times per round of a confirming publisher.
#[derive(Debug, Clone)]
pub(crate) struct Queue {
    sender: mpsc::UnboundedSender<(u32, Vec<AppendRequest>)>,
    pub(crate) room: Arc<tokio::sync::Semaphore>,
    capacity: u32,
}

/// Why a batch was not handed over; it comes back with the error.
#[derive(Debug)]
pub(crate) enum QueueError {
    /// Not enough room now (only from [`Queue::try_send`]).
    Full(Vec<AppendRequest>),
    /// The writer has stopped.
    Closed(Vec<AppendRequest>),
}

impl Queue {
    pub(crate) fn new(capacity: usize) -> (Queue, mpsc::UnboundedReceiver<(u32, Vec<AppendRequest>)>) {
        let capacity = u32::try_from(capacity.max(1)).unwrap_or(u32::MAX >> 4);
        let (sender, receiver) = mpsc::unbounded_channel();
        let room = Arc::new(tokio::sync::Semaphore::new(capacity as usize));
        (
            Queue {
                sender,
                room,
                capacity,
            },
            receiver,
        )
    }

    /// The room a batch takes: its length, at most the whole queue (a batch larger than the queue
    /// waits for the queue to be empty).
    fn permits(&self, batch: &[AppendRequest]) -> u32 {
        u32::try_from(batch.len()).unwrap_or(u32::MAX).min(self.capacity)
    }

    /// Hands `batch` over if the queue has room for it now.
    pub(crate) fn try_send(&self, batch: Vec<AppendRequest>) -> Result<(), QueueError> {
        if batch.is_empty() {
            return Ok(());
        }
        let permits = self.permits(&batch);
        match self.room.try_acquire_many(permits) {
            Ok(permit) => permit.forget(),
            Err(tokio::sync::TryAcquireError::NoPermits) => return Err(QueueError::Full(batch)),
            Err(tokio::sync::TryAcquireError::Closed) => return Err(QueueError::Closed(batch)),
        }
        self.hand_over(permits, batch)
    }

    /// Hands `batch` over once the queue has room for it.
    pub(crate) async fn send(&self, batch: Vec<AppendRequest>) -> Result<(), QueueError> {
        if batch.is_empty() {
            return Ok(());
        }
        let permits = self.permits(&batch);
        match self.room.acquire_many(permits).await {
            Ok(permit) => permit.forget(),
            Err(_) => return Err(QueueError::Closed(batch)),
        }
        self.hand_over(permits, batch)
    }

    /// Sends a batch whose room (`permits`) is taken; the writer gives the room back.
    fn hand_over(&self, permits: u32, batch: Vec<AppendRequest>) -> Result<(), QueueError> {
        self.sender
            .send((permits, batch))
            .map_err(|e| QueueError::Closed(e.0.1))
    }

    /// Whether the writer has stopped taking publishes.
    pub(crate) fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

impl QueueError {
    /// Answers every publisher of the batch that it was not stored.
    pub(crate) fn fail(self) {
        let (QueueError::Full(batch) | QueueError::Closed(batch)) = self;
        for request in batch {
            request.confirm.failed("the storage writer has stopped");
        }
    }
}

/// A stored message, as its publisher is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// The per-topic sequence.
    pub sequence: u64,
    /// The broker-assigned id (UUIDv7 bytes).
    pub id: [u8; 16],
    /// A duplicate of an earlier publish with the same idempotency key (`sequence` and `id` are
    /// the original's; nothing new was stored).
    pub duplicate: bool,
}

/// Who to tell once a durable publish is stored (or failed).
#[derive(Debug, Default)]
pub(crate) enum Confirm {
    /// Nobody.
    #[default]
    None,
    /// A native connection: PUBLISH_OK or ERROR with this request id.
    Frame(Arc<Outbound>, u32),
    /// An in-process caller (HTTP, DLQ replay).
    Reply(tokio::sync::oneshot::Sender<Result<Stored, String>>),
}

impl Confirm {
    pub(crate) fn failed(self, text: &str) {
        match self {
            Confirm::None => {}
            Confirm::Frame(outbound, request_id) => {
                outbound.append_control(|buf| {
                    let frame = Frame::Error(ErrorFrame::new(ErrorCode::StorageFailed, text));
                    let _ = encode(buf, request_id, &frame);
                });
            }
            Confirm::Reply(reply) => {
                let _ = reply.send(Err(text.to_owned()));
            }
        }
    }
}

/// The confirmations of a group: runs of PUBLISH_OKs to the same connection are appended under one
/// lock, quietly; each connection is then woken once, and its writer (or, if idle, an inline write
/// from this thread) sends the whole group in one write.
#[derive(Default)]
pub(crate) struct Confirms {
    /// The connection of the current run, and its (request id, PUBLISH_OK)s.
    run: Option<Run>,
    wakes: Vec<Arc<Outbound>>,
}

type Run = (Arc<Outbound>, Vec<(u32, PublishOk)>);

impl Confirms {
    pub(crate) fn stored(&mut self, confirm: Confirm, stored: Stored) {
        match confirm {
            Confirm::None => {}
            Confirm::Frame(outbound, request_id) => {
                let ok = PublishOk {
                    sequence: stored.sequence,
                    message_id: stored.id,
                    duplicate: stored.duplicate,
                };
                match &mut self.run {
                    Some((current, oks)) if Arc::ptr_eq(current, &outbound) => oks.push((request_id, ok)),
                    _ => {
                        self.end_run();
                        self.run = Some((outbound, vec![(request_id, ok)]));
                    }
                }
            }
            Confirm::Reply(reply) => {
                let _ = reply.send(Ok(stored));
            }
        }
    }

    fn end_run(&mut self) {
        let Some((outbound, oks)) = self.run.take() else {
            return;
        };
        let appended = outbound.append_controls_quiet(oks, |buf, (request_id, ok)| {
            let _ = encode(buf, request_id, &Frame::PublishOk(ok));
        });
        // Usually one publishing connection per group: compare with the last one added first.
        if appended && !self.wakes.iter().rev().any(|o| Arc::ptr_eq(o, &outbound)) {
            self.wakes.push(outbound);
        }
    }

    pub(crate) fn wake(mut self) {
        self.end_run();
        for outbound in self.wakes {
            outbound.wake();
        }
    }
}

pub(crate) fn fail(requests: Vec<AppendRequest>, error: &StorageError) {
    fail_confirms(requests.into_iter().map(|r| r.confirm), error);
}

pub(crate) fn fail_confirms(confirms: impl IntoIterator<Item = Confirm>, error: &StorageError) {
    let text = format!("not stored: {error}");
    for confirm in confirms {
        confirm.failed(&text);
    }
}
