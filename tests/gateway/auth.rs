//! Failed authentications: limited per client address and kind, without ever
//! holding up a valid credential; which address counts; how they are reported.

use lakegate_testkit::gateway::{Harness, reading, respond};

/// Failure budget of 3, refilled once a minute: ample for a test to see the block.
const TIGHT_BUDGET: [(&str, &str); 2] = [
    ("LAKEGATE_AUTH_FAILURES_PER_MIN", "1"),
    ("LAKEGATE_AUTH_FAILURE_BURST", "3"),
];

/// Status and `error` of an ingest with `key` and these extra headers.
async fn ingest_with(gateway: &Harness, key: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut request = gateway.post(key).json(&reading("a-1", 1.0));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let has_retry_after = response.headers().contains_key("retry-after");
    let (status, body) = respond(response).await;
    if status == 429 {
        assert!(has_retry_after, "{body}");
    }
    (
        status,
        body["error"].as_str().unwrap_or_default().to_owned(),
    )
}

async fn metrics(gateway: &Harness) -> String {
    gateway.get("/metrics").await.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_neighbours_stale_key_never_locks_out_a_valid_key() {
    let logs = crate::logs::capture();
    let mut gateway = Harness::builder().envs(&TIGHT_BUDGET).start().await;
    let stale = "lgk_stale-key-of-a-replaced-device";
    for _ in 0..3 {
        assert_eq!(ingest_with(&gateway, stale, &[]).await.0, 401);
    }
    let blocked = (429, "too_many_failed_authentications".to_owned());
    for _ in 0..3 {
        assert_eq!(ingest_with(&gateway, stale, &[]).await, blocked);
    }
    // From the same address, valid keys are checked first and admitted.
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(ingest_with(&gateway, &gateway.keys.sensor, &[]).await.0);
    }
    assert_eq!(statuses, [200; 5]);
    assert_eq!(ingest_with(&gateway, &gateway.keys.other, &[]).await.0, 200);
    // The stale key stays slowed.
    assert_eq!(ingest_with(&gateway, stale, &[]).await, blocked);

    let metrics = metrics(&gateway).await;
    for counted in [
        r#"lakegate_auth_failures_total{kind="device",outcome="unknown_key"} 3"#,
        r#"lakegate_auth_failures_total{kind="device",outcome="blocked"} 4"#,
    ] {
        assert!(
            metrics.contains(counted),
            "{counted} missing from\n{metrics}"
        );
    }
    gateway.stop().await;
    // Failures are logged by address, never with what was sent.
    let logged = logs.text();
    assert!(logged.contains("failed authentication"), "{logged}");
    assert!(!logged.contains(stale), "{logged}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_have_their_own_failure_budget() {
    let token = lakegate::devices::generate_key();
    let token_text = secrecy::ExposeSecret::expose_secret(&token.key).to_owned();
    let mut env = TIGHT_BUDGET.to_vec();
    env.push(("LAKEGATE_READER_TOKENS", token.hash.as_str()));
    let mut gateway = Harness::builder().envs(&env).start().await;
    let read = |bearer: &str| {
        let request = gateway
            .http
            .get(format!("{}/api/stats", gateway.url))
            .bearer_auth(bearer);
        async move { respond(request.send().await.unwrap()).await.0 }
    };

    // Devices' failures spend the devices' budget only.
    for _ in 0..4 {
        ingest_with(&gateway, "lgk_wrong", &[]).await;
    }
    assert_eq!(ingest_with(&gateway, "lgk_wrong", &[]).await.0, 429);
    assert_eq!(read("wrong-reader-token").await, 401);
    assert_eq!(read(&token_text).await, 200);

    // And readers' failures the readers' budget: a device key still gets through.
    for _ in 0..3 {
        read("wrong-reader-token").await;
    }
    assert_eq!(read("wrong-reader-token").await, 429);
    assert_eq!(read(&token_text).await, 200);
    assert_eq!(
        ingest_with(&gateway, &gateway.keys.sensor, &[]).await.0,
        200
    );
    let metrics = metrics(&gateway).await;
    let counted = r#"lakegate_auth_failures_total{kind="reader",outcome="unknown_key"} 3"#;
    assert!(metrics.contains(counted), "{metrics}");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forwarding_headers_from_an_untrusted_peer_are_ignored() {
    let mut gateway = Harness::builder().envs(&TIGHT_BUDGET).start().await;
    // A guesser claiming a new address on each request still spends one budget.
    for n in 0..6 {
        let forged = format!("198.51.100.{n}");
        let (status, _) = ingest_with(
            &gateway,
            "lgk_guess",
            &[("X-Forwarded-For", &forged), ("X-Real-Ip", &forged)],
        )
        .await;
        assert_eq!(status, if n < 3 { 401 } else { 429 }, "attempt {n}");
    }
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn behind_a_trusted_proxy_the_right_most_untrusted_hop_counts() {
    let mut env = TIGHT_BUDGET.to_vec();
    env.push(("LAKEGATE_TRUSTED_PROXIES", "127.0.0.0/8, 10.0.0.0/8"));
    let mut gateway = Harness::builder().envs(&env).start().await;
    // The client 203.0.113.7 (behind a trusted 10.x proxy) rotates what it claims
    // on the left: still one budget.
    for n in 0..4 {
        let chain = format!("192.0.2.{n}, 203.0.113.7, 10.9.9.9");
        let status = ingest_with(&gateway, "lgk_guess", &[("X-Forwarded-For", &chain)])
            .await
            .0;
        assert_eq!(status, if n < 3 { 401 } else { 429 }, "attempt {n}");
    }
    // Another client behind the same proxy has its own budget.
    let other = [("X-Forwarded-For", "203.0.113.8, 10.9.9.9")];
    assert_eq!(ingest_with(&gateway, "lgk_guess", &other).await.0, 401);
    // X-Real-Ip counts when there is no X-Forwarded-For.
    let real_ip = [("X-Real-Ip", "203.0.113.9")];
    assert_eq!(ingest_with(&gateway, "lgk_guess", &real_ip).await.0, 401);
    // IPv6 clients share a budget per /64, whichever of its addresses they use.
    for n in 0..4 {
        let address = format!("2001:db8:7:7::{n:x}");
        let status = ingest_with(&gateway, "lgk_guess", &[("X-Forwarded-For", &address)])
            .await
            .0;
        assert_eq!(status, if n < 3 { 401 } else { 429 }, "attempt {n}");
    }
    let next_network = [("X-Forwarded-For", "2001:db8:7:8::1")];
    assert_eq!(
        ingest_with(&gateway, "lgk_guess", &next_network).await.0,
        401
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_disabled_device_is_rate_limited_and_locks_out_nobody() {
    let mut env = TIGHT_BUDGET.to_vec();
    env.extend([
        ("LAKEGATE_DEVICE_RATE_PER_SEC", "1"),
        ("LAKEGATE_DEVICE_BURST", "4"),
    ]);
    let mut gateway = Harness::builder().envs(&env).start().await;
    let disabled = gateway.keys.disabled.clone();
    let mut answers = Vec::new();
    for _ in 0..12 {
        answers.push(ingest_with(&gateway, &disabled, &[]).await);
    }
    let refused = (403, "device_disabled".to_owned());
    let slowed = (429, "device_rate_limited".to_owned());
    // The burst of 4 is spent, and 8 more requests do not all wait a second each.
    assert_eq!(
        answers[..4],
        [refused.clone(), refused.clone(), refused.clone(), refused]
    );
    assert!(answers[4..].contains(&slowed), "{answers:?}");
    // Its refusals are no failed key: the address's budget is untouched.
    for _ in 0..3 {
        assert_eq!(ingest_with(&gateway, "lgk_guess", &[]).await.0, 401);
    }
    assert_eq!(ingest_with(&gateway, &gateway.keys.other, &[]).await.0, 200);
    let metrics = metrics(&gateway).await;
    assert!(
        metrics.contains(r#"lakegate_auth_failures_total{kind="device",outcome="disabled"} 12"#),
        "{metrics}"
    );
    gateway.stop().await;
}
