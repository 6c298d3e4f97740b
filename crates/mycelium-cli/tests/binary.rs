//! The real `mycelium` binary: serve with no config, pub/sub through the CLI, a broker killed with
//! SIGKILL and restarted under a connected client, SIGTERM, and config checks.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use mycelium_client::{Client, ClientOptions, ConnectionState};
use mycelium_test_support::Spawned;

const BIN: &str = env!("CARGO_BIN_EXE_mycelium");

/// `mycelium serve` with no config file, on `socket`, TCP and HTTP off.
fn serve(socket: &Path, log: &str, stderr: Stdio) -> Command {
    serve_http(socket, "", log, stderr)
}

/// [`serve`] with the HTTP API on `http` (empty: off).
fn serve_http(socket: &Path, http: &str, log: &str, stderr: Stdio) -> Command {
    let mut command = Command::new(BIN);
    command
        .args([
            "serve",
            "--socket",
            &socket.display().to_string(),
            "--tcp",
            "",
            "--http",
            http,
        ])
        .env("MYCELIUM_LOG", log)
        .stdout(Stdio::null())
        .stderr(stderr);
    command
}

/// Starts `mycelium serve` with no config file, on `socket`, TCP off.
fn start(socket: &Path) -> Spawned {
    Spawned::start(serve(socket, "warn", Stdio::inherit()), socket)
}

/// `mycelium serve --config <config>` (HTTP off), listening on `socket`.
fn start_with_config(config: &Path, socket: &Path) -> Spawned {
    let mut command = Command::new(BIN);
    command
        .args(["serve", "--config", &config.display().to_string(), "--http", ""])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Spawned::start(command, socket)
}

fn cli(url: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--url")
        .arg(url)
        .args(args)
        .output()
        .expect("run mycelium")
}

#[test]
fn serve_with_no_config_works_end_to_end_with_pub_and_sub() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(&dir.path().join("m.sock"));
    let url = broker.url();
    let sub = Command::new(BIN)
        .args([
            "--url", &url, "sub", "orders.>", "--count", "3", "--format", "json",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the subscription exists, through the CLI itself.
    for _ in 0..500 {
        let stats = cli(&url, &["stats", "--json"]);
        if String::from_utf8_lossy(&stats.stdout).contains("\"pattern\":\"orders.>\"") {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = cli(&url, &["pub", "orders.new", "hello", "--count", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = cli(&url, &["pub", "orders.cancel", "--confirm", "bye"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1",
        "confirm prints the sequence"
    );
    let output = sub.wait_with_output().unwrap();
    assert!(output.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let got: Vec<(&str, &str)> = lines
        .iter()
        .map(|v| (v["topic"].as_str().unwrap(), v["payload"].as_str().unwrap()))
        .collect();
    assert_eq!(
        got,
        [
            ("orders.new", "hello"),
            ("orders.new", "hello"),
            ("orders.cancel", "bye")
        ]
    );
    // `stats --json` shows every counter of the table, with its value.
    let stats: serde_json::Value = serde_json::from_slice(&cli(&url, &["stats", "--json"]).stdout).unwrap();
    let topic = stats["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "orders.new")
        .unwrap();
    for counter in mycelium_client::TOPIC_COUNTERS {
        assert!(topic[counter.name].is_u64(), "{} missing: {topic}", counter.name);
    }
    assert_eq!(
        (topic["published"].as_u64(), topic["delivered"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(topic["bytes_in"].as_u64(), Some(10));

    // TLV publishing by domain mapping, decoded by the subscriber.
    let sub = Command::new(BIN)
        .args([
            "--url",
            &url,
            "sub",
            "market_data",
            "--count",
            "1",
            "--format",
            "tlv",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..500 {
        let stats = cli(&url, &["stats", "--json"]);
        if String::from_utf8_lossy(&stats.stdout).contains("\"pattern\":\"market_data\"") {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = cli(
        &url,
        &["pub", "", "--tlv", "trade:price=2501.25,volume=0.5,side=sell"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(sub.wait_with_output().unwrap().stdout).unwrap();
    assert!(
        text.contains("Trade: instrument=42 price=2501.25 volume=0.5 side=sell"),
        "{text}"
    );

    // Errors are one clear line and a non-zero exit.
    let out = cli(&url, &["pub", "bad..topic", "x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("token 2 is empty"));
    let out = cli("unix:///nonexistent/x.sock", &["stats"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: cannot connect to unix:///nonexistent/x.sock"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn client_reconnects_and_resubscribes_after_the_broker_is_killed_and_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("k.sock");
    let broker = start(&socket);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let options = ClientOptions {
            backoff: mycelium_client::resilience::Backoff {
                initial: Duration::from_millis(20),
                max: Duration::from_millis(200),
                ..Default::default()
            },
            breaker_threshold: 1000,
            ..ClientOptions::default()
        };
        let client = Client::connect_with(&broker.url(), options).await.unwrap();
        let mut sub = client.subscribe("k.>").await.unwrap();
        client.publish("k.before", b"before").await.unwrap();
        client.flush().await.unwrap();
        assert_eq!(&sub.next().await.unwrap().payload[..], b"before");

        let mut states = client.state_changes();
        broker.signal(9);
        drop(broker);
        states
            .wait_for(|s| *s != ConnectionState::Connected)
            .await
            .unwrap();
        // Published during the outage: buffered, sent after the reconnect.
        for i in 0..100u32 {
            client.publish("k.during", i.to_le_bytes()).await.unwrap();
        }
        let broker = start(&socket); // replaces the stale socket file of the killed broker
        tokio::time::timeout(
            Duration::from_secs(20),
            states.wait_for(|s| *s == ConnectionState::Connected),
        )
        .await
        .expect("reconnected")
        .unwrap();
        for expected in 0..100u32 {
            let message = tokio::time::timeout(Duration::from_secs(10), sub.next())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(message.topic(), "k.during");
            assert_eq!(
                u32::from_le_bytes(message.payload[..].try_into().unwrap()),
                expected
            );
        }
        client.publish("k.after", b"after").await.unwrap();
        assert_eq!(&sub.next().await.unwrap().payload[..], b"after");
        drop(broker);
    });
}

#[test]
fn sigterm_stops_cleanly_and_removes_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("t.sock");
    let mut broker = start(&socket);
    broker.signal(15);
    let status = broker.wait();
    assert!(status.success(), "{status}");
    assert!(!socket.exists());
}

#[test]
fn logs_piped_to_a_file_are_plain_text() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("p.sock");
    let mut broker = Spawned::start(serve(&socket, "info", Stdio::piped()), &socket);
    let mut stderr = broker.take_stderr().unwrap();
    broker.signal(15);
    let mut log = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut log).unwrap();
    assert!(broker.wait().success(), "{log}");
    assert!(log.contains("listening on unix socket"), "{log}");
    assert!(!log.contains('\u{1b}'), "escape codes in a piped log: {log:?}");
}

#[test]
fn a_second_broker_on_a_live_socket_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("l.sock");
    let _broker = start(&socket);
    let out = serve(&socket, "warn", Stdio::piped()).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("a running broker is listening on it"), "{stderr}");
}

#[test]
fn config_check_reports_every_problem_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[server]\nmax_connections = 0\n[[topics]]\nname = \"x\"\noverflow = \"explode\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["config", "check", &file.display().to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let name = file.display().to_string();
    assert!(
        stderr.contains(&format!("{name}: server.max_connections: must be greater than 0")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{name}: topics[0].overflow: `explode` is not one of")),
        "{stderr}"
    );

    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/mycelium.toml");
    let out = Command::new(BIN)
        .args(["config", "check", &reference.display().to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // A broker with a bad file does not start.
    let out = Command::new(BIN)
        .args(["serve", "--config", &file.display().to_string(), "--http", ""])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn durable_topics_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("d.sock");
    let config = dir.path().join("d.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nsocket_path = \"{}\"\ntcp = \"\"\n[storage]\ndata_dir = \"{}\"\n[[topics]]\nname = \"jobs\"\nstorage = \"disk\"\n[[topics]]\nname = \"bulk\"\nstorage = \"disk\"\n",
            socket.display(),
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    // Owned by `Spawned`, so a failing assertion still kills it.
    let broker = start_with_config(&config, &socket);
    let url = broker.url();
    // Confirms print `<sequence> <message id>` for stored messages.
    let out = cli(&url, &["pub", "jobs", "--confirm", "--count", "3", "job"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 3);
    for (i, line) in lines.iter().enumerate() {
        let (sequence, id) = line.split_once(' ').expect("sequence and id");
        assert_eq!(sequence, (i + 1).to_string());
        assert_eq!(id.len(), 36, "a UUID: {id}");
    }
    // A durable subscription from the beginning acks what it prints; the next run resumes.
    let out = cli(
        &url,
        &[
            "sub",
            "jobs",
            "--durable",
            "w",
            "--from-beginning",
            "--count",
            "2",
        ],
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "[jobs #1] job\n[jobs #2] job\n"
    );
    // Acking #1 may have refilled the first consumer's prefetch with #3, which it never printed:
    // then #3 went straight back when it left (as RabbitMQ requeues on channel close), as a
    // second attempt. Either way it is next, and #1 and #2 never come back.
    let out = cli(&url, &["sub", "jobs", "--durable", "w", "--count", "1"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text == "[jobs #3 attempt 2] job\n" || text == "[jobs #3] job\n",
        "{text}"
    );
    // --nack sends it back; the next consumer sees the second attempt.
    let out = cli(
        &url,
        &[
            "sub",
            "jobs",
            "--durable",
            "n",
            "--from-seq",
            "2",
            "--count",
            "1",
            "--nack",
        ],
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "[jobs #2] job\n");
    // #3 comes first (due at once) and #2 after its 2 s backoff, as its second attempt. The NACK
    // freed the prefetch slot, so #3 may have reached that consumer before it left and come back
    // as a second attempt, or not: that race is the client's exit against the broker's refill.
    let out = cli(&url, &["sub", "jobs", "--durable", "n", "--count", "2"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text == "[jobs #3 attempt 2] job\n[jobs #2 attempt 2] job\n"
            || text == "[jobs #3] job\n[jobs #2 attempt 2] job\n",
        "{text}"
    );
    // Many confirmed publishes (more than are kept in flight at once): one line each, in the
    // order sent, each with its own sequence and id.
    let out = cli(
        &url,
        &[
            "pub",
            "bulk",
            "--confirm",
            "--count",
            "1000",
            "--in-flight",
            "7",
            "item",
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<(u64, String)> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (sequence, id) = l.split_once(' ').expect("sequence and id");
            (sequence.parse().unwrap(), id.to_owned())
        })
        .collect();
    assert_eq!(
        lines.iter().map(|(s, _)| *s).collect::<Vec<u64>>(),
        (1..=1000).collect::<Vec<u64>>()
    );
    let ids: std::collections::HashSet<&String> = lines.iter().map(|(_, id)| id).collect();
    assert_eq!(ids.len(), 1000, "every message has its own id");
    // The default window (256) gives the same, continuing the sequence; 0 in flight is refused.
    let out = cli(&url, &["pub", "bulk", "--confirm", "--count", "300", "item"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let sequences: Vec<u64> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split_once(' ').unwrap().0.parse().unwrap())
        .collect();
    assert_eq!(sequences, (1001..=1300).collect::<Vec<u64>>());
    let out = cli(&url, &["pub", "bulk", "--confirm", "--in-flight", "0", "item"]);
    assert!(!out.status.success(), "--in-flight 0 is refused");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--in-flight"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn idempotency_keys_and_the_dead_letter_queue_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("q.sock");
    let config = dir.path().join("q.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nsocket_path = \"{}\"\ntcp = \"\"\n[storage]\ndata_dir = \"{}\"\n\
             [[topics]]\nname = \"jobs\"\ndelivery = \"at_least_once\"\n",
            socket.display(),
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let broker = start_with_config(&config, &socket);
    let url = broker.url();
    let text = |out: &Output| String::from_utf8_lossy(&out.stdout).into_owned();

    // The same key twice: stored once, the second confirm names the original.
    let first = cli(
        &url,
        &["pub", "jobs", "--confirm", "--key", "job-1", "resize img-1"],
    );
    let second = cli(
        &url,
        &["pub", "jobs", "--confirm", "--key", "job-1", "resize img-1"],
    );
    assert!(second.status.success());
    assert_eq!(text(&second), format!("{} duplicate\n", text(&first).trim_end()));

    // One attempt allowed, refused: straight to the DLQ with the consumer's error text.
    let out = cli(
        &url,
        &[
            "sub",
            "jobs",
            "--durable",
            "w",
            "--from-beginning",
            "--count",
            "1",
            "--nack",
            "--max-deliveries",
            "1",
        ],
    );
    assert_eq!(text(&out), "[jobs #1] resize img-1\n");
    let mut listed = String::new();
    for _ in 0..100 {
        let out = cli(&url, &["dlq", "list", "jobs"]);
        listed = text(&out);
        if listed.starts_with("1 dead letters") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(listed.starts_with("1 dead letters in jobs.dlq"), "{listed}");
    assert!(listed.contains("max_deliveries"), "{listed}");
    assert!(listed.contains("refused by mycelium sub --nack"), "{listed}");
    let shown = text(&cli(&url, &["dlq", "show", "jobs", "1"]));
    assert!(
        shown.contains("reason        max_deliveries after 1 attempts"),
        "{shown}"
    );
    assert!(shown.contains("attempt failed"), "{shown}");
    assert!(shown.contains("payload       resize img-1"), "{shown}");
    let json: serde_json::Value =
        serde_json::from_str(&text(&cli(&url, &["dlq", "list", "jobs", "--json"]))).unwrap();
    assert_eq!(json["entries"][0]["original_sequence"], 1);

    // Replay and purge need a selection; a missing dead letter is a clear error.
    let out = cli(&url, &["dlq", "replay", "jobs"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--all"));
    let out = cli(&url, &["dlq", "show", "jobs", "99"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no dead letter 99"));

    // Replayed to its topic: a new message there, which a fresh subscription sees.
    let out = cli(&url, &["dlq", "replay", "jobs", "--all", "--rate", "100"]);
    assert_eq!(text(&out), "replayed 1, already replayed 0, failed 0\n");
    assert!(text(&cli(&url, &["dlq", "list", "jobs"])).starts_with("0 dead letters"));
    let out = cli(
        &url,
        &[
            "sub",
            "jobs",
            "--durable",
            "audit",
            "--from-seq",
            "2",
            "--count",
            "1",
        ],
    );
    assert_eq!(text(&out), "[jobs #2] resize img-1\n");

    // Dead-letter it again (NACK with one attempt allowed), then purge everything.
    let out = cli(
        &url,
        &[
            "sub",
            "jobs",
            "--durable",
            "w",
            "--count",
            "1",
            "--nack",
            "--max-deliveries",
            "1",
        ],
    );
    assert_eq!(text(&out), "[jobs #2] resize img-1\n");
    for _ in 0..100 {
        if text(&cli(&url, &["dlq", "list", "jobs"])).starts_with("1 dead letters") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(text(&cli(&url, &["dlq", "purge", "jobs", "--all"])), "purged 1\n");
    assert!(text(&cli(&url, &["dlq", "list", "jobs"])).starts_with("0 dead letters"));
}

#[test]
fn serve_with_no_config_serves_the_http_api_with_a_generated_key() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("h.sock");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let http = format!("127.0.0.1:{port}");
    let http_addr = http.clone();
    let mut command = serve_http(&socket, &http, "warn", Stdio::null());
    command.current_dir(dir.path());
    let broker = Spawned::start(command, &socket);
    // Tried as a new user would: mint a token next to the broker, publish over HTTP, read it natively.
    let token = Command::new(BIN)
        .current_dir(dir.path())
        .args(["token", "issue", "--role", "admin"])
        .output()
        .unwrap();
    assert!(
        token.status.success(),
        "{}",
        String::from_utf8_lossy(&token.stderr)
    );
    let token = String::from_utf8(token.stdout).unwrap().trim().to_owned();
    assert!(dir.path().join("mycelium-data/http-jwt.secret").exists());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = Client::connect(&broker.url()).await.unwrap();
        let mut sub = client.subscribe("greetings").await.unwrap();
        client.flush().await.unwrap();
        let url = format!("http://{http}/api/v1/messages/publish");
        let http = reqwest::Client::new();
        let without = http
            .post(&url)
            .json(&serde_json::json!({"topic": "greetings", "payload": "hi"}))
            .send()
            .await
            .unwrap();
        assert_eq!(without.status(), 401, "auth is on by default");
        let with = http
            .post(&url)
            .bearer_auth(&token)
            .json(&serde_json::json!({"topic": "greetings", "payload": "hi"}))
            .send()
            .await
            .unwrap();
        assert_eq!(with.status(), 200);
        let message = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&message.payload[..], b"\"hi\"");
        client.close().await;
        // A topic made over HTTP survives a SIGKILL: the registry brings it back.
        let made = http
            .post(format!("http://{http_addr}/api/v1/topics"))
            .bearer_auth(&token)
            .json(&serde_json::json!({"name": "made.at.runtime", "settings": {"routing": "queue"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(made.status(), 201);
    });
    let mut broker = broker;
    broker.kill();
    let mut command = serve_http(&socket, &http_addr, "warn", Stdio::null());
    command.current_dir(dir.path());
    let _broker = Spawned::start(command, &socket);
    runtime.block_on(async {
        // The HTTP listener comes up beside the socket: wait for it.
        let mut got = None;
        for _ in 0..200 {
            let sent = reqwest::Client::new()
                .get(format!("http://{http_addr}/api/v1/topics/made.at.runtime"))
                .bearer_auth(&token)
                .send()
                .await;
            if let Ok(response) = sent {
                got = Some(response);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let got = got.expect("the HTTP listener is up");
        assert_eq!(got.status(), 200, "restored after SIGKILL");
        let view: serde_json::Value = got.json().await.unwrap();
        assert_eq!(view["routing"], "queue");
    });
}
