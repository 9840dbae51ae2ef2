//! The PROXY header a load balancer sends before the connection's own bytes: read (not peeked)
//! within [`hotdog_stages::frame::proxy::deadline`], and what was read past it handed on first
//! ([`Rewound`]).

use super::*;
use hotdog_stages::frame::proxy;

/// What waiting for a PROXY header came to, when it did not give the client's address.
pub(super) enum NoHeader {
    /// The connection closed, or shutdown began, before anything was said.
    Gone,
    /// Nothing came within `idle_timeout`.
    Idle,
    /// Refused, and why.
    Refused(String),
}

/// Reads a PROXY protocol header off `stream` and returns the client's address, with the
/// bytes read past the header (the start of the client's own stream, to be read first). A
/// connection from `proxy.from` must send one; one from anywhere else must not (its first bytes
/// are syslog, or TLS).
///
/// Every wait has a deadline ([`proxy::deadline`]) that wins over the bytes (the timer is
/// polled first). Bytes are read, never peeked: a wait costs nothing, and a peer that closes is
/// seen at once.
pub(super) async fn proxy_header(
    stream: &mut TcpStream,
    peer: SocketAddr,
    trusted: bool,
    accepted: Instant,
    idle: Option<Duration>,
    shutdown: &Shutdown,
) -> Result<(SocketAddr, Vec<u8>), NoHeader> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    let mut first_byte = None;
    loop {
        let deadline = proxy::deadline(trusted, idle, first_byte);
        let timer = async {
            match deadline {
                Some((after, _)) => smol::Timer::at(accepted + after).await,
                None => std::future::pending().await,
            };
            None
        };
        let read = async { Some(stream.read(&mut chunk).await) };
        let n = match shutdown.unless(timer.or(read)).await {
            None => return Err(NoHeader::Gone),
            Some(None) if deadline.is_some_and(|(_, e)| e == proxy::Expiry::Idle) => {
                return Err(NoHeader::Idle)
            }
            Some(None) => {
                return Err(NoHeader::Refused(format!(
                    "no whole PROXY header within {}s",
                    proxy::TIMEOUT.as_secs()
                )))
            }
            Some(Some(Ok(0))) if buf.is_empty() => return Err(NoHeader::Gone),
            Some(Some(Ok(0))) => {
                return Err(NoHeader::Refused(format!(
                    "closed after {} bytes of a PROXY header",
                    buf.len()
                )))
            }
            Some(Some(Ok(n))) => n,
            Some(Some(Err(e))) => {
                return Err(NoHeader::Refused(format!("reading its PROXY header: {e}")))
            }
        };
        buf.extend_from_slice(&chunk[..n]);
        first_byte.get_or_insert_with(|| accepted.elapsed());
        // Incomplete only while shorter than the longest header, so the buffer is bounded.
        match proxy::parse(&buf) {
            proxy::Parsed::Header { len, source } if trusted => {
                buf.drain(..len);
                return Ok((source.unwrap_or(peer), buf));
            }
            proxy::Parsed::Header { .. } => {
                return Err(NoHeader::Refused(
                    "a PROXY header from outside proxy_protocol.from".into(),
                ))
            }
            proxy::Parsed::NotProxy if trusted => {
                return Err(NoHeader::Refused(
                    "no PROXY header from a load balancer (proxy_protocol.from)".into(),
                ))
            }
            proxy::Parsed::NotProxy => return Ok((peer, buf)),
            proxy::Parsed::Malformed(why) => return Err(NoHeader::Refused(why)),
            proxy::Parsed::Incomplete => {}
        }
    }
}

/// A stream whose first bytes were read already (while looking for a PROXY header): they are
/// read again first, then the stream's own.
pub(super) struct Rewound<S> {
    pub(super) read: Vec<u8>,
    pub(super) at: usize,
    pub(super) inner: S,
}

impl<S> Rewound<S> {
    pub(super) fn new(read: Vec<u8>, inner: S) -> Self {
        Rewound { read, at: 0, inner }
    }
}

impl<S: futures_lite::AsyncRead + Unpin> futures_lite::AsyncRead for Rewound<S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.at < this.read.len() {
            let n = buf.len().min(this.read.len() - this.at);
            buf[..n].copy_from_slice(&this.read[this.at..this.at + n]);
            this.at += n;
            if this.at == this.read.len() {
                this.read = Vec::new();
                this.at = 0;
            }
            return std::task::Poll::Ready(Ok(n));
        }
        std::pin::Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: futures_lite::AsyncWrite + Unpin> futures_lite::AsyncWrite for Rewound<S> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_close(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}
