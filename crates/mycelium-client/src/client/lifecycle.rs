//! The connection lifecycle of the client: connect and handshake, supervise (reconnect with
//! backoff, circuit breaker), the reader (frames to subscriptions and replies) and the writer.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use mycelium_protocol::{
    DEFAULT_FRAME_BYTES_MAX, Frame, Hello, PROTOCOL_VERSION, PROTOCOL_VERSION_MIN, Subscribe,
    SubscriptionRef, decode, encode, frame_len,
};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::socket::Socket;
use super::{Batch, ConnectionState, Pending, READ_CHUNK, Reader, Reply, Shared, Writer};
use crate::message::Message;
use crate::resilience::BreakerState;
use crate::url::Endpoint;
use crate::{Error, ErrorKind};

impl Shared {
    /// The broker in use (or tried next).
    pub(super) fn endpoint(&self) -> &Endpoint {
        &self.endpoints[self.current.load(Ordering::Relaxed) % self.endpoints.len()]
    }

    /// Connects and handshakes once.
    pub(super) async fn establish(&self) -> Result<(Reader, Writer, BytesMut), Error> {
        let attempt = async {
            let (mut reader, writer): (Reader, Writer) = match self.endpoint() {
                Endpoint::Unix(path) => {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    // Room to batch publishes, as TCP's autotuned buffer gives (the kernel caps it).
                    let _ = socket2::SockRef::from(&stream).set_send_buffer_size(4 << 20);
                    // Watched for reading only: the broker's reads do not wake this process.
                    let (r, w) = mycelium_net::split(stream)?;
                    (Box::new(r), Arc::new(Socket::Unix(w)))
                }
                Endpoint::Tcp(addr) => {
                    let stream = tokio::net::TcpStream::connect(addr).await?;
                    stream.set_nodelay(true)?;
                    let (r, w) = stream.into_split();
                    (Box::new(r), Arc::new(Socket::Tcp(w)))
                }
                Endpoint::Tls(addr) => {
                    let stream = tokio::net::TcpStream::connect(addr).await?;
                    stream.set_nodelay(true)?;
                    let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
                    let host = host.trim_start_matches('[').trim_end_matches(']');
                    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                        .map_err(|e| std::io::Error::other(format!("`{host}` as a TLS server name: {e}")))?;
                    let config = crate::tls::client_config(&self.options)?;
                    let stream = tokio_rustls::TlsConnector::from(config)
                        .connect(name, stream)
                        .await?;
                    let (r, w) = tokio::io::split(stream);
                    (Box::new(r), Arc::new(Socket::Tls(tokio::sync::Mutex::new(w))))
                }
            };
            let mut buf = BytesMut::new();
            let hello = Hello {
                version_min: PROTOCOL_VERSION_MIN,
                version_max: PROTOCOL_VERSION,
                client_name: &self.options.name,
                token: self
                    .options
                    .token
                    .as_ref()
                    .map_or(&[][..], |t| t.expose().as_bytes()),
            };
            encode(&mut buf, 0, &Frame::Hello(hello)).map_err(std::io::Error::other)?;
            writer.write_all(&buf).await?;
            buf.clear();
            loop {
                if let Some((decoded, used)) =
                    decode(&buf, DEFAULT_FRAME_BYTES_MAX).map_err(std::io::Error::other)?
                {
                    return match decoded.frame {
                        Frame::Welcome(_) => {
                            bytes::Buf::advance(&mut buf, used);
                            Ok((reader, writer, buf))
                        }
                        Frame::Error(e) => {
                            Err(std::io::Error::other(format!("broker refused: {}", e.message)))
                        }
                        other => Err(std::io::Error::other(format!(
                            "expected WELCOME, got {}",
                            other.kind().name()
                        ))),
                    };
                }
                if reader.read_buf(&mut buf).await? == 0 {
                    return Err(std::io::Error::other(
                        "broker closed the connection during the handshake",
                    ));
                }
            }
        };
        match tokio::time::timeout(self.options.connect_timeout, attempt).await {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(e)) => Err(Error::new(
                ErrorKind::Connect,
                format!("cannot connect to {}: {e}", self.endpoint()),
            )),
            Err(_) => Err(Error::new(
                ErrorKind::Connect,
                format!("cannot connect to {}: timed out", self.endpoint()),
            )),
        }
    }

    pub(super) async fn supervise(self: Arc<Self>, first: (Reader, Writer, BytesMut)) {
        let mut rng = SmallRng::from_os_rng();
        let mut connection = Some(first);
        let mut attempt = 0u32;
        // The first connection's subscriptions are made on it directly; later ones re-subscribe.
        let mut reconnected = false;
        loop {
            if let Some((reader, writer, leftover)) = connection.take() {
                self.breaker.lock().on_success();
                attempt = 0;
                self.run_connection(reader, writer, leftover, reconnected).await;
                reconnected = true;
                self.out.lock().connected = false;
                self.fail_pending();
                if self.closed.is_cancelled() {
                    break;
                }
                self.set_state(ConnectionState::Disconnected);
                tracing::info!(endpoint = %self.endpoint(), "connection lost; reconnecting");
            }
            let now = Instant::now();
            let allowed = self.breaker.lock().allow(now);
            if !allowed {
                self.set_state(ConnectionState::CircuitOpen);
                let probe_at = self.breaker.lock().probe_at().unwrap_or(now);
                tokio::select! {
                    () = tokio::time::sleep_until(probe_at) => continue,
                    () = self.closed.cancelled() => break,
                }
            }
            if self.breaker.lock().state(now) == BreakerState::Closed {
                self.set_state(ConnectionState::Connecting);
            }
            match self.establish().await {
                Ok(established) => connection = Some(established),
                Err(error) => {
                    self.breaker.lock().on_failure(Instant::now());
                    tracing::debug!(%error, attempt, "reconnect failed");
                    let delay = self.options.backoff.delay(attempt, &mut rng);
                    attempt = attempt.saturating_add(1);
                    if self.options.max_reconnects.is_some_and(|max| attempt >= max) {
                        let text = format!(
                            "gave up after {attempt} failed reconnect attempts (max_reconnects); last: {error}"
                        );
                        tracing::warn!("{text}");
                        let _ = self.errors.send(Error::new(ErrorKind::GaveUp, text));
                        self.closed.cancel();
                        break;
                    }
                    // The next broker of the list, if there are several (failover).
                    self.current.fetch_add(1, Ordering::Relaxed);
                    if self.circuit_open.load(Ordering::Acquire) {
                        self.set_state(ConnectionState::CircuitOpen);
                        continue;
                    }
                    self.set_state(ConnectionState::Disconnected);
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = self.closed.cancelled() => break,
                    }
                }
            }
        }
        self.set_state(ConnectionState::Closed);
        self.fail_pending();
        self.subs.lock().local.clear();
    }

    fn fail_pending(&self) {
        for (_, pending) in self.pending.lock().drain() {
            let error = Error::new(ErrorKind::Disconnected, "connection lost before the answer");
            match pending {
                Pending::Request(tx) | Pending::Subscribe { reply: Some(tx), .. } => {
                    let _ = tx.send(Err(error));
                }
                Pending::Subscribe { reply: None, .. } => {}
            }
        }
    }

    async fn run_connection(
        self: &Arc<Self>,
        mut reader: Reader,
        writer: Writer,
        mut buf: BytesMut,
        resubscribe: bool,
    ) {
        // Re-subscribe everything first, then let buffered publishes follow in order.
        let mut prefix = BytesMut::new();
        if resubscribe {
            let mut subs = self.subs.lock();
            subs.by_server.clear();
            let mut pending = self.pending.lock();
            for (local, sub) in subs.local.iter_mut() {
                sub.server_id = None;
                let id = self.request_id();
                let frame = Subscribe {
                    pattern: &sub.pattern,
                    group: sub.group.as_deref(),
                    options: &sub.options,
                };
                if encode(&mut prefix, id, &Frame::Subscribe(frame)).is_ok() {
                    pending.insert(
                        id,
                        Pending::Subscribe {
                            local: *local,
                            reply: None,
                        },
                    );
                }
            }
        }
        {
            let mut out = self.out.lock();
            prefix.extend_from_slice(&out.buf);
            out.buf = prefix;
            out.connected = true;
            out.direct.socket = Some(Arc::clone(&writer));
            if resubscribe {
                // A reconnect: what was buffered while disconnected (deferred or not) goes at
                // once. (On the first connection, requests made before this point keep their
                // deferral.)
                out.direct.deferred = false;
                out.direct.backstop = false;
            }
        }
        self.set_state(ConnectionState::Connected);
        self.wake_writer.notify_one();
        let stop = CancellationToken::new();
        let writer_task = tokio::spawn(Arc::clone(self).write_loop(writer, stop.clone()));
        let ping = self.options.ping_interval;
        let mut last_read = Instant::now();
        let ping_timer = tokio::time::sleep(ping);
        let stopped = stop.cancelled();
        let closed = self.closed.cancelled();
        tokio::pin!(ping_timer, stopped, closed);
        let mut batch = Batch::default();
        loop {
            super::socket::answering(&mut self.out.lock());
            while let Ok(Some(len)) = frame_len(&buf, usize::MAX) {
                let frame = buf.split_to(len).freeze();
                if self.dispatch(frame, &mut batch).await.is_err() {
                    self.answered();
                    stop.cancel();
                    let _ = writer_task.await;
                    return;
                }
            }
            self.answered();
            self.deliver_batch(&mut batch).await;
            if buf.capacity() - buf.len() < READ_CHUNK / 4 {
                buf.reserve(READ_CHUNK);
            }
            tokio::select! {
                read = reader.read_buf(&mut buf) => match read {
                    Ok(0) | Err(_) => break,
                    Ok(_) => last_read = Instant::now(),
                },
                () = &mut ping_timer => {
                    if last_read.elapsed() >= ping * 2 {
                        tracing::info!("no traffic for two ping intervals; treating the connection as dead");
                        break;
                    }
                    if last_read.elapsed() >= ping {
                        let mut out = self.out.lock();
                        let _ = encode(&mut out.buf, 0, &Frame::Ping);
                        drop(out);
                        self.wake_writer.notify_one();
                        ping_timer.as_mut().reset(Instant::now() + ping / 2);
                    } else {
                        ping_timer.as_mut().reset(last_read + ping);
                    }
                }
                () = &mut stopped => break,
                () = &mut closed => break,
            }
        }
        stop.cancel();
        let _ = writer_task.await;
    }

    /// Hands the messages gathered from one read to their subscription, in one channel send.
    async fn deliver_batch(&self, batch: &mut Batch) {
        if let Some(sender) = batch.sender.take()
            && !batch.messages.is_empty()
        {
            let messages = std::mem::take(&mut batch.messages);
            match sender.try_send(messages) {
                Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
                // The subscriber is behind: stop reading (the broker's buffer absorbs the rest).
                Err(mpsc::error::TrySendError::Full(messages)) => {
                    let _ = sender.send(messages).await;
                }
            }
        }
        batch.messages.clear();
        batch.server_id = None;
    }

    async fn write_loop(self: Arc<Self>, writer: Writer, stop: CancellationToken) {
        let mut spare = BytesMut::with_capacity(64 * 1024);
        loop {
            let deferred = {
                let mut out = self.out.lock();
                if out.direct.deferred {
                    out.direct.backstop = true;
                    true
                } else {
                    std::mem::swap(&mut out.buf, &mut spare);
                    super::socket::writer_took(&mut out, spare.len());
                    false
                }
            };
            if deferred {
                // Requests wait for their caller to wait (see `socket::defer`); should nobody
                // ever wait, they go after `pipeline_hold_max` regardless.
                tokio::select! {
                    () = self.wake_writer.notified() => {}
                    () = tokio::time::sleep(self.options.pipeline_hold_max) => {
                        let mut out = self.out.lock();
                        out.direct.deferred = false;
                        out.direct.backstop = false;
                    }
                    () = stop.cancelled() => break,
                }
                continue;
            }
            if spare.is_empty() {
                tokio::select! {
                    () = self.wake_writer.notified() => continue,
                    () = stop.cancelled() => break,
                }
            }
            // `writing` stays set until the next swap (under the same lock) finds what is left.
            let result = writer.write_all(&spare).await;
            spare.clear();
            self.drained.notify_waiters();
            if result.is_err() {
                stop.cancel();
                break;
            }
        }
        // The last handle of the write half goes with `writer`: dropping it shuts the sending
        // side down.
        let mut out = self.out.lock();
        out.direct.socket = None;
        out.direct.writing = false;
    }

    /// Handles one frame from the broker. `Err` ends the connection.
    async fn dispatch(&self, frame: Bytes, batch: &mut Batch) -> Result<(), ()> {
        let Ok(Some((decoded, _))) = decode(&frame, usize::MAX) else {
            tracing::warn!("undecodable frame from the broker; reconnecting");
            return Err(());
        };
        let request_id = decoded.request_id;
        let answer = |reply: Result<Reply, Error>| {
            if let Some(Pending::Request(tx)) = self.pending.lock().remove(&request_id) {
                let _ = tx.send(reply);
            }
        };
        match decoded.frame {
            Frame::Deliver(deliver) => {
                let message = Message {
                    topic: frame.slice_ref(deliver.topic.as_bytes()),
                    sequence: deliver.sequence,
                    headers: if deliver.headers.is_empty() {
                        Bytes::new()
                    } else {
                        frame.slice_ref(deliver.headers)
                    },
                    payload: if deliver.payload.is_empty() {
                        Bytes::new()
                    } else {
                        frame.slice_ref(deliver.payload)
                    },
                    subscription_id: deliver.subscription_id,
                    meta: if deliver.meta.is_empty() {
                        None
                    } else {
                        mycelium_protocol::DeliveryMeta::decode(deliver.meta).ok()
                    },
                };
                if batch.server_id != Some(deliver.subscription_id) {
                    self.deliver_batch(batch).await;
                    let subs = self.subs.lock();
                    let sender = subs
                        .by_server
                        .get(&deliver.subscription_id)
                        .and_then(|local| subs.local.get(local))
                        .map(|sub| sub.sender.clone());
                    drop(subs);
                    let Some(sender) = sender else { return Ok(()) }; // unsubscribed: discard
                    batch.sender = Some(sender);
                    batch.server_id = Some(deliver.subscription_id);
                }
                batch.messages.push(message);
            }
            Frame::SubscribeOk(SubscriptionRef { subscription_id }) => {
                let pending = self.pending.lock().remove(&request_id);
                if let Some(Pending::Subscribe { local, reply }) = pending {
                    let mut subs = self.subs.lock();
                    if let Some(sub) = subs.local.get_mut(&local) {
                        sub.server_id = Some(subscription_id);
                        subs.by_server.insert(subscription_id, local);
                    } else {
                        // Dropped while the SUBSCRIBE was in flight: undo it on the broker.
                        drop(subs);
                        let mut out = self.out.lock();
                        let _ = encode(
                            &mut out.buf,
                            0,
                            &Frame::Unsubscribe(SubscriptionRef { subscription_id }),
                        );
                        drop(out);
                        self.wake_writer.notify_one();
                    }
                    if let Some(tx) = reply {
                        let _ = tx.send(Ok(Reply::Subscribed));
                    }
                }
            }
            Frame::UnsubscribeOk(_) => answer(Ok(Reply::Unsubscribed)),
            Frame::PublishOk(ok) => answer(Ok(Reply::Published(ok))),
            Frame::Pong => answer(Ok(Reply::Pong)),
            Frame::StatsOk(stats) => answer(Ok(Reply::Stats(Box::new(stats)))),
            Frame::AckOk(_) => answer(Ok(Reply::Acked)),
            Frame::AdminOk(json) => answer(Ok(Reply::Admin(json.to_vec()))),
            Frame::Ping => {
                let mut out = self.out.lock();
                let _ = encode(&mut out.buf, request_id, &Frame::Pong);
                drop(out);
                self.wake_writer.notify_one();
            }
            Frame::Error(e) => {
                let error = Error::server(e.code, e.detail, e.message);
                let pending = if request_id == 0 {
                    None
                } else {
                    self.pending.lock().remove(&request_id)
                };
                match pending {
                    Some(Pending::Request(tx)) | Some(Pending::Subscribe { reply: Some(tx), .. }) => {
                        let _ = tx.send(Err(error));
                    }
                    Some(Pending::Subscribe { local, reply: None }) => {
                        tracing::warn!(%error, "re-subscribe refused; dropping the subscription");
                        self.subs.lock().local.remove(&local);
                        let _ = self.errors.send(error);
                    }
                    None => {
                        let _ = self.errors.send(error);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}
