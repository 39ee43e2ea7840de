//! What the API reads and writes: request bodies, query strings and response bodies,
//! with their OpenAPI schemas. Conversions from the domain live here too.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::execution::{AttemptRecord, Column, ErrorInfo, Execution, Format, Progress, Status};

/// `POST /v1/executions` with `Content-Type: application/json`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// The SQL to run: one statement.
    #[schema(example = "SELECT number FROM system.numbers LIMIT 10")]
    pub sql: String,
    /// Tier to run on; the configured default tier when absent.
    #[serde(default)]
    pub tier: Option<String>,
    /// Dedup key. At most one execution per query_id is in flight. Defaults to a
    /// sha256 over sql, tier, format and settings. Reusing a query_id with different SQL
    /// supersedes the in-flight execution.
    #[serde(default)]
    pub query_id: Option<String>,
    /// Output format (ClickHouse's name); `JSONEachRow` when absent.
    #[serde(default)]
    #[schema(example = "JSONEachRow")]
    pub format: Option<String>,
    /// ClickHouse settings for this query; only those the tier allows.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub settings: Option<BTreeMap<String, serde_json::Value>>,
    /// 0 (default) to 9; higher runs first among the tenant's executions on a tier.
    #[serde(default)]
    pub priority: Option<i16>,
    /// Values of the query's `{name:Type}` placeholders, sent to ClickHouse as
    /// `param_<name>` (typed and escaped by the server, never spliced into the SQL).
    /// Treated as secrets: never returned, never logged, erased when the execution
    /// ends. Strings, numbers and booleans; composite types in ClickHouse literal
    /// syntax, e.g. `"[1, 2]"`. Needs ClickHouse 19 or later.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<BTreeMap<String, serde_json::Value>>,
}

/// Query string of `POST /v1/executions`: `wait` always; the others only when the body
/// is `text/plain` SQL (a JSON body carries them itself).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SubmitParams {
    pub tier: Option<String>,
    pub query_id: Option<String>,
    pub format: Option<String>,
    pub priority: Option<i16>,
    /// Seconds (up to `api.max_wait`) to hold the answer until the execution ends; the
    /// execution in the answer is then its final state (or its state when time ran out).
    pub wait: Option<u32>,
}

/// Query string of `GET /v1/executions/{id}`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct GetParams {
    /// Seconds (up to `api.max_wait`) to hold the answer until the execution ends
    /// (SUCCEEDED, FAILED or CANCELED); the answer comes as soon as it does.
    pub wait: Option<u32>,
}

/// Query string of `GET /v1/executions`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    pub query_id: Option<String>,
    /// PENDING, RUNNING, SUCCEEDED, FAILED, CANCELED or EXPIRED.
    pub status: Option<String>,
    pub tier: Option<String>,
    /// One tenant's executions (for admins; anyone else sees only their own tenant, so
    /// another tenant's name gives an empty page).
    pub tenant: Option<String>,
    /// Executions of one saved report (task).
    pub task: Option<String>,
    /// Page size, 1 to `api.max_page_size` (default 100).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Metadata of a stored result.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ResultView {
    pub format: Format,
    pub content_type: String,
    pub bytes: u64,
    /// Absent for binary formats (Native, Parquet, Arrow).
    pub rows: Option<u64>,
    /// Names and ClickHouse types; empty for statements without rows, `null` when they
    /// could not be learned (a statement DESCRIBE cannot describe, in a format without
    /// a header, such as `SHOW TABLES` as CSV).
    pub columns: Option<Vec<Column>>,
    /// Where to download it.
    pub url: String,
}

/// An execution as clients see it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ExecutionView {
    pub id: Uuid,
    pub status: Status,
    pub tenant: String,
    /// The principal that submitted it.
    pub created_by: String,
    pub tier: String,
    pub query_id: String,
    pub sql: String,
    /// The saved report it runs, if it was submitted as one.
    pub task: Option<String>,
    pub format: Format,
    pub settings: BTreeMap<String, String>,
    pub priority: i16,
    /// Runs so far (1 once first claimed).
    pub attempt: i32,
    pub max_attempts: i32,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub progress: Option<Progress>,
    pub result: Option<ResultView>,
    pub error: Option<ErrorInfo>,
    /// Submits that collapsed into this execution while it was in flight.
    pub collapsed_count: i32,
    pub cancel_requested_at: Option<DateTime<Utc>>,
    /// Set when a later submission with the same query_id replaced this one.
    pub superseded_by: Option<Uuid>,
    /// Attempts that failed, oldest first: why each was retried or given up.
    pub failed_attempts: Vec<AttemptRecord>,
}

impl From<Execution> for ExecutionView {
    fn from(e: Execution) -> Self {
        let result = e.result.map(|r| {
            let r = r.0;
            ResultView {
                format: r.format,
                content_type: r.format.content_type().to_string(),
                bytes: r.bytes,
                rows: r.rows,
                columns: r.columns,
                url: format!("/v1/executions/{}/result", e.id),
            }
        });
        ExecutionView {
            id: e.id,
            status: e.status,
            tenant: e.tenant,
            created_by: e.created_by,
            tier: e.tier,
            query_id: e.query_id,
            sql: e.sql,
            task: e.task,
            format: e.format,
            settings: e.settings.0,
            priority: e.priority,
            attempt: e.attempt,
            max_attempts: e.max_attempts,
            created_at: e.created_at,
            started_at: e.started_at,
            finished_at: e.finished_at,
            progress: e.progress.map(|p| p.0),
            result,
            error: e.error.map(|x| x.0),
            collapsed_count: e.collapsed_count,
            cancel_requested_at: e.cancel_requested_at,
            superseded_by: e.superseded_by,
            failed_attempts: e.attempts.0,
        }
    }
}

/// Answer to a submit: the execution, and how the submit was handled.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SubmitResponse {
    /// `created`, `collapsed` (an identical execution was in flight: this is it) or
    /// `superseded` (created, replacing an in-flight one with the same query_id).
    pub outcome: SubmitOutcome,
    /// The execution this submission replaced, when `outcome` is `superseded`.
    pub superseded: Option<Uuid>,
    pub execution: ExecutionView,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SubmitOutcome {
    Created,
    Collapsed,
    Superseded,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ExecutionPage {
    /// Newest first.
    pub executions: Vec<ExecutionView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HealthView {
    pub status: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReadyView {
    pub status: String,
    pub postgres: String,
    /// Name of the bookkeeper that currently leads, if one does.
    pub bookkeeper_leader: Option<String>,
}

/// A tier a principal may use, with its limits.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TierView {
    pub name: String,
    /// Whether submissions naming no tier go here (for this principal).
    pub default: bool,
    pub max_sql_bytes: usize,
    pub max_attempts: i32,
    /// The principal's tenant's running cap on this tier; absent when uncapped.
    pub max_running: Option<u32>,
    /// The principal's tenant's cap on PENDING executions; absent when uncapped.
    pub max_queued: Option<u32>,
    /// Settings a submission may set, with their numeric bounds when bounded.
    pub client_settings: BTreeMap<String, crate::config::Bounds>,
    /// Seconds a result is kept after the execution SUCCEEDED.
    pub result_retention_seconds: u64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TierList {
    pub tiers: Vec<TierView>,
}

/// Body of `POST /v1/executions/{id}/result-url` (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResultUrlRequest {
    /// Validity in seconds; `results.link_ttl` when absent, at most `results.link_max_ttl`.
    #[serde(default)]
    pub expires_in: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ResultUrlView {
    /// Downloads the result without credentials until `expires_at`.
    pub url: String,
    pub expires_at: DateTime<Utc>,
}

/// Query string of a signed local result link.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SignedLinkParams {
    /// Unix time the link stops working.
    pub expires: i64,
    pub signature: String,
}

/// `POST /v1/tasks/{name}/executions`: the task's arguments, and the usual options.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskSubmitRequest {
    /// Arguments by position, in the order the task lists them (`GET /v1/tasks`).
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub args: Option<Vec<serde_json::Value>>,
    /// Arguments by name (instead of `args`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<BTreeMap<String, serde_json::Value>>,
    /// Tier to run on; the task's, or the principal's default, when absent.
    #[serde(default)]
    pub tier: Option<String>,
    #[serde(default)]
    pub query_id: Option<String>,
    /// Output format; the task's, or `JSONEachRow`, when absent.
    #[serde(default)]
    pub format: Option<String>,
    #[serde(default)]
    pub priority: Option<i16>,
    /// ClickHouse settings for this run; only those the tier allows.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub settings: Option<BTreeMap<String, serde_json::Value>>,
}

/// One argument of a task.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TaskArgView {
    pub name: String,
    /// The ClickHouse type the placeholder declares.
    #[serde(rename = "type")]
    pub type_: String,
    /// 0-based position in `args`.
    pub position: usize,
}

/// A saved report.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TaskView {
    pub name: String,
    pub description: Option<String>,
    /// The tier it runs on unless the submission names another.
    pub tier: Option<String>,
    pub format: Option<Format>,
    /// Reuse of a recent result, in seconds (see the README).
    pub max_age_seconds: Option<u64>,
    pub arguments: Vec<TaskArgView>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TaskList {
    pub tasks: Vec<TaskView>,
}
