//! tracing setup: text or JSON lines on stderr, filter from config or RUST_LOG.

use std::io::IsTerminal;

use tracing::Subscriber;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

use crate::config::{LogConfig, LogFormat};

pub fn init(cfg: &LogConfig) {
    let directives = std::env::var("RUST_LOG")
        .ok()
        .filter(|d| EnvFilter::try_new(d).is_ok())
        .unwrap_or_else(|| cfg.level.clone());
    let output = match cfg.format {
        // Colours only on a terminal: not into files, pipes or the journal.
        LogFormat::Text => fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let result = tracing_subscriber::registry()
        .with(output)
        .with(filter(&directives))
        .try_init();
    // Already initialised (tests, demo): keep the first subscriber.
    let _ = result;
}

/// The filter for `directives`. `EnvFilter` takes a process-wide read lock
/// at every span enter and exit (it tracks span-field directives), and a
/// session's span is entered at every poll of its task, on every session
/// thread. Directives that name no span (no `[…]`) need none of that: they
/// get the per-target filter, which only looks at an event's target and level.
fn filter<S>(directives: &str) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    if !directives.contains('[') {
        if let Ok(targets) = directives.parse::<Targets>() {
            return targets.boxed();
        }
    }
    EnvFilter::try_new(directives)
        .unwrap_or_else(|_| EnvFilter::new("info"))
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::Registry;

    /// Which of these (target, level) pairs the filter lets through.
    fn passes(directives: &str) -> Vec<bool> {
        use std::sync::{Arc, Mutex};
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let subscriber = Registry::default()
            .with(Recorder(sink))
            .with(filter(directives));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "pgward::proxy", "a");
            tracing::debug!(target: "pgward::proxy", "b");
            tracing::debug!(target: "pgward::audit", "c");
            tracing::warn!(target: "tokio", "d");
            tracing::trace!(target: "other", "e");
            let span = tracing::info_span!(target: "pgward::proxy", "session", user = "app");
            span.in_scope(|| tracing::debug!(target: "pgward::policy", "f"));
        });
        let seen = seen.lock().unwrap().clone();
        ["a", "b", "c", "d", "e", "f"]
            .iter()
            .map(|m| seen.contains(&m.to_string()))
            .collect()
    }

    struct Recorder(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

    impl<S: Subscriber> Layer<S> for Recorder {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            struct Message(Option<String>);
            impl tracing::field::Visit for Message {
                fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                    if f.name() == "message" {
                        self.0 = Some(format!("{v:?}"));
                    }
                }
            }
            let mut m = Message(None);
            event.record(&mut m);
            self.0.lock().unwrap().extend(m.0);
        }
    }

    #[test]
    fn per_target_directives_filter_as_env_filter_does() {
        assert_eq!(passes("info"), [true, false, false, true, false, false]);
        assert_eq!(
            passes("warn,pgward::proxy=debug"),
            [true, true, false, true, false, false]
        );
        assert_eq!(
            passes("INFO,pgward=trace"),
            [true, true, true, true, false, true]
        );
        assert_eq!(passes("off"), [false; 6]);
        // A span directive takes EnvFilter: debug inside `session` spans only.
        assert_eq!(
            passes("info,[session]=debug"),
            [true, false, false, true, false, true]
        );
        // Unparseable: the default, info.
        assert_eq!(
            passes("pgward=loud"),
            [true, false, false, true, false, false]
        );
    }
}
