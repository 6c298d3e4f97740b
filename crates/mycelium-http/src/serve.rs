//! The listeners: TCP and Unix socket, HTTP/1.1 with keep-alive, a header read timeout
//! (slow-loris), a per-request timeout, and graceful shutdown with the broker.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use mycelium_broker::Broker;
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::{ClientAddr, ClientCert, HttpConfig};

/// The bound HTTP door, ready to run.
#[derive(Debug)]
pub struct HttpServer {
    router: Router,
    state: crate::SharedState,
    tcp: Option<TcpListener>,
    unix: Option<(UnixListener, PathBuf)>,
    header_timeout: Duration,
    request_timeout: Duration,
    tls: Option<Arc<mycelium_auth::tls::LiveTls>>,
    admission: mycelium_net::admission::Admission,
}

/// Builds the router and binds the configured listeners.
///
/// # Errors
/// A bad key or limit, an address or socket path that cannot be bound.
pub async fn bind(broker: Arc<Broker>, config: HttpConfig) -> Result<HttpServer, crate::SetupError> {
    let (router, state) = crate::build(broker, config.clone())?;
    let tcp = match config.listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| crate::SetupError::Bind {
                    what: "http.listen",
                    target: addr.to_string(),
                    source,
                })?,
        ),
        None => None,
    };
    let unix = match &config.unix_socket {
        Some(path) => {
            if path.exists() && std::os::unix::net::UnixStream::connect(path).is_err() {
                let _ = std::fs::remove_file(path);
            }
            let listener = UnixListener::bind(path).map_err(|source| crate::SetupError::Bind {
                what: "http.unix_socket",
                target: path.display().to_string(),
                source,
            })?;
            Some((listener, path.clone()))
        }
        None => None,
    };
    Ok(HttpServer {
        router,
        state,
        tcp,
        unix,
        header_timeout: config.header_timeout,
        request_timeout: config.request_timeout,
        tls: config.tls,
        admission: mycelium_net::admission::Admission::new(
            config.max_connections,
            config.max_connections_per_ip,
        ),
    })
}

impl HttpServer {
    /// The door's rate limiter (a configuration reload replaces its limits).
    pub fn rate_limiter(&self) -> Arc<crate::limits::Limiter> {
        Arc::clone(&self.state.limiter)
    }

    /// The bound TCP address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown`, then lets requests in progress finish (up to `grace`).
    pub async fn run(self, shutdown: CancellationToken, grace: Duration) {
        let HttpServer {
            router,
            state,
            tcp,
            unix,
            header_timeout,
            request_timeout,
            tls,
            admission,
        } = self;
        if let Some(addr) = tcp.as_ref().and_then(|l| l.local_addr().ok()) {
            tracing::info!(%addr, "http listening on tcp");
        }
        if let Some((_, path)) = &unix {
            tracing::info!(path = %path.display(), "http listening on unix socket");
        }
        let background = tokio::spawn(crate::background(Arc::clone(&state), shutdown.clone()));
        let graceful = GracefulShutdown::new();
        // Around the router as one service: `Router::layer` would wrap (and clone, per request)
        // every route's boxed service.
        let router = tower::Layer::layer(
            &tower_http::timeout::TimeoutLayer::with_status_code(
                axum::http::StatusCode::REQUEST_TIMEOUT,
                request_timeout,
            ),
            router,
        );
        // TLS handshakes run on tasks of their own (within `header_timeout`); finished ones come
        // back here to be served and watched for shutdown.
        let (handshaken, mut ready) = tokio::sync::mpsc::channel::<Handshaken>(64);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = accept_tcp(tcp.as_ref()) => match accepted {
                    Ok((stream, peer)) => {
                        let slot = match admit(&admission, Some(peer.ip())) {
                            Ok(slot) => slot,
                            Err(why) => { refuse(stream, why); continue; }
                        };
                        let _ = stream.set_nodelay(true);
                        match &tls {
                            None => spawn_connection(&router, &graceful, TokioIo::new(stream), Peer { ip: Some(peer.ip()), common_name: None, slot }, header_timeout),
                            Some(live) => {
                                let acceptor = tokio_rustls::TlsAcceptor::from(live.current());
                                let handshaken = handshaken.clone();
                                tokio::spawn(async move {
                                    match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                                        Ok(Ok(stream)) => {
                                            let common_name = stream
                                                .get_ref()
                                                .1
                                                .peer_certificates()
                                                .and_then(|chain| chain.first())
                                                .and_then(mycelium_auth::tls::common_name);
                                            let peer = Peer { ip: Some(peer.ip()), common_name, slot };
                                            let _ = handshaken.send(Handshaken { stream, peer }).await;
                                        }
                                        Ok(Err(error)) => tracing::debug!(%error, "http TLS handshake failed"),
                                        Err(_) => tracing::debug!("no http TLS handshake within header_timeout"),
                                    }
                                });
                            }
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "http accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(Handshaken { stream, peer }) = ready.recv() => {
                    spawn_connection(&router, &graceful, TokioIo::new(stream), peer, header_timeout);
                }
                accepted = accept_unix(unix.as_ref().map(|(l, _)| l)) => match accepted {
                    Ok(stream) => {
                        let slot = match admit(&admission, None) {
                            Ok(slot) => slot,
                            Err(why) => { refuse(stream, why); continue; }
                        };
                        spawn_connection(&router, &graceful, TokioIo::new(stream), Peer { ip: None, common_name: None, slot }, header_timeout);
                    }
                    Err(error) => {
                        tracing::warn!(%error, "http accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        drop(tcp);
        if let Some((listener, path)) = unix {
            drop(listener);
            let _ = std::fs::remove_file(path);
        }
        if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
            tracing::warn!("http requests still running at shutdown were cut off");
        }
        let _ = background.await;
    }
}

/// What is known of a connection's peer: its address (none: the Unix socket), the common name
/// of its verified client certificate (mutual TLS).
#[derive(Debug)]
struct Peer {
    ip: Option<std::net::IpAddr>,
    common_name: Option<String>,
    /// Its place among `max_connections`, held for as long as it is served.
    slot: mycelium_net::admission::Slot,
}

/// A place for a new connection, or why not.
fn admit(
    admission: &mycelium_net::admission::Admission,
    ip: Option<std::net::IpAddr>,
) -> Result<mycelium_net::admission::Slot, String> {
    use mycelium_net::admission::Refused;
    admission.admit(ip).map_err(|refused| match refused {
        Refused::Full(max) => {
            format!("the HTTP door serves {max} connections, its limit (http.max_connections)")
        }
        Refused::PerIp(ip, max) => {
            format!("{ip} holds {max} connections, the limit (http.max_connections_per_ip)")
        }
    })
}

/// Answers a connection that got no place with 503 and closes it, on a task of its own: the
/// request it sent is read (up to 64 KiB, for at most a second) so the close does not reset the
/// connection before the answer is read.
fn refuse<S>(mut stream: S, why: String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    /// Refusals being answered; past [`REFUSING_MAX`] a refused connection is just closed, so a
    /// flood of them holds no more than that many sockets.
    static REFUSING: AtomicUsize = AtomicUsize::new(0);
    const REFUSING_MAX: usize = 256;
    tracing::debug!(%why, "http connection refused");
    if REFUSING.fetch_add(1, Ordering::AcqRel) >= REFUSING_MAX {
        REFUSING.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    tokio::spawn(async move {
        let response = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
             retry-after: 1\r\nconnection: close\r\n\r\n{why}",
            why.len()
        );
        let answer = async {
            stream.write_all(response.as_bytes()).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 4096];
            let mut read = 0;
            while read < 64 << 10 {
                match stream.read(&mut sink).await? {
                    0 => break,
                    n => read += n,
                }
            }
            std::io::Result::Ok(())
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), answer).await;
        REFUSING.fetch_sub(1, Ordering::AcqRel);
    });
}

/// A TLS connection ready to serve.
struct Handshaken {
    stream: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    peer: Peer,
}

/// Serves one connection: HTTP/1.1 with keep-alive and a header read timeout, watched for
/// graceful shutdown.
fn spawn_connection<I>(
    router: &tower_http::timeout::Timeout<Router>,
    graceful: &GracefulShutdown,
    io: TokioIo<I>,
    peer: Peer,
    header_timeout: Duration,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // The peer's address goes into each request as it arrives (a `Router::layer` per connection
    // would wrap every route again).
    let Peer {
        ip,
        common_name,
        slot,
    } = peer;
    let service = router
        .clone()
        .map_request(move |r: hyper::Request<hyper::body::Incoming>| {
            let mut request = r.map(axum::body::Body::new);
            request.extensions_mut().insert(ClientAddr(ip));
            if let Some(name) = &common_name {
                request.extensions_mut().insert(ClientCert(name.clone()));
            }
            request
        });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true)
        .serve_connection(io, TowerToHyperService::new(service));
    let watched = graceful.watch(connection);
    tokio::spawn(async move {
        if let Err(error) = watched.await {
            tracing::debug!(%error, "http connection ended with an error");
        }
        drop(slot);
    });
}

async fn accept_tcp(listener: Option<&TcpListener>) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

async fn accept_unix(listener: Option<&UnixListener>) -> std::io::Result<tokio::net::UnixStream> {
    match listener {
        Some(l) => l.accept().await.map(|(s, _)| s),
        None => std::future::pending().await,
    }
}
