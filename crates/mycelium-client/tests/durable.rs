//! Durable topics through the client: confirms mean stored; sequences continue across restarts;
//! a full disk is a clear error to the publisher.

use std::time::Duration;

use mycelium_client::{Client, ErrorCode, ErrorKind};
use mycelium_test_support::TestServer;

fn disk_topic(config: &mut mycelium_server::Config, data_dir: &std::path::Path, fsync: &str) {
    config.storage.data_dir = data_dir.display().to_string();
    config.topics.push(mycelium_server::config_topic("orders", |t| {
        t.storage = "disk".into();
        t.fsync = fsync.into();
    }));
}

/// A broker on a Unix socket in `dir` whose topic `orders` is on disk with `fsync`; returns the
/// data directory too.
async fn disk_server(dir: &tempfile::TempDir, fsync: &str) -> (std::path::PathBuf, TestServer) {
    let data = dir.path().join("data");
    let socket = dir.path().join("b.sock");
    let server = TestServer::start_at(&socket, |c| disk_topic(c, &data, fsync)).await;
    (data, server)
}

/// Pipelined publishes: many sent before any confirmation is awaited; each confirmation names
/// its own message (contiguous sequences in send order, distinct ids), and every confirmed
/// message is in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_publishes_are_each_confirmed_with_their_own_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let (data, server) = disk_server(&dir, "batch").await;
    let client = Client::connect(&server.url()).await.unwrap();
    let mut in_flight = std::collections::VecDeque::new();
    let mut confirmed = Vec::new();
    for i in 0..2_000u32 {
        if in_flight.len() == 128 {
            let confirm: mycelium_client::PendingConfirm = in_flight.pop_front().unwrap();
            confirmed.push(confirm.await.unwrap());
        }
        in_flight.push_back(
            client
                .publish_pipelined("orders", format!("order {i}"))
                .await
                .unwrap(),
        );
    }
    // The rest awaited newest first: order of awaiting does not matter to the answers.
    while let Some(confirm) = in_flight.pop_back() {
        confirmed.push(confirm.await.unwrap());
    }
    confirmed.sort_by_key(|c| c.sequence);
    let sequences: Vec<u64> = confirmed.iter().map(|c| c.sequence).collect();
    assert_eq!(sequences, (1..=2_000).collect::<Vec<u64>>());
    assert!(confirmed.windows(2).all(|w| w[0].id < w[1].id && !w[1].duplicate));
    client.close().await;
    server.stop().await;
    let (backend, _) =
        mycelium_storage::DiskBackend::open(&data, mycelium_storage::LogConfig::default()).unwrap();
    use mycelium_storage::StorageBackend;
    let stored = backend.read("orders", 1, usize::MAX, usize::MAX).unwrap();
    assert_eq!(stored.len(), 2_000);
    for (message, c) in stored.iter().zip(&confirmed) {
        assert_eq!((message.sequence, message.id), (c.sequence, c.id));
        assert_eq!(message.payload, format!("order {}", c.sequence - 1).as_bytes());
    }
}

/// A pipelined publish waits in the client until a confirmation is awaited, so that a window
/// leaves in one write; one that nobody awaits (nor drops) still leaves on its own, stored and
/// delivered, and its confirmation is there when finally awaited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_publishes_nobody_awaits_still_leave() {
    let dir = tempfile::tempdir().unwrap();
    let (_data, server) = disk_server(&dir, "batch").await;
    let watcher = Client::connect(&server.url()).await.unwrap();
    let mut sub = watcher.subscribe("orders").await.unwrap();
    let client = Client::connect(&server.url()).await.unwrap();
    let mut held = Vec::new();
    for i in 0..3u32 {
        held.push(
            client
                .publish_pipelined("orders", format!("held {i}"))
                .await
                .unwrap(),
        );
    }
    for i in 0..3u32 {
        let message = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("a held publish still reaches the broker")
            .unwrap();
        assert_eq!(message.payload, format!("held {i}").as_bytes());
    }
    for (i, confirm) in held.into_iter().enumerate() {
        assert_eq!(confirm.await.unwrap().sequence, i as u64 + 1);
    }
    client.close().await;
    watcher.close().await;
    server.stop().await;
}

/// `pipeline_hold_max` bounds the hold: with a long one, a pipelined publish nobody awaits stays
/// in the client; awaiting its confirmation sends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_hold_max_is_how_long_an_unawaited_publish_waits() {
    let dir = tempfile::tempdir().unwrap();
    let (_data, server) = disk_server(&dir, "batch").await;
    let watcher = Client::connect(&server.url()).await.unwrap();
    let mut sub = watcher.subscribe("orders").await.unwrap();
    let options = mycelium_client::ClientOptions {
        pipeline_hold_max: Duration::from_secs(3600),
        ..mycelium_client::ClientOptions::default()
    };
    let client = Client::connect_with(&server.url(), options).await.unwrap();
    let held = client.publish_pipelined("orders", "held").await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), sub.next())
            .await
            .is_err(),
        "held in the client while nobody awaits"
    );
    assert_eq!(held.await.unwrap().sequence, 1, "awaiting sends it");
    let message = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("delivered once sent")
        .unwrap();
    assert_eq!(message.payload, "held".as_bytes());
    client.close().await;
    watcher.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_messages_are_stored_and_sequences_continue_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let socket = dir.path().join("b.sock");
    for fsync in ["always", "batch", "never"] {
        let _ = std::fs::remove_dir_all(&data);
        let server = TestServer::start_at(&socket, |c| disk_topic(c, &data, fsync)).await;
        let client = Client::connect(&server.url()).await.unwrap();
        let mut live = client.subscribe("orders").await.unwrap();
        for i in 1..=50u64 {
            let sequence = client
                .publish_confirmed("orders", format!("order {i}"))
                .await
                .unwrap();
            assert_eq!(
                sequence, i,
                "fsync={fsync}: the writer assigns contiguous sequences"
            );
        }
        // Fire-and-forget publishes to a durable topic are stored too.
        client.publish("orders", b"unconfirmed").await.unwrap();
        for i in 1..=51u64 {
            let message = tokio::time::timeout(Duration::from_secs(5), live.next())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                message.sequence, i,
                "live subscribers get durable messages after they are stored"
            );
        }
        drop(live);
        client.close().await;
        server.stop().await;

        let server = TestServer::start_at(&socket, |c| disk_topic(c, &data, fsync)).await;
        let client = Client::connect(&server.url()).await.unwrap();
        assert_eq!(
            client
                .publish_confirmed("orders", b"after restart")
                .await
                .unwrap(),
            52,
            "fsync={fsync}"
        );
        client.close().await;
        server.stop().await;

        let (backend, _) =
            mycelium_storage::DiskBackend::open(&data, mycelium_storage::LogConfig::default()).unwrap();
        use mycelium_storage::StorageBackend;
        let stored = backend.read("orders", 1, usize::MAX, usize::MAX).unwrap();
        assert_eq!(stored.len(), 52);
        assert_eq!(&stored[0].payload[..], b"order 1");
        assert_eq!(&stored[50].payload[..], b"unconfirmed");
        assert_eq!(&stored[51].payload[..], b"after restart");
        assert!(
            stored.windows(2).all(|w| w[0].id < w[1].id),
            "UUIDv7 ids grow with time"
        );
    }
}

/// A tmpfs of `size` mounted at `dir/small` (the project's machines run tests as root),
/// unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &tempfile::TempDir, size: &str) -> SmallDisk {
        let data = dir.path().join("small");
        std::fs::create_dir(&data).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&data)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mounting a tmpfs needs root, which the project's machines give tests"
        );
        SmallDisk(data)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_a_clear_error_for_the_publisher() {
    if !mycelium_test_support::available(&[mycelium_test_support::Need::Root]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(&dir, "512k");
    let data = disk.0.clone();
    let server = TestServer::start_at(&dir.path().join("b.sock"), |c| disk_topic(c, &data, "always")).await;
    let client = Client::connect(&server.url()).await.unwrap();
    let payload = vec![7u8; 16 * 1024];
    let mut stored = 0u64;
    let error = loop {
        match client.publish_confirmed("orders", &payload).await {
            Ok(sequence) => {
                stored += 1;
                assert_eq!(sequence, stored);
            }
            Err(error) => break error,
        }
        assert!(stored < 1000, "the disk never filled");
    };
    assert_eq!(error.kind(), ErrorKind::Server);
    assert_eq!(error.server_code(), Some(ErrorCode::StorageFailed), "{error}");
    assert!(error.to_string().contains("storage full"), "{error}");
    // The connection still works, and other topics are unaffected.
    client.publish_confirmed("memory.topic", b"fine").await.unwrap();
    client.close().await;
    server.stop().await;
    let (backend, reports) =
        mycelium_storage::DiskBackend::open(&data, mycelium_storage::LogConfig::default()).unwrap();
    use mycelium_storage::StorageBackend;
    assert_eq!(
        reports[0].1.truncated_bytes, 0,
        "nothing partial was left on disk"
    );
    assert_eq!(
        backend.bounds("orders").unwrap().next,
        stored + 1,
        "exactly the confirmed messages are stored"
    );
}

/// A dead letter the DLQ cannot take (the disk is full) is kept, not lost: its message stays
/// unfinished and the DLQ write is tried again until there is room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_on_a_full_disk_is_kept_and_stored_once_there_is_room() {
    use mycelium_client::{DurableOptions, StartPosition};
    use mycelium_protocol::admin::{AdminRequest, DlqFilter, DlqPage};
    if !mycelium_test_support::available(&[mycelium_test_support::Need::Root]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(&dir, "64m");
    let data = disk.0.join("data");
    let server = TestServer::start_at(&dir.path().join("b.sock"), |c| disk_topic(c, &data, "always")).await;
    let client = Client::connect(&server.url()).await.unwrap();
    for i in 0..3 {
        client
            .publish_confirmed("orders", format!("job {i}").as_bytes())
            .await
            .unwrap();
    }
    let options = DurableOptions {
        start: StartPosition::Beginning,
        ..DurableOptions::default()
    };
    let mut sub = client.subscribe_durable("orders", "w", options).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(
            tokio::time::timeout(Duration::from_secs(10), sub.next())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    // Fill the disk to the last byte, then give up on every message.
    let filler = disk.0.join("filler");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&filler).unwrap();
        while file.write_all(&[0u8; 4096]).is_ok() {}
    }
    for message in &got {
        client.term(message, "poison").await.unwrap();
    }
    let dlq_depth = || async {
        let request = AdminRequest::DlqList {
            topic: "orders".into(),
            filter: DlqFilter::default(),
            after: 0,
            limit: 10,
        };
        client
            .admin_typed::<DlqPage>(&request)
            .await
            .map(|p| p.depth)
            .unwrap_or(0)
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        dlq_depth().await,
        0,
        "nothing fits in the DLQ while the disk is full"
    );
    // Room again: the held dead letters reach the DLQ, all three, without a consumer's help.
    std::fs::remove_file(&filler).unwrap();
    let mut depth = 0;
    for _ in 0..200 {
        depth = dlq_depth().await;
        if depth == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        depth, 3,
        "every dead letter was kept and stored once there was room"
    );
    client.close().await;
    server.stop().await;
}
