//! The interface every audit destination implements. The pipeline owns the
//! hash chain, batching, retries and progress; a sink only writes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// One delivery target. `deliver` gets complete events in order (each a JSON
/// object already carrying its chain hash, no trailing newline) and returns
/// Ok only when they are durably accepted (at-least-once: on Err the same
/// batch is offered again later, with backoff, by the pipeline).
pub trait Sink: Send + 'static {
    fn name(&self) -> &str;
    fn deliver<'a>(
        &'a mut self,
        batch: &'a [Arc<str>],
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>>;
    /// Hash of the last event this sink holds durably, to continue the chain
    /// after a restart (None = start a new chain).
    fn last_hash(&mut self) -> Option<String> {
        None
    }
}

/// A batch as JSON lines (NDJSON): every event followed by `\n`. The file,
/// stdout and http sinks all write this form.
pub fn json_lines(batch: &[std::sync::Arc<str>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(batch.iter().map(|e| e.len() + 1).sum());
    for e in batch {
        out.extend_from_slice(e.as_bytes());
        out.push(b'\n');
    }
    out
}
