//! Where `lakegate keys` makes its changes: a registry file or a Databricks secret,
//! as read-modify-write. The registry is read, changed (`edit.rs`), checked the way
//! the gateway will index it, and written; a new key is returned once, only after the
//! write is known to have stuck, and never stored.
//!
//! Two operators at once: a file is changed under an exclusive lock on a file beside it
//! and replaced by an atomic rename. The Secrets API has no compare-and-swap (a put
//! overwrites), so a change to a secret is written, then read back after a settle delay
//! longer than any writer's read-to-write window: a concurrent writer that read before
//! our write and wrote after it shows up as different content, and the change is made
//! again on what is there now, a bounded number of times (see [`change_registry`]).

use std::fmt;
use std::fs::File;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use secrecy::ExposeSecret;

use super::document::RegistryDocument;
use super::edit::{AdminError, Applied, Effect, EntryKind, KeyChange, apply, apply_keyed, holds};
use super::keys::NewKey;
use super::shards::{SECRET_LIMIT, SHARD_BUDGET, is_shard, shard_key};
use crate::databricks::{self, Secrets};

/// Where the registry lives, for `--file` and `--secret`.
pub enum RegistryStore {
    File(PathBuf),
    /// The base secret `key` and its shards (see `shards.rs`).
    Secret {
        secrets: Secrets,
        scope: String,
        key: String,
    },
}

impl fmt::Display for RegistryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryStore::File(path) => write!(f, "file {}", path.display()),
            RegistryStore::Secret { scope, key, .. } => write!(f, "secret {scope}/{key}"),
        }
    }
}

/// One shard of the registry as read: the file, or one secret.
pub(crate) struct Snapshot {
    pub(crate) document: RegistryDocument,
    /// The secret's key; empty for a file.
    shard: String,
}

/// The pace of a change to a secret (see [`change_registry`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// Longest a write may take from the start of its read to its acknowledgement. A
    /// read older than half of it is not written over; a write that takes longer is
    /// still checked, but may have overwritten a change another operator confirmed
    /// meanwhile, and says so ([`AdminError::Overran`]).
    window: Duration,
    /// How long after its write a change is read back: longer than `window`, so that a
    /// writer that read before our write landed has written by then.
    settle: Duration,
    /// Attempts before giving up with [`AdminError::Conflict`].
    attempts: u32,
}

impl Timing {
    /// What `lakegate keys` uses: a Secrets API call takes a few hundred milliseconds.
    pub(crate) const OPERATOR: Timing = Timing {
        window: Duration::from_millis(1500),
        settle: Duration::from_millis(2000),
        attempts: 12,
    };
}

impl RegistryStore {
    /// The whole registry as one document: the file, or the base secret with every
    /// shard merged in (for listing).
    pub async fn read_all(&self) -> Result<RegistryDocument, AdminError> {
        let RegistryStore::Secret {
            secrets,
            scope,
            key,
        } = self
        else {
            return match self.read_bytes("").await? {
                None => Err(AdminError::NoRegistry(self.to_string())),
                bytes => parse_shard(&self.name(""), bytes),
            };
        };
        let listing = secrets
            .list(scope)
            .await
            .map_err(|err| AdminError::Store(format!("listing scope {scope}: {err}")))?;
        let mut shards = listing.iter().filter(|secret| is_shard(key, &secret.key));
        let Some(first) = shards.next() else {
            return Err(AdminError::NoRegistry(self.to_string()));
        };
        let mut whole = RegistryDocument::default();
        for secret in std::iter::once(first).chain(shards) {
            let shard = self.read(&secret.key).await?.document;
            whole.devices.extend(shard.devices);
            whole.relays.extend(shard.relays);
        }
        Ok(whole)
    }

    /// Reads one shard (`shard` is a secret key; ignored for a file); a missing one reads
    /// as empty and is created on write.
    pub(crate) async fn read(&self, shard: &str) -> Result<Snapshot, AdminError> {
        let bytes = self.read_bytes(shard).await?;
        Ok(Snapshot {
            document: parse_shard(&self.name(shard), bytes)?,
            shard: shard.to_owned(),
        })
    }

    fn name(&self, shard: &str) -> String {
        match self {
            RegistryStore::File(path) => format!("file {}", path.display()),
            RegistryStore::Secret { scope, .. } => format!("secret {scope}/{shard}"),
        }
    }

    async fn read_bytes(&self, shard: &str) -> Result<Option<Vec<u8>>, AdminError> {
        let name = self.name(shard);
        match self {
            RegistryStore::File(path) => read_file(path),
            RegistryStore::Secret { secrets, scope, .. } => match secrets.get(scope, shard).await {
                Ok(bytes) => Ok(Some(bytes.expose_secret().to_vec())),
                Err(err) if err.error_code() == Some("RESOURCE_DOES_NOT_EXIST") => Ok(None),
                Err(err) => Err(AdminError::Store(format!("reading {name}: {err}"))),
            },
        }
    }

    /// Writes one secret whole.
    async fn put(&self, shard: &str, text: &str) -> Result<(), AdminError> {
        let RegistryStore::Secret { secrets, scope, .. } = self else {
            unreachable!("files are written by change_file");
        };
        (secrets.put_string(scope, shard, text).await)
            .map_err(|err| AdminError::Store(format!("writing {}: {err}", self.name(shard))))
    }

    /// A change to a registry in secrets, made so that it is known to have stuck when
    /// this returns. Each attempt reads the shards the change may be made in, makes it in
    /// one (or finds it there already, carried along by another writer), writes that
    /// shard, waits `settle` and reads it back: the change stuck if the shard holds
    /// exactly what was written. Otherwise another operator wrote in between, and the
    /// next attempt starts over from what is there now.
    ///
    /// Why that is enough: for a writer to undo our change after our read-back, it must
    /// have read the shard before our write landed (else it carries our change along)
    /// and written it after the read-back, so its read-to-write time exceeds `settle`,
    /// which exceeds `window`: every writer measures its own and reports when it
    /// overran. Not caught: a shard written back to exactly the bytes we wrote while we
    /// wait (only a writer making the very same change from the very same registry
    /// could), and a Secrets API that answers a read with less than the last
    /// acknowledged write.
    async fn change_secret(
        &self,
        change: &KeyChange,
        timing: Timing,
    ) -> Result<Applied, AdminError> {
        let new_key = change.new_key();
        let (mut effect, mut last_shard, mut overran) = (None, None, None);
        let mut collided = false;
        for _ in 0..timing.attempts {
            if collided {
                // Spread out the writers we collided with, so that the next round has a winner.
                let spread = rand::random_range(Duration::ZERO..=timing.settle * 2);
                tokio::time::sleep(spread).await;
            }
            let started = Instant::now();
            let (shard, document) =
                (self.plan(change, new_key.as_ref(), &mut effect, last_shard.as_deref())).await?;
            if started.elapsed() > timing.window / 2 {
                // Too slow a read to write over: the shard may have changed since.
                collided = false;
                continue;
            }
            let text = document.to_json();
            self.put(&shard, &text).await?;
            let took = started.elapsed();
            if took > timing.window {
                overran = overran.max(Some(took));
            }
            tokio::time::sleep(timing.settle).await;
            if self.read_bytes(&shard).await?.as_deref() == Some(text.as_bytes()) {
                return Ok(Applied {
                    new_key,
                    overran,
                    created: false,
                });
            }
            collided = true;
            last_shard = Some(shard);
        }
        Err(AdminError::Conflict(timing.attempts))
    }

    /// The shard to write and what to write there: the shard holding the entry, changed;
    /// for a new device the base while it has room, else the device's shard. Relays
    /// live in the base: they are few. `effect` is the change as made by an earlier
    /// attempt in `last_shard`: where it shows already, the shard is written as it is.
    async fn plan(
        &self,
        change: &KeyChange,
        key: Option<&NewKey>,
        effect: &mut Option<Effect>,
        last_shard: Option<&str>,
    ) -> Result<(String, RegistryDocument), AdminError> {
        let RegistryStore::Secret { key: base, .. } = self else {
            unreachable!("files are changed by change_file");
        };
        let subject = &change.subject;
        let shard = (subject.kind == EntryKind::Device).then(|| shard_key(base, &subject.id));
        let read_shard = async {
            match &shard {
                Some(shard) => self.read(shard).await.map(Some),
                None => Ok(None),
            }
        };
        let (base, shard) = tokio::try_join!(self.read(base), read_shard)?;
        let shards: Vec<Snapshot> = std::iter::once(base).chain(shard).collect();
        let holding: Vec<&Snapshot> = shards
            .iter()
            .filter(|shard| holds(&shard.document, subject))
            .collect();
        let home = match holding[..] {
            [one, other] => {
                return Err(AdminError::Invalid(format!(
                    "{subject} is in both {} and {}",
                    self.name(&one.shard),
                    self.name(&other.shard)
                )));
            }
            [shard] => Some(shard),
            // Removed by an earlier attempt: that shard is written again, as it is.
            _ => (shards.iter())
                .filter(|shard| Some(shard.shard.as_str()) == last_shard)
                .find(|shard| {
                    effect
                        .as_ref()
                        .is_some_and(|e| e.shown_in(&shard.document, subject))
                }),
        };
        if let Some(shard) = home {
            return self.make_in(shard, change, key, effect);
        }
        if let Some((last, others)) = shards.split_last().filter(|_| change.adds()) {
            for shard in others {
                match self.make_in(shard, change, key, effect) {
                    Err(AdminError::Full(_)) => continue,
                    made => return made,
                }
            }
            return self.make_in(last, change, key, effect);
        }
        // Refused as the base refuses it (not in the registry).
        self.make_in(&shards[0], change, key, effect)
    }

    /// `shard` with the change made in it, if it fits (see [`has_room`]).
    fn make_in(
        &self,
        shard: &Snapshot,
        change: &KeyChange,
        key: Option<&NewKey>,
        effect: &mut Option<Effect>,
    ) -> Result<(String, RegistryDocument), AdminError> {
        let mut document = shard.document.clone();
        let shown = (effect.as_ref()).is_some_and(|e| e.shown_in(&document, &change.subject));
        if !shown {
            *effect = Some(apply_keyed(&mut document, change, key)?);
        }
        if !has_room(&document, !shown && change.adds()) {
            return Err(AdminError::Full(self.name(&shard.shard)));
        }
        Ok((shard.shard.clone(), document))
    }
}

/// Whether a shard may be written as `document`. A new entry only while every entry in
/// the shard could still get its second key and be disabled within [`SHARD_BUDGET`], so
/// that a change to an entry already there always fits; other changes up to
/// Databricks' limit, which leaves room in shards filled before this rule.
fn has_room(document: &RegistryDocument, adds_entry: bool) -> bool {
    let size = document.to_json().len();
    match adds_entry {
        true => size.saturating_add(growth(document)) <= SHARD_BUDGET,
        false => size <= SECRET_LIMIT,
    }
}

/// Bytes the entries of a shard may still grow by: each to two keys, and disabled.
fn growth(document: &RegistryDocument) -> usize {
    const KEY: usize = r#","sha256:""#.len() + 64;
    const DISABLED: usize = r#","disabled":true"#.len();
    let devices = (document.devices.values()).map(|entry| (entry.keys.len(), entry.disabled));
    let relays = (document.relays.values()).map(|entry| (entry.keys.len(), entry.disabled));
    devices
        .chain(relays)
        .map(|(keys, disabled)| {
            2usize.saturating_sub(keys) * KEY + if disabled { 0 } else { DISABLED }
        })
        .sum()
}

/// A shard as read; a missing one is empty.
fn parse_shard(name: &str, bytes: Option<Vec<u8>>) -> Result<RegistryDocument, AdminError> {
    match bytes {
        None => Ok(RegistryDocument::default()),
        Some(bytes) => RegistryDocument::parse(&bytes)
            .map_err(|err| AdminError::Invalid(format!("{name}: {err}"))),
    }
}

fn read_file(path: &Path) -> Result<Option<Vec<u8>>, AdminError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(err) if err.kind() == ErrorKind::NotFound => Ok(None),
        Err(err) => Err(AdminError::Store(format!(
            "reading file {}: {err}",
            path.display()
        ))),
    }
}

/// A change to a registry file, under an exclusive lock on `<file>.lock`, so that
/// other `lakegate keys` commands wait for it. The lock file stays: removing it would
/// let two commands hold locks on two different files.
fn change_file(path: &Path, change: &KeyChange) -> Result<Applied, AdminError> {
    let failed = |what: &str, err: std::io::Error| {
        AdminError::Store(format!("{what} file {}: {err}", path.display()))
    };
    let name = format!("file {}", path.display());
    let missing = || AdminError::NoRegistry(name.clone());
    // Before the lock, so that a mistyped path leaves no `.lock` file behind.
    let absent = std::fs::metadata(path).is_err_and(|err| err.kind() == ErrorKind::NotFound);
    if absent && !change.adds() {
        return Err(missing());
    }
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(beside(path, ".lock"))
        .map_err(|err| failed("locking", err))?;
    lock.lock().map_err(|err| failed("locking", err))?;
    let bytes = read_file(path)?;
    let created = bytes.is_none();
    if created && !change.adds() {
        return Err(missing());
    }
    let mut document = parse_shard(&name, bytes)?;
    let applied = Applied {
        created,
        ..apply(&mut document, change)?
    };
    let text = document.to_pretty_json();
    replace_file(path, text.as_bytes()).map_err(|err| failed("writing", err))?;
    Ok(applied)
}

/// Writes `bytes` beside `path`, flushed to disk, and renames it over `path`: a gateway
/// reloading meanwhile, or a crash, finds the old registry or the new one, never half.
fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;

    let staged = beside(path, ".staged");
    let mut file = File::create(&staged)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&staged, path)?;
    // The rename is durable once the directory is.
    let dir = (path.parent())
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

/// `path` with `suffix` added to its name.
fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Makes `change` where the registry lives, and returns only once it is known to be
/// there: a file under a lock, a secret written and read back (see
/// `RegistryStore::change_secret` for what two operators at once can and cannot do).
/// A new key is returned only then; an error means the change is not confirmed.
pub async fn change_registry(
    store: &RegistryStore,
    change: &KeyChange,
) -> Result<Applied, AdminError> {
    change_timed(store, change, Timing::OPERATOR).await
}

pub(crate) async fn change_timed(
    store: &RegistryStore,
    change: &KeyChange,
    timing: Timing,
) -> Result<Applied, AdminError> {
    match store {
        RegistryStore::File(path) => {
            let (path, change) = (path.clone(), change.clone());
            tokio::task::spawn_blocking(move || change_file(&path, &change))
                .await
                .unwrap_or_else(|join| Err(AdminError::Store(join.to_string())))
        }
        RegistryStore::Secret { .. } => store.change_secret(change, timing).await,
    }
}

/// A Secrets client from Databricks' unified configuration (environment, then the
/// `~/.databrickscfg` profile).
pub fn secrets_from_environment(
    vars: &std::collections::HashMap<String, String>,
) -> Result<Secrets, AdminError> {
    let config = databricks::Config::resolve(databricks::Settings::default(), vars)
        .map_err(|err| AdminError::Store(err.to_string()))?;
    let client =
        databricks::Client::new(&config).map_err(|err| AdminError::Store(err.to_string()))?;
    Ok(client.secrets())
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;
    use crate::devices::document::DeviceEntry;
    use crate::devices::edit::{Action, NewEntry, Subject};
    use crate::devices::{Registry, generate_key, hash_key, listing};

    async fn fleet_secret_store() -> (lakegate_emulator::Emulator, Secrets, RegistryStore) {
        let emulator = lakegate_emulator::Emulator::start(lakegate_testkit::emulator_config())
            .await
            .unwrap();
        let secrets = crate::devices::source::tests::secrets_of(&emulator);
        secrets.create_scope("fleet").await.unwrap();
        let store = RegistryStore::Secret {
            secrets: secrets.clone(),
            scope: "fleet".into(),
            key: "devices".into(),
        };
        (emulator, secrets, store)
    }

    #[tokio::test]
    async fn relays_live_in_the_base_secret() {
        use crate::devices::KeySource;

        let (emulator, secrets, store) = fleet_secret_store().await;
        // A device in its shard (as in a fleet that outgrew the base), a relay for it.
        let shard = shard_key("devices", "pump-7");
        let device_key = generate_key();
        let in_shard = format!(
            r#"{{"devices": {{"pump-7": {{"keys": ["{}"]}}}}}}"#,
            device_key.hash
        );
        secrets
            .put_string("fleet", &shard, &in_shard)
            .await
            .unwrap();
        let devices = vec!["pump-*".into()];
        let add = relay("site-a", Action::Add(NewEntry::Relay { devices }));
        let relay_key = change_registry(&store, &add)
            .await
            .unwrap()
            .new_key
            .unwrap();
        let base = store.read("devices").await.unwrap().document;
        assert!(base.relays.contains_key("site-a"), "{base:?}");
        change_registry(&store, &relay("site-a", Action::Disable))
            .await
            .unwrap();
        change_registry(&store, &relay("site-a", Action::Enable))
            .await
            .unwrap();
        let listed = listing(&store.read_all().await.unwrap());
        assert!(listed.contains("pump-7\t1\tfalse"), "{listed}");
        assert!(listed.contains("site-a\t1\tfalse\tpump-*"), "{listed}");

        let source = KeySource::parse_secret_ref("fleet/devices").unwrap();
        let registry = source.load(Some(&secrets)).await.unwrap();
        let Ok(crate::devices::Sender::Relay(relay)) =
            registry.authenticate(relay_key.key.expose_secret())
        else {
            panic!("the relay's key authenticates it");
        };
        assert!(relay.speaks_for("pump-7"));
        assert!(matches!(
            registry.relayed("pump-7"),
            crate::devices::Relayed::Enabled(_)
        ));
        emulator.shutdown().await;
    }

    /// One operator alone: nobody to wait for.
    const ALONE: Timing = Timing {
        window: Duration::from_secs(3600),
        settle: Duration::ZERO,
        attempts: 1,
    };

    fn add_change(id: &str) -> KeyChange {
        let new = NewEntry::Device {
            rate_per_sec: None,
            burst: None,
        };
        KeyChange::new(Subject::device(id), Action::Add(new))
    }

    fn change_of(id: &str, action: Action) -> KeyChange {
        KeyChange::new(Subject::device(id), action)
    }

    fn relay(id: &str, action: Action) -> KeyChange {
        KeyChange::new(Subject::relay(id), action)
    }

    /// Whether `shard` holds the device `id`.
    fn in_shard(shard: &Snapshot, id: &str) -> bool {
        holds(&shard.document, &Subject::device(id))
    }

    #[tokio::test]
    async fn a_base_filled_by_adds_still_takes_a_rotation_and_a_disable_of_each_device() {
        let (emulator, _secrets, store) = fleet_secret_store().await;
        // Long ids fill the base in fewer adds.
        let id = |n: usize| format!("pump-{n:04}-{}", "x".repeat(118));
        let mut in_base = Vec::new();
        let spilled = loop {
            let next = id(in_base.len());
            change_timed(&store, &add_change(&next), ALONE)
                .await
                .unwrap();
            if !in_shard(&store.read("devices").await.unwrap(), &next) {
                break next;
            }
            in_base.push(next);
            assert!(in_base.len() < 2_000, "the base never fills");
        };
        let shard = store.read(&shard_key("devices", &spilled)).await.unwrap();
        assert!(in_shard(&shard, &spilled));

        // The earliest device gets a second key and is disabled, in the base.
        for change in [
            change_of(&id(0), Action::Rotate),
            change_of(&id(0), Action::Disable),
        ] {
            change_timed(&store, &change, ALONE).await.unwrap();
        }
        // And so could every other device in it, all at once.
        let mut base = store.read("devices").await.unwrap().document;
        assert_eq!(base.devices[&id(0)].keys.len(), 2);
        for device in &in_base[1..] {
            apply(&mut base, &change_of(device, Action::Rotate)).unwrap();
            apply(&mut base, &change_of(device, Action::Disable)).unwrap();
        }
        assert_eq!(base.devices.len(), in_base.len());
        assert!(base.to_json().len() <= SHARD_BUDGET);
        emulator.shutdown().await;
    }

    #[tokio::test]
    async fn a_full_base_secret_spills_new_devices_into_their_shards() {
        use crate::devices::KeySource;

        let (emulator, secrets, store) = fleet_secret_store().await;
        // A small fleet lives in the base secret.
        let first = change_registry(&store, &add_change("pump-0"))
            .await
            .unwrap();
        assert!(in_shard(&store.read("devices").await.unwrap(), "pump-0"));

        // Fill the base to just under its budget, as adds did before they kept room for
        // rotations and disables.
        let mut base = store.read("devices").await.unwrap();
        let devices = &mut base.document.devices;
        let size = |devices: &std::collections::BTreeMap<String, DeviceEntry>| {
            serde_json::to_string(devices).unwrap().len()
        };
        let mut n = 0;
        while size(devices) < SHARD_BUDGET - 200 {
            // Forty at a time while far from the budget, then one by one.
            let step = if size(devices) < SHARD_BUDGET - 5_000 {
                40
            } else {
                1
            };
            for _ in 0..step {
                n += 1;
                let entry = DeviceEntry {
                    keys: vec![hash_key(&format!("k-{n}")).parse().unwrap()],
                    disabled: false,
                    rate_per_sec: None,
                    burst: None,
                };
                devices.insert(format!("filler-{n:05}"), entry);
            }
        }
        let full = base.document.to_json();
        store.put("devices", &full).await.unwrap();

        let added = change_timed(&store, &add_change("pump-9"), ALONE)
            .await
            .unwrap();
        let shard = shard_key("devices", "pump-9");
        assert!(in_shard(&store.read(&shard).await.unwrap(), "pump-9"));
        assert!(!in_shard(&store.read("devices").await.unwrap(), "pump-9"));
        // Found where it lives for later changes, and listed with the others.
        let rotate = change_of("pump-9", Action::Rotate);
        change_timed(&store, &rotate, ALONE).await.unwrap();
        assert!(matches!(
            change_timed(&store, &add_change("pump-9"), ALONE).await,
            Err(AdminError::Exists(_))
        ));
        // The devices in the full base can still be disabled and rotated.
        for change in [
            change_of("pump-0", Action::Disable),
            change_of("pump-0", Action::Rotate),
        ] {
            change_timed(&store, &change, ALONE).await.unwrap();
        }
        let listed = listing(&store.read_all().await.unwrap());
        assert!(listed.contains("pump-9\t2\tfalse"), "{listed}");
        assert!(listed.contains("pump-0\t2\ttrue"), "{listed}");

        // The gateway's loader sees both shards.
        let source = KeySource::parse_secret_ref("fleet/devices").unwrap();
        let registry = source.load(Some(&secrets)).await.unwrap();
        let first = first.new_key.unwrap();
        assert!(matches!(
            registry.authenticate(first.key.expose_secret()),
            Err(crate::devices::AuthFailure::Disabled { .. })
        ));
        assert!(
            registry
                .authenticate(added.new_key.unwrap().key.expose_secret())
                .is_ok()
        );
        emulator.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_changes_to_a_file_all_stick() {
        let dir = lakegate_testkit::temp_dir();
        let path = dir.path().join("devices.json");
        let store = std::sync::Arc::new(RegistryStore::File(path.clone()));
        let changes = (0..16).map(|n| {
            let store = store.clone();
            tokio::spawn(async move {
                let change = add_change(&format!("pump-{n}"));
                change_registry(&store, &change)
                    .await
                    .map(|applied| applied.new_key.unwrap())
            })
        });
        let keys = futures::future::join_all(changes).await;
        let registry = Registry::parse(&std::fs::read(&path).unwrap()).unwrap();
        for key in keys {
            let key = key.unwrap().expect("every change sticks");
            assert!(registry.authenticate(key.key.expose_secret()).is_ok());
        }
        assert!(!beside(&path, ".staged").exists());
    }
}
