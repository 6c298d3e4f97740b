//! PUBLISH, PUBLISH_BATCH and PUBLISH_OK.

use bytes::{BufMut, BytesMut};

use crate::ProtocolError;
use crate::headers::{Props, validate_headers};
use crate::wire::{Reader, put_bytes16, put_bytes32, put_str8};

/// PUBLISH flag: a header block follows the topic.
pub const PUBLISH_HAS_HEADERS: u8 = 0x01;
/// PUBLISH flag: a property block follows.
pub const PUBLISH_HAS_PROPS: u8 = 0x02;
/// PUBLISH flag: answer with PUBLISH_OK (or ERROR) once the message is routed or stored.
pub const PUBLISH_CONFIRM: u8 = 0x04;

/// `PUBLISH`: `topic str8 | [headers bytes16] | [props bytes16] | payload (rest of frame)`.
///
/// An empty topic asks the broker to map a TLV payload's relay domain to a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Publish<'a> {
    /// Target topic; empty for domain mapping.
    pub topic: &'a str,
    /// Raw header block (see [`crate::HeaderIter`]); empty for none.
    pub headers: &'a [u8],
    /// Message properties.
    pub props: Props<'a>,
    /// Whether the publisher wants a PUBLISH_OK.
    pub confirm: bool,
    /// The message payload.
    pub payload: &'a [u8],
}

impl<'a> Publish<'a> {
    pub(crate) fn flags(&self) -> u8 {
        let mut flags = 0;
        if !self.headers.is_empty() {
            flags |= PUBLISH_HAS_HEADERS;
        }
        if !self.props.is_empty() {
            flags |= PUBLISH_HAS_PROPS;
        }
        if self.confirm {
            flags |= PUBLISH_CONFIRM;
        }
        flags
    }

    pub(crate) fn decode(flags: u8, body: &mut Reader<'a>) -> Result<Self, ProtocolError> {
        let topic = body.str8("topic")?;
        let (headers, props) = decode_blocks(flags, body)?;
        Ok(Publish {
            topic,
            headers,
            props,
            confirm: flags & PUBLISH_CONFIRM != 0,
            payload: body.rest(),
        })
    }

    pub(crate) fn encode_body(&self, buf: &mut BytesMut) -> Result<(), ProtocolError> {
        put_str8(buf, self.topic, "topic")?;
        encode_blocks(buf, self.headers, &self.props)?;
        buf.put_slice(self.payload);
        Ok(())
    }
}

fn decode_blocks<'a>(flags: u8, body: &mut Reader<'a>) -> Result<(&'a [u8], Props<'a>), ProtocolError> {
    let headers = if flags & PUBLISH_HAS_HEADERS != 0 {
        body.bytes16("headers")?
    } else {
        &[]
    };
    validate_headers(headers)?;
    let props = if flags & PUBLISH_HAS_PROPS != 0 {
        Props::decode(body.bytes16("props")?)?
    } else {
        Props::default()
    };
    Ok((headers, props))
}

fn encode_blocks(buf: &mut BytesMut, headers: &[u8], props: &Props<'_>) -> Result<(), ProtocolError> {
    if !headers.is_empty() {
        put_bytes16(buf, headers, "headers")?;
    }
    if !props.is_empty() {
        let mut block = BytesMut::new();
        props.encode(&mut block)?;
        put_bytes16(buf, &block, "props")?;
    }
    Ok(())
}

/// `PUBLISH_BATCH`: `count u32`, then `count` entries of
/// `flags u8 | topic str8 | [headers bytes16] | [props bytes16] | payload bytes32`.
///
/// The whole batch is checked on decode, so a receiver can refuse it before acting on any entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishBatch<'a> {
    count: u32,
    entries: &'a [u8],
}

impl<'a> PublishBatch<'a> {
    pub(crate) fn decode(body: &mut Reader<'a>) -> Result<Self, ProtocolError> {
        let count = body.u32("count")?;
        let entries = body.rest();
        let batch = PublishBatch { count, entries };
        let mut seen = 0u32;
        for entry in batch.iter() {
            entry?;
            seen += 1;
        }
        if seen != count {
            return Err(ProtocolError::InvalidValue {
                field: "batch count",
                value: count.into(),
            });
        }
        Ok(batch)
    }

    /// Number of messages in the batch.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The messages of the batch, in order.
    pub fn iter(&self) -> BatchIter<'a> {
        BatchIter {
            reader: Reader::new(self.entries),
            failed: false,
        }
    }

    pub(crate) fn encode_body(&self, buf: &mut BytesMut) {
        buf.put_u32_le(self.count);
        buf.put_slice(self.entries);
    }
}

/// Iterator over a [`PublishBatch`].
#[derive(Debug, Clone)]
pub struct BatchIter<'a> {
    reader: Reader<'a>,
    failed: bool,
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = Result<Publish<'a>, ProtocolError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.reader.is_empty() {
            return None;
        }
        let entry = (|| {
            let flags = self.reader.u8("entry flags")?;
            let topic = self.reader.str8("topic")?;
            let (headers, props) = decode_blocks(flags, &mut self.reader)?;
            let payload = self.reader.bytes32("payload")?;
            Ok(Publish {
                topic,
                headers,
                props,
                confirm: flags & PUBLISH_CONFIRM != 0,
                payload,
            })
        })();
        self.failed = entry.is_err();
        Some(entry)
    }
}

/// Builds a PUBLISH_BATCH frame entry by entry, straight into an output buffer.
#[derive(Debug)]
pub struct BatchWriter<'b> {
    buf: &'b mut BytesMut,
    start: usize,
    count_at: usize,
    count: u32,
}

impl<'b> BatchWriter<'b> {
    /// Starts a batch frame at the end of `buf`.
    pub fn new(buf: &'b mut BytesMut, request_id: u32) -> Self {
        let start = crate::frame::begin(buf, crate::Kind::PublishBatch, 0, request_id);
        let count_at = buf.len();
        buf.put_u32_le(0);
        BatchWriter {
            buf,
            start,
            count_at,
            count: 0,
        }
    }

    /// Appends one message.
    ///
    /// # Errors
    /// A field too long for its prefix; nothing is appended then.
    pub fn push(&mut self, publish: &Publish<'_>) -> Result<(), ProtocolError> {
        let entry_start = self.buf.len();
        let result = (|| {
            self.buf.put_u8(publish.flags());
            put_str8(self.buf, publish.topic, "topic")?;
            encode_blocks(self.buf, publish.headers, &publish.props)?;
            put_bytes32(self.buf, publish.payload, "payload")
        })();
        match result {
            Ok(()) => {
                self.count += 1;
                Ok(())
            }
            Err(error) => {
                self.buf.truncate(entry_start);
                Err(error)
            }
        }
    }

    /// Messages pushed so far.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether nothing was pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes the frame has so far.
    pub fn frame_len(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Completes the frame.
    ///
    /// # Errors
    /// A frame over 4 GiB.
    pub fn finish(self) -> Result<(), ProtocolError> {
        self.buf[self.count_at..self.count_at + 4].copy_from_slice(&self.count.to_le_bytes());
        crate::frame::end(self.buf, self.start)
    }
}

/// PUBLISH_OK flag: the message was a duplicate of an earlier one (same idempotency key).
pub const PUBLISH_OK_DUPLICATE: u8 = 0x01;

/// `PUBLISH_OK`: `sequence u64 | message_id [16]`, carrying the request id of the PUBLISH it
/// confirms. A confirmed PUBLISH_BATCH gets one PUBLISH_OK per entry, in entry order, each with the
/// batch's request id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishOk {
    /// The message's per-topic sequence.
    pub sequence: u64,
    /// The broker-assigned message id (UUIDv7 bytes); all zero on topics that keep no ids.
    pub message_id: [u8; 16],
    /// Whether this publish was recognised as a duplicate.
    pub duplicate: bool,
}

impl PublishOk {
    pub(crate) fn flags(&self) -> u8 {
        if self.duplicate { PUBLISH_OK_DUPLICATE } else { 0 }
    }

    pub(crate) fn decode(flags: u8, body: &mut Reader<'_>) -> Result<Self, ProtocolError> {
        let sequence = body.u64("sequence")?;
        let mut message_id = [0u8; 16];
        message_id.copy_from_slice(body.take(16, "message_id")?);
        body.finish("PUBLISH_OK")?;
        Ok(PublishOk {
            sequence,
            message_id,
            duplicate: flags & PUBLISH_OK_DUPLICATE != 0,
        })
    }

    pub(crate) fn encode_body(&self, buf: &mut BytesMut) {
        buf.put_u64_le(self.sequence);
        buf.put_slice(&self.message_id);
    }
}
