//! `mycelium bench soak`: good clients beside hostile ones for a while, on a spawned broker.
//! Reports what the good clients got (throughput, errors), what the hostile ones met (refusals,
//! cut-offs), and the broker's resident memory over the run. Not a test: run it by hand (or in a
//! nightly job) for as long as wanted; the test command runs each hostile behaviour once, with
//! its bound asserted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use mycelium_protocol::{BatchWriter, Frame, Hello, Publish, Subscribe, encode};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::spawn::Spawned;

/// What a soak run saw.
#[derive(Debug, Default, Serialize)]
pub(crate) struct SoakReport {
    pub(crate) seconds: f64,
    pub(crate) good_published: u64,
    pub(crate) good_received: u64,
    pub(crate) good_per_second: f64,
    pub(crate) good_errors: u64,
    pub(crate) rss_start_mib: f64,
    pub(crate) rss_max_mib: f64,
    pub(crate) rss_end_mib: f64,
    /// Per hostile behaviour: connections it made, and how many the broker closed or refused.
    pub(crate) hostile: Vec<(String, u64, u64)>,
}

/// Counts of one hostile behaviour.
#[derive(Default)]
struct Tally {
    connections: AtomicU64,
    cut_off: AtomicU64,
}

fn frame(request_id: u32, frame: &Frame<'_>) -> Vec<u8> {
    let mut buf = BytesMut::new();
    let _ = encode(&mut buf, request_id, frame);
    buf.to_vec()
}

/// A raw connection past HELLO (the broker's own user on its Unix socket: no token needed).
async fn raw(spawned: &Spawned) -> anyhow::Result<UnixStream> {
    let mut stream = UnixStream::connect(&spawned.socket).await?;
    let hello = Hello {
        version_min: 1,
        version_max: 1,
        client_name: "soak-hostile",
        token: b"",
    };
    stream.write_all(&frame(0, &Frame::Hello(hello))).await?;
    let mut welcome = [0u8; 256];
    let _ = stream.read(&mut welcome).await?;
    Ok(stream)
}

/// Runs `behave` on fresh connections until `stop`, counting connections and those the broker
/// ended (a write or read error, or end of stream).
fn hostile<F, Fut>(
    spawned: Arc<Spawned>,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    behave: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(UnixStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let Ok(stream) = raw(&spawned).await else {
                tally.cut_off.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            tally.connections.fetch_add(1, Ordering::Relaxed);
            tokio::select! {
                () = behave(stream) => { tally.cut_off.fetch_add(1, Ordering::Relaxed); }
                () = async { while !stop.load(Ordering::Relaxed) { tokio::time::sleep(Duration::from_millis(100)).await; } } => {}
            }
        }
    })
}

/// Reads until the broker closes the stream.
async fn until_closed(mut stream: UnixStream) {
    let mut sink = vec![0u8; 64 << 10];
    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
}

/// Runs the soak for `seconds` against `spawned`; `token` is the good clients' credential.
pub(crate) async fn run(
    spawned: Arc<Spawned>,
    token: mycelium_client::Token,
    seconds: f64,
) -> anyhow::Result<SoakReport> {
    let stop = Arc::new(AtomicBool::new(false));
    let pid = spawned.child.id();
    let rss = || crate::system::rss_bytes(pid).unwrap_or(0) as f64 / f64::from(1u32 << 20);
    let mut report = SoakReport {
        rss_start_mib: rss(),
        ..SoakReport::default()
    };
    let behaviours: Vec<(&str, Arc<Tally>)> = [
        "stats flood, never reads",
        "half-sent 8 MiB frame",
        "`>` subscriber that never reads",
        "2,600 nested `(` filter",
        "batches of bad entries",
    ]
    .into_iter()
    .map(|name| (name, Arc::new(Tally::default())))
    .collect();
    let mut tasks = Vec::new();
    let (s, t) = (Arc::clone(&spawned), Arc::clone(&stop));
    tasks.push(hostile(
        s,
        t,
        Arc::clone(&behaviours[0].1),
        |mut stream| async move {
            let stats = frame(9, &Frame::Stats);
            while stream.write_all(&stats).await.is_ok() {}
        },
    ));
    let (s, t) = (Arc::clone(&spawned), Arc::clone(&stop));
    tasks.push(hostile(
        s,
        t,
        Arc::clone(&behaviours[1].1),
        |mut stream| async move {
            let mut prefix = (8u32 << 20).to_le_bytes().to_vec();
            prefix.extend_from_slice(&[0x10; 1024]);
            if stream.write_all(&prefix).await.is_ok() {
                until_closed(stream).await;
            }
        },
    ));
    let (s, t) = (Arc::clone(&spawned), Arc::clone(&stop));
    tasks.push(hostile(
        s,
        t,
        Arc::clone(&behaviours[2].1),
        |mut stream| async move {
            let subscribe = Subscribe {
                pattern: ">",
                group: None,
                options: &[],
            };
            if stream
                .write_all(&frame(1, &Frame::Subscribe(subscribe)))
                .await
                .is_ok()
            {
                // Never reads; a PING a second finds out when the broker has given up on it.
                let ping = frame(5, &Frame::Ping);
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if stream.write_all(&ping).await.is_err() {
                        return;
                    }
                }
            }
        },
    ));
    let (s, t) = (Arc::clone(&spawned), Arc::clone(&stop));
    tasks.push(hostile(
        s,
        t,
        Arc::clone(&behaviours[3].1),
        |mut stream| async move {
            let filter = "(".repeat(2600);
            let options = mycelium_protocol::SubscribeOptions {
                filter: Some(&filter),
                ..Default::default()
            };
            let mut encoded = BytesMut::new();
            if options.encode(&mut encoded).is_err() {
                return;
            }
            let subscribe = Subscribe {
                pattern: "soak.filtered",
                group: None,
                options: &encoded,
            };
            for _ in 0..100 {
                if stream
                    .write_all(&frame(2, &Frame::Subscribe(subscribe)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            let _ = stream.shutdown().await;
            until_closed(stream).await;
        },
    ));
    let (s, t) = (Arc::clone(&spawned), Arc::clone(&stop));
    tasks.push(hostile(
        s,
        t,
        Arc::clone(&behaviours[4].1),
        |mut stream| async move {
            let mut buf = BytesMut::new();
            let mut batch = BatchWriter::new(&mut buf, 3);
            for _ in 0..1000 {
                let _ = batch.push(&Publish {
                    topic: "bad..topic",
                    payload: b"x",
                    ..Default::default()
                });
            }
            let _ = batch.finish();
            for _ in 0..200 {
                if stream.write_all(&buf).await.is_err() {
                    return;
                }
            }
            let _ = stream.shutdown().await;
            until_closed(stream).await;
        },
    ));

    // The good clients: one publisher, one subscriber, on the Unix socket.
    let url = format!("unix://{}", spawned.socket.display());
    let options = mycelium_client::ClientOptions {
        token: Some(token),
        ..mycelium_client::ClientOptions::default()
    };
    let subscriber = mycelium_client::Client::connect_with(&url, options.clone()).await?;
    let mut subscription = subscriber.subscribe("soak.good").await?;
    let publisher = mycelium_client::Client::connect_with(&url, options).await?;
    let received = Arc::new(AtomicU64::new(0));
    let counting = Arc::clone(&received);
    let reader = tokio::spawn(async move {
        while subscription.next().await.is_some() {
            counting.fetch_add(1, Ordering::Relaxed);
        }
    });
    let payload = Bytes::from(vec![7u8; 256]);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let mut next_sample = started;
    let mut rss_max = report.rss_start_mib;
    while Instant::now() < deadline {
        for _ in 0..100 {
            match publisher.publish("soak.good", payload.clone()).await {
                Ok(()) => report.good_published += 1,
                Err(_) => report.good_errors += 1,
            }
        }
        if Instant::now() >= next_sample {
            rss_max = rss_max.max(rss());
            next_sample += Duration::from_secs(1);
        }
        tokio::task::yield_now().await;
    }
    let _ = publisher.flush().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    report.seconds = started.elapsed().as_secs_f64();
    report.good_received = received.load(Ordering::Relaxed);
    report.good_per_second = report.good_received as f64 / report.seconds;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.abort();
    }
    reader.abort();
    report.rss_max_mib = rss_max.max(rss());
    report.rss_end_mib = rss();
    report.hostile = behaviours
        .iter()
        .map(|(name, tally)| {
            (
                (*name).to_owned(),
                tally.connections.load(Ordering::Relaxed),
                tally.cut_off.load(Ordering::Relaxed),
            )
        })
        .collect();
    Ok(report)
}

/// The report as a table.
pub(crate) fn print(report: &SoakReport) {
    println!("soak: {:.0} s", report.seconds);
    println!(
        "good clients: {} published, {} received ({:.0}/s), {} errors",
        report.good_published, report.good_received, report.good_per_second, report.good_errors
    );
    println!(
        "broker RSS: {:.1} MiB at the start, {:.1} MiB at most, {:.1} MiB at the end",
        report.rss_start_mib, report.rss_max_mib, report.rss_end_mib
    );
    println!("| hostile behaviour | connections | ended by the broker |");
    println!("|---|---:|---:|");
    for (name, connections, cut_off) in &report.hostile {
        println!("| {name} | {connections} | {cut_off} |");
    }
}
