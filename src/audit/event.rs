//! The audit event, schema version 1 (`docs/audit-events.md` documents every
//! field). One JSON object per event; the hash-chain fields `prev` and
//! `hash` are appended per sink by [`super::chain`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use super::time;

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    Statement,
    Connection,
    Auth,
    Policy,
    Alert,
}

/// One audit event. Fields that do not apply to its type are left out.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub v: u32,
    /// Unique and sortable: 13 hex digits of µs since the epoch (strictly
    /// increasing within a process) and 6 of a per-process random tag.
    pub id: String,
    /// RFC 3339 UTC with microseconds; the same instant as `id`.
    pub time: String,
    #[serde(rename = "type")]
    pub kind: EventType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_name: Option<String>,
    /// Who the client is beyond the Postgres user (JWT / certificate claims).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<BTreeMap<String, String>>,
    /// Context settings pgward pinned for the session (`app.*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement: Option<StatementInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<ConnectionInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<AlertInfo>,
    /// Hash chain (present in delivered events only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TlsInfo {
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_subject: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditVerdict {
    Allowed,
    Blocked,
    Rewritten,
    Monitored,
}

impl AuditVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditVerdict::Allowed => "allowed",
            AuditVerdict::Blocked => "blocked",
            AuditVerdict::Rewritten => "rewritten",
            AuditVerdict::Monitored => "monitored",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatementInfo {
    /// `simple` (Query), `extended` (Parse/Bind/Execute) or `function_call`.
    pub protocol: String,
    /// Statement kind as the policy names it (`select`, `delete`, …).
    pub kind: String,
    /// pgAudit class: READ, WRITE, FUNCTION, ROLE, DDL, MISC, MISC_SET.
    pub class: String,
    /// Tables read, written, truncated or dropped, schema-qualified when
    /// the statement qualified them.
    #[serde(default)]
    pub tables: Vec<String>,
    pub verdict: AuditVerdict,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The SQL as received (literals redacted unless configured otherwise).
    pub sql: String,
    /// The SQL as sent to the server, when it differs from `sql`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql_sent: Option<String>,
    /// SHA-256 (first 16 hex digits) of the normalised, literal-free SQL.
    pub fingerprint: String,
    /// Bind parameter values (only with `audit.log_parameters`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Vec<Option<String>>>,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    /// `ok`, `error`, or `skipped` (never executed: an earlier statement of
    /// the same message or pipeline failed).
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sqlstate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// From receipt of the message to its CommandComplete/ErrorResponse.
    pub duration_us: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectionInfo {
    /// `open` or `close`.
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_from_client: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_to_client: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statements: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthInfo {
    /// `success` or `failure`.
    pub result: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyInfo {
    /// `reload`.
    pub action: String,
    /// `ok` or `failed`.
    pub result: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AlertInfo {
    /// What raised it, e.g. `mass_deletion`.
    pub kind: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<u64>,
}

impl Event {
    /// A new event of `kind`, stamped now with a fresh id.
    pub fn new(kind: EventType) -> Event {
        let micros = next_micros();
        let mut id = String::with_capacity(19);
        write_id(&mut id, micros);
        Event {
            v: SCHEMA_VERSION,
            id,
            time: time::rfc3339_micros(micros),
            kind,
            session_id: None,
            client_addr: None,
            client_port: None,
            tls: None,
            user: None,
            database: None,
            application_name: None,
            identity: None,
            context: None,
            statement: None,
            connection: None,
            auth: None,
            policy: None,
            alert: None,
            prev: None,
            hash: None,
        }
    }

    /// The JSON body without chain fields.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("audit events always serialize")
    }

    /// The JSON of the fields after `type` (the session's: `session_id` …
    /// `context`), each with its leading comma; the middle part of
    /// [`statement_json`]. Serialized by serde, so it is exactly what
    /// [`Event::to_json`] writes there.
    pub fn session_fragment(&self) -> String {
        let json = self.to_json();
        // v, id and time come first and hold no quotes, so the first
        // `"type":"` is this event's; its value is a plain word.
        let Some(at) = json.find("\"type\":\"") else {
            return String::new();
        };
        let after = at + "\"type\":\"".len();
        let start = json[after..]
            .find('"')
            .map_or(json.len(), |i| after + i + 1);
        json[start..json.len() - 1].to_string()
    }
}

/// The members of a [`StatementInfo`] before `params`, borrowed, with the
/// same names and rules: constant for a statement, so a prepared statement
/// serializes them once for all its Executes (see [`statement_json`]).
#[derive(Serialize)]
pub struct StatementHead<'a> {
    pub protocol: &'a str,
    pub kind: &'a str,
    pub class: &'a str,
    pub tables: &'a [String],
    pub verdict: AuditVerdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    pub sql: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sql_sent: Option<&'a str>,
    pub fingerprint: &'a str,
}

impl StatementHead<'_> {
    /// The members as JSON without the enclosing braces.
    pub fn fragment(&self) -> String {
        let json = serde_json::to_string(self).expect("statements always serialize");
        json[1..json.len() - 1].to_string()
    }
}

impl StatementInfo {
    /// [`StatementHead::fragment`] of this statement.
    pub fn head_fragment(&self) -> String {
        StatementHead {
            protocol: &self.protocol,
            kind: &self.kind,
            class: &self.class,
            tables: &self.tables,
            verdict: self.verdict,
            rule_id: self.rule_id.as_deref(),
            reason: self.reason.as_deref(),
            sql: &self.sql,
            sql_sent: self.sql_sent.as_deref(),
            fingerprint: &self.fingerprint,
        }
        .fragment()
    }
}

/// A statement event's JSON from parts serialized earlier: `session` from
/// [`Event::session_fragment`], `head` from [`StatementHead::fragment`].
/// Byte for byte what [`Event::to_json`] writes for the same event, without
/// building (and cloning into) an [`Event`] per statement.
pub fn statement_json(
    session: &str,
    head: &str,
    params: Option<&Vec<Option<String>>>,
    outcome: &Outcome,
) -> String {
    let mut out = String::with_capacity(96 + session.len() + head.len() + 128);
    out.push_str("{\"v\":");
    let _ = write!(out, "{SCHEMA_VERSION}");
    out.push_str(",\"id\":\"");
    let micros = next_micros();
    write_id(&mut out, micros);
    out.push_str("\",\"time\":\"");
    time::write_rfc3339_micros(&mut out, micros);
    out.push_str("\",\"type\":\"statement\"");
    out.push_str(session);
    out.push_str(",\"statement\":{");
    out.push_str(head);
    let mut bytes = out.into_bytes();
    if let Some(p) = params {
        bytes.extend_from_slice(b",\"params\":");
        serde_json::to_writer(&mut bytes, p).expect("parameters always serialize");
    }
    bytes.extend_from_slice(b",\"outcome\":");
    outcome.write_json(&mut bytes);
    bytes.extend_from_slice(b"}}");
    String::from_utf8(bytes).expect("JSON built from strings is UTF-8")
}

impl Outcome {
    /// The JSON serde writes for this outcome, without its machinery: it is
    /// written once per statement event, on the session's thread.
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"status\":");
        push_json_str(out, &self.status);
        if let Some(tag) = &self.command_tag {
            out.extend_from_slice(b",\"command_tag\":");
            push_json_str(out, tag);
        }
        if let Some(rows) = self.rows {
            out.extend_from_slice(b",\"rows\":");
            push_decimal(out, rows);
        }
        if let Some(sqlstate) = &self.sqlstate {
            out.extend_from_slice(b",\"sqlstate\":");
            push_json_str(out, sqlstate);
        }
        if let Some(message) = &self.message {
            out.extend_from_slice(b",\"message\":");
            push_json_str(out, message);
        }
        out.extend_from_slice(b",\"duration_us\":");
        push_decimal(out, self.duration_us);
        out.push(b'}');
    }
}

/// `s` as a JSON string. Text with nothing to escape (no quote, backslash
/// or control character; other UTF-8 is written as is, as serde does) is
/// copied; the rest goes through serde_json.
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, s).expect("strings always serialize");
    }
}

fn push_decimal(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(decimal(v, &mut [0; 20]).as_bytes());
}

/// `v` in decimal, written into the end of `buf` (20 digits hold any u64).
pub(crate) fn decimal(mut v: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).expect("ASCII digits")
}

/// An event id: 13 hex digits of µs, 6 of the instance tag (as
/// `{:013x}{:06x}` writes them, without the formatting machinery).
fn write_id(out: &mut String, micros: i64) {
    push_hex(out, micros as u64, 13);
    push_hex(out, u64::from(instance_tag()), 6);
}

/// `v` in lower-case hex, zero-padded to at least `width` (≤ 16) digits.
fn push_hex(out: &mut String, v: u64, width: usize) {
    let digits = (64 - v.leading_zeros() as usize).div_ceil(4);
    for i in (0..digits.max(width).min(16)).rev() {
        out.push(char::from(
            b"0123456789abcdef"[((v >> (4 * i)) & 15) as usize],
        ));
    }
}

static LAST_MICROS: AtomicI64 = AtomicI64::new(0);

/// Now in µs, strictly greater than every value returned before in this
/// process, so ids are unique and sort in emission order.
fn next_micros() -> i64 {
    let now = time::now_micros();
    let mut last = LAST_MICROS.load(Ordering::Relaxed);
    loop {
        let next = now.max(last + 1);
        match LAST_MICROS.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

/// 24 random bits per process (std's randomly seeded hasher), so two pgward
/// processes writing in the same µs still mint distinct ids.
fn instance_tag() -> u32 {
    static TAG: OnceLock<u32> = OnceLock::new();
    *TAG.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        (h.finish() & 0xff_ffff) as u32
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_sortable_and_match_the_time() {
        let events: Vec<Event> = (0..1000).map(|_| Event::new(EventType::Policy)).collect();
        for pair in events.windows(2) {
            assert!(pair[0].id < pair[1].id);
            assert!(pair[0].time <= pair[1].time);
        }
        let e = &events[0];
        assert_eq!(e.id.len(), 19);
        let micros = i64::from_str_radix(&e.id[..13], 16).unwrap();
        assert_eq!(time::rfc3339_micros(micros), e.time);
    }

    fn statement(params: Option<Vec<Option<String>>>) -> StatementInfo {
        StatementInfo {
            protocol: "extended".into(),
            kind: "select".into(),
            class: "READ".into(),
            tables: vec!["public.t".into(), "u".into()],
            verdict: AuditVerdict::Monitored,
            rule_id: Some("r".into()),
            reason: Some("why \"quoted\",\"outcome\": not a member".into()),
            sql: "SELECT $1, '\\' FROM t -- é\n\"x\"".into(),
            sql_sent: Some("UPDATE \"t\"".into()),
            fingerprint: "0123456789abcdef".into(),
            params,
            outcome: Outcome {
                status: "error".into(),
                command_tag: None,
                rows: Some(3),
                sqlstate: Some("42501".into()),
                message: Some("no \"way\"".into()),
                duration_us: 17,
            },
        }
    }

    #[test]
    fn statement_json_from_fragments_is_byte_identical_to_serde() {
        let mut bare = Event::new(EventType::Statement);
        bare.session_id = Some(7);
        let mut full = bare.clone();
        full.client_addr = Some("10.0.0.1".into());
        full.client_port = Some(5432);
        full.tls = Some(TlsInfo {
            version: "TLSv1.3".into(),
            client_cert_subject: Some("CN=\"x\"".into()),
        });
        full.user = Some("alice".into());
        full.database = Some("db".into());
        full.application_name = Some("app \"1\"".into());
        full.identity = Some(BTreeMap::from([("sub".into(), "42".into())]));
        full.context = Some(BTreeMap::from([("app.tenant".into(), "t1".into())]));
        for session in [Event::new(EventType::Statement), bare, full] {
            for params in [None, Some(vec![Some("a\"b".into()), None])] {
                let mut e = session.clone();
                e.statement = Some(statement(params.clone()));
                let info = e.statement.as_ref().unwrap();
                let fast = statement_json(
                    &session.session_fragment(),
                    &info.head_fragment(),
                    params.as_ref(),
                    &info.outcome,
                );
                // Same event but for the stamp: take id and time from it.
                let back: Event = serde_json::from_str(&fast).unwrap();
                e.id = back.id;
                e.time = back.time;
                assert_eq!(fast, e.to_json());
            }
        }
    }

    #[test]
    fn outcomes_are_written_as_serde_writes_them() {
        let outcomes = [
            Outcome {
                status: "ok".into(),
                command_tag: Some("SELECT 1".into()),
                rows: Some(1),
                sqlstate: None,
                message: None,
                duration_us: 0,
            },
            Outcome {
                status: "skipped".into(),
                command_tag: None,
                rows: None,
                sqlstate: None,
                message: None,
                duration_us: u64::MAX,
            },
            Outcome {
                status: "error".into(),
                command_tag: Some("INSERT 0 18446744073709551615".into()),
                rows: Some(u64::MAX),
                sqlstate: Some("22P02".into()),
                message: Some(
                    "tab\t, \"quote\", back\\slash, nul \u{0}, bell \u{7}, del \u{7f}, é 漢 🦀"
                        .into(),
                ),
                duration_us: 1_234_567,
            },
        ];
        for o in outcomes {
            let mut fast = Vec::new();
            o.write_json(&mut fast);
            assert_eq!(
                String::from_utf8(fast).unwrap(),
                serde_json::to_string(&o).unwrap()
            );
        }
    }

    #[test]
    fn ids_are_written_as_the_format_machinery_would() {
        for micros in [0, 1, 0xfff, 1_795_000_000_123_456, i64::MAX, -1, -4096] {
            let mut id = String::new();
            write_id(&mut id, micros);
            assert_eq!(id, format!("{micros:013x}{:06x}", instance_tag()));
        }
    }

    #[test]
    fn json_leaves_out_what_does_not_apply_and_reads_back() {
        let mut e = Event::new(EventType::Auth);
        e.user = Some("alice".into());
        e.auth = Some(AuthInfo {
            result: "failure".into(),
            reason: Some("password authentication failed".into()),
        });
        let json = e.to_json();
        assert!(json.starts_with("{\"v\":1,\"id\":"), "{json}");
        assert!(
            !json.contains("statement") && !json.contains("null"),
            "{json}"
        );
        let back: Event = serde_json::from_str(&json).unwrap();
        assert_eq!(back.kind, EventType::Auth);
        assert_eq!(back.auth.unwrap().result, "failure");
    }
}
