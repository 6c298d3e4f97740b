//! `mycelium bench http`: publishes over the HTTP API with keep-alive connections, one message per
//! POST or batches of `batch` messages per POST, with a JWT on every request as in production.
//! Unlimited rate for the maximum; `--rate` for latency at a fixed request rate, measured from
//! each request's scheduled send time (no coordinated omission).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use crate::Measured;

/// The HTTP workload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Workload {
    /// Keep-alive connections publishing at once.
    pub connections: usize,
    /// Seconds to publish for.
    pub duration_s: f64,
    /// Payload bytes per message.
    pub size: usize,
    /// Messages per POST (1: single publishes).
    pub batch: usize,
    /// Requests per second in total (`None`: as fast as possible).
    pub rate: Option<u64>,
}

fn body(w: &Workload) -> String {
    let payload = "x".repeat(w.size.saturating_sub(2)); // a JSON string: quotes + text = size bytes
    let message = format!(r#"{{"topic":"bench.http","payload":"{payload}"}}"#);
    if w.batch <= 1 {
        message
    } else {
        let messages = vec![message; w.batch].join(",");
        format!(r#"{{"messages":[{messages}]}}"#)
    }
}

/// Runs the workload once against `base` (`http://host:port`) with `token`.
///
/// # Errors
/// A request that fails or is refused (the run stops and says why).
pub async fn run(base: &str, token: &str, w: &Workload, progress: &ProgressBar) -> anyhow::Result<Measured> {
    if w.connections == 0 || w.batch == 0 || w.duration_s <= 0.0 {
        bail!("http needs connections, batch and duration above 0");
    }
    let url = Arc::new(format!("{base}/api/v1/messages/publish"));
    let body = Arc::new(body(w));
    let auth = Arc::new(format!("Bearer {token}"));
    let duration = Duration::from_secs_f64(w.duration_s);
    let requests = Arc::new(AtomicU64::new(0));
    progress.set_length((w.duration_s * 10.0) as u64);
    progress.set_position(0);
    let started = Instant::now();
    // Fixed rate: a pacer thread (sleeping with 1 ns timer slack, not tokio's 1 ms timer wheel)
    // puts each request's scheduled time on one queue that every connection takes from when it is
    // idle, as a client's connection pool would; latency counts from the scheduled time, so a
    // backlog shows (no coordinated omission). (Dealing the tickets to the connections in turn
    // made a ticket wait behind a slow request while other connections sat idle.)
    let (tickets, pacer) = match w.rate {
        Some(rate) => {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
            let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
            let pacer = std::thread::spawn(move || {
                let _ = rustix::thread::set_current_timer_slack(std::num::NonZeroU64::new(1));
                let mut n = 0u32;
                loop {
                    let due = started + interval * n;
                    if due.duration_since(started) >= duration {
                        break;
                    }
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    if tx.send(due).is_err() {
                        break;
                    }
                    n += 1;
                }
            });
            (Some(Arc::new(tokio::sync::Mutex::new(rx))), Some(pacer))
        }
        None => (None, None),
    };
    let mut tasks = Vec::with_capacity(w.connections);
    for _ in 0..w.connections {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .tcp_nodelay(true)
            .build()?;
        let (url, body, auth, requests) = (
            Arc::clone(&url),
            Arc::clone(&body),
            Arc::clone(&auth),
            Arc::clone(&requests),
        );
        let tickets = tickets.clone();
        tasks.push(tokio::spawn(async move {
            let mut histogram =
                Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds");
            loop {
                let scheduled = match &tickets {
                    // tokio's Mutex is fair: idle connections take tickets in the order they
                    // asked.
                    Some(tickets) => match tickets.lock().await.recv().await {
                        Some(due) => due,
                        None => break,
                    },
                    None => Instant::now(),
                };
                if scheduled.duration_since(started) >= duration {
                    break;
                }
                let response = client
                    .post(url.as_str())
                    .header("authorization", auth.as_str())
                    .header("content-type", "application/json")
                    .body(body.as_str().to_owned())
                    .send()
                    .await
                    .context("POST /messages/publish")?;
                let status = response.status();
                let text = response.bytes().await?;
                if !status.is_success() {
                    bail!(
                        "POST /messages/publish answered {status}: {}",
                        String::from_utf8_lossy(&text)
                    );
                }
                let _ = histogram.record(scheduled.elapsed().as_nanos().max(1) as u64);
                requests.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(histogram)
        }));
    }
    let ticker = {
        let progress = progress.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                progress.inc(1);
            }
        })
    };
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds");
    for task in tasks {
        histogram.add(task.await??)?;
    }
    ticker.abort();
    if let Some(pacer) = pacer {
        let _ = tokio::task::spawn_blocking(move || pacer.join()).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let requests = requests.load(Ordering::Relaxed);
    let messages = requests * w.batch as u64;
    let rate = messages as f64 / elapsed;
    let us = |q: f64| Some(histogram.value_at_quantile(q) as f64 / 1000.0);
    Ok(Measured {
        publish_msgs_per_s: rate,
        delivered_msgs_per_s: rate,
        delivered_mb_per_s: rate * w.size as f64 / 1e6,
        p50_us: us(0.5),
        p90_us: us(0.9),
        p99_us: us(0.99),
        p999_us: us(0.999),
        max_us: Some(histogram.max() as f64 / 1000.0),
        ..Measured::default()
    })
}
