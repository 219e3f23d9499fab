//! The one mapping from failures to HTTP answers: every error leaves as
//! `{"error": "<code>", "message": "<sentence>"}` with a 4xx status when the request was at
//! fault and a 5xx status only when the server was.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

use crate::search::SearchError;

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Machine-readable code (see the API contract).
    pub code: &'static str,
    /// A sentence for people.
    pub message: String,
}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    /// 413 `payload_too_large`.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is larger than the limit of {limit} bytes"),
        )
    }
    /// 503 `busy`.
    pub fn busy(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "busy", message)
    }
    /// 500 `internal`: the server failed; the message names what failed.
    pub fn internal(message: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("the server failed: {message}"),
        )
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }
    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status)
            .insert_header(("Cache-Control", "no-store"))
            .json(serde_json::json!({"error": self.code, "message": self.message}))
    }
}

impl From<SearchError> for ApiError {
    fn from(e: SearchError) -> Self {
        let message = e.to_string();
        match e {
            SearchError::EmptyQuery => Self::new(StatusCode::BAD_REQUEST, "empty_query", message),
            SearchError::QueryTooLong { .. } => {
                Self::new(StatusCode::BAD_REQUEST, "query_too_long", message)
            }
            SearchError::KOutOfRange { .. } => {
                Self::new(StatusCode::BAD_REQUEST, "k_out_of_range", message)
            }
            SearchError::BadParameter(_) => Self::bad_request(message),
            SearchError::UnknownImage(_) => Self::not_found(message),
            SearchError::BadImage(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media",
                message,
            ),
            _ => Self::internal(message),
        }
    }
}

impl From<crate::library::LibraryError> for ApiError {
    fn from(e: crate::library::LibraryError) -> Self {
        Self::internal(e)
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        Self::internal(e)
    }
}

/// The JSON body extractor's failures.
pub fn json_error(e: actix_web::error::JsonPayloadError) -> ApiError {
    use actix_web::error::JsonPayloadError as J;
    match e {
        J::OverflowKnownLength { limit, .. } | J::Overflow { limit } => ApiError::too_large(limit),
        J::ContentType => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media",
            "send the body as JSON with Content-Type: application/json",
        ),
        J::Deserialize(e) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body is not valid JSON for this route: {e}"),
        ),
        other => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the JSON body could not be read: {other}"),
        ),
    }
}

/// The query-string extractor's failures.
pub fn query_error(e: actix_web::error::QueryPayloadError) -> ApiError {
    ApiError::bad_request(format!("the query string is malformed: {e}"))
}

/// The path extractor's failures (e.g. an id that is not a number).
pub fn path_error(e: actix_web::error::PathError) -> ApiError {
    ApiError::bad_request(format!(
        "the path is malformed (image ids are whole numbers): {e}"
    ))
}
