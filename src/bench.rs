//! `sluice bench`: the figures of the issue notes, measured on this machine.
//!
//! It creates a scratch database (`<database>_bench`, dropped afterwards), starts a real
//! `sluice api` and `sluice worker` as child processes of this binary (so the worker's
//! memory is its own), and measures through the HTTP API:
//! 1. pickup latency (`started_at - created_at`) with idle workers, p50 / p99, and the
//!    run time (`finished_at - started_at`) of those trivial executions;
//! 2. end-to-end throughput of `SELECT <n>` executions at client concurrency 16 (each
//!    client submits, then long-polls until the end);
//! 3. a ~1 GB result: time through Sluice (submit to SUCCEEDED) divided by the time of
//!    `curl` downloading the same query directly, and the worker's peak RSS.
//!
//! It prints figures and never asserts on them: tests check behaviour, this measures it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use uuid::Uuid;

use crate::config::Config;
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Failed(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

fn failed(message: impl Into<String>) -> BenchError {
    BenchError::Failed(message.into())
}

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub pickups: usize,
    pub trivial: usize,
    pub concurrency: usize,
    /// Rows of the large query (~125 bytes each as JSONEachRow).
    pub large_rows: u64,
    /// Directory for results; a fresh one under the system temp dir when `None`.
    pub results_dir: Option<std::path::PathBuf>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            pickups: 200,
            trivial: 2000,
            concurrency: 16,
            large_rows: 8_000_000,
            results_dir: None,
        }
    }
}

struct Children(Vec<Child>);
impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub async fn run(
    config: &Config,
    config_path: Option<&std::path::Path>,
    opts: BenchOptions,
) -> Result<(), BenchError> {
    let tier = config.default_tier.clone();
    let tier_config = config
        .tier(&tier)
        .ok_or_else(|| failed("the default tier is not configured"))?
        .clone();

    // A scratch database next to the configured one.
    let mut url = url::Url::parse(&config.database_url).map_err(|e| failed(e.to_string()))?;
    let db_name = format!("{}_bench", url.path().trim_start_matches('/'));
    let admin = Store::connect(&config.database_url, 2).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{db_name}\" WITH (FORCE)"
    )))
    .execute(admin.pool())
    .await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE \"{db_name}\""
    )))
    .execute(admin.pool())
    .await?;
    url.set_path(&db_name);
    let bench_db = url.to_string();
    let store = Store::connect(&bench_db, 4).await?;
    store.migrate().await?;

    let results_dir = opts
        .results_dir
        .clone()
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("sluice-bench-{}", Uuid::now_v7()));
    println!("results in {}", results_dir.display());
    let port = free_port()?;
    // The bench's own credential: a JWT secret for its processes, and a token from it.
    let jwt_secret = crate::auth::generate_key();
    let token = crate::auth::sign_jwt(
        &serde_json::json!({"sub": "bench", "tenant": "bench", "exp": crate::auth::unix_now() + 86_400}),
        &jwt_secret,
    );
    let base = format!("http://127.0.0.1:{port}");
    let exe = std::env::current_exe()?;
    let spawn = |args: &[&str]| -> Result<Child, BenchError> {
        let mut cmd = Command::new(&exe);
        if let Some(p) = config_path {
            cmd.arg("--config").arg(p);
        }
        Ok(cmd
            .args(args)
            .env("SLUICE_DATABASE_URL", &bench_db)
            .env("SLUICE_API__LISTEN", format!("127.0.0.1:{port}"))
            .env("SLUICE_RESULTS__URL", &results_dir)
            .env(
                format!("SLUICE_TIERS__{}__CONCURRENCY", tier.to_uppercase()),
                opts.concurrency.to_string(),
            )
            .env("SLUICE_WORKER__POLL_INTERVAL", "1s")
            .env("SLUICE_AUTH__JWT__SECRET", &jwt_secret)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?)
    };
    let mut children = Children(vec![spawn(&["api"])?]);
    children.0.push(spawn(&["worker", "--tier", &tier])?);
    let worker_pid = children.0[1].id();
    let mut auth_headers = reqwest::header::HeaderMap::new();
    auth_headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|e| failed(e.to_string()))?,
    );
    let http = reqwest::Client::builder()
        .default_headers(auth_headers)
        .build()
        .map_err(|e| failed(e.to_string()))?;
    wait_healthy(&http, &base).await?;

    println!(
        "sluice bench: tier `{tier}` at {}, worker concurrency {}",
        tier_config.clickhouse_url.list().join(", "),
        opts.concurrency
    );

    // 1. Pickup latency with idle workers: one execution at a time. The run time of the
    //    same executions (started -> finished) is the worker's fixed cost per execution:
    //    the ClickHouse round trips and the writes of the outcome.
    let mut pickups = Vec::with_capacity(opts.pickups);
    let mut runs = Vec::with_capacity(opts.pickups);
    for i in 0..opts.pickups {
        let id = submit(
            &http,
            &base,
            &format!("SELECT {i} AS pickup"),
            "JSONEachRow",
        )
        .await?;
        wait_done(&http, &base, &id).await?;
        type Times = (
            chrono::DateTime<chrono::Utc>,
            Option<chrono::DateTime<chrono::Utc>>,
            Option<chrono::DateTime<chrono::Utc>>,
        );
        let (created, started, finished): Times = sqlx::query_as(
            "SELECT created_at, started_at, finished_at FROM executions WHERE id = $1",
        )
        .bind(id)
        .fetch_one(store.pool())
        .await?;
        let started = started.ok_or_else(|| failed("no started_at"))?;
        let finished = finished.ok_or_else(|| failed("no finished_at"))?;
        let ms = |d: chrono::TimeDelta| d.num_microseconds().unwrap_or(0) as f64 / 1000.0;
        pickups.push(ms(started - created));
        runs.push(ms(finished - started));
    }
    pickups.sort_by(f64::total_cmp);
    runs.sort_by(f64::total_cmp);
    println!(
        "pickup latency (created -> started), {} executions, idle workers: p50 {:.2} ms, p99 {:.2} ms",
        pickups.len(),
        percentile(&pickups, 0.50),
        percentile(&pickups, 0.99)
    );
    println!(
        "run time of the same (started -> finished): p50 {:.2} ms, p99 {:.2} ms",
        percentile(&runs, 0.50),
        percentile(&runs, 0.99)
    );

    // 2. Throughput of trivial executions at client concurrency N.
    let started = Instant::now();
    let per_client = opts.trivial / opts.concurrency;
    let clients = (0..opts.concurrency).map(|c| {
        let http = http.clone();
        let base = base.clone();
        async move {
            for i in 0..per_client {
                let sql = format!("SELECT {} AS n", 1_000_000 + c * per_client + i);
                let id = submit(&http, &base, &sql, "JSONEachRow").await?;
                wait_done(&http, &base, &id).await?;
            }
            Ok::<(), BenchError>(())
        }
    });
    for r in futures::future::join_all(clients).await {
        r?;
    }
    let elapsed = started.elapsed();
    let done = per_client * opts.concurrency;
    println!(
        "throughput, {done} x `SELECT n` at concurrency {}: {:.0} executions/s ({:.2} s)",
        opts.concurrency,
        done as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );

    // 3. A ~1 GB result: Sluice vs a direct download, and the worker's peak RSS.
    let sql = format!(
        "SELECT number, toString(number) AS a, concat(a, a, a, a, a, a, a, a, a, a) AS b, \
         [number, number + 1] AS c FROM system.numbers LIMIT {}",
        opts.large_rows
    );
    let direct = direct_download(&tier_config, &sql)?;
    let cpu_before = cpu_seconds(worker_pid)?;
    let started = Instant::now();
    let id = submit(&http, &base, &sql, "JSONEachRow").await?;
    let e = wait_done(&http, &base, &id).await?;
    let through_sluice = started.elapsed();
    let bytes = e["result"]["bytes"].as_u64().unwrap_or(0);
    println!(
        "large result: {:.0} MiB; direct curl {:.2} s, through Sluice {:.2} s, ratio {:.2}",
        bytes as f64 / 1048576.0,
        direct.as_secs_f64(),
        through_sluice.as_secs_f64(),
        through_sluice.as_secs_f64() / direct.as_secs_f64()
    );
    println!(
        "worker CPU for the large result: {:.2} s",
        cpu_seconds(worker_pid)? - cpu_before
    );
    println!("worker peak RSS: {:.1} MiB", peak_rss_mib(worker_pid)?);

    drop(children);
    let _ = std::fs::remove_dir_all(&results_dir);
    drop(store);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{db_name}\" WITH (FORCE)"
    )))
    .execute(admin.pool())
    .await?;
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn free_port() -> Result<u16, BenchError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn wait_healthy(http: &reqwest::Client, base: &str) -> Result<(), BenchError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(r) = http.get(format!("{base}/ready")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(failed("the api did not become ready within 30 s"))
}

async fn submit(
    http: &reqwest::Client,
    base: &str,
    sql: &str,
    format: &str,
) -> Result<Uuid, BenchError> {
    let r: Value = http
        .post(format!("{base}/v1/executions"))
        .json(&json!({ "sql": sql, "format": format }))
        .send()
        .await?
        .json()
        .await?;
    r["execution"]["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| failed(format!("submit failed: {r}")))
}

/// Long-polls the execution until it ends (a tight polling loop would take CPU from
/// the processes being measured).
async fn wait_done(http: &reqwest::Client, base: &str, id: &Uuid) -> Result<Value, BenchError> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let e: Value = http
            .get(format!("{base}/v1/executions/{id}?wait=30"))
            .send()
            .await?
            .json()
            .await?;
        match e["status"].as_str() {
            Some("SUCCEEDED") => return Ok(e),
            Some("PENDING" | "RUNNING") if Instant::now() < deadline => {}
            _ => return Err(failed(format!("execution {id} did not succeed: {e}"))),
        }
    }
}

/// Times `curl` fetching the query straight from ClickHouse with the tier's settings.
fn direct_download(tier: &crate::config::TierConfig, sql: &str) -> Result<Duration, BenchError> {
    let mut url =
        url::Url::parse(&tier.clickhouse_url.list()[0]).map_err(|e| failed(e.to_string()))?;
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("default_format", "JSONEachRow");
        for (k, v) in &tier.settings {
            if k != "readonly" {
                q.append_pair(k, &v.to_param());
            }
        }
        q.append_pair(
            "readonly",
            &tier
                .settings
                .get("readonly")
                .map_or("1".into(), |v| v.to_param()),
        );
    }
    let started = Instant::now();
    let status = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-u"])
        .arg(format!("{}:{}", tier.user, tier.password))
        .args(["--data-binary", sql, url.as_str()])
        .status()?;
    if !status.success() {
        return Err(failed("direct curl download failed"));
    }
    Ok(started.elapsed())
}

fn peak_rss_mib(pid: u32) -> Result<f64, BenchError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| failed("no VmHWM in /proc"))?;
    Ok(kb / 1024.0)
}

/// User + system CPU time of a process, from /proc/<pid>/stat.
fn cpu_seconds(pid: u32) -> Result<f64, BenchError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after the name.
    let clock_ticks = 100.0; // USER_HZ on Linux
    Ok((ticks(11) + ticks(12)) / clock_ticks)
}
