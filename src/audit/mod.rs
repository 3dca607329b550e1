//! The audit trail (issue #6, DESIGN.md invariant 4): one event per
//! statement, connection, authentication and policy reload, delivered to
//! every configured sink through a bounded queue, each sink's stream a hash
//! chain that `pgward audit verify` checks.
//!
//! `event` is the schema, `chain` the per-sink hash chain, `pipeline` the
//! queue and sink tasks, `sink` the trait sinks implement, `sinks/` builds
//! them from `[[audit.sinks]]` (file, stdout, and the network sinks
//! `http_sink`, `postgres_sink`, `syslog_sink`), `config` the `[audit]` table,
//! `mass_delete` the alerting detector.

pub mod chain;
pub mod cli;
pub mod config;
pub mod event;
pub mod filter;
pub mod http_client;
pub mod http_sink;
pub mod mass_delete;
pub mod metrics;
pub mod net_tls;
pub mod pipeline;
pub mod postgres_sink;
pub mod redact;
pub mod redact_cache;
pub mod session;
pub mod sink;
pub mod sink_metrics;
pub mod sinks;
pub mod spool;
pub mod syslog_sink;
pub mod time;

pub use config::{AuditConfig, OnFull, SinkConfig};
pub use event::{Event, EventType};
pub use pipeline::Audit;
pub use sink::Sink;
