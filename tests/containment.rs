//! A hostile tenant stays in its lane: what it may not do is refused by the gateway
//! (statement kinds, sensitive system tables, settings) or by ClickHouse (the tier
//! user's grants, readonly), while another tenant's long query runs on untouched and its
//! parameters stay unseen. And a worker refuses to serve a tier whose ClickHouse user
//! could step out of the lane. Both servers; what 18.16 cannot express is asserted as
//! such.
mod common;

use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

const KEY_ATTACKER: &str = "sk_test_attacker";
const KEY_VICTIM: &str = "sk_test_victim";

fn two_tenants() -> String {
    [
        key_entry("mallory", KEY_ATTACKER, "attacker", ""),
        key_entry("victor", KEY_VICTIM, "victim", ""),
    ]
    .concat()
}

#[sqlx::test(migrations = "./migrations")]
async fn a_hostile_tenant_is_refused_and_the_victim_is_untouched(pool: PgPool) {
    let h = Harness::with(
        pool,
        Setup {
            auth_extra: two_tenants(),
            ..Default::default()
        },
    )
    .await;
    let (attacker, victim) = (h.as_principal(KEY_ATTACKER), h.as_principal(KEY_VICTIM));
    let modern = is_modern().await;
    // The victim's long query, with a secret parameter where the server has parameters.
    let secret = "s3cr3t-victim-value-4711";
    let mut body = json!({ "sql": LONG_SQL, "settings": long_settings() });
    if modern {
        body = json!({
            "sql": "SELECT count() FROM system.numbers WHERE toString(number) != {secret:String}",
            "settings": long_settings(),
            "parameters": { "secret": secret },
        });
    }
    let victim_id = victim.submit_ok(body).await;
    let victim_query = victim.wait_running_on_clickhouse(&victim_id).await;

    // Refused by the gateway, with a 400 that says why.
    let refused_by_gateway = [
        (
            format!("KILL QUERY WHERE query_id = '{victim_query}' SYNC"),
            "statement_not_allowed",
        ),
        (
            "SELECT query_id, query FROM system.processes".to_string(),
            "table_not_allowed",
        ),
        ("SELECT * FROM system.query_log".into(), "table_not_allowed"),
        (
            "SELECT * FROM clusterAllReplicas('default', `system`.\"processes\")".into(),
            "table_not_allowed",
        ),
        ("SHOW PROCESSLIST".into(), "statement_not_allowed"),
        ("SHOW GRANTS".into(), "statement_not_allowed"),
        ("SET max_threads = 64".into(), "statement_not_allowed"),
        (
            "INSERT INTO FUNCTION file('/tmp/x.csv', 'CSV', 'x UInt8') VALUES (7)".into(),
            "statement_not_allowed",
        ),
        ("SYSTEM SHUTDOWN".into(), "statement_not_allowed"),
        (
            "SELECT 1 SETTINGS max_execution_time = 0".into(),
            "setting_not_allowed",
        ),
        (
            "SELECT 1 SETTINGS max_memory_usage = 100000000000".into(),
            "setting_not_allowed",
        ),
        (
            format!("SELECT 1; KILL QUERY WHERE query_id = '{victim_query}'"),
            "multiple_statements",
        ),
        ("SELECT 1 INTO OUTFILE '/tmp/out'".into(), "into_outfile"),
        ("SELECT 'a\0b'".into(), "invalid_sql"),
    ];
    for (sql, code) in &refused_by_gateway {
        let (status, v) = attacker.submit(json!({ "sql": sql })).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{sql}: {v}");
        assert_eq!(v["error"]["code"], *code, "{sql}: {v}");
        assert!(!v.to_string().contains(secret));
    }

    // Refused by ClickHouse: the tier's user has no such grant (26.9) or runs with
    // readonly = 1, which forbids table functions on 18.16.
    let refused_by_clickhouse = [
        "SELECT * FROM file('/etc/passwd', 'TSV', 'x String')",
        "SELECT * FROM url('http://127.0.0.1:8080/health', 'TSV', 'x String')",
        "SELECT * FROM postgresql('127.0.0.1:5432', 'postgres', 'executions', 'postgres', '')",
        "SELECT * FROM s3('http://127.0.0.1:5000/sluice-probe/k', 'TSV', 'x String')",
        "SELECT * FROM remote('127.0.0.1:9000', system.one)",
        "SELECT * FROM executable('cat /etc/passwd', 'TSV', 'x String')",
    ];
    for sql in refused_by_clickhouse {
        let id = attacker.submit_ok(json!({ "sql": sql })).await;
        let e = attacker.wait_terminal(&id).await;
        assert_eq!(e["status"], "FAILED", "{sql}: {e}");
        let code = e["error"]["clickhouse_code"].as_i64().unwrap_or(-1);
        assert!(
            code == 497 || code == 164,
            "{sql}: refused with ACCESS_DENIED or READONLY, not {code}: {e}"
        );
        assert!(!e.to_string().contains(secret));
    }

    // The victim never noticed.
    assert_eq!(running_on_clickhouse(&victim_query).await, 1);
    let v = victim.get(&victim_id).await;
    assert_eq!(v["status"], "RUNNING", "{v}");
    let (status, _) = attacker
        .get_json(&format!("/v1/executions/{victim_id}"))
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "another tenant's execution does not exist for the attacker"
    );
    victim.cancel(&victim_id).await;
    victim
        .wait_for(&victim_id, &["CANCELED"], Duration::from_secs(30))
        .await;
    assert_eq!(running_on_clickhouse(&victim_query).await, 0);
}

/// Runs a worker of a tier whose user lines are `users` until it has checked the user;
/// the worker's error, or `None` when it serves.
async fn worker_verdict(h: &Harness, pool: &PgPool, users: &str) -> Option<String> {
    let toml = config_toml(pool, &Setup::default(), h.results_dir.path())
        .replace(&tier_users(), users)
        .replace(TIME_LIMIT, "");
    let config = sluice::config::Config::from_toml(&toml).unwrap();
    let worker =
        sluice::worker::Worker::new(&config, "default", h.store.clone(), h.results.clone())
            .unwrap();
    let stop = CancellationToken::new();
    let run = tokio::spawn(worker.run(stop.clone()));
    // A worker that passed its check serves: it runs an execution. One that refused
    // ends with its error.
    let probe = h
        .submit_ok(json!({ "sql": format!("SELECT '{}' AS probe", uuid::Uuid::now_v7()) }))
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !run.is_finished() {
        if h.get(&probe).await["status"] == "SUCCEEDED" {
            stop.cancel();
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker neither served nor ended"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    run.await.unwrap().err().map(|e| e.to_string())
}

#[sqlx::test(migrations = "./migrations")]
async fn a_worker_refuses_a_clickhouse_user_that_can_leave_the_lane(pool: PgPool) {
    let h = Harness::without_workers(pool.clone()).await;
    let default_user = "user = \"default\"\n";
    let refused = worker_verdict(&h, &pool, default_user)
        .await
        .expect("a worker with the unrestricted `default` user refuses to start");
    assert!(refused.contains("trusted_user"), "{refused}");
    assert!(refused.contains("read other queries"), "{refused}");
    assert!(refused.contains("kill queries"), "{refused}");
    let trusted = format!("{default_user}trusted_user = true\n");
    assert_eq!(
        worker_verdict(&h, &pool, &trusted).await,
        None,
        "trusted: it serves"
    );

    let tenant = format!(
        "user = \"{}\"\npassword = \"{}\"\nmonitor_user = \"{}\"\nmonitor_password = \"{}\"\n",
        TENANT_USER.0, TENANT_USER.1, MONITOR_USER.0, MONITOR_USER.1
    );
    let verdict = worker_verdict(&h, &pool, &tenant).await;
    if is_modern().await {
        // 26.9's grants say everything: the restricted user passes.
        assert_eq!(verdict, None);
    } else {
        // 18.16's users.xml cannot forbid reading system.processes or killing queries of
        // the same user (other tenants of the tier): the worker says so...
        let refused = verdict.expect("18.16's restricted user is still refused");
        assert!(refused.contains("read other queries"), "{refused}");
        assert!(refused.contains("kill queries"), "{refused}");
        // ...while what readonly = 1 in its profile does restrict holds.
        assert!(!refused.contains("read host files"), "{refused}");
        assert!(!refused.contains("reach URLs"), "{refused}");
    }
}

/// What 18.16's users.xml does restrict, asked of the server directly: a readonly
/// user cannot kill another user's query.
#[sqlx::test(migrations = "./migrations")]
async fn a_restricted_user_cannot_kill_another_users_query(pool: PgPool) {
    let _ = pool;
    let query_id = format!("sluice-victim-{}", uuid::Uuid::now_v7());
    let url = clickhouse_url();
    let victim = tokio::spawn({
        let (url, query_id) = (url.clone(), query_id.clone());
        async move {
            reqwest::Client::new()
                .post(url)
                .query(&[("query_id", query_id.as_str()), ("max_threads", "1")])
                .body(LONG_SQL)
                .send()
                .await
                .unwrap()
                .text()
                .await
        }
    });
    eventually(Duration::from_secs(10), "the victim runs", || async {
        running_on_clickhouse(&query_id).await == 1
    })
    .await;
    let answer = reqwest::Client::new()
        .post(&url)
        .basic_auth(TENANT_USER.0, Some(TENANT_USER.1))
        .body(format!("KILL QUERY WHERE query_id = '{query_id}' SYNC"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        answer.contains("Code: 164") || answer.contains("Code: 497"),
        "refused: {answer}"
    );
    assert_eq!(running_on_clickhouse(&query_id).await, 1, "{answer}");
    clickhouse_text(&format!("KILL QUERY WHERE query_id = '{query_id}' SYNC")).await;
    let _ = victim.await;
}
