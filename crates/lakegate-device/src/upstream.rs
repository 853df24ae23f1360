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
    whoami_url: String,
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

    /// The same reading (device, id, ts) is earlier in the batch, which took it: a resend,
    /// written once, so a success.
    pub fn is_duplicate(&self) -> bool {
        self.reason == "duplicate_id"
    }
}

/// Whose key the upstream says a key is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyCheck {
    Relay {
        id: String,
    },
    Device {
        id: String,
    },
    /// The upstream refuses the key (unknown, or disabled).
    Refused {
        why: String,
    },
    /// No answer to judge by (unreachable, an older gateway, a proxy in the way).
    Unchecked {
        why: String,
    },
}

/// What the upstream's answer means for the batch.
#[derive(Debug)]
pub enum Delivery {
    /// Taken, as a lakegate answer says: committed to the table (or spooled by a relay
    /// upstream), but for the readings listed, some of which may go again later
    /// ([`Refused::is_transient`]), after `retry_after` when the upstream said.
    Taken {
        refused: Vec<Refused>,
        retry_after: Option<Duration>,
    },
    /// Not taken now (throttled, busy, unreachable, not committed yet, an answer that is
    /// not lakegate's): the same batch again, after at least `after` when the upstream
    /// said so.
    Retry {
        after: Option<Duration>,
        why: String,
    },
    /// Larger than the upstream takes in one request: send it in halves.
    TooLarge,
    /// Retrying will not help until someone acts (a refused key, a disabled device).
    Stop { why: String },
}

/// What became of a batch after retrying: the readings neither refused nor left were
/// taken (written once upstream).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Settled {
    /// Readings refused for good, by index: retrying cannot fix them.
    pub refused: Vec<Refused>,
    /// Readings not taken (yet), by index, in order: they go again later.
    pub left: Vec<usize>,
    /// Why some readings were left.
    pub why: Option<String>,
    /// When the left readings may go again, if the upstream said.
    pub retry_after: Option<Duration>,
    /// The left readings (by index, a part of `left`) left only because their device is
    /// over its rate: they go again at the upstream's pace, and nothing is failing.
    pub rate_limited: Vec<usize>,
}

impl Settled {
    /// Every one of `count` readings left, for `why`.
    fn none_taken(count: usize, why: String, retry_after: Option<Duration>) -> Settled {
        Settled {
            refused: Vec::new(),
            left: (0..count).collect(),
            why: Some(why),
            retry_after,
            rate_limited: Vec::new(),
        }
    }

    /// Whether nothing of the batch was taken or settled.
    pub fn took_nothing(&self, count: usize) -> bool {
        self.refused.is_empty() && self.left.len() == count
    }

    /// Adds what became of a part of the batch whose reading `i` is `indices[i]` here.
    pub fn merge(&mut self, part: Settled, indices: &[usize]) {
        self.refused
            .extend(part.refused.into_iter().map(|r| Refused {
                index: indices[r.index],
                ..r
            }));
        self.left
            .extend(part.left.into_iter().map(|index| indices[index]));
        if part.why.is_some() {
            self.why = part.why;
        }
        self.retry_after = match (self.retry_after, part.retry_after) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.rate_limited
            .extend(part.rate_limited.into_iter().map(|index| indices[index]));
    }
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
            whoami_url: format!("{base}/api/whoami"),
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

    /// Who the upstream says this key belongs to (`GET /api/whoami`), writing nothing.
    pub async fn check_key(&self) -> KeyCheck {
        let mut request = self.http.get(&self.whoami_url).timeout(PROBE_TIMEOUT);
        request = request.header(API_KEY_HEADER, self.key.expose_secret());
        if let Some(tokens) = &self.tokens {
            match tokens.token().await {
                Ok(token) => request = request.bearer_auth(token.expose_secret()),
                Err(err) => {
                    return KeyCheck::Unchecked {
                        why: format!("no OAuth token for the Apps proxy: {err}"),
                    };
                }
            }
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(err) => {
                return KeyCheck::Unchecked {
                    why: format!("upstream unreachable: {}", err.without_url()),
                };
            }
        };
        let status = response.status().as_u16();
        let body = read_capped(response).await.unwrap_or_default();
        let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let text = |field: &str| json[field].as_str().unwrap_or_default().to_owned();
        match (status, json["sender"].as_str()) {
            (200, Some("relay")) => KeyCheck::Relay { id: text("id") },
            (200, Some("device")) => KeyCheck::Device { id: text("id") },
            (401 | 403, _) if !text("error").is_empty() => KeyCheck::Refused {
                why: format!("{} {}: {}", status, text("error"), text("message")),
            },
            _ => KeyCheck::Unchecked {
                why: format!(
                    "upstream answered /api/whoami with {status}: {}",
                    excerpt(&body)
                ),
            },
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
        let bytes = match read_capped(response).await {
            Ok(bytes) => bytes,
            Err(why) => {
                return Delivery::Retry {
                    after,
                    why: format!("upstream answered {status} but {why}"),
                };
            }
        };
        judge(status, &bytes, readings.len(), after)
    }
}

/// Longest answer read from the upstream: a lakegate answer lists at most one refusal
/// per reading, each a few hundred bytes.
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// The answer's body, at most [`MAX_ANSWER_BYTES`] of it.
async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) if body.len() + chunk.len() > MAX_ANSWER_BYTES => {
                return Err(format!(
                    "its answer is longer than {MAX_ANSWER_BYTES} bytes"
                ));
            }
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => return Ok(body),
            Err(err) => return Err(format!("its answer broke off: {}", err.without_url())),
        }
    }
}

/// What an answer of `status` with `body` means for a batch of `count` readings.
/// Readings count as taken only when a lakegate answer says so: a 200 with
/// `committed: true` (a gateway), a 202 with `spooled: true` (a relay upstream), or 400
/// `no_valid_readings` listing every reading. Any other 2xx (a login page, a proxy's
/// own answer) takes nothing; so does a redirect, which is never followed.
pub(crate) fn judge(
    status: u16,
    body: &[u8],
    count: usize,
    retry_after: Option<Duration>,
) -> Delivery {
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let code = json["error"].as_str().unwrap_or("");
    let why = || match code {
        "" => format!(
            "upstream answered {status} without a lakegate error: {}",
            excerpt(body)
        ),
        _ => format!(
            "upstream answered {status} {code}: {}",
            json["message"].as_str().unwrap_or("no message")
        ),
    };
    let says_taken = match status {
        200 => json["committed"] == Value::Bool(true),
        202 => json["spooled"] == Value::Bool(true),
        _ => false,
    };
    if says_taken {
        return match refusals(&json, count, json["accepted"].as_u64()) {
            Some(refused) => Delivery::Taken {
                refused,
                retry_after,
            },
            None => Delivery::Retry {
                after: retry_after,
                why: format!(
                    "upstream answered {status} with counts that do not match the {count} \
                     readings sent; not counted as taken"
                ),
            },
        };
    }
    match status {
        200..=299 => Delivery::Retry {
            after: retry_after,
            why: format!(
                "upstream answered {status} but not as lakegate commits (no `committed: true` \
                 or `spooled: true`): {}",
                excerpt(body)
            ),
        },
        // Every reading refused, or over its device's rate (a relay's batch): each has
        // its reason.
        400 | 429 if matches!(code, "no_valid_readings" | "device_rate_limited") => {
            match refusals(&json, count, Some(0)) {
                Some(refused) => Delivery::Taken {
                    refused,
                    retry_after,
                },
                None if status == 429 => Delivery::Retry {
                    after: retry_after,
                    why: why(),
                },
                None => Delivery::Stop { why: why() },
            }
        }
        300..=399 => Delivery::Retry {
            after: retry_after,
            why: format!(
                "upstream answered a redirect ({status}), which is not followed: is the \
                 upstream URL right, and does the Apps proxy get a token?"
            ),
        },
        413 if count > 1 => Delivery::TooLarge,
        // One reading larger than the upstream takes: it never will.
        413 => Delivery::Taken {
            refused: vec![Refused {
                index: 0,
                reason: if code.is_empty() {
                    "body_too_large"
                } else {
                    code
                }
                .to_owned(),
                message: why(),
            }],
            retry_after: None,
        },
        408 | 429 | 500..=599 => Delivery::Retry {
            after: retry_after,
            why: why(),
        },
        401 => Delivery::Stop {
            why: format!(
                "{}; the upstream refuses this key (for a relay: LAKEGATE_RELAY_KEY)",
                why()
            ),
        },
        _ => Delivery::Stop { why: why() },
    }
}

/// The refusals a lakegate answer lists, when they fit a batch of `count` readings and,
/// with the readings taken (`accepted`), account for each of them exactly once.
fn refusals(json: &Value, count: usize, accepted: Option<u64>) -> Option<Vec<Refused>> {
    let list = json["rejected"].as_array()?;
    let mut refused = Vec::with_capacity(list.len());
    let mut seen = std::collections::HashSet::new();
    for entry in list {
        let index = usize::try_from(entry["index"].as_u64()?).ok()?;
        if index >= count || !seen.insert(index) {
            return None;
        }
        refused.push(Refused {
            index,
            reason: entry["reason"].as_str().unwrap_or("unknown").to_owned(),
            message: entry["message"].as_str().unwrap_or_default().to_owned(),
        });
    }
    let accepted = usize::try_from(accepted?).ok()?;
    (accepted + refused.len() == count).then_some(refused)
}

/// The start of an answer that is not lakegate's, for a log line.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(120) {
        Some((cut, _)) => format!("{:?}…", &text[..cut]),
        None if text.is_empty() => "an empty body".to_owned(),
        None => format!("{text:?}"),
    }
}

impl Upstream {
    /// Delivers `readings` (in halves when too large), retrying what the upstream did
    /// not take, honouring `Retry-After`, until all are taken or refused for good, the
    /// upstream says to stop, or the next wait would pass `deadline` (`None`: one
    /// attempt). What was taken is never sent again: only the readings left (`Settled::left`)
    /// are.
    pub async fn deliver_retrying(&self, readings: &[Value], deadline: Option<Instant>) -> Settled {
        self.deliver_within(readings, deadline, true).await
    }

    /// [`Upstream::deliver_retrying`], but readings over their device's rate are left at
    /// once (in `Settled::rate_limited`) rather than waited for: a forwarder paces each
    /// device on its own, so that one slow device does not hold up the others.
    pub async fn deliver_paced(&self, readings: &[Value], deadline: Option<Instant>) -> Settled {
        self.deliver_within(readings, deadline, false).await
    }

    async fn deliver_within(
        &self,
        readings: &[Value],
        deadline: Option<Instant>,
        wait_for_rates: bool,
    ) -> Settled {
        let mut schedule = RetryPolicy::batch_writes().schedule();
        let started = Instant::now();
        let fits =
            |wait: Duration| deadline.is_some_and(|deadline| Instant::now() + wait <= deadline);
        loop {
            let (after, why) = match self.deliver(readings).await {
                Delivery::Taken {
                    refused,
                    retry_after,
                } => {
                    let mut settled = Settled::default();
                    let mut later = Vec::new();
                    for refusal in refused {
                        if refusal.is_transient() {
                            later.push(refusal.index);
                        } else if !refusal.is_duplicate() {
                            settled.refused.push(refusal);
                        }
                    }
                    if later.is_empty() {
                        return settled;
                    }
                    // Readings over their device's rate: only they go again, at the
                    // pace the upstream asks.
                    let wait = retry_after.unwrap_or(RATE_LIMITED_WAIT);
                    if !wait_for_rates || !fits(wait) {
                        let left = Settled {
                            rate_limited: (0..later.len()).collect(),
                            ..Settled::none_taken(
                                later.len(),
                                "readings over their device's rate".to_owned(),
                                Some(wait),
                            )
                        };
                        settled.merge(left, &later);
                        return settled;
                    }
                    tokio::time::sleep(wait).await;
                    let again: Vec<Value> = later.iter().map(|&i| readings[i].clone()).collect();
                    let retried =
                        Box::pin(self.deliver_within(&again, deadline, wait_for_rates)).await;
                    settled.merge(retried, &later);
                    return settled;
                }
                Delivery::TooLarge => {
                    let half = readings.len() / 2;
                    let (left, right) = readings.split_at(half);
                    let mut settled = Settled::default();
                    let first = Box::pin(self.deliver_within(left, deadline, wait_for_rates)).await;
                    settled.merge(first, &(0..half).collect::<Vec<_>>());
                    let second =
                        Box::pin(self.deliver_within(right, deadline, wait_for_rates)).await;
                    settled.merge(second, &(half..readings.len()).collect::<Vec<_>>());
                    return settled;
                }
                Delivery::Stop { why } => return Settled::none_taken(readings.len(), why, None),
                Delivery::Retry { after, why } => (after, why),
            };
            let wait = schedule
                .next_wait(started.elapsed(), after)
                .unwrap_or(Duration::from_secs(30));
            if !fits(wait) {
                return Settled::none_taken(readings.len(), why, after);
            }
            tracing::debug!(?wait, %why, "retrying the batch");
            tokio::time::sleep(wait).await;
        }
    }
}

/// How long readings over their device's rate wait when the upstream named no time.
const RATE_LIMITED_WAIT: Duration = Duration::from_secs(1);

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(bytes.len() / 4), Compression::fast());
    encoder.write_all(bytes).expect("writing to memory");
    encoder.finish().expect("writing to memory")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judged(status: u16, body: &str, count: usize) -> Delivery {
        judge(status, body.as_bytes(), count, None)
    }

    #[test]
    fn only_a_lakegate_answer_that_says_so_counts_as_taken() {
        let committed = r#"{"accepted": 2, "rejected": [], "committed": true}"#;
        assert!(matches!(
            judged(200, committed, 2),
            Delivery::Taken { refused, .. } if refused.is_empty()
        ));
        let spooled = r#"{"accepted": 1, "rejected": [{"index": 1, "reason": "unknown_device", "message": "m"}], "committed": false, "spooled": true}"#;
        assert!(matches!(
            judged(202, spooled, 2),
            Delivery::Taken { refused, .. } if refused.len() == 1 && refused[0].index == 1
        ));
        // A login page, a proxy's own 200, an accept without the relay's word.
        for (status, body) in [
            (200, "<html>Sign in</html>"),
            (200, r#"{"ok": true}"#),
            (
                200,
                r#"{"accepted": 2, "rejected": [], "committed": false}"#,
            ),
            (
                202,
                r#"{"accepted": 2, "rejected": [], "committed": false}"#,
            ),
            (204, ""),
        ] {
            assert!(
                matches!(judged(status, body, 2), Delivery::Retry { .. }),
                "{status} {body}"
            );
        }
        // Counts that do not add up to the batch, or an index out of it.
        for body in [
            r#"{"accepted": 1, "rejected": [], "committed": true}"#,
            r#"{"accepted": 1, "rejected": [{"index": 5, "reason": "x"}], "committed": true}"#,
            r#"{"accepted": 0, "rejected": [{"index": 0, "reason": "x"}, {"index": 0, "reason": "x"}], "committed": true}"#,
        ] {
            assert!(
                matches!(judged(200, body, 2), Delivery::Retry { .. }),
                "{body}"
            );
        }
    }

    #[test]
    fn redirects_are_not_taken_and_refusals_are_judged_by_status() {
        let Delivery::Retry { why, .. } = judged(302, "", 3) else {
            panic!("a redirect is not an answer");
        };
        assert!(why.contains("redirect"), "{why}");
        assert!(matches!(
            judged(413, r#"{"error": "body_too_large"}"#, 3),
            Delivery::TooLarge
        ));
        // One reading the upstream never takes: refused for good, so the lane moves on.
        let Delivery::Taken { refused, .. } =
            judged(413, r#"{"error": "body_too_large", "message": "m"}"#, 1)
        else {
            panic!("one reading too large is refused for good");
        };
        assert_eq!(refused[0].reason, "body_too_large");
        let limited = r#"{"error": "device_rate_limited", "message": "m", "rejected": [{"index": 0, "reason": "device_rate_limited"}, {"index": 1, "reason": "device_rate_limited"}]}"#;
        let Delivery::Taken { refused, .. } = judged(429, limited, 2) else {
            panic!("a relay's readings over their rates are each refused for now");
        };
        assert!(refused.iter().all(Refused::is_transient));
        assert!(matches!(
            judged(429, r#"{"error": "relay_rate_limited"}"#, 2),
            Delivery::Retry { .. }
        ));
        let Delivery::Stop { why } = judged(401, r#"{"error": "unauthorized", "message": "m"}"#, 2)
        else {
            panic!("a refused key stops");
        };
        assert!(why.contains("LAKEGATE_RELAY_KEY"), "{why}");
        assert!(matches!(judged(503, "", 2), Delivery::Retry { .. }));
    }

    #[test]
    fn settled_parts_map_back_to_the_batch() {
        let mut settled = Settled::default();
        let part = Settled {
            refused: vec![Refused {
                index: 1,
                reason: "unknown_device".into(),
                message: String::new(),
            }],
            left: vec![0],
            why: Some("over rate".into()),
            retry_after: Some(Duration::from_secs(2)),
            rate_limited: vec![0],
        };
        settled.merge(part, &[4, 7]);
        assert_eq!(settled.refused[0].index, 7);
        assert_eq!(settled.left, [4]);
        assert_eq!(settled.rate_limited, [4]);
        assert!(!settled.took_nothing(2));
        assert!(Settled::none_taken(3, "down".into(), None).took_nothing(3));
    }
}
