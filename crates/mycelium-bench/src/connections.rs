//! Many connections: N subscribers, one publisher; all receive all; broker memory idle and loaded.

use std::time::{Duration, Instant};

use indicatif::ProgressBar;

use crate::Measured;
use crate::payload::{PayloadFactory, parse};
use crate::system::{System, rss_bytes};

/// One connections workload.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Workload {
    /// Subscribing connections.
    pub connections: usize,
    /// Messages published.
    pub count: u64,
    /// Payload bytes.
    pub size: usize,
}

/// Runs the workload once against `system`.
///
/// # Errors
/// Connection failures.
pub async fn run(system: &System, workload: &Workload, progress: &ProgressBar) -> anyhow::Result<Measured> {
    let idle_rss = system.pid.and_then(rss_bytes);
    progress.set_length(workload.connections as u64);
    progress.set_position(0);
    let mut subscribers = Vec::with_capacity(workload.connections);
    for i in 0..workload.connections {
        subscribers.push(system.subscriber("bench.connections", None).await?);
        progress.set_position(i as u64 + 1);
    }
    let loaded_rss = system.pid.and_then(rss_bytes);
    let mut publisher = system.publisher().await?;
    let start = Instant::now();
    let mut factory = PayloadFactory::new(0, workload.size);
    for sequence in 0..workload.count {
        publisher
            .publish("bench.connections", factory.make(sequence, 0))
            .await?;
    }
    publisher.flush().await?;
    let count = workload.count;
    let readers: Vec<_> = subscribers
        .into_iter()
        .map(|mut sub| {
            tokio::spawn(async move {
                let mut got = 0u64;
                let mut in_order = true;
                while got < count {
                    match tokio::time::timeout(Duration::from_secs(10), sub.next()).await {
                        Ok(Some(payload)) => {
                            in_order &= parse(&payload).is_some_and(|(_, s, _)| s == got);
                            got += 1;
                        }
                        _ => break,
                    }
                }
                (got, in_order)
            })
        })
        .collect();
    let mut received = 0u64;
    let mut out_of_order = 0u64;
    for reader in readers {
        let (got, in_order) = reader.await?;
        received += got;
        out_of_order += u64::from(!in_order);
    }
    let elapsed = start.elapsed().as_secs_f64().max(1e-9);
    let expected = count * workload.connections as u64;
    Ok(Measured {
        publish_msgs_per_s: count as f64 / elapsed,
        delivered_msgs_per_s: received as f64 / elapsed,
        delivered_mb_per_s: received as f64 * workload.size as f64 / elapsed / 1e6,
        lost: expected.saturating_sub(received),
        out_of_order,
        broker_rss_bytes: loaded_rss,
        broker_idle_rss_bytes: idle_rss,
        ..Measured::default()
    })
}
