//! STATS_OK: the broker's counters, per topic, per subscription and per connection.
//!
//! Layout: `uptime_ms u64 | topic_count u32 | topics... | subscription_count u32 | subscriptions...
//! | connection_count u32 | connections...`, strings as `str8`. A topic is `name str8 | routing
//! str8 | subscribers u32 | stored u64 | counter_count u8 | counter u64 x counter_count`, the
//! counters in [`TOPIC_COUNTERS`] order: a reader takes the ones it knows and skips the rest, and
//! counts a counter the writer does not send as 0. Subscriptions and connections are a fixed
//! sequence of fields (below). Counters are totals since the broker started.

use bytes::{BufMut, BytesMut};

use crate::ProtocolError;
use crate::wire::{Reader, put_str8};

/// How `/metrics` exports a topic counter: the family (Prometheus adds `_total`) and a label that
/// tells it apart from the other counters of the same family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Export {
    /// Its own family, labelled by topic only.
    Family(&'static str),
    /// A family shared with other counters, told apart by `label = value`.
    Labelled(&'static str, &'static str, &'static str),
    /// A family labelled also with the topic's overflow policy (`policy`).
    ByPolicy(&'static str),
    /// Not exported: the sum of other exported counters.
    Sum,
}

/// One per-topic counter: its name (the field of [`TopicStats`], the key in `mycelium stats
/// --json`), how `/metrics` exports it, and what it counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    #[allow(missing_docs)]
    pub name: &'static str,
    #[allow(missing_docs)]
    pub export: Export,
    #[allow(missing_docs)]
    pub help: &'static str,
}

/// Calls `$then!` with the table of per-topic counters, in wire order: the one list from which
/// the broker's atomic counters, [`TopicStats`], the STATS_OK encoding, `/metrics` and
/// `mycelium stats` are made. Add a counter here (at the end: older peers skip what they do not
/// know) and it appears everywhere.
#[macro_export]
macro_rules! topic_counters {
    ($then:ident) => {
        $then! {
            published: $crate::Export::Family("messages_published"), "Messages accepted from publishers";
            delivered: $crate::Export::Family("messages_delivered"), "Deliveries handed to subscribers";
            dropped: $crate::Export::ByPolicy("messages_dropped"), "Deliveries dropped by the topic's overflow policy (drop_oldest, drop_newest), or published with no subscriber on a `direct` topic";
            bytes_in: $crate::Export::Family("payload_bytes_received"), "Payload bytes accepted from publishers";
            bytes_out: $crate::Export::Family("payload_bytes_delivered"), "Payload bytes handed to subscribers";
            rejected: $crate::Export::Labelled("messages_failed", "reason", "rejected"), "Publishes refused (validation, size, no such topic on the way in)";
            blocked: $crate::Export::Family("publishes_blocked"), "Times a publisher waited for a full subscriber (`block`)";
            slow_disconnects: $crate::Export::Labelled("messages_failed", "reason", "slow_consumer"), "Subscribers disconnected for being slow";
            acked: $crate::Export::Family("messages_acked"), "Acknowledged durable deliveries";
            redelivered: $crate::Export::Family("messages_redelivered"), "Durable deliveries after the first attempt";
            dead_lettered: $crate::Export::Sum, "Messages given up (the sum of the dead_* reasons)";
            expired: $crate::Export::Family("messages_expired"), "Messages whose TTL passed before they were acknowledged";
            duplicates: $crate::Export::Family("messages_duplicate"), "Stored publishes recognised as duplicates by their idempotency key";
            filtered: $crate::Export::Family("messages_filtered"), "Deliveries not made because a filter refused the message";
            dead_max_deliveries: $crate::Export::Labelled("messages_dead_lettered", "reason", "max_deliveries"), "Messages given up after max_deliveries attempts";
            dead_terminated: $crate::Export::Labelled("messages_dead_lettered", "reason", "terminated"), "Messages given up by TERM";
            dead_expired: $crate::Export::Labelled("messages_dead_lettered", "reason", "expired"), "Expired messages moved to the dead-letter queue";
            dead_unmatched: $crate::Export::Labelled("messages_dead_lettered", "reason", "unmatched"), "Messages no durable subscription's filter matched, dead-lettered";
        }
    };
}

macro_rules! topic_stats {
    ($($name:ident: $export:expr, $help:literal;)*) => {
        /// The per-topic counters, in wire order (see [`topic_counters!`]).
        pub const TOPIC_COUNTERS: &[Counter] = &[$(Counter {
            name: stringify!($name),
            export: $export,
            help: $help,
        }),*];

        /// Counters of one topic (totals since the broker started), with its routing, subscribers
        /// and stored messages.
        #[derive(Debug, Clone, PartialEq, Eq, Default)]
        pub struct TopicStats {
            /// The topic's name.
            pub name: String,
            /// `fanout`, `queue` or `direct`.
            pub routing: String,
            /// Subscriptions now.
            pub subscribers: u32,
            /// Stored topics: messages stored (log next sequence minus first).
            pub stored: u64,
            $(#[doc = $help] pub $name: u64,)*
        }

        impl TopicStats {
            /// Every counter with its value, in table order.
            pub fn counters(&self) -> impl Iterator<Item = (&'static Counter, u64)> + '_ {
                TOPIC_COUNTERS.iter().zip([$(self.$name),*])
            }

            fn counters_mut(&mut self) -> [&mut u64; TOPIC_COUNTERS.len()] {
                [$(&mut self.$name),*]
            }
        }
    };
}

topic_counters!(topic_stats);

/// Counters of one subscription.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[allow(missing_docs)]
pub struct SubscriptionStats {
    pub connection_id: u64,
    pub subscription_id: u32,
    pub pattern: String,
    /// Empty for a plain subscription.
    pub group: String,
    pub delivered: u64,
    pub dropped: u64,
    pub blocked: u64,
}

/// Counters of one connection.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[allow(missing_docs)]
pub struct ConnectionStats {
    pub id: u64,
    pub name: String,
    /// `unix` or `tcp:<peer address>`.
    pub peer: String,
    pub published: u64,
    pub delivered: u64,
    pub subscriptions: u32,
    /// Bytes waiting in the outbound buffer.
    pub pending_bytes: u64,
}

/// The whole STATS_OK body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[allow(missing_docs)]
pub struct StatsSnapshot {
    pub uptime_ms: u64,
    pub topics: Vec<TopicStats>,
    pub subscriptions: Vec<SubscriptionStats>,
    pub connections: Vec<ConnectionStats>,
}

fn count(body: &mut Reader<'_>, field: &'static str) -> Result<usize, ProtocolError> {
    let n = body.u32(field)? as usize;
    // Every entry takes at least a few bytes: a count larger than the body is a lie, refused
    // before reserving memory for it.
    if n > body.rest_len() {
        return Err(ProtocolError::InvalidValue {
            field,
            value: n as u64,
        });
    }
    Ok(n)
}

impl StatsSnapshot {
    pub(crate) fn decode(body: &mut Reader<'_>) -> Result<Self, ProtocolError> {
        let uptime_ms = body.u64("uptime_ms")?;
        let n = count(body, "topic_count")?;
        let mut topics = Vec::with_capacity(n);
        for _ in 0..n {
            let mut topic = TopicStats {
                name: body.str8("name")?.to_owned(),
                routing: body.str8("routing")?.to_owned(),
                subscribers: body.u32("subscribers")?,
                stored: body.u64("stored")?,
                ..TopicStats::default()
            };
            let sent = usize::from(body.u8("counter_count")?);
            {
                let mut known = topic.counters_mut().into_iter();
                for _ in 0..sent {
                    let value = body.u64("counter")?;
                    if let Some(slot) = known.next() {
                        *slot = value;
                    }
                }
            }
            topics.push(topic);
        }
        let n = count(body, "subscription_count")?;
        let mut subscriptions = Vec::with_capacity(n);
        for _ in 0..n {
            subscriptions.push(SubscriptionStats {
                connection_id: body.u64("connection_id")?,
                subscription_id: body.u32("subscription_id")?,
                pattern: body.str8("pattern")?.to_owned(),
                group: body.str8("group")?.to_owned(),
                delivered: body.u64("delivered")?,
                dropped: body.u64("dropped")?,
                blocked: body.u64("blocked")?,
            });
        }
        let n = count(body, "connection_count")?;
        let mut connections = Vec::with_capacity(n);
        for _ in 0..n {
            connections.push(ConnectionStats {
                id: body.u64("id")?,
                name: body.str8("name")?.to_owned(),
                peer: body.str8("peer")?.to_owned(),
                published: body.u64("published")?,
                delivered: body.u64("delivered")?,
                subscriptions: body.u32("subscriptions")?,
                pending_bytes: body.u64("pending_bytes")?,
            });
        }
        body.finish("STATS_OK")?;
        Ok(StatsSnapshot {
            uptime_ms,
            topics,
            subscriptions,
            connections,
        })
    }

    pub(crate) fn encode_body(&self, buf: &mut BytesMut) -> Result<(), ProtocolError> {
        buf.put_u64_le(self.uptime_ms);
        buf.put_u32_le(self.topics.len() as u32);
        for t in &self.topics {
            put_str8(buf, &t.name, "name")?;
            put_str8(buf, &t.routing, "routing")?;
            buf.put_u32_le(t.subscribers);
            buf.put_u64_le(t.stored);
            buf.put_u8(TOPIC_COUNTERS.len() as u8);
            for (_, value) in t.counters() {
                buf.put_u64_le(value);
            }
        }
        buf.put_u32_le(self.subscriptions.len() as u32);
        for s in &self.subscriptions {
            buf.put_u64_le(s.connection_id);
            buf.put_u32_le(s.subscription_id);
            put_str8(buf, &s.pattern, "pattern")?;
            put_str8(buf, &s.group, "group")?;
            for v in [s.delivered, s.dropped, s.blocked] {
                buf.put_u64_le(v);
            }
        }
        buf.put_u32_le(self.connections.len() as u32);
        for c in &self.connections {
            buf.put_u64_le(c.id);
            put_str8(buf, &c.name, "name")?;
            put_str8(buf, &c.peer, "peer")?;
            buf.put_u64_le(c.published);
            buf.put_u64_le(c.delivered);
            buf.put_u32_le(c.subscriptions);
            buf.put_u64_le(c.pending_bytes);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn topic_record(counters: &[u64]) -> BytesMut {
        let mut buf = BytesMut::new();
        buf.put_u64_le(9); // uptime
        buf.put_u32_le(1);
        put_str8(&mut buf, "t", "name").unwrap();
        put_str8(&mut buf, "queue", "routing").unwrap();
        buf.put_u32_le(2);
        buf.put_u64_le(7);
        buf.put_u8(counters.len() as u8);
        for c in counters {
            buf.put_u64_le(*c);
        }
        buf.put_u32_le(0);
        buf.put_u32_le(0);
        buf
    }

    #[test]
    fn every_counter_travels_in_table_order() {
        let values: Vec<u64> = (1..=TOPIC_COUNTERS.len() as u64).map(|i| i * 10).collect();
        let bytes = topic_record(&values);
        let snapshot = StatsSnapshot::decode(&mut Reader::new(&bytes)).unwrap();
        let topic = &snapshot.topics[0];
        assert_eq!((topic.subscribers, topic.stored), (2, 7));
        assert_eq!(topic.counters().map(|(_, v)| v).collect::<Vec<_>>(), values);
        assert_eq!(
            (topic.published, topic.dead_unmatched),
            (10, values[values.len() - 1])
        );
        let mut again = BytesMut::new();
        snapshot.encode_body(&mut again).unwrap();
        assert_eq!(again, bytes);
    }

    #[test]
    fn a_reader_skips_counters_it_does_not_know_and_zeroes_missing_ones() {
        let mut newer: Vec<u64> = vec![1; TOPIC_COUNTERS.len()];
        newer.extend([99, 98]);
        let snapshot = StatsSnapshot::decode(&mut Reader::new(&topic_record(&newer))).unwrap();
        assert!(snapshot.topics[0].counters().all(|(_, v)| v == 1));
        let older = StatsSnapshot::decode(&mut Reader::new(&topic_record(&[5, 6]))).unwrap();
        let topic = &older.topics[0];
        assert_eq!((topic.published, topic.delivered, topic.dropped), (5, 6, 0));
    }

    #[test]
    fn counter_names_and_exported_series_are_unique() {
        let names: HashSet<&str> = TOPIC_COUNTERS.iter().map(|c| c.name).collect();
        assert_eq!(names.len(), TOPIC_COUNTERS.len());
        let series: Vec<(&str, Option<(&str, &str)>)> = TOPIC_COUNTERS
            .iter()
            .filter_map(|c| match c.export {
                Export::Family(f) | Export::ByPolicy(f) => Some((f, None)),
                Export::Labelled(f, k, v) => Some((f, Some((k, v)))),
                Export::Sum => None,
            })
            .collect();
        let unique: HashSet<_> = series.iter().collect();
        assert_eq!(unique.len(), series.len(), "two counters export the same series");
        // A family is either shared (every member labelled) or one counter's own.
        for (family, label) in &series {
            let members = series.iter().filter(|(f, _)| f == family).count();
            assert!(
                members == 1 || label.is_some(),
                "{family} is shared without a label"
            );
        }
    }
}
