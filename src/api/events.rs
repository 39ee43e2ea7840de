//! `GET /v1/executions/{id}/events`: an execution's life as Server-Sent Events.
//!
//! Events: `status` when the status changes, `progress` when the statistics do (read
//! each second, as the worker records them), and finally `execution` (the whole
//! execution, as `GET /v1/executions/{id}` answers) once it has ended, after which the
//! stream closes. Each event's id names the state it reports (`<status>-<rows read>-
//! <result bytes>`, `final` for the last), so a client that reconnects with
//! `Last-Event-ID` gets only what changed since; after `final` a reconnect is answered
//! 204, which tells an EventSource to stop. A stream lives at most `api.event_stream`
//! (5 minutes by default); then it closes and the client resumes. Nothing is stored to
//! replay: the state is
//! read from the execution itself. Tenant-checked like every route (another tenant's
//! execution is a 404).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use uuid::Uuid;

use super::ApiContext;
use super::error::{ApiError, ErrorBody};
use super::executions::parse_id;
use super::model::ExecutionView;
use crate::auth::Principal;
use crate::execution::Execution;

/// How often a running execution is read for new statistics.
const EVERY: Duration = Duration::from_secs(1);

/// Follow an execution as Server-Sent Events until it ends.
///
/// `status` and `progress` events while it runs, then one `execution` event with the
/// final state; resumable with `Last-Event-ID`.
#[utoipa::path(
    get,
    path = "/v1/executions/{id}/events",
    operation_id = "execution_events",
    tag = "executions",
    params(
        ("id" = Uuid, Path, description = "Execution id"),
        ("Last-Event-ID" = Option<String>, Header, description = "The id of the last event received, to resume"),
    ),
    responses(
        (status = 200, description = "An event stream (`status`, `progress`, then `execution`); each event's data is JSON", content_type = "text/event-stream", body = ServerSentEvent),
        (status = 204, description = "The stream already delivered the final event (`Last-Event-ID: final`)"),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 404, description = "No such execution (or another tenant's)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn events(
    State(ctx): State<ApiContext>,
    principal: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let uuid = parse_id(&id)?;
    let ctx_event_stream = ctx.config.api.event_stream;
    let scope = principal.scope().map(String::from);
    let first = ctx
        .store
        .get(uuid, scope.as_deref())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no execution with id `{id}`")))?;
    let last_seen = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    if first.status.is_terminal() && last_seen.as_deref() == Some(FINAL) {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let follow = Follow {
        ctx,
        id: uuid,
        scope,
        next: Some(first),
        last_id: last_seen,
        last_status: None,
        done: false,
        until: tokio::time::Instant::now() + ctx_event_stream,
    };
    Ok(Sse::new(follow.into_stream())
        .keep_alive(KeepAlive::default())
        .into_response())
}

const FINAL: &str = "final";

/// The data of a `status` or `progress` event (only these fields, which tells it from
/// the final event's execution).
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventState {
    pub status: crate::execution::Status,
    pub progress: Option<crate::execution::Progress>,
    pub percent: Option<f64>,
    pub attempt: i32,
}

/// One event as it travels (`event:`, `id:` and `data:` lines); `data` is JSON: an
/// `EventState` for `status` and `progress`, the `ExecutionView` for `execution`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ServerSentEvent {
    /// `status`, `progress` or `execution`.
    pub event: String,
    /// The state it reports; `final` for `execution`.
    pub id: String,
    pub data: String,
}

/// The state of one event stream.
struct Follow {
    ctx: ApiContext,
    id: Uuid,
    scope: Option<String>,
    /// A state read but not yet reported.
    next: Option<Execution>,
    /// The id of the last event the client has (sent here, or named on reconnect).
    last_id: Option<String>,
    last_status: Option<crate::execution::Status>,
    done: bool,
    /// The stream closes then (`api.event_stream`); the client resumes.
    until: tokio::time::Instant,
}

impl Follow {
    fn into_stream(self) -> impl Stream<Item = Result<Event, Infallible>> {
        futures::stream::unfold(self, |mut f| async move {
            let event = f.next_event().await?;
            Some((Ok(event), f))
        })
    }

    /// The next event, reading the execution until something changed; `None` ends the
    /// stream (after the final event, when the execution is gone, or at shutdown).
    async fn next_event(&mut self) -> Option<Event> {
        if self.done {
            return None;
        }
        loop {
            let execution = match self.next.take() {
                Some(e) => e,
                None => {
                    if self.ctx.shutdown.is_cancelled() || tokio::time::Instant::now() >= self.until
                    {
                        return None;
                    }
                    let read = self
                        .ctx
                        .finishes
                        .wait(
                            &self.ctx.store,
                            self.id,
                            self.scope.as_deref(),
                            EVERY,
                            &self.ctx.shutdown,
                        )
                        .await;
                    match read {
                        Ok(Some(e)) => e,
                        Ok(None) => return None,
                        // Postgres away: try again at the next tick.
                        Err(_) => {
                            tokio::time::sleep(EVERY).await;
                            continue;
                        }
                    }
                }
            };
            if execution.status.is_terminal() {
                self.done = true;
                let estimates = self
                    .ctx
                    .store
                    .estimates(&execution)
                    .await
                    .unwrap_or_default();
                let view = ExecutionView::from(execution).with_estimates(estimates);
                return Some(json_event("execution", FINAL, &view));
            }
            let progress = execution.progress.as_ref().map(|p| p.0.clone());
            let state_id = format!(
                "{}-{}-{}",
                execution.status,
                progress.as_ref().map_or(0, |p| p.read_rows),
                progress.as_ref().map_or(0, |p| p.result_bytes)
            );
            if self.last_id.as_deref() == Some(state_id.as_str()) {
                continue;
            }
            self.last_id = Some(state_id.clone());
            let kind = if self.last_status == Some(execution.status) {
                "progress"
            } else {
                "status"
            };
            self.last_status = Some(execution.status);
            let view = ExecutionView::from(execution);
            let data = EventState {
                status: view.status,
                progress: view.progress,
                percent: view.percent,
                attempt: view.attempt,
            };
            return Some(json_event(kind, &state_id, &data));
        }
    }
}

fn json_event(kind: &str, id: &str, data: &impl serde::Serialize) -> Event {
    Event::default()
        .event(kind)
        .id(id)
        .json_data(data)
        .unwrap_or_else(|e| Event::default().event("error").data(e.to_string()))
}
