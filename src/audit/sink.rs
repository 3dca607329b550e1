//! The interface every audit destination implements. The pipeline owns the
//! hash chain, batching, retries and progress; a sink only writes.

use std::future::Future;
use std::pin::Pin;

use super::chain::Chain;

/// One delivery target. `deliver` gets complete events in order (each a JSON
/// object already carrying its chain hash, no trailing newline) and returns
/// Ok only when they are durably accepted (at-least-once: on Err the same
/// batch is offered again later, with backoff, by the pipeline).
pub trait Sink: Send + 'static {
    fn name(&self) -> &str;
    fn deliver<'a>(
        &'a mut self,
        batch: &'a Lines,
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>>;
    /// Hash of the last event this sink holds durably, to continue the chain
    /// after a restart (None = start a new chain).
    fn last_hash(&mut self) -> Option<String> {
        None
    }
}

/// A batch of chained events in one buffer, each followed by `\n`: the
/// NDJSON the file, stdout and http sinks write as it is, and the lines
/// the others take one by one. Linking writes each event straight into it,
/// so an event is not copied again between its chain hash and its sink.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lines {
    text: String,
    /// The end of each line, its `\n` excluded.
    ends: Vec<usize>,
}

impl Lines {
    pub fn with_capacity(bytes: usize, lines: usize) -> Lines {
        Lines {
            text: String::with_capacity(bytes),
            ends: Vec::with_capacity(lines),
        }
    }

    /// Append `line` (which holds no newline) as it is.
    pub fn push(&mut self, line: &str) {
        self.text.push_str(line);
        self.end_line();
    }

    /// Link `body` into `chain` and append the linked line.
    pub fn push_linked(&mut self, chain: &mut Chain, body: &str) {
        chain.link_into(&mut self.text, body);
        self.end_line();
    }

    fn end_line(&mut self) {
        self.ends.push(self.text.len());
        self.text.push('\n');
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The lines, without their newlines.
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        let starts = std::iter::once(0).chain(self.ends.iter().map(|e| e + 1));
        starts.zip(&self.ends).map(|(s, e)| &self.text[s..*e])
    }

    pub fn last(&self) -> Option<&str> {
        let end = *self.ends.last()?;
        let start = match self.ends.len() {
            1 => 0,
            n => self.ends[n - 2] + 1,
        };
        Some(&self.text[start..end])
    }

    /// Every line followed by `\n` (NDJSON).
    pub fn ndjson(&self) -> &[u8] {
        self.text.as_bytes()
    }
}

impl<S: AsRef<str>> FromIterator<S> for Lines {
    fn from_iter<I: IntoIterator<Item = S>>(lines: I) -> Lines {
        let mut out = Lines::default();
        for l in lines {
            out.push(l.as_ref());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_keep_each_line_and_write_ndjson() {
        let empty = Lines::default();
        assert!(empty.is_empty() && empty.last().is_none() && empty.ndjson().is_empty());
        let lines: Lines = ["{\"a\":1}", "", "{\"b\":2}"].into_iter().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines.iter().collect::<Vec<_>>(),
            ["{\"a\":1}", "", "{\"b\":2}"]
        );
        assert_eq!(lines.last(), Some("{\"b\":2}"));
        assert_eq!(lines.ndjson(), b"{\"a\":1}\n\n{\"b\":2}\n");
        let one: Lines = ["x"].into_iter().collect();
        assert_eq!(one.last(), Some("x"));
    }

    #[test]
    fn linked_lines_are_the_chain_links() {
        let (mut a, mut b) = (Chain::new(None), Chain::new(None));
        let mut lines = Lines::default();
        for body in ["{\"v\":1}", "{}", "{\"v\":1,\"s\":\"\\n\"}"] {
            lines.push_linked(&mut a, body);
            assert_eq!(lines.last(), Some(b.link(body).as_str()));
        }
        assert_eq!(a.last(), b.last());
    }
}
