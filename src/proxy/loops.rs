//! Session event loops: one single-threaded tokio runtime per core, each
//! running the sessions handed to it from accept to close.
//!
//! A session's two sockets are always busy together, so nothing is gained
//! by moving it between threads, and a work-stealing runtime pays for the
//! possibility: a worker that finds more than one ready task wakes a
//! parked peer (a futex call and two context switches) to steal one. On a
//! host where Postgres and the clients share the proxy's cores those
//! wake-ups cost more than they save. Here, as in PgBouncer's event loop,
//! a loop only sleeps in `epoll_wait` and only wakes for its own sockets.
//! New sessions go to the loop with the fewest live sessions.
//!
//! The loops are shared by every proxy in the process and live as long as
//! it does. Accepting, the admin port and reloads stay on the caller's
//! runtime; the audit pipeline has its own thread (`audit::pipeline`).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::runtime::Handle;

use super::timer;
use crate::admin::loop_metrics;

/// `PGWARD_WORKER_THREADS=N` sets the number of loops; the default is one
/// per core.
pub const THREADS_ENV: &str = "PGWARD_WORKER_THREADS";

struct Loop {
    handle: Handle,
    sessions: Arc<AtomicUsize>,
}

pub struct SessionLoops {
    loops: Vec<Loop>,
}

impl SessionLoops {
    /// The process's loops, started on first use. `None` if not even one
    /// thread could be started (the caller then runs sessions itself).
    pub fn get() -> Option<&'static SessionLoops> {
        static LOOPS: OnceLock<Option<SessionLoops>> = OnceLock::new();
        LOOPS
            .get_or_init(|| {
                let n = std::env::var(THREADS_ENV)
                    .ok()
                    .and_then(|v| v.parse::<usize>().ok())
                    .filter(|n| *n > 0)
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
                SessionLoops::start(n)
            })
            .as_ref()
    }

    fn start(n: usize) -> Option<SessionLoops> {
        // The loops' timers run on the shared timer thread (`proxy::timer`);
        // only if it cannot start do the loops need tokio's time driver.
        let clock = if timer::shared_thread_running() {
            Clock::SharedTimerThread
        } else {
            Clock::TimeDriver
        };
        let mut loops = Vec::with_capacity(n);
        for i in 0..n {
            match start_loop(i, clock) {
                Ok(l) => loops.push(l),
                Err(e) => tracing::error!(error = %e, "cannot start session loop {i}"),
            }
        }
        (!loops.is_empty()).then_some(SessionLoops { loops })
    }

    /// Run `session` to completion on the least busy loop.
    pub fn spawn<F>(&self, session: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let chosen = self
            .loops
            .iter()
            .min_by_key(|l| l.sessions.load(Ordering::Relaxed))
            .expect("at least one loop");
        let live = SessionCount::enter(chosen.sessions.clone());
        chosen.handle.spawn(async move {
            let _live = live;
            session.await;
        });
    }

    /// Live sessions per loop, for tests and diagnostics.
    pub fn sessions_per_loop(&self) -> Vec<usize> {
        self.loops
            .iter()
            .map(|l| l.sessions.load(Ordering::Relaxed))
            .collect()
    }
}

fn start_loop(i: usize, clock: Clock) -> std::io::Result<Loop> {
    let handle = runtime_thread(format!("pgward-loop-{i}"), clock)?;
    // The loop's sessions count per-message metrics on this thread's shard
    // (see `admin::loop_metrics`); add it to the shared metrics regularly.
    handle.spawn(async {
        loop_metrics::install();
        loop {
            timer::sleep(loop_metrics::FLUSH_INTERVAL).await;
            loop_metrics::flush();
        }
    });
    Ok(Loop {
        handle,
        sessions: Arc::new(AtomicUsize::new(0)),
    })
}

/// Where a runtime's timers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// tokio's time driver, read at every park (`tokio::time` works).
    TimeDriver,
    /// No time driver: the runtime's code uses `proxy::timer` only.
    SharedTimerThread,
}

/// A single-threaded runtime on a thread of its own, named `name`, running
/// for the rest of the process (the session loops, the audit pipeline).
pub fn runtime_thread(name: String, clock: Clock) -> std::io::Result<Handle> {
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_io();
    if clock == Clock::TimeDriver {
        builder.enable_time();
    }
    let runtime = builder.build()?;
    let handle = runtime.handle().clone();
    std::thread::Builder::new()
        .name(name)
        .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
    Ok(handle)
}

/// Counts a session on its loop until dropped (also when the session's
/// task is cancelled).
struct SessionCount(Arc<AtomicUsize>);

impl SessionCount {
    fn enter(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        SessionCount(count)
    }
}

impl Drop for SessionCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_go_to_the_least_busy_loop_and_are_counted_until_they_end() {
        let loops = SessionLoops::start(2).expect("two loops");
        let (tx, rx) = std::sync::mpsc::channel();
        let mut gates = Vec::new();
        for _ in 0..4 {
            let (open, gate) = tokio::sync::oneshot::channel::<()>();
            gates.push(open);
            let tx = tx.clone();
            loops.spawn(async move {
                let _ = gate.await;
                let _ = tx.send(std::thread::current().name().map(str::to_string));
            });
        }
        assert_eq!(loops.sessions_per_loop(), vec![2, 2]);
        drop(gates);
        let mut names: Vec<_> = (0..4).map(|_| rx.recv().unwrap().unwrap()).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "pgward-loop-0",
                "pgward-loop-0",
                "pgward-loop-1",
                "pgward-loop-1"
            ]
        );
        for _ in 0..100 {
            if loops.sessions_per_loop() == vec![0, 0] {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("sessions still counted: {:?}", loops.sessions_per_loop());
    }
}
