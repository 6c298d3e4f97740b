//! Latency at a fixed send rate, measured from each message's *scheduled* send time (so a stalled
//! sender cannot hide latency: no coordinated omission). One-way through the broker, and round trip
//! through an echo service (request -> broker -> echo -> broker -> requester).

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::ProgressBar;

use crate::Measured;
use crate::payload::{HEADER, PayloadFactory, parse};
use crate::system::System;

/// One latency workload.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Workload {
    /// Messages per second.
    pub rate: u64,
    /// Messages sent.
    pub count: u64,
    /// Payload bytes (at least 20).
    pub size: usize,
    /// Measure the request/reply round trip instead of one way.
    pub round_trip: bool,
}

/// Runs the workload once against `system`.
///
/// # Errors
/// Connection failures.
pub async fn run(system: &System, workload: &Workload, progress: &ProgressBar) -> anyhow::Result<Measured> {
    let (send_topic, receive_topic) = if workload.round_trip {
        ("bench.request", "bench.reply")
    } else {
        ("bench.latency", "bench.latency")
    };
    let mut receiver = system.subscriber(receive_topic, None).await?;
    let echo = if workload.round_trip {
        let mut requests = system.subscriber(send_topic, None).await?;
        let mut replier = system.publisher().await?;
        Some(tokio::spawn(async move {
            while let Some(payload) = requests.next().await {
                if replier.publish("bench.reply", payload).await.is_err()
                    || replier.flush_now().await.is_err()
                {
                    break;
                }
            }
        }))
    } else {
        None
    };
    let mut publisher = system.publisher().await?;
    let base = Instant::now();
    let count = workload.count;
    progress.set_length(count);
    progress.set_position(0);
    let reader = tokio::spawn(async move {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds");
        let mut received = 0u64;
        while received < count {
            let Ok(Some(payload)) = tokio::time::timeout(Duration::from_secs(10), receiver.next()).await
            else {
                break;
            };
            let now = base.elapsed().as_nanos() as u64;
            if let Some((_, _, scheduled)) = parse(&payload) {
                let _ = histogram.record(now.saturating_sub(scheduled).max(1));
            }
            received += 1;
        }
        (histogram, received)
    });
    // The sender runs on its own thread so it can sleep with microsecond precision.
    let handle = tokio::runtime::Handle::current();
    let interval = Duration::from_secs_f64(1.0 / workload.rate.max(1) as f64);
    let size = workload.size.max(HEADER);
    let progress_sender = progress.clone();
    let topic: &'static str = send_topic;
    let sender = std::thread::spawn(move || -> anyhow::Result<()> {
        // Sleep precisely: the default 50 us timer slack would make every send late, for every
        // system alike, and blur the comparison.
        let _ = rustix::thread::set_current_timer_slack(std::num::NonZeroU64::new(1));
        let mut factory = PayloadFactory::new(0, size);
        for sequence in 0..count {
            let scheduled = interval * sequence as u32;
            let now = base.elapsed();
            if scheduled > now {
                std::thread::sleep(scheduled - now);
            }
            let payload = factory.make(sequence, scheduled.as_nanos() as u64);
            handle.block_on(async {
                publisher.publish(topic, payload).await?;
                publisher.flush_now().await
            })?;
            if sequence % 256 == 0 {
                progress_sender.set_position(sequence);
            }
        }
        handle.block_on(publisher.flush())
    });
    let sent = tokio::task::spawn_blocking(move || sender.join()).await?;
    match sent {
        Ok(result) => result?,
        Err(_) => anyhow::bail!("latency sender thread panicked"),
    }
    let (histogram, received) = reader.await?;
    if let Some(echo) = echo {
        echo.abort();
    }
    progress.set_position(received);
    let us = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    Ok(Measured {
        publish_msgs_per_s: workload.rate as f64,
        delivered_msgs_per_s: workload.rate as f64 * received as f64 / count.max(1) as f64,
        delivered_mb_per_s: workload.rate as f64 * size as f64 / 1e6,
        lost: count.saturating_sub(received),
        p50_us: Some(us(0.5)),
        p90_us: Some(us(0.9)),
        p99_us: Some(us(0.99)),
        p999_us: Some(us(0.999)),
        max_us: Some(histogram.max() as f64 / 1000.0),
        ..Measured::default()
    })
}
