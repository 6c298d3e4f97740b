//! Durable topics (`storage = "disk"`): one storage writer thread appends every durable publish to
//! the topic's segment log, makes it durable under the topic's fsync policy, and only then confirms
//! it (PUBLISH_OK) and routes it to live subscribers, so nobody ever sees a message that a crash
//! could take back.
//!
//! - The writer assigns the sequences: it is the topic's single writer, so concurrent publishers
//!   can never append out of order.
//! - Group commit: requests that arrive together are appended with one write per topic; `always`
//!   syncs before confirming each batch; `batch` keeps appending while requests are queued and
//!   syncs once the writer has caught up with its queue, or after `fsync_interval` or
//!   `fsync_bytes` at the latest (one fsync covers every topic's appends since the last); `never`
//!   confirms after the write. `batch` and `always` confirm only after the fsync.
//! - A failed append (disk full, I/O error) keeps nothing and answers every publisher of the batch
//!   with ERROR `StorageFailed`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use mycelium_protocol::{ErrorCode, ErrorFrame, Frame, PublishOk, encode};
use mycelium_storage::{DiskBackend, LogConfig, StorageBackend, StorageError, StoredMessage};
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use crate::broker::Broker;
use crate::dedup::{DedupIndex, Original};
use crate::outbound::Outbound;
use crate::publish::Publisher;
use crate::spec::Fsync;
use crate::topic::{TopicCounters, TopicRef};

/// Settings of the storage writer.
#[derive(Debug, Clone, PartialEq)]
pub struct DurableConfig {
    /// Root of the data directory (`<data_dir>/topics/<topic>/*.log`).
    pub data_dir: PathBuf,
    /// `fsync = "batch"`: the longest a confirm waits for its fsync.
    pub fsync_interval: Duration,
    /// `fsync = "batch"`: sync early once this many bytes are unsynced.
    pub fsync_bytes: usize,
    /// Segment size and retention of every durable topic.
    pub log: LogConfig,
    /// Durable publishes queued for the writer before publishers wait.
    pub queue_capacity: usize,
    /// Publishes the writer appends in one go, at most.
    pub write_batch: usize,
    /// A durable subscription's state (acks, attempts) is written at most this often; after a
    /// crash, unconfirmed acks of the last interval may be redelivered.
    pub ack_persist_interval: Duration,
    /// Messages a durable subscription reads ahead and holds ready (the priority window).
    pub read_ahead: usize,
    /// Deliveries a durable subscription hands out per pass.
    pub dispatch_batch: usize,
}

impl Default for DurableConfig {
    fn default() -> Self {
        DurableConfig {
            data_dir: PathBuf::from("./mycelium-data"),
            fsync_interval: Duration::from_millis(1),
            fsync_bytes: 1 << 20,
            log: LogConfig::default(),
            queue_capacity: 65_536,
            write_batch: 4096,
            ack_persist_interval: Duration::from_millis(20),
            read_ahead: 1000,
            dispatch_batch: 256,
        }
    }
}

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
    fn apply(&self, message: &mut StoredMessage, topic_ttl: Option<Duration>) {
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
    room: Arc<tokio::sync::Semaphore>,
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
    fn new(capacity: usize) -> (Queue, mpsc::UnboundedReceiver<(u32, Vec<AppendRequest>)>) {
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

/// The writer's handle, held by the broker.
#[derive(Debug)]
pub(crate) struct DurableStore {
    pub(crate) queue: Queue,
    backend: Arc<DiskBackend>,
    closing: Arc<AtomicBool>,
    close_signal: Arc<Notify>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl DurableStore {
    /// Opens the data directory (recovering every topic log) and starts the writer thread.
    pub(crate) fn start(
        config: DurableConfig,
        broker: std::sync::Weak<Broker>,
    ) -> Result<DurableStore, StorageError> {
        let (backend, reports) = DiskBackend::open(&config.data_dir, config.log.clone())?;
        for (topic, report) in &reports {
            tracing::info!(
                topic,
                records = report.records,
                segments = report.segments,
                "recovered topic log"
            );
            if report.truncated_bytes > 0 || report.corrupt_regions > 0 {
                tracing::warn!(topic, ?report, "recovery dropped damaged data");
            }
        }
        let backend = Arc::new(backend);
        let (queue, receiver) = Queue::new(config.queue_capacity);
        let room = Arc::clone(&queue.room);
        let closing = Arc::new(AtomicBool::new(false));
        let close_signal = Arc::new(Notify::new());
        let writer = Writer {
            config,
            backend: Arc::clone(&backend),
            broker,
            next: HashMap::new(),
            dedup: HashMap::new(),
            ids: MessageIds::new(),
            unsynced: Vec::new(),
            unsynced_bytes: 0,
            deadline: None,
        };
        let (c, s) = (Arc::clone(&closing), Arc::clone(&close_signal));
        let thread = std::thread::Builder::new()
            .name("mycelium-storage".into())
            .spawn(move || writer.run(receiver, room, c, s))
            .map_err(|e| StorageError::Io {
                path: "storage writer thread".into(),
                source: e,
            })?;
        Ok(DurableStore {
            queue,
            backend,
            closing,
            close_signal,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The backend (for reads by durable subscriptions and tools).
    pub(crate) fn backend(&self) -> &Arc<DiskBackend> {
        &self.backend
    }

    /// Stops the writer after it has appended, synced and confirmed everything queued.
    pub(crate) fn close(&self) {
        self.closing.store(true, Ordering::Release);
        self.close_signal.notify_one();
        if let Some(thread) = self.thread.lock().take()
            && thread.join().is_err()
        {
            tracing::error!("storage writer thread panicked");
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
struct Confirms {
    /// The connection of the current run, and its (request id, PUBLISH_OK)s.
    run: Option<Run>,
    wakes: Vec<Arc<Outbound>>,
}

type Run = (Arc<Outbound>, Vec<(u32, PublishOk)>);

impl Confirms {
    fn stored(&mut self, confirm: Confirm, stored: Stored) {
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

    fn wake(mut self) {
        self.end_run();
        for outbound in self.wakes {
            outbound.wake();
        }
    }
}

/// Appended, waiting for the fsync that makes it durable.
struct Unsynced {
    topic: TopicRef,
    messages: Vec<StoredMessage>,
    confirms: Vec<Confirm>,
    /// When each message was received (ns since the Unix epoch).
    received: Vec<u64>,
    /// Store spans of traced messages, ended once the message is durable.
    spans: Vec<tracing::Span>,
    /// Publishes recognised as duplicates: confirmed (with the original's id and sequence) with
    /// the batch, since the original may itself still wait for this sync.
    duplicates: Vec<(Confirm, Original)>,
}

struct Writer {
    config: DurableConfig,
    backend: Arc<DiskBackend>,
    broker: std::sync::Weak<Broker>,
    next: HashMap<Box<str>, u64>,
    dedup: HashMap<Box<str>, DedupIndex>,
    ids: MessageIds,
    unsynced: Vec<Unsynced>,
    unsynced_bytes: usize,
    deadline: Option<Instant>,
}

/// Message ids: UUIDv7 (millisecond time, then 74 bits that make ids unique and increasing within
/// the writer: a counter started at a random point, and random bits from a generator seeded once).
/// `Uuid::now_v7` asks the kernel for randomness on every call, which showed as a tenth of the
/// storage writer's time.
struct MessageIds {
    counter: u64,
    rng: rand::rngs::SmallRng,
}

impl MessageIds {
    fn new() -> MessageIds {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::from_os_rng();
        MessageIds {
            counter: rng.random::<u64>() >> 24,
            rng,
        }
    }

    fn next(&mut self, now_ns: u64) -> [u8; 16] {
        use rand::Rng;
        self.counter = self.counter.wrapping_add(1) & ((1 << 42) - 1);
        let random: u32 = self.rng.random();
        let mut tail = [0u8; 10];
        // rand_a (12 bits, under the version nibble): the counter's top 12 bits; rand_b (62 bits,
        // under the variant bits): its low 30 bits, then 32 random bits. Ids made in the same
        // millisecond sort in the order they were made.
        tail[..2].copy_from_slice(&(((self.counter >> 30) & 0xfff) as u16).to_be_bytes());
        let low = ((self.counter & ((1 << 30) - 1)) << 32) | u64::from(random);
        tail[2..].copy_from_slice(&low.to_be_bytes());
        *uuid::Builder::from_unix_timestamp_millis(now_ns / 1_000_000, &tail)
            .into_uuid()
            .as_bytes()
    }
}

/// How often retention is applied.
const RETENTION_EVERY: Duration = Duration::from_secs(1);

impl Writer {
    fn run(
        mut self,
        mut receiver: mpsc::UnboundedReceiver<(u32, Vec<AppendRequest>)>,
        room: Arc<tokio::sync::Semaphore>,
        closing: Arc<AtomicBool>,
        close: Arc<Notify>,
    ) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(runtime) => runtime,
            Err(error) => {
                tracing::error!(%error, "storage writer could not start its timer");
                return;
            }
        };
        runtime.block_on(async move {
            let mut retention = tokio::time::interval(RETENTION_EVERY);
            retention.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let first = tokio::select! {
                    request = receiver.recv() => request,
                    _ = retention.tick() => { self.apply_retention(); continue; }
                    () = sleep_until(self.deadline) => { self.sync_all().await; continue; }
                    () = close.notified() => None,
                };
                let Some((permits, mut batch)) = first else { break };
                room.add_permits(permits as usize);
                while batch.len() < self.config.write_batch.max(1) {
                    match receiver.try_recv() {
                        Ok((permits, more)) => {
                            room.add_permits(permits as usize);
                            batch.extend(more);
                        }
                        Err(_) => break,
                    }
                }
                self.write(batch).await;
                // Group commit: the writer caught up with its queue, so waiting longer gathers
                // nothing (publishers are waiting for these very confirms): sync now. While
                // publishes keep arriving, the group grows until `fsync_interval` has passed.
                // (Waiting for a connection reader still handing a read batch over, so that the
                // batch made one group, cost a wake-up of this thread per group and measured
                // slower: see PERFORMANCE.md, 2026-12-02.)
                if !self.unsynced.is_empty()
                    && (receiver.is_empty() || self.deadline.is_some_and(|at| Instant::now() >= at))
                {
                    self.sync_all().await;
                }
                if closing.load(Ordering::Acquire) {
                    break;
                }
            }
            // Closing: take what is still queued, then make everything durable.
            receiver.close();
            room.close();
            let mut rest = Vec::new();
            while let Ok((_, more)) = receiver.try_recv() {
                rest.extend(more);
            }
            if !rest.is_empty() {
                self.write(rest).await;
            }
            self.sync_all().await;
        });
    }

    async fn write(&mut self, batch: Vec<AppendRequest>) {
        // Group by topic, keeping each topic's order.
        let mut groups: Vec<(TopicRef, Vec<AppendRequest>)> = Vec::new();
        for request in batch {
            match groups.iter_mut().find(|(t, _)| Arc::ptr_eq(t, &request.topic)) {
                Some((_, requests)) => requests.push(request),
                None => groups.push((Arc::clone(&request.topic), vec![request])),
            }
        }
        let now_ns = mycelium_codec::now_ns();
        for (topic, requests) in groups {
            let next = match self.next_sequence(topic.name()) {
                Ok(next) => next,
                Err(error) => {
                    fail(requests, &error);
                    continue;
                }
            };
            let spec = topic.spec();
            if requests.iter().any(|r| r.props.idempotency_key.is_some())
                && let Err(error) = self.load_dedup(topic.name(), spec.dedup_window, now_ns)
            {
                tracing::error!(topic = topic.name(), %error, "reading the dedup window failed; publishers get StorageFailed");
                fail(requests, &error);
                continue;
            }
            let mut messages = Vec::with_capacity(requests.len());
            let mut confirms = Vec::with_capacity(requests.len());
            let mut received = Vec::with_capacity(requests.len());
            let mut duplicates = Vec::new();
            let mut keys = Vec::new();
            for request in requests {
                if let Some(key) = &request.props.idempotency_key {
                    let index = self.dedup.get_mut(topic.name()).expect("loaded above");
                    if let Some(original) = index.get(key, spec.dedup_window, now_ns) {
                        TopicCounters::add(&topic.counters.duplicates, 1);
                        duplicates.push((request.confirm, original));
                        continue;
                    }
                }
                let mut message = StoredMessage {
                    sequence: next + messages.len() as u64,
                    publish_ns: now_ns,
                    id: self.ids.next(now_ns),
                    headers: request.headers,
                    payload: request.payload,
                    ..StoredMessage::default()
                };
                request.props.apply(&mut message, spec.ttl);
                if let Some(key) = &message.idempotency_key {
                    let index = self.dedup.get_mut(topic.name()).expect("loaded above");
                    index.insert(
                        key.clone(),
                        Original {
                            sequence: message.sequence,
                            id: message.id,
                            publish_ns: message.publish_ns,
                        },
                    );
                    keys.push(key.clone());
                }
                messages.push(message);
                confirms.push(request.confirm);
                received.push(request.received_ns);
            }
            let spans: Vec<tracing::Span> = if mycelium_trace::enabled() {
                messages
                    .iter()
                    .filter(|m| mycelium_trace::has_context(&m.headers))
                    .map(|m| mycelium_trace::span("mycelium.store", topic.name(), &m.headers))
                    .collect()
            } else {
                Vec::new()
            };
            if let Err(error) = self.backend.append(topic.name(), &messages) {
                tracing::error!(topic = topic.name(), %error, "append failed; publishers get StorageFailed");
                TopicCounters::add(&topic.counters.rejected, messages.len() as u64);
                if let Some(index) = self.dedup.get_mut(topic.name()) {
                    for key in &keys {
                        index.remove(key);
                    }
                }
                fail_confirms(confirms, &error);
                fail_confirms(duplicates.into_iter().map(|(c, _)| c), &error);
                continue;
            }
            self.next
                .insert(topic.name().into(), next + messages.len() as u64);
            let bytes: usize = messages.iter().map(|m| m.payload.len() + 64).sum();
            let unsynced = Unsynced {
                topic: Arc::clone(&topic),
                messages,
                confirms,
                received,
                spans,
                duplicates,
            };
            match topic.spec().fsync {
                Fsync::Never => self.complete(vec![unsynced]).await,
                Fsync::Always => self.sync_and_complete(vec![unsynced]).await,
                Fsync::Batch => {
                    self.unsynced.push(unsynced);
                    self.unsynced_bytes += bytes;
                    self.deadline
                        .get_or_insert_with(|| Instant::now() + self.config.fsync_interval);
                }
            }
        }
        if self.unsynced_bytes >= self.config.fsync_bytes {
            self.sync_all().await;
        }
    }

    /// Retention by the topics' limits, and work-queue deletion of what every durable
    /// subscription has acknowledged.
    fn apply_retention(&self) {
        let Some(broker) = self.broker.upgrade() else {
            return;
        };
        let now = mycelium_codec::now_ns();
        for topic in broker.topics() {
            let spec = topic.spec();
            if spec.storage != crate::spec::StorageKind::Disk {
                continue;
            }
            let defaults = &self.config.log;
            let limits = LogConfig {
                retention_messages: spec.retention_messages.or(defaults.retention_messages),
                retention_bytes: spec.retention_bytes.or(defaults.retention_bytes),
                retention_age: spec.retention_age.or(defaults.retention_age),
                ..defaults.clone()
            };
            match self.backend.apply_retention(topic.name(), &limits, now) {
                Ok(0) => {}
                Ok(n) => tracing::debug!(topic = topic.name(), messages = n, "retention removed messages"),
                Err(error) => tracing::warn!(topic = topic.name(), %error, "applying retention failed"),
            }
            if spec.retention == crate::spec::Retention::WorkQueue
                && let Some(floor) = broker.durable_floor(topic.name())
                && let Err(error) = self.backend.truncate_before(topic.name(), floor)
            {
                tracing::warn!(topic = topic.name(), %error, "work-queue retention failed");
            }
        }
    }

    fn load_dedup(&mut self, topic: &str, window: Duration, now_ns: u64) -> Result<(), StorageError> {
        if !self.dedup.contains_key(topic) {
            let index = DedupIndex::load(self.backend.as_ref(), topic, window, now_ns)?;
            self.dedup.insert(topic.into(), index);
        }
        Ok(())
    }

    fn next_sequence(&mut self, topic: &str) -> Result<u64, StorageError> {
        if let Some(next) = self.next.get(topic) {
            return Ok(*next);
        }
        let next = self.backend.bounds(topic)?.next;
        self.next.insert(topic.into(), next);
        Ok(next)
    }

    async fn sync_all(&mut self) {
        self.deadline = None;
        self.unsynced_bytes = 0;
        let pending = std::mem::take(&mut self.unsynced);
        if !pending.is_empty() {
            self.sync_and_complete(pending).await;
        }
    }

    async fn sync_and_complete(&mut self, pending: Vec<Unsynced>) {
        // One fsync per topic covers every append made to it before the call.
        let mut synced: Vec<String> = Vec::new();
        let mut ok = Vec::new();
        for unsynced in pending {
            let name = unsynced.topic.name();
            let result = if synced.iter().any(|s| s == name) {
                Ok(())
            } else {
                let result = self.backend.sync(name);
                if result.is_ok() {
                    synced.push(name.to_owned());
                }
                result
            };
            match result {
                Ok(()) => ok.push(unsynced),
                Err(error) => {
                    tracing::error!(topic = name, %error, "fsync failed; publishers get StorageFailed");
                    fail_confirms(unsynced.confirms, &error);
                }
            }
        }
        self.complete(ok).await;
    }

    /// Durable: confirm to the publishers, then route to live subscribers.
    async fn complete(&mut self, mut done: Vec<Unsynced>) {
        let Some(broker) = self.broker.upgrade() else {
            return;
        };
        let mut publisher = Publisher::internal();
        publisher.begin_batch(&broker);
        let now_ns = mycelium_codec::now_ns();
        // Confirm every group first, and send each connection's confirmations in one write,
        // before routing to live subscribers.
        let mut confirms = Confirms::default();
        for unsynced in &mut done {
            broker.notify_durable(unsynced.topic.name());
            for (confirm, original) in unsynced.duplicates.drain(..) {
                let stored = Stored {
                    sequence: original.sequence,
                    id: original.id,
                    duplicate: true,
                };
                confirms.stored(confirm, stored);
            }
            for received in &unsynced.received {
                let seconds = now_ns.saturating_sub(*received) as f64 / 1e9;
                broker.metrics.observe_publish(&unsynced.topic, seconds);
            }
            for (message, confirm) in unsynced.messages.iter().zip(unsynced.confirms.drain(..)) {
                let stored = Stored {
                    sequence: message.sequence,
                    id: message.id,
                    duplicate: false,
                };
                confirms.stored(confirm, stored);
            }
        }
        confirms.wake();
        for unsynced in done {
            // The store spans of traced messages end once their messages are durable and
            // confirmed (when this iteration ends).
            let _stored = unsynced.spans;
            for message in &unsynced.messages {
                // Live subscribers see a message now unless it is held back: delayed messages
                // reach durable subscriptions only, at their time.
                if message.not_before_ns.is_some_and(|nb| nb > now_ns) {
                    continue;
                }
                broker.route(
                    &mut publisher,
                    &unsynced.topic,
                    message.sequence,
                    &message.headers,
                    &message.payload,
                );
                if publisher.has_blocked() {
                    broker.settle_blocked(&mut publisher).await;
                    publisher.begin_batch(&broker);
                }
            }
        }
        publisher.end_batch(&broker);
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn fail(requests: Vec<AppendRequest>, error: &StorageError) {
    fail_confirms(requests.into_iter().map(|r| r.confirm), error);
}

fn fail_confirms(confirms: impl IntoIterator<Item = Confirm>, error: &StorageError) {
    let text = format!("not stored: {error}");
    for confirm in confirms {
        confirm.failed(&text);
    }
}

#[cfg(test)]
mod tests {
    use super::MessageIds;

    #[test]
    fn message_ids_are_uuid_v7_unique_and_increasing() {
        let mut ids = MessageIds::new();
        let now = 1_700_000_000_123_456_789;
        let mut last = [0u8; 16];
        for i in 0..100_000u64 {
            let id = ids.next(now + i * 10);
            let uuid = uuid::Uuid::from_bytes(id);
            assert_eq!(uuid.get_version_num(), 7);
            assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122);
            assert!(id > last, "ids increase: {uuid}");
            last = id;
        }
        let (secs, _) = uuid::Uuid::from_bytes(last).get_timestamp().unwrap().to_unix();
        assert_eq!(secs, 1_700_000_000);
    }
}
