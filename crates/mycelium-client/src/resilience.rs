//! Reconnect backoff and the circuit breaker: pure logic, time and randomness passed in.

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

/// Exponential backoff with jitter, capped.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    /// Delay before the first retry.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
    /// Growth per attempt.
    pub multiplier: f64,
    /// Random spread, as a fraction of the delay (0.2: +-20%).
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (0-based): `initial * multiplier^attempt`, capped at
    /// `max`, then spread by +-`jitter` (and still capped).
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let base = self.initial.as_secs_f64() * self.multiplier.powi(attempt.min(64) as i32);
        let capped = base.min(self.max.as_secs_f64());
        let spread = if self.jitter > 0.0 {
            rng.random_range(-self.jitter..=self.jitter)
        } else {
            0.0
        };
        Duration::from_secs_f64((capped * (1.0 + spread)).clamp(0.0, self.max.as_secs_f64()))
    }
}

/// Circuit breaker state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Connecting normally.
    Closed,
    /// Too many consecutive failures: callers fail fast until the probe time.
    Open,
    /// One probe connection is allowed; its outcome closes or re-opens the breaker.
    HalfOpen,
}

/// Opens after `threshold` consecutive connection failures; after `open_for` allows one probe.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    threshold: u32,
    open_for: Duration,
    failures: u32,
    opened_at: Option<Instant>,
    state: BreakerState,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(threshold: u32, open_for: Duration) -> Self {
        CircuitBreaker {
            threshold: threshold.max(1),
            open_for,
            failures: 0,
            opened_at: None,
            state: BreakerState::Closed,
        }
    }

    /// The state at `now` (an open breaker whose delay has passed reads as half-open).
    pub fn state(&self, now: Instant) -> BreakerState {
        match (self.state, self.opened_at) {
            (BreakerState::Open, Some(at)) if now >= at + self.open_for => BreakerState::HalfOpen,
            (state, _) => state,
        }
    }

    /// When the next probe is allowed, if the breaker is open.
    pub fn probe_at(&self) -> Option<Instant> {
        match (self.state, self.opened_at) {
            (BreakerState::Open, Some(at)) => Some(at + self.open_for),
            _ => None,
        }
    }

    /// Whether a connection attempt may be made at `now`.
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.state(now) {
            BreakerState::Closed | BreakerState::HalfOpen => {
                self.state = self.state(now);
                true
            }
            BreakerState::Open => false,
        }
    }

    /// A connection attempt succeeded.
    pub fn on_success(&mut self) {
        self.failures = 0;
        self.opened_at = None;
        self.state = BreakerState::Closed;
    }

    /// A connection attempt failed at `now`.
    pub fn on_failure(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        if self.state == BreakerState::HalfOpen || self.failures >= self.threshold {
            self.state = BreakerState::Open;
            self.opened_at = Some(now);
        }
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}
