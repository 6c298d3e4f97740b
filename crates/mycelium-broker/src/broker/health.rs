//! The health monitor and the node record. Every `interval` (30 s by default) the monitor
//! measures what operators watch: queue depth per topic, active consumers, storage free space and
//! write latency (a probe write + fsync in the data directory), the process's CPU and memory, and
//! the event loop's lag (how late a short timer fires). A threshold crossed logs a warning and
//! shows in the report (and in `mycelium_health_check_failing`). The node record (id, version,
//! uptime, listeners, heartbeat, last report) is what `GET /api/v1/nodes/self` and
//! `mycelium health` show.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;

use crate::broker::Broker;

/// Thresholds (`None`: not checked).
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// How often the monitor measures.
    pub interval: Duration,
    /// Warn when a stored topic holds more messages than this.
    pub max_queue_depth: Option<u64>,
    /// Warn (and turn unready) when the data directory's filesystem has less free space.
    pub min_free_disk_bytes: Option<u64>,
    /// Warn when a probe write + fsync takes longer.
    pub max_write_latency: Option<Duration>,
    /// Warn when the process's resident memory is larger.
    pub max_memory_bytes: Option<u64>,
    /// Warn when a 10 ms timer fires later than this.
    pub max_event_loop_lag: Option<Duration>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval: Duration::from_secs(30),
            max_queue_depth: Some(10_000_000),
            min_free_disk_bytes: Some(1 << 30),
            max_write_latency: Some(Duration::from_millis(500)),
            max_memory_bytes: None,
            max_event_loop_lag: Some(Duration::from_millis(100)),
        }
    }
}

/// One threshold check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckResult {
    /// `queue_depth`, `free_disk`, `write_latency`, `memory`, `event_loop_lag`.
    pub check: &'static str,
    /// Whether it is within its threshold.
    pub ok: bool,
    /// What was measured, in words.
    pub detail: String,
}

/// What the monitor measured last.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HealthReport {
    /// When, ns since the Unix epoch.
    pub at_ns: u64,
    /// Stored messages per topic (stored topics only).
    pub queue_depth: Vec<(String, u64)>,
    /// Consumers attached: plain subscriptions and durable consumers.
    pub active_consumers: usize,
    /// Free bytes on the data directory's filesystem (`None`: no storage in use).
    pub free_disk_bytes: Option<u64>,
    /// Probe write + fsync in the data directory, ms.
    pub write_latency_ms: Option<f64>,
    /// Resident memory, bytes.
    pub memory_bytes: u64,
    /// CPU used since the last report, as a fraction of one core.
    pub cpu_cores: f64,
    /// How late a 10 ms timer fired, ms.
    pub event_loop_lag_ms: f64,
    /// The threshold checks.
    pub checks: Vec<CheckResult>,
}

/// This broker as operators see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeRecord {
    /// Stable id of this node (kept in the data directory when there is one).
    pub node_id: String,
    /// `[server] name`.
    pub name: String,
    /// The broker's version.
    pub version: String,
    /// When it started, ns since the Unix epoch.
    pub started_ns: u64,
    /// Seconds since then.
    pub uptime_s: f64,
    /// The monitor's last beat, ns since the Unix epoch.
    pub heartbeat_ns: u64,
    /// What it listens on (`unix:/path`, `tcp:addr`, `http:addr`).
    pub listeners: Vec<String>,
    /// The last health report.
    pub health: HealthReport,
}

/// The monitor's shared state.
#[derive(Debug)]
pub struct Health {
    /// Thresholds and interval; replaced by a configuration reload.
    config: Mutex<HealthConfig>,
    node_id: String,
    name: String,
    started_ns: u64,
    started: Instant,
    listeners: Mutex<Vec<String>>,
    last: Mutex<(u64, HealthReport)>,
}

impl Health {
    /// The monitor for a node named `name` whose data directory is `data_dir`.
    pub fn new(config: HealthConfig, name: &str, data_dir: &Path) -> Health {
        Health {
            config: Mutex::new(config),
            node_id: node_id(data_dir),
            name: name.to_owned(),
            started_ns: mycelium_codec::now_ns(),
            started: Instant::now(),
            listeners: Mutex::new(Vec::new()),
            last: Mutex::new((0, HealthReport::default())),
        }
    }

    /// Replaces the thresholds and interval (a configuration reload); the next measurement uses
    /// them.
    pub fn set_config(&self, config: HealthConfig) {
        *self.config.lock() = config;
    }

    /// Records what the node listens on.
    pub fn set_listeners(&self, listeners: Vec<String>) {
        *self.listeners.lock() = listeners;
    }

    /// The node record now.
    pub fn node(&self) -> NodeRecord {
        let (heartbeat_ns, health) = self.last.lock().clone();
        NodeRecord {
            node_id: self.node_id.clone(),
            name: self.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_ns: self.started_ns,
            uptime_s: self.started.elapsed().as_secs_f64(),
            heartbeat_ns,
            listeners: self.listeners.lock().clone(),
            health,
        }
    }

    /// Whether the last report found less free disk than the threshold (readiness turns off).
    pub fn disk_exhausted(&self) -> bool {
        let last = self.last.lock();
        last.1.checks.iter().any(|c| c.check == "free_disk" && !c.ok)
    }

    /// Runs the monitor until `stop` resolves.
    pub async fn run(
        self: Arc<Self>,
        broker: std::sync::Weak<Broker>,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        let mut cpu = CpuClock::now();
        loop {
            let Some(broker) = broker.upgrade() else { return };
            let lag = event_loop_lag().await;
            let data_dir = broker.config().durable.data_dir.clone();
            let uses_storage = broker.storage().is_some();
            let report = {
                let broker = Arc::clone(&broker);
                let config = self.config.lock().clone();
                let cpu_cores = cpu.cores_since();
                crate::store::io::blocking(move || {
                    measure(
                        &broker,
                        &config,
                        uses_storage.then_some(&*data_dir),
                        lag,
                        cpu_cores,
                    )
                })
                .await
            };
            for check in report.checks.iter().filter(|c| !c.ok) {
                tracing::warn!(check = check.check, detail = %check.detail, "health threshold crossed");
            }
            *self.last.lock() = (mycelium_codec::now_ns(), report);
            drop(broker);
            let interval = self.config.lock().interval;
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }
}

/// How late a 10 ms timer fires on this runtime.
async fn event_loop_lag() -> Duration {
    let asked = Duration::from_millis(10);
    let start = Instant::now();
    tokio::time::sleep(asked).await;
    start.elapsed().saturating_sub(asked)
}

fn measure(
    broker: &Broker,
    config: &HealthConfig,
    data_dir: Option<&Path>,
    lag: Duration,
    cpu_cores: f64,
) -> HealthReport {
    let stats = broker.stats();
    let queue_depth: Vec<(String, u64)> = stats
        .topics
        .iter()
        .filter(|t| t.stored > 0)
        .map(|t| (t.name.clone(), t.stored))
        .collect();
    let active_consumers = stats.subscriptions.len()
        + broker
            .durable_subscriptions()
            .iter()
            .map(|d| d.consumers)
            .sum::<usize>();
    let free_disk_bytes = data_dir.and_then(free_bytes);
    let write_latency = data_dir.and_then(|dir| {
        let start = Instant::now();
        mycelium_storage::DataDir::new(dir)
            .probe_write()
            .ok()
            .map(|()| start.elapsed())
    });
    let memory_bytes = rss_bytes();
    let mut checks = Vec::new();
    if let Some(max) = config.max_queue_depth {
        let worst = queue_depth.iter().max_by_key(|(_, d)| *d);
        checks.push(CheckResult {
            check: "queue_depth",
            ok: worst.is_none_or(|(_, d)| *d <= max),
            detail: worst.map_or("no stored messages".into(), |(t, d)| {
                format!("{t}: {d} messages (threshold {max})")
            }),
        });
    }
    if let (Some(min), Some(dir)) = (config.min_free_disk_bytes, data_dir) {
        checks.push(match free_disk_bytes {
            Some(free) => CheckResult {
                check: "free_disk",
                ok: free >= min,
                detail: format!("{free} bytes free in {} (threshold {min})", dir.display()),
            },
            None => CheckResult {
                check: "free_disk",
                ok: false,
                detail: format!("cannot read free space of {}", dir.display()),
            },
        });
    }
    if let (Some(max), Some(_)) = (config.max_write_latency, data_dir) {
        checks.push(match write_latency {
            Some(took) => CheckResult {
                check: "write_latency",
                ok: took <= max,
                detail: format!(
                    "probe write + fsync took {:.2} ms (threshold {} ms)",
                    took.as_secs_f64() * 1e3,
                    max.as_millis()
                ),
            },
            None => CheckResult {
                check: "write_latency",
                ok: false,
                detail: "the probe write failed (data directory not writable)".into(),
            },
        });
    }
    if let Some(max) = config.max_memory_bytes {
        checks.push(CheckResult {
            check: "memory",
            ok: memory_bytes <= max,
            detail: format!("{memory_bytes} bytes resident (threshold {max})"),
        });
    }
    if let Some(max) = config.max_event_loop_lag {
        checks.push(CheckResult {
            check: "event_loop_lag",
            ok: lag <= max,
            detail: format!(
                "a 10 ms timer fired {:.2} ms late (threshold {} ms)",
                lag.as_secs_f64() * 1e3,
                max.as_millis()
            ),
        });
    }
    HealthReport {
        at_ns: mycelium_codec::now_ns(),
        queue_depth,
        active_consumers,
        free_disk_bytes,
        write_latency_ms: write_latency.map(|d| d.as_secs_f64() * 1e3),
        memory_bytes,
        cpu_cores,
        event_loop_lag_ms: lag.as_secs_f64() * 1e3,
        checks,
    }
}

fn free_bytes(dir: &Path) -> Option<u64> {
    let stat = rustix::fs::statvfs(dir).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Process CPU time between reports.
struct CpuClock {
    at: Instant,
    cpu_s: f64,
}

impl CpuClock {
    fn now() -> CpuClock {
        CpuClock {
            at: Instant::now(),
            cpu_s: process_cpu_seconds(),
        }
    }

    fn cores_since(&mut self) -> f64 {
        let now = CpuClock::now();
        let wall = now.at.duration_since(self.at).as_secs_f64();
        let used = now.cpu_s - self.cpu_s;
        *self = now;
        if wall > 0.0 { used / wall } else { 0.0 }
    }
}

/// User + system CPU seconds of this process.
pub fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (field(11) + field(12)) / 100.0
}

/// The node id kept in `data_dir/node-id` (created the first time); a fresh one per start when
/// there is no data directory.
fn node_id(data_dir: &Path) -> String {
    let path = data_dir.join("node-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim();
        if !id.is_empty() {
            return id.to_owned();
        }
    }
    let id = uuid::Uuid::now_v7().to_string();
    // Kept only where a data directory exists (a broker with nothing stored creates none).
    if data_dir.is_dir() {
        let _ = std::fs::write(&path, &id);
    }
    id
}
