//! The OpenAPI 3.1 document, generated from the handlers' annotations and the JSON types.

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::{FieldError, Problem};
use crate::routes::{admin, dlq, health, messages, subscriptions, topics};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Mycelium HTTP API",
        description = "The broker's HTTP door: publish, consume and acknowledge, topics, durable subscriptions, dead-letter queues, health, configuration reload. Errors are RFC 9457 problem documents.",
        version = env!("CARGO_PKG_VERSION"),
    ),
    paths(
        messages::publish, messages::consume, messages::get_message, messages::ack, messages::nack,
        messages::term, messages::in_progress,
        topics::list, topics::create, topics::get_topic, topics::update, topics::delete, topics::metrics,
        subscriptions::create, subscriptions::list, subscriptions::get_subscription, subscriptions::delete,
        dlq::list, dlq::get_entry, dlq::replay, dlq::purge,
        health::live, health::ready, health::node,
        admin::reload, admin::config,
    ),
    components(schemas(Problem, FieldError)),
    modifiers(&BearerAuth),
    tags(
        (name = "messages", description = "Publish, consume, acknowledge"),
        (name = "topics", description = "Topics and their metrics"),
        (name = "subscriptions", description = "Durable subscriptions"),
        (name = "dlq", description = "Dead-letter queues"),
        (name = "health", description = "Probes"),
        (name = "admin", description = "The running configuration: reload, show"),
    )
)]
pub(crate) struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.bearer_format = Some("JWT".into());
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// `GET /api/v1/openapi.json`.
pub(crate) async fn document() -> impl IntoResponse {
    let json = ApiDoc::openapi().to_json().unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], json)
}

/// The document as JSON text (for tools and tests).
pub fn json() -> String {
    ApiDoc::openapi().to_pretty_json().unwrap_or_default()
}
