//! `mycelium bench http`: publishes over the HTTP API with keep-alive connections, one message per
//! POST or batches of `batch` messages per POST, with a JWT on every request as in production.
//! Unlimited rate for the maximum; `--rate` for latency at a fixed request rate, measured from
//! each request's scheduled send time (no coordinated omission).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use crate::Measured;

/// The fixed-rate pacer's shortest sleep: tickets due within it go out together.
const PACER_QUANTUM: Duration = Duration::from_micros(100);

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
    let duration = Duration::from_secs_f64(w.duration_s);
    let requests = Arc::new(AtomicU64::new(0));
    progress.set_length((w.duration_s * 10.0) as u64);
    progress.set_position(0);
    let started = Instant::now();
    // Fixed rate: a pacer thread (sleeping with 1 ns timer slack, not tokio's 1 ms timer wheel)
    // puts each request's scheduled time on one queue that every idle connection waits on at
    // once, as a client's connection pool would; latency counts from the scheduled time, so a
    // backlog shows (no coordinated omission). (Dealing the tickets to the connections in turn
    // made a ticket wait behind a slow request while other connections sat idle; one receiver
    // behind a fair lock made every ticket wait for the previous taker to be scheduled.)
    let (tickets, pacer) = match w.rate {
        Some(rate) => {
            let tickets = Arc::new(Tickets::default());
            let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
            let (t, connections) = (Arc::clone(&tickets), w.connections);
            let pacer = std::thread::spawn(move || {
                pace(started, interval, duration, &t);
                t.stop(connections);
            });
            (Some(tickets), Some(pacer))
        }
        None => (None, None),
    };
    let target = Target::parse(base)?;
    let body = Bytes::from(body(w));
    let mut tasks = Vec::with_capacity(w.connections);
    for _ in 0..w.connections {
        let mut connection = target.connect().await?;
        let (target, body, requests) = (target.clone(), body.clone(), Arc::clone(&requests));
        let auth = HeaderValue::from_str(&format!("Bearer {token}")).context("token")?;
        let tickets = tickets.clone();
        tasks.push(tokio::spawn(async move {
            let mut histogram =
                Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds");
            loop {
                let scheduled = match &tickets {
                    Some(tickets) => match tickets.take().await {
                        Some(due) => due,
                        None => break,
                    },
                    None => Instant::now(),
                };
                if scheduled.duration_since(started) >= duration {
                    break;
                }
                connection.ready().await.context("POST /messages/publish")?;
                let request = target.publish(&auth, body.clone())?;
                let response = connection
                    .send_request(request)
                    .await
                    .context("POST /messages/publish")?;
                let status = response.status();
                let text = response.into_body().collect().await?.to_bytes();
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

/// The fixed-rate requests that are due: their scheduled times in order, and a permit per time
/// (or per stop), so every idle connection waits at once and each permit wakes one of them.
struct Tickets {
    due: std::sync::Mutex<std::collections::VecDeque<Instant>>,
    ready: tokio::sync::Semaphore,
}

impl Default for Tickets {
    fn default() -> Self {
        Tickets {
            due: std::sync::Mutex::default(),
            ready: tokio::sync::Semaphore::new(0),
        }
    }
}

impl Tickets {
    fn push(&self, due: Instant) {
        self.due.lock().expect("not poisoned").push_back(due);
        self.ready.add_permits(1);
    }

    /// No more tickets: one stop for each of `connections`, after the tickets still queued.
    fn stop(&self, connections: usize) {
        self.ready.add_permits(connections);
    }

    /// The next due time; `None`: stop.
    async fn take(&self) -> Option<Instant> {
        self.ready.acquire().await.ok()?.forget();
        self.due.lock().expect("not poisoned").pop_front()
    }
}

/// Puts the scheduled time of every request due in `duration` from `started`, one per `interval`,
/// on `tickets` once it is due. Every ticket that is due goes out at once; then the pacer sleeps
/// to the next one, but at least [`PACER_QUANTUM`]: at tens of thousands of requests/s a
/// wake-up per ticket cost the generator a quarter of a core that the broker needs. A ticket
/// released late still counts from its scheduled time.
fn pace(started: Instant, interval: Duration, duration: Duration, tickets: &Tickets) {
    let _ = rustix::thread::set_current_timer_slack(std::num::NonZeroU64::new(1));
    let mut n = 0u32;
    loop {
        let now = Instant::now();
        loop {
            let due = started + interval * n;
            if due.duration_since(started) >= duration {
                return;
            }
            if due > now {
                std::thread::sleep((due - now).max(PACER_QUANTUM));
                break;
            }
            tickets.push(due);
            n += 1;
        }
    }
}

/// Where the generator sends: one keep-alive HTTP/1.1 connection per task straight on hyper's
/// client connection (no pool, no per-request URL parsing), so the generator spends as little of
/// the machine as it can and the broker gets the rest, as with wrk.
#[derive(Clone)]
struct Target {
    address: Address,
    host: HeaderValue,
}

/// Where the API listens.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Address {
    /// `host:port`.
    Tcp(String),
    /// The API's Unix socket (`[http] unix_socket`).
    Unix(std::path::PathBuf),
}

impl Target {
    /// `http://host[:port]`, or `unix:///path/to/http.sock`.
    fn parse(base: &str) -> anyhow::Result<Target> {
        if let Some(path) = base.strip_prefix("unix://") {
            if path.is_empty() {
                bail!("no socket path in `{base}`");
            }
            return Ok(Target {
                address: Address::Unix(path.into()),
                host: HeaderValue::from_static("localhost"),
            });
        }
        let uri: Uri = base
            .parse()
            .with_context(|| format!("bad HTTP address `{base}`"))?;
        if uri.scheme_str() != Some("http") {
            bail!("bench http speaks plain http://, not `{base}`");
        }
        let authority = uri.authority().with_context(|| format!("no host in `{base}`"))?;
        let address = format!("{}:{}", authority.host(), authority.port_u16().unwrap_or(80));
        Ok(Target {
            host: HeaderValue::from_str(authority.as_str()).context("host")?,
            address: Address::Tcp(address),
        })
    }

    async fn connect(&self) -> anyhow::Result<http1::SendRequest<Full<Bytes>>> {
        match &self.address {
            Address::Tcp(address) => {
                let stream = tokio::net::TcpStream::connect(address)
                    .await
                    .with_context(|| format!("connecting to {address}"))?;
                stream.set_nodelay(true)?;
                let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(connection);
                Ok(sender)
            }
            Address::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path)
                    .await
                    .with_context(|| format!("connecting to {}", path.display()))?;
                let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(connection);
                Ok(sender)
            }
        }
    }

    fn publish(&self, auth: &HeaderValue, body: Bytes) -> anyhow::Result<Request<Full<Bytes>>> {
        Ok(Request::post("/api/v1/messages/publish")
            .header(header::HOST, self.host.clone())
            .header(header::AUTHORIZATION, auth.clone())
            .header(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(Full::new(body))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_takes_host_and_port_or_socket_path_from_the_base_address() {
        let target = Target::parse("http://127.0.0.1:7421").unwrap();
        assert_eq!(target.address, Address::Tcp("127.0.0.1:7421".into()));
        assert_eq!(target.host, "127.0.0.1:7421");
        assert_eq!(
            Target::parse("http://localhost").unwrap().address,
            Address::Tcp("localhost:80".into())
        );
        let unix = Target::parse("unix:///run/mycelium/http.sock").unwrap();
        assert_eq!(unix.address, Address::Unix("/run/mycelium/http.sock".into()));
        assert!(Target::parse("unix://").is_err(), "a socket path is needed");
        let https = Target::parse("https://127.0.0.1:7421").err().unwrap();
        assert!(https.to_string().contains("plain http"), "{https}");
        assert!(Target::parse("not a url").is_err());
    }

    #[tokio::test]
    async fn pacer_releases_every_ticket_once_in_order_and_never_early_then_stops_each_taker() {
        let tickets = Tickets::default();
        let started = Instant::now();
        let interval = Duration::from_micros(250);
        pace(started, interval, Duration::from_millis(20), &tickets);
        // The pacer returned after the last ticket was due, so none went out early.
        assert!(Instant::now() >= started + interval * 79);
        tickets.stop(2);
        let mut n = 0u32;
        while let Some(due) = tickets.take().await {
            assert_eq!(due, started + interval * n, "ticket {n}");
            n += 1;
        }
        assert_eq!(n, 80, "20 ms at one ticket per 250 us");
        assert_eq!(tickets.take().await, None, "the second taker is stopped too");
    }

    #[tokio::test]
    async fn idle_takers_wait_together_and_each_ticket_wakes_one() {
        let tickets = Arc::new(Tickets::default());
        let takers: Vec<_> = (0..3)
            .map(|_| {
                let tickets = Arc::clone(&tickets);
                tokio::spawn(async move { tickets.take().await })
            })
            .collect();
        tokio::task::yield_now().await;
        let now = Instant::now();
        for i in 0..3u32 {
            tickets.push(now + Duration::from_millis(u64::from(i)));
        }
        let mut got = Vec::new();
        for taker in takers {
            got.push(taker.await.unwrap().expect("a ticket each"));
        }
        got.sort();
        assert_eq!(
            got,
            (0..3).map(|i| now + Duration::from_millis(i)).collect::<Vec<_>>()
        );
    }
}
