//! Record framing in a segment file: `length u32 | crc32c u32 | body (length bytes)`, the CRC-32C
//! over the body. Checksum on write, verify on read.

use std::ops::Range;

use bytes::{BufMut, BytesMut};

/// Bytes of framing before each body.
pub const FRAME_BYTES: usize = 8;
/// Largest body accepted (a record longer than this in a file is treated as corruption).
pub const BODY_BYTES_MAX: usize = 256 * 1024 * 1024;

/// Appends one framed record.
pub fn frame(buf: &mut BytesMut, body: &[u8]) {
    buf.put_u32_le(body.len() as u32);
    buf.put_u32_le(crc32c::crc32c(body));
    buf.put_slice(body);
}

/// What lies at a position of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// A whole record whose checksum matches: body at `offset + FRAME_BYTES`, `len` bytes.
    Valid {
        /// Body length.
        len: usize,
    },
    /// Too few bytes left for the frame or the body it declares (a torn write, if at the end).
    Short,
    /// A declared length out of range, or a checksum mismatch.
    Corrupt,
}

/// Checks the record at `offset` of `data`.
pub fn probe(data: &[u8], offset: usize, body_min: usize) -> Probe {
    probe_with(data, offset, body_min, |body| crc32c::crc32c(&data[body]))
}

/// [`probe`], with the body's CRC-32C computed by `crc` from the body's range in `data` (recovery
/// passes one that takes constant time, see `range_crc.rs`).
pub fn probe_with(
    data: &[u8],
    offset: usize,
    body_min: usize,
    crc: impl FnOnce(Range<usize>) -> u32,
) -> Probe {
    match frame_at(data, offset, body_min) {
        Ok((len, stored)) if crc(body_range(offset, len)) == stored => Probe::Valid { len },
        Ok(_) => Probe::Corrupt,
        Err(probe) => probe,
    }
}

/// The frame at `offset` if it could be a record, before its checksum is checked: the body's
/// length (in range, and the body within `data`) and the CRC stored for it. Otherwise what
/// [`probe`] reports. Cheap, so recovery checks this and the body's contents before the CRC.
pub fn frame_at(data: &[u8], offset: usize, body_min: usize) -> Result<(usize, u32), Probe> {
    let Some(frame) = data.get(offset..offset + FRAME_BYTES) else {
        return Err(Probe::Short);
    };
    let len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
    let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
    if len < body_min || len > BODY_BYTES_MAX {
        return Err(Probe::Corrupt);
    }
    if data.len() < body_range(offset, len).end {
        return Err(Probe::Short);
    }
    Ok((len, crc))
}

/// Where the body of the record at `offset` lies, `len` bytes long.
pub fn body_range(offset: usize, len: usize) -> Range<usize> {
    offset + FRAME_BYTES..offset + FRAME_BYTES + len
}
