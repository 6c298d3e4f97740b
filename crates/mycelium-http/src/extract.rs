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
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection(&rejection)),
        }
    }
}

fn json_rejection(rejection: &JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            Kind::UnsupportedMediaType,
            "send the body as JSON with `Content-Type: application/json`",
        ),
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
        JsonRejection::BytesRejection(e) => {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    Kind::TooLarge,
                    "the request body is larger than http.max_body_size",
                )
            } else {
                ApiError::new(Kind::BadRequest, format!("reading the body failed: {e}"))
            }
        }
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
