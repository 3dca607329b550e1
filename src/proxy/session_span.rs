//! The session span, entered at each poll of the session's task except
//! while the relay runs.
//!
//! tracing's `Instrumented` enters its span at every poll: a trip through
//! the subscriber (the registry's span stack, the span's reference count,
//! each layer's enter and exit hooks), about 430 instructions per
//! transaction on cache lines that the client and Postgres have evicted
//! between two polls. The relay polls thousands of times a second and logs
//! on a handful of paths, so while it runs the span is not entered and
//! those paths name it as their events' parent (`SessionSeams::span`).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tracing::Span;

/// Runs `inner` with `span` entered at each poll, unless paused through
/// its [`SpanSwitch`].
pub struct SessionSpan<F> {
    inner: Pin<Box<F>>,
    span: Span,
    entered: Arc<AtomicBool>,
}

/// Pauses and resumes entering the span; held by the session itself.
#[derive(Clone)]
pub struct SpanSwitch(Arc<AtomicBool>);

impl SpanSwitch {
    /// From the next poll on, the span is not entered.
    pub fn pause(&self) {
        self.0.store(false, Ordering::Relaxed);
    }

    /// Enter the span again from the next poll on; await the result so the
    /// code after it runs in the span.
    pub async fn resume(&self) {
        self.0.store(true, Ordering::Relaxed);
        tokio::task::yield_now().await;
    }
}

impl<F: Future> SessionSpan<F> {
    /// `make` gets the switch for the future it builds.
    pub fn new(span: Span, make: impl FnOnce(SpanSwitch) -> F) -> Self {
        let entered = Arc::new(AtomicBool::new(true));
        SessionSpan {
            inner: Box::pin(make(SpanSwitch(entered.clone()))),
            span,
            entered,
        }
    }
}

impl<F: Future> Future for SessionSpan<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        if this.entered.load(Ordering::Relaxed) {
            let _entered = this.span.enter();
            this.inner.as_mut().poll(cx)
        } else {
            this.inner.as_mut().poll(cx)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_span_is_current_except_while_paused() {
        // The test runtime polls on this thread only.
        let _default = tracing::subscriber::set_default(tracing_subscriber::registry());
        let span = tracing::info_span!("session", id = 7);
        let current = |expect: bool| {
            let now = Span::current();
            assert_eq!(now.id().is_some(), expect, "{now:?}");
        };
        let seen = SessionSpan::new(span.clone(), |switch| async move {
            current(true);
            switch.pause();
            tokio::task::yield_now().await;
            current(false);
            switch.resume().await;
            current(true);
            7
        })
        .await;
        assert_eq!(seen, 7);
    }
}
