//! Benchmark payloads: `publisher u32 | sequence u64 | scheduled_ns u64 | padding`, so every
//! subscriber can check loss and per-publisher order, and latency runs can measure from the
//! scheduled send time.

use bytes::{BufMut, Bytes, BytesMut};

/// Bytes of the fields every payload starts with (throughput needs 12, latency 20).
pub const HEADER: usize = 20;

/// Builds payloads without an allocation per message: one arena, split off message by message.
pub struct PayloadFactory {
    arena: BytesMut,
    size: usize,
    publisher: u32,
}

impl PayloadFactory {
    /// Payloads of `size` bytes (at least 12) from `publisher`.
    pub fn new(publisher: u32, size: usize) -> Self {
        PayloadFactory {
            arena: BytesMut::new(),
            size: size.max(12),
            publisher,
        }
    }

    /// The payload for `sequence`, stamped with `scheduled_ns` when it fits.
    pub fn make(&mut self, sequence: u64, scheduled_ns: u64) -> Bytes {
        if self.arena.capacity() - self.arena.len() < self.size {
            self.arena.reserve((self.size * 1024).max(64 * 1024));
        }
        self.arena.put_u32_le(self.publisher);
        self.arena.put_u64_le(sequence);
        if self.size >= HEADER {
            self.arena.put_u64_le(scheduled_ns);
            self.arena.put_bytes(0xAB, self.size - HEADER);
        } else {
            self.arena.put_bytes(0xAB, self.size - 12);
        }
        self.arena.split().freeze()
    }
}

/// Reads `(publisher, sequence, scheduled_ns)` back; `None` for a payload that is not ours.
pub fn parse(payload: &[u8]) -> Option<(u32, u64, u64)> {
    let publisher = u32::from_le_bytes(payload.get(0..4)?.try_into().ok()?);
    let sequence = u64::from_le_bytes(payload.get(4..12)?.try_into().ok()?);
    let scheduled = payload
        .get(12..20)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or_default()));
    Some((publisher, sequence, scheduled))
}
