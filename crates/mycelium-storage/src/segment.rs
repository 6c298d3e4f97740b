//! One segment file of a topic's log: records, a sparse index for seeking by sequence and time,
//! and the recovery scan that rebuilds it.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::message::{MESSAGE_MIN_BYTES, StoredMessage};
use crate::range_crc::RangeCrc;
use crate::record::{FRAME_BYTES, Probe, body_range, frame, frame_at, probe, probe_with};
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
    /// Byte ranges found corrupt at recovery, skipped by reads. Disjoint, in ascending order.
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
        let mut prober = Prober::new(&data);
        let mut pos = 0usize;
        let mut last = last_seen;
        // Bytes of the file that stay: all of it, unless a torn tail of the last segment is cut.
        segment.len = data.len() as u64;
        while pos < data.len() {
            match prober.probe(pos) {
                Probe::Valid { len } => {
                    let (seq, ts) = seq_and_time(&data[pos + FRAME_BYTES..]);
                    if last.is_some_and(|l| seq <= l) {
                        // A valid record that does not advance the log: treat as corruption.
                        let next = prober.resync(pos + 1, last);
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
                    let next = prober.resync(pos + 1, last);
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
            // The holes are disjoint and sorted: only the last one starting at or before `pos`
            // can hold it.
            let after = self.holes.partition_point(|&(start, _)| start <= pos);
            if let Some(&(_, end)) = self.holes[..after].last().filter(|&&(_, end)| pos < end) {
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

    /// Cuts the segment back to before its first record with a sequence at or above `from`, and
    /// makes the cut durable. Returns whether anything was cut.
    ///
    /// # Errors
    /// I/O errors.
    pub(crate) fn cut_from(&mut self, from: u64) -> Result<bool, StorageError> {
        if self.last_seq.is_none_or(|last| last < from) {
            return Ok(false);
        }
        // Find the cut's offset: scan the records from the index entry before `from`.
        let start = match self.index.partition_point(|e| e.sequence < from) {
            0 => 0,
            i => self.index[i - 1].offset,
        };
        let (mut cut, mut kept_last, mut offset) = (None, None, start);
        let mut kept_last_ns = 0;
        self.scan(start, |message| {
            if message.sequence >= from {
                cut = Some(offset);
                return Ok(false);
            }
            kept_last = Some(message.sequence);
            kept_last_ns = message.publish_ns;
            let mut body = BytesMut::new();
            message.encode(&mut body)?;
            offset += (FRAME_BYTES + body.len()) as u64;
            Ok(true)
        })?;
        let Some(cut) = cut else { return Ok(false) };
        self.file
            .set_len(cut)
            .and_then(|()| self.file.sync_all())
            .map_err(|e| StorageError::io(&self.path, e))?;
        self.len = cut;
        self.reserved = cut;
        self.index.retain(|e| e.sequence < from);
        self.holes.retain(|(s, _)| *s < cut);
        if let Some(hole) = self.holes.last_mut() {
            hole.1 = hole.1.min(cut);
        }
        self.last_seq = kept_last.or(self.index.last().map(|e| e.sequence));
        if self.last_seq.is_none() {
            self.first_seq = None;
        }
        if kept_last.is_some() {
            self.last_publish_ns = kept_last_ns;
        }
        Ok(true)
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

/// Probes the records of a segment being recovered. Bodies are checksummed directly until the
/// first damage, then through a [`RangeCrc`] built once over the rest: finding the next record
/// probes every offset of a damaged region, and junk can declare a long body at each, which
/// checksummed one by one would take time quadratic in the region's size.
struct Prober<'a> {
    data: &'a [u8],
    ranges: Option<RangeCrc<'a>>,
}

impl<'a> Prober<'a> {
    fn new(data: &'a [u8]) -> Prober<'a> {
        Prober { data, ranges: None }
    }

    /// What [`probe`] finds at `pos`.
    fn probe(&self, pos: usize) -> Probe {
        match &self.ranges {
            None => probe(self.data, pos, MESSAGE_MIN_BYTES),
            Some(ranges) => probe_with(self.data, pos, MESSAGE_MIN_BYTES, |body| ranges.crc(body)),
        }
    }

    /// The next offset after `from` where a valid record that advances the log starts; `data.len()`
    /// when there is none. The sequence is compared before the checksum, which is the costly part.
    fn resync(&mut self, from: usize, last: Option<u64>) -> usize {
        let data = self.data;
        let ranges = &*self
            .ranges
            .get_or_insert_with(|| RangeCrc::new(data, from.min(data.len())));
        (from..data.len())
            .find(|&pos| {
                let Ok((len, crc)) = frame_at(data, pos, MESSAGE_MIN_BYTES) else {
                    return false;
                };
                let (seq, _) = seq_and_time(&data[pos + FRAME_BYTES..]);
                last.is_none_or(|l| seq > l) && ranges.crc(body_range(pos, len)) == crc
            })
            .unwrap_or(data.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Junk that declares, at half its offsets, a body that fits before its end (most of them
    /// long: about as long as what is left), each starting with a sequence above any used here;
    /// the other offsets declare lengths too long for it. Checksumming each declared body would
    /// take time quadratic in the junk's length.
    fn crafted_junk(len: usize) -> Vec<u8> {
        let mut junk = vec![0u8; len];
        for g in (0..len).step_by(4) {
            let declared = ((len - g).saturating_sub(FRAME_BYTES) as u32) & 0x00FF_FF00;
            let bytes = declared.to_le_bytes();
            let n = bytes.len().min(len - g);
            junk[g..g + n].copy_from_slice(&bytes[..n]);
        }
        junk
    }

    fn message(sequence: u64, payload: usize) -> StoredMessage {
        StoredMessage {
            sequence,
            publish_ns: 1_000 * sequence,
            payload: Bytes::from(vec![sequence as u8; payload]),
            ..StoredMessage::default()
        }
    }

    fn record(sequence: u64, payload: usize) -> Vec<u8> {
        let mut body = BytesMut::new();
        message(sequence, payload).encode(&mut body).unwrap();
        let mut framed = BytesMut::new();
        frame(&mut framed, &body);
        framed.to_vec()
    }

    /// Records for sequences `1..=count`.
    fn records(count: u64) -> Vec<u8> {
        (1..=count)
            .flat_map(|seq| record(seq, (seq % 50) as usize))
            .collect()
    }

    /// What recovering a segment kept and reported, and the file's size after it.
    #[derive(Debug, Default, PartialEq)]
    struct Recovered {
        records: Vec<u64>,
        holes: Vec<(u64, u64)>,
        len: u64,
        file_len: u64,
        report: RecoveryReport,
    }

    /// `resync` as it was: [`probe`] at every offset, each checksumming the whole body declared.
    fn resync_by_probing(data: &[u8], from: usize, last: Option<u64>) -> usize {
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

    /// `Segment::recover` as it was (the reference for the same results), without the file.
    fn recover_by_probing(data: &[u8], mut last: Option<u64>, is_last: bool) -> Recovered {
        let mut out = Recovered {
            len: data.len() as u64,
            file_len: data.len() as u64,
            ..Recovered::default()
        };
        let hole = |out: &mut Recovered, start: usize, end: usize| {
            out.report.corrupt_regions += 1;
            out.report.dropped_bytes += (end - start) as u64;
            out.holes.push((start as u64, end as u64));
        };
        let mut pos = 0;
        while pos < data.len() {
            if let Probe::Valid { len } = probe(data, pos, MESSAGE_MIN_BYTES) {
                let (seq, _) = seq_and_time(&data[pos + FRAME_BYTES..]);
                if last.is_some_and(|l| seq <= l) {
                    let next = resync_by_probing(data, pos + 1, last);
                    hole(&mut out, pos, next);
                    pos = next;
                    continue;
                }
                if let Some(l) = last
                    && seq > l + 1
                {
                    out.report.missing_sequences += seq - l - 1;
                }
                out.records.push(seq);
                last = Some(seq);
                pos += FRAME_BYTES + len;
                out.report.records += 1;
                continue;
            }
            if data[pos..].iter().all(|&b| b == 0) {
                out.len = pos as u64;
                if !is_last {
                    out.file_len = pos as u64;
                }
                break;
            }
            let next = resync_by_probing(data, pos + 1, last);
            if next >= data.len() {
                let first = data[pos..].iter().position(|&b| b != 0).map_or(pos, |i| pos + i);
                let damaged = data.iter().rposition(|&b| b != 0).map_or(pos, |i| i + 1);
                out.report.truncated_bytes += (damaged - first) as u64;
                if is_last {
                    (out.len, out.file_len) = (pos as u64, pos as u64);
                } else {
                    out.holes.push((pos as u64, data.len() as u64));
                }
                break;
            }
            hole(&mut out, pos, next);
            pos = next;
        }
        out
    }

    /// Writes `data` as a segment and recovers it.
    fn recover(data: &[u8], last: Option<u64>, is_last: bool) -> (Segment, Recovered) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(file_name(1));
        std::fs::write(&path, data).unwrap();
        let mut report = RecoveryReport::default();
        let segment = Segment::recover(&path, 1, last, is_last, &mut report).unwrap();
        let mut messages = Vec::new();
        segment
            .read_into(0, usize::MAX, usize::MAX, &mut messages, &mut 0)
            .unwrap();
        let recovered = Recovered {
            records: messages.iter().map(|m| m.sequence).collect(),
            holes: segment.holes.clone(),
            len: segment.len,
            file_len: std::fs::metadata(&path).unwrap().len(),
            report,
        };
        (segment, recovered)
    }

    /// A part of a generated segment file.
    #[derive(Debug, Clone)]
    enum Piece {
        /// A record for the sequence this far from the last one written (back: a stale record).
        Record {
            step: i64,
            payload: usize,
        },
        /// A record with one byte changed.
        Flipped {
            payload: usize,
            at: usize,
        },
        /// The first bytes of a record.
        Torn {
            payload: usize,
            keep: usize,
        },
        /// [`crafted_junk`] this long.
        Crafted(usize),
        Random(Vec<u8>),
        /// Zeros, as written ahead of the records.
        Zeros(usize),
    }

    fn piece() -> impl Strategy<Value = Piece> {
        prop_oneof![
            4 => (-2i64..4, 0usize..1500).prop_map(|(step, payload)| Piece::Record { step, payload }),
            1 => (0usize..300, any::<usize>()).prop_map(|(payload, at)| Piece::Flipped { payload, at }),
            1 => (0usize..300, any::<usize>()).prop_map(|(payload, keep)| Piece::Torn { payload, keep }),
            1 => (1usize..3000).prop_map(Piece::Crafted),
            1 => proptest::collection::vec(any::<u8>(), 1..100).prop_map(Piece::Random),
            1 => (1usize..100).prop_map(Piece::Zeros),
        ]
    }

    fn assemble(pieces: &[Piece]) -> Vec<u8> {
        let mut data = Vec::new();
        let mut seq = 0u64;
        for piece in pieces {
            match piece {
                Piece::Record { step, payload } => {
                    seq = seq.saturating_add_signed(*step);
                    data.extend(record(seq, *payload));
                }
                Piece::Flipped { payload, at } => {
                    let mut flipped = record(seq + 1, *payload);
                    let at = at % flipped.len();
                    flipped[at] ^= 0x5A;
                    data.extend(flipped);
                }
                Piece::Torn { payload, keep } => {
                    let torn = record(seq + 1, *payload);
                    data.extend(&torn[..keep % torn.len()]);
                }
                Piece::Crafted(len) => data.extend(crafted_junk(*len)),
                Piece::Random(bytes) => data.extend(bytes),
                Piece::Zeros(len) => data.extend(vec![0; *len]),
            }
        }
        data
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn recovery_keeps_what_probing_every_offset_keeps(
            pieces in proptest::collection::vec(piece(), 0..30),
            last in prop_oneof![Just(None), (0u64..4).prop_map(Some)],
            is_last: bool,
        ) {
            let data = assemble(&pieces);
            let (_, recovered) = recover(&data, last, is_last);
            prop_assert_eq!(recovered, recover_by_probing(&data, last, is_last));
        }

        #[test]
        fn resync_finds_what_probing_every_offset_finds(
            pieces in proptest::collection::vec(piece(), 0..12),
            last in prop_oneof![Just(None), (0u64..6).prop_map(Some)],
            froms in proptest::collection::vec(any::<proptest::sample::Index>(), 1..40),
        ) {
            let data = assemble(&pieces);
            let mut prober = Prober::new(&data);
            // The table is built from the first offset, so that every later probe goes through it.
            prober.resync(0, last);
            for from in froms.iter().map(|i| i.index(data.len() + 1)) {
                prop_assert_eq!(prober.resync(from, last), resync_by_probing(&data, from, last), "from {}", from);
                prop_assert_eq!(prober.probe(from), probe(&data, from, MESSAGE_MIN_BYTES), "at {}", from);
            }
        }
    }

    #[test]
    fn a_crafted_tail_is_dropped_and_the_records_before_it_kept() {
        let mut data = records(100);
        let end = data.len();
        let junk = crafted_junk(300 << 10);
        // The zeros around the junk are not counted as damage.
        let junk_start = end + junk.iter().position(|&b| b != 0).unwrap();
        let junk_end = end + junk.iter().rposition(|&b| b != 0).unwrap() + 1;
        data.extend(junk);

        let (segment, recovered) = recover(&data, None, true);
        assert_eq!(recovered.records, (1..=100).collect::<Vec<_>>());
        assert_eq!(
            recovered.report,
            RecoveryReport {
                records: 100,
                truncated_bytes: (junk_end - junk_start) as u64,
                ..RecoveryReport::default()
            }
        );
        assert_eq!(
            (recovered.len, recovered.file_len),
            (end as u64, end as u64),
            "the tail is cut"
        );
        assert_eq!((segment.first_seq, segment.last_seq), (Some(1), Some(100)));

        // Not the last segment: the tail stays, as a hole.
        let (_, recovered) = recover(&data, None, false);
        assert_eq!(recovered.records.len(), 100);
        assert_eq!(recovered.holes, [(end as u64, data.len() as u64)]);
        assert_eq!(recovered.file_len, data.len() as u64);
    }

    #[test]
    fn records_between_crafted_junk_are_kept_and_read_past_the_holes() {
        let mut data = Vec::new();
        let mut holes = Vec::new();
        for seq in 1..=20 {
            let start = data.len();
            data.extend(crafted_junk(4096 + seq as usize));
            holes.push((start as u64, data.len() as u64));
            data.extend(record(seq, 10));
        }
        let (segment, recovered) = recover(&data, None, true);
        assert_eq!(recovered, recover_by_probing(&data, None, true));
        assert_eq!(recovered.records, (1..=20).collect::<Vec<_>>());
        assert_eq!(recovered.holes, holes);
        let mut messages = Vec::new();
        segment
            .read_into(7, 3, usize::MAX, &mut messages, &mut 0)
            .unwrap();
        assert_eq!(messages.iter().map(|m| m.sequence).collect::<Vec<_>>(), [7, 8, 9]);
    }

    #[test]
    #[ignore = "a measurement: run with --release --ignored --nocapture"]
    fn time_recovering_a_crafted_tail() {
        for mib in [1usize, 4] {
            let mut data = records(100);
            data.extend(crafted_junk(mib << 20));
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(file_name(1));
            std::fs::write(&path, &data).unwrap();
            let started = std::time::Instant::now();
            let mut report = RecoveryReport::default();
            let segment = Segment::recover(&path, 1, None, true, &mut report).unwrap();
            println!("{mib} MiB crafted tail: recovered in {:?}", started.elapsed());
            assert_eq!((report.records, segment.last_seq), (100, Some(100)));
        }
    }
}
