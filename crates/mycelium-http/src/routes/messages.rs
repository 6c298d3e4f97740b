//! Messages: publish (one or a batch), consume (long poll), ack / nack / term / in-progress, get
//! one by id.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use bytes::{Bytes, BytesMut};
use mycelium_broker::{LocalMessage, MessageProps};
use mycelium_protocol::{HeaderIter, StartPosition, SubscribeOptions};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{At, CONTENT_TYPE, PayloadFields, check_topic, parse_id, rfc3339, show_headers};
use crate::SharedState;
use crate::auth::Allow;
use crate::consume::{Delivered, HttpVerdict};
use crate::error::{ApiError, ApiResult, FieldError, Problem};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use mycelium_broker::Action;
use mycelium_broker::Principal;

/// One message to publish.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PublishMessage {
    /// The topic.
    pub(crate) topic: String,
    /// The payload as a JSON value, stored as the text that was sent (key order, numbers and
    /// spacing kept).
    #[serde(default)]
    #[schema(value_type = Option<serde_json::Value>)]
    pub(crate) payload: Option<Box<serde_json::value::RawValue>>,
    /// The payload as base64 bytes (instead of `payload`).
    #[serde(default)]
    pub(crate) payload_base64: Option<String>,
    /// Content type (default `application/json` for `payload`, `application/octet-stream` for
    /// `payload_base64`).
    #[serde(default)]
    pub(crate) content_type: Option<String>,
    /// Application headers (e.g. `traceparent`).
    #[serde(default)]
    pub(crate) headers: BTreeMap<String, String>,
    /// 0-9, higher first (topics with `priority = true`).
    #[serde(default)]
    pub(crate) priority: Option<u8>,
    /// Time to live in milliseconds.
    #[serde(default)]
    pub(crate) ttl_ms: Option<u64>,
    /// Hold back the first delivery this many milliseconds.
    #[serde(default)]
    pub(crate) delay_ms: Option<u64>,
    /// Publishes with the same key within the topic's dedup window are stored once.
    #[serde(default)]
    pub(crate) idempotency_key: Option<String>,
}

/// One message, or `{"messages": [...]}`.
///
/// Told apart by the object's first key (`messages`: a batch), and read in one pass: serde's
/// `untagged` would first copy the whole body into a tree and then try each form on it (a quarter
/// of the broker's time on 1,000-message batches), and its error would name no field.
#[derive(Debug, Clone, ToSchema)]
#[serde(untagged)] // read by utoipa: the document shows the two forms as `oneOf`
pub(crate) enum PublishRequest {
    /// A batch, published in order.
    Batch {
        /// The messages.
        messages: Vec<PublishMessage>,
    },
    /// One message.
    One(PublishMessage),
}

impl<'de> Deserialize<'de> for PublishRequest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(RequestVisitor)
    }
}

struct RequestVisitor;

impl<'de> serde::de::Visitor<'de> for RequestVisitor {
    type Value = PublishRequest;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(r#"a message object, or {"messages": [...]}"#)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<PublishRequest, A::Error> {
        let first: Option<String> = map.next_key()?;
        if first.as_deref() == Some("messages") {
            let messages = map.next_value()?;
            if let Some(extra) = map.next_key::<String>()? {
                return Err(serde::de::Error::unknown_field(&extra, &["messages"]));
            }
            return Ok(PublishRequest::Batch { messages });
        }
        // One message: its fields, the key already read first.
        let fields = FirstKeyAgain { first, map };
        PublishMessage::deserialize(serde::de::value::MapAccessDeserializer::new(fields))
            .map(PublishRequest::One)
    }
}

/// A map whose first key was read already: gives that key again, then the rest.
struct FirstKeyAgain<A> {
    first: Option<String>,
    map: A,
}

impl<'de, A: serde::de::MapAccess<'de>> serde::de::MapAccess<'de> for FirstKeyAgain<A> {
    type Error = A::Error;

    fn next_key_seed<K: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        match self.first.take() {
            Some(key) => seed
                .deserialize(serde::de::IntoDeserializer::into_deserializer(key))
                .map(Some),
            None => self.map.next_key_seed(seed),
        }
    }

    fn next_value_seed<V: serde::de::DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(seed)
    }
}

/// What the broker did with one message.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct PublishResult {
    /// The topic.
    #[serde(serialize_with = "topic_name")]
    #[schema(value_type = String)]
    pub(crate) topic: mycelium_broker::TopicRef,
    /// Its per-topic sequence.
    pub(crate) sequence: u64,
    /// Its id (stored topics; `null` on in-memory topics, which keep no ids).
    #[serde(serialize_with = "hyphenated")]
    #[schema(value_type = Option<String>)]
    pub(crate) id: Option<uuid::Uuid>,
    /// The idempotency key was known: `sequence` and `id` are the original's.
    pub(crate) duplicate: bool,
}

// A batch's answer is written straight from the broker's values: no string per message.
fn topic_name<S: serde::Serializer>(topic: &mycelium_broker::TopicRef, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(topic.name())
}

fn hyphenated<S: serde::Serializer>(id: &Option<uuid::Uuid>, s: S) -> Result<S::Ok, S::Error> {
    match id {
        Some(id) => s.collect_str(&id.hyphenated()),
        None => s.serialize_none(),
    }
}

/// The results, in the order the messages were given.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct PublishResponse {
    /// One per message.
    pub(crate) results: Vec<PublishResult>,
}

fn to_local(message: PublishMessage, at: At, errors: &mut Vec<FieldError>) -> LocalMessage {
    check_topic(&message.topic, || at.field("topic"), errors);
    let body = PayloadFields {
        payload: message.payload,
        payload_base64: message.payload_base64,
        content_type: message.content_type,
    };
    let (payload, content_type) = body.bytes(at, errors);
    if message.priority.is_some_and(|p| p > 9) {
        errors.push(FieldError {
            field: at.field("priority"),
            message: "must be 0-9".into(),
        });
    }
    if message.ttl_ms == Some(0) {
        errors.push(FieldError {
            field: at.field("ttl_ms"),
            message: "must be above 0 (leave it out for no TTL)".into(),
        });
    }
    if message
        .idempotency_key
        .as_ref()
        .is_some_and(|k| k.is_empty() || k.len() > 1024)
    {
        errors.push(FieldError {
            field: at.field("idempotency_key"),
            message: "1 to 1,024 bytes".into(),
        });
    }
    // The header block in one allocation: a key (u8 length) and a value (u16 length) per pair.
    let pairs = message
        .headers
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case(CONTENT_TYPE))
        .map(|(k, v)| (k.as_str(), v.as_bytes()))
        .chain(std::iter::once((CONTENT_TYPE, content_type.as_bytes())));
    let mut headers = BytesMut::with_capacity(pairs.clone().map(|(k, v)| 3 + k.len() + v.len()).sum());
    for (key, _) in message.headers.iter() {
        if key.is_empty() || key.len() > 255 {
            errors.push(FieldError {
                field: at.field("headers"),
                message: format!("header name `{key}` must be 1-255 bytes"),
            });
        }
    }
    if let Err(e) = mycelium_protocol::encode_headers(&mut headers, pairs) {
        errors.push(FieldError {
            field: at.field("headers"),
            message: e.to_string(),
        });
    }
    LocalMessage {
        topic: message.topic,
        headers: headers.freeze(),
        payload,
        props: MessageProps {
            priority: message.priority.unwrap_or(0),
            ttl: message.ttl_ms.map(Duration::from_millis),
            delay: message.delay_ms.map(Duration::from_millis),
            not_before_ns: None,
            idempotency_key: message.idempotency_key.map(Bytes::from),
        },
    }
}

/// Publish one message or a batch.
///
/// Stored topics answer once the messages are stored under their fsync policy; in-memory topics
/// once routed. A batch is validated whole first (422 lists every bad field); then each message
/// is published in order, and the first refusal stops the answer with its error (the messages
/// before it are published).
#[utoipa::path(
    post, path = "/api/v1/messages/publish", tag = "messages",
    request_body = PublishRequest,
    responses(
        (status = 200, description = "Published", body = PublishResponse),
        (status = 401, description = "No or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Role or topic not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown topic", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Not stored", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "Bad request", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn publish(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    ApiJson(request): ApiJson<PublishRequest>,
) -> ApiResult<axum::Json<PublishResponse>> {
    let (messages, batch) = match request {
        PublishRequest::Batch { messages } => (messages, true),
        PublishRequest::One(message) => (vec![message], false),
    };
    if messages.is_empty() {
        return Err(ApiError::invalid(vec![FieldError {
            field: "messages".into(),
            message: "give at least one message".into(),
        }]));
    }
    let mut errors = Vec::new();
    let locals: Vec<LocalMessage> = messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| to_local(m, At(batch.then_some(i)), &mut errors))
        .collect();
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    let mut per_topic: BTreeMap<&str, u32> = BTreeMap::new();
    for message in &locals {
        principal.allow(&state.broker, Action::Publish(&message.topic))?;
        *per_topic.entry(&message.topic).or_default() += 1;
    }
    for (topic, count) in per_topic {
        state.limiter.publish(topic, count)?;
    }
    let count = locals.len();
    let results = state.broker.publish_local_many(locals).await;
    let mut out = Vec::with_capacity(count);
    for (i, result) in results.into_iter().enumerate() {
        match result {
            Ok((topic, stored)) => out.push(PublishResult {
                topic,
                sequence: stored.sequence,
                id: (stored.id != [0; 16]).then(|| uuid::Uuid::from_bytes(stored.id)),
                duplicate: stored.duplicate,
            }),
            Err(error) => {
                let mut api: ApiError = error.into();
                if batch {
                    api.detail = format!(
                        "messages[{i}]: {} ({} before it were published)",
                        api.detail,
                        out.len()
                    );
                }
                return Err(api);
            }
        }
    }
    Ok(axum::Json(PublishResponse { results: out }))
}

/// How to consume.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConsumeQuery {
    /// The durable subscription (created at `start` if new).
    pub(crate) subscription: String,
    /// At most this many messages (1-1,000, default 10).
    #[serde(default)]
    pub(crate) max: Option<usize>,
    /// Wait up to this many milliseconds for a first message (default 0: answer at once).
    #[serde(default)]
    pub(crate) wait_ms: Option<u64>,
    /// For a new subscription: `new` (default) or `beginning`.
    #[serde(default)]
    pub(crate) start: Option<String>,
    /// `tlv`: add a decoded view of Torq TLV payloads.
    #[serde(default)]
    pub(crate) decode: Option<String>,
    /// For a new subscription: a content filter (docs/FILTERS.md).
    #[serde(default)]
    pub(crate) filter: Option<String>,
}

/// A delivered message.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct ConsumedMessage {
    /// Its id: acknowledge with `POST /messages/{id}/ack`.
    pub(crate) id: String,
    /// Its topic.
    pub(crate) topic: String,
    /// Its sequence.
    pub(crate) sequence: u64,
    /// 1 for the first delivery.
    pub(crate) attempt: u32,
    /// When it was published.
    pub(crate) published_at: String,
    /// Application headers.
    pub(crate) headers: BTreeMap<String, String>,
    /// Payload (JSON, or base64 with its content type).
    #[serde(flatten)]
    pub(crate) body: PayloadFields,
    /// With `decode=tlv`: the TLV message's header and records.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tlv: Option<serde_json::Value>,
}

/// Consumed messages.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct ConsumeResponse {
    /// The messages (empty when none arrived within `wait_ms`).
    pub(crate) messages: Vec<ConsumedMessage>,
}

fn consumed(message: Delivered, decode_tlv: bool) -> ConsumedMessage {
    let (headers, content_type) = show_headers(message.headers.iter().map(|(k, v)| (k.as_str(), &v[..])));
    let tlv = decode_tlv.then(|| crate::routes::topics::tlv_view(&message.payload));
    ConsumedMessage {
        id: uuid::Uuid::from_bytes(message.id).to_string(),
        topic: message.topic,
        sequence: message.sequence,
        attempt: message.attempt,
        published_at: rfc3339(message.publish_ns),
        headers,
        body: PayloadFields::show(&message.payload, content_type.as_deref()),
        tlv,
    }
}

/// Consume from a durable subscription (long poll).
///
/// Each message stays in flight until acknowledged (or its ack deadline passes). The pull
/// consumer behind it is shared by every HTTP client of the subscription.
#[utoipa::path(
    get, path = "/api/v1/messages/consume/{topic}", tag = "messages",
    params(("topic" = String, Path, description = "A stored topic"), ConsumeQuery),
    responses(
        (status = 200, description = "Messages (possibly none)", body = ConsumeResponse),
        (status = 400, description = "Bad query", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Role or topic not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown topic", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn consume(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    ApiPath(topic): ApiPath<String>,
    ApiQuery(query): ApiQuery<ConsumeQuery>,
) -> ApiResult<axum::Json<ConsumeResponse>> {
    principal.allow(&state.broker, Action::Consume(&topic))?;
    let mut errors = Vec::new();
    let max = query.max.unwrap_or(10);
    if !(1..=1000).contains(&max) {
        errors.push(FieldError {
            field: "max".into(),
            message: "must be 1-1,000".into(),
        });
    }
    let start = match query.start.as_deref() {
        None | Some("new") => StartPosition::New,
        Some("beginning") => StartPosition::Beginning,
        Some(other) => {
            errors.push(FieldError {
                field: "start".into(),
                message: format!("`{other}` is not `new` or `beginning`"),
            });
            StartPosition::New
        }
    };
    let decode = match query.decode.as_deref() {
        None => false,
        Some("tlv") => true,
        Some(other) => {
            errors.push(FieldError {
                field: "decode".into(),
                message: format!("`{other}` is not `tlv`"),
            });
            false
        }
    };
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    let Some(found) = state.broker.topic(&topic) else {
        return Err(ApiError::not_found(format!("no topic `{topic}`")));
    };
    if found.spec().storage != mycelium_broker::spec::StorageKind::Disk {
        return Err(ApiError::invalid(vec![FieldError {
            field: "topic".into(),
            message: format!(
                "`{topic}` is an at_most_once topic: consuming over HTTP needs a stored topic (at_least_once or exactly_once)"
            ),
        }]));
    }
    let options = SubscribeOptions {
        durable: Some(&query.subscription),
        start: Some(start),
        filter: query.filter.as_deref(),
        ..SubscribeOptions::default()
    };
    let consumer = state
        .consumers
        .get_or_create(&state.broker, &principal, &topic, &query.subscription, &options)
        .await?;
    let cap = state
        .config
        .request_timeout
        .saturating_sub(Duration::from_secs(1));
    let wait = Duration::from_millis(query.wait_ms.unwrap_or(0)).min(cap);
    let messages = state.consumers.consume(&consumer, max, wait).await;
    Ok(axum::Json(ConsumeResponse {
        messages: messages.into_iter().map(|m| consumed(m, decode)).collect(),
    }))
}

/// A stored message.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct StoredView {
    /// Its id.
    pub(crate) id: String,
    /// Its topic.
    pub(crate) topic: String,
    /// Its sequence.
    pub(crate) sequence: u64,
    /// When it was published.
    pub(crate) published_at: String,
    /// 0-9.
    pub(crate) priority: u8,
    /// When it expires, if it has a TTL.
    pub(crate) expires_at: Option<String>,
    /// Not delivered before this time, if delayed.
    pub(crate) not_before: Option<String>,
    /// Its idempotency key, if any.
    pub(crate) idempotency_key: Option<String>,
    /// Application headers.
    pub(crate) headers: BTreeMap<String, String>,
    /// Payload.
    #[serde(flatten)]
    pub(crate) body: PayloadFields,
}

/// Get a stored message by id.
#[utoipa::path(
    get, path = "/api/v1/messages/{id}", tag = "messages",
    params(("id" = String, Path, description = "Message id (UUID)")),
    responses(
        (status = 200, description = "The message", body = StoredView),
        (status = 400, description = "Not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Role or topic not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such message", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn get_message(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<axum::Json<StoredView>> {
    let id = parse_id(&id)?;
    let broker = std::sync::Arc::clone(&state.broker);
    let found = mycelium_broker::blocking(move || broker.find_message(&id)).await;
    // A message the caller may not read gets the answer of one that does not exist.
    let missing = || ApiError::not_found("no stored message with this id that you may read");
    let (topic, message) = found.ok_or_else(missing)?;
    principal
        .allow(&state.broker, Action::Consume(&topic))
        .map_err(|_| missing())?;
    let (headers, content_type) = show_headers(HeaderIter::new(&message.headers).map_while(Result::ok));
    Ok(axum::Json(StoredView {
        id: uuid::Uuid::from_bytes(message.id).to_string(),
        topic,
        sequence: message.sequence,
        published_at: rfc3339(message.publish_ns),
        priority: message.priority,
        expires_at: message.expires_at_ns.map(rfc3339),
        not_before: message.not_before_ns.map(rfc3339),
        idempotency_key: message
            .idempotency_key
            .map(|k| String::from_utf8_lossy(&k).into_owned()),
        headers,
        body: PayloadFields::show(&message.payload, content_type.as_deref()),
    }))
}

/// A NACK or TERM.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NackRequest {
    /// Redeliver after this many milliseconds (default: the subscription's backoff). NACK only.
    #[serde(default)]
    pub(crate) delay_ms: Option<u32>,
    /// Why it failed; kept with the message and shown in the dead-letter queue.
    #[serde(default)]
    pub(crate) error: Option<String>,
}

async fn verdict(
    state: &SharedState,
    principal: &Principal,
    id: &str,
    verdict: HttpVerdict,
) -> ApiResult<StatusCode> {
    principal.require(mycelium_broker::Role::Consumer)?;
    let id = parse_id(id)?;
    state
        .consumers
        .verdict(&state.broker, principal, &id, verdict)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Acknowledge a consumed message: done, never redelivered (answered once durable).
#[utoipa::path(
    post, path = "/api/v1/messages/{id}/ack", tag = "messages",
    params(("id" = String, Path, description = "Message id from consume")),
    responses(
        (status = 204, description = "Acknowledged and durable"),
        (status = 400, description = "Not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Role not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not delivered over HTTP", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "No longer in flight", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn ack(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    verdict(&state, &principal, &id, HttpVerdict::Ack).await
}

/// Refuse a consumed message: redelivered after `delay_ms` or the backoff.
#[utoipa::path(
    post, path = "/api/v1/messages/{id}/nack", tag = "messages",
    params(("id" = String, Path, description = "Message id from consume")),
    request_body(content = Option<NackRequest>, description = "Optional delay and error text"),
    responses(
        (status = 204, description = "Will be redelivered"),
        (status = 400, description = "Not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Role not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not delivered over HTTP", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "No longer in flight", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn nack(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let request: NackRequest = optional_json(&body)?;
    let v = HttpVerdict::Nack {
        delay: request.delay_ms.map(|ms| Duration::from_millis(ms.into())),
        error: request.error.unwrap_or_default(),
    };
    verdict(&state, &principal, &id, v).await
}

/// Give up on a consumed message: dead-lettered now.
#[utoipa::path(
    post, path = "/api/v1/messages/{id}/term", tag = "messages",
    params(("id" = String, Path, description = "Message id from consume")),
    request_body(content = Option<NackRequest>, description = "Optional error text"),
    responses(
        (status = 204, description = "Dead-lettered"),
        (status = 400, description = "Not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Role not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not delivered over HTTP", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "No longer in flight", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn term(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let request: NackRequest = optional_json(&body)?;
    let v = HttpVerdict::Term {
        error: request.error.unwrap_or_default(),
    };
    verdict(&state, &principal, &id, v).await
}

/// Still working on a consumed message: its ack deadline starts again.
#[utoipa::path(
    post, path = "/api/v1/messages/{id}/in-progress", tag = "messages",
    params(("id" = String, Path, description = "Message id from consume")),
    responses(
        (status = 204, description = "Deadline extended"),
        (status = 400, description = "Not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Role not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not delivered over HTTP", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "No longer in flight", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn in_progress(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    verdict(&state, &principal, &id, HttpVerdict::InProgress).await
}

/// An optional JSON body: empty is the default.
fn optional_json<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> ApiResult<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            ApiError::new(
                crate::error::Kind::BadRequest,
                format!("the body is not valid JSON: {e}"),
            )
        } else {
            ApiError::invalid(vec![FieldError {
                field: "body".into(),
                message: e.to_string(),
            }])
        }
    })
}
