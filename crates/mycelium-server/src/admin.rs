//! ADMIN requests over the native protocol: a JSON body naming an operation
//! ([`mycelium_protocol::admin::AdminRequest`]), answered with ADMIN_OK (the operation's answer
//! type, as JSON) or ERROR. The operations call the broker core, the same functions the HTTP API
//! calls; the broker's records are mapped onto the protocol's types here, at the edge.

use std::sync::Arc;

use mycelium_broker::dlq::{DlqEntry, DlqError, DlqFilter, DlqPage, ReplayReport, payload_text};
use mycelium_broker::{Action, Broker, ConnectionInfo, blocking};
use mycelium_protocol::ErrorCode;
use mycelium_protocol::admin::{self, AdminRequest};

/// Runs the request in `body`; the answer's JSON, or an error code and text.
/// Admin only: the operation is checked (and audited) before anything is read.
pub(crate) async fn handle(
    broker: Arc<Broker>,
    connection: &ConnectionInfo,
    body: Vec<u8>,
) -> Result<Vec<u8>, (ErrorCode, String)> {
    let request: AdminRequest = serde_json::from_slice(&body)
        .map_err(|e| (ErrorCode::InvalidRequest, format!("ADMIN request: {e}")))?;
    let (what, target) = match &request {
        AdminRequest::DlqList { topic, .. } => ("dlq.list", topic.as_str()),
        AdminRequest::DlqGet { topic, .. } => ("dlq.get", topic.as_str()),
        AdminRequest::DlqReplay { topic, .. } => ("dlq.replay", topic.as_str()),
        AdminRequest::DlqPurge { topic, .. } => ("dlq.purge", topic.as_str()),
        AdminRequest::Health => ("health", ""),
        AdminRequest::Reload { .. } => ("config.reload", ""),
        AdminRequest::Config => ("config.show", ""),
    };
    broker
        .authorize_connection(connection, Action::Admin { what, target })
        .map_err(|denied| (ErrorCode::NotPermitted, denied.to_string()))?;
    let json = match request {
        AdminRequest::DlqList {
            topic,
            filter,
            after,
            limit,
        } => {
            let filter = filter_of(filter);
            let page = blocking(move || broker.dlq_list(&topic, &filter, after, limit))
                .await
                .map_err(dlq_error)?;
            serde_json::to_vec(&page_view(page))
        }
        AdminRequest::DlqGet { topic, sequence } => serde_json::to_vec(&dead_letter_view(
            blocking(move || broker.dlq_get(&topic, sequence))
                .await
                .map_err(dlq_error)?,
        )),
        AdminRequest::DlqReplay {
            topic,
            filter,
            target,
            rate,
        } => {
            let report = broker
                .dlq_replay(&topic, &filter_of(filter), target.as_deref(), rate)
                .await
                .map_err(dlq_error)?;
            serde_json::to_vec(&replay_view(report))
        }
        AdminRequest::DlqPurge { topic, filter } => {
            let filter = filter_of(filter);
            let purged = blocking(move || broker.dlq_purge(&topic, &filter))
                .await
                .map_err(dlq_error)?;
            serde_json::to_vec(&admin::PurgeReport { purged })
        }
        AdminRequest::Reload { force } => {
            let control = control(&broker)?;
            let report = control
                .reload(force)
                .await
                .map_err(|failure| (ErrorCode::InvalidRequest, failure.to_string()))?;
            serde_json::to_vec(&report)
        }
        AdminRequest::Config => serde_json::to_vec(&control(&broker)?.effective()),
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

/// The server's reload hook (every served broker has one; in-process brokers do not).
fn control(broker: &Broker) -> Result<Arc<dyn mycelium_broker::Control>, (ErrorCode, String)> {
    broker.control().cloned().ok_or_else(|| {
        (
            ErrorCode::NotFound,
            "this broker has no configuration to reload".into(),
        )
    })
}

fn filter_of(filter: admin::DlqFilter) -> DlqFilter {
    DlqFilter {
        sequences: filter.sequences,
        reason: filter.reason,
        subscription: filter.subscription,
        since_ns: filter.since_ns,
        until_ns: filter.until_ns,
    }
}

fn dead_letter_view(entry: DlqEntry) -> admin::DeadLetter {
    admin::DeadLetter {
        sequence: entry.sequence,
        id: entry.id,
        topic: entry.topic,
        subscription: entry.subscription,
        original_sequence: entry.original_sequence,
        original_id: entry.original_id,
        attempts: entry.attempts,
        reason: entry.reason,
        error: entry.error,
        dead_lettered_ns: entry.dead_lettered_ns,
        published_ns: entry.published_ns,
        history: serde_json::from_value(entry.history).unwrap_or_default(),
        headers: entry.headers,
        payload: payload_text(&entry.payload),
    }
}

fn page_view(page: DlqPage) -> admin::DlqPage {
    admin::DlqPage {
        dlq: page.dlq,
        entries: page.entries.into_iter().map(dead_letter_view).collect(),
        next_after: page.next_after,
        depth: page.depth,
    }
}

fn replay_view(report: ReplayReport) -> admin::ReplayReport {
    admin::ReplayReport {
        replayed: report.replayed,
        duplicates: report.duplicates,
        failed: report.failed,
    }
}

/// The wire code of a DLQ error (the HTTP door maps the same errors to statuses).
fn dlq_error(error: DlqError) -> (ErrorCode, String) {
    (error.code(), error.to_string())
}
