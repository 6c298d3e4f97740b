//! `mycelium bench`: measures Mycelium and, in the same invocation, NATS and Redis with the
//! identical workload through their standard Rust clients; alternating runs, medians, ratios.

mod connections;
mod curves;
mod durable;
mod http;
mod latency;
mod payload;
mod soak;
mod spawn;
mod stalls;
mod system;
mod throughput;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use spawn::{bench_token, native_bench_token, spawn_broker};

pub use system::{Kind, System};

/// Arguments of `mycelium bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    mode: Mode,
    /// The running broker to measure (set from `mycelium --url`); `None` spawns one.
    #[arg(skip)]
    pub target: Option<String>,
    /// The credential for that running broker (set from `mycelium --token`).
    #[arg(skip)]
    pub token: Option<String>,
    /// Peers measured in the same run: `nats=nats://127.0.0.1:4222,redis=redis://127.0.0.1:6379`.
    #[arg(long, global = true)]
    compare: Option<String>,
    /// Transport(s) to measure Mycelium over.
    #[arg(long, global = true, value_enum, default_value_t = Transport::Both)]
    transport: Transport,
    /// Alternating runs per system; the median is reported.
    #[arg(long, global = true, default_value_t = 3)]
    runs: usize,
    /// Print exactly one JSON object on stdout (progress and table go away).
    #[arg(long, global = true)]
    json: bool,
    /// The broker binary to spawn (default: this executable).
    #[arg(long, global = true)]
    broker_bin: Option<PathBuf>,
    /// Also measure over TLS: a directory with `ca.pem`, `server.pem` and `server.key`
    /// (`scripts/tls-certs DIR` makes them; the certificate names `localhost`). A second broker
    /// is spawned with TLS on its TCP listener (`tls://localhost:port`), and `--compare` peers
    /// given as `tls://` URLs are reached with the same CA.
    #[arg(long, global = true)]
    tls_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Publishers -> subscribers, fanout or queue group; every delivery verified.
    Throughput {
        /// Publishing connections.
        #[arg(long, short = 'p', default_value_t = 1)]
        publishers: usize,
        /// Subscribing connections.
        #[arg(long, short = 's', default_value_t = 1)]
        subscribers: usize,
        /// fanout or queue.
        #[arg(long, value_enum, default_value_t = Routing::Fanout)]
        routing: Routing,
        /// Payload bytes.
        #[arg(long, default_value_t = 128)]
        size: usize,
        /// Messages published in total.
        #[arg(long, short = 'n', default_value_t = 1_000_000, conflicts_with = "duration")]
        count: u64,
        /// Publish for this many seconds instead of a fixed count.
        #[arg(long)]
        duration: Option<f64>,
    },
    /// Latency at a fixed send rate (from the scheduled send time), HDR percentiles.
    Latency {
        /// Messages per second.
        #[arg(long, default_value_t = 10_000)]
        rate: u64,
        /// Messages sent.
        #[arg(long, short = 'n', default_value_t = 50_000)]
        count: u64,
        /// Payload bytes.
        #[arg(long, default_value_t = 128)]
        size: usize,
        /// Measure request/reply round trip instead of one way.
        #[arg(long)]
        round_trip: bool,
    },
    /// Many subscribed connections, one publisher; all must receive all; broker RSS.
    Connections {
        /// Subscribing connections.
        #[arg(long, short = 'c', default_value_t = 1000)]
        connections: usize,
        /// Messages published.
        #[arg(long, short = 'n', default_value_t = 100)]
        count: u64,
        /// Payload bytes.
        #[arg(long, default_value_t = 128)]
        size: usize,
    },
    /// Stored messages: publishes confirmed once stored (Mycelium disk topic, NATS JetStream file
    /// storage, Redis Streams), and with --consume the end to end at-least-once path (publish +
    /// consume + ack). Compare with --compare nats=...,redis=....
    Durable {
        /// Messages published.
        #[arg(long, short = 'n', default_value_t = 200_000)]
        count: u64,
        /// Payload bytes (at least 8).
        #[arg(long, default_value_t = 128)]
        size: usize,
        /// Publishes in flight (awaiting their confirmation) at once.
        #[arg(long, default_value_t = 256)]
        window: usize,
        /// Mycelium topic's fsync policy: batch (group commit), always, or never (confirmed after
        /// the write, like JetStream's default file storage, which syncs every 2 minutes).
        #[arg(long, default_value = "batch")]
        fsync: String,
        /// Also consume and acknowledge every message; delivered/s is then the end-to-end rate.
        #[arg(long)]
        consume: bool,
    },
    /// Publishes over the HTTP API (keep-alive, a JWT on every request): one message per POST, or
    /// `--batch` messages per POST; `--rate` for latency at a fixed request rate.
    Http {
        /// Keep-alive connections.
        #[arg(long, short = 'c', default_value_t = 32)]
        connections: usize,
        /// Seconds to publish for.
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        /// Payload bytes per message.
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// Messages per POST.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Requests per second in total (default: as fast as possible).
        #[arg(long)]
        rate: Option<u64>,
        /// The HTTP API to measure (default: the spawned broker's).
        #[arg(long)]
        http_url: Option<String>,
        /// Bearer token for --http-url.
        #[arg(long)]
        token: Option<String>,
    },
    /// Good clients beside hostile ones (a STATS flood that never reads, half-sent frames, a `>`
    /// subscriber that never reads, deeply nested filters, batches of bad entries) on a spawned
    /// broker: the good clients' throughput and errors, what the broker did to the hostile ones,
    /// and its resident memory. Not part of the test command.
    Soak {
        /// Seconds to run.
        #[arg(long, default_value_t = 60.0)]
        duration: f64,
    },
    /// The machine's own floor: one thread per CPU spins for --duration and reports the time it
    /// was not running (gaps >= 0.1 ms). No broker; tail latencies measured here cannot be lower.
    Stalls {
        /// Seconds to spin.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
    },
    /// Cost curves: deliveries/s as subscribers (1..256) and payload size (16 B..64 KiB) grow; writes
    /// a Markdown table to stdout and PNG charts to --out.
    Curves {
        /// Directory for `curve-subscribers.png` and `curve-size.png`.
        #[arg(long, default_value = "docs")]
        out: PathBuf,
        /// Scale of the message counts (1.0 full; smaller for a quick look).
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
    },
}

/// Fanout or queue group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Routing {
    /// Every subscriber gets every message.
    Fanout,
    /// Each message to one member of the group.
    Queue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Transport {
    Unix,
    Tcp,
    Both,
}

/// What one run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Measured {
    /// Messages published per second (publisher side, until the broker confirmed a flush).
    pub publish_msgs_per_s: f64,
    /// Deliveries per second, all subscribers together.
    pub delivered_msgs_per_s: f64,
    /// Delivered payload megabytes per second.
    pub delivered_mb_per_s: f64,
    /// Deliveries that never arrived.
    pub lost: u64,
    /// Deliveries out of per-publisher order.
    pub out_of_order: u64,
    /// Latency percentiles, microseconds (latency mode).
    pub p50_us: Option<f64>,
    #[allow(missing_docs)]
    pub p90_us: Option<f64>,
    #[allow(missing_docs)]
    pub p99_us: Option<f64>,
    #[allow(missing_docs)]
    pub p999_us: Option<f64>,
    #[allow(missing_docs)]
    pub max_us: Option<f64>,
    /// Broker resident memory under load (connections mode) or after the run.
    pub broker_rss_bytes: Option<u64>,
    /// Broker resident memory before the workload (connections mode).
    pub broker_idle_rss_bytes: Option<u64>,
}

#[derive(Debug, Serialize)]
struct ResultRow {
    system: Kind,
    transport: &'static str,
    #[serde(flatten)]
    median: Measured,
    /// Delivered msg/s of every run, in order.
    runs: Vec<f64>,
}

fn parse_compare(spec: &str) -> anyhow::Result<Vec<System>> {
    spec.split(',')
        .filter(|s| !s.is_empty())
        .map(|entry| {
            let (name, url) = entry
                .split_once('=')
                .with_context(|| format!("`{entry}`: expected name=url"))?;
            let kind = match name {
                "nats" => Kind::Nats,
                "redis" => Kind::Redis,
                other => bail!("unknown peer `{other}` (nats, redis)"),
            };
            let pid = system::pid_of(if kind == Kind::Nats {
                "nats-server"
            } else {
                "redis-server"
            });
            Ok(System {
                kind,
                url: url.to_owned(),
                transport: "tcp",
                pid,
                token: None,
                tls_ca: None,
            })
        })
        .collect()
}

/// The median run by delivered rate, with every latency percentile the median of that
/// percentile over all runs: latency runs go at a fixed rate, so sorting by rate alone would
/// report one arbitrary run's latencies.
fn median(mut runs: Vec<Measured>) -> Measured {
    let middle_of = |field: fn(&Measured) -> Option<f64>| {
        let mut values: Vec<f64> = runs.iter().filter_map(field).collect();
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied()
    };
    let p50 = middle_of(|m| m.p50_us);
    let p90 = middle_of(|m| m.p90_us);
    let p99 = middle_of(|m| m.p99_us);
    let p999 = middle_of(|m| m.p999_us);
    let max = middle_of(|m| m.max_us);
    runs.sort_by(|a, b| a.delivered_msgs_per_s.total_cmp(&b.delivered_msgs_per_s));
    let lost = runs.iter().map(|r| r.lost).max().unwrap_or(0);
    let out_of_order = runs.iter().map(|r| r.out_of_order).max().unwrap_or(0);
    // Memory: idle from the fresh broker (the first run), loaded as the worst of all runs.
    let idle = runs.iter().filter_map(|r| r.broker_idle_rss_bytes).min();
    let loaded = runs.iter().filter_map(|r| r.broker_rss_bytes).max();
    let mut middle = runs.swap_remove(runs.len() / 2);
    // Any loss in any run is reported, not hidden by the median.
    middle.lost = lost;
    middle.out_of_order = out_of_order;
    middle.broker_idle_rss_bytes = idle;
    middle.broker_rss_bytes = loaded;
    (middle.p50_us, middle.p90_us, middle.p99_us) = (p50, p90, p99);
    (middle.p999_us, middle.max_us) = (p999, max);
    middle
}

/// Runs `mycelium bench`; returns whether every run delivered everything.
///
/// # Errors
/// A broker that cannot be spawned or reached, bad arguments.
pub async fn run(args: BenchArgs) -> anyhow::Result<bool> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    if let Mode::Stalls { duration } = &args.mode {
        return run_stalls(*duration, args.json).await;
    }
    if let Mode::Soak { duration } = &args.mode {
        let spawned = std::sync::Arc::new(spawn_broker(args.broker_bin.clone(), None)?);
        let report = soak::run(spawned, native_bench_token()?, *duration).await?;
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            soak::print(&report);
        }
        return Ok(report.good_errors == 0);
    }
    let spawned = match &args.target {
        Some(_) => None,
        None => Some(spawn_broker(args.broker_bin.clone(), None)?),
    };
    let spawned_tls = match (&args.target, &args.tls_dir) {
        (None, Some(dir)) => Some(spawn_broker(args.broker_bin.clone(), Some(dir))?),
        _ => None,
    };
    let tls_ca = args.tls_dir.as_ref().map(|dir| dir.join("ca.pem"));
    let mut systems = Vec::new();
    let native_token = native_bench_token()?;
    match (&args.target, &spawned) {
        (Some(url), _) => {
            let transport = if url.starts_with("tcp://") { "tcp" } else { "unix" };
            systems.push(System {
                kind: Kind::Mycelium,
                url: url.clone(),
                transport,
                pid: None,
                // A running broker: the credential the CLI was given.
                token: args.token.clone().map(mycelium_client::Token::new),
                tls_ca: tls_ca.clone(),
            });
        }
        (None, Some(s)) => {
            let pid = Some(s.child.id());
            if args.transport != Transport::Tcp {
                let url = format!("unix://{}", s.socket.display());
                systems.push(System {
                    kind: Kind::Mycelium,
                    url,
                    transport: "unix",
                    pid,
                    token: Some(native_token.clone()),
                    tls_ca: None,
                });
            }
            if args.transport != Transport::Unix {
                systems.push(System {
                    kind: Kind::Mycelium,
                    url: format!("tcp://{}", s.tcp),
                    transport: "tcp",
                    pid,
                    token: Some(native_token.clone()),
                    tls_ca: None,
                });
            }
        }
        (None, None) => unreachable!("spawned when no target"),
    }
    if let Some(s) = &spawned_tls {
        let port = s.tcp.rsplit_once(':').map_or("", |(_, p)| p);
        systems.push(System {
            kind: Kind::Mycelium,
            url: format!("tls://localhost:{port}"),
            transport: "tls",
            pid: Some(s.child.id()),
            token: Some(native_token.clone()),
            tls_ca: tls_ca.clone(),
        });
    }
    let mut unreachable = Vec::new();
    if let Some(spec) = &args.compare {
        for mut peer in parse_compare(spec)? {
            if peer.url.starts_with("tls://") {
                peer.transport = "tls";
                peer.tls_ca = tls_ca.clone();
            }
            match peer.ping().await {
                Ok(()) => systems.push(peer),
                Err(error) => {
                    unreachable.push(format!("{} ({}): not reachable: {error:#}", peer.kind, peer.url))
                }
            }
        }
    }
    if let Mode::Http {
        connections,
        duration,
        size,
        batch,
        rate,
        http_url,
        token,
    } = &args.mode
    {
        // The spawned broker's API over TCP and over its Unix socket (per --transport), or the
        // one API given.
        let (targets, token) = match (http_url, &spawned) {
            (Some(url), _) => {
                let base = url.trim_end_matches('/').to_owned();
                let label = if base.starts_with("unix:") {
                    "http-unix"
                } else {
                    "http"
                };
                (vec![(label, base)], token.clone().unwrap_or_default())
            }
            (None, Some(s)) => {
                let mut targets = Vec::new();
                if args.transport != Transport::Unix {
                    targets.push(("http", format!("http://{}", s.http)));
                }
                if args.transport != Transport::Tcp {
                    targets.push(("http-unix", format!("unix://{}", s.http_unix.display())));
                }
                (targets, bench_token()?)
            }
            (None, None) => bail!("bench http against --url needs --http-url (and --token)"),
        };
        let w = http::Workload {
            connections: *connections,
            duration_s: *duration,
            size: (*size).max(2),
            batch: *batch,
            rate: *rate,
        };
        return run_http(&targets, &token, &w, args.runs, args.json).await;
    }
    if let Mode::Curves { out, scale } = &args.mode {
        return run_curves(&systems, out, *scale, args.json).await;
    }
    let (mode_name, workload_json) = match &args.mode {
        Mode::Throughput {
            publishers,
            subscribers,
            routing,
            size,
            count,
            duration,
        } => {
            if *publishers == 0 || *subscribers == 0 || *size < 12 {
                bail!("throughput needs at least 1 publisher, 1 subscriber and 12-byte payloads");
            }
            let w = throughput::Workload {
                publishers: *publishers,
                subscribers: *subscribers,
                routing: *routing,
                size: *size,
                count: if duration.is_some() { u64::MAX } else { *count },
                duration_s: *duration,
            };
            ("throughput", serde_json::to_value(&w)?)
        }
        Mode::Latency {
            rate,
            count,
            size,
            round_trip,
        } => {
            let w = latency::Workload {
                rate: *rate,
                count: *count,
                size: (*size).max(payload::HEADER),
                round_trip: *round_trip,
            };
            ("latency", serde_json::to_value(&w)?)
        }
        Mode::Connections {
            connections,
            count,
            size,
        } => {
            let w = connections::Workload {
                connections: *connections,
                count: *count,
                size: (*size).max(12),
            };
            ("connections", serde_json::to_value(&w)?)
        }
        Mode::Durable {
            count,
            size,
            window,
            fsync,
            consume,
        } => {
            let w = durable::Workload {
                count: *count,
                size: (*size).max(8),
                window: *window,
                fsync: fsync.clone(),
                consume: *consume,
            };
            durable::check(&w)?;
            ("durable", serde_json::to_value(&w)?)
        }
        Mode::Curves { .. } | Mode::Http { .. } | Mode::Stalls { .. } | Mode::Soak { .. } => {
            unreachable!("handled above")
        }
    };
    if matches!(
        args.mode,
        Mode::Throughput {
            routing: Routing::Queue,
            ..
        }
    ) {
        systems.retain(|s| {
            let ok = s.supports_queue();
            if !ok {
                unreachable.push(format!("{}: skipped: no queue groups in its pub/sub", s.kind));
            }
            ok
        });
    }
    if !args.json {
        eprintln!("{mode_name}: {workload_json}");
        for line in &unreachable {
            eprintln!("  {line}");
        }
    }
    let mut measured: Vec<Vec<Measured>> = systems.iter().map(|_| Vec::new()).collect();
    for round in 0..args.runs {
        for (index, system) in systems.iter().enumerate() {
            let progress = progress_bar(args.json);
            progress.set_prefix(format!("{} {} run {}", system.kind, system.transport, round + 1));
            let result = match &args.mode {
                Mode::Throughput { .. } => {
                    let w: throughput::Workload = serde_json_to(&workload_json)?;
                    throughput::run(system, &w, &progress).await
                }
                Mode::Latency { .. } => {
                    let w: latency::Workload = serde_json_to(&workload_json)?;
                    latency::run(system, &w, &progress).await
                }
                Mode::Connections { .. } => {
                    let w: connections::Workload = serde_json_to(&workload_json)?;
                    connections::run(system, &w, &progress).await
                }
                Mode::Durable { .. } => {
                    let w: durable::Workload = serde_json_to(&workload_json)?;
                    durable::run(system, &w, &progress).await
                }
                Mode::Curves { .. } | Mode::Http { .. } | Mode::Stalls { .. } | Mode::Soak { .. } => {
                    unreachable!("handled above")
                }
            };
            progress.finish_and_clear();
            let mut result = result.with_context(|| format!("{} over {}", system.kind, system.transport))?;
            if result.broker_rss_bytes.is_none() {
                result.broker_rss_bytes = system.pid.and_then(system::rss_bytes);
            }
            measured[index].push(result);
        }
    }
    let rows: Vec<ResultRow> = systems
        .iter()
        .zip(measured)
        .map(|(system, runs)| ResultRow {
            system: system.kind,
            transport: system.transport,
            runs: runs.iter().map(|r| r.delivered_msgs_per_s).collect(),
            median: median(runs),
        })
        .collect();
    let all_delivered = rows
        .iter()
        .all(|r| r.median.lost == 0 && r.median.out_of_order == 0);
    if args.json {
        let report = serde_json::json!({
            "mode": mode_name,
            "workload": workload_json,
            "runs": args.runs,
            "results": rows,
            "notes": unreachable,
        });
        println!("{report}");
    } else {
        print_table(mode_name, &rows);
    }
    if !all_delivered {
        for row in rows
            .iter()
            .filter(|r| r.median.lost > 0 || r.median.out_of_order > 0)
        {
            eprintln!(
                "LOSS: {} over {} lost {} and misordered {} deliveries",
                row.system, row.transport, row.median.lost, row.median.out_of_order
            );
        }
    }
    Ok(all_delivered)
}

async fn run_stalls(duration_s: f64, json: bool) -> anyhow::Result<bool> {
    if !(duration_s > 0.0 && duration_s <= stalls::DURATION_MAX_S) {
        bail!(
            "stalls needs a duration in seconds, above 0 and at most {}",
            stalls::DURATION_MAX_S
        );
    }
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    if !json {
        eprintln!("stalls: {threads} spinning threads for {duration_s} s");
    }
    let duration = Duration::from_secs_f64(duration_s);
    let results = tokio::task::spawn_blocking(move || stalls::run(threads, duration)).await??;
    if json {
        let workload = serde_json::json!({"duration_s": duration_s, "threads": threads});
        let report = serde_json::json!({"mode": "stalls", "workload": workload, "results": results});
        println!("{report}");
    } else {
        print!("{}", stalls::table(&results));
    }
    Ok(true)
}

/// Runs the HTTP workload against each `(transport label, base address)`, alternating, `runs`
/// times each; one row per target with the medians.
async fn run_http(
    targets: &[(&'static str, String)],
    token: &str,
    w: &http::Workload,
    runs: usize,
    json: bool,
) -> anyhow::Result<bool> {
    if !json {
        eprintln!("http: {}", serde_json::to_value(w)?);
    }
    let mut results: Vec<Vec<Measured>> = targets.iter().map(|_| Vec::new()).collect();
    for round in 0..runs {
        for ((label, base), results) in targets.iter().zip(&mut results) {
            let progress = progress_bar(json);
            progress.set_prefix(format!("mycelium {label} run {}", round + 1));
            let result = http::run(base, token, w, &progress).await;
            progress.finish_and_clear();
            results.push(result.with_context(|| format!("{label} ({base})"))?);
        }
    }
    let rows: Vec<ResultRow> = targets
        .iter()
        .zip(results)
        .map(|((label, _), results)| ResultRow {
            system: Kind::Mycelium,
            transport: label,
            runs: results.iter().map(|r| r.delivered_msgs_per_s).collect(),
            median: median(results),
        })
        .collect();
    if json {
        let report =
            serde_json::json!({"mode": "http", "workload": w, "runs": runs, "results": rows, "notes": []});
        println!("{report}");
    } else {
        let f = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
        println!();
        println!(
            "{:<9} {:<9} {:>12} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "system", "transport", "messages/s", "p50 us", "p90 us", "p99 us", "p99.9 us", "max us"
        );
        for row in &rows {
            let m = &row.median;
            println!(
                "{:<9} {:<9} {:>12} {:>9} {:>9} {:>9} {:>9} {:>9}",
                "mycelium",
                row.transport,
                human(m.publish_msgs_per_s),
                f(m.p50_us),
                f(m.p90_us),
                f(m.p99_us),
                f(m.p999_us),
                f(m.max_us)
            );
        }
        println!(
            "(latency: per request, from its scheduled send time with --rate; http-unix: the API's Unix socket)"
        );
    }
    Ok(true)
}

async fn run_curves(
    systems: &[System],
    out: &std::path::Path,
    scale: f64,
    json: bool,
) -> anyhow::Result<bool> {
    let progress = progress_bar(json);
    let (by_subscribers, by_size) = curves::run(systems, scale, &progress).await?;
    progress.finish_and_clear();
    let lost: u64 = by_subscribers
        .iter()
        .chain(&by_size)
        .map(|p| p.measured.lost + p.measured.out_of_order)
        .sum();
    std::fs::create_dir_all(out)?;
    curves::chart(
        &out.join("curve-subscribers.png"),
        "Fanout deliveries/s by subscriber count (128 B)",
        "subscribers",
        &by_subscribers,
    )?;
    curves::chart(
        &out.join("curve-size.png"),
        "Deliveries/s by payload size (1 -> 1)",
        "payload bytes",
        &by_size,
    )?;
    if json {
        let points = |points: &[curves::Point]| -> Vec<serde_json::Value> {
            points
                .iter()
                .map(|p| serde_json::json!({"x": p.x, "system": p.system, "result": p.measured}))
                .collect()
        };
        let report = serde_json::json!({"mode": "curves", "workload": {"scale": scale},
            "subscribers": points(&by_subscribers), "size": points(&by_size)});
        println!("{report}");
    } else {
        print!("{}", curves::markdown(&by_subscribers, &by_size));
        eprintln!("charts written to {}", out.display());
    }
    Ok(lost == 0)
}

/// The progress bar every mode shows (hidden with `--json`, whose stdout is one JSON object).
fn progress_bar(hidden: bool) -> ProgressBar {
    let progress = if hidden {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    progress.set_style(
        ProgressStyle::with_template("{prefix:>22} [{bar:30}] {pos}/{len} {per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    progress
}

fn serde_json_to<T: serde::de::DeserializeOwned>(value: &serde_json::Value) -> anyhow::Result<T> {
    Ok(serde_json::from_value(value.clone())?)
}

fn human(rate: f64) -> String {
    if rate >= 1e6 {
        format!("{:.2} M", rate / 1e6)
    } else if rate >= 1e3 {
        format!("{:.1} k", rate / 1e3)
    } else {
        format!("{rate:.0}")
    }
}

fn print_table(mode: &str, rows: &[ResultRow]) {
    let reference = |transport: &str| {
        rows.iter()
            .find(|r| r.system == Kind::Mycelium && r.transport == transport)
            .map(|r| &r.median)
    };
    let unix = reference("unix");
    let tcp = reference("tcp");
    println!();
    match mode {
        "latency" => {
            println!(
                "{:<9} {:<9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}  {:>16}",
                "system",
                "transport",
                "p50 us",
                "p90 us",
                "p99 us",
                "p99.9 us",
                "max us",
                "lost",
                "p99 myc/this"
            );
            for r in rows {
                let m = &r.median;
                let f = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
                let ratio = |mine: Option<&Measured>| match (mine.and_then(|x| x.p99_us), m.p99_us) {
                    (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
                    _ => "-".into(),
                };
                println!(
                    "{:<9} {:<9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}  {:>7} {:>8}",
                    r.system.to_string(),
                    r.transport,
                    f(m.p50_us),
                    f(m.p90_us),
                    f(m.p99_us),
                    f(m.p999_us),
                    f(m.max_us),
                    m.lost,
                    ratio(unix),
                    ratio(tcp)
                );
            }
            println!("(ratio columns: Mycelium over unix / over tcp divided by this row; lower is better)");
        }
        _ => {
            println!(
                "{:<9} {:<9} {:>12} {:>14} {:>9} {:>7} {:>5} {:>10}  {:>15}",
                "system",
                "transport",
                "publish/s",
                "delivered/s",
                "MB/s",
                "lost",
                "ooo",
                "rss MB",
                "myc/this u | t"
            );
            for r in rows {
                let m = &r.median;
                let ratio = |mine: Option<&Measured>| {
                    mine.map_or("-".to_owned(), |x| {
                        format!("{:.2}", x.delivered_msgs_per_s / m.delivered_msgs_per_s.max(1e-9))
                    })
                };
                let rss = m
                    .broker_rss_bytes
                    .map_or("-".to_owned(), |b| format!("{:.1}", b as f64 / 1e6));
                println!(
                    "{:<9} {:<9} {:>12} {:>14} {:>9.1} {:>7} {:>5} {:>10}  {:>7} {:>7}",
                    r.system.to_string(),
                    r.transport,
                    human(m.publish_msgs_per_s),
                    human(m.delivered_msgs_per_s),
                    m.delivered_mb_per_s,
                    m.lost,
                    m.out_of_order,
                    rss,
                    ratio(unix),
                    ratio(tcp)
                );
            }
            if let Some(idle) = rows
                .iter()
                .find_map(|r| r.median.broker_idle_rss_bytes.map(|b| (r, b)))
            {
                println!(
                    "(idle broker RSS before connecting: {} {}: {:.1} MB)",
                    idle.0.system,
                    idle.0.transport,
                    idle.1 as f64 / 1e6
                );
            }
            println!("(ratio columns: Mycelium over unix / over tcp divided by this row; higher is better)");
        }
    }
}

/// Nanoseconds since the Unix epoch (unique names per run).
pub(crate) fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(rate: f64, p99: f64, lost: u64) -> Measured {
        Measured {
            delivered_msgs_per_s: rate,
            p50_us: Some(p99 / 4.0),
            p99_us: Some(p99),
            max_us: Some(p99 * 10.0),
            lost,
            ..Measured::default()
        }
    }

    #[test]
    fn median_takes_each_latency_figure_over_all_runs_and_keeps_any_loss() {
        // Fixed-rate runs: equal rates, so the run order must not pick the latencies.
        let m = median(vec![
            run(10_000.0, 900.0, 0),
            run(10_000.0, 100.0, 2),
            run(10_000.0, 300.0, 0),
        ]);
        assert_eq!(m.p99_us, Some(300.0));
        assert_eq!(m.p50_us, Some(75.0));
        assert_eq!(m.max_us, Some(3000.0));
        assert_eq!(m.p90_us, None, "not measured stays not measured");
        assert_eq!(m.lost, 2, "a loss in any run shows");
        // Throughput runs: the run with the median rate.
        let m = median(vec![run(3.0, 1.0, 0), run(1.0, 1.0, 0), run(2.0, 1.0, 0)]);
        assert_eq!(m.delivered_msgs_per_s, 2.0);
    }
}
