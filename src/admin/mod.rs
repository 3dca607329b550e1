//! The admin HTTP port: `/metrics`, `/healthz`, `/readyz`, `/policy`.
//!
//! A deliberately small HTTP/1.1 server on tokio (GET only, one request per
//! connection, `Connection: close`): no HTTP framework to compile, nothing
//! to configure.

pub mod fixed_histogram;
pub mod loop_metrics;
pub mod metrics;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{info, warn};

use crate::proxy::{upstream, Phase, ProxyHandle};

/// Largest request head (request line + headers) accepted.
pub const MAX_HEAD: usize = 8 * 1024;
/// How long a client has to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `/readyz` waits for the upstream TCP connect.
const READY_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A bound admin listener.
pub struct AdminServer {
    listener: TcpListener,
    proxy: ProxyHandle,
}

impl AdminServer {
    pub async fn bind(addr: &str, proxy: ProxyHandle) -> std::io::Result<AdminServer> {
        let listener = TcpListener::bind(addr).await?;
        Ok(AdminServer { listener, proxy })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serve until the task is dropped or aborted.
    pub async fn run(self) {
        info!(listen = ?self.listener.local_addr().ok(), "admin port listening");
        loop {
            match self.listener.accept().await {
                Ok((tcp, _)) => {
                    let proxy = self.proxy.clone();
                    tokio::spawn(async move {
                        let _ = serve_connection(tcp, proxy).await;
                    });
                }
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Serve in the background on the current runtime.
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.run())
    }
}

struct Response {
    status: u16,
    content_type: &'static str,
    body: String,
    extra: &'static str,
}

impl Response {
    fn new(status: u16, content_type: &'static str, body: impl Into<String>) -> Self {
        Response {
            status,
            content_type,
            body: body.into(),
            extra: "",
        }
    }
    fn text(status: u16, body: &str) -> Self {
        Self::new(status, "text/plain; charset=utf-8", format!("{body}\n"))
    }
    fn json(status: u16, value: serde_json::Value) -> Self {
        Self::new(status, "application/json", format!("{value}\n"))
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

async fn serve_connection(mut tcp: TcpStream, proxy: ProxyHandle) -> std::io::Result<()> {
    let response = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut tcp)).await {
        Err(_) => Response::text(408, "request timeout"),
        Ok(Err(status)) => Response::text(status, reason(status)),
        Ok(Ok(head)) => {
            let head_only = head.method == "HEAD";
            let mut r = route(&head, &proxy).await;
            if head_only {
                r.body.clear();
            }
            r
        }
    };
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n{}\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len(),
        response.extra,
    );
    tcp.write_all(head.as_bytes()).await?;
    tcp.write_all(response.body.as_bytes()).await?;
    tcp.flush().await?;
    let _ = tcp.shutdown().await;
    Ok(())
}

#[derive(Debug)]
struct Head {
    method: String,
    path: String,
    authorization: Option<String>,
}

/// Read and parse the request head; `Err(status)` for 400 / 431.
async fn read_head(tcp: &mut TcpStream) -> Result<Head, u16> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Err(431);
        }
        match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => return Err(400),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    if end > MAX_HEAD {
        return Err(431);
    }
    parse_head(&buf[..end])
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn parse_head(bytes: &[u8]) -> Result<Head, u16> {
    let text = std::str::from_utf8(bytes).map_err(|_| 400u16)?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().ok_or(400u16)?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(400);
    };
    if !matches!(version, "HTTP/1.1" | "HTTP/1.0")
        || method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_uppercase())
        || !target.starts_with('/')
    {
        return Err(400);
    }
    let mut authorization = None;
    for line in lines {
        let (name, value) = line.split_once(':').ok_or(400u16)?;
        if name.is_empty() || name.contains(' ') {
            return Err(400);
        }
        if name.eq_ignore_ascii_case("authorization") {
            authorization = Some(value.trim().to_string());
        }
    }
    let path = target.split(['?', '#']).next().unwrap_or("/").to_string();
    Ok(Head {
        method: method.to_string(),
        path,
        authorization,
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn route(head: &Head, proxy: &ProxyHandle) -> Response {
    let known = matches!(
        head.path.as_str(),
        "/metrics" | "/healthz" | "/readyz" | "/policy"
    );
    if !known {
        return Response::text(404, "not found: try /metrics, /healthz, /readyz, /policy");
    }
    if head.method != "GET" && head.method != "HEAD" {
        let mut r = Response::text(405, "method not allowed");
        r.extra = "Allow: GET, HEAD\r\n";
        return r;
    }
    // Probes stay unauthenticated; metrics and the policy need the token.
    if matches!(head.path.as_str(), "/metrics" | "/policy") {
        if let Some(token) = &proxy.live().admin_token {
            let ok = head
                .authorization
                .as_deref()
                .and_then(|v| v.strip_prefix("Bearer "))
                .is_some_and(|t| constant_time_eq(t.trim().as_bytes(), token.as_bytes()));
            if !ok {
                let mut r = Response::text(401, "unauthorized");
                r.extra = "WWW-Authenticate: Bearer\r\n";
                return r;
            }
        }
    }
    match head.path.as_str() {
        "/metrics" => Response::new(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics::metrics().encode(),
        ),
        "/healthz" => Response::text(200, "ok"),
        "/readyz" => readyz(proxy).await,
        _ => Response::json(200, policy_json(proxy)),
    }
}

async fn readyz(proxy: &ProxyHandle) -> Response {
    if proxy.phase() != Phase::Running {
        return Response::json(
            503,
            serde_json::json!({"status": "not ready", "reason": "shutting down"}),
        );
    }
    let live = proxy.live();
    match tokio::time::timeout(READY_CONNECT_TIMEOUT, upstream::connect_plain(&live.target)).await {
        Ok(Ok(_)) => Response::json(
            200,
            serde_json::json!({"status": "ready", "upstream": live.target.to_string()}),
        ),
        Ok(Err(e)) => Response::json(
            503,
            serde_json::json!({
                "status": "not ready",
                "reason": format!("upstream {} unreachable: {e}", live.target),
            }),
        ),
        Err(_) => Response::json(
            503,
            serde_json::json!({
                "status": "not ready",
                "reason": format!("upstream {} did not accept a TCP connection within 2s", live.target),
            }),
        ),
    }
}

/// Keys whose values are never shown.
fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    !k.ends_with("_file")
        && ["password", "secret", "token", "private_key"]
            .iter()
            .any(|s| k.contains(s))
}

fn redact(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if is_secret_key(k) {
                    *v = serde_json::Value::String("[redacted]".into());
                } else {
                    redact(v);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

fn policy_json(proxy: &ProxyHandle) -> serde_json::Value {
    let live = proxy.live();
    let mut config = serde_json::to_value(&live.config).unwrap_or_default();
    if let serde_json::Value::Object(map) = &mut config {
        let policy = live
            .policy_toml
            .as_ref()
            .and_then(|t| serde_json::to_value(t).ok())
            .unwrap_or_else(|| serde_json::json!({}));
        map.insert("policy".into(), policy);
    }
    redact(&mut config);
    let loaded_at = live
        .loaded_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    serde_json::json!({
        "source": live.source.as_ref().map(|p| p.display().to_string()),
        "sha256": live.sha256,
        "loaded_at_unix": loaded_at,
        "config": config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_parsing() {
        let h =
            parse_head(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer t").unwrap();
        assert_eq!((h.method.as_str(), h.path.as_str()), ("GET", "/metrics"));
        assert_eq!(h.authorization.as_deref(), Some("Bearer t"));
        assert_eq!(parse_head(b"GET /metrics").unwrap_err(), 400);
        assert_eq!(parse_head(b"GET metrics HTTP/1.1").unwrap_err(), 400);
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nno-colon").unwrap_err(), 400);
    }

    #[test]
    fn secrets_are_redacted() {
        let mut v = serde_json::json!({"a": {"password": "x", "key_file": "/k", "token_file": "/t", "bearer_token": "y"}});
        redact(&mut v);
        assert_eq!(v["a"]["password"], "[redacted]");
        assert_eq!(v["a"]["bearer_token"], "[redacted]");
        assert_eq!(v["a"]["key_file"], "/k");
        assert_eq!(v["a"]["token_file"], "/t");
    }
}
