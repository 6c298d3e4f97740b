//! What the HTTP API tests share: a broker with stored topics behind the router, tokens of
//! each role, and a client that speaks JSON through `oneshot`.
#![allow(dead_code, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use mycelium_auth::{AuthConfig, Authenticator, JwtConfig, JwtKey, Mode, TokenRequest};
use mycelium_broker::Role;
use mycelium_broker::spec::{Delivery, StorageKind, TopicSpec};
use mycelium_broker::{Broker, BrokerConfig, DurableConfig};
use mycelium_http::{HttpConfig, RateLimits};
use serde_json::Value;
use tower::ServiceExt;

pub const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test-secret";

pub fn jwt() -> JwtConfig {
    JwtConfig {
        key: JwtKey::Hs256(SECRET.to_vec()),
        role_claim: "roles".into(),
        leeway: Duration::from_secs(0),
        issuer: None,
        audience: None,
        cache_tokens: 4096,
    }
}

pub fn token(roles: &[Role], publish: Option<&[&str]>, consume: Option<&[&str]>) -> String {
    let request = TokenRequest {
        subject: format!("tester-{roles:?}"),
        roles: roles.to_vec(),
        ttl: Duration::from_secs(3600),
        publish: publish.map(|p| p.iter().map(|s| (*s).to_owned()).collect()),
        consume: consume.map(|p| p.iter().map(|s| (*s).to_owned()).collect()),
    };
    mycelium_auth::issue(&jwt(), &request).unwrap()
}

pub fn token_as(subject: &str, roles: &[Role], consume: &[&str]) -> String {
    let request = TokenRequest {
        subject: subject.into(),
        roles: roles.to_vec(),
        ttl: Duration::from_secs(3600),
        publish: None,
        consume: Some(consume.iter().map(|s| (*s).to_owned()).collect()),
    };
    mycelium_auth::issue(&jwt(), &request).unwrap()
}

pub fn admin() -> String {
    token(&[Role::Admin], None, None)
}

pub struct Api {
    pub router: Router,
    pub broker: Arc<Broker>,
    pub dir: tempfile::TempDir,
}

pub fn stored() -> TopicSpec {
    TopicSpec {
        storage: StorageKind::Disk,
        delivery: Delivery::AtLeastOnce,
        ..TopicSpec::default()
    }
}

pub fn api_with(limits: RateLimits) -> Api {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::new(BrokerConfig {
        auto_create_topics: false,
        topics: vec![
            ("jobs".into(), stored()),
            ("ticks".into(), TopicSpec::default()),
            (
                "payments".into(),
                TopicSpec {
                    delivery: Delivery::ExactlyOnce,
                    ..stored()
                },
            ),
        ],
        durable: DurableConfig {
            data_dir: dir.path().to_path_buf(),
            ..DurableConfig::default()
        },
        ..BrokerConfig::default()
    })
    .unwrap();
    let config = HttpConfig {
        auth: Arc::new(
            Authenticator::new(AuthConfig {
                mode: Mode::Required,
                jwt: Some(jwt()),
                users: Vec::new(),
                local_admins: false,
            })
            .unwrap(),
        ),
        limits,
        body_limit_bytes: 64 * 1024,
        ..HttpConfig::default()
    };
    let router = mycelium_http::router(Arc::clone(&broker), config).unwrap();
    Api { router, broker, dir }
}

pub fn api() -> Api {
    api_with(RateLimits::default())
}

impl Api {
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let body = match body {
            Some(json) => {
                request = request.header("content-type", "application/json");
                Body::from(json.to_string())
            }
            None => Body::empty(),
        };
        let response = self
            .router
            .clone()
            .oneshot(request.body(body).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        (status, value)
    }

    pub async fn raw(&self, request: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Value) {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            headers,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    pub async fn publish(&self, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, "/api/v1/messages/publish", Some(token), Some(body))
            .await
    }
}

pub fn problem_type(body: &Value) -> &str {
    body["type"].as_str().unwrap_or("")
}
