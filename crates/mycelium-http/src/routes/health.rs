//! Liveness and readiness.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use crate::SharedState;

/// A probe's answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct Health {
    /// `live`, `ready` or `unready`.
    status: &'static str,
    /// Each check and whether it passed, with the reason when not.
    checks: Vec<Check>,
}

/// One readiness check.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct Check {
    name: &'static str,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

/// The process answers.
#[utoipa::path(
    get, path = "/api/v1/health/live", tag = "health",
    responses((status = 200, description = "Live", body = Health))
)]
pub(crate) async fn live() -> axum::Json<Health> {
    axum::Json(Health {
        status: "live",
        checks: Vec::new(),
    })
}

/// Ready to serve: the listeners are up and the data directory is writable.
#[utoipa::path(
    get, path = "/api/v1/health/ready", tag = "health",
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "Not ready", body = Health),
    )
)]
pub(crate) async fn ready(State(state): State<SharedState>) -> (StatusCode, axum::Json<Health>) {
    let (ok, checks) = readiness(&state).await;
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(Health {
            status: if ok { "ready" } else { "unready" },
            checks,
        }),
    )
}

/// Whether the broker is ready now (for the `mycelium_ready` metric).
/// How long a storage probe's result stands for every readiness request.
const STORAGE_PROBE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

pub(crate) async fn is_ready(state: &SharedState) -> bool {
    readiness(state).await.0
}

async fn readiness(state: &SharedState) -> (bool, Vec<Check>) {
    let listeners = state.config.native_listeners_up.load(Ordering::Acquire);
    let uses_storage = state.broker.storage().is_some();
    let storage = if uses_storage {
        // One probe write per interval, whatever the number of probes: concurrent requests wait
        // for the one in progress and read its result.
        let mut cached = state.storage_probe.lock().await;
        match &*cached {
            Some((at, result)) if at.elapsed() < STORAGE_PROBE_EVERY => result.clone(),
            _ => {
                let broker = std::sync::Arc::clone(&state.broker);
                let data_dir = broker.config().durable.data_dir.clone();
                let result = mycelium_broker::blocking(move || {
                    broker
                        .probe_data_dir()
                        .map_err(|e| format!("{}: {e}", data_dir.display()))
                })
                .await;
                *cached = Some((std::time::Instant::now(), result.clone()));
                result
            }
        }
    } else {
        Ok(())
    };
    let disk_full = state.broker.health().is_some_and(|h| h.disk_exhausted());
    let checks = vec![
        Check {
            name: "disk",
            ok: !disk_full,
            detail: disk_full.then(|| "free space is below [health] min_free_disk".to_owned()),
        },
        Check {
            name: "listeners",
            ok: listeners,
            detail: (!listeners).then(|| "the native listeners are not up".to_owned()),
        },
        Check {
            name: "storage",
            ok: storage.is_ok(),
            detail: storage.err(),
        },
    ];
    (checks.iter().all(|c| c.ok), checks)
}

/// The node: id, version, uptime, listeners, heartbeat and the health monitor's last report.
#[utoipa::path(
    get, path = "/api/v1/nodes/self", tag = "health",
    responses(
        (status = 200, description = "This node", body = Object),
        (status = 401, description = "No or bad token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No health monitor", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = crate::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn node(
    State(state): State<SharedState>,
) -> Result<axum::Json<serde_json::Value>, crate::error::ApiError> {
    let health = state
        .broker
        .health()
        .ok_or_else(|| crate::error::ApiError::not_found("no health monitor runs in this broker"))?;
    serde_json::to_value(health.node())
        .map(axum::Json)
        .map_err(|e| crate::error::ApiError::internal(e.to_string()))
}
