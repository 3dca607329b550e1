//! Wait for the first of two futures, polling each only after its own
//! waker fired.
//!
//! The relay runs a session's two directions as two futures in one task.
//! `select!` polls every branch whenever the task wakes, so each message
//! coming down also polled the client side (its socket's readiness, the
//! shutdown watch, its timers) for nothing, and the other way round: about
//! 850 instructions per round trip, a tenth of the proxy's (callgrind,
//! relay alone). Here each future is polled with a waker of its own, which
//! marks it before waking the task.
//!
//! [`Gated`] does the same for one branch of a `select!`: the relay's
//! client side waits for its socket and for the shutdown phase to change,
//! and polling a pending `watch` wait locks the channel's waiter list,
//! which every session on every loop thread shares. Gated, the wait is
//! polled only when the channel woke it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// Resolves to the output of whichever future finishes first; the other
/// is dropped with the `Race`.
pub struct Race<A, B> {
    first: A,
    second: B,
    task: Arc<TaskSlot>,
    first_waker: Waker,
    second_waker: Waker,
}

/// The task's waker and, for each future, whether it has been woken since
/// it was last polled.
struct TaskSlot {
    waker: AtomicWaker,
    woken: [AtomicBool; 2],
}

struct BranchWake {
    task: Arc<TaskSlot>,
    index: usize,
}

impl Wake for BranchWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.task.woken[self.index].store(true, Ordering::Release);
        self.task.waker.wake();
    }
}

impl<A, B, T> Race<A, B>
where
    A: Future<Output = T> + Unpin,
    B: Future<Output = T> + Unpin,
{
    pub fn new(first: A, second: B) -> Self {
        // Both start woken: each must be polled once to register interest.
        let task = Arc::new(TaskSlot {
            waker: AtomicWaker::new(),
            woken: [AtomicBool::new(true), AtomicBool::new(true)],
        });
        let branch = |index| {
            Waker::from(Arc::new(BranchWake {
                task: task.clone(),
                index,
            }))
        };
        Race {
            first_waker: branch(0),
            second_waker: branch(1),
            first,
            second,
            task,
        }
    }
}

impl<A, B, T> Future for Race<A, B>
where
    A: Future<Output = T> + Unpin,
    B: Future<Output = T> + Unpin,
{
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let this = self.get_mut();
        // Registered before the marks are read, so a wake that lands while
        // a future is being polled polls the task again.
        this.task.waker.register(cx.waker());
        if this.task.woken[0].swap(false, Ordering::Acquire) {
            let mut branch_cx = Context::from_waker(&this.first_waker);
            if let Poll::Ready(out) = Pin::new(&mut this.first).poll(&mut branch_cx) {
                return Poll::Ready(out);
            }
        }
        if this.task.woken[1].swap(false, Ordering::Acquire) {
            let mut branch_cx = Context::from_waker(&this.second_waker);
            if let Poll::Ready(out) = Pin::new(&mut this.second).poll(&mut branch_cx) {
                return Poll::Ready(out);
            }
        }
        Poll::Pending
    }
}

/// Polls the inner future only when its own waker fired (and once at
/// first, to register); every other poll is `Pending` at the cost of two
/// atomic operations.
pub struct Gated<F> {
    inner: F,
    gate: Arc<Gate>,
    waker: Waker,
}

struct Gate {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future + Unpin> Gated<F> {
    pub fn new(inner: F) -> Self {
        let gate = Arc::new(Gate {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Gated {
            inner,
            waker: Waker::from(gate.clone()),
            gate,
        }
    }

    /// Wait for `inner` instead; it is polled at the next poll.
    pub fn replace(&mut self, inner: F) {
        self.inner = inner;
        self.gate.woken.store(true, Ordering::Release);
    }
}

impl<F: Future + Unpin> Future for Gated<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        // Registered before the mark is read (see `Race::poll`).
        this.gate.task.register(cx.waker());
        if !this.gate.woken.swap(false, Ordering::Acquire) {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll(&mut Context::from_waker(&this.waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// What a test sees of a [`Gate`] and how it opens and wakes it.
    #[derive(Default)]
    struct GateState {
        polls: AtomicUsize,
        open: AtomicBool,
        waker: std::sync::Mutex<Option<Waker>>,
    }

    impl GateState {
        fn polls(&self) -> usize {
            self.polls.load(Ordering::SeqCst)
        }

        fn open(&self) {
            self.open.store(true, Ordering::SeqCst);
        }

        fn wake(&self) {
            let waker = self.waker.lock().unwrap().take();
            waker.expect("registered a waker").wake();
        }
    }

    /// Counts its polls; ready with `value` once opened.
    struct Gate {
        state: Arc<GateState>,
        value: u32,
    }

    impl Future for Gate {
        type Output = u32;
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u32> {
            self.state.polls.fetch_add(1, Ordering::SeqCst);
            if self.state.open.load(Ordering::SeqCst) {
                return Poll::Ready(self.value);
            }
            *self.state.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    fn gate(value: u32) -> (Gate, Arc<GateState>) {
        let state = Arc::new(GateState::default());
        (
            Gate {
                state: state.clone(),
                value,
            },
            state,
        )
    }

    #[tokio::test]
    async fn polls_only_the_future_that_was_woken_and_returns_the_first_ready() {
        let (a, a_state) = gate(1);
        let (b, b_state) = gate(2);
        let mut race = Race::new(a, b);
        let noop = Waker::from(Arc::new(Noop));
        let mut cx = Context::from_waker(&noop);
        let mut poll = || Pin::new(&mut race).poll(&mut cx);
        assert!(poll().is_pending());
        assert_eq!((a_state.polls(), b_state.polls()), (1, 1));
        // Nothing woken: nothing polled.
        assert!(poll().is_pending());
        assert_eq!((a_state.polls(), b_state.polls()), (1, 1));
        // Waking the second polls only the second.
        b_state.wake();
        assert!(poll().is_pending());
        assert_eq!((a_state.polls(), b_state.polls()), (1, 2));
        // Both open, only the first woken: the first's output wins.
        a_state.open();
        b_state.open();
        a_state.wake();
        assert_eq!(poll(), Poll::Ready(1));
        assert_eq!(b_state.polls(), 2);
    }

    #[tokio::test]
    async fn a_branch_wake_wakes_the_task_even_from_another_thread() {
        let (a, a_state) = gate(7);
        let (b, _b_state) = gate(8);
        let race = Race::new(a, b);
        let opener = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            std::thread::spawn(move || {
                a_state.open();
                a_state.wake();
            })
            .join()
            .unwrap();
        });
        let out = tokio::time::timeout(std::time::Duration::from_secs(5), race)
            .await
            .expect("the task was woken");
        assert_eq!(out, 7);
        opener.await.unwrap();
    }

    #[tokio::test]
    async fn a_gated_future_is_polled_only_after_its_own_wake() {
        let (a, a_state) = gate(3);
        let mut gated = Gated::new(a);
        let noop = Waker::from(Arc::new(Noop));
        let mut cx = Context::from_waker(&noop);
        assert!(Pin::new(&mut gated).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut gated).poll(&mut cx).is_pending());
        assert_eq!(a_state.polls(), 1, "polled once to register");
        a_state.open();
        assert!(
            Pin::new(&mut gated).poll(&mut cx).is_pending(),
            "not woken yet"
        );
        a_state.wake();
        assert_eq!(Pin::new(&mut gated).poll(&mut cx), Poll::Ready(3));
        assert_eq!(a_state.polls(), 2);
        // A replacement is polled at the next poll without a wake.
        let (b, b_state) = gate(4);
        let mut gated = Gated::new(b);
        assert!(Pin::new(&mut gated).poll(&mut cx).is_pending());
        let (c, c_state) = gate(5);
        c_state.open();
        gated.replace(c);
        assert_eq!(Pin::new(&mut gated).poll(&mut cx), Poll::Ready(5));
        assert_eq!((b_state.polls(), c_state.polls()), (1, 1));
    }

    #[tokio::test]
    async fn a_gated_wake_from_another_thread_wakes_the_task() {
        let (a, a_state) = gate(9);
        let gated = Gated::new(a);
        let opener = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            a_state.open();
            a_state.wake();
        });
        let out = tokio::time::timeout(std::time::Duration::from_secs(5), gated)
            .await
            .expect("the task was woken");
        assert_eq!(out, 9);
        opener.join().unwrap();
    }

    struct Noop;
    impl Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }
}
