//! DELIVER: a message for a subscription.

use bytes::{BufMut, BytesMut};

use crate::ProtocolError;
use crate::frame::{Kind, begin, end};
use crate::wire::{Reader, put_bytes16, put_str8};

/// DELIVER flag: a header block follows the topic.
pub const DELIVER_HAS_HEADERS: u8 = 0x01;
/// DELIVER flag: a delivery metadata block follows (message id, attempt count, publish time:
/// filled on durable topics).
pub const DELIVER_HAS_META: u8 = 0x02;

/// `DELIVER`: `subscription_id u32 | sequence u64 | topic str8 | [headers bytes16] | [meta bytes16]
/// | payload (rest of frame)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Deliver<'a> {
    /// The subscription this delivery is for.
    pub subscription_id: u32,
    /// The message's per-topic sequence.
    pub sequence: u64,
    /// The topic the message was published to.
    pub topic: &'a str,
    /// Raw header block as the publisher sent it; empty for none.
    pub headers: &'a [u8],
    /// Raw delivery metadata block; empty for none.
    pub meta: &'a [u8],
    /// The payload, as published.
    pub payload: &'a [u8],
}

impl<'a> Deliver<'a> {
    pub(crate) fn flags(&self) -> u8 {
        let mut flags = 0;
        if !self.headers.is_empty() {
            flags |= DELIVER_HAS_HEADERS;
        }
        if !self.meta.is_empty() {
            flags |= DELIVER_HAS_META;
        }
        flags
    }

    pub(crate) fn decode(flags: u8, body: &mut Reader<'a>) -> Result<Self, ProtocolError> {
        let subscription_id = body.u32("subscription_id")?;
        let sequence = body.u64("sequence")?;
        let topic = body.str8("topic")?;
        let headers = if flags & DELIVER_HAS_HEADERS != 0 {
            body.bytes16("headers")?
        } else {
            &[]
        };
        let meta = if flags & DELIVER_HAS_META != 0 {
            body.bytes16("meta")?
        } else {
            &[]
        };
        Ok(Deliver {
            subscription_id,
            sequence,
            topic,
            headers,
            meta,
            payload: body.rest(),
        })
    }

    pub(crate) fn encode_body(&self, buf: &mut BytesMut) -> Result<(), ProtocolError> {
        buf.put_u32_le(self.subscription_id);
        buf.put_u64_le(self.sequence);
        put_str8(buf, self.topic, "topic")?;
        if !self.headers.is_empty() {
            put_bytes16(buf, self.headers, "headers")?;
        }
        if !self.meta.is_empty() {
            put_bytes16(buf, self.meta, "meta")?;
        }
        buf.put_slice(self.payload);
        Ok(())
    }

    /// Appends this delivery as a whole frame (request id 0): the broker's hot path, no [`Frame`]
    /// built.
    ///
    /// # Errors
    /// A topic over 255 bytes or a block over 65,535 bytes (the broker never lets those in).
    ///
    /// [`Frame`]: crate::Frame
    #[inline]
    pub fn encode_frame(&self, buf: &mut BytesMut) -> Result<(), ProtocolError> {
        let start = begin(buf, Kind::Deliver, self.flags(), 0);
        if let Err(error) = self.encode_body(buf) {
            buf.truncate(start);
            return Err(error);
        }
        end(buf, start)
    }

    /// Exact size of this delivery's frame, length prefix included.
    #[inline]
    pub fn frame_len(&self) -> usize {
        let blocks = |b: &[u8]| if b.is_empty() { 0 } else { 2 + b.len() };
        crate::FRAME_HEADER_LEN
            + 4
            + 8
            + 1
            + self.topic.len()
            + blocks(self.headers)
            + blocks(self.meta)
            + self.payload.len()
    }
}
