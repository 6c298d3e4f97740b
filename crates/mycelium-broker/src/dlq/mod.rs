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

use bytes::{Bytes, BytesMut};
use mycelium_protocol::{HeaderIter, encode_headers};
use mycelium_storage::StoredMessage;
use serde::{Deserialize, Serialize};

/// Header prefix of the dead-letter record.
pub const DLQ_HEADER_PREFIX: &str = "x-dlq-";

/// One failed attempt, for the dead-letter record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct AttemptRecord {
    /// When it failed, ns since the Unix epoch.
    pub(crate) at_ns: u64,
    /// `nack`, `ack_timeout`, `consumer_left`, `term` or `expired`.
    pub(crate) reason: &'static str,
    /// The consumer's error text, if it gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
}

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
#[derive(Debug, Clone, PartialEq, Eq)]
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
    pub payload: Bytes,
}

/// A payload as tools show it: UTF-8 text when it is (and does not itself start with
/// `base64:`), else `base64:` and its base64.
pub fn payload_text(payload: &[u8]) -> String {
    use base64::Engine;
    match std::str::from_utf8(payload) {
        Ok(text) if !text.starts_with("base64:") => text.to_owned(),
        _ => format!(
            "base64:{}",
            base64::engine::general_purpose::STANDARD.encode(payload)
        ),
    }
}

impl DlqEntry {
    pub(crate) fn from_stored(message: &StoredMessage) -> DlqEntry {
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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
    pub(crate) fn matches(&self, entry: &DlqEntry) -> bool {
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
#[derive(Debug, Clone, PartialEq, Eq)]
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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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

impl DlqError {
    /// The stable wire code (both doors map from it: ERROR natively, a status over HTTP).
    pub fn code(&self) -> mycelium_protocol::ErrorCode {
        use mycelium_protocol::ErrorCode;
        match self {
            DlqError::Unknown(_) | DlqError::NotFound { .. } => ErrorCode::NotFound,
            DlqError::Invalid(_) => ErrorCode::InvalidRequest,
            DlqError::Storage(_) => ErrorCode::StorageFailed,
        }
    }
}

/// Removal marks of one DLQ.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Marks {
    pub(crate) below: u64,
    pub(crate) removed: BTreeSet<u64>,
}

impl Marks {
    pub(crate) fn is_removed(&self, sequence: u64) -> bool {
        sequence < self.below || self.removed.contains(&sequence)
    }
}

/// The DLQ topic for `topic` (`orders` and `orders.dlq` both name `orders.dlq`).
pub fn dlq_topic(topic: &str) -> String {
    use crate::routing::name::{DEAD_LETTER_SUFFIX, is_dead_letter_topic};
    if is_dead_letter_topic(topic) {
        topic.to_owned()
    } else {
        format!("{topic}{DEAD_LETTER_SUFFIX}")
    }
}

/// Dead letters read per page, at most.
pub(crate) const PAGE_MAX: usize = 1000;

/// What one page of dead letters may weigh, as its tools show it (JSON, binary payloads in
/// base64): a listing stops there (with at least one entry) and says where to go on, and a
/// replay works through the DLQ a page at a time, so neither holds more than this at once.
pub const PAGE_BYTES_MAX: usize = 4 << 20;

/// About what `message` weighs as a listed dead letter: its headers (escaped), its payload in
/// base64, the fixed fields.
pub(crate) fn listed_bytes(message: &mycelium_storage::StoredMessage) -> usize {
    message.headers.len() * 2 + message.payload.len().div_ceil(3) * 4 + 512
}

/// A dead letter's header block without its `x-dlq-*` record: the headers as first published.
pub(crate) fn original_headers(block: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(block.len());
    let kept = HeaderIter::new(block)
        .map_while(Result::ok)
        .filter(|(key, _)| !key.starts_with(DLQ_HEADER_PREFIX));
    let _ = encode_headers(&mut out, kept);
    out.freeze()
}
