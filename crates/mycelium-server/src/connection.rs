//! One client connection: handshake, the reader (parse -> route, on this task), the writer.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use mycelium_broker::{
    Action, Broker, ConnectionInfo, Denied, DenyReason, Door, DurableRequest, Publisher, Verdict,
};
use mycelium_protocol::{
    Decoded, ErrorCode, ErrorFrame, Frame, ProtocolError, PublishOk, StatsSnapshot, SubscribeOptions,
    SubscriptionRef, Welcome, decode, encode,
};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::sync::CancellationToken;

/// What every connection task needs to know.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) server_name: String,
    pub(crate) frame_bytes_max: usize,
    pub(crate) connection_timeout: Duration,
    pub(crate) buffer_capacity: usize,
    pub(crate) batch_size: usize,
    pub(crate) flush_interval: Duration,
    /// `[performance] inline_flush_bytes` (0: no inline flushes).
    pub(crate) inline_flush_bytes: usize,
    pub(crate) shutdown_timeout: Duration,
    /// A connection that sends nothing this long gets a PING; nothing for as long again, closed.
    pub(crate) idle_timeout: Duration,
    /// A frame begun and not finished within this is cut off (a client holding a half-sent
    /// frame holds the broker's memory for it).
    pub(crate) frame_timeout: Duration,
    /// Checks HELLO's credential.
    pub(crate) auth: Arc<mycelium_auth::Authenticator>,
    /// Authenticated connections and their credentials (checked again when `[auth]` reloads).
    pub(crate) sessions: Arc<crate::sessions::Sessions>,
}

/// Who connected: the door, the address shown in stats, the peer's uid (Unix socket), the
/// common name of its verified client certificate (mutual TLS).
#[derive(Debug)]
pub(crate) struct Peer {
    pub(crate) door: Door,
    pub(crate) address: String,
    pub(crate) uid: Option<u32>,
    pub(crate) common_name: Option<String>,
}

/// Initial size of a connection's read buffer and writer buffer; both grow with traffic.
const INITIAL_BUFFER_BYTES: usize = 4096;

/// An ADMIN_OK frame's bytes besides its JSON body (length prefix, kind, request id).
const ADMIN_OK_OVERHEAD: usize = 16;

/// Why the reader stopped.
enum Stop {
    /// Peer closed, shutdown, or the broker closed the connection (slow consumer).
    Quiet,
    /// A protocol violation: an ERROR was queued; close after flushing it.
    Violation,
}

/// The write half of a connection's socket: written by the connection's writer task, and directly
/// by other connections' readers for an inline flush (see `mycelium_broker::Outbound`).
pub(crate) trait SocketWrite: Send + Sync + 'static {
    /// Whether other connections' readers may write to it directly (inline flush): a plain
    /// socket; not a TLS stream, whose records only its own writer may produce.
    const DIRECT: bool = true;
    /// Writes what the socket takes now, without waiting.
    fn try_write(&self, buf: &[u8]) -> std::io::Result<usize>;
    /// Resolves when the socket may take more bytes.
    fn writable(&self) -> impl std::future::Future<Output = std::io::Result<()>> + Send;
    /// Writes all of `buf`, waiting for the socket as needed.
    fn write_all<'a>(
        &'a self,
        mut buf: &'a [u8],
    ) -> impl std::future::Future<Output = std::io::Result<()>> + Send + 'a {
        async move {
            while !buf.is_empty() {
                match self.try_write(buf) {
                    Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                    Ok(written) => buf = &buf[written..],
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => self.writable().await?,
                    Err(error) => return Err(error),
                }
            }
            Ok(())
        }
    }
}

/// A TLS connection's write half.
type TlsWriteHalf = tokio::io::WriteHalf<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>;

/// The write half of a TLS connection: written by the connection's writer task only.
pub(crate) struct TlsWrite(pub(crate) tokio::sync::Mutex<TlsWriteHalf>);

impl SocketWrite for TlsWrite {
    const DIRECT: bool = false;

    fn try_write(&self, _buf: &[u8]) -> std::io::Result<usize> {
        Err(std::io::ErrorKind::WouldBlock.into())
    }

    fn writable(&self) -> impl std::future::Future<Output = std::io::Result<()>> + Send {
        std::future::ready(Ok(()))
    }

    fn write_all<'a>(
        &'a self,
        buf: &'a [u8],
    ) -> impl std::future::Future<Output = std::io::Result<()>> + Send + 'a {
        use tokio::io::AsyncWriteExt;
        async move {
            let mut write = self.0.lock().await;
            write.write_all(buf).await?;
            write.flush().await
        }
    }
}

impl SocketWrite for mycelium_net::WriteHalf {
    fn try_write(&self, buf: &[u8]) -> std::io::Result<usize> {
        mycelium_net::WriteHalf::try_write(self, buf)
    }
    fn writable(&self) -> impl std::future::Future<Output = std::io::Result<()>> + Send {
        mycelium_net::WriteHalf::writable(self)
    }
}

impl SocketWrite for tokio::net::tcp::OwnedWriteHalf {
    fn try_write(&self, buf: &[u8]) -> std::io::Result<usize> {
        tokio::net::tcp::OwnedWriteHalf::try_write(self, buf)
    }
    fn writable(&self) -> impl std::future::Future<Output = std::io::Result<()>> + Send {
        tokio::net::tcp::OwnedWriteHalf::writable(self)
    }
}

/// A connection's write half as the broker sees it.
struct Socket<W>(W);

impl<W: SocketWrite> mycelium_broker::DirectWrite for Socket<W> {
    fn try_write(&self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.try_write(buf)
    }
}

pub(crate) async fn serve<R, W>(
    mut read: R,
    write: W,
    peer: Peer,
    broker: Arc<Broker>,
    settings: Arc<Settings>,
    shutdown: CancellationToken,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: SocketWrite,
{
    let credentials = (peer.uid, peer.common_name);
    let info = broker.connect_unauthenticated(peer.door, peer.address);
    let write = Arc::new(Socket(write));
    if settings.inline_flush_bytes > 0 && W::DIRECT {
        let direct = Arc::clone(&write) as Arc<dyn mycelium_broker::DirectWrite>;
        info.outbound.set_direct(direct, settings.inline_flush_bytes);
    }
    let writer = tokio::spawn(write_loop(write, Arc::clone(&info), Arc::clone(&settings)));
    let stop = read_loop(&mut read, &info, &credentials, &broker, &settings, &shutdown).await;
    if let Stop::Violation = stop {
        tracing::debug!(connection = info.id, "closing after a protocol violation");
    }
    // No more deliveries are routed here; the writer flushes what is queued, then closes.
    settings.sessions.leave(info.id);
    broker.disconnect(info.id);
    let mut writer = writer;
    if tokio::time::timeout(settings.shutdown_timeout, &mut writer)
        .await
        .is_err()
    {
        // Stopped, not just left behind: a detached writer stuck on a peer that never reads
        // would keep the socket open and its pending bytes held for ever.
        writer.abort();
        tracing::warn!(
            connection = info.id,
            "writer did not flush within shutdown_timeout; dropping it"
        );
    }
    info.outbound.clear_direct();
}

fn send_error(info: &ConnectionInfo, request_id: u32, code: ErrorCode, detail: u16, message: &str) {
    info.outbound.append_control(|buf| {
        let _ = encode(
            buf,
            request_id,
            &Frame::Error(ErrorFrame {
                code: code as u16,
                detail,
                message,
            }),
        );
    });
}

fn fatal(info: &ConnectionInfo, request_id: u32, code: ErrorCode, message: &str) -> Stop {
    info.outbound.append_final(|buf| {
        let _ = encode(buf, request_id, &Frame::Error(ErrorFrame::new(code, message)));
    });
    info.outbound.close();
    Stop::Violation
}

fn reply(info: &ConnectionInfo, request_id: u32, frame: &Frame<'_>) {
    info.outbound.append_control(|buf| {
        let _ = encode(buf, request_id, frame);
    });
}

fn protocol_error(info: &ConnectionInfo, error: &ProtocolError) -> Stop {
    let code = match error {
        ProtocolError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
        _ => ErrorCode::MalformedFrame,
    };
    fatal(info, 0, code, &format!("{error}; closing the connection"))
}

async fn read_loop<R: AsyncRead + Unpin>(
    read: &mut R,
    info: &Arc<ConnectionInfo>,
    credentials: &(Option<u32>, Option<String>),
    broker: &Arc<Broker>,
    settings: &Settings,
    shutdown: &CancellationToken,
) -> Stop {
    // Start small: most connections of a large fleet are quiet. A connection whose reads fill the
    // buffer gets a larger one, up to `channel_capacity`.
    let mut read_chunk = INITIAL_BUFFER_BYTES.min(settings.buffer_capacity);
    let mut buf = BytesMut::with_capacity(read_chunk);
    match handshake(read, &mut buf, info, credentials, broker, settings).await {
        Ok(()) => {}
        Err(stop) => return stop,
    }
    let mut publisher = Publisher::new(Arc::clone(info));
    let mut next_subscription = 1u32;
    let cancelled = shutdown.cancelled();
    let closed = info.outbound.closed();
    tokio::pin!(cancelled, closed);
    let mut last_read = tokio::time::Instant::now();
    let mut pinged = false;
    // When the frame at the front of the buffer began arriving (none: the buffer is empty).
    let mut partial_since: Option<tokio::time::Instant> = None;
    loop {
        // Route every whole frame in the buffer before reading again.
        publisher.begin_batch(broker);
        let mut consumed = 0;
        let mut in_batch = 0;
        loop {
            match decode(&buf[consumed..], settings.frame_bytes_max) {
                Ok(Some((decoded, used))) => {
                    consumed += used;
                    let mut opening = None;
                    let step = handle(
                        decoded,
                        info,
                        broker,
                        &mut publisher,
                        &mut next_subscription,
                        &mut opening,
                        settings.frame_bytes_max,
                    );
                    if let Some(stop) = step {
                        publisher.end_batch(broker);
                        return stop;
                    }
                    if let Some(open) = opening {
                        // Opening reads and writes state files off this worker; frames after
                        // the SUBSCRIBE wait for it.
                        publisher.end_batch(broker);
                        open.run(info, broker, &mut next_subscription).await;
                        publisher.begin_batch(broker);
                    }
                    in_batch += 1;
                    if in_batch == settings.batch_size {
                        publisher.end_batch(broker);
                        publisher.begin_batch(broker);
                        in_batch = 0;
                    }
                    if publisher.has_blocked() {
                        // Keep order: nothing more from this publisher until the blocked delivery lands.
                        broker.settle_blocked(&mut publisher).await;
                        publisher.begin_batch(broker);
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    publisher.end_batch(broker);
                    return protocol_error(info, &error);
                }
            }
        }
        buf.advance(consumed);
        partial_since = match (buf.is_empty(), consumed > 0) {
            (true, _) => None,
            (false, true) => Some(tokio::time::Instant::now()),
            (false, false) => partial_since.or_else(|| Some(tokio::time::Instant::now())),
        };
        publisher.end_batch(broker);
        if publisher.has_blocked() {
            // The read's durable publishes did not fit the storage writer's queue: they go first.
            broker.settle_blocked(&mut publisher).await;
        }
        if buf.capacity() - buf.len() < read_chunk / 4 {
            buf.reserve(read_chunk);
        }
        let idle_deadline = last_read + settings.idle_timeout * if pinged { 2 } else { 1 };
        let deadline = partial_since.map_or(idle_deadline, |since| {
            idle_deadline.min(since + settings.frame_timeout)
        });
        tokio::select! {
            biased;
            () = &mut cancelled => return Stop::Quiet,
            () = &mut closed => return Stop::Quiet,
            () = tokio::time::sleep_until(deadline) => {
                let now = tokio::time::Instant::now();
                if partial_since.is_some_and(|since| now >= since + settings.frame_timeout) {
                    let message = format!(
                        "a frame was left incomplete for frame_timeout ({:?}); closing",
                        settings.frame_timeout
                    );
                    return fatal(info, 0, ErrorCode::TimedOut, &message);
                }
                if pinged {
                    let message = format!(
                        "idle: nothing received for idle_timeout ({:?}), nor an answer to PING; closing",
                        settings.idle_timeout
                    );
                    return fatal(info, 0, ErrorCode::TimedOut, &message);
                }
                reply(info, 0, &Frame::Ping);
                pinged = true;
            }
            read = read.read_buf(&mut buf) => match read {
                Ok(0) => {
                    if !buf.is_empty() {
                        tracing::debug!(connection = info.id, bytes = buf.len(), "peer closed mid-frame");
                    }
                    return Stop::Quiet;
                }
                Ok(_) => {
                    last_read = tokio::time::Instant::now();
                    pinged = false;
                    if buf.len() == buf.capacity() && read_chunk < settings.buffer_capacity {
                        read_chunk = (read_chunk * 2).min(settings.buffer_capacity);
                    }
                }
                Err(error) => {
                    tracing::debug!(connection = info.id, %error, "read failed");
                    return Stop::Quiet;
                }
            },
        }
    }
}

async fn handshake<R: AsyncRead + Unpin>(
    read: &mut R,
    buf: &mut BytesMut,
    info: &ConnectionInfo,
    (uid, common_name): &(Option<u32>, Option<String>),
    broker: &Broker,
    settings: &Settings,
) -> Result<(), Stop> {
    let deadline = tokio::time::Instant::now() + settings.connection_timeout;
    loop {
        match decode(buf, settings.frame_bytes_max) {
            Ok(Some((
                Decoded {
                    request_id,
                    frame: Frame::Hello(hello),
                },
                used,
            ))) => {
                let Some(version) = hello.negotiate() else {
                    return Err(fatal(
                        info,
                        request_id,
                        ErrorCode::UnsupportedVersion,
                        &format!(
                            "client speaks protocol versions {}..={}, this broker {}..={}",
                            hello.version_min,
                            hello.version_max,
                            mycelium_protocol::PROTOCOL_VERSION_MIN,
                            mycelium_protocol::PROTOCOL_VERSION
                        ),
                    ));
                };
                // The credential is checked before anything else is read from this client.
                let peer = mycelium_auth::Peer {
                    uid: *uid,
                    common_name: common_name.as_deref(),
                };
                match settings.auth.connection(hello.token, &peer) {
                    Ok(principal) => {
                        let credential = crate::sessions::Credential {
                            token: hello.token.to_vec(),
                            uid: *uid,
                            common_name: common_name.clone(),
                        };
                        settings.sessions.admit(
                            info.id,
                            credential,
                            principal.clone(),
                            Arc::clone(&info.outbound),
                        );
                        info.authenticate(principal);
                    }
                    Err(error) => {
                        let denied = Denied::new(DenyReason::Unauthenticated, error.to_string());
                        broker.refused(info.door(), None, "authenticate", "", &denied);
                        let text = format!("authentication failed: {error}");
                        return Err(fatal(info, request_id, ErrorCode::NotAuthenticated, &text));
                    }
                }
                info.set_name(hello.client_name);
                let welcome = Welcome {
                    version,
                    connection_id: info.id,
                    frame_bytes_max: settings.frame_bytes_max as u32,
                    server_name: &settings.server_name,
                };
                reply(info, request_id, &Frame::Welcome(welcome));
                buf.advance(used);
                return Ok(());
            }
            Ok(Some((decoded, _))) => {
                return Err(fatal(
                    info,
                    decoded.request_id,
                    ErrorCode::HandshakeRequired,
                    &format!("expected HELLO, got {}", decoded.frame.kind().name()),
                ));
            }
            Ok(None) => {}
            Err(error) => return Err(protocol_error(info, &error)),
        }
        match tokio::time::timeout_at(deadline, read.read_buf(buf)).await {
            Err(_) => {
                let message = format!(
                    "no HELLO within connection_timeout ({:?})",
                    settings.connection_timeout
                );
                return Err(fatal(info, 0, ErrorCode::HandshakeTimeout, &message));
            }
            Ok(Ok(0)) | Ok(Err(_)) => return Err(Stop::Quiet),
            Ok(Ok(_)) => {}
        }
    }
}

/// A durable SUBSCRIBE, checked, whose subscription the read loop opens before the next frame.
struct Opening {
    id: u32,
    request: DurableRequest,
    request_id: u32,
}

impl Opening {
    async fn run(self, info: &ConnectionInfo, broker: &Arc<Broker>, next_subscription: &mut u32) {
        match broker
            .subscribe_durable(info, self.id, self.request, self.request_id)
            .await
        {
            Ok(()) => *next_subscription = next_subscription.wrapping_add(1).max(1),
            Err(error) => send_error(info, self.request_id, error.code(), 0, &error.to_string()),
        }
    }
}

/// Handles one frame; `Some` stops the connection. A durable SUBSCRIBE is left in `opening`.
fn handle(
    decoded: Decoded<'_>,
    info: &Arc<ConnectionInfo>,
    broker: &Arc<Broker>,
    publisher: &mut Publisher,
    next_subscription: &mut u32,
    opening: &mut Option<Opening>,
    frame_bytes_max: usize,
) -> Option<Stop> {
    let request_id = decoded.request_id;
    match decoded.frame {
        Frame::Publish(message) => match broker.publish_request(publisher, &message, request_id) {
            Ok(published) => {
                // A durable publish is confirmed by the storage writer once it is stored.
                if message.confirm && !published.queued {
                    let ok = PublishOk {
                        sequence: published.sequence,
                        message_id: [0; 16],
                        duplicate: false,
                    };
                    reply(info, request_id, &Frame::PublishOk(ok));
                }
            }
            Err(error) => send_error(info, request_id, error.code(), error.detail(), &error.to_string()),
        },
        Frame::PublishBatch(batch) => {
            // Refusals are summarised in one ERROR (the first, and how many): one per entry let a
            // batch of bad entries make the broker queue far more than it was sent.
            let mut refused = 0usize;
            let mut first = None;
            let mut total = 0usize;
            for (index, entry) in batch.iter().enumerate() {
                // The batch was checked whole on decode; entries cannot fail to parse here.
                let Ok(message) = entry else { break };
                total += 1;
                match broker.publish_request(publisher, &message, request_id) {
                    Ok(published) if message.confirm && !published.queued => {
                        let ok = PublishOk {
                            sequence: published.sequence,
                            message_id: [0; 16],
                            duplicate: false,
                        };
                        reply(info, request_id, &Frame::PublishOk(ok));
                    }
                    Ok(_) => {}
                    Err(error) => {
                        refused += 1;
                        first.get_or_insert((index, error));
                    }
                }
            }
            if let Some((index, error)) = first {
                let text = if refused == 1 {
                    format!("batch entry {index}: {error}")
                } else {
                    format!("{refused} of {total} batch entries refused; the first, entry {index}: {error}")
                };
                send_error(info, request_id, error.code(), error.detail(), &text);
            }
        }
        Frame::Subscribe(subscribe) => {
            let id = *next_subscription;
            if !subscribe.options.is_empty() {
                let result = SubscribeOptions::decode(subscribe.options)
                    .map_err(|e| (ErrorCode::InvalidHeaders, format!("subscription options: {e}")))
                    .and_then(|options| {
                        let only_filter = options.durable.is_none()
                            && options.filter.is_some()
                            && SubscribeOptions {
                                filter: None,
                                ..options.clone()
                            } == SubscribeOptions::default();
                        if only_filter {
                            broker
                                .subscribe_filtered(
                                    info,
                                    id,
                                    subscribe.pattern,
                                    subscribe.group,
                                    options.filter,
                                    request_id,
                                )
                                .map(|_| None)
                        } else {
                            broker
                                .durable_request(info, subscribe.pattern, &options)
                                .map(Some)
                        }
                        .map_err(|e| (e.code(), e.to_string()))
                    });
                match result {
                    Ok(None) => *next_subscription = next_subscription.wrapping_add(1).max(1),
                    Ok(Some(request)) => {
                        *opening = Some(Opening {
                            id,
                            request,
                            request_id,
                        });
                    }
                    Err((code, text)) => send_error(info, request_id, code, 0, &text),
                }
                return None;
            }
            match broker.subscribe_with_reply(info, id, subscribe.pattern, subscribe.group, request_id) {
                Ok(_) => *next_subscription = next_subscription.wrapping_add(1).max(1),
                Err(error) => send_error(info, request_id, error.code(), 0, &error.to_string()),
            }
        }
        Frame::Unsubscribe(SubscriptionRef { subscription_id }) => {
            if broker.unsubscribe(info, subscription_id) {
                reply(
                    info,
                    request_id,
                    &Frame::UnsubscribeOk(SubscriptionRef { subscription_id }),
                );
            } else {
                let text = format!("no subscription {subscription_id} on this connection");
                send_error(info, request_id, ErrorCode::UnknownSubscription, 0, &text);
            }
        }
        Frame::Ping => reply(info, request_id, &Frame::Pong),
        Frame::Pong => {}
        Frame::Stats => {
            let action = Action::Admin {
                what: "stats",
                target: "",
            };
            match broker.authorize_connection(info, action) {
                Ok(()) => {
                    let stats: StatsSnapshot = broker.stats();
                    // Never a frame the client would refuse: with more topics than one frame
                    // holds, the paged HTTP listing is the way.
                    let mut encoded = BytesMut::new();
                    let _ = encode(&mut encoded, request_id, &Frame::StatsOk(stats));
                    if encoded.len() > frame_bytes_max {
                        let text = format!(
                            "the STATS answer is {} bytes, over the frame limit of {frame_bytes_max}; \
                             list topics page by page with GET /api/v1/topics",
                            encoded.len()
                        );
                        send_error(info, request_id, ErrorCode::LimitReached, 0, &text);
                    } else {
                        info.outbound
                            .append_control(|buf| buf.extend_from_slice(&encoded));
                    }
                }
                Err(denied) => not_permitted(info, request_id, &denied),
            }
        }
        Frame::Ack(a) => verdict(info, broker, request_id, Verdict::Ack(a)),
        Frame::Nack(n) => verdict(info, broker, request_id, Verdict::Nack(n)),
        Frame::InProgress(a) => verdict(info, broker, request_id, Verdict::InProgress(a)),
        Frame::Term(t) => verdict(info, broker, request_id, Verdict::Term(t)),
        Frame::Admin(body) => {
            let (info, broker, body) = (Arc::clone(info), Arc::clone(broker), body.to_vec());
            tokio::spawn(async move {
                match crate::admin::handle(broker, &info, body).await {
                    // A frame the client would refuse is never sent: a dead letter whose payload
                    // alone is near the frame limit is read over HTTP.
                    Ok(json) if json.len() + ADMIN_OK_OVERHEAD > frame_bytes_max => {
                        let text = format!(
                            "the answer is {} bytes, over the frame limit of {frame_bytes_max}; \
                             ask for fewer entries, or read this dead letter over HTTP",
                            json.len()
                        );
                        send_error(&info, request_id, ErrorCode::LimitReached, 0, &text);
                    }
                    Ok(json) => reply(&info, request_id, &Frame::AdminOk(&json)),
                    Err((code, text)) => send_error(&info, request_id, code, 0, &text),
                }
            });
        }
        other @ (Frame::Hello(_)
        | Frame::Welcome(_)
        | Frame::Error(_)
        | Frame::PublishOk(_)
        | Frame::SubscribeOk(_)
        | Frame::UnsubscribeOk(_)
        | Frame::Deliver(_)
        | Frame::StatsOk(_)
        | Frame::AckOk(_)
        | Frame::AdminOk(_)) => {
            let text = format!(
                "{} is not a frame a client sends (or HELLO twice); closing",
                other.kind().name()
            );
            return Some(fatal(info, request_id, ErrorCode::MalformedFrame, &text));
        }
    }
    None
}

fn not_permitted(info: &ConnectionInfo, request_id: u32, denied: &Denied) {
    send_error(info, request_id, ErrorCode::NotPermitted, 0, &denied.to_string());
}

/// ACK-family frames: answered only on error (or with PONG-like silence), as NATS does.
fn verdict(info: &ConnectionInfo, broker: &Broker, request_id: u32, verdict: Verdict<'_>) {
    if let Err(error) = broker.acknowledge(info, verdict, request_id) {
        send_error(info, request_id, error.code(), 0, &error.to_string());
    }
}

async fn write_loop<W: SocketWrite>(
    write: Arc<Socket<W>>,
    info: Arc<ConnectionInfo>,
    settings: Arc<Settings>,
) {
    let outbound = &info.outbound;
    let mut spare = BytesMut::with_capacity(INITIAL_BUFFER_BYTES.min(settings.buffer_capacity));
    loop {
        let taken = outbound.take(&mut spare);
        if taken == 0 {
            if outbound.is_closing() {
                break;
            }
            outbound.wait_for_work().await;
            if !settings.flush_interval.is_zero() {
                tokio::time::sleep(settings.flush_interval).await;
            }
            continue;
        }
        let result = write_all(&write.0, &spare).await;
        spare.clear();
        outbound.written(taken);
        if let Err(error) = result {
            tracing::debug!(connection = info.id, %error, "write failed; closing");
            outbound.close();
            break;
        }
    }
    // Dropping the last handle of the write half shuts the socket's sending side down.
    outbound.clear_direct();
}

pub(crate) async fn write_all<W: SocketWrite>(write: &W, buf: &[u8]) -> std::io::Result<()> {
    write.write_all(buf).await
}
