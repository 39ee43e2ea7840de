//! `sluice bench`: the figures of the issue notes, measured on this machine.
//!
//! It creates a scratch database (`<database>_bench`, dropped afterwards), starts a real
//! `sluice api` and `sluice worker` as child processes of this binary (so each process's
//! CPU and memory are its own), and measures through the HTTP API, one phase after the
//! other:
//! 1. **pickup latency** (`started_at - created_at`) with idle workers, p50 / p99, and the
//!    run time (`finished_at - started_at`) of those trivial executions;
//! 2. **closed loop**: throughput of `SELECT <n>` at client concurrency N, each client
//!    submitting and then long-polling its own execution (at most N in flight);
//! 3. **the ceiling**: the same HTTP client sending `SELECT 1` straight to the tier's
//!    ClickHouse at the same concurrency, in the same run (the machine drifts 10-35 %
//!    between runs, so figures are read as ratios to this);
//! 4. **backlog (open loop)**: `--backlog` distinct trivial executions submitted as fast
//!    as the api takes them from N connections, then the drain: submit rate, drain rate
//!    (executions / first created -> last finished), its ratio to the ceiling, the most
//!    executions RUNNING at once, and where each execution's time goes (the worker's and
//!    the api's `sluice_step_seconds`); once with one worker, once with two;
//!    then `--sleep-backlog` executions that each wait 50 ms on ClickHouse
//!    (`sleep(0.05)`), whose drain is bound by slots rather than CPU: its ratio is to
//!    what the workers' slots allow (workers x concurrency / 50 ms), so it shows
//!    whether a second worker adds capacity when the machine has CPU to spare;
//! 5. **a large result** (~1 GB by default): time through Sluice divided by `curl`
//!    downloading the same query directly, the worker's CPU for it and its peak RSS;
//! 6. **claim latency** as the table grows: claims of 16 with 10,000 and with
//!    `--claim-rows` finished rows in the table, then with 10,000 PENDING rows of another
//!    tier, then with 10,000 PENDING rows of 100 other tenants (rows inserted directly).
//!
//! It prints figures and never asserts on them: tests check behaviour, this measures it.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use uuid::Uuid;

use crate::config::{Config, TierConfig};
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Failed(String),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Makes the process `cmd` starts end with its parent even when the parent is killed
/// outright and no `Drop` runs (the bench, a test binary stopped by a timeout): Linux
/// sends it SIGKILL when the thread that started it ends, so start it from a thread that
/// lives as long as the parent needs it. Elsewhere than Linux, nothing changes.
pub fn end_with_parent(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl is async-signal-safe and changes only the child's own state.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

fn failed(message: impl Into<String>) -> BenchError {
    BenchError::Failed(message.into())
}

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub pickups: usize,
    pub trivial: usize,
    pub concurrency: usize,
    /// Executions of the open-loop backlog phase (0 skips it).
    pub backlog: usize,
    /// Executions of the latency-bound backlog, each waiting 50 ms on ClickHouse (0
    /// skips it).
    pub sleep_backlog: usize,
    /// Finished rows in the table for the second claim-latency figure (0 skips the
    /// claim phase).
    pub claim_rows: i64,
    /// Rows of the large query (~125 bytes each as JSONEachRow; 0 skips it).
    pub large_rows: u64,
    /// Result format of the trivial executions (pickups, closed loop, backlog).
    pub format: crate::execution::Format,
    /// Directory for results; a fresh one under the system temp dir when `None`.
    pub results_dir: Option<std::path::PathBuf>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            pickups: 200,
            trivial: 2000,
            concurrency: 16,
            backlog: 5000,
            sleep_backlog: 1000,
            claim_rows: 1_000_000,
            large_rows: 8_000_000,
            format: crate::execution::Format::JSONEachRow,
            results_dir: None,
        }
    }
}

pub async fn run(
    config: &Config,
    config_path: Option<&std::path::Path>,
    opts: BenchOptions,
) -> Result<(), BenchError> {
    let mut bench = Bench::start(config, config_path, &opts).await?;
    let outcome = bench.phases(&opts).await;
    bench.stop().await?;
    outcome
}

/// A child process of the bench, killed when dropped.
struct Process {
    child: Child,
    /// Where a worker serves its own metrics.
    metrics_url: Option<String>,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The scratch deployment the phases measure.
struct Bench {
    tier: String,
    tier_config: TierConfig,
    concurrency: usize,
    format: crate::execution::Format,
    /// The configured database (to drop the scratch one at the end).
    admin: Store,
    db_name: String,
    db_url: String,
    store: Store,
    results_dir: std::path::PathBuf,
    config_path: Option<std::path::PathBuf>,
    /// `auth.api_keys` of the bench's processes: the bench's key only.
    api_keys: String,
    port: u16,
    base: String,
    http: reqwest::Client,
    api: Option<Process>,
    workers: Vec<Process>,
}

/// What a backlog runs.
#[derive(Clone, Copy)]
enum Load {
    /// `SELECT n`: bound by the machine's CPU, compared with the ceiling.
    Trivial,
    /// `SELECT n, sleep(0.05)`: bound by the workers' slots, compared with what they allow.
    Sleep,
}

/// How long each execution of a [`Load::Sleep`] backlog waits on ClickHouse.
const SLEEP: Duration = Duration::from_millis(50);

impl Load {
    fn name(self) -> &'static str {
        match self {
            Load::Trivial => "trivial",
            Load::Sleep => "sleep",
        }
    }

    /// How the printed figures name the statement: [`Load::statement`] with `n`.
    fn shape(self) -> String {
        self.statement("n", "")
    }

    /// The statement numbered `i`, distinct from every other (no two collapse into one),
    /// its last column aliased with `marker` so that the run's rows can be found.
    fn statement(self, i: impl std::fmt::Display, marker: &str) -> String {
        match self {
            Load::Trivial => format!("SELECT {i}{marker}"),
            Load::Sleep => format!("SELECT {i}, sleep({}){marker}", SLEEP.as_secs_f64()),
        }
    }
}

impl Bench {
    async fn start(
        config: &Config,
        config_path: Option<&std::path::Path>,
        opts: &BenchOptions,
    ) -> Result<Bench, BenchError> {
        let tier = config.default_tier.clone();
        let tier_config = config
            .tier(&tier)
            .ok_or_else(|| failed("the default tier is not configured"))?
            .clone();
        // A scratch database next to the configured one.
        let mut url = url::Url::parse(&config.database_url).map_err(|e| failed(e.to_string()))?;
        let db_name = scratch_name(url.path().trim_start_matches('/'))?;
        let admin = Store::connect(&config.database_url, 2).await?;
        admin.recreate_database(&db_name).await?;
        url.set_path(&db_name);
        let db_url = url.to_string();
        let store = Store::connect(&db_url, 4).await?;
        store.migrate().await?;

        let results_dir = opts
            .results_dir
            .clone()
            .unwrap_or_else(std::env::temp_dir)
            .join(format!("sluice-bench-{}", Uuid::now_v7()));
        println!("results in {}", results_dir.display());
        // The bench's own credential: an API key its processes admit (and nothing else).
        let api_key = crate::auth::generate_key();
        let mut auth_headers = reqwest::header::HeaderMap::new();
        auth_headers.insert(
            reqwest::header::AUTHORIZATION,
            reqwest::header::HeaderValue::from_str(&format!("Bearer {api_key}"))
                .map_err(|e| failed(e.to_string()))?,
        );
        let http = reqwest::Client::builder()
            .default_headers(auth_headers)
            .build()?;
        let port = free_port()?;
        let mut bench = Bench {
            tier,
            tier_config,
            concurrency: opts.concurrency,
            format: opts.format,
            admin,
            db_name,
            db_url,
            store,
            results_dir,
            config_path: config_path.map(|p| p.to_path_buf()),
            api_keys: format!(
                "[{{name = \"bench\", tenant = \"bench\", sha256 = \"{}\"}}]",
                crate::auth::hash_key(&api_key)
            ),
            port,
            base: format!("http://127.0.0.1:{port}"),
            http,
            api: None,
            workers: Vec::new(),
        };
        bench.api = Some(bench.spawn(&["api"], None)?);
        bench.add_worker()?;
        bench.wait_healthy().await?;
        println!(
            "sluice bench: tier `{}` at {}, worker concurrency {}, trivial executions as {}",
            bench.tier,
            bench.tier_config.clickhouse_url.list().join(", "),
            bench.concurrency,
            bench.format
        );
        Ok(bench)
    }

    async fn phases(&mut self, opts: &BenchOptions) -> Result<(), BenchError> {
        if opts.pickups > 0 {
            self.pickups(opts.pickups).await?;
        }
        if opts.trivial > 0 {
            self.closed_loop(opts.trivial).await?;
        }
        let backlogs: Vec<(Load, usize)> = [
            (Load::Trivial, opts.backlog),
            (Load::Sleep, opts.sleep_backlog),
        ]
        .into_iter()
        .filter(|&(_, n)| n > 0)
        .collect();
        for &(load, n) in &backlogs {
            self.backlog(load, n, "1w").await?;
        }
        if opts.large_rows > 0 {
            self.large_result(opts.large_rows).await?;
        }
        if !backlogs.is_empty() {
            self.add_worker()?;
        }
        for &(load, n) in &backlogs {
            self.backlog(load, n, "2w").await?;
        }
        // Claims are measured on the store directly, with nothing else running.
        self.workers.clear();
        self.api = None;
        if opts.claim_rows > 0 {
            self.claim_latency(opts.claim_rows).await?;
        }
        Ok(())
    }

    async fn stop(self) -> Result<(), BenchError> {
        let Bench {
            admin,
            db_name,
            store,
            results_dir,
            api,
            workers,
            ..
        } = self;
        drop((api, workers, store));
        let _ = std::fs::remove_dir_all(&results_dir);
        admin.drop_database(&db_name).await?;
        Ok(())
    }

    /// Starts `sluice <args>` on the scratch database; `metrics_port` for a worker's own
    /// `/metrics`.
    fn spawn(&self, args: &[&str], metrics_port: Option<u16>) -> Result<Process, BenchError> {
        let mut cmd = Command::new(std::env::current_exe()?);
        if let Some(p) = &self.config_path {
            cmd.arg("--config").arg(p);
        }
        cmd.args(args)
            .env("SLUICE_DATABASE_URL", &self.db_url)
            .env("SLUICE_API__LISTEN", format!("127.0.0.1:{}", self.port))
            .env("SLUICE_RESULTS__URL", &self.results_dir)
            .env(
                format!("SLUICE_TIERS__{}__CONCURRENCY", self.tier.to_uppercase()),
                self.concurrency.to_string(),
            )
            .env("SLUICE_WORKER__POLL_INTERVAL", "1s")
            .env("SLUICE_AUTH__API_KEYS", &self.api_keys)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(port) = metrics_port {
            cmd.env("SLUICE_METRICS__LISTEN", format!("127.0.0.1:{port}"));
        }
        // Started from the main thread, where `block_on` runs the bench, so they live as
        // long as the bench.
        end_with_parent(&mut cmd);
        Ok(Process {
            child: cmd.spawn()?,
            metrics_url: metrics_port.map(|p| format!("http://127.0.0.1:{p}/metrics")),
        })
    }

    fn add_worker(&mut self) -> Result<(), BenchError> {
        let worker = self.spawn(&["worker", "--tier", &self.tier], Some(free_port()?))?;
        self.workers.push(worker);
        Ok(())
    }

    async fn wait_healthy(&self) -> Result<(), BenchError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(r) = self.http.get(format!("{}/ready", self.base)).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(failed("the api did not become ready within 30 s"))
    }

    /// 1. Pickup latency with idle workers: one execution at a time. The run time of the
    ///    same executions (started -> finished) is the worker's fixed cost per execution.
    async fn pickups(&self, n: usize) -> Result<(), BenchError> {
        let mut pickups = Vec::with_capacity(n);
        let mut runs = Vec::with_capacity(n);
        for i in 0..n {
            let id = self.submit(&format!("SELECT {i} AS pickup")).await?;
            self.wait_done(&id).await?;
            let t = self.store.timings(id).await?;
            let started = t.started_at.ok_or_else(|| failed("no started_at"))?;
            let finished = t.finished_at.ok_or_else(|| failed("no finished_at"))?;
            pickups.push(ms(started - t.created_at));
            runs.push(ms(finished - started));
        }
        pickups.sort_by(f64::total_cmp);
        runs.sort_by(f64::total_cmp);
        println!(
            "pickup latency (created -> started), {n} executions, idle workers: p50 {:.2} ms, p99 {:.2} ms",
            percentile(&pickups, 0.50),
            percentile(&pickups, 0.99)
        );
        println!(
            "run time of the same (started -> finished): p50 {:.2} ms, p99 {:.2} ms",
            percentile(&runs, 0.50),
            percentile(&runs, 0.99)
        );
        Ok(())
    }

    /// 2. Closed loop: each client submits and waits for its own execution.
    async fn closed_loop(&self, n: usize) -> Result<(), BenchError> {
        let started = Instant::now();
        let per_client = n / self.concurrency;
        let clients = (0..self.concurrency).map(|c| async move {
            for i in 0..per_client {
                let sql = format!("SELECT {} AS n", 1_000_000 + c * per_client + i);
                let id = self.submit(&sql).await?;
                self.wait_done(&id).await?;
            }
            Ok::<(), BenchError>(())
        });
        for r in futures::future::join_all(clients).await {
            r?;
        }
        let elapsed = started.elapsed();
        let done = per_client * self.concurrency;
        println!(
            "closed loop, {done} x `SELECT n` at concurrency {} (submit, then long-poll): {:.0} executions/s ({:.2} s)",
            self.concurrency,
            done as f64 / elapsed.as_secs_f64(),
            elapsed.as_secs_f64()
        );
        Ok(())
    }

    /// 3. The ceiling: `SELECT 1` straight to ClickHouse, with the tier's settings, from
    ///    the same HTTP client at the same concurrency, for `duration`.
    async fn ceiling(&self, duration: Duration) -> Result<f64, BenchError> {
        let url = direct_url(&self.tier_config, "JSONEachRow")?;
        let http = reqwest::Client::builder().tcp_nodelay(true).build()?;
        let deadline = Instant::now() + duration;
        let started = Instant::now();
        let clients = (0..self.concurrency).map(|_| {
            let (http, url) = (http.clone(), url.clone());
            let (user, password) = (&self.tier_config.user, &self.tier_config.password);
            async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let r = http
                        .post(url.clone())
                        .basic_auth(user, Some(password))
                        .body("SELECT 1")
                        .send()
                        .await?;
                    if !r.status().is_success() {
                        return Err(failed(format!("direct SELECT 1: HTTP {}", r.status())));
                    }
                    r.bytes().await?;
                    n += 1;
                }
                Ok::<u64, BenchError>(n)
            }
        });
        let mut total = 0;
        for r in futures::future::join_all(clients).await {
            total += r?;
        }
        let rate = total as f64 / started.elapsed().as_secs_f64();
        println!(
            "ceiling: `SELECT 1` straight to ClickHouse at concurrency {}: {rate:.0} q/s",
            self.concurrency
        );
        Ok(rate)
    }

    /// 4. Open loop: `n` distinct executions submitted at once, then the drain. For
    ///    trivial ones the ceiling is measured just before and just after, and their mean
    ///    is the yardstick; for sleeping ones, what the slots allow.
    async fn backlog(&self, load: Load, n: usize, run: &str) -> Result<(), BenchError> {
        let ceiling_before = match load {
            Load::Trivial => Some(self.ceiling(Duration::from_secs(3)).await?),
            Load::Sleep => None,
        };
        let marker = format!(" AS backlog_{}_{run}", load.name());
        let before = self.steps().await?;
        let cpu_before = cpu_by_process()?;
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let clients = (0..self.concurrency).map(|_| {
            let (next, marker) = (next.clone(), &marker);
            async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return Ok::<(), BenchError>(());
                    }
                    self.submit(&load.statement(2_000_000 + i, marker)).await?;
                }
            }
        });
        for r in futures::future::join_all(clients).await {
            r?;
        }
        let submit_secs = started.elapsed().as_secs_f64();
        let deadline = Instant::now() + Duration::from_secs(600);
        while self.store.any_unfinished().await? {
            if Instant::now() > deadline {
                return Err(failed("the backlog did not drain within 10 minutes"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let after = self.steps().await?;
        let cpu = cpu_by_process()?;
        let stats = self.store.run_stats(&marker).await?;
        let (Some(first), Some(last)) = (stats.first_created, stats.last_finished) else {
            return Err(failed("the backlog left no timings"));
        };
        let drain = stats.executions as f64 / (ms(last - first) / 1000.0);
        let workers = self.workers.len();
        let yardstick = match ceiling_before {
            Some(ceiling_before) => {
                let ceiling_after = self.ceiling(Duration::from_secs(3)).await?;
                let ceiling = (ceiling_before + ceiling_after) / 2.0;
                let ratio = drain / ceiling * 100.0;
                format!(
                    "{ratio:.1} % of the ceiling ({ceiling:.0} q/s, the mean of before and after)"
                )
            }
            None => {
                let allowed = (workers * self.concurrency) as f64 / SLEEP.as_secs_f64();
                let ratio = drain / allowed * 100.0;
                format!("{ratio:.1} % of what the slots allow ({allowed:.0}/s)")
            }
        };
        println!(
            "backlog of {n} `{}`, {workers} worker(s) of concurrency {}: submitted at {:.0}/s \
             from {} connections; drained at {drain:.0} executions/s (first created -> last finished, \
             {:.2} s) = {yardstick}; \
             {} of {} SUCCEEDED; RUNNING at once (started -> finished, writing the outcome included): {:.1} on average, at most {}; mean run time {:.2} ms",
            load.shape(),
            self.concurrency,
            n as f64 / submit_secs,
            self.concurrency,
            ms(last - first) / 1000.0,
            stats.succeeded,
            stats.executions,
            stats.mean_running.unwrap_or(f64::NAN),
            stats.most_running.unwrap_or(0),
            stats.mean_run_ms.unwrap_or(f64::NAN),
        );
        print_breakdown(&before, &after, stats.executions as f64);
        print_cpu(&self.roles(), &cpu_before, &cpu, stats.executions as f64);
        Ok(())
    }

    /// Which of the bench's processes is which, by pid.
    fn roles(&self) -> BTreeMap<u32, &'static str> {
        let mut roles = BTreeMap::from([(std::process::id(), "bench client")]);
        if let Some(api) = &self.api {
            roles.insert(api.child.id(), "sluice api");
        }
        for w in &self.workers {
            roles.insert(w.child.id(), "sluice worker");
        }
        roles
    }

    /// The step summaries of the api and every worker, summed.
    async fn steps(&self) -> Result<Steps, BenchError> {
        let mut urls = vec![format!("{}/metrics", self.base)];
        urls.extend(self.workers.iter().filter_map(|w| w.metrics_url.clone()));
        let mut steps = Steps::default();
        for url in urls {
            let text = self.http.get(url).send().await?.text().await?;
            steps.add(&text);
        }
        Ok(steps)
    }

    /// 5. A large result: Sluice vs a direct download, and the worker's CPU and peak RSS.
    async fn large_result(&self, rows: u64) -> Result<(), BenchError> {
        let worker = self
            .workers
            .first()
            .ok_or_else(|| failed("no worker running"))?;
        let pid = worker.child.id();
        let sql = format!(
            "SELECT number, toString(number) AS a, concat(a, a, a, a, a, a, a, a, a, a) AS b, \
             [number, number + 1] AS c FROM system.numbers LIMIT {rows}"
        );
        let direct = direct_download(&self.tier_config, &sql)?;
        // The worker's peak so far is that of the backlogs before; the figure is the
        // peak while it streams this result, so the kernel's mark is reset first.
        let peak_before = peak_rss_mib(pid)?;
        std::fs::write(format!("/proc/{pid}/clear_refs"), "5")?;
        let cpu_before = cpu_seconds(pid)?;
        let started = Instant::now();
        let id = self
            .submit_as(&sql, crate::execution::Format::JSONEachRow)
            .await?;
        let e = self.wait_done(&id).await?;
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
            cpu_seconds(pid)? - cpu_before
        );
        println!(
            "worker peak RSS: {:.1} MiB while streaming it ({peak_before:.1} MiB before, over \
             the phases before it)",
            peak_rss_mib(pid)?
        );
        Ok(())
    }

    /// 6. Claim latency as the table grows, measured on the store directly.
    async fn claim_latency(&self, claim_rows: i64) -> Result<(), BenchError> {
        const TIER: &str = "claimbench";
        let finished_now = 10_000;
        self.store
            .insert_rows(finished_now, "finished", 10, true)
            .await?;
        let base = self
            .claims(TIER, 1, "10,000 finished rows in the table")
            .await?;
        let more = claim_rows - finished_now;
        if more > 0 {
            let started = Instant::now();
            self.store.insert_rows(more, "finished", 10, true).await?;
            println!(
                "(inserted {more} finished rows in {:.1} s)",
                started.elapsed().as_secs_f64()
            );
        }
        let big = self
            .claims(TIER, 1, &format!("{claim_rows} finished rows"))
            .await?;
        println!(
            "claim latency p50 at {claim_rows} finished rows / at 10,000: {:.2}",
            big / base
        );
        self.store
            .insert_rows(10_000, "elsewhere", 1, false)
            .await?;
        self.claims(
            TIER,
            1,
            &format!("{claim_rows} finished + 10,000 PENDING of another tier"),
        )
        .await?;
        self.store.insert_rows(10_000, TIER, 100, false).await?;
        self.claims(
            TIER,
            100,
            &format!(
                "{claim_rows} finished + 10,000 PENDING of another tier + 10,000 PENDING of 100 tenants in this tier"
            ),
        )
        .await?;
        Ok(())
    }

    /// Times 200 claims of 16 on `tier` (with `tenants` tenants pending there, topped up
    /// first); returns the p50 in ms. Claimed rows are finished right away, untimed.
    async fn claims(&self, tier: &str, tenants: i64, label: &str) -> Result<f64, BenchError> {
        const CLAIMS: usize = 200;
        const BATCH: i64 = 16;
        self.store
            .insert_rows(CLAIMS as i64 * BATCH, tier, tenants, false)
            .await?;
        let lease = Duration::from_secs(60);
        let mut times = Vec::with_capacity(CLAIMS);
        for _ in 0..CLAIMS {
            let started = Instant::now();
            let claimed = self
                .store
                .claim(tier, "bench-claimer", BATCH, lease, false)
                .await?;
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            if claimed.len() != BATCH as usize {
                return Err(failed(format!(
                    "a claim took {} executions, not {BATCH}",
                    claimed.len()
                )));
            }
            let ids: Vec<Uuid> = claimed.iter().map(|e| e.id).collect();
            self.store.finish_claimed(&ids).await?;
        }
        times.sort_by(f64::total_cmp);
        let p50 = percentile(&times, 0.50);
        println!(
            "claim latency ({CLAIMS} claims of {BATCH}), {label}: p50 {p50:.2} ms, p99 {:.2} ms",
            percentile(&times, 0.99)
        );
        Ok(p50)
    }

    async fn submit(&self, sql: &str) -> Result<Uuid, BenchError> {
        self.submit_as(sql, self.format).await
    }

    async fn submit_as(
        &self,
        sql: &str,
        format: crate::execution::Format,
    ) -> Result<Uuid, BenchError> {
        let r: Value = self
            .http
            .post(format!("{}/v1/executions", self.base))
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
    async fn wait_done(&self, id: &Uuid) -> Result<Value, BenchError> {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let e: Value = self
                .http
                .get(format!("{}/v1/executions/{id}?wait=30", self.base))
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
}

/// Steps that handle several executions at once: the counter of the executions they
/// handled, and how the bench names the ratio to the step's count.
const ROWS_PER_STEP: [(&str, &str, &str); 3] = [
    ("claim", "sluice_claims_total", "executions per claim"),
    (
        "complete_batch",
        "sluice_completion_batch_rows_sum",
        "completions per statement",
    ),
    (
        "submit_batch",
        "sluice_submit_batch_rows_sum",
        "submits per statement",
    ),
];

/// `_count` and `_sum` of the step summaries, and the executions handled by the steps of
/// [`ROWS_PER_STEP`].
#[derive(Debug, Default, Clone)]
struct Steps {
    /// step -> (count, seconds)
    steps: BTreeMap<String, (f64, f64)>,
    /// step -> executions handled
    rows: BTreeMap<&'static str, f64>,
}

impl Steps {
    /// Adds what one Prometheus text says.
    fn add(&mut self, text: &str) {
        for line in text.lines() {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let step = || {
                name.split_once("step=\"")
                    .and_then(|(_, r)| r.split_once('"'))
                    .map(|(s, _)| s.to_string())
            };
            if name.starts_with("sluice_step_seconds_count") {
                if let Some(s) = step() {
                    self.steps.entry(s).or_default().0 += value;
                }
            } else if name.starts_with("sluice_step_seconds_sum") {
                if let Some(s) = step() {
                    self.steps.entry(s).or_default().1 += value;
                }
            } else if let Some((step, _, _)) = ROWS_PER_STEP
                .iter()
                .find(|(_, series, _)| name.starts_with(series))
            {
                *self.rows.entry(step).or_default() += value;
            }
        }
    }

    fn rows(&self, step: &str) -> f64 {
        self.rows.get(step).copied().unwrap_or_default()
    }
}

/// What each step cost per execution between two scrapes.
fn print_breakdown(before: &Steps, after: &Steps, executions: f64) {
    println!("  where each execution's time went (api and workers' sluice_step_seconds):");
    for (step, (count, secs)) in &after.steps {
        let (c0, s0) = before.steps.get(step).copied().unwrap_or_default();
        let (count, secs) = (count - c0, secs - s0);
        if count <= 0.0 {
            continue;
        }
        let note = match ROWS_PER_STEP.iter().find(|(s, _, _)| s == step) {
            Some((_, _, ratio)) => format!(
                ", {:.1} {ratio}",
                (after.rows(step) - before.rows(step)) / count
            ),
            None => match step.as_str() {
                "record" => " (waiting for the batch of completions)",
                "clickhouse" => " (send to end of stream)",
                "describe" => " (beside the query)",
                _ => "",
            }
            .to_string(),
        };
        println!(
            "    {step:<15} {:>5.2} per execution, {:>6.3} ms each{note}",
            count / executions,
            secs / count * 1000.0
        );
    }
}

/// The scratch database beside `configured`, which the bench drops when it starts and
/// ends. Postgres cuts names at 63 bytes, so the configured name is shortened to leave
/// room for the suffix: whole, a 63-byte name plus `_bench` would be cut back to the
/// configured database itself.
fn scratch_name(configured: &str) -> Result<String, BenchError> {
    const SUFFIX: &str = "_bench";
    const MAX_NAME: usize = 63;
    let mut end = configured.len().min(MAX_NAME - SUFFIX.len());
    while !configured.is_char_boundary(end) {
        end -= 1;
    }
    let name = format!("{}{SUFFIX}", &configured[..end]);
    if name == configured {
        return Err(failed(format!(
            "the bench's scratch database would be `{configured}` itself; \
             configure a shorter database name"
        )));
    }
    Ok(name)
}

fn ms(d: chrono::TimeDelta) -> f64 {
    d.num_microseconds().unwrap_or(0) as f64 / 1000.0
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

/// The tier's first URL with its settings as parameters (`readonly` last), as a worker
/// would send them.
fn direct_url(tier: &TierConfig, format: &str) -> Result<url::Url, BenchError> {
    let mut url =
        url::Url::parse(&tier.clickhouse_url.list()[0]).map_err(|e| failed(e.to_string()))?;
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("default_format", format);
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
    Ok(url)
}

/// Times `curl` fetching the query straight from ClickHouse with the tier's settings.
fn direct_download(tier: &TierConfig, sql: &str) -> Result<Duration, BenchError> {
    let url = direct_url(tier, "JSONEachRow")?;
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

/// The process's peak resident memory since it started or since `5` was last written to
/// its `clear_refs`.
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

/// CPU seconds used so far by every process on the machine, by pid: (name, seconds).
fn cpu_by_process() -> Result<BTreeMap<u32, (String, f64)>, BenchError> {
    let mut all = BTreeMap::new();
    for entry in std::fs::read_dir("/proc")? {
        let Some(pid) = entry?.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        // Processes come and go while the directory is read.
        let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else {
            continue;
        };
        if let Ok(secs) = cpu_seconds(pid) {
            all.insert(pid, (comm.trim().to_string(), secs));
        }
    }
    Ok(all)
}

/// CPU used between two snapshots, by process name (the bench's own processes by
/// role), per 1000 executions.
fn print_cpu(
    roles: &BTreeMap<u32, &'static str>,
    before: &BTreeMap<u32, (String, f64)>,
    after: &BTreeMap<u32, (String, f64)>,
    executions: f64,
) {
    let mut by_name: BTreeMap<&str, f64> = BTreeMap::new();
    for (pid, (name, secs)) in after {
        let earlier = before.get(pid).map_or(0.0, |(_, s)| *s);
        let name = roles.get(pid).copied().unwrap_or(name.as_str());
        *by_name.entry(name).or_default() += secs - earlier;
    }
    let mut top: Vec<(&str, f64)> = by_name.into_iter().filter(|(_, s)| *s > 0.05).collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    let parts: Vec<String> = top
        .iter()
        .take(8)
        .map(|(name, secs)| format!("{name} {:.2}", secs / executions * 1000.0))
        .collect();
    println!(
        "  CPU seconds per 1000 executions, by process name: {}",
        parts.join(", ")
    );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scratch_database_is_never_the_configured_one() {
        assert_eq!(scratch_name("sluice").unwrap(), "sluice_bench");
        let long = format!("_sqlx_test_{}", "x".repeat(52));
        assert_eq!(long.len(), 63);
        let scratch = scratch_name(&long).unwrap();
        assert_eq!(scratch.len(), 63);
        assert_eq!(scratch, format!("{}_bench", &long[..57]));
        // Cut on a character boundary: 'é' is two bytes.
        let accented = format!("{}é{}", "a".repeat(56), "b".repeat(10));
        assert_eq!(
            scratch_name(&accented).unwrap(),
            format!("{}_bench", "a".repeat(56))
        );
        let already = format!("{}_bench", "c".repeat(57));
        assert!(scratch_name(&already).is_err(), "it would drop {already}");
    }
}
