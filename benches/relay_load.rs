//! Site relay benchmark: `cargo bench --bench relay_load`.
//!
//! Starts the workspace emulator in this process, a `lakegate` gateway as a process in
//! front of it and a `lakegate relay` process (spool on disk, fsync on) in front of the
//! gateway, then drives both from here, side by side in one run: devices posting
//! 100-reading requests straight to the gateway (answered once committed), then the
//! same load to the relay (answered once on the relay's disk). Prints acknowledged
//! readings per second with latency percentiles, and for the relay how long until the
//! table held every reading it acknowledged (its end-to-end rate); checks that every
//! acknowledged reading landed once. See docs/benchmark.md.
//!
//! Settings (environment): `BENCH_CONCURRENCY` (16 devices, one connection each),
//! `BENCH_SECS` (5 s a pass).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use lakegate::devices::{generate_key, hash_key};
use lakegate_testkit::{
    LakegateProcess, emulator_config, gateway_env, http_client_builder, poll, start_emulator,
    workspace,
};
use secrecy::ExposeSecret;
use serde_json::json;

const TABLE: &str = "main.lakegate.relay_bench";
const READINGS_PER_REQUEST: usize = 100;

/// Rate limits far above what one box sends: the path is measured, not the quotas.
const UNLIMITED: [(&str, &str); 5] = [
    ("LAKEGATE_DEVICE_RATE_PER_SEC", "1000000000"),
    ("LAKEGATE_DEVICE_BURST", "1000000000"),
    ("LAKEGATE_GLOBAL_RATE_PER_SEC", "1000000000"),
    ("LAKEGATE_GLOBAL_BURST", "1000000000"),
    ("LAKEGATE_QUEUE_MAX_ROWS", "2000000"),
];

struct Pass {
    name: &'static str,
    acknowledged: u64,
    refused: u64,
    took: Duration,
    latencies: Vec<Duration>,
    /// From the pass's start until the table held every acknowledged reading.
    landed_after: Duration,
}

/// `concurrency` devices, each on its own connection, sending requests of fresh readings
/// to `url` for `length`; returns what was acknowledged.
async fn pass(
    name: &'static str,
    url: &str,
    devices: &[(String, String)],
    length: Duration,
    next_id: &Arc<AtomicU64>,
) -> anyhow::Result<(Pass, Instant)> {
    let started = Instant::now();
    let deadline = started + length;
    let workers: Vec<_> = devices
        .iter()
        .map(|(_, key)| {
            let (url, key, next_id) = (format!("{url}/ingest"), key.clone(), next_id.clone());
            tokio::spawn(async move {
                let http = http_client_builder().build().expect("an HTTP client");
                let (mut acknowledged, mut refused, mut latencies) = (0u64, 0u64, Vec::new());
                while Instant::now() < deadline {
                    let first = next_id.fetch_add(READINGS_PER_REQUEST as u64, Ordering::Relaxed);
                    let readings: Vec<_> = (first..first + READINGS_PER_REQUEST as u64)
                        .map(|id| json!({"id": format!("r{id}"), "ts": 1_764_417_600_000u64 + id, "metrics": {"flow": id as f64}}))
                        .collect();
                    let sent = Instant::now();
                    let answer = http
                        .post(&url)
                        .header("X-API-Key", &key)
                        .json(&readings)
                        .send()
                        .await;
                    latencies.push(sent.elapsed());
                    match answer {
                        Ok(response) if response.status().is_success() => {
                            acknowledged += READINGS_PER_REQUEST as u64;
                        }
                        _ => refused += READINGS_PER_REQUEST as u64,
                    }
                }
                (acknowledged, refused, latencies)
            })
        })
        .collect();
    let mut result = Pass {
        name,
        acknowledged: 0,
        refused: 0,
        took: Duration::ZERO,
        latencies: Vec::new(),
        landed_after: Duration::ZERO,
    };
    for worker in workers {
        let (acknowledged, refused, latencies) = worker.await?;
        result.acknowledged += acknowledged;
        result.refused += refused;
        result.latencies.extend(latencies);
    }
    result.took = started.elapsed();
    result.latencies.sort_unstable();
    Ok((result, started))
}

async fn wait_until_ready(url: &str) -> anyhow::Result<()> {
    let http = http_client_builder().build()?;
    let ready = async || {
        let answer = http.get(format!("{url}/readyz")).send().await;
        answer.is_ok_and(|response| response.status().is_success())
    };
    poll(
        Duration::from_secs(60),
        Duration::from_millis(100),
        ready,
        |ready| *ready,
    )
    .await
    .map_err(|_| anyhow!("{url} not ready within 60 s"))?;
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> String {
    let Some(last) = sorted.len().checked_sub(1) else {
        return "-".into();
    };
    let at = sorted[((last as f64) * p).round() as usize];
    format!("{:.1} ms", at.as_secs_f64() * 1000.0)
}

fn main() -> anyhow::Result<()> {
    let env_number = |name: &str, default: u64| -> anyhow::Result<u64> {
        std::env::var(name).ok().map_or(Ok(default), |raw| {
            raw.parse().with_context(|| name.to_owned())
        })
    };
    let concurrency = env_number("BENCH_CONCURRENCY", 16)? as usize;
    let length = Duration::from_secs(env_number("BENCH_SECS", 5)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(concurrency, length))
}

async fn run(concurrency: usize, length: Duration) -> anyhow::Result<()> {
    let emulator = start_emulator(emulator_config()).await;
    let dir = lakegate_testkit::temp_dir();
    let key = || generate_key().key.expose_secret().to_owned();
    let devices: Vec<(String, String)> = (0..concurrency)
        .map(|n| (format!("bench-{n}"), key()))
        .collect();
    let relay_key = key();
    let registry = dir.path().join("devices.json");
    let entries: serde_json::Map<_, _> = devices
        .iter()
        .map(|(id, key)| (id.clone(), json!({"keys": [hash_key(key)]})))
        .collect();
    let relays = json!({"site": {"keys": [hash_key(&relay_key)], "devices": ["bench-*"]}});
    std::fs::write(
        &registry,
        json!({"devices": entries, "relays": relays}).to_string(),
    )?;

    let settings: Vec<(&str, &str)> = [("LAKEGATE_TABLE", TABLE)]
        .into_iter()
        .chain(UNLIMITED)
        .collect();
    let gateway_settings = gateway_env(&emulator, &registry, &settings);
    let reader = workspace::reader(&gateway_settings);
    let gateway =
        LakegateProcess::spawn(env!("CARGO_BIN_EXE_lakegate"), &gateway_settings, |_| {})?;
    let gateway_url = format!("http://{}", gateway.address);
    let mut relay_settings: HashMap<String, String> = settings
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect();
    relay_settings.extend([
        (
            "LAKEGATE_DEVICE_KEYS_FILE".to_owned(),
            registry.display().to_string(),
        ),
        ("LAKEGATE_RELAY_KEY".to_owned(), relay_key),
        ("LAKEGATE_LISTEN_ADDR".to_owned(), "127.0.0.1".to_owned()),
    ]);
    let spool = dir.path().join("spool").display().to_string();
    let relay_args = ["relay", "--upstream", &gateway_url, "--spool", &spool];
    let relay = LakegateProcess::spawn_command(
        env!("CARGO_BIN_EXE_lakegate"),
        &relay_args,
        &relay_settings,
        |_| {},
    )?;
    let relay_url = format!("http://{}", relay.address);
    wait_until_ready(&gateway_url).await?;
    wait_until_ready(&relay_url).await?;

    let next_id = Arc::new(AtomicU64::new(0));
    let mut passes = Vec::new();
    let mut expected = 0;
    for (name, url) in [
        ("gateway (200 at commit)", &gateway_url),
        ("relay (202 after fsync)", &relay_url),
    ] {
        let (mut result, started) = pass(name, url, &devices, length, &next_id).await?;
        expected += result.acknowledged as i64;
        let count = async || workspace::row_count(&reader, TABLE).await.unwrap_or(-1);
        let landed = poll(
            Duration::from_secs(600),
            Duration::from_millis(50),
            count,
            |n| *n >= expected,
        )
        .await
        .map_err(|n| anyhow!("{name}: the table holds {n} of {expected} rows"))?;
        if landed != expected {
            bail!("{name}: the table holds {landed} rows, {expected} acknowledged");
        }
        result.landed_after = started.elapsed();
        passes.push(result);
    }

    println!(
        "\n{concurrency} devices, one connection each, {READINGS_PER_REQUEST} readings a request, {} s a pass\n",
        length.as_secs()
    );
    println!(
        "| path | acknowledged readings/s | refused | p50 | p99 | end to end (in the table) readings/s |"
    );
    println!("|---|---|---|---|---|---|");
    for p in &passes {
        println!(
            "| {} | {:.0} | {} | {} | {} | {:.0} |",
            p.name,
            p.acknowledged as f64 / p.took.as_secs_f64(),
            p.refused,
            percentile(&p.latencies, 0.5),
            percentile(&p.latencies, 0.99),
            p.acknowledged as f64 / p.landed_after.as_secs_f64(),
        );
    }
    let rate = |p: &Pass| p.acknowledged as f64 / p.took.as_secs_f64();
    println!(
        "\nrelay / gateway, acknowledged readings/s: {:.2}; every acknowledged reading is in the table once ({expected} rows)",
        rate(&passes[1]) / rate(&passes[0])
    );
    relay.terminate().await?;
    gateway.terminate().await?;
    Ok(())
}
