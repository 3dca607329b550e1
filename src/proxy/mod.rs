//! The proxy: listeners, sessions, the relay, upstream connections.

pub mod cancel;
pub mod handshake;
pub mod relay;
pub mod seams;
pub mod session;
pub mod stream;
pub mod upstream;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{error, info};

use crate::config::Config;
use crate::policy::{Policy, PolicyError};
use crate::tls::{self, UpstreamTls};
use cancel::CancelRegistry;
use upstream::Target;

/// State every session of one proxy shares.
pub struct Shared {
    pub config: Config,
    pub target: Target,
    pub acceptor: Option<tokio_rustls::TlsAcceptor>,
    pub upstream_tls: Option<UpstreamTls>,
    pub cancel: CancelRegistry,
    pub policy: Arc<Policy>,
    pub connections: Arc<Semaphore>,
    pub next_session_id: AtomicU64,
}

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
}

/// A bound, not yet running proxy.
pub struct Proxy {
    shared: Arc<Shared>,
    listeners: Vec<TcpListener>,
}

impl Proxy {
    /// Load TLS material and bind every listen address.
    pub async fn bind(config: Config) -> Result<Proxy, ProxyError> {
        let acceptor = tls::client_acceptor(&config.client_tls)?;
        let upstream_tls = tls::upstream_connector(&config.upstream.tls, &config.upstream.host)?;
        let policy = Arc::new(Policy::from_config(&config.policy)?);
        let mut listeners = Vec::new();
        for addr in &config.listen.addresses {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| ProxyError::Bind {
                    addr: addr.clone(),
                    source,
                })?;
            listeners.push(listener);
        }
        let shared = Arc::new(Shared {
            target: Target::from_config(&config.upstream),
            acceptor,
            upstream_tls,
            cancel: CancelRegistry::default(),
            policy,
            connections: Arc::new(Semaphore::new(config.limits.max_client_connections)),
            next_session_id: AtomicU64::new(1),
            config,
        });
        Ok(Proxy { shared, listeners })
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Accept clients until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        info!(
            listen = ?self.local_addrs(),
            upstream = %self.shared.target,
            "pgward listening"
        );
        let mut accept_loops = tokio::task::JoinSet::new();
        for listener in self.listeners {
            accept_loops.spawn(accept_loop(listener, self.shared.clone()));
        }
        shutdown.await;
        accept_loops.abort_all();
        info!("pgward stopped accepting connections");
    }

    /// Run in the background; the returned handle stops it when dropped.
    pub fn spawn(self) -> RunningProxy {
        let addrs = self.local_addrs();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(self.run(async {
            let _ = rx.await;
        }));
        RunningProxy {
            addrs,
            _stop: tx,
            task,
        }
    }
}

/// A proxy running on the current runtime (used by tests and `demo`).
pub struct RunningProxy {
    pub addrs: Vec<SocketAddr>,
    _stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningProxy {
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                let permit = shared.connections.clone().try_acquire_owned().ok();
                tokio::spawn(session::serve(shared.clone(), tcp, peer, permit));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                error!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}
