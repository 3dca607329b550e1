//! The `stdout` sink: one JSON line per event on standard output, for
//! containers whose log collector reads stdout.

use std::future::Future;
use std::pin::Pin;

use crate::audit::sink::{Lines, Sink};

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
        batch: &'a Lines,
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>> {
        Box::pin(async move {
            let buf = batch.ndjson().to_vec();
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
