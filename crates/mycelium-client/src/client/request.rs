//! Requests and their answers: a request id, a pending entry the reader completes, and a wait
//! that times out, or forgets the request when given up.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::oneshot;

use super::{Confirmed, Pending, Reply, Sending, Shared};
use crate::{Error, ErrorKind};

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
            // A request given up before it was waited for is still sent.
            shared.release();
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
            Poll::Pending => shared.release(),
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

impl PendingConfirm {
    /// Waits for the answer to the publish sent as request `id`.
    pub(super) fn new(shared: &Arc<Shared>, id: u32, rx: oneshot::Receiver<Result<Reply, Error>>) -> Self {
        PendingConfirm {
            shared: Arc::clone(shared),
            wait: ReplyWait::new(id, rx, shared.options.request_timeout),
        }
    }
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
pub(super) fn confirmed(reply: Reply) -> Result<Confirmed, Error> {
    match reply {
        Reply::Published(ok) => Ok(Confirmed {
            sequence: ok.sequence,
            id: ok.message_id,
            duplicate: ok.duplicate,
        }),
        _ => Err(Error::new(ErrorKind::Protocol, "unexpected reply to PUBLISH")),
    }
}

impl Shared {
    /// Nobody waits for the answer to request `id` any more. A plain request is forgotten (a
    /// late answer is then ignored); a SUBSCRIBE stays pending, so that a late SUBSCRIBE_OK for
    /// a subscription nobody holds is undone on the broker (see the dispatcher).
    fn abandon(&self, id: u32) {
        let mut pending = self.pending.lock();
        if matches!(pending.get(&id), Some(Pending::Request(_))) {
            pending.remove(&id);
        }
    }

    pub(super) async fn request(
        &self,
        size_hint: usize,
        write: impl Fn(&mut BytesMut, u32) -> Result<(), mycelium_protocol::ProtocolError>,
    ) -> Result<Reply, Error> {
        let (id, rx) = self.request_start(size_hint, false, write).await?;
        self.await_reply(id, rx).await
    }

    /// Sends a request; its answer comes through the returned receiver (see [`ReplyWait`]).
    /// `pipelined`: the caller may hold the answer's future without waiting on it.
    pub(super) async fn request_start(
        &self,
        size_hint: usize,
        pipelined: bool,
        write: impl Fn(&mut BytesMut, u32) -> Result<(), mycelium_protocol::ProtocolError>,
    ) -> Result<(u32, oneshot::Receiver<Result<Reply, Error>>), Error> {
        if !self.out.lock().connected {
            self.check_usable()?;
            return Err(Error::new(
                ErrorKind::Disconnected,
                format!("not connected to {}", self.endpoint()),
            ));
        }
        let id = self.request_id();
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(id, Pending::Request(tx));
        let sending = if pipelined {
            Sending::Pipelined
        } else {
            Sending::Request
        };
        if let Err(error) = self.send_as(sending, size_hint, |buf| write(buf, id)).await {
            self.pending.lock().remove(&id);
            return Err(error);
        }
        Ok((id, rx))
    }

    pub(super) async fn await_reply(
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

    pub(super) fn request_id(&self) -> u32 {
        loop {
            let id = self.next_request.fetch_add(1, Ordering::Relaxed);
            if id != 0 {
                return id;
            }
        }
    }
}
