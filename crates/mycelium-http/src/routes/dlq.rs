//! Dead-letter queues: list (filters, paging), get one, replay, purge (admin).

use axum::Extension;
use axum::extract::State;
use mycelium_broker::dlq::{DlqEntry, DlqFilter};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{PayloadFields, rfc3339};
use crate::SharedState;
use crate::auth::Allow;
use crate::error::{ApiError, ApiResult, FieldError, Problem};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use mycelium_broker::Principal;

/// Which dead letters (every field optional).
#[derive(Debug, Clone, Default, Deserialize, IntoParams, ToSchema)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct DlqQuery {
    /// Only this reason: `max_deliveries`, `terminated`, `expired`.
    #[serde(default)]
    reason: Option<String>,
    /// Only from this durable subscription.
    #[serde(default)]
    subscription: Option<String>,
    /// Dead-lettered at or after (ns since the Unix epoch).
    #[serde(default)]
    since_ns: Option<u64>,
    /// Dead-lettered before (ns since the Unix epoch).
    #[serde(default)]
    until_ns: Option<u64>,
    /// Start after this DLQ sequence (paging).
    #[serde(default)]
    after: Option<u64>,
    /// At most this many (1-1,000, default 100).
    #[serde(default)]
    limit: Option<usize>,
}

/// A dead letter.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct DeadLetterView {
    /// Sequence in the DLQ.
    sequence: u64,
    /// Id of the dead letter.
    id: String,
    /// The topic it came from.
    topic: String,
    /// The durable subscription that gave up.
    subscription: String,
    /// Its sequence in its topic.
    original_sequence: u64,
    /// Its id in its topic.
    original_id: String,
    /// Delivery attempts made.
    attempts: u32,
    /// `max_deliveries`, `terminated` or `expired`.
    reason: String,
    /// The consumer's last error text.
    error: Option<String>,
    /// When it was dead-lettered.
    dead_lettered_at: String,
    /// When it was first published.
    published_at: String,
    /// Every failed attempt since the broker started.
    #[schema(value_type = Vec<Object>)]
    history: serde_json::Value,
    /// Its headers.
    headers: std::collections::BTreeMap<String, String>,
    /// Its payload.
    #[serde(flatten)]
    body: PayloadFields,
}

impl From<DlqEntry> for DeadLetterView {
    fn from(e: DlqEntry) -> Self {
        let content_type = e.headers.get(super::CONTENT_TYPE).cloned();
        let mut headers = e.headers;
        headers.remove(super::CONTENT_TYPE);
        DeadLetterView {
            sequence: e.sequence,
            id: e.id,
            topic: e.topic,
            subscription: e.subscription,
            original_sequence: e.original_sequence,
            original_id: e.original_id,
            attempts: e.attempts,
            reason: e.reason,
            error: e.error,
            dead_lettered_at: rfc3339(e.dead_lettered_ns),
            published_at: rfc3339(e.published_ns),
            history: e.history,
            headers,
            body: PayloadFields::show(&e.payload, content_type.as_deref()),
        }
    }
}

/// A page of dead letters.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct DlqPageView {
    /// The DLQ topic.
    dlq: String,
    /// Dead letters waiting (all, not only matching).
    depth: u64,
    /// Matching entries, oldest first.
    entries: Vec<DeadLetterView>,
    /// Pass as `after` for the next page; `null` on the last.
    next_after: Option<u64>,
}

/// List a topic's dead letters.
#[utoipa::path(
    get, path = "/api/v1/dlq/{topic}", tag = "dlq",
    params(("topic" = String, Path, description = "The topic (or its DLQ)"), DlqQuery),
    responses(
        (status = 200, description = "A page", body = DlqPageView),
        (status = 401, description = "No or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such DLQ", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "Bad request", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    ApiPath(topic): ApiPath<String>,
    ApiQuery(query): ApiQuery<DlqQuery>,
) -> ApiResult<axum::Json<DlqPageView>> {
    principal.admin(&state.broker, "dlq.list", &topic)?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid(vec![FieldError {
            field: "limit".into(),
            message: "must be 1-1,000".into(),
        }]));
    }
    let filter = DlqFilter {
        sequences: Vec::new(),
        reason: query.reason,
        subscription: query.subscription,
        since_ns: query.since_ns,
        until_ns: query.until_ns,
    };
    let broker = std::sync::Arc::clone(&state.broker);
    let after = query.after.unwrap_or(0);
    let page = mycelium_broker::blocking(move || broker.dlq_list(&topic, &filter, after, limit)).await?;
    Ok(axum::Json(DlqPageView {
        dlq: page.dlq,
        depth: page.depth,
        entries: page.entries.into_iter().map(Into::into).collect(),
        next_after: page.next_after,
    }))
}

/// Get one dead letter.
#[utoipa::path(
    get, path = "/api/v1/dlq/{topic}/messages/{sequence}", tag = "dlq",
    params(("topic" = String, Path, description = "The topic"), ("sequence" = u64, Path, description = "DLQ sequence")),
    responses(
        (status = 200, description = "The dead letter", body = DeadLetterView),
        (status = 400, description = "Bad sequence", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such dead letter", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn get_entry(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    ApiPath((topic, sequence)): ApiPath<(String, u64)>,
) -> ApiResult<axum::Json<DeadLetterView>> {
    principal.admin(&state.broker, "dlq.get", &topic)?;
    let entry = state.broker.dlq_get(&topic, sequence)?;
    Ok(axum::Json(entry.into()))
}

/// Which dead letters to replay or purge.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DlqSelection {
    /// These DLQ sequences.
    #[serde(default)]
    sequences: Vec<u64>,
    /// Every dead letter (required when nothing else selects).
    #[serde(default)]
    all: bool,
    /// Only this reason.
    #[serde(default)]
    reason: Option<String>,
    /// Only from this durable subscription.
    #[serde(default)]
    subscription: Option<String>,
    /// Replay only: publish to this topic instead of each one's original topic.
    #[serde(default)]
    target: Option<String>,
    /// Replay only: at most this many messages per second.
    #[serde(default)]
    rate: Option<u32>,
}

impl DlqSelection {
    fn filter(&self) -> Result<DlqFilter, ApiError> {
        let selects = !self.sequences.is_empty() || self.reason.is_some() || self.subscription.is_some();
        if !selects && !self.all {
            return Err(ApiError::invalid(vec![FieldError {
                field: "all".into(),
                message: "say which dead letters: sequences, reason, subscription, or all = true".into(),
            }]));
        }
        Ok(DlqFilter {
            sequences: self.sequences.clone(),
            reason: self.reason.clone(),
            subscription: self.subscription.clone(),
            since_ns: None,
            until_ns: None,
        })
    }
}

/// What a replay did.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct ReplayView {
    /// Published again and removed from the DLQ.
    replayed: u64,
    /// Already replayed before (the target recognised the key), removed from the DLQ.
    duplicates: u64,
    /// Refused by the target, left in the DLQ.
    failed: Vec<ReplayFailure>,
}

/// One dead letter the target refused.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct ReplayFailure {
    sequence: u64,
    error: String,
}

/// Replay dead letters to their topic (or `target`), rate limited; each is removed once stored.
#[utoipa::path(
    post, path = "/api/v1/dlq/{topic}/replay", tag = "dlq",
    params(("topic" = String, Path, description = "The topic")),
    request_body = DlqSelection,
    responses(
        (status = 200, description = "Replayed", body = ReplayView),
        (status = 401, description = "No or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such DLQ", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "Bad request", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Too large", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn replay(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    ApiPath(topic): ApiPath<String>,
    ApiJson(selection): ApiJson<DlqSelection>,
) -> ApiResult<axum::Json<ReplayView>> {
    principal.admin(&state.broker, "dlq.replay", &topic)?;
    let filter = selection.filter()?;
    if let Some(target) = &selection.target
        && let Err(e) = mycelium_broker::name::validate_topic(target)
    {
        return Err(ApiError::invalid(vec![FieldError {
            field: "target".into(),
            message: e.to_string(),
        }]));
    }
    if selection.rate == Some(0) {
        return Err(ApiError::invalid(vec![FieldError {
            field: "rate".into(),
            message: "must be above 0 (leave it out for no limit)".into(),
        }]));
    }
    let report = state
        .broker
        .dlq_replay(&topic, &filter, selection.target.as_deref(), selection.rate)
        .await?;
    Ok(axum::Json(ReplayView {
        replayed: report.replayed,
        duplicates: report.duplicates,
        failed: report
            .failed
            .into_iter()
            .map(|(sequence, error)| ReplayFailure { sequence, error })
            .collect(),
    }))
}

/// How many were purged.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct PurgeView {
    purged: u64,
}

/// Remove dead letters for good.
#[utoipa::path(
    post, path = "/api/v1/dlq/{topic}/purge", tag = "dlq",
    params(("topic" = String, Path, description = "The topic")),
    request_body = DlqSelection,
    responses(
        (status = 200, description = "Purged", body = PurgeView),
        (status = 401, description = "No or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such DLQ", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "Bad request", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Too large", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn purge(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    ApiPath(topic): ApiPath<String>,
    ApiJson(selection): ApiJson<DlqSelection>,
) -> ApiResult<axum::Json<PurgeView>> {
    principal.admin(&state.broker, "dlq.purge", &topic)?;
    let filter = if selection.all
        && selection.sequences.is_empty()
        && selection.reason.is_none()
        && selection.subscription.is_none()
    {
        DlqFilter::default()
    } else {
        selection.filter()?
    };
    let broker = std::sync::Arc::clone(&state.broker);
    let purged = mycelium_broker::blocking(move || broker.dlq_purge(&topic, &filter)).await?;
    Ok(axum::Json(PurgeView { purged }))
}
