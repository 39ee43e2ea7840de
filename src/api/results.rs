//! Results: `GET /v1/executions/{id}/result` streams the stored object with its format's
//! Content-Type, honouring a single `Range` (a multi-range request gets the whole object,
//! as RFC 9110 allows). `POST /v1/executions/{id}/result-url` makes a link that needs no
//! credentials: a presigned URL of the object store (S3), or for a local directory an
//! HMAC-signed `GET /v1/results/{id}?expires=..&signature=..` served here. A signed link
//! is checked before anything about the execution is revealed: a forged one gets 403
//! whether or not the execution exists.

use std::ops::Range;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;

use super::ApiContext;
use super::error::{ApiError, ErrorBody};
use super::executions::parse_id;
use super::model::{ResultUrlRequest, ResultUrlView, RowParams, SignedLinkParams};
use crate::auth::{LinkError, Principal, unix_now};
use crate::execution::{Execution, ResultMeta, Status};

/// Download the result of a SUCCEEDED execution.
#[utoipa::path(
    get,
    path = "/v1/executions/{id}/result", operation_id = "download_result",
    tag = "executions",
    params(
        ("id" = Uuid, Path, description = "Execution id"),
        ("Range" = Option<String>, Header, description = "One byte range, e.g. `bytes=0-1023`"),
        RowParams,
    ),
    responses(
        (status = 200, description = "The result, in the execution's format"),
        (status = 206, description = "The requested range"),
        (status = 400, description = "A bad page (row_limit out of range)", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 404, description = "No such execution (or another tenant's)", body = ErrorBody),
        (status = 409, description = "Not SUCCEEDED (yet), or a page of a format without a row per line (`not_pageable`)", body = ErrorBody),
        (status = 410, description = "Expired", body = ErrorBody),
        (status = 416, description = "Range outside the result", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn download(
    State(ctx): State<ApiContext>,
    principal: Principal,
    Path(id): Path<String>,
    params: Result<Query<RowParams>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(rows) = params.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let execution = visible(&ctx, &principal, &id).await?;
    let meta = stored_result(execution)?;
    if rows.row_offset.is_none() && rows.row_limit.is_none() {
        return serve(&ctx, meta, &headers).await;
    }
    // A page is rows, not bytes: a Range beside it is ignored, as RFC 9110 allows.
    let offset = u64::try_from(rows.row_offset.unwrap_or(0))
        .map_err(|_| ApiError::bad_request("invalid_query", "row_offset must be 0 or more"))?;
    let limit = rows.row_limit.unwrap_or(MAX_PAGE_ROWS);
    if !(1..=MAX_PAGE_ROWS).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            format!("row_limit must be between 1 and {MAX_PAGE_ROWS}"),
        ));
    }
    let stream = super::pages::page(&ctx.results, &meta, offset, limit).await?;
    let mut response = Response::new(Body::from_stream(stream));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(meta.format.content_type()),
    );
    if let Some(total) = meta.rows {
        h.insert("x-sluice-total-rows", header_value(&total.to_string()));
    }
    h.insert("x-sluice-row-offset", header_value(&offset.to_string()));
    Ok(response)
}

/// Most rows one page may ask for.
const MAX_PAGE_ROWS: u64 = 100_000;

/// A link to the result that works without credentials until it expires.
#[utoipa::path(
    post,
    path = "/v1/executions/{id}/result-url", operation_id = "create_result_url",
    tag = "executions",
    params(("id" = Uuid, Path, description = "Execution id")),
    request_body(content = Option<ResultUrlRequest>, content_type = "application/json"),
    responses(
        (status = 200, description = "A link that downloads the result until it expires", body = ResultUrlView),
        (status = 400, description = "Expiry out of range", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 404, description = "No such execution (or another tenant's)", body = ErrorBody),
        (status = 409, description = "Not SUCCEEDED (yet)", body = ErrorBody),
        (status = 410, description = "Expired", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn result_url(
    State(ctx): State<ApiContext>,
    principal: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<ResultUrlView>, ApiError> {
    let request: ResultUrlRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ResultUrlRequest::default()
    } else {
        super::executions::parse_json(&body)?
    };
    let links = &ctx.config.results;
    let ttl = match request.expires_in {
        None => links.link_ttl,
        Some(s) if s >= 1 && s <= links.link_max_ttl.as_secs() => std::time::Duration::from_secs(s),
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_expiry",
                format!(
                    "expires_in must be between 1 and {} seconds",
                    links.link_max_ttl.as_secs()
                ),
            ));
        }
    };
    let execution = visible(&ctx, &principal, &id).await?;
    let exec_id = execution.id;
    let meta = stored_result(execution)?;
    let expires = unix_now() + ttl.as_secs() as i64;
    let url = match ctx.results.presigned_url(&meta.object_key, ttl).await? {
        Some(url) => url.to_string(),
        None => {
            let signature = ctx
                .links
                .sign(&exec_id.to_string(), &meta.object_key, expires);
            format!(
                "{}/v1/results/{exec_id}?expires={expires}&signature={signature}",
                public_base(&ctx, &headers)
            )
        }
    };
    tracing::info!(execution_id = %exec_id, principal = %principal.name, ttl = ?ttl, "result link issued");
    Ok(Json(ResultUrlView {
        url,
        expires_at: chrono::DateTime::from_timestamp(expires, 0).unwrap_or_default(),
    }))
}

/// Download through a signed link of `POST /v1/executions/{id}/result-url`; the
/// signature is the credential.
#[utoipa::path(
    get,
    path = "/v1/results/{id}", operation_id = "download_signed_result",
    tag = "executions",
    params(("id" = Uuid, Path, description = "Execution id"), SignedLinkParams),
    responses(
        (status = 200, description = "The result, in the execution's format"),
        (status = 206, description = "The requested range"),
        (status = 403, description = "Forged, tampered or expired link", body = ErrorBody),
        (status = 410, description = "The result expired", body = ErrorBody),
    )
)]
pub async fn signed_download(
    State(ctx): State<ApiContext>,
    Path(id): Path<String>,
    params: Result<Query<SignedLinkParams>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let forged = || ApiError::Forbidden {
        code: "invalid_link",
        message: "this result link is not valid".into(),
    };
    let Query(params) = params.map_err(|_| forged())?;
    let uuid = uuid::Uuid::parse_str(&id).map_err(|_| forged())?;
    let execution = ctx.store.get(uuid, None).await?.ok_or_else(forged)?;
    let object_key = execution
        .result
        .as_ref()
        .map(|r| r.0.object_key.clone())
        .ok_or_else(forged)?;
    match ctx.links.verify(
        &execution.id.to_string(),
        &object_key,
        params.expires,
        &params.signature,
        unix_now(),
    ) {
        Ok(()) => {}
        Err(LinkError::Forged) => return Err(forged()),
        Err(LinkError::Expired) => {
            return Err(ApiError::Forbidden {
                code: "link_expired",
                message: "this result link has expired; ask for a new one".into(),
            });
        }
    }
    let meta = stored_result(execution)?;
    serve(&ctx, meta, &headers).await
}

/// The execution if the principal may see it; 404 otherwise (ids do not leak).
async fn visible(ctx: &ApiContext, principal: &Principal, id: &str) -> Result<Execution, ApiError> {
    let uuid = parse_id(id)?;
    ctx.store
        .get(uuid, principal.scope())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no execution with id `{id}`")))
}

/// Where clients reach this API: `api.public_url`, else the request's Host over http.
fn public_base(ctx: &ApiContext, headers: &HeaderMap) -> String {
    if let Some(u) = &ctx.config.api.public_url {
        return u.trim_end_matches('/').to_string();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(String::from)
        .unwrap_or_else(|| ctx.config.api.listen.to_string());
    format!("http://{host}")
}

/// The stored result of an execution, or why there is none.
fn stored_result(execution: Execution) -> Result<ResultMeta, ApiError> {
    let id = execution.id;
    match (execution.status, execution.result) {
        (Status::Succeeded, Some(meta)) => Ok(meta.0),
        (Status::Expired, _) => Err(ApiError::Gone(format!(
            "the result of execution {id} has expired and was deleted"
        ))),
        (status @ (Status::Pending | Status::Running), _) => Err(ApiError::Conflict {
            code: "result_not_ready",
            message: format!(
                "execution {id} is {status}: its result is available once it has SUCCEEDED"
            ),
        }),
        (status, _) => Err(ApiError::Conflict {
            code: "no_result",
            message: format!("execution {id} is {status}: it has no result"),
        }),
    }
}

/// Streams `meta`'s object, honouring a single Range.
async fn serve(
    ctx: &ApiContext,
    meta: ResultMeta,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
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
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(meta.format.content_type()),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let name = crate::results::ResultStore::execution_of(&meta.object_key)
        .map(|u| u.to_string())
        .unwrap_or_else(|| "result".into());
    let filename = format!(
        "attachment; filename=\"{name}.{}\"",
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

/// Puts a SUCCEEDED execution's result inside its answer (`?inline=true`) when it is
/// text of at most `api.inline_max_bytes`, or says why not. Reads at most that many
/// bytes from the result store.
pub(super) async fn inline(
    ctx: &ApiContext,
    execution: &crate::execution::Execution,
    view: &mut super::model::ExecutionView,
) -> Result<(), ApiError> {
    use super::model::InlineStatus;
    use futures::TryStreamExt;
    let (Some(meta), Some(result)) = (execution.result.as_ref(), view.result.as_mut()) else {
        return Ok(());
    };
    if execution.status != crate::execution::Status::Succeeded {
        return Ok(());
    }
    let status = if !meta.format.is_text() {
        InlineStatus::Binary
    } else if meta.bytes > ctx.config.api.inline_max_bytes {
        InlineStatus::TooLarge
    } else {
        let mut bytes = Vec::with_capacity(meta.bytes as usize);
        let mut stream = ctx.results.read(&meta.object_key, None).await?;
        while let Some(chunk) = stream.try_next().await? {
            bytes.extend_from_slice(&chunk);
        }
        match String::from_utf8(bytes) {
            Ok(text) => {
                result.inline = Some(text);
                InlineStatus::Included
            }
            Err(_) => InlineStatus::Binary,
        }
    };
    result.inline_status = Some(status);
    Ok(())
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
