//! Jobs: an execution of several statements with fallbacks (CARTO's Batch Queries).
//!
//! A job is a list of steps in plan order: each statement, then its `onsuccess` and
//! `onerror` fallbacks, then the job's own `onsuccess` and `onerror`. The worker runs
//! them in one ClickHouse session (temporary tables carry over) as follows:
//! - statements run in order; after one succeeds its `onsuccess` runs;
//! - after one fails its `onerror` runs (its own failure is recorded and ignored), the
//!   remaining statements and their fallbacks are SKIPPED, then the job's `onerror`
//!   runs and the execution FAILS with the statement's error;
//! - a failing `onsuccess` fails the job like a statement would;
//! - when every statement succeeded the job's `onsuccess` runs; if it fails, the job
//!   FAILS (its `onerror` does not run: it is for the statements).
//!
//! Fallbacks may use `{{execution_id}}` (replaced by the id) and `{{error_message}}`
//! (`''` after success), which travels as the query parameter `sluice_error_message` (a
//! typed literal on servers without parameters), never spliced into the SQL; quoted
//! (`'{{error_message}}'`) or not, it stands for a String value.
//!
//! The stored result is the output of the last statement (not fallback) that produces
//! rows; its step says `result: true`. A job with none stores an empty result.
//!
//! Lost attempts: a job whose worker is lost, or whose attempt ends on a transient error,
//! runs again from the statement that was running only if every step before it was a
//! read-only statement (nothing written can be written twice); otherwise the next
//! attempt FAILS with NOT_SAFE_TO_REPEAT. See [`Job::resume`].
//!
//! This module is pure: it neither talks to ClickHouse nor to Postgres.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::execution::ErrorInfo;

/// The query parameter `{{error_message}}` becomes.
pub const ERROR_PARAMETER: &str = "sluice_error_message";

/// The steps of a job, in plan order, with what happened to each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Job {
    pub steps: Vec<Step>,
}

/// What a step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Statement,
    OnSuccess,
    OnError,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum StepStatus {
    Pending,
    Running,
    Succeeded,
    Failed,
    Skipped,
    /// Stopped by a cancel or the execution's timeout.
    Canceled,
}

/// One statement of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Step {
    pub role: Role,
    /// The statement (0-based) this step is or belongs to; absent for the job's own
    /// fallbacks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement: Option<usize>,
    pub sql: String,
    /// A read statement: running it again changes nothing.
    pub read_only: bool,
    /// Its rows are the execution's stored result.
    #[serde(default)]
    pub result: bool,
    pub status: StepStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// The ClickHouse query_id it ran under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
}

/// A statement as submitted, with its fallbacks.
#[derive(Debug, Clone)]
pub struct Planned {
    pub sql: String,
    pub read_only: bool,
    pub onsuccess: Option<(String, bool)>,
    pub onerror: Option<(String, bool)>,
}

impl Step {
    fn new(role: Role, statement: Option<usize>, sql: String, read_only: bool) -> Step {
        Step {
            role,
            statement,
            sql,
            read_only,
            result: false,
            status: StepStatus::Pending,
            started_at: None,
            finished_at: None,
            query_id: None,
            error: None,
        }
    }

    fn reset(&mut self) {
        self.status = StepStatus::Pending;
        self.started_at = None;
        self.finished_at = None;
        self.query_id = None;
        self.error = None;
    }

    fn started(&self) -> bool {
        self.status != StepStatus::Pending && self.status != StepStatus::Skipped
    }

    /// The SQL with `{{execution_id}}` replaced and `{{error_message}}` made the query
    /// parameter [`ERROR_PARAMETER`].
    /// Quoted (`'{{error_message}}'`, as CARTO writes it) or not, it becomes the
    /// parameter.
    pub fn render(&self, execution_id: uuid::Uuid) -> String {
        let parameter = format!("{{{ERROR_PARAMETER}:String}}");
        self.sql
            .replace("{{execution_id}}", &execution_id.to_string())
            .replace("'{{error_message}}'", &parameter)
            .replace("{{error_message}}", &parameter)
    }
}

impl Job {
    /// The plan of `statements` with the job's fallbacks; the last read statement
    /// holds the result.
    pub fn plan(
        statements: Vec<Planned>,
        onsuccess: Option<(String, bool)>,
        onerror: Option<(String, bool)>,
    ) -> Job {
        let result = statements.iter().rposition(|s| s.read_only);
        let mut steps = Vec::new();
        for (i, s) in statements.into_iter().enumerate() {
            let mut step = Step::new(Role::Statement, Some(i), s.sql, s.read_only);
            step.result = result == Some(i);
            steps.push(step);
            if let Some((sql, ro)) = s.onsuccess {
                steps.push(Step::new(Role::OnSuccess, Some(i), sql, ro));
            }
            if let Some((sql, ro)) = s.onerror {
                steps.push(Step::new(Role::OnError, Some(i), sql, ro));
            }
        }
        if let Some((sql, ro)) = onsuccess {
            steps.push(Step::new(Role::OnSuccess, None, sql, ro));
        }
        if let Some((sql, ro)) = onerror {
            steps.push(Step::new(Role::OnError, None, sql, ro));
        }
        Job { steps }
    }

    /// Index of statement `i`'s step, or of its fallback with `role`.
    pub fn find(&self, statement: Option<usize>, role: Role) -> Option<usize> {
        self.steps
            .iter()
            .position(|s| s.statement == statement && s.role == role)
    }

    pub fn statements(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| s.role == Role::Statement)
            .count()
    }

    /// Prepares a new attempt: the statement to start from (all steps from it on are
    /// PENDING again), or why the job cannot run again. A fresh job starts at 0. One
    /// that ran before restarts from the statement that was running when the attempt
    /// ended, if every step started before it was a read-only statement that
    /// succeeded; the result's statement, if it ran before that point, runs again
    /// (its stored rows belonged to the lost attempt). Anything else (a write that
    /// ran, a fallback that started) could do its work twice.
    pub fn resume(&mut self) -> Result<usize, String> {
        let Some(last) = self.steps.iter().rposition(Step::started) else {
            return Ok(0);
        };
        let running = &self.steps[last];
        let Some(at) = running
            .statement
            .filter(|_| running.role == Role::Statement)
        else {
            return Err(format!(
                "the previous attempt ended in a fallback (`{}`); a job is not run again \
                 once a fallback has started",
                running.sql
            ));
        };
        if let Some(unsafe_step) = self.steps[..last]
            .iter()
            .find(|s| s.started() && !(s.read_only && s.role == Role::Statement))
        {
            return Err(format!(
                "the previous attempt ended in statement {at}, after `{}` had run; a job \
                 restarts only when everything before the interrupted statement only read",
                unsafe_step.sql
            ));
        }
        let from = self
            .steps
            .iter()
            .find(|s| s.result && s.started())
            .and_then(|s| s.statement)
            .map_or(at, |r| r.min(at));
        for s in &mut self.steps {
            if s.statement.is_none_or(|i| i >= from) {
                s.reset();
            }
        }
        Ok(from)
    }

    /// How the job looks once its execution ended with `canceled` (a cancel) or not:
    /// steps that never ran are SKIPPED and one left RUNNING was stopped.
    pub fn settle(&mut self, canceled: bool) {
        for s in &mut self.steps {
            match s.status {
                StepStatus::Pending => s.status = StepStatus::Skipped,
                StepStatus::Running if canceled => s.status = StepStatus::Canceled,
                StepStatus::Running => s.status = StepStatus::Failed,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Job {
        Job::plan(
            vec![
                Planned {
                    sql: "SELECT 1".into(),
                    read_only: true,
                    onsuccess: None,
                    onerror: Some(("INSERT INTO log VALUES ('{{error_message}}')".into(), false)),
                },
                Planned {
                    sql: "INSERT INTO t SELECT 1".into(),
                    read_only: false,
                    onsuccess: None,
                    onerror: None,
                },
                Planned {
                    sql: "SELECT 2".into(),
                    read_only: true,
                    onsuccess: None,
                    onerror: None,
                },
            ],
            Some(("INSERT INTO audit VALUES (1)".into(), false)),
            None,
        )
    }

    fn run(job: &mut Job, step: usize, status: StepStatus) {
        job.steps[step].status = status;
        job.steps[step].started_at = Some(Utc::now());
    }

    #[test]
    fn the_last_read_statement_holds_the_result() {
        let job = plan();
        let results: Vec<bool> = job.steps.iter().map(|s| s.result).collect();
        assert_eq!(results, [false, false, false, true, false]);
        assert_eq!(job.statements(), 3);
        assert_eq!(job.find(Some(0), Role::OnError), Some(1));
        assert_eq!(job.find(None, Role::OnSuccess), Some(4));
    }

    #[test]
    fn resumes_only_after_reads() {
        let mut fresh = plan();
        assert_eq!(fresh.resume(), Ok(0));

        let mut first_running = plan();
        run(&mut first_running, 0, StepStatus::Running);
        assert_eq!(first_running.resume(), Ok(0));
        assert_eq!(first_running.steps[0].status, StepStatus::Pending);

        // The write ran and the last read was running: not safe.
        let mut after_write = plan();
        run(&mut after_write, 0, StepStatus::Succeeded);
        run(&mut after_write, 2, StepStatus::Succeeded);
        run(&mut after_write, 3, StepStatus::Running);
        assert!(after_write.resume().unwrap_err().contains("INSERT INTO t"));

        // The write itself was running after a read: restart from it.
        let mut write_running = plan();
        run(&mut write_running, 0, StepStatus::Succeeded);
        run(&mut write_running, 2, StepStatus::Failed);
        assert_eq!(write_running.resume(), Ok(1));
        assert_eq!(write_running.steps[0].status, StepStatus::Succeeded);
        assert_eq!(write_running.steps[2].status, StepStatus::Pending);

        // A fallback had started.
        let mut in_fallback = plan();
        run(&mut in_fallback, 0, StepStatus::Failed);
        run(&mut in_fallback, 1, StepStatus::Running);
        assert!(in_fallback.resume().unwrap_err().contains("fallback"));
    }

    #[test]
    fn placeholders() {
        let id = uuid::Uuid::nil();
        let step = &plan().steps[1];
        assert_eq!(
            step.render(id),
            "INSERT INTO log VALUES ({sluice_error_message:String})"
        );
        let s = Step::new(
            Role::OnError,
            None,
            "SELECT '{{execution_id}}'".into(),
            true,
        );
        assert_eq!(s.render(id), format!("SELECT '{id}'"));
    }
}
