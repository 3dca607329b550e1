//! The `stdout` sink: one JSON line per event on standard output, for
//! containers whose log collector reads stdout.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::audit::sink::Sink;

pub struct StdoutSink {
    name: String,
}

impl StdoutSink {
    pub fn new(name: String) -> StdoutSink {
        StdoutSink { name }
    }
}

impl Sink for StdoutSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn deliver<'a>(
        &'a mut self,
        batch: &'a [Arc<str>],
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>> {
        Box::pin(async move {
            let buf = crate::audit::sink::json_lines(batch);
            // A blocking write: stdout may be a pipe its reader drains slowly.
            tokio::task::spawn_blocking(move || {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                out.write_all(&buf)?;
                out.flush()
            })
            .await??;
            Ok(())
        })
    }
}
