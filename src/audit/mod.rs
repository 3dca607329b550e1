//! Audit trail: event pipeline and sinks.

pub mod http_client;
pub mod http_sink;
pub mod mass_delete;
pub mod net_tls;
pub mod postgres_sink;
pub mod sink_metrics;
pub mod spool;
pub mod syslog_sink;
