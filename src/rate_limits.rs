//! Rate limits: per device, per site relay, across all devices, and for failed
//! authentications per client address (`client_address.rs` says which one).

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{InsufficientCapacity, NotUntil, Quota, RateLimiter};

use crate::client_address::address_block;
use crate::devices::Device;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RateLimitSettings {
    pub device_rate_per_sec: NonZeroU32,
    pub device_burst: NonZeroU32,
    pub global_rate_per_sec: NonZeroU32,
    pub global_burst: NonZeroU32,
    pub auth_failures_per_min: NonZeroU32,
    pub auth_failure_burst: NonZeroU32,
    /// Read API requests per identity (a reader token, a signed-in user).
    pub reader_requests_per_min: NonZeroU32,
    pub reader_burst: NonZeroU32,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RateLimited {
    pub limit: RateLimitKind,
    /// Exact wait, always positive so that rounding up gives at least one
    /// second; zero only for `BatchLargerThanBurst`, where waiting never helps.
    pub retry_after: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RateLimitKind {
    Device,
    /// A relay's own budget of requests (its readings spend their devices' budgets).
    Relay,
    Global,
    AuthFailures,
    /// One reader's requests to the read API.
    Reader,
    /// More readings in one request than the burst can ever admit (caller answers 413).
    BatchLargerThanBurst,
}

type Keyed<K, C> = RateLimiter<K, DashMapStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;
type Direct<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;
type Check<C> = Result<Result<(), NotUntil<<C as Clock>::Instant>>, InsufficientCapacity>;

/// A device quota: (rate per second, burst).
type DeviceQuota = (NonZeroU32, NonZeroU32);

/// Floor for a computed wait that reached zero between the decision and the
/// subtraction, so that a refusal never says "retry after 0 s".
const MIN_RETRY_AFTER: Duration = Duration::from_millis(1);

/// The gateway's rate limiters, shared by all requests.
pub(crate) struct RateLimits<C: Clock = DefaultClock> {
    clock: C,
    default_device_quota: DeviceQuota,
    /// One keyed limiter per distinct quota: a device whose quota changes
    /// moves to another limiter and starts with a full burst there.
    devices: RwLock<HashMap<DeviceQuota, Keyed<Arc<str>, C>>>,
    /// Requests per relay, on the default device quota counted in requests; apart
    /// from the devices' limiters, since a relay may share an id with a device.
    relays: Keyed<Arc<str>, C>,
    global: Direct<C>,
    auth_failures: Keyed<FailureKey, C>,
    readers: Keyed<Arc<str>, C>,
    /// When a failure of each address and kind was last logged, and how many since.
    failure_log: Mutex<HashMap<FailureKey, (C::Instant, u64)>>,
}

/// Whose authentication failed: devices and readers have separate failure budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Credential {
    Device,
    Reader,
}

impl Credential {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Credential::Device => "device",
            Credential::Reader => "reader",
        }
    }
}

/// A failure budget: a kind of credential and an address (see [`address_block`]).
type FailureKey = (Credential, IpAddr);

/// At most one log line per address and kind in this time.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(60);

impl RateLimits {
    pub(crate) fn new(settings: RateLimitSettings) -> Self {
        RateLimits::with_clock(settings, DefaultClock::default())
    }
}

impl<C: Clock + Clone> RateLimits<C> {
    fn with_clock(settings: RateLimitSettings, clock: C) -> Self {
        let global =
            Quota::per_second(settings.global_rate_per_sec).allow_burst(settings.global_burst);
        let auth = Quota::per_minute(settings.auth_failures_per_min)
            .allow_burst(settings.auth_failure_burst);
        let readers =
            Quota::per_minute(settings.reader_requests_per_min).allow_burst(settings.reader_burst);
        let relay =
            Quota::per_second(settings.device_rate_per_sec).allow_burst(settings.device_burst);
        RateLimits {
            default_device_quota: (settings.device_rate_per_sec, settings.device_burst),
            devices: RwLock::default(),
            relays: RateLimiter::dashmap_with_clock(relay, clock.clone()),
            global: RateLimiter::direct_with_clock(global, clock.clone()),
            auth_failures: RateLimiter::dashmap_with_clock(auth, clock.clone()),
            readers: RateLimiter::dashmap_with_clock(readers, clock.clone()),
            failure_log: Mutex::default(),
            clock,
        }
    }

    /// Before the body is read: one unit of the device's budget, so that a device
    /// over its rate is refused without its body being read, decompressed and parsed.
    /// One read API request of `identity` (who reads: a token's hash, a user).
    pub(crate) fn admit_reader(&self, identity: &Arc<str>) -> Result<(), RateLimited> {
        self.verdict(RateLimitKind::Reader, Ok(self.readers.check_key(identity)))
    }

    pub(crate) fn admit_request(&self, device: &Device) -> Result<(), RateLimited> {
        self.verdict(
            RateLimitKind::Device,
            self.check_device(device, NonZeroU32::MIN),
        )
    }

    /// After parsing: the rest of the device's budget for `readings` (the request
    /// paid one in [`RateLimits::admit_request`]), then `rows` (one per metric, what
    /// the warehouse writes) from the global budget. Err says which limit and when
    /// to retry; a request refused by the global limit has still spent its device
    /// budget (governor cannot refund).
    pub(crate) fn admit(
        &self,
        device: &Device,
        readings: u32,
        rows: u32,
    ) -> Result<(), RateLimited> {
        let burst = device.burst.unwrap_or(self.default_device_quota.1);
        if readings > burst.get() {
            return Err(RateLimited {
                limit: RateLimitKind::BatchLargerThanBurst,
                retry_after: Duration::ZERO,
            });
        }
        if let Some(rest) = NonZeroU32::new(readings.saturating_sub(1)) {
            self.verdict(RateLimitKind::Device, self.check_device(device, rest))?;
        }
        self.admit_rows(rows)
    }

    /// A disabled device: its requests still spend its own device budget (one each),
    /// so that it cannot send without limit. It runs on the default quota.
    pub(crate) fn admit_disabled(&self, device_id: &Arc<str>) -> Result<(), RateLimited> {
        let device = Device {
            id: device_id.clone(),
            rate_per_sec: None,
            burst: None,
        };
        self.verdict(
            RateLimitKind::Device,
            self.check_device(&device, NonZeroU32::MIN),
        )
    }

    /// A relay's request, before its body is read, enabled or disabled: one unit of
    /// the relay's own budget, so that a relay cannot have bodies read without limit.
    pub(crate) fn admit_relay_request(&self, relay_id: &Arc<str>) -> Result<(), RateLimited> {
        self.verdict(RateLimitKind::Relay, Ok(self.relays.check_key(relay_id)))
    }

    /// One reading a relay forwards for `device`: one unit of the device's own
    /// budget, the same as if the device had sent it. Readings are admitted one by one,
    /// so that a batch holding more of a device's readings than its burst still lets the
    /// first ones through.
    pub(crate) fn admit_relayed_reading(&self, device: &Device) -> Result<(), RateLimited> {
        self.verdict(
            RateLimitKind::Device,
            self.check_device(device, NonZeroU32::MIN),
        )
    }

    /// `rows` from the global budget, all or none.
    pub(crate) fn admit_rows(&self, rows: u32) -> Result<(), RateLimited> {
        let rows = NonZeroU32::new(rows).unwrap_or(NonZeroU32::MIN);
        self.verdict(RateLimitKind::Global, self.global.check_n(rows))
    }

    /// After a failed authentication (only then: a valid credential is never
    /// held up by its neighbours' failures): charges the failure budget of the
    /// client's address for this kind of credential. Err once it is spent, with
    /// the wait until the next failure would be charged.
    pub(crate) fn auth_failed(&self, kind: Credential, client: IpAddr) -> Result<(), RateLimited> {
        let key = (kind, address_block(client));
        self.verdict(
            RateLimitKind::AuthFailures,
            Ok(self.auth_failures.check_key(&key)),
        )
    }

    /// Whether to log a failure of this kind from this address now: at most once
    /// a minute per address. Some(failures left unlogged since the last line).
    pub(crate) fn failure_log_line(&self, kind: Credential, client: IpAddr) -> Option<u64> {
        let key = (kind, address_block(client));
        let now = self.clock.now();
        let mut log = self
            .failure_log
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match log.get_mut(&key) {
            Some((last, unlogged))
                if Duration::from(now.duration_since(*last)) < FAILURE_LOG_EVERY =>
            {
                *unlogged += 1;
                None
            }
            Some((last, unlogged)) => {
                *last = now;
                Some(std::mem::take(unlogged))
            }
            None => {
                log.insert(key, (now, 0));
                Some(0)
            }
        }
    }

    /// Periodic housekeeping (retain_recent / shrink) so keyed stores don't grow without bound.
    pub(crate) fn prune(&self) {
        let mut devices = self.devices.write().unwrap_or_else(PoisonError::into_inner);
        for limiter in devices.values() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        // An empty limiter is as good as a new one; this drops quotas no device uses any more.
        devices.retain(|_, limiter| !limiter.is_empty());
        drop(devices);

        self.relays.retain_recent();
        self.relays.shrink_to_fit();

        self.auth_failures.retain_recent();
        self.auth_failures.shrink_to_fit();
        self.readers.retain_recent();
        self.readers.shrink_to_fit();
        let now = self.clock.now();
        // Forgets the count of failures not logged: a summary line is lost at worst.
        let mut log = self
            .failure_log
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        log.retain(|_, (last, _)| Duration::from(now.duration_since(*last)) < FAILURE_LOG_EVERY);
        log.shrink_to_fit();
    }

    fn check_device(&self, device: &Device, n: NonZeroU32) -> Check<C> {
        let (default_rate, default_burst) = self.default_device_quota;
        let quota = (
            device.rate_per_sec.unwrap_or(default_rate),
            device.burst.unwrap_or(default_burst),
        );
        if let Some(limiter) = self
            .devices
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&quota)
        {
            return limiter.check_key_n(&device.id, n);
        }
        let mut devices = self.devices.write().unwrap_or_else(PoisonError::into_inner);
        let limiter = devices.entry(quota).or_insert_with(|| {
            let (rate, burst) = quota;
            RateLimiter::dashmap_with_clock(
                Quota::per_second(rate).allow_burst(burst),
                self.clock.clone(),
            )
        });
        limiter.check_key_n(&device.id, n)
    }

    fn verdict(&self, limit: RateLimitKind, check: Check<C>) -> Result<(), RateLimited> {
        match check {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(self.exceeded(limit, not_until.earliest_possible())),
            Err(InsufficientCapacity(_)) => Err(RateLimited {
                limit: RateLimitKind::BatchLargerThanBurst,
                retry_after: Duration::ZERO,
            }),
        }
    }

    fn exceeded(&self, limit: RateLimitKind, until: C::Instant) -> RateLimited {
        let wait = Duration::from(until.duration_since(self.clock.now()));
        RateLimited {
            limit,
            retry_after: wait.max(MIN_RETRY_AFTER),
        }
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    fn limits() -> (RateLimits<FakeRelativeClock>, FakeRelativeClock) {
        let settings = RateLimitSettings {
            device_rate_per_sec: nz(10),
            device_burst: nz(5),
            global_rate_per_sec: nz(100),
            global_burst: nz(20),
            auth_failures_per_min: nz(6),
            auth_failure_burst: nz(2),
            reader_requests_per_min: NonZeroU32::new(600).unwrap(),
            reader_burst: NonZeroU32::new(60).unwrap(),
        };
        let clock = FakeRelativeClock::default();
        (RateLimits::with_clock(settings, clock.clone()), clock)
    }

    fn device(id: &str, rate_per_sec: Option<u32>, burst: Option<u32>) -> Device {
        Device {
            id: id.into(),
            rate_per_sec: rate_per_sec.map(nz),
            burst: burst.map(nz),
        }
    }

    /// A request's whole admission: before its body, then its readings (one row each).
    fn admit<C: Clock + Clone>(
        limits: &RateLimits<C>,
        device: &Device,
        readings: u32,
    ) -> Result<(), RateLimited> {
        limits.admit_request(device)?;
        limits.admit(device, readings, readings)
    }

    fn refused(limit: RateLimitKind, retry_after: Duration) -> Result<(), RateLimited> {
        Err(RateLimited { limit, retry_after })
    }

    #[test]
    fn device_burst_then_refusal_until_refill() {
        let (limits, clock) = limits();
        let d = device("d", None, None);
        assert_eq!(admit(&limits, &d, 5), Ok(()));
        assert_eq!(
            admit(&limits, &d, 1),
            refused(RateLimitKind::Device, Duration::from_millis(100))
        );
        // Refused before its body: the wait is for the one unit a request costs up front.
        assert_eq!(
            admit(&limits, &d, 2),
            refused(RateLimitKind::Device, Duration::from_millis(100))
        );
        clock.advance(Duration::from_millis(100));
        assert_eq!(admit(&limits, &d, 1), Ok(()));
        // An empty request still costs one.
        assert_eq!(
            admit(&limits, &d, 0).unwrap_err().limit,
            RateLimitKind::Device
        );
    }

    #[test]
    fn registry_quota_overrides_defaults() {
        let (limits, _) = limits();
        let slow = device("slow", Some(1), Some(2));
        assert_eq!(admit(&limits, &slow, 2), Ok(()));
        assert_eq!(
            admit(&limits, &slow, 1),
            refused(RateLimitKind::Device, Duration::from_secs(1))
        );
        // Other devices keep the defaults.
        assert_eq!(admit(&limits, &device("other", None, None), 5), Ok(()));
        // A changed quota starts afresh.
        assert_eq!(admit(&limits, &device("slow", Some(1), Some(3)), 3), Ok(()));
        // Overriding only the burst keeps the default rate.
        let bursty = device("bursty", None, Some(8));
        assert_eq!(admit(&limits, &bursty, 8), Ok(()));
        assert_eq!(
            admit(&limits, &bursty, 1),
            refused(RateLimitKind::Device, Duration::from_millis(100))
        );
    }

    #[test]
    fn global_limit_caps_all_devices_together() {
        let (limits, _) = limits();
        for i in 0..4 {
            assert_eq!(
                admit(&limits, &device(&format!("d{i}"), None, None), 5),
                Ok(())
            );
        }
        assert_eq!(
            admit(&limits, &device("d4", None, None), 1),
            refused(RateLimitKind::Global, Duration::from_millis(10))
        );
    }

    #[test]
    fn a_device_over_its_rate_is_refused_before_its_body() {
        let (limits, clock) = limits();
        let d = device("d", None, None);
        assert_eq!(admit(&limits, &d, 5), Ok(()));
        assert_eq!(
            limits.admit_request(&d),
            refused(RateLimitKind::Device, Duration::from_millis(100))
        );
        clock.advance(Duration::from_millis(300));
        // Three units back: the request paid one up front, its readings the other two.
        assert_eq!(limits.admit_request(&d), Ok(()));
        assert_eq!(limits.admit(&d, 3, 3), Ok(()));
        assert_eq!(
            limits.admit_request(&d).unwrap_err().limit,
            RateLimitKind::Device
        );
    }

    #[test]
    fn the_global_limit_counts_rows() {
        let (limits, _) = limits();
        // Four readings of five metrics each fill the global burst of 20 rows.
        assert_eq!(limits.admit(&device("a", None, None), 4, 20), Ok(()));
        assert_eq!(
            limits.admit(&device("b", None, None), 1, 1),
            refused(RateLimitKind::Global, Duration::from_millis(10))
        );
    }

    #[test]
    fn batch_larger_than_any_burst_is_never_admitted() {
        let (limits, _) = limits();
        let too_large = refused(RateLimitKind::BatchLargerThanBurst, Duration::ZERO);
        assert_eq!(admit(&limits, &device("d", None, None), 6), too_large);
        assert_eq!(
            admit(&limits, &device("big", None, Some(50)), 21),
            too_large
        );
    }

    #[test]
    fn failed_authentications_are_limited_per_address_and_kind() {
        let (limits, clock) = limits();
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        let neighbour: IpAddr = "192.0.2.2".parse().unwrap();
        let blocked = refused(RateLimitKind::AuthFailures, Duration::from_secs(10));

        // The burst (2) is spent; the third failure is refused until one more fits.
        for _ in 0..2 {
            assert_eq!(limits.auth_failed(Credential::Device, client), Ok(()));
        }
        assert_eq!(limits.auth_failed(Credential::Device, client), blocked);
        clock.advance(Duration::from_secs(4));
        assert_eq!(
            limits.auth_failed(Credential::Device, client),
            refused(RateLimitKind::AuthFailures, Duration::from_secs(6))
        );
        // Readers have their own budget; other addresses too.
        assert_eq!(limits.auth_failed(Credential::Reader, client), Ok(()));
        assert_eq!(limits.auth_failed(Credential::Device, neighbour), Ok(()));

        // Refused failures are not charged: one fits once the wait is over.
        clock.advance(Duration::from_secs(6));
        assert_eq!(limits.auth_failed(Credential::Device, client), Ok(()));
        assert_eq!(limits.auth_failed(Credential::Device, client), blocked);
    }

    #[test]
    fn ipv6_failures_share_a_budget_per_64() {
        let (limits, _) = limits();
        let address = |text: &str| text.parse::<IpAddr>().unwrap();
        for host in ["2001:db8:1:2::1", "2001:db8:1:2:ffff::9"] {
            assert_eq!(
                limits.auth_failed(Credential::Device, address(host)),
                Ok(())
            );
        }
        assert_eq!(
            limits
                .auth_failed(Credential::Device, address("2001:db8:1:2:abcd::1"))
                .unwrap_err()
                .limit,
            RateLimitKind::AuthFailures
        );
        assert_eq!(
            limits.auth_failed(Credential::Device, address("2001:db8:1:3::1")),
            Ok(())
        );
        // An IPv4-mapped address is its IPv4 address.
        assert_eq!(
            address_block(address("::ffff:192.0.2.7")),
            address("192.0.2.7")
        );
        assert_eq!(address_block(address("192.0.2.7")), address("192.0.2.7"));
        assert_eq!(
            address_block(address("2001:db8:1:2:3:4:5:6")),
            address("2001:db8:1:2::")
        );
    }

    #[test]
    fn disabled_devices_spend_their_device_budget() {
        let (limits, clock) = limits();
        let id: Arc<str> = "retired".into();
        for _ in 0..5 {
            assert_eq!(limits.admit_disabled(&id), Ok(()));
        }
        assert_eq!(
            limits.admit_disabled(&id),
            refused(RateLimitKind::Device, Duration::from_millis(100))
        );
        clock.advance(Duration::from_millis(100));
        assert_eq!(limits.admit_disabled(&id), Ok(()));
    }

    #[test]
    fn relays_have_their_own_request_budget() {
        let (limits, clock) = limits();
        let relay: Arc<str> = "site-a".into();
        for _ in 0..5 {
            assert_eq!(limits.admit_relay_request(&relay), Ok(()));
        }
        assert_eq!(
            limits.admit_relay_request(&relay),
            refused(RateLimitKind::Relay, Duration::from_millis(100))
        );
        // A device of the same name is another budget; so is another relay.
        assert_eq!(admit(&limits, &device("site-a", None, None), 5), Ok(()));
        assert_eq!(limits.admit_relay_request(&"site-b".into()), Ok(()));
        clock.advance(Duration::from_millis(100));
        assert_eq!(limits.admit_relay_request(&relay), Ok(()));
    }

    #[test]
    fn relayed_readings_spend_their_devices_budgets_one_by_one() {
        let (limits, clock) = limits();
        let slow = device("slow", Some(1), Some(2));
        // Burst 2: the first two readings pass, the third waits a second.
        assert_eq!(limits.admit_relayed_reading(&slow), Ok(()));
        assert_eq!(limits.admit_relayed_reading(&slow), Ok(()));
        assert_eq!(
            limits.admit_relayed_reading(&slow),
            refused(RateLimitKind::Device, Duration::from_secs(1))
        );
        // The same budget as the device's own requests.
        assert_eq!(
            limits.admit_request(&slow),
            refused(RateLimitKind::Device, Duration::from_secs(1))
        );
        clock.advance(Duration::from_secs(1));
        assert_eq!(limits.admit_request(&slow), Ok(()));
        assert_eq!(
            limits.admit_relayed_reading(&slow).unwrap_err().limit,
            RateLimitKind::Device
        );
        // Rows from the global budget, all or none.
        assert_eq!(limits.admit_rows(20), Ok(()));
        assert_eq!(
            limits.admit_rows(1),
            refused(RateLimitKind::Global, Duration::from_millis(10))
        );
    }

    #[test]
    fn failures_are_logged_at_most_once_a_minute_per_address() {
        let (limits, clock) = limits();
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(limits.failure_log_line(Credential::Device, client), Some(0));
        for _ in 0..3 {
            assert_eq!(limits.failure_log_line(Credential::Device, client), None);
        }
        assert_eq!(limits.failure_log_line(Credential::Reader, client), Some(0));
        clock.advance(Duration::from_secs(59));
        assert_eq!(limits.failure_log_line(Credential::Device, client), None);
        clock.advance(Duration::from_secs(1));
        // The next line says how many failures went unlogged.
        assert_eq!(limits.failure_log_line(Credential::Device, client), Some(4));
    }

    #[test]
    fn prune_forgets_idle_state() {
        let (limits, clock) = limits();
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        admit(&limits, &device("d", Some(1), Some(1)), 1).unwrap();
        admit(&limits, &device("e", None, None), 1).unwrap();
        for _ in 0..3 {
            let _ = limits.auth_failed(Credential::Device, client);
        }
        limits.failure_log_line(Credential::Device, client);
        limits.admit_relay_request(&"site-a".into()).unwrap();
        limits.prune();
        assert_eq!(limits.devices.read().unwrap().len(), 2);
        assert!(!limits.relays.is_empty());
        assert!(!limits.auth_failures.is_empty());
        assert_eq!(limits.failure_log.lock().unwrap().len(), 1);

        clock.advance(Duration::from_secs(60));
        limits.prune();
        assert!(limits.devices.read().unwrap().is_empty());
        assert!(limits.relays.is_empty());
        assert!(limits.auth_failures.is_empty());
        assert!(limits.failure_log.lock().unwrap().is_empty());
        assert_eq!(limits.auth_failed(Credential::Device, client), Ok(()));
    }
}
