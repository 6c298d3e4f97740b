//! One segment file of a topic's log: records, a sparse index for seeking by sequence and time,
//! and the recovery scan that rebuilds it.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::message::{MESSAGE_MIN_BYTES, StoredMessage};
use crate::record::{FRAME_BYTES, Probe, frame, probe};
use crate::{RecoveryReport, StorageError};

/// One index entry per this many records (plus the first of the segment).
const INDEX_EVERY: u64 = 64;
/// Bytes read per system call when scanning records.
const READ_CHUNK: usize = 256 * 1024;
// Disk space prepared ahead of the write position (`LogConfig::reserve_bytes`).
//
// Appending to a file makes every fdatasync also allocate blocks and write the allocation's
// metadata: measured on this project's ext4 machines, a 40 KB append + fdatasync takes ~1.4 ms,
// and ~0.19 ms when the blocks were reserved beforehand with `fallocate(KEEP_SIZE)`. Reserved
// blocks are still marked unwritten, so each sync also writes their conversion; blocks that
// already hold zeros are plain overwrites, and the sync flushes data only (18 KB appends + fdatasync:
// ~300 us reserved, ~175 us over zeros; with the zeros themselves written ahead in 1 MiB pieces
// that each ride along with one sync, ~255 us). So by default (`LogConfig::zero_fill`) the active
// segment keeps zeros written ahead of its records, as PostgreSQL does for its WAL
// (`wal_init_zero`); otherwise it reserves with `fallocate(KEEP_SIZE)`.
//
// Zeros beyond the records are never a record (a record's body is at least `MESSAGE_MIN_BYTES`
// long), so recovery reads an all-zero tail as free space, not as damage. A sealed segment gives
// back what it did not use.

/// The most zeros one append writes ahead (the rest follows with later appends).
const ZERO_CHUNK: usize = 1 << 20;
static ZEROS: [u8; ZERO_CHUNK] = [0; ZERO_CHUNK];

#[derive(Debug, Clone, Copy)]
struct IndexEntry {
    sequence: u64,
    offset: u64,
    publish_ns: u64,
}

/// A segment file.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) base: u64,
    path: PathBuf,
    /// Shared with [`SyncTarget`]s, so a sync runs without the log's lock.
    file: Arc<File>,
    /// Bytes of whole records (the file is cut back to this on a failed write).
    pub(crate) len: u64,
    /// Disk space prepared up to this offset: reserved, or zero-filled (then the file's size).
    reserved: u64,
    index: Vec<IndexEntry>,
    /// Byte ranges found corrupt at recovery, skipped by reads.
    holes: Vec<(u64, u64)>,
    pub(crate) first_seq: Option<u64>,
    pub(crate) last_seq: Option<u64>,
    pub(crate) last_publish_ns: u64,
    since_index: u64,
}

pub(crate) fn file_name(base: u64) -> String {
    format!("{base:020}.log")
}

fn seq_and_time(body: &[u8]) -> (u64, u64) {
    let seq = u64::from_le_bytes(body[0..8].try_into().unwrap_or_default());
    let ts = u64::from_le_bytes(body[8..16].try_into().unwrap_or_default());
    (seq, ts)
}

impl Segment {
    /// Creates an empty segment for sequences from `base`.
    pub(crate) fn create(dir: &Path, base: u64) -> Result<Segment, StorageError> {
        let path = dir.join(file_name(base));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(crate::layout::FILE_MODE)
            .open(&path)
            .map_err(|e| StorageError::io(&path, e))?;
        Ok(Segment::empty(base, path, file))
    }

    fn empty(base: u64, path: PathBuf, file: File) -> Segment {
        Segment {
            base,
            path,
            file: Arc::new(file),
            len: 0,
            reserved: 0,
            index: Vec::new(),
            holes: Vec::new(),
            first_seq: None,
            last_seq: None,
            last_publish_ns: 0,
            since_index: 0,
        }
    }

    /// Opens and verifies an existing segment. `last_seen` is the last sequence of the previous
    /// segment; `is_last` allows a torn tail to be cut off.
    pub(crate) fn recover(
        path: &Path,
        base: u64,
        last_seen: Option<u64>,
        is_last: bool,
        report: &mut RecoveryReport,
    ) -> Result<Segment, StorageError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| StorageError::io(path, e))?;
        let data = std::fs::read(path).map_err(|e| StorageError::io(path, e))?;
        let mut segment = Segment::empty(base, path.to_owned(), file);
        let mut pos = 0usize;
        let mut last = last_seen;
        // Bytes of the file that stay: all of it, unless a torn tail of the last segment is cut.
        segment.len = data.len() as u64;
        while pos < data.len() {
            match probe(&data, pos, MESSAGE_MIN_BYTES) {
                Probe::Valid { len } => {
                    let (seq, ts) = seq_and_time(&data[pos + FRAME_BYTES..]);
                    if last.is_some_and(|l| seq <= l) {
                        // A valid record that does not advance the log: treat as corruption.
                        let next = resync(&data, pos + 1, last);
                        segment.hole(pos, next, report);
                        pos = next;
                        continue;
                    }
                    if let Some(l) = last
                        && seq > l + 1
                    {
                        report.missing_sequences += seq - l - 1;
                    }
                    segment.note(seq, pos as u64, ts);
                    last = Some(seq);
                    pos += FRAME_BYTES + len;
                    report.records += 1;
                }
                Probe::Short | Probe::Corrupt => {
                    if data[pos..].iter().all(|&b| b == 0) {
                        // Space zero-filled ahead of the records: free, not damage. The active
                        // segment writes over it; a sealed one gives it back.
                        segment.len = pos as u64;
                        if is_last {
                            segment.reserved = data.len() as u64;
                        } else {
                            segment
                                .file
                                .set_len(pos as u64)
                                .map_err(|e| StorageError::io(path, e))?;
                        }
                        break;
                    }
                    let next = resync(&data, pos + 1, last);
                    if next >= data.len() {
                        // Nothing valid after this point: a torn or garbled tail (zeros before
                        // and after it are prepared space, not part of the damage).
                        let first = data[pos..].iter().position(|&b| b != 0).map_or(pos, |i| pos + i);
                        let damaged = data.iter().rposition(|&b| b != 0).map_or(pos, |i| i + 1);
                        report.truncated_bytes += (damaged - first) as u64;
                        if is_last {
                            segment
                                .file
                                .set_len(pos as u64)
                                .map_err(|e| StorageError::io(path, e))?;
                            segment.len = pos as u64;
                        } else {
                            segment.holes.push((pos as u64, data.len() as u64));
                        }
                        tracing::warn!(
                            segment = %path.display(),
                            offset = pos,
                            bytes = damaged - first,
                            "dropped a torn or corrupt tail"
                        );
                        break;
                    }
                    segment.hole(pos, next, report);
                    pos = next;
                }
            }
        }
        Ok(segment)
    }

    fn hole(&mut self, start: usize, end: usize, report: &mut RecoveryReport) {
        tracing::warn!(segment = %self.path.display(), start, end, "skipping corrupt bytes");
        report.corrupt_regions += 1;
        report.dropped_bytes += (end - start) as u64;
        self.holes.push((start as u64, end as u64));
    }

    fn note(&mut self, seq: u64, offset: u64, publish_ns: u64) {
        if self.first_seq.is_none() || self.since_index >= INDEX_EVERY {
            self.index.push(IndexEntry {
                sequence: seq,
                offset,
                publish_ns,
            });
            self.since_index = 0;
        }
        self.since_index += 1;
        self.first_seq.get_or_insert(seq);
        self.last_seq = Some(seq);
        self.last_publish_ns = self.last_publish_ns.max(publish_ns);
    }

    /// Appends `messages` in one write. On failure the file is cut back: nothing partial remains.
    /// Then prepares disk space ahead (`reserve_bytes`, zero-filled or reserved, see the top).
    pub(crate) fn append(
        &mut self,
        messages: &[StoredMessage],
        scratch: &mut BytesMut,
        reserve_bytes: u64,
        zero_fill: bool,
    ) -> Result<(), StorageError> {
        scratch.clear();
        let mut offsets = Vec::with_capacity(messages.len());
        let mut body = BytesMut::new();
        for message in messages {
            offsets.push(self.len + scratch.len() as u64);
            body.clear();
            message.encode(&mut body)?;
            frame(scratch, &body);
        }
        let end = self.len + scratch.len() as u64;
        if !zero_fill {
            self.reserve(end, reserve_bytes);
        }
        if let Err(error) = self.file.write_all_at(scratch, self.len) {
            let _ = self.file.set_len(self.len);
            self.reserved = self.len;
            return Err(StorageError::io(&self.path, error));
        }
        for (message, offset) in messages.iter().zip(offsets) {
            self.note(message.sequence, offset, message.publish_ns);
        }
        self.len = end;
        if zero_fill {
            self.zero_ahead(reserve_bytes);
        }
        Ok(())
    }

    /// Keeps zeros written at least `ahead` bytes past the records, one `ZERO_CHUNK` (or `ahead`
    /// if smaller) per call, so that no single sync carries more than that and most carry none.
    /// Best effort: where the disk is too full, the appends that follow allocate as they go and
    /// report a full disk themselves (the zeros that were written keep their space for records).
    fn zero_ahead(&mut self, ahead: u64) {
        let target = self.len + ahead;
        if ahead == 0 || target <= self.reserved {
            return;
        }
        let from = self.reserved.max(self.len);
        let n = ahead.min(ZERO_CHUNK as u64);
        match self.file.write_all_at(&ZEROS[..n as usize], from) {
            Ok(()) => self.reserved = from + n,
            Err(error) => {
                // Do not retry on every append: try again once this much more has been written.
                self.reserved = target;
                tracing::debug!(segment = %self.path.display(), %error, "could not zero-fill disk space ahead");
            }
        }
    }

    /// Reserves disk space up to `end` (and `step` beyond) without changing the file's size. Best
    /// effort: where the filesystem cannot (or the disk is too full to reserve ahead), the write
    /// that follows allocates as it goes and reports a full disk itself.
    fn reserve(&mut self, end: u64, step: u64) {
        if step == 0 || end <= self.reserved {
            return;
        }
        let from = self.reserved.max(self.len);
        let to = end + step;
        match rustix::fs::fallocate(&self.file, rustix::fs::FallocateFlags::KEEP_SIZE, from, to - from) {
            Ok(()) => self.reserved = to,
            Err(error) => {
                // Do not retry on every append: try again once this much more has been written.
                self.reserved = to;
                tracing::debug!(segment = %self.path.display(), %error, "could not reserve disk space ahead");
            }
        }
    }

    /// Flushes written records to stable storage.
    pub(crate) fn sync(&self) -> Result<(), StorageError> {
        self.sync_target().sync()
    }

    /// What a sync of this segment needs, to run after the log's lock is released.
    pub(crate) fn sync_target(&self) -> SyncTarget {
        SyncTarget {
            file: Arc::clone(&self.file),
            path: self.path.clone(),
        }
    }

    /// No more appends: makes the records durable and gives back the unused reservation.
    pub(crate) fn seal(&mut self) -> Result<(), StorageError> {
        self.sync()?;
        if self.reserved > self.len {
            // Cutting at the current size frees the blocks reserved beyond it.
            self.file
                .set_len(self.len)
                .map_err(|e| StorageError::io(&self.path, e))?;
            self.reserved = self.len;
        }
        Ok(())
    }

    /// Appends to `out` the messages from sequence `from` on, while `out` stays under the limits.
    pub(crate) fn read_into(
        &self,
        from: u64,
        max_count: usize,
        max_bytes: usize,
        out: &mut Vec<StoredMessage>,
        bytes: &mut usize,
    ) -> Result<(), StorageError> {
        let start = match self.index.partition_point(|e| e.sequence <= from) {
            0 => self.index.first().map_or(self.len, |e| e.offset),
            i => self.index[i - 1].offset,
        };
        self.scan(start, |message| {
            if message.sequence < from {
                return Ok(true);
            }
            if out.len() >= max_count || (*bytes + message.payload.len() > max_bytes && !out.is_empty()) {
                return Ok(false);
            }
            *bytes += message.payload.len();
            out.push(message);
            Ok(true)
        })
    }

    /// The sequence of the first message published at or after `ts`, if any is in this segment.
    pub(crate) fn seek_time(&self, ts: u64) -> Result<Option<u64>, StorageError> {
        if self.last_publish_ns < ts {
            return Ok(None);
        }
        let start = match self.index.partition_point(|e| e.publish_ns < ts) {
            0 => self.index.first().map_or(self.len, |e| e.offset),
            i => self.index[i - 1].offset,
        };
        let mut found = None;
        self.scan(start, |message| {
            if message.publish_ns >= ts {
                found = Some(message.sequence);
                return Ok(false);
            }
            Ok(true)
        })?;
        Ok(found)
    }

    /// Calls `visit` for each whole record from byte `start`, skipping holes, until it returns false.
    fn scan(
        &self,
        start: u64,
        mut visit: impl FnMut(StoredMessage) -> Result<bool, StorageError>,
    ) -> Result<(), StorageError> {
        let mut pos = start;
        let mut chunk = Bytes::new();
        let mut chunk_start = pos;
        while pos < self.len {
            if let Some(&(_, end)) = self.holes.iter().find(|(s, e)| pos >= *s && pos < *e) {
                pos = end;
                continue;
            }
            let offset = (pos - chunk_start) as usize;
            let need_frame = offset + FRAME_BYTES > chunk.len();
            let body_len = if need_frame {
                None
            } else {
                Some(u32::from_le_bytes(chunk[offset..offset + 4].try_into().unwrap_or_default()) as usize)
            };
            if body_len.is_none_or(|len| offset + FRAME_BYTES + len > chunk.len()) {
                // Refill from `pos`, large enough for the next record.
                let wanted = body_len.map_or(READ_CHUNK, |len| (FRAME_BYTES + len).max(READ_CHUNK));
                let size = wanted.min((self.len - pos) as usize);
                let mut buf = vec![0u8; size];
                self.file
                    .read_exact_at(&mut buf, pos)
                    .map_err(|e| StorageError::io(&self.path, e))?;
                chunk = Bytes::from(buf);
                chunk_start = pos;
                continue;
            }
            let len = body_len.unwrap_or(0);
            let body = chunk.slice(offset + FRAME_BYTES..offset + FRAME_BYTES + len);
            let crc = u32::from_le_bytes(chunk[offset + 4..offset + 8].try_into().unwrap_or_default());
            if crc32c::crc32c(&body) != crc {
                return Err(StorageError::Malformed {
                    reason: format!(
                        "checksum mismatch at {}:{pos} (the file changed after recovery)",
                        self.path.display()
                    ),
                });
            }
            if !visit(StoredMessage::decode(&body)?)? {
                return Ok(());
            }
            pos += (FRAME_BYTES + len) as u64;
        }
        Ok(())
    }

    /// Deletes the file.
    pub(crate) fn remove(self) -> Result<(), StorageError> {
        std::fs::remove_file(&self.path).map_err(|e| StorageError::io(&self.path, e))
    }
}

/// A segment's file, to make what was written to it durable without holding its log's lock
/// (readers of the log go on while the fsync runs). It covers everything written before the call.
#[derive(Debug)]
pub struct SyncTarget {
    file: Arc<File>,
    path: PathBuf,
}

impl SyncTarget {
    /// fdatasync.
    ///
    /// # Errors
    /// I/O errors.
    pub fn sync(&self) -> Result<(), StorageError> {
        self.file.sync_data().map_err(|e| StorageError::io(&self.path, e))
    }
}

/// The next offset after `from` where a valid record that advances the log starts; `data.len()`
/// when there is none.
fn resync(data: &[u8], from: usize, last: Option<u64>) -> usize {
    (from..data.len())
        .find(|&pos| match probe(data, pos, MESSAGE_MIN_BYTES) {
            Probe::Valid { .. } => {
                let (seq, _) = seq_and_time(&data[pos + FRAME_BYTES..]);
                last.is_none_or(|l| seq > l)
            }
            _ => false,
        })
        .unwrap_or(data.len())
}
