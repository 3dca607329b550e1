//! The StartupMessage pgward sends upstream when it pins a context: the
//! client's packet, byte for byte (protocol version and every parameter),
//! with the pinned settings appended and, for verified identities, `user`
//! replaced by pgward's login role.
//!
//! Why the settings go into the startup packet as well as through
//! `set_config`: a setting's *reset value* is its startup value, and
//! `RESET name`, `RESET ALL` and `DISCARD ALL` (which poolers and drivers
//! send when they recycle a connection) return to it. With the pinned values
//! as startup values those commands restore the context instead of clearing
//! it, so they can be allowed.

use bytes::{BufMut, Bytes, BytesMut};

use crate::wire::startup::StartupMessage;

/// The server refuses startup packets longer than this (Postgres'
/// MAX_STARTUP_PACKET_LENGTH).
pub const MAX_STARTUP_PACKET: usize = 10_000;

/// Build the upstream packet. Errors name the problem (a NUL in a value, a
/// packet the server would refuse as too long).
pub fn upstream_packet(
    startup: &StartupMessage,
    user: Option<&str>,
    extra: &[(String, String)],
) -> Result<Bytes, String> {
    let raw = &startup.raw;
    // length (4) + version (4) + pairs + final NUL
    let body = raw
        .get(8..raw.len().saturating_sub(1))
        .ok_or("malformed startup packet")?;
    let mut pairs: Vec<(&[u8], &[u8])> = Vec::new();
    let mut fields = body.split(|b| *b == 0);
    while let Some(k) = fields.next() {
        if k.is_empty() {
            break;
        }
        pairs.push((k, fields.next().unwrap_or(b"")));
    }
    let mut out = BytesMut::with_capacity(raw.len() + 256);
    out.put_u32(0);
    out.extend_from_slice(&raw[4..8]);
    let has_database = pairs.iter().any(|(k, _)| *k == b"database");
    for (k, v) in &pairs {
        let v = match (user, *k == b"user") {
            (Some(u), true) => u.as_bytes(),
            _ => v,
        };
        put_pair(&mut out, k, v);
    }
    if let (Some(_), false) = (user, has_database) {
        // The database defaulted to the client's user name; keep that meaning.
        put_pair(&mut out, b"database", startup.user().as_bytes());
    }
    for (name, value) in extra {
        if value.contains('\0') || name.contains('\0') {
            return Err(format!("the value of {name} contains a NUL byte"));
        }
        put_pair(&mut out, name.as_bytes(), value.as_bytes());
    }
    out.put_u8(0);
    if out.len() > MAX_STARTUP_PACKET {
        return Err(format!(
            "the pinned context makes the startup packet {} bytes, over the server's limit of {MAX_STARTUP_PACKET}",
            out.len()
        ));
    }
    let len = out.len() as u32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    Ok(out.freeze())
}

fn put_pair(out: &mut BytesMut, k: &[u8], v: &[u8]) {
    out.extend_from_slice(k);
    out.put_u8(0);
    out.extend_from_slice(v);
    out.put_u8(0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::startup::{parse_packet, StartupPacket};

    fn packet(version: u32, params: &[(&str, &str)]) -> StartupMessage {
        let mut b = BytesMut::new();
        b.put_u32(0);
        b.put_u32(version);
        for (k, v) in params {
            put_pair(&mut b, k.as_bytes(), v.as_bytes());
        }
        b.put_u8(0);
        let len = b.len() as u32;
        b[..4].copy_from_slice(&len.to_be_bytes());
        match parse_packet(b.freeze()).unwrap() {
            StartupPacket::Startup(m) => m,
            _ => panic!("not a startup message"),
        }
    }

    fn reparse(raw: Bytes) -> StartupMessage {
        match parse_packet(raw).unwrap() {
            StartupPacket::Startup(m) => m,
            _ => panic!("not a startup message"),
        }
    }

    #[test]
    fn appends_settings_and_keeps_version_and_parameters() {
        let s = packet(
            0x0003_0002,
            &[("user", "web"), ("application_name", "psql")],
        );
        let extra = vec![("app.tenant_id".to_string(), "o'brien ü".to_string())];
        let m = reparse(upstream_packet(&s, None, &extra).unwrap());
        assert_eq!((m.major, m.minor), (3, 2));
        assert_eq!(m.param("user"), Some("web"));
        assert_eq!(m.param("application_name"), Some("psql"));
        assert_eq!(m.param("app.tenant_id"), Some("o'brien ü"));
        // Nothing to add: the same bytes.
        assert_eq!(upstream_packet(&s, None, &[]).unwrap(), s.raw);
    }

    #[test]
    fn replaces_the_user_and_keeps_the_database_meaning() {
        let s = packet(0x0003_0000, &[("user", "web")]);
        let m = reparse(upstream_packet(&s, Some("rls_app"), &[]).unwrap());
        assert_eq!(m.param("user"), Some("rls_app"));
        assert_eq!(m.param("database"), Some("web"));
        let s = packet(0x0003_0000, &[("user", "web"), ("database", "shop")]);
        let m = reparse(upstream_packet(&s, Some("rls_app"), &[]).unwrap());
        assert_eq!(m.param("database"), Some("shop"));
    }

    #[test]
    fn refuses_nul_bytes_and_oversized_packets() {
        let s = packet(0x0003_0000, &[("user", "web")]);
        let nul = vec![("app.x".to_string(), "a\0b".to_string())];
        assert!(upstream_packet(&s, None, &nul).unwrap_err().contains("NUL"));
        let big = vec![("app.x".to_string(), "x".repeat(MAX_STARTUP_PACKET))];
        assert!(upstream_packet(&s, None, &big)
            .unwrap_err()
            .contains("limit"));
    }
}
