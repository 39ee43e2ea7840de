//! The HTTP API: routes, the shared [`ApiContext`], health and readiness, and the OpenAPI
//! document (served at `/openapi.json`, browsable at `/docs`, committed as `api.yaml`).
//!
//! Handlers validate input and translate between HTTP and the store; they never run
//! queries on ClickHouse and never hold a result in memory (downloads stream).
//!
//! Every `/v1` handler that acts for someone takes a [`Principal`] (see [`auth`]) and
//! scopes each store call with [`Principal::scope`]: another tenant's execution is a 404,
//! exactly like a missing one.

pub mod auth;
pub mod error;
pub mod executions;
pub mod groups;
pub mod model;
pub mod results;
pub mod tasks;
pub mod wait;

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

use crate::auth::{AuthError, Authenticator, LinkSigner, Principal};
use crate::config::{Bounds, Config};
use crate::results::ResultStore;
use crate::store::Store;
use error::{ApiError, ErrorBody};
use model::{HealthView, ReadyView, TierList, TierView};

/// What every handler needs.
#[derive(Clone)]
pub struct ApiContext {
    pub config: Arc<Config>,
    pub store: Store,
    pub results: ResultStore,
    pub auth: Arc<Authenticator>,
    pub links: LinkSigner,
    /// Requests long-polling an execution (`?wait=N`).
    pub finishes: Arc<wait::Finishes>,
    /// Fires when the server stops; long polls answer at once then.
    pub shutdown: CancellationToken,
    /// Saved reports, reloaded on SIGHUP.
    pub tasks: Arc<crate::tasks::Tasks>,
}

/// Why the API cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ApiInitError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("tasks: {0}")]
    Tasks(#[from] crate::tasks::TaskError),
}

impl ApiContext {
    pub fn new(
        config: Arc<Config>,
        store: Store,
        results: ResultStore,
    ) -> Result<ApiContext, ApiInitError> {
        if config.results.link_secret.is_none() {
            tracing::warn!(
                "results.link_secret is not set: result links of a local store are signed \
                 with a key private to this process"
            );
        }
        let tasks = crate::tasks::Tasks::load(
            config.tasks.dir.as_deref(),
            config.tiers.keys().cloned().collect(),
        )?;
        tracing::info!(tasks = tasks.current().tasks.len(), "saved reports loaded");
        Ok(ApiContext {
            tasks: Arc::new(tasks),
            auth: Arc::new(Authenticator::new(&config.auth)?),
            links: LinkSigner::new(config.results.link_secret.as_deref()),
            finishes: Arc::default(),
            shutdown: CancellationToken::new(),
            config,
            store,
            results,
        })
    }
}

/// Declares the bearer scheme the `/v1` operations name in `security`.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key (`sk_...`) or a JWT (HS256, or signed by a key of the configured JWKS)"))
                    .build(),
            ),
        );
    }
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
        tasks::list,
        tasks::submit,
        groups::create,
        groups::get,
        groups::cancel,
        results::download,
        results::result_url,
        results::signed_download,
        tiers,
        health,
        ready,
        metrics,
    ),
    tags(
        (name = "executions", description = "Submit, inspect, cancel and download"),
        (name = "tasks", description = "Saved reports: named SQL with typed arguments"),
        (name = "groups", description = "Executions created together, with a concurrency limit"),
        (name = "tiers", description = "Where executions run, and the limits there"),
        (name = "operations", description = "Liveness and readiness"),
    ),
    modifiers(&BearerAuth)
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
        .route("/v1/tasks", get(tasks::list))
        .route("/v1/tasks/{name}/executions", post(tasks::submit))
        .route("/v1/groups", post(groups::create))
        .route("/v1/groups/{id}", get(groups::get))
        .route("/v1/groups/{id}/cancel", post(groups::cancel))
        .route("/v1/executions/{id}/result", get(results::download))
        .route("/v1/executions/{id}/result-url", post(results::result_url))
        .route("/v1/results/{id}", get(results::signed_download))
        .route("/v1/tiers", get(tiers))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .merge(SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi()))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(ctx)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

/// The tiers the caller may use, with the limits that apply to it there.
#[utoipa::path(get, path = "/v1/tiers", tag = "tiers",
    responses(
        (status = 200, body = TierList),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn tiers(State(ctx): State<ApiContext>, principal: Principal) -> Json<TierList> {
    let default = principal
        .default_tier
        .clone()
        .unwrap_or_else(|| ctx.config.default_tier.clone());
    let tiers = ctx
        .config
        .tiers
        .iter()
        .filter(|(name, _)| principal.may_use(name))
        .map(|(name, t)| TierView {
            name: name.clone(),
            default: *name == default,
            max_sql_bytes: t.max_sql_bytes,
            max_attempts: t.max_attempts,
            max_running: principal.max_running.or(t.max_running_per_tenant),
            max_queued: principal.max_queued.or(t.max_queued_per_tenant),
            client_settings: t
                .client_settings
                .iter()
                .map(|s| {
                    let b = t
                        .client_setting_bounds
                        .get(s)
                        .cloned()
                        .unwrap_or(Bounds::default());
                    (s.clone(), b)
                })
                .collect(),
            result_retention_seconds: t.retention.succeeded.as_secs(),
        })
        .collect();
    Json(TierList { tiers })
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
        (status = 503, description = "Postgres unavailable", body = ErrorBody),
    ))]
pub async fn metrics(
    State(ctx): State<ApiContext>,
) -> Result<([(axum::http::HeaderName, &'static str); 1], String), ApiError> {
    let text = crate::metrics::render(&ctx.store, ctx.config.tiers.keys()).await?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    ))
}

/// Serves until `shutdown` fires, then finishes in-flight requests (long polls answer at
/// once). Also listens for finished executions, to wake long polls.
pub async fn serve(
    listener: TcpListener,
    mut ctx: ApiContext,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "api listening");
    ctx.shutdown = shutdown.clone();
    tokio::spawn(
        ctx.finishes
            .clone()
            .listen(ctx.store.clone(), shutdown.clone()),
    );
    tokio::spawn(reload_tasks_on_sighup(ctx.tasks.clone(), shutdown.clone()));
    axum::serve(listener, router(ctx))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Reloads the saved reports on every SIGHUP: all or nothing, so a broken file keeps the
/// set in use (and says why in the log).
async fn reload_tasks_on_sighup(tasks: Arc<crate::tasks::Tasks>, shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP: saved reports are read at start only");
        return;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => match tasks.reload() {
                Ok(n) => {
                    metrics::counter!("sluice_task_reloads_total", "outcome" => "ok").increment(1);
                    tracing::info!(tasks = n, "saved reports reloaded")
                }
                Err(e) => {
                    metrics::counter!("sluice_task_reloads_total", "outcome" => "failed").increment(1);
                    tracing::warn!(error = %e, "saved reports not reloaded; the previous set stays")
                }
            },
            _ = shutdown.cancelled() => return,
        }
    }
}
