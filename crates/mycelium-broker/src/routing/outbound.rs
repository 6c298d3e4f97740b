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

use bytes::{Buf, BytesMut};
use parking_lot::Mutex;
use tokio::sync::Notify;

/// A connection's socket, written without waiting: what an inline flush needs of it.
pub trait DirectWrite: Send + Sync {
    /// Writes what the socket takes now; `WouldBlock` (or any error) leaves the rest to the
    /// connection's writer task.
    ///
    /// # Errors
    /// The socket's.
    fn try_write(&self, buf: &[u8]) -> std::io::Result<usize>;
}

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
    /// The socket, for inline flushes (none: always wake the writer task).
    direct: Option<Arc<dyn DirectWrite>>,
    /// An inline flush writes at most this many pending bytes; more is left to the writer task,
    /// which runs beside the reader (large fanout batches gain from the second core).
    inline_bytes_max: usize,
}

impl State {
    /// Appends one frame written by `write`, with its mark; returns its length.
    fn push_frame(&mut self, droppable: bool, write: impl FnOnce(&mut BytesMut)) -> usize {
        let before = self.buf.len();
        write(&mut self.buf);
        let len = self.buf.len() - before;
        self.marks.push_back(FrameMark {
            len: len as u32,
            droppable,
        });
        len
    }
}

impl std::fmt::Debug for dyn DirectWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DirectWrite")
    }
}

impl State {
    /// Drops the first `written` bytes (sent by an inline flush) and their marks; a frame sent in
    /// part can no longer be dropped.
    fn consume(&mut self, written: usize) {
        self.buf.advance(written);
        let mut left = written;
        while left > 0 {
            let Some(mark) = self.marks.front_mut() else { break };
            let len = mark.len as usize;
            if len <= left {
                left -= len;
                self.marks.pop_front();
            } else {
                mark.len = (len - left) as u32;
                mark.droppable = false;
                left = 0;
            }
        }
    }
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
    /// Bytes this connection may have pending (queued and in flight) at once, every kind of frame
    /// counted: deliveries beyond it meet their topic's overflow policy, and a reply or error
    /// beyond it closes the connection (a client that asks and never reads).
    budget: AtomicUsize,
    /// Closed for going over `budget`.
    over_budget: AtomicBool,
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
                direct: None,
                inline_bytes_max: 0,
            }),
            in_flight: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            wake_writer: Notify::new(),
            drained: Notify::new(),
            close_signal: Notify::new(),
            delivered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            budget: AtomicUsize::new(usize::MAX),
            over_budget: AtomicBool::new(false),
        })
    }

    /// Sets the bytes this connection may have pending at once (see [`Outbound::budget`]).
    pub fn set_budget(&self, bytes: usize) {
        self.budget.store(bytes, Ordering::Relaxed);
    }

    /// The bytes this connection may have pending at once, every kind of frame counted.
    pub fn budget(&self) -> usize {
        self.budget.load(Ordering::Relaxed)
    }

    /// Whether the connection was closed for going over its budget.
    pub fn went_over_budget(&self) -> bool {
        self.over_budget.load(Ordering::Relaxed)
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
        let appended = self.append_control_quiet(write);
        if appended {
            self.wake_writer.notify_one();
        }
        appended
    }

    /// Appends a control frame like [`Outbound::append_control`] without waking the writer: the
    /// caller appends a group of frames, then calls [`Outbound::wake`] once, so the group leaves
    /// in one write (the storage writer's confirmations: a writer woken by the first would send it
    /// alone, and a publisher answering that lone confirm starts a group of one).
    pub fn append_control_quiet(&self, write: impl FnOnce(&mut BytesMut)) -> bool {
        if self.is_closing() {
            return false;
        }
        self.push(false, write);
        self.check_budget();
        true
    }

    /// [`Outbound::append_control_quiet`] for several frames under one lock: `write` writes one
    /// frame per item (the storage writer's confirmations of a group).
    pub fn append_controls_quiet<T>(
        &self,
        items: impl IntoIterator<Item = T>,
        mut write: impl FnMut(&mut BytesMut, T),
    ) -> bool {
        if self.is_closing() {
            return false;
        }
        let mut state = self.state.lock();
        let total: usize = items
            .into_iter()
            .map(|item| state.push_frame(false, |buf| write(buf, item)))
            .sum();
        drop(state);
        self.queued.fetch_add(total, Ordering::Relaxed);
        self.check_budget();
        true
    }

    /// Appends a control frame even while closing (the last ERROR before a close).
    pub fn append_final(&self, write: impl FnOnce(&mut BytesMut)) {
        self.push(false, write);
        self.wake_writer.notify_one();
    }

    fn push(&self, droppable: bool, write: impl FnOnce(&mut BytesMut)) {
        let len = self.state.lock().push_frame(droppable, write);
        self.queued.fetch_add(len, Ordering::Relaxed);
    }

    /// Closes the connection, with a last ERROR, when more than its budget is pending: replies
    /// and errors are never dropped, so a client that asks and never reads is cut off instead.
    fn check_budget(&self) {
        let pending = self.pending_bytes();
        let budget = self.budget();
        if pending <= budget || self.over_budget.swap(true, Ordering::Relaxed) {
            return;
        }
        let message = format!(
            "slow consumer: {pending} bytes pending for this connection, over its budget of {budget} bytes \
             (server.max_outbound_bytes); the client does not read its replies; disconnecting"
        );
        let len = self.state.lock().push_frame(false, |buf| {
            let _ = mycelium_protocol::encode(
                buf,
                0,
                &mycelium_protocol::Frame::Error(mycelium_protocol::ErrorFrame::new(
                    mycelium_protocol::ErrorCode::SlowConsumer,
                    &message,
                )),
            );
        });
        self.queued.fetch_add(len, Ordering::Relaxed);
        self.close();
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
        let limit = limit.min(self.budget());
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

    /// Wakes the writer (once per read batch, by the reader that touched this outbound), unless
    /// an inline flush sent everything pending.
    #[inline]
    pub fn wake(&self) {
        if !self.flush_inline() {
            self.wake_writer.notify_one();
        }
    }

    /// Lets readers write to the connection's socket directly when at most `bytes_max` bytes are
    /// pending (see the module docs).
    pub fn set_direct(&self, direct: Arc<dyn DirectWrite>, bytes_max: usize) {
        let mut state = self.state.lock();
        state.direct = Some(direct);
        state.inline_bytes_max = bytes_max;
    }

    /// No more inline flushes (the connection's writer is done with the socket).
    pub fn clear_direct(&self) {
        self.state.lock().direct = None;
    }

    /// Writes what is pending straight to the socket if the writer task is idle and little is
    /// pending; returns whether nothing is left for the writer task.
    fn flush_inline(&self) -> bool {
        let mut state = self.state.lock();
        if self.in_flight.load(Ordering::Relaxed) != 0 || state.buf.len() > state.inline_bytes_max {
            return false;
        }
        if state.buf.is_empty() {
            return true;
        }
        let written = match &state.direct {
            Some(direct) => match direct.try_write(&state.buf) {
                Ok(written) => written,
                Err(_) => return false,
            },
            None => return false,
        };
        state.consume(written);
        self.queued.fetch_sub(written, Ordering::Relaxed);
        let done = state.buf.is_empty();
        drop(state);
        if written > 0 {
            self.drained.notify_waiters();
        }
        done
    }

    /// Whether a delivery of `frame_len` bytes would fit under `limit` now.
    pub fn has_room(&self, frame_len: usize, limit: usize) -> bool {
        self.pending_bytes() + frame_len <= limit.min(self.budget())
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

    /// Takes everything pending, as if written: for consumers in the same process (the HTTP
    /// pull consumer) and tests, which read the frames with [`mycelium_protocol::frames`].
    pub fn take_all(&self) -> bytes::Bytes {
        let mut buf = BytesMut::new();
        let taken = self.take(&mut buf);
        self.written(taken);
        buf.freeze()
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that takes at most `room` bytes per call (0: would block) and records them.
    #[derive(Default)]
    struct FakeSocket {
        taken: Mutex<Vec<u8>>,
        room: AtomicUsize,
    }

    impl DirectWrite for FakeSocket {
        fn try_write(&self, buf: &[u8]) -> std::io::Result<usize> {
            let room = self.room.load(Ordering::Relaxed);
            if room == 0 {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            let n = room.min(buf.len());
            self.taken.lock().extend_from_slice(&buf[..n]);
            Ok(n)
        }
    }

    fn deliver(outbound: &Outbound, byte: u8, len: usize, limit: usize, drop_oldest: bool) -> Append {
        outbound
            .append_delivery(len, limit, drop_oldest, 1, |buf| {
                buf.extend_from_slice(&vec![byte; len])
            })
            .0
    }

    /// An outbound lending its inline flushes a fake socket that takes `room` bytes per call.
    fn with_socket(room: usize, bytes_max: usize) -> (Arc<Outbound>, Arc<FakeSocket>) {
        let outbound = Outbound::new(1);
        let socket = Arc::new(FakeSocket::default());
        socket.room.store(room, Ordering::Relaxed);
        outbound.set_direct(Arc::clone(&socket) as Arc<dyn DirectWrite>, bytes_max);
        (outbound, socket)
    }

    #[test]
    fn one_budget_bounds_deliveries_and_closes_a_connection_whose_replies_pile_up() {
        let outbound = Outbound::new(1);
        outbound.set_budget(1000);
        // Deliveries: the budget caps a larger topic buffer.
        assert!(matches!(
            deliver(&outbound, 1, 600, 1 << 20, false),
            Append::Done { .. }
        ));
        assert_eq!(deliver(&outbound, 2, 600, 1 << 20, false), Append::Full);
        assert!(!outbound.has_room(600, 1 << 20));
        // Replies are never dropped: one past the budget closes the connection with an ERROR.
        assert!(outbound.append_control(|buf| buf.extend_from_slice(&[3; 300])));
        assert!(!outbound.is_closing());
        assert!(outbound.append_control(|buf| buf.extend_from_slice(&[4; 300])));
        assert!(outbound.is_closing() && outbound.went_over_budget());
        assert!(
            !outbound.append_control(|buf| buf.extend_from_slice(&[5; 300])),
            "nothing after"
        );
        let bytes = outbound.take_all();
        let last = mycelium_protocol::frames(&bytes[1200..])
            .next()
            .expect("a frame after the deliveries and replies")
            .expect("it decodes");
        let mycelium_protocol::Frame::Error(error) = last.frame else {
            panic!("{:?}", last.frame)
        };
        assert_eq!(error.code, mycelium_protocol::ErrorCode::SlowConsumer as u16);
        assert!(
            error.message.contains("server.max_outbound_bytes"),
            "{}",
            error.message
        );
    }

    #[test]
    fn an_idle_writer_lets_the_reader_write_to_the_socket_itself() {
        let (outbound, socket) = with_socket(usize::MAX, 1000);
        deliver(&outbound, 1, 10, 1000, false);
        deliver(&outbound, 2, 10, 1000, false);
        outbound.wake();
        assert_eq!(socket.taken.lock().len(), 20, "written inline");
        assert_eq!(outbound.pending_bytes(), 0);
        let mut spare = BytesMut::new();
        assert_eq!(outbound.take(&mut spare), 0, "nothing left for the writer task");
    }

    #[tokio::test(start_paused = true)]
    async fn quiet_control_frames_wait_for_one_wake_and_leave_in_one_write() {
        let (outbound, socket) = with_socket(usize::MAX, 1000);
        for byte in 1..=5u8 {
            assert!(outbound.append_control_quiet(|buf| buf.extend_from_slice(&[byte; 4])));
        }
        assert!(socket.taken.lock().is_empty(), "nothing written before the wake");
        let woken = tokio::time::timeout(Duration::from_millis(50), outbound.wait_for_work()).await;
        assert!(woken.is_err(), "the writer task was not woken");
        outbound.wake();
        let expected: Vec<u8> = (1..=5u8).flat_map(|b| [b; 4]).collect();
        assert_eq!(
            *socket.taken.lock(),
            expected,
            "the group in one inline write, in order"
        );
        outbound.close();
        assert!(
            !outbound.append_control_quiet(|buf| buf.extend_from_slice(&[9])),
            "closing: refused"
        );
    }

    #[test]
    fn more_pending_than_the_inline_limit_is_left_to_the_writer_task() {
        let (outbound, socket) = with_socket(usize::MAX, 25);
        deliver(&outbound, 1, 10, 1000, false);
        deliver(&outbound, 2, 10, 1000, false);
        deliver(&outbound, 3, 10, 1000, false);
        outbound.wake();
        assert!(
            socket.taken.lock().is_empty(),
            "30 bytes pending > 25: not inline"
        );
        let mut spare = BytesMut::new();
        assert_eq!(outbound.take(&mut spare), 30, "all of it for the writer task");
        outbound.written(30);
        deliver(&outbound, 4, 10, 1000, false);
        outbound.wake();
        assert_eq!(
            *socket.taken.lock(),
            vec![4u8; 10],
            "under the limit: inline again"
        );
    }

    #[test]
    fn what_the_socket_does_not_take_goes_to_the_writer_in_order_and_a_part_sent_frame_is_kept() {
        let (outbound, socket) = with_socket(15, 1000);
        deliver(&outbound, 1, 10, 40, true);
        deliver(&outbound, 2, 10, 40, true);
        outbound.wake();
        assert_eq!(*socket.taken.lock(), [vec![1u8; 10], vec![2u8; 5]].concat());
        // The socket is full now. With drop_oldest, room is made by dropping whole deliveries, never
        // the half-sent one (its other half is already on the wire).
        socket.room.store(0, Ordering::Relaxed);
        assert_eq!(
            deliver(&outbound, 3, 36, 40, true),
            Append::DroppedNew { dropped_older: 0 }
        );
        assert!(matches!(
            deliver(&outbound, 4, 10, 40, true),
            Append::Done { dropped_older: 0 }
        ));
        outbound.wake();
        let mut spare = BytesMut::new();
        outbound.take(&mut spare);
        let mut wire = socket.taken.lock().clone();
        wire.extend_from_slice(&spare);
        assert_eq!(wire, [vec![1u8; 10], vec![2u8; 10], vec![4u8; 10]].concat());
    }

    #[test]
    fn no_inline_write_while_the_writer_task_has_bytes_in_flight() {
        let (outbound, socket) = with_socket(usize::MAX, 1000);
        deliver(&outbound, 1, 10, 1000, false);
        let mut spare = BytesMut::new();
        let taken = outbound.take(&mut spare);
        deliver(&outbound, 2, 10, 1000, false);
        outbound.wake();
        assert!(socket.taken.lock().is_empty(), "the writer task writes first");
        outbound.written(taken);
        outbound.wake();
        assert_eq!(*socket.taken.lock(), vec![2u8; 10]);
        outbound.clear_direct();
        deliver(&outbound, 3, 10, 1000, false);
        outbound.wake();
        assert_eq!(
            socket.taken.lock().len(),
            10,
            "cleared: the writer task's job again"
        );
    }
}
