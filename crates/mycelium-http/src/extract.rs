//! Extractors whose rejections are problem documents: JSON bodies (400 syntax, 415 content type,
//! 413 size, 422 shape with the field's path), query strings and path segments.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, FieldError, Kind};

/// A JSON body.
#[derive(Debug)]
pub(crate) struct ApiJson<T>(pub(crate) T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !json_content_type(request.headers()) {
            return Err(unsupported_media_type());
        }
        let bytes = match axum::body::Bytes::from_request(request, state).await {
            Ok(bytes) => bytes,
            Err(rejection) => return Err(bytes_rejection(&rejection)),
        };
        // Read without tracking the path of each field (axum's `Json` wraps the reader in
        // serde_path_to_error, which records every key it passes: a sixth of the time of a
        // 1,000-message batch); only a body that fails is read again to name where.
        match serde_json::from_slice::<T>(&bytes) {
            Ok(value) => Ok(ApiJson(value)),
            Err(_) => match axum::Json::<T>::from_bytes(&bytes) {
                Ok(axum::Json(value)) => Ok(ApiJson(value)),
                Err(rejection) => Err(json_rejection(&rejection)),
            },
        }
    }
}

/// `application/json` or `application/<anything>+json`, parameters aside (as axum's `Json`
/// accepts).
fn json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    let subtype = subtype.as_bytes();
    kind.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case(b"json")
            || subtype.len() > 5 && subtype[subtype.len() - 5..].eq_ignore_ascii_case(b"+json"))
}

fn unsupported_media_type() -> ApiError {
    ApiError::new(
        Kind::UnsupportedMediaType,
        "send the body as JSON with `Content-Type: application/json`",
    )
}

fn bytes_rejection(rejection: &axum::extract::rejection::BytesRejection) -> ApiError {
    if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            Kind::TooLarge,
            "the request body is larger than http.max_body_size",
        )
    } else {
        ApiError::new(Kind::BadRequest, format!("reading the body failed: {rejection}"))
    }
}

fn json_rejection(rejection: &JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => unsupported_media_type(),
        JsonRejection::JsonSyntaxError(e) => ApiError::new(
            Kind::BadRequest,
            format!("the body is not valid JSON: {}", source_text(e)),
        ),
        JsonRejection::JsonDataError(e) => {
            let text = source_text(e);
            // serde_path_to_error's text: "<path>: <message>"
            let (field, message) = match text.split_once(": ") {
                Some((path, message)) if !path.contains(' ') => (path.to_owned(), message.to_owned()),
                _ => ("body".to_owned(), text.clone()),
            };
            ApiError::invalid(vec![FieldError { field, message }])
        }
        JsonRejection::BytesRejection(e) => bytes_rejection(e),
        other => ApiError::new(Kind::BadRequest, other.body_text()),
    }
}

fn source_text(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text = inner.to_string();
        source = inner.source();
    }
    text
}

/// A query string.
#[derive(Debug)]
pub(crate) struct ApiQuery<T>(pub(crate) T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(ApiQuery(value)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => {
                Err(ApiError::invalid(vec![FieldError {
                    field: "query".into(),
                    message: source_text(&e),
                }]))
            }
            Err(other) => Err(ApiError::new(Kind::BadRequest, other.body_text())),
        }
    }
}

/// Path segments.
#[derive(Debug)]
pub(crate) struct ApiPath<T>(pub(crate) T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(ApiPath(value)),
            Err(rejection @ PathRejection::FailedToDeserializePathParams(_)) => {
                Err(ApiError::new(Kind::BadRequest, rejection.body_text()))
            }
            Err(other) => Err(ApiError::new(Kind::BadRequest, other.body_text())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::json_content_type;
    use axum::http::{HeaderMap, HeaderValue, header::CONTENT_TYPE};

    #[test]
    fn json_content_types_are_told_from_others() {
        let is_json = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE, HeaderValue::from_str(value).unwrap());
            json_content_type(&headers)
        };
        for yes in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/problem+json",
            " application/vnd.api+JSON ;q=1",
        ] {
            assert!(is_json(yes), "{yes}");
        }
        for no in [
            "text/plain",
            "application/jsonx",
            "application/+json",
            "json",
            "text/json",
            "",
        ] {
            assert!(!is_json(no), "{no}");
        }
        assert!(!json_content_type(&HeaderMap::new()));
    }
}
