//! The gateway behind the emulated Databricks Apps proxy, as it runs on Databricks:
//! devices need an OAuth token for the proxy and their key for lakegate, reads run
//! with the signed-in user's token, and the proxy's refusals never reach lakegate.

use std::time::Duration;

use lakegate_emulator::{AppsProxy, AppsProxyConfig, Faults, TokenOwner};
use lakegate_testkit::{PAT, SP_ID, fetch_token};
use serde_json::{Value as Json, json};

use lakegate_testkit::gateway::{Harness, reading, respond};

async fn proxy_for(gateway: &Harness, config: AppsProxyConfig) -> AppsProxy {
    AppsProxy::start(config, &gateway.emulator)
        .await
        .expect("the proxy starts")
}

/// Requests lakegate has answered, over every route but `/metrics` itself.
async fn requests_served(gateway: &Harness) -> f64 {
    let text = gateway.get("/metrics").await.text().await.unwrap();
    text.lines()
        .filter(|line| line.starts_with("lakegate_http_requests_total{"))
        .filter(|line| !line.contains("route=\"/metrics\""))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `POST /api/ingest` through the proxy with these credentials.
async fn ingest(
    proxy: &AppsProxy,
    gateway: &Harness,
    token: Option<&str>,
    key: &str,
    body: &Json,
) -> (u16, Json) {
    let mut request = gateway
        .http
        .post(format!("{}/api/ingest", proxy.url()))
        .header("X-API-Key", key)
        .json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    respond(request.send().await.unwrap()).await
}

/// `GET /api/devices` through the proxy with `token` and extra headers.
async fn devices(
    proxy: &AppsProxy,
    gateway: &Harness,
    token: &str,
    headers: &[(&str, &str)],
) -> (u16, Json) {
    let mut request = gateway
        .http
        .get(format!("{}/api/devices", proxy.url()))
        .bearer_auth(token);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    respond(request.send().await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_device_with_an_oauth_token_and_its_key_ingests() {
    let mut gateway = Harness::start().await;
    let proxy = proxy_for(&gateway, AppsProxyConfig::new(&gateway.url)).await;
    let token = fetch_token(&gateway.http, &gateway.emulator.url()).await;

    let response = gateway
        .http
        .post(format!("{}/api/ingest", proxy.url()))
        .bearer_auth(&token)
        .header("X-API-Key", &gateway.keys.sensor)
        .json(&reading("r-1", 21.5))
        .send()
        .await
        .unwrap();
    // lakegate answers with the request id the proxy made.
    let request_id = response.headers()["x-request-id"].to_str().unwrap();
    assert!(uuid_like(request_id), "{request_id}");
    let (status, body) = respond(response).await;
    assert_eq!((status, &body["committed"]), (200, &json!(true)), "{body}");
    let rows = gateway.rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].0.as_str(), rows[0].1.as_str()),
        ("sensor-1", "r-1")
    );

    // Without a token, or with a PAT, the proxy answers and lakegate never hears of it.
    let served = requests_served(&gateway).await;
    let key = gateway.keys.sensor.clone();
    for token in [None, Some(PAT), Some("not-a-token")] {
        let (status, body) = ingest(&proxy, &gateway, token, &key, &reading("r-2", 1.0)).await;
        assert_eq!(
            (status, body["error_code"].as_str()),
            (401, Some("UNAUTHENTICATED")),
            "{body}"
        );
    }
    assert_eq!(requests_served(&gateway).await, served);
    assert_eq!(gateway.row_count().await, 1);
    proxy.shutdown().await;
    gateway.stop().await;
}

fn uuid_like(id: &str) -> bool {
    id.len() == 36 && id.split('-').map(str::len).eq([8, 4, 4, 4, 12])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn if_the_proxy_stripped_the_device_key_lakegate_would_refuse_every_device() {
    let mut gateway = Harness::start().await;
    let config = AppsProxyConfig {
        forward_custom_headers: false,
        ..AppsProxyConfig::new(&gateway.url)
    };
    let proxy = proxy_for(&gateway, config).await;
    let token = fetch_token(&gateway.http, &gateway.emulator.url()).await;
    let key = gateway.keys.sensor.clone();
    // The proxy admits the device; lakegate sees no key and answers its own 401.
    let (status, body) = ingest(&proxy, &gateway, Some(&token), &key, &reading("r-1", 1.0)).await;
    assert_eq!(
        (status, &body["error"]),
        (401, &json!("unauthorized")),
        "{body}"
    );
    let failures = r#"lakegate_auth_failures_total{kind="device",outcome="unknown_key"}"#;
    assert_eq!(gateway.metric(failures).await, 1.0);
    assert_eq!(gateway.row_count().await, 0);
    proxy.shutdown().await;
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_run_with_the_signed_in_users_token() {
    let mut gateway = Harness::builder()
        .env("LAKEGATE_APPS_PROXY_AUTH", "true")
        // The harness's readings have a fixed date; list them however long ago it is.
        .env("LAKEGATE_DEVICE_LIST_WINDOW_DAYS", "3650")
        .start()
        .await;
    let config = AppsProxyConfig {
        user_authorization: true,
        ..AppsProxyConfig::new(&gateway.url)
    };
    let proxy = proxy_for(&gateway, config).await;
    let device_token = fetch_token(&gateway.http, &gateway.emulator.url()).await;
    let key = gateway.keys.sensor.clone();
    let (status, body) = ingest(
        &proxy,
        &gateway,
        Some(&device_token),
        &key,
        &reading("r-1", 1.0),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    let ana = TokenOwner::User("ana@example.com".into());
    let app = TokenOwner::ServicePrincipal(SP_ID.into());
    let before = gateway.emulator.stats();
    let ana_token = gateway.emulator.user_token("ana@example.com");
    let (status, body) = devices(&proxy, &gateway, &ana_token, &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["devices"][0]["device_id"], "sensor-1", "{body}");
    // The query ran with ana's credentials, not the app's.
    let after = gateway.emulator.stats();
    assert!(after.statements_by(&ana) > before.statements_by(&ana));
    assert_eq!(after.statements_by(&app), before.statements_by(&app));
    proxy.shutdown().await;

    // Without user authorization the proxy sends no user token, and lakegate does not
    // fall back to its own identity.
    let proxy = proxy_for(&gateway, AppsProxyConfig::new(&gateway.url)).await;
    let (status, body) = devices(&proxy, &gateway, &ana_token, &[]).await;
    assert_eq!(
        (status, &body["error"]),
        (403, &json!("no_user_token")),
        "{body}"
    );
    proxy.shutdown().await;
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_identity_headers_are_replaced_by_the_proxys_own() {
    let mut gateway = Harness::builder()
        .env("LAKEGATE_APPS_PROXY_AUTH", "true")
        .start()
        .await;
    let boss = TokenOwner::User("boss@example.com".into());
    let ana = TokenOwner::User("ana@example.com".into());
    let boss_token = gateway.emulator.user_token("boss@example.com");
    let ana_token = gateway.emulator.user_token("ana@example.com");
    let forged = [
        ("X-Forwarded-Email", "boss@example.com"),
        ("X-Forwarded-User", "boss@example.com"),
        ("X-Forwarded-Access-Token", boss_token.as_str()),
    ];

    // With user authorization, the proxy's token for ana replaces boss's.
    let config = AppsProxyConfig {
        user_authorization: true,
        ..AppsProxyConfig::new(&gateway.url)
    };
    let proxy = proxy_for(&gateway, config).await;
    let (status, body) = devices(&proxy, &gateway, &ana_token, &forged).await;
    assert_eq!(status, 200, "{body}");
    let stats = gateway.emulator.stats();
    assert!(stats.statements_by(&ana) >= 1);
    assert_eq!(stats.statements_by(&boss), 0);
    proxy.shutdown().await;

    // Without it, the forged token is dropped and nothing takes its place.
    let proxy = proxy_for(&gateway, AppsProxyConfig::new(&gateway.url)).await;
    let (status, body) = devices(&proxy, &gateway, &ana_token, &forged).await;
    assert_eq!(
        (status, &body["error"]),
        (403, &json!("no_user_token")),
        "{body}"
    );
    assert_eq!(gateway.emulator.stats().statements_by(&boss), 0);
    proxy.shutdown().await;
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_principals_with_can_use_reach_lakegate() {
    let mut gateway = Harness::start().await;
    let config = AppsProxyConfig {
        can_use: Some(vec![SP_ID.into()]),
        ..AppsProxyConfig::new(&gateway.url)
    };
    let proxy = proxy_for(&gateway, config).await;
    let key = gateway.keys.sensor.clone();
    let served = requests_served(&gateway).await;
    let eve = gateway.emulator.user_token("eve@example.com");
    let (status, body) = ingest(&proxy, &gateway, Some(&eve), &key, &reading("r-1", 1.0)).await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (403, Some("PERMISSION_DENIED")),
        "{body}"
    );
    assert_eq!(requests_served(&gateway).await, served);

    let fleet = fetch_token(&gateway.http, &gateway.emulator.url()).await;
    let (status, body) = ingest(&proxy, &gateway, Some(&fleet), &key, &reading("r-1", 1.0)).await;
    assert_eq!(status, 200, "{body}");
    proxy.shutdown().await;
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_proxys_body_cap_and_timeout_answer_for_lakegate() {
    let mut gateway = Harness::start().await;
    let config = AppsProxyConfig {
        max_body_bytes: 1024,
        request_timeout: Duration::from_millis(500),
        ..AppsProxyConfig::new(&gateway.url)
    };
    let proxy = proxy_for(&gateway, config).await;
    let token = fetch_token(&gateway.http, &gateway.emulator.url()).await;
    let key = gateway.keys.sensor.clone();

    // A body over the proxy's cap never reaches lakegate.
    let served = requests_served(&gateway).await;
    let readings: Vec<Json> = (0..40).map(|i| reading(&format!("r-{i}"), 1.0)).collect();
    let (status, body) = ingest(&proxy, &gateway, Some(&token), &key, &json!(readings)).await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (413, Some("REQUEST_ENTITY_TOO_LARGE")),
        "{body}"
    );
    assert_eq!(requests_served(&gateway).await, served);

    // A commit slower than the proxy's timeout: the device hears 504 ...
    gateway.emulator.set_faults(Faults {
        statement_latency: Duration::from_secs(2),
        ..Faults::default()
    });
    let (status, body) = ingest(
        &proxy,
        &gateway,
        Some(&token),
        &key,
        &reading("r-slow", 1.0),
    )
    .await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (504, Some("DEADLINE_EXCEEDED")),
        "{body}"
    );
    // ... while lakegate goes on and writes the reading; resending it writes it once.
    gateway.wait_for_rows(1, Duration::from_secs(10)).await;
    gateway.emulator.set_faults(Faults::default());
    let (status, body) = ingest(
        &proxy,
        &gateway,
        Some(&token),
        &key,
        &reading("r-slow", 1.0),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(gateway.row_count().await, 1);
    proxy.shutdown().await;
    gateway.stop().await;
}

/// `lakegate --behind-apps-proxy`: local mode with the emulated proxy in front prints
/// how a device gets through it, and what it prints works, for the agent and for curl's
/// requests without a token alike. The fleet's principal sends but may not read; the
/// reader principal the banner names may.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_mode_behind_the_emulated_proxy_prints_a_way_in_that_works() {
    use std::io::Write;
    use std::process::{Command, Stdio};

    let dir = lakegate_testkit::temp_dir();
    let gateway = crate::local_mode::LocalMode::start(dir.path(), 0, &["--behind-apps-proxy"]);
    // `... DATABRICKS_HOST=... DATABRICKS_CLIENT_ID=... DATABRICKS_CLIENT_SECRET=...
    // LAKEGATE_DEVICE_KEY=... lakegate send --upstream <proxy>`
    let agent_line = gateway.line("send --upstream");
    let words: Vec<&str> = agent_line.split_whitespace().collect();
    let value = |name: &str| {
        words
            .iter()
            .find_map(|word| word.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} in {agent_line}"))
            .to_owned()
    };
    let proxy = words.last().unwrap().to_string();
    let workspace = value("DATABRICKS_HOST=");
    let fleet = (
        value("DATABRICKS_CLIENT_ID="),
        value("DATABRICKS_CLIENT_SECRET="),
    );
    assert_ne!(
        fleet.0,
        gateway.value("DATABRICKS_CLIENT_ID="),
        "the devices' principal is not the app's"
    );

    let mut agent = Command::new(env!("CARGO_BIN_EXE_lakegate"))
        .args(["send", "--upstream", &proxy])
        .env_clear()
        .env("HOME", dir.path())
        .env("DATABRICKS_HOST", &workspace)
        .env("DATABRICKS_CLIENT_ID", &fleet.0)
        .env("DATABRICKS_CLIENT_SECRET", &fleet.1)
        .env("LAKEGATE_DEVICE_KEY", value("LAKEGATE_DEVICE_KEY="))
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the agent runs");
    let now = chrono::Utc::now().to_rfc3339();
    agent
        .stdin
        .take()
        .unwrap()
        .write_all(
            format!("{{\"id\": \"via-proxy\", \"ts\": \"{now}\", \"metrics\": {{\"t\": 1}}}}\n")
                .as_bytes(),
        )
        .unwrap();
    let sent = agent.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&sent.stderr);
    assert_eq!(sent.status.code(), Some(0), "{said}");
    assert!(said.contains("1 reading read: 1 committed"), "{said}");

    // Without a token the proxy answers, as Databricks' does.
    let http = lakegate_testkit::http_client();
    let bare = http
        .post(format!("{proxy}/api/ingest"))
        .header("X-API-Key", value("LAKEGATE_DEVICE_KEY="))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status(), 401);

    // Reading through the proxy: the fleet's token, which every device holds, may not;
    // the reader principal's (`-u lakegate-reader:SECRET` in the banner) may.
    let reader = gateway.value("lakegate-reader:");
    let token_of = async |(id, secret): (&str, &str)| {
        let answer: serde_json::Value = http
            .post(format!("{workspace}/oidc/v1/token"))
            .basic_auth(id, Some(secret))
            .form(&[("grant_type", "client_credentials"), ("scope", "all-apis")])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        answer["access_token"].as_str().unwrap().to_owned()
    };
    let devices = async |token: String| {
        let answer = http
            .get(format!("{proxy}/api/devices"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        (answer.status().as_u16(), answer.text().await.unwrap())
    };
    let (status, body) = devices(token_of((&fleet.0, &fleet.1)).await).await;
    assert_eq!(status, 403, "the fleet's token read: {body}");
    let (status, body) = devices(token_of(("lakegate-reader", &reader)).await).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("demo-sensor-1"), "{body}");
    // The page's link, straight to the gateway, reads with its reader token.
    let url = gateway.url();
    let page_token = gateway.value(&format!("{url}/#token="));
    let direct = http
        .get(format!("{url}/api/devices"))
        .bearer_auth(page_token)
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), 200);
}

/// `GET {base}{path}` with `headers`.
async fn get_with(
    gateway: &Harness,
    base: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Json) {
    let mut request = gateway.http.get(format!("{base}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    respond(request.send().await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stats_take_only_a_user_token_the_workspace_accepts() {
    const MADE_UP: &str = "made-up-user-token-never-logged";
    let logs = crate::logs::capture();
    let mut gateway = Harness::builder()
        .env("LAKEGATE_APPS_PROXY_AUTH", "true")
        .start()
        .await;
    let ana_token = gateway.emulator.user_token("ana@example.com");
    let signed_in = |token: &'static str| {
        [
            ("X-Forwarded-Email", "ana@example.com"),
            ("X-Forwarded-Access-Token", token),
        ]
    };

    // A token the workspace never issued: stats refuse it as the device list does.
    let made_up = signed_in(MADE_UP);
    let devices = get_with(&gateway, &gateway.url, "/api/devices", &made_up).await;
    let stats = get_with(&gateway, &gateway.url, "/api/stats", &made_up).await;
    assert_eq!(
        (devices.0, &devices.1["error"]),
        (502, &json!("query_failed")),
        "{}",
        devices.1
    );
    assert_eq!(
        (stats.0, &stats.1["error"]),
        (devices.0, &devices.1["error"]),
        "{}",
        stats.1
    );
    assert!(stats.1.get("uptime_secs").is_none(), "{}", stats.1);

    // The user's own token, as the proxy forwards it, reads both.
    let ana = TokenOwner::User("ana@example.com".into());
    let headers = [
        ("X-Forwarded-Email", "ana@example.com"),
        ("X-Forwarded-Access-Token", ana_token.as_str()),
    ];
    let (status, body) = get_with(&gateway, &gateway.url, "/api/stats", &headers).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["uptime_secs"].is_u64(), "{body}");
    assert!(gateway.emulator.stats().statements_by(&ana) >= 1);

    // And through the emulated proxy, with on-behalf-of-user authorization.
    let config = AppsProxyConfig {
        user_authorization: true,
        ..AppsProxyConfig::new(&gateway.url)
    };
    let proxy = proxy_for(&gateway, config).await;
    let bearer = format!("Bearer {ana_token}");
    let (status, body) = get_with(
        &gateway,
        &proxy.url(),
        "/api/stats",
        &[("Authorization", &bearer)],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    proxy.shutdown().await;
    gateway.stop().await;

    let logged = logs.text();
    for token in [MADE_UP, ana_token.as_str()] {
        assert!(!logged.contains(token), "a token was logged:\n{logged}");
    }
}
