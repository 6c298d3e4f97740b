//! Group commit as a publisher sees it: the confirmed publishes of one read batch are synced
//! together (the storage writer does not sync while the batch is still handing publishes over),
//! and their PUBLISH_OKs reach the publisher's socket in one write.

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
fn a_read_batch_is_synced_as_one_group_and_confirmed_in_one_write() {
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
            // Only "the writer caught up and no read is handing over" can trigger the sync.
            fsync_interval: Duration::from_secs(3600),
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
        // The writer has the batch's publishes, but the batch is still open: no sync, so no
        // confirmation yet (it would be a group cut short).
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            socket.writes.lock().is_empty(),
            "round {round}: confirmed while the read batch was still handing publishes over"
        );
        publisher.end_batch();
        let deadline = Instant::now() + Duration::from_secs(10);
        while socket.writes.lock().is_empty() {
            assert!(Instant::now() < deadline, "round {round}: never confirmed");
            std::thread::sleep(Duration::from_millis(1));
        }
        let writes = std::mem::take(&mut *socket.writes.lock());
        assert_eq!(
            writes.len(),
            1,
            "round {round}: the group's confirmations leave in one write"
        );
        assert_eq!(
            confirmed(&writes[0]),
            ids,
            "round {round}: every publish, in order"
        );
    }
    let bounds = broker.storage().unwrap().bounds("orders").unwrap();
    assert_eq!(bounds.next - bounds.first, 150, "every publish stored once");
}
