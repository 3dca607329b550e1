//! The process-wide Prometheus registry. Label sets are bounded: verdicts,
//! audit classes, rule ids from the config, fixed reason strings — never SQL
//! text, user names or addresses. `docs/metrics.md` documents every metric.

use std::sync::OnceLock;

use prometheus::{
    Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use super::fixed_histogram::FixedHistogram;

/// `verdict` label values of `pgward_statements_total`.
pub const VERDICTS: [&str; 4] = ["allow", "monitored", "block", "rewritten"];
/// `class` label values (pgAudit classes; NONE for an empty message).
pub const CLASSES: [&str; 8] = [
    "READ", "WRITE", "FUNCTION", "ROLE", "DDL", "MISC", "MISC_SET", "NONE",
];

/// Buckets of `pgward_policy_evaluation_seconds`.
pub static POLICY_EVALUATION_BOUNDS: [f64; 12] = [
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005,
    0.01, 0.05,
];
/// Buckets of `pgward_query_duration_seconds`.
pub static QUERY_DURATION_BOUNDS: [f64; 16] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
/// Children of `pgward_statements_total`: every (verdict, class) pair.
pub const STATEMENT_CHILDREN: usize = VERDICTS.len() * CLASSES.len();

pub struct Metrics {
    pub registry: Registry,
    pub client_connections: IntGauge,
    pub client_connections_total: IntCounter,
    pub client_connections_rejected: IntCounterVec,
    pub upstream_connect_errors: IntCounterVec,
    pub statements: IntCounterVec,
    /// Every (verdict, class) child of `statements`, resolved once: the
    /// per-statement path does no label hashing.
    statement_children: Vec<IntCounter>,
    pub rule_hits: IntCounterVec,
    pub parse_failures: IntCounter,
    pub policy_evaluation_seconds: FixedHistogram,
    pub query_duration_seconds: FixedHistogram,
    pub upstream_connections: IntGauge,
    pub client_bytes_received: IntCounter,
    pub client_bytes_sent: IntCounter,
    pub auth_failures: IntCounterVec,
    pub tls_handshake_failures: IntCounter,
    pub config_reloads: IntCounterVec,
    pub config_last_reload_successful: IntGauge,
    pub config_last_reload_timestamp: IntGauge,
    pub shutting_down: IntGauge,
    pub build_info: IntGaugeVec,
    pub audit: crate::audit::metrics::AuditMetrics,
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        let policy_evaluation_seconds = FixedHistogram::new(
            "pgward_policy_evaluation_seconds",
            "Time to classify and judge one Query or Parse message.",
            &POLICY_EVALUATION_BOUNDS,
        );
        r.register(Box::new(policy_evaluation_seconds.clone()))
            .expect("unique metric");
        let query_duration_seconds = FixedHistogram::new(
            "pgward_query_duration_seconds",
            "From a Query/FunctionCall (or the first message before a Sync) to its ReadyForQuery, as seen by pgward.",
            &QUERY_DURATION_BOUNDS,
        );
        r.register(Box::new(query_duration_seconds.clone()))
            .expect("unique metric");
        let build_info = IntGaugeVec::new(
            Opts::new(
                "pgward_build_info",
                "Always 1; the labels name the running pgward build.",
            ),
            &["version"],
        )
        .expect("valid metric");
        r.register(Box::new(build_info.clone()))
            .expect("unique metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let m = Metrics {
            client_connections: gauge(
                &r,
                "pgward_client_connections",
                "Client connections currently open (any phase).",
            ),
            client_connections_total: counter(
                &r,
                "pgward_client_connections_total",
                "Client connections accepted since start.",
            ),
            client_connections_rejected: counter_vec(
                &r,
                "pgward_client_connections_rejected_total",
                "Client connections refused before the relay phase, by reason.",
                &["reason"],
            ),
            upstream_connect_errors: counter_vec(
                &r,
                "pgward_upstream_connect_errors_total",
                "Failed upstream connection attempts, by reason (error, timeout).",
                &["reason"],
            ),
            statements: counter_vec(
                &r,
                "pgward_statements_total",
                "Query and Parse messages judged, by verdict and audit class of the first statement.",
                &["verdict", "class"],
            ),
            rule_hits: counter_vec(
                &r,
                "pgward_rule_hits_total",
                "Verdicts decided by a rule, by rule id and action (block, monitor).",
                &["rule", "action"],
            ),
            parse_failures: counter(
                &r,
                "pgward_parse_failures_total",
                "Statements pgward could not classify (handled by the unparsed rule).",
            ),
            statement_children: Vec::new(),
            policy_evaluation_seconds,
            query_duration_seconds,
            upstream_connections: gauge(
                &r,
                "pgward_upstream_connections",
                "Upstream server connections open now.",
            ),
            client_bytes_received: counter(
                &r,
                "pgward_client_bytes_received_total",
                "Bytes relayed from clients to the upstream server.",
            ),
            client_bytes_sent: counter(
                &r,
                "pgward_client_bytes_sent_total",
                "Bytes relayed from the upstream server to clients.",
            ),
            auth_failures: counter_vec(
                &r,
                "pgward_auth_failures_total",
                "Authentications that did not complete, by reason.",
                &["reason"],
            ),
            tls_handshake_failures: counter(
                &r,
                "pgward_client_tls_handshake_failures_total",
                "Client TLS handshakes that failed.",
            ),
            config_reloads: counter_vec(
                &r,
                "pgward_config_reloads_total",
                "Config reload attempts, by result (success, failure).",
                &["result"],
            ),
            config_last_reload_successful: gauge(
                &r,
                "pgward_config_last_reload_successful",
                "1 if the last config reload attempt succeeded (or none was tried), else 0.",
            ),
            config_last_reload_timestamp: gauge(
                &r,
                "pgward_config_last_reload_success_timestamp_seconds",
                "Unix time the active config was loaded.",
            ),
            shutting_down: gauge(
                &r,
                "pgward_shutting_down",
                "1 once a graceful shutdown has started.",
            ),
            build_info,
            audit: crate::audit::metrics::AuditMetrics::register(&r),
            registry: r,
        };
        let mut m = m;
        m.statement_children = VERDICTS
            .iter()
            .flat_map(|v| CLASSES.iter().map(move |c| (*v, *c)))
            .map(|(v, c)| m.statements.with_label_values(&[v, c]))
            .collect();
        m.config_last_reload_successful.set(1);
        for result in ["success", "failure"] {
            m.config_reloads.with_label_values(&[result]);
        }
        m
    }

    /// The `pgward_statements_total` child for a verdict index (into
    /// [`VERDICTS`]) and an audit class name.
    pub fn statement(&self, verdict: usize, class: &str) -> &IntCounter {
        &self.statement_children[Self::statement_index(verdict, class)]
    }

    /// Where the (verdict, class) child sits in [`Self::statement_counters`].
    pub fn statement_index(verdict: usize, class: &str) -> usize {
        let c = CLASSES
            .iter()
            .position(|x| *x == class)
            .unwrap_or(CLASSES.len() - 1);
        verdict.min(VERDICTS.len() - 1) * CLASSES.len() + c
    }

    /// Every child of `pgward_statements_total`, by [`Self::statement_index`].
    pub fn statement_counters(&self) -> &[IntCounter] {
        &self.statement_children
    }

    /// Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The metrics of this process.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}
