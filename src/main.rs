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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging();
    if let Command::Openapi = cli.command {
        print!("{}", sluice::api::openapi_yaml());
        return Ok(());
    }
    let path = cli.config.or_else(|| {
        let default = PathBuf::from("sluice.toml");
        default.exists().then_some(default)
    });
    let config = Config::load(path.as_deref()).context("configuration")?;

    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let shutdown = shutdown_on_signal()?;
        match cli.command {
            Command::Api => roles::api(config, shutdown).await?,
            Command::Worker { tier } => roles::worker(config, &tier, shutdown).await?,
            Command::Bookkeeper => roles::bookkeeper(config, shutdown).await?,
            Command::Migrate => roles::migrate(&config).await?,
            Command::Standalone => roles::standalone(config, shutdown).await?,
            Command::Openapi => {}
        }
        Ok(())
    })
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
