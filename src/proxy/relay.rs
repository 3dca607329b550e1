//! The byte pump: after startup, client and server are read concurrently and
//! frames are forwarded by their header.
//!
//! Each direction writes whatever one read produced as a single write, so
//! pipelined messages stay coalesced and a Flush or a NOTIFY is forwarded the
//! moment it arrives — nothing ever waits for the other direction. Only the
//! frames `SessionSeams` asks for are buffered whole; rows and COPY data are
//! streamed through, even when a frame spans many reads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{watch, Notify};

use super::race::{Gated, Race};
use super::seams::{BackendAction, FrontendAction, SessionSeams};
use super::stream::{
    ClientReader, ClientStream, ClientWriter, UpstreamReader, UpstreamStream, UpstreamWriter,
    WriteNow,
};
use super::timer::{self, Sleep};
use super::Phase;
use crate::admin::loop_metrics;
use crate::wire::errors::{sqlstate, PgError};
use crate::wire::frame::{self, frontend};

/// Read size while traffic is interactive: one read per round trip.
const READ_CHUNK: usize = 8 * 1024;
/// Largest read size, reached while reads keep filling the buffer.
const BULK_CHUNK: usize = 64 * 1024;

/// Sizes each direction's reads. Interactive traffic reads 8 KiB at a time;
/// while reads keep filling all the room offered (COPY, large result sets)
/// the size doubles up to 64 KiB, so a bulk transfer costs an eighth of the
/// system calls. When reads come back small again the size returns to 8 KiB
/// and a drained buffer gives its memory back before the session idles.
struct ReadSizer {
    chunk: usize,
    /// Drop the allocation at the next drained point: it grew for a bulk
    /// transfer or one large frame. (An advanced `BytesMut` reports only
    /// the room after its cursor, so its size cannot be read back.)
    release: bool,
}

impl ReadSizer {
    fn new() -> Self {
        ReadSizer {
            chunk: READ_CHUNK,
            release: false,
        }
    }

    /// Make room for the next read; returns the room offered.
    fn prepare(&mut self, buf: &mut BytesMut) -> usize {
        if buf.is_empty() && self.release {
            *buf = BytesMut::with_capacity(self.chunk);
            self.release = false;
        } else if buf.is_empty() && buf.capacity() < self.chunk {
            // Drained with the cursor moved on: start again at the front of
            // the allocation (reclaimed in place, nothing to copy), so every
            // round trip reads into the same cache-warm lines instead of
            // walking through the whole buffer between reclaims.
            buf.reserve(self.chunk);
        }
        if buf.capacity() - buf.len() < self.chunk / 2 {
            buf.reserve(self.chunk);
        }
        buf.capacity() - buf.len()
    }

    /// Learn from a read of `n` bytes into `offered` bytes of room.
    fn observe(&mut self, offered: usize, n: usize) {
        if n >= offered {
            self.chunk = (self.chunk * 2).min(BULK_CHUNK);
        } else if n < offered / 4 && self.chunk > READ_CHUNK {
            self.chunk = READ_CHUNK;
            self.release = true;
        }
    }

    /// The buffer is being grown to hold a whole frame of `len` bytes.
    fn hold_frame(&mut self, len: usize) {
        self.release |= len > BULK_CHUNK;
    }
}

#[derive(Debug, Clone, Copy)]
pub struct RelayLimits {
    pub max_message_size: usize,
    pub idle_timeout: Option<Duration>,
}

/// Why a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    ClientTerminated,
    ClientClosed,
    ServerClosed,
    ClientProtocolViolation(String),
    IdleTimeout,
    /// Closed with 57P01 by a graceful shutdown.
    Shutdown,
    ClientIo(std::io::Error),
    ServerIo(std::io::Error),
}

/// Byte counters, readable after the relay ended.
#[derive(Debug, Default)]
pub struct Traffic {
    pub from_client: AtomicU64,
    pub from_server: AtomicU64,
}

/// Relay until either side ends. `client_pending`/`server_pending` are bytes
/// already read during startup that belong to the relay phase.
#[allow(clippy::too_many_arguments)]
pub async fn relay(
    client: ClientStream,
    server: UpstreamStream,
    client_pending: BytesMut,
    server_pending: BytesMut,
    seams: &Mutex<SessionSeams>,
    limits: RelayLimits,
    traffic: &Traffic,
    shutdown: watch::Receiver<Phase>,
) -> RelayEnd {
    let (client_read, mut client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    // Only the backend side writes to the client while the relay runs.
    // It keeps `client_at_boundary` true while no write is under way and
    // no frame is half sent; the side that closes the session leaves its
    // last message in `farewell`, sent after the relay only at such a
    // boundary.
    let client_at_boundary = AtomicBool::new(true);
    let farewell = Mutex::new(None);
    // While draining, the backend side wakes the frontend side at each
    // ReadyForQuery so a busy session is closed between transactions.
    // The frontend side follows the shutdown phase and keeps `draining`.
    let ready_seen = Notify::new();
    let draining = AtomicBool::new(*shutdown.borrow() == Phase::Draining);
    // Set by the frontend side when it closes the session while the backend
    // side is inside a frame: the backend side then stops at the next frame
    // boundary and leaves the 57P01 in `farewell` itself.
    let cut_at_boundary = AtomicBool::new(false);

    let end = {
        let up = std::pin::pin!(pump_frontend(
            client_read,
            server_write,
            client_pending,
            seams,
            (&client_at_boundary, &farewell),
            limits,
            traffic,
            shutdown,
            (&ready_seen, &draining, &cut_at_boundary),
        ));
        let down = std::pin::pin!(pump_backend(
            server_read,
            &mut client_write,
            server_pending,
            seams,
            (&client_at_boundary, &farewell),
            traffic,
            (&draining, &ready_seen, &cut_at_boundary),
        ));
        Race::new(up, down).await
    };
    let last = farewell.into_inner().unwrap_or_else(|p| p.into_inner());
    if let Some(bytes) = last.filter(|_| client_at_boundary.load(Ordering::Acquire)) {
        // A client that stopped reading must not hold the session open.
        let _ = timer::timeout(FAREWELL_WAIT, client_write.write_all(&bytes)).await;
    }
    let _ = client_write.flush().await;
    let _ = client_write.shutdown().await;
    end
}

/// How long the last message to a closing client may wait for room.
const FAREWELL_WAIT: Duration = Duration::from_secs(5);

/// Where the side closing the session leaves its last message to the client.
type Farewell = Mutex<Option<Vec<u8>>>;

fn say_farewell(farewell: &Farewell, bytes: Vec<u8>) {
    *farewell.lock().unwrap_or_else(|p| p.into_inner()) = Some(bytes);
}

fn lock(seams: &Mutex<SessionSeams>) -> std::sync::MutexGuard<'_, SessionSeams> {
    seams.lock().unwrap_or_else(|p| p.into_inner())
}

#[allow(clippy::too_many_arguments)]
async fn pump_frontend(
    mut reader: ClientReader,
    mut writer: UpstreamWriter,
    mut buf: BytesMut,
    seams: &Mutex<SessionSeams>,
    (client_at_boundary, farewell): (&AtomicBool, &Farewell),
    limits: RelayLimits,
    traffic: &Traffic,
    mut shutdown: watch::Receiver<Phase>,
    (ready_seen, draining, cut_at_boundary): (&Notify, &AtomicBool, &AtomicBool),
) -> RelayEnd {
    // The phase, and one wait for its next change kept across reads: a
    // fresh `changed()` per read would register with the process-wide
    // channel, under a lock every session shares, twice per round trip.
    // Gated, because even polling the pending wait takes that lock.
    let mut phase = *shutdown.borrow_and_update();
    let mut phase_change = Gated::new(Box::pin(next_phase(shutdown)));
    let mut phase_watched = true;
    // Bytes of the current frame still to stream through unexamined.
    let mut passthrough = 0usize;
    let mut sizer = ReadSizer::new();
    let tracking = lock(seams).tracking_flag();
    // Auditing follows every Execute back to its statement.
    let audit = lock(seams).audit.as_ref().map(|a| a.audit().clone());
    let span = lock(seams).span.clone();
    // The idle-timeout or drain timer, kept across reads.
    let mut wakeup: Option<Sleep> = None;
    loop {
        let mut start = 0usize;
        let mut pos = 0usize;
        let mut terminated = false;
        let mut replaced = false;
        let mut violation = None;
        while pos < buf.len() {
            if passthrough > 0 {
                let n = passthrough.min(buf.len() - pos);
                pos += n;
                passthrough -= n;
                continue;
            }
            let header = match frame::parse_header(&buf[pos..], limits.max_message_size) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => {
                    violation = Some(e.to_string());
                    break;
                }
            };
            if SessionSeams::wants_frontend(header.tag)
                || ((audit.is_some() || tracking.load(Ordering::Relaxed))
                    && SessionSeams::wants_tracked_frontend(header.tag))
            {
                if buf.len() - pos < header.frame_len {
                    sizer.hold_frame(header.frame_len);
                    buf.reserve(header.frame_len - (buf.len() - pos));
                    break;
                }
                let body = &buf[pos + frame::Header::SIZE..pos + header.frame_len];
                let action = lock(seams).on_frontend(header.tag, body);
                match action {
                    FrontendAction::Forward => pos += header.frame_len,
                    FrontendAction::Replace(bytes) => {
                        if let Err(e) = write_pair(&mut writer, &buf[start..pos], &bytes).await {
                            return RelayEnd::ServerIo(e);
                        }
                        pos += header.frame_len;
                        start = pos;
                        replaced = true;
                    }
                }
            } else if header.tag == frontend::TERMINATE {
                pos += header.frame_len;
                passthrough = 0;
                terminated = true;
                break;
            } else {
                passthrough = header.frame_len;
            }
        }
        if start < pos || replaced {
            if let Err(e) = write_flush(&mut writer, &buf[start..pos]).await {
                return RelayEnd::ServerIo(e);
            }
            traffic
                .from_client
                .fetch_add((pos - start) as u64, Ordering::Relaxed);
            loop_metrics::client_bytes_received((pos - start) as u64);
        }
        buf.advance(pos);
        if let Some(audit) = &audit {
            queue_audit_events(seams, audit).await;
        }
        if terminated {
            let _ = writer.flush().await;
            return RelayEnd::ClientTerminated;
        }
        if let Some(reason) = violation {
            tracing::warn!(parent: &span, %reason, "closing session: protocol violation from client");
            // Stop the server cleanly: we are at a frame boundary upstream.
            let _ = writer.write_all(b"X\0\0\0\x04").await;
            let err = PgError::fatal(sqlstate::PROTOCOL_VIOLATION, format!("pgward: {reason}"));
            say_farewell(farewell, err.to_bytes().to_vec());
            return RelayEnd::ClientProtocolViolation(reason);
        }

        let offered = sizer.prepare(&mut buf);
        let read = loop {
            let at_boundary = buf.is_empty() && passthrough == 0;
            if phase == Phase::Closing || (phase == Phase::Draining && at_boundary) {
                // Draining closes a session only at an idle point: outside a
                // transaction, nothing outstanding, between client frames.
                let idle = lock(seams).idle_since().is_some();
                if phase == Phase::Closing || idle {
                    return close_for_shutdown(
                        &mut writer,
                        (client_at_boundary, farewell),
                        cut_at_boundary,
                        at_boundary,
                        &span,
                    )
                    .await;
                }
            }
            let idle_limit = limits.idle_timeout.filter(|_| at_boundary);
            // While the server is busy or a transaction is open there is no
            // idle clock; look again after one period.
            let idle_deadline = idle_limit.map(|limit| {
                let idle_since = lock(seams).idle_since();
                idle_since.unwrap_or_else(Instant::now) + limit
            });
            // While draining, look for the idle point a reply creates.
            let drain_tick =
                (phase == Phase::Draining).then(|| Instant::now() + Duration::from_millis(50));
            let wake = match (idle_deadline, drain_tick) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            // The armed timer is kept while it is not later than needed: a
            // timer that fires early only makes the branch below look again.
            // So an idle timeout arms one timer per idle period, not one per
            // round trip.
            match (wake, &wakeup) {
                (None, _) => wakeup = None,
                (Some(at), Some(armed)) if armed.deadline() <= at => {}
                (Some(at), _) => wakeup = Some(timer::sleep_until(at)),
            }
            // Reads first: the other branches are looked at when the
            // socket has nothing (and a flood still yields to them when the
            // task's cooperative budget runs out).
            tokio::select! {
                biased;
                r = reader.read_buf(&mut buf) => break r,
                changed = &mut phase_change, if phase_watched => match changed {
                    Some((next, rx)) => {
                        phase = next;
                        draining.store(next == Phase::Draining, Ordering::Relaxed);
                        phase_change.replace(Box::pin(next_phase(rx)));
                    }
                    // The proxy is gone; nothing will signal again.
                    None => phase_watched = false,
                },
                _ = ready_seen.notified(), if phase == Phase::Draining => {}
                _ = wake_at(&mut wakeup), if wakeup.is_some() => {
                    wakeup = None;
                    let Some(limit) = idle_limit else { continue };
                    let idle_for = lock(seams).idle_since().map(|t| t.elapsed());
                    if idle_for.is_some_and(|d| d >= limit) {
                        let _ = writer.write_all(b"X\0\0\0\x04").await;
                        let err = PgError::fatal(
                            sqlstate::IDLE_SESSION_TIMEOUT,
                            "terminating connection due to idle-session timeout (pgward timeouts.idle_secs)",
                        );
                        say_farewell(farewell, err.to_bytes().to_vec());
                        return RelayEnd::IdleTimeout;
                    }
                }
            }
        };
        match read {
            Ok(0) => return RelayEnd::ClientClosed,
            Ok(n) => sizer.observe(offered, n),
            Err(e) => return RelayEnd::ClientIo(e),
        }
    }
}

/// The next shutdown phase, with the receiver to wait for the one after;
/// `None` once the sender is gone.
async fn next_phase(mut rx: watch::Receiver<Phase>) -> Option<(Phase, watch::Receiver<Phase>)> {
    rx.changed().await.ok()?;
    let phase = *rx.borrow_and_update();
    Some((phase, rx))
}

async fn wake_at(timer: &mut Option<Sleep>) {
    match timer {
        Some(sleep) => sleep.await,
        None => std::future::pending().await,
    }
}

fn admin_shutdown_error() -> Vec<u8> {
    PgError::fatal(
        sqlstate::ADMIN_SHUTDOWN,
        "terminating connection due to administrator command",
    )
    .with_detail("pgward is shutting down")
    .to_bytes()
    .to_vec()
}

/// End a session for a shutdown: Terminate upstream (when between frames
/// there), then 57P01 to the client — only between backend frames: if a
/// frame is streaming, the backend side stops at its end first.
async fn close_for_shutdown(
    writer: &mut UpstreamWriter,
    (client_at_boundary, farewell): (&AtomicBool, &Farewell),
    cut_at_boundary: &AtomicBool,
    upstream_at_boundary: bool,
    span: &tracing::Span,
) -> RelayEnd {
    if upstream_at_boundary {
        let _ = writer.write_all(b"X\0\0\0\x04").await;
        let _ = writer.flush().await;
    }
    // The backend side is parked at an await (both sides run in one task):
    // between frames it stays there; inside a frame or a write it finishes
    // and stops at the frame's end. Either way the relay sends the 57P01.
    if client_at_boundary.load(Ordering::Acquire) {
        say_farewell(farewell, admin_shutdown_error());
        return RelayEnd::Shutdown;
    }
    cut_at_boundary.store(true, Ordering::Release);
    // The relay ends when the backend side has cut; this is the backstop
    // for a server that stops sending in the middle of a frame.
    timer::sleep(Duration::from_secs(5)).await;
    tracing::warn!(parent: span, "closing mid-frame: no frame boundary toward the client within 5 s");
    RelayEnd::Shutdown
}

/// Write and flush: TLS streams hold written bytes until flushed.
async fn write_flush<W: AsyncWrite + WriteNow + Unpin>(
    w: &mut W,
    bytes: &[u8],
) -> std::io::Result<()> {
    // Most writes fit the socket's room at once; the rest (a full socket
    // buffer, TLS) go through `write_all`.
    let attempt = if bytes.is_empty() {
        None
    } else {
        w.write_now(bytes)
    };
    let sent = match attempt {
        Some(Ok(n)) => n,
        Some(Err(e)) if !retry_with_write_all(&e) => return Err(e),
        _ => 0,
    };
    if sent < bytes.len() {
        w.write_all(&bytes[sent..]).await?;
    }
    w.flush().await
}

fn retry_with_write_all(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
    )
}

async fn write_pair<W: AsyncWrite + Unpin>(w: &mut W, a: &[u8], b: &[u8]) -> std::io::Result<()> {
    if !a.is_empty() {
        w.write_all(a).await?;
    }
    w.write_all(b).await
}

/// Queue the events the seams produced, outside the lock: under
/// `on_full = "block"` this is where a session waits for the sinks.
async fn queue_audit_events(seams: &Mutex<SessionSeams>, audit: &crate::audit::Audit) {
    let events = match lock(seams).audit.as_deref_mut() {
        Some(a) => a.take_events(),
        None => return,
    };
    for (kind, json) in events {
        audit.emit_json(kind, json).await;
    }
}

async fn pump_backend(
    mut reader: UpstreamReader,
    client_write: &mut ClientWriter,
    mut buf: BytesMut,
    seams: &Mutex<SessionSeams>,
    (client_at_boundary, farewell): (&AtomicBool, &Farewell),
    traffic: &Traffic,
    (draining, ready_seen, cut_at_boundary): (&AtomicBool, &Notify, &AtomicBool),
) -> RelayEnd {
    let mut passthrough = 0usize;
    let mut sizer = ReadSizer::new();
    let audit = lock(seams).audit.as_ref().map(|a| a.audit().clone());
    let span = lock(seams).span.clone();
    loop {
        let mut start = 0usize;
        let mut pos = 0usize;
        let mut saw_ready = false;
        let mut replaced: Vec<(usize, usize, bytes::Bytes)> = Vec::new();
        while pos < buf.len() {
            if passthrough > 0 {
                let n = passthrough.min(buf.len() - pos);
                pos += n;
                passthrough -= n;
                continue;
            }
            if cut_at_boundary.load(Ordering::Acquire) {
                break;
            }
            // The server is trusted to frame correctly; only the i32 range is checked.
            let header = match frame::parse_header(&buf[pos..], i32::MAX as usize) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => {
                    tracing::error!(parent: &span, error = %e, "upstream sent an invalid frame; closing session");
                    return RelayEnd::ServerIo(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        e.to_string(),
                    ));
                }
            };
            if SessionSeams::wants_backend(header.tag) {
                if buf.len() - pos < header.frame_len {
                    sizer.hold_frame(header.frame_len);
                    buf.reserve(header.frame_len - (buf.len() - pos));
                    break;
                }
                let body = &buf[pos + frame::Header::SIZE..pos + header.frame_len];
                saw_ready |= header.tag == crate::wire::frame::backend::READY_FOR_QUERY;
                match lock(seams).on_backend(header.tag, body) {
                    BackendAction::Forward => {}
                    BackendAction::Replace(bytes) => {
                        replaced.push((pos, pos + header.frame_len, bytes))
                    }
                }
                pos += header.frame_len;
            } else {
                passthrough = header.frame_len;
            }
        }
        if start < pos {
            client_at_boundary.store(false, Ordering::Release);
            let mut result = Ok(());
            for (from, to, bytes) in &replaced {
                result = write_pair(client_write, &buf[start..*from], bytes).await;
                if result.is_err() {
                    break;
                }
                start = *to;
            }
            if result.is_ok() {
                result = write_flush(client_write, &buf[start..pos]).await;
            }
            if let Err(e) = result {
                return RelayEnd::ClientIo(e);
            }
            traffic.from_server.fetch_add(pos as u64, Ordering::Relaxed);
            loop_metrics::client_bytes_sent(pos as u64);
            client_at_boundary.store(passthrough == 0, Ordering::Release);
            if saw_ready && draining.load(Ordering::Relaxed) {
                ready_seen.notify_one();
            }
        }
        if passthrough == 0 && cut_at_boundary.load(Ordering::Acquire) {
            // Everything read so far is written: the relay sends the 57P01.
            say_farewell(farewell, admin_shutdown_error());
            return RelayEnd::Shutdown;
        }
        buf.advance(pos);
        if let Some(audit) = &audit {
            queue_audit_events(seams, audit).await;
        }
        let offered = sizer.prepare(&mut buf);
        match reader.read_buf(&mut buf).await {
            Ok(0) => return RelayEnd::ServerClosed,
            Ok(n) => sizer.observe(offered, n),
            Err(e) => return RelayEnd::ServerIo(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_grow_while_they_fill_and_shrink_when_traffic_calms() {
        let mut sizer = ReadSizer::new();
        let mut buf = BytesMut::new();
        let mut offered = sizer.prepare(&mut buf);
        assert!((READ_CHUNK / 2..=2 * READ_CHUNK).contains(&offered));
        for _ in 0..10 {
            // A read fills the room, the relay forwards and drains it.
            buf.resize(buf.len() + offered, 0);
            sizer.observe(offered, offered);
            buf.advance(buf.len());
            offered = sizer.prepare(&mut buf);
        }
        assert_eq!(sizer.chunk, BULK_CHUNK);
        assert!(offered >= BULK_CHUNK / 2);
        // A small read: back to interactive size, memory released once drained.
        buf.resize(10, 0);
        sizer.observe(offered, 10);
        assert_eq!(sizer.chunk, READ_CHUNK);
        buf.advance(10);
        let offered = sizer.prepare(&mut buf);
        assert!(offered <= 2 * READ_CHUNK, "{offered}");
        // A buffer holding part of a large frame is kept until drained.
        sizer.hold_frame(10 * BULK_CHUNK);
        buf.extend_from_slice(&[1; 100]);
        sizer.prepare(&mut buf);
        assert_eq!(&buf[..], &[1; 100][..]);
        buf.advance(100);
        assert!(sizer.prepare(&mut buf) <= 2 * READ_CHUNK);
    }

    #[test]
    fn a_drained_buffer_reads_into_the_same_bytes_again() {
        let mut sizer = ReadSizer::new();
        let mut buf = BytesMut::new();
        sizer.prepare(&mut buf);
        let front = buf.as_ptr();
        for n in [5, 300, 2000, 7000] {
            buf.extend_from_slice(&vec![7; n]);
            buf.advance(n);
            sizer.observe(READ_CHUNK, n);
            let offered = sizer.prepare(&mut buf);
            assert_eq!(buf.as_ptr(), front, "after a read of {n}");
            assert!(offered >= READ_CHUNK);
        }
        // Bytes still held stay where they are.
        buf.extend_from_slice(b"half a frame");
        buf.advance(5);
        sizer.prepare(&mut buf);
        assert_eq!(&buf[..], b"a frame");
    }
}
