//! One broker, two doors, through real sockets: a message published over HTTP reaches native
//! subscribers, one published natively is consumed and acknowledged over HTTP, and a DLQ filled
//! natively is replayed over HTTP. A real HTTP client (reqwest) against the served API.

use std::time::Duration;

use mycelium_client::{Client, DurableOptions, StartPosition};
use mycelium_test_support::TestServer;
use serde_json::{Value, json};

const SECRET: &str = "a-shared-secret-of-at-least-32-bytes!";

async fn server(dir: &tempfile::TempDir) -> TestServer {
    let data = dir.path().join("data");
    TestServer::start_at(&dir.path().join("b.sock"), move |c| {
        c.storage.data_dir = data.display().to_string();
        c.http.enabled = true;
        c.http.listen = "127.0.0.1:0".into();
        c.auth.jwt_secret = SECRET.into();
        c.topics.push(mycelium_server::config_topic("orders", |t| {
            t.delivery = "at_least_once".into();
        }));
        c.topics.push(mycelium_server::config_topic("prices", |_| {}));
    })
    .await
}

fn token(roles: &[&str]) -> String {
    let jwt = mycelium_auth::JwtConfig {
        key: mycelium_auth::JwtKey::Hs256(SECRET.as_bytes().to_vec()),
        role_claim: "roles".into(),
        leeway: Duration::from_secs(5),
        issuer: None,
        audience: None,
        cache_tokens: 4096,
    };
    let request = mycelium_auth::TokenRequest {
        subject: "test".into(),
        roles: roles.iter().map(|r| r.parse().unwrap()).collect(),
        ttl: Duration::from_secs(600),
        publish: None,
        consume: None,
    };
    mycelium_auth::issue(&jwt, &request).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_publish_reaches_native_subscribers_and_native_publish_is_consumed_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(&dir).await;
    let base = format!("http://{}/api/v1", server.http.expect("http listening"));
    let http = reqwest::Client::new();
    let admin = token(&["admin"]);
    let native = Client::connect(&server.url()).await.unwrap();

    // HTTP -> native, on an in-memory topic and on a stored one.
    let mut prices = native.subscribe("prices").await.unwrap();
    native.flush().await.unwrap();
    let response = http
        .post(format!("{base}/messages/publish"))
        .bearer_auth(&admin)
        .json(&json!({"topic": "prices", "payload": {"px": 101.5}, "headers": {"traceparent": "00-1-2-01"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let message = tokio::time::timeout(Duration::from_secs(5), prices.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&message.payload[..], br#"{"px":101.5}"#);
    let headers: Vec<(String, Vec<u8>)> = message
        .headers()
        .map(|(k, v)| (k.to_owned(), v.to_vec()))
        .collect();
    assert!(
        headers.contains(&("traceparent".into(), b"00-1-2-01".to_vec())),
        "{headers:?}"
    );

    // native -> HTTP consume and ack.
    let confirmed = native
        .publish_confirmed_id("orders", r#"{"order":7}"#)
        .await
        .unwrap();
    let body: Value = http
        .get(format!(
            "{base}/messages/consume/orders?subscription=http-workers&start=beginning&wait_ms=3000"
        ))
        .bearer_auth(token(&["consumer"]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let consumed = &body["messages"][0];
    assert_eq!(consumed["payload"], json!({"order": 7}), "{body}");
    assert_eq!(consumed["id"], uuid::Uuid::from_bytes(confirmed.1).to_string());
    let status = http
        .post(format!(
            "{base}/messages/{}/ack",
            consumed["id"].as_str().unwrap()
        ))
        .bearer_auth(token(&["consumer"]))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 204);

    // A message dead-lettered by a native consumer, replayed over HTTP, reaches it again.
    let options = DurableOptions {
        start: StartPosition::New,
        max_deliveries: Some(1),
        ..DurableOptions::default()
    };
    let mut workers = native
        .subscribe_durable("orders", "native-workers", options)
        .await
        .unwrap();
    native.publish_confirmed("orders", "poison").await.unwrap();
    let poison = tokio::time::timeout(Duration::from_secs(5), workers.next())
        .await
        .unwrap()
        .unwrap();
    native.term(&poison, "cannot parse").await.unwrap();
    let mut listed = Value::Null;
    for _ in 0..200 {
        listed = http
            .get(format!("{base}/dlq/orders"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if listed["depth"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(listed["entries"][0]["error"], "cannot parse", "{listed}");
    assert_eq!(listed["entries"][0]["subscription"], "native-workers");
    let report: Value = http
        .post(format!("{base}/dlq/orders/replay"))
        .bearer_auth(&admin)
        .json(&json!({"all": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["replayed"], 1, "{report}");
    let again = tokio::time::timeout(Duration::from_secs(5), workers.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&again.payload[..], b"poison");
    native.ack(&again).await.unwrap();
    native.close().await;
    server.stop().await;
}

/// A broker in `dir` with the HTTP API on a loopback port, auth off, `http` adjusted.
async fn open_http_server(
    dir: &std::path::Path,
    http: impl FnOnce(&mut mycelium_server::HttpSection),
) -> TestServer {
    let data = dir.join("data");
    TestServer::start_at(&dir.join("b.sock"), move |c| {
        c.storage.data_dir = data.display().to_string();
        c.http.enabled = true;
        c.http.listen = "127.0.0.1:0".into();
        c.auth.mode = "none".into();
        http(&mut c.http);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_headers_are_cut_off_and_other_clients_are_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let server = open_http_server(dir.path(), |http| {
        http.header_timeout = mycelium_server::units::HumanDuration(Duration::from_millis(300));
    })
    .await;
    let addr = server.http.unwrap();
    // A client that never finishes its headers is disconnected after the header timeout.
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /api/v1/health/live HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Meanwhile a normal client is served.
    let live = reqwest::get(format!("http://{addr}/api/v1/health/live"))
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the slow client was cut off");
    server.stop().await;
}

#[tokio::test]
async fn a_body_that_never_finishes_gets_408_and_other_clients_are_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let server = open_http_server(dir.path(), |http| {
        http.request_timeout = mycelium_server::units::HumanDuration(Duration::from_millis(300));
    })
    .await;
    let addr = server.http.unwrap();
    // Headers promise 100 bytes of body; 10 arrive, then nothing.
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(
        b"POST /api/v1/messages/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"topic\": ",
    )
    .await
    .unwrap();
    // Meanwhile a normal client is served.
    let live = reqwest::get(format!("http://{addr}/api/v1/health/live"))
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    let mut answer = vec![0; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut answer))
        .await
        .expect("the slow request was answered")
        .unwrap();
    let head = String::from_utf8_lossy(&answer[..n]);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    server.stop().await;
}
