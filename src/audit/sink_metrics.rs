//! Metrics of the network sinks and the mass-deletion detector, registered
//! in the process-wide registry on first use. Labels: the sink's configured
//! name (bounded by the config), never event contents.

use std::sync::OnceLock;

use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts};

pub struct SinkMetrics {
    pub delivered_events: IntCounterVec,
    pub spooled_events: IntCounterVec,
    pub spooled_batches: IntGaugeVec,
    pub rejected_events: IntCounterVec,
    pub errors: IntCounterVec,
    pub mass_delete_alerts: IntCounter,
    pub webhook_errors: IntCounter,
}

fn register<C: prometheus::core::Collector + Clone + 'static>(c: C) -> C {
    crate::admin::metrics::metrics()
        .registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn by_sink(name: &str, help: &str) -> IntCounterVec {
    register(IntCounterVec::new(Opts::new(name, help), &["sink"]).expect("valid metric"))
}

pub fn sink_metrics() -> &'static SinkMetrics {
    static M: OnceLock<SinkMetrics> = OnceLock::new();
    M.get_or_init(|| SinkMetrics {
        delivered_events: by_sink(
            "pgward_audit_sink_delivered_events_total",
            "Audit events a network sink's receiver acknowledged.",
        ),
        spooled_events: by_sink(
            "pgward_audit_sink_spooled_events_total",
            "Audit events written to a sink's on-disk spool because the receiver was down or behind.",
        ),
        spooled_batches: register(
            IntGaugeVec::new(
                Opts::new(
                    "pgward_audit_sink_spooled_batches",
                    "Batches waiting in a sink's on-disk spool.",
                ),
                &["sink"],
            )
            .expect("valid metric"),
        ),
        rejected_events: by_sink(
            "pgward_audit_sink_rejected_events_total",
            "Audit events in batches the receiver refused for good (kept in the spool's rejected/ folder).",
        ),
        errors: by_sink(
            "pgward_audit_sink_errors_total",
            "Failed delivery attempts of a network sink (each retried or spooled).",
        ),
        mass_delete_alerts: register(
            IntCounter::new(
                "pgward_audit_mass_delete_alerts_total",
                "Mass-deletion alerts: rows deleted from one table within the window crossed the threshold.",
            )
            .expect("valid metric"),
        ),
        webhook_errors: register(
            IntCounter::new(
                "pgward_audit_mass_delete_webhook_errors_total",
                "Mass-deletion webhook calls that failed after their retries.",
            )
            .expect("valid metric"),
        ),
    })
}
