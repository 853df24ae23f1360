//! Health, readiness and metrics.

use lakegate_testkit::gateway::{Harness, reading};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_readiness_and_metrics() {
    let mut gateway = Harness::start().await;
    assert_eq!(gateway.get("/healthz").await.status(), 200);

    let ready = gateway.get("/readyz").await;
    assert_eq!(ready.status(), 200);
    let ready: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(ready["warehouse"], "ok");
    assert_eq!(ready["devices"], 4);

    assert_eq!(
        gateway
            .post_json(
                &gateway.keys.sensor,
                &serde_json::json!([reading("m-1", 1.0), {"ts": "x"}])
            )
            .await
            .0,
        200
    );
    let response = gateway.get("/metrics").await;
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let metrics = response.text().await.unwrap();
    for expected in [
        "lakegate_http_requests_total{route=\"/ingest\",status=\"200\"} 1",
        "lakegate_readings_accepted_total 1",
        "lakegate_readings_rejected_total{reason=\"",
        "lakegate_batches_total{outcome=\"committed\"}",
        "lakegate_batch_rows_count",
        "lakegate_statement_seconds_count",
        "lakegate_queue_rows 0",
        "lakegate_queue_bytes 0",
        "lakegate_token_fetches_total{outcome=\"succeeded\"}",
        "lakegate_registry_devices 4",
    ] {
        assert!(
            metrics.contains(expected),
            "{expected} missing from\n{metrics}"
        );
    }

    let unknown = gateway.get("/nope").await;
    assert_eq!(unknown.status(), 404);
    let metrics = gateway.get("/metrics").await.text().await.unwrap();
    let counted = "lakegate_http_requests_total{route=\"unmatched\",status=\"404\"} 1";
    assert!(metrics.contains(counted), "{metrics}");
    gateway.stop().await;
}
