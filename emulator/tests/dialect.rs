//! Where DataFusion's built-ins differ from Databricks SQL, the emulator answers as Databricks
//! does: division, generated column names, table-valued functions and generators, and Spark's
//! datetime patterns. Expected answers come from Databricks' SQL reference (the examples of
//! `/`, `div`, `range`, `explode`, `posexplode`, `date_format`, `to_date`, `try_to_timestamp`)
//! and from Spark's record of its generated column names (sql-expression-schema.md).

mod common;

use common::Workspace;
use lakegate_testkit::emulator_config;
use serde_json::{Value, json};

fn columns<'a>(body: &'a Value, key: &str) -> Vec<&'a str> {
    body["manifest"]["schema"]["columns"]
        .as_array()
        .unwrap_or_else(|| panic!("no columns: {body}"))
        .iter()
        .map(|c| c[key].as_str().unwrap())
        .collect()
}

fn names(body: &Value) -> Vec<&str> {
    columns(body, "name")
}

fn types(body: &Value) -> Vec<&str> {
    columns(body, "type_text")
}

fn rows(body: &Value) -> &Value {
    &body["result"]["data_array"]
}

/// Runs a statement that must fail; returns its message and SQLSTATE.
async fn failure(ws: &Workspace, statement: &str) -> (String, String) {
    let (status, body) = ws.execute(json!({ "statement": statement })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"]["state"], "FAILED", "{statement}: {body}");
    assert_eq!(
        body["status"]["error"]["error_code"], "BAD_REQUEST",
        "{body}"
    );
    (
        body["status"]["error"]["message"]
            .as_str()
            .unwrap()
            .to_string(),
        body["status"]["sql_state"].as_str().unwrap().to_string(),
    )
}

async fn fails_with(ws: &Workspace, statement: &str, class: &str, sql_state: &str) -> String {
    let (message, state) = failure(ws, statement).await;
    assert!(
        message.starts_with(&format!("[{class}] ")),
        "{statement}: {message}"
    );
    assert_eq!(state, sql_state, "{statement}: {message}");
    message
}

#[tokio::test]
async fn division_of_integers_is_double_and_div_is_integral() {
    let ws = Workspace::start(emulator_config()).await;
    let body = ws
        .sql(
            "SELECT 3 / 2 AS half, 2 / 2 AS whole, 3 div 2 AS div, -5 div 2 AS toward_zero, \
             div(9, 4) AS function_form, 7 div 2 + 1 AS precedence, '6' / 4 AS text, \
             CAST(NULL AS INT) / 0 AS null_over_zero",
        )
        .await;
    assert_eq!(
        types(&body),
        [
            "DOUBLE", "DOUBLE", "BIGINT", "BIGINT", "BIGINT", "BIGINT", "DOUBLE", "DOUBLE"
        ]
    );
    assert_eq!(
        rows(&body)[0],
        json!(["1.5", "1.0", "1", "-2", "2", "4", "1.5", null])
    );
    // Over a table's BIGINT columns too, and un-aliased it is named as Databricks prints it.
    ws.sql("CREATE TABLE t (a BIGINT, b INT)").await;
    ws.sql("INSERT INTO t VALUES (7, 2), (-7, 2)").await;
    let body = ws.sql("SELECT a / b, a div b FROM t ORDER BY a").await;
    assert_eq!(names(&body), ["(a / b)", "(a div b)"]);
    assert_eq!(types(&body), ["DOUBLE", "BIGINT"]);
    assert_eq!(rows(&body), &json!([["-3.5", "-3"], ["3.5", "3"]]));
    // A UNION takes the wider type.
    let body = ws
        .sql("SELECT 1 AS n UNION ALL SELECT 3 / 2 UNION ALL SELECT -7.5 % 2 ORDER BY n")
        .await;
    assert_eq!(types(&body), ["DOUBLE"]);
    assert_eq!(rows(&body), &json!([["-1.5"], ["1.0"], ["1.5"]]));
}

#[tokio::test]
async fn a_zero_divisor_fails_unless_try_divide() {
    let ws = Workspace::start(emulator_config()).await;
    for statement in [
        "SELECT 3 / 0",
        "SELECT 3 div 0",
        "SELECT 3.5 / 0",
        "SELECT CAST(3 AS DECIMAL(5,1)) / 0",
        "SELECT 3 % 0",
        "SELECT 3.5 % 0",
        "SELECT a / b FROM VALUES (1, 2), (3, 0) AS t(a, b)",
    ] {
        let message = fails_with(&ws, statement, "DIVIDE_BY_ZERO", "22012").await;
        assert!(message.contains("try_divide"), "{message}");
    }
    let body = ws
        .sql("SELECT try_divide(3, 0) AS zero, try_divide(3, 2) AS half")
        .await;
    assert_eq!(types(&body), ["DOUBLE", "DOUBLE"]);
    assert_eq!(rows(&body)[0], json!([null, "1.5"]));
}

#[tokio::test]
async fn floor_and_ceil_of_a_double_are_bigints() {
    let ws = Workspace::start(emulator_config()).await;
    let body = ws
        .sql("SELECT floor(7 / 2) AS f, ceil(7 / 2) AS c, floor(-7 / 2) AS nf, ceiling(5) AS i")
        .await;
    assert_eq!(types(&body), ["BIGINT"; 4]);
    assert_eq!(rows(&body)[0], json!(["3", "4", "-4", "5"]));
    let body = ws
        .sql(
            "SELECT floor(CAST(-7.25 AS DECIMAL(5,2))) AS f, ceil(CAST(7.25 AS DECIMAL(5,2))) AS c",
        )
        .await;
    assert_eq!(types(&body), ["DECIMAL(4,0)"; 2]);
    assert_eq!(rows(&body)[0], json!(["-8", "8"]));
}

#[tokio::test]
async fn range_is_a_table_of_ids() {
    let ws = Workspace::start(emulator_config()).await;
    let body = ws.sql("SELECT * FROM range(3)").await;
    assert_eq!(names(&body), ["id"]);
    assert_eq!(types(&body), ["BIGINT"]);
    assert_eq!(rows(&body), &json!([["0"], ["1"], ["2"]]));
    let body = ws.sql("SELECT * FROM range(-3, 0)").await;
    assert_eq!(rows(&body), &json!([["-3"], ["-2"], ["-1"]]));
    // numParts only spreads the work on Databricks.
    let body = ws.sql("SELECT t.* FROM range(0, -5, -1, 2) AS t").await;
    assert_eq!(rows(&body), &json!([["0"], ["-1"], ["-2"], ["-3"], ["-4"]]));
    let body = ws
        .sql("SELECT count(*) AS n, max(x) AS top FROM range(10, 100, 10) AS r(x)")
        .await;
    assert_eq!(rows(&body)[0], json!(["9", "90"]));
    let body = ws
        .sql("SELECT range.id * 10 AS tens FROM range(2) WHERE range.id > 0")
        .await;
    assert_eq!(rows(&body), &json!([["10"]]));
}

#[tokio::test]
async fn generators_name_their_columns() {
    let ws = Workspace::start(emulator_config()).await;
    let body = ws.sql("SELECT explode(array(10, 20)), 'Spark'").await;
    assert_eq!(names(&body), ["col", "Spark"]);
    assert_eq!(rows(&body), &json!([["10", "Spark"], ["20", "Spark"]]));
    let body = ws.sql("SELECT posexplode(array('a', 'b'))").await;
    assert_eq!(names(&body), ["pos", "col"]);
    assert_eq!(types(&body), ["INT", "STRING"]);
    assert_eq!(rows(&body), &json!([["0", "a"], ["1", "b"]]));
    let body = ws.sql("SELECT posexplode(array('a', 'b')) AS (p, v)").await;
    assert_eq!(names(&body), ["p", "v"]);
    // As table references, the form Databricks recommends.
    let body = ws
        .sql("SELECT elem, 'Spark' AS s FROM explode(array(10, 20)) AS t(elem)")
        .await;
    assert_eq!(names(&body), ["elem", "s"]);
    assert_eq!(rows(&body), &json!([["10", "Spark"], ["20", "Spark"]]));
    let body = ws
        .sql("SELECT pos, col FROM posexplode(array(10, 20))")
        .await;
    assert_eq!(rows(&body), &json!([["0", "10"], ["1", "20"]]));
    let body = ws
        .sql(
            "SELECT p1.*, p2.* FROM posexplode(array(1, 2)) AS p1, \
             posexplode(array(3, 4)) AS p2 ORDER BY 1, 3",
        )
        .await;
    assert_eq!(names(&body), ["pos", "col", "pos", "col"]);
    assert_eq!(rows(&body).as_array().unwrap().len(), 4);
    // NULL: no rows, or with _outer one row of NULLs.
    let body = ws
        .sql("SELECT explode(CAST(NULL AS ARRAY<STRING>)) AS e")
        .await;
    assert_eq!(body["manifest"]["total_row_count"], 0, "{body}");
    let body = ws
        .sql("SELECT posexplode_outer(CAST(NULL AS ARRAY<STRING>))")
        .await;
    assert_eq!(names(&body), ["pos", "col"]);
    assert_eq!(rows(&body), &json!([[null, null]]));
    let message = fails_with(
        &ws,
        "SELECT posexplode(array(1)) AS p",
        "UDTF_ALIAS_NUMBER_MISMATCH",
        "42802",
    )
    .await;
    assert!(message.contains("Expected 2 aliases"), "{message}");
}

#[tokio::test]
async fn unaliased_columns_are_named_as_databricks_prints_them() {
    let ws = Workspace::start(emulator_config()).await;
    ws.sql("CREATE TABLE r (device STRING, v INT, ts TIMESTAMP)")
        .await;
    ws.sql(
        "INSERT INTO r VALUES ('a', 1, TIMESTAMP '2025-11-29 12:34:56Z'), \
         ('b', 2, TIMESTAMP '2025-11-29 13:00:00Z'), ('a', 3, TIMESTAMP '2025-11-29 13:30:00Z')",
    )
    .await;
    let body = ws
        .sql(
            "SELECT count(*), count(DISTINCT device), max(v), sum(v) / count(*), COUNT(1) \
             FROM r",
        )
        .await;
    assert_eq!(
        names(&body),
        [
            "count(1)",
            "count(DISTINCT device)",
            "max(v)",
            "(sum(v) / count(1))",
            "count(1)"
        ]
    );
    assert_eq!(rows(&body)[0], json!(["3", "2", "3", "2.0", "3"]));
    let body = ws
        .sql(
            "SELECT v + 1, -v, round(v / 3, 2), upper(device), CAST(v AS STRING), v IS NULL, \
             CASE WHEN v > 1 THEN 'big' ELSE 'small' END, floor(v / 2), \
             date_trunc('HOUR', ts), 'text', 42, r.device, v <> 2 \
             FROM r WHERE v = 1",
        )
        .await;
    assert_eq!(
        names(&body),
        [
            "(v + 1)",
            "(- v)",
            "round((v / 3), 2)",
            "upper(device)",
            "CAST(v AS STRING)",
            "(v IS NULL)",
            "CASE WHEN (v > 1) THEN big ELSE small END",
            "FLOOR((v / 2))",
            "date_trunc(HOUR, ts)",
            "text",
            "42",
            "device",
            "(NOT (v = 2))",
        ]
    );
    // Grouping and ordering by the expressions still work.
    let body = ws
        .sql(
            "SELECT date_trunc('HOUR', ts), count(*) FROM r GROUP BY date_trunc('HOUR', ts) \
             ORDER BY date_trunc('HOUR', ts)",
        )
        .await;
    assert_eq!(names(&body), ["date_trunc(HOUR, ts)", "count(1)"]);
    assert_eq!(
        rows(&body),
        &json!([
            ["2025-11-29T12:00:00.000Z", "1"],
            ["2025-11-29T13:00:00.000Z", "2"]
        ])
    );
    // A subquery's names are visible outside it, and duplicates are allowed, as on Databricks.
    let body = ws
        .sql("SELECT *, `count(1)` * 2 AS twice FROM (SELECT count(*) FROM r)")
        .await;
    assert_eq!(names(&body), ["count(1)", "twice"]);
    assert_eq!(rows(&body)[0], json!(["3", "6"]));
    let body = ws.sql("SELECT v, v, 1, 1 FROM r WHERE v = 2").await;
    assert_eq!(names(&body), ["v", "v", "1", "1"]);
    assert_eq!(rows(&body)[0], json!(["2", "2", "1", "1"]));
}

#[tokio::test]
async fn date_format_takes_spark_patterns() {
    let ws = Workspace::start(emulator_config()).await;
    let body = ws
        .execute(json!({
            "statement": "SELECT date_format(:ts, 'yyyy-MM-dd HH:mm:ss') AS plain, \
                          date_format(:ts, 'yyyy-MM-dd''T''HH:mm:ss.SSS') AS iso, \
                          date_format(:ts, 'EEE, d MMM yyyy') AS short, \
                          date_format(:ts, 'EEEE hh:mm a') AS clock, \
                          date_format(:ts, 'yyyyMMdd') AS compact, \
                          date_format(:ts, 'QQQ yy') AS quarter, \
                          date_format('2016-04-08', 'y') AS year, \
                          date_format(DATE '2016-04-08', 'MMMM') AS month",
            "parameters": [
                {"name": "ts", "value": "2025-11-04T15:07:09.123456Z", "type": "TIMESTAMP"},
            ],
        }))
        .await
        .1;
    assert_eq!(body["status"]["state"], "SUCCEEDED", "{body}");
    assert_eq!(types(&body), ["STRING"; 8]);
    assert_eq!(
        rows(&body)[0],
        json!([
            "2025-11-04 15:07:09",
            "2025-11-04T15:07:09.123",
            "Tue, 4 Nov 2025",
            "Tuesday 03:07 PM",
            "20251104",
            "Q4 25",
            "2016",
            "April"
        ])
    );
    let body = ws
        .sql("SELECT date_format(TIMESTAMP '2025-11-29 15:04:05Z', 'HH:mm')")
        .await;
    assert_eq!(
        names(&body),
        ["date_format(TIMESTAMP '2025-11-29 15:04:05', HH:mm)"]
    );
    fails_with(
        &ws,
        "SELECT date_format(current_date(), 'QQQQQ')",
        "INVALID_DATETIME_PATTERN.LENGTH",
        "22007",
    )
    .await;
    fails_with(
        &ws,
        "SELECT date_format(current_date(), 'YYYY-MM-dd')",
        "INCONSISTENT_BEHAVIOR_CROSS_VERSION.DATETIME_WEEK_BASED_PATTERN",
        "42K0B",
    )
    .await;
    fails_with(
        &ws,
        "SELECT date_format(current_date(), 'yyyy-MM-ddTHH')",
        "INVALID_DATETIME_PATTERN.WITH_SUGGESTION",
        "22007",
    )
    .await;
    // chrono's patterns are not Databricks patterns: `%Y` is a week-based year, and in
    // `%H:%M` the letters are the hour and the month.
    fails_with(
        &ws,
        "SELECT date_format(current_date(), '%Y-%m-%d')",
        "INCONSISTENT_BEHAVIOR_CROSS_VERSION.DATETIME_WEEK_BASED_PATTERN",
        "42K0B",
    )
    .await;
    let body = ws
        .sql("SELECT date_format(TIMESTAMP '2025-11-29 15:04:05Z', '%H:%M') AS t")
        .await;
    assert_eq!(rows(&body)[0], json!(["%15:%11"]));
}

#[tokio::test]
async fn to_timestamp_and_to_date_take_spark_patterns() {
    let ws = Workspace::start(emulator_config()).await;
    let body = ws
        .sql(
            "SELECT to_date('2016-12-31', 'yyyy-MM-dd') AS d, \
             to_date('2009-07-30 04:17:52') AS cast_date, \
             try_to_timestamp('2016-12-31', 'yyyy-MM-dd') AS midnight, \
             try_to_timestamp('2016-12-32', 'yyyy-MM-dd') AS invalid, \
             to_timestamp('2016-12-31 00:12:00') AS cast_timestamp, \
             to_timestamp('29/11/2025 3:04 PM', 'dd/MM/yyyy h:mm a') AS clock, \
             to_timestamp('2025-11-29T12:00:00.5+02:00', 'yyyy-MM-dd''T''HH:mm:ss.SSSXXX') AS zoned, \
             to_timestamp(1764417600) AS seconds",
        )
        .await;
    assert_eq!(
        types(&body),
        [["DATE"; 2].as_slice(), &["TIMESTAMP"; 6]].concat()
    );
    assert_eq!(
        rows(&body)[0],
        json!([
            "2016-12-31",
            "2009-07-30",
            "2016-12-31T00:00:00.000Z",
            null,
            "2016-12-31T00:12:00.000Z",
            "2025-11-29T15:04:00.000Z",
            "2025-11-29T10:00:00.500Z",
            "2025-11-29T12:00:00.000Z"
        ])
    );
    let body = ws
        .sql(
            "SELECT from_unixtime(0) AS epoch, from_unixtime(1764417600, 'EEE d MMM') AS day, \
             to_unix_timestamp('2016-04-08', 'yyyy-MM-dd') AS parsed, \
             unix_timestamp('2016-04-08 00:00:01') AS default_pattern, \
             unix_timestamp(TIMESTAMP '1969-12-31 23:59:59.5Z') AS before_epoch, \
             unix_timestamp() BETWEEN unix_seconds(current_timestamp()) - 1 \
               AND unix_seconds(current_timestamp()) AS now",
        )
        .await;
    assert_eq!(
        types(&body),
        ["STRING", "STRING", "BIGINT", "BIGINT", "BIGINT", "BOOLEAN"]
    );
    assert_eq!(
        rows(&body)[0],
        json!([
            "1970-01-01 00:00:00",
            "Sat 29 Nov",
            "1460073600",
            "1460073601",
            "-1",
            "true"
        ])
    );
    let message = fails_with(
        &ws,
        "SELECT to_timestamp('2016-12-32', 'yyyy-MM-dd')",
        "CANNOT_PARSE_TIMESTAMP",
        "22007",
    )
    .await;
    assert!(
        message.contains("Text '2016-12-32' could not be parsed"),
        "{message}"
    );
    fails_with(
        &ws,
        "SELECT unix_timestamp('2016/04/08', 'yyyy-MM-dd')",
        "CANNOT_PARSE_TIMESTAMP",
        "22007",
    )
    .await;
    // A common mistake: week-based year and day of year.
    fails_with(
        &ws,
        "SELECT to_date('2024-12-18', 'YYYY-MM-DD')",
        "INCONSISTENT_BEHAVIOR_CROSS_VERSION.DATETIME_WEEK_BASED_PATTERN",
        "42K0B",
    )
    .await;
}
