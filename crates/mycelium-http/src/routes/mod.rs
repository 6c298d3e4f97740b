//! The endpoints, under `/api/v1`.

pub(crate) mod admin;
pub(crate) mod dlq;
pub(crate) mod health;
pub(crate) mod messages;
pub(crate) mod subscriptions;
pub(crate) mod topics;

use std::collections::BTreeMap;

use axum::Router;
use axum::routing::{get, post};
use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::SharedState;
use crate::error::{ApiError, FieldError, Kind};

/// The API's path prefix. Routes carry it in full rather than being nested under it: a nested
/// router strips the prefix from every request's URI (a new URI) and is cloned per request, a
/// few percent of a single-message publish.
pub(crate) const PREFIX: &str = "/api/v1";

/// `path` under [`PREFIX`].
fn at(path: &str) -> String {
    format!("{PREFIX}{path}")
}

/// Endpoints that need a principal.
pub(crate) fn api_routes() -> Router<SharedState> {
    Router::new()
        .route(&at("/messages/publish"), post(messages::publish))
        .route(&at("/messages/consume/{topic}"), get(messages::consume))
        .route(&at("/messages/{id}"), get(messages::get_message))
        .route(&at("/messages/{id}/ack"), post(messages::ack))
        .route(&at("/messages/{id}/nack"), post(messages::nack))
        .route(&at("/messages/{id}/term"), post(messages::term))
        .route(&at("/messages/{id}/in-progress"), post(messages::in_progress))
        .route(&at("/topics"), get(topics::list).post(topics::create))
        .route(
            &at("/topics/{name}"),
            get(topics::get_topic).put(topics::update).delete(topics::delete),
        )
        .route(&at("/topics/{name}/metrics"), get(topics::metrics))
        .route(
            &at("/subscriptions"),
            get(subscriptions::list).post(subscriptions::create),
        )
        .route(
            &at("/subscriptions/{topic}/{name}"),
            get(subscriptions::get_subscription).delete(subscriptions::delete),
        )
        .route(&at("/dlq/{topic}"), get(dlq::list))
        .route(&at("/dlq/{topic}/messages/{sequence}"), get(dlq::get_entry))
        .route(&at("/dlq/{topic}/replay"), post(dlq::replay))
        .route(&at("/dlq/{topic}/purge"), post(dlq::purge))
        .route(&at("/nodes/self"), get(health::node))
        .route(&at("/admin/reload"), post(admin::reload))
        .route(&at("/admin/config"), get(admin::config))
}

/// Endpoints open to everyone (probes, the API description).
pub(crate) fn open_routes() -> Router<SharedState> {
    Router::new()
        .route(&at("/health/live"), get(health::live))
        .route(&at("/health/ready"), get(health::ready))
        .route(&at("/openapi.json"), get(crate::openapi::document))
}

/// Unknown paths: a problem document, not an empty 404.
pub(crate) async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!(
        "no endpoint at {} (the API is under /api/v1; see /api/v1/openapi.json)",
        uri.path()
    ))
}

/// A payload as JSON carries it: a JSON value (content type `application/json`), or bytes as
/// base64 with their content type.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
pub(crate) struct PayloadFields {
    /// The payload as a JSON value: the text that was stored, as it was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<serde_json::Value>)]
    pub(crate) payload: Option<Box<serde_json::value::RawValue>>,
    /// The payload as base64 bytes (instead of `payload`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) payload_base64: Option<String>,
    /// Content type of a base64 payload (default `application/octet-stream`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) content_type: Option<String>,
}

/// The content type header key.
pub(crate) const CONTENT_TYPE: &str = "content-type";

/// Where a message sits in a publish request, for naming its fields in errors: one message
/// (`ttl_ms`) or the `i`-th of a batch (`messages[1].ttl_ms`). The name is built only for an
/// error, not for every message of a batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct At(pub(crate) Option<usize>);

impl At {
    /// The full name of `field`.
    pub(crate) fn field(self, field: &str) -> String {
        match self.0 {
            Some(i) => format!("messages[{i}].{field}"),
            None => field.to_owned(),
        }
    }
}

impl PayloadFields {
    /// The payload bytes and their content type, or the field errors.
    pub(crate) fn bytes(&self, at: At, errors: &mut Vec<FieldError>) -> (Bytes, &str) {
        match (&self.payload, &self.payload_base64) {
            (Some(_), Some(_)) => {
                errors.push(FieldError {
                    field: at.field("payload"),
                    message: "give `payload` or `payload_base64`, not both".into(),
                });
                (Bytes::new(), "")
            }
            (Some(value), None) => (
                Bytes::copy_from_slice(value.get().as_bytes()),
                self.content_type.as_deref().unwrap_or("application/json"),
            ),
            (None, Some(b64)) => match base64::engine::general_purpose::STANDARD.decode(b64) {
                Ok(bytes) => (
                    Bytes::from(bytes),
                    self.content_type.as_deref().unwrap_or("application/octet-stream"),
                ),
                Err(e) => {
                    errors.push(FieldError {
                        field: at.field("payload_base64"),
                        message: format!("not base64: {e}"),
                    });
                    (Bytes::new(), "")
                }
            },
            (None, None) => {
                errors.push(FieldError {
                    field: at.field("payload"),
                    message: "missing: give `payload` (JSON) or `payload_base64`".into(),
                });
                (Bytes::new(), "")
            }
        }
    }

    /// How a stored payload is shown: JSON when it is JSON, base64 otherwise.
    pub(crate) fn show(payload: &[u8], content_type: Option<&str>) -> PayloadFields {
        let json_type =
            content_type.is_none_or(|t| t.starts_with("application/json") || t.ends_with("+json"));
        // Valid JSON goes out as the text that was stored; checked, not rebuilt as a tree.
        let text = std::str::from_utf8(payload).ok().filter(|_| json_type);
        if let Some(Ok(value)) = text.map(|t| serde_json::value::RawValue::from_string(t.to_owned())) {
            return PayloadFields {
                payload: Some(value),
                payload_base64: None,
                content_type: Some(content_type.unwrap_or("application/json").to_owned()),
            };
        }
        PayloadFields {
            payload: None,
            payload_base64: Some(base64::engine::general_purpose::STANDARD.encode(payload)),
            content_type: Some(content_type.unwrap_or("application/octet-stream").to_owned()),
        }
    }
}

/// Headers as JSON shows them (values as UTF-8, lossy), without the content type.
pub(crate) fn show_headers<'a>(
    headers: impl Iterator<Item = (&'a str, &'a [u8])>,
) -> (BTreeMap<String, String>, Option<String>) {
    let mut out = BTreeMap::new();
    let mut content_type = None;
    for (key, value) in headers {
        let value = String::from_utf8_lossy(value).into_owned();
        if key.eq_ignore_ascii_case(CONTENT_TYPE) {
            content_type = Some(value);
        } else {
            out.insert(key.to_owned(), value);
        }
    }
    (out, content_type)
}

/// RFC 3339 text of ns since the Unix epoch.
pub(crate) fn rfc3339(ns: u64) -> String {
    humantime::format_rfc3339_nanos(std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns)).to_string()
}

/// A UUID path segment.
pub(crate) fn parse_id(text: &str) -> Result<[u8; 16], ApiError> {
    uuid::Uuid::parse_str(text).map(|u| *u.as_bytes()).map_err(|e| {
        ApiError::new(
            Kind::BadRequest,
            format!("`{text}` is not a message id (a UUID): {e}"),
        )
    })
}

/// A topic name from a path or body, checked; `field` names it in an error (built only then).
pub(crate) fn check_topic(name: &str, field: impl FnOnce() -> String, errors: &mut Vec<FieldError>) {
    if let Err(e) = mycelium_broker::name::validate_topic(name) {
        errors.push(FieldError {
            field: field(),
            message: e.to_string(),
        });
    }
}
