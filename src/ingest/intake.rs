//! Admission: what an authenticated sender's decoded body may queue, or why not.
//!
//! A device's readings are taken all or none: every valid one within its rate and the
//! global rate, with room in the queue. A site relay's batch names a device per
//! reading, and each is taken or refused on its own: a device the relay may not speak
//! for, unknown or disabled, is refused in `rejected`, and so is a reading over its
//! device's own rate (`device_rate_limited`; the devices' budgets are the ones their own
//! requests spend, one unit per reading, taken in the order of the batch), so that one
//! busy device never holds up the others of its site. A relay's batch as a whole is
//! refused only for what concerns all of it: the relay's own request budget (before the
//! body is read), a full queue, the global rate (its rows all or none), or every reading
//! that could be taken being over its device's rate.
//!
//! The HTTP layer (`server/ingest.rs`) calls this and answers each [`IntakeRefusal`]
//! with its status and code (`server/error.rs`).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::body::{BodyCaps, BodyError, BodyFormat};
use super::queue::{IngestQueue, QueueError, Reservation};
use super::rejection::RejectReason;
use super::relayed::RelayedDevices;
use super::request::{ParsedRequest, RejectedReading, parse_relayed_request, parse_request};
use crate::devices::{Device, Registry, Relay, Sender};
use crate::health::WriteHealth;
use crate::metrics::Metrics;
use crate::rate_limits::{RateLimited, RateLimits};
use crate::table::TableRow;

/// What admission reads and spends: borrowed from the shared state for one request.
pub(crate) struct Intake<'a> {
    pub(crate) caps: &'a BodyCaps,
    pub(crate) queue: &'a IngestQueue,
    pub(crate) rate_limits: &'a RateLimits,
    pub(crate) metrics: &'a Metrics,
    pub(crate) writes: &'a WriteHealth,
}

/// What a request may queue: its rows, the room they take, and the report of the
/// readings taken and refused.
pub(crate) struct Taken {
    pub(crate) room: Reservation,
    pub(crate) rows: Vec<TableRow>,
    pub(crate) accepted: usize,
    pub(crate) rejected: Vec<RejectedReading>,
    /// When readings refused for now (a relay's devices over their rates) may go again,
    /// so that a relay paces them.
    pub(crate) retry_after: Option<Duration>,
}

/// Why nothing of a request is queued.
#[derive(Debug)]
pub(crate) enum IntakeRefusal {
    /// The body cannot be read as readings at all.
    Body(BodyError),
    /// Every reading was refused; the list says why.
    NoValidReadings(Vec<RejectedReading>),
    /// The table refuses writes for good (dropped, permission revoked): what is queued is
    /// kept and retried, but taking more would only fill the queue.
    TableUnwritable,
    Queue(QueueError),
    RateLimited(RateLimited),
    /// Every reading of a relay's batch that could be taken is for a device over its
    /// rate: push-back for the whole batch, with the list of what was refused and why.
    RelayedDevicesRateLimited {
        rejected: Vec<RejectedReading>,
        retry_after: Duration,
    },
}

impl From<BodyError> for IntakeRefusal {
    fn from(err: BodyError) -> Self {
        IntakeRefusal::Body(err)
    }
}

impl From<QueueError> for IntakeRefusal {
    fn from(err: QueueError) -> Self {
        IntakeRefusal::Queue(err)
    }
}

impl From<RateLimited> for IntakeRefusal {
    fn from(err: RateLimited) -> Self {
        IntakeRefusal::RateLimited(err)
    }
}

impl Intake<'_> {
    /// Before the body is read: a device over its request rate, or a relay over its own.
    pub(crate) fn admit_request(&self, sender: &Sender) -> Result<(), IntakeRefusal> {
        match sender {
            Sender::Device(device) => self.rate_limits.admit_request(device)?,
            Sender::Relay(relay) => self.rate_limits.admit_relay_request(&relay.id)?,
        }
        Ok(())
    }

    /// The readings of a decoded body that `sender` may queue; `registry` is the one
    /// the sender was authenticated with.
    pub(crate) fn take(
        &self,
        sender: &Sender,
        registry: &Registry,
        decoded: &[u8],
        format: BodyFormat,
        now: DateTime<Utc>,
    ) -> Result<Taken, IntakeRefusal> {
        match sender {
            Sender::Device(device) => self.device_readings(device, decoded, format, now),
            Sender::Relay(relay) => self.relayed_readings(relay, registry, decoded, format, now),
        }
    }

    /// A device's own readings: all of them within its rate and the global rate, or none.
    fn device_readings(
        &self,
        device: &Device,
        decoded: &[u8],
        format: BodyFormat,
        now: DateTime<Utc>,
    ) -> Result<Taken, IntakeRefusal> {
        let parsed = parse_request(decoded, format, &device.id, self.caps, now)?;
        for rejected in &parsed.rejected {
            self.metrics.reject(&device.id, rejected.reason.as_str());
        }
        if parsed.readings.is_empty() {
            return Err(IntakeRefusal::NoValidReadings(parsed.rejected));
        }
        self.writable()?;
        let accepted = parsed.readings.len();
        let rows: Vec<TableRow> = parsed
            .readings
            .into_iter()
            .flat_map(|(_, reading)| reading.into_rows())
            .collect();
        // Room first: a request the queue refuses must not spend more of the rate budgets.
        let room = self.queue.reserve(&rows)?;
        self.rate_limits
            .admit(device, accepted as u32, rows.len() as u32)?;
        Ok(Taken {
            room,
            rows,
            accepted,
            rejected: parsed.rejected,
            retry_after: None,
        })
    }

    /// A relay's batch: each reading taken or refused on its own.
    fn relayed_readings(
        &self,
        relay: &Relay,
        registry: &Registry,
        decoded: &[u8],
        format: BodyFormat,
        now: DateTime<Utc>,
    ) -> Result<Taken, IntakeRefusal> {
        let mut devices = RelayedDevices::new(relay, registry);
        let ParsedRequest {
            readings,
            mut rejected,
        } = parse_relayed_request(decoded, format, self.caps, now, |id| devices.resolve(id))?;
        let count = |rejected: &[RejectedReading]| {
            for refused in rejected {
                self.metrics
                    .reject_relayed(&relay.id, None, refused.reason.as_str());
            }
        };
        if readings.is_empty() {
            count(&rejected);
            return Err(IntakeRefusal::NoValidReadings(rejected));
        }
        if let Err(unwritable) = self.writable() {
            count(&rejected);
            return Err(unwritable);
        }

        // Room for every valid reading before any device's budget is spent: a batch the
        // queue refuses spends only the relay's request.
        let candidates: Vec<(usize, Arc<str>, Vec<TableRow>)> = readings
            .into_iter()
            .map(|(index, reading)| {
                (
                    index,
                    reading.device_id.clone(),
                    reading.into_rows().collect(),
                )
            })
            .collect();
        let mut room = match self
            .queue
            .reserve_for(candidates.iter().flat_map(|(.., rows)| rows))
        {
            Ok(room) => room,
            Err(full) => {
                count(&rejected);
                return Err(full.into());
            }
        };
        let mut rows = Vec::new();
        let mut accepted = 0;
        let mut rate_limited = Vec::new();
        let mut soonest: Option<Duration> = None;
        for (index, device_id, reading_rows) in candidates {
            let device = devices
                .device(&device_id)
                .expect("a valid relayed reading is of a device resolve() let through");
            match self.rate_limits.admit_relayed_reading(device) {
                Ok(()) => {
                    accepted += 1;
                    rows.extend(reading_rows);
                }
                Err(limited) => {
                    soonest =
                        Some(soonest.map_or(limited.retry_after, |s| s.min(limited.retry_after)));
                    self.metrics.reject_relayed(
                        &relay.id,
                        Some(&device.id),
                        RejectReason::DeviceRateLimited.as_str(),
                    );
                    rate_limited.push(RejectedReading {
                        index,
                        line: None,
                        reason: RejectReason::DeviceRateLimited,
                        message: format!(
                            "device {:?} sends faster than its rate limit; send this reading again later",
                            device.id
                        ),
                    });
                }
            }
        }
        count(&rejected);
        rejected.extend(rate_limited);
        rejected.sort_unstable_by_key(|refused| refused.index);
        if accepted == 0 {
            let retry_after = soonest.expect("a valid reading not taken was rate limited");
            return Err(IntakeRefusal::RelayedDevicesRateLimited {
                rejected,
                retry_after,
            });
        }
        room.keep_only(&rows);
        self.rate_limits.admit_rows(rows.len() as u32)?;
        Ok(Taken {
            room,
            rows,
            accepted,
            rejected,
            retry_after: soonest,
        })
    }

    fn writable(&self) -> Result<(), IntakeRefusal> {
        match self.writes.is_unwritable() {
            true => Err(IntakeRefusal::TableUnwritable),
            false => Ok(()),
        }
    }
}
