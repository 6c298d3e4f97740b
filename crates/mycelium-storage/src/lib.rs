//! Mycelium's storage: per topic an append-only log of segment files, each record framed with its
//! length and a CRC-32C, verified at start-up (a torn tail is cut, corrupt regions are skipped and
//! reported), behind a [`StorageBackend`] trait with memory and disk implementations.
//!
//! ```text
//! <data_dir>/topics/<topic>/00000000000000000001.log   segment: records from sequence 1
//!                          /00000000000000100001.log   next segment (rolls at segment_bytes)
//!                          /start                      first readable sequence (after truncation)
//! record: length u32 | crc32c u32 | body: StoredMessage encoding (see `message.rs`)
//! ```
//!
//! Appends are written with one `write` per batch and made durable by [`SegmentLog::sync`]; the
//! broker decides when to sync (fsync policy `always`, `batch` = group commit, `never`).

mod backend;
mod error;
mod layout;
mod log;
mod message;
mod range_crc;
mod record;
mod segment;

pub use backend::{DiskBackend, Faults, MemoryBackend, StorageBackend};
pub use error::StorageError;
pub use layout::{
    DIR_MODE, DataDir, FILE_MODE, create_dir_durable, read_private, set_aside, sync_dir, write_atomic,
};
pub use log::{Bounds, LogConfig, SegmentLog};
pub use message::{MESSAGE_MIN_BYTES, StoredMessage};
pub use segment::SyncTarget;

/// What opening a log found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segment files found.
    pub segments: usize,
    /// Whole, verified records kept.
    pub records: u64,
    /// Bytes cut off the end of the last segment (a write torn by a crash).
    pub truncated_bytes: u64,
    /// Regions inside segments that failed verification and are skipped.
    pub corrupt_regions: u64,
    /// Bytes in those regions.
    pub dropped_bytes: u64,
    /// Sequences missing between kept records (lost to corruption).
    pub missing_sequences: u64,
}
