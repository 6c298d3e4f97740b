//! Who is calling over HTTP: the bearer token of each request, checked by the shared
//! [`mycelium_auth::Authenticator`] (a service user's token or a JWT), and what a refusal looks
//! like (401 for a credential, 403 for a permission, counted and audited by the broker). What a
//! principal may do is decided by the broker's one check, [`mycelium_broker::Broker::authorize`].

use axum::http::HeaderMap;
use mycelium_auth::{AuthError, Authenticator};
use mycelium_broker::{Action, Broker, Denied, DenyReason, Door, Principal};

use crate::error::{ApiError, Kind};

impl From<Denied> for ApiError {
    fn from(denied: Denied) -> Self {
        ApiError::new(Kind::Forbidden, denied.message)
    }
}

/// The principal of the request's `Authorization: Bearer` token (or, without one, of the
/// connection's verified client certificate); a refusal is counted.
///
/// # Errors
/// 401: missing, malformed, unknown, badly signed, expired or not yet valid token; 403: a token
/// that names no known role.
pub(crate) fn principal(
    broker: &Broker,
    authenticator: &Authenticator,
    headers: &HeaderMap,
    common_name: Option<&str>,
) -> Result<Principal, ApiError> {
    if authenticator.mode() == mycelium_auth::Mode::None {
        return Ok(Principal::anonymous_admin());
    }
    // Without a bearer token, a verified client certificate (mutual TLS) may name the caller.
    let result = match (
        headers.contains_key(axum::http::header::AUTHORIZATION),
        common_name,
    ) {
        (false, Some(name)) => authenticator.connection(
            b"",
            &mycelium_auth::Peer {
                uid: None,
                common_name: Some(name),
            },
        ),
        _ => bearer(headers).and_then(|token| authenticator.token(token)),
    };
    result.map_err(|error| {
        let denied = Denied::new(DenyReason::Unauthenticated, error.to_string());
        broker.refused(Door::Http, None, "authenticate", "", &denied);
        match error {
            AuthError::NoRole(text) => ApiError::new(Kind::Forbidden, text),
            AuthError::Missing(text) | AuthError::Invalid(text) => ApiError::new(Kind::Unauthorized, text),
        }
    })
}

/// The token of the `Authorization: Bearer` header.
fn bearer(headers: &HeaderMap) -> Result<&str, AuthError> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| AuthError::Missing("no token: send `Authorization: Bearer <token>`".into()))?;
    value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .ok_or_else(|| AuthError::Invalid("the Authorization header is not `Bearer <token>`".into()))
}

/// The broker's check for an HTTP caller.
pub(crate) trait Allow {
    /// Refuses with 403 unless the broker allows `action`.
    fn allow(&self, broker: &Broker, action: Action<'_>) -> Result<(), ApiError>;

    /// Refuses with 403 unless it is an admin; the admin action is audited.
    fn admin(&self, broker: &Broker, what: &str, target: &str) -> Result<(), ApiError> {
        self.allow(broker, Action::Admin { what, target })
    }
}

impl Allow for Principal {
    fn allow(&self, broker: &Broker, action: Action<'_>) -> Result<(), ApiError> {
        broker.authorize(Door::Http, self, action).map_err(ApiError::from)
    }
}
