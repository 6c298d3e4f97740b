//! The write half of the client's connection, and the inline write.
//!
//! A publish that finds the buffer empty and the writer task idle writes its frame straight to the
//! socket from the caller's task (non-blocking; what the socket does not take goes to the writer
//! task), instead of waking the writer task: on two shared cores that wake-up is most of a lone
//! message's latency. So that a fast publisher still gets one system call per batch rather than per
//! message, an inline write happens at most once per `ClientOptions::inline_write_gap`; in
//! between, frames gather for the writer task as before.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Buf;

use super::Out;

/// The connection's write half (Unix socket or TCP).
#[derive(Debug)]
pub(super) enum Socket {
    Unix(mycelium_net::WriteHalf),
    Tcp(tokio::net::tcp::OwnedWriteHalf),
}

impl Socket {
    fn try_write(&self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Socket::Unix(w) => w.try_write(buf),
            Socket::Tcp(w) => w.try_write(buf),
        }
    }

    async fn writable(&self) -> std::io::Result<()> {
        match self {
            Socket::Unix(w) => w.writable().await,
            Socket::Tcp(w) => w.writable().await,
        }
    }

    /// Writes all of `buf`, waiting for the socket as needed.
    pub(super) async fn write_all(&self, mut buf: &[u8]) -> std::io::Result<()> {
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
    /// No inline writes until the writer task next takes the buffer (see [`answers_arrived`]).
    pub(super) held: bool,
}

/// One read brought answers to several requests at once: their callers are pipelining (a
/// publisher refilling its window of confirmed publishes) and are about to send a burst. Frames
/// go through the writer task until it next takes the buffer, so the burst leaves in one write
/// rather than its first frame alone: the broker would store and confirm that frame as a group of
/// its own (one more fsync), and every later round would split the same way. A lone answer (a
/// request/reply caller) keeps inline writes.
pub(super) fn answers_arrived(out: &mut Out) {
    out.direct.held = true;
}

/// The writer task swapped the buffer out and is about to write `took` bytes: nobody else writes
/// until its next swap, and a hold ([`answers_arrived`]) ends with a write of the writer's.
pub(super) fn writer_took(out: &mut Out, took: usize) {
    out.direct.writing = took > 0;
    out.direct.held &= took == 0;
}

/// Writes `out.buf` inline if the writer task is idle and the last inline write is at least `gap`
/// old; returns whether nothing is left for the writer task.
pub(super) fn write_inline(out: &mut Out, gap: Duration) -> bool {
    let direct = &mut out.direct;
    let Some(socket) = &direct.socket else {
        return false;
    };
    if direct.held {
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
    async fn after_a_group_of_answers_frames_wait_for_the_writer_task_once() {
        let (mut out, mut peer) = connected().await;
        answers_arrived(&mut out);
        out.buf.extend_from_slice(b"burst-1");
        assert!(
            !write_inline(&mut out, Duration::ZERO),
            "held: the burst's first frame is left for the writer task"
        );
        out.buf.extend_from_slice(b"burst-2");
        writer_took(&mut out, 0);
        assert!(
            !write_inline(&mut out, Duration::ZERO),
            "a wake with nothing taken keeps the hold"
        );
        // The writer task takes the whole burst and writes it; then inline writes are back.
        let burst = std::mem::take(&mut out.buf);
        writer_took(&mut out, burst.len());
        assert_eq!(&burst[..], b"burst-1burst-2");
        writer_took(&mut out, 0);
        out.buf.extend_from_slice(b"lone");
        assert!(write_inline(&mut out, Duration::ZERO), "hold over: inline again");
        assert_eq!(received(&mut peer).await, b"lone");
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
