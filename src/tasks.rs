//! Saved reports: named SQL tasks, loaded from the `*.sql` files of `tasks.dir` in the
//! goyesql format sql-jobber uses:
//!
//! ```sql
//! -- name: profit_by_day
//! -- tier: reports
//! -- format: CSVWithNames
//! -- description: Profit per day of a date range
//! -- max_age: 10m
//! SELECT day, sum(profit) FROM sales
//! WHERE day BETWEEN {from:Date} AND {to:Date}
//! GROUP BY day ORDER BY day
//! ```
//!
//! `-- name:` starts a task; the `-- key: value` lines right after it are its tags
//! (`tier`, `format`, `description`, `max_age`); the SQL follows. Its `{name:Type}`
//! placeholders are the task's arguments, in order of first appearance (positional
//! `args` follow that order). A task is one read statement.
//!
//! Loading is all or nothing: a duplicate name, an unknown tag, SQL outside a task, a
//! statement that is not one read, a placeholder of a type Sluice cannot check (see
//! `sql::types`) or a tier that does not exist is an error naming the file and line,
//! and the set in use stays as it was (at start-up: Sluice does not start). [`Tasks`]
//! holds the set in use and swaps in a reloaded one at once (on SIGHUP).
//!
//! This module reads files only: it never touches Postgres or ClickHouse.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::execution::Format;
use crate::sql::{self, types::Declared};

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("{file}:{line}: {message}")]
    At {
        file: String,
        line: usize,
        message: String,
    },
    #[error("tasks.dir `{dir}`: {source}")]
    Io { dir: String, source: std::io::Error },
}

/// One argument of a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arg {
    pub name: String,
    pub declared: Declared,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub name: String,
    pub file: PathBuf,
    /// Line of its `-- name:`.
    pub line: usize,
    pub tier: Option<String>,
    pub format: Option<Format>,
    pub description: Option<String>,
    pub max_age: Option<Duration>,
    pub sql: String,
    /// In order of first appearance.
    pub args: Vec<Arg>,
}

/// The tasks of one load, by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskSet {
    pub tasks: BTreeMap<String, Arc<Task>>,
}

/// The task set in use, and where it comes from.
#[derive(Debug, Default)]
pub struct Tasks {
    dir: Option<PathBuf>,
    tiers: Vec<String>,
    current: RwLock<Arc<TaskSet>>,
}

impl Tasks {
    /// Loads `dir` (no tasks when `None`); `tiers` are the tier names a task may name.
    pub fn load(dir: Option<&Path>, tiers: Vec<String>) -> Result<Tasks, TaskError> {
        let set = match dir {
            Some(d) => load_dir(d, &tiers)?,
            None => TaskSet::default(),
        };
        Ok(Tasks {
            dir: dir.map(Path::to_path_buf),
            tiers,
            current: RwLock::new(Arc::new(set)),
        })
    }

    /// The set in use.
    pub fn current(&self) -> Arc<TaskSet> {
        self.current
            .read()
            .map(|s| s.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Reads the directory again and swaps the new set in; on an error the set in use
    /// stays and the error is returned. Returns how many tasks are loaded.
    pub fn reload(&self) -> Result<usize, TaskError> {
        let Some(dir) = &self.dir else {
            return Ok(0);
        };
        let set = load_dir(dir, &self.tiers)?;
        let n = set.tasks.len();
        match self.current.write() {
            Ok(mut current) => *current = Arc::new(set),
            Err(p) => *p.into_inner() = Arc::new(set),
        }
        Ok(n)
    }
}

fn load_dir(dir: &Path, tiers: &[String]) -> Result<TaskSet, TaskError> {
    let io = |source| TaskError::Io {
        dir: dir.display().to_string(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    files.sort();
    let mut set = TaskSet::default();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(io)?;
        for task in parse_file(&file, &text, tiers)? {
            if let Some(first) = set.tasks.get(&task.name) {
                return Err(TaskError::At {
                    file: file.display().to_string(),
                    line: task.line,
                    message: format!(
                        "task `{}` is defined twice (first at {}:{})",
                        task.name,
                        first.file.display(),
                        first.line
                    ),
                });
            }
            set.tasks.insert(task.name.clone(), Arc::new(task));
        }
    }
    Ok(set)
}

/// A task being read.
struct Draft {
    name: String,
    line: usize,
    tags: BTreeMap<String, (usize, String)>,
    sql: String,
    sql_line: usize,
}

/// The tasks of one file.
pub fn parse_file(file: &Path, text: &str, tiers: &[String]) -> Result<Vec<Task>, TaskError> {
    let at = |line: usize, message: String| TaskError::At {
        file: file.display().to_string(),
        line,
        message,
    };
    let mut tasks = Vec::new();
    let mut draft: Option<Draft> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let tag = comment_tag(raw);
        if let Some(("name", value)) = tag {
            if let Some(d) = draft.take() {
                tasks.push(finish(d, file, tiers, &at)?);
            }
            if value.is_empty()
                || !value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(at(
                    line,
                    format!("task names use letters, digits, `_` and `-`: `{value}`"),
                ));
            }
            draft = Some(Draft {
                name: value.to_string(),
                line,
                tags: BTreeMap::new(),
                sql: String::new(),
                sql_line: 0,
            });
            continue;
        }
        let Some(d) = draft.as_mut() else {
            let t = raw.trim();
            if t.is_empty() || t.starts_with("--") {
                continue;
            }
            return Err(at(
                line,
                "SQL outside a task: start it with `-- name: <task>`".into(),
            ));
        };
        match tag {
            Some((key, value)) if d.sql.trim().is_empty() => {
                if !matches!(key, "tier" | "format" | "description" | "max_age") {
                    return Err(at(
                        line,
                        format!("unknown tag `{key}` (tags: tier, format, description, max_age)"),
                    ));
                }
                d.tags.insert(key.to_string(), (line, value.to_string()));
            }
            _ => {
                if d.sql.trim().is_empty() {
                    d.sql_line = line;
                    d.sql.clear();
                }
                d.sql.push_str(raw);
                d.sql.push('\n');
            }
        }
    }
    if let Some(d) = draft.take() {
        tasks.push(finish(d, file, tiers, &at)?);
    }
    Ok(tasks)
}

/// `-- key: value` as (key, value).
fn comment_tag(line: &str) -> Option<(&str, &str)> {
    let rest = line.trim().strip_prefix("--")?.trim_start();
    let (key, value) = rest.split_once(':')?;
    let key = key.trim();
    (!key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .then(|| (key, value.trim()))
}

fn finish(
    d: Draft,
    file: &Path,
    tiers: &[String],
    at: &impl Fn(usize, String) -> TaskError,
) -> Result<Task, TaskError> {
    let sql = d.sql.trim_end().to_string();
    if sql.trim().is_empty() {
        return Err(at(d.line, format!("task `{}` has no SQL", d.name)));
    }
    let statement = sql::analyze(&sql).map_err(|e| at(d.sql_line, e.to_string()))?;
    if statement.kind != sql::Kind::Read {
        return Err(at(
            d.sql_line,
            format!(
                "a task is one read statement; this is a {} statement",
                statement.kind
            ),
        ));
    }
    let mut args: Vec<Arg> = Vec::new();
    for p in sql::placeholders(&sql).map_err(|e| at(d.sql_line, e.to_string()))? {
        let line = d.sql_line + sql[..p.span.start].matches('\n').count();
        let declared = Declared::parse(&p.type_text)
            .map_err(|e| at(line, format!("placeholder `{}`: {e}", p.name)))?;
        match args.iter().find(|a| a.name == p.name) {
            Some(a) if a.declared.parsed != declared.parsed => {
                return Err(at(
                    line,
                    format!(
                        "placeholder `{}` is {} here and {} before",
                        p.name, declared, a.declared
                    ),
                ));
            }
            Some(_) => {}
            None => args.push(Arg {
                name: p.name,
                declared,
            }),
        }
    }
    let tag = |k: &str| d.tags.get(k).cloned();
    let tier = match tag("tier") {
        Some((line, t)) if !tiers.contains(&t) => {
            return Err(at(line, format!("tier `{t}` is not configured")));
        }
        other => other.map(|(_, t)| t),
    };
    let format = match tag("format") {
        Some((line, f)) => {
            Some(Format::parse(&f).ok_or_else(|| at(line, format!("unknown format `{f}`")))?)
        }
        None => None,
    };
    let max_age = match tag("max_age") {
        Some((line, a)) => Some(
            humantime::parse_duration(&a).map_err(|e| at(line, format!("max_age `{a}`: {e}")))?,
        ),
        None => None,
    };
    Ok(Task {
        name: d.name,
        file: file.to_path_buf(),
        line: d.line,
        tier,
        format,
        description: tag("description").map(|(_, v)| v),
        max_age,
        sql,
        args,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Task>, TaskError> {
        parse_file(
            Path::new("reports.sql"),
            text,
            &["default".to_string(), "vip".to_string()],
        )
    }

    #[test]
    fn the_example_reports_load() {
        let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tasks"));
        let tasks = Tasks::load(Some(dir), vec!["default".into()]).unwrap();
        assert_eq!(tasks.current().tasks.len(), 2);
    }

    #[test]
    fn tasks_with_tags_and_arguments_in_order() {
        let tasks = parse(
            "-- a file comment\n\n\
             -- name: profit\n-- tier: vip\n-- format: csvwithnames\n\
             -- description: Profit: per day\n-- max_age: 10m\n\
             SELECT {to:Date} AS t, {from:Date} AS f\n-- an SQL comment: not a tag\n\
             WHERE x = {to:Date}\n\n\
             -- name: count\nSELECT count() FROM system.one\n",
        )
        .unwrap();
        assert_eq!(tasks.len(), 2);
        let p = &tasks[0];
        assert_eq!(p.name, "profit");
        assert_eq!(p.line, 3);
        assert_eq!(p.tier.as_deref(), Some("vip"));
        assert_eq!(p.format, Some(Format::CSVWithNames));
        assert_eq!(p.description.as_deref(), Some("Profit: per day"));
        assert_eq!(p.max_age, Some(Duration::from_secs(600)));
        let args: Vec<&str> = p.args.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(args, ["to", "from"]);
        assert!(p.sql.ends_with("WHERE x = {to:Date}"));
        assert!(tasks[1].args.is_empty());
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let err = |text: &str| parse(text).unwrap_err().to_string();
        assert_eq!(
            err("-- name: a\n-- colour: red\nSELECT 1"),
            "reports.sql:2: unknown tag `colour` (tags: tier, format, description, max_age)"
        );
        assert!(err("SELECT 1").starts_with("reports.sql:1: SQL outside a task"));
        assert!(
            err("-- name: a\nSELECT 1\nFROM t WHERE x = {x:Strng}")
                .starts_with("reports.sql:3: placeholder `x`: `Strng`"),
        );
        assert!(
            err("-- name: a\n-- tier: gold\nSELECT 1").starts_with("reports.sql:2: tier `gold`")
        );
        assert!(err("-- name: a\nDROP TABLE t").contains("read statement"));
        assert!(
            err("-- name: a\nSELECT {x:UInt8}, {x:String}").contains("placeholder `x` is String")
        );
        assert!(err("-- name: a\n").contains("has no SQL"));
    }
}
