//! SUBSCRIBE, SUBSCRIBE_OK, UNSUBSCRIBE, UNSUBSCRIBE_OK.

use bytes::{BufMut, BytesMut};

use crate::ProtocolError;
use crate::wire::{Reader, put_bytes16, put_str8};

/// SUBSCRIBE flag: a queue group name follows the pattern.
pub const SUBSCRIBE_HAS_GROUP: u8 = 0x01;
/// SUBSCRIBE flag: an options block follows (durable name, start position, ack deadline, filter:
/// defined by the delivery-guarantee and filter milestones; a server that does not know an option
/// refuses the subscription).
pub const SUBSCRIBE_HAS_OPTIONS: u8 = 0x02;

/// `SUBSCRIBE`: `pattern str8 | [group str8] | [options bytes16]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Subscribe<'a> {
    /// Topic or wildcard pattern (`*` one token, `>` one or more trailing tokens).
    pub pattern: &'a str,
    /// Queue group; `None` for a plain subscription.
    pub group: Option<&'a str>,
    /// Raw options block; empty for none.
    pub options: &'a [u8],
}

impl<'a> Subscribe<'a> {
    pub(crate) fn flags(&self) -> u8 {
        let mut flags = 0;
        if self.group.is_some() {
            flags |= SUBSCRIBE_HAS_GROUP;
        }
        if !self.options.is_empty() {
            flags |= SUBSCRIBE_HAS_OPTIONS;
        }
        flags
    }

    pub(crate) fn decode(flags: u8, body: &mut Reader<'a>) -> Result<Self, ProtocolError> {
        let pattern = body.str8("pattern")?;
        let group = if flags & SUBSCRIBE_HAS_GROUP != 0 {
            Some(body.str8("group")?)
        } else {
            None
        };
        let options = if flags & SUBSCRIBE_HAS_OPTIONS != 0 {
            body.bytes16("options")?
        } else {
            &[]
        };
        body.finish("SUBSCRIBE")?;
        Ok(Subscribe {
            pattern,
            group,
            options,
        })
    }

    pub(crate) fn encode_body(&self, buf: &mut BytesMut) -> Result<(), ProtocolError> {
        put_str8(buf, self.pattern, "pattern")?;
        if let Some(group) = self.group {
            put_str8(buf, group, "group")?;
        }
        if !self.options.is_empty() {
            put_bytes16(buf, self.options, "options")?;
        }
        Ok(())
    }
}

/// `SUBSCRIBE_OK`, `UNSUBSCRIBE`, `UNSUBSCRIBE_OK`: `subscription_id u32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionRef {
    /// The subscription id the server assigned (unique per connection).
    pub subscription_id: u32,
}

impl SubscriptionRef {
    pub(crate) fn decode(body: &mut Reader<'_>, frame: &'static str) -> Result<Self, ProtocolError> {
        let subscription_id = body.u32("subscription_id")?;
        body.finish(frame)?;
        Ok(SubscriptionRef { subscription_id })
    }

    pub(crate) fn encode_body(&self, buf: &mut BytesMut) {
        buf.put_u32_le(self.subscription_id);
    }
}
