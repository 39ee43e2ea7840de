//! Authentication, tenant isolation, result links and query parameters (secrets).

mod common;

use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

const KEY_A: &str = "sk_test_tenant_a";
const KEY_B: &str = "sk_test_tenant_b";
const KEY_ADMIN: &str = "sk_test_admin";
const KEY_DEFAULT_ONLY: &str = "sk_test_default_tier_only";

fn principals() -> String {
    [
        key_entry("alice", KEY_A, "a", ""),
        key_entry("bob", KEY_B, "b", ""),
        key_entry("root", KEY_ADMIN, "ops", "admin = true"),
        key_entry("dash", KEY_DEFAULT_ONLY, "a", "tiers = [\"default\"]"),
    ]
    .concat()
}

async fn harness(pool: PgPool) -> Harness {
    Harness::with(
        pool,
        Setup {
            tiers: vec!["default", "vip"],
            workers: vec!["default", "vip"],
            auth_extra: principals(),
            ..Default::default()
        },
    )
    .await
}

/// GET /v1/executions with an Authorization header value (or none).
async fn list_with(h: &Harness, authorization: Option<&str>) -> (StatusCode, Value, String) {
    let mut r = reqwest::Client::new().get(h.url("/v1/executions"));
    if let Some(a) = authorization {
        r = r.header("authorization", a);
    }
    let r = r.send().await.unwrap();
    let challenge = r
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let (status, v) = json_answer(r).await;
    (status, v, challenge)
}

fn assert_401(answer: (StatusCode, Value, String), code: &str) {
    let (status, v, challenge) = answer;
    assert_eq!(
        (
            status,
            v["error"]["code"].as_str().unwrap(),
            challenge.as_str()
        ),
        (StatusCode::UNAUTHORIZED, code, "Bearer"),
        "{v}"
    );
}

#[sqlx::test]
async fn missing_credentials_are_401(pool: PgPool) {
    let h = harness(pool).await;
    assert_401(list_with(&h, None).await, "missing_credentials");
}

#[sqlx::test]
async fn malformed_credentials_are_401(pool: PgPool) {
    let h = harness(pool).await;
    assert_401(
        list_with(&h, Some(&format!("Basic {KEY_A}"))).await,
        "malformed_credentials",
    );
}

#[sqlx::test]
async fn unknown_api_keys_are_401(pool: PgPool) {
    let h = harness(pool).await;
    assert_401(
        list_with(&h, Some("Bearer sk_not_a_key_we_know")).await,
        "invalid_api_key",
    );
}

#[sqlx::test]
async fn jwts_with_a_bad_signature_are_401(pool: PgPool) {
    let h = harness(pool).await;
    let forged = sluice::auth::sign_jwt(
        &json!({"sub": "mallory", "tenant": "a", "exp": sluice::auth::unix_now() + 600}),
        "not-the-configured-secret-not-the-configured",
    );
    assert_401(
        list_with(&h, Some(&format!("Bearer {forged}"))).await,
        "invalid_token_signature",
    );
}

#[sqlx::test]
async fn expired_jwts_are_401(pool: PgPool) {
    let h = harness(pool).await;
    let old = jwt(json!({"sub": "svc", "tenant": "a", "exp": sluice::auth::unix_now() - 60}));
    assert_401(
        list_with(&h, Some(&format!("Bearer {old}"))).await,
        "token_expired",
    );
}

#[sqlx::test]
async fn a_tier_outside_the_principal_is_403(pool: PgPool) {
    let h = harness(pool).await;
    let (status, v) = h
        .as_principal(KEY_DEFAULT_ONLY)
        .submit(json!({"sql": "SELECT 1", "tier": "vip"}))
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str().unwrap()),
        (StatusCode::FORBIDDEN, "tier_forbidden"),
        "{v}"
    );
}

#[sqlx::test]
async fn a_valid_jwt_acts_for_its_claims_and_open_routes_need_nothing(pool: PgPool) {
    let h = harness(pool).await;
    let token = jwt(json!({
        "sub": "etl", "tenant": "a", "tier": "vip", "tiers": ["vip"],
        "exp": sluice::auth::unix_now() + 600,
    }));
    let api = h.as_principal(&token);
    let id = api.submit_ok(json!({"sql": "SELECT 1"})).await;
    let e = api.get(&id).await;
    assert_eq!(
        (&e["tenant"], &e["created_by"], &e["tier"]),
        (&json!("a"), &json!("etl"), &json!("vip")),
        "the tenant, name and default tier come from the claims: {e}"
    );
    // The key of tenant a sees it too; the JWT may not use the default tier.
    assert_eq!(h.as_principal(KEY_A).get(&id).await["id"], json!(id));
    let (status, _) = api
        .submit(json!({"sql": "SELECT 1", "tier": "default"}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let open = reqwest::Client::new();
    for path in ["/health", "/ready", "/openapi.json", "/docs/", "/metrics"] {
        let r = open.get(h.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path} is open");
    }
}

/// Runs the `sluice` binary and returns what it printed; panics on failure.
fn sluice_cli(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .env_remove("SLUICE_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success(), "sluice {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[sqlx::test]
async fn keygen_and_token_print_credentials_the_api_accepts(pool: PgPool) {
    // keygen: the key on its own line, then the entry to paste (which holds no key).
    let printed = sluice_cli(&[
        "keygen", "--name", "ci", "--tenant", "ops", "--tiers", "vip",
    ]);
    let key = printed
        .lines()
        .find(|l| l.starts_with("sk_"))
        .unwrap()
        .to_string();
    let entry = &printed[printed.find("[[auth.api_keys]]").unwrap()..];
    assert!(
        !entry.contains(&key),
        "the entry stores only a hash: {entry}"
    );
    let h = Harness::with(
        pool.clone(),
        Setup {
            tiers: vec!["default", "vip"],
            workers: vec!["vip"],
            auth_extra: entry.to_string(),
            ..Default::default()
        },
    )
    .await;
    let (status, tiers) = h.as_principal(&key).get_json("/v1/tiers").await;
    assert_eq!(status, StatusCode::OK, "{tiers}");
    let names: Vec<&str> = tiers["tiers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["vip"], "{tiers}");

    // token: signed with the configuration's secret, claims from the flags.
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        config_toml(&pool, &Setup::default(), h.results_dir.path()),
    )
    .unwrap();
    let token = sluice_cli(&[
        "--config",
        config.path().to_str().unwrap(),
        "token",
        "--name",
        "etl",
        "--tenant",
        "ops",
        "--tiers",
        "vip",
        "--tier",
        "vip",
    ]);
    let api = h.as_principal(token.trim());
    let id = api.submit_ok(json!({"sql": "SELECT 1"})).await;
    let e = wait_status(&api, &id, "SUCCEEDED").await;
    assert_eq!(
        (&e["tenant"], &e["created_by"], &e["tier"]),
        (&json!("ops"), &json!("etl"), &json!("vip")),
        "{e}"
    );
    // The key's principal shares the tenant, so it sees the token's execution.
    assert_eq!(h.as_principal(&key).get(&id).await["id"], json!(id));
}

#[sqlx::test]
async fn tenants_never_see_or_share_each_others_executions(pool: PgPool) {
    let h = harness(pool).await;
    let (a, b, admin) = (
        h.as_principal(KEY_A),
        h.as_principal(KEY_B),
        h.as_principal(KEY_ADMIN),
    );
    let sql = json!({"sql": "SELECT 42 AS answer", "query_id": "shared-name"});
    let id_a = a.submit_ok(sql.clone()).await;
    wait_status(&a, &id_a, "SUCCEEDED").await;

    // B: 404 everywhere, like an id that does not exist.
    for (what, (status, v)) in [
        ("get", b.get_json(&format!("/v1/executions/{id_a}")).await),
        ("cancel", b.cancel(&id_a).await),
        (
            "result-url",
            b.post(
                &format!("/v1/executions/{id_a}/result-url"),
                "application/json",
                "{}",
            )
            .await,
        ),
    ] {
        assert_eq!(status, StatusCode::NOT_FOUND, "{what}: {v}");
        assert_eq!(v["error"]["code"], "not_found", "{what}: {v}");
    }
    let (status, _, _) = b.download(&id_a).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "download");
    let (_, page) = b.get_json("/v1/executions").await;
    assert_eq!(page["executions"], json!([]), "B's list is empty");
    let (status, page) = b.get_json("/v1/executions?tenant=a").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["executions"], json!([]), "naming A does not help B");

    // The same SQL and query_id from B is B's own execution, never A's.
    let (status, v) = b.submit(sql.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["outcome"], "created");
    let id_b = v["execution"]["id"].as_str().unwrap().to_string();
    assert_ne!(id_a, id_b);
    assert_eq!(v["execution"]["tenant"], "b");

    // An admin sees both tenants.
    assert_eq!(admin.get(&id_a).await["tenant"], "a");
    let tenants_in = |page: Value| -> Vec<String> {
        page["executions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["tenant"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, page) = admin.get_json("/v1/executions").await;
    let mut tenants = tenants_in(page);
    tenants.sort();
    assert_eq!(tenants, ["a", "b"]);
    // ... or one of them.
    let (_, page) = admin.get_json("/v1/executions?tenant=b").await;
    assert_eq!(tenants_in(page), ["b"]);
}

async fn wait_status(api: &Api, id: &str, status: &str) -> Value {
    let start = std::time::Instant::now();
    loop {
        let e = api.get(id).await;
        if e["status"] == status {
            return e;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "execution {id} never became {status}: {e}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn result_url(api: &Api, id: &str, body: Value) -> (StatusCode, Value) {
    api.post(
        &format!("/v1/executions/{id}/result-url"),
        "application/json",
        body.to_string(),
    )
    .await
}

#[sqlx::test]
async fn result_links_work_without_a_token_until_they_expire(pool: PgPool) {
    let h = harness(pool).await;
    let a = h.as_principal(KEY_A);
    let id = a
        .submit_ok(json!({"sql": "SELECT number FROM system.numbers LIMIT 1000"}))
        .await;
    wait_status(&a, &id, "SUCCEEDED").await;
    let (_, _, expected) = a.download(&id).await;

    let (status, link) = result_url(&a, &id, json!({"expires_in": 600})).await;
    assert_eq!(status, StatusCode::OK, "{link}");
    let url = link["url"].as_str().unwrap().to_string();
    let anonymous = reqwest::Client::new();
    let r = anonymous.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().to_vec(), expected);

    // Tampering with the signature or the expiry is a 403.
    let sig_at = url.find("signature=").unwrap() + "signature=".len();
    let mut tampered = url.clone();
    let flipped = if &url[sig_at..sig_at + 1] == "A" {
        "B"
    } else {
        "A"
    };
    tampered.replace_range(sig_at..sig_at + 1, flipped);
    let stretched = url.replace("expires=", "expires=9");
    for bad in [tampered, stretched] {
        let r = anonymous.get(&bad).send().await.unwrap();
        let (status, v) = json_answer(r).await;
        assert_eq!(
            (status, v["error"]["code"].as_str().unwrap()),
            (StatusCode::FORBIDDEN, "invalid_link"),
            "{bad}"
        );
    }
    // Another execution's id with this signature: 403, not 404.
    let other = url.replace(&id, &uuid::Uuid::now_v7().to_string());
    let r = anonymous.get(&other).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // Longer than the maximum: refused.
    let (status, v) = result_url(&a, &id, json!({"expires_in": 10_000_000})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");

    // A one-second link stops working.
    let (_, short) = result_url(&a, &id, json!({"expires_in": 1})).await;
    let short = short["url"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(10), "the link expires", || async {
        let r = anonymous.get(&short).send().await.unwrap();
        if r.status() != StatusCode::FORBIDDEN {
            return false;
        }
        let (_, v) = json_answer(r).await;
        v["error"]["code"] == "link_expired"
    })
    .await;
}

/// A string that breaks naive quoting in every way we know.
const HOSTILE: &str = "it's \"quoted\" \\ back\\slash\ttab\nnewline '; DROP TABLE users; --";

/// Parameters travel as `param_<name>` on servers that have them and as typed literals
/// Sluice writes itself on 18.x; either way the values arrive exactly as sent.
#[sqlx::test]
async fn parameters_bind_typed_values_on_every_server(pool: PgPool) {
    let h = harness(pool.clone()).await;
    let id = h
        .submit_ok(json!({
            "sql": "SELECT {s:String} AS s, {n:UInt32} AS n, {d:Date} AS d, \
                    {a:Array(String)} AS a, {f:Float64} AS f",
            "parameters": {
                "s": HOSTILE, "n": 42, "d": "2024-02-29", "a": "['x', 'it\\'s']", "f": 1.5,
            },
        }))
        .await;
    let e = h.wait_terminal(&id).await;
    assert_eq!(e["status"], "SUCCEEDED", "{e}");
    let (_, _, body) = h.download(&id).await;
    let row: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(row["s"], HOSTILE, "the hostile string arrives intact");
    assert_eq!(row["n"], 42);
    assert_eq!(row["d"], "2024-02-29");
    assert_eq!(row["a"], json!(["x", "it's"]));
    assert_eq!(row["f"], 1.5);

    // On 18.x an array value that is not made of literals is refused, not inlined.
    if server_version().await.0 < 19 {
        let id = h
            .submit_ok(json!({
                "sql": "SELECT {a:Array(String)} AS a",
                "parameters": { "a": "[currentUser()]" },
            }))
            .await;
        let e = h.wait_terminal(&id).await;
        assert_eq!(e["status"], "FAILED", "{e}");
        assert_eq!(e["error"]["code"], "UNSUPPORTED_BY_SERVER", "{e}");
    }
    let stored: (Option<Value>,) =
        sqlx::query_as("SELECT parameters FROM executions WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        stored.0, None,
        "parameters are erased when the execution ends"
    );
}

#[sqlx::test]
async fn parameters_never_reach_responses_logs_or_the_finished_row(pool: PgPool) {
    // A real `sluice standalone` process, so every log line it writes is captured.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let h = Harness::without_workers(pool.clone()).await;
    let setup = Setup {
        extra: format!("[api]\nlisten = \"127.0.0.1:{port}\"\n"),
        ..Default::default()
    };
    let config = write_config(&h, &pool, &setup);
    let log_path = h.results_dir.path().join("sluice.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--config")
        .arg(&config)
        .arg("standalone")
        .env("RUST_LOG", "debug")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let _process = Process(child);
    let api = Api {
        base: format!("http://127.0.0.1:{port}"),
        http: client_with(TEST_KEY),
    };
    eventually(Duration::from_secs(30), "standalone serves", || async {
        api.http.get(api.url("/health")).send().await.is_ok()
    })
    .await;

    let secret = "s3cr3t-Value-7f1e9a";
    let mut texts = Vec::new();
    // One that runs, and one whose value ClickHouse quotes back in its error.
    for (sql, parameters) in [
        (
            "SELECT length({token:String}) AS n",
            json!({"token": secret}),
        ),
        ("SELECT {n:UInt8} AS n", json!({"n": secret})),
    ] {
        let r = api
            .http
            .post(api.url("/v1/executions"))
            .json(&json!({"sql": sql, "parameters": parameters}))
            .send()
            .await
            .unwrap();
        let text = r.text().await.unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        let id = v["execution"]["id"].as_str().unwrap().to_string();
        texts.push(text);
        let start = std::time::Instant::now();
        loop {
            let text = api
                .http
                .get(api.url(&format!("/v1/executions/{id}")))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let e: Value = serde_json::from_str(&text).unwrap();
            let done = ["SUCCEEDED", "FAILED"].contains(&e["status"].as_str().unwrap());
            texts.push(text);
            if done {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "{e}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    texts.push(
        api.http
            .get(api.url("/v1/executions"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    for text in &texts {
        assert!(
            !text.contains(secret),
            "a response carries the secret: {text}"
        );
    }
    let rows: Vec<(Option<Value>, Option<Value>)> =
        sqlx::query_as("SELECT parameters, error FROM executions")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 2);
    for (parameters, error) in rows {
        assert_eq!(parameters, None, "erased from the finished row");
        assert!(!format!("{error:?}").contains(secret), "{error:?}");
    }
    let logs = std::fs::read_to_string(&log_path).unwrap();
    assert!(logs.contains("submitted"), "the log was captured: {logs}");
    assert!(
        !logs.contains(secret),
        "the log carries the secret:\n{}",
        logs.lines()
            .filter(|l| l.contains(secret))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Dedup and supersede are per tenant, checked while A's execution is in flight (a
/// finished one never collapses, so only this can fail): B's identical submit is B's
/// own execution, and B's different SQL under A's query_id does not supersede A's.
#[sqlx::test(migrations = "./migrations")]
async fn dedup_and_supersede_never_cross_tenants(pool: PgPool) {
    let h = Harness::with(
        pool,
        Setup {
            workers: vec![],
            tiers: vec!["default", "vip"],
            auth_extra: principals(),
            ..Default::default()
        },
    )
    .await;
    let (a, b) = (h.as_principal(KEY_A), h.as_principal(KEY_B));
    let sql = json!({"sql": "SELECT 42 AS answer", "query_id": "shared-name"});
    let id_a = a.submit_ok(sql.clone()).await;
    // A's own second submit collapses: the dedup is there.
    let (status, v) = a.submit(sql.clone()).await;
    assert_eq!(
        (status, &v["outcome"]),
        (StatusCode::OK, &json!("collapsed")),
        "{v}"
    );
    // B's does not join A's.
    let (status, v) = b.submit(sql.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["outcome"], "created", "{v}");
    assert_ne!(v["execution"]["id"], id_a.as_str());
    // B's other SQL under the same query_id supersedes B's own, never A's.
    let (status, v) = b
        .submit(json!({"sql": "SELECT 43 AS answer", "query_id": "shared-name"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["outcome"], "superseded", "{v}");
    assert_ne!(v["superseded"], id_a.as_str());
    let e = a.get(&id_a).await;
    assert_eq!(e["status"], "PENDING", "A's execution is untouched: {e}");
    assert!(e["superseded_by"].is_null(), "{e}");
    assert_eq!(
        e["collapsed_count"], 1,
        "only A's own submit joined it: {e}"
    );
}

#[sqlx::test]
async fn tuple_and_map_parameters_arrive_as_clickhouse_reads_them(pool: PgPool) {
    let h = harness(pool).await;
    let sql = "SELECT {t:Tuple(UInt8, String)} AS t, {m:Map(String, UInt8)} AS m, \
               {a:Array(Tuple(UInt8, String))} AS a";
    let params = [
        ("t", "(1, 'it\\'s')"),
        ("m", "{'k': 7, 'j': 8}"),
        ("a", "[(1, 'a'), (2, 'b')]"),
    ];
    let id = h
        .submit_ok(json!({
            "sql": sql,
            "parameters": params.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        }))
        .await;
    let e = h.wait_terminal(&id).await;
    if server_version().await.0 < 19 {
        // 18.x has no query parameters, and Sluice binds only literals it can check.
        assert_eq!(e["status"], "FAILED", "{e}");
        assert_eq!(e["error"]["code"], "UNSUPPORTED_BY_SERVER", "{e}");
        return;
    }
    assert_eq!(e["status"], "SUCCEEDED", "{e}");
    let (_, _, body) = h.download(&id).await;
    let direct: Vec<(String, &str)> = params
        .iter()
        .map(|(k, v)| (format!("param_{k}"), *v))
        .collect();
    let direct: Vec<(&str, &str)> = direct.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(
        String::from_utf8_lossy(&body),
        String::from_utf8_lossy(&clickhouse_direct(sql, "JSONEachRow", &direct).await),
        "the same row as ClickHouse's own answer"
    );
}

#[sqlx::test]
async fn parameters_are_part_of_the_dedup_key(pool: PgPool) {
    let h = Harness::without_workers(pool).await;
    let submit =
        |n: u32| h.submit(json!({"sql": "SELECT {n:UInt32} AS n", "parameters": {"n": n}}));
    let (status, first) = submit(1).await;
    assert_eq!(status, StatusCode::CREATED);
    // The same SQL with another value is another query: never collapsed, never superseding.
    let (status, other) = submit(2).await;
    assert_eq!(status, StatusCode::CREATED, "{other}");
    assert_eq!(other["outcome"], "created", "{other}");
    assert_ne!(
        other["execution"]["query_id"],
        first["execution"]["query_id"]
    );
    // The same value again collapses into the first.
    let (status, again) = submit(1).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["outcome"], "collapsed");
    assert_eq!(again["execution"]["id"], first["execution"]["id"]);
}
