//! One tower layer per concern; [`crate::app::proxy_service`] composes them.

pub mod allowlist;
pub mod hygiene;
pub mod image_import;
pub mod limit;
pub mod sign;
#[cfg(test)]
pub(crate) mod test_support;
pub mod trace;
pub mod version;

use std::future::Future;
use std::pin::Pin;

/// The future type of layers that may answer without calling their inner service.
pub type Reject<S, T, E> =
    futures_util::future::Either<S, Pin<Box<dyn Future<Output = Result<T, E>> + Send>>>;

/// A future that fails at once with `e`: the inner service is never called.
pub fn reject<S, T: Send + 'static, E: Send + 'static>(e: E) -> Reject<S, T, E> {
    futures_util::future::Either::Right(Box::pin(async move { Err(e) }))
}
