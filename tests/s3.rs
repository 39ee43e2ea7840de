//! The result store on S3: a real S3-compatible server (moto_server, started by
//! `make test`), which enforces S3's 5 MiB minimum part size.
mod common;

use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::json;
use sluice::execution::Format;
use sqlx::PgPool;

/// A fresh bucket for this test, so tests never see each other's objects.
async fn bucket() -> String {
    let name = format!("sluice-{}", uuid::Uuid::now_v7().simple());
    let r = reqwest::Client::new()
        .put(format!("{}/{name}", s3_endpoint()))
        .send()
        .await
        .expect("moto_server answers (make test starts it)");
    assert!(r.status().is_success(), "create bucket: {}", r.status());
    name
}

fn s3_results(bucket: &str) -> String {
    format!(
        "[results]\nurl = \"s3://{bucket}/sluice\"\n\
         options = {{ aws_endpoint = \"{}\", aws_region = \"us-east-1\", \
         aws_access_key_id = \"test\", aws_secret_access_key = \"test\", \
         aws_allow_http = \"true\" }}\n",
        s3_endpoint()
    )
}

/// A harness whose results go to a fresh bucket; returns the bucket's name too.
async fn s3_harness(pool: PgPool) -> (Harness, String) {
    let bucket = bucket().await;
    let setup = Setup {
        results: Some(s3_results(&bucket)),
        ..Default::default()
    };
    (Harness::with(pool, setup).await, bucket)
}

#[sqlx::test(migrations = "./migrations")]
async fn results_stream_into_s3_with_multipart_and_back(pool: PgPool) {
    let (h, _bucket) = s3_harness(pool).await;
    // ~30 MB: several 8 MiB parts.
    let sql = "SELECT number, toString(number) AS a, concat(a, a, a, a, a, a, a, a) AS b \
               FROM system.numbers LIMIT 300000";
    let id = h
        .submit_ok(json!({ "sql": sql, "format": "TabSeparated" }))
        .await;
    let e = h.wait_terminal(&id).await;
    assert_eq!(e["status"], "SUCCEEDED", "{e}");
    assert!(e["result"]["bytes"].as_u64().unwrap() > 3 * 8 * 1024 * 1024 / 2);
    let (status, _, body) = h.download(&id).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body == clickhouse_direct(sql, "TabSeparated", &[]).await,
        "bytes differ"
    );

    let keys = h.results.list_keys().await.unwrap();
    assert_eq!(
        keys,
        vec![h.results.key(id.parse().unwrap(), 1, Format::TabSeparated)]
    );

    let r = h
        .http
        .get(h.url(&format!("/v1/executions/{id}/result")))
        .header("Range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &body[100..200]);

    // Small results (one part, below the minimum) work too.
    let small = h.submit_ok(json!({ "sql": "SELECT 'tiny'" })).await;
    h.wait_for(&small, &["SUCCEEDED"], Duration::from_secs(60))
        .await;
    assert_eq!(h.download(&small).await.2, b"{\"'tiny'\":\"tiny\"}\n");
}

/// The multipart uploads open in `bucket` (S3's ListMultipartUploads; an error reply
/// fails the test rather than reading as "none").
async fn open_uploads(bucket: &str) -> usize {
    let r = reqwest::Client::new()
        .get(format!("{}/{bucket}?uploads", s3_endpoint()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "ListMultipartUploads");
    let text = r.text().await.unwrap();
    assert!(text.contains("<ListMultipartUploadsResult"), "{text}");
    text.matches("<Upload>").count()
}

/// About 5 MB/s of JSON rows (20 µs a row), so a test sees the upload open before the
/// query ends. `tail` is appended to the select list.
fn slow_stream(rows: u64, tail: &str) -> serde_json::Value {
    json!({
        "sql": format!(
            "SELECT number, toString(number) AS a, concat(a, a, a, a, a, a, a, a) AS b, \
             sleepEachRow(0.00002) AS s{tail} FROM system.numbers LIMIT {rows}"
        ),
        "settings": { "max_block_size": 1000 },
    })
}

/// Waits until the execution's multipart upload has started (its first part is out).
async fn wait_upload_open(h: &Harness, bucket: &str, id: &str) {
    eventually(
        Duration::from_secs(60),
        "a multipart upload opens",
        || async {
            let e = h.get(id).await;
            assert!(
                matches!(e["status"].as_str(), Some("PENDING" | "RUNNING")),
                "{e}"
            );
            open_uploads(bucket).await == 1
        },
    )
    .await;
}

#[sqlx::test(migrations = "./migrations")]
async fn a_failed_stream_leaves_nothing_in_s3(pool: PgPool) {
    let (h, bucket) = s3_harness(pool).await;
    // Fails after more than one part has been uploaded.
    let id = h
        .submit_ok(slow_stream(500_000, ", throwIf(number = 400000) AS t"))
        .await;
    wait_upload_open(&h, &bucket, &id).await;
    let e = h.wait_terminal(&id).await;
    assert_eq!(e["status"], "FAILED", "{e}");
    assert_eq!(e["error"]["clickhouse_code"], 395);
    assert!(h.results.list_keys().await.unwrap().is_empty());
    assert_eq!(open_uploads(&bucket).await, 0, "the upload was aborted");
}

#[sqlx::test(migrations = "./migrations")]
async fn a_canceled_s3_upload_is_aborted(pool: PgPool) {
    let (h, bucket) = s3_harness(pool).await;
    let id = h.submit_ok(slow_stream(10_000_000, "")).await;
    let query_id = h.wait_running_on_clickhouse(&id).await;
    wait_upload_open(&h, &bucket, &id).await;
    let (status, _) = h.cancel(&id).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let e = h.wait_terminal(&id).await;
    assert_eq!(e["status"], "CANCELED", "{e}");
    assert!(h.results.list_keys().await.unwrap().is_empty());
    assert_eq!(open_uploads(&bucket).await, 0, "the upload was aborted");
    assert_eq!(
        running_on_clickhouse(&query_id).await,
        0,
        "the query was killed"
    );
}

#[sqlx::test(migrations = "./migrations")]
async fn a_presigned_s3_link_downloads_the_same_bytes(pool: PgPool) {
    let (h, bucket) = s3_harness(pool).await;
    let id = h
        .submit_ok(json!({ "sql": "SELECT number FROM system.numbers LIMIT 5000" }))
        .await;
    let e = h.wait_terminal(&id).await;
    assert_eq!(e["status"], "SUCCEEDED", "{e}");
    let (_, _, expected) = h.download(&id).await;
    let (status, link) = h
        .post(
            &format!("/v1/executions/{id}/result-url"),
            "application/json",
            r#"{"expires_in": 300}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{link}");
    let url = link["url"].as_str().unwrap();
    assert!(
        url.starts_with(&s3_endpoint()) && url.contains(&bucket) && url.contains("X-Amz-Signature"),
        "an S3 presigned URL, not a Sluice one: {url}"
    );
    let r = reqwest::Client::new().get(url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().to_vec(), expected);
}
