//! The read statements. Values only ever travel as parameter markers; the one
//! name in the text is the table, a validated `catalog.schema.table` of plain
//! identifiers (as for the writes in `ingest::sql`).

use crate::config::TableName;

/// Per device: last reading, and readings (not rows: one row per metric) in the
/// hour and day before `:now`. Ordered so that a row limit keeps the first devices.
pub fn devices(table: &TableName) -> String {
    format!(
        "SELECT device_id, max(ts) AS last_seen, \
           count(DISTINCT CASE WHEN ts >= :now - INTERVAL 1 HOUR THEN reading_id END) AS readings_last_hour, \
           count(DISTINCT CASE WHEN ts >= :now - INTERVAL 1 DAY THEN reading_id END) AS readings_last_day \
         FROM {table} GROUP BY device_id ORDER BY device_id"
    )
}

/// The metrics of the devices up to `:last_device` (separate rows: no ARRAY results).
pub fn device_metrics(table: &TableName) -> String {
    format!(
        "SELECT DISTINCT device_id, metric FROM {table} \
         WHERE device_id <= :last_device ORDER BY device_id, metric"
    )
}

/// Numeric values of one metric in `[:from, :to)`, per bucket of `:bucket_us`
/// microseconds starting at multiples of it since the epoch.
pub fn series(table: &TableName) -> String {
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
pub fn latest(table: &TableName) -> String {
    format!(
        "SELECT reading_id, ts, ingested_at, metric, value, value_str \
         FROM (SELECT reading_id, ts, ingested_at, metric, value, value_str, \
                 dense_rank() OVER (ORDER BY ts DESC, reading_id DESC) AS newest \
               FROM {table} WHERE device_id = :device_id) AS ranked \
         WHERE newest <= :limit \
         ORDER BY ts DESC, reading_id DESC, metric"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_name_only_the_table() {
        let table: TableName = "iot.raw.readings".parse().unwrap();
        for sql in [
            devices(&table),
            device_metrics(&table),
            series(&table),
            latest(&table),
        ] {
            assert!(sql.contains(" FROM iot.raw.readings "), "{sql}");
            // No quoted literals: every value is a parameter marker.
            assert!(!sql.contains('\''), "{sql}");
        }
    }
}
