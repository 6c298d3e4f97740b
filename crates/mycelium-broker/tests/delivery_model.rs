//! Model-based test of the durable subscription state: random sequences of admissions (with
//! priorities, delays and TTLs), deliveries, acks, nacks, in-progress, terms, skips and passing
//! time, applied to `SubscriptionState` and to a trivially correct model (one status per
//! sequence, linear scans), which must agree on every output. Plus the rules a user relies on,
//! checked directly.

use std::collections::BTreeMap;
use std::time::Duration;

use mycelium_broker::delivery::{
    AckError, Attrs, DeadReason, Delivery, DeliveryPolicy, Finished, Outcome, Snapshot, SubscriptionState,
};
use proptest::prelude::*;

const MS: u64 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    /// Ready to go out; `attempts` made so far.
    Ready {
        attempts: u32,
    },
    InFlight {
        deadline: u64,
        attempt: u32,
    },
    /// Held until `at` (a retry, or a delayed new message with `attempts` 0).
    Waiting {
        at: u64,
        attempts: u32,
    },
    Finished,
}

/// The obviously correct reference. Sequences not in `status` are not admitted yet.
struct Model {
    policy: DeliveryPolicy,
    status: BTreeMap<u64, Status>,
    attrs: BTreeMap<u64, Attrs>,
    next: u64,
}

impl Model {
    fn new(policy: DeliveryPolicy) -> Self {
        Model {
            policy,
            status: BTreeMap::new(),
            attrs: BTreeMap::new(),
            next: 1,
        }
    }

    fn backoff(&self, attempt: u32) -> u64 {
        let b = &self.policy.backoff;
        b[(attempt as usize - 1).min(b.len() - 1)].as_nanos() as u64
    }

    fn admit(&mut self, seq: u64, attrs: Attrs, now: u64) -> Option<Outcome> {
        self.next = seq + 1;
        if self.status.get(&seq) == Some(&Status::Finished) {
            return None;
        }
        self.attrs.insert(seq, attrs);
        if attrs.expires_ns.is_some_and(|e| e <= now) {
            self.status.insert(seq, Status::Finished);
            return Some(Outcome::Expired {
                sequence: seq,
                attempts: 0,
            });
        }
        let status = match attrs.not_before_ns {
            Some(at) if at > now => Status::Waiting { at, attempts: 0 },
            _ => Status::Ready { attempts: 0 },
        };
        self.status.insert(seq, status);
        None
    }

    fn next_deliveries(&mut self, now: u64, max: usize) -> Vec<Delivery> {
        for status in self.status.values_mut() {
            if let Status::Waiting { at, attempts } = *status
                && at <= now
            {
                *status = Status::Ready { attempts };
            }
        }
        let in_flight = self
            .status
            .values()
            .filter(|s| matches!(s, Status::InFlight { .. }))
            .count();
        let room = self.policy.max_in_flight.saturating_sub(in_flight).min(max);
        let mut ready: Vec<(std::cmp::Reverse<u8>, bool, u64, u32)> = self
            .status
            .iter()
            .filter_map(|(seq, s)| match s {
                Status::Ready { attempts } => Some((
                    std::cmp::Reverse(self.attrs[seq].priority),
                    *attempts == 0,
                    *seq,
                    *attempts,
                )),
                _ => None,
            })
            .collect();
        ready.sort();
        let ack_wait = self.policy.ack_wait.as_nanos() as u64;
        ready
            .into_iter()
            .take(room)
            .map(|(_, _, seq, attempts)| {
                self.status.insert(
                    seq,
                    Status::InFlight {
                        deadline: now + ack_wait,
                        attempt: attempts + 1,
                    },
                );
                Delivery {
                    sequence: seq,
                    attempt: attempts + 1,
                }
            })
            .collect()
    }

    fn failed(&mut self, seq: u64, attempt: u32, delay: Option<Duration>, now: u64) -> Outcome {
        if self.policy.max_deliveries.is_some_and(|m| attempt >= m) {
            self.status.insert(seq, Status::Finished);
            return Outcome::DeadLetter {
                sequence: seq,
                attempts: attempt,
                reason: DeadReason::MaxDeliveries,
            };
        }
        let at = now + delay.map_or_else(|| self.backoff(attempt), |d| d.as_nanos() as u64);
        self.status.insert(
            seq,
            Status::Waiting {
                at,
                attempts: attempt,
            },
        );
        Outcome::Retry {
            sequence: seq,
            at_ns: at,
            attempt,
        }
    }

    fn expire(&mut self, now: u64) -> Vec<Outcome> {
        let late: Vec<(u64, u32)> = self
            .status
            .iter()
            .filter_map(|(seq, st)| match st {
                Status::InFlight { deadline, attempt } if *deadline <= now => Some((*seq, *attempt)),
                _ => None,
            })
            .collect();
        let mut out: Vec<Outcome> = late
            .into_iter()
            .map(|(seq, attempt)| self.failed(seq, attempt, None, now))
            .collect();
        let expired: Vec<(u64, u32)> = self
            .status
            .iter()
            .filter_map(|(seq, st)| {
                let attempts = match st {
                    Status::Ready { attempts } | Status::Waiting { attempts, .. } => *attempts,
                    _ => return None,
                };
                self.attrs[seq]
                    .expires_ns
                    .is_some_and(|e| e <= now)
                    .then_some((*seq, attempts))
            })
            .collect();
        for (seq, attempts) in expired {
            self.status.insert(seq, Status::Finished);
            out.push(Outcome::Expired {
                sequence: seq,
                attempts,
            });
        }
        out
    }

    fn in_flight(&self, seq: u64) -> Result<u32, AckError> {
        match self.status.get(&seq) {
            Some(Status::InFlight { attempt, .. }) => Ok(*attempt),
            _ => Err(AckError::NotInFlight(seq)),
        }
    }

    fn floor(&self) -> u64 {
        (1..)
            .find(|seq| self.status.get(seq) != Some(&Status::Finished))
            .expect("finite")
    }

    fn wakeup(&self) -> Option<u64> {
        self.status
            .iter()
            .flat_map(|(seq, s)| {
                let expiry = self.attrs.get(seq).and_then(|a| a.expires_ns);
                match s {
                    Status::InFlight { deadline, .. } => vec![Some(*deadline)],
                    Status::Waiting { at, .. } => vec![Some(*at), expiry],
                    Status::Ready { .. } => vec![expiry],
                    Status::Finished => vec![],
                }
            })
            .flatten()
            .min()
    }
}

#[derive(Debug, Clone)]
enum Op {
    Admit {
        count: u64,
        priority: u8,
        delay: Option<u64>,
        ttl: Option<u64>,
    },
    Deliver(usize),
    Ack(u64),
    Nack(u64, Option<u64>),
    InProgress(u64),
    Term(u64),
    Skip(u64),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let seq = 1u64..=24;
    prop_oneof![
        3 => (0u64..4, 0u8..4, proptest::option::weighted(0.2, 0u64..100), proptest::option::weighted(0.2, 0u64..300))
            .prop_map(|(count, priority, delay, ttl)| Op::Admit { count, priority, delay, ttl }),
        3 => (0usize..5).prop_map(Op::Deliver),
        3 => seq.clone().prop_map(Op::Ack),
        2 => (seq.clone(), proptest::option::of(0u64..80)).prop_map(|(s, d)| Op::Nack(s, d)),
        1 => seq.clone().prop_map(Op::InProgress),
        1 => seq.clone().prop_map(Op::Term),
        1 => seq.prop_map(Op::Skip),
        3 => (0u64..120).prop_map(Op::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn state_machine_agrees_with_the_model(
        ops in proptest::collection::vec(op(), 1..120),
        max_in_flight in 1usize..6,
        max_deliveries in proptest::option::of(1u32..4),
    ) {
        let policy = DeliveryPolicy {
            ack_wait: Duration::from_millis(50),
            max_deliveries,
            backoff: vec![Duration::from_millis(10), Duration::from_millis(20), Duration::from_millis(40)],
            jitter: 0.0,
            max_in_flight,
            read_ahead: 1000,
        };
        let mut real = SubscriptionState::new(policy.clone(), 1, 7);
        let mut model = Model::new(policy);
        let mut now = 0u64;
        let mut acked = std::collections::HashSet::new();
        for op in ops {
            match op {
                Op::Admit { count, priority, delay, ttl } => {
                    for _ in 0..count {
                        let seq = model.next;
                        if seq > 40 {
                            break;
                        }
                        let attrs = Attrs {
                            priority,
                            not_before_ns: delay.map(|d| now + d * MS),
                            expires_ns: ttl.map(|t| now + t * MS),
                        };
                        prop_assert_eq!(real.next_admit(), seq.max(real.floor()));
                        prop_assert_eq!(real.admit(seq, attrs, now), model.admit(seq, attrs, now));
                    }
                }
                Op::Deliver(max) => {
                    let got = real.next_deliveries(now, max);
                    prop_assert_eq!(&got, &model.next_deliveries(now, max));
                    for d in &got {
                        prop_assert!(!acked.contains(&d.sequence), "acked {} was delivered again", d.sequence);
                    }
                }
                Op::Ack(s) => {
                    let expected = model.in_flight(s).map(|_| { model.status.insert(s, Status::Finished); Outcome::Done });
                    let got = real.ack(s);
                    if got.is_ok() { acked.insert(s); }
                    prop_assert_eq!(got, expected);
                }
                Op::Nack(s, delay) => {
                    let delay = delay.map(Duration::from_millis);
                    let expected = model.in_flight(s).map(|attempt| model.failed(s, attempt, delay, now));
                    prop_assert_eq!(real.nack(s, delay, now), expected);
                }
                Op::InProgress(s) => {
                    let expected = model.in_flight(s).map(|attempt| {
                        let deadline = now + 50 * MS;
                        model.status.insert(s, Status::InFlight { deadline, attempt });
                        Outcome::Done
                    });
                    prop_assert_eq!(real.in_progress(s, now), expected);
                }
                Op::Term(s) => {
                    let expected = model.in_flight(s).map(|attempt| {
                        model.status.insert(s, Status::Finished);
                        Outcome::DeadLetter { sequence: s, attempts: attempt, reason: DeadReason::Terminated }
                    });
                    prop_assert_eq!(real.term(s), expected);
                }
                Op::Skip(s) => {
                    real.skip(s);
                    model.status.insert(s, Status::Finished);
                    acked.insert(s);
                }
                Op::Advance(ms) => {
                    now += ms * MS;
                    prop_assert_eq!(real.expire(now), model.expire(now));
                }
            }
            prop_assert_eq!(real.floor(), model.floor());
            prop_assert_eq!(real.next_wakeup_ns(), model.wakeup());
            let model_in_flight = model.status.values().filter(|s| matches!(s, Status::InFlight { .. })).count();
            prop_assert_eq!(real.in_flight(), model_in_flight);
            prop_assert!(real.in_flight() <= max_in_flight);
            // A restart from the snapshot never hands out what is finished.
            let restored = SubscriptionState::restore(DeliveryPolicy::default(), &real.snapshot(), 1);
            prop_assert_eq!(restored.floor(), real.floor());
        }
    }
}

#[test]
fn default_backoff_is_the_seed_schedule_with_jitter() {
    let mut state = SubscriptionState::new(
        DeliveryPolicy {
            max_deliveries: None,
            ..DeliveryPolicy::default()
        },
        1,
        42,
    );
    let mut now = 0;
    let mut delays = Vec::new();
    for _ in 0..6 {
        let d = {
            admit_to(&mut state, 2, now);
            state.next_deliveries(now, 10)
        };
        assert_eq!(d.len(), 1);
        match state.nack(1, None, now).unwrap() {
            Outcome::Retry { at_ns, .. } => {
                delays.push((at_ns - now) as f64 / 1e9);
                now = at_ns;
            }
            other => panic!("{other:?}"),
        }
    }
    let base = [2.0, 4.0, 8.0, 16.0, 32.0, 32.0];
    for (delay, base) in delays.iter().zip(base) {
        assert!(
            (delay / base - 1.0).abs() <= 0.2 + 1e-9,
            "{delay} s vs {base} s +-20%: {delays:?}"
        );
    }
    assert!(
        delays.iter().zip(base).any(|(d, b)| (d / b - 1.0).abs() > 1e-6),
        "jitter spreads retries"
    );
}

#[test]
fn max_deliveries_dead_letters_after_the_last_attempt() {
    let policy = DeliveryPolicy {
        max_deliveries: Some(2),
        jitter: 0.0,
        ..DeliveryPolicy::default()
    };
    let mut state = SubscriptionState::new(policy, 1, 1);
    assert_eq!(
        {
            admit_to(&mut state, 2, 0);
            state.next_deliveries(0, 1)
        },
        vec![Delivery {
            sequence: 1,
            attempt: 1
        }]
    );
    assert!(matches!(
        state.nack(1, None, 0).unwrap(),
        Outcome::Retry { attempt: 1, .. }
    ));
    let later = 10_000 * MS;
    assert_eq!(
        state.next_deliveries(later, 1),
        vec![Delivery {
            sequence: 1,
            attempt: 2
        }]
    );
    // The deadline passes on the second attempt: that was the last one.
    let outcomes = state.expire(later + 31_000 * MS);
    assert_eq!(
        outcomes,
        vec![Outcome::DeadLetter {
            sequence: 1,
            attempts: 2,
            reason: DeadReason::MaxDeliveries
        }]
    );
    assert_eq!(state.floor(), 2);
    assert!(
        state.next_deliveries(later * 10, 1).is_empty(),
        "a dead-lettered message is never redelivered"
    );
}

#[test]
fn prefetch_stops_delivery_until_acks_make_room() {
    let policy = DeliveryPolicy {
        max_in_flight: 3,
        ..DeliveryPolicy::default()
    };
    let mut state = SubscriptionState::new(policy, 10, 1);
    admit_to(&mut state, 100, 0);
    let first: Vec<u64> = state.next_deliveries(0, 10).iter().map(|d| d.sequence).collect();
    assert_eq!(first, [10, 11, 12]);
    assert!(state.next_deliveries(0, 10).is_empty());
    state.ack(11).unwrap();
    assert_eq!(
        state.next_deliveries(0, 10),
        vec![Delivery {
            sequence: 13,
            attempt: 1
        }]
    );
    assert_eq!(state.floor(), 10, "10 is still in flight");
    assert_eq!(
        state.ack(11),
        Err(AckError::NotInFlight(11)),
        "a second ACK is refused"
    );
    state.ack(10).unwrap();
    assert_eq!(state.floor(), 12, "10 and 11 done");
}

#[test]
fn in_progress_extends_the_deadline() {
    let policy = DeliveryPolicy {
        ack_wait: Duration::from_secs(30),
        ..DeliveryPolicy::default()
    };
    let mut state = SubscriptionState::new(policy, 1, 1);
    admit_to(&mut state, 2, 0);
    state.next_deliveries(0, 1);
    state.in_progress(1, 20_000 * MS).unwrap();
    assert!(state.expire(45_000 * MS).is_empty(), "deadline moved to 50 s");
    assert_eq!(state.expire(50_000 * MS).len(), 1);
}

/// Admits every sequence below `available` with default attributes.
fn admit_to(state: &mut SubscriptionState, available: u64, now: u64) {
    while state.next_admit() < available {
        let seq = state.next_admit();
        assert_eq!(state.admit(seq, Attrs::default(), now), None);
    }
}

#[test]
fn higher_priority_goes_first_and_fifo_within_a_priority() {
    let mut state = SubscriptionState::new(DeliveryPolicy::default(), 1, 1);
    for (seq, priority) in [(1, 0), (2, 5), (3, 9), (4, 5), (5, 0)] {
        let attrs = Attrs {
            priority,
            ..Attrs::default()
        };
        assert_eq!(state.admit(seq, attrs, 0), None);
    }
    let order: Vec<u64> = state.next_deliveries(0, 10).iter().map(|d| d.sequence).collect();
    assert_eq!(order, [3, 2, 4, 1, 5]);
}

#[test]
fn a_delayed_message_waits_for_its_time() {
    let mut state = SubscriptionState::new(DeliveryPolicy::default(), 1, 1);
    let delayed = Attrs {
        not_before_ns: Some(500 * MS),
        ..Attrs::default()
    };
    state.admit(1, delayed, 0);
    state.admit(2, Attrs::default(), 0);
    let first: Vec<u64> = state.next_deliveries(0, 10).iter().map(|d| d.sequence).collect();
    assert_eq!(first, [2], "1 is held back");
    assert_eq!(
        state.next_wakeup_ns(),
        Some(500 * MS),
        "wakes for the delay (2's deadline is 30 s)"
    );
    assert!(state.next_deliveries(499 * MS, 10).is_empty());
    assert_eq!(
        state.next_deliveries(500 * MS, 10),
        vec![Delivery {
            sequence: 1,
            attempt: 1
        }]
    );
}

#[test]
fn an_expired_message_is_never_delivered() {
    let mut state = SubscriptionState::new(
        DeliveryPolicy {
            max_in_flight: 1,
            ..DeliveryPolicy::default()
        },
        1,
        1,
    );
    let short = Attrs {
        expires_ns: Some(100 * MS),
        ..Attrs::default()
    };
    state.admit(1, Attrs::default(), 0);
    state.admit(2, short, 0);
    assert_eq!(
        state.next_deliveries(0, 10).len(),
        1,
        "prefetch 1: only 1 goes out"
    );
    assert_eq!(
        state.expire(100 * MS),
        vec![Outcome::Expired {
            sequence: 2,
            attempts: 0
        }]
    );
    state.ack(1).unwrap();
    assert!(state.next_deliveries(200 * MS, 10).is_empty());
    assert_eq!(state.floor(), 3);
    // Already expired when admitted: finished at once.
    assert_eq!(
        state.admit(3, short, 200 * MS),
        Some(Outcome::Expired {
            sequence: 3,
            attempts: 0
        })
    );
}

#[test]
fn a_restored_state_keeps_acks_out_of_order_and_attempt_counts() {
    let policy = DeliveryPolicy {
        max_deliveries: Some(3),
        jitter: 0.0,
        ..DeliveryPolicy::default()
    };
    let mut state = SubscriptionState::new(policy.clone(), 1, 1);
    admit_to(&mut state, 5, 0);
    assert_eq!(state.next_deliveries(0, 10).len(), 4);
    state.ack(2).unwrap();
    state.ack(4).unwrap();
    state.nack(1, None, 0).unwrap(); // attempt 1 of message 1 failed
    let snapshot = state.snapshot();
    assert_eq!(
        snapshot,
        Snapshot {
            floor: 1,
            finished: vec![Finished::One(2), Finished::One(4)],
            attempts: vec![(1, 1), (3, 1)],
            filter: None,
            owner: None,
        }
    );
    let json = serde_json::to_string(&snapshot).unwrap();
    let snapshot: Snapshot = serde_json::from_str(&json).unwrap();

    let mut restored = SubscriptionState::restore(policy, &snapshot, 1);
    admit_to(&mut restored, 5, 0);
    let again = restored.next_deliveries(0, 10);
    assert_eq!(
        again,
        vec![
            Delivery {
                sequence: 1,
                attempt: 2
            },
            Delivery {
                sequence: 3,
                attempt: 2
            },
        ],
        "unacked messages come back with their attempt counts; 2 and 4 never do"
    );
}

#[test]
fn a_restored_message_out_of_attempts_is_dead_lettered_on_admission() {
    let policy = DeliveryPolicy {
        max_deliveries: Some(2),
        ..DeliveryPolicy::default()
    };
    let snapshot = Snapshot {
        floor: 1,
        finished: vec![],
        attempts: vec![(1, 2)],
        filter: None,
        owner: None,
    };
    let mut restored = SubscriptionState::restore(policy, &snapshot, 1);
    assert_eq!(
        restored.admit(1, Attrs::default(), 0),
        Some(Outcome::DeadLetter {
            sequence: 1,
            attempts: 2,
            reason: DeadReason::MaxDeliveries
        })
    );
    assert_eq!(restored.floor(), 2);
}
