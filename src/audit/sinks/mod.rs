//! Builds the sinks `[[audit.sinks]]` names. File and stdout live here; the
//! network sinks (`http_sink`, `postgres_sink`, `syslog_sink`) are plugged
//! in through the [`Sink`] impls below.

pub mod critical;
pub mod file;
pub mod stdout;

use std::future::Future;
use std::pin::Pin;

use super::config::SinkConfig;
use super::http_sink::HttpSink;
use super::postgres_sink::PostgresSink;
use super::sink::{Lines, Sink};
use super::syslog_sink::SyslogSink;
use crate::config::UpstreamConfig;

/// Build the sink an `[[audit.sinks]]` entry describes (the postgres sink
/// connects through `upstream`).
pub async fn build(
    config: &SinkConfig,
    upstream: &UpstreamConfig,
) -> anyhow::Result<Box<dyn Sink>> {
    let name = config.name();
    Ok(match config {
        SinkConfig::File(c) => Box::new(file::FileSink::open(name, c.clone()).await?),
        SinkConfig::Stdout(_) => Box::new(stdout::StdoutSink::new(name)),
        SinkConfig::Http(c) => Box::new(HttpSink::start(c)?),
        SinkConfig::Postgres(c) => {
            let mut sink = PostgresSink::new(c, upstream)?;
            let last = sink.resume().await;
            Box::new(Resumed { sink, last })
        }
        SinkConfig::Syslog(c) => Box::new(SyslogSink::new(c)?),
    })
}

type Delivery<'a> = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>>;

impl Sink for HttpSink {
    fn name(&self) -> &str {
        HttpSink::name(self)
    }
    fn deliver<'a>(&'a mut self, batch: &'a Lines) -> Delivery<'a> {
        Box::pin(HttpSink::deliver(self, batch))
    }
    fn last_hash(&mut self) -> Option<String> {
        HttpSink::last_hash(self)
    }
}

impl Sink for SyslogSink {
    fn name(&self) -> &str {
        SyslogSink::name(self)
    }
    fn deliver<'a>(&'a mut self, batch: &'a Lines) -> Delivery<'a> {
        Box::pin(SyslogSink::deliver(self, batch))
    }
}

/// The postgres sink finds its chain end with a query, done once at build.
struct Resumed {
    sink: PostgresSink,
    last: Option<String>,
}

impl Sink for Resumed {
    fn name(&self) -> &str {
        self.sink.name()
    }
    fn deliver<'a>(&'a mut self, batch: &'a Lines) -> Delivery<'a> {
        Box::pin(self.sink.deliver(batch))
    }
    fn last_hash(&mut self) -> Option<String> {
        self.last.take()
    }
}
