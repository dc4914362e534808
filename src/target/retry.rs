//! A service's retry settings and budget (`services.NAME.retry`), built once at start and
//! kept in its [`Target`](super::Target); the retry layer (`layers::retry`) reads them.
//!
//! Guarantees: only GET, HEAD and OPTIONS and the operations listed in `retry.operations` may
//! be retried, at most `max_attempts` attempts in all; pauses are jittered between half and all
//! of `backoff * 2^(attempt-1)`; the budget starts with [`RESERVE`] retries, is refilled by
//! `budget_percent` of the service's requests and holds at most [`CAP`].

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use http::Method;

use crate::config::RetryConfig;
use crate::policy::allowlist::Rule;

/// Retries a quiet service may make before its requests have refilled the budget.
pub const RESERVE: i64 = 3;
/// The most retries the budget holds.
pub const CAP: i64 = 10;

/// One service's retry settings and budget, built at start.
#[derive(Debug)]
pub struct RetryPolicy {
    pub(crate) max_attempts: u32,
    backoff: Duration,
    /// Operations with unsafe methods that may be retried.
    operations: Vec<Rule>,
    pub(crate) budget: Budget,
}

impl RetryPolicy {
    pub fn new(cfg: &RetryConfig) -> Self {
        Self {
            max_attempts: cfg.max_attempts.max(1),
            backoff: cfg.backoff,
            operations: cfg.operations.clone(),
            budget: Budget::new(cfg.budget_percent),
        }
    }

    /// Whether a failed attempt of `method path` may be sent again.
    pub fn may_retry(&self, method: &Method, path: &str) -> bool {
        self.max_attempts > 1
            && (matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
                || self
                    .operations
                    .iter()
                    .any(|r| r.matches(method.as_str(), path)))
    }

    /// The pause before attempt `attempt + 1`: between half and all of `backoff * 2^(attempt-1)`.
    pub(crate) fn pause(&self, attempt: u32) -> Duration {
        let full = self.backoff.saturating_mul(1 << (attempt - 1).min(10));
        let half = full / 2;
        half + half.mul_f64(jitter())
    }
}

/// Retry tokens in thousandths: each request deposits `budget_percent * 10`, each retry takes
/// 1000.
#[derive(Debug)]
pub(crate) struct Budget {
    milli: AtomicI64,
    deposit: i64,
}

impl Budget {
    fn new(percent: u32) -> Self {
        Self {
            milli: AtomicI64::new(RESERVE * 1000),
            deposit: i64::from(percent) * 10,
        }
    }

    pub(crate) fn deposit(&self) {
        if self.deposit > 0 {
            let _ = self
                .milli
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| {
                    Some((m + self.deposit).min(CAP * 1000))
                });
        }
    }

    pub(crate) fn try_withdraw(&self) -> bool {
        self.milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| {
                (m >= 1000).then_some(m - 1000)
            })
            .is_ok()
    }
}

/// A number in [0, 1): cheap, unpredictable enough to spread retries of many sidecars.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    static N: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(N.fetch_add(1, Ordering::Relaxed));
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(toml_ops: &[&str], attempts: u32, percent: u32) -> RetryPolicy {
        RetryPolicy::new(&RetryConfig {
            max_attempts: attempts,
            budget_percent: percent,
            backoff: Duration::from_millis(40),
            operations: toml_ops.iter().map(|s| Rule::parse(s).unwrap()).collect(),
        })
    }

    #[test]
    fn safe_methods_and_listed_operations_only() {
        let p = policy(&["POST /v1/images/*/import"], 2, 20);
        assert!(p.may_retry(&Method::GET, "/v1/images"));
        assert!(p.may_retry(&Method::HEAD, "/v1/images"));
        assert!(p.may_retry(&Method::OPTIONS, "/"));
        assert!(p.may_retry(&Method::POST, "/v1/images/i-1/import"));
        assert!(!p.may_retry(&Method::POST, "/v1/images"));
        assert!(!p.may_retry(&Method::DELETE, "/v1/images/i-1"));
        assert!(!policy(&[], 1, 20).may_retry(&Method::GET, "/v1/images"));
    }

    #[test]
    fn pauses_grow_and_stay_jittered_within_bounds() {
        let p = policy(&[], 3, 20);
        for _ in 0..50 {
            let a = p.pause(1);
            let b = p.pause(2);
            assert!(
                a >= Duration::from_millis(20) && a <= Duration::from_millis(40),
                "{a:?}"
            );
            assert!(
                b >= Duration::from_millis(40) && b <= Duration::from_millis(80),
                "{b:?}"
            );
        }
    }

    #[test]
    fn the_budget_has_a_reserve_and_refills_by_percent() {
        let b = Budget::new(50);
        for _ in 0..RESERVE {
            assert!(b.try_withdraw());
        }
        assert!(!b.try_withdraw());
        b.deposit();
        assert!(!b.try_withdraw(), "half a retry is not a retry");
        b.deposit();
        assert!(b.try_withdraw());
        for _ in 0..100 {
            b.deposit();
        }
        let mut n = 0;
        while b.try_withdraw() {
            n += 1;
        }
        assert_eq!(n, CAP);
    }
}
