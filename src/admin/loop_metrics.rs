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

use std::cell::Cell;
use std::time::Duration;

use super::fixed_histogram::LocalBuckets;
use super::metrics::{
    metrics, Metrics, POLICY_EVALUATION_BOUNDS, QUERY_DURATION_BOUNDS, STATEMENT_CHILDREN,
};

/// How often a loop adds its shard to the shared metrics.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Plain cells inline in a thread-local, so an update touches the shard
/// and nothing behind a pointer (see `admin::fixed_histogram`).
struct Shard {
    installed: Cell<bool>,
    client_bytes_received: Cell<u64>,
    client_bytes_sent: Cell<u64>,
    query_duration_seconds: LocalBuckets<{ QUERY_DURATION_BOUNDS.len() }>,
    policy_evaluation_seconds: LocalBuckets<{ POLICY_EVALUATION_BOUNDS.len() }>,
    /// Indexed like [`Metrics::statement_index`].
    statements: [Cell<u64>; STATEMENT_CHILDREN],
}

impl Shard {
    const fn new() -> Shard {
        Shard {
            installed: Cell::new(false),
            client_bytes_received: Cell::new(0),
            client_bytes_sent: Cell::new(0),
            query_duration_seconds: LocalBuckets::new(&QUERY_DURATION_BOUNDS),
            policy_evaluation_seconds: LocalBuckets::new(&POLICY_EVALUATION_BOUNDS),
            statements: [const { Cell::new(0) }; STATEMENT_CHILDREN],
        }
    }

    fn flush(&self, m: &Metrics) {
        m.client_bytes_received
            .inc_by(self.client_bytes_received.take());
        m.client_bytes_sent.inc_by(self.client_bytes_sent.take());
        self.query_duration_seconds
            .flush_into(&m.query_duration_seconds);
        self.policy_evaluation_seconds
            .flush_into(&m.policy_evaluation_seconds);
        for (c, shared) in self.statements.iter().zip(m.statement_counters()) {
            let n = c.take();
            if n > 0 {
                shared.inc_by(n);
            }
        }
    }
}

fn add(cell: &Cell<u64>, n: u64) {
    cell.set(cell.get() + n);
}

thread_local! {
    // No destructor: a loop thread lives as long as the process.
    static SHARD: Shard = const { Shard::new() };
}

/// Give the current thread a shard. Then call [`flush`] on it every
/// [`FLUSH_INTERVAL`] (see `proxy::loops`).
pub fn install() {
    SHARD.with(|s| s.installed.set(true));
}

/// Add the current thread's shard to the shared metrics.
pub fn flush() {
    SHARD.with(|s| {
        if s.installed.get() {
            s.flush(metrics());
        }
    });
}

/// Run `local` on this thread's shard, or `shared` on the shared metrics
/// when the thread has none.
fn update(local: impl FnOnce(&Shard), shared: impl FnOnce(&Metrics)) {
    let shared = SHARD.with(|s| {
        if s.installed.get() {
            local(s);
            None
        } else {
            Some(shared)
        }
    });
    if let Some(shared) = shared {
        shared(metrics());
    }
}

pub fn client_bytes_received(n: u64) {
    update(
        |s| add(&s.client_bytes_received, n),
        |m| m.client_bytes_received.inc_by(n),
    );
}

pub fn client_bytes_sent(n: u64) {
    update(
        |s| add(&s.client_bytes_sent, n),
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
        |s| add(&s.statements[i], 1),
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
            let histogram_before = metrics().query_duration_seconds.sample_count();
            assert!(shared_received() < before + 1_000_000_007);
            flush();
            assert!(shared_received() >= before + 1_000_000_007);
            assert!(metrics().statement(0, "READ").get() > statements_before);
            assert!(metrics().query_duration_seconds.sample_count() > histogram_before);
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
