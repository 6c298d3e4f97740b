//! Every endpoint through axum's `oneshot`: publish (one, batch, properties, errors), consume /
//! ack / nack / term over HTTP, topics, subscriptions, DLQ, health, rate limits and the OpenAPI
//! document. Who may do what is in `access.rs`.

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use mycelium_broker::Role;
use mycelium_http::{Quota, RateLimits};
use serde_json::{Value, json};
use support::*;
use tower::ServiceExt;

#[tokio::test]
async fn publish_one_and_batches_with_properties_and_clear_errors() {
    let api = api();
    let t = admin();
    let (status, body) = api
        .publish(
            &t,
            json!({"topic": "jobs", "payload": {"n": 1}, "headers": {"traceparent": "00-abc-def-01"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["results"][0]["sequence"], 1);
    assert_eq!(body["results"][0]["id"].as_str().unwrap().len(), 36);
    // Batches keep order; in-memory topics keep no ids.
    let (status, body) = api
        .publish(
            &t,
            json!({"messages": [
                {"topic": "jobs", "payload_base64": "AAEC", "content_type": "application/octet-stream"},
                {"topic": "ticks", "payload": [1, 2, 3]},
                {"topic": "jobs", "payload": "x", "ttl_ms": 60000, "delay_ms": 10},
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["sequence"], 2);
    assert!(results[1]["id"].is_null());
    assert_eq!(results[2]["sequence"], 3);
    // Idempotency keys: the second is a duplicate of the first.
    let keyed = json!({"topic": "payments", "payload": {"amount": 10}, "idempotency_key": "pay-1"});
    let (_, first) = api.publish(&t, keyed.clone()).await;
    let (_, again) = api.publish(&t, keyed).await;
    assert_eq!(again["results"][0]["duplicate"], true);
    assert_eq!(again["results"][0]["id"], first["results"][0]["id"]);
    // exactly_once without a key: 422; unknown topic: 404; both payload forms: 422 listing all.
    let (status, body) = api.publish(&t, json!({"topic": "payments", "payload": 1})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body["detail"].as_str().unwrap().contains("idempotency key"),
        "{body}"
    );
    let (status, _) = api.publish(&t, json!({"topic": "nope", "payload": 1})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = api
        .publish(
            &t,
            json!({"messages": [
                {"topic": "jobs", "payload": 1, "payload_base64": "AA=="},
                {"topic": "bad topic", "payload_base64": "%%%", "priority": 10},
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        [
            "messages[0].payload",
            "messages[1].topic",
            "messages[1].payload_base64",
            "messages[1].priority"
        ]
    );
    // Wrong types name the field; bad JSON is 400; not JSON is 415; too large is 413.
    let (status, body) = api
        .publish(&t, json!({"topic": "jobs", "payload": 1, "ttl_ms": "soon"}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["errors"][0]["field"], "ttl_ms", "{body}");
    let (status, body) = api
        .publish(
            &t,
            json!({"messages": [{"topic": "jobs", "payload": 1}, {"topic": "jobs", "ttl_ms": "soon"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["errors"][0]["field"], "messages[1].ttl_ms", "{body}");
    // One message's fields come in any order; a batch takes nothing beside `messages`; a
    // message needs its topic; the body is an object.
    let first_error = |body: &Value| {
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let (status, body) = api.publish(&t, json!({"payload": 7, "topic": "ticks"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = api
        .publish(
            &t,
            json!({"messages": [{"topic": "jobs", "payload": 1}], "topic": "jobs"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(first_error(&body).contains("unknown field `topic`"), "{body}");
    let (status, body) = api.publish(&t, json!({"payload": 1})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(first_error(&body).contains("missing field `topic`"), "{body}");
    let (status, body) = api.publish(&t, json!([{"topic": "jobs", "payload": 1}])).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let request = |content_type: &str, body: String| {
        Request::post("/api/v1/messages/publish")
            .header("authorization", format!("Bearer {t}"))
            .header("content-type", content_type)
            .body(Body::from(body))
            .unwrap()
    };
    let (status, headers, body) = api.raw(request("application/json", "{\"topic\":".into())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(headers["content-type"], "application/problem+json");
    assert!(body["request_id"].is_string());
    let (status, _, _) = api.raw(request("text/plain", "hello".into())).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let big = json!({"topic": "jobs", "payload": "x".repeat(100_000)}).to_string();
    let (status, _, body) = api.raw(request("application/json", big)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    // The broker saw exactly what was accepted.
    let stats = api.broker.stats();
    let jobs = stats.topics.iter().find(|t| t.name == "jobs").unwrap();
    assert_eq!(jobs.stored, 3);
}

#[tokio::test]
async fn consume_ack_nack_term_over_http() {
    let api = api();
    let t = admin();
    for n in 0..3 {
        api.publish(&t, json!({"topic": "jobs", "payload": {"n": n}}))
            .await;
    }
    let consume = "/api/v1/messages/consume/jobs?subscription=workers&start=beginning&max=10&wait_ms=2000";
    let (status, body) = api.call(Method::GET, consume, Some(&t), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let messages = body["messages"].as_array().unwrap().clone();
    assert_eq!(messages.len(), 3);
    assert_eq!(messages[0]["payload"], json!({"n": 0}));
    assert_eq!(messages[0]["attempt"], 1);
    let id = |i: usize| messages[i]["id"].as_str().unwrap().to_owned();
    // ACK is durable before 204; a second ACK is a conflict.
    let (status, _) = api
        .call(
            Method::POST,
            &format!("/api/v1/messages/{}/ack", id(0)),
            Some(&t),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = api
        .call(
            Method::POST,
            &format!("/api/v1/messages/{}/ack", id(0)),
            Some(&t),
            None,
        )
        .await;
    assert!(
        status == StatusCode::NOT_FOUND || status == StatusCode::CONFLICT,
        "{status} {body}"
    );
    // IN_PROGRESS then NACK with a delay: it comes back as attempt 2.
    let (status, _) = api
        .call(
            Method::POST,
            &format!("/api/v1/messages/{}/in-progress", id(1)),
            Some(&t),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = api
        .call(
            Method::POST,
            &format!("/api/v1/messages/{}/nack", id(1)),
            Some(&t),
            Some(json!({"delay_ms": 10, "error": "busy"})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // TERM: straight to the DLQ with the error text.
    let (status, _) = api
        .call(
            Method::POST,
            &format!("/api/v1/messages/{}/term", id(2)),
            Some(&t),
            Some(json!({"error": "poison"})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, body) = api.call(Method::GET, consume, Some(&t), None).await;
    let again = body["messages"].as_array().unwrap();
    assert_eq!(again.len(), 1, "{body}");
    assert_eq!(again[0]["id"], messages[1]["id"]);
    assert_eq!(again[0]["attempt"], 2);
    // Nothing more within a short wait.
    let (_, body) = api
        .call(
            Method::GET,
            "/api/v1/messages/consume/jobs?subscription=workers&wait_ms=100",
            Some(&t),
            None,
        )
        .await;
    assert_eq!(body["messages"], json!([]));
    // Bad ids and queries.
    let (status, _) = api
        .call(Method::POST, "/api/v1/messages/not-a-uuid/ack", Some(&t), None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = api
        .call(
            Method::GET,
            "/api/v1/messages/consume/jobs?subscription=w&max=0",
            Some(&t),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = api
        .call(Method::GET, "/api/v1/messages/consume/jobs", Some(&t), None)
        .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "subscription is required"
    );
    let (status, body) = api
        .call(
            Method::GET,
            "/api/v1/messages/consume/ticks?subscription=w",
            Some(&t),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    // GET a stored message by id.
    let (status, body) = api
        .call(
            Method::GET,
            &format!("/api/v1/messages/{}", id(0)),
            Some(&t),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["topic"], "jobs");
    assert_eq!(body["payload"], json!({"n": 0}));
    let (status, _) = api
        .call(
            Method::GET,
            "/api/v1/messages/01a20790-0000-7000-8000-000000000000",
            Some(&t),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The DLQ has the terminated one; replay it over HTTP; it is consumed again.
    let mut depth = 0;
    for _ in 0..200 {
        let (_, body) = api.call(Method::GET, "/api/v1/dlq/jobs", Some(&t), None).await;
        depth = body["depth"].as_u64().unwrap_or(0);
        if depth == 1 {
            assert_eq!(body["entries"][0]["error"], "poison");
            assert_eq!(body["entries"][0]["reason"], "terminated");
            assert_eq!(body["entries"][0]["payload"], json!({"n": 2}));
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(depth, 1);
    let (status, body) = api
        .call(Method::POST, "/api/v1/dlq/jobs/replay", Some(&t), Some(json!({})))
        .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a selection is required: {body}"
    );
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/dlq/jobs/replay",
            Some(&t),
            Some(json!({"all": true, "rate": 100})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["replayed"], 1);
    let (_, body) = api.call(Method::GET, consume, Some(&t), None).await;
    assert_eq!(body["messages"][0]["payload"], json!({"n": 2}));
    assert_eq!(body["messages"][0]["sequence"], 4, "replayed as a new message");
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/dlq/jobs/purge",
            Some(&t),
            Some(json!({"all": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["purged"], 0);
    mycelium_broker::blocking({
        let b = Arc::clone(&api.broker);
        move || b.close_storage()
    })
    .await;
}

#[tokio::test]
async fn topics_and_subscriptions() {
    let api = api();
    let t = admin();
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/topics",
            Some(&t),
            Some(json!({"name": "orders", "settings": {"delivery": "at_least_once", "priority": true, "ttl_ms": 60000}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["storage"], "disk");
    assert_eq!(body["priority"], true);
    let (status, _) = api
        .call(
            Method::POST,
            "/api/v1/topics",
            Some(&t),
            Some(json!({"name": "orders"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/topics",
            Some(&t),
            Some(json!({"name": "bad name", "settings": {"routing": "sideways", "priority": true}})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["errors"].as_array().unwrap().len(), 3, "{body}");
    let producer = token(&[Role::Producer], None, None);
    let (status, _) = api
        .call(
            Method::POST,
            "/api/v1/topics",
            Some(&producer),
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, body) = api
        .call(Method::GET, "/api/v1/topics", Some(&producer), None)
        .await;
    let names: Vec<&str> = body["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"orders") && names.contains(&"jobs"), "{names:?}");
    assert!(body["next_after"].is_null(), "one page: {body}");
    // Paged by name: `after` and `limit`, each topic once, `next_after` until the last page.
    let mut paged = Vec::new();
    let mut after = String::new();
    loop {
        let path = format!("/api/v1/topics?limit=1&after={after}");
        let (status, body) = api.call(Method::GET, &path, Some(&producer), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let page = body["topics"].as_array().unwrap();
        assert_eq!(page.len(), 1, "{body}");
        paged.push(page[0]["name"].as_str().unwrap().to_owned());
        match body["next_after"].as_str() {
            Some(next) => after = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(paged, names, "the pages together are the listing");
    let (status, _) = api
        .call(Method::GET, "/api/v1/topics?limit=0", Some(&producer), None)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, body) = api
        .call(Method::GET, "/api/v1/topics/orders", Some(&t), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["ttl_ms"], 60000);
    let (status, _) = api.call(Method::GET, "/api/v1/topics/nope", Some(&t), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // A subscription, its lag, and what it does to topic changes.
    api.publish(&t, json!({"topic": "orders", "payload": 1})).await;
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/subscriptions",
            Some(&t),
            Some(json!({"topic": "orders", "name": "billing", "start": "beginning", "max_in_flight": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _) = api
        .call(
            Method::POST,
            "/api/v1/subscriptions",
            Some(&t),
            Some(json!({"topic": "orders", "name": "billing"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/subscriptions",
            Some(&t),
            Some(json!({"topic": "orders", "name": "x", "start": "yesterday", "ack_wait_ms": 0})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["errors"].as_array().unwrap().len(), 2, "{body}");
    let (status, body) = api
        .call(
            Method::GET,
            "/api/v1/subscriptions/orders/billing",
            Some(&t),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["lag"], 1);
    let (_, body) = api
        .call(Method::GET, "/api/v1/topics/orders/metrics", Some(&t), None)
        .await;
    assert_eq!(body["depth"], 1);
    assert_eq!(body["subscriptions"][0]["name"], "billing");
    // Settings change in place, the subscription and its messages stay; the storage kind does
    // not change under a durable subscription.
    let (status, body) = api
        .call(
            Method::PUT,
            "/api/v1/topics/orders",
            Some(&t),
            Some(json!({"delivery": "at_least_once", "max_message_size": 4096})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["max_message_size"], 4096);
    let (_, body) = api
        .call(
            Method::GET,
            "/api/v1/subscriptions/orders/billing",
            Some(&t),
            None,
        )
        .await;
    assert_eq!(body["lag"], 1, "{body}");
    let (status, _) = api
        .call(
            Method::PUT,
            "/api/v1/topics/orders",
            Some(&t),
            Some(json!({"delivery": "at_most_once"})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "the storage stays while subscriptions depend on it"
    );
    let (status, _) = api
        .call(Method::DELETE, "/api/v1/topics/orders", Some(&t), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = api
        .call(
            Method::DELETE,
            "/api/v1/subscriptions/orders/billing",
            Some(&t),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = api
        .call(
            Method::DELETE,
            "/api/v1/subscriptions/orders/billing",
            Some(&t),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = api
        .call(
            Method::PUT,
            "/api/v1/topics/orders",
            Some(&t),
            Some(json!({"routing": "queue"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["routing"], "queue");
    assert_eq!(body["storage"], "memory", "PUT replaces every setting");
    let (status, _) = api
        .call(Method::DELETE, "/api/v1/topics/orders", Some(&t), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = api
        .call(Method::GET, "/api/v1/topics/orders", Some(&t), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // force deletes a topic with its durable subscriptions.
    let (status, _) = api
        .call(
            Method::GET,
            "/api/v1/messages/consume/jobs?subscription=w",
            Some(&t),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = api
        .call(Method::DELETE, "/api/v1/topics/jobs?force=true", Some(&t), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, body) = api
        .call(Method::GET, "/api/v1/subscriptions", Some(&t), None)
        .await;
    assert_eq!(body["subscriptions"], json!([]));
    mycelium_broker::blocking({
        let b = Arc::clone(&api.broker);
        move || b.close_storage()
    })
    .await;
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after_and_recover() {
    let limits = RateLimits {
        per_role: [(
            Role::Producer,
            Quota {
                per_second: 20,
                burst: 2,
            },
        )]
        .into_iter()
        .collect(),
        per_ip: None,
        per_topic: vec![(
            "ticks".into(),
            Quota {
                per_second: 1000,
                burst: 3,
            },
        )],
    };
    let api = api_with(limits);
    let producer = token(&[Role::Producer], None, None);
    let body = json!({"topic": "jobs", "payload": 1});
    assert_eq!(api.publish(&producer, body.clone()).await.0, StatusCode::OK);
    assert_eq!(api.publish(&producer, body.clone()).await.0, StatusCode::OK);
    let request = Request::post("/api/v1/messages/publish")
        .header("authorization", format!("Bearer {producer}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let (status, headers, problem) = api.raw(request).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(problem["type"], "/problems/rate-limited");
    assert!(headers.contains_key("retry-after"));
    // Recovers once the bucket refills (20/s: one token per 50 ms).
    let mut recovered = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if api.publish(&producer, body.clone()).await.0 == StatusCode::OK {
            recovered = true;
            break;
        }
    }
    assert!(recovered, "the limit lifts once tokens refill");
    // Admins have no limit here; a batch over a topic's burst is refused whole.
    let batch = json!({"messages": [
        {"topic": "ticks", "payload": 1}, {"topic": "ticks", "payload": 2},
        {"topic": "ticks", "payload": 3}, {"topic": "ticks", "payload": 4},
    ]});
    let (status, body) = api.publish(&admin(), batch).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(
        api.broker
            .stats()
            .topics
            .iter()
            .find(|t| t.name == "ticks")
            .unwrap()
            .published,
        0
    );
}

/// A JSON payload is stored as the text that was sent: key order, number precision and spacing
/// inside it reach native consumers and HTTP readers unchanged (a round trip through a JSON tree
/// would sort the keys and turn the big integer into a float).
#[tokio::test]
async fn a_json_payload_is_stored_and_returned_as_sent() {
    let api = api();
    let t = admin();
    let payload = r#"{"zeta": 1, "alpha": [1.50, "x"], "big": 123456789012345678901234567890}"#;
    let body = format!(r#"{{"topic": "jobs", "payload": {payload}}}"#);
    let request = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/messages/publish")
        .header("authorization", format!("Bearer {t}"))
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    let (status, _, published) = api.raw(request).await;
    assert_eq!(status, StatusCode::OK, "{published}");
    let id = published["results"][0]["id"].as_str().unwrap().to_owned();
    // What native consumers get: the stored bytes.
    let uuid = uuid::Uuid::parse_str(&id).unwrap();
    let (_, stored) = mycelium_broker::blocking({
        let b = Arc::clone(&api.broker);
        move || b.find_message(uuid.as_bytes())
    })
    .await
    .unwrap();
    assert_eq!(std::str::from_utf8(&stored.payload).unwrap(), payload);
    // What HTTP readers get: the same text inside the response.
    let request = Request::builder()
        .uri(format!("/api/v1/messages/{id}"))
        .header("authorization", format!("Bearer {t}"))
        .body(Body::empty())
        .unwrap();
    let response = api.router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let text = std::str::from_utf8(&bytes).unwrap();
    assert!(text.contains(&format!(r#""payload":{payload}"#)), "{text}");
    // A payload that is not valid JSON is still refused (400: the body is not JSON).
    let request = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/messages/publish")
        .header("authorization", format!("Bearer {t}"))
        .header("content-type", "application/json")
        .body(Body::from(r#"{"topic": "jobs", "payload": {"a": }}"#))
        .unwrap();
    let (status, _, problem) = api.raw(request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    mycelium_broker::blocking({
        let b = Arc::clone(&api.broker);
        move || b.close_storage()
    })
    .await;
}

#[tokio::test]
async fn health_and_the_openapi_document() {
    let api = api();
    let (status, body) = api.call(Method::GET, "/api/v1/health/ready", None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ready");
    let (status, body) = api.call(Method::GET, "/api/v1/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["openapi"], "3.1.0");
    let paths = body["paths"].as_object().unwrap();
    for path in [
        "/api/v1/messages/publish",
        "/api/v1/messages/consume/{topic}",
        "/api/v1/messages/{id}",
        "/api/v1/messages/{id}/ack",
        "/api/v1/messages/{id}/nack",
        "/api/v1/messages/{id}/in-progress",
        "/api/v1/topics",
        "/api/v1/topics/{name}",
        "/api/v1/topics/{name}/metrics",
        "/api/v1/subscriptions",
        "/api/v1/subscriptions/{topic}/{name}",
        "/api/v1/dlq/{topic}",
        "/api/v1/dlq/{topic}/replay",
        "/api/v1/dlq/{topic}/purge",
        "/api/v1/health/live",
        "/api/v1/health/ready",
    ] {
        assert!(
            paths.contains_key(path),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(body["components"]["schemas"]["Problem"].is_object());
    assert!(body["components"]["securitySchemes"]["bearer"].is_object());
    // Unknown paths are problem documents too.
    let (status, body) = api.call(Method::GET, "/nowhere", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(problem_type(&body), "/problems/not-found");
}

#[tokio::test]
async fn filtered_consumers_and_malformed_filters() {
    let api = api();
    let t = admin();
    for (side, price) in [("buy", 90), ("buy", 120), ("sell", 130)] {
        api.publish(
            &t,
            json!({"topic": "jobs", "payload": {"side": side, "price": price}}),
        )
        .await;
    }
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/subscriptions",
            Some(&t),
            Some(json!({"topic": "jobs", "name": "big-buys", "start": "beginning", "filter": "$.side == \"buy\" and $.price > 100"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, body) = api
        .call(
            Method::GET,
            "/api/v1/messages/consume/jobs?subscription=big-buys&wait_ms=2000",
            Some(&t),
            None,
        )
        .await;
    let payloads: Vec<&Value> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["payload"])
        .collect();
    assert_eq!(payloads, [&json!({"side": "buy", "price": 120})]);
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/subscriptions",
            Some(&t),
            Some(json!({"topic": "jobs", "name": "broken", "filter": "$.price >"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["errors"][0]["field"], "filter");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("position 9"),
        "{body}"
    );
    mycelium_broker::blocking({
        let b = Arc::clone(&api.broker);
        move || b.close_storage()
    })
    .await;
}

#[tokio::test]
async fn headers_too_large_to_deliver_are_refused_and_nothing_is_stored() {
    let api = api();
    let t = admin();
    // Over what a delivery can carry, under this API's 64 KiB body limit.
    let big = "v".repeat(62 * 1024);
    let (status, body) = api
        .publish(&t, json!({"topic": "jobs", "payload": 1, "headers": {"k": big}}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("header block"),
        "{body}"
    );
    let depth = api.broker.topic_depth("jobs").map_or(0, |d| d.stored);
    assert_eq!(depth, 0, "nothing stored");
}

#[tokio::test]
async fn topics_made_over_http_come_back_after_a_restart_and_the_configuration_wins() {
    use mycelium_broker::spec::{Routing, TopicSpec};
    use mycelium_broker::{Broker, BrokerConfig, DurableConfig};
    let api = api();
    let t = admin();
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/topics",
            Some(&t),
            Some(json!({"name": "made.runtime", "settings": {"routing": "queue", "max_message_size": 2048}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _) = api
        .call(
            Method::PUT,
            "/api/v1/topics/ticks",
            Some(&t),
            Some(json!({"routing": "direct"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = api
        .call(
            Method::POST,
            "/api/v1/topics",
            Some(&t),
            Some(json!({"name": "gone.soon"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = api
        .call(Method::DELETE, "/api/v1/topics/gone.soon", Some(&t), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // A restart: the same configuration, the same data directory.
    let restarted = || {
        Broker::new(BrokerConfig {
            auto_create_topics: false,
            topics: vec![("ticks".into(), TopicSpec::default())],
            durable: DurableConfig {
                data_dir: api.dir.path().to_path_buf(),
                ..DurableConfig::default()
            },
            ..BrokerConfig::default()
        })
        .unwrap()
    };
    let broker = restarted();
    let restoring = Arc::clone(&broker);
    let problems = mycelium_broker::blocking(move || mycelium_http::restore_topics(&restoring)).await;
    assert!(problems.is_empty(), "{problems:?}");
    let made = broker.topic("made.runtime").expect("restored");
    assert_eq!(made.spec().routing, Routing::Queue);
    assert_eq!(made.spec().message_bytes_max, 2048);
    assert_eq!(
        broker.topic("ticks").unwrap().spec().routing,
        Routing::Fanout,
        "the configuration defines `ticks`: its run-time change is not restored"
    );
    assert!(broker.topic("gone.soon").is_none(), "deleted stays deleted");

    // A damaged registry is reported and set aside, not written over by the next change.
    let file = api.broker.data_dir().topic_registry();
    std::fs::write(&file, b"{ not json").unwrap();
    let broker = restarted();
    let problems = mycelium_broker::blocking(move || mycelium_http::restore_topics(&broker)).await;
    assert_eq!(problems.len(), 1);
    assert!(problems[0].1.contains("not a topic registry"), "{problems:?}");
    let mut kept = file.clone().into_os_string();
    kept.push(".corrupt");
    assert_eq!(std::fs::read(kept).unwrap(), b"{ not json");
}
