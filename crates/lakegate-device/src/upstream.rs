//! The way up: batches of readings to a lakegate gateway's `POST /api/ingest`, gzip
//! compressed, with the default commit acknowledgement, the sender's key in
//! `X-API-Key` and, in front of a Databricks App, an OAuth token kept fresh by the
//! client's token source (the Apps proxy admits bearer tokens on `/api/` routes).
//!
//! What an answer means for the batch is [`Delivery`]: committed (with the readings
//! the gateway refused for good), retry the same batch (it is safe: readings keep their
//! identity, so a batch committed twice is written once), split it, or stop.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use flate2::Compression;
use flate2::write::GzEncoder;
use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use lakegate_databricks::{self as databricks, RetryPolicy, TokenSource, parse_retry_after};
use tokio::time::Instant;

/// The header the gateway reads a device's (or a relay's) key from.
const API_KEY_HEADER: &str = "X-API-Key";

/// Longest one upstream request may take, the gateway's commit wait included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest a reachability check may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Upstream {
    ingest_url: String,
    healthz_url: String,
    key: SecretString,
    tokens: Option<Arc<dyn TokenSource>>,
    http: reqwest::Client,
}

/// A reading the gateway refused, by its index in the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub index: usize,
    pub reason: String,
    pub message: String,
}

impl Refused {
    /// Refused for now only: its device is over its rate (a relay's batch).
    pub fn is_transient(&self) -> bool {
        self.reason == "device_rate_limited"
    }
}

/// What the upstream's answer means for the batch.
#[derive(Debug)]
pub enum Delivery {
    /// Committed to the table, but for the readings listed, which retrying cannot fix.
    Committed { refused: Vec<Refused> },
    /// Not taken now (throttled, busy, unreachable, not committed yet): the same batch
    /// again, after at least `after` when the upstream said so.
    Retry {
        after: Option<Duration>,
        why: String,
    },
    /// Larger than the upstream takes in one request: send it in halves.
    TooLarge,
    /// Retrying will not help until someone acts (a refused key, a disabled device).
    Stop { why: String },
}

impl Upstream {
    /// `base` is the gateway's URL (`https://<app>.databricksapps.com` or a gateway of
    /// one's own); `workspace`, when given, is where OAuth tokens for the Apps proxy
    /// come from.
    pub fn new(
        base: &str,
        key: SecretString,
        workspace: Option<&databricks::Config>,
    ) -> Result<Upstream, databricks::Error> {
        let tokens = workspace
            .map(|config| {
                databricks::Client::new(config).map(|client| client.api().token_source().clone())
            })
            .transpose()?;
        let http = databricks::http_client()?;
        let base = base.trim_end_matches('/');
        Ok(Upstream {
            ingest_url: format!("{base}/api/ingest"),
            healthz_url: format!("{base}/healthz"),
            key,
            tokens,
            http,
        })
    }

    /// OAuth token fetches for the Apps proxy so far (none without a workspace).
    pub fn token_fetches(&self) -> databricks::TokenFetches {
        self.tokens
            .as_ref()
            .map_or_else(Default::default, |tokens| tokens.fetches())
    }

    /// Whether the upstream answers its liveness route (`/healthz`), with a token for the
    /// Apps proxy when one is configured; why not, if it does not.
    pub async fn check_reachable(&self) -> Result<(), String> {
        let mut request = self.http.get(&self.healthz_url).timeout(PROBE_TIMEOUT);
        if let Some(tokens) = &self.tokens {
            let token = tokens
                .token()
                .await
                .map_err(|err| format!("no OAuth token for the Apps proxy: {err}"))?;
            request = request.bearer_auth(token.expose_secret());
        }
        match request.send().await {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(format!("upstream /healthz answered {}", response.status())),
            Err(err) => Err(format!("upstream unreachable: {}", err.without_url())),
        }
    }

    /// Sends one batch and tells what became of it.
    pub async fn deliver(&self, readings: &[Value]) -> Delivery {
        let body = gzip(&serde_json::to_vec(readings).expect("JSON values serialize"));
        let mut request = self
            .http
            .post(&self.ingest_url)
            .query(&[("ack", "commit")])
            .timeout(REQUEST_TIMEOUT)
            .header(CONTENT_TYPE, "application/json")
            .header(CONTENT_ENCODING, "gzip")
            .header(API_KEY_HEADER, self.key.expose_secret())
            .body(body);
        if let Some(tokens) = &self.tokens {
            match tokens.token().await {
                Ok(token) => request = request.bearer_auth(token.expose_secret()),
                Err(err) => {
                    return Delivery::Retry {
                        after: err.retry_after(),
                        why: format!("no OAuth token for the Apps proxy: {err}"),
                    };
                }
            }
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(err) => {
                return Delivery::Retry {
                    after: None,
                    // Without the URL: it may carry a query an operator considers private.
                    why: format!("upstream unreachable: {}", err.without_url()),
                };
            }
        };
        let status = response.status().as_u16();
        let after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| parse_retry_after(value, SystemTime::now()));
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let code = body["error"].as_str().unwrap_or("").to_owned();
        let why = || {
            let message = body["message"].as_str().unwrap_or("no message");
            format!("upstream answered {status} {code}: {message}")
        };
        match status {
            200 | 202 => Delivery::Committed {
                refused: refused(&body),
            },
            // Every reading refused: nothing to write, nothing to retry.
            400 if code == "no_valid_readings" => Delivery::Committed {
                refused: refused(&body),
            },
            413 if readings.len() > 1 => Delivery::TooLarge,
            408 | 429 | 500..=599 => Delivery::Retry { after, why: why() },
            _ => Delivery::Stop { why: why() },
        }
    }
}

impl Upstream {
    /// Delivers `readings` (in halves when too large), retrying what the upstream did
    /// not take, honouring `Retry-After`, until it is committed, the upstream says to
    /// stop, or the next wait would pass `deadline` (`None`: one attempt). Returns the
    /// readings refused for good (by index in `readings`), or why nothing was committed.
    pub async fn deliver_retrying(
        &self,
        readings: &[Value],
        deadline: Option<Instant>,
    ) -> Result<Vec<Refused>, String> {
        let mut schedule = RetryPolicy::batch_writes().schedule();
        let started = Instant::now();
        loop {
            let (after, why) = match self.deliver(readings).await {
                Delivery::Committed { refused } => {
                    let (later, settled): (Vec<Refused>, Vec<Refused>) =
                        refused.into_iter().partition(Refused::is_transient);
                    if later.is_empty() {
                        return Ok(settled);
                    }
                    // Readings over their device's rate (a relay's batch): again, later.
                    let again: Vec<Value> =
                        later.iter().map(|r| readings[r.index].clone()).collect();
                    let wait = schedule
                        .next_wait(started.elapsed(), None)
                        .unwrap_or(Duration::from_secs(30));
                    if deadline.is_none_or(|deadline| Instant::now() + wait > deadline) {
                        return Ok(settled.into_iter().chain(later).collect());
                    }
                    tokio::time::sleep(wait).await;
                    let retried = Box::pin(self.deliver_retrying(&again, deadline)).await?;
                    let mapped = retried.into_iter().map(|r| Refused {
                        index: later[r.index].index,
                        ..r
                    });
                    return Ok(settled.into_iter().chain(mapped).collect());
                }
                Delivery::TooLarge => {
                    let (left, right) = readings.split_at(readings.len() / 2);
                    let mut refused = Box::pin(self.deliver_retrying(left, deadline)).await?;
                    let right_refused = Box::pin(self.deliver_retrying(right, deadline)).await?;
                    refused.extend(right_refused.into_iter().map(|r| Refused {
                        index: r.index + left.len(),
                        ..r
                    }));
                    return Ok(refused);
                }
                Delivery::Stop { why } => return Err(why),
                Delivery::Retry { after, why } => (after, why),
            };
            let wait = schedule
                .next_wait(started.elapsed(), after)
                .unwrap_or(Duration::from_secs(30));
            match deadline {
                Some(deadline) if Instant::now() + wait <= deadline => {}
                Some(_) => return Err(format!("gave up at the deadline; last: {why}")),
                None => return Err(why),
            }
            tracing::debug!(?wait, %why, "retrying the batch");
            tokio::time::sleep(wait).await;
        }
    }
}

fn refused(body: &Value) -> Vec<Refused> {
    let Some(list) = body["rejected"].as_array() else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|entry| {
            Some(Refused {
                index: usize::try_from(entry["index"].as_u64()?).ok()?,
                reason: entry["reason"].as_str().unwrap_or("unknown").to_owned(),
                message: entry["message"].as_str().unwrap_or_default().to_owned(),
            })
        })
        .collect()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(bytes.len() / 4), Compression::fast());
    encoder.write_all(bytes).expect("writing to memory");
    encoder.finish().expect("writing to memory")
}
