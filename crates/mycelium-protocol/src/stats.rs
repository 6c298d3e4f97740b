//! STATS_OK: the broker's counters, per topic, per subscription and per connection.
//!
//! Layout: `uptime_ms u64 | topic_count u32 | topics... | subscription_count u32 | subscriptions...
//! | connection_count u32 | connections...`, each entry a fixed sequence of fields (below), strings
//! as `str8`. Counters are totals since the broker started.

use bytes::{BufMut, BytesMut};

use crate::ProtocolError;
use crate::wire::{Reader, put_str8};

/// Counters of one topic.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[allow(missing_docs)]
pub struct TopicStats {
    pub name: String,
    /// `fanout`, `queue` or `direct`.
    pub routing: String,
    pub published: u64,
    pub delivered: u64,
    /// Messages dropped by `drop_oldest`, or with no subscriber on a `direct` topic.
    pub dropped: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Publishes refused (validation, size).
    pub rejected: u64,
    /// Times a publisher waited for a full subscriber (`block`).
    pub blocked: u64,
    /// Subscribers disconnected for being slow.
    pub slow_disconnects: u64,
    pub subscribers: u32,
    /// Stored topics: acknowledged durable deliveries.
    pub acked: u64,
    /// Stored topics: deliveries after the first attempt.
    pub redelivered: u64,
    /// Stored topics: messages given up (max deliveries, TERM, expired on `dead_letter` topics).
    pub dead_lettered: u64,
    /// Stored topics: messages whose TTL passed before they were acknowledged.
    pub expired: u64,
    /// Stored topics: publishes recognised as duplicates by their idempotency key.
    pub duplicates: u64,
    /// Stored topics: messages stored (log next sequence minus first).
    pub stored: u64,
    /// Deliveries not made because a filter refused the message.
    pub filtered: u64,
}

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
            topics.push(TopicStats {
                name: body.str8("name")?.to_owned(),
                routing: body.str8("routing")?.to_owned(),
                published: body.u64("published")?,
                delivered: body.u64("delivered")?,
                dropped: body.u64("dropped")?,
                bytes_in: body.u64("bytes_in")?,
                bytes_out: body.u64("bytes_out")?,
                rejected: body.u64("rejected")?,
                blocked: body.u64("blocked")?,
                slow_disconnects: body.u64("slow_disconnects")?,
                subscribers: body.u32("subscribers")?,
                acked: body.u64("acked")?,
                redelivered: body.u64("redelivered")?,
                dead_lettered: body.u64("dead_lettered")?,
                expired: body.u64("expired")?,
                duplicates: body.u64("duplicates")?,
                stored: body.u64("stored")?,
                filtered: body.u64("filtered")?,
            });
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
            for v in [
                t.published,
                t.delivered,
                t.dropped,
                t.bytes_in,
                t.bytes_out,
                t.rejected,
                t.blocked,
            ] {
                buf.put_u64_le(v);
            }
            buf.put_u64_le(t.slow_disconnects);
            buf.put_u32_le(t.subscribers);
            for v in [
                t.acked,
                t.redelivered,
                t.dead_lettered,
                t.expired,
                t.duplicates,
                t.stored,
                t.filtered,
            ] {
                buf.put_u64_le(v);
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
