//! Model-based test of the durable subscription state: random sequences of deliveries, acks,
//! nacks, in-progress, terms, skips and passing time, applied to `SubscriptionState` and to a
//! trivially correct model (one status per sequence, linear scans), which must agree on every
//! output. Plus the rules a user relies on, checked directly.

use std::collections::BTreeMap;
use std::time::Duration;

use mycelium_broker::delivery::{AckError, DeadReason, Delivery, DeliveryPolicy, Outcome, SubscriptionState};
use proptest::prelude::*;

const MS: u64 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    New,
    InFlight { deadline: u64, attempt: u32 },
    Waiting { at: u64, attempts: u32 },
    Finished,
}

/// The obviously correct reference.
struct Model {
    policy: DeliveryPolicy,
    status: BTreeMap<u64, Status>,
}

impl Model {
    fn new(policy: DeliveryPolicy) -> Self {
        Model {
            policy,
            status: (1..=40).map(|s| (s, Status::New)).collect(),
        }
    }

    fn backoff(&self, attempt: u32) -> u64 {
        let b = &self.policy.backoff;
        b[(attempt as usize - 1).min(b.len() - 1)].as_nanos() as u64
    }

    fn next_deliveries(&mut self, now: u64, available: u64, max: usize) -> Vec<Delivery> {
        let in_flight = self
            .status
            .values()
            .filter(|s| matches!(s, Status::InFlight { .. }))
            .count();
        let room = self.policy.max_in_flight.saturating_sub(in_flight).min(max);
        let ack_wait = self.policy.ack_wait.as_nanos() as u64;
        let mut out = Vec::new();
        for (seq, status) in self.status.iter_mut() {
            if out.len() == room {
                break;
            }
            if let Status::Waiting { at, attempts } = *status
                && at <= now
            {
                *status = Status::InFlight {
                    deadline: now + ack_wait,
                    attempt: attempts + 1,
                };
                out.push(Delivery {
                    sequence: *seq,
                    attempt: attempts + 1,
                });
            }
        }
        for (seq, status) in self.status.iter_mut() {
            if out.len() == room || *seq >= available {
                break;
            }
            if *status == Status::New {
                *status = Status::InFlight {
                    deadline: now + ack_wait,
                    attempt: 1,
                };
                out.push(Delivery {
                    sequence: *seq,
                    attempt: 1,
                });
            }
        }
        out
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

    fn in_flight(&self, seq: u64) -> Result<u32, AckError> {
        match self.status.get(&seq) {
            Some(Status::InFlight { attempt, .. }) => Ok(*attempt),
            _ => Err(AckError::NotInFlight(seq)),
        }
    }

    fn floor(&self) -> u64 {
        self.status
            .iter()
            .find(|(_, s)| **s != Status::Finished)
            .map_or(41, |(seq, _)| *seq)
    }

    fn wakeup(&self) -> Option<u64> {
        self.status
            .values()
            .filter_map(|s| match s {
                Status::InFlight { deadline, .. } => Some(*deadline),
                Status::Waiting { at, .. } => Some(*at),
                _ => None,
            })
            .min()
    }
}

#[derive(Debug, Clone)]
enum Op {
    Deliver { max: usize, grow: u64 },
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
        3 => (0usize..5, 0u64..4).prop_map(|(max, grow)| Op::Deliver { max, grow }),
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
        };
        let mut real = SubscriptionState::new(policy.clone(), 1, 7);
        let mut model = Model::new(policy);
        let mut now = 0u64;
        let mut available = 1u64;
        let mut acked = std::collections::HashSet::new();
        for op in ops {
            match op {
                Op::Deliver { max, grow } => {
                    available = (available + grow).min(41);
                    let got = real.next_deliveries(now, available, max);
                    prop_assert_eq!(&got, &model.next_deliveries(now, available, max));
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
                    let late: Vec<(u64, u32)> = model
                        .status
                        .iter()
                        .filter_map(|(seq, st)| match st {
                            Status::InFlight { deadline, attempt } if *deadline <= now => Some((*seq, *attempt)),
                            _ => None,
                        })
                        .collect();
                    let expected: Vec<Outcome> = late.into_iter().map(|(seq, attempt)| model.failed(seq, attempt, None, now)).collect();
                    prop_assert_eq!(real.expire(now), expected);
                }
            }
            prop_assert_eq!(real.floor(), model.floor());
            prop_assert_eq!(real.next_wakeup_ns(), model.wakeup());
            let model_in_flight = model.status.values().filter(|s| matches!(s, Status::InFlight { .. })).count();
            prop_assert_eq!(real.in_flight(), model_in_flight);
            prop_assert!(real.in_flight() <= max_in_flight);
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
        let d = state.next_deliveries(now, 2, 10);
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
        state.next_deliveries(0, 2, 1),
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
        state.next_deliveries(later, 2, 1),
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
        state.next_deliveries(later * 10, 2, 1).is_empty(),
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
    let first: Vec<u64> = state
        .next_deliveries(0, 100, 10)
        .iter()
        .map(|d| d.sequence)
        .collect();
    assert_eq!(first, [10, 11, 12]);
    assert!(state.next_deliveries(0, 100, 10).is_empty());
    state.ack(11).unwrap();
    assert_eq!(
        state.next_deliveries(0, 100, 10),
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
    state.next_deliveries(0, 2, 1);
    state.in_progress(1, 20_000 * MS).unwrap();
    assert!(state.expire(45_000 * MS).is_empty(), "deadline moved to 50 s");
    assert_eq!(state.expire(50_000 * MS).len(), 1);
}
