//! `MERGE ... WHEN MATCHED THEN DELETE [WHEN NOT MATCHED THEN INSERT]`, as Databricks runs
//! it: the target rows a source row matches are deleted, the source rows that match no
//! target row are inserted, both judged on the table as it was, and the answer counts both.

mod common;

use common::Workspace;
use lakegate_testkit::emulator_config;
use serde_json::{Value, json};

fn rows(body: &Value) -> &Value {
    &body["result"]["data_array"]
}

#[tokio::test]
async fn a_merge_deletes_what_it_matches_and_inserts_what_it_does_not() {
    let ws = Workspace::start(emulator_config()).await;
    ws.sql("CREATE TABLE t (k STRING NOT NULL, v DOUBLE, at TIMESTAMP NOT NULL)")
        .await;
    ws.sql(
        "INSERT INTO t VALUES ('a', 1.0, TIMESTAMP'2026-01-01 00:00:00'), \
         ('a', 1.0, TIMESTAMP'2026-01-01 00:00:00'), ('b', 2.0, TIMESTAMP'2026-01-01 00:00:01'), \
         ('c', 3.0, TIMESTAMP'2026-01-01 00:00:02')",
    )
    .await;
    ws.sql("CREATE VIEW IF NOT EXISTS v AS SELECT k FROM t")
        .await;
    // Every copy of a duplicated key deleted, one inserted again (a NULL key matches nothing).
    let merge = "MERGE INTO t AS t USING (\
         SELECT CASE WHEN keyed THEN k END AS mk, k, v, at \
         FROM (SELECT k, v, at, explode(array(TRUE, FALSE)) AS keyed \
           FROM (SELECT k, v, at FROM t WHERE at >= :since \
             QUALIFY count(*) OVER (PARTITION BY k) > 1 \
             AND row_number() OVER (PARTITION BY k ORDER BY at) = 1) AS kept) AS copies) AS s \
       ON t.k = s.mk \
       WHEN MATCHED THEN DELETE \
       WHEN NOT MATCHED THEN INSERT (k, v, at) VALUES (s.k, s.v, s.at)";
    let since = json!([{"name": "since", "value": "2025-01-01T00:00:00Z", "type": "TIMESTAMP"}]);
    let (status, body) = ws
        .execute(json!({"statement": merge, "parameters": since}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"]["state"], "SUCCEEDED", "{body}");
    assert_eq!(rows(&body)[0], json!(["3", "0", "2", "1"]), "{body}");
    let body = ws.sql("SELECT k, v FROM t ORDER BY k").await;
    assert_eq!(
        rows(&body),
        &json!([["a", "1.0"], ["b", "2.0"], ["c", "3.0"]])
    );
    // A view over the table sees the change.
    let body = ws.sql("SELECT count(*) FROM v").await;
    assert_eq!(rows(&body), &json!([["3"]]));
    // Again: nothing left to do.
    let (_, body) = ws
        .execute(json!({"statement": merge, "parameters": since}))
        .await;
    assert_eq!(rows(&body)[0], json!(["0", "0", "0", "0"]), "{body}");

    // A conditional DELETE is not emulated, and says so rather than doing something else.
    let (_, body) = ws
        .execute(
            json!({"statement": "MERGE INTO t USING t AS s ON t.k = s.k \
            WHEN MATCHED AND s.v > 1 THEN DELETE"}),
        )
        .await;
    assert_eq!(body["status"]["state"], "FAILED", "{body}");
}

/// With a data directory, the rewritten table is saved whole: a restart reads it back as
/// the MERGE left it, not the deleted rows with the inserted ones appended.
#[tokio::test]
async fn a_rewritten_table_is_saved_whole() {
    let dir = lakegate_testkit::temp_dir();
    let persistent = || lakegate_emulator::EmulatorConfig {
        data_dir: Some(dir.path().to_owned()),
        ..emulator_config()
    };
    let ws = Workspace::start(persistent()).await;
    ws.sql("CREATE TABLE t (k STRING NOT NULL, v DOUBLE)").await;
    ws.sql("INSERT INTO t VALUES ('a', 1.0), ('a', 1.0), ('b', 2.0)")
        .await;
    let body = ws
        .sql(
            "MERGE INTO t USING (SELECT CASE WHEN keyed THEN k END AS mk, k, v \
             FROM (SELECT k, v, explode(array(TRUE, FALSE)) AS keyed FROM \
               (SELECT k, v FROM t QUALIFY count(*) OVER (PARTITION BY k) > 1 \
                AND row_number() OVER (PARTITION BY k ORDER BY v) = 1) AS kept) AS copies) AS s \
             ON t.k = s.mk WHEN MATCHED THEN DELETE \
             WHEN NOT MATCHED THEN INSERT (k, v) VALUES (s.k, s.v)",
        )
        .await;
    assert_eq!(rows(&body)[0], json!(["3", "0", "2", "1"]));
    ws.emulator.shutdown().await;

    let ws = Workspace::start(persistent()).await;
    let body = ws.sql("SELECT k, v FROM t ORDER BY k").await;
    assert_eq!(rows(&body), &json!([["a", "1.0"], ["b", "2.0"]]));
}
