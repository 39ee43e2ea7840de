//! `/v1/tasks`: saved reports (see `tasks`). Listing them with their arguments, and
//! submitting one with arguments checked against their types before anything is queued.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde_json::Value;

use super::ApiContext;
use super::error::{ApiError, ErrorBody};
use super::executions::{body_bytes, parse_json, queue, validate, wait_duration};
use super::model::{
    GetParams, SubmitRequest, SubmitResponse, TaskArgView, TaskList, TaskSubmitRequest, TaskView,
};
use crate::auth::Principal;
use crate::tasks::Task;

/// The saved reports this principal may run (those on tiers it may use), with their
/// arguments in positional order.
#[utoipa::path(get, path = "/v1/tasks", operation_id = "list_tasks", tag = "tasks",
    responses(
        (status = 200, description = "The saved reports", body = TaskList),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn list(State(ctx): State<ApiContext>, principal: Principal) -> Json<TaskList> {
    let set = ctx.tasks.current();
    let tasks = set
        .tasks
        .values()
        .filter(|t| t.tier.as_deref().is_none_or(|tier| principal.may_use(tier)))
        .map(|t| TaskView {
            name: t.name.clone(),
            description: t.description.clone(),
            tier: t.tier.clone(),
            format: t.format,
            max_age_seconds: t.max_age.map(|a| a.as_secs()),
            arguments: t
                .args
                .iter()
                .enumerate()
                .map(|(position, a)| TaskArgView {
                    name: a.name.clone(),
                    type_: a.declared.text.clone(),
                    position,
                })
                .collect(),
        })
        .collect();
    Json(TaskList { tasks })
}

/// Run a saved report. Arguments by position (`args`) or by name (`parameters`) are
/// checked against the types their placeholders declare (400 `invalid_argument` naming
/// the one at fault) and travel as query parameters (rendered as typed literals for
/// servers without them). Dedup covers the arguments. With `?wait=N` the answer waits
/// for the end, as on `POST /v1/executions`.
#[utoipa::path(
    post,
    path = "/v1/tasks/{name}/executions", operation_id = "run_task",
    tag = "tasks",
    params(("name" = String, Path, description = "Task name"), GetParams),
    request_body(content = TaskSubmitRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Created and queued", body = SubmitResponse),
        (status = 200, description = "Collapsed into an identical in-flight execution", body = SubmitResponse),
        (status = 400, description = "Invalid arguments or options", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Tier not allowed for this principal", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 429, description = "The tenant's queue on this tier is full", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn submit(
    State(ctx): State<ApiContext>,
    principal: Principal,
    Path(name): Path<String>,
    params: Result<Query<GetParams>, axum::extract::rejection::QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<SubmitResponse>), ApiError> {
    let body = body_bytes(&ctx, body)?;
    let Query(params) =
        params.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let wait = wait_duration(&ctx, params.wait)?;
    let r: TaskSubmitRequest = if body.is_empty() {
        TaskSubmitRequest::default()
    } else {
        parse_json(&body)?
    };
    let (request, task) = task_request(&ctx, &name, r)?;
    let new = validate(&ctx, &principal, request, Some(&task))?;
    queue(&ctx, &principal, new, wait, false).await
}

/// The submission a run of task `name` makes, with its arguments checked; and the
/// task's name.
pub(super) fn task_request(
    ctx: &ApiContext,
    name: &str,
    r: TaskSubmitRequest,
) -> Result<(SubmitRequest, String), ApiError> {
    let set = ctx.tasks.current();
    let task = set
        .tasks
        .get(name)
        .ok_or_else(|| ApiError::NotFound(format!("no task `{}`", name.escape_debug())))?;
    let parameters = arguments(task, r.args, r.parameters)?;
    let request = SubmitRequest {
        sql: super::model::SqlInput::One(task.sql.clone()),
        onsuccess: None,
        onerror: None,
        callback_url: r.callback_url,
        row_limit: r.row_limit,
        byte_limit: r.byte_limit,
        tier: r.tier.or_else(|| task.tier.clone()),
        query_id: r.query_id,
        format: r
            .format
            .or_else(|| task.format.map(|f| f.as_str().to_string())),
        settings: r.settings,
        priority: r.priority,
        parameters: Some(parameters),
        run_after: r.run_after,
        max_attempts: r.max_attempts,
        retention: r.retention,
        timeout: r.timeout,
        start_within: r.start_within,
        max_age: r.max_age.or_else(|| {
            task.max_age
                .map(|a| humantime::format_duration(a).to_string())
        }),
        from_result: None,
    };
    Ok((request, task.name.clone()))
}

/// The task's arguments, checked, as `param_<name>` values.
fn arguments(
    task: &Task,
    args: Option<Vec<Value>>,
    by_name: Option<BTreeMap<String, Value>>,
) -> Result<BTreeMap<String, Value>, ApiError> {
    let bad = |message: String| ApiError::bad_request("invalid_argument", message);
    let values: Vec<Value> = match (args, by_name) {
        (Some(_), Some(_)) => {
            return Err(bad("give the arguments by position (`args`) or by name \
                            (`parameters`), not both"
                .into()));
        }
        (Some(args), None) => {
            if args.len() != task.args.len() {
                return Err(bad(format!(
                    "task `{}` takes {} arguments ({}), not {}",
                    task.name,
                    task.args.len(),
                    names(task),
                    args.len()
                )));
            }
            args
        }
        (None, by_name) => {
            let mut by_name = by_name.unwrap_or_default();
            if let Some(unknown) = by_name
                .keys()
                .find(|k| !task.args.iter().any(|a| &a.name == *k))
            {
                return Err(bad(format!(
                    "task `{}` has no argument `{}`; its arguments: {}",
                    task.name,
                    unknown.escape_debug(),
                    names(task)
                )));
            }
            task.args
                .iter()
                .map(|a| {
                    by_name
                        .remove(&a.name)
                        .ok_or_else(|| bad(format!("argument `{}` is missing", a.name)))
                })
                .collect::<Result<_, _>>()?
        }
    };
    let mut parameters = BTreeMap::new();
    for (position, (arg, value)) in task.args.iter().zip(values).enumerate() {
        // The value is not quoted back: it may be a secret.
        arg.declared.check(&value).map_err(|why| {
            bad(format!(
                "argument `{}` (position {position}, {}): {why}",
                arg.name, arg.declared
            ))
        })?;
        parameters.insert(
            arg.name.clone(),
            Value::String(arg.declared.param_text(&value)),
        );
    }
    Ok(parameters)
}

fn names(task: &Task) -> String {
    let list: Vec<String> = task
        .args
        .iter()
        .map(|a| format!("{} {}", a.name, a.declared))
        .collect();
    if list.is_empty() {
        "none".into()
    } else {
        list.join(", ")
    }
}
