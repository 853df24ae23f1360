//! Wire-format tests for host metadata, OAuth, the bearer check, Secrets and fault injection.

mod common;

use std::time::Duration;

use common::Workspace;
use lakegate_emulator::{Faults, TokenOwner};
use lakegate_testkit::{PAT, SP_ID, SP_SECRET, emulator_config, fetch_token};
use serde_json::{Value, json};

#[tokio::test]
async fn discovery_and_token_flow() {
    let ws = Workspace::start(emulator_config()).await;
    let meta: Value = ws
        .http
        .get(ws.url("/.well-known/databricks-config"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta["oidc_endpoint"], format!("{}/oidc", ws.emulator.url()));
    let oidc: Value = ws
        .http
        .get(ws.url("/oidc/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        oidc["token_endpoint"],
        format!("{}/oidc/v1/token", ws.emulator.url())
    );

    // Credentials in the form body work as well as HTTP Basic.
    let response = ws
        .http
        .post(ws.url("/oidc/v1/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "all-apis"),
            ("client_id", SP_ID),
            ("client_secret", SP_SECRET),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["scope"], "all-apis");

    let bad = ws
        .http
        .post(ws.url("/oidc/v1/token"))
        .basic_auth(SP_ID, Some("wrong"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    assert_eq!(
        bad.json::<Value>().await.unwrap()["error"],
        "invalid_client"
    );

    let grant = ws
        .http
        .post(ws.url("/oidc/v1/token"))
        .basic_auth(SP_ID, Some(SP_SECRET))
        .form(&[("grant_type", "password")])
        .send()
        .await
        .unwrap();
    assert_eq!(grant.status(), 400);
    assert_eq!(
        grant.json::<Value>().await.unwrap()["error"],
        "unsupported_grant_type"
    );

    let stats = ws.emulator.stats();
    assert_eq!((stats.token_requests, stats.tokens_issued), (4, 2));
}

#[tokio::test]
async fn api_calls_need_a_valid_unexpired_token() {
    let ws = Workspace::start(lakegate_emulator::EmulatorConfig {
        tokens: vec!["dapi-pat".into()],
        ..emulator_config()
    })
    .await;
    let path = ws.url("/api/2.0/secrets/scopes/list");
    let missing = ws.http.get(&path).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    assert_eq!(
        missing.json::<Value>().await.unwrap()["error_code"],
        "UNAUTHENTICATED"
    );
    let unknown = ws.http.get(&path).bearer_auth("nope").send().await.unwrap();
    assert_eq!(unknown.status(), 401);
    assert_eq!(
        ws.http
            .get(&path)
            .bearer_auth("dapi-pat")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(ws.get("/api/2.0/secrets/scopes/list").await.0, 200);

    ws.emulator.set_token_lifetime(Duration::from_millis(50));
    let short = fetch_token(&ws.http, &ws.emulator.url()).await;
    assert_eq!(
        ws.http
            .get(&path)
            .bearer_auth(&short)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert_eq!(
        ws.http
            .get(&path)
            .bearer_auth(&short)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    let (status, body) = ws.get("/api/2.0/clusters/list").await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (404, Some("ENDPOINT_NOT_FOUND"))
    );
}

#[tokio::test]
async fn tokens_have_owners_and_statements_count_by_owner() {
    let ws = Workspace::start(emulator_config()).await;
    let emulator = &ws.emulator;
    let sp = TokenOwner::ServicePrincipal(SP_ID.into());
    let ana = TokenOwner::User("ana@example.com".into());
    assert_eq!(emulator.token_owner(&ws.token), Some(sp.clone()));
    assert_eq!(
        emulator.token_owner(PAT),
        Some(TokenOwner::PersonalAccessToken)
    );
    assert_eq!(emulator.token_owner("never-issued"), None);

    // A user's token works on the API like any OAuth token, and statements run with
    // it are counted as the user's.
    let user_token = emulator.user_token("ana@example.com");
    assert_ne!(user_token, ws.token);
    assert_eq!(emulator.token_owner(&user_token), Some(ana.clone()));
    let run_as = async |token: &str| {
        let response = ws
            .http
            .post(ws.url("/api/2.0/sql/statements"))
            .bearer_auth(token)
            .json(&json!({"statement": "SELECT 1", "warehouse_id": emulator.warehouse_id()}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    };
    run_as(&user_token).await;
    run_as(&user_token).await;
    run_as(&ws.token).await;
    run_as(PAT).await;
    let stats = emulator.stats();
    assert_eq!(stats.statements, 4);
    assert_eq!(stats.statements_by(&ana), 2);
    assert_eq!(stats.statements_by(&sp), 1);
    assert_eq!(stats.statements_by(&TokenOwner::PersonalAccessToken), 1);
    assert_eq!(
        stats.statements_by(&TokenOwner::User("bob@example.com".into())),
        0
    );
    // Owners print without their tokens.
    assert!(!format!("{stats:?}").contains(&user_token));

    // User tokens expire like the others.
    emulator.set_token_lifetime(Duration::from_millis(50));
    let short = emulator.user_token("ana@example.com");
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert_eq!(emulator.token_owner(&short), None);
    let response = ws
        .http
        .get(ws.url("/api/2.0/secrets/scopes/list"))
        .bearer_auth(&short)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn secrets_round_trip_and_errors() {
    let ws = Workspace::start(emulator_config()).await;
    assert_eq!(
        ws.post(
            "/api/2.0/secrets/scopes/create",
            json!({"scope": "lakegate"})
        )
        .await
        .0,
        200
    );
    let (status, body) = ws
        .post(
            "/api/2.0/secrets/scopes/create",
            json!({"scope": "lakegate"}),
        )
        .await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (400, Some("RESOURCE_ALREADY_EXISTS"))
    );
    let (status, body) = ws
        .post(
            "/api/2.0/secrets/scopes/create",
            json!({"scope": "bad scope!"}),
        )
        .await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (400, Some("INVALID_PARAMETER_VALUE"))
    );

    let put = |key: &str, value: Value| {
        let mut body = json!({"scope": "lakegate", "key": key});
        body.as_object_mut()
            .unwrap()
            .extend(value.as_object().unwrap().clone());
        ws.post("/api/2.0/secrets/put", body)
    };
    assert_eq!(
        put("device-keys", json!({"string_value": "s3cret"}))
            .await
            .0,
        200
    );
    assert_eq!(
        put("raw.bytes", json!({"bytes_value": "AAE="})).await.0,
        200
    );
    let (status, body) = put("bad/key", json!({"string_value": "x"})).await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (400, Some("INVALID_PARAMETER_VALUE"))
    );
    let (status, body) = put("big", json!({"string_value": "x".repeat(128 * 1024 + 1)})).await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (400, Some("INVALID_PARAMETER_VALUE"))
    );
    let (status, _) = put("both", json!({"string_value": "x", "bytes_value": "AA=="})).await;
    assert_eq!(status, 400);
    let (status, body) = ws
        .post(
            "/api/2.0/secrets/put",
            json!({"scope": "nope", "key": "k", "string_value": "v"}),
        )
        .await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (404, Some("RESOURCE_DOES_NOT_EXIST"))
    );

    let (status, body) = ws
        .get("/api/2.0/secrets/get?scope=lakegate&key=device-keys")
        .await;
    assert_eq!((status, body["value"].as_str()), (200, Some("czNjcmV0")));
    let (status, body) = ws
        .get("/api/2.0/secrets/get?scope=lakegate&key=missing")
        .await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (404, Some("RESOURCE_DOES_NOT_EXIST"))
    );
    let (_, body) = ws.get("/api/2.0/secrets/list?scope=lakegate").await;
    let keys: Vec<&str> = body["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["device-keys", "raw.bytes"]);
    assert!(body["secrets"][0]["last_updated_timestamp"].is_i64());

    assert_eq!(
        ws.post(
            "/api/2.0/secrets/delete",
            json!({"scope": "lakegate", "key": "raw.bytes"})
        )
        .await
        .0,
        200
    );
    assert_eq!(
        ws.post(
            "/api/2.0/secrets/delete",
            json!({"scope": "lakegate", "key": "raw.bytes"})
        )
        .await
        .0,
        404
    );
    let (_, body) = ws.get("/api/2.0/secrets/scopes/list").await;
    assert_eq!(
        body["scopes"][0],
        json!({"name": "lakegate", "backend_type": "DATABRICKS"})
    );
    assert_eq!(
        ws.post(
            "/api/2.0/secrets/scopes/delete",
            json!({"scope": "lakegate"})
        )
        .await
        .0,
        200
    );
    assert_eq!(ws.get("/api/2.0/secrets/scopes/list").await.1, json!({}));
    let (status, body) = ws.post("/api/2.0/secrets/scopes/create", json!({})).await;
    assert_eq!(
        (status, body["message"].as_str()),
        (400, Some("Missing required field: scope"))
    );
}

#[tokio::test]
async fn faults_throttle_unavailable_and_token_failures() {
    let ws = Workspace::start(emulator_config()).await;
    ws.emulator.set_faults(Faults {
        throttle_share: 1.0,
        throttle_retry_after_secs: 7,
        ..Faults::default()
    });
    let response = ws
        .http
        .get(ws.url("/api/2.0/secrets/scopes/list"))
        .bearer_auth(&ws.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "7");
    assert_eq!(
        response.json::<Value>().await.unwrap()["error_code"],
        "REQUEST_LIMIT_EXCEEDED"
    );

    ws.emulator.set_faults(Faults {
        unavailable_for: Some(Duration::from_millis(100)),
        ..Faults::default()
    });
    let (status, body) = ws.get("/api/2.0/secrets/scopes/list").await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (503, Some("TEMPORARILY_UNAVAILABLE"))
    );
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(ws.get("/api/2.0/secrets/scopes/list").await.0, 200);

    ws.emulator.set_faults(Faults {
        token_failures: 1,
        ..Faults::default()
    });
    let token_call = || {
        ws.http
            .post(ws.url("/oidc/v1/token"))
            .basic_auth(SP_ID, Some(SP_SECRET))
            .form(&[("grant_type", "client_credentials")])
            .send()
    };
    let failed = token_call().await.unwrap();
    assert_eq!(
        (
            failed.status().as_u16(),
            failed.headers()["retry-after"].to_str().unwrap()
        ),
        (503, "1")
    );
    assert_eq!(token_call().await.unwrap().status(), 200);

    let stats = ws.emulator.stats();
    assert_eq!(
        (stats.throttled, stats.unavailable, stats.api_requests),
        (1, 1, 3)
    );
}

#[tokio::test]
async fn faults_with_extreme_values_are_sent_as_chosen() {
    let ws = Workspace::start(emulator_config()).await;
    ws.emulator.set_faults(Faults {
        unavailable_for: Some(Duration::MAX),
        unavailable_retry_after_secs: u64::MAX,
        token_expires_in: Some(u64::MAX),
        ..Faults::default()
    });
    let response = ws
        .http
        .get(ws.url("/api/2.0/secrets/scopes/list"))
        .bearer_auth(&ws.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], u64::MAX.to_string());

    let token = ws
        .http
        .post(ws.url("/oidc/v1/token"))
        .basic_auth(SP_ID, Some(SP_SECRET))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    let body: Value = token.json().await.unwrap();
    assert_eq!(body["expires_in"], json!(u64::MAX), "{body}");
}
