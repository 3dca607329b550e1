//! The two kinds of byte stream a session holds, each plain or TLS.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::{tcp, unix, TcpStream, UnixStream};

/// The client side: TCP, possibly upgraded to TLS after an SSLRequest.
pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl ClientStream {
    pub fn is_tls(&self) -> bool {
        matches!(self, ClientStream::Tls(_))
    }

    /// Negotiated TLS version, for logs and audit.
    pub fn tls_version(&self) -> Option<String> {
        match self {
            ClientStream::Tls(s) => s.get_ref().1.protocol_version().map(|v| format!("{v:?}")),
            ClientStream::Plain(_) => None,
        }
    }

    /// The client's verified certificate (DER), when it presented one.
    pub fn peer_certificate(&self) -> Option<Vec<u8>> {
        match self {
            ClientStream::Tls(s) => s
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.as_ref().to_vec()),
            ClientStream::Plain(_) => None,
        }
    }
}

/// The server side: TCP, TCP+TLS, or a unix socket.
pub enum UpstreamStream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    Unix(UnixStream),
}

/// The read half of a [`ClientStream`]. Plain TCP splits without a lock;
/// a TLS stream reads and writes one session state, so its halves share it.
pub enum ClientReader {
    Plain(tcp::OwnedReadHalf),
    Tls(ReadHalf<Box<tokio_rustls::server::TlsStream<TcpStream>>>),
}

/// The write half of a [`ClientStream`].
pub enum ClientWriter {
    Plain(tcp::OwnedWriteHalf),
    Tls(WriteHalf<Box<tokio_rustls::server::TlsStream<TcpStream>>>),
}

impl ClientStream {
    /// Split for the relay: one direction reads the socket, the other
    /// writes it, at every round trip. `tokio::io::split` would take a lock
    /// on each of those calls, where a socket's halves need none.
    pub fn into_split(self) -> (ClientReader, ClientWriter) {
        match self {
            ClientStream::Plain(s) => {
                let (r, w) = s.into_split();
                (ClientReader::Plain(r), ClientWriter::Plain(w))
            }
            ClientStream::Tls(s) => {
                let (r, w) = tokio::io::split(s);
                (ClientReader::Tls(r), ClientWriter::Tls(w))
            }
        }
    }
}

/// The read half of an [`UpstreamStream`].
pub enum UpstreamReader {
    Tcp(tcp::OwnedReadHalf),
    Tls(ReadHalf<Box<tokio_rustls::client::TlsStream<TcpStream>>>),
    Unix(unix::OwnedReadHalf),
}

/// The write half of an [`UpstreamStream`].
pub enum UpstreamWriter {
    Tcp(tcp::OwnedWriteHalf),
    Tls(WriteHalf<Box<tokio_rustls::client::TlsStream<TcpStream>>>),
    Unix(unix::OwnedWriteHalf),
}

impl UpstreamStream {
    /// Split for the relay, as [`ClientStream::into_split`].
    pub fn into_split(self) -> (UpstreamReader, UpstreamWriter) {
        match self {
            UpstreamStream::Tcp(s) => {
                let (r, w) = s.into_split();
                (UpstreamReader::Tcp(r), UpstreamWriter::Tcp(w))
            }
            UpstreamStream::Tls(s) => {
                let (r, w) = tokio::io::split(s);
                (UpstreamReader::Tls(r), UpstreamWriter::Tls(w))
            }
            UpstreamStream::Unix(s) => {
                let (r, w) = s.into_split();
                (UpstreamReader::Unix(r), UpstreamWriter::Unix(w))
            }
        }
    }
}

/// A write half that can take bytes without a future when its socket has
/// room: the relay's one write per read, without the waker registration,
/// budget and polling `write_all` goes through.
pub trait WriteNow {
    /// Send what the socket takes now (`WouldBlock` if nothing); `None`
    /// for TLS, whose writes go through the session's encryption state.
    fn write_now(&self, buf: &[u8]) -> Option<io::Result<usize>>;
}

impl WriteNow for ClientWriter {
    fn write_now(&self, buf: &[u8]) -> Option<io::Result<usize>> {
        match self {
            ClientWriter::Plain(w) => Some(w.try_write(buf)),
            ClientWriter::Tls(_) => None,
        }
    }
}

impl WriteNow for UpstreamWriter {
    fn write_now(&self, buf: &[u8]) -> Option<io::Result<usize>> {
        match self {
            UpstreamWriter::Tcp(w) => Some(w.try_write(buf)),
            UpstreamWriter::Unix(w) => Some(w.try_write(buf)),
            UpstreamWriter::Tls(_) => None,
        }
    }
}

macro_rules! delegate_read {
    ($ty:ident { $($variant:ident),* }) => {
        impl AsyncRead for $ty {
            fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() { $($ty::$variant(s) => Pin::new(s).poll_read(cx, buf),)* }
            }
        }
    };
}

macro_rules! delegate_write {
    ($ty:ident { $($variant:ident),* }) => {
        impl AsyncWrite for $ty {
            fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
                match self.get_mut() { $($ty::$variant(s) => Pin::new(s).poll_write(cx, buf),)* }
            }
            fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
                match self.get_mut() { $($ty::$variant(s) => Pin::new(s).poll_write_vectored(cx, bufs),)* }
            }
            fn is_write_vectored(&self) -> bool {
                match self { $($ty::$variant(s) => s.is_write_vectored(),)* }
            }
            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() { $($ty::$variant(s) => Pin::new(s).poll_flush(cx),)* }
            }
            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() { $($ty::$variant(s) => Pin::new(s).poll_shutdown(cx),)* }
            }
        }
    };
}

delegate_read!(ClientStream { Plain, Tls });
delegate_write!(ClientStream { Plain, Tls });
delegate_read!(UpstreamStream { Tcp, Tls, Unix });
delegate_write!(UpstreamStream { Tcp, Tls, Unix });
delegate_read!(ClientReader { Plain, Tls });
delegate_write!(ClientWriter { Plain, Tls });
delegate_read!(UpstreamReader { Tcp, Tls, Unix });
delegate_write!(UpstreamWriter { Tcp, Tls, Unix });
