//! The bytes of request bodies the gateway holds at once, across all senders and per
//! sender (a device, a site relay): a body's bytes are reserved before it is read, so
//! slow or held-open uploads cannot pin memory without bound, however many
//! connections one key opens.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::devices::Sender;

/// Bounds on body bytes in flight; each at least one body of the body cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UploadSettings {
    /// Across the gateway; beyond it requests get 503.
    pub(crate) max_bytes: usize,
    /// For one sender; beyond it its requests get 429.
    pub(crate) max_bytes_per_sender: usize,
}

/// Whose budget an upload spends: a device and a relay may share an id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Uploader {
    Device(Arc<str>),
    Relay(Arc<str>),
}

impl From<&Sender> for Uploader {
    fn from(sender: &Sender) -> Self {
        match sender {
            Sender::Device(device) => Uploader::Device(device.id.clone()),
            Sender::Relay(relay) => Uploader::Relay(relay.id.clone()),
        }
    }
}

/// Which bound a refused upload would have passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UploadRefused {
    /// The sender's own uploads in flight: its fault, 429.
    Sender,
    /// Everyone's: the gateway is full, 503.
    Gateway,
}

impl UploadRefused {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            UploadRefused::Sender => "sender",
            UploadRefused::Gateway => "gateway",
        }
    }
}

#[derive(Debug)]
pub(crate) struct UploadBudget {
    settings: UploadSettings,
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    total: usize,
    /// Only senders with bytes in flight: the map never outgrows the open uploads.
    by_sender: HashMap<Uploader, usize>,
}

impl UploadBudget {
    pub(crate) fn new(settings: UploadSettings) -> Self {
        UploadBudget {
            settings,
            held: Mutex::default(),
        }
    }

    /// Takes `bytes` for `uploader` if both bounds allow it, all or nothing; the
    /// reservation gives them back when dropped.
    pub(crate) fn reserve(
        &self,
        uploader: Uploader,
        bytes: usize,
    ) -> Result<UploadReservation<'_>, UploadRefused> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let sender = held.by_sender.get(&uploader).copied().unwrap_or(0);
        if sender.saturating_add(bytes) > self.settings.max_bytes_per_sender {
            return Err(UploadRefused::Sender);
        }
        if held.total.saturating_add(bytes) > self.settings.max_bytes {
            return Err(UploadRefused::Gateway);
        }
        held.total += bytes;
        *held.by_sender.entry(uploader.clone()).or_default() += bytes;
        Ok(UploadReservation {
            budget: self,
            uploader,
            bytes,
        })
    }

    /// Bytes reserved across the gateway now.
    pub(crate) fn in_flight(&self) -> usize {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }

    fn release(&self, uploader: &Uploader, bytes: usize) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.total -= bytes;
        let sender = held
            .by_sender
            .get_mut(uploader)
            .expect("a reservation's sender is held");
        *sender -= bytes;
        if *sender == 0 {
            held.by_sender.remove(uploader);
        }
    }
}

/// Bytes of one body, held until the body's memory is gone.
#[derive(Debug)]
pub(crate) struct UploadReservation<'a> {
    budget: &'a UploadBudget,
    uploader: Uploader,
    bytes: usize,
}

impl Drop for UploadReservation<'_> {
    fn drop(&mut self) {
        self.budget.release(&self.uploader, self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(max_bytes: usize, max_bytes_per_sender: usize) -> UploadBudget {
        UploadBudget::new(UploadSettings {
            max_bytes,
            max_bytes_per_sender,
        })
    }

    fn device(id: &str) -> Uploader {
        Uploader::Device(id.into())
    }

    #[test]
    fn a_sender_gets_its_bound_and_no_more() {
        let budget = budget(100, 10);
        let first = budget.reserve(device("a"), 6).unwrap();
        let second = budget.reserve(device("a"), 4).unwrap();
        assert_eq!(
            budget.reserve(device("a"), 1).unwrap_err(),
            UploadRefused::Sender
        );
        // Another sender is not held up by it.
        let other = budget.reserve(device("b"), 10).unwrap();
        assert_eq!(budget.in_flight(), 20);
        drop((first, second, other));
        assert_eq!(budget.in_flight(), 0);
    }

    #[test]
    fn the_gateway_bound_holds_across_senders() {
        let budget = budget(15, 10);
        let a = budget.reserve(device("a"), 10).unwrap();
        assert_eq!(
            budget.reserve(device("b"), 6).unwrap_err(),
            UploadRefused::Gateway
        );
        // A refusal takes nothing: what is left still fits.
        let b = budget.reserve(device("b"), 5).unwrap();
        assert_eq!(budget.in_flight(), 15);
        drop(a);
        let c = budget.reserve(device("c"), 10).unwrap();
        drop((b, c));
        assert_eq!(budget.in_flight(), 0);
    }

    #[test]
    fn a_sender_over_its_own_bound_hears_so_even_when_the_gateway_is_full() {
        let budget = budget(10, 10);
        let _held = budget.reserve(device("a"), 10).unwrap();
        assert_eq!(
            budget.reserve(device("a"), 1).unwrap_err(),
            UploadRefused::Sender
        );
        assert_eq!(
            budget.reserve(device("b"), 1).unwrap_err(),
            UploadRefused::Gateway
        );
    }

    #[test]
    fn a_device_and_a_relay_of_one_id_have_separate_budgets() {
        let budget = budget(100, 10);
        let _device = budget.reserve(device("site-a"), 10).unwrap();
        let relay = budget.reserve(Uploader::Relay("site-a".into()), 10);
        assert!(relay.is_ok());
    }

    #[test]
    fn released_senders_leave_nothing_behind() {
        let budget = budget(100, 10);
        for n in 0..50 {
            drop(budget.reserve(device(&format!("d-{n}")), 3).unwrap());
        }
        let held = budget.held.lock().unwrap();
        assert_eq!((held.total, held.by_sender.len()), (0, 0));
    }

    #[test]
    fn an_empty_body_always_fits() {
        let budget = budget(10, 10);
        let _full = budget.reserve(device("a"), 10).unwrap();
        assert!(budget.reserve(device("a"), 0).is_ok());
    }
}
