//! Record framing in a segment file: `length u32 | crc32c u32 | body (length bytes)`, the CRC-32C
//! over the body. Checksum on write, verify on read.

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
    let Some(frame) = data.get(offset..offset + FRAME_BYTES) else {
        return Probe::Short;
    };
    let len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
    let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
    if len < body_min || len > BODY_BYTES_MAX {
        return Probe::Corrupt;
    }
    let Some(body) = data.get(offset + FRAME_BYTES..offset + FRAME_BYTES + len) else {
        return Probe::Short;
    };
    if crc32c::crc32c(body) == crc {
        Probe::Valid { len }
    } else {
        Probe::Corrupt
    }
}
