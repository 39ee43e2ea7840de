//! The processes `sluice` runs, wired from the modules: `api`, `worker --tier T`,
//! `bookkeeper`, `migrate`, and `standalone` (all of them in one process, migrations
//! applied, one worker per configured tier). Each role stops gracefully when its
//! shutdown token fires (SIGTERM/SIGINT in `main`).

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::api::{self, ApiContext};
use crate::bookkeeper::Bookkeeper;
use crate::clickhouse::EngineError;
use crate::config::Config;
use crate::results::{ResultStore, ResultsError};
use crate::store::{Store, StoreError};
use crate::worker::{Worker, WorkerError};

#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Results(#[from] ResultsError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Worker(#[from] WorkerError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("api: {0}")]
    Api(#[from] crate::api::ApiInitError),
    #[error("api server failed: {0}")]
    Serve(std::io::Error),
    #[error("a role task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

async fn connect(config: &Config) -> Result<Store, RoleError> {
    Ok(Store::connect(&config.database_url, config.database_max_connections).await?)
}

pub async fn migrate(config: &Config) -> Result<(), RoleError> {
    connect(config).await?.migrate().await?;
    info!("migrations applied");
    Ok(())
}

pub async fn api(config: Config, shutdown: CancellationToken) -> Result<(), RoleError> {
    let store = connect(&config).await?;
    let results = ResultStore::new(&config.results)?;
    serve_api(config, store, results, shutdown).await
}

async fn serve_api(
    config: Config,
    store: Store,
    results: ResultStore,
    shutdown: CancellationToken,
) -> Result<(), RoleError> {
    let addr = config.api.listen;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| RoleError::Listen { addr, source })?;
    let ctx = ApiContext::new(Arc::new(config), store, results)?;
    api::serve(listener, ctx, shutdown)
        .await
        .map_err(RoleError::Serve)
}

/// Serves this process's counters on `metrics.listen`, if configured.
async fn serve_own_metrics(config: &Config, shutdown: CancellationToken) -> Result<(), RoleError> {
    let Some(addr) = config.metrics.listen else {
        return Ok(());
    };
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| RoleError::Listen { addr, source })?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async { crate::metrics::handle().render() }),
    );
    info!(%addr, "serving /metrics");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    });
    Ok(())
}

pub async fn worker(
    config: Config,
    tier: &str,
    shutdown: CancellationToken,
) -> Result<(), RoleError> {
    serve_own_metrics(&config, shutdown.clone()).await?;
    let store = connect(&config).await?;
    let results = ResultStore::new(&config.results)?;
    Worker::new(&config, tier, store, results)?
        .run(shutdown)
        .await?;
    Ok(())
}

pub async fn bookkeeper(config: Config, shutdown: CancellationToken) -> Result<(), RoleError> {
    serve_own_metrics(&config, shutdown.clone()).await?;
    let store = connect(&config).await?;
    let results = ResultStore::new(&config.results)?;
    Bookkeeper::new(&config, store, results)?
        .run(shutdown)
        .await;
    Ok(())
}

/// Everything in one process: the zero-setup developer mode.
pub async fn standalone(config: Config, shutdown: CancellationToken) -> Result<(), RoleError> {
    let store = connect(&config).await?;
    store.migrate().await?;
    let results = ResultStore::new(&config.results)?;

    let mut tasks = tokio::task::JoinSet::new();
    for tier in config.tiers.keys() {
        let worker = Worker::new(&config, tier, store.clone(), results.clone())?;
        let shutdown = shutdown.clone();
        tasks.spawn(async move { worker.run(shutdown).await.map_err(RoleError::from) });
    }
    let bookkeeper = Bookkeeper::new(&config, store.clone(), results.clone())?;
    let bk_shutdown = shutdown.clone();
    tasks.spawn(async move {
        bookkeeper.run(bk_shutdown).await;
        Ok(())
    });
    let api_shutdown = shutdown.clone();
    tasks.spawn(serve_api(config, store, results, api_shutdown));

    // The first role to fail stops the others.
    let mut first_error = None;
    while let Some(done) = tasks.join_next().await {
        let outcome = done.map_err(RoleError::from).and_then(|r| r);
        if let Err(e) = outcome {
            shutdown.cancel();
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}
