//! `POST /v1/executions?dry_run=true`: what the tier's ClickHouse says of a statement,
//! without queueing it.
//!
//! A SELECT (or WITH) is described (`DESCRIBE TABLE (<query>)`, the result's columns);
//! any other statement is parsed by `EXPLAIN AST` on servers from 20.x, which checks the
//! syntax only (not tables or grants) and runs nothing. ClickHouse 18.x has no EXPLAIN:
//! such statements pass with `checked: "none"`, having passed Sluice's own checks only.
//! The request goes as the tier's user with the tier's settings and the submission's
//! parameters (typed literals on 18.x) and, for a follow-up query, the source's columns as
//! an empty external table. A refusal by ClickHouse is a 200 with `valid: false` and its
//! error; only an unreachable server is an error status (502).
//!
//! This is the only place the API talks to ClickHouse; it never runs a user's statement.

use crate::clickhouse::{EngineError, External, Query, external_structure};
use crate::execution::ResultMeta;
use crate::sql;
use crate::store::submit::NewExecution;

use super::ApiContext;
use super::error::ApiError;
use super::model::DryRunResult;

/// Checks `new` (already validated) on its tier's ClickHouse; `source` is the stored
/// result a follow-up query reads.
pub(super) async fn check(
    ctx: &ApiContext,
    new: &NewExecution,
    source: Option<&ResultMeta>,
) -> Result<DryRunResult, ApiError> {
    let engine = ctx
        .engines
        .get(&new.tier)
        .ok_or_else(|| ApiError::Internal(format!("no ClickHouse for tier `{}`", new.tier)))?;
    let unreachable = |e: EngineError| ApiError::BadGateway(e.info().message);
    let server = engine.server().await.map_err(unreachable)?;
    let answer = |checked: &str, columns, error: Option<EngineError>| DryRunResult {
        valid: error.is_none(),
        tier: new.tier.clone(),
        checked: checked.to_string(),
        columns,
        error: error.map(EngineError::info),
    };
    let statement = sql::analyze(&new.sql)
        .map_err(|e| ApiError::Internal(format!("a validated statement does not parse: {e}")))?;
    let describable = statement.describable();
    if !describable && !server.version.at_least((20, 1)) {
        return Ok(answer("none", None, None));
    }
    let parameters = &new.parameters;
    let inline = !parameters.is_empty() && server.check_parameters().is_err();
    let text = statement.query_without_format();
    let text = if inline {
        match sql::inline_parameters(&text, parameters) {
            Ok(t) => t,
            Err(why) => {
                let e = EngineError::Unsupported(format!(
                    "this server has no query parameters, and {why}"
                ));
                return Ok(answer(
                    if describable { "describe" } else { "explain" },
                    None,
                    Some(e),
                ));
            }
        }
    } else {
        text
    };
    // The external table is described empty: `open` is never called.
    let open: &crate::clickhouse::OpenData =
        &|| Box::pin(async { Err(EngineError::Protocol("not sent in a dry run".into())) });
    let structure = match source {
        Some(meta) => {
            match external_structure(meta.columns.as_deref().unwrap_or(&[]), server.version) {
                Ok(s) => Some((s, meta.format)),
                Err(why) => {
                    let e = EngineError::Unsupported(why);
                    return Ok(answer("describe", None, Some(e)));
                }
            }
        }
        None => None,
    };
    let external = structure.as_ref().map(|(structure, format)| External {
        name: "result",
        structure,
        format: *format,
        open,
    });
    let query = Query {
        sql: &text,
        format: new.format,
        settings: &new.settings,
        parameters,
        inline_parameters: inline,
        quota_key: Some(&new.quota_key),
        external: external.as_ref(),
        session: None,
    };
    let (checked, result) = if describable {
        ("describe", engine.describe(query, &text).await.map(Some))
    } else {
        ("explain", engine.explain(query, &text).await.map(|()| None))
    };
    match result {
        Ok(columns) => Ok(answer(checked, columns, None)),
        Err(e @ (EngineError::Connect(_) | EngineError::Transport(_))) => Err(unreachable(e)),
        Err(e) => Ok(answer(checked, None, Some(e))),
    }
}
