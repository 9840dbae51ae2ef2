//! Listeners: accepting TCP, TLS and RELP connections (one task each) and receiving UDP
//! datagrams.

pub mod tls;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, FutureExt};
use smol::net::{TcpListener, TcpStream};
use smol::Async;
use std::net::UdpSocket;

use crate::base::runtime;
use crate::base::shutdown::Shutdown;
use crate::base::throttle;
use crate::session::{self, Pipeline, QuotaSlot, Shared, Verdict};
use hotdog_stages::config::{Listen, Protocol, ProxyProtocol, RelpAck};
use hotdog_stages::core::Origin;
use tls::Acceptor;

mod proxy;
mod udp;

pub use udp::kernel_dropped;

use proxy::*;
use udp::*;

enum Socket {
    /// TCP, with TLS when there is an acceptor.
    Stream(TcpListener, Option<Arc<Acceptor>>),
    Udp(Async<UdpSocket>),
}

/// A bound listener, ready to serve.
pub struct Listener {
    socket: Socket,
    /// `protocol address:port`, for logs.
    pub name: String,
    settings: Arc<Settings>,
}

/// What every connection of one listener shares: its settings, and who is connected.
struct Settings {
    limits: session::Limits,
    max_connections: usize,
    max_per_source: Option<usize>,
    tcp_keepalive: Option<Duration>,
    proxy_protocol: Option<ProxyProtocol>,
    /// The `timezone` of its senders' RFC 3164 timestamps.
    zone: Option<jiff::tz::TimeZone>,
    /// The `address:port` it is bound to, as its connections' origin says.
    local: Arc<str>,
    /// RELP sessions, not syslog streams.
    relp: bool,
    /// Connections open now.
    open: AtomicUsize,
    /// Connections open now per source address (only with `max_per_source`).
    per_source: Mutex<HashMap<IpAddr, usize>>,
    /// Its `quota`, which a reload replaces.
    quota: Arc<QuotaSlot>,
}

/// A connection's place under its listener's limits, given back when dropped.
struct Slot {
    settings: Arc<Settings>,
    source: Option<IpAddr>,
}

impl Settings {
    /// True when `peer` is a load balancer this listener takes PROXY headers from.
    fn behind_balancer(&self, peer: SocketAddr) -> bool {
        self.proxy_protocol
            .as_ref()
            .is_some_and(|p| p.trusts(peer.ip()))
    }

    /// A place under `max_connections`, or `None` when the listener is full.
    fn admit(self: &Arc<Self>) -> Option<Slot> {
        self.open
            .fetch_update(Relaxed, Relaxed, |n| {
                (n < self.max_connections).then_some(n + 1)
            })
            .ok()?;
        Some(Slot {
            settings: self.clone(),
            source: None,
        })
    }
}

impl Slot {
    /// Counts the connection against its source address; false when that one is full.
    fn count_source(&mut self, ip: IpAddr) -> bool {
        let Some(max) = self.settings.max_per_source else {
            return true;
        };
        let mut per = self
            .settings
            .per_source
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let n = per.entry(ip).or_default();
        if *n >= max {
            return false;
        }
        *n += 1;
        self.source = Some(ip);
        true
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.settings.open.fetch_sub(1, Relaxed);
        if let Some(ip) = self.source {
            let mut per = self
                .settings
                .per_source
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(n) = per.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    per.remove(&ip);
                }
            }
        }
    }
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
            Protocol::Udp => {
                // Resolving a name (`localhost`) reads /etc/hosts: off the executor.
                let at = address.clone();
                let socket = smol::unblock(move || UdpSocket::bind(at))
                    .await
                    .and_then(Async::new)
                    .map_err(bind_error)?;
                // Room for a burst while the executor is busy elsewhere: the kernel drops
                // what does not fit, and counts it (`udp.kernel_dropped`).
                tune(&socket, l.receive_buffer, &format!("udp {address}"));
                Socket::Udp(socket)
            }
            stream => {
                let acceptor = match stream.tls() {
                    Some(settings) => {
                        // Reading the files blocks: off the executor.
                        let settings = settings.clone();
                        let acceptor = smol::unblock(move || Acceptor::new(settings))
                            .await
                            .map_err(Error::Tls)?;
                        Some(Arc::new(acceptor))
                    }
                    None => None,
                };
                let tcp = TcpListener::bind(&address).await.map_err(bind_error)?;
                Socket::Stream(tcp, acceptor)
            }
        };
        // The address really bound (port 0 picks a free one).
        let bound = match &socket {
            Socket::Stream(t, _) => t.local_addr(),
            Socket::Udp(u) => u.get_ref().local_addr(),
        };
        let local: Arc<str> = match bound {
            Ok(a) => a.to_string().into(),
            Err(_) => address.to_string().into(),
        };
        let name = format!("{protocol} {local}");
        let settings = Settings {
            limits: session::Limits {
                max_message_size: l.max_message_size,
                idle_timeout: l.idle_timeout,
                answer_when_spooled: l.ack == RelpAck::Spool,
                framing: l.framing,
            },
            max_connections: l.max_connections,
            max_per_source: l.max_connections_per_source,
            tcp_keepalive: l.tcp_keepalive,
            proxy_protocol: l.proxy_protocol.clone(),
            zone: l.timezone.as_ref().map(|t| t.zone.clone()),
            local,
            relp: matches!(l.protocol, Protocol::Relp(_)),
            open: AtomicUsize::new(0),
            per_source: Mutex::new(HashMap::new()),
            quota: Arc::new(QuotaSlot::new(l.quota.as_ref())),
        };
        Ok(Listener {
            socket,
            name,
            settings: Arc::new(settings),
        })
    }

    /// The TLS acceptor, for reloading on SIGHUP.
    pub fn acceptor(&self) -> Option<Arc<Acceptor>> {
        match &self.socket {
            Socket::Stream(_, a) => a.clone(),
            Socket::Udp(_) => None,
        }
    }

    /// Its quota, for a reload to replace.
    pub fn quota(&self) -> Arc<QuotaSlot> {
        self.settings.quota.clone()
    }

    /// Serves until shutdown begins. Every connection task holds a clone of `done`; the caller
    /// learns that all of them have finished when that channel closes.
    pub async fn serve(
        self,
        shared: Arc<Shared>,
        shutdown: Shutdown,
        done: async_channel::Sender<()>,
    ) {
        let settings = self.settings;
        // Listed from the start, with 0 lines until a connection sends some.
        shared.metrics.listener(&settings.local);
        let (listener, acceptor) = match self.socket {
            Socket::Udp(socket) => {
                let max = settings.limits.max_message_size;
                let origin = Origin {
                    zone: settings.zone.clone(),
                    listener: Some(settings.local.clone()),
                    ..Origin::default()
                };
                let quota = settings.quota.clone();
                return udp(socket, shared, origin, quota, max, shutdown).await;
            }
            Socket::Stream(listener, acceptor) => (listener, acceptor),
        };
        let name = self.name;
        accept_loop(listener, shutdown.clone(), |stream, peer| {
            let Some(slot) = settings.admit() else {
                shared.metrics.refused_listener.fetch_add(1, Relaxed);
                throttle::REFUSED.warn(format_args!(
                    "{name}: {} connections open (max_connections), closed the one from {peer}",
                    settings.max_connections
                ));
                return None;
            };
            if let Some(idle) = settings.tcp_keepalive {
                let keepalive = socket2::TcpKeepalive::new()
                    .with_time(idle)
                    .with_interval(KEEPALIVE_INTERVAL)
                    .with_retries(KEEPALIVE_RETRIES);
                if let Err(e) = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive) {
                    log::debug!("TCP keepalive on the connection from {peer}: {e}");
                }
            }
            let mut connection = Connection {
                shared: shared.clone(),
                shutdown: shutdown.clone(),
                slot,
                _done: done.clone(),
            };
            // A connection that is not a load balancer's is counted against its source here,
            // in the order they were accepted: the newest over the limit is the one closed.
            if !settings.behind_balancer(peer) && !connection.count_source(peer) {
                return None;
            }
            Some(connection.serve(stream, peer, acceptor.clone()))
        })
        .await
    }
}

/// Keepalive probes: one every this long once `tcp_keepalive` has passed without traffic ...
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// ... and the connection is given up after this many unanswered.
const KEEPALIVE_RETRIES: u32 = 6;

/// One accepted TCP connection on its way through the listener's checks.
struct Connection {
    shared: Arc<Shared>,
    shutdown: Shutdown,
    slot: Slot,
    /// Dropped when the connection has finished (see [`Listener::serve`]).
    _done: async_channel::Sender<()>,
}

impl Connection {
    /// The PROXY header, the source address's limit, the TLS handshake, then the pipeline.
    async fn serve(
        mut self,
        mut stream: TcpStream,
        peer: SocketAddr,
        acceptor: Option<Arc<Acceptor>>,
    ) {
        let accepted = Instant::now();
        let metrics = self.shared.metrics.clone();
        let settings = self.slot.settings.clone();
        // A load balancer's connection is counted against the client its header names; any
        // other was counted when it was accepted, before it had said anything (it may say
        // nothing for a long time).
        let balancer = settings.behind_balancer(peer);
        let (peer, read) = match &settings.proxy_protocol {
            None => (peer, Vec::new()),
            Some(_) => {
                let idle = settings.limits.idle_timeout;
                match proxy_header(&mut stream, peer, balancer, accepted, idle, &self.shutdown)
                    .await
                {
                    Ok(found) => found,
                    Err(NoHeader::Gone) => return,
                    Err(NoHeader::Idle) => {
                        metrics.idle_closed.fetch_add(1, Relaxed);
                        log::debug!("closed the connection from {peer}: idle_timeout");
                        return;
                    }
                    Err(NoHeader::Refused(why)) => {
                        metrics.proxy_refused.fetch_add(1, Relaxed);
                        throttle::PROXY
                            .warn(format_args!("closed the connection from {peer}: {why}"));
                        return;
                    }
                }
            }
        };
        if balancer && !self.count_source(peer) {
            return;
        }
        let stream = Rewound::new(read, stream);
        // Each kind of connection allocates only the state it needs (a TLS session is large).
        match acceptor {
            None => {
                let origin = origin(peer, &settings);
                Box::pin(self.run(stream, peer, origin)).await
            }
            Some(acceptor) => {
                metrics.handshaking.fetch_add(1, Relaxed);
                let origin = origin(peer, &settings);
                let handshake =
                    Box::pin(handshake(&acceptor, stream, peer, origin, &metrics)).await;
                metrics.handshaking.fetch_sub(1, Relaxed);
                if let Some((stream, origin)) = handshake {
                    Box::pin(self.run(stream, peer, origin)).await;
                }
            }
        }
    }

    /// Counts the connection against its source address; false (counted and logged) when that
    /// one has its `max_connections_per_source` already.
    fn count_source(&mut self, peer: SocketAddr) -> bool {
        if self.slot.count_source(peer.ip()) {
            return true;
        }
        self.shared.metrics.refused_source.fetch_add(1, Relaxed);
        throttle::REFUSED.warn(format_args!(
            "{} connections open from {} (max_connections_per_source), closed the one from {peer}",
            self.slot.settings.max_per_source.unwrap_or_default(),
            peer.ip()
        ));
        false
    }

    /// Runs the connection through its own pipeline, keeping the connection gauges right.
    async fn run<S>(self, stream: S, peer: SocketAddr, origin: Origin)
    where
        S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin,
    {
        let metrics = self.shared.metrics.clone();
        metrics.connections.fetch_add(1, Relaxed);
        metrics.connections_total.fetch_add(1, Relaxed);
        let pipeline =
            Pipeline::new(self.shared, origin).with_quota(self.slot.settings.quota.clone());
        let settings = &self.slot.settings;
        let ended = if settings.relp {
            session::run_relp(stream, pipeline, settings.limits, self.shutdown).await
        } else {
            session::run(stream, pipeline, settings.limits, self.shutdown).await
        };
        match ended {
            Ok(session::End::Idle) => {
                metrics.idle_closed.fetch_add(1, Relaxed);
                log::debug!("closed the connection from {peer}: idle_timeout");
            }
            Ok(session::End::Refused(why)) => {
                throttle::RELP.warn(format_args!("closed the RELP session from {peer}: {why}"));
            }
            Ok(_) => {}
            // A peer that resets its connection is common and harmless: not worth a line each.
            Err(e) => log::debug!("connection from {peer} ended: {e}"),
        }
        metrics.connections.fetch_sub(1, Relaxed);
    }
}

fn origin(peer: SocketAddr, settings: &Settings) -> Origin {
    Origin {
        peer_addr: Some(peer.to_string()),
        zone: settings.zone.clone(),
        listener: Some(settings.local.clone()),
        ..Origin::default()
    }
}

/// The TLS handshake, within the listener's timeout; on success the stream and what the
/// client's certificate says about it. Failures are counted and logged.
async fn handshake<S>(
    acceptor: &Acceptor,
    stream: S,
    peer: SocketAddr,
    mut origin: Origin,
    metrics: &crate::base::metrics::Metrics,
) -> Option<(futures_rustls::server::TlsStream<S>, Origin)>
where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin,
{
    let timeout = acceptor.settings().handshake_timeout;
    let stream = match acceptor.accept_within(stream).await {
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
    origin.tls_client_cn = id.common_name;
    if !id.dns_names.is_empty() {
        origin.tls_client_san = Some(id.dns_names.join(","));
    }
    Some((stream, origin))
}

/// Accepts until shutdown; `handle(stream, peer)` checks the connection and gives the task to
/// spawn for it, or `None` to close it at once.
async fn accept_loop<F, Fut>(listener: TcpListener, shutdown: Shutdown, mut handle: F)
where
    F: FnMut(TcpStream, SocketAddr) -> Option<Fut>,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let name = listener
        .local_addr()
        .map_or_else(|_| "listener".to_string(), |a| a.to_string());
    loop {
        let Some((stream, peer)) = shutdown.unless(accept(&listener, &name)).await else {
            return;
        };
        let _ = stream.set_nodelay(true);
        log::debug!("connection from {peer}");
        if let Some(task) = handle(stream, peer) {
            runtime::spawn(task).detach();
        }
    }
}

/// The next connection. Accept errors (out of file descriptors and the like) are logged through
/// a throttle and retried with exponential back-off, never given up on; `what` names the
/// listener in the log.
pub async fn accept(listener: &TcpListener, what: &str) -> (TcpStream, SocketAddr) {
    let mut backoff = Duration::from_millis(10);
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                throttle::ACCEPT.log(
                    log::Level::Error,
                    format_args!("{what}: accept failed: {e}; retrying in {backoff:?}"),
                );
                smol::Timer::after(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}
