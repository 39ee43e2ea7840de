//! `/v1/executions`: submit, get, list and cancel. Validation of a submission happens here,
//! before anything reaches the store, so every bad input gets a 400 that names it.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use uuid::Uuid;

use super::ApiContext;
use super::auth::check_tier;
use super::error::{ApiError, ErrorBody};
use super::model::{
    ExecutionPage, ExecutionView, GetParams, ListParams, SubmitOutcome, SubmitParams,
    SubmitRequest, SubmitResponse,
};
use crate::auth::Principal;
use crate::config::valid_setting_name;
use crate::execution::{Format, Status, query_hash};
use crate::sql;
use crate::store::queue::CancelOutcome;
use crate::store::read::ListFilter;
use crate::store::submit::{NewExecution, Submitted};

const DEFAULT_FORMAT: Format = Format::JSONEachRow;
const DEFAULT_PAGE_SIZE: u32 = 100;
const MAX_QUERY_ID_LEN: usize = 256;

/// Submit SQL for execution.
///
/// The body is either JSON (`SubmitRequest`) or the SQL itself as `text/plain`, with
/// `tier`, `format`, `query_id` and `priority` in the query string. With `?wait=N` the
/// answer is held until the execution ends or N seconds pass: a short query's result is
/// one request away.
#[utoipa::path(
    post,
    path = "/v1/executions",
    tag = "executions",
    params(SubmitParams),
    request_body(
        content(
            (SubmitRequest = "application/json"),
            (String = "text/plain", example = "SELECT 1"),
        )
    ),
    responses(
        (status = 201, description = "Created and queued", body = SubmitResponse),
        (status = 200, description = "Collapsed into an identical in-flight execution", body = SubmitResponse),
        (status = 400, description = "Invalid submission", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Tier not allowed for this principal", body = ErrorBody),
        (status = 413, description = "Body or SQL over the size limit", body = ErrorBody),
        (status = 415, description = "Neither JSON nor text/plain", body = ErrorBody),
        (status = 429, description = "The tenant's queue on this tier is full; see Retry-After", body = ErrorBody),
        (status = 503, description = "Queue database unavailable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn submit(
    State(ctx): State<ApiContext>,
    principal: Principal,
    params: Result<Query<SubmitParams>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<SubmitResponse>), ApiError> {
    let body = body_bytes(&ctx, body)?;
    let Query(params) =
        params.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let wait = wait_duration(&ctx, params.wait)?;
    let request = parse_submission(&headers, &body, params)?;
    if let Some(tier) = ad_hoc_forbidden(&ctx, &principal, request.tier.as_deref()) {
        return Err(ApiError::Forbidden {
            code: "ad_hoc_sql_forbidden",
            message: format!(
                "tier `{tier}` runs saved reports only (ad_hoc_sql = false): submit one of \
                 GET /v1/tasks with POST /v1/tasks/{{name}}/executions"
            ),
        });
    }
    let new = validate(&ctx, &principal, request, None)?;
    if let Some(source) = new.from_result {
        check_source(&ctx, &new.tenant, source).await?;
    }
    queue(&ctx, &principal, new, wait).await
}

/// A follow-up query needs a stored result of the same tenant with known columns: 404
/// when there is none (or it is another tenant's), 409 until it has SUCCEEDED or when
/// its columns are unknown, 410 once expired.
pub(super) async fn check_source(ctx: &ApiContext, tenant: &str, id: Uuid) -> Result<(), ApiError> {
    let Some(source) = ctx.store.get(id, Some(tenant)).await? else {
        return Err(ApiError::NotFound(format!(
            "no execution with id `{id}` to query (from_result)"
        )));
    };
    match (source.status, source.result.as_ref()) {
        (Status::Succeeded, Some(meta)) if meta.columns.as_ref().is_some_and(|c| !c.is_empty()) => {
            Ok(())
        }
        (Status::Succeeded, _) => Err(ApiError::Conflict {
            code: "result_not_queryable",
            message: format!(
                "the result of execution {id} has no known columns, so it cannot be read \
                 as a table"
            ),
        }),
        (Status::Expired, _) => Err(ApiError::Gone(format!(
            "the result of execution {id} has expired"
        ))),
        (status, _) => Err(ApiError::Conflict {
            code: "result_not_ready",
            message: format!("execution {id} is {status}; only a SUCCEEDED result can be queried"),
        }),
    }
}

/// The tier a submission would run on, when that tier refuses ad-hoc SQL.
pub(super) fn ad_hoc_forbidden(
    ctx: &ApiContext,
    principal: &Principal,
    tier: Option<&str>,
) -> Option<String> {
    let name = tier
        .map(String::from)
        .or_else(|| principal.default_tier.clone())
        .unwrap_or_else(|| ctx.config.default_tier.clone());
    ctx.config
        .tier(&name)
        .is_some_and(|t| !t.ad_hoc_sql)
        .then_some(name)
}

/// The request body, or the 413 / 400 that says why there is none.
pub(super) fn body_bytes(
    ctx: &ApiContext,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(ctx.config.api.max_body_bytes)
        } else {
            ApiError::bad_request("invalid_body", e.body_text())
        }
    })
}

/// A JSON body as `T`, or a 400 naming what is wrong with it.
pub(super) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let message = e.to_string();
        if message.starts_with("unknown field") {
            ApiError::bad_request("unknown_field", message)
        } else if message.starts_with("missing field") {
            ApiError::bad_request("missing_field", message)
        } else {
            ApiError::bad_request("invalid_json", format!("malformed JSON body: {message}"))
        }
    })
}

/// Stores a validated submission (created, collapsed or superseding) and answers, after
/// the long poll when `wait` asks for one.
pub(super) async fn queue(
    ctx: &ApiContext,
    principal: &Principal,
    new: NewExecution,
    wait: Option<Duration>,
) -> Result<(StatusCode, Json<SubmitResponse>), ApiError> {
    let started = std::time::Instant::now();
    let submitted = ctx.store.submit(&new).await;
    crate::metrics::step("submit", started);
    let (status, outcome, superseded, execution) = match submitted? {
        Submitted::QueueFull { cap } => {
            return Err(ApiError::TooManyRequests {
                message: format!(
                    "tenant `{}` already has {cap} executions waiting on tier `{}`; \
                     retry when some have started",
                    new.tenant, new.tier
                ),
                retry_after: ctx.config.api.retry_after.as_secs().max(1),
            });
        }
        Submitted::Created(e) => (StatusCode::CREATED, SubmitOutcome::Created, None, e),
        Submitted::Collapsed(e) => (StatusCode::OK, SubmitOutcome::Collapsed, None, e),
        Submitted::Superseded {
            execution,
            superseded,
        } => (
            StatusCode::CREATED,
            SubmitOutcome::Superseded,
            Some(superseded),
            execution,
        ),
    };
    tracing::info!(
        execution_id = %execution.id,
        tier = %execution.tier,
        tenant = %execution.tenant,
        principal = %principal.name,
        outcome = ?outcome,
        "submitted"
    );
    let execution = match wait {
        Some(wait) if !execution.status.is_terminal() => ctx
            .finishes
            .wait(
                &ctx.store,
                execution.id,
                principal.scope(),
                wait,
                &ctx.shutdown,
            )
            .await?
            .unwrap_or(execution),
        _ => execution,
    };
    Ok((
        status,
        Json(SubmitResponse {
            outcome,
            superseded,
            execution: execution.into(),
        }),
    ))
}

/// JSON body or text/plain SQL, into one request shape.
fn parse_submission(
    headers: &HeaderMap,
    body: &[u8],
    params: SubmitParams,
) -> Result<SubmitRequest, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_ascii_lowercase();
    let mime = content_type.split(';').next().unwrap_or("").trim();
    match mime {
        "text/plain" | "application/sql" => {
            let sql = std::str::from_utf8(body)
                .map_err(|_| ApiError::bad_request("invalid_body", "the SQL is not valid UTF-8"))?;
            Ok(SubmitRequest {
                sql: sql.to_string(),
                tier: params.tier,
                query_id: params.query_id,
                format: params.format,
                priority: params.priority,
                ..Default::default()
            })
        }
        "application/json" | "" => {
            if params.tier.is_some()
                || params.query_id.is_some()
                || params.format.is_some()
                || params.priority.is_some()
            {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    "with a JSON body, put tier, query_id, format and priority in the body \
                     (only `wait` goes in the query string)",
                ));
            }
            parse_json(body)
        }
        other => Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type `{other}` is not accepted: send application/json or text/plain SQL"
        ))),
    }
}

/// Everything a submission must satisfy before it is queued; `task` names the saved
/// report it runs, if any.
pub(super) fn validate(
    ctx: &ApiContext,
    principal: &Principal,
    r: SubmitRequest,
    task: Option<&str>,
) -> Result<NewExecution, ApiError> {
    no_nul("sql", "invalid_sql", &r.sql)?;
    let statement = sql::analyze(&r.sql).map_err(statement_error)?;
    let tier_name = r
        .tier
        .or_else(|| principal.default_tier.clone())
        .unwrap_or_else(|| ctx.config.default_tier.clone());
    let Some(tier) = ctx.config.tier(&tier_name) else {
        return Err(ApiError::bad_request(
            "unknown_tier",
            format!(
                "unknown tier `{}`; tiers you may use: {}",
                tier_name.escape_debug(),
                ctx.config
                    .tiers
                    .keys()
                    .filter(|t| principal.may_use(t))
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    };
    check_tier(principal, &tier_name)?;
    if r.sql.len() > tier.max_sql_bytes {
        return Err(ApiError::SqlTooLarge {
            limit: tier.max_sql_bytes,
            tier: tier_name,
        });
    }
    if !tier.allowed_statements.contains(&statement.kind) {
        return Err(ApiError::bad_request(
            "statement_not_allowed",
            format!(
                "`{}` is a {} statement; tier `{tier_name}` runs {} statements only",
                statement.keyword,
                statement.kind,
                tier.allowed_statements
                    .iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
        ));
    }
    if let Some(table) = statement.sensitive_table() {
        return Err(ApiError::bad_request(
            "table_not_allowed",
            format!(
                "`system.{table}` shows other users' queries, privileges or servers; \
                 Sluice does not run statements that read it"
            ),
        ));
    }
    let format = output_format(r.format.as_deref(), &statement)?;
    let priority = r.priority.unwrap_or(0);
    if !(0..=9).contains(&priority) {
        return Err(ApiError::bad_request(
            "invalid_priority",
            format!("priority must be between 0 and 9, got {priority}"),
        ));
    }
    let mut settings = BTreeMap::new();
    for (name, value) in r.settings.unwrap_or_default() {
        let value = scalar(&value).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_setting",
                format!(
                    "setting `{}` must be a single-line string, a number or a boolean",
                    name.escape_debug()
                ),
            )
        })?;
        check_setting(&tier_name, tier, &name, &value, "")?;
        settings.insert(name, value);
    }
    // The statement's own SETTINGS clause gets the same checks: it would otherwise
    // override the tier's limits (ClickHouse refuses it anyway under readonly = 1).
    for (name, value) in &statement.settings {
        check_setting(
            &tier_name,
            tier,
            name,
            value,
            " (in the SQL's SETTINGS clause)",
        )?;
    }
    let mut parameters = BTreeMap::new();
    for (name, value) in r.parameters.unwrap_or_default() {
        if !valid_setting_name(&name) {
            return Err(ApiError::bad_request(
                "invalid_parameter",
                format!(
                    "parameter names are identifiers (letters, digits, `_`): `{}`",
                    name.escape_debug()
                ),
            ));
        }
        // The value is a secret: the message names the parameter, never the value.
        let value = match value {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_parameter",
                    format!(
                        "parameter `{name}` must be a string, a number or a boolean \
                         (composite values as ClickHouse literals in a string)"
                    ),
                ));
            }
        };
        no_nul(&format!("parameter `{name}`"), "invalid_parameter", &value)?;
        parameters.insert(name, value);
    }
    let policy = policy(&tier_name, tier, &r.run_after, r.max_attempts, &r.retention)?;
    let from_result = r
        .from_result
        .as_deref()
        .map(|id| {
            Uuid::parse_str(id).map_err(|_| {
                ApiError::bad_request(
                    "invalid_from_result",
                    format!(
                        "from_result must be an execution id, got `{}`",
                        id.escape_debug()
                    ),
                )
            })
        })
        .transpose()?;
    let hash = query_hash(
        &r.sql,
        &tier_name,
        format,
        &settings,
        &parameters,
        from_result,
    );
    let query_id = match r.query_id {
        None => hash.clone(),
        Some(q) if q.trim().is_empty() || q.len() > MAX_QUERY_ID_LEN => {
            return Err(ApiError::bad_request(
                "invalid_query_id",
                format!("query_id must be 1 to {MAX_QUERY_ID_LEN} characters"),
            ));
        }
        Some(q) => {
            no_nul("query_id", "invalid_query_id", &q)?;
            q
        }
    };
    let max_running = principal.max_running.or(tier.max_running_per_tenant);
    let max_queued = principal.max_queued.or(tier.max_queued_per_tenant);
    Ok(NewExecution {
        tenant: principal.tenant.clone(),
        created_by: principal.name.clone(),
        tier: tier_name,
        query_id,
        query_hash: hash,
        sql: r.sql,
        format,
        settings,
        priority,
        max_attempts: policy.max_attempts,
        parameters,
        quota_key: principal.quota_key.clone(),
        max_running: max_running.map(|n| i32::try_from(n).unwrap_or(i32::MAX)),
        max_queued: max_queued.map(i64::from),
        task: task.map(String::from),
        run_after: policy.run_after,
        retention_ms: policy.retention_ms,
        from_result,
    })
}

/// When and how often an execution may run and how long its result is kept.
struct Policy {
    run_after: Option<chrono::DateTime<chrono::Utc>>,
    max_attempts: i32,
    retention_ms: Option<i64>,
}

/// The submission's `run_after`, `max_attempts` and `retention`, within the tier's.
fn policy(
    tier_name: &str,
    tier: &crate::config::TierConfig,
    run_after: &Option<String>,
    max_attempts: Option<i32>,
    retention: &Option<String>,
) -> Result<Policy, ApiError> {
    let run_after = match run_after {
        None => None,
        Some(text) => Some(
            chrono::DateTime::parse_from_rfc3339(text)
                .map_err(|e| {
                    ApiError::bad_request(
                        "invalid_run_after",
                        format!(
                            "run_after must be an RFC 3339 instant such as \
                             2026-12-01T06:00:00Z, got `{}`: {e}",
                            text.escape_debug()
                        ),
                    )
                })?
                .with_timezone(&chrono::Utc),
        ),
    };
    let max_attempts = match max_attempts {
        None => tier.max_attempts,
        Some(n) if (1..=tier.max_attempts).contains(&n) => n,
        Some(n) => {
            return Err(ApiError::bad_request(
                "invalid_max_attempts",
                format!(
                    "max_attempts must be between 1 and {} (tier `{tier_name}`), got {n}",
                    tier.max_attempts
                ),
            ));
        }
    };
    let longest = tier.retention.succeeded;
    let retention_ms = match retention {
        None => None,
        Some(text) => {
            let bad = |why: String| {
                ApiError::bad_request(
                    "invalid_retention",
                    format!(
                        "retention `{}` {why}; give a duration such as \"1h\", up to {} \
                         (tier `{tier_name}`)",
                        text.escape_debug(),
                        humantime::format_duration(longest)
                    ),
                )
            };
            let d = humantime::parse_duration(text)
                .map_err(|e| bad(format!("is not a duration: {e}")))?;
            if d.is_zero() || d > longest {
                return Err(bad("is out of range".into()));
            }
            Some(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        }
    };
    Ok(Policy {
        run_after,
        max_attempts,
        retention_ms,
    })
}

/// Why the SQL cannot be queued, as the 400 that says so.
fn statement_error(e: sql::SqlError) -> ApiError {
    let code = match e {
        sql::SqlError::Empty => "empty_sql",
        sql::SqlError::MultiStatement => "multiple_statements",
        sql::SqlError::IntoOutfile => "into_outfile",
        sql::SqlError::Unterminated(_) => "invalid_sql",
        sql::SqlError::UnknownStatement(_) => "unknown_statement",
    };
    ApiError::bad_request(code, e.to_string())
}

/// The execution's format: the `format` field, or the statement's own `FORMAT` clause
/// (ClickHouse writes what the clause names, so the result is stored as that); both
/// must agree when both are given.
fn output_format(field: Option<&str>, statement: &sql::Statement) -> Result<Format, ApiError> {
    let parse = |f: &str, source: &str| {
        Format::parse(f).ok_or_else(|| {
            ApiError::bad_request(
                "unknown_format",
                format!(
                    "unknown format `{}`{source}; supported: {}",
                    f.escape_debug(),
                    Format::ALL.map(|f| f.as_str()).join(", ")
                ),
            )
        })
    };
    let clause = match &statement.format {
        Some((name, _)) => Some(parse(name, " in the SQL's FORMAT clause")?),
        None => None,
    };
    match (field.map(|f| parse(f, "")).transpose()?, clause) {
        (Some(a), Some(b)) if a != b => Err(ApiError::bad_request(
            "format_conflict",
            format!("`format` says {a} but the SQL ends with FORMAT {b}; give one of them"),
        )),
        (Some(f), _) | (None, Some(f)) => Ok(f),
        (None, None) => Ok(DEFAULT_FORMAT),
    }
}

/// 400 unless a client may set `name` to `value` on `tier` (the allow-list and numeric
/// bounds of `client_settings`); `place` says where the setting was found.
fn check_setting(
    tier_name: &str,
    tier: &crate::config::TierConfig,
    name: &str,
    value: &str,
    place: &str,
) -> Result<(), ApiError> {
    if !valid_setting_name(name) || !tier.client_settings.iter().any(|s| s == name) {
        return Err(ApiError::bad_request(
            "setting_not_allowed",
            format!(
                "setting `{}`{place} is not allowed on tier `{tier_name}`; allowed: {}",
                name.escape_debug(),
                tier.client_settings.join(", ")
            ),
        ));
    }
    no_nul(&format!("setting `{name}`"), "invalid_setting", value)?;
    if let Some(bounds) = tier.client_setting_bounds.get(name) {
        let n: Option<f64> = value.parse().ok();
        let inside = n.is_some_and(|n| {
            bounds.min.is_none_or(|lo| n >= lo) && bounds.max.is_none_or(|hi| n <= hi)
        });
        if !inside {
            return Err(ApiError::bad_request(
                "setting_out_of_bounds",
                format!(
                    "setting `{name}`{place} on tier `{tier_name}` must be a number{}{}",
                    bounds.min.map(|m| format!(" >= {m}")).unwrap_or_default(),
                    bounds.max.map(|m| format!(" <= {m}")).unwrap_or_default(),
                ),
            ));
        }
    }
    Ok(())
}

/// 400 `code` when `value` holds a NUL byte, which Postgres cannot store in text.
pub(super) fn no_nul(field: &str, code: &'static str, value: &str) -> Result<(), ApiError> {
    if value.contains('\0') {
        return Err(ApiError::bad_request(
            code,
            format!("{field} must not contain a NUL byte (\\0)"),
        ));
    }
    Ok(())
}

/// A setting value as ClickHouse takes it in a URL: single-line text.
fn scalar(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) if !s.contains(['\n', '\r']) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(if *b { "1" } else { "0" }.to_string()),
        _ => None,
    }
}

/// An id that does not parse names no execution: 404, like an unknown one.
pub(super) fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::NotFound(format!("no execution with id `{id}`")))
}

/// `?wait=N`: how long to long-poll, or `None` for an immediate answer.
pub(super) fn wait_duration(
    ctx: &ApiContext,
    wait: Option<u32>,
) -> Result<Option<Duration>, ApiError> {
    let max = ctx.config.api.max_wait.as_secs();
    match wait {
        None | Some(0) => Ok(None),
        Some(n) if u64::from(n) <= max => Ok(Some(Duration::from_secs(u64::from(n)))),
        Some(n) => Err(ApiError::bad_request(
            "invalid_wait",
            format!("wait={n} is over the longest long poll, {max} seconds (api.max_wait)"),
        )),
    }
}

/// Get one execution: status, timings, progress, result metadata, error.
///
/// With `?wait=N` the answer is held until the execution ends or N seconds pass, so a
/// client learns of the end at once without polling.
#[utoipa::path(
    get,
    path = "/v1/executions/{id}",
    tag = "executions",
    params(("id" = String, Path, description = "Execution id"), GetParams),
    responses(
        (status = 200, body = ExecutionView),
        (status = 400, description = "Invalid `wait`", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 404, description = "No such execution (or another tenant's)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get(
    State(ctx): State<ApiContext>,
    principal: Principal,
    Path(id): Path<String>,
    params: Result<Query<GetParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ExecutionView>, ApiError> {
    let Query(params) =
        params.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let wait = wait_duration(&ctx, params.wait)?;
    let uuid = parse_id(&id)?;
    let execution = match wait {
        None => ctx.store.get(uuid, principal.scope()).await?,
        Some(wait) => {
            ctx.finishes
                .wait(&ctx.store, uuid, principal.scope(), wait, &ctx.shutdown)
                .await?
        }
    }
    .ok_or_else(|| ApiError::NotFound(format!("no execution with id `{id}`")))?;
    Ok(Json(execution.into()))
}

/// List executions, newest first, with keyset pagination: the caller's tenant's, or
/// every tenant's (or the one named by `tenant`) for an admin.
#[utoipa::path(
    get,
    path = "/v1/executions",
    tag = "executions",
    params(ListParams),
    responses(
        (status = 200, body = ExecutionPage),
        (status = 400, description = "Invalid filter", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(ctx): State<ApiContext>,
    principal: Principal,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ExecutionPage>, ApiError> {
    let Query(p) = params.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    for (field, value) in [
        ("query_id", &p.query_id),
        ("tier", &p.tier),
        ("tenant", &p.tenant),
    ] {
        if let Some(v) = value {
            no_nul(field, "invalid_filter", v)?;
        }
    }
    let max = ctx.config.api.max_page_size;
    let limit = p.limit.unwrap_or(DEFAULT_PAGE_SIZE.min(max));
    if limit == 0 || limit > max {
        return Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be between 1 and {max}"),
        ));
    }
    let status = match p.status.as_deref() {
        None => None,
        Some(s) => Some(Status::parse(s).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_status",
                format!(
                    "unknown status `{s}`; one of {}",
                    Status::ALL.map(|s| s.as_str()).join(", ")
                ),
            )
        })?),
    };
    let before = match p.cursor.as_deref() {
        None => None,
        Some(c) => Some(Uuid::parse_str(c).map_err(|_| {
            ApiError::bad_request("invalid_cursor", "cursor is not one this API returned")
        })?),
    };
    // A scoped principal asking for another tenant gets what it would see of it: nothing.
    let tenant = match (principal.scope(), p.tenant) {
        (Some(own), Some(asked)) if own != asked => {
            return Ok(Json(ExecutionPage {
                executions: vec![],
                next_cursor: None,
            }));
        }
        (Some(own), _) => Some(own.to_string()),
        (None, asked) => asked,
    };
    let mut rows = ctx
        .store
        .list(&ListFilter {
            tenant,
            query_id: p.query_id,
            status,
            tier: p.tier,
            task: p.task,
            before,
            limit: i64::from(limit) + 1,
        })
        .await?;
    let next_cursor = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|e| e.id.to_string())
    } else {
        None
    };
    Ok(Json(ExecutionPage {
        executions: rows.into_iter().map(ExecutionView::from).collect(),
        next_cursor,
    }))
}

/// Cancel an execution.
///
/// PENDING becomes CANCELED at once (200). RUNNING is stopped by its worker, which kills
/// the ClickHouse query and then marks it CANCELED (202; poll the execution). Canceling a
/// CANCELED execution is a no-op (200); any other finished one is a 409.
#[utoipa::path(
    post,
    path = "/v1/executions/{id}/cancel",
    tag = "executions",
    params(("id" = String, Path, description = "Execution id")),
    responses(
        (status = 200, description = "Canceled", body = ExecutionView),
        (status = 202, description = "Cancel requested; the worker is stopping it", body = ExecutionView),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 404, description = "No such execution (or another tenant's)", body = ErrorBody),
        (status = 409, description = "Already finished", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn cancel(
    State(ctx): State<ApiContext>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<ExecutionView>), ApiError> {
    let uuid = parse_id(&id)?;
    match ctx.store.request_cancel(uuid, principal.scope()).await? {
        CancelOutcome::Canceled(e) => Ok((StatusCode::OK, Json(e.into()))),
        CancelOutcome::Requested(e) => Ok((StatusCode::ACCEPTED, Json(e.into()))),
        CancelOutcome::AlreadyFinished(e) if e.status == Status::Canceled => {
            Ok((StatusCode::OK, Json(e.into())))
        }
        CancelOutcome::AlreadyFinished(e) => Err(ApiError::Conflict {
            code: "already_finished",
            message: format!("execution {id} already finished with status {}", e.status),
        }),
        CancelOutcome::NotFound => Err(ApiError::NotFound(format!("no execution with id `{id}`"))),
    }
}
