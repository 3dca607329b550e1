//! Regular (post-startup) message framing: one type byte, an int32 length that
//! counts itself, then the body.

/// Frontend message type bytes that pgward looks at.
pub mod frontend {
    pub const QUERY: u8 = b'Q';
    pub const PARSE: u8 = b'P';
    pub const SYNC: u8 = b'S';
    pub const FLUSH: u8 = b'H';
    pub const TERMINATE: u8 = b'X';
    pub const FUNCTION_CALL: u8 = b'F';
    pub const CLOSE: u8 = b'C';
    pub const PASSWORD: u8 = b'p';
    pub const BIND: u8 = b'B';
    pub const EXECUTE: u8 = b'E';
}

/// Backend message type bytes that pgward looks at.
pub mod backend {
    pub const AUTHENTICATION: u8 = b'R';
    pub const BACKEND_KEY_DATA: u8 = b'K';
    pub const COMMAND_COMPLETE: u8 = b'C';
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const NOTICE_RESPONSE: u8 = b'N';
    pub const PARAMETER_STATUS: u8 = b'S';
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const PORTAL_SUSPENDED: u8 = b's';
    pub const EMPTY_QUERY: u8 = b'I';
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
}

/// A validated frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub tag: u8,
    /// Whole frame size on the wire: 1 (tag) + the length field's value.
    pub frame_len: usize,
}

impl Header {
    pub const SIZE: usize = 5;

    pub fn body_len(&self) -> usize {
        self.frame_len - Self::SIZE
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("invalid message length {len} for message type {tag:?}")]
    BadLength { tag: char, len: i64 },
    #[error("message type {tag:?} of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge { tag: char, len: usize, limit: usize },
}

/// Parse a header from the first 5 bytes of `buf`, if they are buffered.
/// `limit` caps the frame length (the length field's value).
pub fn parse_header(buf: &[u8], limit: usize) -> Result<Option<Header>, FrameError> {
    if buf.len() < Header::SIZE {
        return Ok(None);
    }
    let tag = buf[0];
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(FrameError::BadLength {
            tag: tag as char,
            len: len as i64,
        });
    }
    let len = len as usize;
    if len > limit {
        return Err(FrameError::TooLarge {
            tag: tag as char,
            len,
            limit,
        });
    }
    Ok(Some(Header {
        tag,
        frame_len: len + 1,
    }))
}

/// Split a NUL-terminated string off the front of `body`.
pub fn read_cstr(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = memchr::memchr(0, body)?;
    Some((&body[..end], &body[end + 1..]))
}

/// The body of a `Query` message as text: it must be exactly one
/// NUL-terminated string of valid UTF-8 (a NUL inside the text would let the
/// server and a lossy decoder see different statements).
pub fn query_text(body: &[u8]) -> Result<&str, &'static str> {
    let (text, rest) = read_cstr(body).ok_or("Query message is not NUL-terminated")?;
    if !rest.is_empty() {
        return Err("Query message contains a NUL byte inside its text");
    }
    std::str::from_utf8(text).map_err(|_| "Query message text is not valid UTF-8")
}

/// Statement name and text of a `Parse` message body.
pub fn parse_text(body: &[u8]) -> Result<(&str, &str), &'static str> {
    let (name, rest) = read_cstr(body).ok_or("Parse message has no statement name")?;
    let (text, rest) = read_cstr(rest).ok_or("Parse message has no query text")?;
    if rest.len() < 2 {
        return Err("Parse message is truncated");
    }
    let n = i16::from_be_bytes([rest[0], rest[1]]);
    if n < 0 || rest.len() != 2 + 4 * n as usize {
        return Err("Parse message has a malformed parameter type list");
    }
    let name = std::str::from_utf8(name).map_err(|_| "statement name is not valid UTF-8")?;
    let text = std::str::from_utf8(text).map_err(|_| "Parse query text is not valid UTF-8")?;
    Ok((name, text))
}

/// The transaction status byte of a ReadyForQuery body.
pub fn ready_status(body: &[u8]) -> Option<u8> {
    match body {
        [s @ (b'I' | b'T' | b'E')] => Some(*s),
        _ => None,
    }
}

/// A field (by its one-byte code) of an ErrorResponse/NoticeResponse body.
pub fn error_field(body: &[u8], code: u8) -> Option<&[u8]> {
    let mut rest = body;
    while let Some((&c, tail)) = rest.split_first() {
        if c == 0 {
            return None;
        }
        let (value, tail) = read_cstr(tail)?;
        if c == code {
            return Some(value);
        }
        rest = tail;
    }
    None
}

/// Name and value of a ParameterStatus body.
pub fn parameter_status(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let (name, rest) = read_cstr(body)?;
    let (value, _) = read_cstr(rest)?;
    Some((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_needs_five_bytes() {
        assert_eq!(parse_header(b"Q\0\0", 100), Ok(None));
    }

    #[test]
    fn negative_and_short_lengths_are_rejected() {
        assert!(matches!(
            parse_header(&[b'Q', 0xff, 0xff, 0xff, 0xff], 100),
            Err(FrameError::BadLength { len: -1, .. })
        ));
        assert!(parse_header(&[b'Q', 0, 0, 0, 3], 100).is_err());
    }

    #[test]
    fn oversized_lengths_are_rejected() {
        assert!(matches!(
            parse_header(&[b'd', 0x7f, 0xff, 0xff, 0xff], 1 << 20),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn query_with_embedded_nul_is_refused() {
        assert!(query_text(b"select 1\0; drop table t\0").is_err());
        assert_eq!(query_text(b"select 1\0"), Ok("select 1"));
        assert!(query_text(b"select 1").is_err());
        assert!(query_text(b"\xff\0").is_err());
    }

    #[test]
    fn parse_body_is_validated() {
        assert_eq!(
            parse_text(b"s1\0select $1\0\0\x01\0\0\0\x17"),
            Ok(("s1", "select $1"))
        );
        assert!(parse_text(b"s1\0select $1\0\0\x05\0\0\0\x17").is_err());
        assert!(parse_text(b"s1\0select").is_err());
        assert!(parse_text(b"s1\0select\0\xff\xff").is_err());
    }

    #[test]
    fn error_fields_are_found() {
        let body = b"SERROR\0C42501\0Mno\0\0";
        assert_eq!(error_field(body, b'C'), Some(&b"42501"[..]));
        assert_eq!(error_field(body, b'D'), None);
        assert_eq!(error_field(b"Cunterminated", b'C'), None);
    }
}
