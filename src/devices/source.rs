//! Where the registry comes from: an environment variable, a file, or Databricks
//! secrets (a base secret and its shards, see `shards.rs`), re-read only where the
//! Secrets API says something changed.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use secrecy::{ExposeSecret, SecretSlice, SecretString};
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;

use super::error::RegistryError;
use super::registry::{Contents, Registry};
use super::shards::is_shard;
use crate::databricks::Secrets;

#[derive(Debug, Clone)]
pub enum KeySource {
    /// Registry JSON in an environment variable (app.yaml `valueFrom` a secret).
    Inline(SecretString),
    File(PathBuf),
    /// Databricks secrets, through the Secrets API.
    Secret(Arc<SecretRegistry>),
}

impl KeySource {
    /// Parses `"<scope>/<key>"`.
    pub fn parse_secret_ref(reference: &str) -> Result<KeySource, RegistryError> {
        match reference.split_once('/') {
            Some((scope, key)) if !scope.is_empty() && !key.is_empty() && !key.contains('/') => {
                Ok(KeySource::Secret(Arc::new(SecretRegistry {
                    scope: scope.to_owned(),
                    key: key.to_owned(),
                    loaded: Mutex::default(),
                })))
            }
            _ => Err(RegistryError::SecretRef(reference.to_owned())),
        }
    }

    /// Reads the registry; `secrets` is the workspace's, needed for a registry in secrets.
    pub async fn load(&self, secrets: Option<&Secrets>) -> Result<Arc<Registry>, RegistryError> {
        match self {
            KeySource::Inline(json) => {
                Registry::parse(json.expose_secret().as_bytes()).map(Arc::new)
            }
            KeySource::File(path) => {
                let owned = path.clone();
                let read = tokio::task::spawn_blocking(move || std::fs::read(owned))
                    .await
                    .unwrap_or_else(|join| Err(std::io::Error::other(join)));
                let json = read.map_err(|source| RegistryError::Io {
                    path: path.clone(),
                    source,
                })?;
                Registry::parse(&json).map(Arc::new)
            }
            KeySource::Secret(registry) => {
                registry
                    .load(secrets.ok_or(RegistryError::NoWorkspace)?)
                    .await
            }
        }
    }
}

/// A registry in Databricks secrets, with the shards it last read: a reload lists the
/// scope and reads only the shards whose update time changed.
pub struct SecretRegistry {
    scope: String,
    key: String,
    loaded: Mutex<Loaded>,
}

#[derive(Default)]
struct Loaded {
    shards: HashMap<String, Shard>,
    combined: Option<Arc<Registry>>,
}

struct Shard {
    /// The shard's `last_updated_timestamp` when it was read.
    updated_ms: i64,
    /// SHA-256 of the bytes read.
    digest: [u8; 32],
    /// Read again since its update time last changed. Update times have millisecond
    /// resolution, so a second write in the millisecond of the first could hide behind
    /// an unchanged time: every shard is read once more after it changes.
    confirmed: bool,
    /// What the shard put into the combined registry, to take out when it changes; the
    /// entries themselves live only there.
    contents: Contents,
}

/// Parts read at once.
const PARALLEL_READS: usize = 16;

impl fmt::Debug for SecretRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretRegistry({}/{})", self.scope, self.key)
    }
}

impl SecretRegistry {
    async fn load(&self, secrets: &Secrets) -> Result<Arc<Registry>, RegistryError> {
        let listing = secrets
            .list(&self.scope)
            .await
            .map_err(|source| self.error(&self.key, source))?;
        let shards: HashMap<String, i64> = listing
            .into_iter()
            .filter(|secret| is_shard(&self.key, &secret.key))
            .map(|secret| (secret.key, secret.last_updated_timestamp))
            .collect();
        if shards.is_empty() {
            // Neither the base nor a shard: the read says why (missing, no permission).
            secrets
                .get(&self.scope, &self.key)
                .await
                .map_err(|source| self.error(&self.key, source))?;
        }
        let stale: Vec<String> = {
            let loaded = self.lock();
            shards
                .iter()
                .filter(|&(key, &updated_ms)| {
                    loaded
                        .shards
                        .get(key)
                        .is_none_or(|shard| shard.updated_ms != updated_ms || !shard.confirmed)
                })
                .map(|(key, _)| key.clone())
                .collect()
        };
        let fetched = self.read_shards(secrets, stale).await?;

        let mut loaded = self.lock();
        let removed: Vec<String> = (loaded.shards.keys())
            .filter(|key| !shards.contains_key(*key))
            .cloned()
            .collect();
        let mut replaced = Vec::new();
        for (key, digest, json) in fetched {
            let updated_ms = shards[&key];
            if let Some(shard) = loaded.shards.get_mut(&key).filter(|p| p.digest == digest) {
                shard.confirmed = shard.updated_ms == updated_ms;
                shard.updated_ms = updated_ms;
                continue;
            }
            let registry = Registry::parse(json.expose_secret()).map_err(|err| {
                RegistryError::Invalid(format!("secret {}/{key}: {err}", self.scope))
            })?;
            replaced.push((key, updated_ms, digest, registry));
        }
        let combined = match &loaded.combined {
            Some(combined) if removed.is_empty() && replaced.is_empty() => {
                return Ok(combined.clone());
            }
            Some(combined) => (**combined).clone(),
            None => Registry::empty(),
        };
        match self.rebuild(&mut loaded, combined, &removed, replaced) {
            Ok(combined) => {
                let combined = Arc::new(combined);
                loaded.combined = Some(combined.clone());
                Ok(combined)
            }
            Err(err) => {
                // Read everything again next time rather than trust a mix.
                *loaded = Loaded::default();
                Err(err)
            }
        }
    }

    /// The combined registry with the `removed` shards taken out and the `replaced`
    /// shards put in anew.
    fn rebuild(
        &self,
        loaded: &mut Loaded,
        mut combined: Registry,
        removed: &[String],
        replaced: Vec<(String, i64, [u8; 32], Registry)>,
    ) -> Result<Registry, RegistryError> {
        let gone = removed.iter().chain(replaced.iter().map(|(key, ..)| key));
        for key in gone {
            if let Some(shard) = loaded.shards.remove(key) {
                combined.remove(&shard.contents);
            }
        }
        for (key, updated_ms, digest, registry) in replaced {
            let contents = registry.contents();
            combined.absorb(registry)?;
            let shard = Shard {
                updated_ms,
                digest,
                confirmed: false,
                contents,
            };
            loaded.shards.insert(key, shard);
        }
        Ok(combined)
    }

    /// Reads `keys`, a few at a time: each with the digest of its bytes.
    async fn read_shards(
        &self,
        secrets: &Secrets,
        keys: Vec<String>,
    ) -> Result<Vec<(String, [u8; 32], SecretSlice<u8>)>, RegistryError> {
        let mut pending = keys.into_iter();
        let mut reading = JoinSet::new();
        let mut read = Vec::new();
        loop {
            while reading.len() < PARALLEL_READS {
                let Some(key) = pending.next() else { break };
                let (secrets, scope) = (secrets.clone(), self.scope.clone());
                reading.spawn(async move {
                    let value = secrets.get(&scope, &key).await;
                    (key, value)
                });
            }
            let Some(joined) = reading.join_next().await else {
                return Ok(read);
            };
            let (key, value) = joined.expect("reading a secret does not panic");
            let json = value.map_err(|source| self.error(&key, source))?;
            let digest = Sha256::digest(json.expose_secret()).into();
            read.push((key, digest, json));
        }
    }

    fn error(&self, key: &str, source: crate::databricks::Error) -> RegistryError {
        RegistryError::Secret {
            scope: self.scope.clone(),
            key: key.to_owned(),
            source: Box::new(source),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Loaded> {
        self.loaded.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::devices::hash_key;

    #[test]
    fn parses_secret_references() {
        let KeySource::Secret(registry) = KeySource::parse_secret_ref("iot/registry").unwrap()
        else {
            panic!("not a secret source");
        };
        assert_eq!(format!("{registry:?}"), "SecretRegistry(iot/registry)");
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
        assert_eq!(inline.load(None).await.unwrap().device_count(), 1);

        let dir = std::env::temp_dir().join(format!("lakegate-source-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("registry.json");
        std::fs::write(&path, &json).unwrap();
        let registry = KeySource::File(path.clone()).load(None).await.unwrap();
        assert_eq!(&**registry.authenticate("k").unwrap().id(), "d");

        std::fs::remove_file(&path).unwrap();
        let missing = KeySource::File(path).load(None).await.unwrap_err();
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
        let registry = source.load(Some(&secrets)).await.unwrap();
        assert_eq!(&**registry.authenticate("k").unwrap().id(), "d");

        let missing = KeySource::parse_secret_ref("iot/absent").unwrap();
        let error = missing.load(Some(&secrets)).await.unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("cannot read device registry secret iot/absent:"),
            "{error}"
        );
        emulator.shutdown().await;
    }

    #[tokio::test]
    async fn a_sharded_registry_is_read_whole_then_only_where_it_changed() {
        use crate::devices::shard_key;
        use lakegate_emulator::Emulator;

        let emulator = Emulator::start(lakegate_testkit::emulator_config())
            .await
            .unwrap();
        let secrets = secrets_of(&emulator);
        let entry = |device: &str, key: &str| {
            format!(
                r#"{{"devices": {{"{device}": {{"keys": ["{}"]}}}}}}"#,
                hash_key(key)
            )
        };
        secrets.create_scope("iot").await.unwrap();
        secrets
            .put_string("iot", "registry", &entry("a", "ka"))
            .await
            .unwrap();
        let shard_b = shard_key("registry", "b");
        secrets
            .put_string("iot", &shard_b, &entry("b", "kb"))
            .await
            .unwrap();
        // Not a shard of the registry: ignored.
        secrets
            .put_string("iot", "registry-old", "not json")
            .await
            .unwrap();

        let source = KeySource::parse_secret_ref("iot/registry").unwrap();
        let first = source.load(Some(&secrets)).await.unwrap();
        assert_eq!(first.device_count(), 2);
        assert_eq!(&**first.authenticate("kb").unwrap().id(), "b");
        // Read once more to confirm (nothing changed: the same registry), then only listed.
        let confirmed = source.load(Some(&secrets)).await.unwrap();
        assert!(Arc::ptr_eq(&first, &confirmed));
        let calls = emulator.stats().api_requests;
        let steady = source.load(Some(&secrets)).await.unwrap();
        assert!(Arc::ptr_eq(&first, &steady));
        assert_eq!(
            emulator.stats().api_requests - calls,
            1,
            "one list, no reads"
        );

        // A changed shard is read again; the others are not.
        secrets
            .put_string("iot", &shard_b, &entry("b", "kb2"))
            .await
            .unwrap();
        let calls = emulator.stats().api_requests;
        let changed = source.load(Some(&secrets)).await.unwrap();
        assert_eq!(
            emulator.stats().api_requests - calls,
            2,
            "one list, one read"
        );
        assert!(changed.authenticate("kb").is_err());
        assert_eq!(&**changed.authenticate("kb2").unwrap().id(), "b");
        assert_eq!(&**changed.authenticate("ka").unwrap().id(), "a");

        // A device in two shards is refused; the caller keeps what it had.
        secrets
            .put_string("iot", &shard_b, &entry("a", "kx"))
            .await
            .unwrap();
        let error = source.load(Some(&secrets)).await.unwrap_err();
        assert!(error.to_string().contains("two shards"), "{error}");
        secrets.delete("iot", &shard_b).await.unwrap();
        let healed = source.load(Some(&secrets)).await.unwrap();
        assert_eq!(healed.device_count(), 1);
        emulator.shutdown().await;
    }

    /// A Secrets client for `emulator`, with the testkit's token.
    pub(crate) fn secrets_of(emulator: &lakegate_emulator::Emulator) -> Secrets {
        let settings = crate::databricks::Settings {
            host: Some(emulator.url()),
            token: Some(lakegate_testkit::PAT.into()),
            ..Default::default()
        };
        let config = crate::databricks::Config::resolve(settings, &Default::default()).unwrap();
        crate::databricks::Client::new(&config).unwrap().secrets()
    }
}
