//! The systems under test behind one interface: Mycelium (its Rust client), NATS (async-nats) and
//! Redis pub/sub (redis-rs, publishes pipelined). Every workload runs identically against each.

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use futures_util::StreamExt;
use mycelium_client::{Client, ClientOptions};

/// Which broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Mycelium.
    Mycelium,
    /// nats-server.
    Nats,
    /// Redis pub/sub.
    Redis,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Mycelium => "mycelium",
            Kind::Nats => "nats",
            Kind::Redis => "redis",
        })
    }
}

/// A broker to measure, and how to reach it.
#[derive(Debug, Clone)]
pub struct System {
    /// Which broker.
    pub kind: Kind,
    /// Its URL.
    pub url: String,
    /// `unix` or `tcp`.
    pub transport: &'static str,
    /// Its process id, when known (for RSS).
    pub pid: Option<u32>,
    /// Mycelium: the credential its clients send in HELLO.
    pub token: Option<mycelium_client::Token>,
    /// `tls://` URLs: the CA that signs the broker's certificate.
    pub tls_ca: Option<std::path::PathBuf>,
}

/// Redis publishes are sent in pipelines of this many commands (the peer's fastest publish mode).
const REDIS_PIPELINE: usize = 128;

/// A publishing connection.
pub enum Publisher {
    /// Mycelium client.
    Mycelium(Client),
    /// NATS client.
    Nats(async_nats::Client),
    /// Redis connection with a pending pipeline.
    Redis {
        connection: redis::aio::MultiplexedConnection,
        pipe: redis::Pipeline,
        pending: usize,
    },
}

/// A subscribing connection.
pub enum Subscriber {
    /// Mycelium subscription (the client is kept alive with it).
    Mycelium(Client, mycelium_client::Subscription),
    /// NATS subscription.
    Nats(async_nats::Client, async_nats::Subscriber),
    /// Redis pub/sub stream.
    Redis(Box<redis::aio::PubSubStream>),
}

impl System {
    /// Whether the workload can run on this system (Redis pub/sub has no queue groups).
    pub fn supports_queue(&self) -> bool {
        self.kind != Kind::Redis
    }

    /// Opens a publishing connection.
    pub async fn publisher(&self) -> anyhow::Result<Publisher> {
        Ok(match self.kind {
            Kind::Mycelium => {
                let options = ClientOptions {
                    name: "bench-pub".into(),
                    token: self.token.clone(),
                    tls_ca_file: self.tls_ca.clone(),
                    ..ClientOptions::default()
                };
                Publisher::Mycelium(Client::connect_with(&self.url, options).await?)
            }
            Kind::Nats => Publisher::Nats(nats_connect(&self.url, self.tls_ca.as_deref()).await?),
            Kind::Redis => {
                let client = redis::Client::open(self.url.as_str())?;
                let connection = client.get_multiplexed_async_connection().await?;
                Publisher::Redis {
                    connection,
                    pipe: redis::pipe(),
                    pending: 0,
                }
            }
        })
    }

    /// Opens a subscribing connection on `topic` (in queue group `group` if given).
    pub async fn subscriber(&self, topic: &str, group: Option<&str>) -> anyhow::Result<Subscriber> {
        Ok(match self.kind {
            Kind::Mycelium => {
                let options = ClientOptions {
                    name: "bench-sub".into(),
                    token: self.token.clone(),
                    tls_ca_file: self.tls_ca.clone(),
                    ..ClientOptions::default()
                };
                let client = Client::connect_with(&self.url, options).await?;
                let sub = match group {
                    Some(g) => client.queue_subscribe(topic, g).await?,
                    None => client.subscribe(topic).await?,
                };
                Subscriber::Mycelium(client, sub)
            }
            Kind::Nats => {
                let client = nats_connect(&self.url, self.tls_ca.as_deref()).await?;
                let sub = match group {
                    Some(g) => client.queue_subscribe(topic.to_owned(), g.to_owned()).await?,
                    None => client.subscribe(topic.to_owned()).await?,
                };
                client.flush().await?;
                Subscriber::Nats(client, sub)
            }
            Kind::Redis => {
                if group.is_some() {
                    bail!("redis pub/sub has no queue groups");
                }
                let client = redis::Client::open(self.url.as_str())?;
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(topic).await?;
                Subscriber::Redis(Box::new(pubsub.into_on_message()))
            }
        })
    }

    /// Checks the broker answers.
    pub async fn ping(&self) -> anyhow::Result<()> {
        let mut publisher = tokio::time::timeout(Duration::from_secs(3), self.publisher())
            .await
            .with_context(|| format!("{} at {}: no answer", self.kind, self.url))??;
        publisher.flush().await
    }
}

async fn nats_connect(url: &str, tls_ca: Option<&std::path::Path>) -> anyhow::Result<async_nats::Client> {
    let mut options = async_nats::ConnectOptions::new()
        .subscription_capacity(1 << 20)
        .client_capacity(1 << 16)
        .connection_timeout(Duration::from_secs(3));
    if let Some(ca) = tls_ca.filter(|_| url.starts_with("tls://")) {
        options = options.require_tls(true).add_root_certificates(ca.to_owned());
    }
    Ok(options.connect(url).await?)
}

impl Publisher {
    /// Publishes one message (possibly buffered).
    pub async fn publish(&mut self, topic: &'static str, payload: Bytes) -> anyhow::Result<()> {
        match self {
            Publisher::Mycelium(client) => client.publish(topic, &payload).await?,
            Publisher::Nats(client) => client.publish(topic, payload).await?,
            Publisher::Redis {
                connection,
                pipe,
                pending,
            } => {
                pipe.cmd("PUBLISH").arg(topic).arg(payload.as_ref()).ignore();
                *pending += 1;
                if *pending >= REDIS_PIPELINE {
                    pipe.query_async::<()>(connection).await?;
                    pipe.clear();
                    *pending = 0;
                }
            }
        }
        Ok(())
    }

    /// Sends what is buffered now, without waiting for the broker (latency runs: one message at a
    /// time, no pipelining). Redis answers every PUBLISH; as the other clients do not wait for
    /// the broker when publishing, the answer is awaited on the runtime, not by the sender
    /// (waiting for each round trip capped the sender below 10,000 msg/s and measured the
    /// backlog: a p50 of seconds). A refused publish then shows as a lost message.
    pub async fn flush_now(&mut self) -> anyhow::Result<()> {
        if let Publisher::Redis {
            connection,
            pipe,
            pending,
        } = self
            && *pending > 0
        {
            let (mut connection, pipe) = (connection.clone(), std::mem::replace(pipe, redis::pipe()));
            *pending = 0;
            tokio::spawn(async move {
                let _ = pipe.query_async::<()>(&mut connection).await;
            });
        }
        Ok(())
    }

    /// Sends everything buffered and waits until the broker has it.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        match self {
            Publisher::Mycelium(client) => client.flush().await?,
            Publisher::Nats(client) => client.flush().await?,
            Publisher::Redis {
                connection,
                pipe,
                pending,
            } => {
                if *pending > 0 {
                    pipe.query_async::<()>(connection).await?;
                    pipe.clear();
                    *pending = 0;
                }
                redis::cmd("PING").query_async::<String>(connection).await?;
            }
        }
        Ok(())
    }
}

impl Subscriber {
    /// The next payload.
    pub async fn next(&mut self) -> Option<Bytes> {
        match self {
            Subscriber::Mycelium(_, sub) => sub.next().await.map(|m| m.payload),
            Subscriber::Nats(_, sub) => sub.next().await.map(|m| m.payload),
            Subscriber::Redis(stream) => stream
                .next()
                .await
                .map(|m| Bytes::copy_from_slice(m.get_payload_bytes())),
        }
    }
}

/// Resident set size of a process, from /proc.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The pid of the first process whose command name is `name`.
pub fn pid_of(name: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
        (comm.trim() == name).then_some(pid)
    })
}
