//! Startup-phase packets: untyped, length-prefixed, read exactly.
//!
//! They are read with `read_exact` on the raw stream so that no byte after an
//! SSLRequest is ever buffered by pgward: whatever a client pipelines after
//! SSLRequest is handed to the TLS handshake (and fails there) instead of being
//! treated as trusted post-handshake data (the CVE-2021-23214 pattern).

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

pub const SSL_REQUEST_CODE: u32 = 80_877_103;
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;

/// One packet of the startup phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel {
        process_id: u32,
        /// 4 bytes in protocol 3.0, up to 256 in 3.2.
        secret: Bytes,
    },
    Startup(StartupMessage),
}

/// A StartupMessage: the raw bytes (forwarded unchanged) and its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    pub raw: Bytes,
    pub major: u16,
    pub minor: u16,
    pub params: Vec<(String, String)>,
}

impl StartupMessage {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The user, which Postgres requires.
    pub fn user(&self) -> &str {
        self.param("user").unwrap_or("")
    }

    /// The database, which defaults to the user name as in Postgres.
    pub fn database(&self) -> &str {
        self.param("database").unwrap_or_else(|| self.user())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("connection closed before a startup packet")]
    Closed,
    #[error("invalid length of startup packet ({0} bytes)")]
    BadLength(i64),
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.x")]
    UnsupportedProtocol { major: u16, minor: u16 },
    #[error("invalid startup packet layout: {0}")]
    Malformed(&'static str),
    #[error("i/o error reading startup packet: {0}")]
    Io(#[from] std::io::Error),
}

impl StartupError {
    /// SQLSTATE to send (Postgres sends nothing for a bad length; it just closes).
    pub fn sqlstate(&self) -> Option<&'static str> {
        match self {
            StartupError::UnsupportedProtocol { .. } => Some("0A000"),
            StartupError::Malformed(_) => Some("08P01"),
            _ => None,
        }
    }
}

/// Read one startup-phase packet of at most `max_len` bytes.
pub async fn read_packet<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_len: usize,
) -> Result<StartupPacket, StartupError> {
    let mut len_buf = [0u8; 4];
    match reader.read_exact(&mut len_buf).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(StartupError::Closed)
        }
        Err(e) => return Err(e.into()),
    }
    let len = i32::from_be_bytes(len_buf);
    if len < 8 || len as usize > max_len {
        return Err(StartupError::BadLength(len as i64));
    }
    let mut packet = BytesMut::with_capacity(len as usize);
    packet.put_slice(&len_buf);
    packet.resize(len as usize, 0);
    reader.read_exact(&mut packet[4..]).await?;
    parse_packet(packet.freeze())
}

/// Parse a whole startup-phase packet (length prefix included).
pub fn parse_packet(raw: Bytes) -> Result<StartupPacket, StartupError> {
    let body = &raw[4..];
    let code = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    let rest = &body[4..];
    match code {
        SSL_REQUEST_CODE if rest.is_empty() => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST_CODE if rest.is_empty() => Ok(StartupPacket::GssEncRequest),
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE => {
            Err(StartupError::Malformed("SSL/GSS request with a body"))
        }
        CANCEL_REQUEST_CODE => {
            if rest.len() < 8 || rest.len() > 4 + 256 {
                return Err(StartupError::Malformed("cancel request of invalid size"));
            }
            let process_id = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
            Ok(StartupPacket::Cancel {
                process_id,
                secret: raw.slice(12..),
            })
        }
        _ => {
            let major = (code >> 16) as u16;
            let minor = (code & 0xffff) as u16;
            if major != 3 {
                return Err(StartupError::UnsupportedProtocol { major, minor });
            }
            let params = parse_params(rest)?;
            Ok(StartupPacket::Startup(StartupMessage {
                raw,
                major,
                minor,
                params,
            }))
        }
    }
}

fn parse_params(mut rest: &[u8]) -> Result<Vec<(String, String)>, StartupError> {
    let mut params = Vec::new();
    loop {
        let (name, tail) = super::frame::read_cstr(rest).ok_or(StartupError::Malformed(
            "parameter list is not NUL-terminated",
        ))?;
        if name.is_empty() {
            if !tail.is_empty() {
                return Err(StartupError::Malformed("bytes after the parameter list"));
            }
            break;
        }
        let (value, tail) = super::frame::read_cstr(tail)
            .ok_or(StartupError::Malformed("parameter has no value"))?;
        let name = std::str::from_utf8(name)
            .map_err(|_| StartupError::Malformed("parameter name is not UTF-8"))?;
        let value = std::str::from_utf8(value)
            .map_err(|_| StartupError::Malformed("parameter value is not UTF-8"))?;
        params.push((name.to_string(), value.to_string()));
        rest = tail;
    }
    if !params.iter().any(|(k, _)| k == "user") {
        return Err(StartupError::Malformed("no PostgreSQL user name specified"));
    }
    Ok(params)
}

/// Encode an SSLRequest (pgward sends it to a TLS upstream).
pub fn ssl_request() -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&8u32.to_be_bytes());
    b[4..].copy_from_slice(&SSL_REQUEST_CODE.to_be_bytes());
    b
}

/// Encode a CancelRequest for the given key.
pub fn cancel_request(process_id: u32, secret: &[u8]) -> Vec<u8> {
    let len = 12 + secret.len();
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&(len as u32).to_be_bytes());
    b.extend_from_slice(&CANCEL_REQUEST_CODE.to_be_bytes());
    b.extend_from_slice(&process_id.to_be_bytes());
    b.extend_from_slice(secret);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup(params: &[(&str, &str)], version: u32) -> Vec<u8> {
        let mut body = version.to_be_bytes().to_vec();
        for (k, v) in params {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut out = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        out.extend(body);
        out
    }

    #[tokio::test]
    async fn reads_startup_message_with_params() {
        let raw = startup(&[("user", "alice"), ("application_name", "app")], 196_608);
        let p = read_packet(&mut &raw[..], 10_000).await.unwrap();
        let StartupPacket::Startup(m) = p else {
            panic!("not a startup")
        };
        assert_eq!(m.user(), "alice");
        assert_eq!(m.database(), "alice");
        assert_eq!(m.param("application_name"), Some("app"));
        assert_eq!(&m.raw[..], &raw[..]);
    }

    #[tokio::test]
    async fn accepts_protocol_3_2() {
        let raw = startup(&[("user", "a")], 196_610);
        assert!(matches!(
            read_packet(&mut &raw[..], 10_000).await,
            Ok(StartupPacket::Startup(StartupMessage { minor: 2, .. }))
        ));
    }

    #[tokio::test]
    async fn rejects_bad_lengths_and_versions() {
        let huge = [0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0];
        assert!(matches!(
            read_packet(&mut &huge[..], 10_000).await,
            Err(StartupError::BadLength(_))
        ));
        let negative = [0xff, 0xff, 0xff, 0xf0];
        assert!(matches!(
            read_packet(&mut &negative[..], 10_000).await,
            Err(StartupError::BadLength(_))
        ));
        let v2 = startup(&[("user", "a")], 0x0002_0000);
        assert!(matches!(
            read_packet(&mut &v2[..], 10_000).await,
            Err(StartupError::UnsupportedProtocol { major: 2, .. })
        ));
        let truncated = &startup(&[("user", "a")], 196_608)[..10];
        assert!(matches!(
            read_packet(&mut &truncated[..], 10_000).await,
            Err(StartupError::Io(_))
        ));
        assert!(matches!(
            read_packet(&mut &b""[..], 10_000).await,
            Err(StartupError::Closed)
        ));
    }

    #[tokio::test]
    async fn rejects_malformed_params() {
        let mut raw = startup(&[("user", "a")], 196_608);
        let n = raw.len();
        raw[n - 1] = b'x'; // drop the terminator
        assert!(matches!(
            read_packet(&mut &raw[..], 10_000).await,
            Err(StartupError::Malformed(_))
        ));
        let nouser = startup(&[("database", "a")], 196_608);
        assert!(matches!(
            read_packet(&mut &nouser[..], 10_000).await,
            Err(StartupError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn parses_ssl_gss_and_cancel() {
        assert_eq!(
            read_packet(&mut &ssl_request()[..], 100).await.unwrap(),
            StartupPacket::SslRequest
        );
        let c = cancel_request(42, &[1, 2, 3, 4]);
        assert_eq!(
            read_packet(&mut &c[..], 100).await.unwrap(),
            StartupPacket::Cancel {
                process_id: 42,
                secret: Bytes::from_static(&[1, 2, 3, 4])
            }
        );
    }
}
