//! The storage writer thread: appends each group per topic, syncs it under the topic's fsync
//! policy, confirms it, and hands it to the broker ([`StoreEvents::committed`]) without waiting
//! for any subscriber; once a second it applies retention.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mycelium_storage::{LogConfig, StorageBackend, StorageError, StoredMessage};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use super::dedup::{DedupIndex, Original};
use super::io::DiskRef;
use super::queue::{AppendRequest, Confirm, Confirms, Stored, fail, fail_confirms};
use super::{DurableConfig, StoreEvents};
use crate::routing::spec::Fsync;
use crate::routing::topic::{TopicCounters, TopicRef};

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

pub(super) struct Writer {
    config: DurableConfig,
    backend: DiskRef,
    events: std::sync::Weak<dyn StoreEvents>,
    next: HashMap<Box<str>, u64>,
    dedup: HashMap<Box<str>, DedupIndex>,
    ids: MessageIds,
    unsynced: Vec<Unsynced>,
    unsynced_bytes: usize,
    deadline: Option<Instant>,
    /// Topics whose writes fail now, with the failures since the first: logged once when a
    /// topic starts failing and once when it recovers (a full disk under a publisher that retries
    /// must not write a log line per attempt).
    failing: HashMap<Box<str>, u64>,
    /// Topics whose log failed an fsync: what the disk holds is unknown from `from` on, so
    /// nothing more is written to them until their log is reopened and cut back there.
    poisoned: HashMap<Box<str>, Poisoned>,
}

/// A topic whose fsync failed.
#[derive(Debug, Clone, Copy)]
struct Poisoned {
    /// The first sequence never confirmed.
    from: u64,
    /// When to try reopening the log.
    retry_at: Instant,
    tries: u32,
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
    pub(super) fn new(
        config: DurableConfig,
        backend: DiskRef,
        events: std::sync::Weak<dyn StoreEvents>,
    ) -> Writer {
        Writer {
            config,
            backend,
            events,
            next: HashMap::new(),
            dedup: HashMap::new(),
            ids: MessageIds::new(),
            unsynced: Vec::new(),
            unsynced_bytes: 0,
            failing: HashMap::new(),
            poisoned: HashMap::new(),
            deadline: None,
        }
    }

    pub(super) fn run(
        mut self,
        mut receiver: mpsc::UnboundedReceiver<(u32, Vec<AppendRequest>)>,
        room: Arc<tokio::sync::Semaphore>,
        closing: Arc<AtomicBool>,
        close: Arc<Notify>,
    ) {
        super::io::storage_thread();
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
                    () = sleep_until(self.deadline) => { self.sync_all(); continue; }
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
                self.write(batch);
                // Group commit: the writer caught up with its queue, so waiting longer gathers
                // nothing (publishers are waiting for these very confirms): sync now. While
                // publishes keep arriving, the group grows until `fsync_interval` has passed.
                // (Waiting for a connection reader still handing a read batch over, so that the
                // batch made one group, cost a wake-up of this thread per group and measured
                // slower: see docs/performance-history.md, 2026-12-02.)
                if !self.unsynced.is_empty()
                    && (receiver.is_empty() || self.deadline.is_some_and(|at| Instant::now() >= at))
                {
                    self.sync_all();
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
                self.write(rest);
            }
            self.sync_all();
        });
    }

    fn write(&mut self, batch: Vec<AppendRequest>) {
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
            if let Err(error) = self.heal(&topic) {
                TopicCounters::add(&topic.counters.rejected, requests.len() as u64);
                fail(requests, &error);
                continue;
            }
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
                self.failed(topic.name(), &error, "append");
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
            if !self.failing.is_empty() {
                self.recovered(topic.name());
            }
            if let Some(first) = messages.first() {
                topic.written_from(first.sequence);
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
                Fsync::Never => self.complete(vec![unsynced]),
                Fsync::Always => self.sync_and_complete(vec![unsynced]),
                Fsync::Batch => {
                    self.unsynced.push(unsynced);
                    self.unsynced_bytes += bytes;
                    self.deadline
                        .get_or_insert_with(|| Instant::now() + self.config.fsync_interval);
                }
            }
        }
        if self.unsynced_bytes >= self.config.fsync_bytes {
            self.sync_all();
        }
    }

    /// Retention by the topics' limits, and work-queue deletion of what every durable
    /// subscription has acknowledged.
    fn apply_retention(&self) {
        let Some(events) = self.events.upgrade() else {
            return;
        };
        let now = mycelium_codec::now_ns();
        for topic in events.stored_topics() {
            let spec = topic.spec();
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
            if spec.retention == crate::routing::spec::Retention::WorkQueue
                && let Some(floor) = events.work_queue_floor(topic.name())
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

    fn sync_all(&mut self) {
        self.deadline = None;
        self.unsynced_bytes = 0;
        let pending = std::mem::take(&mut self.unsynced);
        if !pending.is_empty() {
            self.sync_and_complete(pending);
        }
    }

    /// A write to `topic` failed: logged when the topic starts failing, counted after.
    fn failed(&mut self, topic: &str, error: &mycelium_storage::StorageError, what: &str) {
        let count = self.failing.entry(topic.into()).or_default();
        if *count == 0 {
            tracing::error!(
                topic,
                %error,
                "{what} failed; publishers get StorageFailed (further failures of this topic are counted, not logged, until a write succeeds)"
            );
        }
        *count += 1;
    }

    /// A write to `topic` succeeded: if it was failing, say so once.
    fn recovered(&mut self, topic: &str) {
        if let Some(count) = self.failing.remove(topic) {
            tracing::info!(topic, failures = count, "writes succeed again");
        }
    }

    /// Refuses writes to a topic whose fsync failed until its log was reopened, verified and cut
    /// back to what was confirmed (tried with a backoff), as PostgreSQL learned to: after a
    /// failed fsync the page cache may have dropped the data while a later fsync succeeds.
    fn heal(&mut self, topic: &TopicRef) -> Result<(), StorageError> {
        let Some(poisoned) = self.poisoned.get(topic.name()).copied() else {
            return Ok(());
        };
        let refused = || StorageError::Io {
            path: topic.name().to_owned(),
            source: std::io::Error::other(
                "an fsync of this topic's log failed; writes are refused until the log is reopened and verified",
            ),
        };
        if Instant::now() < poisoned.retry_at {
            return Err(refused());
        }
        match self.backend.reopen_from(topic.name(), poisoned.from) {
            Ok(()) => {
                self.poisoned.remove(topic.name());
                self.next.remove(topic.name());
                self.dedup.remove(topic.name());
                topic.committed_to(u64::MAX);
                tracing::info!(
                    topic = topic.name(),
                    from = poisoned.from,
                    "log reopened and verified after a failed fsync; writes accepted again"
                );
                Ok(())
            }
            Err(error) => {
                let tries = poisoned.tries + 1;
                let backoff = Duration::from_millis(100)
                    .saturating_mul(1 << tries.min(7))
                    .min(Duration::from_secs(10));
                self.poisoned.insert(
                    topic.name().into(),
                    Poisoned {
                        retry_at: Instant::now() + backoff,
                        tries,
                        ..poisoned
                    },
                );
                tracing::debug!(topic = topic.name(), %error, "reopening the log failed; tried again later");
                Err(refused())
            }
        }
    }

    /// An fsync of `unsynced`'s topic failed: its group is never confirmed nor delivered, and
    /// the topic is poisoned from its first message (see [`Writer::heal`]).
    fn poison(&mut self, unsynced: Unsynced, error: &StorageError) {
        let name = unsynced.topic.name();
        let from = unsynced.messages.first().map_or(u64::MAX, |m| m.sequence);
        let entry = self.poisoned.entry(name.into()).or_insert(Poisoned {
            from,
            retry_at: Instant::now(),
            tries: 0,
        });
        entry.from = entry.from.min(from);
        // Its dedup keys may name messages that will be cut: reloaded from the log after.
        self.dedup.remove(name);
        TopicCounters::add(&unsynced.topic.counters.rejected, unsynced.messages.len() as u64);
        fail_confirms(unsynced.confirms, error);
        fail_confirms(unsynced.duplicates.into_iter().map(|(c, _)| c), error);
    }

    fn sync_and_complete(&mut self, pending: Vec<Unsynced>) {
        // One fsync per topic covers every append made to it before the call; once one fails,
        // every later group of that topic fails with it (a later fsync may succeed and prove
        // nothing about the data the failed one lost).
        let mut synced: Vec<String> = Vec::new();
        let mut ok = Vec::new();
        for unsynced in pending {
            let name = unsynced.topic.name();
            let result = if self.poisoned.contains_key(name) {
                Err(StorageError::Io {
                    path: name.to_owned(),
                    source: std::io::Error::other("an earlier fsync of this topic's log failed"),
                })
            } else if synced.iter().any(|s| s == name) {
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
                    let name = name.to_owned();
                    self.failed(&name, &error, "fsync");
                    self.poison(unsynced, &error);
                }
            }
        }
        self.complete(ok);
    }

    /// Durable: confirm to the publishers, then hand each group to the broker, which routes it to
    /// live subscribers without this thread waiting for any of them.
    fn complete(&mut self, mut done: Vec<Unsynced>) {
        // Confirm every group first, and send each connection's confirmations in one write.
        let mut confirms = Confirms::default();
        for unsynced in &mut done {
            for (confirm, original) in unsynced.duplicates.drain(..) {
                let stored = Stored {
                    sequence: original.sequence,
                    id: original.id,
                    duplicate: true,
                };
                confirms.stored(confirm, stored);
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
        let events = self.events.upgrade();
        for unsynced in &done {
            if let Some(last) = unsynced.messages.last() {
                unsynced.topic.committed_to(last.sequence + 1);
            }
        }
        for unsynced in done {
            // The store spans of traced messages end once their messages are durable, confirmed
            // and handed on (when this iteration ends).
            let _stored = unsynced.spans;
            if let Some(events) = &events {
                events.committed(&unsynced.topic, unsynced.messages, &unsynced.received);
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
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
