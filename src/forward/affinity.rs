//! A downstream HTTP/1 connection's own upstream connection, driven in the downstream
//! connection's task.
//!
//! An HTTP/1 client sends one request at a time on a connection, so the upstream connection
//! its requests go out on can be its own: [`drive`] wraps the downstream connection's future,
//! and an upstream connection opened for one of its requests is bound to it instead of being
//! spawned as a task of its own. The downstream task then polls the upstream connection around
//! each poll of its own (before, to take a response that arrived; after, to write a request
//! just handed over), so an exchange costs no task wake-ups between the two, and a service with
//! many client connections keeps one upstream connection per client connection instead of
//! churning through the pool's `max_idle` (a client connection that waited for a pooled
//! connection opened a new one and closed it after the exchange).
//!
//! Guarantees: at most one bound connection per downstream connection (binding another, for
//! another service, hands the first back to its pool, as [`release_bound`] does for a
//! client connection that went quiet); a bound connection is polled on every
//! poll of the downstream connection's future, so it makes progress whenever either side
//! does, and one the upstream closes is dropped when it ends; when the downstream future ends,
//! its bound connection is handed back to its pool (spawned as its own task and listed, within
//! the pool's `max_idle`, as a connection the pool opened would be); a request sent outside a
//! [`drive`]n future (HTTP/2 streams, which hyper spawns as tasks; work outside a listener)
//! finds no slot and is served by the pool as before.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

tokio::task_local! {
    static SLOT: Arc<Slot>;
}

/// An upstream connection bound to a downstream one (its type erased: the pool's request body
/// type is its own).
pub(super) trait Bound: Send {
    /// Which pool it came from (the pool's address), so a request for another service does not
    /// take it.
    fn pool(&self) -> usize;
    /// Drives the connection; ready when it is over.
    fn poll_conn(&mut self, cx: &mut Context<'_>) -> Poll<()>;
    /// The pool's own view of it (to send on it).
    fn as_any(&mut self) -> &mut dyn Any;
    /// Back to its pool: spawned as its own task, and listed if the pool has room.
    fn release(self: Box<Self>);
}

/// The bound connection of one downstream connection, if any, and what wakes the parts of
/// its [`Driven`] future.
pub(super) struct Slot {
    bound: Mutex<Option<Box<dyn Bound>>>,
    wakes: Wakes,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, Option<Box<dyn Bound>>> {
        self.bound.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the bound connection of the downstream connection being polled, if there is
    /// one and it came from `pool`; `None` outside a [`drive`]n future.
    pub(super) fn with_bound<R>(pool: usize, f: impl FnOnce(&mut Binding<'_>) -> R) -> Option<R> {
        SLOT.try_with(|slot| {
            let mut bound = slot.lock();
            if bound.as_ref().is_some_and(|b| b.pool() != pool) {
                // Another service's: the next request is likelier for this one.
                if let Some(other) = bound.take() {
                    other.release();
                }
            }
            f(&mut Binding {
                bound: &mut bound,
                conn_woken: &slot.wakes.conn,
            })
        })
        .ok()
    }

    fn poll_bound(&self, cx: &mut Context<'_>) {
        let mut bound = self.lock();
        if let Some(b) = bound.as_mut() {
            if b.poll_conn(cx).is_ready() {
                *bound = None;
            }
        }
    }
}

/// A downstream connection's slot, as [`Slot::with_bound`] lends it.
pub(super) struct Binding<'a> {
    bound: &'a mut Option<Box<dyn Bound>>,
    conn_woken: &'a AtomicBool,
}

impl Binding<'_> {
    /// The bound connection, if any.
    pub(super) fn get_mut(&mut self) -> Option<&mut (dyn Bound + 'static)> {
        self.bound.as_deref_mut()
    }
    /// Drops the bound connection (closing it).
    pub(super) fn close(&mut self) {
        *self.bound = None;
    }
    /// Binds `new`, to be polled from the next round (marked woken: it has never been polled,
    /// so nothing else would wake it); one it replaces goes to its pool.
    pub(super) fn bind(&mut self, new: Box<dyn Bound>) {
        self.conn_woken.store(true, Ordering::SeqCst);
        if let Some(old) = self.bound.replace(new) {
            old.release();
        }
    }
}

/// What wakes a [`Driven`] future's two parts: each has its own waker, which marks that part
/// woken and, unless the future is being polled (when the mark is enough), wakes the task.
struct Wakes {
    task: AtomicWaker,
    polling: AtomicBool,
    conn: AtomicBool,
    inner: AtomicBool,
}

/// The waker of one part of a [`Driven`] future.
struct PartWaker {
    slot: Arc<Slot>,
    conn: bool,
}

impl Wake for PartWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        let wakes = &self.slot.wakes;
        let flag = if self.conn { &wakes.conn } else { &wakes.inner };
        flag.store(true, Ordering::SeqCst);
        if !wakes.polling.load(Ordering::SeqCst) {
            wakes.task.wake();
        }
    }
}

/// How many times one poll of a [`Driven`] future polls its parts before it yields to the
/// runtime (a part that woke itself to yield, or tokio's cooperative budget, would otherwise
/// spin here).
const ROUNDS: usize = 4;

/// Hands the upstream connection bound to the downstream connection being polled, if any,
/// back to its pool.
pub fn release_bound() {
    let _ = SLOT.try_with(|slot| slot.lock().take().map(|bound| bound.release()));
}

pin_project_lite::pin_project! {
    /// A downstream connection's future, driving the upstream connection bound to it.
    pub struct Driven<F: Future> {
        slot: Arc<Slot>,
        conn_waker: Waker,
        inner_waker: Waker,
        #[pin]
        inner: tokio::task::futures::TaskLocalFuture<Arc<Slot>, F>,
    }

    impl<F: Future> PinnedDrop for Driven<F> {
        fn drop(this: Pin<&mut Self>) {
            // Ended or cancelled: the upstream connection outlives the downstream one.
            if let Some(bound) = this.slot.lock().take() {
                bound.release();
            }
        }
    }
}

/// `fut` (a downstream HTTP/1 connection's), with upstream connections bound to it.
pub fn drive<F: Future>(fut: F) -> Driven<F> {
    let slot = Arc::new(Slot {
        bound: Mutex::new(None),
        wakes: Wakes {
            task: AtomicWaker::new(),
            polling: AtomicBool::new(false),
            conn: AtomicBool::new(false),
            inner: AtomicBool::new(true),
        },
    });
    let part = |conn| {
        Waker::from(Arc::new(PartWaker {
            slot: slot.clone(),
            conn,
        }))
    };
    Driven {
        inner: SLOT.scope(slot.clone(), fut),
        conn_waker: part(true),
        inner_waker: part(false),
        slot,
    }
}

impl<F: Future> Future for Driven<F> {
    type Output = F::Output;

    /// Polls whichever part was woken, until neither is: a response that arrived upstream is
    /// taken before the downstream side looks for it, and a request handed over is written
    /// before the task waits again, all in one poll of the task.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let mut this = self.project();
        let wakes = &this.slot.wakes;
        wakes.task.register(cx.waker());
        wakes.polling.store(true, Ordering::SeqCst);
        for _ in 0..ROUNDS {
            let conn = wakes.conn.swap(false, Ordering::SeqCst);
            let inner = wakes.inner.swap(false, Ordering::SeqCst);
            if !conn && !inner {
                break;
            }
            if conn {
                this.slot
                    .poll_bound(&mut Context::from_waker(this.conn_waker));
            }
            if inner {
                if let Poll::Ready(out) = this
                    .inner
                    .as_mut()
                    .poll(&mut Context::from_waker(this.inner_waker))
                {
                    wakes.polling.store(false, Ordering::SeqCst);
                    return Poll::Ready(out);
                }
            }
        }
        wakes.polling.store(false, Ordering::SeqCst);
        // Woken in the last round, or between its check and now: polled again soon.
        if wakes.conn.load(Ordering::SeqCst) || wakes.inner.load(Ordering::SeqCst) {
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// Counts its wakes.
    #[derive(Default)]
    struct Counting(AtomicUsize);

    impl Counting {
        /// A task waker, and what counts its wakes.
        fn waker() -> (Arc<Self>, Waker) {
            let task = Arc::new(Self::default());
            (task.clone(), Waker::from(task))
        }
    }

    impl Wake for Counting {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_future_that_wakes_itself_is_polled_a_few_times_then_yields_to_the_runtime() {
        let polls = AtomicUsize::new(0);
        let yielding = std::future::poll_fn(|cx| {
            polls.fetch_add(1, Ordering::SeqCst);
            cx.waker().wake_by_ref();
            Poll::<()>::Pending
        });
        let mut driven = std::pin::pin!(drive(yielding));
        let (task, waker) = Counting::waker();
        let mut cx = Context::from_waker(&waker);
        assert!(driven.as_mut().poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), ROUNDS);
        // Its wakes while being polled reached the task once, after the rounds.
        assert_eq!(task.0.load(Ordering::SeqCst), 1);
        assert!(driven.as_mut().poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 2 * ROUNDS);
    }

    #[test]
    fn a_wake_outside_a_poll_reaches_the_task_and_polls_only_the_woken_part() {
        let polls = AtomicUsize::new(0);
        let parked: Mutex<Option<Waker>> = Mutex::new(None);
        let waiting = std::future::poll_fn(|cx| {
            polls.fetch_add(1, Ordering::SeqCst);
            *parked.lock().unwrap() = Some(cx.waker().clone());
            Poll::<()>::Pending
        });
        let mut driven = std::pin::pin!(drive(waiting));
        let (task, waker) = Counting::waker();
        let mut cx = Context::from_waker(&waker);
        assert!(driven.as_mut().poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 1);
        // A poll nobody asked for (a wake of the upstream side) leaves it alone.
        assert!(driven.as_mut().poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 1);
        assert_eq!(task.0.load(Ordering::SeqCst), 0);
        let inner = parked.lock().unwrap().take().unwrap();
        inner.wake();
        assert_eq!(task.0.load(Ordering::SeqCst), 1);
        assert!(driven.as_mut().poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }
}
