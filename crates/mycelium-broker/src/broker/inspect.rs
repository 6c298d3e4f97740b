//! Read-only views of the broker for the tools and the HTTP API: durable subscriptions with their
//! lag, a topic's depth and oldest unacknowledged message, a stored message by id; and removing a
//! durable subscription.

use std::sync::Arc;

use mycelium_storage::{StorageBackend, StoredMessage};
use serde::Serialize;

use crate::broker::Broker;
use crate::routing::spec::StorageKind;

/// One durable subscription as the tools show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DurableInfo {
    /// Its topic.
    pub topic: String,
    /// Its durable name.
    pub name: String,
    /// Every sequence below this is finished.
    pub acked_floor: u64,
    /// Messages stored after the floor that are not finished yet (the consumer lag).
    pub lag: u64,
    /// Messages handed out and not acknowledged.
    pub in_flight: usize,
    /// Messages waiting for a retry or their not-before time.
    pub waiting: usize,
    /// Consumers attached now.
    pub consumers: usize,
    /// Age of the oldest unfinished message, ms (0 when none).
    pub oldest_unacked_age_ms: u64,
}

/// A stored topic's depth and consumers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopicDepth {
    /// Messages readable in the log.
    pub stored: u64,
    /// First readable sequence.
    pub first_sequence: u64,
    /// The next sequence to be assigned.
    pub next_sequence: u64,
    /// Bytes on disk.
    pub bytes: u64,
    /// Its durable subscriptions.
    pub subscriptions: Vec<DurableInfo>,
    /// Dead letters in `{topic}.dlq`.
    pub dlq_depth: u64,
}

impl Broker {
    /// Every open durable subscription, sorted by topic and name. Blocking: reads the logs.
    pub fn durable_subscriptions(&self) -> Vec<DurableInfo> {
        let subs: Vec<_> = self
            .durable_subs_snapshot()
            .into_iter()
            .map(|(topic, name, sub)| self.durable_info_of(&topic, &name, &sub))
            .collect();
        let mut subs = subs;
        subs.sort_by(|a, b| (&a.topic, &a.name).cmp(&(&b.topic, &b.name)));
        subs
    }

    /// The (topic, name) of every open durable subscription (no I/O).
    pub fn durable_subscription_names(&self) -> Vec<(String, String)> {
        self.durable_subs_snapshot()
            .into_iter()
            .map(|(topic, name, _)| (topic, name))
            .collect()
    }

    /// One durable subscription, if open. Blocking: reads the log.
    pub fn durable_subscription(&self, topic: &str, name: &str) -> Option<DurableInfo> {
        self.durable_subs_snapshot()
            .into_iter()
            .find(|(t, n, _)| t == topic && n == name)
            .map(|(t, n, sub)| self.durable_info_of(&t, &n, &sub))
    }

    fn durable_info_of(&self, topic: &str, name: &str, sub: &crate::consumer::DurableSub) -> DurableInfo {
        let (floor, in_flight, waiting) = {
            let state = sub.state.lock();
            (state.floor(), state.in_flight(), state.waiting())
        };
        let backend = self.storage();
        let next = backend
            .as_ref()
            .and_then(|b| b.bounds(topic).ok())
            .map_or(floor, |b| b.next);
        let oldest = backend
            .as_ref()
            .and_then(|b| oldest_from(b.as_ref(), topic, floor, next));
        DurableInfo {
            topic: topic.to_owned(),
            name: name.to_owned(),
            acked_floor: floor,
            lag: next.saturating_sub(floor),
            in_flight,
            waiting,
            consumers: sub.consumers.lock().len(),
            oldest_unacked_age_ms: oldest.map_or(0, |publish_ns| {
                mycelium_codec::now_ns().saturating_sub(publish_ns) / 1_000_000
            }),
        }
    }

    /// Depth, subscriptions and DLQ size of a stored topic (`None` for in-memory or unknown ones).
    pub fn topic_depth(&self, topic: &str) -> Option<TopicDepth> {
        let spec = (**self.topic(topic)?.spec()).clone();
        if spec.storage != StorageKind::Disk {
            return None;
        }
        let backend = self.storage()?;
        let bounds = backend.bounds(topic).ok()?;
        Some(TopicDepth {
            stored: bounds.next.saturating_sub(bounds.first),
            first_sequence: bounds.first,
            next_sequence: bounds.next,
            bytes: bounds.bytes,
            subscriptions: self
                .durable_subscriptions()
                .into_iter()
                .filter(|s| s.topic == topic)
                .collect(),
            dlq_depth: self.dlq_depth(topic).unwrap_or(0),
        })
    }

    /// The principal that owns the open durable subscription `name` of `topic` (`None`: not
    /// open, or recorded without an owner).
    pub fn durable_owner(&self, topic: &str, name: &str) -> Option<String> {
        self.durable_subs
            .lock()
            .get(&(topic.to_owned(), name.to_owned()))
            .and_then(|sub| sub.owner.clone())
    }

    /// Whether `topic` has durable subscriptions (open, or persisted by an earlier run).
    pub fn has_durable_subscriptions(&self, topic: &str) -> bool {
        self.durable_floor(topic).is_some()
    }

    /// Removes the durable subscription `name` of `topic`: its consumers are detached, its
    /// dispatcher stops, its persisted state is deleted. Returns whether it existed.
    ///
    /// # Errors
    /// Deleting the state file failed.
    pub fn delete_durable(&self, topic: &str, name: &str) -> std::io::Result<bool> {
        crate::store::io::assert_may_block("removing a subscription's state");
        let removed = self.remove_durable_sub(topic, name);
        let file = self.data_dir().subscription_state(topic, name);
        let on_disk = match std::fs::remove_file(&file) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(e),
        };
        Ok(removed || on_disk)
    }

    /// Removes the persisted state of every durable subscription of `topic` (the topic is being
    /// deleted).
    ///
    /// # Errors
    /// Deleting a state file failed.
    pub fn delete_persisted_subscriptions(&self, topic: &str) -> std::io::Result<()> {
        crate::store::io::assert_may_block("removing subscriptions' state");
        match std::fs::remove_dir_all(self.data_dir().subscriptions_dir(topic)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The stored message with id `id` (a UUIDv7: its time says where to look in each log).
    pub fn find_message(&self, id: &[u8; 16]) -> Option<(String, StoredMessage)> {
        let ms = uuid::Uuid::from_bytes(*id).get_timestamp()?.to_unix();
        let at_ns = ms.0 * 1_000_000_000 + u64::from(ms.1);
        let from_ns = at_ns / 1_000_000 * 1_000_000;
        let backend = self.storage()?;
        for topic in backend.topics() {
            let Ok(start) = backend.seek_time(&topic, from_ns) else {
                continue;
            };
            let Ok(bounds) = backend.bounds(&topic) else {
                continue;
            };
            let mut sequence = start;
            // Ids are assigned in publish order and carry the publish millisecond: scan that
            // millisecond only.
            'pages: while sequence < bounds.next {
                let Ok(page) = backend.read(&topic, sequence, 1024, 8 << 20) else {
                    break;
                };
                let Some(last) = page.last() else { break };
                sequence = last.sequence + 1;
                for message in page {
                    if message.id == *id {
                        return Some((topic, message));
                    }
                    if message.publish_ns >= from_ns + 1_000_000 {
                        break 'pages;
                    }
                }
            }
        }
        None
    }
}

/// The publish time of the first readable message at or after `floor` (below `next`).
fn oldest_from(backend: &dyn StorageBackend, topic: &str, floor: u64, next: u64) -> Option<u64> {
    if floor >= next {
        return None;
    }
    backend
        .read(topic, floor, 1, usize::MAX)
        .ok()?
        .first()
        .map(|m| m.publish_ns)
}

impl Broker {
    fn durable_subs_snapshot(&self) -> Vec<(String, String, Arc<crate::consumer::DurableSub>)> {
        self.durable_subs
            .lock()
            .iter()
            .map(|((t, n), sub)| (t.clone(), n.clone(), Arc::clone(sub)))
            .collect()
    }

    fn remove_durable_sub(&self, topic: &str, name: &str) -> bool {
        let removed = self
            .durable_subs
            .lock()
            .remove(&(topic.to_owned(), name.to_owned()));
        let Some(sub) = removed else { return false };
        sub.stop();
        let doomed: Vec<(u64, u32)> = self
            .durable_consumers
            .lock()
            .iter()
            .filter(|(_, s)| Arc::ptr_eq(s, &sub))
            .map(|(k, _)| *k)
            .collect();
        {
            let mut consumers = self.durable_consumers.lock();
            for key in &doomed {
                consumers.remove(key);
            }
        }
        sub.consumers.lock().clear();
        true
    }
}
