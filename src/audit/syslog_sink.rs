//! The `syslog` audit sink: one RFC 5424 message per event, the event's
//! JSON as MSG, over UDP (RFC 5426), TCP with octet-counting framing
//! (RFC 6587 §3.4.1) or TLS (RFC 5425, same framing).
//!
//! `<PRI>1 TIMESTAMP HOSTNAME pgward PROCID MSGID - JSON` where TIMESTAMP is
//! the event's own `time`, MSGID its `type`, and the severity follows the
//! event: `alert` events are warning (4), blocked statements notice (5),
//! everything else informational (6). MSG carries no BOM so receivers can
//! parse it as JSON directly.
//!
//! Over TCP/TLS a batch is Ok once written and flushed to the socket
//! (syslog has no application-level acknowledgement); on a write error the
//! connection is dropped, and the pipeline offers the batch again on a new
//! one. UDP is lossy by nature: use TCP or TLS for an audit trail.

use std::net::SocketAddr;
use std::path::PathBuf;

use std::time::Duration;

use rustls::pki_types::ServerName;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::sink::Lines;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

fn default_facility() -> String {
    "local0".into()
}
fn default_app_name() -> String {
    "pgward".into()
}
fn default_max_message_bytes() -> usize {
    8192
}
fn default_timeout_ms() -> u64 {
    5_000
}

/// `[[audit.sinks]] type = "syslog"`. Documented in `config/pgward.toml`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SyslogSinkConfig {
    /// Name in metrics and logs; default: the sink's type.
    pub name: Option<String>,
    pub transport: Transport,
    /// `host:port` of the receiver.
    pub address: String,
    #[serde(default = "default_facility")]
    pub facility: String,
    /// HOSTNAME field; unset: this machine's host name.
    pub hostname: Option<String>,
    #[serde(default = "default_app_name")]
    pub app_name: String,
    /// UDP only: longer messages are cut to this many bytes (and counted).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    pub tls_ca_file: Option<PathBuf>,
    /// Name checked against the receiver's certificate; unset: the host of
    /// `address`.
    pub tls_server_name: Option<String>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
}

const FACILITIES: [&str; 24] = [
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv",
    "ftp", "ntp", "security", "console", "clock", "local0", "local1", "local2", "local3", "local4",
    "local5", "local6", "local7",
];

impl SyslogSinkConfig {
    /// `name`, else the sink's type.
    pub fn sink_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| "syslog".into())
    }

    pub fn validate(&self) -> Result<(), String> {
        let name = &self.sink_name();
        facility_code(&self.facility).ok_or_else(|| {
            format!(
                "audit sink {name:?}: unknown facility {:?} (one of {})",
                self.facility,
                FACILITIES.join(", ")
            )
        })?;
        host_port(&self.address).map_err(|e| format!("audit sink {name:?}: {e}"))?;
        if !printable(&self.app_name, 48) {
            return Err(format!(
                "audit sink {name:?}: app_name must be 1-48 printable ASCII characters"
            ));
        }
        if let Some(h) = &self.hostname {
            if !printable(h, 255) {
                return Err(format!(
                    "audit sink {name:?}: hostname must be 1-255 printable ASCII characters"
                ));
            }
        }
        if self.max_message_bytes < 480 {
            return Err(format!(
                "audit sink {name:?}: max_message_bytes must be at least 480 (RFC 5426)"
            ));
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err(format!(
                "audit sink {name:?}: tls_cert_file and tls_key_file go together"
            ));
        }
        if self.timeout_ms == 0 {
            return Err(format!("audit sink {name:?}: timeout_ms must be positive"));
        }
        Ok(())
    }
}

fn facility_code(f: &str) -> Option<u8> {
    FACILITIES.iter().position(|x| *x == f).map(|p| p as u8)
}

/// RFC 5424 PRINTUSASCII (33..=126), 1..=max characters.
fn printable(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(|b| (33..=126).contains(&b))
}

fn host_port(address: &str) -> Result<(String, u16), String> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("address {address:?} must be host:port"))?;
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("address {address:?}: bad port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("address {address:?}: no host"));
    }
    Ok((host.to_string(), port))
}

/// The fields of an event the syslog header needs.
#[derive(Deserialize, Default)]
struct Peek {
    #[serde(rename = "type")]
    kind: Option<String>,
    time: Option<String>,
    statement: Option<PeekStatement>,
}

#[derive(Deserialize)]
struct PeekStatement {
    verdict: Option<String>,
}

/// Formats events as RFC 5424 messages.
#[derive(Debug, Clone)]
pub struct Formatter {
    facility: u8,
    hostname: String,
    app_name: String,
    procid: String,
}

impl Formatter {
    pub fn new(cfg: &SyslogSinkConfig) -> Formatter {
        let hostname = cfg.hostname.clone().unwrap_or_else(local_hostname);
        Formatter {
            facility: facility_code(&cfg.facility).unwrap_or(16),
            hostname,
            app_name: cfg.app_name.clone(),
            procid: std::process::id().to_string(),
        }
    }

    /// One message (without transport framing).
    pub fn format(&self, event: &str) -> String {
        let peek: Peek = serde_json::from_str(event).unwrap_or_default();
        let verdict = peek.statement.as_ref().and_then(|s| s.verdict.as_deref());
        let severity = match (peek.kind.as_deref(), verdict) {
            (Some("alert"), _) => 4,
            (_, Some("blocked")) => 5,
            _ => 6,
        };
        let pri = u16::from(self.facility) * 8 + severity;
        // Header fields must be printable ASCII; anything else becomes "-".
        let field = |v: Option<&str>, max: usize| match v {
            Some(s) if printable(s, max) => s.to_string(),
            _ => "-".to_string(),
        };
        format!(
            "<{pri}>1 {} {} {} {} {} - {event}",
            field(peek.time.as_deref(), 40),
            self.hostname,
            self.app_name,
            self.procid,
            field(peek.kind.as_deref(), 32),
        )
    }
}

fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| printable(s, 255))
        .unwrap_or_else(|| "-".into())
}

type Stream = Box<dyn AsyncWrite + Send + Sync + Unpin>;

enum Conn {
    Udp(UdpSocket),
    Stream(Stream),
}

pub struct SyslogSink {
    name: String,
    cfg: SyslogSinkConfig,
    formatter: Formatter,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    conn: Option<Conn>,
}

impl SyslogSink {
    pub fn new(cfg: &SyslogSinkConfig) -> anyhow::Result<SyslogSink> {
        cfg.validate().map_err(anyhow::Error::msg)?;
        let tls = if cfg.transport == Transport::Tls {
            let (host, _) = host_port(&cfg.address).map_err(anyhow::Error::msg)?;
            let name = cfg.tls_server_name.clone().unwrap_or(host);
            let name = ServerName::try_from(name.clone()).map_err(|e| {
                anyhow::anyhow!("audit sink {:?}: TLS server name {name:?}: {e}", cfg.name)
            })?;
            let client_cert = cfg
                .tls_cert_file
                .as_deref()
                .zip(cfg.tls_key_file.as_deref());
            let connector = super::net_tls::connector(cfg.tls_ca_file.as_deref(), client_cert)
                .map_err(|e| anyhow::anyhow!("audit sink {:?}: {e}", cfg.name))?;
            Some((connector, name))
        } else {
            None
        };
        Ok(SyslogSink {
            name: cfg.sink_name(),
            formatter: Formatter::new(cfg),
            cfg: cfg.clone(),
            tls,
            conn: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    async fn connect(&self) -> anyhow::Result<Conn> {
        let (host, port) = host_port(&self.cfg.address).map_err(anyhow::Error::msg)?;
        let target = tokio::net::lookup_host((host.as_str(), port))
            .await?
            .next()
            .ok_or_else(|| anyhow::anyhow!("{} resolves to no address", self.cfg.address))?;
        Ok(match self.cfg.transport {
            Transport::Udp => {
                let local: SocketAddr = if target.is_ipv4() {
                    "0.0.0.0:0".parse()?
                } else {
                    "[::]:0".parse()?
                };
                let sock = UdpSocket::bind(local).await?;
                sock.connect(target).await?;
                Conn::Udp(sock)
            }
            Transport::Tcp | Transport::Tls => {
                let tcp = TcpStream::connect(target).await?;
                tcp.set_nodelay(true)?;
                match &self.tls {
                    None => Conn::Stream(Box::new(tcp)),
                    Some((connector, name)) => {
                        Conn::Stream(Box::new(connector.connect(name.clone(), tcp).await?))
                    }
                }
            }
        })
    }

    /// Send every event of the batch; Ok once all are on the wire.
    pub async fn deliver(&mut self, batch: &Lines) -> anyhow::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let timeout = Duration::from_millis(self.cfg.timeout_ms);
        let result = match tokio::time::timeout(timeout, self.send(batch)).await {
            Ok(r) => r,
            Err(_) => Err(anyhow::anyhow!("no progress within {timeout:?}")),
        };
        let m = super::sink_metrics::sink_metrics();
        match result {
            Ok(()) => {
                m.delivered_events
                    .with_label_values(&[&self.name])
                    .inc_by(batch.len() as u64);
                Ok(())
            }
            Err(e) => {
                // A half-written frame would corrupt the stream: start afresh.
                self.conn = None;
                m.errors.with_label_values(&[&self.name]).inc();
                Err(anyhow::anyhow!(
                    "audit sink {:?}: sending to {}: {e}",
                    self.name,
                    self.cfg.address
                ))
            }
        }
    }

    async fn send(&mut self, batch: &Lines) -> anyhow::Result<()> {
        if self.conn.is_none() {
            self.conn = Some(self.connect().await?);
        }
        match self.conn.as_mut().expect("connected above") {
            Conn::Udp(sock) => {
                for e in batch.iter() {
                    let msg = self.formatter.format(e);
                    let bytes = cut(&msg, self.cfg.max_message_bytes);
                    if bytes.len() < msg.len() {
                        tracing::warn!(sink = %self.name, bytes = msg.len(),
                            "audit syslog sink: UDP message cut to max_message_bytes");
                    }
                    sock.send(bytes).await?;
                }
            }
            Conn::Stream(s) => {
                let mut buf = Vec::with_capacity(batch.iter().map(|e| e.len() + 96).sum());
                for e in batch.iter() {
                    let msg = self.formatter.format(e);
                    buf.extend_from_slice(format!("{} ", msg.len()).as_bytes());
                    buf.extend_from_slice(msg.as_bytes());
                }
                s.write_all(&buf).await?;
                s.flush().await?;
            }
        }
        Ok(())
    }
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn cut(s: &str, max: usize) -> &[u8] {
    if s.len() <= max {
        return s.as_bytes();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s.as_bytes()[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(transport: Transport) -> SyslogSinkConfig {
        SyslogSinkConfig {
            name: Some("s".into()),
            transport,
            address: "127.0.0.1:514".into(),
            facility: default_facility(),
            hostname: Some("db-proxy-1".into()),
            app_name: default_app_name(),
            max_message_bytes: default_max_message_bytes(),
            timeout_ms: default_timeout_ms(),
            tls_ca_file: None,
            tls_server_name: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }

    #[test]
    fn messages_follow_rfc5424_with_severity_from_the_event() {
        let f = Formatter::new(&cfg(Transport::Udp));
        let pid = std::process::id();
        let ev = r#"{"type":"statement","time":"2026-11-23T13:00:00.123456Z","statement":{"verdict":"blocked"}}"#;
        assert_eq!(
            f.format(ev),
            format!("<133>1 2026-11-23T13:00:00.123456Z db-proxy-1 pgward {pid} statement - {ev}")
        );
        let alert = r#"{"type":"alert","time":"2026-11-23T13:00:00Z"}"#;
        assert!(f.format(alert).starts_with("<132>1 "));
        // A field with spaces or non-ASCII would break the header: NILVALUE.
        let odd = r#"{"type":"a b","time":"é"}"#;
        assert!(f
            .format(odd)
            .starts_with(&format!("<134>1 - db-proxy-1 pgward {pid} - - ")));
    }

    #[test]
    fn config_errors_name_the_problem() {
        let mut c = cfg(Transport::Tcp);
        c.facility = "local9".into();
        assert!(c.validate().unwrap_err().contains("local9"));
        let mut c = cfg(Transport::Tcp);
        c.address = "nohostport".into();
        assert!(c.validate().unwrap_err().contains("host:port"));
        let mut c = cfg(Transport::Tls);
        c.tls_cert_file = Some("/x".into());
        assert!(c.validate().unwrap_err().contains("tls_key_file"));
        let mut c = cfg(Transport::Udp);
        c.max_message_bytes = 100;
        assert!(c.validate().is_err());
    }

    #[test]
    fn cut_keeps_whole_characters() {
        assert_eq!(cut("abc", 10), b"abc");
        assert_eq!(cut("aé", 2), b"a");
    }
}
