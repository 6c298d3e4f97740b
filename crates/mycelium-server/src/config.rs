//! The server's configuration: one serde tree, TOML file -> `MYCELIUM_*` environment -> CLI flags,
//! validated at start-up with errors that name the file, the key and the reason.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mycelium_broker::BrokerConfig;
use mycelium_broker::draft::{SpecLimits, TopicDraft};
use mycelium_broker::name::validate_topic;
use mycelium_broker::spec::TopicSpec;
use mycelium_codec::RelayDomain;
use serde::{Deserialize, Serialize};

use crate::units::{ByteSize, HumanDuration};

mod auth;
mod ops;

pub use auth::{AuthSection, TlsSection, UserSection};

pub use ops::{
    HealthSection, HttpSection, LogSection, MetricsSection, QuotaSection, RateLimitSection,
    TopicQuotaSection, TracingSection,
};

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listeners and connection limits.
    pub server: ServerSection,
    /// Topic for a PUBLISH without topic, by TLV relay domain.
    pub domains: DomainsSection,
    /// Topics configured up front.
    pub topics: Vec<TopicSection>,
    /// Threads and batching.
    pub performance: PerformanceSection,
    /// Where `storage = "disk"` topics keep their logs, and group commit.
    pub storage: StorageSection,
    /// Who may connect through either door.
    pub auth: AuthSection,
    /// TLS on the TCP listeners.
    pub tls: TlsSection,
    /// The HTTP API.
    pub http: HttpSection,
    /// Prometheus metrics.
    pub metrics: MetricsSection,
    /// The health monitor's interval and thresholds.
    pub health: HealthSection,
    /// OpenTelemetry traces.
    pub tracing: TracingSection,
    /// The log's level and filters.
    pub log: LogSection,
}

/// `[storage]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSection {
    /// Data directory; created when the first disk topic is configured.
    pub data_dir: String,
    /// `fsync = "batch"` topics: the longest a publisher confirm waits for its fsync.
    pub fsync_interval: HumanDuration,
    /// `fsync = "batch"` topics: sync early once this many bytes are unsynced.
    pub fsync_bytes: ByteSize,
    /// A segment file rolls over at this size.
    pub segment_size: ByteSize,
    /// Disk space a segment prepares ahead of its records, at least this much (0: none).
    /// Prepared space makes an fsync after an append cheaper; a sealed segment gives back the rest.
    pub segment_reserve: ByteSize,
    /// Prepare that space by writing zeros into it (default; the fsync of an append then flushes
    /// data only, like PostgreSQL's `wal_init_zero`); false: reserve it with `fallocate` only
    /// (half the bytes written, for copy-on-write file systems or write-limited disks).
    pub segment_zero_fill: bool,
    /// Durable publishes queued for the storage writer before publishers wait.
    pub queue_capacity: usize,
    /// Publishes the storage writer appends in one go, at most.
    pub write_batch: usize,
    /// A durable subscription's acks and attempt counts are written at most this often (an ACK
    /// that asks for a confirmation is written at once).
    pub ack_persist_interval: HumanDuration,
    /// Messages a durable subscription reads ahead (the window within which priority reorders).
    pub read_ahead: usize,
    /// Deliveries a durable subscription hands out per pass.
    pub dispatch_batch: usize,
    /// Default retention of disk topics: keep at most this many messages.
    pub retention_messages: Option<u64>,
    /// Default retention of disk topics: keep at most this many bytes.
    pub retention_bytes: Option<ByteSize>,
    /// Default retention of disk topics: delete messages older than this.
    pub retention_age: Option<HumanDuration>,
}

impl Default for StorageSection {
    fn default() -> Self {
        StorageSection {
            data_dir: "./mycelium-data".into(),
            fsync_interval: HumanDuration(Duration::from_millis(1)),
            fsync_bytes: ByteSize(1 << 20),
            segment_size: ByteSize(64 << 20),
            segment_reserve: ByteSize(4 << 20),
            segment_zero_fill: true,
            queue_capacity: 65_536,
            write_batch: 4096,
            ack_persist_interval: HumanDuration(Duration::from_millis(20)),
            read_ahead: 1000,
            dispatch_batch: 256,
            retention_messages: None,
            retention_bytes: None,
            retention_age: None,
        }
    }
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSection {
    /// Name sent in WELCOME and shown in logs.
    pub name: String,
    /// Unix socket path; empty disables the Unix listener.
    pub socket_path: String,
    /// Unix socket file mode, octal.
    pub socket_mode: String,
    /// TCP listen address; empty disables the TCP listener.
    pub tcp: String,
    /// Connections accepted at once; more are refused with an ERROR.
    pub max_connections: usize,
    /// TCP connections from one address at once; more are refused with an ERROR.
    pub max_connections_per_ip: usize,
    /// Time a new connection has to send HELLO.
    pub connection_timeout: HumanDuration,
    /// A connection that sends nothing this long gets a PING; silent as long again, it is closed.
    pub idle_timeout: HumanDuration,
    /// A frame begun and not finished within this closes the connection.
    pub frame_timeout: HumanDuration,
    /// Largest frame accepted (the length prefix is checked before reading the body).
    pub max_frame_size: ByteSize,
    /// Publishing to an unknown topic creates it (fanout, defaults) instead of failing.
    pub auto_create_topics: bool,
    /// On SIGINT/SIGTERM, time allowed to flush pending deliveries before closing anyway.
    pub shutdown_timeout: HumanDuration,
    /// Topics the broker holds at most (configured ones included); a publish that would create
    /// one more is refused with `LimitReached`.
    pub max_topics: usize,
    /// Subscriptions one connection holds at once, at most.
    pub max_subscriptions_per_connection: usize,
    /// Durable subscriptions of one topic, at most.
    pub max_durables_per_topic: usize,
    /// Bytes pending toward one connection at once, every frame counted (deliveries, replies,
    /// errors): deliveries past it meet their topic's overflow policy; a reply past it closes the
    /// connection (a client that asks and never reads).
    pub max_outbound_bytes: ByteSize,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            name: "mycelium".into(),
            socket_path: "/tmp/mycelium.sock".into(),
            socket_mode: "0660".into(),
            tcp: "127.0.0.1:7420".into(),
            max_connections: 10_000,
            max_connections_per_ip: 1_024,
            connection_timeout: HumanDuration(Duration::from_secs(5)),
            idle_timeout: HumanDuration(Duration::from_secs(120)),
            frame_timeout: HumanDuration(Duration::from_secs(30)),
            max_frame_size: ByteSize(16 << 20),
            auto_create_topics: true,
            shutdown_timeout: HumanDuration(Duration::from_secs(10)),
            max_topics: 10_000,
            max_subscriptions_per_connection: 1_000,
            max_durables_per_topic: 1_000,
            max_outbound_bytes: ByteSize(64 << 20),
        }
    }
}

/// `[domains]`: relay domain -> topic.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
#[allow(missing_docs)]
pub struct DomainsSection {
    pub market_data: String,
    pub signal: String,
    pub execution: String,
    pub system: String,
}

impl Default for DomainsSection {
    fn default() -> Self {
        DomainsSection {
            market_data: "market_data".into(),
            signal: "signals".into(),
            execution: "execution".into(),
            system: "system".into(),
        }
    }
}

/// One `[[topics]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TopicSection {
    /// Topic name.
    pub name: String,
    /// `fanout`, `queue` or `direct`.
    pub routing: String,
    /// `round_robin` or `least_loaded`.
    pub balance: String,
    /// Bytes a subscriber may have waiting before `overflow` applies.
    pub buffer_size: ByteSize,
    /// Largest payload accepted.
    pub max_message_size: ByteSize,
    /// `block`, `drop_oldest` or `disconnect`.
    pub overflow: String,
    /// How long `block` waits before disconnecting the subscriber.
    pub block_timeout: HumanDuration,
    /// `raw` or `tlv`.
    pub codec: String,
    /// `memory` (routed only) or `disk` (stored in the segment log before PUBLISH_OK). Empty:
    /// `disk` for `at_least_once` / `exactly_once` topics, else `memory`.
    pub storage: String,
    /// For `disk` topics: `batch` (group commit), `always` or `never`.
    pub fsync: String,
    /// `at_most_once`, `at_least_once` or `exactly_once`. Empty: `at_least_once` for disk
    /// topics, else `at_most_once`.
    pub delivery: String,
    /// Message priorities (0-9) reorder delivery within durable subscriptions.
    pub priority: bool,
    /// Time to live of messages that carry none.
    pub ttl: Option<HumanDuration>,
    /// `drop` or `dead_letter`: what happens to an expired message.
    pub on_expired: String,
    /// How long idempotency keys are remembered.
    pub dedup_window: HumanDuration,
    /// Messages out of attempts go to `{topic}.dlq` (else they are dropped and counted).
    pub dead_letter: bool,
    /// `limits` or `work_queue` (also delete what every durable subscription acknowledged).
    pub retention: String,
    /// Keep at most this many messages (default: `[storage]`'s).
    pub retention_messages: Option<u64>,
    /// Keep at most this many bytes.
    pub retention_bytes: Option<ByteSize>,
    /// Delete messages older than this.
    pub retention_age: Option<HumanDuration>,
    /// `skip` or `dead_letter`: a message a durable subscription's filter refuses.
    pub unmatched: String,
}

/// Framing a PUBLISH needs beyond its payload, at most (topic, headers' length, properties).
const FRAME_OVERHEAD_BYTES: u64 = 1024;

impl TopicSection {
    /// The settings as the broker's one topic validator takes them.
    pub fn draft(&self) -> TopicDraft {
        let derived = |text: &String| (!text.is_empty()).then(|| text.clone());
        TopicDraft {
            routing: Some(self.routing.clone()),
            balance: Some(self.balance.clone()),
            buffer_bytes: Some(self.buffer_size.0),
            message_bytes_max: Some(self.max_message_size.0),
            overflow: Some(self.overflow.clone()),
            block_timeout: Some(self.block_timeout.0),
            codec: Some(self.codec.clone()),
            storage: derived(&self.storage),
            fsync: Some(self.fsync.clone()),
            delivery: derived(&self.delivery),
            priority: Some(self.priority),
            ttl: self.ttl.map(|d| d.0),
            on_expired: Some(self.on_expired.clone()),
            dedup_window: Some(self.dedup_window.0),
            dead_letter: Some(self.dead_letter),
            retention: Some(self.retention.clone()),
            retention_messages: self.retention_messages,
            retention_bytes: self.retention_bytes.map(|b| b.0),
            retention_age: self.retention_age.map(|d| d.0),
            unmatched: Some(self.unmatched.clone()),
        }
    }
}

impl Default for TopicSection {
    fn default() -> Self {
        let spec = TopicSpec::default();
        TopicSection {
            name: String::new(),
            routing: spec.routing.to_string(),
            balance: spec.balance.to_string(),
            buffer_size: ByteSize(spec.buffer_bytes as u64),
            max_message_size: ByteSize(spec.message_bytes_max as u64),
            overflow: spec.overflow.to_string(),
            block_timeout: HumanDuration(spec.block_timeout),
            codec: spec.codec.to_string(),
            storage: String::new(),
            fsync: spec.fsync.to_string(),
            delivery: String::new(),
            priority: spec.priority,
            ttl: None,
            on_expired: spec.on_expired.to_string(),
            dedup_window: HumanDuration(spec.dedup_window),
            dead_letter: spec.dead_letter,
            retention: spec.retention.to_string(),
            retention_messages: None,
            retention_bytes: None,
            retention_age: None,
            unmatched: spec.unmatched.to_string(),
        }
    }
}

/// `[performance]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PerformanceSection {
    /// Runtime worker threads (default: the number of cores; more than that only adds hand-offs).
    pub worker_threads: usize,
    /// Initial capacity of each connection's read and outbound buffers.
    pub channel_capacity: ByteSize,
    /// Frames routed from one read before the touched subscribers' writers are woken.
    pub batch_size: usize,
    /// How long a woken writer waits for more deliveries before writing (0: write at once).
    pub flush_interval: HumanDuration,
    /// A reader writes deliveries straight to an idle subscriber's socket when at most this many
    /// bytes are pending for it; more are left to that subscriber's writer task (0: never).
    pub inline_flush_bytes: ByteSize,
}

impl Default for PerformanceSection {
    fn default() -> Self {
        PerformanceSection {
            worker_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            channel_capacity: ByteSize(64 << 10),
            batch_size: 1024,
            flush_interval: HumanDuration(Duration::ZERO),
            inline_flush_bytes: ByteSize(64 << 10),
        }
    }
}

/// One thing wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key, as a path (`topics[1].routing`).
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file.
        file: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (syntax, unknown key, wrong type).
    #[error("{file}: {message}")]
    Parse {
        /// The file.
        file: String,
        /// The parser's message (it names the line and the key).
        message: String,
    },
    /// The generated JWT secret cannot be read or written.
    #[error("{}: {reason}", path.display())]
    Secret {
        /// The secret file (or the data directory holding it).
        path: std::path::PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// An environment override is malformed.
    #[error("environment variable {var}: {reason}")]
    Env {
        /// The variable.
        var: String,
        /// What is wrong.
        reason: String,
    },
    /// Values out of range, names invalid, duplicates: every problem found.
    #[error("{}", display_problems(.file, .problems))]
    Invalid {
        /// The file (or "defaults").
        file: String,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

fn display_problems(file: &str, problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("{file}: {}: {}", p.key, p.reason))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Prefix of environment overrides: `MYCELIUM_SERVER__MAX_CONNECTIONS=100` sets
/// `server.max_connections`. Only variables with a `__` separator are overrides.
pub const ENV_PREFIX: &str = "MYCELIUM_";

impl Config {
    /// Loads `file` (or the defaults when `None`), applies environment overrides from `env`, and
    /// validates.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, the key and the reason.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let (name, text) = match file {
            Some(path) => {
                let name = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    file: name.clone(),
                    source,
                })?;
                (name, text)
            }
            None => ("defaults".to_owned(), String::new()),
        };
        let parse = |text: &str| {
            toml::from_str::<Config>(text).map_err(|e| ConfigError::Parse {
                file: name.clone(),
                message: e.to_string().trim_end().to_owned(),
            })
        };
        let moved = |table: &toml::Table, file: &str| {
            let problems = moved_keys(table);
            if problems.is_empty() {
                Ok(())
            } else {
                Err(ConfigError::Invalid {
                    file: file.to_owned(),
                    problems,
                })
            }
        };
        let mut table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            file: name.clone(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        moved(&table, &name)?;
        let mut config = parse(&text)?;
        let overrides: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k.contains("__"))
            .collect();
        if !overrides.is_empty() {
            for (var, value) in overrides {
                apply_env(&mut table, &var, &value)?;
            }
            let file = format!("{name} (with environment overrides)");
            moved(&table, &file)?;
            config = Config::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError::Parse {
                file,
                message: e.to_string().trim_end().to_owned(),
            })?;
        }
        config.resolve();
        config
            .validate()
            .map_err(|problems| ConfigError::Invalid { file: name, problems })?;
        Ok(config)
    }

    /// Fills what is derived: a topic's `storage` from its `delivery` and the reverse.
    pub fn resolve(&mut self) {
        for topic in &mut self.topics {
            let durable_delivery = matches!(topic.delivery.as_str(), "at_least_once" | "exactly_once");
            if topic.storage.is_empty() {
                topic.storage = if durable_delivery { "disk" } else { "memory" }.into();
            }
            if topic.delivery.is_empty() {
                topic.delivery = if topic.storage == "disk" {
                    "at_least_once"
                } else {
                    "at_most_once"
                }
                .into();
            }
        }
    }

    /// Every problem with the values, or `Ok`.
    ///
    /// # Errors
    /// The list of problems.
    pub fn validate(&self) -> Result<(), Vec<Problem>> {
        let mut problems = Vec::new();
        let mut bad = |key: String, reason: String| problems.push(Problem { key, reason });
        let s = &self.server;
        for (key, value) in [
            ("max_connections", s.max_connections),
            ("max_connections_per_ip", s.max_connections_per_ip),
            ("max_topics", s.max_topics),
            (
                "max_subscriptions_per_connection",
                s.max_subscriptions_per_connection,
            ),
            ("max_durables_per_topic", s.max_durables_per_topic),
        ] {
            if value == 0 {
                bad(format!("server.{key}"), "must be greater than 0".into());
            }
        }
        if s.max_outbound_bytes.0 < s.max_frame_size.0 {
            bad(
                "server.max_outbound_bytes".into(),
                format!(
                    "{} bytes is less than server.max_frame_size ({} bytes): one reply could not fit",
                    s.max_outbound_bytes.0, s.max_frame_size.0
                ),
            );
        }
        if s.max_topics < self.topics.len() {
            bad(
                "server.max_topics".into(),
                format!(
                    "{} topics are configured, more than {}",
                    self.topics.len(),
                    s.max_topics
                ),
            );
        }
        for (key, value) in [
            ("idle_timeout", s.idle_timeout.0),
            ("frame_timeout", s.frame_timeout.0),
        ] {
            if value.is_zero() {
                bad(format!("server.{key}"), "must be greater than 0".into());
            }
        }
        if s.connection_timeout.0.is_zero() {
            bad(
                "server.connection_timeout".into(),
                "must be greater than 0".into(),
            );
        }
        if !(1024..=(1 << 30)).contains(&s.max_frame_size.0) {
            bad(
                "server.max_frame_size".into(),
                format!("{} is out of range (1 KiB to 1 GiB)", s.max_frame_size),
            );
        }
        if u32::from_str_radix(s.socket_mode.trim_start_matches("0o"), 8).map_or(true, |m| m > 0o777) {
            bad(
                "server.socket_mode".into(),
                format!("`{}` is not an octal file mode like \"0660\"", s.socket_mode),
            );
        }
        if !s.tcp.is_empty() && s.tcp.parse::<SocketAddr>().is_err() {
            bad(
                "server.tcp".into(),
                format!("`{}` is not an address like \"127.0.0.1:7420\"", s.tcp),
            );
        }
        if s.tcp.is_empty() && s.socket_path.is_empty() {
            bad(
                "server".into(),
                "both listeners are off: set socket_path or tcp".into(),
            );
        }
        let st = &self.storage;
        if st.data_dir.is_empty() {
            bad("storage.data_dir".into(), "must not be empty".into());
        }
        if st.fsync_interval.0.is_zero() {
            bad("storage.fsync_interval".into(), "must be greater than 0".into());
        }
        if !(4096..=(1 << 30)).contains(&st.segment_size.0) {
            bad(
                "storage.segment_size".into(),
                format!("{} is out of range (4 KiB to 1 GiB)", st.segment_size),
            );
        }
        if st.segment_reserve.0 > 1 << 30 {
            bad(
                "storage.segment_reserve".into(),
                format!("{} is out of range (0 to 1 GiB)", st.segment_reserve),
            );
        }
        for (field, value) in [
            ("queue_capacity", st.queue_capacity),
            ("write_batch", st.write_batch),
            ("read_ahead", st.read_ahead),
            ("dispatch_batch", st.dispatch_batch),
        ] {
            if value == 0 {
                bad(format!("storage.{field}"), "must be greater than 0".into());
            }
        }
        if !["grpc", "http"].contains(&self.tracing.protocol.as_str()) {
            bad(
                "tracing.protocol".into(),
                format!("`{}` is not one of: grpc, http", self.tracing.protocol),
            );
        }
        if !(0.0..=1.0).contains(&self.tracing.sampling_ratio) {
            bad("tracing.sampling_ratio".into(), "must be between 0 and 1".into());
        }
        if self.health.interval.0 < Duration::from_millis(100) {
            bad("health.interval".into(), "must be at least 100ms".into());
        }
        if !self.metrics.listen.is_empty() && self.metrics.listen.parse::<SocketAddr>().is_err() {
            bad(
                "metrics.listen".into(),
                format!(
                    "`{}` is not an address like \"127.0.0.1:9421\"",
                    self.metrics.listen
                ),
            );
        }
        self.validate_ops(&mut bad);
        self.validate_auth(&mut bad);
        self.validate_tls(&mut bad);
        if self.performance.worker_threads == 0 {
            bad(
                "performance.worker_threads".into(),
                "must be greater than 0".into(),
            );
        }
        if self.performance.inline_flush_bytes.0 > 16 << 20 {
            bad(
                "performance.inline_flush_bytes".into(),
                format!(
                    "{} is out of range (0 to 16 MiB)",
                    self.performance.inline_flush_bytes
                ),
            );
        }
        if self.performance.batch_size == 0 {
            bad("performance.batch_size".into(), "must be greater than 0".into());
        }
        if !(1024..=(64 << 20)).contains(&self.performance.channel_capacity.0) {
            bad(
                "performance.channel_capacity".into(),
                "out of range (1 KiB to 64 MiB)".into(),
            );
        }
        for (key, topic) in self.domain_pairs() {
            if let Err(e) = validate_topic(topic) {
                bad(format!("domains.{key}"), e.to_string());
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, t) in self.topics.iter().enumerate() {
            let key = |field: &str| format!("topics[{i}].{field}");
            if let Err(e) = validate_topic(&t.name) {
                bad(key("name"), e.to_string());
            } else if !seen.insert(t.name.as_str()) {
                bad(key("name"), format!("topic `{}` is configured twice", t.name));
            }
            if let Err(found) = t.draft().resolve(&self.spec_limits()) {
                for problem in found {
                    bad(key(problem.field.as_str()), problem.reason);
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    fn domain_pairs(&self) -> [(&'static str, &str); 4] {
        let d = &self.domains;
        [
            ("market_data", &d.market_data),
            ("signal", &d.signal),
            ("execution", &d.execution),
            ("system", &d.system),
        ]
    }

    /// The bounds every topic spec keeps (from `server.max_frame_size`).
    pub fn spec_limits(&self) -> SpecLimits {
        SpecLimits {
            message_bytes_max: self.server.max_frame_size.0.saturating_sub(FRAME_OVERHEAD_BYTES),
        }
    }

    /// The broker core's view of this configuration.
    ///
    /// # Errors
    /// A topic's settings are invalid (every problem, as [`Config::validate`] names them).
    pub fn broker_config(&self) -> Result<BrokerConfig, Vec<Problem>> {
        let limits = self.spec_limits();
        let mut topics = Vec::with_capacity(self.topics.len());
        let mut problems = Vec::new();
        for (i, t) in self.topics.iter().enumerate() {
            match t.draft().resolve(&limits) {
                Ok(spec) => topics.push((t.name.clone(), spec)),
                Err(found) => problems.extend(found.into_iter().map(|p| Problem {
                    key: format!("topics[{i}].{}", p.field.as_str()),
                    reason: p.reason,
                })),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let d = &self.domains;
        Ok(BrokerConfig {
            limits: mycelium_broker::Limits {
                topics_max: self.server.max_topics,
                subscriptions_per_connection_max: self.server.max_subscriptions_per_connection,
                durables_per_topic_max: self.server.max_durables_per_topic,
                outbound_bytes_max: self.server.max_outbound_bytes.bytes(),
            },
            spec_limits: limits,
            metrics_topics_max: self.metrics.topics_max,
            auto_create_topics: self.server.auto_create_topics,
            default_spec: TopicSpec::default(),
            topics,
            domain_topics: vec![
                (RelayDomain::MarketData, d.market_data.clone()),
                (RelayDomain::Signal, d.signal.clone()),
                (RelayDomain::Execution, d.execution.clone()),
                (RelayDomain::System, d.system.clone()),
            ],
            durable: mycelium_broker::DurableConfig {
                data_dir: self.storage.data_dir.clone().into(),
                fsync_interval: self.storage.fsync_interval.0,
                fsync_bytes: self.storage.fsync_bytes.bytes(),
                log: mycelium_storage::LogConfig {
                    segment_bytes: self.storage.segment_size.0,
                    reserve_bytes: self.storage.segment_reserve.0,
                    zero_fill: self.storage.segment_zero_fill,
                    retention_messages: self.storage.retention_messages,
                    retention_bytes: self.storage.retention_bytes.map(|b| b.0),
                    retention_age: self.storage.retention_age.map(|d| d.0),
                },
                queue_capacity: self.storage.queue_capacity,
                write_batch: self.storage.write_batch,
                ack_persist_interval: self.storage.ack_persist_interval.0,
                read_ahead: self.storage.read_ahead,
                dispatch_batch: self.storage.dispatch_batch,
                faults: None,
            },
        })
    }

    /// The Unix socket mode as a number.
    pub fn socket_mode(&self) -> u32 {
        u32::from_str_radix(self.server.socket_mode.trim_start_matches("0o"), 8).unwrap_or(0o660)
    }

    /// The Unix socket path, if that listener is on.
    pub fn socket_path(&self) -> Option<PathBuf> {
        (!self.server.socket_path.is_empty()).then(|| PathBuf::from(&self.server.socket_path))
    }

    /// The TCP address, if that listener is on.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.server.tcp.parse().ok()
    }
}

/// Keys that moved to another section, each a problem naming the new key.
fn moved_keys(table: &toml::Table) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (section, value) in table {
        let Some(keys) = value.as_table() else { continue };
        for key in keys.keys() {
            if let Some(new) = auth::moved_key(section, key) {
                problems.push(Problem {
                    key: format!("{section}.{key}"),
                    reason: format!("moved: set `{new}` instead (one [auth] section serves both doors)"),
                });
            }
        }
    }
    problems
}

fn apply_env(table: &mut toml::Table, var: &str, value: &str) -> Result<(), ConfigError> {
    let path: Vec<String> = var[ENV_PREFIX.len()..]
        .split("__")
        .map(|p| p.to_ascii_lowercase())
        .collect();
    if path.iter().any(String::is_empty) {
        return Err(ConfigError::Env {
            var: var.to_owned(),
            reason: "empty key segment".into(),
        });
    }
    let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_owned()));
    let (last, parents) = path.split_last().expect("split yields at least one segment");
    let mut current = table;
    for key in parents {
        let entry = current
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry.as_table_mut().ok_or_else(|| ConfigError::Env {
            var: var.to_owned(),
            reason: format!("`{key}` is not a section"),
        })?;
    }
    current.insert(last.clone(), parsed);
    Ok(())
}

/// The configuration as TOML with every secret replaced by `<redacted>` (what `config show`
/// prints).
impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.clone();
        let redact = |value: &mut String| {
            if !value.is_empty() {
                *value = "<redacted>".into();
            }
        };
        redact(&mut shown.auth.jwt_secret);
        for user in &mut shown.auth.users {
            redact(&mut user.token_sha256);
        }
        match toml::to_string_pretty(&shown) {
            Ok(text) => f.write_str(&text),
            Err(_) => f.write_str("<configuration>"),
        }
    }
}
