//! One client connection from accept to close: startup negotiation (TLS,
//! GSSENC refusal, CancelRequest), upstream connect, authentication relay,
//! then the relay loop. Every log line carries the session span.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tracing::{field, info, warn};

use super::handshake::{self, HandshakeError};
use super::relay::{self, RelayEnd, RelayLimits, Traffic};
use super::seams::SessionSeams;
use super::session_span::{SessionSpan, SpanSwitch};
use super::stream::ClientStream;
use super::timer;
use super::{upstream, Live, Shared};
use crate::admin::metrics::metrics;
use crate::config::ClientTlsMode;
use crate::identity;
use crate::policy::SessionScope;
use crate::wire::errors::{sqlstate, PgError};
use crate::wire::startup::{self, StartupError, StartupMessage, StartupPacket};

/// Serve one accepted client connection to completion.
pub async fn serve(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    permit: Option<OwnedSemaphorePermit>,
) {
    let id = shared.next_session_id.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!(
        "session",
        id,
        client = %peer,
        user = field::Empty,
        database = field::Empty,
        application_name = field::Empty,
    );
    SessionSpan::new(span, |switch| run(shared, tcp, peer, id, permit, switch)).await
}

/// What the startup phase produced.
enum Negotiated {
    Session(ClientStream, StartupMessage),
    /// A CancelRequest was handled, or the client left: nothing more to do.
    Done,
}

async fn run(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    id: u64,
    permit: Option<OwnedSemaphorePermit>,
    span_switch: SpanSwitch,
) {
    let opened = Instant::now();
    let _ = tcp.set_nodelay(true);
    // This session's config snapshot; the policy itself is re-read per statement.
    let live = shared.live.load_full();
    // One deadline bounds negotiation, the identity check and the upstream
    // handshake together.
    let mut deadline = timer::sleep(live.config.timeouts.startup());
    let m = metrics();

    let negotiated = timer::within(&mut deadline, negotiate(&shared, &live, tcp)).await;
    let (mut client, startup) = match negotiated {
        Ok(Ok(Negotiated::Session(c, s))) => (c, s),
        Ok(Ok(Negotiated::Done)) => return,
        Ok(Err(reason)) => {
            let label = match &reason {
                StartupError::Malformed("plaintext client refused") => "tls_required",
                _ => "startup_error",
            };
            m.client_connections_rejected
                .with_label_values(&[label])
                .inc();
            info!(%reason, "connection closed during startup");
            return;
        }
        Err(_) => {
            m.client_connections_rejected
                .with_label_values(&["startup_timeout"])
                .inc();
            info!("connection closed: startup timeout");
            return;
        }
    };

    let span = tracing::Span::current();
    span.record("user", startup.user());
    span.record("database", startup.database());
    span.record(
        "application_name",
        startup.param("application_name").unwrap_or(""),
    );

    let mut audit_info = shared
        .audit
        .as_ref()
        .map(|_| crate::audit::session::SessionInfo {
            session_id: id,
            client_addr: Some(peer.ip().to_string()),
            client_port: Some(peer.port()),
            tls: client
                .tls_version()
                .map(|version| crate::audit::event::TlsInfo {
                    version,
                    // Only a certificate the client CA verified is there to read.
                    client_cert_subject: client
                        .peer_certificate()
                        .and_then(|der| identity::cert::subject(&der).ok()),
                }),
            user: startup.user().to_string(),
            database: startup.database().to_string(),
            application_name: startup.param("application_name").unwrap_or("").to_string(),
            identity: None,
            context: None,
        });

    if *shared.phase.borrow() != super::Phase::Running {
        m.client_connections_rejected
            .with_label_values(&["shutting_down"])
            .inc();
        send_fatal(
            &mut client,
            PgError::fatal(
                sqlstate::ADMIN_SHUTDOWN,
                "terminating connection due to administrator command",
            )
            .with_detail("pgward is shutting down"),
        )
        .await;
        return;
    }

    if permit.is_none() {
        m.client_connections_rejected
            .with_label_values(&["too_many_clients"])
            .inc();
        warn!(
            limit = live.config.limits.max_client_connections,
            "connection rejected: too many clients"
        );
        send_fatal(
            &mut client,
            PgError::fatal(
                sqlstate::TOO_MANY_CONNECTIONS,
                "sorry, too many clients already",
            )
            .with_detail("pgward limits.max_client_connections reached"),
        )
        .await;
        return;
    }

    let admit = identity::admit(
        &live.identity,
        &live.config,
        &mut client,
        &startup,
        Some(peer.ip()),
        id,
    );
    let admission = match timer::within(&mut deadline, admit).await {
        Ok(Ok(a)) => a,
        Ok(Err(refusal)) => {
            m.auth_failures.with_label_values(&[refusal.label]).inc();
            warn!(
                event = "auth_refused",
                kind = refusal.label,
                sqlstate = refusal.error.code,
                reason = %refusal.log,
                "connection refused by pgward's identity check"
            );
            audit_auth(&shared, &audit_info, false, Some(refusal.log.to_string())).await;
            send_fatal(&mut client, refusal.error).await;
            return;
        }
        Err(_) => {
            m.auth_failures.with_label_values(&["timeout"]).inc();
            info!("connection closed: authentication timeout");
            audit_auth(
                &shared,
                &audit_info,
                false,
                Some("identity check timed out".into()),
            )
            .await;
            return;
        }
    };
    if let Some(info) = audit_info.as_mut() {
        // Verified identities (JWT, certificate) and the pinned context.
        info.identity = admission.audit_identity();
        info.user = admission.user.clone();
        info.context = admission.audit_context();
    }

    let connect = upstream::connect(&live.target, live.upstream_tls.as_ref());
    let mut server = match timer::timeout(live.config.timeouts.connect(), connect).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            m.upstream_connect_errors
                .with_label_values(&["error"])
                .inc();
            warn!(upstream = %live.target, error = %e, "upstream connect failed");
            send_fatal(
                &mut client,
                PgError::fatal(
                    sqlstate::CONNECTION_FAILURE,
                    format!("pgward: could not connect to the upstream server: {e}"),
                ),
            )
            .await;
            return;
        }
        Err(_) => {
            m.upstream_connect_errors
                .with_label_values(&["timeout"])
                .inc();
            warn!(upstream = %live.target, "upstream connect timed out");
            send_fatal(
                &mut client,
                PgError::fatal(
                    sqlstate::CONNECTION_FAILURE,
                    "pgward: timed out connecting to the upstream server",
                ),
            )
            .await;
            return;
        }
    };

    m.upstream_connections.inc();
    let _upstream_open = UpstreamGauge;
    let scope = SessionScope {
        user: admission.user.clone(),
        database: startup.database().to_string(),
        application_name: startup.param("application_name").unwrap_or("").to_string(),
        client_addr: Some(peer.ip()),
        identity: admission.identity.clone(),
    };
    let mut seams = SessionSeams::new(shared.policy.clone(), scope, id);
    let established = timer::within(&mut deadline, async {
        let context = &admission.settings;
        match &admission.login {
            None => {
                // The client's packet plus the pinned settings.
                let upstream_startup = StartupMessage {
                    raw: admission.upstream_startup.clone(),
                    ..startup.clone()
                };
                handshake::establish(
                    &mut client,
                    &mut server,
                    &upstream_startup,
                    &mut seams,
                    context,
                )
                .await
            }
            Some(creds) => {
                identity::login::establish_as(
                    &mut client,
                    &mut server,
                    &admission.upstream_startup,
                    creds,
                    &mut seams,
                    context,
                )
                .await
            }
        }
    })
    .await;
    // Startup is over: let the timer go now rather than at its deadline.
    drop(deadline);
    let established = match established {
        Ok(Ok(e)) => e,
        Ok(Err(HandshakeError::ServerRejected(reason))) => {
            m.auth_failures
                .with_label_values(&["server_rejected"])
                .inc();
            info!(%reason, "authentication failed or connection refused by server");
            audit_auth(&shared, &audit_info, false, Some(reason)).await;
            return;
        }
        Ok(Err(e @ (HandshakeError::Context(_) | HandshakeError::Login(_)))) => {
            let (label, message) = match &e {
                HandshakeError::Context(_) => (
                    "context_failed",
                    "pgward: could not pin the session context",
                ),
                _ => (
                    "upstream_login_failed",
                    "pgward: could not log in to the server for this identity",
                ),
            };
            m.auth_failures.with_label_values(&[label]).inc();
            warn!(error = %e, "{message}");
            send_fatal(
                &mut client,
                PgError::fatal(sqlstate::INVALID_AUTHORIZATION, message),
            )
            .await;
            return;
        }
        Ok(Err(e)) => {
            m.auth_failures.with_label_values(&["closed"]).inc();
            info!(error = %e, "connection closed during authentication");
            audit_auth(&shared, &audit_info, false, Some(e.to_string())).await;
            if matches!(
                e,
                HandshakeError::ServerClosed | HandshakeError::ServerIo(_)
            ) {
                send_fatal(
                    &mut client,
                    PgError::fatal(
                        sqlstate::CONNECTION_FAILURE,
                        "pgward: the upstream server closed the connection during startup",
                    ),
                )
                .await;
            }
            return;
        }
        Err(_) => {
            m.auth_failures.with_label_values(&["timeout"]).inc();
            info!("connection closed: authentication timeout");
            audit_auth(
                &shared,
                &audit_info,
                false,
                Some("authentication timed out".into()),
            )
            .await;
            send_fatal(
                &mut client,
                PgError::fatal(
                    sqlstate::PROTOCOL_VIOLATION,
                    "pgward: authentication timed out (timeouts.startup_secs)",
                ),
            )
            .await;
            return;
        }
    };

    seams.startup_complete();
    if let (Some(audit), Some(info)) = (&shared.audit, &audit_info) {
        audit_auth(&shared, &audit_info, true, None).await;
        audit
            .emit(&info.connection(crate::audit::event::ConnectionInfo {
                action: "open".into(),
                backend_pid: established.backend_key.as_ref().map(|k| k.0),
                bytes_from_client: None,
                bytes_to_client: None,
                statements: None,
                duration_ms: None,
                reason: None,
            }))
            .await;
        let mut session_audit =
            crate::audit::session::SessionAudit::new(audit.clone(), info.clone());
        session_audit.set_application_name(&seams.scope.application_name);
        seams.audit = Some(Box::new(session_audit));
    }
    if let Some((pid, secret)) = &established.backend_key {
        shared.cancel.insert(*pid, secret.clone());
    }
    info!(
        tls = client.tls_version().as_deref().unwrap_or("off"),
        identity = admission.identity.kind.as_str(),
        subject = %admission.identity.subject,
        context_settings = admission.settings.len(),
        backend_pid = established.backend_key.as_ref().map(|k| k.0),
        "connection opened"
    );

    let seams = Mutex::new(seams);
    let traffic = Traffic::default();
    let limits = RelayLimits {
        max_message_size: live.config.limits.max_message_size,
        idle_timeout: live.config.timeouts.idle(),
    };
    drop(live);
    // The relay's few log lines name the span themselves (see `session_span`).
    span_switch.pause();
    let end = relay::relay(
        client,
        server,
        established.client_pending,
        established.server_pending,
        &seams,
        limits,
        &traffic,
        shared.phase.subscribe(),
    )
    .await;
    span_switch.resume().await;

    if let Some((pid, secret)) = &established.backend_key {
        shared.cancel.remove(*pid, secret);
    }
    let seams = seams.into_inner().unwrap_or_else(|p| p.into_inner());
    let reason = match &end {
        RelayEnd::ClientTerminated => "client terminated".to_string(),
        RelayEnd::ClientClosed => "client closed the connection".to_string(),
        RelayEnd::ServerClosed => "server closed the connection".to_string(),
        RelayEnd::ClientProtocolViolation(r) => format!("client protocol violation: {r}"),
        RelayEnd::IdleTimeout => "idle timeout".to_string(),
        RelayEnd::Shutdown => "pgward shutting down".to_string(),
        RelayEnd::ClientIo(e) => format!("client i/o error: {e}"),
        RelayEnd::ServerIo(e) => format!("server i/o error: {e}"),
    };
    info!(
        %reason,
        bytes_from_client = traffic.from_client.load(Ordering::Relaxed),
        bytes_from_server = traffic.from_server.load(Ordering::Relaxed),
        statements = seams.statements,
        blocked = seams.blocked,
        duration_ms = opened.elapsed().as_millis() as u64,
        "connection closed"
    );
    let mut seams = seams;
    if let Some(mut a) = seams.audit.take() {
        a.on_session_end(&reason);
        for (kind, json) in a.take_events() {
            a.audit().emit_json(kind, json).await;
        }
        let event = a.info().connection(crate::audit::event::ConnectionInfo {
            action: "close".into(),
            backend_pid: established.backend_key.as_ref().map(|k| k.0),
            bytes_from_client: Some(traffic.from_client.load(Ordering::Relaxed)),
            bytes_to_client: Some(traffic.from_server.load(Ordering::Relaxed)),
            statements: Some(seams.statements),
            duration_ms: Some(opened.elapsed().as_millis() as u64),
            reason: Some(reason),
        });
        a.audit().emit(&event).await;
    }
}

/// Audit an authentication result (when auditing is on).
async fn audit_auth(
    shared: &Shared,
    info: &Option<crate::audit::session::SessionInfo>,
    ok: bool,
    reason: Option<String>,
) {
    if let (Some(audit), Some(info)) = (&shared.audit, info) {
        audit.emit(&info.auth(ok, reason)).await;
    }
}

/// SSLRequest / GSSENCRequest / CancelRequest until a StartupMessage.
async fn negotiate(
    shared: &Shared,
    live: &Live,
    tcp: TcpStream,
) -> Result<Negotiated, StartupError> {
    let max = live.config.limits.max_startup_packet;
    let mut client = ClientStream::Plain(tcp);
    let mut ssl_seen = false;
    let mut gss_seen = false;
    loop {
        let packet = match startup::read_packet(&mut client, max).await {
            Ok(p) => p,
            Err(StartupError::Closed) => return Ok(Negotiated::Done),
            Err(e) => {
                if let Some(code) = e.sqlstate() {
                    send_fatal(&mut client, PgError::fatal(code, e.to_string())).await;
                }
                return Err(e);
            }
        };
        match packet {
            StartupPacket::SslRequest if !ssl_seen => {
                ssl_seen = true;
                let ClientStream::Plain(mut tcp) = client else {
                    return Err(StartupError::Malformed("SSLRequest inside TLS"));
                };
                match &live.acceptor {
                    Some(acceptor) => {
                        tcp.write_all(b"S").await?;
                        let tls = acceptor.accept(tcp).await.map_err(|e| {
                            metrics().tls_handshake_failures.inc();
                            StartupError::Io(std::io::Error::new(
                                e.kind(),
                                format!("client TLS handshake failed: {e}"),
                            ))
                        })?;
                        client = ClientStream::Tls(Box::new(tls));
                    }
                    None => {
                        tcp.write_all(b"N").await?;
                        client = ClientStream::Plain(tcp);
                    }
                }
            }
            StartupPacket::GssEncRequest if !gss_seen && !client.is_tls() => {
                gss_seen = true;
                client.write_all(b"N").await?;
            }
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                let e = StartupError::Malformed("repeated encryption request");
                send_fatal(
                    &mut client,
                    PgError::fatal(sqlstate::PROTOCOL_VIOLATION, e.to_string()),
                )
                .await;
                return Err(e);
            }
            StartupPacket::Cancel { process_id, secret } => {
                if shared.cancel.contains(process_id, &secret) {
                    let request = startup::cancel_request(process_id, &secret);
                    match upstream::connect_plain(&live.target).await {
                        Ok(mut s) => {
                            let _ = s.write_all(&request).await;
                            let _ = s.shutdown().await;
                            info!(backend_pid = process_id, "cancel request forwarded");
                        }
                        Err(e) => warn!(error = %e, "could not forward cancel request"),
                    }
                } else {
                    info!(
                        backend_pid = process_id,
                        "cancel request with unknown key ignored"
                    );
                }
                return Ok(Negotiated::Done);
            }
            StartupPacket::Startup(message) => {
                if live.config.client_tls.mode == ClientTlsMode::Require && !client.is_tls() {
                    send_fatal(
                        &mut client,
                        PgError::fatal(
                            sqlstate::INVALID_AUTHORIZATION,
                            "pgward: this proxy requires TLS; connect with sslmode=require",
                        ),
                    )
                    .await;
                    return Err(StartupError::Malformed("plaintext client refused"));
                }
                return Ok(Negotiated::Session(client, message));
            }
        }
    }
}

async fn send_fatal(client: &mut ClientStream, error: PgError) {
    let _ = client.write_all(&error.to_bytes()).await;
    let _ = client.flush().await;
    let _ = client.shutdown().await;
}

/// Decrements `pgward_upstream_connections` when the session ends.
struct UpstreamGauge;

impl Drop for UpstreamGauge {
    fn drop(&mut self) {
        metrics().upstream_connections.dec();
    }
}
