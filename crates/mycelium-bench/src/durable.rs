//! Durable messaging, side by side: acknowledged publishes to a stored topic (Mycelium
//! `fsync = batch | always`, NATS JetStream file storage, Redis Streams XADD), and end to end
//! at-least-once (publish with confirms + consume + ack: Mycelium durable subscription, JetStream
//! pull consumer with explicit acks, Redis XREADGROUP + XACK).
//!
//! Every system keeps `window` publishes in flight (the fast way to publish with confirms on
//! each), 128-byte payloads by default, and the consumer acks every message.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use futures_util::StreamExt;
use indicatif::ProgressBar;
use mycelium_client::{Client, ClientOptions, DurableOptions, StartPosition};
use serde::{Deserialize, Serialize};

use crate::Measured;
use crate::system::{Kind, System};

/// The durable workload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Workload {
    /// Messages published.
    pub count: u64,
    /// Payload bytes.
    pub size: usize,
    /// Publishes in flight per publisher.
    pub window: usize,
    /// `batch`, `always` or `never`: the Mycelium topic's fsync policy.
    pub fsync: String,
    /// Also consume and ack every message (end to end).
    pub consume: bool,
}

/// The Mycelium topic of a fsync policy (configured by the spawned broker).
pub fn topic(fsync: &str) -> String {
    format!("bench.durable.{fsync}")
}

const NATS_STREAM: &str = "MYCELIUM_BENCH";
const NATS_SUBJECT: &str = "bench.durable.js";
const REDIS_STREAM: &str = "mycelium-bench-stream";

fn payload(index: u64, size: usize) -> Bytes {
    let mut data = vec![b'x'; size.max(8)];
    data[..8].copy_from_slice(&index.to_le_bytes());
    Bytes::from(data)
}

fn index_of(payload: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(payload.get(..8)?.try_into().ok()?))
}

/// Tracks which messages a consumer has seen.
struct Seen {
    seen: Vec<bool>,
    unique: u64,
    duplicates: u64,
}

impl Seen {
    fn new(count: u64) -> Seen {
        Seen {
            seen: vec![false; count as usize],
            unique: 0,
            duplicates: 0,
        }
    }

    fn mark(&mut self, payload: &[u8]) {
        match index_of(payload).and_then(|i| self.seen.get_mut(i as usize)) {
            Some(slot) if !*slot => {
                *slot = true;
                self.unique += 1;
            }
            Some(_) => self.duplicates += 1,
            None => {}
        }
    }
}

/// Runs the workload once against `system`.
///
/// # Errors
/// A system that cannot be reached or refuses the workload.
pub async fn run(system: &System, w: &Workload, progress: &ProgressBar) -> anyhow::Result<Measured> {
    progress.set_length(w.count);
    progress.set_position(0);
    match system.kind {
        Kind::Mycelium => mycelium(system, w, progress).await,
        Kind::Nats => jetstream(system, w, progress).await,
        Kind::Redis => redis_streams(system, w, progress).await,
    }
}

fn measured(w: &Workload, published_in: Duration, done_in: Duration, seen: Option<&Seen>) -> Measured {
    let publish_rate = w.count as f64 / published_in.as_secs_f64();
    let (delivered_rate, lost) = match seen {
        Some(seen) => (seen.unique as f64 / done_in.as_secs_f64(), w.count - seen.unique),
        None => (publish_rate, 0),
    };
    Measured {
        publish_msgs_per_s: publish_rate,
        delivered_msgs_per_s: delivered_rate,
        delivered_mb_per_s: delivered_rate * w.size as f64 / 1e6,
        lost,
        ..Measured::default()
    }
}

async fn mycelium(system: &System, w: &Workload, progress: &ProgressBar) -> anyhow::Result<Measured> {
    let topic = topic(&w.fsync);
    let connect = |name: &str| {
        let options = ClientOptions {
            name: name.into(),
            token: system.token.clone(),
            tls_ca_file: system.tls_ca.clone(),
            ..ClientOptions::default()
        };
        Client::connect_with(&system.url, options)
    };
    let publisher = connect("bench-durable-pub").await?;
    let consumer = if w.consume {
        let client = connect("bench-durable-sub").await?;
        let name = format!("bench-{}", std::process::id() as u64 ^ crate::now_nanos());
        let options = DurableOptions {
            start: StartPosition::New,
            max_in_flight: Some(4096),
            ..DurableOptions::default()
        };
        let sub = client
            .subscribe_durable(&topic, &name, options)
            .await
            .with_context(|| format!("topic `{topic}` must be a disk topic"))?;
        let count = w.count;
        Some(tokio::spawn(async move {
            let mut sub = sub;
            let mut seen = Seen::new(count);
            while seen.unique < count {
                let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(10), sub.next()).await
                else {
                    break;
                };
                seen.mark(&message.payload);
                if client.ack(&message).await.is_err() {
                    break;
                }
            }
            (seen, Instant::now())
        }))
    } else {
        None
    };
    let started = Instant::now();
    // As for JetStream below: publishes sent at once, their confirmations awaited in order.
    let mut in_flight = VecDeque::new();
    for index in 0..w.count {
        if in_flight.len() >= w.window
            && let Some(confirm) = in_flight.pop_front()
        {
            let _: mycelium_client::Confirmed = confirm.await?;
            progress.inc(1);
        }
        in_flight.push_back(
            publisher
                .publish_pipelined(&topic, payload(index, w.size))
                .await?,
        );
    }
    for confirm in in_flight {
        confirm.await?;
        progress.inc(1);
    }
    let published_in = started.elapsed();
    let seen = match consumer {
        Some(task) => {
            let (seen, at) = task.await?;
            Some((seen, at.duration_since(started)))
        }
        None => None,
    };
    publisher.close().await;
    Ok(match seen {
        Some((seen, done_in)) => measured(w, published_in, done_in, Some(&seen)),
        None => measured(w, published_in, published_in, None),
    })
}

async fn jetstream(system: &System, w: &Workload, progress: &ProgressBar) -> anyhow::Result<Measured> {
    use async_nats::jetstream::{self, consumer, stream};
    let client = async_nats::connect(&system.url).await?;
    let js = jetstream::new(client);
    let _ = js.delete_stream(NATS_STREAM).await;
    let stream = js
        .create_stream(stream::Config {
            name: NATS_STREAM.into(),
            subjects: vec![NATS_SUBJECT.into()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .context("JetStream is not enabled on this nats-server (start it with -js)")?;
    let consumer_task = if w.consume {
        let consumer: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some("bench".into()),
                ack_policy: consumer::AckPolicy::Explicit,
                max_ack_pending: 4096,
                ..Default::default()
            })
            .await?;
        let count = w.count;
        Some(tokio::spawn(async move {
            let mut seen = Seen::new(count);
            let Ok(mut messages) = consumer.messages().await else {
                return (seen, Instant::now());
            };
            while seen.unique < count {
                let Ok(Some(Ok(message))) =
                    tokio::time::timeout(Duration::from_secs(10), messages.next()).await
                else {
                    break;
                };
                seen.mark(&message.payload);
                if message.ack().await.is_err() {
                    break;
                }
            }
            (seen, Instant::now())
        }))
    } else {
        None
    };
    let started = Instant::now();
    let mut acks = VecDeque::new();
    for index in 0..w.count {
        if acks.len() >= w.window
            && let Some(ack) = acks.pop_front()
        {
            let ack: jetstream::context::PublishAckFuture = ack;
            ack.await?;
            progress.inc(1);
        }
        acks.push_back(js.publish(NATS_SUBJECT, payload(index, w.size)).await?);
    }
    for ack in acks {
        ack.await?;
        progress.inc(1);
    }
    let published_in = started.elapsed();
    let result = match consumer_task {
        Some(task) => {
            let (seen, at) = task.await?;
            measured(w, published_in, at.duration_since(started), Some(&seen))
        }
        None => measured(w, published_in, published_in, None),
    };
    let _ = js.delete_stream(NATS_STREAM).await;
    Ok(result)
}

async fn redis_streams(system: &System, w: &Workload, progress: &ProgressBar) -> anyhow::Result<Measured> {
    let client = redis::Client::open(system.url.as_str())?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    redis::cmd("DEL")
        .arg(REDIS_STREAM)
        .query_async::<()>(&mut connection)
        .await?;
    redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(REDIS_STREAM)
        .arg("bench")
        .arg("$")
        .arg("MKSTREAM")
        .query_async::<()>(&mut connection)
        .await?;
    let consumer_task = if w.consume {
        let mut connection = client.get_multiplexed_async_connection().await?;
        let count = w.count;
        Some(tokio::spawn(async move {
            let mut seen = Seen::new(count);
            let mut idle = 0;
            while seen.unique < count && idle < 10 {
                let reply: redis::RedisResult<redis::Value> = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg("bench")
                    .arg("c1")
                    .arg("COUNT")
                    .arg(1024)
                    .arg("BLOCK")
                    .arg(1000)
                    .arg("STREAMS")
                    .arg(REDIS_STREAM)
                    .arg(">")
                    .query_async(&mut connection)
                    .await;
                let Ok(reply) = reply else { break };
                let entries = stream_entries(&reply);
                if entries.is_empty() {
                    idle += 1;
                    continue;
                }
                idle = 0;
                let mut ack = redis::cmd("XACK");
                ack.arg(REDIS_STREAM).arg("bench");
                for (id, data) in &entries {
                    seen.mark(data);
                    ack.arg(id.as_str());
                }
                if ack.query_async::<()>(&mut connection).await.is_err() {
                    break;
                }
            }
            (seen, Instant::now())
        }))
    } else {
        None
    };
    let started = Instant::now();
    let mut index = 0;
    while index < w.count {
        let mut pipe = redis::pipe();
        let end = (index + w.window as u64).min(w.count);
        for i in index..end {
            pipe.cmd("XADD")
                .arg(REDIS_STREAM)
                .arg("*")
                .arg("d")
                .arg(payload(i, w.size).as_ref())
                .ignore();
        }
        pipe.query_async::<()>(&mut connection).await?;
        progress.inc(end - index);
        index = end;
    }
    let published_in = started.elapsed();
    let result = match consumer_task {
        Some(task) => {
            let (seen, at) = task.await?;
            measured(w, published_in, at.duration_since(started), Some(&seen))
        }
        None => measured(w, published_in, published_in, None),
    };
    redis::cmd("DEL")
        .arg(REDIS_STREAM)
        .query_async::<()>(&mut connection)
        .await?;
    Ok(result)
}

/// `(id, field d)` of every entry in an XREADGROUP reply.
fn stream_entries(reply: &redis::Value) -> Vec<(String, Vec<u8>)> {
    use redis::Value;
    fn items(value: &Value) -> &[Value] {
        match value {
            Value::Array(items) | Value::Set(items) => items,
            _ => &[],
        }
    }
    fn text(value: &Value) -> Option<&[u8]> {
        match value {
            Value::BulkString(bytes) => Some(bytes),
            Value::SimpleString(s) => Some(s.as_bytes()),
            _ => None,
        }
    }
    let mut out = Vec::new();
    // RESP2: [[stream, [[id, [field, value, ...]], ...]]]; RESP3 may answer with a map.
    let streams: Vec<&Value> = match reply {
        Value::Map(pairs) => pairs.iter().map(|(_, v)| v).collect(),
        other => items(other).iter().filter_map(|s| items(s).get(1)).collect(),
    };
    for entries in streams {
        for entry in items(entries) {
            let parts = items(entry);
            let (Some(id), Some(fields)) = (parts.first().and_then(text), parts.get(1)) else {
                continue;
            };
            let fields = items(fields);
            if let Some(data) = fields.get(1).and_then(text) {
                out.push((String::from_utf8_lossy(id).into_owned(), data.to_vec()));
            }
        }
    }
    out
}

/// Refuses workloads that cannot be verified.
///
/// # Errors
/// A zero count or window.
pub fn check(w: &Workload) -> anyhow::Result<()> {
    if w.count == 0 || w.window == 0 {
        bail!("durable needs --count and --window above 0");
    }
    if !["batch", "always", "never"].contains(&w.fsync.as_str()) {
        bail!("--fsync is batch, always or never");
    }
    Ok(())
}
