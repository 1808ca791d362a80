//! The retry policy: which failures are worth another attempt, and how long
//! to wait before it (exponential backoff with jitter, `Retry-After`).
//!
//! Budgets count a *streak* of failures with no byte received in between:
//! a transfer that makes progress between drops can survive any number of
//! drops, while a server that is down gives up after `max_attempts` tries or
//! `max_retry_time`, whichever comes first.

use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;

use crate::source::{HttpOptions, SourceError};

/// First backoff delay; doubled for each further failure in a streak.
const BASE_DELAY: Duration = Duration::from_millis(200);
/// Longest single backoff delay (before `Retry-After`).
const MAX_DELAY: Duration = Duration::from_secs(30);

/// What a failed attempt means for the next one.
#[derive(Debug)]
pub(super) enum Failure {
    /// Worth retrying (connection trouble, 5xx, 408/429, a broken body),
    /// after `after` if the server said so.
    Retry {
        err: SourceError,
        after: Option<Duration>,
    },
    /// Retrying cannot help (404, TLS trust, changed source...).
    Fatal(SourceError),
}

impl Failure {
    /// A retryable failure without a server-given delay.
    pub(super) fn retry(err: SourceError) -> Self {
        Failure::Retry { err, after: None }
    }
}

/// Statuses that may succeed on a later attempt.
pub(super) fn is_transient_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 429 | 500 | 502 | 503 | 504)
}

/// Parses `Retry-After` (delta-seconds or an HTTP date).
pub(super) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Failure accounting for one transfer (or one segment, or one range read).
#[derive(Debug)]
pub(super) struct RetryState {
    max_attempts: u32,
    max_time: Duration,
    failures: u32,
    streak_start: Option<Instant>,
}

impl RetryState {
    pub(super) fn new(opts: &HttpOptions) -> Self {
        RetryState {
            max_attempts: opts.max_attempts.max(1),
            max_time: opts.max_retry_time,
            failures: 0,
            streak_start: None,
        }
    }

    /// Bytes arrived: the current failure streak is over.
    pub(super) fn progress(&mut self) {
        self.failures = 0;
        self.streak_start = None;
    }

    /// Handles a failed attempt: returns the error when it is fatal or the
    /// budget is spent, otherwise sleeps for the backoff delay.
    pub(super) async fn backoff(&mut self, failure: Failure) -> Result<(), SourceError> {
        let (err, after) = match failure {
            Failure::Fatal(err) => return Err(err),
            Failure::Retry { err, after } => (err, after),
        };
        self.failures = self.failures.saturating_add(1);
        let start = *self.streak_start.get_or_insert_with(Instant::now);
        let elapsed = start.elapsed();
        let delay = after.unwrap_or_else(|| jittered(self.failures));
        if self.failures >= self.max_attempts || elapsed.saturating_add(delay) > self.max_time {
            return Err(SourceError::RetriesExhausted {
                attempts: self.failures,
                elapsed,
                last: Box::new(err),
            });
        }
        tracing::warn!(
            "{err}; retrying in {:.1}s (attempt {} of {})",
            delay.as_secs_f64(),
            self.failures.saturating_add(1),
            self.max_attempts
        );
        tokio::time::sleep(delay).await;
        Ok(())
    }
}

/// `BASE_DELAY * 2^(n-1)`, capped, then scaled by a random factor in
/// [0.5, 1.0] so that many clients cut off together do not return together.
fn jittered(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    let full = BASE_DELAY.saturating_mul(1u32 << exp).min(MAX_DELAY);
    full.mul_f64(rand::random_range(0.5..=1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let first = jittered(1);
        assert!(first >= BASE_DELAY / 2 && first <= BASE_DELAY);
        let fifth = jittered(5);
        assert!(fifth >= BASE_DELAY * 8 && fifth <= BASE_DELAY * 16);
        assert!(jittered(40) <= MAX_DELAY);
    }

    #[test]
    fn retry_after_seconds_and_date() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, "3".parse().expect("header"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
        let later = SystemTime::now() + Duration::from_secs(100);
        headers.insert(
            RETRY_AFTER,
            httpdate::fmt_http_date(later).parse().expect("header"),
        );
        let got = retry_after(&headers).expect("date parsed");
        assert!(got > Duration::from_secs(90) && got <= Duration::from_secs(100));
        headers.insert(RETRY_AFTER, "soon".parse().expect("header"));
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn transient_statuses() {
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(is_transient_status(
                StatusCode::from_u16(code).expect("code")
            ));
        }
        for code in [400, 401, 403, 404, 410, 416, 501] {
            assert!(!is_transient_status(
                StatusCode::from_u16(code).expect("code")
            ));
        }
    }

    #[tokio::test]
    async fn attempts_are_bounded_and_reset_by_progress() {
        let opts = HttpOptions {
            max_attempts: 3,
            ..HttpOptions::default()
        };
        let mut state = RetryState::new(&opts);
        let fail = || Failure::retry(SourceError::ConnectionRefused { url: "u".into() });
        assert!(state.backoff(fail()).await.is_ok());
        assert!(state.backoff(fail()).await.is_ok());
        state.progress();
        assert!(state.backoff(fail()).await.is_ok());
        assert!(state.backoff(fail()).await.is_ok());
        let err = state
            .backoff(fail())
            .await
            .expect_err("third failure in a row");
        assert!(
            err.to_string().starts_with("giving up after 3 attempts"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn fatal_is_not_retried() {
        let mut state = RetryState::new(&HttpOptions::default());
        let err = state
            .backoff(Failure::Fatal(SourceError::Status {
                status: "404 Not Found".into(),
                url: "http://h/x".into(),
                detail: String::new(),
            }))
            .await
            .expect_err("fatal");
        assert_eq!(err.to_string(), "HTTP 404 Not Found for http://h/x");
    }
}
