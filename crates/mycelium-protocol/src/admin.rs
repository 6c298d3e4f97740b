//! ADMIN requests and their answers: the JSON bodies of ADMIN and ADMIN_OK frames, defined once
//! and shared by the server, the client and the CLI. These are the wire's types, not the
//! broker's: the server maps its own records onto them, so the broker can change without
//! changing what tools read.
//!
//! A request is an object with an `op` field (`{"op": "dlq_list", "topic": "jobs"}`); each
//! operation's answer type is named beside it. New operations and new optional fields may be
//! added; existing ones keep their meaning.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Dead letters listed per request when the request does not say.
pub const DLQ_LIST_LIMIT_DEFAULT: usize = 100;

fn dlq_list_limit_default() -> usize {
    DLQ_LIST_LIMIT_DEFAULT
}

/// One administrative operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
#[allow(clippy::enum_variant_names)] // the DLQ operations are the first of the admin set
pub enum AdminRequest {
    /// A page of a topic's dead letters. Answer: [`DlqPage`].
    DlqList {
        /// The topic (or its `.dlq`).
        topic: String,
        /// Which dead letters.
        #[serde(default)]
        filter: DlqFilter,
        /// Only DLQ sequences above this.
        #[serde(default)]
        after: u64,
        /// At most this many.
        #[serde(default = "dlq_list_limit_default")]
        limit: usize,
    },
    /// One dead letter by DLQ sequence. Answer: [`DeadLetter`].
    DlqGet {
        /// The topic (or its `.dlq`).
        topic: String,
        /// Its sequence in the DLQ.
        sequence: u64,
    },
    /// Publishes dead letters again. Answer: [`ReplayReport`].
    DlqReplay {
        /// The topic (or its `.dlq`).
        topic: String,
        /// Which dead letters.
        #[serde(default)]
        filter: DlqFilter,
        /// Another topic to publish them to (default: the original).
        #[serde(default)]
        target: Option<String>,
        /// Messages per second, at most.
        #[serde(default)]
        rate: Option<u32>,
    },
    /// Removes dead letters. Answer: [`PurgeReport`].
    DlqPurge {
        /// The topic (or its `.dlq`).
        topic: String,
        /// Which dead letters.
        #[serde(default)]
        filter: DlqFilter,
    },
    /// The node record and its last health report. Answer: a JSON object (the node record, as
    /// `GET /api/v1/nodes/self` serves it).
    Health,
    /// Reads the configuration file again and applies what may change live. Answer:
    /// [`ReloadReport`]; an invalid file is an ERROR (`InvalidRequest`) naming file, key and
    /// reason, and nothing changes.
    Reload {
        /// Remove topics the file no longer names even when they hold messages or subscriptions.
        #[serde(default)]
        force: bool,
    },
    /// The configuration in effect. Answer: [`ConfigView`].
    Config,
}

/// Which dead letters an operation applies to. Empty: all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DlqFilter {
    /// Only these DLQ sequences.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sequences: Vec<u64>,
    /// Only this reason (`max_deliveries`, `terminated`, `expired`, `unmatched`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Only from this durable subscription.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscription: Option<String>,
    /// Dead-lettered at or after (ns since the Unix epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since_ns: Option<u64>,
    /// Dead-lettered before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until_ns: Option<u64>,
}

/// One failed delivery attempt of a dead letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// When it failed, ns since the Unix epoch.
    pub at_ns: u64,
    /// `nack`, `ack_timeout`, `consumer_left`, `term` or `expired`.
    pub reason: String,
    /// The consumer's error text, if it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One dead letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
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
    /// `max_deliveries`, `terminated`, `expired` or `unmatched`.
    pub reason: String,
    /// The consumer's last error text.
    #[serde(default)]
    pub error: Option<String>,
    /// When it was dead-lettered, ns since the Unix epoch.
    pub dead_lettered_ns: u64,
    /// When it was published to its original topic, ns since the Unix epoch.
    pub published_ns: u64,
    /// Every failed attempt the broker recorded.
    #[serde(default)]
    pub history: Vec<Attempt>,
    /// The original headers (without the `x-dlq-*` record); values as UTF-8 (lossy).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The payload: as UTF-8 text when it is, else `base64:` and its base64.
    pub payload: String,
}

/// A page of dead letters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DlqPage {
    /// The DLQ topic.
    pub dlq: String,
    /// Matching entries, oldest first.
    pub entries: Vec<DeadLetter>,
    /// Ask again with `after` set to this for the next page; `None`: no more.
    pub next_after: Option<u64>,
    /// Dead letters in the DLQ (all, not only matching ones).
    pub depth: u64,
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayReport {
    /// Published again.
    pub replayed: u64,
    /// Already replayed earlier (recognised by their idempotency key).
    pub duplicates: u64,
    /// DLQ sequence and reason of each that failed.
    pub failed: Vec<(u64, String)>,
}

/// What a purge did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeReport {
    /// Dead letters removed.
    pub purged: u64,
}

/// What a configuration reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    /// The configuration's version after the reload (1 at start-up; each applied change adds 1).
    pub version: u64,
    /// The file read.
    pub file: String,
    /// Each change applied, one line each (`topics.orders.buffer_size: 1 MiB -> 4 MiB`).
    pub applied: Vec<String>,
    /// Changes the file asks for that take effect only after a restart (still pending).
    pub restart_needed: Vec<String>,
    /// Changes refused, with the reason (a removed topic still in use, say); the rest applied.
    pub refused: Vec<String>,
}

/// The configuration in effect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigView {
    /// Its version (1 at start-up; each reload that applied something adds 1).
    pub version: u64,
    /// The file it was read from (`None`: the embedded defaults).
    pub file: Option<String>,
    /// When it was last applied, ns since the Unix epoch.
    pub applied_ns: u64,
    /// Changes in the file that wait for a restart.
    pub restart_needed: Vec<String>,
    /// The configuration, secrets redacted, as the TOML file's structure in JSON.
    pub config: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_as_the_tools_have_always_written_them() {
        let list: AdminRequest = serde_json::from_str(r#"{"op":"dlq_list","topic":"jobs"}"#).unwrap();
        assert_eq!(
            list,
            AdminRequest::DlqList {
                topic: "jobs".into(),
                filter: DlqFilter::default(),
                after: 0,
                limit: DLQ_LIST_LIMIT_DEFAULT,
            }
        );
        let health: AdminRequest = serde_json::from_str(r#"{"op":"health"}"#).unwrap();
        assert_eq!(health, AdminRequest::Health);
        let purge = AdminRequest::DlqPurge {
            topic: "jobs".into(),
            filter: DlqFilter {
                reason: Some("expired".into()),
                ..DlqFilter::default()
            },
        };
        let text = serde_json::to_string(&purge).unwrap();
        assert_eq!(
            text,
            r#"{"op":"dlq_purge","topic":"jobs","filter":{"reason":"expired"}}"#
        );
        assert_eq!(serde_json::from_str::<AdminRequest>(&text).unwrap(), purge);
    }

    #[test]
    fn unknown_operations_and_fields_are_refused() {
        for bad in [
            r#"{"op":"drop_everything"}"#,
            r#"{"op":"dlq_get","topic":"jobs"}"#,
            r#"{"op":"dlq_get","topic":"jobs","sequence":1,"force":true}"#,
            r#"{"op":"dlq_list","topic":"jobs","filter":{"colour":"red"}}"#,
            r#"{"topic":"jobs"}"#,
        ] {
            assert!(serde_json::from_str::<AdminRequest>(bad).is_err(), "{bad}");
        }
    }
}
