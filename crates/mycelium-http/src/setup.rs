//! What can stop the HTTP door from starting.

/// An HTTP setting that cannot be used, or a listener that cannot be bound.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A topic pattern (in a rate limit) does not parse.
    #[error("{what} `{pattern}`: {reason}")]
    Pattern {
        /// Where the pattern was given.
        what: &'static str,
        /// The pattern.
        pattern: String,
        /// Why it does not parse.
        reason: String,
    },
    /// A rate limit of 0.
    #[error("a rate limit's {0} must be above 0")]
    ZeroQuota(&'static str),
    /// A listener cannot be bound.
    #[error("{what} {target}: {source}")]
    Bind {
        /// The setting (`http.listen`, `http.unix_socket`).
        what: &'static str,
        /// The address or path.
        target: String,
        /// The I/O error.
        source: std::io::Error,
    },
}
