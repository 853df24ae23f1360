//! A running emulator plus an HTTP client holding a valid token.

#![allow(dead_code)] // each test binary uses a different part

use std::time::Duration;

use lakegate_emulator::{Emulator, EmulatorConfig};
use lakegate_testkit::{fetch_token, http_client, poll, start_emulator};
use serde_json::{Value, json};

pub(crate) struct Workspace {
    pub emulator: Emulator,
    pub http: reqwest::Client,
    pub token: String,
}

impl Workspace {
    pub(crate) async fn start(config: EmulatorConfig) -> Self {
        let emulator = start_emulator(config).await;
        let http = http_client();
        let token = fetch_token(&http, &emulator.url()).await;
        Self {
            emulator,
            http,
            token,
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.emulator.url())
    }

    pub(crate) async fn get(&self, path: &str) -> (u16, Value) {
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

    pub(crate) async fn post(&self, path: &str, body: Value) -> (u16, Value) {
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
    pub(crate) async fn execute(&self, mut body: Value) -> (u16, Value) {
        body["warehouse_id"] = self.emulator.warehouse_id().into();
        if body.get("wait_timeout").is_none() {
            body["wait_timeout"] = "30s".into();
        }
        self.post("/api/2.0/sql/statements", body).await
    }

    /// Runs a statement that must succeed and returns its response.
    pub(crate) async fn sql(&self, statement: &str) -> Value {
        let (status, body) = self.execute(json!({ "statement": statement })).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"]["state"], "SUCCEEDED", "{statement}: {body}");
        body
    }

    /// Polls the statement until it is neither PENDING nor RUNNING; returns its response.
    pub(crate) async fn poll_until_done(&self, id: &str) -> Value {
        let path = format!("/api/2.0/sql/statements/{id}");
        let (within, every) = (Duration::from_secs(6), Duration::from_millis(20));
        let finished = |(_, body): &(u16, Value)| {
            !matches!(
                body["status"]["state"].as_str(),
                Some("PENDING" | "RUNNING")
            )
        };
        match poll(within, every, async || self.get(&path).await, finished).await {
            Ok((_, body)) => body,
            Err(_) => panic!("statement {id} did not finish"),
        }
    }
}
