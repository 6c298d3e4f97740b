//! Client errors with matchable kinds.

use mycelium_protocol::ErrorCode;

/// What went wrong, as a kind to match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The URL is not `unix:///path`, `tcp://host:port` or `tls://host:port`.
    InvalidUrl,
    /// The broker could not be reached or refused the handshake.
    Connect,
    /// The connection dropped while the request was in flight; it may or may not have been done.
    Disconnected,
    /// Disconnected and the publish buffer is full: the message was not taken.
    BufferFull,
    /// The circuit breaker is open: the broker failed repeatedly; failing fast.
    CircuitOpen,
    /// The broker answered with an ERROR frame.
    Server,
    /// No answer within the request timeout.
    Timeout,
    /// The client was closed.
    Closed,
    /// An argument the protocol cannot carry (a topic over 255 bytes, ...).
    InvalidArgument,
    /// The broker sent something this client does not understand.
    Protocol,
    /// Client settings (a file, the environment) with a bad or missing value.
    Config,
    /// Every reconnect attempt allowed (`max_reconnects`) failed: the client gave up.
    GaveUp,
}

/// A client error.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
    code: Option<u16>,
    detail: u16,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            code: None,
            detail: 0,
        }
    }

    pub(crate) fn server(code: u16, detail: u16, message: &str) -> Self {
        let name = ErrorCode::from_u16(code).map_or_else(|| format!("error {code}"), |c| c.to_string());
        Error {
            kind: ErrorKind::Server,
            message: format!("{name}: {message}"),
            code: Some(code),
            detail,
        }
    }

    /// The kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// For `Server` errors: the broker's error code.
    pub fn server_code(&self) -> Option<ErrorCode> {
        self.code.and_then(ErrorCode::from_u16)
    }

    /// For `Server` errors: the code's detail (the TLV fault for invalid TLV payloads).
    pub fn detail(&self) -> u16 {
        self.detail
    }
}
