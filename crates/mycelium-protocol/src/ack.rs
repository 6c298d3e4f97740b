//! ACK, NACK, IN_PROGRESS and TERM: a consumer's verdict on a delivery.

use bytes::{BufMut, BytesMut};

use crate::ProtocolError;
use crate::wire::{Reader, put_bytes16};

/// `ACK` and `IN_PROGRESS`: `subscription_id u32 | sequence u64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// The subscription the delivery came on.
    pub subscription_id: u32,
    /// The delivered message's per-topic sequence.
    pub sequence: u64,
}

impl Ack {
    pub(crate) fn decode(body: &mut Reader<'_>, frame: &'static str) -> Result<Self, ProtocolError> {
        let ack = Ack {
            subscription_id: body.u32("subscription_id")?,
            sequence: body.u64("sequence")?,
        };
        body.finish(frame)?;
        Ok(ack)
    }

    pub(crate) fn encode_body(&self, buf: &mut BytesMut) {
        buf.put_u32_le(self.subscription_id);
        buf.put_u64_le(self.sequence);
    }
}

/// `NACK`: `subscription_id u32 | sequence u64 | delay_ms u32 | reason str16`.
///
/// `delay_ms` 0 means "use the subscription's backoff schedule".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nack<'a> {
    /// Which delivery.
    pub ack: Ack,
    /// Requeue delay in milliseconds; 0 for the subscription's backoff.
    pub delay_ms: u32,
    /// The consumer's error text, kept with the message (and in the DLQ).
    pub reason: &'a str,
}

impl<'a> Nack<'a> {
    pub(crate) fn decode(body: &mut Reader<'a>) -> Result<Self, ProtocolError> {
        let ack = Ack {
            subscription_id: body.u32("subscription_id")?,
            sequence: body.u64("sequence")?,
        };
        let nack = Nack {
            ack,
            delay_ms: body.u32("delay_ms")?,
            reason: body.str16("reason")?,
        };
        body.finish("NACK")?;
        Ok(nack)
    }

    pub(crate) fn encode_body(&self, buf: &mut BytesMut) -> Result<(), ProtocolError> {
        self.ack.encode_body(buf);
        buf.put_u32_le(self.delay_ms);
        put_bytes16(buf, self.reason.as_bytes(), "reason")
    }
}

/// `TERM`: `subscription_id u32 | sequence u64 | reason str16`: no more attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Term<'a> {
    /// Which delivery.
    pub ack: Ack,
    /// The consumer's error text.
    pub reason: &'a str,
}

impl<'a> Term<'a> {
    pub(crate) fn decode(body: &mut Reader<'a>) -> Result<Self, ProtocolError> {
        let ack = Ack {
            subscription_id: body.u32("subscription_id")?,
            sequence: body.u64("sequence")?,
        };
        let term = Term {
            ack,
            reason: body.str16("reason")?,
        };
        body.finish("TERM")?;
        Ok(term)
    }

    pub(crate) fn encode_body(&self, buf: &mut BytesMut) -> Result<(), ProtocolError> {
        self.ack.encode_body(buf);
        put_bytes16(buf, self.reason.as_bytes(), "reason")
    }
}
