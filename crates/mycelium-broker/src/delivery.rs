//! The delivery state of one durable subscription (at-least-once and exactly-once topics): which
//! messages are acknowledged, in flight, waiting for a retry, or dead-lettered. Pure: time is
//! passed in as monotonic nanoseconds, randomness comes from a seeded generator, nothing does I/O,
//! so every rule is tested against a trivially correct model (`tests/delivery_model.rs`).
//!
//! Rules:
//! - A message is handed out only when the subscription has room (`max_in_flight`), and it is in
//!   flight to at most one consumer at a time.
//! - Retries that are due go out before new messages; both in sequence order.
//! - ACK of an in-flight message finishes it for ever: it is never handed out again.
//! - NACK, or an ack deadline passing, schedules a retry after the backoff for that attempt (or the
//!   NACK's own delay); once `max_deliveries` attempts have failed, the message is dead-lettered.
//! - IN_PROGRESS pushes the deadline out by `ack_wait`; TERM dead-letters at once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

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
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        DeliveryPolicy {
            ack_wait: Duration::from_secs(30),
            max_deliveries: Some(5),
            backoff: [2, 4, 8, 16, 32].into_iter().map(Duration::from_secs).collect(),
            jitter: 0.2,
            max_in_flight: 1000,
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InFlight {
    deadline_ns: u64,
    attempt: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Waiting {
    at_ns: u64,
    attempts: u32,
}

/// The state of one durable subscription.
#[derive(Debug, Clone)]
pub struct SubscriptionState {
    policy: DeliveryPolicy,
    /// Every sequence below this is finished (acked or dead-lettered).
    floor: u64,
    /// The lowest sequence never handed out.
    next_new: u64,
    in_flight: BTreeMap<u64, InFlight>,
    waiting: BTreeMap<u64, Waiting>,
    /// Finished sequences above the floor (acknowledged out of order).
    finished: BTreeSet<u64>,
    rng: SmallRng,
}

impl SubscriptionState {
    /// A subscription that starts at sequence `start`.
    pub fn new(policy: DeliveryPolicy, start: u64, seed: u64) -> Self {
        SubscriptionState {
            policy,
            floor: start,
            next_new: start,
            in_flight: BTreeMap::new(),
            waiting: BTreeMap::new(),
            finished: BTreeSet::new(),
            rng: SmallRng::seed_from_u64(seed),
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

    /// Messages waiting for a retry.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// The attempt count of an in-flight message.
    pub fn attempt_of(&self, sequence: u64) -> Option<u32> {
        self.in_flight.get(&sequence).map(|f| f.attempt)
    }

    /// Hands out up to `max` deliveries at `now_ns`, from messages below `available` (the log's
    /// next sequence): due retries first, then new messages, within `max_in_flight`.
    pub fn next_deliveries(&mut self, now_ns: u64, available: u64, max: usize) -> Vec<Delivery> {
        let room = self
            .policy
            .max_in_flight
            .saturating_sub(self.in_flight.len())
            .min(max);
        let mut out = Vec::new();
        let due: Vec<u64> = self
            .waiting
            .iter()
            .filter(|(_, w)| w.at_ns <= now_ns)
            .map(|(s, _)| *s)
            .take(room)
            .collect();
        for sequence in due {
            let waiting = self.waiting.remove(&sequence).expect("listed above");
            let attempt = waiting.attempts + 1;
            self.in_flight.insert(
                sequence,
                InFlight {
                    deadline_ns: now_ns + nanos(self.policy.ack_wait),
                    attempt,
                },
            );
            out.push(Delivery { sequence, attempt });
        }
        // Everything below the floor is finished, including messages skipped before delivery.
        self.next_new = self.next_new.max(self.floor);
        while out.len() < room && self.next_new < available {
            let sequence = self.next_new;
            self.next_new += 1;
            if self.finished.contains(&sequence) {
                continue;
            }
            self.in_flight.insert(
                sequence,
                InFlight {
                    deadline_ns: now_ns + nanos(self.policy.ack_wait),
                    attempt: 1,
                },
            );
            out.push(Delivery { sequence, attempt: 1 });
        }
        out
    }

    /// The consumer finished `sequence`.
    ///
    /// # Errors
    /// [`AckError::NotInFlight`].
    pub fn ack(&mut self, sequence: u64) -> Result<Outcome, AckError> {
        self.in_flight
            .remove(&sequence)
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
            .remove(&sequence)
            .ok_or(AckError::NotInFlight(sequence))?;
        Ok(self.failed(sequence, flight.attempt, delay, now_ns))
    }

    /// The consumer needs more time for `sequence`: its deadline moves to `now + ack_wait`.
    ///
    /// # Errors
    /// [`AckError::NotInFlight`].
    pub fn in_progress(&mut self, sequence: u64, now_ns: u64) -> Result<Outcome, AckError> {
        let flight = self
            .in_flight
            .get_mut(&sequence)
            .ok_or(AckError::NotInFlight(sequence))?;
        flight.deadline_ns = now_ns + nanos(self.policy.ack_wait);
        Ok(Outcome::Done)
    }

    /// The consumer gives up on `sequence`: dead-letter it now.
    ///
    /// # Errors
    /// [`AckError::NotInFlight`].
    pub fn term(&mut self, sequence: u64) -> Result<Outcome, AckError> {
        let flight = self
            .in_flight
            .remove(&sequence)
            .ok_or(AckError::NotInFlight(sequence))?;
        self.finish(sequence);
        Ok(Outcome::DeadLetter {
            sequence,
            attempts: flight.attempt,
            reason: DeadReason::Terminated,
        })
    }

    /// Finishes a message without delivering it (expired by TTL, or moved elsewhere).
    pub fn skip(&mut self, sequence: u64) {
        self.in_flight.remove(&sequence);
        self.waiting.remove(&sequence);
        if sequence >= self.floor {
            self.finish(sequence);
        }
    }

    /// Handles every in-flight message whose deadline passed by `now_ns`.
    pub fn expire(&mut self, now_ns: u64) -> Vec<Outcome> {
        let late: Vec<(u64, u32)> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.deadline_ns <= now_ns)
            .map(|(s, f)| (*s, f.attempt))
            .collect();
        late.into_iter()
            .map(|(sequence, attempt)| {
                self.in_flight.remove(&sequence);
                self.failed(sequence, attempt, None, now_ns)
            })
            .collect()
    }

    /// The earliest ack deadline of an in-flight message.
    pub fn next_deadline_ns(&self) -> Option<u64> {
        self.in_flight.values().map(|f| f.deadline_ns).min()
    }

    /// When something next needs doing (a deadline or a retry), if anything is pending.
    pub fn next_wakeup_ns(&self) -> Option<u64> {
        let deadline = self.in_flight.values().map(|f| f.deadline_ns).min();
        let retry = self.waiting.values().map(|w| w.at_ns).min();
        deadline.into_iter().chain(retry).min()
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
        self.finished.insert(sequence);
        while self.finished.remove(&self.floor) {
            self.floor += 1;
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
