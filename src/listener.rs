//! Listeners: accepting TCP and TLS connections (one task each) and receiving UDP datagrams.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::FutureExt;
use smol::net::{TcpListener, TcpStream, UdpSocket};

use crate::config::{Listen, Protocol};
use crate::connection::{self, Pipeline, Shared};
use crate::rules::Origin;
use crate::runtime;
use crate::shutdown::Shutdown;
use crate::throttle;
use crate::tls::{self, Acceptor};

enum Socket {
    Tcp(TcpListener),
    Tls(TcpListener, Arc<Acceptor>),
    Udp(UdpSocket),
}

/// A bound listener, ready to serve.
pub struct Listener {
    socket: Socket,
    /// `protocol address:port`, for logs.
    pub name: String,
    max_message_size: usize,
}

/// Why a listener could not be started.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {protocol} {address}: {source}")]
    Bind {
        protocol: &'static str,
        address: String,
        #[source]
        source: std::io::Error,
    },
    /// The TLS files would not load (a configuration error).
    #[error("{0}")]
    Tls(String),
}

impl Listener {
    /// Binds the socket and, for TLS, loads the certificates.
    pub async fn bind(l: &Listen) -> Result<Listener, Error> {
        let address = format!("{}:{}", l.address, l.port);
        let protocol = l.protocol.name();
        let bind_error = |source| Error::Bind {
            protocol,
            address: address.clone(),
            source,
        };
        let socket = match &l.protocol {
            Protocol::Tcp => Socket::Tcp(TcpListener::bind(&address).await.map_err(bind_error)?),
            Protocol::Tls(settings) => {
                // Reading the files blocks: off the executor.
                let settings = settings.clone();
                let acceptor = smol::unblock(move || Acceptor::new(settings))
                    .await
                    .map_err(Error::Tls)?;
                let tcp = TcpListener::bind(&address).await.map_err(bind_error)?;
                Socket::Tls(tcp, Arc::new(acceptor))
            }
            Protocol::Udp => Socket::Udp(
                UdpSocket::bind(address.as_str())
                    .await
                    .map_err(bind_error)?,
            ),
        };
        // The address really bound (port 0 picks a free one).
        let bound = match &socket {
            Socket::Tcp(t) | Socket::Tls(t, _) => t.local_addr(),
            Socket::Udp(u) => u.local_addr(),
        };
        let name = match bound {
            Ok(a) => format!("{protocol} {a}"),
            Err(_) => format!("{protocol} {address}"),
        };
        Ok(Listener {
            socket,
            name,
            max_message_size: l.max_message_size,
        })
    }

    /// The TLS acceptor, for reloading on SIGHUP.
    pub fn acceptor(&self) -> Option<Arc<Acceptor>> {
        match &self.socket {
            Socket::Tls(_, a) => Some(a.clone()),
            _ => None,
        }
    }

    /// Serves until shutdown begins. Every connection task holds a clone of `done`; the caller
    /// learns that all of them have finished when that channel closes.
    pub async fn serve(
        self,
        shared: Arc<Shared>,
        shutdown: Shutdown,
        done: async_channel::Sender<()>,
    ) {
        let max = self.max_message_size;
        match self.socket {
            Socket::Udp(socket) => udp(socket, shared, max, shutdown).await,
            Socket::Tcp(listener) => {
                accept_loop(listener, shutdown.clone(), |stream, peer| {
                    let shared = shared.clone();
                    let shutdown = shutdown.clone();
                    let done = done.clone();
                    async move {
                        let _done = done;
                        run_connection(stream, peer, origin(peer), shared, max, shutdown).await;
                    }
                })
                .await
            }
            Socket::Tls(listener, acceptor) => {
                accept_loop(listener, shutdown.clone(), |stream, peer| {
                    let shared = shared.clone();
                    let shutdown = shutdown.clone();
                    let done = done.clone();
                    let acceptor = acceptor.clone();
                    async move {
                        let _done = done;
                        if let Some((stream, origin)) =
                            handshake(&acceptor, stream, peer, &shared.metrics).await
                        {
                            run_connection(stream, peer, origin, shared, max, shutdown).await;
                        }
                    }
                })
                .await
            }
        }
    }
}

fn origin(peer: SocketAddr) -> Origin {
    Origin {
        peer_addr: Some(peer.to_string()),
        ..Origin::default()
    }
}

/// Runs one connection through its own pipeline, keeping the connection gauges right.
async fn run_connection<S>(
    stream: S,
    peer: SocketAddr,
    origin: Origin,
    shared: Arc<Shared>,
    max: usize,
    shutdown: Shutdown,
) where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin,
{
    let metrics = shared.metrics.clone();
    metrics.connections.fetch_add(1, Relaxed);
    metrics.connections_total.fetch_add(1, Relaxed);
    let pipeline = Pipeline::new(shared, origin);
    if let Err(e) = connection::run(stream, pipeline, max, shutdown).await {
        log::info!("connection from {peer} ended: {e}");
    }
    metrics.connections.fetch_sub(1, Relaxed);
}

/// The TLS handshake, within the listener's timeout; on success the stream and what the
/// client's certificate says about it. Failures are counted and logged.
async fn handshake(
    acceptor: &Acceptor,
    stream: TcpStream,
    peer: SocketAddr,
    metrics: &crate::metrics::Metrics,
) -> Option<(futures_rustls::server::TlsStream<TcpStream>, Origin)> {
    let timeout = acceptor.settings().handshake_timeout;
    let handshake = async { Some(acceptor.get().accept(stream).await) }
        .or(async {
            smol::Timer::after(timeout).await;
            None
        })
        .await;
    let stream = match handshake {
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            metrics.tls_handshake_failed.fetch_add(1, Relaxed);
            throttle::TLS_HANDSHAKE.warn(format_args!("TLS handshake with {peer} failed: {e}"));
            return None;
        }
        None => {
            metrics.tls_handshake_timeout.fetch_add(1, Relaxed);
            throttle::TLS_HANDSHAKE.warn(format_args!(
                "TLS handshake with {peer} did not finish within {timeout:?}"
            ));
            return None;
        }
    };
    metrics.tls_handshakes.fetch_add(1, Relaxed);
    let id = tls::client_identity(stream.get_ref().1.peer_certificates());
    let mut origin = origin(peer);
    origin.tls_client_cn = id.common_name;
    if !id.dns_names.is_empty() {
        origin.tls_client_san = Some(id.dns_names.join(","));
    }
    Some((stream, origin))
}

/// Accepts until shutdown, spawning `handle(stream, peer)` for each connection. Accept errors
/// (out of file descriptors and the like) are retried with exponential back-off.
async fn accept_loop<F, Fut>(listener: TcpListener, shutdown: Shutdown, mut handle: F)
where
    F: FnMut(TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = async { Some(listener.accept().await) }
            .or(async {
                shutdown.wait().await;
                None
            })
            .await;
        match accepted {
            None => return,
            Some(Ok((stream, peer))) => {
                backoff = Duration::from_millis(10);
                let _ = stream.set_nodelay(true);
                log::debug!("connection from {peer}");
                runtime::spawn(handle(stream, peer)).detach();
            }
            Some(Err(e)) => {
                throttle::ACCEPT.log(
                    log::Level::Error,
                    format_args!("accept failed: {e}; retrying in {backoff:?}"),
                );
                smol::Timer::after(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// One message per datagram (RFC 5426). UDP cannot push back: when the publisher's queue is full
/// the datagram is dropped and counted in `udp.dropped`.
async fn udp(socket: UdpSocket, shared: Arc<Shared>, max: usize, shutdown: Shutdown) {
    let metrics = shared.metrics.clone();
    let mut pipeline = Pipeline::new(shared, Origin::default());
    // One byte more than the limit tells a datagram that was cut.
    let mut buf = vec![0u8; max.max(1) + 1];
    loop {
        // Datagrams are batched like lines read from a stream; a batch waits at most
        // UDP_LINGER for more before it goes to the publisher.
        let pending = pipeline.has_pending();
        let received = async { Some(Some(socket.recv_from(&mut buf).await)) }
            .or(async {
                shutdown.wait().await;
                None
            })
            .or(async {
                if pending {
                    smol::Timer::after(UDP_LINGER).await;
                } else {
                    std::future::pending::<()>().await;
                }
                Some(None)
            })
            .await;
        let (n, peer) = match received {
            None => {
                udp_flush(&mut pipeline, &metrics);
                return;
            }
            Some(None) => {
                udp_flush(&mut pipeline, &metrics);
                continue;
            }
            Some(Some(Ok(r))) => r,
            Some(Some(Err(e))) => {
                throttle::UDP_RECEIVE.warn(format_args!("udp receive failed: {e}"));
                continue;
            }
        };
        let truncated = n > max;
        let mut data = &buf[..n.min(max)];
        while let [rest @ .., b'\n' | b'\r' | b'\0'] = data {
            data = rest;
        }
        if data.is_empty() {
            continue;
        }
        pipeline.origin_mut().peer_addr = Some(peer.to_string());
        pipeline.stamp();
        pipeline.frame(data, truncated);
        if pipeline.batch_full() {
            udp_flush(&mut pipeline, &metrics);
        }
    }
}

/// How long a UDP batch waits for more datagrams.
const UDP_LINGER: Duration = Duration::from_millis(5);

fn udp_flush(pipeline: &mut Pipeline, metrics: &crate::metrics::Metrics) {
    let dropped = pipeline.try_flush();
    if dropped > 0 {
        metrics.udp_dropped.fetch_add(dropped as u64, Relaxed);
        throttle::UDP_DROPPED.warn(format_args!(
            "queue to Kafka full: dropped {dropped} UDP messages"
        ));
    }
}
