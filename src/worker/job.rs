//! Running a multi-statement job: its steps in one ClickHouse session, each recorded
//! (fenced) as it starts and ends. The order, the fallbacks and the rule for running a
//! job again are in [`crate::job`]; this file only carries them out.
//!
//! Each step runs under its own ClickHouse query_id, `<id>-<attempt>-<step>`, which the
//! heartbeat watches and a cancel or timeout kills; the session is `<id>-<attempt>`, so
//! a new attempt never shares temporary tables with a lost one.

use std::collections::BTreeMap;
use std::time::SystemTime;

use chrono::Utc;
use tracing::warn;

use super::Worker;
use super::run::{Beacons, Failure, Statement, for_server, parameters_of};
use crate::clickhouse::Query;
use crate::execution::{ErrorCode, ErrorInfo, Execution, ResultMeta};
use crate::job::{ERROR_PARAMETER, Job, Role, StepStatus};
use crate::results::ResultWriter;
use crate::sql;
use crate::store::queue::Fence;

/// How a step ended, for what comes after it.
type StepResult = Result<Option<ResultMeta>, Failure>;

impl Worker {
    /// Runs the job of `execution` (see [`crate::job`]): the stored result's metadata,
    /// or the failure of the statement that failed.
    pub(super) async fn run_job(
        &self,
        execution: &Execution,
        fence: &Fence,
        writer: &mut Option<ResultWriter>,
        beacons: &Beacons,
    ) -> Result<ResultMeta, Failure> {
        let mut job =
            execution.job.as_ref().map(|j| j.0.clone()).ok_or_else(|| {
                failure(ErrorCode::InvalidExecution, "the job has no steps".into())
            })?;
        let start = job.resume().map_err(|why| {
            failure(
                ErrorCode::NotSafeToRepeat,
                format!("not safe to repeat: {why}"),
            )
        })?;
        let session = execution.clickhouse_query_id();
        let mut run = JobRun {
            worker: self,
            execution,
            fence,
            session: &session,
            parameters: parameters_of(execution),
        };
        let mut result = None;
        let mut failed: Option<Failure> = None;
        for i in start..job.statements() {
            let Some(at) = job.find(Some(i), Role::Statement) else {
                break;
            };
            let ran = run.step(&mut job, at, "", writer, beacons).await;
            match ran {
                Ok(meta) => {
                    result = meta.or(result);
                    if let Some(k) = job.find(Some(i), Role::OnSuccess)
                        && let Err(f) = run.step(&mut job, k, "", writer, beacons).await
                    {
                        if f.transient {
                            return Err(run.discard_result(result, f).await);
                        }
                        failed = Some(f);
                        break;
                    }
                }
                // ClickHouse went away: the attempt ends here, and the next one
                // resumes under `Job::resume`'s rule; fallbacks are for the SQL's
                // own failures.
                Err(f) if f.transient => return Err(run.discard_result(result, f).await),
                Err(f) => {
                    if let Some(k) = job.find(Some(i), Role::OnError) {
                        let message = f.error.message.clone();
                        // The fallback's own failure is recorded in its step only.
                        let _ = run.step(&mut job, k, &message, writer, beacons).await;
                    }
                    failed = Some(f);
                    break;
                }
            }
        }
        let last = match &failed {
            Some(_) => job.find(None, Role::OnError),
            None => job.find(None, Role::OnSuccess),
        };
        for (k, s) in job.steps.iter_mut().enumerate() {
            if s.status == StepStatus::Pending && Some(k) != last {
                s.status = StepStatus::Skipped;
            }
        }
        if let Some(f) = failed {
            match last {
                Some(k) => {
                    let _ = run
                        .step(&mut job, k, &f.error.message.clone(), writer, beacons)
                        .await;
                }
                None => run.save(&job).await,
            }
            return Err(run.discard_result(result, f).await);
        }
        match last {
            Some(k) => {
                if let Err(f) = run.step(&mut job, k, "", writer, beacons).await {
                    return Err(run.discard_result(result, f).await);
                }
            }
            None => run.save(&job).await,
        }
        match result {
            Some(meta) => Ok(meta),
            None => run.empty_result().await,
        }
    }
}

/// What every step of one attempt of a job shares.
struct JobRun<'a> {
    worker: &'a Worker,
    execution: &'a Execution,
    fence: &'a Fence,
    session: &'a str,
    parameters: BTreeMap<String, String>,
}

impl JobRun<'_> {
    /// Runs step `k` (with `error_message` for a fallback's `{{error_message}}`),
    /// recording it before and after; the result's metadata if it is the result's step.
    async fn step(
        &mut self,
        job: &mut Job,
        k: usize,
        error_message: &str,
        writer: &mut Option<ResultWriter>,
        beacons: &Beacons,
    ) -> StepResult {
        let query_id = format!("{}-{k}", self.session);
        beacons.set_query_id(&query_id);
        {
            let s = &mut job.steps[k];
            s.status = StepStatus::Running;
            s.started_at = Some(Utc::now());
            s.query_id = Some(query_id.clone());
        }
        self.save(job).await;
        let step = &job.steps[k];
        let sql = step.render(self.execution.id);
        let mut parameters = self.parameters.clone();
        if step.role != Role::Statement {
            parameters.insert(ERROR_PARAMETER.into(), error_message.into());
        }
        let statement = Statement {
            sql: &sql,
            parameters: &parameters,
            query_id: &query_id,
            session: Some(self.session),
        };
        let ran = if step.result {
            self.worker
                .produce(self.execution, statement, writer, beacons)
                .await
                .map(Some)
        } else {
            self.discard(statement).await.map(|()| None)
        };
        let s = &mut job.steps[k];
        s.finished_at = Some(Utc::now());
        match &ran {
            Ok(_) => s.status = StepStatus::Succeeded,
            Err(f) => {
                s.status = StepStatus::Failed;
                s.error = Some(f.error.clone());
            }
        }
        self.save(job).await;
        ran
    }

    /// Runs a statement whose output is not kept, reading its answer to the end (a
    /// ClickHouse error can come after the first bytes).
    async fn discard(&self, run: Statement<'_>) -> Result<(), Failure> {
        let engine = &self.worker.engine;
        let server = engine.server().await?;
        let analyzed = sql::analyze(run.sql).ok();
        let body = analyzed.as_ref().map_or(run.sql, |s| s.body());
        let (text, inline) = for_server(&server, body, run.parameters)?;
        let query = Query {
            sql: &text,
            format: self.execution.format,
            settings: &self.execution.settings.0,
            parameters: run.parameters,
            inline_parameters: inline,
            quota_key: self.execution.quota_key.as_deref(),
            external: None,
            session: run.session,
        };
        let since = SystemTime::now();
        let mut stream = match engine.stream(query, run.query_id).await {
            Ok(s) => s,
            Err(e) => return Err(self.worker.broken(e, engine.preferred(), since).await),
        };
        loop {
            match stream.chunk().await {
                Ok(Some(_)) => {}
                Ok(None) => return Ok(()),
                Err(e) => return Err(self.worker.broken(e, stream.node(), since).await),
            }
        }
    }

    /// Records the job's steps; a write that does not land is logged (the heartbeat
    /// learns whether the attempt still holds its lease).
    async fn save(&self, job: &Job) {
        match self.worker.store.record_job(self.fence, job).await {
            Ok(true) => {}
            Ok(false) => warn!("the job's steps were not recorded: the attempt lost its lease"),
            Err(e) => warn!(error = %e, "the job's steps were not recorded"),
        }
    }

    /// `f`, once the result stored by an earlier statement (which a failed job never
    /// points at) is deleted.
    async fn discard_result(&self, result: Option<ResultMeta>, f: Failure) -> Failure {
        if let Some(meta) = result
            && let Err(e) = self.worker.results.delete(&meta.object_key).await
        {
            warn!(error = %e, "could not delete the result of a failed job");
        }
        f
    }

    /// The stored result of a job without a read statement: empty, without columns.
    async fn empty_result(&self) -> Result<ResultMeta, Failure> {
        let e = self.execution;
        let key = self.worker.results.key(e.id, e.attempt, e.format);
        let bytes = self.worker.results.writer(&key).finish().await?;
        Ok(ResultMeta {
            object_key: key,
            format: e.format,
            bytes,
            rows: Some(0),
            columns: Some(Vec::new()),
            row_index: None,
            truncated: false,
        })
    }
}

fn failure(code: ErrorCode, message: String) -> Failure {
    Failure {
        transient: false,
        error: ErrorInfo::new(code, message),
    }
}
