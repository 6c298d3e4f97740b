//! What can stop the HTTP door from starting, or a token from being issued.

use std::path::PathBuf;

/// An HTTP setting that cannot be used, a listener that cannot be bound, or a token that cannot
/// be signed.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A key file cannot be read, or does not hold a key of the configured kind.
    #[error("{}: {reason}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// The HS256 secret is too short to be safe.
    #[error("the HS256 secret must be at least 32 bytes")]
    ShortSecret,
    /// RS256 / ES256 tokens are issued with the private key, and none is configured.
    #[error("issuing RS256/ES256 tokens needs the private key file (http.jwt_private_key)")]
    NoPrivateKey,
    /// A topic pattern (in a token request or a rate limit) does not parse.
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
    /// Signing the token failed.
    #[error("signing the token: {0}")]
    Sign(String),
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
