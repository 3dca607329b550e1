//! Per-thread shards of the metrics that every message updates.
//!
//! Bytes relayed, query durations, policy evaluation times and the
//! statements counter change at every round trip of every session. Counted
//! straight into the shared Prometheus metrics, each update is an atomic
//! read-modify-write on a cache line that both session loops write, so the
//! line moves between cores at every transaction (about a dozen such
//! updates per round trip). A session loop instead counts into a shard of
//! its own thread and adds it to the shared metrics every
//! [`FLUSH_INTERVAL`]: a scrape sees the loops' counts at most that late.
//!
//! Threads without a shard (the caller's runtime when no loop could be
//! started, tests) update the shared metrics directly.

use std::cell::RefCell;
use std::time::Duration;

use prometheus::local::{LocalHistogram, LocalIntCounter};

use super::metrics::{metrics, Metrics};

/// How often a loop adds its shard to the shared metrics.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

struct Shard {
    client_bytes_received: LocalIntCounter,
    client_bytes_sent: LocalIntCounter,
    query_duration_seconds: LocalHistogram,
    policy_evaluation_seconds: LocalHistogram,
    /// Indexed like [`Metrics::statement_index`].
    statements: Vec<LocalIntCounter>,
}

impl Shard {
    fn new(m: &Metrics) -> Shard {
        Shard {
            client_bytes_received: m.client_bytes_received.local(),
            client_bytes_sent: m.client_bytes_sent.local(),
            query_duration_seconds: m.query_duration_seconds.local(),
            policy_evaluation_seconds: m.policy_evaluation_seconds.local(),
            statements: m.statement_counters().iter().map(|c| c.local()).collect(),
        }
    }

    fn flush(&self) {
        self.client_bytes_received.flush();
        self.client_bytes_sent.flush();
        self.query_duration_seconds.flush();
        self.policy_evaluation_seconds.flush();
        for c in &self.statements {
            c.flush();
        }
    }
}

thread_local! {
    static SHARD: RefCell<Option<Shard>> = const { RefCell::new(None) };
}

/// Give the current thread a shard. Then call [`flush`] on it every
/// [`FLUSH_INTERVAL`] (see `proxy::loops`).
pub fn install() {
    SHARD.with(|s| *s.borrow_mut() = Some(Shard::new(metrics())));
}

/// Add the current thread's shard to the shared metrics.
pub fn flush() {
    let _ = SHARD.try_with(|s| {
        if let Some(shard) = &*s.borrow() {
            shard.flush();
        }
    });
}

/// Run `local` on this thread's shard, or `shared` on the shared metrics
/// when the thread has none (or is shutting down its thread-locals).
fn update(local: impl FnOnce(&Shard), shared: impl FnOnce(&Metrics)) {
    let mut shared = Some(shared);
    let _ = SHARD.try_with(|s| {
        if let Some(shard) = &*s.borrow() {
            local(shard);
            shared = None;
        }
    });
    if let Some(shared) = shared {
        shared(metrics());
    }
}

pub fn client_bytes_received(n: u64) {
    update(
        |s| s.client_bytes_received.inc_by(n),
        |m| m.client_bytes_received.inc_by(n),
    );
}

pub fn client_bytes_sent(n: u64) {
    update(
        |s| s.client_bytes_sent.inc_by(n),
        |m| m.client_bytes_sent.inc_by(n),
    );
}

pub fn query_duration(seconds: f64) {
    update(
        |s| s.query_duration_seconds.observe(seconds),
        |m| m.query_duration_seconds.observe(seconds),
    );
}

pub fn policy_evaluation(seconds: f64) {
    update(
        |s| s.policy_evaluation_seconds.observe(seconds),
        |m| m.policy_evaluation_seconds.observe(seconds),
    );
}

/// Count one judged statement (see [`Metrics::statement_index`]).
pub fn statement(verdict: usize, class: &str) {
    let i = Metrics::statement_index(verdict, class);
    update(
        |s| s.statements[i].inc(),
        |m| m.statement_counters()[i].inc(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared_received() -> u64 {
        metrics().client_bytes_received.get()
    }

    /// One test, run one thread after the other: both halves move the
    /// shared byte counter, and in parallel each would see the other's
    /// billion. Other tests relay far fewer bytes meanwhile.
    #[test]
    fn shards_reach_the_shared_metrics_when_flushed_and_threads_without_count_at_once() {
        std::thread::spawn(|| {
            install();
            let before = shared_received();
            let statements_before = metrics().statement(0, "READ").get();
            client_bytes_received(1_000_000_007);
            statement(0, "READ");
            query_duration(0.5);
            let histogram_before = metrics().query_duration_seconds.get_sample_count();
            assert!(shared_received() < before + 1_000_000_007);
            flush();
            assert!(shared_received() >= before + 1_000_000_007);
            assert!(metrics().statement(0, "READ").get() > statements_before);
            assert!(metrics().query_duration_seconds.get_sample_count() > histogram_before);
        })
        .join()
        .unwrap();
        std::thread::spawn(|| {
            let before = shared_received();
            client_bytes_received(2_000_000_011);
            assert!(shared_received() >= before + 2_000_000_011);
        })
        .join()
        .unwrap();
    }
}
