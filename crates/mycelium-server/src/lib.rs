//! The Mycelium server: configuration, listeners, connection tasks and shutdown.
//!
//! [`Server::bind`] opens the listeners (so tests can bind port 0 and a tempdir socket and learn
//! the real addresses); [`Server::run`] serves until its shutdown token is cancelled, then stops
//! accepting, lets every connection's writer flush what is already queued, and removes the socket
//! file. The `mycelium` binary is a thin wrapper around [`run`].

mod admin;
mod config;
mod connection;
#[doc(hidden)]
pub mod harness;
mod listener;
mod reload;
mod sessions;
pub use mycelium_protocol::units;
pub use reload::{ConfigSource, LogFilter, Reloader};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::BytesMut;
use mycelium_broker::{Broker, Door};
use mycelium_protocol::{ErrorCode, ErrorFrame, Frame, encode};
use tokio::io::AsyncRead;
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{
    AuthSection, Config, ConfigError, DomainsSection, ENV_PREFIX, HttpSection, LogSection,
    PerformanceSection, Problem, QuotaSection, RateLimitSection, ServerSection, TlsSection,
    TopicQuotaSection, TopicSection, UserSection,
};

/// A `[[topics]]` entry named `name` with defaults, adjusted by `adjust` (for tests and tools).
pub fn config_topic(name: &str, adjust: impl FnOnce(&mut TopicSection)) -> TopicSection {
    let mut topic = TopicSection {
        name: name.to_owned(),
        ..TopicSection::default()
    };
    adjust(&mut topic);
    topic
}

use crate::connection::Settings;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A configured topic is invalid.
    #[error("configuration: {0}")]
    Broker(#[from] mycelium_broker::PublishError),
    /// The HTTP API could not start (address, rate limit).
    #[error("http: {0}")]
    Http(#[from] mycelium_http::SetupError),
    /// A key of `[auth]` cannot be used.
    #[error("auth: {0}")]
    Auth(#[from] mycelium_auth::KeyError),
    /// TLS material that cannot be used.
    #[error("tls: {0}")]
    Tls(#[from] mycelium_auth::tls::TlsError),
    /// The audit log cannot be opened.
    #[error("auth.audit_log {}: {source}", path.display())]
    Audit {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The socket path is in use or is not ours to replace.
    #[error("cannot use socket path {}: {reason}", path.display())]
    SocketPathTaken {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A listener could not be bound.
    #[error("cannot bind {what}: {source}")]
    Bind {
        /// Which listener.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A server with its listeners bound, ready to [`run`](Server::run).
#[derive(Debug)]
pub struct Server {
    broker: Arc<Broker>,
    /// Native connection settings; a reload replaces them for new connections.
    settings: Arc<arc_swap::ArcSwap<Settings>>,
    admission: Arc<mycelium_net::admission::Admission>,
    unix: Option<(UnixListener, PathBuf)>,
    tcp: Option<TcpListener>,
    tcp_addr: Option<SocketAddr>,
    /// TLS on the native TCP listener.
    tls: Option<Arc<mycelium_auth::tls::LiveTls>>,
    reloader: Arc<Reloader>,
    http: Option<mycelium_http::HttpServer>,
    http_addr: Option<SocketAddr>,
    shutdown_timeout: std::time::Duration,
    shutdown: CancellationToken,
}

impl Server {
    /// Builds the broker and binds the configured listeners.
    ///
    /// # Errors
    /// Invalid configuration, a socket path in use, an address that cannot be bound.
    pub async fn bind(mut config: Config) -> Result<Server, ServerError> {
        config.resolve();
        let invalid = |problems| ConfigError::Invalid {
            file: "configuration".into(),
            problems,
        };
        config.validate().map_err(invalid)?;
        let broker = Broker::new(config.broker_config().map_err(invalid)?)?;
        // Topics made at run time (the HTTP API) come back, after the configured ones.
        let restoring = Arc::clone(&broker);
        for (topic, problem) in
            mycelium_broker::blocking(move || mycelium_http::restore_topics(&restoring)).await
        {
            tracing::error!(topic, %problem, "a topic of the registry (topics.json) was not restored");
        }
        let unix = match config.socket_path() {
            Some(path) => Some((listener::bind_unix(&path, config.socket_mode())?, path)),
            None => None,
        };
        let tcp = match config.tcp_addr() {
            Some(addr) => Some(listener::bind_tcp(addr).await?),
            None => None,
        };
        let tcp_addr = tcp.as_ref().and_then(|l| l.local_addr().ok());
        let auth = Arc::new(mycelium_auth::Authenticator::new(config.auth_config()?)?);
        if auth.mode() == mycelium_auth::Mode::None {
            tracing::warn!(
                "AUTHENTICATION IS OFF (auth.mode = \"none\"): every caller of every door is an admin; \
                 keep the listeners on loopback or set auth.mode = \"required\""
            );
        }
        if !config.auth.audit_log.is_empty() {
            let path = PathBuf::from(&config.auth.audit_log);
            let log = mycelium_broker::AuditLog::to_file(&path).map_err(|source| ServerError::Audit {
                path: path.clone(),
                source,
            })?;
            broker.set_audit(log);
        }
        let tls = config
            .tls_files()
            .map(|files| mycelium_auth::tls::server_config(&files))
            .transpose()?
            .map(mycelium_auth::tls::LiveTls::new);
        let native_tls = tls.clone().filter(|_| !config.tls.plain_tcp);
        let http = match config.http_config(&auth) {
            Some(mut http) => Some({
                http.tls = tls.clone().filter(|_| !config.tls.plain_http);
                mycelium_http::bind(Arc::clone(&broker), http)
                    .await
                    .map_err(ServerError::Http)?
            }),
            None => None,
        };
        let http_addr = http.as_ref().and_then(mycelium_http::HttpServer::local_addr);
        let limiter = http.as_ref().map(mycelium_http::HttpServer::rate_limiter);
        let health = Arc::new(mycelium_broker::health::Health::new(
            config.health_config(),
            &config.server.name,
            std::path::Path::new(&config.storage.data_dir),
        ));
        let mut listeners = Vec::new();
        if let Some((_, path)) = &unix {
            listeners.push(format!("unix:{}", path.display()));
        }
        if let Some(addr) = tcp_addr {
            listeners.push(format!("tcp:{addr}"));
        }
        if let Some(addr) = http_addr {
            listeners.push(format!("http:{addr}"));
        }
        health.set_listeners(listeners);
        broker.set_health(Arc::clone(&health));
        let settings = Arc::new(arc_swap::ArcSwap::from_pointee(settings_of(
            &config,
            &auth,
            &Arc::default(),
        )));
        let admission = Arc::new(mycelium_net::admission::Admission::new(
            config.server.max_connections,
            config.server.max_connections_per_ip,
        ));
        let parts = reload::Parts {
            broker: Arc::clone(&broker),
            auth,
            tls: tls.clone(),
            limiter,
            settings: Arc::clone(&settings),
            admission: Arc::clone(&admission),
            health,
        };
        let shutdown_timeout = config.server.shutdown_timeout.0;
        let reloader = Reloader::new(parts, config);
        broker.set_control(Arc::clone(&reloader) as Arc<dyn mycelium_broker::Control>);
        Ok(Server {
            broker,
            settings,
            admission,
            unix,
            tcp,
            tcp_addr,
            tls: native_tls,
            reloader,
            http,
            http_addr,
            shutdown_timeout,
            shutdown: CancellationToken::new(),
        })
    }

    /// The reload machinery (`reload()` reads the configuration again; see [`Server::watch`]).
    pub fn reloader(&self) -> &Arc<Reloader> {
        &self.reloader
    }

    /// Lets reloads read `source` again, and starts the triggers asked for: SIGHUP, and changes
    /// of the configuration file (its directory is watched). Call inside the runtime, before
    /// [`Server::run`]; the triggers stop with the server.
    ///
    /// # Errors
    /// The signal handler or the file watch could not be set up.
    pub fn watch(&self, source: ConfigSource, sighup: bool, file_changes: bool) -> std::io::Result<()> {
        let file = source.file.clone();
        self.reloader.set_source(source);
        if sighup {
            reload::watch::on_sighup(Arc::clone(&self.reloader), self.shutdown.clone())?;
        }
        if file_changes && let Some(file) = file {
            reload::watch::on_change(Arc::clone(&self.reloader), &file, self.shutdown.clone())
                .map_err(|e| std::io::Error::other(format!("watching {}: {e}", file.display())))?;
        }
        Ok(())
    }

    /// The broker core.
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// The Unix socket path, if listening there.
    pub fn unix_path(&self) -> Option<&PathBuf> {
        self.unix.as_ref().map(|(_, path)| path)
    }

    /// The bound TCP address, if listening there.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// The bound HTTP address, if the HTTP API listens on TCP.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The token that stops [`Server::run`].
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves until the shutdown token is cancelled, then shuts down gracefully.
    pub async fn run(self) {
        let Server {
            broker,
            settings,
            admission,
            unix,
            tcp,
            tls,
            http,
            shutdown_timeout,
            shutdown,
            ..
        } = self;
        let http_task = http.map(|http| tokio::spawn(http.run(shutdown.clone(), shutdown_timeout)));
        let monitor = broker.health().map(|health| {
            let stop = shutdown.clone();
            tokio::spawn(
                Arc::clone(health).run(Arc::downgrade(&broker), async move { stop.cancelled().await }),
            )
        });
        let tracker = TaskTracker::new();
        let socket_path = unix.as_ref().map(|(_, p)| p.clone());
        if let Some(path) = &socket_path {
            tracing::info!(path = %path.display(), "listening on unix socket");
        }
        if let Some(listener) = &tcp
            && let Ok(addr) = listener.local_addr()
        {
            tracing::info!(%addr, "listening on tcp");
        }
        let accept = Accept {
            broker,
            settings,
            admission,
            tracker: tracker.clone(),
            shutdown: shutdown.clone(),
        };
        let unix_loop = async {
            if let Some((listener, _)) = unix {
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        accepted = listener.accept() => match accepted {
                            Ok((stream, _)) => {
                                // AF_UNIX sockets default to a ~200 KiB send buffer (TCP autotunes
                                // to megabytes): give deliveries the same room to batch into.
                                let _ = socket2::SockRef::from(&stream).set_send_buffer_size(UNIX_SEND_BUFFER_BYTES);
                                // Who is on the other end, as the kernel says (SO_PEERCRED).
                                let uid = stream.peer_cred().ok().map(|cred| cred.uid());
                                // Watched for reading only: the client's reads do not wake us
                                // (see mycelium-net).
                                match mycelium_net::split(stream) {
                                    Ok((read, write)) => {
                                        let peer = connection::Peer {
                                            door: Door::Unix,
                                            address: "unix".to_owned(),
                                            uid,
                                            common_name: None,
                                        };
                                        accept.spawn(read, write, peer, None);
                                    }
                                    Err(error) => tracing::warn!(%error, "unix connection not registered; dropped"),
                                }
                            }
                            Err(error) => accept_error(&error).await,
                        },
                    }
                }
            }
        };
        let tcp_loop = async {
            if let Some(listener) = tcp {
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        accepted = listener.accept() => match accepted {
                            Ok((stream, peer)) => {
                                let _ = stream.set_nodelay(true);
                                match &tls {
                                    Some(live) => accept.spawn_tls(stream, tokio_rustls::TlsAcceptor::from(live.current()), peer),
                                    None => {
                                        let (read, write) = stream.into_split();
                                        let ip = peer.ip();
                                        let peer = connection::Peer {
                                            door: Door::Tcp,
                                            address: format!("tcp:{peer}"),
                                            uid: None,
                                            common_name: None,
                                        };
                                        accept.spawn(read, write, peer, Some(ip));
                                    }
                                }
                            }
                            Err(error) => accept_error(&error).await,
                        },
                    }
                }
            }
        };
        tokio::join!(unix_loop, tcp_loop);
        tracing::info!("shutting down: flushing connections");
        if let Some(task) = http_task {
            let _ = task.await;
        }
        if let Some(task) = monitor {
            let _ = task.await;
        }
        tracker.close();
        tracker.wait().await;
        // Every connection is gone: store, sync and confirm what is still queued, then stop.
        let broker_for_close = Arc::clone(&accept.broker);
        mycelium_broker::blocking(move || broker_for_close.close_storage()).await;
        if let Some(path) = &socket_path {
            listener::remove_socket(path);
        }
        tracing::info!("stopped");
    }
}

/// Send buffer requested for accepted Unix connections (the kernel caps it at `net.core.wmem_max`).
const UNIX_SEND_BUFFER_BYTES: usize = 4 << 20;

async fn accept_error(error: &std::io::Error) {
    // Out of file descriptors and the like: back off briefly instead of spinning.
    tracing::warn!(%error, "accept failed");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
}

struct Accept {
    broker: Arc<Broker>,
    settings: Arc<arc_swap::ArcSwap<Settings>>,
    admission: Arc<mycelium_net::admission::Admission>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Accept {
    /// A place for one more connection from `ip` (none: the Unix socket), or why not.
    fn admit(
        &self,
        ip: Option<std::net::IpAddr>,
    ) -> Result<mycelium_net::admission::Slot, (ErrorCode, String)> {
        use mycelium_net::admission::Refused;
        self.admission.admit(ip).map_err(|refused| {
            let text = match refused {
                Refused::Full(max) => format!("the broker is at max_connections ({max}); try again later"),
                Refused::PerIp(ip, max) => {
                    format!("{ip} holds {max} connections, the limit (server.max_connections_per_ip)")
                }
            };
            (ErrorCode::TooManyConnections, text)
        })
    }

    fn spawn<R, W>(&self, read: R, write: W, peer: connection::Peer, ip: Option<std::net::IpAddr>)
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: connection::SocketWrite,
    {
        let slot = match self.admit(ip) {
            Ok(slot) => slot,
            Err((code, text)) => {
                self.tracker.spawn(async move {
                    let mut buf = BytesMut::new();
                    let _ = encode(&mut buf, 0, &Frame::Error(ErrorFrame::new(code, &text)));
                    let sent = connection::write_all(&write, &buf);
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), sent).await;
                    // Dropping the write half shuts the sending side down.
                    drop(write);
                });
                return;
            }
        };
        let broker = Arc::clone(&self.broker);
        let settings = self.settings.load_full();
        let shutdown = self.shutdown.clone();
        self.tracker.spawn(async move {
            connection::serve(read, write, peer, broker, settings, shutdown).await;
            drop(slot);
        });
    }

    /// A TCP connection with TLS: the handshake (within `connection_timeout`) runs on the
    /// connection's own task, then it is served like any other; a verified client certificate's
    /// common name goes with it to the HELLO check.
    fn spawn_tls(
        &self,
        stream: tokio::net::TcpStream,
        acceptor: tokio_rustls::TlsAcceptor,
        peer: SocketAddr,
    ) {
        let address = format!("tls:{peer}");
        let slot = match self.admit(Some(peer.ip())) {
            Ok(slot) => slot,
            Err((_, text)) => {
                // No ERROR frame can be sent before the handshake: the client sees the close.
                tracing::debug!(%address, %text, "TLS connection refused");
                return;
            }
        };
        let broker = Arc::clone(&self.broker);
        let settings = self.settings.load_full();
        let shutdown = self.shutdown.clone();
        self.tracker.spawn(async move {
            match tokio::time::timeout(settings.connection_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let common_name = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .and_then(mycelium_auth::tls::common_name);
                    let (read, write) = tokio::io::split(tls);
                    let write = connection::TlsWrite(tokio::sync::Mutex::new(write));
                    let peer = connection::Peer {
                        door: Door::Tcp,
                        address,
                        uid: None,
                        common_name,
                    };
                    connection::serve(read, write, peer, broker, settings, shutdown).await;
                }
                Ok(Err(error)) => tracing::debug!(%address, %error, "TLS handshake failed"),
                Err(_) => tracing::debug!(%address, "no TLS handshake within connection_timeout"),
            }
            drop(slot);
        });
    }
}

/// The native connections' settings under `config`.
pub(crate) fn settings_of(
    config: &Config,
    auth: &Arc<mycelium_auth::Authenticator>,
    sessions: &Arc<sessions::Sessions>,
) -> Settings {
    Settings {
        server_name: format!("{} {}", config.server.name, env!("CARGO_PKG_VERSION")),
        frame_bytes_max: config.server.max_frame_size.bytes(),
        connection_timeout: config.server.connection_timeout.0,
        buffer_capacity: config.performance.channel_capacity.bytes(),
        batch_size: config.performance.batch_size,
        flush_interval: config.performance.flush_interval.0,
        inline_flush_bytes: config.performance.inline_flush_bytes.bytes(),
        shutdown_timeout: config.server.shutdown_timeout.0,
        idle_timeout: config.server.idle_timeout.0,
        frame_timeout: config.server.frame_timeout.0,
        auth: Arc::clone(auth),
        sessions: Arc::clone(sessions),
    }
}

/// Binds and serves `config` until `shutdown` is cancelled.
///
/// # Errors
/// As [`Server::bind`].
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), ServerError> {
    let server = Server::bind(config).await?;
    let token = server.shutdown_token();
    let forward = tokio::spawn(async move {
        shutdown.cancelled().await;
        token.cancel();
    });
    server.run().await;
    forward.abort();
    Ok(())
}
