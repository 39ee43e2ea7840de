//! `sluice <command>`: the CLI. Parses arguments, loads the configuration, sets up
//! logging and signals, and hands over to a role in `sluice::roles`.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use sluice::config::Config;
use sluice::roles;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Asynchronous SQL execution gateway for ClickHouse"
)]
struct Cli {
    /// Configuration file (TOML). `SLUICE_...` environment variables override it.
    #[arg(long, short, env = "SLUICE_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API.
    Api,
    /// Run executions of one tier.
    Worker {
        #[arg(long)]
        tier: String,
    },
    /// Reclaim the work of lost workers.
    Bookkeeper,
    /// Apply database migrations and exit.
    Migrate,
    /// API, one worker per tier and the bookkeeper in one process; applies migrations.
    Standalone,
    /// Print the OpenAPI document (YAML) and exit.
    Openapi,
    /// Print a new API key and the `[[auth.api_keys]]` entry to paste into the
    /// configuration (which stores only the key's sha256).
    Keygen {
        #[command(flatten)]
        who: PrincipalArgs,
        /// Sees every tenant's executions.
        #[arg(long)]
        admin: bool,
    },
    /// Print an HS256 JWT signed with the configured `auth.jwt.secret`.
    Token {
        #[command(flatten)]
        who: PrincipalArgs,
        /// Default tier.
        #[arg(long)]
        tier: Option<String>,
        /// Validity in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: i64,
    },
    /// Run SQL through a Sluice API (`SLUICE_URL`, `SLUICE_TOKEN`): submit, follow with a
    /// progress bar on a terminal, write the result to stdout or a file. Ctrl-C and
    /// `--timeout` cancel it on the server. Exit status: 0 succeeded, 1 failed, 124
    /// timed out, 130 interrupted.
    Query {
        /// The SQL (one statement).
        sql: String,
        #[arg(long)]
        tier: Option<String>,
        /// Output format (ClickHouse's name); the server's default (JSONEachRow) when
        /// absent.
        #[arg(long)]
        format: Option<String>,
        /// A query parameter, `name=value`, for `{name:Type}` in the SQL (repeatable).
        #[arg(long = "param", value_parser = parse_param)]
        params: Vec<(String, String)>,
        /// Write the result here instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Cancel and fail after this long (e.g. `5m`), waiting in the queue included.
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<std::time::Duration>,
        /// Print the execution id and exit without waiting.
        #[arg(long)]
        no_wait: bool,
    },
    /// List, inspect, cancel and download executions through the API.
    Executions {
        #[command(subcommand)]
        action: ExecutionsCommand,
    },
    /// Measure pickup latency, closed- and open-loop throughput against the ClickHouse
    /// ceiling, streaming overhead, worker memory and claim latency.
    Bench {
        /// Executions timed one by one for pickup latency.
        #[arg(long, default_value_t = 200)]
        pickups: usize,
        /// Trivial executions for the throughput figure.
        #[arg(long, default_value_t = 2000)]
        trivial: usize,
        /// Concurrent clients (and worker slots) for the throughput figures.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Executions of the open-loop burst, drained by one and then two workers
        /// (0 skips it).
        #[arg(long, default_value_t = 5000)]
        backlog: usize,
        /// Executions of the latency-bound burst (each waits 50 ms on ClickHouse),
        /// drained by one and then two workers (0 skips it).
        #[arg(long, default_value_t = 1000)]
        sleep_backlog: usize,
        /// Finished rows in the table for the second claim-latency figure (0 skips the
        /// claim figures).
        #[arg(long, default_value_t = 1_000_000)]
        claim_rows: i64,
        /// Rows of the large result (~125 bytes each; 8,000,000 is about 1 GB).
        #[arg(long, default_value_t = 8_000_000)]
        large_rows: u64,
        /// Where the bench stores results (e.g. /dev/shm to leave the disk out).
        #[arg(long)]
        results_dir: Option<PathBuf>,
        /// Result format of the trivial executions (JSON and
        /// TabSeparatedWithNamesAndTypes carry their columns, so they need no DESCRIBE).
        #[arg(long, default_value = "JSONEachRow", value_parser = parse_format)]
        format: sluice::execution::Format,
    },
}

#[derive(Subcommand)]
enum ExecutionsCommand {
    /// Newest first, one per line: id, status, tier, created_at, query_id.
    Ls {
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// The execution as JSON.
    Get { id: String },
    /// Cancel it (a running query is killed on ClickHouse).
    Cancel { id: String },
    /// Its result, to stdout or a file.
    Result {
        id: String,
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// A link that downloads the result without credentials.
    Url {
        id: String,
        /// Validity in seconds.
        #[arg(long)]
        expires_in: Option<u64>,
    },
}

fn parse_param(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{text}` is not name=value"))
}

/// `sluice query` and `sluice executions`: clients of the API, without configuration.
fn run_client(command: Command) -> anyhow::Result<i32> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let client = sluice::client::Client::from_env()?;
        let print = |v: serde_json::Value| {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default())
        };
        match command {
            Command::Query {
                sql,
                tier,
                format,
                params,
                output,
                timeout,
                no_wait,
            } => {
                let interrupt = CancellationToken::new();
                let on_ctrl_c = interrupt.clone();
                tokio::spawn(async move {
                    if tokio::signal::ctrl_c().await.is_ok() {
                        on_ctrl_c.cancel();
                    }
                });
                let opts = sluice::client::QueryOptions {
                    sql,
                    tier,
                    format,
                    params,
                    output,
                    timeout,
                    no_wait,
                };
                let exit = sluice::client::query(&client, opts, interrupt).await?;
                return Ok(exit as i32);
            }
            Command::Executions { action } => match action {
                ExecutionsCommand::Ls { status, limit } => {
                    let mut path = format!("/v1/executions?limit={limit}");
                    if let Some(s) = status {
                        path.push_str(&format!("&status={s}"));
                    }
                    let page = client.get_value(&path).await?;
                    for e in page["executions"].as_array().into_iter().flatten() {
                        println!(
                            "{}\t{}\t{}\t{}\t{}",
                            e["id"].as_str().unwrap_or(""),
                            e["status"].as_str().unwrap_or(""),
                            e["tier"].as_str().unwrap_or(""),
                            e["created_at"].as_str().unwrap_or(""),
                            e["query_id"].as_str().unwrap_or("")
                        );
                    }
                }
                ExecutionsCommand::Get { id } => {
                    print(client.get_value(&format!("/v1/executions/{id}")).await?)
                }
                ExecutionsCommand::Cancel { id } => print(client.cancel(&id).await?),
                ExecutionsCommand::Result { id, output } => {
                    client.download_to(&id, output.as_deref()).await?;
                }
                ExecutionsCommand::Url { id, expires_in } => {
                    print(client.result_url(&id, expires_in).await?)
                }
            },
            _ => {}
        }
        Ok(0)
    })
}

fn parse_format(text: &str) -> Result<sluice::execution::Format, String> {
    sluice::execution::Format::parse(text).ok_or_else(|| format!("unknown format `{text}`"))
}

/// Who a new API key or token speaks for (`sluice keygen`, `sluice token`).
#[derive(clap::Args)]
struct PrincipalArgs {
    /// The principal's name (a token's `sub`).
    #[arg(long)]
    name: String,
    /// Its tenant.
    #[arg(long)]
    tenant: String,
    /// Tiers it may use (comma-separated); all when absent.
    #[arg(long, value_delimiter = ',')]
    tiers: Option<Vec<String>>,
}

fn keygen(
    PrincipalArgs {
        name,
        tenant,
        tiers,
    }: &PrincipalArgs,
    admin: bool,
) -> String {
    let key = sluice::auth::generate_key();
    let quote = |s: &str| toml::Value::String(s.to_string()).to_string();
    let mut entry = format!(
        "[[auth.api_keys]]\nname = {}\ntenant = {}\nsha256 = \"{}\"\n",
        quote(name),
        quote(tenant),
        sluice::auth::hash_key(&key)
    );
    if let Some(tiers) = tiers {
        let list: Vec<String> = tiers.iter().map(|t| quote(t)).collect();
        entry.push_str(&format!("tiers = [{}]\n", list.join(", ")));
    }
    if admin {
        entry.push_str("admin = true\n");
    }
    format!(
        "API key (shown once; clients send `Authorization: Bearer <key>`):\n{key}\n\n\
         Add to the configuration:\n{entry}"
    )
}

fn main() -> anyhow::Result<()> {
    tune_allocator();
    let cli = Cli::parse();
    init_logging();
    if let Command::Openapi = cli.command {
        print!("{}", sluice::api::openapi_yaml());
        return Ok(());
    }
    if let Command::Keygen { who, admin } = &cli.command {
        print!("{}", keygen(who, *admin));
        return Ok(());
    }
    if matches!(
        cli.command,
        Command::Query { .. } | Command::Executions { .. }
    ) {
        let code = run_client(cli.command)?;
        std::process::exit(code);
    }
    let path = cli.config.or_else(|| {
        let default = PathBuf::from("sluice.toml");
        default.exists().then_some(default)
    });
    let config = Config::load(path.as_deref()).context("configuration")?;
    let config_path = path.clone();
    if let Command::Token { who, tier, ttl } = &cli.command {
        let PrincipalArgs {
            name,
            tenant,
            tiers,
        } = who;
        let jwt = config.auth.jwt.as_ref();
        let secret = jwt
            .and_then(|j| j.secret.as_deref())
            .context("`sluice token` needs [auth.jwt] secret in the configuration")?;
        let mut claims = serde_json::json!({
            "sub": name,
            "tenant": tenant,
            "exp": sluice::auth::unix_now() + ttl,
        });
        if let Some(t) = tiers {
            claims["tiers"] = serde_json::json!(t);
        }
        if let Some(t) = tier {
            claims["tier"] = serde_json::json!(t);
        }
        if let Some(iss) = jwt.and_then(|j| j.issuer.as_ref()) {
            claims["iss"] = serde_json::json!(iss);
        }
        if let Some(aud) = jwt.and_then(|j| j.audience.as_ref()) {
            claims["aud"] = serde_json::json!(aud);
        }
        println!("{}", sluice::auth::sign_jwt(&claims, secret));
        return Ok(());
    }

    sluice::metrics::handle(); // record from the start, whatever the role
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let shutdown = shutdown_on_signal()?;
        match cli.command {
            Command::Api => roles::api(config, shutdown).await?,
            Command::Worker { tier } => roles::worker(config, &tier, shutdown).await?,
            Command::Bookkeeper => roles::bookkeeper(config, shutdown).await?,
            Command::Migrate => roles::migrate(&config).await?,
            Command::Standalone => roles::standalone(config, shutdown).await?,
            Command::Bench {
                pickups,
                trivial,
                concurrency,
                backlog,
                sleep_backlog,
                claim_rows,
                large_rows,
                results_dir,
                format,
            } => {
                let opts = sluice::bench::BenchOptions {
                    pickups,
                    trivial,
                    concurrency,
                    backlog,
                    sleep_backlog,
                    claim_rows,
                    large_rows,
                    results_dir,
                    format,
                };
                sluice::bench::run(&config, config_path.as_deref(), opts).await?
            }
            Command::Openapi
            | Command::Keygen { .. }
            | Command::Token { .. }
            | Command::Query { .. }
            | Command::Executions { .. } => {}
        }
        Ok(())
    })
}

/// A worker streams results through short-lived network buffers at a high rate. glibc's
/// defaults hand freed memory back to the kernel almost at once, so every new buffer
/// page-faults again: `sluice bench` measured 25% of the worker's CPU on a 1 GB result
/// going there. Keeping up to 256 MiB of freed heap (and serving buffers of up to
/// 32 MiB from the heap) removes that; peak RSS did not change measurably.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any thread exists.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

/// JSON logs when not on a terminal (for collectors), readable ones when on one.
fn init_logging() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        builder.init();
    } else {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init();
    }
}

/// A token cancelled by the first SIGTERM or SIGINT.
fn shutdown_on_signal() -> anyhow::Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let t = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutdown requested");
        t.cancel();
    });
    Ok(token)
}
