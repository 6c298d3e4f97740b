//! Checked little-endian reads and writes shared by every frame body.

use bytes::{BufMut, BytesMut};

use crate::ProtocolError;

/// A cursor over a frame body that never reads past its end.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, pos: 0 }
    }

    pub(crate) fn take(&mut self, len: usize, field: &'static str) -> Result<&'a [u8], ProtocolError> {
        let rest = &self.bytes[self.pos..];
        let slice = rest.get(..len).ok_or(ProtocolError::Truncated {
            field,
            need: len,
            have: rest.len(),
        })?;
        self.pos += len;
        Ok(slice)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, ProtocolError> {
        Ok(self.take(1, field)?[0])
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, ProtocolError> {
        let b = self.take(2, field)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, ProtocolError> {
        let b = self.take(4, field)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, ProtocolError> {
        let b = self.take(8, field)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A UTF-8 string with a `u8` length prefix.
    pub(crate) fn str8(&mut self, field: &'static str) -> Result<&'a str, ProtocolError> {
        let len = self.u8(field)? as usize;
        let bytes = self.take(len, field)?;
        std::str::from_utf8(bytes).map_err(|_| ProtocolError::InvalidUtf8 { field })
    }

    /// A UTF-8 string with a `u16` length prefix.
    pub(crate) fn str16(&mut self, field: &'static str) -> Result<&'a str, ProtocolError> {
        let bytes = self.bytes16(field)?;
        std::str::from_utf8(bytes).map_err(|_| ProtocolError::InvalidUtf8 { field })
    }

    /// Bytes with a `u16` length prefix.
    pub(crate) fn bytes16(&mut self, field: &'static str) -> Result<&'a [u8], ProtocolError> {
        let len = self.u16(field)? as usize;
        self.take(len, field)
    }

    /// Bytes with a `u32` length prefix.
    pub(crate) fn bytes32(&mut self, field: &'static str) -> Result<&'a [u8], ProtocolError> {
        let len = self.u32(field)? as usize;
        self.take(len, field)
    }

    /// Everything left.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let rest = &self.bytes[self.pos..];
        self.pos = self.bytes.len();
        rest
    }

    pub(crate) fn rest_len(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    /// Fails unless the whole body was consumed.
    pub(crate) fn finish(&self, frame: &'static str) -> Result<(), ProtocolError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::TrailingBytes {
                frame,
                extra: self.bytes.len() - self.pos,
            })
        }
    }
}

pub(crate) fn put_str8(buf: &mut BytesMut, value: &str, field: &'static str) -> Result<(), ProtocolError> {
    let len = u8::try_from(value.len()).map_err(|_| ProtocolError::FieldTooLong {
        field,
        len: value.len(),
        max: u8::MAX as usize,
    })?;
    buf.put_u8(len);
    buf.put_slice(value.as_bytes());
    Ok(())
}

pub(crate) fn put_bytes16(
    buf: &mut BytesMut,
    value: &[u8],
    field: &'static str,
) -> Result<(), ProtocolError> {
    let len = u16::try_from(value.len()).map_err(|_| ProtocolError::FieldTooLong {
        field,
        len: value.len(),
        max: u16::MAX as usize,
    })?;
    buf.put_u16_le(len);
    buf.put_slice(value);
    Ok(())
}

pub(crate) fn put_bytes32(
    buf: &mut BytesMut,
    value: &[u8],
    field: &'static str,
) -> Result<(), ProtocolError> {
    let len = u32::try_from(value.len()).map_err(|_| ProtocolError::FieldTooLong {
        field,
        len: value.len(),
        max: u32::MAX as usize,
    })?;
    buf.put_u32_le(len);
    buf.put_slice(value);
    Ok(())
}
