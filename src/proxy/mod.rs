//! The proxy: listeners, sessions, the relay, upstream connections; live
//! config reload and graceful shutdown.

pub mod cancel;
pub mod handshake;
pub mod loops;
pub mod race;
pub mod relay;
pub mod retag;
pub mod seams;
pub mod session;
pub mod session_span;
pub mod stream;
pub mod timer;
pub mod upstream;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tracing::{error, info, warn};

use crate::admin::metrics::metrics;
use crate::config::{Config, ConfigError};
use crate::policy::{Policy, PolicyError};
use crate::tls::{self, UpstreamTls};
use cancel::CancelRegistry;
use upstream::Target;

/// Everything a reload replaces, swapped in as one unit. Sessions take a
/// snapshot when they start; the policy is also published on its own
/// [`PolicySource`] that sessions consult per statement.
pub struct Live {
    pub config: Config,
    pub target: Target,
    pub acceptor: Option<tokio_rustls::TlsAcceptor>,
    pub upstream_tls: Option<UpstreamTls>,
    pub policy: Arc<Policy>,
    /// Identity source, JWT keys and the compiled context plan.
    pub identity: Arc<crate::identity::Runtime>,
    /// Bearer token the admin port requires (from `admin.bearer_token_file`).
    pub admin_token: Option<String>,
    /// The config file this came from, if any.
    pub source: Option<PathBuf>,
    /// SHA-256 (hex) of the config file's bytes; empty without a file.
    pub sha256: String,
    /// The `[policy]` table as written in the file (for `/policy`).
    pub policy_toml: Option<toml::Value>,
    pub loaded_at: SystemTime,
}

/// The current policy; sessions `load()` it once per Query/Parse.
pub type PolicySource = Arc<ArcSwap<Policy>>;

/// Shutdown progress, published on a `watch` channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// Not accepting; sessions are closed at their next idle point.
    Draining,
    /// The grace period is over: close every session now.
    Closing,
}

/// State every session of one proxy shares.
pub struct Shared {
    pub live: ArcSwap<Live>,
    pub policy: PolicySource,
    pub cancel: CancelRegistry,
    pub connections: Arc<Semaphore>,
    pub next_session_id: AtomicU64,
    pub phase: watch::Sender<Phase>,
    /// Sessions (spawned connection tasks) still running.
    pub active: watch::Sender<usize>,
    /// The audit pipeline (started once; `[audit]` changes need a restart).
    pub audit: Option<Arc<crate::audit::Audit>>,
    overrides: Overrides,
}

/// Changes applied on top of every (re)loaded file, e.g. from the command line.
pub type Overrides = Arc<dyn Fn(&mut Config) + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsSetupError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Invalid(String),
}

impl Live {
    /// Validate everything a config needs at runtime: TLS material, the
    /// policy, the admin token file.
    pub fn build(config: Config, text: Option<(&Path, &[u8])>) -> Result<Live, ProxyError> {
        config.validate().map_err(ProxyError::Invalid)?;
        let acceptor = tls::client_acceptor(&config.client_tls)?;
        let upstream_tls = tls::upstream_connector(&config.upstream.tls, &config.upstream.host)?;
        let policy = Arc::new(Policy::from_config(&config.policy_config())?);
        let identity =
            Arc::new(crate::identity::Runtime::build(&config).map_err(ProxyError::Invalid)?);
        crate::soft_delete_check::check(&config)
            .map_err(|e| ProxyError::Invalid(format!("soft delete schema check: {e}")))?;
        let admin_token = match &config.admin.bearer_token_file {
            Some(p) => {
                let t = std::fs::read_to_string(p).map_err(|e| {
                    ProxyError::Invalid(format!(
                        "admin.bearer_token_file {}: cannot read: {e}",
                        p.display()
                    ))
                })?;
                let t = t.trim().to_string();
                if t.is_empty() {
                    return Err(ProxyError::Invalid(format!(
                        "admin.bearer_token_file {} is empty",
                        p.display()
                    )));
                }
                Some(t)
            }
            None => None,
        };
        let (source, sha256, policy_toml) = match text {
            Some((path, bytes)) => {
                let policy_toml = std::str::from_utf8(bytes)
                    .ok()
                    .and_then(|s| s.parse::<toml::Table>().ok())
                    .and_then(|mut t| t.remove("policy"));
                (Some(path.to_path_buf()), sha256_hex(bytes), policy_toml)
            }
            None => (None, String::new(), None),
        };
        Ok(Live {
            target: Target::from_config(&config.upstream),
            acceptor,
            upstream_tls,
            policy,
            identity,
            admin_token,
            source,
            sha256,
            policy_toml,
            loaded_at: SystemTime::now(),
            config,
        })
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A bound, not yet running proxy.
pub struct Proxy {
    shared: Arc<Shared>,
    listeners: Vec<TcpListener>,
}

impl Proxy {
    /// Load TLS material and bind every listen address.
    pub async fn bind(config: Config) -> Result<Proxy, ProxyError> {
        Self::bind_live(Live::build(config, None)?, Arc::new(|_: &mut Config| {})).await
    }

    /// Bind from a config file, which [`ProxyHandle::reload`] and the file
    /// watch re-read; `overrides` are applied to every load.
    pub async fn bind_file(
        path: &Path,
        overrides: impl Fn(&mut Config) + Send + Sync + 'static,
    ) -> Result<Proxy, ProxyError> {
        let overrides: Overrides = Arc::new(overrides);
        let live = load_file(path, &overrides)?;
        Self::bind_live(live, overrides).await
    }

    async fn bind_live(live: Live, overrides: Overrides) -> Result<Proxy, ProxyError> {
        let mut listeners = Vec::new();
        for addr in &live.config.listen.addresses {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| ProxyError::Bind {
                    addr: addr.clone(),
                    source,
                })?;
            listeners.push(listener);
        }
        let audit = crate::audit::Audit::start(&live.config.audit, &live.config.upstream)
            .await
            .map_err(|e| ProxyError::Invalid(format!("audit: {e:#}")))?;
        let m = metrics();
        m.config_last_reload_timestamp
            .set(unix_secs(live.loaded_at));
        let shared = Arc::new(Shared {
            audit,
            policy: Arc::new(ArcSwap::new(live.policy.clone())),
            cancel: CancelRegistry::default(),
            connections: Arc::new(Semaphore::new(live.config.limits.max_client_connections)),
            next_session_id: AtomicU64::new(1),
            phase: watch::channel(Phase::Running).0,
            active: watch::channel(0).0,
            live: ArcSwap::new(Arc::new(live)),
            overrides,
        });
        Ok(Proxy { shared, listeners })
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// A handle for reload and shutdown (also used by the admin port).
    pub fn handle(&self) -> ProxyHandle {
        ProxyHandle {
            shared: self.shared.clone(),
        }
    }

    /// Accept clients until `shutdown` completes or a shutdown is started
    /// through a [`ProxyHandle`]; then stop accepting. Sessions are not
    /// waited for: use [`ProxyHandle::shutdown`] for a graceful stop.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        info!(
            listen = ?self.local_addrs(),
            upstream = %self.shared.live.load().target,
            "pgward listening"
        );
        let mut accept_loops = tokio::task::JoinSet::new();
        for listener in self.listeners {
            accept_loops.spawn(accept_loop(listener, self.shared.clone()));
        }
        let mut phase = self.shared.phase.subscribe();
        tokio::select! {
            _ = shutdown => {}
            _ = phase.wait_for(|p| *p != Phase::Running) => {}
        }
        accept_loops.abort_all();
        while accept_loops.join_next().await.is_some() {}
        info!("pgward stopped accepting connections");
    }

    /// Run in the background; the returned handle stops accepting when dropped.
    pub fn spawn(self) -> RunningProxy {
        let addrs = self.local_addrs();
        let handle = self.handle();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(self.run(async {
            let _ = rx.await;
        }));
        RunningProxy {
            addrs,
            handle,
            _stop: tx,
            task,
        }
    }
}

fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn load_file(path: &Path, overrides: &Overrides) -> Result<Live, ProxyError> {
    let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let text = String::from_utf8_lossy(&bytes);
    let mut config = Config::from_toml(&text, &path.display().to_string())?;
    overrides(&mut config);
    Live::build(config, Some((path, &bytes)))
}

/// Controls a proxy: reload its config, shut it down, read its state.
#[derive(Clone)]
pub struct ProxyHandle {
    shared: Arc<Shared>,
}

impl ProxyHandle {
    pub fn live(&self) -> Arc<Live> {
        self.shared.live.load_full()
    }

    pub fn phase(&self) -> Phase {
        *self.shared.phase.borrow()
    }

    pub fn active_sessions(&self) -> usize {
        *self.shared.active.borrow()
    }

    /// Re-read the config file and swap it in; on error the running config
    /// stays and the error (with file:line:column for syntax errors) is
    /// returned, logged and counted.
    pub fn reload(&self) -> Result<(), ProxyError> {
        let Some(path) = self.shared.live.load().source.clone() else {
            return Err(ProxyError::Invalid(
                "pgward was started without a config file; nothing to reload".into(),
            ));
        };
        let result = load_file(&path, &self.shared.overrides).map(|live| self.install(live));
        let m = metrics();
        match &result {
            Ok(()) => {
                m.config_reloads.with_label_values(&["success"]).inc();
                m.config_last_reload_successful.set(1);
                info!(file = %path.display(), sha256 = %self.shared.live.load().sha256, "config reloaded");
            }
            Err(e) => {
                m.config_reloads.with_label_values(&["failure"]).inc();
                m.config_last_reload_successful.set(0);
                error!(error = %e, "config reload failed; keeping the running config");
            }
        }
        if let Some(audit) = &self.shared.audit {
            let sha = self.shared.live.load().sha256.clone();
            audit.emit_detached(&crate::audit::session::reload_event(
                &path,
                &sha,
                result.as_ref().err().map(|e| e.to_string()),
            ));
        }
        result
    }

    /// Swap in a validated config (without a file: tests, embedding).
    pub fn reload_config(&self, config: Config) -> Result<(), ProxyError> {
        let live = Live::build(config, None)?;
        self.install(live);
        Ok(())
    }

    /// The audit pipeline, when `[[audit.sinks]]` are configured.
    pub fn audit(&self) -> Option<Arc<crate::audit::Audit>> {
        self.shared.audit.clone()
    }

    fn install(&self, live: Live) {
        if self.shared.audit.is_some()
            && serde_json::to_string(&self.shared.live.load().config.audit).ok()
                != serde_json::to_string(&live.config.audit).ok()
        {
            warn!("[audit] changed: takes effect only after a restart");
        }
        let old = self.shared.live.load();
        if old.config.listen.addresses != live.config.listen.addresses {
            warn!("listen.addresses changed: takes effect only after a restart");
        }
        if old.config.limits.max_client_connections != live.config.limits.max_client_connections {
            warn!("limits.max_client_connections changed: takes effect only after a restart");
        }
        if old.config.admin.listen != live.config.admin.listen {
            warn!("admin.listen changed: takes effect only after a restart");
        }
        metrics()
            .config_last_reload_timestamp
            .set(unix_secs(live.loaded_at));
        self.shared.policy.store(live.policy.clone());
        self.shared.live.store(Arc::new(live));
    }

    /// Hash of the config file if it can be read (for the file watch).
    fn file_fingerprint(path: &Path) -> Option<(SystemTime, String)> {
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok()?;
        let bytes = std::fs::read(path).ok()?;
        Some((mtime, sha256_hex(&bytes)))
    }

    /// Poll the config file every `period`; reload when its mtime changed
    /// and its content hash differs from the running config's. Ends when a
    /// shutdown starts.
    pub async fn watch_file(self, period: Duration) {
        let Some(path) = self.shared.live.load().source.clone() else {
            return;
        };
        // Compared with the running config's hash on the first poll, so a
        // change between load and the first poll is not missed.
        let mut last = None;
        let mut phase = self.shared.phase.subscribe();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = phase.wait_for(|p| *p != Phase::Running) => return,
            }
            let now = Self::file_fingerprint(&path);
            if now.is_none() || now == last {
                continue;
            }
            let changed = now.as_ref().map(|(_, h)| h) != Some(&self.shared.live.load().sha256);
            last = now;
            if changed {
                info!(file = %path.display(), "config file changed; reloading");
                // Off the event loop: a reload may check the live schema.
                let h = self.clone();
                let _ = tokio::task::spawn_blocking(move || h.reload()).await;
            }
        }
    }

    /// End the grace period now: every session is closed at its next frame
    /// boundary (a second SIGTERM/SIGINT during a drain).
    pub fn close_now(&self) {
        if self.phase() != Phase::Running {
            self.shared.phase.send_replace(Phase::Closing);
        }
    }

    /// Graceful shutdown: stop accepting; close sessions at their next idle
    /// point (outside a transaction, nothing outstanding) with 57P01; after
    /// `grace` close the rest with 57P01 at the next frame boundary. Returns
    /// once every session ended (or `grace` + 5 s passed) and the audit
    /// queue was delivered (at most 10 s more).
    pub async fn shutdown(&self, grace: Duration) {
        self.close_sessions(grace).await;
        if let Some(audit) = &self.shared.audit {
            audit.shutdown(Duration::from_secs(10)).await;
        }
    }

    async fn close_sessions(&self, grace: Duration) {
        metrics().shutting_down.set(1);
        self.shared.phase.send_if_modified(|p| {
            if *p == Phase::Running {
                *p = Phase::Draining;
                true
            } else {
                false
            }
        });
        let mut active = self.shared.active.subscribe();
        info!(
            sessions = *active.borrow(),
            grace_secs = grace.as_secs_f64(),
            "shutting down: waiting for sessions to finish their transactions"
        );
        if tokio::time::timeout(grace, active.wait_for(|n| *n == 0))
            .await
            .is_ok()
        {
            info!("all sessions closed");
            return;
        }
        warn!(
            sessions = *active.borrow(),
            "shutdown grace period over: terminating the remaining sessions"
        );
        self.shared.phase.send_replace(Phase::Closing);
        let _ = tokio::time::timeout(Duration::from_secs(5), active.wait_for(|n| *n == 0)).await;
    }
}

/// A proxy running on the current runtime (used by tests and `demo`).
pub struct RunningProxy {
    pub addrs: Vec<SocketAddr>,
    pub handle: ProxyHandle,
    _stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningProxy {
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    pub fn handle(&self) -> ProxyHandle {
        self.handle.clone()
    }

    /// See [`ProxyHandle::shutdown`].
    pub async fn shutdown(&self, grace: Duration) {
        self.handle.shutdown(grace).await
    }
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Decrements the active-session count when a session task ends.
struct SessionGuard(Arc<Shared>);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.0.active.send_modify(|n| *n = n.saturating_sub(1));
        metrics().client_connections.dec();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                let permit = shared.connections.clone().try_acquire_owned().ok();
                shared.active.send_modify(|n| *n += 1);
                let m = metrics();
                m.client_connections.inc();
                m.client_connections_total.inc();
                let guard = SessionGuard(shared.clone());
                let shared = shared.clone();
                let run = move |tcp: TcpStream| async move {
                    session::serve(shared, tcp, peer, permit).await;
                    drop(guard);
                };
                let Some(session_loops) = loops::SessionLoops::get() else {
                    tokio::spawn(run(tcp));
                    continue;
                };
                // The socket moves to the loop's reactor.
                match tcp.into_std() {
                    Ok(tcp) => session_loops.spawn(async move {
                        match TcpStream::from_std(tcp) {
                            Ok(tcp) => run(tcp).await,
                            Err(e) => error!(error = %e, %peer, "cannot register client socket"),
                        }
                    }),
                    Err(e) => error!(error = %e, %peer, "cannot hand over client socket"),
                }
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                error!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}
