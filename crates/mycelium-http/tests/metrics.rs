//! `/metrics`: counters move as a scripted publish / consume / nack / term sequence says; every
//! metric the Grafana dashboard and the alert rules query is one the broker exports; readiness
//! (probe and metric) turns off when the data directory becomes unwritable.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use mycelium_broker::spec::{Delivery, StorageKind, TopicSpec};
use mycelium_broker::{Broker, BrokerConfig, DurableConfig};
use mycelium_http::HttpConfig;
use serde_json::{Value, json};
use tower::ServiceExt;

fn stored() -> TopicSpec {
    TopicSpec {
        storage: StorageKind::Disk,
        delivery: Delivery::AtLeastOnce,
        ..TopicSpec::default()
    }
}

async fn call(router: &axum::Router, method: &str, path: &str, body: Option<Value>) -> (StatusCode, String) {
    let mut request = Request::builder().method(method).uri(path);
    let body = match body {
        Some(json) => {
            request = request.header("content-type", "application/json");
            Body::from(json.to_string())
        }
        None => Body::empty(),
    };
    let response = router.clone().oneshot(request.body(body).unwrap()).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// The value of the sample `name{labels}` (labels in any order), 0 when absent.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
            metric == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, value)| value.parse::<f64>().unwrap())
        .sum()
}

#[tokio::test]
async fn counters_follow_a_scripted_sequence_and_the_dashboards_query_real_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = Broker::new(BrokerConfig {
        topics: vec![("jobs".into(), stored())],
        durable: DurableConfig {
            data_dir: data.clone(),
            ..DurableConfig::default()
        },
        ..BrokerConfig::default()
    })
    .unwrap();
    let router = mycelium_http::router(Arc::clone(&broker), HttpConfig::default()).unwrap();
    for n in 0..3 {
        let (status, _) = call(
            &router,
            "POST",
            "/api/v1/messages/publish",
            Some(json!({"topic": "jobs", "payload": n})),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    let consume = "/api/v1/messages/consume/jobs?subscription=w&start=beginning&max=3&wait_ms=2000";
    let (_, body) = call(&router, "GET", consume, None).await;
    let messages: Value = serde_json::from_str(&body).unwrap();
    let id = |i: usize| messages["messages"][i]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        call(&router, "POST", &format!("/api/v1/messages/{}/ack", id(0)), None)
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    let nack = json!({"delay_ms": 1});
    assert_eq!(
        call(
            &router,
            "POST",
            &format!("/api/v1/messages/{}/nack", id(1)),
            Some(nack)
        )
        .await
        .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call(&router, "POST", &format!("/api/v1/messages/{}/term", id(2)), None)
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    let (_, again) = call(&router, "GET", consume, None).await;
    assert!(again.contains("\"attempt\":2"), "{again}");
    for _ in 0..300 {
        if mycelium_broker::blocking({
            let b = Arc::clone(&broker);
            move || b.dlq_depth("jobs")
        })
        .await
        .is_ok_and(|d| d == 1)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, text) = call(&router, "GET", "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    let jobs = [("topic", "jobs")];
    assert_eq!(sample(&text, "mycelium_messages_published_total", &jobs), 3.0);
    assert_eq!(sample(&text, "mycelium_messages_acked_total", &jobs), 1.0);
    assert_eq!(sample(&text, "mycelium_messages_redelivered_total", &jobs), 1.0);
    assert_eq!(
        sample(
            &text,
            "mycelium_messages_dead_lettered_total",
            &[("topic", "jobs"), ("reason", "terminated")]
        ),
        1.0
    );
    assert_eq!(sample(&text, "mycelium_queue_depth", &jobs), 3.0);
    assert_eq!(sample(&text, "mycelium_dlq_depth", &jobs), 1.0);
    assert_eq!(
        sample(
            &text,
            "mycelium_inflight",
            &[("topic", "jobs"), ("subscription", "w")]
        ),
        1.0
    );
    assert_eq!(
        sample(&text, "mycelium_publish_duration_seconds_count", &jobs),
        3.0
    );
    assert_eq!(
        sample(&text, "mycelium_delivery_duration_seconds_count", &jobs),
        1.0
    );
    assert_eq!(sample(&text, "mycelium_ready", &[]), 1.0);
    assert!(sample(&text, "process_resident_memory_bytes", &[]) > 0.0);

    // Every metric the dashboard and the alert rules query is exported.
    let exported: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for file in ["deploy/grafana/mycelium.json", "deploy/prometheus/alerts.yml"] {
        let content = std::fs::read_to_string(root.join(file)).unwrap();
        let mut queried = BTreeSet::new();
        for (i, _) in content
            .match_indices("mycelium_")
            .chain(content.match_indices("process_"))
        {
            let name: String = content[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            queried.insert(name);
        }
        assert!(queried.len() > 5, "{file} queries metrics");
        for name in queried {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name);
            assert!(
                exported.contains(&name) || exported.contains(base),
                "{file} queries `{name}`, which /metrics does not export"
            );
        }
    }

    // The data directory becomes unwritable: unready, on the probe and the metric, once the
    // storage probe (made at most once a second, shared by every request) runs again.
    std::fs::remove_dir_all(&data).unwrap();
    std::fs::write(&data, b"not a directory").unwrap();
    let mut answer = call(&router, "GET", "/api/v1/health/ready", None).await;
    for _ in 0..50 {
        if answer.0 == StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        answer = call(&router, "GET", "/api/v1/health/ready", None).await;
    }
    let (status, body) = answer;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("\"storage\""), "{body}");
    let (_, text) = call(&router, "GET", "/metrics", None).await;
    assert_eq!(sample(&text, "mycelium_ready", &[]), 0.0);
}

#[tokio::test]
async fn the_health_monitor_reports_thresholds_and_an_exhausted_disk_turns_unready() {
    use mycelium_broker::health::{Health, HealthConfig};
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::new(BrokerConfig {
        topics: vec![("jobs".into(), stored())],
        durable: DurableConfig {
            data_dir: dir.path().to_path_buf(),
            ..DurableConfig::default()
        },
        ..BrokerConfig::default()
    })
    .unwrap();
    let config = HealthConfig {
        interval: Duration::from_secs(3600),
        max_queue_depth: Some(1),
        // More free space than any disk has: the disk counts as exhausted.
        min_free_disk_bytes: Some(u64::MAX),
        ..HealthConfig::default()
    };
    let health = Arc::new(Health::new(config, "node-a", dir.path()));
    health.set_listeners(vec!["tcp:127.0.0.1:1".into()]);
    broker.set_health(Arc::clone(&health));
    let router = mycelium_http::router(Arc::clone(&broker), HttpConfig::default()).unwrap();
    for n in 0..2 {
        call(
            &router,
            "POST",
            "/api/v1/messages/publish",
            Some(json!({"topic": "jobs", "payload": n})),
        )
        .await;
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let monitor = tokio::spawn(Arc::clone(&health).run(Arc::downgrade(&broker), {
        let stop = stop.clone();
        async move { stop.cancelled().await }
    }));
    for _ in 0..500 {
        if health.node().heartbeat_ns > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let node = health.node();
    assert_eq!(node.name, "node-a");
    assert_eq!(node.listeners, ["tcp:127.0.0.1:1"]);
    assert_eq!(node.health.queue_depth, [("jobs".to_owned(), 2)]);
    let failing: Vec<&str> = node
        .health
        .checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| c.check)
        .collect();
    assert_eq!(failing, ["queue_depth", "free_disk"]);
    assert!(node.health.write_latency_ms.is_some());
    assert!(health.disk_exhausted());
    let (status, body) = call(&router, "GET", "/api/v1/health/ready", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("min_free_disk"), "{body}");
    let (status, body) = call(&router, "GET", "/api/v1/nodes/self", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("\"node_id\""), "{body}");
    let (_, text) = call(&router, "GET", "/metrics", None).await;
    assert_eq!(
        sample(&text, "mycelium_health_check_failing", &[("check", "free_disk")]),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "mycelium_health_check_failing",
            &[("check", "event_loop_lag")]
        ),
        0.0
    );
    // The node id is kept in the data directory.
    let again = Health::new(HealthConfig::default(), "node-a", dir.path());
    assert_eq!(again.node().node_id, node.node_id);
    stop.cancel();
    monitor.await.unwrap();
    mycelium_broker::blocking({
        let b = Arc::clone(&broker);
        move || b.close_storage()
    })
    .await;
}
