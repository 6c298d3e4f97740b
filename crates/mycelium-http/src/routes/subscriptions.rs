//! Durable subscriptions: create, list, get (lag, in flight), delete.

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use mycelium_broker::inspect::DurableInfo;
use mycelium_protocol::{StartPosition, SubscribeOptions};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::SharedState;
use crate::auth::Allow;
use crate::error::{ApiError, ApiResult, FieldError, Kind, Problem};
use crate::extract::{ApiJson, ApiPath};
use mycelium_broker::Principal;

/// `POST /subscriptions`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateSubscription {
    /// A stored topic.
    topic: String,
    /// The durable name (1-128 of letters, digits, `_`, `-`).
    name: String,
    /// `new` (default), `beginning`, `sequence:<n>` or `time:<RFC 3339>`.
    #[serde(default)]
    start: Option<String>,
    /// Ack deadline in milliseconds (default 30,000).
    #[serde(default)]
    ack_wait_ms: Option<u32>,
    /// Attempts before the dead-letter queue (default 5; 0: unlimited).
    #[serde(default)]
    max_deliveries: Option<u32>,
    /// Messages in flight at once (default 1,000).
    #[serde(default)]
    max_in_flight: Option<u32>,
    /// Retry delays in milliseconds; the last repeats (default 2 s, 4 s, 8 s, 16 s, 32 s).
    #[serde(default)]
    backoff_ms: Vec<u32>,
    /// Content filter (docs/FILTERS.md): only matching messages are delivered.
    #[serde(default)]
    filter: Option<String>,
}

/// A durable subscription.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct SubscriptionView {
    topic: String,
    name: String,
    /// Every sequence below this is acknowledged (or dead-lettered).
    acked_floor: u64,
    /// Messages stored after the floor not finished yet.
    lag: u64,
    in_flight: usize,
    waiting: usize,
    consumers: usize,
    oldest_unacked_age_ms: u64,
}

impl From<DurableInfo> for SubscriptionView {
    fn from(d: DurableInfo) -> Self {
        SubscriptionView {
            topic: d.topic,
            name: d.name,
            acked_floor: d.acked_floor,
            lag: d.lag,
            in_flight: d.in_flight,
            waiting: d.waiting,
            consumers: d.consumers,
            oldest_unacked_age_ms: d.oldest_unacked_age_ms,
        }
    }
}

/// Durable subscriptions.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct SubscriptionList {
    subscriptions: Vec<SubscriptionView>,
}

fn start_of(text: Option<&str>, errors: &mut Vec<FieldError>) -> StartPosition {
    let bad = |errors: &mut Vec<FieldError>, message: String| {
        errors.push(FieldError {
            field: "start".into(),
            message,
        });
        StartPosition::New
    };
    match text {
        None | Some("new") => StartPosition::New,
        Some("beginning") => StartPosition::Beginning,
        Some(other) => match other.split_once(':') {
            Some(("sequence", n)) => match n.parse() {
                Ok(n) => StartPosition::Sequence(n),
                Err(e) => bad(errors, format!("`{n}` is not a sequence: {e}")),
            },
            Some(("time", t)) => match humantime::parse_rfc3339_weak(t) {
                Ok(at) => StartPosition::Time(
                    at.duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos() as u64),
                ),
                Err(e) => bad(errors, format!("`{t}` is not an RFC 3339 time: {e}")),
            },
            _ => bad(
                errors,
                format!("`{other}` is not new, beginning, sequence:<n> or time:<RFC 3339>"),
            ),
        },
    }
}

/// Create a durable subscription (admin); HTTP consumers then consume it by name.
#[utoipa::path(
    post, path = "/api/v1/subscriptions", tag = "subscriptions",
    request_body = CreateSubscription,
    responses(
        (status = 201, description = "Created", body = SubscriptionView),
        (status = 401, description = "No or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such topic", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Exists", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "Bad request", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Too large", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn create(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    ApiJson(request): ApiJson<CreateSubscription>,
) -> ApiResult<(StatusCode, axum::Json<SubscriptionView>)> {
    principal.admin(&state.broker, "subscriptions.create", &request.topic)?;
    let mut errors = Vec::new();
    let start = start_of(request.start.as_deref(), &mut errors);
    if request.ack_wait_ms == Some(0) {
        errors.push(FieldError {
            field: "ack_wait_ms".into(),
            message: "must be above 0".into(),
        });
    }
    if request.max_in_flight == Some(0) {
        errors.push(FieldError {
            field: "max_in_flight".into(),
            message: "must be above 0".into(),
        });
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    if state.broker.topic(&request.topic).is_none() {
        return Err(ApiError::not_found(format!("no topic `{}`", request.topic)));
    }
    if durable_view(&state, &request.topic, &request.name)
        .await
        .is_some()
    {
        return Err(ApiError::new(
            Kind::Conflict,
            format!("subscription `{}` on `{}` exists", request.name, request.topic),
        ));
    }
    let options = SubscribeOptions {
        durable: Some(&request.name),
        start: Some(start),
        ack_wait_ms: request.ack_wait_ms,
        max_deliveries: request.max_deliveries,
        max_in_flight: request.max_in_flight,
        backoff_ms: request.backoff_ms.clone(),
        filter: request.filter.as_deref(),
    };
    state
        .consumers
        .get_or_create(&state.broker, &principal, &request.topic, &request.name, &options)
        .await?;
    let view = durable_view(&state, &request.topic, &request.name)
        .await
        .ok_or_else(|| ApiError::internal("created subscription vanished"))?;
    Ok((StatusCode::CREATED, axum::Json(view.into())))
}

/// List durable subscriptions (open ones).
#[utoipa::path(
    get, path = "/api/v1/subscriptions", tag = "subscriptions",
    responses(
        (status = 200, description = "Subscriptions", body = SubscriptionList),
        (status = 401, description = "No or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "Bad request", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
) -> ApiResult<axum::Json<SubscriptionList>> {
    principal.admin(&state.broker, "subscriptions.list", "")?;
    let broker = std::sync::Arc::clone(&state.broker);
    let subs = mycelium_broker::blocking(move || broker.durable_subscriptions()).await;
    Ok(axum::Json(SubscriptionList {
        subscriptions: subs.into_iter().map(Into::into).collect(),
    }))
}

/// Get one durable subscription: lag, in flight, consumers.
#[utoipa::path(
    get, path = "/api/v1/subscriptions/{topic}/{name}", tag = "subscriptions",
    params(("topic" = String, Path, description = "Topic"), ("name" = String, Path, description = "Durable name")),
    responses(
        (status = 200, description = "The subscription", body = SubscriptionView),
        (status = 401, description = "No or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such subscription", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "Bad request", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn get_subscription(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    ApiPath((topic, name)): ApiPath<(String, String)>,
) -> ApiResult<axum::Json<SubscriptionView>> {
    principal.admin(&state.broker, "subscriptions.get", &topic)?;
    durable_view(&state, &topic, &name)
        .await
        .map(|d| axum::Json(d.into()))
        .ok_or_else(|| ApiError::not_found(format!("no open subscription `{name}` on `{topic}`")))
}

/// Delete a durable subscription: its consumers are detached and its position forgotten.
#[utoipa::path(
    delete, path = "/api/v1/subscriptions/{topic}/{name}", tag = "subscriptions",
    params(("topic" = String, Path, description = "Topic"), ("name" = String, Path, description = "Durable name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such subscription", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "Bad request", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn delete(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    ApiPath((topic, name)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    principal.admin(&state.broker, "subscriptions.delete", &topic)?;
    state.consumers.forget(&state.broker, &topic, &name);
    let broker = std::sync::Arc::clone(&state.broker);
    let (t, n) = (topic.clone(), name.clone());
    match mycelium_broker::blocking(move || broker.delete_durable(&t, &n)).await {
        Ok(true) => Ok(StatusCode::NO_CONTENT),
        Ok(false) => Err(ApiError::not_found(format!(
            "no subscription `{name}` on `{topic}`"
        ))),
        Err(e) => Err(ApiError::new(Kind::Storage, e.to_string())),
    }
}

/// An open durable subscription's figures (they read the log: off the async workers).
async fn durable_view(
    state: &SharedState,
    topic: &str,
    name: &str,
) -> Option<mycelium_broker::inspect::DurableInfo> {
    let (broker, topic, name) = (
        std::sync::Arc::clone(&state.broker),
        topic.to_owned(),
        name.to_owned(),
    );
    mycelium_broker::blocking(move || broker.durable_subscription(&topic, &name)).await
}
