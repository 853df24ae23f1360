//! The readings table, in one place: its name, its row, its columns, and every
//! statement that names them (the DDL, the batch MERGE, the dashboard reads).
//!
//! One row per metric of a reading, keyed by (device, reading id, ts, metric).
//! Values never appear in SQL text: a batch travels as ONE string parameter holding
//! a JSON array of `TableRow`s, expanded on the warehouse with `from_json`, which
//! keeps thousands of rows under the API's 255-parameter limit. The one name in the
//! text is the table's, a validated `catalog.schema.table` of plain identifiers.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::Serialize;

use crate::databricks::{self, StatementRequest, Statements};

/// `catalog.schema.table`, each part a plain identifier so it can stand in SQL text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    pub catalog: String,
    pub schema: String,
    pub table: String,
}

impl FromStr for TableName {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        let parts: Vec<&str> = value.split('.').collect();
        let [catalog, schema, table] = parts[..] else {
            return Err(format!("{value:?} is not of the form catalog.schema.table"));
        };
        for part in [catalog, schema, table] {
            let plain = part.len() <= 255
                && part.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !plain {
                return Err(format!(
                    "{part:?} in {value:?} is not a plain identifier (letters, digits, _)"
                ));
            }
        }
        Ok(TableName {
            catalog: catalog.to_owned(),
            schema: schema.to_owned(),
            table: table.to_owned(),
        })
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.catalog, self.schema, self.table)
    }
}

/// The characters of a metric name (the `metric` column): what a reading may name and a
/// series query may ask for.
pub(crate) fn is_metric_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '/' | '-')
}

/// One table row on its way in: a reading's metric. Field names and types are the
/// JSON that [`ROWS_SCHEMA`] reads back on the warehouse.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct TableRow {
    pub(crate) device_id: Arc<str>,
    pub(crate) reading_id: Arc<str>,
    /// Microseconds since the epoch, so that no timestamp format is parsed on the warehouse.
    pub(crate) ts_us: i64,
    pub(crate) metric: String,
    /// Numbers, and booleans as 1.0 / 0.0.
    pub(crate) value: Option<f64>,
    pub(crate) value_str: Option<String>,
}

impl TableRow {
    /// What this row costs the write queue, in bytes: the struct and every buffer it
    /// owns. The device and reading ids are shared by a reading's rows; each row is
    /// charged the reading id all the same, so the estimate errs on the safe side.
    pub(crate) fn queued_bytes(&self) -> usize {
        std::mem::size_of::<TableRow>()
            + self.metric.len()
            + self.value_str.as_ref().map_or(0, String::len)
            + self.reading_id.len()
    }
}

/// How `from_json` reads a batch of [`TableRow`]s.
const ROWS_SCHEMA: &str = "ARRAY<STRUCT<device_id: STRING, reading_id: STRING, ts_us: BIGINT, \
    metric: STRING, value: DOUBLE, value_str: STRING>>";

/// A column of the table, as the DDL declares it.
struct Column {
    name: &'static str,
    sql_type: &'static str,
    comment: &'static str,
}

const fn column(name: &'static str, sql_type: &'static str, comment: &'static str) -> Column {
    Column {
        name,
        sql_type,
        comment,
    }
}

/// The row layout dashboards depend on.
const COLUMNS: [Column; 7] = [
    column(
        "device_id",
        "STRING NOT NULL",
        "Device that sent the reading",
    ),
    column(
        "reading_id",
        "STRING NOT NULL",
        "The device's reading id, or one derived from its content",
    ),
    column("ts", "TIMESTAMP NOT NULL", "When the device measured"),
    column("metric", "STRING NOT NULL", "Metric name"),
    column("value", "DOUBLE", "Numbers, and booleans as 1.0 / 0.0"),
    column("value_str", "STRING", "String values"),
    column(
        "ingested_at",
        "TIMESTAMP NOT NULL",
        "When lakegate committed the row",
    ),
];

/// Whether `table`'s columns are still lakegate's, names and types, as a sink that sends
/// whole rows (Zerobus) needs them: `Ok(Err(..))` names the difference. Reads no rows.
pub(crate) async fn check_layout(
    statements: &Statements,
    table: &TableName,
) -> Result<Result<(), String>, databricks::Error> {
    let result = statements
        .execute(StatementRequest::new(format!(
            "SELECT * FROM {table} LIMIT 0"
        )))
        .await?;
    let found: Vec<(String, String)> = (result.columns().iter())
        .map(|c| {
            (
                c.name.to_ascii_lowercase(),
                c.type_text.to_ascii_uppercase(),
            )
        })
        .collect();
    let expected = COLUMNS.iter().map(|c| {
        let sql_type = c.sql_type.split(' ').next().unwrap_or_default();
        (c.name, sql_type)
    });
    let mut differences = Vec::new();
    for (name, sql_type) in expected.clone() {
        match found.iter().find(|(found, _)| found == name) {
            None => differences.push(format!("{name} is missing")),
            Some((_, found)) if found != sql_type => {
                differences.push(format!("{name} is {found}, not {sql_type}"));
            }
            Some(_) => {}
        }
    }
    for (name, _) in &found {
        if !expected.clone().any(|(expected, _)| expected == name) {
            differences.push(format!("{name} is not one of lakegate's columns"));
        }
    }
    Ok(match differences.is_empty() {
        true => Ok(()),
        false => Err(format!(
            "the columns of {table} are not lakegate's: {}",
            differences.join(", ")
        )),
    })
}

/// The dead-letter table has the same columns, plus why the table refused the row.
const DEAD_LETTER_COLUMNS: [Column; 2] = [
    column(
        "error_code",
        "STRING",
        "Databricks error class of the refusal",
    ),
    column("error_message", "STRING", "The warehouse's message"),
];

/// The readings table's column names, in table order.
#[cfg(test)]
fn column_names() -> impl Iterator<Item = &'static str> {
    COLUMNS.iter().map(|column| column.name)
}

/// `'text'` as a SQL string literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn create_table_sql<'a>(
    table: &TableName,
    columns: impl Iterator<Item = &'a Column>,
    comment: &str,
) -> String {
    let columns: Vec<String> = columns
        .map(|c| format!("{} {} COMMENT {}", c.name, c.sql_type, literal(c.comment)))
        .collect();
    format!(
        "CREATE TABLE IF NOT EXISTS {table} ({}) USING DELTA CLUSTER BY (device_id, ts) \
         COMMENT {}",
        columns.join(", "),
        literal(comment)
    )
}

/// Inserts only rows whose (device, reading, ts, metric) key is not in the table yet,
/// so a retried batch or a device's resend is a no-op, while the same reading id at
/// another time is a new reading. The `:ts_min` / `:ts_max` bounds only prune the scan
/// to the batch's time range (the table is clustered by device and time).
///
/// The batch's device ids are deliberately not in the condition, though a parameter could
/// carry them (`array_contains(from_json(:devices, 'ARRAY<STRING>'), t.device_id)`, no value
/// in the text): with row-level concurrency (this clustered table's default) MERGEs conflict
/// only on the same rows, and a device's rows always go through the same writer, so writers
/// never conflict whatever the condition; with file-level concurrency, a device set spread
/// over the key space matches nearly every file's device statistics, and a predicate on a
/// function of a parameter cannot prune files at all. The time range is what narrows both
/// the scan and the conflicts; conflicts left are retried at once by the writer.
/// `FAILFAST`: a batch the warehouse cannot parse fails loudly; the default (PERMISSIVE)
/// would turn it into NULL, `explode(NULL)` into no rows, and the MERGE would commit
/// nothing. Parameters: `:rows` (the batch), `:ts_min`, `:ts_max`.
pub(crate) fn merge_sql(table: &TableName) -> String {
    merge_into(table, "", "")
}

/// [`merge_sql`] into the dead-letter table, with `:error_code` and `:error_message`.
pub(crate) fn merge_dead_letter_sql(table: &TableName) -> String {
    merge_into(
        table,
        ", error_code, error_message",
        ", :error_code, :error_message",
    )
}

fn merge_into(table: &TableName, extra_columns: &str, extra_values: &str) -> String {
    format!(
        "MERGE INTO {table} AS t \
         USING (SELECT r.device_id AS device_id, r.reading_id AS reading_id, \
                timestamp_micros(r.ts_us) AS ts, r.metric AS metric, r.value AS value, \
                r.value_str AS value_str \
                FROM (SELECT explode(from_json(:rows, '{ROWS_SCHEMA}', \
                map('mode', 'FAILFAST'))) AS r)) AS s \
         ON t.device_id = s.device_id AND t.reading_id = s.reading_id AND t.ts = s.ts \
            AND t.metric = s.metric AND t.ts >= :ts_min AND t.ts <= :ts_max \
         WHEN NOT MATCHED THEN INSERT (device_id, reading_id, ts, metric, value, value_str, \
            ingested_at{extra_columns}) \
            VALUES (s.device_id, s.reading_id, s.ts, s.metric, s.value, s.value_str, \
            current_timestamp(){extra_values})"
    )
}

/// The columns that name a reading's metric: a row's identity, the MERGE's key.
const IDENTITY: &str = "device_id, reading_id, ts, metric";

/// Which of an identity's rows is kept where a sink wrote it more than once: the earliest
/// ingested, then by value, so the choice is the same on every run and every engine
/// (NULLs placed explicitly: Databricks sorts them first, DataFusion last by default).
/// Rows equal in all of these are the same row twice; either one is that row.
const KEEP_ORDER: &str = "ingested_at, value ASC NULLS FIRST, value_str ASC NULLS FIRST";

/// The name of the view next to `table` that keeps one row per identity:
/// `<table>_dedup`, in the table's schema.
pub fn dedup_view_name(table: &TableName) -> Result<TableName, String> {
    format!("{table}_dedup").parse()
}

/// `CREATE VIEW IF NOT EXISTS`, not `OR REPLACE`: gateways starting together then never
/// replace a view another is reading (nor reset what an administrator granted on it),
/// and the definition depends only on the table's fixed columns.
fn create_dedup_view_sql(table: &TableName, view: &TableName) -> String {
    let columns: Vec<&str> = COLUMNS.iter().map(|column| column.name).collect();
    format!(
        "CREATE VIEW IF NOT EXISTS {view} AS SELECT {} FROM {table} \
         QUALIFY row_number() OVER (PARTITION BY {IDENTITY} ORDER BY {KEEP_ORDER}) = 1",
        columns.join(", ")
    )
}

/// What `ensure_tables` creates: the table, its dead-letter table, and the view that
/// keeps one row per identity (`required_view`: whether reads go to it, so that failing
/// to create it fails the start).
pub struct Tables<'a> {
    pub table: &'a TableName,
    pub dead_letter: &'a TableName,
    pub dedup_view: &'a TableName,
    pub required_view: bool,
}

/// Creates the schema, the table, its dead-letter table and the dedup view when
/// missing. A service principal that may write the tables but not create schemas only
/// gets a warning for the first step; one that may not create the view only a warning
/// too, unless reads go to it.
pub async fn ensure_tables(
    statements: &Statements,
    tables: Tables<'_>,
) -> Result<(), databricks::Error> {
    let Tables {
        table,
        dead_letter,
        dedup_view,
        required_view,
    } = tables;
    let creates = [
        create_table_sql(
            table,
            COLUMNS.iter(),
            "Device readings ingested by lakegate, one row per metric",
        ),
        create_table_sql(
            dead_letter,
            COLUMNS.iter().chain(&DEAD_LETTER_COLUMNS),
            "Readings the table refused, with the error",
        ),
    ];
    for (name, create) in [table, dead_letter].into_iter().zip(creates) {
        let schema = format!(
            "CREATE SCHEMA IF NOT EXISTS {}.{}",
            name.catalog, name.schema
        );
        if let Err(err) = statements.execute(StatementRequest::new(schema)).await {
            tracing::warn!(error = %err, "could not create the schema; assuming it exists");
        }
        statements.execute(StatementRequest::new(create)).await?;
    }
    let view = create_dedup_view_sql(table, dedup_view);
    match statements.execute(StatementRequest::new(view)).await {
        Ok(_) => Ok(()),
        // Another gateway created it between the check and the creation.
        Err(err) if err.error_class() == Some("TABLE_OR_VIEW_ALREADY_EXISTS") => Ok(()),
        Err(err) if required_view => Err(err),
        Err(err) => {
            tracing::warn!(error = %err, view = %dedup_view, "could not create the dedup view");
            Ok(())
        }
    }
}

/// Removes the rows [`create_dedup_view_sql`]'s view leaves out, from the table itself:
/// for each identity with more than one row (measured at `:since` or later when
/// `since`), every copy is deleted and the kept one inserted again, with its own
/// `ingested_at`, in one MERGE. The source holds each such identity twice: once keyed, to
/// match (and delete) its rows, once with NULL keys, which match nothing and so insert the
/// kept row (a plain DELETE could not keep one of two identical rows). Only rows of the
/// snapshot the MERGE read are deleted, so rows appended meanwhile stay; a concurrent
/// compact deleting the same rows makes Delta refuse one of the two (a write conflict,
/// retried by [`compact`]); a second run finds no identity twice and changes nothing.
fn compact_sql(table: &TableName, since: bool) -> String {
    let columns: Vec<&str> = COLUMNS.iter().map(|column| column.name).collect();
    let columns = columns.join(", ");
    let values: Vec<String> = COLUMNS.iter().map(|c| format!("s.{}", c.name)).collect();
    let window = if since { "WHERE ts >= :since " } else { "" };
    // The same bound on the table's side lets Delta prune the files it reads and the
    // conflicts it can meet: a row matched has the identity's `ts`, so is within it.
    let target_window = if since { " AND t.ts >= :since" } else { "" };
    let key = |column: &str| format!("CASE WHEN keyed THEN {column} END AS k_{column}");
    format!(
        "MERGE INTO {table} AS t \
         USING (SELECT {}, {}, {}, {}, {columns} \
                FROM (SELECT {columns}, explode(array(TRUE, FALSE)) AS keyed \
                      FROM (SELECT {columns} FROM {table} {window}\
                            QUALIFY count(*) OVER (PARTITION BY {IDENTITY}) > 1 \
                            AND row_number() OVER (PARTITION BY {IDENTITY} \
                              ORDER BY {KEEP_ORDER}) = 1) AS kept) AS copies) AS s \
         ON t.device_id = s.k_device_id AND t.reading_id = s.k_reading_id \
            AND t.ts = s.k_ts AND t.metric = s.k_metric{target_window} \
         WHEN MATCHED THEN DELETE \
         WHEN NOT MATCHED THEN INSERT ({columns}) VALUES ({})",
        key("device_id"),
        key("reading_id"),
        key("ts"),
        key("metric"),
        values.join(", ")
    )
}

/// How many times [`compact`] runs its MERGE when another writer's commit conflicts.
const COMPACT_ATTEMPTS: u32 = 5;

/// Removes duplicate rows from `table` (those measured at `since` or later, else all):
/// see [`compact_sql`]. Returns the rows removed. A Delta write conflict is retried at
/// once (the MERGE reads the table again, so it is idempotent); other errors end it.
pub async fn compact(
    statements: &Statements,
    table: &TableName,
    since: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<u64, databricks::Error> {
    let mut attempt = 1;
    loop {
        let mut request = StatementRequest::new(compact_sql(table, since.is_some()));
        if let Some(since) = since {
            request = request.params([databricks::Param::timestamp("since", since)]);
        }
        let result = match statements.execute(request).await {
            Err(err) if err.is_write_conflict() && attempt < COMPACT_ATTEMPTS => {
                tracing::info!(attempt, error = %err, "compact conflicted with another write; again");
                attempt += 1;
                continue;
            }
            result => result?,
        };
        let names: Vec<String> = result.columns().iter().map(|c| c.name.clone()).collect();
        let rows = result.collect_rows().await?;
        let count = |name: &str| {
            let at = names.iter().position(|n| n == name);
            match at.and_then(|at| rows.first()?.get(at)) {
                Some(databricks::Value::Int(n)) => Ok(*n),
                other => Err(databricks::Error::Decode(format!(
                    "the MERGE's {name} is {other:?}"
                ))),
            }
        };
        let (deleted, inserted) = (count("num_deleted_rows")?, count("num_inserted_rows")?);
        return Ok(u64::try_from(deleted - inserted).unwrap_or(0));
    }
}

/// The read statements behind the dashboard API.
pub(crate) mod reads {
    use super::TableName;

    /// Per device seen since `:since`: last reading, and readings (not rows: one row per
    /// metric) in the hour and day before `:now`. Ordered so that a row limit keeps the
    /// first devices. The window keeps the scan to recent data however old the table.
    pub(crate) fn devices(table: &TableName) -> String {
        format!(
            "SELECT device_id, max(ts) AS last_seen, \
               count(DISTINCT CASE WHEN ts >= :now - INTERVAL 1 HOUR THEN reading_id END) AS readings_last_hour, \
               count(DISTINCT CASE WHEN ts >= :now - INTERVAL 1 DAY THEN reading_id END) AS readings_last_day \
             FROM {table} WHERE ts >= :since GROUP BY device_id ORDER BY device_id"
        )
    }

    /// The metrics seen since `:since` of the devices up to `:last_device` (separate
    /// rows: no ARRAY results).
    pub(crate) fn device_metrics(table: &TableName) -> String {
        format!(
            "SELECT DISTINCT device_id, metric FROM {table} \
             WHERE device_id <= :last_device AND ts >= :since ORDER BY device_id, metric"
        )
    }

    /// Numeric values of one metric in `[:from, :to)`, per bucket of `:bucket_us`
    /// microseconds starting at multiples of it since the epoch.
    pub(crate) fn series(table: &TableName) -> String {
        format!(
            "SELECT t, min(value) AS min, avg(value) AS avg, max(value) AS max, \
               count(DISTINCT reading_id) AS count \
             FROM (SELECT timestamp_micros(CAST(floor(unix_micros(ts) / :bucket_us) AS BIGINT) * :bucket_us) AS t, \
                     value, reading_id \
                   FROM {table} \
                   WHERE device_id = :device_id AND metric = :metric AND ts >= :from AND ts < :to \
                     AND value IS NOT NULL) AS points \
             GROUP BY t ORDER BY t"
        )
    }

    /// Every row (metric) of the device's `:limit` newest readings, newest first.
    pub(crate) fn latest(table: &TableName) -> String {
        format!(
            "SELECT reading_id, ts, ingested_at, metric, value, value_str \
             FROM (SELECT reading_id, ts, ingested_at, metric, value, value_str, \
                     dense_rank() OVER (ORDER BY ts DESC, reading_id DESC) AS newest \
                   FROM {table} WHERE device_id = :device_id) AS ranked \
             WHERE newest <= :limit \
             ORDER BY ts DESC, reading_id DESC, metric"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> TableName {
        "iot.raw.readings".parse().unwrap()
    }

    #[test]
    fn table_names_must_be_plain_identifiers() {
        assert!("main.lakegate.readings".parse::<TableName>().is_ok());
        assert!("main.lake-gate.readings".parse::<TableName>().is_err());
        assert!(
            "main.x.readings; DROP TABLE y"
                .parse::<TableName>()
                .is_err()
        );
        assert!("a.b.c.d".parse::<TableName>().is_err());
    }

    #[test]
    fn read_statements_name_only_the_table() {
        for sql in [
            reads::devices(&table()),
            reads::device_metrics(&table()),
            reads::series(&table()),
            reads::latest(&table()),
        ] {
            assert!(sql.contains(" FROM iot.raw.readings "), "{sql}");
            // No quoted literals: every value is a parameter marker.
            assert!(!sql.contains('\''), "{sql}");
        }
    }

    /// The view and the compaction keep the same row of each identity, and name no value.
    #[test]
    fn the_view_and_compact_keep_the_same_row() {
        let view = create_dedup_view_sql(&table(), &dedup_view_name(&table()).unwrap());
        assert!(view.starts_with("CREATE VIEW IF NOT EXISTS iot.raw.readings_dedup AS"));
        for sql in [
            view,
            compact_sql(&table(), false),
            compact_sql(&table(), true),
        ] {
            assert!(sql.contains(&format!("ORDER BY {KEEP_ORDER}")), "{sql}");
            assert!(sql.contains(&format!("PARTITION BY {IDENTITY}")), "{sql}");
            assert!(!sql.contains('\''), "{sql}");
        }
        assert!(compact_sql(&table(), true).contains("WHERE ts >= :since"));
    }

    /// The batch JSON, the schema `from_json` reads it with and the table's columns
    /// must agree field for field.
    #[test]
    fn a_row_serializes_to_the_fields_the_merge_reads() {
        let row = TableRow {
            device_id: "d".into(),
            reading_id: "r".into(),
            ts_us: 1,
            metric: "m".into(),
            value: Some(1.0),
            value_str: None,
        };
        let json = serde_json::to_value(&row).unwrap();
        let mut fields: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort_unstable();
        let schema_fields: Vec<&str> = ROWS_SCHEMA
            .trim_start_matches("ARRAY<STRUCT<")
            .trim_end_matches(">>")
            .split(", ")
            .map(|field| field.split(':').next().unwrap())
            .collect();
        let mut sorted = schema_fields.clone();
        sorted.sort_unstable();
        assert_eq!(fields, sorted);
        // Every batch field but ts_us (which becomes ts) is a column of the table.
        for field in schema_fields.iter().filter(|f| **f != "ts_us") {
            assert!(column_names().any(|c| c == *field), "{field}");
        }
    }

    #[test]
    fn the_dead_letter_table_extends_the_table() {
        let ddl = create_table_sql(
            &table(),
            COLUMNS.iter().chain(&DEAD_LETTER_COLUMNS),
            "it's refused",
        );
        assert!(ddl.starts_with(
            "CREATE TABLE IF NOT EXISTS iot.raw.readings (device_id STRING NOT NULL COMMENT"
        ));
        assert!(ddl.contains("error_message STRING COMMENT 'The warehouse''s message'"));
        assert!(ddl.ends_with("COMMENT 'it''s refused'"));
        let merge = merge_dead_letter_sql(&table());
        assert!(
            merge.contains("ingested_at, error_code, error_message)"),
            "{merge}"
        );
    }
}
