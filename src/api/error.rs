//! The one error type of the HTTP API and its mapping to a status code and the JSON body
//! `{ "error": { "code": "...", "message": "..." } }`. Every handler returns it; nothing
//! else in the API decides a status code for an error.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::results::ResultsError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is wrong; `code` says how (`empty_sql`, `unknown_tier`, ...).
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    /// No valid credential.
    #[error("{0}")]
    Unauthorized(#[from] crate::auth::AuthError),
    /// Authenticated, but not allowed (a tier outside the principal's, a bad link).
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    /// A cap is reached; retry after `retry_after` seconds.
    #[error("{message}")]
    TooManyRequests { message: String, retry_after: u64 },
    #[error("{0}")]
    NotFound(String),
    /// The request is valid but the execution's state forbids it.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("{0}")]
    Gone(String),
    #[error("request body is larger than the limit of {0} bytes")]
    PayloadTooLarge(usize),
    #[error("the SQL is larger than tier `{tier}` accepts ({limit} bytes)")]
    SqlTooLarge { limit: usize, tier: String },
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("range not satisfiable: the result has {0} bytes")]
    RangeNotSatisfiable(u64),
    #[error("{0}")]
    Unavailable(String),
    /// ClickHouse, asked on the client's behalf (a dry run), cannot be reached.
    #[error("{0}")]
    BadGateway(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// The same error, its message prefixed with where it was found (`executions[2]`),
    /// for requests that carry several submissions.
    pub fn within(self, place: &str) -> ApiError {
        let at = |m: String| format!("{place}: {m}");
        match self {
            ApiError::BadRequest { code, message } => ApiError::BadRequest {
                code,
                message: at(message),
            },
            ApiError::Forbidden { code, message } => ApiError::Forbidden {
                code,
                message: at(message),
            },
            ApiError::Conflict { code, message } => ApiError::Conflict {
                code,
                message: at(message),
            },
            ApiError::NotFound(m) => ApiError::NotFound(at(m)),
            ApiError::Gone(m) => ApiError::Gone(at(m)),
            other => other,
        }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            ApiError::Unauthorized(e) => (StatusCode::UNAUTHORIZED, e.code()),
            ApiError::Forbidden { code, .. } => (StatusCode::FORBIDDEN, code),
            ApiError::TooManyRequests { .. } => (StatusCode::TOO_MANY_REQUESTS, "queue_full"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict { code, .. } => (StatusCode::CONFLICT, code),
            ApiError::Gone(_) => (StatusCode::GONE, "result_expired"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::SqlTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "sql_too_large"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::RangeNotSatisfiable(_) => {
                (StatusCode::RANGE_NOT_SATISFIABLE, "range_not_satisfiable")
            }
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::BadGateway(_) => (StatusCode::BAD_GATEWAY, "clickhouse_unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

/// The body of every error response.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `empty_sql`, `unknown_tier`, `not_found`, ...
    pub code: String,
    /// For people.
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        match &self {
            // An outage fails every request: log it once per interval, not per request.
            ApiError::Unavailable(_) => lock_outage().failure(&self),
            _ if status.is_server_error() => tracing::error!(code, error = %self, "request failed"),
            _ => {}
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.to_string(),
                message: self.to_string(),
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        match self {
            ApiError::RangeNotSatisfiable(size) => {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    headers.insert(header::CONTENT_RANGE, v);
                }
            }
            ApiError::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::TooManyRequests { retry_after, .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            }
            _ => {}
        }
        response
    }
}

static OUTAGE: std::sync::LazyLock<std::sync::Mutex<crate::outage::OutageLog>> =
    std::sync::LazyLock::new(|| std::sync::Mutex::new(crate::outage::OutageLog::new("api")));

fn lock_outage() -> std::sync::MutexGuard<'static, crate::outage::OutageLog> {
    OUTAGE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Tells the outage log that the database answered again.
pub(crate) fn database_answered() {
    lock_outage().success();
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            _ if e.is_unavailable() => {
                ApiError::Unavailable(format!("the queue database is unavailable: {e}"))
            }
            StoreError::Contention(_) => ApiError::Conflict {
                code: "contention",
                message: e.to_string(),
            },
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<ResultsError> for ApiError {
    fn from(e: ResultsError) -> Self {
        match e {
            ResultsError::NotFound(key) => ApiError::Internal(format!(
                "the result object `{key}` is missing from the result store"
            )),
            other => ApiError::Internal(other.to_string()),
        }
    }
}
