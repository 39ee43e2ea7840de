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
//! A tier may list several URLs (replicas). Work goes to the last one that answered;
//! when a connection cannot be made, the next is tried. Only a failure to connect moves
//! on: a query that may have started is never sent twice by this module (the worker's
//! retry, under a new query_id, decides that). KILL goes to every URL, since a retried
//! attempt may have run anywhere.
//!
//! Query parameters are sent as `param_<name>`. Their values are secrets: they are never
//! logged, and any echo of a value in a server message is masked before the message
//! leaves this module (see [`Query::redact`]).
//!
//! The server's version and output formats are read once per URL and decide what the
//! endpoint can do (see [`ServerInfo`]). This module never touches Postgres or the object store.

pub mod exception;
pub mod header;

use std::collections::BTreeMap;
use std::time::Duration;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::OnceCell;

use crate::config::TierConfig;
use crate::execution::{Column, ErrorCode, ErrorInfo, Format};
pub use exception::{ServerException, Tail};
pub use header::HeaderReader;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// ClickHouse answered with an exception.
    #[error("{}", .0.message)]
    Server(ServerException),
    /// No connection could be made: the query was not sent, another URL may be tried.
    #[error("cannot reach ClickHouse: {0}")]
    Connect(String),
    /// The connection broke or timed out: the query may have started.
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
    /// What an execution records of this error.
    pub fn info(self) -> ErrorInfo {
        match self {
            EngineError::Server(x) => ErrorInfo {
                code: ErrorCode::ClickhouseError,
                message: x.message,
                clickhouse_code: x.code,
            },
            EngineError::Transport(m) | EngineError::Connect(m) => ErrorInfo::new(
                ErrorCode::ClickhouseUnavailable,
                format!("cannot reach ClickHouse: {m}"),
            ),
            EngineError::Unsupported(m) => ErrorInfo::new(ErrorCode::UnsupportedByServer, m),
            EngineError::Protocol(m) => ErrorInfo::new(ErrorCode::ClickhouseProtocol, m),
        }
    }

    /// Whether the same query may succeed later: connection failures, an overloaded or
    /// restarting server, the server's (not the query's) memory limit. SQL errors and
    /// the query's own limits are final.
    pub fn is_transient(&self) -> bool {
        match self {
            EngineError::Transport(_) | EngineError::Connect(_) => true,
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
            // Control queries are idempotent: any network failure may move to the next URL.
            E::Network(e) => EngineError::Connect(e.to_string()),
            E::TimedOut => EngineError::Transport("timed out".into()),
            other => EngineError::Protocol(other.to_string()),
        }
    }

    /// The URL is left out of the message: it carries the query parameters.
    fn from_http(e: reqwest::Error) -> EngineError {
        let e = e.without_url();
        if e.is_connect() {
            EngineError::Connect(error_chain(&e))
        } else {
            EngineError::Transport(error_chain(&e))
        }
    }

    /// Whether another URL of the tier may be tried.
    fn is_connect(&self) -> bool {
        matches!(self, EngineError::Connect(_))
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

    /// Query parameters (`{name:Type}` with `param_<name>`) came with 19.x; 18.x takes
    /// `param_x` for an unknown setting.
    pub fn check_parameters(self) -> Result<(), EngineError> {
        if self.major >= 19 {
            Ok(())
        } else {
            Err(EngineError::Unsupported(format!(
                "query parameters are not supported by this server (ClickHouse {self}); \
                 submit without `parameters` or use a tier on a newer server"
            )))
        }
    }
}

/// What one server is and can do, asked once per URL.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub version: ServerVersion,
    /// The output formats it writes (`system.formats`).
    formats: Arc<std::collections::HashSet<String>>,
    /// The input formats it reads.
    inputs: Arc<std::collections::HashSet<String>>,
}

impl ServerInfo {
    /// Whether this server writes `format`; an error that says why not.
    pub fn check_format(&self, format: Format) -> Result<(), EngineError> {
        if self.formats.contains(format.as_str()) {
            Ok(())
        } else {
            Err(EngineError::Unsupported(format!(
                "format {format} is not one this tier's server (ClickHouse {}) writes",
                self.version
            )))
        }
    }

    pub fn check_parameters(&self) -> Result<(), EngineError> {
        self.version.check_parameters()
    }

    /// Whether this server reads `format` (external data of a follow-up query).
    pub fn check_input_format(&self, format: Format) -> Result<(), EngineError> {
        if self.inputs.contains(format.as_str()) {
            Ok(())
        } else {
            Err(EngineError::Unsupported(format!(
                "a result stored as {format} cannot be queried: this tier's server \
                 (ClickHouse {}) does not read that format",
                self.version
            )))
        }
    }
}

impl std::fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Which rows of an external table a request sends.
#[derive(Clone, Copy)]
enum Data {
    Full,
    Empty,
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

/// What to run: the SQL and everything that travels with it.
#[derive(Clone, Copy)]
pub struct Query<'a> {
    pub sql: &'a str,
    pub format: Format,
    /// The client's settings (already validated against the tier).
    pub settings: &'a BTreeMap<String, String>,
    /// Query parameter values by name (secrets).
    pub parameters: &'a BTreeMap<String, String>,
    /// The values are already in `sql` as literals (a server without query
    /// parameters): nothing is sent as `param_<name>`; messages are still redacted.
    pub inline_parameters: bool,
    pub quota_key: Option<&'a str>,
    /// A table sent along with the query (a follow-up query on a stored result).
    pub external: Option<&'a External<'a>>,
    /// The ClickHouse session it runs in (a job's statements share one, so temporary
    /// tables carry over); none for a single statement.
    pub session: Option<&'a str>,
}

/// Opens the rows of an external table, once per request that sends them.
pub type OpenData<'a> = dyn Fn() -> futures::future::BoxFuture<
        'static,
        Result<futures::stream::BoxStream<'static, Result<Bytes, std::io::Error>>, EngineError>,
    > + Send
    + Sync
    + 'a;

/// A table sent with a query as ClickHouse's external data (an HTTP multipart part
/// named after the table, with `<name>_structure` and `<name>_format` in the URL): the
/// query reads it like any table, and its bytes stream from `open` to the server
/// without being held in memory.
pub struct External<'a> {
    pub name: &'a str,
    /// `name Type, ...` (see [`external_structure`]).
    pub structure: &'a str,
    pub format: Format,
    pub open: &'a OpenData<'a>,
}

/// The `structure` of an external table with `columns`. Servers before 20.x split it
/// naively on spaces and commas, so there names must be plain identifiers and types
/// free of spaces and commas (`Tuple(a, b)` or `Decimal(9, 2)` cannot be sent); newer
/// ones parse a column list, so names are quoted.
pub fn external_structure(columns: &[Column], version: ServerVersion) -> Result<String, String> {
    let modern = version.at_least((20, 1));
    let mut parts = Vec::with_capacity(columns.len());
    for c in columns {
        if modern {
            parts.push(format!(
                "`{}` {}",
                c.name.replace('\\', "\\\\").replace('`', "\\`"),
                c.type_
            ));
        } else {
            let plain = !c.name.is_empty()
                && c.name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
                && !c.name.starts_with(|ch: char| ch.is_ascii_digit());
            if !plain || c.type_.contains([' ', ',']) {
                return Err(format!(
                    "ClickHouse {version} cannot take column `{}` {} as external data (it \
                     needs plain names and types without spaces or commas)",
                    c.name, c.type_
                ));
            }
            parts.push(format!("{} {}", c.name, c.type_));
        }
    }
    Ok(parts.join(", "))
}

impl Query<'_> {
    /// `message` with every parameter value masked (see [`Redactor`]).
    pub fn redact(&self, message: &str) -> String {
        Redactor::new(self.parameters).apply(message)
    }

    fn redact_error(&self, e: EngineError) -> EngineError {
        Redactor::new(self.parameters).error(e)
    }
}

/// Masks query parameter values in server messages: servers quote the offending value in
/// errors such as "Value ... cannot be parsed". Values of 4 or more characters are
/// masked, as sent and in their escaped form, longest first; shorter ones are left
/// alone, or a message about `Code: 42` would lose its digits.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    values: Vec<String>,
}

impl Redactor {
    pub fn new(parameters: &BTreeMap<String, String>) -> Redactor {
        let mut values = Vec::new();
        for v in parameters.values().filter(|v| v.len() >= 4) {
            // As sent, escaped as a parameter, and quoted as a literal (18.x).
            let quoted = crate::sql::types::quote(v);
            for form in [escape_parameter(v), quoted[1..quoted.len() - 1].to_string()] {
                if form != *v && !values.contains(&form) {
                    values.push(form);
                }
            }
            values.push(v.clone());
        }
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        Redactor { values }
    }

    pub fn apply(&self, message: &str) -> String {
        let mut out = message.to_string();
        for v in &self.values {
            out = out.replace(v.as_str(), "[redacted]");
        }
        out
    }

    /// `e` with its message redacted.
    pub fn error(&self, e: EngineError) -> EngineError {
        if self.values.is_empty() {
            return e;
        }
        match e {
            EngineError::Server(x) => EngineError::Server(ServerException {
                code: x.code,
                message: self.apply(&x.message),
            }),
            EngineError::Connect(m) => EngineError::Connect(self.apply(&m)),
            EngineError::Transport(m) => EngineError::Transport(self.apply(&m)),
            EngineError::Protocol(m) => EngineError::Protocol(self.apply(&m)),
            other => other,
        }
    }
}

/// One URL of a tier.
struct Node {
    url: String,
    control: clickhouse::Client,
    server: OnceCell<ServerInfo>,
}

/// One tier's ClickHouse: one or several URLs.
#[derive(Clone)]
pub struct Endpoint {
    nodes: Arc<Vec<Node>>,
    /// Index of the URL that last answered; work starts there.
    preferred: Arc<AtomicUsize>,
    user: String,
    password: String,
    database: Option<String>,
    /// The tier's settings as URL parameters, `readonly` last: ClickHouse applies URL
    /// settings in order, and after `readonly=1` it refuses to change any other.
    settings: Vec<(String, String)>,
    send_quota_key: bool,
    http: reqwest::Client,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<&str> = self.nodes.iter().map(|n| n.url.as_str()).collect();
        f.debug_struct("Endpoint").field("urls", &urls).finish()
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

        // A server closes a keep-alive connection idle for `keep_alive_timeout` (3 s by
        // default); a request sent on it just then fails with "connection closed before
        // message completed" (seen in the bench on 18.16: a DESCRIBE lost its columns).
        // Connections idle for 2 s are not reused, so that race cannot happen.
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| EngineError::Protocol(e.to_string()))?;
        let nodes = tier
            .clickhouse_url
            .list()
            .into_iter()
            .map(|url| {
                // Sluice's own queries run as the monitor user, never as the tenants'.
                let mut control = clickhouse::Client::default()
                    .with_url(&url)
                    .with_user(tier.monitor_user.as_deref().unwrap_or(&tier.user))
                    .with_password(
                        tier.monitor_password
                            .as_deref()
                            .or(tier.monitor_user.as_ref().map(|_| ""))
                            .unwrap_or(&tier.password),
                    )
                    .with_compression(clickhouse::Compression::None)
                    .with_validation(false);
                if let Some(db) = &tier.database {
                    control = control.with_database(db);
                }
                Node {
                    url,
                    control,
                    server: OnceCell::new(),
                }
            })
            .collect();
        Ok(Endpoint {
            nodes: Arc::new(nodes),
            preferred: Arc::default(),
            user: tier.user.clone(),
            password: tier.password.clone(),
            database: tier.database.clone(),
            settings,
            send_quota_key: tier.send_quota_key,
            http,
        })
    }

    /// The URL work goes to now.
    pub fn url(&self) -> &str {
        &self.nodes[self.preferred_index()].url
    }

    /// Index of the URL work goes to now.
    pub fn preferred(&self) -> usize {
        self.preferred_index()
    }

    fn preferred_index(&self) -> usize {
        self.preferred.load(Ordering::Relaxed) % self.nodes.len().max(1)
    }

    /// Runs `f` on the preferred URL, moving on to the next ones while connections
    /// cannot be made. Returns the index of the URL that answered.
    async fn on_any<'s, T, F, Fut>(&'s self, f: F) -> Result<(usize, T), EngineError>
    where
        F: Fn(&'s Node) -> Fut,
        Fut: Future<Output = Result<T, EngineError>>,
    {
        let start = self.preferred_index();
        let n = self.nodes.len();
        let mut last = EngineError::Connect("no ClickHouse URL configured".into());
        for i in 0..n {
            let index = (start + i) % n;
            match f(&self.nodes[index]).await {
                Err(e) if e.is_connect() => {
                    if n > 1 {
                        tracing::warn!(url = %self.nodes[index].url, error = %e, "ClickHouse URL unreachable; trying the next");
                    }
                    last = e;
                }
                Ok(v) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok((index, v));
                }
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// The server's version and output formats, asked once per URL and remembered.
    pub async fn server(&self) -> Result<ServerInfo, EngineError> {
        let (_, info) = self
            .on_any(|node| async move {
                node.server
                    .get_or_try_init(|| async {
                        let text: String =
                            timeout(node.control.query("SELECT version()").fetch_one::<String>())
                                .await?;
                        let version = ServerVersion::parse(&text).ok_or_else(|| {
                            EngineError::Protocol(format!("cannot parse server version `{text}`"))
                        })?;
                        let formats: Vec<(String, u8, u8)> = timeout(
                            node.control
                                .query("SELECT name, is_input, is_output FROM system.formats")
                                .fetch_all::<(String, u8, u8)>(),
                        )
                        .await?;
                        let named = |pick: fn(&(String, u8, u8)) -> bool| {
                            Arc::new(
                                formats
                                    .iter()
                                    .filter(|f| pick(f))
                                    .map(|f| f.0.clone())
                                    .collect(),
                            )
                        };
                        Ok::<_, EngineError>(ServerInfo {
                            version,
                            formats: named(|f| f.2 == 1),
                            inputs: named(|f| f.1 == 1),
                        })
                    })
                    .await
                    .cloned()
            })
            .await?;
        Ok(info)
    }

    /// Result columns of a query without running it: `DESCRIBE TABLE (<text>)`, where
    /// `text` is the query without its FORMAT clause. The closing parenthesis goes on a
    /// line of its own, so a trailing `--` comment cannot swallow it. Sent with the
    /// tier's settings, so readonly applies.
    pub async fn describe(&self, query: Query<'_>, text: &str) -> Result<Vec<Column>, EngineError> {
        #[derive(Deserialize)]
        struct Described {
            name: String,
            #[serde(rename = "type")]
            type_: String,
        }
        // DESCRIBE's column set differs between versions; JSONEachRow lets us read
        // just the two we need.
        let bytes = self
            .ask(
                query,
                &format!("DESCRIBE TABLE (\n{text}\n)"),
                "JSONEachRow",
            )
            .await?;
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

    /// Whether the server can parse `text` (the query without its FORMAT clause), asked
    /// with `EXPLAIN AST` (servers from 20.x): nothing runs. Sent as the tier's user with
    /// the tier's settings.
    pub async fn explain(&self, query: Query<'_>, text: &str) -> Result<(), EngineError> {
        self.ask(query, &format!("EXPLAIN AST\n{text}"), "TabSeparated")
            .await
            .map(drop)
    }

    /// A small answer to `body`, sent with `query`'s settings, parameters and external
    /// table (described empty: a control statement needs its columns only), or the
    /// server's error (redacted).
    async fn ask(&self, query: Query<'_>, body: &str, format: &str) -> Result<Bytes, EngineError> {
        let (_, bytes) = self
            .on_any(|node| async move {
                let response = self
                    .send(node, body, None, format, query, Data::Empty)
                    .await?;
                let response = check_status(response).await?;
                response.bytes().await.map_err(EngineError::from_http)
            })
            .await
            .map_err(|e| query.redact_error(e))?;
        match Tail::from_bytes(bytes.clone()).exception(None) {
            Some(e) => Err(query.redact_error(EngineError::Server(e))),
            None => Ok(bytes),
        }
    }

    /// Starts the query and returns the streaming response once ClickHouse has answered
    /// with 200; an error status becomes [`EngineError::Server`].
    pub async fn stream(
        &self,
        query: Query<'_>,
        query_id: &str,
    ) -> Result<ResultStream, EngineError> {
        let sql = query.sql;
        let (node, response) = self
            .on_any(|node| async move {
                let response = self
                    .send(
                        node,
                        sql,
                        Some(query_id),
                        query.format.as_str(),
                        query,
                        Data::Full,
                    )
                    .await?;
                check_status(response).await
            })
            .await
            .map_err(|e| query.redact_error(e))?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        };
        let exception_tag = header("X-ClickHouse-Exception-Tag");
        let summary = header("X-ClickHouse-Summary").and_then(|s| Summary::parse(&s));
        Ok(ResultStream {
            response,
            exception_tag,
            summary,
            node,
            tail: Tail::default(),
            redactor: Redactor::new(query.parameters),
        })
    }

    /// Sends one query: in the body, or, with an external table, in the URL beside the
    /// table's multipart body (whose data is opened here, once per request, or sent
    /// empty for a DESCRIBE).
    async fn send(
        &self,
        node: &Node,
        sql: &str,
        query_id: Option<&str>,
        format: &str,
        query: Query<'_>,
        data: Data,
    ) -> Result<reqwest::Response, EngineError> {
        let request = self.request(node, query_id, format, query);
        let request = match query.external {
            None => request.body(sql.to_string()),
            Some(external) => {
                let boundary = format!("sluice-{}", uuid::Uuid::new_v4().simple());
                let head = format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"{0}\"; \
                     filename=\"{0}\"\r\nContent-Type: application/octet-stream\r\n\r\n",
                    external.name
                );
                let tail = format!("\r\n--{boundary}--\r\n");
                // No rows is not a valid file in every format (Parquet), but is one in
                // TabSeparated.
                let (rows, data_format) = match data {
                    Data::Full => ((external.open)().await?, external.format),
                    Data::Empty => (futures::stream::empty().boxed(), Format::TabSeparated),
                };
                let body =
                    futures::stream::once(
                        async move { Ok::<_, std::io::Error>(Bytes::from(head)) },
                    )
                    .chain(rows)
                    .chain(futures::stream::once(async move { Ok(Bytes::from(tail)) }));
                request
                    .query(&[
                        ("query", sql),
                        (&format!("{}_structure", external.name), external.structure),
                        (&format!("{}_format", external.name), data_format.as_str()),
                    ])
                    .header(
                        reqwest::header::CONTENT_TYPE,
                        format!("multipart/form-data; boundary={boundary}"),
                    )
                    .body(reqwest::Body::wrap_stream(body))
            }
        };
        request.send().await.map_err(EngineError::from_http)
    }

    /// The URL-encoded request for one query, without its body: reserved parameters,
    /// the tier's settings with the client's on top, query parameters, and `readonly`
    /// last.
    fn request(
        &self,
        node: &Node,
        query_id: Option<&str>,
        format: &str,
        query: Query<'_>,
    ) -> reqwest::RequestBuilder {
        let mut params: Vec<(String, String)> = vec![("default_format".into(), format.into())];
        if let Some(id) = query_id {
            params.push(("query_id".into(), id.into()));
        }
        if let Some(db) = &self.database {
            params.push(("database".into(), db.clone()));
        }
        if let Some(session) = query.session {
            params.push(("session_id".into(), session.into()));
        }
        if let Some(q) = query.quota_key.filter(|_| self.send_quota_key) {
            params.push(("quota_key".into(), q.into()));
        }
        let (readonly, tier): (Vec<_>, Vec<_>) =
            self.settings.iter().partition(|(k, _)| k == "readonly");
        for (k, v) in tier {
            if !query.settings.contains_key(k) {
                params.push((k.clone(), v.clone()));
            }
        }
        for (k, v) in query.settings {
            params.push((k.clone(), v.clone()));
        }
        if !query.inline_parameters {
            let types = parameter_types(query.sql);
            for (name, value) in query.parameters {
                params.push((
                    format!("param_{name}"),
                    parameter_value(types.get(name), value),
                ));
            }
        }
        for (k, v) in readonly {
            params.push((k.clone(), v.clone()));
        }
        self.http
            .post(&node.url)
            .query(&params)
            .basic_auth(&self.user, Some(&self.password))
    }

    /// What the tier's user may do that a tenant's SQL must not: each probe is a
    /// statement ClickHouse answers with ACCESS_DENIED (497) or READONLY (164), or an
    /// unknown function, when the user is restricted; anything else (success, or a
    /// failure past the privilege check) means the user has the privilege. Returns the
    /// capabilities found, named for people; an error when the tier's user cannot run a
    /// plain query with the tier's settings.
    pub async fn dangerous_privileges(&self) -> Result<Vec<&'static str>, EngineError> {
        const DENIED: &[i32] = &[497, 164, 46];
        let probe_id = format!("sluice-privilege-probe-{}", uuid::Uuid::new_v4());
        let probes: [(&str, String); 6] = [
            (
                "read host files (file())",
                "SELECT * FROM file('sluice_privilege_probe', 'TSV', 'x String') LIMIT 0".into(),
            ),
            (
                "reach URLs (url())",
                "SELECT * FROM url('http://127.0.0.1:9/', 'TSV', 'x String') LIMIT 0".into(),
            ),
            (
                "reach other servers (remote())",
                "SELECT * FROM remote('127.0.0.1:9', system.one) LIMIT 0".into(),
            ),
            (
                "reach databases (postgresql())",
                "SELECT * FROM postgresql('127.0.0.1:9', 'd', 't', 'u', 'p') LIMIT 0".into(),
            ),
            (
                "read other queries (system.processes)",
                "SELECT count() FROM system.processes".into(),
            ),
            (
                "kill queries (KILL QUERY)",
                format!("KILL QUERY WHERE query_id = '{probe_id}' SYNC"),
            ),
        ];
        let empty = BTreeMap::new();
        let plain = |sql: &'static str| Query {
            sql,
            format: Format::TabSeparated,
            settings: &empty,
            parameters: &empty,
            inline_parameters: false,
            quota_key: None,
            external: None,
            session: None,
        };
        // The user must be able to run something at all with the tier's settings.
        self.run_as_tier_user(plain("SELECT 1")).await?;
        let mut found = Vec::new();
        for (capability, sql) in &probes {
            let mut query = plain("");
            query.sql = sql;
            match self.run_as_tier_user(query).await {
                Ok(()) => found.push(*capability),
                Err(EngineError::Server(x)) if x.code.is_some_and(|c| DENIED.contains(&c)) => {}
                Err(EngineError::Server(_)) => found.push(*capability),
                Err(e) => return Err(e),
            }
        }
        Ok(found)
    }

    /// Runs `query` as the tier's user and reads the answer whole (small answers only).
    async fn run_as_tier_user(&self, query: Query<'_>) -> Result<(), EngineError> {
        let (_, body) = self
            .on_any(|node| async move {
                let response = self
                    .send(
                        node,
                        query.sql,
                        None,
                        query.format.as_str(),
                        query,
                        Data::Full,
                    )
                    .await?;
                let response = check_status(response).await?;
                response.bytes().await.map_err(EngineError::from_http)
            })
            .await?;
        match Tail::from_bytes(body).exception(None) {
            Some(x) => Err(EngineError::Server(x)),
            None => Ok(()),
        }
    }

    /// Whether the server at URL `node` started after `since` (so it went away and came
    /// back meanwhile: a crash, most likely). Asks `uptime()` until the server answers
    /// or `wait` has passed; `None` when it did not answer.
    pub async fn restarted_since(
        &self,
        node: usize,
        since: std::time::SystemTime,
        wait: Duration,
    ) -> Option<bool> {
        let node = self.nodes.get(node)?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let asked = tokio::time::timeout(
                Duration::from_secs(2),
                node.control.query("SELECT uptime()").fetch_one::<u32>(),
            )
            .await;
            if let Ok(Ok(uptime)) = asked {
                // uptime() counts whole seconds, so a server that has been up for less
                // than the time since `since` (to the second) may have started just
                // before it; with the connection broken meanwhile, a restart is what
                // it most likely means.
                let up_for = since.elapsed().unwrap_or_default();
                return Some(f64::from(uptime) < up_for.as_secs_f64());
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Statistics of a running query on URL `node`, `None` once it is gone from
    /// `system.processes`.
    pub async fn progress(
        &self,
        node: usize,
        query_id: &str,
    ) -> Result<Option<ProcessStats>, EngineError> {
        let Some(node) = self.nodes.get(node) else {
            return Ok(None);
        };
        timeout(
            node.control
                .query(
                    "SELECT read_rows, read_bytes, total_rows_approx, elapsed, memory_usage \
                     FROM system.processes WHERE query_id = ?",
                )
                .bind(query_id)
                .fetch_optional::<ProcessStats>(),
        )
        .await
    }

    /// Stops one query on every URL of the tier and waits until the servers have
    /// stopped it: the query `query_id`, or a step of a job's attempt
    /// (`<query_id>-<step>`, see `worker::job`). Never broader than that: other clients'
    /// queries share the servers. Fails only if no URL could be asked.
    pub async fn kill(&self, query_id: &str) -> Result<(), EngineError> {
        let mut answered = false;
        let mut last = None;
        for node in self.nodes.iter() {
            let killed = timeout(
                node.control
                    .query("KILL QUERY WHERE query_id = ? OR query_id LIKE ? SYNC")
                    .bind(query_id)
                    .bind(format!(
                        "{}-%",
                        query_id
                            .replace('\\', "\\\\")
                            .replace('%', "\\%")
                            .replace('_', "\\_")
                    ))
                    .execute(),
            )
            .await;
            match killed {
                Ok(()) => answered = true,
                Err(e) => last = Some(e),
            }
        }
        match (answered, last) {
            (false, Some(e)) => Err(e),
            _ => Ok(()),
        }
    }
}

/// A parameter value in ClickHouse's escaped text form, which is how the server reads
/// `param_<name>`: backslash, tab, newline and carriage return are escaped, so the
/// value arrives exactly as sent. Composite types (Array, Tuple, Map) are written by
/// the client in ClickHouse's literal syntax and sent as they are.
pub fn escape_parameter(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out
}

fn is_composite(type_: &str) -> bool {
    let t = type_.trim_start();
    ["Array", "Tuple", "Map", "Nested"]
        .iter()
        .any(|p| t.starts_with(p))
}

/// `{name:Type}` placeholders of `sql`: name to declared type.
pub fn parameter_types(sql: &str) -> std::collections::HashMap<String, String> {
    crate::sql::placeholders(sql)
        .unwrap_or_default()
        .into_iter()
        .map(|p| (p.name, p.type_text))
        .collect()
}

/// A parameter's value as `param_<name>` carries it: escaped text (see
/// [`escape_parameter`]), except literal syntax for composite types and `\N` (NULL) for
/// a Nullable, which ClickHouse reads as they are.
fn parameter_value(declared: Option<&String>, value: &str) -> String {
    let raw = declared.is_some_and(|t| {
        is_composite(t) || (value == "\\N" && t.trim_start().starts_with("Nullable"))
    });
    if raw {
        value.to_string()
    } else {
        escape_parameter(value)
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

/// The statistics ClickHouse (20.x and later) sends in `X-ClickHouse-Summary` with the
/// response headers: final for a result that fits the server's first buffer (most
/// short queries), those of the moment the first bytes left for a longer one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub read_rows: u64,
    pub read_bytes: u64,
    pub total_rows_to_read: u64,
    pub elapsed_seconds: f64,
}

impl Summary {
    /// `{"read_rows":"5","read_bytes":"40",...}`: numbers as strings.
    fn parse(header: &str) -> Option<Summary> {
        let fields: std::collections::HashMap<String, String> =
            serde_json::from_str(header).ok()?;
        let number = |k: &str| {
            fields
                .get(k)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Some(Summary {
            read_rows: number("read_rows"),
            read_bytes: number("read_bytes"),
            total_rows_to_read: number("total_rows_to_read"),
            elapsed_seconds: number("elapsed_ns") as f64 / 1e9,
        })
    }
}

/// A query's response body, chunk by chunk, exactly as ClickHouse sent it, with the
/// exception ClickHouse may send after `200` and data turned into an error at the end.
pub struct ResultStream {
    response: reqwest::Response,
    /// The tag 25.11+ servers use to frame a mid-stream exception.
    exception_tag: Option<String>,
    summary: Option<Summary>,
    /// Index of the URL running the query.
    node: usize,
    /// The last bytes seen, to look for an exception at the end.
    tail: Tail,
    redactor: Redactor,
}

impl ResultStream {
    /// The next chunk; `None` at the end of a result that ended well. A mid-stream
    /// exception (see [`exception`]) is an [`EngineError::Server`] with parameter values
    /// masked; the chunks before it were already handed out and must be discarded.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, EngineError> {
        let tag = self.exception_tag.as_deref();
        match self.response.chunk().await {
            Ok(Some(chunk)) => {
                self.tail.push(chunk.clone());
                Ok(Some(chunk))
            }
            Ok(None) => match self.tail.exception(tag) {
                Some(x) => Err(self.redactor.error(EngineError::Server(x))),
                None => Ok(None),
            },
            // 25.11+ servers end the body right after a tagged exception, without the
            // closing chunk: the exception, if there is one, is the real error.
            Err(e) => Err(self.redactor.error(match self.tail.exception(tag) {
                Some(x) => EngineError::Server(x),
                None => EngineError::from_http(e),
            })),
        }
    }

    /// Index of the tier URL running the query (for [`Endpoint::progress`]).
    pub fn node(&self) -> usize {
        self.node
    }

    /// What the server said of the query with its headers, if it says anything.
    pub fn summary(&self) -> Option<&Summary> {
        self.summary.as_ref()
    }

    /// The last bytes of the result (up to [`exception::TAIL_BYTES`]).
    pub fn tail(&self) -> Vec<u8> {
        self.tail.bytes()
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

    /// The README's list, exactly: each of these is retried, and the codes around them
    /// (and the query's own limits) are not.
    #[test]
    fn the_retry_code_list_is_the_readme_s() {
        for code in [202, 203, 209, 210, 242, 319, 999] {
            assert!(server(code, "x").is_transient(), "{code} must be retried");
        }
        for code in [201, 204, 208, 211, 241, 243, 318, 320, 394, 159, 998, 1000] {
            assert!(
                !server(code, "x").is_transient(),
                "{code} must not be retried"
            );
        }
        assert!(server(241, "Memory limit (total) exceeded").is_transient());
        assert!(!server(241, "Memory limit (for user) exceeded").is_transient());
    }

    #[test]
    fn transient_errors_are_the_servers_not_the_querys() {
        assert!(EngineError::Transport("connection refused".into()).is_transient());
        assert!(server(202, "Too many simultaneous queries").is_transient());
        // Every code the README lists as "try later", and none of the query's own.
        for code in [202, 203, 209, 210, 242, 319, 999] {
            assert!(server(code, "x").is_transient(), "{code}");
        }
        for code in [62, 60, 47, 159, 160, 396, 394, 164, 497] {
            assert!(!server(code, "x").is_transient(), "{code}");
        }
        assert!(server(241, "Memory limit (total) exceeded: would use 10 GiB").is_transient());
        assert!(!server(241, "Memory limit (for query) exceeded").is_transient());
        assert!(!server(62, "Syntax error").is_transient());
        assert!(!server(60, "Unknown table").is_transient());
        assert!(!EngineError::Unsupported("Parquet".into()).is_transient());
    }

    #[test]
    fn parameters_are_escaped_unless_composite() {
        assert_eq!(escape_parameter("a\\b\tc'd"), "a\\\\b\\tc'd");
        let sql = "SELECT {s:String}, {a:Array(Tuple(UInt8, String))}, {m: Map(String, UInt8)}";
        let t = parameter_types(sql);
        assert_eq!(t["s"], "String");
        assert_eq!(t["a"], "Array(Tuple(UInt8, String))");
        assert!(is_composite(&t["a"]) && is_composite(&t["m"]) && !is_composite(&t["s"]));
        let nullable = "Nullable(String)".to_string();
        assert_eq!(parameter_value(Some(&nullable), "\\N"), "\\N");
        assert_eq!(parameter_value(Some(&t["s"]), "\\N"), "\\\\N");
    }

    #[test]
    fn redaction_masks_parameter_values() {
        let params = BTreeMap::from([("n".to_string(), "hunter2secret".to_string())]);
        let empty = BTreeMap::new();
        let q = Query {
            sql: "SELECT {n:UInt8}",
            format: Format::JSON,
            settings: &empty,
            parameters: &params,
            inline_parameters: false,
            quota_key: None,
            external: None,
            session: None,
        };
        let m = q.redact("Value hunter2secret cannot be parsed as UInt8");
        assert_eq!(m, "Value [redacted] cannot be parsed as UInt8");
    }

    #[test]
    fn summary_header_numbers_are_strings() {
        let s = Summary::parse(
            r#"{"read_rows":"5","read_bytes":"40","written_rows":"0","total_rows_to_read":"5","result_rows":"0","elapsed_ns":"1635935"}"#,
        )
        .unwrap();
        assert_eq!(
            (s.read_rows, s.read_bytes, s.total_rows_to_read),
            (5, 40, 5)
        );
        assert!((s.elapsed_seconds - 0.001635935).abs() < 1e-9);
        assert_eq!(Summary::parse("not json"), None);
    }

    #[test]
    fn versions_parse_and_compare() {
        let v = ServerVersion::parse("18.16.1").unwrap();
        assert!(v.at_least((18, 16)) && !v.at_least((19, 1)));
        assert!(v.check_parameters().is_err());
        assert!(
            ServerVersion::parse("26.9.2.1")
                .unwrap()
                .check_parameters()
                .is_ok()
        );
        let info = ServerInfo {
            version: v,
            formats: Arc::new(["CSV".to_string()].into_iter().collect()),
            inputs: Arc::new(["TSV".to_string()].into_iter().collect()),
        };
        assert!(info.check_format(Format::CSV).is_ok());
        assert!(info.check_format(Format::Parquet).is_err());
        assert!(info.check_input_format(Format::CSV).is_err());
    }

    #[test]
    fn external_structures_quote_names_or_refuse_what_old_servers_split() {
        let columns = [
            Column {
                name: "a b".into(),
                type_: "Decimal(9, 2)".into(),
            },
            Column {
                name: "x`y".into(),
                type_: "String".into(),
            },
        ];
        let new = ServerVersion::parse("26.9").unwrap();
        assert_eq!(
            external_structure(&columns, new).unwrap(),
            "`a b` Decimal(9, 2), `x\\`y` String"
        );
        let old = ServerVersion::parse("18.16").unwrap();
        assert!(external_structure(&columns[..1], old).is_err());
        let plain = [Column {
            name: "n".into(),
            type_: "Nullable(UInt64)".into(),
        }];
        assert_eq!(
            external_structure(&plain, old).unwrap(),
            "n Nullable(UInt64)"
        );
    }
}
