//! `/v1/executions`: submit, get, list and cancel. Validation of a submission happens here,
//! before anything reaches the store, so every bad input gets a 400 that names it.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use uuid::Uuid;

use super::ApiContext;
use super::auth::check_tier;
use super::error::{ApiError, ErrorBody};
use super::model::{
    ExecutionPage, ExecutionView, GetParams, JobItem, ListParams, SearchRequest, SearchResult,
    SqlInput, SubmitAnswer, SubmitOutcome, SubmitParams, SubmitRequest, SubmitResponse,
};
use crate::auth::Principal;
use crate::config::valid_setting_name;
use crate::execution::{Format, Limits, Status, query_hash};
use crate::job::{Job, Planned, Role};
use crate::sql;
use crate::store::queue::CancelOutcome;
use crate::store::read::ListFilter;
use crate::store::submit::{NewExecution, Submitted as Stored};

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
    path = "/v1/executions", operation_id = "submit_execution",
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
        (status = 200, description = "Collapsed into an identical in-flight execution, or a recent result reused (`max_age`); with `dry_run=true`, a `DryRunResult`", body = SubmitAnswer),
        (status = 502, description = "Dry run: the tier's ClickHouse cannot be reached", body = ErrorBody),
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
) -> Result<Response, ApiError> {
    let body = body_bytes(&ctx, body)?;
    let Query(params) =
        params.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let wait = wait_duration(&ctx, params.wait)?;
    let (dry_run, inline) = (params.dry_run, params.inline);
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
    let source = match new.from_result {
        Some(id) => Some(check_source(&ctx, &new.tenant, id).await?),
        None => None,
    };
    if dry_run == Some(true) {
        let checked = super::dry_run::check(&ctx, &new, source.as_ref()).await?;
        return Ok((StatusCode::OK, Json(checked)).into_response());
    }
    Ok(queue(&ctx, &principal, new, wait, inline == Some(true))
        .await?
        .into_response())
}

/// A follow-up query needs a stored result of the same tenant with known columns: 404
/// when there is none (or it is another tenant's), 409 until it has SUCCEEDED or when
/// its columns are unknown, 410 once expired.
pub(super) async fn check_source(
    ctx: &ApiContext,
    tenant: &str,
    id: Uuid,
) -> Result<crate::execution::ResultMeta, ApiError> {
    let Some(source) = ctx.store.get(id, Some(tenant)).await? else {
        return Err(ApiError::NotFound(format!(
            "no execution with id `{id}` to query (from_result)"
        )));
    };
    match (source.status, source.result.map(|r| r.0)) {
        (Status::Succeeded, Some(meta)) if meta.columns.as_ref().is_some_and(|c| !c.is_empty()) => {
            Ok(meta)
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

/// A JSON body as `T`, or a 400 naming what is wrong with it. The body must be an
/// object: serde would also build a struct from an array of its fields.
pub(super) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::bad_request(
            "invalid_json",
            "malformed JSON body: expected a JSON object `{...}`",
        ));
    }
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
    inline: bool,
) -> Result<(StatusCode, Json<SubmitResponse>), ApiError> {
    let started = std::time::Instant::now();
    let submitted = ctx.store.submit(&new).await;
    crate::metrics::step("submit", started);
    let (status, outcome, superseded, execution) = match submitted? {
        Stored::QueueFull { cap } => {
            return Err(ApiError::TooManyRequests {
                message: format!(
                    "tenant `{}` already has {cap} executions waiting on tier `{}`; \
                     retry when some have started",
                    new.tenant, new.tier
                ),
                retry_after: ctx.config.api.retry_after.as_secs().max(1),
            });
        }
        Stored::Created(e) => (StatusCode::CREATED, SubmitOutcome::Created, None, e),
        Stored::Collapsed(e) => (StatusCode::OK, SubmitOutcome::Collapsed, None, e),
        Stored::Reused(e) => (StatusCode::OK, SubmitOutcome::Reused, None, e),
        Stored::Superseded {
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
    let mut view = ExecutionView::from(execution.clone());
    if inline {
        super::results::inline(ctx, &execution, &mut view).await?;
    }
    Ok((
        status,
        Json(SubmitResponse {
            outcome,
            superseded,
            execution: view,
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
                sql: SqlInput::One(sql.to_string()),
                tier: params.tier,
                query_id: params.query_id,
                format: params.format,
                priority: params.priority,
                ..Default::default()
            })
        }
        "application/json" | "" => {
            let mut r: SubmitRequest = parse_json(body)?;
            // The query string's tier, query_id, format and priority (the text/plain
            // way) apply to a JSON body too, unless the body says otherwise.
            let conflict = |field: &str| {
                ApiError::bad_request(
                    "invalid_query",
                    format!("`{field}` is given in the query string and, differently, in the body"),
                )
            };
            merge(&mut r.tier, params.tier).map_err(|()| conflict("tier"))?;
            merge(&mut r.query_id, params.query_id).map_err(|()| conflict("query_id"))?;
            merge(&mut r.format, params.format).map_err(|()| conflict("format"))?;
            merge(&mut r.priority, params.priority).map_err(|()| conflict("priority"))?;
            Ok(r)
        }
        other => Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type `{other}` is not accepted: send application/json or text/plain SQL"
        ))),
    }
}

/// `field` takes `from_query` when it has no value; `Err` when both have different ones.
fn merge<T: PartialEq>(field: &mut Option<T>, from_query: Option<T>) -> Result<(), ()> {
    match (field.as_ref(), from_query) {
        (_, None) => Ok(()),
        (None, q) => {
            *field = q;
            Ok(())
        }
        (Some(a), Some(b)) if *a == b => Ok(()),
        _ => Err(()),
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
    let statements = statements(&r)?;
    let tier_name = r
        .tier
        .clone()
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
    let sql_bytes: usize = statements.iter().map(|s| s.text.len()).sum();
    if sql_bytes > tier.max_sql_bytes {
        return Err(ApiError::SqlTooLarge {
            limit: tier.max_sql_bytes,
            tier: tier_name,
        });
    }
    for s in &statements {
        check_statement(&tier_name, tier, &s.analyzed).map_err(|e| s.locate(e))?;
    }
    let (text, identity, job) = job_of(&r, &statements);
    // A job's result is its last read statement's rows.
    let result_statement = statements
        .iter()
        .filter(|s| s.role == Role::Statement)
        .rfind(|s| s.analyzed.produces_rows() || statements.len() == 1);
    let format = match result_statement {
        Some(s) => output_format(r.format.as_deref(), &s.analyzed).map_err(|e| s.locate(e))?,
        None => output_format_field(r.format.as_deref())?,
    };
    let priority = r.priority.unwrap_or(0);
    if !(0..=9).contains(&priority) {
        return Err(ApiError::bad_request(
            "invalid_priority",
            format!("priority must be between 0 and 9, got {priority}"),
        ));
    }
    let policy = policy(&tier_name, tier, &r)?;
    let mut settings = BTreeMap::new();
    for (name, value) in r.settings.clone().unwrap_or_default() {
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
    for s in &statements {
        for (name, value) in &s.analyzed.settings {
            check_setting(
                &tier_name,
                tier,
                name,
                value,
                " (in the SQL's SETTINGS clause)",
            )
            .map_err(|e| s.locate(e))?;
        }
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
    if from_result.is_some() && job.is_some() {
        return Err(ApiError::bad_request(
            "invalid_from_result",
            "from_result is for a single statement, not a job",
        ));
    }
    let limits = result_limits(format, r.row_limit, r.byte_limit)?;
    let hash = query_hash(
        &identity,
        &tier_name,
        format,
        &settings,
        &parameters,
        from_result,
        limits,
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
        sql: text,
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
        timeout_ms: policy.timeout_ms,
        start_within_ms: policy.start_within_ms,
        max_age_ms: policy.max_age_ms,
        from_result,
        job,
        callback_url: r
            .callback_url
            .as_deref()
            .map(|url| callback_url(&ctx.config.webhooks, url))
            .transpose()?,
        limits,
    })
}

/// The largest `row_limit`/`byte_limit` (2^53 - 1, exact in every JSON client).
const MAX_RESULT_LIMIT: i64 = 9_007_199_254_740_991;

/// `row_limit` and `byte_limit`: positive, and only where a row is a line (a Parquet
/// file or a JSON document cut short would not be one).
fn result_limits(
    format: Format,
    row_limit: Option<i64>,
    byte_limit: Option<i64>,
) -> Result<Limits, ApiError> {
    let cap = |field: &str, value: Option<i64>| match value {
        None => Ok(None),
        Some(n) => u64::try_from(n)
            .ok()
            .filter(|_| (1..=MAX_RESULT_LIMIT).contains(&n))
            .map(Some)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_result_limit",
                    format!("{field} must be between 1 and {MAX_RESULT_LIMIT}, got {n}"),
                )
            }),
    };
    let limits = Limits {
        rows: cap("row_limit", row_limit)?,
        bytes: cap("byte_limit", byte_limit)?,
    };
    if limits.any() && !format.one_row_per_line() {
        return Err(ApiError::bad_request(
            "limit_not_supported",
            format!(
                "row_limit and byte_limit cap results in a format with a row per line \
                 (JSONEachRow, CSV, TabSeparated and their variants); {format} is not one"
            ),
        ));
    }
    Ok(limits)
}

/// A `callback_url` inside `webhooks.allowed` (same scheme, host and port as an entry,
/// under its path), normalized; 400 `callback_not_allowed` otherwise.
fn callback_url(hooks: &crate::config::WebhooksConfig, url: &str) -> Result<String, ApiError> {
    let refuse = |why: &str| {
        ApiError::bad_request(
            "callback_not_allowed",
            format!(
                "callback_url `{}` {why}; allowed: {}",
                url.escape_debug(),
                if hooks.allowed.is_empty() {
                    "none (webhooks.allowed is empty)".to_string()
                } else {
                    hooks.allowed.join(", ")
                }
            ),
        )
    };
    let parsed = reqwest::Url::parse(url).map_err(|_| refuse("is not a URL"))?;
    let inside = |entry: &String| {
        reqwest::Url::parse(entry).is_ok_and(|a| {
            a.scheme() == parsed.scheme()
                && a.host_str() == parsed.host_str()
                && a.port_or_known_default() == parsed.port_or_known_default()
                && parsed.path().starts_with(a.path())
                && parsed.username().is_empty()
                && parsed.password().is_none()
        })
    };
    if !hooks.allowed.iter().any(inside) {
        return Err(refuse("is outside webhooks.allowed"));
    }
    Ok(parsed.to_string())
}

/// Most statements (fallbacks included) one job may hold.
const MAX_JOB_STEPS: usize = 100;

/// One statement of a submission: where it is, what it is, and its text.
struct Submitted<'a> {
    /// `sql[2].onerror`, `onsuccess`; empty for a single statement.
    place: String,
    role: Role,
    text: String,
    analyzed: sql::Statement<'a>,
}

impl Submitted<'_> {
    /// `e`, saying which statement it is about.
    fn locate(&self, e: ApiError) -> ApiError {
        if self.place.is_empty() {
            e
        } else {
            e.within(&self.place)
        }
    }
}

/// Every statement of `r` (one, or a job's statements and fallbacks in plan order),
/// each free of NUL bytes and classified.
fn statements(r: &SubmitRequest) -> Result<Vec<Submitted<'_>>, ApiError> {
    let mut raw: Vec<(String, Role, &str)> = Vec::new();
    match &r.sql {
        SqlInput::One(text) => {
            if r.onsuccess.is_some() || r.onerror.is_some() {
                return Err(ApiError::bad_request(
                    "invalid_job",
                    "onsuccess and onerror belong to a job: give `sql` as a list of statements",
                ));
            }
            raw.push((String::new(), Role::Statement, text));
        }
        SqlInput::Job(items) => {
            if items.is_empty() {
                return Err(ApiError::bad_request(
                    "empty_sql",
                    "a job needs at least one statement",
                ));
            }
            for (i, item) in items.iter().enumerate() {
                match item {
                    JobItem::Sql(text) => raw.push((format!("sql[{i}]"), Role::Statement, text)),
                    JobItem::WithFallbacks(s) => {
                        raw.push((format!("sql[{i}]"), Role::Statement, &s.sql));
                        if let Some(f) = &s.onsuccess {
                            raw.push((format!("sql[{i}].onsuccess"), Role::OnSuccess, f));
                        }
                        if let Some(f) = &s.onerror {
                            raw.push((format!("sql[{i}].onerror"), Role::OnError, f));
                        }
                    }
                }
            }
            if let Some(f) = &r.onsuccess {
                raw.push(("onsuccess".into(), Role::OnSuccess, f));
            }
            if let Some(f) = &r.onerror {
                raw.push(("onerror".into(), Role::OnError, f));
            }
            if raw.len() > MAX_JOB_STEPS {
                return Err(ApiError::bad_request(
                    "invalid_job",
                    format!(
                        "a job holds at most {MAX_JOB_STEPS} statements and fallbacks, got {}",
                        raw.len()
                    ),
                ));
            }
        }
    }
    raw.into_iter()
        .map(|(place, role, text)| {
            let located = |e: ApiError| {
                if place.is_empty() {
                    e
                } else {
                    e.within(&place)
                }
            };
            no_nul("sql", "invalid_sql", text).map_err(located)?;
            let analyzed = sql::analyze(text)
                .map_err(statement_error)
                .map_err(located)?;
            Ok(Submitted {
                place,
                role,
                text: text.to_string(),
                analyzed,
            })
        })
        .collect()
}

/// The text stored in `sql`, what identifies the submission in the dedup hash, and
/// the plan of a job.
fn job_of(r: &SubmitRequest, statements: &[Submitted]) -> (String, String, Option<Job>) {
    if let SqlInput::One(text) = &r.sql {
        return (text.clone(), text.clone(), None);
    }
    let mut planned: Vec<Planned> = Vec::new();
    let (mut onsuccess, mut onerror) = (None, None);
    for s in statements {
        let entry = (s.text.clone(), s.analyzed.kind == sql::Kind::Read);
        let is_job_level = !s.place.starts_with("sql[");
        match (s.role, is_job_level) {
            (Role::Statement, _) => planned.push(Planned {
                sql: entry.0,
                read_only: entry.1,
                onsuccess: None,
                onerror: None,
            }),
            (Role::OnSuccess, true) => onsuccess = Some(entry),
            (Role::OnError, true) => onerror = Some(entry),
            (Role::OnSuccess, false) => {
                if let Some(p) = planned.last_mut() {
                    p.onsuccess = Some(entry);
                }
            }
            (Role::OnError, false) => {
                if let Some(p) = planned.last_mut() {
                    p.onerror = Some(entry);
                }
            }
        }
    }
    let text = planned
        .iter()
        .map(|p| p.sql.trim().trim_end_matches(';').trim_end())
        .collect::<Vec<_>>()
        .join(";\n");
    let job = Job::plan(planned, onsuccess, onerror);
    // Everything that runs, fallbacks included, identifies a job.
    let identity = format!(
        "job:{}",
        job.steps
            .iter()
            .map(|s| format!("{:?}:{:?}:{}", s.role, s.statement, s.sql))
            .collect::<Vec<_>>()
            .join("\u{0}")
    );
    (text, identity, Some(job))
}

/// 400 unless `tier` runs statements like `statement`.
fn check_statement(
    tier_name: &str,
    tier: &crate::config::TierConfig,
    statement: &sql::Statement,
) -> Result<(), ApiError> {
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
    Ok(())
}

/// When and how often an execution may run, for how long, and how long its result is
/// kept.
struct Policy {
    run_after: Option<chrono::DateTime<chrono::Utc>>,
    max_attempts: i32,
    retention_ms: Option<i64>,
    timeout_ms: Option<i64>,
    start_within_ms: Option<i64>,
    max_age_ms: Option<i64>,
}

/// The submission's policy fields, within the tier's bounds.
fn policy(
    tier_name: &str,
    tier: &crate::config::TierConfig,
    r: &SubmitRequest,
) -> Result<Policy, ApiError> {
    let run_after = match &r.run_after {
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
    let max_attempts = match r.max_attempts {
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
    let bounded = |field: &str, code: &'static str, value: &Option<String>, longest| {
        duration_ms(tier_name, field, code, value.as_deref(), longest)
    };
    Ok(Policy {
        run_after,
        max_attempts,
        retention_ms: bounded(
            "retention",
            "invalid_retention",
            &r.retention,
            tier.retention.succeeded,
        )?,
        timeout_ms: bounded("timeout", "invalid_timeout", &r.timeout, tier.max_timeout)?,
        start_within_ms: bounded(
            "start_within",
            "invalid_start_within",
            &r.start_within,
            tier.max_timeout,
        )?,
        // Reuse looks back at most as far as results are kept.
        max_age_ms: bounded(
            "max_age",
            "invalid_max_age",
            &r.max_age,
            tier.retention.succeeded,
        )?,
    })
}

/// A duration field (`"90s"`, `"1h 30m"`) in milliseconds, above zero and at most
/// `longest`; 400 `code` otherwise.
fn duration_ms(
    tier_name: &str,
    field: &str,
    code: &'static str,
    text: Option<&str>,
    longest: Duration,
) -> Result<Option<i64>, ApiError> {
    let Some(text) = text else {
        return Ok(None);
    };
    let bad = |why: String| {
        ApiError::bad_request(
            code,
            format!(
                "{field} `{}` {why}; give a duration such as \"90s\" or \"1h\", up to {} \
                 (tier `{tier_name}`)",
                text.escape_debug(),
                humantime::format_duration(longest)
            ),
        )
    };
    let d = humantime::parse_duration(text).map_err(|e| bad(format!("is not a duration: {e}")))?;
    if d.is_zero() || d > longest {
        return Err(bad("is out of range".into()));
    }
    Ok(Some(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
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

/// The `format` field alone (a job without a read statement), or the default.
fn output_format_field(field: Option<&str>) -> Result<Format, ApiError> {
    match field {
        None => Ok(DEFAULT_FORMAT),
        Some(f) => Format::parse(f).ok_or_else(|| {
            ApiError::bad_request(
                "unknown_format",
                format!(
                    "unknown format `{}`; supported: {}",
                    f.escape_debug(),
                    Format::ALL.map(|f| f.as_str()).join(", ")
                ),
            )
        }),
    }
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
    path = "/v1/executions/{id}", operation_id = "get_execution",
    tag = "executions",
    params(("id" = Uuid, Path, description = "Execution id"), GetParams),
    responses(
        (status = 200, description = "The execution", body = ExecutionView),
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
    let estimates = ctx.store.estimates(&execution).await?;
    let webhook = match execution.callback_url {
        Some(_) => ctx.store.delivery(execution.id).await?,
        None => None,
    };
    let mut view = ExecutionView::from(execution.clone()).with_estimates(estimates);
    view.webhook = webhook;
    if params.inline == Some(true) {
        super::results::inline(&ctx, &execution, &mut view).await?;
    }
    Ok(Json(view))
}

/// List executions, newest first, with keyset pagination: the caller's tenant's, or
/// every tenant's (or the one named by `tenant`) for an admin.
#[utoipa::path(
    get,
    path = "/v1/executions", operation_id = "list_executions",
    tag = "executions",
    params(ListParams),
    responses(
        (status = 200, description = "A page of executions, newest first", body = ExecutionPage),
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
        ("task", &p.task),
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
    let status = p.status.as_deref().map(parse_status).transpose()?;
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

/// A status filter, or 400 `invalid_status`.
fn parse_status(s: &str) -> Result<Status, ApiError> {
    Status::parse(s).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_status",
            format!(
                "unknown status `{}`; one of {}",
                s.escape_debug(),
                Status::ALL.map(|s| s.as_str()).join(", ")
            ),
        )
    })
}

/// Most query_ids one search may name.
const MAX_SEARCH_IDS: usize = 1000;

/// The latest execution of each of up to 1,000 query_ids, in the order asked.
///
/// The caller's tenant's executions only (an admin's search spans every tenant, so a
/// query_id may then answer once per tenant). A query_id without an execution (or
/// without one in `status`) is left out. With `limit`, at most that many executions.
#[utoipa::path(
    post,
    path = "/v1/executions/search", operation_id = "search_executions",
    tag = "executions",
    request_body = SearchRequest,
    responses(
        (status = 200, description = "The latest execution of each query_id that has one", body = SearchResult),
        (status = 400, description = "Invalid search", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn search(
    State(ctx): State<ApiContext>,
    principal: Principal,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<SearchResult>, ApiError> {
    let r: SearchRequest = parse_json(&body_bytes(&ctx, body)?)?;
    if r.query_ids.is_empty() || r.query_ids.len() > MAX_SEARCH_IDS {
        return Err(ApiError::bad_request(
            "invalid_query_ids",
            format!(
                "query_ids must name 1 to {MAX_SEARCH_IDS} query_ids, got {}",
                r.query_ids.len()
            ),
        ));
    }
    for id in &r.query_ids {
        no_nul("query_ids", "invalid_query_ids", id)?;
    }
    if r.limit
        .is_some_and(|l| l == 0 || l as usize > MAX_SEARCH_IDS)
    {
        return Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be between 1 and {MAX_SEARCH_IDS}"),
        ));
    }
    let status = r.status.as_deref().map(parse_status).transpose()?;
    let found = ctx
        .store
        .latest_by_query_id(principal.scope(), &r.query_ids, status)
        .await?;
    let mut by_query_id: std::collections::HashMap<&str, Vec<&crate::execution::Execution>> =
        std::collections::HashMap::new();
    for e in &found {
        by_query_id.entry(e.query_id.as_str()).or_default().push(e);
    }
    let mut seen = std::collections::HashSet::new();
    let limit = r.limit.map_or(usize::MAX, |l| l as usize);
    let executions = r
        .query_ids
        .iter()
        .filter(|q| seen.insert(q.as_str()))
        .flat_map(|q| by_query_id.remove(q.as_str()).unwrap_or_default())
        .take(limit)
        .map(|e| ExecutionView::from(e.clone()))
        .collect();
    Ok(Json(SearchResult { executions }))
}

/// Cancel an execution.
///
/// PENDING becomes CANCELED at once (200). RUNNING is stopped by its worker, which kills
/// the ClickHouse query and then marks it CANCELED (202; poll the execution). Canceling a
/// CANCELED execution is a no-op (200); any other finished one is a 409.
#[utoipa::path(
    post,
    path = "/v1/executions/{id}/cancel", operation_id = "cancel_execution",
    tag = "executions",
    params(("id" = Uuid, Path, description = "Execution id")),
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
