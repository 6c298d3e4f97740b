//! Storage errors.

use std::io;

/// Why a storage operation failed. A failed append leaves nothing behind: the segment is cut back
/// to its last whole record.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The disk (or filesystem quota) is full; nothing of this append was kept.
    #[error("storage full: {0}")]
    Full(io::Error),
    /// Any other I/O error.
    #[error("storage I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The error.
        source: io::Error,
    },
    /// Appended sequences must continue the log without gaps.
    #[error("append out of order: expected sequence {expected}, got {got}")]
    OutOfOrder {
        /// The log's next sequence.
        expected: u64,
        /// The first sequence offered.
        got: u64,
    },
    /// A field too large for its encoding.
    #[error("{what} of {size} bytes is too large to store")]
    TooLarge {
        /// Which field.
        what: &'static str,
        /// Its size.
        size: usize,
    },
    /// Bytes that do not decode (found while reading).
    #[error("malformed stored data: {reason}")]
    Malformed {
        /// What is wrong.
        reason: String,
    },
    /// A topic name that cannot be a directory name.
    #[error("invalid topic name for storage: `{0}`")]
    InvalidTopic(String),
}

impl StorageError {
    pub(crate) fn io(path: &std::path::Path, source: io::Error) -> StorageError {
        // ENOSPC (28) and EDQUOT (122): the disk or the quota is full. EFBIG (27): a size limit.
        match source.raw_os_error() {
            Some(28) | Some(122) | Some(27) => StorageError::Full(source),
            _ => StorageError::Io {
                path: path.display().to_string(),
                source,
            },
        }
    }
}
