//! A tiny raw PostgreSQL frontend for the wire-level tests: its own encoder
//! for frontend messages, a frame reader, and cleartext-password startup.
//!
//! Include with `mod rawpg;`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A backend message: its type byte and body (length prefix stripped).
pub type Msg = (u8, Vec<u8>);

/// Default time to wait for any single backend message.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a read did not produce a message.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadEnd {
    /// Orderly close (or reset) by the peer.
    Closed,
    /// Nothing arrived in time.
    Timeout,
}

pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

// ---- frontend encoders -------------------------------------------------

/// A typed frontend message.
pub fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(tag);
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// A StartupMessage with the given protocol version code and parameters.
pub fn startup_packet(version: u32, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = version.to_be_bytes().to_vec();
    for (k, v) in params {
        cstr(&mut body, k);
        cstr(&mut body, v);
    }
    body.push(0);
    let mut out = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    out.extend(body);
    out
}

/// A startup-phase request with just a code (SSLRequest, GSSENCRequest).
pub fn code_packet(code: u32) -> Vec<u8> {
    let mut out = 8i32.to_be_bytes().to_vec();
    out.extend_from_slice(&code.to_be_bytes());
    out
}

pub const SSL_REQUEST: u32 = 80_877_103;
pub const GSSENC_REQUEST: u32 = 80_877_104;
pub const CANCEL_REQUEST: u32 = 80_877_102;
pub const PROTOCOL_3_0: u32 = 196_608;

pub fn cancel_packet(pid: u32, secret: u32) -> Vec<u8> {
    let mut out = 16i32.to_be_bytes().to_vec();
    out.extend_from_slice(&CANCEL_REQUEST.to_be_bytes());
    out.extend_from_slice(&pid.to_be_bytes());
    out.extend_from_slice(&secret.to_be_bytes());
    out
}

pub fn query(sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, sql);
    msg(b'Q', &b)
}

pub fn parse(name: &str, sql: &str, types: &[u32]) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, name);
    cstr(&mut b, sql);
    b.extend_from_slice(&(types.len() as i16).to_be_bytes());
    for t in types {
        b.extend_from_slice(&t.to_be_bytes());
    }
    msg(b'P', &b)
}

/// Bind with all parameters and results in text format.
pub fn bind(portal: &str, stmt: &str, params: &[Option<&str>]) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal);
    cstr(&mut b, stmt);
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        match p {
            Some(v) => {
                b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                b.extend_from_slice(v.as_bytes());
            }
            None => b.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    b.extend_from_slice(&0i16.to_be_bytes());
    msg(b'B', &b)
}

/// Describe a statement (`b'S'`) or portal (`b'P'`).
pub fn describe(kind: u8, name: &str) -> Vec<u8> {
    let mut b = vec![kind];
    cstr(&mut b, name);
    msg(b'D', &b)
}

pub fn execute(portal: &str, max_rows: i32) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal);
    b.extend_from_slice(&max_rows.to_be_bytes());
    msg(b'E', &b)
}

pub fn close(kind: u8, name: &str) -> Vec<u8> {
    let mut b = vec![kind];
    cstr(&mut b, name);
    msg(b'C', &b)
}

pub fn sync() -> Vec<u8> {
    msg(b'S', &[])
}

pub fn flush() -> Vec<u8> {
    msg(b'H', &[])
}

pub fn terminate() -> Vec<u8> {
    msg(b'X', &[])
}

pub fn copy_data(data: &[u8]) -> Vec<u8> {
    msg(b'd', data)
}

pub fn copy_done() -> Vec<u8> {
    msg(b'c', &[])
}

pub fn copy_fail(reason: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, reason);
    msg(b'f', &b)
}

/// FunctionCall with text-format arguments and a text-format result.
pub fn function_call(oid: u32, args: &[&str]) -> Vec<u8> {
    let mut b = oid.to_be_bytes().to_vec();
    b.extend_from_slice(&1i16.to_be_bytes());
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&(args.len() as i16).to_be_bytes());
    for a in args {
        b.extend_from_slice(&(a.len() as i32).to_be_bytes());
        b.extend_from_slice(a.as_bytes());
    }
    b.extend_from_slice(&0i16.to_be_bytes());
    msg(b'F', &b)
}

/// Concatenate encoded messages into one write.
pub fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

// ---- backend message helpers -------------------------------------------

/// A field of an ErrorResponse/NoticeResponse body.
pub fn error_field(body: &[u8], code: u8) -> Option<String> {
    let mut rest = body;
    while let Some((&c, tail)) = rest.split_first() {
        if c == 0 {
            return None;
        }
        let end = tail.iter().position(|&b| b == 0)?;
        if c == code {
            return Some(String::from_utf8_lossy(&tail[..end]).into_owned());
        }
        rest = &tail[end + 1..];
    }
    None
}

/// SQLSTATE of the first ErrorResponse in `msgs`.
pub fn first_error(msgs: &[Msg]) -> Option<(String, String)> {
    msgs.iter().find(|(t, _)| *t == b'E').map(|(_, b)| {
        (
            error_field(b, b'S').unwrap_or_default(),
            error_field(b, b'C').unwrap_or_default(),
        )
    })
}

/// Text columns of every DataRow in `msgs`.
pub fn data_rows(msgs: &[Msg]) -> Vec<Vec<Option<String>>> {
    msgs.iter()
        .filter(|(t, _)| *t == b'D')
        .map(|(_, b)| {
            let n = i16::from_be_bytes([b[0], b[1]]) as usize;
            let mut pos = 2;
            let mut row = Vec::with_capacity(n);
            for _ in 0..n {
                let len = i32::from_be_bytes([b[pos], b[pos + 1], b[pos + 2], b[pos + 3]]);
                pos += 4;
                if len < 0 {
                    row.push(None);
                } else {
                    let len = len as usize;
                    row.push(Some(
                        String::from_utf8_lossy(&b[pos..pos + len]).into_owned(),
                    ));
                    pos += len;
                }
            }
            row
        })
        .collect()
}

/// Process id from a BackendKeyData body.
pub fn backend_pid(msgs: &[Msg]) -> Option<u32> {
    msgs.iter()
        .find(|(t, _)| *t == b'K')
        .map(|(_, b)| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// A readable rendering for assertion messages.
pub fn show(msgs: &[Msg]) -> String {
    msgs.iter()
        .map(|(t, b)| format!("{}:{}", *t as char, String::from_utf8_lossy(b)))
        .collect::<Vec<_>>()
        .join("\n")
}

// ---- the connection ----------------------------------------------------

impl Raw {
    pub async fn connect_tcp(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).await.expect("tcp connect");
        stream.set_nodelay(true).unwrap();
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    /// Connect and authenticate with a cleartext password; returns the
    /// connection and every message up to and including ReadyForQuery.
    pub async fn connect(
        addr: SocketAddr,
        user: &str,
        password: &str,
        db: &str,
    ) -> (Raw, Vec<Msg>) {
        let mut raw = Raw::connect_tcp(addr).await;
        let msgs = raw.startup(user, password, db).await;
        (raw, msgs)
    }

    /// Run the startup and cleartext authentication on an open connection.
    pub async fn startup(&mut self, user: &str, password: &str, db: &str) -> Vec<Msg> {
        self.send(&startup_packet(
            PROTOCOL_3_0,
            &[("user", user), ("database", db)],
        ))
        .await;
        let mut out = Vec::new();
        loop {
            let m = self.read_msg().await.expect("startup reply");
            let (tag, body) = (m.0, m.1.clone());
            out.push(m);
            match tag {
                b'R' => {
                    let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                    match code {
                        0 => {}
                        3 => {
                            let mut b = Vec::new();
                            cstr(&mut b, password);
                            self.send(&msg(b'p', &b)).await;
                        }
                        other => panic!("unsupported auth request {other}"),
                    }
                }
                b'E' => panic!("startup failed: {}", show(&out)),
                b'Z' => return out,
                _ => {}
            }
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Write, ignoring errors (the peer may already have closed).
    pub async fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// One backend message, waiting at most `limit`.
    pub async fn read_msg_within(&mut self, limit: Duration) -> Result<Msg, ReadEnd> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if self.buf.len() >= 5 {
                let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
                assert!(len >= 4, "backend sent invalid length {len}");
                let total = len as usize + 1;
                if self.buf.len() >= total {
                    let tag = self.buf[0];
                    let body = self.buf[5..total].to_vec();
                    self.buf.drain(..total);
                    return Ok((tag, body));
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Err(ReadEnd::Timeout),
                Ok(Ok(0)) | Ok(Err(_)) => return Err(ReadEnd::Closed),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    pub async fn read_msg(&mut self) -> Result<Msg, ReadEnd> {
        self.read_msg_within(READ_TIMEOUT).await
    }

    /// Messages until ReadyForQuery (included). Panics on close or timeout.
    pub async fn until_ready(&mut self) -> Vec<Msg> {
        let mut out = Vec::new();
        loop {
            match self.read_msg().await {
                Ok(m) => {
                    let done = m.0 == b'Z';
                    out.push(m);
                    if done {
                        return out;
                    }
                }
                Err(e) => panic!("{e:?} before ReadyForQuery; got:\n{}", show(&out)),
            }
        }
    }

    /// Messages until the connection closes (or `limit` passes: panics).
    pub async fn until_closed(&mut self, limit: Duration) -> Vec<Msg> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read_msg_within(left).await {
                Ok(m) => out.push(m),
                Err(ReadEnd::Closed) => return out,
                Err(ReadEnd::Timeout) => {
                    panic!(
                        "connection not closed within {limit:?}; got:\n{}",
                        show(&out)
                    )
                }
            }
        }
    }

    /// Raw bytes until close, for the startup phase where replies are untyped.
    pub async fn raw_until_closed(&mut self, limit: Duration) -> Result<Vec<u8>, Vec<u8>> {
        let mut out = std::mem::take(&mut self.buf);
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Err(out),
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(out),
                Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Exactly one byte (the answer to SSLRequest/GSSENCRequest).
    pub async fn read_byte(&mut self) -> u8 {
        let mut b = [0u8; 1];
        tokio::time::timeout(READ_TIMEOUT, self.stream.read_exact(&mut b))
            .await
            .expect("byte in time")
            .expect("read byte");
        b[0]
    }

    /// Simple query, returning the messages up to ReadyForQuery.
    pub async fn simple(&mut self, sql: &str) -> Vec<Msg> {
        self.send(&query(sql)).await;
        self.until_ready().await
    }
}
