//! What the API reads and writes: request bodies, query strings and response bodies,
//! with their OpenAPI schemas. Conversions from the domain live here too.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::execution::{AttemptRecord, Column, ErrorInfo, Execution, Format, Progress, Status};

/// An optional integer field that also takes a float with no fraction (`5.0`): JSON
/// Schema counts those as integers, so clients generated from the document may send
/// them.
pub(crate) mod whole {
    use serde::{Deserialize, Deserializer, de::Error};

    pub fn option<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: TryFrom<i64>,
    {
        let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
            return Ok(None);
        };
        let whole = n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                .map(|f| f as i64)
        });
        whole
            .and_then(|i| T::try_from(i).ok())
            .map(Some)
            .ok_or_else(|| {
                D::Error::custom(format!("invalid value: {n}, expected an integer in range"))
            })
    }
}

/// One statement, or the statements of a job.
#[derive(Debug, Clone, ToSchema)]
#[serde(untagged)]
pub enum SqlInput {
    One(String),
    Job(Vec<JobItem>),
}

impl Default for SqlInput {
    fn default() -> SqlInput {
        SqlInput::One(String::new())
    }
}

/// A statement of a job: its SQL, or its SQL with fallbacks.
#[derive(Debug, Clone, ToSchema)]
#[serde(untagged)]
pub enum JobItem {
    Sql(String),
    WithFallbacks(JobStatement),
}

// By hand rather than `untagged`, so that a wrong shape gets serde's own message
// ("invalid type: integer `5`, expected ...") and a wrong field inside an item is named.
impl<'de> Deserialize<'de> for SqlInput {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<SqlInput, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = SqlInput;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a statement (a string) or a job's list of statements")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SqlInput, E> {
                Ok(SqlInput::One(v.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<SqlInput, A::Error> {
                Vec::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
                    .map(SqlInput::Job)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for JobItem {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<JobItem, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = JobItem;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a statement (a string) or {sql, onsuccess?, onerror?}")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<JobItem, E> {
                Ok(JobItem::Sql(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<JobItem, A::Error> {
                JobStatement::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(JobItem::WithFallbacks)
            }
        }
        d.deserialize_any(V)
    }
}

/// A job's statement with the fallbacks that run after it.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobStatement {
    pub sql: String,
    /// Runs right after this statement succeeds.
    #[serde(default)]
    pub onsuccess: Option<String>,
    /// Runs after this statement fails, before the job's `onerror`; may use
    /// `{{execution_id}}` and `{{error_message}}`.
    #[serde(default)]
    pub onerror: Option<String>,
}

/// `POST /v1/executions` with `Content-Type: application/json`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({ "sql": "SELECT number FROM system.numbers LIMIT 10" }))]
pub struct SubmitRequest {
    /// The SQL to run: one statement, or a job: a list of statements (strings, or
    /// objects with their own `onsuccess`/`onerror` fallbacks) run in order in one
    /// ClickHouse session.
    pub sql: SqlInput,
    /// A job's fallback once every statement succeeded (`sql` a list only).
    #[serde(default)]
    pub onsuccess: Option<String>,
    /// A job's fallback after a statement failed (`sql` a list only). May use
    /// `{{execution_id}}` and `{{error_message}}` (a String query parameter).
    #[serde(default)]
    pub onerror: Option<String>,
    /// Tier to run on; the configured default tier when absent.
    #[serde(default)]
    pub tier: Option<String>,
    /// Dedup key. At most one execution per query_id is in flight. Defaults to a
    /// sha256 over sql, tier, format and settings. Reusing a query_id with different SQL
    /// supersedes the in-flight execution.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 256)]
    pub query_id: Option<String>,
    /// Output format (ClickHouse's name); `JSONEachRow` when absent.
    #[serde(default)]
    #[schema(value_type = Option<Format>)]
    pub format: Option<String>,
    /// ClickHouse settings for this query; only those the tier allows.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub settings: Option<BTreeMap<String, serde_json::Value>>,
    /// 0 (default) to 9; higher runs first among the tenant's executions on a tier.
    #[serde(default, deserialize_with = "whole::option")]
    #[schema(minimum = 0, maximum = 9)]
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
    #[schema(format = DateTime)]
    pub run_after: Option<String>,
    /// Runs before it fails for good (1 to the tier's `max_attempts`, the default).
    #[serde(default, deserialize_with = "whole::option")]
    #[schema(minimum = 1)]
    pub max_attempts: Option<i32>,
    /// How long the result is kept once finished, e.g. `"1h"` (up to the tier's
    /// retention, the default).
    #[serde(default)]
    pub retention: Option<String>,
    /// Longest run, e.g. `"30s"` (up to the tier's `max_timeout`): past it the query is
    /// killed and the execution FAILS with `TIMEOUT`.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Longest wait for a worker once runnable, e.g. `"5m"`: past it a PENDING
    /// execution FAILS with `NOT_STARTED_IN_TIME`.
    #[serde(default)]
    pub start_within: Option<String>,
    /// Reuse: when this tenant has a SUCCEEDED, unexpired execution of the same
    /// query_id and statement that finished within this long (e.g. `"10m"`), it is
    /// returned (`outcome: "reused"`) and nothing runs.
    #[serde(default)]
    pub max_age: Option<String>,
    /// Query the stored result of this execution (same tenant, SUCCEEDED) as the table
    /// `result`, e.g. `SELECT ... FROM result WHERE ... ORDER BY ... LIMIT 100`.
    #[serde(default)]
    pub from_result: Option<String>,
    /// When the execution ends (SUCCEEDED, FAILED or CANCELED), Sluice POSTs it here,
    /// signed (`X-Sluice-Signature`), retrying until the receiver answers 2xx. Must
    /// match `webhooks.allowed`.
    #[serde(default)]
    pub callback_url: Option<String>,
    /// Store at most this many rows of the result (line formats: JSONEachRow, CSV,
    /// TabSeparated and their variants); past it the query is stopped and the result is
    /// marked `truncated`.
    #[serde(default, deserialize_with = "whole::option")]
    #[schema(minimum = 1, maximum = 9007199254740991_i64)]
    pub row_limit: Option<i64>,
    /// Store at most this many bytes of the result, in whole rows, header lines included
    /// (line formats only); past it the query is stopped and the result is `truncated`.
    #[serde(default, deserialize_with = "whole::option")]
    #[schema(minimum = 1, maximum = 9007199254740991_i64)]
    pub byte_limit: Option<i64>,
}

/// Query string of `POST /v1/executions`: `wait` always; the others only when the body
/// is `text/plain` SQL (a JSON body carries them itself).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SubmitParams {
    /// Tier (text/plain bodies only).
    pub tier: Option<String>,
    /// Dedup key (text/plain bodies only).
    #[param(min_length = 1, max_length = 256)]
    pub query_id: Option<String>,
    /// Output format (text/plain bodies only).
    #[param(value_type = Option<Format>)]
    pub format: Option<String>,
    /// 0 to 9 (text/plain bodies only).
    #[param(minimum = 0, maximum = 9)]
    pub priority: Option<i16>,
    /// Seconds (up to `api.max_wait`, 60 by default) to hold the answer until the
    /// execution ends; the execution in the answer is then its final state (or its
    /// state when time ran out).
    #[param(maximum = 60)]
    pub wait: Option<u32>,
    /// `true`: check the statement on the tier's ClickHouse (DESCRIBE, or EXPLAIN AST)
    /// and answer with a `DryRunResult`; nothing is queued.
    pub dry_run: Option<bool>,
    /// `true` (with `wait`): a result that is ready in time comes inside the answer
    /// (`result.inline`), when it is text of at most `api.inline_max_bytes`.
    pub inline: Option<bool>,
}

/// Query string of `GET /v1/executions/{id}/result`: a page of rows instead of the
/// whole result (line formats: JSONEachRow, CSV, TabSeparated and their variants). The
/// page keeps the format's header lines.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RowParams {
    /// First row of the page, 0-based (default 0).
    #[param(minimum = 0)]
    pub row_offset: Option<i64>,
    /// Rows in the page, 1 to 100,000 (default 100,000).
    #[param(minimum = 1, maximum = 100000)]
    pub row_limit: Option<u64>,
}

/// Query string of `GET /v1/executions/{id}`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct GetParams {
    /// Seconds (up to `api.max_wait`, 60 by default) to hold the answer until the
    /// execution ends (SUCCEEDED, FAILED or CANCELED); the answer comes as soon as it
    /// does.
    #[param(maximum = 60)]
    pub wait: Option<u32>,
    /// `true`: a SUCCEEDED execution's result comes inside the answer (`result.inline`)
    /// when it is text of at most `api.inline_max_bytes`.
    pub inline: Option<bool>,
}

/// Query string of `GET /v1/executions`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    pub query_id: Option<String>,
    /// PENDING, RUNNING, SUCCEEDED, FAILED, CANCELED or EXPIRED.
    #[param(value_type = Option<Status>)]
    pub status: Option<String>,
    pub tier: Option<String>,
    /// One tenant's executions (for admins; anyone else sees only their own tenant, so
    /// another tenant's name gives an empty page).
    pub tenant: Option<String>,
    /// Executions of one saved report (task).
    pub task: Option<String>,
    /// Page size, 1 to `api.max_page_size` (1,000 by default); 100 when absent.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(value_type = Option<Uuid>)]
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
    /// `row_limit` or `byte_limit` stopped the query: this is its beginning, in whole
    /// rows.
    pub truncated: bool,
    /// With `?inline=true`: the result itself, when it is text of at most
    /// `api.inline_max_bytes` (1 MiB by default).
    pub inline: Option<String>,
    /// With `?inline=true`: whether `inline` holds the result (`included`), or why not
    /// (`too_large`, `binary`): then download it from `url`.
    pub inline_status: Option<InlineStatus>,
}

/// Whether a result came inline (`?inline=true`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InlineStatus {
    Included,
    /// Larger than `api.inline_max_bytes`.
    TooLarge,
    /// A binary format (Parquet, Arrow, Native, RowBinary), or text that is not UTF-8.
    Binary,
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
    /// A job's statements and fallbacks in plan order, each with its status (PENDING,
    /// RUNNING, SUCCEEDED, FAILED, SKIPPED, or CANCELED when a cancel or the timeout
    /// stopped it), timings, ClickHouse query_id and error; `result: true` marks the
    /// statement whose rows are stored. Absent for a single statement.
    pub steps: Option<Vec<crate::job::Step>>,
    /// Percent of ClickHouse's row estimate read so far (0 to 100), when it has one;
    /// 100 once SUCCEEDED.
    pub percent: Option<f64>,
    /// While PENDING and runnable (`GET /v1/executions/{id}` only): its place among its
    /// tenant's runnable executions on the tier, 1 = next.
    pub queue_position: Option<i64>,
    /// While PENDING (`GET /v1/executions/{id}` only): a rough start time, from the
    /// tier's recent run times and how many run at once now; never before `run_after`.
    pub estimated_start: Option<DateTime<Utc>>,
    /// `GET /v1/executions/{id}` only: the mean run time in seconds of the tenant's last
    /// 20 successful runs of the same statement (dedup hash), if any.
    pub estimated_duration_seconds: Option<f64>,
    /// Where its end is POSTed.
    pub callback_url: Option<String>,
    /// `GET /v1/executions/{id}` only, once it ended: the webhook's delivery and each
    /// attempt.
    pub webhook: Option<crate::store::webhooks::Delivery>,
}

impl ExecutionView {
    /// With the estimates the single-execution answers carry.
    pub fn with_estimates(mut self, e: crate::store::read::Estimates) -> ExecutionView {
        self.queue_position = e.queue_position;
        self.estimated_start = e.estimated_start;
        self.estimated_duration_seconds = e.estimated_duration_ms.map(|ms| ms.round() / 1000.0);
        self
    }
}

/// Percent of the row estimate read, to a tenth; 100 once SUCCEEDED.
fn percent(e: &Execution) -> Option<f64> {
    match (&e.status, &e.progress) {
        (Status::Succeeded, _) => Some(100.0),
        (_, Some(p)) if p.0.total_rows_approx > 0 => {
            let read = p.0.read_rows as f64 / p.0.total_rows_approx as f64;
            Some(((read * 1000.0).round() / 10.0).min(100.0))
        }
        _ => None,
    }
}

impl From<Execution> for ExecutionView {
    fn from(e: Execution) -> Self {
        let percent = percent(&e);
        let result = e.result.map(|r| {
            let r = r.0;
            ResultView {
                format: r.format,
                content_type: r.format.content_type().to_string(),
                bytes: r.bytes,
                rows: r.rows,
                columns: r.columns,
                truncated: r.truncated,
                url: format!("/v1/executions/{}/result", e.id),
                inline: None,
                inline_status: None,
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
            percent,
            callback_url: e.callback_url,
            webhook: None,
            queue_position: None,
            estimated_start: None,
            estimated_duration_seconds: None,
            steps: e.job.map(|j| {
                let mut job = j.0;
                if e.status.is_terminal() {
                    job.settle(e.status == Status::Canceled);
                }
                job.steps
            }),
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
    /// A recent result of the same statement (`max_age`): nothing runs.
    Reused,
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
    /// The principal's tenant's PENDING executions on this tier now.
    pub pending: i64,
    /// Its RUNNING executions on this tier now.
    pub running: i64,
    /// Age in seconds of its oldest PENDING execution here, if any.
    pub oldest_pending_seconds: Option<f64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TierList {
    pub tiers: Vec<TierView>,
}

/// Body of `POST /v1/executions/{id}/result-url` (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResultUrlRequest {
    /// Validity in seconds; `results.link_ttl` when absent, at most
    /// `results.link_max_ttl` (86,400 by default).
    #[serde(default, deserialize_with = "whole::option")]
    #[schema(minimum = 1, maximum = 86400)]
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
    /// Dedup key (see `SubmitRequest`).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 256)]
    pub query_id: Option<String>,
    /// Output format; the task's, or `JSONEachRow`, when absent.
    #[serde(default)]
    #[schema(value_type = Option<Format>)]
    pub format: Option<String>,
    /// 0 (default) to 9.
    #[serde(default, deserialize_with = "whole::option")]
    #[schema(minimum = 0, maximum = 9)]
    pub priority: Option<i16>,
    /// ClickHouse settings for this run; only those the tier allows.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub settings: Option<BTreeMap<String, serde_json::Value>>,
    /// Not started before this instant (RFC 3339, e.g. `2026-12-01T06:00:00Z`); at once
    /// when absent or past. A PENDING execution shows it as `runnable_at`.
    #[serde(default)]
    #[schema(format = DateTime)]
    pub run_after: Option<String>,
    /// Runs before it fails for good (1 to the tier's `max_attempts`, the default).
    #[serde(default, deserialize_with = "whole::option")]
    #[schema(minimum = 1)]
    pub max_attempts: Option<i32>,
    /// How long the result is kept once finished, e.g. `"1h"` (up to the tier's
    /// retention, the default).
    #[serde(default)]
    pub retention: Option<String>,
    /// Longest run, e.g. `"30s"` (up to the tier's `max_timeout`): past it the query is
    /// killed and the execution FAILS with `TIMEOUT`.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Longest wait for a worker once runnable, e.g. `"5m"`: past it a PENDING
    /// execution FAILS with `NOT_STARTED_IN_TIME`.
    #[serde(default)]
    pub start_within: Option<String>,
    /// Reuse: when this tenant has a SUCCEEDED, unexpired execution of the same
    /// query_id and statement that finished within this long (e.g. `"10m"`), it is
    /// returned (`outcome: "reused"`) and nothing runs.
    #[serde(default)]
    pub max_age: Option<String>,
    /// Where its end is POSTed (see `SubmitRequest`); must match `webhooks.allowed`.
    #[serde(default)]
    pub callback_url: Option<String>,
    /// Store at most this many rows of the result (line formats: JSONEachRow, CSV,
    /// TabSeparated and their variants); past it the query is stopped and the result is
    /// marked `truncated`.
    #[serde(default, deserialize_with = "whole::option")]
    #[schema(minimum = 1, maximum = 9007199254740991_i64)]
    pub row_limit: Option<i64>,
    /// Store at most this many bytes of the result, in whole rows, header lines included
    /// (line formats only); past it the query is stopped and the result is `truncated`.
    #[serde(default, deserialize_with = "whole::option")]
    #[schema(minimum = 1, maximum = 9007199254740991_i64)]
    pub byte_limit: Option<i64>,
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
    #[schema(min_length = 1, max_length = 256, pattern = "\\S")]
    pub group_id: Option<String>,
    /// Members in flight at once, at least 1.
    #[schema(minimum = 1)]
    pub concurrency: u32,
    /// The members, 1 to 1,000: each the JSON body of `POST /v1/executions`, or a saved
    /// report, `{"task": "name", "args": [...]}` with the options of
    /// `POST /v1/tasks/{name}/executions`. They run in order of priority, then as given.
    #[schema(value_type = Vec<Object>, min_items = 1, max_items = 1000)]
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

/// `POST /v1/executions/search`: the latest execution of each query_id.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    /// 1 to 1,000 query_ids.
    #[schema(min_items = 1, max_items = 1000)]
    pub query_ids: Vec<String>,
    /// Only executions with this status (the latest such one of each query_id).
    #[serde(default)]
    #[schema(value_type = Option<Status>)]
    pub status: Option<String>,
    /// At most this many executions, in the order of `query_ids` (all when absent).
    #[serde(default, deserialize_with = "whole::option")]
    #[schema(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// The latest execution of each query_id that has one, in the order asked.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SearchResult {
    pub executions: Vec<ExecutionView>,
}

/// The answer to `POST /v1/executions?dry_run=true`: what the tier's ClickHouse says
/// of the statement; nothing is queued.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DryRunResult {
    /// Whether the tier's ClickHouse accepted the statement.
    pub valid: bool,
    pub tier: String,
    /// How it was checked: `describe` (a SELECT: the result's columns), `explain`
    /// (another statement, parsed and analysed by `EXPLAIN AST`), or `none` (a server
    /// without EXPLAIN cannot check it without running it).
    pub checked: String,
    /// The result's columns (`describe` only).
    pub columns: Option<Vec<Column>>,
    /// ClickHouse's error, when it refused the statement.
    pub error: Option<ErrorInfo>,
}

/// The 200 answer of a submit: the execution (collapsed or reused), or with
/// `dry_run=true` what the tier's ClickHouse said of the statement.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum SubmitAnswer {
    Submitted(Box<SubmitResponse>),
    DryRun(DryRunResult),
}
