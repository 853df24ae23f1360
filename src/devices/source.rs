//! Where the registry comes from.

use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};

use super::registry::{Registry, RegistryError};
use crate::databricks::Secrets;

#[derive(Debug, Clone)]
pub(crate) enum KeySource {
    /// Registry JSON in an environment variable (app.yaml `valueFrom` a secret).
    Inline(SecretString),
    File(PathBuf),
    /// A Databricks secret, read through the Secrets API on every load.
    Secret {
        scope: String,
        key: String,
    },
}

impl KeySource {
    /// Parses `"<scope>/<key>"`.
    pub(crate) fn parse_secret_ref(reference: &str) -> Result<KeySource, RegistryError> {
        match reference.split_once('/') {
            Some((scope, key)) if !scope.is_empty() && !key.is_empty() && !key.contains('/') => {
                Ok(KeySource::Secret {
                    scope: scope.to_owned(),
                    key: key.to_owned(),
                })
            }
            _ => Err(RegistryError::SecretRef(reference.to_owned())),
        }
    }

    pub(crate) async fn load(&self, secrets: &Secrets) -> Result<Registry, RegistryError> {
        match self {
            KeySource::Inline(json) => Registry::parse(json.expose_secret().as_bytes()),
            KeySource::File(path) => {
                let owned = path.clone();
                let read = tokio::task::spawn_blocking(move || std::fs::read(owned))
                    .await
                    .unwrap_or_else(|join| Err(std::io::Error::other(join)));
                let json = read.map_err(|source| RegistryError::Io {
                    path: path.clone(),
                    source,
                })?;
                Registry::parse(&json)
            }
            KeySource::Secret { scope, key } => {
                let json =
                    secrets
                        .get(scope, key)
                        .await
                        .map_err(|source| RegistryError::Secret {
                            scope: scope.clone(),
                            key: key.clone(),
                            source: Box::new(source),
                        })?;
                Registry::parse(json.expose_secret())
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::devices::hash_key;

    #[test]
    fn parses_secret_references() {
        let KeySource::Secret { scope, key } = KeySource::parse_secret_ref("iot/registry").unwrap()
        else {
            panic!("not a secret source");
        };
        assert_eq!((scope.as_str(), key.as_str()), ("iot", "registry"));
        for bad in ["", "iot", "/registry", "iot/", "a/b/c"] {
            assert!(matches!(
                KeySource::parse_secret_ref(bad),
                Err(RegistryError::SecretRef(_))
            ));
        }
    }

    #[tokio::test]
    async fn loads_inline_and_file_sources() {
        let json = format!(
            r#"{{"devices": {{"d": {{"keys": ["{}"]}}}}}}"#,
            hash_key("k")
        );
        let inline = KeySource::Inline(json.clone().into());
        assert_eq!(
            inline
                .load(&offline_secrets())
                .await
                .unwrap()
                .device_count(),
            1
        );

        let dir = std::env::temp_dir().join(format!("lakegate-source-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("registry.json");
        std::fs::write(&path, &json).unwrap();
        let registry = KeySource::File(path.clone())
            .load(&offline_secrets())
            .await
            .unwrap();
        assert_eq!(&*registry.authenticate("k").unwrap().id, "d");

        std::fs::remove_file(&path).unwrap();
        let missing = KeySource::File(path)
            .load(&offline_secrets())
            .await
            .unwrap_err();
        assert!(matches!(missing, RegistryError::Io { .. }), "{missing}");
        std::fs::remove_dir(&dir).unwrap();
    }

    #[tokio::test]
    async fn loads_from_a_databricks_secret() {
        use crate::databricks::{Client, Config, Settings};
        use lakegate_emulator::{Emulator, EmulatorConfig};

        let token = "dapi-devices-test";
        let emulator = Emulator::start(EmulatorConfig {
            tokens: vec![token.into()],
            ..EmulatorConfig::default()
        })
        .await
        .unwrap();
        let settings = Settings {
            host: Some(emulator.url()),
            token: Some(token.into()),
            ..Settings::default()
        };
        let config = Config::resolve(settings, &Default::default()).unwrap();
        let secrets = Client::new(&config).unwrap().secrets();
        let json = format!(
            r#"{{"devices": {{"d": {{"keys": ["{}"]}}}}}}"#,
            hash_key("k")
        );
        secrets.create_scope("iot").await.unwrap();
        secrets.put_string("iot", "registry", &json).await.unwrap();

        let source = KeySource::parse_secret_ref("iot/registry").unwrap();
        let registry = source.load(&secrets).await.unwrap();
        assert_eq!(&*registry.authenticate("k").unwrap().id, "d");

        let missing = KeySource::parse_secret_ref("iot/absent").unwrap();
        let error = missing.load(&secrets).await.unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("cannot read device registry secret iot/absent:"),
            "{error}"
        );
        emulator.shutdown().await;
    }

    /// A Secrets client for sources that never call the workspace (its host refuses).
    pub(crate) fn offline_secrets() -> Secrets {
        let settings = crate::databricks::Settings {
            host: Some("http://127.0.0.1:9".into()),
            token: Some("dapi-never-sent".into()),
            ..Default::default()
        };
        let config = crate::databricks::Config::resolve(settings, &Default::default()).unwrap();
        crate::databricks::Client::new(&config).unwrap().secrets()
    }
}
