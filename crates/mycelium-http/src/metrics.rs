//! `GET /metrics`: the Prometheus text exposition, built at scrape time from the broker's own
//! counters (relaxed atomics the fast path keeps anyway: recording costs nothing extra), its
//! latency histograms, the durable subscriptions' positions and the process's resources. Topic
//! labels are capped (`metrics_topics_max`); topics past the cap are summed under `_other`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use mycelium_broker::Broker;
use mycelium_broker::metrics::OTHER_TOPICS;
use mycelium_protocol::Export;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// What a family shared by several topic counters (told apart by a label) counts.
const SHARED_FAMILIES: &[(&str, &str)] = &[
    (
        "messages_failed",
        "Publishes refused or subscribers cut off, by reason",
    ),
    (
        "messages_dead_lettered",
        "Messages given up, by reason (moved to the dead-letter queue unless it is off)",
    ),
];

fn counter_family(registry: &mut Registry, name: &str, help: &str, values: &BTreeMap<Labels, u64>) {
    let family = Family::<Labels, Counter>::default();
    for (labels, value) in values {
        family.get_or_create(labels).inc_by(*value);
    }
    registry.register(name, help, family);
}

fn gauge_family(registry: &mut Registry, name: &str, help: &str, values: &BTreeMap<Labels, f64>) {
    let family = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    for (labels, value) in values {
        family.get_or_create(labels).set(*value);
    }
    registry.register(name, help, family);
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The exposition text; `ready` is what `/health/ready` would answer now.
pub(crate) fn render(broker: &Broker, rate_limited: u64, ready: bool) -> String {
    let stats = broker.stats();
    let mut registry = Registry::with_prefix("mycelium");
    let topic_of = |name: &str| broker.metrics.label(name);
    // Every topic counter of the table (`mycelium_protocol::topic_counters!`), by family.
    let mut families: BTreeMap<&'static str, (&'static str, BTreeMap<Labels, u64>)> = BTreeMap::new();
    let mut depth = BTreeMap::new();
    for t in &stats.topics {
        let topic = topic_of(&t.name);
        for (counter, value) in t.counters() {
            let (family, key) = match counter.export {
                Export::Family(family) => (family, labels(&[("topic", &topic)])),
                Export::Labelled(family, key, label) => (family, labels(&[("topic", &topic), (key, label)])),
                Export::ByPolicy(family) => {
                    let policy = broker
                        .topic(&t.name)
                        .map_or("unknown".to_owned(), |x| x.spec().overflow.to_string());
                    (family, labels(&[("topic", &topic), ("policy", &policy)]))
                }
                Export::Sum => continue,
            };
            let help = SHARED_FAMILIES
                .iter()
                .find(|(f, _)| *f == family)
                .map_or(counter.help, |(_, help)| help);
            *families
                .entry(family)
                .or_insert_with(|| (help, BTreeMap::new()))
                .1
                .entry(key)
                .or_insert(0) += value;
        }
        *depth.entry(labels(&[("topic", &topic)])).or_insert(0) += t.stored;
    }
    for (family, (help, values)) in &families {
        counter_family(&mut registry, family, help, values);
    }
    let depth: BTreeMap<Labels, f64> = depth.into_iter().map(|(k, v)| (k, v as f64)).collect();
    gauge_family(
        &mut registry,
        "queue_depth",
        "Messages stored per topic (0 for in-memory topics)",
        &depth,
    );

    let durable = broker.durable_subscriptions();
    let durable_consumers: usize = durable.iter().map(|d| d.consumers).sum();
    let mut lag = BTreeMap::new();
    let mut inflight = BTreeMap::new();
    let mut oldest = BTreeMap::new();
    for sub in durable {
        let topic = topic_of(&sub.topic);
        let subscription = if topic == OTHER_TOPICS {
            OTHER_TOPICS.to_owned()
        } else {
            sub.name.clone()
        };
        let key = labels(&[("topic", &topic), ("subscription", &subscription)]);
        *lag.entry(key.clone()).or_insert(0.0) += sub.lag as f64;
        *inflight.entry(key.clone()).or_insert(0.0) += sub.in_flight as f64;
        let age = sub.oldest_unacked_age_ms as f64 / 1000.0;
        let entry = oldest.entry(key).or_insert(0.0f64);
        *entry = entry.max(age);
    }
    gauge_family(
        &mut registry,
        "consumer_lag",
        "Stored messages a durable subscription has not finished",
        &lag,
    );
    gauge_family(
        &mut registry,
        "inflight",
        "Messages handed out and not acknowledged",
        &inflight,
    );
    gauge_family(
        &mut registry,
        "oldest_unacked_age_seconds",
        "Age of the oldest unfinished message of a durable subscription",
        &oldest,
    );
    let mut dlq = BTreeMap::new();
    for t in &stats.topics {
        if t.name.ends_with(".dlq") {
            continue;
        }
        if let Ok(n) = broker.dlq_depth(&t.name) {
            *dlq.entry(labels(&[("topic", &topic_of(&t.name))])).or_insert(0.0) += n as f64;
        }
    }
    gauge_family(&mut registry, "dlq_depth", "Dead letters waiting per topic", &dlq);
    let single = |value: f64| BTreeMap::from([(Labels::new(), value)]);
    gauge_family(
        &mut registry,
        "connections",
        "Native connections open",
        &single(stats.connections.len() as f64),
    );
    gauge_family(
        &mut registry,
        "subscriptions",
        "Subscriptions open (plain ones and consumers of durable ones)",
        &single((stats.subscriptions.len() + durable_consumers) as f64),
    );
    gauge_family(
        &mut registry,
        "topics",
        "Topics",
        &single(stats.topics.len() as f64),
    );
    gauge_family(
        &mut registry,
        "ready",
        "1 when the broker is ready (listeners up, data directory writable), else 0",
        &single(if ready { 1.0 } else { 0.0 }),
    );
    if let Some(health) = broker.health() {
        let node = health.node();
        let failing: BTreeMap<Labels, f64> = node
            .health
            .checks
            .iter()
            .map(|c| (labels(&[("check", c.check)]), if c.ok { 0.0 } else { 1.0 }))
            .collect();
        gauge_family(
            &mut registry,
            "health_check_failing",
            "1 while a health threshold is crossed (last monitor run)",
            &failing,
        );
        if let Some(free) = node.health.free_disk_bytes {
            gauge_family(
                &mut registry,
                "storage_free_bytes",
                "Free space for the data directory",
                &single(free as f64),
            );
        }
        if let Some(ms) = node.health.write_latency_ms {
            gauge_family(
                &mut registry,
                "storage_write_latency_seconds",
                "Probe write + fsync in the data directory (last monitor run)",
                &single(ms / 1e3),
            );
        }
        gauge_family(
            &mut registry,
            "event_loop_lag_seconds",
            "How late a 10 ms timer fired (last monitor run)",
            &single(node.health.event_loop_lag_ms / 1e3),
        );
    }
    gauge_family(
        &mut registry,
        "uptime_seconds",
        "Seconds since the broker started",
        &single(stats.uptime_ms as f64 / 1000.0),
    );
    counter_family(
        &mut registry,
        "http_rate_limited",
        "HTTP requests refused with 429",
        &BTreeMap::from([(Labels::new(), rate_limited)]),
    );
    let refusals = broker
        .refusal_counts()
        .into_iter()
        .map(|(door, reason, n)| (labels(&[("door", door.as_str()), ("reason", reason.as_str())]), n))
        .collect();
    counter_family(
        &mut registry,
        "auth_refusals",
        "Requests refused by authentication or authorization, by door and reason",
        &refusals,
    );
    counter_family(
        &mut registry,
        "audit_dropped",
        "Audit lines the audit file could not keep up with",
        &BTreeMap::from([(Labels::new(), broker.audit().dropped())]),
    );
    {
        use std::sync::atomic::Ordering::Relaxed;
        let reloads = &broker.reloads;
        counter_family(
            &mut registry,
            "config_reloads",
            "Configuration reloads, by result (failed: the file was unreadable or invalid; nothing changed)",
            &BTreeMap::from([
                (
                    vec![("result".to_owned(), "applied".to_owned())],
                    reloads.applied.load(Relaxed),
                ),
                (
                    vec![("result".to_owned(), "failed".to_owned())],
                    reloads.failed.load(Relaxed),
                ),
            ]),
        );
        for (name, help, value) in [
            (
                "config_version",
                "Version of the configuration in effect (1 at start-up)",
                reloads.version.load(Relaxed).max(1),
            ),
            (
                "config_restart_pending",
                "Changes in the configuration file that wait for a restart",
                reloads.restart_pending.load(Relaxed),
            ),
            (
                "config_last_reload_failed",
                "1 when the last configuration reload was refused",
                reloads.last_failed.load(Relaxed),
            ),
        ] {
            gauge_family(
                &mut registry,
                name,
                help,
                &BTreeMap::from([(Labels::new(), value as f64)]),
            );
        }
    }
    for (name, help, count) in broker.incidents.counts() {
        counter_family(
            &mut registry,
            name,
            help,
            &BTreeMap::from([(Labels::new(), count)]),
        );
    }
    registry.register(
        "publish_duration_seconds",
        "Receipt to durable, stored topics",
        broker.metrics.publish_duration.clone(),
    );
    registry.register(
        "delivery_duration_seconds",
        "Publish to acknowledgement, durable subscriptions",
        broker.metrics.delivery_duration.clone(),
    );
    let mut text = String::new();
    if encode(&mut text, &registry).is_err() {
        text.clear();
    }
    let mut out = prometheus_text(&text);
    process_metrics(&mut out);
    out
}

/// The Prometheus text format (0.0.4, what Prometheus and promtool read) from the OpenMetrics
/// text the encoder writes: a counter's HELP and TYPE name its `_total` samples, no `# UNIT` or
/// `# EOF` lines.
fn prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match rewritten {
            Some(line) => out.push_str(&line),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The standard process metrics, from /proc/self.
fn process_metrics(out: &mut String) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rss_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may contain spaces).
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = 100.0; // USER_HZ on Linux
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let cpu = (field(11) + field(12)) / ticks; // utime + stime
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    let threads = field(17);
    let _ = writeln!(
        out,
        "# HELP process_resident_memory_bytes Resident memory size in bytes."
    );
    let _ = writeln!(out, "# TYPE process_resident_memory_bytes gauge");
    let _ = writeln!(out, "process_resident_memory_bytes {}", rss_kb * 1024);
    let _ = writeln!(
        out,
        "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds."
    );
    let _ = writeln!(out, "# TYPE process_cpu_seconds_total counter");
    let _ = writeln!(out, "process_cpu_seconds_total {cpu}");
    let _ = writeln!(out, "# HELP process_open_fds Number of open file descriptors.");
    let _ = writeln!(out, "# TYPE process_open_fds gauge");
    let _ = writeln!(out, "process_open_fds {fds}");
    let _ = writeln!(out, "# HELP process_threads Number of OS threads.");
    let _ = writeln!(out, "# TYPE process_threads gauge");
    let _ = writeln!(out, "process_threads {threads}");
}
