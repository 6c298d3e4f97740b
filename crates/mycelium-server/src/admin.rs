//! ADMIN requests over the native protocol: a JSON body naming an operation, answered with
//! ADMIN_OK (JSON) or ERROR. The operations call the broker core, the same functions the HTTP API
//! calls.

use std::sync::Arc;

use mycelium_broker::Broker;
use mycelium_broker::dlq::{DlqError, DlqFilter};
use mycelium_protocol::ErrorCode;
use serde::Deserialize;

/// One administrative operation.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
#[allow(clippy::enum_variant_names)] // the DLQ operations are the first of the admin set
enum AdminRequest {
    /// A page of a topic's dead letters.
    DlqList {
        topic: String,
        #[serde(default)]
        filter: DlqFilter,
        #[serde(default)]
        after: u64,
        #[serde(default = "default_limit")]
        limit: usize,
    },
    /// One dead letter by DLQ sequence.
    DlqGet { topic: String, sequence: u64 },
    /// Publish dead letters again.
    DlqReplay {
        topic: String,
        #[serde(default)]
        filter: DlqFilter,
        #[serde(default)]
        target: Option<String>,
        #[serde(default)]
        rate: Option<u32>,
    },
    /// Remove dead letters.
    DlqPurge {
        topic: String,
        #[serde(default)]
        filter: DlqFilter,
    },
    /// The node record and its last health report.
    Health,
}

fn default_limit() -> usize {
    100
}

/// Runs the request in `body`; the answer's JSON, or an error code and text.
pub(crate) async fn handle(broker: Arc<Broker>, body: Vec<u8>) -> Result<Vec<u8>, (ErrorCode, String)> {
    let request: AdminRequest = serde_json::from_slice(&body)
        .map_err(|e| (ErrorCode::InvalidRequest, format!("ADMIN request: {e}")))?;
    let json = match request {
        AdminRequest::DlqList {
            topic,
            filter,
            after,
            limit,
        } => serde_json::to_vec(
            &broker
                .dlq_list(&topic, &filter, after, limit)
                .map_err(dlq_error)?,
        ),
        AdminRequest::DlqGet { topic, sequence } => {
            serde_json::to_vec(&broker.dlq_get(&topic, sequence).map_err(dlq_error)?)
        }
        AdminRequest::DlqReplay {
            topic,
            filter,
            target,
            rate,
        } => serde_json::to_vec(
            &broker
                .dlq_replay(&topic, &filter, target.as_deref(), rate)
                .await
                .map_err(dlq_error)?,
        ),
        AdminRequest::DlqPurge { topic, filter } => serde_json::to_vec(&serde_json::json!({
            "purged": broker.dlq_purge(&topic, &filter).map_err(dlq_error)?
        })),
        AdminRequest::Health => match broker.health() {
            Some(health) => serde_json::to_vec(&health.node()),
            None => {
                return Err((
                    ErrorCode::NotFound,
                    "no health monitor runs in this broker".into(),
                ));
            }
        },
    };
    json.map_err(|e| (ErrorCode::Internal, format!("encoding the answer: {e}")))
}

fn dlq_error(error: DlqError) -> (ErrorCode, String) {
    let code = match error {
        DlqError::Unknown(_) | DlqError::NotFound { .. } => ErrorCode::NotFound,
        DlqError::Invalid(_) => ErrorCode::InvalidRequest,
        _ => ErrorCode::StorageFailed,
    };
    (code, error.to_string())
}
