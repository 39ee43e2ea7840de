//! Bad input gets a clear JSON error and the right status, never a 500; and the committed
//! OpenAPI document matches the code.
mod common;

use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

async fn post_raw(
    h: &Harness,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> (StatusCode, Value) {
    h.post("/v1/executions", content_type, body).await
}

fn assert_error(
    status: StatusCode,
    v: &Value,
    want_status: StatusCode,
    want_code: &str,
    mentions: &str,
) {
    assert_eq!(status, want_status, "{v}");
    assert_eq!(v["error"]["code"], want_code, "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(mentions),
        "message should mention `{mentions}`: {message}"
    );
}

#[sqlx::test(migrations = "./migrations")]
async fn malformed_json_is_400(pool: PgPool) {
    let h = Harness::without_workers(pool).await;
    let (s, v) = post_raw(&h, "application/json", "{\"sql\": ").await;
    assert_error(
        s,
        &v,
        StatusCode::BAD_REQUEST,
        "invalid_json",
        "malformed JSON",
    );
}

#[sqlx::test(migrations = "./migrations")]
async fn a_body_over_the_limit_is_413(pool: PgPool) {
    let h = Harness::without_workers(pool).await;
    let sql = format!("SELECT '{}'", "x".repeat(1024 * 1024));
    let (s, v) = post_raw(&h, "application/json", json!({ "sql": sql }).to_string()).await;
    assert_error(
        s,
        &v,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "1048576",
    );
    let (s, v) = post_raw(&h, "text/plain", sql).await;
    assert_error(
        s,
        &v,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "limit",
    );
}

#[sqlx::test(migrations = "./migrations")]
async fn the_body_limit_is_configurable(pool: PgPool) {
    let h = Harness::with(
        pool,
        Setup {
            workers: vec![],
            extra: "[api]\nmax_body_bytes = 100\n".into(),
            ..Default::default()
        },
    )
    .await;
    let (s, v) = post_raw(&h, "text/plain", format!("SELECT '{}'", "x".repeat(100))).await;
    assert_error(
        s,
        &v,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "100 bytes",
    );
    let (s, _) = post_raw(&h, "text/plain", "SELECT 1").await;
    assert_eq!(s, StatusCode::CREATED);
}

#[sqlx::test(migrations = "./migrations")]
async fn each_bad_field_gets_its_own_400(pool: PgPool) {
    let h = Harness::without_workers(pool).await;
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({ "sql": "SELECT 1", "tier": "gold" }),
            "unknown_tier",
            "gold",
        ),
        (
            json!({ "sql": "SELECT 1", "format": "Protobuf" }),
            "unknown_format",
            "Protobuf",
        ),
        (
            json!({ "sql": "SELECT 1", "colour": "red" }),
            "unknown_field",
            "colour",
        ),
        (json!({ "sql": "" }), "empty_sql", "empty"),
        (json!({ "sql": "  \n\t " }), "empty_sql", "empty"),
        (json!({ "format": "CSV" }), "missing_field", "sql"),
        (
            json!({ "sql": "SELECT 1", "settings": { "readonly": 0 } }),
            "setting_not_allowed",
            "readonly",
        ),
        (
            json!({ "sql": "SELECT 1", "settings": { "max_memory_usage": 1 } }),
            "setting_not_allowed",
            "max_memory_usage",
        ),
        (
            json!({ "sql": "SELECT 1", "settings": { "max_threads": [1] } }),
            "invalid_setting",
            "max_threads",
        ),
        (
            json!({ "sql": "SELECT 1", "priority": 10 }),
            "invalid_priority",
            "10",
        ),
        (
            json!({ "sql": "SELECT 1", "query_id": "" }),
            "invalid_query_id",
            "query_id",
        ),
        (json!({ "sql": 5 }), "invalid_json", "invalid type"),
    ];
    for (body, code, mentions) in cases {
        let (s, v) = h.submit(body.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert_eq!(v["error"]["code"], code, "{body}: {v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(mentions),
            "{body}: `{message}` should mention `{mentions}`"
        );
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM executions")
        .fetch_one(h.store.pool())
        .await
        .unwrap();
    assert_eq!(count, 0, "nothing invalid was queued");
}

#[sqlx::test(migrations = "./migrations")]
async fn wrong_content_type_and_bad_query_strings(pool: PgPool) {
    let h = Harness::without_workers(pool).await;
    let (s, v) = post_raw(&h, "application/xml", "<sql/>").await;
    assert_error(
        s,
        &v,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "application/xml",
    );
    let (s, v) = post_raw(&h, "text/plain", "").await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "empty_sql", "empty");
    let (s, v) = h
        .post("/v1/executions?tier=nope", "text/plain", "SELECT 1")
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["code"], "unknown_tier");

    for (query, code) in [
        ("status=DONE", "invalid_status"),
        ("limit=0", "invalid_limit"),
        ("limit=100000", "invalid_limit"),
        ("cursor=xyz", "invalid_cursor"),
        ("limit=abc", "invalid_query"),
        ("colour=red", "invalid_query"),
    ] {
        let (s, v) = h.get_json(&format!("/v1/executions?{query}")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(v["error"]["code"], code, "{query}: {v}");
    }
}

#[sqlx::test(migrations = "./migrations")]
async fn unknown_ids_are_404_everywhere(pool: PgPool) {
    let h = Harness::without_workers(pool).await;
    let missing = uuid::Uuid::now_v7();
    for id in [missing.to_string(), "not-a-uuid".to_string()] {
        for (method, path) in [
            ("GET", format!("/v1/executions/{id}")),
            ("GET", format!("/v1/executions/{id}/result")),
            ("POST", format!("/v1/executions/{id}/cancel")),
        ] {
            let r = h
                .http
                .request(method.parse().unwrap(), h.url(&path))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "{method} {path}");
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"]["code"], "not_found");
        }
    }
    let r = h.http.get(h.url("/v2/nothing")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[sqlx::test(migrations = "./migrations")]
async fn result_is_409_until_succeeded_and_410_once_expired(pool: PgPool) {
    let h = Harness::without_workers(pool).await;
    let id = h.submit_ok(json!({ "sql": "SELECT 1" })).await;
    let (s, _, body) = h.download(&id).await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_error(s, &v, StatusCode::CONFLICT, "result_not_ready", "PENDING");

    let (stop, task) = h.spawn_worker("default");
    h.wait_for(&id, &["SUCCEEDED"], Duration::from_secs(30))
        .await;
    let (s, _, _) = h.download(&id).await;
    assert_eq!(s, StatusCode::OK);
    stop.cancel();
    task.await.unwrap().unwrap();

    // Expiry is the bookkeeper's; here the transition is made directly, through the
    // same status machine the trigger enforces.
    sqlx::query("UPDATE executions SET status = 'EXPIRED' WHERE id = $1::uuid")
        .bind(&id)
        .execute(h.store.pool())
        .await
        .unwrap();
    let (s, _, body) = h.download(&id).await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_error(s, &v, StatusCode::GONE, "result_expired", "expired");
}

#[sqlx::test(migrations = "./migrations")]
async fn the_database_rejects_illegal_transitions(pool: PgPool) {
    let h = Harness::without_workers(pool).await;
    let id = h.submit_ok(json!({ "sql": "SELECT 1" })).await;
    // The whole status machine: every (from, to) pair, each tried in a transaction of
    // its own that puts the row in `from` with the triggers off, turns them back on and
    // then asks for `to`. (PENDING -> FAILED is legal: a start deadline that passed,
    // NOT_STARTED_IN_TIME.)
    const LEGAL: [(&str, &str); 10] = [
        ("PENDING", "RUNNING"),
        ("PENDING", "CANCELED"),
        ("PENDING", "FAILED"),
        ("RUNNING", "SUCCEEDED"),
        ("RUNNING", "FAILED"),
        ("RUNNING", "CANCELED"),
        ("RUNNING", "PENDING"),
        ("SUCCEEDED", "EXPIRED"),
        ("FAILED", "EXPIRED"),
        ("CANCELED", "EXPIRED"),
    ];
    const ALL: [&str; 6] = [
        "PENDING",
        "RUNNING",
        "SUCCEEDED",
        "FAILED",
        "CANCELED",
        "EXPIRED",
    ];
    let set = "UPDATE executions SET status = $2::execution_status WHERE id = $1::uuid";
    for from in ALL {
        for to in ALL {
            let mut tx = h.store.pool().begin().await.unwrap();
            sqlx::query("SET LOCAL session_replication_role = replica")
                .execute(&mut *tx)
                .await
                .unwrap();
            sqlx::query(set)
                .bind(&id)
                .bind(from)
                .execute(&mut *tx)
                .await
                .unwrap();
            sqlx::query("SET LOCAL session_replication_role = origin")
                .execute(&mut *tx)
                .await
                .unwrap();
            let asked = sqlx::query(set).bind(&id).bind(to).execute(&mut *tx).await;
            let legal = from == to || LEGAL.contains(&(from, to));
            match asked {
                Ok(_) => assert!(legal, "{from} -> {to} was allowed"),
                Err(e) => {
                    assert!(!legal, "{from} -> {to} was refused: {e}");
                    assert!(
                        e.to_string().contains(&format!(
                            "illegal execution status transition {from} -> {to}"
                        )),
                        "{e}"
                    );
                }
            }
            tx.rollback().await.unwrap();
        }
    }
    let e = sqlx::query(
        "INSERT INTO executions (id, tier, query_id, query_hash, sql, format, max_attempts, status) \
         VALUES (gen_random_uuid(), 't', 'q', 'h', 's', 'CSV', 1, 'SUCCEEDED')",
    )
    .execute(h.store.pool())
    .await
    .unwrap_err();
    assert!(e.to_string().contains("starts PENDING"), "{e}");
}

#[sqlx::test(migrations = "./migrations")]
async fn health_ready_docs_and_openapi_are_served(pool: PgPool) {
    let h = Harness::without_workers(pool).await;
    for path in ["/health", "/ready", "/openapi.json", "/docs/"] {
        let r = h.http.get(h.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    let (_, v) = h.get_json("/ready").await;
    assert_eq!(v["postgres"], "ok");
    let doc: Value = h
        .http
        .get(h.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["paths"]["/v1/executions"]["post"].is_object());
}

#[tokio::test]
async fn the_api_answers_503_while_postgres_is_unreachable() {
    // An api whose Postgres is down: nothing listens on the port.
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let options: sqlx::postgres::PgConnectOptions =
        format!("postgres://postgres@127.0.0.1:{dead_port}/sluice")
            .parse()
            .unwrap();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(std::time::Duration::from_secs(2))
        .connect_lazy_with(options);
    let config = sluice::config::Config::from_toml(&format!(
        "database_url = \"postgres://x\"\n{}[tiers.default]\nclickhouse_url = \"{}\"\n",
        common::key_entry("tester", common::TEST_KEY, "default", ""),
        clickhouse_url()
    ))
    .unwrap();
    let results_dir = tempfile::tempdir().unwrap();
    let mut results_config = config.results.clone();
    results_config.url = results_dir.path().display().to_string();
    let ctx = sluice::api::ApiContext::new(
        std::sync::Arc::new(config),
        sluice::store::Store::from_pool(pool),
        sluice::results::ResultStore::new(&results_config).unwrap(),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(sluice::api::serve(listener, ctx, stop.clone()));
    let http = common::client_with(common::TEST_KEY);

    let r = http.get(format!("{base}/ready")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "not_ready");
    let r = http.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "the process itself is alive");
    let r = http
        .post(format!("{base}/v1/executions"))
        .json(&json!({ "sql": "SELECT 1" }))
        .send()
        .await
        .unwrap();
    let s = r.status();
    let v: Value = r.json().await.unwrap();
    assert_error(
        s,
        &v,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "unavailable",
    );
    let r = http
        .get(format!("{base}/v1/executions/{}", uuid::Uuid::now_v7()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    stop.cancel();
}

#[test]
fn api_yaml_matches_the_code() {
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/api.yaml")).unwrap();
    let generated = sluice::api::openapi_yaml();
    assert!(
        committed == generated,
        "api.yaml is stale: run `make api.yaml` and commit it"
    );
}

/// What the OpenAPI document allows, the server takes: the query string's tier,
/// query_id, format and priority with a JSON body (a conflict is a 400), and integers
/// written as whole floats (`3.0`), which JSON Schema counts as integers.
#[sqlx::test(migrations = "./migrations")]
async fn the_document_s_shapes_are_accepted(pool: PgPool) {
    let h = Harness::without_workers(pool).await;
    let (status, v) = h
        .post_json(
            "/v1/executions?query_id=from-query&priority=2&format=CSV",
            json!({ "sql": "SELECT 1" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["execution"]["query_id"], "from-query");
    assert_eq!(v["execution"]["priority"], 2);
    assert_eq!(v["execution"]["format"], "CSV");
    let (status, v) = h
        .post_json(
            "/v1/executions?query_id=from-query",
            json!({ "sql": "SELECT 1", "query_id": "from-body" }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["code"], "invalid_query", "{v}");

    let (status, v) = h
        .submit(json!({ "sql": "SELECT 2", "priority": 3.0 }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["execution"]["priority"], 3);
    for bad in [json!(3.5), json!(-1.0), json!(1e300)] {
        let (status, v) = h
            .submit(json!({ "sql": "SELECT 3", "priority": bad }))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {v}");
    }
}

/// A NUL byte in any list filter is a 400 naming it (Postgres cannot compare with it);
/// schemathesis found `task` answering 500.
#[sqlx::test(migrations = "./migrations")]
async fn nul_in_a_list_filter_is_400(pool: PgPool) {
    let h = Harness::without_workers(pool).await;
    for field in ["query_id", "tier", "tenant", "task"] {
        let (status, v) = h.get_json(&format!("/v1/executions?{field}=a%00b")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}: {v}");
        assert_eq!(v["error"]["code"], "invalid_filter", "{field}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(field),
            "{v}"
        );
    }
}

/// The console is one page served without a credential (it asks for the key itself);
/// the tiers say how much of the tenant's work waits and runs there.
#[sqlx::test(migrations = "./migrations")]
async fn the_console_and_the_queue_per_tier(pool: PgPool) {
    let h = Harness::without_workers(pool).await;
    let r = reqwest::get(h.url("/ui")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let page = r.text().await.unwrap();
    assert!(page.contains("<title>Sluice console</title>"));
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no CDN"
    );

    h.submit_ok(json!({ "sql": "SELECT 1" })).await;
    h.submit_ok(json!({ "sql": "SELECT 2" })).await;
    let (_, tiers) = h.get_json("/v1/tiers").await;
    let t = &tiers["tiers"][0];
    assert_eq!(t["pending"], 2, "{tiers}");
    assert_eq!(t["running"], 0, "{tiers}");
    assert!(
        t["oldest_pending_seconds"].as_f64().unwrap() >= 0.0,
        "{tiers}"
    );
}

/// A JSON body must be an object: serde would build a request from an array of its
/// fields (schemathesis found `[]` accepted by result-url).
#[sqlx::test(migrations = "./migrations")]
async fn a_json_array_body_is_400(pool: PgPool) {
    let h = Harness::without_workers(pool).await;
    for (path, body) in [
        ("/v1/executions", r#"["SELECT 1"]"#),
        ("/v1/executions/search", r#"[["a"]]"#),
        ("/v1/groups", "[1, []]"),
    ] {
        let (status, v) = h.post(path, "application/json", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {v}");
        assert_eq!(v["error"]["code"], "invalid_json", "{path}: {v}");
    }
    let id = h.submit_ok(json!({ "sql": "SELECT 1" })).await;
    let (status, v) = h
        .post(
            &format!("/v1/executions/{id}/result-url"),
            "application/json",
            "[]",
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
}
