//! Mycelium's HTTP door: the REST API (`/api/v1`) over the same broker core the native protocol
//! reaches. A message published over HTTP reaches native subscribers and the reverse; topics,
//! durable subscriptions, acknowledgements and dead-letter queues are the core's.
//!
//! - `routes/`: the endpoints (messages, topics, subscriptions, DLQ, health) and their JSON shapes.
//! - `auth.rs`: the bearer token of each request (checked by `mycelium-auth`), 401 and 403.
//! - `limits.rs`: token-bucket rate limits per principal, per client IP, per topic.
//! - `consume.rs`: pull consumers, the way HTTP clients consume durable subscriptions.
//! - `error.rs`: RFC 9457 problem documents.
//! - `openapi.rs`: the OpenAPI 3.1 document, generated from the handlers' annotations.
//! - `serve.rs`: the listener loop (hyper, header read timeout, graceful shutdown).
//!
//! This is the only crate that knows axum.

pub mod auth;
mod consume;
pub mod error;
mod extract;
pub mod limits;
mod metrics;
mod openapi;
mod routes;
mod serve;
mod setup;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use mycelium_broker::Broker;

pub use limits::{Quota, RateLimits};
pub use routes::topics::restore_topics;
pub use serve::{HttpServer, bind};
pub use setup::SetupError;

use crate::consume::PullConsumers;
use crate::error::{ApiError, REQUEST_ID};
use crate::limits::Limiter;

/// Who may read `/metrics` and the health probes without a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenProbes {
    /// Clients on loopback (and the Unix socket); others need a valid token (the default).
    Loopback,
    /// Everyone.
    Always,
    /// Nobody: every request needs a valid token.
    Never,
}

/// Settings of the HTTP door.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// TCP address (`None`: no TCP listener).
    pub listen: Option<SocketAddr>,
    /// Unix socket path (`None`: none).
    pub unix_socket: Option<PathBuf>,
    /// Who is calling: shared with the native door.
    pub auth: Arc<mycelium_auth::Authenticator>,
    /// Whether `/metrics` and the health probes need a token.
    pub open_probes: OpenProbes,
    /// TLS on the TCP listener (`None`: plain text); shared with the native door, replaced by a
    /// configuration reload.
    pub tls: Option<Arc<mycelium_auth::tls::LiveTls>>,
    /// Rate limits.
    pub limits: RateLimits,
    /// Largest request body.
    pub body_limit_bytes: usize,
    /// Time to receive a request's headers (slow-loris protection).
    pub header_timeout: Duration,
    /// Time to serve a request, body included (long polls are capped below it).
    pub request_timeout: Duration,
    /// Pull consumers idle this long are detached (their unacked messages go back).
    pub consumer_idle_timeout: Duration,
    /// Whether the native listeners are up (for `/health/ready`); set by the server.
    pub native_listeners_up: Arc<std::sync::atomic::AtomicBool>,
    /// Serve only `/metrics` and the health probes (the HTTP API is off).
    pub metrics_only: bool,
    /// Connections served at once; more get 503 and are closed.
    pub max_connections: usize,
    /// TCP connections from one address at once; more get 503 and are closed.
    pub max_connections_per_ip: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 7421))),
            unix_socket: None,
            auth: Arc::new(mycelium_auth::Authenticator::none()),
            open_probes: OpenProbes::Loopback,
            tls: None,
            limits: RateLimits::default(),
            body_limit_bytes: 16 << 20,
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            consumer_idle_timeout: Duration::from_secs(300),
            native_listeners_up: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            metrics_only: false,
            max_connections: 1_024,
            max_connections_per_ip: 256,
        }
    }
}

/// What every handler shares.
#[derive(Debug)]
pub(crate) struct AppState {
    pub(crate) broker: Arc<Broker>,
    pub(crate) config: HttpConfig,
    pub(crate) limiter: Arc<Limiter>,
    pub(crate) consumers: PullConsumers,
    pub(crate) rates: routes::topics::Rates,
    /// The last storage probe of `/health/ready`: when, and its result.
    pub(crate) storage_probe: tokio::sync::Mutex<Option<(std::time::Instant, Result<(), String>)>>,
}

pub(crate) type SharedState = Arc<AppState>;

/// The address of the client, per connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientAddr(pub(crate) Option<IpAddr>);

/// The common name of the client's verified certificate (mutual TLS), per connection.
#[derive(Debug, Clone)]
pub(crate) struct ClientCert(pub(crate) String);

/// Builds the router over `broker` (without the listener's timeouts; for tests through
/// `oneshot`, and used by [`bind`]).
///
/// # Errors
/// An unusable key file or rate limit.
pub fn router(broker: Arc<Broker>, config: HttpConfig) -> Result<Router, SetupError> {
    build(broker, config).map(|(router, _)| router)
}

/// The OpenAPI document as JSON text.
pub fn openapi_json() -> String {
    openapi::json()
}

pub(crate) fn build(broker: Arc<Broker>, config: HttpConfig) -> Result<(Router, SharedState), SetupError> {
    let limiter = Arc::new(Limiter::new(&config.limits)?);
    let state = Arc::new(AppState {
        broker,
        limiter,
        consumers: PullConsumers::default(),
        rates: routes::topics::Rates::default(),
        storage_probe: tokio::sync::Mutex::new(None),
        config,
    });
    let body_limit = state.config.body_limit_bytes;
    let api =
        routes::api_routes().route_layer(middleware::from_fn_with_state(Arc::clone(&state), authenticate));
    let open = routes::open_routes()
        .route("/metrics", axum::routing::get(metrics_endpoint))
        .route_layer(middleware::from_fn_with_state(Arc::clone(&state), probe_access));
    let api = if state.config.metrics_only {
        open
    } else {
        api.merge(open)
    };
    let router = Router::new()
        .merge(api)
        .fallback(routes::not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(request_id))
        .with_state(Arc::clone(&state));
    Ok((router, state))
}

/// Starts the background work of the HTTP door (rate sampling, idle consumer reaping) for the
/// state behind `router`; ends when `shutdown` is cancelled.
pub(crate) async fn background(state: SharedState, shutdown: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {
                state.rates.sample(&state.broker);
                state.consumers.reap(&state.broker, state.config.consumer_idle_timeout);
                state.limiter.shrink();
            }
        }
    }
}

/// `GET /metrics` (a token only when `open_probes` asks for one).
async fn metrics_endpoint(State(state): State<SharedState>) -> Response {
    let broker = Arc::clone(&state.broker);
    let limited = state.limiter.rejected.load(std::sync::atomic::Ordering::Relaxed);
    let ready = routes::health::is_ready(&state).await;
    let text = mycelium_broker::blocking(move || metrics::render(&broker, limited, ready)).await;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

static REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Gives every request an id (the client's `x-request-id` if sane), visible to error bodies and
/// logs, and echoed in the response.
async fn request_id(request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(&REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned);
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    // Log lines of the request (JSON logs show the current span) carry its id.
    let span =
        tracing::info_span!("http.request", request_id = %id, http.method = %method, http.path = %path);
    let mut response = REQUEST_ID
        .scope(
            id.clone(),
            tracing::Instrument::instrument(next.run(request), span),
        )
        .await;
    tracing::debug!(request_id = %id, %method, %path, status = response.status().as_u16(), "http request");
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER.clone(), value);
    }
    response
}

/// `/metrics`, the health probes and the OpenAPI document: open or not by `open_probes`; when
/// not, any valid token will do.
async fn probe_access(
    State(state): State<SharedState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let open = match state.config.open_probes {
        OpenProbes::Always => true,
        OpenProbes::Never => false,
        // No address: the Unix socket, or in-process.
        OpenProbes::Loopback => request
            .extensions()
            .get::<ClientAddr>()
            .and_then(|c| c.0)
            .is_none_or(|ip| ip.is_loopback()),
    };
    if !open {
        let cert = request.extensions().get::<ClientCert>().map(|c| c.0.as_str());
        auth::principal(&state.broker, &state.config.auth, request.headers(), cert)?;
    }
    Ok(next.run(request).await)
}

/// Checks the token (when auth is on) and the rate limits, and hands the principal on.
async fn authenticate(
    State(state): State<SharedState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let ip = request.extensions().get::<ClientAddr>().and_then(|c| c.0);
    state.limiter.address(ip)?;
    let cert = request.extensions().get::<ClientCert>().map(|c| c.0.as_str());
    let principal = auth::principal(&state.broker, &state.config.auth, request.headers(), cert)?;
    state.limiter.request(&principal)?;
    request.extensions_mut().insert(principal);
    Ok(next.run(request).await)
}

/// How the topics API (`POST` and `PUT /api/v1/topics`) reads a topic's `settings` object: the
/// same deserialization and the broker's one topic validator, so the config file and this API
/// give the same answer for the same settings (a property test holds them to it). Problems are
/// (field of this API's body, reason).
///
/// # Errors
/// The JSON does not have the settings' shape (one problem, field `settings`), or the settings
/// are invalid (every problem).
pub fn topic_settings(
    json: &str,
    limits: &mycelium_broker::draft::SpecLimits,
) -> Result<mycelium_broker::spec::TopicSpec, Vec<(String, String)>> {
    let settings: routes::topics::TopicSettings =
        serde_json::from_str(json).map_err(|e| vec![("settings".to_owned(), e.to_string())])?;
    settings
        .spec_or_problems(limits)
        .map_err(|problems| problems.into_iter().map(|p| (p.field, p.message)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    fn authenticated() -> Arc<mycelium_auth::Authenticator> {
        let token = "myc_probe-test-token";
        let user = mycelium_auth::User {
            name: "scraper".into(),
            token_sha256: mycelium_auth::parse_token_hash(&mycelium_auth::token_hash_hex(token)).ok(),
            uid: None,
            cert_common_name: None,
            roles: vec![mycelium_broker::Role::Consumer],
            publish: None,
            consume: None,
        };
        let config = mycelium_auth::AuthConfig {
            mode: mycelium_auth::Mode::Required,
            jwt: None,
            users: vec![user],
            local_admins: false,
        };
        Arc::new(mycelium_auth::Authenticator::new(config).unwrap())
    }

    async fn probe(open_probes: OpenProbes, from: Option<IpAddr>, token: Option<&str>) -> StatusCode {
        let broker = Broker::new(mycelium_broker::BrokerConfig::default()).unwrap();
        let config = HttpConfig {
            auth: authenticated(),
            open_probes,
            ..HttpConfig::default()
        };
        let app = router(broker, config).unwrap();
        let mut request = Request::get("/metrics");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let mut request = request.body(axum::body::Body::empty()).unwrap();
        request.extensions_mut().insert(ClientAddr(from));
        app.oneshot(request).await.unwrap().status()
    }

    #[tokio::test]
    async fn the_per_address_limit_runs_before_the_token_is_checked() {
        let broker = Broker::new(mycelium_broker::BrokerConfig::default()).unwrap();
        let config = HttpConfig {
            auth: authenticated(),
            limits: RateLimits {
                per_ip: Some(Quota {
                    per_second: 1,
                    burst: 2,
                }),
                ..RateLimits::default()
            },
            ..HttpConfig::default()
        };
        let app = router(broker, config).unwrap();
        let call = |token: &str, ip: [u8; 4]| {
            let mut request = Request::get("/api/v1/topics")
                .header("authorization", format!("Bearer {token}"))
                .body(axum::body::Body::empty())
                .unwrap();
            request
                .extensions_mut()
                .insert(ClientAddr(Some(IpAddr::from(ip))));
            app.clone().oneshot(request)
        };
        // Bad tokens from one address: refused as such until its bucket is empty, then 429
        // without looking at the token at all.
        assert_eq!(
            call("forged", [10, 0, 0, 1]).await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            call("forged", [10, 0, 0, 1]).await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
        let limited = call("forged", [10, 0, 0, 1]).await.unwrap();
        assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(limited.headers().contains_key("retry-after"));
        // Another address is not affected.
        assert_eq!(
            call("myc_probe-test-token", [10, 0, 0, 2])
                .await
                .unwrap()
                .status(),
            StatusCode::OK
        );
    }

    #[tokio::test]
    async fn probes_are_open_on_loopback_and_need_a_token_elsewhere_unless_configured() {
        let loopback = Some(IpAddr::from([127, 0, 0, 1]));
        let remote = Some(IpAddr::from([10, 1, 2, 3]));
        let token = Some("myc_probe-test-token");
        assert_eq!(probe(OpenProbes::Loopback, loopback, None).await, StatusCode::OK);
        assert_eq!(
            probe(OpenProbes::Loopback, None, None).await,
            StatusCode::OK,
            "the Unix socket"
        );
        assert_eq!(
            probe(OpenProbes::Loopback, remote, None).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            probe(OpenProbes::Loopback, remote, Some("wrong")).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(probe(OpenProbes::Loopback, remote, token).await, StatusCode::OK);
        assert_eq!(probe(OpenProbes::Always, remote, None).await, StatusCode::OK);
        assert_eq!(
            probe(OpenProbes::Never, loopback, None).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(probe(OpenProbes::Never, loopback, token).await, StatusCode::OK);
    }
}
