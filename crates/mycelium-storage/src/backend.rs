//! The `StorageBackend` trait and its memory and disk implementations. Both pass one conformance
//! suite (`tests/conformance.rs`); a Redis backend joins them later.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;

use parking_lot::Mutex;

use crate::{Bounds, LogConfig, RecoveryReport, SegmentLog, StorageError, StoredMessage};

/// Where topics' messages are kept. Calls are blocking; the broker calls them off its I/O tasks.
pub trait StorageBackend: Send + Sync + std::fmt::Debug {
    /// Appends messages continuing `topic`'s sequence (creating the topic's log if needed).
    ///
    /// # Errors
    /// `OutOfOrder`, `Full`, `Io`.
    fn append(&self, topic: &str, messages: &[StoredMessage]) -> Result<(), StorageError>;

    /// Makes `topic`'s appends durable.
    ///
    /// # Errors
    /// I/O errors.
    fn sync(&self, topic: &str) -> Result<(), StorageError>;

    /// Messages of `topic` from sequence `from` on, within the limits (at least one if any).
    ///
    /// # Errors
    /// I/O errors.
    fn read(
        &self,
        topic: &str,
        from: u64,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredMessage>, StorageError>;

    /// The first sequence of `topic` published at or after `ts_ns`.
    ///
    /// # Errors
    /// I/O errors.
    fn seek_time(&self, topic: &str, ts_ns: u64) -> Result<u64, StorageError>;

    /// Where `topic`'s log starts and ends (an unknown topic: empty, next sequence 1).
    ///
    /// # Errors
    /// I/O errors.
    fn bounds(&self, topic: &str) -> Result<Bounds, StorageError>;

    /// Drops `topic`'s messages before `sequence`.
    ///
    /// # Errors
    /// I/O errors.
    fn truncate_before(&self, topic: &str, sequence: u64) -> Result<(), StorageError>;

    /// Every topic with a log.
    fn topics(&self) -> Vec<String>;

    /// After a failed fsync: closes `topic`'s log, opens it again (verifying every record) and
    /// drops every message from sequence `from` on (they were never confirmed). What the files
    /// hold is then what the log says, whatever the page cache lost.
    ///
    /// # Errors
    /// I/O errors; the topic stays unusable until a later call succeeds.
    fn reopen_from(&self, topic: &str, from: u64) -> Result<(), StorageError> {
        let _ = (topic, from);
        Ok(())
    }
}

/// Failures to inject into a [`DiskBackend`] (tests of what the broker does when the disk
/// fails): the next fsyncs of a topic fail with an I/O error, as a failing disk's would.
#[derive(Debug, Default)]
pub struct Faults {
    fail_syncs: Mutex<HashMap<String, u32>>,
}

impl Faults {
    /// The next `count` fsyncs of `topic` fail.
    pub fn fail_syncs(&self, topic: &str, count: u32) {
        self.fail_syncs.lock().insert(topic.to_owned(), count);
    }

    fn sync_fails(&self, topic: &str) -> bool {
        let mut plans = self.fail_syncs.lock();
        match plans.get_mut(topic) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }
}

/// Keeps everything in memory: fast, lost on restart (`storage = "memory"`).
#[derive(Debug, Default)]
pub struct MemoryBackend {
    topics: Mutex<HashMap<String, MemoryLog>>,
}

#[derive(Debug)]
struct MemoryLog {
    first: u64,
    messages: VecDeque<StoredMessage>,
}

impl Default for MemoryLog {
    fn default() -> Self {
        MemoryLog {
            first: 1,
            messages: VecDeque::new(),
        }
    }
}

impl MemoryLog {
    fn next(&self) -> u64 {
        self.first + self.messages.len() as u64
    }
}

impl StorageBackend for MemoryBackend {
    fn append(&self, topic: &str, messages: &[StoredMessage]) -> Result<(), StorageError> {
        let mut topics = self.topics.lock();
        let log = topics.entry(topic.to_owned()).or_default();
        for (i, m) in messages.iter().enumerate() {
            let expected = log.next() + i as u64;
            if m.sequence != expected {
                return Err(StorageError::OutOfOrder {
                    expected,
                    got: m.sequence,
                });
            }
        }
        log.messages.extend(messages.iter().cloned());
        Ok(())
    }

    fn sync(&self, _topic: &str) -> Result<(), StorageError> {
        Ok(())
    }

    fn read(
        &self,
        topic: &str,
        from: u64,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredMessage>, StorageError> {
        let topics = self.topics.lock();
        let Some(log) = topics.get(topic) else {
            return Ok(Vec::new());
        };
        let skip = from.saturating_sub(log.first) as usize;
        let mut out = Vec::new();
        let mut bytes = 0;
        for m in log.messages.iter().skip(skip) {
            if out.len() >= max_count || (bytes + m.payload.len() > max_bytes && !out.is_empty()) {
                break;
            }
            bytes += m.payload.len();
            out.push(m.clone());
        }
        Ok(out)
    }

    fn seek_time(&self, topic: &str, ts_ns: u64) -> Result<u64, StorageError> {
        let topics = self.topics.lock();
        Ok(topics.get(topic).map_or(1, |log| {
            log.messages
                .iter()
                .find(|m| m.publish_ns >= ts_ns)
                .map_or(log.next(), |m| m.sequence)
        }))
    }

    fn bounds(&self, topic: &str) -> Result<Bounds, StorageError> {
        let topics = self.topics.lock();
        Ok(topics.get(topic).map_or(
            Bounds {
                first: 1,
                next: 1,
                bytes: 0,
            },
            |log| Bounds {
                first: log.first,
                next: log.next(),
                bytes: log.messages.iter().map(|m| m.encoded_len() as u64).sum(),
            },
        ))
    }

    fn truncate_before(&self, topic: &str, sequence: u64) -> Result<(), StorageError> {
        let mut topics = self.topics.lock();
        if let Some(log) = topics.get_mut(topic) {
            while log.first < sequence && !log.messages.is_empty() {
                log.messages.pop_front();
                log.first += 1;
            }
        }
        Ok(())
    }

    fn topics(&self) -> Vec<String> {
        let mut names: Vec<String> = self.topics.lock().keys().cloned().collect();
        names.sort();
        names
    }
}

/// One segment log per topic under `root/topics/<topic>/` (`storage = "disk"`).
#[derive(Debug)]
pub struct DiskBackend {
    root: PathBuf,
    config: LogConfig,
    logs: Mutex<HashMap<String, std::sync::Arc<Mutex<SegmentLog>>>>,
    faults: Option<std::sync::Arc<Faults>>,
}

impl DiskBackend {
    /// Opens every topic log under `root`, verifying them; returns the recovery report per topic.
    ///
    /// # Errors
    /// I/O errors.
    pub fn open(
        root: impl Into<PathBuf>,
        config: LogConfig,
    ) -> Result<(DiskBackend, Vec<(String, RecoveryReport)>), StorageError> {
        let root = root.into();
        let topics_dir = crate::DataDir::new(&root).topics_dir();
        crate::layout::create_dir_durable(&topics_dir).map_err(|e| StorageError::io(&topics_dir, e))?;
        let mut logs = HashMap::new();
        let mut reports = Vec::new();
        for entry in std::fs::read_dir(&topics_dir).map_err(|e| StorageError::io(&topics_dir, e))? {
            let entry = entry.map_err(|e| StorageError::io(&topics_dir, e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if check_name(&name).is_err() {
                continue;
            }
            // A stray file where a topic's directory would be is reported and left alone: it
            // must not stop every other topic from opening.
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                tracing::warn!(path = %entry.path().display(), "not a topic directory; skipped (move it out of the data directory)");
                continue;
            }
            let (log, report) = SegmentLog::open(&entry.path(), config.clone())?;
            reports.push((name.clone(), report));
            logs.insert(name, std::sync::Arc::new(Mutex::new(log)));
        }
        reports.sort_by(|a, b| a.0.cmp(&b.0));
        Ok((
            DiskBackend {
                root,
                config,
                logs: Mutex::new(logs),
                faults: None,
            },
            reports,
        ))
    }

    fn log(&self, topic: &str) -> Result<std::sync::Arc<Mutex<SegmentLog>>, StorageError> {
        check_name(topic)?;
        let mut logs = self.logs.lock();
        if let Some(log) = logs.get(topic) {
            return Ok(std::sync::Arc::clone(log));
        }
        let (log, _) = SegmentLog::open(
            &crate::DataDir::new(&self.root).topic_log(topic),
            self.config.clone(),
        )?;
        let log = std::sync::Arc::new(Mutex::new(log));
        logs.insert(topic.to_owned(), std::sync::Arc::clone(&log));
        Ok(log)
    }

    /// Applies `limits` (retention by count, bytes and age) to `topic`'s log at `now_ns`; returns
    /// how many messages became unreadable. An unknown topic: nothing to do.
    ///
    /// # Errors
    /// I/O errors.
    pub fn apply_retention(&self, topic: &str, limits: &LogConfig, now_ns: u64) -> Result<u64, StorageError> {
        match self.existing(topic) {
            Some(log) => {
                let mut log = log.lock();
                log.set_retention(limits);
                log.apply_retention(now_ns)
            }
            None => Ok(0),
        }
    }

    /// Injects `faults` (tests only: see [`Faults`]).
    #[must_use]
    pub fn with_faults(self, faults: std::sync::Arc<Faults>) -> DiskBackend {
        DiskBackend {
            faults: Some(faults),
            ..self
        }
    }

    fn existing(&self, topic: &str) -> Option<std::sync::Arc<Mutex<SegmentLog>>> {
        self.logs.lock().get(topic).cloned()
    }
}

/// Topic names are directory names here: letters, digits, `_`, `-` and `.` (not leading).
fn check_name(topic: &str) -> Result<(), StorageError> {
    let ok = !topic.is_empty()
        && topic.len() <= 255
        && !topic.starts_with('.')
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(StorageError::InvalidTopic(topic.to_owned()))
    }
}

impl StorageBackend for DiskBackend {
    fn append(&self, topic: &str, messages: &[StoredMessage]) -> Result<(), StorageError> {
        self.log(topic)?.lock().append(messages)
    }

    fn sync(&self, topic: &str) -> Result<(), StorageError> {
        if self.faults.as_ref().is_some_and(|f| f.sync_fails(topic)) {
            return Err(StorageError::io(
                &crate::DataDir::new(&self.root).topic_log(topic),
                std::io::Error::other("injected fsync failure"),
            ));
        }
        // The fsync runs without the log's lock: readers (durable subscriptions) go on meanwhile.
        let target = match self.existing(topic) {
            Some(log) => log.lock().sync_target(),
            None => None,
        };
        match target {
            Some(target) => target.sync(),
            None => Ok(()),
        }
    }

    fn read(
        &self,
        topic: &str,
        from: u64,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredMessage>, StorageError> {
        match self.existing(topic) {
            Some(log) => log.lock().read(from, max_count, max_bytes),
            None => Ok(Vec::new()),
        }
    }

    fn seek_time(&self, topic: &str, ts_ns: u64) -> Result<u64, StorageError> {
        match self.existing(topic) {
            Some(log) => log.lock().seek_time(ts_ns),
            None => Ok(1),
        }
    }

    fn bounds(&self, topic: &str) -> Result<Bounds, StorageError> {
        Ok(self.existing(topic).map_or(
            Bounds {
                first: 1,
                next: 1,
                bytes: 0,
            },
            |log| log.lock().bounds(),
        ))
    }

    fn truncate_before(&self, topic: &str, sequence: u64) -> Result<(), StorageError> {
        match self.existing(topic) {
            Some(log) => log.lock().truncate_before(sequence),
            None => Ok(()),
        }
    }

    fn reopen_from(&self, topic: &str, from: u64) -> Result<(), StorageError> {
        check_name(topic)?;
        let dir = crate::DataDir::new(&self.root).topic_log(topic);
        // Readers holding the old log finish on its open files; nothing appends meanwhile (the
        // storage writer is the one caller).
        let (mut log, report) = SegmentLog::open(&dir, self.config.clone())?;
        log.cut_from(from)?;
        for target in log.segment_sync_targets() {
            target.sync()?;
        }
        tracing::warn!(
            topic,
            from,
            ?report,
            "log reopened after a failed fsync; unconfirmed messages dropped"
        );
        self.logs
            .lock()
            .insert(topic.to_owned(), std::sync::Arc::new(Mutex::new(log)));
        Ok(())
    }

    fn topics(&self) -> Vec<String> {
        let mut names: Vec<String> = self.logs.lock().keys().cloned().collect();
        names.sort();
        names
    }
}
