//! One conformance suite, run against every backend.

mod support;

use mycelium_storage::{DiskBackend, LogConfig, MemoryBackend, StorageBackend, StorageError};
use support::batch;

fn conformance(backend: &dyn StorageBackend) {
    // An unknown topic is empty and starts at sequence 1.
    let b = backend.bounds("t").unwrap();
    assert_eq!((b.first, b.next), (1, 1));
    assert!(backend.read("t", 1, 10, usize::MAX).unwrap().is_empty());

    // Appends must continue the sequence.
    backend.append("t", &batch(1, 100)).unwrap();
    backend.sync("t").unwrap();
    assert!(matches!(
        backend.append("t", &batch(102, 1)),
        Err(StorageError::OutOfOrder {
            expected: 101,
            got: 102
        })
    ));
    assert!(matches!(
        backend.append("t", &batch(50, 1)),
        Err(StorageError::OutOfOrder { .. })
    ));
    backend.append("t", &batch(101, 50)).unwrap();
    assert_eq!(backend.bounds("t").unwrap().next, 151);

    // Reads return exactly what was written, from anywhere, within the limits.
    assert_eq!(
        backend.read("t", 1, usize::MAX, usize::MAX).unwrap(),
        batch(1, 150)
    );
    assert_eq!(backend.read("t", 77, 5, usize::MAX).unwrap(), batch(77, 5));
    assert_eq!(backend.read("t", 150, 10, usize::MAX).unwrap(), batch(150, 1));
    assert!(backend.read("t", 151, 10, usize::MAX).unwrap().is_empty());
    let limited = backend.read("t", 10, usize::MAX, 100).unwrap();
    assert!(!limited.is_empty() && limited.iter().map(|m| m.payload.len()).sum::<usize>() <= 100);
    assert_eq!(
        backend.read("t", 1, 10, 0).unwrap().len(),
        1,
        "at least one message even over the byte limit"
    );

    // Seeking by time.
    assert_eq!(backend.seek_time("t", 0).unwrap(), 1);
    assert_eq!(backend.seek_time("t", 42_000).unwrap(), 42);
    assert_eq!(backend.seek_time("t", 42_001).unwrap(), 43);
    assert_eq!(backend.seek_time("t", u64::MAX).unwrap(), 151);

    // Truncation hides older messages; appends continue.
    backend.truncate_before("t", 120).unwrap();
    let b = backend.bounds("t").unwrap();
    assert_eq!((b.first, b.next), (120, 151));
    assert_eq!(backend.read("t", 1, 3, usize::MAX).unwrap(), batch(120, 3));
    backend.append("t", &batch(151, 1)).unwrap();

    // Topics are independent.
    backend.append("other", &batch(1, 3)).unwrap();
    assert_eq!(backend.read("other", 1, 10, usize::MAX).unwrap(), batch(1, 3));
    assert_eq!(backend.topics(), vec!["other".to_owned(), "t".to_owned()]);
}

#[test]
fn memory_backend_conforms() {
    conformance(&MemoryBackend::default());
}

#[test]
fn disk_backend_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, reports) = DiskBackend::open(dir.path(), LogConfig::default()).unwrap();
    assert!(reports.is_empty());
    conformance(&backend);
}

#[test]
fn disk_backend_conforms_with_tiny_segments() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 2048,
        ..LogConfig::default()
    };
    let (backend, _) = DiskBackend::open(dir.path(), config).unwrap();
    conformance(&backend);
}

#[test]
fn disk_backend_keeps_everything_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 4096,
        ..LogConfig::default()
    };
    {
        let (backend, _) = DiskBackend::open(dir.path(), config.clone()).unwrap();
        // Batches of 10: a batch always lands whole in the active segment, so this rolls often.
        for from in (1..=500).step_by(10) {
            backend.append("t", &batch(from, 10)).unwrap();
        }
        backend.sync("t").unwrap();
        backend.truncate_before("t", 10).unwrap();
    }
    let (backend, reports) = DiskBackend::open(dir.path(), config).unwrap();
    assert_eq!(reports.len(), 1);
    let report = &reports[0].1;
    assert!(report.segments > 5, "{report:?}");
    assert_eq!((report.truncated_bytes, report.corrupt_regions), (0, 0));
    let b = backend.bounds("t").unwrap();
    assert_eq!(
        (b.first, b.next),
        (10, 501),
        "truncation point survives a restart"
    );
    assert_eq!(
        backend.read("t", 1, usize::MAX, usize::MAX).unwrap(),
        batch(10, 491)
    );
    backend.append("t", &batch(501, 1)).unwrap();
}

#[test]
fn disk_backend_refuses_topic_names_that_are_not_directory_names() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, _) = DiskBackend::open(dir.path(), LogConfig::default()).unwrap();
    for bad in ["", "..", "../x", "a/b", ".hidden"] {
        assert!(
            matches!(
                backend.append(bad, &batch(1, 1)),
                Err(StorageError::InvalidTopic(_))
            ),
            "{bad}"
        );
    }
}

mod properties {
    use bytes::{Bytes, BytesMut};
    use mycelium_storage::StoredMessage;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn stored_messages_round_trip(
            sequence: u64, publish_ns: u64, id: [u8; 16], priority in 0u8..10,
            expires in proptest::option::of(any::<u64>()), not_before in proptest::option::of(any::<u64>()),
            key in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
            headers in proptest::collection::vec(any::<u8>(), 0..64),
            payload in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let message = StoredMessage {
                sequence, publish_ns, id, priority, expires_at_ns: expires, not_before_ns: not_before,
                idempotency_key: key.map(Bytes::from), headers: Bytes::from(headers), payload: Bytes::from(payload),
            };
            let mut buf = BytesMut::new();
            message.encode(&mut buf).unwrap();
            prop_assert_eq!(buf.len(), message.encoded_len());
            prop_assert_eq!(StoredMessage::decode(&buf.freeze()).unwrap(), message);
        }

        #[test]
        fn garbage_bodies_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = StoredMessage::decode(&Bytes::from(bytes));
        }
    }
}

#[test]
fn a_stray_file_among_the_topics_is_skipped_and_the_others_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (backend, _) = DiskBackend::open(dir.path(), LogConfig::default()).unwrap();
        backend.append("jobs", &support::batch(1, 3)).unwrap();
    }
    let topics = mycelium_storage::DataDir::new(dir.path()).topics_dir();
    std::fs::write(topics.join("stray"), b"not a topic").unwrap();
    let (backend, reports) = DiskBackend::open(dir.path(), LogConfig::default()).unwrap();
    assert_eq!(
        reports.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>(),
        ["jobs"]
    );
    assert_eq!(
        backend.bounds("jobs").unwrap().next,
        4,
        "the real topic kept its messages"
    );
    // Writing to the stray name fails cleanly; nothing else is touched.
    assert!(backend.append("stray", &support::batch(1, 1)).is_err());
    assert_eq!(std::fs::read(topics.join("stray")).unwrap(), b"not a topic");
}
