//! The one body type that flows through the proxy in both directions: a streamed hyper body
//! (from the client or the upstream) or bytes the proxy holds (a checked import body, a
//! proxy-made JSON error).

use bytes::Bytes;
use http_body_util::{Either, Full};

pub type Body = Either<hyper::body::Incoming, Full<Bytes>>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Either::Right(Full::new(bytes.into()))
}

pub fn empty() -> Body {
    full(Bytes::new())
}
