//! Bounded polls: tests wait for what they can observe, up to a deadline, never a fixed sleep.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often a poll looks again.
pub const EVERY: Duration = Duration::from_millis(10);

/// Calls `check` every [`EVERY`] until it yields `Some`, for at most `within`; `None` when the
/// deadline passed first (the caller's assertion then says what never happened).
pub async fn poll_until<T, F, Fut>(within: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(EVERY).await;
    }
}

/// [`poll_until`] for a plain condition.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    poll_until(within, || {
        let f = check();
        async move { f.await.then_some(()) }
    })
    .await
    .is_some()
}

/// [`poll_until`] from blocking code (a test thread waiting on a child process).
pub fn poll_until_blocking<T>(within: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(EVERY);
    }
}
