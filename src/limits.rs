//! Rate limits: per device, across all devices, and for failed authentications
//! per client address.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use axum::http::HeaderMap;
use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{InsufficientCapacity, NotUntil, Quota, RateLimiter};

use crate::devices::Device;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitSettings {
    pub device_rate_per_sec: NonZeroU32,
    pub device_burst: NonZeroU32,
    pub global_rate_per_sec: NonZeroU32,
    pub global_burst: NonZeroU32,
    pub auth_failures_per_min: NonZeroU32,
    pub auth_failure_burst: NonZeroU32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LimitExceeded {
    pub limit: LimitKind,
    /// Exact wait, always positive so that rounding up gives at least one
    /// second; zero only for `BatchLargerThanBurst`, where waiting never helps.
    pub retry_after: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Device,
    Global,
    AuthFailures,
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
pub struct Limits<C: Clock = DefaultClock> {
    clock: C,
    default_device_quota: DeviceQuota,
    /// One keyed limiter per distinct quota: a device whose quota changes
    /// moves to another limiter and starts with a full burst there.
    devices: RwLock<HashMap<DeviceQuota, Keyed<Arc<str>, C>>>,
    global: Direct<C>,
    auth_failures: Keyed<IpAddr, C>,
    /// Addresses that failed with an empty failure budget, blocked until it has room.
    /// governor cannot tell whether a budget is empty without spending from it,
    /// hence this map.
    blocked: Mutex<HashMap<IpAddr, C::Instant>>,
}

impl Limits {
    pub fn new(settings: LimitSettings) -> Self {
        Limits::with_clock(settings, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Limits<C> {
    fn with_clock(settings: LimitSettings, clock: C) -> Self {
        let global =
            Quota::per_second(settings.global_rate_per_sec).allow_burst(settings.global_burst);
        let auth = Quota::per_minute(settings.auth_failures_per_min)
            .allow_burst(settings.auth_failure_burst);
        Limits {
            default_device_quota: (settings.device_rate_per_sec, settings.device_burst),
            devices: RwLock::default(),
            global: RateLimiter::direct_with_clock(global, clock.clone()),
            auth_failures: RateLimiter::dashmap_with_clock(auth, clock.clone()),
            blocked: Mutex::default(),
            clock,
        }
    }

    /// Before the body is read: one unit of the device's budget, so that a device
    /// over its rate is refused without its body being read, decompressed and parsed.
    pub fn admit_request(&self, device: &Device) -> Result<(), LimitExceeded> {
        self.verdict(
            LimitKind::Device,
            self.check_device(device, NonZeroU32::MIN),
        )
    }

    /// After parsing: the rest of the device's budget for `readings` (the request
    /// paid one in [`Limits::admit_request`]), then `rows` (one per metric, what
    /// the warehouse writes) from the global budget. Err says which limit and when
    /// to retry; a request refused by the global limit has still spent its device
    /// budget (governor cannot refund).
    pub fn admit(&self, device: &Device, readings: u32, rows: u32) -> Result<(), LimitExceeded> {
        let burst = device.burst.unwrap_or(self.default_device_quota.1);
        if readings > burst.get() {
            return Err(LimitExceeded {
                limit: LimitKind::BatchLargerThanBurst,
                retry_after: Duration::ZERO,
            });
        }
        if let Some(rest) = NonZeroU32::new(readings.saturating_sub(1)) {
            self.verdict(LimitKind::Device, self.check_device(device, rest))?;
        }
        let rows = NonZeroU32::new(rows).unwrap_or(NonZeroU32::MIN);
        self.verdict(LimitKind::Global, self.global.check_n(rows))
    }

    /// Before checking a key: is this client address blocked for too many failed authentications?
    pub fn check_auth_allowed(&self, client: IpAddr) -> Result<(), LimitExceeded> {
        let mut blocked = self.blocked.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(&until) = blocked.get(&client) else {
            return Ok(());
        };
        if until > self.clock.now() {
            return Err(self.exceeded(LimitKind::AuthFailures, until));
        }
        // The block is over: charge the failure that found the budget empty.
        blocked.remove(&client);
        match self.charge_auth_failure(&mut blocked, client) {
            None => Ok(()),
            Some(until) => Err(self.exceeded(LimitKind::AuthFailures, until)),
        }
    }

    /// After a failed authentication: charge the client's failure budget.
    pub fn record_auth_failure(&self, client: IpAddr) {
        let mut blocked = self.blocked.lock().unwrap_or_else(PoisonError::into_inner);
        self.charge_auth_failure(&mut blocked, client);
    }

    /// Periodic housekeeping (retain_recent / shrink) so keyed stores don't grow without bound.
    pub fn prune(&self) {
        let mut devices = self.devices.write().unwrap_or_else(PoisonError::into_inner);
        for limiter in devices.values() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        // An empty limiter is as good as a new one; this drops quotas no device uses any more.
        devices.retain(|_, limiter| !limiter.is_empty());
        drop(devices);

        self.auth_failures.retain_recent();
        self.auth_failures.shrink_to_fit();
        let now = self.clock.now();
        // Forgetting an expired block forgives at most the one failure it owed.
        let mut blocked = self.blocked.lock().unwrap_or_else(PoisonError::into_inner);
        blocked.retain(|_, until| *until > now);
        blocked.shrink_to_fit();
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

    fn verdict(&self, limit: LimitKind, check: Check<C>) -> Result<(), LimitExceeded> {
        match check {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(self.exceeded(limit, not_until.earliest_possible())),
            Err(InsufficientCapacity(_)) => Err(LimitExceeded {
                limit: LimitKind::BatchLargerThanBurst,
                retry_after: Duration::ZERO,
            }),
        }
    }

    /// Charges one failure. With the budget empty nothing can be charged, so
    /// the address is blocked until there is room; returns that time.
    fn charge_auth_failure(
        &self,
        blocked: &mut HashMap<IpAddr, C::Instant>,
        client: IpAddr,
    ) -> Option<C::Instant> {
        let until = self
            .auth_failures
            .check_key(&client)
            .err()?
            .earliest_possible();
        blocked.insert(client, until);
        Some(until)
    }

    fn exceeded(&self, limit: LimitKind, until: C::Instant) -> LimitExceeded {
        let wait = Duration::from(until.duration_since(self.clock.now()));
        LimitExceeded {
            limit,
            retry_after: wait.max(MIN_RETRY_AFTER),
        }
    }
}

/// The client address behind a trusted proxy: X-Real-Ip, else the last X-Forwarded-For entry, else the socket peer; with `trust_proxy_headers` off, always the peer.
/// A header that does not hold an address is skipped.
pub fn client_address(headers: &HeaderMap, peer: IpAddr, trust_proxy_headers: bool) -> IpAddr {
    if !trust_proxy_headers {
        return peer;
    }
    let header = |name| headers.get(name).and_then(|value| value.to_str().ok());
    // The proxy sets X-Real-Ip and appends to X-Forwarded-For: earlier entries of
    // the latter are the client's own claims, which a key guesser would rotate.
    let forwarded = header("x-forwarded-for").and_then(|list| list.rsplit(',').next());
    header("x-real-ip")
        .into_iter()
        .chain(forwarded)
        .find_map(parse_address)
        .unwrap_or(peer)
}

/// An IP address, or the address of `ip:port` as some proxies send it.
fn parse_address(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    text.parse()
        .ok()
        .or_else(|| text.parse::<SocketAddr>().ok().map(|address| address.ip()))
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    fn limits() -> (Limits<FakeRelativeClock>, FakeRelativeClock) {
        let settings = LimitSettings {
            device_rate_per_sec: nz(10),
            device_burst: nz(5),
            global_rate_per_sec: nz(100),
            global_burst: nz(20),
            auth_failures_per_min: nz(6),
            auth_failure_burst: nz(2),
        };
        let clock = FakeRelativeClock::default();
        (Limits::with_clock(settings, clock.clone()), clock)
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
        limits: &Limits<C>,
        device: &Device,
        readings: u32,
    ) -> Result<(), LimitExceeded> {
        limits.admit_request(device)?;
        limits.admit(device, readings, readings)
    }

    fn refused(limit: LimitKind, retry_after: Duration) -> Result<(), LimitExceeded> {
        Err(LimitExceeded { limit, retry_after })
    }

    #[test]
    fn device_burst_then_refusal_until_refill() {
        let (limits, clock) = limits();
        let d = device("d", None, None);
        assert_eq!(admit(&limits, &d, 5), Ok(()));
        assert_eq!(
            admit(&limits, &d, 1),
            refused(LimitKind::Device, Duration::from_millis(100))
        );
        // Refused before its body: the wait is for the one unit a request costs up front.
        assert_eq!(
            admit(&limits, &d, 2),
            refused(LimitKind::Device, Duration::from_millis(100))
        );
        clock.advance(Duration::from_millis(100));
        assert_eq!(admit(&limits, &d, 1), Ok(()));
        // An empty request still costs one.
        assert_eq!(admit(&limits, &d, 0).unwrap_err().limit, LimitKind::Device);
    }

    #[test]
    fn registry_quota_overrides_defaults() {
        let (limits, _) = limits();
        let slow = device("slow", Some(1), Some(2));
        assert_eq!(admit(&limits, &slow, 2), Ok(()));
        assert_eq!(
            admit(&limits, &slow, 1),
            refused(LimitKind::Device, Duration::from_secs(1))
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
            refused(LimitKind::Device, Duration::from_millis(100))
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
            refused(LimitKind::Global, Duration::from_millis(10))
        );
    }

    #[test]
    fn a_device_over_its_rate_is_refused_before_its_body() {
        let (limits, clock) = limits();
        let d = device("d", None, None);
        assert_eq!(admit(&limits, &d, 5), Ok(()));
        assert_eq!(
            limits.admit_request(&d),
            refused(LimitKind::Device, Duration::from_millis(100))
        );
        clock.advance(Duration::from_millis(300));
        // Three units back: the request paid one up front, its readings the other two.
        assert_eq!(limits.admit_request(&d), Ok(()));
        assert_eq!(limits.admit(&d, 3, 3), Ok(()));
        assert_eq!(
            limits.admit_request(&d).unwrap_err().limit,
            LimitKind::Device
        );
    }

    #[test]
    fn the_global_limit_counts_rows() {
        let (limits, _) = limits();
        // Four readings of five metrics each fill the global burst of 20 rows.
        assert_eq!(limits.admit(&device("a", None, None), 4, 20), Ok(()));
        assert_eq!(
            limits.admit(&device("b", None, None), 1, 1),
            refused(LimitKind::Global, Duration::from_millis(10))
        );
    }

    #[test]
    fn batch_larger_than_any_burst_is_never_admitted() {
        let (limits, _) = limits();
        let too_large = refused(LimitKind::BatchLargerThanBurst, Duration::ZERO);
        assert_eq!(admit(&limits, &device("d", None, None), 6), too_large);
        assert_eq!(
            admit(&limits, &device("big", None, Some(50)), 21),
            too_large
        );
    }

    #[test]
    fn failed_authentications_block_the_address() {
        let (limits, clock) = limits();
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "2001:db8::1".parse().unwrap();
        let blocked = refused(LimitKind::AuthFailures, Duration::from_secs(10));

        for _ in 0..3 {
            assert_eq!(limits.check_auth_allowed(client), Ok(()));
            limits.record_auth_failure(client);
        }
        assert_eq!(limits.check_auth_allowed(client), blocked);
        assert_eq!(limits.check_auth_allowed(other), Ok(()));

        // After the block, the owed failure is charged: one more attempt, then blocked again.
        clock.advance(Duration::from_secs(10));
        assert_eq!(limits.check_auth_allowed(client), Ok(()));
        limits.record_auth_failure(client);
        assert_eq!(limits.check_auth_allowed(client), blocked);
    }

    #[test]
    fn prune_forgets_idle_state() {
        let (limits, clock) = limits();
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        admit(&limits, &device("d", Some(1), Some(1)), 1).unwrap();
        admit(&limits, &device("e", None, None), 1).unwrap();
        for _ in 0..3 {
            limits.record_auth_failure(client);
        }
        limits.prune();
        assert_eq!(limits.devices.read().unwrap().len(), 2);
        assert_eq!(limits.blocked.lock().unwrap().len(), 1);

        clock.advance(Duration::from_secs(60));
        limits.prune();
        assert!(limits.devices.read().unwrap().is_empty());
        assert!(limits.auth_failures.is_empty());
        assert!(limits.blocked.lock().unwrap().is_empty());
        assert_eq!(limits.check_auth_allowed(client), Ok(()));
    }

    #[test]
    fn client_address_from_trusted_headers_only() {
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        let with = |pairs: &[(&'static str, &str)]| {
            let mut headers = HeaderMap::new();
            for &(name, value) in pairs {
                headers.append(name, value.parse().unwrap());
            }
            headers
        };
        let cases: [(&[(&str, &str)], &str); 7] = [
            (&[], "10.0.0.9"),
            (
                &[("x-forwarded-for", "203.0.113.7, 10.1.1.1, 10.2.2.2")],
                "10.2.2.2",
            ),
            (&[("x-forwarded-for", "203.0.113.7:5555")], "203.0.113.7"),
            (
                &[("x-forwarded-for", "10.1.1.1, [2001:db8::7]:443")],
                "2001:db8::7",
            ),
            (&[("x-real-ip", " 198.51.100.4 ")], "198.51.100.4"),
            (
                &[
                    ("x-forwarded-for", "203.0.113.7"),
                    ("x-real-ip", "198.51.100.4"),
                ],
                "198.51.100.4",
            ),
            (
                &[("x-forwarded-for", "not an ip"), ("x-real-ip", "")],
                "10.0.0.9",
            ),
        ];
        for (pairs, expected) in cases {
            let headers = with(pairs);
            assert_eq!(
                client_address(&headers, peer, true),
                expected.parse::<IpAddr>().unwrap(),
                "{pairs:?}"
            );
            assert_eq!(client_address(&headers, peer, false), peer);
        }
    }
}
