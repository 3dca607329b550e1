//! Authentication messages pgward must look into while relaying auth.

use bytes::{BufMut, BytesMut};

pub const AUTH_OK: i32 = 0;
pub const AUTH_SASL: i32 = 10;

/// The authentication code of an `R` message body.
pub fn auth_code(body: &[u8]) -> Option<i32> {
    body.get(..4)
        .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Whether this auth code means the server now waits for a client message.
pub fn expects_client_response(code: i32) -> bool {
    // 3 cleartext, 5 MD5, 7 GSS, 8 GSS continue, 9 SSPI, 10 SASL, 11 SASL continue.
    matches!(code, 3 | 5 | 7 | 8 | 9 | 10 | 11)
}

/// Rebuild an AuthenticationSASL frame without `SCRAM-SHA-256-PLUS`.
///
/// Channel binding ties SCRAM to the TLS session the client sees; that session
/// ends at pgward, so a `-PLUS` exchange could never verify upstream. Dropping
/// it lets `channel_binding=prefer` clients fall back to plain SCRAM, and makes
/// `channel_binding=require` clients fail with their own clear error.
/// Returns `None` when the list does not offer `-PLUS` (forward unchanged).
pub fn strip_channel_binding(body: &[u8]) -> Option<BytesMut> {
    let mechanisms = body.get(4..)?;
    let names: Vec<&[u8]> = mechanisms
        .split(|&b| b == 0)
        .filter(|m| !m.is_empty())
        .collect();
    if !names.iter().any(|m| m.ends_with(b"-PLUS")) {
        return None;
    }
    let mut out = BytesMut::new();
    out.put_u8(b'R');
    let len_at = out.len();
    out.put_i32(0);
    out.put_i32(AUTH_SASL);
    for m in names.iter().filter(|m| !m.ends_with(b"-PLUS")) {
        out.put_slice(m);
        out.put_u8(0);
    }
    out.put_u8(0);
    let len = (out.len() - 1) as i32;
    out[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_plus_mechanism() {
        let body = b"\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0";
        let out = strip_channel_binding(body).unwrap();
        assert_eq!(&out[..], b"R\0\0\0\x17\0\0\0\x0aSCRAM-SHA-256\0\0");
    }

    #[test]
    fn leaves_plain_list_alone() {
        assert!(strip_channel_binding(b"\0\0\0\x0aSCRAM-SHA-256\0\0").is_none());
        assert!(strip_channel_binding(b"\0\0").is_none());
    }
}
