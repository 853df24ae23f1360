//! The Zerobus sink in real `lakegate` processes in front of the emulator's Zerobus
//! service: killed with SIGKILL mid-stream (commit acks lose nothing acknowledged, accept
//! acks lose only what was still queued), stopped with SIGTERM (the queue drains through
//! Zerobus), and local mode with `--sink zerobus`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lakegate::databricks::{Client, StatementRequest, Value};
use lakegate_emulator::{Emulator, ZerobusFaults};
use lakegate_testkit::gateway::metric_at;
use lakegate_testkit::{TABLE, emulator_config, eventually_async, start_emulator, temp_dir};
use serde_json::json;
use tokio::task::JoinHandle;

use super::local_mode::{LocalMode, ingest, sql};
use super::resilience::{FLEET, GatewayProcess, sigterm_flushes_queued_readings};

pub(crate) const VIEW: &str = "main.lakegate.readings_dedup";

/// An emulator serving Zerobus, each acknowledgement `durability` after its write.
async fn zerobus_emulator(durability: Duration) -> Emulator {
    let mut config = emulator_config();
    config.zerobus = Some(([127, 0, 0, 1], 0).into());
    config.faults.zerobus = ZerobusFaults {
        durability_latency: durability,
        ..ZerobusFaults::default()
    };
    start_emulator(config).await
}

/// The settings that make a gateway write through `emulator`'s Zerobus service.
fn zerobus_settings(emulator: &Emulator) -> [(&'static str, String); 2] {
    let address = emulator
        .zerobus_addr()
        .expect("the emulator serves Zerobus");
    [
        ("LAKEGATE_SINK", "zerobus".to_owned()),
        ("LAKEGATE_ZEROBUS_ENDPOINT", format!("http://{address}")),
    ]
}

/// A gateway process writing through `emulator`'s Zerobus service, with `extra` settings.
fn zerobus_gateway(emulator: &Emulator, extra: &[(&str, &str)]) -> GatewayProcess {
    let zerobus = zerobus_settings(emulator);
    let settings: Vec<(&str, &str)> = zerobus
        .iter()
        .map(|(name, value)| (*name, value.as_str()))
        .chain(extra.iter().copied())
        .collect();
    GatewayProcess::start(emulator, &settings)
}

/// A reading a device heard acknowledged (200 or 202).
#[derive(Clone, Debug)]
pub(crate) struct Ack {
    pub(crate) device: String,
    /// Its place in the device's sequence; its id is `r-{n}`.
    pub(crate) n: usize,
    /// The gateway (`IP:PORT`) that acknowledged it.
    pub(crate) by: String,
}

impl Ack {
    pub(crate) fn identity(&self) -> (String, String) {
        (self.device.clone(), format!("r-{}", self.n))
    }
}

/// Devices sending one reading after another, each until it is acknowledged, to whichever
/// address the gateway listens at now. A refusal (429, 503) or a broken connection is
/// counted and the same reading (same id and `ts`) sent again, as devices do.
pub(crate) struct Fleet {
    address: Arc<Mutex<String>>,
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<Ack>>>,
    refused: Arc<AtomicUsize>,
    tasks: Vec<JoinHandle<()>>,
}

impl Fleet {
    /// `devices`: (device id, key); `query(n)`: the ack mode of device `n`'s requests.
    pub(crate) fn start(
        address: &str,
        devices: &[(String, String)],
        query: impl Fn(usize) -> &'static str,
    ) -> Fleet {
        let fleet = Fleet {
            address: Arc::new(Mutex::new(address.to_owned())),
            stop: Arc::default(),
            acks: Arc::default(),
            refused: Arc::default(),
            tasks: Vec::new(),
        };
        let tasks = devices
            .iter()
            .enumerate()
            .map(|(d, (device, key))| {
                let (address, stop) = (fleet.address.clone(), fleet.stop.clone());
                let (acks, refused) = (fleet.acks.clone(), fleet.refused.clone());
                let (device, key, query) = (device.clone(), key.clone(), query(d));
                tokio::spawn(async move {
                    let http = lakegate_testkit::http_client();
                    for n in 0.. {
                        let ts = chrono::Utc::now().to_rfc3339();
                        let body = json!({"id": format!("r-{n}"), "ts": ts, "metrics": {"seq": n}});
                        loop {
                            if stop.load(Ordering::Relaxed) {
                                return;
                            }
                            let by = address.lock().unwrap().clone();
                            let sent = http
                                .post(format!("http://{by}/ingest{query}"))
                                .header("X-API-Key", &key)
                                .json(&body)
                                .send()
                                .await;
                            match sent.as_ref().map(|r| r.status().as_u16()) {
                                Ok(200 | 202) => {
                                    let device = device.clone();
                                    acks.lock().unwrap().push(Ack { device, n, by });
                                    break;
                                }
                                Ok(429 | 503) | Err(_) => {
                                    refused.fetch_add(1, Ordering::Relaxed);
                                    // A device's pause before sending again.
                                    tokio::time::sleep(Duration::from_millis(100)).await;
                                }
                                Ok(other) => panic!("{device}: unexpected {other}"),
                            }
                        }
                    }
                })
            })
            .collect();
        Fleet { tasks, ..fleet }
    }

    /// The devices of a [`GatewayProcess`] (`sensor-1` ...).
    fn of(gateway: &GatewayProcess, query: impl Fn(usize) -> &'static str) -> Fleet {
        let devices: Vec<(String, String)> = (gateway.keys.iter().enumerate())
            .map(|(n, key)| (format!("sensor-{}", n + 1), key.clone()))
            .collect();
        Fleet::start(&gateway.process.address, &devices, query)
    }

    pub(crate) fn acknowledged(&self) -> usize {
        self.acks.lock().unwrap().len()
    }

    /// Requests refused or cut off so far.
    pub(crate) fn refused(&self) -> usize {
        self.refused.load(Ordering::Relaxed)
    }

    /// Waits (up to 60 s) until `n` readings were acknowledged in all.
    pub(crate) async fn wait_for(&self, n: usize) {
        let what = format!("{n} acknowledged readings");
        eventually_async(Duration::from_secs(60), &what, async || {
            self.acknowledged() >= n
        })
        .await;
    }

    /// From now on the devices send to `address`.
    fn moved_to(&self, address: &str) {
        *self.address.lock().unwrap() = address.to_owned();
    }

    /// Stops the devices (a reading not yet acknowledged is dropped); every acknowledgement.
    pub(crate) async fn stop(self) -> Vec<Ack> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        Arc::try_unwrap(self.acks).unwrap().into_inner().unwrap()
    }
}

/// How many rows of `from` each (device, reading) has.
pub(crate) async fn identities(reader: &Client, from: &str) -> BTreeMap<(String, String), usize> {
    let sql = format!("SELECT device_id, reading_id FROM {from}");
    let rows = reader
        .statements()
        .execute(StatementRequest::new(sql))
        .await
        .unwrap()
        .collect_rows()
        .await
        .unwrap();
    let mut counts = BTreeMap::new();
    for row in rows {
        let [Value::String(device), Value::String(reading)] = &row[..] else {
            panic!("unexpected row {row:?}");
        };
        *counts.entry((device.clone(), reading.clone())).or_default() += 1;
    }
    counts
}

/// Every acknowledged reading is in the view exactly once and in the table at least once.
pub(crate) async fn assert_each_once_in_the_view(reader: &Client, acks: &[Ack]) {
    let in_view = identities(reader, VIEW).await;
    let in_table = identities(reader, TABLE).await;
    for ack in acks {
        let identity = ack.identity();
        assert_eq!(in_view.get(&identity), Some(&1), "{ack:?} in the view");
        assert!(in_table.contains_key(&identity), "{ack:?} in the table");
    }
    assert!(in_view.values().all(|n| *n == 1), "a duplicate in the view");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_stream_with_commit_acks_loses_nothing_acknowledged() {
    let emulator = zerobus_emulator(Duration::from_millis(200)).await;
    let mut gateway = zerobus_gateway(&emulator, &[]);
    let fleet = Fleet::of(&gateway, |_| "?ack=commit");
    fleet.wait_for(40).await;
    // Every device has a request waiting for its acknowledgement.
    gateway.kill_and_restart();
    fleet.moved_to(&gateway.process.address);
    let at_kill = fleet.acknowledged();
    fleet.wait_for(at_kill + 40).await;
    assert!(fleet.refused() > 0, "the kill cut no request off");
    let acks = fleet.stop().await;

    assert_each_once_in_the_view(&gateway.reader(), &acks).await;
    gateway.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_stream_with_accept_acks_loses_only_readings_still_queued() {
    // The queue's bound is what accept acks may lose.
    const QUEUE_ROWS: usize = 200;
    let emulator = zerobus_emulator(Duration::from_millis(200)).await;
    let queue = QUEUE_ROWS.to_string();
    let settings = [
        ("LAKEGATE_QUEUE_MAX_ROWS", queue.as_str()),
        // A queue that small must hold the largest request.
        ("LAKEGATE_MAX_READINGS_PER_REQUEST", "1"),
        ("LAKEGATE_MAX_METRICS_PER_READING", "4"),
    ];
    let mut gateway = zerobus_gateway(&emulator, &settings);
    // The last device asks for commit acks: its readings are durable once answered.
    let committing = format!("sensor-{FLEET}");
    let fleet = Fleet::of(&gateway, |d| {
        if d == FLEET - 1 {
            "?ack=commit"
        } else {
            "?ack=accept"
        }
    });
    fleet.wait_for(2 * QUEUE_ROWS).await;
    let reader = gateway.reader();
    let durable_before = identities(&reader, TABLE).await;
    let killed = gateway.process.address.clone();
    gateway.kill_and_restart();
    fleet.moved_to(&gateway.process.address);
    let at_kill = fleet.acknowledged();
    fleet.wait_for(at_kill + 40).await;
    assert!(fleet.refused() > 0, "the kill cut no request off");
    let acks = fleet.stop().await;
    // SIGTERM drains what the new process accepted.
    gateway.terminate().await;

    let landed = identities(&reader, TABLE).await;
    let missing: Vec<_> = durable_before
        .keys()
        .filter(|identity| !landed.contains_key(*identity))
        .collect();
    assert!(
        missing.is_empty(),
        "durable before the kill, gone: {missing:?}"
    );
    let lost: Vec<&Ack> = acks
        .iter()
        .filter(|ack| !landed.contains_key(&ack.identity()))
        .collect();
    eprintln!(
        "{} of {} acknowledged readings lost",
        lost.len(),
        acks.len()
    );
    assert!(lost.len() <= QUEUE_ROWS, "more lost than the queue holds");
    for ack in &lost {
        assert_eq!(ack.by, killed, "{ack:?}: lost, not by the killed process");
        assert_ne!(ack.device, committing, "{ack:?}: committed, then lost");
    }
    // The queue keeps each device's order: what a device lost is the tail of what the
    // killed process accepted from it, never a reading before one that landed.
    let first_lost: BTreeMap<&str, usize> = lost.iter().fold(BTreeMap::new(), |mut m, ack| {
        let n = m.entry(ack.device.as_str()).or_insert(ack.n);
        *n = (*n).min(ack.n);
        m
    });
    let after_a_loss: BTreeSet<_> = acks
        .iter()
        .filter(|ack| ack.by == killed)
        .filter(|ack| {
            first_lost
                .get(ack.device.as_str())
                .is_some_and(|n| ack.n > *n)
        })
        .filter(|ack| landed.contains_key(&ack.identity()))
        .map(Ack::identity)
        .collect();
    assert!(
        after_a_loss.is_empty(),
        "landed after a lost one: {after_a_loss:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_queued_readings_through_zerobus() {
    let emulator = zerobus_emulator(Duration::from_millis(200)).await;
    let zerobus = zerobus_settings(&emulator);
    let settings: Vec<(&str, &str)> = (zerobus.iter())
        .map(|(name, value)| (*name, value.as_str()))
        .collect();
    sigterm_flushes_queued_readings(&emulator, &settings, VIEW).await;
    // Written through Zerobus, once each.
    assert_eq!(emulator.stats().zerobus_records, (10 * FLEET * 3) as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_mode_with_the_zerobus_sink_lands_readings_through_zerobus() {
    let dir = temp_dir();
    let local = LocalMode::start(dir.path(), 0, &["serve", "--sink", "zerobus"]);
    let url = local.url();
    let key = local.value("LAKEGATE_DEVICE_KEY=");
    assert_eq!(ingest(&url, &key, "through-zerobus").await, 200);
    let http = lakegate_testkit::http_client();
    let ready = http.get(format!("{url}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let opened = metric_at(&http, &url, "lakegate_zerobus_streams_opened_total").await;
    assert!(opened >= 1.0, "no Zerobus stream was opened");

    let out = sql(
        dir.path(),
        "SELECT reading_id, metric, value FROM main.lakegate.readings_dedup",
        &[],
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(table.contains("through-zerobus"), "{table}");
    assert!(table.contains("(1 row"), "{table}");
}
