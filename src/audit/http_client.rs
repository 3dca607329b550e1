//! A small HTTP/1.1 POST client for the audit sinks (the `http` sink and the
//! mass-deletion webhook): hyper's connection API over TCP or rustls (ring),
//! one kept-alive connection, a timeout on every request, optional gzip.
//! Secrets (the token) are marked sensitive and never logged.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

/// How a POST failed.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    /// Worth retrying: connection refused/reset, timeout, 408, 429, 5xx.
    #[error("{0}")]
    Retryable(String),
    /// The receiver refused this request for good (other 4xx).
    #[error("{0}")]
    Permanent(String),
}

/// Where and how to POST. Built once from config; errors name the key.
pub struct HttpClient {
    uri: Uri,
    host: String,
    port: u16,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    headers: Vec<(HeaderName, HeaderValue)>,
    gzip: bool,
    timeout: Duration,
    conn: tokio::sync::Mutex<Option<SendRequest<Full<Bytes>>>>,
}

/// The keys an HTTP destination shares (the `http` sink, the webhook).
#[derive(Debug, Clone, Default)]
pub struct ClientSettings {
    pub url: String,
    pub headers: BTreeMap<String, String>,
    pub token_file: Option<PathBuf>,
    pub token_env: Option<String>,
    pub token_header: String,
    pub token_prefix: String,
    pub tls_ca_file: Option<PathBuf>,
    pub gzip: bool,
    pub timeout: Duration,
}

/// Replies longer than this are cut off (we only need the status).
const MAX_REPLY: usize = 64 * 1024;

impl HttpClient {
    pub fn new(s: &ClientSettings) -> Result<HttpClient, String> {
        let uri: Uri = s.url.parse().map_err(|e| format!("url {:?}: {e}", s.url))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(format!("url {:?}: scheme must be http or https", s.url)),
        };
        let host = uri
            .host()
            .ok_or_else(|| format!("url {:?}: no host", s.url))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let name = ServerName::try_from(host.clone())
                .map_err(|e| format!("url {:?}: bad TLS server name: {e}", s.url))?;
            Some((
                super::net_tls::connector(s.tls_ca_file.as_deref(), None)?,
                name,
            ))
        } else {
            None
        };
        let mut headers = Vec::new();
        for (k, v) in &s.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| format!("headers: {k:?} is not a header name: {e}"))?;
            let value = HeaderValue::from_str(v)
                .map_err(|e| format!("headers.{k}: not a valid header value: {e}"))?;
            headers.push((name, value));
        }
        if let Some(token) = read_token(s)? {
            let name = HeaderName::from_bytes(s.token_header.as_bytes())
                .map_err(|e| format!("token_header {:?}: {e}", s.token_header))?;
            let mut value = HeaderValue::from_str(&format!("{}{token}", s.token_prefix))
                .map_err(|_| "the token is not a valid header value".to_string())?;
            value.set_sensitive(true);
            headers.push((name, value));
        }
        Ok(HttpClient {
            uri,
            host,
            port,
            tls,
            headers,
            gzip: s.gzip,
            timeout: s.timeout,
            conn: tokio::sync::Mutex::new(None),
        })
    }

    /// The URL without credentials or query, for logs.
    pub fn target(&self) -> String {
        format!(
            "{}://{}:{}{}",
            self.uri.scheme_str().unwrap_or("http"),
            self.host,
            self.port,
            self.uri.path()
        )
    }

    /// POST `body`; Ok on a 2xx reply.
    pub async fn post(&self, body: &[u8], content_type: &str) -> Result<(), PostError> {
        match tokio::time::timeout(self.timeout, self.post_inner(body, content_type)).await {
            Ok(r) => r,
            Err(_) => {
                // The connection may hold half a request: start afresh.
                *self.conn.lock().await = None;
                Err(PostError::Retryable(format!(
                    "POST {}: no reply within {:?}",
                    self.target(),
                    self.timeout
                )))
            }
        }
    }

    async fn post_inner(&self, body: &[u8], content_type: &str) -> Result<(), PostError> {
        let payload = if self.gzip { gzip(body) } else { body.to_vec() };
        let mut req = Request::post(self.uri.clone())
            .header(hyper::header::HOST, self.authority())
            .header(hyper::header::CONTENT_TYPE, content_type);
        if self.gzip {
            req = req.header(hyper::header::CONTENT_ENCODING, "gzip");
        }
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        let req = req
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| PostError::Permanent(format!("building the request: {e}")))?;
        let mut guard = self.conn.lock().await;
        let mut sender = match guard.take() {
            Some(s) if !s.is_closed() => s,
            _ => self.connect().await?,
        };
        let reply = sender
            .send_request(req)
            .await
            .map_err(|e| PostError::Retryable(format!("POST {}: {e}", self.target())))?;
        let status = reply.status();
        let text = match Limited::new(reply.into_body(), MAX_REPLY).collect().await {
            Ok(b) => {
                // Only a fully read reply leaves the connection reusable.
                *guard = Some(sender);
                String::from_utf8_lossy(&b.to_bytes()).into_owned()
            }
            Err(_) => String::new(),
        };
        if status.is_success() {
            return Ok(());
        }
        let msg = format!(
            "POST {}: HTTP {status}: {}",
            self.target(),
            text.chars().take(200).collect::<String>()
        );
        if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
            Err(PostError::Retryable(msg))
        } else {
            Err(PostError::Permanent(msg))
        }
    }

    fn authority(&self) -> String {
        match self.uri.authority() {
            Some(a) => a.as_str().rsplit('@').next().unwrap_or("").to_string(),
            None => self.host.clone(),
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, PostError> {
        let retry = |what: &str, e: &dyn std::fmt::Display| {
            PostError::Retryable(format!("{what} {}:{}: {e}", self.host, self.port))
        };
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| retry("connecting to", &e))?;
        tcp.set_nodelay(true)
            .map_err(|e| retry("configuring", &e))?;
        match &self.tls {
            None => handshake(TokioIo::new(tcp)).await,
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| retry("TLS handshake with", &e))?;
                handshake(TokioIo::new(tls)).await
            }
        }
    }
}

async fn handshake<T>(io: T) -> Result<SendRequest<Full<Bytes>>, PostError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| PostError::Retryable(format!("HTTP handshake: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "audit HTTP connection ended");
        }
    });
    Ok(sender)
}

fn read_token(s: &ClientSettings) -> Result<Option<String>, String> {
    match (&s.token_file, &s.token_env) {
        (Some(_), Some(_)) => Err("set token_file or token_env, not both".into()),
        (Some(path), None) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("token_file {}: {e}", path.display()))?;
            let token = text.lines().next().unwrap_or("").trim().to_string();
            if token.is_empty() {
                return Err(format!("token_file {}: empty", path.display()));
            }
            Ok(Some(token))
        }
        (None, Some(var)) => match std::env::var(var) {
            Ok(t) if !t.is_empty() => Ok(Some(t)),
            _ => Err(format!("token_env: environment variable {var} is not set")),
        },
        (None, None) => Ok(None),
    }
}

/// gzip at the default level (what Vector, Fluent Bit and Loki accept).
pub fn gzip(body: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4 + 64),
        flate2::Compression::default(),
    );
    // Writing into a Vec cannot fail.
    enc.write_all(body).expect("gzip into memory");
    enc.finish().expect("gzip into memory")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> ClientSettings {
        ClientSettings {
            url: url.into(),
            token_header: "authorization".into(),
            token_prefix: "Bearer ".into(),
            timeout: Duration::from_secs(1),
            ..Default::default()
        }
    }

    #[test]
    fn bad_urls_and_headers_are_named() {
        let e = HttpClient::new(&settings("ftp://x/y")).err().unwrap();
        assert!(e.contains("scheme"), "{e}");
        let e = HttpClient::new(&settings("not a url")).err().unwrap();
        assert!(e.contains("url"), "{e}");
        let mut s = settings("http://127.0.0.1:1/x");
        s.headers.insert("bad header".into(), "v".into());
        assert!(HttpClient::new(&s).err().unwrap().contains("bad header"));
        let mut s = settings("http://127.0.0.1:1/x");
        s.token_env = Some("PGWARD_TEST_SURELY_UNSET_TOKEN".into());
        assert!(HttpClient::new(&s)
            .err()
            .unwrap()
            .contains("PGWARD_TEST_SURELY_UNSET_TOKEN"));
    }

    #[test]
    fn gzip_round_trips() {
        use std::io::Read;
        let body = b"{\"a\":1}\n".repeat(100);
        let z = gzip(&body);
        assert!(z.len() < body.len());
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&z[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, body);
    }

    #[tokio::test]
    async fn a_refused_connection_is_retryable() {
        // Bind then drop: nothing listens on that port now.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = HttpClient::new(&settings(&format!("http://127.0.0.1:{port}/in"))).unwrap();
        assert!(matches!(
            c.post(b"x", "text/plain").await,
            Err(PostError::Retryable(_))
        ));
    }
}
