//! Topics: list, create, get, update, delete, metrics; and the decoded view of TLV payloads.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use mycelium_broker::Broker;
use mycelium_broker::draft::{SpecField, SpecLimits, TopicDraft};
use mycelium_broker::spec::{Delivery, StorageKind, TopicSpec};
use mycelium_codec::Fixed8;
use mycelium_codec::records::Record;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::check_topic;
use crate::SharedState;
use crate::auth::Allow;
use crate::error::{ApiError, ApiResult, FieldError, Kind, Problem};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use mycelium_broker::Principal;

/// A topic's settings, as given when creating or replacing it. Every field is optional; the
/// defaults are those of `[[topics]]` in the configuration.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TopicSettings {
    /// `fanout`, `queue` or `direct`.
    #[serde(default)]
    pub(crate) routing: Option<String>,
    /// `round_robin` or `least_loaded`.
    #[serde(default)]
    pub(crate) balance: Option<String>,
    /// `at_most_once`, `at_least_once` or `exactly_once`.
    #[serde(default)]
    pub(crate) delivery: Option<String>,
    /// `batch`, `always` or `never` (stored topics).
    #[serde(default)]
    pub(crate) fsync: Option<String>,
    /// `raw` or `tlv`.
    #[serde(default)]
    pub(crate) codec: Option<String>,
    /// `block`, `drop_oldest` or `disconnect`.
    #[serde(default)]
    pub(crate) overflow: Option<String>,
    /// Largest payload in bytes.
    #[serde(default)]
    pub(crate) max_message_size: Option<usize>,
    /// Priorities reorder delivery (stored topics).
    #[serde(default)]
    pub(crate) priority: Option<bool>,
    /// Default TTL in milliseconds (stored topics).
    #[serde(default)]
    pub(crate) ttl_ms: Option<u64>,
    /// Idempotency keys are remembered this long, in milliseconds.
    #[serde(default)]
    pub(crate) dedup_window_ms: Option<u64>,
    /// Dead-letter messages out of attempts.
    #[serde(default)]
    pub(crate) dead_letter: Option<bool>,
    /// `limits` or `work_queue`.
    #[serde(default)]
    pub(crate) retention: Option<String>,
    /// Keep at most this many messages.
    #[serde(default)]
    pub(crate) retention_messages: Option<u64>,
    /// `skip` or `dead_letter`: messages a durable subscription's filter refuses.
    #[serde(default)]
    pub(crate) unmatched: Option<String>,
}

/// `POST /topics`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateTopic {
    /// The topic's name.
    pub(crate) name: String,
    /// Its settings (default: an in-memory fanout topic).
    #[serde(default)]
    pub(crate) settings: TopicSettings,
}

impl TopicSettings {
    /// The settings as the broker's one topic validator takes them.
    fn draft(&self) -> TopicDraft {
        TopicDraft {
            routing: self.routing.clone(),
            balance: self.balance.clone(),
            delivery: self.delivery.clone(),
            fsync: self.fsync.clone(),
            codec: self.codec.clone(),
            overflow: self.overflow.clone(),
            message_bytes_max: self.max_message_size.map(|n| n as u64),
            priority: self.priority,
            ttl: self.ttl_ms.map(Duration::from_millis),
            dedup_window: self.dedup_window_ms.map(Duration::from_millis),
            dead_letter: self.dead_letter,
            retention: self.retention.clone(),
            retention_messages: self.retention_messages,
            unmatched: self.unmatched.clone(),
            ..TopicDraft::default()
        }
    }

    /// The field of this API's body that carries a topic setting.
    pub(crate) fn field_of(field: SpecField) -> &'static str {
        match field {
            SpecField::Ttl => "ttl_ms",
            SpecField::DedupWindow => "dedup_window_ms",
            other => other.as_str(),
        }
    }

    /// The spec these settings make, or every problem, named by this API's fields.
    pub(crate) fn spec_or_problems(&self, limits: &SpecLimits) -> Result<TopicSpec, Vec<FieldError>> {
        self.draft().resolve(limits).map_err(|problems| {
            problems
                .into_iter()
                .map(|p| FieldError {
                    field: Self::field_of(p.field).into(),
                    message: p.reason,
                })
                .collect()
        })
    }

    /// The spec these settings make, or every problem.
    pub(crate) fn spec(&self, limits: &SpecLimits) -> Result<TopicSpec, ApiError> {
        self.spec_or_problems(limits).map_err(ApiError::invalid)
    }
}

/// A topic's counters.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct TopicCounts {
    published: u64,
    delivered: u64,
    dropped: u64,
    rejected: u64,
    acked: u64,
    redelivered: u64,
    dead_lettered: u64,
    expired: u64,
    duplicates: u64,
    stored: u64,
}

/// A topic.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct TopicView {
    name: String,
    routing: String,
    balance: String,
    delivery: String,
    storage: String,
    fsync: String,
    codec: String,
    overflow: String,
    max_message_size: usize,
    priority: bool,
    ttl_ms: Option<u64>,
    dedup_window_ms: u64,
    dead_letter: bool,
    retention: String,
    retention_messages: Option<u64>,
    subscribers: u32,
    counts: TopicCounts,
}

fn view(broker: &Broker, name: &str) -> Option<TopicView> {
    let topic = broker.topic(name)?;
    Some(view_of(broker, &topic))
}

/// The view of one topic: its own counters only (a listing of n topics costs n, not n squared).
fn view_of(broker: &Broker, topic: &mycelium_broker::TopicRef) -> TopicView {
    let name = topic.name();
    let t = &broker.topic_stats(topic);
    let spec = topic.spec();
    let delivery = if spec.storage == StorageKind::Disk && spec.delivery == Delivery::AtMostOnce {
        Delivery::AtLeastOnce
    } else {
        spec.delivery
    };
    TopicView {
        name: name.to_owned(),
        routing: spec.routing.to_string(),
        balance: spec.balance.to_string(),
        delivery: delivery.to_string(),
        storage: spec.storage.to_string(),
        fsync: spec.fsync.to_string(),
        codec: spec.codec.to_string(),
        overflow: spec.overflow.to_string(),
        max_message_size: spec.message_bytes_max,
        priority: spec.priority,
        ttl_ms: spec.ttl.map(|d| d.as_millis() as u64),
        dedup_window_ms: spec.dedup_window.as_millis() as u64,
        dead_letter: spec.dead_letter,
        retention: spec.retention.to_string(),
        retention_messages: spec.retention_messages,
        subscribers: t.subscribers,
        counts: TopicCounts {
            published: t.published,
            delivered: t.delivered,
            dropped: t.dropped,
            rejected: t.rejected,
            acked: t.acked,
            redelivered: t.redelivered,
            dead_lettered: t.dead_lettered,
            expired: t.expired,
            duplicates: t.duplicates,
            stored: t.stored,
        },
    }
}

/// A page of topics, by name.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct TopicList {
    topics: Vec<TopicView>,
    /// Pass as `after` for the next page; `null` on the last.
    next_after: Option<String>,
}

/// Which page of topics.
#[derive(Debug, Clone, Default, Deserialize, IntoParams, ToSchema)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct TopicsQuery {
    /// Start after this topic name (paging).
    #[serde(default)]
    after: Option<String>,
    /// At most this many (1-1,000, default 1,000).
    #[serde(default)]
    limit: Option<usize>,
}

/// List topics.
#[utoipa::path(
    get, path = "/api/v1/topics", tag = "topics",
    params(TopicsQuery),
    responses(
        (status = 200, description = "A page of topics, by name", body = TopicList),
        (status = 401, description = "No or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "Bad request", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list(
    State(state): State<SharedState>,
    ApiQuery(query): ApiQuery<TopicsQuery>,
) -> ApiResult<axum::Json<TopicList>> {
    let limit = query.limit.unwrap_or(1000);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid(vec![FieldError {
            field: "limit".into(),
            message: "must be 1-1,000".into(),
        }]));
    }
    // Off the async workers: stored topics' bounds are read under their logs' locks.
    let broker = Arc::clone(&state.broker);
    let list = mycelium_broker::blocking(move || {
        let topics = broker.topics();
        let from = query
            .after
            .as_deref()
            .map_or(0, |after| topics.partition_point(|t| t.name() <= after));
        let page = &topics[from..(from + limit).min(topics.len())];
        let next_after = (from + limit < topics.len())
            .then(|| page.last().map(|t| t.name().to_owned()))
            .flatten();
        TopicList {
            topics: page.iter().map(|t| view_of(&broker, t)).collect(),
            next_after,
        }
    })
    .await;
    Ok(axum::Json(list))
}

/// Create a topic (admin).
#[utoipa::path(
    post, path = "/api/v1/topics", tag = "topics",
    request_body = CreateTopic,
    responses(
        (status = 201, description = "Created", body = TopicView),
        (status = 401, description = "No or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
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
    ApiJson(request): ApiJson<CreateTopic>,
) -> ApiResult<(StatusCode, axum::Json<TopicView>)> {
    principal.admin(&state.broker, "topics.create", &request.name)?;
    let mut errors = Vec::new();
    check_topic(&request.name, || "name".into(), &mut errors);
    let spec = request.settings.spec(&state.broker.config().spec_limits);
    match (errors.is_empty(), spec) {
        (true, Ok(spec)) => {
            if state.broker.topic(&request.name).is_some() {
                return Err(ApiError::new(
                    Kind::Conflict,
                    format!("topic `{}` exists; PUT replaces it", request.name),
                ));
            }
            state.broker.create_topic(&request.name, spec)?;
            register(&state, &request.name, Some(&request.settings)).await?;
            let view = view(&state.broker, &request.name)
                .ok_or_else(|| ApiError::internal("created topic vanished"))?;
            Ok((StatusCode::CREATED, axum::Json(view)))
        }
        (_, Err(mut api)) => {
            errors.append(&mut api.errors);
            Err(ApiError::invalid(errors))
        }
        (false, Ok(_)) => Err(ApiError::invalid(errors)),
    }
}

/// Get a topic.
#[utoipa::path(
    get, path = "/api/v1/topics/{name}", tag = "topics",
    params(("name" = String, Path, description = "Topic name")),
    responses(
        (status = 200, description = "The topic", body = TopicView),
        (status = 401, description = "No or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such topic", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "Bad request", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn get_topic(
    State(state): State<SharedState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<axum::Json<TopicView>> {
    view(&state.broker, &name)
        .map(axum::Json)
        .ok_or_else(|| ApiError::not_found(format!("no topic `{name}`")))
}

/// Replace a topic's settings (admin). Refused (409) while it has durable subscriptions.
#[utoipa::path(
    put, path = "/api/v1/topics/{name}", tag = "topics",
    params(("name" = String, Path, description = "Topic name")),
    request_body = TopicSettings,
    responses(
        (status = 200, description = "Replaced (or created)", body = TopicView),
        (status = 401, description = "No or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Has durable subscriptions", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "Bad request", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Too large", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn update(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
    ApiJson(settings): ApiJson<TopicSettings>,
) -> ApiResult<axum::Json<TopicView>> {
    principal.admin(&state.broker, "topics.update", &name)?;
    let mut errors = Vec::new();
    check_topic(&name, || "name".into(), &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    let spec = settings.spec(&state.broker.config().spec_limits)?;
    let same_storage = state
        .broker
        .topic(&name)
        .is_some_and(|topic| topic.spec().storage == spec.storage);
    if same_storage {
        // Changed in place: its messages, subscriptions and counters stay.
        state.broker.update_topic(&name, spec)?;
    } else {
        if has_durable_subscriptions(&state, &name).await {
            return Err(ApiError::new(
                Kind::Conflict,
                format!("topic `{name}` has durable subscriptions; delete them before changing its storage"),
            ));
        }
        state.broker.delete_topic(&name);
        state.broker.create_topic(&name, spec)?;
    }
    register(&state, &name, Some(&settings)).await?;
    view(&state.broker, &name)
        .map(axum::Json)
        .ok_or_else(|| ApiError::internal("replaced topic vanished"))
}

/// Keeps a topic made or changed here in the registry (`None`: drops it), so it comes back
/// after a restart; a failed write is an error the caller sees (the change holds until then).
async fn register(state: &SharedState, name: &str, settings: Option<&TopicSettings>) -> ApiResult<()> {
    let broker = Arc::clone(&state.broker);
    let name = name.to_owned();
    let settings = settings
        .map(serde_json::to_value)
        .transpose()
        .map_err(|e| ApiError::internal(e.to_string()))?;
    mycelium_broker::blocking(move || match settings {
        Some(settings) => broker.register_topic(&name, settings),
        None => broker.unregister_topic(&name),
    })
    .await
    .map_err(|e| {
        ApiError::new(
            Kind::Storage,
            format!("the change is live but not kept for restarts: writing the topic registry failed: {e}"),
        )
    })
}

/// Creates the topics kept in the registry (at start-up, after the configured ones): each
/// comes back with the settings it was given. A topic the configuration names is defined by the
/// configuration; its registry entry is ignored. Returns what could not be restored, as
/// `(topic, reason)`. Blocking.
pub fn restore_topics(broker: &Broker) -> Vec<(String, String)> {
    let entries = match broker.registered_topics() {
        Ok(entries) => entries,
        Err(error) => return vec![(String::new(), error)],
    };
    let mut problems = Vec::new();
    for (name, settings) in entries {
        if broker.topic(&name).is_some() {
            tracing::warn!(topic = %name, "the configuration defines this topic; its entry in topics.json is ignored");
            continue;
        }
        let spec = match crate::topic_settings(&settings.to_string(), &broker.config().spec_limits) {
            Ok(spec) => spec,
            Err(errors) => {
                let text = errors
                    .into_iter()
                    .map(|(field, message)| format!("{field}: {message}"))
                    .collect::<Vec<_>>()
                    .join("; ");
                problems.push((name, text));
                continue;
            }
        };
        if let Err(error) = broker.create_topic(&name, spec) {
            problems.push((name, error.to_string()));
        }
    }
    problems
}

/// `DELETE /topics/{name}` options.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeleteQuery {
    /// Delete even with durable subscriptions (they are deleted too).
    #[serde(default)]
    force: Option<bool>,
}

/// Delete a topic (admin). Refused (409) while it has durable subscriptions unless `force`.
/// Stored messages stay on disk.
#[utoipa::path(
    delete, path = "/api/v1/topics/{name}", tag = "topics",
    params(("name" = String, Path, description = "Topic name"), DeleteQuery),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such topic", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Has durable subscriptions", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "Bad request", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn delete(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<DeleteQuery>,
) -> ApiResult<StatusCode> {
    principal.admin(&state.broker, "topics.delete", &name)?;
    if state.broker.topic(&name).is_none() {
        return Err(ApiError::not_found(format!("no topic `{name}`")));
    }
    if has_durable_subscriptions(&state, &name).await {
        if !query.force.unwrap_or(false) {
            return Err(ApiError::new(
                Kind::Conflict,
                format!("topic `{name}` has durable subscriptions; add ?force=true to delete them with it"),
            ));
        }
        let subs: Vec<String> = state
            .broker
            .durable_subscription_names()
            .into_iter()
            .filter(|(topic, _)| *topic == name)
            .map(|(_, sub)| sub)
            .collect();
        for sub in &subs {
            state.consumers.forget(&state.broker, &name, sub);
        }
        let (broker, topic) = (Arc::clone(&state.broker), name.clone());
        mycelium_broker::blocking(move || {
            for sub in &subs {
                broker.delete_durable(&topic, sub)?;
            }
            broker.delete_persisted_subscriptions(&topic)
        })
        .await
        .map_err(|e| ApiError::new(Kind::Storage, e.to_string()))?;
    }
    state.broker.delete_topic(&name);
    register(&state, &name, None).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A counter sample: when, published, delivered.
type Sample = (Instant, u64, u64);

/// Per-topic rates over the last minute, from counter samples every 5 s.
#[derive(Debug, Default)]
pub(crate) struct Rates {
    samples: Mutex<HashMap<String, Vec<Sample>>>,
}

impl Rates {
    /// Records the counters now.
    pub(crate) fn sample(&self, broker: &Broker) {
        let now = Instant::now();
        let stats = broker.stats();
        let mut samples = self.samples.lock();
        for t in stats.topics {
            let series = samples.entry(t.name).or_default();
            series.push((now, t.published, t.delivered));
            series.retain(|(at, _, _)| now.duration_since(*at) <= Duration::from_secs(65));
        }
    }

    /// (published/s, delivered/s) over the samples kept.
    fn of(&self, topic: &str) -> (f64, f64) {
        let samples = self.samples.lock();
        let Some(series) = samples.get(topic) else {
            return (0.0, 0.0);
        };
        match (series.first(), series.last()) {
            (Some(first), Some(last)) if last.0 > first.0 => {
                let secs = last.0.duration_since(first.0).as_secs_f64();
                (
                    (last.1.saturating_sub(first.1)) as f64 / secs,
                    (last.2.saturating_sub(first.2)) as f64 / secs,
                )
            }
            _ => (0.0, 0.0),
        }
    }
}

/// A durable subscription's position.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct SubscriptionLag {
    name: String,
    lag: u64,
    in_flight: usize,
    waiting: usize,
    oldest_unacked_age_ms: u64,
}

/// A topic's metrics.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct TopicMetrics {
    name: String,
    /// Published per second over the last minute.
    publish_rate: f64,
    /// Delivered per second over the last minute.
    deliver_rate: f64,
    counts: TopicCounts,
    /// Stored messages (0 for in-memory topics).
    depth: u64,
    /// Durable subscriptions and their lag.
    subscriptions: Vec<SubscriptionLag>,
    /// Age of the oldest unacknowledged message across its subscriptions, ms.
    oldest_unacked_age_ms: u64,
    /// Dead letters waiting in `{topic}.dlq`.
    dlq_depth: u64,
}

/// A topic's rates, depth, consumer lag, oldest unacked age and DLQ size.
#[utoipa::path(
    get, path = "/api/v1/topics/{name}/metrics", tag = "topics",
    params(("name" = String, Path, description = "Topic name")),
    responses(
        (status = 200, description = "Metrics", body = TopicMetrics),
        (status = 401, description = "No or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such topic", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "Bad request", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn metrics(
    State(state): State<SharedState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<axum::Json<TopicMetrics>> {
    let topic =
        view(&state.broker, &name).ok_or_else(|| ApiError::not_found(format!("no topic `{name}`")))?;
    let broker = std::sync::Arc::clone(&state.broker);
    let lookup = name.clone();
    let depth = mycelium_broker::blocking(move || broker.topic_depth(&lookup)).await;
    let (publish_rate, deliver_rate) = state.rates.of(&name);
    let (stored, subscriptions, dlq_depth) = match depth {
        Some(d) => (
            d.stored,
            d.subscriptions
                .into_iter()
                .map(|s| SubscriptionLag {
                    name: s.name,
                    lag: s.lag,
                    in_flight: s.in_flight,
                    waiting: s.waiting,
                    oldest_unacked_age_ms: s.oldest_unacked_age_ms,
                })
                .collect::<Vec<_>>(),
            d.dlq_depth,
        ),
        None => (0, Vec::new(), 0),
    };
    Ok(axum::Json(TopicMetrics {
        name,
        publish_rate,
        deliver_rate,
        counts: topic.counts,
        depth: stored,
        oldest_unacked_age_ms: subscriptions
            .iter()
            .map(|s| s.oldest_unacked_age_ms)
            .max()
            .unwrap_or(0),
        subscriptions,
        dlq_depth,
    }))
}

/// A decoded view of a Torq TLV message: header fields and records (known types with their
/// fields; prices and quantities as decimal strings).
pub(crate) fn tlv_view(payload: &[u8]) -> serde_json::Value {
    use mycelium_codec::records::{
        ArbitrageSignal, Fill, OrderCancel, OrderNew, Quote, SignalIdentity, Trade,
    };
    use serde_json::json;
    let message = match mycelium_codec::validate(payload) {
        Ok(m) => m,
        Err(e) => return json!({ "error": format!("not a valid TLV message: {e}") }),
    };
    let fx = |v: zerocopy::little_endian::I64| Fixed8(v.get()).to_string();
    let records: Vec<serde_json::Value> = message
        .tlvs()
        .map_while(Result::ok)
        .map(|tlv| {
            let fields = match tlv.tlv_type {
                t if t == Trade::TLV_TYPE as u8 => tlv.record::<Trade>().ok().map(|r| json!({
                    "instrument_id": r.instrument_id.get(), "price": fx(r.price), "volume": fx(r.volume),
                    "timestamp_ns": r.timestamp_ns.get(), "side": r.side })),
                t if t == Quote::TLV_TYPE as u8 => tlv.record::<Quote>().ok().map(|r| json!({
                    "instrument_id": r.instrument_id.get(), "bid_price": fx(r.bid_price), "bid_size": fx(r.bid_size),
                    "ask_price": fx(r.ask_price), "ask_size": fx(r.ask_size), "timestamp_ns": r.timestamp_ns.get() })),
                t if t == SignalIdentity::TLV_TYPE as u8 => tlv.record::<SignalIdentity>().ok().map(|r| json!({
                    "strategy_id": r.strategy_id.get(), "signal_id": r.signal_id.get(), "confidence": r.confidence,
                    "timestamp_ns": r.timestamp_ns.get() })),
                t if t == ArbitrageSignal::TLV_TYPE as u8 => tlv.record::<ArbitrageSignal>().ok().map(|r| json!({
                    "source_venue": r.source_venue.get(), "target_venue": r.target_venue.get(),
                    "instrument_id": r.instrument_id.get(), "buy_price": fx(r.buy_price), "sell_price": fx(r.sell_price),
                    "max_volume": fx(r.max_volume), "expected_profit": fx(r.expected_profit),
                    "valid_until_ns": r.valid_until_ns.get() })),
                t if t == OrderNew::TLV_TYPE as u8 => tlv.record::<OrderNew>().ok().map(|r| json!({
                    "order_id": r.order_id.get(), "instrument_id": r.instrument_id.get(), "price": fx(r.price),
                    "quantity": fx(r.quantity), "side": r.side, "order_type": r.order_type,
                    "time_in_force": r.time_in_force, "strategy_id": r.strategy_id.get(),
                    "timestamp_ns": r.timestamp_ns.get() })),
                t if t == OrderCancel::TLV_TYPE as u8 => tlv.record::<OrderCancel>().ok().map(|r| json!({
                    "order_id": r.order_id.get(), "instrument_id": r.instrument_id.get(), "reason": r.reason,
                    "timestamp_ns": r.timestamp_ns.get() })),
                t if t == Fill::TLV_TYPE as u8 => tlv.record::<Fill>().ok().map(|r| json!({
                    "order_id": r.order_id.get(), "fill_id": r.fill_id.get(), "instrument_id": r.instrument_id.get(),
                    "price": fx(r.price), "quantity": fx(r.quantity), "fee": fx(r.fee), "side": r.side,
                    "liquidity": r.liquidity, "timestamp_ns": r.timestamp_ns.get() })),
                _ => None,
            };
            let name = mycelium_codec::TlvType::try_from(tlv.tlv_type).map(|t| t.to_string()).ok();
            json!({ "type": tlv.tlv_type, "name": name, "length": tlv.value.len(), "fields": fields,
                    "value_hex": if fields.is_none() { Some(hex(tlv.value)) } else { None } })
        })
        .collect();
    json!({
        "relay_domain": message.relay_domain().map(|d| d.to_string()).ok(),
        "source": message.source(),
        "sequence": message.sequence(),
        "timestamp_ns": message.timestamp_ns(),
        "flags": message.flags(),
        "records": records,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `topic` has durable subscriptions, open or persisted (reads state files: off the async
/// workers).
async fn has_durable_subscriptions(state: &SharedState, topic: &str) -> bool {
    let (broker, topic) = (Arc::clone(&state.broker), topic.to_owned());
    mycelium_broker::blocking(move || broker.has_durable_subscriptions(&topic)).await
}
