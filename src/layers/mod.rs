//! One tower layer per concern; [`crate::app`] composes them.
//!
//! Layers above routing take `Request<B>`; the per-service layers below it take a
//! [`RoutedRequest`](crate::target::RoutedRequest), so they cannot be placed above routing.

pub(crate) mod allowlist;
pub(crate) mod audit;
pub(crate) mod endpoint_catalog;
pub mod explain;
pub(crate) mod hygiene;
pub(crate) mod image_import;
pub(crate) mod limit;
pub(crate) mod require_header;
pub mod retry;
pub mod sign;
#[cfg(test)]
pub(crate) mod test_support;
pub(crate) mod trace;
pub(crate) mod tracecontext;
pub(crate) mod version;

use bytes::Bytes;
use http_body_util::{Either, Full};

/// A request body in the stack: the client's, streamed (`B`), or bytes a layer read and
/// checked. With `B = hyper::body::Incoming` this is [`crate::body::Body`].
pub type ReqBody<B> = Either<B, Full<Bytes>>;

/// The future type of layers that may answer without calling their inner service: no box.
pub type Reject<F, T, E> = futures_util::future::Either<F, std::future::Ready<Result<T, E>>>;

/// A future that fails at once with `e`: the inner service is never called.
pub fn reject<F, T, E>(e: E) -> Reject<F, T, E> {
    futures_util::future::Either::Right(std::future::ready(Err(e)))
}

/// The future that calls the inner service.
pub fn pass<F, T, E>(f: F) -> Reject<F, T, E> {
    futures_util::future::Either::Left(f)
}
