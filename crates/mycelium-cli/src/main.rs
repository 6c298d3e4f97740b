//! `mycelium`: the broker and its command-line tools in one binary.

mod commands;
mod tlv;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// mimalloc: faster small allocations than glibc's, and it hands freed memory back to the OS, so a
/// broker that once held many connections does not keep their buffers resident.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Mycelium: a fast message broker with native (Unix socket, TCP) and HTTP doors.
#[derive(Debug, Parser)]
#[command(name = "mycelium", version, about, propagate_version = true)]
struct Cli {
    /// Broker address: unix:///path/to.sock, tcp://host:port or tls://host:port [default: unix:///tmp/mycelium.sock].
    /// For `bench`: measure this running broker instead of spawning one.
    #[arg(long, global = true, env = "MYCELIUM_URL")]
    url: Option<String>,
    /// Credential sent to the broker: a service user's token or a JWT (not needed on the Unix
    /// socket by the broker's own user).
    #[arg(
        long,
        global = true,
        env = "MYCELIUM_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    token: Option<String>,
    /// Read the credential from this file (keep it mode 0600).
    #[arg(long, global = true, env = "MYCELIUM_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// `tls://` URLs: the PEM CA certificates that sign the broker's certificate.
    #[arg(long, global = true, env = "MYCELIUM_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// `tls://` URLs with mutual TLS: this client's PEM certificate (with --tls-key).
    #[arg(long, global = true, env = "MYCELIUM_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// `tls://` URLs with mutual TLS: this client's PEM private key (with --tls-cert).
    #[arg(long, global = true, env = "MYCELIUM_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker (no config file needed: embedded defaults).
    Serve(ServeArgs),
    /// Publish messages.
    Pub(PubArgs),
    /// Subscribe and print messages.
    Sub(SubArgs),
    /// Show the broker's counters: topics, subscriptions, connections.
    Stats {
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Show the node record and the health monitor's last report.
    Health {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List topics.
    Topics {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Browse, replay and purge a topic's dead-letter queue (`{topic}.dlq`).
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Measure throughput, latency and connection scaling, side by side with NATS and Redis.
    Bench(mycelium_bench::BenchArgs),
    /// Credentials: JWTs and service users' tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Make the running broker read its configuration file again and apply what may change
    /// live (as SIGHUP does); prints what changed, what waits for a restart and what was refused.
    Reload {
        /// Remove topics the file no longer names even when they hold messages or subscriptions.
        #[arg(long)]
        force: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// TOML configuration file (default: none, embedded defaults).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Unix socket path (overrides the file and the environment; "" disables).
    #[arg(long)]
    socket: Option<String>,
    /// TCP listen address (overrides the file and the environment; "" disables).
    #[arg(long)]
    tcp: Option<String>,
    /// HTTP API listen address (overrides the file and the environment; "" disables the HTTP
    /// API).
    #[arg(long)]
    http: Option<String>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Do not reload when the configuration file changes; SIGHUP, `mycelium reload` and
    /// `POST /api/v1/admin/reload` still do.
    #[arg(long)]
    no_watch: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
struct PubArgs {
    /// Topic ("" to route a TLV message by its relay domain).
    topic: String,
    /// Message text (default: --file, --tlv, or standard input).
    message: Option<String>,
    /// Read the message from a file.
    #[arg(long, conflicts_with_all = ["message", "tlv"])]
    file: Option<PathBuf>,
    /// Build a TLV message: KIND[:key=value,...], KIND one of trade, quote, arbitrage, order, fill.
    #[arg(long, conflicts_with = "message")]
    tlv: Option<String>,
    /// Publish the message this many times.
    #[arg(long, default_value_t = 1)]
    count: u64,
    /// Header key=value (repeatable).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// Wait for the broker to confirm each message; print `<sequence> <id>` per message
    /// (` duplicate` when the idempotency key was known); exit non-zero if any was refused.
    #[arg(long)]
    confirm: bool,
    /// With --confirm and --count: publishes sent before the oldest confirmation is awaited
    /// (lines still print in the order sent).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    in_flight: u32,
    /// Priority 0-9 (topics with priority = true).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=9))]
    priority: Option<u8>,
    /// Time to live, e.g. 30s or 5m.
    #[arg(long)]
    ttl: Option<String>,
    /// Hold back the first delivery this long, e.g. 10s.
    #[arg(long)]
    delay: Option<String>,
    /// Idempotency key: publishes with the same key within the topic's dedup window are stored
    /// once.
    #[arg(long)]
    key: Option<String>,
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// List dead letters (oldest first).
    List {
        /// The topic (or its DLQ, `orders.dlq`).
        topic: String,
        #[command(flatten)]
        filter: DlqFilterArgs,
        /// Start after this DLQ sequence (paging).
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter: its story, headers and payload.
    Show {
        /// The topic.
        topic: String,
        /// The DLQ sequence (from `list`).
        sequence: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Publish dead letters again and remove them from the DLQ.
    Replay {
        /// The topic.
        topic: String,
        #[command(flatten)]
        filter: DlqFilterArgs,
        /// Every dead letter (required when no filter is given).
        #[arg(long)]
        all: bool,
        /// Publish to this topic instead of each message's original topic.
        #[arg(long)]
        to: Option<String>,
        /// At most this many messages per second.
        #[arg(long)]
        rate: Option<u32>,
    },
    /// Remove dead letters for good.
    Purge {
        /// The topic.
        topic: String,
        #[command(flatten)]
        filter: DlqFilterArgs,
        /// Every dead letter (required when no filter is given).
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, Clone, clap::Args)]
struct DlqFilterArgs {
    /// Only these DLQ sequences (repeatable).
    #[arg(long = "seq")]
    sequences: Vec<u64>,
    /// Only this reason: max_deliveries, terminated, expired.
    #[arg(long)]
    reason: Option<String>,
    /// Only from this durable subscription.
    #[arg(long)]
    subscription: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Format {
    Text,
    Hex,
    Json,
    Tlv,
}

#[derive(Debug, clap::Args)]
struct SubArgs {
    /// Topic or pattern (`*` one token, `>` the rest).
    pattern: String,
    /// Join queue group GROUP: each message goes to one member.
    #[arg(long)]
    group: Option<String>,
    /// Exit after this many messages.
    #[arg(long)]
    count: Option<u64>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Only messages matching this filter (docs/FILTERS.md), e.g. `$.side == "buy"`.
    #[arg(long)]
    filter: Option<String>,
    /// Durable subscription name (the topic must have storage = "disk"): progress survives
    /// restarts; each message is acknowledged after it is printed.
    #[arg(long, conflicts_with = "group")]
    durable: Option<String>,
    /// With --durable: refuse each message (NACK) instead of acknowledging it, to test redelivery.
    #[arg(long, requires = "durable", conflicts_with = "no_ack")]
    nack: bool,
    /// With --durable: neither ACK nor NACK (messages come back after the ack deadline).
    #[arg(long, requires = "durable")]
    no_ack: bool,
    /// With --durable: acknowledge each message (the default; spelled out for scripts).
    #[arg(long, requires = "durable", conflicts_with_all = ["nack", "no_ack"])]
    ack: bool,
    /// With --durable, for a new subscription: start at the oldest stored message.
    #[arg(long, requires = "durable", conflicts_with_all = ["from_seq", "from_time"])]
    from_beginning: bool,
    /// With --durable, for a new subscription: start at this sequence.
    #[arg(long, requires = "durable", conflicts_with = "from_time")]
    from_seq: Option<u64>,
    /// With --durable, for a new subscription: start at this time (RFC 3339, e.g. 2026-11-23T10:00:00Z).
    #[arg(long, requires = "durable")]
    from_time: Option<String>,
    /// With --durable: ack deadline (e.g. 30s).
    #[arg(long, requires = "durable")]
    ack_wait: Option<String>,
    /// With --durable: attempts before the dead-letter queue (0: unlimited).
    #[arg(long, requires = "durable")]
    max_deliveries: Option<u32>,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Mint a JWT for the HTTP API from the configured key (development and tests).
    Issue {
        /// Role: producer, consumer or admin (repeatable).
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// Lifetime, e.g. 1h or 30m.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Topics it may publish to (patterns; repeatable; default: any).
        #[arg(long = "pub")]
        publish: Vec<String>,
        /// Topics it may consume from (patterns; repeatable; default: any).
        #[arg(long = "subscribe")]
        subscribe: Vec<String>,
        /// Subject (`sub` claim).
        #[arg(long, default_value = "mycelium-cli")]
        subject: String,
        /// The broker's configuration file (for the key; default: embedded defaults).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Make a service user: a new random token, and the `[[auth.users]]` entry (with the
    /// token's SHA-256, never the token) to paste into the broker's configuration.
    User {
        /// The user's name.
        name: String,
        /// Role: producer, consumer or admin (repeatable).
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// Topics it may publish to (patterns; repeatable; default: any).
        #[arg(long = "pub")]
        publish: Vec<String>,
        /// Topics it may subscribe to (patterns; repeatable; default: any).
        #[arg(long = "subscribe")]
        subscribe: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file (with environment overrides applied).
    Check {
        /// The file.
        file: PathBuf,
    },
    /// Print the effective configuration (defaults, file, environment).
    Show {
        /// The file (default: none).
        file: Option<PathBuf>,
    },
    /// Print the configuration the running broker uses (secrets redacted), its version, and
    /// the changes that wait for a restart.
    Running {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match commands::run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
