//! The domain: what an execution is, the states it moves through, the result formats
//! Sluice serves, and how a submission is hashed for deduplication.
//!
//! Status machine (enforced again by a trigger in Postgres, see
//! `migrations/0001_executions.sql`, so no code path can bypass it):
//!
//! ```text
//! PENDING -> RUNNING -> SUCCEEDED | FAILED | CANCELED
//! PENDING -> CANCELED | FAILED           (FAILED: not started within its start_within)
//! RUNNING -> PENDING                       (lost or stopped worker: run again)
//! SUCCEEDED | FAILED | CANCELED -> EXPIRED (result retention passed)
//! ```
//!
//! This module is pure data: it never performs I/O.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type, ToSchema)]
#[sqlx(type_name = "execution_status", rename_all = "SCREAMING_SNAKE_CASE")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Pending,
    Running,
    Succeeded,
    Failed,
    Canceled,
    Expired,
}

impl Status {
    pub const ALL: [Status; 6] = [
        Status::Pending,
        Status::Running,
        Status::Succeeded,
        Status::Failed,
        Status::Canceled,
        Status::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "PENDING",
            Status::Running => "RUNNING",
            Status::Succeeded => "SUCCEEDED",
            Status::Failed => "FAILED",
            Status::Canceled => "CANCELED",
            Status::Expired => "EXPIRED",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s))
    }

    pub fn is_terminal(self) -> bool {
        !matches!(self, Status::Pending | Status::Running)
    }

    /// The transitions of the status machine. Mirrors the database trigger.
    pub fn can_become(self, next: Status) -> bool {
        use Status::*;
        matches!(
            (self, next),
            (Pending, Running)
                | (Pending, Canceled)
                | (Pending, Failed)
                | (Running, Succeeded)
                | (Running, Failed)
                | (Running, Canceled)
                | (Running, Pending)
                | (Succeeded, Expired)
                | (Failed, Expired)
                | (Canceled, Expired)
        )
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Output formats Sluice stores. The bytes are ClickHouse's own output in that format.
/// Which of them a server can write is asked of the server (`system.formats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub enum Format {
    JSONEachRow,
    JSON,
    JSONCompact,
    JSONCompactEachRow,
    JSONCompactEachRowWithNamesAndTypes,
    JSONStrings,
    JSONCompactStrings,
    JSONStringsEachRow,
    CSV,
    CSVWithNames,
    CSVWithNamesAndTypes,
    TabSeparated,
    TabSeparatedRaw,
    TabSeparatedWithNames,
    TabSeparatedWithNamesAndTypes,
    TSKV,
    Values,
    XML,
    Pretty,
    PrettyCompact,
    PrettyCompactMonoBlock,
    PrettyNoEscapes,
    PrettySpace,
    Vertical,
    Markdown,
    RowBinary,
    Native,
    Parquet,
    Arrow,
    ArrowStream,
}

/// How rows are counted while a result streams through a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowCounting {
    /// One row per line; the first `header_lines` lines are not rows. Strings never contain
    /// a raw newline in these formats (they are escaped).
    Lines { header_lines: u64 },
    /// Like `Lines`, but a newline inside a double-quoted field belongs to the field.
    CsvLines { header_lines: u64 },
    /// The format reports `"rows": N` at its end.
    JsonRowsField,
    /// The format reports `<rows>N</rows>` at its end.
    XmlRowsField,
    /// Parquet's footer states `num_rows`.
    ParquetFooter,
    /// Arrow IPC messages state each record batch's length (`file`: the IPC file format,
    /// which starts with a magic).
    ArrowMessages { file: bool },
    /// A layout for people or a binary format: Sluice does not decode it, the row count
    /// stays unknown.
    Unknown,
}

impl Format {
    pub const ALL: [Format; 30] = [
        Format::JSONEachRow,
        Format::JSON,
        Format::JSONCompact,
        Format::JSONCompactEachRow,
        Format::JSONCompactEachRowWithNamesAndTypes,
        Format::JSONStrings,
        Format::JSONCompactStrings,
        Format::JSONStringsEachRow,
        Format::CSV,
        Format::CSVWithNames,
        Format::CSVWithNamesAndTypes,
        Format::TabSeparated,
        Format::TabSeparatedRaw,
        Format::TabSeparatedWithNames,
        Format::TabSeparatedWithNamesAndTypes,
        Format::TSKV,
        Format::Values,
        Format::XML,
        Format::Pretty,
        Format::PrettyCompact,
        Format::PrettyCompactMonoBlock,
        Format::PrettyNoEscapes,
        Format::PrettySpace,
        Format::Vertical,
        Format::Markdown,
        Format::RowBinary,
        Format::Native,
        Format::Parquet,
        Format::Arrow,
        Format::ArrowStream,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Format::JSONEachRow => "JSONEachRow",
            Format::JSON => "JSON",
            Format::JSONCompact => "JSONCompact",
            Format::JSONCompactEachRow => "JSONCompactEachRow",
            Format::JSONCompactEachRowWithNamesAndTypes => "JSONCompactEachRowWithNamesAndTypes",
            Format::JSONStrings => "JSONStrings",
            Format::JSONCompactStrings => "JSONCompactStrings",
            Format::JSONStringsEachRow => "JSONStringsEachRow",
            Format::CSV => "CSV",
            Format::CSVWithNames => "CSVWithNames",
            Format::CSVWithNamesAndTypes => "CSVWithNamesAndTypes",
            Format::TabSeparated => "TabSeparated",
            Format::TabSeparatedRaw => "TabSeparatedRaw",
            Format::TabSeparatedWithNames => "TabSeparatedWithNames",
            Format::TabSeparatedWithNamesAndTypes => "TabSeparatedWithNamesAndTypes",
            Format::TSKV => "TSKV",
            Format::Values => "Values",
            Format::XML => "XML",
            Format::Pretty => "Pretty",
            Format::PrettyCompact => "PrettyCompact",
            Format::PrettyCompactMonoBlock => "PrettyCompactMonoBlock",
            Format::PrettyNoEscapes => "PrettyNoEscapes",
            Format::PrettySpace => "PrettySpace",
            Format::Vertical => "Vertical",
            Format::Markdown => "Markdown",
            Format::RowBinary => "RowBinary",
            Format::Native => "Native",
            Format::Parquet => "Parquet",
            Format::Arrow => "Arrow",
            Format::ArrowStream => "ArrowStream",
        }
    }

    /// Whether its bytes are text, so a result can travel inside a JSON answer
    /// (`?inline=true`).
    pub fn is_text(self) -> bool {
        let t = self.content_type();
        t.starts_with("text/")
            || matches!(
                t,
                "application/json" | "application/x-ndjson" | "application/xml"
            )
    }

    /// Case-insensitive, and accepts ClickHouse's aliases (`TSV...`, `JSONLines`,
    /// `NDJSON`).
    pub fn parse(s: &str) -> Option<Format> {
        let canonical = match s.to_ascii_lowercase().as_str() {
            "tsv" => "TabSeparated",
            "tsvraw" => "TabSeparatedRaw",
            "tsvwithnames" => "TabSeparatedWithNames",
            "tsvwithnamesandtypes" => "TabSeparatedWithNamesAndTypes",
            "jsonlines" | "ndjson" => "JSONEachRow",
            "md" => "Markdown",
            _ => s,
        };
        Format::ALL
            .into_iter()
            .find(|f| f.as_str().eq_ignore_ascii_case(canonical))
    }

    pub fn content_type(self) -> &'static str {
        use Format::*;
        match self {
            JSONEachRow
            | JSONCompactEachRow
            | JSONCompactEachRowWithNamesAndTypes
            | JSONStringsEachRow => "application/x-ndjson",
            JSON | JSONCompact | JSONStrings | JSONCompactStrings => "application/json",
            CSV | CSVWithNames | CSVWithNamesAndTypes => "text/csv; charset=utf-8",
            TabSeparated
            | TabSeparatedRaw
            | TabSeparatedWithNames
            | TabSeparatedWithNamesAndTypes => "text/tab-separated-values; charset=utf-8",
            XML => "application/xml",
            Markdown => "text/markdown; charset=utf-8",
            TSKV
            | Values
            | Pretty
            | PrettyCompact
            | PrettyCompactMonoBlock
            | PrettyNoEscapes
            | PrettySpace
            | Vertical => "text/plain; charset=utf-8",
            RowBinary | Native => "application/octet-stream",
            Parquet => "application/vnd.apache.parquet",
            Arrow => "application/vnd.apache.arrow.file",
            ArrowStream => "application/vnd.apache.arrow.stream",
        }
    }

    pub fn extension(self) -> &'static str {
        use Format::*;
        match self {
            JSONEachRow
            | JSONCompactEachRow
            | JSONCompactEachRowWithNamesAndTypes
            | JSONStringsEachRow => "ndjson",
            JSON | JSONCompact | JSONStrings | JSONCompactStrings => "json",
            CSV | CSVWithNames | CSVWithNamesAndTypes => "csv",
            TabSeparated
            | TabSeparatedRaw
            | TabSeparatedWithNames
            | TabSeparatedWithNamesAndTypes => "tsv",
            TSKV => "tskv",
            XML => "xml",
            Markdown => "md",
            Values
            | Pretty
            | PrettyCompact
            | PrettyCompactMonoBlock
            | PrettyNoEscapes
            | PrettySpace
            | Vertical => "txt",
            RowBinary => "bin",
            Native => "native",
            Parquet => "parquet",
            Arrow => "arrow",
            ArrowStream => "arrows",
        }
    }

    /// Whether every row is one line (after the header lines): the formats whose
    /// results can be paged by rows and capped at `row_limit`/`byte_limit`.
    pub fn one_row_per_line(self) -> bool {
        matches!(
            self.row_counting(),
            RowCounting::Lines { .. } | RowCounting::CsvLines { .. }
        )
    }

    pub fn row_counting(self) -> RowCounting {
        use Format::*;
        match self {
            JSONEachRow | JSONCompactEachRow | JSONStringsEachRow | TabSeparated
            | TabSeparatedRaw | TSKV => RowCounting::Lines { header_lines: 0 },
            TabSeparatedWithNames => RowCounting::Lines { header_lines: 1 },
            TabSeparatedWithNamesAndTypes | JSONCompactEachRowWithNamesAndTypes => {
                RowCounting::Lines { header_lines: 2 }
            }
            CSV => RowCounting::CsvLines { header_lines: 0 },
            CSVWithNames => RowCounting::CsvLines { header_lines: 1 },
            CSVWithNamesAndTypes => RowCounting::CsvLines { header_lines: 2 },
            JSON | JSONCompact | JSONStrings | JSONCompactStrings => RowCounting::JsonRowsField,
            XML => RowCounting::XmlRowsField,
            Values
            | Pretty
            | PrettyCompact
            | PrettyCompactMonoBlock
            | PrettyNoEscapes
            | PrettySpace
            | Vertical
            | Markdown
            | RowBinary
            | Native => RowCounting::Unknown,
            Parquet => RowCounting::ParquetFooter,
            Arrow => RowCounting::ArrowMessages { file: true },
            ArrowStream => RowCounting::ArrowMessages { file: false },
        }
    }
}

/// Stored as its name (the `format` column is text).
impl sqlx::Type<sqlx::Postgres> for Format {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <String as sqlx::Type<sqlx::Postgres>>::type_info()
    }

    fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
        <String as sqlx::Type<sqlx::Postgres>>::compatible(ty)
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Postgres> for Format {
    fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Format, sqlx::error::BoxDynError> {
        let name = <&str as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
        Format::parse(name).ok_or_else(|| format!("unknown format `{name}`").into())
    }
}

impl<'q> sqlx::Encode<'q, sqlx::Postgres> for Format {
    fn encode_by_ref(
        &self,
        buf: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <&str as sqlx::Encode<sqlx::Postgres>>::encode(self.as_str(), buf)
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Caps on what a worker stores of a result (`row_limit` and `byte_limit` on submit; line
/// formats only): whole rows, at most `rows` of them and at most `bytes` bytes including
/// the header lines. Past a cap the query is stopped and the result marked `truncated`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub rows: Option<u64>,
    pub bytes: Option<u64>,
}

impl Limits {
    pub fn any(&self) -> bool {
        self.rows.is_some() || self.bytes.is_some()
    }
}

/// The dedup key Sluice derives when a client gives no `query_id`: a sha256 over
/// everything that changes the result bytes. Settings are hashed in key order (a
/// `BTreeMap`), so `{a,b}` and `{b,a}` collapse.
pub fn query_hash(
    sql: &str,
    tier: &str,
    format: Format,
    settings: &BTreeMap<String, String>,
    parameters: &BTreeMap<String, String>,
    from_result: Option<Uuid>,
    limits: Limits,
) -> String {
    let mut h = Sha256::new();
    // Length-prefix every field so no two different submissions serialize alike.
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    field(b"sluice-v1");
    field(sql.as_bytes());
    field(tier.as_bytes());
    field(format.as_str().as_bytes());
    for (k, v) in settings {
        field(k.as_bytes());
        field(v.as_bytes());
    }
    // Parameters change the result, so they are part of the identity. Only the same
    // tenant (who sent them) and admins ever see this hash.
    if !parameters.is_empty() {
        field(b"parameters");
        for (k, v) in parameters {
            field(k.as_bytes());
            field(v.as_bytes());
        }
    }
    // A follow-up query's table is another execution's result.
    if let Some(source) = from_result {
        field(b"from_result");
        field(source.as_bytes());
    }
    // A capped result is a different result (absent caps leave older hashes unchanged).
    if let Some(rows) = limits.rows {
        field(b"row_limit");
        field(&rows.to_be_bytes());
    }
    if let Some(bytes) = limits.bytes {
        field(b"byte_limit");
        field(&bytes.to_be_bytes());
    }
    hex::encode(h.finalize())
}

/// Why an execution did not succeed: the one set of codes, written by Rust and bound
/// into SQL (never spelled as literals in either).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// ClickHouse rejected or failed the statement (its code is in `clickhouse_code`).
    ClickhouseError,
    /// ClickHouse could not be reached, or the connection broke.
    ClickhouseUnavailable,
    /// ClickHouse answered something Sluice cannot read.
    ClickhouseProtocol,
    /// The tier's server cannot do what was asked (a format, query parameters).
    UnsupportedByServer,
    /// The result could not be written to the result store.
    StorageError,
    /// The stored execution cannot be run (written by an incompatible release).
    InvalidExecution,
    /// A client canceled it.
    Canceled,
    /// A submission with the same query_id and different SQL replaced it.
    Superseded,
    /// Its workers stopped renewing their leases, attempt after attempt.
    WorkerLost,
    /// The stored result a follow-up query reads is gone (expired or deleted).
    ResultUnavailable,
    /// A run took longer than the execution's `timeout`; its query was killed.
    Timeout,
    /// No worker claimed it within its `start_within`.
    NotStartedInTime,
    /// A job lost part-way after a statement that wrote: running it again could do
    /// that work twice.
    NotSafeToRepeat,
    /// The ClickHouse server restarted while running it (it may have crashed on it).
    ServerCrashed,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::ClickhouseError => "CLICKHOUSE_ERROR",
            ErrorCode::ClickhouseUnavailable => "CLICKHOUSE_UNAVAILABLE",
            ErrorCode::ClickhouseProtocol => "CLICKHOUSE_PROTOCOL",
            ErrorCode::UnsupportedByServer => "UNSUPPORTED_BY_SERVER",
            ErrorCode::StorageError => "STORAGE_ERROR",
            ErrorCode::InvalidExecution => "INVALID_EXECUTION",
            ErrorCode::Canceled => "CANCELED",
            ErrorCode::Superseded => "SUPERSEDED",
            ErrorCode::WorkerLost => "WORKER_LOST",
            ErrorCode::ResultUnavailable => "RESULT_UNAVAILABLE",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::NotStartedInTime => "NOT_STARTED_IN_TIME",
            ErrorCode::NotSafeToRepeat => "NOT_SAFE_TO_REPEAT",
            ErrorCode::ServerCrashed => "SERVER_CRASHED",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What went wrong, as stored on a FAILED execution and shown to clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorInfo {
    pub code: ErrorCode,
    pub message: String,
    /// ClickHouse's numeric error code when ClickHouse raised the error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clickhouse_code: Option<i32>,
}

impl ErrorInfo {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorInfo {
        ErrorInfo {
            code,
            message: message.into(),
            clickhouse_code: None,
        }
    }
}

/// A failed attempt, kept on the execution (newest last).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AttemptRecord {
    pub attempt: i32,
    pub worker_id: Option<String>,
    pub at: DateTime<Utc>,
    pub error: ErrorInfo,
}

/// One result column, as `DESCRIBE TABLE (<sql>)` reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub type_: String,
}

/// Where and what the result of a SUCCEEDED execution is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ResultMeta {
    /// Key of the object in the result store.
    pub object_key: String,
    pub format: Format,
    pub bytes: u64,
    /// Number of rows; absent for binary formats Sluice does not decode.
    #[serde(default)]
    pub rows: Option<u64>,
    /// The result's columns: empty for statements without rows, `None` when they
    /// could not be learned (see `worker::run`).
    #[serde(default)]
    pub columns: Option<Vec<Column>>,
    /// For line formats: where rows start, for paging (`?row_offset=&row_limit=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row_index: Option<RowIndex>,
    /// The query had more output than `row_limit`/`byte_limit` let through: what is
    /// stored is its beginning, in whole rows.
    #[serde(default)]
    pub truncated: bool,
}

/// Where rows start in a stored line-format result, every `stride` rows: `offsets[i]` is
/// the byte where row `i * stride` starts (`offsets[0]`: the end of the header lines). A
/// page of rows is one ranged read from the nearest entry (see `api::results`). At most
/// [`RowIndex::MAX_ENTRIES`] entries: the stride doubles as the result grows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RowIndex {
    pub stride: u64,
    pub offsets: Vec<u64>,
}

impl RowIndex {
    pub const MAX_ENTRIES: usize = 1024;
    pub const FIRST_STRIDE: u64 = 1024;
}

/// Live statistics of a running query, from ClickHouse's `system.processes`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Progress {
    pub read_rows: u64,
    pub read_bytes: u64,
    pub total_rows_approx: u64,
    pub elapsed_seconds: f64,
    pub memory_usage: i64,
    /// Bytes of result written to the store so far.
    pub result_bytes: u64,
}

/// One execution as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Execution {
    pub id: Uuid,
    pub tenant: String,
    pub created_by: String,
    pub tier: String,
    pub query_id: String,
    pub query_hash: String,
    pub sql: String,
    pub format: Format,
    pub settings: sqlx::types::Json<BTreeMap<String, String>>,
    pub status: Status,
    pub priority: i16,
    pub run_after: DateTime<Utc>,
    pub attempt: i32,
    pub max_attempts: i32,
    pub worker_id: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub progress: Option<sqlx::types::Json<Progress>>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub result: Option<sqlx::types::Json<ResultMeta>>,
    pub error: Option<sqlx::types::Json<ErrorInfo>>,
    pub collapsed_count: i32,
    pub cancel_requested_at: Option<DateTime<Utc>>,
    pub superseded_by: Option<Uuid>,
    pub attempts: sqlx::types::Json<Vec<AttemptRecord>>,
    /// Query parameters; erased (NULL) once the execution finishes.
    pub parameters: Option<sqlx::types::Json<Secrets>>,
    pub quota_key: Option<String>,
    pub max_running: Option<i32>,
    /// The saved report it runs (see `tasks`), if submitted as one.
    pub task: Option<String>,
    /// The group it belongs to (see `store::groups`).
    pub group_id: Option<Uuid>,
    /// A group member waiting for a place in its group; not claimable until released.
    pub held: bool,
    /// How long its result is kept, when shorter than the tier's retention.
    pub retention_ms: Option<i64>,
    /// The execution whose stored result this one queries as the table `result`.
    pub from_result: Option<Uuid>,
    /// Longest run of one attempt.
    pub timeout_ms: Option<i64>,
    /// Fails NOT_STARTED_IN_TIME if still PENDING then.
    pub start_deadline: Option<DateTime<Utc>>,
    /// The steps of a multi-statement job (see `job`); `sql` then lists its statements.
    pub job: Option<sqlx::types::Json<crate::job::Job>>,
    /// Where its end is POSTed (a completion webhook).
    pub callback_url: Option<String>,
    /// Caps on the stored result (see [`Limits`]).
    pub row_limit: Option<i64>,
    pub byte_limit: Option<i64>,
}

/// Query parameter values: secrets. Their `Debug` shows names only, so no log line or
/// panic message can carry a value.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secrets(pub BTreeMap<String, String>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl Execution {
    /// The ClickHouse query_id of this execution's current attempt. Unique per attempt,
    /// so a retried run never collides with a dead attempt's orphan on the server.
    pub fn clickhouse_query_id(&self) -> String {
        clickhouse_query_id(self.id, self.attempt)
    }

    pub fn limits(&self) -> Limits {
        let cap = |n: Option<i64>| n.and_then(|n| u64::try_from(n).ok());
        Limits {
            rows: cap(self.row_limit),
            bytes: cap(self.byte_limit),
        }
    }
}

pub fn clickhouse_query_id(id: Uuid, attempt: i32) -> String {
    format!("{id}-{attempt}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_match_the_design() {
        use Status::*;
        assert!(Pending.can_become(Running));
        assert!(Running.can_become(Pending));
        assert!(Succeeded.can_become(Expired));
        assert!(!Succeeded.can_become(Running));
        assert!(!Pending.can_become(Succeeded));
        assert!(!Expired.can_become(Pending));
        assert!(!Canceled.can_become(Running));
    }

    #[test]
    fn formats_parse_case_insensitively_with_aliases() {
        assert_eq!(Format::parse("jsoneachrow"), Some(Format::JSONEachRow));
        assert_eq!(
            Format::parse("TSVWithNamesAndTypes"),
            Some(Format::TabSeparatedWithNamesAndTypes)
        );
        assert_eq!(Format::parse("Protobuf"), None);
        assert_eq!(Format::parse("ndjson"), Some(Format::JSONEachRow));
        for f in Format::ALL {
            assert_eq!(Format::parse(f.as_str()), Some(f));
        }
    }

    #[test]
    fn hash_depends_on_everything_that_changes_the_result() {
        let s = BTreeMap::new();
        let base = query_hash(
            "SELECT 1",
            "default",
            Format::JSON,
            &s,
            &s,
            None,
            Limits::default(),
        );
        assert_eq!(
            base,
            query_hash(
                "SELECT 1",
                "default",
                Format::JSON,
                &s,
                &s,
                None,
                Limits::default()
            )
        );
        assert_ne!(
            base,
            query_hash(
                "SELECT 2",
                "default",
                Format::JSON,
                &s,
                &s,
                None,
                Limits::default()
            )
        );
        assert_ne!(
            base,
            query_hash(
                "SELECT 1",
                "vip",
                Format::JSON,
                &s,
                &s,
                None,
                Limits::default()
            )
        );
        assert_ne!(
            base,
            query_hash(
                "SELECT 1",
                "default",
                Format::CSV,
                &s,
                &s,
                None,
                Limits::default()
            )
        );
        let mut s2 = BTreeMap::new();
        s2.insert("max_threads".to_string(), "1".to_string());
        assert_ne!(
            base,
            query_hash(
                "SELECT 1",
                "default",
                Format::JSON,
                &s2,
                &s,
                None,
                Limits::default()
            )
        );
        assert_ne!(
            base,
            query_hash(
                "SELECT 1",
                "default",
                Format::JSON,
                &s,
                &s2,
                None,
                Limits::default()
            )
        );
        assert_ne!(
            base,
            query_hash(
                "SELECT 1",
                "default",
                Format::JSON,
                &s,
                &s,
                Some(Uuid::nil()),
                Limits::default()
            )
        );
        let capped = |rows, bytes| {
            query_hash(
                "SELECT 1",
                "default",
                Format::JSON,
                &s,
                &s,
                None,
                Limits { rows, bytes },
            )
        };
        assert_ne!(base, capped(Some(10), None));
        assert_ne!(base, capped(None, Some(10)));
        assert_ne!(capped(Some(10), None), capped(None, Some(10)));
    }
}
