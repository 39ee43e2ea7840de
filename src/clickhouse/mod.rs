//! Running one query on ClickHouse over HTTP: settings, query_id, the streamed response,
//! mid-stream exceptions, progress from `system.processes`, column metadata, and KILL.
//!
//! Two HTTP clients, each for what it does best:
//! - the result stream goes through `reqwest`, because the worker needs the response
//!   headers (`X-ClickHouse-Exception-Code`, `X-ClickHouse-Exception-Tag`) and must see
//!   the exact bytes ClickHouse sent, to store them untouched and look for an exception at
//!   their end across chunk boundaries (the `clickhouse` crate checks chunk by chunk and
//!   does not know the 18.x form);
//! - small control queries (version, DESCRIBE, progress, KILL) go through the `clickhouse`
//!   crate with typed rows, `?` binding for the query_id, and validation off so they work
//!   on 18.16.
//!
//! The server version is read once per endpoint and decides what the endpoint can do
//! (see [`ServerVersion`]). This module never touches Postgres or the object store.

pub mod exception;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::OnceCell;

use crate::config::TierConfig;
use crate::execution::{Column, Format};
pub use exception::{ServerException, Tail};

/// URL parameters Sluice sets itself; neither tiers nor clients may set them.
pub const RESERVED_PARAMS: &[&str] = &[
    "query",
    "query_id",
    "default_format",
    "database",
    "user",
    "password",
    "quota_key",
    "session_id",
    "session_timeout",
    "session_check",
    "compress",
    "decompress",
    "enable_http_compression",
    "buffer_size",
    "wait_end_of_query",
    "send_progress_in_http_headers",
    "http_write_exception_in_output_format",
];

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// ClickHouse answered with an exception.
    #[error("{}", .0.message)]
    Server(ServerException),
    /// ClickHouse could not be reached or the connection broke.
    #[error("cannot reach ClickHouse: {0}")]
    Transport(String),
    /// The server cannot do what was asked (e.g. a format newer than it).
    #[error("{0}")]
    Unsupported(String),
    #[error("unexpected answer from ClickHouse: {0}")]
    Protocol(String),
}

/// ClickHouse error codes that mean "try again later": the server, not the query, is
/// the problem.
const TRANSIENT_CODES: &[i32] = &[
    202, // TOO_MANY_SIMULTANEOUS_QUERIES
    203, // NO_FREE_CONNECTION
    209, // SOCKET_TIMEOUT
    210, // NETWORK_ERROR
    242, // TABLE_IS_READ_ONLY (a replica lost its keeper session)
    319, // UNKNOWN_STATUS_OF_INSERT
    999, // KEEPER_EXCEPTION
];
const MEMORY_LIMIT_EXCEEDED: i32 = 241;

impl EngineError {
    /// Whether the same query may succeed later: connection failures, an overloaded or
    /// restarting server, the server's (not the query's) memory limit. SQL errors and
    /// the query's own limits are final.
    pub fn is_transient(&self) -> bool {
        match self {
            EngineError::Transport(_) => true,
            EngineError::Server(x) => match x.code {
                Some(code) if TRANSIENT_CODES.contains(&code) => true,
                // "Memory limit (total) exceeded" is the server's; "(for query)" and
                // "(for user)" are the query's own and would fail again.
                Some(MEMORY_LIMIT_EXCEEDED) => x.message.contains("(total)"),
                _ => false,
            },
            EngineError::Unsupported(_) | EngineError::Protocol(_) => false,
        }
    }

    fn from_control(e: clickhouse::error::Error) -> EngineError {
        use clickhouse::error::Error as E;
        match e {
            E::BadResponse(text) => EngineError::Server(ServerException {
                code: exception::parse_code(&text),
                message: text,
            }),
            E::Network(e) => EngineError::Transport(e.to_string()),
            E::TimedOut => EngineError::Transport("timed out".into()),
            other => EngineError::Protocol(other.to_string()),
        }
    }

    fn from_http(e: reqwest::Error) -> EngineError {
        EngineError::Transport(error_chain(&e))
    }
}

/// reqwest's top-level message hides the cause ("error sending request"): include it.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// `major.minor` of a ClickHouse server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerVersion {
    pub major: u32,
    pub minor: u32,
}

impl ServerVersion {
    pub fn parse(text: &str) -> Option<ServerVersion> {
        let mut parts = text.trim().split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(ServerVersion { major, minor })
    }

    pub fn at_least(self, (major, minor): (u32, u32)) -> bool {
        (self.major, self.minor) >= (major, minor)
    }

    /// Whether this server can write `format`; an error that says why not.
    pub fn check_format(self, format: Format) -> Result<(), EngineError> {
        let (major, minor) = format.min_server_version();
        if self.at_least((major, minor)) {
            Ok(())
        } else {
            Err(EngineError::Unsupported(format!(
                "format {format} needs ClickHouse >= {major}.{minor}; this tier's server is {self}"
            )))
        }
    }
}

impl std::fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Live statistics of one query.
#[derive(Debug, Clone, Deserialize, clickhouse::Row)]
pub struct ProcessStats {
    pub read_rows: u64,
    pub read_bytes: u64,
    pub total_rows_approx: u64,
    pub elapsed: f64,
    pub memory_usage: i64,
}

/// One tier's ClickHouse server.
#[derive(Clone)]
pub struct Endpoint {
    url: String,
    user: String,
    password: String,
    database: Option<String>,
    /// The tier's settings as URL parameters, `readonly` last: ClickHouse applies URL
    /// settings in order, and after `readonly=1` it refuses to change any other.
    settings: Vec<(String, String)>,
    http: reqwest::Client,
    control: clickhouse::Client,
    version: std::sync::Arc<OnceCell<ServerVersion>>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").field("url", &self.url).finish()
    }
}

/// How long a control query may take before it counts as a transport failure.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

impl Endpoint {
    pub fn new(tier: &TierConfig) -> Result<Endpoint, EngineError> {
        let mut settings: Vec<(String, String)> = tier
            .settings
            .iter()
            .filter(|(k, _)| k.as_str() != "readonly")
            .map(|(k, v)| (k.clone(), v.to_param()))
            .collect();
        let readonly = tier
            .settings
            .get("readonly")
            .map(|v| v.to_param())
            .unwrap_or_else(|| "1".to_string());
        settings.push(("readonly".into(), readonly));

        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| EngineError::Protocol(e.to_string()))?;
        let mut control = clickhouse::Client::default()
            .with_url(&tier.clickhouse_url)
            .with_user(&tier.user)
            .with_password(&tier.password)
            .with_compression(clickhouse::Compression::None)
            .with_validation(false);
        if let Some(db) = &tier.database {
            control = control.with_database(db);
        }
        Ok(Endpoint {
            url: tier.clickhouse_url.clone(),
            user: tier.user.clone(),
            password: tier.password.clone(),
            database: tier.database.clone(),
            settings,
            http,
            control,
            version: Default::default(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The server's version, asked once and then remembered.
    pub async fn version(&self) -> Result<ServerVersion, EngineError> {
        self.version
            .get_or_try_init(|| async {
                let text: String =
                    timeout(self.control.query("SELECT version()").fetch_one::<String>()).await?;
                ServerVersion::parse(&text).ok_or_else(|| {
                    EngineError::Protocol(format!("cannot parse server version `{text}`"))
                })
            })
            .await
            .copied()
    }

    /// Result columns of `sql` without running it. Also rejects SQL ClickHouse cannot
    /// parse or resolve (unknown table, column, function) before anything is streamed.
    pub async fn describe(
        &self,
        sql: &str,
        client_settings: &BTreeMap<String, String>,
    ) -> Result<Vec<Column>, EngineError> {
        #[derive(Deserialize)]
        struct Described {
            name: String,
            #[serde(rename = "type")]
            type_: String,
        }
        // DESCRIBE's column set differs between versions; JSONEachRow lets us read
        // just the two we need. Sent with the tier's settings so readonly applies.
        let body = format!("DESCRIBE TABLE ({})", strip_trailing_semicolons(sql));
        let response = self
            .request(&body, None, "JSONEachRow", client_settings)
            .send()
            .await
            .map_err(EngineError::from_http)?;
        let response = check_status(response).await?;
        let bytes = response.bytes().await.map_err(EngineError::from_http)?;
        if let Some(e) = Tail::from_bytes(bytes.clone()).exception(None) {
            return Err(EngineError::Server(e));
        }
        bytes
            .split(|&b| b == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| {
                serde_json::from_slice::<Described>(line)
                    .map(|d| Column {
                        name: d.name,
                        type_: d.type_,
                    })
                    .map_err(|e| EngineError::Protocol(format!("DESCRIBE output: {e}")))
            })
            .collect()
    }

    /// Starts `sql` and returns the streaming response once ClickHouse has answered
    /// with 200; an error status becomes [`EngineError::Server`].
    pub async fn stream(
        &self,
        sql: &str,
        query_id: &str,
        format: Format,
        client_settings: &BTreeMap<String, String>,
    ) -> Result<ResultStream, EngineError> {
        let response = self
            .request(
                strip_trailing_semicolons(sql),
                Some(query_id),
                format.as_str(),
                client_settings,
            )
            .send()
            .await
            .map_err(EngineError::from_http)?;
        let response = check_status(response).await?;
        let exception_tag = response
            .headers()
            .get("X-ClickHouse-Exception-Tag")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        Ok(ResultStream {
            response,
            exception_tag,
        })
    }

    /// The URL-encoded request for one query: reserved parameters, then the tier's
    /// settings with the client's on top, `readonly` last.
    fn request(
        &self,
        sql: &str,
        query_id: Option<&str>,
        format: &str,
        client_settings: &BTreeMap<String, String>,
    ) -> reqwest::RequestBuilder {
        let mut params: Vec<(&str, &str)> = vec![("default_format", format)];
        if let Some(id) = query_id {
            params.push(("query_id", id));
        }
        if let Some(db) = &self.database {
            params.push(("database", db));
        }
        let (readonly, tier): (Vec<_>, Vec<_>) =
            self.settings.iter().partition(|(k, _)| k == "readonly");
        for (k, v) in tier {
            if !client_settings.contains_key(k) {
                params.push((k, v));
            }
        }
        for (k, v) in client_settings {
            params.push((k, v));
        }
        for (k, v) in readonly {
            params.push((k, v));
        }
        self.http
            .post(&self.url)
            .query(&params)
            .basic_auth(&self.user, Some(&self.password))
            .body(sql.to_string())
    }

    /// Statistics of a running query, `None` once it is gone from `system.processes`.
    pub async fn progress(&self, query_id: &str) -> Result<Option<ProcessStats>, EngineError> {
        timeout(
            self.control
                .query(
                    "SELECT read_rows, read_bytes, total_rows_approx, elapsed, memory_usage \
                     FROM system.processes WHERE query_id = ?",
                )
                .bind(query_id)
                .fetch_optional::<ProcessStats>(),
        )
        .await
    }

    /// Whether a query with this id is running on the server.
    pub async fn is_running(&self, query_id: &str) -> Result<bool, EngineError> {
        Ok(self.progress(query_id).await?.is_some())
    }

    /// Stops one query and waits until the server has stopped it. Never broader than one
    /// query_id: other clients' queries share the server.
    pub async fn kill(&self, query_id: &str) -> Result<(), EngineError> {
        timeout(
            self.control
                .query("KILL QUERY WHERE query_id = ? SYNC")
                .bind(query_id)
                .execute(),
        )
        .await
    }
}

async fn timeout<T>(
    f: impl Future<Output = Result<T, clickhouse::error::Error>>,
) -> Result<T, EngineError> {
    match tokio::time::timeout(CONTROL_TIMEOUT, f).await {
        Ok(r) => r.map_err(EngineError::from_control),
        Err(_) => Err(EngineError::Transport(format!(
            "no answer within {CONTROL_TIMEOUT:?}"
        ))),
    }
}

/// ClickHouse rejects `SELECT 1;` wrapped in `DESCRIBE TABLE (...)`; a trailing `;` is
/// harmless to the user, so drop it everywhere.
fn strip_trailing_semicolons(sql: &str) -> &str {
    sql.trim_end().trim_end_matches(';').trim_end()
}

/// Turns a non-200 answer into the exception it carries.
async fn check_status(response: reqwest::Response) -> Result<reqwest::Response, EngineError> {
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status();
    let header_code = response
        .headers()
        .get("X-ClickHouse-Exception-Code")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    // Error bodies are short; read a bounded amount.
    let mut body = Vec::new();
    let mut response = response;
    while let Some(chunk) = response.chunk().await.map_err(EngineError::from_http)? {
        body.extend_from_slice(&chunk);
        if body.len() > exception::TAIL_BYTES {
            break;
        }
    }
    let message = String::from_utf8_lossy(&body).trim().to_string();
    let message = if message.is_empty() {
        format!("HTTP {status}")
    } else {
        message
    };
    Err(EngineError::Server(ServerException {
        code: header_code.or_else(|| exception::parse_code(&message)),
        message,
    }))
}

/// A query's response body, chunk by chunk, exactly as ClickHouse sent it.
pub struct ResultStream {
    response: reqwest::Response,
    exception_tag: Option<String>,
}

impl ResultStream {
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, EngineError> {
        self.response.chunk().await.map_err(EngineError::from_http)
    }

    /// The tag 25.11+ servers use to frame a mid-stream exception.
    pub fn exception_tag(&self) -> Option<&str> {
        self.exception_tag.as_deref()
    }
}

impl Tail {
    pub fn from_bytes(bytes: Bytes) -> Tail {
        let mut t = Tail::default();
        t.push(bytes);
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: i32, message: &str) -> EngineError {
        EngineError::Server(ServerException {
            code: Some(code),
            message: message.into(),
        })
    }

    #[test]
    fn transient_errors_are_the_servers_not_the_querys() {
        assert!(EngineError::Transport("connection refused".into()).is_transient());
        assert!(server(202, "Too many simultaneous queries").is_transient());
        assert!(server(241, "Memory limit (total) exceeded: would use 10 GiB").is_transient());
        assert!(!server(241, "Memory limit (for query) exceeded").is_transient());
        assert!(!server(62, "Syntax error").is_transient());
        assert!(!server(60, "Unknown table").is_transient());
        assert!(!EngineError::Unsupported("Parquet".into()).is_transient());
    }

    #[test]
    fn versions_parse_and_compare() {
        let v = ServerVersion::parse("18.16.1").unwrap();
        assert!(v.at_least((18, 16)) && !v.at_least((19, 1)));
        assert!(v.check_format(Format::Parquet).is_err());
        assert!(
            ServerVersion::parse("26.9.2.1")
                .unwrap()
                .check_format(Format::Parquet)
                .is_ok()
        );
    }
}
