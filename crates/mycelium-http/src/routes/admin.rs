//! The running configuration: reload it from its file, and show it (admin only). The server does
//! the work (it owns the file, the listeners and the keys) through the broker's `Control` hook;
//! the native door's `mycelium reload` reaches the same.

use axum::Extension;
use axum::extract::State;
use mycelium_broker::{Principal, ReloadFailure};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::SharedState;
use crate::auth::Allow;
use crate::error::{ApiError, ApiResult, FieldError, Kind};
use crate::extract::ApiQuery;

/// What a reload did.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct ReloadReport {
    /// The configuration's version after the reload (1 at start-up).
    version: u64,
    /// The file read.
    file: String,
    /// Each change applied (`key: before -> after`).
    applied: Vec<String>,
    /// Changes that take effect only after a restart (still pending).
    restart_needed: Vec<String>,
    /// Changes refused, with the reason; the rest applied.
    refused: Vec<String>,
}

/// The configuration in effect.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct ConfigView {
    /// Its version (1 at start-up; each reload that applied something adds 1).
    version: u64,
    /// The file it was read from (absent: the embedded defaults).
    file: Option<String>,
    /// When it was last applied, ns since the Unix epoch.
    applied_ns: u64,
    /// Changes in the file that wait for a restart.
    restart_needed: Vec<String>,
    /// The configuration, secrets redacted, as the TOML file's structure.
    #[schema(value_type = Object)]
    config: serde_json::Value,
}

/// `POST /admin/reload` options.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReloadQuery {
    /// Remove topics the file no longer names even when they hold messages or subscriptions.
    #[serde(default)]
    force: Option<bool>,
}

fn control(state: &SharedState) -> ApiResult<std::sync::Arc<dyn mycelium_broker::Control>> {
    state
        .broker
        .control()
        .cloned()
        .ok_or_else(|| ApiError::not_found("this broker has no configuration to reload"))
}

/// Read the configuration file again and apply what may change live (admin). An invalid file
/// changes nothing: 422 names each key and reason.
#[utoipa::path(
    post, path = "/api/v1/admin/reload", tag = "admin", operation_id = "reload_config",
    params(ReloadQuery),
    responses(
        (status = 200, description = "Reloaded", body = ReloadReport),
        (status = 401, description = "No or bad token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No configuration to reload", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 400, description = "Bad request", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "The file is invalid; nothing changed", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = crate::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn reload(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    ApiQuery(query): ApiQuery<ReloadQuery>,
) -> ApiResult<axum::Json<ReloadReport>> {
    principal.admin(&state.broker, "config.reload", "")?;
    let report = control(&state)?
        .reload(query.force.unwrap_or(false))
        .await
        .map_err(invalid)?;
    Ok(axum::Json(ReloadReport {
        version: report.version,
        file: report.file,
        applied: report.applied,
        restart_needed: report.restart_needed,
        refused: report.refused,
    }))
}

fn invalid(failure: ReloadFailure) -> ApiError {
    let errors: Vec<FieldError> = failure
        .problems
        .iter()
        .map(|(key, reason)| FieldError {
            field: if key.is_empty() {
                failure.file.clone()
            } else {
                key.clone()
            },
            message: reason.clone(),
        })
        .collect();
    let mut error = ApiError::new(
        Kind::Invalid,
        format!("{failure}; the running configuration is unchanged"),
    );
    error.errors = errors;
    error
}

/// The configuration in effect, secrets redacted, with its version and what waits for a
/// restart (admin).
#[utoipa::path(
    get, path = "/api/v1/admin/config", tag = "admin", operation_id = "get_config",
    responses(
        (status = 200, description = "The configuration in effect", body = ConfigView),
        (status = 401, description = "No or bad token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No configuration", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = crate::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn config(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
) -> ApiResult<axum::Json<ConfigView>> {
    principal.admin(&state.broker, "config.show", "")?;
    let view = control(&state)?.effective();
    Ok(axum::Json(ConfigView {
        version: view.version,
        file: view.file,
        applied_ns: view.applied_ns,
        restart_needed: view.restart_needed,
        config: view.config,
    }))
}
