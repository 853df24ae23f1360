//! Sends readings from Rust, the way firmware with a Rust runtime would:
//!
//! ```sh
//! LAKEGATE_UPSTREAM=http://127.0.0.1:8000 LAKEGATE_DEVICE_KEY=lgk_... \
//!   cargo run -p lakegate-device --example send_readings
//! ```
//!
//! In front of a Databricks App, also set `DATABRICKS_HOST`, `DATABRICKS_CLIENT_ID` and
//! `DATABRICKS_CLIENT_SECRET`: the OAuth token for the Apps proxy is then kept fresh.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lakegate_databricks::{Config, Settings};
use lakegate_device::Upstream;
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let upstream_url = std::env::var("LAKEGATE_UPSTREAM")?;
    let key = std::env::var("LAKEGATE_DEVICE_KEY")?;
    let vars: HashMap<String, String> = std::env::vars().collect();
    let workspace = match vars.contains_key("DATABRICKS_HOST") {
        true => Some(Config::resolve(Settings::default(), &vars)?),
        false => None,
    };
    let upstream = Upstream::new(&upstream_url, key.into(), workspace.as_ref())?;

    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
    let readings: Vec<_> = (0..3)
        .map(|n| {
            json!({
                "id": format!("example-{now_ms}-{n}"),
                "ts": now_ms - 1000 * (2 - n),
                "metrics": {"temperature": 20.5 + n as f64, "door_open": n == 1},
            })
        })
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let settled = upstream.deliver_retrying(&readings, Some(deadline)).await;
    let taken = readings.len() - settled.refused.len() - settled.left.len();
    let readings_of = |n: usize| lakegate_device::counted(n as u64, "reading", "readings");
    println!("{} committed", readings_of(taken));
    for refusal in settled.refused {
        println!(
            "reading {} refused: {}: {}",
            refusal.index, refusal.reason, refusal.message
        );
    }
    if !settled.left.is_empty() {
        let why = settled.why.unwrap_or_default();
        println!("{} not delivered: {why}", readings_of(settled.left.len()));
    }
    Ok(())
}
