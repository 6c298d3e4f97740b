//! One validator for topic specs, whichever door they come through (the config file, the HTTP
//! topics API; later ADMIN and the topic registry): each door fills a [`TopicDraft`] with what it
//! was given, [`TopicDraft::resolve`] turns it into a [`TopicSpec`] or lists every problem, and
//! the door maps each [`SpecProblem`]'s [`SpecField`] back to its own key.

use std::time::Duration;

use super::spec::{Delivery, StorageKind, TopicSpec};

/// A topic's settings as a door received them: `None` is "not given" (the default applies).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct TopicDraft {
    pub routing: Option<String>,
    pub balance: Option<String>,
    pub buffer_bytes: Option<u64>,
    pub message_bytes_max: Option<u64>,
    pub overflow: Option<String>,
    pub block_timeout: Option<Duration>,
    pub codec: Option<String>,
    pub storage: Option<String>,
    pub fsync: Option<String>,
    pub delivery: Option<String>,
    pub priority: Option<bool>,
    pub ttl: Option<Duration>,
    pub on_expired: Option<String>,
    pub dedup_window: Option<Duration>,
    pub dead_letter: Option<bool>,
    pub retention: Option<String>,
    pub retention_messages: Option<u64>,
    pub retention_bytes: Option<u64>,
    pub retention_age: Option<Duration>,
    pub unmatched: Option<String>,
}

/// A setting of a topic spec (each door names it its own way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(missing_docs)]
pub enum SpecField {
    Routing,
    Balance,
    BufferBytes,
    MessageBytesMax,
    Overflow,
    BlockTimeout,
    Codec,
    Storage,
    Fsync,
    Delivery,
    Priority,
    Ttl,
    OnExpired,
    DedupWindow,
    DeadLetter,
    Retention,
    RetentionMessages,
    RetentionBytes,
    RetentionAge,
    Unmatched,
}

impl SpecField {
    /// The setting's name in the config file (`[[topics]]` keys); other doors rename a few.
    pub const fn as_str(self) -> &'static str {
        match self {
            SpecField::Routing => "routing",
            SpecField::Balance => "balance",
            SpecField::BufferBytes => "buffer_size",
            SpecField::MessageBytesMax => "max_message_size",
            SpecField::Overflow => "overflow",
            SpecField::BlockTimeout => "block_timeout",
            SpecField::Codec => "codec",
            SpecField::Storage => "storage",
            SpecField::Fsync => "fsync",
            SpecField::Delivery => "delivery",
            SpecField::Priority => "priority",
            SpecField::Ttl => "ttl",
            SpecField::OnExpired => "on_expired",
            SpecField::DedupWindow => "dedup_window",
            SpecField::DeadLetter => "dead_letter",
            SpecField::Retention => "retention",
            SpecField::RetentionMessages => "retention_messages",
            SpecField::RetentionBytes => "retention_bytes",
            SpecField::RetentionAge => "retention_age",
            SpecField::Unmatched => "unmatched",
        }
    }
}

/// What is wrong with one setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecProblem {
    /// The setting.
    pub field: SpecField,
    /// Why, in a sentence.
    pub reason: String,
}

/// Broker-wide bounds a spec must keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecLimits {
    /// The largest payload a frame can carry (the frame limit less room for framing).
    pub message_bytes_max: u64,
}

/// Subscriber buffer sizes a topic may set.
pub const BUFFER_BYTES_RANGE: std::ops::RangeInclusive<u64> = 1024..=(4 << 30);

impl TopicDraft {
    /// The spec, or every problem (a setting that does not parse is reported once, and the rules
    /// that depend on it are checked against its default).
    ///
    /// # Errors
    /// Every problem found, in field order.
    pub fn resolve(&self, limits: &SpecLimits) -> Result<TopicSpec, Vec<SpecProblem>> {
        let mut problems = Vec::new();
        let mut spec = TopicSpec::default();
        let mut bad = |field, reason: String| problems.push(SpecProblem { field, reason });
        macro_rules! parse_into {
            ($($name:ident => $field:ident,)*) => {$(
                if let Some(text) = &self.$name {
                    match text.parse() {
                        Ok(value) => spec.$name = value,
                        Err(reason) => bad(SpecField::$field, reason),
                    }
                }
            )*};
        }
        parse_into! {
            routing => Routing,
            balance => Balance,
            overflow => Overflow,
            codec => Codec,
            fsync => Fsync,
            on_expired => OnExpired,
            retention => Retention,
            unmatched => Unmatched,
        }
        let storage = self.storage.as_deref().map(str::parse::<StorageKind>);
        let delivery = self.delivery.as_deref().map(str::parse::<Delivery>);
        if let Some(Err(reason)) = &storage {
            bad(SpecField::Storage, reason.clone());
        }
        if let Some(Err(reason)) = &delivery {
            bad(SpecField::Delivery, reason.clone());
        }
        // Storage follows from delivery and the reverse; given both, they must agree.
        let (storage, delivery) = match (storage.and_then(Result::ok), delivery.and_then(Result::ok)) {
            (None, None) => (StorageKind::Memory, Delivery::AtMostOnce),
            (Some(StorageKind::Disk), None) => (StorageKind::Disk, Delivery::AtLeastOnce),
            (Some(StorageKind::Memory), None) | (None, Some(Delivery::AtMostOnce)) => {
                (StorageKind::Memory, Delivery::AtMostOnce)
            }
            (None, Some(d)) => (StorageKind::Disk, d),
            (Some(s), Some(d)) => {
                match (s, d) {
                    (StorageKind::Disk, Delivery::AtMostOnce) => bad(
                        SpecField::Delivery,
                        "at_most_once topics are not stored: use at_least_once (or exactly_once) with storage = \"disk\""
                            .into(),
                    ),
                    (StorageKind::Memory, Delivery::AtLeastOnce | Delivery::ExactlyOnce) => {
                        bad(SpecField::Storage, format!("{d} needs storage = \"disk\""))
                    }
                    _ => {}
                }
                (s, d)
            }
        };
        spec.storage = storage;
        spec.delivery = delivery;
        if let Some(bytes) = self.buffer_bytes {
            if BUFFER_BYTES_RANGE.contains(&bytes) {
                spec.buffer_bytes = usize::try_from(bytes).unwrap_or(usize::MAX);
            } else {
                bad(
                    SpecField::BufferBytes,
                    format!("{bytes} bytes is out of range (1 KiB to 4 GiB)"),
                );
            }
        }
        if let Some(bytes) = self.message_bytes_max {
            let max = limits.message_bytes_max.min(spec.buffer_bytes as u64);
            if bytes == 0 || bytes > max {
                bad(
                    SpecField::MessageBytesMax,
                    format!(
                        "{bytes} bytes must be between 1 and {max} (the frame limit less framing, and at most the \
                         subscriber buffer: a larger message could never be delivered)"
                    ),
                );
            } else {
                spec.message_bytes_max = usize::try_from(bytes).unwrap_or(usize::MAX);
            }
        }
        let zero = |value: Option<Duration>| value.is_some_and(|d| d.is_zero());
        if zero(self.block_timeout) {
            bad(SpecField::BlockTimeout, "must be greater than 0".into());
        } else if let Some(timeout) = self.block_timeout {
            spec.block_timeout = timeout;
        }
        if zero(self.ttl) {
            bad(
                SpecField::Ttl,
                "must be greater than 0 (leave it out for no TTL)".into(),
            );
        } else {
            spec.ttl = self.ttl;
        }
        if zero(self.dedup_window) {
            bad(SpecField::DedupWindow, "must be greater than 0".into());
        } else if let Some(window) = self.dedup_window {
            spec.dedup_window = window;
        }
        spec.priority = self.priority.unwrap_or(spec.priority);
        spec.dead_letter = self.dead_letter.unwrap_or(spec.dead_letter);
        spec.retention_messages = self.retention_messages;
        spec.retention_bytes = self.retention_bytes;
        spec.retention_age = self.retention_age;
        let defaults = TopicSpec::default();
        if storage != StorageKind::Disk {
            // Settings that only a stored topic can honour: refused rather than ignored.
            for (field, set) in [
                (SpecField::Fsync, spec.fsync != defaults.fsync),
                (SpecField::Priority, spec.priority),
                (SpecField::Ttl, spec.ttl.is_some()),
                (SpecField::Retention, spec.retention != defaults.retention),
                (SpecField::RetentionMessages, spec.retention_messages.is_some()),
                (SpecField::RetentionBytes, spec.retention_bytes.is_some()),
                (SpecField::RetentionAge, spec.retention_age.is_some()),
                (SpecField::Unmatched, spec.unmatched != defaults.unmatched),
            ] {
                if set {
                    bad(
                        field,
                        "applies to stored topics only (delivery at_least_once or exactly_once, storage = \"disk\")"
                            .into(),
                    );
                }
            }
        }
        problems.sort_by_key(|p| p.field);
        if problems.is_empty() {
            Ok(spec)
        } else {
            Err(problems)
        }
    }
}
