//! Load benchmark of `POST /ingest`: `cargo bench --bench ingest_load`.
//!
//! Starts the workspace emulator in this process, the `lakegate` binary as a
//! separate process in front of it, and drives the gateway over loopback from
//! here with concurrent keep-alive connections. For each scenario it prints
//! requests and readings per second and latency percentiles, next to the bare
//! `GET /healthz` route of the same binary, then checks that the table holds
//! exactly the rows of every acknowledged reading. The writers' passes then put each sink
//! (`LAKEGATE_SINK=sql`, MERGE statements slowed to a warehouse's latency, and `zerobus`,
//! acknowledgements held back by Zerobus' durability latency) under low load and under
//! saturation, side by side, and compare them. Last, an overload pass per sink floods a
//! gateway (slow writes, 100-metric readings) and samples its resident memory against
//! the write queue's byte budget. When `wrk` is installed, the bare route and the
//! one-reading ingest are also measured from a second process, in alternating rounds.
//! See docs/benchmark.md.
//!
//! `cargo bench --bench ingest_load -- sinks` runs only the sinks' passes.
//!
//! Settings (environment): `BENCH_CONCURRENCY` (32 connections), `BENCH_SECS`
//! (5 s measured per scenario), `BENCH_WARMUP_SECS` (1 s, discarded),
//! `BENCH_MAX_REQUESTS` (200000 per pass, a bound for fast machines).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use lakegate_emulator::Emulator;
use lakegate_testkit::{
    LakegateProcess, emulator_config, gateway_env, http_client_builder, poll, workspace,
};
use secrecy::ExposeSecret;

const TABLE: &str = "main.lakegate.bench_readings";
const DEVICE_ID: &str = "bench-1";
const BATCH: usize = 100;
/// Every reading carries these metrics: one table row each.
const METRICS: [&str; 2] = ["temperature", "humidity"];
/// The overload pass: readings of 100 metrics, 10 a request, queue budget 32 MiB, and
/// statements slow enough that the queue fills.
const WIDE_METRICS: usize = 100;
const WIDE_READINGS: usize = 10;
const OVERLOAD_QUEUE_BYTES: u64 = 32 * 1024 * 1024;
/// How slow each backend's writes are in the overload pass, so that the queue fills.
const OVERLOAD_LATENCY: Duration = Duration::from_secs(2);
/// What the gateway may hold beyond its queue: code, runtime, buffers of requests in flight.
const MEMORY_HEADROOM: u64 = 64 * 1024 * 1024;
/// Longer than the gateway's commit wait (30 s), so its own 503 comes first.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(45);

#[derive(Clone)]
struct Settings {
    concurrency: usize,
    measure: Duration,
    warmup: Duration,
    max_requests: u64,
    /// Only the sinks' passes (`cargo bench --bench ingest_load -- sinks`).
    sinks_only: bool,
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        fn number(name: &str, default: u64) -> anyhow::Result<u64> {
            match std::env::var(name) {
                Ok(raw) => match raw.trim().parse() {
                    Ok(value) if value > 0 => Ok(value),
                    _ => bail!("{name}={raw:?} is not a positive whole number"),
                },
                Err(_) => Ok(default),
            }
        }
        Ok(Settings {
            concurrency: number("BENCH_CONCURRENCY", 32)? as usize,
            measure: Duration::from_secs(number("BENCH_SECS", 5)?),
            warmup: Duration::from_secs(number("BENCH_WARMUP_SECS", 1)?),
            max_requests: number("BENCH_MAX_REQUESTS", 200_000)?,
            sinks_only: false,
        })
    }
}

#[derive(Clone, Copy)]
enum Target {
    Healthz,
    Ingest {
        wait_for_commit: bool,
        readings: usize,
    },
}

struct Scenario {
    name: &'static str,
    target: Target,
}

const SCENARIOS: [Scenario; 5] = [
    Scenario {
        name: "GET /healthz (bare route)",
        target: Target::Healthz,
    },
    Scenario {
        name: "POST /ingest?ack=accept, 1 reading",
        target: Target::Ingest {
            wait_for_commit: false,
            readings: 1,
        },
    },
    Scenario {
        name: "POST /ingest?ack=accept, 100 readings",
        target: Target::Ingest {
            wait_for_commit: false,
            readings: BATCH,
        },
    },
    Scenario {
        name: "POST /ingest (ack=commit), 1 reading",
        target: Target::Ingest {
            wait_for_commit: true,
            readings: 1,
        },
    },
    Scenario {
        name: "POST /ingest (ack=commit), 100 readings",
        target: Target::Ingest {
            wait_for_commit: true,
            readings: BATCH,
        },
    },
];

/// What one pass of a scenario observed.
#[derive(Default)]
struct Tally {
    /// Of every request, answered or not: failures cost the client time too.
    latencies: Vec<Duration>,
    /// Readings in 200/202 answers.
    acknowledged: u64,
    /// Readings the table must end up with: acknowledged ones, and those a
    /// 503 `not_yet_committed` says are queued and will still be written.
    to_be_written: u64,
    /// Readings of requests that got no answer: they may or may not be written.
    unknown_fate: u64,
    /// Non-2xx answers and transport failures, by status and error code.
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.latencies.extend(other.latencies);
        self.acknowledged += other.acknowledged;
        self.to_be_written += other.to_be_written;
        self.unknown_fate += other.unknown_fate;
        for (kind, count) in other.errors {
            *self.errors.entry(kind).or_default() += count;
        }
    }

    fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    fn record(&mut self, readings: usize, answer: reqwest::Result<(u16, bytes::Bytes)>) {
        let readings = readings as u64;
        let (status, body) = match answer {
            Ok(answer) => answer,
            Err(err) => {
                let kind = if err.is_timeout() {
                    "timeout"
                } else {
                    "transport"
                };
                *self.errors.entry(kind.to_owned()).or_default() += 1;
                self.unknown_fate += readings;
                return;
            }
        };
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        if (200..300).contains(&status) {
            // /healthz has no `accepted`; a reading rejected inside a request is not counted.
            let accepted = json["accepted"].as_u64().unwrap_or(0);
            self.acknowledged += accepted;
            self.to_be_written += accepted;
            return;
        }
        let code = json["error"].as_str().unwrap_or("?");
        if code == "not_yet_committed" {
            self.to_be_written += readings;
        }
        *self.errors.entry(format!("{status} {code}")).or_default() += 1;
    }
}

/// The load generator's view of the gateway.
#[derive(Clone)]
struct LoadClient {
    http: reqwest::Client,
    url: String,
    /// Device keys; worker `i` sends as device `i % keys.len()`.
    keys: Arc<[Arc<str>]>,
    /// This worker's key.
    key: Arc<str>,
    /// Wait as `Retry-After` says before the next request (the writers' passes), rather
    /// than resending at once.
    honours_retry_after: bool,
    /// Source of reading ids, unique across the run so that none is deduplicated.
    next_id: Arc<AtomicU64>,
    /// The metric names of every reading.
    metrics: Arc<[String]>,
}

impl LoadClient {
    /// The client of worker `index`, sending as its device.
    fn for_worker(&self, index: usize) -> LoadClient {
        LoadClient {
            key: self.keys[index % self.keys.len()].clone(),
            ..self.clone()
        }
    }

    /// A JSON array of `readings` readings, each with a fresh id.
    fn body(&self, readings: usize) -> String {
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis();
        let first = self.next_id.fetch_add(readings as u64, Ordering::Relaxed);
        let items: Vec<String> = (first..first + readings as u64)
            .map(|id| {
                let value = (id % 1000) as f64 / 10.0;
                let metrics: Vec<String> = self
                    .metrics
                    .iter()
                    .map(|name| format!("\"{name}\":{value}"))
                    .collect();
                format!(
                    "{{\"id\":\"r{id}\",\"ts\":{ts},\"metrics\":{{{}}}}}",
                    metrics.join(",")
                )
            })
            .collect();
        format!("[{}]", items.join(","))
    }

    fn request(&self, target: Target) -> (reqwest::RequestBuilder, usize) {
        match target {
            Target::Healthz => (self.http.get(format!("{}/healthz", self.url)), 0),
            Target::Ingest {
                wait_for_commit,
                readings,
            } => {
                let ack = if wait_for_commit { "" } else { "?ack=accept" };
                let request = self
                    .http
                    .post(format!("{}/ingest{ack}", self.url))
                    .header("X-API-Key", &*self.key)
                    .header("Content-Type", "application/json")
                    .body(self.body(readings));
                (request, readings)
            }
        }
    }
}

/// One connection's loop: a request, its whole answer, the next request.
async fn worker(
    gateway: LoadClient,
    target: Target,
    deadline: Instant,
    budget: Arc<AtomicU64>,
) -> Tally {
    let mut tally = Tally::default();
    while Instant::now() < deadline && take_one(&budget) {
        // The body is built before the clock starts: it is the device's work, not the gateway's.
        let (request, readings) = gateway.request(target);
        let started = Instant::now();
        let answer = async {
            let response = request.send().await?;
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
            Ok((status, retry_after, response.bytes().await?))
        }
        .await;
        tally.latencies.push(started.elapsed());
        let pause = match &answer {
            Ok((_, Some(secs), _)) if gateway.honours_retry_after => Some(*secs),
            _ => None,
        };
        tally.record(readings, answer.map(|(status, _, body)| (status, body)));
        // As a device does: wait as told, within the pass.
        if let Some(secs) = pause {
            let until = (Instant::now() + Duration::from_secs(secs)).min(deadline);
            tokio::time::sleep_until(until.into()).await;
        }
    }
    tally
}

fn take_one(budget: &AtomicU64) -> bool {
    budget
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
            left.checked_sub(1)
        })
        .is_ok()
}

/// Runs `concurrency` workers for `length` (or until the request budget is
/// spent) and waits for their last answers; returns the tally and the time taken.
async fn pass(
    gateway: &LoadClient,
    target: Target,
    settings: &Settings,
    length: Duration,
) -> (Tally, Duration) {
    let budget = Arc::new(AtomicU64::new(settings.max_requests));
    let started = Instant::now();
    let deadline = started + length;
    let workers: Vec<_> = (0..settings.concurrency)
        .map(|index| {
            let client = gateway.for_worker(index);
            tokio::spawn(worker(client, target, deadline, budget.clone()))
        })
        .collect();
    let mut tally = Tally::default();
    for worker in workers {
        tally.merge(worker.await.expect("worker task"));
    }
    (tally, started.elapsed())
}

/// The gateway's batch figures, read from its Prometheus endpoint.
#[derive(Default, Clone, Copy)]
struct BatchStats {
    statements: f64,
    statement_seconds: f64,
    rows: f64,
    /// Rows queued and not yet committed.
    queued: f64,
}

async fn batch_stats(gateway: &LoadClient) -> anyhow::Result<BatchStats> {
    let text = gateway
        .http
        .get(format!("{}/metrics", gateway.url))
        .send()
        .await?
        .text()
        .await?;
    let value = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    };
    Ok(BatchStats {
        statements: value("lakegate_statement_seconds_count"),
        statement_seconds: value("lakegate_statement_seconds_sum"),
        rows: value("lakegate_batch_rows_sum"),
        queued: value("lakegate_queue_rows"),
    })
}

struct Figures {
    name: &'static str,
    requests_per_sec: f64,
    readings_per_sec: Option<f64>,
    latencies: Vec<Duration>,
    errors: BTreeMap<String, u64>,
    statements: f64,
    statement_mean: Duration,
    rows_per_statement: f64,
    /// Time to commit the backlog left when the pass ended.
    drain: Duration,
}

/// Nearest-rank percentile of sorted latencies.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn print_table(rows: &[Figures], settings: &Settings) {
    let bare = rows.first().map_or(1.0, |row| row.requests_per_sec);
    println!(
        "\n{} connections, {} s measured per scenario after {} s of warm-up; latency in ms, \
         from sending a request to reading the whole answer\n",
        settings.concurrency,
        settings.measure.as_secs(),
        settings.warmup.as_secs()
    );
    println!(
        "| scenario | requests/s | readings/s | p50 | p90 | p99 | max | errors | requests/s vs /healthz |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for row in rows {
        let errors: u64 = row.errors.values().sum();
        println!(
            "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {:.3} |",
            row.name,
            row.requests_per_sec,
            row.readings_per_sec
                .map_or("-".to_owned(), |r| format!("{r:.0}")),
            ms(percentile(&row.latencies, 0.50)),
            ms(percentile(&row.latencies, 0.90)),
            ms(percentile(&row.latencies, 0.99)),
            ms(row.latencies.last().copied().unwrap_or_default()),
            errors,
            row.requests_per_sec / bare,
        );
    }
    println!("\nBatch statements the gateway ran during each measured pass (from its /metrics):\n");
    println!(
        "| scenario | statements | mean statement time (ms) | rows per statement | backlog committed after the pass in (s) |"
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    for row in rows.iter().skip(1) {
        println!(
            "| {} | {:.0} | {} | {:.0} | {:.1} |",
            row.name,
            row.statements,
            ms(row.statement_mean),
            row.rows_per_statement,
            row.drain.as_secs_f64()
        );
    }
    let failing: Vec<_> = rows.iter().filter(|row| !row.errors.is_empty()).collect();
    if !failing.is_empty() {
        println!("\nErrors by kind:");
        for row in failing {
            println!("  {}: {:?}", row.name, row.errors);
        }
    }
}

/// Warnings and errors a gateway logged, counted by level, message and
/// classification (tower-http's), for the report.
type Complaints = Arc<Mutex<BTreeMap<String, u64>>>;

/// The `lakegate` binary in front of `emulator`; `extra` settings override the defaults below.
fn spawn_gateway(
    emulator: &Emulator,
    registry: &Path,
    extra: &[(&str, &str)],
) -> anyhow::Result<(LakegateProcess, Complaints)> {
    // Limits far above what one box can send: we measure the path, not the quotas.
    let lifted = [
        ("LAKEGATE_GLOBAL_RATE_PER_SEC", "1000000000"),
        ("LAKEGATE_GLOBAL_BURST", "1000000000"),
        ("LAKEGATE_QUEUE_MAX_ROWS", "2000000"),
    ];
    let settings: Vec<_> = lifted.iter().chain(extra).copied().collect();
    spawn_gateway_with_defaults(emulator, registry, &settings)
}

/// The `lakegate` binary in front of `emulator` with its default settings, but for the
/// table and `extra`.
fn spawn_gateway_with_defaults(
    emulator: &Emulator,
    registry: &Path,
    extra: &[(&str, &str)],
) -> anyhow::Result<(LakegateProcess, Complaints)> {
    let settings: Vec<_> = [("LAKEGATE_TABLE", TABLE)]
        .iter()
        .chain(extra)
        .copied()
        .collect();
    let mut env = gateway_env(emulator, registry, &settings);
    // The registry is reloaded as often as deployed, not every second as in tests; the
    // linger is the deployed one; the log level is the deployed one (info).
    env.remove("LAKEGATE_KEYS_REFRESH_SECS");
    if !extra.iter().any(|(name, _)| *name == "LAKEGATE_LINGER_MS") {
        env.remove("LAKEGATE_LINGER_MS");
    }
    let complaints = Arc::new(Mutex::new(BTreeMap::new()));
    let counted = complaints.clone();
    let process = LakegateProcess::spawn(env!("CARGO_BIN_EXE_lakegate"), &env, move |log| {
        if let Some(level @ ("WARN" | "ERROR")) = log["level"].as_str() {
            let kind = format!(
                "{level} {} {}",
                log["message"].as_str().unwrap_or("?"),
                log["classification"].as_str().unwrap_or("")
            );
            *counted.lock().unwrap().entry(kind).or_insert(0) += 1;
        }
    })?;
    Ok((process, complaints))
}

/// Waits until the gateway has committed everything queued, so that one
/// scenario's backlog does not slow down the next; returns how long it took.
async fn wait_for_empty_queue(gateway: &LoadClient) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let (within, every) = (Duration::from_secs(300), Duration::from_millis(100));
    let stats = async || batch_stats(gateway).await;
    poll(
        within,
        every,
        stats,
        |stats| !matches!(stats, Ok(s) if s.queued > 0.0),
    )
    .await
    .map_err(|_| anyhow!("the write queue did not drain within 300 s"))??;
    Ok(started.elapsed())
}

async fn wait_until_ready(gateway: &LoadClient) -> anyhow::Result<()> {
    let ready = async || {
        let readyz = gateway.http.get(format!("{}/readyz", gateway.url));
        let answer = readyz.send().await;
        answer.is_ok_and(|response| response.status().is_success())
    };
    let (within, every) = (Duration::from_secs(60), Duration::from_millis(100));
    poll(within, every, ready, |ready| *ready)
        .await
        .map_err(|_| anyhow!("lakegate not ready within 60 s"))?;
    Ok(())
}

async fn run(settings: Settings, emulator: &Emulator) -> anyhow::Result<()> {
    // Removed when the run ends, after both gateways have stopped.
    let dir = lakegate_testkit::temp_dir();
    let registry = dir.path().join("devices.json");
    let key = lakegate::devices::generate_key()
        .key
        .expose_secret()
        .to_owned();
    // One device whose quota never binds for the scenarios; a fleet of such devices for
    // the writers' passes, whose rows spread over the writers by device.
    let fleet_keys: Vec<String> = (0..FLEET)
        .map(|_| {
            lakegate::devices::generate_key()
                .key
                .expose_secret()
                .to_owned()
        })
        .collect();
    let unlimited = |key: &str| {
        serde_json::json!({
            "keys": [lakegate::devices::hash_key(key)],
            "rate_per_sec": 1_000_000_000,
            "burst": 1_000_000_000,
        })
    };
    let mut devices = serde_json::Map::new();
    devices.insert(DEVICE_ID.to_owned(), unlimited(&key));
    for (n, fleet_key) in fleet_keys.iter().enumerate() {
        devices.insert(format!("fleet-{n:02}"), unlimited(fleet_key));
    }
    std::fs::write(
        &registry,
        serde_json::json!({ "devices": devices }).to_string(),
    )?;

    let (process, complaints) = spawn_gateway(emulator, &registry, &[])?;
    let http = http_client_builder()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(settings.concurrency)
        .build()?;
    let gateway = LoadClient {
        http,
        url: format!("http://{}", process.address),
        keys: Arc::from([Arc::from(key.as_str())]),
        key: key.into(),
        honours_retry_after: false,
        next_id: Arc::new(AtomicU64::new(0)),
        metrics: METRICS.iter().map(|name| (*name).to_owned()).collect(),
    };
    wait_until_ready(&gateway).await?;
    println!(
        "lakegate (pid {}) on {}; emulator on {}",
        process.child.id(),
        gateway.url,
        emulator.url()
    );

    let mut rows = Vec::new();
    let mut total = Tally::default();
    let scenarios: &[Scenario] = if settings.sinks_only { &[] } else { &SCENARIOS };
    for scenario in scenarios {
        eprintln!("running: {}", scenario.name);
        wait_for_empty_queue(&gateway).await?;
        let (warmup, _) = pass(&gateway, scenario.target, &settings, settings.warmup).await;
        total.merge(warmup);
        let before = batch_stats(&gateway).await?;
        let (mut tally, elapsed) =
            pass(&gateway, scenario.target, &settings, settings.measure).await;
        let after = batch_stats(&gateway).await?;
        let drain = wait_for_empty_queue(&gateway).await?;
        tally.latencies.sort_unstable();
        let secs = elapsed.as_secs_f64();
        let statements = after.statements - before.statements;
        rows.push(Figures {
            name: scenario.name,
            requests_per_sec: tally.latencies.len() as f64 / secs,
            readings_per_sec: matches!(scenario.target, Target::Ingest { .. })
                .then_some(tally.acknowledged as f64 / secs),
            latencies: std::mem::take(&mut tally.latencies),
            errors: tally.errors.clone(),
            statements,
            statement_mean: Duration::from_secs_f64(
                (after.statement_seconds - before.statement_seconds) / statements.max(1.0),
            ),
            rows_per_statement: (after.rows - before.rows) / statements.max(1.0),
            drain,
        });
        total.merge(tally);
    }
    if !settings.sinks_only {
        print_table(&rows, &settings);
        // One reading a round, sent again and again: written once.
        total.to_be_written +=
            second_process(&gateway, process.child.id(), dir.path(), &settings).await?;
    }
    let fleet = LoadClient {
        honours_retry_after: true,
        keys: fleet_keys
            .iter()
            .map(|key| Arc::from(key.as_str()))
            .collect(),
        ..gateway.clone()
    };
    let passes = write_passes(settings.sinks_only);
    let written = writers(emulator, &registry, &fleet, &settings, &passes).await?;
    let mut within_budget = Vec::new();
    for sink in [SQL_SINK, Backend::Zerobus(ZEROBUS_DURABILITY)] {
        let slow = sink.with_latency(OVERLOAD_LATENCY);
        let fits = overload(emulator, &registry, &gateway, &settings, slow).await?;
        within_budget.push((sink, fits));
    }
    print_sinks(&written, &within_budget);

    // Every acknowledged reading must reach the table exactly once.
    let reader = workspace::reader(&gateway_env(emulator, &registry, &[]));
    let expected = (total.to_be_written * METRICS.len() as u64) as i64;
    let waited = Instant::now();
    let (within, every) = (Duration::from_secs(30), Duration::from_millis(200));
    let count = async || workspace::row_count(&reader, TABLE).await;
    // Past the wait, the count is reported as it is (a mismatch fails the run below).
    let count = poll(
        within,
        every,
        count,
        |count| !matches!(count, Ok(n) if *n != expected),
    )
    .await
    .unwrap_or_else(|last| last)?;
    println!(
        "\nCheck: {} readings acknowledged ({} more queued behind a 503 not_yet_committed, \
         {} with no answer) x {} metrics = {expected} rows expected; the table holds {count} (after waiting {:.1} s for the \
         last flush): {}",
        total.acknowledged,
        total.to_be_written - total.acknowledged,
        total.unknown_fate,
        METRICS.len(),
        waited.elapsed().as_secs_f64(),
        if count == expected { "OK" } else { "MISMATCH" }
    );

    let (status, took) = process.terminate().await?;
    let after_stop = workspace::row_count(&reader, TABLE).await?;
    println!(
        "lakegate stopped on SIGTERM in {:.2} s ({status}); rows after the stop: {after_stop}",
        took.as_secs_f64()
    );
    let complaints = complaints.lock().unwrap();
    println!(
        "lakegate logged {} warnings or errors",
        complaints.values().sum::<u64>()
    );
    for (kind, count) in complaints.iter() {
        println!("  {count} x {kind}");
    }
    let all_errors = total.error_count();
    let stats = emulator.stats();
    println!(
        "emulator: {} statements, {} token requests; {all_errors} non-2xx or failed requests in all",
        stats.statements, stats.token_requests
    );
    if count != expected || after_stop != expected || !status.success() {
        bail!("the final check failed");
    }
    if within_budget.iter().any(|(_, fits)| !fits) {
        bail!("an overloaded gateway's memory went past its queue budget + headroom");
    }
    Ok(())
}

/// Alternating rounds of the second-process comparison, each a `/healthz` run and an
/// ingest run of `BENCH_SECS`.
const WRK_ROUNDS: u64 = 3;

/// What one `wrk` run reported.
#[derive(serde::Deserialize)]
struct WrkRun {
    requests: u64,
    duration_us: u64,
    /// Answers that were not 2xx or 3xx.
    status_errors: u64,
    socket_errors: u64,
    p50_us: u64,
    p99_us: u64,
    /// CPU the gateway and this process (the emulator) used during the run, in µs per
    /// request.
    #[serde(skip)]
    gateway_cpu_us: f64,
    #[serde(skip)]
    emulator_cpu_us: f64,
}

impl WrkRun {
    fn per_sec(&self) -> f64 {
        self.requests as f64 / (self.duration_us as f64 / 1e6)
    }
}

/// The throughput issue's own measure of the ingest route's cost: `wrk` (one thread,
/// `BENCH_CONCURRENCY` connections) from a second process, so that the load generator
/// costs the same for both routes, against `GET /healthz` and against
/// `POST /ingest?ack=accept` with one reading, in alternating rounds after a warm-up of
/// each. Each round sends one reading of its own over and over (a device resending: the
/// gateway writes it once), so a round writes one reading; returns how many were
/// acknowledged, for the final check. Skipped, with a note, without `wrk`.
async fn second_process(
    gateway: &LoadClient,
    gateway_pid: u32,
    dir: &Path,
    settings: &Settings,
) -> anyhow::Result<u64> {
    if std::process::Command::new("wrk")
        .arg("--version")
        .output()
        .is_err()
    {
        println!(
            "
wrk is not installed (apt-get install wrk): no second-process comparison"
        );
        return Ok(0);
    }
    let done = r#"done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('\n{"requests":%d,"duration_us":%d,"status_errors":%d,"socket_errors":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"#;
    let healthz = dir.join("healthz.lua");
    std::fs::write(&healthz, done)?;
    let ingest = |round: u64| -> anyhow::Result<std::path::PathBuf> {
        let ts = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
        let reading = format!(
            r#"[{{"id":"wrk-{round}-{ts}","ts":{ts},"metrics":{{"{}":21.5,"{}":40}}}}]"#,
            METRICS[0], METRICS[1]
        );
        let script = format!(
            "wrk.method = \"POST\"\nwrk.body = '{reading}'\n\
             wrk.headers[\"Content-Type\"] = \"application/json\"\n\
             wrk.headers[\"X-API-Key\"] = \"{}\"\n{done}",
            gateway.key
        );
        let path = dir.join(format!("ingest-{round}.lua"));
        std::fs::write(&path, script)?;
        Ok(path)
    };
    let run = async |script: &Path, path: &str, length: Duration| -> anyhow::Result<WrkRun> {
        let mut command = std::process::Command::new("wrk");
        command.args([
            "-t1".to_owned(),
            format!("-c{}", settings.concurrency),
            format!("-d{}s", length.as_secs().max(1)),
            "--latency".to_owned(),
            "-s".to_owned(),
            script.display().to_string(),
            format!("{}{path}", gateway.url),
        ]);
        let gateway_pid = gateway_pid.to_string();
        let cpu_before = (cpu_seconds(&gateway_pid)?, cpu_seconds("self")?);
        let output = tokio::task::spawn_blocking(move || command.output()).await??;
        let cpu_after = (cpu_seconds(&gateway_pid)?, cpu_seconds("self")?);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let report = stdout
            .lines()
            .rev()
            .find(|line| line.starts_with("{\"requests\""))
            .ok_or_else(|| anyhow!("wrk reported nothing: {stdout}"))?;
        let mut run: WrkRun = serde_json::from_str(report)?;
        let per_request = |seconds: f64| seconds * 1e6 / run.requests.max(1) as f64;
        run.gateway_cpu_us = per_request(cpu_after.0 - cpu_before.0);
        run.emulator_cpu_us = per_request(cpu_after.1 - cpu_before.1);
        Ok(run)
    };
    const INGEST: &str = "/ingest?ack=accept";
    eprintln!("running: wrk, /healthz and /ingest in alternating rounds");
    run(&healthz, "/healthz", settings.warmup).await?;
    let warmup = run(&ingest(0)?, INGEST, settings.warmup).await?;
    let mut written = u64::from(warmup.requests > warmup.status_errors);
    let mut rounds = Vec::new();
    for round in 1..=WRK_ROUNDS {
        let bare = run(&healthz, "/healthz", settings.measure).await?;
        let ingested = run(&ingest(round)?, INGEST, settings.measure).await?;
        written += u64::from(ingested.requests > ingested.status_errors);
        rounds.push((bare, ingested));
    }
    println!(
        "
Second process: wrk, 1 thread, {} connections, {} s a run, alternating rounds; \
         latency in ms\n",
        settings.concurrency,
        settings.measure.as_secs()
    );
    println!(
        "| round | GET /healthz requests/s | p50 | p99 | gateway CPU µs a request | POST /ingest?ack=accept, 1 reading, requests/s | p50 | p99 | gateway CPU µs a request | emulator CPU µs a request | non-2xx | socket errors | ingest vs /healthz |"
    );
    println!(
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let mut ratios = Vec::new();
    for (n, (bare, ingested)) in rounds.iter().enumerate() {
        let ratio = ingested.per_sec() / bare.per_sec();
        ratios.push(ratio);
        let ms = |us: u64| format!("{:.2}", us as f64 / 1000.0);
        println!(
            "| {} | {:.0} | {} | {} | {:.1} | {:.0} | {} | {} | {:.1} | {:.1} | {} | {} | {ratio:.3} |",
            n + 1,
            bare.per_sec(),
            ms(bare.p50_us),
            ms(bare.p99_us),
            bare.gateway_cpu_us,
            ingested.per_sec(),
            ms(ingested.p50_us),
            ms(ingested.p99_us),
            ingested.gateway_cpu_us,
            ingested.emulator_cpu_us,
            bare.status_errors + ingested.status_errors,
            bare.socket_errors + ingested.socket_errors,
        );
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "\nMedian ingest vs /healthz over {WRK_ROUNDS} rounds: {:.3}",
        ratios[ratios.len() / 2]
    );
    Ok(written)
}

/// Devices of the writers' passes (one connection each at most).
const FLEET: usize = 32;
/// The emulator's injected cost of each row a write inserts, on top of the latency.
const PER_ROW_COST: Duration = Duration::from_micros(5);
/// Zerobus' published durable acknowledgement (~150 ms): the Zerobus passes' model.
const ZEROBUS_DURABILITY: Duration = Duration::from_millis(150);
/// Requests of the low-load pass (one at a time, one reading, commit acknowledgement).
const LOW_LOAD_REQUESTS: u64 = 10;

/// Where the gateway writes, and how slow the emulator makes that backend.
#[derive(Clone, Copy, PartialEq)]
enum Backend {
    /// The SQL sink: MERGE statements through the warehouse, each taking this long plus
    /// [`PER_ROW_COST`] a row.
    Warehouse(Duration),
    /// The Zerobus sink: each write acknowledged as durable this long after it.
    Zerobus(Duration),
}

impl Backend {
    /// The gateway's settings for this sink.
    fn settings(self, emulator: &Emulator) -> Vec<(&'static str, String)> {
        match (self, emulator.zerobus_addr()) {
            (Backend::Warehouse(_), _) => vec![],
            (Backend::Zerobus(_), Some(addr)) => vec![
                ("LAKEGATE_SINK", "zerobus".to_owned()),
                ("LAKEGATE_ZEROBUS_ENDPOINT", format!("http://{addr}")),
            ],
            (Backend::Zerobus(_), None) => panic!("the bench's emulator serves Zerobus"),
        }
    }

    /// The emulator's faults that model this backend.
    fn faults(self) -> lakegate_emulator::Faults {
        match self {
            Backend::Warehouse(latency) => lakegate_emulator::Faults {
                statement_latency: latency,
                statement_cost: Some(lakegate_emulator::StatementCost {
                    fixed: Duration::ZERO,
                    per_row: PER_ROW_COST,
                }),
                ..Default::default()
            },
            Backend::Zerobus(durability_latency) => lakegate_emulator::Faults {
                zerobus: lakegate_emulator::ZerobusFaults {
                    durability_latency,
                    ..Default::default()
                },
                ..Default::default()
            },
        }
    }

    /// The same sink with writes taking `latency`.
    fn with_latency(self, latency: Duration) -> Backend {
        match self {
            Backend::Warehouse(_) => Backend::Warehouse(latency),
            Backend::Zerobus(_) => Backend::Zerobus(latency),
        }
    }

    fn sink(self) -> &'static str {
        match self {
            Backend::Warehouse(_) => "sql",
            Backend::Zerobus(_) => "zerobus",
        }
    }

    /// The model, as the tables state it.
    fn describe(self) -> String {
        match self {
            Backend::Warehouse(latency) => format!(
                "sql: {:.1} s statements + {} µs a row",
                latency.as_secs_f64(),
                PER_ROW_COST.as_micros()
            ),
            Backend::Zerobus(latency) => {
                format!("zerobus: durable ack {} ms", latency.as_millis())
            }
        }
    }
}

/// The writers' passes: a fast warehouse and a realistic MERGE into a growing Delta table
/// (1.5 s), then Zerobus at its published durability latency; each with one writer and
/// with the default number. `sinks_only` keeps the two sinks' realistic models.
fn write_passes(sinks_only: bool) -> Vec<(Backend, &'static str)> {
    let backends = [
        Backend::Warehouse(Duration::from_millis(200)),
        SQL_SINK,
        Backend::Zerobus(ZEROBUS_DURABILITY),
    ];
    backends
        .into_iter()
        .filter(|backend| !sinks_only || *backend != Backend::Warehouse(Duration::from_millis(200)))
        .flat_map(|backend| [(backend, "1"), (backend, "default")])
        .collect()
}

/// The SQL sink as the sink comparison models it: the writers' realistic statements.
const SQL_SINK: Backend = Backend::Warehouse(Duration::from_millis(1500));

/// What one writers' pass measured.
struct WriterFigures {
    backend: Backend,
    writers: &'static str,
    low_load: Vec<Duration>,
    landed_rows_per_sec: f64,
    accepted_rows_per_sec: f64,
    /// Gateway CPU (user + system) during the saturated pass, per reading landed.
    cpu_per_reading: Duration,
    statements_per_1000_rows: f64,
    rows_per_statement: f64,
    refusals: BTreeMap<String, u64>,
    high_water: u64,
    /// Mean write time beyond the injected latency and per-row cost: the emulator's own
    /// work (a real warehouse's or Zerobus' would be in the latency).
    beyond_model: Duration,
}

/// The writers under each pass's backend (see [`write_passes`]), a fresh gateway each (its
/// other settings the defaults). First a low-load pass (one request at a time, one
/// reading, commit acknowledgement) for the commit latency, then `FLEET` devices
/// saturating it with 100-reading requests (`ack=accept`), each waiting as `Retry-After`
/// says when refused, as devices do: rows committed per second, rows accepted per second,
/// gateway CPU per reading, writes per 1,000 rows and peak memory. Each pass writes a
/// table of its own, so that what the earlier passes wrote does not slow the emulator's
/// writes, and checks it holds every acknowledged reading once.
async fn writers(
    emulator: &Emulator,
    registry: &Path,
    fleet: &LoadClient,
    settings: &Settings,
    passes: &[(Backend, &'static str)],
) -> anyhow::Result<Vec<WriterFigures>> {
    let mut figures = Vec::new();
    let reader = workspace::reader(&gateway_env(emulator, registry, &[]));
    for (n, &(backend, writers)) in passes.iter().enumerate() {
        eprintln!("running: writers {writers}, {}", backend.describe());
        let table = format!("{TABLE}_writers_{n}_{}_{writers}", backend.sink());
        let sink = backend.settings(emulator);
        let mut extra: Vec<(&str, &str)> = sink.iter().map(|(k, v)| (*k, v.as_str())).collect();
        extra.push(("LAKEGATE_TABLE", table.as_str()));
        if writers == "1" {
            extra.push(("LAKEGATE_WRITERS", "1"));
        }
        let (process, _) = spawn_gateway_with_defaults(emulator, registry, &extra)?;
        let gateway = LoadClient {
            url: format!("http://{}", process.address),
            ..fleet.clone()
        };
        wait_until_ready(&gateway).await?;
        emulator.set_faults(backend.faults());
        let one_at_a_time = Settings {
            concurrency: 1,
            max_requests: LOW_LOAD_REQUESTS,
            ..settings.clone()
        };
        let low = Target::Ingest {
            wait_for_commit: true,
            readings: 1,
        };
        let (mut low_load, _) = pass(&gateway, low, &one_at_a_time, Duration::from_secs(120)).await;
        low_load.latencies.sort_unstable();
        let saturated = Settings {
            concurrency: FLEET,
            ..settings.clone()
        };
        let flood = Target::Ingest {
            wait_for_commit: false,
            readings: BATCH,
        };
        // A warm-up that fills the writers' pipeline, then the measured pass.
        let warmup_length = match backend {
            Backend::Warehouse(latency) | Backend::Zerobus(latency) => latency * 2,
        };
        let (warmup, _) = pass(
            &gateway,
            flood,
            &saturated,
            warmup_length.max(settings.warmup),
        )
        .await;
        let pid = process.child.id().to_string();
        let before = batch_stats(&gateway).await?;
        let cpu_before = cpu_seconds(&pid)?;
        let (tally, elapsed) = pass(&gateway, flood, &saturated, settings.measure * 2).await;
        let cpu = cpu_seconds(&pid)? - cpu_before;
        let after = batch_stats(&gateway).await?;
        let (_, high_water) = memory_of(process.child.id())?;
        emulator.set_faults(lakegate_emulator::Faults::default());
        wait_for_empty_queue(&gateway).await?;
        let to_be_written = low_load.to_be_written + warmup.to_be_written + tally.to_be_written;
        let expected = (to_be_written * METRICS.len() as u64) as i64;
        let held = workspace::row_count(&reader, &table).await?;
        if held != expected {
            bail!("{table} holds {held} rows, {expected} acknowledged");
        }
        let secs = elapsed.as_secs_f64();
        let rows = after.rows - before.rows;
        let statements = after.statements - before.statements;
        let modelled = match backend {
            Backend::Warehouse(latency) => {
                latency.as_secs_f64() + PER_ROW_COST.as_secs_f64() * rows / statements.max(1.0)
            }
            Backend::Zerobus(latency) => latency.as_secs_f64(),
        };
        let statement_mean =
            (after.statement_seconds - before.statement_seconds) / statements.max(1.0);
        let readings = rows / METRICS.len() as f64;
        figures.push(WriterFigures {
            backend,
            writers,
            low_load: low_load.latencies.clone(),
            landed_rows_per_sec: rows / secs,
            accepted_rows_per_sec: (tally.acknowledged * METRICS.len() as u64) as f64 / secs,
            cpu_per_reading: Duration::from_secs_f64(cpu / readings.max(1.0)),
            statements_per_1000_rows: statements / (rows / 1000.0).max(f64::MIN_POSITIVE),
            rows_per_statement: rows / statements.max(1.0),
            refusals: tally.errors.clone(),
            high_water,
            beyond_model: Duration::from_secs_f64((statement_mean - modelled).max(0.0)),
        });
        let (status, _) = process.terminate().await?;
        if !status.success() {
            bail!("the gateway did not stop cleanly: {status}");
        }
    }
    print_writers(&figures);
    Ok(figures)
}

fn print_writers(figures: &[WriterFigures]) {
    println!(
        "\nWriters under each backend's model (sql: MERGE statements slowed by the emulator \
         to the latency, plus {} µs a row; zerobus: acknowledgements held back by the \
         emulator's durability latency); low load: one request at a time, 1 reading, \
         ack=commit; saturated: {FLEET} devices, {BATCH}-reading requests, ack=accept, \
         waiting as Retry-After says when refused. Rows committed are counted by the \
         gateway as its writes succeed (the final check confirms the table); a write is \
         a MERGE statement (sql) or a batch acknowledged durable (zerobus).\n",
        PER_ROW_COST.as_micros()
    );
    println!(
        "| backend | writers | commit-ack p50 (low load) | p99 | landed rows/s | accepted rows/s | gateway CPU µs a reading | writes per 1,000 rows | rows per write | emulator's own time per write (ms) | peak RSS (MiB) | refusals |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
    for row in figures {
        println!(
            "| {} | {} | {} | {} | {:.0} | {:.0} | {:.1} | {:.3} | {:.0} | {} | {:.0} | {:?} |",
            row.backend.describe(),
            row.writers,
            ms(percentile(&row.low_load, 0.50)),
            ms(percentile(&row.low_load, 0.99)),
            row.landed_rows_per_sec,
            row.accepted_rows_per_sec,
            row.cpu_per_reading.as_secs_f64() * 1e6,
            row.statements_per_1000_rows,
            row.rows_per_statement,
            ms(row.beyond_model),
            row.high_water as f64 / (1024.0 * 1024.0),
            row.refusals,
        );
    }
    for one in figures.iter().filter(|row| row.writers == "1") {
        let many = figures
            .iter()
            .find(|row| row.backend == one.backend && row.writers == "default");
        if let Some(many) = many {
            println!(
                "{}: the default writers land {:.2}x one writer",
                one.backend.describe(),
                many.landed_rows_per_sec / one.landed_rows_per_sec.max(f64::MIN_POSITIVE)
            );
        }
    }
}

/// The issue's targets for the Zerobus sink against the SQL sink, from the default
/// writers' passes of both and the overload passes.
fn print_sinks(figures: &[WriterFigures], within_budget: &[(Backend, bool)]) {
    let default_of = |backend: Backend| {
        figures
            .iter()
            .find(|row| row.backend == backend && row.writers == "default")
    };
    let zerobus = Backend::Zerobus(ZEROBUS_DURABILITY);
    let (Some(sql), Some(zb)) = (default_of(SQL_SINK), default_of(zerobus)) else {
        return;
    };
    let verdict = |met: bool| if met { "met" } else { "NOT met" };
    println!("\nZerobus sink against the SQL sink (default writers, same machine, same load):");
    let ratio = zb.landed_rows_per_sec / sql.landed_rows_per_sec.max(f64::MIN_POSITIVE);
    println!(
        "  landed rows/s: {:.0} ({}) against {:.0} ({}): {ratio:.2}x; target >= 2x: {}",
        zb.landed_rows_per_sec,
        zb.backend.describe(),
        sql.landed_rows_per_sec,
        sql.backend.describe(),
        verdict(ratio >= 2.0)
    );
    let p50 = percentile(&zb.low_load, 0.50);
    let bound = Duration::from_millis(100) + ZEROBUS_DURABILITY;
    println!(
        "  commit-ack at low load: p50 {} ms, p99 {} ms (sql: p50 {} ms); target p50 < \
         100 ms + {} ms durability = {} ms: {}",
        ms(p50),
        ms(percentile(&zb.low_load, 0.99)),
        ms(percentile(&sql.low_load, 0.50)),
        ZEROBUS_DURABILITY.as_millis(),
        bound.as_millis(),
        verdict(p50 < bound)
    );
    println!(
        "  gateway CPU a reading landed: {:.1} µs (zerobus) against {:.1} µs (sql); peak \
         RSS {:.0} MiB against {:.0} MiB",
        zb.cpu_per_reading.as_secs_f64() * 1e6,
        sql.cpu_per_reading.as_secs_f64() * 1e6,
        zb.high_water as f64 / (1024.0 * 1024.0),
        sql.high_water as f64 / (1024.0 * 1024.0),
    );
    for (backend, fits) in within_budget {
        println!(
            "  memory flat under overload, {}: {}",
            backend.sink(),
            verdict(*fits)
        );
    }
}

/// Resident and peak resident memory of a process, in bytes (Linux).
/// CPU time a process has used (user + system), from `/proc/<pid>/stat`, in seconds of
/// 100 clock ticks (Linux's `USER_HZ`).
fn cpu_seconds(pid: &str) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |n: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(n)
            .with_context(|| format!("no field {n} in /proc/{pid}/stat"))?
            .parse::<f64>()?)
    };
    // utime and stime are fields 14 and 15, the 12th and 13th after the name.
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

fn memory_of(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |name: &str| {
        status
            .lines()
            .find_map(|line| {
                line.strip_prefix(name)?
                    .trim()
                    .strip_suffix(" kB")?
                    .parse::<u64>()
                    .ok()
            })
            .map(|kib| kib * 1024)
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok((kib("VmRSS:")?, kib("VmHWM:")?))
}

/// A second gateway writing through `sink`, its queue capped at `OVERLOAD_QUEUE_BYTES`,
/// flooded with wide readings while every write takes `OVERLOAD_LATENCY` (statements, or
/// durable acknowledgements): its resident memory must stay within the queue budget plus
/// `MEMORY_HEADROOM`, and its table must hold every acknowledged reading once. Whether
/// memory stayed within the budget.
async fn overload(
    emulator: &Emulator,
    registry: &Path,
    first: &LoadClient,
    settings: &Settings,
    sink: Backend,
) -> anyhow::Result<bool> {
    eprintln!("running: overload, {}", sink.sink());
    let queue_bytes = OVERLOAD_QUEUE_BYTES.to_string();
    let table = format!("{TABLE}_overload_{}", sink.sink());
    let sink_settings = sink.settings(emulator);
    let mut extra: Vec<(&str, &str)> = sink_settings
        .iter()
        .map(|(name, value)| (*name, value.as_str()))
        .collect();
    extra.extend([
        ("LAKEGATE_TABLE", table.as_str()),
        ("LAKEGATE_QUEUE_MAX_BYTES", queue_bytes.as_str()),
        // Smaller requests than the default 1000 x 100 rows, so that one fits the budget.
        ("LAKEGATE_MAX_READINGS_PER_REQUEST", "100"),
    ]);
    let (process, _) = spawn_gateway(emulator, registry, &extra)?;
    let gateway = LoadClient {
        url: format!("http://{}", process.address),
        metrics: (0..WIDE_METRICS).map(|i| format!("m{i:03}")).collect(),
        ..first.clone()
    };
    wait_until_ready(&gateway).await?;
    let pid = process.child.id();
    let (idle, _) = memory_of(pid)?;
    emulator.set_faults(sink.faults());

    let sampling = Arc::new(AtomicU64::new(1));
    let sampler = {
        let sampling = sampling.clone();
        let url = gateway.url.clone();
        let http = gateway.http.clone();
        tokio::spawn(async move {
            let (mut peak_rss, mut peak_queue) = (0u64, 0f64);
            while sampling.load(Ordering::Relaxed) == 1 {
                if let Ok((rss, _)) = memory_of(pid) {
                    peak_rss = peak_rss.max(rss);
                }
                if let Ok(text) = async {
                    http.get(format!("{url}/metrics"))
                        .send()
                        .await?
                        .text()
                        .await
                }
                .await
                {
                    let queued = text.lines().find_map(|line| {
                        line.strip_prefix("lakegate_queue_bytes ")?
                            .parse::<f64>()
                            .ok()
                    });
                    peak_queue = peak_queue.max(queued.unwrap_or(0.0));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (peak_rss, peak_queue)
        })
    };
    let target = Target::Ingest {
        wait_for_commit: false,
        readings: WIDE_READINGS,
    };
    let length = settings.measure * 2;
    let (tally, elapsed) = pass(&gateway, target, settings, length).await;
    sampling.store(0, Ordering::Relaxed);
    let (peak_rss, peak_queue) = sampler.await?;
    let (_, high_water) = memory_of(pid)?;
    emulator.set_faults(lakegate_emulator::Faults::default());
    let drain = wait_for_empty_queue(&gateway).await?;

    let mib = |bytes: f64| bytes / (1024.0 * 1024.0);
    let budget = OVERLOAD_QUEUE_BYTES + MEMORY_HEADROOM;
    let within_budget = high_water <= budget;
    println!(
        "\nOverload, {}: {} connections for {:.1} s, requests of {WIDE_READINGS} readings x \
         {WIDE_METRICS} metrics (ack=accept), queue budget {:.0} MiB",
        sink.describe(),
        settings.concurrency,
        elapsed.as_secs_f64(),
        mib(OVERLOAD_QUEUE_BYTES as f64),
    );
    println!(
        "  readings acknowledged: {} ({:.0}/s); refusals: {:?}",
        tally.acknowledged,
        tally.acknowledged as f64 / elapsed.as_secs_f64(),
        tally.errors
    );
    println!(
        "  gateway memory: {:.1} MiB idle, {:.1} MiB peak sampled, {:.1} MiB high-water \
         (VmHWM); queue held at most {:.1} MiB; budget {:.0} MiB (queue + {:.0} MiB): {}",
        mib(idle as f64),
        mib(peak_rss as f64),
        mib(high_water as f64),
        mib(peak_queue),
        mib(budget as f64),
        mib(MEMORY_HEADROOM as f64),
        if within_budget { "OK" } else { "OVER" }
    );
    println!(
        "  backlog committed {:.1} s after the pass",
        drain.as_secs_f64()
    );
    let (status, _) = process.terminate().await?;
    if !status.success() {
        bail!("the overloaded gateway did not stop cleanly: {status}");
    }
    let reader = workspace::reader(&gateway_env(emulator, registry, &[]));
    let expected = (tally.to_be_written * WIDE_METRICS as u64) as i64;
    let held = workspace::row_count(&reader, &table).await?;
    if held != expected {
        bail!("{table} holds {held} rows, {expected} acknowledged");
    }
    Ok(within_budget)
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; the one filter is `sinks`.
    let mut settings = Settings::from_env()?;
    for arg in std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with("--"))
    {
        match arg.as_str() {
            "sinks" => settings.sinks_only = true,
            _ => bail!("unknown filter {arg:?}: the one filter is `sinks`"),
        }
    }
    // The emulator gets its own runtime: DataFusion runs statements on its
    // worker threads, and must not stall the load generator's timers and sockets.
    let workspace = tokio::runtime::Runtime::new()?;
    let config = lakegate_emulator::EmulatorConfig {
        zerobus: Some(([127, 0, 0, 1], 0).into()),
        ..emulator_config()
    };
    let emulator = workspace.block_on(Emulator::start(config))?;
    let outcome = tokio::runtime::Runtime::new()?.block_on(run(settings, &emulator));
    workspace.block_on(emulator.shutdown());
    outcome
}
