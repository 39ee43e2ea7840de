//! The HTTP API: routes, the shared [`ApiContext`], health and readiness, and the OpenAPI
//! document (served at `/openapi.json`, browsable at `/docs`, committed as `api.yaml`).
//!
//! Handlers validate input and translate between HTTP and the store; they never run
//! queries on ClickHouse and never hold a result in memory (downloads stream).

pub mod error;
pub mod executions;
pub mod model;
pub mod results;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::config::Config;
use crate::results::ResultStore;
use crate::store::Store;
use model::{HealthView, ReadyView};

/// Identity of the caller. Until authentication exists every request acts for the
/// `default` tenant.
pub(crate) const TENANT: &str = "default";
pub(crate) const CREATED_BY: &str = "anonymous";

/// What every handler needs.
#[derive(Clone)]
pub struct ApiContext {
    pub config: Arc<Config>,
    pub store: Store,
    pub results: ResultStore,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Sluice",
        description = "Asynchronous SQL execution gateway for ClickHouse: submit SQL, poll \
                       the execution, download the result.",
        license(name = "MIT"),
    ),
    paths(
        executions::submit,
        executions::list,
        executions::get,
        executions::cancel,
        results::download,
        health,
        ready,
        metrics,
    ),
    tags(
        (name = "executions", description = "Submit, inspect, cancel and download"),
        (name = "operations", description = "Liveness and readiness"),
    )
)]
pub struct ApiDoc;

/// The OpenAPI document as YAML: what `api.yaml` must contain.
pub fn openapi_yaml() -> String {
    ApiDoc::openapi()
        .to_yaml()
        .unwrap_or_else(|e| format!("# cannot render the OpenAPI document: {e}\n"))
}

pub fn router(ctx: ApiContext) -> Router {
    let max_body = ctx.config.api.max_body_bytes;
    Router::new()
        .route(
            "/v1/executions",
            post(executions::submit).get(executions::list),
        )
        .route("/v1/executions/{id}", get(executions::get))
        .route("/v1/executions/{id}/cancel", post(executions::cancel))
        .route("/v1/executions/{id}/result", get(results::download))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .merge(SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi()))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(ctx)
}

async fn not_found() -> error::ApiError {
    error::ApiError::NotFound("no such route".into())
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, body = HealthView)))]
pub async fn health() -> Json<HealthView> {
    Json(HealthView {
        status: "ok".into(),
    })
}

/// Readiness: Postgres answers; also names the leading bookkeeper.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses((status = 200, body = ReadyView), (status = 503, body = ReadyView)))]
pub async fn ready(State(ctx): State<ApiContext>) -> (StatusCode, Json<ReadyView>) {
    match ctx.store.leader().await {
        Ok(leader) => {
            error::database_answered();
            (
                StatusCode::OK,
                Json(ReadyView {
                    status: "ready".into(),
                    postgres: "ok".into(),
                    bookkeeper_leader: leader,
                }),
            )
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(ReadyView {
                status: "not_ready".into(),
                postgres: e.to_string(),
                bookkeeper_leader: None,
            }),
        ),
    }
}

/// Prometheus metrics: the queue by tier and status, and this process's counters.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
        (status = 503, description = "Postgres unavailable", body = error::ErrorBody),
    ))]
pub async fn metrics(
    State(ctx): State<ApiContext>,
) -> Result<([(axum::http::HeaderName, &'static str); 1], String), error::ApiError> {
    let text = crate::metrics::render(&ctx.store, ctx.config.tiers.keys()).await?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    ))
}

/// Serves until `shutdown` fires, then finishes in-flight requests.
pub async fn serve(
    listener: TcpListener,
    ctx: ApiContext,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "api listening");
    axum::serve(listener, router(ctx))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
