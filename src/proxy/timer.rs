//! Timers for the session loops, which run without tokio's time driver.
//!
//! A runtime with a time driver locks its timer wheel twice and reads the
//! clock at every park, and a loop parks twice per round trip: about 950
//! of the 6370 instructions pgward spent per prepared-statement
//! transaction (callgrind, bench/README.md), paid for timeouts that almost
//! never fire. The loops' few timers (startup and connect deadlines, the
//! idle timeout, drain ticks, the farewell wait, the metrics flush) live
//! instead on one timer thread shared by the process. Arming a timer takes
//! a lock and wakes that thread only when the new deadline is its earliest;
//! dropping one is an atomic store; one that fires wakes its task like any
//! other waker.
//!
//! If the timer thread cannot be started, every [`Sleep`] is tokio's own and
//! the loops keep their time driver (see `proxy::loops`).

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// A future that completes at its deadline.
pub struct Sleep {
    deadline: Instant,
    inner: Inner,
}

enum Inner {
    Shared(Arc<Entry>),
    Tokio(Pin<Box<tokio::time::Sleep>>),
}

/// The error of [`timeout`] and [`within`]: the deadline came first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

impl std::fmt::Display for Elapsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("deadline has elapsed")
    }
}

impl std::error::Error for Elapsed {}

/// A timer completing at `deadline`.
pub fn sleep_until(deadline: Instant) -> Sleep {
    let inner = match shared() {
        Some(timers) => Inner::Shared(timers.arm(deadline)),
        None => Inner::Tokio(Box::pin(tokio::time::sleep_until(deadline.into()))),
    };
    Sleep { deadline, inner }
}

/// A timer completing `duration` from now.
pub fn sleep(duration: Duration) -> Sleep {
    sleep_until(Instant::now() + duration)
}

/// Run `fut` for at most `duration`.
pub async fn timeout<F: Future>(duration: Duration, fut: F) -> Result<F::Output, Elapsed> {
    within(&mut sleep(duration), fut).await
}

/// Run `fut` until `deadline` completes; one deadline can bound several
/// steps in turn. `fut` is polled first, so a result ready at the deadline
/// still counts.
pub async fn within<F: Future>(deadline: &mut Sleep, fut: F) -> Result<F::Output, Elapsed> {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Ok(out));
        }
        Pin::new(&mut *deadline).poll(cx).map(|()| Err(Elapsed))
    })
    .await
}

/// Whether sleeps run on the shared timer thread (starting it on first
/// use). When it cannot be started, the session loops keep tokio's timers.
pub fn shared_thread_running() -> bool {
    shared().is_some()
}

impl Sleep {
    pub fn deadline(&self) -> Instant {
        self.deadline
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.inner {
            Inner::Tokio(sleep) => sleep.as_mut().poll(cx),
            Inner::Shared(entry) => {
                if entry.state.load(Ordering::Acquire) == FIRED {
                    return Poll::Ready(());
                }
                {
                    let mut waker = lock(&entry.waker);
                    match &*waker {
                        Some(w) if w.will_wake(cx.waker()) => {}
                        _ => *waker = Some(cx.waker().clone()),
                    }
                }
                // The timer thread marks an entry fired before it takes the
                // waker, so a firing that missed the waker stored above is
                // seen here.
                if entry.state.load(Ordering::Acquire) == FIRED {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Inner::Shared(entry) = &self.inner {
            // The entry stays queued until its deadline or the next purge;
            // the task it would wake is let go now.
            let _ =
                entry
                    .state
                    .compare_exchange(ARMED, DROPPED, Ordering::AcqRel, Ordering::Acquire);
            lock(&entry.waker).take();
        }
    }
}

const ARMED: u8 = 0;
const FIRED: u8 = 1;
const DROPPED: u8 = 2;

struct Entry {
    state: AtomicU8,
    waker: Mutex<Option<Waker>>,
}

/// A queued deadline; the heap's greatest element is the earliest.
struct Queued {
    at: Instant,
    entry: Arc<Entry>,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}

impl Eq for Queued {}

impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl Ord for Queued {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        other.at.cmp(&self.at)
    }
}

/// Fewest queued entries at which dropped ones are purged.
const PURGE_MIN: usize = 1024;

struct Queue {
    heap: BinaryHeap<Queued>,
    /// Purge dropped entries when the heap reaches this size: twice the
    /// entries left by the last purge, so each purge is paid for by as many
    /// arms and the heap holds at most about twice the live timers.
    purge_at: usize,
}

struct Timers {
    queue: Mutex<Queue>,
    earliest_changed: Condvar,
}

fn shared() -> Option<&'static Timers> {
    static TIMERS: OnceLock<Option<&'static Timers>> = OnceLock::new();
    *TIMERS.get_or_init(|| {
        let timers: &'static Timers = Box::leak(Box::new(Timers {
            queue: Mutex::new(Queue {
                heap: BinaryHeap::new(),
                purge_at: PURGE_MIN,
            }),
            earliest_changed: Condvar::new(),
        }));
        match std::thread::Builder::new()
            .name("pgward-timer".into())
            .spawn(move || timers.run())
        {
            Ok(_) => Some(timers),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the timer thread; sessions use tokio's timers");
                None
            }
        }
    })
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Timers {
    fn arm(&self, at: Instant) -> Arc<Entry> {
        let entry = Arc::new(Entry {
            state: AtomicU8::new(ARMED),
            waker: Mutex::new(None),
        });
        if at <= Instant::now() {
            entry.state.store(FIRED, Ordering::Release);
            return entry;
        }
        let mut q = lock(&self.queue);
        if q.heap.len() >= q.purge_at {
            q.heap
                .retain(|e| e.entry.state.load(Ordering::Acquire) == ARMED);
            q.purge_at = (q.heap.len() * 2).max(PURGE_MIN);
        }
        let earliest = q.heap.peek().is_none_or(|top| at < top.at);
        q.heap.push(Queued {
            at,
            entry: entry.clone(),
        });
        drop(q);
        if earliest {
            self.earliest_changed.notify_one();
        }
        entry
    }

    fn run(&self) {
        let mut due = Vec::new();
        let mut q = lock(&self.queue);
        loop {
            let now = Instant::now();
            while q.heap.peek().is_some_and(|top| top.at <= now) {
                let fired = q.heap.pop().expect("peeked").entry;
                if fired
                    .state
                    .compare_exchange(ARMED, FIRED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    due.push(fired);
                }
            }
            if !due.is_empty() {
                // Wake outside the queue's lock: a woken task may arm again.
                drop(q);
                for entry in due.drain(..) {
                    if let Some(w) = lock(&entry.waker).take() {
                        w.wake();
                    }
                }
                q = lock(&self.queue);
                continue;
            }
            q = match q.heap.peek().map(|top| top.at) {
                Some(at) => {
                    self.earliest_changed
                        .wait_timeout(q, at.saturating_duration_since(now))
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
                None => self
                    .earliest_changed
                    .wait(q)
                    .unwrap_or_else(|p| p.into_inner()),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued() -> usize {
        lock(&shared().expect("timer thread").queue).heap.len()
    }

    #[test]
    fn sleeps_complete_in_deadline_order_and_not_before() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        rt.block_on(async {
            let start = Instant::now();
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            for ms in [120u64, 40, 80] {
                let tx = tx.clone();
                tokio::spawn(async move {
                    sleep(Duration::from_millis(ms)).await;
                    let _ = tx.send((ms, start.elapsed()));
                });
            }
            let mut order = Vec::new();
            for _ in 0..3 {
                let (ms, took) = rx.recv().await.unwrap();
                assert!(
                    took >= Duration::from_millis(ms),
                    "{ms} ms fired after {took:?}"
                );
                order.push(ms);
            }
            assert_eq!(order, [40, 80, 120]);
        });
    }

    #[test]
    fn timeouts_answer_whichever_comes_first_and_a_deadline_bounds_several_steps() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        rt.block_on(async {
            assert_eq!(timeout(Duration::from_secs(5), async { 7 }).await, Ok(7));
            let never = std::future::pending::<()>();
            assert_eq!(
                timeout(Duration::from_millis(30), never).await,
                Err(Elapsed)
            );
            // A deadline already past still lets a ready result through.
            assert_eq!(timeout(Duration::ZERO, async { 1 }).await, Ok(1));

            let mut deadline = sleep(Duration::from_millis(60));
            assert_eq!(within(&mut deadline, async { 1 }).await, Ok(1));
            let slow = sleep(Duration::from_secs(5));
            assert_eq!(within(&mut deadline, slow).await, Err(Elapsed));
            // Once elapsed it stays elapsed.
            assert_eq!(
                within(&mut deadline, std::future::pending::<()>()).await,
                Err(Elapsed)
            );
        });
    }

    #[test]
    fn dropped_sleeps_never_wake_and_are_purged() {
        let far = Instant::now() + Duration::from_secs(3600);
        let many: Vec<Sleep> = (0..3 * PURGE_MIN).map(|_| sleep_until(far)).collect();
        assert!(queued() >= 3 * PURGE_MIN);
        drop(many);
        // The next arms purge what was dropped: the heap stays bounded by
        // about twice the live timers (other tests' few included).
        let live: Vec<Sleep> = (0..2 * PURGE_MIN).map(|_| sleep_until(far)).collect();
        assert!(
            queued() <= 2 * (live.len() + 64) + PURGE_MIN,
            "{} queued for {} live",
            queued(),
            live.len()
        );
    }

    #[test]
    fn a_dropped_sleep_lets_its_task_go_at_once() {
        let mut s = sleep(Duration::from_secs(3600));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(Pin::new(&mut s).poll(&mut cx).is_pending());
        let Inner::Shared(entry) = &s.inner else {
            panic!("the timer thread runs")
        };
        let entry = entry.clone();
        assert!(lock(&entry.waker).is_some());
        drop(s);
        assert!(lock(&entry.waker).is_none());
        assert_eq!(entry.state.load(Ordering::Acquire), DROPPED);
    }
}
