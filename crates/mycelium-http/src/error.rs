//! Errors as RFC 9457 `application/problem+json`, one stable `type` per kind. A 5xx never carries
//! internals: the detail is logged with the request id, and the response carries only the id.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// The kinds of error, each with its status and stable `type` URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Malformed request (bad JSON syntax, bad query).
    BadRequest,
    /// No, invalid or expired token.
    Unauthorized,
    /// The token's role or topics do not allow this.
    Forbidden,
    /// Unknown topic, message, subscription or dead letter.
    NotFound,
    /// The request conflicts with the current state.
    Conflict,
    /// The body is larger than allowed.
    TooLarge,
    /// The body is not JSON.
    UnsupportedMediaType,
    /// Well-formed but invalid (every bad field is listed).
    Invalid,
    /// Over a rate limit.
    RateLimited,
    /// The broker could not store it.
    Storage,
    /// Not ready (storage unwritable).
    Unavailable,
    /// A fault of ours.
    Internal,
}

impl Kind {
    fn status(self) -> StatusCode {
        match self {
            Kind::BadRequest => StatusCode::BAD_REQUEST,
            Kind::Unauthorized => StatusCode::UNAUTHORIZED,
            Kind::Forbidden => StatusCode::FORBIDDEN,
            Kind::NotFound => StatusCode::NOT_FOUND,
            Kind::Conflict => StatusCode::CONFLICT,
            Kind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Kind::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
            Kind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Kind::Storage | Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable problem type.
    pub fn type_uri(self) -> &'static str {
        match self {
            Kind::BadRequest => "/problems/bad-request",
            Kind::Unauthorized => "/problems/unauthorized",
            Kind::Forbidden => "/problems/forbidden",
            Kind::NotFound => "/problems/not-found",
            Kind::Conflict => "/problems/conflict",
            Kind::TooLarge => "/problems/too-large",
            Kind::UnsupportedMediaType => "/problems/unsupported-media-type",
            Kind::Invalid => "/problems/invalid",
            Kind::RateLimited => "/problems/rate-limited",
            Kind::Storage => "/problems/storage",
            Kind::Unavailable => "/problems/unavailable",
            Kind::Internal => "/problems/internal",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Kind::BadRequest => "Bad request",
            Kind::Unauthorized => "Unauthorized",
            Kind::Forbidden => "Forbidden",
            Kind::NotFound => "Not found",
            Kind::Conflict => "Conflict",
            Kind::TooLarge => "Request body too large",
            Kind::UnsupportedMediaType => "Unsupported media type",
            Kind::Invalid => "Invalid request",
            Kind::RateLimited => "Too many requests",
            Kind::Storage => "Not stored",
            Kind::Unavailable => "Unavailable",
            Kind::Internal => "Internal error",
        }
    }
}

/// One invalid field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// The field, as a path (`messages[2].topic`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// An RFC 9457 problem document.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// Stable URI of the kind of problem.
    #[serde(rename = "type")]
    pub type_uri: String,
    /// Short summary of the kind.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong with this request.
    pub detail: String,
    /// Every invalid field (422).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// The request id (also in the `x-request-id` header); the broker's log carries it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// An error a handler returns.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// Its kind.
    pub kind: Kind,
    /// The detail shown to the client (for 5xx: shown generically, logged in full).
    pub detail: String,
    /// Invalid fields.
    pub errors: Vec<FieldError>,
    /// Seconds to wait (429).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error of `kind`.
    pub fn new(kind: Kind, detail: impl Into<String>) -> ApiError {
        ApiError {
            kind,
            detail: detail.into(),
            errors: Vec::new(),
            retry_after: None,
        }
    }

    /// A 422 listing `errors`.
    pub fn invalid(errors: Vec<FieldError>) -> ApiError {
        let detail = match errors.len() {
            1 => format!("{}: {}", errors[0].field, errors[0].message),
            n => format!("{n} fields are invalid"),
        };
        ApiError {
            kind: Kind::Invalid,
            detail,
            errors,
            retry_after: None,
        }
    }

    /// A 404.
    pub fn not_found(detail: impl Into<String>) -> ApiError {
        ApiError::new(Kind::NotFound, detail)
    }

    /// A 500 whose detail is only logged.
    pub fn internal(detail: impl Into<String>) -> ApiError {
        ApiError::new(Kind::Internal, detail)
    }
}

impl From<mycelium_broker::PublishError> for ApiError {
    fn from(error: mycelium_broker::PublishError) -> Self {
        use mycelium_broker::PublishError as E;
        let kind = match &error {
            E::UnknownTopic(_) => Kind::NotFound,
            E::MessageTooLarge { .. } => Kind::TooLarge,
            E::StorageUnavailable(_) => Kind::Storage,
            E::Denied(_) => Kind::Forbidden,
            E::Limit(_) => Kind::Conflict,
            _ => Kind::Invalid,
        };
        ApiError::new(kind, error.to_string())
    }
}

impl From<mycelium_broker::dlq::DlqError> for ApiError {
    fn from(error: mycelium_broker::dlq::DlqError) -> Self {
        use mycelium_protocol::ErrorCode;
        let kind = match error.code() {
            ErrorCode::NotFound => Kind::NotFound,
            ErrorCode::InvalidRequest => Kind::Invalid,
            _ => Kind::Storage,
        };
        ApiError::new(kind, error.to_string())
    }
}

tokio::task_local! {
    /// The id of the request being served (set by the request-id middleware).
    pub static REQUEST_ID: String;
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.kind.status();
        let request_id = REQUEST_ID.try_with(Clone::clone).ok();
        let detail = if status.is_server_error()
            && self.kind != Kind::Storage
            && self.kind != Kind::Unavailable
        {
            tracing::error!(request_id = request_id.as_deref().unwrap_or("-"), detail = %self.detail, "request failed");
            "the broker failed to serve this request; its log has the details under this request id"
                .to_owned()
        } else {
            self.detail
        };
        let problem = Problem {
            type_uri: self.kind.type_uri().to_owned(),
            title: self.kind.title().to_owned(),
            status: status.as_u16(),
            detail,
            errors: self.errors,
            request_id,
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        if self.kind == Kind::Unauthorized {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;
