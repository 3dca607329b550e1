//! Real receivers for the audit sink tests: an HTTP server (hyper) that
//! records request bodies (gunzipped) and can be taken down and brought
//! back on the same port, and syslog listeners over UDP, TCP and TLS
//! (octet-counting framing).
#![allow(dead_code)]

use std::convert::Infallible;
use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinSet;

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: Vec<(String, String)>,
    /// The body after gunzip (when Content-Encoding: gzip).
    pub body: String,
    pub gzipped: bool,
}

#[derive(Default)]
struct State {
    requests: Mutex<Vec<Received>>,
    /// Answer this status to the next N requests instead of 200.
    fail_status: AtomicU16,
    fail_next: AtomicUsize,
}

/// An HTTP receiver on a fixed port that can go down and come back.
pub struct HttpReceiver {
    pub addr: SocketAddr,
    state: Arc<State>,
    tasks: Option<JoinSet<()>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl HttpReceiver {
    pub async fn start() -> HttpReceiver {
        Self::start_with(None).await
    }

    /// HTTPS with the given certificate and key.
    pub async fn start_tls(cert: &Path, key: &Path) -> HttpReceiver {
        Self::start_with(Some(acceptor(cert, key))).await
    }

    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> HttpReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut r = HttpReceiver {
            addr,
            state: Arc::new(State::default()),
            tasks: None,
            tls,
        };
        r.serve(listener);
        r
    }

    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.addr)
    }

    fn serve(&mut self, listener: TcpListener) {
        let mut tasks = JoinSet::new();
        let state = self.state.clone();
        let conns = Arc::new(Mutex::new(JoinSet::new()));
        let tls = self.tls.clone();
        tasks.spawn(async move {
            let _keep = conns.clone();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                let tls = tls.clone();
                conns.lock().unwrap().spawn(async move {
                    let svc = service_fn(move |req| handle(state.clone(), req));
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let _ = http.serve_connection(TokioIo::new(tcp), svc).await;
                        }
                        Some(a) => {
                            if let Ok(s) = a.accept(tcp).await {
                                let _ = http.serve_connection(TokioIo::new(s), svc).await;
                            }
                        }
                    }
                });
            }
        });
        self.tasks = Some(tasks);
    }

    /// Stop listening and close every open connection: clients now get
    /// "connection refused".
    pub async fn down(&mut self) {
        if let Some(mut t) = self.tasks.take() {
            t.shutdown().await;
        }
    }

    /// Listen again on the same port.
    pub async fn up(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("rebinding {}: {e}", self.addr);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("rebinding {}: {e}", self.addr),
            }
        };
        self.serve(listener);
    }

    /// Answer `status` to the next `n` requests.
    pub fn fail_next(&self, n: usize, status: u16) {
        self.state.fail_status.store(status, Ordering::SeqCst);
        self.state.fail_next.store(n, Ordering::SeqCst);
    }

    pub fn requests(&self) -> Vec<Received> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Every NDJSON line received so far, in arrival order.
    pub fn lines(&self) -> Vec<String> {
        self.requests()
            .iter()
            .flat_map(|r| r.body.lines().map(str::to_string).collect::<Vec<_>>())
            .collect()
    }

    /// Wait until at least `n` lines arrived (panics after `limit`).
    pub async fn wait_lines(&self, n: usize, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        loop {
            let lines = self.lines();
            if lines.len() >= n {
                return lines;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} lines arrived within {limit:?}",
                lines.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn handle(
    state: Arc<State>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let gzipped = headers
        .iter()
        .any(|(k, v)| k == "content-encoding" && v == "gzip");
    let raw = req.into_body().collect().await.unwrap().to_bytes();
    let failing = state
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failing {
        let status = state.fail_status.load(Ordering::SeqCst);
        return Ok(Response::builder()
            .status(status)
            .body(Full::new(Bytes::from_static(b"refused by the test")))
            .unwrap());
    }
    let body = if gzipped {
        let mut out = String::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_string(&mut out)
            .expect("valid gzip");
        out
    } else {
        String::from_utf8(raw.to_vec()).expect("UTF-8 body")
    };
    state.requests.lock().unwrap().push(Received {
        headers,
        body,
        gzipped,
    });
    Ok(Response::new(Full::new(Bytes::from_static(
        b"{\"ok\":true}",
    ))))
}

fn acceptor(cert: &Path, key: &Path) -> tokio_rustls::TlsAcceptor {
    let certs = pgward::tls::load_certs(cert).unwrap();
    let key = pgward::tls::load_key(key).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

/// A syslog listener collecting whole messages.
pub struct SyslogListener {
    pub addr: SocketAddr,
    messages: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SyslogListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SyslogListener {
    pub async fn udp() -> SyslogListener {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let m = messages.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            loop {
                let n = sock.recv(&mut buf).await.unwrap();
                m.lock()
                    .unwrap()
                    .push(String::from_utf8(buf[..n].to_vec()).unwrap());
            }
        });
        SyslogListener {
            addr,
            messages,
            task,
        }
    }

    /// TCP, or TLS with the harness server certificate when `tls` is given.
    pub async fn stream(tls: Option<(&Path, &Path)>) -> SyslogListener {
        let acceptor = tls.map(|(cert, key)| acceptor(cert, key));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let m = messages.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let m = m.clone();
                let acceptor = acceptor.clone();
                conns.spawn(async move {
                    match acceptor {
                        Some(a) => {
                            if let Ok(tls) = a.accept(tcp).await {
                                read_frames(tls, m).await
                            }
                        }
                        None => read_frames(tcp, m).await,
                    }
                });
            }
        });
        SyslogListener {
            addr,
            messages,
            task,
        }
    }

    pub fn messages(&self) -> Vec<String> {
        self.messages.lock().unwrap().clone()
    }

    pub async fn wait(&self, n: usize, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        loop {
            let m = self.messages();
            if m.len() >= n {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} syslog messages arrived",
                m.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// RFC 6587 octet counting: `LEN SP MSG`, repeated.
async fn read_frames<S: AsyncRead + Unpin>(s: S, out: Arc<Mutex<Vec<String>>>) {
    let mut r = BufReader::new(s);
    loop {
        let mut len = Vec::new();
        match r.read_until(b' ', &mut len).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let n: usize = std::str::from_utf8(&len[..len.len() - 1])
            .unwrap()
            .parse()
            .expect("octet count");
        let mut msg = vec![0u8; n];
        if r.read_exact(&mut msg).await.is_err() {
            return;
        }
        out.lock().unwrap().push(String::from_utf8(msg).unwrap());
    }
}
