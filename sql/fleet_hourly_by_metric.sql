-- The whole fleet over the last day, per hour and metric: how many devices reported
-- the metric, how many samples arrived, and the fleet-wide average and extremes.
-- Where a sink may write a row twice (LAKEGATE_READ_FROM=dedup, docs/dedup.md), read
-- main.lakegate.readings_dedup instead: the same columns, one row per reading's metric.
SELECT
  date_trunc('HOUR', ts) AS hour,
  metric,
  count(DISTINCT device_id) AS devices,
  count(*) AS samples,
  avg(value) AS avg_value,
  min(value) AS min_value,
  max(value) AS max_value
FROM main.lakegate.readings
WHERE ts >= current_timestamp() - INTERVAL 1 DAY
GROUP BY date_trunc('HOUR', ts), metric
ORDER BY hour, metric
