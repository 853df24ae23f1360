-- The whole fleet over the last day, per hour and metric: how many devices reported
-- the metric, how many samples arrived, and the fleet-wide average and extremes.
-- With LAKEGATE_SINK=zerobus, whose streams may write a row twice (docs/zerobus.md), read
-- main.lakegate.readings_dedup instead, as the API and the page do by default: the same
-- columns, one row per reading's metric (docs/dedup.md).
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
