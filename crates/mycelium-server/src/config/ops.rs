//! The operations sections of the configuration: `[http]` (and its rate limits), `[metrics]`,
//! `[health]`, `[tracing]`: their shapes, their checks, and what the HTTP door, the health monitor
//! and the trace exporter are built from.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Config, ConfigError};
use crate::units::{ByteSize, HumanDuration};

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
    /// `jwt` (bearer tokens) or `none` (everyone is an admin; a warning at start-up).
    pub auth: String,
    /// `HS256`, `RS256` or `ES256`.
    pub jwt_algorithm: String,
    /// HS256 shared secret (at least 32 bytes). Empty: a random one is generated once and kept in
    /// the data directory's generated secret file (`DataDir::jwt_secret`) (mode 0600), where `mycelium token issue` finds it.
    pub jwt_secret: String,
    /// RS256 / ES256: PEM public key file (verifies tokens).
    pub jwt_public_key: String,
    /// RS256 / ES256: PEM private key file (only `mycelium token issue` needs it).
    pub jwt_private_key: String,
    /// The claim with the role(s): `producer`, `consumer`, `admin`.
    pub jwt_role_claim: String,
    /// Clock skew allowed on `exp` and `nbf`.
    pub jwt_leeway: HumanDuration,
    /// Required `iss` (empty: not checked).
    pub jwt_issuer: String,
    /// Required `aud` (empty: not checked).
    pub jwt_audience: String,
    /// Verified tokens remembered (by their exact text) so their signature is not checked again
    /// on every request; 0 checks every request in full.
    pub jwt_cache_tokens: usize,
    /// Largest request body.
    pub max_body_size: ByteSize,
    /// Time a client has to send a request's headers.
    pub header_timeout: HumanDuration,
    /// Time to serve one request (long polls are capped below it).
    pub request_timeout: HumanDuration,
    /// HTTP consumers idle this long are detached (their unacked messages are redelivered).
    pub consumer_idle_timeout: HumanDuration,
    /// Rate limits.
    pub rate_limits: RateLimitSection,
}

/// The most verified tokens `[http] jwt_cache_tokens` may keep.
pub const JWT_CACHE_TOKENS_MAX: usize = 1_000_000;

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            enabled: true,
            listen: "127.0.0.1:7421".into(),
            unix_socket: String::new(),
            auth: "jwt".into(),
            jwt_algorithm: "HS256".into(),
            jwt_secret: String::new(),
            jwt_public_key: String::new(),
            jwt_private_key: String::new(),
            jwt_role_claim: "roles".into(),
            jwt_leeway: HumanDuration(Duration::from_secs(30)),
            jwt_issuer: String::new(),
            jwt_audience: String::new(),
            jwt_cache_tokens: 4096,
            max_body_size: ByteSize(16 << 20),
            header_timeout: HumanDuration(Duration::from_secs(10)),
            request_timeout: HumanDuration(Duration::from_secs(60)),
            consumer_idle_timeout: HumanDuration(Duration::from_secs(300)),
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
            match h.auth.as_str() {
                "none" => {}
                "jwt" => match h.jwt_algorithm.as_str() {
                    "HS256" => {
                        if !h.jwt_secret.is_empty() && h.jwt_secret.len() < 32 {
                            bad(
                                "http.jwt_secret".into(),
                                "must be at least 32 bytes (or empty: generated)".into(),
                            );
                        }
                    }
                    "RS256" | "ES256" => {
                        if h.jwt_public_key.is_empty() {
                            bad(
                                "http.jwt_public_key".into(),
                                format!("{} needs the PEM public key file", h.jwt_algorithm),
                            );
                        }
                    }
                    other => bad(
                        "http.jwt_algorithm".into(),
                        format!("`{other}` is not one of: HS256, RS256, ES256"),
                    ),
                },
                other => bad("http.auth".into(), format!("`{other}` is not one of: jwt, none")),
            }
            if h.jwt_role_claim.is_empty() {
                bad("http.jwt_role_claim".into(), "must not be empty".into());
            }
            if h.jwt_cache_tokens > JWT_CACHE_TOKENS_MAX {
                bad(
                    "http.jwt_cache_tokens".into(),
                    format!("must be at most {JWT_CACHE_TOKENS_MAX} (0 turns the cache off)"),
                );
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

    /// The JWT settings of `[http]` (`None` with `auth = "none"`). An empty HS256 secret is read
    /// from (or, the first time, generated into) the data directory's generated secret file (`DataDir::jwt_secret`).
    ///
    /// # Errors
    /// The secret file cannot be read or written.
    pub fn jwt_config(&self) -> Result<Option<mycelium_http::JwtConfig>, ConfigError> {
        let h = &self.http;
        if h.auth == "none" {
            return Ok(None);
        }
        let path = |p: &str| (!p.is_empty()).then(|| PathBuf::from(p));
        let key = match h.jwt_algorithm.as_str() {
            "RS256" => mycelium_http::JwtKey::Rs256 {
                public_key: PathBuf::from(&h.jwt_public_key),
                private_key: path(&h.jwt_private_key),
            },
            "ES256" => mycelium_http::JwtKey::Es256 {
                public_key: PathBuf::from(&h.jwt_public_key),
                private_key: path(&h.jwt_private_key),
            },
            _ if !h.jwt_secret.is_empty() => mycelium_http::JwtKey::Hs256(h.jwt_secret.clone().into_bytes()),
            _ => mycelium_http::JwtKey::Hs256(generated_secret(Path::new(&self.storage.data_dir))?),
        };
        let text = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        Ok(Some(mycelium_http::JwtConfig {
            key,
            role_claim: h.jwt_role_claim.clone(),
            leeway: h.jwt_leeway.0,
            issuer: text(&h.jwt_issuer),
            audience: text(&h.jwt_audience),
            cache_tokens: h.jwt_cache_tokens,
        }))
    }

    /// The HTTP door's settings (`None` when `[http] enabled = false`).
    ///
    /// # Errors
    /// As [`Config::jwt_config`].
    pub fn http_config(&self) -> Result<Option<mycelium_http::HttpConfig>, ConfigError> {
        let h = &self.http;
        if !h.enabled {
            return Ok(self
                .metrics
                .listen
                .parse()
                .ok()
                .map(|addr| mycelium_http::HttpConfig {
                    listen: Some(addr),
                    metrics_only: true,
                    ..mycelium_http::HttpConfig::default()
                }));
        }
        let auth = match self.jwt_config()? {
            Some(jwt) => mycelium_http::AuthConfig::Jwt(jwt),
            None => mycelium_http::AuthConfig::None,
        };
        let quota = |q: QuotaSection| mycelium_http::Quota {
            per_second: q.per_second,
            burst: q.burst.unwrap_or(q.per_second),
        };
        let r = &h.rate_limits;
        let per_role = [
            (mycelium_http::Role::Producer, r.producer),
            (mycelium_http::Role::Consumer, r.consumer),
            (mycelium_http::Role::Admin, r.admin),
        ]
        .into_iter()
        .filter_map(|(role, q)| q.map(|q| (role, quota(q))))
        .collect();
        Ok(Some(mycelium_http::HttpConfig {
            listen: h.listen.parse().ok(),
            unix_socket: (!h.unix_socket.is_empty()).then(|| PathBuf::from(&h.unix_socket)),
            auth,
            limits: mycelium_http::RateLimits {
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
            },
            body_limit_bytes: h.max_body_size.bytes(),
            header_timeout: h.header_timeout.0,
            request_timeout: h.request_timeout.0,
            consumer_idle_timeout: h.consumer_idle_timeout.0,
            ..mycelium_http::HttpConfig::default()
        }))
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

/// The generated HS256 secret of `data_dir`, created (64 hex characters, mode 0600) the first
/// time.
fn generated_secret(data_dir: &Path) -> Result<Vec<u8>, ConfigError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = mycelium_storage::DataDir::new(data_dir).jwt_secret();
    let failed = |at: &Path, reason: String| ConfigError::Secret {
        path: at.to_owned(),
        reason,
    };
    // Refused when it is a link, someone else's, or readable by others.
    if let Some(bytes) = mycelium_storage::read_private(&path).map_err(|e| failed(&path, e.to_string()))? {
        let secret = String::from_utf8_lossy(&bytes).trim().to_owned();
        if secret.len() >= 32 {
            return Ok(secret.into_bytes());
        }
        return Err(failed(&path, "the secret is shorter than 32 bytes".into()));
    }
    mycelium_storage::create_dir_durable(data_dir).map_err(|e| failed(data_dir, e.to_string()))?;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| failed(&path, format!("no randomness for the JWT secret: {e}")))?;
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mycelium_storage::FILE_MODE)
        .open(&path)
        .map_err(|e| failed(&path, e.to_string()))?;
    file.write_all(secret.as_bytes())
        .and_then(|()| file.sync_all())
        .and_then(|()| mycelium_storage::sync_dir(data_dir))
        .map_err(|e| failed(&path, e.to_string()))?;
    tracing::info!(path = %path.display(), "generated the HTTP API's JWT secret (mint tokens with `mycelium token issue`)");
    Ok(secret.into_bytes())
}
