//! Wire-format tests for the Statement Execution API and the SQL engine behind it.

mod common;

use std::time::Duration;

use common::Workspace;
use lakegate_emulator::{EmulatorConfig, Faults};
use lakegate_testkit::emulator_config;
use serde_json::{Value, json};

const CREATE: &str = "CREATE TABLE IF NOT EXISTS main.iot.readings (\
    device_id STRING NOT NULL COMMENT 'the device', ts TIMESTAMP NOT NULL, value DOUBLE, \
    reading_id BIGINT, ok BOOLEAN, day DATE, price DECIMAL(10,2)) \
    USING DELTA CLUSTER BY (device_id, ts) COMMENT 'readings' \
    TBLPROPERTIES ('delta.enableChangeDataFeed' = 'true', 'delta.appendOnly' = 'false')";

async fn with_table(config: EmulatorConfig) -> Workspace {
    let ws = Workspace::start(config).await;
    ws.sql("CREATE SCHEMA IF NOT EXISTS main.iot").await;
    ws.sql(CREATE).await;
    ws
}

fn param(name: &str, value: Option<&str>, type_name: Option<&str>) -> Value {
    let mut p = json!({ "name": name });
    if let Some(value) = value {
        p["value"] = value.into();
    }
    if let Some(type_name) = type_name {
        p["type"] = type_name.into();
    }
    p
}

#[tokio::test]
async fn create_insert_select_with_databricks_clauses_and_parameters() {
    let ws = with_table(emulator_config()).await;
    let (status, body) = ws
        .execute(json!({
            "statement": "INSERT INTO main.iot.readings VALUES (:device, :ts, :value, :id, :ok, :day, :price)",
            "parameters": [
                param("device", Some("sensor-1"), None),
                param("ts", Some("2026-11-29T12:34:56.789Z"), Some("TIMESTAMP")),
                param("value", Some("21.5"), Some("DOUBLE")),
                param("id", Some("42"), Some("BIGINT")),
                param("ok", Some("true"), Some("BOOLEAN")),
                param("day", Some("2026-11-29"), Some("DATE")),
                param("price", None, Some("DECIMAL(10,2)")),
            ],
        }))
        .await;
    assert_eq!(
        (status, body["status"]["state"].as_str()),
        (200, Some("SUCCEEDED")),
        "{body}"
    );
    assert_eq!(body["result"]["data_array"], json!([["1", "1"]]));
    assert_eq!(
        body["manifest"]["schema"]["columns"][0]["name"],
        "num_affected_rows"
    );

    let body = ws
        .sql("SELECT device_id, ts, value, reading_id, ok, day, price, date_trunc('HOUR', ts) AS hour FROM iot.readings")
        .await;
    assert_eq!(
        body["result"]["data_array"],
        json!([[
            "sensor-1",
            "2026-11-29T12:34:56.789Z",
            "21.5",
            "42",
            "true",
            "2026-11-29",
            null,
            "2026-11-29T12:00:00.000Z"
        ]])
    );
    let types: Vec<(&str, &str)> = body["manifest"]["schema"]["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["type_name"].as_str().unwrap(),
                c["type_text"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        types,
        [
            ("STRING", "STRING"),
            ("TIMESTAMP", "TIMESTAMP"),
            ("DOUBLE", "DOUBLE"),
            ("LONG", "BIGINT"),
            ("BOOLEAN", "BOOLEAN"),
            ("DATE", "DATE"),
            ("DECIMAL", "DECIMAL(10,2)"),
            ("TIMESTAMP", "TIMESTAMP")
        ]
    );
    assert_eq!(body["manifest"]["total_row_count"], 1);
    assert_eq!(body["manifest"]["truncated"], false);

    // The request's catalog and schema set the defaults; parameters bind in WHERE too.
    let (_, body) = ws
        .execute(json!({
            "statement": "SELECT count(*) AS n FROM readings WHERE device_id = :d AND ts < current_timestamp()",
            "catalog": "main", "schema": "iot",
            "parameters": [param("d", Some("sensor-1"), None)],
        }))
        .await;
    assert_eq!(body["result"]["data_array"], json!([["1"]]), "{body}");
}

/// A long STRING value (a batch as one JSON document) is bound apart from the statement's
/// text; it must read the same as a short one wherever a value may stand.
#[tokio::test]
async fn long_string_parameters_bind_like_short_ones() {
    let ws = with_table(emulator_config()).await;
    let long = "x".repeat(200_000);
    let json_doc = serde_json::to_string(
        &(0..5_000)
            .map(|i| json!({ "device": format!("d{}", i % 7), "v": i }))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let (status, body) = ws
        .execute(json!({
            "statement": "SELECT length(:long) AS n, :long = :copy AS same, substr(:long, 1, 3) AS head, \
                          (SELECT count(*) FROM (SELECT explode(from_json(:doc, 'ARRAY<STRUCT<device: STRING, v: INT>>')) AS r) \
                           AS rows WHERE r.device = :device) AS matching",
            "parameters": [
                param("long", Some(&long), None),
                param("copy", Some(&long), Some("STRING")),
                param("doc", Some(&json_doc), None),
                param("device", Some("d3"), None),
            ],
        }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"]["state"], "SUCCEEDED", "{body}");
    assert_eq!(
        body["result"]["data_array"],
        json!([["200000", "true", "xxx", "714"]])
    );
}

#[tokio::test]
async fn failed_statements_are_http_200_with_databricks_errors() {
    let ws = with_table(emulator_config()).await;
    let cases = [
        (
            json!({"statement": "SELECT * FROM main.iot.nope"}),
            "[TABLE_OR_VIEW_NOT_FOUND]",
            "42P01",
        ),
        (
            json!({"statement": "SELEC 1"}),
            "[PARSE_SYNTAX_ERROR]",
            "42601",
        ),
        (
            json!({"statement": "SELECT :missing"}),
            "[UNBOUND_SQL_PARAMETER]",
            "42P02",
        ),
        (
            json!({"statement": "SELECT :n", "parameters": [param("n", Some("abc"), Some("INT"))]}),
            "[CAST_INVALID_INPUT]",
            "22018",
        ),
        (
            json!({"statement": "INSERT INTO main.iot.readings (device_id, ts) VALUES (NULL, current_timestamp())"}),
            "[DELTA_NOT_NULL_CONSTRAINT_VIOLATED]",
            "23502",
        ),
        (
            json!({"statement": CREATE.replace(" IF NOT EXISTS", "")}),
            "[TABLE_OR_VIEW_ALREADY_EXISTS]",
            "42P07",
        ),
    ];
    for (request, class, sql_state) in cases {
        let (status, body) = ws.execute(request.clone()).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"]["state"], "FAILED", "{request}: {body}");
        assert_eq!(
            body["status"]["error"]["error_code"], "BAD_REQUEST",
            "{body}"
        );
        let message = body["status"]["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(class), "{message}");
        assert_eq!(body["status"]["sql_state"], sql_state);
    }
    let (_, body) = ws.execute(json!({"statement": "INSERT INTO main.iot.readings (ts, device_id) VALUES (current_timestamp(), NULL)"})).await;
    let message = body["status"]["error"]["message"].as_str().unwrap();
    assert!(message.contains("column: device_id."), "{message}");
    let body = ws.sql("SELECT count(*) FROM main.iot.readings").await;
    assert_eq!(
        body["result"]["data_array"],
        json!([["0"]]),
        "the NOT NULL violation wrote nothing"
    );
    let (_, body) = ws.execute(json!({"statement": "INSERT INTO main.iot.readings (device_id, ts) VALUES ('d', current_timestamp())"})).await;
    assert!(body["status"]["error"].is_null(), "{body}");
}

#[tokio::test]
async fn requests_refused_before_running() {
    let ws = Workspace::start(emulator_config()).await;
    let cases = [
        (
            json!({"statement": "SELECT 1", "wait_timeout": "3s"}),
            400,
            "INVALID_PARAMETER_VALUE",
        ),
        (
            json!({"statement": "SELECT 1", "wait_timeout": "51s"}),
            400,
            "INVALID_PARAMETER_VALUE",
        ),
        (
            json!({"statement": "SELECT 1", "format": "ARROW_STREAM"}),
            400,
            "INVALID_PARAMETER_VALUE",
        ),
        (
            json!({"statement": "SELECT 1", "format": "CSV", "disposition": "INLINE"}),
            400,
            "INVALID_PARAMETER_VALUE",
        ),
        (
            json!({"statement": "SELECT 1", "on_wait_timeout": "LATER"}),
            400,
            "INVALID_PARAMETER_VALUE",
        ),
        (
            json!({"wait_timeout": "5s"}),
            400,
            "INVALID_PARAMETER_VALUE",
        ),
    ];
    for (request, status, code) in cases {
        let (got, body) = ws.execute(request.clone()).await;
        assert_eq!(
            (got, body["error_code"].as_str()),
            (status, Some(code)),
            "{request}: {body}"
        );
    }
    let parameters: Vec<Value> = (0..256)
        .map(|i| param(&format!("p{i}"), Some("1"), None))
        .collect();
    let (status, _) = ws
        .execute(json!({"statement": "SELECT 1", "parameters": parameters}))
        .await;
    assert_eq!(status, 400);
    let (status, _) = ws
        .execute(json!({"statement": "x".repeat(16 * 1024 * 1024 + 1)}))
        .await;
    assert_eq!(status, 400);
    let (status, body) = ws
        .post(
            "/api/2.0/sql/statements",
            json!({"statement": "SELECT 1", "warehouse_id": "other"}),
        )
        .await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (404, Some("RESOURCE_DOES_NOT_EXIST"))
    );
    assert_eq!(ws.get("/api/2.0/sql/statements/unknown").await.0, 404);
    let response = ws
        .http
        .post(ws.url("/api/2.0/sql/statements"))
        .bearer_auth(&ws.token)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.json::<Value>().await.unwrap()["error_code"],
        "MALFORMED_REQUEST"
    );
}

#[tokio::test]
async fn state_machine_pending_then_succeeded_and_cancel() {
    let ws = Workspace::start(emulator_config()).await;
    let (_, body) = ws
        .execute(json!({"statement": "SELECT 1 AS one", "wait_timeout": "0s"}))
        .await;
    assert_eq!(body["status"]["state"], "PENDING");
    assert!(body.get("manifest").is_none());
    let done = ws
        .poll_until_done(body["statement_id"].as_str().unwrap())
        .await;
    assert_eq!(done["status"]["state"], "SUCCEEDED");
    assert_eq!(done["result"]["data_array"], json!([["1"]]));

    // Slow statements: past wait_timeout CONTINUE answers RUNNING and CANCEL cancels; an explicit
    // cancel stops a statement in its latency.
    ws.emulator.set_faults(Faults {
        statement_latency: Duration::from_secs(7),
        ..Faults::default()
    });
    let (continued, cancelled) = tokio::join!(
        ws.execute(json!({"statement": "SELECT 1", "wait_timeout": "5s"})),
        ws.execute(
            json!({"statement": "SELECT 1", "wait_timeout": "5s", "on_wait_timeout": "CANCEL"})
        ),
    );
    assert_eq!(continued.1["status"]["state"], "RUNNING");
    assert_eq!(cancelled.1["status"]["state"], "CANCELED");
    let (_, body) = ws
        .execute(json!({"statement": "SELECT 1", "wait_timeout": "0s"}))
        .await;
    let id = body["statement_id"].as_str().unwrap();
    assert_eq!(
        ws.post(&format!("/api/2.0/sql/statements/{id}/cancel"), json!({}))
            .await
            .0,
        200
    );
    assert_eq!(ws.poll_until_done(id).await["status"]["state"], "CANCELED");
    assert_eq!(ws.emulator.stats().cancels, 1);
}

#[tokio::test]
async fn inline_results_in_chunks_and_row_limit() {
    let ws = Workspace::start(EmulatorConfig {
        rows_per_chunk: 2,
        ..emulator_config()
    })
    .await;
    let body = ws
        .sql("SELECT value FROM (VALUES (1), (2), (3), (4), (5)) AS t(value) ORDER BY value")
        .await;
    assert_eq!(body["manifest"]["total_chunk_count"], 3);
    assert_eq!(
        body["manifest"]["chunks"][2],
        json!({"chunk_index": 2, "row_offset": 4, "row_count": 1, "byte_count": 7})
    );
    assert_eq!(body["result"]["data_array"], json!([["1"], ["2"]]));
    let id = body["statement_id"].as_str().unwrap();
    assert_eq!(
        body["result"]["next_chunk_internal_link"],
        format!("/api/2.0/sql/statements/{id}/result/chunks/1")
    );
    let (_, chunk) = ws
        .get(&format!("/api/2.0/sql/statements/{id}/result/chunks/2"))
        .await;
    assert_eq!(chunk["data_array"], json!([["5"]]));
    assert_eq!(chunk["row_offset"], 4);
    assert!(chunk.get("next_chunk_index").is_none());
    assert_eq!(
        ws.get(&format!("/api/2.0/sql/statements/{id}/result/chunks/3"))
            .await
            .0,
        400
    );

    let (_, body) = ws
        .execute(
            json!({"statement": "SELECT * FROM (VALUES (1), (2), (3)) AS t(v)", "row_limit": 2}),
        )
        .await;
    assert_eq!(body["manifest"]["total_row_count"], 2);
    assert_eq!(body["manifest"]["truncated"], true);
}

#[tokio::test]
async fn external_links_require_their_headers_refuse_auth_and_expire() {
    let ws = Workspace::start(EmulatorConfig {
        rows_per_chunk: 2,
        link_lifetime: Duration::from_millis(300),
        ..emulator_config()
    })
    .await;
    let (_, body) = ws
        .execute(json!({
            "statement": "SELECT v, 'x' AS s FROM (VALUES (1), (2), (3)) AS t(v) ORDER BY v",
            "disposition": "EXTERNAL_LINKS",
            "format": "CSV",
        }))
        .await;
    assert_eq!(body["manifest"]["format"], "CSV");
    let link = &body["result"]["external_links"][0];
    assert_eq!(
        (
            link["chunk_index"].as_u64(),
            link["next_chunk_index"].as_u64()
        ),
        (Some(0), Some(1))
    );
    assert!(link["expiration"].as_str().unwrap().ends_with('Z'));
    let url = link["external_link"].as_str().unwrap();
    let (name, value) = link["http_headers"]
        .as_object()
        .unwrap()
        .iter()
        .next()
        .unwrap();

    let with_auth = ws
        .http
        .get(url)
        .header(name, value.as_str().unwrap())
        .bearer_auth(&ws.token)
        .send()
        .await
        .unwrap();
    assert_eq!(with_auth.status(), 400);
    assert_eq!(ws.http.get(url).send().await.unwrap().status(), 403);
    let ok = ws
        .http
        .get(url)
        .header(name, value.as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.unwrap(), "1,x\n2,x\n");

    let id = body["statement_id"].as_str().unwrap();
    let (_, chunk) = ws
        .get(&format!("/api/2.0/sql/statements/{id}/result/chunks/1"))
        .await;
    let next = &chunk["external_links"][0];
    assert_eq!(next["row_offset"], 2);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let expired = ws
        .http
        .get(next["external_link"].as_str().unwrap())
        .header(name, next["http_headers"][name].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(expired.status(), 403);
    assert!(expired.text().await.unwrap().contains("expired"));
    assert_eq!(ws.emulator.stats().link_downloads, 1);
}

/// An emulator keeping its tables in `dir`.
fn persistent_in(dir: &std::path::Path) -> EmulatorConfig {
    EmulatorConfig {
        data_dir: Some(dir.to_owned()),
        ..emulator_config()
    }
}

/// Tables only grow: a write adds a segment of its own rows, the base is rewritten only every
/// so many writes (or for a new table), and a restart reads each row back once, ignoring a
/// segment a crash left behind after the base took it in.
#[tokio::test]
async fn persistence_appends_a_segment_per_write_and_compacts() {
    let dir = lakegate_testkit::temp_dir();
    let persistent = || persistent_in(dir.path());
    let schema_dir = dir.path().join("main").join("iot");
    let files = || {
        let mut names: Vec<String> = std::fs::read_dir(&schema_dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with("readings.arrow"))
            .collect();
        names.sort();
        names
    };
    let insert = |n: usize| {
        format!(
            "INSERT INTO main.iot.readings (device_id, ts) VALUES ('d{n}', TIMESTAMP '2026-11-29 10:00:00')"
        )
    };
    let count = async |ws: &Workspace| {
        ws.sql("SELECT count(*), count(DISTINCT device_id) FROM main.iot.readings")
            .await["result"]["data_array"]
            .clone()
    };

    let ws = with_table(persistent()).await;
    let base = schema_dir.join("readings.arrow");
    let empty_base = std::fs::read(&base).unwrap();
    for n in 0..10 {
        ws.sql(&insert(n)).await;
    }
    assert_eq!(
        files().len(),
        11,
        "the base and a segment per write: {:?}",
        files()
    );
    assert_eq!(
        std::fs::read(&base).unwrap(),
        empty_base,
        "the base is left as it was"
    );
    ws.emulator.shutdown().await;

    let ws = Workspace::start(persistent()).await;
    assert_eq!(count(&ws).await, json!([["10", "10"]]));
    // 54 more segments make 64; the next write rewrites the base, then 15 segments follow.
    for n in 10..80 {
        ws.sql(&insert(n)).await;
    }
    let after = files();
    assert_eq!(after.len(), 16, "the base and 15 segments: {after:?}");
    assert_ne!(
        std::fs::read(&base).unwrap(),
        empty_base,
        "the base was rewritten"
    );
    let kept = schema_dir.join(&after[1]);
    ws.emulator.shutdown().await;

    // As if a crash came between the base's rewrite and the deletion of what it holds.
    std::fs::copy(&kept, schema_dir.join("readings.arrow-0000000001")).unwrap();
    let ws = Workspace::start(persistent()).await;
    assert_eq!(count(&ws).await, json!([["80", "80"]]));

    // A table dropped and created again starts over, without the old one's segments.
    ws.sql("CREATE TABLE main.iot.again (x INT)").await;
    ws.sql("INSERT INTO main.iot.again VALUES (1), (2)").await;
    ws.sql("DROP TABLE main.iot.again").await;
    ws.sql("CREATE TABLE main.iot.again (x INT)").await;
    ws.sql("INSERT INTO main.iot.again VALUES (3)").await;
    ws.emulator.shutdown().await;
    let ws = Workspace::start(persistent()).await;
    let body = ws.sql("SELECT x FROM main.iot.again").await;
    assert_eq!(body["result"]["data_array"], json!([["3"]]));
    ws.emulator.shutdown().await;
    dir.close().unwrap();
}

#[tokio::test]
async fn persistence_round_trip() {
    let dir = lakegate_testkit::temp_dir();
    let persistent = || persistent_in(dir.path());
    let ws = with_table(persistent()).await;
    ws.sql("INSERT INTO main.iot.readings (device_id, ts, value) VALUES ('a', TIMESTAMP '2026-11-29 10:00:00', 1.5), ('b', TIMESTAMP '2026-11-29 11:00:00', NULL)").await;
    ws.sql("CREATE TABLE main.iot.gone (x INT)").await;
    ws.sql("DROP TABLE main.iot.gone").await;
    ws.emulator.shutdown().await;

    let ws = Workspace::start(persistent()).await;
    let body = ws
        .sql("SELECT device_id, ts, value FROM main.iot.readings ORDER BY device_id")
        .await;
    assert_eq!(
        body["result"]["data_array"],
        json!([
            ["a", "2026-11-29T10:00:00.000Z", "1.5"],
            ["b", "2026-11-29T11:00:00.000Z", null]
        ])
    );
    let (_, body) = ws
        .execute(json!({"statement": "SELECT * FROM main.iot.gone"}))
        .await;
    assert_eq!(body["status"]["state"], "FAILED");
    let (_, body) = ws.execute(json!({"statement": "INSERT INTO main.iot.readings (device_id, ts) VALUES (NULL, current_timestamp())"})).await;
    assert_eq!(
        body["status"]["state"], "FAILED",
        "NOT NULL survives the round trip"
    );
    ws.emulator.shutdown().await;
    dir.close().unwrap();
}
