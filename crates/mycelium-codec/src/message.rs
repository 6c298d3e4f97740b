//! The zero-copy view over a received message and its TLV iterator.

use zerocopy::FromBytes;

use crate::header::{HEADER_LEN, Header};
use crate::records::Record;
use crate::{CodecError, RelayDomain, SourceType};

/// One TLV record, borrowed from the message bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlv<'a> {
    /// The record's type (1-254).
    pub tlv_type: u8,
    /// The record's value bytes.
    pub value: &'a [u8],
    /// Offset of the record from the start of the message.
    pub offset: usize,
}

impl<'a> Tlv<'a> {
    /// Views the value as the typed record `R`.
    ///
    /// # Errors
    /// [`CodecError::WrongSize`] if the value is not `R`'s size. The type byte is not checked: call
    /// it on a record whose `tlv_type` is `R::TLV_TYPE`.
    pub fn record<R: Record>(&self) -> Result<&'a R, CodecError> {
        R::from_value(self.value)
    }
}

/// A message viewed in place: header accessors and a TLV iterator, never allocating.
///
/// Construction checks only what makes the view safe to walk (a whole header and a `payload_size`
/// that matches the slice). Call the functions of [`crate::validate`] for the protocol's rules.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    header: &'a Header,
    bytes: &'a [u8],
}

impl<'a> Message<'a> {
    /// Views `bytes` as exactly one message.
    ///
    /// # Errors
    /// [`CodecError::UnexpectedEof`] when `bytes` is shorter than a header;
    /// [`CodecError::PayloadSizeMismatch`] when `payload_size` disagrees with the slice length.
    #[inline]
    pub fn new(bytes: &'a [u8]) -> Result<Self, CodecError> {
        let header = header_of(bytes)?;
        let actual = bytes.len() - HEADER_LEN;
        if header.payload_size.get() as usize != actual {
            return Err(CodecError::PayloadSizeMismatch {
                declared: header.payload_size.get(),
                actual,
            });
        }
        Ok(Message { header, bytes })
    }

    /// Views the first message of a buffer holding several back to back; returns it and the rest.
    ///
    /// # Errors
    /// [`CodecError::UnexpectedEof`] when the buffer holds less than the header plus `payload_size`.
    pub fn split_first(bytes: &'a [u8]) -> Result<(Self, &'a [u8]), CodecError> {
        let header = header_of(bytes)?;
        let total = HEADER_LEN + header.payload_size.get() as usize;
        if bytes.len() < total {
            return Err(CodecError::UnexpectedEof {
                offset: HEADER_LEN,
                need: total - HEADER_LEN,
                have: bytes.len() - HEADER_LEN,
            });
        }
        let (this, rest) = bytes.split_at(total);
        Ok((Message { header, bytes: this }, rest))
    }

    /// The header, viewed in place.
    #[inline]
    pub fn header(&self) -> &'a Header {
        self.header
    }

    /// The whole message: header and payload.
    #[inline]
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The TLV payload after the header.
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        &self.bytes[HEADER_LEN..]
    }

    /// The relay domain.
    ///
    /// # Errors
    /// [`CodecError::UnknownDomain`] for a byte that names no domain.
    pub fn relay_domain(&self) -> Result<RelayDomain, CodecError> {
        RelayDomain::try_from(self.header.relay_domain)
    }

    /// The source byte as sent (unknown values are carried through).
    pub fn source(&self) -> u8 {
        self.header.source
    }

    /// The source as a known [`SourceType`], `None` for a value this codec does not name.
    pub fn source_type(&self) -> Option<SourceType> {
        SourceType::try_from(self.header.source).ok()
    }

    /// The producer's flags byte.
    pub fn flags(&self) -> u8 {
        self.header.flags
    }

    /// The producer's sequence number.
    pub fn sequence(&self) -> u64 {
        self.header.sequence.get()
    }

    /// The producer's timestamp, in ns since the Unix epoch.
    pub fn timestamp_ns(&self) -> u64 {
        self.header.timestamp_ns.get()
    }

    /// The stored checksum.
    pub fn checksum(&self) -> u32 {
        self.header.checksum.get()
    }

    /// Iterates the TLV records. The iterator yields an error once, at the first malformed record,
    /// and then ends; it never reads outside the payload.
    #[inline]
    pub fn tlvs(&self) -> TlvIter<'a> {
        TlvIter {
            payload: self.payload(),
            pos: 0,
            failed: false,
        }
    }

    /// The first record of type `tlv_type`, if the TLVs up to it are well formed.
    pub fn find(&self, tlv_type: u8) -> Option<Tlv<'a>> {
        self.tlvs().map_while(Result::ok).find(|t| t.tlv_type == tlv_type)
    }

    /// The first record of `R`'s type, viewed as `R`.
    ///
    /// # Errors
    /// [`CodecError::WrongSize`] if that record has the wrong size.
    pub fn record<R: Record>(&self) -> Option<Result<&'a R, CodecError>> {
        self.find(R::TLV_TYPE as u8).map(|t| t.record::<R>())
    }
}

#[inline]
fn header_of(bytes: &[u8]) -> Result<&Header, CodecError> {
    Header::ref_from_prefix(bytes)
        .map(|(header, _)| header)
        .map_err(|_| CodecError::UnexpectedEof {
            offset: 0,
            need: HEADER_LEN,
            have: bytes.len(),
        })
}

/// Iterator over a payload's TLV records; see [`Message::tlvs`].
#[derive(Debug, Clone)]
pub struct TlvIter<'a> {
    payload: &'a [u8],
    pos: usize,
    failed: bool,
}

/// Byte that introduces an extended record: `255, 0, type, length: u16`.
pub const EXTENDED_MARKER: u8 = 255;
/// Largest value a standard record carries.
pub const STANDARD_VALUE_MAX: usize = u8::MAX as usize;
/// Largest value an extended record carries.
pub const EXTENDED_VALUE_MAX: usize = u16::MAX as usize;

impl<'a> Iterator for TlvIter<'a> {
    type Item = Result<Tlv<'a>, CodecError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.payload.len() {
            return None;
        }
        match read_tlv(self.payload, self.pos) {
            Ok((tlv, next)) => {
                self.pos = next;
                Some(Ok(tlv))
            }
            Err(error) => {
                self.failed = true;
                Some(Err(error))
            }
        }
    }
}

/// Reads the record at `pos` of `payload`; returns it and the position after it.
#[inline]
fn read_tlv(payload: &[u8], pos: usize) -> Result<(Tlv<'_>, usize), CodecError> {
    let offset = HEADER_LEN + pos;
    let rest = &payload[pos..];
    let eof = |need: usize| CodecError::UnexpectedEof {
        offset,
        need,
        have: rest.len(),
    };
    let (&kind, after_kind) = rest.split_first().ok_or_else(|| eof(2))?;
    let (tlv_type, length, value_start) = match kind {
        0 => return Err(CodecError::InvalidTlvType { offset, tlv_type: 0 }),
        EXTENDED_MARKER => {
            let [marker, inner, lo, hi] = *after_kind.first_chunk::<4>().ok_or_else(|| eof(5))?;
            if marker != 0 {
                return Err(CodecError::BadExtendedMarker {
                    offset,
                    found: marker,
                });
            }
            if inner == 0 || inner == EXTENDED_MARKER {
                return Err(CodecError::InvalidTlvType {
                    offset,
                    tlv_type: inner,
                });
            }
            (inner, u16::from_le_bytes([lo, hi]) as usize, 5)
        }
        _ => {
            let &length = after_kind.first().ok_or_else(|| eof(2))?;
            (kind, length as usize, 2)
        }
    };
    let value = rest
        .get(value_start..value_start + length)
        .ok_or(CodecError::TlvOverrun {
            offset,
            tlv_type,
            length,
        })?;
    Ok((
        Tlv {
            tlv_type,
            value,
            offset,
        },
        pos + value_start + length,
    ))
}
