//! A site relay's batch: readings of several devices, each naming its `device_id`.
//!
//! Each reading is taken or refused on its own: a device the relay may not speak for,
//! unknown or disabled, is refused in `rejected`, and so is a reading over its device's
//! own rate (`device_rate_limited`; the devices' budgets are the ones their own
//! requests spend, one unit per reading, taken in the order of the batch), so that one
//! busy device never holds up the others of its site. The batch as a whole is refused
//! only for what concerns all of it: the relay's own request budget (before the body
//! is read), a full queue, the global rate (its rows all or none), or every reading
//! that could be taken being over its device's rate (429 with `rejected`).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use super::error::HttpError;
use super::ingest::{Taken, writable};
use super::state::AppState;
use crate::devices::{Registry, Relay};
use crate::ingest::{
    BodyFormat, ParsedRequest, RejectReason, RejectedReading, RelayedDevices, parse_relayed_request,
};
use crate::table::TableRow;

pub(super) fn from_relay(
    app: &AppState,
    relay: &Relay,
    registry: &Registry,
    decoded: &[u8],
    format: BodyFormat,
) -> Result<Taken, HttpError> {
    let mut devices = RelayedDevices::new(relay, registry);
    let ParsedRequest {
        readings,
        mut rejected,
    } = parse_relayed_request(decoded, format, &app.config.body, Utc::now(), |id| {
        devices.resolve(id)
    })?;
    let count = |rejected: &[RejectedReading]| {
        for refused in rejected {
            app.metrics
                .reject_relayed(&relay.id, None, refused.reason.as_str());
        }
    };
    if readings.is_empty() {
        count(&rejected);
        return Err(HttpError::all_rejected(rejected));
    }
    if let Err(unwritable) = writable(app) {
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
    let mut room = match app
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
        match app.rate_limits.admit_relayed_reading(device) {
            Ok(()) => {
                accepted += 1;
                rows.extend(reading_rows);
            }
            Err(limited) => {
                soonest = Some(soonest.map_or(limited.retry_after, |s| s.min(limited.retry_after)));
                app.metrics.reject_relayed(
                    &relay.id,
                    Some(&device.id),
                    RejectReason::DeviceRateLimited.as_str(),
                );
                rate_limited.push(RejectedReading {
                    index,
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
        let wait = soonest.expect("a valid reading not taken was rate limited");
        return Err(HttpError::relayed_devices_rate_limited(rejected, wait));
    }
    room.keep_only(&rows);
    app.rate_limits.admit_rows(rows.len() as u32)?;
    Ok(Taken {
        room,
        rows,
        accepted,
        rejected,
        // When the readings over their devices' rates may go again.
        retry_after: soonest,
    })
}
