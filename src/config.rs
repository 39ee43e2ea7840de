//! Configuration: one typed struct read from a TOML file with `SLUICE_...` environment
//! overrides, validated once at start-up.
//!
//! Every role (`api`, `worker`, `bookkeeper`, `standalone`, `migrate`) reads the same file.
//! Environment variables override file values; nested keys are separated by a double
//! underscore: `SLUICE_DATABASE_URL`, `SLUICE_API__LISTEN`,
//! `SLUICE_TIERS__DEFAULT__CLICKHOUSE_URL`.
//!
//! This module owns the shape of the configuration and the rules a valid one obeys. It must
//! never open a connection or touch the filesystem beyond reading the file: validation is
//! pure, so a bad file is rejected before any service is contacted.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

/// A configuration problem, always naming the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("invalid configuration: `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// PostgreSQL connection string of the queue database.
    pub database_url: String,
    /// Maximum connections of this process's Postgres pool.
    #[serde(default = "default_db_max_connections")]
    pub database_max_connections: u32,
    /// The tier used when a submission names none.
    #[serde(default = "default_tier_name")]
    pub default_tier: String,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub results: ResultsConfig,
    #[serde(default)]
    pub worker: WorkerConfig,
    #[serde(default)]
    pub bookkeeper: BookkeeperConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Who may call the API: API keys and JWT verification.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Tiers by name. Each has its own ClickHouse endpoint, settings and workers.
    pub tiers: BTreeMap<String, TierConfig>,
    /// Saved reports (see `tasks`).
    #[serde(default)]
    pub tasks: TasksConfig,
    /// Completion webhooks (`callback_url` on submit; see `bookkeeper`).
    #[serde(default)]
    pub webhooks: WebhooksConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Where callbacks may go: `scheme://host[:port]` prefixes (e.g.
    /// `"https://hooks.example.com"`). Empty (the default): `callback_url` is refused.
    #[serde(default)]
    pub allowed: Vec<String>,
    /// Key of the `X-Sluice-Signature` HMAC-SHA256; required when `allowed` is set.
    #[serde(default)]
    pub secret: Option<String>,
    /// How long a delivery is retried before it is given up.
    #[serde(default = "default_webhook_retry_for", with = "humantime_serde")]
    pub retry_for: Duration,
    /// First retry delay; doubles per attempt up to `backoff_max`.
    #[serde(default = "default_webhook_backoff", with = "humantime_serde")]
    pub backoff: Duration,
    #[serde(default = "default_webhook_backoff_max", with = "humantime_serde")]
    pub backoff_max: Duration,
    /// Longest wait for a receiver's answer.
    #[serde(default = "default_webhook_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            allowed: Vec::new(),
            secret: None,
            retry_for: default_webhook_retry_for(),
            backoff: default_webhook_backoff(),
            backoff_max: default_webhook_backoff_max(),
            timeout: default_webhook_timeout(),
        }
    }
}

fn default_webhook_retry_for() -> Duration {
    Duration::from_secs(3600)
}
fn default_webhook_backoff() -> Duration {
    Duration::from_secs(1)
}
fn default_webhook_backoff_max() -> Duration {
    Duration::from_secs(300)
}
fn default_webhook_timeout() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TasksConfig {
    /// Directory of `*.sql` task files, read at start and again on SIGHUP; no tasks
    /// when absent.
    #[serde(default)]
    pub dir: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address the HTTP API listens on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Largest accepted request body in bytes; larger bodies get 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Largest `limit` accepted by the list endpoint.
    #[serde(default = "default_max_page_size")]
    pub max_page_size: u32,
    /// Base URL clients reach this API at, used in signed result links; the request's
    /// `Host` header (over http) when absent.
    #[serde(default)]
    pub public_url: Option<String>,
    /// `Retry-After` of a 429 (queue cap reached).
    #[serde(default = "default_retry_after", with = "humantime_serde")]
    pub retry_after: Duration,
    /// Longest long poll (`?wait=N` seconds on get and submit) a client may ask for.
    #[serde(default = "default_max_wait", with = "humantime_serde")]
    pub max_wait: Duration,
    /// Longest life of one event stream (`/v1/executions/{id}/events`): then the server
    /// closes it and the client resumes with `Last-Event-ID`, as EventSource does. Keeps
    /// connections shorter than the proxies' idle limits and frees them at a bound.
    #[serde(default = "default_event_stream", with = "humantime_serde")]
    pub event_stream: Duration,
    /// Largest result returned inside an execution's answer with `?inline=true`; larger
    /// ones are downloaded.
    #[serde(default = "default_inline_max_bytes")]
    pub inline_max_bytes: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            max_body_bytes: default_max_body_bytes(),
            max_page_size: default_max_page_size(),
            public_url: None,
            retry_after: default_retry_after(),
            max_wait: default_max_wait(),
            event_stream: default_event_stream(),
            inline_max_bytes: default_inline_max_bytes(),
        }
    }
}

/// Where `sluice worker` and `sluice bookkeeper` serve their own `/metrics` (the api
/// serves it on its own address). Off when absent.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    #[serde(default)]
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultsConfig {
    /// Where result objects live: `file:///abs/dir`, a bare path, or `s3://bucket/prefix`.
    #[serde(default = "default_results_url")]
    pub url: String,
    /// Options handed to object_store for the URL's scheme, e.g. for S3:
    /// `aws_endpoint`, `aws_region`, `aws_access_key_id`, `aws_secret_access_key`,
    /// `aws_allow_http`.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// Size of one multipart part: the most bytes of one result held in memory at once
    /// (times `upload_concurrency`). S3 requires at least 5 MiB.
    #[serde(default = "default_part_bytes")]
    pub part_bytes: usize,
    /// Parts of one result uploaded concurrently.
    #[serde(default = "default_upload_concurrency")]
    pub upload_concurrency: usize,
    /// Longest validity of a result link (`POST /v1/executions/{id}/result-url`).
    #[serde(default = "default_link_max_ttl", with = "humantime_serde")]
    pub link_max_ttl: Duration,
    /// Validity of a result link when the request names none.
    #[serde(default = "default_link_ttl", with = "humantime_serde")]
    pub link_ttl: Duration,
    /// Key of the HMAC that signs links to a local result store (at least 32 bytes).
    /// Every api process must share it. When absent each process makes a random one, so
    /// its links work only on that process and die with it.
    #[serde(default)]
    pub link_secret: Option<String>,
}

impl Default for ResultsConfig {
    fn default() -> Self {
        Self {
            url: default_results_url(),
            options: BTreeMap::new(),
            part_bytes: default_part_bytes(),
            upload_concurrency: default_upload_concurrency(),
            link_max_ttl: default_link_max_ttl(),
            link_ttl: default_link_ttl(),
            link_secret: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// How often an idle worker polls when no notification arrives.
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How long a claim is valid without a heartbeat.
    #[serde(default = "default_lease", with = "humantime_serde")]
    pub lease: Duration,
    /// How often a running execution renews its lease and records progress.
    #[serde(default = "default_heartbeat", with = "humantime_serde")]
    pub heartbeat: Duration,
    /// On SIGTERM, how long running executions may take to finish before they are
    /// stopped and handed back to the queue.
    #[serde(default = "default_shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// First delay before a transient failure (ClickHouse unreachable, too many
    /// queries, server out of memory) is retried; doubles with every attempt.
    #[serde(default = "default_retry_backoff", with = "humantime_serde")]
    pub retry_backoff: Duration,
    /// The longest retry delay.
    #[serde(default = "default_retry_backoff_max", with = "humantime_serde")]
    pub retry_backoff_max: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            poll_interval: default_poll_interval(),
            lease: default_lease(),
            heartbeat: default_heartbeat(),
            shutdown_grace: default_shutdown_grace(),
            retry_backoff: default_retry_backoff(),
            retry_backoff_max: default_retry_backoff_max(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BookkeeperConfig {
    /// Pause between two maintenance passes.
    #[serde(default = "default_bookkeeper_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Most rows one pass touches in one statement.
    #[serde(default = "default_batch_size")]
    pub batch_size: i64,
    /// Delay before a reclaimed execution may run again.
    #[serde(default = "default_retry_backoff", with = "humantime_serde")]
    pub retry_backoff: Duration,
    /// A result object that no SUCCEEDED execution points at is deleted once it is
    /// this old (a worker may have died between upload and commit).
    #[serde(default = "default_orphan_grace", with = "humantime_serde")]
    pub orphan_grace: Duration,
    /// How often the leader lists the result store looking for orphans (a listing of a
    /// large bucket is not free).
    #[serde(default = "default_orphan_scan_interval", with = "humantime_serde")]
    pub orphan_scan_interval: Duration,
}

impl Default for BookkeeperConfig {
    fn default() -> Self {
        Self {
            interval: default_bookkeeper_interval(),
            batch_size: default_batch_size(),
            retry_backoff: default_retry_backoff(),
            orphan_grace: default_orphan_grace(),
            orphan_scan_interval: default_orphan_scan_interval(),
        }
    }
}

/// Authentication. Every `/v1` route needs `Authorization: Bearer <credential>`, where
/// the credential is an API key listed here (by its sha256) or a JWT signed with
/// `jwt.secret` or with a key of `jwt.jwks_url`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub api_keys: Vec<ApiKeyConfig>,
    #[serde(default)]
    pub jwt: Option<JwtConfig>,
}

/// One API key: only its sha256 is stored. `sluice keygen` prints a new key and this
/// entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// The principal's name (recorded as `created_by`).
    pub name: String,
    /// Hex sha256 of the key.
    pub sha256: String,
    /// Tenant whose executions the key sees and creates.
    pub tenant: String,
    /// Tiers the key may use; every tier when absent.
    #[serde(default)]
    pub tiers: Option<Vec<String>>,
    /// Tier of submissions that name none; the global `default_tier` when absent.
    #[serde(default)]
    pub default_tier: Option<String>,
    /// Sees and cancels every tenant's executions.
    #[serde(default)]
    pub admin: bool,
    /// Quota key passed to ClickHouse; the principal's name when absent.
    #[serde(default)]
    pub quota_key: Option<String>,
    /// Overrides the tier's `max_running_per_tenant` for this principal's submissions.
    #[serde(default)]
    pub max_running: Option<u32>,
    /// Overrides the tier's `max_queued_per_tenant` for this principal's submissions.
    #[serde(default)]
    pub max_queued: Option<u32>,
}

/// JWT bearer tokens: HS256 with `secret`; RS256/RS384/RS512, PS256/PS384/PS512,
/// ES256/ES384 or EdDSA with the keys an identity provider publishes at `jwks_url`; at
/// least one of the two.
/// Claims: `sub` (principal), `tenant`, `exp` (required); `tiers` (allowed tiers), `tier`
/// (default tier), `quota_key`, `admin`, `max_running`, `max_queued` (optional).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// The HMAC key of HS256 tokens, at least 32 bytes; HS256 is refused when absent.
    #[serde(default)]
    pub secret: Option<String>,
    /// The JWKS document (RFC 7517) whose keys check asymmetric tokens, e.g.
    /// `https://idp.example.com/.well-known/jwks.json`; asymmetric tokens are refused when
    /// absent.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// How long fetched keys are used before the document is fetched again. A token
    /// naming a `kid` the held keys lack also fetches it (at most every 2 seconds).
    #[serde(default = "default_jwks_refresh", with = "humantime_serde")]
    pub jwks_refresh: Duration,
    /// Required `iss` claim, when set.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Required `aud` claim, when set.
    #[serde(default)]
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(default = "default_jwt_leeway", with = "humantime_serde")]
    pub leeway: Duration,
}

/// How long finished executions keep their result, per terminal status. Past it the
/// result object is deleted and the execution becomes EXPIRED; past `purge_after` the
/// row itself is deleted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    #[serde(default = "default_keep_succeeded", with = "humantime_serde")]
    pub succeeded: Duration,
    #[serde(default = "default_keep_failed", with = "humantime_serde")]
    pub failed: Duration,
    #[serde(default = "default_keep_canceled", with = "humantime_serde")]
    pub canceled: Duration,
    /// Age (since finishing) at which an EXPIRED row is deleted.
    #[serde(default = "default_purge_after", with = "humantime_serde")]
    pub purge_after: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            succeeded: default_keep_succeeded(),
            failed: default_keep_failed(),
            canceled: default_keep_canceled(),
            purge_after: default_purge_after(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    /// ClickHouse HTTP endpoint, e.g. `http://127.0.0.1:8123`, or a list of replicas
    /// tried in order when one cannot be reached.
    pub clickhouse_url: Urls,
    /// The ClickHouse user the tenants' SQL runs as: give it SELECT on the data and
    /// nothing else (see the README's security model).
    #[serde(default = "default_ch_user")]
    pub user: String,
    #[serde(default)]
    pub password: String,
    /// The user Sluice's own control queries run as: progress from
    /// `system.processes`, `KILL QUERY` of its executions, the server's version and
    /// formats. The tier's `user` when absent.
    #[serde(default)]
    pub monitor_user: Option<String>,
    #[serde(default)]
    pub monitor_password: Option<String>,
    /// A worker refuses to start when the tier's `user` can read host files, reach URLs
    /// or other databases, read other queries or kill them; `true` runs it anyway (and
    /// says so loudly in the log). For servers that cannot express the restriction
    /// (ClickHouse 18.x), or a tier that must write.
    #[serde(default)]
    pub trusted_user: bool,
    /// Database queries run in; the server's default when absent.
    #[serde(default)]
    pub database: Option<String>,
    /// Settings every query of this tier runs with (e.g. `max_execution_time`,
    /// `max_memory_usage`). `readonly = 1` is added unless set here.
    #[serde(default)]
    pub settings: BTreeMap<String, SettingValue>,
    /// Kinds of statement this tier runs (`read`, `write`, `admin`; see `sql`): anything
    /// else is refused with 400 before it is queued.
    #[serde(default = "default_allowed_statements")]
    pub allowed_statements: Vec<crate::sql::Kind>,
    /// `false`: only saved reports (`tasks`) run here; `POST /v1/executions` naming this
    /// tier is 403 `ad_hoc_sql_forbidden`.
    #[serde(default = "default_true")]
    pub ad_hoc_sql: bool,
    /// Settings a client may add to a submission (in `settings` or in the SQL's
    /// `SETTINGS` clause). Anything else is rejected with 400.
    #[serde(default = "default_client_settings")]
    pub client_settings: Vec<String>,
    /// Numeric bounds of client settings, e.g. `max_threads = { max = 8 }`.
    #[serde(default)]
    pub client_setting_bounds: BTreeMap<String, Bounds>,
    /// Largest SQL text accepted on this tier, in bytes.
    #[serde(default = "default_max_sql_bytes")]
    pub max_sql_bytes: usize,
    /// Executions of one tenant running at once on this tier, over all its workers.
    #[serde(default)]
    pub max_running_per_tenant: Option<u32>,
    /// PENDING executions one tenant may have on this tier; more get 429.
    #[serde(default)]
    pub max_queued_per_tenant: Option<u32>,
    /// Pass each principal's quota key to ClickHouse (`quota_key`). Servers before 20.x
    /// refuse client-supplied keys unless the user's quota is `keyed`; turn this off
    /// for such a server rather than key its quota.
    #[serde(default = "default_true")]
    pub send_quota_key: bool,
    /// Statements of this tier one worker runs on ClickHouse at once (a slot is given back
    /// when the query is over, before the outcome is written).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Runs of one execution before it is failed for good.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: i32,
    /// Longest `timeout` (and `start_within`) a submission may ask for on this tier.
    #[serde(default = "default_max_timeout", with = "humantime_serde")]
    pub max_timeout: Duration,
    #[serde(default)]
    pub retention: Retention,
}

/// One URL or several, in TOML either `"http://a"` or `["http://a", "http://b"]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Urls {
    One(String),
    Many(Vec<String>),
}

impl Urls {
    pub fn list(&self) -> Vec<String> {
        match self {
            Urls::One(u) => vec![u.clone()],
            Urls::Many(v) => v.clone(),
        }
    }
}

/// Inclusive numeric bounds of a client setting.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Bounds {
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
}

/// A ClickHouse setting value as written in TOML.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum SettingValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl SettingValue {
    /// The value as ClickHouse expects it in a URL parameter.
    pub fn to_param(&self) -> String {
        match self {
            SettingValue::Bool(b) => if *b { "1" } else { "0" }.to_string(),
            SettingValue::Int(i) => i.to_string(),
            SettingValue::Float(f) => f.to_string(),
            SettingValue::Str(s) => s.clone(),
        }
    }
}

fn default_db_max_connections() -> u32 {
    16
}
fn default_tier_name() -> String {
    "default".into()
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_max_body_bytes() -> usize {
    1024 * 1024
}
fn default_max_page_size() -> u32 {
    1000
}
fn default_results_url() -> String {
    "./results".into()
}
fn default_part_bytes() -> usize {
    8 * 1024 * 1024
}
fn default_upload_concurrency() -> usize {
    2
}
fn default_poll_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_lease() -> Duration {
    Duration::from_secs(30)
}
fn default_heartbeat() -> Duration {
    Duration::from_secs(1)
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(30)
}
fn default_bookkeeper_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_batch_size() -> i64 {
    1000
}
fn default_retry_backoff() -> Duration {
    Duration::from_secs(1)
}
fn default_retry_backoff_max() -> Duration {
    Duration::from_secs(60)
}
fn default_orphan_grace() -> Duration {
    Duration::from_secs(3600)
}
fn default_orphan_scan_interval() -> Duration {
    Duration::from_secs(600)
}
fn default_keep_succeeded() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_keep_failed() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_keep_canceled() -> Duration {
    Duration::from_secs(3600)
}
fn default_purge_after() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}
fn default_ch_user() -> String {
    "default".into()
}
fn default_client_settings() -> Vec<String> {
    [
        "max_threads",
        "max_block_size",
        "max_result_rows",
        "max_result_bytes",
        "result_overflow_mode",
        "output_format_write_statistics",
        "output_format_json_quote_64bit_integers",
        "date_time_output_format",
        "format_csv_delimiter",
        "join_use_nulls",
    ]
    .into_iter()
    .map(String::from)
    .collect()
}
fn default_retry_after() -> Duration {
    Duration::from_secs(5)
}
fn default_inline_max_bytes() -> u64 {
    1024 * 1024
}
fn default_event_stream() -> Duration {
    Duration::from_secs(300)
}
fn default_max_wait() -> Duration {
    Duration::from_secs(60)
}
fn default_link_max_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_link_ttl() -> Duration {
    Duration::from_secs(3600)
}
fn default_jwks_refresh() -> Duration {
    Duration::from_secs(600)
}

fn default_jwt_leeway() -> Duration {
    Duration::from_secs(30)
}
fn default_true() -> bool {
    true
}
fn default_max_sql_bytes() -> usize {
    256 * 1024
}
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

fn default_allowed_statements() -> Vec<crate::sql::Kind> {
    vec![crate::sql::Kind::Read]
}
fn default_concurrency() -> usize {
    4
}
fn default_max_attempts() -> i32 {
    3
}

fn default_max_timeout() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// Keys of [`Config`]; `SLUICE_<KEY>` environment variables override them.
const TOP_LEVEL_KEYS: &[&str] = &[
    "tasks",
    "database_url",
    "database_max_connections",
    "default_tier",
    "api",
    "results",
    "worker",
    "bookkeeper",
    "metrics",
    "auth",
    "tiers",
];

/// The smallest part S3 accepts in a multipart upload (except the last).
pub const MIN_PART_BYTES: usize = 5 * 1024 * 1024;

impl Config {
    /// Reads `path` (if it exists) and the `SLUICE_` environment, then validates.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = path {
            figment = figment.merge(Toml::file_exact(path));
        }
        // Only variables naming a configuration key: `SLUICE_CONFIG` (the file's path)
        // and other tools' `SLUICE_*` variables are not configuration.
        figment = figment.merge(
            Env::prefixed("SLUICE_")
                .filter(|key| {
                    let top = key.as_str().split("__").next().unwrap_or_default();
                    TOP_LEVEL_KEYS.iter().any(|k| k.eq_ignore_ascii_case(top))
                })
                .split("__"),
        );
        let config: Config = figment.extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses a TOML document (used by tests and `sluice bench`) and validates it.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = Figment::from(Toml::string(text))
            .extract()
            .map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.database_url.trim().is_empty() {
            return Err(invalid("database_url", "must not be empty"));
        }
        if self.database_max_connections < 2 {
            return Err(invalid("database_max_connections", "must be at least 2"));
        }
        if self.tiers.is_empty() {
            return Err(invalid("tiers", "at least one tier must be configured"));
        }
        if !self.tiers.contains_key(&self.default_tier) {
            return Err(invalid(
                "default_tier",
                format!(
                    "names tier `{}`, which is not configured",
                    self.default_tier
                ),
            ));
        }
        if self.api.max_body_bytes == 0 {
            return Err(invalid("api.max_body_bytes", "must be positive"));
        }
        if !self.webhooks.allowed.is_empty()
            && self.webhooks.secret.as_deref().is_none_or(str::is_empty)
        {
            return Err(invalid(
                "webhooks.secret",
                "must be set when webhooks.allowed is (receivers check the signature)",
            ));
        }
        for prefix in &self.webhooks.allowed {
            if !(prefix.starts_with("http://") || prefix.starts_with("https://")) {
                return Err(invalid(
                    "webhooks.allowed",
                    "entries are http:// or https:// URL prefixes such as \"https://hooks.example.com\"",
                ));
            }
        }
        if self.api.event_stream.is_zero() {
            return Err(invalid("api.event_stream", "must be positive"));
        }
        if self.api.max_page_size == 0 {
            return Err(invalid("api.max_page_size", "must be positive"));
        }
        if self.results.url.trim().is_empty() {
            return Err(invalid("results.url", "must not be empty"));
        }
        if self.results.part_bytes < MIN_PART_BYTES {
            return Err(invalid(
                "results.part_bytes",
                format!("must be at least {MIN_PART_BYTES} (S3's minimum part size)"),
            ));
        }
        if self.results.upload_concurrency == 0 {
            return Err(invalid("results.upload_concurrency", "must be at least 1"));
        }
        let w = &self.worker;
        if w.heartbeat.is_zero() || w.poll_interval.is_zero() {
            return Err(invalid(
                "worker.heartbeat",
                "worker.heartbeat and worker.poll_interval must be positive",
            ));
        }
        if w.lease < w.heartbeat * 3 {
            return Err(invalid(
                "worker.lease",
                "must be at least three heartbeats, so one slow heartbeat does not lose it",
            ));
        }
        if self.bookkeeper.batch_size < 1 {
            return Err(invalid("bookkeeper.batch_size", "must be at least 1"));
        }
        if w.retry_backoff > w.retry_backoff_max {
            return Err(invalid(
                "worker.retry_backoff",
                "must not exceed worker.retry_backoff_max",
            ));
        }
        if self.bookkeeper.interval.is_zero() {
            return Err(invalid("bookkeeper.interval", "must be positive"));
        }
        for (name, tier) in &self.tiers {
            validate_tier(name, tier)?;
        }
        if let Some(u) = &self.api.public_url {
            match url::Url::parse(u) {
                Ok(p) if p.scheme() == "http" || p.scheme() == "https" => {}
                _ => return Err(invalid("api.public_url", "must be an http(s) URL")),
            }
        }
        let r = &self.results;
        if r.link_ttl.is_zero() || r.link_ttl > r.link_max_ttl {
            return Err(invalid(
                "results.link_ttl",
                "must be positive and at most results.link_max_ttl",
            ));
        }
        if let Some(s) = &r.link_secret
            && s.len() < 32
        {
            return Err(invalid("results.link_secret", "must be at least 32 bytes"));
        }
        self.validate_auth()
    }

    fn validate_auth(&self) -> Result<(), ConfigError> {
        let mut hashes = std::collections::HashSet::new();
        for (i, key) in self.auth.api_keys.iter().enumerate() {
            let at = |k: &str| format!("auth.api_keys[{i}].{k}");
            if key.name.trim().is_empty() {
                return Err(invalid(at("name"), "must not be empty"));
            }
            if key.tenant.trim().is_empty() {
                return Err(invalid(at("tenant"), "must not be empty"));
            }
            if key.sha256.len() != 64 || !key.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid(
                    at("sha256"),
                    "must be the 64 hex digits of the key's sha256 (see `sluice keygen`)",
                ));
            }
            if !hashes.insert(key.sha256.to_ascii_lowercase()) {
                return Err(invalid(at("sha256"), "the same key is listed twice"));
            }
            for tier in key.tiers.iter().flatten() {
                if !self.tiers.contains_key(tier) {
                    return Err(invalid(
                        at("tiers"),
                        format!("tier `{tier}` is not configured"),
                    ));
                }
            }
            if let Some(t) = &key.default_tier {
                let allowed = key.tiers.as_ref().is_none_or(|ts| ts.contains(t));
                if !self.tiers.contains_key(t) || !allowed {
                    return Err(invalid(
                        at("default_tier"),
                        format!("tier `{t}` is not configured or not among the key's tiers"),
                    ));
                }
            }
        }
        if let Some(jwt) = &self.auth.jwt {
            if jwt.secret.as_ref().is_some_and(|s| s.len() < 32) {
                return Err(invalid("auth.jwt.secret", "must be at least 32 bytes"));
            }
            if let Some(url) = &jwt.jwks_url
                && !url::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
            {
                return Err(invalid("auth.jwt.jwks_url", "must be an http or https URL"));
            }
            if jwt.secret.is_none() && jwt.jwks_url.is_none() {
                return Err(invalid(
                    "auth.jwt",
                    "needs `secret` (HS256) or `jwks_url` (RS256, ES256, EdDSA), or both",
                ));
            }
            if jwt.jwks_refresh < Duration::from_secs(1) {
                return Err(invalid("auth.jwt.jwks_refresh", "must be at least 1s"));
            }
        }
        Ok(())
    }

    pub fn tier(&self, name: &str) -> Option<&TierConfig> {
        self.tiers.get(name)
    }
}

/// Tier names appear in URLs, metrics labels and NOTIFY payloads: keep them plain.
pub fn valid_tier_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// ClickHouse setting names are identifiers.
pub fn valid_setting_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn validate_tier(name: &str, tier: &TierConfig) -> Result<(), ConfigError> {
    let key = |k: &str| format!("tiers.{name}.{k}");
    if !valid_tier_name(name) {
        return Err(invalid(
            format!("tiers.{name}"),
            "tier names use only letters, digits, `_` and `-` (at most 64)",
        ));
    }
    let urls = tier.clickhouse_url.list();
    if urls.is_empty() {
        return Err(invalid(key("clickhouse_url"), "must name at least one URL"));
    }
    for u in &urls {
        match url::Url::parse(u) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            Ok(_) => return Err(invalid(key("clickhouse_url"), "must be an http(s) URL")),
            Err(e) => return Err(invalid(key("clickhouse_url"), format!("`{u}`: {e}"))),
        }
    }
    if tier.max_sql_bytes == 0 {
        return Err(invalid(key("max_sql_bytes"), "must be positive"));
    }
    if tier.max_running_per_tenant == Some(0) || tier.max_queued_per_tenant == Some(0) {
        return Err(invalid(
            key("max_running_per_tenant"),
            "max_running_per_tenant and max_queued_per_tenant must be at least 1 when set",
        ));
    }
    for (setting, bounds) in &tier.client_setting_bounds {
        if !tier.client_settings.contains(setting) {
            return Err(invalid(
                key(&format!("client_setting_bounds.{setting}")),
                "bounds a setting that is not in client_settings",
            ));
        }
        if let (Some(lo), Some(hi)) = (bounds.min, bounds.max)
            && lo > hi
        {
            return Err(invalid(
                key(&format!("client_setting_bounds.{setting}")),
                "min is larger than max",
            ));
        }
    }
    if tier.concurrency == 0 {
        return Err(invalid(key("concurrency"), "must be at least 1"));
    }
    if tier.max_attempts < 1 {
        return Err(invalid(key("max_attempts"), "must be at least 1"));
    }
    let r = &tier.retention;
    if r.purge_after < r.succeeded.max(r.failed).max(r.canceled) {
        return Err(invalid(
            key("retention.purge_after"),
            "must be at least the longest retention, or rows would vanish before expiring",
        ));
    }
    for (setting, value) in &tier.settings {
        if !valid_setting_name(setting) {
            return Err(invalid(
                key(&format!("settings.{setting}")),
                "not a valid setting name",
            ));
        }
        if RESERVED_PARAMS.contains(&setting.as_str()) {
            return Err(invalid(
                key(&format!("settings.{setting}")),
                "is set by Sluice itself and cannot be configured",
            ));
        }
        if let SettingValue::Str(s) = value
            && s.contains(['\n', '\r'])
        {
            return Err(invalid(
                key(&format!("settings.{setting}")),
                "must be a single line",
            ));
        }
    }
    for setting in &tier.client_settings {
        if !valid_setting_name(setting) {
            return Err(invalid(
                key("client_settings"),
                format!("`{setting}` is not a valid setting name"),
            ));
        }
        if RESERVED_PARAMS.contains(&setting.as_str()) || setting == "readonly" {
            return Err(invalid(
                key("client_settings"),
                format!("`{setting}` cannot be left to clients"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        database_url = "postgres://localhost/sluice"
        [tiers.default]
        clickhouse_url = "http://127.0.0.1:8123"
    "#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(c.api.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.api.max_body_bytes, 1024 * 1024);
        assert_eq!(c.tiers["default"].max_attempts, 3);
    }

    #[test]
    fn errors_name_the_bad_key() {
        let bad = MINIMAL.replace("http://127.0.0.1:8123", "ftp://x");
        let e = Config::from_toml(&bad).unwrap_err().to_string();
        assert!(e.contains("tiers.default.clickhouse_url"), "{e}");

        let bad = format!("{MINIMAL}\n[worker]\nlease = \"1s\"\nheartbeat = \"1s\"\n");
        let e = Config::from_toml(&bad).unwrap_err().to_string();
        assert!(e.contains("worker.lease"), "{e}");

        let bad = format!("default_tier = \"vip\"\n{MINIMAL}");
        let e = Config::from_toml(&bad).unwrap_err().to_string();
        assert!(e.contains("default_tier"), "{e}");

        let bad = format!("{MINIMAL}\nsettings = {{ query_id = \"x\" }}\n");
        let e = Config::from_toml(&bad).unwrap_err().to_string();
        assert!(e.contains("tiers.default.settings.query_id"), "{e}");

        for (jwt, key) in [
            ("leeway = \"1s\"", "auth.jwt"),
            ("secret = \"short\"", "auth.jwt.secret"),
            ("jwks_url = \"ftp://idp/keys\"", "auth.jwt.jwks_url"),
            (
                "jwks_url = \"http://idp/k\"\njwks_refresh = \"0s\"",
                "auth.jwt.jwks_refresh",
            ),
        ] {
            let bad = format!("{MINIMAL}\n[auth.jwt]\n{jwt}\n");
            let e = Config::from_toml(&bad).unwrap_err().to_string();
            assert!(e.contains(&format!("`{key}`:")), "{jwt}: {e}");
        }
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let bad = format!("{MINIMAL}\nconcurency = 3\n");
        let e = Config::from_toml(&bad).unwrap_err().to_string();
        assert!(e.contains("concurency"), "{e}");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's own signature
    fn environment_overrides_config_keys_and_ignores_other_variables() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("s.toml", MINIMAL)?;
            jail.set_env("SLUICE_API__LISTEN", "0.0.0.0:9999");
            jail.set_env("SLUICE_TIERS__DEFAULT__MAX_ATTEMPTS", "7");
            jail.set_env("SLUICE_TEST_CLICKHOUSE_URL", "http://elsewhere");
            jail.set_env("SLUICE_CONFIG", "s.toml");
            let c = Config::load(Some(Path::new("s.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.api.listen.to_string(), "0.0.0.0:9999");
            assert_eq!(c.tiers["default"].max_attempts, 7);
            Ok(())
        });
    }

    #[test]
    fn the_example_file_is_valid() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/sluice.example.toml"))
                .unwrap();
        Config::from_toml(&text).unwrap();
    }
}
