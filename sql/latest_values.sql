-- The latest value of every metric of every device seen in the last 7 days, numeric or
-- text: the "current state" table of a fleet dashboard.
-- With LAKEGATE_SINK=zerobus, whose streams may write a row twice (docs/zerobus.md), read
-- main.lakegate.readings_dedup instead, as the API and the page do by default: the same
-- columns, one row per reading's metric (docs/dedup.md).
SELECT device_id, metric, ts, value, value_str
FROM (
  SELECT
    device_id,
    metric,
    ts,
    value,
    value_str,
    row_number() OVER (PARTITION BY device_id, metric ORDER BY ts DESC, reading_id DESC) AS recency
  FROM main.lakegate.readings
  WHERE ts >= current_timestamp() - INTERVAL 7 DAYS
) AS ranked
WHERE recency = 1
ORDER BY device_id, metric
