//! Where blocking storage I/O may run: on the storage writer's thread, on a plain thread, or in
//! [`blocking`] (tokio's blocking pool), never on an async worker, where one slow disk read or
//! fsync would stall every connection served by that worker.
//!
//! The broker reaches the disk only through [`Disk`], which checks the rule in debug builds: a
//! storage read, append, sync or truncation, or a state-file write, on a thread that runs async
//! tasks and is not inside [`blocking`] panics there, so the test suite finds the call that broke
//! the rule. Release builds do not check.

use std::cell::Cell;
use std::sync::Arc;

use mycelium_storage::{Bounds, DiskBackend, LogConfig, StorageBackend, StorageError, StoredMessage};

thread_local! {
    /// Set while a closure given to [`blocking`] runs on this thread, and for good on a thread
    /// made for storage work (the storage writer's, whose own runtime only keeps its timers).
    static IN_BLOCKING: Cell<bool> = const { Cell::new(false) };
}

/// Marks this thread as one made for storage work: it may block on storage I/O for good.
pub(crate) fn storage_thread() {
    IN_BLOCKING.set(true);
}

/// Runs `work` (blocking storage I/O) on tokio's blocking pool and waits for it without holding
/// an async worker. A panic in `work` is resumed here.
///
/// # Panics
/// When `work` panics, or when called outside a tokio runtime.
pub async fn blocking<T, F>(work: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let joined = tokio::task::spawn_blocking(move || {
        struct Reset;
        impl Drop for Reset {
            fn drop(&mut self) {
                IN_BLOCKING.set(false);
            }
        }
        IN_BLOCKING.set(true);
        let _reset = Reset;
        work()
    })
    .await;
    match joined {
        Ok(value) => value,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        // Cancelled: only when the runtime shuts down under us.
        Err(error) => panic!("blocking storage work did not finish: {error}"),
    }
}

/// Whether this thread may block on storage I/O now: it runs no async tasks, or it is inside
/// [`blocking`].
pub fn may_block() -> bool {
    IN_BLOCKING.get() || tokio::runtime::Handle::try_current().is_err()
}

/// Checks, in debug builds, that this thread may block on storage I/O (see the module docs).
#[track_caller]
pub(crate) fn assert_may_block(what: &str) {
    debug_assert!(
        may_block(),
        "blocking storage I/O ({what}) on an async worker thread; run it in `mycelium_broker::blocking`"
    );
}

/// The disk backend as the broker sees it: every call that touches files checks where it runs
/// ([`assert_may_block`]). Bounds and the topic list are in memory and may be read anywhere.
#[derive(Debug)]
pub struct Disk {
    inner: DiskBackend,
}

impl Disk {
    pub(crate) fn new(inner: DiskBackend) -> Disk {
        Disk { inner }
    }

    /// See [`DiskBackend::apply_retention`].
    pub(crate) fn apply_retention(
        &self,
        topic: &str,
        limits: &LogConfig,
        now_ns: u64,
    ) -> Result<u64, StorageError> {
        assert_may_block("retention");
        self.inner.apply_retention(topic, limits, now_ns)
    }
}

impl StorageBackend for Disk {
    fn append(&self, topic: &str, messages: &[StoredMessage]) -> Result<(), StorageError> {
        assert_may_block("append");
        self.inner.append(topic, messages)
    }

    fn sync(&self, topic: &str) -> Result<(), StorageError> {
        assert_may_block("sync");
        self.inner.sync(topic)
    }

    fn read(
        &self,
        topic: &str,
        from: u64,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredMessage>, StorageError> {
        assert_may_block("read");
        self.inner.read(topic, from, max_count, max_bytes)
    }

    fn seek_time(&self, topic: &str, ts_ns: u64) -> Result<u64, StorageError> {
        assert_may_block("seek by time");
        self.inner.seek_time(topic, ts_ns)
    }

    fn bounds(&self, topic: &str) -> Result<Bounds, StorageError> {
        self.inner.bounds(topic)
    }

    fn truncate_before(&self, topic: &str, sequence: u64) -> Result<(), StorageError> {
        assert_may_block("truncate");
        self.inner.truncate_before(topic, sequence)
    }

    fn reopen_from(&self, topic: &str, from: u64) -> Result<(), StorageError> {
        assert_may_block("reopen");
        self.inner.reopen_from(topic, from)
    }

    fn topics(&self) -> Vec<String> {
        self.inner.topics()
    }
}

/// Writes a state file atomically ([`mycelium_storage::write_atomic`]), checking where it runs.
pub(crate) fn write_state(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    assert_may_block("state file write");
    mycelium_storage::write_atomic(path, bytes)
}

/// Reads a state file, checking where it runs.
pub(crate) fn read_state(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    assert_may_block("state file read");
    std::fs::read(path)
}

/// Moves an unreadable state file aside ([`mycelium_storage::set_aside`]), checking where it runs.
pub(crate) fn set_aside(path: &std::path::Path) -> std::io::Result<std::path::PathBuf> {
    assert_may_block("state file set aside");
    mycelium_storage::set_aside(path)
}

/// The shared handle.
pub(crate) type DiskRef = Arc<Disk>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_thread_may_block() {
        assert!(may_block());
    }

    #[tokio::test]
    async fn an_async_worker_may_not_block_but_blocking_may() {
        assert!(!may_block());
        assert!(blocking(may_block).await);
        assert!(!may_block(), "the flag stays on the blocking thread");
    }

    #[tokio::test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "blocking storage I/O (read) on an async worker thread")]
    async fn a_read_on_an_async_worker_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let (backend, _) = DiskBackend::open(dir.path(), LogConfig::default()).unwrap();
        let _ = Disk::new(backend).read("t", 1, 1, 1);
    }

    #[tokio::test]
    async fn a_panic_in_blocking_work_reaches_the_caller() {
        let caught = tokio::spawn(blocking(|| -> u8 { panic!("boom") })).await;
        assert!(caught.unwrap_err().is_panic());
    }
}
