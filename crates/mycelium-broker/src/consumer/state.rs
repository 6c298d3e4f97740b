//! The delivery state of one durable subscription (at-least-once and exactly-once topics): which
//! messages are acknowledged, in flight, waiting for a retry, or dead-lettered. Pure: time is
//! passed in as monotonic nanoseconds, randomness comes from a seeded generator, nothing does I/O,
//! so every rule is tested against a trivially correct model (`tests/delivery_model.rs`).
//!
//! Messages enter the state by admission ([`SubscriptionState::admit`]): the dispatcher reads the
//! log ahead (at most `read_ahead` messages waiting to go out) and admits each message with its
//! priority, not-before time and expiry.
//!
//! Rules:
//! - A message is handed out only when the subscription has room (`max_in_flight`), and it is in
//!   flight to at most one consumer at a time.
//! - Among the messages ready to go out, the highest priority goes first; within a priority, due
//!   retries before new messages, each in sequence order (topics without priority: everything is
//!   priority 0, so retries first, then new messages, in sequence order).
//! - A message with a not-before time is not handed out before it.
//! - A message whose expiry passed is never handed out again: it is finished with
//!   [`Outcome::Expired`] (an in-flight message expires once its attempt fails).
//! - ACK of an in-flight message finishes it for ever: it is never handed out again.
//! - NACK, or an ack deadline passing, schedules a retry after the backoff for that attempt (or the
//!   NACK's own delay); once `max_deliveries` attempts have failed, the message is dead-lettered.
//! - IN_PROGRESS pushes the deadline out by `ack_wait`; TERM dead-letters at once.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::ranges::RangeSet;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// The bounds of what a consumer may ask for: each option a client chooses is refused outside
/// them (ack wait 1 ms with no backoff and a million in flight kept a broker at 99% CPU).
pub mod bounds {
    use std::time::Duration;

    /// Shortest ack wait.
    pub const ACK_WAIT_MIN: Duration = Duration::from_millis(100);
    /// Longest ack wait.
    pub const ACK_WAIT_MAX: Duration = Duration::from_secs(24 * 3600);
    /// Shortest backoff step.
    pub const BACKOFF_MIN: Duration = Duration::from_millis(10);
    /// Longest backoff step, and longest NACK delay (a longer NACK delay is shortened to it).
    pub const DELAY_MAX: Duration = Duration::from_secs(24 * 3600);
    /// Backoff steps, at most.
    pub const BACKOFF_STEPS_MAX: usize = 32;
    /// Messages in flight to one subscription, at most.
    pub const IN_FLIGHT_MAX: u32 = 10_000;
}

/// How a subscription retries.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryPolicy {
    /// Time a consumer has to ACK (or IN_PROGRESS) before the message is redelivered.
    pub ack_wait: Duration,
    /// Attempts before the message is dead-lettered; `None`: retry for ever.
    pub max_deliveries: Option<u32>,
    /// Delay before retry n (after attempt n failed); the last entry repeats.
    pub backoff: Vec<Duration>,
    /// Random spread of each backoff delay, as a fraction (0.2: +-20%).
    pub jitter: f64,
    /// Messages in flight at once (prefetch); delivery stops there until some are acked.
    pub max_in_flight: usize,
    /// Messages admitted and waiting to go out, at most (the window within which priority
    /// reorders).
    pub read_ahead: usize,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        DeliveryPolicy {
            ack_wait: Duration::from_secs(30),
            max_deliveries: Some(5),
            backoff: [2, 4, 8, 16, 32].into_iter().map(Duration::from_secs).collect(),
            jitter: 0.2,
            max_in_flight: 1000,
            read_ahead: 1000,
        }
    }
}

/// Why a message was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadReason {
    /// `max_deliveries` attempts failed (NACKs or missed deadlines).
    MaxDeliveries,
    /// The consumer said TERM.
    Terminated,
    /// The message's time to live passed before it was acknowledged.
    Expired,
    /// The subscription's filter refused it (on topics with `unmatched = "dead_letter"`).
    Unmatched,
}

/// What the dispatcher must do after an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing (e.g. an ACK).
    Done,
    /// Retry `sequence` at `at_ns` (its attempt `attempt` failed).
    Retry {
        /// The message.
        sequence: u64,
        /// Monotonic time of the next attempt.
        at_ns: u64,
        /// Attempts made so far.
        attempt: u32,
    },
    /// `sequence` expired (TTL) before it was acknowledged: finished, never delivered again. The
    /// topic decides whether it is dead-lettered.
    Expired {
        /// The message.
        sequence: u64,
        /// Attempts made.
        attempts: u32,
    },
    /// Move `sequence` to the dead-letter queue.
    DeadLetter {
        /// The message.
        sequence: u64,
        /// Attempts made.
        attempts: u32,
        /// Why.
        reason: DeadReason,
    },
}

/// A delivery to make: message `sequence`, attempt number `attempt` (1 for the first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// The message.
    pub sequence: u64,
    /// 1 for the first delivery.
    pub attempt: u32,
}

/// Why an ACK-family request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    /// The message is not in flight: never delivered, already acknowledged, or waiting for a retry
    /// after its deadline passed.
    #[error(
        "message {0} is not in flight on this subscription (already acknowledged, redelivered or never delivered)"
    )]
    NotInFlight(u64),
    /// The connection has no durable subscription with that id.
    #[error(
        "no durable subscription {0} on this connection (acknowledgements apply to durable subscriptions)"
    )]
    UnknownSubscription(u32),
}

impl AckError {
    /// The stable wire code of the refusal.
    pub fn code(&self) -> mycelium_protocol::ErrorCode {
        mycelium_protocol::ErrorCode::UnknownSubscription
    }
}

/// What the dispatcher knows about a message when it admits it (times in the state's monotonic
/// nanoseconds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attrs {
    /// 0-9, higher first (0 on topics without priority).
    pub priority: u8,
    /// Not handed out before this time.
    pub not_before_ns: Option<u64>,
    /// Finished as expired at this time.
    pub expires_ns: Option<u64>,
}

/// What must survive a restart: the acked-up-to floor, what is finished above it, and the attempt
/// counts of messages that were handed out and not finished.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    /// Every sequence below this is finished.
    pub floor: u64,
    /// Finished sequences above the floor: single sequences and `[start, end)` ranges.
    #[serde(default)]
    pub finished: Vec<Finished>,
    /// `(sequence, attempts made)` of messages in flight or waiting for a retry.
    #[serde(default)]
    pub attempts: Vec<(u64, u32)>,
    /// The subscription's filter, if it has one (kept with its position).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// The principal that owns the subscription.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// Finished sequences in a [`Snapshot`]: one sequence, or a range (`end` exclusive). A state file
/// of an earlier version lists single sequences only, and still reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Finished {
    /// One sequence.
    One(u64),
    /// `start..end`.
    Range(u64, u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InFlight {
    deadline_ns: u64,
    attempt: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Waiting {
    at_ns: u64,
    /// 0: a new message held back by its not-before time.
    attempts: u32,
}

/// Messages in flight, with their deadlines in order: finding the late ones costs what is late.
#[derive(Debug, Clone, Default)]
struct Flights {
    by_sequence: BTreeMap<u64, InFlight>,
    deadlines: BTreeSet<(u64, u64)>,
}

impl Flights {
    fn insert(&mut self, sequence: u64, flight: InFlight) {
        if let Some(old) = self.by_sequence.insert(sequence, flight) {
            self.deadlines.remove(&(old.deadline_ns, sequence));
        }
        self.deadlines.insert((flight.deadline_ns, sequence));
    }

    fn remove(&mut self, sequence: u64) -> Option<InFlight> {
        let flight = self.by_sequence.remove(&sequence)?;
        self.deadlines.remove(&(flight.deadline_ns, sequence));
        Some(flight)
    }

    fn get(&self, sequence: u64) -> Option<&InFlight> {
        self.by_sequence.get(&sequence)
    }

    fn contains(&self, sequence: u64) -> bool {
        self.by_sequence.contains_key(&sequence)
    }

    fn len(&self) -> usize {
        self.by_sequence.len()
    }

    /// In flight past their deadline at `now_ns`, in sequence order.
    fn late(&self, now_ns: u64) -> Vec<(u64, u32)> {
        let mut late: Vec<(u64, u32)> = self
            .deadlines
            .range(..=(now_ns, u64::MAX))
            .map(|(_, s)| (*s, self.by_sequence[s].attempt))
            .collect();
        late.sort_unstable();
        late
    }

    fn first_deadline(&self) -> Option<u64> {
        self.deadlines.first().map(|(at, _)| *at)
    }
}

/// Messages waiting for a retry or their not-before time, with their times in order: finding the
/// due ones costs what is due, however many wait (a million delayed by a day never slow down a
/// message that is due now). Retries are also kept apart, for the snapshot.
#[derive(Debug, Clone, Default)]
struct Waits {
    by_sequence: BTreeMap<u64, Waiting>,
    times: BTreeSet<(u64, u64)>,
    /// `sequence -> attempts made` of the waiting messages that were handed out before.
    retries: BTreeMap<u64, u32>,
}

impl Waits {
    fn insert(&mut self, sequence: u64, waiting: Waiting) {
        self.remove(sequence);
        self.by_sequence.insert(sequence, waiting);
        self.times.insert((waiting.at_ns, sequence));
        if waiting.attempts > 0 {
            self.retries.insert(sequence, waiting.attempts);
        }
    }

    fn remove(&mut self, sequence: u64) -> Option<Waiting> {
        let waiting = self.by_sequence.remove(&sequence)?;
        self.times.remove(&(waiting.at_ns, sequence));
        self.retries.remove(&sequence);
        Some(waiting)
    }

    fn len(&self) -> usize {
        self.by_sequence.len()
    }

    /// Takes every message due at `now_ns`, as `(sequence, attempts)`.
    fn take_due(&mut self, now_ns: u64) -> Vec<(u64, u32)> {
        let due: Vec<u64> = self.times.range(..=(now_ns, u64::MAX)).map(|(_, s)| *s).collect();
        due.into_iter()
            .filter_map(|s| self.remove(s).map(|w| (s, w.attempts)))
            .collect()
    }

    fn first_time(&self) -> Option<u64> {
        self.times.first().map(|(at, _)| *at)
    }
}

/// Orders the ready messages: higher priority first, then retries before new, then sequence.
type ReadyKey = (std::cmp::Reverse<u8>, bool, u64);

/// The state of one durable subscription.
#[derive(Debug, Clone)]
pub struct SubscriptionState {
    policy: DeliveryPolicy,
    /// Every sequence below this is finished (acked, dead-lettered, expired or skipped).
    floor: u64,
    /// The lowest sequence not yet admitted.
    next_new: u64,
    in_flight: Flights,
    waiting: Waits,
    /// Ready to go out, best first; the value is the attempts made.
    ready: BTreeMap<ReadyKey, u32>,
    /// Priority and expiry of every admitted message that is not finished.
    attrs: HashMap<u64, Attrs>,
    /// `(expires_ns, sequence)` of admitted, unfinished messages with an expiry.
    expiries: BTreeSet<(u64, u64)>,
    /// Finished sequences above the floor (acknowledged out of order, or before a restart).
    finished: RangeSet,
    /// Attempts made before a restart, for messages not yet admitted again.
    prior_attempts: HashMap<u64, u32>,
    /// Dead letters the DLQ could not take yet (`sequence -> attempts`): unfinished, so the state
    /// written keeps them, and never handed out.
    held: BTreeMap<u64, u32>,
    rng: SmallRng,
}

impl SubscriptionState {
    /// A subscription that starts at sequence `start`.
    pub fn new(policy: DeliveryPolicy, start: u64, seed: u64) -> Self {
        SubscriptionState {
            policy,
            floor: start,
            next_new: start,
            in_flight: Flights::default(),
            waiting: Waits::default(),
            ready: BTreeMap::new(),
            attrs: HashMap::new(),
            expiries: BTreeSet::new(),
            finished: RangeSet::default(),
            prior_attempts: HashMap::new(),
            held: BTreeMap::new(),
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// A subscription resuming from a [`Snapshot`]: finished messages stay finished; messages that
    /// were in flight or waiting are redelivered (as soon as they are admitted again) with their
    /// attempt counts kept.
    pub fn restore(policy: DeliveryPolicy, snapshot: &Snapshot, seed: u64) -> Self {
        let mut state = SubscriptionState::new(policy, snapshot.floor, seed);
        for finished in &snapshot.finished {
            match *finished {
                Finished::One(s) => state.finished.insert(s),
                Finished::Range(start, end) => state.finished.insert_range(start, end),
            }
        }
        state.finished.drop_below(snapshot.floor);
        state.prior_attempts = snapshot
            .attempts
            .iter()
            .copied()
            .filter(|(s, n)| *s >= snapshot.floor && *n > 0 && !state.finished.contains(*s))
            .collect();
        state.advance_floor();
        state
    }

    /// What to persist now.
    pub fn snapshot(&self) -> Snapshot {
        let mut attempts: Vec<(u64, u32)> = self
            .in_flight
            .by_sequence
            .iter()
            .map(|(s, f)| (*s, f.attempt))
            .chain(self.waiting.retries.iter().map(|(s, n)| (*s, *n)))
            .chain(
                self.ready
                    .iter()
                    .filter(|(_, n)| **n > 0)
                    .map(|((_, _, s), n)| (*s, *n)),
            )
            .chain(self.prior_attempts.iter().map(|(s, n)| (*s, *n)))
            .chain(self.held.iter().map(|(s, n)| (*s, *n)))
            .collect();
        attempts.sort_unstable();
        Snapshot {
            floor: self.floor,
            finished: self
                .finished
                .ranges()
                .map(|(start, end)| {
                    if end == start + 1 {
                        Finished::One(start)
                    } else {
                        Finished::Range(start, end)
                    }
                })
                .collect(),
            attempts,
            filter: None,
            owner: None,
        }
    }

    /// Every sequence below this is finished; storage may drop them for work-queue retention.
    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// Messages in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Messages waiting for a retry or for their not-before time.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Messages ready to go out once there is room.
    pub fn ready(&self) -> usize {
        self.ready.len()
    }

    /// The attempt count of an in-flight message.
    pub fn attempt_of(&self, sequence: u64) -> Option<u32> {
        self.in_flight.get(sequence).map(|f| f.attempt)
    }

    /// The next sequence to admit.
    pub fn next_admit(&self) -> u64 {
        self.next_new.max(self.floor)
    }

    /// How many more messages may be admitted now (`read_ahead` minus those ready).
    pub fn admit_room(&self) -> usize {
        self.policy.read_ahead.max(1).saturating_sub(self.ready.len())
    }

    /// Admits message `sequence` (at or after [`SubscriptionState::next_admit`]; sequences
    /// skipped over are finished: the log no longer has them) with its attributes, at `now_ns`.
    /// Returns what must be done when it cannot be delivered: expired, or out of attempts after a
    /// restart.
    pub fn admit(&mut self, sequence: u64, attrs: Attrs, now_ns: u64) -> Option<Outcome> {
        let next = self.next_admit();
        if sequence < next {
            return None; // admitted before
        }
        for gap in next..sequence {
            self.prior_attempts.remove(&gap);
            self.finish(gap);
        }
        self.next_new = sequence + 1;
        if self.finished.contains(sequence) || sequence < self.floor {
            return None;
        }
        let attempts = self.prior_attempts.remove(&sequence).unwrap_or(0);
        if self.policy.max_deliveries.is_some_and(|max| attempts >= max) {
            self.finish(sequence);
            return Some(Outcome::DeadLetter {
                sequence,
                attempts,
                reason: DeadReason::MaxDeliveries,
            });
        }
        if attrs.expires_ns.is_some_and(|at| at <= now_ns) {
            self.finish(sequence);
            return Some(Outcome::Expired { sequence, attempts });
        }
        self.attrs.insert(sequence, attrs);
        if let Some(at) = attrs.expires_ns {
            self.expiries.insert((at, sequence));
        }
        match attrs.not_before_ns {
            Some(at_ns) if at_ns > now_ns => {
                self.waiting.insert(sequence, Waiting { at_ns, attempts });
            }
            _ => self.make_ready(sequence, attempts),
        }
        None
    }

    /// Hands out up to `max` deliveries at `now_ns` from the admitted messages, best first (see the
    /// module rules), within `max_in_flight`.
    pub fn next_deliveries(&mut self, now_ns: u64, max: usize) -> Vec<Delivery> {
        for (sequence, attempts) in self.waiting.take_due(now_ns) {
            self.make_ready(sequence, attempts);
        }
        let room = self
            .policy
            .max_in_flight
            .saturating_sub(self.in_flight.len())
            .min(max);
        let mut out = Vec::with_capacity(room.min(self.ready.len()));
        while out.len() < room {
            let Some(((_, _, sequence), attempts)) = self.ready.pop_first() else {
                break;
            };
            let attempt = attempts + 1;
            self.in_flight.insert(
                sequence,
                InFlight {
                    deadline_ns: now_ns + nanos(self.policy.ack_wait),
                    attempt,
                },
            );
            out.push(Delivery { sequence, attempt });
        }
        out
    }

    /// Keeps `sequence`, finished as a dead letter that the DLQ could not take, unfinished in
    /// what is written (a restart dead-letters it again) until [`SubscriptionState::unhold`]; it
    /// is not handed out meanwhile.
    pub fn hold(&mut self, sequence: u64, attempts: u32) {
        if sequence < self.floor {
            // Lower the floor to it; what lay between stays finished.
            self.finished.insert_range(sequence + 1, self.floor);
            self.floor = sequence;
        } else {
            self.finished.remove(sequence);
        }
        self.held.insert(sequence, attempts);
    }

    /// The DLQ took held dead letter `sequence` (or its original is gone): finished.
    pub fn unhold(&mut self, sequence: u64) {
        if self.held.remove(&sequence).is_some() {
            self.finish(sequence);
        }
    }

    /// Dead letters held (see [`SubscriptionState::hold`]).
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Takes back a delivery [`SubscriptionState::next_deliveries`] handed out that could not be
    /// sent (no consumer had room): ready again, its attempt not counted.
    pub fn undeliver(&mut self, sequence: u64) {
        if let Some(flight) = self.in_flight.remove(sequence) {
            self.make_ready(sequence, flight.attempt.saturating_sub(1));
        }
    }

    /// The consumer finished `sequence`.
    ///
    /// # Errors
    /// [`AckError::NotInFlight`].
    pub fn ack(&mut self, sequence: u64) -> Result<Outcome, AckError> {
        self.in_flight
            .remove(sequence)
            .ok_or(AckError::NotInFlight(sequence))?;
        self.finish(sequence);
        Ok(Outcome::Done)
    }

    /// The consumer failed `sequence`; retry after `delay` (or the backoff when `None`).
    ///
    /// # Errors
    /// [`AckError::NotInFlight`].
    pub fn nack(&mut self, sequence: u64, delay: Option<Duration>, now_ns: u64) -> Result<Outcome, AckError> {
        let flight = self
            .in_flight
            .remove(sequence)
            .ok_or(AckError::NotInFlight(sequence))?;
        Ok(self.failed(sequence, flight.attempt, delay, now_ns))
    }

    /// The consumer needs more time for `sequence`: its deadline moves to `now + ack_wait`.
    ///
    /// # Errors
    /// [`AckError::NotInFlight`].
    pub fn in_progress(&mut self, sequence: u64, now_ns: u64) -> Result<Outcome, AckError> {
        let flight = *self
            .in_flight
            .get(sequence)
            .ok_or(AckError::NotInFlight(sequence))?;
        self.in_flight.insert(
            sequence,
            InFlight {
                deadline_ns: now_ns + nanos(self.policy.ack_wait),
                ..flight
            },
        );
        Ok(Outcome::Done)
    }

    /// The consumer gives up on `sequence`: dead-letter it now.
    ///
    /// # Errors
    /// [`AckError::NotInFlight`].
    pub fn term(&mut self, sequence: u64) -> Result<Outcome, AckError> {
        let flight = self
            .in_flight
            .remove(sequence)
            .ok_or(AckError::NotInFlight(sequence))?;
        self.finish(sequence);
        Ok(Outcome::DeadLetter {
            sequence,
            attempts: flight.attempt,
            reason: DeadReason::Terminated,
        })
    }

    /// Finishes a message without delivering it (the log no longer has it).
    pub fn skip(&mut self, sequence: u64) {
        self.in_flight.remove(sequence);
        self.waiting.remove(sequence);
        self.unready(sequence);
        if sequence >= self.floor {
            self.finish(sequence);
        }
    }

    /// Handles every in-flight message whose deadline passed by `now_ns` (in sequence order), then
    /// every message not in flight whose expiry passed (in sequence order).
    pub fn expire(&mut self, now_ns: u64) -> Vec<Outcome> {
        let late = self.in_flight.late(now_ns);
        let mut outcomes: Vec<Outcome> = late
            .into_iter()
            .map(|(sequence, attempt)| {
                self.in_flight.remove(sequence);
                self.failed(sequence, attempt, None, now_ns)
            })
            .collect();
        let mut expired: Vec<u64> = self
            .expiries
            .range(..=(now_ns, u64::MAX))
            .map(|(_, s)| *s)
            .filter(|s| !self.in_flight.contains(*s) && !self.finished.contains(*s) && *s >= self.floor)
            .collect();
        expired.sort_unstable();
        for sequence in expired {
            let attempts = match self.waiting.remove(sequence) {
                Some(w) => w.attempts,
                None => self.unready(sequence).unwrap_or(0),
            };
            self.finish(sequence);
            outcomes.push(Outcome::Expired { sequence, attempts });
        }
        outcomes
    }

    /// The earliest ack deadline of an in-flight message.
    pub fn next_deadline_ns(&self) -> Option<u64> {
        self.in_flight.first_deadline()
    }

    /// When something next needs doing (a deadline, a retry, a not-before time or an expiry), if
    /// anything is pending.
    pub fn next_wakeup_ns(&self) -> Option<u64> {
        let deadline = self.next_deadline_ns();
        let retry = self.waiting.first_time();
        let expiry = self
            .expiries
            .iter()
            .find(|(_, s)| !self.in_flight.contains(*s))
            .map(|(at, _)| *at);
        deadline.into_iter().chain(retry).chain(expiry).min()
    }

    fn make_ready(&mut self, sequence: u64, attempts: u32) {
        let priority = self.attrs.get(&sequence).map_or(0, |a| a.priority);
        self.ready
            .insert((std::cmp::Reverse(priority), attempts == 0, sequence), attempts);
    }

    fn unready(&mut self, sequence: u64) -> Option<u32> {
        let priority = self.attrs.get(&sequence).map_or(0, |a| a.priority);
        self.ready
            .remove(&(std::cmp::Reverse(priority), true, sequence))
            .or_else(|| self.ready.remove(&(std::cmp::Reverse(priority), false, sequence)))
    }

    fn failed(&mut self, sequence: u64, attempt: u32, delay: Option<Duration>, now_ns: u64) -> Outcome {
        if self.policy.max_deliveries.is_some_and(|max| attempt >= max) {
            self.finish(sequence);
            return Outcome::DeadLetter {
                sequence,
                attempts: attempt,
                reason: DeadReason::MaxDeliveries,
            };
        }
        let delay = delay.unwrap_or_else(|| self.backoff(attempt));
        let at_ns = now_ns + nanos(delay);
        self.waiting.insert(
            sequence,
            Waiting {
                at_ns,
                attempts: attempt,
            },
        );
        Outcome::Retry {
            sequence,
            at_ns,
            attempt,
        }
    }

    fn backoff(&mut self, attempt: u32) -> Duration {
        let schedule = &self.policy.backoff;
        let base = match schedule.len() {
            0 => Duration::ZERO,
            n => schedule[(attempt as usize).saturating_sub(1).min(n - 1)],
        };
        if self.policy.jitter > 0.0 && !base.is_zero() {
            let spread = self.rng.random_range(-self.policy.jitter..=self.policy.jitter);
            base.mul_f64(1.0 + spread)
        } else {
            base
        }
    }

    fn finish(&mut self, sequence: u64) {
        if let Some(attrs) = self.attrs.remove(&sequence)
            && let Some(at) = attrs.expires_ns
        {
            self.expiries.remove(&(at, sequence));
        }
        if sequence >= self.floor {
            self.finished.insert(sequence);
        }
        self.advance_floor();
    }

    fn advance_floor(&mut self) {
        while let Some(end) = self.finished.take_from(self.floor) {
            self.floor = end;
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
