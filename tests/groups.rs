//! Groups (members created atomically, at most `concurrency` in flight across workers,
//! an aggregate status, cancel) and the per-execution policy of any submit (`run_after`,
//! `max_attempts`, `retention`).
mod common;

use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

/// A member that runs for about `secs` seconds on both servers.
fn sleeper(i: usize, secs: f64) -> Value {
    json!({ "sql": format!(
        "SELECT {i} AS i, sum(sleepEachRow({})) FROM (SELECT number FROM system.numbers LIMIT 3)",
        secs / 3.0
    ) })
}

async fn create(h: &Harness, body: Value) -> Value {
    let (status, v) = h.post_json("/v1/groups", body.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}: {v}");
    assert_eq!(v["outcome"], "created");
    v["group"].clone()
}

/// How many executions the test's database holds.
async fn executions(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM executions")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn wait_group(h: &Harness, id: &str, statuses: &[&str]) -> Value {
    let mut last = Value::Null;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline {
        let (status, g) = h.get_json(&format!("/v1/groups/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{g}");
        if statuses.iter().any(|s| g["status"] == *s) {
            return g;
        }
        last = g;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("group {id} not {statuses:?} after 60s: {last}");
}

/// Six members, concurrency 2, two workers with four slots each: never more than two
/// members hold a place (RUNNING, or PENDING and claimable) at any sampled moment, and
/// two do run side by side.
#[sqlx::test(migrations = "./migrations")]
async fn concurrency_holds_across_two_workers(pool: PgPool) {
    let h = Harness::with(
        pool.clone(),
        Setup {
            workers: vec!["default", "default"],
            ..Default::default()
        },
    )
    .await;
    let members: Vec<Value> = (0..6).map(|i| sleeper(i, 0.6)).collect();
    let g = create(&h, json!({ "concurrency": 2, "executions": members })).await;
    let id = g["id"].as_str().unwrap().to_string();
    assert_eq!(g["executions"].as_array().unwrap().len(), 6);
    let held: Vec<bool> = g["executions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["runnable_at"].is_null())
        .collect();
    assert_eq!(held, [false, false, true, true, true, true]);

    let (mut most_placed, mut most_running) = (0i64, 0i64);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (placed, running, done): (i64, i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status = 'RUNNING' \
                                      OR (status = 'PENDING' AND NOT held)), \
                    count(*) FILTER (WHERE status = 'RUNNING'), \
                    count(*) FILTER (WHERE status IN ('SUCCEEDED', 'FAILED', 'CANCELED')) \
             FROM executions WHERE group_id = $1::uuid",
        )
        .bind(&id)
        .fetch_one(&pool)
        .await
        .unwrap();
        most_placed = most_placed.max(placed);
        most_running = most_running.max(running);
        if done == 6 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "group did not finish"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        most_placed <= 2,
        "{most_placed} members held places at once"
    );
    assert_eq!(most_running, 2, "two members ran side by side");
    let g = wait_group(&h, &id, &["SUCCEEDED"]).await;
    assert_eq!(g["counts"], json!({ "SUCCEEDED": 6 }));
    let workers: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT worker_id) FROM executions WHERE group_id = $1::uuid",
    )
    .bind(&id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(workers >= 1);
}

/// PENDING before anything runs; FAILED when a member failed (the others still ran);
/// SUCCEEDED when all did; CANCELED when canceled.
#[sqlx::test(migrations = "./migrations")]
async fn the_aggregate_status_in_each_case(pool: PgPool) {
    let mut h = Harness::start(pool).await;

    let ok = create(
        &h,
        json!({ "concurrency": 2, "executions": [ {"sql": "SELECT 1"}, {"sql": "SELECT 2"} ] }),
    )
    .await;
    let failing = create(
        &h,
        json!({ "concurrency": 1, "executions": [
            {"sql": "SELECT throwIf(1)"}, {"sql": "SELECT 3"}, {"sql": "SELECT 4"},
        ] }),
    )
    .await;
    let g = wait_group(&h, ok["id"].as_str().unwrap(), &["SUCCEEDED", "FAILED"]).await;
    assert_eq!(g["status"], "SUCCEEDED", "{g}");
    let g = wait_group(
        &h,
        failing["id"].as_str().unwrap(),
        &["SUCCEEDED", "FAILED"],
    )
    .await;
    assert_eq!(g["status"], "FAILED", "{g}");
    assert_eq!(g["counts"], json!({ "FAILED": 1, "SUCCEEDED": 2 }), "{g}");

    h.stop_workers().await;
    let idle = create(
        &h,
        json!({ "concurrency": 1, "executions": [ {"sql": "SELECT 5"}, {"sql": "SELECT 6"} ] }),
    )
    .await;
    let id = idle["id"].as_str().unwrap();
    let (_, g) = h.get_json(&format!("/v1/groups/{id}")).await;
    assert_eq!(g["status"], "PENDING");
    let (status, g) = h
        .post_json(&format!("/v1/groups/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{g}");
    assert_eq!(g["status"], "CANCELED");
    assert_eq!(g["counts"], json!({ "CANCELED": 2 }));
    assert!(g["cancel_requested_at"].is_string());
}

/// Cancel stops the running member on ClickHouse and cancels the held ones, which
/// never start.
#[sqlx::test(migrations = "./migrations")]
async fn cancel_stops_running_members_and_drops_held_ones(pool: PgPool) {
    let h = Harness::start(pool).await;
    let long = json!({ "sql": LONG_SQL, "settings": long_settings() });
    let g = create(
        &h,
        json!({ "concurrency": 1, "executions": [long.clone(), long.clone(), long] }),
    )
    .await;
    let id = g["id"].as_str().unwrap().to_string();
    let first = g["executions"][0]["id"].as_str().unwrap().to_string();
    let query_id = h.wait_running_on_clickhouse(&first).await;

    let (status, g) = h
        .post_json(&format!("/v1/groups/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{g}");
    let g = wait_group(&h, &id, &["CANCELED"]).await;
    assert_eq!(g["counts"], json!({ "CANCELED": 3 }), "{g}");
    eventually(Duration::from_secs(30), "the query is gone", || async {
        running_on_clickhouse(&query_id).await == 0
    })
    .await;
    for member in g["executions"].as_array().unwrap().iter().skip(1) {
        assert!(member["started_at"].is_null(), "{member}");
    }
}

/// A bad member fails the whole group, naming it, and creates nothing; a query_id in
/// use is a 409; a group_id is an idempotency key; another tenant sees nothing.
#[sqlx::test(migrations = "./migrations")]
async fn creation_is_atomic_idempotent_and_tenant_scoped(pool: PgPool) {
    let h = Harness::with(
        pool.clone(),
        Setup {
            workers: vec![],
            auth_extra: key_entry("other", "sk_other_tenant", "other", ""),
            ..Default::default()
        },
    )
    .await;
    let bad = [
        (
            json!({ "concurrency": 1, "executions": [{"sql": "SELECT 1"}, {"sql": "SELECT 1", "tier": "nope"}] }),
            StatusCode::BAD_REQUEST,
            "executions[1]: unknown tier",
        ),
        (
            json!({ "concurrency": 1, "executions": [{"sql": "SELECT 1; SELECT 2"}] }),
            StatusCode::BAD_REQUEST,
            "executions[0]",
        ),
        (
            json!({ "concurrency": 0, "executions": [{"sql": "SELECT 1"}] }),
            StatusCode::BAD_REQUEST,
            "concurrency",
        ),
        (
            json!({ "concurrency": 1, "executions": [] }),
            StatusCode::BAD_REQUEST,
            "1 to 1000",
        ),
        (
            json!({ "concurrency": 1, "executions": [{"task": "missing"}] }),
            StatusCode::NOT_FOUND,
            "executions[0]: no task",
        ),
        (
            json!({ "concurrency": 1, "executions": [{"sql": "SELECT 1", "max_attempts": 99}] }),
            StatusCode::BAD_REQUEST,
            "executions[0]: max_attempts",
        ),
    ];
    for (body, status, says) in bad {
        let (got, v) = h.post_json("/v1/groups", body.clone()).await;
        assert_eq!(got, status, "{body}: {v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{body}: {message}");
    }
    assert_eq!(
        executions(&pool).await,
        0,
        "a refused group creates nothing"
    );

    // A query_id in flight: 409, and nothing of the group stays.
    h.submit_ok(json!({ "sql": "SELECT 1", "query_id": "taken" }))
        .await;
    let (status, v) = h
        .post_json(
            "/v1/groups",
            json!({ "concurrency": 1, "executions": [
                {"sql": "SELECT 2"}, {"sql": "SELECT 3", "query_id": "taken"},
            ] }),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"]["code"], "query_id_in_use");
    assert_eq!(executions(&pool).await, 1);

    // Idempotent by group_id; identical members do not collapse into each other.
    let body = json!({ "group_id": "nightly-2026-11-23", "concurrency": 1,
                       "executions": [{"sql": "SELECT 7"}, {"sql": "SELECT 7"}] });
    let first = create(&h, body.clone()).await;
    assert_eq!(first["group_id"], "nightly-2026-11-23");
    assert_eq!(first["executions"].as_array().unwrap().len(), 2);
    let (status, again) = h.post_json("/v1/groups", body).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["outcome"], "existing");
    assert_eq!(again["group"]["id"], first["id"]);
    assert_eq!(executions(&pool).await, 3);

    // Another tenant: 404 on get and cancel, and its own group_id space.
    let id = first["id"].as_str().unwrap();
    let other = h.as_principal("sk_other_tenant");
    let (status, _) = other.get_json(&format!("/v1/groups/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = other
        .post_json(&format!("/v1/groups/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, g) = h.get_json(&format!("/v1/groups/{id}")).await;
    assert_eq!(
        g["status"], "PENDING",
        "the other tenant's cancel changed nothing"
    );
    let (status, v) = other
        .post_json(
            "/v1/groups",
            json!({ "group_id": "nightly-2026-11-23", "concurrency": 1,
                    "executions": [{"sql": "SELECT 7"}] }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_ne!(v["group"]["id"], first["id"]);
}

/// `run_after` holds an execution back until then, and a PENDING one shows when.
/// The tenant's queue cap counts a group's members, held ones too: a group that would
/// take the tenant over it is refused whole (429 `queue_full`, nothing created), one
/// that fills it exactly is created.
#[sqlx::test(migrations = "./migrations")]
async fn a_group_over_the_queue_cap_is_refused_whole(pool: PgPool) {
    let h = Harness::with(
        pool.clone(),
        Setup {
            workers: vec![],
            tier_extra: "max_queued_per_tenant = 3".into(),
            ..Default::default()
        },
    )
    .await;
    h.submit_ok(json!({ "sql": "SELECT 'single'" })).await;
    let members = |n: usize| -> Vec<Value> {
        (0..n)
            .map(|i| json!({ "sql": format!("SELECT {i}") }))
            .collect()
    };
    let (status, v) = h
        .post_json(
            "/v1/groups",
            json!({ "concurrency": 1, "executions": members(3) }),
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "1 + 3 over 3: {v}");
    assert_eq!(v["error"]["code"], "queue_full", "{v}");
    assert_eq!(
        executions(&pool).await,
        1,
        "a refused group creates nothing"
    );

    create(&h, json!({ "concurrency": 1, "executions": members(2) })).await;
    assert_eq!(executions(&pool).await, 3);
    let (status, v) = h.submit(json!({ "sql": "SELECT 'one more'" })).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "full: {v}");
}

#[sqlx::test(migrations = "./migrations")]
async fn run_after_is_respected(pool: PgPool) {
    let h = Harness::start(pool).await;
    let at = chrono::Utc::now() + chrono::Duration::seconds(2);
    let (status, v) = h
        .submit(json!({ "sql": "SELECT 'later'", "run_after": at.to_rfc3339() }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let e = &v["execution"];
    assert_eq!(e["status"], "PENDING");
    let runnable: chrono::DateTime<chrono::Utc> =
        e["runnable_at"].as_str().unwrap().parse().unwrap();
    assert!((runnable - at).num_milliseconds().abs() < 2, "{e}");
    let e = h.wait_terminal(e["id"].as_str().unwrap()).await;
    assert_eq!(e["status"], "SUCCEEDED");
    let started: chrono::DateTime<chrono::Utc> = e["started_at"].as_str().unwrap().parse().unwrap();
    assert!(started >= at, "started {started}, before {at}");
    assert!(e["runnable_at"].is_null());

    let (status, v) = h
        .submit(json!({ "sql": "SELECT 1", "run_after": "tomorrow" }))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["code"], "invalid_run_after");
}

/// `max_attempts` and `retention` may lower the tier's, never raise them.
#[sqlx::test(migrations = "./migrations")]
async fn max_attempts_and_retention_are_bounded_by_the_tier(pool: PgPool) {
    let h = Harness::with(
        pool,
        Setup {
            tier_extra: "max_attempts = 3\nretention = { succeeded = \"1h\" }".into(),
            ..Default::default()
        },
    )
    .await;
    for (body, code) in [
        (
            json!({"sql": "SELECT 1", "max_attempts": 4}),
            "invalid_max_attempts",
        ),
        (
            json!({"sql": "SELECT 1", "max_attempts": 0}),
            "invalid_max_attempts",
        ),
        (
            json!({"sql": "SELECT 1", "retention": "2h"}),
            "invalid_retention",
        ),
        (
            json!({"sql": "SELECT 1", "retention": "0s"}),
            "invalid_retention",
        ),
        (
            json!({"sql": "SELECT 1", "retention": "soon"}),
            "invalid_retention",
        ),
    ] {
        let (status, v) = h.submit(body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert_eq!(v["error"]["code"], code, "{body}: {v}");
    }

    // Both lowered for one execution.
    let (_, v) = h
        .submit(json!({"sql": "SELECT 'once'", "max_attempts": 1, "retention": "1s"}))
        .await;
    let e = &v["execution"];
    assert_eq!(e["max_attempts"], 1);
    assert_eq!(e["retention_seconds"], 1);
    let id = e["id"].as_str().unwrap().to_string();
    let e = h.wait_terminal(&id).await;
    assert_eq!(e["status"], "SUCCEEDED");
    // Its own retention (1 s) expires it long before the tier's hour.
    let bk =
        sluice::bookkeeper::Bookkeeper::new(&h.config, h.store.clone(), h.results.clone()).unwrap();
    let other = h.submit_ok(json!({"sql": "SELECT 'kept'"})).await;
    h.wait_terminal(&other).await;
    eventually(Duration::from_secs(10), "its result expires", || async {
        bk.expire_pass().await.unwrap();
        h.get(&id).await["status"] == "EXPIRED"
    })
    .await;
    let (status, _, _) = h.download(&id).await;
    assert_eq!(status, StatusCode::GONE);
    assert_eq!(h.get(&other).await["status"], "SUCCEEDED");
}
