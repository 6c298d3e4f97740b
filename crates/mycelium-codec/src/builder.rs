//! Building messages into a caller-provided buffer.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::BytesMut;

use crate::header::{CHECKSUM_OFFSET, HEADER_LEN, MAGIC, VERSION, compute_checksum};
use crate::message::{EXTENDED_MARKER, EXTENDED_VALUE_MAX, STANDARD_VALUE_MAX};
use crate::records::Record;
use crate::validate::check_domain_rules;
use crate::{CodecError, RelayDomain};

/// Default limit on a built message's payload: 16 MiB.
pub const DEFAULT_PAYLOAD_BYTES_MAX: usize = 16 * 1024 * 1024;

/// A growable byte buffer a message can be built into: `Vec<u8>` or `BytesMut`.
pub trait MessageBuf: sealed::Sealed {
    /// Bytes in the buffer.
    fn len(&self) -> usize;
    /// Whether the buffer is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Appends bytes.
    fn extend_from_slice(&mut self, bytes: &[u8]);
    /// Drops everything from `len` on.
    fn truncate(&mut self, len: usize);
    /// The bytes, mutably.
    fn as_mut_slice(&mut self) -> &mut [u8];
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for Vec<u8> {}
    impl Sealed for bytes::BytesMut {}
}

impl MessageBuf for Vec<u8> {
    fn len(&self) -> usize {
        Vec::len(self)
    }
    fn extend_from_slice(&mut self, bytes: &[u8]) {
        Vec::extend_from_slice(self, bytes);
    }
    fn truncate(&mut self, len: usize) {
        Vec::truncate(self, len);
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        self
    }
}

impl MessageBuf for BytesMut {
    fn len(&self) -> usize {
        BytesMut::len(self)
    }
    fn extend_from_slice(&mut self, bytes: &[u8]) {
        BytesMut::extend_from_slice(self, bytes);
    }
    fn truncate(&mut self, len: usize) {
        BytesMut::truncate(self, len);
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        self
    }
}

/// Writes one message (header + TLVs) at the end of a buffer.
///
/// The header is written on [`MessageBuilder::new`]; [`MessageBuilder::finish`] fills in
/// `payload_size`, `sequence`, `timestamp_ns` (now, unless set) and the checksum. Several messages
/// can be built back to back into one buffer. A builder dropped without `finish` removes what it
/// wrote, so a failed build never leaves half a message behind. With a reused buffer that has the
/// capacity, building allocates nothing.
///
/// Every record is checked as it is added: legal type, the header's domain (or system/vendor), the
/// exact size of fixed layouts, and the payload limit. A finished message therefore always passes
/// [`crate::validate`].
///
/// ```
/// use mycelium_codec::{MessageBuilder, RelayDomain, SourceType, records::Trade, validate};
///
/// let mut buf = Vec::with_capacity(128);
/// let mut builder = MessageBuilder::new(&mut buf, RelayDomain::MarketData, SourceType::KrakenCollector)
///     .sequence(1)
///     .timestamp_ns(1_700_000_000_000_000_000);
/// let trade = Trade {
///     instrument_id: 42.into(),
///     price: 250_050_000_000.into(), // 2500.5
///     volume: 150_000_000.into(),    // 1.5
///     timestamp_ns: 1_700_000_000_000_000_000.into(),
///     side: 1,
/// };
/// builder.add_record(&trade)?;
/// builder.finish();
///
/// let message = validate(&buf)?;
/// assert_eq!(message.record::<Trade>().unwrap()?, &trade);
/// # Ok::<(), mycelium_codec::CodecError>(())
/// ```
#[derive(Debug)]
pub struct MessageBuilder<'b, B: MessageBuf> {
    buf: &'b mut B,
    start: usize,
    domain: RelayDomain,
    sequence: u64,
    timestamp_ns: Option<u64>,
    payload_bytes_max: usize,
    finished: bool,
}

impl<'b, B: MessageBuf> MessageBuilder<'b, B> {
    /// Starts a message of `domain` from `source` at the end of `buf`.
    pub fn new(buf: &'b mut B, domain: RelayDomain, source: impl Into<u8>) -> Self {
        let start = buf.len();
        let mut header = [0u8; HEADER_LEN];
        header[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        header[4] = domain as u8;
        header[5] = VERSION;
        header[6] = source.into();
        buf.extend_from_slice(&header);
        MessageBuilder {
            buf,
            start,
            domain,
            sequence: 0,
            timestamp_ns: None,
            payload_bytes_max: DEFAULT_PAYLOAD_BYTES_MAX,
            finished: false,
        }
    }

    /// Sets the sequence number (default 0).
    pub fn sequence(mut self, sequence: u64) -> Self {
        self.sequence = sequence;
        self
    }

    /// Sets the timestamp; without it `finish` stamps the current time.
    pub fn timestamp_ns(mut self, timestamp_ns: u64) -> Self {
        self.timestamp_ns = Some(timestamp_ns);
        self
    }

    /// Sets the flags byte (default 0).
    pub fn flags(self, flags: u8) -> Self {
        let at = self.start + 7;
        self.buf.as_mut_slice()[at] = flags;
        self
    }

    /// Sets the payload limit (default [`DEFAULT_PAYLOAD_BYTES_MAX`], at most `u32::MAX`).
    pub fn payload_bytes_max(mut self, max: usize) -> Self {
        self.payload_bytes_max = max.min(u32::MAX as usize);
        self
    }

    /// Bytes of payload written so far.
    pub fn payload_len(&self) -> usize {
        self.buf.len() - self.start - HEADER_LEN
    }

    /// Appends a typed record.
    ///
    /// # Errors
    /// `WrongDomain` when `R` belongs to another domain; `PayloadTooLarge` past the limit.
    #[inline]
    pub fn add_record<R: Record>(&mut self, record: &R) -> Result<(), CodecError> {
        self.add_tlv(R::TLV_TYPE, record.as_bytes())
    }

    /// Appends a TLV record, in the standard form when the value fits 255 bytes and in the extended
    /// form otherwise. Nothing is written when it fails.
    ///
    /// # Errors
    /// `InvalidTlvType` (0 or 255), `WrongDomain`, `WrongSize` (a fixed layout of another size),
    /// `ValueTooLarge` (over 65,535 bytes), `PayloadTooLarge` (past the builder's limit).
    #[inline]
    pub fn add_tlv(&mut self, tlv_type: impl Into<u8>, value: &[u8]) -> Result<(), CodecError> {
        let tlv_type = tlv_type.into();
        let offset = self.buf.len() - self.start;
        if tlv_type == 0 || tlv_type == EXTENDED_MARKER {
            return Err(CodecError::InvalidTlvType { offset, tlv_type });
        }
        check_domain_rules(self.domain, tlv_type, value.len())?;
        let length = value.len();
        if length > EXTENDED_VALUE_MAX {
            return Err(CodecError::ValueTooLarge {
                tlv_type,
                length,
                max: EXTENDED_VALUE_MAX,
            });
        }
        let framing = if length <= STANDARD_VALUE_MAX { 2 } else { 5 };
        let size = self.payload_len() + framing + length;
        if size > self.payload_bytes_max {
            return Err(CodecError::PayloadTooLarge {
                size,
                max: self.payload_bytes_max,
            });
        }
        if framing == 2 {
            self.buf.extend_from_slice(&[tlv_type, length as u8]);
        } else {
            let [lo, hi] = (length as u16).to_le_bytes();
            self.buf
                .extend_from_slice(&[EXTENDED_MARKER, 0, tlv_type, lo, hi]);
        }
        self.buf.extend_from_slice(value);
        Ok(())
    }

    /// Fills in the header and returns the message's length in bytes; the message is the last
    /// that many bytes of the buffer.
    #[inline]
    pub fn finish(mut self) -> usize {
        let timestamp_ns = self.timestamp_ns.unwrap_or_else(now_ns);
        let payload_size = self.payload_len() as u32; // add_tlv keeps it <= u32::MAX
        let message = &mut self.buf.as_mut_slice()[self.start..];
        message[8..16].copy_from_slice(&self.sequence.to_le_bytes());
        message[16..24].copy_from_slice(&timestamp_ns.to_le_bytes());
        message[24..28].copy_from_slice(&payload_size.to_le_bytes());
        let checksum = compute_checksum(message);
        message[CHECKSUM_OFFSET..HEADER_LEN].copy_from_slice(&checksum.to_le_bytes());
        self.finished = true;
        message.len()
    }
}

impl<B: MessageBuf> Drop for MessageBuilder<'_, B> {
    fn drop(&mut self) {
        if !self.finished {
            self.buf.truncate(self.start);
        }
    }
}

/// Nanoseconds since the Unix epoch (0 for a clock before 1970).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl From<RelayDomain> for u8 {
    fn from(domain: RelayDomain) -> u8 {
        domain as u8
    }
}

impl From<crate::SourceType> for u8 {
    fn from(source: crate::SourceType) -> u8 {
        source as u8
    }
}

impl From<crate::TlvType> for u8 {
    fn from(tlv_type: crate::TlvType) -> u8 {
        tlv_type as u8
    }
}
