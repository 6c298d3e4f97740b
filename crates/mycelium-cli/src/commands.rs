//! The subcommands.

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;

use anyhow::{Context, bail};
use mycelium_client::admin::{self, AdminRequest};
use mycelium_client::{Client, ClientOptions, DurableOptions, Message, PublishOptions, StartPosition};
use mycelium_server::Config;

use crate::{
    Cli, Command, ConfigCommand, DlqCommand, DlqFilterArgs, Format, LogFormat, PubArgs, ServeArgs, SubArgs,
    TokenCommand, tlv,
};

/// The embedded broker's socket.
const DEFAULT_URL: &str = "unix:///tmp/mycelium.sock";

pub(crate) fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Bench(mut args) => {
            if args.target.is_none() {
                args.target = cli.url.clone();
            }
            if args.token.is_none() {
                args.token = cli.token.clone();
            }
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            // The workload runs in `block_on` on the main thread, as a `#[tokio::main]` body does.
            // (Spawned on a worker instead, every system gained at 256 confirms in flight with
            // the same ratios, but Mycelium lost a third at 2,048: see
            // docs/performance-history.md, 2026-12-01, later.)
            let all_delivered = runtime.block_on(mycelium_bench::run(args))?;
            Ok(if all_delivered {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Config {
            command: ConfigCommand::Check { file },
        } => {
            let config = Config::load(Some(&file), std::env::vars())?;
            println!(
                "{}: ok ({} topics configured)",
                file.display(),
                config.topics.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Token {
            command:
                TokenCommand::Issue {
                    roles,
                    ttl,
                    publish,
                    subscribe,
                    subject,
                    config,
                },
        } => {
            let config = Config::load(config.as_deref(), std::env::vars())?;
            if config.auth.mode == "none" {
                bail!("auth.mode is \"none\": the broker checks no tokens");
            }
            let jwt = config.jwt_config()?;
            let roles = parse_roles(&roles)?;
            let ttl = humantime::parse_duration(&ttl).with_context(|| format!("--ttl `{ttl}`"))?;
            let request = mycelium_auth::TokenRequest {
                subject,
                roles,
                ttl,
                publish: (!publish.is_empty()).then_some(publish),
                consume: (!subscribe.is_empty()).then_some(subscribe),
            };
            println!("{}", mycelium_auth::issue(&jwt, &request)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Token {
            command:
                TokenCommand::User {
                    name,
                    roles,
                    publish,
                    subscribe,
                },
        } => {
            parse_roles(&roles)?;
            for pattern in publish.iter().chain(&subscribe) {
                mycelium_broker::name::Pattern::parse(pattern)
                    .with_context(|| format!("pattern `{pattern}`"))?;
            }
            let token = mycelium_auth::new_token().map_err(|e| anyhow::anyhow!(e))?;
            let list = |items: &[String]| {
                items
                    .iter()
                    .map(|i| format!("{i:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let mut entry = format!(
                "[[auth.users]]\nname = {name:?}\ntoken_sha256 = \"{}\"\nroles = [{}]\n",
                mycelium_auth::token_hash_hex(&token),
                list(&roles)
            );
            if !publish.is_empty() {
                entry.push_str(&format!("publish = [{}]\n", list(&publish)));
            }
            if !subscribe.is_empty() {
                entry.push_str(&format!("subscribe = [{}]\n", list(&subscribe)));
            }
            eprintln!("# The token (give it to the service; it is not stored anywhere):");
            println!("{token}");
            eprintln!("# Add to the broker's configuration:");
            eprint!("{entry}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            command: ConfigCommand::Show { file },
        } => {
            let config = Config::load(file.as_deref(), std::env::vars())?;
            print!("{config}");
            Ok(ExitCode::SUCCESS)
        }
        command => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let url = cli.url.as_deref().unwrap_or(DEFAULT_URL);
            let token = match (cli.token, cli.token_file) {
                (Some(token), _) => Some(token),
                (None, Some(file)) => Some(
                    std::fs::read_to_string(&file)
                        .with_context(|| format!("--token-file {}", file.display()))?,
                ),
                (None, None) => None,
            };
            let access = Access {
                token: token.map(mycelium_client::Token::new),
                tls_ca_file: cli.tls_ca,
                tls_client_cert: cli.tls_cert.zip(cli.tls_key),
            };
            runtime.block_on(client_command(url, access, command))
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    let no_watch = args.no_watch;
    let (socket, tcp, http) = (args.socket, args.tcp, args.http);
    // The flags win over the file and the environment, at start-up and at every reload.
    let overrides = move |config: &mut Config| {
        if let Some(socket) = &socket {
            config.server.socket_path.clone_from(socket);
        }
        if let Some(tcp) = &tcp {
            config.server.tcp.clone_from(tcp);
        }
        if let Some(http) = &http {
            config.http.enabled = !http.is_empty();
            if !http.is_empty() {
                config.http.listen.clone_from(http);
            }
        }
    };
    let mut config = Config::load(args.config.as_deref(), env.clone())?;
    overrides(&mut config);
    config
        .validate()
        .map_err(|problems| mycelium_server::ConfigError::Invalid {
            file: "command line".into(),
            problems,
        })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.performance.worker_threads)
        .thread_name("mycelium")
        .enable_all()
        .build()?;
    // The OTLP exporter needs the runtime; it flushes when dropped, after the server stops.
    let trace_config = config.trace_config();
    let exporter = runtime.block_on(async { mycelium_trace::install(&trace_config) })?;
    let log_filter = install_tracing(
        args.log_format,
        &config.log.level,
        exporter.as_ref().map(mycelium_trace::Exporter::tracer),
    )?;
    if exporter.is_some() {
        tracing::info!(endpoint = %trace_config.otlp_endpoint, protocol = %trace_config.protocol, "exporting traces over OTLP");
    }
    let source = mycelium_server::ConfigSource {
        file: args.config.clone(),
        env,
        overrides: Some(std::sync::Arc::new(overrides)),
    };
    runtime.block_on(async move {
        let server = mycelium_server::Server::bind(config).await?;
        server.reloader().set_log_filter(log_filter);
        // SIGHUP reloads; so does a change of the file (its directory is watched).
        let watch_file = source.file.is_some() && !no_watch;
        server.watch(source, true, watch_file)?;
        let shutdown = server.shutdown_token();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("signal received: stopping");
            shutdown.cancel();
        });
        server.run().await;
        Ok::<_, anyhow::Error>(())
    })?;
    drop(exporter);
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Logs (human-readable or JSON, filtered by `MYCELIUM_LOG` when set, else by `[log] level`)
/// and, when an exporter is set up, the broker's spans to OpenTelemetry. Returns the handle a
/// reload changes the filter through.
fn install_tracing(
    format: LogFormat,
    level: &str,
    tracer: Option<opentelemetry_sdk::trace::Tracer>,
) -> anyhow::Result<std::sync::Arc<dyn mycelium_server::LogFilter>> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = match tracing_subscriber::EnvFilter::try_from_env("MYCELIUM_LOG") {
        Ok(filter) => filter,
        Err(_) => tracing_subscriber::EnvFilter::try_new(level)
            .map_err(|e| anyhow::anyhow!("log.level `{level}`: {e}"))?,
    };
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    // Colours only on a terminal: a log piped to a file or a collector gets plain text.
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let logs = match format {
        LogFormat::Text => logs.boxed(),
        LogFormat::Json => logs.json().with_current_span(true).with_span_list(false).boxed(),
    };
    let spans = tracer.map(|tracer| {
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
    });
    tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(spans)
        .init();
    Ok(std::sync::Arc::new(LogReload(handle)))
}

/// The log filter a reload changes (`[log] level`).
struct LogReload<S>(tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, S>);

impl<S: 'static> mycelium_server::LogFilter for LogReload<S> {
    fn check(&self, filter: &str) -> Result<(), String> {
        tracing_subscriber::EnvFilter::try_new(filter)
            .map(drop)
            .map_err(|e| format!("`{filter}` is not a log filter: {e}"))
    }

    fn apply(&self, filter: &str) -> Result<(), String> {
        let filter = tracing_subscriber::EnvFilter::try_new(filter).map_err(|e| e.to_string())?;
        self.0.reload(filter).map_err(|e| e.to_string())
    }
}

fn parse_roles(roles: &[String]) -> anyhow::Result<Vec<mycelium_broker::Role>> {
    roles
        .iter()
        .map(|r| r.parse::<mycelium_broker::Role>().map_err(|e| anyhow::anyhow!(e)))
        .collect()
}

/// The credential and TLS files to reach the broker with.
struct Access {
    token: Option<mycelium_client::Token>,
    tls_ca_file: Option<std::path::PathBuf>,
    tls_client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// Where the broker is and how to get in.
struct Target<'a> {
    url: &'a str,
    access: Access,
}

async fn connect(target: &Target<'_>) -> anyhow::Result<Client> {
    let options = ClientOptions {
        name: "mycelium-cli".into(),
        token: target.access.token.clone(),
        tls_ca_file: target.access.tls_ca_file.clone(),
        tls_client_cert: target.access.tls_client_cert.clone(),
        ..ClientOptions::default()
    };
    Ok(Client::connect_with(target.url, options).await?)
}

async fn client_command(url: &str, access: Access, command: Command) -> anyhow::Result<ExitCode> {
    let url = &Target { url, access };
    match command {
        Command::Pub(args) => publish(url, args).await,
        Command::Sub(args) => subscribe(url, args).await,
        Command::Stats { json } => stats(url, json).await,
        Command::Topics { json } => topics(url, json).await,
        Command::Health { json } => health(url, json).await,
        Command::Dlq { command } => dlq(url, command).await,
        Command::Reload { force, json } => reload(url, force, json).await,
        Command::Config {
            command: ConfigCommand::Running { json },
        } => running_config(url, json).await,
        Command::Serve(_) | Command::Config { .. } | Command::Bench(_) | Command::Token { .. } => {
            unreachable!("handled without a client")
        }
    }
}

async fn publish(url: &Target<'_>, args: PubArgs) -> anyhow::Result<ExitCode> {
    let fixed_payload: Option<Vec<u8>> = match (&args.message, &args.file, &args.tlv) {
        (Some(text), _, _) => Some(text.clone().into_bytes()),
        (None, Some(path), _) => {
            Some(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)
        }
        (None, None, Some(_)) => None,
        (None, None, None) => {
            if std::io::stdin().is_terminal() {
                bail!("no message: give MESSAGE, --file, --tlv, or pipe it on standard input");
            }
            let mut data = Vec::new();
            std::io::stdin().read_to_end(&mut data)?;
            Some(data)
        }
    };
    let headers: Vec<(String, String)> = args
        .headers
        .iter()
        .map(|h| h.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect::<Option<_>>()
        .context("headers are key=value")?;
    let duration = |flag: &str, text: &Option<String>| -> anyhow::Result<Option<std::time::Duration>> {
        text.as_ref()
            .map(|t| {
                humantime::parse_duration(t)
                    .with_context(|| format!("{flag} `{t}`: expected a duration like 30s"))
            })
            .transpose()
    };
    let options = PublishOptions {
        headers: headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
            .collect(),
        priority: args.priority,
        ttl: duration("--ttl", &args.ttl)?,
        delay: duration("--delay", &args.delay)?,
        not_before: None,
        idempotency_key: args.key.clone().map(String::into_bytes),
    };
    let has_props = options.priority.is_some()
        || options.ttl.is_some()
        || options.delay.is_some()
        || options.idempotency_key.is_some();
    let client = connect(url).await?;
    let mut refused = 0u64;
    let stdout = std::io::stdout();
    // Confirmed publishes are pipelined (a window of them in flight), their lines printed in
    // the order they were sent.
    let mut in_flight = std::collections::VecDeque::new();
    let mut report =
        |result: Result<mycelium_client::Confirmed, mycelium_client::Error>| -> anyhow::Result<()> {
            match result {
                Ok(_) if !args.confirm => {}
                Ok(c) if c.id == [0; 16] => writeln!(stdout.lock(), "{}", c.sequence)?,
                Ok(c) => writeln!(
                    stdout.lock(),
                    "{} {}{}",
                    c.sequence,
                    uuid_text(&c.id),
                    if c.duplicate { " duplicate" } else { "" }
                )?,
                Err(error) => {
                    eprintln!("refused: {error}");
                    refused += 1;
                }
            }
            Ok(())
        };
    for i in 0..args.count {
        let payload = match (&fixed_payload, &args.tlv) {
            (Some(p), _) => p.clone(),
            (None, Some(spec)) => tlv::build(spec, i + 1)?,
            (None, None) => unreachable!("one source is always set"),
        };
        if args.confirm || has_props {
            if in_flight.len() >= args.in_flight as usize
                && let Some(pending) = in_flight.pop_front()
            {
                report(pending.await)?;
            }
            match client
                .publish_pipelined_with(&args.topic, &payload, &options)
                .await
            {
                Ok(pending) => in_flight.push_back(pending),
                Err(error) => report(Err(error))?,
            }
        } else if headers.is_empty() {
            client.publish(&args.topic, &payload).await?;
        } else {
            let pairs: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes())).collect();
            client.publish_with_headers(&args.topic, &pairs, &payload).await?;
        }
    }
    while let Some(pending) = in_flight.pop_front() {
        report(pending.await)?;
    }
    // The flush makes sure the broker processed every publish; errors it reported arrive first.
    let mut errors = client.errors();
    client.flush().await?;
    while let Ok(error) = errors.try_recv() {
        eprintln!("refused: {error}");
        refused += 1;
    }
    client.close().await;
    if refused > 0 {
        eprintln!("{refused} of {} messages refused", args.count);
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

async fn subscribe(url: &Target<'_>, args: SubArgs) -> anyhow::Result<ExitCode> {
    let client = connect(url).await?;
    let mut subscription = match (&args.durable, &args.group) {
        (Some(name), _) => {
            let start = match (&args.from_seq, &args.from_time) {
                (Some(seq), _) => StartPosition::Sequence(*seq),
                (None, Some(time)) => {
                    let at = humantime::parse_rfc3339_weak(time).with_context(|| {
                        format!("--from-time `{time}`: expected RFC 3339 like 2026-11-23T10:00:00Z")
                    })?;
                    let ns = at
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos() as u64);
                    StartPosition::Time(ns)
                }
                (None, None) if args.from_beginning => StartPosition::Beginning,
                (None, None) => StartPosition::New,
            };
            let ack_wait = match &args.ack_wait {
                Some(text) => {
                    Some(humantime::parse_duration(text).with_context(|| format!("--ack-wait `{text}`"))?)
                }
                None => None,
            };
            // Take no more than will be printed: what a consumer holds is not someone else's.
            let max_in_flight = args.count.map(|n| u32::try_from(n).unwrap_or(u32::MAX).max(1));
            let options = DurableOptions {
                start,
                ack_wait,
                max_deliveries: args.max_deliveries,
                max_in_flight,
                filter: args.filter.clone(),
                ..DurableOptions::default()
            };
            client.subscribe_durable(&args.pattern, name, options).await?
        }
        (None, group) if args.filter.is_some() => {
            let filter = args.filter.as_deref().unwrap_or_default();
            client
                .subscribe_filtered(&args.pattern, group.as_deref(), filter)
                .await?
        }
        (None, Some(group)) => client.queue_subscribe(&args.pattern, group).await?,
        (None, None) => client.subscribe(&args.pattern).await?,
    };
    let mut seen = 0u64;
    let limit = args.count.unwrap_or(u64::MAX);
    let mut stdout = std::io::stdout().lock();
    while seen < limit {
        let message = tokio::select! {
            m = subscription.next() => m,
            _ = tokio::signal::ctrl_c() => None,
        };
        let Some(message) = message else { break };
        writeln!(stdout, "{}", render(&message, args.format))?;
        stdout.flush()?;
        if args.durable.is_some() {
            if args.nack {
                client
                    .nack(&message, None, "refused by mycelium sub --nack")
                    .await?;
            } else if !args.no_ack {
                // Confirmed: once the next message prints, this one can never come back.
                client.ack_confirmed(&message).await?;
            }
        }
        seen += 1;
    }
    drop(stdout);
    client.close().await;
    Ok(ExitCode::SUCCESS)
}

fn uuid_text(id: &[u8; 16]) -> String {
    uuid::Uuid::from_bytes(*id).to_string()
}

fn render(message: &Message, format: Format) -> String {
    match format {
        Format::Text => {
            let attempt = match message.attempt() {
                Some(n) if n > 1 => format!(" attempt {n}"),
                _ => String::new(),
            };
            format!(
                "[{} #{}{attempt}] {}",
                message.topic(),
                message.sequence,
                String::from_utf8_lossy(&message.payload)
            )
        }
        Format::Hex => format!(
            "[{} #{}] {}",
            message.topic(),
            message.sequence,
            tlv::hex(&message.payload)
        ),
        Format::Tlv => format!(
            "[{} #{}] {}",
            message.topic(),
            message.sequence,
            tlv::describe(&message.payload)
        ),
        Format::Json => {
            let headers: serde_json::Map<String, serde_json::Value> = message
                .headers()
                .map(|(k, v)| (k.to_owned(), String::from_utf8_lossy(v).into_owned().into()))
                .collect();
            serde_json::json!({
                "topic": message.topic(),
                "sequence": message.sequence,
                "headers": headers,
                "payload": std::str::from_utf8(&message.payload).ok(),
                "payload_hex": tlv::hex(&message.payload),
            })
            .to_string()
        }
    }
}

async fn stats(url: &Target<'_>, json: bool) -> anyhow::Result<ExitCode> {
    let client = connect(url).await?;
    let stats = client.stats().await?;
    client.close().await;
    if json {
        let topics: Vec<_> = stats
            .topics
            .iter()
            .map(|t| {
                let mut topic = serde_json::json!({"name": t.name, "routing": t.routing,
                    "subscribers": t.subscribers, "stored": t.stored});
                for (counter, value) in t.counters() {
                    topic[counter.name] = value.into();
                }
                topic
            })
            .collect();
        let subscriptions: Vec<_> = stats
            .subscriptions
            .iter()
            .map(|s| {
                serde_json::json!({"connection": s.connection_id, "id": s.subscription_id, "pattern": s.pattern,
                "group": s.group, "delivered": s.delivered, "dropped": s.dropped, "blocked": s.blocked})
            })
            .collect();
        let connections: Vec<_> = stats
            .connections
            .iter()
            .map(|c| {
                serde_json::json!({"id": c.id, "name": c.name, "peer": c.peer, "published": c.published,
                "delivered": c.delivered, "subscriptions": c.subscriptions, "pending_bytes": c.pending_bytes})
            })
            .collect();
        let all = serde_json::json!({"uptime_ms": stats.uptime_ms, "topics": topics,
            "subscriptions": subscriptions, "connections": connections});
        println!("{all}");
        return Ok(ExitCode::SUCCESS);
    }
    println!("uptime {:.1}s", stats.uptime_ms as f64 / 1000.0);
    println!(
        "\n{:<28} {:<7} {:>11} {:>11} {:>8} {:>8} {:>7} {:>5} {:>5}",
        "TOPIC", "ROUTING", "PUBLISHED", "DELIVERED", "DROPPED", "REJECTED", "BLOCKED", "SLOW", "SUBS"
    );
    for t in &stats.topics {
        println!(
            "{:<28} {:<7} {:>11} {:>11} {:>8} {:>8} {:>7} {:>5} {:>5}",
            t.name,
            t.routing,
            t.published,
            t.delivered,
            t.dropped,
            t.rejected,
            t.blocked,
            t.slow_disconnects,
            t.subscribers
        );
    }
    let stored: Vec<_> = stats
        .topics
        .iter()
        .filter(|t| t.stored + t.acked + t.dead_lettered + t.expired + t.duplicates > 0)
        .collect();
    if !stored.is_empty() {
        println!(
            "\n{:<28} {:>11} {:>11} {:>11} {:>8} {:>8} {:>10}",
            "STORED TOPIC", "STORED", "ACKED", "REDELIVERED", "DEAD", "EXPIRED", "DUPLICATES"
        );
        for t in stored {
            println!(
                "{:<28} {:>11} {:>11} {:>11} {:>8} {:>8} {:>10}",
                t.name, t.stored, t.acked, t.redelivered, t.dead_lettered, t.expired, t.duplicates
            );
        }
    }
    println!(
        "\n{:<6} {:<4} {:<28} {:<12} {:>11} {:>8} {:>7}",
        "CONN", "SUB", "PATTERN", "GROUP", "DELIVERED", "DROPPED", "BLOCKED"
    );
    for s in &stats.subscriptions {
        println!(
            "{:<6} {:<4} {:<28} {:<12} {:>11} {:>8} {:>7}",
            s.connection_id, s.subscription_id, s.pattern, s.group, s.delivered, s.dropped, s.blocked
        );
    }
    println!(
        "\n{:<6} {:<20} {:<24} {:>11} {:>11} {:>5} {:>10}",
        "CONN", "NAME", "PEER", "PUBLISHED", "DELIVERED", "SUBS", "PENDING"
    );
    for c in &stats.connections {
        println!(
            "{:<6} {:<20} {:<24} {:>11} {:>11} {:>5} {:>10}",
            c.id, c.name, c.peer, c.published, c.delivered, c.subscriptions, c.pending_bytes
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn topics(url: &Target<'_>, json: bool) -> anyhow::Result<ExitCode> {
    let client = connect(url).await?;
    let stats = client.stats().await?;
    client.close().await;
    if json {
        let list: Vec<_> = stats
            .topics
            .iter()
            .map(|t| serde_json::json!({"name": t.name, "routing": t.routing, "subscribers": t.subscribers, "published": t.published}))
            .collect();
        println!("{}", serde_json::Value::from(list));
    } else {
        println!(
            "{:<32} {:<7} {:>5} {:>11}",
            "TOPIC", "ROUTING", "SUBS", "PUBLISHED"
        );
        for t in &stats.topics {
            println!(
                "{:<32} {:<7} {:>5} {:>11}",
                t.name, t.routing, t.subscribers, t.published
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn dlq_filter(args: &DlqFilterArgs) -> admin::DlqFilter {
    admin::DlqFilter {
        sequences: args.sequences.clone(),
        reason: args.reason.clone(),
        subscription: args.subscription.clone(),
        ..admin::DlqFilter::default()
    }
}

fn has_filter(args: &DlqFilterArgs) -> bool {
    !args.sequences.is_empty() || args.reason.is_some() || args.subscription.is_some()
}

fn ns_text(ns: u64) -> String {
    if ns == 0 {
        return "-".into();
    }
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns)).to_string()
}

async fn dlq(url: &Target<'_>, command: DlqCommand) -> anyhow::Result<ExitCode> {
    let client = connect(url).await?;
    let result = dlq_inner(&client, command).await;
    client.close().await;
    result
}

async fn dlq_inner(client: &Client, command: DlqCommand) -> anyhow::Result<ExitCode> {
    match command {
        DlqCommand::List {
            topic,
            filter,
            after,
            limit,
            json,
        } => {
            let request = AdminRequest::DlqList {
                topic,
                filter: dlq_filter(&filter),
                after,
                limit,
            };
            let page: admin::DlqPage = client.admin_typed(&request).await?;
            if json {
                println!("{}", serde_json::to_string(&page)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!("{} dead letters in {}", page.depth, page.dlq);
            println!(
                "{:>6}  {:<24}  {:<16}  {:<14}  {:>8}  {:>8}  ERROR",
                "SEQ", "DEAD-LETTERED", "SUBSCRIPTION", "REASON", "ORIG", "ATTEMPTS"
            );
            for e in &page.entries {
                println!(
                    "{:>6}  {:<24}  {:<16}  {:<14}  {:>8}  {:>8}  {}",
                    e.sequence,
                    ns_text(e.dead_lettered_ns),
                    e.subscription,
                    e.reason,
                    e.original_sequence,
                    e.attempts,
                    e.error.as_deref().unwrap_or("")
                );
            }
            if let Some(next) = page.next_after {
                println!("more: --after {next}");
            }
        }
        DlqCommand::Show {
            topic,
            sequence,
            json,
        } => {
            let entry: admin::DeadLetter = client
                .admin_typed(&AdminRequest::DlqGet { topic, sequence })
                .await?;
            if json {
                println!("{}", serde_json::to_string(&entry)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!("dead letter {sequence} ({})", entry.id);
            println!(
                "  topic         {} #{} ({})",
                entry.topic, entry.original_sequence, entry.original_id
            );
            println!("  subscription  {}", entry.subscription);
            println!(
                "  reason        {} after {} attempts",
                entry.reason, entry.attempts
            );
            if let Some(error) = &entry.error {
                println!("  last error    {error}");
            }
            println!("  published     {}", ns_text(entry.published_ns));
            println!("  dead-lettered {}", ns_text(entry.dead_lettered_ns));
            for attempt in &entry.history {
                println!(
                    "  attempt failed {} {}{}",
                    ns_text(attempt.at_ns),
                    attempt.reason,
                    attempt
                        .error
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                );
            }
            for (key, value) in &entry.headers {
                println!("  header        {key}: {value}");
            }
            println!("  payload       {}", entry.payload);
        }
        DlqCommand::Replay {
            topic,
            filter,
            all,
            to,
            rate,
        } => {
            if !all && !has_filter(&filter) {
                bail!("say which dead letters: --seq N, --reason, --subscription, or --all");
            }
            let request = AdminRequest::DlqReplay {
                topic,
                filter: dlq_filter(&filter),
                target: to,
                rate,
            };
            let report: admin::ReplayReport = client.admin_typed(&request).await?;
            println!(
                "replayed {}, already replayed {}, failed {}",
                report.replayed,
                report.duplicates,
                report.failed.len()
            );
            for (sequence, reason) in &report.failed {
                eprintln!("  {sequence}: {reason}");
            }
            if !report.failed.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
        DlqCommand::Purge { topic, filter, all } => {
            if !all && !has_filter(&filter) {
                bail!("say which dead letters: --seq N, --reason, --subscription, or --all");
            }
            let request = AdminRequest::DlqPurge {
                topic,
                filter: dlq_filter(&filter),
            };
            let answer: admin::PurgeReport = client.admin_typed(&request).await?;
            println!("purged {}", answer.purged);
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn reload(url: &Target<'_>, force: bool, json: bool) -> anyhow::Result<ExitCode> {
    let client = connect(url).await?;
    let report: Result<admin::ReloadReport, _> = client.admin_typed(&AdminRequest::Reload { force }).await;
    client.close().await;
    let report = report.context("reload refused")?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "reloaded {} (configuration version {})",
            report.file, report.version
        );
        for (label, lines) in [
            ("applied", &report.applied),
            ("restart needed", &report.restart_needed),
            ("refused", &report.refused),
        ] {
            for line in lines {
                println!("{label:<15} {line}");
            }
        }
        if report.applied.is_empty() && report.restart_needed.is_empty() && report.refused.is_empty() {
            println!("nothing changed");
        }
    }
    Ok(if report.refused.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn running_config(url: &Target<'_>, json: bool) -> anyhow::Result<ExitCode> {
    let client = connect(url).await?;
    let view: Result<admin::ConfigView, _> = client.admin_typed(&AdminRequest::Config).await;
    client.close().await;
    let view = view?;
    if json {
        println!("{}", serde_json::to_string(&view)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "# version {} from {}, applied {}",
        view.version,
        view.file.as_deref().unwrap_or("the embedded defaults"),
        ns_text(view.applied_ns)
    );
    for line in &view.restart_needed {
        println!("# waits for a restart: {line}");
    }
    let config: Config = serde_json::from_value(view.config)?;
    print!("{config}");
    Ok(ExitCode::SUCCESS)
}

async fn health(url: &Target<'_>, json: bool) -> anyhow::Result<ExitCode> {
    let client = connect(url).await?;
    let node: anyhow::Result<serde_json::Value> = client
        .admin_typed(&AdminRequest::Health)
        .await
        .map_err(Into::into);
    client.close().await;
    let node = node?;
    if json {
        println!("{node}");
        return Ok(ExitCode::SUCCESS);
    }
    let text = |k: &str| node[k].as_str().unwrap_or("").to_owned();
    println!(
        "node      {} ({}) version {}",
        text("name"),
        text("node_id"),
        text("version")
    );
    println!("uptime    {:.0} s", node["uptime_s"].as_f64().unwrap_or(0.0));
    println!(
        "heartbeat {}",
        ns_text(node["heartbeat_ns"].as_u64().unwrap_or(0))
    );
    for listener in node["listeners"].as_array().into_iter().flatten() {
        println!("listens   {}", listener.as_str().unwrap_or(""));
    }
    let h = &node["health"];
    println!("consumers {}", h["active_consumers"]);
    println!(
        "memory    {} bytes, CPU {:.2} cores",
        h["memory_bytes"],
        h["cpu_cores"].as_f64().unwrap_or(0.0)
    );
    if let Some(free) = h["free_disk_bytes"].as_u64() {
        println!(
            "disk      {free} bytes free, probe write {:.2} ms",
            h["write_latency_ms"].as_f64().unwrap_or(0.0)
        );
    }
    println!(
        "loop lag  {:.2} ms",
        h["event_loop_lag_ms"].as_f64().unwrap_or(0.0)
    );
    let mut failing = false;
    for check in h["checks"].as_array().into_iter().flatten() {
        let ok = check["ok"].as_bool().unwrap_or(false);
        failing |= !ok;
        println!(
            "{} {:<15} {}",
            if ok { "ok  " } else { "FAIL" },
            check["check"].as_str().unwrap_or(""),
            check["detail"].as_str().unwrap_or("")
        );
    }
    Ok(if failing {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
