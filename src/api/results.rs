//! `GET /v1/executions/{id}/result`: streams the stored object with its format's
//! Content-Type, honouring a single `Range` (a multi-range request gets the whole object,
//! as RFC 9110 allows).

use std::ops::Range;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;

use super::error::{ApiError, ErrorBody};
use super::executions::parse_id;
use super::{ApiContext, TENANT};
use crate::execution::Status;

/// Download the result of a SUCCEEDED execution.
#[utoipa::path(
    get,
    path = "/v1/executions/{id}/result",
    tag = "executions",
    params(
        ("id" = String, Path, description = "Execution id"),
        ("Range" = Option<String>, Header, description = "One byte range, e.g. `bytes=0-1023`"),
    ),
    responses(
        (status = 200, description = "The result, in the execution's format"),
        (status = 206, description = "The requested range"),
        (status = 404, description = "No such execution", body = ErrorBody),
        (status = 409, description = "Not SUCCEEDED (yet)", body = ErrorBody),
        (status = 410, description = "Expired", body = ErrorBody),
        (status = 416, description = "Range outside the result", body = ErrorBody),
    )
)]
pub async fn download(
    State(ctx): State<ApiContext>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let uuid = parse_id(&id)?;
    let execution = ctx
        .store
        .get(uuid, Some(TENANT))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no execution with id `{id}`")))?;
    let meta = match (execution.status, execution.result) {
        (Status::Succeeded, Some(meta)) => meta.0,
        (Status::Expired, _) => {
            return Err(ApiError::Gone(format!(
                "the result of execution {id} has expired and was deleted"
            )));
        }
        (status @ (Status::Pending | Status::Running), _) => {
            return Err(ApiError::Conflict {
                code: "result_not_ready",
                message: format!(
                    "execution {id} is {status}: its result is available once it has SUCCEEDED"
                ),
            });
        }
        (status, _) => {
            return Err(ApiError::Conflict {
                code: "no_result",
                message: format!("execution {id} is {status}: it has no result"),
            });
        }
    };

    let size = meta.bytes;
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => None,
        Some(text) => match parse_range(text, size) {
            RangeRequest::Satisfiable(r) => Some(r),
            RangeRequest::Ignore => None,
            RangeRequest::Unsatisfiable => return Err(ApiError::RangeNotSatisfiable(size)),
        },
    };
    let stream = ctx.results.read(&meta.object_key, range.clone()).await?;

    let mut response = Response::new(Body::from_stream(stream));
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, header_value(&meta.content_type));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let filename = format!(
        "attachment; filename=\"{uuid}.{}\"",
        meta.format.extension()
    );
    h.insert(header::CONTENT_DISPOSITION, header_value(&filename));
    match range {
        Some(r) => {
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            let h = response.headers_mut();
            h.insert(
                header::CONTENT_LENGTH,
                header_value(&(r.end - r.start).to_string()),
            );
            h.insert(
                header::CONTENT_RANGE,
                header_value(&format!("bytes {}-{}/{size}", r.start, r.end - 1)),
            );
        }
        None => {
            h.insert(header::CONTENT_LENGTH, header_value(&size.to_string()));
        }
    }
    Ok(response)
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"))
}

#[derive(Debug, PartialEq, Eq)]
enum RangeRequest {
    Satisfiable(Range<u64>),
    /// Malformed or multi-range: serve the whole object.
    Ignore,
    Unsatisfiable,
}

/// Parses `bytes=a-b`, `bytes=a-` and `bytes=-n` against an object of `size` bytes.
fn parse_range(text: &str, size: u64) -> RangeRequest {
    let Some(spec) = text.trim().strip_prefix("bytes=") else {
        return RangeRequest::Ignore;
    };
    if spec.contains(',') {
        return RangeRequest::Ignore;
    }
    let Some((start, end)) = spec.trim().split_once('-') else {
        return RangeRequest::Ignore;
    };
    let parse = |s: &str| s.trim().parse::<u64>().ok();
    let range = match (start.trim().is_empty(), end.trim().is_empty()) {
        (true, true) => return RangeRequest::Ignore,
        // Suffix: the last n bytes.
        (true, false) => match parse(end) {
            Some(0) => return RangeRequest::Unsatisfiable,
            Some(n) => size.saturating_sub(n)..size,
            None => return RangeRequest::Ignore,
        },
        (false, true) => match parse(start) {
            Some(a) => a..size,
            None => return RangeRequest::Ignore,
        },
        (false, false) => match (parse(start), parse(end)) {
            (Some(a), Some(b)) if a <= b => a..(b.saturating_add(1)).min(size),
            _ => return RangeRequest::Ignore,
        },
    };
    if range.start >= size || range.is_empty() {
        RangeRequest::Unsatisfiable
    } else {
        RangeRequest::Satisfiable(range)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeRequest::*;
        assert_eq!(parse_range("bytes=0-9", 100), Satisfiable(0..10));
        assert_eq!(parse_range("bytes=90-", 100), Satisfiable(90..100));
        assert_eq!(parse_range("bytes=-10", 100), Satisfiable(90..100));
        assert_eq!(parse_range("bytes=-1000", 100), Satisfiable(0..100));
        assert_eq!(parse_range("bytes=50-1000", 100), Satisfiable(50..100));
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-0", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Ignore);
        assert_eq!(parse_range("items=0-1", 100), Ignore);
        assert_eq!(parse_range("bytes=5-1", 100), Ignore);
    }
}
