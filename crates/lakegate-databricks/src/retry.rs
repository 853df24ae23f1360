//! Retry policy as data, and the one loop that applies it to every call.

use std::future::Future;
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
        }
    }
}

/// The waits of one call's retries.
#[derive(Debug)]
pub struct Schedule {
    budget: Duration,
    backoff: ExponentialBackoff,
}

impl Schedule {
    /// Wait before the next attempt: the larger of `Retry-After` and the
    /// backoff, or `None` when that wait would end beyond the budget.
    pub fn next_wait(
        &mut self,
        elapsed: Duration,
        retry_after: Option<Duration>,
    ) -> Option<Duration> {
        let backoff = self.backoff.next()?;
        let wait = retry_after.map_or(backoff, |server| server.max(backoff));
        // Saturating: an unbounded budget (Duration::MAX) is never exceeded.
        (elapsed.saturating_add(wait) <= self.budget).then_some(wait)
    }
}

/// Runs `attempt` until it succeeds, fails for good, or the budget runs out;
/// the last error is returned.
pub(crate) async fn run<T, F, Fut>(
    policy: &RetryPolicy,
    retry_ambiguous: bool,
    mut attempt: F,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let started = Instant::now();
    let mut schedule = policy.schedule();
    loop {
        let err = match attempt().await {
            Ok(value) => return Ok(value),
            Err(err) => err,
        };
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
        let asked = Duration::from_secs(120); // longer than any backoff with jitter
        assert_eq!(schedule.next_wait(a_year, Some(asked)), Some(asked));
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
        assert_eq!(
            schedule.next_wait(Duration::ZERO, Some(policy.budget + Duration::from_secs(1))),
            None
        );
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
        // Whatever a caller passes, the schedule's arithmetic saturates instead of panicking.
        let mut schedule = RetryPolicy::batch_writes().schedule();
        assert_eq!(
            schedule.next_wait(Duration::MAX, Some(Duration::MAX)),
            Some(Duration::MAX)
        );
        let mut schedule = RetryPolicy::api().schedule();
        assert_eq!(schedule.next_wait(Duration::MAX, Some(Duration::MAX)), None);
    }
}
