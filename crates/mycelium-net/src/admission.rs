//! Places for connections: at most so many at once, and at most so many from one address, so
//! one peer cannot take every place. Both doors (native and HTTP) admit through it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Connections held by each address.
type PerIp = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// The places of one listener (or of several that share the limits).
#[derive(Debug)]
pub struct Admission {
    active: Arc<AtomicUsize>,
    per_ip: PerIp,
    max_total: AtomicUsize,
    max_per_ip: AtomicUsize,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Every place is taken (the limit).
    Full(usize),
    /// This address holds its share (the address, the limit).
    PerIp(IpAddr, usize),
}

/// One connection's place, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    active: Arc<AtomicUsize>,
    per_ip: Option<(PerIp, IpAddr)>,
}

impl Admission {
    /// At most `max_total` connections at once, `max_per_ip` of them from one address.
    pub fn new(max_total: usize, max_per_ip: usize) -> Admission {
        Admission {
            active: Arc::new(AtomicUsize::new(0)),
            per_ip: Arc::new(Mutex::new(HashMap::new())),
            max_total: AtomicUsize::new(max_total),
            max_per_ip: AtomicUsize::new(max_per_ip),
        }
    }

    /// Changes the limits (a configuration reload): connections already admitted stay; new ones
    /// are admitted under the new limits.
    pub fn set_limits(&self, max_total: usize, max_per_ip: usize) {
        self.max_total.store(max_total, Ordering::Release);
        self.max_per_ip.store(max_per_ip, Ordering::Release);
    }

    /// A place for one more connection from `ip` (none: a Unix socket, counted in the total
    /// only), or why not.
    ///
    /// # Errors
    /// [`Refused`].
    pub fn admit(&self, ip: Option<IpAddr>) -> Result<Slot, Refused> {
        let max_total = self.max_total.load(Ordering::Acquire);
        if self.active.fetch_add(1, Ordering::AcqRel) >= max_total {
            self.active.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::Full(max_total));
        }
        let mut slot = Slot {
            active: Arc::clone(&self.active),
            per_ip: None,
        };
        if let Some(ip) = ip {
            let mut map = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
            let held = map.entry(ip).or_default();
            let max_per_ip = self.max_per_ip.load(Ordering::Acquire);
            if *held >= max_per_ip {
                return Err(Refused::PerIp(ip, max_per_ip));
            }
            *held += 1;
            slot.per_ip = Some((Arc::clone(&self.per_ip), ip));
        }
        Ok(slot)
    }

    /// Connections holding a place now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::AcqRel);
        if let Some((map, ip)) = &self.per_ip {
            let mut map = map.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(n) = map.get_mut(ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(ip);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_bounded_in_total_and_per_address_and_come_back() {
        let admission = Admission::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = admission.admit(Some(a)).unwrap();
        let _second = admission.admit(Some(a)).unwrap();
        assert_eq!(admission.admit(Some(a)).unwrap_err(), Refused::PerIp(a, 2));
        let _third = admission.admit(Some(b)).unwrap();
        assert_eq!(admission.admit(None).unwrap_err(), Refused::Full(3));
        assert_eq!(admission.active(), 3, "refusals hold nothing");
        drop(first);
        assert!(
            admission.admit(Some(a)).is_ok(),
            "a place comes back when dropped"
        );
        assert!(admission.per_ip.lock().unwrap().get(&b).is_some());
    }
}
