//! Crash safety, out of process: publish with confirms while the real broker is killed with
//! SIGKILL at a random moment; every confirmed message must be stored, the log must be whole, and a
//! restarted broker continues the sequence. Several rounds; the seed is printed (and can be set
//! with MYCELIUM_CRASH_SEED) so a failure can be replayed.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mycelium_client::{Client, ClientOptions};
use mycelium_storage::{DiskBackend, LogConfig, StorageBackend};
use mycelium_test_support::Spawned;

const BIN: &str = env!("CARGO_BIN_EXE_mycelium");

/// `mycelium serve --config <config>` (HTTP off), killed when dropped.
fn start(config: &Path, socket: &Path) -> Spawned {
    let mut command = Command::new(BIN);
    command
        .args(["serve", "--config", &config.display().to_string(), "--http", ""])
        .env("MYCELIUM_LOG", "warn")
        .stdout(Stdio::null());
    Spawned::start(command, socket)
}

/// The seed of a crash test: MYCELIUM_CRASH_SEED to replay one, the clock otherwise (odd, so the
/// xorshift generator never sticks at zero).
fn crash_seed() -> u64 {
    std::env::var("MYCELIUM_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
        | 1
}

/// A small deterministic generator (xorshift), so rounds replay from the printed seed.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn confirmed_messages_survive_sigkill() {
    let seed = crash_seed();
    println!("crash test seed: {seed} (MYCELIUM_CRASH_SEED={seed} replays it)");
    let mut rng = seed;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let socket = dir.path().join("c.sock");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut expected_next = 1u64;
    let mut all_confirmed: BTreeMap<u64, String> = BTreeMap::new();
    for round in 0..4 {
        let fsync = if round % 2 == 0 { "always" } else { "batch" };
        let config = dir.path().join("c.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nsocket_path = \"{}\"\ntcp = \"\"\n[storage]\ndata_dir = \"{}\"\nfsync_interval = \"2ms\"\n\
                 [[topics]]\nname = \"ledger\"\nstorage = \"disk\"\nfsync = \"{fsync}\"\n",
                socket.display(),
                data.display()
            ),
        )
        .unwrap();
        let mut broker = start(&config, &socket);
        let kill_after = Duration::from_millis(50 + next(&mut rng) % 400);
        println!("round {round}: fsync={fsync}, SIGKILL after {kill_after:?}");
        let confirmed: Arc<Mutex<Vec<(u64, String)>>> = Arc::default();
        runtime.block_on(async {
            let options = ClientOptions {
                breaker_threshold: 1,
                ..ClientOptions::default()
            };
            let client = Client::connect_with(&format!("unix://{}", socket.display()), options)
                .await
                .unwrap();
            let mut publishers = Vec::new();
            for p in 0..4 {
                let client = client.clone();
                let confirmed = Arc::clone(&confirmed);
                publishers.push(tokio::spawn(async move {
                    for n in 0.. {
                        let payload = format!("round {round} publisher {p} message {n}");
                        match client.publish_confirmed("ledger", &payload).await {
                            Ok(sequence) => confirmed.lock().unwrap().push((sequence, payload)),
                            Err(_) => break,
                        }
                    }
                }));
            }
            tokio::time::sleep(kill_after).await;
            broker.signal(9);
            broker.wait();
            for publisher in publishers {
                let _ = tokio::time::timeout(Duration::from_secs(15), publisher).await;
            }
            client.close().await;
        });
        let confirmed = std::mem::take(&mut *confirmed.lock().unwrap());
        assert!(
            !confirmed.is_empty(),
            "round {round}: nothing was confirmed before the kill (seed {seed})"
        );
        // Read the log as a restarted broker would (recovery included).
        let (backend, reports) = DiskBackend::open(&data, LogConfig::default()).unwrap();
        let report = reports
            .iter()
            .find(|(t, _)| t == "ledger")
            .map(|(_, r)| r.clone())
            .unwrap();
        assert_eq!(
            report.corrupt_regions, 0,
            "round {round}: {report:?} (seed {seed})"
        );
        let stored: BTreeMap<u64, String> = backend
            .read("ledger", 1, usize::MAX, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|m| (m.sequence, String::from_utf8(m.payload.to_vec()).unwrap()))
            .collect();
        for (sequence, payload) in confirmed {
            assert_eq!(
                stored.get(&sequence),
                Some(&payload),
                "round {round}: confirmed message {sequence} lost or changed (seed {seed})"
            );
            all_confirmed.insert(sequence, payload);
        }
        let sequences: Vec<u64> = stored.keys().copied().collect();
        let last = sequences.last().copied().unwrap_or(0);
        assert_eq!(
            sequences,
            (1..=last).collect::<Vec<_>>(),
            "round {round}: the log has gaps (seed {seed})"
        );
        assert!(
            last + 1 >= expected_next,
            "round {round}: stored messages went missing (seed {seed})"
        );
        expected_next = last + 1;
        drop(backend);
        // A restarted broker continues right after what is stored.
        let broker = start(&config, &socket);
        runtime.block_on(async {
            let client = Client::connect(&format!("unix://{}", socket.display()))
                .await
                .unwrap();
            let sequence = client
                .publish_confirmed("ledger", format!("round {round} after restart"))
                .await
                .unwrap();
            assert_eq!(sequence, expected_next, "round {round} (seed {seed})");
            all_confirmed.insert(sequence, format!("round {round} after restart"));
            client.close().await;
        });
        expected_next += 1;
        drop(broker);
    }
    // Everything confirmed in every round is still there at the end.
    let (backend, _) = DiskBackend::open(&data, LogConfig::default()).unwrap();
    let stored = backend.read("ledger", 1, usize::MAX, usize::MAX).unwrap();
    for (sequence, payload) in &all_confirmed {
        let message = stored
            .iter()
            .find(|m| m.sequence == *sequence)
            .expect("confirmed message present");
        assert_eq!(&message.payload[..], payload.as_bytes());
    }
    println!(
        "{} confirmed messages verified across 4 SIGKILLs",
        all_confirmed.len()
    );
}

/// Killed during consumption: after a restart no acknowledged message comes back and every
/// unacknowledged one does, with its attempt count kept. Acks are random (out of order) and
/// confirmed (ACK_OK: durable), and the kill comes right after the last confirmation.
#[test]
fn sigkill_during_consumption_keeps_acks_and_redelivers_the_rest() {
    let seed = crash_seed();
    println!("consumption crash seed: {seed}");
    let mut rng = seed;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("k.sock");
    let config = dir.path().join("k.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nsocket_path = \"{}\"\ntcp = \"\"\n[storage]\ndata_dir = \"{}\"\n\
             [[topics]]\nname = \"work\"\nstorage = \"disk\"\nfsync = \"always\"\n",
            socket.display(),
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let url = format!("unix://{}", socket.display());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut broker = start(&config, &socket);
    const TOTAL: u64 = 300;
    runtime.block_on(async {
        let client = Client::connect(&url).await.unwrap();
        for i in 0..TOTAL {
            client
                .publish_confirmed("work", format!("job {i}"))
                .await
                .unwrap();
        }
        client.close().await;
    });
    let mut acked = std::collections::BTreeSet::new();
    // Sequences handed out before and not acknowledged: they must come back with attempt >= 2.
    let mut handed_out = std::collections::BTreeSet::new();
    for round in 0..4 {
        runtime.block_on(async {
            let client = Client::connect(&url).await.unwrap();
            let options = mycelium_client::DurableOptions {
                start: mycelium_client::StartPosition::Beginning,
                max_in_flight: Some(50),
                ..Default::default()
            };
            let mut sub = client
                .subscribe_durable("work", "workers", options)
                .await
                .unwrap();
            let mut received = Vec::new();
            while received.len() < 50 {
                let message = tokio::time::timeout(Duration::from_secs(10), sub.next())
                    .await
                    .unwrap()
                    .unwrap();
                received.push(message);
            }
            // Exactly the 50 lowest unacknowledged sequences, in order; none acknowledged.
            let expected: Vec<u64> = (1..=TOTAL).filter(|s| !acked.contains(s)).take(50).collect();
            let got: Vec<u64> = received.iter().map(|m| m.sequence).collect();
            assert_eq!(got, expected, "round {round} (seed {seed})");
            for message in &received {
                if handed_out.contains(&message.sequence) {
                    assert!(
                        message.attempt() >= Some(2),
                        "round {round}: {} redelivered as attempt {:?} (seed {seed})",
                        message.sequence,
                        message.attempt()
                    );
                }
                handed_out.insert(message.sequence);
            }
            let mut count = 0;
            for message in &received {
                if !next(&mut rng).is_multiple_of(3) {
                    client.ack_confirmed(message).await.unwrap();
                    acked.insert(message.sequence);
                    count += 1;
                }
            }
            println!("round {round}: acked {count} of 50 out of order, then SIGKILL");
        });
        broker.signal(9);
        broker.wait();
        broker = start(&config, &socket);
    }
    drop(broker);
}

/// Idempotency keys and delayed messages survive SIGKILL: the key is still known (a retried
/// publish is a duplicate of the original), and a delayed message is still held to its time.
#[test]
fn sigkill_keeps_the_dedup_window_and_delays() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("d.sock");
    let config = dir.path().join("d.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nsocket_path = \"{}\"\ntcp = \"\"\n[storage]\ndata_dir = \"{}\"\n\
             [[topics]]\nname = \"payments\"\ndelivery = \"exactly_once\"\n",
            socket.display(),
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let url = format!("unix://{}", socket.display());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let broker = start(&config, &socket);
    let keyed = |key: &str, delay: Option<Duration>| mycelium_client::PublishOptions {
        idempotency_key: Some(key.as_bytes().to_vec()),
        delay,
        ..Default::default()
    };
    let (original, not_before) = runtime.block_on(async {
        let client = Client::connect(&url).await.unwrap();
        let original = client
            .publish_with("payments", "pay 10", &keyed("payment-1", None))
            .await
            .unwrap();
        let not_before = std::time::SystemTime::now() + Duration::from_secs(3);
        client
            .publish_with(
                "payments",
                "pay later",
                &keyed("payment-2", Some(Duration::from_secs(3))),
            )
            .await
            .unwrap();
        (original, not_before)
    });
    broker.signal(9);
    drop(broker);
    let broker = start(&config, &socket);
    runtime.block_on(async {
        let client = Client::connect(&url).await.unwrap();
        let retried = client
            .publish_with("payments", "pay 10", &keyed("payment-1", None))
            .await
            .unwrap();
        assert!(retried.duplicate, "the key outlived the crash");
        assert_eq!((retried.sequence, retried.id), (original.sequence, original.id));
        let options = mycelium_client::DurableOptions {
            start: mycelium_client::StartPosition::Beginning,
            ..Default::default()
        };
        let mut sub = client
            .subscribe_durable("payments", "ledger", options)
            .await
            .unwrap();
        let mut payloads = Vec::new();
        for _ in 0..2 {
            let message = tokio::time::timeout(Duration::from_secs(10), sub.next())
                .await
                .unwrap()
                .unwrap();
            if message.payload == "pay later" {
                assert!(
                    std::time::SystemTime::now() >= not_before,
                    "the delayed message came before its time after the restart"
                );
            }
            client.ack_confirmed(&message).await.unwrap();
            payloads.push(String::from_utf8(message.payload.to_vec()).unwrap());
        }
        assert_eq!(payloads, ["pay 10", "pay later"]);
        client.close().await;
    });
    drop(broker);
}
