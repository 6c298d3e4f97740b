//! A set of sequences kept as sorted, disjoint, non-adjacent ranges: what a durable subscription
//! finished above its floor. Acknowledgements arrive mostly in order, so a set that would hold one
//! entry per message (a million acks behind one message held by a long NACK delay) holds a few
//! ranges instead, in memory and in the state file.

use std::collections::BTreeMap;

/// Sequences as `start -> end` (end exclusive) ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RangeSet {
    ranges: BTreeMap<u64, u64>,
}

impl RangeSet {
    /// Whether `sequence` is in the set.
    pub(crate) fn contains(&self, sequence: u64) -> bool {
        self.ranges
            .range(..=sequence)
            .next_back()
            .is_some_and(|(_, end)| sequence < *end)
    }

    /// Adds `sequence`, merging it with the ranges it touches.
    pub(crate) fn insert(&mut self, sequence: u64) {
        if self.contains(sequence) {
            return;
        }
        let Some(after) = sequence.checked_add(1) else {
            return; // u64::MAX is never a sequence
        };
        let mut start = sequence;
        let mut end = after;
        // A range ending right before it.
        if let Some((s, e)) = self.ranges.range(..sequence).next_back().map(|(s, e)| (*s, *e))
            && e == sequence
        {
            start = s;
            self.ranges.remove(&s);
        }
        // A range starting right after it.
        if let Some(e) = self.ranges.remove(&after) {
            end = e;
        }
        self.ranges.insert(start, end);
    }

    /// Adds `start..end`, merging it with the ranges it overlaps or touches.
    pub(crate) fn insert_range(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let (mut lo, mut hi) = (start, end);
        let touching: Vec<(u64, u64)> = self
            .ranges
            .range(..=end)
            .rev()
            .take_while(|(_, e)| **e >= start)
            .map(|(s, e)| (*s, *e))
            .collect();
        for (s, e) in touching {
            self.ranges.remove(&s);
            lo = lo.min(s);
            hi = hi.max(e);
        }
        self.ranges.insert(lo, hi);
    }

    /// Removes `sequence`, splitting the range that holds it.
    pub(crate) fn remove(&mut self, sequence: u64) {
        let Some((start, end)) = self
            .ranges
            .range(..=sequence)
            .next_back()
            .map(|(s, e)| (*s, *e))
            .filter(|(_, e)| sequence < *e)
        else {
            return;
        };
        self.ranges.remove(&start);
        if start < sequence {
            self.ranges.insert(start, sequence);
        }
        if sequence + 1 < end {
            self.ranges.insert(sequence + 1, end);
        }
    }

    /// If a range starts at `floor`, removes it and returns its end: the new floor.
    pub(crate) fn take_from(&mut self, floor: u64) -> Option<u64> {
        self.ranges.remove(&floor)
    }

    /// Removes everything below `floor`.
    pub(crate) fn drop_below(&mut self, floor: u64) {
        let below: Vec<(u64, u64)> = self.ranges.range(..floor).map(|(s, e)| (*s, *e)).collect();
        for (s, e) in below {
            self.ranges.remove(&s);
            if e > floor {
                self.ranges.insert(floor, e);
            }
        }
    }

    /// The ranges, lowest first, as `(start, end)` with `end` exclusive.
    pub(crate) fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(s, e)| (*s, *e))
    }

    /// How many sequences the set holds.
    #[cfg(test)]
    pub(crate) fn count(&self) -> u64 {
        self.ranges.iter().map(|(s, e)| e - s).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn in_order_inserts_stay_one_range() {
        let mut set = RangeSet::default();
        for s in 10..100_000 {
            set.insert(s);
        }
        assert_eq!(set.ranges().collect::<Vec<_>>(), vec![(10, 100_000)]);
        assert_eq!(set.take_from(10), Some(100_000));
        assert_eq!(set.count(), 0);
    }

    proptest! {
        #[test]
        fn behaves_as_a_set_and_keeps_ranges_disjoint_and_apart(
            ops in proptest::collection::vec((0u64..64, 0u64..6, any::<bool>()), 0..80),
            floor in 0u64..64,
        ) {
            let mut set = RangeSet::default();
            let mut model = BTreeSet::new();
            for (s, len, one) in ops {
                if len == 5 {
                    set.remove(s);
                    model.remove(&s);
                } else if one {
                    set.insert(s);
                    model.insert(s);
                } else {
                    set.insert_range(s, s + len);
                    model.extend(s..s + len);
                }
            }
            for s in 0..80 {
                prop_assert_eq!(set.contains(s), model.contains(&s), "sequence {}", s);
            }
            let ranges: Vec<_> = set.ranges().collect();
            for pair in ranges.windows(2) {
                prop_assert!(pair[0].1 < pair[1].0, "disjoint and not adjacent: {:?}", ranges);
            }
            prop_assert_eq!(set.count(), model.len() as u64);
            set.drop_below(floor);
            model.retain(|s| *s >= floor);
            prop_assert_eq!(set.count(), model.len() as u64);
            for s in 0..80 {
                prop_assert_eq!(set.contains(s), model.contains(&s));
            }
        }
    }
}
