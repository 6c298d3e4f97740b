//! Hot reload through the real binary and both doors: SIGHUP, a configuration file replaced by
//! a rename (watched), `mycelium reload` and `mycelium config running`, and the HTTP endpoints.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use mycelium_test_support::{Spawned, TestServer};

const BIN: &str = env!("CARGO_BIN_EXE_mycelium");
const ADMIN_TOKEN: &str = "myc_reload-admin-token";

/// Writes `file` as deployment tools do (a new file renamed over the old one).
fn write(file: &Path, text: &str) {
    let staged = file.with_extension("staged");
    std::fs::write(&staged, text).unwrap();
    std::fs::rename(&staged, file).unwrap();
}

fn config(dir: &Path, topics: &[&str]) -> String {
    let mut text = format!(
        "[server]\nsocket_path = \"{}\"\ntcp = \"\"\n[http]\nenabled = false\n[storage]\ndata_dir = \"{}\"\n",
        dir.join("b.sock").display(),
        dir.join("data").display()
    );
    for topic in topics {
        text.push_str(&format!("[[topics]]\nname = \"{topic}\"\n"));
    }
    text
}

fn serve(file: &Path, socket: &Path, extra: &[&str]) -> Spawned {
    let mut command = Command::new(BIN);
    command
        .args(["serve", "--config", &file.display().to_string()])
        .args(extra)
        .env("MYCELIUM_LOG", "warn")
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

/// The running configuration's version and topic names.
fn running(url: &str) -> (u64, Vec<String>) {
    let out = cli(url, &["config", "running", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let view: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let topics = view["config"]["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    (view["version"].as_u64().unwrap(), topics)
}

/// Waits (up to 10 s: start-up and file events, not a timing assertion) until the running
/// configuration reaches `version`.
fn wait_version(url: &str, version: u64) -> Vec<String> {
    for _ in 0..200 {
        let (now, topics) = running(url);
        if now >= version {
            return topics;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the configuration did not reach version {version}");
}

#[test]
fn sighup_reloads_a_broker_that_does_not_watch_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mycelium.toml");
    write(&file, &config(dir.path(), &["first"]));
    let broker = serve(&file, &dir.path().join("b.sock"), &["--no-watch"]);
    let url = broker.url();
    assert_eq!(running(&url), (1, vec!["first".to_owned()]));
    write(&file, &config(dir.path(), &["first", "second"]));
    // Not watched: nothing happens until the signal (the wait only gives a watch time to act).
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(running(&url).0, 1);
    broker.signal(SIGHUP);
    assert_eq!(wait_version(&url, 2), ["first", "second"]);
}

#[test]
fn a_file_replaced_by_a_rename_is_reloaded_and_mycelium_reload_reports() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mycelium.toml");
    write(&file, &config(dir.path(), &["first"]));
    let broker = serve(&file, &dir.path().join("b.sock"), &[]);
    let url = broker.url();
    write(&file, &config(dir.path(), &["first", "watched"]));
    assert_eq!(wait_version(&url, 2), ["first", "watched"]);

    // A bad file: the watch refuses it (the broker keeps running as it was), and so does
    // `mycelium reload`, naming the key; the exit status says it failed.
    let bad =
        config(dir.path(), &["first", "watched"]).replace("tcp = \"\"", "tcp = \"\"\nmax_connections = 0");
    write(&file, &bad);
    let out = cli(&url, &["reload"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("server.max_connections"), "{stderr}");
    assert!(stderr.contains("mycelium.toml"), "{stderr}");
    assert_eq!(running(&url).0, 2);

    write(&file, &config(dir.path(), &["first", "watched", "third"]));
    // The watch may apply it first; either way `mycelium reload` then reports a consistent state.
    let out = cli(&url, &["reload", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["refused"].as_array().unwrap().is_empty(), "{report}");
    assert_eq!(wait_version(&url, 3), ["first", "watched", "third"]);
    let out = cli(&url, &["config", "running"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("# version 3 from "), "{text}");
    assert!(text.contains("name = \"third\""), "{text}");
}

/// The hang-up signal's number on Linux.
const SIGHUP: i32 = 1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_endpoints_reload_and_show_the_configuration_to_admins_only() {
    let dir = tempfile::tempdir().unwrap();
    let file: PathBuf = dir.path().join("mycelium.toml");
    let text = |topics: &str, extra: &str| {
        format!(
            "[server]\nsocket_path = \"{}\"\ntcp = \"\"\n[http]\nlisten = \"127.0.0.1:0\"\n[storage]\ndata_dir = \"{}\"\n\
             [auth]\njwt_secret = \"a reload test secret of at least 32 bytes\"\n\
             [[auth.users]]\nname = \"ops\"\ntoken_sha256 = \"{}\"\nroles = [\"admin\"]\n\
             [[auth.users]]\nname = \"app\"\ntoken_sha256 = \"{}\"\nroles = [\"producer\"]\n{extra}{topics}",
            dir.path().join("h.sock").display(),
            dir.path().join("data").display(),
            mycelium_auth::token_hash_hex(ADMIN_TOKEN),
            mycelium_auth::token_hash_hex("myc_app-token"),
        )
    };
    write(&file, &text("", ""));
    let server = TestServer::start_file(&file).await;
    let base = format!("http://{}/api/v1/admin", server.http.unwrap());
    let http = reqwest::Client::new();
    let post = |token: &'static str, query: &'static str| {
        http.post(format!("{base}/reload{query}"))
            .bearer_auth(token)
            .send()
    };

    write(
        &file,
        &text(
            "[[topics]]\nname = \"orders\"\n",
            "[http.rate_limits]\nper_ip = { per_second = 1000 }\n",
        ),
    );
    let refused = post("myc_app-token", "").await.unwrap();
    assert_eq!(refused.status(), 403, "a producer may not reload");
    assert!(server.broker.topic("orders").is_none());
    let reloaded = post(ADMIN_TOKEN, "").await.unwrap();
    assert_eq!(reloaded.status(), 200);
    let report: serde_json::Value = reloaded.json().await.unwrap();
    assert_eq!(report["version"], 2);
    let applied: Vec<&str> = report["applied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(applied.contains(&"topics.orders: added"), "{report}");
    assert!(
        applied.iter().any(|l| l.starts_with("http.rate_limits.per_ip")),
        "{report}"
    );

    // An invalid file: 422, every problem named by key, nothing changed.
    write(
        &file,
        &text("[[topics]]\nname = \"orders\"\noverflow = \"explode\"\n", ""),
    );
    let invalid = post(ADMIN_TOKEN, "").await.unwrap();
    assert_eq!(invalid.status(), 422);
    let problem: serde_json::Value = invalid.json().await.unwrap();
    assert_eq!(problem["errors"][0]["field"], "topics[0].overflow", "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("unchanged"),
        "{problem}"
    );

    // The effective configuration: secrets redacted, the version, nothing pending.
    let view: serde_json::Value = http
        .get(format!("{base}/config"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["version"], 2);
    assert_eq!(view["config"]["auth"]["jwt_secret"], "<redacted>");
    assert_eq!(view["config"]["auth"]["users"][0]["token_sha256"], "<redacted>");
    assert_eq!(view["config"]["topics"][0]["name"], "orders");
    let metrics = http
        .get(format!("http://{}/metrics", server.http.unwrap()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("mycelium_config_reloads_total{result=\"failed\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("mycelium_config_version{} 2"), "{metrics}");
    assert!(
        metrics.contains("mycelium_config_last_reload_failed{} 1"),
        "{metrics}"
    );
    server.stop().await;
}
