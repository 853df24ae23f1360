-- What lakegate committed per hour over the last day (by commit time): rows (one per
-- metric), readings, and devices. Pair it with lakegate's /metrics for rejections,
-- which are not stored in the table.
-- Counts what was written, a row written twice included: with LAKEGATE_SINK=zerobus,
-- whose streams may write a row twice (docs/zerobus.md), the API and the page read
-- main.lakegate.readings_dedup by default; on that view this counts each reading's
-- metric once (docs/dedup.md). With zerobus, ingested_at is when the gateway sent the
-- batch, a moment before it was durable.
SELECT
  date_trunc('HOUR', ingested_at) AS hour,
  count(*) AS rows_written,
  count(DISTINCT concat(device_id, '/', reading_id)) AS readings,
  count(DISTINCT device_id) AS devices
FROM main.lakegate.readings
WHERE ingested_at >= current_timestamp() - INTERVAL 1 DAY
GROUP BY date_trunc('HOUR', ingested_at)
ORDER BY hour
