//! The live registry and its reload: every interval, and for a file also within
//! [`FILE_POLL`] of a change to it.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::error::RegistryError;
use super::registry::Registry;
use super::source::KeySource;
use crate::databricks::Secrets;

/// The registry in use. A reload swaps the whole `Arc`, so a request that
/// already took `current()` finishes against the registry it started with; taking it
/// is lock-free, so reloads never hold up requests.
#[derive(Clone)]
pub(crate) struct LiveRegistry {
    current: Arc<ArcSwap<Registry>>,
}

impl LiveRegistry {
    pub(crate) fn new(registry: Arc<Registry>) -> Self {
        LiveRegistry {
            current: Arc::new(ArcSwap::new(registry)),
        }
    }

    pub(crate) fn current(&self) -> Arc<Registry> {
        self.current.load_full()
    }

    pub(crate) fn replace(&self, registry: Arc<Registry>) {
        self.current.store(registry);
    }
}

impl fmt::Debug for LiveRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LiveRegistry")
            .field(&self.current())
            .finish()
    }
}

/// How often a registry file is looked at: a `keys` change works within about a second.
const FILE_POLL: Duration = Duration::from_millis(500);

/// A file modified this recently may be written again within its timestamp's
/// resolution without its metadata changing: its bytes are compared too.
const RACY: Duration = Duration::from_secs(2);

/// Watches a registry file cheaply: its metadata at every look, its bytes only when the
/// metadata moved or is too recent to trust.
struct FileWatch {
    path: PathBuf,
    stat: Option<Stat>,
    digest: Option<[u8; 32]>,
}

/// What any write to the file changes: an atomic replace (`keys` commands) makes a new
/// inode, a write in place moves the times.
#[derive(PartialEq)]
struct Stat {
    len: u64,
    modified: SystemTime,
    changed: (i64, i64),
    inode: u64,
}

impl Stat {
    fn of(metadata: &std::fs::Metadata) -> Stat {
        #[cfg(unix)]
        let (changed, inode) = {
            use std::os::unix::fs::MetadataExt;
            ((metadata.ctime(), metadata.ctime_nsec()), metadata.ino())
        };
        // Elsewhere the length and modification time, and the bytes while recent.
        #[cfg(not(unix))]
        let (changed, inode) = ((0, 0), 0);
        Stat {
            len: metadata.len(),
            modified: metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            changed,
            inode,
        }
    }
}

impl FileWatch {
    fn new(path: PathBuf) -> FileWatch {
        let mut watch = FileWatch {
            path,
            stat: None,
            digest: None,
        };
        watch.changed();
        watch
    }

    /// Whether the file's bytes (or its absence) differ from the last look.
    fn changed(&mut self) -> bool {
        let stat = std::fs::metadata(&self.path).ok().map(|m| Stat::of(&m));
        let racy = stat
            .as_ref()
            .is_none_or(|stat| (stat.modified.elapsed()).map_or(true, |age| age < RACY));
        if stat == self.stat && !racy {
            return false;
        }
        self.stat = stat;
        let digest = (std::fs::read(&self.path).ok()).map(|bytes| Sha256::digest(bytes).into());
        std::mem::replace(&mut self.digest, digest) != digest
    }

    /// Returns at `deadline`, or earlier once the file changed.
    async fn until_changed(&mut self, deadline: Instant) {
        while Instant::now() < deadline {
            tokio::time::sleep_until(deadline.min(Instant::now() + FILE_POLL)).await;
            if self.changed() {
                return;
            }
        }
    }
}

/// Reloads every `interval` until `shutdown` resolves, and a file source also within
/// [`FILE_POLL`] of a change; a failed load keeps the last good registry, logs a
/// warning (no secrets) and calls on_outcome(Err(..)); success calls
/// on_outcome(Ok(device_count)).
pub(crate) async fn reload_loop(
    live: LiveRegistry,
    source: KeySource,
    secrets: Option<Secrets>,
    interval: Duration,
    on_outcome: impl Fn(Result<usize, &RegistryError>) + Send + 'static,
    shutdown: impl Future<Output = ()>,
) {
    let mut shutdown = pin!(shutdown);
    let mut watch = match &source {
        KeySource::File(path) => Some(FileWatch::new(path.clone())),
        KeySource::Inline(_) | KeySource::Secret(_) => None,
    };
    loop {
        let reload = async {
            let deadline = Instant::now() + interval;
            match watch.as_mut() {
                Some(watch) => watch.until_changed(deadline).await,
                None => tokio::time::sleep_until(deadline).await,
            }
            match source.load(secrets.as_ref()).await {
                Ok(registry) => {
                    let count = registry.device_count();
                    live.replace(registry);
                    on_outcome(Ok(count));
                }
                Err(error) => {
                    tracing::warn!(%error, "device registry reload failed; keeping the last good registry");
                    on_outcome(Err(&error));
                }
            }
        };
        tokio::select! {
            () = &mut shutdown => return,
            () = reload => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::{mpsc, oneshot};

    use super::*;
    use crate::devices::{AuthFailure, hash_key};

    fn registry_json(devices: &[(&str, &str)]) -> String {
        let devices: serde_json::Map<_, _> = devices
            .iter()
            .map(|(id, key)| {
                (
                    id.to_string(),
                    serde_json::json!({ "keys": [hash_key(key)] }),
                )
            })
            .collect();
        serde_json::json!({ "devices": devices }).to_string()
    }

    #[test]
    fn a_file_watch_sees_every_change_of_bytes_and_nothing_else() {
        let dir = lakegate_testkit::temp_dir();
        let path = dir.path().join("devices.json");
        std::fs::write(&path, "aaaa").unwrap();
        let mut watch = FileWatch::new(path.clone());
        assert!(!watch.changed(), "nothing changed since the first look");

        // Same length, same second: only the bytes tell.
        std::fs::write(&path, "bbbb").unwrap();
        assert!(watch.changed());
        assert!(!watch.changed());

        // Same length, written in place with an old modification time restored.
        let old = SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|file| {
                use std::io::Write;
                (&file).write_all(b"cccc")?;
                file.set_modified(old)
            })
            .unwrap();
        assert!(watch.changed());
        assert!(!watch.changed(), "an old, unchanged file is no change");

        // Replaced atomically by an older file of the same length.
        let staged = dir.path().join("staged");
        std::fs::write(&staged, "dddd").unwrap();
        std::fs::File::open(&staged)
            .unwrap()
            .set_modified(old)
            .unwrap();
        std::fs::rename(&staged, &path).unwrap();
        assert!(watch.changed());

        std::fs::remove_file(&path).unwrap();
        assert!(
            watch.changed(),
            "a removed file is a change (the reload keeps the last good)"
        );
        assert!(!watch.changed());
    }

    #[tokio::test]
    async fn reload_swaps_and_keeps_the_last_good_registry() {
        let path =
            std::env::temp_dir().join(format!("lakegate-reload-{}.json", std::process::id()));
        std::fs::write(&path, registry_json(&[("a", "ka"), ("b", "kb")])).unwrap();
        let source = KeySource::File(path.clone());
        let live = LiveRegistry::new(source.load(None).await.unwrap());

        let (outcomes, mut outcome) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let reloading = tokio::spawn(reload_loop(
            live.clone(),
            source,
            None,
            Duration::from_millis(5),
            move |result| drop(outcomes.send(result.map_err(|e| e.to_string()))),
            async { drop(stopped.await) },
        ));

        std::fs::write(&path, "{ broken").unwrap();
        while outcome.recv().await.unwrap().is_ok() {}
        let held = live.current();
        assert_eq!(&**held.authenticate("kb").unwrap().id(), "b");

        std::fs::write(&path, registry_json(&[("a", "ka")])).unwrap();
        while outcome.recv().await.unwrap() != Ok(1) {}
        assert_eq!(
            live.current().authenticate("kb").unwrap_err(),
            AuthFailure::UnknownKey
        );
        assert_eq!(&**live.current().authenticate("ka").unwrap().id(), "a");
        // A request that took the registry before the swap still sees it.
        assert_eq!(&**held.authenticate("kb").unwrap().id(), "b");

        stop.send(()).unwrap();
        reloading.await.unwrap();
        std::fs::remove_file(&path).unwrap();
    }
}
