-- One device's metric over a time range, bucketed, with min / avg / max per bucket.
-- Parameters (dashboard parameters of the same names):
--   :device_id  STRING     the device
--   :metric     STRING     the metric name
--   :bucket     STRING     MINUTE, HOUR or DAY
--   :from_ts    TIMESTAMP  start of the range (inclusive)
--   :to_ts      TIMESTAMP  end of the range (exclusive)
-- Only numeric values (and booleans, stored as 1.0 / 0.0) are charted.
-- With LAKEGATE_SINK=zerobus, whose streams may write a row twice (docs/zerobus.md), read
-- main.lakegate.readings_dedup instead, as the API and the page do by default: the same
-- columns, one row per reading's metric (docs/dedup.md).
SELECT
  date_trunc(:bucket, ts) AS bucket_start,
  min(value) AS min_value,
  avg(value) AS avg_value,
  max(value) AS max_value,
  count(*) AS samples
FROM main.lakegate.readings
WHERE device_id = :device_id
  AND metric = :metric
  AND value IS NOT NULL
  AND ts >= :from_ts
  AND ts < :to_ts
GROUP BY date_trunc(:bucket, ts)
ORDER BY bucket_start
