//! Dead-letter queues: `{topic}.dlq`, a disk topic holding the messages a durable subscription
//! gave up on, each with its story in `x-dlq-*` headers. Browsable (list with filters and paging,
//! get one), replayable (one, a selection or all, to the original topic or another, rate
//! limited) and purgeable.
//!
//! A log cannot delete one record, so removal is a mark: the DLQ's marks (`below`: everything
//! before this sequence is gone; `removed`: single sequences) live in
//! `<data_dir>/dlq/<dlq topic>.json`, written (temp, fsync, rename) before an operation reports
//! success. Purging everything also truncates the log. Replay stores the message on the target
//! topic first and marks it afterwards; the replayed copy carries the idempotency key
//! `mycelium-dlq-replay:<dead letter id>`, so a replay repeated after a crash between the two
//! steps is recognised as a duplicate within the target's dedup window.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mycelium_protocol::{HeaderIter, encode_headers};
use mycelium_storage::{StorageBackend, StoredMessage};
use serde::{Deserialize, Serialize};

use crate::broker::Broker;
use crate::durable::MessageProps;
use crate::durable_sub::AttemptRecord;

/// Header prefix of the dead-letter record.
pub const DLQ_HEADER_PREFIX: &str = "x-dlq-";

/// The story of one dead letter, written as headers.
pub(crate) struct DeadLetter<'a> {
    pub(crate) topic: &'a str,
    pub(crate) subscription: &'a str,
    pub(crate) sequence: u64,
    pub(crate) message_id: [u8; 16],
    pub(crate) published_ns: u64,
    pub(crate) attempts: u32,
    pub(crate) reason: &'static str,
    pub(crate) history: &'a [AttemptRecord],
}

impl DeadLetter<'_> {
    /// The original headers followed by the `x-dlq-*` record.
    pub(crate) fn headers(&self, original: &[u8]) -> Bytes {
        let id = uuid::Uuid::from_bytes(self.message_id).to_string();
        let (sequence, attempts) = (self.sequence.to_string(), self.attempts.to_string());
        let at = mycelium_codec::now_ns().to_string();
        let published = self.published_ns.to_string();
        let error = self
            .history
            .iter()
            .rev()
            .find_map(|a| a.error.clone())
            .unwrap_or_default();
        let history = serde_json::to_string(self.history).unwrap_or_else(|_| "[]".into());
        let mut headers = BytesMut::from(original);
        let mut entries: Vec<(&str, &[u8])> = vec![
            ("x-dlq-topic", self.topic.as_bytes()),
            ("x-dlq-subscription", self.subscription.as_bytes()),
            ("x-dlq-sequence", sequence.as_bytes()),
            ("x-dlq-message-id", id.as_bytes()),
            ("x-dlq-attempts", attempts.as_bytes()),
            ("x-dlq-reason", self.reason.as_bytes()),
            ("x-dlq-at", at.as_bytes()),
            ("x-dlq-published", published.as_bytes()),
        ];
        if !error.is_empty() {
            entries.push(("x-dlq-error", error.as_bytes()));
        }
        // A history too long for one header value is cut to the most recent attempts.
        let mut history = history;
        let mut kept = self.history.len();
        while history.len() > u16::MAX as usize && kept > 0 {
            kept /= 2;
            history = serde_json::to_string(&self.history[self.history.len() - kept..]).unwrap_or_default();
        }
        entries.push(("x-dlq-history", history.as_bytes()));
        if encode_headers(&mut headers, entries).is_err() {
            // Only an oversize error text can fail; keep the record without it.
            headers = BytesMut::from(original);
            let _ = encode_headers(
                &mut headers,
                [
                    ("x-dlq-topic", self.topic.as_bytes()),
                    ("x-dlq-sequence", sequence.as_bytes()),
                    ("x-dlq-message-id", id.as_bytes()),
                    ("x-dlq-reason", self.reason.as_bytes()),
                ],
            );
        }
        headers.freeze()
    }
}

/// One dead letter as the tools show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DlqEntry {
    /// Sequence in the DLQ topic.
    pub sequence: u64,
    /// Id of the dead letter (in the DLQ topic).
    pub id: String,
    /// The topic it came from.
    pub topic: String,
    /// The durable subscription that gave up.
    pub subscription: String,
    /// Its sequence in the original topic.
    pub original_sequence: u64,
    /// Its id in the original topic.
    pub original_id: String,
    /// Delivery attempts made.
    pub attempts: u32,
    /// `max_deliveries`, `terminated` or `expired`.
    pub reason: String,
    /// The consumer's last error text.
    pub error: Option<String>,
    /// When it was dead-lettered, ns since the Unix epoch.
    pub dead_lettered_ns: u64,
    /// When it was published to its original topic, ns since the Unix epoch.
    pub published_ns: u64,
    /// Every failed attempt since the broker started (`at_ns`, `reason`, `error`).
    pub history: serde_json::Value,
    /// The original headers (without the `x-dlq-*` record); values as UTF-8 (lossy).
    pub headers: BTreeMap<String, String>,
    /// The payload.
    #[serde(with = "payload_text")]
    pub payload: Bytes,
}

/// Payloads travel as UTF-8 when they are, else as `base64:` text.
mod payload_text {
    use base64::Engine;
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(payload: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(payload) {
            Ok(text) if !text.starts_with("base64:") => s.serialize_str(text),
            _ => s.serialize_str(&format!(
                "base64:{}",
                base64::engine::general_purpose::STANDARD.encode(payload)
            )),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let text = String::deserialize(d)?;
        match text.strip_prefix("base64:") {
            Some(b64) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map(Bytes::from)
                .map_err(serde::de::Error::custom),
            None => Ok(Bytes::from(text)),
        }
    }
}

impl DlqEntry {
    fn from_stored(message: &StoredMessage) -> DlqEntry {
        let mut dlq: BTreeMap<&str, String> = BTreeMap::new();
        let mut headers = BTreeMap::new();
        for (key, value) in HeaderIter::new(&message.headers).map_while(Result::ok) {
            let value = String::from_utf8_lossy(value).into_owned();
            match key.strip_prefix(DLQ_HEADER_PREFIX) {
                Some(field) => {
                    dlq.insert(field, value);
                }
                None => {
                    headers.insert(key.to_owned(), value);
                }
            }
        }
        let text = |k: &str| dlq.get(k).cloned().unwrap_or_default();
        let number = |k: &str| dlq.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        DlqEntry {
            sequence: message.sequence,
            id: uuid::Uuid::from_bytes(message.id).to_string(),
            topic: text("topic"),
            subscription: text("subscription"),
            original_sequence: number("sequence"),
            original_id: text("message-id"),
            attempts: u32::try_from(number("attempts")).unwrap_or(u32::MAX),
            reason: text("reason"),
            error: dlq.get("error").cloned(),
            dead_lettered_ns: number("at"),
            published_ns: dlq
                .get("published")
                .and_then(|v| v.parse().ok())
                .unwrap_or(message.publish_ns),
            history: dlq
                .get("history")
                .and_then(|h| serde_json::from_str(h).ok())
                .unwrap_or(serde_json::Value::Array(Vec::new())),
            headers,
            payload: message.payload.clone(),
        }
    }
}

/// Which dead letters an operation applies to. Empty: all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DlqFilter {
    /// Only these DLQ sequences.
    pub sequences: Vec<u64>,
    /// Only this reason (`max_deliveries`, `terminated`, `expired`).
    pub reason: Option<String>,
    /// Only from this durable subscription.
    pub subscription: Option<String>,
    /// Dead-lettered at or after (ns since the Unix epoch).
    pub since_ns: Option<u64>,
    /// Dead-lettered before.
    pub until_ns: Option<u64>,
}

impl DlqFilter {
    fn matches(&self, entry: &DlqEntry) -> bool {
        (self.sequences.is_empty() || self.sequences.contains(&entry.sequence))
            && self.reason.as_ref().is_none_or(|r| *r == entry.reason)
            && self
                .subscription
                .as_ref()
                .is_none_or(|s| *s == entry.subscription)
            && self.since_ns.is_none_or(|t| entry.dead_lettered_ns >= t)
            && self.until_ns.is_none_or(|t| entry.dead_lettered_ns < t)
    }
}

/// A page of dead letters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DlqPage {
    /// The DLQ topic.
    pub dlq: String,
    /// Matching entries, oldest first.
    pub entries: Vec<DlqEntry>,
    /// Pass as `after` for the next page; `None` when this is the last.
    pub next_after: Option<u64>,
    /// Dead letters in the queue (all, not only matching).
    pub depth: u64,
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayReport {
    /// Stored on the target (and removed from the DLQ).
    pub replayed: u64,
    /// Recognised by the target as already replayed (and removed from the DLQ).
    pub duplicates: u64,
    /// Refused by the target; left in the DLQ. `(dlq sequence, error)`.
    pub failed: Vec<(u64, String)>,
}

/// Why a DLQ operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DlqError {
    /// No such dead-letter queue.
    #[error("no dead-letter queue `{0}`")]
    Unknown(String),
    /// No such dead letter.
    #[error("no dead letter {sequence} in `{dlq}`")]
    NotFound {
        /// The DLQ topic.
        dlq: String,
        /// The sequence asked for.
        sequence: u64,
    },
    /// A dead letter names no topic and no target was given.
    #[error("{0}")]
    Invalid(String),
    /// Reading or marking failed.
    #[error("storage: {0}")]
    Storage(String),
}

/// Removal marks of one DLQ.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Marks {
    below: u64,
    removed: BTreeSet<u64>,
}

impl Marks {
    fn is_removed(&self, sequence: u64) -> bool {
        sequence < self.below || self.removed.contains(&sequence)
    }
}

/// The DLQ topic for `topic` (`orders` and `orders.dlq` both name `orders.dlq`).
pub fn dlq_topic(topic: &str) -> String {
    if topic.ends_with(".dlq") {
        topic.to_owned()
    } else {
        format!("{topic}.dlq")
    }
}

const PAGE_MAX: usize = 1000;

impl Broker {
    fn dlq_backend(&self, dlq: &str) -> Result<std::sync::Arc<dyn StorageBackend>, DlqError> {
        let backend = self.storage().ok_or_else(|| DlqError::Unknown(dlq.to_owned()))?;
        if !backend.topics().iter().any(|t| t == dlq) {
            return Err(DlqError::Unknown(dlq.to_owned()));
        }
        Ok(backend)
    }

    fn marks_path(&self, dlq: &str) -> PathBuf {
        self.config()
            .durable
            .data_dir
            .join("dlq")
            .join(format!("{dlq}.json"))
    }

    fn marks(&self, dlq: &str) -> Marks {
        let mut cache = self.dlq_marks.lock();
        cache
            .entry(dlq.to_owned())
            .or_insert_with(|| {
                std::fs::read(self.marks_path(dlq))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .unwrap_or_default()
            })
            .clone()
    }

    fn save_marks(&self, dlq: &str, marks: Marks) -> Result<(), DlqError> {
        let path = self.marks_path(dlq);
        let write = || -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, serde_json::to_vec(&marks).map_err(std::io::Error::other)?)?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| DlqError::Storage(format!("{}: {e}", path.display())))?;
        self.dlq_marks.lock().insert(dlq.to_owned(), marks);
        Ok(())
    }

    /// Every dead letter of `dlq` matching `filter`, in sequence order, calling `each` until it
    /// returns false.
    fn dlq_scan(
        &self,
        dlq: &str,
        after: u64,
        filter: &DlqFilter,
        mut each: impl FnMut(DlqEntry, &StoredMessage) -> bool,
    ) -> Result<(), DlqError> {
        let backend = self.dlq_backend(dlq)?;
        let marks = self.marks(dlq);
        let bounds = backend
            .bounds(dlq)
            .map_err(|e| DlqError::Storage(e.to_string()))?;
        let mut from = bounds.first.max(after + 1).max(marks.below);
        while from < bounds.next {
            let page = backend
                .read(dlq, from, PAGE_MAX, 16 << 20)
                .map_err(|e| DlqError::Storage(e.to_string()))?;
            let Some(last) = page.last() else { break };
            from = last.sequence + 1;
            for message in page.iter().filter(|m| !marks.is_removed(m.sequence)) {
                let entry = DlqEntry::from_stored(message);
                if filter.matches(&entry) && !each(entry, message) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Dead letters of `topic`'s DLQ matching `filter`, after DLQ sequence `after`, at most
    /// `limit` (capped at 1,000).
    ///
    /// # Errors
    /// [`DlqError`].
    pub fn dlq_list(
        &self,
        topic: &str,
        filter: &DlqFilter,
        after: u64,
        limit: usize,
    ) -> Result<DlqPage, DlqError> {
        let dlq = dlq_topic(topic);
        let limit = limit.clamp(1, PAGE_MAX);
        let mut entries = Vec::new();
        let mut more = false;
        self.dlq_scan(&dlq, after, filter, |entry, _| {
            if entries.len() == limit {
                more = true;
                return false;
            }
            entries.push(entry);
            true
        })?;
        let next_after = more.then(|| entries.last().map_or(after, |e| e.sequence));
        let depth = self.dlq_depth(&dlq)?;
        Ok(DlqPage {
            dlq,
            entries,
            next_after,
            depth,
        })
    }

    /// Dead letters in `topic`'s DLQ.
    ///
    /// # Errors
    /// [`DlqError`].
    pub fn dlq_depth(&self, topic: &str) -> Result<u64, DlqError> {
        let dlq = dlq_topic(topic);
        let backend = self.dlq_backend(&dlq)?;
        let marks = self.marks(&dlq);
        let bounds = backend
            .bounds(&dlq)
            .map_err(|e| DlqError::Storage(e.to_string()))?;
        let first = bounds.first.max(marks.below);
        let removed = marks.removed.range(first..bounds.next).count() as u64;
        Ok(bounds.next.saturating_sub(first).saturating_sub(removed))
    }

    /// One dead letter of `topic`'s DLQ by its DLQ sequence.
    ///
    /// # Errors
    /// [`DlqError::NotFound`] and the rest of [`DlqError`].
    pub fn dlq_get(&self, topic: &str, sequence: u64) -> Result<DlqEntry, DlqError> {
        let dlq = dlq_topic(topic);
        let filter = DlqFilter {
            sequences: vec![sequence],
            ..DlqFilter::default()
        };
        let mut found = None;
        self.dlq_scan(&dlq, sequence.saturating_sub(1), &filter, |entry, _| {
            found = Some(entry);
            false
        })?;
        found.ok_or(DlqError::NotFound { dlq, sequence })
    }

    /// Removes the matching dead letters; returns how many. An empty filter removes everything
    /// and truncates the DLQ's log.
    ///
    /// # Errors
    /// [`DlqError`].
    pub fn dlq_purge(&self, topic: &str, filter: &DlqFilter) -> Result<u64, DlqError> {
        let dlq = dlq_topic(topic);
        let backend = self.dlq_backend(&dlq)?;
        let mut marks = self.marks(&dlq);
        if *filter == DlqFilter::default() {
            let count = self.dlq_depth(&dlq)?;
            let next = backend
                .bounds(&dlq)
                .map_err(|e| DlqError::Storage(e.to_string()))?
                .next;
            marks.below = next;
            marks.removed.clear();
            self.save_marks(&dlq, marks)?;
            backend
                .truncate_before(&dlq, next)
                .map_err(|e| DlqError::Storage(e.to_string()))?;
            return Ok(count);
        }
        let mut doomed = Vec::new();
        self.dlq_scan(&dlq, 0, filter, |entry, _| {
            doomed.push(entry.sequence);
            true
        })?;
        marks.removed.extend(&doomed);
        self.save_marks(&dlq, marks)?;
        Ok(doomed.len() as u64)
    }

    /// Publishes the matching dead letters again, to `target` (or each one's original topic), at
    /// most `rate` per second, removing each from the DLQ once the target has it.
    ///
    /// # Errors
    /// [`DlqError`]; a dead letter the target refuses is reported in
    /// [`ReplayReport::failed`] and stays in the DLQ.
    pub async fn dlq_replay(
        &self,
        topic: &str,
        filter: &DlqFilter,
        target: Option<&str>,
        rate: Option<u32>,
    ) -> Result<ReplayReport, DlqError> {
        let dlq = dlq_topic(topic);
        let mut entries = Vec::new();
        self.dlq_scan(&dlq, 0, filter, |entry, message| {
            entries.push((entry, original_headers(&message.headers)));
            true
        })?;
        let mut report = ReplayReport::default();
        let pause = rate
            .filter(|r| *r > 0)
            .map(|r| Duration::from_secs_f64(1.0 / f64::from(r)));
        let mut next_at = tokio::time::Instant::now();
        for (entry, headers) in entries {
            if let Some(pause) = pause {
                tokio::time::sleep_until(next_at).await;
                next_at += pause;
            }
            let to = target.map_or(entry.topic.as_str(), |t| t);
            if to.is_empty() {
                report.failed.push((
                    entry.sequence,
                    "the dead letter names no topic; give a target".into(),
                ));
                continue;
            }
            let props = MessageProps {
                idempotency_key: Some(Bytes::from(format!("mycelium-dlq-replay:{}", entry.id))),
                ..MessageProps::default()
            };
            let key_ok = self
                .topic(to)
                .is_some_and(|t| t.spec().storage == crate::spec::StorageKind::Disk);
            let props = if key_ok { props } else { MessageProps::default() };
            match self
                .publish_local(to, headers, entry.payload.clone(), props)
                .await
            {
                Ok((_, stored)) => {
                    if stored.duplicate {
                        report.duplicates += 1;
                    } else {
                        report.replayed += 1;
                    }
                    let mut marks = self.marks(&dlq);
                    marks.removed.insert(entry.sequence);
                    self.save_marks(&dlq, marks)?;
                }
                Err(error) => report.failed.push((entry.sequence, error.to_string())),
            }
        }
        Ok(report)
    }
}

/// A dead letter's header block without its `x-dlq-*` record: the headers as first published.
fn original_headers(block: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(block.len());
    let kept = HeaderIter::new(block)
        .map_while(Result::ok)
        .filter(|(key, _)| !key.starts_with(DLQ_HEADER_PREFIX));
    let _ = encode_headers(&mut out, kept);
    out.freeze()
}
