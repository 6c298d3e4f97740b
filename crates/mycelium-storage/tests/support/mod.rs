//! Test messages shared by the storage tests.
#![allow(dead_code, missing_docs)]

use bytes::Bytes;
use mycelium_storage::StoredMessage;

/// A message for `sequence` exercising every optional field now and then.
pub fn message(sequence: u64) -> StoredMessage {
    StoredMessage {
        sequence,
        publish_ns: 1_000 * sequence,
        id: [sequence as u8; 16],
        priority: (sequence % 10) as u8,
        expires_at_ns: sequence.is_multiple_of(3).then_some(99),
        not_before_ns: sequence.is_multiple_of(4).then_some(7),
        idempotency_key: sequence
            .is_multiple_of(5)
            .then(|| Bytes::from(format!("key-{sequence}"))),
        headers: Bytes::from_static(b"\x0btraceparent\x03\x00abc"),
        payload: Bytes::from(vec![sequence as u8; (sequence % 200) as usize]),
    }
}

/// Messages `from..from + count`.
pub fn batch(from: u64, count: u64) -> Vec<StoredMessage> {
    (from..from + count).map(message).collect()
}
