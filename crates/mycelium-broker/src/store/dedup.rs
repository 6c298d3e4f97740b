//! The idempotency-key index of one durable topic: which key was stored as which message, for the
//! topic's `dedup_window`. Owned by the storage writer (the topic's single writer), so a key is
//! checked and recorded in the same step as the append. It survives a restart because it is
//! rebuilt from the log: every stored message keeps its key.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use mycelium_storage::{StorageBackend, StorageError};

/// The message a key was first stored as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Original {
    pub(crate) sequence: u64,
    pub(crate) id: [u8; 16],
    pub(crate) publish_ns: u64,
}

/// Keys seen within the window.
#[derive(Debug, Default)]
pub(crate) struct DedupIndex {
    keys: HashMap<Bytes, Original>,
    /// `(publish_ns, key)` in publish order, for eviction.
    order: VecDeque<(u64, Bytes)>,
}

/// Messages read per page while rebuilding.
const PAGE: usize = 4096;

impl DedupIndex {
    /// Rebuilds the index of `topic` from its log: every keyed message published within `window`
    /// before `now_ns`.
    pub(crate) fn load(
        backend: &dyn StorageBackend,
        topic: &str,
        window: Duration,
        now_ns: u64,
    ) -> Result<DedupIndex, StorageError> {
        let mut index = DedupIndex::default();
        let since = now_ns.saturating_sub(nanos(window));
        let end = backend.bounds(topic)?.next;
        let mut from = backend.seek_time(topic, since)?;
        while from < end {
            let page = backend.read(topic, from, PAGE, 16 << 20)?;
            let Some(last) = page.last() else { break };
            from = last.sequence + 1;
            for message in page {
                if let Some(key) = message.idempotency_key
                    && message.publish_ns >= since
                {
                    index.insert(
                        key,
                        Original {
                            sequence: message.sequence,
                            id: message.id,
                            publish_ns: message.publish_ns,
                        },
                    );
                }
            }
        }
        Ok(index)
    }

    /// The original of `key`, if it was stored within `window` before `now_ns`.
    pub(crate) fn get(&mut self, key: &[u8], window: Duration, now_ns: u64) -> Option<Original> {
        self.evict(window, now_ns);
        self.keys.get(key).copied()
    }

    /// Records `key` as stored as `original`.
    pub(crate) fn insert(&mut self, key: Bytes, original: Original) {
        self.order.push_back((original.publish_ns, key.clone()));
        self.keys.insert(key, original);
    }

    /// Forgets `key` (its append failed).
    pub(crate) fn remove(&mut self, key: &[u8]) {
        self.keys.remove(key);
    }

    /// Keys remembered now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    fn evict(&mut self, window: Duration, now_ns: u64) {
        let since = now_ns.saturating_sub(nanos(window));
        while let Some((publish_ns, _)) = self.order.front()
            && *publish_ns < since
        {
            let (publish_ns, key) = self.order.pop_front().expect("checked above");
            // A key stored again later (after its window) has a newer entry: keep that.
            if self.keys.get(&key).is_some_and(|o| o.publish_ns == publish_ns) {
                self.keys.remove(&key);
            }
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mycelium_storage::{MemoryBackend, StoredMessage};

    const S: u64 = 1_000_000_000;

    fn original(sequence: u64, publish_ns: u64) -> Original {
        Original {
            sequence,
            id: [sequence as u8; 16],
            publish_ns,
        }
    }

    #[test]
    fn a_key_is_remembered_for_the_window_and_then_forgotten() {
        let window = Duration::from_secs(120);
        let mut index = DedupIndex::default();
        index.insert(Bytes::from_static(b"k"), original(1, 10 * S));
        assert_eq!(index.get(b"k", window, 100 * S), Some(original(1, 10 * S)));
        assert_eq!(index.get(b"k", window, 130 * S), Some(original(1, 10 * S)));
        assert_eq!(index.get(b"k", window, 131 * S), None);
        assert_eq!(index.len(), 0);
    }

    #[test]
    fn a_key_stored_again_after_its_window_keeps_the_newer_original() {
        let window = Duration::from_secs(10);
        let mut index = DedupIndex::default();
        index.insert(Bytes::from_static(b"k"), original(1, S));
        assert_eq!(index.get(b"k", window, 20 * S), None);
        index.insert(Bytes::from_static(b"k"), original(7, 20 * S));
        assert_eq!(index.get(b"k", window, 25 * S), Some(original(7, 20 * S)));
    }

    #[test]
    fn load_rebuilds_the_window_from_the_log() {
        let backend = MemoryBackend::default();
        let messages: Vec<StoredMessage> = (1..=5)
            .map(|sequence| StoredMessage {
                sequence,
                publish_ns: sequence * 60 * S,
                idempotency_key: (sequence != 4).then(|| Bytes::from(format!("key-{sequence}"))),
                ..StoredMessage::default()
            })
            .collect();
        backend.append("t", &messages).unwrap();
        // now = 330 s, window 120 s: messages published at >= 210 s (4 and 5) count; 4 has no key.
        let mut index = DedupIndex::load(&backend, "t", Duration::from_secs(120), 330 * S).unwrap();
        assert_eq!(index.len(), 1);
        assert_eq!(
            index
                .get(b"key-5", Duration::from_secs(120), 330 * S)
                .map(|o| o.sequence),
            Some(5)
        );
        assert_eq!(index.get(b"key-3", Duration::from_secs(120), 330 * S), None);
    }
}
