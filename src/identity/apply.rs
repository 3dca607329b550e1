//! Pin the context on the server connection: after authentication and
//! before the client's first ReadyForQuery, pgward sends
//! `SELECT pg_catalog.set_config($1, $2, false)` once per setting as
//! extended-protocol messages with bind parameters (no SQL is built from the
//! values), and consumes every reply itself: the client never sees them.

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::proxy::stream::UpstreamStream;
use crate::wire::frame::{self, backend};

const SET_CONFIG: &str = "SELECT pg_catalog.set_config($1, $2, false)";
/// `text`, so `$1`/`$2` never depend on the session's search_path.
const TEXT_OID: u32 = 25;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("the server refused context setting {name}: {message}")]
    Refused { name: String, message: String },
    #[error("i/o error with the server while pinning the context: {0}")]
    Io(#[from] std::io::Error),
    #[error("the server closed the connection while pinning the context")]
    Closed,
    #[error("the server sent an invalid frame while pinning the context: {0}")]
    Frame(String),
}

/// The wire messages that pin `settings` (one Parse, a Bind + Execute per
/// setting, one Sync).
pub fn messages(settings: &[(String, String)]) -> std::io::Result<BytesMut> {
    let mut out = BytesMut::new();
    frontend::parse("", SET_CONFIG, [TEXT_OID, TEXT_OID], &mut out)?;
    for (name, value) in settings {
        frontend::bind(
            "",
            "",
            [0i16],
            [name.as_bytes(), value.as_bytes()],
            |v: &[u8], buf: &mut BytesMut| {
                buf.extend_from_slice(v);
                Ok(postgres_protocol::IsNull::No)
            },
            [0i16],
            &mut out,
        )
        .map_err(|e| match e {
            frontend::BindError::Conversion(e) => std::io::Error::other(e),
            frontend::BindError::Serialization(e) => e,
        })?;
        frontend::execute("", 0, &mut out)?;
    }
    frontend::sync(&mut out);
    Ok(out)
}

/// Send the settings and read the replies up to ReadyForQuery. `pending`
/// holds server bytes already read; frames after the ReadyForQuery stay in
/// it. Returns the ReadyForQuery's transaction status.
pub async fn pin(
    server: &mut UpstreamStream,
    pending: &mut BytesMut,
    settings: &[(String, String)],
) -> Result<u8, ApplyError> {
    server.write_all(&messages(settings)?).await?;
    server.flush().await?;
    let mut executed = 0usize;
    let mut refused: Option<ApplyError> = None;
    loop {
        let header = frame::parse_header(pending, i32::MAX as usize)
            .map_err(|e| ApplyError::Frame(e.to_string()))?;
        let Some(h) = header.filter(|h| pending.len() >= h.frame_len) else {
            pending.reserve(4096);
            if server.read_buf(pending).await? == 0 {
                return Err(ApplyError::Closed);
            }
            continue;
        };
        let f = pending.split_to(h.frame_len);
        let body = &f[frame::Header::SIZE..];
        match f[0] {
            backend::COMMAND_COMPLETE => executed += 1,
            backend::ERROR_RESPONSE if refused.is_none() => {
                let message = frame::error_field(body, b'M')
                    .map(|m| String::from_utf8_lossy(m).into_owned())
                    .unwrap_or_default();
                let name = settings
                    .get(executed)
                    .map(|s| s.0.clone())
                    .unwrap_or_default();
                refused = Some(ApplyError::Refused { name, message });
            }
            backend::READY_FOR_QUERY => {
                return match refused {
                    Some(e) => Err(e),
                    None => Ok(frame::ready_status(body).unwrap_or(b'I')),
                };
            }
            // ParseComplete, BindComplete, DataRow, NoticeResponse.
            _ => {}
        }
    }
}
