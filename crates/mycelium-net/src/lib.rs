//! The Unix stream socket both ends of the native protocol use, watched by the reactor for reading
//! only.
//!
//! On an `AF_UNIX` stream, every read by the peer frees buffers charged to the sending socket, and
//! the kernel then reports "writable" to whatever watches the sending socket. It does so on each
//! freed buffer (`unix_write_space`), not only after a write found the buffer full, as TCP does. A
//! socket watched for both directions, as tokio's `UnixStream` is, therefore wakes its process's
//! reactor once per read of the peer: at 10,000 messages a second that is one wasted wake-up per
//! message on each side, each a cross-CPU interrupt, and on a VM an exit to the host.
//!
//! [`split`] registers the socket for reading only. Writes go straight to the socket
//! ([`WriteHalf::try_write`]); a write that finds the buffer full waits on a second descriptor of
//! the same socket, registered for writing for that wait only ([`WriteHalf::writable`]).

pub mod admission;

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream as StdStream;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, Interest, ReadBuf};

/// Bytes the first read of a connection asks for. A read that fills its window doubles the next
/// one (up to [`WINDOW_MAX`]); a shorter one sets it to twice what came. The window is what a read
/// zeroes before the kernel fills it (reading into uninitialised memory would take `unsafe`), so
/// a trickle of small messages costs a small clear, and a stream of data reads in large pieces.
const WINDOW_MIN: usize = 4 * 1024;
/// The largest read.
const WINDOW_MAX: usize = 256 * 1024;

/// Splits a connected stream into halves that share one registration (reading only).
///
/// # Errors
/// The stream could not be taken from tokio's reactor or registered again.
pub fn split(stream: tokio::net::UnixStream) -> io::Result<(ReadHalf, WriteHalf)> {
    let stream = stream.into_std()?;
    stream.set_nonblocking(true)?;
    let fd = Arc::new(register(stream, Interest::READABLE)?);
    let read = ReadHalf {
        fd: Arc::clone(&fd),
        window: WINDOW_MIN,
    };
    Ok((read, WriteHalf { fd }))
}

/// Registers `stream` with the current runtime's reactor for `interest`.
#[allow(unsafe_code)]
fn register(stream: StdStream, interest: Interest) -> io::Result<AsyncFd<StdStream>> {
    // SAFETY: `register_with_interest` asks that the descriptor stay open and name the same socket
    // for as long as the `AsyncFd` lives. A `std` stream owns its descriptor, closes it only when
    // dropped (which only the `AsyncFd` can do, as its owner), and `as_raw_fd` always returns it.
    unsafe { AsyncFd::register_with_interest(stream, interest) }.map_err(|error| error.into_parts().1)
}

/// The reading half (an [`AsyncRead`]).
#[derive(Debug)]
pub struct ReadHalf {
    fd: Arc<AsyncFd<StdStream>>,
    window: usize,
}

impl AsyncRead for ReadHalf {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let want = buf.remaining().min(this.window);
        if want == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            let mut guard = ready!(this.fd.poll_read_ready(cx))?;
            let target = buf.initialize_unfilled_to(want);
            match guard.try_io(|fd| fd.get_ref().read(target)) {
                Ok(Ok(read)) => {
                    if read == want {
                        this.window = (this.window * 2).min(WINDOW_MAX);
                    } else {
                        this.window = (read * 2).clamp(WINDOW_MIN, WINDOW_MAX);
                        if read > 0 {
                            // A short read emptied the socket: wait for the next edge rather than
                            // reading again only to hear "would block" (what tokio's own streams do).
                            guard.clear_ready();
                        }
                    }
                    buf.advance(read);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(error)) => return Poll::Ready(Err(error)),
                Err(_would_block) => {}
            }
        }
    }
}

/// The writing half. Dropping it shuts the socket's sending side down (the peer reads the end of
/// the stream), as dropping tokio's write half does.
#[derive(Debug)]
pub struct WriteHalf {
    fd: Arc<AsyncFd<StdStream>>,
}

impl WriteHalf {
    /// Writes what the socket takes now, without waiting (`WouldBlock` when it takes nothing).
    ///
    /// # Errors
    /// As `write(2)` on a non-blocking socket.
    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        self.fd.get_ref().write(buf)
    }

    /// Resolves when the socket may take more bytes: registers a second descriptor of the socket
    /// for writing, waits for it, and drops it. The registration reports a socket that is already
    /// writable at once, so room made between a refused write and this call is not missed.
    ///
    /// # Errors
    /// The descriptor could not be duplicated or registered.
    pub async fn writable(&self) -> io::Result<()> {
        let watch = register(self.fd.get_ref().try_clone()?, Interest::WRITABLE)?;
        let _ready = watch.writable().await?;
        Ok(())
    }
}

impl Drop for WriteHalf {
    fn drop(&mut self) {
        let _ = self.fd.get_ref().shutdown(Shutdown::Write);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;

    fn pair() -> ((ReadHalf, WriteHalf), tokio::net::UnixStream) {
        let (ours, theirs) = tokio::net::UnixStream::pair().unwrap();
        (split(ours).unwrap(), theirs)
    }

    /// The kernel's name of the socket behind descriptor `fd` (`socket:[inode]`).
    fn socket_name(fd: i32) -> String {
        std::fs::read_link(format!("/proc/self/fd/{fd}"))
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    /// Descriptors of this process open on the socket named `name`.
    fn descriptors_of(name: &str) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter(|entry| std::fs::read_link(entry.path()).is_ok_and(|t| t.to_string_lossy() == name))
            .count()
    }

    /// The events the process's epoll instances watch on the socket behind descriptor `fd` (from
    /// /proc's fdinfo, matched by the socket's inode: tests run side by side in one process).
    fn watched_events(fd: i32) -> Vec<u32> {
        let name = socket_name(fd);
        let inode = name
            .trim_start_matches("socket:[")
            .trim_end_matches(']')
            .to_owned();
        // One instance can sit behind several descriptors: each registration (its events and its
        // token) counts once.
        let mut lines = std::collections::BTreeSet::new();
        for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
            let is_epoll = std::fs::read_link(entry.path())
                .is_ok_and(|target| target.to_string_lossy().contains("eventpoll"));
            if !is_epoll {
                continue;
            }
            let info_path = format!("/proc/self/fdinfo/{}", entry.file_name().to_string_lossy());
            let Ok(info) = std::fs::read_to_string(info_path) else {
                continue;
            };
            for line in info.lines().filter(|l| l.starts_with("tfd:")) {
                let field = |key: &str| {
                    line.split(key)
                        .nth(1)
                        .and_then(|rest| rest.split_whitespace().next())
                        .map(str::to_owned)
                };
                let target = field("ino:").and_then(|hex| u64::from_str_radix(&hex, 16).ok());
                if target.is_some_and(|ino| ino.to_string() == inode) {
                    lines.insert((field("events:").unwrap(), field("data:").unwrap()));
                }
            }
        }
        lines
            .iter()
            .map(|(events, _)| u32::from_str_radix(events, 16).unwrap())
            .collect()
    }

    const EPOLLOUT: u32 = 0x4;
    const EPOLLIN: u32 = 0x1;

    #[tokio::test]
    async fn the_socket_is_watched_for_reading_only() {
        let ((read, _write), _peer) = pair();
        let events = watched_events(read.fd.as_raw_fd());
        assert_eq!(events.len(), 1, "registered once: {events:?}");
        assert_ne!(events[0] & EPOLLIN, 0, "watched for reading");
        assert_eq!(events[0] & EPOLLOUT, 0, "not watched for writing");
        // What tokio's own stream does, and what this crate exists to avoid.
        let (tokio_stream, _other) = tokio::net::UnixStream::pair().unwrap();
        let events = watched_events(tokio_stream.as_raw_fd());
        assert_ne!(events[0] & EPOLLOUT, 0);
    }

    #[tokio::test]
    async fn bytes_go_both_ways_and_dropping_the_write_half_ends_the_peers_stream() {
        let ((mut read, write), mut peer) = pair();
        assert_eq!(write.try_write(b"hello").unwrap(), 5);
        let mut got = [0u8; 5];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        tokio::io::AsyncWriteExt::write_all(&mut peer, b"world")
            .await
            .unwrap();
        let mut buf = Vec::new();
        while buf.len() < 5 {
            assert_ne!(read.read_buf(&mut buf).await.unwrap(), 0);
        }
        assert_eq!(buf, b"world");
        drop(write);
        let mut rest = Vec::new();
        let end = tokio::time::timeout(Duration::from_secs(10), peer.read_to_end(&mut rest)).await;
        assert_eq!(end.expect("end of stream").unwrap(), 0);
        drop(peer);
        assert_eq!(
            read.read_buf(&mut buf).await.unwrap(),
            0,
            "the peer's close reads as the end"
        );
    }

    #[tokio::test]
    async fn a_full_socket_waits_for_the_peer_to_read_and_leaves_no_descriptor_behind() {
        let ((_read, write), mut peer) = pair();
        let chunk = vec![7u8; 64 * 1024];
        let mut queued = 0usize;
        loop {
            match write.try_write(&chunk) {
                Ok(n) => queued += n,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) => panic!("{error}"),
            }
        }
        let name = socket_name(write.fd.as_raw_fd());
        assert_eq!(descriptors_of(&name), 1);
        let writer = tokio::spawn(async move {
            write.writable().await.unwrap();
            assert_eq!(
                write.try_write(b"after the wait").unwrap(),
                14,
                "room once writable"
            );
            write
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!writer.is_finished(), "no room until the peer reads");
        assert_eq!(descriptors_of(&name), 2, "a second descriptor waits for room");
        let mut drained = vec![0u8; queued + 14];
        tokio::time::timeout(Duration::from_secs(10), peer.read_exact(&mut drained))
            .await
            .expect("every byte arrives")
            .unwrap();
        assert_eq!(&drained[queued..], b"after the wait");
        let write = writer.await.unwrap();
        assert_eq!(descriptors_of(&name), 1, "the write watch was dropped");
        drop(write);
    }

    #[tokio::test]
    async fn reads_grow_with_a_stream_of_data_and_shrink_with_a_trickle() {
        let ((mut read, _write), mut peer) = pair();
        let data = vec![1u8; 1 << 20];
        let sender = tokio::spawn(async move {
            tokio::io::AsyncWriteExt::write_all(&mut peer, &data)
                .await
                .unwrap();
            peer
        });
        let mut buf = Vec::with_capacity(2 << 20);
        let mut largest = 0;
        while buf.len() < 1 << 20 {
            let before = buf.len();
            read.read_buf(&mut buf).await.unwrap();
            largest = largest.max(buf.len() - before);
        }
        assert!(
            largest > WINDOW_MIN,
            "a stream reads in pieces larger than the first ({largest})"
        );
        assert!(largest <= WINDOW_MAX);
        let mut peer = sender.await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut peer, b"x")
            .await
            .unwrap();
        let mut small = Vec::with_capacity(1 << 20);
        read.read_buf(&mut small).await.unwrap();
        assert_eq!(small, b"x");
        assert_eq!(read.window, WINDOW_MIN, "one byte brings the window back down");
    }
}
