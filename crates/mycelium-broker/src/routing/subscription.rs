//! Subscriptions and the routes computed from them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::routing::name::Pattern;
use crate::routing::outbound::Outbound;
use crate::routing::spec::{Balance, Routing};

/// How long after a principal's subscriber was cut off as slow its new subscriptions may not
/// make publishers wait (`overflow = block`): one that reconnects and stops reading again is cut
/// off at once instead of costing every publisher another `block_timeout`.
pub const BLOCK_COOLDOWN: std::time::Duration = std::time::Duration::from_secs(60);

/// One subscription of one connection.
#[derive(Debug)]
pub struct Subscription {
    /// The id the connection knows it by (unique per connection).
    pub id: u32,
    /// Broker-wide creation order; `direct` routing fails over in this order.
    pub key: u64,
    /// What it matches.
    pub pattern: Pattern,
    /// Its queue group, if any.
    pub group: Option<Box<str>>,
    /// Where its deliveries go.
    pub outbound: Arc<Outbound>,
    /// Only messages matching it are delivered.
    pub filter: Option<Arc<crate::routing::filter::Filter>>,
    /// Who made it, from where: `principal@address` (the address without its port).
    pub(crate) owner: Box<str>,
    /// Whether a publisher to an `overflow = block` topic may wait for it when it is full: not
    /// when the same principal from the same address had a subscriber cut off as slow within
    /// [`BLOCK_COOLDOWN`].
    pub(crate) may_block: bool,
    pub(crate) delivered: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) blocked: AtomicU64,
}

impl Subscription {
    pub(crate) fn new(
        id: u32,
        key: u64,
        pattern: Pattern,
        group: Option<Box<str>>,
        outbound: Arc<Outbound>,
        filter: Option<Arc<crate::routing::filter::Filter>>,
    ) -> Self {
        Subscription {
            id,
            key,
            pattern,
            group,
            outbound,
            filter,
            owner: Box::default(),
            may_block: true,
            delivered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            blocked: AtomicU64::new(0),
        }
    }

    /// Made by `owner` (`principal@address`), which may or may not make publishers wait.
    pub(crate) fn owned_by(self, owner: Box<str>, may_block: bool) -> Self {
        Subscription {
            owner,
            may_block,
            ..self
        }
    }

    /// Whether it can take deliveries at all.
    pub fn is_live(&self) -> bool {
        !self.outbound.is_closing()
    }

    /// The connection it belongs to.
    pub fn connection_id(&self) -> u64 {
        self.outbound.connection_id()
    }

    /// Whether a message passes this subscription's filter (no filter: every message).
    #[inline]
    pub fn accepts(&self, headers: &[u8], payload: &[u8]) -> bool {
        self.filter.as_ref().is_none_or(|f| f.matches(headers, payload))
    }
}

/// A queue group as seen from one topic: its members that match the topic.
#[derive(Debug)]
pub(crate) struct Group {
    pub(crate) members: Vec<Arc<Subscription>>,
    cursor: AtomicUsize,
}

impl Group {
    fn new(members: Vec<Arc<Subscription>>) -> Self {
        Group {
            members,
            cursor: AtomicUsize::new(0),
        }
    }

    /// Picks the member for the next message; see [`pick`].
    pub(crate) fn pick(
        &self,
        balance: Balance,
        has_room: impl Fn(&Subscription) -> bool,
        accepts: impl Fn(&Subscription) -> bool,
    ) -> Option<&Arc<Subscription>> {
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        let load = |s: &Arc<Subscription>| s.outbound.pending_bytes();
        let live = |s: &Arc<Subscription>| s.is_live() && accepts(s);
        pick(
            &self.members,
            balance,
            start,
            live,
            |s: &Arc<Subscription>| has_room(s),
            load,
        )
        .map(|i| &self.members[i])
    }
}

/// Chooses a member index: pure, so strategies are tested without I/O.
///
/// - `RoundRobin`: from `start` (modulo the member count), the first live member with room; if
///   none has room, the first live member (the topic's overflow policy then applies to it).
/// - `LeastLoaded`: the live member with the smallest `load`; ties go to the earliest.
pub fn pick<T>(
    members: &[T],
    balance: Balance,
    start: usize,
    live: impl Fn(&T) -> bool,
    has_room: impl Fn(&T) -> bool,
    load: impl Fn(&T) -> usize,
) -> Option<usize> {
    let n = members.len();
    if n == 0 {
        return None;
    }
    match balance {
        Balance::RoundRobin => {
            let order = (0..n).map(|k| (start + k) % n);
            let mut first_live = None;
            for i in order {
                if live(&members[i]) {
                    if has_room(&members[i]) {
                        return Some(i);
                    }
                    first_live.get_or_insert(i);
                }
            }
            first_live
        }
        Balance::LeastLoaded => (0..n)
            .filter(|&i| live(&members[i]))
            .min_by_key(|&i| load(&members[i])),
    }
}

/// Who gets a message published to one topic; rebuilt whenever subscriptions change, so the
/// publish path never matches patterns.
#[derive(Debug, Default)]
pub(crate) struct Route {
    /// Each gets every message (fanout: plain subscriptions).
    pub(crate) each: Vec<Arc<Subscription>>,
    /// Each group gets one copy, to one member.
    pub(crate) groups: Vec<Group>,
    /// Direct routing: candidates in subscription order.
    pub(crate) ordered: Vec<Arc<Subscription>>,
}

impl Route {
    /// Whether nobody would get a message.
    pub(crate) fn is_empty(&self) -> bool {
        self.each.is_empty() && self.groups.is_empty() && self.ordered.is_empty()
    }

    /// Builds the route of a topic named `topic` from every subscription, in creation order.
    pub(crate) fn build(topic: &str, routing: Routing, subscriptions: &[Arc<Subscription>]) -> Route {
        let matching: Vec<&Arc<Subscription>> = subscriptions
            .iter()
            .filter(|s| s.pattern.matches(topic))
            .collect();
        let mut plain = Vec::new();
        // Groups in order of first appearance, found by name in O(1): with a distinct group per
        // subscription a linear search made every subscribe cost the square of their number.
        let mut named: Vec<Vec<Arc<Subscription>>> = Vec::new();
        let mut index: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for sub in &matching {
            match sub.group.as_deref() {
                None => plain.push(Arc::clone(sub)),
                Some(name) => match index.get(name) {
                    Some(&at) => named[at].push(Arc::clone(sub)),
                    None => {
                        index.insert(name, named.len());
                        named.push(vec![Arc::clone(sub)]);
                    }
                },
            }
        }
        let mut groups: Vec<Group> = named.into_iter().map(Group::new).collect();
        match routing {
            Routing::Fanout => Route {
                each: plain,
                groups,
                ordered: Vec::new(),
            },
            Routing::Queue => {
                if !plain.is_empty() {
                    groups.insert(0, Group::new(plain));
                }
                Route {
                    each: Vec::new(),
                    groups,
                    ordered: Vec::new(),
                }
            }
            Routing::Direct => Route {
                each: Vec::new(),
                groups: Vec::new(),
                ordered: matching.into_iter().cloned().collect(),
            },
        }
    }

    /// Subscriptions this route reaches.
    pub(crate) fn subscriber_count(&self) -> usize {
        self.each.len() + self.groups.iter().map(|g| g.members.len()).sum::<usize>() + self.ordered.len()
    }
}
