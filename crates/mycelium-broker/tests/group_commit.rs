//! Confirmations as a publisher sees them: the storage writer sends each group's PUBLISH_OKs
//! itself, through the connection's inline write (no writer task needed), whole frames, in
//! publish order, and stores every publish once; read batches that find the writer's queue full
//! wait their turn without losing their order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mycelium_broker::spec::{Delivery, Fsync, StorageKind, TopicSpec};
use mycelium_broker::{Broker, BrokerConfig, DirectWrite, DurableConfig, Publisher};
use mycelium_protocol::{Frame, Publish, decode};
use parking_lot::Mutex;

/// A socket that takes everything and remembers each write.
#[derive(Default)]
struct Recorder {
    writes: Mutex<Vec<Vec<u8>>>,
}

impl DirectWrite for Recorder {
    fn try_write(&self, buf: &[u8]) -> std::io::Result<usize> {
        self.writes.lock().push(buf.to_vec());
        Ok(buf.len())
    }
}

/// Request ids of the PUBLISH_OKs in one write.
fn confirmed(write: &[u8]) -> Vec<u32> {
    let mut ids = Vec::new();
    let mut rest = write;
    while let Some((decoded, used)) = decode(rest, usize::MAX).unwrap() {
        assert!(
            matches!(decoded.frame, Frame::PublishOk(_)),
            "{:?}",
            decoded.frame
        );
        ids.push(decoded.request_id);
        rest = &rest[used..];
    }
    assert!(rest.is_empty(), "whole frames only");
    ids
}

/// A broker with the disk topic `orders` and one connection whose socket is a [`Recorder`].
fn broker_with(
    dir: &tempfile::TempDir,
    fsync: Fsync,
    queue_capacity: usize,
) -> (Arc<Broker>, Arc<mycelium_broker::ConnectionInfo>, Arc<Recorder>) {
    let spec = TopicSpec {
        storage: StorageKind::Disk,
        delivery: Delivery::AtLeastOnce,
        fsync,
        ..TopicSpec::default()
    };
    let broker = Broker::new(BrokerConfig {
        topics: vec![("orders".to_owned(), spec)],
        durable: DurableConfig {
            data_dir: dir.path().to_path_buf(),
            queue_capacity,
            ..DurableConfig::default()
        },
        ..BrokerConfig::default()
    })
    .unwrap();
    let conn = broker.connect("test".into());
    let socket = Arc::new(Recorder::default());
    conn.outbound
        .set_direct(Arc::clone(&socket) as Arc<dyn DirectWrite>, 64 * 1024);
    (broker, conn, socket)
}

/// A confirmed publish to `orders` as request `id`, with `id` as payload.
fn publish(broker: &Broker, publisher: &mut Publisher, id: u32) {
    let message = Publish {
        topic: "orders",
        confirm: true,
        payload: &id.to_le_bytes(),
        ..Publish::default()
    };
    broker.publish_request(publisher, &message, id).unwrap();
}

#[test]
fn the_storage_writer_confirms_each_group_through_the_connections_inline_write() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, conn, socket) = broker_with(&dir, Fsync::Batch, DurableConfig::default().queue_capacity);
    let mut publisher = Publisher::new(Arc::clone(&conn));

    for round in 0..3u32 {
        publisher.begin_batch(&broker);
        let ids: Vec<u32> = (1..=50).map(|i| round * 100 + i).collect();
        for &id in &ids {
            publish(&broker, &mut publisher, id);
        }
        publisher.end_batch(&broker);
        // Nothing runs the connection's writer task here: every confirmation must come from the
        // storage writer's own write.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = Vec::new();
        while got.len() < ids.len() {
            assert!(Instant::now() < deadline, "round {round}: confirmed {got:?} only");
            for write in std::mem::take(&mut *socket.writes.lock()) {
                got.extend(confirmed(&write));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(got, ids, "round {round}: every publish once, in order");
        assert_eq!(conn.outbound.pending_bytes(), 0, "nothing left for a writer task");
    }
    let bounds = broker.storage().unwrap().bounds("orders").unwrap();
    assert_eq!(bounds.next - bounds.first, 150, "every publish stored once");
}

#[tokio::test]
async fn read_batches_that_find_the_writers_queue_full_wait_their_turn_in_order() {
    let dir = tempfile::tempdir().unwrap();
    // Room for one publish: every read batch after the first finds the queue full while the
    // writer syncs.
    let (broker, conn, socket) = broker_with(&dir, Fsync::Always, 1);
    let mut publisher = Publisher::new(Arc::clone(&conn));
    let mut sent = Vec::new();
    let mut waited = 0;
    for batch in 0..20u32 {
        publisher.begin_batch(&broker);
        for i in 1..=10 {
            let id = batch * 100 + i;
            publish(&broker, &mut publisher, id);
            sent.push(id);
        }
        publisher.end_batch(&broker);
        if publisher.has_blocked() {
            waited += 1;
            broker.settle_blocked(&mut publisher).await;
        }
    }
    assert!(waited > 0, "some batch found the queue full");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    while got.len() < sent.len() {
        assert!(
            Instant::now() < deadline,
            "confirmed {} of {}",
            got.len(),
            sent.len()
        );
        for write in std::mem::take(&mut *socket.writes.lock()) {
            got.extend(confirmed(&write));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(got, sent, "every publish confirmed once, in publish order");
    let bounds = broker.storage().unwrap().bounds("orders").unwrap();
    assert_eq!(bounds.next - bounds.first, 200, "every publish stored once");
}

/// A stored topic whose subscribers wait when full (`overflow = "block"`), with a tiny buffer and
/// a block timeout far beyond the test.
fn blocking_stored_spec() -> TopicSpec {
    TopicSpec {
        storage: StorageKind::Disk,
        delivery: Delivery::AtLeastOnce,
        fsync: Fsync::Batch,
        buffer_bytes: 4096,
        overflow: mycelium_broker::spec::Overflow::Block,
        block_timeout: Duration::from_secs(3600),
        ..TopicSpec::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_subscriber_of_one_stored_topic_never_holds_another_topics_confirms() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::new(BrokerConfig {
        topics: vec![
            ("stalled".to_owned(), blocking_stored_spec()),
            ("flowing".to_owned(), blocking_stored_spec()),
        ],
        durable: DurableConfig {
            data_dir: dir.path().to_path_buf(),
            ..DurableConfig::default()
        },
        ..BrokerConfig::default()
    })
    .unwrap();
    // A live subscriber of `stalled` that never reads: nothing drains its outbound buffer.
    let reader = broker.connect("never-reads".into());
    broker.subscribe(&reader, 1, "stalled", None).unwrap();
    let payload = bytes::Bytes::from(vec![7u8; 1024]);
    for i in 0..20 {
        let stored = tokio::time::timeout(
            Duration::from_secs(10),
            broker.publish_local(
                "stalled",
                bytes::Bytes::new(),
                payload.clone(),
                Default::default(),
            ),
        )
        .await
        .unwrap_or_else(|_| panic!("publish {i} to `stalled` not confirmed in 10 s"));
        assert!(stored.is_ok(), "{stored:?}");
    }
    let stalled = broker.topic("stalled").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while stalled
        .counters()
        .blocked
        .load(std::sync::atomic::Ordering::Relaxed)
        == 0
    {
        assert!(
            Instant::now() < deadline,
            "the subscriber of `stalled` never filled up"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The writer must not be waiting for that subscriber: `flowing` keeps being stored and
    // confirmed (before, the writer awaited the full subscriber for its whole block_timeout).
    let mut last = 0;
    for i in 0..200u32 {
        let confirmed = tokio::time::timeout(
            Duration::from_secs(10),
            broker.publish_local(
                "flowing",
                bytes::Bytes::new(),
                i.to_le_bytes().to_vec().into(),
                Default::default(),
            ),
        )
        .await;
        let stored = confirmed.unwrap_or_else(|_| panic!("publish {i} to `flowing` not confirmed in 10 s"));
        let sequence = stored.unwrap().1.sequence;
        assert!(sequence > last, "sequences increase: {sequence} after {last}");
        last = sequence;
    }
    // `stalled` itself is still stored and confirmed while its subscriber stays full.
    let more = tokio::time::timeout(
        Duration::from_secs(10),
        broker.publish_local(
            "stalled",
            bytes::Bytes::new(),
            payload.clone(),
            Default::default(),
        ),
    )
    .await;
    assert!(matches!(more, Ok(Ok(_))), "{more:?}");
}
