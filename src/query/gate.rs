//! What keeps dashboards from starving the writers: read statements take a slot of
//! their own limited pool (`LAKEGATE_QUERY_CONCURRENCY`), and the device list, the
//! one query every dashboard opens with, is cached briefly per reader identity and
//! computed once however many ask at the same moment (single flight).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, SemaphorePermit};

use super::answers::DeviceList;

/// Every read slot stayed taken for the whole wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("every read slot is taken (writes come first); retry shortly")]
pub(crate) struct ReadsBusy;

/// One identity's cached device list; its lock is held while the list is computed.
type CachedList = Arc<tokio::sync::Mutex<Option<(Instant, Arc<DeviceList>)>>>;

pub(crate) struct ReadGate {
    slots: Semaphore,
    slot_wait: Duration,
    list_ttl: Duration,
    lists: Mutex<HashMap<Arc<str>, CachedList>>,
}

impl ReadGate {
    pub(crate) fn new(concurrency: usize, slot_wait: Duration, list_ttl: Duration) -> Self {
        ReadGate {
            slots: Semaphore::new(concurrency),
            slot_wait,
            list_ttl,
            lists: Mutex::default(),
        }
    }

    /// A read statement slot, waited for at most the gate's wait.
    pub(crate) async fn slot(&self) -> Result<SemaphorePermit<'_>, ReadsBusy> {
        tokio::time::timeout(self.slot_wait, self.slots.acquire())
            .await
            .map_err(|_| ReadsBusy)?
            .map_err(|_| ReadsBusy)
    }

    /// `identity`'s device list: the cached one while it is fresh, else the one `fetch`
    /// gives; callers that arrive while it runs wait for that answer instead of asking
    /// again. A failed fetch is not cached.
    pub(crate) async fn device_list<E>(
        &self,
        identity: &Arc<str>,
        fetch: impl Future<Output = Result<DeviceList, E>>,
    ) -> Result<Arc<DeviceList>, E> {
        let entry = {
            let mut lists = self.lists.lock().unwrap_or_else(PoisonError::into_inner);
            // Stale entries of identities that stopped asking go, a few at a time.
            let ttl = self.list_ttl;
            lists.retain(|_, list| {
                list.try_lock().map_or(true, |cached| {
                    cached.as_ref().is_some_and(|(at, _)| at.elapsed() < ttl)
                })
            });
            lists.entry(identity.clone()).or_default().clone()
        };
        let mut cached = entry.lock().await;
        if let Some((at, list)) = cached.as_ref()
            && at.elapsed() < self.list_ttl
        {
            return Ok(list.clone());
        }
        let list = Arc::new(fetch.await?);
        *cached = Some((Instant::now(), list.clone()));
        Ok(list)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use chrono::Utc;

    use super::*;

    fn empty_list() -> DeviceList {
        DeviceList {
            generated_at: Utc::now(),
            devices: Vec::new(),
            truncated: false,
        }
    }

    #[tokio::test]
    async fn many_dashboards_asking_at_once_run_one_query() {
        let gate = Arc::new(ReadGate::new(
            4,
            Duration::from_secs(1),
            Duration::from_secs(60),
        ));
        let fetches = Arc::new(AtomicUsize::new(0));
        let identity: Arc<str> = "app".into();
        let mut asking = Vec::new();
        for _ in 0..20 {
            let (gate, fetches, identity) = (gate.clone(), fetches.clone(), identity.clone());
            asking.push(tokio::spawn(async move {
                gate.device_list(&identity, async {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, ()>(empty_list())
                })
                .await
                .unwrap()
            }));
        }
        for asked in asking {
            asked.await.unwrap();
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        // Another identity (a user who may see other rows) gets its own list.
        let other: Arc<str> = "user:ana@example.com".into();
        gate.device_list(&other, async { Ok::<_, ()>(empty_list()) })
            .await
            .unwrap();
        assert_eq!(gate.lists.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn failures_are_not_cached_and_slots_run_out() {
        let gate = ReadGate::new(1, Duration::from_millis(50), Duration::from_secs(60));
        let identity: Arc<str> = "app".into();
        assert!(
            gate.device_list(&identity, async { Err::<DeviceList, _>("down") })
                .await
                .is_err()
        );
        assert!(
            gate.device_list(&identity, async { Ok::<_, ()>(empty_list()) })
                .await
                .is_ok()
        );
        let held = gate.slot().await.unwrap();
        assert_eq!(gate.slot().await.unwrap_err(), ReadsBusy);
        drop(held);
        assert!(gate.slot().await.is_ok());
    }
}
