//! Secrets API (`/api/2.0/secrets/...`).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use secrecy::SecretSlice;
use secrecy::zeroize::Zeroize;
use serde::Deserialize;
use serde_json::json;

use super::error::Error;
use super::http::{ApiClient, Call};

#[derive(Debug, Clone)]
pub struct Secrets {
    api: ApiClient,
}

/// A key of a scope, as listed (values are never listed).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SecretMetadata {
    pub key: String,
    /// Milliseconds since the epoch.
    #[serde(default)]
    pub last_updated_timestamp: i64,
}

#[derive(Deserialize)]
struct GetResponse {
    value: String,
}

#[derive(Deserialize)]
struct ListResponse {
    #[serde(default)]
    secrets: Vec<SecretMetadata>,
}

impl Secrets {
    pub fn new(api: ApiClient) -> Self {
        Secrets { api }
    }

    /// The secret's bytes (Databricks sends them base64-encoded).
    /// A missing secret is a 404 `RESOURCE_DOES_NOT_EXIST`.
    pub async fn get(&self, scope: &str, key: &str) -> Result<SecretSlice<u8>, Error> {
        let call = Call::get("/api/2.0/secrets/get")
            .query("scope", scope)
            .query("key", key);
        let GetResponse { mut value } = self.api.call(call).await?;
        let decoded = STANDARD.decode(value.as_bytes());
        value.zeroize();
        let bytes = decoded
            .map_err(|_| Error::Decode(format!("secret {scope}/{key} is not valid base64")))?;
        Ok(SecretSlice::from(bytes))
    }

    pub async fn put_string(&self, scope: &str, key: &str, value: &str) -> Result<(), Error> {
        let body = json!({ "scope": scope, "key": key, "string_value": value });
        self.post("/api/2.0/secrets/put", body).await
    }

    pub async fn list(&self, scope: &str) -> Result<Vec<SecretMetadata>, Error> {
        let call = Call::get("/api/2.0/secrets/list").query("scope", scope);
        Ok(self.api.call::<ListResponse>(call).await?.secrets)
    }

    pub async fn delete(&self, scope: &str, key: &str) -> Result<(), Error> {
        self.post(
            "/api/2.0/secrets/delete",
            json!({ "scope": scope, "key": key }),
        )
        .await
    }

    pub async fn create_scope(&self, scope: &str) -> Result<(), Error> {
        self.post("/api/2.0/secrets/scopes/create", json!({ "scope": scope }))
            .await
    }

    pub async fn delete_scope(&self, scope: &str) -> Result<(), Error> {
        self.post("/api/2.0/secrets/scopes/delete", json!({ "scope": scope }))
            .await
    }

    async fn post(&self, path: &str, body: serde_json::Value) -> Result<(), Error> {
        let call = Call::post(path).json(&body)?;
        self.api.call::<serde::de::IgnoredAny>(call).await.map(drop)
    }
}
