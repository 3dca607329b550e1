//! The startup phase after the StartupMessage: authentication is relayed
//! between client and server message by message, unchanged except for the
//! SASL mechanism list (see `wire::auth::strip_channel_binding`), until the
//! server's first ReadyForQuery.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::seams::SessionSeams;
use super::stream::{ClientStream, UpstreamStream};
use crate::wire::auth;
use crate::wire::frame::{self, backend, FrameError};
use crate::wire::startup::StartupMessage;

/// Postgres caps authentication tokens near 64 KiB; a client auth message
/// larger than this is not a real one.
const MAX_AUTH_MESSAGE: usize = 1024 * 1024;

/// The session after a successful startup.
pub struct Established {
    /// The server's cancel key (process id, secret), when it sent one.
    pub backend_key: Option<(u32, Bytes)>,
    /// Bytes read past the startup phase, to be relayed.
    pub client_pending: BytesMut,
    pub server_pending: BytesMut,
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("client closed the connection during authentication")]
    ClientClosed,
    #[error("server closed the connection during startup")]
    ServerClosed,
    #[error("server refused the connection: {0}")]
    ServerRejected(String),
    #[error("client sent an invalid frame during authentication: {0}")]
    ClientFrame(FrameError),
    #[error("server sent an invalid frame during startup: {0}")]
    ServerFrame(FrameError),
    #[error("server sent a malformed authentication message")]
    MalformedAuth,
    #[error("i/o error with the client: {0}")]
    ClientIo(std::io::Error),
    #[error("i/o error with the server: {0}")]
    ServerIo(std::io::Error),
    #[error("{0}")]
    Context(crate::identity::apply::ApplyError),
    #[error("{0}")]
    Login(crate::identity::login::LoginError),
}

/// Read one whole frame into the front of `buf` and split it off.
async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    limit: usize,
) -> Result<Option<BytesMut>, Result<FrameError, std::io::Error>> {
    loop {
        if let Some(h) = frame::parse_header(buf, limit).map_err(Ok)? {
            if buf.len() >= h.frame_len {
                return Ok(Some(buf.split_to(h.frame_len)));
            }
            buf.reserve(h.frame_len - buf.len());
        } else {
            buf.reserve(1024);
        }
        match reader.read_buf(buf).await {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e) => return Err(Err(e)),
        }
    }
}

/// Forward the StartupMessage and relay authentication until ReadyForQuery;
/// pin `context` (see `identity::apply`) before the client's ReadyForQuery.
pub async fn establish(
    client: &mut ClientStream,
    server: &mut UpstreamStream,
    startup: &StartupMessage,
    seams: &mut SessionSeams,
    context: &[(String, String)],
) -> Result<Established, HandshakeError> {
    server
        .write_all(&startup.raw)
        .await
        .map_err(HandshakeError::ServerIo)?;
    continue_startup(
        client,
        server,
        BytesMut::with_capacity(1024),
        seams,
        context,
    )
    .await
}

/// The rest of the startup phase, from the server bytes in `from_server`
/// (also used after pgward's own login for verified identities).
pub async fn continue_startup(
    client: &mut ClientStream,
    server: &mut UpstreamStream,
    mut from_server: BytesMut,
    seams: &mut SessionSeams,
    context: &[(String, String)],
) -> Result<Established, HandshakeError> {
    let mut from_client = BytesMut::new();
    let mut to_client = BytesMut::with_capacity(1024);
    let mut backend_key = None;
    loop {
        let frame = match read_frame(server, &mut from_server, i32::MAX as usize).await {
            Ok(Some(f)) => f,
            Ok(None) => {
                flush(client, &mut to_client).await?;
                return Err(HandshakeError::ServerClosed);
            }
            Err(Ok(e)) => return Err(HandshakeError::ServerFrame(e)),
            Err(Err(e)) => return Err(HandshakeError::ServerIo(e)),
        };
        let tag = frame[0];
        let body = &frame[frame::Header::SIZE..];
        match tag {
            backend::AUTHENTICATION => {
                let code = auth::auth_code(body).ok_or(HandshakeError::MalformedAuth)?;
                match (code == auth::AUTH_SASL)
                    .then(|| auth::strip_channel_binding(body))
                    .flatten()
                {
                    Some(stripped) => to_client.extend_from_slice(&stripped),
                    None => to_client.extend_from_slice(&frame),
                }
                if auth::expects_client_response(code) {
                    flush(client, &mut to_client).await?;
                    let answer = match read_frame(client, &mut from_client, MAX_AUTH_MESSAGE).await
                    {
                        Ok(Some(f)) => f,
                        Ok(None) => return Err(HandshakeError::ClientClosed),
                        Err(Ok(e)) => return Err(HandshakeError::ClientFrame(e)),
                        Err(Err(e)) => return Err(HandshakeError::ClientIo(e)),
                    };
                    // Whatever the client answered, the server judges it.
                    server
                        .write_all(&answer)
                        .await
                        .map_err(HandshakeError::ServerIo)?;
                    server.flush().await.map_err(HandshakeError::ServerIo)?;
                }
            }
            backend::BACKEND_KEY_DATA => {
                if body.len() >= 8 {
                    let pid = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                    backend_key = Some((pid, Bytes::copy_from_slice(&body[4..])));
                }
                to_client.extend_from_slice(&frame);
            }
            backend::ERROR_RESPONSE => {
                to_client.extend_from_slice(&frame);
                flush(client, &mut to_client).await?;
                let message = frame::error_field(body, b'M')
                    .map(|m| String::from_utf8_lossy(m).into_owned())
                    .unwrap_or_default();
                let code = frame::error_field(body, b'C')
                    .map(|c| String::from_utf8_lossy(c).into_owned())
                    .unwrap_or_default();
                return Err(HandshakeError::ServerRejected(format!("{code} {message}")));
            }
            backend::READY_FOR_QUERY => {
                if !context.is_empty() {
                    crate::identity::apply::pin(server, &mut from_server, context)
                        .await
                        .map_err(HandshakeError::Context)?;
                }
                seams.on_backend(tag, body);
                to_client.extend_from_slice(&frame);
                flush(client, &mut to_client).await?;
                return Ok(Established {
                    backend_key,
                    client_pending: from_client,
                    server_pending: from_server,
                });
            }
            _ => {
                if SessionSeams::wants_backend(tag) {
                    seams.on_backend(tag, body);
                }
                to_client.extend_from_slice(&frame);
            }
        }
    }
}

async fn flush(client: &mut ClientStream, out: &mut BytesMut) -> Result<(), HandshakeError> {
    if !out.is_empty() {
        client
            .write_all(out)
            .await
            .map_err(HandshakeError::ClientIo)?;
        out.clear();
    }
    client.flush().await.map_err(HandshakeError::ClientIo)
}
