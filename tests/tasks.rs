//! Saved reports: tasks from files, their API, typed arguments bound safely on both
//! servers (query parameters on 26.9, typed literals on 18.16), reports-only tiers, and
//! reloading on SIGHUP.
mod common;

use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

const REPORTS: &str = "\
-- Reports of the test suite.

-- name: echo
-- description: Says back what it is given
-- format: JSONEachRow
SELECT {s:String} AS s, toUInt32(length({s:String})) AS n

-- name: typed
SELECT {d:Date} AS d, {xs:Array(String)} AS xs, {maybe:Nullable(UInt8)} AS maybe,
       {big:UInt64} AS big

-- name: numbers_between
-- max_age: 10m
SELECT number FROM (SELECT number FROM system.numbers LIMIT 100)
WHERE number >= {low:UInt32} AND number < {high:UInt32}
";

fn reports_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("reports.sql"), REPORTS).unwrap();
    dir
}

fn with_tasks(dir: &std::path::Path, extra: &str) -> Setup {
    Setup {
        extra: format!("[tasks]\ndir = \"{}\"\n{extra}", dir.display()),
        ..Default::default()
    }
}

async fn run_task(h: &Harness, name: &str, body: Value) -> Value {
    let (status, v) = h
        .post_json(&format!("/v1/tasks/{name}/executions"), body.clone())
        .await;
    assert_eq!(status, StatusCode::CREATED, "{name} {body}: {v}");
    let id = v["execution"]["id"].as_str().unwrap().to_string();
    h.wait_for(&id, &["SUCCEEDED", "FAILED"], Duration::from_secs(60))
        .await
}

async fn rows(h: &Harness, e: &Value) -> Vec<Value> {
    assert_eq!(e["status"], "SUCCEEDED", "{e}");
    let (_, _, body) = h.download(e["id"].as_str().unwrap()).await;
    String::from_utf8(body)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[sqlx::test(migrations = "./migrations")]
async fn tasks_are_listed_with_their_arguments(pool: PgPool) {
    let dir = reports_dir();
    let h = Harness::with(pool, with_tasks(dir.path(), "")).await;
    let (status, v) = h.get_json("/v1/tasks").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let tasks = v["tasks"].as_array().unwrap();
    let names: Vec<&str> = tasks.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["echo", "numbers_between", "typed"]);
    assert_eq!(tasks[0]["description"], "Says back what it is given");
    assert_eq!(tasks[0]["format"], "JSONEachRow");
    assert_eq!(
        tasks[0]["arguments"],
        json!([{"name": "s", "type": "String", "position": 0}])
    );
    assert_eq!(tasks[1]["max_age_seconds"], 600);
    let typed: Vec<(&str, &str)> = tasks[2]["arguments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["name"].as_str().unwrap(), a["type"].as_str().unwrap()))
        .collect();
    assert_eq!(
        typed,
        [
            ("d", "Date"),
            ("xs", "Array(String)"),
            ("maybe", "Nullable(UInt8)"),
            ("big", "UInt64")
        ]
    );
}

#[sqlx::test(migrations = "./migrations")]
async fn arguments_are_checked_and_bound_by_position_or_name(pool: PgPool) {
    let dir = reports_dir();
    let h = Harness::with(pool, with_tasks(dir.path(), "")).await;
    let e = run_task(&h, "numbers_between", json!({"args": [3, 6]})).await;
    assert_eq!(e["task"], "numbers_between");
    let got: Vec<Value> = rows(&h, &e).await;
    assert_eq!(got.len(), 3);
    let e = run_task(
        &h,
        "numbers_between",
        json!({"parameters": {"high": 2, "low": 0}}),
    )
    .await;
    assert_eq!(rows(&h, &e).await.len(), 2);
    let e = run_task(
        &h,
        "typed",
        json!({"args": ["2026-11-23", ["a'b", "c\\d"], null, "18446744073709551615"]}),
    )
    .await;
    let row = &rows(&h, &e).await[0];
    assert_eq!(row["d"], "2026-11-23");
    assert_eq!(row["xs"], json!(["a'b", "c\\d"]));
    assert_eq!(row["maybe"], Value::Null);
    assert_eq!(
        row["big"].to_string().trim_matches('"'),
        "18446744073709551615"
    );

    // Listing by task.
    let (_, page) = h.get_json("/v1/executions?task=typed").await;
    assert_eq!(page["executions"].as_array().unwrap().len(), 1);

    // Each bad argument is a 400 naming it, never quoting its value.
    let bad = [
        ("numbers_between", json!({"args": [1]}), "takes 2 arguments"),
        ("numbers_between", json!({"args": [1, "x"]}), "`high`"),
        ("numbers_between", json!({"args": [-1, 2]}), "`low`"),
        (
            "numbers_between",
            json!({"parameters": {"low": 1}}),
            "`high` is missing",
        ),
        (
            "numbers_between",
            json!({"parameters": {"low": 1, "high": 2, "hight": 3}}),
            "no argument `hight`",
        ),
        (
            "numbers_between",
            json!({"args": [1, 2], "parameters": {}}),
            "not both",
        ),
        ("typed", json!({"args": ["2026-02-30", [], null, 1]}), "`d`"),
        (
            "typed",
            json!({"args": ["2026-01-01", [1], null, 1]}),
            "`xs`",
        ),
        (
            "typed",
            json!({"args": ["2026-01-01", [], 256, 1]}),
            "`maybe`",
        ),
        ("echo", json!({"args": [null]}), "`s`"),
        ("echo", json!({"args": ["a\u{0}b"]}), "NUL"),
    ];
    for (task, body, mentions) in bad {
        let (status, v) = h
            .post_json(&format!("/v1/tasks/{task}/executions"), body.clone())
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{task} {body}: {v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(mentions), "{task} {body}: {message}");
        assert!(!message.contains("2026-02-30") && !message.contains("hight\":"));
    }
    let (status, _) = h
        .post_json("/v1/tasks/no_such_task/executions", json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// Values that would change a statement they were spliced into come back exactly as
/// sent, on the path with query parameters (26.9) and on the path with typed literals
/// (18.16): the statement is never changed.
#[sqlx::test(migrations = "./migrations")]
async fn hostile_values_come_back_exactly_on_both_paths(pool: PgPool) {
    let dir = reports_dir();
    let h = Harness::with(pool, with_tasks(dir.path(), "")).await;
    let corpus = [
        "O'Brien",
        "it''s",
        "back\\slash\\",
        "\\'",
        "'; DROP TABLE executions; --",
        "') UNION ALL SELECT 'x', 1 --",
        "-- a comment",
        "/* a comment */",
        "{s:String}",
        "$$heredoc$$",
        "tab\there\nnewline\r",
        "\\N",
        "日本語 ✓ émoji 🎉",
        "",
        "   ",
        "\"double\" `back`",
    ];
    for value in corpus {
        let e = run_task(&h, "echo", json!({"args": [value]})).await;
        let got = rows(&h, &e).await;
        assert_eq!(got.len(), 1, "{value:?}: {got:?}");
        assert_eq!(got[0]["s"], value, "{value:?}");
        assert_eq!(got[0]["n"], value.len(), "{value:?}");
    }
    // Hostile strings inside an array, the other kind of literal.
    let e = run_task(
        &h,
        "typed",
        json!({"args": ["2026-01-01", ["'; DROP", "\\", "]", "['x']"], 7, 0]}),
    )
    .await;
    assert_eq!(
        rows(&h, &e).await[0]["xs"],
        json!(["'; DROP", "\\", "]", "['x']"])
    );
}

/// Same arguments collapse into the run in flight; different ones do not.
#[sqlx::test(migrations = "./migrations")]
async fn dedup_includes_the_arguments(pool: PgPool) {
    let dir = reports_dir();
    let h = Harness::with(
        pool,
        Setup {
            workers: vec![],
            ..with_tasks(dir.path(), "")
        },
    )
    .await;
    let post = |args: Value| {
        let h = &h;
        async move {
            h.post_json(
                "/v1/tasks/numbers_between/executions",
                json!({ "args": args }),
            )
            .await
        }
    };
    let (s1, a) = post(json!([1, 2])).await;
    let (s2, b) = post(json!([1, 2])).await;
    let (s3, c) = post(json!([1, 3])).await;
    assert_eq!(
        (s1, s2, s3),
        (StatusCode::CREATED, StatusCode::OK, StatusCode::CREATED)
    );
    assert_eq!(b["outcome"], "collapsed");
    assert_eq!(a["execution"]["id"], b["execution"]["id"]);
    assert_ne!(a["execution"]["id"], c["execution"]["id"]);
}

#[sqlx::test(migrations = "./migrations")]
async fn a_reports_only_tier_runs_tasks_and_refuses_ad_hoc_sql(pool: PgPool) {
    let dir = reports_dir();
    let h = Harness::with(
        pool,
        Setup {
            tier_extra: "ad_hoc_sql = false".into(),
            ..with_tasks(dir.path(), "")
        },
    )
    .await;
    let (status, v) = h.submit(json!({"sql": "SELECT 1"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(v["error"]["code"], "ad_hoc_sql_forbidden");
    let e = run_task(&h, "echo", json!({"args": ["fine"]})).await;
    assert_eq!(rows(&h, &e).await[0]["s"], "fine");
}

#[sqlx::test(migrations = "./migrations")]
async fn a_broken_task_file_stops_start_up_naming_the_line(pool: PgPool) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.sql"),
        "-- name: a\nSELECT 1\n\n-- name: b\n-- colour: red\nSELECT 2\n",
    )
    .unwrap();
    let results = tempfile::tempdir().unwrap();
    let toml = config_toml(&pool, &with_tasks(dir.path(), ""), results.path());
    let config = sluice::config::Config::from_toml(&toml).unwrap();
    let store = sluice::store::Store::from_pool(pool);
    let results = sluice::results::ResultStore::new(&config.results).unwrap();
    let err = sluice::api::ApiContext::new(std::sync::Arc::new(config), store, results)
        .err()
        .expect("a broken file stops the api");
    let text = err.to_string();
    assert!(
        text.contains("bad.sql:5") && text.contains("unknown tag `colour`"),
        "{text}"
    );
}

/// SIGHUP reloads the files: a good change is picked up, a broken one leaves the set in
/// use as it was.
#[sqlx::test(migrations = "./migrations")]
async fn sighup_reloads_tasks_all_or_nothing(pool: PgPool) {
    let dir = reports_dir();
    let h = Harness::with(
        pool.clone(),
        Setup {
            workers: vec![],
            ..Default::default()
        },
    )
    .await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = write_config(
        &h,
        &pool,
        &with_tasks(
            dir.path(),
            &format!("[api]\nlisten = \"127.0.0.1:{port}\"\n"),
        ),
    );
    let api = spawn_sluice(&config, &["api"]);
    let base = format!("http://127.0.0.1:{port}");
    let client = client_with(TEST_KEY);
    let names = || {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let Ok(r) = client.get(format!("{base}/v1/tasks")).send().await else {
                return None;
            };
            let v: Value = r.json().await.ok()?;
            Some(
                v["tasks"]
                    .as_array()?
                    .iter()
                    .map(|t| t["name"].as_str().unwrap_or_default().to_string())
                    .collect::<Vec<_>>(),
            )
        }
    };
    eventually(Duration::from_secs(30), "the api serves", || async {
        names().await.is_some()
    })
    .await;
    assert_eq!(names().await.unwrap().len(), 3);

    std::fs::write(
        dir.path().join("more.sql"),
        "-- name: added\nSELECT 1 AS one\n",
    )
    .unwrap();
    api.signal(nix::sys::signal::Signal::SIGHUP);
    eventually(
        Duration::from_secs(10),
        "the new task is served",
        || async {
            names()
                .await
                .is_some_and(|n| n.contains(&"added".to_string()))
        },
    )
    .await;

    // A broken set is refused whole: the duplicate `echo` fails the reload, and the
    // removal of more.sql in the same reload is not applied either.
    let failed_reloads = || {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let text = client
                .get(format!("{base}/metrics"))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            text.lines()
                .find(|l| l.starts_with("sluice_task_reloads_total{outcome=\"failed\"}"))
                .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        }
    };
    assert_eq!(failed_reloads().await, None);
    std::fs::write(dir.path().join("broken.sql"), "-- name: echo\nSELECT 1\n").unwrap();
    std::fs::remove_file(dir.path().join("more.sql")).unwrap();
    api.signal(nix::sys::signal::Signal::SIGHUP);
    eventually(Duration::from_secs(10), "the reload fails", || async {
        failed_reloads().await == Some(1)
    })
    .await;
    let served = names().await.unwrap();
    assert!(served.contains(&"added".to_string()), "{served:?}");
    assert_eq!(served.len(), 4, "{served:?}");
}

/// A task run takes the submit's `callback_url` (checked against `webhooks.allowed`)
/// and result caps.
#[sqlx::test(migrations = "./migrations")]
async fn a_task_run_takes_a_callback_and_result_caps(pool: PgPool) {
    let dir = reports_dir();
    let h = Harness::with(
        pool,
        with_tasks(
            dir.path(),
            "[webhooks]\nallowed = [\"http://127.0.0.1:9/hooks\"]\nsecret = \"s3cret\"\n",
        ),
    )
    .await;
    let (status, v) = h
        .post_json(
            "/v1/tasks/numbers_between/executions",
            json!({"args": [0, 10], "callback_url": "http://example.com/x"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["code"], "callback_not_allowed");
    let e = run_task(
        &h,
        "numbers_between",
        json!({"args": [0, 10], "row_limit": 4, "callback_url": "http://127.0.0.1:9/hooks/a"}),
    )
    .await;
    assert_eq!(e["callback_url"], "http://127.0.0.1:9/hooks/a");
    assert_eq!(e["result"]["truncated"], true, "{e}");
    assert_eq!(rows(&h, &e).await.len(), 4);
}
