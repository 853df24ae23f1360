//! Retry policy as data, and the one loop that applies it to every call.

use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

use super::error::Error;

/// Which failures are retried and for how long.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// No attempt starts after this much time since the first one.
    pub budget: Duration,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Add up to 100 % random jitter so that many clients do not retry in step.
    pub jitter: bool,
    /// Statuses meaning "not processed, try again later".
    pub retry_statuses: Vec<u16>,
    /// Retry connection failures and timeouts.
    pub retry_transport: bool,
    /// The longest a server's `Retry-After` makes a caller wait, and the longest pause it
    /// imposes on every caller of the client ([`SharedPause`]).
    pub max_retry_after: Duration,
}

/// How a failed attempt looks to the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Status(u16),
    /// Could not connect: the request never left.
    Connect,
    /// Timeout or broken connection after sending: the server may have acted on it.
    Ambiguous,
}

impl Failure {
    /// How the policy sees `err`; `None` means never retry.
    pub(crate) fn of(err: &Error) -> Option<Failure> {
        match err {
            Error::Api(api) => Some(Failure::Status(api.status)),
            Error::Transport(err) if err.is_builder() => None,
            // Not even connected: the request was certainly not processed.
            Error::Transport(err) if err.is_connect() => Some(Failure::Connect),
            Error::Transport(_) => Some(Failure::Ambiguous),
            _ => None,
        }
    }
}

impl RetryPolicy {
    /// What the Databricks SDKs do for REST calls: 429 and 503 (the request was
    /// not processed, so POSTs too), connection errors and timeouts, ~5 minutes.
    pub fn api() -> Self {
        RetryPolicy {
            budget: Duration::from_secs(300),
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            jitter: true,
            retry_statuses: vec![429, 503],
            retry_transport: true,
            max_retry_after: MAX_RETRY_AFTER,
        }
    }

    /// The Go SDK's token-endpoint policy: also 502 and 504, for a minute.
    pub fn token_endpoint() -> Self {
        RetryPolicy {
            budget: Duration::from_secs(60),
            retry_statuses: vec![429, 502, 503, 504],
            ..Self::api()
        }
    }

    /// The gateway's batch writer: every failure is tried again (the batch statement is
    /// idempotent and its rows are already acknowledged), backing off to 30 s, forever.
    pub fn batch_writes() -> Self {
        RetryPolicy {
            budget: Duration::MAX,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            ..Self::api()
        }
    }

    /// Whether a failure is worth another attempt. `retry_ambiguous` is the
    /// caller's per-call choice for requests that must not run twice.
    pub fn should_retry(&self, failure: Failure, retry_ambiguous: bool) -> bool {
        match failure {
            Failure::Status(status) => self.retry_statuses.contains(&status),
            Failure::Connect => self.retry_transport,
            Failure::Ambiguous => self.retry_transport && retry_ambiguous,
        }
    }

    pub fn schedule(&self) -> Schedule {
        let mut backoff = ExponentialBuilder::new()
            .with_min_delay(self.initial_backoff)
            .with_max_delay(self.max_backoff)
            .without_max_times();
        if self.jitter {
            backoff = backoff.with_jitter();
        }
        Schedule {
            budget: self.budget,
            backoff: backoff.build(),
            max_retry_after: self.max_retry_after,
        }
    }
}

/// The waits of one call's retries.
#[derive(Debug)]
pub struct Schedule {
    budget: Duration,
    backoff: ExponentialBackoff,
    max_retry_after: Duration,
}

impl Schedule {
    /// Wait before the next attempt: the larger of `Retry-After` (capped at the
    /// policy's `max_retry_after`) and the backoff, or `None` when that wait would end
    /// beyond the budget.
    pub fn next_wait(
        &mut self,
        elapsed: Duration,
        retry_after: Option<Duration>,
    ) -> Option<Duration> {
        let backoff = self.backoff.next()?;
        let server = retry_after.map(|server| server.min(self.max_retry_after));
        let wait = server.map_or(backoff, |server| server.max(backoff));
        // Saturating: an unbounded budget (Duration::MAX) is never exceeded.
        (elapsed.saturating_add(wait) <= self.budget).then_some(wait)
    }
}

/// A pause that every caller of one client waits out before its next request. A 429 or
/// 503 with `Retry-After` announces it: throttling is usually per workspace or warehouse,
/// so the other callers, sending with the same token, would only be refused too (the
/// AWS SDKs' adaptive retry mode shares its rate the same way).
#[derive(Debug, Default)]
pub(crate) struct SharedPause {
    until: Mutex<Option<tokio::time::Instant>>,
}

impl SharedPause {
    /// Pauses every caller until `wait` from now, unless a pause already runs longer.
    /// Callers cap `wait` (see [`RetryPolicy::max_retry_after`]).
    pub(crate) fn announce(&self, wait: Duration) {
        let now = tokio::time::Instant::now();
        let Some(end) = now.checked_add(wait) else {
            return;
        };
        let mut until = self.until.lock().unwrap_or_else(PoisonError::into_inner);
        if until.is_none_or(|until| until < end) {
            *until = Some(end);
        }
    }

    /// The end of the pause running now, if one is.
    pub(crate) fn until(&self) -> Option<tokio::time::Instant> {
        let until = *self.until.lock().unwrap_or_else(PoisonError::into_inner);
        until.filter(|until| *until > tokio::time::Instant::now())
    }

    /// Returns once no pause runs; a pause announced meanwhile is waited out too.
    pub(crate) async fn wait(&self) {
        while let Some(until) = self.until() {
            tokio::time::sleep_until(until).await;
        }
    }
}

/// Runs `attempt` until it succeeds, fails for good, or the budget runs out;
/// the last error is returned. With `pause`, every attempt first waits out the pause
/// shared by the client's callers, and a throttling answer extends it for all of them.
pub(crate) async fn run<T, F, Fut>(
    policy: &RetryPolicy,
    retry_ambiguous: bool,
    pause: Option<&SharedPause>,
    mut attempt: F,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let started = Instant::now();
    let mut schedule = policy.schedule();
    loop {
        if let Some(pause) = pause {
            pause.wait().await;
        }
        let err = match attempt().await {
            Ok(value) => return Ok(value),
            Err(err) => err,
        };
        if let (Some(pause), Some(wait)) = (pause, throttled_for(&err)) {
            pause.announce(wait.min(policy.max_retry_after));
        }
        let retryable =
            Failure::of(&err).is_some_and(|failure| policy.should_retry(failure, retry_ambiguous));
        let wait = retryable
            .then(|| schedule.next_wait(started.elapsed(), err.retry_after()))
            .flatten();
        match wait {
            Some(wait) => {
                tracing::debug!(error = %err, ?wait, "retrying Databricks call");
                tokio::time::sleep(wait).await;
            }
            None => return Err(err),
        }
    }
}

/// How long a throttling answer (429 or 503 with `Retry-After`) asks every caller to wait.
fn throttled_for(err: &Error) -> Option<Duration> {
    matches!(err.status(), Some(429 | 503))
        .then(|| err.retry_after())
        .flatten()
}

/// The longest `Retry-After` we honour: a server asking for more (a bug, a hostile proxy)
/// must not park a caller for hours or overflow a deadline.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// `Retry-After` is either delay-seconds or an HTTP date (RFC 9110 §10.2.3); capped at
/// [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        // More digits than a u64 holds is still a number of seconds: a long one.
        Err(_) if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => Duration::MAX,
        Err(_) => {
            let at = httpdate::parse_http_date(value).ok()?;
            at.duration_since(now).unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_jitter() -> RetryPolicy {
        RetryPolicy {
            jitter: false,
            ..RetryPolicy::api()
        }
    }

    #[test]
    fn api_policy_retries_429_503_and_transport_only() {
        let policy = RetryPolicy::api();
        for status in [429, 503] {
            assert!(policy.should_retry(Failure::Status(status), false));
        }
        for status in [400, 401, 403, 404, 409, 500, 502, 504] {
            assert!(
                !policy.should_retry(Failure::Status(status), true),
                "{status}"
            );
        }
        assert!(policy.should_retry(Failure::Connect, false));
        assert!(policy.should_retry(Failure::Ambiguous, true));
    }

    #[test]
    fn ambiguous_failures_follow_the_per_call_choice() {
        let policy = RetryPolicy::api();
        assert!(!policy.should_retry(Failure::Ambiguous, false));
        let no_transport = RetryPolicy {
            retry_transport: false,
            ..RetryPolicy::api()
        };
        assert!(!no_transport.should_retry(Failure::Connect, true));
    }

    #[test]
    fn token_policy_adds_502_and_504() {
        let policy = RetryPolicy::token_endpoint();
        for status in [429, 502, 503, 504] {
            assert!(policy.should_retry(Failure::Status(status), false));
        }
        assert!(!policy.should_retry(Failure::Status(401), false));
        assert_eq!(policy.budget, Duration::from_secs(60));
    }

    #[test]
    fn batch_writes_never_give_up_and_honour_retry_after() {
        let policy = RetryPolicy::batch_writes();
        let mut schedule = policy.schedule();
        let a_year = Duration::from_secs(365 * 24 * 3600);
        for _ in 0..100 {
            let wait = schedule.next_wait(a_year, None).expect("never gives up");
            // Jitter adds up to one more backoff on top.
            assert!(wait <= policy.max_backoff * 2, "{wait:?}");
        }
        let asked = Duration::from_secs(50);
        let wait = schedule.next_wait(a_year, Some(asked)).unwrap();
        assert!(wait >= asked, "{wait:?}");
        // Beyond the cap, the cap (or the backoff, up to twice 30 s with jitter).
        let wait = schedule
            .next_wait(a_year, Some(Duration::from_secs(3600)))
            .unwrap();
        assert_eq!(wait, policy.max_retry_after, "{wait:?}");
    }

    #[test]
    fn backoff_grows_to_the_maximum() {
        let mut schedule = no_jitter().schedule();
        let waits: Vec<_> = (0..6)
            .map(|_| schedule.next_wait(Duration::ZERO, None).unwrap().as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 10, 10]);
    }

    #[test]
    fn retry_after_wins_when_longer_than_backoff() {
        let mut schedule = no_jitter().schedule();
        let wait = schedule.next_wait(Duration::ZERO, Some(Duration::from_secs(7)));
        assert_eq!(wait, Some(Duration::from_secs(7)));
        // The backoff (2 s now) wins over a shorter Retry-After.
        let wait = schedule.next_wait(Duration::ZERO, Some(Duration::from_millis(10)));
        assert_eq!(wait, Some(Duration::from_secs(2)));
    }

    #[test]
    fn never_waits_beyond_the_budget() {
        let policy = no_jitter();
        let mut schedule = policy.schedule();
        let nearly_spent = policy.budget - Duration::from_millis(500);
        assert_eq!(schedule.next_wait(nearly_spent, None), None);
        let mut schedule = policy.schedule();
        let half_a_minute_left = policy.budget - Duration::from_secs(30);
        assert_eq!(
            schedule.next_wait(half_a_minute_left, Some(policy.max_retry_after)),
            None
        );
    }

    #[test]
    fn the_cap_on_retry_after_is_the_policys() {
        let policy = RetryPolicy {
            max_retry_after: Duration::from_secs(3),
            ..no_jitter()
        };
        let mut schedule = policy.schedule();
        let wait = schedule.next_wait(Duration::ZERO, Some(Duration::from_secs(50)));
        assert_eq!(wait, Some(Duration::from_secs(3)));
    }

    #[tokio::test]
    async fn a_shared_pause_holds_every_waiter_until_its_end() {
        let ms = Duration::from_millis;
        let pause = std::sync::Arc::new(SharedPause::default());
        assert_eq!(pause.until(), None);
        pause.announce(ms(600));
        let first_end = pause.until().expect("a pause runs");
        // A shorter announcement does not shorten it.
        pause.announce(ms(100));
        assert_eq!(pause.until(), Some(first_end));
        let waiters: Vec<_> = (0..4)
            .map(|_| {
                let pause = pause.clone();
                tokio::spawn(async move {
                    pause.wait().await;
                    tokio::time::Instant::now()
                })
            })
            .collect();
        // A longer one, announced while they wait, holds them all longer.
        tokio::time::sleep(ms(300)).await;
        pause.announce(ms(600));
        let second_end = pause.until().expect("still paused");
        assert!(second_end > first_end);
        for waiter in waiters {
            let woke = waiter.await.unwrap();
            assert!(woke >= second_end, "woke {:?} early", second_end - woke);
        }
        assert_eq!(pause.until(), None);
        // Once over, waiting costs nothing.
        tokio::time::timeout(ms(5000), pause.wait())
            .await
            .expect("no pause to wait for");
        // An announcement too long to represent is ignored rather than overflowing.
        pause.announce(Duration::MAX);
        assert_eq!(pause.until(), None);
    }

    #[tokio::test]
    async fn a_throttled_call_pauses_the_others_for_the_capped_retry_after() {
        let cap = Duration::from_millis(700);
        let policy = RetryPolicy {
            max_retry_after: cap,
            initial_backoff: Duration::from_millis(10),
            ..no_jitter()
        };
        let pause = SharedPause::default();
        let throttled = Error::Api(crate::ErrorResponse::from_body(
            429,
            b"",
            Some(Duration::from_secs(3600)),
        ));
        let start = tokio::time::Instant::now();
        let mut answers = vec![throttled];
        let first = run(&policy, true, Some(&pause), || {
            let answer = answers.pop();
            async move { answer.map_or(Ok(()), Err) }
        });
        // Another caller, starting once the 429 is in, waits out the same pause.
        let second = async {
            let announced = async {
                while pause.until().is_none() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            };
            tokio::time::timeout(Duration::from_secs(10), announced)
                .await
                .expect("the 429 announced a pause");
            run(&policy, true, Some(&pause), || async { Ok::<_, Error>(()) }).await?;
            Ok::<_, Error>(tokio::time::Instant::now())
        };
        let (first, second) = tokio::join!(first, second);
        first.unwrap();
        let waited = second.unwrap() - start;
        // The cap, not the hour the server asked for.
        assert!(
            waited >= cap && waited < Duration::from_secs(30),
            "{waited:?}"
        );
        // A 500, or a 429 without Retry-After, announces nothing.
        for (status, retry_after) in [(500, Some(Duration::from_secs(9))), (429, None)] {
            let err = Error::Api(crate::ErrorResponse::from_body(status, b"", retry_after));
            assert_eq!(throttled_for(&err), None, "{status}");
        }
    }

    #[test]
    fn jitter_stays_within_one_backoff() {
        let mut schedule = RetryPolicy::api().schedule();
        let wait = schedule.next_wait(Duration::ZERO, None).unwrap();
        assert!(wait >= Duration::from_secs(1) && wait <= Duration::from_secs(2));
    }

    #[test]
    fn parses_retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after(" 3 ", now), Some(Duration::from_secs(3)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("", now), None);
    }

    #[test]
    fn retry_after_is_capped_and_never_overflows() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for huge in ["18446744073709551615", "99999999999999999999999", "3600"] {
            assert_eq!(
                parse_retry_after(huge, now),
                Some(MAX_RETRY_AFTER),
                "{huge}"
            );
        }
        let next_year = httpdate::fmt_http_date(now + Duration::from_secs(365 * 24 * 3600));
        assert_eq!(parse_retry_after(&next_year, now), Some(MAX_RETRY_AFTER));
        // Whatever a caller passes, the schedule caps it and its arithmetic saturates.
        let mut schedule = RetryPolicy::batch_writes().schedule();
        assert_eq!(
            schedule.next_wait(Duration::MAX, Some(Duration::MAX)),
            Some(MAX_RETRY_AFTER)
        );
        let mut schedule = RetryPolicy::api().schedule();
        assert_eq!(schedule.next_wait(Duration::MAX, Some(Duration::MAX)), None);
    }
}
