//! [`ClientOptions`] from a TOML file and the environment, with the broker's conventions: human
//! units (`"5s"`, `"8 MiB"`), unknown keys refused with their name, environment variables over
//! the file.
//!
//! ```toml
//! urls = ["unix:///run/mycelium.sock", "tcp://10.0.0.2:7420"]  # tried in order
//! name = "arbitrage"
//! token_file = "/etc/mycelium/arbitrage.token"
//! connect_timeout = "2s"
//! request_timeout = "10s"
//! buffer_size = "8 MiB"
//! max_reconnects = 20
//! [backoff]
//! initial = "100ms"
//! max = "10s"
//! ```
//!
//! Environment (over the file): `MYCELIUM_URL` (a comma-separated list), `MYCELIUM_TOKEN`,
//! `MYCELIUM_TOKEN_FILE`, `MYCELIUM_CLIENT_NAME`, `MYCELIUM_CONNECT_TIMEOUT`,
//! `MYCELIUM_REQUEST_TIMEOUT`, `MYCELIUM_MAX_RECONNECTS`.

use std::path::{Path, PathBuf};

use mycelium_protocol::units::{ByteSize, HumanDuration};
use serde::Deserialize;

use crate::{ClientOptions, Error, ErrorKind, Token};

/// Client settings as a file gives them; every key optional (the defaults of [`ClientOptions`]).
///
/// ```
/// use mycelium_client::config::ClientConfig;
///
/// let config = ClientConfig::from_toml(
///     r#"
///     urls = ["unix:///run/mycelium.sock", "tcp://10.0.0.2:7420"]
///     name = "execution"
///     request_timeout = "3s"
///     max_reconnects = 10
///     "#,
///     "client.toml",
/// )?
/// .with_env()?;
/// let options = config.options()?;
/// assert_eq!(options.name, "execution");
/// assert_eq!(options.max_reconnects, Some(10));
/// // `Client::connect_config(&config)` connects to the first broker that answers.
/// # Ok::<(), mycelium_client::Error>(())
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// Broker URLs, tried in order: the first that answers is used, and after a lost connection
    /// the next ones are tried in turn (failover).
    pub urls: Vec<String>,
    /// Name shown in the broker's stats.
    pub name: Option<String>,
    /// A file holding the credential (keep it mode 0600).
    pub token_file: Option<PathBuf>,
    /// `tls://` URLs: the CA certificates that sign the broker's certificate.
    pub tls_ca_file: Option<PathBuf>,
    /// Mutual TLS: this client's certificate chain (with `tls_key_file`).
    pub tls_cert_file: Option<PathBuf>,
    /// Mutual TLS: this client's private key.
    pub tls_key_file: Option<PathBuf>,
    /// Time for one connection attempt.
    pub connect_timeout: Option<HumanDuration>,
    /// Time for a request's answer.
    pub request_timeout: Option<HumanDuration>,
    /// Bytes held while disconnected.
    pub buffer_size: Option<ByteSize>,
    /// Consecutive failed attempts that open the circuit breaker.
    pub breaker_threshold: Option<u32>,
    /// How long an open breaker fails callers fast.
    pub breaker_open_for: Option<HumanDuration>,
    /// Idle time before a PING.
    pub ping_interval: Option<HumanDuration>,
    /// Messages a subscription holds before the client stops reading.
    pub subscription_capacity: Option<usize>,
    /// Failed reconnect attempts in a row before the client gives up (none: never).
    pub max_reconnects: Option<u32>,
    /// Reconnect delays.
    pub backoff: BackoffConfig,
    /// The credential itself (from `MYCELIUM_TOKEN`; not read from the file).
    #[serde(skip)]
    token: Option<Token>,
}

/// `[backoff]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackoffConfig {
    /// Delay before the first retry.
    pub initial: Option<HumanDuration>,
    /// Largest delay.
    pub max: Option<HumanDuration>,
}

fn config_error(message: String) -> Error {
    Error::new(ErrorKind::Config, message)
}

impl ClientConfig {
    /// Reads TOML text (`origin` names it in errors).
    ///
    /// # Errors
    /// `Config`: the text is not TOML, or a key is unknown or has a bad value (named).
    pub fn from_toml(text: &str, origin: &str) -> Result<ClientConfig, Error> {
        toml::from_str(text).map_err(|e| config_error(format!("{origin}: {e}")))
    }

    /// Reads a TOML file.
    ///
    /// # Errors
    /// `Config`: the file cannot be read, or as [`ClientConfig::from_toml`].
    pub fn from_file(path: &Path) -> Result<ClientConfig, Error> {
        let text =
            std::fs::read_to_string(path).map_err(|e| config_error(format!("{}: {e}", path.display())))?;
        ClientConfig::from_toml(&text, &path.display().to_string())
    }

    /// Applies the environment variables (see the module docs) over these settings.
    ///
    /// # Errors
    /// `Config`: a variable with a bad value (named).
    pub fn with_env(self) -> Result<ClientConfig, Error> {
        self.with_vars(|key| std::env::var(key).ok())
    }

    /// [`ClientConfig::with_env`] with the variables read by `var`.
    fn with_vars(mut self, var: impl Fn(&str) -> Option<String>) -> Result<ClientConfig, Error> {
        let duration = |key: &str, text: String| {
            humantime::parse_duration(&text)
                .map(HumanDuration)
                .map_err(|e| config_error(format!("{key}=`{text}`: not a duration like \"5s\": {e}")))
        };
        if let Some(urls) = var("MYCELIUM_URL") {
            self.urls = urls
                .split(',')
                .map(|u| u.trim().to_owned())
                .filter(|u| !u.is_empty())
                .collect();
        }
        if let Some(name) = var("MYCELIUM_CLIENT_NAME") {
            self.name = Some(name);
        }
        if let Some(file) = var("MYCELIUM_TOKEN_FILE") {
            self.token_file = Some(PathBuf::from(file));
        }
        if let Some(token) = var("MYCELIUM_TOKEN") {
            self.token = Some(Token::new(token));
        }
        if let Some(text) = var("MYCELIUM_CONNECT_TIMEOUT") {
            self.connect_timeout = Some(duration("MYCELIUM_CONNECT_TIMEOUT", text)?);
        }
        if let Some(text) = var("MYCELIUM_REQUEST_TIMEOUT") {
            self.request_timeout = Some(duration("MYCELIUM_REQUEST_TIMEOUT", text)?);
        }
        if let Some(text) = var("MYCELIUM_MAX_RECONNECTS") {
            let n = text
                .parse()
                .map_err(|_| config_error(format!("MYCELIUM_MAX_RECONNECTS=`{text}`: not a whole number")))?;
            self.max_reconnects = Some(n);
        }
        Ok(self)
    }

    /// The URL list as [`Client::connect_with`](crate::Client::connect_with) takes it (comma
    /// separated).
    ///
    /// # Errors
    /// `Config`: no URL.
    pub fn url(&self) -> Result<String, Error> {
        if self.urls.is_empty() {
            return Err(config_error("no broker URL: set `urls` or MYCELIUM_URL".into()));
        }
        Ok(self.urls.join(","))
    }

    /// The options these settings give.
    ///
    /// # Errors
    /// `Config`: the token file cannot be read, a TLS key without its certificate, a zero
    /// threshold or capacity.
    pub fn options(&self) -> Result<ClientOptions, Error> {
        let mut options = ClientOptions::default();
        if let Some(name) = &self.name {
            options.name.clone_from(name);
        }
        options.token = match (&self.token, &self.token_file) {
            (Some(token), _) => Some(token.clone()),
            (None, Some(file)) => Some(
                Token::from_file(file)
                    .map_err(|e| config_error(format!("token_file {}: {e}", file.display())))?,
            ),
            (None, None) => None,
        };
        options.tls_ca_file.clone_from(&self.tls_ca_file);
        options.tls_client_cert = match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (None, None) => None,
            _ => {
                return Err(config_error(
                    "tls_cert_file and tls_key_file go together (mutual TLS)".into(),
                ));
            }
        };
        let set = |target: &mut std::time::Duration, value: Option<HumanDuration>| {
            if let Some(HumanDuration(d)) = value {
                *target = d;
            }
        };
        set(&mut options.connect_timeout, self.connect_timeout);
        set(&mut options.request_timeout, self.request_timeout);
        set(&mut options.breaker_open_for, self.breaker_open_for);
        set(&mut options.ping_interval, self.ping_interval);
        set(&mut options.backoff.initial, self.backoff.initial);
        set(&mut options.backoff.max, self.backoff.max);
        if let Some(size) = self.buffer_size {
            options.buffer_bytes_max = size.bytes();
        }
        if let Some(n) = self.breaker_threshold {
            if n == 0 {
                return Err(config_error("breaker_threshold: must be at least 1".into()));
            }
            options.breaker_threshold = n;
        }
        if let Some(n) = self.subscription_capacity {
            if n == 0 {
                return Err(config_error("subscription_capacity: must be at least 1".into()));
            }
            options.subscription_capacity = n;
        }
        options.max_reconnects = self.max_reconnects;
        Ok(options)
    }
}

impl crate::Client {
    /// Connects with settings from a file and the environment ([`ClientConfig`]): to the first
    /// of its URLs that answers, failing over to the others in turn after a lost connection.
    ///
    /// # Errors
    /// `Config` for bad settings; else as [`crate::Client::connect_with`].
    pub async fn connect_config(config: &ClientConfig) -> Result<crate::Client, Error> {
        crate::Client::connect_with(&config.url()?, config.options()?).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_file_and_the_environment_make_the_options() {
        let config = ClientConfig::from_toml(
            r#"
            urls = ["unix:///run/m.sock", "tcp://10.0.0.2:7420"]
            name = "arbitrage"
            connect_timeout = "2s"
            buffer_size = "1 MiB"
            max_reconnects = 20
            [backoff]
            initial = "50ms"
            "#,
            "client.toml",
        )
        .unwrap();
        let env = |key: &str| match key {
            "MYCELIUM_REQUEST_TIMEOUT" => Some("3s".to_owned()),
            "MYCELIUM_TOKEN" => Some("myc_secret".to_owned()),
            _ => None,
        };
        let config = config.with_vars(env).unwrap();
        assert_eq!(config.url().unwrap(), "unix:///run/m.sock,tcp://10.0.0.2:7420");
        let options = config.options().unwrap();
        assert_eq!(options.name, "arbitrage");
        assert_eq!(options.connect_timeout, Duration::from_secs(2));
        assert_eq!(
            options.request_timeout,
            Duration::from_secs(3),
            "the environment over the file"
        );
        assert_eq!(options.buffer_bytes_max, 1 << 20);
        assert_eq!(options.backoff.initial, Duration::from_millis(50));
        assert_eq!(options.max_reconnects, Some(20));
        assert_eq!(options.token.unwrap().expose(), "myc_secret");
    }

    #[test]
    fn bad_settings_are_named() {
        let error = ClientConfig::from_toml("urls = []\nconect_timeout = \"2s\"", "client.toml").unwrap_err();
        assert!(error.to_string().contains("conect_timeout"), "{error}");
        let error = ClientConfig::from_toml("connect_timeout = \"soon\"", "client.toml").unwrap_err();
        assert!(error.to_string().contains("soon"), "{error}");
        let error = ClientConfig::default()
            .with_vars(|k| (k == "MYCELIUM_MAX_RECONNECTS").then(|| "many".to_owned()))
            .unwrap_err();
        assert!(error.to_string().contains("MYCELIUM_MAX_RECONNECTS"), "{error}");
        assert!(ClientConfig::default().url().is_err());
        let half_tls = ClientConfig {
            tls_cert_file: Some("c.pem".into()),
            ..ClientConfig::default()
        };
        assert!(half_tls.options().is_err());
    }
}
