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
mod dry_run;
pub mod error;
pub mod events;
pub mod executions;
pub mod groups;
pub mod model;
mod pages;
pub mod results;
pub mod tasks;
pub mod wait;

use std::collections::BTreeMap;
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
use crate::clickhouse::Endpoint;
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
    /// Each tier's ClickHouse, for dry runs only: the API never runs a query.
    pub engines: Arc<BTreeMap<String, Endpoint>>,
}

/// Why the API cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ApiInitError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("tasks: {0}")]
    Tasks(#[from] crate::tasks::TaskError),
    #[error("tiers.{tier}: {error}")]
    Engine {
        tier: String,
        error: crate::clickhouse::EngineError,
    },
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
        let engines = config
            .tiers
            .iter()
            .map(|(name, tier)| {
                Endpoint::new(tier)
                    .map(|e| (name.clone(), e))
                    .map_err(|error| ApiInitError::Engine {
                        tier: name.clone(),
                        error,
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(ApiContext {
            engines: Arc::new(engines),
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

/// What the macros cannot say: each result download's content types (one per stored
/// format, as binary) and the optional body of `result-url`.
struct Contract;

impl utoipa::Modify for Contract {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        use utoipa::openapi::{Content, RefOr, Required};
        let binary = || {
            RefOr::T(Content::new(Some(RefOr::T(
                utoipa::openapi::Schema::Object(
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
                        .build(),
                ),
            ))))
        };
        // JSON, JSONCompact, JSONStrings: one JSON object.
        let json = || {
            RefOr::T(Content::new(Some(RefOr::T(
                utoipa::openapi::Schema::Object(
                    ObjectBuilder::new().schema_type(Type::Object).build(),
                ),
            ))))
        };
        let mut types: Vec<&str> = crate::execution::Format::ALL
            .iter()
            .map(|f| f.content_type())
            .collect();
        // Generic binary first: generated clients read the body as the first type
        // says, and any result is bytes.
        types.sort_unstable_by_key(|t| (*t != "application/octet-stream", *t));
        types.dedup();
        for path in ["/v1/executions/{id}/result", "/v1/results/{id}"] {
            let Some(op) = openapi
                .paths
                .paths
                .get_mut(path)
                .and_then(|p| p.get.as_mut())
            else {
                continue;
            };
            for status in ["200", "206"] {
                if let Some(RefOr::T(response)) = op.responses.responses.get_mut(status) {
                    response.content = types
                        .iter()
                        .map(|t| {
                            (
                                t.to_string(),
                                if *t == "application/json" {
                                    json()
                                } else {
                                    binary()
                                },
                            )
                        })
                        .collect();
                }
            }
        }
        if let Some(body) = openapi
            .paths
            .paths
            .get_mut("/v1/executions/{id}/result-url")
            .and_then(|p| p.post.as_mut())
            .and_then(|op| op.request_body.as_mut())
            && let RefOr::T(body) = body
        {
            body.required = Some(Required::False);
            body.content = [(
                "application/json".to_string(),
                RefOr::T(Content::new(Some(RefOr::Ref(
                    utoipa::openapi::Ref::from_schema_name("ResultUrlRequest"),
                )))),
            )]
            .into_iter()
            .collect();
        }
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
        executions::search,
        events::events,
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
    components(schemas(events::EventState)),
    modifiers(&BearerAuth, &Contract)
)]
pub struct ApiDoc;

/// The document this server serves: `api.yaml` with the bounds of its own
/// configuration (`api.max_wait`, `api.max_page_size`) where the defaults stand there.
pub fn openapi_for(api: &crate::config::ApiConfig) -> utoipa::openapi::OpenApi {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::Schema;
    let mut doc = ApiDoc::openapi();
    let bound = |name: &str| match name {
        "wait" => Some(api.max_wait.as_secs() as usize),
        "limit" => Some(api.max_page_size as usize),
        _ => None,
    };
    for (path, item) in doc.paths.paths.iter_mut() {
        for op in [item.get.as_mut(), item.post.as_mut()]
            .into_iter()
            .flatten()
        {
            for p in op.parameters.iter_mut().flatten() {
                let RefOr::T(p) = p else { continue };
                // `limit` of the list only: search bounds its own in the body.
                let Some(max) =
                    bound(&p.name).filter(|_| p.name != "limit" || path == "/v1/executions")
                else {
                    continue;
                };
                if let Some(RefOr::T(Schema::Object(o))) = p.schema.as_mut() {
                    o.maximum = Some(utoipa::Number::UInt(max));
                }
            }
        }
    }
    doc
}

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
        .route("/v1/executions/search", post(executions::search))
        .route("/v1/executions/{id}", get(executions::get))
        .route("/v1/executions/{id}/cancel", post(executions::cancel))
        .route("/v1/executions/{id}/events", get(events::events))
        .route("/v1/tasks", get(tasks::list))
        .route("/v1/tasks/{name}/executions", post(tasks::submit))
        .route("/v1/groups", post(groups::create))
        .route("/v1/groups/{id}", get(groups::get))
        .route("/v1/groups/{id}/cancel", post(groups::cancel))
        .route("/v1/executions/{id}/result", get(results::download))
        .route("/v1/executions/{id}/result-url", post(results::result_url))
        .route("/v1/results/{id}", get(results::signed_download))
        .route("/v1/tiers", get(tiers))
        .route("/ui", get(console))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .merge(SwaggerUi::new("/docs").url("/openapi.json", openapi_for(&ctx.config.api)))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(ctx)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

/// The tiers the caller may use, with the limits that apply to it there.
#[utoipa::path(get, path = "/v1/tiers", operation_id = "list_tiers", tag = "tiers",
    responses(
        (status = 200, description = "The tiers this principal may use", body = TierList),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn tiers(
    State(ctx): State<ApiContext>,
    principal: Principal,
) -> Result<Json<TierList>, ApiError> {
    let load = ctx.store.tier_load(&principal.tenant).await?;
    let load_of = |name: &str| {
        load.iter()
            .find(|l| l.tier == name)
            .cloned()
            .unwrap_or_default()
    };
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
            pending: load_of(name).pending,
            running: load_of(name).running,
            oldest_pending_seconds: load_of(name).oldest_pending_seconds,
        })
        .collect();
    Ok(Json(TierList { tiers }))
}

/// The web console: one static page (no CDN, nothing fetched but this API) that asks
/// for an API key once per browser session and drives `/v1` with it.
async fn console() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("console.html"))
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", operation_id = "health", tag = "operations",
    responses((status = 200, description = "The process is alive", body = HealthView)))]
pub async fn health() -> Json<HealthView> {
    Json(HealthView {
        status: "ok".into(),
    })
}

/// Readiness: Postgres answers; also names the leading bookkeeper.
#[utoipa::path(get, path = "/ready", operation_id = "ready", tag = "operations",
    responses(
        (status = 200, description = "Ready: Postgres answers", body = ReadyView),
        (status = 503, description = "Not ready: Postgres does not answer", body = ReadyView),
    ))]
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
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "operations",
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
