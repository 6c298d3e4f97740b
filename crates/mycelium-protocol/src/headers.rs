//! Message headers and message properties: the two optional blocks of PUBLISH and DELIVER.
//!
//! Headers are application data (`traceparent`, content type, anything): a block of
//! `key str8 | value bytes16` entries. The broker forwards the block as it received it and parses
//! it only when it must (filters, trace context).
//!
//! Properties are instructions to the broker: `id u8 | len u16 | value` entries with the ids of
//! [`PropId`]. An unknown id is an error, never silently ignored: a broker that does not know what
//! a TTL is must not pretend to honour one.

use bytes::{BufMut, BytesMut};

use crate::ProtocolError;
use crate::wire::{Reader, put_bytes16, put_str8};

/// Iterates a header block's `(key, value)` pairs.
#[derive(Debug, Clone)]
pub struct HeaderIter<'a> {
    reader: Reader<'a>,
    failed: bool,
}

impl<'a> HeaderIter<'a> {
    /// Iterates `block`.
    pub fn new(block: &'a [u8]) -> Self {
        HeaderIter {
            reader: Reader::new(block),
            failed: false,
        }
    }
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = Result<(&'a str, &'a [u8]), ProtocolError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.reader.is_empty() {
            return None;
        }
        let entry = self
            .reader
            .str8("header key")
            .and_then(|key| Ok((key, self.reader.bytes16("header value")?)));
        self.failed = entry.is_err();
        Some(entry)
    }
}

/// Checks a header block's structure (every entry whole, keys non-empty UTF-8).
///
/// # Errors
/// The first malformed entry.
pub fn validate_headers(block: &[u8]) -> Result<(), ProtocolError> {
    for entry in HeaderIter::new(block) {
        let (key, _) = entry?;
        if key.is_empty() {
            return Err(ProtocolError::InvalidValue {
                field: "header key",
                value: 0,
            });
        }
    }
    Ok(())
}

/// Encodes `(key, value)` pairs as a header block, appended to `buf`.
///
/// # Errors
/// A key over 255 bytes or a value over 65,535 bytes.
pub fn encode_headers<'h>(
    buf: &mut BytesMut,
    headers: impl IntoIterator<Item = (&'h str, &'h [u8])>,
) -> Result<(), ProtocolError> {
    for (key, value) in headers {
        put_str8(buf, key, "header key")?;
        put_bytes16(buf, value, "header value")?;
    }
    Ok(())
}

/// Ids of message properties. Append-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PropId {
    /// `u8`, 0-9: higher is delivered first on topics with `priority = true`.
    Priority = 1,
    /// `u64`: milliseconds the message may wait before it expires.
    TtlMs = 2,
    /// `u64`: milliseconds to hold the message before its first delivery.
    DelayMs = 3,
    /// Bytes: publishes with the same key within the topic's dedup window are stored once.
    IdempotencyKey = 4,
    /// `u64`: do not deliver before this time (ns since the Unix epoch).
    NotBeforeNs = 5,
}

/// The decoded property block of a message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Props<'a> {
    /// See [`PropId::Priority`].
    pub priority: Option<u8>,
    /// See [`PropId::TtlMs`].
    pub ttl_ms: Option<u64>,
    /// See [`PropId::DelayMs`].
    pub delay_ms: Option<u64>,
    /// See [`PropId::IdempotencyKey`].
    pub idempotency_key: Option<&'a [u8]>,
    /// See [`PropId::NotBeforeNs`].
    pub not_before_ns: Option<u64>,
}

impl<'a> Props<'a> {
    /// Whether no property is set.
    pub fn is_empty(&self) -> bool {
        *self == Props::default()
    }

    /// Decodes a property block.
    ///
    /// # Errors
    /// Truncated entries, unknown ids, values of the wrong size, priority above 9.
    pub fn decode(block: &'a [u8]) -> Result<Self, ProtocolError> {
        let mut reader = Reader::new(block);
        let mut props = Props::default();
        while !reader.is_empty() {
            let id = reader.u8("property id")?;
            let value = reader.bytes16("property value")?;
            let u64_value = |field| -> Result<u64, ProtocolError> {
                let bytes: [u8; 8] = value.try_into().map_err(|_| ProtocolError::InvalidValue {
                    field,
                    value: value.len() as u64,
                })?;
                Ok(u64::from_le_bytes(bytes))
            };
            match id {
                1 => {
                    let &[priority] = value else {
                        return Err(ProtocolError::InvalidValue {
                            field: "priority size",
                            value: value.len() as u64,
                        });
                    };
                    if priority > 9 {
                        return Err(ProtocolError::InvalidValue {
                            field: "priority",
                            value: priority.into(),
                        });
                    }
                    props.priority = Some(priority);
                }
                2 => props.ttl_ms = Some(u64_value("ttl_ms")?),
                3 => props.delay_ms = Some(u64_value("delay_ms")?),
                4 => props.idempotency_key = Some(value),
                5 => props.not_before_ns = Some(u64_value("not_before_ns")?),
                other => {
                    return Err(ProtocolError::InvalidValue {
                        field: "property id",
                        value: other.into(),
                    });
                }
            }
        }
        Ok(props)
    }

    /// Appends the property block (no length prefix) to `buf`.
    ///
    /// # Errors
    /// An idempotency key over 65,535 bytes.
    pub fn encode(&self, buf: &mut BytesMut) -> Result<(), ProtocolError> {
        if let Some(priority) = self.priority {
            put_prop(buf, PropId::Priority, &[priority])?;
        }
        for (id, value) in [
            (PropId::TtlMs, self.ttl_ms),
            (PropId::DelayMs, self.delay_ms),
            (PropId::NotBeforeNs, self.not_before_ns),
        ] {
            if let Some(value) = value {
                put_prop(buf, id, &value.to_le_bytes())?;
            }
        }
        if let Some(key) = self.idempotency_key {
            put_prop(buf, PropId::IdempotencyKey, key)?;
        }
        Ok(())
    }
}

fn put_prop(buf: &mut BytesMut, id: PropId, value: &[u8]) -> Result<(), ProtocolError> {
    buf.put_u8(id as u8);
    put_bytes16(buf, value, "property value")
}
