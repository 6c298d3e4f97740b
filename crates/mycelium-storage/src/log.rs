//! A topic's log: an ordered list of segments, the active one last.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::BytesMut;

use crate::segment::{Segment, SyncTarget, file_name};
use crate::{RecoveryReport, StorageError, StoredMessage};

/// Limits of one topic's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// A segment rolls over once it holds this many bytes.
    pub segment_bytes: u64,
    /// Disk space the active segment reserves ahead of its records, in steps of this many bytes
    /// (0: none; see `segment.rs`).
    pub reserve_bytes: u64,
    /// Prepare that space by writing zeros into it, 1 MiB per append at most (an fdatasync then
    /// flushes data only, no block allocation or conversion to write); false: reserve it with
    /// `fallocate(KEEP_SIZE)`.
    pub zero_fill: bool,
    /// Keep at most this many messages (older whole segments are deleted).
    pub retention_messages: Option<u64>,
    /// Keep at most this many bytes.
    pub retention_bytes: Option<u64>,
    /// Delete whole segments whose newest message is older than this.
    pub retention_age: Option<Duration>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 64 << 20,
            reserve_bytes: 4 << 20,
            zero_fill: true,
            retention_messages: None,
            retention_bytes: None,
            retention_age: None,
        }
    }
}

/// Where a log starts and ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Bounds {
    /// The first sequence still readable.
    pub first: u64,
    /// The sequence the next append must carry.
    pub next: u64,
    /// Bytes on disk.
    pub bytes: u64,
}

/// One topic's append-only log of segments.
#[derive(Debug)]
pub struct SegmentLog {
    dir: PathBuf,
    config: LogConfig,
    segments: Vec<Segment>,
    first: u64,
    next: u64,
    scratch: BytesMut,
}

const START_FILE: &str = "start";

impl SegmentLog {
    /// Opens (or creates) the log in `dir`, verifying every record; returns what recovery found.
    ///
    /// # Errors
    /// I/O errors reading the directory or files.
    pub fn open(dir: &Path, config: LogConfig) -> Result<(SegmentLog, RecoveryReport), StorageError> {
        crate::layout::create_dir_durable(dir).map_err(|e| StorageError::io(dir, e))?;
        let mut bases: Vec<u64> = std::fs::read_dir(dir)
            .map_err(|e| StorageError::io(dir, e))?
            .filter_map(|entry| {
                let name = entry.ok()?.file_name();
                name.to_str()?.strip_suffix(".log")?.parse().ok()
            })
            .collect();
        bases.sort_unstable();
        let mut report = RecoveryReport {
            segments: bases.len(),
            ..RecoveryReport::default()
        };
        let mut segments = Vec::with_capacity(bases.len());
        let mut last_seen = None;
        for (i, base) in bases.iter().enumerate() {
            let path = dir.join(file_name(*base));
            let segment = Segment::recover(&path, *base, last_seen, i + 1 == bases.len(), &mut report)?;
            last_seen = segment.last_seq.or(last_seen);
            segments.push(segment);
        }
        let next = last_seen
            .map_or_else(|| bases.last().copied().unwrap_or(1), |l| l + 1)
            .max(1);
        let stored_start = std::fs::read_to_string(dir.join(START_FILE))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let first_in_files = segments.iter().find_map(|s| s.first_seq).unwrap_or(next);
        let first = stored_start
            .unwrap_or(first_in_files)
            .max(first_in_files)
            .min(next);
        if report.dropped_bytes > 0 || report.truncated_bytes > 0 {
            tracing::warn!(dir = %dir.display(), ?report, "log recovered with losses");
        }
        let log = SegmentLog {
            dir: dir.to_owned(),
            config,
            segments,
            first,
            next,
            scratch: BytesMut::new(),
        };
        Ok((log, report))
    }

    /// First readable, next to append, bytes on disk.
    pub fn bounds(&self) -> Bounds {
        Bounds {
            first: self.first,
            next: self.next,
            bytes: self.segments.iter().map(|s| s.len).sum(),
        }
    }

    /// Appends messages whose sequences continue the log (the first must be `bounds().next`).
    /// Written, not yet synced: call [`SegmentLog::sync`] for durability.
    ///
    /// # Errors
    /// `OutOfOrder`; `Full` or `Io` (nothing of this append is kept then).
    pub fn append(&mut self, messages: &[StoredMessage]) -> Result<(), StorageError> {
        for (i, message) in messages.iter().enumerate() {
            let expected = self.next + i as u64;
            if message.sequence != expected {
                return Err(StorageError::OutOfOrder {
                    expected,
                    got: message.sequence,
                });
            }
        }
        if messages.is_empty() {
            return Ok(());
        }
        let roll = self
            .segments
            .last()
            .is_none_or(|s| s.len >= self.config.segment_bytes);
        if roll {
            // The sealed segment's records must be durable by the time the next sync (which
            // covers only the active segment) confirms anything written after them.
            if let Some(sealed) = self.segments.last_mut() {
                sealed.seal()?;
            }
            let segment = Segment::create(&self.dir, self.next)?;
            sync_dir(&self.dir)?;
            self.segments.push(segment);
        }
        let active = self.segments.last_mut().expect("a segment was just ensured");
        active.append(
            messages,
            &mut self.scratch,
            self.config.reserve_bytes,
            self.config.zero_fill,
        )?;
        self.next += messages.len() as u64;
        Ok(())
    }

    /// Drops every message from sequence `from` on (whole segments deleted, the one holding
    /// `from` cut), durably: what an fsync failure left unconfirmed is never read afterwards.
    ///
    /// # Errors
    /// I/O errors.
    pub fn cut_from(&mut self, from: u64) -> Result<(), StorageError> {
        if from >= self.next {
            return Ok(());
        }
        while let Some(last) = self.segments.last() {
            if last.first_seq.is_some_and(|first| first >= from)
                || (last.first_seq.is_none() && last.base >= from)
            {
                let segment = self.segments.pop().expect("checked above");
                segment.remove()?;
                continue;
            }
            break;
        }
        if let Some(last) = self.segments.last_mut() {
            last.cut_from(from)?;
        }
        sync_dir(&self.dir)?;
        self.next = from.max(self.first);
        Ok(())
    }

    /// Makes everything appended so far durable (fsync of the active segment).
    ///
    /// # Errors
    /// I/O errors.
    pub fn sync(&self) -> Result<(), StorageError> {
        match self.sync_target() {
            Some(target) => target.sync(),
            None => Ok(()),
        }
    }

    /// Every segment's file, to make all of them durable (after reopening a log).
    pub fn segment_sync_targets(&self) -> Vec<SyncTarget> {
        self.segments.iter().map(Segment::sync_target).collect()
    }

    /// The active segment, to sync after releasing whatever guards this log (the sync then
    /// covers every append made before it starts).
    pub fn sync_target(&self) -> Option<SyncTarget> {
        self.segments.last().map(Segment::sync_target)
    }

    /// Messages from sequence `from` on: at most `max_count`, and at most `max_bytes` of payload
    /// (but always at least one message when there is one).
    ///
    /// # Errors
    /// I/O errors; `Malformed` if a file changed behind the log's back.
    pub fn read(
        &self,
        from: u64,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredMessage>, StorageError> {
        let from = from.max(self.first);
        let mut out = Vec::new();
        let mut bytes = 0;
        for segment in &self.segments {
            if segment.last_seq.is_none_or(|l| l < from) {
                continue;
            }
            segment.read_into(from, max_count, max_bytes, &mut out, &mut bytes)?;
            if out.len() >= max_count || bytes >= max_bytes {
                break;
            }
        }
        Ok(out)
    }

    /// The sequence of the first message published at or after `ts_ns` (`bounds().next` if none).
    ///
    /// # Errors
    /// I/O errors.
    pub fn seek_time(&self, ts_ns: u64) -> Result<u64, StorageError> {
        for segment in &self.segments {
            if let Some(seq) = segment.seek_time(ts_ns)? {
                return Ok(seq.max(self.first));
            }
        }
        Ok(self.next)
    }

    /// Makes every message before `sequence` unreadable and deletes the segments that hold only
    /// such messages (never the active one). Durable: survives a restart.
    ///
    /// # Errors
    /// I/O errors.
    pub fn truncate_before(&mut self, sequence: u64) -> Result<(), StorageError> {
        let sequence = sequence.min(self.next);
        if sequence <= self.first {
            return Ok(());
        }
        let path = self.dir.join(START_FILE);
        crate::layout::write_atomic(&path, sequence.to_string().as_bytes())
            .map_err(|e| StorageError::io(&path, e))?;
        self.first = sequence;
        while self.segments.len() > 1 && self.segments[0].last_seq.is_none_or(|l| l < sequence) {
            self.segments.remove(0).remove()?;
        }
        sync_dir(&self.dir)
    }

    /// Replaces the retention limits (the segment size stays).
    pub fn set_retention(&mut self, limits: &LogConfig) {
        self.config.retention_messages = limits.retention_messages;
        self.config.retention_bytes = limits.retention_bytes;
        self.config.retention_age = limits.retention_age;
    }

    /// Applies the retention limits at time `now_ns`; returns how many messages became unreadable.
    ///
    /// # Errors
    /// I/O errors.
    pub fn apply_retention(&mut self, now_ns: u64) -> Result<u64, StorageError> {
        let before = self.first;
        let mut cut = self.first;
        if let Some(max) = self.config.retention_messages {
            cut = cut.max(self.next.saturating_sub(max));
        }
        if let Some(max) = self.config.retention_bytes {
            let mut total: u64 = self.segments.iter().map(|s| s.len).sum();
            for segment in &self.segments[..self.segments.len().saturating_sub(1)] {
                if total <= max {
                    break;
                }
                total -= segment.len;
                cut = cut.max(segment.last_seq.map_or(cut, |l| l + 1));
            }
        }
        if let Some(age) = self.config.retention_age {
            let oldest_kept = now_ns.saturating_sub(age.as_nanos() as u64);
            for segment in &self.segments[..self.segments.len().saturating_sub(1)] {
                if segment.last_publish_ns >= oldest_kept {
                    break;
                }
                cut = cut.max(segment.last_seq.map_or(cut, |l| l + 1));
            }
        }
        self.truncate_before(cut)?;
        Ok(self.first - before)
    }

    /// Segment files, oldest first (for tests and tools).
    pub fn segment_paths(&self) -> Vec<PathBuf> {
        self.segments
            .iter()
            .map(|s| self.dir.join(file_name(s.base)))
            .collect()
    }
}

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    crate::layout::sync_dir(dir).map_err(|e| StorageError::io(dir, e))
}
