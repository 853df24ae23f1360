-- Fleet freshness: one row per device that reported in the last 30 days, with when it
-- last measured, how much it sent, and its state at a glance:
-- reporting (last 5 minutes), quiet (last hour), silent (longer).
-- Replace main.lakegate.readings with your LAKEGATE_TABLE.
-- With LAKEGATE_SINK=zerobus, whose streams may write a row twice (docs/zerobus.md), read
-- main.lakegate.readings_dedup instead, as the API and the page do by default: the same
-- columns, one row per reading's metric (docs/dedup.md).
SELECT
  device_id,
  max(ts) AS last_seen,
  max(ingested_at) AS last_ingested,
  count(DISTINCT CASE WHEN ts >= current_timestamp() - INTERVAL 1 HOUR THEN reading_id END) AS readings_last_hour,
  count(DISTINCT CASE WHEN ts >= current_timestamp() - INTERVAL 1 DAY THEN reading_id END) AS readings_last_day,
  count(DISTINCT metric) AS metrics,
  CASE
    WHEN max(ts) >= current_timestamp() - INTERVAL 5 MINUTES THEN 'reporting'
    WHEN max(ts) >= current_timestamp() - INTERVAL 1 HOUR THEN 'quiet'
    ELSE 'silent'
  END AS state
FROM main.lakegate.readings
WHERE ts >= current_timestamp() - INTERVAL 30 DAYS
GROUP BY device_id
ORDER BY last_seen DESC
