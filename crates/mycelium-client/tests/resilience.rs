//! Backoff and circuit breaker logic, with a seeded RNG and paused time.

use std::time::Duration;

use mycelium_client::resilience::{Backoff, BreakerState, CircuitBreaker};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::time::Instant;

#[test]
fn backoff_grows_exponentially_and_is_capped() {
    let backoff = Backoff {
        jitter: 0.0,
        ..Backoff::default()
    };
    let mut rng = SmallRng::seed_from_u64(1);
    let delays: Vec<u64> = (0..10)
        .map(|a| backoff.delay(a, &mut rng).as_millis() as u64)
        .collect();
    assert_eq!(
        delays,
        [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]
    );
    assert_eq!(backoff.delay(u32::MAX, &mut rng), Duration::from_secs(10));
}

#[test]
fn jitter_spreads_within_bounds_and_never_exceeds_the_cap() {
    let backoff = Backoff::default();
    let mut rng = SmallRng::seed_from_u64(7);
    let samples: Vec<Duration> = (0..200).map(|_| backoff.delay(2, &mut rng)).collect();
    assert!(
        samples
            .iter()
            .all(|d| *d >= Duration::from_millis(320) && *d <= Duration::from_millis(480))
    );
    let distinct: std::collections::HashSet<_> = samples.iter().collect();
    assert!(distinct.len() > 100, "jitter actually spreads retries");
    assert!((0..200).all(|_| backoff.delay(20, &mut rng) <= Duration::from_secs(10)));
}

#[tokio::test(start_paused = true)]
async fn breaker_opens_after_threshold_and_probes_after_delay() {
    let mut breaker = CircuitBreaker::new(3, Duration::from_secs(5));
    let now = Instant::now();
    assert!(breaker.allow(now));
    breaker.on_failure(now);
    breaker.on_failure(now);
    assert_eq!(breaker.state(now), BreakerState::Closed);
    breaker.on_failure(now);
    assert_eq!(breaker.state(now), BreakerState::Open);
    assert!(!breaker.allow(now), "open: fail fast");
    tokio::time::advance(Duration::from_millis(4999)).await;
    assert!(!breaker.allow(Instant::now()));
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(breaker.state(Instant::now()), BreakerState::HalfOpen);
    assert!(breaker.allow(Instant::now()), "one probe");
    // A failed probe re-opens at once, without waiting for the threshold again.
    breaker.on_failure(Instant::now());
    assert_eq!(breaker.state(Instant::now()), BreakerState::Open);
    tokio::time::advance(Duration::from_secs(5)).await;
    assert!(breaker.allow(Instant::now()));
    breaker.on_success();
    assert_eq!(breaker.state(Instant::now()), BreakerState::Closed);
    assert_eq!(breaker.failures(), 0);
}
