//! The client: one supervised connection, re-established with backoff, behind a circuit breaker.
//! Here the handle, its shared state and the send path; publishing in `publish.rs`,
//! subscriptions and acknowledgements in `subscribe.rs`, requests and their answers in
//! `request.rs`, the connection's life in `lifecycle.rs`, the socket's write half in `socket.rs`.

mod lifecycle;
mod publish;
mod request;
mod socket;
mod subscribe;

pub use publish::{Confirmed, PublishOptions};
pub use request::PendingConfirm;
pub use subscribe::DurableOptions;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use mycelium_protocol::{Frame, PublishOk, StatsSnapshot, encode};
use parking_lot::Mutex;
use tokio::io::AsyncRead;
use tokio::sync::{Notify, broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::message::Message;
use crate::resilience::CircuitBreaker;
use crate::url::Endpoint;
use crate::{ClientOptions, Error, ErrorKind};

/// The connection's state, observable through [`Client::state_changes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// Trying to connect.
    Connecting,
    /// Connected and serving.
    Connected,
    /// Lost the connection; retrying after a backoff delay. Publishes are buffered.
    Disconnected,
    /// The breaker is open: calls fail fast until the next probe.
    CircuitOpen,
    /// [`Client::close`] was called, or every handle was dropped.
    Closed,
}

type Reader = Box<dyn AsyncRead + Unpin + Send>;
type Writer = Arc<socket::Socket>;

enum Reply {
    Pong,
    Subscribed,
    Unsubscribed,
    Published(PublishOk),
    Stats(Box<StatsSnapshot>),
    Acked,
    Admin(Vec<u8>),
}

enum Pending {
    Request(oneshot::Sender<Result<Reply, Error>>),
    Subscribe {
        local: u64,
        reply: Option<oneshot::Sender<Result<Reply, Error>>>,
    },
}

struct LocalSub {
    pattern: String,
    group: Option<String>,
    /// Encoded SUBSCRIBE options (durable subscriptions), re-sent on reconnect.
    options: Bytes,
    sender: mpsc::Sender<Vec<Message>>,
    server_id: Option<u32>,
}

#[derive(Default)]
struct Subs {
    local: HashMap<u64, LocalSub>,
    by_server: HashMap<u32, u64>,
}

/// How a frame waits in the outgoing buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sending {
    /// Written inline or by the writer task.
    Plain,
    /// A request whose caller waits for the answer at once: it leaves when the caller waits.
    Request,
    /// A request whose answer's future the caller may hold without waiting (a pipelined
    /// publish): as `Request`, with the writer task as backstop.
    Pipelined,
}

struct Out {
    buf: BytesMut,
    connected: bool,
    /// The socket for inline writes, and whether the writer task is using it.
    direct: socket::Direct,
}

/// Bytes reserved for each socket read.
const READ_CHUNK: usize = 64 * 1024;

/// Deliveries of one read for one subscription, sent on together.
#[derive(Default)]
struct Batch {
    server_id: Option<u32>,
    sender: Option<mpsc::Sender<Vec<Message>>>,
    messages: Vec<Message>,
}

pub(crate) struct Shared {
    options: ClientOptions,
    /// The brokers to try, in order (failover): the one in use is `endpoints[current]`.
    endpoints: Vec<Endpoint>,
    current: std::sync::atomic::AtomicUsize,
    out: Mutex<Out>,
    wake_writer: Notify,
    drained: Notify,
    state: watch::Sender<ConnectionState>,
    errors: broadcast::Sender<Error>,
    subs: Mutex<Subs>,
    pending: Mutex<HashMap<u32, Pending>>,
    next_request: AtomicU32,
    next_local: AtomicU64,
    breaker: Mutex<CircuitBreaker>,
    /// Mirrors `state == CircuitOpen`, so the publish path checks one atomic, not a lock.
    circuit_open: AtomicBool,
    closed: CancellationToken,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("endpoint", self.endpoint())
            .finish_non_exhaustive()
    }
}

/// Closes the client when the last [`Client`] handle is dropped.
#[derive(Debug)]
struct CloseOnDrop(CancellationToken);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// A connection to a Mycelium broker. Cheap to clone; all clones share one connection.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # // A broker for the example, in-process on a temporary socket.
/// # let dir = tempfile::tempdir()?;
/// # let mut config = mycelium_server::Config::default();
/// # config.server.socket_path = dir.path().join("m.sock").display().to_string();
/// # config.server.tcp = String::new();
/// # let server = mycelium_server::Server::bind(config).await?;
/// # let url = format!("unix://{}", dir.path().join("m.sock").display());
/// # let stop = server.shutdown_token();
/// # tokio::spawn(server.run());
/// use mycelium_client::Client;
///
/// let client = Client::connect(&url).await?;
/// let mut prices = client.subscribe("market_data.>").await?;
/// client.publish("market_data.eth", b"2500.5").await?;
/// let sequence = client.publish_confirmed("market_data.btc", b"64000").await?;
/// assert_eq!(sequence, 1); // per-topic sequence
///
/// let first = prices.next().await.unwrap();
/// assert_eq!((first.topic(), &first.payload[..]), ("market_data.eth", &b"2500.5"[..]));
/// let second = prices.next().await.unwrap();
/// assert_eq!(second.topic(), "market_data.btc");
/// client.close().await;
/// # stop.cancel();
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    shared: Arc<Shared>,
    _close: Arc<CloseOnDrop>,
}

impl Client {
    /// Connects with default options.
    ///
    /// # Errors
    /// `InvalidUrl`; `Connect` when the first attempt fails (later drops are retried on their own).
    pub async fn connect(url: &str) -> Result<Client, Error> {
        Client::connect_with(url, ClientOptions::default()).await
    }

    /// Connects with `options`.
    ///
    /// # Errors
    /// As [`Client::connect`].
    pub async fn connect_with(url: &str, options: ClientOptions) -> Result<Client, Error> {
        // Several brokers, comma separated, are tried in order.
        let endpoints = url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::parse)
            .collect::<Result<Vec<Endpoint>, Error>>()?;
        if endpoints.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidUrl,
                format!("no broker URL in `{url}`"),
            ));
        }
        let (state, _) = watch::channel(ConnectionState::Connecting);
        let breaker = CircuitBreaker::new(options.breaker_threshold, options.breaker_open_for);
        let shared = Arc::new(Shared {
            out: Mutex::new(Out {
                buf: BytesMut::with_capacity(64 * 1024),
                connected: false,
                direct: socket::Direct::default(),
            }),
            options,
            endpoints,
            current: std::sync::atomic::AtomicUsize::new(0),
            wake_writer: Notify::new(),
            drained: Notify::new(),
            state,
            errors: broadcast::channel(256).0,
            subs: Mutex::new(Subs::default()),
            pending: Mutex::new(HashMap::new()),
            next_request: AtomicU32::new(1),
            next_local: AtomicU64::new(1),
            breaker: Mutex::new(breaker),
            circuit_open: AtomicBool::new(false),
            closed: CancellationToken::new(),
        });
        // The first broker that answers; the error of the last one when none does.
        let mut first = Err(Error::new(ErrorKind::Connect, "no broker tried"));
        for index in 0..shared.endpoints.len() {
            shared.current.store(index, Ordering::Relaxed);
            first = shared.establish().await;
            if first.is_ok() {
                break;
            }
        }
        let first = first?;
        // Usable at once: frames queued before the writer task starts wait in the buffer.
        shared.out.lock().connected = true;
        shared.set_state(ConnectionState::Connected);
        tokio::spawn(Arc::clone(&shared).supervise(first));
        Ok(Client {
            _close: Arc::new(CloseOnDrop(shared.closed.clone())),
            shared,
        })
    }

    /// The current connection state.
    pub fn state(&self) -> ConnectionState {
        *self.shared.state.borrow()
    }

    /// Requests sent and still awaited (confirmed publishes, subscribes, acks with confirmation,
    /// admin requests): a wait that ends, times out or is given up (its future dropped) leaves
    /// none behind, except a SUBSCRIBE, kept until its answer so that a subscription nobody holds
    /// any more is undone on the broker.
    pub fn requests_pending(&self) -> usize {
        self.shared.pending.lock().len()
    }

    /// Every state change, as a watch channel.
    pub fn state_changes(&self) -> watch::Receiver<ConnectionState> {
        self.shared.state.subscribe()
    }

    /// Errors the broker reported for requests nobody waits on (fire-and-forget publishes).
    pub fn errors(&self) -> broadcast::Receiver<Error> {
        self.shared.errors.subscribe()
    }

    /// Sends an ADMIN request (JSON, see docs/PROTOCOL.md) and returns the JSON answer.
    ///
    /// # Errors
    /// `Server` (invalid request, not found), `Disconnected`, `Timeout`.
    pub async fn admin(&self, request: &[u8]) -> Result<Vec<u8>, Error> {
        match self
            .shared
            .request(request.len() + 16, |buf, id| {
                encode(buf, id, &Frame::Admin(request))
            })
            .await?
        {
            Reply::Admin(answer) => Ok(answer),
            _ => Err(Error::new(ErrorKind::Protocol, "unexpected reply to ADMIN")),
        }
    }

    /// Sends a typed ADMIN request and reads its answer as `R` (the answer type the request's
    /// operation names in [`mycelium_protocol::admin`]).
    ///
    /// # Errors
    /// As [`Client::admin`]; `Protocol` when the answer is not an `R`.
    pub async fn admin_typed<R: serde::de::DeserializeOwned>(
        &self,
        request: &mycelium_protocol::admin::AdminRequest,
    ) -> Result<R, Error> {
        let body = serde_json::to_vec(request)
            .map_err(|e| Error::new(ErrorKind::Protocol, format!("encoding the ADMIN request: {e}")))?;
        let answer = self.admin(&body).await?;
        serde_json::from_slice(&answer).map_err(|e| {
            Error::new(
                ErrorKind::Protocol,
                format!("the ADMIN answer is not what the operation returns: {e}"),
            )
        })
    }

    /// Waits until the broker has processed everything sent before this call.
    ///
    /// # Errors
    /// `Disconnected`, `Timeout`, `CircuitOpen`, `Closed`.
    pub async fn flush(&self) -> Result<(), Error> {
        self.shared
            .request(16, |buf, id| encode(buf, id, &Frame::Ping))
            .await
            .map(|_| ())
    }

    /// The broker's statistics.
    ///
    /// # Errors
    /// As [`Client::flush`].
    pub async fn stats(&self) -> Result<StatsSnapshot, Error> {
        match self
            .shared
            .request(16, |buf, id| encode(buf, id, &Frame::Stats))
            .await?
        {
            Reply::Stats(stats) => Ok(*stats),
            _ => Err(Error::new(ErrorKind::Protocol, "unexpected reply to STATS")),
        }
    }

    /// Flushes what is buffered (best effort, within the request timeout) and closes.
    pub async fn close(&self) {
        if self.state() == ConnectionState::Connected {
            let _ = self.flush().await;
        }
        self.shared.closed.cancel();
        self.shared.set_state(ConnectionState::Closed);
    }
}

impl Shared {
    fn set_state(&self, state: ConnectionState) {
        self.circuit_open
            .store(state == ConnectionState::CircuitOpen, Ordering::Release);
        self.state.send_if_modified(|current| {
            let changed = *current != state && *current != ConnectionState::Closed;
            if changed {
                *current = state;
            }
            changed
        });
    }

    fn check_usable(&self) -> Result<(), Error> {
        if self.closed.is_cancelled() {
            return Err(Error::new(ErrorKind::Closed, "the client is closed"));
        }
        if self.circuit_open.load(Ordering::Acquire) {
            return Err(Error::new(
                ErrorKind::CircuitOpen,
                format!(
                    "circuit open: {} is failing; not trying until the next probe",
                    self.endpoint()
                ),
            ));
        }
        Ok(())
    }

    /// Appends a frame to the outgoing buffer, waiting for room while connected.
    ///
    /// The writer is woken only when the buffer goes from empty to non-empty: while it is busy
    /// writing, publishes just accumulate and go out in its next single write.
    async fn send(
        &self,
        size_hint: usize,
        write: impl Fn(&mut BytesMut) -> Result<(), mycelium_protocol::ProtocolError>,
    ) -> Result<(), Error> {
        self.send_as(Sending::Plain, size_hint, write).await
    }

    /// [`Shared::send`] for a frame sent as `sending` says.
    async fn send_as(
        &self,
        sending: Sending,
        size_hint: usize,
        write: impl Fn(&mut BytesMut) -> Result<(), mycelium_protocol::ProtocolError>,
    ) -> Result<(), Error> {
        loop {
            self.check_usable()?;
            if self.try_append(sending, size_hint, &write)? {
                return Ok(());
            }
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            // Re-check after registering, so a drain in between is not missed.
            if self.try_append(sending, size_hint, &write)? {
                return Ok(());
            }
            tokio::select! {
                () = &mut drained => {}
                () = self.closed.cancelled() => {}
            }
        }
    }

    /// Runs `change` on the outgoing buffer's state and wakes the writer task if it says so
    /// (after the lock is released).
    fn with_out(&self, change: impl FnOnce(&mut Out) -> bool) {
        let wake = change(&mut self.out.lock());
        if wake {
            self.wake_writer.notify_one();
        }
    }

    /// Deferred requests go now: their caller waits for an answer (see [`socket::release`]).
    fn release(&self) {
        self.with_out(socket::release);
    }

    /// The reader has handed out one read's answers (see [`socket::answered`]).
    fn answered(&self) {
        self.with_out(socket::answered);
    }

    /// Appends if there is room; `Ok(false)` when connected and full (wait for a drain).
    #[inline]
    fn try_append(
        &self,
        sending: Sending,
        size_hint: usize,
        write: &impl Fn(&mut BytesMut) -> Result<(), mycelium_protocol::ProtocolError>,
    ) -> Result<bool, Error> {
        let mut out = self.out.lock();
        let was_empty = out.buf.is_empty();
        if was_empty || out.buf.len() + size_hint <= self.options.buffer_bytes_max {
            write(&mut out.buf).map_err(|e| Error::new(ErrorKind::InvalidArgument, e.to_string()))?;
            if !out.connected {
                return Ok(true);
            }
            let wake = if sending != Sending::Plain {
                socket::defer(&mut out, was_empty, sending == Sending::Pipelined)
            } else if out.direct.deferred {
                // A plain frame behind deferred requests: nothing waits for them any more.
                socket::release(&mut out)
            } else {
                was_empty
                    && !self
                        .options
                        .inline_write_gap
                        .is_some_and(|gap| socket::write_inline(&mut out, gap))
            };
            if wake {
                drop(out);
                self.wake_writer.notify_one();
            }
            return Ok(true);
        }
        // Full: deferred requests must go for room to come.
        if socket::release(&mut out) {
            drop(out);
            self.wake_writer.notify_one();
            out = self.out.lock();
        }
        if !out.connected {
            return Err(Error::new(
                ErrorKind::BufferFull,
                format!(
                    "disconnected from {} and the publish buffer ({} bytes) is full",
                    self.endpoint(),
                    self.options.buffer_bytes_max
                ),
            ));
        }
        Ok(false)
    }
}
