//! A running emulator plus an HTTP client holding a valid token.

#![allow(dead_code)] // each test binary uses a different part

use lakegate_emulator::{Emulator, EmulatorConfig};
use serde_json::{Value, json};

pub const CLIENT_ID: &str = "test-sp";
pub const CLIENT_SECRET: &str = "test-secret";

pub struct Workspace {
    pub emulator: Emulator,
    pub http: reqwest::Client,
    pub token: String,
}

pub fn config() -> EmulatorConfig {
    EmulatorConfig {
        service_principals: vec![(CLIENT_ID.to_string(), CLIENT_SECRET.to_string())],
        ..EmulatorConfig::default()
    }
}

/// A plain HTTP client. Inside the workspace, feature unification gives reqwest the
/// root crate's `rustls-no-provider` backend, which panics unless a crypto provider
/// is installed first.
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

impl Workspace {
    pub async fn start(config: EmulatorConfig) -> Self {
        let emulator = Emulator::start(config).await.expect("emulator starts");
        let http = http_client();
        let token = fetch_token(&http, &emulator.url()).await;
        Self {
            emulator,
            http,
            token,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.emulator.url())
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(self.url(path))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        (
            response.status().as_u16(),
            response.json().await.unwrap_or(Value::Null),
        )
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .http
            .post(self.url(path))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        (
            response.status().as_u16(),
            response.json().await.unwrap_or(Value::Null),
        )
    }

    /// Runs a statement (waiting up to 30 s) and returns the HTTP status and response.
    pub async fn execute(&self, mut body: Value) -> (u16, Value) {
        body["warehouse_id"] = self.emulator.warehouse_id().into();
        if body.get("wait_timeout").is_none() {
            body["wait_timeout"] = "30s".into();
        }
        self.post("/api/2.0/sql/statements", body).await
    }

    /// Runs a statement that must succeed and returns its response.
    pub async fn sql(&self, statement: &str) -> Value {
        let (status, body) = self.execute(json!({ "statement": statement })).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"]["state"], "SUCCEEDED", "{statement}: {body}");
        body
    }

    pub async fn poll_until_done(&self, id: &str) -> Value {
        for _ in 0..300 {
            let (_, body) = self.get(&format!("/api/2.0/sql/statements/{id}")).await;
            let state = body["status"]["state"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if state != "PENDING" && state != "RUNNING" {
                return body;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("statement {id} did not finish");
    }
}

pub async fn fetch_token(http: &reqwest::Client, url: &str) -> String {
    let response = http
        .post(format!("{url}/oidc/v1/token"))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[("grant_type", "client_credentials"), ("scope", "all-apis")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_string()
}
