//! The one body type that flows through the proxy in both directions: a streamed hyper body
//! (from the client or the upstream) or bytes the proxy holds (a checked import body, a
//! proxy-made JSON error); and the wrappers that bound a streamed body in time.
//!
//! Guarantees: a body wrapped by [`NoTrailers::limited`] or in [`StallLimited`] that delivers no frame for
//! its limit while it is being read fails with [`BodyStalled`] (never ends early as if
//! complete), so the other side sees an aborted message; the clock runs only while the reader
//! waits on the body, so a reader that is itself slow (backpressure) never trips it.
//! [`NoTrailers::limited`] also tells when the body has ended, for a timeout that starts
//! there.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http_body_util::{Either, Full};

pub type Body = Either<hyper::body::Incoming, Full<Bytes>>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Either::Right(Full::new(bytes.into()))
}

pub fn empty() -> Body {
    full(Bytes::new())
}

/// Which body stopped making progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The client's request body.
    Upload,
    /// The upstream's response body.
    Download,
}

/// A body delivered no frame for `limit` while it was being read.
#[derive(Debug, thiserror::Error)]
#[error("{} sent no body data for {} (services.{service}.body_idle_timeout)", match .direction { Direction::Upload => "the client", Direction::Download => "the upstream" }, humantime::format_duration(*.limit))]
pub struct BodyStalled {
    pub direction: Direction,
    pub limit: Duration,
    pub service: String,
}

impl BodyStalled {
    /// Finds a stalled upload in an error's source chain (hyper wraps body errors).
    pub fn find<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyStalled> {
        let mut cur = Some(err);
        while let Some(e) = cur {
            if let Some(s) = e.downcast_ref::<BodyStalled>() {
                return Some(s);
            }
            cur = e.source();
        }
        None
    }
}

/// The per-service body limit a response carries in its extensions, for the listener to
/// apply to the upstream's body ([`StallLimited`]).
#[derive(Clone, Debug)]
pub struct DownloadLimit {
    pub limit: Duration,
    /// The service's interned name ([`crate::target::Target::label`]): no copy per response.
    pub service: &'static str,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The stall clock: armed when the reader finds the body pending, disarmed by a frame.
///
/// Its timer is made the first time the body is pending: most bodies never are (an empty
/// request body, a small response that arrived with its head), and they then cost no
/// allocation, clock read or timer entry (callgrind: 76.2k -> 75.0k instructions per GET).
#[derive(Debug)]
struct StallClock {
    limit: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    armed: bool,
}

impl StallClock {
    fn new(limit: Duration) -> Self {
        Self {
            limit,
            sleep: None,
            armed: false,
        }
    }

    /// Called when the inner body is pending: true once it has been so for `limit`.
    fn stalled(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.armed {
            self.armed = true;
            let at = tokio::time::Instant::now() + self.limit;
            match self.sleep.as_mut() {
                Some(sleep) => sleep.as_mut().reset(at),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
        self.sleep
            .as_mut()
            .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready())
    }

    fn progressed(&mut self) {
        self.armed = false;
    }
}

use std::future::Future as _;

pin_project_lite::pin_project! {
    /// A body that fails with [`BodyStalled`] when it delivers nothing for its limit while
    /// being read (no limit: passes through).
    pub struct StallLimited<B> {
        #[pin]
        inner: B,
        clock: Option<StallClock>,
        direction: Direction,
        service: &'static str,
    }
}

impl<B> StallLimited<B> {
    pub fn new(inner: B, limit: Option<DownloadLimit>) -> Self {
        let (clock, service) = match limit {
            Some(l) => (Some(StallClock::new(l.limit)), l.service),
            None => (None, ""),
        };
        Self {
            inner,
            clock,
            direction: Direction::Download,
            service,
        }
    }
}

impl<B> http_body::Body for StallLimited<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(c) = this.clock.as_mut() {
                    c.progressed();
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match this.clock.as_mut().map(|c| (c.stalled(cx), c.limit)) {
                Some((true, limit)) => {
                    let err = BodyStalled {
                        direction: *this.direction,
                        limit,
                        service: (*this.service).to_owned(),
                    };
                    if *this.direction == Direction::Download {
                        tracing::warn!(error = %err, "response aborted: the upstream body stalled");
                    }
                    this.clock.take();
                    Poll::Ready(Some(Err(err.into())))
                }
                _ => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// A request body on its way upstream. Data passes unchanged and trailers are dropped:
    /// header hygiene cannot see trailers, so a client could otherwise send `Scp-*` or
    /// `Authorization` fields after the body to an HTTP/2 upstream. Built with
    /// [`NoTrailers::limited`], it also fails with [`BodyStalled`] when the client stops
    /// sending for the service's `body_idle_timeout`, and reports when it has ended.
    pub struct NoTrailers<B> {
        #[pin]
        inner: StallLimited<B>,
        ended: Option<Arc<EndSignal>>,
    }

    impl<B> PinnedDrop for NoTrailers<B> {
        fn drop(this: Pin<&mut Self>) {
            // Dropped unfinished (the upstream answered early, or failed): nothing is left to
            // wait for either.
            if let Some(e) = this.project().ended.take() {
                e.set();
            }
        }
    }
}

#[derive(Debug, Default)]
struct EndSignal {
    ended: AtomicBool,
    waker: AtomicWaker,
}

impl EndSignal {
    fn set(&self) {
        self.ended.store(true, Ordering::Release);
        self.waker.wake();
    }
}

/// Tells when the request body has ended (or was dropped); pollable, so a future can hold it
/// unboxed.
#[derive(Debug)]
pub struct UploadEnded(Arc<EndSignal>);

impl UploadEnded {
    pub fn poll_ended(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.ended.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        self.0.waker.register(cx.waker());
        if self.0.ended.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    pub async fn wait(self) {
        std::future::poll_fn(|cx| self.poll_ended(cx)).await;
    }
}

impl<B: http_body::Body> NoTrailers<B> {
    /// Trailers dropped, no time limit.
    pub fn new(inner: B) -> Self {
        Self {
            inner: StallLimited::new(inner, None),
            ended: None,
        }
    }

    /// Trailers dropped, a stall limit of `limit`, and the receiving side of "has ended".
    pub fn limited(inner: B, limit: Duration, service: &'static str) -> (Self, UploadEnded) {
        let signal = Arc::new(EndSignal::default());
        let done = inner.is_end_stream();
        // An empty body (a GET's) has nothing to wait for: no clock.
        let mut inner =
            StallLimited::new(inner, (!done).then_some(DownloadLimit { limit, service }));
        inner.direction = Direction::Upload;
        if done {
            signal.set();
        }
        let body = Self {
            inner,
            ended: (!done).then(|| signal.clone()),
        };
        (body, UploadEnded(signal))
    }
}

impl<B> http_body::Body for NoTrailers<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let out = loop {
            match std::task::ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) if frame.is_trailers() => continue,
                other => break other,
            }
        };
        let ended = match &out {
            None | Some(Err(_)) => true,
            Some(Ok(_)) => this.inner.is_end_stream(),
        };
        if ended {
            if let Some(e) = this.ended.take() {
                e.set();
            }
        }
        Poll::Ready(out)
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
    use http_body::Body as _;
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

    type TestFrame = Result<http_body::Frame<Bytes>, std::convert::Infallible>;
    type TestBody = http_body_util::StreamBody<futures_util::stream::BoxStream<'static, TestFrame>>;

    /// A body fed by hand: `tx` sends frames, dropping it ends the body.
    fn channel() -> (tokio::sync::mpsc::Sender<TestFrame>, TestBody) {
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        (
            tx,
            http_body_util::StreamBody::new(futures_util::StreamExt::boxed(stream)),
        )
    }

    /// A download body fed by hand (see [`channel`]) that fails after `secs` without a frame.
    fn download(secs: u64) -> (tokio::sync::mpsc::Sender<TestFrame>, StallLimited<TestBody>) {
        let (tx, inner) = channel();
        let limit = DownloadLimit {
            limit: Duration::from_secs(secs),
            service: "svc",
        };
        (tx, StallLimited::new(inner, Some(limit)))
    }

    async fn send(tx: &tokio::sync::mpsc::Sender<TestFrame>, data: &'static [u8]) {
        tx.send(Ok(http_body::Frame::data(Bytes::from_static(data))))
            .await
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_download_fails_after_its_limit_and_not_before() {
        let (tx, body) = download(5);
        let mut body = std::pin::pin!(body);
        send(&tx, b"a").await;
        assert!(body.frame().await.unwrap().is_ok());
        let started = tokio::time::Instant::now();
        // Progress within the limit keeps it alive.
        tokio::time::sleep(Duration::from_secs(4)).await;
        send(&tx, b"b").await;
        assert!(body.frame().await.unwrap().is_ok());
        let err = body.frame().await.unwrap().unwrap_err();
        let stalled = BodyStalled::find(&*err).unwrap();
        assert_eq!(stalled.direction, Direction::Download);
        assert_eq!(started.elapsed(), Duration::from_secs(9));
        assert!(
            err.to_string().contains("services.svc.body_idle_timeout"),
            "{err}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_does_not_count_as_a_stall() {
        let (tx, body) = download(1);
        let mut body = std::pin::pin!(body);
        send(&tx, b"a").await;
        assert!(body.frame().await.unwrap().is_ok());
        // The reader is away for longer than the limit; the body was never waited on.
        tokio::time::sleep(Duration::from_secs(10)).await;
        send(&tx, b"b").await;
        assert!(body.frame().await.unwrap().is_ok());
        drop(tx);
        assert!(body.frame().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn upload_reports_its_end_and_fails_when_the_client_stalls() {
        let (tx, inner) = channel();
        let (body, ended) = NoTrailers::limited(inner, Duration::from_secs(2), "svc");
        let mut body = std::pin::pin!(body);
        let ended = tokio::spawn(ended.wait());
        send(&tx, b"a").await;
        assert!(body.frame().await.unwrap().is_ok());
        tokio::task::yield_now().await;
        assert!(!ended.is_finished());
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(
            BodyStalled::find(&*err).unwrap().direction,
            Direction::Upload
        );
        ended.await.unwrap();

        // A body that is empty from the start has ended already, and has no clock.
        let (empty, ended) = NoTrailers::limited(empty(), Duration::from_secs(2), "svc");
        assert!(empty.is_end_stream());
        assert!(empty.inner.clock.is_none());
        tokio::time::timeout(Duration::from_millis(1), ended.wait())
            .await
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn the_clock_makes_its_timer_only_when_the_body_first_waits() {
        let (tx, body) = download(3);
        let mut body = std::pin::pin!(body);
        send(&tx, b"a").await;
        assert!(body.frame().await.unwrap().is_ok());
        let timer = |body: &StallLimited<TestBody>| body.clock.as_ref().unwrap().sleep.is_some();
        assert!(!timer(&body), "a frame that was ready needs no timer");

        // Pending once: the timer is made, and a later frame disarms it without dropping it.
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        assert!(body.as_mut().poll_frame(&mut cx).is_pending());
        assert!(timer(&body));
        send(&tx, b"b").await;
        assert!(body.frame().await.unwrap().is_ok());
        // Re-armed from the next wait: the limit counts from there, not from the first.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let started = tokio::time::Instant::now();
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(BodyStalled::find(&*err).is_some());
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }
}
