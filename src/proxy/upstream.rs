//! Opening a connection to the upstream Postgres (TCP, unix socket, TLS).

use std::io;
use std::path::PathBuf;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::stream::UpstreamStream;
use crate::config::{UpstreamConfig, UpstreamTlsMode};
use crate::tls::UpstreamTls;
use crate::wire::startup::ssl_request;

/// Where the upstream lives, resolved once from the config.
#[derive(Clone, Debug)]
pub enum Target {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
}

impl Target {
    pub fn from_config(cfg: &UpstreamConfig) -> Target {
        match &cfg.socket_dir {
            Some(dir) => Target::Unix(dir.join(format!(".s.PGSQL.{}", cfg.port))),
            None => Target::Tcp {
                host: cfg.host.clone(),
                port: cfg.port,
            },
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp { host, port } => write!(f, "{host}:{port}"),
            Target::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

/// Connect without TLS (used for CancelRequest, which Postgres accepts plain).
pub async fn connect_plain(target: &Target) -> io::Result<UpstreamStream> {
    Ok(match target {
        Target::Tcp { host, port } => {
            let s = TcpStream::connect((host.as_str(), *port)).await?;
            s.set_nodelay(true)?;
            UpstreamStream::Tcp(s)
        }
        Target::Unix(path) => UpstreamStream::Unix(UnixStream::connect(path).await?),
    })
}

/// Connect and, when configured, negotiate TLS exactly as libpq would.
pub async fn connect(target: &Target, tls: Option<&UpstreamTls>) -> io::Result<UpstreamStream> {
    let stream = connect_plain(target).await?;
    let (UpstreamStream::Tcp(mut tcp), Some(tls)) = (stream, tls) else {
        // Unix sockets never use TLS, as in libpq.
        return connect_plain(target).await;
    };
    tcp.write_all(&ssl_request()).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    match answer[0] {
        b'S' => {
            let s = tls
                .connector
                .connect(tls.server_name.clone(), tcp)
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("upstream TLS handshake: {e}")))?;
            Ok(UpstreamStream::Tls(Box::new(s)))
        }
        b'N' if tls.mode == UpstreamTlsMode::Prefer => Ok(UpstreamStream::Tcp(tcp)),
        b'N' => Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            "upstream does not support TLS but upstream.tls.mode requires it",
        )),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("upstream answered SSLRequest with unexpected byte {other:#04x}"),
        )),
    }
}
