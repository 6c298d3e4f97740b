//! The client: one supervised connection, re-established with backoff, behind a circuit breaker.

mod lifecycle;
mod socket;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mycelium_protocol::{
    BatchWriter, Frame, Publish, PublishOk, StatsSnapshot, Subscribe, SubscriptionRef, encode,
};
use parking_lot::Mutex;
use tokio::io::AsyncRead;
use tokio::sync::{Notify, broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::message::{Message, Subscription};
use crate::resilience::CircuitBreaker;
use crate::url::Endpoint;
use crate::{ClientOptions, Error, ErrorKind};

/// How a durable subscription starts and retries (every field optional; broker defaults apply).
#[derive(Debug, Clone, Default)]
pub struct DurableOptions {
    /// Where a new durable subscription starts (ignored when it exists already).
    pub start: mycelium_protocol::StartPosition,
    /// Ack deadline (default 30 s).
    pub ack_wait: Option<Duration>,
    /// Attempts before dead-lettering (default 5; 0: unlimited).
    pub max_deliveries: Option<u32>,
    /// Messages in flight at once (default 1000).
    pub max_in_flight: Option<u32>,
    /// Retry delays (default 2 s, 4 s, 8 s, 16 s, 32 s, with jitter).
    pub backoff: Vec<Duration>,
    /// Content filter (docs/FILTERS.md), fixed when the subscription is created.
    pub filter: Option<String>,
}

/// Message properties and headers of a confirmed publish ([`Client::publish_with`]). Properties
/// need a stored topic (`delivery = "at_least_once"` or `"exactly_once"`).
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    /// Application headers (`traceparent`, content type, ...).
    pub headers: Vec<(String, Vec<u8>)>,
    /// 0-9, higher first, on topics with `priority = true`.
    pub priority: Option<u8>,
    /// Time to live: never delivered after it passes.
    pub ttl: Option<Duration>,
    /// Held back this long before the first delivery.
    pub delay: Option<Duration>,
    /// Held back until this time.
    pub not_before: Option<std::time::SystemTime>,
    /// Publishes with the same key within the topic's dedup window are stored once.
    pub idempotency_key: Option<Vec<u8>>,
}

impl PublishOptions {
    /// Adds the W3C trace context of `cx` (`traceparent`, `tracestate`) to the headers, so the
    /// broker's spans and the consumer's continue the publisher's trace.
    #[must_use]
    pub fn with_trace_context(mut self, cx: &mycelium_trace::Context) -> Self {
        self.headers
            .retain(|(k, _)| !k.eq_ignore_ascii_case("traceparent") && !k.eq_ignore_ascii_case("tracestate"));
        for (key, value) in mycelium_trace::inject(cx) {
            self.headers.push((key, value.into_bytes()));
        }
        self
    }

    /// [`PublishOptions::with_trace_context`] with the current `tracing` span's context.
    #[must_use]
    pub fn with_current_trace(self) -> Self {
        let cx = mycelium_trace::context_of(&tracing::Span::current());
        self.with_trace_context(&cx)
    }
}

/// What the broker answered to a confirmed publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confirmed {
    /// The per-topic sequence.
    pub sequence: u64,
    /// The broker-assigned id (UUIDv7 bytes; all zero on memory topics).
    pub id: [u8; 16],
    /// The broker recognised the idempotency key: `sequence` and `id` are the original's.
    pub duplicate: bool,
}

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
    endpoint: Endpoint,
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
            .field("endpoint", &self.endpoint)
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

/// Waits for the answer to request `id` until `request_timeout` after it was sent. The timer is
/// made only if the answer is not there at the first poll, so a caller that keeps many requests
/// in flight and awaits them in order arms one timer at a time, not one per request.
/// A wait given up before its end (dropped) forgets the request, so an answer that never comes
/// leaves nothing behind (see [`ReplyWait::forget`]).
struct ReplyWait {
    id: u32,
    rx: oneshot::Receiver<Result<Reply, Error>>,
    deadline: tokio::time::Instant,
    timeout: Duration,
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// The outcome was returned (the request is no longer pending).
    done: bool,
}

impl ReplyWait {
    fn new(id: u32, rx: oneshot::Receiver<Result<Reply, Error>>, timeout: Duration) -> ReplyWait {
        ReplyWait {
            id,
            rx,
            deadline: tokio::time::Instant::now() + timeout,
            timeout,
            timer: None,
            done: false,
        }
    }

    /// Called when the wait is dropped: a request still pending is forgotten (its answer, if it
    /// comes, is then ignored).
    fn forget(&self, shared: &Shared) {
        if !self.done {
            shared.abandon(self.id);
        }
    }

    fn poll_reply(
        &mut self,
        cx: &mut std::task::Context<'_>,
        shared: &Shared,
    ) -> std::task::Poll<Result<Reply, Error>> {
        use std::future::Future;
        use std::task::Poll;
        if self.done {
            return Poll::Ready(Err(Error::new(ErrorKind::Protocol, "polled after its answer")));
        }
        match std::pin::Pin::new(&mut self.rx).poll(cx) {
            Poll::Ready(Ok(result)) => {
                self.done = true;
                return Poll::Ready(result);
            }
            Poll::Ready(Err(_)) => {
                self.done = true;
                return Poll::Ready(Err(Error::new(
                    ErrorKind::Disconnected,
                    "connection lost before the answer",
                )));
            }
            Poll::Pending => {}
        }
        let deadline = self.deadline;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        shared.abandon(self.id);
        self.done = true;
        Poll::Ready(Err(Error::new(
            ErrorKind::Timeout,
            format!("no answer within {:?}", self.timeout),
        )))
    }
}

/// A publish on its way to the broker: resolves to the broker's confirmation (see
/// [`Client::publish_pipelined`]). Dropping it gives up waiting (nothing of it stays in the
/// client); the message is sent regardless.
#[must_use = "the confirmation is only known by awaiting it"]
pub struct PendingConfirm {
    shared: Arc<Shared>,
    wait: ReplyWait,
}

impl std::fmt::Debug for PendingConfirm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingConfirm")
            .field("request_id", &self.wait.id)
            .finish_non_exhaustive()
    }
}

impl Drop for PendingConfirm {
    fn drop(&mut self) {
        self.wait.forget(&self.shared);
    }
}

impl std::future::Future for PendingConfirm {
    type Output = Result<Confirmed, Error>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.get_mut();
        this.wait
            .poll_reply(cx, &this.shared)
            .map(|reply| confirmed(reply?))
    }
}

/// The answer to a confirmed PUBLISH.
fn confirmed(reply: Reply) -> Result<Confirmed, Error> {
    match reply {
        Reply::Published(ok) => Ok(Confirmed {
            sequence: ok.sequence,
            id: ok.message_id,
            duplicate: ok.duplicate,
        }),
        _ => Err(Error::new(ErrorKind::Protocol, "unexpected reply to PUBLISH")),
    }
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
        let endpoint: Endpoint = url.parse()?;
        let (state, _) = watch::channel(ConnectionState::Connecting);
        let breaker = CircuitBreaker::new(options.breaker_threshold, options.breaker_open_for);
        let shared = Arc::new(Shared {
            out: Mutex::new(Out {
                buf: BytesMut::with_capacity(64 * 1024),
                connected: false,
                direct: socket::Direct::default(),
            }),
            options,
            endpoint,
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
        let first = shared.establish().await?;
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

    /// Publishes `payload` to `topic` (fire and forget: broker-side errors arrive on
    /// [`Client::errors`]). While disconnected the message is buffered and sent on reconnect.
    ///
    /// # Errors
    /// `BufferFull` (disconnected, buffer full), `CircuitOpen`, `Closed`, `InvalidArgument`.
    pub async fn publish(&self, topic: &str, payload: impl AsRef<[u8]>) -> Result<(), Error> {
        let message = Publish {
            topic,
            payload: payload.as_ref(),
            ..Default::default()
        };
        self.shared
            .send(message.payload.len() + topic.len() + 32, |buf| {
                encode(buf, 0, &Frame::Publish(message))
            })
            .await
    }

    /// Publishes with headers (`traceparent`, content type, ...).
    ///
    /// # Errors
    /// As [`Client::publish`].
    pub async fn publish_with_headers(
        &self,
        topic: &str,
        headers: &[(&str, &[u8])],
        payload: impl AsRef<[u8]>,
    ) -> Result<(), Error> {
        let mut block = BytesMut::new();
        mycelium_protocol::encode_headers(&mut block, headers.iter().copied())
            .map_err(|e| Error::new(ErrorKind::InvalidArgument, e.to_string()))?;
        let message = Publish {
            topic,
            headers: &block,
            payload: payload.as_ref(),
            ..Default::default()
        };
        let size = message.payload.len() + block.len() + topic.len() + 32;
        self.shared
            .send(size, |buf| encode(buf, 0, &Frame::Publish(message)))
            .await
    }

    /// Publishes and waits for the broker's PUBLISH_OK; returns the message's per-topic sequence.
    ///
    /// # Errors
    /// `Server` (refused: the error names why), `Disconnected`, `Timeout`, and as [`Client::publish`].
    pub async fn publish_confirmed(&self, topic: &str, payload: impl AsRef<[u8]>) -> Result<u64, Error> {
        self.publish_confirmed_id(topic, payload)
            .await
            .map(|(sequence, _)| sequence)
    }

    /// Like [`Client::publish_confirmed`], also returning the broker-assigned message id (UUIDv7
    /// bytes; all zero on memory topics, which keep no ids).
    ///
    /// # Errors
    /// As [`Client::publish_confirmed`].
    pub async fn publish_confirmed_id(
        &self,
        topic: &str,
        payload: impl AsRef<[u8]>,
    ) -> Result<(u64, [u8; 16]), Error> {
        let confirmed = self.publish_pipelined(topic, payload).await?.await?;
        Ok((confirmed.sequence, confirmed.id))
    }

    /// Sends a publish that asks for a confirmation and returns without waiting for it: the
    /// returned [`PendingConfirm`] resolves once the broker confirms (on disk topics, once the
    /// message is durable under the topic's fsync policy) or refuses. Keeping many publishes in
    /// flight this way is the fast way to publish with confirms; awaiting them in the order they
    /// were sent costs the least (answers come back in that order on one topic). The wait for
    /// each answer ends after `request_timeout`, counted from the send.
    ///
    /// ```no_run
    /// # async fn demo(client: &mycelium_client::Client) -> Result<(), mycelium_client::Error> {
    /// let mut in_flight = std::collections::VecDeque::new();
    /// for i in 0..10_000u32 {
    ///     if in_flight.len() == 256 {
    ///         let confirm: mycelium_client::PendingConfirm = in_flight.pop_front().unwrap();
    ///         confirm.await?;
    ///     }
    ///     in_flight.push_back(client.publish_pipelined("orders", i.to_le_bytes()).await?);
    /// }
    /// for confirm in in_flight {
    ///     confirm.await?;
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// Sending: as [`Client::publish`] (`Disconnected` when not connected). The confirmation:
    /// `Server` (refused: the error names why), `Disconnected`, `Timeout`.
    pub async fn publish_pipelined(
        &self,
        topic: &str,
        payload: impl AsRef<[u8]>,
    ) -> Result<PendingConfirm, Error> {
        let payload = payload.as_ref();
        let (id, rx) = self
            .shared
            .request_start(payload.len() + 64, |buf, id| {
                let message = Publish {
                    topic,
                    payload,
                    confirm: true,
                    ..Default::default()
                };
                encode(buf, id, &Frame::Publish(message))
            })
            .await?;
        Ok(self.pending_confirm(id, rx))
    }

    /// Publishes with headers and message properties, and waits for the broker's PUBLISH_OK.
    ///
    /// # Errors
    /// As [`Client::publish_confirmed`]; `InvalidArgument` for an oversize header or key.
    pub async fn publish_with(
        &self,
        topic: &str,
        payload: impl AsRef<[u8]>,
        options: &PublishOptions,
    ) -> Result<Confirmed, Error> {
        self.publish_pipelined_with(topic, payload, options).await?.await
    }

    /// [`Client::publish_pipelined`] with headers and message properties: sends at once, and the
    /// returned [`PendingConfirm`] resolves to the broker's confirmation.
    ///
    /// # Errors
    /// As [`Client::publish_pipelined`]; `InvalidArgument` for an oversize header or key.
    pub async fn publish_pipelined_with(
        &self,
        topic: &str,
        payload: impl AsRef<[u8]>,
        options: &PublishOptions,
    ) -> Result<PendingConfirm, Error> {
        let invalid =
            |e: mycelium_protocol::ProtocolError| Error::new(ErrorKind::InvalidArgument, e.to_string());
        let mut headers = BytesMut::new();
        mycelium_protocol::encode_headers(
            &mut headers,
            options.headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())),
        )
        .map_err(invalid)?;
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let props = mycelium_protocol::Props {
            priority: options.priority,
            ttl_ms: options.ttl.map(millis),
            delay_ms: options.delay.map(millis),
            idempotency_key: options.idempotency_key.as_deref(),
            not_before_ns: options.not_before.map(|t| {
                t.duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            }),
        };
        let mut check = BytesMut::new();
        props.encode(&mut check).map_err(invalid)?;
        let payload = payload.as_ref();
        let size = payload.len() + headers.len() + check.len() + topic.len() + 64;
        let (id, rx) = self
            .shared
            .request_start(size, |buf, id| {
                let message = Publish {
                    topic,
                    headers: &headers,
                    props,
                    payload,
                    confirm: true,
                };
                encode(buf, id, &Frame::Publish(message))
            })
            .await?;
        Ok(self.pending_confirm(id, rx))
    }

    fn pending_confirm(&self, id: u32, rx: oneshot::Receiver<Result<Reply, Error>>) -> PendingConfirm {
        PendingConfirm {
            shared: Arc::clone(&self.shared),
            wait: ReplyWait::new(id, rx, self.shared.options.request_timeout),
        }
    }

    /// Publishes many messages in one frame.
    ///
    /// # Errors
    /// As [`Client::publish`].
    pub async fn publish_batch<'m, P: AsRef<[u8]> + 'm>(
        &self,
        messages: impl IntoIterator<Item = (&'m str, P)>,
    ) -> Result<(), Error> {
        let messages: Vec<(&str, P)> = messages.into_iter().collect();
        let size: usize = messages
            .iter()
            .map(|(t, p)| t.len() + p.as_ref().len() + 8)
            .sum::<usize>()
            + 16;
        self.shared
            .send(size, |buf| {
                let mut writer = BatchWriter::new(buf, 0);
                for (topic, payload) in &messages {
                    writer.push(&Publish {
                        topic,
                        payload: payload.as_ref(),
                        ..Default::default()
                    })?;
                }
                writer.finish()
            })
            .await
    }

    /// Subscribes to a topic or pattern.
    ///
    /// # Errors
    /// `Server` (invalid pattern), `Timeout`, `CircuitOpen`, `Closed`. While disconnected the
    /// subscription is recorded and made on reconnect.
    pub async fn subscribe(&self, pattern: &str) -> Result<Subscription, Error> {
        self.shared.subscribe(pattern, None).await
    }

    /// Subscribes with a content filter (docs/FILTERS.md): only matching messages are delivered.
    /// In a queue group (`group`), each message goes to one member whose filter accepts it.
    ///
    /// # Errors
    /// As [`Client::subscribe`]; `Server` with `InvalidFilter` naming the position of the fault.
    pub async fn subscribe_filtered(
        &self,
        pattern: &str,
        group: Option<&str>,
        filter: &str,
    ) -> Result<Subscription, Error> {
        let wire = mycelium_protocol::SubscribeOptions {
            filter: Some(filter),
            ..mycelium_protocol::SubscribeOptions::default()
        };
        let mut block = BytesMut::new();
        wire.encode(&mut block)
            .map_err(|e| Error::new(ErrorKind::InvalidArgument, e.to_string()))?;
        self.shared.subscribe_with(pattern, group, block.freeze()).await
    }

    /// Subscribes as a member of queue group `group`: each message goes to one member.
    ///
    /// # Errors
    /// As [`Client::subscribe`].
    pub async fn queue_subscribe(&self, pattern: &str, group: &str) -> Result<Subscription, Error> {
        self.shared.subscribe(pattern, Some(group)).await
    }

    /// Subscribes to the disk topic `topic` under the durable name `name`: progress survives
    /// disconnects and broker restarts, and consumers sharing the name share the messages. ACK each
    /// message ([`Client::ack`]); unacknowledged ones are redelivered after the ack deadline.
    ///
    /// # Errors
    /// As [`Client::subscribe`]; `Server` when the topic is not a disk topic.
    pub async fn subscribe_durable(
        &self,
        topic: &str,
        name: &str,
        options: DurableOptions,
    ) -> Result<Subscription, Error> {
        let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
        let wire = mycelium_protocol::SubscribeOptions {
            durable: Some(name),
            start: Some(options.start),
            ack_wait_ms: options.ack_wait.map(ms),
            max_deliveries: options.max_deliveries,
            max_in_flight: options.max_in_flight,
            backoff_ms: options.backoff.iter().copied().map(ms).collect(),
            filter: options.filter.as_deref(),
        };
        let mut block = BytesMut::new();
        wire.encode(&mut block)
            .map_err(|e| Error::new(ErrorKind::InvalidArgument, e.to_string()))?;
        self.shared.subscribe_with(topic, None, block.freeze()).await
    }

    /// Acknowledges a durable delivery: it is done and never comes back.
    ///
    /// # Errors
    /// As [`Client::publish`]; a broker refusal arrives on [`Client::errors`].
    pub async fn ack(&self, message: &Message) -> Result<(), Error> {
        let ack = mycelium_protocol::Ack {
            subscription_id: message.subscription_id,
            sequence: message.sequence,
        };
        self.shared.send(32, |buf| encode(buf, 0, &Frame::Ack(ack))).await
    }

    /// Acknowledges a durable delivery and waits until the broker has made the acknowledgement
    /// durable (ACK_OK): a message acknowledged this way is never redelivered, even after a
    /// broker crash.
    ///
    /// # Errors
    /// `Server` (not in flight, unknown subscription), `Disconnected`, `Timeout`.
    pub async fn ack_confirmed(&self, message: &Message) -> Result<(), Error> {
        let ack = mycelium_protocol::Ack {
            subscription_id: message.subscription_id,
            sequence: message.sequence,
        };
        match self
            .shared
            .request(32, |buf, id| encode(buf, id, &Frame::Ack(ack)))
            .await?
        {
            Reply::Acked => Ok(()),
            _ => Err(Error::new(ErrorKind::Protocol, "unexpected reply to ACK")),
        }
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

    /// Refuses a durable delivery: redelivered after `delay` (or the subscription's backoff).
    ///
    /// # Errors
    /// As [`Client::ack`].
    pub async fn nack(&self, message: &Message, delay: Option<Duration>, reason: &str) -> Result<(), Error> {
        let ack = mycelium_protocol::Ack {
            subscription_id: message.subscription_id,
            sequence: message.sequence,
        };
        let delay_ms = delay.map_or(0, |d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX));
        let nack = mycelium_protocol::Nack {
            ack,
            delay_ms,
            reason,
        };
        self.shared
            .send(64 + reason.len(), |buf| encode(buf, 0, &Frame::Nack(nack)))
            .await
    }

    /// Extends a durable delivery's ack deadline.
    ///
    /// # Errors
    /// As [`Client::ack`].
    pub async fn in_progress(&self, message: &Message) -> Result<(), Error> {
        let ack = mycelium_protocol::Ack {
            subscription_id: message.subscription_id,
            sequence: message.sequence,
        };
        self.shared
            .send(32, |buf| encode(buf, 0, &Frame::InProgress(ack)))
            .await
    }

    /// Gives up on a durable delivery: it goes to the dead-letter queue now.
    ///
    /// # Errors
    /// As [`Client::ack`].
    pub async fn term(&self, message: &Message, reason: &str) -> Result<(), Error> {
        let ack = mycelium_protocol::Ack {
            subscription_id: message.subscription_id,
            sequence: message.sequence,
        };
        let term = mycelium_protocol::Term { ack, reason };
        self.shared
            .send(64 + reason.len(), |buf| encode(buf, 0, &Frame::Term(term)))
            .await
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
                    self.endpoint
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
        loop {
            self.check_usable()?;
            if self.try_append(size_hint, &write)? {
                return Ok(());
            }
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            // Re-check after registering, so a drain in between is not missed.
            if self.try_append(size_hint, &write)? {
                return Ok(());
            }
            tokio::select! {
                () = &mut drained => {}
                () = self.closed.cancelled() => {}
            }
        }
    }

    /// Appends if there is room; `Ok(false)` when connected and full (wait for a drain).
    #[inline]
    fn try_append(
        &self,
        size_hint: usize,
        write: &impl Fn(&mut BytesMut) -> Result<(), mycelium_protocol::ProtocolError>,
    ) -> Result<bool, Error> {
        let mut out = self.out.lock();
        let was_empty = out.buf.is_empty();
        if was_empty || out.buf.len() + size_hint <= self.options.buffer_bytes_max {
            write(&mut out.buf).map_err(|e| Error::new(ErrorKind::InvalidArgument, e.to_string()))?;
            let connected = out.connected;
            if connected
                && was_empty
                && !self
                    .options
                    .inline_write_gap
                    .is_some_and(|gap| socket::write_inline(&mut out, gap))
            {
                drop(out);
                self.wake_writer.notify_one();
            }
            return Ok(true);
        }
        if !out.connected {
            return Err(Error::new(
                ErrorKind::BufferFull,
                format!(
                    "disconnected from {} and the publish buffer ({} bytes) is full",
                    self.endpoint, self.options.buffer_bytes_max
                ),
            ));
        }
        Ok(false)
    }

    /// Nobody waits for the answer to request `id` any more. A plain request is forgotten (a
    /// late answer is then ignored); a SUBSCRIBE stays pending, so that a late SUBSCRIBE_OK for
    /// a subscription nobody holds is undone on the broker (see the dispatcher).
    fn abandon(&self, id: u32) {
        let mut pending = self.pending.lock();
        if matches!(pending.get(&id), Some(Pending::Request(_))) {
            pending.remove(&id);
        }
    }

    async fn request(
        &self,
        size_hint: usize,
        write: impl Fn(&mut BytesMut, u32) -> Result<(), mycelium_protocol::ProtocolError>,
    ) -> Result<Reply, Error> {
        let (id, rx) = self.request_start(size_hint, write).await?;
        self.await_reply(id, rx).await
    }

    /// Sends a request; its answer comes through the returned receiver (see [`ReplyWait`]).
    async fn request_start(
        &self,
        size_hint: usize,
        write: impl Fn(&mut BytesMut, u32) -> Result<(), mycelium_protocol::ProtocolError>,
    ) -> Result<(u32, oneshot::Receiver<Result<Reply, Error>>), Error> {
        if !self.out.lock().connected {
            self.check_usable()?;
            return Err(Error::new(
                ErrorKind::Disconnected,
                format!("not connected to {}", self.endpoint),
            ));
        }
        let id = self.request_id();
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(id, Pending::Request(tx));
        if let Err(error) = self.send(size_hint, |buf| write(buf, id)).await {
            self.pending.lock().remove(&id);
            return Err(error);
        }
        Ok((id, rx))
    }

    async fn await_reply(
        &self,
        id: u32,
        rx: oneshot::Receiver<Result<Reply, Error>>,
    ) -> Result<Reply, Error> {
        /// Forgets the request if the caller stops waiting (drops this future) before the end.
        struct Forget<'a>(&'a Shared, ReplyWait);
        impl Drop for Forget<'_> {
            fn drop(&mut self) {
                self.1.forget(self.0);
            }
        }
        let mut wait = Forget(self, ReplyWait::new(id, rx, self.options.request_timeout));
        std::future::poll_fn(|cx| wait.1.poll_reply(cx, self)).await
    }

    fn request_id(&self) -> u32 {
        loop {
            let id = self.next_request.fetch_add(1, Ordering::Relaxed);
            if id != 0 {
                return id;
            }
        }
    }

    async fn subscribe(self: &Arc<Self>, pattern: &str, group: Option<&str>) -> Result<Subscription, Error> {
        self.subscribe_with(pattern, group, Bytes::new()).await
    }

    async fn subscribe_with(
        self: &Arc<Self>,
        pattern: &str,
        group: Option<&str>,
        options: Bytes,
    ) -> Result<Subscription, Error> {
        self.check_usable()?;
        if pattern.len() > 255 || group.is_some_and(|g| g.len() > 255) {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "pattern and group are at most 255 bytes",
            ));
        }
        let local = self.next_local.fetch_add(1, Ordering::Relaxed);
        // Messages travel in batches (one per subscription per socket read), so the channel is
        // sized in batches: enough for `subscription_capacity` messages of small batches.
        let batches = (self.options.subscription_capacity / 64).max(4);
        let (sender, receiver) = mpsc::channel(batches);
        self.subs.lock().local.insert(
            local,
            LocalSub {
                pattern: pattern.to_owned(),
                group: group.map(str::to_owned),
                options: options.clone(),
                sender,
                server_id: None,
            },
        );
        let subscription = Subscription {
            local_id: local,
            receiver,
            pending: Default::default(),
            shared: Arc::clone(self),
        };
        if !self.out.lock().connected {
            return Ok(subscription); // made on reconnect
        }
        let id = self.request_id();
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(
            id,
            Pending::Subscribe {
                local,
                reply: Some(tx),
            },
        );
        self.send(pattern.len() + 300, |buf| {
            encode(
                buf,
                id,
                &Frame::Subscribe(Subscribe {
                    pattern,
                    group,
                    options: &options,
                }),
            )
        })
        .await?;
        match self.await_reply(id, rx).await {
            Ok(_) => Ok(subscription),
            // Lost the connection meanwhile: the subscription stands and is made on reconnect.
            Err(e) if e.kind() == ErrorKind::Disconnected => Ok(subscription),
            Err(e) => Err(e), // dropping `subscription` forgets it
        }
    }

    pub(crate) fn forget_subscription(&self, local: u64) -> Option<u32> {
        let mut subs = self.subs.lock();
        let server_id = subs.local.remove(&local).and_then(|s| s.server_id);
        if let Some(id) = server_id {
            subs.by_server.remove(&id);
            drop(subs);
            let mut out = self.out.lock();
            if out.connected {
                let _ = encode(
                    &mut out.buf,
                    0,
                    &Frame::Unsubscribe(SubscriptionRef { subscription_id: id }),
                );
                drop(out);
                self.wake_writer.notify_one();
            }
        }
        server_id
    }

    pub(crate) async fn unsubscribe(&self, local: u64) -> Result<(), Error> {
        let server_id = {
            let mut subs = self.subs.lock();
            let id = subs.local.remove(&local).and_then(|s| s.server_id);
            if let Some(id) = id {
                subs.by_server.remove(&id);
            }
            id
        };
        match server_id {
            Some(subscription_id) if self.out.lock().connected => self
                .request(32, |buf, id| {
                    encode(buf, id, &Frame::Unsubscribe(SubscriptionRef { subscription_id }))
                })
                .await
                .map(|_| ()),
            _ => Ok(()),
        }
    }
}
