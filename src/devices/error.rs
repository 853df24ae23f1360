//! Why a registry could not be loaded: what and where, never a key or a hash.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Syntax only: serde_json's syntax messages give a position, never content.
    #[error("device registry is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("device registry: {0}")]
    Invalid(String),
    #[error("device registry, device {device}: {problem}")]
    Device { device: String, problem: String },
    #[error("device registry, relay {relay}: {problem}")]
    Relay { relay: String, problem: String },
    #[error("cannot read device registry file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read device registry secret {scope}/{key}: {source}")]
    Secret {
        scope: String,
        key: String,
        source: Box<crate::databricks::Error>,
    },
    #[error("device registry secret reference {0:?} is not \"<scope>/<key>\"")]
    SecretRef(String),
    #[error("the device registry is in Databricks secrets, but no workspace is configured")]
    NoWorkspace,
}
