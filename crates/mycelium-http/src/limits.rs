//! Rate limits: token buckets (governor) per principal (quota by role), per client IP, and per
//! topic for publishes (messages, not requests). Over a limit: 429 with `Retry-After`, counted.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota as GovernorQuota, RateLimiter};
use mycelium_broker::name::Pattern;

use crate::SetupError;
use crate::error::{ApiError, Kind};
use mycelium_broker::{Principal, Role};

/// A token bucket: `per_second` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Sustained rate.
    pub per_second: u32,
    /// Bucket size.
    pub burst: u32,
}

/// Every limit (none set: unlimited).
#[derive(Debug, Clone, Default)]
pub struct RateLimits {
    /// Requests per principal, by its strongest role.
    pub per_role: HashMap<Role, Quota>,
    /// Requests per client IP.
    pub per_ip: Option<Quota>,
    /// Published messages per topic, by topic pattern (the first matching pattern applies).
    pub per_topic: Vec<(String, Quota)>,
}

/// The live buckets; a configuration reload replaces them (the new limits start with full
/// buckets).
pub struct Limiter {
    buckets: arc_swap::ArcSwap<Buckets>,
    clock: DefaultClock,
    /// Requests refused with 429.
    pub rejected: AtomicU64,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("rejected", &self.rejected)
            .finish_non_exhaustive()
    }
}

fn quota(q: Quota) -> Result<GovernorQuota, SetupError> {
    let per_second = NonZeroU32::new(q.per_second).ok_or(SetupError::ZeroQuota("per_second"))?;
    let burst = NonZeroU32::new(q.burst.max(1)).ok_or(SetupError::ZeroQuota("burst"))?;
    Ok(GovernorQuota::per_second(per_second).allow_burst(burst))
}

/// One set of buckets, for one version of the limits.
struct Buckets {
    per_role: HashMap<Role, DefaultKeyedRateLimiter<String>>,
    per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    per_topic: Vec<(Pattern, DefaultKeyedRateLimiter<String>)>,
}

impl Buckets {
    fn new(limits: &RateLimits) -> Result<Buckets, SetupError> {
        let per_role = limits
            .per_role
            .iter()
            .map(|(role, q)| Ok((*role, RateLimiter::keyed(quota(*q)?))))
            .collect::<Result<_, SetupError>>()?;
        let per_ip = limits.per_ip.map(quota).transpose()?.map(RateLimiter::keyed);
        let per_topic = limits
            .per_topic
            .iter()
            .map(|(pattern, q)| {
                let pattern = Pattern::parse(pattern).map_err(|e| SetupError::Pattern {
                    what: "rate limit topic",
                    pattern: pattern.clone(),
                    reason: e.to_string(),
                })?;
                Ok((pattern, RateLimiter::keyed(quota(*q)?)))
            })
            .collect::<Result<_, SetupError>>()?;
        Ok(Buckets {
            per_role,
            per_ip,
            per_topic,
        })
    }
}

impl Limiter {
    /// Builds the buckets.
    ///
    /// # Errors
    /// A zero rate or a bad topic pattern.
    pub fn new(limits: &RateLimits) -> Result<Limiter, SetupError> {
        Ok(Limiter {
            buckets: arc_swap::ArcSwap::from_pointee(Buckets::new(limits)?),
            clock: DefaultClock::default(),
            rejected: AtomicU64::new(0),
        })
    }

    /// Replaces the limits (a configuration reload); nothing changes when they are invalid.
    ///
    /// # Errors
    /// A zero rate or a bad topic pattern.
    pub fn replace(&self, limits: &RateLimits) -> Result<(), SetupError> {
        self.buckets.store(std::sync::Arc::new(Buckets::new(limits)?));
        Ok(())
    }

    fn refuse(&self, what: &str, wait: std::time::Duration) -> ApiError {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        let mut error = ApiError::new(
            Kind::RateLimited,
            format!(
                "{what} rate limit reached; retry in {} ms",
                wait.as_millis().max(1)
            ),
        );
        error.retry_after = Some(wait.as_secs_f64().ceil() as u64);
        error
    }

    /// Takes one request from the client IP's bucket: before the token is verified, so a flood
    /// of bad tokens costs the broker no signature checks past the limit.
    ///
    /// # Errors
    /// 429 with `Retry-After`.
    pub fn address(&self, ip: Option<IpAddr>) -> Result<(), ApiError> {
        if let (Some(limiter), Some(ip)) = (&self.buckets.load().per_ip, ip)
            && let Err(not_until) = limiter.check_key(&ip)
        {
            return Err(self.refuse("per-IP", not_until.wait_time_from(self.clock.now())));
        }
        Ok(())
    }

    /// Forgets buckets that are full again (callers gone quiet), so the maps keyed by address,
    /// principal and topic do not only grow.
    pub fn shrink(&self) {
        let buckets = self.buckets.load();
        if let Some(limiter) = &buckets.per_ip {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        for limiter in buckets.per_role.values() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        for (_, limiter) in &buckets.per_topic {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// Takes one request from the caller's bucket (after [`Limiter::address`]).
    ///
    /// # Errors
    /// 429 with `Retry-After`.
    pub fn request(&self, principal: &Principal) -> Result<(), ApiError> {
        if let Some(limiter) = self.buckets.load().per_role.get(&principal.top_role())
            && let Err(not_until) = limiter.check_key(&principal.name)
        {
            return Err(self.refuse("per-principal", not_until.wait_time_from(self.clock.now())));
        }
        Ok(())
    }

    /// Takes `messages` from `topic`'s bucket.
    ///
    /// # Errors
    /// 429 with `Retry-After` (also when the batch is larger than the bucket can ever hold).
    pub fn publish(&self, topic: &str, messages: u32) -> Result<(), ApiError> {
        let buckets = self.buckets.load();
        let Some((_, limiter)) = buckets.per_topic.iter().find(|(p, _)| p.matches(topic)) else {
            return Ok(());
        };
        let n = NonZeroU32::new(messages.max(1)).unwrap_or(NonZeroU32::MIN);
        match limiter.check_key_n(&topic.to_owned(), n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(self.refuse(
                &format!("topic `{topic}`"),
                not_until.wait_time_from(self.clock.now()),
            )),
            Err(_) => Err(self.refuse(
                &format!("topic `{topic}` (the batch is larger than its burst)"),
                std::time::Duration::from_secs(1),
            )),
        }
    }
}
