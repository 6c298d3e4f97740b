//! Durable topics (`storage = "disk"`): one storage writer thread appends every durable publish to
//! the topic's segment log, makes it durable under the topic's fsync policy, and only then confirms
//! it (PUBLISH_OK) and routes it to live subscribers, so nobody ever sees a message that a crash
//! could take back.
//!
//! - The writer assigns the sequences: it is the topic's single writer, so concurrent publishers
//!   can never append out of order.
//! - Group commit: requests that arrive together are appended with one write per topic; `always`
//!   syncs before confirming each batch, `batch` syncs every `fsync_interval` or `fsync_bytes`,
//!   `never` confirms after the write.
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
}

impl Default for DurableConfig {
    fn default() -> Self {
        DurableConfig {
            data_dir: PathBuf::from("./mycelium-data"),
            fsync_interval: Duration::from_millis(5),
            fsync_bytes: 1 << 20,
            log: LogConfig::default(),
            queue_capacity: 65_536,
        }
    }
}

/// One durable publish on its way to the writer.
#[derive(Debug)]
pub(crate) struct AppendRequest {
    pub(crate) topic: TopicRef,
    pub(crate) headers: Bytes,
    pub(crate) payload: Bytes,
    /// Where to send PUBLISH_OK or the ERROR, and the request id to answer.
    pub(crate) confirm: Option<(Arc<Outbound>, u32)>,
}

/// The writer's handle, held by the broker.
#[derive(Debug)]
pub(crate) struct DurableStore {
    pub(crate) sender: mpsc::Sender<AppendRequest>,
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
        let (sender, receiver) = mpsc::channel(config.queue_capacity.max(1));
        let closing = Arc::new(AtomicBool::new(false));
        let close_signal = Arc::new(Notify::new());
        let writer = Writer {
            config,
            backend: Arc::clone(&backend),
            broker,
            next: HashMap::new(),
            unsynced: Vec::new(),
            unsynced_bytes: 0,
            deadline: None,
        };
        let (c, s) = (Arc::clone(&closing), Arc::clone(&close_signal));
        let thread = std::thread::Builder::new()
            .name("mycelium-storage".into())
            .spawn(move || writer.run(receiver, c, s))
            .map_err(|e| StorageError::Io {
                path: "storage writer thread".into(),
                source: e,
            })?;
        Ok(DurableStore {
            sender,
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

/// Appended, waiting for the fsync that makes it durable.
struct Unsynced {
    topic: TopicRef,
    messages: Vec<StoredMessage>,
    confirms: Vec<Option<(Arc<Outbound>, u32)>>,
}

struct Writer {
    config: DurableConfig,
    backend: Arc<DiskBackend>,
    broker: std::sync::Weak<Broker>,
    next: HashMap<Box<str>, u64>,
    unsynced: Vec<Unsynced>,
    unsynced_bytes: usize,
    deadline: Option<Instant>,
}

const BATCH_MAX: usize = 4096;

impl Writer {
    fn run(
        mut self,
        mut receiver: mpsc::Receiver<AppendRequest>,
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
            loop {
                let first = tokio::select! {
                    request = receiver.recv() => request,
                    () = sleep_until(self.deadline) => { self.sync_all().await; continue; }
                    () = close.notified() => None,
                };
                let Some(first) = first else { break };
                let mut batch = vec![first];
                while batch.len() < BATCH_MAX {
                    match receiver.try_recv() {
                        Ok(request) => batch.push(request),
                        Err(_) => break,
                    }
                }
                self.write(batch).await;
                if closing.load(Ordering::Acquire) {
                    break;
                }
            }
            // Closing: take what is still queued, then make everything durable.
            receiver.close();
            let mut rest = Vec::new();
            while let Ok(request) = receiver.try_recv() {
                rest.push(request);
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
                    fail(&requests, &error);
                    continue;
                }
            };
            let mut messages = Vec::with_capacity(requests.len());
            let mut confirms = Vec::with_capacity(requests.len());
            for (i, request) in requests.into_iter().enumerate() {
                messages.push(StoredMessage {
                    sequence: next + i as u64,
                    publish_ns: now_ns,
                    id: *uuid::Uuid::now_v7().as_bytes(),
                    headers: request.headers,
                    payload: request.payload,
                    ..StoredMessage::default()
                });
                confirms.push(request.confirm);
            }
            if let Err(error) = self.backend.append(topic.name(), &messages) {
                tracing::error!(topic = topic.name(), %error, "append failed; publishers get StorageFailed");
                TopicCounters::add(&topic.counters.rejected, messages.len() as u64);
                fail_confirms(&confirms, &error);
                continue;
            }
            self.next
                .insert(topic.name().into(), next + messages.len() as u64);
            let bytes: usize = messages.iter().map(|m| m.payload.len() + 64).sum();
            let unsynced = Unsynced {
                topic: Arc::clone(&topic),
                messages,
                confirms,
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
                    fail_confirms(&unsynced.confirms, &error);
                }
            }
        }
        self.complete(ok).await;
    }

    /// Durable: confirm to the publishers, then route to live subscribers.
    async fn complete(&mut self, done: Vec<Unsynced>) {
        let Some(broker) = self.broker.upgrade() else {
            return;
        };
        let mut publisher = Publisher::internal();
        publisher.begin_batch(&broker);
        for unsynced in done {
            broker.notify_durable(unsynced.topic.name());
            for (message, confirm) in unsynced.messages.iter().zip(&unsynced.confirms) {
                if let Some((outbound, request_id)) = confirm {
                    let ok = PublishOk {
                        sequence: message.sequence,
                        message_id: message.id,
                        duplicate: false,
                    };
                    outbound.append_control(|buf| {
                        let _ = encode(buf, *request_id, &Frame::PublishOk(ok));
                    });
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
        publisher.end_batch();
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn fail(requests: &[AppendRequest], error: &StorageError) {
    let confirms: Vec<_> = requests.iter().map(|r| r.confirm.clone()).collect();
    fail_confirms(&confirms, error);
}

fn fail_confirms(confirms: &[Option<(Arc<Outbound>, u32)>], error: &StorageError) {
    let text = format!("not stored: {error}");
    for (outbound, request_id) in confirms.iter().flatten() {
        outbound.append_control(|buf| {
            let frame = Frame::Error(ErrorFrame::new(ErrorCode::StorageFailed, &text));
            let _ = encode(buf, *request_id, &frame);
        });
    }
}
