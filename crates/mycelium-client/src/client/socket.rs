//! The write half of the client's connection, and the inline write.
//!
//! A publish that finds the buffer empty and the writer task idle writes its frame straight to the
//! socket from the caller's task (non-blocking; what the socket does not take goes to the writer
//! task), instead of waking the writer task: on two shared cores that wake-up is most of a lone
//! message's latency. So that a fast publisher still gets one system call per batch rather than per
//! message, an inline write happens at most once per `ClientOptions::inline_write_gap`; in
//! between, frames gather for the writer task as before. Requests (confirmed publishes, pings,
//! subscribes) are deferred instead: they leave when their caller first waits for an answer, so a
//! window of pipelined publishes goes out in one write ([`defer`], [`release`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Buf;

use super::Out;

/// The connection's write half (Unix socket or TCP).
#[derive(Debug)]
pub(super) enum Socket {
    Unix(mycelium_net::WriteHalf),
    Tcp(tokio::net::tcp::OwnedWriteHalf),
    /// Written by the writer task only: a TLS record cannot be written halfway from another
    /// task, so inline writes are off (`try_write` would block).
    Tls(tokio::sync::Mutex<tokio::io::WriteHalf<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>>),
}

impl Socket {
    fn try_write(&self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Socket::Unix(w) => w.try_write(buf),
            Socket::Tcp(w) => w.try_write(buf),
            Socket::Tls(_) => Err(std::io::ErrorKind::WouldBlock.into()),
        }
    }

    async fn writable(&self) -> std::io::Result<()> {
        match self {
            Socket::Unix(w) => w.writable().await,
            Socket::Tcp(w) => w.writable().await,
            Socket::Tls(_) => Ok(()),
        }
    }

    /// Writes all of `buf`, waiting for the socket as needed.
    pub(super) async fn write_all(&self, mut buf: &[u8]) -> std::io::Result<()> {
        if let Socket::Tls(write) = self {
            use tokio::io::AsyncWriteExt;
            let mut write = write.lock().await;
            write.write_all(buf).await?;
            return write.flush().await;
        }
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

/// What the inline write needs to know of the buffer's state.
#[derive(Debug, Default)]
pub(super) struct Direct {
    /// The connected socket (none while disconnected).
    pub(super) socket: Option<Arc<Socket>>,
    /// The writer task is writing bytes it took: nobody else writes until it is done.
    pub(super) writing: bool,
    /// When the last inline write happened.
    last: Option<Instant>,
    /// The buffer holds requests whose callers have not waited for an answer yet: nothing is
    /// written until one does (see [`release`]).
    pub(super) deferred: bool,
    /// The reader is handing out the answers of one read: a caller that waits meanwhile is
    /// about to get its answer and go on with its burst, so its release waits for the end.
    pub(super) answering: bool,
    /// A release came while `answering`: the reader releases when it is done.
    pub(super) release_wanted: bool,
    /// The writer task holds the current deferral (see [`defer`]): a release must wake it.
    pub(super) backstop: bool,
}

/// A request was appended ([`Shared::request_start`](super::Shared)): its caller will wait for
/// the answer, and until it does, more requests may follow (a publisher filling its window of
/// confirmed publishes). The frames wait in the buffer so that the burst leaves in one write
/// when the caller first waits ([`release`]): written as they came, the burst's first frames
/// went alone, the broker stored and confirmed them as a group of their own (one more fsync),
/// and every later round split the same way.
///
/// `backstop`: the caller may hold the answer's future without ever waiting (a pipelined
/// publish), so the writer task is woken to hold the deferral at most
/// `ClientOptions::pipeline_hold_max`; a caller that
/// waits at once (`Client::request`) needs no such wake. Returns whether the writer task must be
/// woken.
pub(super) fn defer(out: &mut Out, was_empty: bool, backstop: bool) -> bool {
    if was_empty {
        out.direct.deferred = true;
    }
    if backstop && out.direct.deferred && !out.direct.backstop {
        out.direct.backstop = true;
        return true;
    }
    false
}

/// A caller is about to wait for an answer (or stopped waiting): deferred requests go now,
/// inline from the caller's thread if the writer task is idle (no wake-up to wait for, whatever
/// `inline_write_gap` says: the caller has nothing else to do), else by the writer task. Returns
/// whether the writer task must be woken (it holds the deferral, or has what is left to write).
pub(super) fn release(out: &mut Out) -> bool {
    if !out.direct.deferred {
        return false;
    }
    if out.direct.answering {
        out.direct.release_wanted = true;
        return false;
    }
    out.direct.deferred = false;
    let direct = &mut out.direct;
    if !direct.writing
        && !out.buf.is_empty()
        && let Some(socket) = &direct.socket
    {
        direct.last = Some(Instant::now());
        if let Ok(written) = socket.try_write(&out.buf) {
            out.buf.advance(written);
        }
    }
    // The writer task is told if it holds the deferral, or if something is left and it is not
    // already writing (it takes what is left when done).
    out.direct.backstop || (!out.buf.is_empty() && !out.direct.writing)
}

/// The reader starts handing out the answers of one read ([`Direct::answering`]).
pub(super) fn answering(out: &mut Out) {
    out.direct.answering = true;
}

/// The reader has handed out the answers of one read: a release asked for meanwhile happens now.
/// Returns whether the writer task must be woken.
pub(super) fn answered(out: &mut Out) -> bool {
    out.direct.answering = false;
    std::mem::take(&mut out.direct.release_wanted) && release(out)
}

/// The writer task swapped the buffer out and is about to write `took` bytes: nobody else writes
/// until its next swap.
pub(super) fn writer_took(out: &mut Out, took: usize) {
    out.direct.writing = took > 0;
    out.direct.backstop = false;
}

/// Writes `out.buf` inline if the writer task is idle and the last inline write is at least `gap`
/// old; returns whether nothing is left for the writer task.
pub(super) fn write_inline(out: &mut Out, gap: Duration) -> bool {
    let direct = &mut out.direct;
    let Some(socket) = &direct.socket else {
        return false;
    };
    if direct.deferred {
        return false;
    }
    if direct.writing || out.buf.is_empty() {
        return out.buf.is_empty() && !direct.writing;
    }
    let now = Instant::now();
    if direct.last.is_some_and(|last| now.duration_since(last) < gap) {
        return false;
    }
    direct.last = Some(now);
    match socket.try_write(&out.buf) {
        Ok(written) => {
            out.buf.advance(written);
            out.buf.is_empty()
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    async fn connected() -> (Out, tokio::net::UnixStream) {
        let (ours, theirs) = tokio::net::UnixStream::pair().unwrap();
        let (_read, write) = mycelium_net::split(ours).unwrap();
        let out = Out {
            buf: BytesMut::new(),
            connected: true,
            direct: Direct {
                socket: Some(Arc::new(Socket::Unix(write))),
                ..Direct::default()
            },
        };
        (out, theirs)
    }

    async fn received(peer: &mut tokio::net::UnixStream) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), peer.read(&mut buf))
            .await
            .expect("bytes arrive")
            .unwrap();
        buf[..n].to_vec()
    }

    #[tokio::test]
    async fn an_idle_writer_lets_the_caller_write_but_not_twice_within_the_gap() {
        let (mut out, mut peer) = connected().await;
        let gap = Duration::from_secs(3600);
        out.buf.extend_from_slice(b"first");
        assert!(write_inline(&mut out, gap), "written inline");
        assert!(out.buf.is_empty());
        out.buf.extend_from_slice(b"second");
        assert!(
            !write_inline(&mut out, gap),
            "within the gap: left for the writer task"
        );
        assert_eq!(&out.buf[..], b"second");
        assert_eq!(received(&mut peer).await, b"first");
    }

    #[tokio::test]
    async fn deferred_requests_leave_together_when_their_caller_waits() {
        let (mut out, mut peer) = connected().await;
        out.buf.extend_from_slice(b"request-1");
        assert!(
            defer(&mut out, true, true),
            "a pipelined deferral starts: the writer task holds it"
        );
        out.buf.extend_from_slice(b"request-2");
        assert!(
            !defer(&mut out, false, true),
            "the same burst: nothing more to wake"
        );
        assert!(
            !write_inline(&mut out, Duration::ZERO),
            "a plain inline write does not jump the deferral"
        );
        assert_eq!(&out.buf[..], b"request-1request-2");
        assert!(release(&mut out), "released: the writer task is told");
        assert!(out.buf.is_empty(), "the caller wrote the burst itself");
        assert_eq!(received(&mut peer).await, b"request-1request-2");
        assert!(!release(&mut out), "nothing deferred: nothing to do");
    }

    #[tokio::test]
    async fn a_release_while_answers_are_handed_out_waits_for_the_last() {
        let (mut out, mut peer) = connected().await;
        out.buf.extend_from_slice(b"first-half");
        defer(&mut out, true, true);
        answering(&mut out);
        assert!(!release(&mut out), "the caller's answer is among those coming");
        assert_eq!(&out.buf[..], b"first-half");
        out.buf.extend_from_slice(b"+second-half");
        assert!(
            answered(&mut out),
            "the reader releases once done (and tells the writer task)"
        );
        assert_eq!(received(&mut peer).await, b"first-half+second-half");
        answering(&mut out);
        assert!(!answered(&mut out), "no release asked for: nothing to do");
    }

    #[tokio::test]
    async fn a_request_whose_caller_waits_at_once_costs_no_wake_up() {
        let (mut out, mut peer) = connected().await;
        out.buf.extend_from_slice(b"ping");
        assert!(
            !defer(&mut out, true, false),
            "no backstop: the writer task sleeps on"
        );
        assert!(!release(&mut out), "written inline, nothing for the writer task");
        assert_eq!(received(&mut peer).await, b"ping");
    }

    #[tokio::test]
    async fn a_release_while_the_writer_task_writes_leaves_the_burst_to_it() {
        let (mut out, _peer) = connected().await;
        out.buf.extend_from_slice(b"request");
        defer(&mut out, true, false);
        out.direct.writing = true;
        assert!(
            !release(&mut out),
            "the writer task, busy writing, takes it when done"
        );
        assert_eq!(&out.buf[..], b"request", "not written out of order");
        assert!(!out.direct.deferred);
    }

    #[tokio::test]
    async fn nothing_inline_while_the_writer_task_writes_or_when_disconnected() {
        let (mut out, mut peer) = connected().await;
        out.direct.writing = true;
        out.buf.extend_from_slice(b"queued");
        assert!(!write_inline(&mut out, Duration::ZERO));
        assert_eq!(&out.buf[..], b"queued");
        out.direct.writing = false;
        assert!(
            write_inline(&mut out, Duration::ZERO),
            "idle again, no gap: inline"
        );
        assert_eq!(received(&mut peer).await, b"queued");
        out.direct.socket = None;
        out.buf.extend_from_slice(b"offline");
        assert!(!write_inline(&mut out, Duration::ZERO));
        assert_eq!(&out.buf[..], b"offline");
    }
}
