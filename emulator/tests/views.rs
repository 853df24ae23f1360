//! Views, as Databricks SQL has them (CREATE VIEW reference): `CREATE VIEW [IF NOT EXISTS]`
//! and `CREATE OR REPLACE VIEW` over a query, read live, and `QUALIFY` to filter on a
//! window function (the `<table>_dedup` view of lakegate is built from both).

mod common;

use common::Workspace;
use lakegate_testkit::emulator_config;
use serde_json::{Value, json};

fn rows(body: &Value) -> &Value {
    &body["result"]["data_array"]
}

const DEDUP: &str = "SELECT k, v, at FROM main.default.t \
     QUALIFY row_number() OVER (PARTITION BY k ORDER BY at, v) = 1";

#[tokio::test]
async fn a_view_reads_its_query_live_and_qualify_filters_on_a_window() {
    let ws = Workspace::start(emulator_config()).await;
    ws.sql("CREATE TABLE main.default.t (k STRING NOT NULL, v DOUBLE, at BIGINT NOT NULL)")
        .await;
    ws.sql("INSERT INTO main.default.t VALUES ('a', 1.0, 2), ('a', 2.0, 1), ('b', 3.0, 5)")
        .await;
    let body = ws.sql(&format!("{DEDUP} ORDER BY k")).await;
    assert_eq!(rows(&body), &json!([["a", "2.0", "1"], ["b", "3.0", "5"]]));

    ws.sql(&format!(
        "CREATE VIEW IF NOT EXISTS main.default.t_dedup AS {DEDUP}"
    ))
    .await;
    // A second gateway starting creates nothing and fails nothing.
    ws.sql(&format!(
        "CREATE VIEW IF NOT EXISTS main.default.t_dedup AS {DEDUP}"
    ))
    .await;
    ws.sql("INSERT INTO main.default.t VALUES ('c', 4.0, 7), ('b', 0.5, 6)")
        .await;
    let body = ws
        .sql("SELECT k, v FROM main.default.t_dedup ORDER BY k")
        .await;
    assert_eq!(
        rows(&body),
        &json!([["a", "2.0"], ["b", "3.0"], ["c", "4.0"]])
    );

    // Without IF NOT EXISTS an existing name is refused, as Databricks refuses it.
    let (status, body) = ws
        .execute(json!({
            "statement": format!("CREATE VIEW main.default.t_dedup AS {DEDUP}")
        }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"]["state"], "FAILED", "{body}");
    assert_eq!(body["status"]["sql_state"], "42P07", "{body}");
    // OR REPLACE replaces it.
    ws.sql(
        "CREATE OR REPLACE VIEW main.default.t_dedup AS SELECT k FROM main.default.t WHERE k = 'c'",
    )
    .await;
    let body = ws.sql("SELECT k FROM main.default.t_dedup").await;
    assert_eq!(rows(&body), &json!([["c"]]));
}
