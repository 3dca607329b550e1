//! Logins pgward performs itself for verified identities: it asks the client
//! for its token (AuthenticationCleartextPassword, only over TLS), and logs
//! in to the server as the configured role, speaking SCRAM-SHA-256, MD5 or
//! cleartext as a client (`postgres-protocol`'s implementations).

use bytes::{BufMut, BytesMut};
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::pgclient::Credentials;
use crate::proxy::handshake::{self, Established, HandshakeError};
use crate::proxy::seams::SessionSeams;
use crate::proxy::stream::{ClientStream, UpstreamStream};
use crate::wire::auth;
use crate::wire::frame::{self, backend};

/// A token longer than this is not read at all (the JWT limit applies after).
const MAX_PASSWORD_MESSAGE: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("the client closed the connection during authentication")]
    ClientClosed,
    #[error("the client sent {0} where a password message was expected")]
    ClientProtocol(String),
    #[error("the server closed the connection during pgward's login")]
    ServerClosed,
    #[error("the server refused pgward's login as {user}: {code} {message}")]
    Refused {
        user: String,
        code: String,
        message: String,
    },
    #[error("the server asked for {0}, which pgward's login cannot do")]
    Unsupported(String),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    limit: usize,
) -> Result<Option<BytesMut>, std::io::Error> {
    loop {
        match frame::parse_header(buf, limit)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?
        {
            Some(h) if buf.len() >= h.frame_len => return Ok(Some(buf.split_to(h.frame_len))),
            _ => buf.reserve(4096),
        }
        if r.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// Ask the client for a password (its token) and read it.
pub async fn ask_client_password(client: &mut ClientStream) -> Result<String, LoginError> {
    let mut out = BytesMut::new();
    out.put_u8(b'R');
    out.put_i32(8);
    out.put_i32(3);
    client.write_all(&out).await?;
    client.flush().await?;
    let mut buf = BytesMut::new();
    let f = match read_frame(client, &mut buf, MAX_PASSWORD_MESSAGE).await {
        Ok(Some(f)) => f,
        Ok(None) => return Err(LoginError::ClientClosed),
        Err(e) => return Err(LoginError::ClientProtocol(e.to_string())),
    };
    if f[0] != b'p' {
        return Err(LoginError::ClientProtocol(format!(
            "message type {:?}",
            f[0] as char
        )));
    }
    let (pw, _) = frame::read_cstr(&f[frame::Header::SIZE..])
        .ok_or_else(|| LoginError::ClientProtocol("a password without terminator".into()))?;
    String::from_utf8(pw.to_vec())
        .map_err(|_| LoginError::ClientProtocol("a password that is not UTF-8".into()))
}

/// AuthenticationOk, sent to the client once pgward's own login succeeded.
pub fn authentication_ok() -> [u8; 9] {
    [b'R', 0, 0, 0, 8, 0, 0, 0, 0]
}

/// Send `startup` and authenticate as `creds` until AuthenticationOk.
/// Returns server bytes read past it.
pub async fn login_upstream(
    server: &mut UpstreamStream,
    startup: &[u8],
    creds: &Credentials,
) -> Result<BytesMut, LoginError> {
    server.write_all(startup).await?;
    server.flush().await?;
    let mut buf = BytesMut::with_capacity(1024);
    let mut scram: Option<sasl::ScramSha256> = None;
    let password = || {
        creds
            .password
            .as_deref()
            .ok_or_else(|| LoginError::Unsupported("a password, and none is configured".into()))
    };
    loop {
        let f = read_frame(server, &mut buf, i32::MAX as usize)
            .await?
            .ok_or(LoginError::ServerClosed)?;
        let body = &f[frame::Header::SIZE..];
        let mut out = BytesMut::new();
        match f[0] {
            backend::AUTHENTICATION => {
                let code = auth::auth_code(body).ok_or(LoginError::ServerClosed)?;
                let data = &body[4..];
                match code {
                    0 => return Ok(buf),
                    3 => frontend::password_message(password()?.as_bytes(), &mut out)?,
                    5 => {
                        let salt: [u8; 4] = data
                            .get(..4)
                            .and_then(|s| s.try_into().ok())
                            .ok_or(LoginError::ServerClosed)?;
                        let hash = md5_hash(creds.user.as_bytes(), password()?.as_bytes(), salt);
                        frontend::password_message(hash.as_bytes(), &mut out)?;
                    }
                    10 => {
                        let offers_scram = data
                            .split(|b| *b == 0)
                            .any(|m| m == sasl::SCRAM_SHA_256.as_bytes());
                        if !offers_scram {
                            return Err(LoginError::Unsupported(format!(
                                "SASL mechanisms {:?}",
                                String::from_utf8_lossy(data)
                            )));
                        }
                        let s = sasl::ScramSha256::new(
                            password()?.as_bytes(),
                            sasl::ChannelBinding::unsupported(),
                        );
                        frontend::sasl_initial_response(
                            sasl::SCRAM_SHA_256,
                            s.message(),
                            &mut out,
                        )?;
                        scram = Some(s);
                    }
                    11 => {
                        let s = scram.as_mut().ok_or(LoginError::ServerClosed)?;
                        s.update(data)?;
                        frontend::sasl_response(s.message(), &mut out)?;
                    }
                    12 => {
                        let mut s = scram.take().ok_or(LoginError::ServerClosed)?;
                        s.finish(data)?;
                    }
                    other => {
                        return Err(LoginError::Unsupported(format!(
                            "authentication method {other}"
                        )))
                    }
                }
            }
            backend::ERROR_RESPONSE => {
                let field = |c| {
                    frame::error_field(body, c)
                        .map(|m| String::from_utf8_lossy(m).into_owned())
                        .unwrap_or_default()
                };
                return Err(LoginError::Refused {
                    user: creds.user.clone(),
                    code: field(b'C'),
                    message: field(b'M'),
                });
            }
            _ => {}
        }
        if !out.is_empty() {
            server.write_all(&out).await?;
            server.flush().await?;
        }
    }
}

/// The startup phase for a verified identity: log in upstream as `creds`,
/// tell the client it is authenticated, then continue as usual (parameter
/// statuses, cancel key, context, ReadyForQuery).
pub async fn establish_as(
    client: &mut ClientStream,
    server: &mut UpstreamStream,
    packet: &[u8],
    creds: &Credentials,
    seams: &mut SessionSeams,
    context: &[(String, String)],
) -> Result<Established, HandshakeError> {
    let pending = login_upstream(server, packet, creds)
        .await
        .map_err(HandshakeError::Login)?;
    client
        .write_all(&authentication_ok())
        .await
        .map_err(HandshakeError::ClientIo)?;
    handshake::continue_startup(client, server, pending, seams, context).await
}
