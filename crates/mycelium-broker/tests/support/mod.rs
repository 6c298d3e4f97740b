//! Helpers of the durable tests: a broker on a data directory, publishing, durable subscribing
//! as the server does it, reading what reached a connection, and waiting under paused time.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mycelium_broker::spec::{Delivery, Fsync, StorageKind, TopicSpec};
use mycelium_broker::{Broker, BrokerConfig, ConnectionInfo, DurableConfig, MessageProps, Verdict};
use mycelium_protocol::{Ack, DeliveryMeta, Frame, StartPosition, SubscribeOptions, frames};

pub fn stored_spec(adjust: impl FnOnce(&mut TopicSpec)) -> TopicSpec {
    let mut spec = TopicSpec {
        storage: StorageKind::Disk,
        delivery: Delivery::AtLeastOnce,
        fsync: Fsync::Never,
        ..TopicSpec::default()
    };
    adjust(&mut spec);
    spec
}

pub fn broker(dir: &std::path::Path, topics: Vec<(&str, TopicSpec)>) -> Arc<Broker> {
    Broker::new(BrokerConfig {
        topics: topics.into_iter().map(|(n, s)| (n.to_owned(), s)).collect(),
        durable: DurableConfig {
            data_dir: dir.to_path_buf(),
            ..DurableConfig::default()
        },
        ..BrokerConfig::default()
    })
    .unwrap()
}

/// (sequence, attempt, payload) of every DELIVER waiting for `conn`.
pub fn deliveries(conn: &ConnectionInfo) -> Vec<(u64, u32, String)> {
    let buf = conn.outbound.take_all();
    let mut out = Vec::new();
    for decoded in frames(&buf) {
        if let Frame::Deliver(d) = decoded.unwrap().frame {
            let meta = DeliveryMeta::decode(d.meta).unwrap();
            out.push((
                d.sequence,
                meta.attempt,
                String::from_utf8_lossy(d.payload).into_owned(),
            ));
        }
    }
    out
}

pub async fn publish(broker: &Broker, topic: &str, payload: &str, props: MessageProps) -> u64 {
    let (_, stored) = broker
        .publish_local(topic, Bytes::new(), Bytes::from(payload.to_owned()), props)
        .await
        .unwrap();
    stored.sequence
}

pub async fn subscribe(
    broker: &Arc<Broker>,
    conn: &ConnectionInfo,
    name: &str,
    max_in_flight: u32,
    backoff_ms: Vec<u32>,
) {
    let options = SubscribeOptions {
        durable: Some(name),
        start: Some(StartPosition::Beginning),
        ack_wait_ms: Some(30_000),
        max_deliveries: Some(3),
        max_in_flight: Some(max_in_flight),
        backoff_ms,
        filter: None,
    };
    open(broker, conn, 1, &options).await.unwrap();
}

/// A durable SUBSCRIBE as the server carries it out.
pub async fn open(
    broker: &Arc<Broker>,
    conn: &ConnectionInfo,
    id: u32,
    options: &SubscribeOptions<'_>,
) -> Result<(), mycelium_broker::SubscribeError> {
    let request = broker.durable_request(conn, "jobs", options)?;
    broker.subscribe_durable(conn, id, request, 1).await
}

/// Runs blocking broker calls (storage reads, state files) on a plain thread, as the server runs
/// them off its async workers.
pub fn off_worker<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(work).join().unwrap())
}

/// Lets the dispatcher run at the current (paused) time: it reads the log and writes its state
/// on the blocking pool, which takes real time, so each round yields and then waits a little.
pub async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
        std::thread::sleep(Duration::from_millis(1));
    }
}

pub fn ack(broker: &Broker, conn: &ConnectionInfo, sequence: u64) {
    let ack = Ack {
        subscription_id: 1,
        sequence,
    };
    broker.acknowledge(conn, Verdict::Ack(ack), 0).unwrap();
}

/// Polls (real time) for the storage writer thread, which runs outside the paused runtime,
/// letting the dispatchers run meanwhile (at the same paused time).
pub async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..100 {
        if done() {
            return;
        }
        settle().await;
    }
    panic!("timed out waiting for {what}");
}

/// [`wait_for`] for work of many passes: each round lets 5 ms of paused time pass (timers the
/// dispatcher set fire) and the blocking pool run briefly.
pub async fn wait_long(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..5_000 {
        if done() {
            return;
        }
        tokio::time::advance(Duration::from_millis(5)).await;
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    panic!("timed out waiting for {what}");
}
