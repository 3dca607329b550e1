//! Messages pgward itself sends to a client, encoded with `pgwire`.

use bytes::BytesMut;
use pgwire::messages::response::{ErrorResponse, ReadyForQuery, TransactionStatus};
use pgwire::messages::Message;

/// Severity of a pgward-generated error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

/// An error pgward reports to a client in Postgres' own format.
#[derive(Debug, Clone)]
pub struct PgError {
    pub severity: Severity,
    pub code: &'static str,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl PgError {
    pub fn fatal(code: &'static str, message: impl Into<String>) -> Self {
        PgError {
            severity: Severity::Fatal,
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        PgError {
            severity: Severity::Error,
            ..PgError::fatal(code, message)
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Encode as an ErrorResponse frame appended to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let severity = match self.severity {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        };
        let mut fields = vec![
            (b'S', severity.to_string()),
            (b'V', severity.to_string()),
            (b'C', self.code.to_string()),
            (b'M', self.message.clone()),
        ];
        if let Some(d) = &self.detail {
            fields.push((b'D', d.clone()));
        }
        if let Some(h) = &self.hint {
            fields.push((b'H', h.clone()));
        }
        // Encoding into a BytesMut cannot fail for these field types.
        let _ = ErrorResponse::new(fields).encode(out);
    }

    pub fn to_bytes(&self) -> BytesMut {
        let mut out = BytesMut::new();
        self.encode(&mut out);
        out
    }
}

/// A ReadyForQuery frame with the given status byte (`I`, `T` or `E`).
pub fn ready_for_query(status: u8, out: &mut BytesMut) {
    let status = match status {
        b'T' => TransactionStatus::Transaction,
        b'E' => TransactionStatus::Error,
        _ => TransactionStatus::Idle,
    };
    let _ = ReadyForQuery::new(status).encode(out);
}

pub mod sqlstate {
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const CONNECTION_FAILURE: &str = "08006";
    pub const SQLCLIENT_UNABLE_TO_ESTABLISH: &str = "08001";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    pub const INVALID_AUTHORIZATION: &str = "28000";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const IDLE_SESSION_TIMEOUT: &str = "57P05";
    pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame::{error_field, parse_header};

    #[test]
    fn error_response_round_trips_through_our_parser() {
        let bytes = PgError::error("42501", "pgward: no")
            .with_hint("ask")
            .to_bytes();
        let h = parse_header(&bytes, 1 << 20).unwrap().unwrap();
        assert_eq!(h.tag, b'E');
        assert_eq!(h.frame_len, bytes.len());
        let body = &bytes[5..];
        assert_eq!(error_field(body, b'C'), Some(&b"42501"[..]));
        assert_eq!(error_field(body, b'H'), Some(&b"ask"[..]));
        assert_eq!(error_field(body, b'S'), Some(&b"ERROR"[..]));
    }

    #[test]
    fn ready_for_query_encodes_status() {
        let mut out = BytesMut::new();
        ready_for_query(b'E', &mut out);
        assert_eq!(&out[..], b"Z\0\0\0\x05E");
    }
}
