//! When to try an upstream request again, and how long to wait first.

use std::time::Duration;

use rand::{Rng, RngExt};

use super::LlmError;
use crate::config::LlmConfig;

/// Retry limits for one provider: at most `max_attempts` tries, separated by
/// exponential backoff with full jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Most attempts on one provider, the first try included (at least 1).
    pub max_attempts: u32,
    /// Base of the backoff in ms: attempt `n` waits up to `base_ms * 2^(n-1)`.
    pub base_ms: u64,
    /// Cap of any delay in ms, and the longest `Retry-After` that is honoured.
    pub max_ms: u64,
}

impl RetryPolicy {
    /// `llm.max_attempts`, `llm.retry_base_ms` and `llm.retry_max_ms`.
    pub fn from_config(config: &LlmConfig) -> Self {
        Self {
            max_attempts: config.max_attempts,
            base_ms: config.retry_base_ms,
            max_ms: config.retry_max_ms,
        }
    }

    /// How long to wait before the next attempt after attempt number
    /// `attempt` (1-based) failed with `error`, or `None` to give up on this
    /// provider: when the error is not retryable
    /// ([`LlmError::is_retryable`]), when `attempt` was the last allowed one,
    /// or when a 429's `Retry-After` is longer than `max_ms`.
    ///
    /// A `Retry-After` up to `max_ms` is waited exactly. Otherwise the delay is
    /// uniformly random in `0..=min(base_ms * 2^(attempt-1), max_ms)` ms
    /// ("full jitter"), so clients that failed together do not retry together.
    pub fn delay(&self, attempt: u32, error: &LlmError) -> Option<Duration> {
        self.delay_with(attempt, error, &mut rand::rng())
    }

    /// [`RetryPolicy::delay`] with the jitter drawn from `rng`.
    pub fn delay_with<R: Rng + ?Sized>(&self, attempt: u32, error: &LlmError, rng: &mut R) -> Option<Duration> {
        if !error.is_retryable() || attempt >= self.max_attempts {
            return None;
        }
        if let Some(after) = error.retry_after_ms() {
            return (after <= self.max_ms).then(|| Duration::from_millis(after));
        }
        let ceiling = self.backoff_ceiling_ms(attempt);
        Some(Duration::from_millis(rng.random_range(0..=ceiling)))
    }

    /// The largest delay in ms after attempt `attempt` (1-based) fails:
    /// `min(base_ms * 2^(attempt-1), max_ms)`, without overflow.
    pub fn backoff_ceiling_ms(&self, attempt: u32) -> u64 {
        let exponent = attempt.saturating_sub(1).min(63);
        self.base_ms.saturating_mul(1u64 << exponent).min(self.max_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            base_ms: 100,
            max_ms: 1_000,
        }
    }

    fn unavailable() -> LlmError {
        LlmError::unavailable("HTTP 503")
    }

    fn rate_limited(retry_after_ms: Option<u64>) -> LlmError {
        LlmError::RateLimited {
            message: "HTTP 429".into(),
            retry_after_ms,
        }
    }

    #[test]
    fn from_config_uses_the_llm_settings() {
        let p = RetryPolicy::from_config(&LlmConfig::default());
        assert_eq!(
            p,
            RetryPolicy {
                max_attempts: 3,
                base_ms: 250,
                max_ms: 8_000
            }
        );
    }

    #[test]
    fn ceilings_double_and_are_capped() {
        let p = policy();
        let ceilings: Vec<u64> = (1..=6).map(|a| p.backoff_ceiling_ms(a)).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1_000, 1_000]);
        assert_eq!(p.backoff_ceiling_ms(0), 100, "attempt 0 is treated as the first");
        assert_eq!(p.backoff_ceiling_ms(u32::MAX), 1_000, "no overflow");
        let huge = RetryPolicy {
            max_attempts: 100,
            base_ms: u64::MAX / 2,
            max_ms: u64::MAX,
        };
        assert_eq!(huge.backoff_ceiling_ms(10), u64::MAX, "saturates");
    }

    #[test]
    fn delays_stay_within_the_jitter_bounds() {
        let p = RetryPolicy {
            max_attempts: 10,
            ..policy()
        };
        let errors = [
            unavailable(),
            rate_limited(None),
            LlmError::idle_timeout(5),
            LlmError::first_chunk_timeout(5),
        ];
        for attempt in 1..10 {
            let ceiling = Duration::from_millis(p.backoff_ceiling_ms(attempt));
            for error in &errors {
                let mut seen_below_half = false;
                for _ in 0..200 {
                    let d = p.delay(attempt, error).expect("retryable and attempts left");
                    assert!(d <= ceiling, "attempt {attempt}: {d:?} > {ceiling:?}");
                    seen_below_half |= d < ceiling / 2;
                }
                assert!(
                    seen_below_half,
                    "full jitter: delays are spread from 0, not only near the ceiling"
                );
            }
        }
    }

    #[test]
    fn gives_up_when_attempts_are_exhausted_or_the_error_is_final() {
        let p = policy();
        assert!(p.delay(3, &unavailable()).is_some());
        assert_eq!(p.delay(4, &unavailable()), None, "4 of 4 attempts used");
        assert_eq!(p.delay(5, &unavailable()), None);
        assert_eq!(p.delay(1, &LlmError::upstream("HTTP 400")), None, "not retryable");
        let once = RetryPolicy {
            max_attempts: 1,
            ..policy()
        };
        assert_eq!(once.delay(1, &unavailable()), None, "max_attempts = 1 never retries");
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_cap() {
        let p = policy();
        assert_eq!(p.delay(1, &rate_limited(Some(700))), Some(Duration::from_millis(700)));
        assert_eq!(
            p.delay(3, &rate_limited(Some(1_000))),
            Some(Duration::from_millis(1_000)),
            "exactly max_ms is still honoured, regardless of the backoff ceiling"
        );
        assert_eq!(p.delay(1, &rate_limited(Some(0))), Some(Duration::ZERO));
        assert_eq!(
            p.delay(1, &rate_limited(Some(1_001))),
            None,
            "longer than max_ms: give up"
        );
        assert_eq!(p.delay(4, &rate_limited(Some(10))), None, "attempts still count");
    }
}
