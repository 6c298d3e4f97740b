//! Dead letters of a durable subscription: decided by the state machine, stored in `{topic}.dlq`
//! by the dispatcher. A dead letter is held unfinished in the subscription's state
//! ([`SubscriptionState::hold`]) from the moment it is decided until the DLQ says it has it, so
//! no state write covers one that is not stored; one the DLQ refuses (a full disk, failing
//! storage, the topic limit) is tried again with a backoff, and a restart dead-letters it again.

use std::collections::HashMap;
use std::time::Duration;

use mycelium_storage::StoredMessage;

use super::DispatchHost;
use super::dispatcher::{DurableSub, read_each_off_worker};
use crate::consumer::state::{DeadReason, Outcome, SubscriptionState};
use crate::dlq::AttemptRecord;
use crate::routing::spec::OnExpired;
use crate::routing::topic::TopicCounters;
use crate::store::io::Disk;

/// The DLQ's answer to one dead letter: stored, or why not.
pub(crate) type DeadLetterAnswer = tokio::sync::oneshot::Receiver<Result<crate::store::Stored, String>>;

/// A dead letter decided but not yet stored in the DLQ: the dispatcher reads its original.
#[derive(Debug, Clone)]
pub(crate) struct PendingDead {
    pub(crate) sequence: u64,
    pub(crate) attempts: u32,
    pub(crate) reason: &'static str,
    pub(crate) history: Vec<AttemptRecord>,
}

impl DurableSub {
    /// Stores the dead letters decided since the last pass, and the held ones whose retry is due,
    /// waiting for the DLQ's answer to each.
    pub(crate) async fn store_dead_letters(&self, host: &dyn DispatchHost, backend: &std::sync::Arc<Disk>) {
        let dead = std::mem::take(&mut *self.dead.lock());
        let retried = self.due_held();
        if dead.is_empty() && retried.is_empty() {
            return;
        }
        let tries: HashMap<u64, u32> = retried.iter().map(|(t, p)| (p.sequence, *t)).collect();
        let all: Vec<PendingDead> = dead
            .into_iter()
            .chain(retried.into_iter().map(|(_, p)| p))
            .collect();
        let sequences = all.iter().map(|d| d.sequence).collect();
        let originals = read_each_off_worker(backend, &self.topic, sequences).await;
        for (pending, answer) in self.dead_letter_all(host, all, originals) {
            let stored = match answer {
                Some(answer) => answer.await.is_ok_and(|r| r.is_ok()),
                None => false,
            };
            let tries = tries.get(&pending.sequence).copied().unwrap_or(0);
            self.settle_dead(host, pending, stored, tries);
        }
    }

    /// Hands dead letters to the DLQ with their originals (one gone to retention: dropped); each
    /// comes back with the DLQ's answer to wait for (none: refused at once).
    pub(super) fn dead_letter_all(
        &self,
        host: &dyn DispatchHost,
        dead: Vec<PendingDead>,
        mut originals: HashMap<u64, StoredMessage>,
    ) -> Vec<(PendingDead, Option<DeadLetterAnswer>)> {
        let mut out = Vec::with_capacity(dead.len());
        for pending in dead {
            let PendingDead {
                sequence,
                attempts,
                reason,
                ref history,
            } = pending;
            let Some(original) = originals.remove(&sequence) else {
                tracing::debug!(
                    topic = self.topic.name(),
                    sequence,
                    "dead letter gone to retention"
                );
                self.state.lock().unhold(sequence);
                continue;
            };
            let _span = (mycelium_trace::enabled() && mycelium_trace::has_context(&original.headers))
                .then(|| mycelium_trace::span("mycelium.dead_letter", self.topic.name(), &original.headers));
            let record = crate::dlq::DeadLetter {
                topic: self.topic.name(),
                subscription: &self.name,
                sequence,
                message_id: original.id,
                published_ns: original.publish_ns,
                attempts,
                reason,
                history,
            };
            let answer = host.dead_letter(&self.topic, record.headers(&original.headers), original);
            out.push((pending, answer));
        }
        out
    }

    /// Settles a dead letter by the DLQ's answer: stored, it is finished; refused, it is held
    /// unfinished (so the state written keeps it, and a restart dead-letters it again) and tried
    /// again after a backoff that doubles from 100 ms to 30 s.
    pub(super) fn settle_dead(
        &self,
        host: &dyn DispatchHost,
        pending: PendingDead,
        stored: bool,
        tries: u32,
    ) {
        if stored {
            self.state.lock().unhold(pending.sequence);
            self.history.lock().remove(&pending.sequence);
            return;
        }
        if tries == 0 {
            host.dead_letter_held();
            tracing::warn!(
                topic = self.topic.name(),
                subscription = %self.name,
                sequence = pending.sequence,
                "the dead-letter queue refused a dead letter (storage full or failing); it is kept and tried again"
            );
        }
        let backoff = Duration::from_millis(100)
            .saturating_mul(1 << tries.min(9))
            .min(Duration::from_secs(30));
        self.state.lock().hold(pending.sequence, pending.attempts);
        self.held
            .lock()
            .push((tokio::time::Instant::now() + backoff, tries + 1, pending));
    }

    /// Held dead letters whose retry is due, taken out of the held list.
    fn due_held(&self) -> Vec<(u32, PendingDead)> {
        let now = tokio::time::Instant::now();
        let mut held = self.held.lock();
        let (due, later): (Vec<_>, Vec<_>) = held.drain(..).partition(|(at, _, _)| *at <= now);
        *held = later;
        due.into_iter().map(|(_, tries, p)| (tries, p)).collect()
    }

    /// When the next held dead letter is to be tried again.
    pub(super) fn next_held_retry(&self) -> Option<tokio::time::Instant> {
        self.held.lock().iter().map(|(at, _, _)| *at).min()
    }

    /// Acts on what the state machine decided: counts it, and queues a dead letter for the
    /// dispatcher. Call with the state's lock held.
    pub(super) fn handle_outcome(&self, state: &mut SubscriptionState, outcome: Outcome) {
        let spec = self.topic.spec();
        let counters = &self.topic.counters;
        let (sequence, attempts, reason) = match outcome {
            Outcome::Done | Outcome::Retry { .. } => return,
            Outcome::Expired { sequence, attempts } => {
                TopicCounters::add(&counters.expired, 1);
                if spec.on_expired != OnExpired::DeadLetter || !spec.dead_letter {
                    self.history.lock().remove(&sequence);
                    return;
                }
                self.record(sequence, "expired", None);
                counters.dead(2);
                (sequence, attempts, "expired")
            }
            Outcome::DeadLetter {
                sequence,
                attempts,
                reason,
            } => {
                let index = match reason {
                    DeadReason::MaxDeliveries => 0,
                    DeadReason::Terminated => 1,
                    DeadReason::Expired => 2,
                    DeadReason::Unmatched => 3,
                };
                counters.dead(index);
                let reason = crate::routing::topic::DEAD_REASONS[index];
                if !spec.dead_letter {
                    tracing::debug!(
                        topic = self.topic.name(),
                        sequence,
                        reason,
                        "dropped: the topic has no dead-letter queue"
                    );
                    self.history.lock().remove(&sequence);
                    return;
                }
                (sequence, attempts, reason)
            }
        };
        let history = self.history.lock().remove(&sequence).unwrap_or_default();
        // Unfinished in every state written until the DLQ has it.
        state.hold(sequence, attempts);
        self.dead.lock().push(PendingDead {
            sequence,
            attempts,
            reason,
            history,
        });
        self.wake.notify_one();
    }
}
