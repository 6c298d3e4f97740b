//! A connection's outbound buffer: where deliveries wait for the connection's writer.
//!
//! Reader tasks of *other* connections append frames here under a short lock (never held across
//! an await); the owning connection's writer takes everything pending in one swap and writes it
//! with one system call. Frames are tracked by length so `drop_oldest` can drop whole deliveries
//! (and never a control frame).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use parking_lot::Mutex;
use tokio::sync::Notify;

/// A frame length with its kind: deliveries may be dropped by `drop_oldest`, control frames not.
#[derive(Debug, Clone, Copy)]
struct FrameMark {
    len: u32,
    droppable: bool,
}

#[derive(Debug)]
struct State {
    buf: BytesMut,
    marks: VecDeque<FrameMark>,
    /// Read batch that last touched this outbound; see [`Outbound::append_delivery`].
    touched_by: u64,
}

/// The outbound side of one connection.
#[derive(Debug)]
pub struct Outbound {
    connection_id: u64,
    state: Mutex<State>,
    /// Bytes taken by the writer and not yet written.
    in_flight: AtomicUsize,
    /// Bytes waiting in `state.buf` (mirrors it for lock-free reads by `least_loaded`).
    queued: AtomicUsize,
    closing: AtomicBool,
    /// The writer waits on this for work.
    wake_writer: Notify,
    /// Blocked publishers wait on this for space.
    drained: Notify,
    /// The connection's tasks wait on this to stop.
    close_signal: Notify,
    delivered: AtomicU64,
    dropped: AtomicU64,
}

/// What happened to a delivery offered to a full outbound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Append {
    /// Appended, after dropping `dropped_older` older deliveries (`drop_oldest`; else 0).
    Done {
        /// Older deliveries dropped to make room.
        dropped_older: u64,
    },
    /// Not appended even after dropping `dropped_older` older deliveries: only control frames or
    /// bytes already being written were left (`drop_oldest`).
    DroppedNew {
        /// Older deliveries dropped before giving up.
        dropped_older: u64,
    },
    /// Not appended: no room (policies other than `drop_oldest`).
    Full,
    /// Not appended: the connection is closing.
    Closed,
}

impl Outbound {
    /// A new, empty outbound for connection `connection_id`.
    pub fn new(connection_id: u64) -> Arc<Outbound> {
        Arc::new(Outbound {
            connection_id,
            state: Mutex::new(State {
                buf: BytesMut::with_capacity(4096),
                marks: VecDeque::new(),
                touched_by: 0,
            }),
            in_flight: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            wake_writer: Notify::new(),
            drained: Notify::new(),
            close_signal: Notify::new(),
            delivered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        })
    }

    /// The connection this outbound belongs to.
    pub fn connection_id(&self) -> u64 {
        self.connection_id
    }

    /// Bytes waiting or being written.
    pub fn pending_bytes(&self) -> usize {
        self.queued.load(Ordering::Relaxed) + self.in_flight.load(Ordering::Relaxed)
    }

    /// Whether the connection is closing; nothing more is appended.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Deliveries appended, in total.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Deliveries dropped by `drop_oldest`, in total.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Appends a control frame (replies, errors): never refused for space, never dropped.
    /// Returns `false` if the connection is closing.
    pub fn append_control(&self, write: impl FnOnce(&mut BytesMut)) -> bool {
        if self.is_closing() {
            return false;
        }
        self.push(false, write);
        self.wake_writer.notify_one();
        true
    }

    /// Appends a control frame even while closing (the last ERROR before a close).
    pub fn append_final(&self, write: impl FnOnce(&mut BytesMut)) {
        self.push(false, write);
        self.wake_writer.notify_one();
    }

    fn push(&self, droppable: bool, write: impl FnOnce(&mut BytesMut)) {
        let mut state = self.state.lock();
        let before = state.buf.len();
        write(&mut state.buf);
        let len = state.buf.len() - before;
        state.marks.push_back(FrameMark {
            len: len as u32,
            droppable,
        });
        self.queued.fetch_add(len, Ordering::Relaxed);
    }

    /// Appends a delivery of `frame_len` bytes written by `write`, if it fits under `limit` bytes
    /// (or, with `drop_oldest`, after dropping older deliveries). `batch` identifies the caller's
    /// read batch: the first append of a batch returns `true` in the second field, meaning "add me to
    /// the batch's wake list", so each writer is woken once per batch, not once per message.
    #[inline]
    pub fn append_delivery(
        &self,
        frame_len: usize,
        limit: usize,
        drop_oldest: bool,
        batch: u64,
        write: impl FnOnce(&mut BytesMut),
    ) -> (Append, bool) {
        if self.is_closing() {
            return (Append::Closed, false);
        }
        let mut state = self.state.lock();
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        let mut dropped = 0u64;
        if state.buf.len() + in_flight + frame_len > limit {
            if !drop_oldest {
                return (Append::Full, false);
            }
            // Drop whole deliveries from the front until the new one fits; stop at a control frame.
            while state.buf.len() + in_flight + frame_len > limit {
                match state.marks.front() {
                    Some(mark) if mark.droppable => {
                        let len = mark.len as usize;
                        state.marks.pop_front();
                        let _ = state.buf.split_to(len);
                        self.queued.fetch_sub(len, Ordering::Relaxed);
                        dropped += 1;
                    }
                    _ => break,
                }
            }
            if state.buf.len() + in_flight + frame_len > limit {
                // Only control frames or in-flight bytes left: the new delivery is dropped too.
                self.dropped.fetch_add(dropped + 1, Ordering::Relaxed);
                return (
                    Append::DroppedNew {
                        dropped_older: dropped,
                    },
                    false,
                );
            }
            self.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
        let before = state.buf.len();
        write(&mut state.buf);
        let len = state.buf.len() - before;
        state.marks.push_back(FrameMark {
            len: len as u32,
            droppable: true,
        });
        self.queued.fetch_add(len, Ordering::Relaxed);
        let first_in_batch = state.touched_by != batch;
        state.touched_by = batch;
        drop(state);
        self.delivered.fetch_add(1, Ordering::Relaxed);
        (
            Append::Done {
                dropped_older: dropped,
            },
            first_in_batch,
        )
    }

    /// Wakes the writer (once per read batch, by the reader that touched this outbound).
    #[inline]
    pub fn wake(&self) {
        self.wake_writer.notify_one();
    }

    /// Whether a delivery of `frame_len` bytes would fit under `limit` now.
    pub fn has_room(&self, frame_len: usize, limit: usize) -> bool {
        self.pending_bytes() + frame_len <= limit
    }

    /// Waits until a delivery of `frame_len` bytes fits under `limit`, or `timeout` passes, or the
    /// connection closes. Returns whether it fits.
    pub async fn wait_for_room(&self, frame_len: usize, limit: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.is_closing() {
                return false;
            }
            if self.has_room(frame_len, limit) {
                return true;
            }
            if tokio::time::timeout_at(deadline, drained).await.is_err() {
                return self.has_room(frame_len, limit);
            }
        }
    }

    /// Writer side: waits until there is something to write (or the connection closes).
    pub async fn wait_for_work(&self) {
        self.wake_writer.notified().await;
    }

    /// Writer side: swaps everything pending into `spare` (which must be empty) and returns how
    /// many bytes it took. Call [`Outbound::written`] after writing them.
    pub fn take(&self, spare: &mut BytesMut) -> usize {
        debug_assert!(spare.is_empty());
        let mut state = self.state.lock();
        std::mem::swap(&mut state.buf, spare);
        state.marks.clear();
        let len = spare.len();
        self.in_flight.fetch_add(len, Ordering::Relaxed);
        self.queued.fetch_sub(len, Ordering::Relaxed);
        len
    }

    /// Writer side: `len` bytes taken by [`Outbound::take`] have been written.
    pub fn written(&self, len: usize) {
        self.in_flight.fetch_sub(len, Ordering::Relaxed);
        self.drained.notify_waiters();
    }

    /// Marks the connection as closing: nothing more is appended, waiters are released, and the
    /// connection's tasks are told to stop once the writer has flushed what is pending.
    pub fn close(&self) {
        self.closing.store(true, Ordering::Release);
        self.drained.notify_waiters();
        self.wake_writer.notify_one();
        self.close_signal.notify_waiters();
    }

    /// Resolves when [`Outbound::close`] is called (check [`Outbound::is_closing`] first: only
    /// calls made after this future is created are seen).
    pub async fn closed(&self) {
        let signal = self.close_signal.notified();
        tokio::pin!(signal);
        signal.as_mut().enable();
        if self.is_closing() {
            return;
        }
        signal.await;
    }

    /// Bytes queued and not yet taken by the writer.
    pub fn queued_bytes(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}
