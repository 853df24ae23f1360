-- What lakegate committed per hour over the last day (by commit time): rows (one per
-- metric), readings, and devices. Pair it with lakegate's /metrics for rejections,
-- which are not stored in the table.
-- Counts what was written, a row a sink wrote twice included (see docs/dedup.md);
-- on main.lakegate.readings_dedup it counts each reading's metric once.
SELECT
  date_trunc('HOUR', ingested_at) AS hour,
  count(*) AS rows_written,
  count(DISTINCT concat(device_id, '/', reading_id)) AS readings,
  count(DISTINCT device_id) AS devices
FROM main.lakegate.readings
WHERE ingested_at >= current_timestamp() - INTERVAL 1 DAY
GROUP BY date_trunc('HOUR', ingested_at)
ORDER BY hour
