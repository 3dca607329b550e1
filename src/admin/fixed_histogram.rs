//! A Prometheus histogram whose bucket bounds are a `'static` array, and
//! its per-thread counterpart that lives inline in a thread-local.
//!
//! `prometheus::local::LocalHistogram` finds a value's bucket through the
//! shared histogram (shard, `Arc`, core, bounds on the heap) and counts
//! into a heap vector: four or five cache lines for every observation, on
//! a path that runs twice per round trip. On a core shared with the
//! backend and the client, which evict those lines between round trips,
//! each can be a miss. [`LocalBuckets`] keeps its counts inline and its
//! bounds in the binary's read-only data; [`FixedHistogram::add`] adds
//! them to the shared histogram at a loop's flush. The scrape reads the
//! same as prometheus' own `Histogram` (tested below).

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus::core::{Collector, Desc};
use prometheus::proto;

/// Counts of one thread, added to a [`FixedHistogram`] with the same
/// bounds. `N` is the number of finite bounds; a value above the last one
/// counts only in the total (the `+Inf` bucket), as in prometheus.
pub struct LocalBuckets<const N: usize> {
    bounds: &'static [f64; N],
    counts: [Cell<u64>; N],
    count: Cell<u64>,
    sum: Cell<f64>,
}

impl<const N: usize> LocalBuckets<N> {
    pub const fn new(bounds: &'static [f64; N]) -> Self {
        LocalBuckets {
            bounds,
            counts: [const { Cell::new(0) }; N],
            count: Cell::new(0),
            sum: Cell::new(0.0),
        }
    }

    pub fn observe(&self, v: f64) {
        if let Some(i) = bucket(self.bounds, v) {
            self.counts[i].set(self.counts[i].get() + 1);
        }
        self.count.set(self.count.get() + 1);
        self.sum.set(self.sum.get() + v);
    }

    /// Move the counts into `shared` and start again from zero.
    pub fn flush_into(&self, shared: &FixedHistogram) {
        if self.count.get() == 0 {
            return;
        }
        debug_assert_eq!(
            &self.bounds[..],
            shared.bounds,
            "a shard flushed into another histogram"
        );
        let counts: [u64; N] = std::array::from_fn(|i| self.counts[i].take());
        shared.add(&counts, self.count.take(), self.sum.take());
    }
}

/// The bucket `v` counts in; `None` above the last bound (only the total
/// counts it), as prometheus' own histogram does.
fn bucket(bounds: &[f64], v: f64) -> Option<usize> {
    bounds.iter().position(|b| v <= *b)
}

#[derive(Default)]
struct Totals {
    /// Per bucket, not cumulative.
    counts: Vec<u64>,
    count: u64,
    sum: f64,
}

/// The shared histogram; cloning shares it. Updates come once a second
/// per loop (and directly from threads without a loop), so one lock keeps
/// every scrape consistent (its buckets sum to no more than its count).
#[derive(Clone)]
pub struct FixedHistogram {
    desc: Arc<Desc>,
    bounds: &'static [f64],
    totals: Arc<Mutex<Totals>>,
}

impl FixedHistogram {
    /// `bounds` must be finite and ascending (checked: a wrong array is a
    /// programming error, caught by the tests at start-up).
    pub fn new(name: &str, help: &str, bounds: &'static [f64]) -> Self {
        assert!(
            bounds.windows(2).all(|w| w[0] < w[1]) && bounds.iter().all(|b| b.is_finite()),
            "histogram bounds must be finite and ascending"
        );
        let desc = Desc::new(name.into(), help.into(), Vec::new(), HashMap::new())
            .expect("valid metric name");
        FixedHistogram {
            desc: Arc::new(desc),
            bounds,
            totals: Arc::new(Mutex::new(Totals {
                counts: vec![0; bounds.len()],
                ..Totals::default()
            })),
        }
    }

    /// One observation, straight into the shared totals (threads without
    /// a loop's shard).
    pub fn observe(&self, v: f64) {
        let mut t = self.lock();
        if let Some(i) = bucket(self.bounds, v) {
            t.counts[i] += 1;
        }
        t.count += 1;
        t.sum += v;
    }

    fn add(&self, counts: &[u64], count: u64, sum: f64) {
        let mut t = self.lock();
        for (total, n) in t.counts.iter_mut().zip(counts) {
            *total += n;
        }
        t.count += count;
        t.sum += sum;
    }

    pub fn sample_count(&self) -> u64 {
        self.lock().count
    }

    pub fn sample_sum(&self) -> f64 {
        self.lock().sum
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Totals> {
        // Totals stay consistent whatever panicked while holding the lock:
        // every update is a few additions.
        self.totals.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Collector for FixedHistogram {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<proto::MetricFamily> {
        let t = self.lock();
        let mut cumulative = 0;
        let buckets = self
            .bounds
            .iter()
            .zip(&t.counts)
            .map(|(bound, n)| {
                cumulative += n;
                let mut b = proto::Bucket::default();
                b.set_cumulative_count(cumulative);
                b.set_upper_bound(*bound);
                b
            })
            .collect();
        let mut h = proto::Histogram::default();
        h.set_sample_count(t.count);
        h.set_sample_sum(t.sum);
        h.set_bucket(buckets);
        drop(t);
        let mut m = proto::Metric::default();
        m.set_histogram(h);
        let mut family = proto::MetricFamily::default();
        family.set_name(self.desc.fq_name.clone());
        family.set_help(self.desc.help.clone());
        family.set_field_type(proto::MetricType::HISTOGRAM);
        family.set_metric(vec![m]);
        vec![family]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{Encoder, Histogram, HistogramOpts, Registry, TextEncoder};

    // Powers of two: every sum below is exact whatever the order of additions.
    static BOUNDS: [f64; 3] = [0.125, 0.5, 2.0];

    fn text(c: impl Collector + 'static) -> String {
        let r = Registry::new();
        r.register(Box::new(c)).unwrap();
        let mut out = Vec::new();
        TextEncoder::new().encode(&r.gather(), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// The scrape reads exactly as prometheus' own histogram fed the same
    /// values, through a thread's buckets, directly, and above every bound.
    #[test]
    fn scrapes_like_a_prometheus_histogram() {
        let values = [0.0625, 0.125, 0.25, 1.0, 1.0, 2.0, 8.0, -1.0];
        let reference = Histogram::with_opts(
            HistogramOpts::new("h_seconds", "help text").buckets(BOUNDS.to_vec()),
        )
        .unwrap();
        let ours = FixedHistogram::new("h_seconds", "help text", &BOUNDS);
        let local = LocalBuckets::new(&BOUNDS);
        for (i, v) in values.iter().enumerate() {
            reference.observe(*v);
            if i % 2 == 0 {
                local.observe(*v);
            } else {
                ours.observe(*v);
            }
        }
        assert_eq!(
            ours.sample_count(),
            4,
            "the thread's half is not flushed yet"
        );
        local.flush_into(&ours);
        local.flush_into(&ours);
        assert_eq!(ours.sample_count(), values.len() as u64);
        assert_eq!(ours.sample_sum(), reference.get_sample_sum());
        assert_eq!(text(ours), text(reference));
    }

    #[test]
    #[should_panic(expected = "ascending")]
    fn unordered_bounds_are_refused() {
        static BAD: [f64; 2] = [0.1, 0.01];
        FixedHistogram::new("bad_seconds", "help", &BAD);
    }
}
