//! `/v1/groups`: several executions created at once, at most `concurrency` of them in
//! flight (see `store::groups` for how the limit holds across workers). Each member is
//! validated exactly as its single submit would be; one bad member fails the request
//! with an error naming it (`executions[2]: ...`) and nothing is created.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::Value;
use uuid::Uuid;

use super::ApiContext;
use super::error::{ApiError, ErrorBody};
use super::executions::{ad_hoc_forbidden, body_bytes, check_source, parse_json, validate};
use super::model::{
    ExecutionView, GroupOutcome, GroupRequest, GroupResponse, GroupView, SubmitRequest,
    TaskSubmitRequest,
};
use super::tasks::task_request;
use crate::auth::Principal;
use crate::execution::{ErrorCode, Execution, Status};
use crate::store::groups::{Group, GroupCreated, NewGroup};

/// Members one group may have.
pub const MAX_MEMBERS: usize = 1000;
const MAX_GROUP_ID_LEN: usize = 256;

/// Create a group.
///
/// All members are validated, then created in one transaction: either the group exists
/// with all of them, or nothing was created.
#[utoipa::path(
    post,
    path = "/v1/groups", operation_id = "create_group",
    tag = "groups",
    request_body(content = GroupRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Created", body = GroupResponse),
        (status = 200, description = "A group with this group_id exists", body = GroupResponse),
        (status = 400, description = "Invalid group or member (the message names it)", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "A member's tier is not allowed, or runs reports only", body = ErrorBody),
        (status = 404, description = "A member's task or from_result does not exist", body = ErrorBody),
        (status = 409, description = "A member's query_id is in flight", body = ErrorBody),
        (status = 429, description = "The members would overflow a tenant queue", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(ctx): State<ApiContext>,
    principal: Principal,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<GroupResponse>), ApiError> {
    let body = body_bytes(&ctx, body)?;
    let r: GroupRequest = parse_json(&body)?;
    if r.executions.is_empty() || r.executions.len() > MAX_MEMBERS {
        return Err(ApiError::bad_request(
            "invalid_group",
            format!(
                "a group has 1 to {MAX_MEMBERS} executions, not {}",
                r.executions.len()
            ),
        ));
    }
    if r.concurrency == 0 {
        return Err(ApiError::bad_request(
            "invalid_group",
            "concurrency must be at least 1",
        ));
    }
    if let Some(key) = &r.group_id
        && (key.trim().is_empty() || key.len() > MAX_GROUP_ID_LEN || key.contains('\0'))
    {
        return Err(ApiError::bad_request(
            "invalid_group",
            format!("group_id must be 1 to {MAX_GROUP_ID_LEN} characters, without NUL"),
        ));
    }
    let id = Uuid::now_v7();
    let mut members = Vec::with_capacity(r.executions.len());
    for (index, member) in r.executions.into_iter().enumerate() {
        let place = format!("executions[{index}]");
        let mut new = member_submission(&ctx, &principal, member).map_err(|e| e.within(&place))?;
        if new.query_id == new.query_hash {
            // No query_id of its own: members do not collapse into other executions,
            // so the default names the group and the place instead of the hash.
            new.query_id = format!("group:{id}:{index}");
        }
        if let Some(source) = new.from_result {
            check_source(&ctx, &new.tenant, source)
                .await
                .map_err(|e| e.within(&place))?;
        }
        members.push(new);
    }
    let created = ctx
        .store
        .create_group(&NewGroup {
            id,
            tenant: principal.tenant.clone(),
            created_by: principal.name.clone(),
            key: r.group_id,
            concurrency: i32::try_from(r.concurrency).unwrap_or(i32::MAX),
            members,
        })
        .await?;
    let (status, outcome, group, members) = match created {
        GroupCreated::Created(g, m) => (StatusCode::CREATED, GroupOutcome::Created, g, m),
        GroupCreated::Existing(g, m) => (StatusCode::OK, GroupOutcome::Existing, g, m),
        GroupCreated::QueryIdInUse { index, query_id } => {
            return Err(ApiError::Conflict {
                code: "query_id_in_use",
                message: format!(
                    "executions[{index}]: query_id `{}` belongs to an execution in flight; \
                     group members never join or replace other executions",
                    query_id.escape_debug()
                ),
            });
        }
        GroupCreated::QueueFull { tier, cap } => {
            return Err(ApiError::TooManyRequests {
                message: format!(
                    "the group would take tenant `{}` over {cap} executions waiting on tier \
                     `{tier}`",
                    principal.tenant
                ),
                retry_after: ctx.config.api.retry_after.as_secs().max(1),
            });
        }
    };
    tracing::info!(group_id = %group.id, members = members.len(), outcome = ?outcome, "group submitted");
    Ok((
        status,
        Json(GroupResponse {
            outcome,
            group: view(group, members),
        }),
    ))
}

/// One member as its single submit would validate it.
fn member_submission(
    ctx: &ApiContext,
    principal: &Principal,
    mut member: Value,
) -> Result<crate::store::submit::NewExecution, ApiError> {
    let Some(object) = member.as_object_mut() else {
        return Err(ApiError::bad_request(
            "invalid_json",
            "a member is a JSON object: a submission or {\"task\": ...}",
        ));
    };
    let task = object.remove("task");
    let bytes = serde_json::to_vec(&member).unwrap_or_default();
    match task {
        Some(Value::String(name)) => {
            let r: TaskSubmitRequest = parse_json(&bytes)?;
            let (request, task) = task_request(ctx, &name, r)?;
            validate(ctx, principal, request, Some(&task))
        }
        Some(_) => Err(ApiError::bad_request(
            "invalid_json",
            "`task` is the name of a saved report (a string)",
        )),
        None => {
            let r: SubmitRequest = parse_json(&bytes)?;
            if let Some(tier) = ad_hoc_forbidden(ctx, principal, r.tier.as_deref()) {
                return Err(ApiError::Forbidden {
                    code: "ad_hoc_sql_forbidden",
                    message: format!("tier `{tier}` runs saved reports only (ad_hoc_sql = false)"),
                });
            }
            validate(ctx, principal, r, None)
        }
    }
}

/// A group's state and its members.
#[utoipa::path(
    get,
    path = "/v1/groups/{id}", operation_id = "get_group",
    tag = "groups",
    params(("id" = Uuid, Path, description = "Group id")),
    responses(
        (status = 200, description = "The group and its members", body = GroupView),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 404, description = "No such group (or another tenant's)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get(
    State(ctx): State<ApiContext>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<GroupView>, ApiError> {
    let uuid = parse_group_id(&id)?;
    let (group, members) = ctx
        .store
        .group(uuid, principal.scope())
        .await?
        .ok_or_else(|| not_found(&id))?;
    Ok(Json(view(group, members)))
}

/// Cancel a group: its PENDING members become CANCELED at once, its RUNNING ones are
/// stopped by their workers (202 then; poll the group). Members that ended stay as
/// they are.
#[utoipa::path(
    post,
    path = "/v1/groups/{id}/cancel", operation_id = "cancel_group",
    tag = "groups",
    params(("id" = Uuid, Path, description = "Group id")),
    responses(
        (status = 200, description = "Every member has ended", body = GroupView),
        (status = 202, description = "Running members are being stopped", body = GroupView),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 404, description = "No such group (or another tenant's)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn cancel(
    State(ctx): State<ApiContext>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<GroupView>), ApiError> {
    let uuid = parse_group_id(&id)?;
    let (group, members) = ctx
        .store
        .cancel_group(uuid, principal.scope())
        .await?
        .ok_or_else(|| not_found(&id))?;
    let status = if members.iter().any(|m| !m.status.is_terminal()) {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view(group, members))))
}

fn parse_group_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| not_found(id))
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("no group with id `{}`", id.escape_debug()))
}

fn view(group: Group, members: Vec<Execution>) -> GroupView {
    let mut counts = std::collections::BTreeMap::new();
    for m in &members {
        *counts.entry(m.status.as_str().to_string()).or_insert(0) += 1;
    }
    GroupView {
        status: aggregate(&members),
        id: group.id,
        group_id: group.group_key,
        tenant: group.tenant,
        created_by: group.created_by,
        concurrency: group.concurrency,
        counts,
        created_at: group.created_at,
        cancel_requested_at: group.cancel_requested_at,
        executions: members.into_iter().map(ExecutionView::from).collect(),
    }
}

/// The group's status from its members' (see `GroupView::status`).
fn aggregate(members: &[Execution]) -> Status {
    // What an EXPIRED member was before its result expired.
    let ended_as = |m: &Execution| match (m.status, m.error.as_ref().map(|e| e.0.code)) {
        (Status::Expired, None) => Status::Succeeded,
        (Status::Expired, Some(ErrorCode::Canceled | ErrorCode::Superseded)) => Status::Canceled,
        (Status::Expired, Some(_)) => Status::Failed,
        (s, _) => s,
    };
    let statuses: Vec<Status> = members.iter().map(ended_as).collect();
    if statuses.iter().any(|s| !s.is_terminal()) {
        let started = statuses.iter().any(|s| *s != Status::Pending);
        return if started {
            Status::Running
        } else {
            Status::Pending
        };
    }
    if statuses.contains(&Status::Failed) {
        Status::Failed
    } else if statuses.contains(&Status::Canceled) {
        Status::Canceled
    } else {
        Status::Succeeded
    }
}
