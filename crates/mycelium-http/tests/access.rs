//! Who may do what over HTTP: the auth matrix (no token, bad signature, expiry, roles, topic
//! grants) and another principal's messages and subscriptions, out of reach and answered as if
//! they did not exist.

mod support;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use mycelium_auth::{JwtConfig, JwtKey, TokenRequest};
use mycelium_broker::Role;
use serde_json::json;
use support::*;

#[tokio::test]
async fn the_auth_matrix() {
    let api = api();
    let publish = json!({"topic": "jobs", "payload": {"n": 1}});
    // No token, a token signed with another key, an expired token: 401.
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/messages/publish",
            None,
            Some(publish.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(problem_type(&body), "/problems/unauthorized");
    let forged = {
        let other = JwtConfig {
            key: JwtKey::Hs256(b"another-secret-another-secret-another-secret".to_vec()),
            ..jwt()
        };
        let request = TokenRequest {
            subject: "x".into(),
            roles: vec![Role::Admin],
            ttl: Duration::from_secs(60),
            publish: None,
            consume: None,
        };
        mycelium_auth::issue(&other, &request).unwrap()
    };
    let (status, body) = api.publish(&forged, publish.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["detail"].as_str().unwrap().contains("signature"), "{body}");
    let expired = {
        let claims = json!({"sub": "x", "exp": 1_000_000_000u64, "roles": ["admin"]});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    };
    let (status, body) = api.publish(&expired, publish.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["detail"].as_str().unwrap().contains("expired"), "{body}");
    let (status, _) = api.publish("not-a-jwt", publish.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Wrong role, wrong topic: 403.
    let consumer = token(&[Role::Consumer], None, None);
    let (status, body) = api.publish(&consumer, publish.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body["detail"].as_str().unwrap().contains("producer"), "{body}");
    let narrow = token(&[Role::Producer], Some(&["market_data.>"]), None);
    let (status, body) = api.publish(&narrow, publish.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("may not publish to `jobs`"),
        "{body}"
    );
    let producer = token(&[Role::Producer], None, None);
    let (status, _) = api
        .call(Method::GET, "/api/v1/dlq/jobs", Some(&producer), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "the DLQ is for admins");
    let (status, _) = api
        .call(
            Method::GET,
            "/api/v1/messages/consume/jobs?subscription=w",
            Some(&producer),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "producers do not consume");
    let narrow_consumer = token(&[Role::Consumer], None, Some(&["other"]));
    let (status, _) = api
        .call(
            Method::GET,
            "/api/v1/messages/consume/jobs?subscription=w",
            Some(&narrow_consumer),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Each role allowed to do its job.
    let (status, _) = api.publish(&producer, publish.clone()).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = api.publish(&admin(), publish).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = api
        .call(
            Method::GET,
            "/api/v1/messages/consume/jobs?subscription=w",
            Some(&consumer),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = api
        .call(Method::GET, "/api/v1/dlq/jobs", Some(&admin()), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "admin gets through; no DLQ yet");
    // Probes and the API description need no token.
    let (status, _) = api.call(Method::GET, "/api/v1/health/live", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = api.call(Method::GET, "/api/v1/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_principals_messages_and_subscriptions_are_out_of_reach() {
    let api = api();
    let admin = admin();
    api.publish(&admin, json!({"topic": "jobs", "payload": "job"}))
        .await;
    api.publish(
        &admin,
        json!({"topic": "payments", "payload": "pay", "idempotency_key": "pay-1"}),
    )
    .await;
    let a = token_as("a", &[Role::Consumer], &["jobs"]);
    let b = token_as("b", &[Role::Consumer], &["payments"]);
    let c = token_as("c", &[Role::Consumer], &["jobs"]);
    let take = |token: String, topic: &'static str, subscription: &'static str| {
        let api = &api;
        async move {
            let path = format!(
                "/api/v1/messages/consume/{topic}?subscription={subscription}&start=beginning&max=1&wait_ms=2000"
            );
            let (status, body) = api.call(Method::GET, &path, Some(&token), None).await;
            (status, body)
        }
    };
    let (status, body) = take(a.clone(), "jobs", "a-sub").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let id_a = body["messages"][0]["id"].as_str().unwrap().to_owned();
    let (status, body) = take(b.clone(), "payments", "b-sub").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let id_b = body["messages"][0]["id"].as_str().unwrap().to_owned();

    // `verb` on message `id` (`None`: GET the message) with `token`.
    let on = |id: String, verb: Option<&'static str>, token: String| {
        let api = &api;
        async move {
            match verb {
                Some(verb) => {
                    let path = format!("/api/v1/messages/{id}/{verb}");
                    api.call(Method::POST, &path, Some(&token), None).await
                }
                None => {
                    let path = format!("/api/v1/messages/{id}");
                    api.call(Method::GET, &path, Some(&token), None).await
                }
            }
        }
    };
    // `a` may not settle `b`'s message: the answer is the one for an id never handed out.
    let unknown = uuid::Uuid::now_v7().to_string();
    let (status, never) = on(unknown.clone(), Some("ack"), a.clone()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for verb in ["ack", "term", "nack", "in-progress"] {
        let (status, body) = on(id_b.clone(), Some(verb), a.clone()).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{verb}: {body}");
        assert_eq!(body["detail"], never["detail"], "{verb}: no existence oracle");
    }
    // Nor read it by id.
    let (status, missing) = on(unknown, None, a.clone()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = on(id_b.clone(), None, a.clone()).await;
    assert_eq!(
        (status, &body["detail"]),
        (StatusCode::NOT_FOUND, &missing["detail"])
    );
    // `c` may consume `jobs`, but not from `a`'s subscription, nor settle what `a` holds.
    let (status, body) = take(c.clone(), "jobs", "a-sub").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(
        on(id_a.clone(), Some("ack"), c.clone()).await.0,
        StatusCode::NOT_FOUND
    );
    // The owners still can: nothing was touched.
    assert_eq!(on(id_b, Some("ack"), b.clone()).await.0, StatusCode::NO_CONTENT);
    assert_eq!(on(id_a, Some("ack"), a.clone()).await.0, StatusCode::NO_CONTENT);
    // Counted by door and reason.
    let count = |reason: mycelium_broker::DenyReason| {
        api.broker
            .refusal_counts()
            .into_iter()
            .find(|(door, r, _)| *door == mycelium_broker::Door::Http && *r == reason)
            .map_or(0, |(_, _, n)| n)
    };
    assert!(
        count(mycelium_broker::DenyReason::Topic) >= 5,
        "a's four verdicts and its read"
    );
    assert!(
        count(mycelium_broker::DenyReason::Owner) >= 2,
        "c's consume and c's ack"
    );
}
