//! Throughput: P publishers -> S subscribers, fanout or queue group, every delivery verified.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use tokio::sync::Notify;

use crate::payload::{PayloadFactory, parse};
use crate::system::System;
use crate::{Measured, Routing};

/// One throughput workload.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Workload {
    /// Publishing connections.
    pub publishers: usize,
    /// Subscribing connections.
    pub subscribers: usize,
    /// fanout or queue.
    pub routing: Routing,
    /// Payload bytes.
    pub size: usize,
    /// Messages published in total (with `duration_s`: a cap, normally `u64::MAX`).
    pub count: u64,
    /// Publish for this long instead of a fixed count.
    #[serde(default)]
    pub duration_s: Option<f64>,
}

const TOPIC: &str = "bench.throughput";

#[derive(Default)]
struct Tally {
    received: AtomicU64,
    out_of_order: AtomicU64,
    last_receive_ns: AtomicU64,
}

/// Runs the workload once against `system`.
///
/// # Errors
/// Connection failures.
pub async fn run(system: &System, workload: &Workload, progress: &ProgressBar) -> anyhow::Result<Measured> {
    let group = (workload.routing == Routing::Queue).then_some("bench");
    let fan = match workload.routing {
        Routing::Fanout => workload.subscribers as u64,
        Routing::Queue => 1,
    };
    // Known up front for a count, once the publishers stop for a duration.
    let expected = Arc::new(AtomicU64::new(match workload.duration_s {
        Some(_) => u64::MAX,
        None => workload.count * fan,
    }));
    let tally = Arc::new(Tally::default());
    let done = Arc::new(Notify::new());
    let start_cell = Arc::new(std::sync::OnceLock::<Instant>::new());
    let mut readers = Vec::new();
    for _ in 0..workload.subscribers {
        let mut sub = system.subscriber(TOPIC, group).await?;
        let tally = Arc::clone(&tally);
        let done = Arc::clone(&done);
        let start = Arc::clone(&start_cell);
        let publishers = workload.publishers;
        let expected = Arc::clone(&expected);
        readers.push(tokio::spawn(async move {
            let mut last = vec![None::<u64>; publishers];
            loop {
                let Some(payload) = sub.next().await else { break };
                if let Some((publisher, sequence, _)) = parse(&payload) {
                    let slot = last.get_mut(publisher as usize);
                    if let Some(slot) = slot {
                        if slot.is_some_and(|l| sequence <= l) {
                            tally.out_of_order.fetch_add(1, Ordering::Relaxed);
                        }
                        *slot = Some(sequence);
                    }
                }
                let total = tally.received.fetch_add(1, Ordering::Relaxed) + 1;
                if let Some(start) = start.get() {
                    tally
                        .last_receive_ns
                        .store(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
                }
                if total >= expected.load(Ordering::Relaxed) {
                    done.notify_one();
                }
            }
            drop(sub);
        }));
    }
    let mut publishers = Vec::new();
    for _ in 0..workload.publishers {
        publishers.push(system.publisher().await?);
    }
    progress.set_length(if workload.duration_s.is_some() {
        0
    } else {
        workload.count * fan
    });
    progress.set_position(0);
    let start = Instant::now();
    let _ = start_cell.set(start);
    let per_publisher = workload.count / workload.publishers as u64;
    let remainder = workload.count % workload.publishers as u64;
    let mut tasks = Vec::new();
    for (index, mut publisher) in publishers.into_iter().enumerate() {
        let n = per_publisher + u64::from((index as u64) < remainder);
        let size = workload.size;
        let deadline = workload.duration_s.map(|s| start + Duration::from_secs_f64(s));
        tasks.push(tokio::spawn(async move {
            let mut factory = PayloadFactory::new(index as u32, size);
            let mut sent = 0u64;
            while sent < n {
                // Check the clock every 1,024 messages: cheap, and precise enough.
                if sent.is_multiple_of(1024) && deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                publisher.publish(TOPIC, factory.make(sent, 0)).await?;
                sent += 1;
            }
            publisher.flush().await?;
            anyhow::Ok((start.elapsed(), publisher, sent))
        }));
    }
    let mut publish_elapsed = Duration::ZERO;
    let mut keep = Vec::new();
    let mut published = 0u64;
    for task in tasks {
        let (elapsed, publisher, sent) = task.await??;
        publish_elapsed = publish_elapsed.max(elapsed);
        published += sent;
        keep.push(publisher);
    }
    let expected_total = published * fan;
    expected.store(expected_total, Ordering::Relaxed);
    progress.set_length(expected_total);
    if tally.received.load(Ordering::Relaxed) >= expected_total {
        done.notify_one();
    }
    // Wait for every delivery; give up after 5 s without progress.
    let mut last_seen = 0;
    loop {
        let notified = done.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let received = tally.received.load(Ordering::Relaxed);
        progress.set_position(received);
        if received >= expected_total {
            break;
        }
        if tokio::time::timeout(Duration::from_millis(200), notified)
            .await
            .is_err()
        {
            let now = tally.received.load(Ordering::Relaxed);
            if now == last_seen && start.elapsed() > publish_elapsed + Duration::from_secs(5) {
                break;
            }
            if now != last_seen {
                last_seen = now;
            }
        }
    }
    let received = tally.received.load(Ordering::Relaxed);
    progress.set_position(received);
    let delivered_elapsed =
        Duration::from_nanos(tally.last_receive_ns.load(Ordering::Relaxed)).max(publish_elapsed);
    for reader in readers {
        reader.abort();
    }
    drop(keep);
    let secs = delivered_elapsed.as_secs_f64().max(1e-9);
    Ok(Measured {
        publish_msgs_per_s: published as f64 / publish_elapsed.as_secs_f64().max(1e-9),
        delivered_msgs_per_s: received as f64 / secs,
        delivered_mb_per_s: received as f64 * workload.size as f64 / secs / 1e6,
        lost: expected_total.saturating_sub(received),
        out_of_order: tally.out_of_order.load(Ordering::Relaxed),
        ..Measured::default()
    })
}
