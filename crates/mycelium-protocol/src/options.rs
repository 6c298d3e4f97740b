//! The SUBSCRIBE options block and the DELIVER metadata block: `id u8 | len u16 | value` entries,
//! like message properties. Unknown ids are errors (a broker must not silently ignore an option).

use bytes::{BufMut, BytesMut};

use crate::ProtocolError;
use crate::wire::{Reader, put_bytes16};

/// Where a new durable subscription starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartPosition {
    /// Only messages published after the subscription is created.
    #[default]
    New,
    /// Every message still in the topic's log.
    Beginning,
    /// From this per-topic sequence.
    Sequence(u64),
    /// From the first message published at or after this time (ns since the Unix epoch).
    Time(u64),
}

/// Options of a SUBSCRIBE (all optional).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubscribeOptions<'a> {
    /// Durable name: the subscription's progress survives disconnects and restarts, and every
    /// consumer using the same name shares it (each message to one of them).
    pub durable: Option<&'a str>,
    /// Where a new durable subscription starts (ignored when it exists already).
    pub start: Option<StartPosition>,
    /// Ack deadline in milliseconds.
    pub ack_wait_ms: Option<u32>,
    /// Deliveries before dead-lettering (0: unlimited).
    pub max_deliveries: Option<u32>,
    /// Messages in flight at once.
    pub max_in_flight: Option<u32>,
    /// Retry delays in milliseconds (the last repeats).
    pub backoff_ms: Vec<u32>,
    /// Content filter (the broker's filter language); only matching messages are delivered.
    pub filter: Option<&'a str>,
}

mod id {
    pub const DURABLE: u8 = 1;
    pub const START: u8 = 2;
    pub const ACK_WAIT: u8 = 3;
    pub const MAX_DELIVERIES: u8 = 4;
    pub const MAX_IN_FLIGHT: u8 = 5;
    pub const BACKOFF: u8 = 6;
    pub const FILTER: u8 = 7;
}

fn u32_of(value: &[u8], field: &'static str) -> Result<u32, ProtocolError> {
    let bytes: [u8; 4] = value.try_into().map_err(|_| ProtocolError::InvalidValue {
        field,
        value: value.len() as u64,
    })?;
    Ok(u32::from_le_bytes(bytes))
}

impl<'a> SubscribeOptions<'a> {
    /// Decodes an options block.
    ///
    /// # Errors
    /// Truncated entries, unknown ids, malformed values.
    pub fn decode(block: &'a [u8]) -> Result<Self, ProtocolError> {
        let mut reader = Reader::new(block);
        let mut options = SubscribeOptions::default();
        while !reader.is_empty() {
            let key = reader.u8("option id")?;
            let value = reader.bytes16("option value")?;
            match key {
                id::DURABLE => {
                    let name = std::str::from_utf8(value)
                        .map_err(|_| ProtocolError::InvalidUtf8 { field: "durable" })?;
                    options.durable = Some(name);
                }
                id::START => {
                    let (&kind, rest) = value.split_first().ok_or(ProtocolError::InvalidValue {
                        field: "start",
                        value: 0,
                    })?;
                    let at = || -> Result<u64, ProtocolError> {
                        let bytes: [u8; 8] = rest.try_into().map_err(|_| ProtocolError::InvalidValue {
                            field: "start value",
                            value: rest.len() as u64,
                        })?;
                        Ok(u64::from_le_bytes(bytes))
                    };
                    options.start = Some(match kind {
                        0 => StartPosition::New,
                        1 => StartPosition::Beginning,
                        2 => StartPosition::Sequence(at()?),
                        3 => StartPosition::Time(at()?),
                        other => {
                            return Err(ProtocolError::InvalidValue {
                                field: "start kind",
                                value: other.into(),
                            });
                        }
                    });
                }
                id::ACK_WAIT => options.ack_wait_ms = Some(u32_of(value, "ack_wait_ms")?),
                id::MAX_DELIVERIES => options.max_deliveries = Some(u32_of(value, "max_deliveries")?),
                id::MAX_IN_FLIGHT => options.max_in_flight = Some(u32_of(value, "max_in_flight")?),
                id::BACKOFF => {
                    if value.len() % 4 != 0 || value.is_empty() {
                        return Err(ProtocolError::InvalidValue {
                            field: "backoff",
                            value: value.len() as u64,
                        });
                    }
                    options.backoff_ms = value
                        .chunks_exact(4)
                        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect();
                }
                id::FILTER => {
                    let filter = std::str::from_utf8(value)
                        .map_err(|_| ProtocolError::InvalidUtf8 { field: "filter" })?;
                    options.filter = Some(filter);
                }
                other => {
                    return Err(ProtocolError::InvalidValue {
                        field: "subscribe option id",
                        value: other.into(),
                    });
                }
            }
        }
        Ok(options)
    }

    /// Appends the options block (no length prefix) to `buf`.
    ///
    /// # Errors
    /// A durable name over 65,535 bytes.
    pub fn encode(&self, buf: &mut BytesMut) -> Result<(), ProtocolError> {
        let mut put = |key: u8, value: &[u8]| -> Result<(), ProtocolError> {
            buf.put_u8(key);
            put_bytes16(buf, value, "option value")
        };
        if let Some(name) = self.durable {
            put(id::DURABLE, name.as_bytes())?;
        }
        if let Some(start) = self.start {
            let mut v = Vec::with_capacity(9);
            match start {
                StartPosition::New => v.push(0),
                StartPosition::Beginning => v.push(1),
                StartPosition::Sequence(s) => {
                    v.push(2);
                    v.extend_from_slice(&s.to_le_bytes());
                }
                StartPosition::Time(t) => {
                    v.push(3);
                    v.extend_from_slice(&t.to_le_bytes());
                }
            }
            put(id::START, &v)?;
        }
        for (key, value) in [
            (id::ACK_WAIT, self.ack_wait_ms),
            (id::MAX_DELIVERIES, self.max_deliveries),
            (id::MAX_IN_FLIGHT, self.max_in_flight),
        ] {
            if let Some(v) = value {
                put(key, &v.to_le_bytes())?;
            }
        }
        if !self.backoff_ms.is_empty() {
            let v: Vec<u8> = self.backoff_ms.iter().flat_map(|d| d.to_le_bytes()).collect();
            put(id::BACKOFF, &v)?;
        }
        if let Some(filter) = self.filter {
            put(id::FILTER, filter.as_bytes())?;
        }
        Ok(())
    }
}

/// The DELIVER metadata block of a durable delivery: the message's id, which attempt this is, and
/// when it was published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeliveryMeta {
    /// Broker-assigned message id (UUIDv7 bytes).
    pub message_id: [u8; 16],
    /// 1 for the first delivery.
    pub attempt: u32,
    /// ns since the Unix epoch.
    pub publish_ns: u64,
}

impl DeliveryMeta {
    /// Size of the encoded block.
    pub const LEN: usize = 3 * 3 + 16 + 4 + 8;

    /// Appends the block (no length prefix).
    pub fn encode(&self, buf: &mut BytesMut) {
        buf.put_u8(1);
        buf.put_u16_le(16);
        buf.put_slice(&self.message_id);
        buf.put_u8(2);
        buf.put_u16_le(4);
        buf.put_u32_le(self.attempt);
        buf.put_u8(3);
        buf.put_u16_le(8);
        buf.put_u64_le(self.publish_ns);
    }

    /// Decodes a block (unknown ids are skipped: metadata is informational for clients).
    ///
    /// # Errors
    /// Truncated or wrongly sized entries.
    pub fn decode(block: &[u8]) -> Result<Self, ProtocolError> {
        let mut reader = Reader::new(block);
        let mut meta = DeliveryMeta::default();
        while !reader.is_empty() {
            let key = reader.u8("meta id")?;
            let value = reader.bytes16("meta value")?;
            match key {
                1 => {
                    meta.message_id = value.try_into().map_err(|_| ProtocolError::InvalidValue {
                        field: "message_id",
                        value: value.len() as u64,
                    })?
                }
                2 => meta.attempt = u32_of(value, "attempt")?,
                3 => {
                    let bytes: [u8; 8] = value.try_into().map_err(|_| ProtocolError::InvalidValue {
                        field: "publish_ns",
                        value: value.len() as u64,
                    })?;
                    meta.publish_ns = u64::from_le_bytes(bytes);
                }
                _ => {}
            }
        }
        Ok(meta)
    }
}
