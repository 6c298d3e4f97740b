//! Durable subscriptions: a named, persistent position on a `storage = "disk"` topic, shared by
//! every consumer that subscribes with the same durable name (each message to one of them).
//!
//! One dispatcher task per durable subscription drives its [`SubscriptionState`]: it reads the
//! topic's log ahead and admits messages (with priority, not-before and expiry), expires ack
//! deadlines and TTLs, hands out due retries and ready messages to its consumers round robin,
//! with a DELIVER metadata block (message id, attempt, publish time), and moves messages that
//! exhausted `max_deliveries` (or got TERM, or expired on a topic that dead-letters expired
//! messages) to `{topic}.dlq`, keeping the original topic, sequence, id, every attempt and the
//! consumer's last error text in headers.
//!
//! The state that must survive a restart ([`Snapshot`]: floor, acknowledged-out-of-order set,
//! attempt counts) is written (temp file, fsync, rename) when it changed, at most every
//! `ack_persist_interval`, at once when an ACK asked for a confirmation (ACK_OK is sent after
//! the write), and when the subscription stops. After a crash, at most the acknowledgements of
//! the last interval that nobody asked to confirm are redelivered.
//!
//! Every file access runs off the async workers ([`crate::store::io`]): the dispatcher reads the
//! log and writes the state in [`blocking`]; a verdict or a departing consumer that dead-letters
//! a message only queues it (held unfinished in the state), and the dispatcher reads the original
//! and stores it in the DLQ (`dead.rs`).
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::BytesMut;
use mycelium_protocol::{Deliver, DeliveryMeta, StartPosition, SubscribeOptions};
use mycelium_storage::{StorageBackend, StoredMessage};
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::DispatchHost;
use super::dead::PendingDead;
use crate::consumer::state::{
    AckError, Attrs, DeadReason, DeliveryPolicy, Outcome, Snapshot, SubscriptionState,
};
use crate::dlq::AttemptRecord;
use crate::routing::outbound::Outbound;
use crate::routing::topic::{TopicCounters, TopicRef};
use crate::store::io::{self, Disk, DiskRef, blocking};

/// Bytes read from the log per admission pass, at most.
const READ_BYTES: usize = 8 << 20;

/// Bytes of admitted messages a dispatcher keeps in memory for their first delivery; past it,
/// messages are read again when they go out (read-ahead counts messages, whatever their size).
const CACHE_BYTES_MAX: usize = 8 << 20;

/// Admitted messages ready to go out, kept from admission for their first delivery, at most
/// [`CACHE_BYTES_MAX`] of them.
#[derive(Default)]
struct Cache {
    messages: HashMap<u64, StoredMessage>,
    bytes: usize,
}

impl Cache {
    fn weight(message: &StoredMessage) -> usize {
        message.payload.len() + message.headers.len() + 64
    }

    /// Keeps `message` if it fits.
    fn insert(&mut self, message: StoredMessage) {
        let weight = Cache::weight(&message);
        if self.bytes + weight <= CACHE_BYTES_MAX {
            self.bytes += weight;
            if let Some(old) = self.messages.insert(message.sequence, message) {
                self.bytes -= Cache::weight(&old);
            }
        }
    }

    fn remove(&mut self, sequence: u64) -> Option<StoredMessage> {
        let message = self.messages.remove(&sequence)?;
        self.bytes -= Cache::weight(&message);
        Some(message)
    }

    fn contains(&self, sequence: u64) -> bool {
        self.messages.contains_key(&sequence)
    }
}

/// Failed state writes in a row, and when to try the next.
#[derive(Debug, Default)]
struct WriteFailures {
    count: u32,
    retry_at: Option<tokio::time::Instant>,
}

/// How often a dispatcher whose consumers all lack room looks again.
const ROOM_POLL: Duration = Duration::from_millis(20);

#[derive(Debug, Clone)]
pub(crate) struct Consumer {
    pub(crate) outbound: Arc<Outbound>,
    pub(crate) subscription_id: u32,
    pub(crate) connection_id: u64,
}

impl Consumer {
    /// Open, with less than `buffer` bytes (or its connection's budget) pending toward it.
    fn has_room(&self, buffer: usize) -> bool {
        !self.outbound.is_closing() && self.outbound.has_room(0, buffer)
    }
}

/// Who holds an in-flight message, and when it was published.
#[derive(Debug, Clone)]
struct Assigned {
    consumer: (u64, u32),
    publish_ns: u64,
    /// The trace context handed to the consumer (tracing on and the message traced).
    trace: Option<mycelium_trace::Context>,
}

/// An ACK waiting for the state write that makes it durable.
#[derive(Debug)]
struct PendingAckOk {
    outbound: Arc<Outbound>,
    request_id: u32,
    ack: mycelium_protocol::Ack,
}

/// What opening a durable subscription needs, owned (it runs in [`blocking`]).
#[derive(Debug, Clone)]
pub(crate) struct OpenRequest {
    pub(crate) name: String,
    pub(crate) policy: DeliveryPolicy,
    /// The filter asked for (an existing subscription must have the same one).
    pub(crate) filter: Option<String>,
    /// Where a new subscription starts.
    pub(crate) start: StartPosition,
    /// Who asks: the owner of a subscription this creates (or of one recorded without owner).
    pub(crate) owner: Option<String>,
}

impl OpenRequest {
    /// The request a SUBSCRIBE's options make for durable subscription `name`.
    pub(crate) fn new(name: &str, options: &SubscribeOptions<'_>, read_ahead: usize) -> OpenRequest {
        OpenRequest {
            name: name.to_owned(),
            policy: policy_of(options, read_ahead),
            filter: options.filter.map(str::to_owned),
            start: options.start.unwrap_or_default(),
            owner: None,
        }
    }
}

/// One durable subscription.
#[derive(Debug)]
pub(crate) struct DurableSub {
    pub(crate) topic: TopicRef,
    pub(crate) name: String,
    /// The principal that created it (`None`: made by the broker itself, or before owners were
    /// recorded and not opened since).
    pub(crate) owner: Option<String>,
    pub(crate) state: Mutex<SubscriptionState>,
    pub(crate) consumers: Mutex<Vec<Consumer>>,
    pub(crate) wake: Notify,
    cursor: AtomicUsize,
    base: tokio::time::Instant,
    state_file: PathBuf,
    settings: Settings,
    /// Only messages matching it are delivered.
    pub(crate) filter: Option<Arc<crate::routing::filter::Filter>>,
    /// Serialises state writes (the dispatcher's and the shutdown's share one temp file).
    persisting: Mutex<()>,
    /// Which consumer (connection, subscription id) each in-flight message went to.
    assigned: Mutex<HashMap<u64, Assigned>>,
    /// Failed attempts of unfinished messages since the broker started.
    pub(super) history: Mutex<HashMap<u64, Vec<AttemptRecord>>>,
    /// ACKs to confirm once the state is written.
    ack_confirms: Mutex<Vec<PendingAckOk>>,
    /// Dead letters on their way to the DLQ (filled under the state's lock).
    pub(super) dead: Mutex<Vec<PendingDead>>,
    /// Dead letters the DLQ refused (full disk, topic limit): tried again from the instant given,
    /// the message held unfinished meanwhile (`SubscriptionState::hold`).
    pub(super) held: Mutex<Vec<(tokio::time::Instant, u32, PendingDead)>>,
    stopped: AtomicBool,
    /// Its state file was unreadable and replaced by a fallback when it was opened.
    pub(crate) recovered: bool,
}

/// Dispatcher settings (from [`crate::store::DurableConfig`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) persist_every: Duration,
    pub(crate) pass_max: usize,
}

/// The policy a SUBSCRIBE's options ask for.
pub(crate) fn policy_of(options: &SubscribeOptions<'_>, read_ahead: usize) -> DeliveryPolicy {
    let default = DeliveryPolicy::default();
    DeliveryPolicy {
        ack_wait: options
            .ack_wait_ms
            .map_or(default.ack_wait, |ms| Duration::from_millis(ms.max(1).into())),
        max_deliveries: match options.max_deliveries {
            Some(0) => None,
            Some(n) => Some(n),
            None => default.max_deliveries,
        },
        backoff: if options.backoff_ms.is_empty() {
            default.backoff
        } else {
            options
                .backoff_ms
                .iter()
                .map(|ms| Duration::from_millis((*ms).into()))
                .collect()
        },
        max_in_flight: options
            .max_in_flight
            .map_or(default.max_in_flight, |n| (n as usize).max(1)),
        jitter: default.jitter,
        read_ahead: read_ahead.max(1),
    }
}

impl DurableSub {
    /// Opens (resuming a persisted state) or creates a durable subscription on `topic`.
    /// Blocking: reads and writes its state file.
    pub(crate) fn open(
        topic: TopicRef,
        request: OpenRequest,
        backend: &Disk,
        config: &crate::store::DurableConfig,
    ) -> Result<Arc<DurableSub>, mycelium_storage::StorageError> {
        let OpenRequest {
            name,
            policy,
            filter: asked_filter,
            start,
            owner: asked_owner,
        } = request;
        let name = name.as_str();
        let state_file =
            mycelium_storage::DataDir::new(&config.data_dir).subscription_state(topic.name(), name);
        let bounds = backend.bounds(topic.name())?;
        let mut recovered = false;
        let persisted = match io::read_state(&state_file) {
            Ok(bytes) => match serde_json::from_slice::<Snapshot>(&bytes) {
                Ok(snapshot) => Some(snapshot),
                Err(error) => {
                    // Written by rename, so never torn; unreadable means edited or damaged. What
                    // it acknowledged is unknown: start over at the oldest retained message
                    // (redelivering is allowed, skipping is not), and keep the file to look at.
                    let kept = io::set_aside(&state_file);
                    tracing::warn!(
                        file = %state_file.display(),
                        kept = ?kept,
                        %error,
                        first = bounds.first,
                        "unreadable subscription state; redelivering from the oldest retained message"
                    );
                    recovered = true;
                    Some(Snapshot {
                        floor: bounds.first,
                        ..Snapshot::default()
                    })
                }
            },
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(error) => {
                return Err(mycelium_storage::StorageError::Io {
                    path: state_file.display().to_string(),
                    source: error,
                });
            }
        };
        let seed = bounds.next ^ (name.len() as u64) << 32;
        let filter_text = match (&persisted, asked_filter.as_deref()) {
            (Some(snapshot), Some(asked)) if snapshot.filter.as_deref() != Some(asked) => {
                return Err(mycelium_storage::StorageError::Malformed {
                    reason: format!(
                        "durable subscription `{name}` exists with filter {:?}; delete it to change the filter",
                        snapshot.filter.as_deref().unwrap_or("(none)")
                    ),
                });
            }
            (Some(snapshot), _) => snapshot.filter.clone(),
            (None, asked) => asked.map(str::to_owned),
        };
        let filter = match filter_text
            .as_deref()
            .map(crate::routing::filter::Filter::parse)
            .transpose()
        {
            Ok(filter) => filter.map(Arc::new),
            Err(error) => {
                return Err(mycelium_storage::StorageError::Malformed {
                    reason: error.to_string(),
                });
            }
        };
        // A subscription recorded without an owner is claimed by the first principal to open it.
        let owner = persisted.as_ref().and_then(|s| s.owner.clone()).or(asked_owner);
        let state = match persisted {
            Some(snapshot) => {
                tracing::info!(
                    topic = topic.name(),
                    subscription = name,
                    floor = snapshot.floor,
                    finished_ranges_above_floor = snapshot.finished.len(),
                    "resuming durable subscription"
                );
                SubscriptionState::restore(policy, &snapshot, seed)
            }
            None => {
                // On a work-queue topic the backlog is the work: a new subscription starts at the
                // oldest retained message whatever it asks for. Starting later would let
                // work-queue retention (below every subscription's floor) delete a backlog that
                // nobody acknowledged.
                let work_queue = topic.spec().retention == crate::routing::spec::Retention::WorkQueue;
                let start = match start {
                    _ if work_queue => bounds.first,
                    StartPosition::New => bounds.next,
                    StartPosition::Beginning => bounds.first,
                    StartPosition::Sequence(s) => s.max(bounds.first),
                    StartPosition::Time(t) => backend.seek_time(topic.name(), t)?,
                };
                SubscriptionState::new(policy, start, seed)
            }
        };
        let snapshot = state.snapshot();
        let sub = Arc::new(DurableSub {
            topic,
            name: name.to_owned(),
            owner,
            state: Mutex::new(state),
            consumers: Mutex::new(Vec::new()),
            wake: Notify::new(),
            cursor: AtomicUsize::new(0),
            base: tokio::time::Instant::now(),
            state_file,
            filter,
            settings: Settings {
                persist_every: config.ack_persist_interval,
                pass_max: config.dispatch_batch.max(1),
            },
            persisting: Mutex::new(()),
            assigned: Mutex::new(HashMap::new()),
            history: Mutex::new(HashMap::new()),
            ack_confirms: Mutex::new(Vec::new()),
            dead: Mutex::new(Vec::new()),
            held: Mutex::new(Vec::new()),
            stopped: AtomicBool::new(false),
            recovered,
        });
        sub.persist(&snapshot)?;
        Ok(sub)
    }

    /// Monotonic nanoseconds for the state machine.
    pub(crate) fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Hands the queued dead letters to the DLQ and writes the current state now (shutdown:
    /// called after [`DurableSub::stop`], so the dispatcher no longer writes concurrently).
    /// Blocking.
    pub(crate) fn persist_now(&self, host: &dyn DispatchHost, backend: &Disk) {
        let dead = std::mem::take(&mut *self.dead.lock());
        if !dead.is_empty() {
            let originals = read_each(backend, self.topic.name(), dead.iter().map(|d| d.sequence));
            for (pending, answer) in self.dead_letter_all(host, dead, originals) {
                let stored = answer.is_some_and(|a| a.blocking_recv().is_ok_and(|r| r.is_ok()));
                self.settle_dead(host, pending, stored, 0);
            }
        }
        let snapshot = self.state.lock().snapshot();
        match self.persist(&snapshot) {
            Ok(()) => self.confirm_acks(),
            Err(error) => tracing::error!(%error, "persisting a subscription's state failed"),
        }
    }

    fn persist(&self, snapshot: &Snapshot) -> Result<(), mycelium_storage::StorageError> {
        let _one_writer = self.persisting.lock();
        let io = |e| mycelium_storage::StorageError::Io {
            path: self.state_file.display().to_string(),
            source: e,
        };
        let snapshot = Snapshot {
            filter: self.filter.as_ref().map(|f| f.text().to_owned()),
            owner: self.owner.clone(),
            ..snapshot.clone()
        };
        let bytes = serde_json::to_vec(&snapshot).map_err(|e| io(std::io::Error::other(e)))?;
        io::write_state(&self.state_file, &bytes).map_err(io)
    }

    /// Sends the ACK_OKs waiting for the state write that just happened.
    fn confirm_acks(&self) {
        let pending = std::mem::take(&mut *self.ack_confirms.lock());
        for PendingAckOk {
            outbound,
            request_id,
            ack,
        } in pending
        {
            outbound.append_control(|buf| {
                let _ = mycelium_protocol::encode(buf, request_id, &mycelium_protocol::Frame::AckOk(ack));
            });
        }
    }

    /// Applies a consumer's verdict; an ACK with a request id is confirmed (ACK_OK) once durable.
    pub(crate) fn verdict(
        &self,
        host: &dyn DispatchHost,
        verdict: super::Verdict<'_>,
        outbound: &Arc<Outbound>,
        request_id: u32,
    ) -> Result<(), AckError> {
        use super::Verdict;
        let now = self.now_ns();
        let sequence = match verdict {
            Verdict::Ack(a) | Verdict::InProgress(a) => a.sequence,
            Verdict::Nack(n) => n.ack.sequence,
            Verdict::Term(t) => t.ack.sequence,
        };
        // Held until the outcome is handled: a dead letter is queued before any state write can
        // cover it.
        let mut state = self.state.lock();
        let outcome = match verdict {
            Verdict::Ack(a) => state.ack(a.sequence),
            Verdict::Nack(n) => {
                let delay = (n.delay_ms > 0).then(|| {
                    Duration::from_millis(n.delay_ms.into()).min(crate::consumer::state::bounds::DELAY_MAX)
                });
                state.nack(n.ack.sequence, delay, now)
            }
            Verdict::InProgress(a) => state.in_progress(a.sequence, now),
            Verdict::Term(t) => state.term(t.ack.sequence),
        }?;
        match verdict {
            Verdict::Ack(ack) => {
                self.trace_verdict(sequence, "mycelium.ack");
                if let Some(assigned) = self.assigned.lock().get(&sequence) {
                    let seconds = mycelium_codec::now_ns().saturating_sub(assigned.publish_ns) as f64 / 1e9;
                    host.observe_delivery(&self.topic, seconds);
                }
                self.settled(sequence);
                self.history.lock().remove(&sequence);
                TopicCounters::add(&self.topic.counters.acked, 1);
                if request_id != 0 {
                    self.ack_confirms.lock().push(PendingAckOk {
                        outbound: Arc::clone(outbound),
                        request_id,
                        ack,
                    });
                }
            }
            Verdict::Nack(n) => {
                self.trace_verdict(sequence, "mycelium.nack");
                self.settled(sequence);
                self.record(sequence, "nack", Some(n.reason));
            }
            Verdict::Term(t) => {
                self.settled(sequence);
                self.record(sequence, "term", Some(t.reason));
            }
            Verdict::InProgress(_) => {}
        }
        self.handle_outcome(&mut state, outcome);
        drop(state);
        self.wake.notify_one();
        Ok(())
    }

    /// An ack / nack span, child of the deliver span of a traced message.
    fn trace_verdict(&self, sequence: u64, name: &'static str) {
        if !mycelium_trace::enabled() {
            return;
        }
        let trace = self.assigned.lock().get(&sequence).and_then(|a| a.trace.clone());
        if let Some(cx) = trace {
            let span = mycelium_trace::span(name, self.topic.name(), &[]);
            let _ = tracing_opentelemetry::OpenTelemetrySpanExt::set_parent(&span, cx);
        }
    }

    pub(super) fn record(&self, sequence: u64, reason: &'static str, error: Option<&str>) {
        self.history
            .lock()
            .entry(sequence)
            .or_default()
            .push(AttemptRecord {
                at_ns: mycelium_codec::now_ns(),
                reason,
                error: error.filter(|e| !e.is_empty()).map(str::to_owned),
            });
    }

    /// The state machine's view of a stored message, at monotonic `now` and wall clock `wall`.
    fn attrs_of(&self, message: &StoredMessage, now: u64, wall: u64) -> Attrs {
        let to_mono = |at: u64| now.saturating_add(at.saturating_sub(wall));
        Attrs {
            priority: if self.topic.spec().priority {
                message.priority
            } else {
                0
            },
            not_before_ns: message.not_before_ns.filter(|nb| *nb > wall).map(to_mono),
            expires_ns: message
                .expires_at_ns
                .map(|at| if at <= wall { now } else { to_mono(at) }),
        }
    }

    /// The dispatcher loop; ends when the subscription is stopped or the broker is gone.
    pub(crate) async fn run(self: Arc<Self>, host: Weak<dyn DispatchHost>, backend: DiskRef) {
        let mut persisted = self.state.lock().snapshot();
        let mut last_persist = tokio::time::Instant::now();
        let mut write_failures = WriteFailures::default();
        // Messages read during admission and ready to go out: their first delivery needs no
        // second read.
        let mut cache = Cache::default();
        let pass_max = self.settings.pass_max;
        loop {
            let wake = self.wake.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            if self.stopped.load(Ordering::Acquire) {
                break;
            }
            let Some(host) = host.upgrade() else { break };
            // Only what is confirmed durable: a group whose fsync may still fail is not delivered.
            let available = backend
                .bounds(self.topic.name())
                .map_or(0, |b| b.next)
                .min(self.topic.committed());
            let mut outcomes = Vec::new();
            let mut admitted_all = true;
            let (next, room) = {
                let state = self.state.lock();
                (state.next_admit(), state.admit_room())
            };
            if room > 0 && next < available {
                let (reader, topic) = (Arc::clone(&backend), Arc::clone(&self.topic));
                let count = room.min(pass_max);
                let page = blocking(move || reader.read(topic.name(), next, count, READ_BYTES)).await;
                match page {
                    Ok(page) => {
                        admitted_all = page.last().is_none_or(|m| m.sequence + 1 >= available);
                        self.admit(page, &mut outcomes, &mut cache);
                    }
                    Err(error) => {
                        tracing::error!(topic = self.topic.name(), %error, "reading a durable topic failed");
                    }
                }
            } else if next < available {
                admitted_all = false;
            }
            let now = self.now_ns();
            // A consumer that does not read gets nothing more once its connection holds a
            // topic buffer's worth: due messages wait (their attempts not counted) until some
            // consumer has room, instead of piling up behind a socket nobody reads.
            let (has_consumers, has_room) = {
                let consumers = self.consumers.lock();
                let buffer = self.topic.spec().buffer_bytes;
                (
                    !consumers.is_empty(),
                    consumers.iter().any(|c| c.has_room(buffer)),
                )
            };
            let (deliveries, wakeup) = {
                let mut state = self.state.lock();
                outcomes.extend(state.expire(now));
                let deliveries = if has_room {
                    state.next_deliveries(now, pass_max)
                } else {
                    Vec::new()
                };
                // Without consumers, due retries cannot go anywhere: wake only for deadlines and
                // expiries (a consumer arriving wakes the dispatcher anyway).
                let wakeup = if has_room {
                    state.next_wakeup_ns()
                } else {
                    state.next_deadline_ns()
                };
                for outcome in outcomes {
                    if let Outcome::Retry { sequence, .. } = outcome {
                        self.record(sequence, "ack_timeout", None);
                    } else if let Outcome::DeadLetter {
                        sequence,
                        reason: DeadReason::MaxDeliveries,
                        ..
                    } = outcome
                    {
                        self.record(sequence, "ack_timeout", None);
                    }
                    if let Outcome::Expired { sequence, .. } | Outcome::DeadLetter { sequence, .. } = outcome
                    {
                        cache.remove(sequence);
                    }
                    self.handle_outcome(&mut state, outcome);
                }
                (deliveries, wakeup)
            };
            let missing: Vec<u64> = deliveries
                .iter()
                .map(|d| d.sequence)
                .filter(|s| !cache.contains(*s))
                .collect();
            let mut reread = read_each_off_worker(&backend, &self.topic, missing).await;
            for delivery in &deliveries {
                let message = cache
                    .remove(delivery.sequence)
                    .or_else(|| reread.remove(&delivery.sequence));
                match message {
                    Some(message) => self.send(&message, delivery.attempt),
                    None => self.state.lock().skip(delivery.sequence), // removed by retention
                }
            }
            // Dead letters go to the DLQ, and its answer is awaited, before the state that no
            // longer holds them is written (see `dead.rs`).
            self.store_dead_letters(host.as_ref(), &backend).await;
            let snapshot = self.state.lock().snapshot();
            let confirms_waiting = !self.ack_confirms.lock().is_empty();
            // After a failed write (a full disk), the next waits out a backoff: no spinning, one
            // log line when it starts failing and one when it recovers.
            let may_write = write_failures
                .retry_at
                .is_none_or(|at| tokio::time::Instant::now() >= at);
            if snapshot != persisted
                && may_write
                && (confirms_waiting || last_persist.elapsed() >= self.settings.persist_every)
                && !self.stopped.load(Ordering::Acquire)
            {
                let (sub, written) = (Arc::clone(&self), snapshot.clone());
                match blocking(move || sub.persist(&written)).await {
                    Ok(()) => {
                        persisted = snapshot;
                        last_persist = tokio::time::Instant::now();
                        self.confirm_acks();
                        if write_failures.count > 0 {
                            tracing::info!(
                                topic = self.topic.name(),
                                subscription = %self.name,
                                failures = write_failures.count,
                                "subscription state written again"
                            );
                        }
                        write_failures = WriteFailures::default();
                    }
                    Err(error) => {
                        host.state_write_failed();
                        if write_failures.count == 0 {
                            tracing::error!(
                                topic = self.topic.name(),
                                subscription = %self.name,
                                %error,
                                "writing the subscription's state failed; retrying with a backoff (acks wait for it)"
                            );
                        }
                        write_failures.count += 1;
                        let backoff = Duration::from_millis(50)
                            .saturating_mul(1 << write_failures.count.min(7))
                            .min(Duration::from_secs(5));
                        write_failures.retry_at = Some(tokio::time::Instant::now() + backoff);
                    }
                }
            } else if confirms_waiting && snapshot == persisted {
                self.confirm_acks();
            }
            drop(host);
            if deliveries.len() == pass_max || !admitted_all && self.state.lock().admit_room() > 0 {
                tokio::task::yield_now().await;
                continue; // more may be ready
            }
            let persist_due = (self.state.lock().snapshot() != persisted).then(|| {
                let due = last_persist + self.settings.persist_every;
                write_failures.retry_at.map_or(due, |at| at.max(due))
            });
            // Consumers without room: look again soon (their writers drain without telling us).
            let room_poll = (has_consumers && !has_room).then(|| tokio::time::Instant::now() + ROOM_POLL);
            let timer = wakeup
                .map(|at| self.base + Duration::from_nanos(at))
                .into_iter()
                .chain(persist_due)
                .chain(room_poll)
                .chain(self.next_held_retry())
                .min();
            tokio::select! {
                () = &mut wake => {}
                () = sleep_until(timer) => {}
            }
        }
        // Stopped: the broker persists the final state itself (`Broker::close_storage`).
    }

    /// Admits a page read from the log: filtered out (skipped or dead-lettered as unmatched), or
    /// into the state machine, keeping what is ready to go in `cache`.
    fn admit(&self, page: Vec<StoredMessage>, outcomes: &mut Vec<Outcome>, cache: &mut Cache) {
        let now = self.now_ns();
        let wall = mycelium_codec::now_ns();
        let mut state = self.state.lock();
        for message in page {
            if let Some(filter) = &self.filter
                && message.sequence >= state.next_admit()
                && !filter.matches(&message.headers, &message.payload)
            {
                state.skip(message.sequence);
                let _ = state.admit(message.sequence, Attrs::default(), now);
                if self.topic.spec().unmatched == crate::routing::spec::Unmatched::DeadLetter {
                    outcomes.push(Outcome::DeadLetter {
                        sequence: message.sequence,
                        attempts: 0,
                        reason: DeadReason::Unmatched,
                    });
                } else {
                    TopicCounters::add(&self.topic.counters.filtered, 1);
                }
                continue;
            }
            let attrs = self.attrs_of(&message, now, wall);
            match state.admit(message.sequence, attrs, now) {
                Some(outcome) => outcomes.push(outcome),
                None if attrs.not_before_ns.is_none() => {
                    cache.insert(message);
                }
                None => {}
            }
        }
    }

    /// Sends one delivery to the next live consumer.
    fn send(&self, message: &StoredMessage, attempt: u32) {
        let consumers = self.consumers.lock();
        let buffer = self.topic.spec().buffer_bytes;
        let live: Vec<&Consumer> = consumers.iter().filter(|c| c.has_room(buffer)).collect();
        if live.is_empty() {
            // None has room left (this pass filled them, or they left): ready again, the attempt
            // not counted.
            drop(consumers);
            self.state.lock().undeliver(message.sequence);
            return;
        }
        let consumer = live[self.cursor.fetch_add(1, Ordering::Relaxed) % live.len()];
        // A traced message: a deliver span continuing the stored context, handed on in the
        // delivered headers (kept for the ack / nack span).
        let traced =
            (mycelium_trace::enabled() && mycelium_trace::has_context(&message.headers)).then(|| {
                let span = mycelium_trace::span("mycelium.deliver", self.topic.name(), &message.headers);
                let cx = mycelium_trace::context_of(&span);
                (mycelium_trace::with_context(&message.headers, &cx), cx)
            });
        let (headers, trace) = match traced {
            Some((headers, cx)) => (headers, Some(cx)),
            None => (message.headers.clone(), None),
        };
        self.assigned.lock().insert(
            message.sequence,
            Assigned {
                consumer: (consumer.connection_id, consumer.subscription_id),
                publish_ns: message.publish_ns,
                trace,
            },
        );
        let mut meta = BytesMut::with_capacity(DeliveryMeta::LEN);
        DeliveryMeta {
            message_id: message.id,
            attempt,
            publish_ns: message.publish_ns,
        }
        .encode(&mut meta);
        let deliver = Deliver {
            subscription_id: consumer.subscription_id,
            sequence: message.sequence,
            topic: self.topic.name(),
            headers: &headers,
            meta: &meta,
            payload: &message.payload,
        };
        // Durable deliveries are bounded by max_in_flight, not by the outbound policy.
        consumer.outbound.append_control(|buf| {
            let _ = deliver.encode_frame(buf);
        });
        let counters = &self.topic.counters;
        TopicCounters::add(&counters.delivered, 1);
        if attempt > 1 {
            TopicCounters::add(&counters.redelivered, 1);
        }
    }

    /// A consumer left (disconnect or unsubscribe): what it held unacknowledged is redelivered now
    /// to the others (the attempt counts), instead of waiting out its ack deadline.
    pub(crate) fn release(&self, connection_id: u64, subscription_id: u32) {
        let held: Vec<u64> = {
            let mut assigned = self.assigned.lock();
            let held: Vec<u64> = assigned
                .iter()
                .filter(|(_, a)| a.consumer == (connection_id, subscription_id))
                .map(|(s, _)| *s)
                .collect();
            for sequence in &held {
                assigned.remove(sequence);
            }
            held
        };
        let now = self.now_ns();
        for sequence in held {
            let mut state = self.state.lock();
            if let Ok(outcome) = state.nack(sequence, Some(Duration::ZERO), now) {
                self.record(sequence, "consumer_left", None);
                self.handle_outcome(&mut state, outcome);
            }
        }
        self.wake.notify_one();
    }

    /// Forgets which consumer holds `sequence` (it was acknowledged or given up).
    pub(crate) fn settled(&self, sequence: u64) {
        self.assigned.lock().remove(&sequence);
    }
}

/// Reads the messages `sequences` of `topic` (blocking); one gone to retention is missing.
pub(super) fn read_each(
    backend: &Disk,
    topic: &str,
    sequences: impl IntoIterator<Item = u64>,
) -> HashMap<u64, StoredMessage> {
    let mut found = HashMap::new();
    for sequence in sequences {
        match backend.read(topic, sequence, 1, usize::MAX) {
            Ok(page) => {
                if let Some(message) = page.into_iter().next().filter(|m| m.sequence == sequence) {
                    found.insert(sequence, message);
                }
            }
            Err(error) => tracing::error!(topic, sequence, %error, "reading a durable message failed"),
        }
    }
    found
}

/// [`read_each`] in [`blocking`].
pub(super) async fn read_each_off_worker(
    backend: &DiskRef,
    topic: &TopicRef,
    sequences: Vec<u64>,
) -> HashMap<u64, StoredMessage> {
    if sequences.is_empty() {
        return HashMap::new();
    }
    let (backend, topic) = (Arc::clone(backend), Arc::clone(topic));
    blocking(move || read_each(&backend, topic.name(), sequences)).await
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
