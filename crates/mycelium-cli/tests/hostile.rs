//! Hostile clients against the real binary, with the broker's resident memory measured from
//! `/proc`: what one client makes the broker hold stays under a bound derived from the configured
//! limits, and the other clients keep working.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::BytesMut;
use mycelium_protocol::{ErrorCode, Frame, Hello, Publish, decode, encode};
use mycelium_test_support::Spawned;

const BIN: &str = env!("CARGO_BIN_EXE_mycelium");
const MIB: u64 = 1 << 20;

fn start(dir: &Path, config: &str) -> Spawned {
    let socket = dir.join("m.sock");
    let file = dir.join("mycelium.toml");
    std::fs::write(
        &file,
        format!(
            "[server]\nsocket_path = \"{}\"\ntcp = \"\"\n{config}\n[storage]\ndata_dir = \"{}\"\n[http]\nenabled = false\n",
            socket.display(),
            dir.join("data").display()
        ),
    )
    .unwrap();
    let mut command = Command::new(BIN);
    command
        .args(["serve", "--config", &file.display().to_string()])
        .env("MYCELIUM_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    Spawned::start(command, &socket)
}

fn frame(request_id: u32, frame: &Frame<'_>) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode(&mut buf, request_id, frame).unwrap();
    buf.to_vec()
}

/// A raw client on the Unix socket (the broker's own uid: an admin), past HELLO.
fn connect(broker: &Spawned) -> UnixStream {
    let path = broker.url().trim_start_matches("unix://").to_owned();
    let mut stream = UnixStream::connect(path).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    stream.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let hello = Hello {
        version_min: 1,
        version_max: 1,
        client_name: "hostile",
        token: b"",
    };
    stream.write_all(&frame(0, &Frame::Hello(hello))).unwrap();
    let mut buf = Vec::new();
    let (kind, _) = read_frame(&mut stream, &mut buf).expect("WELCOME");
    assert_eq!(kind, "Welcome");
    stream
}

/// Reads one frame: its kind, and the ERROR's code if it is one. `None` at end of stream.
fn read_frame(stream: &mut UnixStream, buf: &mut Vec<u8>) -> Option<(String, Option<u16>)> {
    loop {
        if let Some((decoded, used)) = decode(buf, usize::MAX).expect("the broker sends whole frames") {
            let out = match decoded.frame {
                Frame::Error(e) => ("Error".to_owned(), Some(e.code)),
                other => (other.kind().name().to_owned(), None),
            };
            buf.drain(..used);
            return Some(out);
        }
        let mut chunk = [0u8; 64 << 10];
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Bytes of one STATS answer on `stream`.
fn stats_reply_bytes(stream: &mut UnixStream) -> usize {
    stream.write_all(&frame(7, &Frame::Stats)).unwrap();
    let mut buf = Vec::new();
    let mut total = 0;
    loop {
        let mut chunk = [0u8; 64 << 10];
        let n = stream.read(&mut chunk).unwrap();
        buf.extend_from_slice(&chunk[..n]);
        total += n;
        if let Some((_, used)) = decode(&buf, usize::MAX).unwrap() {
            assert_eq!(used, total, "one frame");
            return used;
        }
    }
}

#[test]
fn a_client_that_asks_for_stats_and_never_reads_is_cut_off_at_its_budget() {
    let dir = tempfile::tempdir().unwrap();
    let budget = 4 * MIB;
    let broker = start(
        dir.path(),
        &format!(
            "max_frame_size = \"1 MiB\"\nmax_outbound_bytes = \"{budget} B\"\nshutdown_timeout = \"1s\""
        ),
    );
    // 400 topics make each STATS answer tens of kilobytes.
    let mut setup = connect(&broker);
    for i in 0..400 {
        let topic = format!("flood.topic.{i:04}");
        let publish = Publish {
            topic: &topic,
            payload: b"x",
            ..Default::default()
        };
        setup.write_all(&frame(0, &Frame::Publish(publish))).unwrap();
    }
    let reply = stats_reply_bytes(&mut setup);
    assert!(reply > 20_000, "{reply} bytes");
    let before = broker.rss_bytes();

    // 10,000 STATS requests, never reading: unbounded, that is hundreds of megabytes of answers.
    let mut hostile = connect(&broker);
    let request = frame(9, &Frame::Stats);
    let mut sent = 0;
    for _ in 0..10_000 {
        if hostile.write_all(&request).is_err() {
            break; // closed by the broker
        }
        sent += 1;
    }
    std::thread::sleep(Duration::from_millis(300));
    let grown = broker.rss_bytes().saturating_sub(before);
    assert!(
        grown < budget + 32 * MIB,
        "the broker grew by {} MiB for one client that does not read (budget {} MiB, {sent} requests sent)",
        grown / MIB,
        budget / MIB
    );
    // Cut off, it is closed within shutdown_timeout even though it never reads: its writer is
    // stopped, not left holding the socket and its pending bytes.
    let mut closed = false;
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(50));
        match hostile.write_all(&frame(11, &Frame::Ping)) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                closed = true;
                break;
            }
            _ => {}
        }
    }
    assert!(closed, "the broker closed the connection");
    // Its last frame is the reason, then the close.
    let mut buf = Vec::new();
    let mut last = None;
    while let Some(got) = read_frame(&mut hostile, &mut buf) {
        last = Some(got);
    }
    assert_eq!(
        last,
        Some(("Error".to_owned(), Some(ErrorCode::SlowConsumer as u16))),
        "cut off with SlowConsumer"
    );
    // Everyone else is served as before.
    assert_eq!(stats_reply_bytes(&mut setup), reply);
    let metrics = Command::new(BIN)
        .args(["--url", &broker.url(), "stats", "--json"])
        .output()
        .unwrap();
    assert!(metrics.status.success());
}

/// The broker's resident memory at its highest while `work` runs (sampled every 2 ms).
fn peak_rss_during(broker: &Spawned, work: impl FnOnce()) -> u64 {
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(broker.rss_bytes());
                std::thread::sleep(Duration::from_millis(2));
            }
            peak.max(broker.rss_bytes())
        });
        work();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        sampler.join().unwrap()
    })
}

fn cli(broker: &Spawned, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(["--url", &broker.url()])
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap()
}

#[test]
fn dead_letters_are_listed_and_replayed_a_bounded_page_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(
        dir.path(),
        "[[topics]]\nname = \"jobs\"\ndelivery = \"at_least_once\"\nfsync = \"never\"\n",
    );
    // 400 dead letters of 200 KB each: 80 MB in the DLQ.
    let mut producer = connect(&broker);
    let payload = vec![b'j'; 200_000];
    for _ in 0..400 {
        let publish = Publish {
            topic: "jobs",
            payload: &payload,
            ..Default::default()
        };
        producer.write_all(&frame(0, &Frame::Publish(publish))).unwrap();
    }
    let out = Command::new(BIN)
        .args([
            "--url",
            &broker.url(),
            "sub",
            "jobs",
            "--durable",
            "w",
            "--from-beginning",
        ])
        .args([
            "--count",
            "400",
            "--nack",
            "--max-deliveries",
            "1",
            "--format",
            "hex",
        ])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(out.success());
    let depth = |broker: &Spawned| -> serde_json::Value {
        serde_json::from_slice(&cli(broker, &["dlq", "list", "jobs", "--json", "--limit", "1000"]).stdout)
            .unwrap()
    };
    let mut page = depth(&broker);
    for _ in 0..500 {
        if page["depth"] == 400 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        page = depth(&broker);
    }
    assert_eq!(page["depth"], 400, "every message dead-lettered");
    // A listing of 1,000 asked stops at the page weight, and says where to go on.
    let listed = page["entries"].as_array().unwrap().len();
    assert!(
        (1..=30).contains(&listed),
        "{listed} entries of 200 KB in one page"
    );
    assert_eq!(page["next_after"], page["entries"][listed - 1]["sequence"]);

    let before = broker.rss_bytes();
    let peak = peak_rss_during(&broker, || {
        let out = cli(&broker, &["dlq", "replay", "jobs", "--all"]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "replayed 400, already replayed 0, failed 0\n"
        );
    });
    let grown = peak.saturating_sub(before);
    assert!(
        // Held at once (as before the replay went page by page), the 80 MB and the pages read
        // for them grow it by well over 80 MiB; a page at a time, by tens.
        grown < 80 * MIB,
        "replaying 80 MB of dead letters grew the broker by {} MiB",
        grown / MIB
    );
    assert_eq!(depth(&broker)["depth"], 0);
}
