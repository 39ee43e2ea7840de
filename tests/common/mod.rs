//! Test harness: a real Sluice (api + workers) in the test process, over the test's own
//! Postgres database (from `#[sqlx::test]`), the ClickHouse server named by
//! `SLUICE_TEST_CLICKHOUSE_URL` (started by `make test`), and a private result directory
//! or S3 bucket. Nothing is mocked.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use sluice::api::{self, ApiContext};
use sluice::config::Config;
use sluice::results::ResultStore;
use sluice::store::Store;
use sluice::worker::{Worker, WorkerStats};

pub fn clickhouse_url() -> String {
    std::env::var("SLUICE_TEST_CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8125".into())
}

pub fn s3_endpoint() -> String {
    std::env::var("SLUICE_TEST_S3_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:5000".into())
}

/// Runs a query directly on the test ClickHouse, as a tier with default settings would.
pub async fn clickhouse_direct(sql: &str, format: &str, settings: &[(&str, &str)]) -> Vec<u8> {
    let mut params: Vec<(&str, &str)> = vec![("default_format", format)];
    params.extend_from_slice(settings);
    params.push(("readonly", "1"));
    let response = reqwest::Client::new()
        .post(clickhouse_url())
        .query(&params)
        .body(sql.to_string())
        .send()
        .await
        .expect("ClickHouse answers");
    assert!(
        response.status().is_success(),
        "direct query failed: {}",
        response.text().await.unwrap()
    );
    response.bytes().await.unwrap().to_vec()
}

/// Plain-text answer of an administrative query on the test ClickHouse.
pub async fn clickhouse_text(sql: &str) -> String {
    reqwest::Client::new()
        .post(clickhouse_url())
        .body(sql.to_string())
        .send()
        .await
        .expect("ClickHouse answers")
        .text()
        .await
        .unwrap()
}

/// (major, minor) of the test ClickHouse.
pub async fn server_version() -> (u32, u32) {
    let v = clickhouse_text("SELECT version() FORMAT TSV").await;
    let mut parts = v.trim().split('.');
    (
        parts.next().unwrap().parse().unwrap(),
        parts.next().unwrap().parse().unwrap(),
    )
}

pub async fn is_modern() -> bool {
    server_version().await >= (20, 1)
}

/// Count of queries with this query_id running on the test ClickHouse.
pub async fn running_on_clickhouse(query_id: &str) -> usize {
    clickhouse_text(&format!(
        "SELECT count() FROM system.processes WHERE query_id = '{query_id}' FORMAT TSV"
    ))
    .await
    .trim()
    .parse()
    .unwrap()
}

/// Waits (30 s at most) until `query_id` shows in ClickHouse's `system.processes`.
pub async fn wait_on_clickhouse(query_id: &str, what: &str) {
    eventually(Duration::from_secs(30), what, || async {
        running_on_clickhouse(query_id).await == 1
    })
    .await;
}

/// A query that runs until killed, on both server versions (18.x forbids table functions
/// such as `numbers()` under readonly = 1, so it reads `system.numbers`).
pub const LONG_SQL: &str = "SELECT count() FROM system.numbers";
pub fn long_settings() -> Value {
    json!({ "max_threads": 1 })
}

/// `[worker]` lines for tests of retries: fast polls, beats and backoff (100 ms
/// doubling to 400 ms), a 10 s lease.
pub const FAST_RETRIES: &str = "poll_interval = \"200ms\"\nlease = \"10s\"\nheartbeat = \"200ms\"\n\
    shutdown_grace = \"2s\"\nretry_backoff = \"100ms\"\nretry_backoff_max = \"400ms\"";

/// How the test wants Sluice configured.
pub struct Setup {
    /// Tier names; each gets the test ClickHouse and default settings.
    pub tiers: Vec<&'static str>,
    /// One in-process worker per entry, serving that tier.
    pub workers: Vec<&'static str>,
    /// Extra TOML appended to the configuration.
    pub extra: String,
    /// TOML for `[results]`; a private temp directory when `None`.
    pub results: Option<String>,
    pub tier_extra: String,
    /// Extra lines of `[worker]`.
    pub worker_extra: String,
    /// ClickHouse URL of every tier; the test server when `None`.
    pub clickhouse_url: Option<String>,
    /// More `[[auth.api_keys]]` entries (see [`key_entry`]).
    pub auth_extra: String,
    /// More lines of `[auth.jwt]` (which always has the [`JWT_SECRET`]).
    pub jwt_extra: String,
}

/// The API key every harness request sends unless a test picks another principal:
/// tenant `default`, every tier.
pub const TEST_KEY: &str = "sk_test_default_principal";
/// The harness's JWT secret (`auth.jwt.secret`).
pub const JWT_SECRET: &str = "test-jwt-secret-0123456789abcdef0123456789";

/// An `[[auth.api_keys]]` entry admitting `key`; `extra` adds TOML lines.
pub fn key_entry(name: &str, key: &str, tenant: &str, extra: &str) -> String {
    format!(
        "[[auth.api_keys]]\nname = \"{name}\"\ntenant = \"{tenant}\"\nsha256 = \"{}\"\n{extra}\n",
        sluice::auth::hash_key(key)
    )
}

/// A JWT signed with the harness's secret.
pub fn jwt(claims: Value) -> String {
    sluice::auth::sign_jwt(&claims, JWT_SECRET)
}

/// A client that sends `Authorization: Bearer <credential>` on every request.
pub fn client_with(credential: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {credential}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            tiers: vec!["default"],
            workers: vec!["default"],
            extra: String::new(),
            results: None,
            tier_extra: String::new(),
            worker_extra: String::new(),
            clickhouse_url: None,
            auth_extra: String::new(),
            jwt_extra: String::new(),
        }
    }
}

/// The running Sluice. Dereferences to [`Api`]: `h.submit(..)` calls the API as the
/// default principal ([`TEST_KEY`]).
pub struct Harness {
    pub api: Api,
    pub store: Store,
    pub results: ResultStore,
    pub config: Config,
    pub shutdown: CancellationToken,
    pub worker_stats: Vec<std::sync::Arc<WorkerStats>>,
    pub results_dir: tempfile::TempDir,
    /// The api's long polls in progress.
    pub finishes: std::sync::Arc<sluice::api::wait::Finishes>,
    tasks: Vec<JoinHandle<()>>,
    worker_shutdowns: Vec<CancellationToken>,
}

/// The URL of the test's own database, for processes the test spawns.
pub fn database_url(pool: &PgPool) -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL is set by make test");
    let db = pool
        .connect_options()
        .get_database()
        .unwrap_or("postgres")
        .to_string();
    let options = pool.connect_options();
    let mut url = url::Url::parse(&base).unwrap();
    url.set_path(&db);
    // The pool's own server: a test's private cluster runs on a port of its own.
    url.set_host(Some(options.get_host())).unwrap();
    url.set_port(Some(options.get_port())).unwrap();
    url.to_string()
}

pub fn config_toml(pool: &PgPool, setup: &Setup, results_dir: &std::path::Path) -> String {
    let mut toml = format!(
        "database_url = \"{}\"\ndefault_tier = \"{}\"\n",
        database_url(pool),
        setup.tiers[0]
    );
    toml.push_str(
        &setup
            .results
            .clone()
            .unwrap_or_else(|| format!("[results]\nurl = \"{}\"\n", results_dir.display())),
    );
    toml.push_str(&format!(
        "[worker]\n{}\n",
        if setup.worker_extra.is_empty() {
            "poll_interval = \"500ms\"\nlease = \"10s\"\nheartbeat = \"200ms\"\nshutdown_grace = \"2s\""
        } else {
            &setup.worker_extra
        }
    ));
    toml.push_str(&setup.extra);
    toml.push_str(&format!(
        "[auth.jwt]\nsecret = \"{JWT_SECRET}\"\nleeway = \"0s\"\n{}\n{}{}",
        setup.jwt_extra,
        key_entry("tester", TEST_KEY, "default", ""),
        setup.auth_extra
    ));
    for tier in &setup.tiers {
        let concurrency = if setup.tier_extra.contains("concurrency") {
            ""
        } else {
            "concurrency = 4\n"
        };
        // A test that fails half-way leaves its long queries running on the shared
        // servers; the time limit ends them before they slow the rest of the suite.
        let settings = if setup.tier_extra.contains("settings") {
            ""
        } else {
            TIME_LIMIT
        };
        toml.push_str(&format!(
            "[tiers.{tier}]\nclickhouse_url = \"{}\"\n{}{concurrency}{settings}{}\n",
            setup.clickhouse_url.clone().unwrap_or_else(clickhouse_url),
            tier_users(),
            setup.tier_extra
        ));
    }
    toml
}

/// The settings line of test tiers (see `config_toml`). A user with readonly = 1 in its
/// profile (18.16's restricted user) cannot take it; tests of such users drop it.
pub const TIME_LIMIT: &str = "settings = { max_execution_time = 600 }\n";

/// The least-privilege users `make test` provisions on both servers (see
/// `scripts/services.sh` and `scripts/chdb_server.py`).
pub const TENANT_USER: (&str, &str) = ("sluice_tenant", "sluice-tenant-local");
pub const MONITOR_USER: (&str, &str) = ("sluice_monitor", "sluice-monitor-local");

/// The `user` lines of a test tier: on 26.9 the restricted users, as in production; on
/// 18.16 `default`, trusted, because a restricted 18.x user (readonly = 1 in its
/// profile) cannot take per-query settings, which many tests send. `tests/security.rs`
/// runs the restricted 18.16 user on its own.
pub fn tier_users() -> String {
    static LINES: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    LINES
        .get_or_init(|| {
            // Asked once per test binary, on a thread of its own (callers may be async).
            let modern = std::thread::spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(is_modern())
            })
            .join()
            .unwrap();
            if modern {
                format!(
                    "user = \"{}\"\npassword = \"{}\"\nmonitor_user = \"{}\"\nmonitor_password = \"{}\"\n",
                    TENANT_USER.0, TENANT_USER.1, MONITOR_USER.0, MONITOR_USER.1
                )
            } else {
                "trusted_user = true\n".to_string()
            }
        })
        .clone()
}

impl Harness {
    pub async fn start(pool: PgPool) -> Harness {
        Harness::with(pool, Setup::default()).await
    }

    /// The api alone: submissions stay PENDING until a test starts a worker.
    pub async fn without_workers(pool: PgPool) -> Harness {
        Harness::with(
            pool,
            Setup {
                workers: vec![],
                ..Default::default()
            },
        )
        .await
    }

    pub async fn with(pool: PgPool, setup: Setup) -> Harness {
        sluice::metrics::handle();
        let results_dir = tempfile::tempdir().unwrap();
        let toml = config_toml(&pool, &setup, results_dir.path());
        let config = Config::from_toml(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
        // sqlx::test's pool holds 5 connections; give Sluice a pool of production size
        // on the same test database.
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5)) // as `Store::connect`
            .connect_with(pool.connect_options().as_ref().clone())
            .await
            .unwrap();
        let store = Store::from_pool(pool);
        let results = ResultStore::new(&config.results).unwrap();
        let shutdown = CancellationToken::new();

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let ctx = ApiContext::new(
            std::sync::Arc::new(config.clone()),
            store.clone(),
            results.clone(),
        )
        .unwrap();
        let finishes = ctx.finishes.clone();
        let api_shutdown = shutdown.clone();
        let mut tasks = vec![tokio::spawn(async move {
            api::serve(listener, ctx, api_shutdown).await.unwrap();
        })];
        let mut worker_stats = Vec::new();
        let mut worker_shutdowns = Vec::new();
        for tier in &setup.workers {
            let worker = Worker::new(&config, tier, store.clone(), results.clone()).unwrap();
            worker_stats.push(worker.stats());
            let token = shutdown.child_token();
            worker_shutdowns.push(token.clone());
            tasks.push(tokio::spawn(async move {
                worker.run(token).await.unwrap();
            }));
        }
        Harness {
            api: Api {
                base,
                http: client_with(TEST_KEY),
            },
            store,
            results,
            config,
            shutdown,
            worker_stats,
            results_dir,
            finishes,
            tasks,
            worker_shutdowns,
        }
    }

    /// Stops the workers (SIGTERM equivalent) and waits for them.
    pub async fn stop_workers(&mut self) {
        for t in &self.worker_shutdowns {
            t.cancel();
        }
        let workers: Vec<_> = self.tasks.drain(1..).collect();
        for w in workers {
            w.await.unwrap();
        }
    }

    /// The same API, called as another principal.
    pub fn as_principal(&self, credential: &str) -> Api {
        Api {
            base: self.base.clone(),
            http: client_with(credential),
        }
    }

    /// Starts one more in-process worker for `tier`; cancel the token to stop it.
    pub fn spawn_worker(
        &self,
        tier: &str,
    ) -> (
        CancellationToken,
        JoinHandle<Result<(), sluice::worker::WorkerError>>,
    ) {
        let worker =
            Worker::new(&self.config, tier, self.store.clone(), self.results.clone()).unwrap();
        let stop = self.shutdown.child_token();
        (stop.clone(), tokio::spawn(worker.run(stop)))
    }
}

/// The API as seen by one principal.
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Polls until the execution's status is one of `statuses`; panics after `deadline`.
    pub async fn wait_for(&self, id: &str, statuses: &[&str], deadline: Duration) -> Value {
        let start = Instant::now();
        loop {
            let e = self.get(id).await;
            if statuses.contains(&e["status"].as_str().unwrap()) {
                return e;
            }
            assert!(
                start.elapsed() < deadline,
                "execution {id} still {} after {deadline:?}, wanted {statuses:?}: {e}",
                e["status"]
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait_terminal(&self, id: &str) -> Value {
        self.wait_for(
            id,
            &["SUCCEEDED", "FAILED", "CANCELED", "EXPIRED"],
            Duration::from_secs(120),
        )
        .await
    }

    /// Waits until the execution is RUNNING and its query shows in ClickHouse's
    /// `system.processes`; returns that ClickHouse query_id.
    pub async fn wait_running_on_clickhouse(&self, id: &str) -> String {
        let e = self
            .wait_for(id, &["RUNNING"], Duration::from_secs(30))
            .await;
        let query_id = format!("{id}-{}", e["attempt"]);
        wait_on_clickhouse(&query_id, "the query runs on ClickHouse").await;
        query_id
    }

    /// POST /v1/executions with a JSON body.
    pub async fn submit(&self, body: Value) -> (StatusCode, Value) {
        let r = self
            .http
            .post(self.url("/v1/executions"))
            .json(&body)
            .send()
            .await
            .unwrap();
        json_answer(r).await
    }

    /// GET `path`; the status and the JSON body.
    /// The value of one series of the api's `/metrics` (see [`metric_value`]).
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let r = self.http.get(self.url("/metrics")).send().await.unwrap();
        metric_value(&r.text().await.unwrap(), series)
    }

    pub async fn get_json(&self, path: &str) -> (StatusCode, Value) {
        let r = self.http.get(self.url(path)).send().await.unwrap();
        json_answer(r).await
    }

    /// POST `body` to `path` with `content_type`; the status and the JSON body.
    pub async fn post(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, Value) {
        let r = self
            .http
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        json_answer(r).await
    }

    /// POST a JSON `body` to `path`; the status and the JSON body.
    pub async fn post_json(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        json_answer(r).await
    }

    /// Submits and returns the execution id, asserting it was created.
    pub async fn submit_ok(&self, body: Value) -> String {
        let (status, v) = self.submit(body).await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        v["execution"]["id"].as_str().unwrap().to_string()
    }

    pub async fn get(&self, id: &str) -> Value {
        let (status, v) = self.get_json(&format!("/v1/executions/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        v
    }

    /// POST /v1/executions/{id}/cancel.
    pub async fn cancel(&self, id: &str) -> (StatusCode, Value) {
        let r = self
            .http
            .post(self.url(&format!("/v1/executions/{id}/cancel")))
            .send()
            .await
            .unwrap();
        json_answer(r).await
    }

    pub async fn download(&self, id: &str) -> (StatusCode, reqwest::header::HeaderMap, Vec<u8>) {
        let r = self
            .http
            .get(self.url(&format!("/v1/executions/{id}/result")))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let headers = r.headers().clone();
        (status, headers, r.bytes().await.unwrap().to_vec())
    }
}

impl std::ops::Deref for Harness {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The status and JSON body of an answer; panics, showing the body, if it is not JSON.
pub async fn json_answer(r: reqwest::Response) -> (StatusCode, Value) {
    let status = r.status();
    let text = r.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
    (status, v)
}

/// Polls `f` until it returns true; panics with `what` after `deadline`.
pub async fn eventually<F, Fut>(deadline: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        assert!(
            start.elapsed() < deadline,
            "not within {deadline:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of one series (its name and labels exactly as exposed) in the Prometheus
/// text of `/metrics`.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

pub fn settings_map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A `sluice` child process, killed (SIGKILL) when dropped.
pub struct Process(pub std::process::Child);

impl Process {
    pub fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal).unwrap();
    }

    /// `kill -9`, and reap it.
    pub fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    pub fn is_running(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Peak resident memory of a process, in KiB (`VmHWM` in /proc).
pub fn peak_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Writes the harness's configuration (plus `extra` TOML) to a file for child processes.
pub fn write_config(h: &Harness, pool: &PgPool, setup: &Setup) -> std::path::PathBuf {
    let toml = config_toml(pool, setup, h.results_dir.path());
    let path = h
        .results_dir
        .path()
        .join(format!("sluice-{}.toml", uuid::Uuid::now_v7()));
    std::fs::write(&path, toml).unwrap();
    path
}

/// Starts `sluice <args>` with the given configuration file.
pub fn spawn_sluice(config: &std::path::Path, args: &[&str]) -> Process {
    let mut cmd = sluice_command(config, args);
    cmd.env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null());
    Process(cmd.spawn().unwrap())
}

/// `sluice --config <config> <args>`, ending with the test's thread even when the test
/// binary is killed outright (a timeout), so that no stray worker outlives it.
fn sluice_command(config: &std::path::Path, args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.arg("--config").arg(config).args(args);
    sluice::bench::end_with_parent(&mut cmd);
    cmd
}

/// Like [`spawn_sluice`], with its info-level log lines (JSON, one per line) in `log`.
pub fn spawn_sluice_logged(
    config: &std::path::Path,
    args: &[&str],
    log: &std::path::Path,
) -> Process {
    let file = std::fs::File::create(log).unwrap();
    let mut cmd = sluice_command(config, args);
    cmd.env("RUST_LOG", "info")
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    Process(cmd.spawn().unwrap())
}

/// The JSON log lines of a [`spawn_sluice_logged`] process so far.
pub fn log_lines(log: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The log lines whose message is `message`.
pub fn logged<'a>(lines: &'a [Value], message: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|l| l["fields"]["message"] == message)
        .collect()
}

/// A TCP proxy to the test ClickHouse that a test can stop and restart on the same port:
/// stopping it refuses new connections and cuts open ones, as a ClickHouse outage does.
pub struct Proxy {
    addr: std::net::SocketAddr,
    tasks: std::sync::Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    pub async fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Proxy {
            addr: listener.local_addr().unwrap(),
            tasks: Default::default(),
        };
        proxy.serve(listener);
        proxy
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn serve(&self, listener: TcpListener) {
        let target = url::Url::parse(&clickhouse_url()).unwrap();
        let target = format!("{}:{}", target.host_str().unwrap(), target.port().unwrap());
        let tasks = self.tasks.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let target = target.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tasks.lock().unwrap().push(conn);
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }

    /// ClickHouse "goes down": no new connections, open ones cut.
    pub fn stop(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    /// ClickHouse "comes back" on the same address.
    pub async fn resume(&self) {
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        self.serve(listener);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A ClickHouse server of the test's own (the same version as the test server), on
/// ports of its own, that a test may kill and start again: for what must survive a
/// server going away. 26.9 runs from the chdb-core venv `make test` installs; 18.16
/// from Debian's `clickhouse-server`, with the users.xml `make test` wrote.
pub struct PrivateClickHouse {
    modern: bool,
    dir: tempfile::TempDir,
    http_port: u16,
    tcp_port: u16,
    child: Option<std::process::Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl PrivateClickHouse {
    pub async fn start() -> PrivateClickHouse {
        let mut server = PrivateClickHouse {
            modern: is_modern().await,
            dir: tempfile::tempdir().unwrap(),
            http_port: free_port(),
            tcp_port: free_port(),
            child: None,
        };
        server.spawn().await;
        server
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    async fn spawn(&mut self) {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let d = self.dir.path();
        let mut cmd = if self.modern {
            let mut c = std::process::Command::new(root.join(".tools/venv/bin/python"));
            c.arg(root.join("scripts/chdb_server.py"))
                .arg(d)
                .arg(self.http_port.to_string())
                .arg(self.tcp_port.to_string());
            c
        } else {
            for sub in ["data/tmp", "data/user_files", "data/fs"] {
                std::fs::create_dir_all(d.join(sub)).unwrap();
            }
            let mut c = std::process::Command::new("clickhouse-server");
            c.arg("--config-file=/etc/clickhouse-server/config.xml")
                .arg("--")
                .arg(format!(
                    "--users_config={}",
                    root.join(".tools/run/ch18/users.xml").display()
                ))
                .arg(format!("--path={}/data/", d.display()))
                .arg(format!("--tmp_path={}/data/tmp/", d.display()))
                .arg(format!(
                    "--user_files_path={}/data/user_files/",
                    d.display()
                ))
                .arg(format!("--format_schema_path={}/data/fs/", d.display()))
                .arg(format!("--http_port={}", self.http_port))
                .arg(format!("--tcp_port={}", self.tcp_port))
                .arg(format!("--interserver_http_port={}", free_port()))
                .arg("--listen_host=127.0.0.1")
                .arg(format!("--logger.log={}/server.log", d.display()))
                .arg(format!("--logger.errorlog={}/server.err.log", d.display()));
            c
        };
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        self.child = Some(cmd.spawn().expect("the private ClickHouse starts"));
        let ping = format!("{}/ping", self.url());
        eventually(
            Duration::from_secs(60),
            "the private ClickHouse answers",
            || {
                let ping = ping.clone();
                async move {
                    reqwest::get(ping)
                        .await
                        .is_ok_and(|r| r.status().is_success())
                }
            },
        )
        .await;
    }

    /// kill -9, as a crash does.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same ports and data.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// Plain-text answer of a query as `default`.
    pub async fn text(&self, sql: &str) -> String {
        match reqwest::Client::new()
            .post(self.url())
            .body(sql.to_string())
            .send()
            .await
        {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }
}

impl Drop for PrivateClickHouse {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Postgres cluster of the test's own (initdb into a temp dir, its own port) that a
/// test may stop and start again: for what must survive the queue database going away.
/// The binaries are the newest under `/usr/lib/postgresql` (or `SLUICE_TEST_PG_BINDIR`);
/// as root, the cluster runs as the `postgres` user, since Postgres refuses root.
pub struct PrivatePostgres {
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
    pub port: u16,
    child: Option<std::process::Child>,
}

impl PrivatePostgres {
    pub async fn start() -> PrivatePostgres {
        let dir = tempfile::tempdir().unwrap();
        let bin = pg_bindir();
        if let Some((uid, gid)) = postgres_ids() {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let mut initdb = std::process::Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(dir.path().join("data"))
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        as_postgres(&mut initdb, dir.path());
        assert!(initdb.status().unwrap().success(), "initdb");
        let mut pg = PrivatePostgres {
            dir,
            bin,
            port: free_port(),
            child: None,
        };
        pg.spawn().await;
        pg
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A pool on the cluster's `postgres` database, migrated.
    pub async fn migrated_pool(&self) -> PgPool {
        let pool = PgPool::connect(&self.url()).await.unwrap();
        sluice::store::Store::from_pool(pool.clone())
            .migrate()
            .await
            .unwrap();
        pool
    }

    async fn spawn(&mut self) {
        let d = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("postgres.log"))
            .unwrap();
        let mut cmd = std::process::Command::new(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(d.join("data"))
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(d)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .stdout(std::process::Stdio::null())
            .stderr(log);
        as_postgres(&mut cmd, d);
        self.child = Some(cmd.spawn().expect("the private Postgres starts"));
        let url = self.url();
        eventually(
            Duration::from_secs(30),
            "the private Postgres answers",
            || {
                let url = url.clone();
                async move {
                    match PgPool::connect(&url).await {
                        Ok(pool) => {
                            pool.close().await;
                            true
                        }
                        Err(_) => false,
                    }
                }
            },
        )
        .await;
    }

    /// A fast shutdown (SIGINT): sessions are ended and the port closes, as when the
    /// database is restarted or fails over.
    pub fn stop(&mut self) {
        self.shut_down(nix::sys::signal::Signal::SIGINT);
    }

    fn shut_down(&mut self, how: nix::sys::signal::Signal) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), how);
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and data.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        // Immediate shutdown: the data dir goes with the test.
        self.shut_down(nix::sys::signal::Signal::SIGQUIT);
    }
}

fn pg_bindir() -> std::path::PathBuf {
    if let Ok(dir) = std::env::var("SLUICE_TEST_PG_BINDIR") {
        return dir.into();
    }
    let root = std::path::Path::new("/usr/lib/postgresql");
    let mut versions: Vec<u32> = std::fs::read_dir(root)
        .expect("Postgres binaries under /usr/lib/postgresql (or SLUICE_TEST_PG_BINDIR)")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|v: &u32| root.join(v.to_string()).join("bin/initdb").exists())
        .collect();
    versions.sort();
    let newest = versions
        .last()
        .expect("an initdb under /usr/lib/postgresql");
    root.join(newest.to_string()).join("bin")
}

/// The `postgres` user's ids when running as root (Postgres refuses to run as root).
fn postgres_ids() -> Option<(u32, u32)> {
    if !nix::unistd::Uid::effective().is_root() {
        return None;
    }
    let user = nix::unistd::User::from_name("postgres")
        .unwrap()
        .expect("as root, a `postgres` user to run the private cluster");
    Some((user.uid.as_raw(), user.gid.as_raw()))
}

fn as_postgres(cmd: &mut std::process::Command, dir: &std::path::Path) {
    use std::os::unix::process::CommandExt;
    // Postgres' tools look up their working directory: it must be one they may enter
    // (a checkout under /root is not).
    cmd.current_dir(dir);
    if let Some((uid, gid)) = postgres_ids() {
        cmd.uid(uid).gid(gid);
    }
}

/// A one-row JSONEachRow result whose object was never written: for tests that drive
/// the store's completion directly.
pub fn result_without_object(key: &str) -> sluice::execution::ResultMeta {
    sluice::execution::ResultMeta {
        object_key: key.into(),
        format: sluice::execution::Format::JSONEachRow,
        bytes: 1,
        rows: Some(1),
        columns: None,
        row_index: None,
        truncated: false,
    }
}
