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

pin_project_lite::pin_project! {
    /// A request body on its way upstream: data passes unchanged, trailers are dropped. Header
    /// hygiene cannot see trailers, so a client could otherwise send `Scp-*` or `Authorization`
    /// fields after the body to an HTTP/2 upstream.
    pub struct NoTrailers<B> {
        #[pin]
        inner: B,
    }
}

impl<B> NoTrailers<B> {
    pub fn new(inner: B) -> Self {
        Self { inner }
    }
}

impl<B> http_body::Body for NoTrailers<B>
where
    B: http_body::Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, B::Error>>> {
        let mut inner = self.project().inner;
        loop {
            match std::task::ready!(inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) if frame.is_trailers() => continue,
                other => return std::task::Poll::Ready(other),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn trailers_are_dropped_and_data_kept() {
        let frames: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> = vec![
            Ok(http_body::Frame::data(Bytes::from_static(b"ab"))),
            Ok(http_body::Frame::data(Bytes::from_static(b"cd"))),
            Ok(http_body::Frame::trailers({
                let mut t = http::HeaderMap::new();
                t.insert("scp-signature", http::HeaderValue::from_static("forged"));
                t
            })),
        ];
        let body = NoTrailers::new(http_body_util::StreamBody::new(futures_util::stream::iter(
            frames,
        )));
        let collected = body.collect().await.unwrap();
        assert!(collected.trailers().is_none());
        assert_eq!(collected.to_bytes(), "abcd");
    }
}
