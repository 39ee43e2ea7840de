//! What the API reads and writes: request bodies, query strings and response bodies,
//! with their OpenAPI schemas. Conversions from the domain live here too.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::execution::{AttemptRecord, Column, ErrorInfo, Execution, Format, Progress, Status};

/// `POST /v1/executions` with `Content-Type: application/json`.
#[derive(Debug, Default, Deserialize, ToSchema)]
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
    /// Not started before this instant (RFC 3339, e.g. `2026-12-01T06:00:00Z`); at once
    /// when absent or past. A PENDING execution shows it as `runnable_at`.
    #[serde(default)]
    pub run_after: Option<String>,
    /// Runs before it fails for good (1 to the tier's `max_attempts`, the default).
    #[serde(default)]
    pub max_attempts: Option<i32>,
    /// How long the result is kept once finished, e.g. `"1h"` (up to the tier's
    /// retention, the default).
    #[serde(default)]
    pub retention: Option<String>,
    /// Query the stored result of this execution (same tenant, SUCCEEDED) as the table
    /// `result`, e.g. `SELECT ... FROM result WHERE ... ORDER BY ... LIMIT 100`.
    #[serde(default)]
    pub from_result: Option<String>,
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
    /// While PENDING: when it may start (its `run_after`, or a retry's backoff); `null`
    /// while it waits for a place in its group, and once it has left PENDING.
    pub runnable_at: Option<DateTime<Utc>>,
    /// The group it belongs to (`GET /v1/groups/{id}`).
    pub group_id: Option<Uuid>,
    /// Its own result retention in seconds, when shorter than the tier's.
    pub retention_seconds: Option<u64>,
    /// The execution whose stored result it queries as the table `result`.
    pub from_result: Option<Uuid>,
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
            runnable_at: (e.status == Status::Pending && !e.held).then_some(e.run_after),
            group_id: e.group_id,
            retention_seconds: e.retention_ms.map(|ms| (ms / 1000) as u64),
            from_result: e.from_result,
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
    /// Not started before this instant (RFC 3339, e.g. `2026-12-01T06:00:00Z`); at once
    /// when absent or past. A PENDING execution shows it as `runnable_at`.
    #[serde(default)]
    pub run_after: Option<String>,
    /// Runs before it fails for good (1 to the tier's `max_attempts`, the default).
    #[serde(default)]
    pub max_attempts: Option<i32>,
    /// How long the result is kept once finished, e.g. `"1h"` (up to the tier's
    /// retention, the default).
    #[serde(default)]
    pub retention: Option<String>,
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

/// `POST /v1/groups`: executions created together, at most `concurrency` running at once.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupRequest {
    /// Idempotency key, unique per tenant: a group whose key exists is returned as it
    /// is (200) instead of being created again.
    #[serde(default)]
    pub group_id: Option<String>,
    /// Members in flight at once, at least 1.
    pub concurrency: u32,
    /// The members, 1 to 1,000: each the JSON body of `POST /v1/executions`, or a saved
    /// report, `{"task": "name", "args": [...]}` with the options of
    /// `POST /v1/tasks/{name}/executions`. They run in order of priority, then as given.
    #[schema(value_type = Vec<Object>)]
    pub executions: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GroupOutcome {
    Created,
    /// A group with this `group_id` existed: it is returned unchanged.
    Existing,
}

/// A group and its members.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GroupView {
    pub id: Uuid,
    /// The client's `group_id`, or the id.
    pub group_id: String,
    pub tenant: String,
    pub created_by: String,
    pub concurrency: i32,
    /// PENDING until a member starts; RUNNING while any is in flight after that; once
    /// all have ended: FAILED if any failed, else CANCELED if any was canceled, else
    /// SUCCEEDED. (An EXPIRED member counts as what it was before it expired.)
    pub status: Status,
    /// Members by status.
    pub counts: BTreeMap<String, usize>,
    pub created_at: DateTime<Utc>,
    pub cancel_requested_at: Option<DateTime<Utc>>,
    /// In the order they were given.
    pub executions: Vec<ExecutionView>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GroupResponse {
    pub outcome: GroupOutcome,
    pub group: GroupView,
}
