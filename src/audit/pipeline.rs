//! From sessions to sinks: one bounded queue of serialized events, a
//! dispatcher that batches them, and one task per sink with its own bounded
//! inbox, hash chain, retries and progress. A slow sink fills its inbox,
//! then the queue; then `on_full` decides what sessions experience.
//!
//! The dispatcher and the sink tasks run on one thread of their own
//! (`pgward-audit`, a single-threaded runtime), so handing a batch from the
//! dispatcher to a sink wakes no other thread; the sessions' only cost is
//! the queue push.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

use super::chain::Chain;
use super::config::{AuditConfig, OnFull};
use super::event::Event;
use super::redact_cache::RedactCache;
use super::sink::{Lines, Sink};
use super::sinks;
use crate::admin::metrics::metrics;

/// Batches a sink may have waiting before the dispatcher waits for it.
const SINK_INBOX: usize = 4;
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// What linking adds to an event, and its newline.
const LINK_BYTES: usize = super::chain::LINK_BYTES + 1;

/// Queued events (serialized, not yet chained), shared by every sink.
type Batch = Arc<[String]>;

/// The running audit pipeline; shared by every session.
pub struct Audit {
    config: AuditConfig,
    tx: mpsc::Sender<String>,
    close: Arc<Notify>,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    redactions: RedactCache,
    queued_by_kind: QueuedCounters,
}

/// The `type` labels of events.
const KINDS: [&str; 5] = ["statement", "connection", "auth", "policy", "alert"];

/// The queued-events counter of each kind, looked up once rather than by
/// label per event.
struct QueuedCounters([prometheus::IntCounter; KINDS.len()]);

impl QueuedCounters {
    fn new() -> Self {
        let events = &metrics().audit.events;
        QueuedCounters(KINDS.map(|k| events.with_label_values(&[k])))
    }

    fn inc(&self, kind: &str) {
        match KINDS.iter().position(|k| *k == kind) {
            Some(i) => self.0[i].inc(),
            None => metrics().audit.events.with_label_values(&[kind]).inc(),
        }
    }
}

/// A reserved queue slot: the event it carries cannot be refused.
pub type Reservation = mpsc::OwnedPermit<String>;

impl Audit {
    /// Build the sinks and start the pipeline; `None` when no sink is
    /// configured (auditing off).
    pub async fn start(
        config: &AuditConfig,
        upstream: &crate::config::UpstreamConfig,
    ) -> anyhow::Result<Option<Arc<Audit>>> {
        if !config.enabled() {
            return Ok(None);
        }
        config.validate().map_err(anyhow::Error::msg)?;
        let mut built = Vec::new();
        for c in &config.sinks {
            built.push(sinks::build(c, upstream).await?);
        }
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let close = Arc::new(Notify::new());
        let mut tasks = Vec::new();
        let mut inboxes = Vec::new();
        for sink in built {
            let (itx, irx) = mpsc::channel::<Batch>(SINK_INBOX);
            inboxes.push(itx);
            tasks.push(audit_thread().spawn(run_sink(sink, irx)));
        }
        let monitor = match &config.mass_delete {
            Some(m) => Some(super::mass_delete::Monitor::new(m)?),
            None => None,
        };
        tasks.push(audit_thread().spawn(dispatch(
            rx,
            inboxes,
            Batching {
                max: config.batch_max,
                linger: Duration::from_millis(config.linger_ms),
            },
            close.clone(),
            monitor,
        )));
        Ok(Some(Arc::new(Audit {
            config: config.clone(),
            tx,
            close,
            tasks: std::sync::Mutex::new(tasks),
            redactions: RedactCache::default(),
            queued_by_kind: QueuedCounters::new(),
        })))
    }

    pub fn config(&self) -> &AuditConfig {
        &self.config
    }

    /// Redactions of statement texts seen before (shared by all sessions).
    pub fn redactions(&self) -> &RedactCache {
        &self.redactions
    }

    /// Queue an event, honouring `on_full`: `block` waits for room,
    /// `drop` counts and drops it. Events outside statements (connections,
    /// auth, policy, alerts) wait under `fail_closed` too.
    pub async fn emit(&self, event: &Event) {
        self.emit_json(event.kind_label(), event.to_json()).await
    }

    pub async fn emit_json(&self, kind: &'static str, json: String) {
        let m = &metrics().audit;
        let json = match self.tx.try_send(json) {
            Ok(()) => return self.queued(kind),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                m.dropped.with_label_values(&["closed"]).inc();
                return;
            }
            Err(mpsc::error::TrySendError::Full(json)) => json,
        };
        if self.config.on_full == OnFull::Drop {
            m.dropped.with_label_values(&["queue_full"]).inc();
            return;
        }
        m.queue_full_waits.inc();
        let waited = Instant::now();
        match self.tx.send(json).await {
            Ok(()) => self.queued(kind),
            Err(_) => m.dropped.with_label_values(&["closed"]).inc(),
        }
        m.queue_wait_seconds.observe(waited.elapsed().as_secs_f64());
    }

    /// Queue an event from code that cannot wait (e.g. a config reload):
    /// if the queue is full, a task waits for room (or drops, per `on_full`).
    pub fn emit_detached(self: &Arc<Self>, event: &Event) {
        let kind = event.kind_label();
        match self.tx.try_send(event.to_json()) {
            Ok(()) => self.queued(kind),
            Err(mpsc::error::TrySendError::Full(json)) => {
                let me = self.clone();
                tokio::spawn(async move { me.emit_json(kind, json).await });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                metrics().audit.dropped.with_label_values(&["closed"]).inc()
            }
        }
    }

    /// Reserve a slot for an event to be sent later (`fail_closed`):
    /// `None` when the queue is full or closed.
    pub fn reserve(&self) -> Option<Reservation> {
        self.tx.clone().try_reserve_owned().ok()
    }

    /// Send an event into a slot reserved by [`Audit::reserve`].
    pub fn send_reserved(&self, slot: Reservation, kind: &'static str, json: String) {
        slot.send(json);
        self.queued(kind);
    }

    fn queued(&self, kind: &'static str) {
        self.queued_by_kind.inc(kind);
        metrics()
            .audit
            .queue_depth
            .set((self.tx.max_capacity() - self.tx.capacity()) as i64);
    }

    /// Stop taking events, deliver everything queued, and wait (at most
    /// `timeout`) for the sinks to accept it.
    pub async fn shutdown(&self, timeout: Duration) {
        self.close.notify_one();
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        let deadline = tokio::time::Instant::now() + timeout;
        for mut t in tasks {
            if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
                tracing::warn!("audit sinks did not drain before the shutdown deadline");
                t.abort();
            }
        }
    }
}

impl Event {
    /// The `type` label of this event in metrics.
    pub fn kind_label(&self) -> &'static str {
        use super::event::EventType::*;
        match self.kind {
            Statement => "statement",
            Connection => "connection",
            Auth => "auth",
            Policy => "policy",
            Alert => "alert",
        }
    }
}

/// The runtime of the `pgward-audit` thread, started on first use and
/// shared by every pipeline in the process; the caller's runtime if that
/// thread cannot be started.
fn audit_thread() -> Handle {
    static AUDIT: OnceLock<Option<Handle>> = OnceLock::new();
    let started = AUDIT.get_or_init(|| {
        crate::proxy::loops::runtime_thread(
            "pgward-audit".into(),
            crate::proxy::loops::Clock::TimeDriver,
        )
        .map_err(|e| tracing::error!(error = %e, "cannot start the audit thread"))
        .ok()
    });
    started.clone().unwrap_or_else(Handle::current)
}

/// How the dispatcher forms batches.
#[derive(Debug, Clone, Copy)]
struct Batching {
    max: usize,
    linger: Duration,
}

async fn dispatch(
    mut rx: mpsc::Receiver<String>,
    inboxes: Vec<mpsc::Sender<Batch>>,
    Batching {
        max: batch_max,
        linger,
    }: Batching,
    close: Arc<Notify>,
    mut monitor: Option<super::mass_delete::Monitor>,
) {
    let depth = &metrics().audit.queue_depth;
    let mut buf = Vec::with_capacity(batch_max);
    let mut closing = false;
    loop {
        let n = if closing {
            rx.recv_many(&mut buf, batch_max).await
        } else {
            tokio::select! {
                n = rx.recv_many(&mut buf, batch_max) => n,
                _ = close.notified() => {
                    // Refuse new events; what is queued is still delivered.
                    rx.close();
                    closing = true;
                    continue;
                }
            }
        };
        if n == 0 {
            return;
        }
        if !closing && !linger.is_zero() && buf.len() < batch_max {
            // Asleep on a timer rather than on the queue, so sessions
            // queueing meanwhile wake nobody; then take what arrived.
            tokio::time::sleep(linger).await;
            while buf.len() < batch_max {
                match rx.try_recv() {
                    Ok(event) => buf.push(event),
                    Err(_) => break,
                }
            }
        }
        depth.set(rx.len() as i64);
        if let Some(m) = monitor.as_mut() {
            // Alerts follow the statement that raised them, in every sink.
            let alerts = m.inspect(&buf);
            buf.extend(alerts);
        }
        let batch: Batch = buf.drain(..).collect();
        for inbox in &inboxes {
            // A sink that ended (it cannot: it retries forever) is skipped.
            let _ = inbox.send(batch.clone()).await;
        }
    }
}

async fn run_sink(mut sink: Box<dyn Sink>, mut inbox: mpsc::Receiver<Batch>) {
    let name = sink.name().to_string();
    let m = &metrics().audit;
    let delivered = m.sink_delivered.with_label_values(&[&name]);
    let errors = m.sink_errors.with_label_values(&[&name]);
    let latency = m.sink_latency.with_label_values(&[&name]);
    let progress = m.sink_last_delivered.with_label_values(&[&name]);
    let mut chain = Chain::new(sink.last_hash());
    while let Some(batch) = inbox.recv().await {
        let bytes = batch.iter().map(|e| e.len() + LINK_BYTES).sum();
        let mut lines = Lines::with_capacity(bytes, batch.len());
        for e in batch.iter() {
            lines.push_linked(&mut chain, e);
        }
        drop(batch);
        let mut backoff = BACKOFF_START;
        loop {
            let started = Instant::now();
            match sink.deliver(&lines).await {
                Ok(()) => {
                    latency.observe(started.elapsed().as_secs_f64());
                    delivered.inc_by(lines.len() as u64);
                    progress.set(super::time::now_micros() / 1_000_000);
                    break;
                }
                Err(e) => {
                    errors.inc();
                    tracing::warn!(sink = %name, error = %format!("{e:#}"), retry_in_ms = backoff.as_millis() as u64, "audit delivery failed; retrying the batch");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::config::{FileSinkConfig, Fsync, SinkConfig};
    use crate::audit::event::EventType;

    #[tokio::test]
    async fn events_reach_the_file_chained_and_the_chain_resumes_after_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let config = AuditConfig {
            sinks: vec![SinkConfig::File(FileSinkConfig {
                path: path.clone(),
                fsync: Fsync::Never,
                ..FileSinkConfig::default()
            })],
            ..AuditConfig::default()
        };
        for _ in 0..2 {
            let audit = Audit::start(&config, &Default::default())
                .await
                .unwrap()
                .unwrap();
            for _ in 0..10 {
                audit.emit(&Event::new(EventType::Policy)).await;
            }
            audit.shutdown(Duration::from_secs(5)).await;
            // After shutdown, events are counted as lost, never queued.
            audit.emit(&Event::new(EventType::Policy)).await;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 20);
        let mut prev = crate::audit::chain::GENESIS.to_string();
        for l in lines {
            let link = crate::audit::chain::check(l.as_bytes()).unwrap();
            assert!(link.intact);
            assert_eq!(link.prev, prev);
            prev = link.hash.to_string();
        }
    }

    #[tokio::test]
    async fn events_arriving_within_the_linger_share_one_batch_in_order() {
        let (tx, rx) = mpsc::channel::<String>(64);
        let (itx, mut irx) = mpsc::channel::<Batch>(SINK_INBOX);
        let batching = Batching {
            max: 4,
            linger: Duration::from_millis(200),
        };
        let close = Arc::new(Notify::new());
        let task = tokio::spawn(dispatch(rx, vec![itx], batching, close.clone(), None));
        for i in 0..10 {
            tx.send(i.to_string()).await.unwrap();
        }
        // Ten events sent at once, at most four per batch: 4, 4, 2 — never
        // ten batches of one.
        let mut seen = Vec::new();
        let mut sizes = Vec::new();
        while seen.len() < 10 {
            let batch = irx.recv().await.unwrap();
            sizes.push(batch.len());
            seen.extend(batch.iter().map(|e| e.to_string()));
        }
        assert_eq!(sizes, [4, 4, 2]);
        let expected: Vec<String> = (0..10).map(|i| i.to_string()).collect();
        assert_eq!(seen, expected);
        // A lone event still goes out, after the linger.
        let sent = Instant::now();
        tx.send("last".to_string()).await.unwrap();
        let batch = irx.recv().await.unwrap();
        assert_eq!(batch[0], "last");
        assert!(sent.elapsed() >= Duration::from_millis(200));
        close.notify_one();
        drop(tx);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn no_sinks_means_no_pipeline() {
        assert!(Audit::start(&AuditConfig::default(), &Default::default())
            .await
            .unwrap()
            .is_none());
    }
}
