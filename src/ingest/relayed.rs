//! Which device a reading from a site relay is of: one the relay's patterns name,
//! in the registry, and enabled. The order of the checks keeps a relay from learning
//! which devices exist beyond its patterns: `unknown_device` only ever answers for
//! ids the relay may speak for.

use std::collections::HashMap;
use std::sync::Arc;

use super::rejection::{RejectReason, Rejection};
use crate::devices::{Device, Registry, Relay, Relayed};

/// The devices of one relay's request, as its readings name them.
pub(super) struct RelayedDevices<'a> {
    relay: &'a Relay,
    registry: &'a Registry,
    /// The enabled devices named so far, looked up once per request.
    named: HashMap<Arc<str>, Device>,
}

impl<'a> RelayedDevices<'a> {
    /// `registry` is the one the relay was authenticated with.
    pub(super) fn new(relay: &'a Relay, registry: &'a Registry) -> Self {
        RelayedDevices {
            relay,
            registry,
            named: HashMap::new(),
        }
    }

    /// The device a reading names in `device_id`, or why the relay may not send it.
    /// Only a registered device's id is quoted back.
    pub(super) fn resolve(&mut self, device_id: &str) -> Result<Arc<str>, Rejection> {
        if let Some(device) = self.named.get(device_id) {
            return Ok(device.id.clone());
        }
        if !self.relay.speaks_for(device_id) {
            return Err(Rejection::new(
                RejectReason::DeviceNotAllowed,
                format!(
                    "relay {:?} may not send readings for this device_id: it is not in the \
                     relay's device patterns",
                    self.relay.id
                ),
            ));
        }
        match self.registry.relayed(device_id) {
            Relayed::Unknown => Err(Rejection::new(
                RejectReason::UnknownDevice,
                "the registry has no device with this device_id",
            )),
            Relayed::Disabled => Err(Rejection::new(
                RejectReason::DeviceDisabled,
                format!("device {device_id:?} is disabled"),
            )),
            Relayed::Enabled(device) => {
                let id = device.id.clone();
                self.named.insert(id.clone(), device);
                Ok(id)
            }
        }
    }

    /// A device [`RelayedDevices::resolve`] let through.
    pub(super) fn device(&self, device_id: &str) -> Option<&Device> {
        self.named.get(device_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::{Sender, hash_key};

    #[test]
    fn a_device_must_be_named_by_the_relay_registered_and_enabled() {
        let json = format!(
            r#"{{"devices": {{"pump-7": {{"keys": [], "burst": 4}}, "line-3-a": {{"keys": []}},
                 "line-3-off": {{"keys": [], "disabled": true}}, "other-1": {{"keys": []}}}},
               "relays": {{"site-a": {{"keys": ["{}"], "devices": ["pump-7", "line-3-*"]}}}}}}"#,
            hash_key("relay-key")
        );
        let registry = Registry::parse(json.as_bytes()).unwrap();
        let Ok(Sender::Relay(relay)) = registry.authenticate("relay-key") else {
            panic!("a relay");
        };
        let mut devices = RelayedDevices::new(&relay, &registry);
        assert_eq!(&*devices.resolve("pump-7").unwrap(), "pump-7");
        assert_eq!(&*devices.resolve("line-3-a").unwrap(), "line-3-a");
        assert_eq!(
            devices.device("pump-7").unwrap().burst,
            std::num::NonZeroU32::new(4)
        );
        let reason = |devices: &mut RelayedDevices, id: &str| devices.resolve(id).unwrap_err();
        let refused = reason(&mut devices, "other-1");
        assert_eq!(refused.reason, RejectReason::DeviceNotAllowed);
        assert!(!refused.message.contains("other-1"), "{}", refused.message);
        // Not in the registry and not the relay's: the relay learns only the latter.
        assert_eq!(
            reason(&mut devices, "other-2").reason,
            RejectReason::DeviceNotAllowed
        );
        let unknown = reason(&mut devices, "line-3-zz");
        assert_eq!(unknown.reason, RejectReason::UnknownDevice);
        assert!(!unknown.message.contains("line-3-zz"));
        assert_eq!(
            reason(&mut devices, "line-3-off").reason,
            RejectReason::DeviceDisabled
        );
        assert!(devices.device("line-3-off").is_none());
    }
}
