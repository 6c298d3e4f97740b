//! The operations sections of the configuration: `[http]` (and its rate limits), `[metrics]`,
//! `[health]`, `[tracing]`: their shapes, their checks, and what the HTTP door, the health monitor
//! and the trace exporter are built from.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Config;
use crate::units::{ByteSize, HumanDuration};

/// `[log]`: what the broker logs (to stderr; `serve --log-format` picks text or JSON).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    /// A filter in `tracing`'s directive syntax: a level (`info`), or a level per module
    /// (`info,mycelium_broker=debug`). The `MYCELIUM_LOG` environment variable, when set, wins
    /// at start-up. A reload applies a changed level at once.
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection { level: "info".into() }
    }
}

/// `[tracing]`: OpenTelemetry spans through the broker, exported over OTLP (off by default).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TracingSection {
    /// OTLP endpoint: `http://127.0.0.1:4317` (grpc) or `http://127.0.0.1:4318/v1/traces` (http);
    /// empty: no tracing, and no cost on the message path.
    pub otlp_endpoint: String,
    /// `grpc` or `http`.
    pub protocol: String,
    /// Fraction of new traces sampled (0-1); a sampled parent is always followed.
    pub sampling_ratio: f64,
    /// `service.name` of the broker's spans.
    pub service_name: String,
}

impl Default for TracingSection {
    fn default() -> Self {
        TracingSection {
            otlp_endpoint: String::new(),
            protocol: "grpc".into(),
            sampling_ratio: 1.0,
            service_name: "mycelium".into(),
        }
    }
}

/// `[health]`: the monitor's interval and thresholds (leave a threshold out to not check it).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HealthSection {
    /// How often the monitor measures.
    pub interval: HumanDuration,
    /// Warn when a stored topic holds more messages.
    pub max_queue_depth: Option<u64>,
    /// Warn, and turn `/health/ready` unready, below this much free space for the data directory.
    pub min_free_disk: Option<ByteSize>,
    /// Warn when a probe write + fsync in the data directory takes longer.
    pub max_write_latency: Option<HumanDuration>,
    /// Warn when the broker's resident memory is larger.
    pub max_memory: Option<ByteSize>,
    /// Warn when a 10 ms timer fires later than this.
    pub max_event_loop_lag: Option<HumanDuration>,
}

impl Default for HealthSection {
    fn default() -> Self {
        let d = mycelium_broker::health::HealthConfig::default();
        HealthSection {
            interval: HumanDuration(d.interval),
            max_queue_depth: d.max_queue_depth,
            min_free_disk: d.min_free_disk_bytes.map(ByteSize),
            max_write_latency: d.max_write_latency.map(HumanDuration),
            max_memory: d.max_memory_bytes.map(ByteSize),
            max_event_loop_lag: d.max_event_loop_lag.map(HumanDuration),
        }
    }
}

/// `[metrics]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSection {
    /// Topics labelled individually on metrics; the rest are summed under `topic="_other"`.
    pub topics_max: usize,
    /// An address serving only `/metrics` and the health probes, for when `[http]` is off ("":
    /// none; with `[http]` on, `/metrics` is on the HTTP listener).
    pub listen: String,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection {
            topics_max: 1000,
            listen: String::new(),
        }
    }
}

/// `[http]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSection {
    /// Serve the HTTP API.
    pub enabled: bool,
    /// TCP address; empty: no TCP listener.
    pub listen: String,
    /// Unix socket path; empty: none.
    pub unix_socket: String,
    /// Largest request body.
    pub max_body_size: ByteSize,
    /// Time a client has to send a request's headers.
    pub header_timeout: HumanDuration,
    /// Time to serve one request (long polls are capped below it).
    pub request_timeout: HumanDuration,
    /// HTTP consumers idle this long are detached (their unacked messages are redelivered).
    pub consumer_idle_timeout: HumanDuration,
    /// Connections served at once; more get 503 and are closed.
    pub max_connections: usize,
    /// TCP connections from one address at once; more get 503 and are closed.
    pub max_connections_per_ip: usize,
    /// Rate limits.
    pub rate_limits: RateLimitSection,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            enabled: true,
            listen: "127.0.0.1:7421".into(),
            unix_socket: String::new(),
            max_body_size: ByteSize(16 << 20),
            header_timeout: HumanDuration(Duration::from_secs(10)),
            request_timeout: HumanDuration(Duration::from_secs(60)),
            consumer_idle_timeout: HumanDuration(Duration::from_secs(300)),
            max_connections: 1_024,
            max_connections_per_ip: 256,
            rate_limits: RateLimitSection::default(),
        }
    }
}

/// A token bucket.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct QuotaSection {
    /// Sustained rate.
    pub per_second: u32,
    /// Bucket size (default: `per_second`).
    #[serde(default)]
    pub burst: Option<u32>,
}

/// `[http.rate_limits]`: requests per principal by role, per client IP, messages per topic.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitSection {
    /// Requests per producer principal.
    pub producer: Option<QuotaSection>,
    /// Requests per consumer principal.
    pub consumer: Option<QuotaSection>,
    /// Requests per admin principal.
    pub admin: Option<QuotaSection>,
    /// Requests per client IP.
    pub per_ip: Option<QuotaSection>,
    /// Published messages per topic, by pattern (the first match applies).
    pub topics: Vec<TopicQuotaSection>,
}

/// One per-topic publish limit.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TopicQuotaSection {
    /// Topic pattern (`*`, `>` wildcards).
    pub pattern: String,
    /// Messages per second.
    pub per_second: u32,
    /// Bucket size (default: `per_second`).
    #[serde(default)]
    pub burst: Option<u32>,
}

impl Config {
    /// Checks `[http]` and its rate limits, reporting through `bad(key, reason)`.
    pub(super) fn validate_ops(&self, bad: &mut impl FnMut(String, String)) {
        let h = &self.http;
        if h.enabled {
            if !h.listen.is_empty() && h.listen.parse::<SocketAddr>().is_err() {
                bad(
                    "http.listen".into(),
                    format!("`{}` is not an address like \"127.0.0.1:7421\"", h.listen),
                );
            }
            if h.listen.is_empty() && h.unix_socket.is_empty() {
                bad(
                    "http".into(),
                    "enabled with no listener: set listen or unix_socket (or enabled = false)".into(),
                );
            }
            for (key, value) in [
                ("max_connections", h.max_connections),
                ("max_connections_per_ip", h.max_connections_per_ip),
            ] {
                if value == 0 {
                    bad(format!("http.{key}"), "must be greater than 0".into());
                }
            }
            if h.max_body_size.0 < 1024 {
                bad("http.max_body_size".into(), "must be at least 1 KiB".into());
            }
            for (field, value) in [
                ("header_timeout", h.header_timeout.0),
                ("request_timeout", h.request_timeout.0),
                ("consumer_idle_timeout", h.consumer_idle_timeout.0),
            ] {
                if value.is_zero() {
                    bad(format!("http.{field}"), "must be greater than 0".into());
                }
            }
            let r = &h.rate_limits;
            for (field, quota) in [
                ("producer", r.producer),
                ("consumer", r.consumer),
                ("admin", r.admin),
                ("per_ip", r.per_ip),
            ] {
                if quota.is_some_and(|q| q.per_second == 0) {
                    bad(
                        format!("http.rate_limits.{field}.per_second"),
                        "must be greater than 0".into(),
                    );
                }
            }
            for (i, t) in r.topics.iter().enumerate() {
                if let Err(e) = mycelium_broker::name::Pattern::parse(&t.pattern) {
                    bad(format!("http.rate_limits.topics[{i}].pattern"), e.to_string());
                }
                if t.per_second == 0 {
                    bad(
                        format!("http.rate_limits.topics[{i}].per_second"),
                        "must be greater than 0".into(),
                    );
                }
            }
        }
    }

    /// The HTTP door's settings (`None` when `[http] enabled = false`).
    ///
    /// `auth` is the authenticator both doors share ([`Config::authenticator`]).
    pub fn http_config(
        &self,
        auth: &std::sync::Arc<mycelium_auth::Authenticator>,
    ) -> Option<mycelium_http::HttpConfig> {
        let h = &self.http;
        let open_probes = self.open_probes();
        if !h.enabled {
            return self
                .metrics
                .listen
                .parse()
                .ok()
                .map(|addr| mycelium_http::HttpConfig {
                    listen: Some(addr),
                    metrics_only: true,
                    auth: std::sync::Arc::clone(auth),
                    open_probes,
                    ..mycelium_http::HttpConfig::default()
                });
        }
        Some(mycelium_http::HttpConfig {
            listen: h.listen.parse().ok(),
            unix_socket: (!h.unix_socket.is_empty()).then(|| PathBuf::from(&h.unix_socket)),
            auth: std::sync::Arc::clone(auth),
            open_probes,
            limits: self.rate_limits(),
            body_limit_bytes: h.max_body_size.bytes(),
            header_timeout: h.header_timeout.0,
            request_timeout: h.request_timeout.0,
            consumer_idle_timeout: h.consumer_idle_timeout.0,
            max_connections: h.max_connections,
            max_connections_per_ip: h.max_connections_per_ip,
            ..mycelium_http::HttpConfig::default()
        })
    }

    /// The HTTP door's rate limits (`[http.rate_limits]`).
    pub fn rate_limits(&self) -> mycelium_http::RateLimits {
        let quota = |q: QuotaSection| mycelium_http::Quota {
            per_second: q.per_second,
            burst: q.burst.unwrap_or(q.per_second),
        };
        let r = &self.http.rate_limits;
        let per_role = [
            (mycelium_broker::Role::Producer, r.producer),
            (mycelium_broker::Role::Consumer, r.consumer),
            (mycelium_broker::Role::Admin, r.admin),
        ]
        .into_iter()
        .filter_map(|(role, q)| q.map(|q| (role, quota(q))))
        .collect();
        mycelium_http::RateLimits {
            per_role,
            per_ip: r.per_ip.map(quota),
            per_topic: r
                .topics
                .iter()
                .map(|t| {
                    (
                        t.pattern.clone(),
                        mycelium_http::Quota {
                            per_second: t.per_second,
                            burst: t.burst.unwrap_or(t.per_second),
                        },
                    )
                })
                .collect(),
        }
    }

    /// The trace exporter's settings.
    pub fn trace_config(&self) -> mycelium_trace::TraceConfig {
        mycelium_trace::TraceConfig {
            otlp_endpoint: self.tracing.otlp_endpoint.clone(),
            protocol: self.tracing.protocol.clone(),
            sampling_ratio: self.tracing.sampling_ratio,
            service_name: self.tracing.service_name.clone(),
        }
    }

    /// The health monitor's settings.
    pub fn health_config(&self) -> mycelium_broker::health::HealthConfig {
        let h = &self.health;
        mycelium_broker::health::HealthConfig {
            interval: h.interval.0,
            max_queue_depth: h.max_queue_depth,
            min_free_disk_bytes: h.min_free_disk.map(|b| b.0),
            max_write_latency: h.max_write_latency.map(|d| d.0),
            max_memory_bytes: h.max_memory.map(|b| b.0),
            max_event_loop_lag: h.max_event_loop_lag.map(|d| d.0),
        }
    }
}
