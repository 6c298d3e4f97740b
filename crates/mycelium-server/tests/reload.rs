//! Hot reload of the configuration file: a good change applies live without dropping
//! connections, a bad file changes nothing and names the key, what needs a restart is reported,
//! a topic in use is not removed unless forced, credentials removed close their connections,
//! and a topic added while publishers run loses nothing.

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use mycelium_protocol::{ErrorCode, Frame, Publish, Subscribe};
use mycelium_test_support::TestServer;
use support::{Got, Raw};

const ALICE: &str = "myc_alice-token";
const BOB: &str = "myc_bob-token";

/// A configuration file in a temporary directory, rewritten by the test.
struct File {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl File {
    fn new() -> File {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mycelium.toml");
        File { dir, path }
    }

    /// Writes the file: the fixed part (socket, data directory, users) and `rest`.
    fn write(&self, users: &[(&str, &str)], rest: &str) {
        self.write_in("data", users, rest);
    }

    /// As [`File::write`], with the data directory `data` (under the temporary directory).
    fn write_in(&self, data: &str, users: &[(&str, &str)], rest: &str) {
        let dir = self.dir.path();
        let mut text = format!(
            "[server]\nsocket_path = \"{}\"\ntcp = \"127.0.0.1:0\"\nshutdown_timeout = \"2s\"\n\n\
             [http]\nenabled = false\n\n[storage]\ndata_dir = \"{}\"\n\n",
            dir.join("broker.sock").display(),
            dir.join(data).display()
        );
        for (name, token) in users {
            text.push_str(&format!(
                "[[auth.users]]\nname = \"{name}\"\ntoken_sha256 = \"{}\"\nroles = [\"admin\"]\n\n",
                mycelium_auth::token_hash_hex(token)
            ));
        }
        text.push_str(rest);
        // As deployment tools do: a new file renamed over the old one.
        let staged = dir.join("mycelium.toml.new");
        std::fs::write(&staged, text).unwrap();
        std::fs::rename(&staged, &self.path).unwrap();
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

fn subscribe<'a>(pattern: &'a str) -> Frame<'a> {
    Frame::Subscribe(Subscribe {
        pattern,
        group: None,
        options: &[],
    })
}

fn publish<'a>(topic: &'a str, payload: &'a [u8]) -> Frame<'a> {
    Frame::Publish(Publish {
        topic,
        payload,
        ..Default::default()
    })
}

#[tokio::test]
async fn a_good_change_applies_live_without_dropping_connections() {
    let file = File::new();
    let v1 = "[[topics]]\nname = \"orders\"\nbuffer_size = \"1 MiB\"\n\n[[topics]]\nname = \"audit\"\n";
    file.write(&[], v1);
    let server = TestServer::start_file(file.path()).await;
    let mut raw = Raw::hello(&server).await;
    raw.send(1, &subscribe("orders")).await;
    assert!(matches!(raw.recv().await, Some(Got::SubscribeOk { .. })));

    // `[storage] data_dir` cannot change live; the rest applies.
    let v2 = "[[topics]]\nname = \"orders\"\nbuffer_size = \"4 MiB\"\noverflow = \"drop_oldest\"\n\n\
              [[topics]]\nname = \"audit\"\n\n[[topics]]\nname = \"fills\"\nrouting = \"queue\"\n\n\
              [domains]\nexecution = \"fills\"\n\n[health]\nmax_memory = \"8 GiB\"\n\n\
              [http.rate_limits]\nper_ip = { per_second = 50 }\n";
    file.write_in("elsewhere", &[], v2);
    let report = server.reloader.reload(false).await.expect("a valid file reloads");
    let applied = report.applied.join("\n");
    assert!(
        applied.contains("topics.orders.buffer_size: \"1 MiB\" -> \"4 MiB\""),
        "{applied}"
    );
    assert!(applied.contains("topics.orders.overflow"), "{applied}");
    assert!(applied.contains("topics.fills: added"), "{applied}");
    assert!(
        applied.contains("domains.execution: \"execution\" -> \"fills\""),
        "{applied}"
    );
    assert!(applied.contains("health.max_memory"), "{applied}");
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    // Rate limits of a door that is off wait for a restart, as the data directory does.
    let waiting = report.restart_needed.join("\n");
    assert!(waiting.contains("storage.data_dir"), "{waiting}");
    assert!(waiting.contains("http.rate_limits.per_ip"), "{waiting}");
    assert_eq!(report.version, 2);

    let orders = server.broker.topic("orders").unwrap();
    assert_eq!(orders.spec().buffer_bytes, 4 << 20);
    assert_eq!(
        orders.spec().overflow,
        mycelium_broker::spec::Overflow::DropOldest
    );
    assert_eq!(
        server.broker.topic("fills").unwrap().spec().routing,
        mycelium_broker::spec::Routing::Queue
    );
    assert_eq!(
        server
            .broker
            .adjustable()
            .domain_topic(mycelium_codec::RelayDomain::Execution),
        Some("fills")
    );
    // The effective configuration keeps the running data directory and says what waits.
    let view = server.reloader.effective();
    assert_eq!(view.version, 2);
    assert_eq!(
        view.config["storage"]["data_dir"],
        file.dir.path().join("data").display().to_string()
    );
    assert_eq!(view.restart_needed, report.restart_needed);
    assert_eq!(server.broker.reloads.applied.load(Ordering::Relaxed), 1);
    assert_eq!(server.broker.reloads.version.load(Ordering::Relaxed), 2);

    // The connection made before the reload still works, under the new settings.
    raw.send(0, &publish("orders", b"after the reload")).await;
    match raw.recv().await {
        Some(Got::Deliver { topic, payload, .. }) => {
            assert_eq!(topic, "orders");
            assert_eq!(payload, b"after the reload");
        }
        other => panic!("expected the delivery, got {other:?}"),
    }
    // Reloading the same file again changes nothing and does not bump the version.
    let again = server.reloader.reload(false).await.unwrap();
    assert!(again.applied.is_empty(), "{:?}", again.applied);
    assert_eq!(again.version, 2);
    server.stop().await;
}

#[tokio::test]
async fn a_bad_file_changes_nothing_and_names_file_key_and_reason() {
    let file = File::new();
    file.write(&[], "[[topics]]\nname = \"orders\"\nbuffer_size = \"1 MiB\"\n");
    let server = TestServer::start_file(file.path()).await;

    file.write(
        &[],
        "[[topics]]\nname = \"orders\"\nbuffer_size = \"4 MiB\"\nrouting = \"sideways\"\n\n\
         [[topics]]\nname = \"new\"\n",
    );
    let failure = server
        .reloader
        .reload(false)
        .await
        .expect_err("an invalid file is refused");
    assert!(failure.file.ends_with("mycelium.toml"), "{failure}");
    assert!(
        failure
            .problems
            .iter()
            .any(|(key, reason)| key == "topics[0].routing" && reason.contains("sideways")),
        "{failure}"
    );
    // Nothing of the file applied: not the valid buffer size, not the new topic.
    assert_eq!(
        server.broker.topic("orders").unwrap().spec().buffer_bytes,
        1 << 20
    );
    assert!(server.broker.topic("new").is_none());
    assert_eq!(server.reloader.effective().version, 1);

    // Not TOML at all: the parser's line and reason.
    std::fs::write(file.path(), "[server\nname = 1").unwrap();
    let failure = server.reloader.reload(false).await.unwrap_err();
    assert!(failure.to_string().contains("mycelium.toml"), "{failure}");
    assert_eq!(server.broker.reloads.failed.load(Ordering::Relaxed), 2);
    assert_eq!(server.broker.reloads.last_failed.load(Ordering::Relaxed), 1);

    // A file gone: a clear error, still nothing changed.
    std::fs::remove_file(file.path()).unwrap();
    let failure = server.reloader.reload(false).await.unwrap_err();
    assert!(failure.to_string().contains("cannot read"), "{failure}");
    server.stop().await;
}

#[tokio::test]
async fn a_topic_in_use_is_not_removed_unless_forced() {
    let file = File::new();
    file.write(
        &[],
        "[[topics]]\nname = \"busy\"\n\n[[topics]]\nname = \"idle\"\n\n[[topics]]\nname = \"kept\"\n",
    );
    let server = TestServer::start_file(file.path()).await;
    let mut raw = Raw::hello(&server).await;
    raw.send(1, &subscribe("busy")).await;
    assert!(matches!(raw.recv().await, Some(Got::SubscribeOk { .. })));

    file.write(&[], "[[topics]]\nname = \"kept\"\n");
    let report = server.reloader.reload(false).await.unwrap();
    assert!(
        report.applied.contains(&"topics.idle: removed".to_owned()),
        "{:?}",
        report.applied
    );
    assert_eq!(report.refused.len(), 1, "{:?}", report.refused);
    assert!(report.refused[0].contains("topics.busy: not removed: it has 1 subscriber(s)"));
    assert!(server.broker.topic("busy").is_some());
    assert!(server.broker.topic("idle").is_none());
    // The effective configuration still has the topic it kept.
    let names: Vec<String> = server.reloader.effective().config["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["kept", "busy"]);

    let forced = server.reloader.reload(true).await.unwrap();
    assert!(
        forced.applied.contains(&"topics.busy: removed".to_owned()),
        "{:?}",
        forced.applied
    );
    assert!(server.broker.topic("busy").is_none());
    server.stop().await;
}

#[tokio::test]
async fn credentials_removed_by_a_reload_close_their_connections_only() {
    let file = File::new();
    file.write(&[("alice", ALICE), ("bob", BOB)], "");
    let server = TestServer::start_file(file.path()).await;
    let (mut alice, welcome) = Raw::connect_tcp(&server).await.hello_with(ALICE.as_bytes()).await;
    assert_eq!(welcome, Some(Got::Welcome));
    let (mut bob, welcome) = Raw::connect_tcp(&server).await.hello_with(BOB.as_bytes()).await;
    assert_eq!(welcome, Some(Got::Welcome));

    file.write(&[("bob", BOB)], "");
    let report = server.reloader.reload(false).await.unwrap();
    let applied = report.applied.join("\n");
    assert!(applied.contains("auth.users: changed"), "{applied}");
    assert!(applied.contains("1 native connection(s)"), "{applied}");
    match alice.recv().await {
        Some(Got::Error { code, message, .. }) => {
            assert_eq!(code, ErrorCode::NotAuthenticated as u16);
            assert!(message.contains("configuration reload"), "{message}");
        }
        other => panic!("expected NotAuthenticated, got {other:?}"),
    }
    assert_eq!(alice.recv().await, None, "the connection is closed");
    // Bob's connection carries on; Alice's token no longer opens one.
    bob.send(9, &Frame::Ping).await;
    assert_eq!(bob.recv().await, Some(Got::Pong(9)));
    let (_, refused) = Raw::connect_tcp(&server).await.hello_with(ALICE.as_bytes()).await;
    assert!(
        matches!(refused, Some(Got::Error { code, .. }) if code == ErrorCode::NotAuthenticated as u16),
        "{refused:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn reload_and_config_over_the_native_admin_request() {
    let file = File::new();
    file.write(&[], "");
    let server = TestServer::start_file(file.path()).await;
    file.write(&[], "[[topics]]\nname = \"added\"\n");
    let mut raw = Raw::hello(&server).await;
    raw.send(3, &Frame::Admin(br#"{"op":"reload"}"#)).await;
    let Some(Got::AdminOk { request_id: 3, json }) = raw.recv().await else {
        panic!("expected ADMIN_OK")
    };
    let report: mycelium_protocol::admin::ReloadReport = serde_json::from_slice(&json).unwrap();
    assert_eq!(report.applied, ["topics.added: added"]);
    raw.send(4, &Frame::Admin(br#"{"op":"config"}"#)).await;
    let Some(Got::AdminOk { request_id: 4, json }) = raw.recv().await else {
        panic!("expected ADMIN_OK")
    };
    let view: mycelium_protocol::admin::ConfigView = serde_json::from_slice(&json).unwrap();
    assert_eq!(view.version, 2);
    assert_eq!(view.config["topics"][0]["name"], "added");
    // An invalid file: an ERROR naming the key, and the topic stays as it was.
    file.write(&[], "[[topics]]\nname = \"added\"\nbalance = \"sometimes\"\n");
    raw.send(5, &Frame::Admin(br#"{"op":"reload"}"#)).await;
    match raw.recv().await {
        Some(Got::Error {
            request_id: 5,
            code,
            message,
        }) => {
            assert_eq!(code, ErrorCode::InvalidRequest as u16);
            assert!(message.contains("topics[0].balance"), "{message}");
        }
        other => panic!("expected an ERROR, got {other:?}"),
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_added_while_publishers_run_loses_nothing() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64};
    let file = File::new();
    let topics = "[[topics]]\nname = \"feed\"\noverflow = \"block\"\nbuffer_size = \"8 MiB\"\n";
    file.write(&[], topics);
    let server = TestServer::start_file(file.path()).await;
    let mut subscriber = Raw::hello(&server).await;
    subscriber.send(1, &subscribe("feed")).await;
    assert!(matches!(subscriber.recv().await, Some(Got::SubscribeOk { .. })));
    let mut publisher = Raw::hello(&server).await;
    let (stop, sent) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let publishing = {
        let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Acquire) {
                publisher.send(0, &publish("feed", &i.to_be_bytes())).await;
                i += 1;
                sent.store(i, Ordering::Release);
                if i.is_multiple_of(64) {
                    tokio::task::yield_now().await;
                }
            }
            i
        })
    };
    let (seen, receiving) = {
        let seen = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            let mut next = 0u64;
            loop {
                match subscriber.recv().await {
                    Some(Got::Deliver { payload, .. }) => {
                        let value = u64::from_be_bytes(payload.try_into().unwrap());
                        assert_eq!(value, next, "messages arrive in order, none missing");
                        next += 1;
                        counter.store(next, Ordering::Release);
                    }
                    other => panic!("after {next} messages: {other:?}"),
                }
            }
        });
        (seen, task)
    };
    let flowing = |at_least: u64| {
        let sent = Arc::clone(&sent);
        async move {
            while sent.load(Ordering::Acquire) < at_least {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    };
    // Two reloads while the messages flow: a topic added, then the flowing topic changed.
    flowing(1_000).await;
    file.write(&[], &format!("{topics}\n[[topics]]\nname = \"extra\"\n"));
    let first = server.reloader.reload(false).await.unwrap();
    assert_eq!(first.applied, ["topics.extra: added"]);
    let after_first = sent.load(Ordering::Acquire);
    flowing(after_first + 1_000).await;
    file.write(
        &[],
        "[[topics]]\nname = \"feed\"\noverflow = \"block\"\nbuffer_size = \"16 MiB\"\n\n[[topics]]\nname = \"extra\"\n",
    );
    let second = server.reloader.reload(false).await.unwrap();
    assert_eq!(second.applied.len(), 1, "{:?}", second.applied);
    flowing(sent.load(Ordering::Acquire) + 1_000).await;
    stop.store(true, Ordering::Release);
    let total = publishing.await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen.load(Ordering::Acquire) < total {
        assert!(tokio::time::Instant::now() < deadline, "every message arrives");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    receiving.abort();
    assert_eq!(seen.load(Ordering::Acquire), total);
    let feed = server.broker.topic("feed").unwrap();
    assert_eq!(feed.counters().published.load(Ordering::Relaxed), total);
    assert_eq!(feed.counters().dropped.load(Ordering::Relaxed), 0);
    server.stop().await;
}
