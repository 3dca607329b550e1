//! Audit metrics, registered in the process-wide registry
//! (`crate::admin::metrics`). Label values: event types, fixed reasons and
//! sink names from the config.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

pub struct AuditMetrics {
    pub events: IntCounterVec,
    pub dropped: IntCounterVec,
    pub refused: prometheus::IntCounter,
    pub queue_depth: IntGauge,
    pub queue_full_waits: prometheus::IntCounter,
    pub queue_wait_seconds: Histogram,
    pub sink_delivered: IntCounterVec,
    pub sink_errors: IntCounterVec,
    pub sink_latency: HistogramVec,
    pub sink_last_delivered: IntGaugeVec,
}

impl AuditMetrics {
    pub fn register(r: &Registry) -> AuditMetrics {
        fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
            r.register(Box::new(c.clone())).expect("unique metric");
            c
        }
        let cv = |name: &str, help: &str, labels: &[&str]| {
            reg(
                r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        AuditMetrics {
            events: cv(
                "pgward_audit_events_total",
                "Audit events queued for the sinks, by event type.",
                &["type"],
            ),
            dropped: cv(
                "pgward_audit_dropped_total",
                "Audit events lost: `queue_full` (on_full = drop), `closed` (emitted after the pipeline shut down).",
                &["reason"],
            ),
            refused: reg(
                r,
                prometheus::IntCounter::new(
                    "pgward_audit_refused_statements_total",
                    "Statements refused because their event could not be queued (on_full = fail_closed).",
                )
                .expect("valid metric"),
            ),
            queue_depth: reg(
                r,
                IntGauge::new(
                    "pgward_audit_queue_depth",
                    "Audit events waiting in the queue.",
                )
                .expect("valid metric"),
            ),
            queue_full_waits: reg(
                r,
                prometheus::IntCounter::new(
                    "pgward_audit_queue_full_waits_total",
                    "Times a session waited for room in a full audit queue (on_full = block).",
                )
                .expect("valid metric"),
            ),
            queue_wait_seconds: reg(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "pgward_audit_queue_wait_seconds",
                        "How long sessions waited for room in a full audit queue.",
                    )
                    .buckets(vec![0.001, 0.01, 0.1, 1.0, 10.0, 60.0]),
                )
                .expect("valid metric"),
            ),
            sink_delivered: cv(
                "pgward_audit_delivered_total",
                "Events a sink accepted.",
                &["sink"],
            ),
            sink_errors: cv(
                "pgward_audit_delivery_failures_total",
                "Failed deliveries (the batch is retried with backoff).",
                &["sink"],
            ),
            sink_latency: reg(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "pgward_audit_sink_delivery_seconds",
                        "Time a sink took to accept one batch.",
                    )
                    .buckets(vec![
                        0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
                    ]),
                    &["sink"],
                )
                .expect("valid metric"),
            ),
            sink_last_delivered: reg(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "pgward_audit_sink_last_delivered_timestamp_seconds",
                        "Unix time of the sink's last accepted batch (its progress).",
                    ),
                    &["sink"],
                )
                .expect("valid metric"),
            ),
        }
    }
}
