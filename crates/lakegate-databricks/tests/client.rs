//! The Databricks client against the in-process workspace emulator.

use std::time::{Duration, Instant};

use arrow_array::{Array, Int64Array, StringArray};
use chrono::{DateTime, Utc};
use futures::future::join_all;
use lakegate_databricks::Call;
use lakegate_databricks::{
    Client, Disposition, Error, Format, OnWaitTimeout, Param, StatementRequest, StatementState,
    Value,
};
use lakegate_emulator::{EmulatorConfig, Faults};
use lakegate_testkit::workspace::{config, m2m, m2m_client, pat, pat_client};
use lakegate_testkit::{
    PAT, SP_ID, SP_SECRET, emulator_config, eventually, eventually_async, start_emulator,
};
use secrecy::{ExposeSecret, SecretString};

/// `SELECT` of `n` rows `(id, name)` as a VALUES list.
fn numbered_rows(n: i64) -> String {
    let rows: Vec<String> = (1..=n).map(|i| format!("({i}, 'row-{i}')")).collect();
    format!(
        "SELECT * FROM (VALUES {}) AS t(id, name) ORDER BY id",
        rows.join(", ")
    )
}

async fn token(client: &Client) -> SecretString {
    client.api().token_source().token().await.expect("token")
}

fn same(a: &SecretString, b: &SecretString) -> bool {
    a.expose_secret() == b.expose_secret()
}

/// An emulator whose statements each spend `latency` RUNNING.
async fn start_with_statement_latency(latency: Duration) -> lakegate_emulator::Emulator {
    start_emulator(EmulatorConfig {
        faults: Faults {
            statement_latency: latency,
            ..Faults::default()
        },
        ..emulator_config()
    })
    .await
}

/// An emulator whose OAuth tokens live `secs` seconds.
async fn start_with_token_lifetime(secs: u64) -> lakegate_emulator::Emulator {
    start_emulator(EmulatorConfig {
        token_lifetime: Duration::from_secs(secs),
        ..emulator_config()
    })
    .await
}

// ---------------------------------------------------------------- OAuth M2M

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cold_start_fetches_one_token_for_100_concurrent_callers() {
    let emulator = start_emulator(emulator_config()).await;
    let client = m2m_client(&emulator);

    let tokens = join_all((0..100).map(|_| {
        let client = client.clone();
        tokio::spawn(async move { token(&client).await })
    }))
    .await;

    let first = tokens[0].as_ref().unwrap();
    assert!(tokens.iter().all(|t| same(t.as_ref().unwrap(), first)));
    assert_eq!(emulator.stats().token_requests, 1);

    // The cached token works for API calls.
    client.secrets().create_scope("cold-start").await.unwrap();
    assert_eq!(emulator.stats().token_requests, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stale_token_is_refreshed_once_in_the_background() {
    // Lifetime 4 s: stale after 2 s, treated as expired after 3.6 s.
    let emulator = start_with_token_lifetime(4).await;
    let client = m2m_client(&emulator);
    let old = token(&client).await;

    tokio::time::sleep(Duration::from_millis(2200)).await;
    let seen = join_all((0..50).map(|_| token(&client))).await;
    // Nobody waited for the refresh: a caller that had would hold the new token.
    assert!(seen.iter().all(|t| same(t, &old)));

    // The refresh is counted when the workspace gets the request, and served once the
    // answer is in the cache: wait for the second.
    let refreshed = async || !same(&token(&client).await, &old);
    eventually_async(Duration::from_secs(2), "background refresh", refreshed).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(emulator.stats().token_requests, 2, "exactly one refresh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_background_refresh_keeps_serving_the_valid_token() {
    let emulator = start_with_token_lifetime(4).await;
    let mut config = config(&emulator, m2m(SP_ID, SP_SECRET));
    config.oauth.retry.budget = Duration::ZERO; // one attempt per refresh
    config.oauth.refresh_backoff = Duration::from_secs(30);
    let client = Client::new(&config).unwrap();
    let old = token(&client).await;
    client
        .secrets()
        .create_scope("refresh-failure")
        .await
        .unwrap();

    emulator.set_faults(Faults {
        token_failures: 100,
        ..Faults::default()
    });
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert!(same(&token(&client).await, &old));
    eventually(Duration::from_secs(2), "refresh attempt", || {
        emulator.stats().token_requests == 2
    })
    .await;

    // The refresh failed; callers keep working with the old token and the
    // source backs off instead of hammering the endpoint.
    for _ in 0..5 {
        assert!(same(&token(&client).await, &old));
        client.secrets().list("refresh-failure").await.unwrap();
    }
    assert_eq!(emulator.stats().token_requests, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_endpoint_503_is_retried_honouring_retry_after() {
    let emulator = start_emulator(EmulatorConfig {
        faults: Faults {
            token_failures: 1,
            ..Faults::default()
        },
        ..emulator_config()
    })
    .await;
    let client = m2m_client(&emulator);
    let started = Instant::now();
    client.secrets().create_scope("token-retry").await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After: 1 honoured"
    );
    assert_eq!(emulator.stats().token_requests, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_token_is_never_sent() {
    // Lifetime 2 s: usable for 1.8 s.
    let emulator = start_with_token_lifetime(2).await;
    let client = m2m_client(&emulator);
    let old = token(&client).await;
    client.secrets().create_scope("expiry").await.unwrap();

    tokio::time::sleep(Duration::from_millis(1900)).await;
    // Blocks for a new token rather than sending the old one.
    client.secrets().list("expiry").await.unwrap();
    assert!(!same(&token(&client).await, &old));
    assert_eq!(emulator.stats().token_requests, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_client_secret_is_a_typed_401_without_the_secret() {
    let emulator = start_emulator(emulator_config()).await;
    let client = Client::new(&config(&emulator, m2m(SP_ID, "wrong-secret-value"))).unwrap();
    let err = client.secrets().list("any").await.unwrap_err();
    assert!(matches!(err, Error::Auth(_)), "{err:?}");
    assert_eq!(err.status(), Some(401));
    assert_eq!(emulator.stats().token_requests, 1, "401 is not retried");
    for text in [format!("{err:?}"), err.to_string()] {
        assert!(!text.contains("wrong-secret-value"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_pat_is_a_typed_401_without_the_token() {
    let emulator = start_emulator(emulator_config()).await;
    let client = Client::new(&config(&emulator, pat("dapi-wrong-token"))).unwrap();
    let err = client.secrets().list("any").await.unwrap_err();
    let api = err.error_response().unwrap_or_else(|| panic!("{err:?}"));
    assert_eq!(api.status, 401);
    assert_eq!(emulator.stats().api_requests, 1);
    for text in [format!("{err:?}"), err.to_string(), format!("{client:?}")] {
        assert!(!text.contains("dapi-wrong-token"), "{text}");
    }
}

// ---------------------------------------------------------------- retries

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retries_429_after_retry_after() {
    let emulator = start_emulator(emulator_config()).await;
    let client = pat_client(&emulator);
    client.secrets().create_scope("throttled").await.unwrap();
    emulator.set_faults(Faults {
        throttle_share: 1.0,
        throttle_retry_after_secs: 1,
        ..Faults::default()
    });

    let started = Instant::now();
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.secrets().list("throttled").await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    emulator.set_faults(Faults::default());

    call.await.unwrap().unwrap();
    // Without Retry-After the 50 ms backoff would have succeeded at ~250 ms.
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(emulator.stats().throttled >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retries_503_even_for_post_after_retry_after() {
    let emulator = start_emulator(emulator_config()).await;
    let client = pat_client(&emulator);
    client.secrets().create_scope("unavailable").await.unwrap();
    emulator.set_faults(Faults {
        unavailable_for: Some(Duration::from_millis(300)),
        unavailable_retry_after_secs: 1,
        ..Faults::default()
    });

    let started = Instant::now();
    client
        .secrets()
        .put_string("unavailable", "k", "v")
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(emulator.stats().unavailable >= 1);
    assert_eq!(client.secrets().list("unavailable").await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_absurd_retry_after_is_capped_at_a_minute() {
    let emulator = start_emulator(emulator_config()).await;
    let client = pat_client(&emulator);
    client.secrets().create_scope("patience").await.unwrap();
    emulator.set_faults(Faults {
        unavailable_for: Some(Duration::from_secs(30)),
        unavailable_retry_after_secs: u64::MAX,
        ..Faults::default()
    });
    let started = Instant::now();
    // The test client's retry budget (10 s) is shorter than the capped wait: it gives up at
    // once and reports what it would have waited, instead of panicking or parking.
    let err = client.secrets().list("patience").await.unwrap_err();
    assert_eq!(err.status(), Some(503), "{err:?}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(60)));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_absurd_token_lifetime_neither_panics_nor_lives_for_ever() {
    let emulator = start_emulator(emulator_config()).await;
    emulator.set_faults(Faults {
        token_expires_in: Some(u64::MAX),
        ..Faults::default()
    });
    let client = m2m_client(&emulator);
    client.secrets().create_scope("forever").await.unwrap();
    client.secrets().list("forever").await.unwrap();
    assert_eq!(emulator.stats().token_requests, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_errors_are_not_retried() {
    let emulator = start_emulator(emulator_config()).await;
    let client = pat_client(&emulator);
    let before = emulator.stats().api_requests;
    let err = client
        .secrets()
        .get("no-such-scope", "k")
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(404), "{err:?}");
    assert_eq!(err.error_code(), Some("RESOURCE_DOES_NOT_EXIST"));
    assert_eq!(emulator.stats().api_requests - before, 1);
}

// ---------------------------------------------------------------- secrets

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secrets_round_trip() {
    let emulator = start_emulator(emulator_config()).await;
    let client = m2m_client(&emulator);
    let secrets = client.secrets();
    secrets.create_scope("devices").await.unwrap();
    secrets
        .put_string("devices", "api-key", "s3cr3t ünïcode")
        .await
        .unwrap();

    let value = secrets.get("devices", "api-key").await.unwrap();
    assert_eq!(value.expose_secret(), "s3cr3t ünïcode".as_bytes());

    let listed = secrets.list("devices").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key, "api-key");
    assert!(listed[0].last_updated_timestamp > 0);

    let err = secrets.get("devices", "missing").await.unwrap_err();
    assert_eq!(err.status(), Some(404));
    assert_eq!(err.error_code(), Some("RESOURCE_DOES_NOT_EXIST"));

    secrets.delete("devices", "api-key").await.unwrap();
    assert!(secrets.list("devices").await.unwrap().is_empty());
    secrets.delete_scope("devices").await.unwrap();
    let err = secrets.list("devices").await.unwrap_err();
    assert_eq!(err.error_code(), Some("RESOURCE_DOES_NOT_EXIST"));
}

// ---------------------------------------------------------------- statements

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn typed_and_null_parameters_decode_by_manifest_type() {
    let emulator = start_emulator(emulator_config()).await;
    let client = m2m_client(&emulator);
    let at: DateTime<Utc> = "2024-05-01T12:34:56.789Z".parse().unwrap();
    let request = StatementRequest::new(
        "SELECT :s AS s, :n AS n, :d AS d, :b AS b, :t AS t, :null_n AS null_n, :null_s AS null_s",
    )
    .params([
        Param::string("s", "it's"),
        Param::i64("n", -9_000_000_000),
        Param::f64("d", 2.5),
        Param::bool("b", true),
        Param::timestamp("t", at),
        Param::null("null_n", "BIGINT"),
        Param::null("null_s", "STRING"),
    ]);
    let result = client.statements().execute(request).await.unwrap();
    let types: Vec<_> = result
        .columns()
        .iter()
        .map(|c| c.type_name.as_str())
        .collect();
    assert_eq!(
        types,
        [
            "STRING",
            "LONG",
            "DOUBLE",
            "BOOLEAN",
            "TIMESTAMP",
            "LONG",
            "STRING"
        ]
    );
    let rows = result.collect_rows().await.unwrap();
    assert_eq!(
        rows,
        vec![vec![
            Value::String("it's".into()),
            Value::Int(-9_000_000_000),
            Value::Float(2.5),
            Value::Bool(true),
            Value::Timestamp(at),
            Value::Null,
            Value::Null,
        ]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn polls_past_the_wait_timeout() {
    let emulator = start_with_statement_latency(Duration::from_millis(1500)).await;
    let client = pat_client(&emulator);
    let started = Instant::now();
    let request = StatementRequest::new("SELECT 42 AS answer")
        .wait_timeout(Duration::ZERO, OnWaitTimeout::Continue);
    let rows = client
        .statements()
        .execute(request)
        .await
        .unwrap()
        .collect_rows()
        .await
        .unwrap();
    assert_eq!(rows, vec![vec![Value::Int(42)]]);
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert!(emulator.stats().api_requests >= 3, "POST plus polls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dropping_the_future_cancels_the_statement() {
    let emulator = start_with_statement_latency(Duration::from_secs(10)).await;
    let client = pat_client(&emulator);
    let request = StatementRequest::new("SELECT 1 AS one")
        .wait_timeout(Duration::ZERO, OnWaitTimeout::Continue);
    let execution = tokio::spawn({
        let client = client.clone();
        async move { client.statements().execute(request).await }
    });
    eventually(Duration::from_secs(5), "statement accepted", || {
        emulator.stats().statements == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    execution.abort();

    eventually(Duration::from_secs(5), "cancel sent", || {
        emulator.stats().cancels == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deadline_cancels_the_statement() {
    let emulator = start_with_statement_latency(Duration::from_secs(10)).await;
    let client = pat_client(&emulator);
    let request = StatementRequest::new("SELECT 1 AS one")
        .wait_timeout(Duration::ZERO, OnWaitTimeout::Continue)
        .deadline(Duration::from_millis(800));
    let err = client.statements().execute(request).await.unwrap_err();
    let Error::DeadlineExceeded {
        statement_id: Some(id),
        ..
    } = err
    else {
        panic!("{err:?}");
    };

    eventually(Duration::from_secs(5), "cancel sent", || {
        emulator.stats().cancels == 1
    })
    .await;
    let status: serde_json::Value = client
        .api()
        .call(Call::get(format!("/api/2.0/sql/statements/{id}")))
        .await
        .unwrap();
    assert_eq!(status["status"]["state"], "CANCELED", "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_wait_timeout_cancel_ends_canceled() {
    let emulator = start_with_statement_latency(Duration::from_secs(8)).await;
    let client = pat_client(&emulator);
    let request = StatementRequest::new("SELECT 1 AS one")
        .wait_timeout(Duration::from_secs(5), OnWaitTimeout::Cancel);
    let err = client.statements().execute(request).await.unwrap_err();
    let Error::Statement(stmt) = &err else {
        panic!("{err:?}");
    };
    assert_eq!(stmt.state, StatementState::Canceled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_sql_carries_error_code_and_sql_state() {
    let emulator = start_emulator(emulator_config()).await;
    let client = pat_client(&emulator);
    let err = client
        .statements()
        .execute(StatementRequest::new("SELECT * FROM no_such_table"))
        .await
        .unwrap_err();
    let Error::Statement(stmt) = &err else {
        panic!("{err:?}");
    };
    assert_eq!(stmt.state, StatementState::Failed);
    assert!(stmt.error_code.is_some(), "{stmt:?}");
    assert!(stmt.sql_state.is_some(), "{stmt:?}");
    assert!(
        stmt.message
            .as_deref()
            .unwrap_or_default()
            .contains("no_such_table"),
        "{stmt:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn json_array_results_follow_the_chunks() {
    let emulator = start_emulator(EmulatorConfig {
        rows_per_chunk: 3,
        ..emulator_config()
    })
    .await;
    let client = pat_client(&emulator);
    let mut result = client
        .statements()
        .execute(StatementRequest::new(numbered_rows(10)))
        .await
        .unwrap();
    assert_eq!(result.manifest().total_row_count, 10);

    let mut chunks = 0;
    let mut ids = Vec::new();
    while let Some(rows) = result.next_rows().await.unwrap() {
        chunks += 1;
        for row in rows {
            let [Value::Int(id), Value::String(name)] = row.as_slice() else {
                panic!("{row:?}");
            };
            assert_eq!(name, &format!("row-{id}"));
            ids.push(*id);
        }
    }
    assert_eq!(chunks, 4);
    assert_eq!(ids, (1..=10).collect::<Vec<_>>());
}

fn arrow_request(sql: String) -> StatementRequest {
    StatementRequest::new(sql).disposition(Disposition::ExternalLinks, Format::ArrowStream)
}

fn ids_of(batches: &[arrow_array::RecordBatch]) -> Vec<i64> {
    batches
        .iter()
        .flat_map(|batch| {
            let ids = batch
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("BIGINT id");
            let names = batch
                .column(1)
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("STRING name");
            (0..batch.num_rows()).map(move |i| {
                assert_eq!(names.value(i), format!("row-{}", ids.value(i)));
                ids.value(i)
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn arrow_results_are_streamed_chunk_by_chunk() {
    let emulator = start_emulator(EmulatorConfig {
        rows_per_chunk: 3,
        ..emulator_config()
    })
    .await;
    let client = m2m_client(&emulator);
    let mut result = client
        .statements()
        .execute(arrow_request(numbered_rows(10)))
        .await
        .unwrap();

    let mut per_chunk = Vec::new();
    let mut batches = Vec::new();
    while let Some(chunk) = result.next_batches().await.unwrap() {
        per_chunk.push(chunk.iter().map(|b| b.num_rows()).sum::<usize>());
        batches.extend(chunk);
    }
    assert_eq!(per_chunk, [3, 3, 3, 1]);
    assert_eq!(ids_of(&batches), (1..=10).collect::<Vec<_>>());
    assert_eq!(emulator.stats().link_downloads, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expired_links_are_fetched_again() {
    let emulator = start_emulator(EmulatorConfig {
        rows_per_chunk: 5,
        link_lifetime: Duration::from_secs(3),
        ..emulator_config()
    })
    .await;
    let client = pat_client(&emulator);
    let result = client
        .statements()
        .execute(arrow_request(numbered_rows(10)))
        .await
        .unwrap();
    // The first chunk's link, in the response, expires meanwhile.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let batches = result.collect_batches().await.unwrap();
    assert_eq!(ids_of(&batches), (1..=10).collect::<Vec<_>>());
    assert_eq!(emulator.stats().link_downloads, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn too_many_parameters_are_refused_before_sending() {
    let emulator = start_emulator(emulator_config()).await;
    let client = pat_client(&emulator);
    let params = (0..256).map(|i| Param::i64(format!("p{i}"), i));
    let err = client
        .statements()
        .execute(StatementRequest::new("SELECT 1").params(params))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidRequest(_)), "{err:?}");
    assert_eq!(emulator.stats().statements, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn row_limit_truncates_in_the_requested_schema() {
    let emulator = start_emulator(emulator_config()).await;
    let client = pat_client(&emulator);
    let request = StatementRequest::new(numbered_rows(10))
        .catalog("main")
        .schema("default")
        .row_limit(2);
    let result = client.statements().execute(request).await.unwrap();
    assert!(result.manifest().truncated);
    assert_eq!(result.collect_rows().await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connection_errors_are_retried() {
    let first = start_emulator(emulator_config()).await;
    let client = pat_client(&first);
    let addr = first.addr();
    first.shutdown().await;

    let call = tokio::spawn({
        let client = client.clone();
        async move { client.secrets().create_scope("after-restart").await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = start_emulator(EmulatorConfig {
        listen: addr,
        ..emulator_config()
    })
    .await;

    call.await.unwrap().unwrap();
    assert_eq!(
        client.secrets().list("after-restart").await.unwrap().len(),
        0
    );
    assert_eq!(second.stats().api_requests, 2);
}

// ---------------------------------------------------------------- response size caps

/// A workspace impostor on loopback that answers every request 200 with a body that never
/// ends (chunked), or that declares `declared_len` bytes and then sends nothing.
fn oversized_server(declared_len: Option<u64>) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for socket in listener.incoming() {
            let Ok(mut socket) = socket else { return };
            std::thread::spawn(move || {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let head = match declared_len {
                    Some(len) => format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n"
                    ),
                    None => "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                             transfer-encoding: chunked\r\n\r\n"
                        .to_owned(),
                };
                if socket.write_all(head.as_bytes()).is_err() {
                    return;
                }
                if declared_len.is_some() {
                    std::thread::sleep(Duration::from_secs(60));
                    return;
                }
                let mut chunk = format!("{:x}\r\n", 64 * 1024).into_bytes();
                chunk.extend(std::iter::repeat_n(b' ', 64 * 1024));
                chunk.extend_from_slice(b"\r\n");
                while socket.write_all(&chunk).is_ok() {}
            });
        }
    });
    format!("http://{addr}")
}

fn impostor_config(
    host: &str,
    credentials: lakegate_databricks::Settings,
) -> lakegate_databricks::Config {
    let settings = lakegate_databricks::Settings {
        host: Some(host.to_owned()),
        warehouse_id: Some("w".into()),
        ..credentials
    };
    let mut config =
        lakegate_databricks::Config::resolve(settings, &std::collections::HashMap::new()).unwrap();
    config.http_timeout = Duration::from_secs(30);
    config.oauth.retry.budget = Duration::ZERO;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_endless_api_answer_is_cut_at_its_cap() {
    let host = oversized_server(None);
    let client = Client::new(&impostor_config(&host, pat(PAT))).unwrap();
    let err = client.secrets().list("any").await.unwrap_err();
    assert!(
        matches!(err, Error::TooLarge { limit, .. } if limit == 64 * 1024 * 1024),
        "{err:?}"
    );
    assert!(err.to_string().contains("larger than"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_endless_token_answer_is_cut_at_its_cap() {
    let host = oversized_server(None);
    let client = Client::new(&impostor_config(&host, m2m(SP_ID, SP_SECRET))).unwrap();
    let started = Instant::now();
    let err = client.secrets().list("any").await.unwrap_err();
    let Error::Auth(inner) = &err else {
        panic!("{err:?}")
    };
    assert!(
        matches!(**inner, Error::TooLarge { limit, .. } if limit == 1024 * 1024),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_declared_oversized_answer_is_refused_before_reading() {
    let host = oversized_server(Some(1 << 40));
    let client = Client::new(&impostor_config(&host, pat(PAT))).unwrap();
    let started = Instant::now();
    let err = client.secrets().list("any").await.unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn cleartext_hosts_are_refused_unless_loopback() {
    let settings = |host: &str| lakegate_databricks::Settings {
        host: Some(host.to_owned()),
        ..pat(PAT)
    };
    let none = std::collections::HashMap::new();
    let err = lakegate_databricks::Config::resolve(settings("http://workspace.example.com"), &none)
        .unwrap_err();
    assert!(err.to_string().contains("DATABRICKS_HOST"), "{err}");
    assert!(!err.to_string().contains(PAT), "{err}");
    for loopback in [
        "http://127.0.0.1:8787",
        "http://localhost:8787",
        "http://[::1]:8787",
    ] {
        lakegate_databricks::Config::resolve(settings(loopback), &none).unwrap();
    }
}
