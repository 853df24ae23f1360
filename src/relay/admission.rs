//! Which devices' readings the relay takes: a relay that says 202 must mean the
//! upstream will take them. Two things are known here:
//! - the relay's own entry in the site's registry (the one the gateway also holds, when
//!   the operator copied it): its device patterns. A device outside them is refused up
//!   front (403 `device_not_allowed`) instead of spooled and refused upstream later;
//! - devices the upstream refused for good (unknown there, disabled, not this relay's):
//!   the relay takes none of their readings (403 `refused_upstream`) until its registry
//!   is next reloaded (so a change to it is picked up) or [`REFUSAL_MEMORY`] passes (the
//!   upstream's registry may change too), so that they do not pile up in `refused.ndjson`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};

use crate::devices::{Registry, Relay, Sender};

/// Longest the relay refuses a device on the upstream's word alone.
const REFUSAL_MEMORY: Duration = Duration::from_secs(10 * 60);

/// Reasons the upstream gives for a device (not a reading) that it will not take.
const DEVICE_REASONS: [&str; 3] = ["unknown_device", "device_disabled", "device_not_allowed"];

/// Why the relay does not take a device's readings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NotForwarded {
    /// The relay's entry in the site's registry does not name the device.
    NotThisRelays { relay: Arc<str> },
    /// The upstream refused the device's readings for good, with this reason.
    RefusedUpstream { reason: String, message: String },
}

pub(crate) struct Admission {
    key: SecretString,
    view: Mutex<View>,
}

/// What the admission knows, as of one site registry.
#[derive(Default)]
struct View {
    /// The registry this was read from (a reload swaps the whole registry).
    registry: Weak<Registry>,
    /// The relay's own entry there, if the registry holds it.
    own_entry: Option<Relay>,
    refused: HashMap<Arc<str>, Refusal>,
}

struct Refusal {
    reason: String,
    message: String,
    since: Instant,
}

impl Admission {
    pub(crate) fn new(key: SecretString) -> Admission {
        Admission {
            key,
            view: Mutex::new(View::default()),
        }
    }

    /// Reads the relay's own entry from `registry`; says whether it has one.
    pub(crate) fn knows_own_entry(&self, registry: &Arc<Registry>) -> bool {
        self.with_view(registry, |view| view.own_entry.is_some())
    }

    /// Whether the relay takes `device_id`'s readings, as of `registry` (the site's, the
    /// one the device was authenticated with).
    pub(crate) fn check(
        &self,
        device_id: &str,
        registry: &Arc<Registry>,
    ) -> Result<(), NotForwarded> {
        self.with_view(registry, |view| {
            if let Some(relay) = &view.own_entry
                && !relay.speaks_for(device_id)
            {
                return Err(NotForwarded::NotThisRelays {
                    relay: relay.id.clone(),
                });
            }
            match view.refused.get(device_id) {
                Some(refusal) if refusal.since.elapsed() < REFUSAL_MEMORY => {
                    Err(NotForwarded::RefusedUpstream {
                        reason: refusal.reason.clone(),
                        message: refusal.message.clone(),
                    })
                }
                Some(_) => {
                    view.refused.remove(device_id);
                    Ok(())
                }
                None => Ok(()),
            }
        })
    }

    /// The upstream refused a reading of `device_id` for good with `reason`: when the
    /// reason is about the device rather than the reading, take no more of its readings.
    /// Returns whether it did.
    pub(crate) fn upstream_refused(&self, device_id: &str, reason: &str, message: &str) -> bool {
        if !DEVICE_REASONS.contains(&reason) || device_id.is_empty() {
            return false;
        }
        let mut view = self.view.lock().unwrap_or_else(PoisonError::into_inner);
        view.refused.insert(
            device_id.into(),
            Refusal {
                reason: reason.to_owned(),
                message: message.to_owned(),
                since: Instant::now(),
            },
        );
        true
    }

    /// Runs `read` on the view of `registry`, reading it again when the registry was
    /// swapped since: a reload forgets the upstream's refusals.
    fn with_view<T>(&self, registry: &Arc<Registry>, read: impl FnOnce(&mut View) -> T) -> T {
        let mut view = self.view.lock().unwrap_or_else(PoisonError::into_inner);
        if !std::ptr::eq(view.registry.as_ptr(), Arc::as_ptr(registry)) {
            let own_entry = match registry.authenticate(self.key.expose_secret()) {
                Ok(Sender::Relay(relay)) => Some(relay),
                _ => None,
            };
            *view = View {
                registry: Arc::downgrade(registry),
                own_entry,
                refused: HashMap::new(),
            };
        }
        read(&mut view)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::hash_key;

    fn registry(relay_entry: bool) -> Arc<Registry> {
        let relays = match relay_entry {
            true => format!(
                r#", "relays": {{"site-a": {{"keys": ["{}"], "devices": ["pump-*"]}}}}"#,
                hash_key("relay-key")
            ),
            false => String::new(),
        };
        let json = format!(r#"{{"devices": {{"pump-1": {{"keys": []}}}}{relays}}}"#);
        Arc::new(Registry::parse(json.as_bytes()).unwrap())
    }

    #[test]
    fn the_relays_own_entry_decides_up_front_when_the_site_holds_it() {
        let admission = Admission::new("relay-key".to_owned().into());
        let with = registry(true);
        assert!(admission.knows_own_entry(&with));
        assert_eq!(admission.check("pump-1", &with), Ok(()));
        assert_eq!(
            admission.check("other-9", &with),
            Err(NotForwarded::NotThisRelays {
                relay: "site-a".into()
            })
        );
        // Without it, the relay cannot tell: it takes the reading.
        let without = registry(false);
        assert!(!admission.knows_own_entry(&without));
        assert_eq!(admission.check("other-9", &without), Ok(()));
    }

    #[test]
    fn a_device_the_upstream_refuses_is_refused_until_the_registry_is_reloaded() {
        let admission = Admission::new("relay-key".to_owned().into());
        let first = registry(true);
        assert_eq!(admission.check("pump-1", &first), Ok(()));
        // A reading's own fault says nothing of the device.
        assert!(!admission.upstream_refused("pump-1", "invalid_metric_name", "m"));
        assert_eq!(admission.check("pump-1", &first), Ok(()));
        assert!(admission.upstream_refused("pump-1", "device_disabled", "disabled"));
        assert!(matches!(
            admission.check("pump-1", &first),
            Err(NotForwarded::RefusedUpstream { reason, .. }) if reason == "device_disabled"
        ));
        let reloaded = registry(true);
        assert_eq!(admission.check("pump-1", &reloaded), Ok(()));
    }
}
