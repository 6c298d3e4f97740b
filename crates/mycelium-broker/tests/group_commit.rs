//! Confirmations as a publisher sees them: the storage writer sends each group's PUBLISH_OKs
//! itself, through the connection's inline write (no writer task needed), whole frames, in
//! publish order, and stores every publish once.

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

#[test]
fn the_storage_writer_confirms_each_group_through_the_connections_inline_write() {
    let dir = tempfile::tempdir().unwrap();
    let spec = TopicSpec {
        storage: StorageKind::Disk,
        delivery: Delivery::AtLeastOnce,
        fsync: Fsync::Batch,
        ..TopicSpec::default()
    };
    let broker = Broker::new(BrokerConfig {
        topics: vec![("orders".to_owned(), spec)],
        durable: DurableConfig {
            data_dir: dir.path().to_path_buf(),
            ..DurableConfig::default()
        },
        ..BrokerConfig::default()
    })
    .unwrap();
    let conn = broker.connect("test".into());
    let socket = Arc::new(Recorder::default());
    conn.outbound
        .set_direct(Arc::clone(&socket) as Arc<dyn DirectWrite>, 64 * 1024);
    let mut publisher = Publisher::new(Arc::clone(&conn));

    for round in 0..3u32 {
        publisher.begin_batch(&broker);
        let ids: Vec<u32> = (1..=50).map(|i| round * 100 + i).collect();
        for &id in &ids {
            let message = Publish {
                topic: "orders",
                confirm: true,
                payload: &id.to_le_bytes(),
                ..Publish::default()
            };
            broker.publish_request(&mut publisher, &message, id).unwrap();
        }
        publisher.end_batch();
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
