//! Client settings.

use std::time::Duration;

use crate::resilience::Backoff;

/// A credential: shown as `<redacted>` in debug output and logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Wraps the token text (surrounding whitespace, as a token file often ends, is dropped).
    pub fn new(text: impl Into<String>) -> Token {
        Token(text.into().trim().to_owned())
    }

    /// The token text.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The token in `path` (a token file; keep it mode 0600).
    ///
    /// # Errors
    /// The file cannot be read, or holds nothing.
    pub fn from_file(path: impl AsRef<std::path::Path>) -> std::io::Result<Token> {
        let path = path.as_ref();
        let token = Token::new(std::fs::read_to_string(path)?);
        if token.0.is_empty() {
            return Err(std::io::Error::other(format!(
                "{}: the token file is empty",
                path.display()
            )));
        }
        Ok(token)
    }

    /// The token in `MYCELIUM_TOKEN`, or the file named by `MYCELIUM_TOKEN_FILE`, as the CLI
    /// reads them (`None`: neither is set).
    ///
    /// # Errors
    /// `MYCELIUM_TOKEN_FILE` names a file that cannot be read or is empty.
    pub fn from_env() -> std::io::Result<Option<Token>> {
        if let Some(text) = std::env::var_os("MYCELIUM_TOKEN") {
            return Ok(Some(Token::new(text.to_string_lossy())));
        }
        std::env::var_os("MYCELIUM_TOKEN_FILE")
            .map(Token::from_file)
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_comes_from_a_file_trimmed_and_never_shows_in_debug_output() {
        let dir = std::env::temp_dir().join(format!("mycelium-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "myc_secret\n").unwrap();
        let token = Token::from_file(&file).unwrap();
        assert_eq!(token.expose(), "myc_secret");
        let options = ClientOptions {
            token: Some(token),
            ..ClientOptions::default()
        };
        assert!(!format!("{options:?}").contains("myc_secret"));
        std::fs::write(&file, " \n").unwrap();
        assert!(Token::from_file(&file).unwrap_err().to_string().contains("empty"));
        assert!(Token::from_file(dir.join("missing")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Every knob of the client, with defaults a service can start from.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Name shown in the broker's stats.
    pub name: String,
    /// The credential sent in HELLO: a service user's token or a JWT (`None`: none; on the Unix
    /// socket the broker may know the process by its uid).
    pub token: Option<Token>,
    /// `tls://` URLs: PEM CA certificates that sign the broker's certificate (`None`: the
    /// system's roots are not read; a CA file is required).
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// `tls://` URLs with mutual TLS: this client's PEM certificate chain and key.
    pub tls_client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Reconnect delays.
    pub backoff: Backoff,
    /// Time allowed for one connection attempt (connect + handshake).
    pub connect_timeout: Duration,
    /// Time allowed for a request's answer (subscribe, flush, confirmed publish, stats).
    pub request_timeout: Duration,
    /// Bytes of frames held while disconnected; a publish that would exceed it fails with
    /// `BufferFull`. While connected the same bound applies backpressure instead.
    pub buffer_bytes_max: usize,
    /// Consecutive failed connection attempts that open the circuit breaker.
    pub breaker_threshold: u32,
    /// How long an open breaker fails callers fast before one probe attempt.
    pub breaker_open_for: Duration,
    /// Messages a subscription holds before the client stops reading from the socket.
    pub subscription_capacity: usize,
    /// Send PING after this much idle time to detect a dead connection.
    pub ping_interval: Duration,
    /// A publish that finds nothing queued and the writer idle writes to the socket from the
    /// caller's task, at most once per this interval (so bursts still gather into one write);
    /// `None`: always through the writer task.
    pub inline_write_gap: Option<Duration>,
    /// A pipelined publish ([`Client::publish_pipelined`](crate::Client::publish_pipelined))
    /// waits in the client until its caller awaits a confirmation, so that a window of them
    /// leaves in one write; should nobody await, it leaves after at most this long (plus the
    /// timer's millisecond tick).
    pub pipeline_hold_max: Duration,
    /// Failed reconnect attempts in a row before the client gives up and closes (`None`:
    /// never); callers then get `GaveUp`.
    pub max_reconnects: Option<u32>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            name: "mycelium-client".into(),
            token: None,
            tls_ca_file: None,
            tls_client_cert: None,
            backoff: Backoff::default(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            buffer_bytes_max: 8 * 1024 * 1024,
            breaker_threshold: 5,
            breaker_open_for: Duration::from_secs(5),
            subscription_capacity: 65_536,
            ping_interval: Duration::from_secs(30),
            inline_write_gap: Some(Duration::from_micros(20)),
            pipeline_hold_max: Duration::from_micros(500),
            max_reconnects: None,
        }
    }
}
