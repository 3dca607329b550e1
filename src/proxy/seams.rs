//! The observation points the relay offers to policy, identity and audit.
//!
//! The relay hands this type only the frames it must: Query and Parse going up;
//! CommandComplete, ErrorResponse, ReadyForQuery and ParameterStatus coming
//! down. Everything else is forwarded by header without being looked at.
//! A `SessionSeams` is shared by the two directions of one session behind a
//! mutex that is never held across an `.await`, so it is never contended for
//! long.

use std::collections::HashMap;

use bytes::Bytes;

use crate::wire::frame::{self, backend, frontend};

/// What to do with a frontend frame.
#[derive(Debug)]
pub enum FrontendAction {
    Forward,
    /// Send these bytes upstream instead of the frame.
    Replace(Bytes),
}

/// What to do with a backend frame.
#[derive(Debug)]
pub enum BackendAction {
    Forward,
    /// Send these bytes to the client instead of the frame.
    Replace(Bytes),
}

/// Per-session protocol state that later stages (policy, audit) build on.
#[derive(Debug)]
pub struct SessionSeams {
    /// Transaction status from the last ReadyForQuery: `I`, `T` or `E`.
    pub transaction_status: u8,
    /// The server's current ParameterStatus values (client_encoding,
    /// standard_conforming_strings, …).
    pub server_params: HashMap<String, String>,
    /// Statements sent (Query and Parse messages).
    pub statements: u64,
    /// ErrorResponses relayed.
    pub errors: u64,
    /// The last CommandComplete tag.
    pub last_command_tag: Option<String>,
}

impl Default for SessionSeams {
    fn default() -> Self {
        SessionSeams {
            transaction_status: b'I',
            server_params: HashMap::new(),
            statements: 0,
            errors: 0,
            last_command_tag: None,
        }
    }
}

impl SessionSeams {
    /// Called with every Query and Parse frame before it is forwarded.
    pub fn on_frontend(&mut self, tag: u8, body: &[u8]) -> FrontendAction {
        match tag {
            frontend::QUERY => {
                self.statements += 1;
                if let Ok(sql) = frame::query_text(body) {
                    tracing::trace!(sql, "query");
                }
            }
            frontend::PARSE => {
                self.statements += 1;
                if let Ok((name, sql)) = frame::parse_text(body) {
                    tracing::trace!(statement = name, sql, "parse");
                }
            }
            _ => {}
        }
        FrontendAction::Forward
    }

    /// Called with every CommandComplete, ErrorResponse, ReadyForQuery and
    /// ParameterStatus frame before it is forwarded.
    pub fn on_backend(&mut self, tag: u8, body: &[u8]) -> BackendAction {
        match tag {
            backend::READY_FOR_QUERY => {
                if let Some(status) = frame::ready_status(body) {
                    self.transaction_status = status;
                }
            }
            backend::PARAMETER_STATUS => {
                if let Some((name, value)) = frame::parameter_status(body) {
                    self.server_params.insert(
                        String::from_utf8_lossy(name).into_owned(),
                        String::from_utf8_lossy(value).into_owned(),
                    );
                }
            }
            backend::COMMAND_COMPLETE => {
                if let Some((tag, _)) = frame::read_cstr(body) {
                    self.last_command_tag = Some(String::from_utf8_lossy(tag).into_owned());
                }
            }
            backend::ERROR_RESPONSE => self.errors += 1,
            _ => {}
        }
        BackendAction::Forward
    }

    /// Whether the backend frame type is one the seams want to see whole.
    pub fn wants_backend(tag: u8) -> bool {
        matches!(
            tag,
            backend::COMMAND_COMPLETE
                | backend::ERROR_RESPONSE
                | backend::READY_FOR_QUERY
                | backend::PARAMETER_STATUS
        )
    }

    /// Whether the frontend frame type is one the seams want to see whole.
    pub fn wants_frontend(tag: u8) -> bool {
        matches!(tag, frontend::QUERY | frontend::PARSE)
    }
}
