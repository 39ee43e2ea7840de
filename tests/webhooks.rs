//! Completion webhooks: a receiver in the test that fails the first attempts; deliveries
//! live in Postgres (made when the execution ends, sent by a bookkeeper started later),
//! signed, retried with backoff, each attempt visible on the execution.
mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode as AxumStatus};
use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sluice::bookkeeper::Bookkeeper;
use sqlx::PgPool;
use tokio::net::TcpListener;

const SECRET: &str = "whsec-test";

/// What the receiver got: headers and body of each request.
type Received = Arc<Mutex<Vec<(HeaderMap, Vec<u8>)>>>;

/// A receiver on 127.0.0.1 that answers 500 to its first `failures` requests, then 200.
async fn receiver(failures: usize) -> (String, Received) {
    let got: Received = Arc::default();
    let seen = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let seen = seen.clone();
            async move {
                let mut all = seen.lock().unwrap();
                all.push((headers, body.to_vec()));
                if all.len() <= failures {
                    AxumStatus::INTERNAL_SERVER_ERROR
                } else {
                    AxumStatus::OK
                }
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, got)
}

fn setup(allowed: &str) -> Setup {
    Setup {
        extra: format!(
            "[webhooks]\nallowed = [\"{allowed}\"]\nsecret = \"{SECRET}\"\nbackoff = \"100ms\"\n\
             [bookkeeper]\ninterval = \"200ms\"\n"
        ),
        ..Default::default()
    }
}

#[sqlx::test(migrations = "./migrations")]
async fn a_webhook_is_retried_until_delivered_and_signed(pool: PgPool) {
    let (base, got) = receiver(2).await;
    let h = Harness::with(pool, setup(&base)).await;
    let url = format!("{base}/hook");
    let id = h
        .submit_ok(json!({ "sql": "SELECT 42 AS answer", "callback_url": url }))
        .await;
    assert_eq!(h.wait_terminal(&id).await["status"], "SUCCEEDED");
    // No bookkeeper yet: the delivery waits in Postgres.
    let e = h.get(&id).await;
    assert_eq!(e["callback_url"], url.as_str());
    assert_eq!(e["webhook"]["attempts"], json!([]), "{e}");
    assert!(got.lock().unwrap().is_empty());

    let bookkeeper = Bookkeeper::new(&h.config, h.store.clone(), h.results.clone()).unwrap();
    tokio::spawn(bookkeeper.run(h.shutdown.child_token()));
    eventually(
        Duration::from_secs(30),
        "three attempts reach the receiver",
        || async { got.lock().unwrap().len() >= 3 },
    )
    .await;
    let e = h.get(&id).await;
    let webhook = &e["webhook"];
    assert!(webhook["delivered_at"].is_string(), "{e}");
    let statuses: Vec<Value> = webhook["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].clone())
        .collect();
    assert_eq!(statuses, [json!(500), json!(500), json!(200)], "{e}");

    for (headers, body) in got.lock().unwrap().iter() {
        let header = |n: &str| headers[n].to_str().unwrap().to_string();
        assert_eq!(header("x-sluice-delivery"), id);
        let timestamp = header("x-sluice-timestamp");
        let mut signed = timestamp.into_bytes();
        signed.push(b'.');
        signed.extend_from_slice(body);
        assert_eq!(
            header("x-sluice-signature"),
            format!(
                "sha256={}",
                sluice::auth::hmac_hex(SECRET.as_bytes(), &signed)
            )
        );
        let sent: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(sent["id"], id.as_str());
        assert_eq!(sent["status"], "SUCCEEDED");
        assert_eq!(sent["result"]["rows"], 1);
    }
    // Delivered: never sent again.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(got.lock().unwrap().len(), 3);
}

/// A PENDING execution canceled by its client ends too: its webhook goes out.
#[sqlx::test(migrations = "./migrations")]
async fn a_canceled_execution_calls_back(pool: PgPool) {
    let (base, got) = receiver(0).await;
    let mut s = setup(&base);
    s.workers = vec![];
    let h = Harness::with(pool, s).await;
    let id = h
        .submit_ok(json!({ "sql": "SELECT 1", "callback_url": format!("{base}/hook") }))
        .await;
    h.cancel(&id).await;
    let bookkeeper = Bookkeeper::new(&h.config, h.store.clone(), h.results.clone()).unwrap();
    assert_eq!(bookkeeper.webhook_pass().await.unwrap(), 1);
    let got = got.lock().unwrap();
    let sent: Value = serde_json::from_slice(&got[0].1).unwrap();
    assert_eq!(sent["status"], "CANCELED");
}

/// Only URLs inside `webhooks.allowed` are taken: another port, host or scheme, a user
/// in the URL, or no allow-list at all is a 400.
#[sqlx::test(migrations = "./migrations")]
async fn callback_urls_outside_the_allow_list_are_refused(pool: PgPool) {
    let h = Harness::with(pool.clone(), setup("http://127.0.0.1:9/hooks")).await;
    for url in [
        "http://127.0.0.1:10/hooks/x",
        "http://localhost:9/hooks/x",
        "https://127.0.0.1:9/hooks/x",
        "http://127.0.0.1:9/other",
        "http://user@127.0.0.1:9/hooks/x",
        "not a url",
    ] {
        let (status, v) = h
            .submit(json!({ "sql": "SELECT 1", "callback_url": url }))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {v}");
        assert_eq!(v["error"]["code"], "callback_not_allowed", "{url}: {v}");
    }
    let ok = h
        .submit(json!({ "sql": "SELECT 1", "callback_url": "http://127.0.0.1:9/hooks/x" }))
        .await;
    assert_eq!(ok.0, StatusCode::CREATED, "{}", ok.1);
    drop(h);
    let h = Harness::with(pool, Setup::default()).await;
    let (status, v) = h
        .submit(json!({ "sql": "SELECT 2", "callback_url": "http://127.0.0.1:9/hooks/x" }))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("webhooks.allowed is empty")
    );
}
