//! Smoke runs of every `mycelium bench` mode, tiny counts, against the real NATS and Redis the
//! project's machines run (scripts/test starts them). They prove the tool works; the figures mean
//! nothing at these sizes and are not checked.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_mycelium");
const PEERS: &str = "nats=nats://127.0.0.1:4222,redis=redis://127.0.0.1:6379";

/// One bench at a time: they share the peers (and the 2 cores), and a peer overloaded by a
/// parallel bench drops pub/sub messages, which the tool rightly reports as a failure.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn bench(args: &[&str]) -> serde_json::Value {
    let _serial = serial();
    run_json(&[args, &["--runs", "1", "--compare", PEERS]].concat())
}

/// Runs `mycelium bench ARGS --json`; it must succeed and print exactly one JSON object.
fn run_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new(BIN)
        .arg("bench")
        .args(args)
        .arg("--json")
        .output()
        .expect("run mycelium bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().count(),
        1,
        "--json prints exactly one line: {stdout}"
    );
    serde_json::from_str(&stdout).expect("one JSON object")
}

fn systems(report: &serde_json::Value) -> Vec<(String, String)> {
    report["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| {
            (
                r["system"].as_str().unwrap().to_owned(),
                r["transport"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn throughput_fanout_runs_against_every_system() {
    if !mycelium_test_support::available(&[
        mycelium_test_support::Need::Nats,
        mycelium_test_support::Need::Redis,
    ]) {
        return;
    }
    let report = bench(&["throughput", "-n", "2000", "-s", "2"]);
    assert_eq!(report["mode"], "throughput");
    assert_eq!(report["workload"]["subscribers"], 2);
    let got = systems(&report);
    for expected in [
        ("mycelium", "unix"),
        ("mycelium", "tcp"),
        ("nats", "tcp"),
        ("redis", "tcp"),
    ] {
        assert!(
            got.contains(&(expected.0.into(), expected.1.into())),
            "{expected:?} missing: {report}"
        );
    }
    for row in report["results"].as_array().unwrap() {
        assert_eq!(row["lost"], 0, "{row}");
        assert!(row["delivered_msgs_per_s"].as_f64().unwrap() > 0.0);
        assert!(
            row["p50_us"].is_null(),
            "latency fields are null outside latency mode"
        );
    }
}

#[test]
fn throughput_queue_skips_redis_and_says_so() {
    if !mycelium_test_support::available(&[
        mycelium_test_support::Need::Nats,
        mycelium_test_support::Need::Redis,
    ]) {
        return;
    }
    let report = bench(&[
        "throughput",
        "-n",
        "2000",
        "-s",
        "2",
        "--routing",
        "queue",
        "--transport",
        "unix",
    ]);
    let got = systems(&report);
    assert!(got.contains(&("nats".into(), "tcp".into())));
    assert!(!got.iter().any(|(s, _)| s == "redis"));
    assert!(
        report["notes"].to_string().contains("no queue groups"),
        "{report}"
    );
}

#[test]
fn latency_reports_percentiles() {
    if !mycelium_test_support::available(&[
        mycelium_test_support::Need::Nats,
        mycelium_test_support::Need::Redis,
    ]) {
        return;
    }
    let report = bench(&["latency", "-n", "300", "--rate", "3000", "--transport", "unix"]);
    for row in report["results"].as_array().unwrap() {
        let p50 = row["p50_us"].as_f64().expect("p50");
        let p99 = row["p99_us"].as_f64().expect("p99");
        assert!(p50 > 0.0 && p99 >= p50, "{row}");
        assert_eq!(row["lost"], 0, "{row}");
    }
    let report = bench(&[
        "latency",
        "-n",
        "200",
        "--rate",
        "2000",
        "--round-trip",
        "--transport",
        "unix",
    ]);
    assert_eq!(report["workload"]["round_trip"], true);
}

#[test]
fn connections_reports_broker_memory() {
    if !mycelium_test_support::available(&[
        mycelium_test_support::Need::Nats,
        mycelium_test_support::Need::Redis,
    ]) {
        return;
    }
    let report = bench(&["connections", "-c", "20", "-n", "10", "--transport", "unix"]);
    let mycelium = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["system"] == "mycelium")
        .unwrap();
    assert!(mycelium["broker_rss_bytes"].as_u64().unwrap() > 0);
    assert!(mycelium["broker_idle_rss_bytes"].as_u64().unwrap() > 0);
    assert_eq!(mycelium["lost"], 0);
}

#[test]
fn curves_write_charts() {
    if !mycelium_test_support::available(&[
        mycelium_test_support::Need::Nats,
        mycelium_test_support::Need::Redis,
    ]) {
        return;
    }
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args([
            "bench",
            "curves",
            "--transport",
            "unix",
            "--scale",
            "0.0001",
            "--json",
            "--compare",
        ])
        .arg("nats=nats://127.0.0.1:4222")
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["subscribers"].as_array().unwrap().len(),
        10,
        "5 points x 2 systems"
    );
    for chart in ["curve-subscribers.png", "curve-size.png"] {
        let bytes = std::fs::read(dir.path().join(chart)).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
    }
}

#[test]
fn an_unreachable_peer_is_reported_not_fatal() {
    let out = Command::new(BIN)
        .args([
            "bench",
            "throughput",
            "-n",
            "500",
            "--runs",
            "1",
            "--json",
            "--transport",
            "unix",
        ])
        .args(["--compare", "nats=nats://127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["notes"].to_string().contains("not reachable"), "{report}");
    assert_eq!(systems(&report), vec![("mycelium".to_owned(), "unix".to_owned())]);
}

#[test]
fn durable_publish_and_consume_run_against_jetstream_and_redis_streams() {
    if !mycelium_test_support::available(&[
        mycelium_test_support::Need::Nats,
        mycelium_test_support::Need::Redis,
    ]) {
        return;
    }
    for fsync in ["batch", "always"] {
        let report = bench(&["durable", "-n", "500", "--fsync", fsync, "--consume"]);
        assert_eq!(report["mode"], "durable");
        assert_eq!(report["workload"]["fsync"], fsync);
        let got = systems(&report);
        for expected in [("mycelium", "unix"), ("nats", "tcp"), ("redis", "tcp")] {
            assert!(
                got.contains(&(expected.0.into(), expected.1.into())),
                "{expected:?} missing: {report}"
            );
        }
        for row in report["results"].as_array().unwrap() {
            assert_eq!(row["lost"], 0, "every message consumed and acked: {row}");
            assert!(row["publish_msgs_per_s"].as_f64().unwrap() > 0.0);
        }
    }
}

#[test]
fn http_publish_bench_runs_single_and_batched() {
    let _serial = serial();
    for extra in [
        &["--batch", "1"][..],
        &["--batch", "50", "-c", "2"][..],
        &["--rate", "200"][..],
    ] {
        let report = run_json(&[&["http", "--duration", "0.3", "--runs", "1"][..], extra].concat());
        assert_eq!(report["mode"], "http");
        let rows = report["results"].as_array().unwrap();
        let transports: Vec<&str> = rows.iter().map(|r| r["transport"].as_str().unwrap()).collect();
        assert_eq!(
            transports,
            ["http", "http-unix"],
            "TCP first, then the API's Unix socket"
        );
        for row in rows {
            assert!(row["publish_msgs_per_s"].as_f64().unwrap() > 0.0, "{row}");
            assert!(row["p99_us"].as_f64().unwrap() > 0.0, "{row}");
        }
    }
    let unix_only = run_json(&["http", "--duration", "0.3", "--runs", "1", "--transport", "unix"]);
    let rows = unix_only["results"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["transport"], "http-unix");
}

#[test]
fn stalls_probe_reports_every_cpu_without_a_broker() {
    let _serial = serial();
    let report = run_json(&["stalls", "--duration", "0.2"]);
    assert_eq!(report["mode"], "stalls");
    let threads = report["workload"]["threads"].as_u64().unwrap();
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len() as u64, threads);
    for row in results {
        assert!(row["duration_s"].as_f64().unwrap() >= 0.2, "{row}");
        assert_eq!(row["gaps"].as_array().unwrap().len(), 4, "{row}");
    }
    for duration in ["0", "3601"] {
        let bad = Command::new(BIN)
            .args(["bench", "stalls", "--duration", duration])
            .output()
            .expect("run mycelium bench stalls");
        assert!(!bad.status.success(), "--duration {duration}");
        let stderr = String::from_utf8_lossy(&bad.stderr);
        assert!(stderr.contains("above 0 and at most 3600"), "{stderr}");
    }
}
