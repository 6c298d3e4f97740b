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

mod dedup;
pub(crate) mod io;
mod queue;
mod writer;

use writer::Writer;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mycelium_storage::{DiskBackend, LogConfig, StorageError, StoredMessage};

use io::{Disk, DiskRef};
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::routing::topic::TopicRef;

pub(crate) use queue::{AppendRequest, Confirm, Queue, QueueError};
pub use queue::{MessageProps, Stored};

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
    /// Failures to inject into the disk (tests of failing storage; `None` in service).
    pub faults: Option<FaultHook>,
}

/// Failures injected into the storage (tests only): see [`mycelium_storage::Faults`].
#[derive(Debug, Clone)]
pub struct FaultHook(pub Arc<mycelium_storage::Faults>);

impl PartialEq for FaultHook {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
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
            faults: None,
        }
    }
}

/// The writer's handle, held by the broker.
#[derive(Debug)]
pub(crate) struct DurableStore {
    pub(crate) queue: Queue,
    backend: DiskRef,
    closing: Arc<AtomicBool>,
    close_signal: Arc<Notify>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl DurableStore {
    /// Opens the data directory (recovering every topic log) and starts the writer thread.
    pub(crate) fn start(
        config: DurableConfig,
        events: std::sync::Weak<dyn StoreEvents>,
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
        let backend = match &config.faults {
            Some(FaultHook(faults)) => backend.with_faults(Arc::clone(faults)),
            None => backend,
        };
        let backend = Arc::new(Disk::new(backend));
        let (queue, receiver) = Queue::new(config.queue_capacity);
        let room = Arc::clone(&queue.room);
        let closing = Arc::new(AtomicBool::new(false));
        let close_signal = Arc::new(Notify::new());
        let writer = Writer::new(config, Arc::clone(&backend), events);
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

    /// The backend (for reads by durable subscriptions and tools; see [`io`] for where they run).
    pub(crate) fn backend(&self) -> &DiskRef {
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

/// What the storage writer tells the broker, and asks of it. The broker implements it; the writer
/// holds it weakly, so the store knows nothing of routes, subscriptions or connections, and no
/// subscriber can hold the writer (and with it every stored topic's group commit).
pub(crate) trait StoreEvents: Send + Sync {
    /// A group of `topic` is durable and its publishers are confirmed: wake the topic's durable
    /// subscriptions and hand the messages to live subscribers. `received_ns` says when each was
    /// received. Must return without waiting for any subscriber.
    fn committed(&self, topic: &TopicRef, messages: Vec<StoredMessage>, received_ns: &[u64]);
    /// The stored topics, for retention.
    fn stored_topics(&self) -> Vec<TopicRef>;
    /// The lowest acked-up-to floor of `topic`'s durable subscriptions, open or only persisted
    /// (work-queue retention). `None`: it has none.
    fn work_queue_floor(&self, topic: &str) -> Option<u64>;
}
