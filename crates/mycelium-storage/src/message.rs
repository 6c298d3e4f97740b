//! A stored message and its byte encoding (the body of one log record).
//!
//! ```text
//! sequence u64 | publish_ns u64 | id [16] | flags u8 | priority u8
//! | [expires_at_ns u64] | [not_before_ns u64] | [idempotency_key: len u16, bytes]
//! | headers: len u32, bytes | payload (rest)
//! ```
//! `flags`: 0x01 expires_at present, 0x02 not_before present, 0x04 idempotency key present.

use bytes::{BufMut, Bytes, BytesMut};

use crate::StorageError;

const HAS_EXPIRY: u8 = 0x01;
const HAS_NOT_BEFORE: u8 = 0x02;
const HAS_KEY: u8 = 0x04;
/// Smallest encoded message: the fixed fields and an empty header block.
pub const MESSAGE_MIN_BYTES: usize = 8 + 8 + 16 + 1 + 1 + 4;

/// One message as the storage keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoredMessage {
    /// Per-topic sequence (contiguous, assigned by the broker).
    pub sequence: u64,
    /// When the broker accepted it, ns since the Unix epoch.
    pub publish_ns: u64,
    /// Broker-assigned id (UUIDv7 bytes).
    pub id: [u8; 16],
    /// 0-9; higher first on priority topics.
    pub priority: u8,
    /// Never delivered after this time.
    pub expires_at_ns: Option<u64>,
    /// Never delivered before this time.
    pub not_before_ns: Option<u64>,
    /// Deduplication key.
    pub idempotency_key: Option<Bytes>,
    /// Header block as published.
    pub headers: Bytes,
    /// The payload.
    pub payload: Bytes,
}

impl StoredMessage {
    /// Encoded size in bytes.
    pub fn encoded_len(&self) -> usize {
        MESSAGE_MIN_BYTES
            + if self.expires_at_ns.is_some() { 8 } else { 0 }
            + if self.not_before_ns.is_some() { 8 } else { 0 }
            + self.idempotency_key.as_ref().map_or(0, |k| 2 + k.len())
            + self.headers.len()
            + self.payload.len()
    }

    /// Appends the encoding to `buf`.
    ///
    /// # Errors
    /// An idempotency key over 65,535 bytes or headers over 4 GiB.
    pub fn encode(&self, buf: &mut BytesMut) -> Result<(), StorageError> {
        let mut flags = 0;
        if self.expires_at_ns.is_some() {
            flags |= HAS_EXPIRY;
        }
        if self.not_before_ns.is_some() {
            flags |= HAS_NOT_BEFORE;
        }
        if self.idempotency_key.is_some() {
            flags |= HAS_KEY;
        }
        let key_len = self.idempotency_key.as_ref().map_or(0, Bytes::len);
        let key_len = u16::try_from(key_len).map_err(|_| StorageError::TooLarge {
            what: "idempotency key",
            size: key_len,
        })?;
        let headers_len = u32::try_from(self.headers.len()).map_err(|_| StorageError::TooLarge {
            what: "headers",
            size: self.headers.len(),
        })?;
        buf.reserve(self.encoded_len());
        buf.put_u64_le(self.sequence);
        buf.put_u64_le(self.publish_ns);
        buf.put_slice(&self.id);
        buf.put_u8(flags);
        buf.put_u8(self.priority);
        if let Some(v) = self.expires_at_ns {
            buf.put_u64_le(v);
        }
        if let Some(v) = self.not_before_ns {
            buf.put_u64_le(v);
        }
        if let Some(key) = &self.idempotency_key {
            buf.put_u16_le(key_len);
            buf.put_slice(key);
        }
        buf.put_u32_le(headers_len);
        buf.put_slice(&self.headers);
        buf.put_slice(&self.payload);
        Ok(())
    }

    /// Decodes a record body; payload and headers share `body`'s memory.
    ///
    /// # Errors
    /// [`StorageError::Malformed`] for a body that does not parse.
    pub fn decode(body: &Bytes) -> Result<StoredMessage, StorageError> {
        let mut pos = 0usize;
        let take = |pos: &mut usize, n: usize| -> Result<std::ops::Range<usize>, StorageError> {
            let end = pos
                .checked_add(n)
                .filter(|e| *e <= body.len())
                .ok_or(StorageError::Malformed {
                    reason: format!("message body of {} bytes ends inside a field", body.len()),
                })?;
            let range = *pos..end;
            *pos = end;
            Ok(range)
        };
        let u64_at = |r: std::ops::Range<usize>| u64::from_le_bytes(body[r].try_into().unwrap_or_default());
        let sequence = u64_at(take(&mut pos, 8)?);
        let publish_ns = u64_at(take(&mut pos, 8)?);
        let mut id = [0u8; 16];
        id.copy_from_slice(&body[take(&mut pos, 16)?]);
        let flags = body[take(&mut pos, 1)?][0];
        let priority = body[take(&mut pos, 1)?][0];
        let expires_at_ns = if flags & HAS_EXPIRY != 0 {
            Some(u64_at(take(&mut pos, 8)?))
        } else {
            None
        };
        let not_before_ns = if flags & HAS_NOT_BEFORE != 0 {
            Some(u64_at(take(&mut pos, 8)?))
        } else {
            None
        };
        let idempotency_key = if flags & HAS_KEY != 0 {
            let r = take(&mut pos, 2)?;
            let len = u16::from_le_bytes([body[r.start], body[r.start + 1]]) as usize;
            Some(body.slice(take(&mut pos, len)?))
        } else {
            None
        };
        let r = take(&mut pos, 4)?;
        let headers_len = u32::from_le_bytes(body[r].try_into().unwrap_or_default()) as usize;
        let headers = body.slice(take(&mut pos, headers_len)?);
        let payload = body.slice(pos..);
        Ok(StoredMessage {
            sequence,
            publish_ns,
            id,
            priority,
            expires_at_ns,
            not_before_ns,
            idempotency_key,
            headers,
            payload,
        })
    }
}
