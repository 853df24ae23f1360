//! Registry benchmark at fleet scale: `cargo bench --bench registry`.
//!
//! Puts a registry of `BENCH_DEVICES` devices (100,000 by default) into the
//! in-process workspace emulator's Secrets API, spread over the base secret and its
//! shards as `lakegate keys device add` places them, then measures what the gateway does
//! with it: the first load (every shard read), the confirming reload, a steady reload
//! (one listing, nothing read), a reload after one shard changed, the heap the loaded
//! registry holds (a counting allocator), and the cost of one key lookup next to the
//! same lookup in a registry of 1,000 devices, measured side by side. See
//! docs/benchmark.md.

// The heap figures come from a counting allocator: the only unsafe code in the workspace.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lakegate::databricks::{Client, Config, Secrets, Settings};
use lakegate::devices::{KeySource, Registry, hash_key, shard_key};
use lakegate_testkit::{PAT, emulator_config, start_emulator};
use serde_json::{Map, Value, json};

const SCOPE: &str = "fleet";
const BASE: &str = "devices";
const SMALL_FLEET: usize = 1_000;
const LOOKUPS: usize = 200_000;

fn key_of(n: usize) -> String {
    format!("lgk_bench-device-key-{n:08}")
}

fn device_of(n: usize) -> String {
    format!("meter-{n:08}")
}

/// The parts of a registry of `devices` devices, as `lakegate keys add` would have
/// written them: each device in its shard (the base stays empty at this size).
fn parts(devices: usize) -> BTreeMap<String, Map<String, Value>> {
    let mut parts: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for n in 0..devices {
        let device = device_of(n);
        let entry = json!({"keys": [hash_key(&key_of(n))]});
        parts
            .entry(shard_key(BASE, &device))
            .or_default()
            .insert(device, entry);
    }
    parts
}

/// The system allocator, counting the bytes live on the heap and their peak, so that
/// what the loaded registry holds is told from what loading it took for a moment.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged to the system allocator.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Nanoseconds per lookup of a known key, over keys spread across the fleet.
fn lookup_ns(registry: &Registry, devices: usize) -> f64 {
    let keys: Vec<String> = (0..1_000).map(|i| key_of(i * devices / 1_000)).collect();
    let started = Instant::now();
    for i in 0..LOOKUPS {
        let device = registry.authenticate(&keys[i % keys.len()]);
        black_box(device.is_ok());
    }
    started.elapsed().as_nanos() as f64 / LOOKUPS as f64
}

async fn timed<T>(
    what: &str,
    run: impl AsyncFnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<(T, Duration)> {
    let started = Instant::now();
    let value = run().await.with_context(|| what.to_owned())?;
    Ok((value, started.elapsed()))
}

fn main() -> anyhow::Result<()> {
    let devices: usize = match std::env::var("BENCH_DEVICES") {
        Ok(raw) => raw.parse().context("BENCH_DEVICES")?,
        Err(_) => 100_000,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run(devices))
}

async fn run(devices: usize) -> anyhow::Result<()> {
    let emulator = start_emulator(emulator_config()).await;
    let settings = Settings {
        host: Some(emulator.url()),
        token: Some(PAT.into()),
        ..Settings::default()
    };
    let secrets = Client::new(&Config::resolve(settings, &Default::default())?)?.secrets();
    secrets.create_scope(SCOPE).await?;

    let started = Instant::now();
    let parts = parts(devices);
    let largest = put_parts(&secrets, &parts).await?;
    println!(
        "registry: {devices} devices in {} secrets (largest {largest} bytes of 131072), written in {:.1} s",
        parts.len(),
        started.elapsed().as_secs_f64()
    );

    let source = KeySource::parse_secret_ref(&format!("{SCOPE}/{BASE}"))?;
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let (registry, first) = timed("first load", async || {
        Ok(source.load(Some(&secrets)).await?)
    })
    .await?;
    let (held, peak) = (
        LIVE.load(Ordering::Relaxed).saturating_sub(before),
        PEAK.load(Ordering::Relaxed).saturating_sub(before),
    );
    if registry.device_count() != devices {
        bail!("loaded {} devices of {devices}", registry.device_count());
    }
    let (_, confirming) = timed("confirming reload", async || {
        Ok(source.load(Some(&secrets)).await?)
    })
    .await?;
    let (steady_registry, steady) = timed("steady reload", async || {
        Ok(source.load(Some(&secrets)).await?)
    })
    .await?;
    if !Arc::ptr_eq(&registry, &steady_registry) {
        bail!("a reload with nothing changed rebuilt the registry");
    }

    // One device revoked: one shard changes.
    let changed_device = device_of(devices / 2);
    let shard = shard_key(BASE, &changed_device);
    let mut smaller = parts[&shard].clone();
    smaller.remove(&changed_device);
    secrets
        .put_string(SCOPE, &shard, &json!({ "devices": smaller }).to_string())
        .await?;
    let (changed_registry, one_changed) = timed("reload after one change", async || {
        Ok(source.load(Some(&secrets)).await?)
    })
    .await?;
    if changed_registry.authenticate(&key_of(devices / 2)).is_ok() {
        bail!("the revoked device still authenticates");
    }

    let small = small_registry()?;
    let (large_ns, small_ns) = (
        lookup_ns(&registry, devices),
        lookup_ns(&small, SMALL_FLEET),
    );
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
    println!("| measure | {devices} devices |");
    println!("| --- | --- |");
    println!(
        "| first load (list + {} reads + index) | {} |",
        parts.len(),
        ms(first)
    );
    println!(
        "| confirming reload (every part read once more) | {} |",
        ms(confirming)
    );
    println!(
        "| steady reload (one listing, nothing read) | {} |",
        ms(steady)
    );
    println!("| reload after one shard changed | {} |", ms(one_changed));
    println!(
        "| heap held by the loaded registry | {} ({} bytes a device) |",
        mib(held),
        held / devices
    );
    println!("| heap peak while loading | {} |", mib(peak));
    println!(
        "| key lookup | {large_ns:.0} ns; {small_ns:.0} ns at {SMALL_FLEET} devices: ratio {:.2} |",
        large_ns / small_ns
    );
    emulator.shutdown().await;
    Ok(())
}

/// Writes every part; returns the largest part's size.
async fn put_parts(
    secrets: &Secrets,
    parts: &BTreeMap<String, Map<String, Value>>,
) -> anyhow::Result<usize> {
    let mut largest = 0;
    for (key, devices) in parts {
        let text = json!({ "devices": devices }).to_string();
        largest = largest.max(text.len());
        secrets.put_string(SCOPE, key, &text).await?;
    }
    Ok(largest)
}

fn small_registry() -> anyhow::Result<Registry> {
    let devices: Map<String, Value> = parts(SMALL_FLEET).into_values().flatten().collect();
    Ok(Registry::parse(
        json!({ "devices": devices }).to_string().as_bytes(),
    )?)
}
